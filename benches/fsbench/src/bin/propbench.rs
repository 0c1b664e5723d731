//! propbench: how long a file created through one WCFS node takes to be visible through all
//! the others, in a 5-node cluster of real `wcfs mount` processes on loopback, under 0, 100
//! and 1000 creates/s of background load (spread over the other nodes).
//!
//! All nodes share one RW directory (as they would share an NFS export) and one RO tree; each
//! has its own data directory, mount point and QUIC port, with mutual TLS from `wcfs ca`.
//! A probe creates `probe/…` through node 0 and polls `stat` through nodes 1–4 until all see
//! it: the file is on the shared RW branch at once, so a node shows it exactly when the table
//! change has arrived (and its kernel's negative entry was invalidated). Loads and probes run
//! in interleaved rounds. Network namespaces with netem delay are used where the kernel has
//! netem; the runner detects it and says so (this kernel has none).
//!
//! Run as root (mounts) through `benches/run.sh`; writes a Markdown fragment, the samples as
//! TSV and `propagation.png` (gnuplot).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const NODES: usize = 5;
const LOADS: [u64; 3] = [0, 100, 1000];
/// A probe that is not visible everywhere by then is a failure, not a slow sample.
const PROBE_DEADLINE: Duration = Duration::from_secs(30);
/// Untimed probes after the cluster formed, before the measured ones.
const WARMUP_PROBES: usize = 5;

struct Opts {
    wcfs: PathBuf,
    work: PathBuf,
    out: PathBuf,
    charts: Option<PathBuf>,
    rounds: usize,
    probes: usize,
}

fn parse() -> anyhow::Result<Opts> {
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut o = Opts {
        wcfs: exe_dir.join("wcfs"),
        work: PathBuf::from("/var/tmp/wcfs-bench/prop"),
        out: PathBuf::from("benches/results/propagation.md"),
        charts: None,
        rounds: 3,
        probes: 40,
    };
    let mut it = std::env::args_os().skip(1);
    let val = |it: &mut dyn Iterator<Item = OsString>, f: &str| -> anyhow::Result<OsString> {
        it.next().with_context(|| format!("{f} needs a value"))
    };
    while let Some(a) = it.next() {
        let a = a.to_string_lossy().into_owned();
        match a.as_str() {
            "--quick" => {
                o.rounds = 1;
                o.probes = 15;
            }
            "--wcfs" => o.wcfs = val(&mut it, &a)?.into(),
            "--work" => o.work = val(&mut it, &a)?.into(),
            "--out" => o.out = val(&mut it, &a)?.into(),
            "--charts" => o.charts = Some(val(&mut it, &a)?.into()),
            "--rounds" => o.rounds = val(&mut it, &a)?.to_string_lossy().parse()?,
            "--probes" => o.probes = val(&mut it, &a)?.to_string_lossy().parse()?,
            "-h" | "--help" => {
                println!(
                    "usage: propbench [--quick] [--rounds N=3] [--probes N=40] [--wcfs BIN] \
                     [--work DIR] [--out FILE.md] [--charts DIR]"
                );
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a}"),
        }
    }
    Ok(o)
}

fn is_mounted(p: &Path) -> bool {
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy();
    mi.lines().any(|l| l.split(' ').nth(4) == Some(&want))
}

