//! The Kubernetes runtime against the fake API server (tests/support/apiserver.rs)
//! over HTTP, and the fake's own semantics as kube's clients rely on them.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http::{Method, StatusCode};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{finalizer, watcher};
use pilotlight::api::ObjectKey;
use pilotlight::api::service::Service;
use pilotlight::serving::runtime::kubernetes::KubernetesRuntime;
use pilotlight::serving::runtime::{self, Runtime, Workload, WorkloadKind};
use serde_json::{Value, json};
use support::apiserver::FakeApiServer;
use support::{Subscriber, request};
use tokio::sync::watch;

/// Generous: the machine is shared, and a slow pass beats a flaky one.
const PATIENCE: Duration = Duration::from_secs(20);

fn configmap(name: &str, data: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": data,
    }))
    .expect("a configmap")
}

fn api_status(error: kube::Error) -> (u16, String) {
    match error {
        kube::Error::Api(status) => (status.code, status.reason),
        other => panic!("expected a Status from the fake, got {other:?}"),
    }
}

#[tokio::test]
async fn fake_answers_conflicts_as_the_api_server_does() {
    let fake = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(fake.client());
    let created = api
        .create(
            &PostParams::default(),
            &configmap("settings", json!({"a": "1"})),
        )
        .await
        .expect("create");
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some());

    let again = api
        .create(&PostParams::default(), &configmap("settings", json!({})))
        .await
        .expect_err("the name is taken");
    assert_eq!(api_status(again), (409, "AlreadyExists".into()));

    let mut first = created.clone();
    first.data = Some([("a".to_owned(), "2".to_owned())].into());
    let replaced = api
        .replace("settings", &PostParams::default(), &first)
        .await
        .expect("replace with the current resourceVersion");
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(replaced.metadata.generation, Some(2));
    let stale = api
        .replace("settings", &PostParams::default(), &created)
        .await
        .expect_err("a stale resourceVersion");
    assert_eq!(api_status(stale), (409, "Conflict".into()));

    fake.conflict_next(1);
    let merge = Patch::Merge(json!({"data": {"b": "3"}}));
    let injected = api
        .patch("settings", &PatchParams::default(), &merge)
        .await
        .expect_err("the injected conflict");
    assert_eq!(api_status(injected), (409, "Conflict".into()));
    let patched = api
        .patch("settings", &PatchParams::default(), &merge)
        .await
        .expect("the retry succeeds");
    let data = patched.data.expect("data");
    assert_eq!((data["a"].as_str(), data["b"].as_str()), ("2", "3"));
}

#[tokio::test]
async fn fake_keeps_status_behind_its_subresource() {
    let fake = FakeApiServer::start().await;
    let api: Api<Deployment> = Api::default_namespaced(fake.client());
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "web"}]}}},
        "status": {"replicas": 7},
    }))
    .expect("a deployment");
    let created = api
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create");
    assert!(created.status.is_none(), "create ignores status");

    let patch = Patch::Merge(json!({"spec": {"replicas": 3}, "status": {"replicas": 9}}));
    let scaled = api
        .patch("web", &PatchParams::default(), &patch)
        .await
        .expect("patch");
    assert_eq!(scaled.spec.replicas, Some(3));
    assert!(scaled.status.is_none(), "the main resource ignores status");
    assert_eq!(scaled.metadata.generation, Some(2));

    let status = Patch::Merge(json!({"spec": {"replicas": 5}, "status": {"readyReplicas": 2}}));
    let reported = api
        .patch_status("web", &PatchParams::default(), &status)
        .await
        .expect("patch status");
    assert_eq!(reported.spec.replicas, Some(3));
    assert_eq!(reported.status.and_then(|s| s.ready_replicas), Some(2));
    assert_eq!(reported.metadata.generation, Some(2), "status is not spec");

    let unchanged = api
        .patch_status("web", &PatchParams::default(), &status)
        .await
        .expect("the same status again");
    assert_eq!(
        unchanged.metadata.resource_version, reported.metadata.resource_version,
        "a write that changes nothing is no change"
    );
    let writes: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| (r.path, r.content_type))
        .collect();
    let merge = Some("application/merge-patch+json".to_owned());
    assert_eq!(
        writes,
        vec![
            (
                "/apis/apps/v1/namespaces/default/deployments/web".to_owned(),
                merge.clone()
            ),
            (
                "/apis/apps/v1/namespaces/default/deployments/web/status".to_owned(),
                merge.clone()
            ),
            (
                "/apis/apps/v1/namespaces/default/deployments/web/status".to_owned(),
                merge
            ),
        ]
    );
}

