//! Giving apps a sink: ContainerSources and SinkBindings. Both resolve a
//! sink and hand it to a pod as `K_SINK` (and `spec.ceOverrides` as
//! `K_CE_OVERRIDES`), so both are planned here, above the two halves:
//! sinks resolve to brokers (eventing) and Services (serving), and the pods
//! run on serving's runtimes.
//!
//! - A SinkBinding whose subject is a Knative Service changes the Service's
//!   revision template before serving sees it: the variables are part of
//!   the template, so a changed sink rolls a new revision, as in Knative.
//! - In Kubernetes mode, a binding whose subject is a Deployment (by name
//!   or selector) becomes a [`WorkloadBinding`]: the leader patches the
//!   Deployments' pod templates (`control::kubernetes::binding`) and
//!   records the outcome here ([`SinkViews::set_bound`]). A Job cannot be
//!   bound: its pod template is immutable, and Knative binds Jobs at
//!   creation with a mutating webhook, which pilotlight does not have.
//! - A ContainerSource becomes a daemon of the serving half
//!   (`serving::daemon`), its template carrying the variables.
//!
//! [`plan`] is a plain function of the loaded objects; the control plane
//! carries it out and keeps the views for `get` ([`SinkViews`]).

use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::api::manifest::Loaded;
use crate::api::sources::container::ContainerSource;
use crate::api::sources::sinkbinding::{SinkBinding, Subject, SubjectKind};
use crate::api::sources::{bind_sink, ce_overrides_env};
use crate::api::status::{ObjectView, Status};
use crate::api::{ObjectKey, Resource};
use crate::eventing::controller::plan::Destinations;
use crate::serving::controller::ServingController;
use crate::serving::daemon::DesiredDaemon;

/// What the sinks of one apply come to.
#[derive(Debug, Default)]
pub(crate) struct SinkPlan {
    /// The Services that SinkBindings bind, with the variables in their
    /// templates: serving runs these instead of the loaded ones.
    pub bound_services: BTreeMap<ObjectKey, Loaded>,
    /// The ContainerSources whose sink resolved.
    pub daemons: Vec<DesiredDaemon>,
    /// The SinkBindings whose subjects are Deployments, with their sinks
    /// resolved: the leader patches them (Kubernetes mode only).
    pub workloads: BTreeMap<ObjectKey, WorkloadBinding>,
    pub views: Vec<SinkView>,
}

/// A SinkBinding whose subject is a Deployment, its sink resolved: what the
/// leader puts into the subjects' pod templates.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkloadBinding {
    /// The SinkBinding's; its subjects are in the same namespace.
    pub key: ObjectKey,
    pub subject: Subject,
    /// The value of `K_SINK`.
    pub sink: String,
    /// The value of `K_CE_OVERRIDES`.
    pub overrides: String,
}

/// A ContainerSource or SinkBinding as `get` lists it.
#[derive(Debug, Clone)]
pub(crate) struct SinkView {
    /// The object with the status the plan gave it.
    pub view: ObjectView,
    /// A ContainerSource that runs: its Ready condition is its daemon's,
    /// read live.
    pub daemon: Option<ObjectKey>,
}

/// Plans every ContainerSource and SinkBinding of `objects`; `services`
/// are the loaded Knative Services, which bindings may bind; `workloads`:
/// whether Deployments can be bound (Kubernetes mode).
pub(crate) fn plan(
    objects: &[Loaded],
    services: &[&Loaded],
    destinations: &Destinations<'_>,
    workloads: bool,
) -> SinkPlan {
    let mut plan = SinkPlan::default();
    for loaded in objects {
        match &loaded.resource {
            Resource::ContainerSource(source) => {
                plan_source(&mut plan, loaded, source, destinations)
            }
            Resource::SinkBinding(binding) => {
                plan_binding(
                    &mut plan,
                    loaded,
                    binding,
                    services,
                    destinations,
                    workloads,
                );
            }
            _ => {}
        }
    }
    plan
}

