//! The running PingSource: wait for the next tick, record it, send the event.
//! The rules for restarts, hand-overs and missed ticks are in the
//! [module doc](super).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

use super::clock::Clock;
use super::record::{RecordError, TickLog};
use crate::api::Invalid;
use crate::api::duck::CeOverrides;
use crate::api::sources::ping::{PING_EVENT_TYPE, PingSource};
use crate::api::sources::schedule::Schedule;
use crate::backoff::Backoff;
use crate::cloudevent::{Event, ValidationError};
use crate::eventing::health::Health;
use crate::eventing::source::{SendError, Source, SourceContext};

/// The longest single sleep: the loop re-reads the wall clock at least this
/// often, so a clock step or a suspended machine delays a tick by at most this.
const MAX_SLEEP: Duration = Duration::from_secs(300);

/// How long a tick already recorded as fired may still be sent once the
/// source is told to stop (less than the controller's 5 s stop grace): a
/// leader stepping down mid-send finishes the tick rather than lose it,
/// since the next leader will not fire a recorded tick.
const SEND_GRACE: Duration = Duration::from_secs(4);

/// Retrying the API server when the state cannot be read or written.
const STATE_RETRY_START: Duration = Duration::from_millis(200);
const STATE_RETRY_MAX: Duration = Duration::from_secs(5);

/// The namespace of tick ids (UUID v5): pilotlight's own, so that no other
/// producer's v5 ids collide with them.
const TICK_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5817_b768_3e09_4051_96eb_c6e3_75f2_c903);

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

/// The missed ticks a start fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CatchUp {
    /// Oldest first.
    pub ticks: Vec<DateTime<Utc>>,
    /// Whether older missed ticks were left out, past the limit.
    pub skipped_older: bool,
}

/// The ticks missed between `after` (the last fired) and `now`: those
/// strictly after `after` and at or before `now`, only the newest `limit`
/// of them (at least one), oldest first. Walks back from `now`, so a long
/// outage costs `limit` steps, not one per missed tick.
pub(crate) fn catch_up(
    schedule: &Schedule,
    after: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: usize,
) -> CatchUp {
    let mut ticks = Vec::new();
    let mut latest = schedule.latest_at_or_before(now);
    while let Some(tick) = latest.filter(|t| *t > after) {
        if ticks.len() == limit.max(1) {
            ticks.reverse();
            return CatchUp {
                ticks,
                skipped_older: true,
            };
        }
        ticks.push(tick);
        // Ticks are whole minutes: the one before is at or before this
        // tick less a second.
        latest = schedule.latest_at_or_before(tick - chrono::Duration::seconds(1));
    }
    ticks.reverse();
    CatchUp {
        ticks,
        skipped_older: false,
    }
}

