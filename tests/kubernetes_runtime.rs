//! The Kubernetes runtime against the fake API server (tests/support/apiserver.rs)
//! over HTTP, and the fake's own semantics as kube's clients rely on them.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{finalizer, watcher};
use serde_json::json;
use support::apiserver::FakeApiServer;

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
