//! The node's network transport: one quinn endpoint on one UDP port that both listens and
//! dials, with mutual TLS against the cluster CA ([`crate::tls`]).
//!
//! Two channels, matching [`wcfs_core::node::Channel`]:
//! - **datagrams** (SWIM): unreliable, at most the connection's datagram size;
//! - **streams** (sync records, snapshots): one unidirectional QUIC stream per message, framed
//!   as the sender's wall-clock time when the message was queued (little-endian `u64`
//!   microseconds since the Unix epoch, for the receiver's propagation-latency metric), a
//!   little-endian `u32` length, then the bytes, at most [`TransportConfig::max_message`].
//!
//! One connection per peer address is reused for everything; a lost connection is redialed on
//! the next message, with exponential backoff between failed dials (messages for a peer in
//! backoff are dropped and counted: the sync engine repairs by anti-entropy). Each peer has a
//! bounded outbound queue per channel (messages and bytes); a full queue drops the new message
//! (counted) rather than slowing the caller or other peers. Inbound messages go to one bounded
//! channel: datagrams are dropped when it is full, streams wait (bounded by the number of
//! concurrent streams a peer may open).
//!
//! A peer whose certificate does not chain to our CA fails the handshake: nothing it sends
//! reaches the caller. Rejections are counted and logged at most once a minute per IP address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, VarInt};
use tokio::sync::mpsc;
use wcfs_core::node::{Channel, NodeName};

use crate::tls::{self, NodeTls};

/// Tunables of the transport. [`TransportConfig::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// The UDP address to bind (listen and dial from).
    pub listen: SocketAddr,
    /// Largest stream message, in bytes (default 16 MiB); larger ones are refused on send and
    /// on receipt.
    pub max_message: usize,
    /// Outbound queue bound per peer and channel, in messages (default 1024).
    pub peer_queue_msgs: usize,
    /// Outbound queue bound per peer, in bytes over both channels (default 32 MiB).
    pub peer_queue_bytes: usize,
    /// Inbound channel bound, in messages (default 4096).
    pub inbound_queue: usize,
    /// Most peers (addresses) tracked at once (default 1024); messages to more are dropped.
    pub max_peers: usize,
    /// Unidirectional streams a peer may have open towards us at once (default 64).
    pub max_streams: u32,
    /// Bytes of stream messages being received at once, over all peers (default 64 MiB; raised
    /// to `max_message` if smaller). A stream whose length does not fit waits, and QUIC flow
    /// control pushes back on its sender.
    pub max_inflight_bytes: usize,
    /// A connection without any traffic for this long is dropped (default 10 s).
    pub idle_timeout: Duration,
    /// Keep-alive interval on connections (default 2 s; below `idle_timeout`).
    pub keep_alive: Duration,
    /// Longest a dial may take before it counts as failed (default 3 s).
    pub dial_timeout: Duration,
    /// First backoff after a failed dial (default 100 ms); doubles per failure.
    pub backoff_min: Duration,
    /// Longest backoff between dials (default 5 s).
    pub backoff_max: Duration,
}

impl TransportConfig {
    /// The defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> TransportConfig {
        TransportConfig {
            listen,
            max_message: 16 << 20,
            peer_queue_msgs: 1024,
            peer_queue_bytes: 32 << 20,
            inbound_queue: 4096,
            max_peers: 1024,
            max_streams: 64,
            max_inflight_bytes: 64 << 20,
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            dial_timeout: Duration::from_secs(3),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// A message received from an authenticated peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// The peer's UDP address (its listen address: peers dial from the port they listen on).
    pub from: SocketAddr,
    /// The node name from the peer's verified certificate.
    pub peer: Arc<str>,
    /// How it arrived.
    pub channel: Channel,
    /// The message.
    pub bytes: Vec<u8>,
    /// For streams: when the sender queued the message, by the sender's wall clock (Unix
    /// microseconds). Only comparable with this node's clock up to the clock skew between
    /// the two. `None` for datagrams.
    pub sent_unix_us: Option<u64>,
}

/// Why [`Transport::send`] did not queue a message (each is also counted in [`TransportStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The peer's outbound queue is full.
    #[error("peer queue full")]
    QueueFull,
    /// The message exceeds the channel's size limit.
    #[error("message too large")]
    TooLarge,
    /// Too many peers are tracked already.
    #[error("too many peers")]
    TooManyPeers,
    /// The transport is closed.
    #[error("transport closed")]
    Closed,
}

