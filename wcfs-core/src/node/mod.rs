//! The sync engine: a sans-IO state machine in the style of `quinn-proto`.
//!
//! A [`Node`] holds the table, the SWIM membership (foca) and the per-peer sync state. The
//! driver (the QUIC runtime, or the simulator) feeds it local mutations ([`Node::propose`]),
//! received bytes ([`Node::handle`]) and timer expiries ([`Node::handle_timeout`]), and drains
//! its outputs: packets ([`Node::poll_transmit`]), the next deadline ([`Node::poll_timeout`])
//! and events ([`Node::poll_event`]). Time is a [`Duration`] since an epoch the driver picks;
//! randomness comes from the seed given at construction. Nothing here reads a clock, the OS's
//! randomness, or touches a socket, so the simulator runs exactly the production code.

mod acks;
mod membership;
mod peer;
mod sync;
mod view;
pub mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use foca::{Foca, NoCustomBroadcast};

pub use membership::{
    BadName, Identity, MAX_NAME_LEN, NodeName, SimpleRng, SwimCodec, SwimDecodeError,
};
pub use wire::{Message, WireError};

use crate::dot::{Dot, Op, ReplicaId};
use crate::path::WPath;
use crate::record::Record;
use crate::table::{Table, TableError};
use membership::{Change, SwimRuntime};
use peer::Peer;

/// Tunables of the sync engine. [`Config::new`] gives the defaults documented per field.
#[derive(Clone, Debug)]
pub struct Config {
    /// Longest a local mutation waits to be batched into a push. Default 1 ms.
    pub push_delay: Duration,
    /// A push batch is sent at once when it reaches this many bytes. Default 16 KiB.
    pub push_max_bytes: usize,
    /// Mean interval between anti-entropy rounds (jittered ±25%). Default 200 ms.
    pub ae_interval: Duration,
    /// Peers contacted per anti-entropy round. Default 2.
    pub ae_fanout: usize,
    /// Byte budget of one anti-entropy records chunk. Default 64 KiB.
    pub chunk_bytes: usize,
    /// Interval between GC passes. Default 1 s.
    pub gc_interval: Duration,
    /// How long a member declared down still holds back GC (with its last known version
    /// vector). A member that comes back within it merges normally; one that comes back
    /// later is below the floor and takes a snapshot. Default 60 s.
    pub gc_grace: Duration,
    /// Bound on bytes queued for one peer and not yet polled; pushes beyond it are dropped
    /// (anti-entropy repairs the peer later). Default 1 MiB.
    pub peer_queue_bytes: usize,
    /// Bytes per snapshot piece. Default 64 KiB.
    pub snapshot_piece: usize,
    /// Pieces sent per snapshot request. Default 4.
    pub snapshot_window: usize,
    /// A snapshot transfer with no progress for this long is resumed by a new request.
    /// Default 500 ms.
    pub snapshot_timeout: Duration,
    /// Largest snapshot accepted. Default 1 GiB.
    pub snapshot_max_bytes: usize,
    /// A cached outgoing snapshot older than this is rebuilt for a new transfer. Default 2 s.
    pub snapshot_max_age: Duration,
    /// Addresses to announce to while the node knows no member.
    pub seeds: Vec<SocketAddr>,
    /// How often to re-announce to the seeds while alone. Default 1 s.
    pub seed_retry: Duration,
    /// SWIM settings (foca). Default: foca's LAN profile for `cluster_size` nodes.
    pub swim: foca::Config,
    /// Whether anti-entropy runs. Always `true` in production; the simulator turns it off to
    /// prove its checker notices the loss.
    pub anti_entropy: bool,
    /// Whether pushes are acknowledged and sent again until they are (see [`Message::AckedPush`]).
    /// For transports that lose sync messages; over QUIC streams pushes are reliable already,
    /// so the default is `false`.
    pub push_acks: bool,
    /// Whether to emit [`Event::Applied`] (the simulator measures propagation with it).
    pub report_applied: bool,
    /// Whether to emit [`Event::Merged`] for every remote record that brought new dots (the
    /// runtime journals them, so a restart need not fetch them again). Default `false`.
    pub report_merged: bool,
}

