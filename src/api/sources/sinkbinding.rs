//! `SinkBinding` (sources.knative.dev/v1): puts `K_SINK` and
//! `K_CE_OVERRIDES` into the pods of another object, its subject. The
//! control plane binds (`control::sinks`): a Knative Service's revision
//! template gets the variables, so a changed sink rolls a new revision; in
//! Kubernetes mode the leader patches a Deployment's pod template
//! (`control::kubernetes::binding`). Jobs load but are not bound: their
//! template is immutable, and pilotlight has no admission webhook.

use serde::{Deserialize, Serialize};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::duck::{CeOverrides, Destination};
use crate::api::{Invalid, ObjectMeta};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkBinding {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: SinkBindingSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkBindingSpec {
    pub subject: Subject,
    pub sink: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_overrides: Option<CeOverrides>,
}

/// Knative's `tracker.Reference`: one object by name, or every object of
/// the kind whose labels match `selector`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// The kinds of subject pilotlight binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubjectKind {
    /// serving.knative.dev/v1 Service: in both modes, by name.
    KnativeService,
    /// apps/v1 Deployment: in Kubernetes mode.
    Deployment,
    /// batch/v1 Job: in Kubernetes mode.
    Job,
}

impl SubjectKind {
    const ALL: [(SubjectKind, &'static str, &'static str); 3] = [
        (
            SubjectKind::KnativeService,
            "serving.knative.dev/v1",
            "Service",
        ),
        (SubjectKind::Deployment, "apps/v1", "Deployment"),
        (SubjectKind::Job, "batch/v1", "Job"),
    ];

    fn of(api_version: &str, kind: &str) -> Option<SubjectKind> {
        Self::ALL
            .iter()
            .find(|(_, v, k)| *v == api_version && *k == kind)
            .map(|(s, _, _)| *s)
    }

    /// `Service (serving.knative.dev/v1)`, for messages.
    pub(crate) fn describe(self) -> String {
        Self::ALL
            .iter()
            .find(|(s, _, _)| *s == self)
            .map(|(_, version, kind)| format!("{kind} ({version})"))
            .unwrap_or_default()
    }
}

impl Subject {
    /// The subject's kind; checked at load, so unknown kinds never get here.
    pub(crate) fn subject_kind(&self) -> Option<SubjectKind> {
        SubjectKind::of(&self.api_version, &self.kind)
    }
}

impl crate::api::kinds::Kind for SinkBinding {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        let subject = &self.spec.subject;
        let Some(kind) = subject.subject_kind() else {
            let known: Vec<String> = SubjectKind::ALL
                .iter()
                .map(|(s, _, _)| s.describe())
                .collect();
            return Err(Invalid::new(
                "spec.subject",
                format!(
                    "pilotlight binds {}; not {} ({})",
                    known.join(", "),
                    subject.kind,
                    subject.api_version
                ),
            ));
        };
        match (&subject.name, &subject.selector) {
            (Some(_), Some(_)) => {
                return Err(Invalid::new(
                    "spec.subject.selector",
                    "set name or selector, not both",
                ));
            }
            (None, None) => {
                return Err(Invalid::new("spec.subject", "set name or selector"));
            }
            (None, Some(_)) if kind == SubjectKind::KnativeService => {
                return Err(Invalid::new(
                    "spec.subject.selector",
                    "a Knative Service subject is named: set spec.subject.name",
                ));
            }
            (Some(name), None) if name.is_empty() => {
                return Err(Invalid::new("spec.subject.name", "must not be empty"));
            }
            _ => {}
        }
        if let (Some(subject_ns), Some(own)) = (&subject.namespace, &self.metadata.namespace)
            && subject_ns != own
        {
            return Err(Invalid::new(
                "spec.subject.namespace",
                format!(
                    "'{subject_ns}' is not the SinkBinding's namespace '{own}': a binding reaches only its own namespace"
                ),
            ));
        }
        self.spec.sink.validate("spec.sink")?;
        if let Some(overrides) = &self.spec.ce_overrides {
            overrides.validate("spec.ceOverrides")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    fn load(yaml: &str) -> Result<(), String> {
        crate::api::kinds::parse_yaml(yaml).map(|_| ())
    }

    /// Knative's docs: a Job selected by label, bound to a Service.
    const JOB_SAMPLE: &str = r#"
apiVersion: sources.knative.dev/v1
kind: SinkBinding
metadata:
  name: bind-heartbeat
spec:
  subject:
    apiVersion: batch/v1
    kind: Job
    selector:
      matchLabels:
        app: heartbeat-cron
  sink:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: event-display
  ceOverrides:
    extensions:
      sink: bound
"#;

    /// Knative's docs: a Deployment by name, bound to a broker.
    const DEPLOYMENT_SAMPLE: &str = r#"
apiVersion: sources.knative.dev/v1
kind: SinkBinding
metadata:
  name: bind-heartbeat
spec:
  subject:
    apiVersion: apps/v1
    kind: Deployment
    name: heartbeat
  sink:
    ref:
      apiVersion: eventing.knative.dev/v1
      kind: Broker
      name: default
"#;

    #[test]
    fn knatives_samples_load() {
        assert_eq!(load(JOB_SAMPLE), Ok(()));
        assert_eq!(load(DEPLOYMENT_SAMPLE), Ok(()));
    }

    #[test]
    fn a_subject_is_one_known_kind_by_name_or_selector() {
        let statefulset = DEPLOYMENT_SAMPLE.replace("kind: Deployment", "kind: StatefulSet");
        assert_eq!(
            load(&statefulset).expect_err("unknown kind"),
            "spec.subject: pilotlight binds Service (serving.knative.dev/v1), Deployment (apps/v1), Job (batch/v1); not StatefulSet (apps/v1)"
        );
        let both = DEPLOYMENT_SAMPLE.replace(
            "    name: heartbeat\n",
            "    name: heartbeat\n    selector: {matchLabels: {app: x}}\n",
        );
        assert_eq!(
            load(&both).expect_err("both"),
            "spec.subject.selector: set name or selector, not both"
        );
        let service_selector = JOB_SAMPLE.replace(
            "apiVersion: batch/v1\n    kind: Job",
            "apiVersion: serving.knative.dev/v1\n    kind: Service",
        );
        assert_eq!(
            load(&service_selector).expect_err("service by selector"),
            "spec.subject.selector: a Knative Service subject is named: set spec.subject.name"
        );
        let other_namespace = DEPLOYMENT_SAMPLE
            .replace(
                "  name: bind-heartbeat\n",
                "  name: bind-heartbeat\n  namespace: a\n",
            )
            .replace(
                "    name: heartbeat\n",
                "    name: heartbeat\n    namespace: b\n",
            );
        assert!(
            load(&other_namespace)
                .expect_err("namespace")
                .starts_with("spec.subject.namespace: 'b' is not the SinkBinding's namespace 'a'")
        );
    }
}