/// What can fail setting the transport up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// rustls' configuration is unusable for QUIC (e.g. no TLS 1.3 suite).
    #[error("QUIC TLS: {0}")]
    Quic(String),
    /// The UDP socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One peer (address) as the transport sees it, for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The node name in the certificate of the last connection to it (`None` before any).
    pub name: Option<Arc<str>>,
    /// Messages waiting in its outbound queues (both channels).
    pub queued_msgs: usize,
    /// Bytes waiting in its outbound queues.
    pub queued_bytes: usize,
    /// Messages handed to its connection.
    pub sent: u64,
    /// Messages received from it and delivered to the inbound channel.
    pub received: u64,
    /// Outbound messages dropped because its queue was full.
    pub dropped_queue_full: u64,
    /// Outbound messages dropped because it could not be reached (dial failed or backoff).
    pub dropped_unreachable: u64,
    /// Outbound messages dropped because its certificate named another node than intended.
    pub dropped_wrong_peer: u64,
}

/// Per-peer counters, shared by the peer's sender tasks and the connection's reader.
#[derive(Default)]
struct PeerCounters {
    name: Mutex<Option<Arc<str>>>,
    sent: AtomicU64,
    received: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_unreachable: AtomicU64,
    dropped_wrong_peer: AtomicU64,
}

impl PeerCounters {
    fn set_name(&self, name: &Arc<str>) {
        let mut n = lock(&self.name);
        if n.as_deref() != Some(&**name) {
            *n = Some(name.clone());
        }
    }
}

/// Wall-clock now in Unix microseconds (0 if the clock is before the epoch).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Counters since the transport started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Messages handed to a connection.
    pub sent: u64,
    /// Messages delivered to the inbound channel.
    pub received: u64,
    /// Outbound messages dropped because a peer queue was full.
    pub dropped_queue_full: u64,
    /// Outbound messages dropped because the peer could not be reached (dial failed or backoff).
    pub dropped_unreachable: u64,
    /// Messages refused for size (outbound or inbound).
    pub dropped_too_large: u64,
    /// Inbound datagrams dropped because the inbound channel was full.
    pub dropped_inbound: u64,
    /// Dials attempted.
    pub dials: u64,
    /// Handshakes that failed (bad or missing certificate, timeout, wrong protocol).
    pub handshakes_failed: u64,
    /// Outbound messages dropped because the connection's certificate named another node than
    /// the one the message was meant for.
    pub dropped_wrong_peer: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_unreachable: AtomicU64,
    dropped_too_large: AtomicU64,
    dropped_inbound: AtomicU64,
    dials: AtomicU64,
    handshakes_failed: AtomicU64,
    dropped_wrong_peer: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// How often a failing address is logged.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(60);
/// Addresses remembered by the rejection log (bounded; forgotten wholesale when full).
const REJECT_LOG_CAP: usize = 1024;

/// The per-peer connection slot, shared by the peer's sender tasks.
#[derive(Default)]
struct Link {
    /// The connection and the node name its certificate carries.
    conn: Option<(Connection, Arc<str>)>,
    /// No dial before this instant (backoff after failures).
    next_dial: Option<Instant>,
    backoff: Duration,
}

/// A connection the peer opened to us that could not be installed in its [`Link`] at once
/// because the link was busy (typically: our own dial to the peer is pending). The link's
/// holder takes it from here, and a pending dial gives way to it.
#[derive(Default)]
struct Incoming {
    conn: Mutex<Option<(Connection, Arc<str>)>>,
    ready: tokio::sync::Notify,
}

impl Incoming {
    fn offer(&self, conn: &Connection, name: &Arc<str>) {
        *lock(&self.conn) = Some((conn.clone(), name.clone()));
        self.ready.notify_one();
    }

    /// The offered connection, if it is still alive.
    fn take(&self) -> Option<(Connection, Arc<str>)> {
        lock(&self.conn)
            .take()
            .filter(|(c, _)| c.close_reason().is_none())
    }
}

