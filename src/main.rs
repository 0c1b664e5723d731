//! The `wcfs` command line. Thin: it parses arguments and wires the libraries together.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wcfs_core::dot::ReplicaId;
use wcfs_core::handle::LocalHandle;
use wcfs_core::table::Table;
use wcfs_gossip::store::{Store, StoreOptions};

mod demo;
mod help;
mod net;
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
    /// Mount the union of an RO and an RW branch (single node, foreground; Ctrl-C unmounts).
    Mount {
        /// The read-only branch (the site's code and assets).
        #[arg(long)]
        ro: PathBuf,
        /// The shared read-write branch.
        #[arg(long)]
        rw: PathBuf,
        /// The node's data directory (identity, journal, snapshots). Every table change is
        /// durable there before the filesystem call returns, and a restart recovers it.
        /// Without it the table lives in memory only and is lost when the mount ends.
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        net: NetArgs,
        /// Where to mount.
        mountpoint: PathBuf,
    },
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
}

/// Joining a cluster: with `--listen`, the node replicates its table with its peers over QUIC
/// with mutual TLS (then `--data`, `--ca`, `--cert` and `--key` are required).
#[derive(clap::Args, Debug)]
struct NetArgs {
    /// UDP address for QUIC (listen and dial), as peers reach it, e.g. 10.0.0.5:7946.
    #[arg(long, requires_all = ["data", "ca", "cert", "key"])]
    listen: Option<std::net::SocketAddr>,
    /// Address of another node to join through (repeatable).
    #[arg(long = "seed", requires = "listen")]
    seeds: Vec<std::net::SocketAddr>,
    /// The cluster CA certificate (from `wcfs ca init`).
    #[arg(long, requires = "listen")]
    ca: Option<PathBuf>,
    /// This node's certificate (from `wcfs ca issue`).
    #[arg(long, requires = "listen")]
    cert: Option<PathBuf>,
    /// This node's private key.
    #[arg(long, requires = "listen")]
    key: Option<PathBuf>,
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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli: Cli = help::parse();
    match cli.cmd {
        Cmd::Ca {
            cmd: CaCmd::Init { out },
        } => {
            let w = wcfs_gossip::tls::init_ca(&out).context("creating the cluster CA")?;
            println!("{}\n{}", w.cert.display(), w.key.display());
            Ok(())
        }
        Cmd::Ca {
            cmd: CaCmd::Issue { name, ca_dir, out },
        } => {
            let w = wcfs_gossip::tls::issue(&name, &ca_dir, &out)
                .with_context(|| format!("issuing a certificate for {name}"))?;
            println!("{}\n{}", w.cert.display(), w.key.display());
            Ok(())
        }
        Cmd::Completions(args) => {
            help::completions(args, help::command::<Cli>());
            Ok(())
        }
        Cmd::Man(args) => help::man(args, help::command::<Cli>()),
        Cmd::Rebuild(args) => rebuild::rebuild(args),
        Cmd::Check(args) => match rebuild::check(args) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => {
                // 1 means "they disagree"; a check that could not run says so apart.
                eprintln!("Error: {e:?}");
                std::process::exit(2)
            }
        },
        Cmd::Demo(args) => {
            let set = block_signals()?;
            demo::run(args, &set)
        }
        Cmd::Mount {
            ro,
            rw,
            data,
            net,
            mountpoint,
        } => {
            let set = block_signals()?;
            if let (Some(listen), Some(data), Some(ca), Some(cert), Some(key)) =
                (net.listen, &data, &net.ca, &net.cert, &net.key)
            {
                let node = net::Node {
                    listen,
                    seeds: net.seeds,
                    data,
                    ca,
                    cert,
                    key,
                };
                return net::mount(&node, ro, rw, mountpoint, &set);
            }
            let (handle, store) = match &data {
                Some(dir) => {
                    let fresh = (random_u64()?, random_u64()?);
                    let opened = Store::open(dir, StoreOptions::default(), || fresh);
                    let (store, table, rec) = opened
                        .with_context(|| format!("opening data directory {}", dir.display()))?;
                    tracing::info!(
                        replica = %rec.identity.replica,
                        generation = rec.identity.generation,
                        snapshot_paths = rec.snapshot_paths,
                        journal_records = rec.journal_records,
                        "table recovered"
                    );
                    let store = Arc::new(store);
                    (LocalHandle::with_persist(table, store.clone()), Some(store))
                }
                None => {
                    tracing::warn!(
                        "no --data directory: the table is in memory only and is lost when this mount ends"
                    );
                    let table = Table::new(ReplicaId(random_u64()?), random_u64()?);
                    (LocalHandle::new(table), None)
                }
            };
            let replica = handle.with_table(|t| t.replica());
            let cfg = wcfs_fs::MountConfig {
                ro,
                rw,
                mountpoint: mountpoint.clone(),
                allow_other: true,
                fs: wcfs_fs::FsConfig::default(),
            };
            let guard = wcfs_fs::mount(&cfg, handle.clone() as Arc<_>)
                .with_context(|| format!("mounting {}", mountpoint.display()))?;
            let inv = guard.invalidator();
            handle.on_change(move |p| inv.path_changed(p));
            tracing::info!(%replica, mountpoint = %mountpoint.display(), passthrough = guard.passthrough(), "mounted");
            let stop = Arc::new(AtomicBool::new(false));
            let upkeep = store.clone().map(|store| {
                let (handle, stop) = (handle.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Err(e) = store.maintain(&handle) {
                            tracing::error!(error = %e, "data directory upkeep failed");
                        }
                        std::thread::park_timeout(Duration::from_secs(1));
                    }
                })
            });
            let sig = wait_for_signal(&set);
            tracing::info!(sig, "unmounting");
            guard.unmount().context("unmounting")?;
            stop.store(true, Ordering::Relaxed);
            if let Some(t) = upkeep {
                t.thread().unpark();
                let _ = t.join();
            }
            if let Some(store) = store {
                // A snapshot at a clean stop makes the next start read one file, not a journal.
                store
                    .snapshot(&handle)
                    .context("writing the final snapshot")?;
            }
            Ok(())
        }
    }
}
