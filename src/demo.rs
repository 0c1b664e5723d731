//! `wcfs demo`: a local cluster of `wcfs mount` processes over loopback, to watch a write on
//! one node appear on the others.
//!
//! Everything lives under one directory (a fresh temporary one unless `--dir` is given):
//!
//! ```text
//! ro/                 a generated web site (the RO branch, shared by every node)
//! rw/                 the shared RW branch
//! certs/              the cluster CA and one certificate per node
//! nodeN/data          node N's data directory
//! nodeN/mnt           node N's mount
//! nodeN.log           node N's log (stderr of its `wcfs mount`)
//! ```

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a node may take to mount, and to stop after SIGTERM, before it is given up on.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a write may take to appear on another node before the demo reports a failure.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(30);

/// `wcfs demo` options.
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Number of nodes (each a `wcfs mount` process with its own data directory and mount).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=32))]
    nodes: u16,
    /// Keep everything in DIR (created if missing; must be empty) and leave it there
    /// afterwards, instead of a temporary directory that is removed at the end.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Stop by itself after SECS seconds of running (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
}

/// Checks what the demo needs from the machine, with a message that says how to fix it.
fn preflight() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "wcfs demo needs root: it mounts FUSE filesystems (with allow_other and FUSE \
             passthrough). Run it as root, e.g. `sudo wcfs demo`"
        );
    }
    if !Path::new("/dev/fuse").exists() {
        bail!(
            "/dev/fuse is missing: load the FUSE module (`modprobe fuse`), or in a container \
             pass the device in (docker run --device /dev/fuse --cap-add SYS_ADMIN ...)"
        );
    }
    if find_in_path("fusermount3").is_none() {
        bail!("fusermount3 is missing: install fuse3 (apt-get install fuse3)");
    }
    Ok(())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether `p` is a mount point right now (by `/proc/self/mountinfo`).
pub(crate) fn is_mounted(p: &Path) -> bool {
    let Ok(canon) = p.canonicalize() else {
        return false;
    };
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = mountinfo_escape(&canon);
    mi.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Mountinfo escapes space, tab, newline and backslash as octal.
fn mountinfo_escape(p: &Path) -> String {
    let mut s = String::new();
    for c in p.to_string_lossy().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => s.push_str(&format!("\\{:03o}", c as u32)),
            c => s.push(c),
        }
    }
    s
}

/// Writes a small web-like site (a few hundred files) under `ro`. Returns the file count.
fn generate_site(ro: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    let mut put = |rel: &str, body: &[u8]| -> anyhow::Result<()> {
        let p = ro.join(rel);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&p, body).with_context(|| format!("writing {}", p.display()))?;
        n += 1;
        Ok(())
    };
    put(
        "index.php",
        b"<?php\n// The demo site's front controller.\nrequire __DIR__ . '/wp-blog-header.php';\n",
    )?;
    put(
        "wp-blog-header.php",
        b"<?php\nrequire_once __DIR__ . '/wp-load.php';\n",
    )?;
    put(
        "wp-load.php",
        b"<?php\nrequire_once __DIR__ . '/wp-config.php';\n",
    )?;
    put(
        "wp-config.php",
        b"<?php\ndefine('DB_NAME', 'demo');\ndefine('WP_CONTENT_DIR', __DIR__ . '/wp-content');\n",
    )?;
    put("robots.txt", b"User-agent: *\nDisallow: /wp-admin/\n")?;
    put(
        ".htaccess",
        b"RewriteEngine On\nRewriteRule . /index.php [L]\n",
    )?;
    for i in 0..120 {
        let body = format!(
            "<?php\n/** Core library {i}. */\nfunction wcfs_demo_core_{i}() {{ return {i}; }}\n"
        );
        put(&format!("wp-includes/lib-{i:03}.php"), body.as_bytes())?;
    }
    for i in 0..30 {
        let body = format!("<?php\nclass Demo_Block_{i} {{}}\n");
        put(
            &format!("wp-includes/blocks/block-{i:02}.php"),
            body.as_bytes(),
        )?;
    }
    for i in 0..40 {
        let body = format!("<?php\n/** Admin screen {i}. */\n");
        put(&format!("wp-admin/screen-{i:02}.php"), body.as_bytes())?;
    }
    put(
        "wp-content/themes/demo/style.css",
        b"/* Theme Name: WCFS demo */\nbody { font-family: sans-serif; }\n",
    )?;
    put(
        "wp-content/themes/demo/functions.php",
        b"<?php\nadd_theme_support('title-tag');\n",
    )?;
    for i in 0..20 {
        let body = format!("<?php /* template {i} */ ?>\n<main>page {i}</main>\n");
        put(
            &format!("wp-content/themes/demo/templates/page-{i:02}.php"),
            body.as_bytes(),
        )?;
    }
    for p in 0..5 {
        for i in 0..8 {
            let body = format!("<?php\n/** Plugin {p}, file {i}. */\n");
            put(
                &format!("wp-content/plugins/plugin-{p}/inc/file-{i}.php"),
                body.as_bytes(),
            )?;
        }
    }
    for i in 0..40 {
        let body = format!(
            "/* stylesheet {i} */\n.c{i} {{ color: #{:06x}; }}\n",
            i * 4099
        );
        put(&format!("assets/css/c{i:02}.css"), body.as_bytes())?;
    }
    for i in 0..40 {
        let body = format!("// script {i}\nexport const n{i} = {i};\n");
        put(&format!("assets/js/m{i:02}.js"), body.as_bytes())?;
    }
    for i in 0..40 {
        // Not real images: a few hundred bytes each, so the site looks like one in listings.
        let body: Vec<u8> = (0..512u32).map(|b| (b * 31 + i * 7) as u8).collect();
        put(&format!("assets/img/photo-{i:02}.png"), &body)?;
    }
    Ok(n)
}

