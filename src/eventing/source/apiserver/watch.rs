//! One kind's list and watch, on kube-runtime's [`watcher`] (as Kubernetes
//! mode watches its objects), the way a client-go informer feeds Knative's
//! adapter:
//!
//! 1. discovery resolves the kind to its resource (plural, scope);
//! 2. the watcher lists (`Init`, an `InitApply` per object, `InitDone`): the
//!    list is compared with what was seen ([`Known::relisted`]), so the first
//!    list sends nothing (as Knative's adapter: what exists when the source
//!    starts is not news) and a relist only the differences; the kind is
//!    Ready;
//! 3. it watches from the list's resourceVersion, with bookmarks, and resumes
//!    from the last resourceVersion when a watch ends or breaks; a change
//!    already seen is not sent again ([`Known::applied`]);
//! 4. on `410 Gone` it relists: kube's watcher does for an ERROR event, and
//!    for an HTTP 410 when the watch opens (which kube's watcher would retry
//!    from the same expired resourceVersion forever) a new watcher starts;
//! 5. a watch that cannot open, or an ERROR event, makes the kind NotReady and
//!    starts a new watcher after a delay (1 s doubling to 60 s); it is Ready
//!    again once its list succeeds. A failed list is NotReady too, and the
//!    watcher lists again after `default_backoff`'s delay.
//!
//! With `spec.namespaceSelector` (and a namespaced kind) the matching
//! namespaces are read before every list, and again before an event when
//! they were read more than [`NAMESPACES_EVERY`] ago.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, Scope as ResourceScope};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use tokio::time::Instant;

use super::events::{Action, EventContext, make_event};
use super::health::{Reporter, not_ready};
use super::known::{Known, Scope, key_of};
use crate::api::filter::Filter;
use crate::api::sources::apiserver::{ApiVersionKind, EventMode};
use crate::backoff::Backoff;
use crate::eventing::health::Health;
use crate::eventing::source::{CeOverrides, SendError, SourceContext};

/// How old the set of matching namespaces may be when an event comes.
pub(crate) const NAMESPACES_EVERY: Duration = Duration::from_secs(300);

/// Sleeps, or returns `true` early when the source stops.
pub(crate) async fn sleep_or_stop(ctx: &SourceContext, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => ctx.is_stopped(),
        _ = ctx.stopped() => true,
    }
}

/// Settings shared by the watches of one source.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub mode: EventMode,
    pub owner: Option<ApiVersionKind>,
    pub overrides: Option<CeOverrides>,
    /// `spec.filters`: only the events that pass are sent.
    pub filter: Arc<Filter>,
    /// The source's namespace: the scope without a namespace selector.
    pub namespace: String,
    /// `spec.namespaceSelector` as a label selector query.
    pub namespace_selector: Option<String>,
    /// The API server URL: the events' source.
    pub cluster_url: String,
}

/// The kind a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub api_version: String,
    pub kind: String,
    pub label_selector: Option<String>,
}

impl Target {
    fn gvk(&self) -> GroupVersionKind {
        match self.api_version.split_once('/') {
            Some((group, version)) => GroupVersionKind::gvk(group, version, &self.kind),
            None => GroupVersionKind::gvk("", &self.api_version, &self.kind),
        }
    }

    /// The watcher's list and watch parameters: `spec.resources[].selector`;
    /// kube's defaults otherwise (bookmarks, 290 s watches, pages of 500).
    fn watcher_config(&self) -> watcher::Config {
        let config = watcher::Config::default();
        match &self.label_selector {
            Some(selector) => config.labels(selector),
            None => config,
        }
    }
}

/// Why following one watcher ended.
enum Ended {
    /// The source stops.
    Stopped,
    /// The watch could not resume from its resourceVersion: relist.
    Gone,
    /// A failure: NotReady, then a new watcher after a delay.
    Failed(kube::Error, &'static str),
}

/// The resolved kind.
struct Resolved {
    resource: ApiResource,
    api: Api<DynamicObject>,
    /// Namespaced, and the source has a namespace selector.
    selects_namespaces: bool,
}

/// One kind's list and watch.
pub(crate) struct KindWatch<'a> {
    index: usize,
    client: kube::Client,
    target: Target,
    settings: &'a Settings,
    ctx: &'a SourceContext,
    reporter: &'a Reporter,
    backoff: Backoff,
    known: Known,
    scope: Scope,
    /// When the matching namespaces were read.
    namespaces_read: Option<Instant>,
    /// Relists for `410 Gone` with no watch event between them.
    gone_streak: u32,
}

