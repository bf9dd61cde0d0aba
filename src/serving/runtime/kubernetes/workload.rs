//! The objects a revision becomes: an apps/v1 Deployment whose pod template
//! is the Service's `spec.template` as the user wrote it, and a headless
//! core/v1 Service selecting its pods, for which the cluster's EndpointSlice
//! controller publishes the pods' addresses.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use serde_json::{Map, Value, json};

use crate::api::pod::{self, DEFAULT_PORT};
use crate::serving::runtime::{CannotRun, Workload, WorkloadKind};

/// Revision fields Knative reads itself; the rest of `spec.template.spec` is
/// a pod spec.
const REVISION_ONLY_FIELDS: [&str; 4] = [
    "containerConcurrency",
    "timeoutSeconds",
    "responseStartTimeoutSeconds",
    "idleTimeoutSeconds",
];

/// Variables Knative sets in every container; the user's entries of these
/// names go.
const RESERVED_ENV: [&str; 4] = ["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"];

/// What a workload's runtime creates, named and labelled.
#[derive(Debug, Clone)]
pub(super) struct Objects {
    pub namespace: String,
    /// The owning object's name: the Knative Service, or a daemon's
    /// ContainerSource.
    pub service_name: String,
    pub revision: String,
    /// The owning object's kind, which deleting deletes these objects.
    pub owner: Owner,
    /// `spec.replicas` is set when it is created.
    pub deployment: Deployment,
    /// The headless Service whose EndpointSlices publish a revision's pods;
    /// None for a daemon, which is never sent to.
    pub service: Option<Service>,
    /// A daemon's: the label selector of every version's Deployment, so
    /// that a leader deploying one version removes the others (a template
    /// changed while no replica ran the old one leaves it behind
    /// otherwise, still sending events). None for a revision, whose
    /// versions the revision history retires.
    pub versions: Option<String>,
}

/// The kind of the object that owns a workload's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Owner {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl Owner {
    const KNATIVE_SERVICE: Owner = Owner {
        group: "serving.knative.dev",
        version: "v1",
        kind: "Service",
        plural: "services",
    };
    const CONTAINER_SOURCE: Owner = Owner {
        group: "sources.knative.dev",
        version: "v1",
        kind: "ContainerSource",
        plural: "containersources",
    };

    pub(super) fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }
}

impl Objects {
    pub(super) fn deployment_name(&self) -> String {
        deployment_name(&self.revision)
    }

    pub(super) fn private_service_name(&self) -> String {
        private_service_name(&self.revision)
    }
}

pub(super) fn deployment_name(revision: &str) -> String {
    format!("{revision}-deployment")
}

pub(super) fn private_service_name(revision: &str) -> String {
    format!("{revision}-private")
}

