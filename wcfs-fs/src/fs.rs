//! The union filesystem: FUSE requests answered from the RO and RW branches as the
//! translation table says.
//!
//! Where a path is served from:
//! - `Resolution::Ro`: the RO branch only (the RW branch is not touched);
//! - `Rw`: the RW branch; if the RW branch lacks it (a mark that raced a removal), the RO
//!   branch unless the RW branch holds an aufs whiteout for it (the RW branch is the truth);
//! - `Opaque` / `RwOnly`: the RW branch only; `Hidden`: nowhere.
//!
//! A directory with no table children is listed from the RO branch alone; otherwise both
//! listings are merged by the same rules, so `readdir` and `lookup` always agree.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use wcfs_core::dot::{Kind, Op};
use wcfs_core::handle::TableHandle;
use wcfs_core::path::{MAX_NAME_LEN, PathError, WPath};
use wcfs_core::table::Resolution;

use crate::branch::{Branch, RawEntry, split};
use crate::inode::{Inodes, Origin, ROOT};
use crate::lock::Locks;
use crate::stats::{OpKind, RwStats, enter};

mod implicit;

/// aufs whiteout prefix: `.wh.<name>` on the RW branch hides `<name>` of the RO branch.
pub const WH_PREFIX: &[u8] = b".wh.";
/// aufs opaque-directory marker, inside an RW directory that hides the RO one.
pub const WH_OPAQUE: &[u8] = b".wh..wh..opq";
/// Longest user name: a whiteout `.wh.<name>` must still fit in `NAME_MAX`.
pub const MAX_USER_NAME: usize = MAX_NAME_LEN - WH_PREFIX.len();

/// Tunables of the union: kernel cache lifetimes, dispatch threads, passthrough.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Entry and attribute TTL for paths served from the RO branch. RO content never changes
    /// under a mount and table changes invalidate exactly, so this can be long.
    pub ro_ttl: Duration,
    /// Entry and attribute TTL for paths served from the RW branch (other nodes can change
    /// the shared RW branch's files' attributes without a table change).
    pub rw_ttl: Duration,
    /// How long the kernel may remember that a name does not exist (zero: not at all).
    pub negative_ttl: Duration,
    /// FUSE dispatch threads.
    pub threads: usize,
    /// Use FUSE passthrough for RW files when the kernel offers it.
    pub passthrough: bool,
    /// Offer `readdirplus` to the kernel.
    pub readdirplus: bool,
    /// Let the kernel cache directory listings (`FOPEN_CACHE_DIR`), and skip `opendir` round
    /// trips entirely where the kernel supports `FUSE_NO_OPENDIR_SUPPORT`. Table changes drop
    /// the cached listing of the parent directory.
    pub cache_dirs: bool,
    /// Directory fds of the RO branch kept open (least recently used dropped beyond it), so
    /// a lookup is one `fstatat` relative to its cached parent instead of a path walk from the
    /// branch root. 0: none. Sound because the RO branch never changes under a mount.
    pub ro_dir_fds: usize,
    /// Read-only opens of RO regular files at least this large are served by FUSE passthrough
    /// (reads go from the kernel straight to the RO file) when the kernel has it; smaller ones
    /// through the daemon and the kernel's kept page cache. `u64::MAX`: never.
    ///
    /// The kernel allows one backing file per inode at a time, so while such a file is open
    /// the inode cannot be opened on its RW copy: an open for writing (or any open after a
    /// copy-up made by a `chmod`/`truncate`/... in the meantime) fails with `ETXTBSY` if
    /// the passthrough opens are not closed within half a second. The open fds keep reading the RO content, as
    /// overlayfs's fds opened before a copy-up do.
    pub ro_passthrough_min: u64,
    /// Strict mode: a lookup of a path the table does not know also checks the RW branch
    /// (costs one RW metadata request per miss), for RW branches written by something other
    /// than WCFS, or for applications that cannot wait for a remote mark to arrive.
    pub strict: bool,
    /// Opens and closes never wait for the daemon: the kernel is told the daemon has no
    /// `open` or `flush` (`FUSE_NO_OPEN_SUPPORT`), so opening a cached file costs about what
    /// it costs on a local filesystem, and I/O arrives without a handle (the daemon keeps a
    /// file per inode, see `implicit_file`). What it costs:
    /// - locks (`fcntl`, `flock`) are kept by the kernel and exclude only processes of this
    ///   node: with no close notification the daemon could not release locks held on the RW
    ///   branch for other nodes to see;
    /// - no FUSE passthrough (reads of large RO files and of RW files go through the daemon
    ///   and the kernel's page cache), and another node's rewrite of an RW file is seen once
    ///   its attributes are revalidated (`rw_ttl`), not at the next open.
    pub fast_open: bool,
    /// After serving a read or a listing of RO content, stat its path through the mount in
    /// the background, so the attributes the kernel then marks stale (atime) are fresh again
    /// before the application's next `stat` (see `refresh.rs`).
    pub refresh_attrs: bool,
}

