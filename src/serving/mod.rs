//! Serving: Knative Services that scale from zero.
//!
//! - [`controller`]: Services in, revisions (each a deployment on a runtime
//!   and an autoscaler) and routes out, with their status.
//! - [`runtime`]: runs a revision's instances (local processes, containers in
//!   Docker or Podman, or Kubernetes Deployments) and publishes the ready ones
//!   as endpoints.
//! - [`daemon`]: workloads with no port that run for as long as their
//!   object exists (a ContainerSource's pod), on the same runtimes.
//! - [`autoscaler`]: Knative's KPA, deciding how many instances each revision needs
//!   from the load the proxy counts.
//! - [`jobs`]: JobSinks' jobs, one per event, run to completion.

pub(crate) mod autoscaler;
pub(crate) mod controller;
pub(crate) mod daemon;
mod history;
pub mod jobs;
pub(crate) mod proxy;
mod request_metrics;
mod revision;
pub(crate) mod router;
pub mod runtime;
mod upstream;

/// The histogram of each revision's request times, which the console reads.
pub(crate) use request_metrics::REQUEST_SECONDS;
