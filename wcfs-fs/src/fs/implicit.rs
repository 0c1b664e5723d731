//! Handle-less I/O for `fast_open` mounts.
//!
//! With `FUSE_NO_OPEN_SUPPORT` the kernel opens and closes files without telling the daemon:
//! `read`, `write` and `fsync` arrive with file handle 0 and only the inode says which file
//! they are for. The daemon keeps one file per inode (the "implicit" file): lazily opened RO
//! files (no syscall until a read misses the page cache), and RW files opened on first use and
//! reopened after `rw_ttl` (another node may have replaced the file on the shared branch).
//! A write to an inode still on the RO branch copies it up first, as an open for writing
//! does otherwise.
//!
//! No close reaches the daemon either, so nothing would flush a write to an NFS branch when
//! the application closes: each handle-less write starts its writeback at once
//! (`sync_file_range`), which is what makes it visible to the other nodes.
//!
//! The daemon never learns when the last open of an inode closes, so an inode's file is
//! kept until the kernel forgets the inode, or dropped when the map is full. An inode removed
//! (unlink, rename over it) while the kernel still holds it may be open: its file is opened
//! before the removal and pinned until the kernel forgets the inode, so reads and writes
//! through fds opened before the removal keep working, as POSIX wants.

use super::*;

/// Most inodes with an implicit file; beyond it unpinned ones are dropped (the next I/O of
/// such an inode opens its file again).
pub(super) const IMPLICIT_MAX: usize = 1024;

/// One inode's implicit file.
pub(super) struct Implicit {
    handle: Arc<Handle>,
    side: Side,
    writable: bool,
    opened: Instant,
    /// Removed from the union while the kernel held it: kept until the kernel forgets it.
    pinned: bool,
}

impl Shared {
    /// The file an I/O request on `ino` works on: its open handle when it has one (files
    /// created through `create` have one even in `fast_open` mounts), else the inode's
    /// implicit file. `write`: the request writes, so the file must be a writable RW file.
    pub(super) fn io_handle(
        &self,
        ino: u64,
        fh: FileHandle,
        write: bool,
    ) -> Result<Arc<Handle>, Errno> {
        if fh.0 != 0 || !self.cfg.fast_open {
            return self.handle(fh);
        }
        self.implicit_file(ino, write)
    }

    fn implicit_file(&self, ino: u64, write: bool) -> Result<Arc<Handle>, Errno> {
        let path = match self.path_of(INodeNo(ino)) {
            Ok(Some(p)) => p,
            Ok(None) => return Err(Errno::EISDIR),
            Err(e) => {
                // Removed while open: only its pinned file is left.
                let m = self.implicit.lock().unwrap_or_else(|e| e.into_inner());
                return m
                    .get(&ino)
                    .filter(|i| i.pinned && (!write || i.writable))
                    .map(|i| i.handle.clone())
                    .ok_or(e);
            }
        };
        let res = self.table.resolve(&path);
        {
            let m = self.implicit.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = m.get(&ino) {
                let current = match i.side {
                    Side::Ro => res == Resolution::Ro,
                    Side::Rw => res != Resolution::Hidden && i.opened.elapsed() < self.cfg.rw_ttl,
                };
                if current && (!write || i.writable) {
                    return Ok(i.handle.clone());
                }
            }
        }
        let f = self.locate(Some(&path))?;
        if is_dir(&f.st) {
            return Err(Errno::EISDIR);
        }
        let entry = match (f.side, write) {
            (Side::Ro, false) => Implicit {
                handle: Arc::new(Handle::RoLazy {
                    ino,
                    path,
                    file: OnceLock::new(),
                    backing: None,
                }),
                side: Side::Ro,
                writable: false,
                opened: Instant::now(),
                pinned: false,
            },
            (Side::Ro, true) => {
                self.copy_up(&path)?;
                self.open_implicit_rw(ino, &path, true)?
            }
            (Side::Rw, _) => self.open_implicit_rw(ino, &path, write)?,
        };
        let h = entry.handle.clone();
        self.keep_implicit(ino, entry);
        Ok(h)
    }

