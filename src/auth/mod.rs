//! Who may send events, as Knative's OIDC authentication and `EventPolicy`
//! authorization have it:
//!
//! - [`verify`]: a sender's bearer token, checked against the trusted
//!   issuers (discovery and JWKS, keys cached and refreshed) for the
//!   audience of the broker or channel it posts to; verified tokens are
//!   cached until they expire, so the ingress's hot path is one hash
//!   look-up.
//! - [`issuer`]: pilotlight's own issuer, which signs the tokens of its own
//!   senders (sources, triggers, subscriptions) and publishes its discovery
//!   document and JWKS on the admin listener.
//! - [`policy`]: EventPolicies resolved (subjects, targets, filters) and
//!   the decision for one subject and event.
//!
//! [`Gate`] puts them together for the ingress. This layer sits beside
//! `eventing`'s bottom: it may use `api` and `cloudevent`, never eventing,
//! serving or control (a test checks). How an event passes a filter is
//! eventing's, so the decision takes it as a function.

pub(crate) mod issuer;
pub(crate) mod policy;
pub(crate) mod verify;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use http::HeaderMap;
use md5::{Digest, Md5};

use crate::api::filter::Filter;

pub(crate) use issuer::Issuer;
pub(crate) use policy::{Forbidden, Targets};
pub(crate) use verify::{TokenError, Verified, Verifier};

/// Knative's `config-features` key that turns authentication on.
pub const FEATURE_AUTHENTICATION: &str = "authentication-oidc";
/// Knative's `config-features` key of the default authorization mode.
pub const FEATURE_DEFAULT_MODE: &str = "default-authorization-mode";

/// What applies to a broker or channel that no EventPolicy applies to
/// (Knative's `default-authorization-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthorizationMode {
    /// Any authenticated sender.
    AllowAll,
    /// Senders whose subject is a service account of the target's
    /// namespace (`system:serviceaccount:{namespace}:…`): Knative's default.
    #[default]
    AllowSameNamespace,
    /// Nobody.
    DenyAll,
}

impl AuthorizationMode {
    /// Knative's spelling.
    pub fn name(self) -> &'static str {
        match self {
            AuthorizationMode::AllowAll => "allow-all",
            AuthorizationMode::AllowSameNamespace => "allow-same-namespace",
            AuthorizationMode::DenyAll => "deny-all",
        }
    }

    /// Knative's values, in any case (`Allow-Same-Namespace` too).
    pub fn parse(text: &str) -> Option<AuthorizationMode> {
        [
            AuthorizationMode::AllowAll,
            AuthorizationMode::AllowSameNamespace,
            AuthorizationMode::DenyAll,
        ]
        .into_iter()
        .find(|mode| mode.name().eq_ignore_ascii_case(text.trim()))
    }
}

/// Where a trusted issuer's keys come from.
#[derive(Clone)]
pub enum IssuerSource {
    /// `{url}/.well-known/openid-configuration`, then its `jwks_uri`.
    Url(String),
    /// The Kubernetes API server's service-account issuer, read through
    /// the API server connection (`/.well-known/openid-configuration` and
    /// `/openid/v1/jwks`), whatever URL its discovery document gives.
    Kubernetes(kube::Client),
}

impl std::fmt::Debug for IssuerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IssuerSource::Url(url) => write!(f, "{url}"),
            IssuerSource::Kubernetes(_) => write!(f, "the Kubernetes API server"),
        }
    }
}

/// How `pilotlight run` authenticates and authorizes senders.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// `--authentication-oidc`: senders need a token; EventPolicies apply.
    pub enabled: bool,
    /// `--oidc-issuer`: issuers whose tokens are trusted, besides
    /// pilotlight's own (and, in Kubernetes mode, the API server's, added
    /// by the server).
    pub issuers: Vec<String>,
    /// `--default-authorization-mode`.
    pub default_mode: AuthorizationMode,
    /// `--oidc-issuer-url`: the `iss` of pilotlight's own tokens; None for
    /// the admin listener's URL.
    pub own_issuer_url: Option<String>,
    /// `--oidc-signing-key`: pilotlight's own signing key (PKCS#8, P-256,
    /// PEM or DER); None for one made once and kept in the data folder.
    pub signing_key: Option<PathBuf>,
}

