//! The smallest HTTP/1.1 server that Prometheus can scrape: `GET /metrics` (and `HEAD`), one
//! request per connection, everything bounded.
//!
//! Limits: at most [`ServerConfig::max_connections`] connections are served at once (further
//! ones wait in the kernel's accept backlog); a request head larger than
//! [`ServerConfig::max_request_bytes`] gets `431`; a connection that has not been answered
//! within [`ServerConfig::timeout`] (slow client, stalled reader) is closed. Anything but
//! `GET`/`HEAD` on `/metrics` gets `405`, any other path `404`, bytes that are not an HTTP/1.x
//! request line `400`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use super::{CONTENT_TYPE, Sources, render};

/// Limits of the metrics endpoint. [`ServerConfig::default`] gives the defaults.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Connections served at once (default 16).
    pub max_connections: usize,
    /// Longest a connection may take from accept to the end of the response (default 10 s).
    pub timeout: Duration,
    /// Largest request head (request line and headers) accepted, in bytes (default 8 KiB).
    pub max_request_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            max_connections: 16,
            timeout: Duration::from_secs(10),
            max_request_bytes: 8 << 10,
        }
    }
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The TCP address could not be bound.
    #[error("binding the metrics address {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A running metrics endpoint. Dropping it stops accepting (connections being answered are
/// cut short); [`MetricsServer::shutdown`] does the same and waits for the accept loop.
pub struct MetricsServer {
    local: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub(super) fn serve(
    addr: SocketAddr,
    sources: Sources,
    cfg: ServerConfig,
) -> Result<MetricsServer, MetricsError> {
    let bind = |source| MetricsError::Bind { addr, source };
    let std = std::net::TcpListener::bind(addr).map_err(bind)?;
    std.set_nonblocking(true).map_err(bind)?;
    let listener = TcpListener::from_std(std).map_err(bind)?;
    let local = listener.local_addr().map_err(bind)?;
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(accept_loop(listener, sources, cfg, rx));
    tracing::info!(%local, "metrics listening (GET /metrics)");
    Ok(MetricsServer {
        local,
        stop: Some(tx),
        task: Some(task),
    })
}

async fn accept_loop(
    listener: TcpListener,
    sources: Sources,
    cfg: ServerConfig,
    mut stop: oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let mut last_error_log: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            _ = &mut stop => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let sock = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok((sock, _)) => sock,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::warn!(error = %e, "metrics: accept failed (logged once a minute)");
                        last_error_log = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (sources, cfg) = (sources.clone(), cfg.clone());
        tokio::spawn(async move {
            let _slot = permit;
            match tokio::time::timeout(cfg.timeout, answer(sock, &sources, &cfg)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics: connection failed"),
                Err(_) => tracing::debug!("metrics: connection timed out"),
            }
        });
    }
}

/// What the server answers, by request head.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    MethodNotAllowed,
    NotFound,
    BadRequest,
}

/// Routes a request head (everything before the blank line).
fn route(head: &[u8]) -> Route {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { head_only: false },
        "HEAD" => Route::Metrics { head_only: true },
        _ => Route::MethodNotAllowed,
    }
}

/// Reads one request head and answers it.
async fn answer(mut sock: TcpStream, sources: &Sources, cfg: &ServerConfig) -> std::io::Result<()> {
    let max = cfg.max_request_bytes.max(64);
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let route = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break route(&buf[..end]);
        }
        if buf.len() >= max {
            return respond(&mut sock, 431, "Request Header Fields Too Large", "", false).await;
        }
        let room = (max - buf.len()).min(chunk.len());
        let n = sock.read(&mut chunk[..room]).await?;
        if n == 0 {
            // The client went away before finishing its request.
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    match route {
        Route::Metrics { head_only } => {
            // Reading the counters takes the node's read lock briefly; rendering is
            // proportional to the number of peers, not to the table.
            let body = render(sources);
            respond(&mut sock, 200, "OK", &body, head_only).await
        }
        Route::MethodNotAllowed => {
            respond(
                &mut sock,
                405,
                "Method Not Allowed",
                "only GET and HEAD\n",
                false,
            )
            .await
        }
        Route::NotFound => respond(&mut sock, 404, "Not Found", "try /metrics\n", false).await,
        Route::BadRequest => respond(&mut sock, 400, "Bad Request", "", false).await,
    }
}

async fn respond(
    sock: &mut TcpStream,
    code: u16,
    reason: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let ctype = if code == 200 {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let allow = if code == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    if !head_only {
        sock.write_all(body.as_bytes()).await?;
    }
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::{Route, route};

    #[test]
    fn routes_requests_by_method_and_path() {
        let get = Route::Metrics { head_only: false };
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x"), get);
        assert_eq!(route(b"GET /metrics?name[]=x HTTP/1.0"), get);
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(route(b"POST /metrics HTTP/1.1"), Route::MethodNotAllowed);
        assert_eq!(route(b"GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1"), Route::NotFound);
        assert_eq!(route(b"GET /metrics"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics HTTP/2"), Route::BadRequest);
        assert_eq!(route(b"GET  /metrics HTTP/1.1"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe /metrics HTTP/1.1"), Route::BadRequest);
        assert_eq!(route(b""), Route::BadRequest);
    }
}
