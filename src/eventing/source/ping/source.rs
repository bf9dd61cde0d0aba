//! The running PingSource: wait for the next tick, record it, send the event.
//! The rules for restarts and missed ticks are in the [module doc](super).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::api::Invalid;
use crate::api::duck::CeOverrides;
use crate::api::sources::ping::{PING_EVENT_TYPE, PingSource};
use crate::api::sources::schedule::Schedule;
use crate::cloudevent::{Event, ValidationError};
use crate::eventing::health::Health;
use crate::eventing::source::{SendError, Source, SourceContext};

/// Where the wall clock comes from. Ticks are wall-clock instants; sleeping
/// uses tokio time, so a test clock derived from `tokio::time::Instant`
/// makes the loop run on paused time.
pub(crate) trait Clock: Send + Sync + 'static {
    fn now_utc(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now_utc(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The longest single sleep: the loop re-reads the wall clock at least this
/// often, so a clock step or a suspended machine delays a tick by at most this.
const MAX_SLEEP: Duration = Duration::from_secs(300);

/// The state file holding the last fired tick (RFC 3339).
const LAST_TICK_FILE: &str = "last-tick";

/// What the loop does next, given the last tick it fired (or the start time
/// on a first run) and the current time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Send the event for this tick now: the latest tick that has passed.
    Fire(DateTime<Utc>),
    /// Nothing due: sleep until this tick.
    WaitUntil(DateTime<Utc>),
    /// The schedule never matches again.
    Never,
}

/// Decides what to fire: only ticks strictly after `after`; of those that
/// are due (at or before `now`) only the latest, so missed ticks give one
/// event, not a burst.
pub(crate) fn decide(schedule: &Schedule, after: DateTime<Utc>, now: DateTime<Utc>) -> Decision {
    match schedule.next_after(after) {
        None => Decision::Never,
        Some(next) if next > now => Decision::WaitUntil(next),
        Some(next) => Decision::Fire(
            schedule
                .latest_at_or_before(now)
                .filter(|latest| *latest >= next)
                .unwrap_or(next),
        ),
    }
}

/// The tokio deadline for a wall-clock instant: the one place wall-clock
/// time is turned into tokio time.
fn deadline(clock: &dyn Clock, at: DateTime<Utc>) -> tokio::time::Instant {
    let wait = (at - clock.now_utc()).to_std().unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + wait.min(MAX_SLEEP)
}

/// Everything of the event that does not change between ticks.
#[derive(Debug, Clone)]
pub(crate) struct EventTemplate {
    source: String,
    content_type: Option<String>,
    data: Option<Bytes>,
    overrides: Option<CeOverrides>,
}

impl EventTemplate {
    pub(crate) fn new(ping: &PingSource) -> Result<EventTemplate, Invalid> {
        let key = ping.metadata.key();
        Ok(EventTemplate {
            source: format!(
                "/apis/v1/namespaces/{}/pingsources/{}",
                key.namespace, key.name
            ),
            content_type: ping.spec.content_type.clone(),
            data: ping.data()?,
            overrides: ping.spec.ce_overrides.clone(),
        })
    }

    /// The event for one tick.
    pub(crate) fn build(&self, tick: DateTime<Utc>) -> Result<Event, ValidationError> {
        let mut attributes = vec![
            ("specversion".to_owned(), "1.0".to_owned()),
            ("id".to_owned(), uuid::Uuid::new_v4().to_string()),
            ("source".to_owned(), self.source.clone()),
            ("type".to_owned(), PING_EVENT_TYPE.to_owned()),
            (
                "time".to_owned(),
                tick.to_rfc3339_opts(SecondsFormat::Secs, true),
            ),
        ];
        if let Some(content_type) = &self.content_type {
            attributes.push(("datacontenttype".to_owned(), content_type.clone()));
        }
        let mut event = Event::new(attributes, self.data.clone())?;
        if let Some(overrides) = &self.overrides {
            overrides.apply(&mut event);
        }
        Ok(event)
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

/// The PingSource's [`Source`].
pub(crate) struct PingRunner {
    schedule: Schedule,
    template: EventTemplate,
    clock: Arc<dyn Clock>,
}

impl PingRunner {
    pub(crate) fn new(schedule: Schedule, template: EventTemplate, clock: Arc<dyn Clock>) -> Self {
        PingRunner {
            schedule,
            template,
            clock,
        }
    }

    /// Records the tick, then sends its event. Returns false when the source
    /// is stopping.
    async fn fire(&self, context: &SourceContext, tick: DateTime<Utc>) -> bool {
        if let Err(e) = write_last_tick(context.state_dir(), tick) {
            // Without the record a restart could send this tick again:
            // skip it rather than risk a duplicate.
            tracing::error!(source = %context.key, error = %e, "cannot record the tick; not sending it");
            context.set_status(Health::NotReady {
                reason: "StateNotWritable".to_owned(),
                message: format!(
                    "cannot write {}: {e}; fix the state folder's permissions or disk space",
                    context.state_dir().join(LAST_TICK_FILE).display()
                ),
            });
            return true;
        }
        let event = match self.template.build(tick) {
            Ok(event) => event,
            Err(e) => {
                context.set_status(Health::NotReady {
                    reason: "InvalidEvent".to_owned(),
                    message: e.to_string(),
                });
                return true;
            }
        };
        match context.send(&event).await {
            Ok(()) => {
                tracing::debug!(source = %context.key, tick = %tick, "ping sent");
                context.set_status(Health::Ready);
                true
            }
            Err(SendError::Stopping) => false,
            Err(e @ SendError::Refused { .. }) => {
                tracing::warn!(source = %context.key, tick = %tick, error = %e, "ping not delivered");
                context.set_status(Health::NotReady {
                    reason: "SinkUnreachable".to_owned(),
                    message: e.to_string(),
                });
                true
            }
        }
    }
}

#[async_trait::async_trait]
impl Source for PingRunner {
    async fn run(self: Box<Self>, context: SourceContext) {
        context.set_status(Health::Ready);
        let mut after = read_last_tick(context.state_dir()).unwrap_or_else(|| self.clock.now_utc());
        while !context.is_stopped() {
            match decide(&self.schedule, after, self.clock.now_utc()) {
                Decision::Fire(tick) => {
                    after = tick;
                    if !self.fire(&context, tick).await {
                        return;
                    }
                }
                Decision::WaitUntil(tick) => {
                    let until = deadline(self.clock.as_ref(), tick);
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = context.stopped() => return,
                    }
                }
                Decision::Never => {
                    context.set_status(Health::NotReady {
                        reason: "NoFutureTicks".to_owned(),
                        message: "the schedule never matches again (e.g. 30 February)".to_owned(),
                    });
                    context.stopped().await;
                    return;
                }
            }
        }
    }
}