fn plan_source(
    plan: &mut SinkPlan,
    loaded: &Loaded,
    source: &ContainerSource,
    destinations: &Destinations<'_>,
) {
    let key = source.metadata.key();
    let sink = match destinations.resolve(&source.spec.sink, &key.namespace) {
        Ok(sink) => sink.to_string(),
        Err(message) => {
            // As Knative: no sink, no pod.
            let status = Status::not_ready("SinkNotFound", format!("spec.sink: {message}"));
            plan.views.push(SinkView {
                view: ObjectView::of(loaded, status),
                daemon: None,
            });
            return;
        }
    };
    let mut template = source.spec.template.clone();
    bind_sink(&mut template, &sink, source.spec.ce_overrides.as_ref());
    plan.daemons.push(DesiredDaemon {
        key: key.clone(),
        template,
    });
    let mut status = Status::unknown("Starting", "waiting for its pod to run");
    status.sink_uri = Some(sink);
    plan.views.push(SinkView {
        view: ObjectView::of(loaded, status),
        daemon: Some(key),
    });
}

fn plan_binding(
    plan: &mut SinkPlan,
    loaded: &Loaded,
    binding: &SinkBinding,
    services: &[&Loaded],
    destinations: &Destinations<'_>,
    workloads: bool,
) {
    let kind = binding.spec.subject.subject_kind();
    let status = match kind {
        Some(SubjectKind::KnativeService) => bind(plan, binding, services, destinations),
        Some(SubjectKind::Deployment) if workloads => bind_workload(plan, binding, destinations),
        Some(SubjectKind::Job) if workloads => Err(Box::new(Status::not_ready(
            "SubjectNotBindable",
            JOB_NOT_BINDABLE,
        ))),
        _ => {
            let kind = kind.map(SubjectKind::describe).unwrap_or_default();
            Err(Box::new(Status::not_ready(
                "SubjectKindUnsupported",
                format!(
                    "spec.subject: outside Kubernetes mode pilotlight binds Knative Services (serving.knative.dev/v1), not {kind}; run the program as a Knative Service or a ContainerSource, or run pilotlight with --kubernetes"
                ),
            )))
        }
    };
    let status = match status {
        Ok(sink) => {
            let mut status = Status::ready();
            status.sink_uri = Some(sink);
            status
        }
        Err(status) => *status,
    };
    plan.views.push(SinkView {
        view: ObjectView::of(loaded, status),
        daemon: None,
    });
}

/// Why a Job subject is never bound.
const JOB_NOT_BINDABLE: &str = "spec.subject: pilotlight cannot bind Jobs (batch/v1): a Job's pod template cannot change once the Job exists, and Knative binds a Job as it is created, through a mutating admission webhook, which pilotlight does not have; set K_SINK in the Job's template yourself, or run the program as a Deployment, a Knative Service or a ContainerSource";

/// Resolves the sink of a binding whose subject is a Deployment: the
/// leader patches the Deployments, and its outcome replaces the Unknown
/// status given here.
fn bind_workload(
    plan: &mut SinkPlan,
    binding: &SinkBinding,
    destinations: &Destinations<'_>,
) -> Result<String, Box<Status>> {
    let key = binding.metadata.key();
    let sink = destinations
        .resolve(&binding.spec.sink, &key.namespace)
        .map_err(|m| Box::new(Status::not_ready("SinkNotFound", format!("spec.sink: {m}"))))?
        .to_string();
    plan.workloads.insert(
        key.clone(),
        WorkloadBinding {
            key,
            subject: binding.spec.subject.clone(),
            sink: sink.clone(),
            overrides: ce_overrides_env(binding.spec.ce_overrides.as_ref()),
        },
    );
    let mut status = Status::unknown(
        "Binding",
        "the leader replica has not bound the Deployments yet",
    );
    status.sink_uri = Some(sink);
    Err(Box::new(status))
}

