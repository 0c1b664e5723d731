//! The `wcfs` command line. Thin: it parses arguments and wires the libraries together.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod admin;
mod config;
mod demo;
mod help;
mod node;
mod rebuild;

/// WCFS: a union filesystem for load-balanced web clusters.
#[derive(Parser, Debug)]
#[command(name = "wcfs", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Mount the union of an RO and an RW branch (foreground; SIGINT/SIGTERM unmounts).
    Mount(Box<MountArgs>),
    /// Start a local cluster on loopback and show a write on one node appearing on the others.
    ///
    /// Generates a small web site (the RO branch), a shared RW directory, a CA and one
    /// certificate per node, then starts one `wcfs mount` process per node, each with its own
    /// data directory and mount. Once all are mounted it writes uploads/hello.txt through node
    /// 1 and prints how long the other nodes took to see it. It then prints the mounts and
    /// runs until Ctrl-C (or --duration), unmounts, and removes its files. Needs root and
    /// FUSE (/dev/fuse, fusermount3 from the fuse3 package).
    Demo(demo::DemoArgs),
    /// Rebuild a node's table from the RW branch (after its data directory was lost).
    ///
    /// Reads the RW branch (files and directories, aufs whiteouts `.wh.NAME`, opaque markers
    /// `.wh..wh..opq`) and writes the table it describes into the data directory: a new
    /// identity if the directory is empty, then a snapshot, fsynced. The RW branch is not
    /// changed. The node must be stopped. Reports what it found and what it changed.
    Rebuild(rebuild::RebuildArgs),
    /// Compare a node's table with the RW branch and list where they disagree.
    ///
    /// One line per disagreement on stdout (in the table but not on RW, on RW but not in the
    /// table, whiteout or opaque-marker mismatch), a summary on stderr. Exit status 0 if they
    /// agree, 1 if not, 2 on error. Safe to run beside a running node.
    Check(rebuild::CheckArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions(help::CompletionsArgs),
    /// Print the man page (roff), or write one page per command with --out.
    Man(help::ManArgs),
    /// Create the cluster CA and node certificates for mutual TLS between nodes.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Show a running node's state: members (down or lagging ones flagged with `!`), lag,
    /// queues and drops, table size, journal and snapshot, and whether opens are fast (locks
    /// on this node only) or go through the daemon (locks across nodes).
    Status {
        /// Print the raw JSON (stable keys, for scripts and monitoring).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: AdminAt,
    },
    /// Look at a running node's translation table.
    Table {
        #[command(subcommand)]
        cmd: TableCmd,
    },
    /// Drop this node's kernel caches (entries, attributes, pages, listings) under PATH, or
    /// everything: after replacing the RO image under a running mount.
    Invalidate {
        /// A path in the union (relative, or absolute under the mountpoint). Default: all.
        path: Option<String>,
        #[command(flatten)]
        at: AdminAt,
    },
}

/// Which node to ask: `--socket`, else the admin socket of `--config`, else that of
/// /etc/wcfs/wcfs.toml if it exists, else /var/lib/wcfs/admin.sock.
#[derive(clap::Args, Debug)]
struct AdminAt {
    /// The node's admin socket.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// The node's configuration file (its admin socket is used).
    #[arg(long, global = true, conflicts_with = "socket")]
    config: Option<PathBuf>,
}

impl AdminAt {
    fn call(self, req: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let sock = admin::socket_path(self.socket, self.config.as_deref())?;
        admin::call(&sock, &req)
    }
}

#[derive(Subcommand, Debug)]
enum TableCmd {
    /// One path's entry: its dots (replica:seq), which are live and as what, and how the
    /// union resolves the path.
    Get {
        /// A path in the union (relative, or absolute under the mountpoint).
        path: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: AdminAt,
    },
    /// The children of DIR that have table state, with their resolution.
    Ls {
        /// A directory in the union. Default: the root.
        dir: Option<String>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: AdminAt,
    },
}

