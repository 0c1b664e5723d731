//! Copy-up, confinement, invalidation, two nodes sharing one RW branch.

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;
use wcfs_core::dot::Op;
use wcfs_core::handle::{LocalHandle, TableHandle};
use wcfs_core::table::Resolution;

fn xattr_get(p: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

fn xattr_set(p: &std::path::Path, name: &str, v: &[u8]) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let r = unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
}

#[test]
fn copy_up_preserves_content_and_metadata() {
    let fx = Fx::new(|ro| {
        std::fs::create_dir_all(ro.join("a/b")).unwrap();
        let f = ro.join("a/b/f");
        std::fs::write(&f, vec![7u8; 300_000]).unwrap();
        // chown clears set-uid, so it goes first.
        std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4751)).unwrap();
        xattr_set(&f, "user.origin", b"ro");
        let t = libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        };
        let c = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
        assert_eq!(
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), 0) },
            0
        );
        std::fs::set_permissions(ro.join("a"), std::fs::Permissions::from_mode(0o710)).unwrap();
    });
    let before = std::fs::metadata(fx.m("a/b/f")).unwrap();
    // A metadata-only change (setxattr) copies up.
    xattr_set(&fx.m("a/b/f"), "user.more", b"1");
    let rwf = fx.rw.join("a/b/f");
    let m = std::fs::metadata(&rwf).unwrap();
    assert_eq!(std::fs::read(&rwf).unwrap(), vec![7u8; 300_000]);
    assert_eq!(m.mode() & 0o7777, 0o4751);
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!(xattr_get(&rwf, "user.origin").as_deref(), Some(&b"ro"[..]));
    assert_eq!(
        xattr_get(&fx.m("a/b/f"), "user.more").as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(xattr_get(&fx.ro.join("a/b/f"), "user.more"), None);
    // Parents were created on RW with the RO parents' modes.
    assert_eq!(
        std::fs::metadata(fx.rw.join("a")).unwrap().mode() & 0o7777,
        0o710
    );
    // The mount shows the same file as before.
    let after = std::fs::metadata(fx.m("a/b/f")).unwrap();
    assert_eq!(
        (after.ino(), after.len(), after.mode()),
        (before.ino(), before.len(), before.mode())
    );
    assert_eq!(fx.handle.resolve(&wp("a/b/f")), Resolution::Rw);
    // No temp file is left visible anywhere.
    assert_eq!(names(&fx.rw.join("a/b")), ["f"]);
    assert_eq!(names(&fx.m("a/b")), ["f"]);
}

#[test]
fn a_crashed_copy_up_leaves_nothing_visible() {
    // What a copy-up interrupted before its rename leaves: a hidden temp on the RW branch.
    let fx = Fx::new(|ro| std::fs::write(ro.join("f"), b"whole").unwrap());
    std::fs::write(fx.rw.join(".wh..wh.copyup.1.0"), b"who").unwrap();
    assert_eq!(names(&fx.mnt), ["f"]);
    assert_eq!(std::fs::read(fx.m("f")).unwrap(), b"whole");
}