/// A queued message, the node it is meant for (if known), and when it was queued (Unix µs).
type Out = (Vec<u8>, Option<NodeName>, u64);

struct Peer {
    datagrams: mpsc::Sender<Out>,
    streams: mpsc::Sender<Out>,
    queued_bytes: Arc<AtomicUsize>,
    link: Arc<tokio::sync::Mutex<Link>>,
    incoming: Arc<Incoming>,
    counters: Arc<PeerCounters>,
}

impl Peer {
    fn queued_msgs(&self) -> usize {
        let q = |s: &mpsc::Sender<Out>| s.max_capacity() - s.capacity();
        q(&self.datagrams) + q(&self.streams)
    }
}

struct Inner {
    cfg: TransportConfig,
    endpoint: Endpoint,
    peers: Mutex<HashMap<SocketAddr, Peer>>,
    inbound: mpsc::Sender<Inbound>,
    counters: Counters,
    reject_log: Mutex<HashMap<IpAddr, Instant>>,
    name: Arc<str>,
    /// Permits = bytes of stream messages that may be buffered while being received.
    inflight: Arc<tokio::sync::Semaphore>,
}

/// A running transport. Dropping it closes the endpoint and every connection.
pub struct Transport {
    inner: Arc<Inner>,
    local: SocketAddr,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data (maps) consistent enough to go on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn quic_transport_config(cfg: &TransportConfig) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(VarInt::from_u32(cfg.max_streams))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .keep_alive_interval(Some(cfg.keep_alive))
        .max_idle_timeout(quinn::IdleTimeout::try_from(cfg.idle_timeout).ok());
    Arc::new(t)
}

