//! Inode numbers and the nodes the kernel knows.
//!
//! A file's number is a pure function of its identity, so it survives the kernel forgetting
//! the inode and looking it up again (tar, `rsync -H`, `find`, nginx's open_file_cache and PHP
//! compare `st_ino` across calls). Like overlayfs's `xino`, the backing `st_ino` is tagged with
//! its branch in the top two bits: [`RO_TAG`] for an entry served from the RO branch (and for a
//! directory that exists on both branches, so that writing into an RO directory does not
//! renumber it), [`RW_TAG`] for one served from the RW branch. A backing file on another
//! device than its branch root (a mount inside a branch), or whose `st_ino` uses the top bits,
//! gets a [`SPILL_TAG`] number from a map kept for the life of the mount instead. The root is
//! always [`ROOT`]. The FUSE node id is the number itself.
//!
//! Copy-up moves a file from the RO to the RW branch, so its number changes from the RO one
//! to the RW one (as on overlayfs without `index`), but not while the kernel still holds the
//! inode: a name whose node is held with an RO number keeps it until the kernel forgets it.
//!
//! The table holds one node per number the kernel currently references, reachable by its
//! `(parent, name)` pairs. Each node counts the entry replies that handed it to the kernel
//! (the kernel's `nlookup`); `forget` takes them back, and a node nobody references any more
//! (no lookups left, no child nodes) is freed, so the table does not grow with every path ever
//! looked up; looking the name up again re-creates the node under the same number. Hard links
//! (on either branch) have one backing `st_ino`, hence one number and one node with several
//! names. Renames move a name; an unlinked node is detached and lives until the kernel
//! forgets it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use wcfs_core::path::WPath;

/// The FUSE root's node id.
pub(crate) const ROOT: u64 = 1;

/// Top-bit tag of numbers derived from an RO-branch `st_ino`.
pub(crate) const RO_TAG: u64 = 1 << 62;
/// Top-bit tag of numbers derived from an RW-branch `st_ino`.
pub(crate) const RW_TAG: u64 = 2 << 62;
/// Top-bit tag of numbers handed out by the spill map (identities that do not fit the tags).
pub(crate) const SPILL_TAG: u64 = 3 << 62;
const TAG_MASK: u64 = 3 << 62;

/// Most identities the spill map remembers; beyond it new ones get fresh numbers that are
/// unique but not stable across forgets (logged), so the map cannot grow without bound.
pub(crate) const SPILL_MAX: usize = 1 << 20;

/// Which branch a backing file was found on.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Origin {
    /// The read-only branch.
    Ro,
    /// The read-write branch.
    Rw,
}

struct Node {
    /// The `(parent, name)` pairs this node is reachable by; empty once detached (unlink,
    /// rmdir, rename-over). Usually one; more for hard links. `names[0]` is its path (the
    /// name most recently confirmed by a lookup).
    names: Vec<(u64, Box<[u8]>)>,
    /// Entry replies the kernel has not forgotten yet.
    lookups: u64,
    /// Names (of any node) whose parent is this node.
    children: u64,
    /// The file was copied up while this node held it: its RO number now names the RW copy,
    /// so an RO name of the same RO file that the node does not have is another file.
    copied: bool,
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<u64, Node>,
    /// Ordered so that a directory's children are one range scan.
    by_name: BTreeMap<(u64, Box<[u8]>), u64>,
}

#[derive(Default)]
struct Spill {
    map: HashMap<(Origin, u64, u64), u64>,
    /// Numbers for RO names whose RO number a copied-up node holds, by that number.
    aliases: HashMap<u64, u64>,
    next: u64,
    warned: bool,
}

/// The inode table. All methods take `&self`; one mutex guards it (operations are O(depth)).
pub(crate) struct Inodes {
    inner: Mutex<Inner>,
    /// `st_dev` of the RO and RW branch roots (`None`: unknown, every number spills).
    ro_dev: Option<u64>,
    rw_dev: Option<u64>,
    spill: Mutex<Spill>,
}

