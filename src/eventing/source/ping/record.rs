//! Where a PingSource records the ticks it fired, and reads where to resume.
//!
//! - File mode (one replica): `last-tick` in the source's state folder,
//!   written before the tick's event is sent (temp file + rename).
//! - Kubernetes mode (the leader fires): the source's entry in the
//!   cluster's state ConfigMap ([`ClusterState`]), so that the next leader
//!   resumes after the last tick this one fired. Recording a tick is a
//!   compare-and-set that succeeds only if no tick at or after it is
//!   recorded: of two replicas that both believe they lead, one fires the
//!   tick and the other skips it. A source's first start records the
//!   instant it started, so that a leader that takes over before the first
//!   tick still fires it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::eventing::source::cluster_state::{Change, ClusterState, StateError};

/// The state file holding the last fired tick (RFC 3339).
pub(crate) const LAST_TICK_FILE: &str = "last-tick";

/// How many missed ticks a Kubernetes-mode start fires, the newest ones.
/// A hand-over takes at most the Lease duration and a retry period (17 s
/// with the defaults), so a per-minute schedule misses at most one tick per
/// hand-over; five cover a few in a row (a rolling update). After every
/// replica was down for longer, the ticks before those five are skipped,
/// not sent in a burst.
pub(crate) const HANDOVER_CATCH_UP: usize = 5;

/// Why a tick could not be recorded (and so is not sent).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("cannot write {}: {source}; fix the state folder's permissions or disk space", path.display())]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Cluster(#[from] StateError),
}

impl RecordError {
    /// The reason of the NotReady status it causes.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            RecordError::Folder { .. } => "StateNotWritable",
            RecordError::Cluster(_) => "StateUnavailable",
        }
    }

    /// Whether trying again may help: the API server may answer next time;
    /// a folder that cannot be written stays so until someone fixes it.
    pub(crate) fn transient(&self) -> bool {
        matches!(self, RecordError::Cluster(_))
    }
}

/// Where one PingSource's ticks are recorded.
pub(crate) enum TickLog {
    /// File mode: [`LAST_TICK_FILE`] in the source's state folder.
    Folder,
    /// Kubernetes mode: an entry of the cluster's state ConfigMap.
    Cluster(ClusterTicks),
}

/// A PingSource's entry in the cluster's state.
pub(crate) struct ClusterTicks {
    pub state: Arc<ClusterState>,
    pub entry: String,
    pub binding: Binding,
}

/// What a recorded tick belongs to: the source object (its uid: a source
/// deleted and created again under its name starts afresh) and its
/// schedule (the ticks of another schedule were not missed by this one).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Binding {
    pub uid: String,
    pub schedule: String,
    pub timezone: String,
}

/// An entry's value, as JSON.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Recorded {
    #[serde(flatten)]
    binding: Binding,
    /// The last tick fired, or the instant the source first started.
    last_tick: DateTime<Utc>,
}

impl TickLog {
    /// The most ticks missed before a start that the start fires: in file
    /// mode the latest one only (pilotlight was down: one event says so,
    /// not one per missed tick); in Kubernetes mode every tick missed during
    /// a hand-over, up to [`HANDOVER_CATCH_UP`].
    pub(crate) fn catch_up_limit(&self) -> usize {
        match self {
            TickLog::Folder => 1,
            TickLog::Cluster(_) => HANDOVER_CATCH_UP,
        }
    }

    /// Where to resume: the last tick recorded (Kubernetes mode: or where
    /// the source first started, recorded now if nothing is). None for a
    /// first run in file mode, which starts from now.
    pub(crate) async fn resume(
        &self,
        dir: &Path,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, RecordError> {
        match self {
            TickLog::Folder => Ok(read_last_tick(dir)),
            TickLog::Cluster(ticks) => {
                let updated = ticks
                    .state
                    .update(&ticks.entry, |value| {
                        start_change(value, &ticks.binding, now)
                    })
                    .await?;
                Ok(recorded_tick(updated.value.as_deref(), &ticks.binding))
            }
        }
    }

    /// Records `tick` as fired before its event is sent. Ok(false): it is
    /// not to be sent, another replica recorded it (or a later tick) first.
    pub(crate) async fn claim(&self, dir: &Path, tick: DateTime<Utc>) -> Result<bool, RecordError> {
        match self {
            TickLog::Folder => {
                write_last_tick(dir, tick)
                    .map(|()| true)
                    .map_err(|source| RecordError::Folder {
                        path: dir.join(LAST_TICK_FILE),
                        source,
                    })
            }
            TickLog::Cluster(ticks) => {
                let updated = ticks
                    .state
                    .update(&ticks.entry, |value| {
                        claim_change(value, &ticks.binding, tick)
                    })
                    .await?;
                Ok(updated.written)
            }
        }
    }
}

/// The tick an entry's value records for `binding`; None when it records
/// none, or one of another object or schedule.
pub(crate) fn recorded_tick(value: Option<&str>, binding: &Binding) -> Option<DateTime<Utc>> {
    let recorded: Recorded = serde_json::from_str(value?).ok()?;
    (recorded.binding == *binding).then_some(recorded.last_tick)
}

fn record(binding: &Binding, tick: DateTime<Utc>) -> Change {
    let value = Recorded {
        binding: binding.clone(),
        last_tick: tick,
    };
    match serde_json::to_string(&value) {
        Ok(text) => Change::Set(text),
        // A struct of strings and a time always serialises; were it not
        // to, writing nothing is the safe side.
        Err(_) => Change::Keep,
    }
}

/// A claim of `tick`: record it, unless a tick at or after it is recorded
/// for this source and schedule.
pub(crate) fn claim_change(value: Option<&str>, binding: &Binding, tick: DateTime<Utc>) -> Change {
    match recorded_tick(value, binding) {
        Some(recorded) if recorded >= tick => Change::Keep,
        _ => record(binding, tick),
    }
}

/// A start: keep what is recorded for this source and schedule, else
/// record `now` as where it starts.
pub(crate) fn start_change(value: Option<&str>, binding: &Binding, now: DateTime<Utc>) -> Change {
    match recorded_tick(value, binding) {
        Some(_) => Change::Keep,
        None => record(binding, now),
    }
}

/// Reads the last fired tick; a missing or unreadable file is a first run.
pub(crate) fn read_last_tick(dir: &Path) -> Option<DateTime<Utc>> {
    let text = std::fs::read_to_string(dir.join(LAST_TICK_FILE)).ok()?;
    match DateTime::parse_from_rfc3339(text.trim()) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "ignoring an unreadable last-tick file");
            None
        }
    }
}

/// Records a tick: write a temporary file, then rename it over `last-tick`,
/// so a crash leaves the old tick or the new one, never half of one.
pub(crate) fn write_last_tick(dir: &Path, tick: DateTime<Utc>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let temp: PathBuf = dir.join(format!("{LAST_TICK_FILE}.tmp"));
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(tick.to_rfc3339_opts(SecondsFormat::Secs, true).as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, dir.join(LAST_TICK_FILE))
}
