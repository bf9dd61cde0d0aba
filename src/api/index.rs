//! The loaded objects that other objects point at by reference (a Broker's
//! `spec.config`, a Secret holding credentials), looked up by kind and key
//! while reconciling, with errors that say which reference did not resolve.

use std::collections::BTreeMap;

use super::ObjectKey;
#[cfg(doc)]
use super::config::TRUST_BUNDLE_LABEL;
use super::manifest::{Loaded, Manifests};
use super::{ConfigMap, RabbitmqBrokerConfig, Resource, Secret};

/// Every loaded object, by kind and `namespace/name`.
pub(crate) struct ObjectIndex<'a> {
    objects: BTreeMap<(&'static str, ObjectKey), &'a Loaded>,
}

impl<'a> ObjectIndex<'a> {
    pub(crate) fn new(manifests: &'a Manifests) -> Self {
        let objects = manifests
            .objects
            .iter()
            .map(|loaded| {
                let kind = loaded.resource.kind();
                ((kind, loaded.resource.metadata().key()), loaded)
            })
            .collect();
        ObjectIndex { objects }
    }

    /// The object of `kind` at `key`, or an error that names what is missing.
    pub(crate) fn get(&self, kind: &'static str, key: &ObjectKey) -> Result<&'a Resource, String> {
        self.objects
            .get(&(kind, key.clone()))
            .map(|loaded| &loaded.resource)
            .ok_or_else(|| format!("{kind} {key} does not exist: create it, or fix the reference"))
    }

    /// The PEM texts of the trust bundles: every value of every ConfigMap
    /// labelled [`TRUST_BUNDLE_LABEL`]` = "true"`, each with where it came
    /// from (`ConfigMap ns/name key`).
    pub(crate) fn trust_bundles(&self) -> Vec<(String, String)> {
        self.objects
            .values()
            .filter_map(|loaded| match &loaded.resource {
                Resource::ConfigMap(map) if map.is_trust_bundle() => Some(map),
                _ => None,
            })
            .flat_map(|map| {
                let key = map.metadata.key();
                map.entries().into_iter().map(move |(name, value)| {
                    (
                        format!("ConfigMap {key} {name}"),
                        String::from_utf8_lossy(&value).into_owned(),
                    )
                })
            })
            .collect()
    }

    pub(crate) fn config_map(&self, key: &ObjectKey) -> Result<&'a ConfigMap, String> {
        match self.get("ConfigMap", key)? {
            Resource::ConfigMap(c) => Ok(c),
            _ => unreachable!("indexed by kind"),
        }
    }

    pub(crate) fn secret(&self, key: &ObjectKey) -> Result<&'a Secret, String> {
        match self.get("Secret", key)? {
            Resource::Secret(s) => Ok(s),
            _ => unreachable!("indexed by kind"),
        }
    }

    pub(crate) fn rabbitmq_broker_config(
        &self,
        key: &ObjectKey,
    ) -> Result<&'a RabbitmqBrokerConfig, String> {
        match self.get("RabbitmqBrokerConfig", key)? {
            Resource::RabbitmqBrokerConfig(c) => Ok(c),
            _ => unreachable!("indexed by kind"),
        }
    }
}
