//! Whether a Kafka client reaches its Kafka, in librdkafka's own words:
//! shared by the Kafka broker class (its producer) and KafkaSource (its
//! consumers).
//!
//! librdkafka reconnects by itself and tells of a failure only in log lines
//! and error events (`Connect to ipv4#127.0.0.1:9092 failed: Connection
//! refused`, `SASL authentication error: ...`, `1/1 brokers are down`).
//! [`ClientErrors`] keeps the latest for one client; [`probe`] asks for the
//! topics' metadata, which succeeds only when a broker answers and accepts
//! the credentials; [`keep_health`] probes a running client over and over
//! and keeps its [`HealthCell`]: Ready while the probe passes, NotReady with
//! the probe's error and librdkafka's latest words while it does not.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::client::Client;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use tokio::sync::watch;

use crate::eventing::health::{Health, HealthCell};

/// How often a running client is probed while it reaches Kafka, and while
/// it does not.
const PROBE_EVERY: Duration = Duration::from_secs(5);
const PROBE_AGAIN: Duration = Duration::from_secs(2);
/// How long one probe waits for Kafka's answer.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What librdkafka said last about one client's connections.
#[derive(Debug, Default)]
pub(crate) struct ClientErrors {
    latest: Mutex<Option<String>>,
    /// Counts librdkafka's "all brokers are down" reports.
    all_down: watch::Sender<u64>,
}

impl ClientErrors {
    /// Keeps `text` as the latest word, unless it only says that all
    /// brokers are down and a more specific word (why they are) is kept.
    fn record(&self, all_down: bool, text: &str) {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if !all_down || latest.is_none() {
            *latest = Some(text.to_owned());
        }
        drop(latest);
        if all_down {
            self.all_down.send_modify(|count| *count += 1);
        }
    }

    fn latest(&self) -> Option<String> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forgets what was said: the client reached Kafka since.
    fn clear(&self) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Resolves once librdkafka has reported every broker down (at once
    /// for a client that did): a new client whose bootstrap servers all
    /// refuse need not wait for a timeout.
    pub(crate) async fn all_down(&self) {
        let mut reports = self.all_down.subscribe();
        let _ = reports.wait_for(|count| *count > 0).await;
    }

    /// `error` with librdkafka's latest word on the connection, if any.
    pub(crate) fn explain(&self, error: impl std::fmt::Display) -> String {
        match self.latest() {
            Some(latest) => format!("{error} (librdkafka: {latest})"),
            None => error.to_string(),
        }
    }

    /// A log line of the client, kept when it is an error (the connection
    /// failures and authentication errors are).
    pub(crate) fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        forward_log(level, facility, message);
        let error = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
        );
        if error {
            self.record(message.contains("brokers are down"), message);
        }
    }

    /// An error event of the client.
    pub(crate) fn error(&self, error: &KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", error = %error, "librdkafka: {reason}");
        let all_down = error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown);
        self.record(all_down, reason);
    }
}

/// librdkafka's log line, as rdkafka's default context logs it.
fn forward_log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", "librdkafka: {facility} {message}")
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", "librdkafka: {facility} {message}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", "librdkafka: {facility} {message}")
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", "librdkafka: {facility} {message}")
        }
    }
}

/// The context of a producer or admin client whose errors are kept.
#[derive(Debug, Default, Clone)]
pub(crate) struct ErrorsContext {
    pub errors: Arc<ClientErrors>,
}

impl ClientContext for ErrorsContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.errors.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.error(&error, reason);
    }
}

/// Whether a topic must exist for a probe to pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TopicCheck {
    /// Kafka answering is enough (the topic is created next).
    Contact,
    Exists,
}

/// Asks Kafka for the metadata of `topics` through `client` (blocking, up
/// to [`PROBE_TIMEOUT`] each): Ok when a broker answered and, for
/// [`TopicCheck::Exists`], every topic exists.
pub(crate) fn probe<C: ClientContext>(
    client: &Client<C>,
    topics: &[String],
    check: TopicCheck,
) -> Result<(), String> {
    for topic in topics {
        let metadata = client
            .fetch_metadata(Some(topic), PROBE_TIMEOUT)
            .map_err(|e| format!("cannot read the metadata of topic {topic}: {e}"))?;
        topic_found(&metadata, topic, check)?;
    }
    Ok(())
}

fn topic_found(metadata: &Metadata, topic: &str, check: TopicCheck) -> Result<(), String> {
    if check == TopicCheck::Contact {
        return Ok(());
    }
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| format!("topic {topic} does not exist"))?;
    match found.error() {
        None => Ok(()),
        Some(e) => Err(format!("topic {topic}: {}", RDKafkaErrorCode::from(e))),
    }
}

/// A client to probe over and over: how to probe it, and what its errors
/// are.
pub(crate) struct Prober {
    pub probe: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    pub errors: Arc<ClientErrors>,
    /// `Kafka at {bootstrap servers}`, for messages.
    pub kafka: String,
    /// What to check when it fails ("spec.bootstrapServers and spec.topics").
    pub check: &'static str,
}

impl Prober {
    /// One probe on a blocking thread: Ok, or the message for the status.
    async fn run(&self) -> Result<(), String> {
        let probe = self.probe.clone();
        let result = tokio::task::spawn_blocking(move || probe())
            .await
            .unwrap_or_else(|e| Err(format!("the probe failed: {e}")));
        match result {
            Ok(()) => {
                self.errors.clear();
                Ok(())
            }
            Err(e) => Err(format!(
                "{}: {}; check {}",
                self.kafka,
                self.errors.explain(e),
                self.check
            )),
        }
    }
}

/// Keeps `cell` to what probing finds until `stop` resolves: Ready while a
/// probe passes; NotReady with `reason` while probes fail (after the
/// [`GRACE`](crate::eventing::health::GRACE) if it was Ready, since one
/// probe that got no answer is not yet a lost Kafka).
pub(crate) async fn keep_health(
    prober: Prober,
    cell: Arc<HealthCell>,
    reason: &'static str,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let pause = match prober.run().await {
            Ok(()) => {
                cell.set(Health::Ready);
                PROBE_EVERY
            }
            Err(message) => {
                tracing::warn!(error = %message, "Kafka probe failed");
                cell.failing(reason, message);
                PROBE_AGAIN
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = &mut stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specific_reason_outlives_all_brokers_down() {
        let errors = ClientErrors::default();
        assert_eq!(errors.explain("timed out"), "timed out");
        errors.record(
            false,
            "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused",
        );
        errors.record(true, "1/1 brokers are down");
        let message = errors.explain("cannot read the metadata of topic t: timed out");
        assert!(message.contains("Connection refused"), "{message}");
        errors.clear();
        errors.record(true, "1/1 brokers are down");
        assert!(errors.explain("x").contains("brokers are down"));
    }

    #[tokio::test]
    async fn all_down_resolves_on_a_report_before_or_after_the_call() {
        let errors = Arc::new(ClientErrors::default());
        let waiting = tokio::spawn({
            let errors = errors.clone();
            async move { errors.all_down().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing reported yet");
        errors.record(true, "1/1 brokers are down");
        let within = Duration::from_secs(5);
        tokio::time::timeout(within, waiting)
            .await
            .expect("resolves")
            .expect("joins");
        tokio::time::timeout(within, errors.all_down())
            .await
            .expect("an earlier report counts");
    }
}
