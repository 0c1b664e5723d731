//! The node runtime: a tokio task that drives the sans-IO [`Node`] over the QUIC
//! [`Transport`], with the [`Store`] journaling what it learns, and a [`TableHandle`] for the
//! filesystem.
//!
//! # Design: who owns the table
//!
//! The [`Node`] owns the table, and the node sits behind one `std::sync::RwLock` shared by the
//! network task and the filesystem's [`RuntimeHandle`]:
//! - reads (`resolve`, `children`) take the read lock: FUSE threads read concurrently and
//!   never wait for the network, only for the short write-locked steps of the task (merging a
//!   batch of received messages, a timer step), which never do I/O under the lock;
//! - a proposal takes the write lock only to reserve the sequence number and apply the
//!   mutation; the journal append and its fsync (group commit: concurrent proposers share one)
//!   run without any lock; then the lock is taken again briefly for
//!   [`Node::mark_durable`], and the task is woken to send the push.
//!
//! One table and one lock keep read-your-writes trivially true and need no second copy of the
//! table, at the price of readers waiting for a merge step (microseconds per record).
//!
//! Remote records the node merged ([`Event::Merged`]) are journaled by a dedicated thread
//! through a bounded queue, so the task never blocks on an fsync; if the queue is full a
//! record is not journaled, and a restart fetches it again by anti-entropy. A snapshot
//! received from a peer ([`Event::Reset`]) cannot be journaled record by record, so the store
//! writes a snapshot of the table right away.
//!
//! # Who is talking
//!
//! The transport authenticates every connection's peer by its certificate's node name, and every
//! member record carries the name the member claims. A message whose claimed sender (the SWIM
//! header's source, or for sync traffic the member known at the connection's address) is not
//! the certificate's node is dropped before the node sees it, and logged once a minute per
//! peer; outbound messages are only handed to a connection whose certificate names the member
//! they are meant for. A node with a valid certificate therefore cannot speak for, or listen
//! in place of, another member.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use wcfs_core::dot::Op;
use wcfs_core::handle::{Persist, ProposeError, TableHandle};
use wcfs_core::journal::JournalEntry;
use wcfs_core::node::{self, Event, Identity, Node, NodeName, Transmit};
use wcfs_core::path::WPath;
use wcfs_core::record::Record;
use wcfs_core::table::{Child, Resolution, Table};

use crate::journal::JournalStats;
use crate::metrics::{Histogram, HistogramSnapshot};
use crate::store::{Recovery, Store};
use crate::tls::NodeTls;
use crate::transport::{
    Inbound, PeerStats, Transport, TransportConfig, TransportError, TransportProbe, TransportStats,
    unix_micros,
};

/// What the filesystem must forget from its kernel caches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidate {
    /// This path's resolution changed.
    Path(WPath),
    /// Anything may have changed (the table was replaced, or events were lost).
    All,
}

/// Called from the network task for every remote change; must not block.
pub type Invalidator = Box<dyn Fn(Invalidate) + Send + Sync>;

/// Settings of a [`Runtime`].
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// The sync engine's settings (`report_merged` is forced on: the runtime journals merges).
    pub node: node::Config,
    /// The transport's settings (its `listen` is the node's address as peers see it).
    pub transport: TransportConfig,
    /// Interval of store upkeep (interval fsyncs, snapshots when the journal is large).
    /// Default 1 s.
    pub maintain_every: Duration,
    /// Remote record batches waiting for the journal thread. Default 1024.
    pub remote_log_queue: usize,
    /// Received messages handled per write-locked step, at most. Default 64.
    pub inbound_batch: usize,
}

