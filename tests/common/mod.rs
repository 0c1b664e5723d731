//! Helpers shared by the root tests that run real `wcfs mount` processes.

use std::path::{Path, PathBuf};
use std::process::Child;

/// A running `wcfs mount`; killed and lazily unmounted when dropped, even if the test fails.
pub struct Proc(pub Child, pub PathBuf);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Ok(c) = std::ffi::CString::new(self.1.as_os_str().as_encoded_bytes()) {
            // SAFETY: `c` is a valid NUL-terminated path; MNT_DETACH only detaches.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Whether `p` is a mount point right now.
pub fn is_mounted(p: &Path) -> bool {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let canon = p.canonicalize().unwrap();
    mi.lines()
        .any(|l| l.split(' ').nth(4) == Some(canon.to_str().unwrap()))
}

/// How long a polled condition may take before the test fails.
#[allow(dead_code)]
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Polls `f` (every millisecond) until it holds; panics after [`DEADLINE`].
#[allow(dead_code)]
pub fn until(what: &str, mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(t.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Runs `wcfs ARGS` to completion; panics with its stderr if it fails.
#[allow(dead_code)]
pub fn wcfs(args: &[&std::ffi::OsStr]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wcfs"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wcfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loopback UDP address that was free a moment ago.
#[allow(dead_code)]
pub fn free_port() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Polls `f` every 10 ms for up to `limit`; whether it came to hold.
#[allow(dead_code)]
pub fn wait(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    f()
}

/// Starts `wcfs mount ARGS` (its stderr discarded) and waits until `mnt` is mounted.
#[allow(dead_code)]
pub fn spawn_mount(args: &[&std::ffi::OsStr], mnt: &Path) -> Proc {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_wcfs"))
        .arg("mount")
        .args(args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child, mnt.to_owned());
    assert!(
        wait(std::time::Duration::from_secs(10), || is_mounted(mnt)),
        "{} not mounted",
        mnt.display()
    );
    p
}

/// A single node with a data directory: `wcfs mount --ro RO --rw RW --data DATA MNT`.
#[allow(dead_code)]
pub fn local_mount(ro: &Path, rw: &Path, data: &Path, mnt: &Path) -> Proc {
    spawn_mount(
        &[
            "--ro".as_ref(),
            ro.as_os_str(),
            "--rw".as_ref(),
            rw.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
            mnt.as_os_str(),
        ],
        mnt,
    )
}