#[tokio::test]
async fn kubes_watcher_relists_after_410_gone() {
    let fake = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(fake.client());
    api.create(&PostParams::default(), &configmap("before", json!({})))
        .await
        .expect("create");
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let summary = match event {
                Ok(watcher::Event::Init) => "init".to_owned(),
                Ok(watcher::Event::InitApply(cm)) => {
                    format!("listed {}", cm.metadata.name.unwrap_or_default())
                }
                Ok(watcher::Event::InitDone) => "listed".to_owned(),
                Ok(watcher::Event::Apply(cm)) => {
                    format!("applied {}", cm.metadata.name.unwrap_or_default())
                }
                Ok(watcher::Event::Delete(cm)) => {
                    format!("deleted {}", cm.metadata.name.unwrap_or_default())
                }
                Err(e) => format!("error {e}"),
            };
            if seen_tx.send(summary).is_err() {
                return;
            }
        }
    });
    let mut next = async || {
        tokio::time::timeout(PATIENCE, seen.recv())
            .await
            .expect("a watcher event in time")
            .expect("the watcher runs")
    };
    assert_eq!(next().await, "init");
    assert_eq!(next().await, "listed before");
    assert_eq!(next().await, "listed");
    fake.wait_for("the watch to open", PATIENCE, |f| {
        (f.open_watches() == 1).then_some(())
    })
    .await;

    // A change no watch sees, then the history goes: resuming must fail.
    fake.drop_watches();
    fake.create(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "during", "namespace": "default"}}));
    fake.expire_history();
    let error = next().await;
    assert!(error.contains("too old resource version"), "{error}");
    assert_eq!(next().await, "init");
    let mut listed = vec![next().await, next().await];
    listed.sort();
    assert_eq!(listed, ["listed before", "listed during"]);
    assert_eq!(next().await, "listed");
    let lists = fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && !r.is_watch())
        .count();
    assert_eq!(lists, 2, "one list at start, one after the 410");
    watch.abort();
}