/// The running nodes; stopped (SIGTERM, then SIGKILL and a lazy unmount) when dropped, even
/// when a measure failed.
struct Cluster {
    nodes: Vec<(Child, PathBuf)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (c, _) in &self.nodes {
            // SAFETY: plain kill of our own child; SIGTERM makes wcfs unmount itself.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for (c, mnt) in &mut self.nodes {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
            if is_mounted(mnt) {
                let _ = Command::new("umount").arg("-l").arg(&*mnt).status();
            }
        }
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn free_udp_port() -> anyhow::Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// Polls `f` every millisecond until it holds, or fails at `deadline`.
fn until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn start_cluster(o: &Opts) -> anyhow::Result<Cluster> {
    let w = &o.work;
    let _ = std::fs::remove_dir_all(w);
    let (ro, rw, certs) = (w.join("ro"), w.join("rw"), w.join("certs"));
    for d in [&ro, &rw] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(ro.join("index.php"), b"<?php echo 'hello';\n")?;
    run(Command::new(&o.wcfs)
        .args(["ca", "init", "--out"])
        .arg(&certs))?;
    let addrs: Vec<SocketAddr> = (0..NODES)
        .map(|_| free_udp_port())
        .collect::<Result<_, _>>()?;
    let mut cl = Cluster { nodes: Vec::new() };
    for (i, addr) in addrs.iter().enumerate() {
        let name = format!("n{i}");
        run(Command::new(&o.wcfs)
            .args(["ca", "issue", &name, "--ca-dir"])
            .arg(&certs)
            .arg("--out")
            .arg(&certs))?;
        let mnt = w.join(format!("mnt-{name}"));
        std::fs::create_dir_all(&mnt)?;
        // Every node joins through node 0; node 0 through node 1.
        let seed = if i == 0 { addrs[1] } else { addrs[0] };
        let child = Command::new(&o.wcfs)
            .arg("mount")
            .arg("--ro")
            .arg(&ro)
            .arg("--rw")
            .arg(&rw)
            .arg("--data")
            .arg(w.join(format!("data-{name}")))
            .args(["--listen", &addr.to_string(), "--seed", &seed.to_string()])
            .arg("--ca")
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join(format!("{name}.pem")))
            .arg("--key")
            .arg(certs.join(format!("{name}.key")))
            .arg(&mnt)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting wcfs mount")?;
        cl.nodes.push((child, mnt.clone()));
        until(
            &format!("{} to mount", mnt.display()),
            PROBE_DEADLINE,
            || is_mounted(&mnt),
        )?;
    }
    // The cluster is formed once a create through node 0 shows through every node.
    let mnts = cl.mounts();
    std::fs::create_dir(mnts[0].join("probe"))?;
    std::fs::create_dir(mnts[0].join("load"))?;
    until("the cluster to form", Duration::from_secs(60), || {
        mnts.iter()
            .all(|m| m.join("probe").exists() && m.join("load").exists())
    })?;
    Ok(cl)
}

impl Cluster {
    fn mounts(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| n.1.clone()).collect()
    }
}

/// Creates files through one node at `rate` per second until `stop`; counts them.
fn load(mnt: PathBuf, rate: f64, tag: String, stop: Arc<AtomicBool>, n: Arc<AtomicU64>) {
    if rate <= 0.0 {
        return;
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let p = mnt.join("load").join(format!("{tag}-{i}"));
        if std::fs::write(&p, b"l").is_ok() {
            n.fetch_add(1, Ordering::Relaxed);
        }
        i += 1;
        // Paced against the start, so a slow create is caught up on rather than lost.
        let next = start + period.mul_f64(i as f64);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
}

/// One probe: create through node 0, then the time until each other node sees the file.
fn probe(mnts: &[PathBuf], name: &str) -> anyhow::Result<Vec<Duration>> {
    let others = &mnts[1..];
    let t0 = Instant::now();
    std::fs::write(mnts[0].join("probe").join(name), b"p")?;
    let mut seen: Vec<Option<Duration>> = vec![None; others.len()];
    while seen.iter().any(Option::is_none) {
        for (k, m) in others.iter().enumerate() {
            if seen[k].is_none() && m.join("probe").join(name).symlink_metadata().is_ok() {
                seen[k] = Some(t0.elapsed());
            }
        }
        if t0.elapsed() > PROBE_DEADLINE {
            bail!("probe {name} not visible everywhere after {PROBE_DEADLINE:?}");
        }
        // Short enough for sub-millisecond resolution, long enough not to starve the nodes of
        // the box's two cores.
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(seen.into_iter().flatten().collect())
}

#[derive(Default)]
struct LoadResult {
    /// Per probe: time until the last node saw it (ms).
    all_ms: Vec<f64>,
    /// Per probe and node: time until that node saw it (ms).
    each_ms: Vec<f64>,
    achieved: Vec<f64>,
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)]
}

