//! `EventPolicy` (eventing.knative.dev/v1alpha1): who may send events to
//! brokers and channels (`spec.from`: OIDC subjects, `*` as a suffix
//! wildcard, or references to objects whose identity is allowed), which of
//! them it applies to (`spec.to`: references or label selectors; none means
//! every one of its namespace), and which events pass (`spec.filters`, the
//! Trigger filter dialects). How they are resolved and enforced is
//! `auth::policy`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::filter::{Filter, SubscriptionsApiFilter};
use super::kinds::{Kind, LoadContext};
use super::{Invalid, ObjectMeta};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: EventPolicySpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPolicySpec {
    /// The brokers and channels it applies to; empty: all of its namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<EventPolicyTo>,
    /// Who may send.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<EventPolicyFrom>,
    /// Events that do not pass every filter are refused at the ingress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<SubscriptionsApiFilter>,
}

/// One entry of `spec.to`: a reference or a selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPolicyTo {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<PolicyReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<PolicySelector>,
}

/// One entry of `spec.from`: a reference or a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPolicyFrom {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<PolicyReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

/// `EventPolicyToReference` and `EventPolicyFromReference` (the latter
/// with an optional namespace, the policy's by default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyReference {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl PolicyReference {
    /// The API group of `apiVersion` (`eventing.knative.dev/v1` →
    /// `eventing.knative.dev`; the core group is empty).
    pub(crate) fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }
}

/// `EventPolicySelector`: a label selector of one kind of object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySelector {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelExpression>,
}

impl PolicySelector {
    /// The API group of `apiVersion`.
    pub(crate) fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }

    /// Whether `labels` satisfy every `matchLabels` pair and expression,
    /// as Kubernetes' label selectors do.
    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }
}

