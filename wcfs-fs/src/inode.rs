//! Stable inode numbers: a tree of `(parent, name)` nodes, one per path the kernel has seen.
//!
//! A node keeps its number for the life of the mount (numbers are never reused), so the same
//! path always shows the same `st_ino`. Renames move a node (with its subtree) instead of
//! renumbering; an unlinked node is detached but keeps its number while files are open on it.

use std::collections::HashMap;
use std::sync::Mutex;

use wcfs_core::path::WPath;

/// The FUSE root's node id.
pub(crate) const ROOT: u64 = 1;

struct Node {
    parent: u64,
    name: Box<[u8]>,
    /// Detached by unlink/rmdir/rename-over: no longer reachable by path.
    detached: bool,
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<u64, Node>,
    by_name: HashMap<(u64, Box<[u8]>), u64>,
    next: u64,
}

/// The inode table. All methods take `&self`; one mutex guards it (operations are O(depth)).
pub(crate) struct Inodes {
    inner: Mutex<Inner>,
}

impl Inodes {
    pub(crate) fn new() -> Inodes {
        Inodes {
            inner: Mutex::new(Inner {
                next: ROOT + 1,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node of `parent/name`, created if new.
    pub(crate) fn get_or_insert(&self, parent: u64, name: &[u8]) -> u64 {
        let mut g = self.lock();
        if let Some(&ino) = g.by_name.get(&(parent, Box::from(name))) {
            return ino;
        }
        let ino = g.next;
        g.next += 1;
        g.nodes.insert(
            ino,
            Node {
                parent,
                name: name.into(),
                detached: false,
            },
        );
        g.by_name.insert((parent, name.into()), ino);
        ino
    }

    /// The node of `parent/name` if the kernel has seen it.
    pub(crate) fn find(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.lock().by_name.get(&(parent, Box::from(name))).copied()
    }

    /// The node of a path, if every component has been seen.
    pub(crate) fn find_path(&self, path: &WPath) -> Option<u64> {
        let g = self.lock();
        let mut cur = ROOT;
        for c in path.components() {
            cur = *g.by_name.get(&(cur, Box::from(c)))?;
        }
        Some(cur)
    }

    /// The union path of a node: `Ok(None)` for the root, `Err(())` if unknown or detached.
    pub(crate) fn path(&self, ino: u64) -> Result<Option<WPath>, ()> {
        if ino == ROOT {
            return Ok(None);
        }
        let g = self.lock();
        let mut comps: Vec<&[u8]> = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let n = g.nodes.get(&cur).ok_or(())?;
            if n.detached {
                return Err(());
            }
            comps.push(&n.name);
            cur = n.parent;
        }
        comps.reverse();
        WPath::new(&comps.join(&b'/')).map(Some).map_err(|_| ())
    }

    /// Detaches `parent/name` (unlink, rmdir, or the target of a rename).
    pub(crate) fn detach(&self, parent: u64, name: &[u8]) {
        let mut g = self.lock();
        if let Some(ino) = g.by_name.remove(&(parent, Box::from(name)))
            && let Some(n) = g.nodes.get_mut(&ino)
        {
            n.detached = true;
        }
    }

    /// Moves `parent/name` to `newparent/newname`, detaching whatever was there.
    pub(crate) fn rename(&self, parent: u64, name: &[u8], newparent: u64, newname: &[u8]) {
        let mut g = self.lock();
        if let Some(old) = g.by_name.remove(&(newparent, Box::from(newname)))
            && let Some(n) = g.nodes.get_mut(&old)
        {
            n.detached = true;
        }
        if let Some(ino) = g.by_name.remove(&(parent, Box::from(name))) {
            if let Some(n) = g.nodes.get_mut(&ino) {
                n.parent = newparent;
                n.name = newname.into();
            }
            g.by_name.insert((newparent, newname.into()), ino);
        }
    }
}
