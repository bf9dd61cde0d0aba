//! What an error of a revision's Deployment or EndpointSlice watch means,
//! and how loudly to say it: only a 403 is about pilotlight's role (and
//! gets the hint to check it); a `410 Expired` after an API server restart
//! is routine (the watcher relists by itself), and an unreachable or failing
//! API server is said as such.

use kube::runtime::watcher;

/// How loudly a watch error is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Loudness {
    /// Expected in a healthy cluster: the watcher recovers by itself.
    Debug,
    /// Something an operator may have to act on.
    Warn,
}

/// A watch error, worded for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WatchProblem {
    pub loudness: Loudness,
    pub message: String,
}

/// What the watch of `what` (such as "the revision's Deployment") failing
/// with `error` means. `rbac` is what pilotlight's role must allow, said
/// only for a 403.
pub(super) fn classify(error: &watcher::Error, what: &str, rbac: &str) -> WatchProblem {
    let warn = |message: String| WatchProblem {
        loudness: Loudness::Warn,
        message,
    };
    let status = match error {
        watcher::Error::WatchError(status) => Some(status.as_ref()),
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.as_ref()),
        _ => None,
    };
    match status {
        Some(status) if status.code == 403 => warn(format!(
            "cannot watch {what}: the API server refused it ({}); check that pilotlight's role may {rbac} (deploy/rbac.yaml)",
            status.message
        )),
        Some(status) if status.code == 410 => WatchProblem {
            loudness: Loudness::Debug,
            message: format!(
                "the watch of {what} expired (410, as after an API server restart); listing it again"
            ),
        },
        Some(status) => warn(format!(
            "the API server failed the watch of {what} ({} {}); retrying",
            status.code, status.message
        )),
        None => match error {
            watcher::Error::NoResourceVersion => warn(format!(
                "the watch of {what} got an object without a resourceVersion; listing it again"
            )),
            other => warn(format!(
                "cannot reach the API server to watch {what} ({}); retrying",
                source_of(other)
            )),
        },
    }
}

/// The innermost cause: "connection refused" rather than kube's wrapping.
fn source_of(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// Logs a watch error at its loudness.
pub(super) fn log(error: &watcher::Error, what: &str, rbac: &str, object: &str) {
    let problem = classify(error, what, rbac);
    match problem.loudness {
        Loudness::Debug => tracing::debug!(object, "{}", problem.message),
        Loudness::Warn => tracing::warn!(object, "{}", problem.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHAT: &str = "the revision's Deployment";
    const RBAC: &str = "list and watch apps deployments in this namespace";

    fn status(code: u16, message: &str) -> Box<kube::core::Status> {
        let mut status = kube::core::Status::failure(message, "");
        status.code = code;
        Box::new(status)
    }

    fn refused() -> kube::Error {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        kube::Error::Service(Box::new(io))
    }

    #[test]
    fn only_a_403_gets_the_rbac_hint() {
        let cases = [
            (
                watcher::Error::WatchStartFailed(kube::Error::Api(status(403, "forbidden"))),
                Loudness::Warn,
                "the API server refused it (forbidden); check that pilotlight's role may list and watch apps deployments",
            ),
            (
                watcher::Error::InitialListFailed(kube::Error::Api(status(403, "no"))),
                Loudness::Warn,
                "check that pilotlight's role may",
            ),
            (
                watcher::Error::WatchError(status(410, "too old resource version")),
                Loudness::Debug,
                "expired (410, as after an API server restart); listing it again",
            ),
            (
                watcher::Error::WatchStartFailed(kube::Error::Api(status(410, "Expired"))),
                Loudness::Debug,
                "expired (410",
            ),
            (
                watcher::Error::WatchFailed(refused()),
                Loudness::Warn,
                "cannot reach the API server to watch the revision's Deployment (connection refused); retrying",
            ),
            (
                watcher::Error::InitialListFailed(refused()),
                Loudness::Warn,
                "cannot reach the API server",
            ),
            (
                watcher::Error::WatchError(status(500, "etcd is away")),
                Loudness::Warn,
                "the API server failed the watch of the revision's Deployment (500 etcd is away); retrying",
            ),
        ];
        for (error, loudness, wording) in cases {
            let problem = classify(&error, WHAT, RBAC);
            assert_eq!(problem.loudness, loudness, "{error}");
            assert!(problem.message.contains(wording), "{}", problem.message);
            let hinted = problem.message.contains("role");
            let forbidden = problem.message.contains("refused it");
            assert_eq!(hinted, forbidden, "{}", problem.message);
        }
    }
}
