//! `pilotlight-bench cesql`: evaluations per second of a typical CESQL
//! filter against the same logic written as a Rust closure, in the same run.
//!
//! The filter is `type LIKE 'com.example.%' AND source IN ('a','b') AND
//! EXISTS subject`; the closure tests `type.starts_with("com.example.")`,
//! `source` is `a` or `b`, and `subject` is set. Both run over the same four
//! events (one matches; the others fail on type, on source, and on a missing
//! subject), in alternating rounds so that noise hits both sides; the figure
//! is the ratio of the medians. The CESQL side calls the trigger's own
//! `Filter::matches`. Target: at least 0.3× the closure.

use std::hint::black_box;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;

use crate::report::median;
use pilotlight::api::filter::Filter;
use pilotlight::cesql::parser;
use pilotlight::cesql::program::Program;
use pilotlight::cloudevent::Event;

/// The filter the issue names.
pub const TYPICAL_FILTER: &str =
    "type LIKE 'com.example.%' AND source IN ('a','b') AND EXISTS subject";
const TARGET_RATIO: f64 = 0.3;

#[derive(Debug, Args)]
pub struct CesqlArgs {
    /// Evaluations per round and side.
    #[arg(long, default_value_t = 2_000_000)]
    pub evaluations: u64,
    /// Rounds per side (alternating).
    #[arg(long, default_value_t = 15)]
    pub rounds: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn events() -> anyhow::Result<Vec<Event>> {
    let make = |ty: &str, source: &str, subject: Option<&str>| {
        let mut attributes = vec![
            ("specversion".to_owned(), "1.0".to_owned()),
            ("id".to_owned(), "bench-1".to_owned()),
            ("source".to_owned(), source.to_owned()),
            ("type".to_owned(), ty.to_owned()),
        ];
        if let Some(subject) = subject {
            attributes.push(("subject".to_owned(), subject.to_owned()));
        }
        Event::new(attributes, None).context("building a benchmark event")
    };
    Ok(vec![
        make("com.example.order.created", "a", Some("order-42"))?,
        make("org.other.thing", "a", Some("x"))?,
        make("com.example.order.created", "c", Some("x"))?,
        make("com.example.order.created", "b", None)?,
    ])
}

/// Times `evaluations` calls of `test` over the events; returns evaluations/s
/// and how many matched (which must agree between the two sides).
fn round(events: &[Event], evaluations: u64, test: &dyn Fn(&Event) -> bool) -> (f64, u64) {
    let started = Instant::now();
    let mut matched = 0u64;
    for i in 0..evaluations {
        let event = &events[(i % events.len() as u64) as usize];
        if test(black_box(event)) {
            matched += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
    (evaluations as f64 / elapsed, matched)
}

pub fn run(args: CesqlArgs) -> anyhow::Result<()> {
    let expression = parser::parse(TYPICAL_FILTER)
        .map_err(|e| anyhow::anyhow!("the benchmark filter does not parse: {e}"))?;
    // The trigger's own filter type, so the figure is what a trigger pays.
    let filter = Filter::Cesql(std::sync::Arc::new(Program::new(expression)));
    let events = events()?;
    let cesql = |event: &Event| filter.matches(event);
    let closure = |event: &Event| {
        event.ty().starts_with("com.example.")
            && matches!(event.source(), "a" | "b")
            && event.attribute("subject").is_some()
    };
    let rounds = args.rounds.max(1);
    let (mut cesql_rates, mut closure_rates) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        // Alternate which side goes first, so drift hits both alike.
        let order: [&dyn Fn(&Event) -> bool; 2] = if i % 2 == 0 {
            [&cesql, &closure]
        } else {
            [&closure, &cesql]
        };
        let first = round(&events, args.evaluations, order[0]);
        let second = round(&events, args.evaluations, order[1]);
        if first.1 != second.1 {
            anyhow::bail!(
                "the CESQL filter and the closure disagree: {} and {} matches",
                first.1,
                second.1
            );
        }
        let (c, r) = if i % 2 == 0 {
            (first, second)
        } else {
            (second, first)
        };
        cesql_rates.push(c.0);
        closure_rates.push(r.0);
    }
    let cesql_rate = median(cesql_rates);
    let closure_rate = median(closure_rates);
    let ratio = cesql_rate / closure_rate.max(f64::MIN_POSITIVE);
    if args.json {
        let report = serde_json::json!({
            "filter": TYPICAL_FILTER,
            "cesql_evaluations_per_second": cesql_rate,
            "closure_evaluations_per_second": closure_rate,
            "ratio": ratio,
            "target_ratio": TARGET_RATIO,
            "met": ratio >= TARGET_RATIO,
        });
        println!("{report}");
        return Ok(());
    }
    println!("\npilotlight-bench cesql: {TYPICAL_FILTER}");
    println!(
        "{} rounds per side, {} evaluations each, over 4 events (1 matches)\n",
        rounds, args.evaluations
    );
    println!("side        evaluations/s   ns/evaluation");
    for (side, rate) in [("closure", closure_rate), ("cesql", cesql_rate)] {
        println!(
            "{side:<10} {rate:>15.0} {:>15.1}",
            1e9 / rate.max(f64::MIN_POSITIVE)
        );
    }
    let verdict = if ratio >= TARGET_RATIO {
        "met"
    } else {
        "MISSED"
    };
    println!("\ncesql / closure = {ratio:.2}x (target >= {TARGET_RATIO}x): {verdict}");
    Ok(())
}
