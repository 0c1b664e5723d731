//! Inode lifetimes (forget), locks across mounts, hard links.

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

/// Tests that look at what the kernel keeps cached hold this, so one test's `drop_caches`
/// (which acts on every mount at once) cannot land in the middle of another's checks.
static KERNEL_CACHE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cache_lock() -> std::sync::MutexGuard<'static, ()> {
    KERNEL_CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asks the kernel to drop its unused dentries and inodes, which sends FUSE forgets.
fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", b"2").expect("drop_caches (needs root)");
}

#[test]
fn forgotten_inodes_are_freed_and_numbers_stay_stable_while_cached() {
    let _serial = cache_lock();
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
    // Looked up again: the number it had before the kernel forgot it.
    let a = std::fs::metadata(fx.m("up/f0")).unwrap().ino();
    assert_eq!(a, first);
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

/// Forgets every inode the kernel does not need (nothing is open in the mount).
fn forget_all(fx: &Fx) {
    let g = fx.guard.as_ref().unwrap();
    assert!(
        eventually(Duration::from_secs(20), || {
            drop_caches();
            g.inodes() <= 1
        }),
        "inodes after drop_caches: {}",
        g.inodes()
    );
}

#[test]
fn inode_numbers_survive_the_kernel_forgetting_them() {
    let _serial = cache_lock();
    let fx = Fx::new(|ro| {
        std::fs::create_dir_all(ro.join("d/sub")).unwrap();
        for f in ["d/a", "d/b", "d/sub/c", "h1", "cu"] {
            std::fs::write(ro.join(f), f.as_bytes()).unwrap();
        }
        std::fs::hard_link(ro.join("h1"), ro.join("d/h2")).unwrap();
    });
    std::fs::create_dir(fx.m("wd")).unwrap();
    std::fs::write(fx.m("wd/x"), b"x").unwrap();
    std::fs::write(fx.m("w"), b"w").unwrap();
    let paths = [
        "d", "d/a", "d/b", "d/sub", "d/sub/c", "h1", "d/h2", "cu", "wd", "wd/x", "w",
    ];
    let ino = |p: &str| std::fs::symlink_metadata(fx.m(p)).unwrap().ino();
    let numbers = || -> Vec<u64> { paths.iter().map(|p| ino(p)).collect() };
    let before = numbers();
    // RO hard links share a number; every other file has its own, and none is the root's.
    assert_eq!(ino("h1"), ino("d/h2"));
    let mut distinct = before.clone();
    distinct.push(ino(""));
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), paths.len(), "{before:?}");
    // Writing into an RO directory gives it an RW copy; it keeps its number.
    std::fs::write(fx.m("d/new"), b"n").unwrap();
    assert_eq!(ino("d"), before[0]);
    // A copied-up file keeps its number while the kernel holds its inode (an open file
    // makes sure it does).
    let held = std::fs::File::open(fx.m("cu")).unwrap();
    std::fs::write(fx.m("cu"), b"changed").unwrap();
    assert_eq!(ino("cu"), before[7]);
    assert_eq!(held.metadata().unwrap().ino(), before[7]);
    drop(held);
    let new = ino("d/new");
    let root = ino("");

    forget_all(&fx);
    let after = numbers();
    for (i, p) in paths.iter().enumerate() {
        if *p != "cu" {
            assert_eq!(after[i], before[i], "{p}");
        }
    }
    assert_eq!(ino("d/new"), new);
    assert_eq!(ino(""), root);
    // The copied-up file is now numbered from its RW copy (as on overlayfs without `index`),
    // then keeps that number.
    let cu = ino("cu");
    assert!(!before.contains(&cu) && cu != new, "{cu} in {before:?}");
    // Listed numbers (`d_ino`) agree with `stat`, before and after another forget.
    let listed = |dir: &str| -> Vec<(String, u64)> {
        use std::os::unix::fs::DirEntryExt;
        let mut v: Vec<(String, u64)> = std::fs::read_dir(fx.m(dir))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().to_string_lossy().into_owned(), e.ino())
            })
            .collect();
        v.sort();
        v
    };
    forget_all(&fx);
    for dir in ["", "d"] {
        let l = listed(dir);
        assert!(!l.is_empty());
        for (name, n) in l {
            let p = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            assert_eq!(n, ino(&p), "{p}");
        }
    }
    forget_all(&fx);
    assert_eq!(ino("cu"), cu);
    assert_eq!(numbers()[..7], before[..7]);
    assert_eq!(numbers()[8..], before[8..]);
    assert_eq!(std::fs::read(fx.m("cu")).unwrap(), b"changed");
    assert_eq!(std::fs::read(fx.m("d/h2")).unwrap(), b"h1");
}

