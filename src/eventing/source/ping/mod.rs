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
//! See [`schedule`] for the cron syntax, time zones and daylight saving.

pub mod schedule;
pub mod source;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::control::resources::duck::Destination;
use crate::control::resources::{Invalid, ObjectMeta};
use crate::eventing::source::{CeOverrides, Source};

pub use schedule::{Schedule, ScheduleError};
pub use source::{Clock, PingRunner, SystemClock};

/// The CloudEvents type of every ping.
pub const PING_EVENT_TYPE: &str = "dev.knative.sources.ping";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PingSource {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: PingSourceSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PingSourceSpec {
    pub schedule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    pub sink: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_overrides: Option<CeOverrides>,
}

impl PingSource {
    pub fn validate(&self) -> Result<(), Invalid> {
        self.metadata.validate()?;
        Schedule::parse(&self.spec.schedule, self.spec.timezone.as_deref())
            .map_err(|e| Invalid::new(e.field, e.reason))?;
        self.data()?;
        self.spec.sink.validate("spec.sink")?;
        if let Some(overrides) = &self.spec.ce_overrides {
            overrides.validate("spec.ceOverrides")?;
        }
        // Build a sample event so that a bad contentType (or anything else
        // the event validation rejects) fails here, not at the first tick.
        let template = source::EventTemplate::new(self)?;
        template
            .build(chrono::DateTime::UNIX_EPOCH)
            .map_err(|e| Invalid::new("spec.contentType", e.to_string()))?;
        Ok(())
    }

    /// The event data: `spec.data` as bytes, or `spec.dataBase64` decoded.
    pub fn data(&self) -> Result<Option<bytes::Bytes>, Invalid> {
        match (&self.spec.data, &self.spec.data_base64) {
            (Some(_), Some(_)) => Err(Invalid::new(
                "spec.dataBase64",
                "set data or dataBase64, not both",
            )),
            (Some(data), None) => Ok(Some(bytes::Bytes::from(data.clone().into_bytes()))),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map(|d| Some(bytes::Bytes::from(d)))
                .map_err(|e| Invalid::new("spec.dataBase64", format!("is not valid base64: {e}"))),
            (None, None) => Ok(None),
        }
    }

    /// The running source. Call after [`PingSource::validate`]; a source that
    /// does not validate runs as one that only reports NotReady.
    pub fn into_source(&self) -> Box<dyn Source> {
        self.into_source_with_clock(std::sync::Arc::new(SystemClock))
    }

    /// [`PingSource::into_source`] with a given clock (tests).
    pub fn into_source_with_clock(&self, clock: std::sync::Arc<dyn Clock>) -> Box<dyn Source> {
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

#[cfg(test)]
mod tests;
