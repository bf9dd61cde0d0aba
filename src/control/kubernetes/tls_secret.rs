//! The main listener's certificate from a `kubernetes.io/tls` Secret
//! (`--tls-secret NAMESPACE/NAME`): read once before the listener serves
//! HTTPS, then followed with a watch, each change swapped in place as a
//! file change is. A Secret whose new pair does not load keeps the old
//! one in service, and the reason is logged.

use std::sync::Arc;

use anyhow::Context as _;
use futures::TryStreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::watcher;
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::tls::CertStore;
use crate::tls::server::certified_key;

/// Where the certificate is: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSecret {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for TlsSecret {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => Ok(TlsSecret {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
            _ => Err(format!(
                "'{text}' is not NAMESPACE/NAME, such as pilotlight/pilotlight-tls"
            )),
        }
    }
}

impl std::fmt::Display for TlsSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The pair in a Secret's `tls.crt` and `tls.key`, with errors naming the
/// Secret and the key.
pub(crate) fn key_of(secret: &Secret, at: &TlsSecret) -> anyhow::Result<CertifiedKey> {
    let data = secret.data.as_ref();
    let value = |key: &str| {
        data.and_then(|d| d.get(key)).map(|v| v.0.clone()).with_context(|| {
            format!("the Secret {at} (--tls-secret) has no '{key}': a kubernetes.io/tls Secret holds tls.crt and tls.key")
        })
    };
    let cert = value("tls.crt")?;
    let key = value("tls.key")?;
    Ok(certified_key(
        &cert,
        &key,
        &format!("the Secret {at} tls.crt (--tls-secret)"),
        &format!("the Secret {at} tls.key (--tls-secret)"),
    )?)
}

/// Reads the Secret once: the store the listener serves from.
pub(crate) async fn load(client: kube::Client, at: &TlsSecret) -> anyhow::Result<Arc<CertStore>> {
    let api: Api<Secret> = Api::namespaced(client, &at.namespace);
    let secret = api.get(&at.name).await.with_context(|| {
        format!(
            "cannot read the Secret {at} (--tls-secret): it must exist, and pilotlight needs get and watch on Secrets in {}",
            at.namespace
        )
    })?;
    Ok(CertStore::with_key(key_of(&secret, at)?))
}

/// The `transport-encryption` of Knative's `config-features` ConfigMap in
/// the cluster, read once at start. A ConfigMap pilotlight may not read is
/// logged and taken as absent.
pub(crate) async fn features_level(
    client: kube::Client,
) -> anyhow::Result<Option<crate::tls::TransportEncryption>> {
    use crate::api::{FEATURES_NAME, FEATURES_NAMESPACE, TRANSPORT_ENCRYPTION_KEY};
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client, FEATURES_NAMESPACE);
    let map = match api.get_opt(FEATURES_NAME).await {
        Ok(map) => map,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the ConfigMap {FEATURES_NAMESPACE}/{FEATURES_NAME}; its transport-encryption is not used");
            return Ok(None);
        }
    };
    let Some(value) = map
        .and_then(|m| m.data)
        .and_then(|mut d| d.remove(TRANSPORT_ENCRYPTION_KEY))
    else {
        return Ok(None);
    };
    value.parse().map(Some).map_err(|reason: String| {
        anyhow::anyhow!(
            "ConfigMap {FEATURES_NAMESPACE}/{FEATURES_NAME}: field data.{TRANSPORT_ENCRYPTION_KEY}: {reason} (or give --transport-encryption)"
        )
    })
}

/// Follows the Secret until `stopped`, swapping each new pair in.
pub(crate) fn follow(
    client: kube::Client,
    at: TlsSecret,
    store: Arc<CertStore>,
    mut stopped: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Secret> = Api::namespaced(client, &at.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", at.name));
        let mut changes = std::pin::pin!(watcher::watcher(api, config));
        let mut last: Option<String> = None;
        loop {
            let event = tokio::select! {
                event = changes.try_next() => event,
                _ = stopped.wait_for(|s| *s) => return,
            };
            let secret = match event {
                Ok(Some(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret))) => {
                    secret
                }
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(secret = %at, error = %e, "watching the TLS Secret failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            if secret.metadata.name.as_deref() != Some(at.name.as_str()) {
                continue;
            }
            let version = secret.metadata.resource_version.clone();
            if version.is_some() && version == last {
                continue;
            }
            last = version;
            match key_of(&secret, &at) {
                Ok(key) => {
                    if !store.holds(&key) {
                        store.replace(key);
                        tracing::info!(secret = %at, "TLS certificate reloaded from the Secret");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "the TLS Secret's new certificate does not load; the previous one stays in service")
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_named_namespace_slash_name() {
        let at: TlsSecret = "pilotlight/tls".parse().expect("parses");
        assert_eq!(at.to_string(), "pilotlight/tls");
        let err = "tls".parse::<TlsSecret>().expect_err("no namespace");
        assert!(err.contains("NAMESPACE/NAME"), "{err}");
    }

    #[test]
    fn a_secret_without_its_keys_is_refused_by_name() {
        let at: TlsSecret = "ns/tls".parse().expect("parses");
        let err = key_of(&Secret::default(), &at).expect_err("no data");
        assert_eq!(
            err.to_string(),
            "the Secret ns/tls (--tls-secret) has no 'tls.crt': a kubernetes.io/tls Secret holds tls.crt and tls.key"
        );
    }
}