/// Whether `number` was derived from an RO-branch file (tagged [`RO_TAG`]).
pub(crate) fn is_ro_number(number: u64) -> bool {
    tag(number) == RO_TAG
}

/// The tag of `number` (`0` for [`ROOT`]).
fn tag(number: u64) -> u64 {
    number & TAG_MASK
}

impl Inner {
    fn insert(&mut self, ino: u64, parent: u64, name: &[u8]) {
        debug_assert!(!self.nodes.contains_key(&ino));
        self.nodes.insert(
            ino,
            Node {
                names: vec![(parent, name.into())],
                lookups: 0,
                children: 0,
                copied: false,
            },
        );
        self.by_name.insert((parent, name.into()), ino);
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children += 1;
        }
    }

    /// Gives `number` the name `parent/name` (which must be free), creating its node if the
    /// table does not hold it (first lookup, or looked up again after a forget).
    fn attach(&mut self, number: u64, parent: u64, name: &[u8]) {
        if self.nodes.contains_key(&number) {
            self.add_name(number, parent, name);
        } else {
            self.insert(number, parent, name);
        }
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

    /// Makes `parent/name` the node's path (it was just confirmed by a lookup; another name
    /// of a hard link may be stale, e.g. renamed behind the mount's back).
    fn promote(&mut self, ino: u64, parent: u64, name: &[u8]) {
        if let Some(n) = self.nodes.get_mut(&ino)
            && let Some(i) = n
                .names
                .iter()
                .position(|(pp, nn)| *pp == parent && **nn == *name)
        {
            n.names[..=i].rotate_right(1);
        }
    }
    /// The union path of a node: `Some(None)` for the root, `None` if unknown or detached.
    fn path_of(&self, ino: u64) -> Option<Option<WPath>> {
        let mut comps: Vec<&[u8]> = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let n = self.nodes.get(&cur)?;
            let (parent, name) = n.names.first()?;
            comps.push(name);
            // Numbers come from backing files: a directory loop in a branch (bind mounts)
            // must not hang the daemon.
            if comps.len() > libc::PATH_MAX as usize / 2 {
                return None;
            }
            cur = *parent;
        }
        if comps.is_empty() {
            return Some(None);
        }
        comps.reverse();
        WPath::new(&comps.join(&b'/')).ok().map(Some)
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
            let mut kids: Vec<u64> = self
                .by_name
                .range(lo..)
                .take_while(|((p, _), _)| *p == ino)
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
        Some(parents)
    }
}

