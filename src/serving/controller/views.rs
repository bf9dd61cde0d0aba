//! What `get` and the admin API show of Services, Revisions and Routes,
//! computed from the running state when asked: readiness changes as
//! instances come and go, not only when manifests are applied.

use std::collections::BTreeMap;

use super::{RunningRevision, RunningService, ServingController, latest_ready, resolve_traffic};
use crate::api::ObjectKey;
use crate::api::status::{
    ContainerStatus, ObjectView, ServingStatus, Status, TrafficStatus, ViewMeta,
};
use crate::serving::runtime::ConditionState;

impl ServingController {
    /// Services, with URL, traffic and readiness.
    pub(crate) async fn services(&self, namespace: Option<&str>) -> Vec<ObjectView> {
        let state = self.state.lock().await;
        state
            .services
            .iter()
            .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(key, entry)| self.service_view(key, entry))
            .collect()
    }

    fn service_view(&self, key: &ObjectKey, entry: &RunningService) -> ObjectView {
        let traffic = resolve_traffic(entry);
        let mut status = match (&entry.failure, &traffic) {
            (Some(failure), _) => failure.clone(),
            (None, Err(failure)) => (**failure).clone(),
            (None, Ok(_)) => match entry.revisions.get(&entry.latest_created) {
                Some(latest) => match revision_status(latest) {
                    s if s.is_ready() => Status::ready(),
                    s if s.ready_condition().is_some_and(|c| c.status == "Unknown") => {
                        Status::unknown(
                            "RevisionDeploying",
                            format!("revision {} is starting", entry.latest_created),
                        )
                    }
                    s => {
                        let why = s
                            .ready_condition()
                            .and_then(|c| c.message.clone())
                            .unwrap_or_default();
                        Status::not_ready(
                            "RevisionFailed",
                            format!("revision {} is not ready: {why}", entry.latest_created),
                        )
                    }
                },
                None => Status::not_ready("RevisionMissing", "no revision yet"),
            },
        };
        let mut serving = ServingStatus {
            url: Some(self.url(key, None)),
            latest_created_revision_name: Some(entry.latest_created.clone()),
            latest_ready_revision_name: latest_ready(entry),
            ..ServingStatus::default()
        };
        if let Ok(targets) = traffic {
            serving.traffic = Some(
                targets
                    .iter()
                    .map(|t| TrafficStatus {
                        revision_name: t.revision.key.name.clone(),
                        latest_revision: t.latest,
                        percent: t.percent,
                        tag: t.tag.clone(),
                        url: t.tag.as_deref().map(|tag| self.url(key, Some(tag))),
                    })
                    .collect(),
            );
        }
        status.serving = Some(Box::new(serving));
        ObjectView {
            api_version: entry.service.api_version.clone(),
            kind: "Service".into(),
            metadata: ViewMeta {
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                annotations: entry.service.metadata.annotations.clone(),
                source: entry.origin.clone(),
                owner_references: Vec::new(),
            },
            spec: serde_json::to_value(&entry.service.spec).unwrap_or_default(),
            status,
        }
    }

    /// Revisions, with desired and actual instances.
    pub(crate) async fn revisions(&self, namespace: Option<&str>) -> Vec<ObjectView> {
        let state = self.state.lock().await;
        let mut views = Vec::new();
        for (key, entry) in &state.services {
            if namespace.is_some_and(|ns| key.namespace != ns) {
                continue;
            }
            for (name, running) in &entry.revisions {
                let mut annotations = BTreeMap::new();
                annotations.insert("serving.knative.dev/service".to_owned(), key.name.clone());
                views.push(ObjectView {
                    api_version: "serving.knative.dev/v1".into(),
                    kind: "Revision".into(),
                    metadata: ViewMeta {
                        name: name.clone(),
                        namespace: key.namespace.clone(),
                        annotations,
                        source: entry.origin.clone(),
                        owner_references: Vec::new(),
                    },
                    spec: running
                        .record
                        .template
                        .get("spec")
                        .cloned()
                        .unwrap_or_default(),
                    status: revision_status(running),
                });
            }
        }
        views
    }

    /// Routes: each service's hosts and traffic.
    pub(crate) async fn routes(&self, namespace: Option<&str>) -> Vec<ObjectView> {
        self.services(namespace)
            .await
            .into_iter()
            .map(|mut view| {
                view.kind = "Route".into();
                view.spec = serde_json::json!({ "traffic": view.spec.get("traffic").cloned().unwrap_or_default() });
                if let Some(serving) = view.status.serving.as_mut() {
                    serving.latest_created_revision_name = None;
                    serving.latest_ready_revision_name = None;
                }
                view
            })
            .collect()
    }
}

fn revision_status(running: &RunningRevision) -> Status {
    let mut status = revision_condition(running);
    let mut serving = ServingStatus {
        runtime: Some(running.runtime.to_owned()).filter(|r| !r.is_empty()),
        ..ServingStatus::default()
    };
    if let Some(revision) = &running.revision {
        let deployment = revision.deployment.status();
        serving.desired_replicas = Some(revision.scaler.snapshot().desired);
        serving.actual_replicas = Some(deployment.ready);
        serving.restarts = (deployment.restarts > 0).then_some(deployment.restarts);
        serving.container_statuses = (!deployment.images.is_empty()).then(|| {
            deployment
                .images
                .iter()
                .map(|image| ContainerStatus {
                    name: image.name.clone(),
                    image_digest: image.image_digest.clone(),
                })
                .collect()
        });
    }
    status.serving = Some(Box::new(serving));
    status
}

/// The Ready condition: why it cannot run, what it waits for, or how its
/// last instance failed.
fn revision_condition(running: &RunningRevision) -> Status {
    let Some(revision) = &running.revision else {
        return Status::not_ready("CannotRun", running.failure.clone().unwrap_or_default());
    };
    let deployment = revision.deployment.status();
    let condition = deployment.condition.as_ref();
    if revision.has_been_ready() {
        let mut status = Status::ready();
        let note = match (&deployment.last_failure, condition) {
            (Some(failure), _) => Some(format!("last failure: {failure}")),
            (None, Some(c)) => Some(c.message.clone()),
            (None, None) => None,
        };
        if let Some(condition) = status.conditions.first_mut() {
            condition.message = note;
        }
        return status;
    }
    match (condition, &deployment.last_failure) {
        (Some(c), _) if c.state == ConditionState::Failed => {
            Status::not_ready(c.reason, c.message.clone())
        }
        (_, Some(failure)) => Status::not_ready("ContainerFailed", failure.clone()),
        (Some(c), None) if c.state == ConditionState::Pending => {
            Status::unknown(c.reason, c.message.clone())
        }
        _ => Status::unknown("Deploying", "waiting for the first instance to be ready"),
    }
}
