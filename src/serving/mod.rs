//! Serving: Knative Services that scale from zero.
//!
//! - [`runtime`]: runs a revision's instances (local processes; later Kubernetes
//!   Deployments) and publishes the ready ones as endpoints.
//! - [`autoscaler`]: Knative's KPA, deciding how many instances each revision needs
//!   from the load the proxy counts.

pub mod autoscaler;
pub mod history;
pub mod proxy;
pub mod revision;
pub mod router;
pub mod runtime;
