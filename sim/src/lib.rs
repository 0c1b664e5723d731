//! A deterministic discrete-event simulator of many `wcfs-core` sync nodes.
//!
//! One thread, one event queue ordered by (time, sequence number), one seeded RNG; no clock,
//! no OS randomness and no hash-map iteration anywhere, so the same options replay the same
//! run byte for byte. It drives the production [`wcfs_core::node::Node`] with a web-like
//! workload and a faulty network and node model, then checks the outcome against an oracle
//! (see [`oracle`]).

pub mod oracle;
pub mod scenario;

use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use wcfs_core::node::{Config, Event, Identity, Node, NodeName, SimpleRng};
use wcfs_core::{Dot, Op, Record, ReplicaId, Table, WPath};

pub use scenario::{Opts, Scenario};

/// Simulated time in microseconds.
pub type Micros = u64;

const MS: Micros = 1000;
const SEC: Micros = 1_000_000;
/// Group commit period of every node's journal (an fsync on a fast SSD).
pub const COMMIT_INTERVAL: Micros = 1000;
/// Largest datagram payload QUIC carries on a path with its minimum MTU (1200 bytes less
/// the short header, the AEAD tag and the frame header); larger ones are refused.
pub const MAX_DATAGRAM: usize = 1150;
/// The wire type byte of a member list message (after the 4-byte magic and the version).
const MEMBERS_TYPE: u8 = 7;

/// Network conditions, changeable by faults.
#[derive(Clone, Debug)]
pub struct NetModel {
    /// One-way latency range, uniform.
    pub lat_min: Micros,
    /// See `lat_min`.
    pub lat_max: Micros,
    /// Probability a packet is lost.
    pub loss: f64,
    /// Probability a packet is delivered twice.
    pub dup: f64,
    /// Probability a packet gets an extra delay of up to 5× `lat_max` (reordering).
    pub reorder: f64,
    /// Egress bandwidth of each node, bytes per second.
    pub bandwidth: u64,
    /// Most egress backlog a node's NIC buffers before tail-dropping.
    pub tx_buffer: Micros,
    /// Whether sync messages (QUIC streams) are lost like datagrams. `false`: a lost stream
    /// packet is retransmitted after a probe timeout (QUIC is reliable), so loss delays it;
    /// only after 5 losses in a row is it gone (the connection broke).
    pub raw_stream_loss: bool,
    /// QUIC probe timeout for retransmissions (max_ack_delay 25 ms plus the RTT).
    pub pto: Micros,
}

impl Default for NetModel {
    fn default() -> Self {
        NetModel {
            lat_min: 200,
            lat_max: 1000,
            loss: 0.0,
            dup: 0.0,
            reorder: 0.0,
            bandwidth: 1_250_000_000,
            tx_buffer: 50 * MS,
            raw_stream_loss: false,
            pto: 27 * MS,
        }
    }
}

/// How the cluster is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    /// Everyone reaches everyone.
    None,
    /// Nodes on different sides cannot talk.
    Split,
    /// Side 0 cannot reach side 1; side 1 still reaches side 0.
    OneWay,
}

/// A scheduled fault or change.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Change the network model.
    Net(NetModel),
    /// Set the partition mode (sides are `node index < nodes / 2`).
    Partition(Partition),
    /// Crash a node (volatile state lost).
    Crash(usize),
    /// Restart a crashed node from its disk.
    Restart(usize),
    /// Stop processing (a long GC pause, a hung process).
    Pause(usize),
    /// Resume after a pause.
    Resume(usize),
    /// Start a node that was not running (join).
    Join(usize),
    /// Leave gracefully and stop.
    Leave(usize),
    /// Internal: whether a leaving node has handed its mutations off.
    LeaveCheck(usize),
    /// Set a node's service time per message, µs.
    Service(usize, Micros),
}

enum Ev {
    Deliver {
        to: usize,
        from: usize,
        bytes: Vec<u8>,
    },
    Served {
        node: usize,
        epoch: u64,
    },
    Timer {
        node: usize,
        epoch: u64,
    },
    Mutate,
    Commit,
    Checkpoint,
    Fault(Fault),
    Probe,
}

