//! Three node runtimes in one process on loopback, over real QUIC with mutual TLS and real
//! data directories: proposals on one node become visible on the others (propagation times
//! printed), and a stopped node restarted from its data directory has kept what it had
//! journaled and catches up on what it missed.
//!
//! Run with `--nocapture` to see the propagation percentiles.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wcfs_core::handle::TableHandle;
use wcfs_core::table::Resolution;
use wcfs_core::{Op, WPath};
use wcfs_gossip::runtime::{Invalidate, Runtime, RuntimeConfig, RuntimeHandle, random_u64};
use wcfs_gossip::store::{Recovery, Store, StoreOptions};
use wcfs_gossip::tls::{self, NodeTls};

const DEADLINE: Duration = Duration::from_secs(30);

fn free_port() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

fn path(i: usize) -> WPath {
    WPath::try_from(format!("site/up/f{i}").as_str()).unwrap()
}

/// Polls `cond` (sleeping briefly between polls) until it holds; panics at the deadline.
fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(50));
    }
}

struct Member {
    rt: Option<Runtime>,
    h: RuntimeHandle,
    invalidated: Arc<Mutex<Vec<Invalidate>>>,
}

struct Cluster {
    tokio: tokio::runtime::Runtime,
    ca: PathBuf,
    certs: PathBuf,
    data: PathBuf,
    addrs: Vec<SocketAddr>,
}

impl Cluster {
    fn tls(&self, i: usize) -> NodeTls {
        let name = format!("n{i}");
        let cert = self.certs.join(format!("{name}.pem"));
        let key = self.certs.join(format!("{name}.key"));
        if !cert.exists() {
            tls::issue(&name, &self.ca, &self.certs).unwrap();
        }
        NodeTls::load(&self.ca.join("ca.pem"), &cert, &key).unwrap()
    }

    fn open(&self, i: usize) -> (Store, wcfs_core::Table, Recovery) {
        let dir = self.data.join(format!("n{i}"));
        // A previous runtime of this node releases the directory lock once its last handle
        // is gone, which the caller guarantees before reopening.
        Store::open(&dir, StoreOptions::default(), || {
            (random_u64(), random_u64())
        })
        .unwrap()
    }

    fn start(&self, i: usize, opened: (Store, wcfs_core::Table, Recovery)) -> Member {
        let (store, table, rec) = opened;
        let seeds = self
            .addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| *a)
            .collect();
        let mut cfg = RuntimeConfig::new(self.addrs[i], seeds, self.addrs.len() as u32);
        cfg.transport.backoff_min = Duration::from_millis(20);
        cfg.transport.backoff_max = Duration::from_millis(200);
        cfg.transport.dial_timeout = Duration::from_millis(500);
        let invalidated = Arc::new(Mutex::new(Vec::new()));
        let sink = invalidated.clone();
        let tls = self.tls(i);
        let _g = self.tokio.enter();
        // The port of a stopped node may take a moment to be released by its endpoint.
        let t0 = Instant::now();
        let mut opened = Some((store, table));
        let rt = loop {
            let (store, table) = opened.take().unwrap();
            let sink = sink.clone();
            let inv = Box::new(move |x| sink.lock().unwrap().push(x));
            match Runtime::start(cfg.clone(), &tls, store, table, &rec, inv) {
                Ok(rt) => break rt,
                Err(e) => {
                    assert!(t0.elapsed() < DEADLINE, "restarting on its port: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                    opened = Some(self.reopen_after_failed_start(i));
                }
            }
        };
        Member {
            h: rt.handle(),
            rt: Some(rt),
            invalidated,
        }
    }

    fn reopen_after_failed_start(&self, i: usize) -> (Store, wcfs_core::Table) {
        let (s, t, _) = self.open(i);
        (s, t)
    }

