//! Status of every object, as Knative reports it: a Ready condition with a
//! reason and message, plus the broker's address. `pilotlight get` prints it.

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::manifest::ManifestError;

/// One condition (`Ready` here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub last_transition_time: String,
}

/// An object's status block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Status {
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    /// Every address, HTTPS first, when the transport-encryption level
    /// is permissive or strict (Knative's `status.addresses`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<Address>>,
    /// Trigger: the resolved subscriber.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber_uri: Option<String>,
    /// Trigger: the resolved dead-letter sink (Knative's DeliveryStatus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink_uri: Option<String>,
    /// Source: the resolved sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_uri: Option<String>,
    /// Trigger: events stored but not yet delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u64>,
    /// Trigger: events removed by retention before it read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_to_retention: Option<u64>,
    /// Broker, channel: the EventPolicies that apply to it (authentication
    /// on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<AppliedPolicy>>,
    /// EventPolicy: the subjects of `spec.from`, resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<String>>,
    /// Trigger, Subscription, source: its OIDC identity (authentication on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthStatus>,
    /// JobSink: its jobs, newest first (pilotlight's own field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<Vec<super::jobsink::JobRecord>>,
    /// Services, routes and revisions only.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<Box<ServingStatus>>,
    /// Channels, Subscriptions, Sequences and Parallels only.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub messaging: Option<Box<MessagingStatus>>,
}

/// The status fields of channels, subscriptions and flows, as Knative
/// names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MessagingStatus {
    /// Channel: each Subscription of it and whether it delivers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribers: Option<Vec<SubscriberStatus>>,
    /// Subscription: its destinations, resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_subscription: Option<PhysicalSubscription>,
    /// Sequence: the channel in front of each step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_statuses: Option<Vec<ChannelStatusRef>>,
    /// Sequence: the subscription of each step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_statuses: Option<Vec<SubscriptionStatusRef>>,
    /// Parallel: the channel every event enters by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_channel_status: Option<ChannelStatusRef>,
    /// Parallel: each branch's filter subscription, channel and
    /// subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_statuses: Option<Vec<BranchStatus>>,
}

/// One entry of a channel's `status.subscribers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SubscriberStatus {
    /// The Subscription (Knative gives its uid; files have none).
    pub name: String,
    /// "True" or "False".
    pub ready: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A Subscription's `status.physicalSubscription`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PhysicalSubscription {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink_uri: Option<String>,
}

/// An object a flow made, by reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChannelStatusRef {
    pub channel: ObjectRef,
    pub ready: Condition,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SubscriptionStatusRef {
    pub subscription: ObjectRef,
    pub ready: Condition,
}

/// One branch of a Parallel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BranchStatus {
    pub filter_subscription_status: SubscriptionStatusRef,
    pub filter_channel_status: ChannelStatusRef,
    pub subscription_status: SubscriptionStatusRef,
}

/// The status fields of serving objects, boxed so that every other status
/// stays small.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServingStatus {
    /// Service, Route: where it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Service: the revision made from the current template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_revision_name: Option<String>,
    /// Service: the newest revision that has been ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision_name: Option<String>,
    /// Service, Route: traffic as resolved to revisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Vec<TrafficStatus>>,
    /// Revision: instances the autoscaler wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<u32>,
    /// Revision: instances ready now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_replicas: Option<u32>,
    /// Revision: instances restarted after a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    /// Revision: the runtime that runs it (`process`, `container`,
    /// `kubernetes`); pilotlight's own field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Revision: the image each container runs, by digest, as Knative
    /// reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_statuses: Option<Vec<ContainerStatus>>,
}

/// One entry of a Revision's `status.containerStatuses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ContainerStatus {
    pub name: String,
    pub image_digest: String,
}

/// One resolved traffic target, as Knative's status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TrafficStatus {
    pub revision_name: String,
    pub latest_revision: bool,
    pub percent: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Knative's `Addressable`: a URL, named `http` or `https` when there are
/// several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Address {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub url: String,
    /// The OIDC audience a sender's token must have (with authentication
    /// on), as Knative publishes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

/// One entry of a broker's or channel's `status.policies`: an EventPolicy
/// that applies to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AppliedPolicy {
    pub api_version: String,
    pub name: String,
}

/// `status.auth` of an object that sends (Knative's `AuthStatus`): the
/// service account whose subject its tokens carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuthStatus {
    pub service_account_name: String,
}

impl Address {
    /// An address without a name.
    pub(crate) fn url(url: impl Into<String>) -> Self {
        Address {
            name: None,
            url: url.into(),
            audience: None,
        }
    }

    fn named(name: &str, url: String) -> Self {
        Address {
            name: Some(name.to_owned()),
            url,
            audience: None,
        }
    }
}

