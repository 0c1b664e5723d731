//! `wcfs status` of cluster nodes started from config files: members, their lag, a peer that
//! dies shown as down; systemd readiness; the node name checked against the certificate.

mod common;
use common::{Proc, is_mounted};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wcfs(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wcfs"))
        .args(args)
        .output()
        .unwrap()
}

fn free_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Writes `root/NAME.toml` for node `name` (certificate `cert`), with `extra` TOML at the end,
/// and returns its path.
fn config(
    root: &Path,
    name: &str,
    cert: &str,
    listen: SocketAddr,
    seed: SocketAddr,
    extra: &str,
) -> PathBuf {
    let mnt = root.join(format!("mnt-{name}"));
    std::fs::create_dir_all(&mnt).unwrap();
    let certs = root.join("certs");
    let text = format!(
        "name = {name:?}\ndata_dir = {:?}\nlisten = \"{listen}\"\nseeds = [\"{seed}\"]\n\
         [branches]\nro = {:?}\nrw = {:?}\nmountpoint = {mnt:?}\n\
         [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n{extra}",
        root.join(format!("data-{name}")),
        root.join("ro"),
        root.join("rw"),
        certs.join("ca.pem"),
        certs.join(format!("{cert}.pem")),
        certs.join(format!("{cert}.key")),
    );
    let p = root.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn setup(root: &Path) {
    for d in ["ro", "rw"] {
        std::fs::create_dir(root.join(d)).unwrap();
    }
    let certs = root.join("certs");
    let out = wcfs(&[
        "ca".as_ref(),
        "init".as_ref(),
        "--out".as_ref(),
        certs.as_ref(),
    ]);
    assert!(out.status.success());
    for name in ["a", "b"] {
        let out = wcfs(&[
            "ca".as_ref(),
            "issue".as_ref(),
            name.as_ref(),
            "--ca-dir".as_ref(),
            certs.as_ref(),
            "--out".as_ref(),
            certs.as_ref(),
        ]);
        assert!(out.status.success());
    }
}

fn start(cfg: &Path, mnt: PathBuf, notify: Option<&Path>) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wcfs"));
    cmd.args(["mount", "--config"])
        .arg(cfg)
        .stderr(Stdio::null());
    match notify {
        Some(n) => cmd.env("NOTIFY_SOCKET", n),
        None => cmd.env_remove("NOTIFY_SOCKET"),
    };
    let p = Proc(cmd.spawn().unwrap(), mnt.clone());
    until("the mount", || is_mounted(&mnt));
    p
}

fn status(cfg: &Path) -> serde_json::Value {
    let out = wcfs(&[
        "status".as_ref(),
        "--json".as_ref(),
        "--config".as_ref(),
        cfg.as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn status_shows_members_their_lag_and_a_dead_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    setup(root);
    let (la, lb) = (free_port(), free_port());
    let ca = config(root, "a", "a", la, lb, "");
    let cb = config(root, "b", "b", lb, la, "");
    let notify_path = root.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(DEADLINE)).unwrap();
    let a = start(&ca, root.join("mnt-a"), None);
    std::fs::write(a.1.join("from-a"), b"1").unwrap();
    let mut b = start(&cb, root.join("mnt-b"), Some(&notify_path));
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means caught up with a peer: what A had is there.
    assert!(
        b.1.join("from-a").exists(),
        "B said ready before catching up"
    );

    until("A to list B as up and in sync", || {
        let v = status(&ca);
        let m = v["members"].as_array().unwrap();
        m.len() == 1
            && m[0]["addr"] == lb.to_string()
            && m[0]["state"] == "up"
            && m[0]["behind"] == 0
            && m[0]["ahead"] == 0
    });
    let v = status(&ca);
    assert_eq!(v["name"], "a");
    assert_eq!(v["listen"], la.to_string());
    assert_eq!(v["table"]["live_paths"], 1);

    // A clean stop says STOPPING=1.
    unsafe { libc::kill(b.0.id() as i32, libc::SIGTERM) };
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(b.0.wait().unwrap().success());
    drop(b);
    // B left: A shows it down (it left cleanly, or SWIM noticed), flagged in the human view.
    until("A to show B down", || {
        let v = status(&ca);
        let m = v["members"].as_array().unwrap();
        m.iter().all(|m| m["state"] == "down") && !m.is_empty()
    });
    let out = wcfs(&["status".as_ref(), "--config".as_ref(), ca.as_ref()]);
    let human = String::from_utf8_lossy(&out.stdout);
    let line = human.lines().find(|l| l.contains(&lb.to_string())).unwrap();
    assert!(
        line.trim_start().starts_with('!') && line.contains("DOWN"),
        "{human}"
    );
    drop(a);
}

#[test]
fn a_name_that_is_not_the_certificates_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    setup(root);
    let cfg = config(root, "c", "a", free_port(), free_port(), "");
    let out = wcfs(&["mount".as_ref(), "--config".as_ref(), cfg.as_ref()]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("name: \"c\"") && e.contains("\"a\""), "{e}");
    assert!(!is_mounted(&root.join("mnt-c")));
}

