//! Prometheus metrics: every counter of a running node, rendered in the OpenMetrics text
//! format (which Prometheus scrapes natively) and served by a small HTTP/1.1 endpoint
//! (`GET /metrics`) on a local address.
//!
//! Nothing is registered up front: each scrape reads the runtime's counters and histograms
//! (and, if given, the filesystem's) through [`Sources`], so metrics cannot drift from what
//! `wcfs status` shows. The `prometheus-client` crate does the encoding (names, escaping of
//! label values, histogram buckets).
//!
//! Every metric is named `wcfs_*`; counters end in `_total`, durations are in seconds and
//! sizes in bytes. Per-peer series carry a `peer` label: the node name in the peer's
//! certificate (its address until a connection told us the name). Each metric's help text says
//! exactly what it counts.
//!
//! Wiring it into a node takes the runtime's handle and, where a filesystem is mounted, a
//! closure over its counters (this crate does not depend on `wcfs-fs`), e.g.:
//!
//! ```text
//! let stats = fs_stats.clone(); // Arc<wcfs_fs::stats::RwStats>
//! let fs: FsSource = Arc::new(move || {
//!     OpKind::ALL.iter().map(|&k| FsOpCount {
//!         op: k.name(),
//!         requests: counted(k).then(|| stats.requests(k)), // None where not counted
//!         rw_syscalls: stats.get(k),
//!     }).collect()
//! });
//! let server = metrics::serve(cfg.metrics.listen, Sources { runtime: rt.handle(), fs: Some(fs) })?;
//! ```

mod hist;
mod http;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

pub use hist::{BOUNDS_US, Histogram, HistogramSnapshot};
pub use http::{MetricsError, MetricsServer, ServerConfig};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::runtime::{Flow, RuntimeHandle};

/// One kind of filesystem operation's counters, as the filesystem reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsOpCount {
    /// The operation kind's name (`lookup`, `read`, …): the `op` label.
    pub op: &'static str,
    /// FUSE requests of this kind the daemon served, if the filesystem counts them for it.
    pub requests: Option<u64>,
    /// Syscalls made on the RW branch while serving requests of this kind.
    pub rw_syscalls: u64,
}

/// Reads the filesystem's counters at scrape time; must be cheap and must not block.
pub type FsSource = Arc<dyn Fn() -> Vec<FsOpCount> + Send + Sync>;

/// What a scrape reads.
#[derive(Clone)]
pub struct Sources {
    /// The node's runtime.
    pub runtime: RuntimeHandle,
    /// The mounted filesystem's counters, if this node mounts one.
    pub fs: Option<FsSource>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("fs", &self.fs.is_some())
            .finish_non_exhaustive()
    }
}

/// Starts serving `GET /metrics` on `addr` with the default [`ServerConfig`]. Must be called
/// within a tokio runtime. Bind a loopback or otherwise private address: the metrics are not
/// authenticated.
pub fn serve(addr: SocketAddr, sources: Sources) -> Result<MetricsServer, MetricsError> {
    http::serve(addr, sources, ServerConfig::default())
}

/// Like [`serve`], with explicit limits.
pub fn serve_with(
    addr: SocketAddr,
    sources: Sources,
    cfg: ServerConfig,
) -> Result<MetricsServer, MetricsError> {
    http::serve(addr, sources, cfg)
}

/// The HTTP `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders every metric in the OpenMetrics text format (ending with `# EOF`).
pub fn render(sources: &Sources) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SourcesCollector(sources.clone())));
    let mut out = String::with_capacity(16 << 10);
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        // Only a formatter error can fail, and writing to a String does not.
        out.clear();
        let _ = writeln!(out, "# EOF");
    }
    out
}

#[derive(Debug)]
struct SourcesCollector(Sources);

/// Label pairs of one series.
type Labels<'a> = Vec<(&'a str, &'a str)>;