impl RuntimeConfig {
    /// Defaults for a node listening on `listen` that joins through `seeds`, in a cluster of
    /// about `cluster_size` nodes.
    pub fn new(listen: SocketAddr, seeds: Vec<SocketAddr>, cluster_size: u32) -> RuntimeConfig {
        let mut node = node::Config::new(cluster_size);
        node.seeds = seeds;
        // A SWIM packet must fit one QUIC datagram before path MTU discovery has raised the
        // limit (about 1,150 bytes at QUIC's 1,200-byte minimum MTU), wire header included.
        node.swim.max_packet_size = std::num::NonZeroUsize::new(1100).unwrap_or(NonZeroUsize::MIN);
        // Anti-entropy only repairs what eager pushes missed. Every round costs a few QUIC
        // packets per peer even when nothing changed (a summary, its echo, their ACKs): at the
        // engine's 200 ms an idle 3-node cluster sent ~3.3 KB/s per node; at 1 s it stays under
        // the 2 KB/s budget, and a node that missed pushes is still repaired within seconds.
        node.ae_interval = Duration::from_secs(1);
        RuntimeConfig {
            node,
            transport: TransportConfig::new(listen),
            maintain_every: Duration::from_secs(1),
            remote_log_queue: 1024,
            inbound_batch: 64,
        }
    }
}

/// Counters of the runtime itself (the node and the transport have their own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Transmits the transport refused (full queue, too large): anti-entropy repairs them.
    pub sends_dropped: u64,
    /// Remote records journaled.
    pub remote_logged: u64,
    /// Remote records not journaled because the journal queue was full or the append failed.
    pub remote_log_dropped: u64,
    /// Received messages dropped because they claimed to come from another node than the one
    /// the connection's certificate names.
    pub impostor_dropped: u64,
    /// Local mutations proposed through the handle (including ones whose journal append
    /// failed).
    pub proposals: u64,
    /// Paths the filesystem was told to invalidate because a remote change altered them.
    pub invalidated_paths: u64,
    /// Times the filesystem was told to drop everything (table replaced by a snapshot, or
    /// events lost).
    pub invalidated_all: u64,
    /// Members that came up (joined, or came back under a new generation).
    pub members_up: u64,
    /// Members declared down (failed, left, or replaced by a newer generation).
    pub members_down: u64,
    /// Propagation-latency observations whose sender's clock was ahead of ours (counted as 0
    /// in the histogram).
    pub clock_ahead: u64,
}

#[derive(Default)]
struct Counters {
    sends_dropped: AtomicU64,
    remote_logged: AtomicU64,
    remote_log_dropped: AtomicU64,
    impostor_dropped: AtomicU64,
    proposals: AtomicU64,
    invalidated_paths: AtomicU64,
    invalidated_all: AtomicU64,
    members_up: AtomicU64,
    members_down: AtomicU64,
    clock_ahead: AtomicU64,
}

/// How records travel between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flow {
    /// Eager pushes of fresh local mutations.
    Push,
    /// Anti-entropy repair: records a peer lacked, sent after a digest exchange.
    AntiEntropy,
}

/// Record counts of one [`Flow`] with one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Records in messages handed to the transport for the peer (dropped later if its queue
    /// overflows or it is unreachable: see [`PeerStats`]).
    pub sent: u64,
    /// Records in messages received from the peer (duplicates included).
    pub received: u64,
    /// Received records that added something to the table (new dots).
    pub applied: u64,
}

/// Records exchanged with one peer, by the node name its certificate carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRecords {
    /// The peer's node name (its address when no name is known).
    pub peer: Arc<str>,
    /// Eager pushes.
    pub push: RecordCounts,
    /// Anti-entropy.
    pub anti_entropy: RecordCounts,
}

impl PeerRecords {
    fn flow(&mut self, f: Flow) -> &mut RecordCounts {
        match f {
            Flow::Push => &mut self.push,
            Flow::AntiEntropy => &mut self.anti_entropy,
        }
    }
}

/// Propagation-latency histograms (see [`RuntimeHandle::latency`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latency {
    /// Per received push message that added records: the sender's wall clock when it queued
    /// the message, to this node's wall clock once the records were applied and visible to
    /// readers. Includes the sender's transport queue, QUIC, our inbound queue and the merge;
    /// subject to the clock skew between the two nodes.
    pub push: HistogramSnapshot,
    /// The same for anti-entropy messages that added records (mutations a push missed: large
    /// values mean pushes are being lost).
    pub anti_entropy: HistogramSnapshot,
    /// Per local mutation, on this node's monotonic clock: from the filesystem's propose call
    /// to the mutation being durable in the journal and its push handed to the transport for
    /// every live peer (or, with no peer up, released for anti-entropy).
    pub local: HistogramSnapshot,
}

