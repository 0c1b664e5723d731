//! The journal file: appends [`JournalEntry`] frames (format in [`wcfs_core::journal`]) and makes
//! them durable according to a [`Durability`] policy, with group commit so that many FUSE
//! worker threads appending at once share one fsync.
//!
//! Recovery is [`Journal::open`]: it replays the file, truncates a torn or corrupt tail (an
//! interrupted append), and returns the entries for [`wcfs_core::journal::apply`].

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::metrics::{Histogram, HistogramSnapshot};
use wcfs_core::ReplicaId;
use wcfs_core::dot::MAX_SEQ;
use wcfs_core::journal::{
    CorruptReason, HEADER_LEN, Header, HeaderError, JournalEntry, Replay, Tail, encode_frame,
    replay,
};

/// Sequence numbers reserved per [`JournalEntry::Reserve`] by default: one fsynced
/// reservation per this many local mutations.
pub const DEFAULT_RESERVE_BLOCK: u64 = 1024;

/// When appended entries reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// [`Journal::append`] returns only once the entry is fsynced. Concurrent appenders share
    /// fsyncs (group commit): one of them syncs everything written so far, the others wait.
    Always,
    /// [`Journal::append`] returns at once; written entries are fsynced by the first append,
    /// [`Journal::sync_if_due`] or [`Journal::sync`] that comes at least this long after the
    /// last fsync. There is no background thread: the caller must call
    /// [`Journal::sync_if_due`] periodically to bound the window when appends stop.
    Interval(Duration),
    /// Never fsync, not even reservations (tests and benchmarks only: a crash may lose
    /// anything and reuse sequence numbers).
    Never,
}

/// How to open a journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalOptions {
    /// When appends are made durable.
    pub durability: Durability,
    /// Sequence numbers reserved at a time by [`Journal::ensure_reserved`] (≥ 1).
    pub reserve_block: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            durability: Durability::Always,
            reserve_block: DEFAULT_RESERVE_BLOCK,
        }
    }
}

/// Why a journal operation failed. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// An I/O call failed.
    #[error("journal {path}: {op}: {source}")]
    Io {
        /// The journal file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not this replica's journal in a format this build reads.
    #[error("journal {path}: {source}")]
    Header {
        /// The journal file.
        path: PathBuf,
        /// What is wrong with the header.
        source: HeaderError,
    },
    /// A frame's checksum is good but its entry cannot be decoded. A crash cannot produce
    /// this (it means a bug or an incompatible writer), so the journal is left untouched
    /// instead of truncating what may be good data; move the file away to start over.
    #[error(
        "journal {path}: frame at offset {offset} is checksummed but undecodable ({reason}); refusing to truncate it"
    )]
    Undecodable {
        /// The journal file.
        path: PathBuf,
        /// File offset of the frame.
        offset: usize,
        /// The decoding failure.
        reason: CorruptReason,
    },
    /// An earlier write or fsync failed, so what is on disk is unknown; the journal refuses
    /// every further operation (retrying an fsync after a failure can silently lose data).
    #[error("journal {path}: failed earlier ({cause}); reopen it to recover")]
    Failed {
        /// The journal file.
        path: PathBuf,
        /// The first failure.
        cause: String,
    },
}

/// A position in the journal, from [`Journal::mark`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalMark {
    epoch: u64,
    offset: u64,
}

/// Counters for `wcfs status` and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Current file size in bytes (header included).
    pub bytes: u64,
    /// Bytes known to be on stable storage.
    pub synced_bytes: u64,
    /// Entries appended since open.
    pub appends: u64,
    /// fsyncs issued since open.
    pub fsyncs: u64,
    /// The highest durable counter reservation.
    pub reserved: u64,
}

struct State {
    /// Shared with the fsync leader, which syncs without holding the lock.
    file: Arc<File>,
    /// Bumped each time [`Journal::rotate`] swaps the file; offsets of another epoch refer to
    /// a file that was fully synced before it was replaced.
    epoch: u64,
    /// End of the last complete frame written: the file size.
    written: u64,
    /// Everything below this offset is durable.
    synced: u64,
    /// An fsync is in progress (by a leader that released the lock).
    syncing: bool,
    last_sync: Instant,
    /// Counter reservation known durable.
    reserved: u64,
    appends: u64,
    fsyncs: u64,
    failed: Option<String>,
}

