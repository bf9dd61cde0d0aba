//! Verifying senders' tokens: signature, issuer, audience and expiry,
//! against the trusted issuers' keys (OIDC discovery, then the JWKS;
//! fetched at the first token and again, at most every
//! [`REFRESH_EVERY`], when a token names a key the issuer did not have),
//! and pilotlight's own issuer's key, held in process.
//!
//! A verified token is kept until it expires, keyed by the token itself:
//! the next request with it costs a hash look-up, not a signature check.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::IssuerSource;
use super::issuer::{DISCOVERY_PATH, Issuer, JWKS_PATH, now_secs};

/// How often an issuer's keys may be fetched again for an unknown key id.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;
/// Verified tokens kept at most; past it the expired go, then all.
const CACHE_MAX: usize = 100_000;
/// The largest discovery document or JWKS read.
const DOCUMENT_MAX: usize = 1 << 20;

/// Why a token is not accepted. [`TokenError::status`] is 401, or 503 when
/// the issuer cannot be reached (not the sender's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    #[error(
        "no bearer token: send 'Authorization: Bearer <token>', an OIDC token whose audience is {audience}"
    )]
    Missing { audience: String },
    #[error("the bearer token is not a JWT: {0}")]
    Malformed(String),
    #[error(
        "the token's issuer '{issuer}' is not trusted (trusted: {trusted}; add it with --oidc-issuer)"
    )]
    UnknownIssuer { issuer: String, trusted: String },
    #[error("issuer {issuer} has no key '{kid}' in its JWKS")]
    UnknownKey { issuer: String, kid: String },
    #[error("the token's signature does not verify with the keys of issuer {issuer}")]
    BadSignature { issuer: String },
    #[error("the token expired at {at}")]
    Expired { at: String },
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's audience is {got}, not {expected}")]
    WrongAudience { expected: String, got: String },
    #[error("issuer {issuer} cannot be reached to check the token: {reason}")]
    Unavailable { issuer: String, reason: String },
}

impl TokenError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            TokenError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// A short reason, for metrics.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing { .. } => "token_missing",
            TokenError::Malformed(_) => "token_malformed",
            TokenError::UnknownIssuer { .. } => "token_unknown_issuer",
            TokenError::UnknownKey { .. } => "token_unknown_key",
            TokenError::BadSignature { .. } => "token_bad_signature",
            TokenError::Expired { .. } => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongAudience { .. } => "token_wrong_audience",
            TokenError::Unavailable { .. } => "issuer_unavailable",
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750): no error code when there
    /// was no token at all.
    pub(crate) fn www_authenticate(&self) -> String {
        match self {
            TokenError::Missing { .. } => "Bearer realm=\"pilotlight\"".to_owned(),
            other => {
                let description: String = other
                    .to_string()
                    .chars()
                    .map(|c| match c {
                        '"' | '\\' => '\'',
                        c if c.is_ascii() && !c.is_ascii_control() => c,
                        _ => '?',
                    })
                    .collect();
                format!(
                    "Bearer realm=\"pilotlight\", error=\"invalid_token\", error_description=\"{description}\""
                )
            }
        }
    }
}

/// Who a verified token says the sender is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    pub subject: String,
    pub issuer: String,
    audiences: Vec<String>,
    /// Unix seconds.
    expires: u64,
}

/// The keys of one trusted issuer.
struct KeySet {
    /// The `iss` its discovery document gives.
    issuer: String,
    /// Key id, the key's `alg` (None: the token's, within the key's
    /// family), the key.
    keys: Vec<(Option<String>, Option<Algorithm>, KeyFamily, DecodingKey)>,
}

/// What a key can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFamily {
    Rsa,
    Ec,
    Other,
}

impl KeyFamily {
    fn admits(self, algorithm: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyFamily::Rsa => matches!(algorithm, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyFamily::Ec => matches!(algorithm, ES256 | ES384),
            KeyFamily::Other => false,
        }
    }
}

struct Trusted {
    source: IssuerSource,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// When the keys were last fetched (or tried); one fetch at a time.
    fetched: tokio::sync::Mutex<Option<Instant>>,
}

type FetchClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Verifies tokens for the ingress.
pub(crate) struct Verifier {
    trusted: Vec<Trusted>,
    own: Option<Arc<Issuer>>,
    verified: RwLock<HashMap<Box<str>, Arc<Verified>>>,
    client: FetchClient,
}

