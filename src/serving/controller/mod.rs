//! Reconciling Services: each template becomes an immutable revision (named
//! by [`RevisionHistory`]), each revision gets a deployment on the runtime and
//! an autoscaler, and the route table maps hosts to revisions by traffic.
//!
//! `latestRevision: true` means the latest revision that has been ready, so
//! a new template's revision starts while the old one keeps serving, and the
//! route moves when the new one is up (a background refresh does that).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::sync::{Notify, watch};

use crate::api::Invalid;
use crate::api::ObjectKey;
use crate::api::autoscaling::{AutoscalerDefaults, RevisionScaling};
use crate::api::manifest::Loaded;
use crate::api::service::RevisionTemplate;
use crate::api::service::{Service, TrafficRevision};
use crate::api::status::Status;
use crate::desired::take_gone;
use crate::serving::autoscaler::{ClusterStats, RevisionStats, Scaler};
use crate::serving::daemon::Daemons;
use crate::serving::history::{RecordedRevision, RevisionHistory};
use crate::serving::jobs::JobSinks;
use crate::serving::revision::{Revision, RevisionParts};
use crate::serving::router::{HostRoute, RouteTable, Router};
use crate::serving::runtime::config::ConfigObjects;
use crate::serving::runtime::{Runtime, StartState, Workload, WorkloadKind};

mod plan;
mod views;

use plan::{Revisions, names, plan_revisions};

/// How long `pilotlight run` waits on exit for instances to finish requests.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Where clients reach service hosts: the main listener, or `--ingress-url`
/// when they come through something else (a cluster Service on port 80, a
/// TLS-terminating load balancer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PublicAddress {
    pub https: bool,
    pub port: u16,
}

impl PublicAddress {
    /// `ingress_url`'s scheme and port (the scheme's default when it names
    /// none), else plain HTTP on the listener's port. The URL was checked
    /// at start.
    pub(crate) fn of(ingress_url: Option<&str>, listen: std::net::SocketAddr) -> Self {
        let Some(uri) = ingress_url.and_then(|url| url.parse::<http::Uri>().ok()) else {
            return PublicAddress {
                https: false,
                port: listen.port(),
            };
        };
        let https = uri.scheme_str() == Some("https");
        PublicAddress {
            https,
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
        }
    }
}

/// Settings of the serving half.
#[derive(Debug, Clone)]
pub(crate) struct ServingSettings {
    /// Services answer to `{service}.{namespace}.{domain}`.
    pub domain: String,
    /// The scheme and port of service URLs.
    pub public: PublicAddress,
    pub data_dir: PathBuf,
    pub autoscaler: AutoscalerDefaults,
    /// Requests one revision holds while it has no room (then 503).
    pub queue_limit: usize,
    /// Revisions without traffic kept per service (the oldest go first).
    pub retained_revisions: usize,
    /// The load of every pilotlight replica, where there are several.
    pub cluster: Arc<ClusterStats>,
}

/// A revision as the control plane tracks it.
struct RunningRevision {
    record: RecordedRevision,
    /// The runtime that runs it (`process`, `container`, `kubernetes`).
    runtime: &'static str,
    /// None when the revision cannot run; `failure` says why.
    revision: Option<Arc<Revision>>,
    failure: Option<String>,
    reachable: watch::Sender<bool>,
    /// Marks the revision ready once an instance is, and publishes its
    /// ready instances as they change.
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for RunningRevision {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        if let Some(revision) = &self.revision {
            metrics::gauge!(READY_INSTANCES_GAUGE, "revision" => revision.key.to_string()).set(0.0);
        }
    }
}

/// A revision's ready instances: the console draws it over time.
pub(crate) const READY_INSTANCES_GAUGE: &str = "pilotlight_revision_ready_instances";

struct RunningService {
    service: Service,
    origin: String,
    latest_created: String,
    /// A problem with the service as a whole (name taken, unknown revision).
    failure: Option<Status>,
    revisions: BTreeMap<String, RunningRevision>,
}

#[derive(Default)]
struct State {
    services: BTreeMap<ObjectKey, RunningService>,
}

/// The serving half of the control plane.
pub(crate) struct ServingController {
    settings: ServingSettings,
    runtime: Arc<dyn Runtime>,
    router: Arc<Router>,
    history: std::sync::Mutex<RevisionHistory>,
    state: tokio::sync::Mutex<State>,
    /// Services by key with their URL, for resolving references at once.
    urls: RwLock<BTreeMap<ObjectKey, String>>,
    /// A revision became ready: routes may move.
    refresh: Arc<Notify>,
    /// The loaded Secrets and ConfigMaps, published for the local runtimes.
    config_objects: watch::Sender<Arc<ConfigObjects>>,
    /// ContainerSources' pods, on the same runtime.
    daemons: Daemons,
    /// JobSinks and their jobs.
    jobs: Arc<JobSinks>,
}

