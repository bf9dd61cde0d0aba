//! The control plane of `pilotlight run`: each set of manifests (from files
//! or the API server), with the channels and subscriptions its flows own,
//! is sorted by the registry's roles and handed to the two halves: the
//! sinks of ContainerSources and SinkBindings are planned first (a binding
//! changes a Service's template), then Services and ContainerSources' pods
//! (so that triggers and sources can resolve
//! references to them), then brokers, triggers and sources. Applies never
//! interleave and none runs after shutdown; a broker whose backend failed to
//! start is tried again with backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::board::StatusBoard;
use super::jobsink_intake;
use super::sinks::{self, SinkPlan, SinkViews};
use crate::api::index::ObjectIndex;
use crate::api::kinds::Role;
use crate::api::manifest::{Loaded, ManifestError, Manifests};
use crate::api::pod::ConfigKind;
use crate::api::{ObjectKey, Resource};
use crate::backoff::Backoff;
use crate::eventing::controller::plan::{Addresses, Destinations};
use crate::eventing::controller::{EventingController, EventingObjects};
use crate::eventing::flows;
use crate::serving::controller::ServingController;
use crate::serving::runtime::config::{ConfigData, ConfigObjects};

/// First and longest pause before starting failed backends again.
const BACKEND_RETRY_START: Duration = Duration::from_secs(1);
const BACKEND_RETRY_MAX: Duration = Duration::from_secs(30);

/// The control plane of `pilotlight run`.
pub struct ControlPlane {
    eventing: Arc<EventingController>,
    serving: Arc<ServingController>,
    board: StatusBoard,
    /// Whether the last apply left a broker whose backend failed to start
    /// (its Kafka not up yet, say); [`ControlPlane::retry_failed_backends`]
    /// applies again while it does.
    backends_failed: watch::Sender<bool>,
    /// Held through each apply, so that applies never interleave and none
    /// starts after shutdown.
    applying: tokio::sync::Mutex<Applying>,
    /// ContainerSources and SinkBindings as the last apply planned them.
    sinks: Arc<SinkViews>,
    /// Kubernetes mode: SinkBindings may bind Deployments, which the leader
    /// patches (`control::kubernetes::binding`).
    binds_workloads: std::sync::atomic::AtomicBool,
}

/// What the apply lock guards.
#[derive(Default)]
struct Applying {
    /// The manifests of the last apply, for a retry.
    latest: Option<Arc<Manifests>>,
    stopped: bool,
}

