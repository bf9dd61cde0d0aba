//! One HTTP attempt: send an event in binary mode (or structured, when the
//! delivery's `format` is `json`) with `Prefer: reply`, and classify the
//! answer.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};

use super::in_process::{self, MainListenerService, OwnListener};
use crate::api::duck::DeliveryFormat;
use crate::auth::{Issuer, SenderCredentials, SenderIdentity};
use crate::cloudevent::{
    CONTENT_TYPE_STRUCTURED, Event, carries_event, encode_binary_headers, encode_structured,
    parse_http,
};
use crate::http_util::{self, ClientSettings};
use crate::telemetry::trace::Hop;
use crate::tls::ClientTls;

/// Knative keeps at most this much of a failed response in `knativeerrordata`.
pub(super) const ERROR_DATA_MAX: usize = 1024;
/// Largest reply event read from a subscriber.
const REPLY_MAX: usize = 4 << 20;

/// Why an attempt failed.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// The HTTP status, when the subscriber answered at all.
    pub status: Option<StatusCode>,
    /// Whether Knative's rules call for another attempt: 404, 409, 429, 5xx,
    /// timeouts and network errors.
    pub retryable: bool,
    /// The subscriber's Retry-After, if it sent one.
    pub retry_after: Option<Duration>,
    /// The start of the response body, or the error, for `knativeerrordata`.
    pub data: Bytes,
    /// For logs and status.
    pub message: String,
}

/// Resolves service hosts (`hello.default.localhost`) to pilotlight's own
/// listener and every other name with the system resolver. glibc does not
/// resolve `*.localhost`, and a custom `--domain` has no DNS at all.
#[derive(Clone)]
pub(super) struct LocalDomainResolver {
    /// `.localhost`; None resolves everything with the system.
    suffix: Option<Arc<str>>,
    ip: IpAddr,
    system: GaiResolver,
}

impl Default for LocalDomainResolver {
    fn default() -> Self {
        LocalDomainResolver {
            suffix: None,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            system: GaiResolver::new(),
        }
    }
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower::Service<Name> for LocalDomainResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let local = self.suffix.as_deref().is_some_and(|suffix| {
            let host = name.as_str();
            host.len() > suffix.len()
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        });
        if local {
            // The connector sets the port from the URI.
            let addresses = vec![SocketAddr::new(self.ip, 0)].into_iter();
            return Box::pin(std::future::ready(Ok(addresses)));
        }
        let resolving = self.system.call(name);
        Box::pin(async move { Ok(resolving.await?.collect::<Vec<_>>().into_iter()) })
    }
}

/// Where one delivery goes: the URL, and for an `https://` one the CA
/// certificates (PEM) its server's certificate may chain to besides the
/// system's and the trust bundles (a Destination's `CACerts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub uri: Uri,
    pub ca_certs: Option<Arc<str>>,
}

impl Target {
    pub fn new(uri: Uri, ca_certs: Option<&str>) -> Self {
        Target {
            uri,
            ca_certs: ca_certs.filter(|pem| !pem.trim().is_empty()).map(Arc::from),
        }
    }
}

impl From<Uri> for Target {
    fn from(uri: Uri) -> Self {
        Target {
            uri,
            ca_certs: None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.uri.fmt(f)
    }
}

/// The result of one attempt.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// 2xx; with the reply event when the response carried one.
    Delivered {
        status: StatusCode,
        reply: Option<Event>,
    },
    Failed(Failure),
}

type HttpsClient =
    Client<hyper_rustls::HttpsConnector<HttpConnector<LocalDomainResolver>>, Full<Bytes>>;
/// HTTPS clients by `CACerts`, each with the configuration it was built from.
type HttpsClients = HashMap<Option<Arc<str>>, (Arc<rustls::ClientConfig>, HttpsClient)>;

