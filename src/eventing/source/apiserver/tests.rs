//! The source against the fake API server, delivering to a recording sink.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};

use super::fake::FakeApiServer;
use super::{ApiServerSource, ApiServerSourceRunner};
use crate::api::ObjectKey;
use crate::cloudevent::Event;
use crate::cloudevent::parse_http;
use crate::eventing::delivery::EventSender;
use crate::eventing::source::{Source, SourceContext, SourceHandle, SourceHealth};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Sink {
    uri: String,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Sink {
    async fn start() -> Sink {
        Sink::refusing("").await
    }

    /// A sink that answers 400 to events whose `name` extension is `refuse`.
    async fn refusing(refuse: &'static str) -> Sink {
        let events: Arc<Mutex<Vec<Event>>> = Arc::default();
        let recorded = events.clone();
        let app = Router::new().route(
            "/",
            post(move |headers: axum::http::HeaderMap, body: Bytes| {
                let recorded = recorded.clone();
                async move {
                    let Ok((_, events)) = parse_http(&headers, body) else {
                        return axum::http::StatusCode::BAD_REQUEST;
                    };
                    if events.iter().any(|e| e.attribute("name") == Some(refuse)) {
                        return axum::http::StatusCode::BAD_REQUEST;
                    }
                    recorded
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(events);
                    axum::http::StatusCode::ACCEPTED
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Sink { uri, events }
    }

    fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for `n` events, then checks that no more come.
    async fn expect(&self, n: usize) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.events().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let events = self.events();
        assert_eq!(events.len(), n, "events: {:#?}", summary(&events));
        events
    }
}

fn summary(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{} {}", e.ty(), e.attribute("subject").unwrap_or("")))
        .collect()
}

fn manifest(spec: Value) -> ApiServerSource {
    let mut spec = spec;
    spec["sink"] = json!({"uri": "http://sink.example"});
    let source: ApiServerSource = serde_json::from_value(json!({
        "apiVersion": "sources.knative.dev/v1",
        "kind": "ApiServerSource",
        "metadata": {"name": "watch", "namespace": "default"},
        "spec": spec,
    }))
    .expect("manifest parses");
    source.validate().expect("manifest is valid");
    source
}

fn configmaps(mode: &str) -> ApiServerSource {
    manifest(json!({"mode": mode, "resources": [{"apiVersion": "v1", "kind": "ConfigMap"}]}))
}

async fn run(
    fake_config: kube::Config,
    source: &ApiServerSource,
    sink: &Sink,
) -> (SourceHandle, tempfile::TempDir) {
    run_with(
        ApiServerSourceRunner::new(source).with_config(fake_config),
        sink,
    )
    .await
}

async fn run_with(runner: ApiServerSourceRunner, sink: &Sink) -> (SourceHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, handle) = SourceContext::new(
        ObjectKey::new("default", "watch"),
        sink.uri.parse().unwrap(),
        EventSender::new(),
        dir.path().to_path_buf(),
    );
    let runner: Box<dyn Source> = Box::new(runner);
    tokio::spawn(runner.run(ctx));
    (handle, dir)
}

async fn wait_health(handle: &SourceHandle, want: impl Fn(&SourceHealth) -> bool) -> SourceHealth {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let health = handle.health();
        if want(&health) || tokio::time::Instant::now() > deadline {
            return health;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the n-th watch request and returns its resourceVersion.
async fn nth_watch_version(fake: &FakeApiServer, n: usize) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let watches = fake.watch_requests();
        if let Some(request) = watches.get(n - 1) {
            return super::fake::query_param(
                request.split_once('?').map_or("", |(_, q)| q),
                "resourceVersion",
            )
            .unwrap_or_default();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no watch request #{n}: {:?}",
            fake.requests()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn data(event: &Event) -> Value {
    serde_json::from_slice(event.data().expect("event has data")).expect("data is JSON")
}

fn by_subject<'a>(events: &'a [Event], name: &str) -> &'a Event {
    let subject = format!("/apis/v1/namespaces/default/configmaps/{name}");
    events
        .iter()
        .find(|e| e.attribute("subject") == Some(subject.as_str()))
        .unwrap_or_else(|| panic!("no event for {subject}: {:?}", summary(events)))
}

#[tokio::test]
async fn resource_mode_sends_an_add_per_existing_object() {
    let fake = FakeApiServer::start().await;
    fake.put("default", "a", json!({"k": "1"}));
    fake.put("default", "b", json!({"k": "2"}));
    fake.put("elsewhere", "c", json!({}));
    let sink = Sink::start().await;
    let (handle, _dir) = run(fake.config(), &configmaps("Resource"), &sink).await;

    let events = sink.expect(2).await;
    let a = by_subject(&events, "a");
    assert_eq!(a.ty(), "dev.knative.apiserver.resource.add");
    assert_eq!(a.source(), fake.url);
    assert_eq!(a.datacontenttype(), Some("application/json"));
    assert_eq!(a.attribute("kind"), Some("ConfigMap"));
    assert_eq!(a.attribute("name"), Some("a"));
    assert_eq!(a.attribute("namespace"), Some("default"));
    assert!(uuid::Uuid::parse_str(a.id()).is_ok());
    let object = data(a);
    // List items come without apiVersion and kind: the event has them.
    assert_eq!(object["apiVersion"], "v1");
    assert_eq!(object["kind"], "ConfigMap");
    assert_eq!(object["metadata"]["name"], "a");
    assert_eq!(object["data"]["k"], "1");
    assert_ne!(a.id(), by_subject(&events, "b").id());
    assert_eq!(handle.health(), SourceHealth::Ready);
}

#[tokio::test]
async fn reference_mode_sends_references_with_overrides() {
    let fake = FakeApiServer::start().await;
    fake.put("default", "a", json!({}));
    let sink = Sink::start().await;
    let mut source = configmaps("Reference");
    source.spec.mode = None; // the default
    source.spec.ce_overrides = Some(crate::eventing::source::CeOverrides {
        extensions: [("team".to_string(), "blue".to_string())].into(),
    });
    let (_handle, _dir) = run(fake.config(), &source, &sink).await;

    let events = sink.expect(1).await;
    let a = &events[0];
    assert_eq!(a.ty(), "dev.knative.apiserver.ref.add");
    assert_eq!(
        a.attribute("subject"),
        Some("/apis/v1/namespaces/default/configmaps/a")
    );
    assert_eq!(a.attribute("team"), Some("blue"));
    assert_eq!(
        data(a),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "a", "namespace": "default"})
    );
}

#[tokio::test]
async fn watch_changes_become_update_delete_and_add() {
    let fake = FakeApiServer::start().await;
    fake.put("default", "a", json!({"k": "1"}));
    let sink = Sink::start().await;
    let (_handle, _dir) = run(fake.config(), &configmaps("Resource"), &sink).await;
    sink.expect(1).await;
    nth_watch_version(&fake, 1).await;

    fake.put("default", "a", json!({"k": "2"}));
    fake.delete("default", "a");
    fake.put("default", "n", json!({}));
    fake.put("elsewhere", "x", json!({}));
    let events = sink.expect(4).await;
    assert_eq!(
        summary(&events[1..]),
        [
            "dev.knative.apiserver.resource.update /apis/v1/namespaces/default/configmaps/a",
            "dev.knative.apiserver.resource.delete /apis/v1/namespaces/default/configmaps/a",
            "dev.knative.apiserver.resource.add /apis/v1/namespaces/default/configmaps/n",
        ]
    );
    assert_eq!(data(&events[1])["data"]["k"], "2");
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_the_last_resource_version() {
    let fake = FakeApiServer::start().await;
    let listed = fake.put("default", "a", json!({}));
    let sink = Sink::start().await;
    let (_handle, _dir) = run(fake.config(), &configmaps("Resource"), &sink).await;
    sink.expect(1).await;
    assert_eq!(nth_watch_version(&fake, 1).await, listed.to_string());

    let b = fake.put("default", "b", json!({}));
    sink.expect(2).await;
    fake.drop_watches();
    assert_eq!(nth_watch_version(&fake, 2).await, b.to_string());

    // A bookmark moves the resourceVersion on without an event.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bookmark = fake.bookmark();
    tokio::time::sleep(Duration::from_millis(200)).await;
    fake.drop_watches();
    assert_eq!(nth_watch_version(&fake, 3).await, bookmark.to_string());

    fake.put("default", "c", json!({}));
    let events = sink.expect(3).await;
    assert_eq!(events[2].attribute("name"), Some("c"));
    // Only the first connection listed.
    let lists = fake
        .requests()
        .iter()
        .filter(|r| r.contains("/configmaps?") && !r.contains("watch=true"))
        .count();
    assert_eq!(lists, 1);
}

async fn relist_after_gone(gone_as_http: bool) {
    let fake = FakeApiServer::start().await;
    fake.put("default", "same", json!({}));
    fake.put("default", "changed", json!({"v": "1"}));
    fake.put("default", "removed", json!({}));
    let sink = Sink::start().await;
    let (_handle, _dir) = run(fake.config(), &configmaps("Resource"), &sink).await;
    sink.expect(3).await;
    nth_watch_version(&fake, 1).await;

    fake.expire(
        gone_as_http,
        &[
            ("default", "changed", json!({"v": "2"})),
            ("default", "new", json!({})),
        ],
        &[("default", "removed")],
    );
    let events = sink.expect(6).await;
    let mut differences = summary(&events[3..]);
    differences.sort();
    assert_eq!(
        differences,
        [
            "dev.knative.apiserver.resource.add /apis/v1/namespaces/default/configmaps/new",
            "dev.knative.apiserver.resource.delete /apis/v1/namespaces/default/configmaps/removed",
            "dev.knative.apiserver.resource.update /apis/v1/namespaces/default/configmaps/changed",
        ]
    );
    // And the watch goes on from the new list.
    nth_watch_version(&fake, 3).await;
    fake.put("default", "later", json!({}));
    let events = sink.expect(7).await;
    assert_eq!(events[6].attribute("name"), Some("later"));
}

#[tokio::test]
async fn gone_as_a_watch_error_relists_and_sends_only_differences() {
    relist_after_gone(false).await;
}

#[tokio::test]
async fn gone_as_http_410_relists_and_sends_only_differences() {
    relist_after_gone(true).await;
}

#[tokio::test]
async fn unreachable_api_server_is_not_ready_then_ready() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let sink = Sink::start().await;
    let (handle, _dir) = run(config, &configmaps("Resource"), &sink).await;

    let health = wait_health(&handle, |h| matches!(h, SourceHealth::NotReady { .. })).await;
    match health {
        SourceHealth::NotReady { reason, message } => {
            assert_eq!(reason, "ApiServerUnreachable");
            assert!(message.contains(&addr.to_string()), "{message}");
            assert!(message.contains("kubeconfig"), "{message}");
        }
        other => panic!("expected NotReady, got {other:?}"),
    }

    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let fake = FakeApiServer::serve(listener);
    fake.put("default", "a", json!({}));
    assert_eq!(
        wait_health(&handle, |h| *h == SourceHealth::Ready).await,
        SourceHealth::Ready
    );
    sink.expect(1).await;
}

#[tokio::test]
async fn unknown_kind_is_not_ready_with_kind_not_found() {
    let fake = FakeApiServer::start().await;
    let sink = Sink::start().await;
    let source = manifest(json!({"resources": [{"apiVersion": "v1", "kind": "Gadget"}]}));
    let (handle, _dir) = run(fake.config(), &source, &sink).await;
    let health = wait_health(&handle, |h| matches!(h, SourceHealth::NotReady { .. })).await;
    assert!(
        matches!(&health, SourceHealth::NotReady { reason, .. } if reason == "KindNotFound"),
        "{health:?}"
    );
}

#[tokio::test]
async fn label_selector_goes_to_list_and_watch() {
    let fake = FakeApiServer::start().await;
    let sink = Sink::start().await;
    let source = manifest(
        json!({"resources": [{"apiVersion": "v1", "kind": "ConfigMap",
        "selector": {"matchLabels": {"app": "web"},
                     "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                          {"key": "canary", "operator": "DoesNotExist"}]}}]}),
    );
    let (_handle, _dir) = run(fake.config(), &source, &sink).await;
    nth_watch_version(&fake, 1).await;
    let want = "app=web,tier in (a,b),!canary";
    let requests = fake.requests();
    let selectors: Vec<_> = requests
        .iter()
        .filter(|r| r.contains("/configmaps?"))
        .map(|r| {
            super::fake::query_param(r.split_once('?').map_or("", |(_, q)| q), "labelSelector")
        })
        .collect();
    assert_eq!(selectors.len(), 2, "{requests:?}");
    assert!(
        selectors.iter().all(|s| s.as_deref() == Some(want)),
        "{selectors:?}"
    );
}

#[tokio::test]
async fn namespace_selector_watches_matching_namespaces() {
    let fake = FakeApiServer::start().await;
    fake.set_namespace("team-a", &[("team", "a")]);
    fake.set_namespace("team-b", &[("team", "b")]);
    fake.put("team-a", "in", json!({}));
    fake.put("team-b", "out", json!({}));
    let sink = Sink::start().await;
    let source = manifest(json!({"mode": "Reference",
        "resources": [{"apiVersion": "v1", "kind": "ConfigMap"}],
        "namespaceSelector": {"matchLabels": {"team": "a"}}}));
    let (_handle, _dir) = run(fake.config(), &source, &sink).await;
    let events = sink.expect(1).await;
    assert_eq!(
        events[0].attribute("subject"),
        Some("/apis/v1/namespaces/team-a/configmaps/in")
    );
    nth_watch_version(&fake, 1).await;
    fake.put("team-b", "out2", json!({}));
    fake.put("team-a", "in2", json!({}));
    let events = sink.expect(2).await;
    assert_eq!(events[1].attribute("name"), Some("in2"));
}

#[tokio::test]
async fn owner_filter_and_controller_reference() {
    // Events only for objects controlled by the owner kind; the reference
    // names the controller (Knative's behaviour with spec.owner).
    let object: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "default",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                                 "uid": "u", "controller": true}]}
    }))
    .unwrap();
    let event = super::events::make_event(
        crate::api::sources::apiserver::EventMode::Reference,
        super::events::Action::Update,
        "https://10.0.0.1:443",
        "pods",
        &object,
        true,
    )
    .unwrap();
    assert_eq!(event.ty(), "dev.knative.apiserver.ref.update");
    assert_eq!(event.source(), "https://10.0.0.1:443");
    assert_eq!(
        event.attribute("subject"),
        Some("/apis/v1/namespaces/default/pods/web-1")
    );
    assert_eq!(
        data(&event),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "namespace": "default"})
    );
}

