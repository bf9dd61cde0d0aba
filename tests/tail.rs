//! `pilotlight tail` and the admin API's event stream
//! (`GET /api/v1/brokers/{ns}/{name}/events`) against a real server: live
//! and `--since` tails of the log, memory and Kafka backends, filters, the
//! refusals, a slow client, and the command itself.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{KAFKA, RABBITMQ, Subscriber, TestServer, request, send, wait_accepted};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);
const BIN: &str = env!("CARGO_BIN_EXE_pilotlight");

fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..10])
}

/// One Server-Sent Event.
#[derive(Debug)]
struct Sse {
    kind: String,
    data: String,
}

/// An open tail, read as the console would.
struct Tail {
    body: Incoming,
    pending: Vec<u8>,
}

/// Opens `path` (with its query) on the admin listener; `Err` with the
/// status and body when refused.
async fn open(s: &TestServer, path: &str) -> Result<Tail, (StatusCode, String)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut request = Request::new(Empty::new());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = s.admin_url(path).parse().expect("url");
    let response = client.request(request).await.expect("request");
    let (parts, body) = response.into_parts();
    if !parts.status.is_success() {
        let text = body.collect().await.expect("body").to_bytes();
        return Err((parts.status, String::from_utf8_lossy(&text).into_owned()));
    }
    assert_eq!(
        parts.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"text/event-stream"[..])
    );
    Ok(Tail {
        body,
        pending: Vec::new(),
    })
}

impl Tail {
    /// The next event or notice (comments are passed over).
    async fn next(&mut self) -> Sse {
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let message: Vec<u8> = self.pending.drain(..end + 2).collect();
                let text = String::from_utf8(message).expect("utf-8");
                let mut sse = Sse {
                    kind: "message".into(),
                    data: String::new(),
                };
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        sse.kind = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        assert!(sse.data.is_empty(), "one data line per event: {text}");
                        sse.data = v.to_owned();
                    }
                }
                if sse.data.is_empty() {
                    continue; // a comment
                }
                return sse;
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("the tail sends within the wait")
                .expect("the stream goes on")
                .expect("a frame");
            if let Ok(data) = frame.into_data() {
                self.pending.extend_from_slice(&data);
            }
        }
    }

    /// The ids of the next `n` events (failing on a notice).
    async fn ids(&mut self, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        while ids.len() < n {
            let sse = self.next().await;
            assert_eq!(sse.kind, "message", "{sse:?}");
            let event: serde_json::Value = serde_json::from_str(&sse.data).expect("event JSON");
            assert_eq!(event["specversion"], "1.0", "structured mode: {event}");
            ids.push(event["id"].as_str().expect("id").to_owned());
        }
        ids
    }
}

async fn send_all(url: &str, ids: &[&str], ty: &str) {
    for id in ids {
        let reply = send(url, id, ty).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{id}: {}", reply.body);
    }
}

