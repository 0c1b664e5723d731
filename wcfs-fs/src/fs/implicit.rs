//! Handle-less I/O for `fast_open` mounts.
//!
//! With `FUSE_NO_OPEN_SUPPORT` the kernel opens and closes files without telling the daemon:
//! `read`, `write` and `fsync` arrive with file handle 0 and only the inode says which file
//! they are for. The daemon keeps one file per inode (the "implicit" file): lazily opened RO
//! files (no syscall until a read misses the page cache), and RW files opened on first use and
//! kept, so that an inode keeps meaning one file even if its path is later replaced (another
//! node's `mv new f` gives `f` another inode number, hence another implicit file). A write to
//! an inode still on the RO branch copies it up first, as an open for writing does otherwise.
//! When the path cannot be opened any more (removed or replaced meanwhile), I/O goes on with
//! the inode's file if the daemon has one.
//!
//! No close reaches the daemon either, so nothing would flush a write to an NFS branch when
//! the application closes: each handle-less write starts its writeback at once
//! (`sync_file_range`), which is what makes it visible to the other nodes.
//!
//! The daemon never learns when the last open of an inode closes, so an inode's file is
//! kept until the kernel forgets the inode, or dropped when the map is full. An inode removed
//! (unlink, rename over it) while the kernel still holds it may be open: its file is opened
//! before the removal and pinned until the kernel forgets the inode, so reads and writes
//! through fds opened before the removal keep working, as POSIX wants. Except on an NFS (or
//! SMB) RW branch: holding the file open would make the client rename it to `.nfsXXXX`
//! rather than remove it, and the removal of its directory would then fail (`rm -rf`), so
//! there only a file the daemon already has open is kept, as NFS itself does for its clients.
//! Also not kept: an RO file opened for writing and removed before its first write (its
//! writes then fail; the default mode copies up at the open).

use super::*;

/// Most inodes with an implicit file; beyond it unpinned ones are dropped (the next I/O of
/// such an inode opens its file again).
pub(super) const IMPLICIT_MAX: usize = 1024;

/// One inode's implicit file.
pub(super) struct Implicit {
    handle: Arc<Handle>,
    side: Side,
    writable: bool,
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
        let kept = {
            let m = self.implicit.lock().unwrap_or_else(|e| e.into_inner());
            m.get(&ino)
                .filter(|i| !write || i.writable)
                .map(|i| (i.handle.clone(), i.side))
        };
        // Removed or replaced since the kernel's last lookup (here or on another node): the
        // fds the kernel holds still mean the file the daemon has.
        let fallback = |e: Errno| kept.as_ref().map(|(h, _)| h.clone()).ok_or(e);
        let path = match self.path_of(INodeNo(ino)) {
            Ok(Some(p)) => p,
            Ok(None) => return Err(Errno::EISDIR),
            Err(e) => return fallback(e),
        };
        let res = self.table.resolve(&path);
        if let Some((h, side)) = &kept {
            let current = match side {
                Side::Ro => res == Resolution::Ro,
                Side::Rw => res != Resolution::Hidden,
            };
            if current {
                return Ok(h.clone());
            }
        }
        let f = match self.locate(Some(&path)) {
            Ok(f) => f,
            Err(e) => return fallback(e),
        };
        if is_dir(&f.st) {
            return Err(Errno::EISDIR);
        }
        let entry = match (f.side, write) {
            (Side::Ro, false) => Implicit {
                handle: Arc::new(Handle::ro_lazy(ino, path, None, None)),
                side: Side::Ro,
                writable: false,
                pinned: false,
            },
            (Side::Ro, true) => {
                self.copy_up(&path)?;
                self.open_implicit_rw(ino, &path, true)?
            }
            (Side::Rw, _) => match self.open_implicit_rw(ino, &path, write) {
                Ok(i) => i,
                Err(e) => return fallback(e),
            },
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
            pinned: false,
        })
    }

    fn keep_implicit(&self, ino: u64, entry: Implicit) {
        let mut dropped = Vec::new();
        let mut m = self.implicit.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= IMPLICIT_MAX && !m.contains_key(&ino) {
            // Rare (a thousand inodes with I/O since their last forget): drop half of the
            // unpinned ones rather than track recency on every read. Pinned files are bounded
            // by the inodes the kernel holds after their removal (open files).
            let victims: Vec<u64> = m
                .iter()
                .filter(|(_, i)| !i.pinned)
                .map(|(k, _)| *k)
                .step_by(2)
                .collect();
            dropped.extend(victims.iter().filter_map(|k| m.remove(k)));
        }
        let pinned = m.get(&ino).is_some_and(|i| i.pinned);
        dropped.extend(m.insert(ino, Implicit { pinned, ..entry }));
        drop(m);
        // Closed here, not under the lock: a close on NFS flushes.
        drop(dropped);
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
        if f.side == Side::Rw && self.rw_renames_open_files {
            // See the module docs: keep only what is already open.
            if let Some(i) = self
                .implicit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&ino)
            {
                i.pinned = true;
            }
            return;
        }
        let entry = match f.side {
            // The RO branch keeps the file (only a whiteout hides it).
            Side::Ro => Implicit {
                handle: Arc::new(Handle::ro_lazy(ino, path.clone(), None, None)),
                side: Side::Ro,
                writable: false,
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
        let old = self
            .implicit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ino, entry);
        drop(old);
    }

    /// Drops `ino`'s implicit file if the daemon no longer knows the inode (the kernel forgot
    /// it, or it was removed and never held).
    pub(super) fn drop_implicit_if_freed(&self, ino: u64) {
        if self.cfg.fast_open && !self.inodes.exists(ino) {
            let old = self
                .implicit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ino);
            drop(old);
        }
    }

    /// Forgets `ino`'s implicit file (its content moved: copy-up).
    pub(super) fn drop_implicit(&self, ino: u64) {
        if self.cfg.fast_open {
            let mut m = self.implicit.lock().unwrap_or_else(|e| e.into_inner());
            let old = if m.get(&ino).is_some_and(|i| !i.pinned) {
                m.remove(&ino)
            } else {
                None
            };
            drop(m);
            drop(old);
        }
    }

    /// Forgets every unpinned RO implicit file (a new RO image replaced the branch).
    pub(super) fn drop_implicit_ro(&self) {
        let mut m = self.implicit.lock().unwrap_or_else(|e| e.into_inner());
        let old: Vec<Implicit> = m
            .extract_if(|_, i| i.side == Side::Ro && !i.pinned)
            .map(|(_, i)| i)
            .collect();
        drop(m);
        drop(old);
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
