//! `ApiServerSource` (sources.knative.dev/v1): Kubernetes objects' lifecycle
//! (add, update, delete) as CloudEvents.
//!
//! Like Knative's adapter, each watched kind is listed first (existing
//! objects send nothing: only what changes after the source starts does),
//! then watched from the list's resourceVersion; a dropped watch resumes
//! from the last resourceVersion seen (bookmarks included), and a `410 Gone`
//! relists and sends only the differences with what was already seen. An
//! event's id is derived from the source, the object, its resourceVersion
//! and the event type, so the same change has the same id everywhere. See [`watch`] for the list and watch (kube-runtime's
//! watcher), [`known`] for what a list or a change sends, and [`events`] for
//! the CloudEvents built.
//!
//! Scope: without `spec.namespaceSelector` the source watches its own
//! namespace (cluster-scoped kinds are watched cluster-wide). With it, kinds
//! are watched in all namespaces and objects outside the namespaces that match
//! the selector are dropped; the set of matching namespaces is read at every
//! (re)list, and again when it is more than 5 minutes old.
//!
//! The connection: pilotlight's `--kubeconfig` when given, else kube's
//! inference (`KUBECONFIG` or `~/.kube/config`, else the in-cluster service
//! account).

mod events;
mod health;
mod known;
mod source;
mod watch;

#[cfg(test)]
mod tests;

use std::path::Path;

use super::{BuildContext, Placement, Source, SourceBuild, SourceConfig};
use crate::api::duck::Destination;
use crate::api::sources::apiserver::ApiServerSource;

pub use source::ApiServerSourceRunner;

impl SourceConfig for ApiServerSource {
    fn sink(&self) -> &Destination {
        &self.spec.sink
    }

    /// Once per cluster: on every replica, each change would be sent once
    /// per replica. A new leader starts its watches afresh and, as Knative's
    /// adapter on start, sends nothing for the objects that already exist.
    fn placement(&self) -> Placement {
        Placement::Leader
    }

    fn builder(&self, context: &BuildContext<'_>) -> SourceBuild {
        let source = self.clone();
        let kubeconfig = context.kubeconfig.map(Path::to_path_buf);
        SourceBuild::new(Box::new(move || source.build_source(kubeconfig.as_deref())))
    }
}

impl ApiServerSource {
    /// The running source, connecting with `kubeconfig` (`--kubeconfig`) or,
    /// without one, kube's inference. A source that does not validate runs
    /// as one that only reports NotReady.
    pub fn build_source(&self, kubeconfig: Option<&Path>) -> Box<dyn Source> {
        if let Err(invalid) = self.validate() {
            return Box::new(super::InvalidSource {
                message: invalid.to_string(),
            });
        }
        let runner = ApiServerSourceRunner::new(self);
        Box::new(match kubeconfig {
            Some(path) => runner.with_kubeconfig(path),
            None => runner,
        })
    }
}
