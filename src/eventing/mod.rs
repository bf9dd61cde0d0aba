//! Knative Eventing: CloudEvents in over HTTP, stored by a broker backend,
//! filtered by triggers and delivered to subscribers.

pub mod backend;
pub mod broker;
pub mod controller;
pub mod delivery;
pub mod source;
pub mod trigger;