/// Knative's audience of an addressable: `{group}/{kind}/{namespace}/{name}`
/// in lower case, such as `eventing.knative.dev/broker/default/orders`.
pub(crate) fn audience(group: &str, kind: &str, namespace: &str, name: &str) -> String {
    format!("{group}/{kind}/{namespace}/{name}").to_lowercase()
}

/// A Broker's audience.
pub(crate) fn broker_audience(namespace: &str, name: &str) -> String {
    audience("eventing.knative.dev", "Broker", namespace, name)
}

/// The OIDC service account Knative makes for an object that sends
/// (a source, a trigger, a subscription): `{name}-oidc-{group}-{kind}`,
/// shortened with a hash past 63 characters as Kubernetes names of
/// children are (`kmeta.ChildName`), in lower case.
pub(crate) fn service_account(group: &str, kind: &str, name: &str) -> String {
    child_name(name, &format!("-oidc-{group}-{kind}")).to_lowercase()
}

/// The subject of a service account's tokens.
pub(crate) fn service_account_subject(namespace: &str, account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{account}")
}

/// The subject pilotlight's own tokens carry for an object that sends:
/// its OIDC service account's, as in Knative.
pub(crate) fn sender_subject(group: &str, kind: &str, namespace: &str, name: &str) -> String {
    service_account_subject(namespace, &service_account(group, kind, name))
}

/// `kmeta.ChildName`: `parent + suffix`, or, when that is longer than 63,
/// a prefix of the parent and an md5 of the whole.
fn child_name(parent: &str, suffix: &str) -> String {
    const LONGEST: usize = 63;
    const HEAD: usize = LONGEST - 32;
    if parent.len() + suffix.len() <= LONGEST {
        return format!("{parent}{suffix}");
    }
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    if HEAD <= suffix.len() {
        let hash = hex(&Md5::digest(format!("{parent}{suffix}").as_bytes()));
        let head = parent.get(..HEAD.min(parent.len())).unwrap_or(parent);
        let mut name = format!("{head}{hash}");
        if name.len() < LONGEST {
            name.push_str(suffix.get(..LONGEST - name.len()).unwrap_or(suffix));
        }
        return name.trim_end_matches('-').to_owned();
    }
    let keep = HEAD - suffix.len();
    let head = parent.get(..keep).unwrap_or(parent);
    format!("{head}{}{suffix}", hex(&Md5::digest(parent.as_bytes())))
}

/// The token of `Authorization: Bearer …`, if the header has one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Authentication and authorization as the ingress applies them. Off
/// (`--authentication-oidc` not given) it lets everything through without
/// looking at a header, and EventPolicies only get a status that says so.
pub(crate) struct Gate {
    enabled: bool,
    mode: AuthorizationMode,
    verifier: Option<Verifier>,
    issuer: Option<Arc<Issuer>>,
    /// The brokers and channels with their audiences and policies, as the
    /// last apply resolved them.
    targets: RwLock<Arc<Targets>>,
}

impl Gate {
    /// Authentication off.
    pub(crate) fn off() -> Gate {
        Gate {
            enabled: false,
            mode: AuthorizationMode::AllowAll,
            verifier: None,
            issuer: None,
            targets: RwLock::default(),
        }
    }

