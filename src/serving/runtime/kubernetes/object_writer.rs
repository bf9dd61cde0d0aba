//! The one task per deployment that writes to the cluster: it creates the
//! Deployment and its Service, sets `spec.replicas` to what the autoscaler
//! last asked, and deletes both when the revision retires.
//!
//! [`Deployment::scale`](crate::serving::runtime::Deployment::scale) only
//! changes a watch channel, so a burst of scale calls while a write is in
//! flight collapses into one write of the latest count, and a failed write
//! (a 409, a 5xx, a lost connection) is retried with backoff from that
//! channel, so no value is lost.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;

use super::observed::Observed;
use super::workload::Objects;
use crate::backoff::Backoff;

/// The first wait before retrying a failed write; it doubles up to
/// [`BACKOFF_MAX`].
const BACKOFF_INITIAL: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Deleting a retired revision's objects gives up after this many tries;
/// its owner reference still lets Kubernetes delete them with the Service.
const DELETE_ATTEMPTS: u32 = 5;

/// What the deployment asks of its writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Wanted {
    /// None until the autoscaler first asks, so that a Deployment adopted
    /// from an earlier leader is not scaled before it has decided.
    pub replicas: Option<u32>,
    /// The revision is gone for good: delete its objects and stop.
    pub retiring: bool,
    /// How many times a request here found no instance
    /// ([`Deployment::wake`](crate::serving::runtime::Deployment::wake)):
    /// the only reason a follower writes.
    pub wakes: u64,
}

/// What the writer has done while leading; forgotten when leadership goes,
/// so that the next term checks the objects again.
#[derive(Debug, Default)]
struct Term {
    created: bool,
    /// The count this writer last wrote, and the Deployment's
    /// resourceVersion as the watch showed it then: until the watch moves,
    /// the count it still shows is not news, and the write is not repeated.
    written: Option<(u32, Option<String>)>,
}

/// Writes one revision's Deployment and Service to the cluster (create,
/// scale, delete); the only task that does, see the module comment.
pub(super) struct ObjectWriter {
    pub deployments: Api<Deployment>,
    pub services: Api<Service>,
    /// The owning objects' kind (Knative Services, or ContainerSources).
    pub owners: Api<DynamicObject>,
    pub objects: Objects,
    pub leader: watch::Receiver<bool>,
    pub wanted: watch::Receiver<Wanted>,
    pub observed: watch::Receiver<Observed>,
}

