//! Restart catch-up: node B is stopped, node A takes N mutations (default 100,000), then B
//! restarts from its data directory and the time until its table resolves every one of them is
//! printed. Both nodes are runtimes in this process over real QUIC + mTLS on loopback with real
//! data directories; the mutations are proposed through A's `RuntimeHandle` (the call the
//! filesystem makes), with interval fsyncs on A so the proposing itself stays short: what is
//! measured is B's start plus its anti-entropy catch-up, not A's proposals.
//!
//! `cargo run --release -p wcfs-gossip --example catchup [N]`

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use wcfs_core::handle::TableHandle;
use wcfs_core::table::Resolution;
use wcfs_core::{Op, WPath};
use wcfs_gossip::journal::Durability;
use wcfs_gossip::runtime::{Runtime, RuntimeConfig, random_u64};
use wcfs_gossip::store::{Store, StoreOptions};
use wcfs_gossip::tls::{self, NodeTls};

fn start(dir: &Path, ca: &Path, name: &str, me: SocketAddr, seed: SocketAddr) -> Runtime {
    let certs = dir.join("certs");
    if !certs.join(format!("{name}.pem")).exists() {
        tls::issue(name, ca, &certs).expect("issue");
    }
    let tls = NodeTls::load(
        &ca.join("ca.pem"),
        &certs.join(format!("{name}.pem")),
        &certs.join(format!("{name}.key")),
    )
    .expect("certificates");
    let opts = StoreOptions {
        durability: Durability::Interval(Duration::from_millis(50)),
        ..StoreOptions::default()
    };
    let (store, table, rec) =
        Store::open(dir.join(name), opts, || (random_u64(), random_u64())).expect("data directory");
    let cfg = RuntimeConfig::new(me, vec![seed], 2);
    Runtime::start(cfg, &tls, store, table, &rec, Box::new(|_| {})).expect("runtime")
}

fn path(i: usize) -> WPath {
    WPath::try_from(format!("site/up/d{}/f{i}.jpg", i % 1000).as_str()).expect("path")
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = tmp.path().join("ca");
    tls::init_ca(&ca).expect("ca");
    let port = || {
        UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("port")
    };
    let (la, lb) = (port(), port());
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let _g = tokio.enter();
    let a = start(tmp.path(), &ca, "a", la, lb);
    let b = start(tmp.path(), &ca, "b", lb, la);
    let (ha, hb) = (a.handle(), b.handle());
    while ha.members().is_empty() || hb.members().is_empty() {
        std::thread::sleep(Duration::from_millis(5));
    }
    ha.propose(&path(0), Op::MarkRw).expect("propose");
    while hb.resolve(&path(0)) != Resolution::Rw {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(hb);
    tokio.block_on(b.shutdown());

    let t0 = Instant::now();
    for i in 1..n {
        ha.propose(&path(i), Op::MarkRw).expect("propose");
    }
    println!(
        "A: {n} mutations proposed in {:?} while B was down",
        t0.elapsed()
    );
    // An in-process endpoint may hold its port briefly after shutdown; a real restart is a
    // new process. Wait for it so the time below is B's.
    let t0 = Instant::now();
    while UdpSocket::bind(lb).is_err() {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("B's port free {:?} after shutdown", t0.elapsed());

    let t0 = Instant::now();
    let b = start(tmp.path(), &ca, "b", lb, la);
    let started = t0.elapsed();
    let hb = b.handle();
    let last = path(n - 1);
    while hb.resolve(&last) != Resolution::Rw
        || !(0..n).all(|i| hb.resolve(&path(i)) == Resolution::Rw)
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = t0.elapsed();
    let st = hb.node_stats();
    println!(
        "B restarted (start {started:?}) and resolves all {n} mutations {took:?} after start \
         (records merged {}, snapshots installed {})",
        st.records_merged, st.resets
    );
    drop(hb);
    tokio.block_on(b.shutdown());
    drop(ha);
    tokio.block_on(a.shutdown());
}
