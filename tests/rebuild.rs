//! `wcfs rebuild` and `wcfs check` against a union built through a real mount: after the
//! data directory is wiped, the rebuilt table must show exactly the same tree.

mod common;
use common::{Proc, is_mounted, local_mount};

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wcfs_core::{Resolution, WPath};
use wcfs_gossip::store::Store;

fn wcfs(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wcfs"))
        .args(args)
        .output()
        .unwrap()
}

fn mount(ro: &Path, rw: &Path, data: &Path, mnt: &Path) -> Proc {
    std::fs::create_dir_all(mnt).unwrap();
    local_mount(ro, rw, data, mnt)
}

fn stop(mut p: Proc) {
    unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
    let st = p.0.wait().unwrap();
    assert!(st.success(), "{st}");
    assert!(!is_mounted(&p.1));
}

/// Everything a user sees below `root`: per path, its type, permission bits, and content
/// (file bytes or symlink target). Directory times and inode numbers are left out: a
/// rebuilt table may serve a merged directory's attributes from its RW copy.
fn listing(root: &Path) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let md = std::fs::symlink_metadata(root.join(&r)).unwrap();
            let mode = md.permissions().mode() & 0o7777;
            let (t, body) = if md.is_dir() {
                stack.push(r.clone());
                ('d', Vec::new())
            } else if md.file_type().is_symlink() {
                let target = std::fs::read_link(root.join(&r)).unwrap();
                ('l', target.into_os_string().into_encoded_bytes())
            } else {
                ('f', std::fs::read(root.join(&r)).unwrap())
            };
            out.insert(r.to_string_lossy().into_owned(), (t, mode, body));
        }
    }
    out
}

struct Site {
    _tmp: tempfile::TempDir,
    ro: PathBuf,
    rw: PathBuf,
    root: PathBuf,
}

fn site() -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let (ro, rw) = (root.join("ro"), root.join("rw"));
    std::fs::create_dir(&rw).unwrap();
    for d in [
        "wp-includes/js",
        "wp-content/cache/page",
        "assets/img",
        "old/deep",
    ] {
        std::fs::create_dir_all(ro.join(d)).unwrap();
    }
    for f in [
        "index.php",
        "wp-config.php",
        "readme.html",
        "wp-includes/a.php",
        "wp-includes/b.php",
        "wp-includes/js/app.js",
        "wp-content/cache/page/1.html",
        "wp-content/cache/page/2.html",
        "assets/img/logo.png",
        "old/deep/x",
        "old/y",
    ] {
        std::fs::write(ro.join(f), format!("ro {f}")).unwrap();
    }
    Site {
        _tmp: tmp,
        ro,
        rw,
        root,
    }
}

