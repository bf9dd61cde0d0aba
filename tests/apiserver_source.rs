//! The ApiServerSource against the fake API server (tests/support/apiserver.rs):
//! nothing for what exists at the start (as Knative's adapter), events for
//! changes with the same id on every replica, resuming a dropped watch,
//! relisting after 410 Gone, selectors, status, and the connection
//! (`--kubeconfig`, a kubeconfig that appears later, an API server that
//! comes up later). Pure unit tests (events, what a list or a change sends)
//! are beside the code, in src/eventing/source/apiserver/tests.rs.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use pilotlight::api::ObjectKey;
use pilotlight::api::sources::apiserver::ApiServerSource;
use pilotlight::cloudevent::{Event, parse_http};
use pilotlight::eventing::delivery::EventSender;
use pilotlight::eventing::health::Health;
use pilotlight::eventing::source::apiserver::ApiServerSourceRunner;
use pilotlight::eventing::source::{Source, SourceContext, SourceHandle};
use serde_json::{Value, json};
use support::apiserver::FakeApiServer;

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

fn configmap(namespace: &str, name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "web"}},
        "data": data})
}

/// Creates or replaces a configmap in the fake; returns its resourceVersion.
fn put(fake: &FakeApiServer, namespace: &str, name: &str, data: Value) -> u64 {
    let stored = fake.put(configmap(namespace, name, data));
    version_of(&stored)
}

fn version_of(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("a resourceVersion")
}

fn delete(fake: &FakeApiServer, namespace: &str, name: &str) {
    assert!(fake.delete("v1", "ConfigMap", namespace, name));
}

fn set_namespace(fake: &FakeApiServer, name: &str, labels: Value) {
    fake.put(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels}}));
}

fn config_for(url: &str) -> kube::Config {
    let mut config = kube::Config::new(url.parse().expect("the fake's URL"));
    config.default_namespace = "default".to_string();
    config
}

async fn run(
    config: kube::Config,
    source: &ApiServerSource,
    sink: &Sink,
) -> (SourceHandle, tempfile::TempDir) {
    run_with(
        Box::new(ApiServerSourceRunner::new(source).with_config(config)),
        sink,
    )
    .await
}

async fn run_with(runner: Box<dyn Source>, sink: &Sink) -> (SourceHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, handle) = SourceContext::new(
        ObjectKey::new("default", "watch"),
        sink.uri.parse().unwrap(),
        EventSender::new(),
        dir.path().to_path_buf(),
    );
    tokio::spawn(runner.run(ctx));
    (handle, dir)
}

async fn wait_health(handle: &SourceHandle, want: impl Fn(&Health) -> bool) -> Health {
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
    fake.wait_for(&format!("watch request #{n}"), WAIT, |fake| {
        let requests = fake.requests();
        let watch = requests.iter().filter(|r| r.is_watch()).nth(n - 1)?;
        Some(watch.param("resourceVersion").unwrap_or_default())
    })
    .await
}

/// Waits until the source listed and watches (the first watch request):
/// from then on a change is sent.
async fn watching(fake: &FakeApiServer) {
    nth_watch_version(fake, 1).await;
}

/// The list and watch requests of configmaps.
fn configmap_requests(fake: &FakeApiServer) -> Vec<support::apiserver::RecordedRequest> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/configmaps"))
        .collect()
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

/// Knative's adapter sends nothing for the objects that exist when it starts
/// (its reflector's store ignores the list): only what happens after.
#[tokio::test]
async fn existing_objects_send_nothing_and_resource_mode_sends_new_ones_whole() {
    let fake = FakeApiServer::start().await;
    put(&fake, "default", "old", json!({"k": "0"}));
    let sink = Sink::start().await;
    let (handle, _dir) = run(config_for(&fake.url), &configmaps("Resource"), &sink).await;
    watching(&fake).await;
    sink.expect(0).await;

    put(&fake, "default", "a", json!({"k": "1"}));
    put(&fake, "default", "b", json!({"k": "2"}));
    put(&fake, "elsewhere", "c", json!({}));
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
    assert_eq!(object["apiVersion"], "v1");
    assert_eq!(object["kind"], "ConfigMap");
    assert_eq!(object["metadata"]["name"], "a");
    assert_eq!(object["data"]["k"], "1");
    assert_ne!(a.id(), by_subject(&events, "b").id());
    assert_eq!(handle.health(), Health::Ready);
}

