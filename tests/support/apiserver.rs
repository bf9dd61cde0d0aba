//! An in-process fake of the Kubernetes API server's HTTP interface, for tests
//! that drive pilotlight's Kubernetes code through a real `kube::Client`: real
//! HTTP on 127.0.0.1, JSON on the wire, the paths and status codes of the real
//! server.
//!
//! What it does, per resource of [`RESOURCES`]:
//! - create, get, list, replace (PUT), patch (merge, JSON and strategic
//!   merge patch, what pilotlight sends; other patch types get 415), delete; `/status` get, replace and patch for kinds with a status
//!   subresource (writes to the main resource then keep the stored status,
//!   and status writes change only status);
//! - one global resourceVersion; `metadata.uid`, `creationTimestamp` and
//!   `generation` (1 on create, +1 when anything outside metadata and status
//!   changes); a write that changes nothing changes no resourceVersion and
//!   sends no event, as the real server;
//! - 409 AlreadyExists on a create of an existing name, 409 Conflict on a
//!   write with a stale `metadata.resourceVersion`; errors as `Status` objects;
//! - deletion with finalizers: DELETE sets `deletionTimestamp`, and the object
//!   goes once a write empties `metadata.finalizers`;
//! - discovery of every resource (`/api`, `/api/{version}`, `/apis`,
//!   `/apis/{group}/{version}`), as `kube::discovery` reads it;
//! - list and watch with `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`,
//!   `k in (a,b)`, `k notin (a,b)`, comma-joined) and `fieldSelector` (`metadata.name`,
//!   `metadata.namespace`; `=`, `==`, `!=`); watch from a resourceVersion
//!   (history, then live), from "" or "0" (ADDED for current objects), with
//!   `sendInitialEvents`, bookmarks, `timeoutSeconds`, and 410 Gone for a
//!   resourceVersion older than the retained history.
//!
//! Versions of one group and plural share storage (as `kafkasources` in
//! v1 and v1beta1 do on a real server); objects are served with the version
//! asked for. Test controls beside it: objects set and read directly, injected
//! failures ([`FakeApiServer::conflict_next`], [`FakeApiServer::fail_next`],
//! optionally for one path only),
//! expired history (optionally with changes no watch sees, and 410 Gone as
//! an HTTP status), bookmarks, dropped watches, a request log (that says
//! which replica sent each request), and clients.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pilotlight::control::kubernetes::KubernetesSettings;
use pilotlight::control::kubernetes::leader::LeaseSettings;
use pilotlight::server::ServerConfig;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// The `iss` of the fake's service-account tokens (a real cluster's).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// One kind the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceType {
    /// Empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a `/status` subresource.
    pub status: bool,
}

const fn resource(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
) -> ResourceType {
    ResourceType {
        group,
        version,
        plural,
        kind,
        namespaced,
        status,
    }
}

/// Every kind the fake serves: group, version, plural, kind, namespaced,
/// status subresource.
#[rustfmt::skip]
pub const RESOURCES: &[ResourceType] = &[
    resource("serving.knative.dev", "v1", "services", "Service", true, true),
    resource("eventing.knative.dev", "v1", "brokers", "Broker", true, true),
    resource("eventing.knative.dev", "v1", "triggers", "Trigger", true, true),
    resource("sources.knative.dev", "v1", "pingsources", "PingSource", true, true),
    resource("sources.knative.dev", "v1", "apiserversources", "ApiServerSource", true, true),
    resource("sources.knative.dev", "v1", "kafkasources", "KafkaSource", true, true),
    resource("sources.knative.dev", "v1beta1", "kafkasources", "KafkaSource", true, true),
    resource("sources.knative.dev", "v1alpha1", "rabbitmqsources", "RabbitmqSource", true, true),
    resource("sources.knative.dev", "v1", "containersources", "ContainerSource", true, true),
    resource("sources.knative.dev", "v1", "sinkbindings", "SinkBinding", true, true),
    resource("sinks.knative.dev", "v1alpha1", "jobsinks", "JobSink", true, true),
    resource("eventing.knative.dev", "v1alpha1", "eventpolicies", "EventPolicy", true, true),
    resource("messaging.knative.dev", "v1", "inmemorychannels", "InMemoryChannel", true, true),
    resource("messaging.knative.dev", "v1beta1", "kafkachannels", "KafkaChannel", true, true),
    resource("messaging.knative.dev", "v1", "channels", "Channel", true, true),
    resource("messaging.knative.dev", "v1", "subscriptions", "Subscription", true, true),
    resource("flows.knative.dev", "v1", "sequences", "Sequence", true, true),
    resource("flows.knative.dev", "v1", "parallels", "Parallel", true, true),
    resource("apps", "v1", "deployments", "Deployment", true, true),
    resource("batch", "v1", "jobs", "Job", true, true),
    resource("", "v1", "pods", "Pod", true, true),
    resource("", "v1", "services", "Service", true, false),
    resource("", "v1", "configmaps", "ConfigMap", true, false),
    resource("", "v1", "secrets", "Secret", true, false),
    resource("", "v1", "namespaces", "Namespace", false, false),
    resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", true, false),
    resource("coordination.k8s.io", "v1", "leases", "Lease", true, false),
];

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage this kind shares with its other versions.
    fn storage(&self) -> (&'static str, &'static str) {
        (self.group, self.plural)
    }

    fn find(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
        RESOURCES
            .iter()
            .find(|r| r.api_version() == api_version && r.kind == kind)
    }
}