#[test]
fn writing_an_ro_hard_link_changes_every_name_the_kernel_holds_as_that_inode() {
    let _serial = cache_lock();
    let fx = Fx::new(|ro| {
        std::fs::create_dir(ro.join("d")).unwrap();
        std::fs::write(ro.join("h1"), b"old").unwrap();
        std::fs::hard_link(ro.join("h1"), ro.join("d/h2")).unwrap();
        std::fs::hard_link(ro.join("h1"), ro.join("d/h3")).unwrap();
    });
    let ino = |p: &str| std::fs::symlink_metadata(fx.m(p)).unwrap().ino();
    let x = ino("h1");
    assert_eq!(ino("d/h2"), x);
    // The kernel holds the inode for as long as a file of it is open.
    let held = std::fs::File::open(fx.m("d/h2")).unwrap();
    // Written through one name: the names of that inode show the new content.
    std::fs::write(fx.m("h1"), b"new").unwrap();
    assert_eq!(std::fs::read(fx.m("d/h2")).unwrap(), b"new");
    assert_eq!(std::fs::read(fx.m("h1")).unwrap(), b"new");
    assert_eq!((ino("h1"), ino("d/h2")), (x, x));
    // A name never looked up stays the RO file: another file, with another number.
    assert_eq!(std::fs::read(fx.m("d/h3")).unwrap(), b"old");
    let h3 = ino("d/h3");
    assert_ne!(h3, x);
    let listed: Vec<u64> = std::fs::read_dir(fx.m("d"))
        .unwrap()
        .map(|e| {
            use std::os::unix::fs::DirEntryExt;
            e.unwrap().ino()
        })
        .collect();
    assert!(listed.contains(&x) && listed.contains(&h3), "{listed:?}");
    assert!(fx.rw.join("d/h2").exists() && !fx.rw.join("d/h3").exists());
    drop(held);
    forget_all(&fx);
    // Forgotten and looked up again: the copies share their RW number, the RO name has its
    // RO number back, and the contents are unchanged.
    let y = ino("h1");
    assert_eq!(ino("d/h2"), y);
    assert_eq!(ino("d/h3"), x);
    assert_ne!(x, y);
    assert_eq!(std::fs::read(fx.m("d/h2")).unwrap(), b"new");
    assert_eq!(std::fs::read(fx.m("d/h3")).unwrap(), b"old");
}

fn setlk(f: &std::fs::File, typ: i32, cmd: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 10;
    fl.l_len = 20;
    if unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn getlk(f: &std::fs::File) -> i32 {
    use std::os::fd::AsRawFd;
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    assert_eq!(
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) },
        0
    );
    fl.l_type as i32
}

