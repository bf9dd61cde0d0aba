//! List then watch one kind, the way a client-go informer feeds Knative's
//! adapter, written by hand on `Api::list` and `Api::watch` so that resuming
//! and relisting are explicit:
//!
//! 1. discovery resolves the kind to its resource (plural, scope);
//! 2. a list gives every object (each one not seen before is an `add`) and a
//!    resourceVersion; the source is Ready;
//! 3. the watch starts from that resourceVersion, with bookmarks; every
//!    ADDED/MODIFIED/DELETED/BOOKMARK moves the resourceVersion on;
//! 4. when the watch ends or breaks, it restarts from the last resourceVersion
//!    (nothing is sent twice: an object whose resourceVersion is already known
//!    is skipped);
//! 5. on `410 Gone` (an ERROR event or an HTTP 410) it relists and compares with
//!    what it knows: new objects are `add`, changed ones `update`, vanished
//!    ones `delete`, unchanged ones nothing.
//!
//! Errors make the source NotReady and are retried with backoff (1 s doubling
//! to 60 s).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, TypeMeta, WatchEvent, WatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, Scope};

use super::events::{Action, make_event};
use crate::api::sources::apiserver::{ApiVersionKind, EventMode};
use crate::backoff::Backoff;
use crate::eventing::source::{CeOverrides, SendError, SourceContext, SourceHealth};

/// How long the API server keeps one watch request open.
const WATCH_TIMEOUT_SECS: u32 = 290;

/// A watch that lasted this long without events ended normally (timeout).
const QUIET_WATCH: Duration = Duration::from_secs(5);

/// Sleeps, or returns `true` early when the source stops.
pub(crate) async fn sleep_or_stop(ctx: &SourceContext, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => ctx.is_stopped(),
        _ = ctx.stopped() => true,
    }
}

/// Settings shared by the watches of one source.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: EventMode,
    pub owner: Option<ApiVersionKind>,
    pub overrides: Option<CeOverrides>,
    /// The source's namespace: the scope without a namespace selector.
    pub namespace: String,
    /// `spec.namespaceSelector` as a label selector query.
    pub namespace_selector: Option<String>,
    /// The API server URL: the events' source.
    pub cluster_url: String,
}

/// The status of several watches folded into one.
pub(crate) struct Reporter {
    ctx: SourceContext,
    states: Mutex<Vec<SourceHealth>>,
    pub failed_sends: AtomicU64,
}

impl Reporter {
    pub fn new(ctx: SourceContext, watches: usize) -> Self {
        Reporter {
            ctx,
            states: Mutex::new(vec![SourceHealth::Unknown; watches]),
            failed_sends: AtomicU64::new(0),
        }
    }

    /// Records one watch's health; the source is Ready when all are, and
    /// NotReady as soon as one is.
    pub fn set(&self, index: usize, health: SourceHealth) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = states.get_mut(index) {
            *slot = health;
        }
        let folded = states
            .iter()
            .find(|h| matches!(h, SourceHealth::NotReady { .. }))
            .cloned()
            .unwrap_or_else(|| {
                if states.iter().all(|h| *h == SourceHealth::Ready) {
                    SourceHealth::Ready
                } else {
                    SourceHealth::Unknown
                }
            });
        self.ctx.set_status(folded);
    }

    /// Sets every watch's health (client creation failing concerns all).
    pub fn set_all(&self, health: SourceHealth) {
        let len = self.states.lock().unwrap_or_else(|e| e.into_inner()).len();
        for i in 0..len.max(1) {
            self.set(i, health.clone());
        }
    }
}

