//! The `log` backend: a durable segmented log on local disk.
//!
//! A broker's events go to an append-only log in its own directory, under the
//! [local backend](super::local) (which keeps cursors, the in-memory tail and
//! the group-commit writer thread). The directory holds:
//!
//! - `00000000000000000000.log`, …: segment files, each named by the offset of
//!   its first record (20 digits), holding consecutive records (see the `record`
//!   module for the format: length, CRC-32 over offset, timestamp and payload, offset,
//!   append time, then the event as [`Event::to_bytes`]).
//! - `cursors`: the triggers' cursors, replaced atomically.
//! - `LOCK`: held (`flock`) while a process has the log open.
//!
//! Durability: appends become durable, and visible to [`Store::read`], only
//! when `sync` returns. Segments roll between sync groups, once fully synced,
//! so after a crash only the last segment can have a torn tail; opening the log
//! cuts it off (see the `recovery` module). A failed write or sync truncates the active
//! segment back to what was synced, so offsets stay consecutive.
//!
//! Retention is Kafka's: whole closed segments are removed, oldest first, when
//! the log is over its size or a segment's newest record is over its age.

mod cursors;
mod prealloc;
mod record;
mod recovery;
mod segment;
mod writer;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::local::{LocalBackend, LocalConfig, Store, StoreError};
use super::{Backend, BackendPlan, PlanContext, StartError, same_plan};
use crate::api::broker::BrokerClass;
use crate::cloudevent::Event;
use segment::{Segment, io_error, lock};
use writer::{SegmentWriter, sync_dir};

/// Retention and segment sizing of a broker's log (Kafka-style: whole segments
/// are removed).
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// A new segment is started once the active one is past this size (between
    /// sync groups, so a segment may exceed it by one group's records).
    pub segment_bytes: u64,
    /// Total size kept: the oldest segments are removed first while the log is
    /// larger. The active segment is never removed.
    pub retention_bytes: Option<u64>,
    /// A closed segment whose newest record is older than this is removed.
    pub retention_age: Option<Duration>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 << 20,
            retention_bytes: Some(1 << 30),
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

/// A log broker: its folder under `--data-dir` and the log settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LogPlan {
    pub dir: PathBuf,
    pub config: LogConfig,
}

pub(crate) fn plan(context: &PlanContext<'_>) -> Result<Box<dyn BackendPlan>, String> {
    Ok(Box::new(LogPlan {
        dir: context
            .data_dir
            .join("brokers")
            .join(&context.key.namespace)
            .join(&context.key.name),
        config: context.log.clone(),
    }))
}

#[async_trait::async_trait]
impl BackendPlan for LogPlan {
    fn class(&self) -> BrokerClass {
        BrokerClass::Log
    }

    async fn start(&self) -> Result<Arc<dyn Backend>, StartError> {
        let backend =
            start(&self.dir, &self.config).map_err(|e| StartError::Failed(e.to_string()))?;
        Ok(Arc::new(backend))
    }

    fn same_as(&self, other: &dyn BackendPlan) -> bool {
        same_plan(self, other)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// What opening the log found, for the startup log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecoveryReport {
    /// Segment files in the log.
    pub segments: usize,
    /// The offset the next event will get.
    pub next_offset: u64,
    /// Bytes cut off the end of the last segment: a record torn by a crash
    /// mid-write (never acknowledged), or damaged.
    pub truncated_bytes: u64,
}

/// Opens the log in `dir` and starts a local backend over it. Must be called
/// within a tokio runtime.
pub(crate) fn start(dir: &Path, config: &LogConfig) -> Result<LocalBackend<LogStore>, StoreError> {
    let (store, report) = LogStore::open(dir, config.clone())?;
    tracing::info!(
        dir = %dir.display(),
        segments = report.segments,
        next_offset = report.next_offset,
        truncated_bytes = report.truncated_bytes,
        "opened the event log"
    );
    LocalBackend::start(store, LocalConfig::default())
}

/// A crash-safe segmented append-only log: the durable [`Store`] of the `log`
/// backend. See the module documentation.
///
/// `append` and `sync` come from the local backend's single writer thread and
/// go through the writer mutex; `read`, `bounds` and retention run on other
/// threads and only take the segment list's lock (and each segment's) briefly,
/// never across I/O.
pub(crate) struct LogStore {
    dir: PathBuf,
    config: LogConfig,
    /// Oldest first; the last one is the active segment. Never empty.
    segments: RwLock<Vec<Arc<Segment>>>,
    writer: Mutex<SegmentWriter>,
    /// Mirrors the writer's next offset for `bounds` without its lock.
    next_offset: AtomicU64,
    /// Serialises cursor saves: two at once would share `cursors.tmp`.
    cursors_lock: Mutex<()>,
    /// Set by `destroy`: retention and cursor saves then do nothing, so a late
    /// background flush cannot touch a directory re-created at the same path.
    destroyed: AtomicBool,
    /// Added to the wall clock: lets tests write records with old timestamps.
    clock_skew_ms: AtomicI64,
    /// Holds the directory's lock while open.
    _lock: File,
}

impl LogStore {
    /// Opens (creating if needed) the log in `dir`: takes the directory's lock
    /// (a second opener gets an error naming the directory), lists the
    /// segments, verifies the last one record by record and truncates a torn or
    /// corrupt tail.
    pub(crate) fn open(
        dir: &Path,
        config: LogConfig,
    ) -> Result<(LogStore, RecoveryReport), StoreError> {
        let recovered = recovery::recover(dir, config.segment_bytes)?;
        let store = LogStore {
            dir: dir.to_path_buf(),
            config,
            next_offset: AtomicU64::new(recovered.report.next_offset),
            segments: RwLock::new(recovered.segments),
            writer: Mutex::new(recovered.writer),
            cursors_lock: Mutex::new(()),
            destroyed: AtomicBool::new(false),
            clock_skew_ms: AtomicI64::new(0),
            _lock: recovered.lock,
        };
        Ok((store, recovered.report))
    }

