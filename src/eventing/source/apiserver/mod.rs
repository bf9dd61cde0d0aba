//! `ApiServerSource` (sources.knative.dev/v1): Kubernetes objects' lifecycle
//! (add, update, delete) as CloudEvents.
//!
//! Like Knative's adapter, each watched kind is listed first (every existing
//! object yields an `add`), then watched from the list's resourceVersion; a
//! dropped watch resumes from the last resourceVersion seen (bookmarks
//! included), and a `410 Gone` relists and sends only the differences with
//! what was already seen. See [`watch`] for the details and [`events`] for the
//! CloudEvents built.
//!
//! Scope: without `spec.namespaceSelector` the source watches its own
//! namespace (cluster-scoped kinds are watched cluster-wide). With it, kinds
//! are watched in all namespaces and objects outside the namespaces that match
//! the selector are dropped; the set of matching namespaces is read at every
//! (re)list and every watch reconnection (at most every 5 minutes).

pub mod events;
mod source;
pub mod watch;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use super::Source;
use crate::api::sources::apiserver::ApiServerSource;

pub use source::ApiServerSourceRunner;

impl ApiServerSource {
    /// The running source; call [`ApiServerSource::validate`] first (an
    /// invalid mode falls back to `Reference`).
    pub fn into_source(&self) -> Box<dyn Source> {
        Box::new(ApiServerSourceRunner::new(self))
    }
}
