//! Deliveries to pilotlight's own main listener, handed over in process.
//!
//! A trigger whose subscriber is one of pilotlight's Services, a reply or a
//! dead-letter sink that is one of its brokers, a source whose sink is its
//! broker: each would go out over loopback TCP to this same process, be
//! framed, read and parsed by hyper again, and come back the same way. Here
//! the request goes straight to the main listener's service instead, the one
//! every TCP request reaches: the same host routing, activator and cold
//! start, broker ingress with its validation, size limit, per-broker limit,
//! authentication and policies, and the same metrics. Only the socket and
//! the HTTP/1.1 framing are skipped; what the connection-level limits of
//! the listener guard against (slow or too many clients) does not exist in
//! process.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Full;

/// The main listener's service, as the in-process hand-over calls it.
pub trait MainListenerService: Send + Sync + 'static {
    /// Serves a request as if it had arrived on the main listener (its URI
    /// in origin form, its `Host` header set).
    fn call(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send + 'static>>;
}

/// Which URLs are pilotlight's own main listener, and its service once the
/// server has built it (after the control plane, which holds the senders).
pub(super) struct OwnListener {
    listen: SocketAddr,
    /// `.localhost` (the serving domain): service hosts, which pilotlight
    /// resolves to its own listener.
    service_suffix: Arc<str>,
    /// Weak: the service holds the brokers, whose senders hold this; once
    /// the listener is gone (the server stopped), requests go over TCP
    /// and find nothing there, as any client's would.
    service: OnceLock<Weak<dyn MainListenerService>>,
    /// With transport encryption strict, plain `http://` requests are
    /// refused at the listener (426): those still go over TCP to get it.
    plain_http_refused: OnceLock<bool>,
}

impl OwnListener {
    pub(super) fn new(listen: SocketAddr, service_suffix: Arc<str>) -> Self {
        OwnListener {
            listen,
            service_suffix,
            service: OnceLock::new(),
            plain_http_refused: OnceLock::new(),
        }
    }

    /// Hands requests for this listener to `service` from now on, as long
    /// as something else keeps it.
    pub(super) fn attach(&self, service: &Arc<dyn MainListenerService>, plain_http_refused: bool) {
        let _ = self.plain_http_refused.set(plain_http_refused);
        if self.service.set(Arc::downgrade(service)).is_err() {
            tracing::debug!("the main listener's in-process service was attached twice");
        }
    }

    /// The service, when `uri` is this listener's and it is attached.
    pub(super) fn service_for(&self, uri: &Uri) -> Option<Arc<dyn MainListenerService>> {
        let service = self.service.get()?;
        let scheme = uri.scheme()?;
        let plain = *scheme == Scheme::HTTP;
        if !(plain || *scheme == Scheme::HTTPS) {
            return None;
        }
        if plain && self.plain_http_refused.get().copied().unwrap_or(false) {
            return None;
        }
        let default_port = if plain { 80 } else { 443 };
        if uri.port_u16().unwrap_or(default_port) != self.listen.port() {
            return None;
        }
        if !self.is_own_host(uri.host()?) {
            return None;
        }
        service.upgrade()
    }

    fn is_own_host(&self, host: &str) -> bool {
        let suffix = &*self.service_suffix;
        if host.len() > suffix.len()
            && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        {
            return true;
        }
        if host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let Ok(ip) = host.parse::<IpAddr>() else {
            return false;
        };
        ip == self.listen.ip() || (self.listen.ip().is_unspecified() && ip.is_loopback())
    }
}

/// The request as the listener would have read it: origin-form URI, the
/// authority in `Host`.
pub(super) fn as_received(mut request: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let uri = request.uri();
    let host = uri
        .authority()
        .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok());
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(path);
    if let Some(host) = host {
        request.headers_mut().insert(header::HOST, host);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl MainListenerService for Nothing {
        fn call(
            &self,
            _: Request<Full<Bytes>>,
        ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send + 'static>> {
            Box::pin(async { Response::new(Body::empty()) })
        }
    }

    fn nothing() -> Arc<dyn MainListenerService> {
        Arc::new(Nothing)
    }

    fn attached(listen: &str, service: &Arc<dyn MainListenerService>) -> OwnListener {
        let own = OwnListener::new(listen.parse().expect("address"), Arc::from(".localhost"));
        own.attach(service, false);
        own
    }

    fn is_own(own: &OwnListener, uri: &str) -> bool {
        own.service_for(&uri.parse().expect("uri")).is_some()
    }

    #[test]
    fn own_urls_are_the_listeners_address_and_service_hosts_on_its_port() {
        let service = nothing();
        let own = attached("0.0.0.0:8080", &service);
        for uri in [
            "http://127.0.0.1:8080/default/default",
            "http://localhost:8080/ns/b",
            "http://hello.default.localhost:8080/",
            "https://hello.default.localhost:8080/",
            "http://[::1]:8080/ns/b",
        ] {
            assert!(is_own(&own, uri), "{uri}");
        }
        for uri in [
            "http://127.0.0.1:9090/default/default",
            "http://example.com:8080/",
            "http://10.0.0.1:8080/",
            "http://hello.default.localhost/",
            "ftp://127.0.0.1:8080/",
        ] {
            assert!(!is_own(&own, uri), "{uri}");
        }
        let bound = attached("10.1.2.3:8080", &service);
        assert!(is_own(&bound, "http://10.1.2.3:8080/a/b"));
        assert!(!is_own(&bound, "http://127.0.0.1:8080/a/b"));
    }

    #[test]
    fn nothing_is_own_until_the_service_is_attached_and_strict_keeps_http_on_tcp() {
        let own = OwnListener::new(
            "127.0.0.1:8080".parse().expect("address"),
            ".localhost".into(),
        );
        assert!(!is_own(&own, "http://127.0.0.1:8080/a/b"));
        let service = nothing();
        own.attach(&service, true);
        assert!(!is_own(&own, "http://127.0.0.1:8080/a/b"));
        assert!(is_own(&own, "https://127.0.0.1:8080/a/b"));
        drop(service);
        assert!(
            !is_own(&own, "https://127.0.0.1:8080/a/b"),
            "a stopped server's listener is reached over TCP"
        );
    }

    #[test]
    fn the_request_arrives_in_origin_form_with_its_host() {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = "http://hello.default.localhost:8080/p?q=1"
            .parse()
            .expect("uri");
        let received = as_received(request);
        assert_eq!(received.uri(), "/p?q=1");
        assert_eq!(
            received.headers()[header::HOST],
            "hello.default.localhost:8080"
        );
    }
}
