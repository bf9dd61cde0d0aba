//! An OIDC issuer in the bench's process, for the eventing bench's
//! `memory-oidc` target: a P-256 key, one token signed for the broker's
//! audience (the load generator sends it with every event), and the
//! discovery document and JWKS served on 127.0.0.1 for pilotlight to read.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running issuer.
pub(crate) struct BenchIssuer {
    pub(crate) url: String,
    key: EncodingKey,
    accept: JoinHandle<()>,
}

impl Drop for BenchIssuer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl BenchIssuer {
    pub(crate) async fn start() -> anyhow::Result<BenchIssuer> {
        let random = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &random)
            .map_err(|e| anyhow::anyhow!("cannot make a P-256 key: {e}"))?;
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &random)
                .map_err(|e| anyhow::anyhow!("cannot read the P-256 key: {e}"))?;
        let point = pair.public_key().as_ref().to_vec();
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("cannot listen for the bench's OIDC issuer")?;
        let url = format!("http://{}", listener.local_addr()?);
        let discovery = json!({
            "issuer": url, "jwks_uri": format!("{url}/keys"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
        .to_string();
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "bench",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        }]})
        .to_string();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (discovery, jwks) = (discovery.clone(), jwks.clone());
                let service = service_fn(move |request: Request<Incoming>| {
                    let body = match request.uri().path() {
                        "/.well-known/openid-configuration" => Some(discovery.clone()),
                        "/keys" => Some(jwks.clone()),
                        _ => None,
                    };
                    async move {
                        let mut response =
                            Response::new(Full::new(Bytes::from(body.clone().unwrap_or_default())));
                        if body.is_none() {
                            *response.status_mut() = StatusCode::NOT_FOUND;
                        }
                        response.headers_mut().insert(
                            header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(BenchIssuer {
            url,
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            accept,
        })
    }

    /// A token for `subject` and `audience`, valid for an hour.
    pub(crate) fn token(&self, subject: &str, audience: &str) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("bench".into());
        let claims = json!({"iss": self.url, "sub": subject, "aud": audience,
            "iat": now, "exp": now + 3600});
        jsonwebtoken::encode(&header, &claims, &self.key).context("signing the bench token")
    }
}
