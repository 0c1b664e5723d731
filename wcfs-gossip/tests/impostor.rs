//! A node with a valid certificate cannot speak as another member: a SWIM packet whose sender
//! names a node other than the one in the connection's certificate is dropped before the
//! sync engine sees it, and the sender gets no answer. The same packet with the certificate's
//! own name is accepted (so the test would notice if nothing were checked).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use foca::{Codec, Header, Message as FMsg};
use wcfs_core::ReplicaId;
use wcfs_core::node::{Channel, Identity, Message, NodeName, SwimCodec};
use wcfs_gossip::runtime::{Runtime, RuntimeConfig, random_u64};
use wcfs_gossip::store::{Store, StoreOptions};
use wcfs_gossip::tls::{self, NodeTls};
use wcfs_gossip::transport::{Transport, TransportConfig};

const DEADLINE: Duration = Duration::from_secs(20);

/// A SWIM announce from `src` to whoever listens at `to`, as the wire carries it.
fn announce(src: Identity, to: SocketAddr) -> Vec<u8> {
    let h = Header {
        src,
        src_incarnation: 0,
        dst: Identity {
            addr: to,
            name: NodeName::UNKNOWN,
            replica: ReplicaId(0),
            generation: 0,
        },
        message: FMsg::Announce,
    };
    let mut b = Vec::new();
    SwimCodec.encode_header(&h, &mut b).unwrap();
    Message::Swim(b).encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_another_members_name_gets_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, certs) = (tmp.path().join("ca"), tmp.path().join("certs"));
    tls::init_ca(&ca).unwrap();
    let load = |name: &str| {
        let w = tls::issue(name, &ca, &certs).unwrap();
        NodeTls::load(&ca.join("ca.pem"), &w.cert, &w.key).unwrap()
    };
    let (store, table, rec) = Store::open(tmp.path().join("n0"), StoreOptions::default(), || {
        (random_u64(), random_u64())
    })
    .unwrap();
    let cfg = RuntimeConfig::new("127.0.0.1:0".parse().unwrap(), vec![], 2);
    let rt = Runtime::start(cfg, &load("n0"), store, table, &rec, Box::new(|_| {})).unwrap();
    let h = rt.handle();
    let n0 = rt.local_addr();

    // Mallory holds a certificate from the cluster CA, for the name "mallory".
    let (mallory, mut inbox) = Transport::bind(
        TransportConfig::new("127.0.0.1:0".parse().unwrap()),
        &load("mallory"),
    )
    .unwrap();
    let me = |name: &str| Identity {
        addr: mallory.local_addr(),
        name: NodeName::new(name).unwrap(),
        replica: ReplicaId(77),
        generation: 1,
    };

    // Claiming to be "web-2": dropped, counted, never answered, never a member.
    let forged = announce(me("web-2"), n0);
    let t0 = Instant::now();
    while h.stats().impostor_dropped < 3 {
        assert!(
            t0.elapsed() < DEADLINE,
            "the forged announces never arrived"
        );
        let _ = mallory.send(n0, Channel::Datagram, forged.clone());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(h.members().is_empty(), "joined as {:?}", h.members());
    // n0 answers an announce at once; give a (dropped) answer a few round trips to show up.
    let got = tokio::time::timeout(Duration::from_millis(300), inbox.recv()).await;
    assert!(got.is_err(), "the impostor got {got:?}");

    // The same packet under its own name joins, and is answered.
    let honest = announce(me("mallory"), n0);
    let t0 = Instant::now();
    while h.members().is_empty() {
        assert!(t0.elapsed() < DEADLINE, "the honest announce never joined");
        let _ = mallory.send(n0, Channel::Datagram, honest.clone());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.members()[0].name.as_str(), "mallory");
    let answer = tokio::time::timeout(DEADLINE, inbox.recv())
        .await
        .expect("an answer")
        .expect("transport open");
    assert_eq!(&*answer.peer, "n0");
    assert!(Message::swim_payload(&answer.bytes).is_some());
    rt.shutdown().await;
}