/// A scheduled event's place in the queue: its payload waits in [`Sim::slab`], so the heap
/// moves 24-byte keys instead of whole events. Ordered by (time, sequence), earliest first.
type Key = std::cmp::Reverse<(Micros, u64, u32)>;

/// What a node has on disk: a checkpoint of its table (rewritten periodically, atomically)
/// and the journal of its own mutations since, durable up to `synced`.
struct Disk {
    checkpoint: Option<Table>,
    journal: Vec<Record>,
    synced: usize,
}

/// Lifecycle of a simulated node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// Not started yet (joins later).
    Absent,
    /// Running.
    Up,
    /// Crashed, waiting for restart.
    Crashed,
    /// Left the cluster for good.
    Left,
}

struct SimNode {
    node: Option<Node>,
    life: Life,
    addr: SocketAddr,
    replica: ReplicaId,
    generation: u32,
    inbound: VecDeque<(usize, Vec<u8>)>,
    /// SWIM datagrams: their own (bounded) queue, served first, as a runtime that reads
    /// datagrams apart from sync streams would.
    inbound_swim: VecDeque<(usize, Vec<u8>)>,
    busy: bool,
    paused: bool,
    /// Leaving gracefully: no more writes; exits by this time at the latest.
    leaving: Option<Micros>,
    service: Micros,
    tx_free: Micros,
    epoch: u64,
    timer_at: Option<Micros>,
    disk: Disk,
    /// Own proposals waiting for the next group commit: (journal index, mutation index).
    pending_ack: Vec<usize>,
}

/// One proposed mutation, for latency and the oracle.
pub struct Mutation {
    /// Proposing node.
    pub origin: usize,
    /// Its dot.
    pub dot: Dot,
    /// Its path.
    pub path: WPath,
    /// The op.
    pub op: Op,
    /// Its record as proposed.
    pub rec: Record,
    /// When proposed.
    pub at: Micros,
    /// Acknowledged (journal synced) — must never be lost.
    pub acked: bool,
    /// Lost in a crash before being synced.
    pub lost: bool,
    /// Per node, when it first learned the mutation (`Micros::MAX`: not yet).
    reached: Vec<Micros>,
    /// Running nodes the origin did not list as members when it proposed (its push
    /// cannot reach them; they learn the mutation some other way).
    pub unknown_at_origin: Vec<usize>,
}

/// Totals over a run.
#[derive(Default, Debug, Clone)]
pub struct Counters {
    /// Events processed.
    pub events: u64,
    /// Packets dropped by loss, partitions or full buffers.
    pub net_dropped: u64,
    /// Packets dropped at a full inbound queue.
    pub inbound_dropped: u64,
    /// Datagrams refused for being larger than [`MAX_DATAGRAM`].
    pub oversize_dropped: u64,
    /// Sync bytes sent (SWIM excluded).
    pub sync_bytes: u64,
    /// Sync messages sent (SWIM excluded).
    pub sync_msgs: u64,
    /// SWIM bytes sent.
    pub swim_bytes: u64,
    /// Membership anti-entropy (member list) bytes sent: membership traffic like SWIM, so
    /// kept out of the sync figures too.
    pub member_list_bytes: u64,
    /// Crashes.
    pub crashes: u64,
    /// Snapshot installs.
    pub resets: u64,
}

/// The simulator.
pub struct Sim {
    /// Options.
    pub opts: Opts,
    now: Micros,
    seq: u64,
    queue: BinaryHeap<Key>,
    /// Payloads of queued events, by slot; `free` lists the empty slots.
    slab: Vec<Option<Ev>>,
    free: Vec<u32>,
    rng: SimpleRng,
    net: NetModel,
    partition: Partition,
    nodes: Vec<SimNode>,
    /// Every mutation proposed, in order.
    pub muts: Vec<Mutation>,
    by_dot: BTreeMap<Dot, usize>,
    created: Vec<WPath>,
    next_name: u64,
    /// Totals.
    pub counters: Counters,
    /// When the workload stops.
    pub work_end: Micros,
    /// When the last fault heals.
    pub last_heal: Micros,
    /// First time after `last_heal` and `work_end` that every live node had the same digest.
    pub converged_at: Option<Micros>,
    /// Log lines (deterministic).
    pub log: Vec<String>,
    /// Nodes slowed, paused or crashed at some point (excluded from the healthy latency).
    pub impaired: std::collections::BTreeSet<usize>,
    /// When membership-disturbing faults happened (they hold GC back for the grace period).
    pub disruptions: Vec<Micros>,
}

