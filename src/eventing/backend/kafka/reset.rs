//! Moving a consumer group's committed offsets back, as
//! `kafka-consumer-groups --reset-offsets --to-datetime` (or `--to-offset`)
//! does: read each partition's committed offset and watermarks, find the
//! target (by time: the first record whose timestamp is at or after it,
//! Kafka's `ListOffsets`), and commit the targets for the group.
//!
//! Kafka takes such a commit only from outside an empty group: the caller
//! stops this process's member first. A static member (pilotlight's, see
//! `static_member`) stays in the group until its session times out, so the
//! commit is tried again until then; a member of another pilotlight process
//! keeps it refused, and the error says so.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaConfig;
use super::consumer::SESSION_TIMEOUT;
use crate::eventing::backend::{LanePosition, RewindError, RewindTo, Rewound};

/// Timeout of each metadata, offset and commit request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Finds the group's new offsets on the config's topic and, unless
/// `dry_run`, commits them.
pub(crate) async fn reset(
    config: &KafkaConfig,
    group: &str,
    to: RewindTo,
    dry_run: bool,
) -> Result<Rewound, RewindError> {
    let consumer: BaseConsumer = config
        .client()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| RewindError::Failed(format!("cannot create a Kafka consumer: {e}")))?;
    let (topic, group) = (config.topic.clone(), group.to_owned());
    tokio::task::spawn_blocking(move || reset_blocking(&consumer, &topic, &group, to, dry_run))
        .await
        .map_err(|e| RewindError::Failed(format!("resetting offsets: {e}")))?
}

fn failed(what: &str, e: impl std::fmt::Display) -> RewindError {
    RewindError::Failed(format!("{what}: {e}"))
}

fn reset_blocking(
    consumer: &BaseConsumer,
    topic: &str,
    group: &str,
    to: RewindTo,
    dry_run: bool,
) -> Result<Rewound, RewindError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| failed(&format!("reading the metadata of topic {topic}"), e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(RewindError::Failed(format!(
            "topic {topic} has no partitions (does it exist?)"
        )));
    }
    let mut all = TopicPartitionList::new();
    for &partition in &partitions {
        all.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(all.clone(), REQUEST_TIMEOUT)
        .map_err(|e| failed(&format!("reading the offsets of group {group}"), e))?;
    let by_time = match to {
        RewindTo::Time(ms) => {
            let mut times = TopicPartitionList::new();
            for &partition in &partitions {
                times
                    .add_partition_offset(topic, partition, Offset::Offset(ms))
                    .map_err(|e| failed("building the offset request", e))?;
            }
            Some(
                consumer
                    .offsets_for_times(times, REQUEST_TIMEOUT)
                    .map_err(|e| failed(&format!("finding offsets by time on {topic}"), e))?,
            )
        }
        RewindTo::Offset(_) => None,
    };
    let mut positions = Vec::new();
    let mut targets = TopicPartitionList::new();
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .map_err(|e| failed(&format!("reading the offsets of {topic}/{partition}"), e))?;
        let (low, high) = (low.max(0) as u64, high.max(0) as u64);
        let current = match committed
            .find_partition(topic, partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(o)) if o >= 0 => (o as u64).min(high),
            // Nothing committed: the trigger starts at the end.
            _ => high,
        };
        let target = match (to, &by_time) {
            (RewindTo::Offset(offset), _) => {
                if offset > high {
                    return Err(RewindError::OutOfRange(format!(
                        "offset {offset} is beyond partition {partition} of {topic}: its next offset is {high}"
                    )));
                }
                if offset < low {
                    return Err(RewindError::OutOfRange(format!(
                        "offset {offset} of partition {partition} of {topic} is gone: retention removed it; the oldest kept is {low}"
                    )));
                }
                offset
            }
            (RewindTo::Time(_), found) => match found
                .as_ref()
                .and_then(|f| f.find_partition(topic, partition))
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) if o >= 0 => (o as u64).clamp(low, high),
                // No record at or after the time.
                _ => high,
            },
        };
        let target = target.min(current);
        positions.push(LanePosition {
            lane: partition as u32,
            from: current,
            to: target,
        });
        targets
            .add_partition_offset(topic, partition, Offset::Offset(target as i64))
            .map_err(|e| failed("building the commit", e))?;
    }
    let events = positions.iter().map(|p| p.from - p.to).sum();
    if !dry_run {
        commit_when_empty(consumer, group, &targets)?;
        tracing::info!(
            group,
            ?positions,
            "replay: reset the consumer group's offsets"
        );
    }
    Ok(Rewound {
        events,
        positions,
        note: None,
    })
}

/// Commits `targets` for the group from outside it, trying again while a
/// member that already stopped is still in it (until its session ends).
fn commit_when_empty(
    consumer: &BaseConsumer,
    group: &str,
    targets: &TopicPartitionList,
) -> Result<(), RewindError> {
    let deadline = Instant::now() + SESSION_TIMEOUT + Duration::from_secs(5);
    loop {
        match consumer.commit(targets, CommitMode::Sync) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(group, error = %e, "the group still has a member; committing again");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(RewindError::Failed(format!(
                    "Kafka refused the new offsets of consumer group {group}: {e}; a group's \
                     offsets can be reset only while none of its members runs (does another \
                     pilotlight process deliver this trigger?)"
                )));
            }
        }
    }
}
