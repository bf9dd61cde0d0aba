//! The control plane: Knative manifests in, running brokers and triggers out,
//! with status conditions for each object.

pub mod admin;
pub mod kubernetes;
pub mod manifest;
pub mod reconcile;
pub mod serving;
pub mod sources;
pub mod watch;
