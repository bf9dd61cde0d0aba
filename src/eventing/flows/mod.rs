//! Sequences and Parallels, wired as Knative wires them: from channels and
//! subscriptions that the flow owns. [`expand`] makes those objects from a
//! flow (named as Knative names them, so `get channels` and `get
//! subscriptions` show what Knative's would), the control plane runs them
//! as any other channel and subscription, and [`status`] reads the flow's
//! status back from theirs.
//!
//! Sequence `s` with steps 0..n: channel `s-kn-sequence-{i}` in front of
//! step i, subscription `s-kn-sequence-{i}` from it to the step, whose
//! replies go to channel i+1, the last one's to `spec.reply`. Events enter
//! by channel 0.
//!
//! Parallel `p`: events enter by channel `p-kn-parallel`; for branch i, the
//! subscription `p-kn-parallel-filter-{i}` sends each to the branch's
//! filter (or on, without one), whose replies go to channel
//! `p-kn-parallel-{i}`; subscription `p-kn-parallel-{i}` sends them to the
//! branch's subscriber, whose replies go to the branch's `reply`, else the
//! Parallel's.

use std::collections::BTreeMap;

use crate::api::channel::{BackingChannel, CHANNEL_CLASS_ANNOTATION, ChannelTemplate};
use crate::api::duck::{DeliverySpec, Destination, KReference};
use crate::api::flows::{Parallel, Sequence};
use crate::api::manifest::Loaded;
use crate::api::status::{
    BranchStatus, ChannelStatusRef, Condition, MessagingStatus, ObjectRef, Status,
    SubscriptionStatusRef,
};
use crate::api::subscription::{Subscription, SubscriptionSpec};
use crate::api::{ObjectKey, ObjectMeta, Resource};

/// The name of the channel in front of step `i` of a Sequence, and of the
/// step's subscription.
pub(crate) fn sequence_part(sequence: &str, step: usize) -> String {
    format!("{sequence}-kn-sequence-{step}")
}

/// The channel every event of a Parallel enters by.
pub(crate) fn parallel_ingress(parallel: &str) -> String {
    format!("{parallel}-kn-parallel")
}

fn parallel_branch(parallel: &str, branch: usize) -> String {
    format!("{parallel}-kn-parallel-{branch}")
}

fn parallel_filter(parallel: &str, branch: usize) -> String {
    format!("{parallel}-kn-parallel-filter-{branch}")
}

/// The channel a flow's events enter by; None for other kinds.
pub(crate) fn entry_channel(resource: &Resource) -> Option<ObjectKey> {
    let key = resource.metadata().key();
    let name = match resource {
        Resource::Sequence(_) => sequence_part(&key.name, 0),
        Resource::Parallel(_) => parallel_ingress(&key.name),
        _ => return None,
    };
    Some(ObjectKey::new(key.namespace, name))
}

/// The channels and subscriptions a flow owns, with the flow's origin;
/// nothing for other kinds.
pub(crate) fn expand(flow: &Loaded) -> Vec<Loaded> {
    let owned = match &flow.resource {
        Resource::Sequence(sequence) => expand_sequence(sequence),
        Resource::Parallel(parallel) => expand_parallel(parallel),
        _ => return Vec::new(),
    };
    owned
        .into_iter()
        .map(|resource| Loaded {
            origin: flow.origin.clone(),
            resource,
        })
        .collect()
}

/// What the owned objects of one flow share: where they live, who owns
/// them, and the kind of channel they are made of.
struct Owner<'a> {
    metadata: &'a ObjectMeta,
    kind: &'static str,
    template: ChannelTemplate,
}

