//! The table's path tree: one node per path that has state or has descendants with state,
//! names stored once per directory entry in a byte arena, and an open-addressing index from
//! `(parent, name)` to node. Everything lives in flat, chunked arrays of plain-old-data so that
//! a snapshot is these arrays written out and reopening one is reading them back.

use bytemuck::{Pod, Zeroable};

use crate::path::{MAX_DEPTH, WPath};

/// Index of a node in the tree. The root is node 0.
pub(crate) type NodeId = u32;
/// "No node" in links.
pub(crate) const NIL: u32 = u32::MAX;
/// `parent` value of a node on the free list.
pub(crate) const FREE: u32 = u32::MAX - 1;
/// The root directory's node.
pub(crate) const ROOT: NodeId = 0;

const NODE_CHUNK_SHIFT: u32 = 16;

const NAME_CHUNK_SHIFT: u32 = 20;

const MIN_SLOTS: usize = 1024;

/// Longest name stored inside the node itself; longer ones live in the names arena.
pub(crate) const INLINE_NAME: usize = 19;

/// One path in the tree. 48 bytes, no padding, so chunks of nodes are plain bytes on disk.
/// Short names (nearly all: `2024`, `uploads`, `img-123456.jpg`) sit in the node, so checking a
/// lookup's guess costs one cache miss, not two.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct Node {
    pub parent: u32,
    pub first_child: u32,
    pub next_sibling: u32,
    pub prev_sibling: u32,
    /// Rolling hash of the whole path (`hash_name` of the parent's hash and this name): the
    /// index's tag and probe start. Being a function of the path bytes alone, every level of a
    /// lookup can be probed at once, so their cache misses overlap instead of queueing.
    pub hash: u32,
    /// Byte 0: the name's length. Up to [`INLINE_NAME`] bytes: the name follows. Longer: bytes
    /// 4..8 hold its offset in the names arena (one length byte, then the bytes).
    pub name: [u8; 20],
    /// The packed CRDT state (see `state.rs`); 0 = none.
    pub state: u64,
}

impl Node {
    /// Arena offset of a long name, `None` for an inline one.
    #[inline]
    pub fn arena_off(&self) -> Option<usize> {
        if self.name[0] as usize <= INLINE_NAME {
            return None;
        }
        Some(u32::from_le_bytes([self.name[4], self.name[5], self.name[6], self.name[7]]) as usize)
    }
}

/// A vector stored as fixed-size chunks: growth never copies or doubles, so capacity stays
/// within one chunk of the length — at 10M entries a doubling `Vec` would waste up to half.
/// The first chunk alone starts small and doubles up to the full chunk size (a table of a few
/// paths, or a simulator running a thousand tables, must not hold megabytes each); indices
/// map to chunks exactly as if every chunk were full, so names pad to the same boundaries
/// and the snapshot layout does not depend on it. Invariant: every chunk but a lone first
/// one is full size.
#[derive(Clone, Debug)]
pub(crate) struct Chunked<T: Pod, const SHIFT: u32> {
    pub chunks: Vec<Box<[T]>>,
    pub len: usize,
}

impl<T: Pod, const SHIFT: u32> Default for Chunked<T, SHIFT> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Pod, const SHIFT: u32> Chunked<T, SHIFT> {
    const CHUNK: usize = 1 << SHIFT;
    /// Size of a fresh first chunk.
    const FIRST: usize = if Self::CHUNK >> 8 > 64 {
        Self::CHUNK >> 8
    } else if Self::CHUNK < 64 {
        Self::CHUNK
    } else {
        64
    };

