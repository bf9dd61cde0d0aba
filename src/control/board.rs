//! One status board for every object pilotlight reconciles: what `get`
//! and the admin API list, and what Kubernetes mode writes into each
//! object's `status`. Brokers and triggers are as the last apply left them,
//! with what changes between applies read live: a broker's backend health
//! (its RabbitMQ or Kafka connection), a trigger's backlog when listed.
//! Services, Revisions, Routes, sources and JobSinks (with their jobs) are
//! read live, since instances, sources and jobs change state between
//! applies.

use std::sync::{Arc, RwLock};

use super::sinks::SinkViews;
use crate::api::ObjectKey;
use crate::api::manifest::ManifestError;
use crate::api::status::{ObjectList, ObjectView, Status};
use crate::eventing::controller::EventingController;
use crate::serving::controller::ServingController;

/// What the admin API lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Collection {
    Brokers,
    Triggers,
    Services,
    Revisions,
    Routes,
    Sources,
    Channels,
    Subscriptions,
    Sequences,
    Parallels,
    JobSinks,
    EventPolicies,
}

impl Collection {
    const ALL: [Collection; 12] = [
        Collection::Brokers,
        Collection::Triggers,
        Collection::Services,
        Collection::Revisions,
        Collection::Routes,
        Collection::Sources,
        Collection::Channels,
        Collection::Subscriptions,
        Collection::Sequences,
        Collection::Parallels,
        Collection::JobSinks,
        Collection::EventPolicies,
    ];

    /// Its name in the admin API's path, `/api/v1/{name}`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Collection::Brokers => "brokers",
            Collection::Triggers => "triggers",
            Collection::Services => "services",
            Collection::Revisions => "revisions",
            Collection::Routes => "routes",
            Collection::Sources => "sources",
            Collection::Channels => "channels",
            Collection::Subscriptions => "subscriptions",
            Collection::Sequences => "sequences",
            Collection::Parallels => "parallels",
            Collection::JobSinks => "jobsinks",
            Collection::EventPolicies => "eventpolicies",
        }
    }

    pub(crate) fn named(name: &str) -> Option<Collection> {
        Collection::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The names, for an error that lists what exists.
    pub(crate) fn names() -> String {
        Collection::ALL.map(Collection::name).join(", ")
    }
}

pub(crate) struct StatusBoard {
    eventing: Arc<EventingController>,
    serving: Arc<ServingController>,
    /// ContainerSources and SinkBindings, listed with the sources.
    sinks: Arc<SinkViews>,
    /// The documents the last apply refused, listed with every collection.
    errors: RwLock<Vec<ManifestError>>,
}

impl StatusBoard {
    pub(crate) fn new(
        eventing: Arc<EventingController>,
        serving: Arc<ServingController>,
        sinks: Arc<SinkViews>,
    ) -> Self {
        StatusBoard {
            eventing,
            serving,
            sinks,
            errors: RwLock::default(),
        }
    }

    pub(crate) fn set_errors(&self, errors: Vec<ManifestError>) {
        *self.errors.write().unwrap_or_else(|e| e.into_inner()) = errors;
    }

    /// The documents the last apply refused.
    pub(crate) fn refused(&self) -> Vec<ManifestError> {
        self.errors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A collection with status (and live figures), with the refused
    /// manifests.
    pub(crate) async fn list(&self, collection: Collection, namespace: Option<&str>) -> ObjectList {
        let items = self.views(collection, namespace).await;
        let errors = self.errors.read().unwrap_or_else(|e| e.into_inner());
        ObjectList::new(items, &errors)
    }

    async fn views(&self, collection: Collection, namespace: Option<&str>) -> Vec<ObjectView> {
        match collection {
            Collection::Brokers => self.eventing.brokers(namespace),
            Collection::Triggers => self.eventing.triggers(namespace).await,
            Collection::Sources => self.sources(namespace).await,
            Collection::Services => self.serving.services(namespace).await,
            Collection::Revisions => self.serving.revisions(namespace).await,
            Collection::Routes => self.serving.routes(namespace).await,
            Collection::Channels => self.eventing.channels(namespace),
            Collection::Subscriptions => self.eventing.subscriptions(namespace),
            Collection::Sequences => self.eventing.flows("Sequence", namespace),
            Collection::Parallels => self.eventing.flows("Parallel", namespace),
            Collection::JobSinks => self.jobsinks(namespace),
            Collection::EventPolicies => self.eventing.event_policies(namespace),
        }
    }

    /// One object's status, for a status write: a Broker's or Trigger's as
    /// the last apply left it (a Broker's with its backend's health),
    /// others from their namespace's views only (a reconcile runs per
    /// object; listing every namespace for each would be quadratic in the
    /// objects).
    pub(crate) async fn status(&self, kind: &str, key: &ObjectKey) -> Option<Status> {
        let namespace = Some(key.namespace.as_str());
        let views = match kind {
            "Broker" | "Trigger" | "InMemoryChannel" | "KafkaChannel" | "Channel"
            | "Subscription" | "Sequence" | "Parallel" | "EventPolicy" => {
                return self.eventing.applied_status(kind, key);
            }
            "Service" => self.serving.services(namespace).await,
            "ContainerSource" | "SinkBinding" => self.sinks.list(namespace, &self.serving).await,
            "JobSink" => self.jobsinks(namespace),
            _ => self.eventing.sources(namespace).await,
        };
        views
            .into_iter()
            .find(|v| v.kind == kind && v.metadata.name == key.name)
            .map(|v| v.status)
    }

    /// Every source: eventing's, then ContainerSources and SinkBindings
    /// (Knative lists them with the sources too).
    async fn sources(&self, namespace: Option<&str>) -> Vec<ObjectView> {
        let mut views = self.eventing.sources(namespace).await;
        views.extend(self.sinks.list(namespace, &self.serving).await);
        views
    }

    /// JobSinks with their jobs, each annotated with its job endpoint
    /// (`pilotlight.dev/job-endpoint`), where its events are delivered.
    fn jobsinks(&self, namespace: Option<&str>) -> Vec<ObjectView> {
        let mut views = self.serving.jobsinks(namespace);
        for view in &mut views {
            let key = ObjectKey::new(&view.metadata.namespace, &view.metadata.name);
            let url = super::admin::jobsink_url(self.serving.jobs(), &key);
            view.metadata
                .annotations
                .insert("pilotlight.dev/job-endpoint".into(), url);
        }
        views
    }

    /// Publishes the figures `/metrics` shows besides the counters (each
    /// trigger's backlog).
    pub(crate) async fn record_metrics(&self) {
        self.eventing.record_backlog().await;
    }
}
