//! Traces over OTLP: `pilotlight run` exports its spans to a collector (here
//! an OTLP/HTTP receiver in the test that decodes them with the
//! OpenTelemetry protocol's own types), and one event's whole path, through
//! a reply and across a restart, is one trace with the right parents.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use support::{Subscriber, broker, request, trigger, wait_until};

const WAIT: Duration = Duration::from_secs(30);
/// The producer's span, as its `traceparent` names it.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
    failed: bool,
}

/// An OTLP/HTTP (protobuf) receiver: `POST /v1/traces`.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    async fn start() -> (Collector, SocketAddr) {
        let collector = Collector::default();
        let kept = collector.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let kept = kept.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(export) => {
                            kept.keep(export);
                            StatusCode::OK
                        }
                        Err(_) => StatusCode::BAD_REQUEST,
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (collector, address)
    }

    fn keep(&self, export: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().expect("lock");
        for resource in export.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| {
                    Span {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name,
                        attributes: s
                            .attributes
                            .into_iter()
                            .map(|kv| (kv.key, text(kv.value.and_then(|v| v.value))))
                            .collect(),
                        failed: s.status.is_some_and(|st| st.code == 2),
                    }
                }));
            }
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().expect("lock").clone()
    }

    /// Waits until a span named `name` with `attribute` = `value` arrived.
    async fn wait_span(&self, name: &str, attribute: &str, value: &str) -> Span {
        let find = || {
            self.spans()
                .into_iter()
                .find(|s| s.name == name && s.attributes.get(attribute).is_some_and(|v| v == value))
        };
        wait_until(
            &format!("a {name} span with {attribute}={value}"),
            WAIT,
            async || find().is_some(),
        )
        .await;
        find().expect("found")
    }

    /// The spans whose parent is `parent`.
    fn children(&self, parent: &Span) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| s.parent == parent.span_id)
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s,
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// `pilotlight run` as its own process (the tracer is process-wide),
/// exporting to `collector` in batches every 100 ms.
struct Pilotlight {
    child: Child,
    listen: u16,
}

impl Pilotlight {
    async fn start(manifests: &Path, data: &Path, collector: SocketAddr) -> Pilotlight {
        Self::start_with(manifests, data, collector, &[]).await
    }

