//! The per-revision autoscaling loop: samples the proxy's counts every second
//! (Knative's queue-proxy reports per second too), lets the [`Kpa`] decide
//! every tick (2 s by default, Knative's tick interval) and sets the
//! deployment's replica count when the decision changes.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval_at};

use super::kpa::{Decision, Kpa};
use super::peers::ClusterStats;
use super::stats::RevisionStats;
use crate::api::autoscaling::RevisionScaling;
use crate::serving::runtime::{Deployment, DeploymentStatus};

const SAMPLE_EVERY: Duration = Duration::from_secs(1);
const DESIRED_GAUGE: &str = "pilotlight_revision_desired_instances";
const PANIC_GAUGE: &str = "pilotlight_revision_panic";

/// What the scaler last decided, for the revision's status.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScalerSnapshot {
    pub desired: u32,
    pub panic: bool,
    /// The scaling metric averaged over the stable window.
    pub stable_concurrency: f64,
}

/// Starts a revision's autoscaling loop.
pub(crate) struct Scaler;

impl Scaler {
    /// Spawns the loop on the current tokio runtime and scales `deployment`
    /// to the initial scale at once. `revision` is `namespace/name`, for
    /// metric labels and logs. `reachable` says whether traffic is routed to
    /// the revision (min-scale applies only then). `cluster` adds the load
    /// other pilotlight replicas count, where there are several.
    pub(crate) fn spawn(
        revision: impl Into<Arc<str>>,
        scaling: RevisionScaling,
        stats: Arc<RevisionStats>,
        deployment: Arc<dyn Deployment>,
        reachable: watch::Receiver<bool>,
        cluster: Arc<ClusterStats>,
    ) -> ScalerHandle {
        let now = Instant::now();
        let tick = scaling.tick_interval;
        let stable_window = scaling.stable_window;
        let kpa = Kpa::new(scaling, now);
        let initial = kpa.desired();
        let shared = Arc::new(Shared {
            revision: revision.into(),
            deployment,
            cluster,
            stable_window,
            state: Mutex::new(State {
                kpa,
                applied: 0,
                last_spec: None,
            }),
        });
        {
            let mut state = shared.lock();
            shared.apply(&mut state, initial, "initial-scale");
            shared.publish(&state);
        }
        let task = tokio::spawn(run(shared.clone(), stats, reachable, tick));
        ScalerHandle { shared, task }
    }
}

/// Owns a running scaler; dropping it (or [`ScalerHandle::stop`]) ends the loop.
pub(crate) struct ScalerHandle {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl ScalerHandle {
    /// A request is waiting for an instance. If the deployment has none (none
    /// desired, none ready), scales it up right here, synchronously, so the
    /// cold start begins without waiting for the next tick.
    pub(crate) fn poke(&self) {
        let mut state = self.shared.lock();
        // Read under the lock so concurrent pokes cannot both start instances:
        // the second sees the first one's scale.
        let status = self.shared.deployment.status();
        // Where others scale the deployment too, its own count says whether
        // it is at zero, not what this scaler last asked.
        if status.spec_replicas.unwrap_or(status.desired) > 0 || status.ready > 0 {
            return;
        }
        // The deployment says zero whatever we last asked, so ask again.
        let n = state.kpa.poke(Instant::now());
        self.shared.deployment.wake(n);
        state.applied = n;
        self.shared.publish(&state);
    }

    pub(crate) fn snapshot(&self) -> ScalerSnapshot {
        let state = self.shared.lock();
        let last = state.kpa.last_decision();
        ScalerSnapshot {
            desired: state.kpa.desired(),
            panic: last.panic,
            stable_concurrency: last.stable_concurrency,
        }
    }

