//! `pilotlight-bench rabbitmq`: events/s through a RabbitMQBroker (HTTP
//! ingress → RabbitMQ → trigger → an HTTP subscriber) against a raw lapin
//! publisher with confirms plus a consumer moving the same payloads through
//! the same RabbitMQ, in the same run.
//!
//! Both sides move the same number of events of the same size, with the same
//! concurrency: `--connections` publishers, each waiting for its publish to
//! be confirmed before the next (as each HTTP client waits for its 202), on
//! one confirm-mode channel (as the broker's one publishing channel), into a
//! quorum queue (the broker's default) read with prefetch `--parallelism`
//! (the trigger's `rabbitmq.eventing.knative.dev/parallelism`). A side's
//! figure is events / time from the first send to the last event received.
//! Rounds alternate the sides so that noise hits all; the ratio is of the
//! medians. Target: pilotlight ≥ 0.8× raw.
//!
//! The raw consumer acks every message, as a plain lapin consumer does.
//! pilotlight acks in batches (`rabbitmq::settle`), which saves RabbitMQ much
//! of its work per message, so a third side, the raw baseline with batched
//! acks, is shown for reference with no target.
//!
//! The HTTP load and the subscriber are the lean ends of `bench_http`, so
//! that on a small machine their work does not count against pilotlight.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use http::StatusCode;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Confirmation, Connection, ConnectionProperties};
use tokio::task::JoinSet;

use crate::report::median;

use crate::lean_http::{CountingSubscriber, Poster};
use crate::report::{Check, checks_json, write_checks};
use crate::workdir::{NAMESPACE, WorkDir, server_config};
use pilotlight::api::ObjectKey;
use pilotlight::cloudevent::Event;
use pilotlight::eventing::backend::rabbitmq::binding::{binding_arguments, encode};
use pilotlight::eventing::backend::rabbitmq::connection::declare_exchange;
use pilotlight::eventing::backend::rabbitmq::{exchange_name, queue_name};
use pilotlight::server::Server;

const TARGET_RATIO: f64 = 0.8;
/// Longest wait for the last events of a side to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Args)]
pub struct RabbitmqArgs {
    /// The RabbitMQ both sides use.
    #[arg(
        long,
        env = "PILOTLIGHT_RABBITMQ_URI",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub rabbitmq_uri: String,
    /// Events per side and round.
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Size of each event's data, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub payload_bytes: usize,
    /// Concurrent publishers (raw) and HTTP connections (pilotlight).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Consumer prefetch (raw) and the trigger's parallelism (pilotlight).
    #[arg(long, default_value_t = 100)]
    pub parallelism: u16,
    /// Rounds per side (alternating raw, pilotlight).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Print one JSON object after the table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: RabbitmqArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.events == 0 || args.rounds == 0 {
        bail!("--connections, --events and --rounds must be at least 1");
    }
    if !(1..=1000).contains(&args.parallelism) {
        bail!("--parallelism must be from 1 to 1000");
    }
    let payload = Bytes::from(
        (0..args.payload_bytes)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    let subscriber = CountingSubscriber::start().await?;
    let dir = WorkDir::create("rabbitmq")?;
    // A broker of its own per run, so nothing left by an earlier run counts.
    let broker = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    std::fs::write(
        dir.manifests().join("bench.yaml"),
        manifest(&broker, subscriber.addr, args.parallelism),
    )
    .context("writing the bench manifests")?;
    let mut config = server_config(&dir);
    config.rabbitmq_uri = Some(args.rabbitmq_uri.clone());
    let server = Server::start(config).await.context("starting pilotlight")?;
    let url_path = format!("/{NAMESPACE}/{broker}");
    let (mut raw_rates, mut batched_rates, mut pilotlight_rates) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut failures = Vec::new();
    for round in 0..args.rounds {
        let raw = raw_round(&args, &payload, round, RawAcks::EachMessage).await?;
        println!("round {}: raw lapin   {raw:>10.0} events/s", round + 1);
        raw_rates.push(raw);
        let batched = raw_round(&args, &payload, round, RawAcks::Batched).await?;
        println!("round {}: raw, batched{batched:>10.0} events/s", round + 1);
        batched_rates.push(batched);
        match pilotlight_round(&args, &payload, server.listen, &url_path, &subscriber).await {
            Ok(rate) => {
                println!("round {}: pilotlight  {rate:>10.0} events/s", round + 1);
                pilotlight_rates.push(rate);
            }
            Err(e) => failures.push(format!("pilotlight round {}: {e:#}", round + 1)),
        }
    }
    server.shutdown().await;
    drop(dir);
    remove_broker(&args.rabbitmq_uri, &broker).await;
    let raw = median(raw_rates);
    let batched = median(batched_rates);
    let pilotlight = median(pilotlight_rates);
    let ratio = pilotlight / raw.max(f64::MIN_POSITIVE);
    let batched_ratio = pilotlight / batched.max(f64::MIN_POSITIVE);
    let checks = vec![Check {
        name: "RabbitMQBroker / raw lapin".into(),
        figure: format!("{ratio:.2}x (target >= {TARGET_RATIO}x)"),
        met: failures.is_empty() && ratio >= TARGET_RATIO,
    }];
    let mut out = String::new();
    out.push_str(&format!(
        "\npilotlight-bench rabbitmq: {} events of {} bytes per side and round, {} connections, parallelism {}, {} rounds (medians)\n\n",
        args.events, args.payload_bytes, args.connections, args.parallelism, args.rounds
    ));
    out.push_str(&format!(
        "  raw lapin (confirms + consumer)  {raw:>10.0} events/s\n"
    ));
    out.push_str(&format!(
        "  same, acks batched (reference)   {batched:>10.0} events/s\n"
    ));
    out.push_str(&format!(
        "  RabbitMQBroker (HTTP → HTTP)     {pilotlight:>10.0} events/s\n\n"
    ));
    write_checks(&mut out, &checks, &failures, (28, 28));
    out.push_str(&format!(
        "\n  RabbitMQBroker / raw lapin with batched acks: {batched_ratio:.2}x (no target: the\n  baseline then saves RabbitMQ the per-message acks, as pilotlight does)\n"
    ));
    println!("{out}");
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "suite": "rabbitmq",
                "events": args.events,
                "payload_bytes": args.payload_bytes,
                "connections": args.connections,
                "parallelism": args.parallelism,
                "rounds": args.rounds,
                "raw_events_per_second": raw,
                "raw_batched_acks_events_per_second": batched,
                "ratio_to_batched_acks": batched_ratio,
                "pilotlight_events_per_second": pilotlight,
                "ratio": ratio,
                "checks": checks_json(&checks),
            })
        );
    }
    if !failures.is_empty() {
        bail!("the benchmark did not complete: {}", failures.join("; "));
    }
    Ok(())
}

