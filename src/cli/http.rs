//! A small HTTP client for the commands that talk to servers (`get`,
//! `ready`, `send`).

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::dns::GaiResolver;

use crate::http_util::{self, ClientSettings};

/// A response, read whole.
pub(crate) struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Sends one request and reads the whole response (30 s at most).
pub(crate) async fn request(
    method: Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Bytes,
) -> anyhow::Result<Response> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers;
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let exchange = async {
        let response = if https {
            // The system's CAs (SSL_CERT_FILE and SSL_CERT_DIR are honoured).
            let tls = crate::tls::ClientTls::default().config(None)?;
            http_util::https_client::<_, Full<Bytes>>(
                GaiResolver::new(),
                ClientSettings::default(),
                (*tls).clone(),
            )
            .request(request)
            .await
        } else {
            http_util::client::<_, Full<Bytes>>(GaiResolver::new(), ClientSettings::default())
                .request(request)
                .await
        };
        let response = response.map_err(|e| match crate::tls::client::certificate_problem(&e) {
            Some(problem) => anyhow::anyhow!(
                "{problem} (set SSL_CERT_FILE to a PEM file with the CA that signed pilotlight's certificate)"
            ),
            None => anyhow::Error::new(e),
        })?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        anyhow::Ok(Response {
            status: parts.status,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .with_context(|| format!("{method} {uri}: no answer within 30 s"))?
        .with_context(|| format!("{method} {uri} failed"))
}

/// The URI of `path` on a running pilotlight's admin listener (`--admin`).
pub(crate) fn admin_uri(admin: &str, path: &str) -> anyhow::Result<Uri> {
    format!("http://{admin}{path}")
        .parse()
        .with_context(|| format!("'{admin}' is not an address (--admin / PILOTLIGHT_ADMIN)"))
}

/// GETs `path` from a running pilotlight's admin listener (`--admin`) and
/// fails unless it answers 2xx; the error says which address was tried.
pub(crate) async fn admin_get(admin: &str, path: &str) -> anyhow::Result<Response> {
    let uri = admin_uri(admin, path)?;
    let response = request(Method::GET, &uri, HeaderMap::new(), Bytes::new())
        .await
        .with_context(|| format!("is pilotlight running with --admin {admin}?"))?;
    anyhow::ensure!(
        response.status.is_success(),
        "{uri} answered {}: {}",
        response.status,
        String::from_utf8_lossy(&response.body).trim()
    );
    Ok(response)
}
