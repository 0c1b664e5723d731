//! `wcfs mount --listen ...`: a mount whose table is replicated by the node runtime.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use wcfs_gossip::runtime::{Invalidate, Runtime, RuntimeConfig};
use wcfs_gossip::store::{Store, StoreOptions};
use wcfs_gossip::tls::NodeTls;

/// Where this node listens, whom it joins through, and its files.
pub(crate) struct Node<'a> {
    pub listen: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    pub data: &'a Path,
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// Opens the data directory, starts the runtime, mounts, and runs until SIGINT/SIGTERM
/// (`signals` must already be blocked in every thread).
pub(crate) fn mount(
    node: &Node<'_>,
    ro: PathBuf,
    rw: PathBuf,
    mountpoint: PathBuf,
    signals: &libc::sigset_t,
) -> anyhow::Result<()> {
    let tls = NodeTls::load(node.ca, node.cert, node.key).context("loading the certificates")?;
    let fresh = (crate::random_u64()?, crate::random_u64()?);
    let (store, table, rec) = Store::open(node.data, StoreOptions::default(), || fresh)
        .with_context(|| format!("opening data directory {}", node.data.display()))?;
    // Runs the network task; the threads inherit the blocked signal mask.
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("wcfs-net")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // The kernel-cache invalidator exists only once mounted; changes before that need none.
    let inval: Arc<OnceLock<wcfs_fs::Invalidator>> = Arc::default();
    let sink = inval.clone();
    let on_change = Box::new(move |c: Invalidate| match (c, sink.get()) {
        (Invalidate::Path(p), Some(i)) => i.path_changed(&p),
        (Invalidate::All, Some(_)) => {
            tracing::warn!("table replaced: kernel caches expire by their TTL")
        }
        (_, None) => {}
    });
    let cluster_size = u32::try_from(node.seeds.len() + 1).unwrap_or(u32::MAX);
    let cfg = RuntimeConfig::new(node.listen, node.seeds.clone(), cluster_size);
    let rt = {
        let _enter = tokio.enter();
        Runtime::start(cfg, &tls, store, table, &rec, on_change)
            .with_context(|| format!("starting the node on {}", node.listen))?
    };
    let handle = rt.handle();
    let cfg = wcfs_fs::MountConfig {
        ro,
        rw,
        mountpoint: mountpoint.clone(),
        allow_other: true,
        fs: wcfs_fs::FsConfig::default(),
    };
    let guard = wcfs_fs::mount(&cfg, Arc::new(handle.clone()))
        .with_context(|| format!("mounting {}", mountpoint.display()))?;
    let _ = inval.set(guard.invalidator());
    tracing::info!(
        replica = %rec.identity.replica,
        generation = rec.identity.generation,
        listen = %rt.local_addr(),
        mountpoint = %mountpoint.display(),
        "mounted"
    );
    let sig = crate::wait_for_signal(signals);
    tracing::info!(sig, "unmounting");
    guard.unmount().context("unmounting")?;
    tokio.block_on(rt.shutdown());
    // A snapshot at a clean stop makes the next start read one file, not a journal.
    handle.snapshot().context("writing the final snapshot")?;
    Ok(())
}
