//! The node's TOML configuration (`wcfs mount --config FILE`), merged with command-line flags.
//!
//! Parsing is two steps: the file becomes a [`RawConfig`] (every key optional, unknown keys
//! refused by serde), flags overwrite its fields, and [`RawConfig::resolve`] validates every
//! value into a [`NodeConfig`], naming the key and the reason on the first bad one. Keeping
//! the raw form lets flags and file share one validation, so a bad `--seed` and a bad
//! `seeds = [...]` entry are refused with the same message.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use wcfs_gossip::journal::Durability;

/// Default interval between fsyncs under `policy = "interval"`.
pub const DEFAULT_INTERVAL_MS: u64 = 100;
/// Most RO directory fds kept open: each is a file descriptor of the daemon's, and a value
/// beyond this is more likely a typo than a plan (the default `ulimit -n` is far lower).
pub const MAX_RO_DIR_FDS: u64 = 1 << 20;
/// Longest TTL or fsync interval accepted (a day): larger values are almost surely a unit
/// mistake (seconds written as milliseconds).
const MAX_MS: u64 = 86_400_000;

/// The file as written: every key optional, nothing validated yet.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Node name; must be the name in the node's certificate.
    pub name: Option<String>,
    /// `[branches]`.
    #[serde(default)]
    pub branches: RawBranches,
    /// The node's data directory.
    pub data_dir: Option<PathBuf>,
    /// QUIC address (UDP), as peers reach it.
    pub listen: Option<String>,
    /// Addresses of nodes to join through.
    pub seeds: Option<Vec<String>>,
    /// `[tls]`.
    #[serde(default)]
    pub tls: RawTls,
    /// `[durability]`.
    #[serde(default)]
    pub durability: RawDurability,
    /// `[cache]`.
    #[serde(default)]
    pub cache: RawCache,
    /// `[union]`.
    #[serde(default)]
    pub union: RawUnion,
    /// `[admin]`.
    #[serde(default)]
    pub admin: RawAdmin,
    /// `[metrics]`.
    #[serde(default)]
    pub metrics: RawMetrics,
    /// `[log]`.
    #[serde(default)]
    pub log: RawLog,
}

/// `[branches]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBranches {
    /// The read-only branch.
    pub ro: Option<PathBuf>,
    /// The shared read-write branch.
    pub rw: Option<PathBuf>,
    /// Where the union is mounted.
    pub mountpoint: Option<PathBuf>,
}

/// `[tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// The cluster CA certificate.
    pub ca: Option<PathBuf>,
    /// This node's certificate.
    pub cert: Option<PathBuf>,
    /// This node's private key.
    pub key: Option<PathBuf>,
}

/// `[durability]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDurability {
    /// `"always"`, `"interval"` or `"never"`.
    pub policy: Option<String>,
    /// Fsync interval for `"interval"`.
    pub interval_ms: Option<u64>,
}

/// `[cache]`: the kernel cache lifetimes (see `wcfs_fs::FsConfig`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Entry and attribute TTL of paths served from the RO branch.
    pub ro_ttl_ms: Option<u64>,
    /// Entry and attribute TTL of paths served from the RW branch.
    pub rw_ttl_ms: Option<u64>,
    /// How long the kernel may remember that a name does not exist.
    pub negative_ttl_ms: Option<u64>,
    /// RO-branch directory fds kept open.
    pub ro_dir_fds: Option<u64>,
}

/// `[union]`: how the union is served (see `wcfs_fs::FsConfig`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUnion {
    /// Lookups of paths the table does not know also check the RW branch.
    pub strict: Option<bool>,
    /// RO files at least this large are read through FUSE passthrough (0: never).
    pub ro_passthrough_min_bytes: Option<u64>,
    /// Opens and closes never wait for the daemon; locks are per node.
    pub fast_open: Option<bool>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// The admin Unix socket.
    pub socket: Option<PathBuf>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Address of the Prometheus endpoint (TCP).
    pub listen: Option<String>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// A tracing filter (`info`, `wcfs_gossip=debug,info`, ...).
    pub level: Option<String>,
}

/// The cluster part of a node's configuration (present when `listen` is set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// QUIC address.
    pub listen: SocketAddr,
    /// Seeds.
    pub seeds: Vec<SocketAddr>,
    /// CA certificate path.
    pub ca: PathBuf,
    /// Node certificate path.
    pub cert: PathBuf,
    /// Node key path.
    pub key: PathBuf,
}

