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

    /// Names and namespaces are DNS-1123 labels, as Kubernetes requires.
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        check_dns_label("metadata.name", &self.name)?;
        if let Some(ns) = &self.namespace {
            check_dns_label("metadata.namespace", ns)?;
        }
        Ok(())
    }
}

fn check_dns_label(field: &str, value: &str) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(Invalid::new(field, "is required"));
    }
    let valid = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!(
                "'{value}' must be at most 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
            ),
        ))
    }
}
