//! The proxy's kept-alive HTTP/1.1 connections to instances: each instance
//! keeps its own stack of idle connections, and a connection goes back on
//! it when the response it carried has ended.
//!
//! The proxy used hyper-util's legacy `Client` before. Its pool is one map
//! for every host behind one mutex, keyed by an authority the proxy had to
//! format into an absolute URI per request, and it spawned a task for every
//! HTTP/1 request to hand the connection back once it was idle again. Here
//! the instance is already known (the activator leased it), the request
//! keeps its origin-form URI, and the hand-back happens on the task that
//! read the response, spawning only when the connection is not yet idle.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The sending half of one connection to an instance.
pub(crate) type Connection = SendRequest<Body>;

/// Idle connections kept per instance at most (hyper-util's pool allowed
/// the proxy 256 per host too); more are closed once their response ends.
const MAX_IDLE_PER_INSTANCE: usize = 256;
/// How long connecting to an instance may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request did not reach an instance, or got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    ConnectTimedOut(SocketAddr),
    #[error("HTTP/1.1 handshake with {address} failed: {source}")]
    Handshake {
        address: SocketAddr,
        source: hyper::Error,
    },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// An instance's idle connections, newest on top (the warmest in caches,
/// and the least likely to have been closed by the app's idle timeout).
#[derive(Default)]
pub(crate) struct IdleConnections {
    stack: Mutex<Vec<Connection>>,
}

impl fmt::Debug for IdleConnections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let idle = self
            .stack
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("IdleConnections")
            .field("idle", &idle)
            .finish()
    }
}

impl IdleConnections {
    /// An idle connection that can take a request now, if one is kept.
    fn take(&self) -> Option<Connection> {
        let mut stack = self.stack.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(connection) = stack.pop() {
            if connection.is_ready() {
                return Some(connection);
            }
            // Closed by the instance meanwhile: dropped here.
        }
        None
    }

    fn keep(&self, connection: Connection) {
        let mut stack = self.stack.lock().unwrap_or_else(PoisonError::into_inner);
        if stack.len() < MAX_IDLE_PER_INSTANCE {
            stack.push(connection);
        }
    }

    /// Keeps a connection whose response ended. hyper's connection task
    /// marks it idle on its own schedule, usually before the reader saw the
    /// body's end; if not yet, a task waits for that, as hyper-util's pool
    /// did for every request.
    pub(crate) fn give_back(self: &Arc<Self>, mut connection: Connection) {
        if connection.is_ready() {
            self.keep(connection);
        } else if !connection.is_closed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let idle = self.clone();
            runtime.spawn(async move {
                if connection.ready().await.is_ok() {
                    idle.keep(connection);
                }
            });
        }
    }
}

/// Sends `request` to the instance at `address` over one of its idle
/// connections, or a new one; returns the answer and the connection, to
/// give back once the answer's body ended.
pub(crate) async fn send(
    idle: &IdleConnections,
    address: SocketAddr,
    mut request: Request<Body>,
) -> Result<(Response<Incoming>, Connection), ForwardError> {
    // A kept connection the instance closed just as it was taken fails
    // before anything was written, and hands the request back: it goes on
    // the next connection (hyper-util's pool retried such requests too).
    while let Some(mut connection) = idle.take() {
        match connection.try_send_request(request).await {
            Ok(response) => return Ok((response, connection)),
            Err(mut failed) => match failed.take_message() {
                Some(unsent) => request = unsent,
                None => return Err(failed.into_error().into()),
            },
        }
    }
    let mut connection = connect(address).await?;
    let response = connection.send_request(request).await?;
    Ok((response, connection))
}

/// A new connection, its I/O driven by a task of its own until it closes.
async fn connect(address: SocketAddr) -> Result<Connection, ForwardError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| ForwardError::ConnectTimedOut(address))?
        .map_err(|source| ForwardError::Connect { address, source })?;
    // Requests and answers are small and latency-bound: no Nagle delay.
    let _ = stream.set_nodelay(true);
    let (connection, driver) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ForwardError::Handshake { address, source })?;
    tokio::spawn(async move {
        if let Err(e) = driver.with_upgrades().await {
            tracing::debug!(%address, error = %e, "connection to an instance ended");
        }
    });
    Ok(connection)
}
