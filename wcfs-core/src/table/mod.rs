//! The translation table: an add-wins OR-Set of `(path, kind)` with per-path causal contexts.
//!
//! Semantics (see DESIGN.md, "The translation table"):
//! - every mutation gets a fresh dot and supersedes every dot its replica has observed for the
//!   path; the resulting record is the path's whole state (context + live dots);
//! - merging a record removes local live dots its context covers and its live set lacks, does
//!   not re-add dots the local state has already covered, and joins contexts per replica;
//! - concurrent mark and forget: the mark survives; concurrent `Rw` and `Whiteout`: both
//!   survive and resolution shows `Rw`.
//!
//! Besides the per-path state the table keeps what it has seen (version vector + dot cloud)
//! and an index from every seen dot above the GC floor to its path, so anti-entropy is a range
//! scan over the index. A dot superseded by a later one on the same path stays in the index
//! as an alias of that path until the floor passes it, so a peer that missed it learns it was
//! superseded and its version vector can advance (no permanent holes).

pub(crate) mod index;
pub(crate) mod seen;
pub(crate) mod state;
pub(crate) mod tree;

use std::collections::HashMap;

pub use seen::{Digest, MAX_DIGEST_CLOUD, MAX_DIGEST_REPLICAS, VersionVector};
pub use tree::Full;

use crate::dot::{Dot, Kind, MAX_SEQ, Op, ReplicaId};
use crate::path::WPath;
use crate::record::{CtxEntry, Record};
use index::DotIndex;
use seen::Seen;
use state::{Overflow, Packed, entries, store};
use tree::{NIL, NodeId, ROOT, Tree};

/// What the union shows for a path, by the table alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// No entry applies: serve the path from the RO branch (ENOENT if the RO branch lacks it).
    Ro,
    /// Serve from the RW branch; a directory also shows the RO directory of the same name.
    Rw,
    /// Serve from the RW branch; the RO branch is hidden here and below.
    Opaque,
    /// Deleted: the path or an ancestor is whited out. ENOENT without touching a branch.
    Hidden,
    /// Below an opaque directory, with no live entry of its own: the RO branch is hidden and
    /// only the RW branch can have the path (the table says nothing lives there).
    RwOnly,
}

/// A child of a directory that has table state or descendants with table state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    /// The child's name.
    pub name: Vec<u8>,
    /// Its winning live kind (`Rw` over `Opaque` over `Whiteout`), `None` if it has none.
    pub kind: Option<Kind>,
    /// Whether it has descendants with table state.
    pub has_children: bool,
}

/// Why a table operation was refused. The table is unchanged when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// 32-bit node or name space exhausted.
    #[error(transparent)]
    Full(#[from] Full),
    /// More than 65,535 distinct replicas have written to this table.
    #[error("more than 65535 distinct replicas have written to this table")]
    TooManyReplicas,
    /// This replica has used every sequence number.
    #[error("replica counter exhausted")]
    CounterExhausted,
}

/// The outcome of merging one record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeOutcome {
    /// The path's resolution-relevant state (its winning live kind) changed.
    pub changed: bool,
    /// Dots this record made newly seen.
    pub new_dots: u32,
}

/// A record shipped by anti-entropy together with the superseded dots it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shipped {
    /// The path's current state at the sender.
    pub record: Record,
    /// Older dots of the same path, superseded by the record; the receiver marks them seen.
    pub also: Vec<Dot>,
}

/// A batch of records for a peer, from [`Table::records_since`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Records in per-replica oldest-first order.
    pub items: Vec<Shipped>,
    /// Whether this chunk holds everything the peer lacked (no byte budget cut it short).
    pub complete: bool,
}

/// Sizes and counts, for status output and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Paths with at least one live dot.
    pub live_paths: usize,
    /// Paths with state but no live dot (removals not yet causally stable).
    pub tombstones: usize,
    /// Nodes in the tree, intermediate directories included.
    pub nodes: usize,
    /// Seen dots out of order.
    pub cloud_dots: usize,
    /// Dots above the GC floor in the index.
    pub indexed_dots: usize,
    /// Heap bytes held by the table's own structures.
    pub heap_bytes: usize,
}