/// A request as the fake received it, for assertions on what went where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    /// Who sent it: the `Impersonate-User` header, which the kubeconfig of
    /// [`FakeApiServer::replica_config`] sets to the replica's identity.
    pub user: Option<String>,
}

impl RecordedRequest {
    pub fn is_watch(&self) -> bool {
        is_watch(&self.query)
    }

    /// A query parameter, decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        query_param(&self.query, name)
    }
}

/// An error as the API server answers it: a `Status` object with this code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    fn not_found(resource: &ResourceType, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(resource)),
        )
    }

    fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message,
            "reason": self.reason, "code": self.code,
        })
    }

    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.status())).into_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

/// `deployments.apps`, as the real server names a resource in messages.
fn qualified(resource: &ResourceType) -> String {
    if resource.group.is_empty() {
        resource.plural.to_owned()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    }
}

type StorageKey = (&'static str, &'static str, String, String);

/// One change, as watches replay it.
#[derive(Debug, Clone)]
struct Change {
    /// The group and plural it belongs to.
    storage: (&'static str, &'static str),
    version: u64,
    kind: &'static str,
    object: Value,
    /// The object before a MODIFIED, to turn it into ADDED or DELETED for a
    /// watch whose selector it enters or leaves.
    before: Option<Value>,
}

struct Watcher {
    resource: &'static ResourceType,
    scope: Scope,
    selector: Selector,
    /// Asked for bookmarks (`allowWatchBookmarks`).
    bookmarks: bool,
    sender: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct Store {
    version: u64,
    /// (group, plural, namespace, name) → object, stored without apiVersion.
    objects: BTreeMap<StorageKey, Value>,
    history: VecDeque<Change>,
    /// Watches from a resourceVersion below this get 410 Gone.
    oldest: u64,
    /// That 410 as an HTTP status rather than an ERROR watch event.
    gone_as_http: bool,
    watchers: Vec<Watcher>,
    /// Injected answers for the next writes (POST, PUT, PATCH).
    failures: VecDeque<ApiError>,
    /// Only writes to paths containing this meet the injected answers.
    failing_paths: Option<String>,
    requests: Vec<RecordedRequest>,
    /// Numbers uids and generated names.
    serial: u64,
}

/// The fake server; clones share it. It stops when the last clone is dropped.
#[derive(Clone)]
pub struct FakeApiServer {
    /// `http://127.0.0.1:{port}`.
    pub url: String,
    shared: Shared,
    /// The service-account issuer's key: its discovery document and JWKS
    /// are served as the real server serves them.
    service_accounts: Arc<super::oidc::SigningKey>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

/// What the HTTP handlers and the test controls share.
#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    /// Sent after each change, request and new watch, for waiting on
    /// conditions.
    changed: watch::Sender<()>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_replace(());
    }
}

