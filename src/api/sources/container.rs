//! `ContainerSource` (sources.knative.dev/v1): a pod template that runs for
//! as long as the object exists, told where to send events by `K_SINK` and
//! `K_CE_OVERRIDES`. It has no port: it is ready while it runs. The serving
//! half runs it (`serving::daemon`), with the same runtimes as Services.

use serde::{Deserialize, Serialize};

use crate::api::duck::{CeOverrides, Destination};
use crate::api::service::RevisionTemplate;
use crate::api::{Invalid, ObjectMeta};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerSource {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ContainerSourceSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerSourceSpec {
    /// A pod template (`metadata` and a pod `spec`). Read with the Service's
    /// template type: the same container fields, the same runtimes.
    pub template: RevisionTemplate,
    pub sink: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_overrides: Option<CeOverrides>,
}

impl crate::api::kinds::Kind for ContainerSource {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        let spec = &self.spec;
        // The pod rules name fields from `spec.template`, as for a Service.
        crate::api::pod::check(&spec.template)?;
        if let Some(field) = revision_only_field(&spec.template) {
            return Err(Invalid::new(
                format!("spec.template.spec.{field}"),
                "is a Knative Service's revision field; a ContainerSource's pod serves no requests",
            ));
        }
        spec.sink.validate("spec.sink")?;
        if let Some(overrides) = &spec.ce_overrides {
            overrides.validate("spec.ceOverrides")?;
        }
        Ok(())
    }
}

/// The first request-serving field of a revision set in a pod template.
fn revision_only_field(template: &RevisionTemplate) -> Option<&'static str> {
    let spec = &template.spec;
    [
        ("containerConcurrency", spec.container_concurrency.is_some()),
        ("timeoutSeconds", spec.timeout_seconds.is_some()),
        (
            "responseStartTimeoutSeconds",
            spec.response_start_timeout_seconds.is_some(),
        ),
        ("idleTimeoutSeconds", spec.idle_timeout_seconds.is_some()),
    ]
    .into_iter()
    .find_map(|(field, set)| set.then_some(field))
}

#[cfg(test)]
mod tests {
    fn load(yaml: &str) -> Result<(), String> {
        crate::api::kinds::parse_yaml(yaml).map(|_| ())
    }

    /// Knative's "heartbeats" sample, as its docs give it.
    const HEARTBEATS: &str = r#"
apiVersion: sources.knative.dev/v1
kind: ContainerSource
metadata:
  name: test-heartbeats
spec:
  template:
    spec:
      containers:
        - image: gcr.io/knative-nightly/knative.dev/eventing/cmd/heartbeats
          name: heartbeats
          args:
            - --period=1
          env:
            - name: POD_NAME
              value: "mypod"
            - name: POD_NAMESPACE
              value: "event-test"
  sink:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: event-display
"#;

    #[test]
    fn knatives_heartbeats_sample_loads() {
        assert_eq!(load(HEARTBEATS), Ok(()));
    }

    #[test]
    fn bad_fields_are_named() {
        let no_sink = HEARTBEATS.replace("  sink:\n", "  nosink:\n");
        assert!(load(&no_sink).expect_err("typo").starts_with("spec"));
        let timeout = HEARTBEATS.replace("    spec:\n", "    spec:\n      timeoutSeconds: 5\n");
        assert_eq!(
            load(&timeout).expect_err("revision field"),
            "spec.template.spec.timeoutSeconds: is a Knative Service's revision field; a ContainerSource's pod serves no requests"
        );
        let overrides = format!("{HEARTBEATS}  ceOverrides:\n    extensions:\n      id: x\n");
        assert!(
            load(&overrides)
                .expect_err("id")
                .starts_with("spec.ceOverrides.extensions.id:")
        );
    }
}