fn strings(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn log_tail_follows_new_events_in_order_and_since_starts_in_the_past() {
    let s = TestServer::start(&[("b.yaml", &support::broker("default", ""))]).await;
    let url = s.broker_url("default", "default");
    wait_accepted(&url, "before", WAIT).await;

    let mut live = open(&s, "/api/v1/brokers/default/default/events")
        .await
        .expect("tail opens");
    send_all(&url, &["a1", "a2", "a3", "a4"], "demo").await;
    assert_eq!(live.ids(4).await, strings(&["a1", "a2", "a3", "a4"]));

    // Two tails at once, one from the past: the event before either opened too.
    let mut past = open(&s, "/api/v1/brokers/default/default/events?since=1h")
        .await
        .expect("tail opens");
    assert_eq!(
        past.ids(5).await,
        strings(&["before", "a1", "a2", "a3", "a4"])
    );
    send_all(&url, &["a5"], "demo").await;
    assert_eq!(past.ids(1).await, strings(&["a5"]));
    assert_eq!(live.ids(1).await, strings(&["a5"]));

    // An RFC 3339 time after everything stored: only what comes next.
    let later = (chrono::Utc::now() + chrono::TimeDelta::seconds(1)).to_rfc3339();
    let later = percent_encoding::utf8_percent_encode(&later, percent_encoding::NON_ALPHANUMERIC);
    let mut future = open(
        &s,
        &format!("/api/v1/brokers/default/default/events?since={later}"),
    )
    .await
    .expect("tail opens");
    send_all(&url, &["a6"], "demo").await;
    assert_eq!(future.ids(1).await, strings(&["a6"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_tail_since_sees_what_the_broker_still_holds() {
    // A subscriber that keeps its first delivery waiting: the memory broker
    // holds every event from it on.
    let slow = Subscriber::start_with_delays(
        |_, _| (StatusCode::ACCEPTED, vec![], Bytes::new()),
        |_| Duration::from_secs(120),
    )
    .await;
    let s = TestServer::start(&[
        (
            "b.yaml",
            &support::broker(
                "mem",
                "  annotations:\n    eventing.knative.dev/broker.class: Memory\n",
            ),
        ),
        (
            "t.yaml",
            &support::trigger("held", "mem", &slow.url("/"), ""),
        ),
    ])
    .await;
    let url = s.broker_url("default", "mem");
    wait_accepted(&url, "m1", WAIT).await;
    send_all(&url, &["m2"], "demo").await;
    slow.wait_for(1, WAIT).await;

    let mut tail = open(&s, "/api/v1/brokers/default/mem/events?since=10m")
        .await
        .expect("tail opens");
    assert_eq!(tail.ids(2).await, strings(&["m1", "m2"]));
    send_all(&url, &["m3"], "demo").await;
    assert_eq!(tail.ids(1).await, strings(&["m3"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filter_applies_and_bad_requests_are_refused_with_why() {
    let s = TestServer::start(&[("b.yaml", &support::broker("default", ""))]).await;
    let url = s.broker_url("default", "default");
    wait_accepted(&url, "warmup", WAIT).await;

    let filter = percent_encoding::utf8_percent_encode(
        "type = 'keep' AND id LIKE 'k%'",
        percent_encoding::NON_ALPHANUMERIC,
    );
    let mut tail = open(
        &s,
        &format!("/api/v1/brokers/default/default/events?filter={filter}"),
    )
    .await
    .expect("tail opens");
    send_all(&url, &["d1"], "drop").await;
    send_all(&url, &["k1"], "keep").await;
    send_all(&url, &["d2"], "drop").await;
    send_all(&url, &["x1"], "keep").await;
    send_all(&url, &["k2"], "keep").await;
    assert_eq!(tail.ids(2).await, strings(&["k1", "k2"]));

    let refused = |path: &'static str| {
        let s = &s;
        async move {
            match open(s, path).await {
                Ok(_) => panic!("{path} was not refused"),
                Err(refusal) => refusal,
            }
        }
    };
    let (status, body) =
        refused("/api/v1/brokers/default/default/events?filter=type%20%3D%20%3D%20'x'").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains("filter") && body.contains("line 1, column 8"),
        "{body}"
    );
    let (status, body) = refused("/api/v1/brokers/default/default/events?since=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("'yesterday'"), "{body}");
    let (status, body) = refused("/api/v1/brokers/default/nope/events").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("default/nope"), "{body}");
    let (status, body) = refused("/api/v1/channels/default/nope/events").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("channel default/nope"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_sends_that_many_a_second_and_counts_the_rest_once() {
    let s = TestServer::start(&[("b.yaml", &support::broker("default", ""))]).await;
    let url = s.broker_url("default", "default");
    wait_accepted(&url, "warmup", WAIT).await;
    let mut tail = open(&s, "/api/v1/brokers/default/default/events?since=1h&rate=2")
        .await
        .expect("tail opens");
    let ids: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    send_all(&url, &ids, "demo").await;
    // Eleven events stored (the warm-up one too), read at once: two in the
    // first second, the other nine counted in one notice when it ends.
    let first = tail.next().await;
    let second = tail.next().await;
    assert_eq!(
        (first.kind.as_str(), second.kind.as_str()),
        ("message", "message")
    );
    let skipped = tail.next().await;
    assert_eq!(skipped.kind, "skipped", "{skipped:?}");
    assert_eq!(skipped.data, r#"{"skipped":9}"#);

    let Err((status, body)) = open(&s, "/api/v1/brokers/default/default/events?rate=0").await
    else {
        panic!("rate=0 was not refused");
    };
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("rate"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_is_tailed_by_its_own_name() {
    let s = TestServer::start(&[(
        "c.yaml",
        "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: audit\n",
    )])
    .await;
    let url = s.broker_url("default", "audit-kn-channel");
    wait_accepted(&url, "c0", WAIT).await;
    let mut tail = open(&s, "/api/v1/channels/default/audit/events?since=1h")
        .await
        .expect("tail opens");
    send_all(&url, &["c1"], "demo").await;
    assert_eq!(tail.ids(2).await, strings(&["c0", "c1"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_client_is_told_what_it_missed_and_appends_never_wait_for_it() {
    let s = TestServer::start(&[("b.yaml", &support::broker("default", ""))]).await;
    let url = s.broker_url("default", "default");
    wait_accepted(&url, "warmup", WAIT).await;

    // A client that opens a tail with a small buffer and a small socket
    // window, then reads nothing while ~13 MB of events are stored.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stream = socket.connect(s.server.admin).await.expect("connect");
    stream
        .write_all(
            b"GET /api/v1/brokers/default/default/events?buffer=4 HTTP/1.1\r\nhost: pilotlight\r\n\r\n",
        )
        .await
        .expect("request");
    let mut seen = Vec::new();
    let mut chunk = vec![0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(": tailing default/default") {
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    let data = "x".repeat(64 << 10);
    for i in 0..200 {
        let id = format!("big-{i}");
        let reply = request(
            Method::POST,
            &url,
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", &id),
                ("ce-source", "/test"),
                ("ce-type", "big"),
                ("content-type", "text/plain"),
            ],
            data.clone(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{id}: {}", reply.body);
    }
    // Now read: somewhere in the stream the tail says how many it skipped.
    let mut text = String::new();
    let skipped = loop {
        if let Some(at) = text.find("event: skipped\ndata: {\"skipped\":") {
            let rest = &text[at + "event: skipped\ndata: {\"skipped\":".len()..];
            if let Some(end) = rest.find('}') {
                break rest[..end].parse::<u64>().expect("a count");
            }
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("the tail goes on")
            .expect("read");
        assert!(n > 0, "the tail ended without a skipped notice");
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
        // Keep only what a notice could still start in.
        if text.len() > 1 << 20 {
            text.drain(..text.len() - 4096);
        }
    };
    assert!(skipped > 0 && skipped < 200, "{skipped}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_tail_reads_the_topic_and_commits_nothing() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    let Some(kafka) = KAFKA.address().await else {
        return;
    };
    let name = unique("tail");
    let bootstrap = kafka.clone();
    let s = TestServer::start_with(
        &[(
            "b.yaml",
            &support::broker(
                &name,
                "  annotations:\n    eventing.knative.dev/broker.class: Kafka\n",
            ),
        )],
        move |c| c.kafka_bootstrap_servers = Some(bootstrap),
    )
    .await;
    let url = s.broker_url("default", &name);
    wait_accepted(&url, "k0", Duration::from_secs(60)).await;
    let path = format!("/api/v1/brokers/default/{name}/events");

    let mut live = open(&s, &path).await.expect("tail opens");
    send_all(&url, &["k1", "k2", "k3"], "demo").await;
    let mut got = live.ids(3).await;
    got.sort();
    assert_eq!(got, strings(&["k1", "k2", "k3"]));

    let mut past = open(&s, &format!("{path}?since=10m"))
        .await
        .expect("tail opens");
    let mut got = past.ids(4).await;
    got.sort();
    assert_eq!(got, strings(&["k0", "k1", "k2", "k3"]));
    drop((live, past));

    // No offsets were committed under the tails' group id.
    let topic = format!("knative-broker-default-{name}");
    let group = format!("pilotlight-tail.{topic}");
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka)
        .set("group.id", &group)
        .create()
        .expect("consumer");
    let metadata = reader
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata");
    let mut list = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        list.add_partition(&topic, partition.id());
    }
    assert!(list.count() > 0);
    let committed = reader
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    for element in committed.elements() {
        assert_eq!(
            element.offset(),
            Offset::Invalid,
            "partition {} has a committed offset",
            element.partition()
        );
    }
    // The check sees a commit where there is one: a control group's.
    let control: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka)
        .set("group.id", format!("{group}-control"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset(&topic, 0, Offset::Offset(1))
        .expect("offset");
    control
        .commit(&commit, rdkafka::consumer::CommitMode::Sync)
        .expect("commit");
    let mut partition0 = TopicPartitionList::new();
    partition0.add_partition(&topic, 0);
    let seen = control
        .committed_offsets(partition0, Duration::from_secs(10))
        .expect("committed offsets");
    assert_eq!(
        seen.elements().first().map(|e| e.offset()),
        Some(Offset::Offset(1))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rabbitmq_broker_refuses_a_tail_and_says_why() {
    let Some(uri) = RABBITMQ.address().await else {
        return;
    };
    let name = unique("tail");
    let s = TestServer::start_with(
        &[(
            "b.yaml",
            &support::broker(
                &name,
                "  annotations:\n    eventing.knative.dev/broker.class: RabbitMQBroker\n",
            ),
        )],
        move |c| c.rabbitmq_uri = Some(uri),
    )
    .await;
    wait_accepted(&s.broker_url("default", &name), "r0", WAIT).await;
    match open(&s, &format!("/api/v1/brokers/default/{name}/events")).await {
        Ok(_) => panic!("a RabbitMQ broker was tailed"),
        Err((status, body)) => {
            assert_eq!(status, StatusCode::CONFLICT, "{body}");
            assert!(
                body.contains("RabbitMQBroker") && body.contains("a queue cannot be read twice"),
                "{body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tail_command_prints_events_and_refusals() {
    let s = TestServer::start(&[("b.yaml", &support::broker("default", ""))]).await;
    let url = s.broker_url("default", "default");
    wait_accepted(&url, "first", WAIT).await;
    send_all(&url, &["second"], "other").await;
    let admin = s.server.admin.to_string();

    let mut child = std::process::Command::new(BIN)
        .args([
            "tail",
            "default/default",
            "--since",
            "1h",
            "--filter",
            "type = 'demo'",
            "-o",
            "json",
            "--admin",
            &admin,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tail runs");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead as _;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    });
    let line = tokio::time::timeout(WAIT, line)
        .await
        .expect("a line within the wait")
        .expect("join")
        .expect("read");
    let _ = child.kill();
    let _ = child.wait();
    let event: serde_json::Value = serde_json::from_str(&line).expect("one JSON event per line");
    assert_eq!(event["id"], "first", "{line}");
    assert_eq!(event["type"], "demo", "{line}");

    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["tail", "default/nope", "--admin", &admin])
            .output()
            .expect("tail runs")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("404") && stderr.contains("no broker default/nope"),
        "{stderr}"
    );
}