/// A validated configuration: everything a mount needs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's name, if given (checked against the certificate when networked).
    pub name: Option<String>,
    /// RO branch.
    pub ro: PathBuf,
    /// RW branch.
    pub rw: PathBuf,
    /// Mountpoint.
    pub mountpoint: PathBuf,
    /// Data directory; `None`: the table lives in memory only.
    pub data_dir: Option<PathBuf>,
    /// Cluster settings; `None`: a single node.
    pub net: Option<NetConfig>,
    /// Journal fsync policy.
    pub durability: Durability,
    /// FUSE settings (the cache TTLs from `[cache]`, the rest default).
    pub fs: wcfs_fs::FsConfig,
    /// Admin socket; `None` when there is neither `[admin] socket` nor a data directory.
    pub admin_socket: Option<PathBuf>,
    /// Prometheus endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Tracing filter.
    pub log_level: String,
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a value of the wrong type (toml names the key).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message (with the line and the key).
        message: String,
    },
    /// A value that parsed but makes no sense.
    #[error("{key}: {why}")]
    Invalid {
        /// The key, e.g. `seeds[2]` or `durability.policy`.
        key: String,
        /// Why it was refused.
        why: String,
    },
}

fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

fn addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|e| {
        invalid(
            key,
            format!("not an address: {s:?} ({e}); expected IP:PORT"),
        )
    })
}

fn ms(key: &str, v: Option<u64>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) if v > MAX_MS => Err(invalid(
            key,
            format!("{v} ms is more than a day (the unit is milliseconds)"),
        )),
        Some(v) => Ok(Duration::from_millis(v)),
    }
}

fn nonempty_path(key: &str, p: Option<PathBuf>) -> Result<Option<PathBuf>, ConfigError> {
    match p {
        Some(p) if p.as_os_str().is_empty() => Err(invalid(key, "empty path")),
        p => Ok(p),
    }
}

