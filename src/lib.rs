//! pilotlight: a Knative-compatible CloudEvents broker with built-in
//! scale-from-zero serving, in one program.
//!
//! The layers, each on those below it only:
//! - [`api`]: Knative's API: every kind, its checks, one registry of kinds.
//!   Beside it, small shared pieces: [`backoff`], [`desired`], [`http_util`],
//!   [`tls`] (certificates served and trusted), [`listener`] (HTTP
//!   connections served within their limits).
//! - [`cloudevent`], [`cesql`]: the CloudEvent and its filter language.
//! - [`auth`]: OIDC tokens (verified, and pilotlight's own, signed) and
//!   EventPolicies; used by eventing's ingress and senders.
//! - [`eventing`]: brokers, backends, triggers, delivery and sources;
//!   [`serving`]: Services from zero (router, activator, autoscaler,
//!   runtimes). Neither knows the other.
//! - [`control`]: manifests from files or the API server, reconciling both
//!   halves, status, the admin API.
//! - [`server`] and [`cli`]: `pilotlight run` assembled, and the commands.

// The public surface is what main.rs, tests/ and benches/ use; everything
// else is crate-private, and this keeps a `pub` from claiming otherwise.
#![warn(unreachable_pub)]
// The module docs describe the crate for those who work on it, linking
// crate-private items; read them with `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub mod api;
pub mod auth;
mod backoff;
pub mod cesql;
pub mod cli;
pub mod cloudevent;
pub mod control;
mod desired;
pub mod eventing;
pub mod fault;
mod http_util;
mod kubeconfig;
pub mod listener;
#[cfg(test)]
mod properties;
pub mod server;
pub mod serving;
pub mod telemetry;
pub mod tls;
