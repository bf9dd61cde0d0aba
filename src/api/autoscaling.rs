//! Autoscaling settings: the global defaults (Knative's `config-autoscaler`
//! ConfigMap, same key names) and the per-revision settings resolved from the
//! `autoscaling.knative.dev/*` annotations, with Knative's validation ranges
//! (`pkg/apis/autoscaling/annotation_validation.go`) and target resolution
//! (`pkg/reconciler/autoscaling/resources/target.go`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::api::Invalid;

const PREFIX: &str = "autoscaling.knative.dev/";
/// The only class pilotlight implements.
pub(crate) const KPA_CLASS: &str = "kpa.autoscaling.knative.dev";
/// Knative's `TargetMin`: a target of zero would divide by zero.
const TARGET_MIN: f64 = 0.01;
/// Knative's `WindowMin` and `WindowMax`.
const WINDOW_MIN: Duration = Duration::from_secs(6);
const WINDOW_MAX: Duration = Duration::from_secs(3600);

/// Global autoscaler settings, as `config-autoscaler` keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct AutoscalerDefaults {
    pub container_concurrency_target_default: f64,
    /// Percent of the target an instance should run at (1..=100).
    pub container_concurrency_target_percentage: f64,
    pub requests_per_second_target_default: f64,
    #[serde(deserialize_with = "de_duration")]
    pub stable_window: Duration,
    pub panic_window_percentage: f64,
    pub panic_threshold_percentage: f64,
    #[serde(deserialize_with = "de_duration")]
    pub scale_to_zero_grace_period: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub scale_to_zero_pod_retention_period: Duration,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    /// Requests of headroom to keep; -1 keeps the activator always in the path.
    pub target_burst_capacity: f64,
    pub initial_scale: u32,
    /// Whether `initial-scale: "0"` is allowed. pilotlight's one departure
    /// from Knative's defaults (false there): locally there is no cluster
    /// operator to opt in, and starting at zero is what most users want.
    pub allow_zero_initial_scale: bool,
    pub min_scale: u32,
    /// 0 means unbounded.
    pub max_scale: u32,
    #[serde(deserialize_with = "de_duration")]
    pub scale_down_delay: Duration,
    pub activation_scale: u32,
    pub enable_scale_to_zero: bool,
    /// How often the KPA decides (Knative's autoscaler ticks every 2s).
    #[serde(deserialize_with = "de_duration")]
    pub tick_interval: Duration,
}

impl Default for AutoscalerDefaults {
    fn default() -> Self {
        // Knative's defaultConfig() in pkg/autoscaler/config/config.go.
        AutoscalerDefaults {
            container_concurrency_target_default: 100.0,
            container_concurrency_target_percentage: 70.0,
            requests_per_second_target_default: 200.0,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            scale_to_zero_grace_period: Duration::from_secs(30),
            scale_to_zero_pod_retention_period: Duration::ZERO,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            // DESIGN.md's table; Knative's own config-autoscaler ships 211.
            target_burst_capacity: 200.0,
            initial_scale: 1,
            allow_zero_initial_scale: true,
            min_scale: 0,
            max_scale: 0,
            scale_down_delay: Duration::ZERO,
            activation_scale: 1,
            enable_scale_to_zero: true,
            tick_interval: Duration::from_secs(2),
        }
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_go_duration(&text).map_err(serde::de::Error::custom)
}

/// Parses a duration as Knative writes them (Go's `time.ParseDuration`
/// subset): `60s`, `1m30s`, `500ms`, `1.5h`, `0`.
pub(crate) fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("'{text}' is not a duration such as 60s, 1m30s or 500ms");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0.0_f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        // "ms" must be tried before "m".
        let (unit_secs, unit_len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else {
            return Err(bad());
        };
        total += number * unit_secs;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// What the KPA scales on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metric {
    Concurrency,
    Rps,
}

/// One revision's resolved autoscaling settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RevisionScaling {
    pub metric: Metric,
    /// What one instance should carry (concurrency or requests per second),
    /// utilization already applied.
    pub target_per_instance: f64,
    /// What one instance can carry at most (before utilization), for the
    /// excess burst capacity.
    pub total_per_instance: f64,
    /// `containerConcurrency`; 0 means unlimited.
    pub container_concurrency: u32,
    pub min_scale: u32,
    /// 0 means unbounded.
    pub max_scale: u32,
    pub initial_scale: u32,
    pub activation_scale: u32,
    pub stable_window: Duration,
    pub panic_window: Duration,
    /// As a ratio: 2.0 for 200%.
    pub panic_threshold: f64,
    pub scale_down_delay: Duration,
    pub scale_to_zero_grace_period: Duration,
    pub scale_to_zero_pod_retention_period: Duration,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub target_burst_capacity: f64,
    pub enable_scale_to_zero: bool,
    pub tick_interval: Duration,
}

