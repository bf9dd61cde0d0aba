//! One autoscaler per revision however many pilotlight replicas serve it.
//!
//! Every replica proxies requests, so every replica counts load; only the
//! leader's decisions are written to the Deployment. Knative's shape: the
//! activators report their request statistics to the autoscaler. Here each
//! follower sends the samples its scalers took (one per revision per second)
//! to the leader, found through the leader Lease (the holder writes its
//! address there), over the admin listener, with a bearer token all
//! replicas share. The leader adds the fresh samples of every other replica
//! to its own before its KPA sees them, so it decides on the sum.
//!
//! A replica that has just become leader has only its own history of the
//! last stable window: until one window has passed with every replica's
//! samples, it does not scale a revision below what it runs, so a new
//! leader never takes a revision to zero for lack of data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::stats::Sample;

/// Where a leader takes the other replicas' samples, on the admin listener.
pub(crate) const STATS_PATH: &str = "/internal/v1/autoscaler/stats";

/// How often a follower reports: as often as scalers sample.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A sample older than this no longer counts: its replica stopped reporting
/// (it went away, or it leads now).
const FRESH_FOR: Duration = Duration::from_secs(3);

/// What a follower sends the leader every second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StatsReport {
    /// The sending replica's identity in the leader election.
    pub replica: String,
    pub revisions: Vec<RevisionLoad>,
}

/// One revision's latest sample on the sending replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RevisionLoad {
    /// `namespace/name`.
    pub revision: String,
    /// Time-weighted average of requests in flight (and waiting).
    pub concurrency: f64,
    pub requests_per_second: f64,
}

/// Whether this replica's decisions are the ones written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// One replica (file mode): it sees all the load there is.
    Alone,
    Following,
    Leading {
        since: Instant,
    },
}

/// The load of every replica, as one process sees it.
pub(crate) struct ClusterStats {
    state: Mutex<State>,
}

impl std::fmt::Debug for ClusterStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("ClusterStats")
            .field("role", &state.role)
            .field("remote_revisions", &state.remote.len())
            .finish()
    }
}

struct State {
    role: Role,
    /// This replica's latest sample per revision, for the leader.
    local: HashMap<Arc<str>, (Sample, Instant)>,
    /// The other replicas' latest samples per revision, by replica.
    remote: HashMap<Arc<str>, HashMap<String, (Sample, Instant)>>,
}

impl ClusterStats {
    /// One replica: nothing to exchange.
    pub(crate) fn alone() -> Arc<Self> {
        Self::with_role(Role::Alone)
    }

    /// One of several replicas, following until told it leads.
    pub(crate) fn replicated() -> Arc<Self> {
        Self::with_role(Role::Following)
    }