/// `LabelSelectorRequirement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelExpression {
    pub key: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelExpression {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator.as_str() {
            "In" => value.is_some_and(|v| self.values.contains(v)),
            "NotIn" => value.is_none_or(|v| !self.values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // Refused at load.
            _ => false,
        }
    }

    fn check(&self, field: &str) -> Result<(), Invalid> {
        if self.key.is_empty() {
            return Err(Invalid::new(format!("{field}.key"), "must not be empty"));
        }
        match self.operator.as_str() {
            "In" | "NotIn" if self.values.is_empty() => Err(Invalid::new(
                format!("{field}.values"),
                format!("operator {} needs at least one value", self.operator),
            )),
            "Exists" | "DoesNotExist" if !self.values.is_empty() => Err(Invalid::new(
                format!("{field}.values"),
                format!("operator {} takes no values", self.operator),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => Ok(()),
            other => Err(Invalid::new(
                format!("{field}.operator"),
                format!("'{other}' is not one of In, NotIn, Exists, DoesNotExist"),
            )),
        }
    }
}

impl EventPolicy {
    /// `spec.filters` compiled (checked at load, so this does not fail
    /// for a loaded policy).
    pub(crate) fn compile_filters(&self) -> Result<Filter, Invalid> {
        Filter::compile_all(&self.spec.filters, "spec.filters")
    }
}

fn check_reference(reference: &PolicyReference, field: &str) -> Result<(), Invalid> {
    for (name, value) in [
        ("apiVersion", &reference.api_version),
        ("kind", &reference.kind),
        ("name", &reference.name),
    ] {
        if value.is_empty() {
            return Err(Invalid::new(format!("{field}.{name}"), "is required"));
        }
    }
    Ok(())
}

impl Kind for EventPolicy {
    fn check(&self, _: &LoadContext) -> Result<(), Invalid> {
        for (i, from) in self.spec.from.iter().enumerate() {
            let field = format!("spec.from[{i}]");
            match (&from.reference, &from.sub) {
                (Some(_), Some(_)) => {
                    return Err(Invalid::new(field, "set one of 'ref' or 'sub', not both"));
                }
                (None, None) => {
                    return Err(Invalid::new(field, "set one of 'ref' or 'sub'"));
                }
                (None, Some(sub)) if sub.is_empty() => {
                    return Err(Invalid::new(
                        format!("{field}.sub"),
                        "must not be empty: write a subject such as system:serviceaccount:default:sender, or a prefix ending in *",
                    ));
                }
                (None, Some(sub)) => {
                    if let Some(at) = sub.find('*')
                        && at + 1 < sub.len()
                    {
                        return Err(Invalid::new(
                            format!("{field}.sub"),
                            format!(
                                "'{sub}': '*' is only allowed as the last character (a prefix wildcard)"
                            ),
                        ));
                    }
                }
                (Some(reference), None) => check_reference(reference, &format!("{field}.ref"))?,
            }
        }
        for (i, to) in self.spec.to.iter().enumerate() {
            let field = format!("spec.to[{i}]");
            match (&to.reference, &to.selector) {
                (Some(_), Some(_)) => {
                    return Err(Invalid::new(
                        field,
                        "set one of 'ref' or 'selector', not both",
                    ));
                }
                (None, None) => return Err(Invalid::new(field, "set one of 'ref' or 'selector'")),
                (Some(reference), None) => {
                    check_reference(reference, &format!("{field}.ref"))?;
                    if reference.namespace.is_some() {
                        return Err(Invalid::new(
                            format!("{field}.ref.namespace"),
                            "is not a field of spec.to: a policy applies to objects of its own namespace",
                        ));
                    }
                }
                (None, Some(selector)) => {
                    for (name, value) in [
                        ("apiVersion", &selector.api_version),
                        ("kind", &selector.kind),
                    ] {
                        if value.is_empty() {
                            return Err(Invalid::new(
                                format!("{field}.selector.{name}"),
                                "is required: a selector picks objects of one kind",
                            ));
                        }
                    }
                    for (j, expression) in selector.match_expressions.iter().enumerate() {
                        expression.check(&format!("{field}.selector.matchExpressions[{j}]"))?;
                    }
                }
            }
        }
        self.compile_filters()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::api::Resource;
    use crate::api::kinds::parse_yaml;

    fn policy(spec: &str) -> Result<Resource, String> {
        parse_yaml(&format!(
            "apiVersion: eventing.knative.dev/v1alpha1\nkind: EventPolicy\nmetadata:\n  name: p\n  namespace: default\nspec:\n{spec}"
        ))
    }

    #[test]
    fn knatives_example_loads() {
        let loaded = policy(
            "  to:\n    - ref:\n        apiVersion: eventing.knative.dev/v1\n        kind: Broker\n        name: my-broker\n    - selector:\n        apiVersion: eventing.knative.dev/v1\n        kind: Broker\n        matchLabels:\n          key: value\n  from:\n    - ref:\n        apiVersion: sources.knative.dev/v1\n        kind: PingSource\n        name: my-source\n        namespace: another-namespace\n    - sub: system:serviceaccount:default:trusted-app\n    - sub: \"system:serviceaccount:default:other-*\"\n  filters:\n    - cesql: \"type LIKE 'com.example.%'\"\n",
        );
        let Ok(Resource::EventPolicy(policy)) = loaded else {
            panic!("{loaded:?}");
        };
        assert_eq!(policy.spec.to.len(), 2);
        assert_eq!(policy.spec.from.len(), 3);
        assert_eq!(
            policy.spec.to[0].reference.as_ref().map(|r| r.group()),
            Some("eventing.knative.dev")
        );
    }

    #[test]
    fn wrong_entries_are_refused_with_their_field() {
        for (spec, want) in [
            (
                "  from:\n    - sub: \"a*b\"\n",
                "spec.from[0].sub: 'a*b': '*' is only allowed as the last character",
            ),
            (
                "  from:\n    - {}\n",
                "spec.from[0]: set one of 'ref' or 'sub'",
            ),
            (
                "  from:\n    - sub: x\n      ref: {apiVersion: v1, kind: K, name: src}\n",
                "spec.from[0]: set one of 'ref' or 'sub', not both",
            ),
            (
                "  from:\n    - ref: {apiVersion: sources.knative.dev/v1, name: src}\n",
                "spec.from[0].ref.kind: is required",
            ),
            (
                "  to:\n    - selector: {kind: Broker}\n",
                "spec.to[0].selector.apiVersion: is required",
            ),
            (
                "  to:\n    - selector:\n        apiVersion: eventing.knative.dev/v1\n        kind: Broker\n        matchExpressions:\n          - {key: a, operator: Like}\n",
                "spec.to[0].selector.matchExpressions[0].operator: 'Like' is not one of",
            ),
            (
                "  filters:\n    - cesql: \"type = \"\n",
                "spec.filters[0].cesql:",
            ),
            (
                "  from:\n    - sub: ''\n",
                "spec.from[0].sub: must not be empty",
            ),
        ] {
            let refused = policy(spec).expect_err(spec);
            assert!(refused.starts_with(want), "{spec}: {refused}");
        }
    }

    #[test]
    fn selectors_match_labels_as_kubernetes_does() {
        let Ok(Resource::EventPolicy(policy)) = policy(
            "  to:\n    - selector:\n        apiVersion: eventing.knative.dev/v1\n        kind: Broker\n        matchLabels: {team: a}\n        matchExpressions:\n          - {key: tier, operator: In, values: [gold, silver]}\n          - {key: legacy, operator: DoesNotExist}\n",
        ) else {
            panic!("loads");
        };
        let selector = policy.spec.to[0].selector.clone().expect("selector");
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(selector.matches(&labels(&[("team", "a"), ("tier", "gold")])));
        assert!(!selector.matches(&labels(&[("team", "b"), ("tier", "gold")])));
        assert!(!selector.matches(&labels(&[("team", "a"), ("tier", "bronze")])));
        assert!(!selector.matches(&labels(&[("team", "a"), ("tier", "gold"), ("legacy", "y")])));
    }
}
