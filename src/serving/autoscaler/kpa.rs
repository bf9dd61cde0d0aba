//! The KPA decider: how many instances a revision needs. Pure: no I/O, time is
//! passed in, so every rule is testable with constructed instants.
//!
//! Where the rules come from in Knative Serving:
//! - windows of per-second buckets averaged over the window:
//!   `pkg/autoscaler/aggregation` (`TimedFloat64Buckets`);
//! - stable/panic desired counts, panic mode, rate limits, activation-scale,
//!   scale-down-delay and excess burst capacity: `pkg/autoscaler/scaling/autoscaler.go`;
//! - min/max/initial-scale bounds and the scale-to-zero timing (active for a
//!   stable window, then the grace period or the last-pod retention period):
//!   `pkg/reconciler/autoscaling/kpa/scaler.go`.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::stats::Sample;
use crate::api::autoscaling::{Metric, RevisionScaling};

/// Windows are made of one-second buckets, as Knative's.
const BUCKET: Duration = Duration::from_secs(1);

/// One decision of the KPA.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decision {
    /// Instances the revision should have.
    pub desired: u32,
    /// True while in panic mode.
    pub panic: bool,
    /// The metric (concurrency, or requests per second for `rps`) averaged
    /// over the stable window, for the whole revision.
    pub stable_concurrency: f64,
    /// The same over the panic window.
    pub panic_concurrency: f64,
    /// Spare capacity beyond the target burst capacity; negative means the
    /// activator should stay in the request path. -1 when target burst
    /// capacity is -1 (activator always in path), 0 when it is 0.
    pub excess_burst_capacity: f64,
    /// Which rule set `desired`, for logs.
    pub reason: &'static str,
}

/// What the two windows ask for, rate limits applied; see [`Kpa::decide`].
struct Asked {
    stable_pods: u32,
    panic_pods: u32,
    /// Instances the panic window wants per ready instance (at least one).
    panic_ratio: f64,
}

