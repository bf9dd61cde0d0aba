//! EventPolicies resolved and applied, as Knative does:
//!
//! - a policy applies to the brokers and channels of its namespace that
//!   `spec.to` names (by reference or label selector), or to all of them
//!   when `spec.to` is empty;
//! - its subjects are `spec.from`'s: each `sub` as written (a trailing `*`
//!   matches any suffix), each `ref` as the subject of that object's OIDC
//!   identity (a source's, a trigger's, a subscription's);
//! - a sender may send an event to a target when one of the target's
//!   policies has its subject and the event passes that policy's
//!   `spec.filters`; a target no policy applies to follows the default
//!   authorization mode.
//!
//! A policy whose references do not all resolve is not Ready, and still
//! applies with the subjects that did resolve, so that a typo in a policy
//! never opens a broker to everyone (Knative drops such a policy from the
//! broker's list until it is Ready).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::AuthorizationMode;
use crate::api::ObjectKey;
use crate::api::eventpolicy::EventPolicy;
use crate::api::filter::Filter;

/// The API version of the policies a target lists in `status.policies`.
pub(crate) const API_VERSION: &str = "eventing.knative.dev/v1alpha1";

/// A policy as the ingress applies it.
#[derive(Debug)]
pub(crate) struct CompiledPolicy {
    pub name: String,
    /// Exact subjects, and prefixes (written with a trailing `*`).
    subjects: Vec<String>,
    /// None: every event passes.
    filter: Option<Filter>,
}

impl CompiledPolicy {
    fn admits(&self, subject: &str) -> bool {
        self.subjects
            .iter()
            .any(|allowed| match allowed.strip_suffix('*') {
                Some(prefix) => subject.starts_with(prefix),
                None => allowed.eq_ignore_ascii_case(subject),
            })
    }
}

/// One broker or channel, as the ingress sees it.
#[derive(Debug)]
pub(crate) struct Target {
    /// What it is, for messages: `broker default/orders`.
    pub display: String,
    pub audience: String,
    pub policies: Vec<Arc<CompiledPolicy>>,
}

/// The ingress's targets, by the `/{namespace}/{name}` they are served at
/// (looked up without allocating).
#[derive(Debug, Default)]
pub(crate) struct Targets {
    by_path: HashMap<String, HashMap<String, Target>>,
}

impl Targets {
    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<&Target> {
        self.by_path.get(namespace)?.get(name)
    }
}

/// A broker or channel a policy may apply to.
pub(crate) struct TargetObject<'a> {
    /// Its API group and kind, as `spec.to` names them.
    pub group: &'a str,
    pub kind: &'a str,
    pub key: ObjectKey,
    pub labels: &'a BTreeMap<String, String>,
    /// Where the ingress serves it (a channel's `{name}-kn-channel`).
    pub path: ObjectKey,
    pub audience: String,
}

/// What resolving made of one policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct PolicyOutcome {
    /// `status.from`: the subjects, resolved.
    pub from: Vec<String>,
    /// The references in `spec.from` that did not resolve, and why.
    pub unresolved: Vec<String>,
    /// The targets it applies to, as `Kind name`.
    pub applies_to: Vec<String>,
}

/// Everything resolved from one apply's policies and targets.
#[derive(Default)]
pub(crate) struct Resolved {
    pub targets: Targets,
    pub policies: BTreeMap<ObjectKey, PolicyOutcome>,
    /// Each target (by kind and key) with the names of its policies.
    pub applied: BTreeMap<(String, ObjectKey), Vec<String>>,
}

