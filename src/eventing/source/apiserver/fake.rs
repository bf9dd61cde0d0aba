//! A fake Kubernetes API server for tests, over real HTTP on 127.0.0.1:
//! discovery for `v1` (configmaps, namespaces) and `apps/v1` (deployments),
//! list and watch of configmaps (namespaced or all namespaces), list of
//! namespaces. Watches stream newline-delimited watch events; the test side
//! can change objects (the change goes to open watches), drop every watch
//! connection, send bookmarks, and expire old resourceVersions so that a
//! watch from one of them gets `410 Gone` (as an ERROR event, or an HTTP 410).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

type Watchers = Vec<(Option<String>, mpsc::UnboundedSender<Bytes>)>;

#[derive(Default)]
struct Inner {
    version: u64,
    /// (namespace, name) → configmap.
    objects: BTreeMap<(String, String), Value>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// (resourceVersion, type, object) of every change since `oldest`.
    history: Vec<(u64, &'static str, Value)>,
    /// Watches from a resourceVersion below this get 410.
    oldest: u64,
    /// 410 as an HTTP status rather than an ERROR watch event.
    gone_as_http: bool,
    watchers: Watchers,
    /// Every request: path and query.
    requests: Vec<String>,
}

#[derive(Clone)]
pub struct FakeApiServer {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

impl FakeApiServer {
    pub async fn start() -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake API server");
        FakeApiServer::serve(listener)
    }

    pub fn serve(listener: tokio::net::TcpListener) -> FakeApiServer {
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let inner = Arc::new(Mutex::new(Inner {
            version: 100,
            ..Inner::default()
        }));
        lock(&inner)
            .namespaces
            .insert("default".to_string(), BTreeMap::new());
        let app = Router::new()
            .route("/api", get(core_versions))
            .route("/api/v1", get(core_resources))
            .route("/apis", get(groups))
            .route("/apis/apps/v1", get(apps_resources))
            .route("/api/v1/namespaces", get(list_namespaces))
            .route("/api/v1/configmaps", get(all_configmaps))
            .route(
                "/api/v1/namespaces/{ns}/configmaps",
                get(namespaced_configmaps),
            )
            .fallback(not_found)
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApiServer {
            url,
            inner,
            task: Arc::new(task),
        }
    }

    pub fn config(&self) -> kube::Config {
        let mut config = kube::Config::new(self.url.parse().expect("fake URL"));
        config.default_namespace = "default".to_string();
        config
    }

    /// Creates or replaces a configmap; returns its new resourceVersion.
    pub fn put(&self, namespace: &str, name: &str, data: Value) -> u64 {
        put_in(&mut lock(&self.inner), namespace, name, data)
    }

    pub fn delete(&self, namespace: &str, name: &str) {
        delete_in(&mut lock(&self.inner), namespace, name);
    }

    pub fn set_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        lock(&self.inner).namespaces.insert(
            name.to_string(),
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }

    /// A BOOKMARK at the current resourceVersion after a change no watch
    /// sees (as when other objects change); returns that resourceVersion.
    pub fn bookmark(&self) -> u64 {
        let mut inner = lock(&self.inner);
        inner.version += 1;
        let version = inner.version;
        let object = json!({"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"resourceVersion": version.to_string()}});
        let text = line("BOOKMARK", &object);
        inner
            .watchers
            .retain(|(_, tx)| tx.send(text.clone()).is_ok());
        version
    }

    /// Closes every open watch.
    pub fn drop_watches(&self) {
        lock(&self.inner).watchers.clear();
    }

    /// Atomically: closes the watches, applies changes (puts, then deletes)
    /// no watch sees, and forgets the history, so that resuming from any
    /// resourceVersion seen so far gets 410.
    pub fn expire(
        &self,
        gone_as_http: bool,
        puts: &[(&str, &str, Value)],
        deletes: &[(&str, &str)],
    ) {
        let mut inner = lock(&self.inner);
        inner.watchers.clear();
        for (ns, name, data) in puts {
            put_in(&mut inner, ns, name, data.clone());
        }
        for (ns, name) in deletes {
            delete_in(&mut inner, ns, name);
        }
        inner.history.clear();
        inner.version += 1;
        inner.oldest = inner.version;
        inner.gone_as_http = gone_as_http;
    }

    pub fn requests(&self) -> Vec<String> {
        lock(&self.inner).requests.clone()
    }

    pub fn watch_requests(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.contains("watch=true"))
            .collect()
    }
}

fn put_in(inner: &mut Inner, namespace: &str, name: &str, data: Value) -> u64 {
    inner.version += 1;
    let version = inner.version;
    let key = (namespace.to_string(), name.to_string());
    let kind = if inner.objects.contains_key(&key) {
        "MODIFIED"
    } else {
        "ADDED"
    };
    let object = configmap(namespace, name, version, data);
    inner.objects.insert(key, object.clone());
    inner.history.push((version, kind, object.clone()));
    broadcast(inner, namespace, line(kind, &object));
    version
}

fn delete_in(inner: &mut Inner, namespace: &str, name: &str) {
    inner.version += 1;
    let version = inner.version;
    if let Some(mut object) = inner
        .objects
        .remove(&(namespace.to_string(), name.to_string()))
    {
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        inner.history.push((version, "DELETED", object.clone()));
        broadcast(inner, namespace, line("DELETED", &object));
    }
}

fn broadcast(inner: &mut Inner, namespace: &str, text: Bytes) {
    inner.watchers.retain(|(ns, tx)| {
        if ns.as_deref().is_some_and(|ns| ns != namespace) {
            return !tx.is_closed();
        }
        tx.send(text.clone()).is_ok()
    });
}

fn configmap(namespace: &str, name: &str, version: u64, data: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": format!("uid-{namespace}-{name}"),
            "resourceVersion": version.to_string(),
            "labels": {"app": "web"},
        },
        "data": data,
    })
}