/// The broker and its trigger to the counting subscriber.
fn manifest(broker: &str, subscriber: SocketAddr, parallelism: u16) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: {broker}
  namespace: {NAMESPACE}
  annotations:
    eventing.knative.dev/broker.class: RabbitMQBroker
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: count
  namespace: {NAMESPACE}
  annotations:
    rabbitmq.eventing.knative.dev/parallelism: \"{parallelism}\"
spec:
  broker: {broker}
  subscriber:
    uri: http://{subscriber}/
"
    )
}

/// The type of every bench event (the raw side binds on it).
const EVENT_TYPE: &str = "bench.rabbitmq";

/// The event the HTTP side sends as event `n`, as the broker would store it
/// (`knativearrivaltime` included).
fn bench_event(n: u64, payload: &Bytes) -> anyhow::Result<Event> {
    let attributes = [
        ("specversion", "1.0".to_owned()),
        ("id", format!("raw-{n}")),
        ("source", "/bench".to_owned()),
        ("type", EVENT_TYPE.to_owned()),
        ("datacontenttype", "application/octet-stream".to_owned()),
        ("knativearrivaltime", chrono::Utc::now().to_rfc3339()),
    ];
    Event::new(
        attributes
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        Some(payload.clone()),
    )
    .context("building a bench event")
}