#[derive(Deserialize)]
struct Peek {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    exp: Option<u64>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn list(&self) -> Vec<String> {
        match self {
            Audience::One(one) => vec![one.clone()],
            Audience::Many(many) => many.clone(),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    aud: Audience,
    exp: u64,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// The client discovery documents and JWKS are read with: http, or https
/// checked against the platform's trust store.
fn fetch_client() -> FetchClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_platform_verifier()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

impl Verifier {
    pub(crate) fn new(issuers: Vec<IssuerSource>, own: Option<Arc<Issuer>>) -> Self {
        Verifier {
            trusted: issuers
                .into_iter()
                .map(|source| Trusted {
                    source,
                    keys: RwLock::new(None),
                    fetched: tokio::sync::Mutex::new(None),
                })
                .collect(),
            own,
            verified: RwLock::default(),
            client: fetch_client(),
        }
    }

    /// Fetches every issuer's keys once (at start, so the first request
    /// does not wait); failures are logged and tried again on demand.
    pub(crate) async fn prefetch(&self) {
        for trusted in &self.trusted {
            if let Err(e) = self.refresh(trusted, true).await {
                tracing::warn!(issuer = ?trusted.source, error = %e, "cannot read the OIDC issuer's keys yet; trying again at the first token it signed");
            }
        }
    }

    /// The trusted issuers, for messages.
    fn trusted_names(&self) -> String {
        let mut names: Vec<String> = self.own.iter().map(|own| own.url().to_owned()).collect();
        for trusted in &self.trusted {
            let known = trusted
                .keys
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|k| k.issuer.clone());
            names.push(known.unwrap_or_else(|| format!("{:?}", trusted.source)));
        }
        names.join(", ")
    }

    /// Checks `token` for `audience`.
    pub(crate) async fn verify(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<Arc<Verified>, TokenError> {
        let cached = self
            .verified
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned();
        if let Some(verified) = cached {
            return self.recheck(token, verified, audience);
        }
        let verified = Arc::new(self.verify_anew(token, audience).await?);
        let mut cache = self.verified.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            let now = now_secs();
            cache.retain(|_, v| v.expires > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(token.into(), verified.clone());
        Ok(verified)
    }

    /// A cached token: still valid, and for this audience?
    fn recheck(
        &self,
        token: &str,
        verified: Arc<Verified>,
        audience: &str,
    ) -> Result<Arc<Verified>, TokenError> {
        if verified.expires + LEEWAY_SECS <= now_secs() {
            self.verified
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(token);
            return Err(TokenError::Expired {
                at: unix_time(verified.expires),
            });
        }
        if !verified.audiences.iter().any(|a| a == audience) {
            return Err(TokenError::WrongAudience {
                expected: audience.to_owned(),
                got: verified.audiences.join(", "),
            });
        }
        Ok(verified)
    }

    async fn verify_anew(&self, token: &str, audience: &str) -> Result<Verified, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let peek = peek(token)?;
        let issuer = peek
            .iss
            .clone()
            .ok_or_else(|| TokenError::Malformed("it has no 'iss' claim".into()))?;
        let kid = header.kid.clone();
        let (algorithm, key) = match &self.own {
            Some(own) if own.url() == issuer => {
                if kid.as_deref().is_some_and(|k| k != own.kid()) {
                    return Err(TokenError::UnknownKey {
                        issuer,
                        kid: kid.unwrap_or_default(),
                    });
                }
                (Algorithm::ES256, own.decoding_key().clone())
            }
            _ => self.key_of(&issuer, kid.as_deref(), header.alg).await?,
        };
        let mut validation = Validation::new(algorithm);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[issuer.as_str()]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| classify(e, &issuer, audience, &peek))?
            .claims;
        Ok(Verified {
            subject: claims.sub,
            issuer: claims.iss,
            audiences: claims.aud.list(),
            expires: claims.exp,
        })
    }

    /// The key of a configured issuer for `kid`, fetching its keys when
    /// they are not known yet or lack that key.
    async fn key_of(
        &self,
        issuer: &str,
        kid: Option<&str>,
        signed_with: Algorithm,
    ) -> Result<(Algorithm, DecodingKey), TokenError> {
        let find = |trusted: &Trusted| {
            trusted
                .keys
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .filter(|k| k.issuer == issuer)
        };
        let mut owner = self.trusted.iter().find_map(|t| Some((t, find(t)?)));
        if owner.is_none() {
            // An issuer not discovered yet may be this one.
            let mut unavailable = None;
            for trusted in &self.trusted {
                let known = trusted
                    .keys
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some();
                if !known && let Err(e) = self.refresh(trusted, false).await {
                    unavailable = Some(e);
                }
            }
            owner = self.trusted.iter().find_map(|t| Some((t, find(t)?)));
            if owner.is_none() {
                if let Some(e) = unavailable {
                    return Err(e);
                }
                return Err(TokenError::UnknownIssuer {
                    issuer: issuer.to_owned(),
                    trusted: self.trusted_names(),
                });
            }
        }
        let Some((trusted, keys)) = owner else {
            unreachable!("checked above");
        };
        if let Some(found) = pick(&keys, kid, signed_with) {
            return Ok(found);
        }
        // A key it did not have: rotated since, perhaps.
        let _ = self.refresh(trusted, false).await;
        let keys = find(trusted);
        keys.as_deref()
            .and_then(|keys| pick(keys, kid, signed_with))
            .ok_or_else(|| TokenError::UnknownKey {
                issuer: issuer.to_owned(),
                kid: kid.unwrap_or("(none)").to_owned(),
            })
    }

    /// Fetches an issuer's discovery document and JWKS, at most once per
    /// [`REFRESH_EVERY`] unless `force`.
    async fn refresh(&self, trusted: &Trusted, force: bool) -> Result<(), TokenError> {
        let mut fetched = trusted.fetched.lock().await;
        if !force && fetched.is_some_and(|at| at.elapsed() < REFRESH_EVERY) {
            return Ok(());
        }
        *fetched = Some(Instant::now());
        let keys = self
            .fetch(&trusted.source)
            .await
            .map_err(|reason| TokenError::Unavailable {
                issuer: format!("{:?}", trusted.source),
                reason,
            })?;
        tracing::debug!(issuer = %keys.issuer, keys = keys.keys.len(), "read an OIDC issuer's keys");
        *trusted.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keys));
        Ok(())
    }

