//! `RabbitmqSource` (sources.knative.dev/v1alpha1), as eventing-rabbitmq
//! defines it: messages from a RabbitMQ queue sent to a sink.
//!
//! - A message that is a CloudEvent in the AMQP binding (binary: headers
//!   `cloudEvents:*`; structured: content type `application/cloudevents+json`)
//!   is sent as that event.
//! - Any other message becomes an event of type `dev.knative.rabbitmq.event`,
//!   source `/apis/v1/namespaces/{namespace}/rabbitmqsources/{name}#{queue}`,
//!   id = the message's `message-id` property (a fresh UUID when it has none),
//!   `datacontenttype` = its `content-type` property, data = its body.
//!
//! A message is acked once the sink accepted it, after `spec.delivery`'s
//! retries and backoff. When the sink refuses it to the end, it is rejected
//! without requeueing (RabbitMQ dead-letters it if the queue has a
//! dead-letter exchange). Messages in flight when the source stops or the
//! connection drops are not acked, so RabbitMQ delivers them again.
//! `parallelism` (1 to 1000, default 1 = in order) is the prefetch and the
//! number of messages sent at once.

mod source;

#[cfg(test)]
mod tests;

use crate::api::duck::Destination;
use crate::api::sources::rabbitmq::RabbitmqSource;
use crate::eventing::backend::rabbitmq::config::redacted;
use crate::eventing::backend::rabbitmq::config::resolve_uri;
use crate::eventing::delivery::DeliveryPolicy;
use crate::eventing::source::{
    BuildContext, Source, SourceBuild, SourceConfig, source_delivery_policy,
};

impl SourceConfig for RabbitmqSource {
    fn sink(&self) -> &Destination {
        &self.spec.sink
    }

    /// Resolves the connection now (the cluster reference's Secret is in
    /// the index), connects when the source starts.
    fn builder(&self, context: &BuildContext<'_>) -> SourceBuild {
        let uri = resolve_uri(
            self.spec.rabbitmq_cluster_reference.as_ref(),
            self.metadata.namespace(),
            None,
            context.index,
            context.rabbitmq_uri,
        );
        // The connection Secret's values: a fixed Secret restarts the source.
        let inputs = uri.as_ref().map(ToString::to_string).map_err(String::clone);
        let source = self.clone();
        SourceBuild::reading(Box::new(move || source.build_source(uri)), &inputs)
    }
}

impl RabbitmqSource {
    /// How each message is sent to the sink: `spec.delivery`, or the
    /// sources' default retries when it is not set.
    pub(crate) fn delivery_policy(&self) -> DeliveryPolicy {
        match &self.spec.delivery {
            Some(spec) => DeliveryPolicy::from_spec(Some(spec), None),
            None => source_delivery_policy(),
        }
    }

    /// The running source, given the connection URI the control plane
    /// resolved (or why it could not). A source that does not validate or
    /// has no URI runs as one that only reports NotReady.
    pub(crate) fn build_source(&self, uri: Result<lapin::uri::AMQPUri, String>) -> Box<dyn Source> {
        let vhost = self.spec.rabbitmq_resources_config.vhost.clone();
        let built = self
            .validate()
            .map_err(|e| e.to_string())
            .and(uri)
            .map(|mut uri| {
                if let Some(vhost) = vhost {
                    uri.vhost = vhost;
                }
                uri
            });
        match built {
            Ok(uri) => {
                tracing::debug!(source = %self.metadata.key(), uri = %redacted(&uri), "RabbitmqSource resolved");
                Box::new(source::RabbitmqRunner::new(self, uri))
            }
            Err(message) => Box::new(crate::eventing::source::InvalidSource { message }),
        }
    }
}
