//! Inode numbers: a tree of `(parent, name)` nodes, one per path the kernel currently knows.
//!
//! A node keeps its number for as long as the kernel holds it (numbers are never reused), so
//! the same path shows the same `st_ino` while it is cached. Each node counts the entry
//! replies that handed it to the kernel (the kernel's `nlookup`); `forget` takes them back,
//! and a node nobody references any more (no lookups left, no child nodes) is freed, so the
//! table does not grow with every path ever looked up. Renames move a node (with its subtree)
//! instead of renumbering; an unlinked node is detached and lives until the kernel forgets it.
//!
//! Hard links on the RW branch share one node: a node may have several names, and RW files
//! with more than one link are also indexed by their backing `(st_dev, st_ino)`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use wcfs_core::path::WPath;

/// The FUSE root's node id.
pub(crate) const ROOT: u64 = 1;

/// Most nodes kept that the kernel was never handed (listed by `readdir` but not looked up);
/// beyond it the oldest are freed, so listing huge directories cannot grow the table forever.
pub(crate) const UNREFERENCED_MAX: usize = 65_536;

/// A backing file's identity on the RW branch: `(st_dev, st_ino)`.
pub(crate) type BackingKey = (u64, u64);

struct Node {
    /// The `(parent, name)` pairs this node is reachable by; empty once detached (unlink,
    /// rmdir, rename-over). Usually one; more for hard links. `names[0]` is its path.
    names: Vec<(u64, Box<[u8]>)>,
    /// Entry replies the kernel has not forgotten yet.
    lookups: u64,
    /// Names (of any node) whose parent is this node.
    children: u64,
    /// Registered in `by_backing` under this key.
    backing: Option<BackingKey>,
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<u64, Node>,
    /// Ordered so that a directory's children are one range scan.
    by_name: BTreeMap<(u64, Box<[u8]>), u64>,
    by_backing: HashMap<BackingKey, u64>,
    /// Nodes created with no kernel reference, oldest first (may hold stale numbers).
    unreferenced: VecDeque<u64>,
    next: u64,
}

/// The inode table. All methods take `&self`; one mutex guards it (operations are O(depth)).
pub(crate) struct Inodes {
    inner: Mutex<Inner>,
}

