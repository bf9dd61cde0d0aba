//! The proxy in front of every revision: the activator wait, the request
//! count the autoscaler reads (the queue-proxy's job, done here in process),
//! and forwarding with streaming bodies, upgrades, hop-by-hop headers and
//! `X-Forwarded-*`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::GaiResolver;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::autoscaler::RevisionStats;
use super::revision::{Lease, Revision, Unavailable};
use super::router::HostRoute;
use crate::http_util::{self, ClientSettings, text, with_retry_after};

/// Forwards requests to revision instances.
#[derive(Clone)]
pub(crate) struct Proxy {
    client: Client<HttpConnector, Body>,
}

impl Default for Proxy {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts a request for the autoscaler, and times it, from arrival until
/// its response body ends (or the request is dropped).
struct Counted {
    stats: Arc<RevisionStats>,
    seconds: metrics::Histogram,
    arrived: std::time::Instant,
}

impl Counted {
    fn start(revision: &Revision) -> Self {
        revision.stats.request_started();
        Counted {
            stats: revision.stats.clone(),
            seconds: revision.request_seconds.clone(),
            arrived: std::time::Instant::now(),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.stats.request_finished();
        self.seconds.record(self.arrived.elapsed());
    }
}

impl Proxy {
    pub(crate) fn new() -> Self {
        let settings = ClientSettings {
            nodelay: true,
            connect_timeout: Some(Duration::from_secs(5)),
            tcp_keepalive: None,
            pool_idle_timeout: Some(Duration::from_secs(60)),
            pool_max_idle_per_host: 256,
        };
        Proxy {
            client: http_util::client(GaiResolver::new(), settings),
        }
    }

    /// Serves one request for a service host: from a client connection, or
    /// handed over in process by pilotlight's own sender.
    pub(crate) async fn serve<B>(
        &self,
        route: &HostRoute,
        request: Request<B>,
        peer: SocketAddr,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let Some(revision) = route.pick().cloned() else {
            return with_retry_after(
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "service {} has no revision to serve yet; `pilotlight get revisions` says why\n",
                        route.service
                    ),
                ),
                5,
            );
        };
        let counted = Counted::start(&revision);
        let deadline = Instant::now() + revision.timeout;
        let lease = match revision.acquire(deadline).await {
            Ok(lease) => lease,
            Err(why) => return unavailable(&revision, why),
        };
        let upgrade = wants_upgrade(request.headers());
        let mut request = request;
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let outbound = outbound_request(request, &lease, peer, upgrade);
        let sent = tokio::time::timeout_at(deadline, self.client.request(outbound)).await;
        let mut response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tracing::warn!(revision = %revision.key, instance = %lease.endpoint.id, error = %e, "forwarding failed");
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "instance {} of revision {} failed: {e}; `pilotlight get revisions` shows whether it crashed and why\n",
                        lease.endpoint.id, revision.key
                    ),
                );
            }
            Err(_) => return timed_out(&revision),
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let instance_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(splice(client_upgrade, instance_upgrade, lease, counted));
            let (parts, _) = response.into_parts();
            return Response::from_parts(parts, Body::empty());
        }
        strip_hop_by_hop(response.headers_mut(), false);
        response.map(|body| {
            Body::new(LeasedBody {
                inner: body,
                _lease: lease,
                _counted: counted,
            })
        })
    }
}

/// The request as the instance gets it.
fn outbound_request<B>(
    request: Request<B>,
    lease: &Lease,
    peer: SocketAddr,
    upgrade: bool,
) -> Request<Body>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(lease.endpoint.address.to_string())
        .path_and_query(path)
        .build()
        .unwrap_or_default();
    // The instance gets HTTP/1.1 whatever the client spoke.
    parts.version = http::Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers, upgrade);
    if let Some(host) = original_host {
        headers.insert(header::HOST, host.clone());
        headers.insert(X_FORWARDED_HOST, host);
    }
    append_forwarded_for(headers, peer);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    Request::from_parts(parts, Body::new(body))
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {ip}"),
        None => ip,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// True for `Connection: upgrade` with an `Upgrade` header (WebSocket and the like).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes headers meant for one hop (RFC 9110 7.6.1), including those the
/// Connection header names. An upgrade keeps `Connection: upgrade` and
/// `Upgrade`, which the next hop needs to switch protocols.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && *n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        if upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Copies bytes both ways between the upgraded client and instance
/// connections; the instance slot stays taken until both sides close.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    instance: hyper::upgrade::OnUpgrade,
    lease: Lease,
    counted: Counted,
) {
    let (client, instance) = match tokio::try_join!(client, instance) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut instance = TokioIo::new(instance);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut instance).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
    drop((lease, counted));
}

/// A response body that holds the instance slot and the autoscaler count
/// until it ends.
struct LeasedBody {
    inner: Incoming,
    _lease: Lease,
    _counted: Counted,
}

impl HttpBody for LeasedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn unavailable(revision: &Revision, why: Unavailable) -> Response<Body> {
    match why {
        Unavailable::QueueFull => {
            metrics::counter!("pilotlight_activator_rejected_total", "revision" => revision.key.to_string(), "reason" => "queue_full").increment(1);
            with_retry_after(
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "revision {} has {} requests waiting for an instance, the most it holds; retry later\n",
                        revision.key,
                        revision.queued()
                    ),
                ),
                1,
            )
        }
        Unavailable::TimedOut => timed_out(revision),
        Unavailable::Gone => with_retry_after(
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "revision {} was removed while the request waited; retry to reach the service's current revision\n",
                    revision.key
                ),
            ),
            1,
        ),
        Unavailable::CannotStart(why) => {
            metrics::counter!("pilotlight_activator_rejected_total", "revision" => revision.key.to_string(), "reason" => "cannot_start").increment(1);
            with_retry_after(
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "revision {} cannot start an instance: {why}\n",
                        revision.key
                    ),
                ),
                10,
            )
        }
    }
}

fn timed_out(revision: &Revision) -> Response<Body> {
    metrics::counter!("pilotlight_activator_rejected_total", "revision" => revision.key.to_string(), "reason" => "timeout").increment(1);
    let status = revision.deployment.status();
    let why = status
        .last_failure
        .map(|f| format!(" Last failure: {f}"))
        .unwrap_or_default();
    text(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "revision {} did not answer within timeoutSeconds ({}s); {} of {} instances ready.{why}\n",
            revision.key,
            revision.timeout.as_secs(),
            status.ready,
            status.desired
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_named_ones_too() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn upgrades_keep_connection_and_upgrade() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&headers));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert_eq!(headers[header::CONNECTION], "upgrade");
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, "10.0.0.2:5000".parse().expect("addr"));
        append_forwarded_for(&mut headers, "127.0.0.1:6000".parse().expect("addr"));
        assert_eq!(headers[X_FORWARDED_FOR], "10.0.0.2, 127.0.0.1");
    }
}
