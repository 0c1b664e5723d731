//! The oracle: what must hold after a run.
//!
//! - Convergence: every running node shows the same live entries (path → winning kind).
//! - Against the reference table (every proposed record merged, never collected): no
//!   acknowledged mutation lost (the reference shows an entry the nodes lack) and no removed
//!   path back (the nodes show an entry the reference does not). A mutation that a crash
//!   destroyed before it was synced is not in the reference: it was never acknowledged and
//!   never left its node (nodes ship only durable mutations).
//! - Metadata bounded: no dot cloud left, tombstones and indexed dots collected.

use std::collections::BTreeMap;

use wcfs_core::{Kind, Table};

use crate::{Micros, Sim};

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct Report {
    /// Human-readable lines (deterministic).
    pub lines: Vec<String>,
    /// Violations, first first.
    pub violations: Vec<String>,
    /// Whether all live nodes converged.
    pub converged: bool,
    /// Nodes configured.
    pub nodes: usize,
    /// Mutations proposed.
    pub mutations: usize,
    /// Propagation latency percentiles, ms.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub max_ms: f64,
    /// Sync bytes sent per mutation per node.
    pub bytes_per_mutation_per_node: f64,
    /// Sync messages sent per mutation per node.
    pub msgs_per_mutation_per_node: f64,
    /// Time from the last heal (or the end of the workload) to identical digests, ms.
    pub converge_ms: Option<f64>,
    /// Simulator events processed.
    pub events: u64,
}

impl Report {
    /// The closing line.
    pub fn result_line(&self) -> String {
        format!(
            "result: converged={} violations={} nodes={} mutations={} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} bytes_per_mutation_per_node={:.1} msgs_per_mutation_per_node={:.3}",
            self.converged,
            self.violations.len(),
            self.nodes,
            self.mutations,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.bytes_per_mutation_per_node,
            self.msgs_per_mutation_per_node
        )
    }
}

fn live_map(t: &Table) -> BTreeMap<String, Kind> {
    t.records()
        .filter_map(|r| {
            r.live()
                .map(|(_, k)| k)
                .min()
                .map(|k| (r.path.to_string(), k))
        })
        .collect()
}