/// The labels Knative users select revisions' pods by.
pub(super) fn labels(workload: &Workload) -> BTreeMap<String, String> {
    [
        (
            "serving.knative.dev/service",
            workload.service.name.as_str(),
        ),
        (
            "serving.knative.dev/configuration",
            workload.service.name.as_str(),
        ),
        ("serving.knative.dev/revision", workload.revision.as_str()),
        ("app", workload.revision.as_str()),
        ("app.kubernetes.io/managed-by", "pilotlight"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The labels of a daemon's pods: Knative's for a ContainerSource's, and
/// one that selects this version of its template.
fn daemon_labels(workload: &Workload) -> BTreeMap<String, String> {
    [
        (CONTAINER_SOURCE_LABEL, workload.service.name.as_str()),
        (DAEMON_LABEL, workload.revision.as_str()),
        ("app.kubernetes.io/managed-by", "pilotlight"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Selects the pods of one version of a daemon's template.
const DAEMON_LABEL: &str = "pilotlight.dev/daemon";
/// Knative's label of a ContainerSource's pods: every version's.
const CONTAINER_SOURCE_LABEL: &str = "sources.knative.dev/containerSource";

/// Builds the Deployment and Service, or says why the workload cannot run on
/// Kubernetes, naming the field as it is in the Knative Service.
pub(super) fn build(workload: &Workload) -> Result<Objects, CannotRun> {
    check_images(workload)?;
    match workload.kind {
        WorkloadKind::Revision => build_revision(workload),
        WorkloadKind::Daemon => build_daemon(workload),
    }
}

/// A daemon is a Deployment alone: it has no port, so no Service, and its
/// pod template is the user's with no probe added.
fn build_daemon(workload: &Workload) -> Result<Objects, CannotRun> {
    let labels = daemon_labels(workload);
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(&workload.revision),
            "namespace": workload.service.namespace,
            "labels": labels,
        },
        "spec": {
            "selector": {"matchLabels": {DAEMON_LABEL: workload.revision}},
            "template": pod_template(workload, None, &labels)?,
        },
    });
    Ok(Objects {
        namespace: workload.service.namespace.clone(),
        service_name: workload.service.name.clone(),
        revision: workload.revision.clone(),
        owner: Owner::CONTAINER_SOURCE,
        deployment: from_json(deployment)?,
        service: None,
        versions: Some(format!(
            "{CONTAINER_SOURCE_LABEL}={},app.kubernetes.io/managed-by=pilotlight",
            workload.service.name
        )),
    })
}

fn check_images(workload: &Workload) -> Result<(), CannotRun> {
    let containers = &workload.template.spec.containers;
    if let Some(i) = containers
        .iter()
        .position(|c| c.image.as_deref().is_none_or(str::is_empty))
    {
        return Err(CannotRun(format!(
            "spec.template.spec.containers[{i}].image is required: the Kubernetes runtime runs \
             container images (a command alone runs only with the process runtime)"
        )));
    }
    Ok(())
}

fn build_revision(workload: &Workload) -> Result<Objects, CannotRun> {
    let containers = &workload.template.spec.containers;
    let serving = pod::serving_index(containers);
    let port = containers
        .get(serving)
        .and_then(|c| c.ports.first())
        .map_or(DEFAULT_PORT, |p| p.container_port);
    let labels = labels(workload);
    let selector = json!({"serving.knative.dev/revision": workload.revision});
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(&workload.revision),
            "namespace": workload.service.namespace,
            "labels": labels,
        },
        "spec": {
            "selector": {"matchLabels": selector},
            "template": pod_template(workload, Some((serving, port)), &labels)?,
        },
    });
    let deployment: Deployment = from_json(deployment)?;
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": private_service_name(&workload.revision),
            "namespace": workload.service.namespace,
            "labels": labels,
        },
        "spec": {
            // pilotlight sends to the pods' addresses from the EndpointSlices;
            // nothing uses a virtual IP, so none is allocated.
            "clusterIP": "None",
            "selector": selector,
            "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    });
    Ok(Objects {
        namespace: workload.service.namespace.clone(),
        service_name: workload.service.name.clone(),
        revision: workload.revision.clone(),
        owner: Owner::KNATIVE_SERVICE,
        deployment,
        service: Some(from_json(service)?),
        versions: None,
    })
}

/// Checks the user's pod fields against the Kubernetes types; the path of a
/// Deployment's pod spec (`spec.template.spec`) is the Knative Service's too.
fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, CannotRun> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        CannotRun(format!(
            "{}: {} (as a Kubernetes pod spec)",
            e.path(),
            e.inner()
        ))
    })
}

