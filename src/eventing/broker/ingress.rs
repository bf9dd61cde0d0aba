//! The broker ingress: `POST /{namespace}/{broker}` with CloudEvents in binary,
//! structured or batched mode. 202 once the backend has stored the events.
//!
//! | answer | when |
//! |---|---|
//! | 202 | stored durably |
//! | 400 | not a valid CloudEvent (the body says which attribute and why) |
//! | 401 | authentication on: no bearer token, or one that does not verify (why, in the body and `WWW-Authenticate`) |
//! | 403 | authentication on: no EventPolicy lets the token's subject send this event (which, and why) |
//! | 404 | no such broker |
//! | 405 | a method other than POST or OPTIONS |
//! | 408 | the body did not arrive within the body timeout (`--request-body-timeout`) |
//! | 413 | body or an event over the size limit, or over what the backend stores |
//! | 429 + Retry-After | the backend pushes back, or the broker has its limit of requests in flight (`--max-requests-per-broker`) |
//! | 503 + Retry-After | the broker is not ready, or its backend is unavailable |

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use percent_encoding::percent_decode_str;

use super::{BrokerEntry, BrokerRegistry, reject_metric};
use crate::auth::{Gate, TokenError};
use crate::cloudevent::parse_http;
use crate::eventing::backend::AppendError;
use crate::http_util::{line, with_retry_after};
use crate::telemetry::trace::{Hop, Parent};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// Default largest request body accepted (1 MiB).
pub(crate) const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// Default ingress requests in flight per broker.
pub(crate) const DEFAULT_MAX_REQUESTS_PER_BROKER: usize = 1024;
/// Default time a request's body has to arrive.
pub(crate) const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the ingress allows each request, beyond each broker's size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngressLimits {
    /// Requests in flight per broker (reading, checking, storing): with the
    /// size limit, what bounds the memory one broker's ingress holds.
    pub max_requests_per_broker: usize,
    /// How long the whole body may take to arrive: a client that trickles
    /// it is answered 408 rather than holding its slot.
    pub body_timeout: Duration,
}

impl Default for IngressLimits {
    fn default() -> Self {
        IngressLimits {
            max_requests_per_broker: DEFAULT_MAX_REQUESTS_PER_BROKER,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

/// What the ingress needs: the brokers, each with its own limit, who may
/// send to them, and the limits of every request.
#[derive(Clone)]
pub(crate) struct IngressState {
    pub brokers: Arc<BrokerRegistry>,
    pub gate: Arc<Gate>,
    pub limits: IngressLimits,
}

/// Serves one request to the ingress. The path is matched here rather than
/// by a router: it has one shape, and this is the hot path of every event.
pub(crate) async fn serve<B>(state: &IngressState, request: Request<B>) -> Response
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Taking the request apart avoids the header map copy an extractor makes.
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let Some((namespace, name)) = broker_path(path) else {
        return line(
            StatusCode::NOT_FOUND,
            format!(
                "no broker at {path}: the ingress URL of a broker is /{{namespace}}/{{broker}}"
            ),
        );
    };
    ingress(state, &namespace, &name, parts.method, &parts.headers, body).await
}

/// `(namespace, broker)` from `/{namespace}/{broker}`, percent-decoded
/// (borrowed from the path unless it had escapes).
fn broker_path(path: &str) -> Option<(Cow<'_, str>, Cow<'_, str>)> {
    let (namespace, name) = path.strip_prefix('/')?.split_once('/')?;
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return None;
    }
    let decode = |part| percent_decode_str(part).decode_utf8().ok();
    Some((decode(namespace)?, decode(name)?))
}

/// The ingress hop, traced: receive, validate and store, under the
/// sender's `traceparent`.
async fn ingress<B>(
    state: &IngressState,
    namespace: &str,
    name: &str,
    method: Method,
    headers: &HeaderMap,
    body: B,
) -> Response
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let hop = Hop::start(
        "broker.ingress",
        SpanKind::Server,
        || Parent::from_headers(headers),
        || {
            vec![
                KeyValue::new("messaging.system", "pilotlight"),
                KeyValue::new("messaging.operation.type", "receive"),
                KeyValue::new("messaging.destination.name", format!("{namespace}/{name}")),
            ]
        },
    );
    let response = receive(state, namespace, name, method, headers, body, &hop).await;
    let status = response.status();
    hop.set(|| KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
    if status.is_client_error() || status.is_server_error() {
        hop.fail(|| format!("answered {status}"));
    }
    response
}

async fn receive<B>(
    state: &IngressState,
    namespace: &str,
    name: &str,
    method: Method,
    headers: &HeaderMap,
    body: B,
    hop: &Hop,
) -> Response
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let key = || format!("{namespace}/{name}");
    let broker = match state.brokers.get(namespace, name) {
        None => {
            reject_metric("unknown", "unknown_broker");
            return line(
                StatusCode::NOT_FOUND,
                format!(
                    "broker {} not found: the URL is /{{namespace}}/{{broker}}; `pilotlight get brokers` lists them",
                    key()
                ),
            );
        }
        Some(BrokerEntry::NotReady { reason }) => {
            reject_metric(&key(), "not_ready");
            return retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                5,
                format!("broker {} is not ready: {reason}", key()),
            );
        }
        Some(BrokerEntry::Ready(handle)) => handle,
    };
    match method {
        Method::POST => {}
        Method::OPTIONS => return webhook_handshake(headers),
        _ => {
            let mut response = line(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} is not allowed: send events with POST"),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
            return response;
        }
    }
    let max_requests = state.limits.max_requests_per_broker;
    let Some(_slot) = broker.request_slot(max_requests) else {
        reject_metric(&key(), "overloaded");
        return retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            1,
            format!(
                "broker {} has {max_requests} requests in flight, its limit (set with --max-requests-per-broker): try again later",
                key()
            ),
        );
    };
    // Who sends, before the body is read: a refused sender costs no more.
    let sender = match state.gate.authenticate(namespace, name, headers).await {
        Ok(sender) => sender,
        Err(error) => return unauthenticated(&key(), &error),
    };
    let limit = broker.max_event_bytes();
    if let Some(length) = content_length(headers)
        && length > limit
    {
        return too_large(&key(), limit);
    }
    let timeout = state.limits.body_timeout;
    let Ok(read) = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await else {
        reject_metric(&key(), "body_timeout");
        let mut response = line(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {timeout:?} (set with --request-body-timeout)"
            ),
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    };
    let body = match read {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return too_large(&key(), limit);
        }
        Err(e) => {
            reject_metric(&key(), "read_error");
            return line(
                StatusCode::BAD_REQUEST,
                format!("reading the request body failed: {e}"),
            );
        }
    };
    let events = match parse_http(headers, body) {
        Ok((_, events)) => events,
        Err(e) => {
            reject_metric(&key(), "invalid");
            return line(StatusCode::BAD_REQUEST, format!("invalid CloudEvent: {e}"));
        }
    };
    if let Some(sender) = sender {
        let decided = state.gate.authorize(
            namespace,
            name,
            &sender.subject,
            events.len(),
            &|filter, i| filter.matches(&events[i]),
            &|i| events[i].id().to_owned(),
        );
        if let Err(forbidden) = decided {
            reject_metric(&key(), "forbidden");
            return line(StatusCode::FORBIDDEN, forbidden.to_string());
        }
    }
    hop.set(|| KeyValue::new("messaging.batch.message_count", events.len() as i64));
    if let [event] = events.as_slice() {
        hop.set(|| KeyValue::new("cloudevents.event_id", event.id().to_owned()));
        hop.set(|| KeyValue::new("cloudevents.event_type", event.ty().to_owned()));
    }
    match broker.publish(events, hop).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => refusal(&e),
    }
}

