//! In-process HTTP servers of the suites: the raw baseline and the
//! subscribers, on hyper as the ingress is.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An HTTP server on 127.0.0.1 with any port, serving until stopped.
pub(crate) struct HttpServer {
    pub(crate) addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl HttpServer {
    /// Serves with hyper-util's auto builder, as `axum::serve` does for the
    /// ingress, so the raw baseline differs from pilotlight only in the work
    /// done per request. `nodelay` mirrors the ingress listener (on) for the
    /// baseline.
    pub(crate) async fn start<S, F>(service: S, nodelay: bool, what: &str) -> anyhow::Result<Self>
    where
        S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Response<Empty<Bytes>>, Infallible>> + Send + 'static,
    {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .with_context(|| format!("cannot listen for {what}"))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("no local address for {what}"))?;
        let accept = tokio::spawn(accept_loop(listener, service, nodelay));
        Ok(HttpServer { addr, accept })
    }
}

impl Drop for HttpServer {
    /// Stops accepting; open connections end when their clients close them.
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop<S, F>(listener: TcpListener, service: S, nodelay: bool)
where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Empty<Bytes>>, Infallible>> + Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(error = %e, "bench server: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if nodelay {
            let _ = stream.set_nodelay(true);
        }
        let service = service.clone();
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(service))
                .await;
        });
    }
}
