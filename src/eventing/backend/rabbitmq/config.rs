//! How a RabbitMQBroker's `RabbitmqBrokerConfig` (and a RabbitmqSource's
//! cluster reference) resolve into the URI pilotlight connects to.
//!
//! As in eventing-rabbitmq, credentials live in a Secret named by
//! `rabbitmqClusterReference.connectionSecret.name`, with keys `uri` and
//! optionally `username`, `password` (and `port`, used when `uri` is the
//! management URL the messaging-topology-operator writes).
//!
//! Every RabbitMQ URI pilotlight reads (`--rabbitmq-uri`, a connection
//! Secret's `uri`, a RabbitmqSource's) goes through [`parse_uri`], whose
//! vhost is [`uri_vhost`]'s: `amqp://host` and `amqp://host/` are the
//! default vhost `/`.

use std::fmt;

use lapin::uri::{AMQPScheme, AMQPUri};
use percent_encoding::percent_decode_str;

use crate::api::index::ObjectIndex;
use crate::api::rabbitmq::{
    API_VERSION, KIND, QueueType, RabbitmqBrokerConfig, RabbitmqClusterReference,
};
use crate::api::{Broker, ObjectKey};

/// A RabbitMQBroker's connection: its `spec.config` RabbitmqBrokerConfig,
/// or pilotlight's `--rabbitmq-uri`.
pub(crate) fn broker_connection(
    broker: &Broker,
    index: &ObjectIndex<'_>,
    default_uri: Option<&str>,
) -> Result<RabbitConnectionConfig, String> {
    let Some(reference) = &broker.spec.config else {
        let uri = default_uri.ok_or(
            "a RabbitMQBroker needs a RabbitMQ: set spec.config to a RabbitmqBrokerConfig (eventing.knative.dev/v1alpha1), or start pilotlight with --rabbitmq-uri (PILOTLIGHT_RABBITMQ_URI)",
        )?;
        return RabbitConnectionConfig::from_uri(uri, QueueType::default())
            .map_err(|e| format!("--rabbitmq-uri: {e}"));
    };
    if reference.kind != KIND || reference.api_version != API_VERSION {
        return Err(format!(
            "spec.config: a RabbitMQBroker's config is a {KIND} ({API_VERSION}), not {} ({})",
            reference.kind, reference.api_version
        ));
    }
    let namespace = reference
        .namespace
        .clone()
        .unwrap_or_else(|| broker.metadata.namespace().to_owned());
    let config = index
        .rabbitmq_broker_config(&ObjectKey::new(namespace, reference.name.clone()))
        .map_err(|e| format!("spec.config: {e}"))?;
    config.resolve(index, default_uri)
}

impl RabbitmqBrokerConfig {
    /// The connection settings, reading the connection Secret from `index`;
    /// `default_uri` (pilotlight's `--rabbitmq-uri`) when there is no reference.
    pub(crate) fn resolve(
        &self,
        index: &ObjectIndex<'_>,
        default_uri: Option<&str>,
    ) -> Result<RabbitConnectionConfig, String> {
        let key = self.metadata.key();
        let uri = resolve_uri(
            self.spec.rabbitmq_cluster_reference.as_ref(),
            &key.namespace,
            self.spec.vhost.as_deref(),
            index,
            default_uri,
        )
        .map_err(|e| format!("{KIND} {key}: {e}"))?;
        Ok(RabbitConnectionConfig {
            uri,
            queue_type: self.spec.queue_type,
        })
    }
}

/// Where a RabbitMQ broker connects and what queues it declares.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RabbitConnectionConfig {
    /// With the Secret's username, password and the configured vhost applied.
    pub uri: AMQPUri,
    pub queue_type: QueueType,
}

impl RabbitConnectionConfig {
    /// The settings for a URI given on the command line or in a test.
    pub(crate) fn from_uri(uri: &str, queue_type: QueueType) -> Result<Self, UriError> {
        Ok(RabbitConnectionConfig {
            uri: parse_uri(uri)?,
            queue_type,
        })
    }
}

/// Never prints the password.
impl fmt::Debug for RabbitConnectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConnectionConfig")
            .field("uri", &redacted(&self.uri))
            .field("queue_type", &self.queue_type)
            .finish()
    }
}

/// The URI for logs and messages: the password replaced.
pub(crate) fn redacted(uri: &AMQPUri) -> String {
    let mut shown = uri.clone();
    if shown.authority.userinfo.password.is_empty() {
        return shown.to_string();
    }
    shown.authority.userinfo.password = "PASSWORD".into();
    shown.to_string().replacen(":PASSWORD@", ":***@", 1)
}

