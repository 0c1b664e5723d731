//! Two node runtimes in one process over real QUIC, each with its metrics endpoint: after
//! mutations on one node, scraping both over TCP shows the counters a person would check
//! (records in and out per peer, table size, propagation and fsync histograms, invalidations,
//! the filesystem's counters), and bad requests get HTTP errors while the endpoint keeps
//! serving.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wcfs_core::handle::TableHandle;
use wcfs_core::table::Resolution;
use wcfs_core::{Op, WPath};
use wcfs_gossip::metrics::{self, FsOpCount, FsSource, MetricsServer, ServerConfig, Sources};
use wcfs_gossip::runtime::{Runtime, RuntimeConfig, RuntimeHandle, random_u64};
use wcfs_gossip::store::{Store, StoreOptions};
use wcfs_gossip::tls::{self, NodeTls};

const DEADLINE: Duration = Duration::from_secs(30);
const N: usize = 20;

fn free_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `request` raw and returns (status code, headers, body).
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, head.to_owned(), body.to_owned())
}

/// A parsed exposition: every sample as (name, labels, value).
struct Scrape {
    text: String,
    samples: Vec<(String, HashMap<String, String>, f64)>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), HashMap::new()),
                Some((name, rest)) => {
                    let rest = rest.strip_suffix('}').unwrap();
                    let labels = rest
                        .split("\",")
                        .map(|kv| {
                            let (k, v) = kv
                                .split_once("=\"")
                                .unwrap_or_else(|| panic!("bad label {kv:?} in {line:?}"));
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            samples.push((name, labels, value));
        }
        Scrape { text, samples }
    }

    /// The sum of `name`'s samples whose labels include `want`; panics if there is none.
    fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        let hits: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
            .collect();
        assert!(
            !hits.is_empty(),
            "no sample {name}{want:?} in:\n{}",
            self.text
        );
        hits.iter().sum()
    }
}

