//! `PingSource` (sources.knative.dev/v1): a fixed event sent to a sink on a
//! cron schedule.
//!
//! Each tick sends one event: type `dev.knative.sources.ping`, source
//! `/apis/v1/namespaces/{namespace}/pingsources/{name}`, `time` = the
//! scheduled tick (not the moment it was sent), the data from `spec.data`
//! (or the decoded `spec.dataBase64`), `datacontenttype` = `spec.contentType`
//! only when it is set, and `spec.ceOverrides` extensions. The id is
//! deterministic, a UUID v5 of the source (with its uid in Kubernetes mode)
//! and the tick: a tick sent twice (two replicas racing during a hand-over)
//! carries one id, so a sink can drop the second. (Knative's mt-ping gives
//! each send a fresh random id.)
//!
//! Firing is at most once per tick, across restarts, hot reloads and (in
//! Kubernetes mode, where only the leader runs PingSources) leader changes:
//! the tick is recorded before the event is sent ([`record`]: a state file
//! in file mode, an entry of a ConfigMap in Kubernetes mode, written with a
//! compare-and-set so that of two replicas only one records a tick). A
//! source told to stop finishes sending a recorded tick (for up to 4 s), so
//! a clean stop or hand-over loses none. On start:
//! - nothing recorded (first run): nothing is sent for the past; the source
//!   waits for the next tick (in Kubernetes mode it records the start, so a
//!   leader taking over before the first tick still fires it);
//! - ticks were missed while down: file mode sends exactly one catch-up
//!   event, for the most recent missed tick (with that tick as `time`);
//!   Kubernetes mode sends every missed tick, oldest first, up to the latest
//!   five ([`record::HANDOVER_CATCH_UP`]), so a hand-over misses none.
//!   (Knative's mt-ping catches up nothing.) Then the source continues with
//!   future ticks;
//! - nothing missed: it waits for the next tick, so a reload just after a
//!   tick does not send that tick again.
//!
//! While running, if a send (with its retries) outlasts several ticks, only
//! the latest of them is sent, never a burst.
//!
//! See `api::sources::schedule` for the cron syntax, time zones and daylight
//! saving.

mod clock;
mod record;
mod source;

use std::sync::Arc;

use crate::api::Invalid;
use crate::api::duck::Destination;
use crate::api::sources::ping::PingSource;
use crate::api::sources::schedule::Schedule;
use crate::eventing::source::cluster_state::ClusterState;
use crate::eventing::source::{BuildContext, Placement, Source, SourceBuild, SourceConfig};

pub(crate) use clock::Clock;
pub use clock::PingClock;
#[cfg(test)]
use clock::SystemClock;
pub(crate) use source::PingRunner;

impl PingSource {
    /// The running source, on the system clock, recording its ticks in its
    /// state folder (tests).
    #[cfg(test)]
    pub(crate) fn build_source(&self) -> Box<dyn Source> {
        self.build_source_with_clock(Arc::new(SystemClock))
    }

    /// [`PingSource::build_source`] with a given clock (tests).
    #[cfg(test)]
    pub(crate) fn build_source_with_clock(&self, clock: Arc<dyn Clock>) -> Box<dyn Source> {
        self.build_source_with(clock, None)
    }

    /// The running source on `clock`, recording its ticks in the cluster's
    /// `state` when given (Kubernetes mode), else in its state folder. Call
    /// after [`PingSource::validate`]; a source that does not validate runs
    /// as one that only reports NotReady.
    pub(crate) fn build_source_with(
        &self,
        clock: Arc<dyn Clock>,
        state: Option<Arc<ClusterState>>,
    ) -> Box<dyn Source> {
        let built = self.validate().and_then(|()| {
            let schedule = Schedule::parse(&self.spec.schedule, self.spec.timezone.as_deref())
                .map_err(|e| Invalid::new(e.field, e.reason))?;
            Ok((schedule, source::EventTemplate::new(self)?))
        });
        match built {
            Ok((schedule, template)) => Box::new(PingRunner::new(
                schedule,
                template,
                clock,
                self.tick_log(state),
            )),
            Err(invalid) => Box::new(crate::eventing::source::InvalidSource {
                message: invalid.to_string(),
            }),
        }
    }

    /// Where this source records its ticks.
    fn tick_log(&self, state: Option<Arc<ClusterState>>) -> record::TickLog {
        match state {
            None => record::TickLog::Folder,
            Some(state) => record::TickLog::Cluster(record::ClusterTicks {
                state,
                entry: ClusterState::entry("PingSource", &self.metadata.key()),
                binding: record::Binding {
                    uid: source::uid_of(self),
                    schedule: self.spec.schedule.clone(),
                    timezone: self.spec.timezone.clone().unwrap_or_default(),
                },
            }),
        }
    }
}

impl SourceConfig for PingSource {
    fn sink(&self) -> &Destination {
        &self.spec.sink
    }

    /// Once per cluster: every replica firing would send each tick once per
    /// replica.
    fn placement(&self) -> Placement {
        Placement::Leader
    }

    fn builder(&self, context: &BuildContext<'_>) -> SourceBuild {
        let source = self.clone();
        let clock = context.ping_clock.clock();
        let state = context.cluster_state.cloned();
        SourceBuild::new(Box::new(move || source.build_source_with(clock, state)))
    }
}

#[cfg(test)]
mod tests;
