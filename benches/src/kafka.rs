//! `pilotlight-bench kafka`: events per second through a Kafka broker class
//! (HTTP ingress → Kafka topic → trigger → HTTP subscriber), against a raw
//! rdkafka producer and consumer moving the same payloads through the same
//! Kafka, in one run. Target: at least 0.8× the raw client.
//!
//! 1. pilotlight: a Broker of class Kafka (settings from a ConfigMap) and a
//!    trigger to an in-process subscriber. After a probe event has gone
//!    through (so the trigger's consumer has joined its group), the load
//!    generator of `pilotlight-bench eventing` sends binary-mode events back
//!    to back on `--connections` connections for `--duration-secs` (+1 s warm-up).
//!    N = the events answered 202; the rate is N over the time from the
//!    first send to the last delivery.
//! 2. raw: a topic with the same partitions; after a probe record went
//!    through, `--connections` tasks send N records (same payload, the same
//!    `ce_` headers) with the producer settings pilotlight's ingress uses
//!    (acks=all, idempotent, linger 2 ms), each awaiting every send as the
//!    ingress does before its 202, while one consumer reads them; the rate
//!    is N over the time from the first send to the last record read.
//!
//! Both sides cross the same Kafka with the same concurrency and acks, so the
//! ratio is what pilotlight's HTTP, trigger and delivery add.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

use crate::http_server::HttpServer;
use crate::load::{Load, Shape, run_load};
use crate::report::{Check, checks_json, write_checks};
use crate::workdir::{NAMESPACE, WorkDir, server_config};
use pilotlight::server::Server;

const TARGET_RATIO: f64 = 0.8;
/// Longest wait, with no progress, for the last deliveries.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct KafkaBenchArgs {
    /// The Kafka both sides use.
    #[arg(
        long,
        env = "PILOTLIGHT_KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap_servers: String,
    /// Seconds the pilotlight side is loaded, after a 1 s warm-up.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Concurrent HTTP connections, and concurrent raw producer tasks.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Size of each event's data, in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// Partitions of both topics.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Also print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One side's result.
struct Side {
    events: u64,
    elapsed: Duration,
}

impl Side {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

pub async fn run(args: KafkaBenchArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.duration_secs == 0 || args.partitions < 1 {
        bail!("--connections, --duration-secs and --partitions must be at least 1");
    }
    let payload: Bytes = (0..args.payload_bytes)
        .map(|i| b'a' + (i % 26) as u8)
        .collect::<Vec<u8>>()
        .into();
    let pilotlight = pilotlight_side(&args, payload.clone())
        .await
        .context("the pilotlight side")?;
    let raw = raw_side(&args, payload, pilotlight.events)
        .await
        .context("the raw rdkafka side")?;
    let ratio = pilotlight.rate() / raw.rate().max(f64::MIN_POSITIVE);
    let checks = vec![Check {
        name: format!("Kafka broker >= {TARGET_RATIO}x raw rdkafka"),
        figure: format!("{ratio:.2}x"),
        met: ratio >= TARGET_RATIO,
    }];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\npilotlight-bench kafka: {} events of {} B, {} connections, {} partitions, Kafka at {}\n",
        pilotlight.events,
        args.payload_bytes,
        args.connections,
        args.partitions,
        args.bootstrap_servers
    );
    let _ = writeln!(
        out,
        "side                         events      seconds     events/s"
    );
    for (name, side) in [
        ("raw rdkafka (produce+consume)", &raw),
        ("pilotlight Kafka broker", &pilotlight),
    ] {
        let _ = writeln!(
            out,
            "{name:<28} {:>7} {:>12.2} {:>12.0}",
            side.events,
            side.elapsed.as_secs_f64(),
            side.rate()
        );
    }
    let _ = writeln!(out, "\npilotlight / raw = {ratio:.2}x\n\ntargets:");
    write_checks(&mut out, &checks, &[], (36, 8));
    println!("{out}");
    if args.json {
        let report = json!({
            "events": pilotlight.events,
            "payload_bytes": args.payload_bytes,
            "connections": args.connections,
            "partitions": args.partitions,
            "raw_events_per_second": raw.rate(),
            "pilotlight_events_per_second": pilotlight.rate(),
            "ratio": ratio,
            "checks": checks_json(&checks),
        });
        println!("{report}");
    }
    Ok(())
}