/// Deletes the run's broker exchange and trigger queue from RabbitMQ.
async fn remove_broker(uri: &str, broker: &str) {
    let key = ObjectKey::new(NAMESPACE, broker);
    let Ok(connection) = Connection::connect(uri, ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .queue_delete(
                queue_name(&key, "count").as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
        let _ = channel
            .exchange_delete(
                exchange_name(&key).as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = connection.close(200, "bench done".into()).await;
}

/// How the baseline's consumer acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawAcks {
    /// Every message on its own, as a plain lapin consumer does: the target's
    /// baseline.
    EachMessage,
    /// One `multiple` ack per quarter of the prefetch: a raw client that
    /// batches its acks as pilotlight does (see `rabbitmq::settle`), for
    /// reference.
    Batched,
}

/// The baseline: publishers with confirms into a quorum queue, one consumer.
async fn raw_round(
    args: &RabbitmqArgs,
    payload: &Bytes,
    round: usize,
    acks: RawAcks,
) -> anyhow::Result<f64> {
    let connection = Connection::connect(&args.rabbitmq_uri, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ for the raw baseline")?;
    let queue = format!(
        "pilotlight-bench-raw-{round}-{}",
        uuid::Uuid::new_v4().simple()
    );
    let admin = connection.create_channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    admin
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .context("declaring the baseline queue")?;
    // The same routing and message shape as the broker: a headers exchange
    // whose binding matches the event type, and the event in the AMQP binding.
    let exchange = format!("{queue}-exchange");
    declare_exchange(&admin, &exchange)
        .await
        .map_err(anyhow::Error::msg)?;
    admin
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            ShortString::default(),
            QueueBindOptions::default(),
            binding_arguments(&[("type".to_owned(), EVENT_TYPE.to_owned())]),
        )
        .await
        .context("binding the baseline queue")?;
    let consumer_channel = connection.create_channel().await?;
    consumer_channel
        .basic_qos(args.parallelism, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let total = args.events;
    let batch = match acks {
        RawAcks::EachMessage => 1,
        RawAcks::Batched => (u64::from(args.parallelism) / 4).max(1),
    };
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        let mut received = 0u64;
        while received < total {
            match tokio::time::timeout(DRAIN_TIMEOUT, consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    received += 1;
                    if received.is_multiple_of(batch) || received == total {
                        let multiple = batch > 1;
                        delivery.ack(BasicAckOptions { multiple }).await?;
                    }
                }
                Ok(Some(Err(e))) => return Err(anyhow::Error::from(e)),
                Ok(None) => bail!("the baseline consumer stopped after {received}"),
                Err(_) => bail!("the baseline consumer received {received} of {total}"),
            }
        }
        Ok(Instant::now())
    });
    let next = Arc::new(AtomicU64::new(0));
    let mut publishers = JoinSet::new();
    for _ in 0..args.connections {
        let (publisher, next, payload, exchange) = (
            publisher.clone(),
            next.clone(),
            payload.clone(),
            exchange.clone(),
        );
        publishers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok(());
                }
                let event = bench_event(n, &payload)?;
                let (properties, body) = encode(&event);
                let confirm = publisher
                    .basic_publish(
                        exchange.as_str().into(),
                        ShortString::default(),
                        BasicPublishOptions::default(),
                        body,
                        properties,
                    )
                    .await?
                    .await?;
                if !matches!(confirm, Confirmation::Ack(_)) {
                    bail!("RabbitMQ did not confirm a baseline publish: {confirm:?}");
                }
            }
        });
    }
    while let Some(done) = publishers.join_next().await {
        done??;
    }
    let finished = consume.await??;
    // Cancel the consumer before deleting its queue (RabbitMQ would cancel it).
    let _ = consumer_channel.close(200, "bench done".into()).await;
    let _ = admin
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = admin
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(200, "bench done".into()).await;
    Ok(total as f64 / finished.duration_since(started).as_secs_f64())
}

/// Pilotlight: HTTP POSTs into the broker; the trigger delivers to the subscriber.
async fn pilotlight_round(
    args: &RabbitmqArgs,
    payload: &Bytes,
    ingress: SocketAddr,
    path: &str,
    subscriber: &CountingSubscriber,
) -> anyhow::Result<f64> {
    let total = args.events;
    subscriber.expect(subscriber.count() + total);
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    let mut clients = JoinSet::new();
    for _ in 0..args.connections {
        let (next, payload, path, prefix) = (
            next.clone(),
            payload.clone(),
            path.to_owned(),
            prefix.clone(),
        );
        clients.spawn(async move {
            let mut poster = Poster::connect(ingress).await?;
            let mut head = Vec::with_capacity(512);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                head.clear();
                write!(
                    head,
                    "POST {path} HTTP/1.1\r\nhost: {ingress}\r\nce-specversion: 1.0\r\nce-id: {prefix}-{n}\r\nce-source: /bench\r\nce-type: {EVENT_TYPE}\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
                    payload.len()
                )?;
                let answer = poster.send(&head, &payload).await?;
                if answer.status != StatusCode::ACCEPTED.as_u16() {
                    bail!(
                        "the ingress answered {}: {}",
                        answer.status,
                        String::from_utf8_lossy(&answer.body).trim()
                    );
                }
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done??;
    }
    let ingress_done = started.elapsed();
    let finished = subscriber.wait(DRAIN_TIMEOUT).await?;
    tracing::info!(
        "pilotlight round: every event accepted after {ingress_done:?}, delivered after {:?}",
        finished.duration_since(started)
    );
    Ok(total as f64 / finished.duration_since(started).as_secs_f64())
}
