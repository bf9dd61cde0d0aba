//! How a JobSink takes events: the eventing half stores them and the
//! serving half runs one job each. Each JobSink owns a channel on the
//! durable log, `{name}-jobsink` (its address is the JobSink's: 202 once
//! an event is stored), and a subscription of the same name that delivers
//! each event to the JobSink's job endpoint (`serving::jobs`). The
//! endpoint answers when the job has ended, so the subscription's
//! deliveries in flight are the jobs running: at most
//! `pilotlight.dev/max-running-jobs`, and events beyond wait stored, and
//! come again after a crash.

use std::collections::BTreeMap;

use crate::api::channel::{CHANNEL_CLASS_ANNOTATION, InMemoryChannel};
use crate::api::duck::{DeliverySpec, Destination, KReference};
use crate::api::jobsink::JobSink;
use crate::api::manifest::Loaded;
use crate::api::subscription::{Subscription, SubscriptionSpec};
use crate::api::trigger::MAX_IN_FLIGHT_ANNOTATION;
use crate::api::{ObjectMeta, Resource};

/// How long a delivery waits for its job when the Job sets no
/// `activeDeadlineSeconds`: the endpoint answers when the job ends.
const JOB_WAIT_WITHOUT_DEADLINE: &str = "PT24H";
/// Tries of a delivery whose job could not start (the endpoint's 503: no
/// container engine yet, an image that cannot be pulled), a second apart
/// and doubling: about 17 minutes in all before the event is dropped.
const START_RETRIES: i32 = 10;

/// The channel a JobSink's events are stored in; its address is the
/// JobSink's.
pub(crate) fn intake_channel(sink: &str) -> String {
    format!("{sink}-jobsink")
}

/// The channel and subscription a JobSink owns, with its origin.
/// `endpoint` is its job endpoint, `max_running` its jobs at once.
pub(crate) fn intake(loaded: &Loaded, endpoint: String, max_running: usize) -> Vec<Loaded> {
    let Resource::JobSink(sink) = &loaded.resource else {
        return Vec::new();
    };
    let name = intake_channel(&sink.metadata.name);
    let owned = |annotations| ObjectMeta {
        name: name.clone(),
        namespace: Some(sink.metadata.namespace().to_owned()),
        annotations,
        owner_references: Some(serde_json::json!([{
            "apiVersion": "sinks.knative.dev/v1alpha1",
            "kind": "JobSink",
            "name": sink.metadata.name,
            "controller": true,
        }])),
        ..Default::default()
    };
    let channel = InMemoryChannel {
        api_version: "messaging.knative.dev/v1".into(),
        kind: "InMemoryChannel".into(),
        metadata: owned(BTreeMap::from([(
            CHANNEL_CLASS_ANNOTATION.to_owned(),
            "Log".to_owned(),
        )])),
        spec: Default::default(),
        status: None,
    };
    let subscription = Subscription {
        api_version: "messaging.knative.dev/v1".into(),
        kind: "Subscription".into(),
        metadata: owned(BTreeMap::from([(
            MAX_IN_FLIGHT_ANNOTATION.to_owned(),
            max_running.clamp(1, 10_000).to_string(),
        )])),
        spec: SubscriptionSpec {
            channel: KReference {
                api_version: channel.api_version.clone(),
                kind: channel.kind.clone(),
                name: name.clone(),
                namespace: None,
                address: None,
            },
            subscriber: Some(Destination {
                uri: Some(endpoint),
                ..Default::default()
            }),
            reply: None,
            delivery: Some(delivery(sink)),
        },
        status: None,
    };
    [
        Resource::InMemoryChannel(Box::new(channel)),
        Resource::Subscription(Box::new(subscription)),
    ]
    .into_iter()
    .map(|resource| Loaded {
        origin: loaded.origin.clone(),
        resource,
    })
    .collect()
}

/// A delivery waits as long as the job may run, and a job that cannot
/// start is tried again for a while.
fn delivery(sink: &JobSink) -> DeliverySpec {
    let deadline = sink.spec.job.as_ref();
    let timeout = match deadline.and_then(|job| job.spec.active_deadline_seconds) {
        // A minute more than the deadline, for the job's own clean-up.
        Some(seconds) => format!("PT{}S", seconds.saturating_add(60)),
        None => JOB_WAIT_WITHOUT_DEADLINE.to_owned(),
    };
    DeliverySpec {
        retry: Some(START_RETRIES),
        backoff_delay: Some("PT1S".into()),
        timeout: Some(timeout),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::broker::BrokerClass;
    use crate::api::manifest::Manifests;

    #[test]
    fn a_jobsink_stores_on_the_log_and_delivers_to_its_endpoint_as_many_at_once_as_it_runs_jobs() {
        let manifests = Manifests::from_text(
            "apiVersion: sinks.knative.dev/v1alpha1\nkind: JobSink\nmetadata:\n  name: job-sink-logger\nspec:\n  job:\n    spec:\n      activeDeadlineSeconds: 600\n      template:\n        spec:\n          restartPolicy: Never\n          containers:\n            - name: main\n              image: docker.io/library/bash:5\n              command: [cat]\n              args: [/etc/jobsink-event/event]\n",
            BrokerClass::Memory,
        );
        assert!(manifests.errors.is_empty(), "{:?}", manifests.errors);
        let owned = intake(&manifests.objects[0], "http://127.0.0.1:9090/x".into(), 3);
        let [channel, subscription] = &owned[..] else {
            panic!("a channel and a subscription: {owned:?}");
        };
        let Resource::InMemoryChannel(channel) = &channel.resource else {
            panic!("a channel");
        };
        assert_eq!(channel.metadata.name, "job-sink-logger-jobsink");
        assert_eq!(
            channel.metadata.annotations[CHANNEL_CLASS_ANNOTATION],
            "Log"
        );
        let Resource::Subscription(subscription) = &subscription.resource else {
            panic!("a subscription");
        };
        assert_eq!(subscription.max_in_flight(1), Ok(3));
        let spec = &subscription.spec;
        assert_eq!(
            spec.subscriber.as_ref().and_then(|s| s.uri.as_deref()),
            Some("http://127.0.0.1:9090/x")
        );
        let delivery = spec.delivery.as_ref().expect("a delivery");
        assert_eq!(delivery.timeout.as_deref(), Some("PT660S"));
        assert_eq!(delivery.retry, Some(START_RETRIES));
    }
}
