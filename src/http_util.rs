//! HTTP pieces every layer uses: pilotlight's own plain-text answers, and the
//! pooled hyper client the delivery sender, the serving proxy and the CLI
//! each build with their own connection settings (the sender's also in
//! HTTPS, [`https_client`]).
//!
//! Named `http_util`, not `http`, so that `http::` keeps meaning the crate.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;

/// A plain-text answer from pilotlight itself, `body` as given.
/// An `http://` or `https://` URL with a host: what every address a user
/// gives pilotlight to send to (an issuer, the ingress, a collector) must be.
pub(crate) fn is_http_url(uri: &http::Uri) -> bool {
    matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
}

pub(crate) fn text<B: From<String>>(status: StatusCode, body: String) -> Response<B> {
    let mut response = Response::new(B::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A plain-text answer of one line: `message` and a newline.
pub(crate) fn line<B: From<String>>(status: StatusCode, message: String) -> Response<B> {
    text(status, format!("{message}\n"))
}

/// Tells the client when to try again (`Retry-After`, in seconds).
pub(crate) fn with_retry_after<B>(mut response: Response<B>, seconds: u64) -> Response<B> {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// How a pooled client connects and how long it keeps idle connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientSettings {
    /// `TCP_NODELAY` on new connections: small requests go out at once.
    pub nodelay: bool,
    /// Gives up connecting after this; None waits as long as the OS does.
    pub connect_timeout: Option<Duration>,
    /// TCP keepalive probes on idle connections; None sends none.
    pub tcp_keepalive: Option<Duration>,
    /// An idle pooled connection is closed after this; None keeps it.
    pub pool_idle_timeout: Option<Duration>,
    /// Idle connections kept per host at most.
    pub pool_max_idle_per_host: usize,
}

impl Default for ClientSettings {
    /// What hyper-util's `Client::builder(..).build_http()` gives: no
    /// connect timeout, a 90 s idle pool, keepalive probes after as long.
    fn default() -> Self {
        ClientSettings {
            nodelay: false,
            connect_timeout: None,
            tcp_keepalive: Some(Duration::from_secs(90)),
            pool_idle_timeout: Some(Duration::from_secs(90)),
            pool_max_idle_per_host: usize::MAX,
        }
    }
}

/// A pooled HTTP/1 client for both `http://` and `https://` URLs, the
/// latter verified as `tls` says; otherwise as [`client`].
pub(crate) fn https_client<R, B>(
    resolver: R,
    settings: ClientSettings,
    tls: rustls::ClientConfig,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector<R>>, B>
where
    hyper_rustls::HttpsConnector<HttpConnector<R>>: Connect + Clone,
    B: Body + Send,
    B::Data: Send,
{
    let mut connector = HttpConnector::new_with_resolver(resolver);
    connector.set_nodelay(settings.nodelay);
    connector.set_connect_timeout(settings.connect_timeout);
    connector.set_keepalive(settings.tcp_keepalive);
    connector.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .build(connector)
}

/// A pooled HTTP/1 client resolving names with `resolver` (a
/// [`GaiResolver`](hyper_util::client::legacy::connect::dns::GaiResolver)
/// for the system's).
pub(crate) fn client<R, B>(resolver: R, settings: ClientSettings) -> Client<HttpConnector<R>, B>
where
    HttpConnector<R>: Connect + Clone,
    B: Body + Send,
    B::Data: Send,
{
    let mut connector = HttpConnector::new_with_resolver(resolver);
    connector.set_nodelay(settings.nodelay);
    connector.set_connect_timeout(settings.connect_timeout);
    connector.set_keepalive(settings.tcp_keepalive);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_answer_is_plain_utf8_with_its_status() {
        let response: Response<String> = text(StatusCode::NOT_FOUND, "gone".into());
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        assert_eq!(response.body(), "gone");
    }

    #[test]
    fn a_line_ends_with_a_newline_and_may_say_when_to_retry() {
        let response: Response<String> =
            with_retry_after(line(StatusCode::TOO_MANY_REQUESTS, "full".into()), 3);
        assert_eq!(response.body(), "full\n");
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