/// Whether this kernel can delay packets with netem (in a throwaway network namespace).
fn netem_check() -> String {
    let ns = "wcfsbench-netem-probe";
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
    let r = (|| -> anyhow::Result<()> {
        run(Command::new("ip").args(["netns", "add", ns]))?;
        run(Command::new("ip").args(["netns", "exec", ns, "ip", "link", "set", "lo", "up"]))?;
        run(Command::new("ip").args([
            "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
        ]))
    })();
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
    match r {
        Ok(()) => "netem works on this kernel, but the namespaced variant of this benchmark is \
                   not implemented yet: the figures below are loopback only"
            .into(),
        Err(e) => format!(
            "no netem on this kernel (`tc qdisc add … netem delay 1ms` in a network namespace \
             failed: {}), so the cluster runs on plain loopback only",
            format!("{e:#}")
                .rsplit("failed: ")
                .next()
                .unwrap_or("")
                .trim()
        ),
    }
}

fn main() -> anyhow::Result<()> {
    let o = parse()?;
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("propbench needs root (mounts)");
    }
    let netem = netem_check();
    eprintln!("{netem}");
    let t_form = Instant::now();
    let cl = start_cluster(&o)?;
    let formed = t_form.elapsed();
    eprintln!(
        "{NODES} nodes mounted and formed in {:.1} s",
        formed.as_secs_f64()
    );
    let mnts = cl.mounts();
    // A few untimed probes first: every node has dialled every other by then.
    for p in 0..WARMUP_PROBES {
        probe(&mnts, &format!("warmup-{p}")).context("warm-up probe")?;
    }
    let mut results: Vec<LoadResult> = LOADS.iter().map(|_| LoadResult::default()).collect();
    let t0 = Instant::now();
    for round in 0..o.rounds {
        for (li, &rate) in LOADS.iter().enumerate() {
            let stop = Arc::new(AtomicBool::new(false));
            let n = Arc::new(AtomicU64::new(0));
            // One loader thread per other node, each with its share of the rate: a single
            // thread cannot create 1000 files/s through FUSE on this box.
            let ths: Vec<_> = (1..NODES)
                .map(|k| {
                    let (m, s, n) = (mnts[k].clone(), stop.clone(), n.clone());
                    let tag = format!("r{round}-l{rate}-n{k}");
                    let share = rate as f64 / (NODES - 1) as f64;
                    std::thread::spawn(move || load(m, share, tag, s, n))
                })
                .collect();
            // Let the load reach its pace before probing.
            std::thread::sleep(Duration::from_millis(300));
            let (n0, ts) = (n.load(Ordering::Relaxed), Instant::now());
            let mut err = None;
            for p in 0..o.probes {
                match probe(&mnts, &format!("r{round}-l{rate}-{p}")) {
                    Ok(each) => {
                        let ms: Vec<f64> = each.iter().map(|d| d.as_secs_f64() * 1e3).collect();
                        let all = ms.iter().cloned().fold(0.0, f64::max);
                        results[li].all_ms.push(all);
                        results[li].each_ms.extend(ms);
                    }
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
                // Probes spaced out so that each one measures a fresh change.
                std::thread::sleep(Duration::from_millis(20));
            }
            let achieved =
                (n.load(Ordering::Relaxed) - n0) as f64 / ts.elapsed().as_secs_f64().max(1e-9);
            stop.store(true, Ordering::Relaxed);
            for th in ths {
                let _ = th.join();
            }
            if let Some(e) = err {
                return Err(e.context(format!("round {round}, load {rate}/s")));
            }
            results[li].achieved.push(achieved);
            let r = &results[li];
            eprintln!(
                "round {}/{} load {rate:>4}/s (achieved {achieved:.0}/s): all nodes p50 {:.2} ms \
                 p99 {:.2} ms max {:.2} ms",
                round + 1,
                o.rounds,
                pct(&r.all_ms, 50.0),
                pct(&r.all_ms, 99.0),
                pct(&r.all_ms, 100.0)
            );
        }
    }
    let total = t0.elapsed();
    drop(cl);
    let md = render(&o, &results, &netem, formed, total);
    if let Some(d) = o.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&o.out, &md)?;
    if let Some(dir) = &o.charts {
        charts(dir, &results)?;
    }
    std::io::stdout().write_all(md.as_bytes())?;
    eprintln!("wrote {}", o.out.display());
    Ok(())
}

