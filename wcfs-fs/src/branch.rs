//! Confined access to one branch directory.
//!
//! Every path is resolved beneath the branch root with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`: the union never needs to follow a symlink inside a branch (the kernel
//! resolves symlinks seen through the mount by calling `readlink` and looking the target up
//! again), so any symlink met while resolving a branch path is refused (ELOOP) instead of
//! followed. Operations on the last component go through the parent's fd with `*at` calls and
//! `AT_SYMLINK_NOFOLLOW`, so a symlink planted on the RW branch can never make the daemon read
//! or write outside its branches.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use wcfs_core::path::WPath;

use crate::stats::RwStats;

/// A directory entry as listed from a branch.
#[derive(Clone, Debug)]
pub(crate) struct RawEntry {
    pub name: Vec<u8>,
    /// `d_type` (`DT_*`), `DT_UNKNOWN` if the filesystem does not say.
    pub dtype: u8,
    /// `d_ino`: the backing `st_ino` (except for a mount point inside the branch).
    pub ino: u64,
}

/// `struct open_how` of openat2(2) (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// One branch root, with optional syscall accounting (the RW branch is counted).
pub(crate) struct Branch {
    /// Replaced in place by [`Branch::reopen`] (`dup3` onto the same number), so every call
    /// made after a reopen resolves beneath the new root without any lock on the hot path.
    root: OwnedFd,
    /// The path the root was opened from, for [`Branch::reopen`].
    path: std::path::PathBuf,
    stats: Option<Arc<RwStats>>,
    /// Directory fds by path, for a branch that never changes under the mount (the RO one).
    dirs: Option<Mutex<DirFds>>,
}

enum Dir {
    Root,
    Owned(OwnedFd),
    Cached(Arc<OwnedFd>),
}

/// A bounded cache of `O_PATH` directory fds, each opened beneath the root without following
/// any symlink, so a later `*at` call relative to one stays as confined as a full `openat2`.
/// Only sound for a branch whose directories are never renamed or replaced while mounted:
/// a cached fd follows its directory wherever it moves.
struct DirFds {
    max: usize,
    tick: u64,
    /// Bumped by [`Branch::reopen`]: an fd opened under an older root is not cached.
    epoch: u64,
    map: HashMap<Vec<u8>, (Arc<OwnedFd>, u64)>,
}

impl DirFds {
    fn get(&mut self, path: &[u8]) -> Option<Arc<OwnedFd>> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(path).map(|(fd, used)| {
            *used = t;
            fd.clone()
        })
    }

    fn insert(&mut self, path: &[u8], fd: Arc<OwnedFd>) {
        if self.map.len() >= self.max && !self.map.contains_key(path) {
            // Least recently used out; a scan, but only when full and on a miss.
            if let Some(old) = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            {
                self.map.remove(&old);
            }
        }
        self.tick += 1;
        self.map.insert(path.to_vec(), (fd, self.tick));
        debug_assert!(self.map.len() <= self.max);
    }
}

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Splits a path into its parent (`None` = root) and last component.
pub(crate) fn split(path: &WPath) -> (Option<WPath>, &[u8]) {
    (path.parent(), path.file_name())
}

