//! `fast_open` mounts (FsConfig::fast_open): the kernel opens and closes files without the
//! daemon. These tests set the mode explicitly; CI also runs every other wcfs-fs test in it
//! (`WCFS_TEST_FAST_OPEN=1`).

mod common;
use common::*;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Duration;
use wcfs_fs::{FsConfig, OpKind};

fn fast() -> FsConfig {
    FsConfig {
        fast_open: true,
        ..fs_config()
    }
}

fn read_n_times(fx: &Fx, p: &str, n: usize) {
    let mut buf = Vec::new();
    for _ in 0..n {
        buf.clear();
        let mut f = std::fs::File::open(fx.m(p)).unwrap();
        f.read_to_end(&mut buf).unwrap();
        assert_eq!(buf, b"<?php echo 1;");
    }
}

#[test]
fn opening_a_cached_ro_file_never_reaches_the_daemon() {
    let populate = |ro: &std::path::Path| {
        std::fs::create_dir(ro.join("site")).unwrap();
        std::fs::write(ro.join("site/index.php"), b"<?php echo 1;").unwrap();
    };
    let fx = Fx::with_config(fast(), populate);
    read_n_times(&fx, "site/index.php", 2);
    let st = fx.stats();
    st.reset();
    read_n_times(&fx, "site/index.php", 100);
    assert_eq!(st.requests(OpKind::Open), 0, "opens reached the daemon");
    assert_eq!(
        st.requests(OpKind::Read),
        0,
        "reads missed the kept page cache"
    );
    assert_eq!(st.total(), 0, "RW branch touched");
    // The control: the default mode answers every open.
    let def = Fx::with_config(
        FsConfig {
            fast_open: false,
            ..fs_config()
        },
        populate,
    );
    read_n_times(&def, "site/index.php", 2);
    let st = def.stats();
    st.reset();
    read_n_times(&def, "site/index.php", 100);
    assert!(st.requests(OpKind::Open) >= 100);
}

#[test]
fn writes_without_an_open_copy_the_ro_file_up_first() {
    let fx = Fx::with_config(fast(), |ro| {
        std::fs::write(ro.join("a"), b"ro data").unwrap();
        std::fs::write(ro.join("t"), b"to be truncated").unwrap();
    });
    // Read first, so the kernel caches the RO content and the RO file is the inode's file.
    assert_eq!(std::fs::read(fx.m("a")).unwrap(), b"ro data");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(fx.m("a"))
        .unwrap();
    // The open alone changes nothing (overlayfs would copy up here; nothing is written yet).
    assert!(!fx.rw.join("a").exists());
    f.write_all_at(b"RW", 0).unwrap();
    drop(f);
    assert_eq!(std::fs::read(fx.m("a")).unwrap(), b"RW data");
    assert_eq!(std::fs::read(fx.rw.join("a")).unwrap(), b"RW data");
    assert_eq!(std::fs::read(fx.ro.join("a")).unwrap(), b"ro data");
    // O_TRUNC without an open: the kernel truncates through setattr, which copies up.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(fx.m("t"))
        .unwrap();
    assert_eq!(std::fs::read(fx.m("t")).unwrap(), b"");
    assert_eq!(std::fs::read(fx.rw.join("t")).unwrap(), b"");
    assert_eq!(std::fs::read(fx.ro.join("t")).unwrap(), b"to be truncated");
    // O_APPEND and O_SYNC on an existing RW file.
    let mut g = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_SYNC)
        .open(fx.m("a"))
        .unwrap();
    g.write_all(b"+1").unwrap();
    g.write_all(b"+2").unwrap();
    drop(g);
    assert_eq!(std::fs::read(fx.m("a")).unwrap(), b"RW data+1+2");
    assert_eq!(std::fs::read(fx.rw.join("a")).unwrap(), b"RW data+1+2");
}