impl ServingController {
    /// `config_objects` feeds the runtimes the Secrets and ConfigMaps of each
    /// apply.
    pub(crate) fn new(
        settings: ServingSettings,
        runtime: Arc<dyn Runtime>,
        config_objects: watch::Sender<Arc<ConfigObjects>>,
        jobs: Arc<JobSinks>,
    ) -> Arc<Self> {
        let history = RevisionHistory::load(&settings.data_dir.join("serving"));
        let daemons = Daemons::new(runtime.clone());
        let control = Arc::new(ServingController {
            router: Arc::new(Router::new(&settings.domain)),
            settings,
            runtime,
            history: std::sync::Mutex::new(history),
            state: tokio::sync::Mutex::new(State::default()),
            urls: RwLock::new(BTreeMap::new()),
            refresh: Arc::new(Notify::new()),
            config_objects,
            daemons,
            jobs,
        });
        tokio::spawn(refresh_loop(
            Arc::downgrade(&control),
            control.refresh.clone(),
        ));
        control
    }

    /// The daemons (ContainerSources' pods) this controller runs.
    pub(crate) fn daemons(&self) -> &Daemons {
        &self.daemons
    }

    /// JobSinks and their jobs: the job endpoint's runner.
    pub(crate) fn jobs(&self) -> &Arc<JobSinks> {
        &self.jobs
    }

    /// Brings the JobSinks to the loaded ones.
    pub(crate) fn apply_jobsinks(&self, sinks: &[&Loaded]) {
        self.jobs.apply(sinks);
    }

    /// Every JobSink with its jobs, for `get` and status writes.
    pub(crate) fn jobsinks(&self, namespace: Option<&str>) -> Vec<crate::api::status::ObjectView> {
        self.jobs.views(namespace)
    }

    pub(crate) fn router(&self) -> Arc<Router> {
        self.router.clone()
    }

    /// The URL of a service (`http://hello.default.localhost:8080`).
    pub(crate) fn url(&self, service: &ObjectKey, tag: Option<&str>) -> String {
        let host = self.router.host(service, tag);
        let PublicAddress { https, port } = self.settings.public;
        let scheme = if https { "https" } else { "http" };
        match (https, port) {
            (false, 80) | (true, 443) => format!("{scheme}://{host}"),
            _ => format!("{scheme}://{host}:{port}"),
        }
    }

    /// The URL of a loaded service, for Trigger subscribers and sinks.
    pub(crate) fn service_url(&self, service: &ObjectKey) -> Option<String> {
        self.urls
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .cloned()
    }

    /// Brings running services to the loaded ones; `objects` are the loaded
    /// Secrets and ConfigMaps, which instances read when they start.
    pub(crate) async fn apply(&self, services: &[&Loaded], objects: ConfigObjects) {
        self.config_objects.send_if_modified(|current| {
            let changed = **current != objects;
            if changed {
                *current = Arc::new(objects);
            }
            changed
        });
        let desired: BTreeMap<ObjectKey, (&Service, String)> = services
            .iter()
            .filter_map(|l| match &l.resource {
                crate::api::Resource::Service(s) => {
                    Some((s.metadata.key(), (s.as_ref(), l.origin.to_string())))
                }
                _ => None,
            })
            .collect();
        *self.urls.write().unwrap_or_else(|e| e.into_inner()) = desired
            .keys()
            .map(|k| (k.clone(), self.url(k, None)))
            .collect();
        let mut state = self.state.lock().await;
        let mut stopping = Vec::new();
        for (key, old) in take_gone(&mut state.services, |key| desired.contains_key(key)) {
            tracing::info!(service = %key, "service deleted; stopping its revisions");
            stopping.extend(old.revisions.into_values());
            self.with_history(|h| h.forget_service(&key));
        }
        for (key, (service, origin)) in desired {
            self.reconcile_service(&mut state, &key, service, origin, &mut stopping);
        }
        if let Err(e) = self.with_history(|h| h.save()) {
            tracing::error!(error = %e, "cannot save the revision history; revision numbers may repeat after a restart");
        }
        self.route(&state);
        drop(state);
        stop_all(stopping, Stop::Retire).await;
    }