#[tokio::test]
async fn fake_kubeconfig_points_kube_at_it() {
    let fake = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig =
        kube::config::Kubeconfig::read_from(fake.kubeconfig(dir.path())).expect("a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("a config");
    let client = kube::Client::try_from(config).expect("a client");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    let names: Vec<String> = namespaces
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert_eq!(names, ["default"]);
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[tokio::test]
async fn fake_holds_finalized_objects_until_their_finalizers_go() {
    let fake = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(fake.client());
    api.create(&PostParams::default(), &configmap("guarded", json!({})))
        .await
        .expect("create");
    let cleanups = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reconcile = |api: Api<ConfigMap>, cleanups: Arc<std::sync::atomic::AtomicUsize>| async move {
        let current = api.get("guarded").await.expect("get");
        finalizer(
            &api,
            "test.pilotlight.dev/cleanup",
            Arc::new(current),
            |event| async move {
                if let finalizer::Event::Cleanup(_) = event {
                    cleanups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Ok::<_, Never>(kube::runtime::controller::Action::await_change())
            },
        )
        .await
        .expect("the finalizer helper's patches apply")
    };

    reconcile(api.clone(), cleanups.clone()).await;
    let held = api.get("guarded").await.expect("get");
    assert_eq!(
        held.metadata.finalizers.as_deref(),
        Some(&["test.pilotlight.dev/cleanup".to_owned()][..])
    );
    api.delete("guarded", &DeleteParams::default())
        .await
        .expect("delete");
    let deleting = api.get("guarded").await.expect("still there");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    assert_eq!(cleanups.load(std::sync::atomic::Ordering::SeqCst), 0);

    reconcile(api.clone(), cleanups.clone()).await;
    assert_eq!(cleanups.load(std::sync::atomic::Ordering::SeqCst), 1);
    let gone = api.get_opt("guarded").await.expect("get");
    assert!(
        gone.is_none(),
        "the last finalizer's removal deletes: {gone:?}"
    );
    let json_patches = fake
        .requests()
        .iter()
        .filter(|r| r.content_type.as_deref() == Some("application/json-patch+json"))
        .count();
    assert_eq!(json_patches, 2, "add and remove the finalizer");
}

// The runtime.

/// A Knative Service `hello` with this container, as a user writes it.
const HELLO: &str = "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
spec:
  template:
    metadata:
      labels:
        team: web
    spec:
      timeoutSeconds: 120
      containers:
        - image: ghcr.io/example/hello:1
          args: [--verbose]
          env:
            - name: GREETING
              value: hi
            - name: TOKEN
              valueFrom:
                secretKeyRef: {name: hello, key: token}
          ports:
            - containerPort: 8081
              name: http1
          readinessProbe:
            httpGet:
              path: /ready
          resources:
            limits:
              memory: 128Mi
";

/// The workload the control plane makes of revision `revision` of `yaml`.
fn workload(yaml: &str, revision: &str) -> Workload {
    let service: Service = serde_saphyr::from_str(yaml).expect("a Knative Service");
    service.validate().expect("valid");
    Workload {
        service: ObjectKey::new("default", "hello"),
        revision: revision.into(),
        drain_timeout: service.spec.template.spec.timeout(),
        template: service.spec.template,
        kind: WorkloadKind::Revision,
    }
}

/// The Knative Service object in the fake, so the runtime finds its owner.
fn knative_service(fake: &FakeApiServer) -> Value {
    fake.create(
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"image": "ghcr.io/example/hello:1"}]}}}}),
    )
}

fn deploy(
    fake: &FakeApiServer,
    leader: &watch::Sender<bool>,
    workload: Workload,
) -> Arc<dyn runtime::Deployment> {
    KubernetesRuntime::new(fake.client(), leader.subscribe())
        .deploy(workload)
        .expect("deploys")
}

fn apps_deployment(fake: &FakeApiServer, name: &str) -> Option<Value> {
    fake.get("apps/v1", "Deployment", "default", name)
}

/// Waits until the Deployment `name` exists and `holds`.
async fn deployment_where(
    fake: &FakeApiServer,
    name: &str,
    what: &str,
    holds: impl Fn(&Value) -> bool,
) -> Value {
    fake.wait_for(what, PATIENCE, |f| apps_deployment(f, name).filter(&holds))
        .await
}

fn replicas(deployment: &Value) -> Option<u64> {
    deployment["spec"]["replicas"].as_u64()
}

