//! `ConfigMap` and `Secret` (core v1): the objects a Broker's `spec.config`
//! and the queue sources point at for connection settings and credentials,
//! read from manifests exactly as `kubectl apply` would take them.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{Invalid, ObjectMeta};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMap {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Accepted so that real ConfigMaps load; pilotlight reads only `data`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

/// The label of Knative's trust bundles: ConfigMaps of CA certificates
/// (PEM) that every HTTPS delivery trusts.
pub(crate) const TRUST_BUNDLE_LABEL: &str = "networking.knative.dev/trust-bundle";

/// Knative's feature flags: the ConfigMap (`knative-eventing/config-features`)
/// and its key for the transport-encryption level.
pub(crate) const FEATURES_NAMESPACE: &str = "knative-eventing";
pub(crate) const FEATURES_NAME: &str = "config-features";
pub(crate) const TRANSPORT_ENCRYPTION_KEY: &str = "transport-encryption";

impl ConfigMap {
    /// The `transport-encryption` level of Knative's `config-features`
    /// ConfigMap: None for another ConfigMap or without the key.
    pub(crate) fn transport_encryption(
        &self,
    ) -> Option<Result<crate::tls::TransportEncryption, Invalid>> {
        let key = self.metadata.key();
        if key.namespace != FEATURES_NAMESPACE || key.name != FEATURES_NAME {
            return None;
        }
        let value = self.data.get(TRANSPORT_ENCRYPTION_KEY)?;
        Some(
            value
                .parse()
                .map_err(|reason| Invalid::new(format!("data.{TRANSPORT_ENCRYPTION_KEY}"), reason)),
        )
    }

    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if let Some(level) = self.transport_encryption() {
            level?;
        }
        for (key, value) in &self.binary_data {
            decode_bytes(value)
                .map_err(|reason| Invalid::new(format!("binaryData.{key}"), reason))?;
        }
        if self.is_trust_bundle() {
            for (key, value) in &self.entries() {
                let field = if self.data.contains_key(key) {
                    format!("data.{key}")
                } else {
                    format!("binaryData.{key}")
                };
                let text = String::from_utf8_lossy(value);
                crate::tls::check_ca_pem(&text, "a trust bundle's value").map_err(|e| {
                    Invalid::new(field, format!("{e} (this ConfigMap is labelled {TRUST_BUNDLE_LABEL}: \"true\", so each value must be PEM CA certificates)"))
                })?;
            }
        }
        Ok(())
    }

    /// Whether it is labelled as a trust bundle.
    pub(crate) fn is_trust_bundle(&self) -> bool {
        self.metadata
            .labels
            .get(TRUST_BUNDLE_LABEL)
            .is_some_and(|v| v == "true")
    }

    /// Every key's value: `data` as text, `binaryData` decoded.
    pub(crate) fn entries(&self) -> BTreeMap<String, Vec<u8>> {
        let mut entries: BTreeMap<String, Vec<u8>> = self
            .binary_data
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), decode_bytes(v).ok()?)))
            .collect();
        entries.extend(
            self.data
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
        );
        entries
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secret {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    /// Values in base64, as Kubernetes stores them.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Values in clear text; they win over `data` for the same key, as the
    /// API server merges them.
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub secret_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

impl Secret {
    /// Checks that every `data` value is base64 text, so that a bad value is
    /// reported where it was written rather than when a broker connects.
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        for (key, value) in &self.data {
            // Binary values are fine (a keystore mounted as a file); only
            // readers that need text check for UTF-8.
            decode_bytes(value).map_err(|reason| Invalid::new(format!("data.{key}"), reason))?;
        }
        Ok(())
    }

    /// Every key's value, as bytes: `data` decoded, then `stringData`.
    pub(crate) fn entries(&self) -> BTreeMap<String, Vec<u8>> {
        let mut entries: BTreeMap<String, Vec<u8>> = self
            .data
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), decode_bytes(v).ok()?)))
            .collect();
        entries.extend(
            self.string_data
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
        );
        entries
    }

    /// The value under `key`, from `stringData` or decoded from `data`.
    pub(crate) fn value(&self, key: &str) -> Option<String> {
        self.text(key).and_then(Result::ok)
    }

    /// The value under `key` as text: `None` when the Secret has no such
    /// key, an error when its value is not UTF-8 (so that a caller can say
    /// which of the two it is).
    pub(crate) fn text(&self, key: &str) -> Option<Result<String, String>> {
        if let Some(value) = self.string_data.get(key) {
            return Some(Ok(value.clone()));
        }
        self.data.get(key).map(|v| decode(v))
    }
}

fn decode(value: &str) -> Result<String, String> {
    String::from_utf8(decode_bytes(value)?).map_err(|_| "does not decode to UTF-8 text".to_owned())
}

fn decode_bytes(value: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|e| format!("is not base64 ({e}); put clear text under stringData instead"))
}

impl crate::api::kinds::Kind for ConfigMap {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        self.validate()
    }
}

impl crate::api::kinds::Kind for Secret {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        self.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(data: &[(&str, &str)], string_data: &[(&str, &str)]) -> Secret {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Secret {
            api_version: "v1".into(),
            kind: "Secret".into(),
            metadata: ObjectMeta {
                name: "creds".into(),
                ..ObjectMeta::default()
            },
            data: map(data),
            string_data: map(string_data),
            secret_type: None,
            immutable: None,
        }
    }

    #[test]
    fn string_data_wins_over_decoded_data() {
        let s = secret(
            &[("user", "YWxpY2U="), ("password", "c2VjcmV0")],
            &[("user", "bob")],
        );
        assert_eq!(s.value("user").as_deref(), Some("bob"));
        assert_eq!(s.value("password").as_deref(), Some("secret"));
        assert_eq!(s.value("missing"), None);
        let binary = secret(&[("key", "/w==")], &[]);
        assert_eq!(binary.value("key"), None);
        assert_eq!(
            binary.text("key"),
            Some(Err("does not decode to UTF-8 text".to_owned()))
        );
        assert_eq!(binary.text("missing"), None);
    }

    #[test]
    fn data_that_is_not_base64_is_refused_with_its_key() {
        let err = secret(&[("uri", "amqp://not base64")], &[])
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "data.uri");
        assert!(err.reason.contains("stringData"), "{err}");
    }
}