#[test]
fn an_fd_opened_before_unlink_or_replace_keeps_its_file() {
    let fx = Fx::with_config(fast(), |ro| {
        std::fs::write(ro.join("r"), b"ro file").unwrap()
    });
    std::fs::write(fx.m("w"), b"rw file").unwrap();
    std::fs::write(fx.m("new"), b"replacement").unwrap();
    // Opened after the write's handle closed: these two are handle-less.
    let mut fw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.m("w"))
        .unwrap();
    let mut fr = std::fs::File::open(fx.m("r")).unwrap();
    std::fs::remove_file(fx.m("w")).unwrap();
    std::fs::remove_file(fx.m("r")).unwrap();
    assert!(!fx.m("w").exists() && !fx.m("r").exists());
    let mut s = String::new();
    fw.read_to_string(&mut s).unwrap();
    assert_eq!(s, "rw file");
    fw.write_all_at(b"RW", 0).unwrap();
    fw.seek(SeekFrom::Start(0)).unwrap();
    s.clear();
    fw.read_to_string(&mut s).unwrap();
    assert_eq!(s, "RW file");
    s.clear();
    fr.read_to_string(&mut s).unwrap();
    assert_eq!(s, "ro file");
    // Renamed over: the old fd still reads the old file.
    std::fs::write(fx.m("v"), b"old v").unwrap();
    let mut fv = std::fs::File::open(fx.m("v")).unwrap();
    std::fs::rename(fx.m("new"), fx.m("v")).unwrap();
    s.clear();
    fv.read_to_string(&mut s).unwrap();
    assert_eq!(s, "old v");
    assert_eq!(std::fs::read(fx.m("v")).unwrap(), b"replacement");
}

#[test]
fn locks_are_the_kernel_s_and_hold_on_one_mount_only() {
    use std::os::fd::AsRawFd;
    let a = Fx::with_config(fast(), |_| {});
    let b = a.peer(fast());
    std::fs::write(a.m("lk"), b"x").unwrap();
    assert!(eventually(Duration::from_secs(5), || b.m("lk").exists()));
    let flock = |f: &std::fs::File, op: i32| unsafe { libc::flock(f.as_raw_fd(), op) } == 0;
    let a1 = std::fs::File::open(a.m("lk")).unwrap();
    let a2 = std::fs::File::open(a.m("lk")).unwrap();
    let b1 = std::fs::File::open(b.m("lk")).unwrap();
    assert!(flock(&a1, libc::LOCK_EX | libc::LOCK_NB));
    // Two opens on one mount (one node) exclude each other...
    assert!(!flock(&a2, libc::LOCK_EX | libc::LOCK_NB));
    // ...another mount (another node) is not excluded: the documented price of the mode.
    assert!(flock(&b1, libc::LOCK_EX | libc::LOCK_NB));
    // Closing releases (the kernel's own bookkeeping, no daemon involved).
    drop(a1);
    assert!(flock(&a2, libc::LOCK_EX | libc::LOCK_NB));
}

#[test]
fn another_mount_s_rewrite_is_seen_once_attributes_are_revalidated() {
    let cfg = || FsConfig {
        rw_ttl: Duration::from_millis(200),
        ..fast()
    };
    let a = Fx::with_config(cfg(), |_| {});
    let b = a.peer(cfg());
    std::fs::write(a.m("f"), b"one").unwrap();
    assert!(eventually(Duration::from_secs(5), || std::fs::read(
        b.m("f")
    )
    .is_ok_and(|d| d == b"one")));
    // Same size, new content: only the mtime tells (FUSE_AUTO_INVAL_DATA).
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(a.m("f"), b"two").unwrap();
    assert!(eventually(Duration::from_secs(3), || std::fs::read(
        b.m("f")
    )
    .is_ok_and(|d| d == b"two")));
    // Replaced by a rename on the shared branch: new opens on b see the new file, an fd
    // opened before keeps the file it opened.
    let mut old = std::fs::File::open(b.m("f")).unwrap();
    std::fs::write(a.m("g"), b"three!").unwrap();
    std::fs::rename(a.m("g"), a.m("f")).unwrap();
    assert!(eventually(Duration::from_secs(3), || std::fs::read(
        b.m("f")
    )
    .is_ok_and(|d| d == b"three!")));
    let mut s = String::new();
    old.read_to_string(&mut s).unwrap();
    assert_eq!(s, "two");
}