#[tokio::test]
async fn reference_mode_sends_references_with_overrides() {
    let fake = FakeApiServer::start().await;
    let sink = Sink::start().await;
    let mut source = configmaps("Reference");
    source.spec.mode = None; // the default
    source.spec.ce_overrides = Some(pilotlight::api::duck::CeOverrides {
        extensions: [("team".to_string(), "blue".to_string())].into(),
    });
    let (_handle, _dir) = run(config_for(&fake.url), &source, &sink).await;
    watching(&fake).await;
    put(&fake, "default", "a", json!({}));

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
    put(&fake, "default", "a", json!({"k": "1"}));
    let sink = Sink::start().await;
    let (_handle, _dir) = run(config_for(&fake.url), &configmaps("Resource"), &sink).await;
    watching(&fake).await;

    put(&fake, "default", "a", json!({"k": "2"}));
    delete(&fake, "default", "a");
    put(&fake, "default", "n", json!({}));
    put(&fake, "elsewhere", "x", json!({}));
    let events = sink.expect(3).await;
    assert_eq!(
        summary(&events),
        [
            "dev.knative.apiserver.resource.update /apis/v1/namespaces/default/configmaps/a",
            "dev.knative.apiserver.resource.delete /apis/v1/namespaces/default/configmaps/a",
            "dev.knative.apiserver.resource.add /apis/v1/namespaces/default/configmaps/n",
        ]
    );
    assert_eq!(data(&events[0])["data"]["k"], "2");
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_the_last_resource_version() {
    let fake = FakeApiServer::start().await;
    let listed = put(&fake, "default", "a", json!({}));
    let sink = Sink::start().await;
    let (_handle, _dir) = run(config_for(&fake.url), &configmaps("Resource"), &sink).await;
    assert_eq!(nth_watch_version(&fake, 1).await, listed.to_string());

    let b = put(&fake, "default", "b", json!({}));
    sink.expect(1).await;
    fake.drop_watches();
    assert_eq!(nth_watch_version(&fake, 2).await, b.to_string());

    // A bookmark moves the resourceVersion on without an event.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bookmark = fake.bookmark();
    tokio::time::sleep(Duration::from_millis(200)).await;
    fake.drop_watches();
    assert_eq!(nth_watch_version(&fake, 3).await, bookmark.to_string());

    put(&fake, "default", "c", json!({}));
    let events = sink.expect(2).await;
    assert_eq!(events[1].attribute("name"), Some("c"));
    // Only the first connection listed.
    let lists = configmap_requests(&fake)
        .iter()
        .filter(|r| !r.is_watch())
        .count();
    assert_eq!(lists, 1);
}

async fn relist_after_gone(gone_as_http: bool) {
    let fake = FakeApiServer::start().await;
    put(&fake, "default", "same", json!({}));
    put(&fake, "default", "changed", json!({"v": "1"}));
    put(&fake, "default", "removed", json!({}));
    let sink = Sink::start().await;
    let (_handle, _dir) = run(config_for(&fake.url), &configmaps("Resource"), &sink).await;
    watching(&fake).await;
    sink.expect(0).await;

    fake.expire_with(
        gone_as_http,
        vec![
            configmap("default", "changed", json!({"v": "2"})),
            configmap("default", "new", json!({})),
        ],
        &[("v1", "ConfigMap", "default", "removed")],
    );
    // Unlike Knative's adapter, which would lose them: the changes made
    // while the watch could not resume.
    let events = sink.expect(3).await;
    let mut differences = summary(&events);
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
    put(&fake, "default", "later", json!({}));
    let events = sink.expect(4).await;
    assert_eq!(events[3].attribute("name"), Some("later"));
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

    let health = wait_health(&handle, |h| matches!(h, Health::NotReady { .. })).await;
    match health {
        Health::NotReady { reason, message } => {
            assert_eq!(reason, "ApiServerUnreachable");
            assert!(message.contains(&addr.to_string()), "{message}");
            assert!(message.contains("kubeconfig"), "{message}");
        }
        other => panic!("expected NotReady, got {other:?}"),
    }

    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let fake = FakeApiServer::serve(listener);
    assert_eq!(
        wait_health(&handle, |h| *h == Health::Ready).await,
        Health::Ready
    );
    put(&fake, "default", "a", json!({}));
    sink.expect(1).await;
}

#[tokio::test]
async fn unknown_kind_is_not_ready_with_kind_not_found() {
    let fake = FakeApiServer::start().await;
    let sink = Sink::start().await;
    let source = manifest(json!({"resources": [{"apiVersion": "v1", "kind": "Gadget"}]}));
    let (handle, _dir) = run(config_for(&fake.url), &source, &sink).await;
    let health = wait_health(&handle, |h| matches!(h, Health::NotReady { .. })).await;
    assert!(
        matches!(&health, Health::NotReady { reason, .. } if reason == "KindNotFound"),
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
    let (_handle, _dir) = run(config_for(&fake.url), &source, &sink).await;
    nth_watch_version(&fake, 1).await;
    let want = "app=web,tier in (a,b),!canary";
    let requests = configmap_requests(&fake);
    let selectors: Vec<_> = requests.iter().map(|r| r.param("labelSelector")).collect();
    assert_eq!(selectors.len(), 2, "{requests:?}");
    assert!(
        selectors.iter().all(|s| s.as_deref() == Some(want)),
        "{selectors:?}"
    );
}

#[tokio::test]
async fn namespace_selector_watches_matching_namespaces() {
    let fake = FakeApiServer::start().await;
    set_namespace(&fake, "team-a", json!({"team": "a"}));
    set_namespace(&fake, "team-b", json!({"team": "b"}));
    put(&fake, "team-a", "in", json!({}));
    put(&fake, "team-b", "out", json!({}));
    let sink = Sink::start().await;
    let source = manifest(json!({"mode": "Reference",
        "resources": [{"apiVersion": "v1", "kind": "ConfigMap"}],
        "namespaceSelector": {"matchLabels": {"team": "a"}}}));
    let (_handle, _dir) = run(config_for(&fake.url), &source, &sink).await;
    watching(&fake).await;
    put(&fake, "team-b", "out2", json!({}));
    put(&fake, "team-a", "in2", json!({}));
    let events = sink.expect(1).await;
    assert_eq!(
        events[0].attribute("subject"),
        Some("/apis/v1/namespaces/team-a/configmaps/in2")
    );
}

#[tokio::test]
async fn missing_kubeconfig_is_not_ready_until_it_appears() {
    let fake = FakeApiServer::start().await;
    put(&fake, "default", "a", json!({}));
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    let runner = ApiServerSourceRunner::new(&configmaps("Reference")).with_kubeconfig(&path);
    let (handle, _state) = run_with(Box::new(runner), &sink).await;

    let health = wait_health(&handle, |h| matches!(h, Health::NotReady { .. })).await;
    match health {
        Health::NotReady { reason, message } => {
            assert_eq!(reason, "KubeconfigMissing");
            assert!(message.contains("--kubeconfig"), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        other => panic!("expected NotReady, got {other:?}"),
    }

    // Writes dir/kubeconfig, pointing at the fake.
    assert_eq!(fake.kubeconfig(dir.path()), path);
    assert_eq!(
        wait_health(&handle, |h| *h == Health::Ready).await,
        Health::Ready
    );
    put(&fake, "default", "b", json!({}));
    let events = sink.expect(1).await;
    assert_eq!(events[0].source(), fake.url);
}

#[tokio::test]
async fn a_refused_event_is_dropped_and_the_watch_goes_on() {
    let fake = FakeApiServer::start().await;
    let sink = Sink::refusing("bad").await;
    let (handle, _dir) = run(config_for(&fake.url), &configmaps("Reference"), &sink).await;
    watching(&fake).await;
    put(&fake, "default", "bad", json!({}));
    put(&fake, "default", "good", json!({}));
    let events = sink.expect(1).await;
    assert_eq!(events[0].attribute("name"), Some("good"));
    put(&fake, "default", "later", json!({}));
    let events = sink.expect(2).await;
    assert_eq!(events[1].attribute("name"), Some("later"));
    assert_eq!(handle.health(), Health::Ready);
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
    let runner: Box<dyn Source> = Box::new(
        ApiServerSourceRunner::new(&configmaps("Resource")).with_config(config_for(&fake.url)),
    );
    let task = tokio::spawn(runner.run(ctx));
    nth_watch_version(&fake, 1).await;
    handle.stop();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the source ends when stopped")
        .expect("no panic");
}

/// `spec.filters` (Knative's new-apiserversource-filters): only events that
/// pass every filter are sent, and the filters see the event before
/// ceOverrides, as in Knative's adapter.
#[tokio::test]
async fn filters_leave_out_the_events_that_do_not_pass() {
    let fake = FakeApiServer::start().await;
    let sink = Sink::start().await;
    let source = manifest(json!({
        "mode": "Reference",
        "resources": [{"apiVersion": "v1", "kind": "ConfigMap"}],
        "ceOverrides": {"extensions": {"team": "blue"}},
        "filters": [
            {"prefix": {"name": "keep-"}},
            {"not": {"exact": {"type": "dev.knative.apiserver.ref.update"}}},
            {"cesql": "namespace = 'default'"},
            {"not": {"exact": {"team": "blue"}}},
        ],
    }));
    let (_handle, _dir) = run(config_for(&fake.url), &source, &sink).await;
    watching(&fake).await;

    put(&fake, "default", "keep-a", json!({}));
    put(&fake, "default", "drop-b", json!({}));
    put(&fake, "default", "keep-a", json!({"k": "2"}));
    put(&fake, "default", "drop-c", json!({}));
    delete(&fake, "default", "keep-a");
    let events = sink.expect(2).await;
    assert_eq!(
        summary(&events),
        [
            "dev.knative.apiserver.ref.add /apis/v1/namespaces/default/configmaps/keep-a",
            "dev.knative.apiserver.ref.delete /apis/v1/namespaces/default/configmaps/keep-a",
        ]
    );
    assert_eq!(events[1].attribute("team"), Some("blue"));
}

#[tokio::test]
async fn a_source_with_an_invalid_filter_is_not_ready_and_sends_nothing() {
    let sink = Sink::start().await;
    let mut source = configmaps("Reference");
    source.spec.filters =
        serde_json::from_value(json!([{"exact": {"type": "a"}, "prefix": {"type": "b"}}]))
            .expect("filters parse");
    let (handle, _dir) = run_with(source.build_source(None), &sink).await;
    let health = wait_health(&handle, |h| matches!(h, Health::NotReady { .. })).await;
    let Health::NotReady { reason, message } = health else {
        panic!("not ready: {health:?}");
    };
    assert_eq!(reason, "InvalidSpec");
    assert!(
        message.starts_with("spec.filters[0]: multiple dialects found"),
        "{message}"
    );
    assert!(sink.events().is_empty());
}

/// KUBECONFIG points nowhere (and no in-cluster account exists), so kube's
/// inference fails: a source that connects used the kubeconfig it was given.
fn without_inference() {
    // This file is its own test process, and no test in it infers.
    // SAFETY: nothing in this process reads the variable concurrently but
    // kube's inference, which no test here uses.
    unsafe { std::env::set_var("KUBECONFIG", "/nonexistent/pilotlight-test/kubeconfig") };
}

#[tokio::test]
async fn build_source_connects_with_the_kubeconfig_it_is_given() {
    without_inference();
    let fake = FakeApiServer::start().await;
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.kubeconfig(dir.path());
    let source = configmaps("Reference").build_source(Some(&kubeconfig));
    let (handle, _state) = run_with(source, &sink).await;
    watching(&fake).await;
    put(&fake, "default", "a", json!({}));
    let events = sink.expect(1).await;
    assert_eq!(events[0].source(), fake.url);
    assert_eq!(handle.health(), Health::Ready);
}

#[tokio::test]
async fn in_kubernetes_mode_the_source_watches_the_api_server_of_kubeconfig() {
    without_inference();
    let fake = FakeApiServer::start().await;
    let subscriber = support::Subscriber::accepting().await;
    fake.create(json!({
        "apiVersion": "sources.knative.dev/v1", "kind": "ApiServerSource",
        "metadata": {"name": "watch", "namespace": "default"},
        "spec": {"mode": "Reference",
                 "resources": [{"apiVersion": "v1", "kind": "ConfigMap"}],
                 "sink": {"uri": subscriber.url("/")}},
    }));
    let dir = tempfile::tempdir().unwrap();
    let mut config = pilotlight::server::ServerConfig::on_free_ports(
        dir.path().join("manifests"),
        dir.path().join("data"),
    );
    config.kubernetes = Some(pilotlight::control::kubernetes::KubernetesSettings {
        kubeconfig: Some(fake.kubeconfig(dir.path())),
        lease: pilotlight::control::kubernetes::leader::LeaseSettings::new("default", "one"),
    });
    let _server = pilotlight::server::Server::start(config)
        .await
        .expect("pilotlight starts");
    let events = put_until_received(&fake, &subscriber).await;
    assert_eq!(events[0].ty(), "dev.knative.apiserver.ref.add");
    assert_eq!(events[0].source(), fake.url);
    let subject = events[0].attribute("subject").unwrap_or_default();
    assert!(
        subject.starts_with("/apis/v1/namespaces/default/configmaps/probe-"),
        "{subject}"
    );
}

/// Creates a configmap every 200 ms until `subscriber` got an event (the
/// source sends only what changes after it started, and a server's source
/// starts in its own time); gives up after 20 s.
async fn put_until_received(fake: &FakeApiServer, subscriber: &support::Subscriber) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for n in 0.. {
        if subscriber.count() > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event reached the subscriber"
        );
        put(fake, "default", &format!("probe-{n}"), json!({}));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    subscriber.events()
}

/// A source started again (a restart, a leader hand-over) sends nothing for
/// the objects that exist, as Knative's adapter; two replicas that both run
/// it give the same change the same `ce-id`, so that a sink can drop one.
#[tokio::test]
async fn a_restart_resends_nothing_and_replicas_give_a_change_the_same_id() {
    let fake = FakeApiServer::start().await;
    let sink = Sink::start().await;
    let source = configmaps("Reference");
    let (first, _dir) = run(config_for(&fake.url), &source, &sink).await;
    watching(&fake).await;
    put(&fake, "default", "a", json!({}));
    let before = sink.expect(1).await;

    first.stop();
    let (_second, _dir2) = run(config_for(&fake.url), &source, &sink).await;
    let (_replica, _dir3) = run(config_for(&fake.url), &source, &sink).await;
    nth_watch_version(&fake, 3).await;
    // The restarted source and the other replica both listed `a`: no event.
    assert_eq!(sink.expect(1).await[0].id(), before[0].id());

    put(&fake, "default", "a", json!({"k": "2"}));
    let events = sink.expect(3).await;
    let (second, replica) = (&events[1], &events[2]);
    assert_eq!(second.ty(), "dev.knative.apiserver.ref.update");
    assert_eq!(second.id(), replica.id(), "the same change, the same id");
    assert_ne!(second.id(), before[0].id(), "another change, another id");
}

/// `pilotlight run` as a user starts it: the binary, with neither KUBECONFIG
/// nor a ~/.kube/config, so that only `--kubeconfig` can lead it to the
/// fake. Killed when dropped.
struct Binary(std::process::Child);

impl Binary {
    fn run(args: &[&std::ffi::OsStr], home: &std::path::Path) -> Binary {
        let free = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").to_string()
        };
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pilotlight"))
            .arg("run")
            .args(args)
            .args(["--listen", &free(), "--admin", &free()])
            .env_remove("KUBECONFIG")
            .env_remove("POD_NAME")
            .env("HOME", home)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("pilotlight starts");
        Binary(child)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn watch_source(sink: &str) -> Value {
    json!({
        "apiVersion": "sources.knative.dev/v1", "kind": "ApiServerSource",
        "metadata": {"name": "watch", "namespace": "default"},
        "spec": {"mode": "Reference",
                 "resources": [{"apiVersion": "v1", "kind": "ConfigMap"}],
                 "sink": {"uri": sink}},
    })
}

/// Issue 18: `run --kubernetes --kubeconfig FILE` without KUBECONFIG left
/// every ApiServerSource KubeconfigMissing.
#[tokio::test]
async fn run_kubernetes_with_kubeconfig_and_no_kubeconfig_env_runs_apiserver_sources() {
    let fake = FakeApiServer::start().await;
    let subscriber = support::Subscriber::accepting().await;
    fake.create(watch_source(&subscriber.url("/")));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.kubeconfig(dir.path());
    let data = dir.path().join("data");
    let _pilotlight = Binary::run(
        &[
            "--kubernetes".as_ref(),
            "--kubeconfig".as_ref(),
            kubeconfig.as_os_str(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ],
        dir.path(),
    );
    let events = put_until_received(&fake, &subscriber).await;
    assert_eq!(events[0].source(), fake.url);
}

/// File mode takes `--kubeconfig` too: its ApiServerSources watch that
/// cluster.
#[tokio::test]
async fn run_in_file_mode_with_kubeconfig_runs_apiserver_sources_against_it() {
    let fake = FakeApiServer::start().await;
    let subscriber = support::Subscriber::accepting().await;
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let yaml = serde_json::to_string(&watch_source(&subscriber.url("/"))).unwrap();
    std::fs::write(manifests.join("source.yaml"), yaml).unwrap();
    let kubeconfig = fake.kubeconfig(dir.path());
    let data = dir.path().join("data");
    let _pilotlight = Binary::run(
        &[
            "--no-watch".as_ref(),
            "-f".as_ref(),
            manifests.as_os_str(),
            "--kubeconfig".as_ref(),
            kubeconfig.as_os_str(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ],
        dir.path(),
    );
    let events = put_until_received(&fake, &subscriber).await;
    assert_eq!(events[0].source(), fake.url);
}
