//! JobSinks' jobs: each event handed to a JobSink runs its `spec.job` once,
//! to completion, with the event as a file (Knative's
//! `/etc/jobsink-event/event`, the structured-mode JSON of the CloudEvent)
//! and `K_EXECUTION_MODE=batch`.
//!
//! # The contract with the event intake
//!
//! The eventing half owns a JobSink's ingress (`control::jobsink_intake`
//! wires a channel on the log and a subscription for it): it stores each
//! event (202 once stored), and delivers it to the job endpoint of the
//! admin listener,
//! `POST /internal/v1/jobsinks/{namespace}/{name}` (see
//! `control::admin::jobsink_path`), with at most
//! [`JobSink::max_running_jobs`] deliveries in flight. The endpoint takes
//! one CloudEvent (binary or structured mode) and answers **when the job
//! has ended**:
//! - `200` with the job's [`JobRecord`] as JSON, whether the job succeeded
//!   or failed for good (after its retries): the outcome is the history's,
//!   the event is done. An event whose `source` and `id` match a job in the
//!   history is not run again (Knative's idempotency): its record is the
//!   answer, or, while it runs, the answer once it ends.
//! - `400`: not one valid CloudEvent.
//! - `404`: no such JobSink.
//! - `503`: jobs cannot start at all (no container engine, a template the
//!   runtime cannot run, pilotlight stopping): deliver again later.
//!
//! So the dispatcher's in-flight limit is the concurrency limit, and events
//! beyond it wait stored. This side also holds each JobSink to its limit
//! (a semaphore), so that direct calls cannot exceed it either.
//!
//! # Runtimes
//!
//! Locally ([`local`]) a job is pods run one after another (or
//! `parallelism` at once, until `completions` succeeded), each pod the
//! template's containers as local processes or in the container engine,
//! chosen as for Services (`pilotlight.dev/runtime`, else images mean
//! containers). A failed pod is tried again after a backoff (Kubernetes':
//! 10 s doubling to 6 min) until `backoffLimit` pods failed;
//! `activeDeadlineSeconds` ends the job, and `podFailurePolicy` rules on
//! exit codes fail it at once or ignore a failure. In Kubernetes mode
//! ([`kubernetes`]) a batch/v1 Job does all that.

mod history;
mod kubernetes;
mod local;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use crate::api::ObjectKey;
use crate::api::jobsink::{JobRecord, JobSink};
use crate::api::manifest::Loaded;
use crate::api::status::{Address, ObjectView, Status};
use crate::cloudevent::Event;
use history::{Found, History};
pub(crate) use kubernetes::KubernetesJobs;
pub(crate) use local::LocalJobs;

/// The variable that holds the event file's path: a process cannot see a
/// mount, so the local process runtime points here; containers get
/// `/etc/jobsink-event/event` (or where the template mounts the event).
pub const EVENT_PATH_ENV: &str = "K_EVENT_PATH";
/// The and Knative's docs' name of the execution mode variable.
pub const EXECUTION_MODE_ENV: &str = "K_EXECUTION_MODE";
/// The name Knative's webhook sets (`KNATIVE_EXECUTION_MODE`); both are set.
pub const KNATIVE_EXECUTION_MODE_ENV: &str = "KNATIVE_EXECUTION_MODE";

/// Settings of the job runner.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Where local jobs' event files go (`{data_dir}/serving/jobs/...`).
    pub data_dir: PathBuf,
    /// Jobs of one JobSink at once without `pilotlight.dev/max-running-jobs`
    /// (`--max-running-jobs`).
    pub max_running_jobs: usize,
    /// The wait before the second pod of a failed job; it doubles with each
    /// further failure (Kubernetes: 10 s).
    pub backoff_initial: Duration,
    /// The longest wait between pods (Kubernetes: 6 min).
    pub backoff_max: Duration,
    /// How long a stopped job's processes get after SIGTERM.
    pub stop_grace: Duration,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            data_dir: PathBuf::from(".pilotlight"),
            max_running_jobs: 4,
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(360),
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// One event's job, for a runtime.
#[derive(Debug, Clone)]
pub(crate) struct JobRun {
    pub sink: ObjectKey,
    pub spec: Arc<JobSink>,
    /// The job's name (see [`job_name`]).
    pub name: String,
    pub event: Event,
    /// The event's structured-mode JSON: the event file.
    pub event_json: Arc<[u8]>,
}

