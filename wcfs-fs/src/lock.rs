//! POSIX byte-range locks and `flock`s of RW files, held on the backing file.
//!
//! Nodes share the RW branch, so a lock taken on one node must exclude a conflicting lock on
//! another: kernel-local locking (what FUSE does when the daemon does not implement locks)
//! only sees one mount. Each kernel lock owner gets its own open file description of the
//! backing file and its locks become open-file-description locks (`F_OFD_SETLK`) on it, so
//! the backing filesystem arbitrates between owners on this node and (NFS) on every node,
//! with POSIX's per-owner merge/split semantics. Closing a description drops its locks, which
//! is how `flush` (POSIX: any close releases the owner's locks) and `release` (flock) unlock.
//!
//! `flock` arrives as a whole-file lock of the open file's owner (fuser does not expose the
//! kernel's `FUSE_LK_FLOCK` flag), so flocks and POSIX locks conflict with each other here —
//! exactly what the Linux NFS client does, which emulates flock with byte-range locks.
//!
//! RO files need nothing on the backing file: a write lock needs a writable open, which
//! copies the file up, so no lock can ever conflict with a lock on an RO file.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::stats::RwStats;

/// Most `F_SETLKW` waits in flight (each on its own thread, so FUSE workers never block on
/// a lock); beyond it a blocking request fails with `ENOLCK`.
pub(crate) const MAX_LOCK_WAITERS: usize = 256;

/// The kernel's "to the end of the file" (`OFFSET_MAX`).
const OFFSET_MAX: u64 = i64::MAX as u64;

struct Held {
    owner: u64,
    /// The open handle the owner first locked through.
    fh: u64,
    file: Arc<File>,
}

/// A conflicting lock found by [`Locks::test`].
pub(crate) struct Conflict {
    pub start: u64,
    pub end: u64,
    pub typ: i32,
}

/// The lock descriptions of every inode with locks.
#[derive(Default)]
pub(crate) struct Locks {
    by_ino: Mutex<HashMap<u64, Vec<Held>>>,
    waiters: AtomicUsize,
}

fn flock(start: u64, end: u64, typ: i32) -> libc::flock {
    // SAFETY: plain-data struct; zero is a valid value for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start.min(OFFSET_MAX) as i64;
    fl.l_len = if end >= OFFSET_MAX {
        0
    } else {
        (end.saturating_sub(start) + 1) as i64
    };
    fl
}

