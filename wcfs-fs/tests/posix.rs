//! A small POSIX behaviour suite, run against the mount (with RO content under it) and, as a
//! control, against a plain directory: both must behave the same.

mod common;
use common::*;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.unwrap_err().raw_os_error().unwrap()
}

fn renameat2(a: &Path, b: &Path, flags: u32) -> i32 {
    let ca = std::ffi::CString::new(a.to_str().unwrap()).unwrap();
    let cb = std::ffi::CString::new(b.to_str().unwrap()).unwrap();
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            flags,
        )
    };
    if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    } else {
        0
    }
}

/// `root` holds `ro.txt` (content "ro", mode 0644) and `dir/inner` before the suite runs.
fn suite(root: &Path) {
    let p = |s: &str| root.join(s);
    // Modes and ownership.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(p("m"))
        .unwrap();
    drop(f);
    let um = unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        m
    };
    assert_eq!(
        std::fs::metadata(p("m")).unwrap().mode() & 0o777,
        0o640 & !um
    );
    std::fs::set_permissions(p("m"), std::fs::Permissions::from_mode(0o604)).unwrap();
    assert_eq!(std::fs::metadata(p("m")).unwrap().mode() & 0o7777, 0o604);
    std::os::unix::fs::chown(p("m"), Some(4242), Some(4343)).unwrap();
    let md = std::fs::metadata(p("m")).unwrap();
    assert_eq!((md.uid(), md.gid()), (4242, 4343));
    std::os::unix::fs::chown(p("ro.txt"), Some(7), None).unwrap();
    assert_eq!(std::fs::metadata(p("ro.txt")).unwrap().uid(), 7);
    assert_eq!(std::fs::read(p("ro.txt")).unwrap(), b"ro");

    // Times: set explicitly, and writes move mtime forward.
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000);
    let fh = std::fs::File::options()
        .write(true)
        .open(p("ro.txt"))
        .unwrap();
    fh.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
    drop(fh);
    assert_eq!(
        std::fs::metadata(p("ro.txt")).unwrap().mtime(),
        1_500_000_000
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(p("ro.txt"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    assert!(std::fs::metadata(p("ro.txt")).unwrap().mtime() > 1_500_000_000);
    assert_eq!(std::fs::read(p("ro.txt")).unwrap(), b"ro+");

    // O_EXCL, O_TRUNC, O_APPEND.
    assert_eq!(
        errno(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p("m"))
        ),
        libc::EEXIST
    );
    std::fs::write(p("t"), b"long content").unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(p("t"))
        .unwrap()
        .write_all(b"s")
        .unwrap();
    assert_eq!(std::fs::read(p("t")).unwrap(), b"s");
    let mut a = std::fs::OpenOptions::new()
        .append(true)
        .open(p("t"))
        .unwrap();
    a.write_all(b"1").unwrap();
    a.seek(SeekFrom::Start(0)).unwrap();
    a.write_all(b"2").unwrap();
    drop(a);
    assert_eq!(std::fs::read(p("t")).unwrap(), b"s12");
    // truncate(2) to grow and shrink.
    std::fs::OpenOptions::new()
        .write(true)
        .open(p("t"))
        .unwrap()
        .set_len(5)
        .unwrap();
    assert_eq!(std::fs::read(p("t")).unwrap(), b"s12\0\0");

    // Rename corner cases.
    std::fs::write(p("r1"), b"one").unwrap();
    std::fs::write(p("r2"), b"two").unwrap();
    std::fs::rename(p("r1"), p("r2")).unwrap();
    assert_eq!(std::fs::read(p("r2")).unwrap(), b"one");
    assert!(!p("r1").exists());
    std::fs::rename(p("r2"), p("r2")).unwrap();
    assert_eq!(std::fs::read(p("r2")).unwrap(), b"one");
    std::fs::create_dir(p("d1")).unwrap();
    std::fs::create_dir(p("d2")).unwrap();
    std::fs::write(p("d1/x"), b"x").unwrap();
    assert_eq!(errno(std::fs::rename(p("r2"), p("d2"))), libc::EISDIR);
    assert_eq!(errno(std::fs::rename(p("d2"), p("r2"))), libc::ENOTDIR);
    assert_eq!(errno(std::fs::rename(p("d2"), p("d1"))), libc::ENOTEMPTY);
    assert_eq!(errno(std::fs::rename(p("d1"), p("d1/x/y"))), libc::ENOTDIR);
    assert_eq!(errno(std::fs::rename(p("d1"), p("d1/sub"))), libc::EINVAL);
    std::fs::rename(p("d1"), p("d2")).unwrap();
    assert_eq!(std::fs::read(p("d2/x")).unwrap(), b"x");
    assert!(!p("d1").exists());
    assert_eq!(
        renameat2(&p("r2"), &p("m"), libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(errno(std::fs::rename(p("nope"), p("m"))), libc::ENOENT);
    // RO-backed file renamed over another.
    std::fs::rename(p("ro.txt"), p("m")).unwrap();
    assert_eq!(std::fs::read(p("m")).unwrap(), b"ro+");
    assert!(!p("ro.txt").exists());

    // Links.
    std::fs::hard_link(p("m"), p("hl")).unwrap();
    assert_eq!(std::fs::metadata(p("m")).unwrap().nlink(), 2);
    std::fs::OpenOptions::new()
        .append(true)
        .open(p("hl"))
        .unwrap()
        .write_all(b"L")
        .unwrap();
    assert_eq!(std::fs::read(p("m")).unwrap(), b"ro+L");
    std::fs::remove_file(p("m")).unwrap();
    assert_eq!(std::fs::metadata(p("hl")).unwrap().nlink(), 1);
    std::os::unix::fs::symlink("hl", p("sl")).unwrap();
    assert_eq!(std::fs::read_link(p("sl")).unwrap().to_str(), Some("hl"));
    assert_eq!(std::fs::read(p("sl")).unwrap(), b"ro+L");
    assert!(
        std::fs::symlink_metadata(p("sl"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(errno(std::fs::hard_link(p("dir"), p("dl"))), libc::EPERM);
    // A link to an RO file (copy-up first).
    std::fs::hard_link(p("dir/inner"), p("inner2")).unwrap();
    assert_eq!(std::fs::read(p("inner2")).unwrap(), b"in");

    // Unlinked but open.
    let mut h = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(p("u"))
        .unwrap();
    h.write_all(b"still here").unwrap();
    std::fs::remove_file(p("u")).unwrap();
    assert!(!p("u").exists());
    h.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    h.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    let md = h.metadata().unwrap();
    assert_eq!(md.nlink(), 0);
    assert_eq!(md.len(), 10);
    drop(h);

    // Directories.
    assert_eq!(errno(std::fs::remove_dir(p("dir"))), libc::ENOTEMPTY);
    assert_eq!(errno(std::fs::remove_file(p("dir"))), libc::EISDIR);
    assert_eq!(errno(std::fs::create_dir(p("dir"))), libc::EEXIST);
    std::fs::remove_file(p("dir/inner")).unwrap();
    std::fs::remove_dir(p("dir")).unwrap();
    assert!(!p("dir").exists());
    let mut n: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    n.sort();
    assert_eq!(n, ["d2", "hl", "inner2", "r2", "sl", "t"]);
}

fn populate(root: &Path) {
    std::fs::write(root.join("ro.txt"), b"ro").unwrap();
    std::fs::set_permissions(root.join("ro.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir(root.join("dir")).unwrap();
    std::fs::write(root.join("dir/inner"), b"in").unwrap();
}

#[test]
fn posix_suite_on_a_plain_directory() {
    let d = tempfile::tempdir().unwrap();
    populate(d.path());
    suite(d.path());
}

#[test]
fn posix_suite_on_the_mount() {
    let fx = Fx::new(populate);
    suite(&fx.mnt);
    // Nothing of it touched the RO branch.
    assert_eq!(std::fs::read(fx.ro.join("ro.txt")).unwrap(), b"ro");
    assert_eq!(std::fs::read(fx.ro.join("dir/inner")).unwrap(), b"in");
}