/// Counts deliveries and when the last one came.
#[derive(Default)]
struct Receipts {
    count: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl Receipts {
    fn record(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn last(&self) -> Option<Instant> {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reset(&self) {
        self.count.store(0, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Waits until `expected` arrived; fails after [`DRAIN_TIMEOUT`] without
    /// progress.
    async fn wait_for(&self, expected: u64, what: &str) -> anyhow::Result<()> {
        let mut seen = self.count();
        let mut progress = Instant::now();
        while self.count() < expected {
            if self.count() != seen {
                seen = self.count();
                progress = Instant::now();
            }
            if progress.elapsed() > DRAIN_TIMEOUT {
                bail!("{what}: {seen} of {expected} arrived, then nothing for {DRAIN_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

async fn pilotlight_side(args: &KafkaBenchArgs, payload: Bytes) -> anyhow::Result<Side> {
    let receipts = Arc::new(Receipts::default());
    let counter = receipts.clone();
    let subscriber = HttpServer::start(
        move |request: Request<Incoming>| {
            let counter = counter.clone();
            async move {
                let _ = request.into_body().collect().await;
                counter.record();
                let mut response = Response::new(Empty::<Bytes>::new());
                *response.status_mut() = StatusCode::ACCEPTED;
                Ok::<_, Infallible>(response)
            }
        },
        true,
        "the subscriber",
    )
    .await?;
    let dir = WorkDir::create("kafka")?;
    let broker = unique("bench");
    let manifest = format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: {broker}-config
  namespace: {NAMESPACE}
data:
  bootstrap.servers: \"{servers}\"
  default.topic.partitions: \"{partitions}\"
  default.topic.replication.factor: \"1\"
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: {broker}
  namespace: {NAMESPACE}
  annotations:
    eventing.knative.dev/broker.class: Kafka
spec:
  config:
    apiVersion: v1
    kind: ConfigMap
    name: {broker}-config
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: {broker}
  namespace: {NAMESPACE}
spec:
  broker: {broker}
  subscriber:
    uri: http://{subscriber}/
",
        servers = args.bootstrap_servers,
        partitions = args.partitions,
        subscriber = subscriber.addr,
    );
    std::fs::write(dir.manifests().join("bench.yaml"), manifest)
        .context("writing the bench manifests")?;
    let server = Server::start(server_config(&dir)).await?;
    let load = |duration: Duration, connections: usize| Load {
        addr: server.listen,
        path: format!("/{NAMESPACE}/{broker}"),
        payload: payload.clone(),
        connections,
        duration,
        rate: None,
        origin: Instant::now(),
        id_prefix: unique("kafka"),
        shape: Shape::CloudEvent,
        tls: None,
    };
    // A probe: once it is delivered, the trigger's consumer has its partitions.
    let (probe, _) = run_load(load(Duration::from_millis(1), 1)).await?;
    if probe.sent_accepted == 0 {
        bail!(
            "the broker did not accept the probe event: {}",
            probe.describe_errors()
        );
    }
    receipts
        .wait_for(probe.sent_accepted, "the probe event")
        .await?;
    receipts.reset();

    let started = Instant::now();
    let (tally, _) = run_load(load(
        Duration::from_secs(args.duration_secs),
        args.connections,
    ))
    .await?;
    if tally.errors() > 0 {
        bail!("the ingress refused events: {}", tally.describe_errors());
    }
    receipts.wait_for(tally.sent_accepted, "deliveries").await?;
    let last = receipts.last().unwrap_or_else(Instant::now);
    server.shutdown().await;
    Ok(Side {
        events: tally.sent_accepted,
        elapsed: last.duration_since(started),
    })
}

async fn raw_side(args: &KafkaBenchArgs, payload: Bytes, events: u64) -> anyhow::Result<Side> {
    let servers = &args.bootstrap_servers;
    let topic = unique("bench-raw");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .context("admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    for result in admin
        .create_topics(
            [&NewTopic::new(
                &topic,
                args.partitions,
                TopicReplication::Fixed(1),
            )],
            &options,
        )
        .await
        .context("creating the raw topic")?
    {
        result.map_err(|(t, code)| anyhow::anyhow!("creating topic {t}: {code}"))?;
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()
        .context("producer")?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", unique("bench-raw"))
        .set("auto.offset.reset", "earliest")
        // Nothing to resume: the raw side only reads.
        .set("enable.auto.commit", "false")
        .create()
        .context("consumer")?;
    consumer.subscribe(&[&topic]).context("subscribing")?;
    let consumer = Arc::new(consumer);
    let receipts = Arc::new(Receipts::default());
    let reader = tokio::spawn({
        let (consumer, receipts) = (consumer.clone(), receipts.clone());
        async move {
            while consumer.recv().await.is_ok() {
                receipts.record();
            }
        }
    });
    let send = {
        let (topic, payload) = (topic.clone(), payload.clone());
        move |producer: FutureProducer, id: String| {
            let (topic, payload) = (topic.clone(), payload.clone());
            async move {
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "ce_specversion",
                        value: Some("1.0"),
                    })
                    .insert(Header {
                        key: "ce_id",
                        value: Some(id.as_str()),
                    })
                    .insert(Header {
                        key: "ce_source",
                        value: Some("/pilotlight/bench"),
                    })
                    .insert(Header {
                        key: "ce_type",
                        value: Some("dev.pilotlight.bench"),
                    })
                    .insert(Header {
                        key: "content-type",
                        value: Some("application/octet-stream"),
                    });
                let record = FutureRecord::<(), [u8]>::to(&topic)
                    .payload(&payload[..])
                    .headers(headers);
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| anyhow::anyhow!("producing: {e}"))
            }
        }
    };
    // The probe: once read, the consumer has its partitions.
    send(producer.clone(), "probe".into()).await?;
    receipts.wait_for(1, "the probe record").await?;
    receipts.reset();

    let started = Instant::now();
    let connections = args.connections as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..connections {
        let count = events / connections + u64::from(task < events % connections);
        let (producer, send) = (producer.clone(), send.clone());
        tasks.spawn(async move {
            for n in 0..count {
                send(producer.clone(), format!("{task}-{n}")).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a producer task panicked")??;
    }
    receipts.wait_for(events, "raw records").await?;
    let last = receipts.last().unwrap_or_else(Instant::now);
    // Close the consumer before deleting its topic: tansu's storage panics
    // on a fetch for a topic deleted under it.
    reader.abort();
    let _ = reader.await;
    drop(consumer);
    let _ = admin.delete_topics(&[&topic], &options).await;
    Ok(Side {
        events,
        elapsed: last.duration_since(started),
    })
}
