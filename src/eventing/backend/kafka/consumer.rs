//! A consumer-group member that hands out records with acknowledgement
//! tokens and commits only what is done: shared by the Kafka broker class's
//! trigger subscriptions and by KafkaSource.
//!
//! - Offsets are committed manually (`enable.auto.commit=false`) by a
//!   committer task, every [`COMMIT_INTERVAL`] and on stop, up to the
//!   contiguous done prefix of each partition ([`OffsetTracker`]).
//! - A new group starts where its [`InitialOffset`] says: for `Latest`, the
//!   current end offsets are committed for the group before it subscribes
//!   (as Knative's control plane does before a trigger is Ready), so nothing
//!   appended after [`GroupConsumer::start`] returns is missed.
//! - On a rebalance, revoked partitions get their done prefix committed and
//!   are forgotten: acks still arriving for them are ignored, and records of
//!   them still queued are not handed out. The new owner resumes from the
//!   commit, so in-flight work is delivered again rather than skipped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::health::{self, ClientErrors, Prober, TopicCheck};
use super::offsets::{OffsetToken, OffsetTracker};

/// How often done offsets are committed while running.
pub(crate) const COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// Timeout of the metadata and offset requests made when starting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) use crate::api::sources::kafka::InitialOffset;

/// Why a consumer could not start.
#[derive(Debug, thiserror::Error)]
#[error("Kafka consumer group {group}: {reason}")]
pub(crate) struct ConsumerError {
    pub group: String,
    pub reason: String,
    /// librdkafka refused the settings themselves (a PEM that does not
    /// parse, say) when making the client: trying again will not help.
    pub settings_refused: bool,
}

/// State shared by the consumer, its rebalance callbacks, the committer and
/// the acknowledgements.
#[derive(Default)]
pub(crate) struct Shared {
    tracker: Mutex<OffsetTracker>,
    backlog: AtomicU64,
}

impl Shared {
    fn tracker(&self) -> std::sync::MutexGuard<'_, OffsetTracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handed-out record is done (delivered, dead-lettered or dropped).
    pub(crate) fn done(&self, token: OffsetToken) {
        self.tracker().done(&token);
    }

    /// Records stored after the commit positions of the assigned partitions.
    pub(crate) fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }
}

/// Rebalance callbacks: commit what is done of revoked partitions, then
/// forget them; start assigned ones fresh. Keeps librdkafka's errors for
/// the member's health.
pub(crate) struct GroupContext {
    shared: Arc<Shared>,
    group: String,
    errors: Arc<ClientErrors>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.errors.log(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.errors.error(&error, reason);
    }

