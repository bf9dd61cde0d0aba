//! What one kind's watch has seen, and what a list or a change means against
//! it: pure bookkeeping, so that the watch only moves events.
//!
//! - the first list yields nothing: it is what exists when the source
//!   starts, and Knative's adapter sends nothing for it either (its
//!   reflector's store ignores `Replace`); only changes after it are sent;
//! - a relist after `410 Gone` yields the differences with what is known:
//!   new objects `add`, changed ones (another resourceVersion) `update`,
//!   vanished ones `delete`, unchanged ones nothing (Knative's adapter would
//!   lose those changes);
//! - a change yields `add` or `update`, nothing when its resourceVersion is
//!   known already (a resumed watch that replays), and `delete` when the
//!   object left the scope (labels, namespace or owner);
//! - a deletion yields `delete` for a known object only.

use std::collections::{HashMap, HashSet};

use kube::api::{ApiResource, DynamicObject, TypeMeta};

use super::events::Action;
use crate::api::sources::apiserver::ApiVersionKind;

/// (namespace, name).
type Key = (String, String);

/// Which objects the source follows, beyond the API server's own selection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    /// With `spec.namespaceSelector`: the namespaces that match it now.
    pub namespaces: Option<HashSet<String>>,
    /// `spec.owner`: only objects whose controller is of this kind.
    pub owner: Option<ApiVersionKind>,
}

impl Scope {
    /// Whether the source follows this object.
    pub(crate) fn contains(&self, object: &DynamicObject) -> bool {
        if let (Some(namespaces), Some(ns)) = (&self.namespaces, &object.metadata.namespace)
            && !namespaces.contains(ns)
        {
            return false;
        }
        let Some(owner) = &self.owner else {
            return true;
        };
        let controller = object
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        controller.is_some_and(|c| {
            (owner.api_version.is_empty() || owner.api_version == c.api_version)
                && (owner.kind.is_empty() || owner.kind == c.kind)
        })
    }
}

/// The objects in scope, by key, as last seen.
#[derive(Debug, Default)]
pub(crate) struct Known {
    objects: HashMap<Key, DynamicObject>,
    /// Whether a first list was taken: before it, a list only records.
    listed: bool,
}

impl Known {
    /// A complete list replaces what is known; returns the differences, in
    /// the list's order, then the deletions by key. The first list returns
    /// nothing: see the module's comment.
    pub(crate) fn relisted(
        &mut self,
        items: Vec<DynamicObject>,
        scope: &Scope,
        resource: &ApiResource,
    ) -> Vec<(Action, DynamicObject)> {
        let changes = self.differences(items, scope, resource);
        let first = !std::mem::replace(&mut self.listed, true);
        if first { Vec::new() } else { changes }
    }

    /// What `items` change against what is known, which they replace.
    fn differences(
        &mut self,
        items: Vec<DynamicObject>,
        scope: &Scope,
        resource: &ApiResource,
    ) -> Vec<(Action, DynamicObject)> {
        let mut fresh = HashMap::with_capacity(items.len());
        let mut changes = Vec::new();
        for mut object in items {
            fill_types(&mut object, resource);
            if !scope.contains(&object) {
                continue;
            }
            let key = key_of(&object);
            match self.objects.remove(&key) {
                None => changes.push((Action::Add, object.clone())),
                Some(old) if old.metadata.resource_version != object.metadata.resource_version => {
                    changes.push((Action::Update, object.clone()))
                }
                Some(_) => {}
            }
            fresh.insert(key, object);
        }
        let gone = std::mem::replace(&mut self.objects, fresh);
        let mut gone: Vec<_> = gone.into_values().collect();
        gone.sort_by_key(key_of);
        changes.extend(gone.into_iter().map(|o| (Action::Delete, o)));
        changes
    }

    /// An object added or modified.
    pub(crate) fn applied(
        &mut self,
        mut object: DynamicObject,
        scope: &Scope,
        resource: &ApiResource,
    ) -> Option<(Action, DynamicObject)> {
        fill_types(&mut object, resource);
        let key = key_of(&object);
        if !scope.contains(&object) {
            // Left the scope: as gone.
            return self.objects.remove(&key).map(|old| (Action::Delete, old));
        }
        let action = match self.objects.get(&key) {
            None => Action::Add,
            Some(old) if old.metadata.resource_version == object.metadata.resource_version => {
                return None;
            }
            Some(_) => Action::Update,
        };
        self.objects.insert(key, object.clone());
        Some((action, object))
    }

    /// An object deleted.
    pub(crate) fn deleted(
        &mut self,
        mut object: DynamicObject,
        resource: &ApiResource,
    ) -> Option<(Action, DynamicObject)> {
        fill_types(&mut object, resource);
        self.objects
            .remove(&key_of(&object))
            .map(|_| (Action::Delete, object))
    }
}

/// The object's (namespace, name), for logs and ordering.
pub(crate) fn key_of(object: &DynamicObject) -> Key {
    (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

/// List items of built-in kinds come without apiVersion and kind.
pub(crate) fn fill_types(object: &mut DynamicObject, resource: &ApiResource) {
    let missing = object
        .types
        .as_ref()
        .is_none_or(|t| t.api_version.is_empty() || t.kind.is_empty());
    if missing {
        object.types = Some(TypeMeta {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
        });
    }
}
