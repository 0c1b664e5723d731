//! Read path: RO content is served without touching the RW branch.

mod common;
use common::*;
use std::os::unix::fs::{DirEntryExt, MetadataExt};

#[test]
fn ro_content_costs_zero_rw_syscalls() {
    let fx = Fx::new(|ro| {
        std::fs::create_dir_all(ro.join("site/inc")).unwrap();
        std::fs::write(ro.join("site/index.php"), b"<?php echo 1;").unwrap();
        std::fs::write(ro.join("site/inc/a.php"), b"a").unwrap();
        std::os::unix::fs::symlink("index.php", ro.join("site/link")).unwrap();
        std::fs::create_dir_all(ro.join("uploads")).unwrap();
    });
    // RW content elsewhere must not make RO directories pay.
    std::fs::write(fx.m("uploads/new.jpg"), b"jpg").unwrap();
    let st = fx.stats();
    st.reset();
    for _ in 0..3 {
        assert_eq!(
            std::fs::read(fx.m("site/index.php")).unwrap(),
            b"<?php echo 1;"
        );
        assert_eq!(std::fs::read(fx.m("site/inc/a.php")).unwrap(), b"a");
        assert_eq!(names(&fx.m("site")), ["inc", "index.php", "link"]);
        assert_eq!(
            std::fs::read_link(fx.m("site/link")).unwrap().to_str(),
            Some("index.php")
        );
        assert!(std::fs::metadata(fx.m("site/missing.php")).is_err());
        assert!(std::fs::metadata(fx.m("site/inc/x/y.php")).is_err());
        let m = std::fs::metadata(fx.m("site/index.php")).unwrap();
        assert_eq!(m.len(), 13);
    }
    assert_eq!(
        st.total(),
        0,
        "RW syscalls on RO content: {:?}",
        st.snapshot()
    );
    // The directory with RW content does consult the RW branch, and shows both sides.
    assert_eq!(names(&fx.m("uploads")), ["new.jpg"]);
    assert!(st.total() > 0);
}

#[test]
fn inode_numbers_are_stable_and_statfs_answers() {
    let fx = Fx::new(|ro| {
        std::fs::write(ro.join("f"), b"x").unwrap();
    });
    let a = std::fs::metadata(fx.m("f")).unwrap();
    // Listing and re-stat keep the number.
    let listed = std::fs::read_dir(&fx.mnt).unwrap().next().unwrap().unwrap();
    assert_eq!(listed.ino(), a.ino());
    let b = std::fs::metadata(fx.m("f")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.dev(), b.dev());
    // Copy-up keeps the number too: it is the path's, for the life of the mount.
    std::fs::write(fx.m("f"), b"y").unwrap();
    assert_eq!(std::fs::metadata(fx.m("f")).unwrap().ino(), a.ino());
    // statfs answers.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(fx.mnt.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut sv) }, 0);
    assert!(sv.f_blocks > 0);
}
