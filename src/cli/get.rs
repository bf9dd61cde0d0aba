//! `pilotlight get brokers|triggers|ksvc|revisions|routes|sources|channels|
//! subscriptions|sequences|parallels|jobsinks|eventpolicies`: a kubectl-style view of a
//! running server.

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use super::http::admin_get;
use crate::api::status::{ObjectList, ObjectView, ViewMeta};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(alias = "broker")]
    Brokers,
    #[value(alias = "trigger")]
    Triggers,
    /// Knative Services (`kn service list`).
    #[value(name = "ksvc", aliases = ["services", "service", "kservice"])]
    Services,
    #[value(alias = "revision", alias = "rev")]
    Revisions,
    #[value(alias = "route")]
    Routes,
    /// Every source kind (PingSource, ApiServerSource, ...).
    #[value(alias = "source")]
    Sources,
    /// Every channel kind (InMemoryChannel, KafkaChannel, Channel).
    #[value(alias = "channel", alias = "ch")]
    Channels,
    #[value(alias = "subscription", alias = "sub")]
    Subscriptions,
    #[value(alias = "sequence")]
    Sequences,
    #[value(alias = "parallel")]
    Parallels,
    /// JobSinks, with a count of their jobs and the last one's outcome (`-o
    /// yaml` lists each job with its exit code and last output lines).
    #[value(alias = "jobsink")]
    Jobsinks,
    /// EventPolicies, with the subjects they resolved to and what they
    /// apply to.
    #[value(alias = "eventpolicy", alias = "ep")]
    Eventpolicies,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Yaml,
    Json,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// What to list.
    #[arg(value_enum)]
    pub kind: Kind,
    /// Only this namespace (default: all).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Print the objects as YAML or JSON instead of a table.
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,
    /// The admin listener of the running pilotlight.
    #[arg(long, env = "PILOTLIGHT_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: String,
}

pub(crate) async fn get(args: GetArgs) -> anyhow::Result<()> {
    let list = fetch(&args).await?;
    for error in &list.errors {
        eprintln!("warning: manifest refused: {error}");
    }
    let text = match args.output {
        Some(Output::Json) => serde_json::to_string_pretty(&list.items)? + "\n",
        Some(Output::Yaml) => serde_saphyr::to_string(&list.items).context("rendering YAML")?,
        None => table(args.kind, &list.items),
    };
    print!("{text}");
    Ok(())
}

async fn fetch(args: &GetArgs) -> anyhow::Result<ObjectList> {
    let path = match args.kind {
        Kind::Brokers => "brokers",
        Kind::Triggers => "triggers",
        Kind::Services => "services",
        Kind::Revisions => "revisions",
        Kind::Routes => "routes",
        Kind::Sources => "sources",
        Kind::Channels => "channels",
        Kind::Subscriptions => "subscriptions",
        Kind::Sequences => "sequences",
        Kind::Parallels => "parallels",
        Kind::Jobsinks => "jobsinks",
        Kind::Eventpolicies => "eventpolicies",
    };
    let query = args
        .namespace
        .as_ref()
        .map(|ns| format!("?namespace={ns}"))
        .unwrap_or_default();
    let path = format!("/api/v1/{path}{query}");
    let response = admin_get(&args.admin, &path).await?;
    serde_json::from_slice(&response.body).with_context(|| {
        format!(
            "{path} on {} did not answer with a list of objects",
            args.admin
        )
    })
}

/// Renders a kubectl-like table, then the messages of what is not ready.
pub(crate) fn table(kind: Kind, items: &[ObjectView]) -> String {
    let mut rows = vec![header(columns(kind))];
    rows.extend(items.iter().map(|item| row(kind, item)));
    let mut out = aligned(&rows);
    out.push_str(&messages(items));
    out
}

