//! Property tests of the translation table as a CRDT, against an oracle of the add-wins
//! OR-Set semantics written from DESIGN.md ("The translation table"), not from the table's
//! code.
//!
//! The oracle: every mutation is an op (dot, path, kind or forget) together with the set of
//! dots its replica had observed for that path when it made it. A replica's knowledge is the
//! set of ops that reached it (its own, and whatever a record it merged stood for: the
//! sender's knowledge of that path). A dot is live for a given knowledge iff its op is a mark
//! and no op in that knowledge observed it. Resolution follows DESIGN.md: ancestors first (a
//! whiteout hides everything below, an opaque one hides the RO branch), then any live
//! `Rw`/`Opaque` serves from RW (`Rw` winning), else a live `Whiteout` hides, else RO.
//!
//! Every table is compared with the oracle after every step that changed it, not only at
//! the end, so a divergence is reported at the step that caused it.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError};
use wcfs_core::codec::Writer;
use wcfs_core::{
    Digest, Dot, Kind, MergeOutcome, Op, Record, ReplicaId, Resolution, Shipped, Table,
    VersionVector, WPath,
};

/// The paths mutations touch; closed under prefixes so every ancestor can carry entries.
const UNIVERSE: [&str; 7] = ["a", "a/b", "a/b/c", "a/d", "b", "b/c", "c"];
/// Paths only resolved, never mutated: they see the ancestor rules alone.
const QUERY_ONLY: [&str; 5] = ["a/b/c/x", "a/x", "a/d/e", "b/c/y", "z"];
/// Directories whose `children` are checked (`None` is the root).
const DIRS: [Option<&str>; 4] = [None, Some("a"), Some("a/b"), Some("b")];
/// Replica ids, deliberately not in index order.
const IDS: [u64; 5] = [5, 2, 9, 1, 7];
/// Universe indices mutations pick from: a few paths are hot, so concurrent mutations of
/// one path (the interesting case) are common, and every path is still reached.
const HOT: [u8; 12] = [0, 0, 1, 1, 2, 3, 4, 5, 6, 6, 6, 6];
/// The partition test concentrates on `c` (and `a`, `a/b` for ancestors): the resurrection
/// it looks for needs several replicas to act on the same path.
const PARTITION_HOT: [u8; 5] = [0, 1, 6, 6, 6];
const OPS: [Op; 4] = [Op::MarkRw, Op::MarkOpaque, Op::Whiteout, Op::Forget];
/// The replica id of tables built only by merging (never proposing) in the law tests.
const OBSERVER: ReplicaId = ReplicaId(100);
/// Generous bound on anti-entropy chunks for one pair; hitting it means no progress.
const MAX_CHUNKS: usize = 10_000;

/// A fixed bijective mixer (splitmix64's finalizer), for orders derived from one seed.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn wp(s: &str) -> WPath {
    WPath::new(s.as_bytes()).expect("test paths are valid")
}

fn path_index(p: &WPath) -> usize {
    UNIVERSE
        .iter()
        .position(|u| u.as_bytes() == p.as_bytes())
        .expect("the table only holds paths from the universe")
}

/// Fixed seed unless `PROPTEST_RNG_SEED` asks for another, so CI runs are reproducible.
fn config(cases: u32) -> Config {
    let mut c = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    if matches!(c.rng_seed, RngSeed::Random) {
        c.rng_seed = RngSeed::Fixed(0x5743_4653_2024);
    }
    c
}

// ---------------------------------------------------------------------------------------
// The oracle.

type Knowledge = BTreeSet<Dot>;
/// Per universe path, the live `(dot, kind)` pairs.
type Live = Vec<BTreeSet<(Dot, Kind)>>;

#[derive(Clone, Debug)]
struct OpInfo {
    path: usize,
    kind: Option<Kind>,
    observed: BTreeSet<Dot>,
}

#[derive(Clone, Debug, Default)]
struct Oracle {
    ops: BTreeMap<Dot, OpInfo>,
}

impl Oracle {
    /// The ops of `know` that are about `path`.
    fn about(&self, know: &Knowledge, path: usize) -> Knowledge {
        know.iter()
            .filter(|d| self.ops[d].path == path)
            .copied()
            .collect()
    }

    /// What a replica that knows `know` must hold live, per path.
    fn live(&self, know: &Knowledge) -> Live {
        let removed: BTreeSet<Dot> = know
            .iter()
            .flat_map(|d| self.ops[d].observed.iter().copied())
            .collect();
        let mut out = vec![BTreeSet::new(); UNIVERSE.len()];
        for d in know {
            let op = &self.ops[d];
            if let Some(k) = op.kind
                && !removed.contains(d)
            {
                out[op.path].insert((*d, k));
            }
        }
        out
    }
}

/// DESIGN.md's winner among a path's live kinds: `Rw`, then `Opaque`, then `Whiteout`.
fn winner(live: &BTreeSet<(Dot, Kind)>) -> Option<Kind> {
    let has = |k: Kind| live.iter().any(|(_, x)| *x == k);
    if has(Kind::Rw) {
        Some(Kind::Rw)
    } else if has(Kind::Opaque) {
        Some(Kind::Opaque)
    } else if has(Kind::Whiteout) {
        Some(Kind::Whiteout)
    } else {
        None
    }
}

