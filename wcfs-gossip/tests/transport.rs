//! The QUIC transport on loopback: authenticated peers exchange datagrams and stream messages
//! over one reused connection; a peer with a certificate from another CA delivers nothing.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use wcfs_core::node::Channel;
use wcfs_gossip::tls::{self, NodeTls};
use wcfs_gossip::transport::{Inbound, SendError, Transport, TransportConfig};

const DEADLINE: Duration = Duration::from_secs(20);

fn node_tls(dir: &Path, ca: &Path, name: &str) -> NodeTls {
    let w = tls::issue(name, ca, dir).unwrap();
    NodeTls::load(&ca.join("ca.pem"), &w.cert, &w.key).unwrap()
}

fn cfg() -> TransportConfig {
    let mut c = TransportConfig::new("127.0.0.1:0".parse().unwrap());
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.dial_timeout = Duration::from_millis(500);
    c
}

fn bind(c: TransportConfig, t: &NodeTls) -> (Transport, mpsc::Receiver<Inbound>) {
    Transport::bind(c, t).unwrap()
}

/// Polls `cond` until it holds, failing the test at the deadline.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends a datagram every 20 ms until one arrives (datagrams are unreliable by contract).
async fn datagram_until_received(
    from: &Transport,
    to: SocketAddr,
    rx: &mut mpsc::Receiver<Inbound>,
    bytes: &[u8],
) -> Inbound {
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < DEADLINE, "datagram never arrived");
        let _ = from.send(to, Channel::Datagram, bytes.to_vec());
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(20), rx.recv()).await {
            return m;
        }
    }
}

async fn recv(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("message in time")
        .expect("transport open")
}

struct Cluster {
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    other_ca: std::path::PathBuf,
    certs: std::path::PathBuf,
}

