//! The HTTP listeners: each connection sorted into TLS or plain HTTP and
//! served with HTTP/1 and HTTP/2, within limits that keep a flood of
//! connections, oversized headers or a client that trickles its bytes from
//! taking the process's memory or its tasks:
//!
//! | limit | past it |
//! |---|---|
//! | open connections (`--max-connections`) | 503 + `Retry-After: 1`, connection closed, before any byte is read |
//! | request head (`--max-header-bytes`) | 431 (HTTP/1), the stream refused (HTTP/2) |
//! | time to send the request head (`--header-timeout`), or idle between requests | connection closed |
//!
//! The body's own limits (size, time) are the ingress's: only it knows the
//! broker's size limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::http_util::text;
use crate::tls::{Accepted, ListenerTls};

/// Default open connections of the main listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default largest request head (request line and headers).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Default time a client has to send a request's head. hyper counts it
/// from the previous response on a kept-alive connection, so it is also
/// the idle timeout: above the idle timeouts of clients' connection pools
/// (Go's and hyper's 90 s, pilotlight's own sender's 60 s), so that a
/// client never sends on a connection the server is closing.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(120);
/// hyper's HTTP/1 read buffer cannot be smaller.
const MIN_HEADER_BYTES: usize = 8 * 1024;

/// What one listener allows each client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Open connections at most; None for no limit (the admin listener,
    /// which probes and metrics must still reach when the main one is full).
    pub max_connections: Option<usize>,
    /// The largest request head, request line and headers together.
    pub max_header_bytes: usize,
    /// How long a client has to send a request's head, from the
    /// connection's start or, on a kept-alive one, from the previous
    /// response: the idle timeout too.
    pub header_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: Some(DEFAULT_MAX_CONNECTIONS),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }
}

impl ListenerLimits {
    /// The same limits without a connection limit.
    pub fn unbounded_connections(self) -> Self {
        ListenerLimits {
            max_connections: None,
            ..self
        }
    }

    fn builder(&self) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // hyper answers a head over the buffer with 431.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .max_buf_size(self.max_header_bytes.max(MIN_HEADER_BYTES));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX));
        builder
    }
}

/// Serves a listener with HTTP/1 (with upgrades) and HTTP/2 (h2c, or h2
/// through ALPN), over TLS, plain TCP or both as `tls` says, within
/// `limits`, and on stop lets open connections finish for a few seconds.
/// `service` makes each connection's service from the peer's address;
/// `name` labels the listener's metrics.
pub(crate) async fn serve_listener<F, S>(
    name: &'static str,
    listener: TcpListener,
    tls: ListenerTls,
    limits: ListenerLimits,
    service: F,
    mut stopped: watch::Receiver<bool>,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stop = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    tokio::pin!(stop);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = limits.builder();
    let slots = limits
        .max_connections
        .map(|limit| (Arc::new(Semaphore::new(limit)), limit));
    let open = metrics::gauge!("pilotlight_http_connections", "listener" => name);
    let refused =
        metrics::counter!("pilotlight_http_connections_refused_total", "listener" => name);
    let accepted =
        metrics::counter!("pilotlight_http_connections_accepted_total", "listener" => name);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        accepted.increment(1);
        let slot = match &slots {
            Some((slots, limit)) => match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    refused.increment(1);
                    tokio::spawn(refuse_connection(stream, *limit));
                    continue;
                }
            },
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let handler = service(peer);
        let (tls, builder, watcher, open) = (
            tls.clone(),
            builder.clone(),
            graceful.watcher(),
            open.clone(),
        );
        tokio::spawn(async move {
            open.increment(1.0);
            serve_connection(stream, peer, tls, builder, watcher, handler).await;
            open.decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

/// One connection: sorted (a peeked byte, a handshake) off the accept
/// loop, then served until it ends.
async fn serve_connection<S>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: ListenerTls,
    builder: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    handler: S,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let served = match tls.accept(stream).await {
        Ok(Accepted::Plain(stream)) => {
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), handler)
                .into_owned();
            watcher.watch(connection).await
        }
        Ok(Accepted::Tls { stream }) => {
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), handler)
                .into_owned();
            watcher.watch(connection).await
        }
        Ok(Accepted::Refused(stream)) => {
            let refusal = hyper::service::service_fn(|request| async move {
                Ok::<_, std::convert::Infallible>(https_required(&request))
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), refusal)
                .into_owned();
            watcher.watch(connection).await
        }
        Err(reason) => {
            tracing::debug!(%peer, %reason, "connection dropped before any request");
            return;
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// A connection past `--max-connections`: an HTTP/1.1 503 written before
/// anything is read (reading would take the very resources the limit
/// protects), then closed. A TLS client sees its handshake fail instead.
async fn refuse_connection(mut stream: TcpStream, limit: usize) {
    let body = format!(
        "too many open connections (the limit is {limit}, set with --max-connections): try again later\n"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    };
    // A client that does not read gets no more than a second of a task.
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// The answer to a plain HTTP request on a listener that takes HTTPS only
/// (transport-encryption strict): 426, naming the https URL to use.
fn https_required<B>(request: &Request<B>) -> Response<Body> {
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())
        .unwrap_or("HOST");
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut response = text(
        http::StatusCode::UPGRADE_REQUIRED,
        format!(
            "this listener takes HTTPS only (transport-encryption: strict): send to https://{host}{path}\n"
        ),
    );
    let headers = response.headers_mut();
    headers.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("TLS/1.3, HTTP/1.1"),
    );
    headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_request_to_a_strict_listener_is_told_the_https_url() {
        let request = Request::post("/default/orders")
            .header(http::header::HOST, "127.0.0.1:8080")
            .body(())
            .expect("request");
        let response = https_required(&request);
        assert_eq!(response.status(), http::StatusCode::UPGRADE_REQUIRED);
        assert_eq!(response.headers()[http::header::CONNECTION], "close");
    }
}