impl Config {
    /// The defaults, with SWIM tuned for about `cluster_size` nodes.
    pub fn new(cluster_size: u32) -> Config {
        let mut swim =
            foca::Config::new_lan(NonZeroU32::new(cluster_size.max(1)).unwrap_or(NonZeroU32::MIN));
        // SWIM packets travel as QUIC datagrams, whose payload is at most about 1150 bytes on
        // a path with QUIC's minimum MTU of 1200 (foca's LAN default of 1400 would be refused
        // as too large, once the packet is full of piggybacked updates). Our header adds 6.
        swim.max_packet_size =
            std::num::NonZeroUsize::new(SWIM_MAX_PACKET).unwrap_or(std::num::NonZeroUsize::MIN);
        // Members that come back under a new generation are renamed; down ones are forgotten
        // after a while so the member list stays bounded.
        swim.remove_down_after = Some(Duration::from_secs(60));
        // Members on the far side of a healed partition are "down" to each other; announcing
        // to a few down members often lets the two sides find each other again quickly.
        swim.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(1),
            num_members: std::num::NonZeroUsize::new(2).unwrap_or(std::num::NonZeroUsize::MIN),
        });
        Config {
            push_delay: Duration::from_millis(1),
            push_max_bytes: 16 * 1024,
            ae_interval: Duration::from_millis(200),
            ae_fanout: 2,
            chunk_bytes: 64 * 1024,
            gc_interval: Duration::from_secs(1),
            gc_grace: Duration::from_secs(60),
            peer_queue_bytes: 1 << 20,
            snapshot_piece: 64 * 1024,
            snapshot_window: 4,
            snapshot_timeout: Duration::from_millis(500),
            snapshot_max_bytes: 1 << 30,
            snapshot_max_age: Duration::from_secs(2),
            seeds: Vec::new(),
            seed_retry: Duration::from_secs(1),
            swim,
            anti_entropy: true,
            push_acks: false,
            report_applied: false,
            report_merged: false,
        }
    }
}

/// Which kind of transport a packet needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// Unreliable, small (SWIM): a QUIC datagram.
    Datagram,
    /// Sync traffic: a QUIC stream.
    Stream,
}

/// A packet for the driver to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// Transport kind.
    pub channel: Channel,
    /// The encoded message.
    pub bytes: Vec<u8>,
}

/// Something the driver may want to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A remote change altered this path's winning entry (invalidate caches for it).
    PathChanged(WPath),
    /// The table was replaced by a snapshot: every cached resolution may be stale.
    Reset,
    /// Events were dropped because nobody polled them: treat as [`Event::Reset`].
    Overflow,
    /// A member joined (or came back under a new generation).
    MemberUp(Identity),
    /// A member was declared down (or replaced by a newer generation).
    MemberDown(Identity),
    /// Dots this node newly learned (only with [`Config::report_applied`]).
    Applied(Vec<Dot>),
    /// A remote record that added dots to the table (only with [`Config::report_merged`]).
    /// Dots it carried only as superseded (`also`) are not included: a restart that lost them
    /// fetches them again by anti-entropy.
    Merged(Record),
}

/// Counters, for status output and the simulator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Messages handed to the driver.
    pub msgs_sent: u64,
    /// Bytes handed to the driver.
    pub bytes_sent: u64,
    /// Of which SWIM.
    pub swim_bytes_sent: u64,
    /// Pushes dropped because a peer's queue was full.
    pub pushes_dropped: u64,
    /// Messages refused (bad bytes, unknown version).
    pub bad_messages: u64,
    /// Snapshot transfers started to peers.
    pub snapshots_sent: u64,
    /// Snapshots installed here.
    pub resets: u64,
    /// Snapshots refused because they were behind our GC floor.
    pub snapshots_refused: u64,
    /// Records merged.
    pub records_merged: u64,
    /// GC passes that freed paths.
    pub paths_collected: u64,
    /// Member lists sent (membership anti-entropy).
    pub member_lists_sent: u64,
    /// Pushes sent again for want of an ack (with [`Config::push_acks`]).
    pub push_retransmits: u64,
}

