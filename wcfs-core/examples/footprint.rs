//! Measures the table at scale: heap bytes per entry (counting allocator), resolve latency,
//! snapshot size and reopen time, and the time to merge 1M remote records.
//!
//! `cargo run --release -p wcfs-core --example footprint -- --entries 10000000 [--anchor]`
//!
//! `--anchor` also builds `HashMap<String, (u32, u64)>` over the same paths in the same run,
//! the naive design's figure to compare against.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use wcfs_core::webgen::WebPaths;
use wcfs_core::{Op, ReplicaId, Table, WPath, snapshot};

struct Counting;
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        ALLOCATED.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new, Ordering::Relaxed);
        ALLOCATED.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn heap() -> usize {
    ALLOCATED.load(Ordering::Relaxed)
}

/// The machine's memory latency: one random, dependent load over a 1 GiB array (a pointer
/// chase through a single random cycle). A cold lookup at this scale cannot beat it.
fn dependent_load_ns() -> f64 {
    let n: usize = 1 << 27;
    let mut next: Vec<u64> = vec![0; n];
    // Sattolo's algorithm: a random permutation that is one cycle, so the chase visits it all.
    let mut order: Vec<u64> = (0..n as u64).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % i as u64) as usize);
    }
    for w in order.windows(2) {
        next[w[0] as usize] = w[1];
    }
    next[order[n - 1] as usize] = order[0];
    drop(order);
    let mut p = 0usize;
    let k = 5_000_000;
    let t = Instant::now();
    for _ in 0..k {
        p = next[p] as usize;
    }
    black_box(p);
    t.elapsed().as_nanos() as f64 / k as f64
}

fn main() {
    let mut entries: u64 = 1_000_000;
    let mut anchor = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--entries" => {
                entries = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                    eprintln!("--entries needs a number");
                    std::process::exit(2)
                })
            }
            "--anchor" => anchor = true,
            _ => {
                eprintln!("usage: footprint [--entries N] [--anchor]");
                std::process::exit(2)
            }
        }
    }
    let paths_gen = WebPaths::new(1);
    let me = ReplicaId(1);
    let t0 = Instant::now();
    let before = heap();
    let mut table = Table::new(me, 0x5eed);
    for i in 0..entries {
        let p = WPath::new(paths_gen.path(i).as_bytes()).expect("generated paths are valid");
        let op = if i % 10 == 9 {
            Op::Whiteout
        } else {
            Op::MarkRw
        };
        table.propose(&p, op).expect("propose");
        if i % 1_000_000 == 999_999 {
            eprint!("\rbuilding: {} / {entries}", i + 1);
        }
    }
    // A single-replica cluster: everything is causally stable at once, as in a cluster whose
    // members have all caught up; the dot index empties.
    table.gc(&table.version_vector());
    let build_s = t0.elapsed().as_secs_f64();
    let table_bytes = heap() - before;
    eprintln!("\rbuilt {entries} entries in {build_s:.1} s");
    println!("entries={entries}");
    println!("bytes_per_entry={:.1}", table_bytes as f64 / entries as f64);

    // Resolve: existing paths in random order, timed in batches of 64 to keep the clock's own
    // cost out; p50 over batches.
    let samples = 200_000.min(entries);
    let paths: Vec<WPath> = (0..samples)
        .map(|k| {
            let i = (k.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % entries;
            WPath::new(paths_gen.path(i).as_bytes()).expect("valid")
        })
        .collect();
    let misses: Vec<WPath> = (0..samples)
        .map(|k| {
            WPath::new(format!("site{}/wp-includes/js/x{k}.js", k % 97).as_bytes()).expect("valid")
        })
        .collect();
    let p50 = |ps: &[WPath]| {
        let mut per: Vec<f64> = ps
            .chunks(64)
            .map(|c| {
                let t = Instant::now();
                for p in c {
                    black_box(table.resolve(black_box(p)));
                }
                t.elapsed().as_nanos() as f64 / c.len() as f64
            })
            .collect();
        per.sort_by(|a, b| a.total_cmp(b));
        per[per.len() / 2]
    };
    println!("resolve_ns_p50={:.0}", p50(&paths));
    println!("resolve_miss_ns_p50={:.0}", p50(&misses));

    // Snapshot: write to a file, then reopen it and serve the first resolve.
    let dir = std::env::temp_dir().join(format!("wcfs-footprint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("table.snap");
    let t = Instant::now();
    {
        let mut f = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&file).expect("create"),
        );
        snapshot::write(&table, &mut f).expect("write snapshot");
        f.flush().expect("flush");
        f.get_ref().sync_all().expect("fsync");
    }
    let write_ms = t.elapsed().as_secs_f64() * 1e3;
    let size = std::fs::metadata(&file).expect("stat").len();
    println!("snapshot_bytes={size}");
    println!("snapshot_write_ms={write_ms:.0}");
    let probe = paths[0].clone();
    let expect = table.resolve(&probe);
    drop(table);
    let t = Instant::now();
    let mut f = std::fs::File::open(&file).expect("open");
    let reopened = snapshot::read(&mut f, size).expect("read snapshot");
    let got = reopened.resolve(&probe);
    let reopen_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(got, expect, "reopened table disagrees");
    println!("snapshot_reopen_ms={reopen_ms:.0}");
    let _ = std::fs::remove_dir_all(&dir);
    let mut table = reopened;

    // Merge 1M records from another replica: half new paths, half re-marks of existing ones.
    let m = 1_000_000u64;
    let mut other = Table::new(ReplicaId(2), 7);
    let paths_gen2 = WebPaths::new(2);
    let recs: Vec<_> = (0..m)
        .map(|k| {
            let path = if k % 2 == 0 {
                paths_gen2.path(k)
            } else {
                paths_gen.path((k * 7919) % entries)
            };
            other
                .propose(&WPath::new(path.as_bytes()).expect("valid"), Op::MarkRw)
                .expect("propose")
        })
        .collect();
    drop(other);
    let t = Instant::now();
    for r in &recs {
        table.merge(r).expect("merge");
    }
    println!("merge_1m_ms={:.0}", t.elapsed().as_secs_f64() * 1e3);
    drop(recs);

    if anchor {
        drop(table);
        let before = heap();
        let mut map: HashMap<String, (u32, u64)> = HashMap::new();
        for i in 0..entries {
            map.insert(paths_gen.path(i), (1, i + 1));
        }
        println!(
            "anchor_hashmap_bytes_per_entry={:.1}",
            (heap() - before) as f64 / entries as f64
        );
        let t = Instant::now();
        let mut hits = 0u64;
        for p in &paths {
            hits += black_box(map.get(std::str::from_utf8(p.as_bytes()).unwrap_or_default()))
                .is_some() as u64;
        }
        println!(
            "anchor_hashmap_lookup_ns_avg={:.0}",
            t.elapsed().as_nanos() as f64 / paths.len() as f64
        );
        black_box(hits);
        drop(map);
        println!("anchor_dependent_load_ns={:.0}", dependent_load_ns());
    }
}