impl ControlPlane {
    pub(crate) fn new(eventing: EventingController, serving: Arc<ServingController>) -> Self {
        let eventing = Arc::new(eventing);
        let sinks = Arc::new(SinkViews::default());
        ControlPlane {
            board: StatusBoard::new(eventing.clone(), serving.clone(), sinks.clone()),
            eventing,
            serving,
            backends_failed: watch::channel(false).0,
            applying: tokio::sync::Mutex::default(),
            sinks,
            binds_workloads: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Lets SinkBindings bind Deployments from the next apply on: Kubernetes
    /// mode, whose leader patches them.
    pub(crate) fn bind_workloads(&self) {
        self.binds_workloads
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// ContainerSources and SinkBindings as the last apply planned them.
    pub(crate) fn sinks(&self) -> &SinkViews {
        &self.sinks
    }

    /// The class of Brokers without the class annotation.
    pub(crate) fn default_class(&self) -> crate::api::broker::BrokerClass {
        self.eventing.settings().default_class
    }

    /// The eventing controller, for replays through the admin API.
    pub(crate) fn eventing(&self) -> &EventingController {
        &self.eventing
    }

    /// Every object's status, for `get`, the admin API and Kubernetes
    /// status writes.
    /// The running broker `namespace/name` (a channel's is `{name}-kn-channel`).
    pub(crate) fn broker(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<crate::eventing::broker::BrokerEntry> {
        self.eventing.broker(namespace, name)
    }

    pub(crate) fn board(&self) -> &StatusBoard {
        &self.board
    }

    /// Whether the last apply left a broker whose backend failed to start.
    fn has_failed_backends(&self) -> bool {
        *self.backends_failed.borrow()
    }

    /// Applies the latest manifests again while a broker's backend fails to
    /// start (a Kafka that comes up after pilotlight, say), with backoff,
    /// until they all started or the control plane stops. Neither the
    /// files nor the API server change then, so nothing else would.
    pub(crate) fn retry_failed_backends(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let control = Arc::downgrade(self);
        let mut failed = self.backends_failed.subscribe();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(BACKEND_RETRY_START, BACKEND_RETRY_MAX);
            loop {
                if failed.wait_for(|failed| *failed).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff.next_delay()).await;
                let Some(control) = control.upgrade() else {
                    return;
                };
                let mut applying = control.applying.lock().await;
                if applying.stopped {
                    return;
                }
                if let Some(latest) = applying.latest.clone()
                    && control.has_failed_backends()
                {
                    tracing::info!("starting the backends that failed to start again");
                    control.apply_locked(&mut applying, latest).await;
                }
                if !control.has_failed_backends() {
                    backoff.reset();
                }
            }
        })
    }

    /// Applies the latest manifests again whenever this replica starts or
    /// stops leading, so that the sources that run on the leader only start
    /// or stop (see the source controller). Under the apply lock, so it
    /// never interleaves with an apply and never runs after shutdown. Ends
    /// with the election: at once in file mode, where the replica always
    /// leads.
    pub(crate) fn follow_leadership(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let control = Arc::downgrade(self);
        let mut leading = self.eventing.leading();
        tokio::spawn(async move {
            while leading.changed().await.is_ok() {
                let leads = *leading.borrow_and_update();
                let Some(control) = control.upgrade() else {
                    return;
                };
                let mut applying = control.applying.lock().await;
                if applying.stopped {
                    return;
                }
                // None before the first apply, which reads the election itself.
                if let Some(latest) = applying.latest.clone() {
                    tracing::info!(
                        leads,
                        "leadership changed; starting or stopping the sources that run on the leader only"
                    );
                    control.apply_locked(&mut applying, latest).await;
                }
            }
        })
    }

    /// Brings the running state to the manifests.
    pub async fn apply(&self, manifests: Arc<Manifests>) {
        let mut applying = self.applying.lock().await;
        log_new_refusals(applying.latest.as_deref(), &manifests);
        if applying.stopped {
            return;
        }
        self.apply_locked(&mut applying, manifests).await;
    }

    /// [`ControlPlane::apply`] under the apply lock; a retry of failed
    /// backends comes here too, without logging the refusals again.
    async fn apply_locked(&self, applying: &mut Applying, manifests: Arc<Manifests>) {
        applying.latest = Some(manifests.clone());
        // The channels and subscriptions that flows and JobSinks own run as
        // any other.
        let owned: Vec<_> = manifests
            .objects
            .iter()
            .flat_map(|loaded| match &loaded.resource {
                Resource::JobSink(sink) => {
                    let endpoint = self.jobsink_url(&loaded.resource.metadata().key());
                    jobsink_intake::intake(loaded, endpoint, self.max_running_jobs(sink))
                }
                _ => flows::expand(loaded),
            })
            .collect();
        let mut services = Vec::new();
        let mut jobsinks = Vec::new();
        let mut eventing = EventingObjects::default();
        for loaded in manifests.objects.iter().chain(&owned) {
            let key = loaded.resource.metadata().key();
            match loaded.resource.role() {
                Role::Service => services.push(loaded),
                Role::Broker => {
                    eventing.brokers.insert(key, loaded);
                }
                Role::Trigger => {
                    eventing.triggers.insert(key, loaded);
                }
                // A ContainerSource's pod runs on serving's runtimes.
                Role::Source if matches!(loaded.resource, Resource::ContainerSource(_)) => {}
                Role::Source => eventing.sources.push(loaded),
                Role::Channel => eventing.channels.push(loaded),
                Role::Subscription => {
                    eventing.subscriptions.insert(key, loaded);
                }
                Role::Flow => eventing.flows.push(loaded),
                // Planned below, before serving sees the Services.
                Role::Binding => {}
                Role::Sink => {
                    let channel = ObjectKey::new(
                        key.namespace.clone(),
                        jobsink_intake::intake_channel(&key.name),
                    );
                    eventing.addressed.push((loaded, channel));
                    jobsinks.push(loaded);
                }
                Role::Policy => eventing.policies.push(loaded),
                // Read through the object index by whatever refers to them.
                Role::Referenced => {}
            }
        }
        // Where each loaded channel, flow and JobSink is: every destination
        // resolved in this apply (sinks, triggers, sources) reads it.
        let addresses = self.eventing.addresses(&eventing);
        let sinks = self.plan_sinks(&manifests, &services, &eventing, &addresses);
        // A bound Service runs with the sink in its template.
        let services: Vec<&Loaded> = services
            .into_iter()
            .map(|l| {
                sinks
                    .bound_services
                    .get(&l.resource.metadata().key())
                    .unwrap_or(l)
            })
            .collect();
        self.serving
            .apply(&services, config_objects(&manifests))
            .await;
        self.serving.daemons().apply(sinks.daemons).await;
        self.sinks.set(sinks.views, sinks.workloads);
        self.serving.apply_jobsinks(&jobsinks);
        let index = ObjectIndex::new(&manifests);
        let serving = self.serving.clone();
        let service_url = move |key: &ObjectKey| serving.service_url(key);
        let backends_failed = self
            .eventing
            .apply(&eventing, &addresses, &index, &service_url)
            .await;
        self.serving
            .jobs()
            .set_addresses(jobsink_addresses(addresses));
        self.backends_failed.send_replace(backends_failed);
        self.board.set_errors(manifests.errors.clone());
    }

    /// Resolves the sinks of ContainerSources and SinkBindings against the
    /// loaded Brokers, Services, channels and flows, before serving runs anything: a bound
    /// Service's template carries its sink.
    fn plan_sinks(
        &self,
        manifests: &Manifests,
        services: &[&Loaded],
        eventing: &EventingObjects<'_>,
        addresses: &Addresses,
    ) -> SinkPlan {
        let brokers: BTreeSet<ObjectKey> = eventing.brokers.keys().cloned().collect();
        let loaded: BTreeSet<ObjectKey> = services
            .iter()
            .map(|l| l.resource.metadata().key())
            .collect();
        let serving = &self.serving;
        let service_url = |key: &ObjectKey| loaded.contains(key).then(|| serving.url(key, None));
        let destinations = Destinations {
            ingress_url: &self.eventing.settings().ingress_url,
            brokers: &brokers,
            services: &service_url,
            addresses,
        };
        let workloads = self
            .binds_workloads
            .load(std::sync::atomic::Ordering::Acquire);
        sinks::plan(&manifests.objects, services, &destinations, workloads)
    }

    /// Where the eventing half delivers a JobSink's events: the job endpoint
    /// of the admin listener (see `serving::jobs` for its contract), such as
    /// `http://127.0.0.1:9090/internal/v1/jobsinks/default/logger`.
    pub(crate) fn jobsink_url(&self, key: &ObjectKey) -> String {
        super::admin::jobsink_url(self.serving.jobs(), key)
    }

    /// Jobs of a JobSink at once: its `pilotlight.dev/max-running-jobs`
    /// annotation, else `--max-running-jobs`; the in-flight limit of the
    /// subscription that delivers to [`ControlPlane::jobsink_url`].
    pub(crate) fn max_running_jobs(&self, sink: &crate::api::jobsink::JobSink) -> usize {
        self.serving.jobs().max_running_jobs(sink)
    }

    /// The job runner, for the job endpoint.
    pub(crate) fn jobs(&self) -> &Arc<crate::serving::jobs::JobSinks> {
        self.serving.jobs()
    }

    /// Stops sources, dispatchers, backends and instances, saving cursors.
    /// No apply runs after it.
    pub(crate) async fn shutdown(&self) {
        self.applying.lock().await.stopped = true;
        self.eventing.shutdown().await;
        self.serving.shutdown().await;
    }
}

/// Each JobSink's address: its intake channel's.
fn jobsink_addresses(addresses: Addresses) -> BTreeMap<ObjectKey, String> {
    addresses
        .into_iter()
        .filter(|((kind, _), _)| kind == "JobSink")
        .map(|((_, key), url)| (key, url))
        .collect()
}

/// The loaded Secrets and ConfigMaps, as the local runtimes read them.
fn config_objects(manifests: &Manifests) -> ConfigObjects {
    let mut objects = ConfigObjects::default();
    for loaded in &manifests.objects {
        let (kind, data) = match &loaded.resource {
            Resource::Secret(secret) => (
                ConfigKind::Secret,
                ConfigData {
                    entries: secret.entries(),
                    secret_type: secret.secret_type.clone(),
                },
            ),
            Resource::ConfigMap(map) => (
                ConfigKind::ConfigMap,
                ConfigData {
                    entries: map.entries(),
                    secret_type: None,
                },
            ),
            _ => continue,
        };
        objects.insert(kind, loaded.resource.metadata().key(), data);
    }
    objects
}

/// Logs the refusals that the previous apply did not have: in Kubernetes mode
/// every change of any watched object applies again, and an unchanged
/// refusal said once is enough (`get` lists it for as long as it lasts).
fn log_new_refusals(previous: Option<&Manifests>, manifests: &Manifests) {
    let known = |error: &ManifestError| previous.is_some_and(|p| p.errors.contains(error));
    for error in manifests.errors.iter().filter(|e| !known(e)) {
        tracing::error!("manifest refused: {error}");
    }
}
