//! `pilotlight bench rabbitmq`: events/s through a RabbitMQBroker (HTTP
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
//! Rounds alternate raw and pilotlight so that noise hits both; the ratio is
//! of the medians. Target: pilotlight ≥ 0.8× raw.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Confirmation, Connection, ConnectionProperties};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::cli::bench_cesql::median;

use super::bench::{Check, NAMESPACE, WorkDir, checks_json, connect, server_config, write_checks};
use crate::control::ObjectKey;
use crate::eventing::backend::rabbitmq::binding::{binding_arguments, encode};
use crate::eventing::backend::rabbitmq::connection::declare_exchange;
use crate::eventing::backend::rabbitmq::{exchange_name, queue_name};
use crate::eventing::event::Event;
use crate::server::Server;

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
    let (mut raw_rates, mut pilotlight_rates) = (Vec::new(), Vec::new());
    let mut failures = Vec::new();
    for round in 0..args.rounds {
        let raw = raw_round(&args, &payload, round).await?;
        println!("round {}: raw lapin   {raw:>10.0} events/s", round + 1);
        raw_rates.push(raw);
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
    let pilotlight = median(pilotlight_rates);
    let ratio = pilotlight / raw.max(f64::MIN_POSITIVE);
    let checks = vec![Check {
        name: "RabbitMQBroker / raw lapin".into(),
        figure: format!("{ratio:.2}x (target >= {TARGET_RATIO}x)"),
        met: failures.is_empty() && ratio >= TARGET_RATIO,
    }];
    let mut out = String::new();
    out.push_str(&format!(
        "\npilotlight bench rabbitmq: {} events of {} bytes per side and round, {} connections, parallelism {}, {} rounds (medians)\n\n",
        args.events, args.payload_bytes, args.connections, args.parallelism, args.rounds
    ));
    out.push_str(&format!(
        "  raw lapin (confirms + consumer)  {raw:>10.0} events/s\n"
    ));
    out.push_str(&format!(
        "  RabbitMQBroker (HTTP → HTTP)     {pilotlight:>10.0} events/s\n\n"
    ));
    write_checks(&mut out, &checks, &failures, (28, 28));
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

/// The baseline: publishers with confirms into a quorum queue, one consumer.
async fn raw_round(args: &RabbitmqArgs, payload: &Bytes, round: usize) -> anyhow::Result<f64> {
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
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        let mut received = 0u64;
        while received < total {
            match tokio::time::timeout(DRAIN_TIMEOUT, consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    delivery.ack(BasicAckOptions::default()).await?;
                    received += 1;
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
    let base = subscriber.count();
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
            let mut sender = connect(ingress).await?;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(path.as_str())
                    .header("host", ingress.to_string())
                    .header("ce-specversion", "1.0")
                    .header("ce-id", format!("{prefix}-{n}"))
                    .header("ce-source", "/bench")
                    .header("ce-type", EVENT_TYPE)
                    .header("content-type", "application/octet-stream")
                    .body(Full::new(payload.clone()))?;
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                if status != StatusCode::ACCEPTED {
                    bail!(
                        "the ingress answered {status}: {}",
                        String::from_utf8_lossy(&body).trim()
                    );
                }
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done??;
    }
    let ingress_done = started.elapsed();
    let finished = subscriber.wait_for(base + total).await?;
    tracing::info!(
        "pilotlight round: every event accepted after {ingress_done:?}, delivered after {:?}",
        finished.duration_since(started)
    );
    Ok(total as f64 / finished.duration_since(started).as_secs_f64())
}

/// An HTTP subscriber that answers 202 and counts.
struct CountingSubscriber {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    arrived: Arc<Notify>,
    accept: tokio::task::JoinHandle<()>,
}

impl CountingSubscriber {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the bench subscriber")?;
        let addr = listener.local_addr()?;
        let received = Arc::new(AtomicU64::new(0));
        let arrived = Arc::new(Notify::new());
        let (counter, notify) = (received.clone(), arrived.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (counter, notify) = (counter.clone(), notify.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (counter, notify) = (counter.clone(), notify.clone());
                        async move {
                            let _ = request.into_body().collect().await;
                            counter.fetch_add(1, Ordering::Relaxed);
                            notify.notify_waiters();
                            let mut response = Response::new(Empty::<Bytes>::new());
                            *response.status_mut() = StatusCode::ACCEPTED;
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(CountingSubscriber {
            addr,
            received,
            arrived,
            accept,
        })
    }

    fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until `expected` events arrived in all; when the last came.
    async fn wait_for(&self, expected: u64) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let arrived = self.arrived.notified();
            if self.count() >= expected {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!(
                    "the subscriber received {} of {expected} events",
                    self.count()
                );
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), arrived).await;
        }
    }
}

impl Drop for CountingSubscriber {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