/// DESIGN.md's resolution of `path` given the live entries of the universe.
fn expected_resolution(path: &str, live: &Live) -> Resolution {
    let own = |p: &str| {
        UNIVERSE
            .iter()
            .position(|u| *u == p)
            .and_then(|i| winner(&live[i]))
    };
    let comps: Vec<&str> = path.split('/').collect();
    let mut under_opaque = false;
    for depth in 1..comps.len() {
        match own(&comps[..depth].join("/")) {
            Some(Kind::Whiteout) => return Resolution::Hidden,
            Some(Kind::Opaque) => under_opaque = true,
            _ => {}
        }
    }
    match own(path) {
        Some(Kind::Rw) => Resolution::Rw,
        Some(Kind::Opaque) => Resolution::Opaque,
        Some(Kind::Whiteout) => Resolution::Hidden,
        None if under_opaque => Resolution::RwOnly,
        None => Resolution::Ro,
    }
}

/// Compares one table with the oracle's live entries: each path's live dots and kinds,
/// every resolution, and what `children` lists.
fn check_against(t: &Table, live: &Live, who: &str) -> Result<(), TestCaseError> {
    for (i, p) in UNIVERSE.iter().enumerate() {
        let got: BTreeSet<(Dot, Kind)> = t
            .get(&wp(p))
            .map(|r| r.live().collect())
            .unwrap_or_default();
        prop_assert_eq!(&got, &live[i], "{}: live entries of {}", who, p);
    }
    for p in UNIVERSE.iter().chain(QUERY_ONLY.iter()) {
        prop_assert_eq!(
            t.resolve(&wp(p)),
            expected_resolution(p, live),
            "{}: resolve({})",
            who,
            p
        );
    }
    for dir in DIRS {
        let kids = t.children(dir.map(wp).as_ref());
        for k in &kids {
            let name = std::str::from_utf8(&k.name).expect("universe names are ASCII");
            let full = match dir {
                Some(d) => format!("{d}/{name}"),
                None => name.to_string(),
            };
            let Some(i) = UNIVERSE.iter().position(|u| *u == full) else {
                return Err(TestCaseError::fail(format!(
                    "{who}: children({dir:?}) lists {full}, which was never touched"
                )));
            };
            prop_assert_eq!(k.kind, winner(&live[i]), "{}: kind of child {}", who, full);
        }
        for (i, u) in UNIVERSE.iter().enumerate() {
            let parent = u.rsplit_once('/').map(|(d, _)| d);
            if parent != dir {
                continue;
            }
            let prefix = format!("{u}/");
            let live_below = UNIVERSE
                .iter()
                .enumerate()
                .any(|(j, v)| v.starts_with(&prefix) && !live[j].is_empty());
            let name = u.rsplit('/').next().expect("non-empty path");
            let listed = kids.iter().find(|k| k.name == name.as_bytes());
            if !live[i].is_empty() || live_below {
                prop_assert!(
                    listed.is_some(),
                    "{}: children({:?}) misses {}",
                    who,
                    dir,
                    u
                );
            }
            if live_below {
                prop_assert!(
                    listed.is_some_and(|k| k.has_children),
                    "{}: {} has live descendants but has_children is false",
                    who,
                    u
                );
            }
        }
    }
    Ok(())
}

fn sorted_records(t: &Table) -> Vec<Record> {
    let mut v: Vec<Record> = t.records().collect();
    v.sort_by(|a, b| a.path.cmp(&b.path));
    v
}

// ---------------------------------------------------------------------------------------
// The simulated cluster.

#[derive(Clone, Debug)]
enum Item {
    Rec(Record),
    Ship(Shipped),
}

impl Item {
    fn record(&self) -> &Record {
        match self {
            Item::Rec(r) => r,
            Item::Ship(s) => &s.record,
        }
    }
}

/// A record in flight, with the knowledge it stands for in the oracle.
#[derive(Clone, Debug)]
struct Msg {
    from: usize,
    item: Item,
    know: Knowledge,
}

struct World {
    tables: Vec<Table>,
    know: Vec<Knowledge>,
    oracle: Oracle,
    /// Records not yet delivered (or delivered and kept for a duplicate).
    pending: Vec<Msg>,
    /// Every record ever produced, in order: re-delivered late (also after GC) and used as
    /// the pool for the merge-law tests.
    sent: Vec<Msg>,
    /// Keys of `sent`, so the pool holds each distinct record (and knowledge) once.
    sent_keys: HashSet<(Vec<u8>, Vec<Dot>, Vec<Dot>)>,
    /// Replicas whose outgoing records are lost (an overloaded or one-way cut-off node):
    /// what they send only comes back later as old records.
    muted: Vec<bool>,
    /// Whether any table has collected garbage: replicas that did with different floors may
    /// differ in the dead context entries they keep (not in what is live).
    gc_ran: bool,
}

