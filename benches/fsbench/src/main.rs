//! fsbench: WCFS's FUSE union side by side with its anchors, in one interleaved run.
//!
//! Run as root through `benches/run-fs-bench.sh` (which installs the packages and builds the
//! binaries); see `benches/README.md`. It copies the RO tree, mounts every target over it
//! (bare directory, overlayfs, mergerfs default/tuned, unionfs-fuse, WCFS; each FUSE union
//! with a local RW branch and with a slowfs RW branch), measures every target once per round
//! in turn, unmounts everything, and writes a Markdown report.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod charts;
mod web;

/// What the runner is told.
struct Opts {
    rounds: usize,
    quick: bool,
    work: PathBuf,
    src: PathBuf,
    out: PathBuf,
    wcfs: PathBuf,
    slowfs: PathBuf,
    big_mib: u64,
    delay_us: u64,
    only: Option<Vec<String>>,
    /// Files in the generated scale tree (`zz-scale/` of the RO tree); 0 = none.
    scale: u64,
    /// Small files created per round by the create+write+close measure.
    creates: usize,
    /// Run the nginx + php-fpm workload (`web.rs`) for this many seconds per target and round.
    web_secs: Option<u64>,
    /// Where to write every sample (TSV) and the PNG charts; none = no charts.
    charts: Option<PathBuf>,
}

fn parse() -> anyhow::Result<Opts> {
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut o = Opts {
        rounds: 3,
        quick: false,
        work: PathBuf::from("/var/tmp/wcfs-fsbench"),
        src: PathBuf::from("/usr/share/wordpress"),
        out: PathBuf::from("benches/results/fs-REPORT.md"),
        wcfs: exe_dir.join("wcfs"),
        slowfs: exe_dir.join("slowfs"),
        big_mib: 1024,
        delay_us: 500,
        only: None,
        scale: 0,
        creates: 200,
        web_secs: None,
        charts: None,
    };
    let mut it = std::env::args_os().skip(1);
    let val = |it: &mut dyn Iterator<Item = OsString>, f: &str| -> anyhow::Result<OsString> {
        it.next().with_context(|| format!("{f} needs a value"))
    };
    while let Some(a) = it.next() {
        let a = a.to_string_lossy().into_owned();
        match a.as_str() {
            "--quick" => o.quick = true,
            "--rounds" => o.rounds = val(&mut it, &a)?.to_string_lossy().parse()?,
            "--work" => o.work = val(&mut it, &a)?.into(),
            "--src" => o.src = val(&mut it, &a)?.into(),
            "--out" => o.out = val(&mut it, &a)?.into(),
            "--wcfs" => o.wcfs = val(&mut it, &a)?.into(),
            "--slowfs" => o.slowfs = val(&mut it, &a)?.into(),
            "--big-mib" => o.big_mib = val(&mut it, &a)?.to_string_lossy().parse()?,
            "--delay-us" => o.delay_us = val(&mut it, &a)?.to_string_lossy().parse()?,
            "--scale" => o.scale = val(&mut it, &a)?.to_string_lossy().parse()?,
            "--creates" => o.creates = val(&mut it, &a)?.to_string_lossy().parse()?,
            "--web-secs" => o.web_secs = Some(val(&mut it, &a)?.to_string_lossy().parse()?),
            "--charts" => o.charts = Some(val(&mut it, &a)?.into()),
            "--only" => {
                o.only = Some(
                    val(&mut it, &a)?
                        .to_string_lossy()
                        .split(',')
                        .map(str::to_owned)
                        .collect(),
                )
            }
            "-h" | "--help" => {
                println!(
                    "usage: fsbench [--quick] [--rounds N=3] [--work DIR] [--src DIR] [--out FILE] \
                     [--wcfs BIN] [--slowfs BIN] [--big-mib N=1024] [--delay-us N=500] [--only a,b] \
                     [--scale FILES=0] [--creates N=200] [--web-secs S] [--charts DIR]"
                );
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a}"),
        }
    }
    if o.quick {
        o.rounds = 1;
        o.big_mib = o.big_mib.min(256);
    }
    Ok(o)
}

fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_mounted(p: &Path) -> bool {
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy();
    mi.lines().any(|l| l.split(' ').nth(4) == Some(&want))
}