    #[inline]
    pub fn get(&self, i: usize) -> &T {
        debug_assert!(i < self.len);
        &self.chunks[i >> SHIFT][i & (Self::CHUNK - 1)]
    }
    #[inline]
    pub fn get_mut(&mut self, i: usize) -> &mut T {
        debug_assert!(i < self.len);
        &mut self.chunks[i >> SHIFT][i & (Self::CHUNK - 1)]
    }
    /// Makes indices `[0, end)` addressable (zeroed where new).
    fn ensure(&mut self, end: usize) {
        if end == 0 {
            return;
        }
        let last = (end - 1) >> SHIFT;
        let first_needs = if last >= 1 { Self::CHUNK } else { end };
        match self.chunks.first_mut() {
            None => {
                let mut n = Self::FIRST;
                while n < first_needs {
                    n *= 2;
                }
                self.chunks
                    .push(bytemuck::allocation::zeroed_slice_box(n.min(Self::CHUNK)));
            }
            Some(c0) if c0.len() < first_needs => {
                let mut n = c0.len().max(1);
                while n < first_needs {
                    n *= 2;
                }
                let mut grown: Box<[T]> =
                    bytemuck::allocation::zeroed_slice_box(n.min(Self::CHUNK));
                grown[..c0.len()].copy_from_slice(c0);
                *c0 = grown;
            }
            Some(_) => {}
        }
        while last >= self.chunks.len() {
            self.chunks
                .push(bytemuck::allocation::zeroed_slice_box(Self::CHUNK));
        }
        debug_assert!(self.chunks.len() == 1 || self.chunks.iter().all(|c| c.len() == Self::CHUNK));
    }
    pub fn push(&mut self, v: T) -> usize {
        let i = self.len;
        self.ensure(i + 1);
        self.len += 1;
        *self.get_mut(i) = v;
        i
    }
    /// Makes sure `[len, len + n)` lies in one chunk by padding `len` to a chunk boundary if
    /// needed; returns the start. Used by the names arena so a name never straddles chunks.
    pub fn reserve_contiguous(&mut self, n: usize) -> usize {
        debug_assert!(n <= Self::CHUNK);
        let start = self.len;
        let in_chunk = start & (Self::CHUNK - 1);
        let start = if in_chunk + n > Self::CHUNK {
            start + (Self::CHUNK - in_chunk)
        } else {
            start
        };
        let end = start + n;
        self.ensure(end);
        self.len = end;
        start
    }
    pub fn slice(&self, start: usize, n: usize) -> &[T] {
        let c = start >> SHIFT;
        let o = start & (Self::CHUNK - 1);
        &self.chunks[c][o..o + n]
    }
    pub fn slice_mut(&mut self, start: usize, n: usize) -> &mut [T] {
        let c = start >> SHIFT;
        let o = start & (Self::CHUNK - 1);
        &mut self.chunks[c][o..o + n]
    }
    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum::<usize>() * size_of::<T>()
            + self.chunks.capacity() * size_of::<Box<[T]>>()
    }
}

pub(crate) type Nodes = Chunked<Node, NODE_CHUNK_SHIFT>;
pub(crate) type Names = Chunked<u8, NAME_CHUNK_SHIFT>;

/// The path tree with its name arena and child index.
#[derive(Clone, Debug)]
pub(crate) struct Tree {
    pub seed: u64,
    pub nodes: Nodes,
    pub names: Names,
    /// Open addressing, linear probing: 0 = empty, else `(hash << 32) | (node + 1)`.
    pub slots: Vec<u64>,
    /// Nodes in use, the root included.
    pub live: usize,
    /// Head of the free node list (linked through `next_sibling`).
    pub free_head: u32,
    /// Freed name slots by length, for reuse.
    pub free_names: Vec<Vec<u32>>,
}

/// The tree ran out of 32-bit node or name space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("table is full: more than 4 billion nodes or 4 GiB of names")]
pub struct Full;

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let r = (a as u128) * (b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Hash of a name under a parent whose own path hash is `parent` (0 for the root). Seeded per
/// table (from the caller's RNG) so that names chosen by users cannot be crafted to collide.
#[inline]
pub(crate) fn hash_name(seed: u64, parent: u32, name: &[u8]) -> u32 {
    const K1: u64 = 0x9E37_79B9_7F4A_7C15;
    const K2: u64 = 0xD6E8_FEB8_6659_FD93;
    let mut h = fold(seed ^ (parent as u64) ^ ((name.len() as u64) << 40), K1);
    let mut chunks = name.chunks_exact(8);
    for c in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        h = fold(h ^ u64::from_le_bytes(a), K2);
    }
    let rem = chunks.remainder();
    if !rem.is_empty() {
        let mut a = [0u8; 8];
        a[..rem.len()].copy_from_slice(rem);
        h = fold(h ^ u64::from_le_bytes(a), K1);
    }
    let h = fold(h, K2);
    (h >> 32) as u32 ^ (h as u32)
}

