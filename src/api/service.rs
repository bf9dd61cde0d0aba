//! `Service` (serving.knative.dev/v1): a revision template plus a traffic
//! block. Pod fields that only a Kubernetes runtime uses are accepted and kept
//! so that manifests written for Knative load unchanged.

use serde::{Deserialize, Serialize};

use k8s_openapi::api::core::v1 as k8s;

use super::{Invalid, ObjectMeta};
use crate::api::autoscaling::{AutoscalerDefaults, RevisionScaling};

/// Knative's `max-revision-timeout-seconds` default.
pub const MAX_TIMEOUT_SECONDS: u64 = 600;
/// Knative's `revision-timeout-seconds` default.
pub(crate) const DEFAULT_TIMEOUT_SECONDS: u64 = 300;
/// Knative's upper bound for `containerConcurrency`.
pub const MAX_CONTAINER_CONCURRENCY: u32 = 1000;

type Opaque = Option<serde_json::Value>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing)]
    pub status: Opaque,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    pub template: RevisionTemplate,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

/// `spec.template`: what every revision is made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionTemplate {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: RevisionSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionSpec {
    pub containers: Vec<Container>,
    /// Requests one instance handles at once; 0 (the default) is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_start_timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<u64>,
    // Pod fields for the Kubernetes runtime; the process runtime ignores them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Typed, so that a wrong shape is refused at load with its path; the
    /// local runtimes read them (see [`super::pod`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<k8s::Volume>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<k8s::LocalObjectReference>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_service_links: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<k8s::PodSecurityContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_policy: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_aliases: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_containers: Opaque,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_from: Option<Vec<k8s::EnvFromSource>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s::ResourceRequirements>,
    /// `Always`, `IfNotPresent` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<k8s::SecurityContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<k8s::VolumeMount>>,
    // Kept for the Kubernetes runtime; the local runtimes do not run them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_path: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_policy: Opaque,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<k8s::EnvVarSource>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    pub container_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A number or the name of one of `ports`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSocketAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// One entry of `spec.traffic`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Written by Knative into status; accepted so `kubectl get -o yaml` loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_name: Option<String>,
}

/// Where a traffic target sends requests, once resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrafficRevision {
    /// The latest revision that is ready (`latestRevision: true`).
    Latest,
    Named(String),
}

impl Service {
    pub fn validate(&self) -> Result<(), Invalid> {
        // The name, the first label of the service's host, is a DNS-1035
        // label: the registry checks it (api::kinds).
        self.validate_template()?;
        self.validate_traffic()?;
        Ok(())
    }

    fn validate_template(&self) -> Result<(), Invalid> {
        let template = &self.spec.template;
        if let Some(name) = self.template_name() {
            let prefix = format!("{}-", self.metadata.name);
            if !name.starts_with(&prefix) || name.len() == prefix.len() {
                return Err(Invalid::new(
                    "spec.template.metadata.name",
                    format!(
                        "'{name}' must start with the service's name and a dash, such as '{prefix}v2'"
                    ),
                ));
            }
        }
        let spec = &template.spec;
        super::pod::check(template)?;
        if let Some(cc) = spec.container_concurrency
            && cc > MAX_CONTAINER_CONCURRENCY
        {
            return Err(Invalid::new(
                "spec.template.spec.containerConcurrency",
                format!("{cc} is over {MAX_CONTAINER_CONCURRENCY}; use 0 for unlimited"),
            ));
        }
        if let Some(t) = spec.timeout_seconds
            && !(1..=MAX_TIMEOUT_SECONDS).contains(&t)
        {
            return Err(Invalid::new(
                "spec.template.spec.timeoutSeconds",
                format!("{t} is outside 1..={MAX_TIMEOUT_SECONDS}"),
            ));
        }
        // The annotations' syntax and ranges; the running defaults are applied
        // again when the revision starts (and a clash shows in its status).
        RevisionScaling::resolve(
            &template.metadata.annotations,
            &AutoscalerDefaults::default(),
            spec.container_concurrency.unwrap_or(0),
        )?;
        Ok(())
    }