    async fn start_with(
        manifests: &Path,
        data: &Path,
        collector: SocketAddr,
        extra: &[&str],
    ) -> Pilotlight {
        let (listen, admin) = (support::free_port(), support::free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_pilotlight"))
            .args(["run", "--no-watch", "-f"])
            .arg(manifests)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--otlp-endpoint", &format!("http://{collector}")])
            .args(extra)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pilotlight starts");
        let started = Pilotlight { child, listen };
        let ready: http::Uri = format!("http://127.0.0.1:{admin}/readyz")
            .parse()
            .expect("uri");
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<Bytes>>();
        // Refused until it listens: not an error yet.
        wait_until("pilotlight is ready", WAIT, async || {
            client
                .get(ready.clone())
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
        started
    }

    /// SIGTERM, as a user's Ctrl-C: pilotlight stops gracefully and
    /// exports the spans it still holds.
    fn stop(mut self) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "pilotlight did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ingress(&self) -> String {
        self.ingress_of("default")
    }

    fn ingress_of(&self, broker: &str) -> String {
        format!("http://127.0.0.1:{}/default/{broker}", self.listen)
    }
}

impl Drop for Pilotlight {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(manifests: &Path, files: &[(&str, String)]) {
    std::fs::create_dir_all(manifests).expect("dir");
    for (name, text) in files {
        std::fs::write(manifests.join(name), text).expect("write");
    }
}

fn only_type(ty: &str) -> String {
    format!("  filter:\n    attributes:\n      type: {ty}\n")
}

/// Sends one event in binary mode, under the producer's span.
async fn send_traced(url: &str, id: &str) -> StatusCode {
    let traceparent = format!("00-{TRACE_ID}-{PRODUCER_SPAN}-01");
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "/producer"),
        ("ce-type", "order"),
        ("content-type", "text/plain"),
        ("traceparent", traceparent.as_str()),
    ];
    request(Method::POST, url, &headers, "hello").await.status
}

/// The span of the attempt whose request `received` was, found by the
/// `traceparent` that request carried.
fn attempt_of(collector: &Collector, received: &support::Received) -> Span {
    let header = received.headers["traceparent"].to_str().expect("ascii");
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!(parts[1], TRACE_ID, "the request continues the trace");
    let id = parts[2];
    collector
        .spans()
        .into_iter()
        .find(|s| s.span_id == id)
        .unwrap_or_else(|| panic!("no span {id} for the request's traceparent {header}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_and_its_reply_are_one_trace_from_the_producer_to_the_last_subscriber() {
    let (collector, address) = Collector::start().await;
    let replier = Subscriber::replying(|_| Bytes::from_static(b"thanks")).await;
    let last = Subscriber::accepting().await;
    let dir = tempfile::tempdir().expect("tmp");
    let manifests = dir.path().join("manifests");
    write(
        &manifests,
        &[
            ("broker.yaml", broker("default", "")),
            (
                "orders.yaml",
                trigger("orders", "default", &replier.url("/"), &only_type("order")),
            ),
            (
                "replies.yaml",
                trigger("replies", "default", &last.url("/"), &only_type("reply")),
            ),
        ],
    );
    let pilotlight = Pilotlight::start(&manifests, &dir.path().join("data"), address).await;
    assert_eq!(
        send_traced(&pilotlight.ingress(), "e1").await,
        StatusCode::ACCEPTED
    );
    let replies = last.wait_for(1, WAIT).await;
    let ingress = collector
        .wait_span("broker.ingress", "cloudevents.event_id", "e1")
        .await;
    assert_eq!(ingress.trace_id, TRACE_ID);
    assert_eq!(
        ingress.parent, PRODUCER_SPAN,
        "the producer's span is the parent"
    );
    assert_eq!(
        ingress.attributes["messaging.destination.name"],
        "default/default"
    );
    assert_eq!(ingress.attributes["http.response.status_code"], "202");
    let stored = collector.children(&ingress);
    assert!(
        stored.iter().any(|s| s.name == "broker.store"),
        "the ingress has a store span: {stored:?}"
    );

    // The event was stored with the ingress as its creation context: the
    // subscriber sees it as the distributed-tracing extension.
    let to_replier = replier.received.lock().expect("lock")[0].clone();
    let to_replier = &to_replier;
    let extension = to_replier.headers["ce-traceparent"]
        .to_str()
        .expect("ascii");
    assert_eq!(extension, format!("00-{TRACE_ID}-{}-01", ingress.span_id));

    let deliver = collector
        .wait_span("trigger.deliver", "pilotlight.trigger", "default/orders")
        .await;
    assert_eq!(
        deliver.parent, ingress.span_id,
        "delivered under the ingress"
    );
    assert_eq!(deliver.attributes["pilotlight.outcome"], "replied");
    let attempt = attempt_of(&collector, to_replier);
    assert_eq!(attempt.name, "delivery.attempt");
    assert_eq!(attempt.parent, deliver.span_id);
    assert_eq!(attempt.attributes["http.response.status_code"], "200");
    assert_eq!(attempt.attributes["pilotlight.retry"], "0");

    // The reply re-entered the broker under the delivery that got it, and
    // its own delivery continues from there.
    let reply = collector
        .wait_span("trigger.reply", "cloudevents.event_id", "reply-e1")
        .await;
    assert_eq!(reply.parent, deliver.span_id);
    let deliver_reply = collector
        .wait_span("trigger.deliver", "pilotlight.trigger", "default/replies")
        .await;
    assert_eq!(deliver_reply.trace_id, TRACE_ID);
    assert_eq!(deliver_reply.parent, reply.span_id);
    let last_received = last.received.lock().expect("lock")[0].clone();
    let last_attempt = attempt_of(&collector, &last_received);
    assert_eq!(last_attempt.parent, deliver_reply.span_id);
    let reply_extension = replies[0].attribute("traceparent").expect("stamped");
    assert!(
        reply_extension.contains(&reply.span_id),
        "{reply_extension}"
    );
    pilotlight.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_after_a_restart_continues_the_trace_the_event_was_stored_with() {
    delivered_after_a_restart("later", &broker("later", ""), &[]).await;
}

/// The same across a restart with the event held by RabbitMQ (its
/// distributed-tracing extension travels as an AMQP header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_from_rabbitmq_after_a_restart_continues_the_trace() {
    let Some(uri) = support::RABBITMQ.address().await else {
        return;
    };
    let name = format!("traced-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let class = "  annotations:\n    eventing.knative.dev/broker.class: RabbitMQBroker\n";
    delivered_after_a_restart(&name, &broker(&name, class), &["--rabbitmq-uri", &uri]).await;
}

/// An event stored by one pilotlight, whose subscriber refuses it until
/// that pilotlight stopped, is delivered by the next one under the
/// ingress span that stored it.
async fn delivered_after_a_restart(name: &str, broker_yaml: &str, extra: &[&str]) {
    let (collector, address) = Collector::start().await;
    let open = Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    // Refuses (503) until the first pilotlight has stopped.
    let subscriber = Subscriber::start(
        move |_, _| match gate.load(Ordering::SeqCst) {
            true => (StatusCode::ACCEPTED, vec![], Bytes::new()),
            false => (StatusCode::SERVICE_UNAVAILABLE, vec![], Bytes::new()),
        },
        Duration::ZERO,
    )
    .await;
    let retries =
        "  delivery:\n    retry: 1000\n    backoffDelay: PT0.05S\n    backoffPolicy: linear\n";
    let dir = tempfile::tempdir().expect("tmp");
    let manifests = dir.path().join("manifests");
    write(
        &manifests,
        &[
            ("broker.yaml", broker_yaml.to_owned()),
            (
                "later.yaml",
                // Named as the broker: a RabbitMQ queue of an earlier run
                // (named after the trigger) is not this run's.
                trigger(name, name, &subscriber.url("/"), retries),
            ),
        ],
    );
    let data = dir.path().join("data");
    let first = Pilotlight::start_with(&manifests, &data, address, extra).await;
    assert_eq!(
        send_traced(&first.ingress_of(name), "e2").await,
        StatusCode::ACCEPTED
    );
    let ingress = collector
        .wait_span("broker.ingress", "cloudevents.event_id", "e2")
        .await;
    subscriber.wait_for(2, WAIT).await;
    first.stop();
    let refused = collector
        .wait_span("delivery.attempt", "http.response.status_code", "503")
        .await;
    assert!(refused.failed, "a refused attempt is marked failed");

    open.store(true, Ordering::SeqCst);
    let before = subscriber.count();
    let second = Pilotlight::start_with(&manifests, &data, address, extra).await;
    subscriber.wait_for(before + 1, WAIT).await;
    let delivered = collector
        .wait_span("delivery.attempt", "http.response.status_code", "202")
        .await;
    let deliver = collector
        .spans()
        .into_iter()
        .find(|s| s.span_id == delivered.parent)
        .expect("the attempt's delivery span");
    assert_eq!(deliver.name, "trigger.deliver");
    assert_eq!(deliver.trace_id, TRACE_ID);
    assert_eq!(
        deliver.parent, ingress.span_id,
        "the delivery after the restart continues under the ingress before it"
    );
    assert_eq!(deliver.attributes["pilotlight.outcome"], "delivered");
    second.stop();
}

/// A trigger delivering to a Service at zero: the delivery's attempt is the
/// parent of the proxy's span, which holds the wait in the activator and,
/// inside it, the cold start of the instance it waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_to_a_service_at_zero_traces_the_proxy_the_wait_and_the_cold_start() {
    let (collector, address) = Collector::start().await;
    let hello = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/initial-scale: \"0\"\n    spec:\n      containers:\n        - command: [\"{}\", hello]\n",
        env!("CARGO_BIN_EXE_pilotlight")
    );
    let to_hello = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: to-hello\nspec:\n  broker: default\n  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: hello\n";
    let dir = tempfile::tempdir().expect("tmp");
    let manifests = dir.path().join("manifests");
    write(
        &manifests,
        &[
            ("broker.yaml", broker("default", "")),
            ("hello.yaml", hello),
            ("to-hello.yaml", to_hello.to_owned()),
        ],
    );
    let pilotlight = Pilotlight::start(&manifests, &dir.path().join("data"), address).await;
    assert_eq!(
        send_traced(&pilotlight.ingress(), "e3").await,
        StatusCode::ACCEPTED
    );
    let proxy = collector
        .wait_span(
            "serving.proxy",
            "pilotlight.revision",
            "default/hello-00001",
        )
        .await;
    assert_eq!(proxy.trace_id, TRACE_ID);
    assert_eq!(proxy.attributes["http.response.status_code"], "200");
    assert_eq!(proxy.attributes["pilotlight.cold_start"], "true");
    let attempt = collector
        .spans()
        .into_iter()
        .find(|s| s.span_id == proxy.parent)
        .expect("the proxy's parent");
    assert_eq!(
        attempt.name, "delivery.attempt",
        "handed over in process, traced alike"
    );
    let queue = collector
        .children(&proxy)
        .into_iter()
        .find(|s| s.name == "activator.queue")
        .expect("the wait in the activator");
    let cold = collector
        .children(&queue)
        .into_iter()
        .find(|s| s.name == "instance.cold_start")
        .expect("the cold start inside the wait");
    assert!(
        cold.attributes["pilotlight.instance"].starts_with("hello-00001-"),
        "{cold:?}"
    );
    pilotlight.stop();
}

/// Sampling is parent-based: with `--trace-sampling 0` a request that
/// arrives sampled is still traced, and one that arrives without a trace is
/// not, though its event still carries the (unsampled) context so that its
/// deliveries, later, keep the decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_senders_decision() {
    let (collector, address) = Collector::start().await;
    let subscriber = Subscriber::accepting().await;
    let dir = tempfile::tempdir().expect("tmp");
    let manifests = dir.path().join("manifests");
    write(
        &manifests,
        &[
            ("broker.yaml", broker("default", "")),
            (
                "all.yaml",
                trigger("all", "default", &subscriber.url("/"), ""),
            ),
        ],
    );
    let pilotlight = Pilotlight::start_with(
        &manifests,
        &dir.path().join("data"),
        address,
        &["--trace-sampling", "0"],
    )
    .await;
    let url = pilotlight.ingress();
    assert_eq!(
        support::send(&url, "untraced", "order").await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(send_traced(&url, "traced").await, StatusCode::ACCEPTED);
    let received = subscriber.wait_for(2, WAIT).await;
    collector
        .wait_span("trigger.deliver", "cloudevents.event_id", "traced")
        .await;
    let untraced = received
        .iter()
        .find(|e| e.id() == "untraced")
        .expect("delivered");
    let context = untraced.attribute("traceparent").expect("stamped");
    assert!(context.ends_with("-00"), "not sampled: {context}");
    pilotlight.stop();
    let spans = collector.spans();
    assert!(
        spans.iter().all(
            |s| s.attributes.get("cloudevents.event_id").map(String::as_str) != Some("untraced")
        ),
        "nothing of the untraced event was recorded: {spans:?}"
    );
}
