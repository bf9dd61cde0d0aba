//! Settling the deliveries of one consumer channel in as few frames as
//! RabbitMQ allows.
//!
//! Each ack is a command in a quorum queue's Raft log, so acking every
//! message on its own is a large part of RabbitMQ's work per message (a raw
//! lapin consumer moves about a quarter more messages through a quorum queue
//! when it acks ten at a time). AMQP's `multiple` flag acks every delivery up
//! to a tag in one frame, but may only be used once every delivery below that
//! tag is settled. So a [`Settler`] keeps the deliveries it handed out in tag
//! order and:
//!
//! - acks the settled run at the front with one `multiple` ack, after letting
//!   the other ready tasks run once so that deliveries finishing together
//!   share the frame;
//! - acks a delivery settled behind an unsettled one on its own once it has
//!   waited [`HOLD`], so that a slow delivery (a subscriber in retries) does
//!   not keep finished ones unacked, holding prefetch slots;
//! - sends rejects as soon as they come, in order with the acks, because a
//!   `multiple` ack must never cover a delivery whose reject is not sent yet;
//! - on close, acks everything settled and then closes the channel, so that
//!   RabbitMQ requeues exactly what was not settled.
//!
//! A delivery whose [`Settlement`] is dropped unused stays unacked until the
//! channel closes, and RabbitMQ delivers it again.

use std::collections::VecDeque;
use std::time::Duration;

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::types::DeliveryTag;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Longest time a settled delivery waits for the unsettled ones before it
/// to be acked together with them.
pub(crate) const HOLD: Duration = Duration::from_millis(10);

/// The settling task of one consumer channel.
pub(crate) struct Settler {
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
}

/// One delivery's verdict, to be given once.
pub(crate) struct Settlement {
    tag: DeliveryTag,
    commands: mpsc::UnboundedSender<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ack,
    /// Rejected without requeueing: to the queue's dead-letter exchange, if any.
    Reject,
}

enum Command {
    /// A delivery handed out, in tag order.
    Tracked(DeliveryTag),
    Settled(DeliveryTag, Verdict),
    Close,
}

impl Settler {
    /// Starts settling `channel`'s deliveries; the settler closes the channel
    /// when it is closed.
    pub(crate) fn start(channel: Channel) -> Settler {
        let (commands, queue) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(channel, queue));
        Settler { commands, task }
    }

    /// Takes on a delivery. Call it in the order the consumer delivers, and
    /// before the delivery can be settled.
    pub(crate) fn track(&self, tag: DeliveryTag) -> Settlement {
        let _ = self.commands.send(Command::Tracked(tag));
        Settlement {
            tag,
            commands: self.commands.clone(),
        }
    }

    /// Acks what is settled, closes the channel, and waits until both are done.
    pub(crate) async fn close(self) {
        let _ = self.commands.send(Command::Close);
        let _ = self.task.await;
    }
}

impl Settlement {
    pub(crate) fn ack(self) {
        self.settle(Verdict::Ack);
    }

    /// Rejects the delivery without requeueing it.
    pub(crate) fn reject(self) {
        self.settle(Verdict::Reject);
    }

    fn settle(self, verdict: Verdict) {
        // The settler is gone only when the channel is: RabbitMQ requeues.
        let _ = self.commands.send(Command::Settled(self.tag, verdict));
    }
}

async fn run(channel: Channel, mut queue: mpsc::UnboundedReceiver<Command>) {
    let mut ledger = Ledger::default();
    loop {
        let command = match ledger.next_release() {
            None => queue.recv().await,
            Some(at) => match tokio::time::timeout_at(at, queue.recv()).await {
                Ok(command) => command,
                Err(_) => {
                    send(&channel, ledger.take_ready(Instant::now(), false)).await;
                    continue;
                }
            },
        };
        // All settlements and the settler dropped: nothing more will come.
        let Some(command) = command else { break };
        let mut closing = ledger.apply(command);
        // Let deliveries that finish at the same moment join this batch.
        tokio::task::yield_now().await;
        while let Ok(command) = queue.try_recv() {
            closing |= ledger.apply(command);
        }
        send(&channel, ledger.take_ready(Instant::now(), closing)).await;
        if closing {
            break;
        }
    }
    let _ = channel.close(200, "consumer closed".into()).await;
}

/// A frame to send: ack or reject of one tag, or ack of every tag up to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    Ack { tag: DeliveryTag, multiple: bool },
    Reject(DeliveryTag),
}

async fn send(channel: &Channel, frames: Vec<Frame>) {
    for frame in frames {
        let sent = match frame {
            Frame::Ack { tag, multiple } => {
                channel.basic_ack(tag, BasicAckOptions { multiple }).await
            }
            Frame::Reject(tag) => {
                channel
                    .basic_reject(tag, BasicRejectOptions { requeue: false })
                    .await
            }
        };
        if let Err(e) = sent {
            // The channel is gone, so RabbitMQ requeues what it had not got.
            tracing::debug!(error = %e, "settling a delivery after its channel closed; RabbitMQ delivers it again");
            return;
        }
    }
}

/// The deliveries handed out and not yet sent back, oldest first.
#[derive(Default)]
struct Ledger {
    entries: VecDeque<Entry>,
    /// How many entries are settled (and wait to be sent).
    settled: usize,
}

struct Entry {
    tag: DeliveryTag,
    settled: Option<(Verdict, Instant)>,
}