/// The HTTP client every delivery shares (connection pooling per host); for
/// `https://` targets one client per distinct set of trusted CAs.
#[derive(Clone)]
pub struct EventSender {
    client: Client<HttpConnector<LocalDomainResolver>, Full<Bytes>>,
    resolver: LocalDomainResolver,
    tls: ClientTls,
    /// HTTPS clients by the target's `CACerts`, each with the
    /// configuration it was built from (rebuilt when that changes: new
    /// trust bundles).
    https: Arc<Mutex<HttpsClients>>,
    /// With authentication on: pilotlight's issuer, which signs the
    /// tokens of [`EventSender::identity`].
    issuer: Option<Arc<Issuer>>,
    /// Who sends (a trigger, a subscription, a source) and the audiences of
    /// its destinations: requests to those carry a token for them.
    identity: Option<Arc<SenderIdentity>>,
    /// pilotlight's own main listener: requests for it are handed over in
    /// process (see `in_process`).
    own: Option<Arc<OwnListener>>,
}

/// How the sender connects (HTTP and HTTPS alike).
const SETTINGS: ClientSettings = ClientSettings {
    nodelay: true,
    connect_timeout: Some(Duration::from_secs(5)),
    tcp_keepalive: None,
    pool_idle_timeout: Some(Duration::from_secs(60)),
    pool_max_idle_per_host: 512,
};

impl Default for EventSender {
    fn default() -> Self {
        Self::new()
    }
}

impl EventSender {
    pub fn new() -> Self {
        Self::with_resolver(LocalDomainResolver::default())
    }

    /// A sender that reaches `*.{domain}` (service hosts) on the main
    /// listener's address, whatever the system resolver says of them.
    pub(crate) fn with_local_domain(domain: &str, listen: SocketAddr) -> Self {
        let ip = match listen.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        let suffix: Arc<str> = format!(".{}", domain.to_ascii_lowercase()).into();
        let mut sender = Self::with_resolver(LocalDomainResolver {
            suffix: Some(suffix.clone()),
            ip,
            system: GaiResolver::new(),
        });
        sender.own = Some(Arc::new(OwnListener::new(listen, suffix)));
        sender
    }

    /// From now on, and while `service` lives, requests for pilotlight's
    /// own main listener (its address, service hosts) go to it in process,
    /// from this sender and every one cloned from it. `plain_http_refused`: transport
    /// encryption is strict, so `http://` ones keep going over TCP (to be
    /// refused there, as for any client).
    pub(crate) fn hand_over_in_process(
        &self,
        service: &Arc<dyn MainListenerService>,
        plain_http_refused: bool,
    ) {
        if let Some(own) = &self.own {
            own.attach(service, plain_http_refused);
        }
    }

    fn with_resolver(resolver: LocalDomainResolver) -> Self {
        EventSender {
            client: http_util::client(resolver.clone(), SETTINGS),
            resolver,
            tls: ClientTls::default(),
            https: Arc::default(),
            issuer: None,
            identity: None,
            own: None,
        }
    }

    /// This sender with pilotlight's issuer: its senders with an identity
    /// sign tokens for their destinations' audiences.
    pub(crate) fn with_issuer(mut self, issuer: Option<Arc<Issuer>>) -> Self {
        self.issuer = issuer;
        self
    }

    /// This sender (sharing its connections) sending as `identity`.
    pub(crate) fn as_identity(&self, identity: Option<Arc<SenderIdentity>>) -> Self {
        EventSender {
            identity,
            ..self.clone()
        }
    }

    /// The `Authorization` header for a request to `uri`: a token for its
    /// audience, when this sender has an identity and the destination an
    /// audience.
    fn authorization(&self, uri: &Uri) -> Option<HeaderValue> {
        let credentials = SenderCredentials {
            issuer: self.issuer.clone()?,
            identity: self.identity.clone()?,
        };
        HeaderValue::try_from(credentials.authorization(uri)?).ok()
    }

