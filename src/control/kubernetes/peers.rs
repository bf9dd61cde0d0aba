//! How pilotlight replicas talk to each other in Kubernetes mode: the
//! followers send their autoscaling samples to the leader
//! ([`ClusterStats`]), over HTTP to the admin listener whose URL the leader
//! writes on the Lease.
//!
//! Replicas prove they are pilotlight with a bearer token that all of them
//! read from one Secret in the Lease's namespace, `pilotlight-peer-token`;
//! the first replica that finds none creates it with 256 random bits. Who
//! can read that Secret can already act as pilotlight (the same namespace
//! and service account hold the Lease), so it widens nothing; and no user
//! has to make a secret before installing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::GaiResolver;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use subtle::ConstantTimeEq as _;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::http_util::{self, ClientSettings};
use crate::serving::autoscaler::ClusterStats;
use crate::serving::autoscaler::peers::{REPORT_EVERY, STATS_PATH, StatsReport};

/// The Secret that holds the replicas' shared token.
pub const TOKEN_SECRET: &str = "pilotlight-peer-token";
const TOKEN_KEY: &str = "token";

/// A report that takes longer than this is dropped: the next one is due.
const REPORT_TIMEOUT: Duration = Duration::from_millis(800);

/// The token replicas send each other, compared in constant time.
#[derive(Clone)]
pub struct PeerToken(Arc<str>);

impl PeerToken {
    /// Whether an `Authorization` header carries this token.
    pub(crate) fn admits(&self, authorization: Option<&str>) -> bool {
        let Some(given) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
            return false;
        };
        // Constant time in the token's content (the length is not secret).
        bool::from(given.as_bytes().ct_eq(self.0.as_bytes()))
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

/// Why the shared token cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "cannot read or create the Secret {namespace}/{TOKEN_SECRET} that replicas share to authenticate each other: {source} (deploy/rbac.yaml grants get and create on Secrets in pilotlight's namespace)"
    )]
    Api {
        namespace: String,
        source: kube::Error,
    },
    #[error(
        "the Secret {namespace}/{TOKEN_SECRET} has no key '{TOKEN_KEY}' of at least 32 characters: delete the Secret and a replica makes a new one"
    )]
    Empty { namespace: String },
}

/// Reads the replicas' token from its Secret, creating the Secret first
/// if no replica has yet. Two replicas creating it at once: one gets 409
/// and reads the other's.
pub async fn peer_token(client: kube::Client, namespace: &str) -> Result<PeerToken, TokenError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let failed = |source| TokenError::Api {
        namespace: namespace.to_owned(),
        source,
    };
    let secret = match api.get_opt(TOKEN_SECRET).await.map_err(failed)? {
        Some(secret) => secret,
        None => match api
            .create(&PostParams::default(), &new_token_secret())
            .await
        {
            Ok(secret) => secret,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                api.get(TOKEN_SECRET).await.map_err(failed)?
            }
            Err(e) => return Err(failed(e)),
        },
    };
    let token = secret
        .data
        .as_ref()
        .and_then(|d| d.get(TOKEN_KEY))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .or_else(|| secret.string_data.as_ref()?.get(TOKEN_KEY).cloned())
        .filter(|t| t.len() >= 32)
        .ok_or_else(|| TokenError::Empty {
            namespace: namespace.to_owned(),
        })?;
    Ok(PeerToken(Arc::from(token)))
}

fn new_token_secret() -> Secret {
    // Two v4 UUIDs: 244 random bits from the OS's generator, as hex.
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    Secret {
        metadata: ObjectMeta {
            name: Some(TOKEN_SECRET.to_owned()),
            labels: Some([("app.kubernetes.io/name".into(), "pilotlight".into())].into()),
            ..ObjectMeta::default()
        },
        data: Some([(TOKEN_KEY.to_owned(), ByteString(token.into_bytes()))].into()),
        ..Secret::default()
    }
}

