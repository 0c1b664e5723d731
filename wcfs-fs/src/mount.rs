//! Mounting the union and controlling a live mount.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use fuser::{BackgroundSession, Config, INodeNo, MountOption, Notifier, Session, SessionACL};
use wcfs_core::handle::TableHandle;
use wcfs_core::path::WPath;

use crate::branch::Branch;
use crate::fs::{FsConfig, Shared, UnionFs};
use crate::inode::ROOT;
use crate::stats::RwStats;

/// Most pending invalidations; beyond it they are dropped (the kernel's TTLs bound staleness)
/// and counted.
pub const INVALIDATION_QUEUE: usize = 65_536;

/// What to mount where.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// The read-only branch directory.
    pub ro: PathBuf,
    /// The shared read-write branch directory.
    pub rw: PathBuf,
    /// Where to mount the union.
    pub mountpoint: PathBuf,
    /// Let every user in (`allow_other`); the kernel still checks modes (`default_permissions`).
    pub allow_other: bool,
    /// Cache lifetimes, threads, passthrough.
    pub fs: FsConfig,
}

/// Why a mount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// `/dev/fuse` is missing or cannot be opened.
    #[error("FUSE is unavailable ({0}): load the fuse module or give the container /dev/fuse")]
    FuseUnavailable(String),
    /// The mountpoint is already a mount (or a dead FUSE mount).
    #[error("mountpoint {path} is busy: {why}")]
    Busy {
        /// The mountpoint.
        path: PathBuf,
        /// What is in the way.
        why: String,
    },
    /// A branch or the mountpoint cannot be used.
    #[error("{what} {path}: {source}")]
    Path {
        /// Which directory.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The kernel refused the mount.
    #[error("mount failed: {0}")]
    Mount(io::Error),
}

enum Msg {
    Path(WPath),
    /// Everything under a path (`None`: the whole mount); the count of names dropped is
    /// sent back if anyone waits.
    Tree(Option<WPath>, Option<SyncSender<usize>>),
    Stop,
}

/// Tells a live mount that a path's resolution changed (a remote table change): the kernel's
/// cached entry and inode for exactly that path are dropped, so the next access asks the
/// union again. Cheap, non-blocking, callable from any thread (including table listeners).
#[derive(Clone)]
pub struct Invalidator {
    tx: SyncSender<Msg>,
}

impl Invalidator {
    /// Queues the invalidation of `path`. Never blocks; drops it if the queue is full.
    pub fn path_changed(&self, path: &WPath) {
        match self.tx.try_send(Msg::Path(path.clone())) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(%path, "invalidation queue full; kernel cache expires by TTL")
            }
        }
    }

    /// Queues dropping everything the kernel may have cached under `path` (`None`: the whole
    /// mount): every entry, attribute and page of the names below it, and every directory
    /// listing there. Used when the table was replaced wholesale, and when the RO branch's
    /// content was replaced under the mount. Never blocks; the returned receiver gets the
    /// number of names dropped once done, or disconnects if the request could not be queued
    /// (full queue, unmounted).
    pub fn drop_tree(&self, path: Option<&WPath>) -> Receiver<usize> {
        let (done_tx, done_rx) = sync_channel(1);
        match self.tx.try_send(Msg::Tree(path.cloned(), Some(done_tx))) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!("invalidation queue full; kernel cache expires by TTL")
            }
        }
        done_rx
    }
}

