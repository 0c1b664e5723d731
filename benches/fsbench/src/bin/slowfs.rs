//! slowfs: a FUSE passthrough of one directory that sleeps on every metadata request and
//! counts requests per operation. It models an NFS RW branch on a machine that has no NFS
//! client (see DESIGN.md, "What this machine's kernel has").
//!
//! Usage: `slowfs [--delay-us N] [--ttl-ms N] [--threads N] SOURCE MOUNTPOINT`
//!
//! - Every metadata request (lookup, getattr, setattr, readlink, mknod, mkdir, unlink, rmdir,
//!   symlink, rename, link, open, opendir, readdir, statfs, access, create, fsync) sleeps
//!   `--delay-us` (default 500 µs) before it is answered: one NFS round trip. Data requests
//!   (read, write) and close-side requests (flush, release, releasedir, forget) are counted but
//!   not delayed.
//! - Entry and attribute TTLs default to 0, so the kernel asks again every time (NFS with
//!   `noac,lookupcache=none`: the conservative model of a shared branch other nodes write).
//! - Counters: the virtual file `.slowfs-stats` at the mount root (not listed, not counted)
//!   reads as `op count` lines plus `metadata N` and `total N`; they are also printed to stderr
//!   on exit. Reading it is synchronous, so a benchmark takes exact before/after differences.
//!
//! It runs in the foreground until unmounted (`umount MOUNTPOINT`) or sent SIGINT/SIGTERM.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, Session,
    SessionACL, TimeOrNow, WriteFlags,
};

/// The counted operations, in report order. The first `DELAYED` are metadata requests.
const OPS: [&str; 24] = [
    "lookup",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "opendir",
    "readdir",
    "statfs",
    "access",
    "create",
    "fsync",
    // Not delayed:
    "read",
    "write",
    "flush",
    "release",
    "releasedir",
    "forget",
];
const DELAYED: usize = 18;

fn op_index(name: &str) -> usize {
    OPS.iter().position(|o| *o == name).unwrap_or(OPS.len() - 1)
}

const STATS_NAME: &[u8] = b".slowfs-stats";
/// Node id of the virtual stats file; far above any id the counter hands out.
const STATS_INO: u64 = 1 << 62;
/// File handle of an open stats file (its text is generated per read).
const STATS_FH: u64 = u64::MAX;

/// A directory's entries as read at opendir: name, inode number, type.
type Listing = Vec<(Vec<u8>, u64, FileType)>;

#[derive(Default)]
struct Inodes {
    by_ino: HashMap<u64, PathBuf>,
    by_path: HashMap<PathBuf, u64>,
    next: u64,
}

struct Slow {
    root: PathBuf,
    delay: Duration,
    ttl: Duration,
    counts: [AtomicU64; OPS.len()],
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Arc<File>>>,
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    next_fh: AtomicU64,
}

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn ftype(m: u32) -> FileType {
    match m & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn ts(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH
    }
}

fn attr(ino: u64, m: &std::fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: ts(m.atime(), m.atime_nsec()),
        mtime: ts(m.mtime(), m.mtime_nsec()),
        ctime: ts(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: ftype(m.mode()),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
        flags: 0,
    }
}

fn stats_attr(len: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(STATS_INO),
        size: len,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0o444,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn cpath(p: &Path) -> Result<CString, Errno> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn tspec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            }
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

impl Slow {
    /// Counts `op`, and sleeps if it is a metadata request.
    fn hit(&self, op: &str) {
        let i = op_index(op);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        if i < DELAYED && !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
    }