#[tokio::test]
async fn a_revision_becomes_a_labelled_owned_deployment_and_a_private_service() {
    let fake = FakeApiServer::start().await;
    let owner = knative_service(&fake);
    let (leader, _) = watch::channel(true);
    let deployment = deploy(&fake, &leader, workload(HELLO, "hello-00001"));
    deployment.scale(1);
    let created = deployment_where(&fake, "hello-00001-deployment", "one replica", |d| {
        replicas(d) == Some(1)
    })
    .await;

    let labels = &created["metadata"]["labels"];
    assert_eq!(labels["serving.knative.dev/service"], "hello");
    assert_eq!(labels["serving.knative.dev/configuration"], "hello");
    assert_eq!(labels["serving.knative.dev/revision"], "hello-00001");
    assert_eq!(labels["app"], "hello-00001");
    let owners = &created["metadata"]["ownerReferences"];
    assert_eq!(owners.as_array().map(Vec::len), Some(1), "{owners}");
    assert_eq!(owners[0]["apiVersion"], "serving.knative.dev/v1");
    assert_eq!(owners[0]["kind"], "Service");
    assert_eq!(owners[0]["name"], "hello");
    assert_eq!(owners[0]["uid"], owner["metadata"]["uid"]);

    let pod = &created["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["serving.knative.dev/revision"],
        "hello-00001"
    );
    assert_eq!(pod["metadata"]["labels"]["team"], "web");
    assert_eq!(
        created["spec"]["selector"]["matchLabels"],
        json!({"serving.knative.dev/revision": "hello-00001"})
    );
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 120);
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/example/hello:1");
    assert_eq!(container["args"], json!(["--verbose"]));
    assert_eq!(container["ports"][0]["containerPort"], 8081);
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/ready", "port": 8081})
    );
    assert_eq!(container["resources"]["limits"]["memory"], "128Mi");
    let env: Vec<&Value> = container["env"].as_array().expect("env").iter().collect();
    let var = |name: &str| env.iter().find(|v| v["name"] == name).copied();
    assert_eq!(var("GREETING").map(|v| &v["value"]), Some(&json!("hi")));
    assert_eq!(
        var("TOKEN").map(|v| &v["valueFrom"]["secretKeyRef"]["key"]),
        Some(&json!("token"))
    );
    assert_eq!(var("PORT").map(|v| &v["value"]), Some(&json!("8081")));
    assert_eq!(
        var("K_REVISION").map(|v| &v["value"]),
        Some(&json!("hello-00001"))
    );

    let service = fake
        .get("v1", "Service", "default", "hello-00001-private")
        .expect("the private Service");
    assert_eq!(
        service["spec"]["selector"],
        json!({"serving.knative.dev/revision": "hello-00001"})
    );
    assert_eq!(service["spec"]["ports"][0]["targetPort"], 8081);
    assert_eq!(
        service["metadata"]["labels"]["serving.knative.dev/service"],
        "hello"
    );
    assert_eq!(
        service["metadata"]["ownerReferences"][0]["uid"],
        owner["metadata"]["uid"]
    );
}

#[tokio::test]
async fn scale_writes_the_latest_replicas_through_conflicts_and_server_errors() {
    let fake = FakeApiServer::start().await;
    let (leader, _) = watch::channel(true);
    let deployment = deploy(&fake, &leader, workload(HELLO, "hello-00001"));
    let created =
        deployment_where(&fake, "hello-00001-deployment", "the Deployment", |_| true).await;
    assert_eq!(replicas(&created), Some(0), "created at zero");
    assert!(
        created["metadata"]["ownerReferences"].is_null(),
        "no Knative Service to own it: {created}"
    );

    fake.conflict_next(1);
    deployment.scale(3);
    deployment_where(&fake, "hello-00001-deployment", "three replicas", |d| {
        replicas(d) == Some(3)
    })
    .await;
    fake.fail_next(2, 500);
    deployment.scale(2);
    deployment_where(&fake, "hello-00001-deployment", "two replicas", |d| {
        replicas(d) == Some(2)
    })
    .await;
    assert_eq!(deployment.status().desired, 2);
    let patches: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| (r.path, r.content_type))
        .collect();
    let path = "/apis/apps/v1/namespaces/default/deployments/hello-00001-deployment";
    let merge = Some("application/merge-patch+json".to_owned());
    assert_eq!(
        patches,
        vec![(path.to_owned(), merge.clone()); 5],
        "3 after one 409, 2 after two 500s"
    );
}

