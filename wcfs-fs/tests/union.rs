//! Union semantics, table-driven: every operation × every starting state of the file, each
//! checking what the mount shows and what lands on each branch and in the table.

mod common;
use common::*;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use wcfs_core::handle::TableHandle;
use wcfs_core::table::Resolution;

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    RoOnly,
    RwOnly,
    Both,
    WhitedOut,
    UnderOpaque,
}

const STATES: [State; 5] = [
    State::RoOnly,
    State::RwOnly,
    State::Both,
    State::WhitedOut,
    State::UnderOpaque,
];

#[derive(Clone, Copy, Debug)]
enum OpT {
    Stat,
    Read,
    Append,
    Unlink,
    Rename,
    Chmod,
    CreateExcl,
    Mkdir,
    List,
}

const OPS: [OpT; 9] = [
    OpT::Stat,
    OpT::Read,
    OpT::Append,
    OpT::Unlink,
    OpT::Rename,
    OpT::Chmod,
    OpT::CreateExcl,
    OpT::Mkdir,
    OpT::List,
];

/// The case's directory (relative) holding the file `f`.
fn case_dir(i: usize, s: State) -> String {
    match s {
        State::UnderOpaque => format!("c{i}/d"),
        _ => format!("c{i}"),
    }
}

fn visible(s: State) -> bool {
    matches!(s, State::RoOnly | State::RwOnly | State::Both)
}

/// What the union shows in `f` before the operation.
fn content(s: State) -> &'static [u8] {
    match s {
        State::RoOnly => b"ro",
        State::RwOnly | State::Both => b"rw",
        _ => b"",
    }
}

fn ro_has(s: State) -> bool {
    s != State::RwOnly
}

fn setup(fx: &Fx, i: usize, s: State) {
    let d = case_dir(i, s);
    match s {
        State::RoOnly => {}
        State::RwOnly => std::fs::write(fx.m(&format!("{d}/f")), b"rw").unwrap(),
        State::Both => std::fs::write(fx.m(&format!("{d}/f")), b"rw").unwrap(),
        State::WhitedOut => std::fs::remove_file(fx.m(&format!("{d}/f"))).unwrap(),
        State::UnderOpaque => {
            std::fs::remove_file(fx.m(&format!("{d}/f"))).unwrap();
            std::fs::remove_dir(fx.m(&d)).unwrap();
            std::fs::create_dir(fx.m(&d)).unwrap();
        }
    }
}