    /// The same sender verifying `https://` targets with `tls` (which
    /// trusts this process's own certificates and the trust bundles).
    pub(crate) fn with_tls(mut self, tls: ClientTls) -> Self {
        self.tls = tls;
        self.https = Arc::default();
        self
    }

    /// What `https://` targets are verified against; the trust bundles are
    /// set through it.
    pub(crate) fn tls(&self) -> &ClientTls {
        &self.tls
    }

    /// The HTTPS client that trusts what `target` needs, built on first
    /// use; an error names what in its `CACerts` is wrong.
    fn https_client(&self, target: &Target) -> Result<HttpsClient, String> {
        let config = self
            .tls
            .config(target.ca_certs.as_ref())
            .map_err(|e| e.to_string())?;
        let mut clients = self.https.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((built_from, client)) = clients.get(&target.ca_certs)
            && Arc::ptr_eq(built_from, &config)
        {
            return Ok(client.clone());
        }
        let client = http_util::https_client(self.resolver.clone(), SETTINGS, (*config).clone());
        clients.insert(target.ca_certs.clone(), (config, client.clone()));
        Ok(client)
    }

    /// Sends the event once in `format`, waiting at most `timeout` for the
    /// whole exchange.
    pub(crate) async fn send(
        &self,
        target: &Target,
        event: &Event,
        format: DeliveryFormat,
        timeout: Duration,
        trace: &Hop,
    ) -> Attempt {
        let uri = &target.uri;
        match tokio::time::timeout(timeout, self.exchange(target, event, format, trace)).await {
            Ok(attempt) => attempt,
            Err(_) => Attempt::Failed(Failure {
                status: None,
                retryable: true,
                retry_after: None,
                data: Bytes::from(format!("dispatch error: no response within {timeout:?}")),
                message: format!("no response from {uri} within {timeout:?}"),
            }),
        }
    }

    async fn exchange(
        &self,
        target: &Target,
        event: &Event,
        format: DeliveryFormat,
        trace: &Hop,
    ) -> Attempt {
        let uri = &target.uri;
        let mut request = encode(event, format);
        trace.inject(request.headers_mut());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri.clone();
        request
            .headers_mut()
            .insert("prefer", HeaderValue::from_static("reply"));
        if let Some(authorization) = self.authorization(uri) {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, authorization);
        }
        if let Some(service) = self.own.as_ref().and_then(|own| own.service_for(uri)) {
            let response = service.call(in_process::as_received(request)).await;
            return answered(uri, response).await;
        }
        let sent = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
            match self.https_client(target) {
                Ok(client) => client.request(request).await,
                Err(message) => return tls_failure(uri, message),
            }
        } else {
            self.client.request(request).await
        };
        match sent {
            Ok(response) => answered(uri, response).await,
            Err(e) => network_failure(uri, &e),
        }
    }
}

/// What a destination's answer means: delivered (with a reply, if it
/// carries one) or failed, with what Knative keeps of a failure.
async fn answered<B>(uri: &Uri, response: http::Response<B>) -> Attempt
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = response.into_parts();
    if parts.status.is_success() {
        return delivered(parts.status, &parts.headers, body).await;
    }
    let data = read_prefix(body, ERROR_DATA_MAX).await;
    Attempt::Failed(Failure {
        status: Some(parts.status),
        retryable: is_retryable(parts.status),
        retry_after: retry_after(&parts.headers),
        message: format!("{uri} answered {}", parts.status),
        data,
    })
}

/// The request's headers and body for the event in `format`.
fn encode(event: &Event, format: DeliveryFormat) -> Request<Full<Bytes>> {
    match format {
        DeliveryFormat::Binary => {
            let mut request = Request::new(Full::new(event.data().cloned().unwrap_or_default()));
            encode_binary_headers(event, request.headers_mut());
            request
        }
        DeliveryFormat::Json => {
            let mut request = Request::new(Full::new(Bytes::from(encode_structured(event))));
            request.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPE_STRUCTURED),
            );
            request
        }
    }
}