    fn validate_traffic(&self) -> Result<(), Invalid> {
        let mut total = 0u32;
        let mut tags = std::collections::BTreeSet::new();
        for (i, target) in self.spec.traffic.iter().enumerate() {
            let field = |f: &str| format!("spec.traffic[{i}].{f}");
            if target.configuration_name.is_some() {
                return Err(Invalid::new(
                    field("configurationName"),
                    "is not supported; use latestRevision: true",
                ));
            }
            match (&target.revision_name, target.latest_revision) {
                (Some(_), Some(true)) => {
                    return Err(Invalid::new(
                        field("latestRevision"),
                        "cannot be true together with revisionName",
                    ));
                }
                (None, None | Some(false)) => {
                    return Err(Invalid::new(
                        format!("spec.traffic[{i}]"),
                        "set revisionName, or latestRevision: true",
                    ));
                }
                (Some(name), _) if !name.starts_with(&format!("{}-", self.metadata.name)) => {
                    return Err(Invalid::new(
                        field("revisionName"),
                        format!(
                            "'{name}' is not a revision of service {}: revision names start with '{}-'",
                            self.metadata.name, self.metadata.name
                        ),
                    ));
                }
                _ => {}
            }
            let percent = target.percent.unwrap_or(0);
            if percent > 100 {
                return Err(Invalid::new(
                    field("percent"),
                    format!("{percent} is over 100"),
                ));
            }
            total += percent;
            if let Some(tag) = &target.tag {
                if !is_dns_label(tag) || tag.len() + self.metadata.name.len() + 1 > 63 {
                    return Err(Invalid::new(
                        field("tag"),
                        format!(
                            "'{tag}' must be a DNS label (lower-case letters, digits and '-'), short enough that '{tag}-{}' fits 63 characters",
                            self.metadata.name
                        ),
                    ));
                }
                if !tags.insert(tag.as_str()) {
                    return Err(Invalid::new(
                        field("tag"),
                        format!("'{tag}' is used by another traffic target"),
                    ));
                }
            }
        }
        if !self.spec.traffic.is_empty() && total != 100 {
            return Err(Invalid::new(
                "spec.traffic",
                format!("percents add up to {total}; they must add up to 100"),
            ));
        }
        Ok(())
    }

    /// `spec.template.metadata.name`, when the user names revisions.
    pub(crate) fn template_name(&self) -> Option<&str> {
        let name = self.spec.template.metadata.name.as_str();
        (!name.is_empty()).then_some(name)
    }

    /// The traffic block, or Knative's default: all to the latest ready revision.
    pub(crate) fn traffic(&self) -> Vec<(TrafficRevision, u32, Option<String>)> {
        if self.spec.traffic.is_empty() {
            return vec![(TrafficRevision::Latest, 100, None)];
        }
        self.spec
            .traffic
            .iter()
            .map(|t| {
                let revision = match &t.revision_name {
                    Some(name) => TrafficRevision::Named(name.clone()),
                    None => TrafficRevision::Latest,
                };
                (revision, t.percent.unwrap_or(0), t.tag.clone())
            })
            .collect()
    }
}

impl RevisionSpec {
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS))
    }
}

fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

impl crate::api::kinds::Kind for Service {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        self.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::api::pod::{PodSpec, Probe as RuntimeProbe};

    fn service(yaml: &str) -> Service {
        serde_saphyr::from_str(yaml).expect("parses")
    }

    const HELLO: &str = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    spec:\n      containers:\n        - command: [pilotlight, hello]\n";

    #[test]
    fn a_minimal_service_is_valid_and_sends_all_traffic_to_latest() {
        let s = service(HELLO);
        s.validate().expect("valid");
        assert_eq!(s.traffic(), vec![(TrafficRevision::Latest, 100, None)]);
        let pod = PodSpec::from_template(&s.spec.template).expect("runs");
        let spec = pod.serving_container();
        assert_eq!(spec.command, vec!["pilotlight", "hello"]);
        assert_eq!(spec.readiness, Some(RuntimeProbe::TcpDefault));
    }

    #[test]
    fn traffic_must_add_up_to_100() {
        let s = service(&format!(
            "{HELLO}  traffic:\n    - latestRevision: true\n      percent: 50\n    - revisionName: hello-00001\n      percent: 40\n"
        ));
        let err = s.validate().expect_err("90");
        assert_eq!(err.field, "spec.traffic");
        assert!(err.reason.contains("add up to 90"), "{err}");
    }