impl FakeApiServer {
    /// Starts on a free port with the `default` namespace.
    pub async fn start() -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        FakeApiServer::serve(listener)
    }

    /// Starts on this listener (a chosen address) with the `default`
    /// namespace.
    pub fn serve(listener: tokio::net::TcpListener) -> FakeApiServer {
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let shared = Shared {
            store: Arc::new(Mutex::new(Store {
                version: 1,
                ..Store::default()
            })),
            changed: watch::channel(()).0,
        };
        let service_accounts = Arc::new(super::oidc::SigningKey::new("sa-key"));
        let app = super::oidc::issuer_routes(
            SERVICE_ACCOUNT_ISSUER,
            "/openid/v1/jwks",
            &service_accounts,
        )
        .fallback(handle)
        .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let fake = FakeApiServer {
            url,
            shared,
            service_accounts,
            task: Arc::new(task),
        };
        fake.create(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "default"}}));
        fake
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.shared.lock()
    }

    /// A token of the service account `namespace/account` for `audience`,
    /// as the API server's TokenRequest gives one.
    pub fn service_account_token(&self, namespace: &str, account: &str, audience: &str) -> String {
        let now = super::oidc::now();
        self.service_accounts.sign(&json!({
            "iss": SERVICE_ACCOUNT_ISSUER,
            "sub": format!("system:serviceaccount:{namespace}:{account}"),
            "aud": [audience], "iat": now, "nbf": now, "exp": now + 600,
        }))
    }

    /// A client for the fake, with `default` as its namespace.
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url.parse().expect("the fake's URL"));
        config.default_namespace = "default".to_owned();
        kube::Client::try_from(config).expect("a client for the fake")
    }

    /// Writes a kubeconfig whose current context points at the fake, for
    /// code that reads `KUBECONFIG`; returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        self.kubeconfig_as(dir, None)
    }

    /// [`Self::kubeconfig`] whose requests name `user` (`as:`, sent as the
    /// `Impersonate-User` header), so that [`RecordedRequest::user`] tells
    /// which replica sent each.
    fn kubeconfig_as(&self, dir: &Path, user: Option<&str>) -> PathBuf {
        let path = dir.join("kubeconfig");
        let user = match user {
            Some(name) => format!("{{as: {name}}}"),
            None => "{}".to_owned(),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n  - name: fake\n    cluster:\n      server: {}\nusers:\n  - name: fake\n    user: {user}\ncontexts:\n  - name: fake\n    context:\n      cluster: fake\n      user: fake\n      namespace: default\ncurrent-context: fake\n",
            self.url
        );
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }

    /// The configuration of a pilotlight replica in Kubernetes mode against
    /// this fake, its folders under `dir/{identity}`: a kubeconfig pointing
    /// here, whose requests the log attributes to `identity`
    /// ([`RecordedRequest::user`]), and a short lease (2 s, looked at every
    /// 100 ms) so that tests of the election are quick.
    pub fn replica_config(&self, dir: &Path, identity: &str) -> ServerConfig {
        let dir = dir.join(identity);
        std::fs::create_dir_all(&dir).expect("replica dir");
        let mut config = ServerConfig::on_free_ports(dir.join("manifests"), dir.join("data"));
        config.kubernetes = Some(KubernetesSettings {
            kubeconfig: Some(self.kubeconfig_as(&dir, Some(identity))),
            lease: LeaseSettings {
                duration: Duration::from_secs(2),
                retry_period: Duration::from_millis(100),
                ..LeaseSettings::new("pilotlight", identity)
            },
        });
        config
    }

    /// What the EndpointSlice controller publishes for one ready pod of
    /// `revision` (in `default`) listening on 127.0.0.1:`port`.
    pub fn ready_slice(revision: &str, port: u16) -> Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{revision}-private-a1"), "namespace": "default",
                "labels": {"kubernetes.io/service-name": format!("{revision}-private")}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "namespace": "default",
                    "name": format!("{revision}-deployment-a1")}}],
        })
    }

    /// Who holds the leader Lease of the replicas of [`Self::replica_config`].
    pub fn lease_holder(&self) -> Option<String> {
        self.get(
            "coordination.k8s.io/v1",
            "Lease",
            "pilotlight",
            "pilotlight-controller",
        )
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    }

    /// Creates an object (apiVersion and kind pick the resource) as a POST
    /// would; panics if it exists. Returns it as stored.
    pub fn create(&self, object: Value) -> Value {
        let (resource, namespace) = resource_of(&object);
        create(&self.shared, resource, &namespace, object).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates or replaces an object whole, status included, whatever its
    /// resourceVersion says (as a controller the test plays would leave it).
    pub fn put(&self, object: Value) -> Value {
        let (resource, namespace) = resource_of(&object);
        let name = name_of(&object);
        if self
            .get(&resource.api_version(), resource.kind, &namespace, &name)
            .is_none()
        {
            return self.create(object);
        }
        let result = self
            .lock()
            .update(resource, &namespace, &name, Write::Whole, |_| Ok(object));
        self.shared.notify();
        result.unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = ResourceType::find(api_version, kind)
            .unwrap_or_else(|| panic!("the fake serves no {api_version} {kind}"));
        self.lock()
            .objects
            .get(&key(resource, namespace, name))
            .map(|o| served(resource, o))
    }

    /// Objects of a kind, in one namespace or (None) all.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let resource = ResourceType::find(api_version, kind)
            .unwrap_or_else(|| panic!("the fake serves no {api_version} {kind}"));
        let scope = match namespace {
            Some(ns) => Scope::Namespace(ns.to_owned()),
            None => Scope::All,
        };
        self.lock().matching(resource, &scope, &Selector::default())
    }

    /// Deletes as a DELETE request would (finalizers hold the object with a
    /// deletionTimestamp); false if there was no such object.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let resource = ResourceType::find(api_version, kind)
            .unwrap_or_else(|| panic!("the fake serves no {api_version} {kind}"));
        let result = self.lock().delete(resource, namespace, name);
        self.shared.notify();
        result.is_ok()
    }

    /// The next `n` writes (POST, PUT, PATCH) answer 409 Conflict.
    pub fn conflict_next(&self, n: usize) {
        for _ in 0..n {
            self.fail_next_with(ApiError::new(
                409,
                "Conflict",
                "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again (injected by the test)",
            ));
        }
    }

    /// The next `n` writes answer `code` (such as 500) with a Status.
    pub fn fail_next(&self, n: usize, code: u16) {
        for _ in 0..n {
            self.fail_next_with(ApiError::new(
                code,
                "InternalError",
                "an error injected by the test",
            ));
        }
    }

    fn fail_next_with(&self, error: ApiError) {
        self.lock().failures.push_back(error);
    }

    /// Injected answers go only to writes whose path contains `part` (such
    /// as `/brokers/default`), so other writers (a Lease) do not take them.
    pub fn fail_only_paths_containing(&self, part: &str) {
        self.lock().failing_paths = Some(part.to_owned());
    }

    /// Forgets the history: a watch from any resourceVersion seen so far gets
    /// 410 Gone. Open watches stay open (see [`FakeApiServer::drop_watches`]).
    pub fn expire_history(&self) {
        let mut store = self.lock();
        store.history.clear();
        store.version += 1;
        store.oldest = store.version;
    }

    /// As one step no watch sees: closes every open watch, creates or
    /// replaces `puts` (as [`FakeApiServer::put`]), deletes `deletes`
    /// (apiVersion, kind, namespace, name), and forgets the history; so a
    /// client sees the changes only in a new list. `gone_as_http`: a watch
    /// from an expired resourceVersion then gets an HTTP 410 rather than an
    /// ERROR event.
    pub fn expire_with(
        &self,
        gone_as_http: bool,
        puts: Vec<Value>,
        deletes: &[(&str, &str, &str, &str)],
    ) {
        let mut store = self.lock();
        store.watchers.clear();
        for object in puts {
            let (resource, namespace) = resource_of(&object);
            let name = name_of(&object);
            if store
                .objects
                .contains_key(&key(resource, &namespace, &name))
            {
                store
                    .update(resource, &namespace, &name, Write::Whole, |_| Ok(object))
                    .unwrap_or_else(|e| panic!("{e}"));
            } else {
                store.insert(resource, &namespace, object);
            }
        }
        for (api_version, kind, namespace, name) in deletes {
            let resource = ResourceType::find(api_version, kind)
                .unwrap_or_else(|| panic!("the fake serves no {api_version} {kind}"));
            store
                .delete(resource, namespace, name)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        store.history.clear();
        store.version += 1;
        store.oldest = store.version;
        store.gone_as_http = gone_as_http;
        drop(store);
        self.shared.notify();
    }

    /// A BOOKMARK, to every open watch that asked for bookmarks, at a new
    /// resourceVersion (as after changes of objects no watch follows);
    /// returns that resourceVersion.
    pub fn bookmark(&self) -> u64 {
        let mut store = self.lock();
        let version = store.next_version();
        store.watchers.retain(|w| {
            !w.bookmarks || w.sender.send(bookmark(w.resource, version, false)).is_ok()
        });
        version
    }

    /// Closes every open watch connection.
    pub fn drop_watches(&self) {
        self.lock().watchers.clear();
    }

    /// Watches open now (closed ones are noticed on the next event).
    pub fn open_watches(&self) -> usize {
        let mut store = self.lock();
        store.watchers.retain(|w| !w.sender.is_closed());
        store.watchers.len()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Waits (up to `within`) until `found` returns Some, checking after
    /// every change, request and new watch; panics naming `what` otherwise.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        found: impl Fn(&FakeApiServer) -> Option<T>,
    ) -> T {
        let mut changed = self.shared.changed.subscribe();
        let wait = async {
            loop {
                changed.borrow_and_update();
                if let Some(value) = found(self) {
                    return value;
                }
                if changed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        match tokio::time::timeout(within, wait).await {
            Ok(value) => value,
            Err(_) => panic!("waited {within:?} for {what}"),
        }
    }
}

fn resource_of(object: &Value) -> (&'static ResourceType, String) {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let resource = ResourceType::find(api_version, kind)
        .unwrap_or_else(|| panic!("the fake serves no {api_version} {kind}"));
    let namespace = if resource.namespaced {
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned()
    } else {
        String::new()
    };
    (resource, namespace)
}

fn name_of(object: &Value) -> String {
    object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn key(resource: &ResourceType, namespace: &str, name: &str) -> StorageKey {
    let (group, plural) = resource.storage();
    (group, plural, namespace.to_owned(), name.to_owned())
}

/// The object as served in `resource`'s version: with apiVersion and kind.
fn served(resource: &ResourceType, object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), json!(resource.api_version()));
        map.insert("kind".into(), json!(resource.kind));
    }
    object
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// A PUT or PATCH of the main resource: status is kept for kinds with a
    /// status subresource.
    Main,
    /// A PUT or PATCH of `/status`: only status changes.
    Status,
    /// A test control: everything.
    Whole,
}