/// The planted bug of [`Opts::bug_ignore_removals`]: drops tombstone records.
fn strip_removals(bytes: Vec<u8>) -> Vec<u8> {
    use wcfs_core::node::Message;
    match Message::decode(&bytes) {
        Ok(Message::Push(mut recs)) => {
            recs.retain(|r| !r.is_tombstone());
            Message::Push(recs).encode()
        }
        Ok(Message::AckedPush { id, mut records }) => {
            records.retain(|r| !r.is_tombstone());
            Message::AckedPush { id, records }.encode()
        }
        Ok(Message::Records {
            complete,
            mut items,
        }) => {
            items.retain(|s| !s.record.is_tombstone());
            Message::Records { complete, items }.encode()
        }
        _ => bytes,
    }
}

fn addr_of(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7000))
}

impl Sim {
    /// Builds a simulator for `opts` (the scenario schedules its faults).
    pub fn new(opts: Opts) -> Sim {
        let mut rng = SimpleRng::new(opts.seed);
        let n = opts.nodes;
        let nodes = (0..n)
            .map(|i| SimNode {
                node: None,
                life: Life::Absent,
                addr: addr_of(i),
                replica: ReplicaId(rng.next_word() | 1),
                generation: 0,
                inbound: VecDeque::new(),
                inbound_swim: VecDeque::new(),
                busy: false,
                paused: false,
                leaving: None,
                service: opts.service,
                tx_free: 0,
                epoch: 0,
                timer_at: None,
                disk: Disk {
                    checkpoint: None,
                    journal: Vec::new(),
                    synced: 0,
                },
                pending_ack: Vec::new(),
            })
            .collect();
        Sim {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            rng,
            net: NetModel::default(),
            partition: Partition::None,
            nodes,
            muts: Vec::new(),
            by_dot: BTreeMap::new(),
            created: Vec::new(),
            next_name: 0,
            counters: Counters::default(),
            work_end: 0,
            last_heal: 0,
            converged_at: None,
            log: Vec::new(),
            disruptions: Vec::new(),
            impaired: Default::default(),
            opts,
        }
    }