impl Inner {
    fn insert(&mut self, parent: u64, name: &[u8], backing: Option<BackingKey>) -> u64 {
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node {
                names: vec![(parent, name.into())],
                lookups: 0,
                children: 0,
                backing,
            },
        );
        self.by_name.insert((parent, name.into()), ino);
        if let Some(k) = backing {
            self.by_backing.insert(k, ino);
        }
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children += 1;
        }
        ino
    }

    /// Removes the name `parent/name` from whatever node holds it; returns that node.
    fn unname(&mut self, parent: u64, name: &[u8]) -> Option<u64> {
        let ino = self.by_name.remove(&(parent, Box::from(name)))?;
        if let Some(p) = self.nodes.get_mut(&parent) {
            debug_assert!(p.children > 0);
            p.children = p.children.saturating_sub(1);
        }
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.names.retain(|(pp, nn)| !(*pp == parent && **nn == *name));
            if n.names.is_empty()
                && let Some(k) = n.backing.take()
                && self.by_backing.get(&k) == Some(&ino)
            {
                // A detached file's (dev, ino) may be reused by a new file.
                self.by_backing.remove(&k);
            }
        }
        Some(ino)
    }

    fn add_name(&mut self, ino: u64, parent: u64, name: &[u8]) {
        self.by_name.insert((parent, name.into()), ino);
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children += 1;
        }
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.names.push((parent, name.into()));
        }
    }

    /// Frees `ino` if nothing references it, then its parents that became unreferenced.
    fn try_free(&mut self, ino: u64) {
        let mut stack = vec![ino];
        while let Some(ino) = stack.pop() {
            if let Some(parents) = self.free_down(ino) {
                stack.extend(parents);
            }
        }
    }

    /// Frees `ino` if the kernel holds no reference to it, first freeing its unreferenced
    /// children (the kernel cannot hold a child of a directory it forgot, so they are only
    /// listed names). Returns the freed node's parents, `None` if it stays.
    fn free_down(&mut self, ino: u64) -> Option<Vec<u64>> {
        if ino == ROOT {
            return None;
        }
        let n = self.nodes.get(&ino)?;
        if n.lookups > 0 {
            return None;
        }
        if n.children > 0 {
            let lo = (ino, Box::<[u8]>::from(&b""[..]));
            let hi = (ino + 1, Box::<[u8]>::from(&b""[..]));
            let mut kids: Vec<u64> = self
                .by_name
                .range(lo..hi)
                .map(|(_, &c)| c)
                .filter(|&c| c != ino && self.nodes.get(&c).is_some_and(|c| c.lookups == 0))
                .collect();
            kids.dedup();
            for k in kids {
                // Parents of `k` other than `ino` may now be unreferenced too.
                if let Some(ps) = self.free_down(k) {
                    for p in ps.into_iter().filter(|&p| p != ino) {
                        self.try_free(p);
                    }
                }
            }
            if self.nodes.get(&ino).is_none_or(|n| n.children > 0) {
                return None;
            }
        }
        let n = self.nodes.remove(&ino)?;
        let mut parents = Vec::with_capacity(n.names.len());
        for (parent, name) in n.names {
            let key = (parent, name);
            if self.by_name.get(&key) == Some(&ino) {
                self.by_name.remove(&key);
                if let Some(p) = self.nodes.get_mut(&parent) {
                    p.children = p.children.saturating_sub(1);
                }
            }
            parents.push(parent);
        }
        if let Some(k) = n.backing
            && self.by_backing.get(&k) == Some(&ino)
        {
            self.by_backing.remove(&k);
        }
        Some(parents)
    }
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

    /// The node of `parent/name`, created if new, with one more kernel reference: call it only
    /// for a reply that hands the kernel this entry (lookup, create, mkdir, readdirplus, ...).
    /// `backing` (an RW file with more than one link) makes every name of the same backing
    /// file share one node.
    pub(crate) fn lookup(&self, parent: u64, name: &[u8], backing: Option<BackingKey>) -> u64 {
        let mut g = self.lock();
        let mut ino = g.by_name.get(&(parent, Box::from(name))).copied();
        if let (Some(n), Some(k)) = (ino, backing) {
            let other = g.by_backing.get(&k).copied();
            let node = g.nodes.get(&n);
            let known = node.is_some_and(|x| x.lookups > 0);
            match other {
                Some(m) if m != n && !known => {
                    // The name got its own node before its link count was seen (a listing):
                    // the kernel does not know that node, so move the name to the shared one.
                    g.unname(parent, name);
                    g.try_free(n);
                    g.add_name(m, parent, name);
                    ino = Some(m);
                }
                None => {
                    if let Some(x) = g.nodes.get_mut(&n)
                        && x.backing.is_none()
                    {
                        x.backing = Some(k);
                        g.by_backing.insert(k, n);
                    }
                }
                _ => {}
            }
        }
        let ino = match ino {
            Some(i) => i,
            None => match backing.and_then(|k| g.by_backing.get(&k).copied()) {
                Some(m) => {
                    g.add_name(m, parent, name);
                    m
                }
                None => g.insert(parent, name, backing),
            },
        };
        if let Some(n) = g.nodes.get_mut(&ino) {
            n.lookups += 1;
        }
        ino
    }

    /// Registers `ino` as the node of RW backing file `key` (it just got a second name), so
    /// that every other name of the file resolves to it.
    pub(crate) fn set_backing(&self, ino: u64, key: BackingKey) {
        let mut g = self.lock();
        let Some(n) = g.nodes.get_mut(&ino) else {
            return;
        };
        if n.names.is_empty() {
            return;
        }
        if let Some(old) = n.backing.replace(key)
            && old != key
            && g.by_backing.get(&old) == Some(&ino)
        {
            g.by_backing.remove(&old);
        }
        g.by_backing.insert(key, ino);
    }

    /// The node of `parent/name` for a plain listing (no kernel reference is taken), created
    /// if new; unreferenced nodes are bounded by [`UNREFERENCED_MAX`].
    pub(crate) fn peek(&self, parent: u64, name: &[u8]) -> u64 {
        let mut g = self.lock();
        if let Some(&ino) = g.by_name.get(&(parent, Box::from(name))) {
            return ino;
        }
        let ino = g.insert(parent, name, None);
        g.unreferenced.push_back(ino);
        while g.unreferenced.len() > UNREFERENCED_MAX {
            if let Some(old) = g.unreferenced.pop_front() {
                g.try_free(old);
            }
        }
        ino
    }

    /// The kernel dropped `n` references to `ino`; frees what nothing references any more.
    pub(crate) fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut g = self.lock();
        let Some(node) = g.nodes.get_mut(&ino) else {
            tracing::debug!(ino, "forget of an unknown inode");
            return;
        };
        debug_assert!(node.lookups >= n, "forget more than looked up");
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            g.try_free(ino);
        }
    }

    /// Live nodes, the root included.
    pub(crate) fn len(&self) -> usize {
        self.lock().nodes.len() + 1
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
            let (parent, name) = n.names.first().ok_or(())?;
            comps.push(name);
            cur = *parent;
        }
        comps.reverse();
        WPath::new(&comps.join(&b'/')).map(Some).map_err(|_| ())
    }

    /// Detaches `parent/name` (unlink, rmdir, or the target of a rename). A node with other
    /// names (hard links) stays reachable by them.
    pub(crate) fn detach(&self, parent: u64, name: &[u8]) {
        let mut g = self.lock();
        if let Some(ino) = g.unname(parent, name) {
            g.try_free(ino);
        }
    }

    /// Moves `parent/name` to `newparent/newname`, detaching whatever was there.
    pub(crate) fn rename(&self, parent: u64, name: &[u8], newparent: u64, newname: &[u8]) {
        let mut g = self.lock();
        if let Some(old) = g.unname(newparent, newname) {
            g.try_free(old);
        }
        let Some(ino) = g.by_name.remove(&(parent, Box::from(name))) else {
            return;
        };
        if let Some(p) = g.nodes.get_mut(&parent) {
            p.children = p.children.saturating_sub(1);
        }
        if let Some(n) = g.nodes.get_mut(&ino) {
            for nm in n.names.iter_mut() {
                if nm.0 == parent && *nm.1 == *name {
                    *nm = (newparent, newname.into());
                }
            }
        }
        g.by_name.insert((newparent, newname.into()), ino);
        if let Some(p) = g.nodes.get_mut(&newparent) {
            p.children += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgotten_nodes_are_freed_with_their_unreferenced_parents() {
        let t = Inodes::new();
        let d = t.lookup(ROOT, b"d", None);
        let f = t.lookup(d, b"f", None);
        assert_eq!(t.lookup(d, b"f", None), f);
        assert_eq!(t.len(), 3);
        t.forget(d, 1);
        // `f` still references `d`.
        assert_eq!(t.path(f).unwrap().unwrap().as_bytes(), b"d/f");
        t.forget(f, 1);
        assert_eq!(t.len(), 3);
        t.forget(f, 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.find(ROOT, b"d"), None);
        // Numbers are never reused.
        assert!(t.lookup(ROOT, b"d", None) > f);
    }

    #[test]
    fn listed_children_go_with_their_forgotten_directory() {
        let t = Inodes::new();
        let d = t.lookup(ROOT, b"d", None);
        for i in 0..10u8 {
            t.peek(d, &[b'a' + i]);
        }
        assert_eq!(t.len(), 12);
        t.forget(d, 1);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn hard_links_share_a_node_until_every_name_is_gone() {
        let t = Inodes::new();
        let k = Some((1, 42));
        let a = t.lookup(ROOT, b"a", k);
        let listed = t.peek(ROOT, b"b");
        assert_ne!(listed, a);
        assert_eq!(t.lookup(ROOT, b"b", k), a);
        t.detach(ROOT, b"a");
        assert_eq!(t.path(a).unwrap().unwrap().as_bytes(), b"b");
        t.rename(ROOT, b"b", ROOT, b"c");
        assert_eq!(t.path(a).unwrap().unwrap().as_bytes(), b"c");
        t.detach(ROOT, b"c");
        assert!(t.path(a).is_err());
        t.forget(a, 2);
        assert_eq!(t.len(), 1);
    }
}
