//! `PingSource` (sources.knative.dev/v1): a fixed event sent to a sink on a
//! cron schedule.
//!
//! Each tick sends one event: type `dev.knative.sources.ping`, source
//! `/apis/v1/namespaces/{namespace}/pingsources/{name}`, a fresh UUID id,
//! `time` = the scheduled tick (not the moment it was sent), the data from
//! `spec.data` (or the decoded `spec.dataBase64`), `datacontenttype` =
//! `spec.contentType` only when it is set, and `spec.ceOverrides` extensions.
//!
//! Firing is at most once per tick, across restarts and hot reloads: the tick
//! is written to `state_dir/last-tick` (temp file + rename) before the event
//! is sent. On start:
//! - no `last-tick` (first run): nothing is sent for the past; the source
//!   waits for the next tick;
//! - ticks were missed while down: exactly one catch-up event is sent, for
//!   the most recent missed tick (with that tick as `time`), then the source
//!   continues with future ticks;
//! - nothing missed: it waits for the next tick, so a reload just after a
//!   tick does not send that tick again.
//!
//! The same rule holds while running: if a send (with its retries) outlasts
//! several ticks, only the latest of them is sent, never a burst.
//!
//! See `api::sources::schedule` for the cron syntax, time zones and daylight
//! saving.

mod source;

use crate::api::Invalid;
use crate::api::duck::Destination;
use crate::api::sources::ping::PingSource;
use crate::api::sources::schedule::Schedule;
use crate::eventing::source::{BuildContext, Source, SourceBuild, SourceConfig};

pub(crate) use source::{Clock, PingRunner, SystemClock};

impl PingSource {
    /// The running source. Call after [`PingSource::validate`]; a source that
    /// does not validate runs as one that only reports NotReady.
    pub(crate) fn build_source(&self) -> Box<dyn Source> {
        self.build_source_with_clock(std::sync::Arc::new(SystemClock))
    }

    /// [`PingSource::build_source`] with a given clock (tests).
    pub(crate) fn build_source_with_clock(
        &self,
        clock: std::sync::Arc<dyn Clock>,
    ) -> Box<dyn Source> {
        let built = self.validate().and_then(|()| {
            let schedule = Schedule::parse(&self.spec.schedule, self.spec.timezone.as_deref())
                .map_err(|e| Invalid::new(e.field, e.reason))?;
            Ok((schedule, source::EventTemplate::new(self)?))
        });
        match built {
            Ok((schedule, template)) => Box::new(PingRunner::new(schedule, template, clock)),
            Err(invalid) => Box::new(crate::eventing::source::InvalidSource {
                message: invalid.to_string(),
            }),
        }
    }
}

impl SourceConfig for PingSource {
    fn sink(&self) -> &Destination {
        &self.spec.sink
    }

    fn builder(&self, _context: &BuildContext<'_>) -> SourceBuild {
        let source = self.clone();
        SourceBuild::new(Box::new(move || source.build_source()))
    }
}

#[cfg(test)]
mod tests;
