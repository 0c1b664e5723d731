//! Scenarios: the faults, the workload's length and the node model of each named run.

use crate::{Fault, MS, Micros, NetModel, Partition, SEC, Sim};

/// A named scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// No faults.
    Steady,
    /// 20% packet loss (plus duplication and reordering) while the workload runs.
    Lossy,
    /// The cluster splits in two for a while, writes on both sides, then heals.
    PartitionHeal,
    /// One half cannot reach the other (the other way works).
    Oneway,
    /// One node serves at 5% of the others' rate.
    Overload,
    /// Nodes crash (losing volatile state and unsynced journal) and restart.
    CrashRestart,
    /// Joins, leaves and restarts.
    Churn,
    /// A long run: tombstones and dot clouds must stay bounded.
    Gc,
    /// 1000 nodes by default.
    Big,
}

impl Scenario {
    /// Every scenario, for tests.
    pub const ALL: [Scenario; 9] = [
        Scenario::Steady,
        Scenario::Lossy,
        Scenario::PartitionHeal,
        Scenario::Oneway,
        Scenario::Overload,
        Scenario::CrashRestart,
        Scenario::Churn,
        Scenario::Gc,
        Scenario::Big,
    ];

    /// Parses a CLI name.
    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Lossy => "lossy",
            Scenario::PartitionHeal => "partition-heal",
            Scenario::Oneway => "oneway",
            Scenario::Overload => "overload",
            Scenario::CrashRestart => "crash-restart",
            Scenario::Churn => "churn",
            Scenario::Gc => "gc",
            Scenario::Big => "big",
        }
    }
}

/// Options of one run.
#[derive(Clone, Debug)]
pub struct Opts {
    /// The scenario.
    pub scenario: Scenario,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// The seed: the same seed replays the same run.
    pub seed: u64,
    /// Simulated length, µs.
    pub duration: Micros,
    /// Mutations per second, cluster-wide.
    pub rate: f64,
    /// Mean anti-entropy interval, µs.
    pub ae_interval: Micros,
    /// Base service time per message, µs (plus the same per 4 KiB).
    pub service: Micros,
    /// Inbound queue bound per node, messages.
    pub inbound_cap: usize,
    /// Turn anti-entropy off (to show the checker catches what that breaks).
    pub no_anti_entropy: bool,
    /// Whether nodes write table checkpoints (crash scenarios).
    pub checkpoints: bool,
    /// Nodes that start later (join).
    pub late_joiners: Vec<usize>,
    /// When the workload starts (membership forms first), µs.
    pub warmup: Micros,
    /// Sync messages are lost like datagrams instead of retransmitted (QUIC off): only
    /// anti-entropy repairs them.
    pub raw_stream_loss: bool,
    /// Whether nodes ack pushes and send them again until acked (`Config::push_acks`); the
    /// CLI turns it on with `--raw-loss`, since then nothing else retransmits.
    pub push_acks: bool,
    /// How long a member declared down still holds GC back, µs.
    pub gc_grace: Micros,
    /// A planted bug: node 0's merge ignores removals (tombstone records are stripped from
    /// what it receives). The checker must catch it.
    pub bug_ignore_removals: bool,
}

impl Opts {
    /// The defaults for `scenario` with `nodes` nodes and `seed`; `duration_s` overrides the
    /// scenario's length.
    pub fn new(scenario: Scenario, nodes: usize, seed: u64, duration_s: Option<f64>) -> Opts {
        let default_s = match scenario {
            Scenario::Gc => 60.0,
            Scenario::PartitionHeal | Scenario::Oneway | Scenario::Churn => 16.0,
            Scenario::CrashRestart => 14.0,
            Scenario::Big => 12.0,
            _ => 10.0,
        };
        let secs = duration_s.unwrap_or(default_s).max(6.0);
        Opts {
            scenario,
            nodes: nodes.max(2),
            seed,
            duration: (secs * SEC as f64) as Micros,
            rate: match scenario {
                Scenario::Overload => 3000.0,
                Scenario::Big => 100.0,
                _ => 200.0,
            },
            ae_interval: 200 * MS,
            service: 20,
            inbound_cap: 2000,
            no_anti_entropy: false,
            checkpoints: matches!(scenario, Scenario::CrashRestart | Scenario::Churn),
            late_joiners: Vec::new(),
            bug_ignore_removals: false,
            raw_stream_loss: false,
            push_acks: false,
            warmup: if nodes > 200 { 5 * SEC } else { SEC },
            // Crash-restart uses a short grace so a long outage exercises snapshot resets.
            gc_grace: if scenario == Scenario::CrashRestart {
                3 * SEC
            } else {
                60 * SEC
            },
        }
    }
}

