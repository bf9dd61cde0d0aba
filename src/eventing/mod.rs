//! Knative Eventing: CloudEvents in over HTTP, stored by a broker backend,
//! filtered by triggers and delivered to subscribers.

pub mod backend;
pub mod broker;
pub mod cesql;
pub mod delivery;
pub mod event;
pub mod source;
pub mod trigger;