fn wait_mounted(p: &Path, child: Option<&mut Child>) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut child = child;
    while t.elapsed() < Duration::from_secs(20) {
        if is_mounted(p) {
            return Ok(());
        }
        if let Some(c) = child.as_deref_mut()
            && let Some(st) = c.try_wait()?
        {
            bail!("mount process for {} exited: {st}", p.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{} did not mount within 20 s", p.display())
}

fn umount(p: &Path) {
    if is_mounted(p) {
        let _ = Command::new("umount").arg(p).status();
        if is_mounted(p) {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

enum Undo {
    Umount(PathBuf),
    Kill(Child),
}

/// Mounts and processes to undo, newest first, even on error: a union is unmounted and its
/// daemon stopped before the slowfs below it (whose mount the daemon keeps busy).
#[derive(Default)]
struct Cleanup(Vec<Undo>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        while let Some(u) = self.0.pop() {
            match u {
                Undo::Umount(m) => umount(&m),
                Undo::Kill(mut c) => {
                    // SAFETY: plain kill of our own child; SIGTERM lets it unmount cleanly.
                    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_secs(5) {
                        if let Ok(Some(_)) = c.try_wait() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Bare,
    Overlay,
    MergerDefault,
    MergerTuned,
    Unionfs,
    Wcfs,
    /// `wcfs mount --fast-open`: opens and closes without the daemon, locks per node.
    WcfsFast,
}

struct Target {
    name: String,
    kind: Kind,
    slow: bool,
    /// Where the union is seen.
    root: PathBuf,
    /// The slowfs mount whose counters belong to this target.
    slow_mnt: Option<PathBuf>,
    /// Requests that reading the counters itself costs (the kernel revalidates the slowfs
    /// root on the way to the stats file), subtracted from every difference.
    probe_cost: u64,
}

const MERGER_TUNED: &str = "cache.files=auto-full,cache.entry=60,cache.attr=60,\
cache.negative_entry=60,cache.readdir=true,cache.statfs=60,cache.symlinks=true,\
dropcacheonclose=false,threads=4";

fn target_name(kind: Kind, slow: bool) -> String {
    let base = match kind {
        Kind::Bare => "bare".to_string(),
        Kind::Overlay => "overlayfs".to_string(),
        Kind::MergerDefault => "mergerfs".to_string(),
        Kind::MergerTuned => "mergerfs-tuned".to_string(),
        Kind::Unionfs => "unionfs-fuse".to_string(),
        Kind::Wcfs => "wcfs".to_string(),
        Kind::WcfsFast => "wcfs-fast".to_string(),
    };
    base + if slow { "/slow" } else { "" }
}

fn setup_target(
    o: &Opts,
    ro: &Path,
    kind: Kind,
    slow: bool,
    cl: &mut Cleanup,
) -> anyhow::Result<Target> {
    let name = target_name(kind, slow);
    if kind == Kind::Bare {
        return Ok(Target {
            name,
            kind,
            slow,
            root: ro.to_path_buf(),
            slow_mnt: None,
            probe_cost: 0,
        });
    }
    let tag = name.replace('/', "-");
    let base = o.work.join("t").join(&tag);
    let _ = std::fs::remove_dir_all(&base);
    let rw_local = base.join("rw");
    let mnt = base.join("mnt");
    std::fs::create_dir_all(&rw_local)?;
    std::fs::create_dir_all(&mnt)?;
    let (rw, slow_mnt) = if slow {
        let sm = base.join("slow");
        std::fs::create_dir_all(&sm)?;
        let mut c = Command::new(&o.slowfs)
            .arg("--delay-us")
            .arg(o.delay_us.to_string())
            .arg(&rw_local)
            .arg(&sm)
            .stderr(Stdio::null())
            .spawn()
            .context("starting slowfs")?;
        wait_mounted(&sm, Some(&mut c))?;
        cl.0.push(Undo::Kill(c));
        cl.0.push(Undo::Umount(sm.clone()));
        (sm.clone(), Some(sm))
    } else {
        (rw_local.clone(), None)
    };
    let branches = format!("{}=RW:{}=RO", rw.display(), ro.display());
    let mut daemon = None;
    match kind {
        Kind::Bare => unreachable!(),
        Kind::Overlay => {
            let upper = rw.join("upper");
            let work = rw.join("work");
            std::fs::create_dir_all(&upper)?;
            std::fs::create_dir_all(&work)?;
            sh(Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    ro.display(),
                    upper.display(),
                    work.display()
                ))
                .arg(&mnt))?;
        }
        Kind::MergerDefault => {
            sh(Command::new("mergerfs")
                .args(["-o", "allow_other"])
                .arg(&branches)
                .arg(&mnt))?;
        }
        Kind::MergerTuned => {
            sh(Command::new("mergerfs")
                .arg("-o")
                .arg(format!("allow_other,{MERGER_TUNED}"))
                .arg(&branches)
                .arg(&mnt))?;
        }
        Kind::Unionfs => {
            sh(Command::new("unionfs")
                .args(["-o", "cow,allow_other"])
                .arg(&branches)
                .arg(&mnt))?;
        }
        Kind::Wcfs | Kind::WcfsFast => {
            let mut c = Command::new(&o.wcfs);
            c.arg("mount");
            if kind == Kind::WcfsFast {
                c.arg("--fast-open");
            }
            let mut c = c
                .arg("--ro")
                .arg(ro)
                .arg("--rw")
                .arg(&rw)
                .arg(&mnt)
                .env("RUST_LOG", "warn")
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting wcfs")?;
            wait_mounted(&mnt, Some(&mut c))?;
            // Undone first: SIGTERM makes wcfs unmount itself.
            daemon = Some(c);
        }
    }
    wait_mounted(&mnt, None)?;
    cl.0.push(Undo::Umount(mnt.clone()));
    if let Some(c) = daemon {
        cl.0.push(Undo::Kill(c));
    }
    let mut t = Target {
        name,
        kind,
        slow,
        root: mnt,
        slow_mnt,
        probe_cost: 0,
    };
    if let (Some(a), Some(b)) = (slow_counter(&t), slow_counter(&t)) {
        t.probe_cost = b.saturating_sub(a);
    }
    Ok(t)
}

/// The RO tree's content, relative paths, as listed from the bare copy.
struct Tree {
    php: Vec<PathBuf>,
    /// Every non-directory (files and symlinks).
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    big: PathBuf,
    /// An evenly spread sample of the generated scale tree's files (empty without `--scale`).
    scale_sample: Vec<PathBuf>,
}

/// How many files of the scale tree the scale measures touch: enough for a stable per-op
/// figure, few enough to finish in seconds.
const SCALE_SAMPLE: u64 = 1000;
/// Every how-many-th file of that sample the `/slow` targets stat: a deep path costs
/// unionfs-fuse ~50 ms per cold stat over the slow branch, 1000 of them per round would
/// dominate the whole run. The subset is spread the same way, so per-op figures compare.
const SCALE_SLOW_STRIDE: usize = 5;

/// Top-level entries the runner adds to the RO tree (big file, scale tree, web site) or
/// creates through the unions; the WordPress measures skip them.
fn is_ours(rel: &Path) -> bool {
    rel.components()
        .next()
        .is_some_and(|c| c.as_os_str().to_string_lossy().starts_with("zz-"))
}

/// Generates `n` small files under `ro/zz-scale/` with web-like paths (uploads by date, cache
/// shards, plugin assets: `wcfs_core::webgen`), once; returns an evenly spread sample.
fn prepare_scale(ro: &Path, n: u64) -> anyhow::Result<Vec<PathBuf>> {
    let paths = wcfs_core::webgen::WebPaths::new(0x5ca1e);
    let base = PathBuf::from("zz-scale");
    let stamp = ro.join(format!("zz-scale.{n}.done"));
    if !stamp.exists() {
        let t = Instant::now();
        let _ = std::fs::remove_dir_all(ro.join(&base));
        for i in 0..n {
            let p = ro.join(&base).join(paths.path(i));
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(&p, format!("scale file {i}\n"))?;
        }
        std::fs::write(&stamp, b"")?;
        eprintln!(
            "generated {n} files under {} in {:.1} s",
            ro.join(&base).display(),
            t.elapsed().as_secs_f64()
        );
    }
    let step = (n / SCALE_SAMPLE).max(1);
    Ok((0..n)
        .step_by(step as usize)
        .map(|i| base.join(paths.path(i)))
        .collect())
}

fn walk(root: &Path, rel: &Path, t: &mut Tree) -> anyhow::Result<()> {
    t.dirs.push(rel.to_path_buf());
    let mut ents: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    ents.sort_by_key(|e| e.file_name());
    for e in ents {
        let r = rel.join(e.file_name());
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(root, &r, t)?;
        } else {
            if ft.is_file() && r.extension().is_some_and(|x| x == "php") {
                t.php.push(r.clone());
            }
            t.files.push(r);
        }
    }
    Ok(())
}

/// `walk` of the WordPress part only: the runner's own `zz-*` entries are not descended.
fn walk_skipping_ours(ro: &Path, t: &mut Tree) -> anyhow::Result<()> {
    t.dirs.push(PathBuf::new());
    let mut ents: Vec<_> = std::fs::read_dir(ro)?.collect::<Result<_, _>>()?;
    ents.sort_by_key(|e| e.file_name());
    for e in ents {
        let r = PathBuf::from(e.file_name());
        if is_ours(&r) {
            continue;
        }
        if e.file_type()?.is_dir() {
            walk(ro, &r, t)?;
        } else {
            if r.extension().is_some_and(|x| x == "php") && e.file_type()?.is_file() {
                t.php.push(r.clone());
            }
            t.files.push(r);
        }
    }
    Ok(())
}

fn prepare_ro(o: &Opts) -> anyhow::Result<(PathBuf, Tree)> {
    let ro = o.work.join("ro");
    let stamp = o.work.join("ro.done");
    if !stamp.exists() {
        let _ = std::fs::remove_dir_all(&ro);
        std::fs::create_dir_all(&ro)?;
        sh(Command::new("cp").arg("-a").arg(o.src.join(".")).arg(&ro))?;
        std::fs::write(&stamp, b"")?;
    }
    // The big file lives in its own directory of the RO tree, so the tree's file lists skip it.
    let bigdir = ro.join("zz-bigfile");
    std::fs::create_dir_all(&bigdir)?;
    let big = bigdir.join("big.bin");
    let want = o.big_mib << 20;
    if std::fs::metadata(&big).map(|m| m.len()).unwrap_or(0) != want {
        let mut f = File::create(&big)?;
        let mut block = vec![0u8; 1 << 20];
        for i in 0..o.big_mib {
            // Not all zeros: no filesystem may shortcut it.
            block[..8].copy_from_slice(&i.to_le_bytes());
            f.write_all(&block)?;
        }
        f.sync_all()?;
    }
    let mut t = Tree {
        php: Vec::new(),
        files: Vec::new(),
        dirs: Vec::new(),
        big: PathBuf::from("zz-bigfile/big.bin"),
        scale_sample: Vec::new(),
    };
    if o.scale > 0 {
        t.scale_sample = prepare_scale(&ro, o.scale)?;
    }
    if o.web_secs.is_some() {
        web::generate_site(&ro)?;
    }
    walk_skipping_ours(&ro, &mut t)?;
    Ok((ro, t))
}

fn drop_caches() -> anyhow::Result<()> {
    // SAFETY: plain syscall.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", b"3").context("drop_caches (needs root)")
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Measure {
    ColdStat,
    WarmStat,
    WarmMiss,
    WarmOpenRead,
    WarmReaddir,
    SeqReadCold,
    SeqReadWarm,
    ColdOpenRead,
    CreateSmall,
    ScaleStatCold,
    ScaleStatWarm,
    WebRps,
    WebP99,
}

impl Measure {
    /// Issue 4's measures, in the order of its table.
    const ALL: [Measure; 7] = [
        Measure::WarmOpenRead,
        Measure::ColdStat,
        Measure::WarmStat,
        Measure::WarmMiss,
        Measure::WarmReaddir,
        Measure::SeqReadCold,
        Measure::SeqReadWarm,
    ];
    /// Issue 7's additions: cold reads, writes, scale.
    const MORE: [Measure; 4] = [
        Measure::ColdOpenRead,
        Measure::CreateSmall,
        Measure::ScaleStatCold,
        Measure::ScaleStatWarm,
    ];
    /// The web workload.
    const WEB: [Measure; 2] = [Measure::WebRps, Measure::WebP99];
    /// A short name for data files and charts.
    fn key(self) -> &'static str {
        match self {
            Measure::ColdStat => "stat-cold",
            Measure::WarmStat => "stat-warm",
            Measure::WarmMiss => "miss-warm",
            Measure::WarmOpenRead => "open-read-warm",
            Measure::WarmReaddir => "readdir-warm",
            Measure::SeqReadCold => "seq-read-cold",
            Measure::SeqReadWarm => "seq-read-warm",
            Measure::ColdOpenRead => "open-read-cold",
            Measure::CreateSmall => "create-1k",
            Measure::ScaleStatCold => "scale-stat-cold",
            Measure::ScaleStatWarm => "scale-stat-warm",
            Measure::WebRps => "web-req-s",
            Measure::WebP99 => "web-p99-ms",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Measure::ColdOpenRead => "cold open+read+close (µs/.php)",
            Measure::CreateSmall => "create+write 1 KiB+close (µs/file)",
            Measure::ScaleStatCold => "100k tree: cold stat (µs/file)",
            Measure::ScaleStatWarm => "100k tree: warm stat (µs/file)",
            Measure::WebRps => "web: requests/s",
            Measure::WebP99 => "web: p99 latency (ms)",
            Measure::ColdStat => "cold stat (µs/file)",
            Measure::WarmStat => "warm stat (µs/file)",
            Measure::WarmMiss => "warm miss (µs/stat)",
            Measure::WarmOpenRead => "warm open+read+close (µs/.php)",
            Measure::WarmReaddir => "warm readdir (µs/dir)",
            Measure::SeqReadCold => "seq read 1 file cold (MB/s)",
            Measure::SeqReadWarm => "seq read 1 file warm (MB/s)",
        }
    }
    fn is_throughput(self) -> bool {
        matches!(
            self,
            Measure::SeqReadCold | Measure::SeqReadWarm | Measure::WebRps
        )
    }
    /// The issue's target, as a ratio to bare (time ratio ≤, or throughput ratio ≥).
    fn target(self) -> &'static str {
        match self {
            Measure::ColdStat => "≤ 3×",
            Measure::WarmStat | Measure::WarmMiss => "≤ 1.3×",
            Measure::WarmOpenRead | Measure::WarmReaddir => "≤ 2×",
            Measure::SeqReadCold | Measure::SeqReadWarm => "≥ 0.9× (throughput)",
            _ => "—",
        }
    }
    fn target_ok(self, ratio: f64) -> bool {
        match self {
            Measure::ColdStat => ratio <= 3.0,
            Measure::WarmStat | Measure::WarmMiss => ratio <= 1.3,
            Measure::WarmOpenRead | Measure::WarmReaddir => ratio <= 2.0,
            Measure::SeqReadCold | Measure::SeqReadWarm => ratio >= 0.9,
            _ => true,
        }
    }
}

fn stat_all(root: &Path, paths: &[PathBuf], expect_ok: bool) -> anyhow::Result<usize> {
    let mut n = 0;
    for p in paths {
        let r = std::fs::symlink_metadata(root.join(p));
        if r.is_ok() != expect_ok {
            bail!("stat {}: unexpected {:?}", root.join(p).display(), r.err());
        }
        n += 1;
    }
    Ok(n)
}

fn open_read_all(root: &Path, paths: &[PathBuf], buf: &mut Vec<u8>) -> anyhow::Result<usize> {
    let mut bytes = 0;
    for p in paths {
        buf.clear();
        let mut f = File::open(root.join(p)).with_context(|| format!("open {}", p.display()))?;
        bytes += f.read_to_end(buf)?;
    }
    Ok(bytes)
}

fn readdir_all(root: &Path, dirs: &[PathBuf]) -> anyhow::Result<usize> {
    let mut n = 0;
    for d in dirs {
        for e in std::fs::read_dir(root.join(d))? {
            e?;
            n += 1;
        }
    }
    Ok(n)
}

fn seq_read(path: &Path) -> anyhow::Result<u64> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    Ok(n)
}

fn slow_counter(t: &Target) -> Option<u64> {
    let m = t.slow_mnt.as_ref()?;
    let s = std::fs::read_to_string(m.join(".slowfs-stats")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("metadata ")?.trim().parse().ok())
}

/// One sample: the value (µs per op, or MB/s), and RW metadata requests per op (slow targets).
#[derive(Clone, Copy, Debug)]
struct Sample {
    value: f64,
    rw_per_op: Option<f64>,
}

fn timed(
    t: &Target,
    ops: usize,
    f: impl FnOnce() -> anyhow::Result<usize>,
) -> anyhow::Result<Sample> {
    let before = slow_counter(t);
    let start = Instant::now();
    let n = f()?;
    let el = start.elapsed();
    let after = slow_counter(t);
    debug_assert!(n > 0);
    let rw = match (before, after) {
        (Some(b), Some(a)) => {
            Some(a.saturating_sub(b).saturating_sub(t.probe_cost) as f64 / ops as f64)
        }
        _ => None,
    };
    Ok(Sample {
        value: el.as_secs_f64() * 1e6 / ops as f64,
        rw_per_op: rw,
    })
}

/// Creates `n` files of 1 KiB in `dir` (write, close), like uploads or cache entries.
fn create_small(dir: &Path, n: usize) -> anyhow::Result<usize> {
    let block = [b'x'; 1024];
    for i in 0..n {
        let p = dir.join(format!("f{i:05}.txt"));
        let mut f = File::create(&p).with_context(|| format!("create {}", p.display()))?;
        f.write_all(&block)?;
    }
    Ok(n)
}

/// The issue 7 additions to a round: cold open+read, small creates, the scale tree.
fn run_round_more(
    t: &Target,
    tree: &Tree,
    round: usize,
    creates: usize,
    out: &mut BTreeMap<(String, Measure), Vec<Sample>>,
) -> anyhow::Result<()> {
    let r = &t.root;
    let mut put = |m: Measure, s: Sample| out.entry((t.name.clone(), m)).or_default().push(s);
    let mut buf = Vec::with_capacity(1 << 20);
    drop_caches()?;
    let s = timed(t, tree.php.len(), || open_read_all(r, &tree.php, &mut buf))?;
    put(Measure::ColdOpenRead, s);
    if creates > 0 {
        // A fresh directory per round at the root (every union places it on the RW branch:
        // the root exists there), removed untimed afterwards.
        let d = r.join(format!("zz-create-{round}"));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).with_context(|| format!("mkdir {}", d.display()))?;
        let s = timed(t, creates, || create_small(&d, creates))?;
        put(Measure::CreateSmall, s);
        std::fs::remove_dir_all(&d).with_context(|| format!("rm -r {}", d.display()))?;
    }
    if !tree.scale_sample.is_empty() {
        let stride = if t.slow { SCALE_SLOW_STRIDE } else { 1 };
        let sample: Vec<PathBuf> = tree.scale_sample.iter().step_by(stride).cloned().collect();
        let n = sample.len();
        drop_caches()?;
        let s = timed(t, n, || stat_all(r, &sample, true))?;
        put(Measure::ScaleStatCold, s);
        let s = timed(t, n, || stat_all(r, &sample, true))?;
        put(Measure::ScaleStatWarm, s);
    }
    Ok(())
}

fn run_round(
    t: &Target,
    tree: &Tree,
    misses: &[PathBuf],
    big: bool,
    out: &mut BTreeMap<(String, Measure), Vec<Sample>>,
) -> anyhow::Result<()> {
    let r = &t.root;
    let mut put = |m: Measure, s: Sample| out.entry((t.name.clone(), m)).or_default().push(s);
    drop_caches()?;
    let s = timed(t, tree.files.len(), || stat_all(r, &tree.files, true))?;
    put(Measure::ColdStat, s);
    let s = timed(t, tree.files.len(), || stat_all(r, &tree.files, true))?;
    put(Measure::WarmStat, s);
    let mut buf = Vec::with_capacity(1 << 20);
    open_read_all(r, &tree.php, &mut buf)?;
    let s = timed(t, tree.php.len(), || open_read_all(r, &tree.php, &mut buf))?;
    put(Measure::WarmOpenRead, s);
    stat_all(r, misses, false)?;
    let s = timed(t, misses.len(), || stat_all(r, misses, false))?;
    put(Measure::WarmMiss, s);
    readdir_all(r, &tree.dirs)?;
    let s = timed(t, tree.dirs.len(), || readdir_all(r, &tree.dirs))?;
    put(Measure::WarmReaddir, s);
    if big {
        let p = r.join(&tree.big);
        drop_caches()?;
        for m in [Measure::SeqReadCold, Measure::SeqReadWarm] {
            let start = Instant::now();
            let n = seq_read(&p)?;
            let mbs = n as f64 / 1e6 / start.elapsed().as_secs_f64();
            put(
                m,
                Sample {
                    value: mbs,
                    rw_per_op: None,
                },
            );
        }
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt_val(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

fn main() -> anyhow::Result<()> {
    let o = parse()?;
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("fsbench needs root (mounts, drop_caches)");
    }
    std::fs::create_dir_all(&o.work)?;
    let (ro, tree) = prepare_ro(&o)?;
    let misses: Vec<PathBuf> = tree
        .php
        .iter()
        .map(|p| {
            let mut s = p.clone().into_os_string();
            s.push(".nope");
            PathBuf::from(s)
        })
        .collect();
    eprintln!(
        "RO tree: {} files ({} .php), {} dirs; big file {} MiB",
        tree.files.len(),
        tree.php.len(),
        tree.dirs.len(),
        o.big_mib
    );
    let mut plan = vec![(Kind::Bare, false), (Kind::Overlay, false)];
    for k in [
        Kind::MergerDefault,
        Kind::MergerTuned,
        Kind::Unionfs,
        Kind::Wcfs,
        Kind::WcfsFast,
    ] {
        plan.push((k, false));
        plan.push((k, true));
    }
    let mut cl = Cleanup::default();
    let mut targets = Vec::new();
    for (k, slow) in plan {
        let name = target_name(k, slow);
        if let Some(only) = &o.only
            && k != Kind::Bare
            && !only.contains(&name)
        {
            continue;
        }
        let t = setup_target(&o, &ro, k, slow, &mut cl)?;
        eprintln!("mounted {} at {}", t.name, t.root.display());
        targets.push(t);
    }
    let web = match o.web_secs {
        Some(_) => {
            let w: Vec<&Target> = targets.iter().filter(|t| web::wants(t)).collect();
            let w = web::Web::start(&o.work, &w, &mut cl)?;
            eprintln!("nginx + php-fpm serve every target's page");
            Some(w)
        }
        None => None,
    };
    let mut samples: BTreeMap<(String, Measure), Vec<Sample>> = BTreeMap::new();
    let t0 = Instant::now();
    for round in 0..o.rounds {
        for t in &targets {
            let ts = Instant::now();
            // The data path of the big file never touches the RW branch: the slow variants
            // would measure the same thing again.
            run_round(t, &tree, &misses, !t.slow, &mut samples)
                .with_context(|| format!("round {round} on {}", t.name))?;
            run_round_more(t, &tree, round, o.creates, &mut samples)
                .with_context(|| format!("round {round} on {}", t.name))?;
            if let (Some(w), Some(secs)) = (&web, o.web_secs)
                && let Some((rps, p99)) = w
                    .measure(t, secs)
                    .with_context(|| format!("web, round {round} on {}", t.name))?
            {
                samples
                    .entry((t.name.clone(), Measure::WebRps))
                    .or_default()
                    .push(rps);
                samples
                    .entry((t.name.clone(), Measure::WebP99))
                    .or_default()
                    .push(p99);
            }
            eprintln!(
                "round {}/{} {:<22} {:>6.1} s",
                round + 1,
                o.rounds,
                t.name,
                ts.elapsed().as_secs_f64()
            );
        }
    }
    let total = t0.elapsed();
    drop(cl);
    let report = render(&o, &targets, &tree, &samples, total);
    if let Some(d) = o.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    if let Some(dir) = &o.charts {
        let names: Vec<(String, bool)> = targets.iter().map(|t| (t.name.clone(), t.slow)).collect();
        charts::write(dir, &names, &samples)?;
    }
    std::fs::write(&o.out, &report)?;
    println!("{report}");
    eprintln!("wrote {}", o.out.display());
    Ok(())
}

fn render(
    o: &Opts,
    targets: &[Target],
    tree: &Tree,
    samples: &BTreeMap<(String, Measure), Vec<Sample>>,
    total: Duration,
) -> String {
    let med = |name: &str, m: Measure| -> Option<(f64, f64, f64)> {
        let v = samples.get(&(name.to_string(), m))?;
        let mut xs: Vec<f64> = v.iter().map(|s| s.value).collect();
        let lo = xs.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        Some((median(&mut xs), lo, hi))
    };
    let ratio = |name: &str, m: Measure| -> Option<f64> {
        let (b, ..) = med("bare", m)?;
        let (x, ..) = med(name, m)?;
        Some(x / b)
    };
    let mut s = String::new();
    let w = |s: &mut String, t: String| {
        s.push_str(&t);
        s.push('\n');
    };
    w(&mut s, "# WCFS FUSE union vs. its anchors\n".into());
    w(
        &mut s,
        format!(
            "Generated by `benches/run-fs-bench.sh{}` ({} round(s), interleaved: every target \
             is measured once per round, in turn; {:.0} s of measuring).\n",
            if o.quick { " --quick" } else { "" },
            o.rounds,
            total.as_secs_f64()
        ),
    );
    let uname = version("uname", "-r");
    w(&mut s, "## Setup\n".into());
    w(
        &mut s,
        format!(
            "- Kernel {uname}, {} CPUs; {}; {}; wcfs {}.",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            version("mergerfs", "--version"),
            version("unionfs", "--version"),
            version(&o.wcfs.to_string_lossy(), "--version")
        ),
    );
    w(
        &mut s,
        format!(
            "- RO tree: a copy of `{}` (Debian's `wordpress`): {} files and symlinks, {} of \
             them `.php`, {} directories, plus one {} MiB file in its own directory for the \
             sequential read.",
            o.src.display(),
            tree.files.len(),
            tree.php.len(),
            tree.dirs.len(),
            o.big_mib
        ),
    );
    w(
        &mut s,
        format!(
            "- RW branch: `local` = an empty directory on the same ext4; `/slow` = the same \
             behind slowfs (`benches/fsbench/src/bin/slowfs.rs`): a FUSE passthrough that \
             sleeps {} µs on every metadata request, entry/attr TTL 0 (NFS with \
             `noac,lookupcache=none`), and counts requests. overlayfs runs with the local RW \
             branch only: it cannot take a FUSE upper layer (no tmpfile/trusted xattrs/\
             RENAME_WHITEOUT there).",
            o.delay_us
        ),
    );
    w(
        &mut s,
        format!(
            "- mergerfs default: `-o allow_other`; tuned: `-o allow_other,{MERGER_TUNED}` \
             (2.33 has no FUSE passthrough). unionfs-fuse: `-o cow,allow_other`. WCFS: \
             `wcfs mount --ro RO --rw RW MNT` (defaults); wcfs-fast: the same with `--fast-open` \
             (opens and closes without the daemon; locks per node, no passthrough)."
        ),
    );
    w(
        &mut s,
        "- Measures (one thread, like one PHP request): cold stat = `lstat` of every file \
         right after `echo 3 > /proc/sys/vm/drop_caches`; warm stat = the same again; warm \
         open+read+close of every `.php` after one untimed pass; warm miss = `lstat` of \
         `<each .php>.nope` (absent, PHP include-path probing) after one untimed pass; warm \
         readdir = list every directory (names and types, no stat) after one untimed pass; \
         sequential read = the big file with 1 MiB reads, cold (after drop_caches) then warm. \
         Values are per operation (µs) or MB/s; ratio = target / bare (for MB/s, ≥ 1 is \
         better).\n"
            .into(),
    );
    w(&mut s, "## Medians (ratio to bare)\n".into());
    let mut hdr = "| target |".to_string();
    let mut sep = "|---|".to_string();
    for m in Measure::ALL {
        hdr += &format!(" {} |", m.label());
        sep += "---:|";
    }
    w(&mut s, hdr.clone());
    w(&mut s, sep.clone());
    for t in targets {
        let mut row = format!("| {} |", t.name);
        for m in Measure::ALL {
            match (med(&t.name, m), ratio(&t.name, m)) {
                (Some((x, ..)), Some(r)) => row += &format!(" {} ({:.2}×) |", fmt_val(x), r),
                _ => row += " — |",
            }
        }
        w(&mut s, row);
    }
    w(&mut s, "\n## Spread (min–max over rounds)\n".into());
    w(&mut s, hdr);
    w(&mut s, sep);
    for t in targets {
        let mut row = format!("| {} |", t.name);
        for m in Measure::ALL {
            match med(&t.name, m) {
                Some((_, lo, hi)) => row += &format!(" {}–{} |", fmt_val(lo), fmt_val(hi)),
                None => row += " — |",
            }
        }
        w(&mut s, row);
    }
    w(
        &mut s,
        "\n## RW-branch metadata requests per operation on RO content (slowfs counters, median)\n"
            .into(),
    );
    let rwm = [
        Measure::WarmOpenRead,
        Measure::ColdStat,
        Measure::WarmStat,
        Measure::WarmMiss,
        Measure::WarmReaddir,
    ];
    let mut hdr = "| target |".to_string();
    let mut sep = "|---|".to_string();
    for m in rwm {
        hdr += &format!(" {} |", m.label().split(" (").next().unwrap_or(""));
        sep += "---:|";
    }
    w(&mut s, hdr);
    w(&mut s, sep);
    for t in targets.iter().filter(|t| t.slow) {
        let mut row = format!("| {} |", t.name);
        for m in rwm {
            let mut v: Vec<f64> = samples
                .get(&(t.name.clone(), m))
                .map(|v| v.iter().filter_map(|s| s.rw_per_op).collect())
                .unwrap_or_default();
            if v.is_empty() {
                row += " — |";
            } else {
                row += &format!(" {:.3} |", median(&mut v));
            }
        }
        w(&mut s, row);
    }
    render_more(&mut s, targets, samples);
    w(&mut s, "\n## WCFS against issue 4's targets\n".into());
    w(
        &mut s,
        "| measure | target | wcfs (local RW) | wcfs/slow | wcfs-fast (local RW) | \
         wcfs-fast/slow | best anchor (ratio) |"
            .into(),
    );
    w(&mut s, "|---|---|---:|---:|---:|---:|---|".into());
    for m in Measure::ALL {
        let cell = |name: &str| match ratio(name, m) {
            Some(r) => format!("{:.2}× {}", r, if m.target_ok(r) { "✅" } else { "❌" }),
            None => "—".into(),
        };
        let best = targets
            .iter()
            .filter(|t| !matches!(t.kind, Kind::Bare | Kind::Wcfs | Kind::WcfsFast))
            .filter_map(|t| ratio(&t.name, m).map(|r| (t.name.clone(), r)))
            .reduce(|a, b| {
                let better = if m.is_throughput() {
                    b.1 > a.1
                } else {
                    b.1 < a.1
                };
                if better { b } else { a }
            })
            .map(|(n, r)| format!("{n} ({r:.2}×)"))
            .unwrap_or_else(|| "—".into());
        w(
            &mut s,
            format!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                m.label(),
                m.target(),
                cell("wcfs"),
                cell("wcfs/slow"),
                cell("wcfs-fast"),
                cell("wcfs-fast/slow"),
                best
            ),
        );
    }
    let mut rw = Vec::new();
    for m in rwm {
        for t in ["wcfs/slow", "wcfs-fast/slow"] {
            if let Some(v) = samples.get(&(t.to_string(), m)) {
                rw.extend(v.iter().filter_map(|s| s.rw_per_op));
            }
        }
    }
    if !rw.is_empty() {
        let worst = rw.iter().cloned().fold(0.0, f64::max);
        w(
            &mut s,
            format!(
                "| RW metadata requests per op on RO content | 0 | — | worst {worst:.3} {} | — | \
                 (both) | — |",
                if worst == 0.0 { "✅" } else { "❌" }
            ),
        );
    }
    s
}

/// Median, min and max of a target's samples for a measure.
fn stats(
    samples: &BTreeMap<(String, Measure), Vec<Sample>>,
    name: &str,
    m: Measure,
) -> Option<(f64, f64, f64)> {
    let v = samples.get(&(name.to_string(), m))?;
    let mut xs: Vec<f64> = v.iter().map(|s| s.value).collect();
    let lo = xs.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    Some((median(&mut xs), lo, hi))
}

/// Median of the RW-branch requests per op, where counted.
fn rw_median(
    samples: &BTreeMap<(String, Measure), Vec<Sample>>,
    name: &str,
    m: Measure,
) -> Option<f64> {
    let mut v: Vec<f64> = samples
        .get(&(name.to_string(), m))?
        .iter()
        .filter_map(|s| s.rw_per_op)
        .collect();
    (!v.is_empty()).then(|| median(&mut v))
}

/// Issue 7's sections: the added measures, the web workload, RW requests for both, and WCFS
/// against every anchor on every row.
fn render_more(
    s: &mut String,
    targets: &[Target],
    samples: &BTreeMap<(String, Measure), Vec<Sample>>,
) {
    let w = |s: &mut String, t: String| {
        s.push_str(&t);
        s.push('\n');
    };
    let cell = |name: &str, m: Measure| -> String {
        let (Some((x, lo, hi)), Some((b, ..))) =
            (stats(samples, name, m), stats(samples, "bare", m))
        else {
            return "—".into();
        };
        format!(
            "{} ({:.2}×) {}–{}",
            fmt_val(x),
            x / b,
            fmt_val(lo),
            fmt_val(hi)
        )
    };
    let table = |s: &mut String, title: &str, ms: &[Measure]| {
        if !ms.iter().any(|m| samples.keys().any(|(_, k)| k == m)) {
            return;
        }
        w(s, format!("\n## {title}\n"));
        let mut hdr = "| target |".to_string();
        let mut sep = "|---|".to_string();
        for m in ms {
            hdr += &format!(" {} |", m.label());
            sep += "---:|";
        }
        w(s, hdr);
        w(s, sep);
        for t in targets {
            if !ms
                .iter()
                .any(|m| samples.contains_key(&(t.name.clone(), *m)))
            {
                continue;
            }
            let mut row = format!("| {} |", t.name);
            for m in ms {
                row += &format!(" {} |", cell(&t.name, *m));
            }
            w(s, row);
        }
    };
    table(
        s,
        "Cold reads, small creates, the 100k-file tree: median (ratio to bare) min–max",
        &Measure::MORE,
    );
    table(
        s,
        "Web workload (nginx + php-fpm + opcache, wrk): median (ratio to bare) min–max",
        &Measure::WEB,
    );
    let rwm = [
        Measure::ColdOpenRead,
        Measure::ScaleStatCold,
        Measure::ScaleStatWarm,
        Measure::CreateSmall,
        Measure::WebRps,
    ];
    let slow: Vec<&Target> = targets.iter().filter(|t| t.slow).collect();
    if !slow.is_empty() {
        w(
            s,
            "\n## RW-branch metadata requests per operation, issue 7's measures (slowfs counters, \
             median; per file, per created file, per page)\n"
                .into(),
        );
        let mut hdr = "| target |".to_string();
        let mut sep = "|---|".to_string();
        for m in rwm {
            hdr += &format!(" {} |", m.key());
            sep += "---:|";
        }
        w(s, hdr);
        w(s, sep);
        for t in &slow {
            let mut row = format!("| {} |", t.name);
            for m in rwm {
                match rw_median(samples, &t.name, m) {
                    Some(v) => row += &format!(" {v:.3} |"),
                    None => row += " — |",
                }
            }
            w(s, row);
        }
    }
    // WCFS against each anchor with the same kind of RW branch, on every measure.
    let anchors: Vec<&Target> = targets
        .iter()
        .filter(|t| !matches!(t.kind, Kind::Bare | Kind::Wcfs | Kind::WcfsFast))
        .collect();
    if anchors.is_empty() || !targets.iter().any(|t| t.kind == Kind::Wcfs) {
        return;
    }
    w(
        s,
        "\n## WCFS against each anchor (same RW branch): how many times better WCFS is \
         (anchor time ÷ WCFS time, or WCFS throughput ÷ anchor throughput; < 1 = WCFS loses)\n"
            .into(),
    );
    let mut hdr = "| measure | wcfs | wcfs/slow |".to_string();
    let mut sep = "|---|---:|---:|".to_string();
    for a in &anchors {
        hdr += &format!(" vs {} |", a.name);
        sep += "---:|";
    }
    w(s, hdr);
    w(s, sep);
    let all = Measure::ALL
        .iter()
        .chain(Measure::MORE.iter())
        .chain(Measure::WEB.iter());
    for &m in all {
        if !samples.keys().any(|(_, k)| *k == m) {
            continue;
        }
        let med = |n: &str| stats(samples, n, m).map(|x| x.0);
        let v = |n: &str| med(n).map_or("—".into(), fmt_val);
        let mut row = format!("| {} | {} | {} |", m.label(), v("wcfs"), v("wcfs/slow"));
        for a in &anchors {
            let wn = if a.slow { "wcfs/slow" } else { "wcfs" };
            match (med(wn), med(&a.name)) {
                (Some(x), Some(y)) if x > 0.0 && y > 0.0 => {
                    let better = if m.is_throughput() { x / y } else { y / x };
                    row += &format!(" {better:.2}× |");
                }
                _ => row += " — |",
            }
        }
        w(s, row);
    }
}
