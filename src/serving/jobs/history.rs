//! A JobSink's jobs: the running ones, and the last finished ones up to
//! its limit (`pilotlight.dev/job-history-limit`), oldest dropped first.
//! Kept in memory: a restart starts an empty history.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::api::jobsink::JobRecord;

/// A job already in the history.
pub(super) enum Found {
    Ended(Box<JobRecord>),
    /// Running: its record changes once when it ends.
    Running(watch::Receiver<JobRecord>),
}

pub(super) struct History {
    limit: usize,
    /// By name: the live record, and the channel its end is sent on.
    running: BTreeMap<String, (Arc<Mutex<JobRecord>>, watch::Receiver<JobRecord>)>,
    /// Oldest first.
    finished: VecDeque<JobRecord>,
}

impl History {
    pub(super) fn new(limit: usize) -> Self {
        History {
            limit: limit.max(1),
            running: BTreeMap::new(),
            finished: VecDeque::new(),
        }
    }

    pub(super) fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(1);
        self.trim();
    }

    pub(super) fn find(&self, name: &str) -> Option<Found> {
        if let Some((_, done)) = self.running.get(name) {
            return Some(Found::Running(done.clone()));
        }
        self.finished
            .iter()
            .rev()
            .find(|r| r.name == name)
            .map(|r| Found::Ended(Box::new(r.clone())))
    }

    /// A job starts; the returned sender announces its end to those who
    /// wait for it.
    pub(super) fn start(&mut self, record: Arc<Mutex<JobRecord>>) -> watch::Sender<JobRecord> {
        let current = record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let name = current.name.clone();
        let (done, waiting) = watch::channel(current);
        self.running.insert(name, (record, waiting));
        done
    }

    pub(super) fn finish(&mut self, name: &str, record: JobRecord) {
        self.running.remove(name);
        self.finished.retain(|r| r.name != name);
        self.finished.push_back(record);
        self.trim();
    }

    /// A job that stopped without an outcome (pilotlight is stopping).
    pub(super) fn forget(&mut self, name: &str) {
        self.running.remove(name);
    }

    fn trim(&mut self) {
        while self.finished.len() > self.limit {
            self.finished.pop_front();
        }
    }

    /// Every job, newest first: the running ones (by start), then the
    /// finished ones.
    pub(super) fn records(&self) -> Vec<JobRecord> {
        let mut running: Vec<JobRecord> = self
            .running
            .values()
            .map(|(r, _)| r.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .collect();
        running.sort_by(|a, b| b.start_time.cmp(&a.start_time));
        running.extend(self.finished.iter().rev().cloned());
        running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, state: &str) -> JobRecord {
        JobRecord {
            name: name.into(),
            event_id: name.into(),
            event_source: "/test".into(),
            start_time: "2025-01-01T00:00:00Z".into(),
            completion_time: None,
            state: state.into(),
            attempts: 1,
            failed: 0,
            exit_code: None,
            reason: None,
            message: None,
            output: Vec::new(),
        }
    }

    #[test]
    fn keeps_the_running_and_the_last_finished() {
        let mut history = History::new(2);
        for n in 0..4 {
            let name = format!("j{n}");
            let _done = history.start(Arc::new(Mutex::new(record(&name, JobRecord::RUNNING))));
            history.finish(&name, record(&name, JobRecord::SUCCEEDED));
        }
        let _running = history.start(Arc::new(Mutex::new(record("r", JobRecord::RUNNING))));
        let names: Vec<String> = history.records().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["r", "j3", "j2"]);
        assert!(matches!(history.find("j3"), Some(Found::Ended(_))));
        assert!(matches!(history.find("r"), Some(Found::Running(_))));
        assert!(history.find("j0").is_none());
        history.forget("r");
        assert!(history.find("r").is_none());
    }
}
