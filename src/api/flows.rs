//! Flows (flows.knative.dev/v1): `Sequence` (steps in series, each step's
//! reply to the next) and `Parallel` (branches side by side, each behind
//! its own filter). Both are wired from channels and subscriptions
//! (`eventing::flows`).

use serde::{Deserialize, Serialize};

use super::channel::ChannelTemplate;
use super::duck::{DeliverySpec, Destination, KReference};
use super::{Invalid, ObjectMeta};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sequence {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: SequenceSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SequenceSpec {
    pub steps: Vec<SequenceStep>,
    /// The kind of the channels between steps; InMemoryChannel when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_template: Option<ChannelTemplate>,
    /// Where the last step's replies go; dropped when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Destination>,
}

/// A step: a Destination (its fields inline, as Knative's `SequenceStep`
/// embeds one) with the step's own delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SequenceStep {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<KReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, rename = "CACerts", skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

impl SequenceStep {
    pub(crate) fn destination(&self) -> Destination {
        Destination {
            reference: self.reference.clone(),
            uri: self.uri.clone(),
            ca_certs: self.ca_certs.clone(),
            audience: self.audience.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Parallel {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ParallelSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParallelSpec {
    pub branches: Vec<ParallelBranch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_template: Option<ChannelTemplate>,
    /// Where the replies of branches without their own `reply` go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Destination>,
}

/// A branch: events pass `filter` (a destination that replies with the
/// event to keep it, or with nothing; every event passes without one) and
/// go to `subscriber`, whose replies go to `reply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParallelBranch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Destination>,
    pub subscriber: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

fn check_common(
    template: Option<&ChannelTemplate>,
    reply: Option<&Destination>,
) -> Result<(), Invalid> {
    if let Some(template) = template {
        template.validate("spec.channelTemplate")?;
    }
    reply.map_or(Ok(()), |r| r.validate("spec.reply"))
}

impl crate::api::kinds::Kind for Sequence {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        if self.spec.steps.is_empty() {
            return Err(Invalid::new("spec.steps", "needs at least one step"));
        }
        for (i, step) in self.spec.steps.iter().enumerate() {
            let field = format!("spec.steps[{i}]");
            step.destination().validate(&field)?;
            if let Some(delivery) = &step.delivery {
                delivery.validate(&format!("{field}.delivery"))?;
            }
        }
        check_common(
            self.spec.channel_template.as_ref(),
            self.spec.reply.as_ref(),
        )
    }
}

impl crate::api::kinds::Kind for Parallel {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        if self.spec.branches.is_empty() {
            return Err(Invalid::new("spec.branches", "needs at least one branch"));
        }
        for (i, branch) in self.spec.branches.iter().enumerate() {
            let field = format!("spec.branches[{i}]");
            if let Some(filter) = &branch.filter {
                filter.validate(&format!("{field}.filter"))?;
            }
            branch.subscriber.validate(&format!("{field}.subscriber"))?;
            if let Some(reply) = &branch.reply {
                reply.validate(&format!("{field}.reply"))?;
            }
            if let Some(delivery) = &branch.delivery {
                delivery.validate(&format!("{field}.delivery"))?;
            }
        }
        check_common(
            self.spec.channel_template.as_ref(),
            self.spec.reply.as_ref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::api::Resource;
    use crate::api::kinds::parse_yaml as load;

    /// Knative's docs: "Sequence wired to another Sequence" and "Parallel
    /// with two branches" samples, unchanged.
    #[test]
    fn knatives_documented_flows_load() {
        let sequence = load(
            "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: sequence\nspec:\n  channelTemplate:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n  steps:\n    - ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: first\n    - ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: second\n    - ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: third\n  reply:\n    ref:\n      kind: Service\n      apiVersion: serving.knative.dev/v1\n      name: event-display\n",
        );
        assert!(
            matches!(sequence, Ok(Resource::Sequence(_))),
            "{sequence:?}"
        );
        let parallel = load(
            "apiVersion: flows.knative.dev/v1\nkind: Parallel\nmetadata:\n  name: odd-even-parallel\nspec:\n  channelTemplate:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n  branches:\n    - filter:\n        ref:\n          apiVersion: serving.knative.dev/v1\n          kind: Service\n          name: even-filter\n      subscriber:\n        ref:\n          apiVersion: serving.knative.dev/v1\n          kind: Service\n          name: even-transformer\n    - filter:\n        ref:\n          apiVersion: serving.knative.dev/v1\n          kind: Service\n          name: odd-filter\n      subscriber:\n        ref:\n          apiVersion: serving.knative.dev/v1\n          kind: Service\n          name: odd-transformer\n  reply:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: event-display\n",
        );
        assert!(
            matches!(parallel, Ok(Resource::Parallel(_))),
            "{parallel:?}"
        );
    }

    #[test]
    fn refusals_name_the_step_or_branch() {
        let err = load(
            "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: s\nspec:\n  steps:\n    - uri: http://a/\n    - delivery: {retry: 1}\n",
        )
        .expect_err("a step without a destination");
        assert!(err.contains("spec.steps[1]: set 'ref' or 'uri'"), "{err}");
        let err = load(
            "apiVersion: flows.knative.dev/v1\nkind: Parallel\nmetadata:\n  name: p\nspec:\n  branches:\n    - subscriber: {uri: http://a/}\n      delivery: {backoffDelay: soon}\n",
        )
        .expect_err("a bad delivery");
        assert!(
            err.contains("spec.branches[0].delivery.backoffDelay"),
            "{err}"
        );
        let err = load(
            "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: s\nspec:\n  steps: []\n",
        )
        .expect_err("no steps");
        assert!(err.contains("spec.steps: needs at least one step"), "{err}");
    }
}
