//! The control plane: Knative manifests in, running brokers and triggers out,
//! with status conditions for each object.

pub(crate) mod admin;
mod board;
mod console;
mod jobsink_intake;
pub mod kubernetes;
pub mod manifest;
pub(crate) mod reconcile;
pub(crate) mod replay;
mod since;
mod sinks;
mod tail;
pub(crate) mod watch;
