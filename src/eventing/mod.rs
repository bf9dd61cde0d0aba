//! Knative Eventing: CloudEvents in over HTTP, stored by a broker backend,
//! filtered by triggers and delivered to subscribers.

pub mod backend;
pub(crate) mod broker;
pub(crate) mod channel;
pub(crate) mod controller;
pub mod delivery;
pub(crate) mod flows;
pub mod health;
pub mod source;
mod trigger;

pub(crate) use trigger::journal::EventDeliveries;
