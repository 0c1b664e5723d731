//! The data directory as an operator relies on it: a node reopens with everything it had,
//! keeps its identity, and refuses what it cannot trust with a message that says why.

use std::sync::Arc;

use wcfs_core::handle::{LocalHandle, TableHandle};
use wcfs_core::{Op, Resolution, WPath};
use wcfs_gossip::store::{Store, StoreError, StoreOptions};

fn p(s: &str) -> WPath {
    WPath::new(s.as_bytes()).unwrap()
}

fn open(dir: &std::path::Path) -> (Arc<Store>, Arc<LocalHandle>, wcfs_gossip::store::Recovery) {
    let (store, table, rec) =
        Store::open(dir, StoreOptions::default(), || (0xabc, 0x5eed)).unwrap();
    let store = Arc::new(store);
    let handle = LocalHandle::with_persist(table, store.clone());
    (store, handle, rec)
}

#[test]
fn reopening_restores_every_mutation_and_bumps_the_generation() {
    let dir = tempfile::tempdir().unwrap();
    let (store, h, rec) = open(dir.path());
    assert!(rec.created);
    assert_eq!(rec.identity.generation, 1);
    for i in 0..200 {
        h.propose(&p(&format!("up/{i}.jpg")), Op::MarkRw).unwrap();
    }
    h.propose(&p("wp-config.php"), Op::Whiteout).unwrap();
    let counter = h.with_table(|t| t.counter());
    drop((h, store));

    let (_store, h, rec) = open(dir.path());
    assert!(!rec.created);
    assert_eq!(rec.identity.generation, 2);
    assert_eq!(rec.identity.replica.0, 0xabc);
    assert_eq!(rec.journal_records, 201);
    assert_eq!(h.resolve(&p("up/7.jpg")), Resolution::Rw);
    assert_eq!(h.resolve(&p("wp-config.php")), Resolution::Hidden);
    assert!(
        h.with_table(|t| t.counter()) >= counter,
        "counter went back"
    );
    h.propose(&p("new"), Op::MarkRw).unwrap();
    assert!(h.with_table(|t| t.counter()) > counter);
}

#[test]
fn snapshot_shrinks_the_journal_and_later_mutations_survive() {
    let dir = tempfile::tempdir().unwrap();
    let (store, h, _) = open(dir.path());
    for i in 0..500 {
        h.propose(&p(&format!("cache/{i}")), Op::MarkRw).unwrap();
    }
    let before = store.journal().len();
    let size = store.snapshot(&h).unwrap();
    assert!(size > 0);
    assert!(
        store.journal().len() < before / 10,
        "journal not shrunk: {} -> {}",
        before,
        store.journal().len()
    );
    for i in 0..50 {
        h.propose(&p(&format!("cache/{i}")), Op::Forget).unwrap();
    }
    let expect: Vec<_> = h.with_table(|t| t.records().collect());
    drop((h, store));
    let (_s, h, rec) = open(dir.path());
    assert_eq!(rec.snapshot_paths, Some(500));
    assert_eq!(rec.journal_records, 50);
    let mut got: Vec<_> = h.with_table(|t| t.records().collect());
    let mut expect = expect;
    got.sort_by(|a, b| a.path.cmp(&b.path));
    expect.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(got, expect);
}

#[test]
fn a_second_process_cannot_use_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let err = Store::open(dir.path(), StoreOptions::default(), || (1, 2)).unwrap_err();
    assert!(matches!(err, StoreError::Locked(_)));
    assert!(
        err.to_string().contains("in use by another wcfs process"),
        "{err}"
    );
}

#[test]
fn a_damaged_snapshot_is_refused_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, h, _) = open(dir.path());
        h.propose(&p("a"), Op::MarkRw).unwrap();
        store.snapshot(&h).unwrap();
    }
    let snap = dir.path().join("table.snap");
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&snap, &bytes).unwrap();
    let err = Store::open(dir.path(), StoreOptions::default(), || (1, 2)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("table.snap") && msg.contains("checksum") && msg.contains("wcfs rebuild"),
        "{msg}"
    );
}

#[test]
fn a_damaged_identity_is_refused_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    std::fs::write(
        dir.path().join("identity"),
        "replica = zz\nhash_seed = 1\ngeneration = 1\n",
    )
    .unwrap();
    let err = Store::open(dir.path(), StoreOptions::default(), || (1, 2)).unwrap_err();
    assert!(err.to_string().contains("line 1: replica"), "{err}");
}

/// Sorted records of a table, for comparing two tables' whole state.
fn all_records(t: &wcfs_core::Table) -> Vec<wcfs_core::Record> {
    let mut v: Vec<_> = t.records().collect();
    v.sort_by(|a, b| a.path.cmp(&b.path));
    v
}

#[test]
fn read_only_sees_a_live_stores_table_without_taking_it_over() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        Store::read_only(dir.path()).unwrap().is_none(),
        "no identity yet"
    );
    let (store, h, rec) = open(dir.path());
    for i in 0..300 {
        h.propose(&p(&format!("up/{i}")), Op::MarkRw).unwrap();
    }
    store.snapshot(&h).unwrap();
    for i in 0..40 {
        h.propose(&p(&format!("up/{i}")), Op::Forget).unwrap();
    }
    h.propose(&p("index.php"), Op::Whiteout).unwrap();
    // The store stays open (and locked) meanwhile: snapshot plus journal, read beside it.
    let (t, id) = Store::read_only(dir.path()).unwrap().unwrap();
    assert_eq!(id.replica, rec.identity.replica);
    assert_eq!(all_records(&t), h.with_table(all_records));
    assert_eq!(t.resolve(&p("index.php")), Resolution::Hidden);
    assert_eq!(t.resolve(&p("up/3")), Resolution::Ro);
    assert_eq!(t.resolve(&p("up/299")), Resolution::Rw);
    // Nothing was written: the generation is the one the open store set.
    let (_, id) = Store::read_only(dir.path()).unwrap().unwrap();
    assert_eq!(id.generation, rec.identity.generation);
    drop((h, store));
    let (_s, _h, rec2) = open(dir.path());
    assert_eq!(rec2.identity.generation, rec.identity.generation + 1);
}