#[tokio::test]
async fn a_follower_only_wakes_a_deployment_from_zero() {
    let fake = FakeApiServer::start().await;
    let (leader, _) = watch::channel(false);
    let deployment = deploy(&fake, &leader, workload(HELLO, "hello-00001"));
    // A request waits here before the Deployment is even seen.
    deployment.wake(1);
    fake.wait_for("the runtime's watches", PATIENCE, |f| {
        (f.open_watches() == 2).then_some(())
    })
    .await;
    // The leader creates it, at zero: the waiting request wakes it.
    let mut at_zero = workload_deployment(0);
    fake.put(at_zero.clone());
    deployment_where(&fake, "hello-00001-deployment", "woken to one", |d| {
        replicas(d) == Some(1)
    })
    .await;
    assert!(
        fake.get("v1", "Service", "default", "hello-00001-private")
            .is_none(),
        "a follower creates nothing"
    );

    // The leader scales it to 3: the follower's own decisions write nothing.
    fake.put(workload_deployment(3));
    deployment.scale(0);
    deployment.scale(5);
    // The leader scales it to zero while this follower's autoscaler still
    // wants 5: the leader decides (it sees this replica's load), so no
    // wake without a request.
    at_zero["metadata"]["labels"] = json!({"scaled": "to zero"});
    fake.put(at_zero);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deployment_now = fake
        .get("apps/v1", "Deployment", "default", "hello-00001-deployment")
        .expect("deployment");
    assert_eq!(replicas(&deployment_now), Some(0));
    // A new request at zero wakes it again.
    deployment.wake(2);
    deployment_where(&fake, "hello-00001-deployment", "woken to two", |d| {
        replicas(d) == Some(2)
    })
    .await;
    let writes: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| r.method)
        .collect();
    assert_eq!(writes, ["PATCH", "PATCH"], "two wakes, nothing else");
}

#[tokio::test]
async fn a_new_leader_adopts_a_running_deployment_without_scaling_it_first() {
    let fake = FakeApiServer::start().await;
    fake.put(workload_deployment(3));
    let (leader, _) = watch::channel(true);
    let deployment = deploy(&fake, &leader, workload(HELLO, "hello-00001"));
    let creates = "/apis/apps/v1/namespaces/default/deployments";
    fake.wait_for("the attempt to create it", PATIENCE, |f| {
        f.requests()
            .into_iter()
            .find(|r| r.method == "POST" && r.path == creates)
    })
    .await;
    deployment.scale(2);
    deployment_where(&fake, "hello-00001-deployment", "two replicas", |d| {
        replicas(d) == Some(2)
    })
    .await;
    let patches = fake
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert_eq!(patches, 1, "only the autoscaler's count is written");
}

/// The Deployment as a leader would have made it, with `replicas`.
fn workload_deployment(replicas: u32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "hello-00001-deployment", "namespace": "default"},
        "spec": {"replicas": replicas,
                 "selector": {"matchLabels": {"serving.knative.dev/revision": "hello-00001"}},
                 "template": {"spec": {"containers": [{"image": "ghcr.io/example/hello:1"}]}}}})
}

#[tokio::test]
async fn ready_endpoints_come_from_the_private_services_slices() {
    let fake = FakeApiServer::start().await;
    let (leader, _) = watch::channel(true);
    let deployment = deploy(&fake, &leader, workload(HELLO, "hello-00001"));
    let pod = Subscriber::accepting().await;
    let port = pod.addr.port();
    let endpoint = |address: &str, name: &str, conditions: Value| {
        json!({"addresses": [address], "conditions": conditions,
            "targetRef": {"kind": "Pod", "namespace": "default", "name": name}})
    };
    let slice = |endpoints: Vec<Value>| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "hello-00001-private-x1", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "hello-00001-private"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": endpoints})
    };
    let other_service = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "other-x1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "other-private"}},
        "addressType": "IPv4", "ports": [{"port": port}],
        "endpoints": [{"addresses": ["127.0.0.9"], "conditions": {"ready": true}}]});
    fake.create(other_service);
    fake.create(slice(vec![
        endpoint("127.0.0.1", "pod-a", json!({"ready": true})),
        endpoint("127.0.0.2", "pod-starting", json!({"ready": false})),
        endpoint(
            "127.0.0.3",
            "pod-stopping",
            json!({"ready": true, "terminating": true}),
        ),
    ]));

    let mut endpoints = deployment.endpoints();
    let first = tokio::time::timeout(PATIENCE, endpoints.wait_for(|e| !e.is_empty()))
        .await
        .expect("endpoints in time")
        .expect("published")
        .clone();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(&*first[0].id, "pod-a");
    assert_eq!(first[0].address, pod.addr);
    let reply = request(
        Method::GET,
        &format!("http://{}/", first[0].address),
        &[],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(pod.count(), 1, "the request reached the pod");

    assert!(first[0].load.try_begin(), "a request in flight to pod-a");
    fake.put(slice(vec![
        endpoint("127.0.0.1", "pod-a", json!({"ready": true})),
        endpoint("127.0.0.4", "pod-b", json!({})),
    ]));
    let second = tokio::time::timeout(PATIENCE, endpoints.wait_for(|e| e.len() == 2))
        .await
        .expect("two endpoints in time")
        .expect("published")
        .clone();
    let ids: Vec<&str> = second.iter().map(|e| &*e.id).collect();
    assert_eq!(ids, ["pod-a", "pod-b"]);
    assert_eq!(second[0].load.in_flight(), 1, "pod-a keeps its count");

    fake.delete(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "default",
        "hello-00001-private-x1",
    );
    tokio::time::timeout(PATIENCE, endpoints.wait_for(|e| e.is_empty()))
        .await
        .expect("no endpoints in time")
        .expect("published");
}