/// Resolves `policies` against `targets`; `identity` gives the subject of
/// an object that sends (by apiVersion, kind and key), or why it has none.
pub(crate) fn resolve(
    policies: &[(ObjectKey, &EventPolicy)],
    targets: &[TargetObject<'_>],
    identity: &dyn Fn(&str, &str, &ObjectKey) -> Result<String, String>,
) -> Resolved {
    let mut resolved = Resolved::default();
    let mut compiled_of: BTreeMap<ObjectKey, Arc<CompiledPolicy>> = BTreeMap::new();
    for (key, policy) in policies {
        let mut outcome = PolicyOutcome::default();
        for (i, from) in policy.spec.from.iter().enumerate() {
            match (&from.sub, &from.reference) {
                (Some(sub), _) => outcome.from.push(sub.clone()),
                (None, Some(reference)) => {
                    let namespace = reference.namespace.as_deref().unwrap_or(&key.namespace);
                    let of = ObjectKey::new(namespace, reference.name.clone());
                    match identity(&reference.api_version, &reference.kind, &of) {
                        Ok(subject) => outcome.from.push(subject),
                        Err(why) => outcome
                            .unresolved
                            .push(format!("spec.from[{i}].ref: {why}")),
                    }
                }
                (None, None) => {}
            }
        }
        let filter = policy
            .compile_filters()
            .ok()
            .filter(|f| *f != Filter::Everything);
        compiled_of.insert(
            key.clone(),
            Arc::new(CompiledPolicy {
                name: key.name.clone(),
                subjects: outcome.from.clone(),
                filter,
            }),
        );
        resolved.policies.insert(key.clone(), outcome);
    }
    for target in targets {
        let mut applying = Vec::new();
        for (key, policy) in policies {
            if key.namespace != target.key.namespace || !applies(policy, target) {
                continue;
            }
            if let Some(compiled) = compiled_of.get(key) {
                applying.push(compiled.clone());
            }
            if let Some(outcome) = resolved.policies.get_mut(key) {
                outcome
                    .applies_to
                    .push(format!("{} {}", target.kind, target.key.name));
            }
        }
        resolved.applied.insert(
            (target.kind.to_owned(), target.key.clone()),
            applying.iter().map(|p| p.name.clone()).collect(),
        );
        resolved
            .targets
            .by_path
            .entry(target.path.namespace.clone())
            .or_default()
            .insert(
                target.path.name.clone(),
                Target {
                    display: format!("{} {}", target.kind, target.key),
                    audience: target.audience.clone(),
                    policies: applying,
                },
            );
    }
    for outcome in resolved.policies.values_mut() {
        let unique: BTreeSet<String> = outcome.applies_to.drain(..).collect();
        outcome.applies_to = unique.into_iter().collect();
    }
    resolved
}

/// Whether `policy` (of the target's namespace) applies to `target`.
fn applies(policy: &EventPolicy, target: &TargetObject<'_>) -> bool {
    if policy.spec.to.is_empty() {
        return true;
    }
    policy.spec.to.iter().any(|to| {
        if let Some(reference) = &to.reference {
            return reference.name.eq_ignore_ascii_case(&target.key.name)
                && reference.kind.eq_ignore_ascii_case(target.kind)
                && reference.group().eq_ignore_ascii_case(target.group);
        }
        to.selector.as_ref().is_some_and(|selector| {
            selector.kind.eq_ignore_ascii_case(target.kind)
                && selector.group().eq_ignore_ascii_case(target.group)
                && selector.matches(target.labels)
        })
    })
}

/// Why a verified sender may not send an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Forbidden {
    #[error(
        "no EventPolicy applies to {target}, and --default-authorization-mode is deny-all: write an EventPolicy that allows {subject}"
    )]
    DenyAll { target: String, subject: String },
    #[error(
        "no EventPolicy applies to {target}, and --default-authorization-mode is allow-same-namespace: {subject} is not a service account of namespace {namespace} (system:serviceaccount:{namespace}:...)"
    )]
    OtherNamespace {
        target: String,
        subject: String,
        namespace: String,
    },
    #[error(
        "{subject} may not send to {target}: no EventPolicy of it allows that subject ({policies})"
    )]
    NotAllowed {
        target: String,
        subject: String,
        policies: String,
    },
    #[error(
        "event {event} does not pass the filters of EventPolicy {policies}, which lets {subject} send to {target}"
    )]
    Filtered {
        target: String,
        subject: String,
        event: String,
        policies: String,
    },
}