    #[test]
    fn traffic_targets_are_checked_one_by_one() {
        let cases = [
            (
                "    - percent: 100\n",
                "spec.traffic[0]",
                "set revisionName",
            ),
            (
                "    - revisionName: other-00001\n      percent: 100\n",
                "spec.traffic[0].revisionName",
                "not a revision of service hello",
            ),
            (
                "    - latestRevision: true\n      percent: 100\n      tag: Bad\n",
                "spec.traffic[0].tag",
                "must be a DNS label",
            ),
            (
                "    - latestRevision: true\n      percent: 50\n      tag: a\n    - revisionName: hello-00001\n      percent: 50\n      tag: a\n",
                "spec.traffic[1].tag",
                "used by another",
            ),
        ];
        for (traffic, field, reason) in cases {
            let err = service(&format!("{HELLO}  traffic:\n{traffic}"))
                .validate()
                .expect_err(field);
            assert_eq!(err.field, field);
            assert!(err.reason.contains(reason), "{err}");
        }
    }

    #[test]
    fn template_errors_name_the_field() {
        let two = HELLO.replace(
            "        - command: [pilotlight, hello]\n",
            "        - command: [a]\n        - command: [b]\n",
        );
        let err = service(&two).validate().expect_err("two containers");
        assert_eq!(err.field, "spec.template.spec.containers");
        let named = HELLO.replace(
            "    spec:\n      containers",
            "    metadata:\n      name: other-v1\n    spec:\n      containers",
        );
        let err = service(&named).validate().expect_err("bad name");
        assert_eq!(err.field, "spec.template.metadata.name");
        assert!(err.reason.contains("'hello-v2'"), "{err}");
        let timeout = HELLO.replace(
            "      containers:",
            "      timeoutSeconds: 900\n      containers:",
        );
        let err = service(&timeout).validate().expect_err("timeout");
        assert_eq!(err.field, "spec.template.spec.timeoutSeconds");
    }

    #[test]
    fn autoscaling_annotations_are_checked_at_load() {
        let bad = HELLO.replace(
            "    spec:\n      containers",
            "    metadata:\n      annotations:\n        autoscaling.knative.dev/min-scale: lots\n    spec:\n      containers",
        );
        let err = service(&bad).validate().expect_err("not a number");
        assert_eq!(
            err.field,
            "spec.template.metadata.annotations[\"autoscaling.knative.dev/min-scale\"]"
        );
        let zero = bad.replace("min-scale: lots", "initial-scale: \"0\"");
        service(&zero)
            .validate()
            .expect("initial-scale 0 is allowed");
    }

    #[test]
    fn readiness_probes_become_runtime_probes() {
        let probe = HELLO.replace(
            "        - command: [pilotlight, hello]\n",
            "        - command: [app]\n          ports:\n            - containerPort: 8080\n              name: http1\n          readinessProbe:\n            httpGet:\n              path: /ready\n              port: http1\n",
        );
        let s = service(&probe);
        s.validate().expect("valid");
        let pod = PodSpec::from_template(&s.spec.template).expect("runs");
        assert_eq!(
            pod.serving_container().readiness,
            Some(RuntimeProbe::Http {
                path: "/ready".into(),
                port: None,
                headers: vec![]
            })
        );
        let bad = probe.replace("port: http1", "port: metrics");
        let err = service(&bad).validate().expect_err("unknown port name");
        assert_eq!(
            err.field,
            "spec.template.spec.containers[0].readinessProbe.httpGet.port"
        );
    }

    #[test]
    fn env_from_secrets_stays_a_reference() {
        let s = service(&HELLO.replace(
            "        - command: [pilotlight, hello]\n",
            "        - command: [app]\n          env:\n            - name: TOKEN\n              valueFrom:\n                secretKeyRef: {name: s, key: k}\n",
        ));
        s.validate().expect("valid");
        let pod = PodSpec::from_template(&s.spec.template).expect("converts");
        assert!(matches!(
            pod.serving_container().env[0].value,
            crate::api::pod::EnvValue::Key(_)
        ));
    }
}