/// The table of one replica. Deterministic: the same calls give the same state and outputs.
#[derive(Clone, Debug)]
pub struct Table {
    pub(crate) me: ReplicaId,
    pub(crate) me_idx: u16,
    pub(crate) counter: u64,
    pub(crate) replicas: Vec<ReplicaId>,
    pub(crate) ridx: HashMap<ReplicaId, u16>,
    pub(crate) tree: Tree,
    pub(crate) overflow: Overflow,
    pub(crate) seen: Seen,
    pub(crate) index: DotIndex,
    pub(crate) floor: Vec<u64>,
    pub(crate) live_paths: usize,
    pub(crate) tombstones: usize,
}

/// Encoded size estimate of a shipped record, for byte budgets.
pub fn shipped_size(s: &Shipped) -> usize {
    s.record.path.as_bytes().len() + 4 + s.record.entries.len() * 12 + s.also.len() * 12
}

impl Table {
    /// An empty table for replica `me`. `hash_seed` (from the caller's RNG) keys the name
    /// hash so user-chosen names cannot be crafted to collide.
    pub fn new(me: ReplicaId, hash_seed: u64) -> Table {
        let mut t = Table {
            me,
            me_idx: 0,
            counter: 0,
            replicas: Vec::new(),
            ridx: HashMap::new(),
            tree: Tree::new(hash_seed),
            overflow: Overflow::default(),
            seen: Seen::default(),
            index: DotIndex::default(),
            floor: Vec::new(),
            live_paths: 0,
            tombstones: 0,
        };
        let _ = t.intern(me);
        t
    }

    /// This replica's id.
    pub fn replica(&self) -> ReplicaId {
        self.me
    }

