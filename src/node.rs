//! `wcfs mount`: one code path for a single node and a cluster node. The only difference is
//! who owns the table: a [`LocalHandle`] (optionally journaled to the data directory), or the
//! node runtime that replicates it. Mounting, upkeep, the admin socket, systemd notification
//! and shutdown are shared.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use wcfs_core::dot::ReplicaId;
use wcfs_core::handle::{LocalHandle, TableHandle};
use wcfs_core::table::Table;
use wcfs_gossip::runtime::{Invalidate, Runtime, RuntimeConfig, RuntimeHandle};
use wcfs_gossip::store::{Store, StoreOptions};
use wcfs_gossip::tls::NodeTls;

use crate::config::NodeConfig;

/// Longest `READY=1` waits for a networked node to catch up with a peer: a node whose peers
/// are all down must still become ready (it serves its recovered table).
const READY_WAIT: Duration = Duration::from_secs(10);

/// Who owns the table.
#[derive(Clone)]
pub(crate) enum Tables {
    /// A single node.
    Local(Arc<LocalHandle>),
    /// A cluster node's runtime.
    Net(RuntimeHandle),
}

impl Tables {
    /// Runs `f` with the table read-locked.
    pub(crate) fn with_table<R>(&self, f: impl FnOnce(&Table) -> R) -> R {
        match self {
            Tables::Local(h) => h.with_table(f),
            Tables::Net(h) => h.with_table(f),
        }
    }
}

/// What the admin socket and metrics read from a running node.
pub(crate) struct NodeInfo {
    /// The configured (or certificate) name.
    pub name: Option<String>,
    /// Replica id.
    pub replica: ReplicaId,
    /// Bumped on every start with the same data directory (0 without one).
    pub generation: u64,
    /// The table.
    pub tables: Tables,
    /// The data directory's store, if any.
    pub store: Option<Arc<Store>>,
    /// Where the union is mounted.
    pub mountpoint: PathBuf,
    /// The QUIC address, when networked.
    pub listen: Option<SocketAddr>,
    /// When the node started.
    pub started: Instant,
    /// The same, on the wall clock (for humans).
    pub started_at: SystemTime,
    /// Drops kernel caches.
    pub inval: wcfs_fs::Invalidator,
    /// RW-branch syscalls per operation.
    pub fs_stats: Arc<wcfs_fs::RwStats>,
    /// Fast opens (`[union] fast_open`): locks hold on this node only.
    pub fast_open: bool,
}

fn store_options(cfg: &NodeConfig) -> StoreOptions {
    StoreOptions {
        durability: cfg.durability,
        ..StoreOptions::default()
    }
}

/// Sends a systemd notification (`READY=1`, `STOPPING=1`) if `NOTIFY_SOCKET` is set
/// (`Type=notify`). Failures are logged: systemd then times the start out, which says more
/// than a node refusing to run without it.
pub(crate) fn sd_notify(msg: &str) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let res = UnixDatagram::unbound().and_then(|sock| {
        let b = path.as_bytes();
        if let Some(abs) = b.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abs)?;
            sock.send_to_addr(msg.as_bytes(), &addr)
        } else {
            sock.send_to(msg.as_bytes(), &path)
        }
    });
    if let Err(e) = res {
        tracing::warn!(socket = ?path, error = %e, "systemd notification {msg:?} failed");
    }
}

/// The filesystem's counters for the metrics endpoint: FUSE requests for the operations
/// `wcfs_fs` counts them for, RW-branch syscalls for every operation.
fn fs_source(stats: Arc<wcfs_fs::RwStats>) -> wcfs_gossip::metrics::FsSource {
    use wcfs_fs::OpKind;
    Arc::new(move || {
        OpKind::ALL
            .iter()
            .map(|&k| wcfs_gossip::metrics::FsOpCount {
                op: k.name(),
                requests: wcfs_fs::RwStats::REQUESTS_COUNTED
                    .contains(&k)
                    .then(|| stats.requests(k)),
                rw_syscalls: stats.get(k),
            })
            .collect()
    })
}

/// Whether a networked node has caught up: it exchanged digests with at least one member and
/// had nothing to learn from it then.
fn caught_up(h: &RuntimeHandle) -> bool {
    h.peers().iter().any(|p| p.up && p.we_behind == Some(0))
}

/// The invalidator once mounted, and whether a change came before it.
#[derive(Default)]
struct Early {
    inval: Option<wcfs_fs::Invalidator>,
    missed: bool,
}