/// The answer to an append the backend did not take: come back later, or
/// do not send this again.
fn refusal(error: &AppendError) -> Response {
    let status = error.status();
    if error.is_permanent() {
        return line(status, error.to_string());
    }
    retry_later(
        status,
        error.retry_after().as_secs().max(1),
        error.to_string(),
    )
}

/// 401 with why, in the body and in `WWW-Authenticate` (RFC 6750); 503
/// with Retry-After when the token's issuer cannot be reached.
fn unauthenticated(broker: &str, error: &TokenError) -> Response {
    reject_metric(broker, error.reason());
    let status = error.status();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return retry_later(status, 5, error.to_string());
    }
    let mut response = line(status, error.to_string());
    if let Ok(challenge) = HeaderValue::try_from(error.www_authenticate()) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large(broker: &str, limit: usize) -> Response {
    reject_metric(broker, "too_large");
    line(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is over the limit of {limit} bytes (set with --max-event-size)"),
    )
}

/// The CloudEvents webhook validation handshake (abuse protection).
fn webhook_handshake(headers: &HeaderMap) -> Response {
    let origin = headers
        .get("webhook-request-origin")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("*"));
    let mut response = StatusCode::OK.into_response();
    let h = response.headers_mut();
    h.insert("webhook-allowed-origin", origin);
    h.insert("webhook-allowed-rate", HeaderValue::from_static("*"));
    h.insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
    response
}

fn retry_later(status: StatusCode, seconds: u64, message: String) -> Response {
    with_retry_after(line(status, message), seconds)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::broker_path;

    #[test]
    fn the_path_names_a_namespace_and_a_broker() {
        let pair = |ns, b| Some((Cow::Borrowed(ns), Cow::Borrowed(b)));
        assert_eq!(broker_path("/default/orders"), pair("default", "orders"));
        assert_eq!(broker_path("/team%2Da/orders"), pair("team-a", "orders"));
        for wrong in [
            "/",
            "/default",
            "/default/",
            "//orders",
            "/a/b/c",
            "/a/b/",
            "a/b",
            "/a/%FF",
        ] {
            assert_eq!(broker_path(wrong), None, "{wrong}");
        }
    }
}
