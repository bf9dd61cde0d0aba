//! pilotlight's own OIDC issuer: a P-256 key (made once and kept in the
//! data folder, or given with `--oidc-signing-key`), tokens minted per
//! (subject, audience) and reused until close to their expiry, and the
//! discovery document and JWKS the admin listener serves, so that a
//! subscriber verifies pilotlight's deliveries as it verifies any other
//! issuer's tokens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Where the discovery document is, under the issuer's URL.
pub(crate) const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Where the JWKS is, under the issuer's URL (the API server's path).
pub(crate) const JWKS_PATH: &str = "/openid/v1/jwks";
/// The key kept in the data folder.
const KEY_FILE: &str = "oidc/signing-key.p8";
/// How long a minted token lives.
const LIFETIME_SECS: u64 = 3600;
/// A cached token is minted again when less than this is left.
const RENEW_BEFORE_SECS: u64 = 600;

/// Why the issuer cannot start or sign.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IssuerError {
    #[error("cannot read the OIDC signing key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the OIDC signing key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the OIDC signing key {path} is not a PKCS#8 P-256 (prime256v1) private key, in PEM or DER: {reason}; make one with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`"
    )]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot make an OIDC signing key: {0}")]
    Generate(String),
    #[error("cannot sign a token: {0}")]
    Sign(String),
}

/// pilotlight's own issuer.
pub(crate) struct Issuer {
    url: String,
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The public key as a JWK.
    jwk: serde_json::Value,
    minted: RwLock<Minted>,
}

/// (subject, audience) → (token, expiry in unix seconds).
type Minted = HashMap<(String, String), (Arc<str>, u64)>;

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Issuer {
    /// The issuer at `url` (its `iss`), signing with the key at `key` (a
    /// file given by the user), else the one kept in `data_dir`, made at
    /// the first start.
    pub(crate) fn load(
        url: &str,
        key: Option<&Path>,
        data_dir: &Path,
    ) -> Result<Issuer, IssuerError> {
        let pkcs8 = match key {
            Some(path) => read_key(path)?,
            None => kept_key(&data_dir.join(KEY_FILE))?,
        };
        let path = key.map_or_else(|| data_dir.join(KEY_FILE), Path::to_path_buf);
        Issuer::from_pkcs8(url, &pkcs8).map_err(|reason| IssuerError::Invalid { path, reason })
    }

    /// An issuer with a fresh key, kept nowhere.
    #[cfg(test)]
    pub(crate) fn ephemeral(url: &str) -> Result<Issuer, IssuerError> {
        let pkcs8 = generate()?;
        Issuer::from_pkcs8(url, &pkcs8).map_err(IssuerError::Generate)
    }

    fn from_pkcs8(url: &str, pkcs8: &[u8]) -> Result<Issuer, String> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|e| e.to_string())?;
        let point = pair.public_key().as_ref();
        // Uncompressed: 0x04, then X and Y of 32 bytes each.
        if point.len() != 65 {
            return Err(format!("a public point of {} bytes", point.len()));
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..]);
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(point)[..16]);
        let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "use": "sig", "alg": "ES256",
        });
        Ok(Issuer {
            url: url.trim_end_matches('/').to_owned(),
            kid,
            encoding: EncodingKey::from_ec_der(pkcs8),
            decoding,
            jwk,
            minted: RwLock::default(),
        })
    }

    /// The `iss` of its tokens.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// Its public key, to verify its own tokens without fetching its JWKS.
    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// A token for `subject` to send to `audience`, reused while it has
    /// more than ten minutes left.
    pub(crate) fn token(&self, subject: &str, audience: &str) -> Result<Arc<str>, IssuerError> {
        let now = now_secs();
        let key = (subject.to_owned(), audience.to_owned());
        if let Some((token, expiry)) = self
            .minted
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && *expiry > now + RENEW_BEFORE_SECS
        {
            return Ok(token.clone());
        }
        let exp = now + LIFETIME_SECS;
        let token: Arc<str> = self.sign(subject, audience, now, exp)?.into();
        let mut minted = self.minted.write().unwrap_or_else(|e| e.into_inner());
        // Many (subject, audience) pairs are few objects; drop the stale.
        if minted.len() > 10_000 {
            minted.retain(|_, (_, expiry)| *expiry > now + RENEW_BEFORE_SECS);
        }
        minted.insert(key, (token.clone(), exp));
        Ok(token)
    }

    /// Signs a token with these claims (also for tests of expiry).
    pub(crate) fn sign(
        &self,
        subject: &str,
        audience: &str,
        issued: u64,
        expires: u64,
    ) -> Result<String, IssuerError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = Claims {
            iss: &self.url,
            sub: subject,
            aud: audience,
            iat: issued,
            nbf: issued,
            exp: expires,
        };
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| IssuerError::Sign(e.to_string()))
    }

    /// Its OIDC discovery document.
    pub(crate) fn discovery(&self) -> serde_json::Value {
        serde_json::json!({
            "issuer": self.url,
            "jwks_uri": format!("{}{JWKS_PATH}", self.url),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// Its JWKS.
    pub(crate) fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk] })
    }
}

