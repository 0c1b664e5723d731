//! `dist/mount.wcfs`, the mount(8) helper behind an fstab line: it must return only once the
//! union is mounted, leave the daemon running, and fail with the daemon's message when the
//! daemon cannot mount.
//!
//! The helper runs `wcfs mount --config CONFIG MOUNTPOINT`. This test points it (through its
//! `WCFS` variable) at a small wrapper that reads the mount flags from the "config" file and
//! runs the real binary with them, so the helper's own logic is tested against real mounts
//! independently of the config file format.

#[allow(dead_code)] // Proc: this test's daemons are not its children
mod common;
use common::is_mounted;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const HELPER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/mount.wcfs");

/// The daemons serving `mnt` (found by their command line), for cleanup.
fn daemons(mnt: &Path) -> Vec<i32> {
    let want = mnt.to_str().unwrap();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.contains(&&b"mount"[..]) && args.contains(&want.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// Stops the daemons of a mount (SIGTERM) and waits for the mount to go, even on failure.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        for pid in daemons(&self.0) {
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let t = Instant::now();
        while is_mounted(&self.0) && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if is_mounted(&self.0) {
            let c = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    wrapper: PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let wrapper = root.join("wcfs-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n# mount --config FILE MOUNTPOINT -> mount $(cat FILE) MOUNTPOINT\n\
             [ \"$1\" = mount ] && [ \"$2\" = --config ] || exit 64\n\
             exec {} mount $(cat \"$3\") \"$4\"\n",
            env!("CARGO_BIN_EXE_wcfs")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    Env {
        _tmp: tmp,
        root,
        wrapper,
    }
}

fn helper(e: &Env, config: &Path, mnt: &Path, opts: &str) -> Output {
    Command::new("sh")
        .arg(HELPER)
        .arg(config)
        .arg(mnt)
        .args(["-o", opts])
        .env("WCFS", &e.wrapper)
        .output()
        .unwrap()
}

#[test]
fn the_helper_returns_once_mounted_and_the_daemon_keeps_serving() {
    let e = env();
    let (ro, rw, mnt) = (e.root.join("ro"), e.root.join("rw"), e.root.join("www"));
    for d in [&ro, &rw, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(ro.join("index.php"), b"<?php").unwrap();
    let config = e.root.join("wcfs.conf");
    std::fs::write(
        &config,
        format!(
            "--ro {} --rw {} --data {}",
            ro.display(),
            rw.display(),
            e.root.join("data").display()
        ),
    )
    .unwrap();
    let log = e.root.join("log/mount.log");
    let out = helper(
        &e,
        &config,
        &mnt,
        &format!("defaults,_netdev,log={}", log.display()),
    );
    let _guard = Mounted(mnt.clone());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Mounted by the time the helper returned, not later.
    assert!(is_mounted(&mnt));
    assert_eq!(std::fs::read(mnt.join("index.php")).unwrap(), b"<?php");
    std::fs::write(mnt.join("upload"), b"u").unwrap();
    assert_eq!(std::fs::read(rw.join("upload")).unwrap(), b"u");
    assert_eq!(daemons(&mnt).len(), 1, "one daemon, still running");
    assert!(log.exists(), "the daemon logs to the log= file");

    // Mounting again over a live mount is refused.
    let out = helper(&e, &config, &mnt, &format!("log={}", log.display()));
    assert_eq!(out.status.code(), Some(32));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already a FUSE mount"));
}

#[test]
fn the_helper_fails_with_the_daemons_message_when_it_cannot_mount() {
    let e = env();
    let mnt = e.root.join("www");
    std::fs::create_dir(&mnt).unwrap();
    let config = e.root.join("wcfs.conf");
    std::fs::write(
        &config,
        format!(
            "--ro {}/missing-ro --rw {}",
            e.root.display(),
            e.root.display()
        ),
    )
    .unwrap();
    let log = e.root.join("mount.log");
    let t = Instant::now();
    let out = helper(&e, &config, &mnt, &format!("log={}", log.display()));
    let _guard = Mounted(mnt.clone());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(32), "{err}");
    assert!(
        err.contains("missing-ro"),
        "the daemon's own error is shown: {err}"
    );
    assert!(!is_mounted(&mnt));
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "it did not wait for the timeout"
    );
}

#[test]
fn the_helper_checks_its_arguments_before_starting_anything() {
    let e = env();
    let mnt = e.root.join("www");
    std::fs::create_dir(&mnt).unwrap();
    let out = helper(&e, &e.root.join("no-such.toml"), &mnt, "defaults");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the config file"));
    let config = e.root.join("wcfs.conf");
    std::fs::write(&config, "").unwrap();
    let out = helper(&e, &config, &e.root.join("nope"), "defaults");
    assert_eq!(out.status.code(), Some(32));
    // -f (fake) does everything but mount.
    let out = Command::new("sh")
        .arg(HELPER)
        .arg(&config)
        .arg(&mnt)
        .args(["-f", "-o", &format!("log={}/l", e.root.display())])
        .env("WCFS", &e.wrapper)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!is_mounted(&mnt));
}
