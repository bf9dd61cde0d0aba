//! `Subscription` (messaging.knative.dev/v1): every event of a channel to a
//! subscriber, its replies to `reply`.

use serde::{Deserialize, Serialize};

use super::channel::{CHANNEL_KINDS, is_channel_kind};
use super::duck::{DeliverySpec, Destination, KReference};
use super::{Invalid, ObjectMeta};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subscription {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: SubscriptionSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

/// Knative's `SubscriptionSpec`. Without a subscriber, events go straight
/// to `reply` (how a Parallel branch without a filter passes everything).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionSpec {
    pub channel: KReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

impl Subscription {
    /// Deliveries in flight at most (`pilotlight.dev/max-in-flight`, as on
    /// a Trigger), else `default`.
    pub(crate) fn max_in_flight(&self, default: usize) -> Result<usize, Invalid> {
        super::trigger::annotated_max_in_flight(&self.metadata, default)
    }

    fn validate(&self) -> Result<(), Invalid> {
        self.max_in_flight(1)?;
        let channel = &self.spec.channel;
        if !is_channel_kind(&channel.api_version, &channel.kind) {
            let kinds: Vec<String> = CHANNEL_KINDS
                .iter()
                .map(|(version, kind)| format!("{kind} ({version})"))
                .collect();
            return Err(Invalid::new(
                "spec.channel",
                format!(
                    "{} ({}) is not a channel kind pilotlight runs: use {}",
                    channel.kind,
                    channel.api_version,
                    kinds.join(", ")
                ),
            ));
        }
        if channel.name.is_empty() {
            return Err(Invalid::new("spec.channel.name", "is required"));
        }
        if channel
            .namespace
            .as_deref()
            .is_some_and(|ns| ns != self.metadata.namespace())
        {
            return Err(Invalid::new(
                "spec.channel.namespace",
                "a Subscription subscribes to a channel of its own namespace",
            ));
        }
        if self.spec.subscriber.is_none() && self.spec.reply.is_none() {
            return Err(Invalid::new(
                "spec.subscriber",
                "set 'subscriber' or 'reply' (or both)",
            ));
        }
        if let Some(subscriber) = &self.spec.subscriber {
            subscriber.validate("spec.subscriber")?;
        }
        if let Some(reply) = &self.spec.reply {
            reply.validate("spec.reply")?;
        }
        if let Some(delivery) = &self.spec.delivery {
            delivery.validate("spec.delivery")?;
        }
        Ok(())
    }
}

impl crate::api::kinds::Kind for Subscription {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        self.validate()
    }
}

#[cfg(test)]
mod tests {
    use crate::api::Resource;
    use crate::api::kinds::parse_yaml as load;

    #[test]
    fn knatives_documented_subscription_loads() {
        // Knative's docs, "Creating a Subscription".
        let loaded = load(
            "apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata:\n  name: my-subscription\n  namespace: default\nspec:\n  channel:\n    apiVersion: messaging.knative.dev/v1\n    kind: Channel\n    name: my-channel\n  delivery:\n    deadLetterSink:\n      ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n        name: my-service\n    backoffDelay: PT2S\n    backoffPolicy: linear\n    retry: 5\n  reply:\n    ref:\n      apiVersion: messaging.knative.dev/v1\n      kind: InMemoryChannel\n      name: my-channel\n  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: my-service\n",
        );
        assert!(
            matches!(loaded, Ok(Resource::Subscription(_))),
            "{loaded:?}"
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let head = "apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata:\n  name: s\nspec:\n";
        let cases = [
            (
                "  channel: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: b}\n  subscriber: {uri: 'http://x/'}\n",
                "spec.channel: Broker (eventing.knative.dev/v1) is not a channel kind",
            ),
            (
                "  channel: {apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: c}\n",
                "spec.subscriber: set 'subscriber' or 'reply'",
            ),
            (
                "  channel: {apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: c, namespace: other}\n  reply: {uri: 'http://x/'}\n",
                "spec.channel.namespace",
            ),
            (
                "  channel: {apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: c}\n  subscriber: {uri: 'relative/path'}\n",
                "spec.subscriber.uri",
            ),
        ];
        for (spec, want) in cases {
            let err = load(&format!("{head}{spec}")).expect_err(want);
            assert!(err.contains(want), "{err} does not say {want}");
        }
    }
}