impl Tree {
    pub fn new(seed: u64) -> Tree {
        let mut t = Tree {
            seed,
            nodes: Nodes::default(),
            names: Names::default(),
            slots: vec![0; MIN_SLOTS],
            live: 1,
            free_head: NIL,
            free_names: vec![Vec::new(); 256],
        };
        t.nodes.push(Node {
            parent: NIL,
            first_child: NIL,
            next_sibling: NIL,
            prev_sibling: NIL,
            hash: 0,
            name: [0; 20],
            state: 0,
        });
        t
    }

    #[inline]
    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes.get(id as usize)
    }
    #[inline]
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes.get_mut(id as usize)
    }

    #[inline]
    pub fn name(&self, id: NodeId) -> &[u8] {
        let n = self.node(id);
        let len = n.name[0] as usize;
        match n.arena_off() {
            None => &n.name[1..1 + len],
            Some(off) => self.names.slice(off + 1, len),
        }
    }

    #[inline]
    fn slot_pos(&self, hash: u32) -> usize {
        let bits = self.slots.len().trailing_zeros();
        ((hash as u64 * self.slots.len() as u64) >> 32) as usize & ((1usize << bits) - 1)
    }

    /// The child of `parent` named `name`, if it has a node.
    #[inline]
    pub fn child(&self, parent: NodeId, name: &[u8]) -> Option<NodeId> {
        let hash = hash_name(self.seed, self.node(parent).hash, name);
        self.child_hashed(parent, name, hash)
    }

    /// [`Tree::child`] with the hash already computed.
    #[inline]
    pub fn child_hashed(&self, parent: NodeId, name: &[u8], hash: u32) -> Option<NodeId> {
        self.tagged(hash)
            .find(|&id| self.node(id).parent == parent && self.name(id) == name)
    }

    /// The first node in `hash`'s probe run whose tag matches, without verifying it: a guess
    /// the caller checks. Lets a caller issue the probes for every level of a path before
    /// waiting on any of them.
    #[inline]
    pub fn probe_tag(&self, hash: u32) -> Option<NodeId> {
        self.tagged(hash).next()
    }

    /// The nodes in `hash`'s probe run whose tag matches, in probe order.
    #[inline]
    fn tagged(&self, hash: u32) -> impl Iterator<Item = NodeId> + '_ {
        let mask = self.slots.len() - 1;
        let mut pos = self.slot_pos(hash);
        std::iter::from_fn(move || {
            loop {
                let s = self.slots[pos];
                if s == 0 {
                    return None;
                }
                pos = (pos + 1) & mask;
                if (s >> 32) as u32 == hash {
                    return Some((s as u32).wrapping_sub(1));
                }
            }
        })
    }

    /// The node for `path`, if it has one.
    pub fn find(&self, path: &WPath) -> Option<NodeId> {
        let mut cur = ROOT;
        for c in path.components() {
            cur = self.child(cur, c)?;
        }
        Some(cur)
    }

    /// The node for `path`, creating it and any missing ancestors.
    pub fn find_or_insert(&mut self, path: &WPath) -> Result<NodeId, Full> {
        let mut cur = ROOT;
        for c in path.components() {
            cur = match self.child(cur, c) {
                Some(id) => id,
                None => self.insert_child(cur, c)?,
            };
        }
        Ok(cur)
    }

    fn name_repr(&mut self, name: &[u8]) -> Result<[u8; 20], Full> {
        let mut repr = [0u8; 20];
        repr[0] = name.len() as u8;
        if name.len() <= INLINE_NAME {
            repr[1..1 + name.len()].copy_from_slice(name);
        } else {
            let off = self.alloc_name(name)?;
            repr[4..8].copy_from_slice(&off.to_le_bytes());
        }
        Ok(repr)
    }

    fn alloc_name(&mut self, name: &[u8]) -> Result<u32, Full> {
        debug_assert!(name.len() > INLINE_NAME && name.len() <= 255);
        let off = match self.free_names[name.len()].pop() {
            Some(off) => off as usize,
            None => {
                let off = self.names.reserve_contiguous(name.len() + 1);
                if off + name.len() + 1 > u32::MAX as usize {
                    return Err(Full);
                }
                off
            }
        };
        let dst = self.names.slice_mut(off, name.len() + 1);
        dst[0] = name.len() as u8;
        dst[1..].copy_from_slice(name);
        Ok(off as u32)
    }

    fn insert_child(&mut self, parent: NodeId, name: &[u8]) -> Result<NodeId, Full> {
        if (self.live + 1) * 4 > self.slots.len() * 3 {
            self.grow_slots();
        }
        let name_repr = self.name_repr(name)?;
        let hash = hash_name(self.seed, self.node(parent).hash, name);
        let first = self.node(parent).first_child;
        let node = Node {
            parent,
            first_child: NIL,
            next_sibling: first,
            prev_sibling: NIL,
            hash,
            name: name_repr,
            state: 0,
        };
        let id = if self.free_head != NIL {
            let id = self.free_head;
            self.free_head = self.node(id).next_sibling;
            *self.node_mut(id) = node;
            id
        } else {
            if self.nodes.len >= FREE as usize {
                return Err(Full);
            }
            self.nodes.push(node) as u32
        };
        if first != NIL {
            self.node_mut(first).prev_sibling = id;
        }
        self.node_mut(parent).first_child = id;
        self.live += 1;
        self.slot_insert(hash, id);
        Ok(id)
    }

    fn slot_insert(&mut self, hash: u32, id: NodeId) {
        let mask = self.slots.len() - 1;
        let mut pos = self.slot_pos(hash);
        while self.slots[pos] != 0 {
            pos = (pos + 1) & mask;
        }
        self.slots[pos] = ((hash as u64) << 32) | (id as u64 + 1);
    }

    fn grow_slots(&mut self) {
        let doubled = vec![0; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        for s in old {
            if s != 0 {
                self.slot_insert((s >> 32) as u32, (s as u32) - 1);
            }
        }
    }

    /// Removes `id` from the index (backward-shift deletion keeps probe runs unbroken).
    fn slot_remove(&mut self, id: NodeId) {
        let hash = self.node(id).hash;
        let mask = self.slots.len() - 1;
        let want = ((hash as u64) << 32) | (id as u64 + 1);
        let mut pos = self.slot_pos(hash);
        while self.slots[pos] != want {
            // Absent only in a tree loaded from a snapshot whose hashes were damaged behind a
            // valid checksum: leave the index as it is rather than fail.
            if self.slots[pos] == 0 {
                return;
            }
            pos = (pos + 1) & mask;
        }
        let mut hole = pos;
        let mut next = (pos + 1) & mask;
        loop {
            let s = self.slots[next];
            if s == 0 {
                break;
            }
            let home = self.slot_pos((s >> 32) as u32);
            // Move `s` into the hole if its home is not in (hole, next] cyclically.
            let dist_next = next.wrapping_sub(home) & mask;
            let dist_hole = hole.wrapping_sub(home) & mask;
            if dist_hole < dist_next {
                self.slots[hole] = s;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.slots[hole] = 0;
    }

    /// Frees `id` and then each ancestor that is left with no state and no children.
    pub fn remove_if_empty(&mut self, mut id: NodeId) {
        while id != ROOT {
            let n = *self.node(id);
            if n.state != 0 || n.first_child != NIL || n.parent == FREE {
                return;
            }
            self.slot_remove(id);
            if n.prev_sibling != NIL {
                self.node_mut(n.prev_sibling).next_sibling = n.next_sibling;
            } else {
                self.node_mut(n.parent).first_child = n.next_sibling;
            }
            if n.next_sibling != NIL {
                self.node_mut(n.next_sibling).prev_sibling = n.prev_sibling;
            }
            if let Some(off) = n.arena_off() {
                self.free_names[n.name[0] as usize].push(off as u32);
            }
            *self.node_mut(id) = Node {
                parent: FREE,
                first_child: NIL,
                next_sibling: self.free_head,
                prev_sibling: NIL,
                hash: 0,
                name: [0; 20],
                state: 0,
            };
            self.free_head = id;
            self.live -= 1;
            id = n.parent;
        }
    }

    /// Whether `id` is a node in use.
    #[inline]
    pub fn is_live(&self, id: NodeId) -> bool {
        (id as usize) < self.nodes.len && self.node(id).parent != FREE
    }

    /// The path of a node other than the root.
    pub fn path_of(&self, id: NodeId) -> WPath {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut cur = id;
        while cur != ROOT && parts.len() <= MAX_DEPTH {
            parts.push(self.name(cur));
            cur = self.node(cur).parent;
        }
        debug_assert!(cur == ROOT, "parent chain does not reach the root");
        let mut bytes = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
        for (i, p) in parts.iter().rev().enumerate() {
            if i > 0 {
                bytes.push(b'/');
            }
            bytes.extend_from_slice(p);
        }
        // Every stored name was validated and the tree mirrors validated paths, so this
        // cannot fail for a tree built through the API or a validated snapshot.
        WPath::new(&bytes)
            .unwrap_or_else(|e| panic!("corrupt tree: node {id} has invalid path: {e}"))
    }

    /// Children of `id`, most recently inserted first. Bounded by the node count, so even a
    /// damaged sibling list cannot make it loop.
    pub fn children(&self, id: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        let mut cur = self.node(id).first_child;
        let mut budget = self.nodes.len;
        std::iter::from_fn(move || {
            if cur == NIL || budget == 0 {
                return None;
            }
            budget -= 1;
            let c = cur;
            cur = self.node(c).next_sibling;
            Some(c)
        })
    }

    /// Heap bytes held by the tree.
    pub fn heap_bytes(&self) -> usize {
        self.nodes.heap_bytes()
            + self.names.heap_bytes()
            + self.slots.capacity() * 8
            + self
                .free_names
                .iter()
                .map(|v| v.capacity() * 4)
                .sum::<usize>()
            + self.free_names.capacity() * size_of::<Vec<u32>>()
    }
}

pub(crate) const NAME_CHUNK_BYTES: usize = 1 << NAME_CHUNK_SHIFT;
pub(crate) const NODE_CHUNK_LEN: usize = 1 << NODE_CHUNK_SHIFT;

#[cfg(test)]
mod chunk_tests {
    use super::Chunked;

    #[test]
    fn a_small_arena_holds_little_and_grows_to_the_fixed_layout() {
        // 256-element chunks (the first one starts at 64), so the test crosses several
        // boundaries.
        let mut c: Chunked<u32, 8> = Chunked::default();
        assert_eq!(c.heap_bytes(), 0);
        let mut model: Vec<Option<u32>> = Vec::new();
        for i in 0..5u32 {
            c.push(i);
            model.push(Some(i));
        }
        assert_eq!((c.chunks.len(), c.chunks[0].len()), (1, 64));
        // A run that does not fit in what is left of the chunk starts at the next boundary,
        // exactly where it would with full-size chunks.
        for (k, n) in [(3usize, 70usize), (4, 100), (1, 200), (2, 256), (7, 100)] {
            let start = c.reserve_contiguous(n);
            let expect = if model.len() % 256 + n > 256 {
                model.len().next_multiple_of(256)
            } else {
                model.len()
            };
            assert_eq!(start, expect);
            model.resize(start, None);
            for j in 0..n {
                model.push(Some((k * 100 + j) as u32));
            }
            for (j, v) in c.slice_mut(start, n).iter_mut().enumerate() {
                *v = (k * 100 + j) as u32;
            }
        }
        assert_eq!(c.len, model.len());
        for (i, m) in model.iter().enumerate() {
            assert_eq!(*c.get(i), m.unwrap_or(0), "index {i}");
        }
        assert!(c.chunks.len() > 2 && c.chunks.iter().all(|ch| ch.len() == 256));
    }

    #[test]
    fn big_chunks_start_small() {
        let mut c: Chunked<u8, 20> = Chunked::default();
        c.push(1);
        assert!(c.heap_bytes() <= 8 << 10, "{}", c.heap_bytes());
        let start = c.reserve_contiguous(255);
        assert_eq!(start, 1);
        assert_eq!(c.slice(start, 255).len(), 255);
    }
}
