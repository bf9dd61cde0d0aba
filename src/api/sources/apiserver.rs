//! `ApiServerSource` (sources.knative.dev/v1): Kubernetes objects' lifecycle
//! as CloudEvents. The running source is `eventing::source::apiserver`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::duck::{CeOverrides, Destination};
use crate::api::filter::{Filter, SubscriptionsApiFilter};
use crate::api::{Invalid, ObjectMeta};

/// The manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiServerSource {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ApiServerSourceSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiServerSourceSpec {
    #[serde(default)]
    pub resources: Vec<ApiVersionKindSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<ApiVersionKind>,
    /// `Reference` (default) or `Resource`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Accepted for compatibility; pilotlight uses its own credentials
    /// (kubeconfig or in-cluster service account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Knative's `new-apiserversource-filters`: the events that pass every
    /// entry are sent, the others are not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<SubscriptionsApiFilter>,
    pub sink: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_overrides: Option<CeOverrides>,
}

/// Knative's `APIVersionKindSelector`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiVersionKindSelector {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiVersionKind {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`, ANDed).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// What an event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventMode {
    /// `{"apiVersion","kind","name","namespace"}` of the object.
    Reference,
    /// The whole object.
    Resource,
}

impl LabelSelector {
    pub(crate) fn validate(&self, field: &str) -> Result<(), Invalid> {
        for (key, value) in &self.match_labels {
            if key.is_empty() || !key.chars().all(label_char) {
                return Err(Invalid::new(
                    format!("{field}.matchLabels"),
                    format!("{key:?} is not a label key"),
                ));
            }
            if !value.chars().all(label_char) || value.contains('/') {
                return Err(Invalid::new(
                    format!("{field}.matchLabels.{key}"),
                    format!("{value:?} is not a label value"),
                ));
            }
        }
        for (i, req) in self.match_expressions.iter().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            if req.key.is_empty() || !req.key.chars().all(label_char) {
                return Err(Invalid::new(
                    format!("{at}.key"),
                    format!("{:?} is not a label key", req.key),
                ));
            }
            match req.operator.as_str() {
                "In" | "NotIn" if req.values.is_empty() => {
                    return Err(Invalid::new(
                        format!("{at}.values"),
                        "must not be empty for operator In or NotIn",
                    ));
                }
                "Exists" | "DoesNotExist" if !req.values.is_empty() => {
                    return Err(Invalid::new(
                        format!("{at}.values"),
                        "must be empty for operator Exists or DoesNotExist",
                    ));
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => {
                    return Err(Invalid::new(
                        format!("{at}.operator"),
                        format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
                    ));
                }
            }
            for (j, value) in req.values.iter().enumerate() {
                if !value.chars().all(label_char) || value.contains('/') {
                    return Err(Invalid::new(
                        format!("{at}.values[{j}]"),
                        format!("{value:?} is not a label value"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The `labelSelector` query parameter; `None` when it selects everything.
    pub(crate) fn to_query(&self) -> Option<String> {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for req in &self.match_expressions {
            parts.push(match req.operator.as_str() {
                "In" => format!("{} in ({})", req.key, req.values.join(",")),
                "NotIn" => format!("{} notin ({})", req.key, req.values.join(",")),
                "DoesNotExist" => format!("!{}", req.key),
                _ => req.key.clone(),
            });
        }
        (!parts.is_empty()).then(|| parts.join(","))
    }
}

/// Characters of label keys (with the `prefix/` part) and values.
fn label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

impl ApiServerSource {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.spec.resources.is_empty() {
            return Err(Invalid::new(
                "spec.resources",
                "must list at least one apiVersion and kind to watch",
            ));
        }
        for (i, r) in self.spec.resources.iter().enumerate() {
            let at = format!("spec.resources[{i}]");
            check_api_version(&format!("{at}.apiVersion"), &r.api_version)?;
            if r.kind.is_empty() {
                return Err(Invalid::new(
                    format!("{at}.kind"),
                    "is required (e.g. Deployment)",
                ));
            }
            if let Some(selector) = &r.selector {
                selector.validate(&format!("{at}.selector"))?;
            }
        }
        if let Some(owner) = &self.spec.owner
            && owner.api_version.is_empty()
            && owner.kind.is_empty()
        {
            return Err(Invalid::new(
                "spec.owner",
                "needs apiVersion, kind or both (or remove spec.owner)",
            ));
        }
        self.mode()?;
        if let Some(selector) = &self.spec.namespace_selector {
            selector.validate("spec.namespaceSelector")?;
        }
        self.filter()?;
        self.spec.sink.validate("spec.sink")?;
        if let Some(overrides) = &self.spec.ce_overrides {
            overrides.validate("spec.ceOverrides")?;
        }
        Ok(())
    }

    /// `spec.filters`, compiled as a Trigger's are; everything passes
    /// without them.
    pub(crate) fn filter(&self) -> Result<Filter, Invalid> {
        Filter::compile_all(&self.spec.filters, "spec.filters")
    }

    /// `spec.mode`: `Reference` when not set.
    pub(crate) fn mode(&self) -> Result<EventMode, Invalid> {
        match self.spec.mode.as_deref() {
            None | Some("Reference") => Ok(EventMode::Reference),
            Some("Resource") => Ok(EventMode::Resource),
            Some(other) => Err(Invalid::new(
                "spec.mode",
                format!("{other:?} is not Reference or Resource"),
            )),
        }
    }
}

fn check_api_version(field: &str, api_version: &str) -> Result<(), Invalid> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    if version.is_empty()
        || version.contains('/')
        || (api_version.contains('/') && group.is_empty())
    {
        return Err(Invalid::new(
            field,
            format!("{api_version:?} is not an apiVersion such as v1 or apps/v1"),
        ));
    }
    Ok(())
}

impl crate::api::kinds::Kind for ApiServerSource {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        self.validate()
    }
}
