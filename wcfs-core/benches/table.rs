//! Criterion benches for the table's hot paths: resolve (hit and miss), merge, propose.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use wcfs_core::webgen::WebPaths;
use wcfs_core::{Op, ReplicaId, Table, WPath};

fn build(n: u64) -> (Table, Vec<WPath>) {
    let g = WebPaths::new(1);
    let mut t = Table::new(ReplicaId(1), 3);
    let mut paths = Vec::new();
    for i in 0..n {
        let p = WPath::new(g.path(i).as_bytes()).expect("valid");
        t.propose(&p, Op::MarkRw).expect("propose");
        if i % 97 == 0 {
            paths.push(p);
        }
    }
    t.gc(&t.version_vector());
    (t, paths)
}

fn benches(c: &mut Criterion) {
    let (table, hits) = build(200_000);
    let misses: Vec<WPath> = (0..hits.len())
        .map(|k| {
            WPath::new(format!("site{}/wp-includes/x{k}.php", k % 97).as_bytes()).expect("valid")
        })
        .collect();
    let mut i = 0;
    c.bench_function("resolve_hit_200k", |b| {
        b.iter(|| {
            i = (i + 1) % hits.len();
            black_box(table.resolve(&hits[i]))
        })
    });
    c.bench_function("resolve_miss_200k", |b| {
        b.iter(|| {
            i = (i + 1) % misses.len();
            black_box(table.resolve(&misses[i]))
        })
    });
    let mut other = Table::new(ReplicaId(2), 4);
    let g = WebPaths::new(2);
    let recs: Vec<_> = (0..10_000)
        .map(|k| {
            other
                .propose(
                    &WPath::new(g.path(k).as_bytes()).expect("valid"),
                    Op::MarkRw,
                )
                .expect("propose")
        })
        .collect();
    c.bench_function("merge_10k_into_200k", |b| {
        b.iter_batched(
            || table.clone(),
            |mut t| {
                for r in &recs {
                    t.merge(r).expect("merge");
                }
                t
            },
            BatchSize::LargeInput,
        )
    });
    c.bench_function("propose_into_200k", |b| {
        b.iter_batched(
            || table.clone(),
            |mut t| {
                for p in hits.iter().take(1000) {
                    t.propose(p, Op::Whiteout).expect("propose");
                }
                t
            },
            BatchSize::LargeInput,
        )
    });
}

criterion_group! {
    name = table;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(table);