fn render(
    o: &Opts,
    results: &[LoadResult],
    netem: &str,
    formed: Duration,
    total: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Propagation: create on one node → visible on all\n");
    let _ = writeln!(
        s,
        "{NODES} real `wcfs mount` processes on loopback (QUIC, mutual TLS), one shared RW \
         directory, each with its own `--data` directory. A probe creates a file through node 0 \
         and polls `stat` through nodes 1–{} every 0.2 ms until all of them see it; {} probes \
         per load level and round, {} round(s) interleaved over the load levels, 20 ms between \
         probes (after {WARMUP_PROBES} untimed ones once the cluster formed). Background load: creates through nodes 1–{} (a thread per node, an equal \
         share of the rate each; the achieved rate is shown). The cluster formed (first create visible everywhere) \
         {:.1} s after the first mount; {:.0} s of measuring. {netem}.\n",
        NODES - 1,
        o.probes,
        o.rounds,
        NODES - 1,
        formed.as_secs_f64(),
        total.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| background load (creates/s) | achieved (median) | visible on all: p50 (ms) | p99 (ms) \
         | max (ms) | per node: p50 (ms) | per node: p99 (ms) | probes |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (r, rate) in results.iter().zip(LOADS) {
        let _ = writeln!(
            s,
            "| {rate} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            pct(&r.achieved, 50.0),
            pct(&r.all_ms, 50.0),
            pct(&r.all_ms, 99.0),
            pct(&r.all_ms, 100.0),
            pct(&r.each_ms, 50.0),
            pct(&r.each_ms, 99.0),
            r.all_ms.len()
        );
    }
    s
}

fn charts(dir: &Path, results: &[LoadResult]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tsv = String::from("load\tprobe\tall_ms\n");
    let mut dat = String::from("load\tp50\tp99\tmax\n");
    for (r, rate) in results.iter().zip(LOADS) {
        for (i, x) in r.all_ms.iter().enumerate() {
            let _ = writeln!(tsv, "{rate}\t{i}\t{x:.4}");
        }
        let _ = writeln!(
            dat,
            "{rate}/s\t{:.4}\t{:.4}\t{:.4}",
            pct(&r.all_ms, 50.0),
            pct(&r.all_ms, 99.0),
            pct(&r.all_ms, 100.0)
        );
    }
    std::fs::write(dir.join("propagation-samples.tsv"), tsv)?;
    std::fs::write(dir.join("propagation.dat"), dat)?;
    let gp = format!(
        "set terminal pngcairo size 900,500 font ',10'\nset output 'propagation.png'\n\
         set datafile separator '\\t'\nset title \"Create through 1 node, visible through all \
         {} others ({NODES} nodes on loopback)\"\nset style data histogram\n\
         set style histogram clustered gap 1\nset style fill solid 0.8 border -1\n\
         set logscale y\nset ylabel 'ms (log scale)'\nset xlabel 'background creates/s'\n\
         set grid ytics\nset key top left\n\
         plot for [i=2:4] 'propagation.dat' using i:xtic(1) title columnheader(i)\n",
        NODES - 1
    );
    std::fs::write(dir.join("propagation.gp"), gp)?;
    let out = Command::new("gnuplot")
        .arg("propagation.gp")
        .current_dir(dir)
        .output()
        .context("running gnuplot (apt-get install gnuplot-nox)")?;
    if !out.status.success() {
        bail!(
            "gnuplot propagation.gp: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pct;

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 50.0), 51.0);
        assert_eq!(pct(&v, 99.0), 99.0);
        assert_eq!(pct(&v, 100.0), 100.0);
        assert!(pct(&[], 50.0).is_nan());
    }
}