/// The pod template: the user's, with our labels; `serving` is the serving
/// container and its port (None for a daemon, which serves nothing).
fn pod_template(
    workload: &Workload,
    serving: Option<(usize, u16)>,
    labels: &BTreeMap<String, String>,
) -> Result<Value, CannotRun> {
    let user = serde_json::to_value(&workload.template)
        .map_err(|e| CannotRun(format!("spec.template cannot be written as JSON: {e}")))?;
    // The user's labels and annotations, with ours winning.
    let mut pod_labels = user["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    pod_labels.extend(labels.iter().map(|(k, v)| (k.clone(), json!(v))));
    let mut metadata = json!({"labels": pod_labels});
    if let Some(annotations) = user["metadata"].get("annotations") {
        metadata["annotations"] = annotations.clone();
    }

    let mut spec = match &user["spec"] {
        Value::Object(spec) => spec.clone(),
        _ => {
            return Err(CannotRun(
                "spec.template.spec is missing from the revision's template".into(),
            ));
        }
    };
    for field in REVISION_ONLY_FIELDS {
        spec.remove(field);
    }
    // Knative's defaults: in-flight requests may take the revision's
    // timeout to finish, and no Docker-link variables for every Service.
    spec.insert(
        "terminationGracePeriodSeconds".into(),
        json!(workload.drain_timeout.as_secs()),
    );
    spec.entry("enableServiceLinks").or_insert(json!(false));
    let names = pod::container_names(&workload.template.spec.containers);
    let containers = spec
        .get_mut("containers")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| CannotRun("spec.template.spec.containers needs a container".into()))?;
    for (i, container) in containers.iter_mut().enumerate() {
        let Some(container) = container.as_object_mut() else {
            continue;
        };
        container.entry("name").or_insert(json!(names[i]));
        if let Some((index, port)) = serving
            && i == index
        {
            complete_container(container, workload, port);
        }
    }
    Ok(json!({"metadata": metadata, "spec": spec}))
}

