//! pilotlight: a Knative-compatible CloudEvents broker with built-in
//! scale-from-zero serving, in one program.
//!
//! - [`eventing`]: the CloudEvent, broker ingress, backends, triggers and delivery.
//! - [`control`]: manifests, desired state, reconciliation and status.
//! - [`cli`]: the `pilotlight` command line.

pub mod backoff;
pub mod cli;
pub mod control;
pub mod eventing;
pub mod server;
pub mod serving;
pub mod telemetry;