impl Ledger {
    /// Records a command; true for [`Command::Close`].
    fn apply(&mut self, command: Command) -> bool {
        match command {
            Command::Tracked(tag) => self.entries.push_back(Entry { tag, settled: None }),
            Command::Settled(tag, verdict) => {
                let found = self.entries.binary_search_by_key(&tag, |e| e.tag);
                if let Ok(at) = found
                    && self.entries[at].settled.is_none()
                {
                    self.entries[at].settled = Some((verdict, Instant::now()));
                    self.settled += 1;
                }
            }
            Command::Close => return true,
        }
        false
    }

    /// When the oldest held entry is due, if any is held.
    fn next_release(&self) -> Option<Instant> {
        if self.settled == 0 {
            return None;
        }
        self.entries
            .iter()
            .filter_map(|e| e.settled.map(|(_, at)| at + HOLD))
            .min()
    }

    /// The frames to send now, taking their entries out: the settled run at
    /// the front (one `multiple` ack per stretch between rejects), then the
    /// rejects behind it and the acks that waited long enough (or all of
    /// them, when closing).
    fn take_ready(&mut self, now: Instant, closing: bool) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut run: Option<(DeliveryTag, usize)> = None;
        while let Some(Entry {
            tag,
            settled: Some((verdict, _)),
        }) = self.entries.front()
        {
            let (tag, verdict) = (*tag, *verdict);
            self.entries.pop_front();
            self.settled -= 1;
            match verdict {
                Verdict::Ack => run = Some((tag, run.map_or(1, |(_, n)| n + 1))),
                Verdict::Reject => {
                    frames.extend(run.take().map(run_frame));
                    frames.push(Frame::Reject(tag));
                }
            }
        }
        frames.extend(run.map(run_frame));
        if self.settled > 0 {
            let before = frames.len();
            self.entries.retain(|entry| match entry.settled {
                Some((Verdict::Reject, _)) => {
                    frames.push(Frame::Reject(entry.tag));
                    false
                }
                Some((Verdict::Ack, at)) if closing || now >= at + HOLD => {
                    frames.push(Frame::Ack {
                        tag: entry.tag,
                        multiple: false,
                    });
                    false
                }
                _ => true,
            });
            self.settled -= frames.len() - before;
        }
        frames
    }
}

/// One frame for a run of `count` acks ending at `tag`.
fn run_frame((tag, count): (DeliveryTag, usize)) -> Frame {
    Frame::Ack {
        tag,
        multiple: count > 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(tags: std::ops::RangeInclusive<u64>) -> Ledger {
        let mut ledger = Ledger::default();
        for tag in tags {
            ledger.apply(Command::Tracked(tag));
        }
        ledger
    }

    fn settle(ledger: &mut Ledger, tags: &[u64], verdict: Verdict) {
        for &tag in tags {
            ledger.apply(Command::Settled(tag, verdict));
        }
    }

    fn ack(tag: u64, multiple: bool) -> Frame {
        Frame::Ack { tag, multiple }
    }

    #[test]
    fn a_settled_front_run_is_one_multiple_ack() {
        let mut ledger = ledger(1..=5);
        settle(&mut ledger, &[2, 1, 3], Verdict::Ack);
        assert_eq!(ledger.take_ready(Instant::now(), false), vec![ack(3, true)]);
        settle(&mut ledger, &[4], Verdict::Ack);
        assert_eq!(
            ledger.take_ready(Instant::now(), false),
            vec![ack(4, false)]
        );
        assert_eq!(ledger.entries.len(), 1);
        assert_eq!(ledger.settled, 0);
    }

    #[test]
    fn acks_behind_an_unsettled_delivery_wait_then_go_alone() {
        let mut ledger = ledger(1..=3);
        settle(&mut ledger, &[2, 3], Verdict::Ack);
        let now = Instant::now();
        assert!(ledger.take_ready(now, false).is_empty());
        assert!(ledger.next_release().is_some_and(|at| at <= now + HOLD));
        assert_eq!(
            ledger.take_ready(now + HOLD, false),
            vec![ack(2, false), ack(3, false)]
        );
        assert_eq!(ledger.next_release(), None);
        // Tag 1 is still out: a later multiple ack may cover 2 and 3 again,
        // which RabbitMQ allows, but never 1 before it is settled.
        settle(&mut ledger, &[1], Verdict::Ack);
        assert_eq!(ledger.take_ready(now, false), vec![ack(1, false)]);
    }

    #[test]
    fn rejects_go_at_once_and_split_the_run() {
        let mut ledger = ledger(1..=6);
        settle(&mut ledger, &[1, 2], Verdict::Ack);
        settle(&mut ledger, &[3, 6], Verdict::Reject);
        settle(&mut ledger, &[4], Verdict::Ack);
        assert_eq!(
            ledger.take_ready(Instant::now(), false),
            vec![
                ack(2, true),
                Frame::Reject(3),
                ack(4, false),
                Frame::Reject(6)
            ]
        );
        assert_eq!(ledger.entries.len(), 1);
        assert_eq!(ledger.settled, 0);
    }

    #[test]
    fn closing_acks_everything_settled_and_leaves_the_rest() {
        let mut ledger = ledger(1..=4);
        settle(&mut ledger, &[2, 4], Verdict::Ack);
        assert_eq!(
            ledger.take_ready(Instant::now(), true),
            vec![ack(2, false), ack(4, false)]
        );
        assert_eq!(
            ledger.entries.iter().map(|e| e.tag).collect::<Vec<_>>(),
            [1, 3]
        );
    }

    #[test]
    fn unknown_and_repeated_settlements_are_ignored() {
        let mut ledger = ledger(1..=2);
        settle(&mut ledger, &[9], Verdict::Ack);
        settle(&mut ledger, &[2, 2], Verdict::Ack);
        assert_eq!(ledger.settled, 1);
        assert!(ledger.take_ready(Instant::now(), false).is_empty());
    }
}