/// Resolves a cluster reference (or `default_uri`) to a URI, applying the
/// Secret's username and password and `vhost`.
pub(crate) fn resolve_uri(
    reference: Option<&RabbitmqClusterReference>,
    namespace: &str,
    vhost: Option<&str>,
    index: &ObjectIndex<'_>,
    default_uri: Option<&str>,
) -> Result<AMQPUri, String> {
    let mut uri = match reference.and_then(|r| r.secret_key(namespace)) {
        Some(secret_key) => {
            let secret = index.secret(&secret_key)?;
            let text = secret.value("uri").ok_or_else(|| {
                format!("Secret {secret_key} has no key 'uri' (in stringData or data)")
            })?;
            let mut uri = parse_connection_secret_uri(&text, secret.value("port").as_deref())
                .map_err(|e| format!("Secret {secret_key}: {e}"))?;
            if let Some(username) = secret.value("username") {
                uri.authority.userinfo.username = username;
            }
            if let Some(password) = secret.value("password") {
                uri.authority.userinfo.password = password;
            }
            uri
        }
        None => match default_uri {
            Some(text) => parse_uri(text).map_err(|e| format!("--rabbitmq-uri: {e}"))?,
            None => {
                return Err("no RabbitMQ to connect to: set rabbitmqClusterReference.connectionSecret, or start pilotlight with --rabbitmq-uri (PILOTLIGHT_RABBITMQ_URI)".into());
            }
        },
    };
    if let Some(vhost) = vhost {
        uri.vhost = vhost.to_owned();
    }
    Ok(uri)
}

/// Why a RabbitMQ URI was refused; the URI shows with its password hidden.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UriError {
    #[error("'{uri}' is not an AMQP URI: use amqp://user:password@host:5672/vhost")]
    NotAmqp { uri: String },
    #[error("'{uri}' is not an AMQP URI: {reason}")]
    Invalid { uri: String, reason: String },
    #[error("'{uri}': the vhost in its path is not valid percent-encoded UTF-8")]
    BadVhost { uri: String },
}

/// Parses an `amqp://` or `amqps://` URI; its vhost is [`uri_vhost`]'s.
pub(crate) fn parse_uri(text: &str) -> Result<AMQPUri, UriError> {
    let scheme = text.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("amqp" | "amqps")) {
        return Err(UriError::NotAmqp {
            uri: redact_text(text),
        });
    }
    // First, so that a bad vhost is refused as that.
    let vhost = uri_vhost(text)?;
    let mut uri: AMQPUri = text.parse().map_err(|reason| UriError::Invalid {
        uri: redact_text(text),
        reason,
    })?;
    uri.vhost = vhost;
    // amq-protocol-uri takes the host from `Url::domain`, which is empty for
    // IP addresses (it would then connect to localhost): take it from http.
    let host = text
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_owned()));
    if let Some(host) = host {
        uri.authority.host = host;
    }
    Ok(uri)
}

/// The vhost an AMQP URI names: the one rule for every RabbitMQ URI
/// pilotlight reads.
///
/// - no path, `amqp://host`: the default vhost `/` (the AMQP URI spec);
/// - a bare slash, `amqp://host/`: also `/`. By the letter of the spec it is
///   the empty vhost, which RabbitMQ refuses (`NOT_ALLOWED - vhost  not
///   found`); RabbitMQ's tutorials and most Go and Python clients write it
///   meaning the default vhost, and so does everyone who copies them;
/// - otherwise the rest of the path, percent-decoded: `amqp://host/%2f` is
///   `/`, `amqp://host/orders` is `orders`, `amqp://host/a%2Fb` is `a/b`.
pub(crate) fn uri_vhost(text: &str) -> Result<String, UriError> {
    let after_scheme = text.split_once("://").map_or(text, |(_, rest)| rest);
    let before_query = after_scheme
        .split(['?', '#'])
        .next()
        .unwrap_or(after_scheme);
    let path = before_query
        .find('/')
        .map_or("", |slash| &before_query[slash + 1..]);
    if path.is_empty() {
        return Ok("/".to_owned());
    }
    percent_decode_str(path)
        .decode_utf8()
        .map(|vhost| vhost.into_owned())
        .map_err(|_| UriError::BadVhost {
            uri: redact_text(text),
        })
}

/// The Secret's `uri`: an AMQP URI, or (as the messaging-topology-operator
/// writes it) the management URL, whose host is used with the AMQP port
/// (`port`, else the scheme's default) and the default vhost.
fn parse_connection_secret_uri(text: &str, port: Option<&str>) -> Result<AMQPUri, String> {
    let management = text
        .strip_prefix("http://")
        .map(|rest| ("amqp", rest))
        .or_else(|| text.strip_prefix("https://").map(|rest| ("amqps", rest)));
    let Some((scheme, rest)) = management else {
        return parse_uri(text).map_err(|e| format!("key 'uri': {e}"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h);
    let mut uri =
        parse_uri(&format!("{scheme}://{host}")).map_err(|e| format!("key 'uri': {e}"))?;
    uri.authority.port = match port {
        Some(p) => p
            .trim()
            .parse()
            .map_err(|_| format!("key 'port': '{p}' is not a port number"))?,
        None if uri.scheme == AMQPScheme::AMQPS => 5671,
        None => 5672,
    };
    Ok(uri)
}

/// A URI text with its password hidden, for error messages.
fn redact_text(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => text.to_owned(),
    }
}
