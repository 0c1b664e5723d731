//! The admin socket: a Unix stream socket (mode 0600) where `wcfs status`, `wcfs table` and
//! `wcfs invalidate` talk to a running node.
//!
//! Protocol: line-delimited JSON. Each request is one line of at most [`MAX_REQUEST`] bytes,
//! `{"cmd":"status"}`, `{"cmd":"table_get","path":P}`, `{"cmd":"table_ls","dir":D}` or
//! `{"cmd":"invalidate","path":P}` (`dir`/`path` optional where the root or everything is
//! meant); each answer is one line, `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`.
//! Paths are relative to the mount, or absolute under the mountpoint. A connection may send
//! several requests; it is closed after [`IDLE`] without one. At most [`MAX_CLIENTS`]
//! connections are served at once; more are answered "busy" and closed.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde::Deserialize;
use serde_json::{Value, json};
use wcfs_core::path::WPath;

use crate::node::{NodeInfo, Tables};

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 8192;
/// Connections served at once.
pub const MAX_CLIENTS: usize = 8;
/// A connection idle (or stuck writing) this long is closed.
pub const IDLE: Duration = Duration::from_secs(10);
/// Most children a `table_ls` answer lists.
pub const MAX_LS: usize = 10_000;
/// Longest `invalidate` waits for the kernel.
const INVALIDATE_WAIT: Duration = Duration::from_secs(30);

/// A request, as sent on the socket.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The node's state.
    Status {},
    /// One table entry.
    TableGet {
        /// The path.
        path: String,
    },
    /// A directory's children with table state.
    TableLs {
        /// The directory (`None` or empty: the root).
        #[serde(default)]
        dir: Option<String>,
    },
    /// Drop kernel caches under a path (`None`: everything).
    Invalidate {
        /// The path.
        #[serde(default)]
        path: Option<String>,
    },
}

/// The running server. Dropping it stops accepting, and removes the socket file.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds `path` (replacing a stale socket file; refusing if a node answers there) and
    /// serves `info` on a thread.
    pub(crate) fn start(path: &Path, info: Arc<NodeInfo>) -> anyhow::Result<Server> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    anyhow::bail!("another node is serving it");
                }
                // Left by a node that was killed: nobody listens.
                std::fs::remove_file(path).context("removing the stale socket")?;
            }
            Ok(_) => anyhow::bail!("exists and is not a socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("stat"),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).context("creating its directory")?;
        }
        let listener = UnixListener::bind(path).context("bind")?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .context("chmod 0600")?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wcfs-admin".into())
            .spawn(move || accept_loop(listener, info, st))
            .context("starting the admin thread")?;
        tracing::info!(socket = %path.display(), "admin socket ready");
        Ok(Server {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocking accept.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, info: Arc<NodeInfo>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept");
                // EMFILE and friends: do not spin.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let _ = conn.set_read_timeout(Some(IDLE));
        let _ = conn.set_write_timeout(Some(IDLE));
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = writeln!(conn, "{}", error_line("busy: too many admin clients"));
            continue;
        }
        let (info, active2) = (info.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("wcfs-admin-conn".into())
            .spawn(move || {
                if let Err(e) = serve(conn, &info) {
                    tracing::debug!(error = %e, "admin connection");
                }
                active2.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "admin connection thread");
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn error_line(msg: &str) -> String {
    json!({"ok": false, "error": msg}).to_string()
}

fn serve(conn: UnixStream, info: &NodeInfo) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut rd = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut rd)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            let msg = if line.len() > MAX_REQUEST {
                format!("request longer than {MAX_REQUEST} bytes")
            } else {
                "request not terminated by a newline".into()
            };
            writeln!(out, "{}", error_line(&msg))?;
            return Ok(());
        }
        let reply = match serde_json::from_slice::<Request>(&line) {
            Ok(req) => match handle(&req, info) {
                Ok(v) => json!({"ok": true, "result": v}).to_string(),
                Err(e) => error_line(&format!("{e:#}")),
            },
            Err(e) => error_line(&format!("bad request: {e}")),
        };
        writeln!(out, "{reply}")?;
    }
}