impl World {
    fn new(n: usize) -> World {
        World {
            tables: (0..n)
                .map(|i| Table::new(ReplicaId(IDS[i]), 0x9e37 + i as u64))
                .collect(),
            know: vec![Knowledge::new(); n],
            oracle: Oracle::default(),
            pending: Vec::new(),
            sent: Vec::new(),
            sent_keys: HashSet::new(),
            muted: vec![false; n],
            gc_ran: false,
        }
    }

    fn n(&self) -> usize {
        self.tables.len()
    }

    /// Another replica than `from`, chosen by `pick`.
    fn other(&self, from: usize, pick: u8) -> usize {
        (from + 1 + pick as usize % (self.n() - 1)) % self.n()
    }

    fn check(&self, i: usize) -> Result<(), TestCaseError> {
        self.tables[i]
            .check_invariants()
            .map_err(|e| TestCaseError::fail(format!("replica {i}: invariant: {e}")))?;
        check_against(
            &self.tables[i],
            &self.oracle.live(&self.know[i]),
            &format!("replica {i}"),
        )
    }

    fn propose(&mut self, r: usize, path: usize, op: Op) -> Result<(), TestCaseError> {
        let rec = self.tables[r]
            .propose(&wp(UNIVERSE[path]), op)
            .map_err(|e| TestCaseError::fail(format!("propose: {e}")))?;
        let dot = Dot {
            replica: ReplicaId(IDS[r]),
            seq: self.tables[r].counter(),
        };
        let mine = rec.entries.iter().find(|e| e.dot.replica == dot.replica);
        prop_assert_eq!(
            mine.map(|e| (e.dot, e.live)),
            Some((dot, op.kind())),
            "a proposed record carries its new dot"
        );
        let observed = self.oracle.about(&self.know[r], path);
        self.oracle.ops.insert(
            dot,
            OpInfo {
                path,
                kind: op.kind(),
                observed,
            },
        );
        self.know[r].insert(dot);
        let msg = Msg {
            from: r,
            item: Item::Rec(rec),
            know: self.oracle.about(&self.know[r], path),
        };
        self.pending.push(msg.clone());
        self.remember(msg);
        self.check(r)
    }

    /// Adds `msg` to the pool of old records unless an equal one is there.
    fn remember(&mut self, msg: Msg) {
        let mut w = Writer::default();
        msg.item.record().encode(&mut w);
        let also = match &msg.item {
            Item::Rec(_) => Vec::new(),
            Item::Ship(s) => s.also.clone(),
        };
        let key = (w.into_bytes(), also, msg.know.iter().copied().collect());
        if self.sent_keys.insert(key) {
            self.sent.push(msg);
        }
    }

    fn deliver(&mut self, msg: &Msg, to: usize) -> Result<MergeOutcome, TestCaseError> {
        let out = self.merge_msg(msg, to)?;
        self.check(to)?;
        Ok(out)
    }

    /// Merges `msg` into replica `to` and the oracle, without comparing them.
    /// Also checks `MergeOutcome::changed`, which tells the filesystem to invalidate its
    /// cache: it must be true exactly when the path's winning live kind changed.
    fn merge_msg(&mut self, msg: &Msg, to: usize) -> Result<MergeOutcome, TestCaseError> {
        let path = &msg.item.record().path;
        let winner_of = |t: &Table| {
            let live: BTreeSet<(Dot, Kind)> =
                t.get(path).map(|r| r.live().collect()).unwrap_or_default();
            winner(&live)
        };
        let before = winner_of(&self.tables[to]);
        let out = match &msg.item {
            Item::Rec(r) => self.tables[to].merge(r),
            Item::Ship(s) => self.tables[to].merge_shipped(s),
        }
        .map_err(|e| TestCaseError::fail(format!("merge: {e}")))?;
        let after = winner_of(&self.tables[to]);
        prop_assert_eq!(
            out.changed,
            before != after,
            "replica {}: merge of {:?} said changed={} but the winner went {:?} -> {:?}",
            to,
            path,
            out.changed,
            before,
            after
        );
        self.know[to].extend(msg.know.iter().copied());
        Ok(out)
    }

    /// Anti-entropy `a -> b`: one chunk of at most about `budget` bytes, or chunks until
    /// `complete` if `to_end`. A muted `a` sends one chunk, which is lost (but kept as old
    /// records).
    fn sync(
        &mut self,
        a: usize,
        b: usize,
        budget: usize,
        to_end: bool,
    ) -> Result<(), TestCaseError> {
        for _ in 0..MAX_CHUNKS {
            let d = self.tables[b].digest();
            prop_assert!(
                !self.tables[a].needs_reset(&d),
                "member {} is below member {}'s GC floor",
                b,
                a
            );
            let chunk = self.tables[a].records_since(&d, budget);
            for s in chunk.items {
                let path = path_index(&s.record.path);
                let msg = Msg {
                    from: a,
                    know: self.oracle.about(&self.know[a], path),
                    item: Item::Ship(s),
                };
                if !self.muted[a] {
                    self.deliver(&msg, b)?;
                }
                self.remember(msg);
            }
            // A muted sender's chunks are lost: one is enough to capture its state.
            if chunk.complete || !to_end || self.muted[a] {
                return Ok(());
            }
        }
        Err(TestCaseError::fail(format!(
            "anti-entropy {a} -> {b} made no progress in {MAX_CHUNKS} chunks"
        )))
    }

