//! Dropping the kernel's caches of a live mount wholesale or under a path
//! ([`wcfs_fs::Invalidator::drop_tree`]): what the node does when its table is replaced by a
//! snapshot, and what `wcfs invalidate` does after the RO image changed under the mount.

mod common;
use common::*;
use std::time::Duration;
use wcfs_core::dot::Op;

const WAIT: Duration = Duration::from_secs(5);

fn drop_tree(fx: &Fx, path: Option<&str>) -> usize {
    let p = path.map(wp);
    fx.guard
        .as_ref()
        .unwrap()
        .invalidator()
        .drop_tree(p.as_ref())
        .recv_timeout(WAIT)
        .expect("invalidation done")
}

#[test]
fn a_table_replaced_behind_the_mount_shows_after_dropping_everything() {
    let fx = Fx::new(|ro| {
        std::fs::create_dir_all(ro.join("a/b")).unwrap();
        std::fs::write(ro.join("a/b/deep.php"), b"<?php").unwrap();
        std::fs::write(ro.join("top.html"), b"top").unwrap();
    });
    // The kernel caches both entries (RO TTL: 60 s); open files keep the dentries around.
    let _deep = std::fs::File::open(fx.m("a/b/deep.php")).unwrap();
    let _top = std::fs::File::open(fx.m("top.html")).unwrap();
    // The table changes without the per-path notification, as when a snapshot replaces it.
    fx.handle.with_table_mut(|t| {
        t.propose(&wp("a/b/deep.php"), Op::Whiteout).unwrap();
        t.propose(&wp("top.html"), Op::Whiteout).unwrap();
    });
    assert!(
        fx.m("a/b/deep.php").exists() && fx.m("top.html").exists(),
        "the kernel served the cached entries (else this test proves nothing)"
    );
    let n = drop_tree(&fx, None);
    assert!(n >= 4, "names dropped: {n}");
    assert!(!fx.m("a/b/deep.php").exists(), "deep entry still cached");
    assert!(!fx.m("top.html").exists(), "top entry still cached");
    assert!(!names(&fx.m("")).contains(&"top.html".to_string()));
    assert!(fx.m("a/b").is_dir());
}

#[test]
fn dropping_everything_reaches_names_the_kernel_remembered_as_missing_at_the_root() {
    let fx = Fx::new(|_| {});
    assert!(!fx.m("robots.txt").exists());
    std::fs::write(fx.ro.join("robots.txt"), b"User-agent: *").unwrap();
    assert!(
        !fx.m("robots.txt").exists(),
        "the kernel served its negative entry (else this test proves nothing)"
    );
    drop_tree(&fx, None);
    assert_eq!(std::fs::read(fx.m("robots.txt")).unwrap(), b"User-agent: *");
}

#[test]
fn replaced_ro_content_shows_after_dropping_its_directory() {
    let fx = Fx::new(|ro| {
        std::fs::create_dir_all(ro.join("assets")).unwrap();
        std::fs::write(ro.join("assets/app.js"), b"v1();").unwrap();
        std::fs::write(ro.join("index.html"), b"index-v1").unwrap();
    });
    assert_eq!(std::fs::read(fx.m("assets/app.js")).unwrap(), b"v1();");
    assert_eq!(names(&fx.m("assets")), ["app.js"]);
    assert!(!fx.m("assets/app2.js").exists());
    assert!(!fx.m("new.html").exists());
    // A new release: files replaced by rename, as deploy tools do, and new files.
    let tmp = fx.ro.join("new.tmp");
    std::fs::write(&tmp, b"release2();").unwrap();
    std::fs::rename(&tmp, fx.ro.join("assets/app.js")).unwrap();
    std::fs::write(fx.ro.join("assets/app2.js"), b"two").unwrap();
    std::fs::write(fx.ro.join("new.html"), b"new").unwrap();
    let stale = (
        std::fs::read(fx.m("assets/app.js")).unwrap(),
        fx.m("assets/app2.js").exists(),
        fx.m("new.html").exists(),
    );
    assert_eq!(
        stale,
        (b"v1();".to_vec(), false, false),
        "the kernel served its cached page and negative entries (else this test proves nothing)"
    );
    drop_tree(&fx, Some("assets"));
    assert_eq!(
        std::fs::read(fx.m("assets/app.js")).unwrap(),
        b"release2();"
    );
    assert_eq!(std::fs::read(fx.m("assets/app2.js")).unwrap(), b"two");
    // A negative entry of a name nobody holds has no node: only dropping its own path (or
    // everything) reaches it.
    drop_tree(&fx, Some("new.html"));
    assert_eq!(std::fs::read(fx.m("new.html")).unwrap(), b"new");
}

/// Unmounts a bind mount when dropped (also when the test fails).
struct Bind(std::path::PathBuf);
impl Drop for Bind {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_release_mounted_over_the_ro_branch_shows_after_dropping_everything() {
    let fx = Fx::new(|ro| {
        std::fs::create_dir_all(ro.join("wp/inc")).unwrap();
        std::fs::write(ro.join("wp/inc/load.php"), b"<?php // v1").unwrap();
        std::fs::write(ro.join("wp/inc/gone.php"), b"<?php // only in v1").unwrap();
    });
    // Reads through the mount: the daemon now holds directory fds of the old image.
    assert_eq!(
        std::fs::read(fx.m("wp/inc/load.php")).unwrap(),
        b"<?php // v1"
    );
    assert!(fx.m("wp/inc/gone.php").exists());
    // The next release, mounted over the RO branch's path as a deploy would.
    let v2 = fx.tmp.path().join("release-2");
    std::fs::create_dir_all(v2.join("wp/inc")).unwrap();
    std::fs::write(v2.join("wp/inc/load.php"), b"<?php // v2").unwrap();
    std::fs::write(v2.join("wp/inc/new.php"), b"<?php // only in v2").unwrap();
    let st = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&v2)
        .arg(&fx.ro)
        .status()
        .unwrap();
    assert!(st.success(), "mount --bind");
    let _bind = Bind(fx.ro.clone());
    assert_eq!(
        std::fs::read(fx.m("wp/inc/load.php")).unwrap(),
        b"<?php // v1",
        "the mount served the old image before invalidation (else this test proves nothing)"
    );
    drop_tree(&fx, None);
    assert_eq!(
        std::fs::read(fx.m("wp/inc/load.php")).unwrap(),
        b"<?php // v2"
    );
    assert_eq!(
        std::fs::read(fx.m("wp/inc/new.php")).unwrap(),
        b"<?php // only in v2"
    );
    assert!(!fx.m("wp/inc/gone.php").exists(), "a file of the old image");
    let mut l = names(&fx.m("wp/inc"));
    l.sort();
    assert_eq!(l, ["load.php", "new.php"]);
}