fn pct(sorted: &[Micros], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// Checks a finished run.
pub fn check(sim: &Sim) -> Report {
    let mut v: Vec<String> = Vec::new();
    let live = sim.live_tables();
    let live_idx: Vec<usize> = live.iter().map(|(i, _)| *i).collect();
    let maps: Vec<(usize, BTreeMap<String, Kind>)> = live
        .iter()
        .map(|(i, n)| (*i, live_map(n.table())))
        .collect();
    let first_mut = |p: &str| {
        let all: Vec<String> = sim
            .muts
            .iter()
            .filter(|m| m.path.to_string() == p)
            .take(6)
            .map(|m| {
                format!(
                    "t={:.3}ms node {} {:?} dot {:?}:{} acked={}",
                    m.at as f64 / 1000.0,
                    m.origin,
                    m.op,
                    m.dot.replica,
                    m.dot.seq,
                    m.acked
                )
            })
            .collect();
        format!(" (mutations, first first: {})", all.join("; "))
    };
    let mut converged = sim.converged_at.is_some();
    if let Some((i0, m0)) = maps.first() {
        for (i, m) in &maps[1..] {
            if m != m0 {
                converged = false;
                let diff = m0
                    .iter()
                    .find(|(p, k)| m.get(*p) != Some(k))
                    .map(|(p, k)| {
                        format!(
                            "{p}: node {i0} {k:?}, node {i} {:?}{}",
                            m.get(p),
                            first_mut(p)
                        )
                    })
                    .or_else(|| {
                        m.iter()
                            .find(|(p, _)| !m0.contains_key(*p))
                            .map(|(p, k)| format!("{p}: node {i0} None, node {i} {k:?}"))
                    })
                    .unwrap_or_default();
                let st = live
                    .iter()
                    .find(|(k, _)| k == i)
                    .map(|(_, n)| format!("{:?} {:?}", n.stats(), n.table().stats()))
                    .unwrap_or_default();
                v.push(format!(
                    "not converged: node {i} differs from node {i0} at {diff} [node {i}: {st}]"
                ));
                break;
            }
        }
    }
    // Against the reference.
    // The reference: every proposed record that survived merged, nothing ever collected. A
    // mutation lost in a crash before it was synced never left its node, so its seq may be
    // reused: it is left out.
    let mut reference = Table::new(wcfs_core::ReplicaId(0), 0);
    for m in sim.muts.iter().filter(|m| !m.lost) {
        let _ = reference.merge(&m.rec);
    }
    let truth = live_map(&reference);
    if let Some((i, m)) = maps.first() {
        for (p, k) in &truth {
            if m.get(p) != Some(k) {
                v.push(format!(
                    "lost: {p} should be {k:?}, node {i} has {:?}{}",
                    m.get(p),
                    first_mut(p)
                ));
                break;
            }
        }
        for (p, k) in m {
            if !truth.contains_key(p) {
                v.push(format!(
                    "came back: {p} was removed, node {i} shows {k:?}{}",
                    first_mut(p)
                ));
                break;
            }
        }
    }
    // Metadata bounds.
    // GC needs every member's version vector; anti-entropy visits members in turn (and
    // learns a vector only when digests match or the peer pulls), so a tombstone lives a few
    // times members / fanout rounds after the last member saw it. Allow five times that,
    // plus the settle time: beyond it metadata is growing, not lagging.
    let n = sim.node_count() as u64;
    let window = 5 * (n / 2 + 2) * sim.opts.ae_interval + crate::scenario::SETTLE + 2_000_000;
    let end = sim.opts.duration;
    // A member that went down holds GC back (with its last vector) for the grace period.
    let mut since = end.saturating_sub(window);
    if sim
        .disruptions
        .iter()
        .any(|t| *t + sim.opts.gc_grace + 10_000_000 >= end)
    {
        // Before the disruption GC was still warming up (members' vectors arrive in turn).
        since = 0;
    }
    let forgets = sim
        .muts
        .iter()
        .filter(|m| m.op == wcfs_core::Op::Forget && m.at >= since)
        .count();
    let tomb_bound = 64 + forgets;
    let mut max_tomb = 0;
    let mut max_cloud = 0;
    let mut max_indexed = 0;
    for (i, n) in &live {
        let s = n.table().stats();
        max_tomb = max_tomb.max(s.tombstones);
        max_cloud = max_cloud.max(s.cloud_dots);
        max_indexed = max_indexed.max(s.indexed_dots);
        if converged && s.cloud_dots > 0 {
            v.push(format!(
                "unbounded: node {i} keeps {} cloud dots",
                s.cloud_dots
            ));
        }
        if s.tombstones > tomb_bound {
            v.push(format!(
                "unbounded: node {i} keeps {} tombstones (bound {tomb_bound})",
                s.tombstones
            ));
        }
        if n.queued_bytes() > 0 {
            v.push(format!(
                "unbounded: node {i} has {} bytes queued",
                n.queued_bytes()
            ));
        }
    }
    // Latency: propose at the origin to applied at the last running node.
    let mut lat: Vec<Micros> = Vec::new();
    let mut unreached = 0;
    for m in sim.muts.iter().filter(|m| !m.lost) {
        match sim.latency_of(m, &live_idx) {
            Some(l) => lat.push(l),
            None => unreached += 1,
        }
    }
    lat.sort_unstable();
    let healthy: Vec<usize> = live_idx
        .iter()
        .copied()
        .filter(|i| !sim.impaired.contains(i))
        .collect();
    let mut hlat: Vec<Micros> = sim
        .muts
        .iter()
        .filter(|m| !m.lost && !sim.impaired.contains(&m.origin))
        .filter_map(|m| sim.latency_of(m, &healthy))
        .collect();
    hlat.sort_unstable();
    // How the slow deliveries arrived: pairs (mutation, node) that took over 20 ms, and of
    // those, the ones whose node the origin did not list as a member (it could not push).
    let (mut slow, mut slow_unknown, mut unknown) = (0u64, 0u64, 0u64);
    for m in sim.muts.iter().filter(|m| !m.lost) {
        unknown += m.unknown_at_origin.len() as u64;
        for (j, &t) in m.reached.iter().enumerate() {
            if t != Micros::MAX && t - m.at > 20_000 {
                slow += 1;
                if m.unknown_at_origin.contains(&j) {
                    slow_unknown += 1;
                }
            }
        }
    }
    let nodes = sim.node_count();
    let muts = sim.muts.len().max(1) as f64;
    let c = &sim.counters;
    let converge_ms = sim
        .converged_at
        .map(|t| t.saturating_sub(sim.work_end.max(sim.last_heal)) as f64 / 1000.0);
    let lines = vec![
        format!(
            "scenario={} seed={} nodes={} live={} events={} crashes={} resets={}",
            sim.opts.scenario.name(),
            sim.opts.seed,
            nodes,
            live.len(),
            c.events,
            c.crashes,
            c.resets
        ),
        format!(
            "mutations={} acked={} lost_unacked={} unreached_or_superseded={}",
            sim.muts.len(),
            sim.muts.iter().filter(|m| m.acked).count(),
            sim.muts.iter().filter(|m| m.lost).count(),
            unreached
        ),
        format!(
            "net_dropped={} oversize_dropped={} inbound_dropped={} sync_bytes={} sync_msgs={} swim_bytes={} member_list_bytes={}",
            c.net_dropped,
            c.oversize_dropped,
            c.inbound_dropped,
            c.sync_bytes,
            c.sync_msgs,
            c.swim_bytes,
            c.member_list_bytes
        ),
        format!(
            "deliveries_over_20ms={slow} of_which_unknown_to_origin={slow_unknown} pairs_unknown_to_origin={unknown}"
        ),
        format!(
            "healthy_nodes={} healthy_p50_ms={:.3} healthy_p99_ms={:.3} healthy_max_ms={:.3}",
            healthy.len(),
            pct(&hlat, 0.5),
            pct(&hlat, 0.99),
            hlat.last().map_or(0.0, |x| *x as f64 / 1000.0)
        ),
        format!(
            "converge_ms_after_heal={} max_tombstones={max_tomb} max_cloud={max_cloud} max_indexed={max_indexed} live_paths={}",
            converge_ms.map_or("never".to_string(), |x| format!("{x:.1}")),
            truth.len()
        ),
    ];
    Report {
        lines,
        converged,
        nodes,
        mutations: sim.muts.len(),
        p50_ms: pct(&lat, 0.5),
        p99_ms: pct(&lat, 0.99),
        max_ms: lat.last().map_or(0.0, |x| *x as f64 / 1000.0),
        bytes_per_mutation_per_node: c.sync_bytes as f64 / muts / nodes as f64,
        msgs_per_mutation_per_node: c.sync_msgs as f64 / muts / nodes as f64,
        converge_ms,
        events: c.events,
        violations: v,
    }
}