    fn at(&mut self, at: Micros, ev: Ev) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(k) => {
                self.slab[k as usize] = Some(ev);
                k
            }
            None => {
                self.slab.push(Some(ev));
                (self.slab.len() - 1) as u32
            }
        };
        self.queue.push(std::cmp::Reverse((at, self.seq, slot)));
    }

    /// Schedules a fault at `at`.
    pub fn fault_at(&mut self, at: Micros, f: Fault) {
        self.at(at, Ev::Fault(f));
    }

    /// Sets the initial network model.
    pub fn set_net(&mut self, net: NetModel) {
        self.net = net;
    }

    fn rand_f(&mut self) -> f64 {
        (self.rng.next_word() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn node_config(&self) -> Config {
        let mut cfg = Config::new(self.opts.nodes as u32);
        cfg.seeds = (0..self.opts.nodes.min(3)).map(addr_of).collect();
        cfg.anti_entropy = !self.opts.no_anti_entropy;
        cfg.push_acks = self.opts.push_acks;
        cfg.report_applied = true;
        cfg.ae_interval = Duration::from_micros(self.opts.ae_interval);
        cfg.gc_grace = Duration::from_micros(self.opts.gc_grace);
        // Faster failure detection than the WAN-ish defaults: the simulated LAN is fast.
        cfg.swim.probe_period = Duration::from_millis(500);
        cfg.swim.probe_rtt = Duration::from_millis(100);
        cfg.swim.suspect_to_down_after = Duration::from_secs(3);
        cfg.swim.remove_down_after = Some(Duration::from_secs(30));
        cfg
    }

    fn start_node(&mut self, i: usize) {
        let cfg = self.node_config();
        let sn = &mut self.nodes[i];
        let mut table = match &sn.disk.checkpoint {
            Some(t) => t.clone(),
            None => Table::new(sn.replica, sn.replica.0 ^ 0x5eed),
        };
        for r in &sn.disk.journal[..sn.disk.synced] {
            let _ = table.merge(r);
            if let Some(e) = r.entries.iter().find(|e| e.dot.replica == sn.replica) {
                table.bump_counter(e.dot.seq);
            }
        }
        let id = Identity {
            addr: sn.addr,
            name: NodeName::new(&format!("n{i}")).unwrap_or(NodeName::UNKNOWN),
            replica: sn.replica,
            generation: sn.generation,
        };
        let seed = self.opts.seed ^ ((i as u64) << 20) ^ sn.generation as u64;
        sn.node = Some(Node::new(cfg, id, table, seed));
        sn.life = Life::Up;
        sn.epoch += 1;
        sn.timer_at = None;
        sn.busy = false;
        sn.paused = false;
        sn.inbound.clear();
        sn.inbound_swim.clear();
        self.kick(i);
    }

    /// Drains a node's outputs and reschedules its timer.
    fn kick(&mut self, i: usize) {
        let now = self.now;
        let Some(node) = self.nodes[i].node.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while let Some(t) = node.poll_transmit() {
            out.push(t);
        }
        let mut applied: Vec<Dot> = Vec::new();
        let mut reset = false;
        while let Some(e) = node.poll_event() {
            match e {
                Event::Applied(d) => applied.extend(d),
                Event::Reset => reset = true,
                _ => {}
            }
        }
        if reset {
            // A snapshot brought whatever it had seen.
            self.counters.resets += 1;
            let d = node.table().digest();
            applied.extend(
                self.muts
                    .iter()
                    .map(|m| m.dot)
                    .filter(|dot| d.has_seen(*dot)),
            );
        }
        let timeout = node.poll_timeout();
        for d in applied {
            if let Some(&m) = self.by_dot.get(&d) {
                let mu = &mut self.muts[m];
                if mu.reached[i] == Micros::MAX {
                    mu.reached[i] = now;
                }
            }
        }
        for t in out {
            let to = match t.to.ip() {
                std::net::IpAddr::V4(v) => {
                    let o = v.octets();
                    ((o[1] as usize) << 16) | ((o[2] as usize) << 8) | o[3] as usize
                }
                std::net::IpAddr::V6(_) => continue,
            };
            if to >= self.nodes.len() {
                continue;
            }
            let swim = t.bytes.get(5) == Some(&0);
            if swim {
                self.counters.swim_bytes += t.bytes.len() as u64;
            } else if t.bytes.get(5) == Some(&MEMBERS_TYPE) {
                self.counters.member_list_bytes += t.bytes.len() as u64;
            } else {
                self.counters.sync_bytes += t.bytes.len() as u64;
                self.counters.sync_msgs += 1;
            }
            self.transmit(i, to, t.bytes);
        }
        if let Some(t) = timeout {
            // Rounded up: a deadline between two microseconds is not due at the earlier one.
            let t = (t.as_nanos().div_ceil(1000) as u64).max(now);
            let sn = &mut self.nodes[i];
            if sn.timer_at.is_none_or(|cur| t < cur || cur < now) {
                sn.timer_at = Some(t);
                let epoch = sn.epoch;
                self.at(t, Ev::Timer { node: i, epoch });
            }
        }
    }

    fn blocked(&self, from: usize, to: usize) -> bool {
        let half = self.nodes.len() / 2;
        let (a, b) = (from < half, to < half);
        match self.partition {
            Partition::None => false,
            Partition::Split => a != b,
            Partition::OneWay => a && !b,
        }
    }

    fn transmit(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        let now = self.now;
        let len = bytes.len() as u64;
        let sn = &mut self.nodes[from];
        let start = sn.tx_free.max(now);
        if start - now > self.net.tx_buffer {
            self.counters.net_dropped += 1;
            return;
        }
        let tx = (len * SEC).div_ceil(self.net.bandwidth.max(1));
        sn.tx_free = start + tx;
        let depart = start + tx;
        if self.blocked(from, to) {
            self.counters.net_dropped += 1;
            return;
        }
        let stream = bytes.get(5) != Some(&0);
        if !stream && bytes.len() > MAX_DATAGRAM {
            self.counters.oversize_dropped += 1;
            return;
        }
        let mut retrans = 0;
        while self.rand_f() < self.net.loss {
            retrans += 1;
            if !stream || self.net.raw_stream_loss || retrans > 5 {
                self.counters.net_dropped += 1;
                return;
            }
        }
        let depart = depart + retrans * self.net.pto;
        let span = self.net.lat_max.saturating_sub(self.net.lat_min);
        let mut lat = self.net.lat_min + self.rng.below(span + 1);
        if self.net.reorder > 0.0 && self.rand_f() < self.net.reorder {
            lat += self.rng.below(5 * self.net.lat_max + 1);
        }
        if !stream && self.net.dup > 0.0 && self.rand_f() < self.net.dup {
            let extra = self.rng.below(self.net.lat_max + 1);
            self.at(
                depart + lat + extra,
                Ev::Deliver {
                    to,
                    from,
                    bytes: bytes.clone(),
                },
            );
        }
        self.at(depart + lat, Ev::Deliver { to, from, bytes });
    }

    fn start_service(&mut self, i: usize) {
        let sn = &mut self.nodes[i];
        if sn.busy || sn.paused || sn.life != Life::Up {
            return;
        }
        let Some((_, b)) = sn.inbound_swim.front().or(sn.inbound.front()) else {
            return;
        };
        let cost = sn.service + (b.len() as u64 * sn.service) / 4096;
        sn.busy = true;
        let epoch = sn.epoch;
        let at = self.now + cost.max(1);
        self.at(at, Ev::Served { node: i, epoch });
    }

    fn mutate(&mut self) {
        // Pick a running node.
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let sn = &self.nodes[i];
                sn.life == Life::Up && !sn.paused && sn.leaving.is_none()
            })
            .collect();
        if up.is_empty() {
            return;
        }
        let burst = self.rng.below(1000) < 2;
        let origin = up[self.rng.below(up.len() as u64) as usize];
        let n = if burst { 50 } else { 1 };
        for _ in 0..n {
            let roll = self.rng.below(100);
            let mut ops: Vec<(WPath, Op)> = Vec::new();
            let fresh = |s: &mut Sim| {
                s.next_name += 1;
                let dir = s.rng.below(20);
                wcfs_core::WPath::new(
                    format!("site/uploads/2026/{dir:02}/img-{}.jpg", s.next_name).as_bytes(),
                )
                .ok()
            };
            if roll < 45 || (roll < 70 && self.created.is_empty()) {
                if let Some(p) = fresh(self) {
                    self.created.push(p.clone());
                    ops.push((p, Op::MarkRw));
                }
            } else if roll < 60 {
                self.next_name += 1;
                let shard = self.rng.below(16);
                if let Ok(p) = WPath::new(
                    format!("site/cache/{shard:x}/page-{}.html", self.next_name).as_bytes(),
                ) {
                    self.created.push(p.clone());
                    ops.push((p, Op::MarkRw));
                }
            } else if roll < 70 {
                let k = self.rng.below(self.created.len() as u64) as usize;
                let p = self.created.swap_remove(k);
                ops.push((p, Op::Forget));
            } else if roll < 80 {
                let k = self.rng.below(5000);
                if let Ok(p) = WPath::new(format!("site/ro/mod{}/f{k}.php", k % 50).as_bytes()) {
                    ops.push((p, Op::Whiteout));
                }
            } else if roll < 92 {
                let k = self.rng.below(5000);
                if let Ok(p) = WPath::new(format!("site/ro/mod{}/f{k}.php", k % 50).as_bytes()) {
                    ops.push((p, Op::MarkRw));
                }
            } else if !self.created.is_empty() {
                // Rename: forget the source, mark the destination.
                let k = self.rng.below(self.created.len() as u64) as usize;
                let src = self.created.swap_remove(k);
                ops.push((src, Op::Forget));
                if let Some(p) = fresh(self) {
                    self.created.push(p.clone());
                    ops.push((p, Op::MarkRw));
                }
            }
            for (p, op) in ops {
                self.propose(origin, p, op);
            }
        }
        self.kick(origin);
    }

    fn propose(&mut self, i: usize, path: WPath, op: Op) {
        let nn = self.nodes.len();
        let sn = &mut self.nodes[i];
        let Some(node) = sn.node.as_mut() else { return };
        let Ok(rec) = node.propose(&path, op) else {
            return;
        };
        let Some(e) = rec.entries.iter().find(|e| e.dot.replica == sn.replica) else {
            return;
        };
        let dot = e.dot;
        let known: std::collections::BTreeSet<SocketAddr> =
            node.members().iter().map(|m| m.addr).collect();
        sn.disk.journal.push(rec.clone());
        let m = self.muts.len();
        sn.pending_ack.push(m);
        let mut reached = vec![Micros::MAX; nn];
        reached[i] = self.now;
        let unknown_at_origin: Vec<usize> = (0..nn)
            .filter(|&j| {
                j != i && self.nodes[j].life == Life::Up && !known.contains(&self.nodes[j].addr)
            })
            .collect();
        self.muts.push(Mutation {
            origin: i,
            dot,
            path,
            op,
            rec: rec.clone(),
            at: self.now,
            acked: false,
            lost: false,
            reached,
            unknown_at_origin,
        });
        self.by_dot.insert(dot, m);
    }

    fn crash(&mut self, i: usize) {
        let sn = &mut self.nodes[i];
        if sn.life != Life::Up {
            return;
        }
        self.counters.crashes += 1;
        sn.node = None;
        sn.life = Life::Crashed;
        sn.inbound.clear();
        sn.inbound_swim.clear();
        sn.busy = false;
        sn.epoch += 1;
        sn.timer_at = None;
        // Torn tail: some unsynced records made it to disk whole, the next one is torn and
        // dropped by its CRC on replay, the rest never got written.
        let unsynced = sn.disk.journal.len() - sn.disk.synced;
        let survive = self.rng.below(unsynced as u64 + 1) as usize;
        let keep = sn.disk.synced + survive.min(unsynced.saturating_sub(1));
        let sn = &mut self.nodes[i];
        for r in &sn.disk.journal[keep..] {
            if let Some(e) = r.entries.iter().find(|e| e.dot.replica == sn.replica)
                && let Some(&m) = self.by_dot.get(&e.dot)
            {
                self.muts[m].lost = true;
            }
        }
        sn.disk.journal.truncate(keep);
        sn.disk.synced = keep;
        // Survivors of the tear are acknowledged as far as the oracle goes: they're on disk.
        for m in std::mem::take(&mut sn.pending_ack) {
            if !self.muts[m].lost {
                self.muts[m].acked = true;
            }
        }
        sn.generation += 1;
        self.log
            .push(format!("t={}ms crash node {i}", self.now / MS));
    }

    fn fault(&mut self, f: Fault) {
        if matches!(
            f,
            Fault::Crash(_)
                | Fault::Leave(_)
                | Fault::Pause(_)
                | Fault::Partition(_)
                | Fault::Join(_)
                | Fault::Restart(_)
        ) {
            self.disruptions.push(self.now);
        }
        if let Fault::Crash(i) | Fault::Pause(i) | Fault::Service(i, _) | Fault::Join(i) = f {
            self.impaired.insert(i);
        }
        match f {
            Fault::Net(n) => self.net = n,
            Fault::Partition(p) => {
                self.log
                    .push(format!("t={}ms partition {p:?}", self.now / MS));
                self.partition = p;
            }
            Fault::Crash(i) => self.crash(i),
            Fault::Restart(i) => {
                if self.nodes[i].life == Life::Crashed {
                    self.log
                        .push(format!("t={}ms restart node {i}", self.now / MS));
                    self.start_node(i);
                }
            }
            Fault::Pause(i) => self.nodes[i].paused = true,
            Fault::Resume(i) => {
                self.nodes[i].paused = false;
                self.start_service(i);
                if let Some(n) = self.nodes[i].node.as_mut() {
                    n.handle_timeout(Duration::from_micros(self.now));
                }
                self.kick(i);
            }
            Fault::Join(i) => {
                if self.nodes[i].life == Life::Absent {
                    self.log
                        .push(format!("t={}ms join node {i}", self.now / MS));
                    self.start_node(i);
                }
            }
            Fault::Leave(i) => {
                if self.nodes[i].life == Life::Up && self.nodes[i].leaving.is_none() {
                    self.log
                        .push(format!("t={}ms leave node {i}", self.now / MS));
                    // Graceful: stop taking writes, sync the journal, push, and wait (a
                    // bounded time) until a peer's digest shows it holds all our mutations.
                    self.nodes[i].leaving = Some(self.now + 5 * SEC);
                    self.commit_node(i);
                    self.kick(i);
                    self.fault_at(self.now + 20 * MS, Fault::LeaveCheck(i));
                }
            }
            Fault::LeaveCheck(i) => {
                let Some(deadline) = self.nodes[i].leaving else {
                    return;
                };
                let done = self.nodes[i].node.as_ref().is_none_or(|n| n.handoff_done());
                if !done && self.now < deadline {
                    self.fault_at(self.now + 20 * MS, Fault::LeaveCheck(i));
                    return;
                }
                if let Some(n) = self.nodes[i].node.as_mut() {
                    n.leave();
                }
                self.kick(i);
                let sn = &mut self.nodes[i];
                sn.node = None;
                sn.life = Life::Left;
                sn.leaving = None;
                sn.epoch += 1;
            }
            Fault::Service(i, s) => self.nodes[i].service = s,
        }
    }

    fn commit_node(&mut self, i: usize) {
        let sn = &mut self.nodes[i];
        sn.disk.synced = sn.disk.journal.len();
        if let Some(n) = sn.node.as_mut() {
            let c = n.table().counter();
            n.mark_durable(c);
        }
        for m in std::mem::take(&mut sn.pending_ack) {
            self.muts[m].acked = true;
        }
    }

    /// Whether every running node has the same digest.
    fn all_same(&self) -> bool {
        let mut first = None;
        for sn in &self.nodes {
            if let Some(n) = &sn.node {
                let d = n.table().digest();
                match &first {
                    None => first = Some(d),
                    Some(f) if *f != d => return false,
                    _ => {}
                }
            }
        }
        true
    }

    /// Runs the whole scenario and returns the oracle's report.
    pub fn run(self) -> oracle::Report {
        self.run_with_log().0
    }

    /// Runs the whole scenario; returns the report and the fault log.
    pub fn run_with_log(mut self) -> (oracle::Report, Vec<String>) {
        scenario::schedule(&mut self);
        let end = self.opts.duration;
        for i in 0..self.nodes.len() {
            if !self.opts.late_joiners.contains(&i) {
                self.start_node(i);
            }
        }
        let first_mut = self.opts.warmup;
        self.at(first_mut, Ev::Mutate);
        self.at(COMMIT_INTERVAL, Ev::Commit);
        if self.opts.checkpoints {
            self.at(SEC, Ev::Checkpoint);
        }
        self.at(self.work_end.max(self.last_heal), Ev::Probe);
        while let Some(std::cmp::Reverse((at, _, slot))) = self.queue.pop() {
            if at > end {
                break;
            }
            let Some(ev) = self.slab[slot as usize].take() else {
                continue;
            };
            self.free.push(slot);
            self.now = at;
            self.counters.events += 1;
            match ev {
                Ev::Deliver { to, from, bytes } => {
                    let sn = &mut self.nodes[to];
                    if sn.life != Life::Up {
                        continue;
                    }
                    let bytes = if to == 0 && self.opts.bug_ignore_removals {
                        strip_removals(bytes)
                    } else {
                        bytes
                    };
                    let sn = &mut self.nodes[to];
                    let swim = bytes.get(5) == Some(&0);
                    let q = if swim {
                        &mut sn.inbound_swim
                    } else {
                        &mut sn.inbound
                    };
                    if q.len() >= self.opts.inbound_cap {
                        self.counters.inbound_dropped += 1;
                        continue;
                    }
                    q.push_back((from, bytes));
                    self.start_service(to);
                }
                Ev::Served { node, epoch } => {
                    let sn = &mut self.nodes[node];
                    if sn.epoch != epoch {
                        continue;
                    }
                    sn.busy = false;
                    let Some((from, bytes)) = sn
                        .inbound_swim
                        .pop_front()
                        .or_else(|| sn.inbound.pop_front())
                    else {
                        continue;
                    };
                    let from_addr = self.nodes[from].addr;
                    if let Some(n) = self.nodes[node].node.as_mut() {
                        n.handle(Duration::from_micros(self.now), from_addr, &bytes);
                    }
                    self.kick(node);
                    self.start_service(node);
                }
                Ev::Timer { node, epoch } => {
                    let sn = &mut self.nodes[node];
                    if sn.epoch != epoch || sn.timer_at != Some(self.now) || sn.paused {
                        continue;
                    }
                    sn.timer_at = None;
                    if let Some(n) = sn.node.as_mut() {
                        n.handle_timeout(Duration::from_micros(self.now));
                    }
                    self.kick(node);
                }
                Ev::Mutate => {
                    if self.now < self.work_end {
                        self.mutate();
                        let mean = SEC as f64 / self.opts.rate;
                        let u = self.rand_f().max(1e-12);
                        let gap = (-u.ln() * mean) as Micros;
                        self.at(self.now + gap.max(1), Ev::Mutate);
                    }
                }
                Ev::Commit => {
                    for i in 0..self.nodes.len() {
                        let sn = &self.nodes[i];
                        if sn.life == Life::Up && !sn.paused && !sn.pending_ack.is_empty() {
                            self.commit_node(i);
                            self.kick(i);
                        }
                    }
                    self.at(self.now + COMMIT_INTERVAL, Ev::Commit);
                }
                Ev::Checkpoint => {
                    for sn in self.nodes.iter_mut() {
                        if let Some(n) = &sn.node {
                            // Atomic rewrite: the checkpoint holds the table (own mutations
                            // included), so the journal restarts empty.
                            if sn.disk.synced == sn.disk.journal.len() {
                                sn.disk.checkpoint = Some(n.table().clone());
                                sn.disk.journal.clear();
                                sn.disk.synced = 0;
                            }
                        }
                    }
                    self.at(self.now + SEC, Ev::Checkpoint);
                }
                Ev::Fault(f) => self.fault(f),
                Ev::Probe => {
                    if self.converged_at.is_none() {
                        if self.all_same() {
                            self.converged_at = Some(self.now);
                        } else {
                            self.at(self.now + 10 * MS, Ev::Probe);
                        }
                    }
                }
            }
        }
        self.now = end;
        let r = oracle::check(&self);
        (r, std::mem::take(&mut self.log))
    }

    /// Running nodes' tables, with their indices.
    pub fn live_tables(&self) -> Vec<(usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, sn)| sn.node.as_ref().map(|n| (i, n)))
            .collect()
    }

    /// Nodes in the cluster (configured).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Propagation latency of `m` to the nodes `to` (from its proposal to the last of them
    /// learning it), `None` if one of them never did.
    pub fn latency_of(&self, m: &Mutation, to: &[usize]) -> Option<Micros> {
        let mut last = m.at;
        for &i in to {
            let t = m.reached[i];
            if t == Micros::MAX {
                return None;
            }
            last = last.max(t);
        }
        Some(last - m.at)
    }
}
