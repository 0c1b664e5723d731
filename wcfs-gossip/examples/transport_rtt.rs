//! Round-trip time of the QUIC transport on loopback: A sends, B echoes on the same channel.
//! `cargo run --release -p wcfs-gossip --example transport_rtt [ROUNDS]`

use std::time::{Duration, Instant};

use wcfs_core::node::Channel;
use wcfs_gossip::tls::{self, NodeTls};
use wcfs_gossip::transport::{Transport, TransportConfig};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args().nth(1).map_or(Ok(2000), |s| s.parse())?;
    let d = tempfile::tempdir()?;
    let ca = d.path().join("ca");
    tls::init_ca(&ca)?;
    let load = |name: &str| -> Result<NodeTls, tls::TlsError> {
        let w = tls::issue(name, &ca, d.path())?;
        NodeTls::load(&ca.join("ca.pem"), &w.cert, &w.key)
    };
    let cfg = TransportConfig::new("127.0.0.1:0".parse()?);
    let (a, mut arx) = Transport::bind(cfg.clone(), &load("node-a")?)?;
    let (b, mut brx) = Transport::bind(cfg, &load("node-b")?)?;
    let t0 = Instant::now();
    a.send(b.local_addr(), Channel::Stream, b"hello".to_vec())?;
    brx.recv().await.ok_or("closed")?;
    println!("first message incl. handshake: {:?}", t0.elapsed());
    let baddr = b.local_addr();
    let echo = tokio::spawn(async move {
        while let Some(m) = brx.recv().await {
            let _ = b.send(m.from, m.channel, m.bytes);
        }
    });
    for (channel, size) in [
        (Channel::Datagram, 100),
        (Channel::Stream, 100),
        (Channel::Stream, 64 << 10),
    ] {
        let mut rtts = Vec::with_capacity(rounds);
        let mut lost = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            a.send(baddr, channel, vec![1u8; size])?;
            match tokio::time::timeout(Duration::from_millis(200), arx.recv()).await {
                Ok(Some(_)) => rtts.push(t.elapsed()),
                _ => lost += 1,
            }
        }
        rtts.sort();
        let p = |q: f64| rtts[((rtts.len() - 1) as f64 * q) as usize];
        println!(
            "{channel:?} {size} B: rtt p50 {:?} p99 {:?} max {:?} (lost {lost}/{rounds})",
            p(0.5),
            p(0.99),
            rtts[rtts.len() - 1]
        );
    }
    echo.abort();
    Ok(())
}