#[tokio::test]
async fn status_reports_counts_and_a_failing_condition() {
    let fake = FakeApiServer::start().await;
    let (leader, _) = watch::channel(true);
    let deployment = deploy(&fake, &leader, workload(HELLO, "hello-00001"));
    deployment.scale(2);
    let mut reported = deployment_where(&fake, "hello-00001-deployment", "two replicas", |d| {
        replicas(d) == Some(2)
    })
    .await;
    reported["status"] = json!({"replicas": 2, "readyReplicas": 1, "conditions": [
        {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
         "message": "pods \"hello-00001-deployment-abc\" is forbidden: exceeded quota"},
    ]});
    fake.put(reported);
    let started = tokio::time::Instant::now();
    let status = loop {
        let status = deployment.status();
        if status.last_failure.is_some() {
            break status;
        }
        assert!(started.elapsed() < PATIENCE, "no failure in {status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!((status.desired, status.actual, status.ready), (2, 2, 1));
    assert_eq!(
        status.last_failure.as_deref(),
        Some("FailedCreate: pods \"hello-00001-deployment-abc\" is forbidden: exceeded quota")
    );
}

#[tokio::test]
async fn retire_deletes_the_objects_and_shutdown_leaves_them_running() {
    let fake = FakeApiServer::start().await;
    let (leader, _) = watch::channel(true);
    let kept = deploy(&fake, &leader, workload(HELLO, "hello-00001"));
    let retired = deploy(&fake, &leader, workload(HELLO, "hello-00002"));
    for revision in ["hello-00001", "hello-00002"] {
        let name = format!("{revision}-deployment");
        deployment_where(&fake, &name, "the Deployment", |_| true).await;
        fake.wait_for("the private Service", PATIENCE, |f| {
            f.get("v1", "Service", "default", &format!("{revision}-private"))
        })
        .await;
    }
    kept.shutdown().await;
    retired.retire().await;
    assert!(apps_deployment(&fake, "hello-00002-deployment").is_none());
    assert!(
        fake.get("v1", "Service", "default", "hello-00002-private")
            .is_none()
    );
    assert!(apps_deployment(&fake, "hello-00001-deployment").is_some());
    assert!(
        fake.get("v1", "Service", "default", "hello-00001-private")
            .is_some()
    );
}

#[tokio::test]
async fn a_workload_without_an_image_cannot_run() {
    let yaml = HELLO.replace(
        "        - image: ghcr.io/example/hello:1\n",
        "        - command: [hello]\n",
    );
    let (leader, _) = watch::channel(true);
    let config = kube::Config::new("http://127.0.0.1:1".parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    let error = KubernetesRuntime::new(client, leader.subscribe())
        .deploy(workload(&yaml, "hello-00001"))
        .err()
        .expect("refused");
    assert!(
        error
            .0
            .starts_with("spec.template.spec.containers[0].image is required"),
        "{error}"
    );
}