/// How a job ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct JobOutcome {
    pub succeeded: bool,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub output: Vec<String>,
}

/// Live progress of a running job: attempts and failures so far.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    record: Arc<Mutex<JobRecord>>,
}

impl Progress {
    pub(crate) fn pod_started(&self) {
        self.lock().attempts += 1;
    }

    /// A pod ended: counts a failure, keeps its exit code and last lines.
    pub(crate) fn pod_ended(&self, failed: bool, exit_code: Option<i64>, output: &[String]) {
        let mut record = self.lock();
        record.failed += u32::from(failed);
        record.exit_code = exit_code;
        record.output = output.to_vec();
    }

    /// Sets the counts a cluster reports.
    pub(crate) fn set_counts(&self, attempts: u32, failed: u32) {
        let mut record = self.lock();
        record.attempts = attempts;
        record.failed = failed;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JobRecord> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs jobs to completion.
#[async_trait::async_trait]
pub(crate) trait JobRuntime: Send + Sync + 'static {
    /// The runtime that runs `sink`'s jobs, for status.
    fn name_for(&self, sink: &JobSink) -> &'static str;

    /// Whether this runtime can run the JobSink's jobs at all; the error
    /// (naming the field) is the JobSink's status and the endpoint's 503.
    fn check(&self, sink: &JobSink) -> Result<(), String>;

    /// Runs the job to its end: every pod, retries included. Dropping the
    /// future stops what runs (pilotlight is stopping).
    async fn run(&self, job: &JobRun, progress: &Progress) -> Result<JobOutcome, String>;

    /// pilotlight stops: removes what must not outlive it.
    async fn exit(&self) {}
}

/// Why the endpoint cannot run an event's job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JobError {
    #[error("no JobSink {0}")]
    UnknownSink(ObjectKey),
    #[error("JobSink {sink} cannot start jobs: {reason}")]
    CannotStart { sink: ObjectKey, reason: String },
    #[error("pilotlight is stopping; deliver the event again")]
    Stopping,
}

/// A JobSink as the runner keeps it.
struct SinkState {
    loaded: RwLock<Loaded>,
    spec: RwLock<Arc<JobSink>>,
    /// Its limit, and the permits of the jobs running.
    limit: RwLock<(usize, Arc<Semaphore>)>,
    history: Mutex<History>,
}