#[test]
fn validation_reports_field_paths() {
    let parse = |spec: Value| -> ApiServerSource {
        let mut spec = spec;
        spec["sink"] = json!({"uri": "http://sink.example"});
        serde_json::from_value(json!({
            "apiVersion": "sources.knative.dev/v1", "kind": "ApiServerSource",
            "metadata": {"name": "w"}, "spec": spec,
        }))
        .unwrap()
    };
    let field = |spec: Value| parse(spec).validate().unwrap_err().field;
    let cm = json!([{"apiVersion": "v1", "kind": "ConfigMap"}]);
    assert_eq!(field(json!({"resources": []})), "spec.resources");
    assert_eq!(field(json!({"resources": cm, "mode": "Ref"})), "spec.mode");
    assert_eq!(
        field(
            json!({"resources": [{"apiVersion": "v1", "kind": "ConfigMap"}, {"apiVersion": "apps/v1"}]})
        ),
        "spec.resources[1].kind"
    );
    assert_eq!(
        field(json!({"resources": [{"apiVersion": "", "kind": "Pod"}]})),
        "spec.resources[0].apiVersion"
    );
    assert_eq!(
        field(json!({"resources": [{"apiVersion": "v1", "kind": "Pod",
            "selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}]})),
        "spec.resources[0].selector.matchExpressions[0].operator"
    );
    assert_eq!(
        field(
            json!({"resources": cm, "namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}})
        ),
        "spec.namespaceSelector.matchExpressions[0].values"
    );
    assert_eq!(
        field(json!({"resources": cm, "ceOverrides": {"extensions": {"type": "x"}}})),
        "spec.ceOverrides.extensions.type"
    );
    assert_eq!(field(json!({"resources": cm, "owner": {}})), "spec.owner");
    let ok = parse(
        json!({"resources": cm, "mode": "Resource", "serviceAccountName": "sa",
        "owner": {"apiVersion": "apps/v1", "kind": "Deployment"}}),
    );
    assert_eq!(ok.validate(), Ok(()));
    assert_eq!(
        ok.mode(),
        Ok(crate::api::sources::apiserver::EventMode::Resource)
    );
    // Unknown fields are refused.
    assert!(
        serde_json::from_value::<ApiServerSource>(json!({
            "apiVersion": "sources.knative.dev/v1", "kind": "ApiServerSource",
            "metadata": {"name": "w"}, "spec": {"resources": cm, "sink": {"uri": "http://s"}, "modes": "x"}
        }))
        .is_err()
    );
}

#[tokio::test]
async fn missing_kubeconfig_is_not_ready_until_it_appears() {
    let fake = FakeApiServer::start().await;
    fake.put("default", "a", json!({}));
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    let runner = ApiServerSourceRunner::new(&configmaps("Reference")).with_kubeconfig(&path);
    let (handle, _state) = run_with(runner, &sink).await;

    let health = wait_health(&handle, |h| matches!(h, SourceHealth::NotReady { .. })).await;
    match health {
        SourceHealth::NotReady { reason, message } => {
            assert_eq!(reason, "KubeconfigMissing");
            assert!(message.contains("KUBECONFIG"), "{message}");
            assert!(message.contains("kubeconfig"), "{message}");
        }
        other => panic!("expected NotReady, got {other:?}"),
    }

    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
         clusters:\n- name: fake\n  cluster:\n    server: {}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: nobody\n\
         users:\n- name: nobody\n  user: {{}}\n",
        fake.url
    );
    std::fs::write(&path, kubeconfig).unwrap();
    assert_eq!(
        wait_health(&handle, |h| *h == SourceHealth::Ready).await,
        SourceHealth::Ready
    );
    let events = sink.expect(1).await;
    assert_eq!(events[0].source(), fake.url);
}

#[tokio::test]
async fn a_tls_client_finds_the_ring_crypto_provider() {
    // kube builds rustls without choosing a provider: with ring alone in the
    // tree rustls picks it; with aws-lc-rs too this would panic.
    let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    assert!(kube::Client::try_from(config).is_ok());
}

#[tokio::test]
async fn a_refused_event_is_dropped_and_the_watch_goes_on() {
    let fake = FakeApiServer::start().await;
    fake.put("default", "bad", json!({}));
    fake.put("default", "good", json!({}));
    let sink = Sink::refusing("bad").await;
    let (handle, _dir) = run(fake.config(), &configmaps("Reference"), &sink).await;
    let events = sink.expect(1).await;
    assert_eq!(events[0].attribute("name"), Some("good"));
    nth_watch_version(&fake, 1).await;
    fake.put("default", "later", json!({}));
    let events = sink.expect(2).await;
    assert_eq!(events[1].attribute("name"), Some("later"));
    assert_eq!(handle.health(), SourceHealth::Ready);
}

#[tokio::test]
async fn stop_ends_the_source() {
    let fake = FakeApiServer::start().await;
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (ctx, handle) = SourceContext::new(
        ObjectKey::new("default", "watch"),
        sink.uri.parse().unwrap(),
        EventSender::new(),
        dir.path().to_path_buf(),
    );
    let runner: Box<dyn Source> =
        Box::new(ApiServerSourceRunner::new(&configmaps("Resource")).with_config(fake.config()));
    let task = tokio::spawn(runner.run(ctx));
    nth_watch_version(&fake, 1).await;
    handle.stop();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the source ends when stopped")
        .expect("no panic");
}
