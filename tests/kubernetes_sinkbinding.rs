//! SinkBindings of Deployments in Kubernetes mode, against the fake API
//! server (tests/support/apiserver.rs): the leader patches `K_SINK` and
//! `K_CE_OVERRIDES` into every container of the subjects' pod templates,
//! again when the sink changes, and out again when the binding goes.

mod support;

use std::path::Path;
use std::time::Duration;

use pilotlight::server::Server;
use serde_json::{Value, json};
use support::apiserver::FakeApiServer;

/// Generous: the machine is shared, and a slow pass beats a flaky one.
const PATIENCE: Duration = Duration::from_secs(20);
const SOURCES: &str = "sources.knative.dev/v1";
const INGRESS: &str = "http://pilotlight-ingress.pilotlight.svc.cluster.local";

async fn replica(fake: &FakeApiServer, dir: &Path, identity: &str) -> Server {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = fake.replica_config(dir, identity);
    config.default_class = pilotlight::api::broker::BrokerClass::Memory;
    config.ingress_url = Some(INGRESS.into());
    Server::start(config).await.expect("pilotlight starts")
}

/// A Deployment with an init container and two containers, one with a
/// variable of its own.
fn deployment(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"deployment": name}},
            "template": {
                "metadata": {"labels": {"deployment": name}},
                "spec": {
                    "initContainers": [{"name": "init", "image": "busybox"}],
                    "containers": [
                        {"name": "app", "image": "heartbeats",
                         "env": [{"name": "OTHER", "value": "kept"}]},
                        {"name": "side", "image": "proxy"},
                    ],
                },
            },
        },
    })
}

fn binding(name: &str, subject: Value, sink: Value) -> Value {
    json!({
        "apiVersion": SOURCES, "kind": "SinkBinding",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "subject": subject,
            "sink": sink,
            "ceOverrides": {"extensions": {"sink": "bound"}},
        },
    })
}

fn broker(name: &str) -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {},
    })
}

const OVERRIDES: &str = r#"{"extensions":{"sink":"bound"}}"#;

