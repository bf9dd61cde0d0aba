//! Authentication in an apply: the brokers and channels as EventPolicy
//! targets (with their audiences), the identities of the objects that send
//! (a policy's `from.ref`, and the tokens pilotlight signs for them), the
//! policies' status, and what a broker's or channel's status says of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Uri;

use super::{EventingObjects, Store};
use crate::api::index::ObjectIndex;
use crate::api::manifest::Loaded;
use crate::api::status::{AppliedPolicy, AuthStatus, Condition, ObjectView, Status};
use crate::api::{ObjectKey, Resource};
use crate::auth::policy::{self, PolicyOutcome, Resolved, TargetObject};
use crate::auth::{self, Gate, SenderIdentity};

/// The API group of each kind that sends with an OIDC identity of its own
/// in pilotlight.
pub(crate) fn sender_group(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "PingSource" | "ApiServerSource" | "KafkaSource" | "RabbitmqSource" => {
            "sources.knative.dev"
        }
        "Trigger" => "eventing.knative.dev",
        "Subscription" => "messaging.knative.dev",
        _ => return None,
    })
}

/// The OIDC service account of an object that sends (Knative's name).
pub(crate) fn service_account_of(kind: &str, name: &str) -> Option<String> {
    Some(auth::service_account(sender_group(kind)?, kind, name))
}

/// The subject pilotlight's tokens carry for an object that sends.
pub(crate) fn subject_of(kind: &str, key: &ObjectKey) -> Option<String> {
    Some(auth::sender_subject(
        sender_group(kind)?,
        kind,
        &key.namespace,
        &key.name,
    ))
}

/// The group of a channel kind or JobSink, for its audience.
fn target_group(kind: &str) -> &'static str {
    match kind {
        "JobSink" => "sinks.knative.dev",
        "Broker" => "eventing.knative.dev",
        _ => "messaging.knative.dev",
    }
}

/// The stores of an apply as policy targets: each Broker, each channel,
/// and each JobSink by the channel it owns.
pub(super) fn targets<'a>(
    stores: &'a BTreeMap<ObjectKey, Store<'a>>,
    objects: &'a EventingObjects<'a>,
) -> Vec<TargetObject<'a>> {
    let jobsinks: BTreeMap<&ObjectKey, &Loaded> = objects
        .addressed
        .iter()
        .map(|(loaded, channel)| (channel, *loaded))
        .collect();
    stores
        .iter()
        .map(|(path, store)| {
            let (kind, key, loaded) = match &store.channel {
                None => ("Broker", path.clone(), store.loaded),
                Some((kind, key)) => match jobsinks.get(key) {
                    Some(sink) => ("JobSink", sink.resource.metadata().key(), *sink),
                    None => (kind.as_str(), key.clone(), store.loaded),
                },
            };
            let group = target_group(kind);
            TargetObject {
                group,
                kind,
                audience: auth::audience(group, kind, &key.namespace, &key.name),
                labels: &loaded.resource.metadata().labels,
                key,
                path: path.clone(),
            }
        })
        .collect()
}