/// Most peer names whose record counts are kept; more are summed under [`OTHER_PEERS`].
const MAX_PEER_NAMES: usize = 1024;
/// The name records of peers beyond the first 1024 names are counted under.
pub const OTHER_PEERS: &str = "_other";
/// Local mutations waiting for their push to be measured, at most (older ones are forgotten).
const MAX_PENDING: usize = 1 << 16;

/// Measurements that are not plain counters.
#[derive(Default)]
struct Observed {
    push_latency: Histogram,
    ae_latency: Histogram,
    local_latency: Histogram,
    /// Own mutations not yet released: (seq, when propose was called).
    pending: Mutex<VecDeque<(u64, Instant)>>,
    peers: Mutex<HashMap<Arc<str>, PeerRecords>>,
}

impl Observed {
    fn peer(&self, name: &Arc<str>, f: impl FnOnce(&mut PeerRecords)) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let key = if peers.len() < MAX_PEER_NAMES || peers.contains_key(name) {
            name.clone()
        } else {
            Arc::from(OTHER_PEERS)
        };
        let rec = peers.entry(key.clone()).or_insert_with(|| PeerRecords {
            peer: key,
            push: RecordCounts::default(),
            anti_entropy: RecordCounts::default(),
        });
        f(rec);
    }
}

/// The records a sync message carries and how they travel, read from its header without
/// decoding it; `None` for every other message (SWIM, digests, snapshots) and for bytes that
/// are not a message of this format version.
///
/// This peeks at the format of [`wcfs_core::node::wire::Message::encode`]: magic, version,
/// type (1 = push, 3 = anti-entropy records, the latter followed by a `complete` byte), then
/// the record count as a varint. A test checks it against the encoder.
pub fn peek_records(bytes: &[u8]) -> Option<(Flow, u64)> {
    use wcfs_core::node::wire::{MAGIC, VERSION};
    let mut r = wcfs_core::codec::Reader::new(bytes);
    if r.take(4).ok()? != MAGIC || r.u8().ok()? != VERSION {
        return None;
    }
    let flow = match r.u8().ok()? {
        1 => Flow::Push,
        3 => {
            r.u8().ok()?;
            Flow::AntiEntropy
        }
        _ => return None,
    };
    Some((flow, r.varint().ok()?))
}

/// Own sequence numbers whose journal append finished, possibly out of order: the node may
/// only be told about a contiguous prefix (`mark_durable(seq)` covers everything below).
struct DurableMark {
    upto: u64,
    done: BTreeSet<u64>,
}

impl DurableMark {
    /// Records `seq` as journaled; returns the new contiguous mark if it advanced.
    fn complete(&mut self, seq: u64) -> Option<u64> {
        if seq <= self.upto {
            return None;
        }
        self.done.insert(seq);
        let before = self.upto;
        while self.done.remove(&(self.upto + 1)) {
            self.upto += 1;
        }
        // Bounded by the number of proposals in flight at once.
        debug_assert!(self.done.iter().all(|s| *s > self.upto + 1));
        (self.upto > before).then_some(self.upto)
    }
}