    fn stats_text(&self) -> Vec<u8> {
        let mut s = String::new();
        let mut meta = 0;
        let mut total = 0;
        for (i, op) in OPS.iter().enumerate() {
            let n = self.counts[i].load(Ordering::Relaxed);
            if i < DELAYED {
                meta += n;
            }
            total += n;
            s.push_str(&format!("{op} {n}\n"));
        }
        s.push_str(&format!("metadata {meta}\ntotal {total}\n"));
        s.into_bytes()
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        let g = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        g.by_ino.get(&ino.0).cloned().ok_or(Errno::ESTALE)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    fn ino_of(&self, p: &Path) -> u64 {
        let mut g = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = g.by_path.get(p) {
            return i;
        }
        g.next += 1;
        let i = g.next;
        g.by_ino.insert(i, p.to_path_buf());
        g.by_path.insert(p.to_path_buf(), i);
        i
    }

    fn forget_path(&self, p: &Path) {
        let mut g = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        g.by_path.remove(p);
    }

    fn moved(&self, from: &Path, to: &Path) {
        let mut g = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        g.by_path.remove(to);
        let moved: Vec<(PathBuf, u64)> = g
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (p, i) in moved {
            g.by_path.remove(&p);
            let rest = p.strip_prefix(from).unwrap_or(Path::new(""));
            let np = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            g.by_ino.insert(i, np.clone());
            g.by_path.insert(np, i);
        }
    }

    fn entry(&self, p: &Path, reply: ReplyEntry) {
        match std::fs::symlink_metadata(p) {
            Ok(m) => {
                let ino = self.ino_of(p);
                reply.entry(&self.ttl, &attr(ino, &m), Generation(0));
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn add_file(&self, f: File) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Arc::new(f));
        fh
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }
}

struct Fs(Arc<Slow>);

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = &self.0;
        if parent == INodeNo::ROOT && name.as_bytes() == STATS_NAME {
            let len = s.stats_text().len() as u64;
            reply.entry(&Duration::ZERO, &stats_attr(len), Generation(0));
            return;
        }
        s.hit("lookup");
        let p = tri!(reply, s.child(parent, name));
        s.entry(&p, reply);
    }

    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {
        self.0.hit("forget");
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = &self.0;
        if ino.0 == STATS_INO {
            let len = s.stats_text().len() as u64;
            reply.attr(&Duration::ZERO, &stats_attr(len));
            return;
        }
        s.hit("getattr");
        let p = tri!(reply, s.path(ino));
        match std::fs::symlink_metadata(&p) {
            Ok(m) => reply.attr(&s.ttl, &attr(ino.0, &m)),
            Err(e) => reply.error(errno(e)),
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
        let s = &self.0;
        s.hit("setattr");
        let p = tri!(reply, s.path(ino));
        let c = tri!(reply, cpath(&p));
        // SAFETY (all calls): NUL-terminated path, plain arguments.
        unsafe {
            if let Some(m) = mode
                && libc::fchmodat(libc::AT_FDCWD, c.as_ptr(), m & 0o7777, 0) < 0
            {
                reply.error(errno(io::Error::last_os_error()));
                return;
            }
            if (uid.is_some() || gid.is_some())
                && libc::lchown(c.as_ptr(), uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX)) < 0
            {
                reply.error(errno(io::Error::last_os_error()));
                return;
            }
        }
        if let Some(sz) = size {
            let r = match fh.and_then(|fh| s.file(fh).ok()) {
                Some(f) => f.set_len(sz),
                None => OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(sz)),
            };
            tri!(reply, r.map_err(errno));
        }
        if atime.is_some() || mtime.is_some() {
            let t = [tspec(atime), tspec(mtime)];
            // SAFETY: valid path and times array.
            let r = unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    t.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if r < 0 {
                reply.error(errno(io::Error::last_os_error()));
                return;
            }
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) => reply.attr(&s.ttl, &attr(ino.0, &m)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let s = &self.0;
        s.hit("readlink");
        let p = tri!(reply, s.path(ino));
        match std::fs::read_link(&p) {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(errno(e)),
        }
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
        let s = &self.0;
        s.hit("mknod");
        let p = tri!(reply, s.child(parent, name));
        let c = tri!(reply, cpath(&p));
        // SAFETY: valid path.
        if unsafe { libc::mknod(c.as_ptr(), mode & !umask, rdev as libc::dev_t) } < 0 {
            reply.error(errno(io::Error::last_os_error()));
            return;
        }
        // SAFETY: valid path.
        unsafe { libc::lchown(c.as_ptr(), req.uid(), req.gid()) };
        s.entry(&p, reply);
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
        let s = &self.0;
        s.hit("mkdir");
        let p = tri!(reply, s.child(parent, name));
        let c = tri!(reply, cpath(&p));
        // SAFETY: valid path.
        if unsafe { libc::mkdir(c.as_ptr(), mode & !umask) } < 0 {
            reply.error(errno(io::Error::last_os_error()));
            return;
        }
        // SAFETY: valid path.
        unsafe { libc::lchown(c.as_ptr(), req.uid(), req.gid()) };
        s.entry(&p, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let s = &self.0;
        s.hit("unlink");
        let p = tri!(reply, s.child(parent, name));
        tri!(reply, std::fs::remove_file(&p).map_err(errno));
        s.forget_path(&p);
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let s = &self.0;
        s.hit("rmdir");
        let p = tri!(reply, s.child(parent, name));
        tri!(reply, std::fs::remove_dir(&p).map_err(errno));
        s.forget_path(&p);
        reply.ok();
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let s = &self.0;
        s.hit("symlink");
        let p = tri!(reply, s.child(parent, link_name));
        tri!(reply, std::os::unix::fs::symlink(target, &p).map_err(errno));
        let _ = std::os::unix::fs::lchown(&p, Some(req.uid()), Some(req.gid()));
        s.entry(&p, reply);
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
        let s = &self.0;
        s.hit("rename");
        let from = tri!(reply, s.child(parent, name));
        let to = tri!(reply, s.child(newparent, newname));
        let (cf, ct) = (tri!(reply, cpath(&from)), tri!(reply, cpath(&to)));
        // SAFETY: valid paths.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                cf.as_ptr(),
                libc::AT_FDCWD,
                ct.as_ptr(),
                flags.bits(),
            )
        };
        if r < 0 {
            reply.error(errno(io::Error::last_os_error()));
            return;
        }
        s.moved(&from, &to);
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
        let s = &self.0;
        s.hit("link");
        let from = tri!(reply, s.path(ino));
        let to = tri!(reply, s.child(newparent, newname));
        tri!(reply, std::fs::hard_link(&from, &to).map_err(errno));
        s.entry(&to, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let s = &self.0;
        if ino.0 == STATS_INO {
            reply.opened(FileHandle(STATS_FH), FopenFlags::FOPEN_DIRECT_IO);
            return;
        }
        s.hit("open");
        let p = tri!(reply, s.path(ino));
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(flags.0 & !(libc::O_ACCMODE | libc::O_CREAT | libc::O_EXCL))
            .write(flags.0 & libc::O_ACCMODE != libc::O_RDONLY)
            .read(flags.0 & libc::O_ACCMODE != libc::O_WRONLY)
            .open(&p);
        let f = tri!(reply, f.map_err(errno));
        let fh = s.add_file(f);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = &self.0;
        if fh.0 == STATS_FH {
            let t = s.stats_text();
            let start = (offset as usize).min(t.len());
            let end = (start + size as usize).min(t.len());
            reply.data(&t[start..end]);
            return;
        }
        s.hit("read");
        let f = tri!(reply, s.file(fh));
        let mut buf = vec![0u8; size as usize];
        let mut n = 0;
        while n < buf.len() {
            match f.read_at(&mut buf[n..], offset + n as u64) {
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
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let s = &self.0;
        s.hit("write");
        let f = tri!(reply, s.file(fh));
        tri!(reply, f.write_all_at(data, offset).map_err(errno));
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if fh.0 != STATS_FH {
            self.0.hit("flush");
        }
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if fh.0 != STATS_FH {
            self.0.hit("release");
            self.0
                .files
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&fh.0);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let s = &self.0;
        s.hit("fsync");
        let f = tri!(reply, s.file(fh));
        let r = if datasync {
            f.sync_data()
        } else {
            f.sync_all()
        };
        tri!(reply, r.map_err(errno));
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let s = &self.0;
        s.hit("opendir");
        let p = tri!(reply, s.path(ino));
        let rd = tri!(reply, std::fs::read_dir(&p).map_err(errno));
        let mut v = vec![
            (b".".to_vec(), ino.0, FileType::Directory),
            (b"..".to_vec(), INodeNo::ROOT.0, FileType::Directory),
        ];
        for e in rd {
            let e = tri!(reply, e.map_err(errno));
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => FileType::Directory,
                Ok(t) if t.is_symlink() => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            // The kernel ignores d_ino for FUSE lookups; a stable number keeps `ls -i` sane.
            v.push((e.file_name().as_bytes().to_vec(), e.ino(), kind));
        }
        let fh = s.next_fh.fetch_add(1, Ordering::Relaxed);
        s.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Arc::new(v));
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = &self.0;
        s.hit("readdir");
        let v = s
            .dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned();
        let Some(v) = v else {
            reply.error(Errno::EBADF);
            return;
        };
        for (i, (name, ino, kind)) in v.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.0.hit("releasedir");
        self.0
            .dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = &self.0;
        s.hit("statfs");
        let c = tri!(reply, cpath(&s.root));
        let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid path and out pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut v) } < 0 {
            reply.error(errno(io::Error::last_os_error()));
            return;
        }
        reply.statfs(
            v.f_blocks,
            v.f_bfree,
            v.f_bavail,
            v.f_files,
            v.f_ffree,
            v.f_bsize as u32,
            v.f_namemax as u32,
            v.f_frsize as u32,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let s = &self.0;
        s.hit("access");
        let p = tri!(reply, s.path(ino));
        let c = tri!(reply, cpath(&p));
        // SAFETY: valid path.
        if unsafe { libc::access(c.as_ptr(), mask.bits()) } < 0 {
            reply.error(errno(io::Error::last_os_error()));
        } else {
            reply.ok();
        }
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
        let s = &self.0;
        s.hit("create");
        let p = tri!(reply, s.child(parent, name));
        let acc = flags & libc::O_ACCMODE;
        let f = OpenOptions::new()
            .read(acc != libc::O_WRONLY)
            .write(acc != libc::O_RDONLY)
            .create(true)
            .custom_flags(flags & !(libc::O_ACCMODE | libc::O_CREAT))
            .mode(mode & !umask)
            .open(&p);
        let f = tri!(reply, f.map_err(errno));
        let _ = std::os::unix::fs::fchown(&f, Some(req.uid()), Some(req.gid()));
        let m = tri!(reply, f.metadata().map_err(errno));
        let ino = s.ino_of(&p);
        let fh = s.add_file(f);
        reply.created(
            &s.ttl,
            &attr(ino, &m),
            Generation(0),
            FileHandle(fh),
            FopenFlags::empty(),
        );
    }
}

