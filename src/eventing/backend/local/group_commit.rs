//! The single writer thread of a durable local backend: group commit.
//!
//! Appends queue up while the thread writes and syncs the previous group; the
//! next group is everything queued by then, written in order and made durable
//! by one `sync`. Callers hear back only after that sync, then their events are
//! published to subscriptions in offset order.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Shared, Store};
use crate::cloudevent::Event;
use crate::eventing::backend::AppendError;
use crate::eventing::trigger::filter::MatchSet;

/// Requests written and synced together at most, to bound a group's latency.
const MAX_GROUP: usize = 1024;

struct Request {
    events: Vec<Arc<Event>>,
    matches: Vec<MatchSet>,
    reply: oneshot::Sender<Result<(), AppendError>>,
}

/// The handle to a durable store's writer thread: [`GroupCommit::append`]
/// queues events and answers once the group they joined is synced.
pub(super) struct GroupCommit {
    sender: Mutex<Option<SyncSender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    max_pending: usize,
}

impl GroupCommit {
    pub(super) fn start<S: Store>(shared: Arc<Shared<S>>, max_pending: usize) -> Self {
        let (sender, receiver) = sync_channel(max_pending);
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_loop(shared, receiver))
            .ok();
        if thread.is_none() {
            tracing::error!("could not start the log writer thread");
        }
        GroupCommit {
            sender: Mutex::new(Some(sender)),
            thread: Mutex::new(thread),
            max_pending,
        }
    }

    pub(super) async fn append(
        &self,
        events: Vec<Arc<Event>>,
        matches: Vec<MatchSet>,
    ) -> Result<(), AppendError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            events,
            matches,
            reply,
        };
        let sent = match &*self.sender.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(sender) => sender.try_send(request),
            None => Err(TrySendError::Disconnected(request)),
        };
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(AppendError::Overloaded(self.max_pending)),
            Err(TrySendError::Disconnected(_)) => return Err(shutting_down()),
        }
        answer.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// Lets queued appends finish, then stops the thread.
    pub(super) async fn stop(&self) {
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn shutting_down() -> AppendError {
    AppendError::Unavailable {
        reason: "the broker is shutting down".into(),
        retry_after: Duration::from_secs(1),
    }
}

fn write_loop<S: Store>(shared: Arc<Shared<S>>, receiver: Receiver<Request>) {
    while let Ok(first) = receiver.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        // One append for the whole group: one buffered write, one sync.
        let all: Vec<Arc<Event>> = group
            .iter()
            .flat_map(|r| r.events.iter().cloned())
            .collect();
        let written = shared
            .store
            .append(&all)
            .and_then(|first| shared.store.sync().map(|()| first));
        match written.map(|first| first_offsets(first, &group)) {
            Ok(offsets) => {
                metrics::histogram!("pilotlight_log_group_commit_size").record(group.len() as f64);
                let mut replies = Vec::with_capacity(group.len());
                let batches: Vec<_> = group
                    .into_iter()
                    .zip(offsets)
                    .map(|(request, first)| {
                        replies.push(request.reply);
                        (Some(first), request.events, request.matches)
                    })
                    .collect();
                shared.publish(batches);
                for reply in replies {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "writing events to the log failed");
                for request in group {
                    let _ = request.reply.send(Err(AppendError::Unavailable {
                        reason: e.append_reason(),
                        retry_after: Duration::from_secs(5),
                    }));
                }
            }
        }
    }
}

/// The offset of each request's first event, given the group's first offset.
fn first_offsets(first: u64, group: &[Request]) -> Vec<u64> {
    group
        .iter()
        .scan(first, |next, request| {
            let this = *next;
            *next += request.events.len() as u64;
            Some(this)
        })
        .collect()
}
