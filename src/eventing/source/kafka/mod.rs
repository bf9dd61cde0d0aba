//! `KafkaSource` (sources.knative.dev/v1beta1 and v1): the records of Kafka
//! topics sent to a sink as CloudEvents.
//!
//! - A consumer group (`spec.consumerGroup`, default
//!   `knative-kafka-source-{namespace}-{name}`) with `spec.consumers` members
//!   in this process; several pilotlight processes with the same source
//!   split the partitions between them.
//! - `spec.initialOffset` (`latest`, the default, or `earliest`) applies to a
//!   group that has committed nothing yet; afterwards it resumes from its
//!   commits. Offsets are committed only up to what the sink (or the
//!   dead-letter sink) accepted, so a crash redelivers and never skips.
//! - `spec.ordering`: `ordered` (the default) sends one record at a time per
//!   partition; `unordered` up to [`UNORDERED_IN_FLIGHT`] at once.
//! - Records that are CloudEvents (binary or structured binding) are sent as
//!   they are; others are mapped (see [`mapping`]).
//! - `spec.delivery`: retries and backoff as on triggers; the dead-letter
//!   sink must be a `uri` (references are resolved only for `spec.sink`).
//!
//! Not supported: `spec.net` (TLS/SASL for sources): such a manifest is
//! refused by name, not run without its credentials.

mod mapping;
mod source;

#[cfg(test)]
mod tests;

use crate::api::duck::Destination;
use crate::api::sources::kafka::KafkaSource;
use crate::eventing::source::{BuildContext, BuildSource, Source, SourceConfig};

/// Records in flight per consumer of an unordered source.
pub(crate) const UNORDERED_IN_FLIGHT: usize = 100;

impl SourceConfig for KafkaSource {
    fn sink(&self) -> &Destination {
        &self.spec.sink
    }

    fn builder(&self, _context: &BuildContext<'_>) -> BuildSource {
        let source = self.clone();
        Box::new(move || source.build_source())
    }
}

impl KafkaSource {
    /// The running source. Call after [`KafkaSource::validate`]; a source
    /// that does not validate runs as one that only reports NotReady.
    pub(crate) fn build_source(&self) -> Box<dyn Source> {
        match source::KafkaRunner::new(self) {
            Ok(runner) => Box::new(runner),
            Err(invalid) => Box::new(crate::eventing::source::InvalidSource {
                message: invalid.to_string(),
            }),
        }
    }
}