impl Status {
    /// Sets `address` and `addresses` as Knative's brokers and channels
    /// do for the transport-encryption level, from the preferred URL
    /// (https when the level serves HTTPS): disabled, the one address;
    /// permissive, `address` http and `addresses` https then http; strict,
    /// https only.
    pub(crate) fn set_addresses(&mut self, url: &str, level: crate::tls::TransportEncryption) {
        use crate::tls::TransportEncryption::{Disabled, Permissive, Strict};
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        let (https, http) = match rest {
            Some(rest) => (format!("https://{rest}"), format!("http://{rest}")),
            None => (url.to_owned(), url.to_owned()),
        };
        match level {
            Disabled => {
                self.address = Some(Address::url(url));
                self.addresses = None;
            }
            Permissive => {
                self.address = Some(Address::named("http", http.clone()));
                self.addresses = Some(vec![
                    Address::named("https", https),
                    Address::named("http", http),
                ]);
            }
            Strict => {
                let address = Address::named("https", https);
                self.address = Some(address.clone());
                self.addresses = Some(vec![address]);
            }
        }
    }

    pub(crate) fn ready() -> Self {
        Status {
            conditions: vec![condition("True", None, None)],
            ..Default::default()
        }
    }

    /// Whether the Ready condition gives `reason`.
    pub(crate) fn has_reason(&self, reason: &str) -> bool {
        self.ready_condition()
            .is_some_and(|c| c.reason.as_deref() == Some(reason))
    }

    pub(crate) fn not_ready(reason: &str, message: impl Into<String>) -> Self {
        Status {
            conditions: vec![condition("False", Some(reason), Some(message.into()))],
            ..Default::default()
        }
    }

    /// Not decided yet (a revision waiting for its first instance).
    pub(crate) fn unknown(reason: &str, message: impl Into<String>) -> Self {
        Status {
            conditions: vec![condition("Unknown", Some(reason), Some(message.into()))],
            ..Default::default()
        }
    }

    pub(crate) fn ready_condition(&self) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == "Ready")
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready_condition().is_some_and(|c| c.status == "True")
    }

    /// Keeps the transition time of an unchanged condition, as Kubernetes does.
    pub(crate) fn carry_transition_times(&mut self, previous: Option<&Status>) {
        let Some(previous) = previous else { return };
        for condition in &mut self.conditions {
            if let Some(old) = previous
                .conditions
                .iter()
                .find(|c| c.kind == condition.kind)
                && old.status == condition.status
            {
                condition.last_transition_time = old.last_transition_time.clone();
            }
        }
    }
}

impl Condition {
    /// A condition of the given type, timestamped now.
    pub(crate) fn new(
        kind: &str,
        status: &str,
        reason: Option<&str>,
        message: Option<String>,
    ) -> Self {
        Condition {
            kind: kind.into(),
            ..condition(status, reason, message)
        }
    }
}

fn condition(status: &str, reason: Option<&str>, message: Option<String>) -> Condition {
    Condition {
        kind: "Ready".into(),
        status: status.into(),
        reason: reason.map(str::to_owned),
        message,
        last_transition_time: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
    }
}

/// An object as the admin API returns it: the manifest as loaded, with status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ObjectView {
    pub api_version: String,
    pub kind: String,
    pub metadata: ViewMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
    pub status: Status,
}

impl ObjectView {
    /// A loaded object with its status. `spec` is the object's `spec` (a
    /// Secret has none, so its values are never shown).
    pub(crate) fn of(loaded: &super::manifest::Loaded, status: Status) -> ObjectView {
        let resource = &loaded.resource;
        let metadata = resource.metadata();
        ObjectView {
            api_version: resource.api_version().to_owned(),
            kind: resource.kind().to_owned(),
            metadata: ViewMeta {
                name: metadata.name.clone(),
                namespace: metadata.namespace().to_owned(),
                annotations: metadata.annotations.clone(),
                source: loaded.origin.to_string(),
                owner_references: metadata
                    .owner_references
                    .clone()
                    .and_then(|refs| serde_json::from_value(refs).ok())
                    .unwrap_or_default(),
            },
            spec: resource.to_json()["spec"].clone(),
            status,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ViewMeta {
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// `file:line` the object was loaded from.
    #[serde(default)]
    pub source: String,
    /// The object that made this one (a Sequence's channels), as
    /// Kubernetes records it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
}

/// `metadata.ownerReferences[]`, as far as `get` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub controller: bool,
}

/// The answer of `GET /api/v1/{brokers,triggers}`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub(crate) struct ObjectList {
    pub items: Vec<ObjectView>,
    /// Manifests that were refused, so `pilotlight get` can say so.
    #[serde(default)]
    pub errors: Vec<String>,
}

impl ObjectList {
    pub(crate) fn new(items: Vec<ObjectView>, errors: &[ManifestError]) -> Self {
        ObjectList {
            items,
            errors: errors.iter().map(ToString::to_string).collect(),
        }
    }
}