/// Fills in what Knative gives the serving container: the port, `PORT` and
/// the `K_*` variables, and a readiness probe on the port.
fn complete_container(container: &mut Map<String, Value>, workload: &Workload, port: u16) {
    let ports = container.entry("ports").or_insert(json!([]));
    if ports.as_array().is_none_or(Vec::is_empty) {
        *ports = json!([{"containerPort": port, "protocol": "TCP"}]);
    }
    let mut env: Vec<Value> = container
        .remove("env")
        .and_then(|e| match e {
            Value::Array(env) => Some(env),
            _ => None,
        })
        .unwrap_or_default();
    env.retain(|var| {
        var["name"]
            .as_str()
            .is_none_or(|name| !RESERVED_ENV.contains(&name))
    });
    env.extend([
        json!({"name": "PORT", "value": port.to_string()}),
        json!({"name": "K_SERVICE", "value": workload.service.name}),
        json!({"name": "K_CONFIGURATION", "value": workload.service.name}),
        json!({"name": "K_REVISION", "value": workload.revision}),
    ]);
    container.insert("env".into(), Value::Array(env));
    match container.get_mut("readinessProbe") {
        Some(probe) if probe.is_object() => {
            // Kubernetes needs a port where Knative defaults to the container's.
            for action in ["httpGet", "tcpSocket"] {
                if let Some(action) = probe.get_mut(action).and_then(Value::as_object_mut) {
                    action.entry("port").or_insert(json!(port));
                }
            }
        }
        _ => {
            container.insert(
                "readinessProbe".into(),
                json!({"tcpSocket": {"port": port}}),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::ObjectKey;

    fn workload(template: Value) -> Workload {
        Workload {
            service: ObjectKey::new("shop", "cart"),
            revision: "cart-00002".into(),
            template: serde_json::from_value(template).expect("a template"),
            drain_timeout: Duration::from_secs(300),
            kind: WorkloadKind::Revision,
        }
    }

    fn pod(objects: &Objects) -> Value {
        serde_json::to_value(&objects.deployment).expect("serializes")["spec"]["template"].clone()
    }

    #[test]
    fn a_daemon_is_a_deployment_alone_with_no_port_and_no_probe() {
        let mut daemon = workload(json!({"spec": {"containers": [
            {"image": "heartbeats", "env": [{"name": "K_SINK", "value": "http://broker"}]}
        ]}}));
        daemon.kind = WorkloadKind::Daemon;
        daemon.revision = "beats-0a1b2c3d".into();
        let objects = build(&daemon).expect("builds");
        assert!(objects.service.is_none());
        assert_eq!(objects.owner, Owner::CONTAINER_SOURCE);
        assert_eq!(objects.deployment_name(), "beats-0a1b2c3d-deployment");
        let pod = pod(&objects);
        let container = &pod["spec"]["containers"][0];
        assert_eq!(
            container["env"],
            json!([{"name": "K_SINK", "value": "http://broker"}])
        );
        assert!(container.get("ports").is_none(), "{container}");
        assert!(container.get("readinessProbe").is_none(), "{container}");
        assert_eq!(
            pod["metadata"]["labels"][DAEMON_LABEL],
            json!("beats-0a1b2c3d")
        );
    }

    #[test]
    fn the_pod_is_the_users_template_with_knatives_additions() {
        let objects = build(&workload(json!({
            "metadata": {"labels": {"team": "a", "app": "mine"}, "annotations": {"note": "x"}},
            "spec": {
                "containerConcurrency": 10,
                "timeoutSeconds": 60,
                "serviceAccountName": "cart",
                "containers": [{
                    "image": "ghcr.io/shop/cart:1",
                    "env": [{"name": "PORT", "value": "1"},
                            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                    "readinessProbe": {"httpGet": {"path": "/ready"}},
                }],
            },
        })))
        .expect("builds");
        let pod = pod(&objects);
        assert_eq!(pod["metadata"]["labels"]["team"], "a");
        assert_eq!(pod["metadata"]["labels"]["app"], "cart-00002", "ours win");
        assert_eq!(pod["metadata"]["annotations"]["note"], "x");
        let spec = &pod["spec"];
        assert_eq!(spec["serviceAccountName"], "cart");
        assert!(spec.get("containerConcurrency").is_none(), "{spec}");
        assert_eq!(spec["terminationGracePeriodSeconds"], 300);
        let container = &spec["containers"][0];
        assert_eq!(container["name"], "user-container");
        assert_eq!(container["ports"][0]["containerPort"], 8080);
        assert_eq!(container["readinessProbe"]["httpGet"]["port"], 8080);
        let env: Vec<&str> = container["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|v| v["name"].as_str().expect("name"))
            .collect();
        assert_eq!(
            env,
            [
                "TOKEN",
                "PORT",
                "K_SERVICE",
                "K_CONFIGURATION",
                "K_REVISION"
            ]
        );
        assert_eq!(container["env"][1]["value"], "8080");
    }

    #[test]
    fn pod_fields_of_the_wrong_shape_name_their_field() {
        let error = build(&workload(json!({
            "spec": {"containers": [{"image": "cart"}], "affinity": {"nodeAffinity": "near"}},
        })))
        .expect_err("nodeAffinity is a map");
        assert!(
            error
                .0
                .starts_with("spec.template.spec.affinity.nodeAffinity"),
            "{error}"
        );
    }

    #[test]
    fn a_sidecar_keeps_its_own_env_and_the_serving_container_gets_knatives() {
        let objects = build(&workload(json!({
            "spec": {"containers": [
                {"image": "proxy", "env": [{"name": "MODE", "value": "side"}]},
                {"image": "app", "ports": [{"containerPort": 8881}]},
            ]},
        })))
        .expect("builds");
        let pod = pod(&objects);
        let containers = &pod["spec"]["containers"];
        assert_eq!(containers[0]["name"], "user-container-0");
        assert_eq!(containers[1]["name"], "user-container-1");
        assert_eq!(containers[0]["env"].as_array().map(Vec::len), Some(1));
        assert!(containers[0].get("readinessProbe").is_none());
        assert_eq!(containers[1]["readinessProbe"]["tcpSocket"]["port"], 8881);
        let service = serde_json::to_value(&objects.service).expect("serializes");
        assert_eq!(service["spec"]["ports"][0]["port"], 8881);
    }
}
