//! Giving apps a sink: ContainerSources and SinkBindings. Both resolve a
//! sink and hand it to a pod as `K_SINK` (and `spec.ceOverrides` as
//! `K_CE_OVERRIDES`), so both are planned here, above the two halves:
//! sinks resolve to brokers (eventing) and Services (serving), and the pods
//! run on serving's runtimes.
//!
//! - A SinkBinding whose subject is a Knative Service changes the Service's
//!   revision template before serving sees it: the variables are part of
//!   the template, so a changed sink rolls a new revision, as in Knative.
//! - A ContainerSource becomes a daemon of the serving half
//!   (`serving::daemon`), its template carrying the variables.
//!
//! [`plan`] is a plain function of the loaded objects; the control plane
//! carries it out and keeps the views for `get` ([`SinkViews`]).

use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::api::manifest::Loaded;
use crate::api::sources::bind_sink;
use crate::api::sources::container::ContainerSource;
use crate::api::sources::sinkbinding::{SinkBinding, SubjectKind};
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
    pub views: Vec<SinkView>,
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
/// are the loaded Knative Services, which bindings may bind.
pub(crate) fn plan(
    objects: &[Loaded],
    services: &[&Loaded],
    destinations: &Destinations<'_>,
) -> SinkPlan {
    let mut plan = SinkPlan::default();
    for loaded in objects {
        match &loaded.resource {
            Resource::ContainerSource(source) => {
                plan_source(&mut plan, loaded, source, destinations)
            }
            Resource::SinkBinding(binding) => {
                plan_binding(&mut plan, loaded, binding, services, destinations);
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
) {
    let status = match bind(plan, binding, services, destinations) {
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
    let kind = subject.subject_kind();
    if kind != Some(SubjectKind::KnativeService) {
        let kind = kind.map(SubjectKind::describe).unwrap_or_default();
        return Err(Box::new(Status::not_ready(
            "SubjectKindUnsupported",
            format!(
                "spec.subject: pilotlight binds Knative Services (serving.knative.dev/v1) so far, not {kind}; run the program as a Knative Service or a ContainerSource"
            ),
        )));
    }
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
}

impl SinkViews {
    pub(crate) fn set(&self, views: Vec<SinkView>) {
        *self.views.write().unwrap_or_else(|e| e.into_inner()) = views;
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
        let mut out = Vec::with_capacity(views.len());
        for SinkView { mut view, daemon } in views {
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
        let plan = plan(&manifests.objects, &loaded_services, &destinations);

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
}
