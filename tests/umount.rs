//! A mount taken away from outside (`umount MNT`) stops the node cleanly: it exits 0, writes
//! its final snapshot, removes its admin socket, and a restart finds its table intact. Its log
//! (stderr to a file, as under systemd) carries no terminal colour codes.

mod common;
use common::{Proc, is_mounted, until};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn start(root: &Path, log: &Path) -> Proc {
    let mnt = root.join("mnt");
    let child = Command::new(env!("CARGO_BIN_EXE_wcfs"))
        .arg("mount")
        .arg("--ro")
        .arg(root.join("ro"))
        .arg("--rw")
        .arg(root.join("rw"))
        .arg("--data")
        .arg(root.join("data"))
        .arg(&mnt)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap();
    let p = Proc(child, mnt.clone());
    until("the mount", || is_mounted(&mnt));
    p
}

fn journal_len(root: &Path) -> u64 {
    std::fs::metadata(root.join("data/journal")).unwrap().len()
}

#[test]
fn umount_from_outside_stops_the_node_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for d in ["ro", "rw", "mnt"] {
        std::fs::create_dir(root.join(d)).unwrap();
    }
    let log = root.join("node.log");
    let mut p = start(root, &log);
    let sock = root.join("data/admin.sock");
    until("the admin socket", || sock.exists());
    for i in 0..5 {
        std::fs::write(p.1.join(format!("f{i}")), b"x").unwrap();
    }
    std::fs::remove_file(p.1.join("f4")).unwrap();
    let journal_before = journal_len(root);
    assert!(
        !root.join("data/table.snap").exists(),
        "a snapshot before the stop: the test would not see the final one"
    );

    let out = Command::new("umount").arg(&p.1).output().unwrap();
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    let status = loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the node kept running after its mount went away"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "exit {status:?}; log:\n{text}");
    assert!(!is_mounted(&p.1));
    assert!(!sock.exists(), "admin socket left behind");
    assert!(
        root.join("data/table.snap").exists(),
        "no final snapshot; log:\n{text}"
    );
    assert!(
        journal_len(root) < journal_before,
        "the journal was not shrunk after the final snapshot"
    );
    assert!(
        !text.contains('\x1b'),
        "colour codes in a log file:\n{text}"
    );
    assert!(text.contains("went away from outside"), "{text}");
    drop(p);

    // The restarted node serves the same union: the table came back from the snapshot.
    let p = start(root, &log);
    let mut names: Vec<_> = std::fs::read_dir(&p.1)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["f0", "f1", "f2", "f3"]);
    // A stop by signal still works after the change (and is not mistaken for an outside umount).
    let mut p = p;
    unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
    assert!(p.0.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("went away from outside"), "{text}");
}
