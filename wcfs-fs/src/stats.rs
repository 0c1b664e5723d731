//! Debug counters of syscalls made on the RW branch, per FUSE operation type.
//!
//! The RW branch is NFS in production: every syscall there is a network round trip, so the
//! promise "RO content costs zero RW syscalls" is checked by tests through these counters.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// The FUSE operation a worker thread is serving; RW syscalls are charged to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum OpKind {
    /// `lookup`.
    Lookup,
    /// `getattr`.
    Getattr,
    /// `setattr`.
    Setattr,
    /// `readlink`.
    Readlink,
    /// `mknod`, `mkdir`, `symlink`, `link`, `create`.
    Create,
    /// `unlink`, `rmdir`.
    Remove,
    /// `rename`.
    Rename,
    /// `open`.
    Open,
    /// `read`.
    Read,
    /// `write`.
    Write,
    /// `flush`, `fsync`, `release`.
    Sync,
    /// `opendir`, `readdir`, `readdirplus`, `releasedir`.
    Readdir,
    /// `statfs`.
    Statfs,
    /// The xattr calls.
    Xattr,
    /// Anything else (invalidation, internal work).
    Other,
}

const KINDS: usize = OpKind::Other as usize + 1;

impl OpKind {
    /// Every kind, in counter order.
    pub const ALL: [OpKind; KINDS] = [
        OpKind::Lookup,
        OpKind::Getattr,
        OpKind::Setattr,
        OpKind::Readlink,
        OpKind::Create,
        OpKind::Remove,
        OpKind::Rename,
        OpKind::Open,
        OpKind::Read,
        OpKind::Write,
        OpKind::Sync,
        OpKind::Readdir,
        OpKind::Statfs,
        OpKind::Xattr,
        OpKind::Other,
    ];

    /// A stable lowercase name for labels (metrics, status output).
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Lookup => "lookup",
            OpKind::Getattr => "getattr",
            OpKind::Setattr => "setattr",
            OpKind::Readlink => "readlink",
            OpKind::Create => "create",
            OpKind::Remove => "remove",
            OpKind::Rename => "rename",
            OpKind::Open => "open",
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Sync => "sync",
            OpKind::Readdir => "readdir",
            OpKind::Statfs => "statfs",
            OpKind::Xattr => "xattr",
            OpKind::Other => "other",
        }
    }
}

thread_local! {
    static CURRENT: Cell<OpKind> = const { Cell::new(OpKind::Other) };
}

/// Marks the calling thread as serving `op` until the guard drops. FUSE workers serve one
/// request at a time, so a thread-local is exact.
pub(crate) fn enter(op: OpKind) -> OpGuard {
    let prev = CURRENT.with(|c| c.replace(op));
    OpGuard(prev)
}

/// Restores the previous operation kind on drop.
pub(crate) struct OpGuard(OpKind);

impl Drop for OpGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// Syscalls made on the RW branch, per operation kind, and FUSE requests the daemon served
/// (`open`, `read`, `lookup`, `getattr`, `readdir*`). Cheap relaxed atomics.
#[derive(Debug, Default)]
pub struct RwStats {
    counts: [AtomicU64; KINDS],
    requests: [AtomicU64; KINDS],
}

impl RwStats {
    /// The operations whose FUSE requests [`RwStats::requests`] counts; it reads 0 for the
    /// others.
    pub const REQUESTS_COUNTED: [OpKind; 5] = [
        OpKind::Lookup,
        OpKind::Getattr,
        OpKind::Open,
        OpKind::Read,
        OpKind::Readdir,
    ];

    /// Charges one RW syscall to the calling thread's current operation.
    pub(crate) fn count(&self) {
        let op = CURRENT.with(|c| c.get());
        self.counts[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one FUSE request of kind `op` that reached the daemon.
    pub(crate) fn served(&self, op: OpKind) {
        debug_assert!(
            Self::REQUESTS_COUNTED.contains(&op),
            "{op:?} is not in REQUESTS_COUNTED"
        );
        self.requests[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// FUSE requests of kind `op` that reached the daemon since the mount (or the last
    /// [`RwStats::reset`]); counted for `open`, `read`, `lookup`, `getattr` and `readdir*`.
    pub fn requests(&self, op: OpKind) -> u64 {
        self.requests[op as usize].load(Ordering::Relaxed)
    }

    /// RW syscalls charged to `op` since the mount (or the last [`RwStats::reset`]).
    pub fn get(&self, op: OpKind) -> u64 {
        self.counts[op as usize].load(Ordering::Relaxed)
    }

    /// RW syscalls of every kind.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Zeroes every counter.
    pub fn reset(&self) {
        for c in self.counts.iter().chain(&self.requests) {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// `(kind, count)` for every non-zero counter, for test failure messages.
    pub fn snapshot(&self) -> Vec<(OpKind, u64)> {
        OpKind::ALL
            .iter()
            .map(|&k| (k, self.get(k)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}
