//! SinkBindings of Deployments, as Knative's `psbinding` reconciler does
//! them: the leader finds the subjects in the binding's namespace (the
//! Deployment named, or every one the selector matches) and sets `K_SINK`
//! and `K_CE_OVERRIDES` in every container and init container of their pod
//! templates; when the binding goes, it removes them again ("unbind").
//! Patching the template rolls the Deployment's pods, as in Knative.
//!
//! The write is a strategic-merge patch of `spec.template.spec.containers`
//! (and `initContainers`), merged by container name and, inside each, of
//! `env` merged by variable name: it names only the two variables, so the
//! rest of the Deployment (other variables, `spec.replicas` that a
//! HorizontalPodAutoscaler or `kubectl scale` sets meanwhile, fields this
//! build's API types do not know) is never read back and rewritten, and no
//! resourceVersion conflict can make it fail. Unbinding deletes the two
//! entries with the `$patch: delete` directive. A JSON merge patch cannot
//! do either: it replaces whole lists.
//!
//! Jobs are not bound (see `control::sinks`): their pod template is
//! immutable, and Knative binds them as they are created, through an
//! admission webhook pilotlight does not have.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, Selector, SelectorExt as _};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::{Map, Value, json};

use super::kinds::WatchedKind;
use crate::api::ObjectKey;
use crate::api::sources::sinkbinding::{SinkBindingSpec, Subject, SubjectKind};
use crate::api::sources::{K_CE_OVERRIDES, K_SINK};
use crate::api::status::Status;
use crate::control::sinks::WorkloadBinding;

/// Why binding or unbinding a SinkBinding's Deployments failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum BindError {
    #[error("SinkBinding {binding}: spec.subject.selector: {source}")]
    Selector {
        binding: ObjectKey,
        source: kube::core::ParseExpressionError,
    },
    #[error("SinkBinding {binding}: cannot read the Deployments of spec.subject: {source}")]
    Read {
        binding: ObjectKey,
        source: kube::Error,
    },
    #[error(
        "SinkBinding {binding}: cannot patch the env of Deployment {deployment} (spec.template.spec.containers): {source}"
    )]
    Patch {
        binding: ObjectKey,
        deployment: ObjectKey,
        source: kube::Error,
    },
}

/// Whether `kind` is SinkBinding, whose reconcile binds.
pub(super) fn is_sink_binding(kind: &WatchedKind) -> bool {
    kind.resource.group == "sources.knative.dev" && kind.resource.kind == "SinkBinding"
}

/// Reconciles every SinkBinding of a namespace when a Deployment there
/// changes: a new Deployment that the selector matches gets bound, and one
/// whose template lost the variables gets them back.
pub(super) fn watch_subjects(
    controller: Controller<DynamicObject>,
    client: kube::Client,
    bindings: ApiResource,
) -> Controller<DynamicObject> {
    let store = controller.store();
    controller.watches(
        Api::<Deployment>::all(client),
        watcher::Config::default(),
        move |deployment: Deployment| {
            let namespace = deployment.metadata.namespace;
            store
                .state()
                .into_iter()
                .filter(|binding| binding.metadata.namespace == namespace)
                .map(|binding| ObjectRef::from_obj_with(binding.as_ref(), bindings.clone()))
                .collect::<Vec<_>>()
        },
    )
}

/// Binds the planned sink into every Deployment the subject matches, and
/// says how that went, as the SinkBinding's status. `earlier` are the
/// other bindings of Deployments in its namespace that come first by name:
/// a Deployment one of them matches is theirs (a pod has one `K_SINK`, and
/// two bindings would otherwise rewrite it in turn, rolling the pods each
/// time), as for Knative Services.
pub(super) async fn bind(
    client: &kube::Client,
    binding: &WorkloadBinding,
    earlier: &[WorkloadBinding],
) -> Status {
    let mut status = match bind_all(client, binding, earlier).await {
        Ok(Bound::All(0)) => Status::not_ready("SubjectMissing", missing(binding)),
        Ok(Bound::All(_)) => Status::ready(),
        Ok(Bound::Taken { deployment, by }) => Status::not_ready(
            "SubjectAlreadyBound",
            format!(
                "spec.subject: Deployment {deployment} is bound by SinkBinding {by}, which comes first by name; a pod has one K_SINK"
            ),
        ),
        Err(error) => Status::not_ready("SubjectNotBound", error.to_string()),
    };
    status.sink_uri = Some(binding.sink.clone());
    status
}

/// What [`bind_all`] did.
enum Bound {
    /// Every subject is bound; how many there are.
    All(usize),
    /// This Deployment is an earlier binding's (the others are bound).
    Taken {
        deployment: ObjectKey,
        by: ObjectKey,
    },
}