/// A UDP port on loopback that was free a moment ago (the node binds it right after).
fn free_port() -> anyhow::Result<SocketAddr> {
    let s = UdpSocket::bind("127.0.0.1:0").context("finding a free loopback port")?;
    s.local_addr().context("finding a free loopback port")
}

struct Node {
    name: String,
    child: Option<Child>,
    mnt: PathBuf,
    log: PathBuf,
    listen: SocketAddr,
}

impl Node {
    /// The last lines of the node's log, for error messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut tail: Vec<&str> = log.lines().rev().take(12).collect();
        tail.reverse();
        format!("the end of {}:\n{}", self.log.display(), tail.join("\n"))
    }
}

/// The running demo. Dropping it stops the nodes and cleans up (also on an error path).
struct Demo {
    base: PathBuf,
    /// Remove `base` at the end (a temporary directory, not the user's `--dir`).
    remove_base: bool,
    nodes: Vec<Node>,
    stopped: bool,
}

impl Demo {
    /// Sends SIGTERM to every node, waits for them to exit, checks their mounts are gone
    /// (`fusermount3 -u` otherwise), then removes the temporary directory. Idempotent.
    fn shutdown(&mut self) -> anyhow::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        for n in &mut self.nodes {
            if let Some(c) = &n.child {
                // A pid that fits (as every Linux pid does) is signalled; our own child, not
                // yet reaped, so the pid cannot have been reused.
                if let Ok(pid) = i32::try_from(c.id()) {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                loop {
                    match c.try_wait() {
                        Ok(Some(status)) => {
                            if !status.success() {
                                eprintln!(
                                    "{}: exited with {status} (see {})",
                                    n.name,
                                    n.log.display()
                                );
                            }
                            break;
                        }
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Ok(None) | Err(_) => {
                            eprintln!("{}: did not stop in time; killing it", n.name);
                            let _ = c.kill();
                            let _ = c.wait();
                            break;
                        }
                    }
                }
            }
        }
        let mut still = Vec::new();
        for n in &self.nodes {
            if is_mounted(&n.mnt) {
                eprintln!("{}: still mounted; running fusermount3 -u", n.name);
                let _ = Command::new("fusermount3")
                    .arg("-u")
                    .arg("-z")
                    .arg(&n.mnt)
                    .status();
                if is_mounted(&n.mnt) {
                    still.push(n.mnt.display().to_string());
                }
            }
        }
        if !still.is_empty() {
            bail!(
                "still mounted: {}; leaving {} in place",
                still.join(", "),
                self.base.display()
            );
        }
        if self.remove_base {
            std::fs::remove_dir_all(&self.base)
                .with_context(|| format!("removing {}", self.base.display()))?;
        }
        Ok(())
    }

    /// The first node that exited, with its status and the tail of its log.
    fn dead_node(&mut self) -> Option<String> {
        for n in &mut self.nodes {
            let Some(c) = &mut n.child else { continue };
            if let Ok(Some(status)) = c.try_wait() {
                n.child = None;
                return Some(format!("{} exited ({status}); {}", n.name, n.log_tail()));
            }
        }
        None
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("wcfs demo: cleanup: {e:#}");
        }
    }
}