/// What a node knows of one peer, for status output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer.
    pub id: Identity,
    /// `true` for a member, `false` for one declared down within the GC grace period.
    pub up: bool,
    /// Dots we hold that the peer had not seen at its last digest; `None` before any digest.
    pub peer_behind: Option<u64>,
    /// Dots the peer had seen at its last digest that we have not; `None` before any digest.
    pub we_behind: Option<u64>,
    /// Bytes queued for it in this node and not yet polled by the driver.
    pub queued: usize,
}

/// Largest SWIM packet foca may build; with our 6-byte header it fits any QUIC datagram.
pub const SWIM_MAX_PACKET: usize = 1100;

/// Most events kept unpolled; past it they are dropped for one [`Event::Overflow`].
const MAX_EVENTS: usize = 1 << 16;

type Swim = Foca<Identity, SwimCodec, SimpleRng, NoCustomBroadcast>;

/// Snapshot bytes being received.
struct SnapIn {
    from: SocketAddr,
    id: u64,
    total: u64,
    buf: Vec<u8>,
    next_req_at: u64,
    last_progress: Duration,
    retries: u32,
}

/// The snapshot we serve.
struct SnapOut {
    id: u64,
    bytes: Vec<u8>,
    created: Duration,
}

/// One replica's sync engine. Deterministic: the same inputs in the same order give the same
/// outputs.
pub struct Node {
    cfg: Config,
    me: Identity,
    table: Table,
    swim: Swim,
    rt: SwimRuntime,
    rng: SimpleRng,
    now: Duration,
    started: bool,
    peers: BTreeMap<SocketAddr, Peer>,
    /// Members declared down within the GC grace period: when, and their last vector.
    departed: BTreeMap<SocketAddr, (Duration, Option<crate::table::VersionVector>)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    overflowed: bool,
    push_buf: Vec<Record>,
    /// Own records not yet durable: (seq, record), shipped once `mark_durable` covers them.
    undurable: VecDeque<(u64, Record)>,
    /// Own mutations up to this seq are durable and may leave the node.
    durable: u64,
    /// Our digest (as peers may see it) and its hash, until something changes it.
    digest_cache: Option<(crate::table::Digest, u64)>,
    /// Our anti-entropy pull in flight: from whom, since when.
    pull: Option<(SocketAddr, Duration)>,
    /// Round-robin cursor over peers for anti-entropy.
    ae_cursor: Option<SocketAddr>,
    push_bytes: usize,
    push_deadline: Option<Duration>,
    next_ae: Duration,
    next_gc: Duration,
    next_seed: Duration,
    snap_in: Option<SnapIn>,
    snap_out: Option<SnapOut>,
    stats: NodeStats,
    /// XOR of [`view::id_hash`] over `peers` and ourselves.
    view_fp: u64,
    /// Member lists we may still send this anti-entropy round.
    lists_left: u32,
    /// The meet of the members' vectors for GC; `None` when one of them changed.
    peers_floor: Option<sync::PeersFloor>,
    /// Pushes awaiting acks (with [`Config::push_acks`]).
    acks: acks::Acks,
    /// Some member's vector grew since `peers_floor` was computed (at this time).
    floor_stale: bool,
    floor_computed: Duration,
}

impl Node {
    /// A node for `identity` (whose replica id is taken from `table`) with the table it
    /// recovered. `rng_seed` drives every random choice (probe targets, jitter).
    pub fn new(cfg: Config, identity: Identity, table: Table, rng_seed: u64) -> Node {
        let me = Identity {
            replica: table.replica(),
            ..identity
        };
        let durable = table.counter();
        let mut rng = SimpleRng::new(rng_seed);
        let swim_rng = SimpleRng::new(rng.next_word());
        let swim = Foca::new(me, cfg.swim.clone(), swim_rng, SwimCodec);
        Node {
            cfg,
            me,
            table,
            swim,
            rt: SwimRuntime::default(),
            rng,
            now: Duration::ZERO,
            started: false,
            peers: BTreeMap::new(),
            departed: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            overflowed: false,
            push_buf: Vec::new(),
            undurable: VecDeque::new(),
            durable,
            ae_cursor: None,
            pull: None,
            digest_cache: None,
            push_bytes: 0,
            push_deadline: None,
            next_ae: Duration::ZERO,
            next_gc: Duration::ZERO,
            next_seed: Duration::ZERO,
            snap_in: None,
            snap_out: None,
            stats: NodeStats::default(),
            view_fp: view::id_hash(&me),
            lists_left: view::LISTS_PER_ROUND,
            peers_floor: None,
            acks: acks::Acks::default(),
            floor_stale: false,
            floor_computed: Duration::ZERO,
        }
    }

