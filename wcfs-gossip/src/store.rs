//! A node's data directory: its identity, the table's latest snapshot, and the journal of
//! everything since.
//!
//! ```text
//! DIR/lock        held (flock) while a process uses the directory
//! DIR/identity    replica id, hash seed, generation (bumped on every open)
//! DIR/table.snap  the latest snapshot (written to table.snap.tmp, fsynced, renamed)
//! DIR/journal     records and counter reservations since that snapshot
//! ```
//! Opening recovers the table: the snapshot, then the journal replayed on top (a torn tail is
//! dropped and reported). A local mutation is durable before the filesystem call that caused
//! it returns ([`Persist::log_local`] under [`Durability::Always`]), and the replica's counter
//! is reserved ahead in the journal, so no sequence number is reused after a crash.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use wcfs_core::handle::{LocalHandle, Persist, ProposeError};
use wcfs_core::journal::{JournalEntry, Tail, apply};
use wcfs_core::snapshot::{self, SnapshotError};
use wcfs_core::{Record, ReplicaId, Table, TableError};

use crate::fsutil::write_atomically;
use crate::journal::{Durability, Journal, JournalError, JournalOptions};

/// How a store makes things durable and when it compacts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// When journal appends are fsynced (default: before the filesystem call returns).
    pub durability: Durability,
    /// Sequence numbers reserved per journaled reservation.
    pub reserve_block: u64,
    /// Write a snapshot (and shrink the journal) once the journal exceeds this many bytes.
    pub snapshot_after_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Always,
            reserve_block: crate::journal::DEFAULT_RESERVE_BLOCK,
            snapshot_after_bytes: 64 << 20,
        }
    }
}

/// Who this node is, kept in `DIR/identity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The stable replica id (never renewed while the data directory lives).
    pub replica: ReplicaId,
    /// Seed of the table's name hash.
    pub hash_seed: u64,
    /// Bumped on every open, so peers can tell a restarted node from a stale message.
    pub generation: u64,
}

/// What opening a store found and did.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// The node's identity (generation already bumped).
    pub identity: Identity,
    /// The directory was new: a fresh identity was created.
    pub created: bool,
    /// Paths with state loaded from the snapshot, if there was one.
    pub snapshot_paths: Option<usize>,
    /// Records replayed from the journal.
    pub journal_records: usize,
    /// How the journal ended (a torn or corrupt tail was dropped).
    pub journal_tail: Tail,
}

/// Why a store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Another process holds the directory.
    #[error("{0}: the data directory is in use by another wcfs process")]
    Locked(PathBuf),
    /// The identity file is malformed.
    #[error("{path}: {why}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The snapshot is damaged or from an incompatible build.
    #[error(
        "{path}: {source}. The table can be rebuilt from the RW branch (`wcfs rebuild`) or \
         recovered from peers after moving the data directory aside"
    )]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        source: SnapshotError,
    },
    /// The snapshot belongs to another replica.
    #[error(
        "{path}: snapshot belongs to replica {found}, but this directory's identity is {expected}"
    )]
    WrongReplica {
        /// The file.
        path: PathBuf,
        /// The identity's replica.
        expected: ReplicaId,
        /// The snapshot's replica.
        found: ReplicaId,
    },
    /// The journal could not be opened or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Replaying the journal into the table failed.
    #[error("replaying the journal: {0}")]
    Replay(#[from] TableError),
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

/// An open data directory. Implements [`Persist`] so a [`LocalHandle`] journals through it.
pub struct Store {
    dir: PathBuf,
    journal: Journal,
    opts: StoreOptions,
    snapshot_lock: Mutex<()>,
    /// Snapshots written since open.
    snapshots: AtomicU64,
    _lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Reads and validates the snapshot at `path`, which must belong to `identity`'s replica;
/// `None` if there is none yet.
fn load_snapshot(path: &Path, identity: &Identity) -> Result<Option<Table>, StoreError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, "open snapshot")(e)),
    };
    let len = f.metadata().map_err(io_err(path, "stat snapshot"))?.len();
    let t = snapshot::read(&mut io::BufReader::with_capacity(1 << 20, &mut f), len).map_err(
        |source| StoreError::Snapshot {
            path: path.to_owned(),
            source,
        },
    )?;
    if t.replica() != identity.replica {
        return Err(StoreError::WrongReplica {
            path: path.to_owned(),
            expected: identity.replica,
            found: t.replica(),
        });
    }
    Ok(Some(t))
}