impl SinkState {
    fn spec(&self) -> Arc<JobSink> {
        self.spec
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Every JobSink of the last apply and its jobs.
pub(crate) struct JobSinks {
    settings: JobSettings,
    runtime: Arc<dyn JobRuntime>,
    sinks: RwLock<BTreeMap<ObjectKey, Arc<SinkState>>>,
    /// Each JobSink's ingress URL, as the eventing half publishes it.
    addresses: RwLock<BTreeMap<ObjectKey, String>>,
    stop: watch::Sender<bool>,
    /// Where the job endpoint is reached: the admin listener's base URL.
    endpoint: String,
}

impl JobSinks {
    /// `endpoint` is the admin listener's base URL (`http://127.0.0.1:9090`).
    pub(crate) fn new(
        settings: JobSettings,
        runtime: Arc<dyn JobRuntime>,
        endpoint: String,
    ) -> Arc<Self> {
        Arc::new(JobSinks {
            settings,
            runtime,
            sinks: RwLock::default(),
            addresses: RwLock::default(),
            stop: watch::channel(false).0,
            endpoint,
        })
    }

    /// The base URL of the listener the job endpoint is on.
    pub(crate) fn endpoint_base(&self) -> &str {
        &self.endpoint
    }

    /// Jobs of `sink` at once: its annotation, else `--max-running-jobs`.
    pub(crate) fn max_running_jobs(&self, sink: &JobSink) -> usize {
        sink.max_running_jobs(self.settings.max_running_jobs)
            .unwrap_or(self.settings.max_running_jobs)
    }

    /// Brings the JobSinks to the loaded ones; a changed spec applies to
    /// jobs started from now on, and the history stays.
    pub(crate) fn apply(&self, loaded: &[&Loaded]) {
        let mut sinks = self.sinks.write().unwrap_or_else(PoisonError::into_inner);
        let mut kept = BTreeMap::new();
        for entry in loaded {
            let crate::api::Resource::JobSink(sink) = &entry.resource else {
                continue;
            };
            let key = sink.metadata.key();
            let spec = Arc::new((**sink).clone());
            let limit = self.max_running_jobs(&spec);
            let history_limit = spec.history_limit().unwrap_or(1);
            let state = match sinks.remove(&key) {
                Some(state) => {
                    *state.loaded.write().unwrap_or_else(PoisonError::into_inner) =
                        (*entry).clone();
                    *state.spec.write().unwrap_or_else(PoisonError::into_inner) = spec;
                    let mut current = state.limit.write().unwrap_or_else(PoisonError::into_inner);
                    if current.0 != limit {
                        // Running jobs keep the old permits; new ones wait
                        // for the new limit.
                        *current = (limit, Arc::new(Semaphore::new(limit)));
                    }
                    drop(current);
                    state
                        .history
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .set_limit(history_limit);
                    state
                }
                None => Arc::new(SinkState {
                    loaded: RwLock::new((*entry).clone()),
                    spec: RwLock::new(spec),
                    limit: RwLock::new((limit, Arc::new(Semaphore::new(limit)))),
                    history: Mutex::new(History::new(history_limit)),
                }),
            };
            kept.insert(key, state);
        }
        // Jobs of a deleted JobSink run on to their end; its history goes.
        *sinks = kept;
    }

    /// Sets the ingress URL of each JobSink (the eventing half's), shown as
    /// its `status.address`.
    pub(crate) fn set_addresses(&self, addresses: BTreeMap<ObjectKey, String>) {
        *self
            .addresses
            .write()
            .unwrap_or_else(PoisonError::into_inner) = addresses;
    }

    fn state(&self, key: &ObjectKey) -> Option<Arc<SinkState>> {
        self.sinks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Runs `event`'s job on JobSink `key` and returns its record once it
    /// ended (see the module comment for the contract).
    pub(crate) async fn run(&self, key: &ObjectKey, event: Event) -> Result<JobRecord, JobError> {
        let state = self
            .state(key)
            .ok_or_else(|| JobError::UnknownSink(key.clone()))?;
        let mut stop = self.stop.subscribe();
        if *stop.borrow() {
            return Err(JobError::Stopping);
        }
        let spec = state.spec();
        self.runtime
            .check(&spec)
            .map_err(|reason| JobError::CannotStart {
                sink: key.clone(),
                reason,
            })?;
        let name = job_name(&key.name, event.source(), event.id());
        // The same event again (a redelivery): its job's outcome.
        let existing = state
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .find(&name);
        match existing {
            Some(Found::Ended(record)) => return Ok(*record),
            Some(Found::Running(mut running)) => {
                return tokio::select! {
                    record = running.wait_for(|r| !r.is_running()) => {
                        record.map(|r| r.clone()).map_err(|_| JobError::Stopping)
                    }
                    _ = stop.wait_for(|s| *s) => Err(JobError::Stopping),
                };
            }
            None => {}
        }
        let semaphore = state
            .limit
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone();
        let _permit = tokio::select! {
            permit = semaphore.acquire_owned() => permit.map_err(|_| JobError::Stopping)?,
            _ = stop.wait_for(|s| *s) => return Err(JobError::Stopping),
        };
        let record = JobRecord {
            name: name.clone(),
            event_id: event.id().to_owned(),
            event_source: event.source().to_owned(),
            start_time: now(),
            completion_time: None,
            state: JobRecord::RUNNING.to_owned(),
            attempts: 0,
            failed: 0,
            exit_code: None,
            reason: None,
            message: None,
            output: Vec::new(),
        };
        let progress = Progress {
            record: Arc::new(Mutex::new(record)),
        };
        let done = state
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .start(progress.record.clone());
        let job = JobRun {
            sink: key.clone(),
            spec,
            name: name.clone(),
            event_json: crate::cloudevent::encode_structured(&event).into(),
            event,
        };
        tracing::info!(jobsink = %key, job = %name, event = %job.event.id(), "job started");
        let outcome = tokio::select! {
            outcome = self.runtime.run(&job, &progress) => outcome,
            _ = stop.wait_for(|s| *s) => {
                // Not a finished job: the event comes again after a restart.
                state.history.lock().unwrap_or_else(PoisonError::into_inner).forget(&name);
                return Err(JobError::Stopping);
            }
        };
        let outcome = outcome.unwrap_or_else(|message| JobOutcome {
            reason: Some("CannotRun".into()),
            message: Some(message),
            ..JobOutcome::default()
        });
        let record = {
            let mut record = progress.lock();
            record.state = if outcome.succeeded {
                JobRecord::SUCCEEDED
            } else {
                JobRecord::FAILED
            }
            .to_owned();
            record.completion_time = Some(now());
            record.exit_code = outcome.exit_code.or(record.exit_code);
            record.reason = outcome.reason;
            record.message = outcome.message;
            if !outcome.output.is_empty() {
                record.output = outcome.output;
            }
            record.clone()
        };
        match outcome.succeeded {
            true => {
                tracing::info!(jobsink = %key, job = %name, attempts = record.attempts, "job succeeded");
            }
            false => {
                tracing::warn!(jobsink = %key, job = %name, attempts = record.attempts, reason = ?record.reason, message = ?record.message, "job failed");
            }
        }
        state
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .finish(&name, record.clone());
        let _ = done.send(record.clone());
        Ok(record)
    }

    /// Every JobSink with its status and jobs, for `get` and status writes.
    pub(crate) fn views(&self, namespace: Option<&str>) -> Vec<ObjectView> {
        let sinks = self.sinks.read().unwrap_or_else(PoisonError::into_inner);
        let addresses = self
            .addresses
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        sinks
            .iter()
            .filter(|(key, _)| namespace.is_none_or(|ns| key.namespace == ns))
            .map(|(key, state)| {
                let spec = state.spec();
                let mut status = match self.runtime.check(&spec) {
                    Ok(()) => Status::ready(),
                    Err(reason) => Status::not_ready("CannotRunJobs", reason),
                };
                status.address = addresses.get(key).map(|url| Address::url(url.clone()));
                status.jobs = Some(
                    state
                        .history
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .records(),
                );
                let mut view = ObjectView::of(
                    &state.loaded.read().unwrap_or_else(PoisonError::into_inner),
                    status,
                );
                view.metadata.annotations.insert(
                    "pilotlight.dev/runtime".into(),
                    self.runtime.name_for(&spec).into(),
                );
                view
            })
            .collect()
    }

    /// pilotlight stops: running jobs stop (their events come again after a
    /// restart), and the runtime removes what it made.
    pub(crate) async fn shutdown(&self) {
        self.stop.send_replace(true);
        self.runtime.exit().await;
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The job of an event: `{jobsink}-{hash}`, the hash of the event's `source`
/// and `id` (FNV-1a, stable across versions), so that a redelivered event
/// (here, or on another replica in Kubernetes mode) finds its job. At most
/// 63 characters, as a Job's name must be for its pods' labels.
pub(crate) fn job_name(sink: &str, source: &str, id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in source.bytes().chain([0]).chain(id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let stem: String = sink.chars().take(63 - 17).collect();
    let stem = stem.trim_end_matches(['-', '.']).replace('.', "-");
    format!("{stem}-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_stable_short_and_per_event() {
        let a = job_name("logger", "my/curl/command", "123");
        assert_eq!(a, job_name("logger", "my/curl/command", "123"));
        assert_ne!(a, job_name("logger", "my/curl/command", "124"));
        assert_ne!(a, job_name("logger", "my/curl/comman", "d123"));
        assert!(a.starts_with("logger-"));
        let long = job_name(&"x".repeat(253), "s", "i");
        assert!(long.len() <= 63, "{long}");
        let dotted = job_name("a.b", "s", "i");
        assert!(dotted.starts_with("a-b-"), "{dotted}");
    }
}