    /// This node's identity.
    pub fn identity(&self) -> Identity {
        self.me
    }

    /// The replica id.
    pub fn replica(&self) -> ReplicaId {
        self.me.replica
    }

    /// The table (read-only: mutations go through [`Node::propose`]).
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// Members currently considered up, in address order.
    pub fn members(&self) -> Vec<Identity> {
        self.peers.values().map(|p| p.id).collect()
    }

    /// The name of whoever sent `bytes`, received from `from`, claims to be: for a SWIM packet
    /// the sender in its header, for sync traffic the member known at `from`. `None` when
    /// there is no claim to check (sync traffic from an address that is not a member yet, or
    /// bytes that [`Node::handle`] will refuse anyway). A driver that knows the sender's
    /// authenticated name drops a message whose claim differs.
    pub fn sender_name(&self, from: SocketAddr, bytes: &[u8]) -> Option<NodeName> {
        self.claimed_name(from, bytes, true)
    }

    /// The name of the member a packet to `to` is meant for: the recipient in a SWIM header
    /// (unknown for an announce to a seed), or the member known at `to` for sync traffic.
    /// `None` when there is no expectation to check.
    pub fn recipient_name(&self, to: SocketAddr, bytes: &[u8]) -> Option<NodeName> {
        self.claimed_name(to, bytes, false)
    }

    fn claimed_name(&self, addr: SocketAddr, bytes: &[u8], src: bool) -> Option<NodeName> {
        use foca::Codec;
        match Message::swim_payload(bytes) {
            Some(p) => {
                let h = SwimCodec.decode_header(p).ok()?;
                let n = if src { h.src.name } else { h.dst.name };
                (src || !n.is_unknown()).then_some(n)
            }
            None => self.peers.get(&addr).map(|p| p.id.name),
        }
    }

    /// Every member, and every member declared down within the GC grace period, in address
    /// order, with how far apart their last digest and our table were. O(peers × replicas).
    pub fn peers(&self) -> Vec<PeerInfo> {
        let mine = self.table.version_vector();
        let gap = |vv: &Option<crate::table::VersionVector>| {
            vv.as_ref().map(|theirs| {
                let ahead = |a: &crate::table::VersionVector, b: &crate::table::VersionVector| {
                    a.0.iter()
                        .map(|(r, n)| n.saturating_sub(b.get(*r)))
                        .sum::<u64>()
                };
                (ahead(&mine, theirs), ahead(theirs, &mine))
            })
        };
        let mut out: Vec<PeerInfo> = self
            .peers
            .values()
            .map(|p| {
                let g = gap(&p.vv);
                PeerInfo {
                    id: p.id,
                    up: true,
                    peer_behind: g.map(|g| g.0),
                    we_behind: g.map(|g| g.1),
                    queued: p.queued,
                }
            })
            .collect();
        for (addr, (_, vv)) in &self.departed {
            if self.peers.contains_key(addr) {
                continue;
            }
            let g = gap(vv);
            out.push(PeerInfo {
                id: Identity {
                    addr: *addr,
                    replica: ReplicaId(0),
                    generation: 0,
                    name: NodeName::UNKNOWN,
                },
                up: false,
                peer_behind: g.map(|g| g.0),
                we_behind: g.map(|g| g.1),
                queued: 0,
            });
        }
        out.sort_by_key(|p| p.id.addr);
        out
    }

    /// Bytes waiting in the outbound queue, all peers together.
    pub fn queued_bytes(&self) -> usize {
        self.peers.values().map(|p| p.queued).sum()
    }