/// This replica's side of the exchange, until `stopped`: while it leads,
/// [`ClusterStats`] takes the others' reports; while it follows, it sends
/// its own to the leader every [`REPORT_EVERY`].
pub(crate) async fn exchange(
    cluster: Arc<ClusterStats>,
    identity: String,
    mut leading: watch::Receiver<bool>,
    leader_url: watch::Receiver<Option<String>>,
    token: PeerToken,
    mut stopped: watch::Receiver<bool>,
) {
    let client: Client<HttpConnector<GaiResolver>, Full<Bytes>> = http_util::client(
        GaiResolver::new(),
        ClientSettings {
            nodelay: true,
            connect_timeout: Some(REPORT_TIMEOUT),
            ..ClientSettings::default()
        },
    );
    let mut failing_since: Option<Instant> = None;
    let mut every = tokio::time::interval(REPORT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            changed = leading.changed() => {
                // The election has ended: pilotlight is stopping.
                if changed.is_err() {
                    return;
                }
            }
            _ = stopped.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        let leads = *leading.borrow_and_update();
        cluster.set_leading(leads, now);
        let url = leader_url.borrow().clone();
        let Some(url) = url.filter(|_| !leads) else {
            continue;
        };
        let report = cluster.report(&identity, now);
        match send(&client, &url, &token, &report).await {
            Ok(()) => failing_since = None,
            Err(error) => {
                // A leader that just changed answers with an error once or
                // twice; a lasting failure means no autoscaling of this
                // replica's traffic, which deserves a warning.
                let since = *failing_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= REPORT_EVERY * 10 {
                    tracing::warn!(leader = %url, error = %error, "cannot send autoscaling samples to the leader; the leader does not see this replica's traffic");
                    failing_since = Some(now);
                } else {
                    tracing::debug!(leader = %url, error = %error, "cannot send autoscaling samples to the leader");
                }
            }
        }
    }
}

async fn send(
    client: &Client<HttpConnector<GaiResolver>, Full<Bytes>>,
    leader: &str,
    token: &PeerToken,
    report: &StatsReport,
) -> Result<(), String> {
    let body = serde_json::to_vec(report).map_err(|e| e.to_string())?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{}{STATS_PATH}", leader.trim_end_matches('/')))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, token.bearer())
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad leader URL '{leader}': {e}"))?;
    let response = tokio::time::timeout(REPORT_TIMEOUT, client.request(request))
        .await
        .map_err(|_| format!("no answer within {REPORT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    // Read the body so the connection goes back to the pool.
    let _ = response.into_body().collect().await;
    match status {
        StatusCode::NO_CONTENT => Ok(()),
        other => Err(format!("the leader answered {other}")),
    }
}

/// The default peer URL: the pod's IP (`POD_IP`, from the downward API)
/// with the admin port, or the admin address itself when it is a specific
/// one (a test, or a replica bound to its own IP).
pub(crate) fn default_peer_url(admin: std::net::SocketAddr) -> Option<String> {
    if let Ok(ip) = std::env::var("POD_IP")
        && let Ok(ip) = ip.trim().parse::<std::net::IpAddr>()
    {
        return Some(format!(
            "http://{}",
            std::net::SocketAddr::new(ip, admin.port())
        ));
    }
    (!admin.ip().is_unspecified()).then(|| format!("http://{admin}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_shared_token_is_admitted() {
        let token = PeerToken(Arc::from("a".repeat(64)));
        assert!(token.admits(Some(&format!("Bearer {}", "a".repeat(64)))));
        assert!(!token.admits(Some(&format!("Bearer {}", "b".repeat(64)))));
        assert!(!token.admits(Some("Bearer a")));
        assert!(!token.admits(Some(&"a".repeat(64))));
        assert!(!token.admits(None));
    }

    #[test]
    fn a_new_token_is_long_and_random() {
        let secret = new_token_secret();
        let token = &secret.data.expect("data")[TOKEN_KEY].0;
        assert_eq!(token.len(), 64);
        assert_ne!(
            new_token_secret().data,
            Some([(TOKEN_KEY.to_owned(), ByteString(token.clone()))].into())
        );
    }

    #[test]
    fn the_peer_url_is_the_admin_address_when_it_is_a_specific_one() {
        let admin: std::net::SocketAddr = "127.0.0.1:9090".parse().expect("addr");
        assert_eq!(
            default_peer_url(admin).as_deref(),
            Some("http://127.0.0.1:9090")
        );
    }
}