fn field(key: &str) -> String {
    format!("spec.template.metadata.annotations[\"{key}\"]")
}

/// Reads one annotation, accepting a legacy camelCase spelling too.
fn lookup<'a>(
    annotations: &'a BTreeMap<String, String>,
    name: &str,
    legacy: Option<&str>,
) -> Result<Option<(String, &'a str)>, Invalid> {
    let key = format!("{PREFIX}{name}");
    let current = annotations.get(&key).map(|v| (key.clone(), v.as_str()));
    let Some(legacy) = legacy else {
        return Ok(current);
    };
    let old_key = format!("{PREFIX}{legacy}");
    match (current, annotations.get(&old_key)) {
        (Some(_), Some(_)) => Err(Invalid::new(
            field(&old_key),
            format!("set only one of '{key}' and '{old_key}' (the older spelling)"),
        )),
        (Some(found), None) => Ok(Some(found)),
        (None, Some(v)) => Ok(Some((old_key, v.as_str()))),
        (None, None) => Ok(None),
    }
}

fn whole(
    annotations: &BTreeMap<String, String>,
    name: &str,
    legacy: Option<&str>,
    meaning: &str,
    least: u32,
) -> Result<Option<(String, u32)>, Invalid> {
    let Some((key, text)) = lookup(annotations, name, legacy)? else {
        return Ok(None);
    };
    match text.trim().parse::<u32>() {
        Ok(n) if n >= least => Ok(Some((key, n))),
        Ok(_) => Err(Invalid::new(
            field(&key),
            format!("'{text}' is too small; {name} is {meaning}, {least} or more"),
        )),
        Err(_) => Err(Invalid::new(
            field(&key),
            format!("'{text}' is not a whole number; {name} is {meaning}, {least} or more"),
        )),
    }
}

fn number_in(
    annotations: &BTreeMap<String, String>,
    name: &str,
    meaning: &str,
    range: (f64, f64),
) -> Result<Option<f64>, Invalid> {
    let Some((key, text)) = lookup(annotations, name, None)? else {
        return Ok(None);
    };
    let (low, high) = range;
    let allowed = if high.is_finite() {
        format!("{name} is {meaning}, from {low} to {high}")
    } else {
        format!("{name} is {meaning}, at least {low}")
    };
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= low && v <= high => Ok(Some(v)),
        Ok(_) => Err(Invalid::new(
            field(&key),
            format!("'{text}' is out of range; {allowed}"),
        )),
        Err(_) => Err(Invalid::new(
            field(&key),
            format!("'{text}' is not a number; {allowed}"),
        )),
    }
}

fn duration_in(
    annotations: &BTreeMap<String, String>,
    name: &str,
    meaning: &str,
    range: (Duration, Duration),
) -> Result<Option<Duration>, Invalid> {
    let Some((key, text)) = lookup(annotations, name, None)? else {
        return Ok(None);
    };
    let (low, high) = range;
    let allowed = format!(
        "{name} is {meaning}, from {} to {} (such as 60s or 1m30s)",
        show(low),
        show(high)
    );
    match parse_go_duration(text.trim()) {
        Ok(d) if d >= low && d <= high => Ok(Some(d)),
        Ok(_) => Err(Invalid::new(
            field(&key),
            format!("'{text}' is out of range; {allowed}"),
        )),
        Err(_) => Err(Invalid::new(
            field(&key),
            format!("'{text}' is not a duration; {allowed}"),
        )),
    }
}