    async fn fetch(&self, source: &IssuerSource) -> Result<KeySet, String> {
        let (issuer, jwks) = match source {
            IssuerSource::Url(url) => {
                let base = url.trim_end_matches('/');
                let discovery: Discovery =
                    self.get_json(&format!("{base}{DISCOVERY_PATH}")).await?;
                let jwks: JwkSet = self.get_json(&discovery.jwks_uri).await?;
                (discovery.issuer, jwks)
            }
            IssuerSource::Kubernetes(client) => {
                let discovery: Discovery = kube_json(client, DISCOVERY_PATH).await?;
                // Through the API server's connection, whatever its
                // jwks_uri says (often an address only the cluster reaches).
                let jwks: JwkSet = kube_json(client, JWKS_PATH).await?;
                (discovery.issuer, jwks)
            }
        };
        let keys = jwks
            .keys
            .iter()
            // Encryption keys are not for checking signatures.
            .filter(|jwk| {
                !matches!(
                    jwk.common.public_key_use,
                    Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
                )
            })
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok()?;
                let algorithm = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| a.to_string().parse().ok());
                let family = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => KeyFamily::Ec,
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
                    _ => KeyFamily::Other,
                };
                Some((jwk.common.key_id.clone(), algorithm, family, key))
            })
            .collect();
        Ok(KeySet { issuer, keys })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let client = &self.client;
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("'{url}' is not a URL: {e}"))?;
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
            .await
            .map_err(|_| format!("GET {url}: no answer within 10s"))?
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), DOCUMENT_MAX)
            .collect()
            .await
            .map_err(|e| format!("GET {url}: reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("GET {url} answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not the expected JSON: {e}"))
    }
}

async fn kube_json<T: serde::de::DeserializeOwned>(
    client: &kube::Client,
    path: &str,
) -> Result<T, String> {
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let text = client
        .request_text(request)
        .await
        .map_err(|e| format!("GET {path} from the API server: {e}"))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("GET {path} from the API server: not the expected JSON: {e}"))
}

/// The key for `kid`, or the only key of a set when the token names none,
/// with the algorithm to check: the key's `alg`, else the token's when the
/// key can check it (else the key's family's usual one, which fails as a
/// bad signature).
fn pick(
    keys: &KeySet,
    kid: Option<&str>,
    signed_with: Algorithm,
) -> Option<(Algorithm, DecodingKey)> {
    let found = match kid {
        Some(kid) => keys
            .keys
            .iter()
            .find(|(k, _, _, _)| k.as_deref() == Some(kid)),
        None if keys.keys.len() == 1 => keys.keys.first(),
        None => None,
    };
    found.map(|(_, algorithm, family, key)| {
        let algorithm = algorithm.unwrap_or(if family.admits(signed_with) {
            signed_with
        } else if *family == KeyFamily::Ec {
            Algorithm::ES256
        } else {
            Algorithm::RS256
        });
        (algorithm, key.clone())
    })
}

