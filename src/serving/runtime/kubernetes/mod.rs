//! The Kubernetes runtime: a revision runs as an apps/v1 Deployment
//! (`{revision}-deployment`) and is reached through the EndpointSlices of a
//! headless Service (`{revision}-private`) that selects its pods, both in the
//! Knative Service's namespace and owned by it.
//!
//! Each deployment has three tasks: the `writer` creates the objects,
//! writes the replica count the autoscaler asks for and deletes the objects
//! when the revision retires; `observed` watches the Deployment for status;
//! `endpoints` watches the EndpointSlices and publishes the ready pods.
//!
//! Several pilotlight replicas may run with one leader. All of them serve
//! requests, so all deploy every revision, but only the leader creates,
//! scales and deletes; a follower only wakes a Deployment at zero, so that a
//! request it holds for a revision at zero gets a pod. When pilotlight exits,
//! Deployments keep running for the next leader.

mod endpoints;
mod object_writer;
mod observed;
mod watch_error;
mod workload;

use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::apps::v1::Deployment as KubeDeployment;
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{CannotRun, Deployment, DeploymentStatus, Endpoint, Runtime, Workload};
use object_writer::{ObjectWriter, Wanted};
use observed::Observed;

/// Runs workloads as Deployments in the cluster `client` talks to.
#[derive(Clone)]
pub struct KubernetesRuntime {
    client: kube::Client,
    leader: watch::Receiver<bool>,
}

impl KubernetesRuntime {
    /// `leader` is true while this pilotlight holds the leader Lease; only
    /// then does it create, scale down and delete Deployments.
    pub fn new(client: kube::Client, leader: watch::Receiver<bool>) -> Self {
        KubernetesRuntime { client, leader }
    }
}

#[async_trait::async_trait]
impl Runtime for KubernetesRuntime {
    fn name_for(&self, _workload: &Workload) -> &'static str {
        "kubernetes"
    }

    fn deploy(&self, workload: Workload) -> Result<Arc<dyn Deployment>, CannotRun> {
        let objects = workload::build(&workload)?;
        // The tasks need the async runtime; the control plane always has it.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            CannotRun(
                "the Kubernetes runtime can only deploy from inside pilotlight's async runtime"
                    .into(),
            )
        })?;
        Ok(Arc::new(KubernetesDeployment::start(
            &runtime,
            self.client.clone(),
            self.leader.clone(),
            objects,
        )))
    }
}

/// A revision's Deployment as the autoscaler and the activator see it.
/// Dropping it stops its tasks and leaves the cluster's objects as they are.
pub(crate) struct KubernetesDeployment {
    wanted: watch::Sender<Wanted>,
    endpoints: watch::Receiver<Arc<[Endpoint]>>,
    observed: watch::Receiver<Observed>,
    /// Taken by `retire`, which waits for it to delete the objects.
    writer: Mutex<Option<JoinHandle<()>>>,
    watchers: Vec<JoinHandle<()>>,
}

impl KubernetesDeployment {
    fn start(
        runtime: &tokio::runtime::Handle,
        client: kube::Client,
        leader: watch::Receiver<bool>,
        objects: workload::Objects,
    ) -> Self {
        let namespace = objects.namespace.clone();
        let (wanted, wanted_rx) = watch::channel(Wanted::default());
        let (observed_tx, observed) = watch::channel(Observed::default());
        let (endpoints_tx, endpoints) = watch::channel(Arc::from(Vec::new()));
        let deployments: Api<KubeDeployment> = Api::namespaced(client.clone(), &namespace);
        let mut watchers = vec![runtime.spawn(observed::observe(
            deployments.clone(),
            objects.deployment_name(),
            observed_tx,
        ))];
        // A daemon has no Service, so no endpoints: nothing is sent to it.
        if objects.service.is_some() {
            watchers.push(runtime.spawn(endpoints::publish(
                Api::<EndpointSlice>::namespaced(client.clone(), &namespace),
                objects.private_service_name(),
                endpoints_tx,
            )));
        }
        let owner = objects.owner;
        let owners: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &namespace,
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(owner.group, owner.version, owner.kind),
                owner.plural,
            ),
        );
        let writer = ObjectWriter {
            deployments,
            services: Api::<KubeService>::namespaced(client, &namespace),
            owners,
            objects,
            leader,
            wanted: wanted_rx,
            observed: observed.clone(),
        };
        KubernetesDeployment {
            wanted,
            endpoints,
            observed,
            writer: Mutex::new(Some(runtime.spawn(writer.run()))),
            watchers,
        }
    }

    fn stop_tasks(&self) {
        for task in &self.watchers {
            task.abort();
        }
        if let Some(writer) = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            writer.abort();
        }
    }
}

impl Drop for KubernetesDeployment {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

#[async_trait::async_trait]
impl Deployment for KubernetesDeployment {
    fn scale(&self, replicas: u32) {
        self.wanted.send_if_modified(|wanted| {
            let changed = wanted.replicas != Some(replicas);
            wanted.replicas = Some(replicas);
            changed
        });
    }

    fn wake(&self, replicas: u32) {
        self.wanted.send_modify(|wanted| {
            wanted.replicas = Some(replicas);
            wanted.wakes += 1;
        });
    }

    fn endpoints(&self) -> watch::Receiver<Arc<[Endpoint]>> {
        self.endpoints.clone()
    }

    fn status(&self) -> DeploymentStatus {
        let observed = self.observed.borrow();
        DeploymentStatus {
            desired: self.wanted.borrow().replicas.unwrap_or(0),
            spec_replicas: observed.spec_replicas,
            actual: observed.replicas,
            ready: observed.ready,
            // Restarts are counted per pod by the kubelet; the Deployment's
            // conditions (ReplicaFailure, ProgressDeadlineExceeded) come
            // through `last_failure` instead.
            restarts: 0,
            last_failure: observed.failure.clone(),
            ..DeploymentStatus::default()
        }
    }

    async fn shutdown(&self) {
        self.stop_tasks();
    }

    async fn retire(&self) {
        self.wanted.send_modify(|wanted| wanted.retiring = true);
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            // The writer deletes the objects (as leader) and returns.
            let _ = writer.await;
        }
        self.stop_tasks();
    }
}
