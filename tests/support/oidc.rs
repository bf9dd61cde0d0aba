//! A test OIDC issuer: a P-256 key made with ring, tokens signed with
//! jsonwebtoken, and (for [`TestIssuer`]) its discovery document and JWKS
//! served over HTTP on 127.0.0.1, as a real issuer serves them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

/// A signing key and its public JWK.
pub struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    pub jwk: Value,
}

impl SigningKey {
    pub fn new(kid: &str) -> SigningKey {
        let random = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &random)
            .expect("a P-256 key");
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &random)
                .expect("the key reads");
        let point = pair.public_key().as_ref();
        SigningKey {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..]),
            }),
        }
    }

    /// `claims` signed with this key (ES256, with its kid).
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signed")
    }

    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// An issuer serving its discovery document and JWKS on 127.0.0.1.
pub struct TestIssuer {
    pub url: String,
    pub key: std::sync::Arc<SigningKey>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An OIDC issuer's two documents as routes: its discovery document at
/// `/.well-known/openid-configuration`, naming `issuer` and the JWKS at
/// `{issuer}{jwks_path}`, and the JWKS of `key` there.
pub fn issuer_routes<S: Clone + Send + Sync + 'static>(
    issuer: &str,
    jwks_path: &'static str,
    key: &SigningKey,
) -> axum::Router<S> {
    let discovery = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}{jwks_path}"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    });
    let jwks = key.jwks();
    axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || {
                let discovery = discovery.clone();
                async move { axum::Json(discovery) }
            }),
        )
        .route(
            jwks_path,
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        )
}

impl TestIssuer {
    pub async fn start() -> TestIssuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test issuer");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let key = std::sync::Arc::new(SigningKey::new("test-key-1"));
        let app: axum::Router = issuer_routes(&url, "/keys", &key);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestIssuer { url, key, task }
    }

    /// The claims of a token from this issuer, valid for ten minutes.
    pub fn claims(&self, subject: &str, audience: &str) -> Value {
        let now = now();
        json!({"iss": self.url, "sub": subject, "aud": audience,
               "iat": now, "nbf": now, "exp": now + 600})
    }

    /// A valid token for `subject` and `audience`.
    pub fn token(&self, subject: &str, audience: &str) -> String {
        self.key.sign(&self.claims(subject, audience))
    }
}

/// Manifests where a Trigger `fails` on broker `default` (its subscriber at
/// `failing`) dead-letters into broker `dlq`, which an EventPolicy opens to
/// that trigger only, and a Trigger `kept` on `dlq` delivers to `kept`;
/// `default` is open to any subject. With deny-all as the default mode, a
/// dead letter arrives at `kept` only if it carried the trigger's token.
pub fn dead_letter_through_a_policy(failing: &str, kept: &str) -> Vec<(&'static str, String)> {
    let policy = |name: &str, spec: &str| {
        format!(
            "apiVersion: eventing.knative.dev/v1alpha1\nkind: EventPolicy\nmetadata:\n  name: {name}\nspec:\n{spec}"
        )
    };
    let to_dlq = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: fails\nspec:\n  broker: default\n  subscriber:\n    uri: {failing}\n  delivery:\n    deadLetterSink:\n      ref:\n        apiVersion: eventing.knative.dev/v1\n        kind: Broker\n        name: dlq\n"
    );
    vec![
        ("b.yaml", super::broker("default", "")),
        ("dlq.yaml", super::broker("dlq", "")),
        ("t.yaml", to_dlq),
        ("k.yaml", super::trigger("kept", "dlq", kept, "")),
        (
            "p.yaml",
            policy(
                "dlq-from-trigger",
                "  to:\n    - ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: dlq}\n  from:\n    - ref: {apiVersion: eventing.knative.dev/v1, kind: Trigger, name: fails}\n",
            ),
        ),
        (
            "o.yaml",
            policy(
                "default-open",
                "  to:\n    - ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}\n  from:\n    - sub: \"*\"\n",
            ),
        ),
    ]
}