    /// Authentication on: tokens of `issuers` and of pilotlight's own
    /// `issuer` are trusted.
    pub(crate) fn on(
        mode: AuthorizationMode,
        issuer: Arc<Issuer>,
        issuers: Vec<IssuerSource>,
    ) -> Gate {
        Gate {
            enabled: true,
            mode,
            verifier: Some(Verifier::new(issuers, Some(issuer.clone()))),
            issuer: Some(issuer),
            targets: RwLock::default(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    pub(crate) fn mode(&self) -> AuthorizationMode {
        self.mode
    }

    /// pilotlight's own issuer (authentication on only).
    pub(crate) fn issuer(&self) -> Option<&Arc<Issuer>> {
        self.issuer.as_ref()
    }

    pub(crate) fn verifier(&self) -> Option<&Verifier> {
        self.verifier.as_ref()
    }

    /// Replaces the targets (after an apply).
    pub(crate) fn set_targets(&self, targets: Targets) {
        *self.targets.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(targets);
    }

    pub(crate) fn targets(&self) -> Arc<Targets> {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Who sends a request to the ingress at `/{namespace}/{name}`: the
    /// verified token of its `Authorization` header, for that target's
    /// audience. None when authentication is off.
    pub(crate) async fn authenticate(
        &self,
        namespace: &str,
        name: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Arc<Verified>>, TokenError> {
        let Some(verifier) = self.verifier.as_ref().filter(|_| self.enabled) else {
            return Ok(None);
        };
        let targets = self.targets();
        let unknown;
        let audience = match targets.get(namespace, name) {
            Some(target) => target.audience.as_str(),
            None => {
                unknown = broker_audience(namespace, name);
                unknown.as_str()
            }
        };
        let Some(token) = bearer(headers) else {
            return Err(TokenError::Missing {
                audience: audience.to_owned(),
            });
        };
        verifier.verify(token, audience).await.map(Some)
    }

    /// Whether `subject` may send each of `events` to `/{namespace}/{name}`
    /// (`passes(filter, i)`: whether event `i` passes a policy's filter).
    pub(crate) fn authorize(
        &self,
        namespace: &str,
        name: &str,
        subject: &str,
        events: usize,
        passes: &dyn Fn(&Filter, usize) -> bool,
        id: &dyn Fn(usize) -> String,
    ) -> Result<(), Forbidden> {
        if !self.enabled {
            return Ok(());
        }
        let targets = self.targets();
        policy::decide(
            targets.get(namespace, name),
            self.mode,
            namespace,
            name,
            subject,
            events,
            passes,
            id,
        )
    }
}

/// Tokens pilotlight's own senders put on their requests: for each
/// destination URI that has an audience, a token for it with the sender's
/// subject, minted by [`Issuer`] (and cached there).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SenderIdentity {
    /// The sender's subject (its OIDC service account's).
    pub subject: String,
    /// Destination URI → its audience.
    pub audiences: HashMap<String, String>,
}

impl SenderIdentity {
    pub(crate) fn new(subject: String) -> Self {
        SenderIdentity {
            subject,
            audiences: HashMap::new(),
        }
    }

    /// Adds a destination with an audience (none: no token goes there).
    pub(crate) fn with(mut self, uri: &http::Uri, audience: Option<&str>) -> Self {
        if let Some(audience) = audience {
            self.audiences.insert(uri.to_string(), audience.to_owned());
        }
        self
    }
}

/// What a sender carries to mint its tokens.
#[derive(Clone)]
pub(crate) struct SenderCredentials {
    pub issuer: Arc<Issuer>,
    pub identity: Arc<SenderIdentity>,
}

impl SenderCredentials {
    /// The `Authorization` header value for a request to `uri`, if that
    /// destination has an audience.
    pub(crate) fn authorization(&self, uri: &http::Uri) -> Option<String> {
        let audience = self.identity.audiences.get(&uri.to_string())?;
        match self.issuer.token(&self.identity.subject, audience) {
            Ok(token) => Some(format!("Bearer {token}")),
            Err(e) => {
                tracing::error!(error = %e, subject = %self.identity.subject, "cannot sign a token; sending without one");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_knative() {
        assert_eq!(
            broker_audience("default", "My-Broker"),
            "eventing.knative.dev/broker/default/my-broker"
        );
        assert_eq!(
            service_account("group", "kind", "name"),
            "name-oidc-group-kind"
        );
        assert_eq!(
            service_account("eventing.knative.dev", "Broker", "my-Broker"),
            "my-broker-oidc-eventing.knative.dev-broker"
        );
        // Knative's own test vector for a long name.
        assert_eq!(
            service_account(
                "eventing.knative.dev",
                "Broker",
                "my-loooooooooooooooooooooooooooooooooooooog-Broker"
            ),
            "my-looooooooooooooooooooooooooo2dfc2a3825b8d82077b0f25518b36884"
        );
        assert_eq!(
            sender_subject("sources.knative.dev", "PingSource", "ns", "beat"),
            "system:serviceaccount:ns:beat-oidc-sources.knative.dev-pingsource"
        );
    }

    #[test]
    fn modes_read_knatives_spellings() {
        assert_eq!(
            AuthorizationMode::parse("Allow-Same-Namespace"),
            Some(AuthorizationMode::AllowSameNamespace)
        );
        assert_eq!(
            AuthorizationMode::parse("deny-all"),
            Some(AuthorizationMode::DenyAll)
        );
        assert_eq!(AuthorizationMode::parse("allow"), None);
    }

    #[test]
    fn the_bearer_token_is_read_from_the_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer abc.def.ghi"),
        );
        assert_eq!(bearer(&headers), Some("abc.def.ghi"));
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Basic dXNlcg=="),
        );
        assert_eq!(bearer(&headers), None);
    }
}
