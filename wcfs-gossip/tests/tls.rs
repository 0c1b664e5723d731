//! Cluster CA and node certificates: issued certs chain to their CA, carry the node name, and
//! a certificate from another CA fails a mutual-TLS handshake in either direction.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};
use wcfs_gossip::tls::{self, NodeTls, TlsError};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn node(dir: &Path, ca: &Path, name: &str) -> NodeTls {
    let w = tls::issue(name, ca, dir).unwrap();
    NodeTls::load(&ca.join("ca.pem"), &w.cert, &w.key).unwrap()
}

/// Runs an in-memory TLS 1.3 handshake; returns the name each side read from the other's
/// certificate, or the first error.
fn handshake(client: &NodeTls, server: &NodeTls) -> Result<(String, String), rustls::Error> {
    let mut c = ClientConnection::new(
        Arc::new(client.client_config().unwrap()),
        ServerName::try_from("anything").unwrap(),
    )?;
    let mut s = ServerConnection::new(Arc::new(server.server_config().unwrap()))?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets()?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            let name = |certs: Option<&[rustls::pki_types::CertificateDer<'_>]>| {
                tls::cert_node_name(&certs.expect("peer certificate")[0]).unwrap()
            };
            return Ok((name(c.peer_certificates()), name(s.peer_certificates())));
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn issue_load_and_handshake_within_one_ca() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("ca");
    let w = tls::init_ca(&ca).unwrap();
    assert_eq!(w.cert, ca.join("ca.pem"));
    assert_eq!(w.key, ca.join("ca.key"));
    assert_eq!(mode(&w.key), 0o600);

    let out = d.path().join("certs");
    let a = node(&out, &ca, "node-a");
    assert_eq!(mode(&out.join("node-a.key")), 0o600);
    assert!(out.join("node-a.pem").exists());
    assert_eq!(a.name(), "node-a");
    let b = node(&out, &ca, "node-b");

    let (server_seen, client_seen) = handshake(&a, &b).unwrap();
    assert_eq!(server_seen, "node-b");
    assert_eq!(client_seen, "node-a");
}

#[test]
fn cert_from_another_ca_is_rejected_both_ways() {
    let d = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (d.path().join("ca1"), d.path().join("ca2"));
    tls::init_ca(&ca1).unwrap();
    tls::init_ca(&ca2).unwrap();
    let a = node(&d.path().join("n1"), &ca1, "node-a");
    let intruder = node(&d.path().join("n2"), &ca2, "node-b");

    // The intruder dials us: our server refuses its client certificate.
    let e = handshake(&intruder, &a).unwrap_err();
    assert!(
        matches!(
            &e,
            rustls::Error::InvalidCertificate(_) | rustls::Error::AlertReceived(_)
        ),
        "{e:?}"
    );
    // We dial the intruder: our client refuses its server certificate.
    let e = handshake(&a, &intruder).unwrap_err();
    assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");

    // A cluster member's own cert with the wrong CA file cannot even be loaded as a pair that
    // verifies: a CA-2 node given CA-1 as its CA still fails to talk to CA-1 nodes.
    let mixed = NodeTls::load(
        &ca1.join("ca.pem"),
        &d.path().join("n2/node-b.pem"),
        &d.path().join("n2/node-b.key"),
    )
    .unwrap();
    assert!(handshake(&mixed, &a).is_err());
    assert!(handshake(&a, &mixed).is_err());
}

#[test]
fn refuses_overwrites_and_bad_names() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("ca");
    tls::init_ca(&ca).unwrap();
    let before = std::fs::read(ca.join("ca.key")).unwrap();
    assert!(matches!(tls::init_ca(&ca), Err(TlsError::Io { .. })));
    assert_eq!(std::fs::read(ca.join("ca.key")).unwrap(), before);

    tls::issue("web1", &ca, d.path()).unwrap();
    assert!(matches!(
        tls::issue("web1", &ca, d.path()),
        Err(TlsError::Io { .. })
    ));

    for bad in ["", "Web1", "1web", "web-", "a.b", "we b", &"a".repeat(64)] {
        assert!(
            matches!(tls::issue(bad, &ca, d.path()), Err(TlsError::BadName(_))),
            "{bad:?} accepted"
        );
    }
    assert!(tls::issue("a", &ca, d.path()).is_ok());
    assert!(tls::issue(&"a".repeat(63), &ca, d.path()).is_ok());
    // A missing CA is an I/O error naming the file.
    let e = tls::issue("x", &d.path().join("nope"), d.path()).unwrap_err();
    assert!(e.to_string().contains("ca.key"), "{e}");
}

#[test]
fn mismatched_key_is_refused_at_load() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("ca");
    tls::init_ca(&ca).unwrap();
    let a = tls::issue("node-a", &ca, d.path()).unwrap();
    let b = tls::issue("node-b", &ca, d.path()).unwrap();
    assert!(NodeTls::load(&ca.join("ca.pem"), &a.cert, &b.key).is_err());
    // A CA certificate is not a node certificate (no DNS name).
    assert!(NodeTls::load(&ca.join("ca.pem"), &ca.join("ca.pem"), &ca.join("ca.key")).is_err());
}

#[test]
fn cert_node_name_total_on_garbage() {
    for bytes in [&b""[..], b"\x30", b"\x30\x82\xff\xff", &[0u8; 100]] {
        assert!(tls::cert_node_name(bytes).is_err());
    }
}
