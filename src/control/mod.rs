//! The control plane: Knative manifests in, running brokers and triggers out,
//! with status conditions for each object.

pub mod admin;
pub mod board;
pub mod kubernetes;
pub mod manifest;
pub mod reconcile;
pub mod watch;