/// A NotReady health for a kube error, with what to do about it.
pub(crate) fn not_ready(error: &kube::Error, what: &str, cluster_url: &str) -> SourceHealth {
    let (reason, message) = match error {
        kube::Error::Api(status) if status.code == 401 => (
            "Unauthorized",
            format!(
                "the API server at {cluster_url} did not accept the credentials while {what}: {}; refresh the kubeconfig",
                status.message
            ),
        ),
        kube::Error::Api(status) if status.code == 403 => (
            "Forbidden",
            format!(
                "the API server at {cluster_url} refused {what}: {}; grant get, list and watch on it",
                status.message
            ),
        ),
        kube::Error::Api(status) if status.code == 404 => (
            "KindNotFound",
            format!(
                "the API server at {cluster_url} does not serve it ({what}): {}; check spec.resources",
                status.message
            ),
        ),
        kube::Error::Discovery(e) => (
            "KindNotFound",
            format!("{what} at {cluster_url}: {e}; check spec.resources apiVersion and kind"),
        ),
        kube::Error::Api(status) => (
            "ApiServerError",
            format!(
                "the API server at {cluster_url} failed {what}: {} (code {}); retrying",
                status.message, status.code
            ),
        ),
        other => (
            "ApiServerUnreachable",
            format!(
                "cannot reach the API server at {cluster_url} ({what}): {other}; check that it is up and that the kubeconfig points at it; retrying"
            ),
        ),
    };
    SourceHealth::NotReady {
        reason: reason.to_string(),
        message,
    }
}

/// The kind a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub api_version: String,
    pub kind: String,
    pub label_selector: Option<String>,
}

type Key = (String, String);

/// Why a watch ended.
enum Stop {
    Stopping,
}

/// One kind's list and watch.
pub(crate) struct KindWatch<'a> {
    pub index: usize,
    pub client: kube::Client,
    pub target: Target,
    pub settings: &'a Settings,
    pub ctx: &'a SourceContext,
    pub reporter: &'a Reporter,
    pub backoff: Backoff,
    cache: HashMap<Key, DynamicObject>,
    namespaces: Option<HashSet<String>>,
}

impl<'a> KindWatch<'a> {
    pub fn new(
        index: usize,
        client: kube::Client,
        target: Target,
        settings: &'a Settings,
        ctx: &'a SourceContext,
        reporter: &'a Reporter,
    ) -> Self {
        KindWatch {
            index,
            client,
            target,
            settings,
            ctx,
            reporter,
            backoff: Backoff::default(),
            cache: HashMap::new(),
            namespaces: None,
        }
    }

    fn what(&self) -> String {
        format!("watching {} {}", self.target.api_version, self.target.kind)
    }

    async fn fail(&mut self, error: &kube::Error, doing: &str) -> bool {
        let what = format!("{doing} {} {}", self.target.api_version, self.target.kind);
        tracing::warn!(source = %self.ctx.key, error = %error, "{what} failed");
        self.reporter.set(
            self.index,
            not_ready(error, &what, &self.settings.cluster_url),
        );
        let delay = self.backoff.next_delay();
        sleep_or_stop(self.ctx, delay).await
    }