/// Writes one metric family of `kind` (counter or gauge) with its series.
fn family<V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    series: &[(Labels<'_>, V)],
) -> Result<(), std::fmt::Error>
where
    V: prometheus_client::encoding::EncodeGaugeValue
        + prometheus_client::encoding::EncodeCounterValue,
{
    let mut m = enc.encode_descriptor(name, help, unit, kind)?;
    let put = |m: &mut MetricEncoder, v: &V| match kind {
        MetricType::Counter => m.encode_counter::<NoLabelSet, V, u64>(v, None),
        _ => m.encode_gauge(v),
    };
    for (labels, v) in series {
        // An empty label set would print as `name{}`.
        if labels.is_empty() {
            put(&mut m, v)?;
        } else {
            put(&mut m.encode_family(labels)?, v)?;
        }
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    family(enc, name, help, None, MetricType::Counter, &[(vec![], v)])
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: u64,
) -> Result<(), std::fmt::Error> {
    family(enc, name, help, unit, MetricType::Gauge, &[(vec![], v)])
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels<'_>, &HistogramSnapshot)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    let put = |m: &mut MetricEncoder, h: &HistogramSnapshot| {
        m.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)
    };
    for (labels, h) in series {
        if labels.is_empty() {
            put(&mut m, h)?;
        } else {
            put(&mut m.encode_family(labels)?, h)?;
        }
    }
    Ok(())
}

fn flow_name(f: Flow) -> &'static str {
    match f {
        Flow::Push => "push",
        Flow::AntiEntropy => "anti_entropy",
    }
}