impl Branch {
    /// Opens `dir` as a branch root. `stats` counts every syscall made on this branch.
    pub(crate) fn open(dir: &Path, stats: Option<Arc<RwStats>>) -> io::Result<Branch> {
        use std::os::unix::ffi::OsStrExt;
        let c = cstr(dir.as_os_str().as_bytes())?;
        // SAFETY: `c` is a valid NUL-terminated string.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` was just returned by open and is owned by nobody else.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Branch {
            root,
            path: dir.to_path_buf(),
            stats,
            dirs: None,
        })
    }

    /// Opens the branch's path again and makes it the root, and forgets every cached
    /// directory fd: for an RO branch whose content was replaced under the mount (a new
    /// release mounted over the path, or the symlink it names switched). Calls already under
    /// way finish against the old root; every later call sees the new one. Files the kernel
    /// still has open keep reading what they opened.
    pub(crate) fn reopen(&self) -> io::Result<()> {
        let fresh = Branch::open(&self.path, None)?;
        // The epoch first: a lookup racing this reopen may still open a directory beneath the
        // old root, and must not cache it.
        if let Some(d) = &self.dirs {
            let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
            d.epoch += 1;
            d.map.clear();
        }
        // SAFETY: both fds are open and owned by us; dup3 atomically makes `self.root`'s number
        // name the new directory (closing the old one), so no call sees a closed number.
        check(unsafe {
            libc::dup3(
                fresh.root.as_raw_fd(),
                self.root.as_raw_fd(),
                libc::O_CLOEXEC,
            )
        })?;
        if let Some(d) = &self.dirs {
            let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
            d.epoch += 1;
            d.map.clear();
        }
        Ok(())
    }

    /// Keeps up to `max` directory fds open (0: none), so a path is resolved from its cached
    /// parent with one `*at` call. Only for a branch that does not change while mounted.
    pub(crate) fn cache_dirs(&mut self, max: usize) {
        self.dirs = (max > 0).then(|| {
            Mutex::new(DirFds {
                max,
                tick: 0,
                epoch: 0,
                map: HashMap::new(),
            })
        });
    }

    /// How many directory fds are cached (tests).
    #[cfg(test)]
    fn cached_dirs(&self) -> usize {
        self.dirs
            .as_ref()
            .map_or(0, |d| d.lock().unwrap_or_else(|e| e.into_inner()).map.len())
    }

    fn sys(&self) {
        if let Some(s) = &self.stats {
            s.count();
        }
    }

    fn raw(&self, d: &Dir) -> RawFd {
        match d {
            Dir::Root => self.root.as_raw_fd(),
            Dir::Owned(fd) => fd.as_raw_fd(),
            Dir::Cached(fd) => fd.as_raw_fd(),
        }
    }

    /// `openat2` beneath the root, refusing every symlink on the way (and the last component
    /// too unless `O_PATH|O_NOFOLLOW` asks for the link itself).
    fn openat2(&self, rel: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
        self.openat2_in(self.root.as_raw_fd(), rel, flags, mode)
    }

    /// `openat2` of `rel` beneath `dirfd` (the root or a directory opened beneath it).
    fn openat2_in(&self, dirfd: RawFd, rel: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
        let c = cstr(if rel.is_empty() { b"." } else { rel })?;
        let how = OpenHow {
            flags: (flags | libc::O_CLOEXEC) as u64,
            mode: if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
                mode as u64
            } else {
                0
            },
            resolve: libc::RESOLVE_BENEATH
                | libc::RESOLVE_NO_SYMLINKS
                | libc::RESOLVE_NO_MAGICLINKS,
        };
        self.sys();
        // SAFETY: valid fd, NUL-terminated path, `how` lives across the call with its size.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a fresh fd.
        Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
    }

    fn dir_of(&self, parent: Option<&WPath>) -> io::Result<Dir> {
        match parent {
            None => Ok(Dir::Root),
            Some(p) if self.dirs.is_some() => {
                let lock = || {
                    self.dirs
                        .as_ref()
                        .map(|d| d.lock().unwrap_or_else(|e| e.into_inner()))
                };
                let mut epoch = 0;
                if let Some(mut d) = lock() {
                    if let Some(fd) = d.get(p.as_bytes()) {
                        return Ok(Dir::Cached(fd));
                    }
                    epoch = d.epoch;
                }
                // Resolved in full, as without the cache: the cache only ever holds fds that
                // a symlink-refusing openat2 beneath the root returned.
                let fd =
                    Arc::new(self.openat2(p.as_bytes(), libc::O_PATH | libc::O_DIRECTORY, 0)?);
                if let Some(mut d) = lock()
                    && d.epoch == epoch
                {
                    d.insert(p.as_bytes(), fd.clone());
                }
                Ok(Dir::Cached(fd))
            }
            Some(p) => Ok(Dir::Owned(self.openat2(
                p.as_bytes(),
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            )?)),
        }
    }

    fn close(&self, d: Dir) {
        if let Dir::Owned(fd) = d {
            self.sys();
            drop(fd);
        }
    }

    /// Opens `path` (`None` = the root) with `flags`; never follows a symlink.
    pub(crate) fn open_at(
        &self,
        path: Option<&WPath>,
        flags: i32,
        mode: u32,
    ) -> io::Result<OwnedFd> {
        if self.dirs.is_some()
            && let Some(p) = path
        {
            // One component beneath the cached parent, with the same resolve rules.
            let (parent, name) = split(p);
            let d = self.dir_of(parent.as_ref())?;
            let r = self.openat2_in(self.raw(&d), name, flags | libc::O_NOFOLLOW, mode);
            self.close(d);
            return r;
        }
        let rel = path.map(|p| p.as_bytes()).unwrap_or(b"");
        self.openat2(rel, flags | libc::O_NOFOLLOW, mode)
    }

    /// Closes an fd opened on this branch (counted).
    pub(crate) fn close_fd(&self, fd: OwnedFd) {
        self.sys();
        drop(fd);
    }

    /// `lstat` of `path` (`None` = the root).
    pub(crate) fn lstat(&self, path: Option<&WPath>) -> io::Result<libc::stat> {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        match path {
            None => {
                self.sys();
                // SAFETY: valid fd and out pointer.
                check(unsafe { libc::fstat(self.root.as_raw_fd(), &mut st) })?;
            }
            Some(p) => {
                let (parent, name) = split(p);
                let d = self.dir_of(parent.as_ref())?;
                let c = cstr(name)?;
                self.sys();
                // SAFETY: valid dir fd, NUL-terminated name, valid out pointer.
                let r = check(unsafe {
                    libc::fstatat(self.raw(&d), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW)
                });
                self.close(d);
                r?;
            }
        }
        Ok(st)
    }

    /// `fstat` of an fd from this branch (counted).
    pub(crate) fn fstat(&self, fd: RawFd) -> io::Result<libc::stat> {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        self.sys();
        // SAFETY: valid out pointer; a bad fd yields EBADF.
        check(unsafe { libc::fstat(fd, &mut st) })?;
        Ok(st)
    }

    /// Lists a directory. Includes names starting with `.wh.`; excludes `.` and `..`.
    pub(crate) fn list(&self, path: Option<&WPath>) -> io::Result<Vec<RawEntry>> {
        let fd = self.open_at(path, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let raw = fd.as_raw_fd();
        std::mem::forget(fd);
        // SAFETY: `raw` is an owned directory fd; fdopendir takes ownership of it.
        let dirp = unsafe { libc::fdopendir(raw) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so we still own `raw`.
            unsafe { libc::close(raw) };
            return Err(e);
        }
        let mut out = Vec::new();
        loop {
            self.sys();
            // SAFETY: `dirp` is a valid open DIR stream.
            let ent = unsafe { libc::readdir64(dirp) };
            if ent.is_null() {
                break;
            }
            // SAFETY: readdir64 returned a valid entry whose d_name is NUL-terminated.
            let (name, dtype, ino) = unsafe {
                let e = &*ent;
                (
                    std::ffi::CStr::from_ptr(e.d_name.as_ptr())
                        .to_bytes()
                        .to_vec(),
                    e.d_type,
                    e.d_ino,
                )
            };
            if name == b"." || name == b".." {
                continue;
            }
            out.push(RawEntry { name, dtype, ino });
        }
        self.sys();
        // SAFETY: `dirp` is valid and closed once.
        unsafe { libc::closedir(dirp) };
        Ok(out)
    }

    /// Reads a symlink's target.
    pub(crate) fn readlink(&self, path: &WPath) -> io::Result<Vec<u8>> {
        let (parent, name) = split(path);
        let d = self.dir_of(parent.as_ref())?;
        let c = cstr(name)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        self.sys();
        // SAFETY: valid fd, name and buffer with its length.
        let r = unsafe {
            libc::readlinkat(self.raw(&d), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        let err = io::Error::last_os_error();
        self.close(d);
        if r < 0 {
            return Err(err);
        }
        buf.truncate(r as usize);
        Ok(buf)
    }

    /// Runs `f(dirfd, name)` with the parent of `path` opened beneath the root.
    fn at<R>(
        &self,
        path: &WPath,
        f: impl FnOnce(RawFd, &CString) -> io::Result<R>,
    ) -> io::Result<R> {
        let (parent, name) = split(path);
        let d = self.dir_of(parent.as_ref())?;
        let c = cstr(name)?;
        self.sys();
        let r = f(self.raw(&d), &c);
        self.close(d);
        r
    }

    /// `mkdirat`.
    pub(crate) fn mkdir(&self, path: &WPath, mode: u32) -> io::Result<()> {
        // SAFETY (all closures below): valid dir fd and NUL-terminated name.
        self.at(path, |d, n| {
            check(unsafe { libc::mkdirat(d, n.as_ptr(), mode) }).map(drop)
        })
    }

    /// `mknodat`.
    pub(crate) fn mknod(&self, path: &WPath, mode: u32, rdev: u64) -> io::Result<()> {
        self.at(path, |d, n| {
            check(unsafe { libc::mknodat(d, n.as_ptr(), mode, rdev) }).map(drop)
        })
    }

    /// `symlinkat(target, path)`.
    pub(crate) fn symlink(&self, target: &[u8], path: &WPath) -> io::Result<()> {
        let t = cstr(target)?;
        self.at(path, |d, n| {
            check(unsafe { libc::symlinkat(t.as_ptr(), d, n.as_ptr()) }).map(drop)
        })
    }

    /// `unlinkat` (a file, or with `dir` an empty directory).
    pub(crate) fn unlink(&self, path: &WPath, dir: bool) -> io::Result<()> {
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        self.at(path, |d, n| {
            check(unsafe { libc::unlinkat(d, n.as_ptr(), flags) }).map(drop)
        })
    }

    /// `fchownat(AT_SYMLINK_NOFOLLOW)`.
    pub(crate) fn chown(&self, path: &WPath, uid: u32, gid: u32) -> io::Result<()> {
        self.at(path, |d, n| {
            check(unsafe { libc::fchownat(d, n.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
                .map(drop)
        })
    }

    /// `fchmodat2(AT_SYMLINK_NOFOLLOW)`: never changes a symlink's target.
    pub(crate) fn chmod(&self, path: Option<&WPath>, mode: u32) -> io::Result<()> {
        let Some(path) = path else {
            self.sys();
            // SAFETY: plain syscall on the root fd with an empty path.
            return check(unsafe {
                libc::syscall(
                    libc::SYS_fchmodat2,
                    self.root.as_raw_fd(),
                    c"".as_ptr(),
                    mode,
                    libc::AT_EMPTY_PATH,
                ) as libc::c_int
            })
            .map(drop);
        };
        self.at(path, |d, n| {
            check(unsafe {
                libc::syscall(
                    libc::SYS_fchmodat2,
                    d,
                    n.as_ptr(),
                    mode,
                    libc::AT_SYMLINK_NOFOLLOW,
                ) as libc::c_int
            })
            .map(drop)
        })
    }

    /// `utimensat(AT_SYMLINK_NOFOLLOW)`.
    pub(crate) fn utimens(&self, path: &WPath, times: &[libc::timespec; 2]) -> io::Result<()> {
        self.at(path, |d, n| {
            check(unsafe {
                libc::utimensat(d, n.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
            })
            .map(drop)
        })
    }

    /// `linkat(old, new)`, both on this branch, never following a symlink.
    pub(crate) fn link(&self, old: &WPath, new: &WPath) -> io::Result<()> {
        let (op, on) = split(old);
        let od = self.dir_of(op.as_ref())?;
        let oc = cstr(on)?;
        let r = self.at(new, |d, n| {
            check(unsafe { libc::linkat(self.raw(&od), oc.as_ptr(), d, n.as_ptr(), 0) }).map(drop)
        });
        self.close(od);
        r
    }

    /// `renameat2(old, new, flags)` within this branch.
    pub(crate) fn rename(&self, old: &WPath, new: &WPath, flags: u32) -> io::Result<()> {
        let (op, on) = split(old);
        let od = self.dir_of(op.as_ref())?;
        let oc = cstr(on)?;
        let r = self.at(new, |d, n| {
            check(unsafe { libc::renameat2(self.raw(&od), oc.as_ptr(), d, n.as_ptr(), flags) })
                .map(drop)
        });
        self.close(od);
        r
    }

    /// Whether the branch is a network filesystem whose client renames a file that it holds
    /// open instead of removing it (NFS's `.nfsXXXX` "silly rename", CIFS/SMB likewise).
    pub(crate) fn renames_open_files_on_unlink(&self) -> bool {
        const NFS: i64 = 0x6969;
        const SMB2: i64 = 0xFE53_4D42;
        const CIFS: i64 = 0xFF53_4D42;
        let mut s: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and out pointer.
        if unsafe { libc::fstatfs(self.root.as_raw_fd(), &mut s) } != 0 {
            return true; // unknown: assume the cautious answer
        }
        matches!(s.f_type as i64, NFS | SMB2 | CIFS)
    }

    /// `fstatvfs` of the root.
    pub(crate) fn statvfs(&self) -> io::Result<libc::statvfs> {
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        self.sys();
        // SAFETY: valid fd and out pointer.
        check(unsafe { libc::fstatvfs(self.root.as_raw_fd(), &mut s) })?;
        Ok(s)
    }

    /// Runs `f` on `/proc/self/fd/N` of an `O_PATH` fd of `path`, for the xattr calls (which
    /// have no fd form usable on `O_PATH` fds). The magic link names exactly the opened file,
    /// which was opened without following symlinks. Symlinks themselves are refused (ENOTSUP).
    pub(crate) fn with_proc_path<R>(
        &self,
        path: Option<&WPath>,
        f: impl FnOnce(&CString) -> io::Result<R>,
    ) -> io::Result<R> {
        let fd = self.open_at(path, libc::O_PATH, 0)?;
        let st = self.fstat(fd.as_raw_fd());
        let r = match st {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                Err(io::Error::from_raw_os_error(libc::ENOTSUP))
            }
            Ok(_) => {
                let p = cstr(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())?;
                self.sys();
                f(&p)
            }
            Err(e) => Err(e),
        };
        self.close_fd(fd);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wp(s: &str) -> WPath {
        WPath::new(s.as_bytes()).unwrap()
    }

    /// A branch with `d/e/f` (a file), `d/up` -> `..` (escapes nothing but is a symlink) and
    /// `d/out` -> a directory outside the branch holding `secret`.
    fn fixture() -> (tempfile::TempDir, Branch) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("b");
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/e/f"), b"f").unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        std::fs::write(t.path().join("outside/secret"), b"s").unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), root.join("d/out")).unwrap();
        std::os::unix::fs::symlink("..", root.join("d/up")).unwrap();
        let mut b = Branch::open(&root, None).unwrap();
        b.cache_dirs(2);
        (t, b)
    }

    #[test]
    fn cached_parents_serve_lookups_and_opens() {
        let (_t, b) = fixture();
        assert!(b.lstat(Some(&wp("d/e/f"))).is_ok());
        assert_eq!(b.cached_dirs(), 1);
        let fd = b.open_at(Some(&wp("d/e/f")), libc::O_RDONLY, 0).unwrap();
        let mut s = String::new();
        use std::io::Read;
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        assert_eq!(s, "f");
        assert_eq!(b.cached_dirs(), 1);
        // The bound holds: least recently used parents are dropped.
        assert!(b.lstat(Some(&wp("d/e"))).is_ok());
        assert!(b.lstat(Some(&wp("d/e/f"))).is_ok());
        assert_eq!(b.cached_dirs(), 2);
        assert!(b.lstat(Some(&wp("d/out/secret"))).is_err());
        assert!(b.cached_dirs() <= 2);
        assert!(b.lstat(Some(&wp("d/e/f"))).is_ok());
    }

    #[test]
    fn the_dir_cache_never_resolves_through_a_symlink() {
        let (_t, b) = fixture();
        for p in ["d/out/secret", "d/up/d/e/f"] {
            let e = b.lstat(Some(&wp(p))).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{p}");
            let e = b.open_at(Some(&wp(p)), libc::O_RDONLY, 0).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{p}");
            assert!(b.list(Some(&wp(p))).is_err());
        }
        // Asked again (the parent lookup failed, so nothing was cached for it).
        assert_eq!(b.cached_dirs(), 0);
        assert!(b.lstat(Some(&wp("d/out/secret"))).is_err());
        // The links themselves are seen, not followed.
        let st = b.lstat(Some(&wp("d/out"))).unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFLNK);
        assert!(b.open_at(Some(&wp("d/out")), libc::O_RDONLY, 0).is_err());
        assert_eq!(b.readlink(&wp("d/up")).unwrap(), b"..");
    }
}
