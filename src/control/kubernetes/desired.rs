//! The desired state in Kubernetes mode: every watched object, read from the
//! reflectors' caches into the same [`Manifests`] that file mode loads, and
//! applied through the same [`ControlPlane::apply`].
//!
//! Objects being deleted are left out, so the reconcilers remove what
//! pilotlight made for them (topics, queues, Deployments) before the
//! finalizer is released.

use std::path::PathBuf;
use std::sync::Arc;

use kube::api::DynamicObject;
use kube::runtime::reflector::Store;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, watch};

use super::kinds::WatchedKind;
use crate::api::ObjectKey;
use crate::api::manifest::{self, Loaded, ManifestError, Manifests, Origin};
use crate::control::reconcile::ControlPlane;

/// One watched kind's objects, kept by a reflector.
pub(crate) struct Cache {
    pub kind: WatchedKind,
    pub store: Store<DynamicObject>,
    /// True once the reflector has the kind's first full list. (Not the
    /// store's own readiness future: that wakes only the last of several
    /// tasks waiting on it, and kube's Controller waits on its own.)
    pub listed: watch::Receiver<bool>,
}

/// Events of every cache: counted, so that a sync with none since the last
/// reads nothing, and notified, to wake the sync loop.
#[derive(Default)]
pub(crate) struct CacheEvents {
    count: AtomicU64,
    pub notify: Notify,
}

impl CacheEvents {
    pub(crate) fn record(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_one();
    }
}

/// The watched kinds with their caches, and what was last applied.
pub(crate) struct DesiredState {
    control: Arc<ControlPlane>,
    caches: Vec<Cache>,
    events: Arc<CacheEvents>,
    applied: tokio::sync::Mutex<Option<Applied>>,
}

/// What the last apply was given, to skip an apply that would change nothing
/// (a status write or a resync changes resourceVersions, not objects).
struct Applied {
    /// The cache events seen when it was read.
    events: u64,
    manifests: Arc<Manifests>,
}

impl DesiredState {
    pub(crate) fn new(
        control: Arc<ControlPlane>,
        caches: Vec<Cache>,
        events: Arc<CacheEvents>,
    ) -> Self {
        DesiredState {
            control,
            caches,
            events,
            applied: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) fn control(&self) -> &Arc<ControlPlane> {
        &self.control
    }

    /// Waits until every cache holds its first full list: applying before
    /// that would see, say, a Trigger without its Broker.
    pub(crate) async fn wait_until_listed(&self) {
        for cache in &self.caches {
            let mut listed = cache.listed.clone();
            if listed.wait_for(|l| *l).await.is_err() {
                tracing::error!(kind = %cache.kind.resource.kind, "the watch of this kind stopped before its first list");
            }
        }
    }

    /// Applies the caches' objects if they changed since the last apply.
    /// Returns whether it applied.
    pub(crate) async fn sync(&self) -> bool {
        self.wait_until_listed().await;
        let mut applied = self.applied.lock().await;
        // Read before the caches, so that an event during the read counts
        // as unseen and the next sync looks again.
        let events = self.events.count.load(Ordering::Acquire);
        if applied.as_ref().is_some_and(|a| a.events == events) {
            return false;
        }
        let manifests = self.manifests();
        if let Some(last) = applied.as_mut()
            && last.manifests.objects == manifests.objects
            && last.manifests.errors == manifests.errors
        {
            last.events = events;
            return false;
        }
        tracing::info!(
            objects = manifests.objects.len(),
            refused = manifests.errors.len(),
            "objects changed in the API server; reconciling"
        );
        let manifests = Arc::new(manifests);
        self.control.apply(manifests.clone()).await;
        *applied = Some(Applied { events, manifests });
        true
    }

    /// Whether the last apply left the object out: after its deletion
    /// reached the cache, and the apply removed what pilotlight made for it.
    pub(crate) async fn applied_without(&self, kind: &WatchedKind, key: &ObjectKey) -> bool {
        let origin = origin(kind, key);
        let applied = self.applied.lock().await;
        applied.as_ref().is_some_and(|a| {
            !a.manifests.objects.iter().any(|o| o.origin == origin)
                && !a.manifests.errors.iter().any(|e| e.origin == origin)
        })
    }

    /// Why the object was refused at the last apply, if it was.
    pub(crate) async fn refusal(
        &self,
        kind: &WatchedKind,
        key: &ObjectKey,
    ) -> Option<ManifestError> {
        let origin = origin(kind, key);
        let applied = self.applied.lock().await;
        applied
            .as_ref()?
            .manifests
            .errors
            .iter()
            .find(|e| e.origin == origin)
            .cloned()
    }

    fn manifests(&self) -> Manifests {
        let mut manifests = Manifests::default();
        let class = self.control.default_class();
        for Cache { kind, store, .. } in &self.caches {
            let mut objects = store.state();
            objects.sort_by(|a, b| {
                (&a.metadata.namespace, &a.metadata.name)
                    .cmp(&(&b.metadata.namespace, &b.metadata.name))
            });
            for object in objects {
                if object.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let key = object_key(&object);
                let origin = origin(kind, &key);
                match manifest::parse_value(comparable(kind, &object), class) {
                    Ok(resource) => manifests.objects.push(Loaded { origin, resource }),
                    Err(mut error) => {
                        error.origin = origin;
                        refused(kind, error, &mut manifests);
                    }
                }
            }
        }
        manifests
    }
}

/// Records a refused object. The cluster's ConfigMaps and Secrets (the
/// kinds pilotlight only reads where something refers to them) are mostly
/// not pilotlight's: one it cannot read is a debug line, not an error shown
/// with every `get` and logged on every apply; what refers to it says that
/// it cannot find it.
fn refused(kind: &WatchedKind, error: ManifestError, manifests: &mut Manifests) {
    if kind.reconciled {
        manifests.errors.push(error);
    } else {
        tracing::debug!(%error, "ignoring an object pilotlight cannot read");
    }
}

/// An object's key, as the loader makes it (no namespace: `default`).
pub(crate) fn object_key(object: &DynamicObject) -> ObjectKey {
    ObjectKey::new(
        object.metadata.namespace.as_deref().unwrap_or("default"),
        object.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Where an object read from the API server comes from: its API path.
fn origin(kind: &WatchedKind, key: &ObjectKey) -> Origin {
    Origin {
        file: PathBuf::from(kind.object_path(&key.namespace, &key.name)),
        line: 0,
    }
}

/// The object as the loader should see it: with its apiVersion and kind, and
/// without what the API server and pilotlight itself change on every write
/// (resourceVersion, managedFields, finalizers, status), so that two reads of
/// an unchanged object compare equal.
fn comparable(kind: &WatchedKind, object: &DynamicObject) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "apiVersion".into(),
            kind.resource.api_version.clone().into(),
        );
        map.insert("kind".into(), kind.resource.kind.clone().into());
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in ["resourceVersion", "managedFields", "finalizers"] {
                meta.remove(field);
            }
        }
    }
    value
}
