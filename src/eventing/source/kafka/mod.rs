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
//! - `spec.net`: TLS and SASL with values from Secrets ([`net`]). A Secret
//!   or key that is missing makes the source NotReady with the field, the
//!   Secret and the key; a change of the values restarts the source.

mod mapping;
mod net;
mod source;

#[cfg(test)]
mod tests;

use crate::api::duck::Destination;
use crate::api::sources::kafka::KafkaSource;
use crate::eventing::backend::kafka::config::KafkaAuth;
use crate::eventing::source::{BuildContext, Source, SourceBuild, SourceConfig};

/// Records in flight per consumer of an unordered source.
pub(crate) const UNORDERED_IN_FLIGHT: usize = 100;

impl SourceConfig for KafkaSource {
    fn sink(&self) -> &Destination {
        &self.spec.sink
    }

    /// Reads `spec.net`'s Secrets now (they are in the index); connects
    /// when the source starts.
    fn builder(&self, context: &BuildContext<'_>) -> SourceBuild {
        let auth = net::resolve(
            self.spec.net.as_ref(),
            self.metadata.namespace(),
            context.index,
        );
        let source = self.clone();
        let inputs = auth.clone();
        SourceBuild::reading(Box::new(move || source.build_source(auth)), &inputs)
    }
}

impl KafkaSource {
    /// The running source, with the security settings resolved from
    /// `spec.net` (or why they could not be). A source that does not
    /// validate or whose Secrets do not resolve runs as one that only
    /// reports NotReady.
    pub(crate) fn build_source(&self, auth: Result<KafkaAuth, String>) -> Box<dyn Source> {
        let runner = auth.and_then(|auth| {
            source::KafkaRunner::new(self, &auth).map_err(|invalid| invalid.to_string())
        });
        match runner {
            Ok(runner) => Box::new(runner),
            Err(message) => Box::new(crate::eventing::source::InvalidSource { message }),
        }
    }
}