fn fcntl_lock(f: &File, cmd: i32, fl: &mut libc::flock) -> io::Result<()> {
    loop {
        // SAFETY: valid fd and flock struct; OFD commands require l_pid 0 (zeroed).
        if unsafe { libc::fcntl(f.as_raw_fd(), cmd, fl as *mut libc::flock) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A new open file description of the file behind `backing` (reopened through the
/// daemon's own fd, so no path is resolved), read-write when allowed.
fn reopen(backing: &File, stats: &RwStats) -> io::Result<File> {
    let p = std::ffi::CString::new(format!("/proc/self/fd/{}", backing.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut last = io::Error::from_raw_os_error(libc::EACCES);
    for acc in [libc::O_RDWR, libc::O_RDONLY] {
        stats.count();
        // SAFETY: NUL-terminated path; the result is checked.
        let fd = unsafe { libc::open(p.as_ptr(), acc | libc::O_CLOEXEC | libc::O_NOCTTY) };
        if fd >= 0 {
            // SAFETY: a fresh fd owned by nobody else.
            return Ok(unsafe { File::from_raw_fd(fd) });
        }
        last = io::Error::last_os_error();
    }
    Err(last)
}

impl Locks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<Held>>> {
        self.by_ino.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The owner's description of `ino`, opened from `backing` if it has none yet.
    fn description(
        &self,
        ino: u64,
        owner: u64,
        fh: u64,
        backing: &File,
        stats: &RwStats,
    ) -> io::Result<Arc<File>> {
        if let Some(h) = self
            .lock()
            .get(&ino)
            .and_then(|v| v.iter().find(|h| h.owner == owner))
        {
            return Ok(h.file.clone());
        }
        let f = Arc::new(reopen(backing, stats)?);
        let mut g = self.lock();
        let v = g.entry(ino).or_default();
        // A racing request of the same owner may have opened one first: use that.
        if let Some(h) = v.iter().find(|h| h.owner == owner) {
            return Ok(h.file.clone());
        }
        v.push(Held {
            owner,
            fh,
            file: f.clone(),
        });
        Ok(f)
    }

    /// Sets (or, with `F_UNLCK`, clears) `owner`'s lock on `[start, end]` of RW inode `ino`
    /// whose open file is `backing`. Non-blocking: a conflict is `EAGAIN`.
    #[allow(clippy::too_many_arguments)] // the FUSE lock request, flattened
    pub(crate) fn set(
        &self,
        ino: u64,
        owner: u64,
        fh: u64,
        backing: &File,
        start: u64,
        end: u64,
        typ: i32,
        stats: &RwStats,
    ) -> io::Result<()> {
        if typ == libc::F_UNLCK {
            let Some(f) = self
                .lock()
                .get(&ino)
                .and_then(|v| v.iter().find(|h| h.owner == owner))
                .map(|h| h.file.clone())
            else {
                return Ok(());
            };
            stats.count();
            return fcntl_lock(&f, libc::F_OFD_SETLK, &mut flock(start, end, typ));
        }
        let f = self.description(ino, owner, fh, backing, stats)?;
        stats.count();
        fcntl_lock(&f, libc::F_OFD_SETLK, &mut flock(start, end, typ))
    }

    /// Like [`Locks::set`], waiting for conflicting locks to go: runs `done` with the result on
    /// a waiter thread, or at once with `ENOLCK` when too many waits are in flight.
    #[allow(clippy::too_many_arguments)] // the FUSE lock request, flattened
    pub(crate) fn set_wait(
        self: &Arc<Self>,
        ino: u64,
        owner: u64,
        fh: u64,
        backing: &File,
        start: u64,
        end: u64,
        typ: i32,
        stats: &Arc<RwStats>,
        done: impl FnOnce(io::Result<()>) + Send + 'static,
    ) {
        if typ == libc::F_UNLCK {
            done(self.set(ino, owner, fh, backing, start, end, typ, stats));
            return;
        }
        let f = match self.description(ino, owner, fh, backing, stats) {
            Ok(f) => f,
            Err(e) => return done(Err(e)),
        };
        if self.waiters.fetch_add(1, Ordering::AcqRel) >= MAX_LOCK_WAITERS {
            self.waiters.fetch_sub(1, Ordering::AcqRel);
            return done(Err(io::Error::from_raw_os_error(libc::ENOLCK)));
        }
        let me = self.clone();
        let stats = stats.clone();
        let spawned = std::thread::Builder::new()
            .name("wcfs-lockwait".into())
            .spawn(move || {
                stats.count();
                let r = fcntl_lock(&f, libc::F_OFD_SETLKW, &mut flock(start, end, typ));
                if r.is_ok() {
                    // A close by the owner while it waited dropped the description (and the
                    // locks it held then); the lock just granted is the owner's again.
                    let mut g = me.lock();
                    let v = g.entry(ino).or_default();
                    if !v.iter().any(|h| h.owner == owner) {
                        v.push(Held { owner, fh, file: f });
                    }
                }
                me.waiters.fetch_sub(1, Ordering::AcqRel);
                done(r);
            });
        if let Err(e) = spawned {
            self.waiters.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(error = %e, "cannot spawn a lock waiter");
        }
    }

    /// The first lock of another owner that conflicts with `owner` taking `[start, end]`.
    #[allow(clippy::too_many_arguments)] // the FUSE lock request, flattened
    pub(crate) fn test(
        &self,
        ino: u64,
        owner: u64,
        backing: &File,
        start: u64,
        end: u64,
        typ: i32,
        stats: &RwStats,
    ) -> io::Result<Option<Conflict>> {
        let own = self
            .lock()
            .get(&ino)
            .and_then(|v| v.iter().find(|h| h.owner == owner))
            .map(|h| h.file.clone());
        let f = match own {
            Some(f) => f,
            None => Arc::new(reopen(backing, stats)?),
        };
        let mut fl = flock(start, end, typ);
        stats.count();
        fcntl_lock(&f, libc::F_OFD_GETLK, &mut fl)?;
        if fl.l_type as i32 == libc::F_UNLCK {
            return Ok(None);
        }
        let s = fl.l_start.max(0) as u64;
        let e = if fl.l_len == 0 {
            OFFSET_MAX
        } else {
            s + fl.l_len as u64 - 1
        };
        Ok(Some(Conflict {
            start: s,
            end: e,
            typ: fl.l_type as i32,
        }))
    }

    /// Drops `owner`'s locks on `ino` (a close by that owner).
    pub(crate) fn drop_owner(&self, ino: u64, owner: u64) {
        let mut g = self.lock();
        if let Some(v) = g.get_mut(&ino) {
            v.retain(|h| h.owner != owner);
            if v.is_empty() {
                g.remove(&ino);
            }
        }
    }

    /// Drops the locks taken through handle `fh` (its last close: OFD and flock owners).
    pub(crate) fn drop_handle(&self, ino: u64, fh: u64) {
        let mut g = self.lock();
        if let Some(v) = g.get_mut(&ino) {
            v.retain(|h| h.fh != fh);
            if v.is_empty() {
                g.remove(&ino);
            }
        }
    }
}