struct Args {
    delay: Duration,
    ttl: Duration,
    threads: usize,
    source: PathBuf,
    mountpoint: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut delay = Duration::from_micros(500);
    let mut ttl = Duration::ZERO;
    let mut threads = 4;
    let mut pos = Vec::new();
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> anyhow::Result<u64> {
            it.next()
                .and_then(|v| v.to_str().and_then(|v| v.parse().ok()))
                .with_context(|| format!("{what} takes a number"))
        };
        match a.to_str() {
            Some("--delay-us") => delay = Duration::from_micros(num("--delay-us")?),
            Some("--ttl-ms") => ttl = Duration::from_millis(num("--ttl-ms")?),
            Some("--threads") => threads = num("--threads")?.max(1) as usize,
            Some("-h" | "--help") => {
                println!(
                    "usage: slowfs [--delay-us N=500] [--ttl-ms N=0] [--threads N=4] SOURCE MOUNTPOINT"
                );
                std::process::exit(0);
            }
            Some(s) if s.starts_with("--") => bail!("unknown option {s}"),
            _ => pos.push(PathBuf::from(a)),
        }
    }
    let [source, mountpoint]: [PathBuf; 2] = pos
        .try_into()
        .map_err(|_| anyhow::anyhow!("usage: slowfs [options] SOURCE MOUNTPOINT"))?;
    Ok(Args {
        delay,
        ttl,
        threads,
        source,
        mountpoint,
    })
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    let root = a
        .source
        .canonicalize()
        .with_context(|| format!("source {}", a.source.display()))?;
    let mut inodes = Inodes {
        next: INodeNo::ROOT.0,
        ..Inodes::default()
    };
    inodes.by_ino.insert(INodeNo::ROOT.0, root.clone());
    inodes.by_path.insert(root.clone(), INodeNo::ROOT.0);
    let slow = Arc::new(Slow {
        root,
        delay: a.delay,
        ttl: a.ttl,
        counts: Default::default(),
        inodes: Mutex::new(inodes),
        files: Mutex::default(),
        dirs: Mutex::default(),
        next_fh: AtomicU64::new(1),
    });
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("slowfs".into()),
        MountOption::Subtype("slowfs".into()),
        MountOption::DefaultPermissions,
    ];
    cfg.acl = SessionACL::All;
    cfg.n_threads = Some(a.threads);
    cfg.clone_fd = true;
    // SIGINT/SIGTERM: unmount cleanly; an external umount ends the session on its own.
    // SAFETY: plain sigset manipulation; the signals are blocked before any thread starts, so every thread inherits the mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let session = Session::new(Fs(slow.clone()), &a.mountpoint, &cfg)
        .with_context(|| format!("mounting {}", a.mountpoint.display()))?;
    let bg = session.spawn().context("starting the FUSE workers")?;
    let waiter = std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: initialized set, valid out pointer.
        unsafe { libc::sigwait(&set, &mut sig) };
    });
    while !waiter.is_finished() && !bg.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = bg.umount_and_join();
    eprint!("{}", String::from_utf8_lossy(&slow.stats_text()));
    Ok(())
}