    /// Ends the loop; the deployment is not scaled again. Pokes after this
    /// still scale (a request already waiting at zero), so callers stop the
    /// scaler together with the deployment.
    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for ScalerHandle {
    fn drop(&mut self) {
        // The loop holds nothing that needs cleaning up, so aborting is safe.
        self.task.abort();
    }
}

struct Shared {
    revision: Arc<str>,
    deployment: Arc<dyn Deployment>,
    cluster: Arc<ClusterStats>,
    stable_window: Duration,
    state: Mutex<State>,
}

struct State {
    kpa: Kpa,
    /// The replica count last given to the deployment.
    applied: u32,
    /// The deployment's own count at the previous tick, where others can
    /// change it ([`DeploymentStatus::spec_replicas`]).
    last_spec: Option<u32>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent, so a panic elsewhere
        // while holding the lock does not make it unusable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives the deployment `n`. Callers skip unchanged counts.
    /// `Deployment::scale` returns at once, so calling it under the lock is
    /// cheap and keeps scale calls in decision order.
    fn apply(&self, state: &mut State, n: u32, reason: &str) {
        let last = state.kpa.last_decision();
        tracing::debug!(
            revision = %self.revision,
            from = state.applied,
            to = n,
            reason,
            stable = last.stable_concurrency,
            panic_window = last.panic_concurrency,
            panic = last.panic,
            "scaling revision"
        );
        self.deployment.scale(n);
        state.applied = n;
    }

    fn publish(&self, state: &State) {
        let labels = [("revision", self.revision.to_string())];
        metrics::gauge!(DESIRED_GAUGE, &labels).set(f64::from(state.applied));
        let panic = if state.kpa.last_decision().panic {
            1.0
        } else {
            0.0
        };
        metrics::gauge!(PANIC_GAUGE, &labels).set(panic);
    }

    fn tick(&self, now: Instant, status: &DeploymentStatus, reachable: bool) {
        let mut state = self.lock();
        let spec = status.spec_replicas;
        let moved = spec.is_some() && spec != state.last_spec;
        // Another replica woke the deployment from zero for a request it
        // holds: that is a poke, as if the request had come here (Knative's
        // activators tell the autoscaler the same), so the decision starts
        // from it instead of scaling straight back to zero.
        if moved && state.last_spec == Some(0) && state.applied == 0 {
            let n = state.kpa.poke(now);
            state.applied = n;
            tracing::debug!(revision = %self.revision, to = n, "another replica woke the revision");
        }
        state.last_spec = spec;
        let Decision {
            mut desired,
            mut reason,
            ..
        } = state.kpa.decide(now, status.ready, reachable);
        let running = state.applied.max(spec.unwrap_or(0));
        if desired < running && self.cluster.gathering(self.stable_window, now) {
            desired = running;
            reason = "new leader: gathering every replica's load for one stable window";
        }
        // Scale on a new decision, and also when someone else moved the
        // deployment off it (a `kubectl scale`, a wake the decision
        // outlived).
        if desired != state.applied || (moved && spec != Some(desired)) {
            self.apply(&mut state, desired, reason);
        }
        self.publish(&state);
    }
}

async fn run(
    shared: Arc<Shared>,
    stats: Arc<RevisionStats>,
    reachable: watch::Receiver<bool>,
    tick: Duration,
) {
    let start = Instant::now();
    let mut sampling = interval_at(start + SAMPLE_EVERY, SAMPLE_EVERY);
    let mut ticks = interval_at(start + tick, tick);
    // After a stall, carry on at the normal pace rather than bursting:
    // samples are exact integrals whatever their spacing.
    sampling.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // A sample due at the same instant as a tick goes in first, so
            // the decision sees it.
            biased;
            _ = sampling.tick() => {
                let now = Instant::now();
                let sample = stats.take_sample(now);
                let sample = shared.cluster.sample(&shared.revision, sample, now);
                shared.lock().kpa.record(now, sample);
            }
            _ = ticks.tick() => {
                let now = Instant::now();
                let status = shared.deployment.status();
                // A dropped sender leaves the last value, which is still the
                // best knowledge of reachability.
                let reachable = *reachable.borrow();
                shared.tick(now, &status, reachable);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::autoscaling::AutoscalerDefaults;
    use crate::serving::runtime::{DeploymentStatus, Endpoint};

    /// Records scale calls; instances are ready as soon as asked for.
    #[derive(Default)]
    struct FakeDeployment {
        calls: Mutex<Vec<u32>>,
    }

    impl FakeDeployment {
        fn calls(&self) -> Vec<u32> {
            self.calls.lock().expect("not poisoned").clone()
        }
    }

    #[async_trait::async_trait]
    impl Deployment for FakeDeployment {
        fn scale(&self, replicas: u32) {
            self.calls.lock().expect("not poisoned").push(replicas);
        }
        fn endpoints(&self) -> watch::Receiver<Arc<[Endpoint]>> {
            watch::channel(Arc::from(Vec::new())).1
        }
        fn status(&self) -> DeploymentStatus {
            let n = self.calls().last().copied().unwrap_or(0);
            DeploymentStatus {
                desired: n,
                actual: n,
                ready: n,
                ..DeploymentStatus::default()
            }
        }
        async fn shutdown(&self) {}
        async fn retire(&self) {}
    }

    fn start(
        defaults: AutoscalerDefaults,
        pairs: &[(&str, &str)],
    ) -> (ScalerHandle, Arc<RevisionStats>, Arc<FakeDeployment>) {
        let annotations: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("autoscaling.knative.dev/{k}"), v.to_string()))
            .collect();
        let scaling = RevisionScaling::resolve(&annotations, &defaults, 0).expect("valid");
        let stats = Arc::new(RevisionStats::new(Instant::now()));
        let deployment = Arc::new(FakeDeployment::default());
        let handle = Scaler::spawn(
            "default/hello-00001",
            scaling,
            stats.clone(),
            deployment.clone(),
            watch::channel(true).1,
            ClusterStats::alone(),
        );
        (handle, stats, deployment)
    }