impl Inodes {
    /// An empty table for branches whose roots are on devices `ro_dev` and `rw_dev`.
    pub(crate) fn new(ro_dev: Option<u64>, rw_dev: Option<u64>) -> Inodes {
        Inodes {
            inner: Mutex::new(Inner::default()),
            ro_dev,
            rw_dev,
            spill: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `st_dev` of a branch root, if known.
    pub(crate) fn branch_dev(&self, origin: Origin) -> Option<u64> {
        match origin {
            Origin::Ro => self.ro_dev,
            Origin::Rw => self.rw_dev,
        }
    }

    /// The number of the backing file `(dev, ino)` found on branch `origin`: the same for the
    /// same file for the life of the mount, different for different files.
    pub(crate) fn number(&self, origin: Origin, dev: u64, ino: u64) -> u64 {
        let (root_dev, t) = match origin {
            Origin::Ro => (self.ro_dev, RO_TAG),
            Origin::Rw => (self.rw_dev, RW_TAG),
        };
        if root_dev == Some(dev) && ino & TAG_MASK == 0 {
            return t | ino;
        }
        let mut s = self.spill.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&n) = s.map.get(&(origin, dev, ino)) {
            return n;
        }
        s.next += 1;
        let n = SPILL_TAG | (s.next & !TAG_MASK);
        if s.map.len() + s.aliases.len() < SPILL_MAX {
            s.map.insert((origin, dev, ino), n);
        } else if !s.warned {
            s.warned = true;
            tracing::warn!(
                max = SPILL_MAX,
                "too many files on other devices or with huge inode numbers: \
                 their st_ino may change after the kernel forgets them"
            );
        }
        n
    }

    /// The node of `parent/name`, whose file has number `number` (from [`Inodes::number`]),
    /// with one more kernel reference: call it only for a reply that hands the kernel this
    /// entry (lookup, create, mkdir, readdirplus, ...). Returns the number to reply with:
    /// `number`, or the RO number the name's node had while the kernel still holds it (the
    /// file was copied up since).
    pub(crate) fn lookup(&self, parent: u64, name: &[u8], number: u64) -> u64 {
        let mut g = self.lock();
        let number = self.unaliased(&g, parent, name, number);
        let ino = match g.by_name.get(&(parent, Box::from(name))).copied() {
            Some(n) if n == number => n,
            Some(n)
                if tag(n) == RO_TAG
                    && tag(number) == RW_TAG
                    && g.nodes.get(&n).is_some_and(|x| x.lookups > 0) =>
            {
                n
            }
            Some(n) => {
                // The name now shows another file (replaced behind the mount's back).
                g.unname(parent, name);
                g.try_free(n);
                g.attach(number, parent, name);
                number
            }
            None => {
                g.attach(number, parent, name);
                number
            }
        };
        g.promote(ino, parent, name);
        if let Some(n) = g.nodes.get_mut(&ino) {
            n.lookups += 1;
        }
        ino
    }

    /// `number` for `parent/name`, unless a copied-up node holds it under other names: then
    /// the name is another file than that node's (an RO hard link left behind by the copy-up)
    /// and gets a number of its own, remembered for the mount.
    fn unaliased(&self, g: &Inner, parent: u64, name: &[u8], number: u64) -> u64 {
        let Some(n) = g.nodes.get(&number) else {
            return number;
        };
        if !n.copied || n.names.iter().any(|(p, nm)| *p == parent && **nm == *name) {
            return number;
        }
        let mut s = self.spill.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&a) = s.aliases.get(&number) {
            return a;
        }
        s.next += 1;
        let a = SPILL_TAG | (s.next & !TAG_MASK);
        if s.map.len() + s.aliases.len() < SPILL_MAX {
            s.aliases.insert(number, a);
        }
        a
    }

    /// The number to list `parent/name` with (found by the listing as `number`): the number
    /// a lookup would give it.
    pub(crate) fn listed(&self, parent: u64, name: &[u8], number: u64) -> u64 {
        let g = self.lock();
        match g.by_name.get(&(parent, Box::from(name))) {
            Some(&n) => n,
            None => self.unaliased(&g, parent, name, number),
        }
    }

    /// Records that node `ino`'s file was copied up to the RW branch (see [`Node::copied`]).
    pub(crate) fn mark_copied(&self, ino: u64) {
        if let Some(n) = self.lock().nodes.get_mut(&ino) {
            n.copied = true;
            // A number handed out for an earlier copy-up of the same RO file may be held by
            // a name that is now this node's: start afresh.
            self.spill
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .aliases
                .remove(&ino);
        }
    }

    /// The union paths of every name of node `ino` (several for hard links).
    pub(crate) fn paths(&self, ino: u64) -> Vec<WPath> {
        let g = self.lock();
        let Some(n) = g.nodes.get(&ino) else {
            return Vec::new();
        };
        n.names
            .iter()
            .filter_map(|(parent, name)| {
                let dir = g.path_of(*parent)?;
                WPath::child_of(dir.as_ref(), name).ok()
            })
            .collect()
    }

