//! `wcfs demo`: the README's main command. It must show a write propagating between real
//! mounts, and leave nothing behind (no mounts, no temporary directory) when it ends, whether
//! by `--duration` or by Ctrl-C.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The demo process; on drop (a failing test) it gets SIGTERM, which makes it clean up.
struct DemoProc(Child);

impl Drop for DemoProc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Mount points currently under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = format!("{}/", dir.display());
    mi.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Checks the propagation line: "uploads/hello.txt written on node1, visible on node2 after
/// X ms, node3 after Y ms" with one plausible time per other node. Returns the times.
fn propagation(line: &str, nodes: usize) -> Vec<f64> {
    let rest = line
        .strip_prefix("uploads/hello.txt written on node1, visible on ")
        .unwrap_or_else(|| panic!("not the propagation line: {line:?}"));
    let parts: Vec<&str> = rest.split(", ").collect();
    assert_eq!(parts.len(), nodes - 1, "{line:?}");
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let p = p
                .strip_prefix(&format!("node{} after ", i + 2))
                .unwrap_or_else(|| panic!("{line:?}"));
            let ms: f64 = p.strip_suffix(" ms").unwrap().parse().unwrap();
            assert!(ms > 0.0 && ms < 30_000.0, "{line:?}");
            ms
        })
        .collect()
}

/// The demo's base directory, from its "  node1  BASE/node1/mnt ..." line.
fn base_dir(stdout: &str) -> PathBuf {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("node1 "))
        .unwrap_or_else(|| panic!("no mount line in {stdout}"));
    let mnt = line.split_whitespace().nth(1).unwrap();
    Path::new(mnt)
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_owned()
}

#[test]
fn demo_with_duration_shows_propagation_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_wcfs"))
        .args(["demo", "--duration", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let line = stdout.lines().next().unwrap();
    let times = propagation(line, 3);
    println!("{line} ({times:?})");
    let base = base_dir(&stdout);
    assert!(
        base.starts_with(std::env::temp_dir()),
        "a temporary directory: {}",
        base.display()
    );
    assert!(!base.exists(), "{} was left behind", base.display());
    assert_eq!(mounts_under(&base), Vec::<String>::new());
}

#[test]
fn demo_stops_on_ctrl_c_and_keeps_files_in_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wcfs"))
        .args(["demo", "--nodes", "2", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut demo = DemoProc(child);
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().unwrap().unwrap();
    propagation(&first, 2);
    // Wait until it says it is up, then press "Ctrl-C".
    for l in lines.by_ref() {
        if l.unwrap().starts_with("Press Ctrl-C") {
            break;
        }
    }
    let mnt = dir.join("node2/mnt");
    assert_eq!(
        std::fs::read(mnt.join("uploads/hello.txt")).unwrap(),
        b"hello from node1\n"
    );
    unsafe { libc::kill(demo.0.id() as i32, libc::SIGINT) };
    let status = demo.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
    // --dir keeps the files: the RW branch holds what was written through the mounts.
    assert_eq!(
        std::fs::read(dir.join("rw/uploads/hello.txt")).unwrap(),
        b"hello from node1\n"
    );
    assert!(dir.join("ro/index.php").is_file());
}