/// Writes a duration the way the annotations take it, for messages.
fn show(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs, d.subsec_millis()) {
        (0, 0) => "0s".to_string(),
        (s, 0) if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        (s, 0) if s.is_multiple_of(60) => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        (s, ms) => format!("{}ms", s * 1000 + u64::from(ms)),
    }
}

impl RevisionScaling {
    /// Resolves a revision's settings from its annotations over `defaults`.
    ///
    /// The parts are checked one after another in a fixed order (class,
    /// metric, scale bounds, target, windows), so a manifest with several
    /// mistakes always gets the same first one named.
    pub(crate) fn resolve(
        annotations: &BTreeMap<String, String>,
        defaults: &AutoscalerDefaults,
        container_concurrency: u32,
    ) -> Result<RevisionScaling, Invalid> {
        check_class(annotations)?;
        let metric = metric(annotations)?;
        let (min_scale, max_scale) = scale_bounds(annotations, defaults)?;
        let initial_scale = initial_scale(annotations, defaults)?;
        let activation_scale = activation_scale(annotations, defaults, max_scale)?;
        let target = Target::resolve(annotations, defaults, metric, container_concurrency)?;
        let windows = Windows::resolve(annotations, defaults)?;
        let target_burst_capacity = number_in(
            annotations,
            "target-burst-capacity",
            "the spare requests to keep room for (-1 keeps the activator in the path)",
            (-1.0, f64::INFINITY),
        )?
        .unwrap_or(defaults.target_burst_capacity);

        Ok(RevisionScaling {
            metric,
            target_per_instance: target.per_instance,
            total_per_instance: target.total,
            container_concurrency,
            min_scale,
            max_scale,
            initial_scale,
            activation_scale,
            stable_window: windows.stable,
            panic_window: windows.panic,
            panic_threshold: windows.panic_threshold,
            scale_down_delay: windows.scale_down_delay,
            scale_to_zero_grace_period: defaults.scale_to_zero_grace_period,
            scale_to_zero_pod_retention_period: windows.retention,
            // Guard the divisions and multiplications in the KPA against
            // nonsense in a config file.
            max_scale_up_rate: defaults.max_scale_up_rate.max(1.0),
            max_scale_down_rate: defaults.max_scale_down_rate.max(1.0),
            target_burst_capacity,
            enable_scale_to_zero: defaults.enable_scale_to_zero,
            tick_interval: defaults.tick_interval.max(Duration::from_millis(100)),
        })
    }
}

/// Refuses any class but the KPA: pilotlight implements no other, and a
/// revision silently scaled by the wrong rules would be worse than an error.
fn check_class(annotations: &BTreeMap<String, String>) -> Result<(), Invalid> {
    let Some((key, class)) = lookup(annotations, "class", None)? else {
        return Ok(());
    };
    if class == KPA_CLASS {
        return Ok(());
    }
    let hint = if class.starts_with("hpa.") {
        " (the Kubernetes HPA class needs Kubernetes; pilotlight scales revisions itself)"
    } else {
        ""
    };
    Err(Invalid::new(
        field(&key),
        format!("'{class}' is not supported; the only class is '{KPA_CLASS}'{hint}"),
    ))
}

/// What the KPA scales on; concurrency unless the annotation says rps.
fn metric(annotations: &BTreeMap<String, String>) -> Result<Metric, Invalid> {
    match lookup(annotations, "metric", None)? {
        None => Ok(Metric::Concurrency),
        Some((_, "concurrency")) => Ok(Metric::Concurrency),
        Some((_, "rps")) => Ok(Metric::Rps),
        Some((key, other)) => Err(Invalid::new(
            field(&key),
            format!("'{other}' is not a metric the KPA scales on; use 'concurrency' or 'rps'"),
        )),
    }
}