/// The column names of each kind, as `kubectl get` and `kn` name them.
fn columns(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Services => &[
            "NAMESPACE",
            "NAME",
            "URL",
            "LATESTCREATED",
            "LATESTREADY",
            "READY",
            "REASON",
        ],
        Kind::Revisions => &[
            "NAMESPACE",
            "NAME",
            "SERVICE",
            "RUNTIME",
            "DESIRED",
            "ACTUAL",
            "RESTARTS",
            "READY",
            "REASON",
        ],
        Kind::Routes => &["NAMESPACE", "NAME", "URL", "TRAFFIC", "READY", "REASON"],
        Kind::Sources => &["NAMESPACE", "NAME", "KIND", "SINK", "READY", "REASON"],
        Kind::Channels => &["NAMESPACE", "NAME", "KIND", "URL", "READY", "REASON"],
        Kind::Subscriptions => &[
            "NAMESPACE",
            "NAME",
            "CHANNEL",
            "SUBSCRIBER_URI",
            "REPLY_URI",
            "READY",
            "REASON",
        ],
        Kind::Sequences | Kind::Parallels => &["NAMESPACE", "NAME", "URL", "READY", "REASON"],
        Kind::Jobsinks => &[
            "NAMESPACE",
            "NAME",
            "URL",
            "RUNTIME",
            "JOBS",
            "LAST",
            "READY",
            "REASON",
        ],
        Kind::Eventpolicies => &["NAMESPACE", "NAME", "FROM", "APPLIES_TO", "READY", "REASON"],
        Kind::Brokers => &["NAMESPACE", "NAME", "CLASS", "URL", "READY", "REASON"],
        Kind::Triggers => &[
            "NAMESPACE",
            "NAME",
            "BROKER",
            "SUBSCRIBER_URI",
            "READY",
            "REASON",
            "BACKLOG",
        ],
    }
}

/// One object's row: every kind starts with its namespace and name and has
/// READY and REASON from the Ready condition; the cells between (and, for
/// triggers, after) are the kind's own, in [`columns`]' order.
fn row(kind: Kind, item: &ObjectView) -> Vec<String> {
    let ready = item.status.ready_condition();
    let status = ready.map_or("Unknown", |c| c.status.as_str()).to_owned();
    let reason = ready.and_then(|c| c.reason.clone()).unwrap_or_default();
    let mut row = vec![item.metadata.namespace.clone(), item.metadata.name.clone()];
    row.extend(details(kind, item));
    row.extend([status, reason]);
    if kind == Kind::Triggers {
        row.push(
            item.status
                .backlog
                .map(|b| b.to_string())
                .unwrap_or_default(),
        );
    }
    row
}

