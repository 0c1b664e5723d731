//! `sim --scenario NAME --nodes N --seed S [--duration SECS] [--json]`: runs one simulation,
//! prints its report and exits non-zero if the oracle found a violation. The last line is
//! always the `result:` line. Wall-clock figures go to stderr so stdout is reproducible.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use sim::{Opts, Scenario, Sim};

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulator of a WCFS cluster's sync engine")]
struct Cli {
    /// steady, lossy, partition-heal, oneway, overload, crash-restart, churn, gc, big.
    #[arg(long)]
    scenario: String,
    /// Nodes (default 100; 1000 for big).
    #[arg(long)]
    nodes: Option<usize>,
    /// Seed: the same seed replays the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated seconds (default per scenario).
    #[arg(long)]
    duration: Option<f64>,
    /// Mutations per second, cluster-wide (default per scenario).
    #[arg(long)]
    rate: Option<f64>,
    /// Mean anti-entropy interval, ms (default 200).
    #[arg(long)]
    ae_ms: Option<u64>,
    /// In lossy runs, lose sync messages like datagrams (no QUIC retransmission); pushes are
    /// then acked and sent again until acked, unless --no-push-acks.
    #[arg(long)]
    raw_loss: bool,
    /// With --raw-loss: no push acks (anti-entropy alone repairs).
    #[arg(long)]
    no_push_acks: bool,
    /// Disable anti-entropy (the checker must then report the damage).
    #[arg(long)]
    no_anti_entropy: bool,
    /// Also print a JSON summary line.
    #[arg(long)]
    json: bool,
}

/// CPU seconds this process has used (user + system), from `/proc/self/stat`; `None` where
/// that is unavailable. The machine may be shared, so events per CPU second is the honest
/// speed figure, not events per wall second.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux ABI in use.
    Some(ticks / 100.0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(scenario) = Scenario::parse(&cli.scenario) else {
        eprintln!("unknown scenario {:?}", cli.scenario);
        return ExitCode::from(2);
    };
    let nodes = cli
        .nodes
        .unwrap_or(if scenario == Scenario::Big { 1000 } else { 100 });
    let mut opts = Opts::new(scenario, nodes, cli.seed, cli.duration);
    if let Some(r) = cli.rate {
        opts.rate = r;
    }
    opts.no_anti_entropy = cli.no_anti_entropy;
    opts.raw_stream_loss = cli.raw_loss;
    opts.push_acks = cli.raw_loss && !cli.no_push_acks;
    if let Some(ms) = cli.ae_ms {
        opts.ae_interval = ms.max(1) * 1000;
    }
    let started = Instant::now();
    let cpu0 = cpu_seconds();
    let sim = Sim::new(opts);
    let (report, log) = sim.run_with_log();
    let wall = started.elapsed().as_secs_f64();
    let cpu = match (cpu0, cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => wall,
    };
    for l in &log {
        println!("{l}");
    }
    for l in &report.lines {
        println!("{l}");
    }
    if let Some(first) = report.violations.first() {
        println!("VIOLATION (seed {}): {first}", cli.seed);
        for v in &report.violations[1..] {
            println!("also: {v}");
        }
    }
    if cli.json {
        println!(
            "{{\"scenario\":\"{}\",\"seed\":{},\"nodes\":{},\"mutations\":{},\"converged\":{},\"violations\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"converge_ms\":{},\"bytes_per_mutation_per_node\":{:.1},\"msgs_per_mutation_per_node\":{:.3},\"events\":{}}}",
            scenario.name(),
            cli.seed,
            report.nodes,
            report.mutations,
            report.converged,
            report.violations.len(),
            report.p50_ms,
            report.p99_ms,
            report.max_ms,
            report
                .converge_ms
                .map_or("null".into(), |x| format!("{x:.1}")),
            report.bytes_per_mutation_per_node,
            report.msgs_per_mutation_per_node,
            report.events
        );
    }
    eprintln!(
        "wall={wall:.2}s cpu={cpu:.2}s events={} events_per_sec={:.0} events_per_cpu_sec={:.0}",
        report.events,
        report.events as f64 / wall.max(1e-9),
        report.events as f64 / cpu.max(1e-9)
    );
    println!("{}", report.result_line());
    if report.violations.is_empty() && report.converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