/// A 2xx answer: a reply event if the response carries one, which must be valid.
async fn delivered<B>(status: StatusCode, headers: &HeaderMap, body: B) -> Attempt
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if !carries_event(headers) {
        // Drain so the connection goes back to the pool.
        let _ = read_prefix(body, REPLY_MAX).await;
        return Attempt::Delivered {
            status,
            reply: None,
        };
    }
    let body = match http_body_util::Limited::new(body, REPLY_MAX)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return malformed_reply(status, format!("reading the reply failed: {e}")),
    };
    match parse_http(headers, body) {
        Ok((_, mut events)) if events.len() == 1 => Attempt::Delivered {
            status,
            reply: events.pop(),
        },
        Ok((_, events)) => malformed_reply(
            status,
            format!("a reply is one event, not a batch of {}", events.len()),
        ),
        Err(e) => malformed_reply(status, format!("the reply is not a valid CloudEvent: {e}")),
    }
}

fn malformed_reply(status: StatusCode, message: String) -> Attempt {
    Attempt::Failed(Failure {
        status: Some(status),
        retryable: true,
        retry_after: None,
        data: Bytes::from(message.clone()),
        message,
    })
}

/// A failure before anything was sent: the target's TLS settings (its
/// CACerts) are wrong. Retried like a network error: they may be fixed.
fn tls_failure(uri: &Uri, message: String) -> Attempt {
    Attempt::Failed(Failure {
        status: None,
        retryable: true,
        retry_after: None,
        data: Bytes::from(format!("dispatch error: POST {uri}: {message}")),
        message: format!("POST {uri} failed: {message}"),
    })
}

fn network_failure(uri: &Uri, error: &hyper_util::client::legacy::Error) -> Attempt {
    // A certificate the target's trust does not accept: named as such,
    // rather than as the connect error it surfaces as.
    if let Some(problem) = crate::tls::client::certificate_problem(error) {
        let hint = if problem.contains("UnknownIssuer") {
            ": give its CA in the destination's CACerts, or in a trust bundle (a ConfigMap labelled networking.knative.dev/trust-bundle: \"true\")"
        } else {
            ""
        };
        return tls_failure(uri, format!("{problem} (for {uri}){hint}"));
    }
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    Attempt::Failed(Failure {
        status: None,
        retryable: true,
        retry_after: None,
        data: Bytes::from(format!("dispatch error: POST {uri}: {message}")),
        message: format!("POST {uri} failed: {message}"),
    })
}

/// Knative retries on 404, 409, 429 and 5xx, and never on other 4xx.
pub(super) fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 404 | 409 | 429) || status.is_server_error()
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Reads at most `limit` bytes of a body and drops the rest.
async fn read_prefix<B>(mut body: B, limit: usize) -> Bytes
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut kept = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            let room = limit.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..data.len().min(room)]);
            if kept.len() >= limit {
                break;
            }
        }
    }
    Bytes::from(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_codes_follow_knative() {
        for code in [404, 409, 429, 500, 502, 503, 504] {
            assert!(
                is_retryable(StatusCode::from_u16(code).expect("code")),
                "{code}"
            );
        }
        for code in [400, 401, 403, 405, 410, 413, 422] {
            assert!(
                !is_retryable(StatusCode::from_u16(code).expect("code")),
                "{code}"
            );
        }
    }

    #[test]
    fn format_picks_the_http_mode() {
        let event = crate::cloudevent::test_event("7", "t.x", Some(Bytes::from_static(b"hi")));
        let binary = encode(&event, DeliveryFormat::Binary);
        assert_eq!(binary.headers()["ce-id"], "7");
        let json = encode(&event, DeliveryFormat::Json);
        assert_eq!(
            json.headers()[http::header::CONTENT_TYPE],
            CONTENT_TYPE_STRUCTURED
        );
        assert!(json.headers().get("ce-id").is_none());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
