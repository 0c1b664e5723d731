//! `wcfs rebuild` and `wcfs check`: the table against the RW branch (see
//! `wcfs_fs::rebuild`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use wcfs_core::handle::LocalHandle;
use wcfs_fs::rebuild::ScanStats;
use wcfs_gossip::journal::Durability;
use wcfs_gossip::store::{Store, StoreOptions};

/// `wcfs rebuild` options.
#[derive(clap::Args, Debug)]
pub(crate) struct RebuildArgs {
    /// The shared RW branch to read (read only: nothing on it is changed).
    #[arg(long, value_name = "DIR")]
    rw: PathBuf,
    /// The node's data directory to write the table into. Must be new or empty unless
    /// --force. The node must not be running (the directory is locked while in use).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Also rebuild a data directory that already holds a table: keep its identity and
    /// history, and propose on top of it exactly the changes that make it agree with the RW
    /// branch (marks for what the branch has, removals for what it lacks). These changes
    /// reach the other nodes when this node next runs, like any local change; changes the
    /// others made meanwhile are kept (add-wins).
    #[arg(long)]
    force: bool,
}

/// `wcfs check` options.
#[derive(clap::Args, Debug)]
pub(crate) struct CheckArgs {
    /// The shared RW branch.
    #[arg(long, value_name = "DIR")]
    rw: PathBuf,
    /// The node's data directory. Read without taking it over, so the node may be running
    /// (its table is read as of a moment during the check).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
}

/// Progress on stderr: one line rewritten every 200 ms on a terminal, a new line every 5 s
/// otherwise (a log).
struct Progress {
    last: Option<Instant>,
    start: Instant,
    tty: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            last: Some(Instant::now()),
            start: Instant::now(),
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }

    fn show(&mut self, s: &ScanStats) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.is_some_and(|l| l.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let (start, end) = if self.tty { ("\r", "") } else { ("", "\n") };
        eprint!(
            "{start}scanning the RW branch: {} entries, {} files, {} dirs, {} whiteouts ({:.1} s){end}",
            s.entries,
            s.files,
            s.dirs,
            s.whiteouts,
            self.start.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }

    fn done(&mut self, s: &ScanStats) {
        self.last = None;
        self.show(s);
        if self.tty {
            eprintln!();
        }
    }
}

fn check_rw(rw: &Path) -> anyhow::Result<()> {
    let md = std::fs::metadata(rw).with_context(|| format!("RW branch {}", rw.display()))?;
    if !md.is_dir() {
        bail!("RW branch {} is not a directory", rw.display());
    }
    Ok(())
}

/// Runs `wcfs rebuild`.
pub(crate) fn rebuild(args: RebuildArgs) -> anyhow::Result<()> {
    check_rw(&args.rw)?;
    let existing = Store::read_only(&args.data)
        .with_context(|| format!("reading data directory {}", args.data.display()))?;
    if let Some((t, id)) = &existing
        && !args.force
    {
        bail!(
            "{} already holds a table (replica {}, {} live paths). A node that still has its \
             table needs no rebuild: start it and it catches up from its peers. To make this \
             table agree with the RW branch anyway, pass --force (keeps the identity; see \
             `wcfs rebuild --help`)",
            args.data.display(),
            id.replica,
            t.stats().live_paths
        );
    }
    let before = existing.as_ref().map(|(t, _)| t.stats());
    drop(existing);
    let fresh = (crate::random_u64()?, crate::random_u64()?);
    // Proposals are not fsynced one by one: the snapshot at the end is written atomically and
    // fsynced. If the rebuild is interrupted, nothing has left this machine; run it again.
    let opts = StoreOptions {
        durability: Durability::Interval(Duration::from_secs(1)),
        ..StoreOptions::default()
    };
    let (store, table, rec) = Store::open(&args.data, opts, || fresh)
        .with_context(|| format!("opening data directory {}", args.data.display()))?;
    let store = Arc::new(store);
    let handle = LocalHandle::with_persist(table, store.clone());
    let mut progress = Progress::new();
    let (stats, changes) = wcfs_fs::rebuild::reconcile(&args.rw, &*handle, |s| progress.show(s))
        .context("rebuilding the table")?;
    progress.done(&stats);
    store
        .snapshot(&handle)
        .context("writing the rebuilt table")?;
    let after = handle.with_table(|t| t.stats());
    println!(
        "RW branch {}: {} files, {} directories ({} opaque), {} whiteouts; {} names skipped \
         (temporary files, shadowed whiteouts)",
        args.rw.display(),
        stats.files,
        stats.dirs,
        stats.opaque_dirs,
        stats.whiteouts,
        stats.skipped
    );
    match before {
        None => println!(
            "new table for replica {} in {}: {} live paths",
            rec.identity.replica,
            args.data.display(),
            after.live_paths
        ),
        Some(b) => println!(
            "table of replica {} in {}: {} live paths before, {} after",
            rec.identity.replica,
            args.data.display(),
            b.live_paths,
            after.live_paths
        ),
    }
    println!(
        "changes: {} marked rw, {} marked opaque, {} whiteouts, {} removed (not on the RW branch)",
        changes.marked_rw, changes.marked_opaque, changes.whited_out, changes.forgotten
    );
    Ok(())
}

/// Runs `wcfs check`. Returns whether the table and the branch agree.
pub(crate) fn check(args: CheckArgs) -> anyhow::Result<bool> {
    check_rw(&args.rw)?;
    let Some((table, id)) = Store::read_only(&args.data)
        .with_context(|| format!("reading data directory {}", args.data.display()))?
    else {
        bail!(
            "{} holds no table (no identity file); `wcfs rebuild` creates one",
            args.data.display()
        );
    };
    let handle = LocalHandle::new(table);
    let mut progress = Progress::new();
    let (stats, diffs) = wcfs_fs::rebuild::check(&args.rw, &*handle, |s| progress.show(s))
        .context("checking the table")?;
    progress.done(&stats);
    let mut out = std::io::stdout().lock();
    for d in &diffs {
        writeln!(out, "{d}")?;
    }
    eprintln!(
        "replica {}: {} live paths; RW branch: {} files, {} directories, {} whiteouts; {} disagreements",
        id.replica,
        handle.with_table(|t| t.stats().live_paths),
        stats.files,
        stats.dirs,
        stats.whiteouts,
        diffs.len()
    );
    Ok(diffs.is_empty())
}