    /// The last sequence number this replica used (0 if none).
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Raises the counter to at least `seq` (recovery: the journal's reservation), so no
    /// sequence number at or below it is used again.
    pub fn bump_counter(&mut self, seq: u64) {
        self.counter = self.counter.max(seq.min(MAX_SEQ));
    }

    /// Replaces this table's state with `snapshot` (a peer's table, taken because this replica
    /// fell below the GC floor), keeping this replica's identity and counter. Everything this
    /// table holds that the snapshot has not seen is merged back in with its original dots and
    /// contexts — this replica's own mutations and anything it relayed, superseded dots as
    /// aliases — so nothing acknowledged here is lost, add-wins still holds, and no version
    /// vector is left with a hole. Returns those records, for shipping to peers.
    pub fn reset_from(&mut self, mut snapshot: Table) -> Result<Vec<Record>, TableError> {
        let me = self.me;
        let snap_me = snapshot.intern(me)?;
        let seen = snapshot.digest();
        // Dots above our floor come from the index; own mutations are also looked for in the
        // whole table, in case the snapshot lacks one our floor had already passed.
        let mut carry = self.records_since(&seen, usize::MAX).items;
        carry.extend(
            self.records()
                .filter(|r| {
                    r.entries
                        .iter()
                        .any(|e| e.dot.replica == me && !seen.has_seen(e.dot))
                })
                .map(|record| Shipped {
                    record,
                    also: Vec::new(),
                }),
        );
        let counter = self.counter.max(snapshot.seen.vv[snap_me as usize]);
        let counter = counter.max(
            snapshot.seen.cloud[snap_me as usize]
                .last()
                .copied()
                .unwrap_or(0),
        );
        snapshot.me = me;
        snapshot.me_idx = snap_me;
        snapshot.counter = counter;
        *self = snapshot;
        let mut out = Vec::with_capacity(carry.len());
        for s in carry {
            self.merge_shipped(&s)?;
            if !out.iter().any(|r: &Record| r.path == s.record.path) {
                out.push(s.record);
            }
        }
        Ok(out)
    }

    fn intern(&mut self, r: ReplicaId) -> Result<u16, TableError> {
        if let Some(&i) = self.ridx.get(&r) {
            return Ok(i);
        }
        if self.replicas.len() >= state::OVERFLOW as usize {
            return Err(TableError::TooManyReplicas);
        }
        let i = self.replicas.len() as u16;
        self.replicas.push(r);
        self.ridx.insert(r, i);
        self.seen.add_replica();
        self.index.add_replica();
        self.floor.push(0);
        Ok(i)
    }

    fn winner(list: &[Packed]) -> Option<Kind> {
        list.iter().filter_map(|p| p.live()).min()
    }

    /// (live path, tombstone) counts a state contributes.
    fn class(l: &[Packed]) -> (usize, usize) {
        match (l.is_empty(), l.iter().any(|p| p.live().is_some())) {
            (true, _) => (0, 0),
            (false, true) => (1, 0),
            (false, false) => (0, 1),
        }
    }

    /// Sets node `id`'s state to `list`, keeping the counts and freeing empty nodes.
    fn set_state(&mut self, id: NodeId, list: &[Packed]) {
        let old = self.tree.node(id).state;
        let (bl, bt) = Self::class(&entries(old, &self.overflow));
        let (al, at) = Self::class(list);
        self.live_paths = self.live_paths + al - bl;
        self.tombstones = self.tombstones + at - bt;
        let word = store(old, list, &mut self.overflow);
        self.tree.node_mut(id).state = word;
        if word == 0 {
            self.tree.remove_if_empty(id);
        }
    }

    /// Applies a local mutation: a fresh dot that supersedes every dot observed for the path.
    /// Returns the record to journal and ship.
    pub fn propose(&mut self, path: &WPath, op: Op) -> Result<Record, TableError> {
        let seq = self.counter + 1;
        if seq > MAX_SEQ {
            return Err(TableError::CounterExhausted);
        }
        let id = self.tree.find_or_insert(path)?;
        let mut list: Vec<Packed> = entries(self.tree.node(id).state, &self.overflow)
            .iter()
            .map(|p| p.dead())
            .collect();
        let me = Packed::new(self.me_idx, seq, op.kind());
        match list.binary_search_by_key(&self.me_idx, |p| p.ridx()) {
            Ok(i) => list[i] = me,
            Err(i) => list.insert(i, me),
        }
        self.counter = seq;
        self.seen.insert(self.me_idx, seq);
        self.index.push(self.me_idx, seq, id);
        self.set_state(id, &list);
        Ok(self.record_of(path.clone(), &list))
    }

    fn record_of(&self, path: WPath, list: &[Packed]) -> Record {
        let mut entries: Vec<CtxEntry> = list
            .iter()
            .map(|p| CtxEntry {
                dot: Dot {
                    replica: self.replicas[p.ridx() as usize],
                    seq: p.seq(),
                },
                live: p.live(),
            })
            .collect();
        entries.sort_by_key(|e| e.dot.replica);
        Record { path, entries }
    }

    /// Merges a remote record (or replays a journaled one). Idempotent, commutative and
    /// associative. A record naming a 65,536th replica is refused whole.
    pub fn merge(&mut self, rec: &Record) -> Result<MergeOutcome, TableError> {
        let mut incoming: Vec<Packed> = Vec::with_capacity(rec.entries.len());
        for e in &rec.entries {
            let r = self.intern(e.dot.replica)?;
            incoming.push(Packed::new(r, e.dot.seq.clamp(1, MAX_SEQ), e.live));
        }
        incoming.sort_by_key(|p| p.ridx());
        // Nothing new: every dot already seen means the local state dominates the record.
        if incoming
            .iter()
            .all(|p| self.seen.contains(p.ridx(), p.seq()))
        {
            return Ok(MergeOutcome::default());
        }
        let id = match self.tree.find(&rec.path) {
            Some(id) => id,
            None => self.tree.find_or_insert(&rec.path)?,
        };
        let local: Vec<Packed> = entries(self.tree.node(id).state, &self.overflow).to_vec();
        let mut out: Vec<Packed> = Vec::with_capacity(local.len() + incoming.len());
        let (mut i, mut j) = (0, 0);
        while i < local.len() || j < incoming.len() {
            let l = local.get(i).copied();
            let n = incoming.get(j).copied();
            match (l, n) {
                (Some(l), Some(n)) if l.ridx() == n.ridx() => {
                    out.push(if l.seq() > n.seq() {
                        l
                    } else if n.seq() > l.seq() {
                        n
                    } else if l.live().is_some() && n.live().is_some() {
                        l
                    } else {
                        l.dead()
                    });
                    i += 1;
                    j += 1;
                }
                (Some(l), Some(n)) if l.ridx() < n.ridx() => {
                    out.push(l);
                    i += 1;
                }
                (Some(l), None) => {
                    out.push(l);
                    i += 1;
                }
                (_, Some(n)) => {
                    let r = n.ridx() as usize;
                    if n.seq() > self.floor[r] {
                        // A dot already seen but absent locally was removed here: not re-added.
                        out.push(if self.seen.contains(n.ridx(), n.seq()) {
                            n.dead()
                        } else {
                            n
                        });
                    }
                    j += 1;
                }
                (None, None) => unreachable!(),
            }
        }
        let mut new_dots = 0;
        for p in &incoming {
            if self.seen.insert(p.ridx(), p.seq()) {
                self.index.push(p.ridx(), p.seq(), id);
                new_dots += 1;
            }
        }
        let before = Self::winner(&local);
        self.compact_list(&mut out);
        let after = Self::winner(&out);
        if out != local {
            self.set_state(id, &out);
        } else if out.is_empty() {
            self.tree.remove_if_empty(id);
        }
        Ok(MergeOutcome {
            changed: before != after,
            new_dots,
        })
    }

    /// Merges a shipped record, then marks the superseded dots it stands for as seen (only
    /// those the record's context covers: the alias must be true of the record).
    pub fn merge_shipped(&mut self, s: &Shipped) -> Result<MergeOutcome, TableError> {
        let mut out = self.merge(&s.record)?;
        let Some(id) = self.tree.find(&s.record.path) else {
            return Ok(out);
        };
        for d in &s.also {
            let covered = s
                .record
                .entries
                .iter()
                .any(|e| e.dot.replica == d.replica && e.dot.seq >= d.seq);
            if !covered || d.seq == 0 {
                continue;
            }
            let r = self.intern(d.replica)?;
            if self.seen.insert(r, d.seq) {
                if d.seq > self.floor[r as usize] {
                    self.index.push(r, d.seq, id);
                }
                out.new_dots += 1;
            }
        }
        Ok(out)
    }

    /// Drops dead entries once every entry of the path is at or below the floor (every member
    /// has incorporated this exact state, so the removals need no more telling).
    fn compact_list(&self, list: &mut Vec<Packed>) {
        if !list.is_empty()
            && list
                .iter()
                .all(|p| p.seq() <= self.floor[p.ridx() as usize])
        {
            list.retain(|p| p.live().is_some());
        }
    }

    /// Raises the GC floor to `floor` (clamped to what this replica has seen; never lowered)
    /// and drops what became causally stable: index entries at or below it, dead context
    /// entries of fully stable paths, and tombstones. `floor` must be a lower bound of every
    /// current member's version vector. Returns the number of paths freed.
    pub fn gc(&mut self, floor: &VersionVector) -> usize {
        let mut touched: Vec<NodeId> = Vec::new();
        for (r, s) in &floor.0 {
            let Some(&i) = self.ridx.get(r) else { continue };
            let i = i as usize;
            let f = (*s).min(self.seen.vv[i]).max(self.floor[i]);
            self.floor[i] = f;
            self.index.drain_upto(i, f, &mut touched);
        }
        let before = self.live_paths + self.tombstones;
        for id in touched {
            if !self.tree.is_live(id) {
                continue;
            }
            let mut list = entries(self.tree.node(id).state, &self.overflow).to_vec();
            let len = list.len();
            self.compact_list(&mut list);
            if list.len() != len {
                self.set_state(id, &list);
            }
        }
        before - (self.live_paths + self.tombstones)
    }

    /// The GC floor applied so far.
    pub fn floor(&self) -> VersionVector {
        VersionVector(
            self.replicas
                .iter()
                .zip(&self.floor)
                .filter(|(_, f)| **f > 0)
                .map(|(r, f)| (*r, *f))
                .collect(),
        )
    }

    /// What this replica has seen, for anti-entropy.
    pub fn digest(&self) -> Digest {
        let mut d = Digest::default();
        for (i, r) in self.replicas.iter().enumerate() {
            if self.seen.vv[i] > 0 {
                d.vv.0.insert(*r, self.seen.vv[i]);
            }
            if !self.seen.cloud[i].is_empty() {
                d.cloud.insert(*r, self.seen.cloud[i].clone());
            }
        }
        d
    }

    /// This replica's version vector.
    pub fn version_vector(&self) -> VersionVector {
        self.digest().vv
    }

    /// Whether a peer with this digest is below the GC floor: it may hold state whose removal
    /// was already collected here, so it must take a snapshot instead of merging records.
    pub fn needs_reset(&self, peer: &Digest) -> bool {
        self.replicas
            .iter()
            .zip(&self.floor)
            .any(|(r, f)| *f > 0 && peer.vv.get(*r) < *f)
    }

    /// Records a peer with `peer`'s digest lacks, oldest first per replica (replicas taken in
    /// turn), until about `max_bytes`. A range scan of the dot index above the peer's version
    /// vector; never a scan of the table. The caller checks [`Table::needs_reset`] first.
    pub fn records_since(&self, peer: &Digest, max_bytes: usize) -> Chunk {
        let mut cursors: Vec<(usize, std::iter::Skip<index::Iter<'_>>)> = Vec::new();
        let mut order: Vec<usize> = (0..self.replicas.len()).collect();
        order.sort_by_key(|&i| self.replicas[i]);
        for i in order {
            let r = self.replicas[i];
            let it = self.index.iter_from(i, peer.vv.get(r));
            cursors.push((i, it));
        }
        let mut items: Vec<Shipped> = Vec::new();
        let mut pos_of: HashMap<NodeId, usize> = HashMap::new();
        let mut bytes = 0usize;
        let mut complete = true;
        'outer: loop {
            let mut progressed = false;
            for (i, it) in cursors.iter_mut() {
                let r = self.replicas[*i];
                let Some((seq, id)) = it.next() else { continue };
                progressed = true;
                if peer.has_seen(Dot { replica: r, seq }) {
                    continue;
                }
                if !self.tree.is_live(id) {
                    // Never for a table built through this API (GC drains a path's dots
                    // before freeing it); possible after a damaged snapshot. Skip, not panic.
                    continue;
                }
                let dot = Dot { replica: r, seq };
                let k = match pos_of.get(&id) {
                    Some(&k) => k,
                    None => {
                        let list = entries(self.tree.node(id).state, &self.overflow).to_vec();
                        let rec = self.record_of(self.tree.path_of(id), &list);
                        let s = Shipped {
                            record: rec,
                            also: Vec::new(),
                        };
                        let size = shipped_size(&s);
                        if bytes + size > max_bytes && !items.is_empty() {
                            complete = false;
                            break 'outer;
                        }
                        bytes += size;
                        items.push(s);
                        pos_of.insert(id, items.len() - 1);
                        items.len() - 1
                    }
                };
                let s = &mut items[k];
                if !s.record.entries.iter().any(|e| e.dot == dot) {
                    s.also.push(dot);
                    bytes += 12;
                }
            }
            if !progressed {
                break;
            }
        }
        Chunk { items, complete }
    }

    /// What the union shows for `path`: ancestors first (a whiteout hides everything below,
    /// an opaque directory hides the RO branch below it), then the path's own entry.
    pub fn resolve(&self, path: &WPath) -> Resolution {
        // Three passes so the memory accesses of different levels overlap: hash every prefix
        // (compute only), probe the index for every level (independent loads), then verify the
        // guesses top-down, falling back to an exact lookup where a guess was a tag collision.
        const FAST: usize = 24;
        let mut comps: [&[u8]; FAST] = [&[]; FAST];
        let mut n = 0;
        for c in path.components() {
            if n == FAST {
                return self.resolve_slow(path);
            }
            comps[n] = c;
            n += 1;
        }
        let mut hashes = [0u32; FAST];
        let mut h = 0;
        for k in 0..n {
            h = tree::hash_name(self.tree.seed, h, comps[k]);
            hashes[k] = h;
        }
        let mut guess = [NIL; FAST];
        for k in 0..n {
            match self.tree.probe_tag(hashes[k]) {
                Some(id) => guess[k] = id,
                None => break,
            }
        }
        let mut ids = [NIL; FAST];
        let mut parent = ROOT;
        let mut depth = 0;
        for k in 0..n {
            let g = guess[k];
            let id = if g != NIL
                && self.tree.node(g).parent == parent
                && self.tree.name(g) == comps[k]
            {
                Some(g)
            } else if g == NIL {
                None
            } else {
                self.tree.child_hashed(parent, comps[k], hashes[k])
            };
            let Some(id) = id else { break };
            ids[k] = id;
            parent = id;
            depth = k + 1;
        }
        self.resolve_nodes(&ids[..depth], depth == n)
    }

    fn resolve_slow(&self, path: &WPath) -> Resolution {
        let mut ids = Vec::new();
        let mut cur = ROOT;
        let mut n = 0;
        for c in path.components() {
            n += 1;
            match self.tree.child(cur, c) {
                Some(id) => {
                    ids.push(id);
                    cur = id;
                }
                None => break,
            }
        }
        self.resolve_nodes(&ids, ids.len() == n)
    }

    /// Resolution given the nodes of the path's first `ids.len()` components; `whole` says
    /// whether they reach the path itself.
    fn resolve_nodes(&self, ids: &[NodeId], whole: bool) -> Resolution {
        let mut under_opaque = false;
        for (k, &id) in ids.iter().enumerate() {
            let kind = Self::winner(&entries(self.tree.node(id).state, &self.overflow));
            if whole && k + 1 == ids.len() {
                return match kind {
                    Some(Kind::Rw) => Resolution::Rw,
                    Some(Kind::Opaque) => Resolution::Opaque,
                    Some(Kind::Whiteout) => Resolution::Hidden,
                    None if under_opaque => Resolution::RwOnly,
                    None => Resolution::Ro,
                };
            }
            match kind {
                Some(Kind::Whiteout) => return Resolution::Hidden,
                Some(Kind::Opaque) => under_opaque = true,
                _ => {}
            }
        }
        if under_opaque {
            Resolution::RwOnly
        } else {
            Resolution::Ro
        }
    }

    /// Children of `dir` (the root if `None`) that have state or descendants with state:
    /// O(children). An empty result means the RW branch has nothing under `dir` as far as
    /// the table knows.
    pub fn children(&self, dir: Option<&WPath>) -> Vec<Child> {
        let id = match dir {
            None => ROOT,
            Some(p) => match self.tree.find(p) {
                Some(id) => id,
                None => return Vec::new(),
            },
        };
        let mut out: Vec<Child> = self
            .tree
            .children(id)
            .map(|c| Child {
                name: self.tree.name(c).to_vec(),
                kind: Self::winner(&entries(self.tree.node(c).state, &self.overflow)),
                has_children: self.tree.node(c).first_child != NIL,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The path's full state (context with live kinds), if it has any.
    pub fn get(&self, path: &WPath) -> Option<Record> {
        let id = self.tree.find(path)?;
        let list = entries(self.tree.node(id).state, &self.overflow);
        if list.is_empty() {
            return None;
        }
        Some(self.record_of(path.clone(), &list))
    }

    /// Every path with state, as records, in tree order. For snapshots sent to peers, the
    /// simulator's oracle and tests.
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        let mut stack: Vec<NodeId> = self.tree.children(ROOT).collect();
        std::iter::from_fn(move || {
            while let Some(id) = stack.pop() {
                stack.extend(self.tree.children(id));
                let list = entries(self.tree.node(id).state, &self.overflow);
                if !list.is_empty() {
                    return Some(self.record_of(self.tree.path_of(id), &list));
                }
            }
            None
        })
    }

    /// Sizes and counts.
    pub fn stats(&self) -> TableStats {
        TableStats {
            live_paths: self.live_paths,
            tombstones: self.tombstones,
            nodes: self.tree.live,
            cloud_dots: self.seen.cloud_len(),
            indexed_dots: self.index.len(),
            heap_bytes: self.heap_bytes(),
        }
    }

    fn heap_bytes(&self) -> usize {
        self.tree.heap_bytes()
            + self.overflow.heap_bytes()
            + self.index.heap_bytes()
            + self.replicas.capacity() * 8
            + self.ridx.capacity() * 16
            + self.seen.vv.capacity() * 8
            + self.seen.cloud_len() * 40
            + self.floor.capacity() * 8
    }

    /// Checks internal invariants (tests and debug builds): counts, index coverage, tree links.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut live = 0;
        let mut tomb = 0;
        let mut stack = vec![ROOT];
        let mut seen_nodes = 0usize;
        while let Some(id) = stack.pop() {
            seen_nodes += 1;
            let n = self.tree.node(id);
            if id != ROOT && self.tree.child(n.parent, self.tree.name(id)) != Some(id) {
                return Err(format!("node {id} not findable under its parent"));
            }
            let list = entries(n.state, &self.overflow);
            if id != ROOT && list.is_empty() && n.first_child == NIL {
                return Err(format!(
                    "empty leaf node {id} ({}) kept",
                    self.tree.path_of(id)
                ));
            }
            if !list.is_empty() {
                if list.iter().any(|p| p.live().is_some()) {
                    live += 1
                } else {
                    tomb += 1
                }
                for p in list.iter() {
                    if !self.seen.contains(p.ridx(), p.seq()) {
                        return Err(format!("{}: unseen dot in state", self.tree.path_of(id)));
                    }
                }
            }
            stack.extend(self.tree.children(id));
        }
        if seen_nodes != self.tree.live {
            return Err(format!(
                "{} reachable nodes, {} counted",
                seen_nodes, self.tree.live
            ));
        }
        if (live, tomb) != (self.live_paths, self.tombstones) {
            return Err(format!(
                "counts {live}/{tomb} vs {}/{}",
                self.live_paths, self.tombstones
            ));
        }
        Ok(())
    }
}