impl ObjectWriter {
    /// Runs until the revision retires or its deployment is dropped.
    pub(super) async fn run(mut self) {
        let mut term = Term::default();
        let mut wakes_handled = 0;
        let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
        loop {
            let wanted = *self.wanted.borrow_and_update();
            let leading = *self.leader.borrow_and_update();
            let current = self.observed.borrow_and_update().clone();
            if !leading {
                term = Term::default();
            }
            if wanted.retiring {
                if leading {
                    self.delete().await;
                }
                return;
            }
            let result = if leading {
                wakes_handled = wanted.wakes;
                self.lead(&mut term, wanted.replicas, &current).await
            } else {
                self.follow(&mut wakes_handled, wanted, &current).await
            };
            let retry = match result {
                Ok(()) => {
                    backoff.reset();
                    None
                }
                Err(error) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(revision = %self.objects.revision, error = %error, retry_in = ?wait, "cannot write the revision's Deployment");
                    Some(wait)
                }
            };
            let asked = match retry {
                // Only a new count (or retirement) cuts the backoff short.
                Some(wait) => tokio::select! {
                    changed = self.wanted.changed() => changed,
                    () = tokio::time::sleep(wait) => Ok(()),
                },
                None => tokio::select! {
                    changed = self.wanted.changed() => changed,
                    () = changed_or_never(&mut self.leader) => Ok(()),
                    () = changed_or_never(&mut self.observed) => Ok(()),
                },
            };
            if asked.is_err() {
                // The deployment is gone.
                return;
            }
        }
    }

    /// As leader: makes sure the objects exist, then writes the count
    /// unless the Deployment already has it. What counts is the Deployment
    /// as the watch shows it, not what this writer last wrote: a follower
    /// may have raised it from zero since, and the leader must bring it back
    /// down when its autoscaler says so.
    async fn lead(
        &self,
        term: &mut Term,
        replicas: Option<u32>,
        current: &Observed,
    ) -> Result<(), kube::Error> {
        if !term.created {
            let initial = replicas.unwrap_or(0);
            if self.create(initial).await? {
                term.written = Some((initial, current.resource_version.clone()));
            }
            self.delete_other_versions().await?;
            term.created = true;
        }
        let Some(replicas) = replicas else {
            return Ok(());
        };
        let unseen = term.written.as_ref() == Some(&(replicas, current.resource_version.clone()));
        if current.spec_replicas == Some(replicas) || unseen {
            return Ok(());
        }
        match self
            .patch_deployment(json!({"spec": {"replicas": replicas}}))
            .await
        {
            Ok(_) => {
                tracing::debug!(revision = %self.objects.revision, replicas, "scaled");
                term.written = Some((replicas, current.resource_version.clone()));
                Ok(())
            }
            Err(error) => {
                if is_status(&error, 404) {
                    // Deleted behind our back: create it again on the retry.
                    term.created = false;
                }
                Err(error)
            }
        }
    }

    /// As follower: wakes the Deployment from zero for each request that
    /// found no instance here ([`Wanted::wakes`]), and writes nothing else;
    /// the leader decides every other count. A wake that finds the
    /// Deployment above zero (the watch shows it) is done.
    async fn follow(
        &self,
        wakes_handled: &mut u64,
        wanted: Wanted,
        current: &Observed,
    ) -> Result<(), kube::Error> {
        if wanted.wakes == *wakes_handled {
            return Ok(());
        }
        if current.spec_replicas != Some(0) {
            // Already raised (by us or anyone), or not seen yet: nothing to
            // wake; a wake while the watch has not shown the Deployment
            // waits for it (the observed change runs this again).
            if current.spec_replicas.is_some() {
                *wakes_handled = wanted.wakes;
            }
            return Ok(());
        }
        if self
            .wake(wanted.replicas.unwrap_or(1).max(1), current)
            .await?
        {
            *wakes_handled = wanted.wakes;
        }
        Ok(())
    }

    /// Raises the Deployment from zero when a request here
    /// needs a pod; anything else is the leader's to decide. The patch names
    /// the resourceVersion that showed zero, so it fails with a conflict if
    /// anyone changed the Deployment since (the retry looks again). True if
    /// it raised the count.
    async fn wake(&self, replicas: u32, current: &Observed) -> Result<bool, kube::Error> {
        let Some(resource_version) = &current.resource_version else {
            return Ok(false);
        };
        if current.spec_replicas != Some(0) {
            return Ok(false);
        }
        let patch = json!({
            "metadata": {"resourceVersion": resource_version},
            "spec": {"replicas": replicas},
        });
        match self.patch_deployment(patch).await {
            Ok(_) => {
                tracing::info!(revision = %self.objects.revision, replicas, "woke the revision from zero as a follower");
                Ok(true)
            }
            Err(error) if is_status(&error, 404) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Merge-patches the revision's Deployment.
    async fn patch_deployment(&self, patch: serde_json::Value) -> Result<Deployment, kube::Error> {
        self.deployments
            .patch(
                &self.objects.deployment_name(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
    }

    /// Creates the Service and the Deployment with `replicas`; true if the
    /// Deployment is new. A revision's template never changes, so one that
    /// exists (made by an earlier leader) is kept as it is.
    async fn create(&self, replicas: u32) -> Result<bool, kube::Error> {
        let owner = self.owner_reference().await;
        if let Some(service) = &self.objects.service {
            let mut service = service.clone();
            service.metadata.owner_references = owner.clone().map(|o| vec![o]);
            match self.services.create(&PostParams::default(), &service).await {
                Ok(_) => {}
                Err(error) if is_status(&error, 409) => {}
                Err(error) => return Err(error),
            }
        }
        let mut deployment = self.objects.deployment.clone();
        deployment.metadata.owner_references = owner.map(|o| vec![o]);
        deployment.spec.replicas = Some(i32::try_from(replicas).unwrap_or(i32::MAX));
        match self
            .deployments
            .create(&PostParams::default(), &deployment)
            .await
        {
            Ok(_) => {
                tracing::info!(revision = %self.objects.revision, replicas, "created the revision's Deployment");
                Ok(true)
            }
            Err(error) if is_status(&error, 409) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// A daemon's Deployments of other versions of its template: deleted,
    /// once per term, so that exactly one version runs whoever deployed
    /// the others.
    async fn delete_other_versions(&self) -> Result<(), kube::Error> {
        let Some(selector) = &self.objects.versions else {
            return Ok(());
        };
        let current = self.objects.deployment_name();
        let listed = self
            .deployments
            .list(&ListParams::default().labels(selector))
            .await?;
        for name in listed.items.into_iter().filter_map(|d| d.metadata.name) {
            if name == current {
                continue;
            }
            match self
                .deployments
                .delete(&name, &DeleteParams::background())
                .await
            {
                Ok(_) => {
                    tracing::info!(revision = %self.objects.revision, stale = %name, "deleted the Deployment of another version of the template")
                }
                Err(error) if is_status(&error, 404) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// The Knative Service (or ContainerSource) as owner, so that deleting
    /// it deletes the objects; None (and a warning) if it cannot be read.
    async fn owner_reference(&self) -> Option<OwnerReference> {
        let name = &self.objects.service_name;
        let owner = self.objects.owner;
        match self.owners.get(name).await {
            Ok(service) => service.metadata.uid.map(|uid| OwnerReference {
                api_version: owner.api_version(),
                kind: owner.kind.into(),
                name: name.clone(),
                uid,
                controller: Some(true),
                // As Knative's controller references: the Service's foreground
                // deletion waits for the Deployment.
                block_owner_deletion: Some(true),
            }),
            Err(error) => {
                tracing::warn!(revision = %self.objects.revision, owner = %name, kind = owner.kind, error = %error, "cannot read the owner; creating the objects without an owner reference");
                None
            }
        }
    }

    /// Deletes the Deployment (its pods go in the background) and the Service.
    async fn delete(&self) {
        let params = DeleteParams::background();
        let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
        for attempt in 1..=DELETE_ATTEMPTS {
            let deployment = self
                .deployments
                .delete(&self.objects.deployment_name(), &params)
                .await;
            let service = match &self.objects.service {
                Some(_) => self
                    .services
                    .delete(&self.objects.private_service_name(), &params)
                    .await
                    .err(),
                None => None,
            };
            let failed = [deployment.err(), service]
                .into_iter()
                .flatten()
                .find(|e| !is_status(e, 404));
            let Some(error) = failed else {
                tracing::info!(revision = %self.objects.revision, "deleted the retired revision's Deployment and Service");
                return;
            };
            if attempt == DELETE_ATTEMPTS {
                tracing::error!(revision = %self.objects.revision, error = %error, "cannot delete the retired revision's Deployment and Service; Kubernetes deletes them with the Knative Service");
                return;
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

/// Resolves on the next change; never, once the sender is gone.
async fn changed_or_never<T>(receiver: &mut watch::Receiver<T>) {
    if receiver.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