fn flock(f: &std::fs::File, op: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn would_block(r: std::io::Result<()>) -> bool {
    matches!(
        r.map_err(|e| e.raw_os_error()),
        Err(Some(libc::EAGAIN | libc::EACCES))
    )
}

#[test]
fn locks_through_two_mounts_sharing_the_rw_branch_exclude_each_other() {
    // Cluster-wide locks are the default mode's (fast_open mounts keep them per node:
    // tests/fast_open.rs).
    let cluster = || wcfs_fs::FsConfig {
        fast_open: false,
        ..fs_config()
    };
    let a = Fx::with_config(cluster(), |_| {});
    let b = a.peer(cluster());
    std::fs::write(a.m("lk"), vec![0u8; 100]).unwrap();
    assert!(eventually(Duration::from_secs(5), || b.m("lk").exists()));
    let rw = |fx: &Fx| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(fx.m("lk"))
            .unwrap()
    };
    let fa = rw(&a);
    let fb = rw(&b);
    // POSIX byte-range locks: a write lock through one mount blocks the other.
    setlk(&fa, libc::F_WRLCK, libc::F_SETLK).unwrap();
    assert!(would_block(setlk(&fb, libc::F_WRLCK, libc::F_SETLK)));
    assert!(would_block(setlk(&fb, libc::F_RDLCK, libc::F_SETLK)));
    assert_eq!(getlk(&fb), libc::F_WRLCK);
    // A blocking request waits for the holder (and does not stall the mount meanwhile).
    let fb2 = rw(&b);
    let waiter =
        std::thread::spawn(move || setlk(&fb2, libc::F_WRLCK, libc::F_SETLKW).map(|()| fb2));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!waiter.is_finished(), "SETLKW did not wait");
    assert_eq!(std::fs::read(b.m("lk")).unwrap().len(), 100);
    setlk(&fa, libc::F_UNLCK, libc::F_SETLK).unwrap();
    let fb2 = waiter.join().unwrap().unwrap();
    assert!(would_block(setlk(&fa, libc::F_WRLCK, libc::F_SETLK)));
    // Closing any fd of the owner releases its POSIX locks (close of fb2's twin).
    drop(fb2);
    setlk(&fa, libc::F_WRLCK, libc::F_SETLK).unwrap();
    setlk(&fa, libc::F_UNLCK, libc::F_SETLK).unwrap();
    assert_eq!(getlk(&fb), libc::F_UNLCK);
    // flock: exclusive through one mount excludes the other until released or closed.
    let ga = rw(&a);
    flock(&ga, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    assert!(would_block(flock(&fb, libc::LOCK_EX | libc::LOCK_NB)));
    flock(&ga, libc::LOCK_UN).unwrap();
    flock(&fb, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    assert!(would_block(flock(&ga, libc::LOCK_SH | libc::LOCK_NB)));
    drop(fb);
    assert!(eventually(Duration::from_secs(5), || flock(
        &ga,
        libc::LOCK_SH | libc::LOCK_NB
    )
    .is_ok()));
    drop(fa);
}

#[test]
fn hard_links_show_one_inode_number_under_every_name() {
    let _serial = cache_lock();
    use wcfs_core::dot::Op;
    use wcfs_core::handle::TableHandle;
    let fx = Fx::new(|ro| std::fs::write(ro.join("r"), b"ro").unwrap());
    let ino = |p: &str| std::fs::metadata(fx.m(p)).unwrap().ino();
    std::fs::create_dir(fx.m("d")).unwrap();
    std::fs::write(fx.m("a"), b"data").unwrap();
    std::fs::hard_link(fx.m("a"), fx.m("d/b")).unwrap();
    let a = ino("a");
    assert_eq!(ino("d/b"), a);
    assert_eq!(std::fs::metadata(fx.m("d/b")).unwrap().nlink(), 2);
    // A link made behind the mount's back (another node) is recognised at lookup.
    std::fs::hard_link(fx.rw.join("a"), fx.rw.join("c")).unwrap();
    fx.handle.propose(&wp("c"), Op::MarkRw).unwrap();
    assert!(eventually(Duration::from_secs(5), || fx.m("c").exists()));
    assert_eq!(ino("c"), a);
    // Linking an RO file copies it up; both names then agree.
    std::fs::hard_link(fx.m("r"), fx.m("r2")).unwrap();
    assert_eq!(ino("r"), ino("r2"));
    // Names listed before they are looked up agree too (readdirplus).
    let listed: Vec<(String, u64)> = std::fs::read_dir(&fx.mnt)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect();
    for (n, i) in &listed {
        if n == "a" || n == "c" {
            assert_eq!(*i, a, "{n}");
        }
    }
    // After the kernel forgot them all, the names still share one number.
    assert!(eventually(Duration::from_secs(20), || {
        drop_caches();
        fx.guard.as_ref().unwrap().inodes() < 8
    }));
    let c = ino("c");
    assert_eq!(ino("d/b"), c);
    assert_eq!(ino("a"), c);
    // Unlinking one name keeps the others (and their number).
    std::fs::remove_file(fx.m("a")).unwrap();
    assert_eq!(ino("d/b"), c);
    assert_eq!(std::fs::read(fx.m("d/b")).unwrap(), b"data");
    std::fs::rename(fx.m("d/b"), fx.m("b2")).unwrap();
    assert_eq!(ino("b2"), c);
    assert_eq!(ino("c"), c);
}

#[test]
fn the_session_end_hook_runs_once_on_unmount_from_inside_or_outside() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, mpsc};
    // From outside: `umount MNT` ends the session; the hook runs without the guard's help.
    let mut fx = Fx::new(|_| {});
    let g = fx.guard.take().unwrap();
    assert!(!g.session_ended());
    let (tx, rx) = mpsc::channel();
    g.on_session_end(move || tx.send(()).unwrap());
    let out = std::process::Command::new("umount")
        .arg(&fx.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the hook did not run after an outside umount");
    assert!(g.session_ended());
    // Unmounting the guard afterwards is quiet and does not run the hook again.
    g.unmount().unwrap();
    assert!(rx.try_recv().is_err());

    // From inside: `unmount` runs it, once.
    let mut fx = Fx::new(|_| {});
    let g = fx.guard.take().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    g.on_session_end(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    g.unmount().unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