impl Default for FsConfig {
    fn default() -> FsConfig {
        FsConfig {
            ro_ttl: Duration::from_secs(60),
            rw_ttl: Duration::from_secs(1),
            negative_ttl: Duration::from_secs(60),
            threads: 4,
            passthrough: true,
            readdirplus: true,
            cache_dirs: true,
            ro_dir_fds: 1024,
            ro_passthrough_min: 1 << 20,
            strict: false,
            fast_open: false,
            refresh_attrs: true,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Ro,
    Rw,
}

struct Found {
    side: Side,
    st: libc::stat,
}

impl Side {
    fn origin(self) -> Origin {
        match self {
            Side::Ro => Origin::Ro,
            Side::Rw => Origin::Rw,
        }
    }
}

/// A name of a merged directory listing.
struct Listed {
    name: Vec<u8>,
    kind: FileType,
    /// The inode number (see `inode.rs`), from the backing `d_ino`.
    number: u64,
}

struct DirEnt {
    name: Vec<u8>,
    ino: u64,
    kind: FileType,
}

enum Handle {
    File {
        ino: u64,
        file: File,
        side: Side,
        /// Keeps the kernel's passthrough registration alive while the file is open.
        _backing: Option<Arc<BackingId>>,
    },
    Dir {
        entries: Arc<Vec<DirEnt>>,
    },
    /// A read-only open of an RO-branch file. The RO branch never changes under a mount, so
    /// the open needs no syscall: the file is opened on the first read that misses the kernel's
    /// page cache (kept across opens), or never.
    RoLazy {
        ino: u64,
        path: WPath,
        file: OnceLock<File>,
        /// Set when the open is served by passthrough (reads never reach the daemon).
        backing: Option<Arc<BackingId>>,
    },
}

impl Handle {
    /// An RO file's handle: `fd` if the file is already open, else opened on first use.
    fn ro_lazy(
        ino: u64,
        path: WPath,
        fd: Option<OwnedFd>,
        backing: Option<Arc<BackingId>>,
    ) -> Handle {
        let file = OnceLock::new();
        if let Some(fd) = fd {
            let _ = file.set(File::from(fd));
        }
        Handle::RoLazy {
            ino,
            path,
            file,
            backing,
        }
    }
}

/// How read-only opens of an RO path are served, remembered per path (RO files never change
/// under a mount, so the first open decides for all).
#[derive(Clone)]
enum RoOpen {
    /// Through the daemon and the kernel's kept page cache.
    Cached,
    /// By passthrough to this registered RO file.
    Passthrough(Arc<BackingId>),
}

/// How long an open waits for the passthrough opens that bind its inode to the other branch's
/// file to be released. A `close` returns before the daemon has seen its `RELEASE`, so a
/// reader's close followed at once by a writer's open must not fail for that lag; an open
/// still held after this is a real conflict (ETXTBSY).
const UNBIND_WAIT: Duration = Duration::from_millis(500);

/// Most RO paths whose open mode (and passthrough registration) is remembered; beyond it the
/// memory is emptied (the next opens decide again).
const RO_OPENS_MAX: usize = 4096;

/// Most directory listings the daemon keeps for offset-continued `readdir` calls without an
/// `opendir` handle; beyond it the cache is emptied (listings are rebuilt at offset 0 anyway).
const DIR_CACHE_MAX: usize = 4096;

/// Per-inode open state that the kernel's passthrough rules depend on.
#[derive(Default)]
struct OpenState {
    /// The backing registered for this inode (one per inode while any passthrough open lives).
    backing: Weak<BackingId>,
    /// Live passthrough opens: while any lives, the kernel inode is bound to `backing`.
    passthrough: u32,
    /// `backing` is the RO file's: an open of the RW copy cannot share it.
    ro: bool,
    /// Opens served through the daemon/page cache; passthrough cannot mix with them.
    cached: u32,
    /// An open handle of the inode's RW file (0: none): its attributes are one `fstat` of
    /// that fd instead of a walk of the RW path (each component a round trip on NFS).
    rw_fh: u64,
}

/// State shared by the FUSE workers, the invalidator and the mount guard.
pub(crate) struct Shared {
    pub(crate) ro: Branch,
    pub(crate) rw: Branch,
    pub(crate) table: Arc<dyn TableHandle>,
    pub(crate) inodes: Inodes,
    pub(crate) stats: Arc<RwStats>,
    cfg: FsConfig,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    passthrough_on: AtomicBool,
    /// The kernel skips `opendir` (we answered ENOSYS) and sends `readdir` with fh 0.
    no_opendir: AtomicBool,
    /// Listings for `readdir` without an `opendir` handle, by directory node.
    dir_cache: Mutex<HashMap<u64, Arc<Vec<DirEnt>>>>,
    open_state: Mutex<HashMap<u64, OpenState>>,
    /// Signalled when an inode's last passthrough open is released.
    unbound: Condvar,
    ro_opens: Mutex<HashMap<WPath, RoOpen>>,
    copy_up_lock: Mutex<()>,
    tmp_counter: AtomicU64,
    /// POSIX locks and flocks of RW files, held on the backing files.
    locks: Arc<Locks>,
    /// `fast_open`: the file each inode's handle-less I/O goes to (see `implicit.rs`).
    implicit: Mutex<HashMap<u64, implicit::Implicit>>,
    /// The RW branch is NFS-like: a removed file the daemon holds open is renamed, not
    /// removed (see `implicit.rs`).
    rw_renames_open_files: bool,
    /// Set once mounted when `refresh_attrs` is on.
    pub(crate) refresher: OnceLock<crate::refresh::Refresher>,
    /// Runs once when the FUSE session ends (see `MountGuard::on_session_end`).
    pub(crate) session_end: crate::mount::SessionEnd,
}

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn is_enoent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

fn path_errno(e: PathError) -> Errno {
    match e {
        PathError::TooLong { .. } | PathError::NameTooLong { .. } => Errno::ENAMETOOLONG,
        _ => Errno::EINVAL,
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn dtype_kind(d: u8) -> Option<FileType> {
    Some(match d {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_REG => FileType::RegularFile,
        _ => return None,
    })
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn attr(ino: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            },
            Err(e) => {
                let d = e.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = -(d.subsec_nanos() as i64);
                if nsec < 0 {
                    sec -= 1;
                    nsec += 1_000_000_000;
                }
                libc::timespec {
                    tv_sec: sec,
                    tv_nsec: nsec,
                }
            }
        },
    }
}

/// Whether a user-supplied name may be created: aufs reserves `.wh.` names, and the name's
/// whiteout must fit in `NAME_MAX`.
fn check_new_name(name: &[u8]) -> Result<(), Errno> {
    if name.starts_with(WH_PREFIX) {
        return Err(Errno::EINVAL);
    }
    if name.len() > MAX_USER_NAME {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

fn wh_path(path: &WPath) -> Result<WPath, Errno> {
    let (parent, name) = split(path);
    let mut n = WH_PREFIX.to_vec();
    n.extend_from_slice(name);
    WPath::child_of(parent.as_ref(), &n).map_err(path_errno)
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

impl Shared {
    pub(crate) fn new(
        mut ro: Branch,
        rw: Branch,
        table: Arc<dyn TableHandle>,
        stats: Arc<RwStats>,
        cfg: FsConfig,
    ) -> Shared {
        let dev = |b: &Branch| match b.lstat(None) {
            Ok(st) => Some(st.st_dev),
            Err(e) => {
                tracing::warn!(error = %e, "cannot stat a branch root; inode numbers spill");
                None
            }
        };
        let inodes = Inodes::new(dev(&ro), dev(&rw));
        let rw_renames_open_files = rw.renames_open_files_on_unlink();
        ro.cache_dirs(cfg.ro_dir_fds);
        Shared {
            ro,
            rw,
            table,
            inodes,
            stats,
            cfg,
            handles: Mutex::default(),
            next_fh: AtomicU64::new(1),
            passthrough_on: AtomicBool::new(false),
            no_opendir: AtomicBool::new(false),
            dir_cache: Mutex::default(),
            open_state: Mutex::default(),
            unbound: Condvar::new(),
            ro_opens: Mutex::default(),
            copy_up_lock: Mutex::new(()),
            tmp_counter: AtomicU64::new(0),
            locks: Arc::default(),
            implicit: Mutex::default(),
            rw_renames_open_files,
            refresher: OnceLock::new(),
            session_end: crate::mount::SessionEnd::default(),
        }
    }

    /// Whether the kernel accepted passthrough at init.
    pub(crate) fn passthrough_active(&self) -> bool {
        self.passthrough_on.load(Ordering::Relaxed)
    }

    fn branch(&self, side: Side) -> &Branch {
        match side {
            Side::Ro => &self.ro,
            Side::Rw => &self.rw,
        }
    }

    fn ttl(&self, side: Side) -> Duration {
        match side {
            Side::Ro => self.cfg.ro_ttl,
            Side::Rw => self.cfg.rw_ttl,
        }
    }

    fn resolve(&self, path: Option<&WPath>) -> Resolution {
        path.map_or(Resolution::Ro, |p| self.table.resolve(p))
    }

    /// After a listing of directory `ino`: refresh its attributes if it is RO content.
    fn refresh_listed(&self, ino: INodeNo) {
        if self.refresher.get().is_some()
            && let Ok(p) = self.path_of(ino)
            && self.resolve(p.as_ref()) == Resolution::Ro
        {
            self.refresh(ino.0);
        }
    }

    /// Queues a background attribute refresh of `ino` (see `refresh.rs`).
    fn refresh(&self, ino: u64) {
        if let Some(r) = self.refresher.get() {
            r.request(ino);
        }
    }

    fn path_of(&self, ino: INodeNo) -> Result<Option<WPath>, Errno> {
        self.inodes.path(ino.0).map_err(|()| Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<(Option<WPath>, WPath), Errno> {
        let dir = self.path_of(parent)?;
        let p = WPath::child_of(dir.as_ref(), name.as_bytes()).map_err(path_errno)?;
        Ok((dir, p))
    }

    /// Where the union finds `path`, with its attributes.
    fn locate(&self, path: Option<&WPath>) -> Result<Found, Errno> {
        let Some(p) = path else {
            let st = self.ro.lstat(None).map_err(errno)?;
            return Ok(Found { side: Side::Ro, st });
        };
        let on = |side: Side| -> Result<Found, io::Error> {
            self.branch(side)
                .lstat(Some(p))
                .map(|st| Found { side, st })
        };
        let enoent = |e: io::Error| {
            if is_enoent(&e) {
                Errno::ENOENT
            } else {
                errno(e)
            }
        };
        match self.table.resolve(p) {
            Resolution::Hidden => Err(Errno::ENOENT),
            Resolution::Ro => match on(Side::Ro) {
                // Strict mode: a name the table does not know may still have been written to
                // the RW branch (by another writer, or a node whose mark is still on its way).
                Err(e) if self.cfg.strict && is_enoent(&e) => on(Side::Rw).map_err(enoent),
                r => r.map_err(enoent),
            },
            Resolution::Opaque | Resolution::RwOnly => on(Side::Rw).map_err(enoent),
            Resolution::Rw => match on(Side::Rw) {
                Ok(f) => Ok(f),
                Err(e) if is_enoent(&e) => {
                    // A mark without an RW file: the RW branch is the truth, so its whiteout
                    // (if any) decides, else the RO branch shows through.
                    let wh = wh_path(p)?;
                    if self.rw.lstat(Some(&wh)).is_ok() {
                        return Err(Errno::ENOENT);
                    }
                    on(Side::Ro).map_err(enoent)
                }
                Err(e) => Err(errno(e)),
            },
        }
    }

    /// The inode number of `path`, found as `f` (see `inode.rs`): a directory on both
    /// branches that is not opaque keeps its RO number, so writing into an RO directory (which
    /// creates its RW copy) does not renumber it.
    fn number(&self, path: Option<&WPath>, f: &Found) -> u64 {
        let Some(p) = path else { return ROOT };
        if f.side == Side::Rw
            && is_dir(&f.st)
            && self.table.resolve(p) == Resolution::Rw
            && let Ok(ro) = self.ro.lstat(Some(p))
            && is_dir(&ro)
        {
            return self.inodes.number(Origin::Ro, ro.st_dev, ro.st_ino);
        }
        self.inodes
            .number(f.side.origin(), f.st.st_dev, f.st.st_ino)
    }

    /// The number of a listed name from its backing `d_ino` (the branch root's device is
    /// assumed: `d_ino` of a mount point inside a branch is not its `st_ino` anyway).
    fn listed_number(&self, side: Side, d_ino: u64) -> u64 {
        let dev = self.inodes.branch_dev(side.origin());
        self.inodes
            .number(side.origin(), dev.unwrap_or(u64::MAX), d_ino)
    }

    /// Whether the RO branch has `path` visibly below any RW copy (so removing the path from
    /// the union needs a whiteout).
    /// The path's own entry does not matter (an opaque directory or a file created over a
    /// whiteout still has the RO copy below it); an opaque or hidden ancestor does.
    fn ro_below(&self, path: &WPath, res: Resolution) -> bool {
        if res == Resolution::RwOnly {
            return false;
        }
        let parent = self.resolve(path.parent().as_ref());
        matches!(parent, Resolution::Ro | Resolution::Rw) && self.ro.lstat(Some(path)).is_ok()
    }

    /// The merged listing of a directory, `.`/`..` excluded.
    fn union_list(&self, dir: Option<&WPath>) -> Result<Vec<Listed>, Errno> {
        let res = self.resolve(dir);
        if res == Resolution::Hidden {
            return Err(Errno::ENOENT);
        }
        let children = self.table.children(dir);
        let use_ro = matches!(res, Resolution::Ro | Resolution::Rw);
        let use_rw = !children.is_empty()
            || (self.cfg.strict && res == Resolution::Ro)
            || matches!(
                res,
                Resolution::Rw | Resolution::Opaque | Resolution::RwOnly
            );
        let list = |b: &Branch| match b.list(dir) {
            Ok(v) => Ok(v),
            Err(e) if is_enoent(&e) => Ok(Vec::new()),
            Err(e) => Err(errno(e)),
        };
        let ro = if use_ro { list(&self.ro)? } else { Vec::new() };
        if !use_rw {
            let mut out = Vec::with_capacity(ro.len());
            for e in ro {
                let kind = match dtype_kind(e.dtype) {
                    Some(k) => k,
                    None => self.kind_of(Side::Ro, dir, &e.name)?,
                };
                let number = self.listed_number(Side::Ro, e.ino);
                out.push(Listed {
                    name: e.name,
                    kind,
                    number,
                });
            }
            return Ok(out);
        }
        let rw = list(&self.rw)?;
        let kinds: HashMap<&[u8], Option<Kind>> = children
            .iter()
            .map(|c| (c.name.as_slice(), c.kind))
            .collect();
        let ro_names: HashMap<&[u8], &RawEntry> =
            ro.iter().map(|e| (e.name.as_slice(), e)).collect();
        let rw_names: HashMap<&[u8], u8> =
            rw.iter().map(|e| (e.name.as_slice(), e.dtype)).collect();
        let opaque_here = matches!(res, Resolution::Opaque | Resolution::RwOnly);
        let mut out: BTreeMap<Vec<u8>, (Side, u8, u64)> = BTreeMap::new();
        for e in &rw {
            if e.name.starts_with(WH_PREFIX) {
                continue;
            }
            let show = match kinds.get(e.name.as_slice()) {
                Some(Some(Kind::Rw | Kind::Opaque)) => true,
                Some(Some(Kind::Whiteout)) => false,
                // Strict mode shows RW names the table does not know (see `locate`).
                _ => opaque_here || self.cfg.strict || ro_names.contains_key(e.name.as_slice()),
            };
            if show {
                out.insert(e.name.clone(), (Side::Rw, e.dtype, e.ino));
            }
        }
        for e in &ro {
            if out.contains_key(&e.name) {
                continue;
            }
            let show = match kinds.get(e.name.as_slice()) {
                Some(Some(Kind::Whiteout)) => false,
                Some(Some(Kind::Rw | Kind::Opaque)) => {
                    let mut wh = WH_PREFIX.to_vec();
                    wh.extend_from_slice(&e.name);
                    !rw_names.contains_key(wh.as_slice())
                }
                _ => true,
            };
            if show {
                out.insert(e.name.clone(), (Side::Ro, e.dtype, e.ino));
            }
        }
        let mut v = Vec::with_capacity(out.len());
        for (name, (side, dtype, d_ino)) in out {
            let kind = match dtype_kind(dtype) {
                Some(k) => k,
                None => self.kind_of(side, dir, &name)?,
            };
            // A merged (not opaque) directory keeps its RO number, as `number` does.
            let merged_ro = match ro_names.get(name.as_slice()) {
                Some(r)
                    if side == Side::Rw
                        && kind == FileType::Directory
                        && !matches!(kinds.get(name.as_slice()), Some(Some(Kind::Opaque))) =>
                {
                    let ro_kind = match dtype_kind(r.dtype) {
                        Some(k) => k,
                        None => self.kind_of(Side::Ro, dir, &name)?,
                    };
                    (ro_kind == FileType::Directory).then_some(r.ino)
                }
                _ => None,
            };
            let number = match merged_ro {
                Some(i) => self.listed_number(Side::Ro, i),
                None => self.listed_number(side, d_ino),
            };
            v.push(Listed { name, kind, number });
        }
        Ok(v)
    }

    fn kind_of(&self, side: Side, dir: Option<&WPath>, name: &[u8]) -> Result<FileType, Errno> {
        let p = WPath::child_of(dir, name).map_err(path_errno)?;
        let st = self.branch(side).lstat(Some(&p)).map_err(errno)?;
        Ok(file_type(st.st_mode))
    }

    fn propose(&self, path: &WPath, op: Op) -> Result<(), Errno> {
        self.table.propose(path, op).map_err(|e| {
            tracing::error!(%path, ?op, error = %e, "table proposal failed");
            Errno::EIO
        })
    }

    /// Forgets every live table entry strictly below `dir` (its content moved or vanished).
    fn forget_below(&self, dir: &WPath) -> Result<(), Errno> {
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for c in self.table.children(Some(&d)) {
                let p = d.join(&c.name).map_err(path_errno)?;
                if c.kind.is_some() {
                    self.propose(&p, Op::Forget)?;
                }
                if c.has_children {
                    stack.push(p);
                }
            }
        }
        Ok(())
    }

    /// Makes sure directory `dir` exists on the RW branch, creating missing ancestors with
    /// the RO directories' owner, mode and times (overlayfs's parent copy-up).
    fn prepare_rw_dir(&self, dir: Option<&WPath>) -> Result<(), Errno> {
        let Some(dir) = dir else { return Ok(()) };
        match self.rw.lstat(Some(dir)) {
            Ok(st) if is_dir(&st) => return Ok(()),
            Ok(_) => return Err(Errno::ENOTDIR),
            Err(e) if is_enoent(&e) => {}
            Err(e) => return Err(errno(e)),
        }
        let mut cur: Option<WPath> = None;
        for c in dir.components() {
            let p = WPath::child_of(cur.as_ref(), c).map_err(path_errno)?;
            match self.rw.lstat(Some(&p)) {
                Ok(st) if is_dir(&st) => {}
                Ok(_) => return Err(Errno::ENOTDIR),
                Err(e) if is_enoent(&e) => {
                    let src = self.ro.lstat(Some(&p)).map_err(errno)?;
                    if !is_dir(&src) {
                        return Err(Errno::ENOTDIR);
                    }
                    match self.rw.mkdir(&p, 0o700) {
                        Ok(()) => self.copy_meta(&p, &src)?,
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(errno(e)),
                    }
                }
                Err(e) => return Err(errno(e)),
            }
            cur = Some(p);
        }
        Ok(())
    }

    /// Gives RW `path` the owner, mode and times of `st` (never following symlinks).
    fn copy_meta(&self, path: &WPath, st: &libc::stat) -> Result<(), Errno> {
        self.rw.chown(path, st.st_uid, st.st_gid).map_err(errno)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
            self.rw
                .chmod(Some(path), st.st_mode & 0o7777)
                .map_err(errno)?;
        }
        let t = [
            libc::timespec {
                tv_sec: st.st_atime,
                tv_nsec: st.st_atime_nsec,
            },
            libc::timespec {
                tv_sec: st.st_mtime,
                tv_nsec: st.st_mtime_nsec,
            },
        ];
        self.rw.utimens(path, &t).map_err(errno)
    }

    fn tmp_name(&self, path: &WPath) -> Result<WPath, Errno> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let name = format!(".wh..wh.copyup.{}.{n}", std::process::id());
        WPath::child_of(path.parent().as_ref(), name.as_bytes()).map_err(path_errno)
    }

    /// Copies RO `path` up to the RW branch: data into a hidden temp name, fsync, metadata and
    /// xattrs, rename into place; then marks it `Rw`. A crash leaves at most a hidden temp.
    fn copy_up(&self, path: &WPath) -> Result<(), Errno> {
        let _g = self.copy_up_lock.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(self.table.resolve(path), Resolution::Rw) && self.rw.lstat(Some(path)).is_ok() {
            return Ok(());
        }
        let src = self.ro.lstat(Some(path)).map_err(errno)?;
        self.prepare_rw_dir(path.parent().as_ref())?;
        match src.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                match self.rw.mkdir(path, 0o700) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(errno(e)),
                }
                self.copy_xattrs(path, path)?;
                self.copy_meta(path, &src)?;
            }
            libc::S_IFREG => {
                let tmp = self.tmp_name(path)?;
                let r = self.copy_file(path, &tmp, &src);
                if let Err(e) = r {
                    let _ = self.rw.unlink(&tmp, false);
                    return Err(e);
                }
                if let Err(e) = self.rw.rename(&tmp, path, 0) {
                    let _ = self.rw.unlink(&tmp, false);
                    return Err(errno(e));
                }
                if src.st_nlink > 1 {
                    self.propose(path, Op::MarkRw)?;
                    let r = self.copy_up_links(path, &src);
                    if let Some(ino) = self.inodes.find_path(path) {
                        self.drop_implicit(ino);
                    }
                    return r;
                }
            }
            libc::S_IFLNK => {
                let target = self.ro.readlink(path).map_err(errno)?;
                let tmp = self.tmp_name(path)?;
                self.rw.symlink(&target, &tmp).map_err(errno)?;
                let r = self
                    .copy_meta(&tmp, &src)
                    .and_then(|()| self.rw.rename(&tmp, path, 0).map_err(errno));
                if let Err(e) = r {
                    let _ = self.rw.unlink(&tmp, false);
                    return Err(e);
                }
            }
            _ => {
                let tmp = self.tmp_name(path)?;
                self.rw
                    .mknod(&tmp, src.st_mode & !0o7777 | 0o600, src.st_rdev)
                    .map_err(errno)?;
                let r = self
                    .copy_meta(&tmp, &src)
                    .and_then(|()| self.rw.rename(&tmp, path, 0).map_err(errno));
                if let Err(e) = r {
                    let _ = self.rw.unlink(&tmp, false);
                    return Err(e);
                }
            }
        }
        self.propose(path, Op::MarkRw)?;
        if src.st_mode & libc::S_IFMT != libc::S_IFDIR
            && let Some(ino) = self.inodes.find_path(path)
        {
            self.inodes.mark_copied(ino);
            self.drop_implicit(ino);
        }
        Ok(())
    }

    /// After copying up `path`, an RO file with several links (`src`): every other name of it
    /// the kernel holds as the same inode becomes an RW hard link of the copy, so that all
    /// names of that one inode keep showing one file. Names the kernel never looked up stay
    /// on the RO branch (another file from now on, numbered apart: see `inode.rs`).
    fn copy_up_links(&self, path: &WPath, src: &libc::stat) -> Result<(), Errno> {
        let Some(ino) = self.inodes.find_path(path) else {
            return Ok(());
        };
        self.inodes.mark_copied(ino);
        for q in self.inodes.paths(ino) {
            if q == *path {
                continue;
            }
            let same = matches!(self.locate(Some(&q)), Ok(f)
                if f.side == Side::Ro && f.st.st_dev == src.st_dev && f.st.st_ino == src.st_ino);
            if !same {
                continue;
            }
            // The copy itself succeeded: a name that cannot follow it stays the RO file.
            let r = self
                .prepare_rw_dir(q.parent().as_ref())
                .and_then(|()| self.rw.link(path, &q).map_err(errno))
                .and_then(|()| self.propose(&q, Op::MarkRw));
            if let Err(e) = r {
                tracing::warn!(%path, link = %q, error = ?e, "hard link not copied up");
            }
        }
        Ok(())
    }

    fn copy_file(&self, path: &WPath, tmp: &WPath, src: &libc::stat) -> Result<(), Errno> {
        let from = File::from(
            self.ro
                .open_at(Some(path), libc::O_RDONLY, 0)
                .map_err(errno)?,
        );
        let to = File::from(
            self.rw
                .open_at(
                    Some(tmp),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    0o600,
                )
                .map_err(errno)?,
        );
        let mut off: u64 = 0;
        let len = src.st_size as u64;
        let mut use_cfr = true;
        let mut buf = Vec::new();
        while off < len {
            let want = (len - off).min(1 << 30) as usize;
            if use_cfr {
                let mut oi = off as i64;
                let mut oo = off as i64;
                self.stats.count();
                // SAFETY: valid fds and offset pointers.
                let n = unsafe {
                    libc::copy_file_range(
                        from.as_raw_fd(),
                        &mut oi,
                        to.as_raw_fd(),
                        &mut oo,
                        want,
                        0,
                    )
                };
                if n > 0 {
                    off += n as u64;
                    continue;
                }
                if n == 0 {
                    break;
                }
                let e = last_err();
                match e.raw_os_error() {
                    Some(libc::EXDEV | libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP) => {
                        use_cfr = false;
                        buf.resize(1 << 20, 0);
                        continue;
                    }
                    _ => return Err(errno(e)),
                }
            }
            let n = from
                .read_at(&mut buf[..want.min(1 << 20)], off)
                .map_err(errno)?;
            if n == 0 {
                break;
            }
            self.stats.count();
            to.write_all_at(&buf[..n], off).map_err(errno)?;
            off += n as u64;
        }
        // Xattrs first: setting them may be refused after the mode drops write permission.
        self.copy_fd_xattrs(&from, &to)?;
        // SAFETY (all three): valid fds.
        self.stats.count();
        if unsafe { libc::fchown(to.as_raw_fd(), src.st_uid, src.st_gid) } < 0 {
            return Err(errno(last_err()));
        }
        self.stats.count();
        if unsafe { libc::fchmod(to.as_raw_fd(), src.st_mode & 0o7777) } < 0 {
            return Err(errno(last_err()));
        }
        let t = [
            libc::timespec {
                tv_sec: src.st_atime,
                tv_nsec: src.st_atime_nsec,
            },
            libc::timespec {
                tv_sec: src.st_mtime,
                tv_nsec: src.st_mtime_nsec,
            },
        ];
        self.stats.count();
        if unsafe { libc::futimens(to.as_raw_fd(), t.as_ptr()) } < 0 {
            return Err(errno(last_err()));
        }
        self.stats.count();
        to.sync_all().map_err(errno)?;
        self.rw.close_fd(OwnedFd::from(to));
        Ok(())
    }

    fn copy_fd_xattrs(&self, from: &File, to: &File) -> Result<(), Errno> {
        let names = match flist(from.as_raw_fd()) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
            Err(e) => return Err(errno(e)),
        };
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let Ok(cname) = CString::new(name) else {
                continue;
            };
            let val = match fget(from.as_raw_fd(), &cname) {
                Ok(v) => v,
                Err(_) => continue,
            };
            self.stats.count();
            // SAFETY: valid fd, name and value buffer.
            let r = unsafe {
                libc::fsetxattr(
                    to.as_raw_fd(),
                    cname.as_ptr(),
                    val.as_ptr().cast(),
                    val.len(),
                    0,
                )
            };
            if r < 0 {
                let e = last_err();
                // Some namespaces cannot be set on the RW branch; the data is still copied.
                tracing::warn!(name = %String::from_utf8_lossy(name), error = %e, "xattr not copied up");
            }
        }
        Ok(())
    }

    fn copy_xattrs(&self, from: &WPath, to: &WPath) -> Result<(), Errno> {
        let names = match self.ro.with_proc_path(Some(from), plist) {
            Ok(n) => n,
            Err(_) => return Ok(()),
        };
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let Ok(cname) = CString::new(name) else {
                continue;
            };
            let Ok(val) = self.ro.with_proc_path(Some(from), |p| pget(p, &cname)) else {
                continue;
            };
            let _ = self
                .rw
                .with_proc_path(Some(to), |p| pset(p, &cname, &val, 0));
        }
        Ok(())
    }

    /// Creates the aufs whiteout for `path` on the RW branch.
    fn write_whiteout(&self, path: &WPath) -> Result<(), Errno> {
        self.prepare_rw_dir(path.parent().as_ref())?;
        let wh = wh_path(path)?;
        match self
            .rw
            .open_at(Some(&wh), libc::O_WRONLY | libc::O_CREAT, 0o444)
        {
            Ok(fd) => {
                self.rw.close_fd(fd);
                Ok(())
            }
            Err(e) => Err(errno(e)),
        }
    }

    fn remove_whiteout(&self, path: &WPath) -> Result<(), Errno> {
        match self.rw.unlink(&wh_path(path)?, false) {
            Ok(()) => Ok(()),
            Err(e) if is_enoent(&e) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }

    /// Empties an RW directory of aufs markers so it can be removed or replaced; fails with
    /// ENOTEMPTY if it holds anything else.
    fn clear_markers(&self, dir: &WPath) -> Result<(), Errno> {
        let entries = match self.rw.list(Some(dir)) {
            Ok(v) => v,
            Err(e) if is_enoent(&e) => return Ok(()),
            Err(e) => return Err(errno(e)),
        };
        if entries.iter().any(|e| !e.name.starts_with(WH_PREFIX)) {
            return Err(Errno::ENOTEMPTY);
        }
        for e in entries {
            let p = dir.join(&e.name).map_err(path_errno)?;
            let is_d = e.dtype == libc::DT_DIR;
            self.rw.unlink(&p, is_d).map_err(errno)?;
        }
        Ok(())
    }

    /// Validates a new name in `parent`, checks it is free in the union and prepares the RW
    /// parent. Returns the path and whether it is whited out (the new entry must be opaque).
    fn new_entry(&self, parent: INodeNo, name: &OsStr) -> Result<(WPath, bool), Errno> {
        check_new_name(name.as_bytes())?;
        let (dir, path) = self.child(parent, name)?;
        match self.locate(Some(&path)) {
            Ok(_) => return Err(Errno::EEXIST),
            Err(e) if e == Errno::ENOENT => {}
            Err(e) => return Err(e),
        }
        let over_wh = self.table.resolve(&path) == Resolution::Hidden;
        self.prepare_rw_dir(dir.as_ref())?;
        if over_wh {
            self.remove_whiteout(&path)?;
        }
        Ok((path, over_wh))
    }

    /// The gid a new entry gets: the caller's, or the parent's under a setgid directory.
    fn new_gid(&self, parent: INodeNo, req: &Request) -> Result<(u32, bool), Errno> {
        let dir = self.path_of(parent)?;
        let st = self.locate(dir.as_ref())?.st;
        if st.st_mode & libc::S_ISGID != 0 {
            Ok((st.st_gid, true))
        } else {
            Ok((req.gid(), false))
        }
    }

    /// Records a new RW entry in the table; undoes the RW entry if the table refuses.
    fn commit_new(&self, path: &WPath, over_wh: bool, dir: bool) -> Result<(), Errno> {
        let op = if over_wh { Op::MarkOpaque } else { Op::MarkRw };
        if let Err(e) = self.propose(path, op) {
            let _ = self.rw.unlink(path, dir);
            return Err(e);
        }
        Ok(())
    }

    fn entry_reply(
        &self,
        parent: INodeNo,
        name: &OsStr,
        path: &WPath,
    ) -> Result<(u64, FileAttr, Duration), Errno> {
        let f = self.locate(Some(path))?;
        let ino = self
            .inodes
            .lookup(parent.0, name.as_bytes(), self.number(Some(path), &f));
        Ok((ino, attr(ino, &f.st), self.ttl(f.side)))
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Arc::new(h));
        fh
    }

    /// An open file of a detached inode, for `getattr` of unlinked-but-open files.
    fn open_file_of(&self, ino: u64) -> Option<Arc<Handle>> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|h| {
                matches!(***h, Handle::File { ino: i, .. } | Handle::RoLazy { ino: i, .. } if i == ino)
            })
            .cloned()
            .or_else(|| self.pinned_file(ino))
    }

    /// The flags of an application's open that the RW file's own open keeps. Without
    /// passthrough the kernel sends writes with their offsets (O_APPEND already applied), so
    /// the backing file must not append again.
    fn rw_open_flags(&self, flags: i32) -> i32 {
        let keep = flags
            & (libc::O_APPEND | libc::O_TRUNC | libc::O_DIRECT | libc::O_SYNC | libc::O_DSYNC);
        if self.passthrough_active() {
            keep
        } else {
            keep & !libc::O_APPEND
        }
    }

    /// An open handle of `ino`'s RW file, if one is open (see `OpenState::rw_fh`).
    fn open_rw_handle(&self, ino: u64) -> Option<Arc<Handle>> {
        let fh = self
            .open_state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .map(|s| s.rw_fh)
            .filter(|&fh| fh != 0)?;
        self.handle(FileHandle(fh)).ok()
    }

    fn fstat_handle(&self, h: &Handle) -> Result<libc::stat, Errno> {
        match h {
            Handle::File { file, side, .. } => {
                self.branch(*side).fstat(file.as_raw_fd()).map_err(errno)
            }
            Handle::RoLazy { path, file, .. } => {
                let f = self.ro_file(path, file)?;
                self.ro.fstat(f.as_raw_fd()).map_err(errno)
            }
            Handle::Dir { .. } => Err(Errno::EBADF),
        }
    }

    /// Drops the daemon's remembered listing of directory `ino` (its content changed).
    /// Drops every listing kept for `readdir` without a handle.
    /// Reopens the RO branch from its path and forgets what was learnt about its files (the
    /// passthrough decisions): the RO image was replaced under the mount.
    pub(crate) fn reload_ro(&self) -> io::Result<()> {
        self.ro.reopen()?;
        self.ro_opens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.drop_implicit_ro();
        Ok(())
    }

    pub(crate) fn forget_all_listings(&self) {
        self.dir_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub(crate) fn forget_listing(&self, ino: u64) {
        self.dir_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ino);
    }

    /// The RO file of a lazy handle, opened on first use.
    fn ro_file<'a>(&self, path: &WPath, cell: &'a OnceLock<File>) -> Result<&'a File, Errno> {
        if cell.get().is_none() {
            let fd = self
                .ro
                .open_at(Some(path), libc::O_RDONLY, 0)
                .map_err(errno)?;
            // A racing reader may have set it first; either file is the same RO file.
            let _ = cell.set(File::from(fd));
        }
        cell.get().ok_or(Errno::EIO)
    }

    /// The open states, once `ino` is not bound by passthrough to the other branch's file
    /// than `ro` says (the kernel binds an inode to one backing file at a time); `None` if it
    /// still is after [`UNBIND_WAIT`].
    fn unbound_state(&self, ino: u64, ro: bool) -> Option<MutexGuard<'_, HashMap<u64, OpenState>>> {
        let deadline = Instant::now() + UNBIND_WAIT;
        let mut st = self.open_state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let bound = st
                .get(&ino)
                .is_some_and(|s| s.passthrough > 0 && s.ro != ro);
            if !bound {
                return Some(st);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self
                .unbound
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Answers a read-only open of an RO file: by passthrough for large files (when the kernel
    /// has it), else without touching the branch (see `open_ro_lazy`).
    fn open_ro(&self, ino: u64, path: WPath, reply: ReplyOpen) {
        if !self.passthrough_active() || self.cfg.ro_passthrough_min == u64::MAX {
            self.open_ro_lazy(ino, path, None, reply);
            return;
        }
        let known = self
            .ro_opens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&path)
            .cloned();
        let (mode, fd) = match known {
            Some(m) => (m, None),
            None => {
                // Stat first: only large regular files are opened here (a small one is opened
                // on its first read that misses the page cache, or never).
                let st = match self.ro.lstat(Some(&path)) {
                    Ok(st) => st,
                    Err(e) => {
                        reply.error(errno(e));
                        return;
                    }
                };
                let big = st.st_mode & libc::S_IFMT == libc::S_IFREG
                    && st.st_size as u64 >= self.cfg.ro_passthrough_min;
                let mut fd = None;
                let m = if big {
                    let registered =
                        self.ro
                            .open_at(Some(&path), libc::O_RDONLY, 0)
                            .and_then(|f| {
                                let b = reply.open_backing(&f)?;
                                fd = Some(f);
                                Ok(b)
                            });
                    match registered {
                        Ok(b) => RoOpen::Passthrough(Arc::new(b)),
                        Err(e) => {
                            tracing::debug!(error = %e, "RO passthrough refused; cached reads");
                            RoOpen::Cached
                        }
                    }
                } else {
                    RoOpen::Cached
                };
                let mut c = self.ro_opens.lock().unwrap_or_else(|e| e.into_inner());
                if c.len() >= RO_OPENS_MAX {
                    c.clear();
                }
                c.insert(path.clone(), m.clone());
                (m, fd)
            }
        };
        let RoOpen::Passthrough(b) = mode else {
            self.open_ro_lazy(ino, path, fd, reply);
            return;
        };
        {
            let Some(mut st) = self.unbound_state(ino, true) else {
                // Bound to an RW file (the path went back to RO under an open file).
                reply.error(Errno::ETXTBSY);
                return;
            };
            let s = st.entry(ino).or_default();
            if s.cached > 0 {
                // Opens served from the page cache are live; the kernel cannot mix the two.
                drop(st);
                self.open_ro_lazy(ino, path, fd, reply);
                return;
            }
            s.passthrough += 1;
            s.ro = true;
            s.backing = Arc::downgrade(&b);
        }
        let fh = self.add_handle(Handle::ro_lazy(ino, path, fd, Some(b.clone())));
        reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &b);
    }

    /// Answers a read-only open of an RO file without touching the branch (or with `fd`, the
    /// file already opened).
    fn open_ro_lazy(&self, ino: u64, path: WPath, fd: Option<OwnedFd>, reply: ReplyOpen) {
        self.open_state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ino)
            .or_default()
            .cached += 1;
        let fh = self.add_handle(Handle::ro_lazy(ino, path, fd, None));
        // No FLUSH on close: nothing is buffered, and RO files hold no locks (see lock.rs).
        reply.opened(
            FileHandle(fh),
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
        );
    }

    /// The union listing of directory `ino` as `readdir` entries, `.` and `..` first.
    fn dir_entries(&self, ino: INodeNo) -> Result<Vec<DirEnt>, Errno> {
        let path = self.path_of(ino)?;
        let list = self.union_list(path.as_ref())?;
        let mut entries = Vec::with_capacity(list.len() + 2);
        entries.push(DirEnt {
            name: b".".to_vec(),
            ino: ino.0,
            kind: FileType::Directory,
        });
        entries.push(DirEnt {
            name: b"..".to_vec(),
            ino: ROOT,
            kind: FileType::Directory,
        });
        for l in list {
            // A node the kernel holds may keep an older number (a copied-up file).
            let cino = self.inodes.listed(ino.0, &l.name, l.number);
            entries.push(DirEnt {
                name: l.name,
                ino: cino,
                kind: l.kind,
            });
        }
        Ok(entries)
    }

    /// The listing a `readdir` at `offset` continues: the open handle's, or (without
    /// `opendir`) a fresh one at offset 0 and the remembered one after.
    fn listing(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
    ) -> Result<Arc<Vec<DirEnt>>, Errno> {
        if fh.0 != 0 {
            return match &*self.handle(fh)? {
                Handle::Dir { entries } => Ok(entries.clone()),
                _ => Err(Errno::ENOTDIR),
            };
        }
        if offset != 0
            && let Some(l) = self
                .dir_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&ino.0)
        {
            return Ok(l.clone());
        }
        let l = Arc::new(self.dir_entries(ino)?);
        let mut c = self.dir_cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= DIR_CACHE_MAX {
            c.clear();
        }
        c.insert(ino.0, l.clone());
        Ok(l)
    }

    /// Opens `ino` for a FUSE open/create reply: RO files read-only with kept page cache, RW
    /// files through passthrough when possible.
    fn do_open(&self, ino: u64, fd: OwnedFd, side: Side, reply: OpenReply<'_>) {
        let mut backing = None;
        if side == Side::Rw && self.passthrough_active() {
            let Some(mut st) = self.unbound_state(ino, false) else {
                // Bound to the RO file until its passthrough opens close (FsConfig docs).
                reply.error(Errno::ETXTBSY);
                return;
            };
            let s = st.entry(ino).or_default();
            if s.cached == 0 {
                backing = match s.backing.upgrade().filter(|_| s.passthrough > 0) {
                    Some(b) => Some(b),
                    None => match reply.open_backing(&fd) {
                        Ok(b) => {
                            let b = Arc::new(b);
                            s.backing = Arc::downgrade(&b);
                            s.ro = false;
                            Some(b)
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "passthrough unavailable; serving through the daemon");
                            None
                        }
                    },
                };
            }
            if backing.is_none() {
                s.cached += 1;
            } else {
                s.passthrough += 1;
            }
        } else {
            let mut st = self.open_state.lock().unwrap_or_else(|e| e.into_inner());
            st.entry(ino).or_default().cached += 1;
        }
        let flags = if side == Side::Ro {
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH
        } else {
            FopenFlags::empty()
        };
        let b2 = backing.clone();
        let fh = self.add_handle(Handle::File {
            ino,
            file: File::from(fd),
            side,
            _backing: backing,
        });
        if side == Side::Rw {
            let mut st = self.open_state.lock().unwrap_or_else(|e| e.into_inner());
            st.entry(ino).or_default().rw_fh = fh;
        }
        reply.send(FileHandle(fh), flags, b2.as_deref());
    }

    fn release_handle(&self, fh: FileHandle) {
        let h = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        let (ino, pt) = match h.as_deref() {
            Some(Handle::RoLazy { ino, backing, .. }) => (*ino, backing.is_some()),
            Some(Handle::File { ino, _backing, .. }) => (*ino, _backing.is_some()),
            _ => return,
        };
        let mut st = self.open_state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = st.get_mut(&ino) {
            if s.rw_fh == fh.0 {
                s.rw_fh = 0;
            }
            if pt {
                debug_assert!(s.passthrough > 0);
                s.passthrough = s.passthrough.saturating_sub(1);
                if s.passthrough == 0 {
                    self.unbound.notify_all();
                }
            } else {
                debug_assert!(s.cached > 0);
                s.cached = s.cached.saturating_sub(1);
            }
            if s.cached == 0 && s.passthrough == 0 {
                st.remove(&ino);
            }
        }
    }
}