    /// Runs until the source stops.
    pub async fn run(mut self) {
        let gvk = match self.target.api_version.split_once('/') {
            Some((group, version)) => GroupVersionKind::gvk(group, version, &self.target.kind),
            None => GroupVersionKind::gvk("", &self.target.api_version, &self.target.kind),
        };
        let mut resolved: Option<(ApiResource, ApiCapabilities)> = None;
        // 410s in a row with no watch event between them: back off.
        let mut gone_streak = 0u32;
        'relist: loop {
            if self.ctx.is_stopped() {
                return;
            }
            if gone_streak > 1 && sleep_or_stop(self.ctx, self.backoff.next_delay()).await {
                return;
            }
            let (resource, caps) = match &resolved {
                Some(r) => r.clone(),
                None => match kube::discovery::pinned_kind(&self.client, &gvk).await {
                    Ok(r) => {
                        resolved = Some(r.clone());
                        r
                    }
                    Err(e) => {
                        if self.fail(&e, "discovering").await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let api: Api<DynamicObject> = match (&caps.scope, &self.settings.namespace_selector) {
                (Scope::Namespaced, None) => {
                    Api::namespaced_with(self.client.clone(), &self.settings.namespace, &resource)
                }
                _ => Api::all_with(self.client.clone(), &resource),
            };
            let namespaced_selector = matches!(caps.scope, Scope::Namespaced)
                && self.settings.namespace_selector.is_some();
            if namespaced_selector && let Err(e) = self.refresh_namespaces().await {
                if self.fail(&e, "listing namespaces for").await {
                    return;
                }
                continue;
            }
            let lp = ListParams {
                label_selector: self.target.label_selector.clone(),
                ..ListParams::default()
            };
            let list = match api.list(&lp).await {
                Ok(list) => list,
                Err(e) => {
                    if self.fail(&e, "listing").await {
                        return;
                    }
                    continue;
                }
            };
            self.backoff.reset();
            self.reporter.set(self.index, SourceHealth::Ready);
            let mut version = list.metadata.resource_version.clone().unwrap_or_default();
            if let Err(Stop::Stopping) = self.resync(list.items, &resource).await {
                return;
            }

            // Watch, resuming from `version` until a 410 asks for a relist.
            loop {
                if namespaced_selector && let Err(e) = self.refresh_namespaces().await {
                    if self.fail(&e, "listing namespaces for").await {
                        return;
                    }
                    continue;
                }
                let wp = WatchParams {
                    label_selector: self.target.label_selector.clone(),
                    timeout: Some(WATCH_TIMEOUT_SECS),
                    bookmarks: true,
                    ..WatchParams::default()
                };
                let stream = match api.watch(&wp, &version).await {
                    Ok(stream) => stream,
                    Err(kube::Error::Api(status)) if status.code == 410 => {
                        gone_streak += 1;
                        tracing::info!(source = %self.ctx.key, "{}: resourceVersion {version} expired, relisting", self.what());
                        continue 'relist;
                    }
                    Err(e) => {
                        if self.fail(&e, "watching").await {
                            return;
                        }
                        continue;
                    }
                };
                self.reporter.set(self.index, SourceHealth::Ready);
                let mut stream = std::pin::pin!(stream);
                let opened = tokio::time::Instant::now();
                let mut received = false;
                let mut failed = false;
                loop {
                    let item = tokio::select! {
                        item = stream.next() => item,
                        _ = self.ctx.stopped() => return,
                    };
                    let event = match item {
                        None => break,
                        Some(Err(e)) => {
                            tracing::debug!(source = %self.ctx.key, error = %e, "{}: watch broke, resuming", self.what());
                            break;
                        }
                        Some(Ok(event)) => event,
                    };
                    if !matches!(event, WatchEvent::Error(_)) {
                        received = true;
                        gone_streak = 0;
                    }
                    let outcome = match event {
                        WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                            if let Some(v) = &object.metadata.resource_version {
                                version = v.clone();
                            }
                            self.observe(object, &resource).await
                        }
                        WatchEvent::Deleted(object) => {
                            if let Some(v) = &object.metadata.resource_version {
                                version = v.clone();
                            }
                            self.forget(object, &resource).await
                        }
                        WatchEvent::Bookmark(bookmark) => {
                            version = bookmark.metadata.resource_version;
                            Ok(())
                        }
                        WatchEvent::Error(status) if status.code == 410 => {
                            gone_streak += 1;
                            tracing::info!(source = %self.ctx.key, "{}: resourceVersion {version} expired, relisting", self.what());
                            continue 'relist;
                        }
                        WatchEvent::Error(status) => {
                            let error = kube::Error::Api(status);
                            if self.fail(&error, "watching").await {
                                return;
                            }
                            failed = true;
                            break;
                        }
                    };
                    if let Err(Stop::Stopping) = outcome {
                        return;
                    }
                }
                if failed {
                    // fail() has waited already.
                } else if received || opened.elapsed() >= QUIET_WATCH {
                    // Events came, or a quiet watch ran until the server's
                    // timeout: reconnect at once.
                    self.backoff.reset();
                } else {
                    // A watch that ends at once with nothing: do not spin.
                    let delay = self.backoff.next_delay();
                    if sleep_or_stop(self.ctx, delay).await {
                        return;
                    }
                }
            }
        }
    }

    async fn refresh_namespaces(&mut self) -> Result<(), kube::Error> {
        let api: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("", "v1", "Namespace"),
                "namespaces",
            ),
        );
        let lp = ListParams {
            label_selector: self.settings.namespace_selector.clone(),
            ..ListParams::default()
        };
        let list = api.list(&lp).await?;
        self.namespaces = Some(
            list.items
                .into_iter()
                .filter_map(|ns| ns.metadata.name)
                .collect(),
        );
        Ok(())
    }

    /// Whether the source follows this object: namespace selector and owner.
    fn wanted(&self, object: &DynamicObject) -> bool {
        if let (Some(namespaces), Some(ns)) = (&self.namespaces, &object.metadata.namespace)
            && !namespaces.contains(ns)
        {
            return false;
        }
        if let Some(owner) = &self.settings.owner {
            let controller = object
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true));
            return match controller {
                None => false,
                Some(c) => {
                    (owner.api_version.is_empty() || owner.api_version == c.api_version)
                        && (owner.kind.is_empty() || owner.kind == c.kind)
                }
            };
        }
        true
    }

    /// A list: sends the differences with what is known and replaces it.
    async fn resync(
        &mut self,
        items: Vec<DynamicObject>,
        resource: &ApiResource,
    ) -> Result<(), Stop> {
        let mut fresh = HashMap::with_capacity(items.len());
        let mut changes = Vec::new();
        for mut object in items {
            fill_types(&mut object, resource);
            if !self.wanted(&object) {
                continue;
            }
            let key = key_of(&object);
            match self.cache.remove(&key) {
                None => changes.push((Action::Add, object.clone())),
                Some(old) if old.metadata.resource_version != object.metadata.resource_version => {
                    changes.push((Action::Update, object.clone()))
                }
                Some(_) => {}
            }
            fresh.insert(key, object);
        }
        let gone = std::mem::replace(&mut self.cache, fresh);
        let mut gone: Vec<_> = gone.into_values().collect();
        gone.sort_by_key(key_of);
        changes.extend(gone.into_iter().map(|o| (Action::Delete, o)));
        for (action, object) in changes {
            self.emit(action, &object, resource).await?;
        }
        Ok(())
    }

    /// ADDED or MODIFIED from the watch.
    async fn observe(
        &mut self,
        mut object: DynamicObject,
        resource: &ApiResource,
    ) -> Result<(), Stop> {
        fill_types(&mut object, resource);
        let key = key_of(&object);
        if !self.wanted(&object) {
            // Left the scope (labels or owner changed): as gone.
            if let Some(old) = self.cache.remove(&key) {
                return self.emit(Action::Delete, &old, resource).await;
            }
            return Ok(());
        }
        let action = match self.cache.get(&key) {
            None => Action::Add,
            Some(old) if old.metadata.resource_version == object.metadata.resource_version => {
                return Ok(());
            }
            Some(_) => Action::Update,
        };
        self.cache.insert(key, object.clone());
        self.emit(action, &object, resource).await
    }

    /// DELETED from the watch.
    async fn forget(
        &mut self,
        mut object: DynamicObject,
        resource: &ApiResource,
    ) -> Result<(), Stop> {
        fill_types(&mut object, resource);
        if self.cache.remove(&key_of(&object)).is_none() {
            return Ok(());
        }
        self.emit(Action::Delete, &object, resource).await
    }

    async fn emit(
        &self,
        action: Action,
        object: &DynamicObject,
        resource: &ApiResource,
    ) -> Result<(), Stop> {
        let mut event = match make_event(
            self.settings.mode,
            action,
            &self.settings.cluster_url,
            &resource.plural,
            object,
            self.settings.owner.is_some(),
        ) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(source = %self.ctx.key, error = %e, "cannot build the event for {:?}", key_of(object));
                return Ok(());
            }
        };
        if let Some(overrides) = &self.settings.overrides {
            overrides.apply(&mut event);
        }
        match self.ctx.send(&event).await {
            Ok(()) => Ok(()),
            Err(SendError::Stopping) => Err(Stop::Stopping),
            Err(e @ SendError::Refused { .. }) => {
                let failed = self.reporter.failed_sends.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(source = %self.ctx.key, error = %e, failed_sends = failed, "event {} for {} dropped", event.ty(), event.attribute("subject").unwrap_or(""));
                Ok(())
            }
        }
    }
}

fn key_of(object: &DynamicObject) -> Key {
    (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

/// List items of built-in kinds come without apiVersion and kind.
fn fill_types(object: &mut DynamicObject, resource: &ApiResource) {
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
