//! The Grafana dashboard in deploy/grafana queries only metrics that a
//! running pilotlight exports: every metric family its queries name must be
//! in `/metrics` once traffic has made each series exist (an event through
//! a broker to a trigger that delivers, one that dead-letters and one that
//! drops, a rejected event, and a request to a Service at zero).

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::{Subscriber, TestServer, broker, request, send, trigger, wait_accepted};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/pilotlight-dashboard.json"
);
const WAIT: Duration = Duration::from_secs(30);
const HELLO: &str = env!("CARGO_BIN_EXE_pilotlight");

/// Suffixes Prometheus adds to a histogram's (or summary's) family name.
const SERIES_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

/// A metric family: a series name without its histogram suffix.
fn family(name: &str) -> &str {
    SERIES_SUFFIXES
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// Every `pilotlight_…` identifier in a PromQL expression. pilotlight's
/// metrics all start so, and no PromQL function, keyword or label does,
/// so this finds exactly the metric names (label values are quoted
/// strings and are skipped).
fn metric_names(expr: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut from = 0;
    while let Some(found) = expr[from..].find("pilotlight_") {
        let at = from + found;
        let tail = &expr[at..];
        let end = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        let before = expr[..at].chars().next_back();
        // Inside a string (a label value) when an odd number of quotes
        // precede it; PromQL label values have no escaped quotes here.
        let quoted = expr[..at].matches('"').count() % 2 == 1;
        if !before.is_some_and(is_ident) && !quoted {
            names.push(tail[..end].to_owned());
        }
        from = at + end;
    }
    names
}

/// The PromQL of the dashboard: each panel target's `expr` and each
/// template variable's query.
fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition" | "query", serde_json::Value::String(q)) => {
                        out.push(q.clone())
                    }
                    _ => queries(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The metric families the dashboard queries.
fn dashboard_families() -> BTreeSet<String> {
    let text = std::fs::read_to_string(DASHBOARD).expect("the dashboard file");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut all = Vec::new();
    queries(&dashboard, &mut all);
    all.iter()
        .flat_map(|q| metric_names(q))
        .map(|name| family(&name).to_owned())
        .collect()
}

/// The metric families in a Prometheus text exposition.
fn exported_families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(|name| family(name).to_owned())
        .collect()
}

/// The families in `wanted` that `exposition` lacks.
fn missing(wanted: &BTreeSet<String>, exposition: &str) -> Vec<String> {
    let exported = exported_families(exposition);
    wanted.difference(&exported).cloned().collect()
}

#[test]
fn metric_names_are_found_in_promql_and_missing_ones_are_named() {
    let expr = r#"histogram_quantile(0.99, sum by (revision, le) (rate(pilotlight_revision_request_seconds_bucket{revision=~"$revision", x="pilotlight_not_a_metric"}[5m]))) / pilotlight_a:b"#;
    assert_eq!(
        metric_names(expr),
        [
            "pilotlight_revision_request_seconds_bucket",
            "pilotlight_a:b"
        ]
    );
    let exposition = "# TYPE pilotlight_x_seconds histogram\npilotlight_x_seconds_bucket{le=\"1\"} 0\npilotlight_y_total 3\n";
    let wanted: BTreeSet<String> = ["pilotlight_x_seconds", "pilotlight_y_total", "pilotlight_z"]
        .map(String::from)
        .into();
    assert_eq!(missing(&wanted, exposition), ["pilotlight_z"]);
    assert!(
        dashboard_families().len() >= 15,
        "{:?}",
        dashboard_families()
    );
}

fn cold_service(name: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/initial-scale: \"0\"\n    spec:\n      containers:\n        - command: [\"{HELLO}\", hello]\n"
    )
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let wanted = dashboard_families();
    let ok = Subscriber::accepting().await;
    let bad = Subscriber::failing().await;
    let dead_letters = Subscriber::accepting().await;
    let manifests = [
        broker("board", "").as_str(),
        &trigger("board-ok", "board", &ok.url("/"), ""),
        &trigger(
            "board-dead-letters",
            "board",
            &bad.url("/"),
            &support::with_dead_letters(0, &dead_letters.url("/")),
        ),
        &trigger(
            "board-drops",
            "board",
            &bad.url("/"),
            "  delivery:\n    retry: 0\n",
        ),
        &cold_service("board-cold"),
    ]
    .join("\n---\n");
    let s = TestServer::start(&[("all.yaml", &manifests)]).await;
    for name in ["board-ok", "board-dead-letters", "board-drops"] {
        s.wait_ready_condition("triggers", name, "True", &[], WAIT)
            .await;
    }
    // A revision at zero has both instance gauges, at 0, before any request.
    for gauge in [
        "pilotlight_revision_desired_instances",
        "pilotlight_revision_ready_instances",
    ] {
        let line = format!("{gauge}{{revision=\"default/board-cold-00001\"}} 0");
        support::wait_until(&format!("/metrics has {line}"), WAIT, async || {
            let scrape = request(Method::GET, &s.admin_url("/metrics"), &[], "").await;
            scrape.body.lines().any(|l| l == line)
        })
        .await;
    }
    let url = s.broker_url("default", "board");
    wait_accepted(&url, "board-1", WAIT).await;
    // No ce-id: rejected as invalid.
    let invalid = request(Method::POST, &url, &[("ce-specversion", "1.0")], "").await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST, "{}", invalid.body);
    ok.wait_for(1, WAIT).await;
    dead_letters.wait_for(1, WAIT).await;
    let cold = s.get_host("board-cold.default.localhost", "/").await;
    assert_eq!(cold.status, StatusCode::OK, "{}", cold.body);
    let _ = send(&url, "board-2", "demo").await;

    // Deliveries and drops happen in the background: scrape until every
    // family is there, and name the missing ones if some never come.
    let deadline = Instant::now() + WAIT;
    let lacking = loop {
        let scrape = request(Method::GET, &s.admin_url("/metrics"), &[], "").await;
        assert_eq!(scrape.status, StatusCode::OK);
        let lacking = missing(&wanted, &scrape.body);
        if lacking.is_empty() || Instant::now() > deadline {
            break lacking;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        lacking.is_empty(),
        "the dashboard queries metrics /metrics does not have: {lacking:?}"
    );
    s.server.shutdown().await;
}