impl RawConfig {
    /// Parses TOML text (`path` is only for messages).
    pub fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        RawConfig::parse(&text, path)
    }

    /// The admin socket this configuration names, without validating anything else (for the
    /// client commands, which do not need branches or certificates).
    pub fn admin_socket(&self) -> Option<PathBuf> {
        self.admin
            .socket
            .clone()
            .or_else(|| self.data_dir.as_ref().map(|d| d.join("admin.sock")))
    }

    /// Validates every value; the first problem is returned, naming its key.
    pub fn resolve(self) -> Result<NodeConfig, ConfigError> {
        if let Some(n) = &self.name {
            wcfs_gossip::tls::validate_node_name(n).map_err(|e| invalid("name", e.to_string()))?;
        }
        let need = |key: &str, flag: &str, p: Option<PathBuf>| {
            nonempty_path(key, p)?.ok_or_else(|| invalid(key, format!("missing (or give {flag})")))
        };
        let ro = need("branches.ro", "--ro", self.branches.ro)?;
        let rw = need("branches.rw", "--rw", self.branches.rw)?;
        let mountpoint = need(
            "branches.mountpoint",
            "the MOUNTPOINT argument",
            self.branches.mountpoint,
        )?;
        let data_dir = nonempty_path("data_dir", self.data_dir)?;
        let admin_socket = nonempty_path("admin.socket", self.admin.socket)?
            .or_else(|| data_dir.as_ref().map(|d| d.join("admin.sock")));
        if let Some(s) = &admin_socket {
            // sockaddr_un's sun_path is 108 bytes, NUL included.
            let len = s.as_os_str().len();
            if len > 107 {
                let key = "admin.socket";
                return Err(invalid(
                    key,
                    format!(
                        "{} is {len} bytes; a Unix socket path has at most 107",
                        s.display()
                    ),
                ));
            }
        }

        let seeds = self.seeds.unwrap_or_default();
        let net = match self.listen {
            None => {
                if !seeds.is_empty() {
                    return Err(invalid(
                        "seeds",
                        "given without listen (a single node has no seeds)",
                    ));
                }
                for (k, v) in [
                    ("tls.ca", &self.tls.ca),
                    ("tls.cert", &self.tls.cert),
                    ("tls.key", &self.tls.key),
                ] {
                    if v.is_some() {
                        return Err(invalid(
                            k,
                            "given without listen (a single node uses no TLS)",
                        ));
                    }
                }
                None
            }
            Some(l) => {
                let listen = addr("listen", &l)?;
                if listen.port() == 0 {
                    return Err(invalid(
                        "listen",
                        "port 0: peers need a fixed port to reach the node",
                    ));
                }
                let seeds = seeds
                    .iter()
                    .enumerate()
                    .map(|(i, s)| addr(&format!("seeds[{i}]"), s))
                    .collect::<Result<Vec<_>, _>>()?;
                if data_dir.is_none() {
                    return Err(invalid(
                        "data_dir",
                        "required with listen (a cluster node must not forget what it acknowledged)",
                    ));
                }
                NetConfig {
                    listen,
                    seeds,
                    ca: need("tls.ca", "--ca", self.tls.ca)?,
                    cert: need("tls.cert", "--cert", self.tls.cert)?,
                    key: need("tls.key", "--key", self.tls.key)?,
                }
                .into()
            }
        };

        let durability = match self.durability.policy.as_deref() {
            None | Some("always") => {
                if self.durability.interval_ms.is_some() {
                    return Err(invalid(
                        "durability.interval_ms",
                        "only used with policy = \"interval\"",
                    ));
                }
                Durability::Always
            }
            Some("interval") => {
                let d = ms(
                    "durability.interval_ms",
                    self.durability.interval_ms,
                    Duration::from_millis(DEFAULT_INTERVAL_MS),
                )?;
                if d.is_zero() {
                    return Err(invalid(
                        "durability.interval_ms",
                        "0: use policy = \"always\" for an fsync per change",
                    ));
                }
                Durability::Interval(d)
            }
            Some("never") => Durability::Never,
            Some(other) => {
                return Err(invalid(
                    "durability.policy",
                    format!("{other:?}: expected \"always\", \"interval\" or \"never\""),
                ));
            }
        };

        let d = wcfs_fs::FsConfig::default();
        let ro_dir_fds = match self.cache.ro_dir_fds {
            None => d.ro_dir_fds,
            Some(n) if n > MAX_RO_DIR_FDS => {
                return Err(invalid(
                    "cache.ro_dir_fds",
                    format!("{n}: at most {MAX_RO_DIR_FDS} (each is an open file descriptor)"),
                ));
            }
            // Fits: bounded above, and usize is at least 32 bits on every target we build.
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let ro_passthrough_min = match self.union.ro_passthrough_min_bytes {
            None => d.ro_passthrough_min,
            Some(0) => u64::MAX,
            Some(n) => n,
        };
        let fs = wcfs_fs::FsConfig {
            ro_ttl: ms("cache.ro_ttl_ms", self.cache.ro_ttl_ms, d.ro_ttl)?,
            rw_ttl: ms("cache.rw_ttl_ms", self.cache.rw_ttl_ms, d.rw_ttl)?,
            negative_ttl: ms(
                "cache.negative_ttl_ms",
                self.cache.negative_ttl_ms,
                d.negative_ttl,
            )?,
            ro_dir_fds,
            ro_passthrough_min,
            strict: self.union.strict.unwrap_or(d.strict),
            fast_open: self.union.fast_open.unwrap_or(d.fast_open),
            ..d
        };

        let metrics_listen = self
            .metrics
            .listen
            .as_deref()
            .map(|s| addr("metrics.listen", s))
            .transpose()?;
        if metrics_listen.is_some() && net.is_none() {
            return Err(invalid(
                "metrics.listen",
                "given without listen (metrics are served by cluster nodes only; a single \
                 node has `wcfs status`)",
            ));
        }

        let log_level = self.log.level.unwrap_or_else(|| "info".into());
        tracing_subscriber::EnvFilter::try_new(&log_level)
            .map_err(|e| invalid("log.level", format!("{log_level:?}: {e}")))?;

        Ok(NodeConfig {
            name: self.name,
            ro,
            rw,
            mountpoint,
            data_dir,
            net,
            durability,
            fs,
            admin_socket,
            metrics_listen,
            log_level,
        })
    }
}

/// Values given on the command line; each one given replaces the file's.
#[derive(Debug, Default)]
pub struct Overrides {
    /// `--name`.
    pub name: Option<String>,
    /// `--ro`.
    pub ro: Option<PathBuf>,
    /// `--rw`.
    pub rw: Option<PathBuf>,
    /// MOUNTPOINT.
    pub mountpoint: Option<PathBuf>,
    /// `--data`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--seed` (repeatable; if any is given, they replace the file's list).
    pub seeds: Vec<String>,
    /// `--ca`.
    pub ca: Option<PathBuf>,
    /// `--cert`.
    pub cert: Option<PathBuf>,
    /// `--key`.
    pub key: Option<PathBuf>,
    /// `--admin-socket`.
    pub admin_socket: Option<PathBuf>,
    /// `--metrics`.
    pub metrics_listen: Option<String>,
    /// `--fast-open`.
    pub fast_open: Option<bool>,
}