/// A tick's event id: a UUID v5 of the source (its CloudEvents source, and
/// in Kubernetes mode its uid) and the scheduled time. Every replica gives
/// a tick the same id, so a sink can drop one delivered twice.
pub(crate) fn tick_id(source: &str, uid: &str, tick: DateTime<Utc>) -> String {
    let name = format!(
        "{source}#{uid}@{}",
        tick.to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    uuid::Uuid::new_v5(&TICK_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// The tokio deadline for a wall-clock instant: the one place wall-clock
/// time is turned into tokio time.
fn deadline(clock: &dyn Clock, at: DateTime<Utc>) -> tokio::time::Instant {
    let wait = (at - clock.now_utc()).to_std().unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + clock.sleep_for(wait).min(MAX_SLEEP)
}

/// Everything of the event that does not change between ticks.
#[derive(Debug, Clone)]
pub(crate) struct EventTemplate {
    source: String,
    /// The object's uid (Kubernetes mode), part of each tick's id.
    uid: String,
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
            uid: uid_of(ping),
            content_type: ping.spec.content_type.clone(),
            data: ping.data()?,
            overrides: ping.spec.ce_overrides.clone(),
        })
    }

    /// The event for one tick.
    pub(crate) fn build(&self, tick: DateTime<Utc>) -> Result<Event, ValidationError> {
        let mut attributes = vec![
            ("specversion".to_owned(), "1.0".to_owned()),
            ("id".to_owned(), tick_id(&self.source, &self.uid, tick)),
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

/// The object's uid as the API server gave it; empty from a file.
pub(crate) fn uid_of(ping: &PingSource) -> String {
    ping.metadata
        .uid
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// What became of a tick's record.
enum Recorded {
    /// Recorded by this source: send it.
    Claimed,
    /// Recorded already (by another replica): do not send it.
    Elsewhere,
    /// Not recorded: do not send it (at most once).
    Failed,
    Stopping,
}

/// The PingSource's [`Source`].
pub(crate) struct PingRunner {
    schedule: Schedule,
    template: EventTemplate,
    clock: Arc<dyn Clock>,
    log: TickLog,
}

impl PingRunner {
    pub(crate) fn new(
        schedule: Schedule,
        template: EventTemplate,
        clock: Arc<dyn Clock>,
        log: TickLog,
    ) -> Self {
        PingRunner {
            schedule,
            template,
            clock,
            log,
        }
    }

    /// Where to resume, from the tick log; retried while the API server
    /// does not answer. None when the source is stopping meanwhile.
    async fn resume(&self, context: &SourceContext) -> Option<DateTime<Utc>> {
        let mut backoff = Backoff::new(STATE_RETRY_START, STATE_RETRY_MAX);
        loop {
            let now = self.clock.now_utc();
            match self.log.resume(context.state_dir(), now).await {
                Ok(after) => return Some(after.unwrap_or(now)),
                Err(e) => {
                    tracing::warn!(source = %context.key, error = %e, "cannot read where the source stopped; retrying");
                    context.set_status(Health::not_ready(e.reason(), e.to_string()));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = context.stopped() => return None,
            }
        }
    }

    /// Records `tick` before it is sent. An API server that does not answer
    /// is tried again until the next tick is due; then this tick is skipped
    /// rather than risk sending it twice.
    async fn record(&self, context: &SourceContext, tick: DateTime<Utc>) -> Recorded {
        let give_up = self.schedule.next_after(tick);
        let mut backoff = Backoff::new(STATE_RETRY_START, STATE_RETRY_MAX);
        loop {
            let error = match self.log.claim(context.state_dir(), tick).await {
                Ok(true) => return Recorded::Claimed,
                Ok(false) => return Recorded::Elsewhere,
                Err(error) => error,
            };
            let retry = error.transient() && give_up.is_none_or(|next| self.clock.now_utc() < next);
            if !retry {
                self.not_recorded(context, tick, &error);
                return Recorded::Failed;
            }
            tracing::warn!(source = %context.key, tick = %tick, error = %error, "cannot record the tick; retrying");
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = context.stopped() => return Recorded::Stopping,
            }
        }
    }

    fn not_recorded(&self, context: &SourceContext, tick: DateTime<Utc>, error: &RecordError) {
        tracing::error!(source = %context.key, tick = %tick, error = %error, "cannot record the tick; not sending it");
        context.set_status(Health::not_ready(error.reason(), error.to_string()));
    }

    /// Records the tick, then sends its event. Returns false when the source
    /// is stopping.
    async fn fire(&self, context: &SourceContext, tick: DateTime<Utc>) -> bool {
        match self.record(context, tick).await {
            Recorded::Claimed => {}
            Recorded::Elsewhere => {
                tracing::debug!(source = %context.key, tick = %tick, "tick fired by another replica");
                return true;
            }
            Recorded::Failed => return true,
            Recorded::Stopping => return false,
        }
        let event = match self.template.build(tick) {
            Ok(event) => event,
            Err(e) => {
                context.set_status(Health::not_ready("InvalidEvent", e.to_string()));
                return true;
            }
        };
        match context.send_finishing(&event, SEND_GRACE).await {
            Ok(()) => {
                tracing::debug!(source = %context.key, tick = %tick, "ping sent");
                context.set_status(Health::Ready);
                true
            }
            Err(SendError::Stopping) => {
                tracing::warn!(source = %context.key, tick = %tick, "stopped before the tick's event was delivered");
                false
            }
            Err(e @ SendError::Refused { .. }) => {
                tracing::warn!(source = %context.key, tick = %tick, error = %e, "ping not delivered");
                context.set_status(Health::not_ready("SinkUnreachable", e.to_string()));
                true
            }
        }
    }

    /// Fires the ticks missed since `after`, as many as the tick log's
    /// rule allows. Returns the last tick fired (or `after`), None when the
    /// source is stopping.
    async fn catch_up(
        &self,
        context: &SourceContext,
        after: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let missed = catch_up(
            &self.schedule,
            after,
            self.clock.now_utc(),
            self.log.catch_up_limit(),
        );
        if missed.skipped_older {
            tracing::warn!(source = %context.key, since = %after, sent = missed.ticks.len(), "ticks were missed; sending only the latest of them");
        }
        let mut last = after;
        for tick in missed.ticks {
            last = tick;
            if !self.fire(context, tick).await {
                return None;
            }
        }
        Some(last)
    }
}

#[async_trait::async_trait]
impl Source for PingRunner {
    async fn run(self: Box<Self>, context: SourceContext) {
        let Some(resumed) = self.resume(&context).await else {
            return;
        };
        context.set_status(Health::Ready);
        let Some(mut after) = self.catch_up(&context, resumed).await else {
            return;
        };
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
                    context.set_status(Health::not_ready(
                        "NoFutureTicks",
                        "the schedule never matches again (e.g. 30 February)",
                    ));
                    context.stopped().await;
                    return;
                }
            }
        }
    }
}