    fn with_role(role: Role) -> Arc<Self> {
        Arc::new(ClusterStats {
            state: Mutex::new(State {
                role,
                local: HashMap::new(),
                remote: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the maps consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records whether this replica leads; a new term starts gathering.
    pub(crate) fn set_leading(&self, leading: bool, now: Instant) {
        let mut state = self.lock();
        state.role = match (state.role, leading) {
            (Role::Alone, _) => Role::Alone,
            (Role::Leading { since }, true) => Role::Leading { since },
            (_, true) => Role::Leading { since: now },
            (_, false) => Role::Following,
        };
        if !leading {
            // What others reported was for the previous leader's term.
            state.remote.clear();
        }
    }

    /// Keeps this replica's sample of `revision` (for the leader) and
    /// returns the load to decide on: this replica's plus, on the leader,
    /// every other replica's fresh sample.
    pub(crate) fn sample(&self, revision: &Arc<str>, local: Sample, now: Instant) -> Sample {
        let mut state = self.lock();
        if state.role == Role::Alone {
            return local;
        }
        state.local.insert(revision.clone(), (local, now));
        let Some(replicas) = state.remote.get_mut(revision) else {
            return local;
        };
        replicas.retain(|_, (_, at)| now.saturating_duration_since(*at) < FRESH_FOR);
        replicas.values().fold(local, |sum, (sample, _)| Sample {
            average_concurrency: sum.average_concurrency + sample.average_concurrency,
            requests_per_second: sum.requests_per_second + sample.requests_per_second,
        })
    }

    /// Whether the leader is still gathering every replica's load for a
    /// decision over `window` (the stable window): scale-downs wait until
    /// it has seen one whole window.
    pub(crate) fn gathering(&self, window: Duration, now: Instant) -> bool {
        match self.lock().role {
            Role::Leading { since } => now.saturating_duration_since(since) < window,
            Role::Alone | Role::Following => false,
        }
    }

    /// The report a follower sends: its fresh samples.
    pub(crate) fn report(&self, replica: &str, now: Instant) -> StatsReport {
        let mut state = self.lock();
        state
            .local
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < FRESH_FOR);
        let revisions = state
            .local
            .iter()
            .map(|(revision, (sample, _))| RevisionLoad {
                revision: revision.to_string(),
                concurrency: sample.average_concurrency,
                requests_per_second: sample.requests_per_second,
            })
            .collect();
        StatsReport {
            replica: replica.to_owned(),
            revisions,
        }
    }

    /// Takes a follower's report, on the leader. A report that reaches a
    /// replica that does not lead (the leader just changed) is dropped: its
    /// sender finds the new leader within a retry period.
    pub(crate) fn receive(&self, report: StatsReport, now: Instant) -> bool {
        let mut state = self.lock();
        if !matches!(state.role, Role::Leading { .. }) {
            return false;
        }
        for load in report.revisions {
            let sample = Sample {
                // A negative or non-finite figure is garbage, not load.
                average_concurrency: finite(load.concurrency),
                requests_per_second: finite(load.requests_per_second),
            };
            state
                .remote
                .entry(Arc::from(load.revision))
                .or_default()
                .insert(report.replica.clone(), (sample, now));
        }
        true
    }
}

fn finite(value: f64) -> f64 {
    if value.is_finite() && value > 0.0 {
        value
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(concurrency: f64) -> Sample {
        Sample {
            average_concurrency: concurrency,
            requests_per_second: concurrency * 2.0,
        }
    }

    fn report(replica: &str, revision: &str, concurrency: f64) -> StatsReport {
        StatsReport {
            replica: replica.into(),
            revisions: vec![RevisionLoad {
                revision: revision.into(),
                concurrency,
                requests_per_second: concurrency * 2.0,
            }],
        }
    }

    #[test]
    fn the_leader_decides_on_the_sum_of_every_replicas_fresh_load() {
        let now = Instant::now();
        let cluster = ClusterStats::replicated();
        let revision: Arc<str> = Arc::from("default/hello-00001");
        cluster.set_leading(true, now);
        assert!(cluster.receive(report("b", "default/hello-00001", 2.0), now));
        assert!(cluster.receive(report("c", "default/hello-00001", 0.5), now));
        assert!(cluster.receive(report("c", "default/other", 9.0), now));
        assert_eq!(cluster.sample(&revision, load(1.0), now), load(3.5));
        // A replica that stopped reporting stops counting.
        let later = now + FRESH_FOR;
        assert!(cluster.receive(report("b", "default/hello-00001", 1.0), later));
        assert_eq!(cluster.sample(&revision, load(1.0), later), load(2.0));
    }

    #[test]
    fn a_follower_reports_its_fresh_samples_and_drops_what_reaches_it() {
        let now = Instant::now();
        let cluster = ClusterStats::replicated();
        let revision: Arc<str> = Arc::from("default/hello-00001");
        assert_eq!(cluster.sample(&revision, load(1.5), now), load(1.5));
        assert_eq!(
            cluster.report("b", now),
            report("b", "default/hello-00001", 1.5)
        );
        assert!(!cluster.receive(report("c", "default/hello-00001", 1.0), now));
        assert_eq!(cluster.sample(&revision, load(1.5), now), load(1.5));
        // A revision whose scaler stopped sampling leaves the report.
        assert!(cluster.report("b", now + FRESH_FOR).revisions.is_empty());
    }

    #[test]
    fn a_new_leader_gathers_for_one_stable_window_before_scaling_down() {
        let now = Instant::now();
        let window = Duration::from_secs(60);
        let cluster = ClusterStats::replicated();
        assert!(!cluster.gathering(window, now));
        cluster.set_leading(true, now);
        assert!(cluster.gathering(window, now + Duration::from_secs(59)));
        // Renewing the lease is the same term.
        cluster.set_leading(true, now + Duration::from_secs(30));
        assert!(!cluster.gathering(window, now + window));
        cluster.set_leading(false, now + window);
        cluster.set_leading(true, now + window * 2);
        assert!(cluster.gathering(window, now + window * 2));
        // One replica sees everything from the start.
        assert!(!ClusterStats::alone().gathering(window, now));
    }

    #[test]
    fn garbage_figures_count_as_no_load() {
        let now = Instant::now();
        let cluster = ClusterStats::replicated();
        cluster.set_leading(true, now);
        let mut bad = report("b", "default/r", f64::NAN);
        bad.revisions[0].requests_per_second = -4.0;
        cluster.receive(bad, now);
        assert_eq!(
            cluster.sample(&Arc::from("default/r"), load(1.0), now),
            load(1.0)
        );
    }
}