/// Where a list or watch looks.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    All,
    Namespace(String),
}

impl Scope {
    fn contains(&self, object: &Value) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespace(ns) => object["metadata"]["namespace"].as_str().unwrap_or("") == ns,
        }
    }
}

/// `labelSelector` and `fieldSelector` terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Selector {
    labels: Vec<Term>,
    fields: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A selector's terms: split at the commas outside parentheses.
fn split_terms(selector: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms
}

impl Selector {
    fn parse(query: &str) -> Result<Selector, ApiError> {
        let terms = |name: &str| -> Result<Vec<Term>, ApiError> {
            query_param(query, name)
                .iter()
                .flat_map(|s| split_terms(s))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(parse_term)
                .collect()
        };
        let selector = Selector {
            labels: terms("labelSelector")?,
            fields: terms("fieldSelector")?,
        };
        for field in &selector.fields {
            let (Term::Equals(name, _) | Term::NotEquals(name, _)) = field else {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    "fieldSelector terms must be field=value or field!=value",
                ));
            };
            if name != "metadata.name" && name != "metadata.namespace" {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    format!("field label not supported: {name}"),
                ));
            }
        }
        Ok(selector)
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        let field = |k: &str| match k {
            "metadata.name" => object["metadata"]["name"].as_str(),
            _ => object["metadata"]["namespace"].as_str().or(Some("")),
        };
        self.labels.iter().all(|t| t.matches(label)) && self.fields.iter().all(|t| t.matches(field))
    }
}