/// `(min_scale, max_scale)`. They are checked together because either one
/// may come from the defaults; the error names whichever annotation was set.
fn scale_bounds(
    annotations: &BTreeMap<String, String>,
    defaults: &AutoscalerDefaults,
) -> Result<(u32, u32), Invalid> {
    let min = whole(
        annotations,
        "min-scale",
        Some("minScale"),
        "the least number of instances",
        0,
    )?;
    let max = whole(
        annotations,
        "max-scale",
        Some("maxScale"),
        "the most instances (0 for no limit)",
        0,
    )?;
    let min_scale = min.as_ref().map_or(defaults.min_scale, |(_, n)| *n);
    let max_scale = max.as_ref().map_or(defaults.max_scale, |(_, n)| *n);
    if max_scale > 0 && min_scale > max_scale {
        let key = min
            .as_ref()
            .or(max.as_ref())
            .map_or_else(|| format!("{PREFIX}min-scale"), |(k, _)| k.clone());
        return Err(Invalid::new(
            field(&key),
            format!(
                "min-scale {min_scale} is more than max-scale {max_scale}; min-scale must be at most max-scale (or max-scale 0 for no limit)"
            ),
        ));
    }
    Ok((min_scale, max_scale))
}

/// The instances a new revision starts with; zero only where the
/// autoscaler settings allow it, as in Knative.
fn initial_scale(
    annotations: &BTreeMap<String, String>,
    defaults: &AutoscalerDefaults,
) -> Result<u32, Invalid> {
    match whole(
        annotations,
        "initial-scale",
        None,
        "the number of instances a new revision starts with",
        0,
    )? {
        None => Ok(defaults.initial_scale),
        Some((key, 0)) if !defaults.allow_zero_initial_scale => Err(Invalid::new(
            field(&key),
            "'0' needs allow-zero-initial-scale in the autoscaler settings; initial-scale is the number of instances a new revision starts with, 1 or more",
        )),
        Some((_, n)) => Ok(n),
    }
}

/// The least instances when scaling up from zero; never above `max_scale`,
/// which would make the first scale-up overshoot the limit.
fn activation_scale(
    annotations: &BTreeMap<String, String>,
    defaults: &AutoscalerDefaults,
    max_scale: u32,
) -> Result<u32, Invalid> {
    match whole(
        annotations,
        "activation-scale",
        None,
        "the least number of instances when scaling up from zero",
        1,
    )? {
        None => Ok(defaults.activation_scale.max(1)),
        Some((key, n)) if max_scale > 0 && n > max_scale => Err(Invalid::new(
            field(&key),
            format!(
                "activation-scale {n} is more than max-scale {max_scale}; it must be at most max-scale"
            ),
        )),
        Some((_, n)) => Ok(n),
    }
}

/// The load one instance should and can carry, as Knative's `target.go`
/// works it out from the target, the utilization and `containerConcurrency`.
struct Target {
    /// `total` times the utilization: what the KPA aims at.
    per_instance: f64,
    /// What one instance can carry at most, for the excess burst capacity.
    total: f64,
}

impl Target {
    fn resolve(
        annotations: &BTreeMap<String, String>,
        defaults: &AutoscalerDefaults,
        metric: Metric,
        container_concurrency: u32,
    ) -> Result<Target, Invalid> {
        let target = number_in(
            annotations,
            "target",
            "the load one instance should carry",
            (TARGET_MIN, f64::INFINITY),
        )?;
        let utilization = number_in(
            annotations,
            "target-utilization-percentage",
            "the percent of the target to run instances at",
            (1.0, 100.0),
        )?
        .unwrap_or(defaults.container_concurrency_target_percentage)
            / 100.0;
        let cc = f64::from(container_concurrency);
        let total = match metric {
            Metric::Rps => target.unwrap_or(defaults.requests_per_second_target_default),
            // A limited container never gets a target above its limit;
            // an unlimited one without a target gets the default.
            Metric::Concurrency => match (target, container_concurrency) {
                (Some(t), 0) => t,
                (Some(t), _) => t.min(cc),
                (None, 0) => defaults.container_concurrency_target_default,
                (None, _) => cc,
            },
        };
        Ok(Target {
            per_instance: (total * utilization).max(TARGET_MIN),
            total,
        })
    }
}

/// The KPA's windows and delays: how far back it averages, when it panics,
/// and how long it waits before scaling down or letting the last one go.
struct Windows {
    stable: Duration,
    /// A share of the stable window.
    panic: Duration,
    /// As a ratio: 2.0 for 200%.
    panic_threshold: f64,
    scale_down_delay: Duration,
    retention: Duration,
}