/// The decision for `subject` sending `events` events to a target at
/// `/{namespace}/{name}` (`target`: its policies, None when the last apply
/// did not know it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn decide(
    target: Option<&Target>,
    mode: AuthorizationMode,
    namespace: &str,
    name: &str,
    subject: &str,
    events: usize,
    passes: &dyn Fn(&Filter, usize) -> bool,
    id: &dyn Fn(usize) -> String,
) -> Result<(), Forbidden> {
    let display = || target.map_or_else(|| format!("{namespace}/{name}"), |t| t.display.clone());
    let policies = target.map_or(&[][..], |t| &t.policies[..]);
    if policies.is_empty() {
        return match mode {
            AuthorizationMode::AllowAll => Ok(()),
            AuthorizationMode::DenyAll => Err(Forbidden::DenyAll {
                target: display(),
                subject: subject.to_owned(),
            }),
            AuthorizationMode::AllowSameNamespace => {
                let prefix = format!("system:serviceaccount:{namespace}:");
                if subject.starts_with(&prefix) {
                    Ok(())
                } else {
                    Err(Forbidden::OtherNamespace {
                        target: display(),
                        subject: subject.to_owned(),
                        namespace: namespace.to_owned(),
                    })
                }
            }
        };
    }
    let admitting: Vec<&Arc<CompiledPolicy>> =
        policies.iter().filter(|p| p.admits(subject)).collect();
    let names = |list: &mut dyn Iterator<Item = &Arc<CompiledPolicy>>| {
        list.map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
    };
    if admitting.is_empty() {
        return Err(Forbidden::NotAllowed {
            target: display(),
            subject: subject.to_owned(),
            policies: names(&mut policies.iter()),
        });
    }
    for event in 0..events {
        let passed = admitting.iter().any(|policy| match &policy.filter {
            None => true,
            Some(filter) => passes(filter, event),
        });
        if !passed {
            return Err(Forbidden::Filtered {
                target: display(),
                subject: subject.to_owned(),
                event: id(event),
                policies: names(&mut admitting.iter().copied()),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Resource;
    use crate::api::kinds::parse_yaml;

    fn policy(name: &str, spec: &str) -> EventPolicy {
        let yaml = format!(
            "apiVersion: eventing.knative.dev/v1alpha1\nkind: EventPolicy\nmetadata:\n  name: {name}\n  namespace: ns\nspec:\n{spec}"
        );
        match parse_yaml(&yaml) {
            Ok(Resource::EventPolicy(p)) => *p,
            other => panic!("{other:?}"),
        }
    }

    fn broker<'a>(name: &str, labels: &'a BTreeMap<String, String>) -> TargetObject<'a> {
        TargetObject {
            group: "eventing.knative.dev",
            kind: "Broker",
            key: ObjectKey::new("ns", name),
            labels,
            path: ObjectKey::new("ns", name),
            audience: super::super::broker_audience("ns", name),
        }
    }

    fn identity(_: &str, kind: &str, key: &ObjectKey) -> Result<String, String> {
        match kind {
            "PingSource" if key.name == "beat" => Ok(format!(
                "system:serviceaccount:{}:beat-oidc-sources.knative.dev-pingsource",
                key.namespace
            )),
            _ => Err(format!("{kind} {key} does not exist")),
        }
    }

    #[test]
    fn policies_resolve_subjects_and_targets() {
        let none = BTreeMap::new();
        let gold: BTreeMap<String, String> = [("tier".to_owned(), "gold".to_owned())].into();
        let all = policy(
            "all",
            "  from:\n    - sub: \"system:serviceaccount:ns:*\"\n",
        );
        let refs = policy(
            "refs",
            "  to:\n    - ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: a}\n    - selector: {apiVersion: eventing.knative.dev/v1, kind: Broker, matchLabels: {tier: gold}}\n  from:\n    - ref: {apiVersion: sources.knative.dev/v1, kind: PingSource, name: beat}\n    - ref: {apiVersion: sources.knative.dev/v1, kind: PingSource, name: gone}\n",
        );
        let policies = [
            (ObjectKey::new("ns", "all"), &all),
            (ObjectKey::new("ns", "refs"), &refs),
        ];
        let targets = [broker("a", &none), broker("b", &gold), broker("c", &none)];
        let resolved = resolve(&policies, &targets, &identity);
        let refs = &resolved.policies[&ObjectKey::new("ns", "refs")];
        assert_eq!(
            refs.from,
            ["system:serviceaccount:ns:beat-oidc-sources.knative.dev-pingsource"]
        );
        assert_eq!(refs.unresolved.len(), 1, "{:?}", refs.unresolved);
        assert_eq!(refs.applies_to, ["Broker a", "Broker b"]);
        let applied = |name: &str| {
            resolved.applied[&("Broker".to_owned(), ObjectKey::new("ns", name))].clone()
        };
        assert_eq!(applied("a"), ["all", "refs"]);
        assert_eq!(applied("c"), ["all"]);
    }

    #[test]
    fn the_decision_follows_subjects_filters_and_the_default_mode() {
        let none = BTreeMap::new();
        let strict = policy(
            "strict",
            "  to:\n    - ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: a}\n  from:\n    - sub: \"system:serviceaccount:ns:app-*\"\n  filters:\n    - prefix: {type: com.example.}\n",
        );
        let policies = [(ObjectKey::new("ns", "strict"), &strict)];
        let targets = [broker("a", &none), broker("b", &none)];
        let resolved = resolve(&policies, &targets, &identity);
        let a = resolved.targets.get("ns", "a");
        let type_ok = |_: &Filter, i: usize| i == 0;
        let id = |i: usize| format!("e{i}");
        let decide_a = |subject: &str, events: usize| {
            decide(
                a,
                AuthorizationMode::AllowAll,
                "ns",
                "a",
                subject,
                events,
                &type_ok,
                &id,
            )
        };
        assert_eq!(decide_a("system:serviceaccount:ns:app-1", 1), Ok(()));
        let error = decide_a("system:serviceaccount:ns:other", 1).expect_err("subject");
        assert!(matches!(error, Forbidden::NotAllowed { .. }), "{error}");
        let error = decide_a("system:serviceaccount:ns:app-1", 2).expect_err("filter");
        assert_eq!(
            error.to_string(),
            "event e1 does not pass the filters of EventPolicy strict, which lets system:serviceaccount:ns:app-1 send to Broker ns/a"
        );
        let b = resolved.targets.get("ns", "b");
        let mode = |mode, subject: &str| decide(b, mode, "ns", "b", subject, 1, &type_ok, &id);
        assert_eq!(mode(AuthorizationMode::AllowAll, "anyone"), Ok(()));
        assert!(mode(AuthorizationMode::DenyAll, "system:serviceaccount:ns:x").is_err());
        assert_eq!(
            mode(
                AuthorizationMode::AllowSameNamespace,
                "system:serviceaccount:ns:x"
            ),
            Ok(())
        );
        let error = mode(
            AuthorizationMode::AllowSameNamespace,
            "system:serviceaccount:other:x",
        )
        .expect_err("other namespace");
        assert!(matches!(error, Forbidden::OtherNamespace { .. }), "{error}");
    }
}