    /// Opens `path` on the RW branch read-write, or (when the branch refuses that, e.g. an
    /// NFS export squashing root) with the one access `write` needs.
    fn open_implicit_rw(&self, ino: u64, path: &WPath, write: bool) -> Result<Implicit, Errno> {
        self.stats.count();
        let (fd, writable) = match self.rw.open_at(Some(path), libc::O_RDWR, 0) {
            Ok(fd) => (fd, true),
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                let acc = if write {
                    libc::O_WRONLY
                } else {
                    libc::O_RDONLY
                };
                self.stats.count();
                (self.rw.open_at(Some(path), acc, 0).map_err(errno)?, write)
            }
            Err(e) => return Err(errno(e)),
        };
        Ok(Implicit {
            handle: Arc::new(Handle::File {
                ino,
                file: File::from(fd),
                side: Side::Rw,
                _backing: None,
            }),
            side: Side::Rw,
            writable,
            opened: Instant::now(),
            pinned: false,
        })
    }

    fn keep_implicit(&self, ino: u64, entry: Implicit) {
        let mut m = self.implicit.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= IMPLICIT_MAX && !m.contains_key(&ino) {
            // Rare (a thousand inodes with I/O since their last forget): drop the unpinned
            // half rather than track recency on every read.
            let mut n = 0;
            m.retain(|_, i| {
                n += 1;
                i.pinned || n % 2 == 0
            });
        }
        debug_assert!(m.len() < IMPLICIT_MAX + IMPLICIT_MAX / 2 || m.values().all(|i| i.pinned));
        let pinned = m.get(&ino).is_some_and(|i| i.pinned);
        m.insert(ino, Implicit { pinned, ..entry });
    }

    /// `fast_open`: `path` (found as `f`) is about to leave the union (unlink, or the target
    /// of a rename). If the kernel holds its inode, some process may have it open: keep its
    /// file until the kernel forgets the inode.
    pub(super) fn pin_before_removal(&self, path: &WPath, f: &Found) {
        if !self.cfg.fast_open || f.st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return;
        }
        let Some(ino) = self.inodes.find_path(path) else {
            return;
        };
        let entry = match f.side {
            // The RO branch keeps the file (only a whiteout hides it).
            Side::Ro => Implicit {
                handle: Arc::new(Handle::RoLazy {
                    ino,
                    path: path.clone(),
                    file: OnceLock::new(),
                    backing: None,
                }),
                side: Side::Ro,
                writable: false,
                opened: Instant::now(),
                pinned: true,
            },
            Side::Rw => match self.open_implicit_rw(ino, path, false) {
                Ok(i) => Implicit { pinned: true, ..i },
                Err(e) => {
                    tracing::debug!(%path, error = ?e, "cannot keep a removed file for its open fds");
                    return;
                }
            },
        };
        self.implicit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ino, entry);
    }

    /// Drops `ino`'s implicit file if the daemon no longer knows the inode (the kernel forgot
    /// it, or it was removed and never held).
    pub(super) fn drop_implicit_if_freed(&self, ino: u64) {
        if self.cfg.fast_open && !self.inodes.exists(ino) {
            self.implicit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ino);
        }
    }

    /// Forgets `ino`'s implicit file (its content moved: copy-up).
    pub(super) fn drop_implicit(&self, ino: u64) {
        if self.cfg.fast_open {
            let mut m = self.implicit.lock().unwrap_or_else(|e| e.into_inner());
            if m.get(&ino).is_some_and(|i| !i.pinned) {
                m.remove(&ino);
            }
        }
    }

    /// The pinned file of `ino`, removed from the union while possibly open.
    pub(super) fn pinned_file(&self, ino: u64) -> Option<Arc<Handle>> {
        self.implicit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .filter(|i| i.pinned)
            .map(|i| i.handle.clone())
    }
}
