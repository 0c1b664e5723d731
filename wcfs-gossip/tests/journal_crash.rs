//! Crash tests for the journal file: a realistic history cut at every byte offset, and single
//! bit flips, must reopen to exactly the state of the fully written frames, with a counter
//! that never goes back below a used sequence number.

use std::path::Path;

use wcfs_core::journal::{HEADER_LEN, HeaderError, JournalEntry, Tail, apply};
use wcfs_core::{Op, Record, ReplicaId, Table, WPath};
use wcfs_gossip::journal::{Durability, Journal, JournalError, JournalOptions};

const ME: ReplicaId = ReplicaId(0x11);

/// A deterministic xorshift, so the history is the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A scratch directory on tmpfs when there is one: these tests reopen the journal thousands of
/// times, and each reopen that truncates fsyncs, which on a disk costs milliseconds and tests
/// nothing more.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().unwrap()
}

fn sorted(t: &Table) -> Vec<Record> {
    let mut v: Vec<Record> = t.records().collect();
    v.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    v
}

fn opts() -> JournalOptions {
    JournalOptions {
        durability: Durability::Never,
        reserve_block: 3,
    }
}

/// What the test knows about the journal it wrote.
struct History {
    bytes: Vec<u8>,
    /// The entries, in order, with their frame's start and end offsets.
    frames: Vec<(JournalEntry, usize, usize)>,
    /// The live table's sorted records after the first `k` frames, for every `k`.
    states: Vec<Vec<Record>>,
}

impl History {
    /// Frames wholly before `cut`.
    fn whole_before(&self, cut: usize) -> usize {
        self.frames.iter().take_while(|f| f.2 <= cut).count()
    }
}

/// Writes a journal the way the node does: reserve before every local proposal, journal every
/// local record and every remote record merged; three peers propose concurrently on a few
/// shared paths, so records carry multi-replica contexts, removals and concurrent kinds.
fn build(path: &Path) -> History {
    let (j, _) = Journal::open(path, ME, opts()).unwrap();
    let mut me = Table::new(ME, 5);
    let mut peers = [
        Table::new(ReplicaId(0x22), 6),
        Table::new(ReplicaId(0x33), 7),
    ];
    let paths: Vec<WPath> = [
        "www/a.php",
        "www/up/1.jpg",
        "www/up",
        "cache/x",
        "www/up/2.jpg",
    ]
    .iter()
    .map(|s| WPath::new(s.as_bytes()).unwrap())
    .collect();
    let ops = [Op::MarkRw, Op::MarkOpaque, Op::Whiteout, Op::Forget];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut frames = Vec::new();
    let mut states = vec![sorted(&me)];
    let push =
        |j: &Journal, e: JournalEntry, me: &Table, frames: &mut Vec<_>, states: &mut Vec<_>| {
            let start = j.len() as usize;
            j.append(&e).unwrap();
            frames.push((e, start, j.len() as usize));
            states.push(sorted(me));
        };
    for _ in 0..36 {
        let path = &paths[rng.below(paths.len() as u64) as usize];
        let op = ops[rng.below(4) as usize];
        match rng.below(3) {
            0 => {
                let reserved_before = j.stats().reserved;
                let start = j.len() as usize;
                j.ensure_reserved(me.counter() + 1).unwrap();
                if j.stats().reserved != reserved_before {
                    let upto = j.stats().reserved;
                    frames.push((JournalEntry::Reserve { upto }, start, j.len() as usize));
                    states.push(sorted(&me));
                }
                let rec = me.propose(path, op).unwrap();
                push(
                    &j,
                    JournalEntry::Record(rec.clone()),
                    &me,
                    &mut frames,
                    &mut states,
                );
                for p in &mut peers {
                    if rng.below(2) == 0 {
                        p.merge(&rec).unwrap();
                    }
                }
            }
            who => {
                let who = who as usize - 1;
                let rec = peers[who].propose(path, op).unwrap();
                peers[1 - who].merge(&rec).unwrap();
                me.merge(&rec).unwrap();
                push(&j, JournalEntry::Record(rec), &me, &mut frames, &mut states);
            }
        }
    }
    drop(j);
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(frames.last().unwrap().2, bytes.len());
    let reserves = frames
        .iter()
        .filter(|f| matches!(f.0, JournalEntry::Reserve { .. }))
        .count();
    assert!(reserves >= 3, "history should hold several reservations");
    History {
        bytes,
        frames,
        states,
    }
}

