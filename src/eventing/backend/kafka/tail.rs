//! A tail of a Kafka broker's topic: a consumer of its own that is
//! *assigned* every partition (no group membership, no rebalance) at offsets
//! it resolved itself, and commits nothing. Its `group.id`
//! (`pilotlight-tail.{topic}`) is only there because librdkafka asks for
//! one: the group is never joined and no offsets are written for it, so
//! tails leave no trace in Kafka and change no trigger's position.
//!
//! - [`TailStart::Now`]: each partition's high watermark, read before the
//!   tail is handed out, so every record produced after that is seen.
//! - [`TailStart::Since`]: `offsets_for_times` (ListOffsets by timestamp, as
//!   `kafka-consumer-groups --to-datetime`), the high watermark for a
//!   partition with nothing that recent.
//!
//! Partitions are read as they come: events of one partition keep their
//! order, events of different partitions interleave.

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use super::KafkaConfig;
use crate::eventing::backend::{TailError, TailItem, TailStart, TailStream};

/// Timeout of the metadata and offset requests made when opening.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The `group.id` a tail of `topic` is created with (never joined).
pub(crate) fn tail_group(topic: &str) -> String {
    format!("pilotlight-tail.{topic}")
}

pub(super) struct KafkaTail {
    consumer: StreamConsumer<DefaultConsumerContext>,
    stopping: watch::Receiver<bool>,
    topic: String,
}

impl KafkaTail {
    pub(super) async fn open(
        config: &KafkaConfig,
        from: TailStart,
        stopping: watch::Receiver<bool>,
    ) -> Result<KafkaTail, TailError> {
        let topic = config.topic.clone();
        let kafka = config.bootstrap_servers.clone();
        let mut client = config.client();
        client
            .set("group.id", tail_group(&topic))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // Retention removed the records at the tail's offset: read what is left.
            .set("auto.offset.reset", "earliest");
        let consumer: StreamConsumer<DefaultConsumerContext> = client
            .create()
            .map_err(|e| TailError::Unavailable(format!("cannot create a Kafka consumer: {e}")))?;
        let consumer = tokio::task::spawn_blocking(move || {
            let assignment = starting_offsets(&consumer, &topic, from)?;
            consumer.assign(&assignment).map_err(|e| {
                TailError::Unavailable(format!("cannot assign topic {topic}'s partitions: {e}"))
            })?;
            Ok::<_, TailError>(consumer)
        })
        .await
        .map_err(|e| TailError::Unavailable(e.to_string()))?
        .map_err(|e| match e {
            TailError::Unavailable(reason) => {
                TailError::Unavailable(format!("Kafka at {kafka}: {reason}"))
            }
            other => other,
        })?;
        Ok(KafkaTail {
            consumer,
            stopping,
            topic: config.topic.clone(),
        })
    }
}

/// Where each partition of `topic` is read from (blocking requests).
fn starting_offsets(
    consumer: &StreamConsumer<DefaultConsumerContext>,
    topic: &str,
    from: TailStart,
) -> Result<TopicPartitionList, TailError> {
    let unavailable = |what: &str, e: rdkafka::error::KafkaError| {
        TailError::Unavailable(format!("{what} of topic {topic}: {e}"))
    };
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| unavailable("reading the metadata", e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(TailError::Unavailable(format!(
            "topic {topic} has no partitions (does it exist?)"
        )));
    }
    let mut high = Vec::with_capacity(partitions.len());
    for &partition in &partitions {
        let (_, end) = consumer
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .map_err(|e| unavailable("reading the end offsets", e))?;
        high.push((partition, end));
    }
    let mut list = TopicPartitionList::new();
    match from {
        TailStart::Now => {
            for (partition, end) in high {
                list.add_partition_offset(topic, partition, Offset::Offset(end))
                    .map_err(|e| unavailable("assigning", e))?;
            }
        }
        TailStart::Since(since) => {
            let mut query = TopicPartitionList::new();
            for &partition in &partitions {
                query
                    .add_partition_offset(
                        topic,
                        partition,
                        Offset::Offset(since.timestamp_millis()),
                    )
                    .map_err(|e| unavailable("assigning", e))?;
            }
            let found = consumer
                .offsets_for_times(query, REQUEST_TIMEOUT)
                .map_err(|e| unavailable("finding offsets by time", e))?;
            for (partition, end) in high {
                let offset = found
                    .find_partition(topic, partition)
                    .and_then(|element| match element.offset() {
                        Offset::Offset(offset) if offset >= 0 => Some(offset),
                        _ => None,
                    })
                    .unwrap_or(end);
                list.add_partition_offset(topic, partition, Offset::Offset(offset))
                    .map_err(|e| unavailable("assigning", e))?;
            }
        }
    }
    Ok(list)
}

#[async_trait]
impl TailStream for KafkaTail {
    async fn next(&mut self) -> Option<TailItem> {
        loop {
            if *self.stopping.borrow() {
                return None;
            }
            let received = tokio::select! {
                received = self.consumer.recv() => received.map(|m| m.detach()),
                _ = self.stopping.wait_for(|s| *s) => return None,
            };
            match received {
                Ok(message) => {
                    if let Some(event) =
                        super::decode_event(&message, &format_args!("the tail of {}", self.topic))
                    {
                        return Some(TailItem::Event(std::sync::Arc::new(event)));
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "a tail's Kafka consumer failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}