fn parse_term(term: &str) -> Result<Term, ApiError> {
    let bad = || {
        ApiError::new(
            400,
            "BadRequest",
            format!(
                "unable to parse selector term '{term}' (the fake knows k=v, k==v, k!=v, k, !k, k in (a,b) and k notin (a,b))"
            ),
        )
    };
    if let Some((key, rest)) = term.split_once(' ') {
        let (set, values) = rest.trim().split_once(' ').ok_or_else(bad)?;
        let values = values
            .trim()
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .ok_or_else(bad)?;
        let values = values.split(',').map(|v| v.trim().to_owned()).collect();
        return match set {
            "in" => Ok(Term::In(key.to_owned(), values)),
            "notin" => Ok(Term::NotIn(key.to_owned(), values)),
            _ => Err(bad()),
        };
    }
    if term.contains(['(', ')']) {
        return Err(bad());
    }
    let term = if let Some((k, v)) = term.split_once("!=") {
        Term::NotEquals(k.to_owned(), v.to_owned())
    } else if let Some((k, v)) = term.split_once("==") {
        Term::Equals(k.to_owned(), v.to_owned())
    } else if let Some((k, v)) = term.split_once('=') {
        Term::Equals(k.to_owned(), v.to_owned())
    } else if let Some(k) = term.strip_prefix('!') {
        Term::Absent(k.to_owned())
    } else {
        Term::Exists(term.to_owned())
    };
    Ok(term)
}

impl Term {
    fn matches<'a>(&self, value: impl Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Term::Equals(k, v) => value(k) == Some(v.as_str()),
            Term::NotEquals(k, v) => value(k) != Some(v.as_str()),
            Term::Exists(k) => value(k).is_some(),
            Term::Absent(k) => value(k).is_none(),
            Term::In(k, values) => value(k).is_some_and(|v| values.iter().any(|x| x == v)),
            Term::NotIn(k, values) => !value(k).is_some_and(|v| values.iter().any(|x| x == v)),
        }
    }
}

impl Store {
    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    fn take_failure(&mut self, path: &str) -> Result<(), ApiError> {
        if self
            .failing_paths
            .as_ref()
            .is_some_and(|part| !path.contains(part.as_str()))
        {
            return Ok(());
        }
        match self.failures.pop_front() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn matching(&self, resource: &ResourceType, scope: &Scope, selector: &Selector) -> Vec<Value> {
        let (group, plural) = resource.storage();
        self.objects
            .iter()
            .filter(|((g, p, _, _), _)| *g == group && *p == plural)
            .map(|(_, o)| o)
            .filter(|o| scope.contains(o) && selector.matches(o))
            .map(|o| served(resource, o))
            .collect()
    }

    fn record(&mut self, change: Change) {
        for watcher in &mut self.watchers {
            if watcher.resource.storage() == change.storage
                && let Some(line) = watcher.event_line(&change)
            {
                let _ = watcher.sender.send(line);
            }
        }
        self.watchers.retain(|w| !w.sender.is_closed());
        self.history.push_back(change);
    }

    fn insert(&mut self, resource: &ResourceType, namespace: &str, mut object: Value) -> Value {
        let version = self.next_version();
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let stored = strip_type(object);
        let name = name_of(&stored);
        self.objects
            .insert(key(resource, namespace, &name), stored.clone());
        self.record(Change {
            storage: resource.storage(),
            version,
            kind: "ADDED",
            object: stored.clone(),
            before: None,
        });
        served(resource, &stored)
    }

    /// Applies a write through `change` (given the object as served) and
    /// stores what it allows; removes the object when it is being deleted
    /// and its last finalizer went.
    fn update(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        write: Write,
        change: impl FnOnce(Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let storage_key = key(resource, namespace, name);
        let old = self.stored(resource, &storage_key, name)?;
        let wanted = change(served(resource, &old))?;
        let asked_version = wanted["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if write != Write::Whole
            && !asked_version.is_empty()
            && asked_version != old["metadata"]["resourceVersion"]
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    qualified(resource)
                ),
            ));
        }
        let new = merge_write(resource, &old, strip_type(wanted), write);
        if new == old {
            return Ok(served(resource, &old));
        }
        let version = self.next_version();
        let mut new = new;
        new["metadata"]["resourceVersion"] = json!(version.to_string());
        let finalized = new["metadata"]["deletionTimestamp"].is_string() && finalizers(&new) == 0;
        if finalized {
            self.objects.remove(&storage_key);
            self.record(Change {
                storage: resource.storage(),
                version,
                kind: "DELETED",
                object: new.clone(),
                before: None,
            });
        } else {
            self.objects.insert(storage_key, new.clone());
            self.record(Change {
                storage: resource.storage(),
                version,
                kind: "MODIFIED",
                object: new.clone(),
                before: Some(old),
            });
        }
        Ok(served(resource, &new))
    }

    /// The stored object under `storage_key`, or 404 naming it.
    fn stored(
        &self,
        resource: &ResourceType,
        storage_key: &StorageKey,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.objects
            .get(storage_key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, name))
    }

    fn delete(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let storage_key = key(resource, namespace, name);
        let old = self.stored(resource, &storage_key, name)?;
        if finalizers(&old) > 0 {
            if old["metadata"]["deletionTimestamp"].is_string() {
                return Ok(served(resource, &old));
            }
            return self.update(resource, namespace, name, Write::Whole, |mut o| {
                o["metadata"]["deletionTimestamp"] = json!(now());
                Ok(o)
            });
        }
        self.objects.remove(&storage_key);
        let version = self.next_version();
        let mut gone = old;
        gone["metadata"]["resourceVersion"] = json!(version.to_string());
        self.record(Change {
            storage: resource.storage(),
            version,
            kind: "DELETED",
            object: gone.clone(),
            before: None,
        });
        Ok(served(resource, &gone))
    }
}