fn scrape(addr: SocketAddr) -> Scrape {
    let (code, head, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(code, 200, "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "unterminated exposition");
    Scrape::parse(body)
}

struct Node {
    rt: Option<Runtime>,
    h: RuntimeHandle,
    metrics: Option<MetricsServer>,
}

fn start(
    tokio: &tokio::runtime::Runtime,
    tmp: &std::path::Path,
    i: usize,
    addrs: &[SocketAddr],
    fs: Option<FsSource>,
) -> Node {
    let name = format!("n{i}");
    let (ca, certs) = (tmp.join("ca"), tmp.join("certs"));
    tls::issue(&name, &ca, &certs).unwrap();
    let tls = NodeTls::load(
        &ca.join("ca.pem"),
        &certs.join(format!("{name}.pem")),
        &certs.join(format!("{name}.key")),
    )
    .unwrap();
    let (store, table, rec) = Store::open(tmp.join(&name), StoreOptions::default(), || {
        (random_u64(), random_u64())
    })
    .unwrap();
    let seeds = addrs.iter().copied().filter(|a| *a != addrs[i]).collect();
    let mut cfg = RuntimeConfig::new(addrs[i], seeds, addrs.len() as u32);
    cfg.transport.backoff_min = Duration::from_millis(20);
    cfg.transport.backoff_max = Duration::from_millis(200);
    let _g = tokio.enter();
    let rt = Runtime::start(cfg, &tls, store, table, &rec, Box::new(|_| {})).unwrap();
    let h = rt.handle();
    let sources = Sources {
        runtime: h.clone(),
        fs,
    };
    let server_cfg = ServerConfig {
        timeout: Duration::from_millis(500),
        max_request_bytes: 4096,
        ..ServerConfig::default()
    };
    let metrics = metrics::serve_with("127.0.0.1:0".parse().unwrap(), sources, server_cfg).unwrap();
    Node {
        rt: Some(rt),
        h,
        metrics: Some(metrics),
    }
}

#[test]
fn scraped_counters_follow_the_cluster_and_bad_requests_get_errors() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    tls::init_ca(&tmp.path().join("ca")).unwrap();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addrs = [free_port(), free_port()];
    // A stand-in for the mounted filesystem's counters.
    let lookups = Arc::new(AtomicU64::new(0));
    let fs: FsSource = {
        let lookups = lookups.clone();
        Arc::new(move || {
            vec![
                FsOpCount {
                    op: "lookup",
                    requests: Some(lookups.load(Ordering::Relaxed)),
                    rw_syscalls: 2,
                },
                FsOpCount {
                    op: "write",
                    requests: None,
                    rw_syscalls: 5,
                },
            ]
        })
    };
    let mut nodes = [
        start(&tokio, tmp.path(), 0, &addrs, Some(fs)),
        start(&tokio, tmp.path(), 1, &addrs, None),
    ];
    let (a, b) = (nodes[0].h.clone(), nodes[1].h.clone());
    let (ma, mb) = (
        nodes[0].metrics.as_ref().unwrap().local_addr(),
        nodes[1].metrics.as_ref().unwrap().local_addr(),
    );
    until("the nodes see each other", || {
        a.members().len() == 1 && b.members().len() == 1
    });

    let before = scrape(mb);
    assert_eq!(before.sum("wcfs_table_paths", &[]), 0.0);
    assert_eq!(before.sum("wcfs_members", &[("state", "up")]), 1.0);

    let paths: Vec<WPath> = (0..N)
        .map(|i| WPath::try_from(format!("up/f{i}").as_str()).unwrap())
        .collect();
    for p in &paths {
        a.propose(p, Op::MarkRw).unwrap();
    }
    lookups.store(7, Ordering::Relaxed);
    until("B to hold every mutation", || {
        paths.iter().all(|p| b.resolve(p) == Resolution::Rw)
    });

    let sa = scrape(ma);
    let sb = scrape(mb);
    let n = N as f64;
    let n_paths = n;
    // B: what arrived from A.
    let from_a = [("peer", "n0")];
    assert!(sb.sum("wcfs_records_received_total", &from_a) >= n);
    assert_eq!(sb.sum("wcfs_records_applied_total", &from_a), n);
    assert_eq!(sb.sum("wcfs_table_paths", &[]), n);
    assert_eq!(sb.sum("wcfs_table_tombstones", &[]), 0.0);
    assert!(sb.sum("wcfs_cache_invalidations_total", &[("scope", "path")]) >= n);
    let lat = sb.sum("wcfs_propagation_latency_seconds_count", &[]);
    assert!(lat >= 1.0, "no propagation observed");
    assert!(
        lat <= n,
        "more observations than messages that carried records"
    );
    assert_eq!(
        sb.sum("wcfs_propagation_latency_seconds_bucket", &[("le", "+Inf")]),
        lat
    );
    assert!(sb.sum("wcfs_peer_messages_received_total", &from_a) >= 1.0);
    assert!(sb.sum("wcfs_remote_records_journaled_total", &[]) <= n);
    assert!(sb.text.contains("wcfs_node_info{node=\"n1\","));

    // A: what it sent and how long its own mutations took to leave.
    let to_b = [("peer", "n1")];
    assert!(sa.sum("wcfs_records_sent_total", &to_b) >= n);
    assert_eq!(sa.sum("wcfs_proposals_total", &[]), n);
    assert_eq!(sa.sum("wcfs_local_release_latency_seconds_count", &[]), n);
    assert!(sa.sum("wcfs_journal_fsync_duration_seconds_count", &[]) >= 1.0);
    assert!(sa.sum("wcfs_journal_fsyncs_total", &[]) >= 1.0);
    assert!(sa.sum("wcfs_journal_size_bytes", &[]) > 0.0);
    assert!(sa.sum("wcfs_peer_messages_sent_total", &to_b) >= 1.0);
    // Present, and within the queue's bound (1024 per channel).
    assert!(sa.sum("wcfs_peer_queue_messages", &to_b) <= 2048.0);
    assert_eq!(
        sa.sum(
            "wcfs_peer_dropped_messages_total",
            &[("reason", "wrong_peer")]
        ),
        0.0
    );
    assert_eq!(sa.sum("wcfs_impostor_dropped_messages_total", &[]), 0.0);
    // The filesystem's counters, where the source gave them.
    assert_eq!(sa.sum("wcfs_fuse_requests_total", &[("op", "lookup")]), 7.0);
    assert_eq!(sa.sum("wcfs_rw_syscalls_total", &[("op", "write")]), 5.0);
    assert!(
        !sa.text.contains("wcfs_fuse_requests_total{op=\"write\"}"),
        "an op the filesystem does not count must not show 0 requests"
    );
    assert!(
        !sb.text.contains("wcfs_fuse_requests"),
        "B has no filesystem source"
    );
    // Every family documents itself.
    for line in sa.text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(
            sa.text.contains(&format!("# HELP {name} ")),
            "{name} has no help text"
        );
    }

    // Bad requests: HTTP errors, never a crash.
    assert_eq!(http(mb, b"POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(http(mb, b"GET /admin HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(mb, b"\x16\x03\x01\x02\x00 garbage\r\n\r\n").0, 400);
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.resize(64 << 10, b'a');
    let mut s = TcpStream::connect(mb).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    // The server may close before reading everything: a write error is fine, the answer
    // must still be 431.
    let _ = s.write_all(&huge);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    assert!(
        resp.starts_with(b"HTTP/1.1 431 "),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
    // A client that sends nothing is cut off at the timeout.
    let mut idle = TcpStream::connect(mb).unwrap();
    idle.set_read_timeout(Some(DEADLINE)).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 16];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the server answered an empty request");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "idle client held {:?}",
        t0.elapsed()
    );
    // Still serving.
    assert_eq!(scrape(mb).sum("wcfs_table_paths", &[]), n_paths);

    for node in &mut nodes {
        let m = node.metrics.take().unwrap();
        tokio.block_on(m.shutdown());
    }
    for node in nodes {
        let Node { rt, h, .. } = node;
        drop(h);
        tokio.block_on(rt.unwrap().shutdown());
    }
    drop((a, b));
}