/// Opens the data directory, starts the runtime when networked, mounts, serves the admin
/// socket, and runs until SIGINT/SIGTERM (`signals` must already be blocked in every thread).
pub(crate) fn run(cfg: NodeConfig, signals: &libc::sigset_t) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_at = SystemTime::now();
    let tls = match &cfg.net {
        Some(net) => {
            let tls =
                NodeTls::load(&net.ca, &net.cert, &net.key).context("loading the certificates")?;
            if let Some(name) = &cfg.name
                && name != tls.name()
            {
                anyhow::bail!(
                    "name: {name:?} but the certificate {} is for {:?}",
                    net.cert.display(),
                    tls.name()
                );
            }
            Some(tls)
        }
        None => None,
    };
    let name = cfg
        .name
        .clone()
        .or_else(|| tls.as_ref().map(|t| t.name().to_owned()));
    let opened = match &cfg.data_dir {
        Some(dir) => {
            let fresh = (crate::random_u64()?, crate::random_u64()?);
            let o = Store::open(dir, store_options(&cfg), || fresh)
                .with_context(|| format!("opening data directory {}", dir.display()))?;
            Some(o)
        }
        None => {
            tracing::warn!(
                "no data directory: the table is in memory only and is lost when this mount ends"
            );
            None
        }
    };

    // The kernel-cache invalidator exists only once `mount` returns, but the kernel may look
    // names up (and cache the answers) from the mount's first moment; a change merged in
    // between is remembered and answered by dropping everything once the invalidator exists.
    let inval_cell: Arc<Mutex<Early>> = Arc::default();
    let mut tokio_rt = None;
    let mut runtime = None;
    let (tables, store, generation, listen): (Tables, Option<Arc<Store>>, u64, _) =
        match (&cfg.net, opened, tls) {
            (Some(net), Some((store, table, rec)), Some(tls)) => {
                // Runs the network task; its threads inherit the blocked signal mask.
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("wcfs-net")
                    .enable_all()
                    .build()
                    .context("starting the async runtime")?;
                let sink = inval_cell.clone();
                let on_change = Box::new(move |c: Invalidate| {
                    let mut early = sink.lock().unwrap_or_else(|e| e.into_inner());
                    let Some(i) = &early.inval else {
                        early.missed = true;
                        return;
                    };
                    match c {
                        Invalidate::Path(p) => i.path_changed(&p),
                        Invalidate::All => drop(i.drop_tree(None)),
                    }
                });
                let cluster_size = u32::try_from(net.seeds.len() + 1).unwrap_or(u32::MAX);
                let rcfg = RuntimeConfig::new(net.listen, net.seeds.clone(), cluster_size);
                let r = {
                    let _enter = rt.enter();
                    Runtime::start(rcfg, &tls, store, table, &rec, on_change)
                        .with_context(|| format!("starting the node on {}", net.listen))?
                };
                let h = r.handle();
                let listen = r.local_addr();
                runtime = Some(r);
                tokio_rt = Some(rt);
                (Tables::Net(h), None, rec.identity.generation, Some(listen))
            }
            (None, Some((store, table, rec)), _) => {
                let store = Arc::new(store);
                let h = LocalHandle::with_persist(table, store.clone());
                (Tables::Local(h), Some(store), rec.identity.generation, None)
            }
            (None, None, _) => {
                let table = Table::new(ReplicaId(crate::random_u64()?), crate::random_u64()?);
                (Tables::Local(LocalHandle::new(table)), None, 0, None)
            }
            _ => anyhow::bail!("a cluster node needs a data directory and certificates"),
        };
    let replica = tables.with_table(|t| t.replica());
    let handle: Arc<dyn TableHandle> = match &tables {
        Tables::Local(h) => h.clone(),
        Tables::Net(h) => Arc::new(h.clone()),
    };
    let mcfg = wcfs_fs::MountConfig {
        ro: cfg.ro.clone(),
        rw: cfg.rw.clone(),
        mountpoint: cfg.mountpoint.clone(),
        allow_other: true,
        fs: cfg.fs.clone(),
    };
    let guard = wcfs_fs::mount(&mcfg, handle)
        .with_context(|| format!("mounting {}", cfg.mountpoint.display()))?;
    let inval = guard.invalidator();
    match &tables {
        Tables::Local(h) => {
            let i = inval.clone();
            h.on_change(move |p| i.path_changed(p));
        }
        Tables::Net(_) => {
            let mut early = inval_cell.lock().unwrap_or_else(|e| e.into_inner());
            early.inval = Some(inval.clone());
            if early.missed {
                tracing::debug!("changes merged while mounting: dropping the kernel's caches");
                drop(inval.drop_tree(None));
            }
        }
    }
    tracing::info!(
        %replica,
        generation,
        name = name.as_deref().unwrap_or("-"),
        listen = ?listen,
        mountpoint = %cfg.mountpoint.display(),
        passthrough = guard.passthrough(),
        fast_open = cfg.fs.fast_open,
        "mounted"
    );
    let info = Arc::new(NodeInfo {
        name,
        replica,
        generation,
        tables: tables.clone(),
        store: store.clone(),
        mountpoint: cfg.mountpoint.clone(),
        listen,
        started,
        started_at,
        inval,
        fs_stats: guard.stats(),
        fast_open: cfg.fs.fast_open,
    });

    let admin = match &cfg.admin_socket {
        Some(path) => Some(
            crate::admin::Server::start(path, info.clone())
                .with_context(|| format!("admin socket {}", path.display()))?,
        ),
        None => {
            tracing::info!("no admin socket (no data directory and no admin.socket)");
            None
        }
    };

    // Config validation refuses metrics.listen without listen: the endpoint reads the runtime.
    let metrics = match (cfg.metrics_listen, &tables, &tokio_rt) {
        (Some(addr), Tables::Net(h), Some(rt)) => {
            let sources = wcfs_gossip::metrics::Sources {
                runtime: h.clone(),
                fs: Some(fs_source(info.fs_stats.clone())),
            };
            let _enter = rt.enter();
            let m = wcfs_gossip::metrics::serve(addr, sources).context("serving metrics")?;
            tracing::info!(listen = %m.local_addr(), "serving metrics on /metrics");
            Some(m)
        }
        _ => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Unmounted from outside (`umount MNT`, `fusermount3 -u`): stop as on SIGTERM, so the node
    // still writes its final snapshot, removes its admin socket and tells its peers. The main
    // thread takes SIGTERM with sigwait; a process-directed signal reaches it there.
    {
        let stop = stop.clone();
        guard.on_session_end(move || {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tracing::warn!("the mount went away from outside; shutting down");
            // SAFETY: kill(2) on our own pid with a valid signal number.
            if unsafe { libc::kill(libc::getpid(), libc::SIGTERM) } != 0 {
                tracing::error!(
                    error = %std::io::Error::last_os_error(),
                    "cannot signal the main thread to shut down"
                );
            }
        });
    }
    // A single node's store needs upkeep (interval fsyncs, snapshots); the runtime does its own.
    let upkeep = match (&tables, &store) {
        (Tables::Local(h), Some(store)) => {
            let (h, store, stop) = (h.clone(), store.clone(), stop.clone());
            Some(
                std::thread::Builder::new()
                    .name("wcfs-upkeep".into())
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            if let Err(e) = store.maintain(&h) {
                                tracing::error!(error = %e, "data directory upkeep failed");
                            }
                            std::thread::park_timeout(Duration::from_secs(1));
                        }
                    })
                    .context("starting the upkeep thread")?,
            )
        }
        _ => None,
    };

    // Ready once mounted, and for a cluster node once caught up with a peer (bounded), so
    // that systemd starts the web server on a node that serves an up-to-date table.
    match (&tables, &cfg.net) {
        (Tables::Net(h), Some(net)) if !net.seeds.is_empty() => {
            let (h, stop) = (h.clone(), stop.clone());
            std::thread::Builder::new()
                .name("wcfs-ready".into())
                .spawn(move || {
                    let t = Instant::now();
                    while !caught_up(&h) && t.elapsed() < READY_WAIT {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let ok = caught_up(&h);
                    tracing::info!(caught_up = ok, after = ?t.elapsed(), "ready");
                    sd_notify("READY=1");
                })
                .context("starting the readiness thread")?;
        }
        _ => sd_notify("READY=1"),
    }

    let sig = crate::wait_for_signal(signals);
    tracing::info!(sig, "unmounting");
    sd_notify("STOPPING=1");
    stop.store(true, Ordering::Relaxed);
    if let (Some(m), Some(rt)) = (metrics, &tokio_rt) {
        rt.block_on(m.shutdown());
    }
    drop(admin);
    drop(info);
    guard.unmount().context("unmounting")?;
    if let Some(t) = upkeep {
        t.thread().unpark();
        let _ = t.join();
    }
    if let (Some(r), Some(rt)) = (runtime, &tokio_rt) {
        rt.block_on(r.shutdown());
    }
    // A snapshot at a clean stop makes the next start read one file, not a journal.
    match (&tables, &store) {
        (Tables::Local(h), Some(store)) => {
            store.snapshot(h).context("writing the final snapshot")?;
        }
        (Tables::Net(h), _) => {
            h.snapshot().context("writing the final snapshot")?;
        }
        _ => {}
    }
    Ok(())
}