    /// Anti-entropy between every ordered pair until every digest is equal (muted replicas
    /// are heard again).
    fn full_sync(&mut self, budget: usize) -> Result<(), TestCaseError> {
        self.muted.fill(false);
        for _round in 0..4 {
            let d0 = self.tables[0].digest();
            if self.tables.iter().all(|t| t.digest() == d0) {
                return Ok(());
            }
            for a in 0..self.n() {
                for b in 0..self.n() {
                    if a != b {
                        self.sync(a, b, budget, true)?;
                    }
                }
            }
        }
        let d0 = self.tables[0].digest();
        prop_assert!(
            self.tables.iter().all(|t| t.digest() == d0),
            "digests still differ after 4 rounds of anti-entropy"
        );
        Ok(())
    }

    /// The GC floor: what every member has seen (a correct lower bound by construction).
    fn floor(&self) -> VersionVector {
        let vvs: Vec<VersionVector> = self.tables.iter().map(|t| t.version_vector()).collect();
        VersionVector::meet(&vvs)
    }

    fn gc(&mut self, mask: u8) -> Result<(), TestCaseError> {
        let floor = self.floor();
        for i in 0..self.n() {
            if mask & (1 << i) != 0 {
                self.tables[i].gc(&floor);
                self.gc_ran = true;
                self.check(i)?;
            }
        }
        let fresh = Table::new(ReplicaId(1000), 1).digest();
        for (i, t) in self.tables.iter().enumerate() {
            prop_assert_eq!(
                t.needs_reset(&fresh),
                t.floor() != VersionVector::default(),
                "replica {}: a fresh replica needs a reset iff the floor is above 0",
                i
            );
            for (j, u) in self.tables.iter().enumerate() {
                prop_assert!(
                    !t.needs_reset(&u.digest()),
                    "member {} is below member {}'s floor {:?}",
                    j,
                    i,
                    t.floor()
                );
            }
        }
        Ok(())
    }

