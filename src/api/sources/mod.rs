//! The source kinds: what each one sends and where (Knative's
//! sources.knative.dev group, and eventing-rabbitmq's RabbitmqSource). The
//! running sources are in `eventing::source`.

pub mod apiserver;
pub mod kafka;
pub(crate) mod ping;
pub(crate) mod rabbitmq;
pub(crate) mod schedule;
