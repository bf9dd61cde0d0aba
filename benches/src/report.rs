//! Figures and targets as every suite reports them.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::json;

/// A target of the issue and how the run fared.
pub(crate) struct Check {
    pub name: String,
    pub figure: String,
    pub met: bool,
}

impl Check {
    fn verdict(&self) -> &'static str {
        if self.met { "met" } else { "MISSED" }
    }
}

/// The targets table and the failures, at the end of a report; the column
/// widths fit each suite's target names.
pub(crate) fn write_checks(
    out: &mut String,
    checks: &[Check],
    failures: &[String],
    widths: (usize, usize),
) {
    let (name_width, figure_width) = widths;
    for check in checks {
        let _ = writeln!(
            out,
            "  {:<name_width$} {:<figure_width$} {}",
            check.name,
            check.figure,
            check.verdict()
        );
    }
    for failure in failures {
        let _ = writeln!(out, "  FAILED {failure}");
    }
}

/// The targets as the `--json` reports list them.
pub(crate) fn checks_json(checks: &[Check]) -> serde_json::Value {
    checks
        .iter()
        .map(|c| json!({"target": c.name, "figure": c.figure, "met": c.met}))
        .collect()
}

pub(crate) fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

pub(crate) fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    ms(h.value_at_quantile(q))
}

/// The middle value (the upper one of an even count); 0 for none. Shared by
/// the suites that report medians of alternating rounds.
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