impl<'a> KindWatch<'a> {
    pub(crate) fn new(
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
            known: Known::default(),
            scope: Scope {
                namespaces: None,
                owner: settings.owner.clone(),
            },
            namespaces_read: None,
            gone_streak: 0,
        }
    }

    /// Runs until the source stops.
    pub(crate) async fn run(mut self) {
        let Some(resolved) = self.discover().await else {
            return;
        };
        loop {
            let events = watcher(resolved.api.clone(), self.target.watcher_config());
            let ended = self.follow(events.default_backoff(), &resolved).await;
            if self.stops_after(ended).await {
                return;
            }
        }
    }

    /// Resolves the kind, retrying until it is served; None when the source
    /// stops first.
    async fn discover(&mut self) -> Option<Resolved> {
        let gvk = self.target.gvk();
        loop {
            if self.ctx.is_stopped() {
                return None;
            }
            match kube::discovery::pinned_kind(&self.client, &gvk).await {
                Ok((resource, caps)) => return Some(self.resolved(resource, &caps)),
                Err(e) => {
                    if self.fail(&e, "discovering").await {
                        return None;
                    }
                }
            }
        }
    }

    /// Without a namespace selector a namespaced kind is watched in the
    /// source's namespace; otherwise in all namespaces.
    fn resolved(&self, resource: ApiResource, caps: &ApiCapabilities) -> Resolved {
        let namespaced = matches!(caps.scope, ResourceScope::Namespaced);
        let selector = self.settings.namespace_selector.is_some();
        let api = if namespaced && !selector {
            Api::namespaced_with(self.client.clone(), &self.settings.namespace, &resource)
        } else {
            Api::all_with(self.client.clone(), &resource)
        };
        Resolved {
            resource,
            api,
            selects_namespaces: namespaced && selector,
        }
    }

    /// Handles one watcher's events until it must be replaced.
    async fn follow(
        &mut self,
        events: impl Stream<Item = Result<Event<DynamicObject>, watcher::Error>>,
        resolved: &Resolved,
    ) -> Ended {
        let ctx = self.ctx;
        let mut events = std::pin::pin!(events);
        let mut listed = Vec::new();
        loop {
            let item = tokio::select! {
                item = events.next() => item,
                _ = ctx.stopped() => return Ended::Stopped,
            };
            let result = match item {
                // A watcher does not end.
                None => return Ended::Stopped,
                Some(Err(error)) => self.on_error(error),
                Some(Ok(event)) => self.on_event(event, &mut listed, resolved).await,
            };
            if let Err(ended) = result {
                return ended;
            }
        }
    }

    async fn on_event(
        &mut self,
        event: Event<DynamicObject>,
        listed: &mut Vec<DynamicObject>,
        resolved: &Resolved,
    ) -> Result<(), Ended> {
        let resource = &resolved.resource;
        match event {
            Event::Init => {
                listed.clear();
                if resolved.selects_namespaces {
                    self.read_namespaces().await?;
                }
            }
            Event::InitApply(object) => listed.push(object),
            Event::InitDone => {
                self.backoff.reset();
                self.reporter.set(self.index, Health::Ready);
                let changes = self
                    .known
                    .relisted(std::mem::take(listed), &self.scope, resource);
                for change in changes {
                    self.emit(change, resource).await?;
                }
            }
            Event::Apply(object) => {
                self.gone_streak = 0;
                self.refresh_namespaces(resolved).await?;
                if let Some(change) = self.known.applied(object, &self.scope, resource) {
                    self.emit(change, resource).await?;
                }
            }
            Event::Delete(object) => {
                self.gone_streak = 0;
                if let Some(change) = self.known.deleted(object, resource) {
                    self.emit(change, resource).await?;
                }
            }
        }
        Ok(())
    }

    /// What an error of the watcher means: most it recovers from itself.
    fn on_error(&mut self, error: watcher::Error) -> Result<(), Ended> {
        let key = &self.ctx.key;
        match error {
            watcher::Error::InitialListFailed(e) => {
                let what = self.what("listing");
                tracing::warn!(source = %key, error = %e, "{what} failed");
                let health = not_ready(&e, &what, &self.settings.cluster_url);
                self.reporter.set(self.index, health);
                Ok(())
            }
            watcher::Error::WatchStartFailed(kube::Error::Api(status)) if status.code == 410 => {
                Err(Ended::Gone)
            }
            watcher::Error::WatchStartFailed(e) => Err(Ended::Failed(e, "watching")),
            watcher::Error::WatchError(status) if status.code == 410 => {
                let what = self.what("watching");
                tracing::info!(source = %key, "{what}: resourceVersion expired, relisting");
                Ok(())
            }
            watcher::Error::WatchError(status) => {
                Err(Ended::Failed(kube::Error::Api(status), "watching"))
            }
            watcher::Error::WatchFailed(e) => {
                let what = self.what("watching");
                tracing::debug!(source = %key, error = %e, "{what}: watch broke, resuming");
                Ok(())
            }
            watcher::Error::NoResourceVersion => {
                let what = self.what("watching");
                tracing::warn!(source = %key, "{what}: no resourceVersion, relisting");
                Ok(())
            }
        }
    }

    /// After a watcher ended: reports and waits as needed; true when the
    /// source stops.
    async fn stops_after(&mut self, ended: Ended) -> bool {
        match ended {
            Ended::Stopped => true,
            Ended::Gone => {
                self.gone_streak += 1;
                let what = self.what("watching");
                tracing::info!(source = %self.ctx.key, "{what}: resourceVersion expired, relisting");
                // Relist at once, but do not spin on a server that keeps
                // answering 410.
                self.gone_streak > 1 && sleep_or_stop(self.ctx, self.backoff.next_delay()).await
            }
            Ended::Failed(error, doing) => self.fail(&error, doing).await,
        }
    }

    /// NotReady for `error`, then the backoff's delay; true when the source
    /// stops meanwhile.
    async fn fail(&mut self, error: &kube::Error, doing: &str) -> bool {
        let what = self.what(doing);
        tracing::warn!(source = %self.ctx.key, error = %error, "{what} failed");
        self.reporter.set(
            self.index,
            not_ready(error, &what, &self.settings.cluster_url),
        );
        let delay = self.backoff.next_delay();
        sleep_or_stop(self.ctx, delay).await
    }

    fn what(&self, doing: &str) -> String {
        format!("{doing} {} {}", self.target.api_version, self.target.kind)
    }

    /// Reads the namespaces again when the last read is too old.
    async fn refresh_namespaces(&mut self, resolved: &Resolved) -> Result<(), Ended> {
        let stale = self
            .namespaces_read
            .is_none_or(|read| read.elapsed() >= NAMESPACES_EVERY);
        if resolved.selects_namespaces && stale {
            self.read_namespaces().await?;
        }
        Ok(())
    }

    /// The namespaces that match `spec.namespaceSelector`.
    async fn read_namespaces(&mut self) -> Result<(), Ended> {
        let namespaces: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("", "v1", "Namespace"),
                "namespaces",
            ),
        );
        let params = ListParams {
            label_selector: self.settings.namespace_selector.clone(),
            ..ListParams::default()
        };
        let list = namespaces
            .list(&params)
            .await
            .map_err(|e| Ended::Failed(e, "listing namespaces for"))?;
        let names = list.items.into_iter().filter_map(|ns| ns.metadata.name);
        self.scope.namespaces = Some(names.collect());
        self.namespaces_read = Some(Instant::now());
        Ok(())
    }

    /// Sends the event of one change; an event the sink refuses is dropped
    /// (and counted), so that the watch goes on.
    async fn emit(
        &self,
        (action, object): (Action, DynamicObject),
        resource: &ApiResource,
    ) -> Result<(), Ended> {
        let origin = self.ctx.key.to_string();
        let context = EventContext {
            mode: self.settings.mode,
            origin: &origin,
            source: &self.settings.cluster_url,
            plural: &resource.plural,
            as_controller: self.settings.owner.is_some(),
        };
        let built = make_event(&context, action, &object);
        let mut event = match built {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(source = %self.ctx.key, error = %e, "cannot build the event for {:?}", key_of(&object));
                return Ok(());
            }
        };
        // As Knative's adapter: the filters see the event as the source made
        // it, before ceOverrides.
        if !self.settings.filter.matches(&event) {
            tracing::debug!(source = %self.ctx.key, "event {} for {} left out by spec.filters", event.ty(), event.attribute("subject").unwrap_or(""));
            return Ok(());
        }
        if let Some(overrides) = &self.settings.overrides {
            overrides.apply(&mut event);
        }
        match self.ctx.send(&event).await {
            Ok(()) => Ok(()),
            Err(SendError::Stopping) => Err(Ended::Stopped),
            Err(e @ SendError::Refused { .. }) => {
                let failed = self.reporter.failed_sends.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(source = %self.ctx.key, error = %e, failed_sends = failed, "event {} for {} dropped", event.ty(), event.attribute("subject").unwrap_or(""));
                Ok(())
            }
        }
    }
}