/// What a write leaves: the kept metadata of `old`, the parts `write` may
/// change from `wanted`, and the generation bumped when the spec changed.
fn merge_write(resource: &ResourceType, old: &Value, wanted: Value, write: Write) -> Value {
    let mut new = match write {
        Write::Status => {
            let mut new = old.clone();
            set_or_remove(&mut new, "status", wanted.get("status").cloned());
            return new;
        }
        Write::Main | Write::Whole => wanted,
    };
    if write == Write::Main && resource.status {
        set_or_remove(&mut new, "status", old.get("status").cloned());
    }
    for field in ["uid", "creationTimestamp", "namespace", "name"] {
        new["metadata"][field] = old["metadata"][field].clone();
    }
    if write == Write::Main {
        // Only DELETE sets deletionTimestamp, and nothing clears it.
        let deletion = old["metadata"].get("deletionTimestamp").cloned();
        set_or_remove(&mut new["metadata"], "deletionTimestamp", deletion);
    }
    let generation = old["metadata"]["generation"].as_u64().unwrap_or(1);
    let spec_changed = without_meta_and_status(old) != without_meta_and_status(&new);
    new["metadata"]["generation"] = json!(generation + u64::from(spec_changed));
    new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    new
}

fn without_meta_and_status(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    object
}

fn set_or_remove(object: &mut Value, field: &str, value: Option<Value>) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    match value {
        Some(value) if !value.is_null() => {
            map.insert(field.to_owned(), value);
        }
        _ => {
            map.remove(field);
        }
    }
}

fn strip_type(mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    object
}

fn finalizers(object: &Value) -> usize {
    object["metadata"]["finalizers"]
        .as_array()
        .map_or(0, Vec::len)
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn create(
    shared: &Shared,
    resource: &'static ResourceType,
    namespace: &str,
    mut object: Value,
) -> Result<Value, ApiError> {
    if !object.is_object() || !object["metadata"].is_object() && !object["metadata"].is_null() {
        return Err(ApiError::new(
            400,
            "BadRequest",
            "the body is not an object with metadata",
        ));
    }
    let result = {
        let mut store = shared.lock();
        let name = name_of(&object);
        if name.is_empty() {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "{} is invalid: metadata.name: Required value",
                    resource.kind
                ),
            ));
        }
        if store.objects.contains_key(&key(resource, namespace, &name)) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(resource)),
            ));
        }
        store.serial += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", store.serial);
        let metadata = &mut object["metadata"];
        metadata["name"] = json!(name);
        if resource.namespaced {
            metadata["namespace"] = json!(namespace);
        } else if let Some(map) = metadata.as_object_mut() {
            map.remove("namespace");
        }
        metadata["uid"] = json!(uid);
        metadata["creationTimestamp"] = json!(now());
        metadata["generation"] = json!(1);
        if let Some(map) = metadata.as_object_mut() {
            map.remove("deletionTimestamp");
        }
        if resource.status
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
        }
        store.insert(resource, namespace, object)
    };
    shared.notify();
    Ok(result)
}