/// `wcfs mount`: every value can come from `--config FILE` (see dist/wcfs.toml); a flag given
/// here replaces the file's value.
#[derive(clap::Args, Debug)]
struct MountArgs {
    /// TOML configuration file (every key is documented in dist/wcfs.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The node's name (must match its certificate's).
    #[arg(long)]
    name: Option<String>,
    /// The read-only branch (the site's code and assets). [config: branches.ro]
    #[arg(long)]
    ro: Option<PathBuf>,
    /// The shared read-write branch. [config: branches.rw]
    #[arg(long)]
    rw: Option<PathBuf>,
    /// The node's data directory (identity, journal, snapshots). Every table change is
    /// durable there before the filesystem call returns, and a restart recovers it.
    /// Without it the table lives in memory only and is lost when the mount ends.
    /// [config: data_dir]
    #[arg(long)]
    data: Option<PathBuf>,
    /// UDP address for QUIC (listen and dial), as peers reach it, e.g. 10.0.0.5:7946. Joins
    /// a cluster: then a data directory and --ca/--cert/--key are required. [config: listen]
    #[arg(long)]
    listen: Option<String>,
    /// Address of another node to join through (repeatable; replaces the file's list).
    /// [config: seeds]
    #[arg(long = "seed")]
    seeds: Vec<String>,
    /// The cluster CA certificate (from `wcfs ca init`). [config: tls.ca]
    #[arg(long)]
    ca: Option<PathBuf>,
    /// This node's certificate (from `wcfs ca issue`). [config: tls.cert]
    #[arg(long)]
    cert: Option<PathBuf>,
    /// This node's private key. [config: tls.key]
    #[arg(long)]
    key: Option<PathBuf>,
    /// The admin socket (default: DATA/admin.sock). [config: admin.socket]
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// TCP address of the Prometheus endpoint (`GET /metrics`), e.g. 127.0.0.1:9464; cluster
    /// nodes only. [config: metrics.listen]
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Opens and closes never wait for the daemon (RO files open about as fast as on a local
    /// filesystem); locks then hold on this node only. [config: union.fast_open]
    #[arg(long)]
    fast_open: bool,
    /// Where to mount. [config: branches.mountpoint]
    mountpoint: Option<PathBuf>,
}

impl MountArgs {
    /// The file (if any) with the flags written over it, validated.
    fn resolve(self) -> anyhow::Result<config::NodeConfig> {
        let raw = match &self.config {
            Some(p) => config::RawConfig::load(p)?,
            None => config::RawConfig::default(),
        };
        let o = config::Overrides {
            name: self.name,
            ro: self.ro,
            rw: self.rw,
            mountpoint: self.mountpoint,
            data_dir: self.data,
            listen: self.listen,
            seeds: self.seeds,
            ca: self.ca,
            cert: self.cert,
            key: self.key,
            admin_socket: self.admin_socket,
            metrics_listen: self.metrics,
            fast_open: self.fast_open.then_some(true),
        };
        let what = match &self.config {
            Some(p) => format!("configuration {}", p.display()),
            None => "configuration (flags)".into(),
        };
        o.apply(raw).resolve().context(what)
    }
}

#[derive(Subcommand, Debug)]
enum CaCmd {
    /// Create a cluster CA: OUT/ca.pem and OUT/ca.key (mode 0600). Never overwrites.
    Init {
        /// Directory for the CA files (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a node certificate: OUT/NAME.pem and OUT/NAME.key (mode 0600), signed by the CA.
    Issue {
        /// The node's name (a lowercase DNS label); peers identify the node by it.
        name: String,
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Directory for the node's files (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

pub(crate) fn random_u64() -> anyhow::Result<u64> {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom for the replica id")?;
    Ok(u64::from_le_bytes(b))
}

/// Blocks SIGINT and SIGTERM in this thread (and every thread spawned after), so that
/// `wait_for_signal` can take them synchronously.
fn block_signals() -> anyhow::Result<libc::sigset_t> {
    // SAFETY: plain sigset manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            anyhow::bail!("pthread_sigmask: {}", std::io::Error::from_raw_os_error(r));
        }
        Ok(set)
    }
}

pub(crate) fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is initialized; `sig` is a valid out pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

fn print_result(v: &serde_json::Value, json: bool, human: fn(&serde_json::Value) -> String) {
    if json {
        println!("{v:#}");
    } else {
        print!("{}", human(v));
    }
}

/// Logs to stderr (journald takes it under systemd); `RUST_LOG` overrides `level`. Colours
/// only on a terminal: escape codes in log files and the journal are noise.
fn init_tracing(level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Raises the soft limit on open files to the hard one: the daemon keeps RO directory fds,
/// one file per open (or, with fast opens, per recently used inode) and QUIC sockets, and the
/// usual soft limit of 1024 is below what a busy node needs (systemd's unit sets both).
fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out pointer; then plain struct in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            let want = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                tracing::warn!(soft = l.rlim_cur, "cannot raise the open-file limit");
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli: Cli = help::parse();
    match cli.cmd {
        Cmd::Ca {
            cmd: CaCmd::Init { out },
        } => {
            init_tracing("info");
            let w = wcfs_gossip::tls::init_ca(&out).context("creating the cluster CA")?;
            println!("{}\n{}", w.cert.display(), w.key.display());
            Ok(())
        }
        Cmd::Ca {
            cmd: CaCmd::Issue { name, ca_dir, out },
        } => {
            init_tracing("info");
            let w = wcfs_gossip::tls::issue(&name, &ca_dir, &out)
                .with_context(|| format!("issuing a certificate for {name}"))?;
            println!("{}\n{}", w.cert.display(), w.key.display());
            Ok(())
        }
        Cmd::Status { json, at } => {
            init_tracing("warn");
            let v = at.call(serde_json::json!({"cmd": "status"}))?;
            print_result(&v, json, admin::render_status);
            Ok(())
        }
        Cmd::Table {
            cmd: TableCmd::Get { path, json, at },
        } => {
            init_tracing("warn");
            let v = at.call(serde_json::json!({"cmd": "table_get", "path": path}))?;
            print_result(&v, json, admin::render_get);
            Ok(())
        }
        Cmd::Table {
            cmd: TableCmd::Ls { dir, json, at },
        } => {
            init_tracing("warn");
            let v = at.call(serde_json::json!({"cmd": "table_ls", "dir": dir}))?;
            print_result(&v, json, admin::render_ls);
            Ok(())
        }
        Cmd::Invalidate { path, at } => {
            init_tracing("warn");
            let v = at.call(serde_json::json!({"cmd": "invalidate", "path": path}))?;
            println!(
                "invalidated {} ({} cached names dropped)",
                v["path"].as_str().unwrap_or("everything"),
                v["dropped"]
            );
            Ok(())
        }
        Cmd::Completions(args) => {
            help::completions(args, help::command::<Cli>());
            Ok(())
        }
        Cmd::Man(args) => help::man(args, help::command::<Cli>()),
        Cmd::Rebuild(args) => {
            init_tracing("info");
            rebuild::rebuild(args)
        }
        Cmd::Check(args) => {
            init_tracing("info");
            match rebuild::check(args) {
                Ok(true) => Ok(()),
                Ok(false) => std::process::exit(1),
                Err(e) => {
                    // 1 means "they disagree"; a check that could not run says so apart.
                    eprintln!("Error: {e:?}");
                    std::process::exit(2)
                }
            }
        }
        Cmd::Demo(args) => {
            init_tracing("info");
            let set = block_signals()?;
            demo::run(args, &set)
        }
        Cmd::Mount(args) => {
            let cfg = args.resolve()?;
            init_tracing(&cfg.log_level);
            raise_fd_limit();
            let set = block_signals()?;
            node::run(cfg, &set)
        }
    }
}