fn generate() -> Result<Vec<u8>, IssuerError> {
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|e| IssuerError::Generate(e.to_string()))
}

/// A key file: PKCS#8 in PEM (`-----BEGIN PRIVATE KEY-----`) or DER.
fn read_key(path: &Path) -> Result<Vec<u8>, IssuerError> {
    let bytes = std::fs::read(path).map_err(|source| IssuerError::Read {
        path: path.to_owned(),
        source,
    })?;
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Ok(bytes);
    };
    if !text.contains("-----BEGIN") {
        return Ok(bytes);
    }
    if text.contains("BEGIN EC PRIVATE KEY") {
        return Err(IssuerError::Invalid {
            path: path.to_owned(),
            reason: "it is a SEC1 key (BEGIN EC PRIVATE KEY); convert it with `openssl pkcs8 -topk8 -nocrypt`".into(),
        });
    }
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    STANDARD
        .decode(body.trim())
        .map_err(|e| IssuerError::Invalid {
            path: path.to_owned(),
            reason: format!("no BEGIN PRIVATE KEY block in base64: {e}"),
        })
}

/// The key kept at `path`, made and written (mode 0600) when there is none.
fn kept_key(path: &Path) -> Result<Vec<u8>, IssuerError> {
    match std::fs::read(path) {
        Ok(bytes) => return Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(IssuerError::Read {
                path: path.to_owned(),
                source,
            });
        }
    }
    let pkcs8 = generate()?;
    let write = |path: &Path| -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temporary = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(&pkcs8)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write(path).map_err(|source| IssuerError::Write {
        path: path.to_owned(),
        source,
    })?;
    tracing::info!(path = %path.display(), "made pilotlight's OIDC signing key");
    Ok(pkcs8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_key_is_made_once_and_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Issuer::load("http://127.0.0.1:9090/", None, dir.path()).expect("made");
        let again = Issuer::load("http://127.0.0.1:9090", None, dir.path()).expect("read");
        assert_eq!(first.kid(), again.kid());
        assert_eq!(first.url(), "http://127.0.0.1:9090");
        assert_eq!(
            first.discovery()["jwks_uri"],
            "http://127.0.0.1:9090/openid/v1/jwks"
        );
        assert_eq!(first.jwks()["keys"][0]["kid"], first.kid());
    }

    #[test]
    fn a_token_is_reused_until_close_to_its_expiry() {
        let issuer = Issuer::ephemeral("http://pilotlight").expect("issuer");
        let a = issuer.token("sub", "aud").expect("token");
        let b = issuer.token("sub", "aud").expect("token");
        assert!(Arc::ptr_eq(&a, &b));
        let other = issuer.token("sub", "other").expect("token");
        assert_ne!(a, other);
    }

    #[test]
    fn a_wrong_key_file_says_what_it_must_be() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        std::fs::write(
            &path,
            "-----BEGIN EC PRIVATE KEY-----\nabc\n-----END EC PRIVATE KEY-----\n",
        )
        .expect("write");
        let error = Issuer::load("http://x", Some(&path), dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("SEC1"), "{error}");
        std::fs::write(&path, b"not a key").expect("write");
        let error = Issuer::load("http://x", Some(&path), dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("is not a PKCS#8 P-256"), "{error}");
    }
}