/// Where a request goes: the resource, the namespace (empty for all or for
/// cluster-scoped kinds), the object's name and whether it is `/status`.
struct Target {
    resource: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn route(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let find = |plural: &str| {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, rest @ ..] if find(plural).is_some() => {
            (Some((*ns).to_owned()), [&[*plural], rest].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let resource = find(rest.first()?)?;
    if namespace.is_some() && !resource.namespaced {
        return None;
    }
    let (name, status) = match rest.as_slice() {
        [_] => (None, false),
        [_, name] => (Some((*name).to_owned()), false),
        [_, name, "status"] if resource.status => (Some((*name).to_owned()), true),
        _ => return None,
    };
    if name.is_some() && resource.namespaced && namespace.is_none() {
        return None;
    }
    Some(Target {
        resource,
        namespace,
        name,
        status,
    })
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or_default().to_owned();
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
    shared.lock().requests.push(RecordedRequest {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        user: headers
            .get("impersonate-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    if method == Method::GET
        && let Some(document) = discovery(&path)
    {
        shared.notify();
        return axum::Json(document).into_response();
    }
    let Some(target) = route(&path) else {
        return ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .into_response();
    };
    if matches!(method, Method::POST | Method::PUT | Method::PATCH)
        && let Err(injected) = shared.lock().take_failure(&path)
    {
        return injected.into_response();
    }
    let result = match (&method, &target.name) {
        (&Method::GET, None) if is_watch(&query) => return watch(&shared, &target, &query),
        (&Method::GET, None) => list(&shared, &target, &query),
        (&Method::POST, None) => post(&shared, &target, &body),
        (&Method::GET, Some(name)) => get(&shared, &target, name),
        (&Method::PUT, Some(name)) => put(&shared, &target, name, &body),
        (&Method::PATCH, Some(name)) => {
            patch(&shared, &target, name, content_type.as_deref(), &body)
        }
        (&Method::DELETE, Some(name)) if !target.status => {
            let namespace = target.namespace.clone().unwrap_or_default();
            shared.lock().delete(target.resource, &namespace, name)
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on {path}"),
        )),
    };
    // After every answer, changed or not: tests may wait for a request.
    shared.notify();
    match result {
        Ok(object) => {
            let code = if method == Method::POST {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (code, axum::Json(object)).into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// The discovery documents: `/api`, `/api/{version}`, `/apis` and
/// `/apis/{group}/{version}` for [`RESOURCES`].
fn discovery(path: &str) -> Option<Value> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let resources = |group: &str, version: &str| {
        let resources: Vec<Value> = RESOURCES
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .flat_map(|r| {
                let main = json!({"name": r.plural, "singularName": r.kind.to_lowercase(),
                    "namespaced": r.namespaced, "kind": r.kind,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]});
                let status = r.status.then(|| {
                    json!({"name": format!("{}/status", r.plural), "singularName": "",
                        "namespaced": r.namespaced, "kind": r.kind,
                        "verbs": ["get", "patch", "update"]})
                });
                std::iter::once(main).chain(status)
            })
            .collect();
        let group_version = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        (!resources.is_empty()).then(|| {
            json!({"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": group_version, "resources": resources})
        })
    };
    match segments.as_slice() {
        ["api"] => Some(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": []})),
        ["api", version] => resources("", version),
        ["apis"] => {
            let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
                let versions = groups.entry(r.group).or_default();
                if !versions.contains(&r.version) {
                    versions.push(r.version);
                }
            }
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(group, versions)| {
                    let versions: Vec<Value> = versions
                        .iter()
                        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                        .collect();
                    json!({"name": group, "preferredVersion": versions[0], "versions": versions})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["apis", group, version] => resources(group, version),
        _ => None,
    }
}

fn is_watch(query: &str) -> bool {
    matches!(query_param(query, "watch").as_deref(), Some("true" | "1"))
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "BadRequest", format!("the body is not JSON: {e}")))
}

fn list(shared: &Shared, target: &Target, query: &str) -> Result<Value, ApiError> {
    let selector = Selector::parse(query)?;
    let scope = match &target.namespace {
        Some(ns) => Scope::Namespace(ns.clone()),
        None => Scope::All,
    };
    let store = shared.lock();
    let items = store.matching(target.resource, &scope, &selector);
    Ok(json!({
        "apiVersion": target.resource.api_version(),
        "kind": format!("{}List", target.resource.kind),
        "metadata": {"resourceVersion": store.version.to_string()},
        "items": items,
    }))
}

fn post(shared: &Shared, target: &Target, body: &Bytes) -> Result<Value, ApiError> {
    if target.resource.namespaced && target.namespace.is_none() {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "create namespaced objects under /namespaces/{namespace}/",
        ));
    }
    let object = parse_body(body)?;
    let namespace = target.namespace.clone().unwrap_or_default();
    create(shared, target.resource, &namespace, object)
}

fn get(shared: &Shared, target: &Target, name: &str) -> Result<Value, ApiError> {
    let namespace = target.namespace.clone().unwrap_or_default();
    let store = shared.lock();
    store
        .objects
        .get(&key(target.resource, &namespace, name))
        .map(|o| served(target.resource, o))
        .ok_or_else(|| ApiError::not_found(target.resource, name))
}

fn write_kind(target: &Target) -> Write {
    if target.status {
        Write::Status
    } else {
        Write::Main
    }
}

fn put(shared: &Shared, target: &Target, name: &str, body: &Bytes) -> Result<Value, ApiError> {
    let object = parse_body(body)?;
    if name_of(&object) != name {
        return Err(ApiError::new(
            400,
            "BadRequest",
            format!(
                "the name in the body ('{}') does not match the path ('{name}')",
                name_of(&object)
            ),
        ));
    }
    let namespace = target.namespace.clone().unwrap_or_default();
    let mut store = shared.lock();
    store.update(
        target.resource,
        &namespace,
        name,
        write_kind(target),
        |_| Ok(object),
    )
}

fn patch(
    shared: &Shared,
    target: &Target,
    name: &str,
    content_type: Option<&str>,
    body: &Bytes,
) -> Result<Value, ApiError> {
    let namespace = target.namespace.clone().unwrap_or_default();
    let document = parse_body(body)?;
    shared.lock().update(
        target.resource,
        &namespace,
        name,
        write_kind(target),
        |current| apply_patch(current, content_type, document),
    )
}

fn apply_patch(
    mut current: Value,
    content_type: Option<&str>,
    patch: Value,
) -> Result<Value, ApiError> {
    match content_type {
        Some("application/merge-patch+json") => {
            json_patch::merge(&mut current, &patch);
            Ok(current)
        }
        Some("application/strategic-merge-patch+json") => {
            strategic_merge(&mut current, patch);
            Ok(current)
        }
        Some("application/json-patch+json") => {
            let operations: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| ApiError::new(400, "BadRequest", format!("not a JSON patch: {e}")))?;
            let operations = without_null_tests_of_missing_paths(&current, operations);
            json_patch::patch(&mut current, &operations).map_err(|e| {
                ApiError::new(422, "Invalid", format!("the JSON patch failed: {e}"))
            })?;
            Ok(current)
        }
        other => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the patch content type {other:?} is not supported"),
        )),
    }
}

/// A strategic-merge patch, as far as pilotlight sends them: a merge patch
/// whose lists of objects with a `name` (containers, env) merge by name,
/// where `$patch: delete` removes an entry. (The real server knows each
/// list's merge key from the schema; for the lists pilotlight patches it is
/// `name`.)
fn strategic_merge(current: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *current = patch;
        return;
    };
    if !current.is_object() {
        *current = Value::Object(Default::default());
    }
    let Some(target) = current.as_object_mut() else {
        return;
    };
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                target.remove(&key);
            }
            Value::Array(entries) if entries.iter().all(|e| e.get("name").is_some()) => {
                let list = target
                    .entry(key)
                    .or_insert_with(|| Value::Array(Vec::new()));
                if !list.is_array() {
                    *list = Value::Array(Vec::new());
                }
                let Some(list) = list.as_array_mut() else {
                    continue;
                };
                for entry in entries {
                    let position = list.iter().position(|e| e.get("name") == entry.get("name"));
                    let delete = entry.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (position, delete) {
                        (Some(i), true) => {
                            list.remove(i);
                        }
                        (None, true) => {}
                        (Some(i), false) => strategic_merge(&mut list[i], entry),
                        (None, false) => {
                            let mut new = Value::Object(Default::default());
                            strategic_merge(&mut new, entry);
                            list.push(new);
                        }
                    }
                }
            }
            value @ Value::Object(_) => {
                strategic_merge(target.entry(key).or_insert(Value::Null), value)
            }
            value => {
                target.insert(key, value);
            }
        }
    }
}