    async fn sleep_secs(secs: f64) {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn burst_of_load_scales_up() {
        let (handle, stats, deployment) = start(AutoscalerDefaults::default(), &[]);
        assert_eq!(deployment.calls(), vec![1]);
        for _ in 0..350 {
            stats.request_started();
        }
        sleep_secs(2.1).await;
        // 350 in flight at 70 per instance.
        assert_eq!(deployment.calls(), vec![1, 5]);
        let snap = handle.snapshot();
        assert_eq!(snap.desired, 5);
        assert!(snap.panic, "5 wanted on 1 ready is a panic");
        assert!((snap.stable_concurrency - 350.0).abs() < 1e-6, "{snap:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_revision_reaches_zero_after_window_and_grace() {
        let (_handle, stats, deployment) = start(AutoscalerDefaults::default(), &[]);
        for _ in 0..70 {
            stats.request_started();
        }
        sleep_secs(10.0).await;
        for _ in 0..70 {
            stats.request_finished();
        }
        // Load in the first 10 s leaves the 60 s window at t=70; the grace
        // period then runs to t=100.
        sleep_secs(89.5).await;
        assert_eq!(deployment.calls(), vec![1]);
        sleep_secs(1.0).await;
        assert_eq!(deployment.calls(), vec![1, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn poke_at_zero_scales_at_once_and_only_once() {
        let defaults = AutoscalerDefaults {
            allow_zero_initial_scale: true,
            ..AutoscalerDefaults::default()
        };
        let (handle, stats, deployment) = start(defaults, &[("initial-scale", "0")]);
        assert_eq!(deployment.calls(), vec![0]);
        stats.request_started();
        // No await between: the scale happens inside poke.
        handle.poke();
        assert_eq!(deployment.calls(), vec![0, 1]);
        handle.poke();
        assert_eq!(deployment.calls(), vec![0, 1]);
        assert_eq!(handle.snapshot().desired, 1);

        // Stopping ends the loop: no further decisions.
        handle.stop();
        for _ in 0..500 {
            stats.request_started();
        }
        sleep_secs(10.0).await;
        assert_eq!(deployment.calls(), vec![0, 1]);
    }
}