    /// Applies a local mutation and returns its record for the journal. The table is
    /// unchanged on error. The record does not leave this node until the driver reports it
    /// durable with [`Node::mark_durable`]: a peer must never hold a dot that a crash could
    /// make this replica forget (and reuse). It is then pushed within [`Config::push_delay`]
    /// of the last `now` the node was given, or at once when the batch is full.
    pub fn propose(&mut self, path: &WPath, op: Op) -> Result<Record, TableError> {
        let rec = self.table.propose(path, op)?;
        let seq = self.table.counter();
        const MAX_UNDURABLE: usize = 1 << 20;
        if self.undurable.len() >= MAX_UNDURABLE {
            // The driver stopped syncing; anti-entropy ships these once it does.
            self.undurable.pop_front();
        }
        self.undurable.push_back((seq, rec.clone()));
        Ok(rec)
    }

    /// Tells the node that its own mutations up to `seq` are durable (journal fsynced), so
    /// they may be pushed and served to peers.
    pub fn mark_durable(&mut self, seq: u64) {
        self.durable = self.durable.max(seq.min(self.table.counter()));
        self.digest_cache = None;
        let mut any = false;
        while self
            .undurable
            .front()
            .is_some_and(|(s, _)| *s <= self.durable)
        {
            if let Some((_, r)) = self.undurable.pop_front() {
                self.queue_push(r);
                any = true;
            }
        }
        // The group commit already batched these: push at once.
        if any {
            self.flush_push();
        }
    }

    /// Own mutations up to this seq may leave the node.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Handles bytes received from `from`. Malformed or foreign-version bytes are counted,
    /// logged and otherwise ignored.
    pub fn handle(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        self.advance(now);
        match Message::decode(bytes) {
            Ok(Message::Swim(b)) => {
                if let Err(e) = self.swim.handle_data(&b, &mut self.rt) {
                    tracing::debug!(%from, error = %e, "SWIM packet refused");
                }
            }
            Ok(m) => self.on_message(from, m),
            Err(e) => {
                self.stats.bad_messages += 1;
                tracing::warn!(%from, error = %e, "message refused");
            }
        }
        self.after_swim();
    }