impl Overrides {
    /// Writes every given value over `raw`.
    pub fn apply(self, mut raw: RawConfig) -> RawConfig {
        fn set<T>(dst: &mut Option<T>, v: Option<T>) {
            if v.is_some() {
                *dst = v;
            }
        }
        set(&mut raw.name, self.name);
        set(&mut raw.branches.ro, self.ro);
        set(&mut raw.branches.rw, self.rw);
        set(&mut raw.branches.mountpoint, self.mountpoint);
        set(&mut raw.data_dir, self.data_dir);
        set(&mut raw.listen, self.listen);
        if !self.seeds.is_empty() {
            raw.seeds = Some(self.seeds);
        }
        set(&mut raw.tls.ca, self.ca);
        set(&mut raw.tls.cert, self.cert);
        set(&mut raw.tls.key, self.key);
        set(&mut raw.admin.socket, self.admin_socket);
        set(&mut raw.metrics.listen, self.metrics_listen);
        set(&mut raw.union.fast_open, self.fast_open);
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        RawConfig::parse(text, Path::new("test.toml"))?.resolve()
    }

    const MINIMAL: &str = "[branches]\nro = \"/ro\"\nrw = \"/rw\"\nmountpoint = \"/mnt\"\n";

    #[test]
    fn the_shipped_example_parses_and_documents_the_defaults() {
        let raw = RawConfig::parse(
            include_str!("../dist/wcfs.toml"),
            Path::new("dist/wcfs.toml"),
        )
        .unwrap();
        let c = raw.resolve().unwrap();
        let net = c.net.expect("the example is a cluster node");
        assert_eq!(net.seeds.len(), 2);
        assert_eq!(c.name.as_deref(), Some("web1"));
        // The example states the defaults: they must be the defaults.
        assert_eq!(c.durability, Durability::Always);
        let d = wcfs_fs::FsConfig::default();
        assert_eq!(
            (c.fs.ro_ttl, c.fs.rw_ttl, c.fs.negative_ttl),
            (d.ro_ttl, d.rw_ttl, d.negative_ttl)
        );
        assert_eq!(
            (
                c.fs.strict,
                c.fs.ro_passthrough_min,
                c.fs.ro_dir_fds,
                c.fs.fast_open
            ),
            (d.strict, d.ro_passthrough_min, d.ro_dir_fds, d.fast_open)
        );
        assert_eq!(c.metrics_listen, None);
        assert_eq!(
            c.admin_socket,
            Some(PathBuf::from("/var/lib/wcfs/admin.sock"))
        );
        assert_eq!(c.log_level, "info");
    }

