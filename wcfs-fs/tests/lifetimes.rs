//! Inode lifetimes (forget), locks across mounts, hard links.

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

/// Asks the kernel to drop its unused dentries and inodes, which sends FUSE forgets.
fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", b"2").expect("drop_caches (needs root)");
}

#[test]
fn forgotten_inodes_are_freed_and_numbers_stay_stable_while_cached() {
    const N: usize = 2000;
    let fx = Fx::new(|ro| {
        std::fs::create_dir_all(ro.join("up")).unwrap();
        for i in 0..N {
            std::fs::write(ro.join(format!("up/f{i}")), b"x").unwrap();
        }
    });
    let g = fx.guard.as_ref().unwrap();
    let base = g.inodes();
    let first = std::fs::metadata(fx.m("up/f0")).unwrap().ino();
    for i in 0..N {
        std::fs::metadata(fx.m(&format!("up/f{i}"))).unwrap();
    }
    // Files created through the mount are references too.
    std::fs::create_dir(fx.m("w")).unwrap();
    for i in 0..200 {
        std::fs::write(fx.m(&format!("w/n{i}")), b"y").unwrap();
    }
    assert_eq!(std::fs::metadata(fx.m("up/f0")).unwrap().ino(), first);
    let open = std::fs::File::open(fx.m("up/f1")).unwrap();
    let open_ino = open.metadata().unwrap().ino();
    let peak = g.inodes();
    assert!(peak >= base + N + 200, "peak {peak}, base {base}");
    // The kernel may keep some entries (the open file, its directory); most must go.
    assert!(
        eventually(Duration::from_secs(20), || {
            drop_caches();
            g.inodes() < base + 50
        }),
        "inodes after drop_caches: {} (peak {peak}, base {base})",
        g.inodes()
    );
    // The open file's inode is still known to the kernel: same number by path and by fd.
    assert_eq!(std::fs::metadata(fx.m("up/f1")).unwrap().ino(), open_ino);
    assert_eq!(open.metadata().unwrap().ino(), open_ino);
    // Looked up again: a number that stays the same while cached, and the content is right.
    let a = std::fs::metadata(fx.m("up/f0")).unwrap().ino();
    assert_eq!(std::fs::metadata(fx.m("up/f0")).unwrap().ino(), a);
    assert_ne!(a, open_ino);
    assert_eq!(std::fs::read(fx.m("w/n7")).unwrap(), b"y");
    assert_eq!(std::fs::read(fx.m("up/f5")).unwrap(), b"x");
    // Listing (readdirplus) hands out references that are forgotten as well.
    assert_eq!(names(&fx.m("up")).len(), N);
    assert!(
        eventually(Duration::from_secs(20), || {
            drop_caches();
            g.inodes() < base + 50
        }),
        "inodes after listing and drop_caches: {}",
        g.inodes()
    );
    drop(open);
}