fn invalidate_loop(rx: Receiver<Msg>, shared: Weak<Shared>, notifier: Notifier) {
    loop {
        let p = match rx.recv() {
            Ok(Msg::Path(p)) => p,
            Ok(Msg::Tree(p, done)) => {
                let Some(s) = shared.upgrade() else { return };
                let n = drop_tree(&s, &notifier, p.as_ref());
                if let Some(done) = done {
                    let _ = done.try_send(n);
                }
                continue;
            }
            Ok(Msg::Stop) | Err(_) => return,
        };
        let Some(s) = shared.upgrade() else { return };
        let parent = match p.parent() {
            None => Some(ROOT),
            Some(d) => s.inodes.find_path(&d),
        };
        // The kernel only caches what it has looked up, and everything it looked up has a node.
        let Some(parent) = parent else { continue };
        let name = std::ffi::OsStr::from_bytes_compat(p.file_name());
        if let Err(e) = notifier.inval_entry(INodeNo(parent), name)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::debug!(path = %p, error = %e, "inval_entry");
        }
        // The parent's listing may be cached by the kernel (FOPEN_CACHE_DIR): drop its pages.
        if let Err(e) = notifier.inval_inode(INodeNo(parent), 0, 0)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::debug!(path = %p, error = %e, "inval_inode(parent)");
        }
        s.forget_listing(parent);
        if let Some(ino) = s.inodes.find(parent, p.file_name())
            && let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::debug!(path = %p, error = %e, "inval_inode");
        }
    }
}

/// Logs a notifier failure other than ENOENT (the kernel no longer has what we name).
fn note(what: &str, r: io::Result<()>) {
    if let Err(e) = r
        && e.raw_os_error() != Some(libc::ENOENT)
    {
        tracing::debug!(error = %e, "{what}");
    }
}

/// Drops the kernel's entries, attributes, pages and listings under `path` (`None`: the whole
/// mount), and the path's own entry. Returns the number of names dropped.
fn drop_tree(s: &Shared, notifier: &Notifier, path: Option<&WPath>) -> usize {
    // A new RO image may be mounted over the branch's path (or its symlink switched): resolve
    // the path again, or every later call would still read the old image.
    if let Err(e) = s.reload_ro() {
        tracing::error!(error = %e, "reopening the RO branch; still serving the old one");
    }
    let top = match path {
        None => ROOT,
        Some(p) => {
            let parent = match p.parent() {
                None => Some(ROOT),
                Some(d) => s.inodes.find_path(&d),
            };
            // Nothing cached: the kernel only caches what it has looked up.
            let Some(parent) = parent else { return 0 };
            let name = std::ffi::OsStr::from_bytes_compat(p.file_name());
            note("inval_entry", notifier.inval_entry(INodeNo(parent), name));
            note(
                "inval_inode(parent)",
                notifier.inval_inode(INodeNo(parent), 0, 0),
            );
            s.forget_listing(parent);
            match s.inodes.find(parent, p.file_name()) {
                Some(ino) => ino,
                None => return 1,
            }
        }
    };
    let names = s.inodes.subtree(top);
    // The directory's own attributes and listing first, then every name below it.
    note("inval_inode", notifier.inval_inode(INodeNo(top), 0, 0));
    if path.is_none() {
        s.forget_all_listings();
    } else {
        s.forget_listing(top);
    }
    for (parent, name, ino) in &names {
        let os = std::ffi::OsStr::from_bytes_compat(name);
        note("inval_entry", notifier.inval_entry(INodeNo(*parent), os));
        note("inval_inode", notifier.inval_inode(INodeNo(*ino), 0, 0));
        s.forget_listing(*ino);
    }
    let mut extra = 0;
    if path.is_none() {
        // Dropping a directory's entry drops the negative entries below it too, but the root
        // has no entry: its negative entries (names that did not exist) are reached by name,
        // from the names that may exist now: the RO root's and the table's.
        let known: std::collections::HashSet<&[u8]> = names
            .iter()
            .filter(|n| n.0 == ROOT)
            .map(|n| &*n.1)
            .collect();
        let mut candidates: Vec<Vec<u8>> =
            s.table.children(None).into_iter().map(|c| c.name).collect();
        match s.ro.list(None) {
            Ok(l) => candidates.extend(l.into_iter().map(|e| e.name)),
            Err(e) => tracing::warn!(error = %e, "listing the RO root to invalidate its names"),
        }
        candidates.sort_unstable();
        candidates.dedup();
        for name in candidates.iter().filter(|n| !known.contains(n.as_slice())) {
            let os = std::ffi::OsStr::from_bytes_compat(name);
            note("inval_entry", notifier.inval_entry(INodeNo(ROOT), os));
            extra += 1;
        }
    }
    names.len() + extra + usize::from(path.is_some())
}