/// An instance count and the rule that set it.
type Want = (u32, &'static str);

/// Averages of per-second buckets over a sliding window.
#[derive(Debug)]
struct Window {
    /// (sum, count) per bucket, so two samples in one second average.
    buckets: Vec<(f64, u32)>,
    first: Option<u64>,
    last: u64,
}

impl Window {
    fn new(window: Duration) -> Self {
        let n = window.as_secs_f64() / BUCKET.as_secs_f64();
        let n = (n.ceil() as usize).max(1);
        Window {
            buckets: vec![(0.0, 0); n],
            first: None,
            last: 0,
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    fn slot(&mut self, index: u64) -> &mut (f64, u32) {
        let n = self.buckets.len();
        &mut self.buckets[(index % n as u64) as usize]
    }

    fn record(&mut self, index: u64, value: f64) {
        let n = self.len();
        match self.first {
            Some(_) if index + n <= self.last => return, // older than the window
            Some(_) if index > self.last && index - self.last < n => {
                for i in self.last + 1..=index {
                    *self.slot(i) = (0.0, 0);
                }
                self.last = index;
            }
            Some(_) if index > self.last => self.restart(index),
            Some(_) => {}
            None => self.restart(index),
        }
        let slot = self.slot(index);
        slot.0 += value;
        slot.1 += 1;
    }

    fn restart(&mut self, index: u64) {
        self.buckets.fill((0.0, 0));
        self.first = Some(index);
        self.last = index;
    }

    /// The average over the window ending at `now`. Until a whole window of
    /// data exists it averages over the buckets since the first sample, as
    /// Knative does, so a new revision reacts to its first seconds of load.
    fn average(&self, now: u64) -> f64 {
        let Some(first) = self.first else {
            return 0.0;
        };
        let n = self.len();
        if now >= self.last + n {
            return 0.0;
        }
        // Only buckets still in the ring, and in the window ending at `now`.
        let start = first
            .max((now + 1).saturating_sub(n))
            .max((self.last + 1).saturating_sub(n));
        let end = self.last.min(now);
        if start > end {
            return 0.0;
        }
        let sum: f64 = (start..=end)
            .map(|i| {
                let (sum, count) = self.buckets[(i % n) as usize];
                if count == 0 {
                    0.0
                } else {
                    sum / f64::from(count)
                }
            })
            .sum();
        sum / (now.max(end) - start + 1) as f64
    }
}

/// The KPA state for one revision.
#[derive(Debug)]
pub(crate) struct Kpa {
    scaling: RevisionScaling,
    origin: Instant,
    stable: Window,
    panic: Window,
    /// Last time the panic condition held while panicking (Knative's panicTime).
    panic_since: Option<Instant>,
    /// The most instances asked for in this panic.
    max_panic_pods: u32,
    /// Raw decisions over the scale-down delay.
    delayed: VecDeque<(Instant, u32)>,
    desired: u32,
    /// Whether initial-scale was reached (or given up on).
    initialized: bool,
    /// When the revision last went from 0 to some instances.
    active_since: Option<Instant>,
    /// When the revision, active long enough, first wanted 0 instances.
    inactive_since: Option<Instant>,
    last: Decision,
}

impl Kpa {
    pub(crate) fn new(scaling: RevisionScaling, now: Instant) -> Self {
        // Knative creates a revision with max(min-scale, initial-scale).
        let mut desired = scaling.initial_scale.max(scaling.min_scale);
        if scaling.max_scale > 0 {
            desired = desired.min(scaling.max_scale);
        }
        Kpa {
            stable: Window::new(scaling.stable_window),
            panic: Window::new(scaling.panic_window),
            panic_since: None,
            max_panic_pods: 0,
            delayed: VecDeque::new(),
            desired,
            initialized: scaling.initial_scale == 0,
            active_since: (desired > 0).then_some(now),
            inactive_since: None,
            last: Decision {
                desired,
                panic: false,
                stable_concurrency: 0.0,
                panic_concurrency: 0.0,
                excess_burst_capacity: 0.0,
                reason: "initial-scale",
            },
            origin: now,
            scaling,
        }
    }

    /// The instance count last decided (or poked to).
    pub(crate) fn desired(&self) -> u32 {
        self.desired
    }

    /// The last decision.
    pub(crate) fn last_decision(&self) -> &Decision {
        &self.last
    }

    fn index(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    /// Adds one (per-second) sample of the revision's load.
    pub(crate) fn record(&mut self, now: Instant, sample: Sample) {
        let value = match self.scaling.metric {
            Metric::Concurrency => sample.average_concurrency,
            Metric::Rps => sample.requests_per_second,
        };
        if !value.is_finite() || value < 0.0 {
            return;
        }
        let index = self.index(now);
        self.stable.record(index, value);
        self.panic.record(index, value);
    }

    /// A request is waiting and there are no instances: the count to scale to
    /// now, without waiting for the next tick (Knative's activator pokes the
    /// autoscaler the same way).
    pub(crate) fn poke(&mut self, now: Instant) -> u32 {
        if self.desired > 0 {
            return self.desired;
        }
        self.desired = self.leaving_zero(1);
        self.active_since = Some(now);
        self.inactive_since = None;
        self.last.desired = self.desired;
        self.last.reason = "request waiting at zero";
        self.desired
    }

    /// At least activation-scale when leaving zero, within max-scale.
    fn leaving_zero(&self, wanted: u32) -> u32 {
        let n = wanted.max(self.scaling.activation_scale).max(1);
        if self.scaling.max_scale > 0 {
            n.min(self.scaling.max_scale)
        } else {
            n
        }
    }

    /// Decides the instance count at `now`, given the ready instances and
    /// whether the revision has traffic routed to it.
    ///
    /// Knative's rules apply in turn, each able to override the one before:
    /// what the windows ask for, panic mode, the scale-down delay, the
    /// min/max/initial bounds, and last the way to and from zero.
    pub(crate) fn decide(&mut self, now: Instant, ready: u32, reachable: bool) -> Decision {
        let index = self.index(now);
        let stable = self.stable.average(index);
        let panicky = self.panic.average(index);

        let asked = self.asked(stable, panicky, ready, reachable);
        let want = self.through_panic(now, &asked);
        let want = self.hold_for_scale_down_delay(now, reachable, want);
        let want = self.within_bounds(now, ready, reachable, want);
        let (wanted, reason) = self.through_zero(now, want);
        self.desired = wanted;

        self.last = Decision {
            desired: wanted,
            panic: self.panic_since.is_some(),
            stable_concurrency: stable,
            panic_concurrency: panicky,
            excess_burst_capacity: self.excess_burst_capacity(ready, panicky),
            reason,
        };
        self.last.clone()
    }

    /// What the stable and panic windows ask for, within the scale-up and
    /// scale-down rate limits.
    fn asked(&self, stable: f64, panicky: f64, ready: u32, reachable: bool) -> Asked {
        let s = &self.scaling;
        // Knative divides by at least one instance, so growth from zero is
        // allowed and the panic ratio is defined.
        let ready_f = f64::from(ready.max(1));
        let max_up = (s.max_scale_up_rate * ready_f).ceil();
        // An unreachable revision may drop straight to zero.
        let max_down = if reachable {
            (ready_f / s.max_scale_down_rate).floor()
        } else {
            0.0
        };
        let stable_wanted = (stable / s.target_per_instance).ceil();
        let panic_wanted = (panicky / s.target_per_instance).ceil();
        // `as` saturates, so huge loads become u32::MAX rather than wrapping.
        let mut stable_pods = stable_wanted.max(max_down).min(max_up) as u32;
        let mut panic_pods = panic_wanted.max(max_down).min(max_up) as u32;
        if s.activation_scale > 1 {
            if stable_wanted > 0.0 {
                stable_pods = stable_pods.max(s.activation_scale);
            }
            if panic_wanted > 0.0 {
                panic_pods = panic_pods.max(s.activation_scale);
            }
        }
        Asked {
            stable_pods,
            panic_pods,
            panic_ratio: panic_wanted / ready_f,
        }
    }

    /// Panic starts when the panic window wants threshold-times the ready
    /// instances, and ends a stable window after that last held. In panic
    /// the larger of the two windows wins and the count never goes down, so
    /// a burst is not undone by its own momentary lulls.
    fn through_panic(&mut self, now: Instant, asked: &Asked) -> Want {
        let s = &self.scaling;
        if asked.panic_ratio >= s.panic_threshold {
            self.panic_since = Some(now);
        } else if let Some(since) = self.panic_since
            && now.saturating_duration_since(since) > s.stable_window
        {
            self.panic_since = None;
            self.max_panic_pods = 0;
        }
        let mut wanted = asked.stable_pods;
        let mut reason = "stable window";
        if self.panic_since.is_some() {
            wanted = wanted.max(asked.panic_pods);
            reason = "panic window";
            if wanted < self.max_panic_pods {
                reason = "panic: holding the panic peak";
            }
            self.max_panic_pods = self.max_panic_pods.max(wanted);
            wanted = self.max_panic_pods;
        }
        (wanted, reason)
    }

    /// scale-down-delay: the most asked for over the delay, so a short dip
    /// does not stop instances that will be needed again.
    fn hold_for_scale_down_delay(&mut self, now: Instant, reachable: bool, want: Want) -> Want {
        let (wanted, reason) = want;
        let delay = self.scaling.scale_down_delay;
        if !reachable || delay.is_zero() {
            return want;
        }
        self.delayed.push_back((now, wanted));
        while let Some(&(at, _)) = self.delayed.front() {
            if at + delay <= now {
                self.delayed.pop_front();
            } else {
                break;
            }
        }
        let held = self.delayed.iter().map(|&(_, n)| n).max().unwrap_or(wanted);
        if held > wanted {
            (held, "scale-down-delay")
        } else {
            (wanted, reason)
        }
    }

    /// Bounds. min-scale only holds while traffic can arrive; initial-scale
    /// holds until first reached, or a stable window has passed.
    fn within_bounds(&mut self, now: Instant, ready: u32, reachable: bool, want: Want) -> Want {
        let (mut wanted, mut reason) = want;
        let s = &self.scaling;
        if !self.initialized
            && (ready >= s.initial_scale
                || now.saturating_duration_since(self.origin) >= s.stable_window)
        {
            self.initialized = true;
        }
        let mut min = if reachable { s.min_scale } else { 0 };
        let mut min_reason = "min-scale";
        if reachable && !self.initialized && s.initial_scale > min {
            min = s.initial_scale;
            min_reason = "initial-scale";
        }
        if wanted < min {
            wanted = min;
            reason = min_reason;
        }
        if s.max_scale > 0 && wanted > s.max_scale {
            wanted = s.max_scale;
            reason = "max-scale";
        }
        (wanted, reason)
    }

    /// The way to and from zero: the last instance goes only by the
    /// scale-to-zero rules, and leaving zero starts at least activation-scale.
    /// Keeps the active/inactive clocks those rules read.
    fn through_zero(&mut self, now: Instant, want: Want) -> Want {
        let (mut wanted, mut reason) = want;
        if wanted == 0 && self.desired > 0 {
            (wanted, reason) = self.scale_to_zero(now);
        } else if wanted > 0 {
            self.inactive_since = None;
            if self.desired == 0 {
                wanted = self.leaving_zero(wanted);
                self.active_since = Some(now);
            }
        }
        if wanted == 0 {
            self.active_since = None;
            self.inactive_since = None;
        }
        (wanted, reason)
    }

    /// Excess burst capacity, from the panic window so the activator is not
    /// taken out of the path on a momentary lull.
    fn excess_burst_capacity(&self, ready: u32, panicky: f64) -> f64 {
        let s = &self.scaling;
        if s.target_burst_capacity < 0.0 {
            -1.0
        } else if s.target_burst_capacity == 0.0 {
            0.0
        } else {
            (f64::from(ready) * s.total_per_instance - s.target_burst_capacity - panicky).floor()
        }
    }

    /// The rules for the last instance: stay a stable window after scaling up
    /// from zero, then (now "inactive") the longer of the grace period and the
    /// last-pod retention period. Meanwhile one instance stays.
    fn scale_to_zero(&mut self, now: Instant) -> (u32, &'static str) {
        let s = &self.scaling;
        if !s.enable_scale_to_zero {
            return (1, "scale to zero disabled");
        }
        if let Some(active) = self.active_since
            && now.saturating_duration_since(active) < s.stable_window
        {
            return (1, "active for less than a stable window");
        }
        let inactive = *self.inactive_since.get_or_insert(now);
        let wait = s
            .scale_to_zero_grace_period
            .max(s.scale_to_zero_pod_retention_period);
        if now.saturating_duration_since(inactive) >= wait {
            (0, "idle: scale to zero")
        } else {
            (
                1,
                "idle: waiting out the scale-to-zero grace and retention periods",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::autoscaling::AutoscalerDefaults;

    fn scaling(pairs: &[(&str, &str)]) -> RevisionScaling {
        scaling_with(pairs, AutoscalerDefaults::default())
    }

    fn scaling_with(pairs: &[(&str, &str)], defaults: AutoscalerDefaults) -> RevisionScaling {
        let annotations: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("autoscaling.knative.dev/{k}"), v.to_string()))
            .collect();
        RevisionScaling::resolve(&annotations, &defaults, 0).expect("valid annotations")
    }

    /// Drives a KPA the way the scaler does: a sample every second, a
    /// decision every 2 s. Instances are ready as soon as decided unless
    /// `ready` is pinned.
    struct Sim {
        kpa: Kpa,
        t0: Instant,
        t: u64,
        ready: Option<u32>,
        reachable: bool,
        log: Vec<(u64, Decision)>,
    }

    impl Sim {
        fn new(scaling: RevisionScaling) -> Self {
            let t0 = Instant::now();
            Sim {
                kpa: Kpa::new(scaling, t0),
                t0,
                t: 0,
                ready: None,
                reachable: true,
                log: Vec::new(),
            }
        }

        fn now(&self) -> Instant {
            self.t0 + Duration::from_secs(self.t)
        }

        fn run(&mut self, seconds: u64, concurrency: f64) -> Decision {
            for _ in 0..seconds {
                self.t += 1;
                let now = self.now();
                self.kpa.record(
                    now,
                    Sample {
                        average_concurrency: concurrency,
                        requests_per_second: concurrency,
                    },
                );
                if self.t.is_multiple_of(2) {
                    let ready = self.ready.unwrap_or(self.kpa.desired());
                    let d = self.kpa.decide(now, ready, self.reachable);
                    self.log.push((self.t, d));
                }
            }
            self.kpa.last_decision().clone()
        }

        fn first_tick(&self, after: u64, f: impl Fn(&Decision) -> bool) -> Option<u64> {
            self.log
                .iter()
                .find(|(t, d)| *t > after && f(d))
                .map(|(t, _)| *t)
        }
    }

    #[test]
    fn scale_up_under_load() {
        // Default target 100 at 70% utilization: 70 per instance.
        let mut sim = Sim::new(scaling(&[]));
        let d = sim.run(2, 350.0);
        assert_eq!(d.desired, 5);
        assert!((d.stable_concurrency - 350.0).abs() < 1e-9);
        let d = sim.run(20, 700.0);
        assert_eq!(d.desired, 10);
    }

    #[test]
    fn panic_mode_starts_on_a_burst_and_never_scales_down() {
        let mut sim = Sim::new(scaling(&[]));
        // The first tick wants 2 on the 1 initial instance: that alone is a
        // panic, over a stable window later.
        let d = sim.run(2, 140.0);
        assert_eq!((d.desired, d.panic), (2, true));
        let d = sim.run(68, 140.0);
        assert_eq!((d.desired, d.panic), (2, false));
        // At t=72 the 6 s panic window holds (4*140 + 2*700)/6 = 327:
        // 5 instances, 2.5x the 2 ready: panic. At t=74, 513: 8.
        let d = sim.run(4, 700.0);
        assert!(d.panic);
        assert_eq!(d.desired, 8);
        let peak_at = sim.t;
        // The burst stops; without panic the 2:1 rate limit would allow 4.
        sim.run(80, 0.0);
        for (t, d) in sim.log.iter().filter(|(t, _)| *t > peak_at) {
            if d.panic {
                assert_eq!(d.desired, 8, "scaled down in panic at {t}: {d:?}");
            }
        }
        // Panic ends once the condition (last held at t=72) has not held
        // for a whole stable window.
        let calm = sim.first_tick(peak_at, |d| !d.panic);
        assert_eq!(calm, Some(134));
        let after = sim
            .log
            .iter()
            .find(|(t, _)| *t == 134)
            .map(|(_, d)| d.desired);
        assert_eq!(after, Some(4));
    }

    #[test]
    fn stable_window_scales_down_slowly() {
        let mut sim = Sim::new(scaling(&[]));
        assert_eq!(sim.run(120, 350.0).desired, 5);
        // 10 s of lower load barely moves a 60 s average: still 5.
        assert_eq!(sim.run(10, 70.0).desired, 5);
        // After a whole window at 70: one instance.
        let d = sim.run(52, 70.0);
        assert_eq!(d.desired, 1);
        assert!(!d.panic);
    }

    #[test]
    fn scale_to_zero_after_the_grace_period() {
        let mut sim = Sim::new(scaling(&[]));
        assert_eq!(sim.run(10, 70.0).desired, 1);
        sim.run(200, 0.0);
        // The last load is in bucket 10; the 60 s average is 0 from t=70;
        // then the 30 s grace period.
        let zero = sim.first_tick(0, |d| d.desired == 0);
        assert_eq!(zero, Some(100));
        assert!(sim.log.iter().all(|(t, d)| *t >= 100 || d.desired == 1));
    }

    #[test]
    fn scale_to_zero_pod_retention_period_keeps_the_last_instance() {
        let mut sim = Sim::new(scaling(&[("scale-to-zero-pod-retention-period", "1m")]));
        sim.run(10, 70.0);
        sim.run(200, 0.0);
        // Inactive from t=70, then 60 s retention (longer than the grace).
        assert_eq!(sim.first_tick(0, |d| d.desired == 0), Some(130));
    }

    #[test]
    fn scale_to_zero_disabled_keeps_one() {
        let defaults = AutoscalerDefaults {
            enable_scale_to_zero: false,
            ..AutoscalerDefaults::default()
        };
        let mut sim = Sim::new(scaling_with(&[], defaults));
        sim.run(300, 0.0);
        assert!(sim.log.iter().all(|(_, d)| d.desired == 1));
    }

    #[test]
    fn min_scale_keeps_instances_warm_unless_unreachable() {
        let mut sim = Sim::new(scaling(&[("min-scale", "2")]));
        assert_eq!(sim.kpa.desired(), 2);
        sim.run(300, 0.0);
        assert!(sim.log.iter().all(|(_, d)| d.desired == 2));
        // Traffic moves away: min-scale no longer applies; after the grace
        // period the revision goes to zero.
        sim.reachable = false;
        let at = sim.t;
        sim.run(60, 0.0);
        assert_eq!(sim.first_tick(at, |d| d.desired == 0), Some(at + 32));
        assert_eq!(sim.first_tick(at, |d| d.desired == 1), Some(at + 2));
    }

    #[test]
    fn initial_scale_holds_until_reached() {
        let mut sim = Sim::new(scaling(&[("initial-scale", "3")]));
        assert_eq!(sim.kpa.desired(), 3);
        sim.ready = Some(0);
        assert_eq!(sim.run(20, 0.0).desired, 3);
        // Reached: no load, so it drops (rate-limited, and one instance stays
        // for the rest of the stable window).
        sim.ready = Some(3);
        let d = sim.run(2, 0.0);
        assert_eq!(d.desired, 1);

        // Never reached: given up on after a stable window.
        let mut sim = Sim::new(scaling(&[("initial-scale", "3")]));
        sim.ready = Some(0);
        assert_eq!(sim.run(58, 0.0).desired, 3);
        assert_eq!(sim.run(2, 0.0).desired, 1);
    }

    #[test]
    fn zero_initial_scale_starts_at_zero_when_allowed() {
        let defaults = AutoscalerDefaults {
            allow_zero_initial_scale: true,
            ..AutoscalerDefaults::default()
        };
        let mut sim = Sim::new(scaling_with(&[("initial-scale", "0")], defaults));
        assert_eq!(sim.kpa.desired(), 0);
        assert_eq!(sim.run(30, 0.0).desired, 0);
        assert_eq!(sim.run(2, 10.0).desired, 1);
    }

    #[test]
    fn scale_down_delay_holds_the_peak() {
        let run = |pairs: &[(&str, &str)]| {
            let mut sim = Sim::new(scaling(pairs));
            assert_eq!(sim.run(20, 350.0).desired, 5);
            let drop = sim.t;
            sim.run(40, 70.0);
            sim.first_tick(drop, |d| d.desired < 5).map(|t| t - drop)
        };
        // A 6 s window starts to forget the peak at the next tick.
        assert_eq!(run(&[("window", "6s")]), Some(2));
        // The delay holds the peak (last wanted at the drop) for 20 s.
        assert_eq!(
            run(&[("window", "6s"), ("scale-down-delay", "20s")]),
            Some(20)
        );
    }

    #[test]
    fn max_scale_caps() {
        let mut sim = Sim::new(scaling(&[("max-scale", "3")]));
        let d = sim.run(10, 7000.0);
        assert_eq!(d.desired, 3);
        assert_eq!(d.reason, "max-scale");
    }

    #[test]
    fn activation_scale_applies_on_poke_and_leaving_zero() {
        let t0 = Instant::now();
        let defaults = AutoscalerDefaults {
            allow_zero_initial_scale: true,
            ..AutoscalerDefaults::default()
        };
        let mut kpa = Kpa::new(
            scaling_with(
                &[("initial-scale", "0"), ("activation-scale", "3")],
                defaults.clone(),
            ),
            t0,
        );
        assert_eq!(kpa.poke(t0), 3);
        // Already up: a second poke changes nothing.
        assert_eq!(kpa.poke(t0), 3);

        let mut plain = Kpa::new(
            scaling_with(&[("initial-scale", "0")], defaults.clone()),
            t0,
        );
        assert_eq!(plain.poke(t0), 1);

        // Capped by max-scale.
        let mut capped = Kpa::new(
            scaling_with(
                &[
                    ("initial-scale", "0"),
                    ("activation-scale", "2"),
                    ("max-scale", "2"),
                ],
                defaults.clone(),
            ),
            t0,
        );
        assert_eq!(capped.poke(t0), 2);

        // Load (not a poke) that needs one instance still gets three.
        let mut sim = Sim::new(scaling_with(
            &[("initial-scale", "0"), ("activation-scale", "3")],
            defaults,
        ));
        assert_eq!(sim.run(2, 5.0).desired, 3);
    }

    #[test]
    fn rate_limits_bound_each_step() {
        let defaults = AutoscalerDefaults {
            max_scale_up_rate: 2.0,
            ..AutoscalerDefaults::default()
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let load = |c: f64| Sample {
            average_concurrency: c,
            requests_per_second: c,
        };
        let mut kpa = Kpa::new(scaling_with(&[], defaults), t0);
        kpa.record(at(1), load(7000.0));
        // Up: at most ceil(2 * max(ready, 1)).
        assert_eq!(kpa.decide(at(1), 1, true).desired, 2);
        assert_eq!(kpa.decide(at(1), 2, true).desired, 4);
        // Down: no fewer than floor(ready / 2) while reachable...
        let mut kpa = Kpa::new(scaling(&[]), t0);
        kpa.record(at(1), load(1.0));
        assert_eq!(kpa.decide(at(1), 10, true).desired, 5);
        // ...and no limit when unreachable.
        assert_eq!(kpa.decide(at(1), 10, false).desired, 1);
    }

    #[test]
    fn excess_burst_capacity_as_knative_computes_it() {
        let t0 = Instant::now();
        let mut kpa = Kpa::new(scaling(&[]), t0);
        kpa.record(
            t0 + Duration::from_secs(1),
            Sample {
                average_concurrency: 50.0,
                requests_per_second: 0.0,
            },
        );
        // 3 ready * 100 total - 200 burst - 50 observed.
        let d = kpa.decide(t0 + Duration::from_secs(1), 3, true);
        assert_eq!(d.excess_burst_capacity, 50.0);
    }

    #[test]
    fn windows_average_per_second_buckets() {
        let mut w = Window::new(Duration::from_secs(4));
        w.record(1, 4.0);
        assert_eq!(w.average(1), 4.0);
        w.record(2, 2.0);
        assert_eq!(w.average(2), 3.0);
        // A missing second counts as no load.
        w.record(4, 6.0);
        assert_eq!(w.average(4), 3.0);
        // Bucket 1 slides out: (2 + 0 + 6 + 0) / 4.
        assert_eq!(w.average(5), 2.0);
        assert_eq!(w.average(8), 0.0);
    }
}