/// An open journal. `Sync`: share it between threads (`&Journal` or `Arc<Journal>`);
/// appends are serialized in file order, fsyncs are shared.
pub struct Journal {
    path: PathBuf,
    replica: ReplicaId,
    opts: JournalOptions,
    state: Mutex<State>,
    /// Signalled whenever an fsync ends.
    synced: Condvar,
    /// Duration of each append fsync (successful or not).
    fsync_latency: Histogram,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("replica", &self.replica)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

/// Atomically replaces (or creates) `path` with `contents` (see [`crate::fsutil::write_atomically`]).
fn write_atomically(path: &Path, contents: &[u8]) -> Result<File, JournalError> {
    crate::fsutil::write_atomically(path, |w| w.write_all(contents))
        .map_err(io_err(path, "atomically replace journal"))
}

impl Journal {
    /// Opens `replica`'s journal at `path`, creating it (header only, fsynced with its
    /// directory) if missing. An existing file is replayed; a torn or corrupt tail is logged
    /// and truncated, so appends continue right after the last good frame. Returns the journal
    /// and what it held (feed `replay.entries` to [`wcfs_core::journal::apply`]).
    pub fn open(
        path: impl AsRef<Path>,
        replica: ReplicaId,
        opts: JournalOptions,
    ) -> Result<(Journal, Replay), JournalError> {
        let path = path.as_ref().to_owned();
        let (file, rep) = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => {
                let rep = Self::recover(&path, &f, replica)?;
                (f, rep)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let header = Header::new(replica);
                let f = write_atomically(&path, &header.encode())?;
                tracing::info!(path = %path.display(), %replica, "created journal");
                let rep = Replay {
                    header,
                    entries: Vec::new(),
                    valid_len: HEADER_LEN,
                    tail: Tail::Clean,
                };
                (f, rep)
            }
            Err(e) => return Err(io_err(&path, "open")(e)),
        };
        let reserved = rep
            .entries
            .iter()
            .filter_map(|e| match e {
                JournalEntry::Reserve { upto } => Some(*upto),
                JournalEntry::Record(_) => None,
            })
            .max()
            .unwrap_or(0);
        let len = rep.valid_len as u64;
        let j = Journal {
            path,
            replica,
            opts: JournalOptions {
                reserve_block: opts.reserve_block.max(1),
                ..opts
            },
            state: Mutex::new(State {
                file: Arc::new(file),
                epoch: 0,
                written: len,
                synced: len,
                syncing: false,
                last_sync: Instant::now(),
                reserved,
                appends: 0,
                fsyncs: 0,
                failed: None,
            }),
            synced: Condvar::new(),
            fsync_latency: Histogram::new(),
        };
        Ok((j, rep))
    }

    /// Replays an existing file and truncates a bad tail.
    fn recover(path: &Path, f: &File, replica: ReplicaId) -> Result<Replay, JournalError> {
        let mut bytes = Vec::new();
        (&*f)
            .read_to_end(&mut bytes)
            .map_err(io_err(path, "read"))?;
        let rep = replay(&bytes, replica).map_err(|source| JournalError::Header {
            path: path.to_owned(),
            source,
        })?;
        let dropped = bytes.len() - rep.valid_len;
        match &rep.tail {
            Tail::Clean => {}
            Tail::Corrupt {
                offset,
                reason: reason @ CorruptReason::Entry(_),
            } => {
                return Err(JournalError::Undecodable {
                    path: path.to_owned(),
                    offset: *offset,
                    reason: reason.clone(),
                });
            }
            Tail::Torn {
                offset,
                missing_bytes,
            } => {
                tracing::warn!(
                    path = %path.display(), offset, missing_bytes, dropped_bytes = dropped,
                    kept_entries = rep.entries.len(),
                    "journal ends in a torn frame (interrupted append); truncating it"
                );
            }
            Tail::Corrupt { offset, reason } => {
                tracing::warn!(
                    path = %path.display(), offset, %reason, dropped_bytes = dropped,
                    kept_entries = rep.entries.len(),
                    "journal has a corrupt frame; truncating it and everything after it"
                );
            }
        }
        if dropped > 0 {
            f.set_len(rep.valid_len as u64)
                .map_err(io_err(path, "truncate torn tail"))?;
            f.sync_all()
                .map_err(io_err(path, "fsync after truncation"))?;
        }
        tracing::debug!(path = %path.display(), entries = rep.entries.len(), bytes = rep.valid_len, "replayed journal");
        Ok(rep)
    }