/// The changes a site goes through: uploads, copy-ups, deletes of RO files, an RO directory
/// removed and made again (opaque), a directory renamed, a symlink.
fn use_the_union(m: &Path) {
    std::fs::create_dir_all(m.join("uploads/2024/06")).unwrap();
    std::fs::write(m.join("uploads/2024/06/photo.jpg"), b"jpeg").unwrap();
    std::fs::write(m.join("uploads/notes.txt"), b"notes").unwrap();
    std::fs::write(m.join("wp-config.php"), b"<?php // edited").unwrap(); // copy-up
    std::fs::set_permissions(
        m.join("wp-includes/b.php"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::remove_file(m.join("readme.html")).unwrap();
    std::fs::remove_file(m.join("wp-includes/a.php")).unwrap();
    // The page cache is flushed: the RO directory goes, a new empty one comes back.
    std::fs::remove_dir_all(m.join("wp-content/cache")).unwrap();
    std::fs::create_dir(m.join("wp-content/cache")).unwrap();
    std::fs::write(m.join("wp-content/cache/new.html"), b"fresh").unwrap();
    // An RW directory moved (renames of RW directories are atomic).
    std::fs::create_dir(m.join("drafts")).unwrap();
    std::fs::write(m.join("drafts/d1"), b"draft").unwrap();
    std::fs::rename(m.join("drafts"), m.join("published")).unwrap();
    // An RW directory moved onto a whited-out RO directory.
    std::fs::remove_dir_all(m.join("old")).unwrap();
    std::fs::create_dir(m.join("staging")).unwrap();
    std::fs::write(m.join("staging/s"), b"s").unwrap();
    std::fs::rename(m.join("staging"), m.join("old")).unwrap();
    std::os::unix::fs::symlink("uploads/notes.txt", m.join("latest")).unwrap();
}

fn resolutions(data: &Path, paths: &[&str]) -> Vec<(String, bool)> {
    let (t, _) = Store::read_only(data).unwrap().unwrap();
    paths
        .iter()
        .map(|p| {
            let r = t.resolve(&WPath::new(p.as_bytes()).unwrap());
            // Whether the RO file shows through (not deleted, not under an opaque directory).
            (p.to_string(), r == Resolution::Ro)
        })
        .collect()
}

#[test]
fn a_wiped_data_directory_is_rebuilt_from_the_rw_branch_and_shows_the_same_tree() {
    let s = site();
    let (data, mnt) = (s.root.join("data"), s.root.join("mnt"));
    let p = mount(&s.ro, &s.rw, &data, &mnt);
    use_the_union(&mnt);
    let before = listing(&mnt);
    stop(p);
    assert!(before.contains_key("old/s") && !before.contains_key("old/y"));
    assert!(!before.contains_key("readme.html"));

    // The union's own table agrees with the RW branch it wrote.
    let out = wcfs(&[
        "check".as_ref(),
        "--rw".as_ref(),
        s.rw.as_ref(),
        "--data".as_ref(),
        data.as_ref(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Refused over an existing table without --force.
    let out = wcfs(&[
        "rebuild".as_ref(),
        "--rw".as_ref(),
        s.rw.as_ref(),
        "--data".as_ref(),
        data.as_ref(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));

    let probes = [
        "readme.html",
        "wp-includes/a.php",
        "old/y",
        "old/deep/x",
        "wp-content/cache/page/1.html",
        "index.php",
    ];
    let old_res = resolutions(&data, &probes);

    // The disk is lost.
    std::fs::remove_dir_all(&data).unwrap();
    let out = wcfs(&[
        "rebuild".as_ref(),
        "--rw".as_ref(),
        s.rw.as_ref(),
        "--data".as_ref(),
        data.as_ref(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    assert!(stdout.contains("new table for replica"), "{stdout}");
    assert!(stdout.contains("0 removed"), "{stdout}");
    assert_eq!(resolutions(&data, &probes), old_res);
    assert_eq!(
        old_res.iter().filter(|(_, ro)| *ro).count(),
        1,
        "{old_res:?}"
    );

    let out = wcfs(&[
        "check".as_ref(),
        "--rw".as_ref(),
        s.rw.as_ref(),
        "--data".as_ref(),
        data.as_ref(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Remounted on the rebuilt table: the same tree, file for file.
    let p = mount(&s.ro, &s.rw, &data, &mnt);
    let after = listing(&mnt);
    stop(p);
    assert_eq!(after, before);

    // A file that appears on the RW branch behind the union's back is a disagreement.
    std::fs::write(s.rw.join("uploads/stray.bin"), b"?").unwrap();
    let out = wcfs(&[
        "check".as_ref(),
        "--rw".as_ref(),
        s.rw.as_ref(),
        "--data".as_ref(),
        data.as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "uploads/stray.bin: on RW, not in table\n"
    );
    // --force reconciles the existing table, keeping the replica.
    let (_, id) = Store::read_only(&data).unwrap().unwrap();
    let out = wcfs(&[
        "rebuild".as_ref(),
        "--force".as_ref(),
        "--rw".as_ref(),
        s.rw.as_ref(),
        "--data".as_ref(),
        data.as_ref(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("changes: 1 marked rw, 0 marked opaque, 0 whiteouts, 0 removed"),
        "{stdout}"
    );
    assert_eq!(
        Store::read_only(&data).unwrap().unwrap().1.replica,
        id.replica
    );
    let out = wcfs(&[
        "check".as_ref(),
        "--rw".as_ref(),
        s.rw.as_ref(),
        "--data".as_ref(),
        data.as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn check_on_a_missing_data_directory_fails_with_status_2() {
    let s = site();
    let out = wcfs(&[
        "check".as_ref(),
        "--rw".as_ref(),
        s.rw.as_ref(),
        "--data".as_ref(),
        s.root.join("nope").as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no table"));
}
