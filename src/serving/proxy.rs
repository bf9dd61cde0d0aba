//! The proxy in front of every revision: the activator wait, the request
//! count the autoscaler reads (the queue-proxy's job, done here in process),
//! and forwarding with streaming bodies, upgrades, hop-by-hop headers and
//! `X-Forwarded-*`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::revision::{Lease, Revision, Unavailable, Waited};
use super::router::HostRoute;
use super::upstream::{self, Connection};
use crate::http_util::{text, with_retry_after};
use crate::telemetry::trace::{Hop, Parent};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use std::time::{SystemTime, UNIX_EPOCH};

/// Forwards requests to revision instances, over each instance's own
/// kept-alive connections (see [`upstream`]).
#[derive(Clone, Default)]
pub(crate) struct Proxy {
    /// Add `Server-Timing` to the responses of requests that waited in the
    /// activator (`--server-timing`).
    server_timing: bool,
}

/// The client end of one connection to the main listener, as forwarded
/// requests name it: made once per connection, not per request.
#[derive(Clone)]
pub(crate) struct Peer {
    /// Its IP address, as `X-Forwarded-For` appends it.
    forwarded_for: Option<HeaderValue>,
}

impl Peer {
    pub(crate) fn new(address: SocketAddr) -> Self {
        Peer {
            forwarded_for: HeaderValue::from_str(&address.ip().to_string()).ok(),
        }
    }
}

/// Counts a request for the autoscaler, and times it, from arrival until
/// its response body ends (or the request is dropped), with its response
/// code class and whether it waited for a cold start.
/// Its span (`serving.proxy`) ends with it.
struct Counted {
    revision: Arc<Revision>,
    arrived: std::time::Instant,
    cold_start: bool,
    /// None until a response is made (a client that goes away first).
    status: Option<StatusCode>,
    trace: Hop,
}

impl Counted {
    fn start(revision: &Arc<Revision>, trace: Hop) -> Self {
        revision.stats.request_started();
        Counted {
            revision: revision.clone(),
            arrived: std::time::Instant::now(),
            cold_start: false,
            status: None,
            trace,
        }
    }

    /// Ends the count with pilotlight's own answer (the request got no
    /// instance, or the instance failed).
    fn answer(mut self, response: Response<Body>) -> Response<Body> {
        self.status = Some(response.status());
        response
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.trace.is_on() {
            let code = self.status.map_or(0, |s| s.as_u16());
            let cold_start = self.cold_start;
            self.trace
                .set(|| KeyValue::new("http.response.status_code", i64::from(code)));
            self.trace
                .set(|| KeyValue::new("pilotlight.cold_start", cold_start));
            if !self
                .status
                .is_some_and(|s| s.is_success() || s.is_redirection() || s.is_informational())
            {
                self.trace.fail(|| format!("answered {code}"));
            }
        }
        self.revision.stats.request_finished();
        self.revision
            .requests
            .record(self.arrived.elapsed(), self.cold_start, self.status);
    }
}

impl Proxy {
    pub(crate) fn new(server_timing: bool) -> Self {
        Proxy { server_timing }
    }

    /// Serves one request for a service host: from a client connection, or
    /// handed over in process by pilotlight's own sender.
    pub(crate) async fn serve<B>(
        &self,
        route: &HostRoute,
        request: Request<B>,
        peer: &Peer,
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
        let trace = proxy_span(&revision, &request);
        let mut counted = Counted::start(&revision, trace);
        let deadline = Instant::now() + revision.timeout;
        let lease = match revision.acquire(deadline).await {
            Ok(lease) => lease,
            Err(why) => return counted.answer(unavailable(&revision, why)),
        };
        counted.cold_start = lease.waited.is_some_and(|w| w.cold_start.is_some());
        if let Some(waited) = lease.waited {
            trace_wait(&counted.trace, waited, &lease);
        }
        let upgrade = wants_upgrade(request.headers());
        let mut request = request;
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let mut outbound = outbound_request(request, peer, upgrade);
        // The app continues the trace from the proxy's span.
        counted.trace.inject(outbound.headers_mut());
        let idle = lease.endpoint.load.idle_connections();
        let sent = tokio::time::timeout_at(
            deadline,
            upstream::send(idle, lease.endpoint.address, outbound),
        )
        .await;
        let (mut response, connection) = match sent {
            Ok(Ok(answered)) => answered,
            Ok(Err(e)) => {
                tracing::warn!(revision = %revision.key, instance = %lease.endpoint.id, error = %e, "forwarding failed");
                return counted.answer(text(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "instance {} of revision {} failed: {e}; `pilotlight get revisions` shows whether it crashed and why\n",
                        lease.endpoint.id, revision.key
                    ),
                ));
            }
            Err(_) => return counted.answer(timed_out(&revision)),
        };
        counted.status = Some(response.status());
        if let Some(waited) = lease.waited {
            first_byte_of_cold_start(&revision, &lease, waited);
            if self.server_timing {
                add_server_timing(response.headers_mut(), waited);
            }
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            // The connection becomes the upgraded stream: never kept.
            drop(connection);
            let instance_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(splice(client_upgrade, instance_upgrade, lease, counted));
            let (parts, _) = response.into_parts();
            return Response::from_parts(parts, Body::empty());
        }
        strip_hop_by_hop(response.headers_mut(), false);
        response.map(|body| {
            Body::new(LeasedBody {
                inner: body,
                connection: Some(connection),
                ended: false,
                lease,
                _counted: counted,
            })
        })
    }
}