struct Shared {
    node: RwLock<Node>,
    store: Arc<Store>,
    transport: TransportProbe,
    observed: Observed,
    mark: Mutex<DurableMark>,
    /// Wakes the task: a proposal became durable and its push is queued in the node.
    wake: Notify,
    stop: Notify,
    counters: Counters,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Node> {
        // The node's state stays consistent across a panicking reader or writer step (every
        // step completes its own mutation before anything can panic on a later one).
        self.node.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, Node> {
        self.node.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The filesystem's view of a runtime's table. Cheap to clone; every clone is the same node.
#[derive(Clone)]
pub struct RuntimeHandle {
    shared: Arc<Shared>,
}

impl RuntimeHandle {
    /// Runs `f` with the table read-locked.
    pub fn with_table<R>(&self, f: impl FnOnce(&Table) -> R) -> R {
        f(self.shared.read().table())
    }

    /// The node's identity (address, replica, generation).
    pub fn identity(&self) -> Identity {
        self.shared.read().identity()
    }

    /// Members currently considered up.
    pub fn members(&self) -> Vec<Identity> {
        self.shared.read().members()
    }

    /// The node's counters.
    pub fn node_stats(&self) -> node::NodeStats {
        self.shared.read().stats()
    }

    /// Every member and recently departed member, with its lag (see [`node::PeerInfo`]).
    pub fn peers(&self) -> Vec<node::PeerInfo> {
        self.shared.read().peers()
    }

    /// The store (data directory and journal), for status and metrics.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The runtime's counters.
    pub fn stats(&self) -> RuntimeStats {
        let c = &self.shared.counters;
        RuntimeStats {
            sends_dropped: c.sends_dropped.load(Ordering::Relaxed),
            remote_logged: c.remote_logged.load(Ordering::Relaxed),
            remote_log_dropped: c.remote_log_dropped.load(Ordering::Relaxed),
            impostor_dropped: c.impostor_dropped.load(Ordering::Relaxed),
            proposals: c.proposals.load(Ordering::Relaxed),
            invalidated_paths: c.invalidated_paths.load(Ordering::Relaxed),
            invalidated_all: c.invalidated_all.load(Ordering::Relaxed),
            members_up: c.members_up.load(Ordering::Relaxed),
            members_down: c.members_down.load(Ordering::Relaxed),
            clock_ahead: c.clock_ahead.load(Ordering::Relaxed),
        }
    }

    /// The transport's counters.
    pub fn transport_stats(&self) -> TransportStats {
        self.shared.transport.stats()
    }

    /// Every peer address the transport tracks, with its queues and drops.
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        self.shared.transport.peer_stats()
    }

    /// Records exchanged per peer name, in no particular order.
    pub fn peer_records(&self) -> Vec<PeerRecords> {
        let peers = self.shared.observed.peers.lock();
        let peers = peers.unwrap_or_else(|e| e.into_inner());
        peers.values().cloned().collect()
    }

    /// The propagation-latency histograms.
    pub fn latency(&self) -> Latency {
        let o = &self.shared.observed;
        Latency {
            push: o.push_latency.snapshot(),
            anti_entropy: o.ae_latency.snapshot(),
            local: o.local_latency.snapshot(),
        }
    }

    /// The journal's sizes and counters.
    pub fn journal_stats(&self) -> JournalStats {
        self.shared.store.journal().stats()
    }

    /// How long the journal's fsyncs took.
    pub fn journal_fsync_latency(&self) -> HistogramSnapshot {
        self.shared.store.journal().fsync_latency()
    }

    /// Snapshots the store wrote since the runtime started.
    pub fn snapshots_written(&self) -> u64 {
        self.shared.store.snapshots_written()
    }

    /// Writes a snapshot of the table to the store and shrinks the journal. Blocks on disk
    /// I/O: call it from a blocking context.
    pub fn snapshot(&self) -> Result<u64, crate::store::StoreError> {
        self.shared
            .store
            .snapshot_with(|copy| copy(self.shared.read().table()))
    }
}

impl TableHandle for RuntimeHandle {
    fn resolve(&self, path: &WPath) -> Resolution {
        self.shared.read().table().resolve(path)
    }

    fn children(&self, dir: Option<&WPath>) -> Vec<Child> {
        self.shared.read().table().children(dir)
    }

    /// Applies the mutation, journals it (fsynced per the store's policy, shared with
    /// concurrent proposers), then releases it to the node for pushing. Blocks on disk I/O:
    /// FUSE worker threads call it, never the async task.
    fn propose(&self, path: &WPath, op: Op) -> Result<(), ProposeError> {
        let sh = &self.shared;
        let t0 = Instant::now();
        let (rec, seq) = {
            let mut node = sh.write();
            sh.store.reserve(node.table().counter() + 1)?;
            let rec = node.propose(path, op)?;
            (rec, node.table().counter())
        };
        sh.counters.proposals.fetch_add(1, Ordering::Relaxed);
        {
            // Before the release below, so that the drain that sends the push sees it.
            let mut p = sh
                .observed
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if p.len() >= MAX_PENDING {
                p.pop_front();
            }
            p.push_back((seq, t0));
        }
        let logged = sh.store.log_local(&rec);
        if let Err(e) = &logged {
            // The mutation is in the table and cannot be taken back; its seq was durably
            // reserved, so letting it travel cannot lead to reuse. Not releasing it would stall
            // every later mutation behind it.
            tracing::error!(path = %path, error = %e, "journal append failed");
        }
        let advanced = sh
            .mark
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .complete(seq);
        if let Some(upto) = advanced {
            sh.write().mark_durable(upto);
            sh.wake.notify_one();
        }
        logged
    }
}

/// A running node: the network task, the journal thread, and the handle the filesystem uses.
pub struct Runtime {
    handle: RuntimeHandle,
    local: SocketAddr,
    task: Option<JoinHandle<()>>,
    log_thread: Option<std::thread::JoinHandle<()>>,
}

/// Why a runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The transport could not be set up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The journal thread could not be started.
    #[error("starting the journal thread: {0}")]
    Thread(std::io::Error),
    /// The certificate's name cannot be a member name.
    #[error(transparent)]
    Name(#[from] node::BadName),
}

/// A random `u64` from the OS-seeded hasher keys (no extra dependency needed).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5743_4653);
    h.finish()
}

impl Runtime {
    /// Starts a node on a recovered store (from [`Store::open`]). Must be called within a
    /// tokio runtime. `invalidate` hears about every path whose resolution a remote change
    /// altered.
    pub fn start(
        mut cfg: RuntimeConfig,
        tls: &NodeTls,
        store: Store,
        table: Table,
        recovery: &Recovery,
        invalidate: Invalidator,
    ) -> Result<Runtime, RuntimeError> {
        let name = NodeName::new(tls.name())?;
        let (transport, inbound) = Transport::bind(cfg.transport.clone(), tls)?;
        let local = transport.local_addr();
        let probe = transport.probe();
        cfg.node.report_merged = true;
        let identity = Identity {
            addr: local,
            name,
            replica: recovery.identity.replica,
            // Only equality and order matter to SWIM; the low bits change on every restart.
            generation: recovery.identity.generation as u32,
        };
        let node = Node::new(cfg.node.clone(), identity, table, random_u64());
        let upto = node.durable();
        let store = Arc::new(store);
        let shared = Arc::new(Shared {
            node: RwLock::new(node),
            store: store.clone(),
            transport: probe,
            observed: Observed::default(),
            mark: Mutex::new(DurableMark {
                upto,
                done: BTreeSet::new(),
            }),
            wake: Notify::new(),
            stop: Notify::new(),
            counters: Counters::default(),
        });
        let handle = RuntimeHandle { shared };
        let (log_tx, log_rx) = std::sync::mpsc::sync_channel(cfg.remote_log_queue.max(1));
        let log_handle = handle.clone();
        let log_thread = std::thread::Builder::new()
            .name("wcfs-journal".into())
            .spawn(move || journal_remote(log_handle, log_rx))
            .map_err(RuntimeError::Thread)?;
        let driver = Driver {
            h: handle.clone(),
            transport,
            inbound,
            start: Instant::now(),
            invalidate,
            log_tx,
            cfg,
            impostors: HashMap::new(),
            events: Vec::new(),
        };
        let task = tokio::spawn(driver.run());
        Ok(Runtime {
            handle,
            local,
            task: Some(task),
            log_thread: Some(log_thread),
        })
    }