    fn now_ms(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        now.saturating_add(self.clock_skew_ms.load(Ordering::Relaxed))
    }

    fn segments(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        self.segments.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The segments a read from `from` goes through: the one holding `from`
    /// (or the oldest, if `from` is gone) and every later one.
    fn segments_from(&self, from: u64) -> Vec<Arc<Segment>> {
        let segments = self.segments();
        let first = segments
            .partition_point(|s| s.base <= from)
            .saturating_sub(1);
        segments.get(first..).unwrap_or_default().to_vec()
    }

    /// Takes the oldest segment out of the list if retention drops it.
    fn take_expired_segment(&self, now_ms: i64) -> Option<Arc<Segment>> {
        let mut segments = self.segments.write().unwrap_or_else(|e| e.into_inner());
        if segments.len() < 2 {
            return None;
        }
        let oldest = segments.first()?;
        let total: u64 = segments.iter().map(|s| s.size()).sum();
        let over_size = self.config.retention_bytes.is_some_and(|max| total > max);
        let expired = match (self.config.retention_age, oldest.newest_ms()) {
            (Some(age), Some(newest)) => {
                let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                now_ms.saturating_sub(newest) > age_ms
            }
            _ => false,
        };
        (over_size || expired).then(|| segments.remove(0))
    }

    #[cfg(test)]
    fn set_clock_skew(&self, skew: Duration, past: bool) {
        let ms = i64::try_from(skew.as_millis()).unwrap_or(i64::MAX);
        self.clock_skew_ms
            .store(if past { -ms } else { ms }, Ordering::Relaxed);
    }

    #[cfg(test)]
    fn inject(&self, fault: writer::Fault) {
        lock(&self.writer).inject(fault);
    }
}

impl Store for LogStore {
    const DURABLE: bool = true;

    fn append(&self, events: &[Arc<Event>]) -> Result<u64, StoreError> {
        let mut writer = lock(&self.writer);
        let result = writer.append(events, self.now_ms(), &self.segments);
        self.next_offset
            .store(writer.next_offset(), Ordering::Release);
        result
    }

    fn sync(&self) -> Result<(), StoreError> {
        let mut writer = lock(&self.writer);
        let result = writer.sync();
        self.next_offset
            .store(writer.next_offset(), Ordering::Release);
        result
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Event)>, StoreError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        for segment in self.segments_from(from) {
            segment.read_into(from.max(segment.base), max, &mut out)?;
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    fn bounds(&self) -> (u64, u64) {
        let next = self.next_offset.load(Ordering::Acquire);
        let oldest = self.segments().first().map_or(next, |s| s.base);
        (oldest, next)
    }

    /// Segments are in append order and a segment's newest time bounds all
    /// of its records, so whole segments older than `time_ms` are skipped
    /// without reading them; only one segment is read (and its records
    /// checked up to the one found).
    fn offset_at(&self, time_ms: i64) -> Result<u64, StoreError> {
        let segments: Vec<Arc<Segment>> = self.segments().clone();
        for segment in segments {
            if segment.newest_ms().is_some_and(|newest| newest < time_ms) {
                continue;
            }
            if let Some(offset) = segment.first_at_or_after(time_ms)? {
                return Ok(offset);
            }
        }
        Ok(self.next_offset.load(Ordering::Acquire))
    }

    fn enforce_retention(&self) -> Result<(), StoreError> {
        if self.destroyed.load(Ordering::Acquire) {
            return Ok(());
        }
        let now_ms = self.now_ms();
        let mut removed = false;
        while let Some(segment) = self.take_expired_segment(now_ms) {
            // Readers still holding the segment keep reading their open file.
            match fs::remove_file(&segment.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("removing segment", &segment.path, e)),
            }
            // A crash here: one segment gone, the directory not synced, and
            // more due to go; the next open must start at the oldest left.
            crate::fault::hit(crate::fault::RETENTION_DELETE);
            tracing::info!(segment = %segment.path.display(), bytes = segment.size(), "retention removed a log segment");
            metrics::counter!("pilotlight_log_segments_removed_total").increment(1);
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn load_cursors(&self) -> Result<HashMap<String, u64>, StoreError> {
        cursors::load(&self.dir)
    }

    fn save_cursors(&self, cursors: &HashMap<String, u64>) -> Result<(), StoreError> {
        let _saving = lock(&self.cursors_lock);
        if self.destroyed.load(Ordering::Acquire) {
            return Ok(());
        }
        cursors::save(&self.dir, cursors)
    }

    fn destroy(&self) -> Result<(), StoreError> {
        self.destroyed.store(true, Ordering::Release);
        let _saving = lock(&self.cursors_lock);
        lock(&self.writer).poison(format!("the log in {} was deleted", self.dir.display()));
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("removing log directory", &self.dir, e)),
        }
    }
}