/// Binds the sink into the subject's template; the sink URI, or the status
/// that says why not.
fn bind(
    plan: &mut SinkPlan,
    binding: &SinkBinding,
    services: &[&Loaded],
    destinations: &Destinations<'_>,
) -> Result<String, Box<Status>> {
    let key = binding.metadata.key();
    let subject = &binding.spec.subject;
    let name = subject.name.clone().unwrap_or_default();
    let subject_key = ObjectKey::new(key.namespace.clone(), name);
    let Some(service) = services
        .iter()
        .find(|l| l.resource.metadata().key() == subject_key)
    else {
        return Err(Box::new(Status::not_ready(
            "SubjectMissing",
            format!(
                "spec.subject: Service {subject_key} does not exist: create it, or fix spec.subject.name"
            ),
        )));
    };
    if plan.bound_services.contains_key(&subject_key) {
        return Err(Box::new(Status::not_ready(
            "SubjectAlreadyBound",
            format!(
                "spec.subject: Service {subject_key} is bound by another SinkBinding, which comes first by name; a pod has one K_SINK"
            ),
        )));
    }
    let sink = destinations
        .resolve(&binding.spec.sink, &key.namespace)
        .map_err(|m| Box::new(Status::not_ready("SinkNotFound", format!("spec.sink: {m}"))))?
        .to_string();
    let Resource::Service(mut bound) = service.resource.clone() else {
        return Err(Box::new(Status::not_ready(
            "SubjectMissing",
            format!("spec.subject: {subject_key} is not a Knative Service"),
        )));
    };
    bind_sink(
        &mut bound.spec.template,
        &sink,
        binding.spec.ce_overrides.as_ref(),
    );
    plan.bound_services.insert(
        subject_key,
        Loaded {
            origin: service.origin.clone(),
            resource: Resource::Service(bound),
        },
    );
    Ok(sink)
}

/// The ContainerSources and SinkBindings of the last apply, for `get`.
#[derive(Default)]
pub(crate) struct SinkViews {
    views: RwLock<Vec<SinkView>>,
    /// The bindings of Deployments the last apply planned.
    workloads: RwLock<BTreeMap<ObjectKey, WorkloadBinding>>,
    /// How the leader's last binding of each went: it replaces the planned
    /// (Unknown) status while the sink is the one it bound.
    bound: RwLock<BTreeMap<ObjectKey, Status>>,
}

impl SinkViews {
    pub(crate) fn set(
        &self,
        views: Vec<SinkView>,
        workloads: BTreeMap<ObjectKey, WorkloadBinding>,
    ) {
        *self.views.write().unwrap_or_else(|e| e.into_inner()) = views;
        let mut bound = self.bound.write().unwrap_or_else(|e| e.into_inner());
        bound.retain(|key, _| workloads.contains_key(key));
        *self.workloads.write().unwrap_or_else(|e| e.into_inner()) = workloads;
    }

    /// The binding of Deployments that the last apply planned for this
    /// SinkBinding, if its subject is a Deployment and its sink resolved.
    pub(crate) fn workload(&self, key: &ObjectKey) -> Option<WorkloadBinding> {
        self.workloads
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// The planned bindings of Deployments in `key`'s namespace that come
    /// before it by name.
    pub(crate) fn workloads_before(&self, key: &ObjectKey) -> Vec<WorkloadBinding> {
        self.workloads
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .range(ObjectKey::new(key.namespace.clone(), "")..key.clone())
            .map(|(_, binding)| binding.clone())
            .collect()
    }

    /// The planned bindings of Deployments in `namespace`.
    pub(crate) fn workloads_in(&self, namespace: &str) -> Vec<WorkloadBinding> {
        self.workloads
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|binding| binding.key.namespace == namespace)
            .cloned()
            .collect()
    }