impl Owner<'_> {
    fn meta(&self, name: String) -> ObjectMeta {
        let mut annotations = BTreeMap::new();
        // A flow's channel class reaches the channels it makes.
        if let Some(class) = self.metadata.annotations.get(CHANNEL_CLASS_ANNOTATION) {
            annotations.insert(CHANNEL_CLASS_ANNOTATION.to_owned(), class.clone());
        }
        ObjectMeta {
            name,
            namespace: Some(self.metadata.namespace().to_owned()),
            annotations,
            owner_references: Some(serde_json::json!([{
                "apiVersion": "flows.knative.dev/v1",
                "kind": self.kind,
                "name": self.metadata.name,
                "controller": true,
            }])),
            ..Default::default()
        }
    }

    fn channel(&self, name: String) -> Resource {
        // Checked at load, so the template makes a channel.
        match self.template.backing(&self.meta(name.clone())) {
            Ok(BackingChannel::Kafka(channel)) => Resource::KafkaChannel(channel),
            Ok(BackingChannel::InMemory(channel)) => Resource::InMemoryChannel(channel),
            Err(_) => Resource::InMemoryChannel(Box::new(crate::api::channel::InMemoryChannel {
                api_version: "messaging.knative.dev/v1".into(),
                kind: "InMemoryChannel".into(),
                metadata: self.meta(name),
                spec: Default::default(),
                status: None,
            })),
        }
    }

    /// A destination that is channel `name` of this flow.
    fn channel_destination(&self, name: String) -> Destination {
        Destination {
            reference: Some(KReference {
                api_version: self.template.api_version.clone(),
                kind: self.template.kind.clone(),
                name,
                namespace: None,
                address: None,
            }),
            ..Default::default()
        }
    }

    fn subscription(
        &self,
        name: String,
        channel: String,
        subscriber: Option<Destination>,
        reply: Option<Destination>,
        delivery: Option<DeliverySpec>,
    ) -> Resource {
        let channel = self
            .channel_destination(channel)
            .reference
            .unwrap_or_else(|| unreachable!("a channel destination is a reference"));
        Resource::Subscription(Box::new(Subscription {
            api_version: "messaging.knative.dev/v1".into(),
            kind: "Subscription".into(),
            metadata: self.meta(name),
            spec: SubscriptionSpec {
                channel,
                subscriber,
                reply,
                delivery,
            },
            status: None,
        }))
    }
}

fn expand_sequence(sequence: &Sequence) -> Vec<Resource> {
    let owner = Owner {
        metadata: &sequence.metadata,
        kind: "Sequence",
        template: template(sequence.spec.channel_template.as_ref()),
    };
    let name = &sequence.metadata.name;
    let steps = &sequence.spec.steps;
    let mut owned: Vec<Resource> = (0..steps.len())
        .map(|i| owner.channel(sequence_part(name, i)))
        .collect();
    for (i, step) in steps.iter().enumerate() {
        let reply = if i + 1 < steps.len() {
            Some(owner.channel_destination(sequence_part(name, i + 1)))
        } else {
            sequence.spec.reply.clone()
        };
        owned.push(owner.subscription(
            sequence_part(name, i),
            sequence_part(name, i),
            Some(step.destination()),
            reply,
            step.delivery.clone(),
        ));
    }
    owned
}

fn expand_parallel(parallel: &Parallel) -> Vec<Resource> {
    let owner = Owner {
        metadata: &parallel.metadata,
        kind: "Parallel",
        template: template(parallel.spec.channel_template.as_ref()),
    };
    let name = &parallel.metadata.name;
    let mut owned = vec![owner.channel(parallel_ingress(name))];
    for (i, branch) in parallel.spec.branches.iter().enumerate() {
        owned.push(owner.channel(parallel_branch(name, i)));
        owned.push(owner.subscription(
            parallel_filter(name, i),
            parallel_ingress(name),
            branch.filter.clone(),
            Some(owner.channel_destination(parallel_branch(name, i))),
            branch.delivery.clone(),
        ));
        owned.push(owner.subscription(
            parallel_branch(name, i),
            parallel_branch(name, i),
            Some(branch.subscriber.clone()),
            branch.reply.clone().or_else(|| parallel.spec.reply.clone()),
            branch.delivery.clone(),
        ));
    }
    owned
}

fn template(template: Option<&ChannelTemplate>) -> ChannelTemplate {
    template.cloned().unwrap_or_else(ChannelTemplate::in_memory)
}

/// The statuses of a flow's parts, as the last apply and the backends'
/// health left them.
pub(crate) trait PartStatuses {
    fn channel(&self, key: &ObjectKey) -> Option<Status>;
    fn subscription(&self, key: &ObjectKey) -> Option<Status>;
}