fn parse_identity(path: &Path, text: &str) -> Result<Identity, StoreError> {
    let bad = |why: String| StoreError::Identity {
        path: path.to_owned(),
        why,
    };
    let (mut replica, mut seed, mut generation) = (None, None, None);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(bad(format!("line {}: expected key=value", n + 1)));
        };
        let (k, v) = (k.trim(), v.trim());
        let hex = |v: &str| {
            u64::from_str_radix(v, 16).map_err(|e| bad(format!("line {}: {k}: {e}", n + 1)))
        };
        match k {
            "replica" => replica = Some(hex(v)?),
            "hash_seed" => seed = Some(hex(v)?),
            "generation" => {
                generation = Some(
                    v.parse::<u64>()
                        .map_err(|e| bad(format!("line {}: generation: {e}", n + 1)))?,
                )
            }
            _ => return Err(bad(format!("line {}: unknown key {k:?}", n + 1))),
        }
    }
    match (replica, seed, generation) {
        (Some(r), Some(s), Some(g)) => Ok(Identity {
            replica: ReplicaId(r),
            hash_seed: s,
            generation: g,
        }),
        _ => Err(bad("missing replica, hash_seed or generation".into())),
    }
}

fn write_identity(path: &Path, id: &Identity) -> Result<(), StoreError> {
    write_atomically(path, |w| {
        write!(
            w,
            "# WCFS node identity. Do not copy to another node: each node needs its own.\n\
             replica = {:016x}\nhash_seed = {:016x}\ngeneration = {}\n",
            id.replica.0, id.hash_seed, id.generation
        )
    })
    .map(drop)
    .map_err(io_err(path, "write identity"))
}