    /// The handle for the filesystem.
    pub fn handle(&self) -> RuntimeHandle {
        self.handle.clone()
    }

    /// The bound QUIC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops the task and the transport, waits for the journal thread to finish what it was
    /// given, and fsyncs the journal. The store (and its directory lock) is released once
    /// every [`RuntimeHandle`] is dropped.
    pub async fn shutdown(mut self) {
        self.handle.shared.stop.notify_one();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        if let Some(t) = self.log_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        if let Err(e) = self.handle.shared.store.journal().sync() {
            tracing::warn!(error = %e, "final journal sync");
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Journals remote records until the sender is gone.
fn journal_remote(h: RuntimeHandle, rx: std::sync::mpsc::Receiver<Vec<Record>>) {
    const MAX_BATCH: usize = 4096;
    let c = &h.shared.counters;
    while let Ok(first) = rx.recv() {
        let mut batch: Vec<JournalEntry> = first.into_iter().map(JournalEntry::Record).collect();
        while batch.len() < MAX_BATCH {
            let Ok(more) = rx.try_recv() else { break };
            batch.extend(more.into_iter().map(JournalEntry::Record));
        }
        let n = batch.len() as u64;
        match h.shared.store.journal().append_batch(&batch) {
            Ok(()) => c.remote_logged.fetch_add(n, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(error = %e, "journaling remote records");
                c.remote_log_dropped.fetch_add(n, Ordering::Relaxed)
            }
        };
    }
}

struct Driver {
    h: RuntimeHandle,
    transport: Transport,
    inbound: mpsc::Receiver<Inbound>,
    start: Instant,
    invalidate: Invalidator,
    log_tx: std::sync::mpsc::SyncSender<Vec<Record>>,
    cfg: RuntimeConfig,
    /// When each (address, certificate name) was last logged as an impostor.
    impostors: HashMap<(SocketAddr, Arc<str>), Instant>,
    /// Events taken from the node early (to attribute merges to a message), for `drain`.
    events: Vec<Event>,
}

/// A received sync message, for the per-peer counters and the propagation histogram.
struct SyncReceived {
    peer: Arc<str>,
    flow: Flow,
    /// Records it carried.
    records: u64,
    /// Of which added something to the table.
    applied: u64,
    /// The sender's wall clock when it queued the message.
    sent_unix_us: Option<u64>,
}

/// How often one impostor is logged.
const IMPOSTOR_LOG_EVERY: Duration = Duration::from_secs(60);
/// Impostors remembered for rate limiting (forgotten wholesale when full).
const IMPOSTOR_LOG_CAP: usize = 1024;

impl Driver {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    async fn run(mut self) {
        let sh = self.h.shared.clone();
        let mut next_maintain = Instant::now() + self.cfg.maintain_every;
        let mut maintaining: Option<JoinHandle<()>> = None;
        let mut buf = Vec::with_capacity(self.cfg.inbound_batch.max(1));
        // First step: the node announces itself to the seeds.
        sh.write().handle_timeout(self.now());
        self.drain();
        loop {
            let deadline = sh.read().poll_timeout();
            let wake_at = match deadline {
                Some(d) => (self.start + d).min(next_maintain),
                None => next_maintain,
            };
            tokio::select! {
                _ = sh.stop.notified() => break,
                n = self.inbound.recv_many(&mut buf, self.cfg.inbound_batch.max(1)) => {
                    if n == 0 {
                        break;
                    }
                    let now = self.now();
                    let mut node = sh.write();
                    let mut impostors = Vec::new();
                    let mut syncs = Vec::new();
                    for m in buf.drain(..) {
                        match node.sender_name(m.from, &m.bytes) {
                            Some(claim) if claim.as_str() != &*m.peer => {
                                impostors.push((m.from, m.peer, claim));
                            }
                            _ => {
                                let records = peek_records(&m.bytes);
                                node.handle(now, m.from, &m.bytes);
                                if let Some((flow, n)) = records {
                                    let before = self.events.len();
                                    while let Some(e) = node.poll_event() {
                                        self.events.push(e);
                                    }
                                    let applied = self.events[before..]
                                        .iter()
                                        .filter(|e| matches!(e, Event::Merged(_)))
                                        .count() as u64;
                                    syncs.push(SyncReceived {
                                        peer: m.peer,
                                        flow,
                                        records: n,
                                        applied,
                                        sent_unix_us: m.sent_unix_us,
                                    });
                                }
                            }
                        }
                    }
                    drop(node);
                    // Measured once the batch is visible to readers (the lock is released).
                    self.observe_received(syncs);
                    for (from, peer, claim) in impostors {
                        self.impostor(from, peer, claim);
                    }
                }
                _ = sh.wake.notified() => {}
                _ = tokio::time::sleep_until(wake_at.into()) => {
                    let now = self.now();
                    if deadline.is_some_and(|d| d <= now) {
                        sh.write().handle_timeout(now);
                    }
                    if Instant::now() >= next_maintain {
                        next_maintain = Instant::now() + self.cfg.maintain_every;
                        if maintaining.as_ref().is_none_or(|t| t.is_finished()) {
                            maintaining = Some(self.maintain(false));
                        }
                    }
                }
            }
            self.drain();
        }
        if let Some(t) = maintaining {
            let _ = t.await;
        }
        {
            let mut node = sh.write();
            node.leave();
        }
        self.drain();
        self.transport.close();
        // Let the peers hear the close, or they keep sending into the dead connection until
        // its idle timeout (and miss a restart on the same address for that long).
        const CLOSE_WAIT: Duration = Duration::from_secs(1);
        if tokio::time::timeout(CLOSE_WAIT, self.transport.wait_closed())
            .await
            .is_err()
        {
            tracing::debug!("connections still closing after {CLOSE_WAIT:?}");
        }
    }

    /// Counts received sync records per peer, and the propagation latency of messages that
    /// added records.
    fn observe_received(&self, syncs: Vec<SyncReceived>) {
        if syncs.is_empty() {
            return;
        }
        let sh = &self.h.shared;
        let now_us = unix_micros();
        for SyncReceived {
            peer,
            flow,
            records: n,
            applied,
            sent_unix_us: sent,
        } in syncs
        {
            sh.observed.peer(&peer, |p| {
                let c = p.flow(flow);
                c.received += n;
                c.applied += applied;
            });
            let Some(sent) = sent.filter(|_| applied > 0) else {
                continue;
            };
            if sent > now_us {
                sh.counters.clock_ahead.fetch_add(1, Ordering::Relaxed);
            }
            let h = match flow {
                Flow::Push => &sh.observed.push_latency,
                Flow::AntiEntropy => &sh.observed.ae_latency,
            };
            h.observe_us(now_us.saturating_sub(sent));
        }
    }

    /// Counts a message dropped for claiming another sender, and logs it once a minute per
    /// peer.
    fn impostor(&mut self, from: SocketAddr, peer: Arc<str>, claim: NodeName) {
        self.h
            .shared
            .counters
            .impostor_dropped
            .fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let key = (from, peer);
        if self
            .impostors
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < IMPOSTOR_LOG_EVERY)
        {
            return;
        }
        if self.impostors.len() >= IMPOSTOR_LOG_CAP {
            self.impostors.clear();
        }
        tracing::warn!(
            %from,
            certificate = %key.1,
            claims = %claim,
            "dropping a message whose sender is not the certificate's node (logged once a minute per peer)"
        );
        self.impostors.insert(key, now);
    }

    /// Store upkeep off the async threads; `snapshot` forces a snapshot.
    fn maintain(&self, snapshot: bool) -> JoinHandle<()> {
        let h = self.h.clone();
        tokio::task::spawn_blocking(move || {
            let store = &h.shared.store;
            let res = store
                .journal()
                .sync_if_due()
                .map_err(Into::into)
                .and_then(|()| {
                    if snapshot {
                        h.snapshot().map(drop)
                    } else {
                        store.maintain_with(|copy| copy(h.shared.read().table()))
                    }
                });
            if let Err(e) = res {
                tracing::error!(error = %e, "store upkeep");
            }
        })
    }

    /// Sends what the node queued and acts on its events, outside the node lock.
    fn drain(&mut self) {
        let sh = self.h.shared.clone();
        let (transmits, events, durable) = {
            let mut node = sh.write();
            let mut t: Vec<(Transmit, Option<NodeName>)> = Vec::new();
            while let Some(x) = node.poll_transmit() {
                let expect = node.recipient_name(x.to, &x.bytes);
                t.push((x, expect));
            }
            let mut e = std::mem::take(&mut self.events);
            while let Some(x) = node.poll_event() {
                e.push(x);
            }
            (t, e, node.durable())
        };
        let c = &sh.counters;
        for (t, expect) in transmits {
            let records = peek_records(&t.bytes);
            if self
                .transport
                .send_to(t.to, expect, t.channel, t.bytes)
                .is_err()
            {
                c.sends_dropped.fetch_add(1, Ordering::Relaxed);
            } else if let Some((flow, n)) = records {
                let peer: Arc<str> = match &expect {
                    Some(name) => Arc::from(name.as_str()),
                    None => Arc::from(t.to.to_string()),
                };
                sh.observed.peer(&peer, |p| p.flow(flow).sent += n);
            }
        }
        // Every push of a mutation up to `durable` was queued in the node before we took the
        // transmits above, so it has now been handed to the transport.
        {
            let mut pending = sh
                .observed
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if pending.iter().any(|(seq, _)| *seq <= durable) {
                pending.retain(|(seq, t0)| {
                    let released = *seq <= durable;
                    if released {
                        sh.observed.local_latency.observe(t0.elapsed());
                    }
                    !released
                });
            }
        }
        let mut merged = Vec::new();
        for e in events {
            match e {
                Event::PathChanged(p) => {
                    c.invalidated_paths.fetch_add(1, Ordering::Relaxed);
                    (self.invalidate)(Invalidate::Path(p))
                }
                Event::Reset => {
                    tracing::info!("table replaced by a peer's snapshot");
                    c.invalidated_all.fetch_add(1, Ordering::Relaxed);
                    (self.invalidate)(Invalidate::All);
                    // The journal cannot replay a snapshot: persist the new table now.
                    drop(self.maintain(true));
                }
                Event::Overflow => {
                    c.invalidated_all.fetch_add(1, Ordering::Relaxed);
                    (self.invalidate)(Invalidate::All)
                }
                Event::MemberUp(id) => {
                    c.members_up.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(addr = %id.addr, replica = %id.replica, generation = id.generation, "member up")
                }
                Event::MemberDown(id) => {
                    c.members_down.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(addr = %id.addr, replica = %id.replica, generation = id.generation, "member down")
                }
                Event::Merged(r) => merged.push(r),
                Event::Applied(_) => {}
            }
        }
        if !merged.is_empty() {
            let n = merged.len() as u64;
            if self.log_tx.try_send(merged).is_err() {
                c.remote_log_dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{DurableMark, Flow, peek_records};
    use wcfs_core::node::Message;
    use wcfs_core::table::{Digest, Shipped, Table};
    use wcfs_core::{Op, ReplicaId, WPath};

    #[test]
    fn peek_records_agrees_with_the_encoder() {
        let mut t = Table::new(ReplicaId(7), 1);
        let recs: Vec<_> = (0..200)
            .map(|i| {
                let p = WPath::try_from(format!("d/f{i}").as_str()).unwrap();
                t.propose(&p, Op::MarkRw).unwrap()
            })
            .collect();
        // 200 records: the count takes two varint bytes.
        let push = Message::Push(recs.clone()).encode();
        assert_eq!(peek_records(&push), Some((Flow::Push, 200)));
        let shipped: Vec<Shipped> = recs[..3]
            .iter()
            .map(|r| Shipped {
                record: r.clone(),
                also: vec![],
            })
            .collect();
        for complete in [false, true] {
            let m = Message::Records {
                complete,
                items: shipped.clone(),
            };
            assert_eq!(peek_records(&m.encode()), Some((Flow::AntiEntropy, 3)));
        }
        let others = [
            Message::Swim(vec![1, 2, 3]),
            Message::Digest {
                reply: true,
                digest: Digest::default(),
            },
            Message::Summary {
                hash: 1,
                echo: false,
                view: 2,
            },
            Message::SnapReq { id: 1, offset: 0 },
        ];
        for m in others {
            assert_eq!(peek_records(&m.encode()), None, "{m:?}");
        }
        assert_eq!(peek_records(&push[..6]), None, "truncated before the count");
        assert_eq!(peek_records(b"nope"), None);
        let mut other_version = push.clone();
        other_version[4] ^= 0xff;
        assert_eq!(peek_records(&other_version), None);
    }

    #[test]
    fn durable_mark_advances_only_over_a_contiguous_prefix() {
        let mut m = DurableMark {
            upto: 10,
            done: Default::default(),
        };
        // 12 and 13 finish before 11: nothing may be released yet.
        assert_eq!(m.complete(12), None);
        assert_eq!(m.complete(13), None);
        assert_eq!(m.complete(11), Some(13));
        assert!(m.done.is_empty());
        assert_eq!(m.complete(9), None, "below the mark: already released");
        assert_eq!(m.complete(14), Some(14));
    }
}