    /// Runs whatever is due at `now`: SWIM timers, push flush, anti-entropy, GC, snapshot
    /// resumption.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.advance(now);
        while let Some((&(at, seq), _)) = self.rt.timers.first_key_value() {
            if at > now {
                break;
            }
            let Some(t) = self.rt.timers.remove(&(at, seq)) else {
                break;
            };
            if let Err(e) = self.swim.handle_timer(t, &mut self.rt) {
                tracing::debug!(error = %e, "SWIM timer");
            }
        }
        self.after_swim();
        if self.push_deadline.is_some_and(|d| d <= now) {
            self.flush_push();
        }
        self.retransmit_due();
        if now >= self.next_seed {
            self.next_seed = now + self.cfg.seed_retry;
            if self.peers.is_empty() {
                self.announce_to_seeds();
            }
        }
        if now >= self.next_ae {
            self.next_ae = now + self.jitter(self.cfg.ae_interval);
            self.lists_left = view::LISTS_PER_ROUND;
            if self.cfg.anti_entropy {
                self.anti_entropy_round();
            }
        }
        if now >= self.next_gc {
            self.next_gc = now + self.cfg.gc_interval;
            self.gc();
        }
        self.snapshot_tick();
    }

    /// The next packet to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.transmits.pop_front()?;
        if let Some(p) = self.peers.get_mut(&t.to) {
            p.queued = p.queued.saturating_sub(t.bytes.len());
        }
        Some(t)
    }

    /// When [`Node::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let mut t = self.next_ae.min(self.next_gc).min(self.next_seed);
        if let Some(d) = self.push_deadline {
            t = t.min(d);
        }
        if let Some(d) = self.acks.next_deadline() {
            t = t.min(d);
        }
        if let Some((&(at, _), _)) = self.rt.timers.first_key_value() {
            t = t.min(at);
        }
        if let Some(s) = &self.snap_in {
            t = t.min(s.last_progress + self.cfg.snapshot_timeout);
        }
        Some(t.max(self.now))
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.overflowed {
            self.overflowed = false;
            return Some(Event::Overflow);
        }
        self.events.pop_front()
    }

    /// Whether some live peer's last digest shows it holds every mutation of ours: a node
    /// leaving for good waits for this (bounded) so nothing acknowledged leaves with it.
    pub fn handoff_done(&self) -> bool {
        let (me, c) = (self.me.replica, self.table.counter());
        c == 0
            || self
                .peers
                .values()
                .any(|p| p.vv.as_ref().is_some_and(|v| v.get(me) >= c))
    }

    /// Leaves the cluster gracefully (tells peers we are going).
    pub fn leave(&mut self) {
        if let Err(e) = self.swim.leave_cluster(&mut self.rt) {
            tracing::debug!(error = %e, "SWIM leave");
        }
        self.after_swim();
    }

    fn advance(&mut self, now: Duration) {
        self.now = self.now.max(now);
        self.rt.now = self.now;
        if !self.started {
            self.started = true;
            self.next_ae = self.now + self.jitter(self.cfg.ae_interval);
            self.next_gc = self.now + self.cfg.gc_interval;
            self.next_seed = self.now + self.cfg.seed_retry;
            self.announce_to_seeds();
        }
    }

    /// `mean` ±25%.
    fn jitter(&mut self, mean: Duration) -> Duration {
        let m = mean.as_micros() as u64;
        let lo = m - m / 4;
        Duration::from_micros(lo + self.rng.below(m / 2 + 1))
    }

    fn announce_to_seeds(&mut self) {
        let seeds = self.cfg.seeds.clone();
        for addr in seeds {
            if addr == self.me.addr {
                continue;
            }
            let placeholder = Identity {
                addr,
                name: NodeName::UNKNOWN,
                replica: ReplicaId(0),
                generation: 0,
            };
            if let Err(e) = self.swim.announce(placeholder, &mut self.rt) {
                tracing::debug!(error = %e, "SWIM announce");
            }
        }
        self.after_swim();
    }

    /// Moves foca's outputs into ours.
    fn after_swim(&mut self) {
        while let Some((to, data)) = self.rt.sends.pop_front() {
            let bytes = Message::Swim(data).encode();
            self.stats.swim_bytes_sent += bytes.len() as u64;
            self.send(to.addr, Channel::Datagram, bytes);
        }
        while let Some(c) = self.rt.changes.pop_front() {
            self.peers_floor = None;
            match c {
                Change::Up(id) => {
                    let fresh = self.peers.get(&id.addr).is_none_or(|p| p.id != id);
                    if fresh {
                        self.departed.remove(&id.addr);
                        if let Some(old) = self.peers.insert(id.addr, Peer::new(id)) {
                            self.view_fp ^= view::id_hash(&old.id);
                        }
                        self.view_fp ^= view::id_hash(&id);
                        self.event(Event::MemberUp(id));
                    }
                }
                Change::Down(id) => {
                    if self.peers.get(&id.addr).is_some_and(|p| p.id == id)
                        && let Some(p) = self.peers.remove(&id.addr)
                    {
                        self.view_fp ^= view::id_hash(&p.id);
                        // It still counts for GC for a grace period: if it comes back (a
                        // partition heals) it merges instead of needing a reset.
                        const MAX_DEPARTED: usize = 1 << 16;
                        if self.departed.len() < MAX_DEPARTED {
                            self.departed.insert(id.addr, (self.now, p.vv));
                        }
                        self.event(Event::MemberDown(id));
                    }
                }
            }
        }
    }

    fn event(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.overflowed = true;
            self.events.clear();
        } else {
            self.events.push_back(e);
        }
    }

    /// Queues a packet. Sync traffic to a known peer is subject to its queue bound; returns
    /// whether the packet was queued.
    fn send(&mut self, to: SocketAddr, channel: Channel, bytes: Vec<u8>) -> bool {
        if let Some(p) = self.peers.get_mut(&to) {
            if channel == Channel::Stream && !p.fits(bytes.len(), self.cfg.peer_queue_bytes) {
                return false;
            }
            p.queued += bytes.len();
        }
        self.stats.msgs_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.transmits.push_back(Transmit { to, channel, bytes });
        true
    }
}

#[cfg(test)]
mod tests;