/// Patches the subjects that lack the variables.
async fn bind_all(
    client: &kube::Client,
    binding: &WorkloadBinding,
    earlier: &[WorkloadBinding],
) -> Result<Bound, BindError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &binding.key.namespace);
    let deployments = subjects(&api, &binding.key, &binding.subject).await?;
    let mut taken = None;
    for deployment in &deployments {
        let name = deployment.metadata.name.clone().unwrap_or_default();
        if let Some(other) = earlier.iter().find(|o| matches(&o.subject, deployment)) {
            taken.get_or_insert(Bound::Taken {
                deployment: ObjectKey::new(binding.key.namespace.clone(), name),
                by: other.key.clone(),
            });
            continue;
        }
        let Some(pod) = pod_spec(deployment) else {
            continue;
        };
        if is_bound(pod, &binding.sink, &binding.overrides) {
            continue;
        }
        let patch = bind_patch(pod, &binding.sink, &binding.overrides);
        patch_deployment(&api, &binding.key, &name, patch).await?;
        tracing::info!(binding = %binding.key, deployment = %name, sink = %binding.sink, "bound the sink into the Deployment's pod template");
    }
    Ok(taken.unwrap_or(Bound::All(deployments.len())))
}

/// Whether the subject names or selects this Deployment.
fn matches(subject: &Subject, deployment: &Deployment) -> bool {
    match (&subject.name, &subject.selector) {
        (Some(name), _) => deployment.metadata.name.as_ref() == Some(name),
        (None, selector) => {
            Selector::try_from(selector.clone().unwrap_or_default()).is_ok_and(|s| {
                s.matches(
                    deployment
                        .metadata
                        .labels
                        .as_ref()
                        .unwrap_or(&Default::default()),
                )
            })
        }
    }
}

/// Removes `K_SINK` and `K_CE_OVERRIDES` from the Deployments that the
/// SinkBinding being deleted matches, as Knative's unbind does; but from
/// none that one of `others` (the bindings still planned) matches: the
/// variables are that one's.
pub(super) async fn unbind(
    client: &kube::Client,
    object: &DynamicObject,
    others: &[WorkloadBinding],
) -> Result<(), BindError> {
    let key = super::desired::object_key(object);
    let spec = object
        .data
        .get("spec")
        .cloned()
        .and_then(|spec| serde_json::from_value::<SinkBindingSpec>(spec).ok());
    // A spec the loader refused was never bound.
    let Some(spec) = spec else {
        return Ok(());
    };
    if spec.subject.subject_kind() != Some(SubjectKind::Deployment) {
        return Ok(());
    }
    let api: Api<Deployment> = Api::namespaced(client.clone(), &key.namespace);
    for deployment in subjects(&api, &key, &spec.subject).await? {
        if others.iter().any(|o| matches(&o.subject, &deployment)) {
            continue;
        }
        let Some(patch) = pod_spec(&deployment).and_then(unbind_patch) else {
            continue;
        };
        let name = deployment.metadata.name.clone().unwrap_or_default();
        patch_deployment(&api, &key, &name, patch).await?;
        tracing::info!(binding = %key, deployment = %name, "unbound the sink from the Deployment's pod template");
    }
    Ok(())
}

/// The Deployments the subject names, in the binding's namespace: the one
/// named (none if it does not exist) or those the selector matches; none
/// being deleted.
async fn subjects(
    api: &Api<Deployment>,
    binding: &ObjectKey,
    subject: &Subject,
) -> Result<Vec<Deployment>, BindError> {
    let read = |source| BindError::Read {
        binding: binding.clone(),
        source,
    };
    let found = match (&subject.name, &subject.selector) {
        (Some(name), _) => api.get_opt(name).await.map_err(read)?.into_iter().collect(),
        (None, selector) => {
            let selector =
                Selector::try_from(selector.clone().unwrap_or_default()).map_err(|source| {
                    BindError::Selector {
                        binding: binding.clone(),
                        source,
                    }
                })?;
            let listed = api
                .list(&ListParams::default().labels_from(&selector))
                .await
                .map_err(read)?;
            listed
                .items
                .into_iter()
                .filter(|d| {
                    selector.matches(d.metadata.labels.as_ref().unwrap_or(&Default::default()))
                })
                .collect::<Vec<_>>()
        }
    };
    Ok(found
        .into_iter()
        .filter(|d: &Deployment| d.metadata.deletion_timestamp.is_none())
        .collect())
}

/// The message of a binding whose subject matches nothing.
fn missing(binding: &WorkloadBinding) -> String {
    let namespace = &binding.key.namespace;
    match (&binding.subject.name, &binding.subject.selector) {
        (Some(name), _) => format!(
            "spec.subject: Deployment {namespace}/{name} does not exist: create it, or fix spec.subject.name"
        ),
        (None, selector) => {
            let selector = Selector::try_from(selector.clone().unwrap_or_default())
                .map(|s| s.to_string())
                .unwrap_or_default();
            format!(
                "spec.subject: no Deployment in namespace {namespace} matches the selector '{selector}': create one, or fix spec.subject.selector"
            )
        }
    }
}

