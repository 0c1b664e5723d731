//! `wcfs status` of cluster nodes started from config files: members, their lag, a peer that
//! dies shown as down; systemd readiness; the node name checked against the certificate.

mod common;
use common::{Proc, is_mounted};

use std::net::{SocketAddr, UdpSocket};
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

/// Writes `root/NAME.toml` for node `name` (certificate `cert`) and returns its path.
fn config(root: &Path, name: &str, cert: &str, listen: SocketAddr, seed: SocketAddr) -> PathBuf {
    let mnt = root.join(format!("mnt-{name}"));
    std::fs::create_dir_all(&mnt).unwrap();
    let certs = root.join("certs");
    let text = format!(
        "name = {name:?}\ndata_dir = {:?}\nlisten = \"{listen}\"\nseeds = [\"{seed}\"]\n\
         [branches]\nro = {:?}\nrw = {:?}\nmountpoint = {mnt:?}\n\
         [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
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
    let ca = config(root, "a", "a", la, lb);
    let cb = config(root, "b", "b", lb, la);
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
    let cfg = config(root, "c", "a", free_port(), free_port());
    let out = wcfs(&["mount".as_ref(), "--config".as_ref(), cfg.as_ref()]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("name: \"c\"") && e.contains("\"a\""), "{e}");
    assert!(!is_mounted(&root.join("mnt-c")));
}
