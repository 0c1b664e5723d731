//! The `wcfs` command line. Thin: it parses arguments and wires the libraries together.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wcfs_core::dot::ReplicaId;
use wcfs_core::handle::LocalHandle;
use wcfs_core::table::Table;

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
        /// The node's data directory (journal, snapshots). Accepted but not used yet: this
        /// single-node mount keeps its table in memory.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Where to mount.
        mountpoint: PathBuf,
    },
}

fn random_u64() -> anyhow::Result<u64> {
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

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
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
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Mount {
            ro,
            rw,
            data,
            mountpoint,
        } => {
            if let Some(d) = data {
                tracing::warn!(data = %d.display(), "--data is not used yet: the table is in memory only");
            }
            let set = block_signals()?;
            let replica = ReplicaId(random_u64()?);
            let seed = random_u64()?;
            let handle = LocalHandle::new(Table::new(replica, seed));
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
            let sig = wait_for_signal(&set);
            tracing::info!(sig, "unmounting");
            guard.unmount().context("unmounting")?;
            Ok(())
        }
    }
}
