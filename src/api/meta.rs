//! Object metadata, as Kubernetes writes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::api::ObjectKey;

/// `metadata`. Fields Kubernetes sets on objects it stores (uid,
/// resourceVersion, ...) are accepted so that `kubectl get -o yaml` output loads
/// unchanged, and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing)]
    pub generate_name: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub uid: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub resource_version: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing)]
    pub creation_timestamp: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub deletion_timestamp: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub deletion_grace_period_seconds: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub finalizers: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub owner_references: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub managed_fields: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub self_link: Option<serde_json::Value>,
}

impl ObjectMeta {
    pub(crate) fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    pub(crate) fn key(&self) -> ObjectKey {
        ObjectKey::new(self.namespace(), self.name.clone())
    }
}

/// Checks an object's `metadata.name` against its kind's `rule` and its
/// `metadata.namespace` as a DNS-1123 label (as Kubernetes requires of every
/// namespace), before the object is parsed: a name is reported as such
/// whatever else is wrong. A name or namespace that is not text is left for
/// parsing to report.
pub(crate) fn check_names(object: &serde_json::Value, rule: NameRule) -> Result<(), Invalid> {
    let text = |field: &str| object.get("metadata").and_then(|m| m.get(field));
    match text("name") {
        None | Some(serde_json::Value::Null) => rule.check("metadata.name", "")?,
        Some(serde_json::Value::String(name)) => rule.check("metadata.name", name)?,
        Some(_) => {}
    }
    if let Some(serde_json::Value::String(namespace)) = text("namespace") {
        check_dns_label("metadata.namespace", namespace)?;
    }
    Ok(())
}

/// What an object's name must look like; each kind states its rule once, in
/// the registry (`api::kinds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 subdomain: at most 253 characters of a-z, 0-9, '-' and
    /// '.', starting and ending with a letter or digit. What the API server
    /// requires of most kinds, custom resources included (`orders.v1`,
    /// `kube-root-ca.crt`, `sh.helm.release.v1.x.v1`); Knative Eventing's
    /// webhooks add nothing to it.
    Subdomain,
    /// A DNS-1035 label: at most 63 characters of a-z, 0-9 and '-',
    /// starting with a letter and ending with a letter or digit. What
    /// Knative Serving's webhook requires (`apis.ValidateObjectMetadata`),
    /// as the name becomes the first label of a host name.
    Dns1035Label,
}

impl NameRule {
    /// Checks `value`, the `field` of an object, against the rule.
    pub(crate) fn check(self, field: &str, value: &str) -> Result<(), Invalid> {
        if value.is_empty() {
            return Err(Invalid::new(field, "is required"));
        }
        let (valid, rule) = match self {
            NameRule::Subdomain => (
                is_dns_subdomain(value),
                "must be a DNS-1123 subdomain: at most 253 characters of a-z, 0-9, '-' and '.', starting and ending with a letter or digit",
            ),
            NameRule::Dns1035Label => (
                is_dns_label(value) && value.starts_with(|c: char| c.is_ascii_lowercase()),
                "must be a DNS-1035 label, as Knative requires of a name that becomes a host name: at most 63 characters of a-z, 0-9 and '-', starting with a letter and ending with a letter or digit",
            ),
        };
        if valid {
            Ok(())
        } else {
            Err(Invalid::new(field, format!("'{value}' {rule}")))
        }
    }
}

/// At most 63 characters of a-z, 0-9 and '-', starting and ending with a
/// letter or digit.
fn is_dns_label(value: &str) -> bool {
    value.len() <= 63 && is_label_text(value)
}

/// At most 253 characters of dot-separated parts of a-z, 0-9 and '-', each
/// starting and ending with a letter or digit (Kubernetes limits the whole,
/// not each part).
fn is_dns_subdomain(value: &str) -> bool {
    value.len() <= 253 && value.split('.').all(is_label_text)
}

/// Non-empty; a-z, 0-9 and '-'; no '-' at either end.
fn is_label_text(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

fn check_dns_label(field: &str, value: &str) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(Invalid::new(field, "is required"));
    }
    if is_dns_label(value) {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!(
                "'{value}' must be a DNS-1123 label: at most 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
            ),
        ))
    }
}
