//! Table snapshots: the table's own flat arrays written out, so reopening one is reading them
//! back (no per-entry parsing or re-insertion), validating them in linear passes, and checking a
//! CRC32 over everything.
//!
//! Layout (all integers little-endian):
//! ```text
//! magic "WCFSSNAP" | u32 format version | u32 endianness tag 0x01020304
//! u64 meta length | meta (codec-encoded: identity, counters, replicas, seen-set, floor,
//!                   dot index, overflow lists, free name slots, array lengths)
//! nodes  (48 bytes each, `Node` as laid out in memory)
//! names  (the names arena, bytes)
//! slots  (u64 each, the child index)
//! u32 CRC32 of every byte before it | magic "WCFSEND1"
//! ```
//! The writer is given any `io::Write` and the reader any `io::Read` plus the total length, so
//! files, sockets and the simulator's byte vectors all work; nothing here touches the OS.
//! A snapshot is only ever installed whole: a truncated or corrupted one is refused with a
//! reason, never half-loaded.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};

use crate::codec::{DecodeError, Reader, Writer};
use crate::dot::{MAX_SEQ, ReplicaId};
use crate::path::{MAX_PATH_LEN, validate_name};
use crate::table::Table;
use crate::table::index::DotIndex;
use crate::table::seen::Seen;
use crate::table::state::{OVERFLOW, Overflow, Packed, entries};
use crate::table::tree::{FREE, NIL, Names, Node, Nodes, Tree};

const MAGIC: &[u8; 8] = b"WCFSSNAP";
const END: &[u8; 8] = b"WCFSEND1";
/// The snapshot format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const ENDIAN_TAG: u32 = 0x0102_0304;
const MAX_META: u64 = 1 << 32;

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading the bytes failed (or they ended early).
    #[error("reading snapshot: {0}")]
    Io(#[from] io::Error),
    /// Not a WCFS snapshot.
    #[error("not a WCFS snapshot (bad magic)")]
    BadMagic,
    /// Written by a format this build does not read.
    #[error("snapshot format version {found}; this build reads version {FORMAT_VERSION}")]
    Version {
        /// The version in the file.
        found: u32,
    },
    /// Written on a machine of the other byte order.
    #[error("snapshot was written on a machine with another byte order")]
    Endianness,
    /// The checksum does not match: the bytes were damaged.
    #[error("snapshot checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        /// CRC in the file.
        stored: u32,
        /// CRC of the bytes read.
        computed: u32,
    },
    /// The lengths do not add up to the input's size.
    #[error("snapshot size mismatch: {0}")]
    Size(String),
    /// The metadata section is malformed.
    #[error("snapshot metadata: {0}")]
    Meta(#[from] DecodeError),
    /// The structure is inconsistent (a writer bug or undetected damage).
    #[error("snapshot structure invalid: {0}")]
    Invalid(String),
}

struct CrcWriter<'a, W: Write> {
    inner: &'a mut W,
    crc: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> CrcWriter<'_, W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc.update(b);
        self.written += b.len() as u64;
        self.inner.write_all(b)
    }
}

/// Writes `table` as a snapshot. Returns the number of bytes written. The caller makes it
/// durable (temp file, fsync, rename, fsync the directory).
pub fn write(table: &Table, out: &mut impl Write) -> io::Result<u64> {
    let mut w = CrcWriter {
        inner: out,
        crc: crc32fast::Hasher::new(),
        written: 0,
    };
    let t = &table.tree;
    let (order, remap) = tree_order(t);
    let meta = encode_meta(table, order.len() + 1, &remap);
    let mut head = Vec::with_capacity(24);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    head.extend_from_slice(&ENDIAN_TAG.to_le_bytes());
    head.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    w.put(&head)?;
    w.put(&meta)?;
    // Nodes in tree order with parents renumbered; the reader rebuilds the sibling links.
    let mut buf: Vec<Node> = Vec::with_capacity(4096);
    buf.push(Node {
        first_child: NIL,
        ..*t.node(0)
    });
    for &old in &order {
        let nd = t.node(old);
        buf.push(Node {
            parent: remap[nd.parent as usize],
            first_child: NIL,
            next_sibling: NIL,
            prev_sibling: NIL,
            ..*nd
        });
        if buf.len() == buf.capacity() {
            w.put(bytemuck::cast_slice(&buf))?;
            buf.clear();
        }
    }
    w.put(bytemuck::cast_slice(&buf))?;
    let mut left = t.names.len;
    for c in &t.names.chunks {
        let n = left.min(c.len());
        w.put(&c[..n])?;
        left -= n;
    }
    let mut slots: Vec<u64> = Vec::with_capacity(4096);
    for &s in &t.slots {
        slots.push(if s == 0 {
            0
        } else {
            (s & !0xFFFF_FFFF) | (remap[(s as u32 - 1) as usize] as u64 + 1)
        });
        if slots.len() == slots.capacity() {
            w.put(bytemuck::cast_slice(&slots))?;
            slots.clear();
        }
    }
    w.put(bytemuck::cast_slice(&slots))?;
    let crc = w.crc.clone().finalize();
    w.put(&crc.to_le_bytes())?;
    w.put(END)?;
    Ok(w.written)
}