impl Transport {
    /// Binds `cfg.listen` and starts accepting. Must run inside a tokio runtime. Returns the
    /// transport and the receiver of inbound messages from authenticated peers.
    pub fn bind(
        cfg: TransportConfig,
        tls: &NodeTls,
    ) -> Result<(Transport, mpsc::Receiver<Inbound>), TransportError> {
        let transport_cfg = quic_transport_config(&cfg);
        let server_crypto = QuicServerConfig::try_from(tls.server_config()?)
            .map_err(|e| TransportError::Quic(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport_cfg.clone());
        let client_crypto = QuicClientConfig::try_from(tls.client_config()?)
            .map_err(|e| TransportError::Quic(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport_cfg);

        let mut endpoint =
            Endpoint::server(server, cfg.listen).map_err(|source| TransportError::Bind {
                addr: cfg.listen,
                source,
            })?;
        endpoint.set_default_client_config(client);
        let local = endpoint
            .local_addr()
            .map_err(|source| TransportError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let (tx, rx) = mpsc::channel(cfg.inbound_queue.max(1));
        let inflight = cfg
            .max_inflight_bytes
            .max(cfg.max_message)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        let inner = Arc::new(Inner {
            cfg,
            endpoint,
            peers: Mutex::new(HashMap::new()),
            inbound: tx,
            counters: Counters::default(),
            reject_log: Mutex::new(HashMap::new()),
            name: Arc::from(tls.name()),
            inflight: Arc::new(tokio::sync::Semaphore::new(inflight)),
        });
        tokio::spawn(accept_loop(inner.clone()));
        tracing::info!(node = %inner.name, %local, "transport listening");
        Ok((Transport { inner, local }, rx))
    }

    /// The bound UDP address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Queues `bytes` for `to` on `channel` without waiting. The message is dropped (and
    /// counted) if the peer's queue is full, it is too large, or the peer is unreachable when
    /// its turn comes; delivery is never guaranteed, even for streams.
    pub fn send(&self, to: SocketAddr, channel: Channel, bytes: Vec<u8>) -> Result<(), SendError> {
        self.send_to(to, None, channel, bytes)
    }

    /// Like [`Transport::send`], but when `expect` names a node the message is only handed to
    /// a connection whose certificate carries that name; otherwise it is dropped (counted in
    /// [`TransportStats::dropped_wrong_peer`] and logged at most once a minute per address).
    pub fn send_to(
        &self,
        to: SocketAddr,
        expect: Option<NodeName>,
        channel: Channel,
        bytes: Vec<u8>,
    ) -> Result<(), SendError> {
        let c = &self.inner.counters;
        let limit = match channel {
            // The real bound is the connection's current datagram size, checked when sending.
            Channel::Datagram => u16::MAX as usize,
            Channel::Stream => self.inner.cfg.max_message,
        };
        if bytes.len() > limit {
            bump(&c.dropped_too_large);
            return Err(SendError::TooLarge);
        }
        let mut peers = lock(&self.inner.peers);
        if !peers.contains_key(&to) {
            if peers.len() >= self.inner.cfg.max_peers {
                bump(&c.dropped_queue_full);
                return Err(SendError::TooManyPeers);
            }
            let peer = spawn_peer(&self.inner, to);
            peers.insert(to, peer);
        }
        let Some(peer) = peers.get(&to) else {
            return Err(SendError::Closed);
        };
        let len = bytes.len();
        if peer.queued_bytes.load(Ordering::Relaxed) + len > self.inner.cfg.peer_queue_bytes {
            bump(&c.dropped_queue_full);
            bump(&peer.counters.dropped_queue_full);
            return Err(SendError::QueueFull);
        }
        let q = match channel {
            Channel::Datagram => &peer.datagrams,
            Channel::Stream => &peer.streams,
        };
        match q.try_send((bytes, expect, unix_micros())) {
            Ok(()) => {
                peer.queued_bytes.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&c.dropped_queue_full);
                bump(&peer.counters.dropped_queue_full);
                Err(SendError::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    /// Bytes queued for `to` and not yet handed to its connection.
    pub fn queued_bytes(&self, to: SocketAddr) -> usize {
        lock(&self.inner.peers)
            .get(&to)
            .map_or(0, |p| p.queued_bytes.load(Ordering::Relaxed))
    }

    /// Every peer the transport tracks (at most [`TransportConfig::max_peers`]), in no
    /// particular order.
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        self.probe().peer_stats()
    }

    /// A cheap handle that reads this transport's counters from elsewhere (it keeps no
    /// connection alive after [`Transport::close`]).
    pub fn probe(&self) -> TransportProbe {
        TransportProbe {
            inner: self.inner.clone(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> TransportStats {
        stats_of(&self.inner.counters)
    }

    /// Closes every connection and stops accepting; queued messages are dropped.
    pub fn close(&self) {
        self.inner.endpoint.close(VarInt::from_u32(0), b"closing");
        // Dropping the queues' senders ends the peer tasks.
        lock(&self.inner.peers).clear();
    }

    /// Waits until the closed endpoint has told its peers (bounded by the idle timeout).
    pub async fn wait_closed(&self) {
        self.inner.endpoint.wait_idle().await;
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.close();
    }
}

/// Reads a transport's counters (see [`Transport::probe`]). Cheap to clone.
#[derive(Clone)]
pub struct TransportProbe {
    inner: Arc<Inner>,
}

impl TransportProbe {
    /// Same as [`Transport::stats`].
    pub fn stats(&self) -> TransportStats {
        stats_of(&self.inner.counters)
    }

    /// Same as [`Transport::peer_stats`].
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        lock(&self.inner.peers)
            .iter()
            .map(|(addr, p)| PeerStats {
                addr: *addr,
                name: lock(&p.counters.name).clone(),
                queued_msgs: p.queued_msgs(),
                queued_bytes: p.queued_bytes.load(Ordering::Relaxed),
                sent: g(&p.counters.sent),
                received: g(&p.counters.received),
                dropped_queue_full: g(&p.counters.dropped_queue_full),
                dropped_unreachable: g(&p.counters.dropped_unreachable),
                dropped_wrong_peer: g(&p.counters.dropped_wrong_peer),
            })
            .collect()
    }
}

fn stats_of(c: &Counters) -> TransportStats {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    TransportStats {
        sent: g(&c.sent),
        received: g(&c.received),
        dropped_queue_full: g(&c.dropped_queue_full),
        dropped_unreachable: g(&c.dropped_unreachable),
        dropped_too_large: g(&c.dropped_too_large),
        dropped_inbound: g(&c.dropped_inbound),
        dials: g(&c.dials),
        handshakes_failed: g(&c.handshakes_failed),
        dropped_wrong_peer: g(&c.dropped_wrong_peer),
    }
}

fn spawn_peer(inner: &Arc<Inner>, to: SocketAddr) -> Peer {
    let n = inner.cfg.peer_queue_msgs.max(1);
    let (dtx, drx) = mpsc::channel(n);
    let (stx, srx) = mpsc::channel(n);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let link = Arc::new(tokio::sync::Mutex::new(Link::default()));
    let counters = Arc::new(PeerCounters::default());
    let incoming = Arc::new(Incoming::default());
    let ctx = PeerCtx {
        inner: inner.clone(),
        to,
        queued_bytes: queued_bytes.clone(),
        link: link.clone(),
        incoming: incoming.clone(),
        counters: counters.clone(),
    };
    tokio::spawn(ctx.clone().run(drx, Channel::Datagram));
    tokio::spawn(ctx.run(srx, Channel::Stream));
    Peer {
        datagrams: dtx,
        streams: stx,
        queued_bytes,
        link,
        incoming,
        counters,
    }
}

#[derive(Clone)]
struct PeerCtx {
    inner: Arc<Inner>,
    to: SocketAddr,
    queued_bytes: Arc<AtomicUsize>,
    link: Arc<tokio::sync::Mutex<Link>>,
    incoming: Arc<Incoming>,
    counters: Arc<PeerCounters>,
}

impl PeerCtx {
    /// Sends the queue's messages in order until the transport drops the queue.
    async fn run(self, mut rx: mpsc::Receiver<Out>, channel: Channel) {
        let c = &self.inner.counters;
        let pc = &self.counters;
        while let Some((msg, expect, queued_at)) = rx.recv().await {
            self.queued_bytes.fetch_sub(msg.len(), Ordering::Relaxed);
            let Some((conn, name)) = self.connection().await else {
                bump(&c.dropped_unreachable);
                bump(&pc.dropped_unreachable);
                continue;
            };
            if let Some(want) = expect
                && want.as_str() != &*name
            {
                bump(&c.dropped_wrong_peer);
                bump(&pc.dropped_wrong_peer);
                let why = format!("certificate names {name:?}, the member there is {want:?}");
                log_failure(&self.inner, self.to, "sending", &why);
                continue;
            }
            let ok = match channel {
                Channel::Datagram => match conn.max_datagram_size() {
                    Some(max) if msg.len() <= max => conn.send_datagram(msg.into()).is_ok(),
                    _ => {
                        bump(&c.dropped_too_large);
                        continue;
                    }
                },
                Channel::Stream => send_stream(&conn, queued_at, &msg).await,
            };
            if ok {
                bump(&c.sent);
                bump(&pc.sent);
            } else {
                bump(&c.dropped_unreachable);
                bump(&pc.dropped_unreachable);
            }
        }
    }

    /// The live connection to the peer, dialing if needed; `None` while in backoff or when the
    /// dial fails.
    async fn connection(&self) -> Option<(Connection, Arc<str>)> {
        let mut link = self.link.lock().await;
        if let Some(c) = self.incoming.take() {
            link.conn = Some(c.clone());
            link.next_dial = None;
            link.backoff = Duration::ZERO;
            return Some(c);
        }
        if let Some((conn, name)) = &link.conn {
            if conn.close_reason().is_none() {
                return Some((conn.clone(), name.clone()));
            }
            link.conn = None;
        }
        let now = Instant::now();
        if link.next_dial.is_some_and(|t| now < t) {
            return None;
        }
        let cfg = &self.inner.cfg;
        bump(&self.inner.counters.dials);
        // A peer that was not listening yet when we dialed (it started after us) gets our
        // Initial packet only when QUIC retransmits it, about a second later; if it dials us
        // meanwhile, its connection serves both ways and our dial is abandoned.
        let dialing = dial(&self.inner, self.to);
        tokio::pin!(dialing);
        let res = loop {
            tokio::select! {
                r = &mut dialing => break r,
                _ = self.incoming.ready.notified() => {
                    if let Some(c) = self.incoming.take() {
                        tracing::debug!(to = %self.to, peer = %c.1, "using the peer's connection instead of our pending dial");
                        link.conn = Some(c.clone());
                        link.next_dial = None;
                        link.backoff = Duration::ZERO;
                        return Some(c);
                    }
                }
            }
        };
        match res {
            Ok((conn, peer)) => {
                tracing::debug!(to = %self.to, %peer, "connected");
                self.counters.set_name(&peer);
                link.conn = Some((conn.clone(), peer.clone()));
                link.next_dial = None;
                link.backoff = Duration::ZERO;
                tokio::spawn(serve(
                    self.inner.clone(),
                    conn.clone(),
                    self.to,
                    peer.clone(),
                    Some(self.counters.clone()),
                ));
                Some((conn, peer))
            }
            Err(e) => {
                link.backoff = (link.backoff * 2).clamp(cfg.backoff_min, cfg.backoff_max);
                link.next_dial = Some(Instant::now() + link.backoff);
                log_failure(&self.inner, self.to, "dial", &e);
                None
            }
        }
    }
}

async fn dial(inner: &Inner, to: SocketAddr) -> Result<(Connection, Arc<str>), String> {
    // The name is not checked by our verifier (it takes the name from the certificate).
    let connecting = inner
        .endpoint
        .connect(to, "wcfs")
        .map_err(|e| e.to_string())?;
    let conn = match tokio::time::timeout(inner.cfg.dial_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            bump(&inner.counters.handshakes_failed);
            return Err(e.to_string());
        }
        Err(_) => return Err("timed out".into()),
    };
    let name = peer_name(&conn)?;
    Ok((conn, name))
}

/// The node name in the peer's (already verified) certificate.
fn peer_name(conn: &Connection) -> Result<Arc<str>, String> {
    let certs = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or("no peer certificate")?;
    let first = certs.first().ok_or("empty peer certificate chain")?;
    tls::cert_node_name(first)
        .map(Arc::from)
        .map_err(|e| e.to_string())
}

/// Logs a failure for `addr` at most once per [`REJECT_LOG_EVERY`].
fn log_failure(inner: &Inner, addr: SocketAddr, what: &str, err: &str) {
    let now = Instant::now();
    let mut log = lock(&inner.reject_log);
    if log
        .get(&addr.ip())
        .is_some_and(|t| now.duration_since(*t) < REJECT_LOG_EVERY)
    {
        return;
    }
    if log.len() >= REJECT_LOG_CAP {
        log.clear();
    }
    log.insert(addr.ip(), now);
    tracing::warn!(%addr, error = %err, "{what} failed (further failures from this address are not logged for {}s)", REJECT_LOG_EVERY.as_secs());
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let addr = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    bump(&inner.counters.handshakes_failed);
                    log_failure(&inner, addr, "incoming handshake", &e.to_string());
                    return;
                }
            };
            let peer = match peer_name(&conn) {
                Ok(p) => p,
                Err(e) => {
                    conn.close(VarInt::from_u32(1), b"bad certificate");
                    log_failure(&inner, addr, "incoming handshake", &e);
                    return;
                }
            };
            tracing::debug!(from = %addr, %peer, "accepted");
            let counters = adopt(&inner, addr, &conn, &peer);
            serve(inner, conn, addr, peer, counters).await;
        });
    }
}

/// Lets an accepted connection carry our outbound traffic too. It replaces a connection we
/// still think is alive: a peer that handshakes again has most likely restarted (after a
/// crash nothing told us the old connection died, and sending on it would lose everything
/// until its idle timeout), and if both connections are alive either one works.
///
/// Returns the peer's counters, or `None` if too many peers are tracked already.
fn adopt(
    inner: &Arc<Inner>,
    addr: SocketAddr,
    conn: &Connection,
    name: &Arc<str>,
) -> Option<Arc<PeerCounters>> {
    let (link, incoming, counters) = {
        let mut peers = lock(&inner.peers);
        if !peers.contains_key(&addr) {
            if peers.len() >= inner.cfg.max_peers {
                return None;
            }
            let peer = spawn_peer(inner, addr);
            peers.insert(addr, peer);
        }
        let p = peers.get(&addr)?;
        (p.link.clone(), p.incoming.clone(), p.counters.clone())
    };
    counters.set_name(name);
    match link.try_lock() {
        Ok(mut l) => {
            l.conn = Some((conn.clone(), name.clone()));
            l.next_dial = None;
            l.backoff = Duration::ZERO;
        }
        // Busy (a dial in progress, or a sender between two messages): hand it over.
        Err(_) => incoming.offer(conn, name),
    }
    Some(counters)
}

/// Bytes before a stream message's body: queued-at time (`u64`), then length (`u32`).
const STREAM_HEADER: usize = 12;

async fn send_stream(conn: &Connection, queued_at: u64, msg: &[u8]) -> bool {
    let Ok(len) = u32::try_from(msg.len()) else {
        return false;
    };
    let Ok(mut s) = conn.open_uni().await else {
        return false;
    };
    let mut head = [0u8; STREAM_HEADER];
    head[..8].copy_from_slice(&queued_at.to_le_bytes());
    head[8..].copy_from_slice(&len.to_le_bytes());
    s.write_all(&head).await.is_ok() && s.write_all(msg).await.is_ok() && s.finish().is_ok()
}

/// Delivers everything `conn` carries to the inbound channel until it closes; `counters` are
/// the peer's, if the transport tracks it.
async fn serve(
    inner: Arc<Inner>,
    conn: Connection,
    from: SocketAddr,
    peer: Arc<str>,
    counters: Option<Arc<PeerCounters>>,
) {
    let received = |c: &Option<Arc<PeerCounters>>| {
        if let Some(c) = c {
            bump(&c.received);
        }
    };
    let datagrams = {
        let (inner, conn, peer, counters) =
            (inner.clone(), conn.clone(), peer.clone(), counters.clone());
        async move {
            while let Ok(d) = conn.read_datagram().await {
                let msg = Inbound {
                    from,
                    peer: peer.clone(),
                    channel: Channel::Datagram,
                    bytes: d.to_vec(),
                    sent_unix_us: None,
                };
                match inner.inbound.try_send(msg) {
                    Ok(()) => {
                        bump(&inner.counters.received);
                        received(&counters);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        bump(&inner.counters.dropped_inbound)
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        }
    };
    let streams = async {
        while let Ok(mut recv) = conn.accept_uni().await {
            let (inner, peer, counters) = (inner.clone(), peer.clone(), counters.clone());
            // One task per stream; the peer can have at most `max_streams` open at once.
            tokio::spawn(async move {
                let Some((sent, bytes, permit)) = read_message(&inner, &mut recv).await else {
                    return;
                };
                let msg = Inbound {
                    from,
                    peer,
                    channel: Channel::Stream,
                    bytes,
                    sent_unix_us: Some(sent),
                };
                if inner.inbound.send(msg).await.is_ok() {
                    bump(&inner.counters.received);
                    received(&counters);
                }
                drop(permit);
            });
        }
    };
    tokio::join!(datagrams, streams);
}

/// Reads one framed message from a stream: the header (queued-at time, length), then exactly
/// that many bytes, then the end of the stream. `None` (after counting) for anything else.
async fn read_message(
    inner: &Inner,
    recv: &mut quinn::RecvStream,
) -> Option<(u64, Vec<u8>, tokio::sync::OwnedSemaphorePermit)> {
    let mut head = [0u8; STREAM_HEADER];
    recv.read_exact(&mut head).await.ok()?;
    let (sent, len) = head.split_at(8);
    let sent = u64::from_le_bytes(sent.try_into().ok()?);
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    if len > inner.cfg.max_message {
        bump(&inner.counters.dropped_too_large);
        let _ = recv.stop(VarInt::from_u32(2));
        return None;
    }
    // Held until the message is handed over; `len` fits the semaphore by construction.
    let permit = inner
        .inflight
        .clone()
        .acquire_many_owned(u32::try_from(len).ok()?)
        .await
        .ok()?;
    let mut bytes = vec![0u8; len];
    recv.read_exact(&mut bytes).await.ok()?;
    // Trailing bytes mean a framing error: refuse rather than guess.
    match recv.read_to_end(0).await {
        Ok(rest) if rest.is_empty() => Some((sent, bytes, permit)),
        _ => {
            bump(&inner.counters.dropped_too_large);
            None
        }
    }
}