    /// The file this journal writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The replica this journal belongs to.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// The policy in force.
    pub fn durability(&self) -> Durability {
        self.opts.durability
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the state is still
        // consistent (every field is updated in one step), so keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self, st: &State) -> Result<(), JournalError> {
        match &st.failed {
            Some(cause) => Err(JournalError::Failed {
                path: self.path.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Writes `bytes` at the end of the file. On failure the journal is marked failed: a
    /// partial frame may be on disk and only reopening (which truncates it) is safe.
    fn write_locked(&self, st: &mut State, bytes: &[u8]) -> Result<(u64, u64), JournalError> {
        self.check(st)?;
        debug_assert!(st.synced <= st.written);
        if let Err(e) = st.file.write_all_at(bytes, st.written) {
            st.failed = Some(format!("write: {e}"));
            return Err(io_err(&self.path, "write")(e));
        }
        st.written += bytes.len() as u64;
        st.appends += 1;
        Ok((st.epoch, st.written))
    }

    /// Blocks until every byte below `upto` (an offset in file `epoch`) is durable, issuing
    /// the fsync itself if nobody else is (the group-commit leader syncs everything written so
    /// far, covering the frames of every appender waiting behind it).
    fn sync_upto<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        (epoch, upto): (u64, u64),
    ) -> Result<MutexGuard<'a, State>, JournalError> {
        loop {
            self.check(&st)?;
            // A rotation syncs the old file completely before replacing it.
            if st.synced >= upto || st.epoch != epoch {
                return Ok(st);
            }
            if st.syncing {
                st = self.synced.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.syncing = true;
            let target = st.written;
            let file = Arc::clone(&st.file);
            drop(st);
            let t0 = Instant::now();
            let res = file.sync_data();
            self.fsync_latency.observe(t0.elapsed());
            st = self.lock();
            st.syncing = false;
            // `rotate` never swaps the file while an fsync is in flight.
            debug_assert_eq!(st.epoch, epoch);
            match res {
                Ok(()) => {
                    debug_assert!(target <= st.written);
                    st.synced = st.synced.max(target);
                    st.fsyncs += 1;
                    st.last_sync = Instant::now();
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "journal fsync failed; refusing further writes");
                    st.failed = Some(format!("fsync: {e}"));
                }
            }
            self.synced.notify_all();
        }
    }

    /// Appends one entry and makes it as durable as the policy says before returning:
    /// fsynced for [`Durability::Always`]; written (and possibly fsynced, if the interval has
    /// passed) for [`Durability::Interval`]; written for [`Durability::Never`].
    pub fn append(&self, entry: &JournalEntry) -> Result<(), JournalError> {
        self.append_batch(std::slice::from_ref(entry))
    }

    /// Appends several entries with one write and at most one fsync, in order. Same
    /// durability as [`Journal::append`] for all of them.
    pub fn append_batch(&self, entries: &[JournalEntry]) -> Result<(), JournalError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for e in entries {
            buf.extend_from_slice(&encode_frame(e));
        }
        let mut st = self.lock();
        let end = self.write_locked(&mut st, &buf)?;
        st.appends += entries.len() as u64 - 1;
        match self.opts.durability {
            Durability::Always => {
                drop(self.sync_upto(st, end)?);
            }
            Durability::Interval(d) => {
                if !st.syncing && st.last_sync.elapsed() >= d {
                    drop(self.sync_upto(st, end)?);
                }
            }
            Durability::Never => {}
        }
        Ok(())
    }

    /// Fsyncs everything written so far (whatever the policy). For a clean shutdown, or a
    /// caller that needs one entry durable under [`Durability::Interval`].
    pub fn sync(&self) -> Result<(), JournalError> {
        let st = self.lock();
        let end = (st.epoch, st.written);
        drop(self.sync_upto(st, end)?);
        Ok(())
    }

    /// Under [`Durability::Interval`], fsyncs if something is unsynced and the interval has
    /// passed since the last fsync; a no-op otherwise. Call it from a periodic timer.
    pub fn sync_if_due(&self) -> Result<(), JournalError> {
        let Durability::Interval(d) = self.opts.durability else {
            return Ok(());
        };
        let st = self.lock();
        if st.synced < st.written && !st.syncing && st.last_sync.elapsed() >= d {
            let end = (st.epoch, st.written);
            drop(self.sync_upto(st, end)?);
        }
        Ok(())
    }

    /// Makes sure sequence number `next_seq` is covered by a durable reservation: if it is
    /// above the current one, appends `Reserve { upto: next_seq + reserve_block - 1 }` and
    /// fsyncs it (under every policy but [`Durability::Never`]). Call it with
    /// `table.counter() + 1` before `table.propose`, so that a crash never lets the counter
    /// restart below a sequence number that was used. Cheap when already covered.
    pub fn ensure_reserved(&self, next_seq: u64) -> Result<(), JournalError> {
        let mut st = self.lock();
        self.check(&st)?;
        if next_seq <= st.reserved {
            return Ok(());
        }
        let upto = next_seq
            .saturating_add(self.opts.reserve_block - 1)
            .clamp(1, MAX_SEQ);
        let end = self.write_locked(&mut st, &encode_frame(&JournalEntry::Reserve { upto }))?;
        if self.opts.durability != Durability::Never {
            st = self.sync_upto(st, end)?;
        }
        st.reserved = st.reserved.max(upto);
        tracing::debug!(path = %self.path.display(), upto, "reserved sequence numbers");
        Ok(())
    }

    /// The current end of the journal, for [`Journal::rotate`]. Take it while the table state
    /// that the next snapshot will hold is captured: every entry appended before the mark must
    /// already be in that state (apply to the table first, then append), while entries
    /// appended after it are kept by the rotation.
    pub fn mark(&self) -> JournalMark {
        let st = self.lock();
        JournalMark {
            epoch: st.epoch,
            offset: st.written,
        }
    }

    /// Drops every frame before `mark` once a snapshot covering them is durable: atomically
    /// (temp file, fsync, rename, fsync directory) replaces the journal with its header, the
    /// current reservation (so the counter stays protected) and the frames appended after
    /// `mark`. Appends wait while it runs. A mark from before an earlier rotation drops
    /// nothing written since that rotation.
    pub fn rotate(&self, mark: JournalMark) -> Result<(), JournalError> {
        let mut st = self.lock();
        // Make the old file durable first, with no fsync of it in flight: appenders waiting
        // for it are then done, and nothing is lost if the rename does not survive a crash.
        // Others may append (and lead an fsync) while we wait, hence the loop.
        loop {
            self.check(&st)?;
            if st.syncing {
                st = self.synced.wait(st).unwrap_or_else(|p| p.into_inner());
            } else if st.synced < st.written {
                let end = (st.epoch, st.written);
                st = self.sync_upto(st, end)?;
            } else {
                break;
            }
        }
        let keep_from = if mark.epoch == st.epoch {
            mark.offset.clamp(HEADER_LEN as u64, st.written)
        } else {
            HEADER_LEN as u64
        };
        let mut bytes = Header::new(self.replica).encode().to_vec();
        if st.reserved > 0 {
            bytes.extend(encode_frame(&JournalEntry::Reserve { upto: st.reserved }));
        }
        let kept = (st.written - keep_from) as usize;
        let at = bytes.len();
        bytes.resize(at + kept, 0);
        st.file
            .read_exact_at(&mut bytes[at..], keep_from)
            .map_err(io_err(&self.path, "read frames kept by rotation"))?;
        let f = write_atomically(&self.path, &bytes)?;
        let before = st.written;
        st.file = Arc::new(f);
        st.epoch += 1;
        st.written = bytes.len() as u64;
        st.synced = st.written;
        st.last_sync = Instant::now();
        tracing::info!(path = %self.path.display(), before, after = st.written, kept_bytes = kept, "journal rotated after snapshot");
        Ok(())
    }

    /// [`Journal::rotate`] at the current end: keeps only the header and the reservation.
    /// Only correct if nothing was appended since the snapshot's state was captured.
    pub fn reset(&self) -> Result<(), JournalError> {
        self.rotate(self.mark())
    }

    /// The journal file's size in bytes (header included).
    pub fn len(&self) -> u64 {
        self.lock().written
    }

    /// Whether the journal holds no frame (only its header).
    pub fn is_empty(&self) -> bool {
        self.len() <= HEADER_LEN as u64
    }

    /// How long the fsyncs that made appends durable took (group-commit leaders' and
    /// interval fsyncs; not rotations).
    pub fn fsync_latency(&self) -> HistogramSnapshot {
        self.fsync_latency.snapshot()
    }

    /// Sizes and counters.
    pub fn stats(&self) -> JournalStats {
        let st = self.lock();
        JournalStats {
            bytes: st.written,
            synced_bytes: st.synced,
            appends: st.appends,
            fsyncs: st.fsyncs,
            reserved: st.reserved,
        }
    }
}