/// Reopens `path` and checks it holds exactly the first `k` frames of `h`; returns the table.
fn reopen_and_check(path: &Path, h: &History, k: usize, what: &str) -> (Journal, Table) {
    let (j, rep) = Journal::open(path, ME, opts()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let want: Vec<JournalEntry> = h.frames[..k].iter().map(|f| f.0.clone()).collect();
    assert_eq!(rep.entries, want, "{what}: replayed entries");
    let end = if k == 0 {
        HEADER_LEN
    } else {
        h.frames[k - 1].2
    };
    assert_eq!(rep.valid_len, end, "{what}");
    assert_eq!(
        j.len() as usize,
        end,
        "{what}: journal positioned after the last good frame"
    );
    assert_eq!(
        std::fs::metadata(path).unwrap().len() as usize,
        end,
        "{what}: bad tail truncated on disk"
    );
    let mut t = Table::new(ME, 99);
    apply(&mut t, &rep.entries).unwrap();
    t.check_invariants().unwrap();
    assert_eq!(sorted(&t), h.states[k], "{what}: reopened table");
    (j, t)
}

/// The counter after reopening covers every local sequence number that may have left the node:
/// every local record whose frame was at least started before the cut, and every reservation
/// replayed.
fn check_counter(h: &History, cut: usize, t: &Table, what: &str) {
    for (e, start, end) in &h.frames {
        match e {
            JournalEntry::Record(r) if *start < cut => {
                if let Some(c) = r.entries.iter().find(|c| c.dot.replica == ME) {
                    assert!(
                        t.counter() >= c.dot.seq,
                        "{what}: counter {} < used seq {}",
                        t.counter(),
                        c.dot.seq
                    );
                }
            }
            JournalEntry::Reserve { upto } if *end <= cut => {
                assert!(
                    t.counter() >= *upto,
                    "{what}: counter below replayed reservation"
                );
            }
            _ => {}
        }
    }
}

#[test]
fn truncation_at_every_offset() {
    let dir = scratch();
    let h = build(&dir.path().join("orig.wcj"));
    let path = dir.path().join("cut.wcj");
    for cut in 0..=h.bytes.len() {
        std::fs::write(&path, &h.bytes[..cut]).unwrap();
        let what = format!("cut at {cut}/{}", h.bytes.len());
        if cut < HEADER_LEN {
            match Journal::open(&path, ME, opts()) {
                Err(JournalError::Header {
                    source: HeaderError::Truncated { len },
                    ..
                }) => assert_eq!(len, cut),
                other => panic!("{what}: expected a truncated-header error, got {other:?}"),
            }
            continue;
        }
        let k = h.whole_before(cut);
        let (j, mut t) = reopen_and_check(&path, &h, k, &what);
        check_counter(&h, cut, &t, &what);

        // Appending after a torn tail lands right after the last good frame.
        j.ensure_reserved(t.counter() + 1).unwrap();
        let rec = t
            .propose(&WPath::new(b"after/crash").unwrap(), Op::MarkRw)
            .unwrap();
        j.append(&JournalEntry::Record(rec.clone())).unwrap();
        drop(j);
        let (_, rep) = Journal::open(&path, ME, opts()).unwrap();
        assert_eq!(rep.tail, Tail::Clean, "{what}: reopened after append");
        assert_eq!(rep.entries.len(), k + 2, "{what}");
        assert_eq!(rep.entries[k + 1], JournalEntry::Record(rec), "{what}");
        let mut t2 = Table::new(ME, 1);
        apply(&mut t2, &rep.entries).unwrap();
        assert_eq!(
            sorted(&t2),
            sorted(&t),
            "{what}: table after append and reopen"
        );
    }
}

#[test]
fn single_bit_flips() {
    let dir = scratch();
    let h = build(&dir.path().join("orig.wcj"));
    let path = dir.path().join("flip.wcj");
    for at in 0..h.bytes.len() {
        for bit in [at % 8, (at * 5 + 3) % 8] {
            let mut bad = h.bytes.clone();
            bad[at] ^= 1 << bit;
            std::fs::write(&path, &bad).unwrap();
            let what = format!("bit {bit} of byte {at}");
            if at < HEADER_LEN {
                match Journal::open(&path, ME, opts()) {
                    Err(e @ JournalError::Header { .. }) => {
                        assert!(e.to_string().contains("flip.wcj"), "{what}: {e}");
                    }
                    other => panic!("{what}: expected a header error, got {other:?}"),
                }
                continue;
            }
            // The flipped frame and everything after it are dropped; nothing before it is.
            let k = h.frames.iter().take_while(|f| f.2 <= at).count();
            reopen_and_check(&path, &h, k, &what);
        }
    }
}

#[test]
fn a_torn_tail_is_truncated_before_appending() {
    let dir = scratch();
    let path = dir.path().join("j.wcj");
    let h = build(&path);
    // Cut in the middle of the last frame, then append twice with reopens in between.
    let (_, start, end) = h.frames.last().unwrap().clone();
    std::fs::write(&path, &h.bytes[..(start + end) / 2]).unwrap();
    let n = h.frames.len();
    let (j, mut t) = reopen_and_check(&path, &h, n - 1, "torn last frame");
    let mut extra = Vec::new();
    for name in ["x1", "x2"] {
        j.ensure_reserved(t.counter() + 1).unwrap();
        let rec = t
            .propose(&WPath::new(name.as_bytes()).unwrap(), Op::Whiteout)
            .unwrap();
        j.append(&JournalEntry::Record(rec.clone())).unwrap();
        extra.push(rec);
    }
    drop(j);
    let (j, rep) = Journal::open(&path, ME, opts()).unwrap();
    assert_eq!(rep.tail, Tail::Clean);
    let recs: Vec<&Record> = rep
        .entries
        .iter()
        .skip(n - 1)
        .filter_map(|e| match e {
            JournalEntry::Record(r) => Some(r),
            JournalEntry::Reserve { .. } => None,
        })
        .collect();
    assert_eq!(recs, extra.iter().collect::<Vec<_>>());
    assert_eq!(j.len(), std::fs::metadata(&path).unwrap().len());
}