fn pod_spec(deployment: &Deployment) -> Option<&PodSpec> {
    deployment.spec.template.spec.as_ref()
}

/// Every container and init container of `pod`.
fn containers(pod: &PodSpec) -> impl Iterator<Item = &Container> {
    pod.containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
}

/// Whether every container has both variables with these values.
fn is_bound(pod: &PodSpec, sink: &str, overrides: &str) -> bool {
    containers(pod).all(|container| {
        let has = |name: &str, value: &str| {
            container.env.iter().flatten().any(|var| {
                var.name == name && var.value.as_deref() == Some(value) && var.value_from.is_none()
            })
        };
        has(K_SINK, sink) && has(K_CE_OVERRIDES, overrides)
    })
}

/// The strategic-merge patch that sets both variables in every container
/// (see the module comment); `valueFrom: null` drops a `valueFrom` that
/// would conflict with the value.
fn bind_patch(pod: &PodSpec, sink: &str, overrides: &str) -> Value {
    let env = json!([
        {"name": K_SINK, "value": sink, "valueFrom": null},
        {"name": K_CE_OVERRIDES, "value": overrides, "valueFrom": null},
    ]);
    let entries = |list: &[Container]| -> Value {
        list.iter()
            .map(|c| json!({"name": c.name, "env": env}))
            .collect()
    };
    let mut spec = Map::new();
    spec.insert("containers".into(), entries(&pod.containers));
    if let Some(init) = pod.init_containers.as_deref().filter(|i| !i.is_empty()) {
        spec.insert("initContainers".into(), entries(init));
    }
    json!({"spec": {"template": {"spec": spec}}})
}

/// The strategic-merge patch that deletes both variables from the
/// containers that have either; None when none has.
fn unbind_patch(pod: &PodSpec) -> Option<Value> {
    let bound = |c: &&Container| {
        c.env
            .iter()
            .flatten()
            .any(|v| v.name == K_SINK || v.name == K_CE_OVERRIDES)
    };
    let entries = |list: &[Container]| -> Vec<Value> {
        list.iter()
            .filter(bound)
            .map(|c| {
                json!({"name": c.name, "env": [
                    {"name": K_SINK, "$patch": "delete"},
                    {"name": K_CE_OVERRIDES, "$patch": "delete"},
                ]})
            })
            .collect()
    };
    let mut spec = Map::new();
    let containers = entries(&pod.containers);
    if !containers.is_empty() {
        spec.insert("containers".into(), containers.into());
    }
    let init = entries(pod.init_containers.as_deref().unwrap_or_default());
    if !init.is_empty() {
        spec.insert("initContainers".into(), init.into());
    }
    (!spec.is_empty()).then(|| json!({"spec": {"template": {"spec": spec}}}))
}

async fn patch_deployment(
    api: &Api<Deployment>,
    binding: &ObjectKey,
    name: &str,
    patch: Value,
) -> Result<(), BindError> {
    api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map(|_| ())
        .map_err(|source| BindError::Patch {
            binding: binding.clone(),
            deployment: ObjectKey::new(binding.namespace.clone(), name),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: Value) -> PodSpec {
        serde_json::from_value(value).expect("a pod spec")
    }

    #[test]
    fn the_patches_name_every_container_and_only_the_two_variables() {
        let spec = pod(json!({
            "initContainers": [{"name": "init"}],
            "containers": [
                {"name": "app", "env": [{"name": "OTHER", "value": "1"}]},
                {"name": "side"},
            ],
        }));
        assert!(!is_bound(&spec, "http://sink", ""));
        let patch = bind_patch(&spec, "http://sink", "");
        let names: Vec<&str> = patch["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["app", "side"]);
        assert_eq!(
            patch["spec"]["template"]["spec"]["initContainers"][0]["env"][0],
            json!({"name": "K_SINK", "value": "http://sink", "valueFrom": null})
        );
        // Nothing bound yet: nothing to unbind.
        assert_eq!(unbind_patch(&spec), None);

        let bound = pod(json!({
            "containers": [
                {"name": "app", "env": [
                    {"name": "OTHER", "value": "1"},
                    {"name": "K_SINK", "value": "http://sink"},
                    {"name": "K_CE_OVERRIDES", "value": ""},
                ]},
                {"name": "side"},
            ],
        }));
        assert!(!is_bound(&bound, "http://sink", ""), "side is not bound");
        let unbind = unbind_patch(&bound).expect("app is bound");
        assert_eq!(
            unbind,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "env": [
                {"name": "K_SINK", "$patch": "delete"},
                {"name": "K_CE_OVERRIDES", "$patch": "delete"},
            ]}]}}}})
        );
    }
}
