//! The kinds pilotlight reads from the API server in Kubernetes mode: the
//! same kinds its manifest loader knows, so both modes accept one set.

use kube::Resource as _;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;

use crate::api::kinds::KINDS;
use crate::eventing::source::cluster_state::STATE_LABEL;

/// One kind pilotlight watches.
#[derive(Debug, Clone)]
pub(crate) struct WatchedKind {
    pub resource: ApiResource,
    /// Knative kinds that pilotlight reconciles: it writes their status and
    /// holds a finalizer on them. The others (the registry's `Referenced`
    /// kinds) are only read by what refers to them.
    pub reconciled: bool,
}

impl WatchedKind {
    /// The finalizer pilotlight puts on objects of this kind, named as
    /// Knative names its own (`brokers.eventing.knative.dev`).
    pub(crate) fn finalizer(&self) -> String {
        format!("{}.{}", self.resource.plural, self.resource.group)
    }

    /// How the kind's cache watches it: every object, except for ConfigMaps
    /// the sources' state (which the leader rewrites at every PingSource
    /// tick, and which no object refers to).
    pub(crate) fn watcher_config(&self) -> watcher::Config {
        let config = watcher::Config::default();
        if self.resource.group.is_empty() && self.resource.kind == "ConfigMap" {
            return config.labels(&format!("!{STATE_LABEL}"));
        }
        config
    }

    /// The API path of one object, as errors and status messages name it.
    pub(crate) fn object_path(&self, namespace: &str, name: &str) -> String {
        let collection = DynamicObject::url_path(&self.resource, Some(namespace));
        format!("{collection}/{name}")
    }
}

/// Every registered kind, once each: a kind known in several versions
/// (KafkaSource v1beta1 and v1) is watched in the last one listed, which the
/// API server converts the others to.
pub(crate) fn watched_kinds() -> Vec<WatchedKind> {
    KINDS
        .iter()
        .filter_map(|info| {
            let api_version = info.api_versions.last()?;
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let gvk = GroupVersionKind::gvk(group, version, info.kind);
            Some(WatchedKind {
                resource: ApiResource::from_gvk(&gvk),
                reconciled: info.role.is_reconciled(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_kind_is_watched_once_with_knatives_names() {
        let kinds = watched_kinds();
        let names: Vec<_> = kinds
            .iter()
            .map(|k| (k.resource.api_version.as_str(), k.resource.plural.as_str()))
            .collect();
        assert!(names.contains(&("sources.knative.dev/v1", "kafkasources")));
        assert!(!names.contains(&("sources.knative.dev/v1beta1", "kafkasources")));
        assert!(names.contains(&("v1", "configmaps")));
        let broker = kinds
            .iter()
            .find(|k| k.resource.kind == "Broker")
            .expect("broker");
        assert!(broker.reconciled);
        assert_eq!(broker.finalizer(), "brokers.eventing.knative.dev");
        assert_eq!(
            broker.object_path("ns", "b"),
            "/apis/eventing.knative.dev/v1/namespaces/ns/brokers/b"
        );
        let secret = kinds
            .iter()
            .find(|k| k.resource.kind == "Secret")
            .expect("secret");
        assert!(!secret.reconciled);
        assert_eq!(
            secret.object_path("ns", "s"),
            "/api/v1/namespaces/ns/secrets/s"
        );
    }

    #[test]
    fn the_configmap_watch_leaves_out_the_sources_state() {
        let kinds = watched_kinds();
        let selector = |kind: &str| {
            kinds
                .iter()
                .find(|k| k.resource.kind == kind)
                .and_then(|k| k.watcher_config().label_selector)
        };
        assert_eq!(
            selector("ConfigMap").as_deref(),
            Some("!pilotlight.dev/source-state")
        );
        assert_eq!(selector("Secret"), None);
    }
}