/// The two open replies (open and create) behind one interface.
enum OpenReply<'a> {
    Open(ReplyOpen),
    Create(ReplyCreate, &'a FileAttr, Duration),
}

impl OpenReply<'_> {
    fn open_backing(&self, fd: &OwnedFd) -> io::Result<BackingId> {
        match self {
            OpenReply::Open(r) => r.open_backing(fd),
            OpenReply::Create(r, ..) => r.open_backing(fd),
        }
    }
    fn error(self, e: Errno) {
        match self {
            OpenReply::Open(r) => r.error(e),
            OpenReply::Create(r, ..) => r.error(e),
        }
    }
    fn send(self, fh: FileHandle, flags: FopenFlags, backing: Option<&BackingId>) {
        match (self, backing) {
            (OpenReply::Open(r), None) => r.opened(fh, flags),
            (OpenReply::Open(r), Some(b)) => r.opened_passthrough(fh, flags, b),
            (OpenReply::Create(r, a, ttl), None) => r.created(&ttl, a, Generation(0), fh, flags),
            (OpenReply::Create(r, a, ttl), Some(b)) => {
                r.created_passthrough(&ttl, a, Generation(0), fh, flags, b)
            }
        }
    }
}

fn flist(fd: RawFd) -> io::Result<Vec<u8>> {
    // SAFETY: a null buffer with size 0 asks for the size.
    let n = unsafe { libc::flistxattr(fd, std::ptr::null_mut(), 0) };
    if n < 0 {
        return Err(last_err());
    }
    let mut buf = vec![0u8; n as usize];
    // SAFETY: buffer and its length.
    let n = unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(last_err());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn fget(fd: RawFd, name: &CString) -> io::Result<Vec<u8>> {
    // SAFETY: size query, then buffer with its length.
    let n = unsafe { libc::fgetxattr(fd, name.as_ptr(), std::ptr::null_mut(), 0) };
    if n < 0 {
        return Err(last_err());
    }
    let mut buf = vec![0u8; n as usize];
    let n = unsafe { libc::fgetxattr(fd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(last_err());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn plist(p: &CString) -> io::Result<Vec<u8>> {
    // SAFETY: size query, then buffer with its length.
    let n = unsafe { libc::listxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
    if n < 0 {
        return Err(last_err());
    }
    let mut buf = vec![0u8; n as usize];
    let n = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(last_err());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn pget(p: &CString, name: &CString) -> io::Result<Vec<u8>> {
    // SAFETY: size query, then buffer with its length.
    let n = unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    if n < 0 {
        return Err(last_err());
    }
    let mut buf = vec![0u8; n as usize];
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(last_err());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn pset(p: &CString, name: &CString, val: &[u8], flags: i32) -> io::Result<()> {
    // SAFETY: valid strings and value buffer.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            val.as_ptr().cast(),
            val.len(),
            flags,
        )
    };
    if r < 0 { Err(last_err()) } else { Ok(()) }
}

/// The FUSE filesystem: a thin adapter from fuser's callbacks to [`Shared`].
pub(crate) struct UnionFs(pub(crate) Arc<Shared>);

impl UnionFs {
    #[allow(clippy::too_many_arguments)] // mirrors fuser's create callback
    fn do_create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) -> Result<(), (Errno, Option<ReplyCreate>)> {
        let s = &self.0;
        let r = (|| {
            let (gid, _) = s.new_gid(parent, req)?;
            let (path, over_wh) = s.new_entry(parent, name)?;
            let acc = flags & libc::O_ACCMODE;
            let keep = s.rw_open_flags(flags);
            let fd =
                s.rw.open_at(
                    Some(&path),
                    acc | keep | libc::O_CREAT | libc::O_EXCL,
                    0o600,
                )
                .map_err(errno)?;
            let perm = mode & !umask & 0o7777;
            // SAFETY: valid fd.
            s.stats.count();
            let ok = unsafe { libc::fchown(fd.as_raw_fd(), req.uid(), gid) } == 0;
            s.stats.count();
            let ok = ok && unsafe { libc::fchmod(fd.as_raw_fd(), perm) } == 0;
            if !ok {
                let e = errno(last_err());
                let _ = s.rw.unlink(&path, false);
                return Err(e);
            }
            s.commit_new(&path, over_wh, false)?;
            let st = s.rw.fstat(fd.as_raw_fd()).map_err(errno)?;
            let number = s.inodes.number(Origin::Rw, st.st_dev, st.st_ino);
            let ino = s.inodes.lookup(parent.0, name.as_bytes(), number);
            Ok((ino, fd, st))
        })();
        match r {
            Ok((ino, fd, st)) => {
                let a = attr(ino, &st);
                s.do_open(
                    ino,
                    fd,
                    Side::Rw,
                    OpenReply::Create(reply, &a, s.cfg.rw_ttl),
                );
                Ok(())
            }
            Err(e) => Err((e, Some(reply))),
        }
    }
}

macro_rules! tri {
    ($reply:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(err) => {
                $reply.error(err);
                return;
            }
        }
    };
}

impl Filesystem for UnionFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let s = &self.0;
        if s.cfg.readdirplus {
            let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        }
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        if s.cfg.fast_open {
            // No close notifications (FsConfig::fast_open): the kernel keeps the locks, and
            // drops cached pages of a file whose mtime it sees change.
            let _ = config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA);
        } else {
            // Locks go to the backing files so that nodes sharing the RW branch exclude each
            // other (lock.rs); without these the kernel would lock per mount only.
            let _ =
                config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS);
        }
        if s.cfg.cache_dirs
            && config
                .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
                .is_ok()
        {
            s.no_opendir.store(true, Ordering::Relaxed);
        }
        if s.cfg.passthrough && !s.cfg.fast_open {
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !ok {
                tracing::info!(
                    "kernel lacks FUSE passthrough; RW files are served through the daemon"
                );
            }
            s.passthrough_on.store(ok, Ordering::Relaxed);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.0.session_end.ended();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _g = enter(OpKind::Lookup);
        let s = &self.0;
        s.stats.served(OpKind::Lookup);
        if name.as_bytes().starts_with(WH_PREFIX) {
            reply.error(Errno::ENOENT);
            return;
        }
        let (_, path) = tri!(reply, s.child(parent, name));
        match s.locate(Some(&path)) {
            Ok(f) => {
                let ino = s
                    .inodes
                    .lookup(parent.0, name.as_bytes(), s.number(Some(&path), &f));
                let ttl = s.ttl(f.side);
                reply.entry_with_ttls(&ttl, &ttl, &attr(ino, &f.st), Generation(0));
            }
            Err(e) => {
                if e == Errno::ENOENT {
                    // A node still named so held a file gone behind the mount's back.
                    s.inodes.detach(parent.0, name.as_bytes());
                }
                // In strict mode a miss can end without a table change (another writer of
                // the RW branch), so it is remembered no longer than RW attributes are.
                let neg = if s.cfg.strict {
                    s.cfg.negative_ttl.min(s.cfg.rw_ttl)
                } else {
                    s.cfg.negative_ttl
                };
                if e == Errno::ENOENT && !neg.is_zero() {
                    // A zero node id is a negative entry the kernel caches for the entry TTL.
                    reply.entry_with_ttls(&Duration::ZERO, &neg, &negative_attr(), Generation(0));
                } else {
                    reply.error(e);
                }
            }
        }
    }

    /// The kernel dropped `nlookup` references: the node may be freed.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.0.inodes.forget(ino.0, nlookup);
        self.0.drop_implicit_if_freed(ino.0);
    }

    // `batch_forget`: fuser's default hands every entry to `forget`.

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _g = enter(OpKind::Getattr);
        let s = &self.0;
        s.stats.served(OpKind::Getattr);
        if let Some(fh) = fh
            && let Ok(h) = s.handle(fh)
        {
            let side = match &*h {
                Handle::File { side, .. } => Some(*side),
                Handle::RoLazy { .. } => Some(Side::Ro),
                Handle::Dir { .. } => None,
            };
            if let Some(side) = side {
                let st = tri!(reply, s.fstat_handle(&h));
                reply.attr(&s.ttl(side), &attr(ino.0, &st));
                return;
            }
        }
        match s.path_of(ino) {
            Ok(path) => {
                if s.resolve(path.as_ref()) == Resolution::Rw
                    && let Some(h) = s.open_rw_handle(ino.0)
                    && let Ok(st) = s.fstat_handle(&h)
                {
                    reply.attr(&s.ttl(Side::Rw), &attr(ino.0, &st));
                    return;
                }
                let f = tri!(reply, s.locate(path.as_ref()));
                reply.attr(&s.ttl(f.side), &attr(ino.0, &f.st));
            }
            Err(e) => match s.open_file_of(ino.0) {
                Some(h) => {
                    let st = tri!(reply, s.fstat_handle(&h));
                    reply.attr(&Duration::ZERO, &attr(ino.0, &st));
                }
                None => reply.error(e),
            },
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _g = enter(OpKind::Setattr);
        let s = &self.0;
        let fh_file = fh
            .and_then(|fh| s.handle(fh).ok())
            .filter(|h| matches!(&**h, Handle::File { side: Side::Rw, .. }));
        let path = match s.path_of(ino) {
            Ok(p) => p,
            Err(e) => {
                // Unlinked but open: change the open file itself.
                let Some(h) = fh_file.or_else(|| s.open_file_of(ino.0)) else {
                    reply.error(e);
                    return;
                };
                let Handle::File { file, .. } = &*h else {
                    reply.error(Errno::EBADF);
                    return;
                };
                let fd = file.as_raw_fd();
                // SAFETY (all): valid fd and arguments.
                unsafe {
                    if let Some(m) = mode
                        && libc::fchmod(fd, m & 0o7777) < 0
                    {
                        reply.error(errno(last_err()));
                        return;
                    }
                    if (uid.is_some() || gid.is_some())
                        && libc::fchown(fd, uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX)) < 0
                    {
                        reply.error(errno(last_err()));
                        return;
                    }
                    if let Some(sz) = size
                        && libc::ftruncate(fd, sz as i64) < 0
                    {
                        reply.error(errno(last_err()));
                        return;
                    }
                    if atime.is_some() || mtime.is_some() {
                        let t = [timespec(atime), timespec(mtime)];
                        if libc::futimens(fd, t.as_ptr()) < 0 {
                            reply.error(errno(last_err()));
                            return;
                        }
                    }
                }
                let st = tri!(reply, s.fstat_handle(&h));
                reply.attr(&Duration::ZERO, &attr(ino.0, &st));
                return;
            }
        };
        let Some(p) = path else {
            // The root's attributes come from the RO branch and are not changed.
            reply.error(Errno::EPERM);
            return;
        };
        let f = tri!(reply, s.locate(Some(&p)));
        if f.side == Side::Ro {
            tri!(reply, s.copy_up(&p));
        }
        if let Some(m) = mode {
            tri!(reply, s.rw.chmod(Some(&p), m & 0o7777).map_err(errno));
        }
        if uid.is_some() || gid.is_some() {
            tri!(
                reply,
                s.rw.chown(&p, uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX))
                    .map_err(errno)
            );
        }
        if let Some(sz) = size {
            let r = match &fh_file {
                Some(h) => match &**h {
                    Handle::File { file, .. } => file.set_len(sz).map_err(errno),
                    Handle::Dir { .. } | Handle::RoLazy { .. } => Err(Errno::EBADF),
                },
                None => {
                    s.rw.open_at(Some(&p), libc::O_WRONLY, 0)
                        .map_err(errno)
                        .and_then(|fd| {
                            s.stats.count();
                            let r = File::from(fd).set_len(sz).map_err(errno);
                            s.stats.count();
                            r
                        })
                }
            };
            tri!(reply, r);
        }
        if atime.is_some() || mtime.is_some() {
            let t = [timespec(atime), timespec(mtime)];
            tri!(reply, s.rw.utimens(&p, &t).map_err(errno));
        }
        let st = tri!(reply, s.rw.lstat(Some(&p)).map_err(errno));
        reply.attr(&s.cfg.rw_ttl, &attr(ino.0, &st));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _g = enter(OpKind::Readlink);
        let s = &self.0;
        let path = tri!(reply, s.path_of(ino));
        let Some(p) = path else {
            reply.error(Errno::EINVAL);
            return;
        };
        let f = tri!(reply, s.locate(Some(&p)));
        let t = tri!(reply, s.branch(f.side).readlink(&p).map_err(errno));
        reply.data(&t);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _g = enter(OpKind::Create);
        let s = &self.0;
        let (gid, _) = tri!(reply, s.new_gid(parent, req));
        let (path, over_wh) = tri!(reply, s.new_entry(parent, name));
        let perm = mode & !umask & 0o7777;
        tri!(
            reply,
            s.rw.mknod(&path, (mode & libc::S_IFMT) | 0o600, rdev as u64)
                .map_err(errno)
        );
        let meta =
            s.rw.chown(&path, req.uid(), gid)
                .and_then(|()| s.rw.chmod(Some(&path), perm));
        if let Err(e) = meta {
            let _ = s.rw.unlink(&path, false);
            reply.error(errno(e));
            return;
        }
        tri!(reply, s.commit_new(&path, over_wh, false));
        let (ino, a, ttl) = tri!(reply, s.entry_reply(parent, name, &path));
        debug_assert_eq!(a.ino.0, ino);
        reply.entry_with_ttls(&ttl, &ttl, &a, Generation(0));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _g = enter(OpKind::Create);
        let s = &self.0;
        let (gid, sgid) = tri!(reply, s.new_gid(parent, req));
        let (path, over_wh) = tri!(reply, s.new_entry(parent, name));
        let mut perm = mode & !umask & 0o7777;
        if sgid {
            perm |= libc::S_ISGID;
        }
        tri!(reply, s.rw.mkdir(&path, 0o700).map_err(errno));
        let mut meta =
            s.rw.chown(&path, req.uid(), gid)
                .and_then(|()| s.rw.chmod(Some(&path), perm));
        if meta.is_ok() && over_wh {
            // aufs's marker keeps the RW branch self-describing for `wcfs rebuild`.
            meta = path
                .join(WH_OPAQUE)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
                .and_then(|m| {
                    s.rw.open_at(Some(&m), libc::O_WRONLY | libc::O_CREAT, 0o444)
                        .map(|fd| s.rw.close_fd(fd))
                });
        }
        if let Err(e) = meta {
            let _ = s.clear_markers(&path);
            let _ = s.rw.unlink(&path, true);
            reply.error(errno(e));
            return;
        }
        if over_wh && let Err(e) = s.forget_below(&path) {
            reply.error(e);
            return;
        }
        tri!(reply, s.commit_new(&path, over_wh, true));
        let (_, a, ttl) = tri!(reply, s.entry_reply(parent, name, &path));
        reply.entry_with_ttls(&ttl, &ttl, &a, Generation(0));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _g = enter(OpKind::Remove);
        let s = &self.0;
        let (_, path) = tri!(reply, s.child(parent, name));
        let f = tri!(reply, s.locate(Some(&path)));
        if is_dir(&f.st) {
            reply.error(Errno::EISDIR);
            return;
        }
        s.pin_before_removal(&path, &f);
        let res = s.table.resolve(&path);
        let below = f.side == Side::Ro || s.ro_below(&path, res);
        if below {
            // Whiteout first: a crash between the two steps must not resurrect the RO copy.
            tri!(reply, s.write_whiteout(&path));
        }
        if f.side == Side::Rw {
            tri!(reply, s.rw.unlink(&path, false).map_err(errno));
        }
        if below {
            tri!(reply, s.propose(&path, Op::Whiteout));
        } else if matches!(res, Resolution::Rw | Resolution::Opaque) {
            tri!(reply, s.propose(&path, Op::Forget));
        }
        let gone = s.inodes.find(parent.0, name.as_bytes());
        s.inodes.detach(parent.0, name.as_bytes());
        if let Some(ino) = gone {
            s.drop_implicit_if_freed(ino);
        }
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _g = enter(OpKind::Remove);
        let s = &self.0;
        let (_, path) = tri!(reply, s.child(parent, name));
        let f = tri!(reply, s.locate(Some(&path)));
        if !is_dir(&f.st) {
            reply.error(Errno::ENOTDIR);
            return;
        }
        if !tri!(reply, s.union_list(Some(&path))).is_empty() {
            reply.error(Errno::ENOTEMPTY);
            return;
        }
        let res = s.table.resolve(&path);
        let below = f.side == Side::Ro || s.ro_below(&path, res);
        let rw_present = f.side == Side::Rw
            || (!s.table.children(Some(&path)).is_empty() && s.rw.lstat(Some(&path)).is_ok());
        if below {
            tri!(reply, s.write_whiteout(&path));
        }
        if rw_present {
            tri!(reply, s.clear_markers(&path));
            tri!(reply, s.rw.unlink(&path, true).map_err(errno));
        }
        tri!(reply, s.forget_below(&path));
        if below {
            tri!(reply, s.propose(&path, Op::Whiteout));
        } else if matches!(res, Resolution::Rw | Resolution::Opaque) {
            tri!(reply, s.propose(&path, Op::Forget));
        }
        s.inodes.detach(parent.0, name.as_bytes());
        reply.ok();
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let _g = enter(OpKind::Create);
        let s = &self.0;
        let (gid, _) = tri!(reply, s.new_gid(parent, req));
        let (path, over_wh) = tri!(reply, s.new_entry(parent, link_name));
        tri!(
            reply,
            s.rw.symlink(target.as_os_str().as_bytes(), &path)
                .map_err(errno)
        );
        if let Err(e) = s.rw.chown(&path, req.uid(), gid) {
            let _ = s.rw.unlink(&path, false);
            reply.error(errno(e));
            return;
        }
        tri!(reply, s.commit_new(&path, over_wh, false));
        let (_, a, ttl) = tri!(reply, s.entry_reply(parent, link_name, &path));
        reply.entry_with_ttls(&ttl, &ttl, &a, Generation(0));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _g = enter(OpKind::Rename);
        let s = &self.0;
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            reply.error(Errno::EINVAL);
            return;
        }
        tri!(reply, check_new_name(newname.as_bytes()));
        let (_, src) = tri!(reply, s.child(parent, name));
        let (dst_dir, dst) = tri!(reply, s.child(newparent, newname));
        let fs = tri!(reply, s.locate(Some(&src)));
        let fd = match s.locate(Some(&dst)) {
            Ok(f) => Some(f),
            Err(e) if e == Errno::ENOENT => None,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        if src == dst {
            reply.ok();
            return;
        }
        let src_dir = is_dir(&fs.st);
        if src_dir && dst.starts_with(&src) {
            reply.error(Errno::EINVAL);
            return;
        }
        if let Some(d) = &fd {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                reply.error(Errno::EEXIST);
                return;
            }
            match (src_dir, is_dir(&d.st)) {
                (true, false) => {
                    reply.error(Errno::ENOTDIR);
                    return;
                }
                (false, true) => {
                    reply.error(Errno::EISDIR);
                    return;
                }
                (true, true) => {
                    let empty = tri!(reply, s.union_list(Some(&dst))).is_empty();
                    if !empty {
                        reply.error(Errno::ENOTEMPTY);
                        return;
                    }
                }
                (false, false) => {}
            }
        }
        let src_res = s.table.resolve(&src);
        let src_below = fs.side == Side::Ro || s.ro_below(&src, src_res);
        if src_dir && src_below && matches!(src_res, Resolution::Ro | Resolution::Rw) {
            // Like overlayfs without redirect_dir: a directory with RO content cannot move
            // atomically; `mv` falls back to copy + delete.
            reply.error(Errno::EXDEV);
            return;
        }
        if fs.side == Side::Ro {
            tri!(reply, s.copy_up(&src));
        }
        if let Some(d) = &fd {
            s.pin_before_removal(&dst, d);
        }
        let dst_res = s.table.resolve(&dst);
        let dst_over_wh = dst_res == Resolution::Hidden;
        tri!(reply, s.prepare_rw_dir(dst_dir.as_ref()));
        if let Some(d) = &fd
            && is_dir(&d.st)
            && d.side == Side::Rw
        {
            tri!(reply, s.clear_markers(&dst));
        }
        if dst_over_wh {
            tri!(reply, s.remove_whiteout(&dst));
        }
        if src_dir {
            tri!(reply, s.forget_below(&dst));
        }
        tri!(reply, s.rw.rename(&src, &dst, 0).map_err(errno));
        if src_dir {
            // The table makes a moved directory opaque (it hides whatever the RO branch has
            // at `dst`); aufs's marker says so on the RW branch too, for `wcfs rebuild`. The
            // rename is done: a missing marker only costs a rebuild's accuracy, so warn.
            let marker = dst.join(WH_OPAQUE).map_err(|_| Errno::EINVAL);
            let r = marker.and_then(|m| {
                s.rw.open_at(Some(&m), libc::O_WRONLY | libc::O_CREAT, 0o444)
                    .map(|fd| s.rw.close_fd(fd))
                    .map_err(errno)
            });
            if let Err(e) = r {
                tracing::warn!(path = %dst, error = ?e, "opaque marker not written");
            }
        }
        let dst_op = if src_dir || dst_over_wh {
            Op::MarkOpaque
        } else {
            Op::MarkRw
        };
        tri!(reply, s.propose(&dst, dst_op));
        if src_below {
            tri!(reply, s.write_whiteout(&src));
            tri!(reply, s.propose(&src, Op::Whiteout));
        } else if matches!(src_res, Resolution::Rw | Resolution::Opaque) {
            tri!(reply, s.propose(&src, Op::Forget));
        }
        if src_dir {
            tri!(reply, s.forget_below(&src));
        }
        let gone = s.inodes.find(newparent.0, newname.as_bytes());
        s.inodes
            .rename(parent.0, name.as_bytes(), newparent.0, newname.as_bytes());
        if let Some(ino) = gone {
            s.drop_implicit_if_freed(ino);
        }
        reply.ok();
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _g = enter(OpKind::Create);
        let s = &self.0;
        let Some(src) = tri!(reply, s.path_of(ino)) else {
            reply.error(Errno::EPERM);
            return;
        };
        let f = tri!(reply, s.locate(Some(&src)));
        if is_dir(&f.st) {
            reply.error(Errno::EPERM);
            return;
        }
        if f.side == Side::Ro {
            tri!(reply, s.copy_up(&src));
        }
        let (path, over_wh) = tri!(reply, s.new_entry(newparent, newname));
        tri!(reply, s.rw.link(&src, &path).map_err(errno));
        tri!(reply, s.commit_new(&path, over_wh, false));
        // The new name is the same file: it joins the source's node (whose number may still
        // be the RO one if the source was just copied up).
        let st = tri!(reply, s.rw.lstat(Some(&path)).map_err(errno));
        let n = s.inodes.link(ino.0, newparent.0, newname.as_bytes());
        let ttl = s.ttl(Side::Rw);
        reply.entry_with_ttls(&ttl, &ttl, &attr(n, &st), Generation(0));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _g = enter(OpKind::Open);
        let s = &self.0;
        s.stats.served(OpKind::Open);
        if s.cfg.fast_open {
            // The kernel then completes this open and all later ones by itself.
            reply.error(Errno::ENOSYS);
            return;
        }
        let flags = flags.0;
        let path = tri!(reply, s.path_of(ino));
        if flags & libc::O_ACCMODE == libc::O_RDONLY
            && flags & libc::O_TRUNC == 0
            && let Some(p) = &path
            && s.table.resolve(p) == Resolution::Ro
            && (!s.cfg.strict || crate::inode::is_ro_number(ino.0))
        {
            // The kernel only opens what it looked up, and never a directory here; an RO path
            // cannot have changed since (the RO branch is immutable under the mount).
            s.open_ro(ino.0, p.clone(), reply);
            return;
        }
        let acc = flags & libc::O_ACCMODE;
        if let Some(p) = &path
            && s.table.resolve(p) == Resolution::Rw
        {
            // The table says the file is on RW: open it there at once (one walk of the RW
            // path instead of a stat's and then the open's). The kernel sends OPEN for
            // regular files only; anything else (a directory, a symlink, gone) falls back.
            let keep = s.rw_open_flags(flags);
            if let Ok(fd) = s.rw.open_at(Some(p), acc | keep | libc::O_NOFOLLOW, 0) {
                match s.rw.fstat(fd.as_raw_fd()) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                        s.do_open(ino.0, fd, Side::Rw, OpenReply::Open(reply));
                        return;
                    }
                    _ => s.rw.close_fd(fd),
                }
            }
        }
        let f = tri!(reply, s.locate(path.as_ref()));
        if is_dir(&f.st) {
            reply.error(Errno::EISDIR);
            return;
        }
        let write = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let mut side = f.side;
        if side == Side::Ro && write {
            let Some(p) = &path else {
                reply.error(Errno::EISDIR);
                return;
            };
            if s.unbound_state(ino.0, false).is_none() {
                // See FsConfig::ro_passthrough_min.
                reply.error(Errno::ETXTBSY);
                return;
            }
            tri!(reply, s.copy_up(p));
            side = Side::Rw;
        }
        let keep = s.rw_open_flags(flags);
        let fl = if side == Side::Ro {
            libc::O_RDONLY
        } else {
            let fifo = file_type(f.st.st_mode) == FileType::NamedPipe;
            acc | keep | if fifo { libc::O_NONBLOCK } else { 0 }
        };
        let fd = tri!(
            reply,
            s.branch(side).open_at(path.as_ref(), fl, 0).map_err(errno)
        );
        s.do_open(ino.0, fd, side, OpenReply::Open(reply));
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _g = enter(OpKind::Read);
        let s = &self.0;
        s.stats.served(OpKind::Read);
        let h = tri!(reply, s.io_handle(ino.0, fh, false));
        let (file, side) = match &*h {
            Handle::File { file, side, .. } => (file, *side),
            Handle::RoLazy { path, file, .. } => (tri!(reply, s.ro_file(path, file)), Side::Ro),
            Handle::Dir { .. } => {
                reply.error(Errno::EISDIR);
                return;
            }
        };
        let mut buf = vec![0u8; size as usize];
        let mut n = 0;
        while n < buf.len() {
            if side == Side::Rw {
                s.stats.count();
            }
            match file.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    reply.error(errno(e));
                    return;
                }
            }
        }
        reply.data(&buf[..n]);
        if side == Side::Ro {
            s.refresh(ino.0);
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _g = enter(OpKind::Write);
        let s = &self.0;
        let h = tri!(reply, s.io_handle(ino.0, fh, true));
        let Handle::File { file, side, .. } = &*h else {
            reply.error(Errno::EISDIR);
            return;
        };
        if *side != Side::Rw {
            reply.error(Errno::EBADF);
            return;
        }
        s.stats.count();
        tri!(reply, file.write_all_at(data, offset).map_err(errno));
        if fh.0 == 0 {
            // No close will flush it (the daemon never sees one, and keeps the file): start
            // the writeback now so that other nodes reading the shared branch (NFS serves
            // written, uncommitted data) see it about when a close would have shown it.
            // Does not wait; errors show at the next fsync. (O_SYNC/O_DSYNC writers need
            // nothing here: the kernel follows their writes with an FSYNC.)
            s.stats.count();
            // SAFETY: valid fd; plain integer arguments.
            unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    offset as i64,
                    data.len() as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if self.0.cfg.fast_open {
            // No locks held for the kernel, nothing buffered: no close needs the daemon.
            reply.error(Errno::ENOSYS);
            return;
        }
        // Nothing is buffered in the daemon; a close releases the owner's POSIX locks. RO
        // opens are FOPEN_NOFLUSH, so only RW files pay this round trip.
        self.0.locks.drop_owner(ino.0, lock_owner.0);
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _g = enter(OpKind::Sync);
        if let Some(o) = lock_owner {
            // The last close of a file with a flock.
            self.0.locks.drop_owner(ino.0, o.0);
        }
        self.0.locks.drop_handle(ino.0, fh.0);
        self.0.release_handle(fh);
        reply.ok();
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        let _g = enter(OpKind::Other);
        let s = &self.0;
        let h = tri!(reply, s.handle(fh));
        let Handle::File {
            file,
            side: Side::Rw,
            ..
        } = &*h
        else {
            // RO files can hold no conflicting lock (lock.rs).
            reply.locked(start, end, libc::F_UNLCK, 0);
            return;
        };
        let c = tri!(
            reply,
            s.locks
                .test(ino.0, lock_owner.0, file, start, end, typ, &s.stats)
                .map_err(errno)
        );
        match c {
            // The holder may be on another node: no pid to report.
            Some(c) => reply.locked(c.start, c.end, c.typ, 0),
            None => reply.locked(start, end, libc::F_UNLCK, 0),
        }
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let _g = enter(OpKind::Other);
        let s = &self.0;
        let h = tri!(reply, s.handle(fh));
        let Handle::File {
            file,
            side: Side::Rw,
            ..
        } = &*h
        else {
            // The kernel refuses write locks on read-only opens, and nothing can conflict
            // with a read lock of an RO file (lock.rs).
            if typ == libc::F_WRLCK {
                reply.error(Errno::EBADF);
            } else {
                reply.ok();
            }
            return;
        };
        if sleep {
            s.locks.set_wait(
                ino.0,
                lock_owner.0,
                fh.0,
                file,
                start,
                end,
                typ,
                &s.stats,
                move |r| match r {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(errno(e)),
                },
            );
            return;
        }
        tri!(
            reply,
            s.locks
                .set(ino.0, lock_owner.0, fh.0, file, start, end, typ, &s.stats)
                .map_err(errno)
        );
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _g = enter(OpKind::Sync);
        let s = &self.0;
        let h = tri!(reply, s.io_handle(ino.0, fh, false));
        if let Handle::File {
            file,
            side: Side::Rw,
            ..
        } = &*h
        {
            s.stats.count();
            let r = if datasync {
                file.sync_data()
            } else {
                file.sync_all()
            };
            tri!(reply, r.map_err(errno));
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _g = enter(OpKind::Readdir);
        let s = &self.0;
        if s.no_opendir.load(Ordering::Relaxed) {
            // The kernel then never opens directories again: readdir comes with fh 0 and the
            // kernel caches listings (FOPEN_CACHE_DIR) until a change in the directory or an
            // invalidation of its inode.
            reply.error(Errno::ENOSYS);
            return;
        }
        let entries = Arc::new(tri!(reply, s.dir_entries(ino)));
        let fh = s.add_handle(Handle::Dir { entries });
        let flags = if s.cfg.cache_dirs {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        reply.opened(FileHandle(fh), flags);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _g = enter(OpKind::Readdir);
        self.0.stats.served(OpKind::Readdir);
        let entries = tri!(reply, self.0.listing(ino, fh, offset));
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(e.ino),
                i as u64 + 1,
                e.kind,
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        reply.ok();
        self.0.refresh_listed(ino);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _g = enter(OpKind::Readdir);
        let s = &self.0;
        s.stats.served(OpKind::Readdir);
        let entries = tri!(reply, s.listing(ino, fh, offset));
        let dir = tri!(reply, s.path_of(ino));
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let dot = e.name == b"." || e.name == b"..";
            let (st, ttl, cino) = if dot {
                // The kernel does not instantiate these (nor count them as lookups); any
                // directory attributes will do.
                let f = tri!(reply, s.locate(dir.as_ref()));
                (f.st, Duration::ZERO, e.ino)
            } else {
                let Ok(p) = WPath::child_of(dir.as_ref(), &e.name) else {
                    continue;
                };
                match s.locate(Some(&p)) {
                    // Every entry handed over is a kernel reference (the listing's number may
                    // belong to a node freed since it was built, so take the live one).
                    Ok(f) => (
                        f.st,
                        s.ttl(f.side),
                        s.inodes.lookup(ino.0, &e.name, s.number(Some(&p), &f)),
                    ),
                    Err(_) => continue,
                }
            };
            if reply.add(
                INodeNo(cino),
                i as u64 + 1,
                OsStr::from_bytes(&e.name),
                &ttl,
                &attr(cino, &st),
                Generation(0),
            ) {
                if !dot {
                    // Not sent: the kernel will not forget it.
                    s.inodes.forget(cino, 1);
                }
                break;
            }
        }
        reply.ok();
        s.refresh_listed(ino);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        if fh.0 != 0 {
            self.0.release_handle(fh);
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _g = enter(OpKind::Statfs);
        // Free space is the RW branch's: that is where writes go.
        let v = tri!(reply, self.0.rw.statvfs().map_err(errno));
        reply.statfs(
            v.f_blocks,
            v.f_bfree,
            v.f_bavail,
            v.f_files,
            v.f_ffree,
            v.f_bsize as u32,
            v.f_namemax.min(MAX_USER_NAME as u64) as u32,
            v.f_frsize as u32,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _g = enter(OpKind::Xattr);
        let s = &self.0;
        let Some(p) = tri!(reply, s.path_of(ino)) else {
            reply.error(Errno::EPERM);
            return;
        };
        let f = tri!(reply, s.locate(Some(&p)));
        if f.side == Side::Ro {
            tri!(reply, s.copy_up(&p));
        }
        let n = tri!(
            reply,
            CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
        );
        tri!(
            reply,
            s.rw.with_proc_path(Some(&p), |pp| pset(pp, &n, value, flags))
                .map_err(errno)
        );
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _g = enter(OpKind::Xattr);
        let s = &self.0;
        let path = tri!(reply, s.path_of(ino));
        let f = tri!(reply, s.locate(path.as_ref()));
        let n = tri!(
            reply,
            CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
        );
        let v = match s
            .branch(f.side)
            .with_proc_path(path.as_ref(), |pp| pget(pp, &n))
        {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
                reply.error(Errno::ENODATA);
                return;
            }
            Err(e) => {
                reply.error(errno(e));
                return;
            }
        };
        if size == 0 {
            reply.size(v.len() as u32);
        } else if v.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(&v);
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _g = enter(OpKind::Xattr);
        let s = &self.0;
        let path = tri!(reply, s.path_of(ino));
        let f = tri!(reply, s.locate(path.as_ref()));
        let v = match s.branch(f.side).with_proc_path(path.as_ref(), plist) {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
            Err(e) => {
                reply.error(errno(e));
                return;
            }
        };
        if size == 0 {
            reply.size(v.len() as u32);
        } else if v.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(&v);
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _g = enter(OpKind::Xattr);
        let s = &self.0;
        let Some(p) = tri!(reply, s.path_of(ino)) else {
            reply.error(Errno::EPERM);
            return;
        };
        let f = tri!(reply, s.locate(Some(&p)));
        if f.side == Side::Ro {
            tri!(reply, s.copy_up(&p));
        }
        let n = tri!(
            reply,
            CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
        );
        tri!(
            reply,
            s.rw.with_proc_path(Some(&p), |pp| {
                // SAFETY: valid strings.
                if unsafe { libc::removexattr(pp.as_ptr(), n.as_ptr()) } < 0 {
                    Err(last_err())
                } else {
                    Ok(())
                }
            })
            .map_err(errno)
        );
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _g = enter(OpKind::Create);
        if let Err((e, Some(r))) = self.do_create(req, parent, name, mode, umask, flags, reply) {
            r.error(e);
        }
    }
}
