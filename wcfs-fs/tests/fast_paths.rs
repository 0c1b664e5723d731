//! The fast paths: passthrough opens of large RO files, the RO directory-fd cache, strict mode,
//! attributes refreshed after reads.

mod common;
use common::*;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use wcfs_fs::{FsConfig, OpKind};

const BIG: usize = 3 << 20;

fn pattern(seed: u8) -> Vec<u8> {
    (0..BIG).map(|i| (i % 251) as u8 ^ seed).collect()
}

fn read_all(f: &mut std::fs::File) -> Vec<u8> {
    let mut v = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut v).unwrap();
    v
}

fn errno_of(r: std::io::Result<std::fs::File>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn large_ro_files_are_read_by_passthrough_and_open_fds_survive_a_copy_up() {
    let fx = Fx::new(|ro| {
        std::fs::write(ro.join("big.bin"), pattern(0)).unwrap();
        std::fs::write(ro.join("small.php"), b"<?php").unwrap();
    });
    let g = fx.guard.as_ref().unwrap();
    let st = fx.stats();
    st.reset();
    // A small file is read through the daemon (then from the kept page cache).
    assert_eq!(std::fs::read(fx.m("small.php")).unwrap(), b"<?php");
    let small_reads = st.requests(OpKind::Read);
    assert!(small_reads > 0);
    let mut f = std::fs::File::open(fx.m("big.bin")).unwrap();
    assert!(read_all(&mut f) == pattern(0));
    // A second reader shares the registration.
    assert!(std::fs::read(fx.m("big.bin")).unwrap() == pattern(0));
    if !g.passthrough() {
        return;
    }
    assert_eq!(
        st.requests(OpKind::Read),
        small_reads,
        "the big file is not read through the daemon"
    );
    assert_eq!(st.total(), 0, "RW syscalls: {:?}", st.snapshot());

    // While the RO file is bound to the kernel inode, its RW copy cannot be opened.
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(fx.m("big.bin"));
    assert_eq!(errno_of(w), Some(libc::ETXTBSY));
    // A copy-up by chmod goes through; the open fd keeps reading the RO content.
    std::fs::set_permissions(fx.m("big.bin"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(fx.rw.join("big.bin").exists());
    assert!(read_all(&mut f) == pattern(0));
    assert_eq!(
        errno_of(std::fs::File::open(fx.m("big.bin"))),
        Some(libc::ETXTBSY)
    );
    drop(f);
    // Once closed, the copy is opened normally (the open waits for the daemon to see the
    // close), and written.
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .open(fx.m("big.bin"))
        .unwrap();
    w.write_all(&pattern(7)).unwrap();
    drop(w);
    assert!(std::fs::read(fx.m("big.bin")).unwrap() == pattern(7));
    assert!(std::fs::read(fx.ro.join("big.bin")).unwrap() == pattern(0));
    assert_eq!(
        std::fs::metadata(fx.m("big.bin"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

#[test]
fn a_write_open_after_the_ro_readers_close_copies_up_and_reads_see_it() {
    let fx = Fx::new(|ro| std::fs::write(ro.join("big.bin"), pattern(1)).unwrap());
    // Opened and closed by passthrough: the inode is free again.
    assert!(std::fs::read(fx.m("big.bin")).unwrap() == pattern(1));
    let mut w = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.m("big.bin"))
        .unwrap();
    w.write_all(b"HEAD").unwrap();
    let mut want = pattern(1);
    want[..4].copy_from_slice(b"HEAD");
    assert!(read_all(&mut w) == want);
    drop(w);
    assert!(std::fs::read(fx.m("big.bin")).unwrap() == want);
    assert!(std::fs::read(fx.ro.join("big.bin")).unwrap() == pattern(1));
}

#[test]
fn ro_passthrough_can_be_turned_off() {
    let fs = FsConfig {
        ro_passthrough_min: u64::MAX,
        ..fs_config()
    };
    let fx = Fx::with_config(fs, |ro| {
        std::fs::write(ro.join("big.bin"), pattern(2)).unwrap()
    });
    let st = fx.stats();
    st.reset();
    let mut f = std::fs::File::open(fx.m("big.bin")).unwrap();
    assert!(read_all(&mut f) == pattern(2));
    assert!(st.requests(OpKind::Read) > 0);
    // Served from the page cache, the inode can be opened for writing meanwhile.
    std::fs::OpenOptions::new()
        .write(true)
        .open(fx.m("big.bin"))
        .unwrap()
        .write_all(b"x")
        .unwrap();
}

#[test]
fn deep_ro_lookups_go_through_cached_parents_and_stay_confined() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"s").unwrap();
    let out = outside.path().to_path_buf();
    let fx = Fx::new(|ro| {
        std::fs::create_dir_all(ro.join("a/b/c")).unwrap();
        for i in 0..20 {
            std::fs::write(ro.join(format!("a/b/c/f{i}.php")), format!("{i}")).unwrap();
        }
        std::os::unix::fs::symlink(&out, ro.join("a/b/out")).unwrap();
    });
    for i in 0..20 {
        assert_eq!(
            std::fs::read_to_string(fx.m(&format!("a/b/c/f{i}.php"))).unwrap(),
            format!("{i}")
        );
    }
    // The symlink is handed to the kernel as a symlink (the kernel follows it, as the
    // caller's own path walk); the daemon itself never resolves through it.
    let l = std::fs::symlink_metadata(fx.m("a/b/out")).unwrap();
    assert!(l.file_type().is_symlink());
    assert_eq!(std::fs::read_link(fx.m("a/b/out")).unwrap(), out);
    assert!(std::fs::symlink_metadata(fx.m("a/b/c/../out")).is_ok());
}

#[test]
fn strict_mode_finds_rw_files_the_table_does_not_know() {
    let populate = |ro: &std::path::Path| {
        std::fs::create_dir_all(ro.join("site")).unwrap();
        std::fs::write(ro.join("site/index.php"), b"i").unwrap();
    };
    let strict = Fx::with_config(
        FsConfig {
            strict: true,
            ..fs_config()
        },
        populate,
    );
    let loose = Fx::with_config(fs_config(), populate);
    // A miss before the other writer's creation is not remembered past the RW TTL.
    assert!(std::fs::metadata(strict.m("site/late.php")).is_err());
    for fx in [&strict, &loose] {
        // Written behind the mounts' backs, as another writer of the shared branch would.
        std::fs::create_dir_all(fx.rw.join("site/up")).unwrap();
        std::fs::write(fx.rw.join("site/up/a.jpg"), b"jpg").unwrap();
        std::fs::write(fx.rw.join("site/new.php"), b"n").unwrap();
    }
    std::fs::write(strict.rw.join("site/late.php"), b"l").unwrap();
    assert!(eventually(std::time::Duration::from_secs(5), || {
        std::fs::read(strict.m("site/late.php")).is_ok_and(|d| d == b"l")
    }));
    assert_eq!(std::fs::read(strict.m("site/new.php")).unwrap(), b"n");
    assert_eq!(std::fs::read(strict.m("site/up/a.jpg")).unwrap(), b"jpg");
    assert_eq!(
        names(&strict.m("site")),
        ["index.php", "late.php", "new.php", "up"]
    );
    assert_eq!(names(&strict.m("site/up")), ["a.jpg"]);
    // RO hits still cost the RW branch nothing.
    let st = strict.stats();
    st.reset();
    assert_eq!(std::fs::read(strict.m("site/index.php")).unwrap(), b"i");
    assert_eq!(st.total(), 0, "RW syscalls: {:?}", st.snapshot());
    // And the found file behaves like any RW file.
    std::fs::remove_file(strict.m("site/new.php")).unwrap();
    assert!(!strict.rw.join("site/new.php").exists());
    assert!(std::fs::metadata(strict.m("site/new.php")).is_err());

    // The default trusts the table: unknown names are RO names only.
    assert!(std::fs::metadata(loose.m("site/new.php")).is_err());
    assert!(std::fs::metadata(loose.m("site/up")).is_err());
    assert_eq!(names(&loose.m("site")), ["index.php"]);
}

/// What the kernel asks after a file's first read and a directory's first listing, with and
/// without the background refresh: the GETATTR round trips the application itself waits for.
fn getattrs_after_first_reads(refresh: bool) -> (u64, u64) {
    let fx = Fx::with_config(
        FsConfig {
            refresh_attrs: refresh,
            // Reads of a small RO file go through the daemon (not passthrough) either way.
            ro_passthrough_min: u64::MAX,
            ..fs_config()
        },
        |ro| {
            std::fs::create_dir(ro.join("d")).unwrap();
            std::fs::write(ro.join("d/f.php"), b"<?php echo 1;").unwrap();
        },
    );
    let st = fx.stats();
    let settle = |st: &wcfs_fs::RwStats, before: u64| {
        // With the refresh on, wait for its GETATTR; without, give the kernel the same time.
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(if refresh { 2000 } else { 100 }) {
            if refresh && st.requests(OpKind::Getattr) > before {
                // Counted when it arrived: let its reply reach the kernel.
                std::thread::sleep(std::time::Duration::from_millis(20));
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    assert_eq!(std::fs::read(fx.m("d/f.php")).unwrap(), b"<?php echo 1;");
    assert!(
        st.requests(OpKind::Read) >= 1,
        "the first read reached the daemon"
    );
    let before = st.requests(OpKind::Getattr);
    settle(&st, before);
    st.reset();
    std::fs::metadata(fx.m("d/f.php")).unwrap();
    let file = st.requests(OpKind::Getattr);
    assert_eq!(std::fs::read_dir(fx.m("d")).unwrap().count(), 1);
    let before = st.requests(OpKind::Getattr);
    settle(&st, before);
    st.reset();
    // glibc's opendir fstats the directory: the second listing's round trip, if any.
    assert_eq!(std::fs::read_dir(fx.m("d")).unwrap().count(), 1);
    (file, st.requests(OpKind::Getattr))
}

#[test]
fn the_first_stat_after_a_read_or_listing_waits_for_no_round_trip() {
    assert_eq!(getattrs_after_first_reads(true), (0, 0));
    // The control: the kernel marks atime stale after reads that reached the daemon, so
    // without the refresh the application's stat and the second opendir each pay one.
    assert_eq!(getattrs_after_first_reads(false), (1, 1));
}

#[test]
fn an_rw_file_opens_with_one_walk_of_the_rw_path_and_is_statted_through_its_fd() {
    let fx = Fx::with_config(
        FsConfig {
            fast_open: false,
            // Every stat asks the daemon.
            rw_ttl: std::time::Duration::ZERO,
            ..fs_config()
        },
        |_| {},
    );
    std::fs::create_dir_all(fx.m("up/2024/01")).unwrap();
    std::fs::write(fx.m("up/2024/01/a.jpg"), b"jpeg").unwrap();
    let st = fx.stats();
    st.reset();
    let f = std::fs::File::open(fx.m("up/2024/01/a.jpg")).unwrap();
    // The open itself: openat2 of the path, fstat of the fd (no stat of the path first).
    assert_eq!(st.get(OpKind::Open), 2, "RW syscalls for one open");
    st.reset();
    // While it is open, the inode's attributes come from its fd: one fstat per GETATTR,
    // not a walk of the RW path (openat2 of the parent, fstatat).
    assert_eq!(f.metadata().unwrap().len(), 4);
    let asked = st.requests(OpKind::Getattr);
    assert!(asked >= 1, "no GETATTR reached the daemon");
    assert_eq!(st.get(OpKind::Getattr), asked, "RW syscalls per GETATTR");
    drop(f);
}