/// The real server's JSON patch treats a missing path as null in a `test`
/// (kube's finalizer helper tests `/metadata/finalizers` against null before
/// adding the first one); the json-patch crate does not, so those tests go.
fn without_null_tests_of_missing_paths(
    document: &Value,
    patch: json_patch::Patch,
) -> json_patch::Patch {
    json_patch::Patch(
        patch
            .0
            .into_iter()
            .filter(|op| match op {
                json_patch::PatchOperation::Test(test) => {
                    !(test.value.is_null() && document.pointer(test.path.as_str()).is_none())
                }
                _ => true,
            })
            .collect(),
    )
}

impl Watcher {
    /// The line this watch sends for a change, if the change concerns it.
    fn event_line(&self, change: &Change) -> Option<Bytes> {
        let sees = |object: &Value| self.scope.contains(object) && self.selector.matches(object);
        let now = sees(&change.object);
        let before = change.before.as_ref().is_some_and(sees);
        let kind = match (change.kind, before, now) {
            ("MODIFIED", true, true) => "MODIFIED",
            ("MODIFIED", false, true) => "ADDED",
            ("MODIFIED", true, false) => "DELETED",
            ("ADDED" | "DELETED", _, true) => change.kind,
            _ => return None,
        };
        Some(event_line(kind, &served(self.resource, &change.object)))
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

fn bookmark(resource: &ResourceType, version: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": version.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"apiVersion": resource.api_version(), "kind": resource.kind, "metadata": metadata}),
    )
}

fn watch(shared: &Shared, target: &Target, query: &str) -> Response {
    let selector = match Selector::parse(query) {
        Ok(selector) => selector,
        Err(error) => return error.into_response(),
    };
    let scope = match &target.namespace {
        Some(ns) => Scope::Namespace(ns.clone()),
        None => Scope::All,
    };
    let from = query_param(query, "resourceVersion").unwrap_or_default();
    let bookmarks = matches!(
        query_param(query, "allowWatchBookmarks").as_deref(),
        Some("true" | "1")
    );
    let initial_events = matches!(
        query_param(query, "sendInitialEvents").as_deref(),
        Some("true" | "1")
    );
    let timeout = query_param(query, "timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs);
    let mut store = shared.lock();
    let (sender, receiver) = mpsc::unbounded_channel();
    let watcher = Watcher {
        resource: target.resource,
        scope: scope.clone(),
        selector: selector.clone(),
        bookmarks,
        sender,
    };
    if from.is_empty() || from == "0" || initial_events {
        for object in store.matching(target.resource, &scope, &selector) {
            let _ = watcher.sender.send(event_line("ADDED", &object));
        }
        if initial_events {
            let _ = watcher
                .sender
                .send(bookmark(target.resource, store.version, true));
        }
    } else {
        let from: u64 = from.parse().unwrap_or(0);
        if from < store.oldest {
            let gone = ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {from} ({})", store.oldest),
            );
            if store.gone_as_http {
                return gone.into_response();
            }
            return Response::new(Body::from(event_line("ERROR", &gone.status())));
        }
        for change in store.history.iter().filter(|c| c.version > from) {
            if change.storage == target.resource.storage()
                && let Some(line) = watcher.event_line(change)
            {
                let _ = watcher.sender.send(line);
            }
        }
    }
    if bookmarks && !initial_events {
        let _ = watcher
            .sender
            .send(bookmark(target.resource, store.version, false));
    }
    store.watchers.push(watcher);
    drop(store);
    shared.notify();
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|line| (Ok::<_, Infallible>(line), receiver))
    });
    let body = match timeout {
        Some(timeout) => {
            use futures::StreamExt;
            Body::from_stream(stream.take_until(tokio::time::sleep(timeout)))
        }
        None => Body::from_stream(stream),
    };
    Response::new(body)
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}