    fn stop(&self, m: Member) {
        let Member { rt, h, .. } = m;
        drop(h);
        if let Some(rt) = rt {
            self.tokio.block_on(rt.shutdown());
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
fn three_runtimes_propagate_and_a_restarted_node_catches_up() {
    // `RUST_LOG=wcfs_gossip=debug` to see what the nodes do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    tls::init_ca(&ca).unwrap();
    let c = Cluster {
        tokio: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
        ca,
        certs: tmp.path().join("certs"),
        data: tmp.path().join("data"),
        addrs: (0..3).map(|_| free_port()).collect(),
    };
    let mut nodes: Vec<Option<Member>> = (0..3).map(|i| Some(c.start(i, c.open(i)))).collect();
    let h = |n: &Vec<Option<Member>>, i: usize| n[i].as_ref().unwrap().h.clone();
    let (a, b) = (h(&nodes, 0), h(&nodes, 1));
    until("every node sees the two others", || {
        nodes
            .iter()
            .all(|m| m.as_ref().unwrap().h.members().len() == 2)
    });

    // Propagation: each proposal on A, timed from before the call until B and C resolve it.
    let cc = h(&nodes, 2);
    const N: usize = 200;
    let mut times = Vec::with_capacity(2 * N);
    for i in 0..N {
        let p = path(i);
        assert_eq!(cc.resolve(&p), Resolution::Ro);
        let t0 = Instant::now();
        a.propose(&p, Op::MarkRw).unwrap();
        // Read-your-writes on the proposing node.
        assert_eq!(a.resolve(&p), Resolution::Rw);
        let (mut tb, mut tc) = (None, None);
        until("a proposal to reach B and C", || {
            if tb.is_none() && b.resolve(&p) == Resolution::Rw {
                tb = Some(t0.elapsed());
            }
            if tc.is_none() && cc.resolve(&p) == Resolution::Rw {
                tc = Some(t0.elapsed());
            }
            tb.is_some() && tc.is_some()
        });
        times.extend(tb);
        times.extend(tc);
    }
    times.sort();
    println!(
        "propagation A -> B,C over {N} proposals (incl. A's journal fsync): p50 {:?} p99 {:?} max {:?}",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1]
    );
    // B's filesystem was told about every path that changed there.
    let inv = nodes[1]
        .as_ref()
        .unwrap()
        .invalidated
        .lock()
        .unwrap()
        .clone();
    for i in 0..N {
        assert!(
            inv.contains(&Invalidate::Path(path(i))) || inv.contains(&Invalidate::All),
            "B was not told that {} changed",
            path(i)
        );
    }

    // Concurrent proposers on A (their journal appends and fsyncs interleave) all get through.
    let base = N;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                for k in 0..25 {
                    a.propose(&path(base + t * 25 + k), Op::MarkRw).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    until("concurrent proposals reach B and C", || {
        (base..base + 100).all(|i| {
            b.resolve(&path(i)) == Resolution::Rw && cc.resolve(&path(i)) == Resolution::Rw
        })
    });
    let n = N + 100;

    // Stop C once it has journaled what it merged (the journal thread is asynchronous).
    until("C journals the records it merged", || {
        cc.stats().remote_logged >= n as u64
    });
    drop(cc);
    c.stop(nodes[2].take().unwrap());

    // A keeps writing while C is down.
    const MORE: usize = 300;
    for i in n..n + MORE {
        a.propose(&path(i), Op::MarkRw).unwrap();
    }
    until("B has the writes made while C was down", || {
        (n..n + MORE).all(|i| b.resolve(&path(i)) == Resolution::Rw)
    });

    // In one process the stopped endpoint may hold its UDP port a while after shutdown (a
    // real restart is a new process: the port is free at once); wait for it here so the
    // catch-up time below measures the node, not the test harness.
    let t0 = Instant::now();
    until("C's port to be released", || {
        UdpSocket::bind(c.addrs[2]).is_ok()
    });
    println!("C's port was released {:?} after shutdown", t0.elapsed());

    // C restarts from its data directory: what it had merged came back from its own journal,
    // before any peer was contacted.
    let (store, table, rec) = c.open(2);
    assert!(!rec.created);
    assert!(rec.journal_records >= n, "{rec:?}");
    assert!((0..n).all(|i| table.resolve(&path(i)) == Resolution::Rw));
    assert!((n..n + MORE).all(|i| table.resolve(&path(i)) == Resolution::Ro));
    let t0 = Instant::now();
    tracing::info!("restarting C");
    nodes[2] = Some(c.start(2, (store, table, rec)));
    let cc = h(&nodes, 2);
    until("restarted C catches up on what it missed", || {
        (n..n + MORE).all(|i| cc.resolve(&path(i)) == Resolution::Rw)
    });
    println!(
        "restarted C caught up on {MORE} missed mutations in {:?}",
        t0.elapsed()
    );

    // C's own new mutations still reach the others (its counter was not reused).
    let p = WPath::try_from("site/from-c").unwrap();
    cc.propose(&p, Op::Whiteout).unwrap();
    until("C's mutation reaches A and B", || {
        a.resolve(&p) == Resolution::Hidden && b.resolve(&p) == Resolution::Hidden
    });

    // Every table converged.
    until("A and C converge", || {
        a.with_table(|t| t.digest().vv) == cc.with_table(|t| t.digest().vv)
    });
    drop((a, b, cc));
    for m in nodes.iter_mut() {
        if let Some(m) = m.take() {
            c.stop(m);
        }
    }
}