    /// Gives node `ino` the new name `parent/name` (a hard link just made through the mount)
    /// with one more kernel reference, detaching whatever held the name. Returns `ino`.
    pub(crate) fn link(&self, ino: u64, parent: u64, name: &[u8]) -> u64 {
        let mut g = self.lock();
        if !g.nodes.contains_key(&ino) {
            drop(g);
            return self.lookup(parent, name, ino);
        }
        if let Some(old) = g.unname(parent, name) {
            g.try_free(old);
        }
        g.add_name(ino, parent, name);
        if let Some(n) = g.nodes.get_mut(&ino) {
            n.lookups += 1;
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

    /// Whether the daemon still has node `ino` (the kernel holds it, or a child of it).
    pub(crate) fn exists(&self, ino: u64) -> bool {
        ino == ROOT || self.lock().nodes.contains_key(&ino)
    }

    /// Live nodes, the root included.
    pub(crate) fn len(&self) -> usize {
        self.lock().nodes.len() + 1
    }

    /// The node of `parent/name` if the kernel holds it (or one of its children).
    pub(crate) fn find(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.lock().by_name.get(&(parent, Box::from(name))).copied()
    }

    /// The node of a path, if every component has a node.
    pub(crate) fn find_path(&self, path: &WPath) -> Option<u64> {
        let g = self.lock();
        let mut cur = ROOT;
        for c in path.components() {
            cur = *g.by_name.get(&(cur, Box::from(c)))?;
        }
        Some(cur)
    }

    /// Every name under directory `top` the daemon knows (hence every name the kernel may
    /// have cached there), as `(parent, name, node)`, parents before their children. Bounded
    /// by the nodes the kernel holds.
    pub(crate) fn subtree(&self, top: u64) -> Vec<(u64, Box<[u8]>, u64)> {
        let g = self.lock();
        let mut out = Vec::new();
        let mut dirs = vec![top];
        while let Some(dir) = dirs.pop() {
            let start = (dir, Box::<[u8]>::from(&[][..]));
            for ((parent, name), ino) in g.by_name.range(start..) {
                if *parent != dir {
                    break;
                }
                out.push((*parent, name.clone(), *ino));
                // A node with children is a directory; a loop (bind-mounted branch) would
                // revisit nodes, so stop at the node count.
                if g.nodes.get(ino).is_some_and(|n| n.children > 0) && out.len() <= g.nodes.len() {
                    dirs.push(*ino);
                }
            }
        }
        out
    }

    /// The union path of a node: `Ok(None)` for the root, `Err(())` if unknown or detached.
    pub(crate) fn path(&self, ino: u64) -> Result<Option<WPath>, ()> {
        self.lock().path_of(ino).ok_or(())
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

    const DEV: u64 = 7;

    fn table() -> Inodes {
        Inodes::new(Some(DEV), Some(DEV))
    }

    #[test]
    fn numbers_are_a_function_of_branch_and_backing_inode() {
        let t = table();
        let ro = t.number(Origin::Ro, DEV, 42);
        let rw = t.number(Origin::Rw, DEV, 42);
        assert_ne!(ro, rw);
        assert_ne!(ro, ROOT);
        assert_eq!(t.number(Origin::Ro, DEV, 42), ro);
        assert_ne!(t.number(Origin::Ro, DEV, 43), ro);
        // Another device, or a number using the tag bits: a remembered spill number.
        let other = t.number(Origin::Ro, DEV + 1, 42);
        let huge = t.number(Origin::Rw, DEV, u64::MAX);
        for n in [other, huge] {
            assert_eq!(tag(n), SPILL_TAG);
        }
        assert_ne!(other, huge);
        assert_eq!(t.number(Origin::Ro, DEV + 1, 42), other);
        assert_eq!(t.number(Origin::Rw, DEV, u64::MAX), huge);
        assert_ne!(t.number(Origin::Rw, DEV + 1, 42), other);
    }

    #[test]
    fn forgotten_nodes_are_freed_and_come_back_with_their_number() {
        let t = table();
        let (nd, nf) = (t.number(Origin::Ro, DEV, 10), t.number(Origin::Ro, DEV, 11));
        let d = t.lookup(ROOT, b"d", nd);
        let f = t.lookup(d, b"f", nf);
        assert_eq!((d, f), (nd, nf));
        assert_eq!(t.lookup(d, b"f", nf), f);
        assert_eq!(t.len(), 3);
        t.forget(d, 1);
        // `f` still references `d`.
        assert_eq!(t.path(f).unwrap().unwrap().as_bytes(), b"d/f");
        t.forget(f, 1);
        assert_eq!(t.len(), 3);
        t.forget(f, 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.find(ROOT, b"d"), None);
        assert!(t.path(f).is_err());
        assert_eq!(t.lookup(ROOT, b"d", nd), d);
        assert_eq!(t.lookup(d, b"f", nf), f);
        assert_eq!(t.path(f).unwrap().unwrap().as_bytes(), b"d/f");
    }

    #[test]
    fn a_copied_up_file_keeps_its_number_while_held_and_a_replaced_one_does_not() {
        let t = table();
        let (ro, rw) = (t.number(Origin::Ro, DEV, 5), t.number(Origin::Rw, DEV, 9));
        assert_eq!(t.lookup(ROOT, b"a", ro), ro);
        assert_eq!(t.lookup(ROOT, b"a", rw), ro);
        t.forget(ro, 2);
        assert_eq!(t.lookup(ROOT, b"a", rw), rw);
        // Another RW file under the same name (made behind the mount's back).
        let rw2 = t.number(Origin::Rw, DEV, 10);
        assert_eq!(t.lookup(ROOT, b"a", rw2), rw2);
        assert!(t.path(rw).is_err(), "the old node is detached");
        t.forget(rw, 1);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn an_ro_link_left_behind_by_a_copy_up_is_numbered_apart_until_the_copy_is_forgotten() {
        let t = table();
        let ro = t.number(Origin::Ro, DEV, 5);
        assert_eq!(t.lookup(ROOT, b"a", ro), ro);
        t.mark_copied(ro);
        let other = t.lookup(ROOT, b"b", ro);
        assert_ne!(other, ro);
        assert_eq!(t.listed(ROOT, b"b", ro), other);
        assert_eq!(t.listed(ROOT, b"c", ro), other, "the same RO file, listed");
        t.forget(other, 1);
        assert_eq!(
            t.lookup(ROOT, b"b", ro),
            other,
            "stable while the copy is held"
        );
        t.forget(other, 1);
        t.forget(ro, 1);
        assert_eq!(t.lookup(ROOT, b"b", ro), ro);
    }

    #[test]
    fn hard_links_share_a_node_until_every_name_is_gone() {
        let t = table();
        let n = t.number(Origin::Rw, DEV, 42);
        let a = t.lookup(ROOT, b"a", n);
        assert_eq!(t.lookup(ROOT, b"b", n), a);
        assert_eq!(t.link(a, ROOT, b"l"), a);
        t.detach(ROOT, b"a");
        assert_eq!(t.path(a).unwrap().unwrap().as_bytes(), b"b");
        t.rename(ROOT, b"b", ROOT, b"c");
        assert_eq!(t.path(a).unwrap().unwrap().as_bytes(), b"c");
        t.detach(ROOT, b"c");
        assert_eq!(t.path(a).unwrap().unwrap().as_bytes(), b"l");
        t.detach(ROOT, b"l");
        assert!(t.path(a).is_err());
        t.forget(a, 3);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn the_latest_looked_up_name_of_a_link_is_its_path() {
        let t = table();
        let n = t.number(Origin::Rw, DEV, 3);
        t.lookup(ROOT, b"old", n);
        t.lookup(ROOT, b"new", n);
        assert_eq!(t.path(n).unwrap().unwrap().as_bytes(), b"new");
        t.lookup(ROOT, b"old", n);
        assert_eq!(t.path(n).unwrap().unwrap().as_bytes(), b"old");
    }
}
