//! A trigger's subscription on a RabbitMQBroker: a consumer on the trigger's
//! queue with prefetch = the trigger's parallelism, recreated after a lost
//! connection (RabbitMQ then redelivers what was not acked).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::sync::watch;

use super::binding;
use super::connection::{Link, declare_queue, short};
use super::settle::{Settlement, Settler};
use crate::api::ObjectKey;
use crate::api::filter::Filter;
use crate::backoff::Backoff;
use crate::eventing::backend::{Acknowledge, Delivery, Subscription};

/// Pause after a failed consumer setup, doubling up to the maximum.
const RETRY_START: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often an idle consumer checks that its channel is still open.
const CHANNEL_CHECK: Duration = Duration::from_millis(500);

pub(super) struct RabbitSubscription {
    pub(super) link: Arc<Link>,
    pub(super) trigger: ObjectKey,
    pub(super) queue: String,
    pub(super) filter: Arc<Filter>,
    pub(super) prefetch: u16,
    /// Set when the trigger subscribes again, unsubscribes or the broker stops.
    pub(super) replaced: watch::Receiver<bool>,
    pub(super) consuming: Option<Consuming>,
}

pub(super) struct Consuming {
    channel: Channel,
    consumer: Consumer,
    /// Acks and rejects the consumer's deliveries; closes the channel.
    settler: Settler,
    check: tokio::time::Interval,
}

#[async_trait]
impl Subscription for RabbitSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        let mut backoff = Backoff::new(RETRY_START, RETRY_MAX);
        loop {
            if *self.replaced.borrow() || self.link.is_stopped() {
                self.close();
                return None;
            }
            let Some(consuming) = &mut self.consuming else {
                match self.consume().await {
                    Ok(Some(consuming)) => {
                        self.consuming = Some(consuming);
                        backoff.reset();
                    }
                    Ok(None) => return None,
                    Err(e) => {
                        let pause = backoff.next_delay();
                        tracing::warn!(trigger = %self.trigger, queue = %self.queue, error = %e, "cannot consume from the trigger's queue; retrying in {pause:?}");
                        self.sleep(pause).await;
                    }
                }
                continue;
            };
            let Consuming {
                channel,
                consumer,
                check,
                ..
            } = consuming;
            let message = tokio::select! {
                message = consumer.next() => message,
                _ = self.replaced.changed() => continue,
                _ = async { loop {
                    check.tick().await;
                    if !channel.status().connected() { break }
                } } => None,
            };
            let delivery = match message {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => {
                    tracing::info!(trigger = %self.trigger, error = %e, "the trigger's consumer stopped; consuming again once RabbitMQ is back");
                    self.close();
                    continue;
                }
                None => {
                    self.close();
                    continue;
                }
            };
            let Some(consuming) = &self.consuming else {
                continue;
            };
            if let Some(delivery) = self.accept(&consuming.settler, delivery) {
                return Some(delivery);
            }
        }
    }
}

impl RabbitSubscription {
    /// Opens a channel and a consumer on the trigger's queue once a session
    /// is live. `Ok(None)`: the subscription ended while waiting.
    async fn consume(&mut self) -> Result<Option<Consuming>, String> {
        let session = tokio::select! {
            session = self.link.next_session() => session,
            _ = self.replaced.wait_for(|r| *r) => None,
        };
        let Some(session) = session else {
            return Ok(None);
        };
        let Some(binding) = self.link.topology().queues.get(&self.queue).cloned() else {
            // Unsubscribed meanwhile.
            return Ok(None);
        };
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(|e| format!("cannot open a channel: {e}"))?;
        let setup = async {
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| format!("cannot set the prefetch: {e}"))?;
            declare_queue(
                &channel,
                &self.link.exchange(),
                &self.queue,
                self.link.queue_type(),
                binding,
            )
            .await?;
            channel
                .basic_consume(
                    short(&self.queue)?,
                    short(&format!("pilotlight {}", self.trigger))?,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| format!("cannot consume: {e}"))
        };
        match setup.await {
            Ok(consumer) => {
                let mut check = tokio::time::interval(CHANNEL_CHECK);
                check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Ok(Some(Consuming {
                    settler: Settler::start(channel.clone()),
                    channel,
                    consumer,
                    check,
                }))
            }
            Err(e) => {
                let _ = channel.close(200, "setup failed".into()).await;
                Err(e)
            }
        }
    }

    /// The delivery for the dispatcher, or `None` when the message is done
    /// with here: not a CloudEvent (rejected, so a dead-letter exchange the
    /// operator set on the queue gets it) or not matching the parts of the
    /// filter RabbitMQ could not evaluate (acked).
    fn accept(&self, settler: &Settler, mut message: lapin::message::Delivery) -> Option<Delivery> {
        let settlement = settler.track(message.delivery_tag);
        let body = bytes::Bytes::from(std::mem::take(&mut message.data));
        match binding::decode(&message.properties, body) {
            Ok(event) if self.filter.matches(&event) => Some(Delivery::new(
                Arc::new(event),
                0,
                Box::new(RabbitAck { settlement }),
            )),
            Ok(_) => {
                settlement.ack();
                None
            }
            Err(e) => {
                tracing::warn!(trigger = %self.trigger, queue = %self.queue, error = %e, "a message in the trigger's queue is not a CloudEvent; rejecting it");
                settlement.reject();
                None
            }
        }
    }

    /// Sleeps, unless the subscription ends first.
    async fn sleep(&mut self, pause: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = self.replaced.wait_for(|r| *r) => {}
        }
    }

    /// Acks what was settled and closes the consumer's channel: RabbitMQ
    /// requeues what was not. The broker's shutdown waits for it.
    fn close(&mut self) {
        if let Some(consuming) = self.consuming.take() {
            self.link.closing(consuming.settler.close());
        }
    }
}

impl Drop for RabbitSubscription {
    fn drop(&mut self) {
        self.close();
    }
}

/// Acks the message on the channel it came from, through its settler. If
/// that channel is gone, RabbitMQ has requeued the message already and
/// delivers it again.
struct RabbitAck {
    settlement: Settlement,
}

#[async_trait]
impl Acknowledge for RabbitAck {
    async fn ack(self: Box<Self>) {
        self.settlement.ack();
    }
}