    /// Records how binding the SinkBinding's Deployments went; its
    /// `sink_uri` says which sink it bound.
    pub(crate) fn set_bound(&self, key: ObjectKey, status: Status) {
        self.bound
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, status);
    }

    /// The views of `namespace` (every one when None), a running
    /// ContainerSource's with its daemon's live Ready condition.
    pub(crate) async fn list(
        &self,
        namespace: Option<&str>,
        serving: &ServingController,
    ) -> Vec<ObjectView> {
        let views: Vec<SinkView> = self
            .views
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|v| namespace.is_none_or(|ns| v.view.metadata.namespace == ns))
            .cloned()
            .collect();
        let bound = self.bound.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = Vec::with_capacity(views.len());
        for SinkView { mut view, daemon } in views {
            if view.kind == "SinkBinding"
                && let Some(status) = bound.get(&ObjectKey::new(
                    view.metadata.namespace.clone(),
                    view.metadata.name.clone(),
                ))
                && status.sink_uri == view.status.sink_uri
            {
                view.status = status.clone();
            }
            if let Some(key) = daemon
                && let Some(mut live) = serving.daemons().status(&key).await
            {
                live.sink_uri = view.status.sink_uri.take();
                view.status = live;
            }
            out.push(view);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::api::manifest::Manifests;

    fn load(yaml: &str) -> Manifests {
        Manifests::from_text(yaml, crate::api::broker::BrokerClass::Memory)
    }

    const OBJECTS: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: app, namespace: ns}
spec:
  template:
    spec:
      containers:
        - command: [sh, -c, "sleep 1000"]
---
apiVersion: sources.knative.dev/v1
kind: SinkBinding
metadata: {name: a-binding, namespace: ns}
spec:
  subject: {apiVersion: serving.knative.dev/v1, kind: Service, name: app}
  sink: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
  ceOverrides: {extensions: {sink: bound}}
---
apiVersion: sources.knative.dev/v1
kind: SinkBinding
metadata: {name: b-binding, namespace: ns}
spec:
  subject: {apiVersion: serving.knative.dev/v1, kind: Service, name: app}
  sink: {uri: "http://elsewhere/"}
---
apiVersion: sources.knative.dev/v1
kind: SinkBinding
metadata: {name: missing, namespace: ns}
spec:
  subject: {apiVersion: serving.knative.dev/v1, kind: Service, name: nope}
  sink: {uri: "http://elsewhere/"}
---
apiVersion: sources.knative.dev/v1
kind: ContainerSource
metadata: {name: beats, namespace: ns}
spec:
  template:
    spec:
      containers:
        - command: [sh, -c, "sleep 1000"]
  sink: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
---
apiVersion: sources.knative.dev/v1
kind: ContainerSource
metadata: {name: lost, namespace: ns}
spec:
  template:
    spec:
      containers:
        - command: [sh, -c, "sleep 1000"]
  sink: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: nope}}