/// The claims of a token read without checking it, to find its issuer.
fn peek(token: &str) -> Result<Peek, TokenError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| TokenError::Malformed("it has no payload".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| TokenError::Malformed(format!("its payload is not base64url: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        TokenError::Malformed(format!("its payload is not a JSON object of claims: {e}"))
    })
}

fn classify(
    error: jsonwebtoken::errors::Error,
    issuer: &str,
    audience: &str,
    peek: &Peek,
) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
            TokenError::BadSignature {
                issuer: issuer.to_owned(),
            }
        }
        ErrorKind::ExpiredSignature => TokenError::Expired { at: peek_exp(peek) },
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::WrongAudience {
            expected: audience.to_owned(),
            got: peek
                .aud
                .as_ref()
                .map_or_else(|| "missing".to_owned(), |a| a.list().join(", ")),
        },
        ErrorKind::InvalidIssuer => TokenError::UnknownIssuer {
            issuer: issuer.to_owned(),
            trusted: String::new(),
        },
        ErrorKind::MissingRequiredClaim(claim) => {
            TokenError::Malformed(format!("it has no '{claim}' claim"))
        }
        _ => TokenError::Malformed(error.to_string()),
    }
}

/// The token's expiry, for a message.
fn peek_exp(peek: &Peek) -> String {
    peek.exp
        .map_or_else(|| "a time in the past".to_owned(), unix_time)
}

fn unix_time(seconds: u64) -> String {
    chrono::DateTime::from_timestamp(seconds as i64, 0)
        .map_or_else(|| seconds.to_string(), |t| t.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Arc<Issuer> {
        Arc::new(Issuer::ephemeral("http://pilotlight.test").expect("issuer"))
    }

    #[tokio::test]
    async fn own_tokens_verify_and_each_failure_has_its_reason() {
        let issuer = own();
        let verifier = Verifier::new(Vec::new(), Some(issuer.clone()));
        let token = issuer
            .token("system:serviceaccount:ns:a", "aud-1")
            .expect("token");
        let verified = verifier.verify(&token, "aud-1").await.expect("verified");
        assert_eq!(verified.subject, "system:serviceaccount:ns:a");
        // From the cache, for another audience.
        let wrong = verifier
            .verify(&token, "aud-2")
            .await
            .expect_err("audience");
        assert_eq!(
            wrong.to_string(),
            "the token's audience is aud-1, not aud-2"
        );
        let now = now_secs();
        let expired = issuer
            .sign("s", "aud-1", now - 7200, now - 3600)
            .expect("sign");
        let error = verifier
            .verify(&expired, "aud-1")
            .await
            .expect_err("expired");
        assert!(matches!(error, TokenError::Expired { .. }), "{error}");
        let stranger = Issuer::ephemeral("http://pilotlight.test").expect("issuer");
        let forged = stranger.sign("s", "aud-1", now, now + 60).expect("sign");
        let error = verifier.verify(&forged, "aud-1").await.expect_err("forged");
        assert!(
            matches!(
                error,
                TokenError::UnknownKey { .. } | TokenError::BadSignature { .. }
            ),
            "{error}"
        );
        let elsewhere = Issuer::ephemeral("http://elsewhere").expect("issuer");
        let unknown = elsewhere.sign("s", "aud-1", now, now + 60).expect("sign");
        let error = verifier
            .verify(&unknown, "aud-1")
            .await
            .expect_err("issuer");
        assert!(
            error
                .to_string()
                .starts_with("the token's issuer 'http://elsewhere' is not trusted"),
            "{error}"
        );
        let error = verifier.verify("abc", "aud-1").await.expect_err("garbage");
        assert!(matches!(error, TokenError::Malformed(_)), "{error}");
    }

    #[test]
    fn the_challenge_names_the_error_without_quotes() {
        let error = TokenError::WrongAudience {
            expected: "a\"b".into(),
            got: "c".into(),
        };
        assert_eq!(
            error.www_authenticate(),
            "Bearer realm=\"pilotlight\", error=\"invalid_token\", error_description=\"the token's audience is c, not a'b\""
        );
        let missing = TokenError::Missing {
            audience: "x".into(),
        };
        assert_eq!(missing.www_authenticate(), "Bearer realm=\"pilotlight\"");
    }
}
