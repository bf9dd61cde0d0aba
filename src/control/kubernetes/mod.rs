//! Kubernetes mode (`pilotlight run --kubernetes`): the objects come from the
//! API server instead of files, and go through the same loader checks and
//! the same [`ControlPlane::apply`] as in file mode.
//!
//! - Every watched kind has a reflector cache; [`DesiredState`] turns the
//!   caches into manifests and applies them when an object changed. The
//!   Controllers below keep watches of their own: sharing one stream with
//!   them needs kube's unstable stream API.
//! - Each reconciled kind runs a kube-runtime `Controller`. Its reconcile
//!   brings the desired state up to date, then (on the leader only) holds
//!   pilotlight's finalizer on the object and writes its status through the
//!   status subresource. An object being deleted is left out of the desired
//!   state, so the apply removes what pilotlight made for it, and then the
//!   finalizer is released.
//! - A SinkBinding whose subject is a Deployment is bound by its reconcile,
//!   on the leader: the Deployments' pod templates are patched, and
//!   unpatched when the finalizer is released ([`binding`]). A change to
//!   any Deployment reconciles the SinkBindings of its namespace.
//! - A Lease elects the leader ([`leader`]); every replica applies, so every
//!   replica serves the ingress, dispatches and proxies. Sources that must
//!   run once per cluster (PingSource, ApiServerSource) run on the leader
//!   only (see `eventing::source`).

mod binding;
mod desired;
mod kinds;
pub mod leader;
pub mod peers;
mod report;
pub mod tls_secret;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::api::ObjectKey;
use crate::api::status::Status;
use crate::control::reconcile::ControlPlane;
use desired::object_key;
use desired::{Cache, CacheEvents, DesiredState};
use kinds::WatchedKind;

/// How often the leader rewrites an object's status when nothing changed in
/// the API server: pilotlight's own state changes too (a backend connects, a
/// revision becomes ready). Sooner while the object is not ready.
const RESYNC_READY: Duration = Duration::from_secs(30);
const RESYNC_NOT_READY: Duration = Duration::from_secs(3);
/// How long a burst of watch events may take to arrive before one apply.
const SETTLE: Duration = Duration::from_millis(50);

/// `--kubernetes` settings.
#[derive(Debug, Clone)]
pub struct KubernetesSettings {
    /// A kubeconfig file; None for kube's inference (`KUBECONFIG` or
    /// `~/.kube/config`, then the in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    pub lease: leader::LeaseSettings,
}

/// Builds the API client of `--kubernetes` from `--kubeconfig`, or by
/// kube's inference.
pub(crate) async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = crate::kubeconfig::load_config(kubeconfig).await.map_err(|e| match kubeconfig {
        Some(_) => anyhow::anyhow!("{e} (--kubeconfig)"),
        None => anyhow::anyhow!(
            "no Kubernetes configuration ({e}): run pilotlight in a cluster, or set KUBECONFIG or pass --kubeconfig"
        ),
    })?;
    kube::Client::try_from(config)
        .map_err(|e| anyhow::anyhow!("cannot build the Kubernetes client: {e}"))
}

/// What the controllers share.
struct Context {
    client: kube::Client,
    desired: DesiredState,
    leader: watch::Receiver<bool>,
}

#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<ReconcileError>>),
    #[error("{0}: the deletion has not reached pilotlight's cache yet")]
    NotYetRemoved(ObjectKey),
    #[error("{0}")]
    Unbind(#[from] binding::BindError),
}

/// The running watches and controllers; dropping it stops them.
pub(crate) struct KubernetesControl {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for KubernetesControl {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl KubernetesControl {
    /// Starts watching every kind the API server has, and returns once the
    /// first state has been applied.
    pub(crate) async fn start(
        client: kube::Client,
        control: Arc<ControlPlane>,
        leader: watch::Receiver<bool>,
    ) -> KubernetesControl {
        // Before the first apply, which plans the bindings of Deployments.
        control.bind_workloads();
        let mut tasks = Vec::new();
        let mut caches = Vec::new();
        let mut controllers = Vec::new();
        let events = Arc::new(CacheEvents::default());
        for kind in kinds::watched_kinds() {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource);
            if !installed(&api, &kind).await {
                continue;
            }
            if kind.reconciled {
                let mut controller = Controller::new_with(
                    api.clone(),
                    watcher::Config::default(),
                    kind.resource.clone(),
                );
                if binding::is_sink_binding(&kind) {
                    controller =
                        binding::watch_subjects(controller, client.clone(), kind.resource.clone());
                }
                controllers.push((kind.clone(), controller));
            }
            let (cache, task) = cache_of(api, kind, events.clone());
            caches.push(cache);
            tasks.push(task);
        }
        let context = Arc::new(Context {
            client,
            desired: DesiredState::new(control, caches, events.clone()),
            leader: leader.clone(),
        });
        context.desired.sync().await;
        let (applied, _) = watch::channel(());
        for (kind, controller) in controllers {
            let kind = Arc::new(kind);
            let again = resync_stream(applied.subscribe(), leader.clone());
            let run = controller
                .reconcile_all_on(again)
                .run(
                    move |object, context| reconcile(object, context, kind.clone()),
                    error_policy,
                    context.clone(),
                )
                .for_each(|result| async move {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "reconcile");
                    }
                });
            tasks.push(tokio::spawn(run));
        }
        tasks.push(tokio::spawn(sync_on_change(context, events, applied)));
        KubernetesControl { tasks }
    }
}

