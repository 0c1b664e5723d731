//! `wcfs mount --listen`: two real processes on loopback, each with its own mount and data
//! directory over one shared RW branch. A file created through one mount appears through the
//! other once the table change arrives (the RW branch alone is not enough: the table decides
//! what a mount shows), and a delete disappears the same way.

mod common;
use common::{Proc, free_port, is_mounted, until, wcfs};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Dirs {
    ro: PathBuf,
    rw: PathBuf,
    certs: PathBuf,
    root: PathBuf,
}

fn start(d: &Dirs, name: &str, listen: SocketAddr, seed: SocketAddr) -> Proc {
    let mnt = d.root.join(format!("mnt-{name}"));
    std::fs::create_dir_all(&mnt).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_wcfs"))
        .arg("mount")
        .arg("--ro")
        .arg(&d.ro)
        .arg("--rw")
        .arg(&d.rw)
        .arg("--data")
        .arg(d.root.join(format!("data-{name}")))
        .args(["--listen", &listen.to_string(), "--seed", &seed.to_string()])
        .arg("--ca")
        .arg(d.certs.join("ca.pem"))
        .arg("--cert")
        .arg(d.certs.join(format!("{name}.pem")))
        .arg("--key")
        .arg(d.certs.join(format!("{name}.key")))
        .arg(&mnt)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child, mnt.clone());
    until("the mount", || is_mounted(&mnt));
    p
}

/// RO and RW branches, a CA and certificates for nodes `a` and `b` under `root`.
fn setup(root: &Path) -> Dirs {
    let root = root.to_owned();
    let d = Dirs {
        ro: root.join("ro"),
        rw: root.join("rw"),
        certs: root.join("certs"),
        root: root.clone(),
    };
    for p in [&d.ro, &d.rw] {
        std::fs::create_dir(p).unwrap();
    }
    std::fs::write(d.ro.join("index.php"), b"<?php").unwrap();
    wcfs(&[
        "ca".as_ref(),
        "init".as_ref(),
        "--out".as_ref(),
        d.certs.as_ref(),
    ]);
    for name in ["a", "b"] {
        wcfs(&[
            "ca".as_ref(),
            "issue".as_ref(),
            name.as_ref(),
            "--ca-dir".as_ref(),
            d.certs.as_ref(),
            "--out".as_ref(),
            d.certs.as_ref(),
        ]);
    }
    d
}

#[test]
fn a_file_created_through_one_mount_appears_through_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let d = setup(tmp.path());
    let (la, lb) = (free_port(), free_port());
    let a = start(&d, "a", la, lb);
    let b = start(&d, "b", lb, la);
    let (ma, mb) = (a.1.clone(), b.1.clone());
    assert_eq!(std::fs::read(mb.join("index.php")).unwrap(), b"<?php");

    // B looks the name up first, so its kernel holds a negative entry that the change must
    // invalidate.
    assert!(!mb.join("upload.txt").exists());
    let t0 = Instant::now();
    std::fs::write(ma.join("upload.txt"), b"from a").unwrap();
    until("the file to appear through B", || {
        std::fs::read(mb.join("upload.txt")).is_ok_and(|c| c == b"from a")
    });
    println!(
        "first create on A (nodes possibly still joining) visible through B after {:?}",
        t0.elapsed()
    );
    // Now that the nodes know each other: the time a user of B waits for A's creates.
    let mut times = Vec::new();
    for i in 0..20 {
        let name = format!("f{i}");
        assert!(!mb.join(&name).exists());
        let t0 = Instant::now();
        std::fs::write(ma.join(&name), b"x").unwrap();
        until("a create to appear through B", || mb.join(&name).exists());
        times.push(t0.elapsed());
    }
    times.sort();
    println!(
        "create through A -> visible through B, 20 files: median {:?} max {:?}",
        times[10], times[19]
    );

    // And back: a delete through B disappears through A.
    std::fs::remove_file(mb.join("upload.txt")).unwrap();
    until("the file to disappear through A", || {
        !ma.join("upload.txt").exists()
    });
    // Deleting an RO file through A hides it through B too.
    std::fs::remove_file(ma.join("index.php")).unwrap();
    until("the RO file to be hidden through B", || {
        !mb.join("index.php").exists()
    });
    assert!(
        d.ro.join("index.php").exists(),
        "the RO branch is untouched"
    );

    // A clean stop on SIGTERM unmounts.
    for p in [a, b] {
        unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
        let mut p = p;
        let status = p.0.wait().unwrap();
        assert!(status.success(), "exit status {status}");
        assert!(!is_mounted(&p.1));
    }
}

#[test]
fn a_killed_node_restarts_from_its_data_directory_and_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let d = setup(tmp.path());
    let (la, lb) = (free_port(), free_port());
    let a = start(&d, "a", la, lb);
    let b = start(&d, "b", lb, la);
    let (ma, mb) = (a.1.clone(), b.1.clone());
    std::fs::write(ma.join("before"), b"1").unwrap();
    until("the nodes to sync", || mb.join("before").exists());

    // SIGKILL: B's peers are not told; A keeps writing meanwhile.
    drop(b);
    for i in 0..50 {
        std::fs::write(ma.join(format!("during{i}")), b"x").unwrap();
    }
    let b = start(&d, "b", lb, la);
    let t0 = Instant::now();
    assert!(mb.join("before").exists(), "B lost what it had");
    until("restarted B to catch up", || {
        (0..50).all(|i| mb.join(format!("during{i}")).exists())
    });
    let took = t0.elapsed();
    println!("B restarted after SIGKILL caught up on 50 creates in {took:?}");
    // The target for a restarted node is 5 s; on loopback it is one anti-entropy round.
    assert!(took < Duration::from_secs(5), "catch-up took {took:?}");
    // And B's new writes reach A (the restarted node's connection is used, not the dead one).
    std::fs::write(mb.join("after"), b"2").unwrap();
    until("B's create to reach A", || ma.join("after").exists());
    drop((a, b));
}