/// A flow's status from its parts': Ready when all are, else the first
/// that is not, by name; with the address of its entry channel and each
/// part's readiness as Knative lists them.
pub(crate) fn status(resource: &Resource, address: String, parts: &dyn PartStatuses) -> Status {
    let key = resource.metadata().key();
    let (channel_kind, channel_version) = match resource {
        Resource::Sequence(s) => template_kind(s.spec.channel_template.as_ref()),
        Resource::Parallel(p) => template_kind(p.spec.channel_template.as_ref()),
        _ => return Status::default(),
    };
    let mut first_problem: Option<(String, Condition)> = None;
    let mut channel = |name: String| {
        let part = ObjectKey::new(key.namespace.clone(), name.clone());
        let ready = part_condition(parts.channel(&part), &channel_kind, &part);
        note_problem(&mut first_problem, &channel_kind, &name, &ready);
        ChannelStatusRef {
            channel: object_ref(&channel_version, &channel_kind, &part),
            ready,
        }
    };
    let mut channels = Vec::new();
    let mut branch_channels = Vec::new();
    let mut ingress = None;
    match resource {
        Resource::Sequence(s) => {
            channels = (0..s.spec.steps.len())
                .map(|i| channel(sequence_part(&key.name, i)))
                .collect();
        }
        Resource::Parallel(p) => {
            ingress = Some(channel(parallel_ingress(&key.name)));
            branch_channels = (0..p.spec.branches.len())
                .map(|i| channel(parallel_branch(&key.name, i)))
                .collect();
        }
        _ => {}
    }
    let mut subscription = |name: String| {
        let part = ObjectKey::new(key.namespace.clone(), name.clone());
        let ready = part_condition(parts.subscription(&part), "Subscription", &part);
        note_problem(&mut first_problem, "Subscription", &name, &ready);
        SubscriptionStatusRef {
            subscription: object_ref("messaging.knative.dev/v1", "Subscription", &part),
            ready,
        }
    };
    let mut messaging = MessagingStatus::default();
    match resource {
        Resource::Sequence(s) => {
            messaging.subscription_statuses = Some(
                (0..s.spec.steps.len())
                    .map(|i| subscription(sequence_part(&key.name, i)))
                    .collect(),
            );
            messaging.channel_statuses = Some(channels);
        }
        Resource::Parallel(_) => {
            let branches = branch_channels
                .into_iter()
                .enumerate()
                .map(|(i, filter_channel_status)| BranchStatus {
                    filter_subscription_status: subscription(parallel_filter(&key.name, i)),
                    filter_channel_status,
                    subscription_status: subscription(parallel_branch(&key.name, i)),
                })
                .collect();
            messaging.ingress_channel_status = ingress;
            messaging.branch_statuses = Some(branches);
        }
        _ => {}
    }
    let mut status = match first_problem {
        None => Status::ready(),
        Some((what, condition)) => Status::not_ready(
            condition.reason.as_deref().unwrap_or("NotReady"),
            format!(
                "{what} is not ready: {}",
                condition.message.unwrap_or_default()
            ),
        ),
    };
    status.address = Some(crate::api::status::Address::url(address));
    status.messaging = Some(Box::new(messaging));
    status
}

fn template_kind(template: Option<&ChannelTemplate>) -> (String, String) {
    let template = self::template(template);
    (template.kind, template.api_version)
}

fn object_ref(api_version: &str, kind: &str, key: &ObjectKey) -> ObjectRef {
    ObjectRef {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name: key.name.clone(),
        namespace: key.namespace.clone(),
    }
}

/// A part's Ready condition; Unknown while the control plane has not run
/// it yet.
fn part_condition(status: Option<Status>, kind: &str, key: &ObjectKey) -> Condition {
    status
        .and_then(|s| s.ready_condition().cloned())
        .unwrap_or_else(|| {
            Condition::new(
                "Ready",
                "Unknown",
                Some("NotReconciled"),
                Some(format!("{kind} {key} has not been reconciled yet")),
            )
        })
}