/// Applies after every change to a cache (a ConfigMap a broker reads
/// changes no Broker, yet changes its backend); after an apply, every
/// object's status may have changed.
async fn sync_on_change(
    context: Arc<Context>,
    events: Arc<CacheEvents>,
    applied: watch::Sender<()>,
) {
    loop {
        events.notify.notified().await;
        // A burst of events (a relist, `kubectl apply -f dir/`) makes one apply.
        tokio::time::sleep(SETTLE).await;
        if context.desired.sync().await {
            applied.send_replace(());
        }
    }
}

/// Whether the API server serves the kind: a cluster without, say, the
/// RabbitMQ CRDs still runs everything else.
async fn installed(api: &Api<DynamicObject>, kind: &WatchedKind) -> bool {
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            tracing::warn!(kind = %kind.resource.kind, api_version = %kind.resource.api_version, "the API server does not serve this kind (is its CRD installed?); not watching it");
            false
        }
        // Forbidden, unreachable: the watch retries and logs.
        Err(e) => {
            tracing::warn!(kind = %kind.resource.kind, error = %e, "cannot list this kind yet; watching anyway");
            true
        }
    }
}

/// A kind's cache, kept by a reflector with kube's default backoff; every
/// event is recorded in `events`.
fn cache_of(
    api: Api<DynamicObject>,
    kind: WatchedKind,
    events: Arc<CacheEvents>,
) -> (Cache, tokio::task::JoinHandle<()>) {
    let writer = reflector::store::Writer::new(kind.resource.clone());
    let store = writer.as_reader();
    let (listed_tx, listed) = watch::channel(false);
    let name = kind.resource.kind.clone();
    let config = kind.watcher_config();
    let stream = reflector::reflector(writer, watcher::watcher(api, config))
        .default_backoff()
        .for_each(move |event| {
            match event {
                Ok(watcher::Event::InitDone) => {
                    listed_tx.send_replace(true);
                    events.record();
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => events.record(),
                Err(e) => tracing::warn!(kind = %name, error = %e, "watch failed; retrying"),
            }
            std::future::ready(())
        });
    let cache = Cache {
        kind,
        store,
        listed,
    };
    (cache, tokio::spawn(stream))
}

/// Fires when an apply changed something, and when this replica becomes the
/// leader.
fn resync_stream(
    applied: watch::Receiver<()>,
    leader: watch::Receiver<bool>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    let applied = futures::stream::unfold(applied, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    });
    let elected = futures::stream::unfold(leader, |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                return Some(((), rx));
            }
        }
    });
    futures::stream::select(applied, elected)
}

async fn reconcile(
    object: Arc<DynamicObject>,
    context: Arc<Context>,
    kind: Arc<WatchedKind>,
) -> Result<Action, ReconcileError> {
    context.desired.sync().await;
    if !*context.leader.borrow() {
        return Ok(Action::await_change());
    }
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let api: Api<DynamicObject> =
        Api::namespaced_with(context.client.clone(), &namespace, &kind.resource);
    let finalizer_name = kind.finalizer();
    finalizer(&api, &finalizer_name, object, |event| async {
        match event {
            Finalizer::Apply(object) => {
                if binding::is_sink_binding(&kind) {
                    bind(&context, &object).await;
                }
                Ok(report(&api, &kind, &object, &context).await?)
            }
            // Once the desired state has left the object out, the apply has
            // removed what pilotlight made for it; a SinkBinding's
            // Deployments are unbound here.
            Finalizer::Cleanup(object) => {
                let key = object_key(&object);
                if !context.desired.applied_without(&kind, &key).await {
                    return Err(ReconcileError::NotYetRemoved(key));
                }
                if binding::is_sink_binding(&kind) {
                    let others = context
                        .desired
                        .control()
                        .sinks()
                        .workloads_in(&key.namespace);
                    binding::unbind(&context.client, &object, &others).await?;
                }
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| ReconcileError::Finalizer(Box::new(e)))
}

/// Binds a SinkBinding's Deployments as the last apply planned (nothing for
/// other subjects, or a sink that did not resolve), and records the outcome
/// for its status.
async fn bind(context: &Context, object: &DynamicObject) {
    let key = object_key(object);
    let sinks = context.desired.control().sinks();
    if let Some(planned) = sinks.workload(&key) {
        let earlier = sinks.workloads_before(&key);
        let status = binding::bind(&context.client, &planned, &earlier).await;
        sinks.set_bound(key, status);
    }
}

/// Writes the object's status, and says when to look again.
async fn report(
    api: &Api<DynamicObject>,
    kind: &WatchedKind,
    object: &DynamicObject,
    context: &Context,
) -> Result<Action, kube::Error> {
    let key = object_key(object);
    let status = match context.desired.refusal(kind, &key).await {
        Some(refused) => Status::not_ready(
            "InvalidSpec",
            match &refused.field {
                Some(field) => format!("field {field}: {}", refused.reason),
                None => refused.reason.clone(),
            },
        ),
        None => context
            .desired
            .control()
            .board()
            .status(&kind.resource.kind, &key)
            .await
            .unwrap_or_else(|| {
                Status::unknown(
                    "NotReconciled",
                    "pilotlight has not reconciled this object yet",
                )
            }),
    };
    let ready = status.is_ready();
    report::write_status(api, kind, object, status).await?;
    Ok(Action::requeue(if ready {
        RESYNC_READY
    } else {
        RESYNC_NOT_READY
    }))
}

fn error_policy(
    object: Arc<DynamicObject>,
    error: &ReconcileError,
    _context: Arc<Context>,
) -> Action {
    let kind = object.types.as_ref().map_or("object", |t| t.kind.as_str());
    tracing::warn!(kind, object = %object_key(&object), %error, "reconcile failed; retrying in 2 s");
    Action::requeue(Duration::from_secs(2))
}