impl Collector for SourcesCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rt = &self.0.runtime;
        let e = &mut enc;
        let (table, node, members) = {
            let id = rt.identity();
            let name = id.name.as_str().to_owned();
            let replica = format!("{:016x}", id.replica.0);
            let mut m = e.encode_descriptor(
                "wcfs_node",
                "This node: its name and replica id (value always 1).",
                None,
                MetricType::Info,
            )?;
            m.encode_info(&[("node", name.as_str()), ("replica", replica.as_str())])?;
            (
                rt.with_table(|t| t.stats()),
                rt.node_stats(),
                rt.members().len(),
            )
        };
        let stats = rt.stats();

        // The table.
        gauge(
            e,
            "wcfs_table_paths",
            "Paths with a live entry (Rw, Opaque or Whiteout) in the translation table.",
            None,
            table.live_paths as u64,
        )?;
        gauge(
            e,
            "wcfs_table_tombstones",
            "Paths whose entries were all removed but whose removal is not yet known to every \
             member (dropped by GC once it is).",
            None,
            table.tombstones as u64,
        )?;
        gauge(
            e,
            "wcfs_table_tree_nodes",
            "Nodes of the table's path tree, intermediate directories included.",
            None,
            table.nodes as u64,
        )?;
        gauge(
            e,
            "wcfs_table_cloud_dots",
            "Dots seen out of order (above the version vector): normally near 0, grows while \
             mutations are missing.",
            None,
            table.cloud_dots as u64,
        )?;
        gauge(
            e,
            "wcfs_table_heap",
            "Heap memory held by the table's own structures.",
            Some(&Unit::Bytes),
            table.heap_bytes as u64,
        )?;
        counter(
            e,
            "wcfs_proposals",
            "Local mutations proposed by the filesystem on this node.",
            stats.proposals,
        )?;
        counter(
            e,
            "wcfs_records_merged",
            "Remote records merged into the table (pushes, anti-entropy; duplicates included).",
            node.records_merged,
        )?;
        counter(
            e,
            "wcfs_gc_collections",
            "Garbage-collection passes that dropped causally stable tombstones.",
            node.paths_collected,
        )?;

        // Membership.
        family(
            e,
            "wcfs_members",
            "Other cluster members by SWIM state, as this node sees them (state=up: considered \
             alive; down members are forgotten, see wcfs_member_events_total).",
            None,
            MetricType::Gauge,
            &[(vec![("state", "up")], members as u64)],
        )?;
        family(
            e,
            "wcfs_member_events",
            "Membership changes seen by this node: event=up when a member joined or came back \
             under a new generation, event=down when one was declared failed or left.",
            None,
            MetricType::Counter,
            &[
                (vec![("event", "up")], stats.members_up),
                (vec![("event", "down")], stats.members_down),
            ],
        )?;

        // Records per peer.
        let mut recs = rt.peer_records();
        recs.sort_by(|a, b| a.peer.cmp(&b.peer));
        let per_flow = |pick: fn(&crate::runtime::RecordCounts) -> u64| {
            let mut v = Vec::new();
            for r in &recs {
                for (f, c) in [(Flow::Push, &r.push), (Flow::AntiEntropy, &r.anti_entropy)] {
                    v.push((vec![("peer", &*r.peer), ("flow", flow_name(f))], pick(c)));
                }
            }
            v
        };
        family(
            e,
            "wcfs_records_sent",
            "Records in sync messages handed to the transport for a peer (flow=push: eager \
             pushes of local mutations; flow=anti_entropy: repairs after a digest exchange). \
             Messages the transport drops later are in wcfs_peer_dropped_messages_total.",
            None,
            MetricType::Counter,
            &per_flow(|c| c.sent),
        )?;
        family(
            e,
            "wcfs_records_received",
            "Records in sync messages received from a peer, duplicates included.",
            None,
            MetricType::Counter,
            &per_flow(|c| c.received),
        )?;
        family(
            e,
            "wcfs_records_applied",
            "Records received from a peer that added something new to the table.",
            None,
            MetricType::Counter,
            &per_flow(|c| c.applied),
        )?;

        // Propagation.
        let lat = rt.latency();
        histogram(
            e,
            "wcfs_propagation_latency",
            "Per received sync message that added records: from the sender's wall clock when \
             it queued the message to this node's wall clock once the records were applied and \
             visible to readers (sender's transport queue + network + our inbound queue + \
             merge), by flow. Subject to the clock skew between the two nodes.",
            &[
                (vec![("flow", "push")], &lat.push),
                (vec![("flow", "anti_entropy")], &lat.anti_entropy),
            ],
        )?;
        counter(
            e,
            "wcfs_propagation_clock_ahead",
            "Propagation observations where the sender's clock was ahead of ours (recorded as 0: \
             a sign of clock skew).",
            stats.clock_ahead,
        )?;
        histogram(
            e,
            "wcfs_local_release_latency",
            "Per local mutation, on this node's monotonic clock: from the filesystem's propose \
             call until the mutation is durable in the journal and its push has been handed to \
             the transport for every live peer.",
            &[(vec![], &lat.local)],
        )?;

        // Transport, per peer.
        let mut peers: std::collections::BTreeMap<String, crate::transport::PeerStats> =
            Default::default();
        for p in rt.peer_stats() {
            let key = p
                .name
                .as_deref()
                .map_or_else(|| p.addr.to_string(), str::to_owned);
            match peers.get_mut(&key) {
                // The same node at another address (restarted elsewhere): add them up.
                Some(q) => {
                    q.queued_msgs += p.queued_msgs;
                    q.queued_bytes += p.queued_bytes;
                    q.sent += p.sent;
                    q.received += p.received;
                    q.dropped_queue_full += p.dropped_queue_full;
                    q.dropped_unreachable += p.dropped_unreachable;
                    q.dropped_wrong_peer += p.dropped_wrong_peer;
                }
                None => {
                    peers.insert(key, p);
                }
            }
        }
        let per_peer = |f: fn(&crate::transport::PeerStats) -> u64| {
            peers
                .iter()
                .map(|(k, p)| (vec![("peer", k.as_str())], f(p)))
                .collect::<Vec<_>>()
        };
        family(
            e,
            "wcfs_peer_queue_messages",
            "Messages waiting in the transport's outbound queues for a peer (datagrams and \
             streams).",
            None,
            MetricType::Gauge,
            &per_peer(|p| p.queued_msgs as u64),
        )?;
        family(
            e,
            "wcfs_peer_queue",
            "Bytes waiting in the transport's outbound queues for a peer.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            &per_peer(|p| p.queued_bytes as u64),
        )?;
        family(
            e,
            "wcfs_peer_messages_sent",
            "Messages (SWIM datagrams and sync streams) handed to a peer's QUIC connection.",
            None,
            MetricType::Counter,
            &per_peer(|p| p.sent),
        )?;
        family(
            e,
            "wcfs_peer_messages_received",
            "Messages received from a peer and delivered to the runtime.",
            None,
            MetricType::Counter,
            &per_peer(|p| p.received),
        )?;
        let mut drops = Vec::new();
        for (k, p) in &peers {
            for (why, n) in [
                ("queue_full", p.dropped_queue_full),
                ("unreachable", p.dropped_unreachable),
                ("wrong_peer", p.dropped_wrong_peer),
            ] {
                drops.push((vec![("peer", k.as_str()), ("reason", why)], n));
            }
        }
        family(
            e,
            "wcfs_peer_dropped_messages",
            "Outbound messages to a peer the transport dropped: reason=queue_full (its queue was \
             full: slow or paused peer), unreachable (dial failed, in backoff, or the connection \
             broke), wrong_peer (its certificate named another node than intended). \
             Anti-entropy repairs what was lost.",
            None,
            MetricType::Counter,
            &drops,
        )?;
        let t = rt.transport_stats();
        family(
            e,
            "wcfs_transport_dropped_messages",
            "Messages the transport dropped regardless of peer: reason=too_large (over the size \
             limit, either way), inbound_full (a received datagram found the inbound queue full).",
            None,
            MetricType::Counter,
            &[
                (vec![("reason", "too_large")], t.dropped_too_large),
                (vec![("reason", "inbound_full")], t.dropped_inbound),
            ],
        )?;
        counter(
            e,
            "wcfs_transport_dials",
            "QUIC connections this node attempted to open.",
            t.dials,
        )?;
        counter(
            e,
            "wcfs_transport_handshakes_failed",
            "QUIC handshakes that failed, either way (bad or missing certificate, timeout, wrong \
             protocol).",
            t.handshakes_failed,
        )?;
        counter(
            e,
            "wcfs_sends_refused",
            "Messages the transport refused at once (peer queue full, too large, too many \
             peers).",
            stats.sends_dropped,
        )?;
        counter(
            e,
            "wcfs_pushes_dropped",
            "Eager pushes the sync engine dropped because a peer's queue in the engine was full.",
            node.pushes_dropped,
        )?;
        counter(
            e,
            "wcfs_bad_messages",
            "Received messages refused as malformed or of another format version.",
            node.bad_messages,
        )?;
        counter(
            e,
            "wcfs_impostor_dropped_messages",
            "Received messages dropped because they claimed to come from another node than the \
             one the connection's certificate names.",
            stats.impostor_dropped,
        )?;

        // Snapshots and the journal.
        counter(
            e,
            "wcfs_snapshots_sent",
            "Snapshot transfers this node started to peers that were below its GC floor.",
            node.snapshots_sent,
        )?;
        counter(
            e,
            "wcfs_snapshot_resets",
            "Times this node replaced its table with a peer's snapshot.",
            node.resets,
        )?;
        counter(
            e,
            "wcfs_snapshots_refused",
            "Snapshots refused because they were behind this node's GC floor.",
            node.snapshots_refused,
        )?;
        counter(
            e,
            "wcfs_snapshots_written",
            "Table snapshots written to the data directory (the journal shrinks after each).",
            rt.snapshots_written(),
        )?;
        let j = rt.journal_stats();
        gauge(
            e,
            "wcfs_journal_size",
            "Size of the journal file, header included.",
            Some(&Unit::Bytes),
            j.bytes,
        )?;
        gauge(
            e,
            "wcfs_journal_unsynced",
            "Journal bytes written but not yet fsynced.",
            Some(&Unit::Bytes),
            j.bytes.saturating_sub(j.synced_bytes),
        )?;
        counter(
            e,
            "wcfs_journal_appends",
            "Entries appended to the journal since the node started.",
            j.appends,
        )?;
        counter(
            e,
            "wcfs_journal_fsyncs",
            "Journal fsyncs since the node started (concurrent appends share one).",
            j.fsyncs,
        )?;
        histogram(
            e,
            "wcfs_journal_fsync_duration",
            "Duration of each journal fsync that made appends durable.",
            &[(vec![], &rt.journal_fsync_latency())],
        )?;
        counter(
            e,
            "wcfs_remote_records_journaled",
            "Remote records written to this node's journal.",
            stats.remote_logged,
        )?;
        counter(
            e,
            "wcfs_remote_records_not_journaled",
            "Remote records not journaled (queue full or append failed): a restart fetches them \
             again by anti-entropy.",
            stats.remote_log_dropped,
        )?;

        // Cache invalidation.
        family(
            e,
            "wcfs_cache_invalidations",
            "Kernel cache invalidations requested because of remote changes: scope=path for one \
             path whose resolution changed, scope=all when the whole cache must go (table \
             replaced by a snapshot, or change events lost).",
            None,
            MetricType::Counter,
            &[
                (vec![("scope", "path")], stats.invalidated_paths),
                (vec![("scope", "all")], stats.invalidated_all),
            ],
        )?;

        // The filesystem.
        if let Some(fs) = &self.0.fs {
            let ops = fs();
            let requests: Vec<_> = ops
                .iter()
                .filter_map(|o| o.requests.map(|n| (vec![("op", o.op)], n)))
                .collect();
            family(
                e,
                "wcfs_fuse_requests",
                "FUSE requests the daemon served, by operation (only the operations the \
                 filesystem counts).",
                None,
                MetricType::Counter,
                &requests,
            )?;
            let syscalls: Vec<_> = ops
                .iter()
                .map(|o| (vec![("op", o.op)], o.rw_syscalls))
                .collect();
            family(
                e,
                "wcfs_rw_syscalls",
                "Syscalls made on the RW branch (NFS in production: each is a round trip) while \
                 serving FUSE requests, by operation.",
                None,
                MetricType::Counter,
                &syscalls,
            )?;
        }
        Ok(())
    }
}