    fn run(&mut self, step: &Step) -> Result<(), TestCaseError> {
        let n = self.n();
        match *step {
            Step::Propose { r, path, op } => {
                self.propose(r as usize % n, path as usize, OPS[op as usize])?
            }
            Step::Deliver { msg, to, keep } => {
                if !self.pending.is_empty() {
                    let k = msg.index(self.pending.len());
                    let m = if keep {
                        self.pending[k].clone()
                    } else {
                        self.pending.swap_remove(k)
                    };
                    let to = self.other(m.from, to);
                    if !self.muted[m.from] {
                        self.deliver(&m, to)?;
                    }
                }
            }
            Step::Broadcast { msg } => {
                if !self.pending.is_empty() {
                    let m = self.pending.swap_remove(msg.index(self.pending.len()));
                    if !self.muted[m.from] {
                        for to in (0..n).filter(|to| *to != m.from) {
                            self.deliver(&m, to)?;
                        }
                    }
                }
            }
            Step::Drop { msg } => {
                if !self.pending.is_empty() {
                    let k = msg.index(self.pending.len());
                    self.pending.swap_remove(k);
                }
            }
            Step::Sync { from, to, budget } => {
                let a = from as usize % n;
                let b = self.other(a, to);
                self.sync(a, b, budget as usize, false)?
            }
            Step::SyncFrom { sources, budget } => {
                for a in (0..n).filter(|a| sources & (1 << a) != 0) {
                    for b in (0..n).filter(|b| *b != a) {
                        self.sync(a, b, budget as usize, true)?;
                    }
                }
            }
            Step::Snapshot { r } => {
                let r = r as usize % n;
                for rec in self.tables[r].records().collect::<Vec<_>>() {
                    let path = path_index(&rec.path);
                    let know = self.oracle.about(&self.know[r], path);
                    self.remember(Msg {
                        from: r,
                        know,
                        item: Item::Rec(rec),
                    });
                }
            }
            Step::Gc { mask } => self.gc(mask)?,
            Step::Mute { r } => {
                let r = r as usize % n;
                self.muted[r] = !self.muted[r];
            }
            Step::RedeliverAll { to, order } => {
                let to = to as usize % n;
                // In a random order: in production order a replica's own records would
                // always come first and make its later ones old news.
                let mut keyed: Vec<(u64, Msg)> = self
                    .sent
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (mix(order ^ i as u64), m.clone()))
                    .collect();
                keyed.sort_by_key(|(k, _)| *k);
                for (_, m) in keyed {
                    self.deliver(&m, to)?;
                }
            }
            Step::Redeliver { msg, to } => {
                if !self.sent.is_empty() {
                    let m = self.sent[msg.index(self.sent.len())].clone();
                    self.deliver(&m, to as usize % n)?;
                }
            }
        }
        Ok(())
    }

    /// After a full sync: every table equals every other and the oracle of all ops. With
    /// `exact`, whole records (dead context entries included) must be equal too, which holds
    /// unless some replicas collected garbage with a higher floor than others.
    fn check_converged(&self, exact: bool) -> Result<(), TestCaseError> {
        let all: Knowledge = self.oracle.ops.keys().copied().collect();
        let live = self.oracle.live(&all);
        let d0 = self.tables[0].digest();
        let r0 = sorted_records(&self.tables[0]);
        for (i, t) in self.tables.iter().enumerate() {
            prop_assert_eq!(&self.know[i], &all, "replica {} learned every op", i);
            prop_assert_eq!(&t.digest(), &d0, "replica {} digest", i);
            if exact {
                prop_assert_eq!(&sorted_records(t), &r0, "replica {} records", i);
            }
            self.check(i)?;
            check_against(t, &live, &format!("converged replica {i}"))?;
        }
        // No holes: each replica's whole history is seen, and nothing sits in the cloud.
        for (i, t) in self.tables.iter().enumerate() {
            prop_assert_eq!(
                d0.vv.get(ReplicaId(IDS[i])),
                t.counter(),
                "every dot of replica {} seen",
                i
            );
        }
        prop_assert!(
            d0.cloud.values().all(|c| c.is_empty()),
            "cloud left: {:?}",
            d0.cloud
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Histories.

#[derive(Clone, Debug)]
enum Step {
    /// A local mutation on replica `r % n`.
    Propose { r: u8, path: u8, op: u8 },
    /// Deliver a pending record to another replica; `keep` leaves it pending (a duplicate).
    Deliver { msg: Index, to: u8, keep: bool },
    /// Deliver a pending record to every other replica (an eager push).
    Broadcast { msg: Index },
    /// Lose a pending record.
    Drop { msg: Index },
    /// One anti-entropy chunk of at most `budget` bytes from one replica to another.
    Sync { from: u8, to: u8, budget: u16 },
    /// Full anti-entropy from each replica in `sources` to every other: the others learn
    /// everything except what only the left-out replicas know, so GC floors rise while
    /// some dots are still unknown to some replicas.
    SyncFrom { sources: u8, budget: u16 },
    /// Capture a replica's whole state as records (pool for the law tests).
    Snapshot { r: u8 },
    /// GC on the replicas in `mask`, with the meet of every member's version vector.
    Gc { mask: u8 },
    /// Deliver any record ever produced again (possibly from before a GC).
    Redeliver { msg: Index, to: u8 },
    /// Deliver every distinct record ever produced again to one replica.
    RedeliverAll { to: u8, order: u64 },
    /// Toggle whether a replica's outgoing records are lost (pushes and anti-entropy).
    Mute { r: u8 },
}

/// One step of a history; `Propose` picks its path from `hot` (universe indices).
fn step(with_gc: bool, hot: &'static [u8]) -> BoxedStrategy<Step> {
    let base = prop_oneof![
        6 => (any::<u8>(), 0..hot.len(), 0..OPS.len() as u8)
            .prop_map(move |(r, path, op)| Step::Propose { r, path: hot[path], op }),
        4 => (any::<Index>(), any::<u8>(), prop::bool::weighted(0.2))
            .prop_map(|(msg, to, keep)| Step::Deliver { msg, to, keep }),
        2 => any::<Index>().prop_map(|msg| Step::Broadcast { msg }),
        1 => any::<Index>().prop_map(|msg| Step::Drop { msg }),
        1 => (any::<u8>(), any::<u8>(), 1..300u16)
            .prop_map(|(from, to, budget)| Step::Sync { from, to, budget }),
        1 => (any::<u8>(), 24..300u16)
            .prop_map(|(sources, budget)| Step::SyncFrom { sources, budget }),
        1 => any::<u8>().prop_map(|r| Step::Snapshot { r }),
    ];
    if with_gc {
        prop_oneof![
            16 => base,
            3 => any::<u8>().prop_map(|mask| Step::Gc { mask }),
            2 => (any::<u8>(), 24..300u16)
                .prop_map(|(sources, budget)| Step::SyncFrom { sources, budget }),
            4 => (any::<Index>(), any::<u8>()).prop_map(|(msg, to)| Step::Redeliver { msg, to }),
            1 => (any::<u8>(), any::<u64>()).prop_map(|(to, order)| Step::RedeliverAll { to, order }),
            1 => any::<u8>().prop_map(|r| Step::Mute { r }),
        ]
        .boxed()
    } else {
        base.boxed()
    }
}

/// 2 to 5 replicas, most often 3: enough for a replica to be left out of what the others
/// share, few enough that the GC floor (what all have seen) often rises.
fn history(with_gc: bool, max_steps: usize) -> impl Strategy<Value = (usize, Vec<Step>)> {
    let n = prop_oneof![2 => Just(3usize), 1 => 2..=5usize];
    (n, prop::collection::vec(step(with_gc, &HOT), 0..max_steps))
}

/// A one-way partition (see `gc_across_a_partition_never_resurrects`): mute a non-empty
/// proper subset, run random steps, let the heard replicas share everything, GC everywhere,
/// deliver every old record to every replica, then go on with random steps.
fn partition_history() -> impl Strategy<Value = (usize, Vec<Step>)> {
    (
        3..=4usize,
        (any::<u8>(), any::<u64>()),
        prop::collection::vec(step(false, &PARTITION_HOT), 0..45),
        prop::collection::vec(step(true, &PARTITION_HOT), 0..15),
    )
        .prop_map(|(n, (mask, order), during, after)| {
            // Replica 0 is always left out and replica n-1 always heard; the mask picks the
            // others, so both sides are non-empty.
            let left_out = (mask as usize | 1) & ((1 << (n - 1)) - 1);
            let mut steps: Vec<Step> = (0..n)
                .filter(|r| left_out & (1 << r) != 0)
                .map(|r| Step::Mute { r: r as u8 })
                .collect();
            steps.extend(during);
            steps.push(Step::SyncFrom {
                sources: !(left_out as u8),
                budget: 200,
            });
            steps.push(Step::Gc { mask: 0xff });
            steps.extend((0..n).map(|to| Step::RedeliverAll {
                to: to as u8,
                order: order ^ to as u64,
            }));
            steps.extend(after);
            (n, steps)
        })
}

/// Ends a history with GC: full sync, every table equal to the oracle; GC with the common
/// floor leaves no tombstone, no indexed dot, no cloud, and a floor that a fresh replica is
/// below; every record ever produced, delivered again to everyone, changes nothing.
fn finish_with_gc(mut w: World, budget: usize) -> Result<(), TestCaseError> {
    w.full_sync(budget)?;
    w.check_converged(!w.gc_ran)?;
    // Every floor is now the same (the meet of equal vectors), so states are equal again.
    w.gc(0xff)?;
    let all: Knowledge = w.oracle.ops.keys().copied().collect();
    let live = w.oracle.live(&all);
    let live_paths = live.iter().filter(|l| !l.is_empty()).count();
    for (i, t) in w.tables.iter().enumerate() {
        let s = t.stats();
        prop_assert_eq!(s.tombstones, 0, "replica {} tombstones after full GC", i);
        prop_assert_eq!(
            s.indexed_dots,
            0,
            "replica {} indexed dots after full GC",
            i
        );
        prop_assert_eq!(s.cloud_dots, 0, "replica {} cloud after full GC", i);
        prop_assert_eq!(s.live_paths, live_paths, "replica {} live paths", i);
    }
    if !w.oracle.ops.is_empty() {
        let fresh: Digest = Table::new(ReplicaId(1000), 1).digest();
        for (i, t) in w.tables.iter().enumerate() {
            prop_assert!(
                t.needs_reset(&fresh),
                "replica {}: fresh digest below floor",
                i
            );
        }
    }
    w.check_converged(true)?;
    let before: Vec<Vec<Record>> = w.tables.iter().map(sorted_records).collect();
    for m in w.sent.clone() {
        for to in 0..w.n() {
            let out = w.deliver(&m, to)?;
            prop_assert!(
                !out.changed,
                "an old record changed replica {}: {:?}",
                to,
                m.item
            );
        }
    }
    for (i, t) in w.tables.iter().enumerate() {
        prop_assert_eq!(
            &sorted_records(t),
            &before[i],
            "replica {} after old records",
            i
        );
    }
    w.check_converged(true)
}

fn play(n: usize, steps: &[Step]) -> Result<World, TestCaseError> {
    let mut w = World::new(n);
    for s in steps {
        w.run(s)?;
    }
    Ok(w)
}

// ---------------------------------------------------------------------------------------
// Merge laws on records.

fn merged(records: &[&Record]) -> Result<Table, TestCaseError> {
    let mut t = Table::new(OBSERVER, 77);
    for r in records {
        t.merge(r)
            .map_err(|e| TestCaseError::fail(format!("merge: {e}")))?;
    }
    Ok(t)
}

/// A fresh table that merged the whole states of `tables`, in order.
fn fold(tables: &[&Table]) -> Result<Table, TestCaseError> {
    let recs: Vec<Vec<Record>> = tables.iter().map(|t| t.records().collect()).collect();
    merged(&recs.iter().flatten().collect::<Vec<_>>())
}

/// Whether two tables hold the same state. With `same_records` (both merged the same
/// records, in any order or grouping) their digests must match too; a table that merged
/// another's *state* sees only each path's latest dots, not the superseded ones.
fn assert_same(a: &Table, b: &Table, same_records: bool, what: &str) -> Result<(), TestCaseError> {
    a.check_invariants().map_err(TestCaseError::fail)?;
    b.check_invariants().map_err(TestCaseError::fail)?;
    prop_assert_eq!(sorted_records(a), sorted_records(b), "{}: records", what);
    if same_records {
        prop_assert_eq!(a.digest(), b.digest(), "{}: digest", what);
    }
    let (sa, sb) = (a.stats(), b.stats());
    prop_assert_eq!(
        (sa.live_paths, sa.tombstones),
        (sb.live_paths, sb.tombstones),
        "{}: counts",
        what
    );
    for p in UNIVERSE.iter().chain(QUERY_ONLY.iter()) {
        prop_assert_eq!(
            a.resolve(&wp(p)),
            b.resolve(&wp(p)),
            "{}: resolve({})",
            what,
            p
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The properties.

// Case counts keep the whole file under ~20 s in a debug build on 2 busy cores.
proptest! {
    #![proptest_config(config(400))]

    /// Random histories with reordering, duplicates and drops, then anti-entropy: every
    /// replica converges to the same table, which is the oracle's.
    #[test]
    fn replicas_converge_to_the_oracle((n, steps) in history(false, 60), budget in 24..400usize) {
        let mut w = play(n, &steps)?;
        w.full_sync(budget)?;
        w.check_converged(true)?;
    }
}

proptest! {
    #![proptest_config(config(300))]

    /// The same with GC interleaved (floor = meet of every member's version vector) and old
    /// records, captured before the GC, delivered again: no removed path comes back, and a
    /// final sync + GC leaves no tombstone, no indexed dot, and a floor a fresh replica is
    /// below.
    #[test]
    fn gc_never_resurrects((n, steps) in history(true, 70), budget in 24..400usize) {
        let w = play(n, &steps)?;
        finish_with_gc(w, budget)?;
    }

    /// GC across a one-way partition: the replicas in `left_out` hear the others but are not
    /// heard; the others share everything and collect garbage while some of their removals
    /// are still unknown next to the left-out replicas' own dots. Then every record the
    /// left-out replicas ever sent arrives late, at everyone: none may bring back a removal
    /// whose tombstone is gone.
    #[test]
    fn gc_across_a_partition_never_resurrects(
        (n, steps) in partition_history(),
        budget in 24..400usize,
    ) {
        let w = play(n, &steps)?;
        finish_with_gc(w, budget)?;
    }
}

proptest! {
    #![proptest_config(config(300))]

    /// Merging a set of records gives the same table whatever the order (commutative),
    /// however they are grouped into batches (associative), and merging again changes
    /// nothing (idempotent); the result is the oracle of what the records stand for.
    #[test]
    fn merge_laws(
        (n, steps) in history(false, 40),
        picks in prop::collection::vec(any::<Index>(), 1..40),
        keys in prop::collection::vec(any::<u32>(), 1..40),
        cuts in (any::<Index>(), any::<Index>()),
    ) {
        let w = play(n, &steps)?;
        prop_assume!(!w.sent.is_empty());
        let pool: Vec<&Msg> = picks.iter().map(|i| &w.sent[i.index(w.sent.len())]).collect();
        let recs: Vec<&Record> = pool.iter().map(|m| m.item.record()).collect();

        let t1 = merged(&recs)?;
        let know: Knowledge = pool.iter().flat_map(|m| m.know.iter().copied()).collect();
        check_against(&t1, &w.oracle.live(&know), "merged pool")?;

        // Commutative: reversed, and shuffled by random keys.
        let rev: Vec<&Record> = recs.iter().rev().copied().collect();
        assert_same(&t1, &merged(&rev)?, true, "reversed order")?;
        let mut order: Vec<usize> = (0..recs.len()).collect();
        order.sort_by_key(|&i| (keys[i % keys.len()], i));
        let shuffled: Vec<&Record> = order.iter().map(|&i| recs[i]).collect();
        assert_same(&t1, &merged(&shuffled)?, true, "shuffled order")?;

        // Associative: (A ⊔ B) ⊔ C = A ⊔ (B ⊔ C) = A, B, C merged one by one.
        let (mut c1, mut c2) = (cuts.0.index(recs.len() + 1), cuts.1.index(recs.len() + 1));
        if c1 > c2 {
            std::mem::swap(&mut c1, &mut c2);
        }
        let ta = merged(&recs[..c1])?;
        let tb = merged(&recs[c1..c2])?;
        let tc = merged(&recs[c2..])?;
        let left = fold(&[&fold(&[&ta, &tb])?, &tc])?;
        let right = fold(&[&ta, &fold(&[&tb, &tc])?])?;
        assert_same(&t1, &left, false, "(A+B)+C")?;
        assert_same(&t1, &right, false, "A+(B+C)")?;

        // Idempotent: merging the pool again, or each record twice, changes nothing.
        let mut again = t1.clone();
        for r in &recs {
            let out = again.merge(r).map_err(|e| TestCaseError::fail(format!("merge: {e}")))?;
            prop_assert_eq!(out, MergeOutcome::default(), "second merge of {:?}", r);
        }
        assert_same(&t1, &again, true, "merged twice")?;
        let twice: Vec<&Record> = recs.iter().flat_map(|r| [*r, *r]).collect();
        assert_same(&t1, &merged(&twice)?, true, "each record twice in a row")?;
    }
}

// ---------------------------------------------------------------------------------------
// The oracle itself, on DESIGN.md's examples (so it is not vacuously agreeing).

#[test]
fn oracle_follows_design_examples() {
    let a = ReplicaId(1);
    let b = ReplicaId(2);
    let d = |replica, seq| Dot { replica, seq };
    let mut o = Oracle::default();
    let f = path_index(&wp("c"));
    // a marks c Rw; b learns it; then concurrently a forgets c and b whites it out.
    o.ops.insert(
        d(a, 1),
        OpInfo {
            path: f,
            kind: Some(Kind::Rw),
            observed: BTreeSet::new(),
        },
    );
    o.ops.insert(
        d(a, 2),
        OpInfo {
            path: f,
            kind: None,
            observed: [d(a, 1)].into(),
        },
    );
    o.ops.insert(
        d(b, 1),
        OpInfo {
            path: f,
            kind: Some(Kind::Whiteout),
            observed: [d(a, 1)].into(),
        },
    );
    let all: Knowledge = o.ops.keys().copied().collect();
    let live = o.live(&all);
    assert_eq!(live[f], [(d(b, 1), Kind::Whiteout)].into());
    assert_eq!(expected_resolution("c", &live), Resolution::Hidden);
    // Concurrent Rw on a and Whiteout on b over a: Rw wins, and nothing below is hidden.
    let pa = path_index(&wp("a"));
    o.ops.insert(
        d(a, 3),
        OpInfo {
            path: pa,
            kind: Some(Kind::Whiteout),
            observed: BTreeSet::new(),
        },
    );
    let all: Knowledge = o.ops.keys().copied().collect();
    assert_eq!(
        expected_resolution("a/b/c/x", &o.live(&all)),
        Resolution::Hidden
    );
    o.ops.insert(
        d(b, 2),
        OpInfo {
            path: pa,
            kind: Some(Kind::Opaque),
            observed: BTreeSet::new(),
        },
    );
    let all: Knowledge = o.ops.keys().copied().collect();
    assert_eq!(expected_resolution("a", &o.live(&all)), Resolution::Opaque);
    assert_eq!(
        expected_resolution("a/x", &o.live(&all)),
        Resolution::RwOnly
    );
    // Knowing only b's ops: a's whiteout of a is unknown, so nothing hides.
    let only_b: Knowledge = [d(b, 1), d(b, 2)].into();
    assert_eq!(
        expected_resolution("c", &o.live(&only_b)),
        Resolution::Hidden
    );
    assert_eq!(
        expected_resolution("a/x", &o.live(&only_b)),
        Resolution::RwOnly
    );
}

/// A deterministic run of the harness itself: a concurrent whiteout survives a forget that
/// did not observe it, on every replica, through a drop and anti-entropy.
#[test]
fn concurrent_add_survives_a_forget() {
    let b = path_index(&wp("b"));
    let mut w = World::new(2);
    w.propose(0, b, Op::MarkRw).unwrap();
    let mark = w.pending.remove(0);
    w.deliver(&mark, 1).unwrap();
    w.propose(1, b, Op::Forget).unwrap(); // observed 0's mark
    w.propose(0, b, Op::Whiteout).unwrap(); // concurrent with the forget
    w.pending.clear(); // both records lost: only anti-entropy tells
    w.full_sync(32).unwrap();
    w.check_converged(true).unwrap();
    for t in &w.tables {
        assert_eq!(t.resolve(&wp("b")), Resolution::Hidden);
        assert_eq!(t.resolve(&wp("b/c")), Resolution::Hidden);
    }
}

/// A late record from before a GC names a dot whose removal was collected, next to a dot
/// the receiver has never seen: the collected dot must stay removed.
#[test]
fn late_record_does_not_resurrect_a_collected_removal() {
    let c = path_index(&wp("c"));
    let mut w = World::new(3);
    w.propose(2, c, Op::MarkRw).unwrap(); // replica 2 marks c (dot C)
    w.propose(0, c, Op::MarkRw).unwrap(); // replica 0 marks c concurrently (dot A)
    let a_mark = w.pending.pop().unwrap();
    w.pending.clear(); // C's own record is lost: replica 0 never learns C
    w.deliver(&a_mark, 1).unwrap();
    w.deliver(&a_mark, 2).unwrap();
    // Replica 2 now holds {A live, C live}: capture that state as an old record.
    w.run(&Step::Snapshot { r: 2 }).unwrap();
    let old = w.sent.last().unwrap().clone();
    w.propose(1, c, Op::Forget).unwrap(); // replica 1 forgets c, removing A (not C)
    let forget = w.pending.pop().unwrap();
    w.deliver(&forget, 0).unwrap();
    w.deliver(&forget, 2).unwrap();
    // Everyone has seen A and the forget; only replica 2 has seen C. GC on replica 0
    // collects c's tombstone.
    w.gc(0b001).unwrap();
    assert_eq!(
        w.tables[0].get(&wp("c")),
        None,
        "the tombstone is collected"
    );
    // The old record arrives: C is new to replica 0, A must not come back with it.
    w.deliver(&old, 0).unwrap();
    let live: Vec<_> = w.tables[0].get(&wp("c")).unwrap().live().collect();
    assert_eq!(
        live,
        vec![(
            Dot {
                replica: ReplicaId(IDS[2]),
                seq: 1
            },
            Kind::Rw
        )]
    );
    w.full_sync(64).unwrap();
    w.check_converged(false).unwrap();
}
