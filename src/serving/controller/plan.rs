//! Which revisions of a Service run, decided from what is wanted and what
//! runs, as a plain function: the controller applies the plan.

use std::collections::BTreeSet;

use crate::api::service::TrafficRevision;
use crate::serving::history::RecordedRevision;

/// What to do with a Service's revisions.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct RevisionPlan {
    /// Wanted, recorded and not running yet.
    pub start: Vec<String>,
    /// Named by traffic but never made (a typo, or a revision retired).
    pub missing: Vec<String>,
    /// No traffic names them and more are kept than `retained`: the oldest
    /// go, with their history.
    pub retire: BTreeSet<String>,
}

/// What the plan is made from.
pub(super) struct Revisions<'a> {
    /// Every target of `spec.traffic`.
    pub traffic: &'a [TrafficRevision],
    /// The revision of the current template, when it has one.
    pub latest_created: Option<&'a str>,
    /// The newest revision that has been ready: kept, since
    /// `latestRevision` traffic may still go to it.
    pub latest_ready: Option<&'a str>,
    /// Every recorded revision, oldest first.
    pub history: &'a [RecordedRevision],
    /// Revisions without traffic kept (`--revision-retention`).
    pub retained: usize,
}

/// Runs the latest revision and every revision that traffic names; retires
/// idle ones beyond `retained`, oldest first.
pub(super) fn plan_revisions(
    revisions: &Revisions<'_>,
    is_running: impl Fn(&str) -> bool,
) -> RevisionPlan {
    let mut wanted: BTreeSet<&str> = revisions
        .traffic
        .iter()
        .filter_map(|target| match target {
            TrafficRevision::Named(name) => Some(name.as_str()),
            TrafficRevision::Latest => None,
        })
        .collect();
    wanted.extend(revisions.latest_created);
    let mut plan = RevisionPlan::default();
    for name in &wanted {
        if is_running(name) {
            continue;
        }
        if revisions.history.iter().any(|r| r.name == *name) {
            plan.start.push((*name).to_owned());
        } else {
            plan.missing.push((*name).to_owned());
        }
    }
    let idle: Vec<&str> = revisions
        .history
        .iter()
        .map(|r| r.name.as_str())
        .filter(|name| !wanted.contains(name) && Some(*name) != revisions.latest_ready)
        .collect();
    let excess = idle.len().saturating_sub(revisions.retained);
    plan.retire = idle.iter().take(excess).map(|n| (*n).to_owned()).collect();
    plan
}

/// The revisions' names, for messages.
pub(super) fn names(history: &[RecordedRevision]) -> String {
    if history.is_empty() {
        return "none".into();
    }
    history
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(names: &[&str]) -> Vec<RecordedRevision> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| RecordedRevision {
                name: (*name).to_owned(),
                template: serde_json::Value::Null,
                created: chrono::DateTime::UNIX_EPOCH + chrono::Duration::seconds(i as i64),
            })
            .collect()
    }

    #[test]
    fn the_latest_and_every_named_revision_start_and_a_typo_is_missing() {
        let history = history(&["a-00001", "a-00002", "a-00003"]);
        let traffic = [
            TrafficRevision::Named("a-00001".into()),
            TrafficRevision::Named("a-00009".into()),
            TrafficRevision::Latest,
        ];
        let plan = plan_revisions(
            &Revisions {
                traffic: &traffic,
                latest_created: Some("a-00003"),
                latest_ready: None,
                history: &history,
                retained: 20,
            },
            |name| name == "a-00003",
        );
        assert_eq!(plan.start, ["a-00001"]);
        assert_eq!(plan.missing, ["a-00009"]);
        assert!(plan.retire.is_empty());
    }

    #[test]
    fn idle_revisions_beyond_the_retention_go_oldest_first_but_never_the_latest_ready() {
        let history = history(&["a-00001", "a-00002", "a-00003", "a-00004", "a-00005"]);
        let plan = plan_revisions(
            &Revisions {
                traffic: &[TrafficRevision::Latest],
                latest_created: Some("a-00005"),
                latest_ready: Some("a-00001"),
                history: &history,
                retained: 1,
            },
            |_| true,
        );
        // Idle: 2, 3, 4 (1 is the latest ready, 5 the latest created).
        assert_eq!(
            plan.retire.into_iter().collect::<Vec<_>>(),
            ["a-00002", "a-00003"]
        );
        assert!(plan.start.is_empty());
    }
}