/// The cells of a kind between NAME and READY.
fn details(kind: Kind, item: &ObjectView) -> Vec<String> {
    let serving = || item.status.serving.as_deref().cloned().unwrap_or_default();
    let address = || {
        item.status
            .address
            .as_ref()
            .map(|a| a.url.clone())
            .unwrap_or_default()
    };
    match kind {
        Kind::Brokers => vec![
            // The server fills the annotation in for brokers without one.
            item.metadata
                .annotations
                .get(crate::api::broker::CLASS_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
            address(),
        ],
        Kind::Services => {
            let s = serving();
            vec![
                s.url.clone().unwrap_or_default(),
                s.latest_created_revision_name.clone().unwrap_or_default(),
                s.latest_ready_revision_name.clone().unwrap_or_default(),
            ]
        }
        Kind::Revisions => {
            let s = serving();
            let count = |n: Option<u32>| n.map(|n| n.to_string()).unwrap_or_default();
            vec![
                item.metadata
                    .annotations
                    .get("serving.knative.dev/service")
                    .cloned()
                    .unwrap_or_default(),
                s.runtime.clone().unwrap_or_default(),
                count(s.desired_replicas),
                count(s.actual_replicas),
                count(s.restarts.or(Some(0))),
            ]
        }
        Kind::Routes => {
            let s = serving();
            vec![s.url.clone().unwrap_or_default(), traffic(&s)]
        }
        Kind::Sources => vec![
            item.kind.clone(),
            item.status.sink_uri.clone().unwrap_or_default(),
        ],
        Kind::Channels => vec![item.kind.clone(), address()],
        Kind::Subscriptions => {
            let physical = item
                .status
                .messaging
                .as_ref()
                .and_then(|m| m.physical_subscription.clone())
                .unwrap_or_default();
            vec![
                item.spec
                    .pointer("/channel/name")
                    .and_then(|b| b.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                physical.subscriber_uri.unwrap_or_default(),
                physical.reply_uri.unwrap_or_default(),
            ]
        }
        Kind::Sequences | Kind::Parallels => vec![address()],
        Kind::Jobsinks => {
            let jobs = item.status.jobs.as_deref().unwrap_or_default();
            vec![
                item.status
                    .address
                    .as_ref()
                    .map(|a| a.url.clone())
                    .unwrap_or_default(),
                item.metadata
                    .annotations
                    .get("pilotlight.dev/runtime")
                    .cloned()
                    .unwrap_or_default(),
                job_counts(jobs),
                jobs.iter()
                    .find(|j| !j.is_running())
                    .map(last_job)
                    .unwrap_or_default(),
            ]
        }
        Kind::Eventpolicies => vec![
            item.status.from.as_deref().unwrap_or_default().join(","),
            item.metadata
                .annotations
                .get("pilotlight.dev/applies-to")
                .cloned()
                .unwrap_or_default(),
        ],
        Kind::Triggers => vec![
            item.spec
                .get("broker")
                .and_then(|b| b.as_str())
                .unwrap_or_default()
                .to_owned(),
            item.status.subscriber_uri.clone().unwrap_or_default(),
        ],
    }
}

/// Pads every column to its widest cell, three spaces apart, with no
/// trailing blanks, as kubectl prints.
fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// Why each object that is not ready is not, below the table: the table
/// has room for a reason, not for the message that says what to do.
fn messages(items: &[ObjectView]) -> String {
    let mut out = String::new();
    for item in items {
        let Some(condition) = item.status.ready_condition() else {
            continue;
        };
        let Some(message) = condition.message.as_deref().filter(|m| !m.is_empty()) else {
            continue;
        };
        if condition.status == "True" {
            continue;
        }
        if out.is_empty() {
            out.push('\n');
        }
        let ViewMeta {
            namespace, name, ..
        } = &item.metadata;
        out.push_str(&format!("{namespace}/{name}: {message}\n"));
    }
    out
}

/// `2 running, 5 succeeded, 1 failed`, leaving out what is zero.
fn job_counts(jobs: &[crate::api::jobsink::JobRecord]) -> String {
    use crate::api::jobsink::JobRecord;
    let count = |state: &str| jobs.iter().filter(|j| j.state == state).count();
    [
        (count(JobRecord::RUNNING), "running"),
        (count(JobRecord::SUCCEEDED), "succeeded"),
        (count(JobRecord::FAILED), "failed"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect::<Vec<_>>()
    .join(", ")
}

/// The last finished job: `Succeeded` or `Failed (exit 3)`.
fn last_job(job: &crate::api::jobsink::JobRecord) -> String {
    match (job.state.as_str(), job.exit_code) {
        ("Failed", Some(code)) => format!("Failed (exit {code})"),
        (state, _) => state.to_owned(),
    }
}

fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// `90% -> hello-00002, 10% -> hello-00001 (tag old)`, as `kn route list` sums it up.
fn traffic(status: &crate::api::status::ServingStatus) -> String {
    status
        .traffic
        .iter()
        .flatten()
        .map(|t| {
            let tag = t
                .tag
                .as_ref()
                .map(|t| format!(" (tag {t})"))
                .unwrap_or_default();
            format!("{}% -> {}{tag}", t.percent, t.revision_name)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::Status;

    #[test]
    fn brokers_show_their_class() {
        let view = ObjectView {
            api_version: "eventing.knative.dev/v1".into(),
            kind: "Broker".into(),
            metadata: ViewMeta {
                name: "orders".into(),
                namespace: "shop".into(),
                annotations: [(
                    crate::api::broker::CLASS_ANNOTATION.to_owned(),
                    "KafkaNamespaced".to_owned(),
                )]
                .into(),
                source: String::new(),
                owner_references: Vec::new(),
            },
            spec: serde_json::Value::Null,
            status: Status::not_ready("BackendFailed", "no Kafka"),
        };
        let text = table(Kind::Brokers, &[view]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE   NAME     CLASS"), "{text}");
        assert!(
            lines[1].starts_with("shop        orders   KafkaNamespaced"),
            "{text}"
        );
    }
}