/// The live nodes other than the root in depth-first pre-order (every node after its parent,
/// every subtree contiguous), and the map from current ids to ids in that order.
fn tree_order(t: &Tree) -> (Vec<u32>, Vec<u32>) {
    let mut remap = vec![NIL; t.nodes.len];
    remap[0] = 0;
    let mut order = Vec::with_capacity(t.live.saturating_sub(1));
    let mut stack: Vec<u32> = t.children(0).collect();
    while let Some(id) = stack.pop() {
        order.push(id);
        remap[id as usize] = order.len() as u32;
        stack.extend(t.children(id));
    }
    (order, remap)
}

/// The snapshot as one byte vector.
pub fn encode(table: &Table) -> Vec<u8> {
    let mut v = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = write(table, &mut v);
    v
}

/// Reads a snapshot from bytes.
pub fn decode(bytes: &[u8]) -> Result<Table, SnapshotError> {
    read(&mut &bytes[..], bytes.len() as u64)
}

fn encode_meta(t: &Table, n_nodes: usize, remap: &[u32]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(t.me.0);
    w.u64(t.counter);
    w.u64(t.tree.seed);
    w.u64(n_nodes as u64);
    w.u64(t.tree.names.len as u64);
    w.u64(t.tree.slots.len() as u64);
    w.varint(t.replicas.len() as u64);
    for (i, r) in t.replicas.iter().enumerate() {
        w.u64(r.0);
        w.varint(t.seen.vv[i]);
        w.varint(t.floor[i]);
        w.varint(t.seen.cloud[i].len() as u64);
        for s in &t.seen.cloud[i] {
            w.varint(*s);
        }
        let idx: Vec<(u64, u32)> = t
            .index
            .iter_from(i, 0)
            .filter(|&(_, n)| remap[n as usize] != NIL)
            .map(|(s, n)| (s, remap[n as usize]))
            .collect();
        w.varint(idx.len() as u64);
        for (s, n) in idx {
            w.varint(s);
            w.u32(n);
        }
    }
    w.varint(t.overflow.lists.len() as u64);
    for l in &t.overflow.lists {
        w.varint(l.len() as u64);
        for p in l {
            w.u64(p.0);
        }
    }
    let free_names: Vec<(usize, &Vec<u32>)> = t
        .tree
        .free_names
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    w.varint(free_names.len() as u64);
    for (len, offs) in free_names {
        w.u8(len as u8);
        w.varint(offs.len() as u64);
        for o in offs {
            w.u32(*o);
        }
    }
    w.into_bytes()
}

fn read_exact_crc(
    r: &mut impl Read,
    buf: &mut [u8],
    crc: &mut crc32fast::Hasher,
) -> io::Result<()> {
    r.read_exact(buf)?;
    crc.update(buf);
    Ok(())
}