/// Time after the workload stops and the last fault heals that the cluster gets to settle.
pub const SETTLE: Micros = 4 * SEC;

/// Schedules the scenario's faults and sets when the workload ends.
pub fn schedule(sim: &mut Sim) {
    let o = sim.opts.clone();
    let n = o.nodes;
    let work_end = o.duration - SETTLE;
    sim.work_end = work_end;
    sim.last_heal = work_end;
    let start = 3 * SEC / 2;
    let mut rng = wcfs_core::node::SimpleRng::new(o.seed ^ 0xFA17);
    let mut between = |lo: Micros, hi: Micros| lo + rng.below(hi.saturating_sub(lo) + 1);
    match o.scenario {
        Scenario::Steady | Scenario::Gc | Scenario::Big => {}
        Scenario::Lossy => {
            let lossy = NetModel {
                loss: 0.2,
                dup: 0.02,
                reorder: 0.05,
                raw_stream_loss: o.raw_stream_loss,
                ..NetModel::default()
            };
            sim.fault_at(start, Fault::Net(lossy));
            sim.fault_at(work_end, Fault::Net(NetModel::default()));
        }
        Scenario::PartitionHeal => {
            sim.fault_at(start, Fault::Partition(Partition::Split));
            sim.fault_at(work_end, Fault::Partition(Partition::None));
        }
        Scenario::Oneway => {
            sim.fault_at(start, Fault::Partition(Partition::OneWay));
            sim.fault_at(work_end, Fault::Partition(Partition::None));
        }
        Scenario::Overload => {
            sim.fault_at(0, Fault::Service(n - 1, o.service * 20));
        }
        Scenario::CrashRestart => {
            // One long outage: down for longer than the GC grace, so it must take a snapshot.
            let long = n / 2;
            sim.fault_at(start, Fault::Crash(long));
            sim.fault_at(
                (start + o.gc_grace + 5 * SEC).min(work_end),
                Fault::Restart(long),
            );
            let crashes = (n / 10).max(2);
            for _ in 0..crashes {
                let mut i = between(0, n as Micros - 1) as usize;
                if i == long {
                    i = (i + 1) % n;
                }
                let t = between(start, work_end - 2 * SEC);
                sim.fault_at(t, Fault::Crash(i));
                sim.fault_at(t + between(300 * MS, 2 * SEC), Fault::Restart(i));
            }
        }
        Scenario::Churn => {
            let k = (n / 10).max(1);
            let mut late = Vec::new();
            for j in 0..k {
                // Late joiners are the last indices (never seeds).
                let i = n - 1 - j;
                late.push(i);
                sim.fault_at(between(start, work_end - SEC), Fault::Join(i));
            }
            for j in 0..k {
                let i = 3 + j;
                if i >= n - k {
                    break;
                }
                let t = between(start, work_end - 2 * SEC);
                if j % 2 == 0 {
                    sim.fault_at(t, Fault::Leave(i));
                } else {
                    sim.fault_at(t, Fault::Crash(i));
                    sim.fault_at(t + between(300 * MS, 2 * SEC), Fault::Restart(i));
                    sim.fault_at(t + 50 * MS, Fault::Pause(i - 1));
                    sim.fault_at(t + 800 * MS, Fault::Resume(i - 1));
                }
            }
            sim.opts.late_joiners = late;
        }
    }
}
