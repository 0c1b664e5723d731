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