/// Reads a snapshot of `total_len` bytes from `r`, checks its checksum and structure, and
/// returns the table. Allocations are bounded by `total_len`, so a damaged length field
/// cannot make the reader allocate more than the input's size.
pub fn read(r: &mut impl Read, total_len: u64) -> Result<Table, SnapshotError> {
    let mut crc = crc32fast::Hasher::new();
    let mut head = [0u8; 24];
    read_exact_crc(r, &mut head, &mut crc)?;
    if &head[..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let version = le32(&head[8..12]);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version { found: version });
    }
    if le32(&head[12..16]) != ENDIAN_TAG || cfg!(target_endian = "big") {
        return Err(SnapshotError::Endianness);
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&head[16..24]);
    let meta_len = u64::from_le_bytes(a);
    if meta_len > MAX_META || meta_len + 24 + 12 > total_len {
        return Err(SnapshotError::Size(format!(
            "metadata length {meta_len} exceeds the snapshot's {total_len} bytes"
        )));
    }
    let mut meta = vec![0u8; meta_len as usize];
    read_exact_crc(r, &mut meta, &mut crc)?;
    let mut m = Reader::new(&meta);
    let me = ReplicaId(m.u64()?);
    let counter = m.u64()?;
    let seed = m.u64()?;
    let n_nodes = m.u64()?;
    let n_names = m.u64()?;
    let n_slots = m.u64()?;
    let body = n_nodes
        .checked_mul(size_of::<Node>() as u64)
        .and_then(|x| x.checked_add(n_names))
        .and_then(|x| n_slots.checked_mul(8).and_then(|s| x.checked_add(s)))
        .and_then(|x| x.checked_add(24 + meta_len + 12))
        .ok_or_else(|| SnapshotError::Size("array lengths overflow".into()))?;
    if body != total_len {
        return Err(SnapshotError::Size(format!(
            "lengths add up to {body} bytes but the snapshot has {total_len}"
        )));
    }
    if n_nodes == 0 || n_nodes >= FREE as u64 || n_names > u32::MAX as u64 {
        return Err(SnapshotError::Invalid(
            "node or name count out of range".into(),
        ));
    }
    if !n_slots.is_power_of_two() || n_slots < 1024 || n_slots <= n_nodes {
        return Err(SnapshotError::Invalid("child index size invalid".into()));
    }

    let mut nodes = Nodes::default();
    let mut left = n_nodes as usize;
    while left > 0 {
        let start = nodes.len;
        let n = left.min(crate::table::tree::NODE_CHUNK_LEN);
        nodes.reserve_contiguous(n);
        read_exact_crc(
            r,
            bytemuck::cast_slice_mut(nodes.slice_mut(start, n)),
            &mut crc,
        )?;
        left -= n;
    }
    let mut names = Names::default();
    let mut left = n_names as usize;
    while left > 0 {
        let start = names.len;
        let n = left.min(crate::table::tree::NAME_CHUNK_BYTES);
        names.reserve_contiguous(n);
        read_exact_crc(r, names.slice_mut(start, n), &mut crc)?;
        left -= n;
    }
    let mut slots = vec![0u64; n_slots as usize];
    read_exact_crc(r, bytemuck::cast_slice_mut(&mut slots), &mut crc)?;
    let computed = crc.finalize();
    let mut tail = [0u8; 12];
    r.read_exact(&mut tail)?;
    let stored = le32(&tail[..4]);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    if &tail[4..] != END {
        return Err(SnapshotError::Invalid("missing end marker".into()));
    }

    // Metadata: replicas, seen-set, floor, index, overflow, free names.
    let n_rep = m.count(OVERFLOW as usize)?;
    let mut t = Table::new(me, seed);
    t.replicas.clear();
    t.ridx.clear();
    t.seen = Seen::default();
    t.index = DotIndex::default();
    t.floor.clear();
    let mut index_entries: Vec<Vec<(u64, u32)>> = Vec::with_capacity(n_rep);
    for i in 0..n_rep {
        let id = ReplicaId(m.u64()?);
        if t.ridx.insert(id, i as u16).is_some() {
            return Err(SnapshotError::Invalid("replica listed twice".into()));
        }
        t.replicas.push(id);
        t.seen.add_replica();
        t.index.add_replica();
        let vv = m.varint()?;
        let floor = m.varint()?;
        if vv > MAX_SEQ || floor > vv {
            return Err(SnapshotError::Invalid(
                "version vector or floor out of range".into(),
            ));
        }
        t.seen.vv[i] = vv;
        t.floor.push(floor);
        let nc = m.count(meta.len())?;
        let mut cloud = BTreeSet::new();
        for _ in 0..nc {
            let s = m.varint()?;
            if s <= vv + 1 || s > MAX_SEQ || !cloud.insert(s) {
                return Err(SnapshotError::Invalid("dot cloud entry invalid".into()));
            }
        }
        t.seen.cloud[i] = cloud;
        let ni = m.count(meta.len())?;
        let mut v = Vec::with_capacity(ni);
        let mut prev = floor;
        for _ in 0..ni {
            let s = m.varint()?;
            let id = m.u32()?;
            if s <= prev || (id as u64) >= n_nodes || !t.seen.contains(i as u16, s) {
                return Err(SnapshotError::Invalid("dot index entry invalid".into()));
            }
            prev = s;
            v.push((s, id));
        }
        index_entries.push(v);
    }
    let Some(&me_idx) = t.ridx.get(&me) else {
        return Err(SnapshotError::Invalid(
            "snapshot does not list its own replica".into(),
        ));
    };
    t.me_idx = me_idx;
    if counter > MAX_SEQ {
        return Err(SnapshotError::Invalid("counter out of range".into()));
    }
    t.counter = counter;
    let nl = m.count(meta.len())?;
    let mut overflow = Overflow::default();
    for _ in 0..nl {
        let k = m.count(meta.len())?;
        let mut l = Vec::with_capacity(k);
        for _ in 0..k {
            let p = Packed(m.u64()?);
            check_entry(p, n_rep)?;
            if l.last().is_some_and(|q: &Packed| q.ridx() >= p.ridx()) {
                return Err(SnapshotError::Invalid("overflow list not sorted".into()));
            }
            l.push(p);
        }
        if k == 0 {
            overflow.free.push(overflow.lists.len() as u32);
        } else if k == 1 {
            return Err(SnapshotError::Invalid("overflow list of one entry".into()));
        }
        overflow.lists.push(l);
    }
    let nf = m.count(256)?;
    let mut free_names = vec![Vec::new(); 256];
    for _ in 0..nf {
        let len = m.u8()? as usize;
        let k = m.count(meta.len())?;
        for _ in 0..k {
            let off = m.u32()? as usize;
            if len <= crate::table::tree::INLINE_NAME
                || off + 1 + len > n_names as usize
                || *names.get(off) as usize != len
            {
                return Err(SnapshotError::Invalid("free name slot invalid".into()));
            }
            free_names[len].push(off as u32);
        }
    }
    if !m.is_empty() {
        return Err(SnapshotError::Invalid("trailing metadata".into()));
    }

    let mut tree = Tree {
        seed,
        nodes,
        names,
        slots,
        live: 0,
        free_head: NIL,
        free_names,
    };
    let (live_paths, tombstones) = validate_tree(&mut tree, &overflow, n_rep)?;
    for (i, v) in index_entries.into_iter().enumerate() {
        for (s, id) in v {
            if !tree.is_live(id) {
                return Err(SnapshotError::Invalid(
                    "dot index points at a free node".into(),
                ));
            }
            t.index.push(i as u16, s, id);
        }
    }
    t.tree = tree;
    t.overflow = overflow;
    t.live_paths = live_paths;
    t.tombstones = tombstones;
    Ok(t)
}

