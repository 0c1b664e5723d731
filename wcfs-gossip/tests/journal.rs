//! The journal file's behaviour: creation, typed errors, group commit from many threads, the
//! durability policies, counter reservations and rotation after a snapshot.

use std::sync::Arc;
use std::time::Duration;

use wcfs_core::journal::{
    CorruptReason, FORMAT_VERSION, HEADER_LEN, Header, HeaderError, JournalEntry, Tail, apply,
    encode_frame,
};
use wcfs_core::{Op, Record, ReplicaId, Table, WPath};
use wcfs_gossip::journal::{
    DEFAULT_RESERVE_BLOCK, Durability, Journal, JournalError, JournalOptions,
};

const ME: ReplicaId = ReplicaId(42);

fn opts(durability: Durability) -> JournalOptions {
    JournalOptions {
        durability,
        ..JournalOptions::default()
    }
}

fn rec(t: &mut Table, path: &str) -> Record {
    t.propose(&WPath::new(path.as_bytes()).unwrap(), Op::MarkRw)
        .unwrap()
}

#[test]
fn creates_a_missing_journal_with_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let (j, rep) = Journal::open(&path, ME, JournalOptions::default()).unwrap();
    assert!(rep.entries.is_empty());
    assert_eq!(rep.tail, Tail::Clean);
    assert_eq!(rep.header.version, FORMAT_VERSION);
    assert_eq!(j.len(), HEADER_LEN as u64);
    assert!(j.is_empty());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(Header::decode(&bytes, ME).unwrap().replica, ME);
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn another_replicas_journal_is_refused_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    drop(Journal::open(&path, ME, JournalOptions::default()).unwrap());
    let err = Journal::open(&path, ReplicaId(43), JournalOptions::default()).unwrap_err();
    assert!(
        matches!(
            &err,
            JournalError::Header {
                source: HeaderError::WrongReplica { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("000000000000002a"), "{msg}");

    std::fs::write(&path, b"#!/bin/sh\necho not a journal at all\n").unwrap();
    let err = Journal::open(&path, ME, JournalOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::Header {
                source: HeaderError::BadMagic { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_checksummed_but_undecodable_frame_is_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let (j, _) = Journal::open(&path, ME, JournalOptions::default()).unwrap();
    let mut t = Table::new(ME, 1);
    j.append(&JournalEntry::Record(rec(&mut t, "a"))).unwrap();
    drop(j);
    // A frame from a hypothetical newer writer: tag 200, valid CRC.
    let payload = [200u8, 0, 0];
    let mut bytes = std::fs::read(&path).unwrap();
    let good_len = bytes.len();
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32_ieee(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    std::fs::write(&path, &bytes).unwrap();
    let err = Journal::open(&path, ME, JournalOptions::default()).unwrap_err();
    match &err {
        JournalError::Undecodable {
            offset,
            reason: CorruptReason::Entry(_),
            ..
        } => assert_eq!(*offset, good_len),
        other => panic!("expected Undecodable, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "file left untouched");
}

/// CRC32 (IEEE), bitwise, so this test does not trust the code under test for its input.
fn crc32_ieee(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn frame_crc_is_standard_crc32() {
    let mut t = Table::new(ME, 1);
    let frame = encode_frame(&JournalEntry::Record(rec(&mut t, "site/x")));
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 8);
    let crc = u32::from_le_bytes(frame[4..8].try_into().unwrap());
    assert_eq!(crc, crc32_ieee(&frame[8..]));
}

#[test]
fn group_commit_from_many_threads() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 40;
    // Under the target dir, i.e. on a real disk in CI: on tmpfs an fsync is nearly free, so
    // appenders rarely overlap and the sharing checked below would be left to chance.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("journal");
    let (j, _) = Journal::open(&path, ME, opts(Durability::Always)).unwrap();
    let j = Arc::new(j);
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let j = Arc::clone(&j);
            std::thread::spawn(move || {
                // Each thread is its own replica so records are distinct and independent.
                let mut t = Table::new(ReplicaId(1000 + i as u64), 1);
                for n in 0..PER_THREAD {
                    let r = rec(&mut t, &format!("t{i}/f{n}"));
                    j.append(&JournalEntry::Record(r)).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = j.stats();
    assert_eq!(s.appends, (THREADS * PER_THREAD) as u64);
    assert_eq!(s.synced_bytes, s.bytes, "everything appended is synced");
    assert!(s.fsyncs >= 1);
    // Appenders that overlap share fsyncs; with 8 threads appending at once there is
    // overlap unless the scheduler ran every append strictly alone, 320 times in a row.
    assert!(
        s.fsyncs < s.appends,
        "no fsync was shared: {} fsyncs for {} appends",
        s.fsyncs,
        s.appends
    );
    drop(j);
    let (_, rep) = Journal::open(&path, ME, opts(Durability::Always)).unwrap();
    assert_eq!(rep.tail, Tail::Clean);
    assert_eq!(rep.entries.len(), THREADS * PER_THREAD);
    // Each thread's records are in its own order (appends are serialized, never interleaved).
    for i in 0..THREADS {
        let seqs: Vec<u64> = rep
            .entries
            .iter()
            .filter_map(|e| match e {
                JournalEntry::Record(r)
                    if r.entries[0].dot.replica == ReplicaId(1000 + i as u64) =>
                {
                    Some(r.entries[0].dot.seq)
                }
                _ => None,
            })
            .collect();
        assert_eq!(seqs, (1..=PER_THREAD as u64).collect::<Vec<_>>());
    }
}

#[test]
fn always_syncs_every_append_when_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path().join("j"), ME, opts(Durability::Always)).unwrap();
    let mut t = Table::new(ME, 1);
    for n in 0..5 {
        j.append(&JournalEntry::Record(rec(&mut t, &format!("f{n}"))))
            .unwrap();
        let s = j.stats();
        assert_eq!(s.synced_bytes, s.bytes);
        assert_eq!(s.fsyncs, n + 1);
    }
}

#[test]
fn interval_defers_fsync_until_due() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(
        dir.path().join("j"),
        ME,
        opts(Durability::Interval(Duration::from_secs(3600))),
    )
    .unwrap();
    let mut t = Table::new(ME, 1);
    for n in 0..10 {
        j.append(&JournalEntry::Record(rec(&mut t, &format!("f{n}"))))
            .unwrap();
    }
    let s = j.stats();
    assert_eq!(s.fsyncs, 0, "an hour has not passed");
    assert!(s.synced_bytes < s.bytes);
    j.sync_if_due().unwrap();
    assert_eq!(j.stats().fsyncs, 0);
    j.sync().unwrap();
    let s = j.stats();
    assert_eq!((s.fsyncs, s.synced_bytes), (1, s.bytes));

    // A zero interval: every append finds the interval passed and syncs.
    let (j, _) = Journal::open(
        dir.path().join("k"),
        ME,
        opts(Durability::Interval(Duration::ZERO)),
    )
    .unwrap();
    j.append(&JournalEntry::Record(rec(&mut t, "g"))).unwrap();
    let s = j.stats();
    assert_eq!((s.fsyncs, s.synced_bytes), (1, s.bytes));

    // Never: nothing is fsynced, not even reservations.
    let (j, _) = Journal::open(dir.path().join("n"), ME, opts(Durability::Never)).unwrap();
    j.ensure_reserved(1).unwrap();
    j.append(&JournalEntry::Record(rec(&mut t, "h"))).unwrap();
    assert_eq!(j.stats().fsyncs, 0);
}

#[test]
fn reservations_are_durable_and_block_sized() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let o = JournalOptions {
        durability: Durability::Interval(Duration::from_secs(3600)),
        reserve_block: 10,
    };
    let (j, _) = Journal::open(&path, ME, o).unwrap();
    let mut t = Table::new(ME, 1);
    for n in 0..25 {
        j.ensure_reserved(t.counter() + 1).unwrap();
        // Even under Interval, the reservation is on disk before the number is used.
        let s = j.stats();
        assert!(s.reserved > t.counter());
        assert!(s.fsyncs >= 1);
        j.append(&JournalEntry::Record(rec(&mut t, &format!("f{n}"))))
            .unwrap();
    }
    let s = j.stats();
    assert_eq!(s.reserved, 30);
    assert_eq!(
        s.fsyncs, 3,
        "one fsync per block of 10, none for the records"
    );
    // Crash without syncing the records: only what was fsynced survives (simulate by
    // cutting the file at the synced length).
    let synced = s.synced_bytes;
    drop(j);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(synced).unwrap();
    drop(f);
    let (j, rep) = Journal::open(&path, ME, o).unwrap();
    let mut t2 = Table::new(ME, 1);
    apply(&mut t2, &rep.entries).unwrap();
    assert!(
        t2.counter() >= t.counter(),
        "no sequence number can be reused"
    );
    assert_eq!(j.stats().reserved, 30);
    assert_eq!(
        DEFAULT_RESERVE_BLOCK,
        JournalOptions::default().reserve_block
    );
}

#[test]
fn rotate_keeps_the_reservation_and_later_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let (j, _) = Journal::open(&path, ME, opts(Durability::Always)).unwrap();
    let mut t = Table::new(ME, 1);
    for n in 0..5 {
        j.ensure_reserved(t.counter() + 1).unwrap();
        j.append(&JournalEntry::Record(rec(&mut t, &format!("old{n}"))))
            .unwrap();
    }
    // The snapshot would capture the table here.
    let mark = j.mark();
    let before = j.len();
    let late: Vec<JournalEntry> = (0..3)
        .map(|n| JournalEntry::Record(rec(&mut t, &format!("late{n}"))))
        .collect();
    j.append_batch(&late).unwrap();
    j.rotate(mark).unwrap();
    assert!(j.len() < before);
    // Appends continue on the new file.
    let last = JournalEntry::Record(rec(&mut t, "after"));
    j.append(&last).unwrap();
    drop(j);
    let (j, rep) = Journal::open(&path, ME, opts(Durability::Always)).unwrap();
    let mut want = vec![JournalEntry::Reserve {
        upto: DEFAULT_RESERVE_BLOCK,
    }];
    want.extend(late);
    want.push(last);
    assert_eq!(rep.entries, want);
    assert_eq!(rep.tail, Tail::Clean);

    // Reset right away keeps only the header and the reservation.
    j.reset().unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), j.len());
    drop(j);
    let (j, rep) = Journal::open(&path, ME, opts(Durability::Always)).unwrap();
    assert_eq!(
        rep.entries,
        vec![JournalEntry::Reserve {
            upto: DEFAULT_RESERVE_BLOCK
        }]
    );
    let mut t2 = Table::new(ME, 1);
    apply(&mut t2, &rep.entries).unwrap();
    assert!(t2.counter() >= t.counter());
    // A mark from before a rotation drops nothing written after it.
    let stale = j.mark();
    j.reset().unwrap();
    let x = JournalEntry::Record(rec(&mut t, "x"));
    j.append(&x).unwrap();
    j.rotate(stale).unwrap();
    drop(j);
    let (_, rep) = Journal::open(&path, ME, opts(Durability::Always)).unwrap();
    assert_eq!(rep.entries.last(), Some(&x));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn concurrent_appends_and_rotation_lose_nothing_after_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let (j, _) = Journal::open(&path, ME, opts(Durability::Always)).unwrap();
    let j = Arc::new(j);
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let j = Arc::clone(&j);
            std::thread::spawn(move || {
                let mut t = Table::new(ReplicaId(500 + i), 1);
                let mut mine = Vec::new();
                for n in 0..30 {
                    let e = JournalEntry::Record(rec(&mut t, &format!("w{i}/{n}")));
                    j.append(&e).unwrap();
                    mine.push(e);
                }
                mine
            })
        })
        .collect();
    // Rotate repeatedly while writers run; each rotation drops only what precedes its mark.
    let mut at_last_mark = 0;
    for _ in 0..5 {
        let m = j.mark();
        // Read after the mark: at least as many appends as the mark covers.
        at_last_mark = j.stats().appends as usize;
        j.rotate(m).unwrap();
    }
    let per_writer: Vec<Vec<JournalEntry>> =
        writers.into_iter().map(|w| w.join().unwrap()).collect();
    let total: usize = per_writer.iter().map(Vec::len).sum();
    drop(j);
    let (_, rep) = Journal::open(&path, ME, opts(Durability::Always)).unwrap();
    assert_eq!(rep.tail, Tail::Clean);
    assert!(
        rep.entries.len() >= total - at_last_mark,
        "kept {} entries, but {} were appended after the last mark",
        rep.entries.len(),
        total - at_last_mark
    );
    // Rotation drops a prefix of the file, so each writer keeps a suffix of its appends, in
    // order.
    for mine in &per_writer {
        let kept: Vec<&JournalEntry> = rep.entries.iter().filter(|e| mine.contains(e)).collect();
        let suffix: Vec<&JournalEntry> = mine[mine.len() - kept.len()..].iter().collect();
        assert_eq!(kept, suffix);
    }
    assert_eq!(
        rep.entries.len(),
        per_writer
            .iter()
            .flatten()
            .filter(|e| rep.entries.contains(e))
            .count(),
        "nothing but appended entries"
    );
}