fn free_tcp_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `GET /metrics` over plain HTTP/1.1; `None` while the endpoint is not up yet.
fn scrape(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.ends_with("# EOF\n"), "truncated: {body}");
    Some(body.to_owned())
}

/// The sum of the series named `name` whose labels include every one of `labels` (`k="v"`);
/// `None` if there is no such series.
fn metric(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (n, l) = series.split_once('{').unwrap_or((series, ""));
        if n == name && labels.iter().all(|want| l.contains(want)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

#[test]
fn metrics_and_status_of_a_running_cluster_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    setup(root);
    let (la, lb) = (free_port(), free_port());
    let (ma, mb) = (free_tcp_port(), free_tcp_port());
    let ca = config(
        root,
        "a",
        "a",
        la,
        lb,
        &format!("[metrics]\nlisten = \"{ma}\"\n"),
    );
    let cb = config(
        root,
        "b",
        "b",
        lb,
        la,
        &format!("[metrics]\nlisten = \"{mb}\"\n"),
    );
    let a = start(&ca, root.join("mnt-a"), None);
    let b = start(&cb, root.join("mnt-b"), None);
    until("both metrics endpoints", || {
        scrape(ma).is_some() && scrape(mb).is_some()
    });
    until("A and B to see each other", || {
        [&ca, &cb].iter().all(|c| {
            let v = status(c);
            v["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["state"] == "up")
        })
    });

    // Created through A: a directory and files in it, and a file at the root.
    std::fs::create_dir(a.1.join("uploads")).unwrap();
    let mut paths = vec!["uploads".to_owned(), "index.html".to_owned()];
    std::fs::write(a.1.join("index.html"), b"<p>hi</p>").unwrap();
    for i in 0..4 {
        let p = format!("uploads/f{i}");
        std::fs::write(a.1.join(&p), b"x").unwrap();
        paths.push(p);
    }
    until("every path visible through B", || {
        paths.iter().all(|p| b.1.join(p).exists())
    });
    let n = paths.len() as f64;

    // Received counters and the histogram are updated after the records are visible:
    // poll for them, then assert on one scrape so a failure shows what was there.
    until("B's metrics to show the records", || {
        let body = scrape(mb).unwrap();
        metric(&body, "wcfs_propagation_latency_seconds_count", &[]).unwrap_or(0.0) >= 1.0
            && metric(&body, "wcfs_table_paths", &[]) == Some(n)
    });
    let body_b = scrape(mb).unwrap();
    let body_a = scrape(ma).unwrap();
    let m = |body: &str, name: &str, labels: &[&str]| {
        metric(body, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{body}"))
    };
    for (body, cfg) in [(&body_a, &ca), (&body_b, &cb)] {
        assert_eq!(m(body, "wcfs_table_paths", &[]), n, "{body}");
        // `wcfs status --json` reads the same table.
        let v = status(cfg);
        assert_eq!(v["table"]["live_paths"].as_f64(), Some(n), "{v:#}");
        assert!(m(body, "wcfs_fuse_requests_total", &["op=\"lookup\""]) > 0.0);
    }
    assert!(
        m(&body_b, "wcfs_records_received_total", &["peer=\"a\""]) >= n,
        "{body_b}"
    );
    assert!(
        m(&body_b, "wcfs_records_applied_total", &["peer=\"a\""]) >= n,
        "{body_b}"
    );
    assert!(m(&body_b, "wcfs_propagation_latency_seconds_count", &[]) >= 1.0);
    // A created them: it proposed them and sent them to B, and applied nothing from B.
    assert!(m(&body_a, "wcfs_proposals_total", &[]) >= n, "{body_a}");
    assert!(
        m(&body_a, "wcfs_records_sent_total", &["peer=\"b\""]) >= n,
        "{body_a}"
    );
    assert_eq!(
        m(&body_a, "wcfs_records_applied_total", &[]),
        0.0,
        "{body_a}"
    );
    // Creating files on A wrote to the RW branch, charged to the create operation.
    assert!(m(&body_a, "wcfs_rw_syscalls_total", &["op=\"create\""]) > 0.0);

    // B unmounted from outside: it stops cleanly, and A learns that it left.
    let out = Command::new("umount").arg(&b.1).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut b = b;
    let t = Instant::now();
    let exit = loop {
        if let Some(s) = b.0.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < DEADLINE, "B kept running without its mount");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(exit.success(), "{exit:?}");
    until("A to show B down", || {
        let v = status(&ca);
        let m = v["members"].as_array().unwrap();
        !m.is_empty() && m.iter().all(|m| m["state"] == "down")
    });
    drop(b);
    drop(a);
}

#[test]
fn metrics_listen_without_listen_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = wcfs(&[
        "mount".as_ref(),
        "--ro".as_ref(),
        tmp.path().as_ref(),
        "--rw".as_ref(),
        tmp.path().as_ref(),
        "--metrics".as_ref(),
        "127.0.0.1:9464".as_ref(),
        tmp.path().as_ref(),
    ]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("metrics.listen: given without listen"), "{e}");
}