/// A path as the user gave it: relative to the mount, or absolute under the mountpoint.
/// `None` is the root.
fn union_path(info: &NodeInfo, p: &str) -> anyhow::Result<Option<WPath>> {
    let rel = match Path::new(p).strip_prefix(&info.mountpoint) {
        Ok(r) => r.to_str().unwrap_or(p),
        Err(_) => p,
    };
    let rel = rel.trim_matches('/');
    if rel.is_empty() || rel == "." {
        return Ok(None);
    }
    WPath::new(rel.as_bytes())
        .map(Some)
        .map_err(|e| anyhow::anyhow!("path {p:?}: {e}"))
}

fn handle(req: &Request, info: &NodeInfo) -> anyhow::Result<Value> {
    match req {
        Request::Status {} => Ok(status(info)),
        Request::TableGet { path } => {
            let p = union_path(info, path)?
                .ok_or_else(|| anyhow::anyhow!("the root has no table entry"))?;
            Ok(info.tables.with_table(|t| {
                let entries: Vec<Value> = t
                    .get(&p)
                    .map(|r| {
                        r.entries
                            .iter()
                            .map(|e| {
                                json!({
                                    "replica": e.dot.replica.to_string(),
                                    "seq": e.dot.seq,
                                    "live": e.live.map(|k| format!("{k:?}")),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                json!({
                    "path": p.to_string(),
                    "resolution": format!("{:?}", t.resolve(&p)),
                    "entries": entries,
                })
            }))
        }
        Request::TableLs { dir } => {
            let d = match dir {
                Some(d) => union_path(info, d)?,
                None => None,
            };
            Ok(info.tables.with_table(|t| {
                let children = t.children(d.as_ref());
                let total = children.len();
                let list: Vec<Value> = children
                    .iter()
                    .take(MAX_LS)
                    .map(|c| {
                        let res = WPath::child_of(d.as_ref(), &c.name)
                            .map(|p| format!("{:?}", t.resolve(&p)))
                            .unwrap_or_else(|_| "?".into());
                        json!({
                            "name": String::from_utf8_lossy(&c.name),
                            "kind": c.kind.map(|k| format!("{k:?}")),
                            "has_children": c.has_children,
                            "resolution": res,
                        })
                    })
                    .collect();
                json!({
                    "dir": d.map(|d| d.to_string()).unwrap_or_default(),
                    "children": list,
                    "total": total,
                    "truncated": total > MAX_LS,
                })
            }))
        }
        Request::Invalidate { path } => {
            let p = match path {
                Some(p) => union_path(info, p)?,
                None => None,
            };
            let dropped = info
                .inval
                .drop_tree(p.as_ref())
                .recv_timeout(INVALIDATE_WAIT)
                .map_err(|_| {
                    anyhow::anyhow!(
                        "the invalidation queue is full or the mount is gone; try again"
                    )
                })?;
            tracing::info!(path = ?p.as_ref().map(|p| p.to_string()), dropped, "kernel caches invalidated");
            Ok(json!({ "path": p.map(|p| p.to_string()), "dropped": dropped }))
        }
    }
}

fn secs_since(t: SystemTime) -> Option<u64> {
    SystemTime::now()
        .duration_since(t)
        .ok()
        .map(|d| d.as_secs())
}

fn unix(t: SystemTime) -> Option<u64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Everything `wcfs status` shows.
fn status(info: &NodeInfo) -> Value {
    let (ts, counter) = info.tables.with_table(|t| (t.stats(), t.counter()));
    let store = match &info.tables {
        Tables::Net(h) => Some(h.store()),
        Tables::Local(_) => info.store.as_deref(),
    };
    let (journal, snapshot) = match store {
        Some(s) => {
            let j = s.journal().stats();
            let snap = std::fs::metadata(s.dir().join("table.snap")).ok().map(|m| {
                let at = m.modified().ok();
                json!({
                    "bytes": m.len(),
                    "written_unix": at.and_then(unix),
                    "age_s": at.and_then(secs_since),
                })
            });
            (
                json!({
                    "bytes": j.bytes,
                    "synced_bytes": j.synced_bytes,
                    "appends": j.appends,
                    "fsyncs": j.fsyncs,
                    "durability": format!("{:?}", s.journal().durability()),
                }),
                snap.unwrap_or(Value::Null),
            )
        }
        None => (Value::Null, Value::Null),
    };
    let fs: serde_json::Map<String, Value> = wcfs_fs::OpKind::ALL
        .iter()
        .map(|k| {
            (
                format!("{k:?}").to_lowercase(),
                json!(info.fs_stats.get(*k)),
            )
        })
        .collect();
    let mut v = json!({
        "name": info.name,
        "replica": info.replica.to_string(),
        "generation": info.generation,
        "uptime_s": info.started.elapsed().as_secs(),
        "started_unix": unix(info.started_at),
        "mountpoint": info.mountpoint.display().to_string(),
        "listen": info.listen.map(|a| a.to_string()),
        "fast_open": info.fast_open,
        "table": {
            "live_paths": ts.live_paths,
            "tombstones": ts.tombstones,
            "nodes": ts.nodes,
            "heap_bytes": ts.heap_bytes,
            "counter": counter,
        },
        "journal": journal,
        "snapshot": snapshot,
        "rw_syscalls": fs,
        "members": [],
    });
    if let Tables::Net(h) = &info.tables {
        let ns = h.node_stats();
        let rs = h.stats();
        let tr = h.transport_stats();
        let peers = h.peers();
        let members: Vec<Value> = peers
            .iter()
            .map(|p| {
                json!({
                    "name": (!p.id.name.as_str().is_empty()).then(|| p.id.name.to_string()),
                    "addr": p.id.addr.to_string(),
                    "replica": (p.id.replica.0 != 0).then(|| p.id.replica.to_string()),
                    "generation": p.id.generation,
                    "state": if p.up { "up" } else { "down" },
                    "behind": p.peer_behind,
                    "ahead": p.we_behind,
                    "queued_bytes": p.queued,
                })
            })
            .collect();
        v["members"] = json!(members);
        v["queues"] = json!({
            "node_queued_bytes": peers.iter().map(|p| p.queued).sum::<usize>(),
        });
        v["drops"] = json!({
            "pushes_dropped": ns.pushes_dropped,
            "sends_dropped": rs.sends_dropped,
            "remote_log_dropped": rs.remote_log_dropped,
            "transport_queue_full": tr.dropped_queue_full,
            "transport_unreachable": tr.dropped_unreachable,
            "transport_too_large": tr.dropped_too_large,
            "transport_inbound": tr.dropped_inbound,
        });
        v["sync"] = json!({
            "msgs_sent": ns.msgs_sent,
            "bytes_sent": ns.bytes_sent,
            "records_merged": ns.records_merged,
            "remote_logged": rs.remote_logged,
            "bad_messages": ns.bad_messages,
            "snapshots_sent": ns.snapshots_sent,
            "resets": ns.resets,
            "transport_sent": tr.sent,
            "transport_received": tr.received,
            "dials": tr.dials,
            "handshakes_failed": tr.handshakes_failed,
        });
    }
    v
}

// ---- the client side ----

/// Where the client looks for the socket when told nothing.
pub const DEFAULT_CONFIG: &str = "/etc/wcfs/wcfs.toml";
/// The socket of a node whose data directory is the packaged default.
pub const DEFAULT_SOCKET: &str = "/var/lib/wcfs/admin.sock";

/// `--socket PATH`, else the socket `--config FILE` names, else the default config's, else
/// [`DEFAULT_SOCKET`].
pub fn socket_path(socket: Option<PathBuf>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s);
    }
    let cfg = match config {
        Some(c) => Some(c.to_owned()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    if let Some(c) = cfg {
        let raw = crate::config::RawConfig::load(&c)?;
        return raw.admin_socket().ok_or_else(|| {
            anyhow::anyhow!(
                "{} names no admin socket (set data_dir or [admin] socket)",
                c.display()
            )
        });
    }
    Ok(PathBuf::from(DEFAULT_SOCKET))
}

/// Sends one request and returns its result (or the node's error).
pub fn call(socket: &Path, req: &Value) -> anyhow::Result<Value> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the node's admin socket ({e}): is the node running? looked at {}",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(INVALIDATE_WAIT + Duration::from_secs(5)))?;
    s.set_write_timeout(Some(IDLE))?;
    writeln!(s, "{req}")?;
    let mut line = String::new();
    // Answers are bounded by the server (MAX_LS children); this bounds a broken peer.
    BufReader::new(s.take(64 << 20))
        .read_line(&mut line)
        .context("reading the answer")?;
    let v: Value = serde_json::from_str(&line).context("parsing the answer")?;
    if v["ok"] == Value::Bool(true) {
        Ok(v["result"].clone())
    } else {
        anyhow::bail!(
            "the node refused: {}",
            v["error"].as_str().unwrap_or("(no message)")
        )
    }
}

fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut f = n as f64;
    let mut i = 0;
    while f >= 1024.0 && i + 1 < U.len() {
        f /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{f:.1} {}", U[i])
    }
}

fn dur(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// A peer this far behind (or ahead) is flagged in the human view.
pub const LAG_FLAG: u64 = 1000;

/// The human view of a `status` result. Down and lagging peers get a `!` in the first
/// column and say so in capitals.
pub fn render_status(v: &Value) -> String {
    use std::fmt::Write as _;
    let u = |k: &Value| k.as_u64().unwrap_or(0);
    let s = |k: &Value| k.as_str().unwrap_or("-").to_owned();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "node     {}  replica {}  generation {}  up {}",
        s(&v["name"]),
        s(&v["replica"]),
        u(&v["generation"]),
        dur(u(&v["uptime_s"]))
    );
    let _ = writeln!(
        o,
        "mount    {}  listen {}  {}",
        s(&v["mountpoint"]),
        s(&v["listen"]),
        if v["fast_open"].as_bool() == Some(true) {
            "opens: fast (locks hold on this node only)"
        } else {
            "opens: through the daemon (locks hold across nodes)"
        }
    );
    let t = &v["table"];
    let _ = writeln!(
        o,
        "table    {} paths, {} tombstones, {}",
        u(&t["live_paths"]),
        u(&t["tombstones"]),
        bytes(u(&t["heap_bytes"]))
    );
    let j = &v["journal"];
    if j.is_null() {
        let _ = writeln!(
            o,
            "journal  none (no data directory: the table is in memory only)"
        );
    } else {
        let _ = writeln!(
            o,
            "journal  {} ({} appends, {} fsyncs, {})",
            bytes(u(&j["bytes"])),
            u(&j["appends"]),
            u(&j["fsyncs"]),
            s(&j["durability"])
        );
    }
    let sn = &v["snapshot"];
    if sn.is_null() {
        let _ = writeln!(o, "snapshot none yet");
    } else {
        let _ = writeln!(
            o,
            "snapshot {}, {} ago",
            bytes(u(&sn["bytes"])),
            dur(u(&sn["age_s"]))
        );
    }
    if let Some(d) = v["drops"].as_object() {
        let q = u(&v["queues"]["node_queued_bytes"]);
        let total: u64 = d.values().map(u).sum();
        let detail: Vec<String> = d
            .iter()
            .filter(|(_, n)| u(n) > 0)
            .map(|(k, n)| format!("{k} {}", u(n)))
            .collect();
        let _ = writeln!(
            o,
            "queues   {} queued; drops {}{}",
            bytes(q),
            total,
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", detail.join(", "))
            }
        );
    }
    let members = v["members"].as_array().cloned().unwrap_or_default();
    if v["listen"].is_null() {
        let _ = writeln!(o, "members  single node");
        return o;
    }
    let _ = writeln!(o, "members  {}", members.len());
    let _ = writeln!(
        o,
        "  {:1} {:<16} {:<22} {:<10} {:>10} {:>10} {:>10}  REPLICA",
        "!", "NAME", "ADDRESS", "STATE", "BEHIND", "AHEAD", "QUEUED"
    );
    for m in &members {
        let up = m["state"] == "up";
        let behind = m["behind"].as_u64();
        let ahead = m["ahead"].as_u64();
        let lag = behind.unwrap_or(0).max(ahead.unwrap_or(0));
        let (flag, state) = if !up {
            ("!", "DOWN".to_owned())
        } else if lag >= LAG_FLAG {
            ("!", format!("LAG {lag}"))
        } else if behind.is_none() {
            ("", "up (no digest yet)".to_owned())
        } else {
            ("", "up".to_owned())
        };
        let n = |x: Option<u64>| x.map_or("-".to_owned(), |x| x.to_string());
        let _ = writeln!(
            o,
            "  {:1} {:<16} {:<22} {:<10} {:>10} {:>10} {:>10}  {}",
            flag,
            s(&m["name"]),
            s(&m["addr"]),
            state,
            n(behind),
            n(ahead),
            bytes(u(&m["queued_bytes"])),
            s(&m["replica"])
        );
    }
    o
}

/// The human view of a `table_get` result.
pub fn render_get(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut o = format!(
        "{}  resolution {}\n",
        v["path"].as_str().unwrap_or("?"),
        v["resolution"].as_str().unwrap_or("?")
    );
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        o.push_str("  no table entry (served as its resolution says)\n");
    }
    for e in entries {
        let live = e["live"]
            .as_str()
            .map_or("superseded".into(), |k| format!("live {k}"));
        let _ = writeln!(
            o,
            "  dot {}:{}  {}",
            e["replica"].as_str().unwrap_or("?"),
            e["seq"],
            live
        );
    }
    o
}

/// The human view of a `table_ls` result.
pub fn render_ls(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    for c in v["children"].as_array().cloned().unwrap_or_default() {
        let name = c["name"].as_str().unwrap_or("?");
        let slash = if c["has_children"] == Value::Bool(true) {
            "/"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "{:<10} {:<9} {name}{slash}",
            c["resolution"].as_str().unwrap_or("?"),
            c["kind"].as_str().unwrap_or("-"),
        );
    }
    if v["truncated"] == Value::Bool(true) {
        let _ = writeln!(o, "... {} children in all", v["total"]);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_unknown_fields_are_refused() {
        let r: Request = serde_json::from_str(r#"{"cmd":"table_get","path":"a/b"}"#).unwrap();
        assert_eq!(r, Request::TableGet { path: "a/b".into() });
        let r: Request = serde_json::from_str(r#"{"cmd":"invalidate"}"#).unwrap();
        assert_eq!(r, Request::Invalidate { path: None });
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"status","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }

    #[test]
    fn the_human_status_marks_down_and_lagging_peers() {
        let v = json!({
            "name": "web1", "replica": "00ab", "generation": 2, "uptime_s": 3700,
            "mountpoint": "/var/www", "listen": "10.0.0.1:7946",
            "table": {"live_paths": 10, "tombstones": 1, "heap_bytes": 2048},
            "journal": null, "snapshot": null,
            "drops": {"pushes_dropped": 0, "sends_dropped": 3}, "queues": {"node_queued_bytes": 0},
            "members": [
                {"addr": "10.0.0.2:7946", "state": "up", "behind": 0, "ahead": 0, "queued_bytes": 0, "replica": "01"},
                {"addr": "10.0.0.3:7946", "state": "down", "behind": null, "ahead": null, "queued_bytes": 0, "replica": null},
                {"addr": "10.0.0.4:7946", "state": "up", "behind": 1234, "ahead": 0, "queued_bytes": 10, "replica": "02"},
            ],
        });
        let out = render_status(&v);
        assert!(out.contains("locks hold across nodes"), "{out}");
        let line = |addr: &str| out.lines().find(|l| l.contains(addr)).unwrap().to_owned();
        assert!(
            line("10.0.0.3").trim_start().starts_with('!') && line("10.0.0.3").contains("DOWN"),
            "{out}"
        );
        assert!(
            line("10.0.0.4").trim_start().starts_with('!') && line("10.0.0.4").contains("LAG 1234"),
            "{out}"
        );
        assert!(!line("10.0.0.2").trim_start().starts_with('!'), "{out}");
        assert!(out.contains("drops 3 (sends_dropped 3)"), "{out}");
        assert!(out.contains("up 1h01m"), "{out}");
    }
}
