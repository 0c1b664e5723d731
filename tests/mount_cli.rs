//! `wcfs mount`: a real process, a real mount, unmounted cleanly on SIGTERM.

mod common;
use common::{Proc, is_mounted, local_mount, wait};

use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn mount_serves_the_union_and_unmounts_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let (ro, rw, mnt) = (
        tmp.path().join("ro"),
        tmp.path().join("rw"),
        tmp.path().join("mnt"),
    );
    for d in [&ro, &rw, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(ro.join("index.html"), b"hello").unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_wcfs"))
        .args(["mount", "--ro"])
        .arg(&ro)
        .arg("--rw")
        .arg(&rw)
        .arg(&mnt)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut p = Proc(child, mnt.clone());
    assert!(
        wait(Duration::from_secs(10), || is_mounted(&mnt)),
        "not mounted"
    );
    assert_eq!(std::fs::read(mnt.join("index.html")).unwrap(), b"hello");
    std::fs::write(mnt.join("upload"), b"u").unwrap();
    assert_eq!(std::fs::read(rw.join("upload")).unwrap(), b"u");
    // A second mount on the same mountpoint is refused with a clear message.
    let out = Command::new(env!("CARGO_BIN_EXE_wcfs"))
        .args(["mount", "--ro"])
        .arg(&ro)
        .arg("--rw")
        .arg(&rw)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("busy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
    let status = p.0.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(!is_mounted(&mnt));
    assert!(!mnt.join("index.html").exists());
}

#[test]
fn a_killed_mount_restarts_with_every_change_it_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let (ro, rw, data, mnt) = (
        tmp.path().join("ro"),
        tmp.path().join("rw"),
        tmp.path().join("data"),
        tmp.path().join("mnt"),
    );
    for d in [&ro, &rw, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(ro.join("index.php"), b"<?php").unwrap();
    std::fs::write(ro.join("install.php"), b"<?php").unwrap();
    let mut p = local_mount(&ro, &rw, &data, &mnt);
    for i in 0..50 {
        std::fs::write(mnt.join(format!("upload-{i}.jpg")), b"jpg").unwrap();
    }
    std::fs::remove_file(mnt.join("install.php")).unwrap();
    // No clean shutdown: the process dies as in a crash or an OOM kill.
    p.0.kill().unwrap();
    p.0.wait().unwrap();
    drop(p);
    assert!(
        wait(Duration::from_secs(5), || !is_mounted(&mnt)),
        "dead mount still attached"
    );

    let _p = local_mount(&ro, &rw, &data, &mnt);
    for i in 0..50 {
        assert_eq!(
            std::fs::read(mnt.join(format!("upload-{i}.jpg"))).unwrap(),
            b"jpg",
            "upload-{i} lost"
        );
    }
    assert!(
        !mnt.join("install.php").exists(),
        "deleted RO file came back"
    );
    assert_eq!(std::fs::read(mnt.join("index.php")).unwrap(), b"<?php");
}

#[test]
fn a_clean_stop_leaves_a_snapshot_and_the_next_start_uses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (ro, rw, data, mnt) = (
        tmp.path().join("ro"),
        tmp.path().join("rw"),
        tmp.path().join("data"),
        tmp.path().join("mnt"),
    );
    for d in [&ro, &rw, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    let mut p = local_mount(&ro, &rw, &data, &mnt);
    std::fs::create_dir(mnt.join("cache")).unwrap();
    std::fs::write(mnt.join("cache/page.html"), b"<html>").unwrap();
    unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
    assert!(p.0.wait().unwrap().success());
    drop(p);
    assert!(
        data.join("table.snap").exists(),
        "no snapshot after a clean stop"
    );
    let _p = local_mount(&ro, &rw, &data, &mnt);
    assert_eq!(
        std::fs::read(mnt.join("cache/page.html")).unwrap(),
        b"<html>"
    );
}

/// Two `wcfs mount` processes over one RW directory: their `flock`s exclude each other by
/// default (held on the RW branch), and do not with fast opens (`--fast-open` on one, the
/// config key on the other), which keep locks in each node's kernel.
#[test]
fn fast_open_from_the_flag_or_the_file_keeps_locks_per_node() {
    use std::os::fd::AsRawFd;
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| {
        let p = tmp.path().join(n);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let (ro, rw) = (d("ro"), d("rw"));
    // Written behind the mounts' backs: strict mode finds it on RW.
    std::fs::write(rw.join("lk"), b"x").unwrap();
    let config = |name: &str, fast: bool| {
        let p = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "[branches]\nro = {:?}\nrw = {:?}\n[union]\nstrict = true\nfast_open = {fast}\n",
                ro, rw
            ),
        )
        .unwrap();
        p
    };
    let flock = |f: &std::fs::File| unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    let pair = |tag: &str, fast_flag: bool, fast_key: bool| -> bool {
        let (ma, mb) = (d(&format!("{tag}-a")), d(&format!("{tag}-b")));
        let (ca, cb) = (
            config(&format!("{tag}-a"), false),
            config(&format!("{tag}-b"), fast_key),
        );
        let mut args_a = vec!["--config".as_ref(), ca.as_os_str()];
        if fast_flag {
            args_a.push("--fast-open".as_ref());
        }
        args_a.push(ma.as_os_str());
        let _a = common::spawn_mount(&args_a, &ma);
        let _b = common::spawn_mount(&["--config".as_ref(), cb.as_os_str(), mb.as_os_str()], &mb);
        let fa = std::fs::File::open(ma.join("lk")).unwrap();
        let fb = std::fs::File::open(mb.join("lk")).unwrap();
        assert!(flock(&fa));
        flock(&fb)
    };
    assert!(
        !pair("default", false, false),
        "default: the second node got the lock"
    );
    assert!(
        pair("fast", true, true),
        "fast opens: the second node was excluded"
    );
}