fn note_problem(
    first: &mut Option<(String, Condition)>,
    kind: &str,
    name: &str,
    ready: &Condition,
) {
    if first.is_none() && ready.status != "True" {
        *first = Some((format!("{kind} {name}"), ready.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::broker::BrokerClass;
    use crate::api::manifest::Manifests;

    fn load(yaml: &str) -> Loaded {
        let mut manifests = Manifests::from_text(yaml, BrokerClass::Memory);
        assert!(manifests.errors.is_empty(), "{:?}", manifests.errors);
        manifests.objects.remove(0)
    }

    fn names(owned: &[Loaded]) -> Vec<String> {
        owned
            .iter()
            .map(|l| format!("{} {}", l.resource.kind(), l.resource.metadata().name))
            .collect()
    }

    fn subscription<'a>(owned: &'a [Loaded], name: &str) -> &'a SubscriptionSpec {
        owned
            .iter()
            .find_map(|l| match &l.resource {
                Resource::Subscription(s) if s.metadata.name == name => Some(&s.spec),
                _ => None,
            })
            .expect("the subscription")
    }

    fn target(destination: &Option<Destination>) -> String {
        match destination {
            Some(Destination {
                reference: Some(r), ..
            }) => format!("{} {}", r.kind, r.name),
            Some(Destination { uri: Some(u), .. }) => u.clone(),
            _ => "none".into(),
        }
    }

    #[test]
    fn a_sequence_chains_each_steps_reply_to_the_next_channel() {
        let flow = load(
            "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: s\n  namespace: ns\nspec:\n  steps:\n    - uri: http://a/\n    - uri: http://b/\n      delivery: {retry: 2}\n  reply: {uri: http://end/}\n",
        );
        let owned = expand(&flow);
        assert_eq!(
            names(&owned),
            [
                "InMemoryChannel s-kn-sequence-0",
                "InMemoryChannel s-kn-sequence-1",
                "Subscription s-kn-sequence-0",
                "Subscription s-kn-sequence-1",
            ]
        );
        let first = subscription(&owned, "s-kn-sequence-0");
        assert_eq!(first.channel.name, "s-kn-sequence-0");
        assert_eq!(target(&first.subscriber), "http://a/");
        assert_eq!(target(&first.reply), "InMemoryChannel s-kn-sequence-1");
        let last = subscription(&owned, "s-kn-sequence-1");
        assert_eq!(target(&last.reply), "http://end/");
        assert_eq!(last.delivery.as_ref().and_then(|d| d.retry), Some(2));
        assert_eq!(owned[0].origin, flow.origin);
        assert_eq!(
            entry_channel(&flow.resource),
            Some(ObjectKey::new("ns", "s-kn-sequence-0"))
        );
    }

    #[test]
    fn a_parallel_filters_into_each_branch_channel() {
        let flow = load(
            "apiVersion: flows.knative.dev/v1\nkind: Parallel\nmetadata:\n  name: p\n  annotations:\n    pilotlight.dev/channel.class: Log\nspec:\n  channelTemplate:\n    apiVersion: messaging.knative.dev/v1beta1\n    kind: KafkaChannel\n  branches:\n    - filter: {uri: http://f/}\n      subscriber: {uri: http://a/}\n    - subscriber: {uri: http://b/}\n      reply: {uri: http://own/}\n  reply: {uri: http://end/}\n",
        );
        let owned = expand(&flow);
        assert_eq!(
            names(&owned),
            [
                "KafkaChannel p-kn-parallel",
                "KafkaChannel p-kn-parallel-0",
                "Subscription p-kn-parallel-filter-0",
                "Subscription p-kn-parallel-0",
                "KafkaChannel p-kn-parallel-1",
                "Subscription p-kn-parallel-filter-1",
                "Subscription p-kn-parallel-1",
            ]
        );
        let filter = subscription(&owned, "p-kn-parallel-filter-0");
        assert_eq!(filter.channel.name, "p-kn-parallel");
        assert_eq!(target(&filter.subscriber), "http://f/");
        assert_eq!(target(&filter.reply), "KafkaChannel p-kn-parallel-0");
        // Without a filter every event passes on to the branch's channel.
        assert_eq!(
            target(&subscription(&owned, "p-kn-parallel-filter-1").subscriber),
            "none"
        );
        assert_eq!(
            target(&subscription(&owned, "p-kn-parallel-0").reply),
            "http://end/"
        );
        assert_eq!(
            target(&subscription(&owned, "p-kn-parallel-1").reply),
            "http://own/"
        );
        let annotations = &owned[0].resource.metadata().annotations;
        assert_eq!(annotations[CHANNEL_CLASS_ANNOTATION], "Log");
    }

    struct Parts(BTreeMap<String, Status>);

    impl PartStatuses for Parts {
        fn channel(&self, key: &ObjectKey) -> Option<Status> {
            self.0.get(&key.name).cloned()
        }
        fn subscription(&self, key: &ObjectKey) -> Option<Status> {
            self.0.get(&format!("sub {}", key.name)).cloned()
        }
    }

    #[test]
    fn a_flow_is_ready_when_every_part_is_and_says_which_is_not() {
        let flow = load(
            "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: s\nspec:\n  steps:\n    - uri: http://a/\n    - uri: http://b/\n",
        );
        let mut parts = Parts(BTreeMap::from([
            ("s-kn-sequence-0".into(), Status::ready()),
            ("s-kn-sequence-1".into(), Status::ready()),
            ("sub s-kn-sequence-0".into(), Status::ready()),
            ("sub s-kn-sequence-1".into(), Status::ready()),
        ]));
        let ready = status(&flow.resource, "http://x/".into(), &parts);
        assert!(ready.is_ready(), "{ready:?}");
        let messaging = ready.messaging.expect("flow status");
        assert_eq!(messaging.channel_statuses.map(|c| c.len()), Some(2));
        parts.0.insert(
            "sub s-kn-sequence-1".into(),
            Status::not_ready(
                "SubscriberResolveFailed",
                "service default/b does not exist",
            ),
        );
        let not_ready = status(&flow.resource, "http://x/".into(), &parts);
        let condition = not_ready.ready_condition().expect("ready");
        assert_eq!(condition.reason.as_deref(), Some("SubscriberResolveFailed"));
        assert_eq!(
            condition.message.as_deref(),
            Some("Subscription s-kn-sequence-1 is not ready: service default/b does not exist")
        );
    }
}
