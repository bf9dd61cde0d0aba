//! Live health: what a running part that talks to something outside (a
//! broker's RabbitMQ or Kafka, a source's API server, queue or topic)
//! reports between applies, and how it becomes the object's Ready
//! condition.
//!
//! The part writes a [`HealthCell`] from its own task; the control plane
//! reads it whenever status is asked for (the admin API, `pilotlight get`,
//! Kubernetes status writes), so the status follows the connection without
//! a restart or a new apply.
//!
//! A connection that was up and fails may come back at once (RabbitMQ
//! closing an idle connection, a Kafka client reconnecting to another
//! broker): [`HealthCell::failing`] keeps such an object Ready for
//! [`GRACE`], and shows NotReady only if it is still failing then. A part
//! that has not connected yet shows its failure at once.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::api::status::Status;

/// How long a Ready part may fail before its object shows NotReady.
pub(crate) const GRACE: Duration = Duration::from_secs(5);

/// A part's health, shown in its object's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Starting: nothing to say yet.
    Unknown,
    Ready,
    /// `reason` is CamelCase (`BackendUnavailable`), `message` says what
    /// was wrong, where, and what to do.
    NotReady {
        reason: String,
        message: String,
    },
}

impl Health {
    pub(crate) fn not_ready(reason: &str, message: impl Into<String>) -> Health {
        Health::NotReady {
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    /// The Ready condition this health stands for; `what` names the object
    /// in the message of a part still starting ("source", "broker").
    pub(crate) fn status(&self, what: &str) -> Status {
        match self {
            Health::Ready => Status::ready(),
            Health::Unknown => Status::unknown("Starting", format!("the {what} is starting")),
            Health::NotReady { reason, message } => Status::not_ready(reason, message.clone()),
        }
    }

    /// `applied` (what the last apply made of the object) as this live
    /// health leaves it: an object the apply found Ready is only as ready as
    /// its connection; one the apply found not Ready says why already. The
    /// other fields (a broker's address) stay.
    pub(crate) fn overlay(&self, mut applied: Status, what: &str) -> Status {
        if applied.is_ready() && *self != Health::Ready {
            applied.conditions = self.status(what).conditions;
        }
        applied
    }
}

/// The health one part reports, shared with the control plane.
#[derive(Debug, Default)]
pub struct HealthCell {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The health last set.
    health: Health,
    /// A failure of a part that was Ready, not shown until [`GRACE`] passed.
    failing: Option<Failing>,
}

impl Default for State {
    fn default() -> Self {
        State {
            health: Health::Unknown,
            failing: None,
        }
    }
}

#[derive(Debug)]
struct Failing {
    since: Instant,
    reason: String,
    message: String,
}

impl HealthCell {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The health to show now.
    pub fn get(&self) -> Health {
        let state = self.state();
        match &state.failing {
            Some(failing) if failing.since.elapsed() >= GRACE => {
                Health::not_ready(&failing.reason, failing.message.clone())
            }
            _ => state.health.clone(),
        }
    }

    /// Sets the health, shown at once (a failure that will not pass by
    /// itself, or the connection being up again).
    pub fn set(&self, health: Health) {
        let mut state = self.state();
        state.health = health;
        state.failing = None;
    }

    /// Reports a failure that may pass by itself: a lost connection being
    /// re-established, a failed connection attempt, a probe that got no
    /// answer. A part that was Ready stays Ready for [`GRACE`] from its
    /// first such failure (the message is the latest); one that was not
    /// shows it at once.
    pub(crate) fn failing(&self, reason: &str, message: impl Into<String>) {
        let message = message.into();
        let mut state = self.state();
        if state.health != Health::Ready {
            state.health = Health::not_ready(reason, message);
            return;
        }
        match &mut state.failing {
            Some(failing) => {
                failing.reason = reason.to_owned();
                failing.message = message;
            }
            None => {
                state.failing = Some(Failing {
                    since: Instant::now(),
                    reason: reason.to_owned(),
                    message,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_that_never_connected_shows_its_failure_at_once() {
        let cell = HealthCell::default();
        assert_eq!(cell.get(), Health::Unknown);
        cell.failing("BackendUnavailable", "NOT_ALLOWED - vhost  not found");
        assert_eq!(
            cell.get(),
            Health::not_ready("BackendUnavailable", "NOT_ALLOWED - vhost  not found")
        );
        // Still failing: the latest message shows.
        cell.failing("BackendUnavailable", "ACCESS_REFUSED");
        assert_eq!(
            cell.get(),
            Health::not_ready("BackendUnavailable", "ACCESS_REFUSED")
        );
        cell.set(Health::Ready);
        assert_eq!(cell.get(), Health::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn one_transient_failure_while_ready_does_not_flap() {
        let cell = HealthCell::default();
        cell.set(Health::Ready);
        cell.failing("BackendUnavailable", "connection reset");
        assert_eq!(cell.get(), Health::Ready, "within the grace");
        tokio::time::advance(GRACE / 2).await;
        cell.set(Health::Ready);
        tokio::time::advance(GRACE).await;
        assert_eq!(cell.get(), Health::Ready, "it came back in time");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_that_outlasts_the_grace_shows_with_the_latest_message() {
        let cell = HealthCell::default();
        cell.set(Health::Ready);
        cell.failing("BackendUnavailable", "connection reset");
        tokio::time::advance(GRACE / 2).await;
        cell.failing("BackendUnavailable", "connection refused");
        assert_eq!(cell.get(), Health::Ready);
        // The grace runs from the first failure, not the latest.
        tokio::time::advance(GRACE / 2).await;
        assert_eq!(
            cell.get(),
            Health::not_ready("BackendUnavailable", "connection refused")
        );
        cell.set(Health::Ready);
        assert_eq!(cell.get(), Health::Ready);
    }

    #[test]
    fn the_overlay_only_takes_readiness_away() {
        let mut applied = Status::ready();
        applied.address = Some(crate::api::status::Address::url("http://broker"));
        let down = Health::not_ready("BackendUnavailable", "ACCESS_REFUSED");
        let shown = down.overlay(applied.clone(), "broker");
        assert!(shown.has_reason("BackendUnavailable"));
        assert_eq!(shown.address, applied.address, "the address stays");
        assert_eq!(Health::Ready.overlay(applied.clone(), "broker"), applied);
        let starting = Health::Unknown.overlay(applied, "broker");
        assert!(starting.has_reason("Starting"));
        // What the apply refused says so, whatever the connection does.
        let invalid = Status::not_ready("BrokerConfigInvalid", "spec.config");
        assert_eq!(Health::Ready.overlay(invalid.clone(), "broker"), invalid);
    }
}
