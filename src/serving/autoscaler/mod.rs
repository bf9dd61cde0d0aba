//! Knative's KPA autoscaler: how many instances each revision runs.
//!
//! - [`stats`]: the proxy counts requests per revision (including those
//!   waiting in the activator); sampled as exact time-weighted concurrency,
//!   as Knative's queue-proxy reports it.
//! - [`kpa`]: the pure decider: stable and panic windows, panic mode, rate
//!   limits, scale-down delay, min/max/initial/activation scale and the
//!   scale-to-zero timing, following Knative's `pkg/autoscaler/scaling` and
//!   `pkg/reconciler/autoscaling/kpa`.
//! - [`scaler`]: the per-revision loop that samples every second, decides
//!   every tick and scales the [`Deployment`](crate::serving::runtime::Deployment);
//!   the activator pokes it to leave zero at once.
//! - [`peers`]: with several pilotlight replicas, the followers' samples go
//!   to the leader, whose KPA decides on the sum.
//!
//! The settings it runs with (`config-autoscaler` defaults and the
//! `autoscaling.knative.dev/*` annotations) are Knative's API, in
//! `api::autoscaling`.

mod kpa;
pub(crate) mod peers;
mod scaler;
mod stats;

pub(crate) use peers::ClusterStats;
pub(crate) use scaler::{Scaler, ScalerHandle};
pub(crate) use stats::RevisionStats;
