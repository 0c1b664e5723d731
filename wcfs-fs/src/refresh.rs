//! Attributes refreshed in the background after the daemon served a read.
//!
//! The kernel marks an inode's atime stale after every read or directory listing that went
//! to the daemon (`fuse_invalidate_atime`), so the next `stat`/`fstat` of that inode waits
//! for a GETATTR round trip although its attributes are cached for `ro_ttl`: glibc's
//! `opendir` does such an `fstat`, and so does Rust's `read_to_end`. The second listing of a
//! directory, or the first `stat` after a file's first read, then pays a round trip. For RO
//! content the answer cannot have changed, so right after serving such a read the daemon
//! stats the path through its own mount from this thread: the kernel's attributes are fresh
//! again before the application comes back for them.
//!
//! Best effort: requests beyond the queue are dropped (the application then pays the round
//! trip itself, as without this), and a stat that fails is ignored.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::fs::Shared;

/// Inodes waiting for their refresh; beyond it requests are dropped.
const QUEUE: usize = 1024;

/// How long a batch waits before its stats: a synchronous read or listing marks the atime
/// stale in the reader's context after it got the daemon's reply, so a stat sent at once
/// could land before the mark and refresh nothing.
const DELAY: Duration = Duration::from_millis(2);

/// Queues refreshes for the background thread (see the module docs).
pub(crate) struct Refresher {
    tx: SyncSender<u64>,
    pending: Arc<Mutex<HashSet<u64>>>,
    stopped: Arc<AtomicBool>,
    /// Held around each stat, so that [`Refresher::stop`] can wait for the one in flight.
    busy: Arc<Mutex<()>>,
}

impl Refresher {
    /// Starts the thread that stats paths under `mountpoint` (absolute) for `shared`'s mount.
    pub(crate) fn start(mountpoint: PathBuf, shared: Weak<Shared>) -> std::io::Result<Refresher> {
        let (tx, rx) = sync_channel(QUEUE);
        let pending = Arc::new(Mutex::new(HashSet::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(Mutex::new(()));
        let (p, s, b) = (pending.clone(), stopped.clone(), busy.clone());
        std::thread::Builder::new()
            .name("wcfs-refresh".into())
            .spawn(move || run(rx, mountpoint, shared, p, s, b))?;
        Ok(Refresher {
            tx,
            pending,
            stopped,
            busy,
        })
    }

    /// Asks for `ino`'s attributes to be refreshed soon (once per batch however often asked).
    pub(crate) fn request(&self, ino: u64) {
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        let fresh = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ino);
        if fresh && self.tx.try_send(ino).is_err() {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ino);
        }
    }

    /// No more stats through the mount: it is being unmounted (a stat in flight would make
    /// the unmount fail as busy).
    /// Waits for a stat in flight, if any.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        drop(self.busy.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

fn run(
    rx: Receiver<u64>,
    mountpoint: PathBuf,
    shared: Weak<Shared>,
    pending: Arc<Mutex<HashSet<u64>>>,
    stopped: Arc<AtomicBool>,
    busy: Arc<Mutex<()>>,
) {
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv() {
        std::thread::sleep(DELAY);
        batch.push(first);
        batch.extend(rx.try_iter());
        let Some(s) = shared.upgrade() else {
            return;
        };
        let paths: Vec<PathBuf> = batch
            .drain(..)
            .filter_map(|ino| {
                pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&ino);
                match s.inodes.path(ino) {
                    Ok(None) => Some(mountpoint.clone()),
                    Ok(Some(p)) => Some(mountpoint.join(OsStr::from_bytes(p.as_bytes()))),
                    Err(()) => None,
                }
            })
            .collect();
        drop(s);
        for p in paths {
            let _g = busy.lock().unwrap_or_else(|e| e.into_inner());
            if stopped.load(Ordering::Relaxed) {
                return;
            }
            let _ = std::fs::symlink_metadata(&p);
        }
    }
}