trait OsStrCompat {
    fn from_bytes_compat(b: &[u8]) -> &Self;
}
impl OsStrCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &Self {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(b)
    }
}

/// A callback run when the FUSE session ends.
type EndHook = Box<dyn FnOnce() + Send>;

/// Whether the FUSE session has ended, and who to tell when it does.
#[derive(Default)]
pub(crate) struct SessionEnd(Mutex<EndState>);

#[derive(Default)]
enum EndState {
    #[default]
    Running,
    Hooked(EndHook),
    Ended,
}

impl SessionEnd {
    /// Marks the session ended and runs the hook, if one was set (at most once).
    pub(crate) fn ended(&self) {
        let prev = std::mem::replace(
            &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner),
            EndState::Ended,
        );
        // Run outside the lock: the hook may be slow or call back into the guard.
        if let EndState::Hooked(f) = prev {
            f();
        }
    }

    fn is_ended(&self) -> bool {
        matches!(
            *self.0.lock().unwrap_or_else(PoisonError::into_inner),
            EndState::Ended
        )
    }

    fn hook(&self, f: EndHook) {
        let mut st = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*st, EndState::Ended) {
            drop(st);
            f();
        } else {
            *st = EndState::Hooked(f);
        }
    }
}

/// A live mount. Dropping it unmounts (lazily if files are still open).
pub struct MountGuard {
    session: Option<BackgroundSession>,
    shared: Arc<Shared>,
    inval: Invalidator,
    mountpoint: PathBuf,
}

impl MountGuard {
    /// RW-branch syscall counters.
    pub fn stats(&self) -> Arc<RwStats> {
        self.shared.stats.clone()
    }

    /// The handle to invalidate paths whose resolution changed behind the mount's back.
    pub fn invalidator(&self) -> Invalidator {
        self.inval.clone()
    }

    /// Whether RW files are served by FUSE passthrough (the kernel accepted it).
    pub fn passthrough(&self) -> bool {
        self.shared.passthrough_active()
    }

    /// Inode numbers the daemon currently keeps (the root included): the nodes the kernel
    /// holds references to, their ancestors and detached-but-referenced nodes. It shrinks
    /// when the kernel forgets inodes (a forgotten file keeps its number when looked up again).
    pub fn inodes(&self) -> usize {
        self.shared.inodes.len()
    }

    /// The mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Runs `f` once, on a FUSE thread, when the session ends: after [`MountGuard::unmount`]
    /// or when the mount went away from outside (`umount MNT`, `fusermount3 -u`, the FUSE
    /// connection aborted). At once (on the calling thread) if it has already ended. Replaces
    /// an earlier hook. `f` must not block on this guard (it runs inside `unmount`).
    pub fn on_session_end(&self, f: impl FnOnce() + Send + 'static) {
        self.shared.session_end.hook(Box::new(f));
    }

    /// Whether the FUSE session has ended (see [`MountGuard::on_session_end`]).
    pub fn session_ended(&self) -> bool {
        self.shared.session_end.is_ended()
    }

    /// Unmounts and waits for the FUSE workers to finish. On EBUSY, detaches lazily.
    pub fn unmount(mut self) -> io::Result<()> {
        self.do_unmount()
    }

    fn do_unmount(&mut self) -> io::Result<()> {
        let _ = self.inval.tx.try_send(Msg::Stop);
        if let Some(r) = self.shared.refresher.get() {
            r.stop();
        }
        let Some(sess) = self.session.take() else {
            return Ok(());
        };
        match sess.umount_and_join() {
            Ok(()) => Ok(()),
            // Unmounted from outside already (`umount MNT`): nothing left to do.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!("already unmounted");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "unmount failed; detaching lazily");
                lazy_unmount(&self.mountpoint)
            }
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = self.do_unmount() {
            tracing::error!(mountpoint = %self.mountpoint.display(), error = %e, "unmount failed");
        }
    }
}