impl Store {
    /// Opens (creating if needed) the data directory `dir` and recovers the table. `fresh`
    /// supplies a random replica id and hash seed if the directory is new.
    pub fn open(
        dir: impl AsRef<Path>,
        opts: StoreOptions,
        fresh: impl FnOnce() -> (u64, u64),
    ) -> Result<(Store, Table, Recovery), StoreError> {
        let dir = dir.as_ref().to_owned();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir, "create data directory"))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path, "open lock file"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(dir)),
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&lock_path, "lock")(e)),
        }

        let id_path = dir.join("identity");
        let (mut identity, created) = match std::fs::read_to_string(&id_path) {
            Ok(text) => (parse_identity(&id_path, &text)?, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let (r, s) = fresh();
                (
                    Identity {
                        replica: ReplicaId(r),
                        hash_seed: s,
                        generation: 0,
                    },
                    true,
                )
            }
            Err(e) => return Err(io_err(&id_path, "read identity")(e)),
        };
        identity.generation += 1;
        write_identity(&id_path, &identity)?;

        let snap_path = dir.join("table.snap");
        let (mut table, snapshot_paths) = match load_snapshot(&snap_path, &identity)? {
            Some(t) => {
                let n = t.stats().live_paths + t.stats().tombstones;
                (t, Some(n))
            }
            None => (Table::new(identity.replica, identity.hash_seed), None),
        };

        let jopts = JournalOptions {
            durability: opts.durability,
            reserve_block: opts.reserve_block,
        };
        let (journal, replay) = Journal::open(dir.join("journal"), identity.replica, jopts)?;
        let stats = apply(&mut table, &replay.entries)?;
        tracing::info!(
            dir = %dir.display(),
            replica = %identity.replica,
            generation = identity.generation,
            snapshot_paths,
            journal_records = stats.records,
            tail = ?replay.tail,
            "recovered table"
        );
        let recovery = Recovery {
            identity,
            created,
            snapshot_paths,
            journal_records: stats.records,
            journal_tail: replay.tail,
        };
        Ok((
            Store {
                dir,
                journal,
                opts,
                snapshot_lock: Mutex::new(()),
                snapshots: AtomicU64::new(0),
                _lock: lock,
            },
            table,
            recovery,
        ))
    }

    /// Reads the table of the data directory `dir` without taking it over: no lock, no
    /// generation bump, nothing written, so it works beside a running node (for `wcfs check`
    /// and reports). Returns `Ok(None)` if `dir` holds no identity (no table was ever kept).
    ///
    /// The result is a consistent state the node had: the journal is read first, then the
    /// snapshot, and the journal's complete frames are replayed on top. A snapshot written in
    /// between already holds everything the journal read before it (snapshots are written
    /// before the journal is shortened), and replaying records is idempotent, so the result
    /// is the snapshot's state plus a prefix of what came after it. A torn or corrupt tail is
    /// ignored (a writer may be appending), never truncated.
    pub fn read_only(dir: impl AsRef<Path>) -> Result<Option<(Table, Identity)>, StoreError> {
        let dir = dir.as_ref();
        let id_path = dir.join("identity");
        let identity = match std::fs::read_to_string(&id_path) {
            Ok(text) => parse_identity(&id_path, &text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&id_path, "read identity")(e)),
        };
        let jpath = dir.join("journal");
        let jbytes = match std::fs::read(&jpath) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&jpath, "read journal")(e)),
        };
        let snap_path = dir.join("table.snap");
        let mut table = load_snapshot(&snap_path, &identity)?
            .unwrap_or_else(|| Table::new(identity.replica, identity.hash_seed));
        if let Some(bytes) = jbytes {
            let rep = wcfs_core::journal::replay(&bytes, identity.replica).map_err(|source| {
                StoreError::Journal(JournalError::Header {
                    path: jpath.clone(),
                    source,
                })
            })?;
            apply(&mut table, &rep.entries)?;
        }
        Ok(Some((table, identity)))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Snapshots written (and the journal shrunk after them) since the store was opened.
    pub fn snapshots_written(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed)
    }

    /// The journal (for status and metrics).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Writes a snapshot of `handle`'s table and shrinks the journal to what came after it.
    /// The table is copied under its read lock (writers wait for the copy, not the write).
    /// Returns the snapshot's size in bytes.
    pub fn snapshot(&self, handle: &LocalHandle) -> Result<u64, StoreError> {
        self.snapshot_with(|copy| handle.with_table(|t| copy(t)))
    }

    /// Like [`Store::snapshot`], for a table kept elsewhere: `read` must call the function it
    /// is given exactly once, with the table locked so that nothing is applied to it during
    /// the call (every record is applied before it is journaled). A `read` that does not call
    /// it writes nothing and returns 0.
    pub fn snapshot_with(
        &self,
        read: impl FnOnce(&mut dyn FnMut(&Table)),
    ) -> Result<u64, StoreError> {
        let _one_at_a_time = self.snapshot_lock.lock().unwrap_or_else(|e| e.into_inner());
        // Everything journaled before the mark was applied to the table before being
        // journaled, so the copy holds it; entries after the mark stay in the journal.
        let mut got = None;
        read(&mut |t: &Table| got = Some((t.clone(), self.journal.mark())));
        let Some((copy, mark)) = got else {
            return Ok(0);
        };
        let path = self.dir.join("table.snap");
        let mut size = 0;
        write_atomically(&path, |w| {
            size = snapshot::write(&copy, w)?;
            Ok(())
        })
        .map_err(io_err(&path, "write snapshot"))?;
        self.journal.rotate(mark)?;
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        tracing::info!(path = %path.display(), bytes = size, "wrote snapshot");
        Ok(size)
    }

    /// Periodic upkeep: fsyncs a due `Interval` journal, and snapshots once the journal has
    /// grown past the configured size. Call about once a second.
    pub fn maintain(&self, handle: &LocalHandle) -> Result<(), StoreError> {
        self.maintain_with(|copy| handle.with_table(|t| copy(t)))
    }

    /// Like [`Store::maintain`], for a table kept elsewhere (see [`Store::snapshot_with`]).
    pub fn maintain_with(
        &self,
        read: impl FnOnce(&mut dyn FnMut(&Table)),
    ) -> Result<(), StoreError> {
        self.journal.sync_if_due()?;
        if self.journal.len() > self.opts.snapshot_after_bytes {
            self.snapshot_with(read)?;
        }
        Ok(())
    }
}

impl Persist for Store {
    fn reserve(&self, next_seq: u64) -> Result<(), ProposeError> {
        self.journal
            .ensure_reserved(next_seq)
            .map_err(|e| ProposeError::Journal(e.to_string()))
    }
    fn log_local(&self, rec: &Record) -> Result<(), ProposeError> {
        self.journal
            .append(&JournalEntry::Record(rec.clone()))
            .map_err(|e| ProposeError::Journal(e.to_string()))
    }
    fn log_remote(&self, rec: &Record) -> Result<(), ProposeError> {
        self.journal
            .append(&JournalEntry::Record(rec.clone()))
            .map_err(|e| ProposeError::Journal(e.to_string()))
    }
}