    /// librdkafka's statistics (every `statistics.interval.ms`) carry each
    /// assigned partition's lag behind its end offset: the backlog.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let assigned = self.shared.tracker().all_positions();
        let backlog: i64 = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values().map(move |p| (&t.topic, p)))
            .filter(|(topic, p)| {
                assigned
                    .iter()
                    .any(|(t, partition, _)| t == *topic && *partition == p.partition)
            })
            .map(|(_, p)| p.consumer_lag.max(0))
            .sum();
        self.shared
            .backlog
            .store(backlog.max(0) as u64, Ordering::Relaxed);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let revoked: Vec<(String, i32)> = list
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let mut tracker = self.shared.tracker();
        let commits = tracker.positions_of_topic(&revoked);
        for (topic, partition) in &revoked {
            tracker.revoke(topic, *partition);
        }
        drop(tracker);
        if commits.is_empty() {
            return;
        }
        match commit_list(&commits) {
            Ok(list) => {
                if let Err(e) = consumer.commit(&list, CommitMode::Sync) {
                    tracing::warn!(group = %self.group, error = %e, "committing revoked partitions failed; their records since the last commit come again");
                }
            }
            Err(e) => tracing::warn!(group = %self.group, error = %e, "bad commit list"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let mut tracker = self.shared.tracker();
                for element in list.elements() {
                    tracker.assign(element.topic(), element.partition());
                }
                tracing::debug!(group = %self.group, partitions = list.count(), "partitions assigned");
            }
            Rebalance::Error(e) => {
                tracing::warn!(group = %self.group, error = %e, "rebalance failed")
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

fn commit_list(
    commits: &[(String, i32, i64)],
) -> Result<TopicPartitionList, rdkafka::error::KafkaError> {
    let mut list = TopicPartitionList::new();
    for (topic, partition, offset) in commits {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    Ok(list)
}

/// A running group member.
pub(crate) struct GroupConsumer {
    consumer: Arc<StreamConsumer<GroupContext>>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
}

/// Stops a [`GroupConsumer`]'s committer (with a final commit).
pub(crate) struct GroupHandle {
    stop: watch::Sender<bool>,
    committer: tokio::task::JoinHandle<()>,
    pub shared: Arc<Shared>,
}

impl GroupHandle {
    /// Stops handing out records, commits what is done, and waits for that.
    pub(crate) async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.committer.await;
    }
}

/// How long a member that stopped answering keeps its partitions: a killed
/// dynamic member's partitions move to the others after it, and a static
/// member restarted within it takes its own back at once.
pub(crate) const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

impl GroupConsumer {
    /// Joins `group` on `topics`, as the static member `member` when given
    /// (`group.instance.id`). `client` carries bootstrap servers and
    /// credentials.
    pub(crate) async fn start(
        client: &ClientConfig,
        group: &str,
        member: Option<&str>,
        topics: &[String],
        initial: InitialOffset,
    ) -> Result<(GroupConsumer, GroupHandle), ConsumerError> {
        let error = |reason: String| ConsumerError {
            group: group.to_owned(),
            reason,
            settings_refused: false,
        };
        let shared = Arc::new(Shared::default());
        let mut config = client.clone();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // Only when a committed offset is out of range (retention): read
            // what is left rather than skip it. Where a new group starts is
            // decided by `initial` below.
            .set(
                "auto.offset.reset",
                match initial {
                    InitialOffset::Earliest => "earliest",
                    InitialOffset::Latest => "earliest",
                },
            )
            // A killed member's partitions move to the others within seconds.
            .set(
                "session.timeout.ms",
                SESSION_TIMEOUT.as_millis().to_string(),
            )
            .set("heartbeat.interval.ms", "1000")
            .set("statistics.interval.ms", "5000");
        if let Some(member) = member {
            // A static member: its partitions wait for it through a restart
            // within the session timeout, and it leaves no group on close.
            config.set("group.instance.id", member);
        }
        let errors = Arc::new(ClientErrors::default());
        let consumer: StreamConsumer<GroupContext> = config
            .create_with_context(GroupContext {
                shared: shared.clone(),
                group: group.to_owned(),
                errors: errors.clone(),
            })
            .map_err(|e| ConsumerError {
                settings_refused: true,
                ..error(format!("cannot create a consumer: {e}"))
            })?;
        let consumer = Arc::new(consumer);
        if initial == InitialOffset::Latest {
            let (c, t) = (consumer.clone(), topics.to_vec());
            tokio::task::spawn_blocking(move || commit_end_offsets_if_new(&c, &t))
                .await
                .map_err(|e| error(e.to_string()))?
                .map_err(|e| error(errors.explain(e)))?;
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| error(format!("cannot subscribe to {topics:?}: {e}")))?;
        let (stop_tx, stop) = watch::channel(false);
        let committer = tokio::spawn(commit_loop(
            consumer.clone(),
            shared.clone(),
            stop.clone(),
            group.to_owned(),
        ));
        Ok((
            GroupConsumer {
                consumer,
                shared: shared.clone(),
                stop,
            },
            GroupHandle {
                stop: stop_tx,
                committer,
                shared,
            },
        ))
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// A prober of `topics` through this member's connections, for the
    /// health of what consumes them; `kafka` and `check` as in [`Prober`].
    pub(crate) fn prober(&self, topics: &[String], kafka: String, check: &'static str) -> Prober {
        let consumer = self.consumer.clone();
        let topics = topics.to_vec();
        Prober {
            errors: consumer.context().errors.clone(),
            probe: Arc::new(move || health::probe(consumer.client(), &topics, TopicCheck::Exists)),
            kafka,
            check,
        }
    }

    /// The next record of an assigned partition, with the token its
    /// acknowledgement brings back; `keep` decides (after decoding) whether
    /// it is handed out at all: a record it refuses counts as done at once.
    /// `None` once stopped.
    pub(crate) async fn next<T>(
        &mut self,
        mut keep: impl FnMut(&OwnedMessage) -> Option<T>,
    ) -> Option<(T, OffsetToken, OwnedMessage)> {
        loop {
            if *self.stop.borrow() {
                return None;
            }
            let received = tokio::select! {
                received = self.consumer.recv() => received.map(|m| m.detach()),
                _ = self.stop.wait_for(|s| *s) => return None,
            };
            let message = match received {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(error = %e, "Kafka consumer error; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let (topic, partition, offset) = (
                message.topic().to_owned(),
                message.partition(),
                message.offset(),
            );
            let Some(value) = keep(&message) else {
                self.shared.tracker().skip(&topic, partition, offset);
                continue;
            };
            let Some(token) = self.shared.tracker().start(&topic, partition, offset) else {
                // Fetched just before its partition was revoked.
                continue;
            };
            return Some((value, token, message));
        }
    }
}

/// For a group that has committed nothing on a partition yet, commits the
/// partition's end offset, so that the group starts at the newest record.
fn commit_end_offsets_if_new(
    consumer: &StreamConsumer<GroupContext>,
    topics: &[String],
) -> Result<(), String> {
    let mut all = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(|e| format!("cannot read the metadata of topic {topic}: {e}"))?;
        let Some(found) = metadata.topics().first() else {
            return Err(format!("topic {topic} does not exist"));
        };
        if let Some(e) = found.error() {
            let code = rdkafka::error::RDKafkaErrorCode::from(e);
            return Err(format!("topic {topic}: {code}"));
        }
        for partition in found.partitions() {
            all.add_partition(topic, partition.id());
        }
    }
    let committed = consumer
        .committed_offsets(all, REQUEST_TIMEOUT)
        .map_err(|e| format!("cannot read committed offsets: {e}"))?;
    let mut commits = TopicPartitionList::new();
    for element in committed.elements() {
        if matches!(element.offset(), Offset::Offset(_)) {
            continue;
        }
        let (_, high) = consumer
            .fetch_watermarks(element.topic(), element.partition(), REQUEST_TIMEOUT)
            .map_err(|e| format!("cannot read the end offset of {}: {e}", element.topic()))?;
        commits
            .add_partition_offset(element.topic(), element.partition(), Offset::Offset(high))
            .map_err(|e| e.to_string())?;
    }
    if commits.count() > 0 {
        consumer
            .commit(&commits, CommitMode::Sync)
            .map_err(|e| format!("cannot commit the initial offsets: {e}"))?;
    }
    Ok(())
}

/// Commits done offsets every [`COMMIT_INTERVAL`], and once more on stop.
async fn commit_loop(
    consumer: Arc<StreamConsumer<GroupContext>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    group: String,
) {
    let mut tick = tokio::time::interval(COMMIT_INTERVAL);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let commits = shared.tracker().take_commits();
        if !commits.is_empty() {
            let mode = if stopping {
                CommitMode::Sync
            } else {
                CommitMode::Async
            };
            let result = commit_list(&commits).and_then(|list| consumer.commit(&list, mode));
            if let Err(e) = result {
                tracing::warn!(group = %group, error = %e, "committing offsets failed; retrying");
                shared.tracker().commit_failed(&commits);
            }
        }
        if stopping {
            return;
        }
    }
}
