//! A tail over a local backend: a reader with its own offset, like a
//! trigger's but with no filter, no acknowledgements and no cursor, so the
//! broker does not know it is there: appends never wait for it and the
//! memory backend does not keep events for it. It reads the in-memory tail
//! while it keeps up and the store when it falls behind (the log); events
//! gone before it read them (retention, or memory's eviction of delivered
//! events) come out as [`TailItem::Skipped`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{Shared, Store};
use crate::eventing::backend::{TailError, TailItem, TailStart, TailStream};

/// Events taken from the tail or the store per lock or read.
const READ_BATCH: usize = 256;

pub(super) struct LocalTail<S: Store> {
    shared: Arc<Shared<S>>,
    next_offset: u64,
    head: watch::Receiver<u64>,
    stopping: watch::Receiver<bool>,
    buffer: VecDeque<TailItem>,
}

impl<S: Store> LocalTail<S> {
    pub(super) async fn open(shared: Arc<Shared<S>>, from: TailStart) -> Result<Self, TailError> {
        let head = shared.head.subscribe();
        let stopping = shared.stopping.subscribe();
        if *stopping.borrow() {
            return Err(TailError::Unavailable("the broker is stopping".into()));
        }
        let next_offset = match from {
            TailStart::Now => shared.lock().head(),
            TailStart::Since(since) => {
                let since_ms = since.timestamp_millis();
                if S::DURABLE {
                    let store = shared.store.clone();
                    let stored = tokio::task::spawn_blocking(move || store.offset_at(since_ms))
                        .await
                        .map_err(|e| TailError::Unavailable(e.to_string()))?
                        .map_err(|e| TailError::Unavailable(format!("reading the log: {e}")))?;
                    let state = shared.lock();
                    let (first_kept, _) = shared.store.bounds();
                    stored.clamp(first_kept.min(state.head()), state.head())
                } else {
                    // Memory keeps no append times on disk: its tail's own.
                    shared.tail_offset_at(since_ms)
                }
            }
        };
        Ok(LocalTail {
            shared,
            next_offset,
            head,
            stopping,
            buffer: VecDeque::new(),
        })
    }

    /// Takes the next batch from the in-memory tail. `false`: the reader is
    /// behind it and must read the store.
    fn read_tail(&mut self) -> bool {
        let state = self.shared.lock();
        if self.next_offset < state.tail_start {
            if S::DURABLE {
                return false;
            }
            // Memory keeps nothing behind its tail.
            self.buffer
                .push_back(TailItem::Skipped(state.tail_start - self.next_offset));
            self.next_offset = state.tail_start;
        }
        let end = state.head().min(self.next_offset + READ_BATCH as u64);
        for offset in self.next_offset..end {
            if let Some(entry) = state.tail.get((offset - state.tail_start) as usize) {
                self.buffer.push_back(TailItem::Event(entry.event.clone()));
            }
        }
        self.next_offset = end;
        true
    }

    /// Reads the next batch from the store. `Err`: the store failed, said in
    /// the log; the tail ends.
    async fn read_store(&mut self) -> Result<(), ()> {
        let from = self.next_offset;
        let store = self.shared.store.clone();
        let records = match tokio::task::spawn_blocking(move || store.read(from, READ_BATCH)).await
        {
            Ok(Ok(records)) => records,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "a tail could not read the log; ending it");
                return Err(());
            }
            Err(e) => {
                tracing::error!(error = %e, "a tail's log read failed; ending it");
                return Err(());
            }
        };
        let mut expected = from;
        for (offset, event) in records {
            if offset > expected {
                self.buffer.push_back(TailItem::Skipped(offset - expected));
            }
            expected = offset + 1;
            self.buffer.push_back(TailItem::Event(Arc::new(event)));
        }
        if expected == from {
            // Nothing at `from`: retention removed it; resume at the oldest kept.
            let (first_kept, _) = self.shared.store.bounds();
            let resume_at = first_kept.min(self.shared.lock().head());
            if resume_at > from {
                self.buffer.push_back(TailItem::Skipped(resume_at - from));
                expected = resume_at;
            } else {
                // The store has nothing durable there yet: look again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.next_offset = expected;
        Ok(())
    }
}

#[async_trait]
impl<S: Store> TailStream for LocalTail<S> {
    async fn next(&mut self) -> Option<TailItem> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                return Some(item);
            }
            if *self.stopping.borrow() {
                return None;
            }
            let head = *self.head.borrow_and_update();
            if self.next_offset >= head {
                tokio::select! {
                    changed = self.head.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                    }
                    _ = self.stopping.wait_for(|stop| *stop) => return None,
                }
                continue;
            }
            if !self.read_tail() && self.read_store().await.is_err() {
                return None;
            }
        }
    }
}