    #[test]
    fn a_minimal_file_is_a_single_node_with_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert!(c.net.is_none());
        assert_eq!(c.data_dir, None);
        assert_eq!(c.admin_socket, None);
        assert_eq!(c.durability, Durability::Always);
        assert_eq!(c.log_level, "info");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let e = parse(&format!("{MINIMAL}colour = \"red\"\n")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = parse(&format!("{MINIMAL}[cache]\nattr_ttl = 5\n")).unwrap_err();
        assert!(e.to_string().contains("attr_ttl"), "{e}");
        let e = parse(&format!("{MINIMAL}[bogus]\n")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_their_key_and_why() {
        let net = "data_dir = \"/d\"\nlisten = \"127.0.0.1:7946\"\n\
                   [tls]\nca = \"/ca\"\ncert = \"/c\"\nkey = \"/k\"\n";
        let text = format!("seeds = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"web3\"]\n{net}{MINIMAL}");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("seeds[2]: not an address: \"web3\""), "{e}");
        let single = |extra: &str| parse(&format!("{extra}{MINIMAL}")).unwrap_err().to_string();
        let e = single("listen = \"nowhere\"\n");
        assert!(e.starts_with("listen: not an address"), "{e}");
        let e = single("name = \"Web_1\"\n");
        assert!(e.starts_with("name:"), "{e}");
        let e = single("[durability]\npolicy = \"sometimes\"\n");
        assert!(e.starts_with("durability.policy: \"sometimes\""), "{e}");
        let e = single("[durability]\npolicy = \"interval\"\ninterval_ms = 0\n");
        assert!(e.starts_with("durability.interval_ms"), "{e}");
        let e = single("[metrics]\nlisten = \"localhost\"\n");
        assert!(e.starts_with("metrics.listen: not an address"), "{e}");
        let e = single("[metrics]\nlisten = \"127.0.0.1:9464\"\n");
        assert!(e.starts_with("metrics.listen: given without listen"), "{e}");
        let e = single("[cache]\nro_dir_fds = 2000000\n");
        assert!(e.starts_with("cache.ro_dir_fds: 2000000"), "{e}");
        let e = single("[union]\nstrict = \"yes\"\n");
        assert!(e.contains("strict"), "{e}");
        let e = single("[union]\nro_passthrough_min_bytes = -1\n");
        assert!(e.contains("ro_passthrough_min_bytes"), "{e}");
        let e = single("[union]\nro_passthrough_min = 5\n");
        assert!(e.contains("ro_passthrough_min"), "{e}");
        let e = single("[log]\nlevel = \"wcfs=loud\"\n");
        assert!(e.starts_with("log.level"), "{e}");
        let e = single("[cache]\nro_ttl_ms = 100000000000\n");
        assert!(e.starts_with("cache.ro_ttl_ms"), "{e}");
        // Wrong type: toml names the key.
        let e = single("[cache]\nrw_ttl_ms = \"1s\"\n");
        assert!(e.contains("rw_ttl_ms"), "{e}");
        // listen without a data dir or certificates.
        let e = single("listen = \"127.0.0.1:7946\"\n");
        assert!(e.starts_with("data_dir: required with listen"), "{e}");
        let e = single("data_dir = \"/d\"\nlisten = \"127.0.0.1:7946\"\n");
        assert!(e.starts_with("tls.ca: missing"), "{e}");
        let e = parse("[branches]\nro = \"/ro\"\nrw = \"/rw\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("branches.mountpoint: missing"), "{e}");
    }

    #[test]
    fn interval_durability_and_ttls_are_taken_from_the_file() {
        let c = parse(&format!(
            "{MINIMAL}[durability]\npolicy = \"interval\"\ninterval_ms = 250\n\
             [cache]\nro_ttl_ms = 5000\nnegative_ttl_ms = 0\n"
        ))
        .unwrap();
        assert_eq!(
            c.durability,
            Durability::Interval(Duration::from_millis(250))
        );
        assert_eq!(c.fs.ro_ttl, Duration::from_secs(5));
        assert_eq!(c.fs.negative_ttl, Duration::ZERO);
        assert_eq!(c.fs.rw_ttl, wcfs_fs::FsConfig::default().rw_ttl);
    }

    #[test]
    fn union_settings_are_taken_from_the_file() {
        let c = parse(&format!(
            "{MINIMAL}[union]\nstrict = true\nro_passthrough_min_bytes = 4096\nfast_open = true\n\
             [cache]\nro_dir_fds = 0\n"
        ))
        .unwrap();
        assert!(c.fs.strict);
        assert!(c.fs.fast_open);
        assert_eq!(c.fs.ro_passthrough_min, 4096);
        assert_eq!(c.fs.ro_dir_fds, 0);
        // 0 turns RO passthrough off (rather than passing every RO file through).
        let c = parse(&format!("{MINIMAL}[union]\nro_passthrough_min_bytes = 0\n")).unwrap();
        assert_eq!(c.fs.ro_passthrough_min, u64::MAX);
    }

    #[test]
    fn flags_override_the_file() {
        let raw = RawConfig::parse(
            include_str!("../dist/wcfs.toml"),
            Path::new("dist/wcfs.toml"),
        )
        .unwrap();
        let o = Overrides {
            ro: Some("/other-ro".into()),
            mountpoint: Some("/other-mnt".into()),
            data_dir: Some("/tmp/d".into()),
            listen: Some("127.0.0.1:9000".into()),
            seeds: vec!["127.0.0.1:9001".into()],
            key: Some("/k.pem".into()),
            metrics_listen: Some("127.0.0.1:9464".into()),
            ..Overrides::default()
        };
        let c = o.apply(raw).resolve().unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(c.ro, PathBuf::from("/other-ro"));
        assert_eq!(
            c.rw,
            PathBuf::from("/mnt/nfs/site-rw"),
            "not overridden: the file's"
        );
        assert_eq!(c.mountpoint, PathBuf::from("/other-mnt"));
        assert_eq!(c.admin_socket, Some(PathBuf::from("/tmp/d/admin.sock")));
        let net = c.net.unwrap();
        assert_eq!(net.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(net.seeds, vec!["127.0.0.1:9001".parse().unwrap()]);
        assert_eq!(net.key, PathBuf::from("/k.pem"));
        assert_eq!(net.ca, PathBuf::from("/etc/wcfs/ca.pem"));
        // A bad flag is refused like the same value in the file.
        let o = Overrides {
            seeds: vec!["127.0.0.1:1".into(), "nope".into()],
            ..Overrides::default()
        };
        let raw = RawConfig::parse(include_str!("../dist/wcfs.toml"), Path::new("x")).unwrap();
        let e = o.apply(raw).resolve().unwrap_err().to_string();
        assert!(e.starts_with("seeds[1]: not an address"), "{e}");
    }
}