/// Polls until `path` under `mnt` reads as `body`; the time it took, or `None` at the timeout.
fn wait_visible(file: &Path, body: &[u8], t0: Instant) -> Option<Duration> {
    loop {
        if std::fs::read(file).is_ok_and(|c| c == body) {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > PROPAGATION_TIMEOUT {
            return None;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Takes a pending signal of `set` (blocked by the caller), waiting at most `timeout`.
fn wait_for_signal_timeout(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` is initialized; a null siginfo pointer is allowed; `ts` is valid.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Runs the demo (see the module documentation). `signals` (SIGINT, SIGTERM) must already be
/// blocked in this thread.
pub(crate) fn run(args: DemoArgs, signals: &libc::sigset_t) -> anyhow::Result<()> {
    preflight()?;
    let exe = std::env::current_exe().context("finding the wcfs executable")?;
    let (base, remove_base) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            let mut it =
                std::fs::read_dir(d).with_context(|| format!("reading {}", d.display()))?;
            if it.next().is_some() {
                bail!(
                    "{} is not empty; give an empty or new directory",
                    d.display()
                );
            }
            (d.canonicalize()?, false)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("wcfs-demo-")
                .tempdir()
                .context("creating a temporary directory")?;
            (t.keep(), true)
        }
    };
    let mut demo = Demo {
        base: base.clone(),
        remove_base,
        nodes: Vec::new(),
        stopped: false,
    };
    let (ro, rw, certs) = (base.join("ro"), base.join("rw"), base.join("certs"));
    std::fs::create_dir(&rw).with_context(|| format!("creating {}", rw.display()))?;
    let files = generate_site(&ro)?;
    eprintln!("wcfs demo: {} (site: {files} files)", base.display());
    wcfs_gossip::tls::init_ca(&certs).context("creating the cluster CA")?;
    let n = usize::from(args.nodes);
    let mut addrs = Vec::with_capacity(n);
    for i in 1..=n {
        addrs.push(free_port()?);
        let name = format!("node{i}");
        wcfs_gossip::tls::issue(&name, &certs, &certs)
            .with_context(|| format!("issuing a certificate for {name}"))?;
    }
    for i in 1..=n {
        let name = format!("node{i}");
        let dir = base.join(&name);
        let (data, mnt, log) = (
            dir.join("data"),
            dir.join("mnt"),
            base.join(format!("{name}.log")),
        );
        std::fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
        let listen = addrs[i - 1];
        let mut cmd = Command::new(&exe);
        cmd.arg("mount")
            .arg("--ro")
            .arg(&ro)
            .arg("--rw")
            .arg(&rw)
            .arg("--data")
            .arg(&data)
            .arg("--listen")
            .arg(listen.to_string());
        for (j, a) in addrs.iter().enumerate() {
            if j != i - 1 {
                cmd.arg("--seed").arg(a.to_string());
            }
        }
        cmd.arg("--ca")
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join(format!("{name}.pem")))
            .arg("--key")
            .arg(certs.join(format!("{name}.key")))
            .arg(&mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).with_context(|| format!("creating {}", log.display()))?);
        // Own process group: Ctrl-C reaches the demo only, which stops the nodes in order.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        demo.nodes.push(Node {
            name,
            child: Some(child),
            mnt,
            log,
            listen,
        });
    }

    // Progress while the nodes mount: one line rewritten on a terminal, the result otherwise.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let t0 = Instant::now();
    loop {
        if let Some(dead) = demo.dead_node() {
            eprintln!();
            bail!("a node failed to start: {dead}");
        }
        let up = demo.nodes.iter().filter(|n| is_mounted(&n.mnt)).count();
        let secs = t0.elapsed().as_secs_f64();
        if tty {
            eprint!("\rstarting: {up}/{n} nodes mounted ({secs:.1} s)");
            let _ = std::io::stderr().flush();
        }
        if up == n {
            if tty {
                eprintln!();
            } else {
                eprintln!("started: {n} nodes mounted ({secs:.1} s)");
            }
            break;
        }
        if t0.elapsed() > START_TIMEOUT {
            eprintln!();
            bail!(
                "the nodes did not all mount within {START_TIMEOUT:?}; see the logs in {}",
                base.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // The nodes dial each other once up; a first change made through node 1 and seen on every
    // node shows the cluster is connected, so the timed write measures propagation, not joining.
    let mnts: Vec<PathBuf> = demo.nodes.iter().map(|n| n.mnt.clone()).collect();
    std::fs::create_dir(mnts[0].join("uploads")).context("creating uploads/ on node1")?;
    std::fs::write(mnts[0].join("uploads/.keep"), b"").context("writing on node1")?;
    for (k, m) in mnts.iter().enumerate().skip(1) {
        let t = Instant::now();
        if wait_visible(&m.join("uploads/.keep"), b"", t).is_none() {
            bail!(
                "node{} never showed node1's uploads/.keep within {PROPAGATION_TIMEOUT:?}; {}",
                k + 1,
                demo.nodes[k].log_tail()
            );
        }
    }
    eprintln!(
        "cluster connected after {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let body = b"hello from node1\n";
    let t = Instant::now();
    std::fs::write(mnts[0].join("uploads/hello.txt"), body).context("writing on node1")?;
    let mut seen = Vec::new();
    for (k, m) in mnts.iter().enumerate().skip(1) {
        match wait_visible(&m.join("uploads/hello.txt"), body, t) {
            Some(d) => seen.push(format!("node{} after {}", k + 1, fmt_ms(d))),
            None => bail!(
                "node{} did not show uploads/hello.txt within {PROPAGATION_TIMEOUT:?}; {}",
                k + 1,
                demo.nodes[k].log_tail()
            ),
        }
    }
    println!(
        "uploads/hello.txt written on node1, visible on {}",
        seen.join(", ")
    );

    println!("\nMounts (one per node, all over the same RW branch):");
    for node in &demo.nodes {
        println!(
            "  {}  {}   (QUIC {}, log {})",
            node.name,
            node.mnt.display(),
            node.listen,
            node.log.display()
        );
    }
    println!("  RO branch {}\n  RW branch {}", ro.display(), rw.display());
    let (m1, m2, mlast) = (&mnts[0], &mnts[1], &mnts[n - 1]);
    println!("\nTry, in another shell:");
    println!("  ls {}/uploads", m2.display());
    println!(
        "  echo hi > {}/uploads/a.txt; cat {}/uploads/a.txt",
        m2.display(),
        mlast.display()
    );
    println!(
        "  rm {}/robots.txt; ls {}   # deleting an RO file hides it everywhere",
        m1.display(),
        mlast.display()
    );
    println!(
        "  ls -a {}   # the RW branch: uploads/ and the whiteout .wh.robots.txt",
        rw.display()
    );
    let admin = base.join("node1/data/admin.sock");
    println!(
        "  {exe} status --socket {}   # members, lag, queues, table, journal",
        admin.display(),
        exe = exe.display()
    );
    println!(
        "  {exe} table get uploads/hello.txt --socket {}   # the entry's dots and resolution",
        admin.display(),
        exe = exe.display()
    );
    match args.duration {
        Some(s) => println!("\nRunning for {s} s (Ctrl-C stops earlier)."),
        None => println!("\nPress Ctrl-C to stop: the nodes unmount and the files are removed."),
    }
    let _ = std::io::stdout().flush();

    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        if let Some(dead) = demo.dead_node() {
            bail!("a node stopped unexpectedly: {dead}");
        }
        let step = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                left.min(Duration::from_secs(1))
            }
            None => Duration::from_secs(1),
        };
        if let Some(sig) = wait_for_signal_timeout(signals, step) {
            eprintln!("\nsignal {sig}: stopping");
            break;
        }
    }
    eprintln!("stopping the nodes");
    demo.shutdown()?;
    if remove_base {
        eprintln!("removed {}", base.display());
    } else {
        eprintln!("files kept in {}", base.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_site_looks_like_a_web_site() {
        let tmp = tempfile::tempdir().unwrap();
        let n = generate_site(tmp.path()).unwrap();
        assert!((200..1000).contains(&n), "{n} files");
        for f in [
            "index.php",
            "robots.txt",
            "wp-includes/lib-000.php",
            "assets/img/photo-00.png",
        ] {
            assert!(tmp.path().join(f).is_file(), "{f}");
        }
        let php = std::fs::read_dir(tmp.path().join("wp-includes"))
            .unwrap()
            .count();
        assert!(php > 100, "{php} entries in wp-includes");
    }

    #[test]
    fn mountinfo_escapes_what_the_kernel_escapes() {
        assert_eq!(
            mountinfo_escape(Path::new("/a b\\c\td")),
            "/a\\040b\\134c\\011d"
        );
        assert_eq!(mountinfo_escape(Path::new("/plain/x")), "/plain/x");
    }
}
