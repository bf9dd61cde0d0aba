//! Shared helpers for the integration tests: a real server in process, real
//! subscriber servers, and an HTTP client.
#![allow(dead_code)]

pub mod apiserver;
pub mod images;
pub mod oidc;
pub mod proxy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pilotlight::cloudevent::{Event, parse_http};
use pilotlight::server::{Server, ServerConfig};

/// A server started on temporary folders, with its manifests in `manifests`.
pub struct TestServer {
    pub server: Server,
    pub manifests: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start(files: &[(&str, &str)]) -> TestServer {
        Self::start_with(files, |_| {}).await
    }

    pub async fn start_with(
        files: &[(&str, &str)],
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).expect("manifest dir");
        for (name, text) in files {
            std::fs::write(manifests.join(name), text).expect("write manifest");
        }
        let mut config = config(&manifests, &dir.path().join("data"));
        adjust(&mut config);
        let server = Server::start(config).await.expect("server starts");
        TestServer {
            server,
            manifests,
            dir,
        }
    }

    pub fn broker_url(&self, namespace: &str, name: &str) -> String {
        format!("http://{}/{namespace}/{name}", self.server.listen)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.admin)
    }

    /// `GET path` on the main listener with `Host: host`, such as a
    /// Service's `hello.default.localhost`.
    pub async fn get_host(&self, host: &str, path: &str) -> Reply {
        request(
            Method::GET,
            &format!("http://{}{path}", self.server.listen),
            &[("host", host)],
            "",
        )
        .await
    }

    /// Every revision's status, by name, as the admin API gives it.
    pub async fn revisions(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        let list = request(Method::GET, &self.admin_url("/api/v1/revisions"), &[], "").await;
        let body: serde_json::Value = serde_json::from_str(&list.body).expect("json");
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|r| {
                (
                    r["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                    r["status"].clone(),
                )
            })
            .collect()
    }

    /// The Ready condition of object `name` in an admin API collection
    /// (`brokers`, `sources`); Null while it is not listed.
    pub async fn ready_condition(&self, collection: &str, name: &str) -> serde_json::Value {
        let list = request(
            Method::GET,
            &self.admin_url(&format!("/api/v1/{collection}")),
            &[],
            "",
        )
        .await;
        let body: serde_json::Value = serde_json::from_str(&list.body).expect("json");
        body["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["metadata"]["name"] == name))
            .and_then(|item| item["status"]["conditions"].as_array())
            .and_then(|conditions| conditions.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `name`'s Ready condition has `status` ("True", "False")
    /// and its reason and message together contain every one of `words`;
    /// returns it. Panics with the last condition seen after `within`.
    pub async fn wait_ready_condition(
        &self,
        collection: &str,
        name: &str,
        status: &str,
        words: &[&str],
        within: Duration,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let condition = self.ready_condition(collection, name).await;
            let text = format!("{} {}", condition["reason"], condition["message"]);
            if condition["status"] == status && words.iter().all(|w| text.contains(w)) {
                return condition;
            }
            assert!(
                start.elapsed() < within,
                "{collection}/{name} is not {status} with {words:?} after {within:?}: {condition}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Loads the manifests folder again and applies it, as hot reload does.
    pub async fn reapply(&self) {
        let manifests = pilotlight::control::manifest::load(
            std::slice::from_ref(&self.manifests),
            pilotlight::api::broker::BrokerClass::Log,
        );
        assert!(manifests.errors.is_empty(), "{:?}", manifests.errors);
        self.server.control.apply(Arc::new(manifests)).await;
    }
}

/// Polls `done` every 50 ms until it holds; panics after `within`.
/// A port nothing listens on right now, for a pilotlight run as a process.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

pub async fn wait_until<F: AsyncFnMut() -> bool>(what: &str, within: Duration, mut done: F) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < within, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn config(manifests: &Path, data: &Path) -> ServerConfig {
    ServerConfig::on_free_ports(manifests.to_owned(), data.to_owned())
}

/// Sends event `id` (type `demo`) to the ingress at `url` until it is
/// accepted (a broker starts in its own time); panics after `within`.
pub async fn wait_accepted(url: &str, id: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let reply = send(url, id, "demo").await;
        if reply.status == StatusCode::ACCEPTED {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not accept event {id}: {} {}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn broker(name: &str, extra: &str) -> String {
    format!("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {name}\n{extra}")
}

/// A trigger's `spec.delivery` (indented under `spec`): `retry` quick
/// retries, then the dead-letter sink at `sink`.
pub fn with_dead_letters(retry: u32, sink: &str) -> String {
    format!(
        "  delivery:\n    retry: {retry}\n    backoffDelay: PT0.01S\n    deadLetterSink:\n      uri: {sink}\n"
    )
}

pub fn trigger(name: &str, broker: &str, subscriber: &str, extra: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\nspec:\n  broker: {broker}\n  subscriber:\n    uri: {subscriber}\n{extra}"
    )
}

/// What a [`Subscriber`] answers: status, extra headers, body.
pub type Answer = (StatusCode, Vec<(&'static str, String)>, Bytes);

/// A received request: the event (if it parsed), its headers, and when.
#[derive(Clone, Debug)]
pub struct Received {
    pub event: Option<Event>,
    pub headers: HeaderMap,
    pub at: Instant,
}

type Behaviour = Arc<dyn Fn(&Received, usize) -> Answer + Send + Sync>;
/// How long the subscriber waits before answering the request with that index.
type Delay = Arc<dyn Fn(usize) -> Duration + Send + Sync>;

/// A real HTTP subscriber that records what it receives and answers as told
/// (the closure gets the request and how many came before it).
#[derive(Clone)]
pub struct Subscriber {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    pub max_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Subscriber {
    pub async fn accepting() -> Subscriber {
        Self::start(
            |_, _| (StatusCode::ACCEPTED, vec![], Bytes::new()),
            Duration::ZERO,
        )
        .await
    }

    /// Answers every request 500 "boom": deliveries to it go to the
    /// dead-letter sink once retries run out.
    pub async fn failing() -> Subscriber {
        Self::start(
            |_, _| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    vec![],
                    Bytes::from("boom"),
                )
            },
            Duration::ZERO,
        )
        .await
    }

    /// Answers each event with a reply in binary mode: id `reply-{its id}`,
    /// source `/replier`, type `reply`, text/plain data from `data(its id)`.
    pub async fn replying(data: impl Fn(&str) -> Bytes + Send + Sync + 'static) -> Subscriber {
        Self::start(
            move |received, _| {
                let id = received.event.as_ref().map_or("", |e| e.id());
                (
                    StatusCode::OK,
                    vec![
                        ("ce-specversion", "1.0".into()),
                        ("ce-id", format!("reply-{id}")),
                        ("ce-source", "/replier".into()),
                        ("ce-type", "reply".into()),
                        ("content-type", "text/plain".into()),
                    ],
                    data(id),
                )
            },
            Duration::ZERO,
        )
        .await
    }

    pub async fn start(
        behaviour: impl Fn(&Received, usize) -> Answer + Send + Sync + 'static,
        delay: Duration,
    ) -> Subscriber {
        Self::start_with_delays(behaviour, move |_| delay).await
    }

    /// Like [`Subscriber::start`], with a delay per request (by its index).
    pub async fn start_with_delays(
        behaviour: impl Fn(&Received, usize) -> Answer + Send + Sync + 'static,
        delay: impl Fn(usize) -> Duration + Send + Sync + 'static,
    ) -> Subscriber {
        let delay: Delay = Arc::new(delay);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let subscriber = Subscriber {
            addr,
            received: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
        };
        let behaviour: Behaviour = Arc::new(behaviour);
        let this = subscriber.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let this = this.clone();
                let behaviour = behaviour.clone();
                let delay = delay.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let this = this.clone();
                        let behaviour = behaviour.clone();
                        let delay = delay.clone();
                        async move {
                            Ok::<_, hyper::Error>(this.handle(request, &behaviour, &delay).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        subscriber
    }

    async fn handle(
        &self,
        request: Request<Incoming>,
        behaviour: &Behaviour,
        delay: &Delay,
    ) -> Response<Full<Bytes>> {
        use std::sync::atomic::Ordering;
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let event = parse_http(&parts.headers, body)
            .ok()
            .and_then(|(_, mut e)| e.pop());
        let received = Received {
            event,
            headers: parts.headers,
            at: Instant::now(),
        };
        let count = {
            let mut all = self.received.lock().expect("lock");
            all.push(received.clone());
            all.len() - 1
        };
        let delay = delay(count);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let (status, headers, body) = behaviour(&received, count);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        for (name, value) in headers {
            response.headers_mut().insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(&value).expect("header value"),
            );
        }
        response
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn events(&self) -> Vec<Event> {
        self.received
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|r| r.event.clone())
            .collect()
    }

    pub fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }

    /// Waits until `n` requests arrived (panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "expected {n} requests at {}, got {}",
                self.addr,
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.events()
    }
}

/// A response read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

pub async fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::new(Full::new(body.into()));
    *request.method_mut() = method;
    *request.uri_mut() = url.parse().expect("url");
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    let response = client.request(request).await.expect("request");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The items of an admin API collection (`channels`, `sources`) of the
/// pilotlight whose admin listener is `admin`.
pub async fn admin_list(admin: SocketAddr, collection: &str) -> Vec<serde_json::Value> {
    let url = format!("http://{admin}/api/v1/{collection}");
    let list = request(Method::GET, &url, &[], "").await;
    let list: serde_json::Value = serde_json::from_str(&list.body).expect("a JSON list");
    list["items"].as_array().cloned().unwrap_or_default()
}

/// Posts a binary-mode event with the given id and type.
pub async fn send(url: &str, id: &str, ty: &str) -> Reply {
    request(
        Method::POST,
        url,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-source", "/test"),
            ("ce-type", ty),
            ("content-type", "application/json"),
        ],
        format!("{{\"id\":\"{id}\"}}"),
    )
    .await
}

/// Where an external broker the suites need lives, and how a user starts one.
pub struct ExternalBroker {
    pub name: &'static str,
    /// The variable that points the suites at the user's own broker.
    pub env: &'static str,
    pub default: &'static str,
    pub how_to_start: &'static str,
}

pub const RABBITMQ: ExternalBroker = ExternalBroker {
    name: "RabbitMQ",
    env: "PILOTLIGHT_TEST_RABBITMQ_URI",
    default: "amqp://guest:guest@127.0.0.1:5672/%2f",
    how_to_start: "start one with `docker compose up -d rabbitmq` (or `apt-get install rabbitmq-server`), or point PILOTLIGHT_TEST_RABBITMQ_URI at yours",
};

pub const KAFKA: ExternalBroker = ExternalBroker {
    name: "Kafka",
    env: "PILOTLIGHT_TEST_KAFKA_BOOTSTRAP_SERVERS",
    default: "127.0.0.1:9092",
    how_to_start: "start one with `docker compose up -d kafka`, or `.ci/start-kafka` (tansu), or point PILOTLIGHT_TEST_KAFKA_BOOTSTRAP_SERVERS at yours",
};

impl ExternalBroker {
    /// The broker's address when it accepts connections. Under `CI=true` an
    /// unreachable broker fails the test; elsewhere the test is skipped after
    /// saying how to start one.
    pub async fn address(&self) -> Option<String> {
        let address = std::env::var(self.env).unwrap_or_else(|_| self.default.to_owned());
        let host_port = host_port(&address);
        let reachable = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect(host_port.clone()),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if reachable {
            return Some(address);
        }
        let message = format!(
            "{} is not reachable at {host_port} ({}={address}): {}",
            self.name, self.env, self.how_to_start
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}");
        }
        eprintln!("skipping: {message}");
        None
    }
}

/// `host:port` of the first server in a URI or a bootstrap list.
fn host_port(address: &str) -> String {
    let first = address.split(',').next().unwrap_or_default();
    let without_scheme = first.split_once("://").map_or(first, |(_, rest)| rest);
    let authority = without_scheme.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    }
}

/// Waits until every id in `accepted` reached one of the subscribers (at
/// least once), failing with how many are missing after `within`.
pub async fn wait_all_delivered(
    accepted: &std::collections::HashSet<String>,
    subscribers: &[&Subscriber],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let delivered: std::collections::HashSet<String> = subscribers
            .iter()
            .flat_map(|s| s.events())
            .map(|e| e.id().to_owned())
            .collect();
        let missing = accepted.difference(&delivered).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} accepted events never arrived",
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The filter of [`typed_extensions_reach_the_filter`]: `'TRUE' = urgent`
/// casts the string to the attribute's type, so it holds for a Boolean
/// `urgent` and not for the text "true"; `retries IN ('+3')` likewise for an
/// Integer.
pub const TYPED_EXTENSION_FILTER: &str =
    "  filters:\n    - cesql: \"'TRUE' = urgent AND retries IN ('+3')\"\n";

/// Sends the same extensions twice to `broker_url`: typed, in structured
/// mode (`"urgent": true, "retries": 3`), and as text, in binary mode; a
/// trigger with [`TYPED_EXTENSION_FILTER`] must get only the typed one, with
/// the extensions as the subscriber's binary mode carries them.
pub async fn typed_extensions_reach_the_filter(broker_url: &str, subscriber: &Subscriber) {
    let typed = r#"{"specversion":"1.0","id":"typed","source":"/test","type":"t","urgent":true,"retries":3}"#;
    let reply = request(
        Method::POST,
        broker_url,
        &[("content-type", "application/cloudevents+json")],
        typed,
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let text = request(
        Method::POST,
        broker_url,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "text"),
            ("ce-source", "/test"),
            ("ce-type", "t"),
            ("ce-urgent", "true"),
            ("ce-retries", "3"),
        ],
        "",
    )
    .await;
    assert_eq!(text.status, StatusCode::ACCEPTED, "{}", text.body);
    let events = subscriber.wait_for(1, Duration::from_secs(20)).await;
    // Give the text event the time to arrive if it wrongly passes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<String> = subscriber
        .events()
        .iter()
        .map(|e| e.id().to_owned())
        .collect();
    assert_eq!(ids, ["typed"], "{events:?}");
    assert_eq!(events[0].attribute("urgent"), Some("true"));
    assert_eq!(events[0].attribute("retries"), Some("3"));
}

/// Whether `python3` can import `module` (a real client used as a peer).
/// Under `CI=true` a missing one fails the test; elsewhere the test is
/// skipped after saying how to install it (`pip` is the `pip install`
/// argument, as .ci/run gives it).
pub fn python_has(module: &str, pip: &str) -> bool {
    let found = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|out| out.status.success());
    if found {
        return true;
    }
    let message =
        format!("python3 cannot import {module}: install it with `python3 -m pip install '{pip}'`");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("skipping: {message}");
    false
}

/// librdkafka's mock Kafka cluster (one broker, id 1, real TCP) with
/// `topic` in `partitions` partitions: a Kafka a test can take down and
/// bring back.
pub fn mock_kafka(
    topic: &str,
    partitions: i32,
) -> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    cluster
        .create_topic(topic, partitions, 1)
        .expect("mock topic");
    cluster
}