fn cluster() -> Cluster {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("ca");
    let other_ca = d.path().join("other-ca");
    tls::init_ca(&ca).unwrap();
    tls::init_ca(&other_ca).unwrap();
    let certs = d.path().join("certs");
    Cluster {
        _dir: d,
        ca,
        other_ca,
        certs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_exchange_datagrams_and_streams_over_one_connection() {
    let c = cluster();
    let (a, mut arx) = bind(cfg(), &node_tls(&c.certs, &c.ca, "node-a"));
    let mut bcfg = cfg();
    bcfg.max_message = 2 << 20;
    let (b, mut brx) = bind(bcfg, &node_tls(&c.certs, &c.ca, "node-b"));

    let m = datagram_until_received(&a, b.local_addr(), &mut brx, b"ping").await;
    assert_eq!(m.from, a.local_addr());
    assert_eq!(&*m.peer, "node-a");
    assert_eq!(m.channel, Channel::Datagram);
    assert_eq!(m.bytes, b"ping");

    // B answers over the connection A opened: no second dial.
    let m = datagram_until_received(&b, a.local_addr(), &mut arx, b"pong").await;
    assert_eq!(
        (m.from, &*m.peer, &m.bytes[..]),
        (b.local_addr(), "node-b", &b"pong"[..])
    );
    assert_eq!(b.stats().dials, 0, "B must reuse A's connection");

    // Streams are reliable: every message arrives intact, big ones included.
    let mut sent: Vec<Vec<u8>> = (0..200u32)
        .map(|i| {
            let len = if i % 50 == 0 {
                1 << 20
            } else {
                (i as usize * 37) % 3000
            };
            (0..len).map(|j| (j as u32 ^ i) as u8).collect()
        })
        .collect();
    for m in &sent {
        a.send(b.local_addr(), Channel::Stream, m.clone()).unwrap();
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let m = recv(&mut brx).await;
        if m.channel == Channel::Stream {
            assert_eq!(&*m.peer, "node-a");
            got.push(m.bytes);
        }
    }
    sent.sort();
    got.sort();
    assert!(sent == got, "stream messages differ");
    assert_eq!(a.stats().dials, 1, "A must reuse its connection");

    // Size bounds: refused on send beyond our limit, dropped on receipt beyond the peer's.
    let too_big = vec![7u8; cfg().max_message + 1];
    assert_eq!(
        a.send(b.local_addr(), Channel::Stream, too_big),
        Err(SendError::TooLarge)
    );
    a.send(b.local_addr(), Channel::Stream, vec![1u8; (2 << 20) + 1])
        .unwrap();
    until("B drops the oversized stream", || {
        b.stats().dropped_too_large == 1
    })
    .await;
    a.send(b.local_addr(), Channel::Datagram, vec![1u8; 4000])
        .unwrap();
    until("A drops the oversized datagram", || {
        a.stats().dropped_too_large == 2
    })
    .await;
    a.send(b.local_addr(), Channel::Stream, b"after".to_vec())
        .unwrap();
    let m = recv(&mut brx).await;
    assert_eq!(m.bytes, b"after", "nothing oversized was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_from_another_ca_delivers_nothing() {
    let c = cluster();
    let (a, mut arx) = bind(cfg(), &node_tls(&c.certs, &c.ca, "node-a"));
    let (b, _brx) = bind(cfg(), &node_tls(&c.certs, &c.ca, "node-b"));
    // The intruder even claims a member's name.
    let (x, mut xrx) = bind(cfg(), &node_tls(&c.certs.join("x"), &c.other_ca, "node-b"));

    for i in 0..20u8 {
        let _ = x.send(a.local_addr(), Channel::Datagram, vec![i]);
        let _ = x.send(a.local_addr(), Channel::Stream, vec![i; 100]);
    }
    until("A refuses the intruder's handshake", || {
        a.stats().handshakes_failed >= 1 && x.stats().dropped_unreachable >= 1
    })
    .await;
    // A dialing the intruder fails too, and the intruder receives nothing.
    a.send(x.local_addr(), Channel::Stream, b"secret".to_vec())
        .unwrap();
    until("A refuses the intruder's server certificate", || {
        a.stats().dropped_unreachable >= 1
    })
    .await;
    assert_eq!(x.stats().sent, 0);
    assert!(xrx.try_recv().is_err(), "the intruder got a message");

    // The legitimate peer still gets through, and is the first thing A ever receives.
    b.send(a.local_addr(), Channel::Stream, b"marker".to_vec())
        .unwrap();
    let m = recv(&mut arx).await;
    assert_eq!((&*m.peer, &m.bytes[..]), ("node-b", &b"marker"[..]));
    assert_eq!(m.from, b.local_addr());
    assert!(arx.try_recv().is_err(), "something else arrived at A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redials_a_restarted_peer() {
    let c = cluster();
    let (a, _arx) = bind(cfg(), &node_tls(&c.certs, &c.ca, "node-a"));
    let btls = node_tls(&c.certs, &c.ca, "node-b");
    let (b, mut brx) = bind(cfg(), &btls);
    let baddr = b.local_addr();
    a.send(baddr, Channel::Stream, b"one".to_vec()).unwrap();
    assert_eq!(recv(&mut brx).await.bytes, b"one");

    b.close();
    b.wait_closed().await;
    drop(b);
    drop(brx);
    // The old socket is released once the endpoint's driver has finished.
    let mut c2 = cfg();
    c2.listen = baddr;
    let t0 = Instant::now();
    let (_b2, mut b2rx) = loop {
        match Transport::bind(c2.clone(), &btls) {
            Ok(t) => break t,
            Err(e) => {
                assert!(t0.elapsed() < DEADLINE, "port never freed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // Streams sent while A still holds the dead connection may be lost; keep sending until one
    // arrives over a fresh connection.
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < DEADLINE, "never reconnected");
        let _ = a.send(baddr, Channel::Stream, b"two".to_vec());
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), b2rx.recv()).await {
            assert_eq!(m.bytes, b"two");
            break;
        }
    }
    assert!(a.stats().dials >= 2, "{:?}", a.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_peer_queue_drops_without_blocking() {
    let c = cluster();
    let mut small = cfg();
    small.peer_queue_msgs = 16;
    small.peer_queue_bytes = 64 << 10;
    let (a, _arx) = bind(small, &node_tls(&c.certs, &c.ca, "node-a"));
    // Nothing listens there: a reserved port we bound and closed.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let t0 = Instant::now();
    let mut refused = 0;
    for _ in 0..10_000 {
        if a.send(dead, Channel::Stream, vec![0u8; 1000]) == Err(SendError::QueueFull) {
            refused += 1;
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "send blocked");
    assert!(refused >= 9_900, "only {refused} refused");
    assert!(a.queued_bytes(dead) <= 64 << 10);
    assert_eq!(a.stats().dropped_queue_full, refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_memory_bound_serializes_but_delivers_everything() {
    let c = cluster();
    let (a, _arx) = bind(cfg(), &node_tls(&c.certs, &c.ca, "node-a"));
    let mut tight = cfg();
    tight.max_message = 64 << 10;
    tight.max_inflight_bytes = 64 << 10; // room for one message at a time
    tight.inbound_queue = 2;
    let (b, mut brx) = bind(tight, &node_tls(&c.certs, &c.ca, "node-b"));
    for i in 0..40u8 {
        a.send(b.local_addr(), Channel::Stream, vec![i; 60 << 10])
            .unwrap();
    }
    let mut seen = [false; 40];
    for _ in 0..40 {
        let m = recv(&mut brx).await;
        assert_eq!(m.bytes.len(), 60 << 10);
        assert!(m.bytes.iter().all(|&x| x == m.bytes[0]));
        seen[m.bytes[0] as usize] = true;
    }
    assert!(seen.iter().all(|&s| s), "a message was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_meant_for_another_node_is_not_handed_to_this_one() {
    use wcfs_core::node::NodeName;
    let c = cluster();
    let (a, _arx) = bind(cfg(), &node_tls(&c.certs, &c.ca, "node-a"));
    let (b, mut brx) = bind(cfg(), &node_tls(&c.certs, &c.ca, "node-b"));
    let to = b.local_addr();
    let someone_else = Some(NodeName::new("node-c").unwrap());
    for i in 0..5u8 {
        a.send_to(to, someone_else, Channel::Stream, vec![i])
            .unwrap();
    }
    until("the wrong-peer drops", || a.stats().dropped_wrong_peer == 5).await;
    // Streams are ordered per peer task: the right name gets through after the refused ones,
    // and it is the first thing B receives.
    a.send_to(
        to,
        Some(NodeName::new("node-b").unwrap()),
        Channel::Stream,
        b"ok".to_vec(),
    )
    .unwrap();
    let m = recv(&mut brx).await;
    assert_eq!((m.bytes.as_slice(), &*m.peer), (&b"ok"[..], "node-a"));
    assert_eq!(a.stats().dropped_wrong_peer, 5);
}

/// A node that starts before its seed dials a port nobody listens on yet; the seed, once up,
/// dials back. The connection the seed opened must carry the first node's traffic at once,
/// not after the pending dial's Initial packet is retransmitted (about 1 s later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_to_a_peer_not_yet_listening_gives_way_to_its_incoming_connection() {
    let c = cluster();
    let mut acfg = cfg();
    acfg.dial_timeout = TransportConfig::new(acfg.listen).dial_timeout;
    let (a, mut arx) = bind(acfg, &node_tls(&c.certs, &c.ca, "node-a"));
    let baddr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    a.send(baddr, Channel::Stream, b"early".to_vec()).unwrap();
    until("A to start dialing B", || a.stats().dials >= 1).await;

    let mut bcfg = cfg();
    bcfg.listen = baddr;
    let (b, mut brx) = bind(bcfg, &node_tls(&c.certs, &c.ca, "node-b"));
    b.send(a.local_addr(), Channel::Stream, b"hello".to_vec())
        .unwrap();
    assert_eq!(recv(&mut arx).await.bytes, b"hello");
    let t0 = Instant::now();
    a.send(baddr, Channel::Stream, b"reply".to_vec()).unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(recv(&mut brx).await.bytes);
    }
    let waited = t0.elapsed();
    got.sort();
    assert_eq!(got, [b"early".to_vec(), b"reply".to_vec()]);
    assert!(
        waited < Duration::from_millis(300),
        "A's messages waited {waited:?} for its own dial"
    );
}