/// Resolves the apply's EventPolicies: `from.ref`s to the identities of
/// loaded objects that send.
pub(super) fn resolve(
    objects: &EventingObjects<'_>,
    targets: &[TargetObject<'_>],
    index: &ObjectIndex<'_>,
) -> Resolved {
    let policies: Vec<(ObjectKey, &crate::api::eventpolicy::EventPolicy)> = objects
        .policies
        .iter()
        .filter_map(|loaded| match &loaded.resource {
            Resource::EventPolicy(policy) => Some((loaded.resource.metadata().key(), &**policy)),
            _ => None,
        })
        .collect();
    let identity = |api_version: &str, kind: &str, key: &ObjectKey| {
        let Some(group) = sender_group(kind) else {
            return Err(format!(
                "{kind} has no OIDC identity in pilotlight (the kinds that send with one: PingSource, ApiServerSource, KafkaSource, RabbitmqSource, Trigger, Subscription); allow its sender with 'sub'"
            ));
        };
        let written = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        if !written.eq_ignore_ascii_case(group) {
            return Err(format!(
                "apiVersion {api_version} is not of {kind}'s group {group}"
            ));
        }
        let registered = crate::api::kinds::find(kind).map_or("", |k| k.kind);
        index.get(registered, key).map_err(|e| e.to_string())?;
        subject_of(kind, key).ok_or_else(|| format!("{kind} has no identity"))
    };
    policy::resolve(&policies, targets, &identity)
}

/// An EventPolicy's status: Knative's conditions (AuthenticationEnabled,
/// SubjectsResolved, Ready) and the resolved subjects.
pub(super) fn policy_view(loaded: &Loaded, outcome: &PolicyOutcome, enabled: bool) -> ObjectView {
    let mut status = if !enabled {
        Status::not_ready(
            "AuthOIDCFeatureNotEnabled",
            "authentication is off, so no EventPolicy applies: start pilotlight with --authentication-oidc (Knative's config-features authentication-oidc: enabled)",
        )
    } else if !outcome.unresolved.is_empty() {
        Status::not_ready("SubjectsNotResolved", outcome.unresolved.join("; "))
    } else {
        Status::ready()
    };
    let (authentication, reason, message) = if enabled {
        ("True", None, None)
    } else {
        (
            "False",
            Some("AuthOIDCFeatureNotEnabled"),
            Some("--authentication-oidc is off".to_owned()),
        )
    };
    status.conditions.push(Condition::new(
        "AuthenticationEnabled",
        authentication,
        reason,
        message,
    ));
    if enabled {
        let (resolved, reason, message) = if outcome.unresolved.is_empty() {
            ("True", None, None)
        } else {
            (
                "False",
                Some("SubjectsNotResolved"),
                Some(outcome.unresolved.join("; ")),
            )
        };
        status.conditions.push(Condition::new(
            "SubjectsResolved",
            resolved,
            reason,
            message,
        ));
        status.from = Some(outcome.from.clone());
    }
    let mut view = ObjectView::of(loaded, status);
    if !outcome.applies_to.is_empty() {
        // pilotlight's own note: which brokers and channels it applies to.
        view.metadata.annotations.insert(
            "pilotlight.dev/applies-to".into(),
            outcome.applies_to.join(", "),
        );
    }
    view
}

/// What a broker's or channel's status says with authentication on: its
/// audience, the policies that apply (`status.policies`) and Knative's
/// EventPoliciesReady condition.
pub(super) fn decorate_target(
    status: &mut Status,
    audience: &str,
    applied: &[String],
    resolved: &Resolved,
    namespace: &str,
    gate: &Gate,
) {
    if !gate.enabled() {
        return;
    }
    // Every address of the target takes the audience: with TLS there are
    // an https and an http one.
    let addresses = status.addresses.iter_mut().flatten();
    for address in status.address.iter_mut().chain(addresses) {
        address.audience = Some(audience.to_owned());
    }
    status.policies = Some(
        applied
            .iter()
            .map(|name| AppliedPolicy {
                api_version: policy::API_VERSION.to_owned(),
                name: name.clone(),
            })
            .collect(),
    );
    let unready: Vec<&str> = applied
        .iter()
        .filter(|name| {
            resolved
                .policies
                .get(&ObjectKey::new(namespace, (*name).clone()))
                .is_some_and(|o| !o.unresolved.is_empty())
        })
        .map(String::as_str)
        .collect();
    let condition = if applied.is_empty() {
        Condition::new(
            "EventPoliciesReady",
            "True",
            Some("DefaultAuthorizationMode"),
            Some(format!(
                "no EventPolicy applies; default authorization mode is {}",
                gate.mode().name()
            )),
        )
    } else if unready.is_empty() {
        Condition::new("EventPoliciesReady", "True", None, None)
    } else {
        Condition::new(
            "EventPoliciesReady",
            "False",
            Some("EventPoliciesNotReady"),
            Some(format!(
                "event policies {} are not ready (they apply with the subjects that resolved)",
                unready.join(", ")
            )),
        )
    };
    status.conditions.push(condition);
}

/// `status.auth` of a trigger or subscription, with authentication on.
pub(super) fn auth_status(kind: &str, key: &ObjectKey, gate: &Gate) -> Option<AuthStatus> {
    gate.enabled().then_some(())?;
    Some(AuthStatus {
        service_account_name: service_account_of(kind, &key.name)?,
    })
}

/// The identity a trigger, subscription or source sends as, with the
/// audiences of its destinations: each destination's own `audience`
/// (`explicit`), else the audience of the broker or channel at that
/// address. None with authentication off.
pub(super) fn sender_identity(
    gate: &Gate,
    ingress_url: &str,
    kind: &str,
    key: &ObjectKey,
    destinations: &[(Option<&Uri>, Option<&str>)],
) -> Option<Arc<SenderIdentity>> {
    if !gate.enabled() {
        return None;
    }
    let targets = gate.targets();
    let mut identity = SenderIdentity::new(subject_of(kind, key)?);
    for (uri, explicit) in destinations {
        let Some(uri) = uri else { continue };
        let audience = explicit.map(str::to_owned).or_else(|| {
            let text = uri.to_string();
            let path = text.strip_prefix(ingress_url)?.strip_prefix('/')?;
            let (namespace, name) = path.trim_end_matches('/').split_once('/')?;
            targets.get(namespace, name).map(|t| t.audience.clone())
        });
        identity = identity.with(uri, audience.as_deref());
    }
    Some(Arc::new(identity))
}