#[test]
fn a_symlink_planted_on_rw_never_leads_the_daemon_outside() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"s3cret").unwrap();
    let fx = Fx::new(|ro| {
        std::fs::create_dir_all(ro.join("d")).unwrap();
        std::fs::write(ro.join("d/f"), b"f").unwrap();
    });
    // The RW copy of directory `d` is a symlink out of the branch, and the table points
    // into it (as a confused or malicious peer could make it).
    std::os::unix::fs::symlink(outside.path(), fx.rw.join("d")).unwrap();
    fx.handle.propose(&wp("d/secret"), Op::MarkRw).unwrap();
    assert!(std::fs::read(fx.m("d/secret")).is_err());
    assert!(std::fs::metadata(fx.m("d/secret")).is_err());
    assert!(std::fs::write(fx.m("d/new"), b"x").is_err());
    assert!(std::fs::remove_file(fx.m("d/f")).is_err());
    assert!(std::fs::create_dir(fx.m("d/sub")).is_err());
    // A top-level planted symlink, marked Rw, is shown as the symlink it is; the daemon does
    // not follow it (the client's kernel resolves it, as with any symlink).
    std::os::unix::fs::symlink(outside.path().join("secret"), fx.rw.join("l")).unwrap();
    fx.handle.propose(&wp("l"), Op::MarkRw).unwrap();
    assert!(
        std::fs::symlink_metadata(fx.m("l"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(names(outside.path()), ["secret"]);
    assert_eq!(
        std::fs::read(outside.path().join("secret")).unwrap(),
        b"s3cret"
    );
}

#[test]
fn a_table_change_behind_the_mounts_back_shows_at_the_next_stat() {
    let fx = Fx::new(|ro| std::fs::write(ro.join("ro_file"), b"r").unwrap());
    let other = handle(2);
    LocalHandle::link(&fx.handle, &other);
    // Both names are now in the kernel's cache (a negative entry, a positive one), with TTLs
    // of a minute: only an invalidation can change what stat says within the poll window.
    assert!(std::fs::metadata(fx.m("up.jpg")).is_err());
    assert!(std::fs::metadata(fx.m("ro_file")).is_ok());
    // Another node creates a file on the shared RW branch and deletes an RO file.
    std::fs::write(fx.rw.join("up.jpg"), b"jpg").unwrap();
    other.propose(&wp("up.jpg"), Op::MarkRw).unwrap();
    std::fs::write(fx.rw.join(".wh.ro_file"), b"").unwrap();
    other.propose(&wp("ro_file"), Op::Whiteout).unwrap();
    assert!(eventually(Duration::from_secs(5), || std::fs::metadata(
        fx.m("up.jpg")
    )
    .is_ok()));
    assert!(eventually(Duration::from_secs(5), || std::fs::metadata(
        fx.m("ro_file")
    )
    .is_err()));
    assert_eq!(names(&fx.mnt), ["up.jpg"]);
}

#[test]
fn two_mounts_sharing_one_rw_branch_see_each_others_changes() {
    let a = Fx::new(|ro| {
        std::fs::create_dir_all(ro.join("site")).unwrap();
        std::fs::write(ro.join("site/index.php"), b"i").unwrap();
    });
    let b = a.peer(fs_config());
    // Prime both caches.
    assert!(std::fs::metadata(b.m("site/up.txt")).is_err());
    assert!(std::fs::metadata(a.m("site/index.php")).is_ok());
    std::fs::write(a.m("site/up.txt"), b"from a").unwrap();
    assert!(eventually(Duration::from_secs(5), || std::fs::read(
        b.m("site/up.txt")
    )
    .ok()
        == Some(b"from a".to_vec())));
    std::fs::remove_file(b.m("site/index.php")).unwrap();
    assert!(eventually(Duration::from_secs(5), || std::fs::metadata(
        a.m("site/index.php")
    )
    .is_err()));
    std::fs::remove_file(b.m("site/up.txt")).unwrap();
    assert!(eventually(Duration::from_secs(5), || std::fs::metadata(
        a.m("site/up.txt")
    )
    .is_err()));
    std::fs::create_dir(b.m("site/cache")).unwrap();
    std::fs::write(b.m("site/cache/x"), b"x").unwrap();
    assert!(eventually(Duration::from_secs(5), || std::fs::read(
        a.m("site/cache/x")
    )
    .is_ok()));
    assert_eq!(names(&a.m("site")), ["cache"]);
    assert_eq!(names(&b.m("site")), ["cache"]);
}

#[test]
fn rw_files_use_passthrough_and_ro_files_keep_their_cache() {
    let fx = Fx::new(|ro| std::fs::write(ro.join("r"), b"ro data").unwrap());
    let g = fx.guard.as_ref().unwrap();
    // This machine's kernel has passthrough (DESIGN.md); elsewhere the fallback is used.
    // fast_open mounts never use it (files are opened without the daemon).
    let has = !common::fast_open()
        && std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|r| {
                let mut it = r.trim().split('.').map(|x| x.parse::<u32>().unwrap_or(0));
                (it.next().unwrap_or(0), it.next().unwrap_or(0)) >= (6, 9)
            })
            .unwrap_or(false);
    assert_eq!(g.passthrough(), has);
    let st = fx.stats();
    std::fs::write(fx.m("w"), vec![1u8; 1 << 20]).unwrap();
    st.reset();
    let data = std::fs::read(fx.m("w")).unwrap();
    assert_eq!(data.len(), 1 << 20);
    if has {
        // Reads went straight from the kernel to the backing file.
        assert_eq!(st.get(wcfs_fs::OpKind::Read), 0);
    }
    assert_eq!(std::fs::read(fx.m("r")).unwrap(), b"ro data");
}

#[test]
fn a_cached_listing_shows_a_creation_made_on_another_mount() {
    let a = Fx::new(|ro| {
        std::fs::create_dir_all(ro.join("site")).unwrap();
        std::fs::write(ro.join("site/index.php"), b"i").unwrap();
    });
    let b = a.peer(fs_config());
    // Listed twice: the second listing comes from the kernel's directory cache.
    assert_eq!(names(&a.m("site")), ["index.php"]);
    assert_eq!(names(&a.m("site")), ["index.php"]);
    std::fs::write(b.m("site/new.php"), b"n").unwrap();
    assert!(eventually(Duration::from_secs(5), || names(&a.m("site"))
        == ["index.php", "new.php"]));
    std::fs::remove_file(b.m("site/index.php")).unwrap();
    assert!(eventually(Duration::from_secs(5), || names(&a.m("site"))
        == ["new.php"]));
}

#[test]
fn an_ro_file_open_for_reading_survives_its_unlink() {
    use std::io::{Read, Seek};
    let fx = Fx::new(|ro| std::fs::write(ro.join("r"), b"ro data").unwrap());
    let mut f = std::fs::File::open(fx.m("r")).unwrap();
    std::fs::remove_file(fx.m("r")).unwrap();
    assert!(std::fs::metadata(fx.m("r")).is_err());
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "ro data");
    assert_eq!(f.metadata().unwrap().len(), 7);
    f.rewind().unwrap();
    // Local changes in a listed directory show at once.
    assert!(names(&fx.mnt).is_empty());
    std::fs::write(fx.m("n"), b"x").unwrap();
    assert_eq!(names(&fx.mnt), ["n"]);
}
