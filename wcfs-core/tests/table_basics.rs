//! Basic behaviour of the table, as a filesystem would use it.

use wcfs_core::{Kind, Op, ReplicaId, Resolution, Table, WPath};

fn p(s: &str) -> WPath {
    WPath::new(s.as_bytes()).unwrap()
}

#[test]
fn resolution_follows_marks_and_ancestors() {
    let mut t = Table::new(ReplicaId(1), 7);
    assert_eq!(t.resolve(&p("a/b")), Resolution::Ro);
    t.propose(&p("a/b"), Op::MarkRw).unwrap();
    assert_eq!(t.resolve(&p("a/b")), Resolution::Rw);
    assert_eq!(t.resolve(&p("a")), Resolution::Ro);
    t.propose(&p("d"), Op::Whiteout).unwrap();
    assert_eq!(t.resolve(&p("d")), Resolution::Hidden);
    assert_eq!(t.resolve(&p("d/x/y")), Resolution::Hidden);
    t.propose(&p("d"), Op::MarkOpaque).unwrap();
    assert_eq!(t.resolve(&p("d")), Resolution::Opaque);
    assert_eq!(t.resolve(&p("d/x/y")), Resolution::RwOnly);
    t.propose(&p("d/x"), Op::MarkRw).unwrap();
    assert_eq!(t.resolve(&p("d/x")), Resolution::Rw);
    let kids = t.children(Some(&p("d")));
    assert_eq!(kids.len(), 1);
    assert_eq!(kids[0].name, b"x");
    assert_eq!(kids[0].kind, Some(Kind::Rw));
    t.propose(&p("a/b"), Op::Forget).unwrap();
    assert_eq!(t.resolve(&p("a/b")), Resolution::Ro);
    assert_eq!(t.stats().tombstones, 1);
    t.check_invariants().unwrap();
}

#[test]
fn concurrent_mark_beats_forget_and_rw_beats_whiteout() {
    let mut a = Table::new(ReplicaId(1), 1);
    let mut b = Table::new(ReplicaId(2), 2);
    let r0 = a.propose(&p("f"), Op::MarkRw).unwrap();
    b.merge(&r0).unwrap();
    let ra = a.propose(&p("f"), Op::Forget).unwrap();
    let rb = b.propose(&p("f"), Op::Whiteout).unwrap();
    a.merge(&rb).unwrap();
    b.merge(&ra).unwrap();
    assert_eq!(a.resolve(&p("f")), Resolution::Hidden);
    assert_eq!(a.get(&p("f")), b.get(&p("f")));
    let ra = a.propose(&p("g"), Op::MarkRw).unwrap();
    let rb = b.propose(&p("g"), Op::Whiteout).unwrap();
    a.merge(&rb).unwrap();
    b.merge(&ra).unwrap();
    assert_eq!(a.resolve(&p("g")), Resolution::Rw);
    assert_eq!(b.resolve(&p("g")), Resolution::Rw);
}

#[test]
fn anti_entropy_catches_up_and_gc_collects_tombstones() {
    let mut a = Table::new(ReplicaId(1), 1);
    let mut b = Table::new(ReplicaId(2), 2);
    for i in 0..100 {
        a.propose(&p(&format!("up/{i}")), Op::MarkRw).unwrap();
    }
    for i in 0..50 {
        a.propose(&p(&format!("up/{i}")), Op::Forget).unwrap();
    }
    loop {
        let chunk = a.records_since(&b.digest(), 1000);
        for s in &chunk.items {
            b.merge_shipped(s).unwrap();
        }
        if chunk.complete {
            break;
        }
    }
    assert_eq!(b.digest(), a.digest());
    assert_eq!(b.records().count(), 100);
    let floor = wcfs_core::VersionVector::meet([&a.version_vector(), &b.version_vector()]);
    a.gc(&floor);
    b.gc(&floor);
    assert_eq!(a.stats().tombstones, 0);
    assert_eq!(b.stats().tombstones, 0);
    assert_eq!(a.stats().indexed_dots, 0);
    assert_eq!(a.records().count(), 50);
    a.check_invariants().unwrap();
    b.check_invariants().unwrap();
    // A stale record from before the GC must not bring a forgotten path back.
    let mut c = Table::new(ReplicaId(3), 3);
    let old = c.propose(&p("x"), Op::MarkRw).unwrap();
    let _ = old;
    let stale = wcfs_core::Record {
        path: p("up/3"),
        entries: vec![wcfs_core::CtxEntry {
            dot: wcfs_core::Dot {
                replica: ReplicaId(1),
                seq: 4,
            },
            live: Some(Kind::Rw),
        }],
    };
    a.merge(&stale).unwrap();
    assert_eq!(a.resolve(&p("up/3")), Resolution::Ro);
    assert!(b.needs_reset(&c.digest()));
}