async fn core_versions() -> Response {
    axum::Json(json!({"kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": []}))
    .into_response()
}

async fn core_resources() -> Response {
    axum::Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
        "resources": [
            {"name": "configmaps", "singularName": "configmap", "namespaced": true,
             "kind": "ConfigMap", "verbs": ["get", "list", "watch"]},
            {"name": "namespaces", "singularName": "namespace", "namespaced": false,
             "kind": "Namespace", "verbs": ["get", "list", "watch"]},
        ]
    }))
    .into_response()
}

async fn groups() -> Response {
    axum::Json(json!({
        "kind": "APIGroupList", "apiVersion": "v1",
        "groups": [{"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}]
    }))
    .into_response()
}

async fn apps_resources() -> Response {
    axum::Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1",
        "resources": [
            {"name": "deployments", "singularName": "deployment", "namespaced": true,
             "kind": "Deployment", "verbs": ["get", "list", "watch"]},
        ]
    }))
    .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "the server could not find the requested resource",
            "reason": "NotFound", "code": 404}),
        ),
    )
        .into_response()
}

pub(super) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn record(inner: &Mutex<Inner>, path: &str, query: &Option<String>) -> String {
    let query = query.clone().unwrap_or_default();
    lock(inner).requests.push(format!("{path}?{query}"));
    query
}

async fn list_namespaces(
    State(inner): State<Arc<Mutex<Inner>>>,
    RawQuery(q): RawQuery,
) -> Response {
    let query = record(&inner, "/api/v1/namespaces", &q);
    let selector = query_param(&query, "labelSelector");
    let inner = lock(&inner);
    // Equality selectors only (`k=v,k2=v2`).
    let wanted: Vec<(String, String)> = selector
        .iter()
        .flat_map(|s| s.split(','))
        .filter_map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let items: Vec<Value> = inner
        .namespaces
        .iter()
        .filter(|(_, labels)| wanted.iter().all(|(k, v)| labels.get(k) == Some(v)))
        .map(|(name, labels)| json!({"metadata": {"name": name, "labels": labels}}))
        .collect();
    axum::Json(json!({"kind": "NamespaceList", "apiVersion": "v1",
        "metadata": {"resourceVersion": inner.version.to_string()}, "items": items}))
    .into_response()
}

async fn all_configmaps(State(inner): State<Arc<Mutex<Inner>>>, RawQuery(q): RawQuery) -> Response {
    let query = record(&inner, "/api/v1/configmaps", &q);
    configmaps(&inner, None, &query)
}

async fn namespaced_configmaps(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(ns): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let query = record(&inner, &format!("/api/v1/namespaces/{ns}/configmaps"), &q);
    configmaps(&inner, Some(ns), &query)
}

fn configmaps(inner: &Arc<Mutex<Inner>>, ns: Option<String>, query: &str) -> Response {
    let in_scope = |object_ns: &str| ns.as_deref().is_none_or(|ns| ns == object_ns);
    if query_param(query, "watch").as_deref() != Some("true") {
        let inner = lock(inner);
        // Items of a list of a built-in kind have no apiVersion and kind.
        let items: Vec<Value> = inner
            .objects
            .iter()
            .filter(|((object_ns, _), _)| in_scope(object_ns))
            .map(|(_, o)| {
                let mut o = o.clone();
                if let Some(map) = o.as_object_mut() {
                    map.remove("apiVersion");
                    map.remove("kind");
                }
                o
            })
            .collect();
        return axum::Json(json!({"kind": "ConfigMapList", "apiVersion": "v1",
            "metadata": {"resourceVersion": inner.version.to_string()}, "items": items}))
        .into_response();
    }
    let from: u64 = query_param(query, "resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut inner = lock(inner);
    let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": format!("too old resource version: {from} ({})", inner.oldest),
        "reason": "Expired", "code": 410});
    if from < inner.oldest {
        if inner.gone_as_http {
            return (StatusCode::GONE, axum::Json(gone)).into_response();
        }
        return Response::new(Body::from(line("ERROR", &gone)));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    for (version, kind, object) in &inner.history {
        let object_ns = object["metadata"]["namespace"].as_str().unwrap_or("");
        if *version > from && in_scope(object_ns) {
            let _ = tx.send(line(kind, object));
        }
    }
    inner.watchers.push((ns, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::new(Body::from_stream(stream))
}