fn check_entry(p: Packed, n_rep: usize) -> Result<(), SnapshotError> {
    if p.ridx() as usize >= n_rep
        || p.seq() == 0
        || p.0 & !(((OVERFLOW as u64) << 48) | (MAX_SEQ << 2) | 3) != 0
    {
        return Err(SnapshotError::Invalid("state entry invalid".into()));
    }
    Ok(())
}

/// Checks every index so later operations cannot panic or loop, rebuilds the sibling links
/// and counts, and returns (live paths, tombstones).
///
/// The writer puts nodes in depth-first pre-order, so one sequential pass with a stack of the
/// current node's ancestors checks every parent link (a node's parent must be on the stack:
/// anything else is refused), bounds every path's length, and rebuilds the child lists — no
/// random access into the node array. The stored sibling links are not trusted at all; the
/// stored hashes are not recomputed (the CRC vouches for them, and a wrong one could only make
/// a lookup miss, never panic).
fn validate_tree(
    t: &mut Tree,
    of: &Overflow,
    n_rep: usize,
) -> Result<(usize, usize), SnapshotError> {
    let bad = |what: &str, id: usize| SnapshotError::Invalid(format!("node {id}: {what}"));
    let n = t.nodes.len;
    let root = *t.nodes.get(0);
    if root.parent != NIL || root.state != 0 || root.hash != 0 {
        return Err(bad("root malformed", 0));
    }
    t.free_head = NIL;
    t.nodes.get_mut(0).first_child = NIL;
    // The ancestors of the node being visited: (id, path length, newest child so far).
    let mut stack: Vec<(u32, usize, u32)> = vec![(0, 0, NIL)];
    let mut live_paths = 0;
    let mut tombstones = 0;
    let mut used_overflow = vec![false; of.lists.len()];
    let chunk = crate::table::tree::NAME_CHUNK_BYTES;
    for i in 1..n {
        let nd = *t.nodes.get(i);
        // Leave the subtrees that ended: pop up to the parent, finishing their child lists.
        while stack.last().is_some_and(|&(id, _, _)| id != nd.parent) {
            let Some((done, _, head)) = stack.pop() else {
                break;
            };
            t.nodes.get_mut(done as usize).first_child = head;
        }
        let Some(&(_, parent_len, prev_child)) = stack.last() else {
            return Err(bad("parent is not an ancestor in tree order", i));
        };
        let len = nd.name[0] as usize;
        let name = match nd.arena_off() {
            None => &nd.name[1..1 + len],
            Some(off) => {
                if off + 1 + len > t.names.len
                    || (off % chunk) + 1 + len > chunk
                    || *t.names.get(off) as usize != len
                {
                    return Err(bad("name out of range", i));
                }
                t.names.slice(off + 1, len)
            }
        };
        // Names are checked because paths are rebuilt from them.
        validate_name(name).map_err(|e| bad(&format!("invalid name: {e}"), i))?;
        let path_len = if stack.len() == 1 {
            len
        } else {
            parent_len + 1 + len
        };
        if path_len > MAX_PATH_LEN {
            return Err(bad("path too long", i));
        }
        if nd.state != 0 {
            if Packed(nd.state).ridx() == OVERFLOW {
                let k = (nd.state & 0xFFFF_FFFF) as usize;
                if nd.state >> 32 != (OVERFLOW as u64) << 16
                    || k >= of.lists.len()
                    || of.lists[k].is_empty()
                    || used_overflow[k]
                {
                    return Err(bad("overflow reference invalid", i));
                }
                used_overflow[k] = true;
            } else {
                check_entry(Packed(nd.state), n_rep)?;
            }
            if entries(nd.state, of).iter().any(|p| p.live().is_some()) {
                live_paths += 1;
            } else {
                tombstones += 1;
            }
        }
        // Link into the parent's child list, newest first.
        {
            let node = t.nodes.get_mut(i);
            node.next_sibling = prev_child;
            node.prev_sibling = NIL;
            node.first_child = NIL;
        }
        if prev_child != NIL {
            t.nodes.get_mut(prev_child as usize).prev_sibling = i as u32;
        }
        if let Some(top) = stack.last_mut() {
            top.2 = i as u32;
        }
        stack.push((i as u32, path_len, NIL));
    }
    while let Some((done, _, head)) = stack.pop() {
        t.nodes.get_mut(done as usize).first_child = head;
    }
    if used_overflow.iter().filter(|u| **u).count() + of.free.len() != of.lists.len() {
        return Err(SnapshotError::Invalid(
            "overflow lists unaccounted for".into(),
        ));
    }
    // The child index: every slot names a live non-root node, each at most once, sits in the
    // probe run of its home position, and at least one slot is empty so probes end.
    let mask = t.slots.len() - 1;
    let bits = t.slots.len().trailing_zeros();
    let mut filled = 0usize;
    let mut in_slot = vec![0u64; n.div_ceil(64)];
    let first_empty = t
        .slots
        .iter()
        .position(|&s| s == 0)
        .ok_or_else(|| SnapshotError::Invalid("child index full".into()))?;
    let mut run_start = (first_empty + 1) & mask;
    for step in 1..=t.slots.len() {
        let pos = (first_empty + step) & mask;
        let s = t.slots[pos];
        if s == 0 {
            run_start = (pos + 1) & mask;
            continue;
        }
        let id = (s as u32).wrapping_sub(1) as usize;
        if id == 0 || id >= n || in_slot[id / 64] & (1 << (id % 64)) != 0 {
            return Err(SnapshotError::Invalid(format!(
                "child index slot {pos} invalid"
            )));
        }
        in_slot[id / 64] |= 1 << (id % 64);
        let home = (((s >> 32) * t.slots.len() as u64) >> 32) as usize & ((1usize << bits) - 1);
        if (pos.wrapping_sub(run_start) & mask) < (home.wrapping_sub(run_start) & mask) {
            return Err(SnapshotError::Invalid(format!(
                "child index slot {pos} unreachable from its home"
            )));
        }
        filled += 1;
    }
    if filled != n - 1 {
        return Err(SnapshotError::Invalid(format!(
            "child index holds {filled} nodes, tree has {}",
            n - 1
        )));
    }
    t.live = n;
    Ok((live_paths, tombstones))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::Op;
    use crate::path::WPath;

    fn sample() -> Table {
        let mut t = Table::new(ReplicaId(5), 42);
        let mut other = Table::new(ReplicaId(9), 43);
        let name = |i: usize| {
            if i.is_multiple_of(3) {
                format!("site/up/{}/a-long-upload-name-{i}.jpg", i % 7)
            } else {
                format!("site/up/{}/f{i}.jpg", i % 7)
            }
        };
        for i in 0..300 {
            let p = WPath::new(name(i).as_bytes()).unwrap();
            t.propose(&p, if i % 5 == 0 { Op::Whiteout } else { Op::MarkRw })
                .unwrap();
        }
        for i in 0..50 {
            let p = WPath::new(name(i).as_bytes()).unwrap();
            t.propose(&p, Op::Forget).unwrap();
            let r = other.propose(&p, Op::MarkOpaque).unwrap();
            t.merge(&r).unwrap();
        }
        // Forget some paths and collect them, so the snapshot carries free nodes and free
        // name slots; then add a few that reuse them.
        for i in 200..260 {
            t.propose(&WPath::new(name(i).as_bytes()).unwrap(), Op::Forget)
                .unwrap();
        }
        let vv = t.version_vector();
        t.gc(&vv);
        assert!(t.tree.free_head != NIL);
        for i in 1000..1010 {
            t.propose(&WPath::new(name(i).as_bytes()).unwrap(), Op::MarkRw)
                .unwrap();
        }
        t.check_invariants().unwrap();
        t
    }

    fn same(a: &Table, b: &Table) {
        let mut ra: Vec<_> = a.records().collect();
        let mut rb: Vec<_> = b.records().collect();
        ra.sort_by(|x, y| x.path.cmp(&y.path));
        rb.sort_by(|x, y| x.path.cmp(&y.path));
        assert_eq!(ra, rb);
        assert_eq!(a.digest(), b.digest());
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!(
            (
                sa.live_paths,
                sa.tombstones,
                sa.nodes,
                sa.cloud_dots,
                sa.indexed_dots
            ),
            (
                sb.live_paths,
                sb.tombstones,
                sb.nodes,
                sb.cloud_dots,
                sb.indexed_dots
            )
        );
        assert_eq!(a.counter(), b.counter());
    }

    #[test]
    fn roundtrip_preserves_everything() {
        let t = sample();
        let bytes = encode(&t);
        let back = decode(&bytes).unwrap();
        same(&t, &back);
        back.check_invariants().unwrap();
        // The reopened table keeps working.
        let mut back = back;
        back.propose(&WPath::new(b"new/file").unwrap(), Op::MarkRw)
            .unwrap();
        back.check_invariants().unwrap();
    }

    /// Rewrites the stored CRC so damage reaches the structural checks, as a buggy writer's
    /// or a crafted file's would.
    fn fix_crc(b: &mut [u8]) {
        let n = b.len();
        let crc = crc32fast::hash(&b[..n - 12]);
        b[n - 12..n - 8].copy_from_slice(&crc.to_le_bytes());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1500))]
        #[test]
        fn crc_valid_damage_is_refused_or_yields_a_usable_table(
            edits in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), 1u8..=255), 1..6)
        ) {
            let bytes = encode(&sample());
            let mut b = bytes.clone();
            for (at, x) in &edits {
                let i = at.index(b.len() - 12);
                b[i] ^= x;
            }
            fix_crc(&mut b);
            if let Ok(mut t) = decode(&b) {
                // Whatever was accepted must not make the table panic or loop.
                let n = t.records().count();
                let _ = t.digest();
                for i in 0..20 {
                    let p = WPath::new(format!("site/up/{}/f{i}.jpg", i % 7).as_bytes()).unwrap();
                    let _ = t.resolve(&p);
                    let _ = t.children(p.parent().as_ref());
                    let _ = t.propose(&p, if i % 2 == 0 { Op::Forget } else { Op::MarkRw });
                }
                let vv = t.version_vector();
                t.gc(&vv);
                proptest::prop_assert!(t.records().count() <= n + 20);
            }
        }
    }

    #[test]
    fn every_truncation_and_many_bit_flips_are_refused() {
        let t = sample();
        let bytes = encode(&t);
        for cut in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
            assert!(
                decode(&bytes[..cut]).is_err(),
                "truncation at {cut} accepted"
            );
        }
        for at in (0..bytes.len()).step_by(13) {
            let mut b = bytes.clone();
            b[at] ^= 1 << (at % 8);
            assert!(decode(&b).is_err(), "bit flip at {at} accepted");
        }
        // Extra bytes after a valid snapshot are refused too, not ignored.
        let mut b = bytes.clone();
        b.push(0);
        assert!(decode(&b).is_err());
        let mut b = bytes.clone();
        b[8] = 2;
        let err = decode(&b).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("format version 2"),
            "unclear version error: {err}"
        );
    }
}