"#;

    fn reason(plan: &SinkPlan, name: &str) -> (String, Option<String>) {
        let view = plan
            .views
            .iter()
            .find(|v| v.view.metadata.name == name)
            .expect("a view");
        let condition = view.view.status.ready_condition().expect("Ready");
        (
            condition
                .reason
                .clone()
                .unwrap_or_else(|| condition.status.clone()),
            condition.message.clone(),
        )
    }

    #[test]
    fn sinks_are_bound_into_services_and_container_sources() {
        let manifests = load(OBJECTS);
        assert!(manifests.errors.is_empty(), "{:?}", manifests.errors);
        let brokers: BTreeSet<ObjectKey> = [ObjectKey::new("ns", "default")].into();
        let services = |_: &ObjectKey| None;
        let addresses = Default::default();
        let destinations = Destinations {
            ingress_url: "http://127.0.0.1:8080",
            brokers: &brokers,
            services: &services,
            addresses: &addresses,
        };
        let loaded_services: Vec<&Loaded> = manifests
            .objects
            .iter()
            .filter(|l| matches!(l.resource, Resource::Service(_)))
            .collect();
        let plan = plan(&manifests.objects, &loaded_services, &destinations, false);

        let Some(Loaded {
            resource: Resource::Service(bound),
            ..
        }) = plan.bound_services.get(&ObjectKey::new("ns", "app"))
        else {
            panic!("the Service is bound");
        };
        let env: Vec<(&str, &str)> = bound.spec.template.spec.containers[0]
            .env
            .iter()
            .map(|v| (v.name.as_str(), v.value.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(
            env,
            [
                ("K_SINK", "http://127.0.0.1:8080/ns/default"),
                ("K_CE_OVERRIDES", r#"{"extensions":{"sink":"bound"}}"#)
            ]
        );
        assert_eq!(reason(&plan, "a-binding").0, "True");
        assert_eq!(reason(&plan, "b-binding").0, "SubjectAlreadyBound");
        let (why, message) = reason(&plan, "missing");
        assert_eq!(why, "SubjectMissing");
        assert_eq!(
            message.as_deref(),
            Some(
                "spec.subject: Service ns/nope does not exist: create it, or fix spec.subject.name"
            )
        );

        assert_eq!(plan.daemons.len(), 1);
        let daemon = &plan.daemons[0];
        assert_eq!(daemon.key, ObjectKey::new("ns", "beats"));
        assert_eq!(
            daemon.template.spec.containers[0].env[0].value.as_deref(),
            Some("http://127.0.0.1:8080/ns/default")
        );
        let (why, message) = reason(&plan, "lost");
        assert_eq!(why, "SinkNotFound");
        assert_eq!(
            message.as_deref(),
            Some("spec.sink: broker ns/nope does not exist")
        );
    }

    const WORKLOADS: &str = r#"
apiVersion: sources.knative.dev/v1
kind: SinkBinding
metadata: {name: deploy, namespace: ns}
spec:
  subject: {apiVersion: apps/v1, kind: Deployment, selector: {matchLabels: {app: x}}}
  sink: {uri: "http://sink.example/"}
  ceOverrides: {extensions: {sink: bound}}
---
apiVersion: sources.knative.dev/v1
kind: SinkBinding
metadata: {name: job, namespace: ns}
spec:
  subject: {apiVersion: batch/v1, kind: Job, name: once}
  sink: {uri: "http://sink.example/"}
"#;

    #[test]
    fn deployments_are_left_to_the_leader_in_kubernetes_mode_and_jobs_never_bound() {
        let manifests = load(WORKLOADS);
        assert!(manifests.errors.is_empty(), "{:?}", manifests.errors);
        let brokers = BTreeSet::new();
        let services = |_: &ObjectKey| None;
        let addresses = Default::default();
        let destinations = Destinations {
            ingress_url: "http://127.0.0.1:8080",
            brokers: &brokers,
            services: &services,
            addresses: &addresses,
        };
        let files = plan(&manifests.objects, &[], &destinations, false);
        assert!(files.workloads.is_empty());
        assert_eq!(reason(&files, "deploy").0, "SubjectKindUnsupported");
        assert_eq!(reason(&files, "job").0, "SubjectKindUnsupported");

        let cluster = plan(&manifests.objects, &[], &destinations, true);
        let key = ObjectKey::new("ns", "deploy");
        let planned = cluster.workloads.get(&key).expect("planned");
        assert_eq!(planned.sink, "http://sink.example/");
        assert_eq!(planned.overrides, r#"{"extensions":{"sink":"bound"}}"#);
        assert_eq!(reason(&cluster, "deploy").0, "Binding");
        let (why, message) = reason(&cluster, "job");
        assert_eq!(why, "SubjectNotBindable");
        assert!(message.is_some_and(|m| m.contains("mutating admission webhook")));
    }
}