impl Windows {
    fn resolve(
        annotations: &BTreeMap<String, String>,
        defaults: &AutoscalerDefaults,
    ) -> Result<Windows, Invalid> {
        let stable = duration_in(
            annotations,
            "window",
            "the stable averaging window",
            (WINDOW_MIN, WINDOW_MAX),
        )?
        .unwrap_or(defaults.stable_window);
        let panic_window_percentage = number_in(
            annotations,
            "panic-window-percentage",
            "the panic window as a percent of the stable window",
            (1.0, 100.0),
        )?
        .unwrap_or(defaults.panic_window_percentage);
        let panic_threshold_percentage = number_in(
            annotations,
            "panic-threshold-percentage",
            "the load, as a percent of current capacity, that starts panic mode",
            (110.0, 1000.0),
        )?
        .unwrap_or(defaults.panic_threshold_percentage);
        let scale_down_delay = duration_in(
            annotations,
            "scale-down-delay",
            "how long a scale-down waits",
            (Duration::ZERO, WINDOW_MAX),
        )?
        .unwrap_or(defaults.scale_down_delay);
        let retention = duration_in(
            annotations,
            "scale-to-zero-pod-retention-period",
            "how long the last instance stays after the decision to scale to zero",
            (Duration::ZERO, WINDOW_MAX),
        )?
        .unwrap_or(defaults.scale_to_zero_pod_retention_period);
        Ok(Windows {
            stable,
            panic: stable.mul_f64(panic_window_percentage / 100.0),
            panic_threshold: panic_threshold_percentage / 100.0,
            scale_down_delay,
            retention,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(pairs: &[(&str, &str)], cc: u32) -> Result<RevisionScaling, Invalid> {
        let annotations = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect();
        RevisionScaling::resolve(&annotations, &AutoscalerDefaults::default(), cc)
    }

    fn refused(pairs: &[(&str, &str)]) -> Invalid {
        resolve(pairs, 0).expect_err("refused")
    }

    #[test]
    fn defaults_resolve_to_knative_values() {
        let s = resolve(&[], 0).expect("valid");
        assert_eq!(s.metric, Metric::Concurrency);
        assert!((s.target_per_instance - 70.0).abs() < 1e-9);
        assert_eq!(s.total_per_instance, 100.0);
        assert_eq!(s.stable_window, Duration::from_secs(60));
        assert_eq!(s.panic_window, Duration::from_secs(6));
        assert_eq!(s.panic_threshold, 2.0);
        assert_eq!((s.min_scale, s.max_scale, s.initial_scale), (0, 0, 1));
        assert_eq!(s.activation_scale, 1);
    }

    #[test]
    fn target_follows_container_concurrency_like_knative() {
        // Limited container, no target: the limit times utilization.
        let s = resolve(&[], 10).expect("valid");
        assert!((s.target_per_instance - 7.0).abs() < 1e-9);
        // A target above the limit is capped by it.
        let s = resolve(&[("target", "50")], 10).expect("valid");
        assert_eq!(s.total_per_instance, 10.0);
        // A target below it wins, and utilization applies.
        let s = resolve(
            &[("target", "4"), ("target-utilization-percentage", "50")],
            10,
        )
        .expect("valid");
        assert!((s.target_per_instance - 2.0).abs() < 1e-9);
        // rps uses its own default.
        let s = resolve(&[("metric", "rps")], 10).expect("valid");
        assert_eq!(s.metric, Metric::Rps);
        assert!((s.target_per_instance - 140.0).abs() < 1e-9);
    }

    #[test]
    fn legacy_spellings_are_accepted() {
        let s = resolve(&[("minScale", "2"), ("maxScale", "5")], 0).expect("valid");
        assert_eq!((s.min_scale, s.max_scale), (2, 5));
    }

    #[test]
    fn annotation_errors_name_the_field_and_what_is_allowed() {
        let e = refused(&[("min-scale", "abc")]);
        assert_eq!(
            e.field,
            "spec.template.metadata.annotations[\"autoscaling.knative.dev/min-scale\"]"
        );
        assert_eq!(
            e.reason,
            "'abc' is not a whole number; min-scale is the least number of instances, 0 or more"
        );

        let e = refused(&[("minScale", "-1")]);
        assert_eq!(
            e.field,
            "spec.template.metadata.annotations[\"autoscaling.knative.dev/minScale\"]"
        );
        assert!(e.reason.starts_with("'-1' is not a whole number"), "{e}");

        let e = refused(&[("min-scale", "5"), ("max-scale", "3")]);
        assert!(e.field.ends_with("min-scale\"]"), "{e}");
        assert!(
            e.reason.contains(
                "min-scale 5 is more than max-scale 3; min-scale must be at most max-scale"
            ),
            "{e}"
        );

        let e = refused(&[("metric", "cpu")]);
        assert!(
            e.field.ends_with("autoscaling.knative.dev/metric\"]"),
            "{e}"
        );
        assert_eq!(
            e.reason,
            "'cpu' is not a metric the KPA scales on; use 'concurrency' or 'rps'"
        );

        let e = refused(&[("class", "hpa.autoscaling.knative.dev")]);
        assert!(e.field.ends_with("autoscaling.knative.dev/class\"]"), "{e}");
        assert!(
            e.reason
                .contains("the only class is 'kpa.autoscaling.knative.dev'")
                && e.reason.contains("HPA"),
            "{e}"
        );

        let e = refused(&[("window", "5s")]);
        assert!(
            e.field.ends_with("autoscaling.knative.dev/window\"]"),
            "{e}"
        );
        assert_eq!(
            e.reason,
            "'5s' is out of range; window is the stable averaging window, from 6s to 1h (such as 60s or 1m30s)"
        );
        let e = refused(&[("window", "soon")]);
        assert!(e.reason.starts_with("'soon' is not a duration;"), "{e}");

        let e = refused(&[("panic-window-percentage", "0")]);
        assert!(e.reason.ends_with("from 1 to 100"), "{e}");
        let e = refused(&[("panic-threshold-percentage", "100")]);
        assert!(
            e.reason.starts_with("'100' is out of range;")
                && e.reason.ends_with("from 110 to 1000"),
            "{e}"
        );
        let e = refused(&[("scale-down-delay", "2h")]);
        assert!(e.field.ends_with("scale-down-delay\"]"), "{e}");
        assert!(e.reason.contains("from 0s to 1h"), "{e}");
        let e = refused(&[("activation-scale", "0")]);
        assert!(e.reason.ends_with("1 or more"), "{e}");
        let e = refused(&[("target", "0")]);
        assert!(e.reason.contains("at least 0.01"), "{e}");
        let strict = AutoscalerDefaults {
            allow_zero_initial_scale: false,
            ..AutoscalerDefaults::default()
        };
        let zero = BTreeMap::from([(format!("{PREFIX}initial-scale"), "0".to_string())]);
        let e = RevisionScaling::resolve(&zero, &strict, 0).expect_err("needs the switch");
        assert!(e.reason.contains("allow-zero-initial-scale"), "{e}");
        let e = refused(&[("min-scale", "1"), ("minScale", "1")]);
        assert!(e.reason.contains("set only one of"), "{e}");
    }

    #[test]
    fn zero_initial_scale_needs_the_global_switch() {
        let defaults = AutoscalerDefaults {
            allow_zero_initial_scale: true,
            ..AutoscalerDefaults::default()
        };
        let annotations = BTreeMap::from([(format!("{PREFIX}initial-scale"), "0".to_string())]);
        let s = RevisionScaling::resolve(&annotations, &defaults, 0).expect("valid");
        assert_eq!(s.initial_scale, 0);
    }

    #[test]
    fn durations_parse_as_knative_writes_them() {
        assert_eq!(parse_go_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_go_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "60", "s", "1d", "-1s", "1..2s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_load_from_config_autoscaler_keys() {
        let yaml = "stable-window: 2m\nscale-to-zero-grace-period: 10s\nmax-scale: 4\n";
        let d: AutoscalerDefaults = serde_saphyr::from_str(yaml).expect("valid");
        assert_eq!(d.stable_window, Duration::from_secs(120));
        assert_eq!(d.scale_to_zero_grace_period, Duration::from_secs(10));
        assert_eq!(d.max_scale, 4);
        assert_eq!(d.container_concurrency_target_default, 100.0);
        assert!(serde_saphyr::from_str::<AutoscalerDefaults>("no-such-key: 1\n").is_err());
    }
}