fn populate(ro: &Path) {
    for (i, (s, _)) in cases().iter().enumerate() {
        let d = ro.join(case_dir(i, *s));
        std::fs::create_dir_all(&d).unwrap();
        if ro_has(*s) {
            std::fs::write(d.join("f"), b"ro").unwrap();
            std::fs::set_permissions(d.join("f"), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}

fn cases() -> Vec<(State, OpT)> {
    STATES
        .iter()
        .flat_map(|&s| OPS.iter().map(move |&o| (s, o)))
        .collect()
}

fn errno_of(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

#[test]
fn every_operation_in_every_state() {
    let fx = Fx::new(populate);
    let cases = cases();
    for (i, &(s, _)) in cases.iter().enumerate() {
        setup(&fx, i, s);
    }
    let mut failures = Vec::new();
    for (i, &(s, op)) in cases.iter().enumerate() {
        let d = case_dir(i, s);
        let f = fx.m(&format!("{d}/f"));
        let rw_f = fx.rw.join(format!("{d}/f"));
        let ro_f = fx.ro.join(format!("{d}/f"));
        let wh = fx.rw.join(format!("{d}/.wh.f"));
        let res = |p: &str| fx.handle.resolve(&wp(p));
        let fpath = format!("{d}/f");
        let check = |ok: bool, what: &str| -> Result<(), String> {
            if ok { Ok(()) } else { Err(what.to_string()) }
        };
        let r: Result<(), String> = (|| {
            match op {
                OpT::Stat => check(std::fs::metadata(&f).is_ok() == visible(s), "stat")?,
                OpT::Read => match std::fs::read(&f) {
                    Ok(v) => check(visible(s) && v == content(s), "read content")?,
                    Err(e) => check(!visible(s) && errno_of(e) == libc::ENOENT, "read err")?,
                },
                OpT::Append => {
                    let r = std::fs::OpenOptions::new().append(true).open(&f);
                    match r {
                        Ok(mut h) => {
                            check(visible(s), "append opened invisible")?;
                            h.write_all(b"X").map_err(|e| e.to_string())?;
                            drop(h);
                            let mut want = content(s).to_vec();
                            want.push(b'X');
                            check(std::fs::read(&f).unwrap() == want, "append: mount")?;
                            check(std::fs::read(&rw_f).ok() == Some(want), "append: rw branch")?;
                            if ro_has(s) {
                                check(
                                    std::fs::read(&ro_f).unwrap() == b"ro",
                                    "append: ro untouched",
                                )?;
                            }
                            check(res(&fpath) == Resolution::Rw, "append: table Rw")?;
                        }
                        Err(e) => check(!visible(s) && errno_of(e) == libc::ENOENT, "append err")?,
                    }
                }
                OpT::Unlink => match std::fs::remove_file(&f) {
                    Ok(()) => {
                        check(visible(s), "unlink of invisible")?;
                        check(std::fs::metadata(&f).is_err(), "unlink: still visible")?;
                        check(
                            !names(&fx.m(&d)).contains(&"f".to_string()),
                            "unlink: listed",
                        )?;
                        check(!rw_f.exists(), "unlink: rw copy left")?;
                        check(wh.exists() == ro_has(s), "unlink: whiteout file")?;
                        let want = if ro_has(s) {
                            Resolution::Hidden
                        } else {
                            Resolution::Ro
                        };
                        check(res(&fpath) == want, "unlink: table")?;
                        if ro_has(s) {
                            check(ro_f.exists(), "unlink: ro untouched")?;
                        }
                    }
                    Err(e) => check(!visible(s) && errno_of(e) == libc::ENOENT, "unlink err")?,
                },
                OpT::Rename => {
                    let g = fx.m(&format!("{d}/g"));
                    match std::fs::rename(&f, &g) {
                        Ok(()) => {
                            check(visible(s), "rename of invisible")?;
                            check(std::fs::read(&g).unwrap() == content(s), "rename: content")?;
                            check(std::fs::metadata(&f).is_err(), "rename: source visible")?;
                            check(fx.rw.join(format!("{d}/g")).exists(), "rename: rw target")?;
                            check(wh.exists() == ro_has(s), "rename: source whiteout")?;
                            check(
                                names(&fx.m(&d)) == ["g"],
                                &format!("rename: listing {:?}", names(&fx.m(&d))),
                            )?;
                        }
                        Err(e) => check(!visible(s) && errno_of(e) == libc::ENOENT, "rename err")?,
                    }
                }
                OpT::Chmod => {
                    match std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)) {
                        Ok(()) => {
                            check(visible(s), "chmod of invisible")?;
                            let m = std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
                            check(m == 0o600, "chmod: mount mode")?;
                            let rm =
                                std::fs::metadata(&rw_f).unwrap().permissions().mode() & 0o7777;
                            check(rm == 0o600, "chmod: rw mode")?;
                            if ro_has(s) {
                                let om =
                                    std::fs::metadata(&ro_f).unwrap().permissions().mode() & 0o7777;
                                check(om == 0o644, "chmod: ro untouched")?;
                            }
                            check(
                                std::fs::read(&f).unwrap() == content(s),
                                "chmod: content kept",
                            )?;
                        }
                        Err(e) => check(!visible(s) && errno_of(e) == libc::ENOENT, "chmod err")?,
                    }
                }
                OpT::CreateExcl => {
                    let r = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o640)
                        .open(&f);
                    match r {
                        Ok(mut h) => {
                            check(!visible(s), "create_new over visible")?;
                            h.write_all(b"new").unwrap();
                            drop(h);
                            check(std::fs::read(&f).unwrap() == b"new", "create: content")?;
                            check(std::fs::read(&rw_f).unwrap() == b"new", "create: rw")?;
                            check(!wh.exists(), "create: whiteout file left")?;
                            let want = if s == State::WhitedOut {
                                Resolution::Opaque
                            } else {
                                Resolution::Rw
                            };
                            check(res(&fpath) == want, "create: table")?;
                            let m = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
                            check(m == 0o640 & !umask(), "create: mode")?;
                            check(names(&fx.m(&d)) == ["f"], "create: listing")?;
                        }
                        Err(e) => check(visible(s) && errno_of(e) == libc::EEXIST, "create err")?,
                    }
                }
                OpT::Mkdir => match std::fs::create_dir(&f) {
                    Ok(()) => {
                        check(!visible(s), "mkdir over visible")?;
                        check(std::fs::metadata(&f).unwrap().is_dir(), "mkdir: is dir")?;
                        check(names(&f).is_empty(), "mkdir: empty")?;
                        check(rw_f.is_dir(), "mkdir: rw dir")?;
                        let opq = rw_f.join(".wh..wh..opq").exists();
                        check(opq == (s == State::WhitedOut), "mkdir: opaque marker")?;
                    }
                    Err(e) => check(visible(s) && errno_of(e) == libc::EEXIST, "mkdir err")?,
                },
                OpT::List => {
                    let n = names(&fx.m(&d));
                    check(
                        n.iter().all(|x| !x.starts_with(".wh.")),
                        "list: whiteout names",
                    )?;
                    check(
                        n.contains(&"f".to_string()) == visible(s),
                        "list: membership",
                    )?;
                    let uniq: std::collections::BTreeSet<_> = n.iter().collect();
                    check(uniq.len() == n.len(), "list: duplicates")?;
                }
            }
            Ok(())
        })();
        if let Err(what) = r {
            failures.push(format!("{s:?} × {op:?}: {what}"));
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

fn umask() -> u32 {
    // SAFETY: umask is process-global; set it back at once.
    unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        m
    }
}

#[test]
fn user_names_with_whiteout_prefix_are_refused() {
    let fx = Fx::new(|_| {});
    let e = std::fs::write(fx.m(".wh.x"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let e = std::fs::create_dir(fx.m(".wh..wh..opq")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    std::fs::write(fx.m("a"), b"1").unwrap();
    let e = std::fs::rename(fx.m("a"), fx.m(".wh.a")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn directories_rename_and_remove() {
    let fx = Fx::new(|ro| {
        std::fs::create_dir_all(ro.join("rodir/sub")).unwrap();
        std::fs::write(ro.join("rodir/sub/x"), b"x").unwrap();
    });
    // A directory with RO content cannot be renamed atomically (like overlayfs): EXDEV.
    let e = std::fs::rename(fx.m("rodir"), fx.m("moved")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
    // rmdir of a non-empty union dir fails; emptied, it goes and leaves a whiteout.
    assert_eq!(
        std::fs::remove_dir(fx.m("rodir/sub"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    std::fs::remove_file(fx.m("rodir/sub/x")).unwrap();
    std::fs::remove_dir(fx.m("rodir/sub")).unwrap();
    assert!(fx.rw.join("rodir/.wh.sub").exists());
    assert_eq!(fx.handle.resolve(&wp("rodir/sub")), Resolution::Hidden);
    assert!(names(&fx.m("rodir")).is_empty());
    // An RW-only tree renames as a whole, over an empty RO-backed name too.
    std::fs::create_dir_all(fx.m("new/a/b")).unwrap();
    std::fs::write(fx.m("new/a/b/file"), b"deep").unwrap();
    std::fs::rename(fx.m("new"), fx.m("rodir/sub")).unwrap();
    assert_eq!(std::fs::read(fx.m("rodir/sub/a/b/file")).unwrap(), b"deep");
    assert!(std::fs::metadata(fx.m("new")).is_err());
    assert_eq!(fx.handle.resolve(&wp("rodir/sub")), Resolution::Opaque);
    assert_eq!(fx.handle.resolve(&wp("new/a/b/file")), Resolution::Ro);
    assert_eq!(names(&fx.m("rodir/sub")), ["a"]);
    // Remove the whole RW tree again.
    std::fs::remove_dir_all(fx.m("rodir/sub")).unwrap();
    assert!(std::fs::metadata(fx.m("rodir/sub")).is_err());
    assert!(fx.ro.join("rodir/sub").exists());
    assert_eq!(fx.handle.resolve(&wp("rodir/sub")), Resolution::Hidden);
    // An opaque dir renames too (its content is all RW), leaving a whiteout behind.
    std::fs::create_dir(fx.m("rodir/sub")).unwrap();
    std::fs::write(fx.m("rodir/sub/y"), b"y").unwrap();
    std::fs::rename(fx.m("rodir/sub"), fx.m("elsewhere")).unwrap();
    assert_eq!(names(&fx.m("elsewhere")), ["y"]);
    assert!(std::fs::metadata(fx.m("rodir/sub")).is_err());
    assert_eq!(fx.handle.resolve(&wp("rodir/sub")), Resolution::Hidden);
}

#[test]
fn deleting_what_was_created_over_a_whiteout_keeps_the_ro_copy_hidden() {
    let fx = Fx::new(|ro| std::fs::write(ro.join("f"), b"ro").unwrap());
    std::fs::remove_file(fx.m("f")).unwrap();
    std::fs::write(fx.m("f"), b"again").unwrap();
    assert_eq!(std::fs::read(fx.m("f")).unwrap(), b"again");
    std::fs::remove_file(fx.m("f")).unwrap();
    assert!(std::fs::metadata(fx.m("f")).is_err());
    assert!(fx.rw.join(".wh.f").exists());
    assert!(names(&fx.mnt).is_empty());
}