/// The span of one request through the proxy, under the client's
/// `traceparent` (a trigger's delivery attempt, for events).
fn proxy_span<B>(revision: &Revision, request: &Request<B>) -> Hop {
    Hop::start(
        "serving.proxy",
        SpanKind::Server,
        || Parent::from_headers(request.headers()),
        || {
            vec![
                KeyValue::new("pilotlight.revision", revision.key.to_string()),
                KeyValue::new("http.request.method", request.method().to_string()),
                KeyValue::new("url.path", request.uri().path().to_owned()),
            ]
        },
    )
}

/// The request's wait in the activator as a span of its own, and inside
/// it the part spent while no instance was ready: the cold start it
/// waited for, from when the wait began to the instance's readiness.
fn trace_wait(trace: &Hop, waited: Waited, lease: &Lease) {
    if !trace.is_on() {
        return;
    }
    let since_lease = waited.leased_at.elapsed();
    let leased = SystemTime::now()
        .checked_sub(since_lease)
        .unwrap_or(UNIX_EPOCH);
    let queued = leased.checked_sub(waited.queue).unwrap_or(leased);
    let queue = trace.finished("activator.queue", queued, leased, Vec::new);
    if let Some(cold) = waited.cold_start {
        let from = leased.checked_sub(cold).unwrap_or(queued);
        let instance = lease.endpoint.id.to_string();
        queue.finished("instance.cold_start", from, leased, || {
            vec![KeyValue::new("pilotlight.instance", instance)]
        });
    }
}

/// Ends the cold start's `first_byte` phase with the response head of
/// the first request that waited for the new instance.
fn first_byte_of_cold_start(revision: &Revision, lease: &Lease, waited: Waited) {
    if waited.cold_start.is_some() && lease.endpoint.load.claim_first_byte() {
        revision
            .requests
            .record_first_byte(waited.leased_at.elapsed());
    }
}

/// Adds the request's waits to `Server-Timing` (W3C), in milliseconds:
/// `cold-start` while no instance was ready (only when there was such a
/// wait), `activator-queue` for the whole wait. Appended, so the
/// instance's own entries stay.
fn add_server_timing(headers: &mut HeaderMap, waited: Waited) {
    let millis = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let queue = format!("activator-queue;dur={:.1}", millis(waited.queue));
    let value = match waited.cold_start {
        Some(cold) => format!("cold-start;dur={:.1}, {queue}", millis(cold)),
        None => queue,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.append(SERVER_TIMING, value);
    }
}

const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// The request as the instance gets it: origin-form, HTTP/1.1, the
/// client's hop-by-hop headers gone and `X-Forwarded-*` added.
fn outbound_request<B>(request: Request<B>, peer: &Peer, upgrade: bool) -> Request<Body>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let (mut parts, body) = request.into_parts();
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    // Origin-form as it came (the usual case) is forwarded as is; an
    // absolute-form or HTTP/2 URI keeps only its path and query (a
    // CONNECT's authority-form target stays what it is).
    let absolute = parts.uri.scheme().is_some() || parts.uri.authority().is_some();
    if absolute && parts.method != http::Method::CONNECT {
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
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

fn append_forwarded_for(headers: &mut HeaderMap, peer: &Peer) {
    let Some(ip) = &peer.forwarded_for else {
        return;
    };
    let appended = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(previous) => {
            let mut value = Vec::with_capacity(previous.len() + 2 + ip.len());
            value.extend_from_slice(previous);
            value.extend_from_slice(b", ");
            value.extend_from_slice(ip.as_bytes());
            HeaderValue::from_bytes(&value).ok()
        }
        None => Some(ip.clone()),
    };
    if let Some(value) = appended {
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
/// until it ends, and then gives its connection back to the instance's
/// idle ones (a body dropped before its end leaves the connection to close).
struct LeasedBody {
    inner: Incoming,
    connection: Option<Connection>,
    /// The instance's answer was read to its end.
    ended: bool,
    lease: Lease,
    _counted: Counted,
}

impl HttpBody for LeasedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LeasedBody {
    fn drop(&mut self) {
        // hyper may not poll a body it knows is empty (or fully sent by its
        // length) to its end: that counts as ended too.
        if (self.ended || self.inner.is_end_stream())
            && let Some(connection) = self.connection.take()
        {
            self.lease
                .endpoint
                .load
                .idle_connections()
                .give_back(connection);
        }
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
    fn server_timing_names_the_cold_start_only_when_there_was_one() {
        let waited = |cold_start| Waited {
            queue: std::time::Duration::from_micros(815_049),
            cold_start,
            leased_at: Instant::now(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(SERVER_TIMING, HeaderValue::from_static("app;dur=3"));
        add_server_timing(
            &mut headers,
            waited(Some(std::time::Duration::from_micros(812_340))),
        );
        let values: Vec<_> = headers.get_all(SERVER_TIMING).iter().collect();
        assert_eq!(
            values,
            [
                "app;dur=3",
                "cold-start;dur=812.3, activator-queue;dur=815.0"
            ]
        );
        let mut headers = HeaderMap::new();
        add_server_timing(&mut headers, waited(None));
        assert_eq!(headers[SERVER_TIMING], "activator-queue;dur=815.0");
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let mut headers = HeaderMap::new();
        append_forwarded_for(
            &mut headers,
            &Peer::new("10.0.0.2:5000".parse().expect("addr")),
        );
        append_forwarded_for(
            &mut headers,
            &Peer::new("127.0.0.1:6000".parse().expect("addr")),
        );
        assert_eq!(headers[X_FORWARDED_FOR], "10.0.0.2, 127.0.0.1");
    }
}
