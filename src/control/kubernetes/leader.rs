//! Leader election with a coordination.k8s.io Lease, so that several
//! replicas can run: every replica serves events and requests, and only the
//! leader writes status, holds finalizers and scales Deployments.
//!
//! The rules are client-go's: a replica takes the Lease when it is free or
//! when its holder has not renewed it for `leaseDurationSeconds`, measured on
//! this replica's own clock from when it last saw the record change (so
//! clocks need not agree); every write carries the resourceVersion read, so
//! of two replicas racing for it one gets 409 Conflict and stays a follower.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;

/// How this replica takes part in the election.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// Unique per replica: the pod name, and a random suffix.
    pub identity: String,
    /// How long a holder that stopped renewing keeps the Lease.
    pub duration: Duration,
    /// How often the holder renews, and others look.
    pub retry_period: Duration,
    /// Where the other replicas reach this one's admin listener, which the
    /// holder writes on the Lease so that followers find where to send
    /// their autoscaling samples. None: followers keep theirs.
    pub peer_url: Option<String>,
}

/// The Lease annotation that holds the leader's [`LeaseSettings::peer_url`].
pub const PEER_URL_ANNOTATION: &str = "pilotlight.dev/peer-url";

impl LeaseSettings {
    /// client-go's defaults: a 15 s lease, looked at every 2 s.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseSettings {
            namespace: namespace.into(),
            name: "pilotlight-controller".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
            peer_url: None,
        }
    }
}

/// The Lease record as last seen, and when this replica first saw it.
struct Observed {
    holder: Option<String>,
    renew_time: Option<i64>,
    at: Instant,
}

/// One replica's side of the election.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<Observed>,
    /// When this replica last renewed successfully.
    renewed: Option<Instant>,
    /// The current leader's peer URL, as the Lease says.
    leader_url: watch::Sender<Option<String>>,
}