/// `umount2(MNT_DETACH)`: the mount disappears now and is torn down when no longer busy.
pub fn lazy_unmount(mountpoint: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    Ok(())
}

fn preflight(cfg: &MountConfig) -> Result<(), MountError> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Err(MountError::FuseUnavailable(format!("/dev/fuse: {e}")));
    }
    let mp = &cfg.mountpoint;
    let meta = match std::fs::metadata(mp) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(MountError::Busy {
                path: mp.clone(),
                why: format!(
                    "a dead FUSE mount is there; run `fusermount3 -uz {}`",
                    mp.display()
                ),
            });
        }
        Err(e) => {
            return Err(MountError::Path {
                what: "mountpoint",
                path: mp.clone(),
                source: e,
            });
        }
    };
    if !meta.is_dir() {
        return Err(MountError::Path {
            what: "mountpoint",
            path: mp.clone(),
            source: io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    use std::os::unix::fs::MetadataExt;
    if let Some(parent) = mp
        .canonicalize()
        .ok()
        .and_then(|c| c.parent().map(Path::to_path_buf))
        && let Ok(pm) = std::fs::metadata(&parent)
        && (pm.dev() != meta.dev() || pm.ino() == meta.ino())
    {
        return Err(MountError::Busy {
            path: mp.clone(),
            why: "something is already mounted there".into(),
        });
    }
    Ok(())
}

/// Mounts the union of `cfg.ro` and `cfg.rw` at `cfg.mountpoint`, consulting `table`, and
/// serves it on background threads until the returned guard is dropped.
pub fn mount(cfg: &MountConfig, table: Arc<dyn TableHandle>) -> Result<MountGuard, MountError> {
    preflight(cfg)?;
    let stats = Arc::new(RwStats::default());
    let ro = Branch::open(&cfg.ro, None).map_err(|e| MountError::Path {
        what: "RO branch",
        path: cfg.ro.clone(),
        source: e,
    })?;
    let rw = Branch::open(&cfg.rw, Some(stats.clone())).map_err(|e| MountError::Path {
        what: "RW branch",
        path: cfg.rw.clone(),
        source: e,
    })?;
    let shared = Arc::new(Shared::new(ro, rw, table, stats, cfg.fs.clone()));
    let mut fc = Config::default();
    fc.mount_options = vec![
        MountOption::FSName("wcfs".into()),
        MountOption::Subtype("wcfs".into()),
        MountOption::DefaultPermissions,
    ];
    if cfg.allow_other {
        fc.acl = SessionACL::All;
    }
    fc.n_threads = Some(cfg.fs.threads.max(1));
    fc.clone_fd = true;
    let session = Session::new(UnionFs(shared.clone()), &cfg.mountpoint, &fc).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            MountError::Busy {
                path: cfg.mountpoint.clone(),
                why: e.to_string(),
            }
        } else {
            MountError::Mount(e)
        }
    })?;
    let notifier = session.notifier();
    let bg = session.spawn().map_err(MountError::Mount)?;
    if cfg.fs.refresh_attrs {
        match std::path::absolute(&cfg.mountpoint)
            .and_then(|mp| crate::refresh::Refresher::start(mp, Arc::downgrade(&shared)))
        {
            Ok(r) => {
                let _ = shared.refresher.set(r);
            }
            Err(e) => tracing::warn!(error = %e, "no background attribute refresh"),
        }
    }
    let (tx, rx) = sync_channel(INVALIDATION_QUEUE);
    let weak = Arc::downgrade(&shared);
    std::thread::Builder::new()
        .name("wcfs-inval".into())
        .spawn(move || invalidate_loop(rx, weak, notifier))
        .map_err(MountError::Mount)?;
    Ok(MountGuard {
        session: Some(bg),
        shared,
        inval: Invalidator { tx },
        mountpoint: cfg.mountpoint.clone(),
    })
}