/// Each container's env of the Deployment, as (container, [(name, value)]).
fn env(fake: &FakeApiServer, name: &str) -> Vec<(String, Vec<(String, String)>)> {
    let Some(deployment) = fake.get("apps/v1", "Deployment", "default", name) else {
        return Vec::new();
    };
    let spec = &deployment["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| spec[list].as_array().cloned().unwrap_or_default())
        .map(|container| {
            let vars = container["env"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap_or_default().to_owned(),
                        v["value"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            (
                container["name"].as_str().unwrap_or_default().to_owned(),
                vars,
            )
        })
        .collect()
}

/// The env every container should have once bound to `sink`.
fn bound_env(sink: &str) -> Vec<(String, Vec<(String, String)>)> {
    let vars = |own: &[(&str, &str)]| {
        own.iter()
            .copied()
            .chain([("K_SINK", sink), ("K_CE_OVERRIDES", OVERRIDES)])
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    };
    vec![
        ("init".to_owned(), vars(&[])),
        ("app".to_owned(), vars(&[("OTHER", "kept")])),
        ("side".to_owned(), vars(&[])),
    ]
}

fn unbound_env() -> Vec<(String, Vec<(String, String)>)> {
    vec![
        ("init".to_owned(), vec![]),
        (
            "app".to_owned(),
            vec![("OTHER".to_owned(), "kept".to_owned())],
        ),
        ("side".to_owned(), vec![]),
    ]
}

async fn wait_env(fake: &FakeApiServer, name: &str, want: Vec<(String, Vec<(String, String)>)>) {
    fake.wait_for(
        &format!("Deployment {name}'s env {want:?}"),
        PATIENCE,
        |fake| (env(fake, name) == want).then_some(()),
    )
    .await;
}

/// Waits until the SinkBinding's Ready condition has this reason (`True`
/// for ready) for its current generation; returns the object.
async fn wait_binding(fake: &FakeApiServer, name: &str, reason: &str) -> Value {
    fake.wait_for(
        &format!("SinkBinding {name} Ready {reason}"),
        PATIENCE,
        |fake| {
            let object = fake.get(SOURCES, "SinkBinding", "default", name)?;
            if object["status"]["observedGeneration"] != object["metadata"]["generation"] {
                return None;
            }
            let ready = object["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?;
            let got = ready["reason"].as_str().or(ready["status"].as_str())?;
            (got == reason).then_some(object.clone())
        },
    )
    .await
}

fn ready_message(object: &Value) -> String {
    object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_deployment_by_name_is_bound_rebound_on_a_sink_change_and_unbound_on_delete() {
    let fake = FakeApiServer::start().await;
    fake.create(broker("default"));
    fake.create(deployment("heartbeat", json!({})));
    fake.create(binding(
        "bind",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "heartbeat"}),
        json!({"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}}),
    ));
    let dir = tempfile::tempdir().expect("dir");
    let server = replica(&fake, dir.path(), "one").await;

    let sink = format!("{INGRESS}/default/default");
    let ready = wait_binding(&fake, "bind", "True").await;
    assert_eq!(ready["status"]["sinkUri"], sink.as_str());
    wait_env(&fake, "heartbeat", bound_env(&sink)).await;
    let patches: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/deployments/heartbeat"))
        .collect();
    assert!(
        patches
            .iter()
            .all(|r| r.content_type.as_deref() == Some("application/strategic-merge-patch+json")),
        "{patches:?}"
    );

    // A new sink: the variable is rewritten, nothing else changes.
    let mut changed = fake
        .get(SOURCES, "SinkBinding", "default", "bind")
        .expect("the binding");
    changed["spec"]["sink"] = json!({"uri": "http://elsewhere.example/"});
    fake.put(changed);
    wait_env(&fake, "heartbeat", bound_env("http://elsewhere.example/")).await;
    let ready = wait_binding(&fake, "bind", "True").await;
    assert_eq!(ready["status"]["sinkUri"], "http://elsewhere.example/");

    // Deleted: the variables go, then the binding.
    assert!(fake.delete(SOURCES, "SinkBinding", "default", "bind"));
    fake.wait_for("the binding to be deleted", PATIENCE, |fake| {
        fake.get(SOURCES, "SinkBinding", "default", "bind")
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(env(&fake, "heartbeat"), unbound_env());
    server.shutdown().await;
}

#[tokio::test]
async fn deployments_by_selector_are_bound_also_those_created_later() {
    let fake = FakeApiServer::start().await;
    fake.create(deployment("a", json!({"app": "heartbeat", "tier": "edge"})));
    fake.create(deployment("other", json!({"app": "web"})));
    fake.create(binding(
        "bind",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "selector": {
            "matchLabels": {"app": "heartbeat"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["edge", "core"]}],
        }}),
        json!({"uri": "http://sink.example/"}),
    ));
    let dir = tempfile::tempdir().expect("dir");
    let server = replica(&fake, dir.path(), "one").await;

    wait_binding(&fake, "bind", "True").await;
    wait_env(&fake, "a", bound_env("http://sink.example/")).await;
    assert_eq!(env(&fake, "other"), unbound_env());

    // A Deployment that matches later is bound as it appears.
    fake.create(deployment("b", json!({"app": "heartbeat", "tier": "core"})));
    wait_env(&fake, "b", bound_env("http://sink.example/")).await;
    assert_eq!(env(&fake, "other"), unbound_env());

    // A second binding of `b` yields to the first by name, rather than
    // rewriting K_SINK in turn with it; deleting it leaves `b` bound.
    fake.create(binding(
        "later",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "b"}),
        json!({"uri": "http://later.example/"}),
    ));
    let later = wait_binding(&fake, "later", "SubjectAlreadyBound").await;
    assert_eq!(
        ready_message(&later),
        "spec.subject: Deployment default/b is bound by SinkBinding default/bind, which comes first by name; a pod has one K_SINK"
    );
    assert_eq!(env(&fake, "b"), bound_env("http://sink.example/"));
    assert!(fake.delete(SOURCES, "SinkBinding", "default", "later"));
    fake.wait_for("the later binding to be deleted", PATIENCE, |fake| {
        fake.get(SOURCES, "SinkBinding", "default", "later")
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(env(&fake, "b"), bound_env("http://sink.example/"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_missing_subject_or_a_job_is_not_ready_and_says_why() {
    let fake = FakeApiServer::start().await;
    let sink = json!({"uri": "http://sink.example/"});
    fake.create(binding(
        "by-name",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "nope"}),
        sink.clone(),
    ));
    fake.create(binding(
        "by-selector",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "selector": {"matchLabels": {"app": "nope"}}}),
        sink.clone(),
    ));
    fake.create(binding(
        "job",
        json!({"apiVersion": "batch/v1", "kind": "Job", "name": "once"}),
        sink,
    ));
    let dir = tempfile::tempdir().expect("dir");
    let server = replica(&fake, dir.path(), "one").await;

    let by_name = wait_binding(&fake, "by-name", "SubjectMissing").await;
    assert_eq!(
        ready_message(&by_name),
        "spec.subject: Deployment default/nope does not exist: create it, or fix spec.subject.name"
    );
    let by_selector = wait_binding(&fake, "by-selector", "SubjectMissing").await;
    assert_eq!(
        ready_message(&by_selector),
        "spec.subject: no Deployment in namespace default matches the selector 'app=nope': create one, or fix spec.subject.selector"
    );
    let job = wait_binding(&fake, "job", "SubjectNotBindable").await;
    let message = ready_message(&job);
    assert!(
        message.contains("cannot bind Jobs") && message.contains("webhook"),
        "{message}"
    );

    // The subject appears: bound.
    fake.create(deployment("nope", json!({})));
    wait_binding(&fake, "by-name", "True").await;
    wait_env(&fake, "nope", bound_env("http://sink.example/")).await;
    server.shutdown().await;
}

#[tokio::test]
async fn with_two_replicas_only_the_leader_binds() {
    let fake = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let leader = replica(&fake, dir.path(), "leader").await;
    fake.wait_for("the first replica to lead", PATIENCE, |fake| {
        fake.lease_holder().filter(|h| h.starts_with("leader"))
    })
    .await;
    let follower = replica(&fake, dir.path(), "follower").await;

    fake.create(deployment("heartbeat", json!({})));
    fake.create(binding(
        "bind",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "heartbeat"}),
        json!({"uri": "http://sink.example/"}),
    ));
    wait_binding(&fake, "bind", "True").await;
    wait_env(&fake, "heartbeat", bound_env("http://sink.example/")).await;
    let mut changed = fake
        .get(SOURCES, "SinkBinding", "default", "bind")
        .expect("the binding");
    changed["spec"]["sink"] = json!({"uri": "http://elsewhere.example/"});
    fake.put(changed);
    wait_env(&fake, "heartbeat", bound_env("http://elsewhere.example/")).await;
    wait_binding(&fake, "bind", "True").await;

    let requests = fake.requests();
    let follower_reads = requests
        .iter()
        .filter(|r| r.user.as_deref() == Some("follower"))
        .filter(|r| r.path.contains("/deployments"))
        .count();
    assert!(follower_reads > 0, "the follower watches Deployments too");
    let follower_writes: Vec<_> = requests
        .iter()
        .filter(|r| r.user.as_deref() == Some("follower"))
        .filter(|r| r.method != "GET")
        .filter(|r| r.path.contains("/deployments") || r.path.contains("/sinkbindings"))
        .collect();
    assert!(follower_writes.is_empty(), "{follower_writes:?}");
    let leader_patches = requests
        .iter()
        .filter(|r| r.user.as_deref() == Some("leader"))
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/deployments/heartbeat"))
        .count();
    assert_eq!(leader_patches, 2, "one patch per sink");
    follower.shutdown().await;
    leader.shutdown().await;
}
