//! Group-commit measurement: N threads each append M records to one journal and report
//! appends per second and how many fsyncs they shared.
//!
//! `cargo run --release -p wcfs-gossip --example journal_bench -- [--threads N] [--appends M]
//!  [--dir DIR] [--durability always|never|interval-ms=K]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use wcfs_core::journal::JournalEntry;
use wcfs_core::{Op, ReplicaId, Table, WPath};
use wcfs_gossip::journal::{Durability, Journal, JournalOptions};

fn main() {
    let mut threads = 8usize;
    let mut appends = 1000usize;
    let mut dir: Option<String> = None;
    let mut durability = Durability::Always;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--threads" => threads = val().parse().unwrap_or_else(|_| usage("bad --threads")),
            "--appends" => appends = val().parse().unwrap_or_else(|_| usage("bad --appends")),
            "--dir" => dir = Some(val()),
            "--durability" => {
                let v = val();
                durability = match v.as_str() {
                    "always" => Durability::Always,
                    "never" => Durability::Never,
                    _ => match v.strip_prefix("interval-ms=").and_then(|n| n.parse().ok()) {
                        Some(ms) => Durability::Interval(Duration::from_millis(ms)),
                        None => usage("bad --durability"),
                    },
                }
            }
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let tmp = match &dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .unwrap_or_else(|e| usage(&format!("temp dir: {e}")));
    let path = tmp.path().join("journal");
    let (j, _) = Journal::open(
        &path,
        ReplicaId(1),
        JournalOptions {
            durability,
            ..JournalOptions::default()
        },
    )
    .unwrap_or_else(|e| usage(&e.to_string()));
    let j = Arc::new(j);
    // Records are prepared up front so the timing is the journal's.
    let work: Vec<Vec<JournalEntry>> = (0..threads)
        .map(|i| {
            let mut t = Table::new(ReplicaId(100 + i as u64), 1);
            (0..appends)
                .map(|n| {
                    let p = format!("site{i}/wp-content/uploads/2024/05/img-{n:06}.jpg");
                    let p = WPath::new(p.as_bytes()).unwrap_or_else(|e| usage(&e.to_string()));
                    JournalEntry::Record(
                        t.propose(&p, Op::MarkRw)
                            .unwrap_or_else(|e| usage(&e.to_string())),
                    )
                })
                .collect()
        })
        .collect();
    let start = Instant::now();
    let handles: Vec<_> = work
        .into_iter()
        .map(|entries| {
            let j = Arc::clone(&j);
            std::thread::spawn(move || {
                for e in &entries {
                    if let Err(err) = j.append(e) {
                        eprintln!("append failed: {err}");
                        std::process::exit(1);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        if h.join().is_err() {
            usage("a writer thread panicked");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let s = j.stats();
    println!(
        "dir={}",
        tmp.path()
            .parent()
            .map_or("?".into(), |p| p.display().to_string())
    );
    println!("durability={durability:?} threads={threads} appends_per_thread={appends}");
    println!("appends={} fsyncs={}", s.appends, s.fsyncs);
    println!(
        "appends_per_fsync={:.1}",
        s.appends as f64 / s.fsyncs.max(1) as f64
    );
    println!("appends_per_s={:.0}", s.appends as f64 / secs);
    println!("bytes={} seconds={secs:.3}", s.bytes);
}

fn usage(msg: &str) -> ! {
    eprintln!("journal_bench: {msg}");
    eprintln!(
        "usage: journal_bench [--threads N] [--appends M] [--dir DIR] [--durability always|never|interval-ms=K]"
    );
    std::process::exit(2)
}