impl LeaderElector {
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
            renewed: None,
            leader_url: watch::channel(None).0,
        }
    }

    /// The leader's peer URL as each round reads it from the Lease: None
    /// while nobody holds it (or the holder gave none).
    pub fn leader_url(&self) -> watch::Receiver<Option<String>> {
        self.leader_url.subscribe()
    }

    /// Publishes the holder's peer URL when it changed.
    fn publish_leader_url(&self, lease: &Lease, holder_alive: bool) {
        let url = holder_alive
            .then(|| {
                lease
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(PEER_URL_ANNOTATION).cloned())
            })
            .flatten();
        self.leader_url.send_if_modified(|was| {
            let changed = *was != url;
            *was = url;
            changed
        });
    }

    /// Sets (or, without one, removes) this replica's peer URL on a Lease it
    /// is about to write as holder.
    fn annotate(&self, metadata: &mut ObjectMeta) {
        let annotations = metadata.annotations.get_or_insert_with(Default::default);
        match &self.settings.peer_url {
            Some(url) => {
                annotations.insert(PEER_URL_ANNOTATION.to_owned(), url.clone());
            }
            None => {
                annotations.remove(PEER_URL_ANNOTATION);
            }
        }
    }

    /// Runs the election until `stop` turns true, publishing whether this
    /// replica leads; on stop, a leader gives the Lease up so that another
    /// replica takes over at once rather than after the lease duration. The
    /// task ends once the Lease is given up: await it before exiting.
    pub(crate) fn spawn(
        mut self,
        mut stop: watch::Receiver<bool>,
    ) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
        let (leading, receiver) = watch::channel(false);
        let election = tokio::spawn(async move {
            loop {
                let leads = match self.try_acquire_or_renew().await {
                    Ok(leads) => leads,
                    Err(e) => {
                        tracing::warn!(lease = %self.settings.name, error = %e, "cannot read or write the leader Lease");
                        // A leader that cannot renew steps down before its
                        // Lease can have expired for the others.
                        self.renewed.is_some_and(|r| {
                            r.elapsed()
                                < self
                                    .settings
                                    .duration
                                    .saturating_sub(self.settings.retry_period)
                        })
                    }
                };
                leading.send_if_modified(|was| {
                    if *was != leads {
                        tracing::info!(identity = %self.settings.identity, leads, "leader election");
                        *was = leads;
                        return true;
                    }
                    false
                });
                tokio::select! {
                    () = tokio::time::sleep(self.settings.retry_period) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            if *leading.borrow() {
                leading.send_replace(false);
                if let Err(e) = self.release().await {
                    tracing::warn!(error = %e, "cannot release the leader Lease");
                }
            }
        });
        (receiver, election)
    }

    /// One round: takes or renews the Lease if this replica may. Returns
    /// whether this replica holds it now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return self.create().await;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        self.observe(spec);
        let mine = spec.holder_identity.as_deref() == Some(self.settings.identity.as_str());
        if !mine && !self.expired(spec) {
            self.renewed = None;
            self.publish_leader_url(&lease, true);
            return Ok(false);
        }
        let now = now();
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.settings.identity.clone());
        spec.lease_duration_seconds = Some(self.duration_seconds());
        spec.renew_time = Some(now);
        self.annotate(&mut lease.metadata);
        let leads = self
            .write(
                |api, name| async move { api.replace(&name, &PostParams::default(), &lease).await },
            )
            .await?;
        self.publish_own_url(leads);
        Ok(leads)
    }

    /// After a write: this replica's URL when it holds the Lease, else
    /// unknown until the next round reads who does.
    fn publish_own_url(&self, leads: bool) {
        let url = leads.then(|| self.settings.peer_url.clone()).flatten();
        self.leader_url.send_if_modified(|was| {
            let changed = *was != url;
            *was = url;
            changed
        });
    }

    /// Gives the Lease up, keeping the record, as client-go's ReleaseOnCancel.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        if let Some(annotations) = lease.metadata.annotations.as_mut() {
            annotations.remove(PEER_URL_ANNOTATION);
        }
        self.api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await?;
        self.renewed = None;
        Ok(())
    }

    async fn create(&mut self) -> Result<bool, kube::Error> {
        let now = now();
        let mut metadata = ObjectMeta {
            name: Some(self.settings.name.clone()),
            namespace: Some(self.settings.namespace.clone()),
            ..ObjectMeta::default()
        };
        self.annotate(&mut metadata);
        let lease = Lease {
            metadata,
            spec: Some(LeaseSpec {
                holder_identity: Some(self.settings.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        let leads = self
            .write(|api, _| async move { api.create(&PostParams::default(), &lease).await })
            .await?;
        self.publish_own_url(leads);
        Ok(leads)
    }

    /// Runs a write of the Lease: 409 means another replica wrote first.
    async fn write<F, Fut>(&mut self, write: F) -> Result<bool, kube::Error>
    where
        F: FnOnce(Api<Lease>, String) -> Fut,
        Fut: Future<Output = Result<Lease, kube::Error>>,
    {
        match write(self.api.clone(), self.settings.name.clone()).await {
            Ok(_) => {
                self.renewed = Some(Instant::now());
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                self.renewed = None;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn observe(&mut self, spec: &LeaseSpec) {
        let renew_time = spec.renew_time.as_ref().map(|t| t.0.as_microsecond());
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|o| o.holder != spec.holder_identity || o.renew_time != renew_time);
        if changed {
            self.observed = Some(Observed {
                holder: spec.holder_identity.clone(),
                renew_time,
                at: Instant::now(),
            });
        }
    }

    /// Free, or not renewed for its duration since this replica saw it change.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
            return true;
        }
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.settings.duration, Duration::from_secs);
        self.observed
            .as_ref()
            .is_some_and(|o| o.at.elapsed() >= duration)
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.settings.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

fn now() -> MicroTime {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    MicroTime(k8s_openapi::jiff::Timestamp::from_microsecond(micros).unwrap_or_default())
}