    fn with_history<T>(&self, f: impl FnOnce(&mut RevisionHistory) -> T) -> T {
        f(&mut self.history.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn reconcile_service(
        &self,
        state: &mut State,
        key: &ObjectKey,
        service: &Service,
        origin: String,
        stopping: &mut Vec<RunningRevision>,
    ) {
        let template = serde_json::to_value(&service.spec.template).unwrap_or_default();
        let recorded = self.with_history(|h| {
            h.revision_for(
                key,
                &template,
                service.template_name(),
                service.metadata.generation,
            )
        });
        let entry = state
            .services
            .entry(key.clone())
            .or_insert_with(|| RunningService {
                service: service.clone(),
                origin: origin.clone(),
                latest_created: String::new(),
                failure: None,
                revisions: BTreeMap::new(),
            });
        entry.service = service.clone();
        entry.origin = origin;
        entry.failure = None;
        match recorded {
            Ok((record, created)) => {
                if created {
                    tracing::info!(service = %key, revision = %record.name, "new revision");
                }
                entry.latest_created = record.name.clone();
            }
            Err(e) => {
                entry.failure = Some(Status::not_ready("RevisionNameTaken", e.to_string()));
            }
        }
        let history: Vec<RecordedRevision> = self.with_history(|h| h.revisions(key).to_vec());
        let traffic: Vec<TrafficRevision> =
            service.traffic().into_iter().map(|(t, _, _)| t).collect();
        let latest_ready = latest_ready(entry);
        let plan = plan_revisions(
            &Revisions {
                traffic: &traffic,
                latest_created: Some(entry.latest_created.as_str()).filter(|n| !n.is_empty()),
                latest_ready: latest_ready.as_deref(),
                history: &history,
                retained: self.settings.retained_revisions,
            },
            |name| entry.revisions.contains_key(name),
        );
        for name in &plan.start {
            if let Some(record) = history.iter().find(|r| &r.name == name) {
                let running = self.start_revision(key, record);
                entry.revisions.insert(name.clone(), running);
            }
        }
        if let Some(name) = plan.missing.last() {
            entry.failure = Some(Status::not_ready(
                "RevisionMissing",
                format!(
                    "spec.traffic names revision {name}, which does not exist; its revisions are {}",
                    names(&history)
                ),
            ));
        }
        for name in &plan.retire {
            tracing::info!(service = %key, revision = %name, "revision retired");
            if let Some(running) = entry.revisions.remove(name) {
                stopping.push(running);
            }
        }
        if !plan.retire.is_empty() {
            self.with_history(|h| h.retain(key, |r| !plan.retire.contains(&r.name)));
        }
    }

    fn start_revision(&self, service: &ObjectKey, record: &RecordedRevision) -> RunningRevision {
        let (reachable, reachable_rx) = watch::channel(false);
        let mut running = RunningRevision {
            record: record.clone(),
            runtime: "",
            revision: None,
            failure: None,
            reachable,
            watcher: None,
        };
        match self.build_revision(service, record, reachable_rx, &mut running.runtime) {
            Ok((revision, ready_at_zero)) => {
                let ready = watch_ready(revision.clone(), ready_at_zero, self.refresh.clone());
                let instances = publish_instances(&revision);
                running.watcher = Some(tokio::spawn(async move {
                    tokio::join!(ready, instances);
                }));
                running.revision = Some(revision);
            }
            Err(message) => {
                tracing::error!(service = %service, revision = %record.name, runtime = running.runtime, "revision cannot run: {message}");
                running.failure = Some(message);
            }
        }
        running
    }

    /// Deploys the revision; `runtime` is set to the runtime's name as soon
    /// as the template is read, so that a failure still says which. Also
    /// says whether the revision is Ready with no instance (initial scale 0).
    fn build_revision(
        &self,
        service: &ObjectKey,
        record: &RecordedRevision,
        reachable: watch::Receiver<bool>,
        runtime: &mut &'static str,
    ) -> Result<(Arc<Revision>, bool), String> {
        let template: RevisionTemplate = serde_json::from_value(record.template.clone())
            .map_err(|e| {
                format!("its stored template (in {{data-dir}}/serving/revisions.json) is unreadable: {e}; change spec.template to make a new revision")
            })?;
        let spec = &template.spec;
        let container_concurrency = spec.container_concurrency.unwrap_or(0);
        let scaling = RevisionScaling::resolve(
            &template.metadata.annotations,
            &self.settings.autoscaler,
            container_concurrency,
        )
        .map_err(|e: Invalid| e.to_string())?;
        let key = ObjectKey::new(service.namespace.clone(), record.name.clone());
        let workload = Workload {
            service: service.clone(),
            revision: record.name.clone(),
            drain_timeout: spec.timeout(),
            template: template.clone(),
            kind: WorkloadKind::Revision,
        };
        *runtime = self.runtime.name_for(&workload);
        let deployment = self.runtime.deploy(workload).map_err(|e| e.to_string())?;
        let stats = Arc::new(RevisionStats::new(tokio::time::Instant::now()));
        let starts_ready = scaling.initial_scale == 0;
        let scaler = Scaler::spawn(
            key.to_string(),
            scaling,
            stats.clone(),
            deployment.clone(),
            reachable,
            self.settings.cluster.clone(),
        );
        let revision = Arc::new(Revision::new(RevisionParts {
            key,
            container_concurrency,
            timeout: spec.timeout(),
            queue_limit: self.settings.queue_limit,
            stats,
            deployment,
            scaler,
        }));
        // Knative marks a revision with initial scale 0 ready without
        // instances, once they can start (its image is there).
        if starts_ready && *revision.deployment.start_state().borrow() == StartState::Ready {
            revision.mark_ready();
        }
        Ok((revision, starts_ready))
    }

    /// Rebuilds the route table and tells each revision whether it has traffic.
    fn route(&self, state: &State) {
        let mut table = RouteTable::default();
        let mut reachable: BTreeSet<(ObjectKey, String)> = BTreeSet::new();
        for (key, entry) in &state.services {
            let Ok(targets) = resolve_traffic(entry) else {
                continue;
            };
            let main: Vec<(Arc<Revision>, u32)> = targets
                .iter()
                .filter(|t| t.percent > 0)
                .map(|t| (t.revision.clone(), t.percent))
                .collect();
            for target in &targets {
                reachable.insert((key.clone(), target.revision.key.name.clone()));
                if let Some(tag) = &target.tag {
                    table.insert(
                        self.router.host(key, Some(tag)),
                        HostRoute::new(key.clone(), vec![(target.revision.clone(), 100)]),
                    );
                }
            }
            table.insert(
                self.router.host(key, None),
                HostRoute::new(key.clone(), main),
            );
        }
        self.router.replace(table);
        for (key, entry) in &state.services {
            for (name, running) in &entry.revisions {
                let has_traffic = reachable.contains(&(key.clone(), name.clone()));
                running.reachable.send_if_modified(|r| {
                    let changed = *r != has_traffic;
                    *r = has_traffic;
                    changed
                });
            }
        }
    }

    async fn refresh_routes(&self) {
        let state = self.state.lock().await;
        self.route(&state);
    }

    /// Stops every instance of every revision.
    pub(crate) async fn shutdown(&self) {
        // Running jobs stop; their events are delivered again after a restart.
        self.jobs.shutdown().await;
        let mut state = self.state.lock().await;
        let all: Vec<RunningRevision> = std::mem::take(&mut state.services)
            .into_values()
            .flat_map(|s| s.revisions.into_values())
            .collect();
        self.router.replace(RouteTable::default());
        drop(state);
        // A request may hold an instance for up to timeoutSeconds, an upgraded
        // connection for ever; pilotlight's exit does not wait that long.
        if tokio::time::timeout(SHUTDOWN_DRAIN, stop_all(all, Stop::Exit))
            .await
            .is_err()
        {
            tracing::warn!(
                "instances still busy after {SHUTDOWN_DRAIN:?}; they are killed as pilotlight exits"
            );
        }
        self.daemons.shutdown().await;
        // Processes die with pilotlight (parent-death signal); what else is
        // left, such as containers, the runtime removes now.
        self.runtime.exit().await;
    }
}

/// One resolved traffic target.
struct Target {
    revision: Arc<Revision>,
    percent: u32,
    tag: Option<String>,
    latest: bool,
}

/// The service's traffic with `latestRevision` resolved to the latest ready
/// revision (or the latest created, while none has been ready yet).
fn resolve_traffic(entry: &RunningService) -> Result<Vec<Target>, Box<Status>> {
    let latest = latest_ready(entry).unwrap_or_else(|| entry.latest_created.clone());
    entry
        .service
        .traffic()
        .into_iter()
        .map(|(target, percent, tag)| {
            let (name, is_latest) = match target {
                TrafficRevision::Latest => (latest.clone(), true),
                TrafficRevision::Named(name) => (name, false),
            };
            let running = entry.revisions.get(&name).ok_or_else(|| {
                Box::new(Status::not_ready(
                    "RevisionMissing",
                    format!("revision {name} does not exist: fix spec.traffic, or `pilotlight get revisions` to list the service's revisions"),
                ))
            })?;
            let revision = running.revision.clone().ok_or_else(|| {
                Box::new(Status::not_ready(
                    "RevisionFailed",
                    format!(
                        "revision {name} cannot run: {}",
                        running.failure.clone().unwrap_or_default()
                    ),
                ))
            })?;
            Ok(Target {
                revision,
                percent,
                tag,
                latest: is_latest,
            })
        })
        .collect()
}

/// The newest revision (by creation) that has been ready.
fn latest_ready(entry: &RunningService) -> Option<String> {
    entry
        .revisions
        .values()
        .filter(|r| r.revision.as_ref().is_some_and(|r| r.has_been_ready()))
        .max_by_key(|r| r.record.created)
        .map(|r| r.record.name.clone())
}

/// Marks the revision ready when its first instance is (or, at initial
/// scale 0, once instances can start), then wakes the refresh.
async fn watch_ready(revision: Arc<Revision>, ready_at_zero: bool, refresh: Arc<Notify>) {
    if revision.has_been_ready() {
        return;
    }
    let mut endpoints = revision.watch_endpoints();
    let mut start_state = revision.deployment.start_state();
    let can_start = async {
        match ready_at_zero {
            true => start_state
                .wait_for(|s| *s == StartState::Ready)
                .await
                .is_ok(),
            false => std::future::pending().await,
        }
    };
    let ready = tokio::select! {
        instance = endpoints.wait_for(|e| !e.is_empty()) => instance.is_ok(),
        can_start = can_start => can_start,
    };
    if ready {
        revision.mark_ready();
        tracing::info!(revision = %revision.key, "revision ready");
        refresh.notify_one();
    }
}

/// Sets the revision's ready-instances gauge on every change, until the
/// runtime lets go of its instances.
fn publish_instances(revision: &Revision) -> impl Future<Output = ()> + use<> {
    let mut endpoints = revision.watch_endpoints();
    let gauge = metrics::gauge!(READY_INSTANCES_GAUGE, "revision" => revision.key.to_string());
    async move {
        loop {
            let ready = endpoints.borrow_and_update().len();
            gauge.set(ready as f64);
            if endpoints.changed().await.is_err() {
                return;
            }
        }
    }
}

async fn refresh_loop(control: std::sync::Weak<ServingController>, refresh: Arc<Notify>) {
    loop {
        refresh.notified().await;
        let Some(control) = control.upgrade() else {
            return;
        };
        control.refresh_routes().await;
    }
}

/// Why revisions stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Deleted or retired: gone for good, with what the runtime made for them.
    Retire,
    /// pilotlight is exiting: a runtime whose instances outlive it leaves
    /// them (Kubernetes Deployments keep serving for the next leader).
    Exit,
}

/// Stops revisions: scalers first, so nothing scales them up again, then
/// their deployments retire or shut down.
async fn stop_all(revisions: Vec<RunningRevision>, why: Stop) {
    let deployments: Vec<_> = revisions
        .iter()
        .filter_map(|r| r.revision.as_ref())
        .map(|r| {
            r.scaler.stop();
            r.deployment.clone()
        })
        .collect();
    drop(revisions);
    futures::future::join_all(deployments.iter().map(|d| async move {
        match why {
            Stop::Retire => d.retire().await,
            Stop::Exit => d.shutdown().await,
        }
    }))
    .await;
}

#[cfg(test)]
mod tests {
    use super::PublicAddress;

    #[test]
    fn service_urls_take_the_ingress_urls_scheme_and_port() {
        let listen = "127.0.0.1:8080".parse().expect("addr");
        let of = |url| PublicAddress::of(url, listen);
        assert_eq!(
            of(None),
            PublicAddress {
                https: false,
                port: 8080
            }
        );
        assert_eq!(
            of(Some("http://pilotlight-ingress.pilotlight.svc")),
            PublicAddress {
                https: false,
                port: 80
            }
        );
        assert_eq!(
            of(Some("https://events.example.com")),
            PublicAddress {
                https: true,
                port: 443
            }
        );
        assert_eq!(
            of(Some("https://events.example.com:8443")),
            PublicAddress {
                https: true,
                port: 8443
            }
        );
    }
}
