//! `JobSink` (sinks.knative.dev/v1alpha1): a batch/v1 Job template run once
//! per event, with the event mounted as a file. The job runner is
//! `serving::jobs`; the event intake (ingress, storage, redelivery) is the
//! eventing half's.
//!
//! `spec.job` is read as Kubernetes' batch/v1 Job: the fields Knative's docs
//! use are typed and checked (`template`, `backoffLimit`, `completions`,
//! `parallelism`, `activeDeadlineSeconds`, `ttlSecondsAfterFinished`,
//! `podFailurePolicy`), the rest of batch/v1's JobSpec is accepted and kept
//! for Kubernetes mode, and anything else is refused by name.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as k8s;
use serde::{Deserialize, Serialize};

use super::service::{Container, RevisionSpec, RevisionTemplate};
use super::{Invalid, ObjectMeta};

/// Where Knative mounts the event in every container of the job.
pub const EVENT_MOUNT_DIR: &str = "/etc/jobsink-event";
/// The event file's name in [`EVENT_MOUNT_DIR`].
pub const EVENT_FILE: &str = "event";
/// The volume Knative adds for the event; a container's `volumeMounts` entry
/// of this name moves the event elsewhere (Knative's docs show it).
pub const EVENT_VOLUME: &str = "jobsink-event";
/// Kubernetes' default `backoffLimit`.
pub const DEFAULT_BACKOFF_LIMIT: i32 = 6;
/// The annotation that limits the jobs of one JobSink running at once.
pub const MAX_RUNNING_ANNOTATION: &str = "pilotlight.dev/max-running-jobs";
/// The annotation that bounds the finished jobs kept in status.
pub const HISTORY_ANNOTATION: &str = "pilotlight.dev/job-history-limit";
/// Finished jobs kept per JobSink without [`HISTORY_ANNOTATION`].
pub const DEFAULT_HISTORY_LIMIT: usize = 20;
/// The most [`HISTORY_ANNOTATION`] may keep.
const MAX_HISTORY_LIMIT: usize = 1000;

type Opaque = Option<serde_json::Value>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSink {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: JobSinkSpec,
    #[serde(default, skip_serializing)]
    pub status: Opaque,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSinkSpec {
    /// Optional in the schema, required by Knative's webhook (and here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobTemplate>,
}

/// `spec.job`: a batch/v1 Job, as `kubectl create job --dry-run -o yaml`
/// writes one (its `apiVersion`, `kind` and `status` may be there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: JobSpec,
    #[serde(default, skip_serializing)]
    pub status: Opaque,
}

/// batch/v1 `JobSpec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpec {
    pub template: JobPodTemplate,
    /// Failed pods tolerated before the job fails (Kubernetes: 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Pods that must succeed (Kubernetes: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completions: Option<i32>,
    /// Pods run at once (Kubernetes: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_failure_policy: Option<batch::PodFailurePolicy>,
    // Kept for Kubernetes mode; the local runtimes do not use them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_mode: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_limit_per_index: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed_indexes: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_policy: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual_selector: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_replacement_policy: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Opaque,
}

/// `spec.job.spec.template`: a Kubernetes pod template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobPodTemplate {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: JobPodSpec,
}

/// A pod's spec, as a Job's template has it: Knative Serving's containers
/// plus `restartPolicy` and the scheduling fields, which only Kubernetes
/// mode uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobPodSpec {
    pub containers: Vec<Container>,
    /// `Never` or `OnFailure`; Kubernetes refuses a Job without one, so
    /// pilotlight writes `Never` when it is not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<k8s::Volume>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<k8s::LocalObjectReference>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<k8s::PodSecurityContext>,
    // Kept for Kubernetes mode; the local runtimes do not use them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_containers: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_service_links: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Opaque,
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
    pub hostname: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_process_namespace: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemption_policy: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_gates: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Opaque,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_gates: Opaque,
}

impl JobSink {
    /// `spec.job`, which [`JobSink::validate`] requires.
    pub fn job(&self) -> Result<&JobTemplate, Invalid> {
        self.spec
            .job
            .as_ref()
            .ok_or_else(|| Invalid::new("spec.job", "is required: the Job to run for each event"))
    }

    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        let job = self.job()?;
        if let Some(version) = job.api_version.as_deref().filter(|v| *v != "batch/v1") {
            return Err(Invalid::new(
                "spec.job.apiVersion",
                format!("'{version}' is not batch/v1"),
            ));
        }
        if let Some(kind) = job.kind.as_deref().filter(|k| *k != "Job") {
            return Err(Invalid::new(
                "spec.job.kind",
                format!("'{kind}' is not Job"),
            ));
        }
        let spec = &job.spec;
        let at_least = |field: &str, value: Option<i64>, min: i64| match value {
            Some(v) if v < min => Err(Invalid::new(
                format!("spec.job.spec.{field}"),
                format!("{v} is below {min}"),
            )),
            _ => Ok(()),
        };
        at_least("backoffLimit", spec.backoff_limit.map(i64::from), 0)?;
        at_least("completions", spec.completions.map(i64::from), 1)?;
        at_least("parallelism", spec.parallelism.map(i64::from), 1)?;
        at_least("activeDeadlineSeconds", spec.active_deadline_seconds, 1)?;
        at_least(
            "ttlSecondsAfterFinished",
            spec.ttl_seconds_after_finished.map(i64::from),
            0,
        )?;
        let pod = &spec.template.spec;
        match pod.restart_policy.as_deref() {
            None | Some("Never" | "OnFailure") => {}
            Some(other) => {
                return Err(Invalid::new(
                    "spec.job.spec.template.spec.restartPolicy",
                    format!(
                        "'{other}' is not one of Never, OnFailure (a Job's pods run to completion)"
                    ),
                ));
            }
        }
        if pod.containers.is_empty() {
            return Err(Invalid::new(
                "spec.job.spec.template.spec.containers",
                "needs a container: the job's command (runs as a local process) or image",
            ));
        }
        if let Some(index) = pod
            .volumes
            .iter()
            .flatten()
            .position(|v| v.name == EVENT_VOLUME)
        {
            return Err(Invalid::new(
                format!("spec.job.spec.template.spec.volumes[{index}].name"),
                format!("'{EVENT_VOLUME}' is the volume of the event, which the JobSink adds"),
            ));
        }
        // Knative's container rules (names, mounts, probes, pull policy),
        // on the template as the local runtimes run it.
        super::pod::check(&self.revision_template(true))
            .map_err(|e| Invalid::new(format!("spec.job.{}", e.field), e.reason))?;
        self.max_running_jobs(1)?;
        self.history_limit()?;
        Ok(())
    }

    /// The job's pod as a revision template, for the local runtimes (which
    /// convert revision templates) and for Knative's container checks: the
    /// event's volume is added (mounted where a container mounts
    /// [`EVENT_VOLUME`], else at [`EVENT_MOUNT_DIR`] when `mount_event`),
    /// and ports and probes go (a job serves nothing; the serving container
    /// is the runner's to ignore).
    pub fn revision_template(&self, mount_event: bool) -> RevisionTemplate {
        let Some(job) = &self.spec.job else {
            return RevisionTemplate::default();
        };
        let pod = &job.spec.template.spec;
        let mut containers = pod.containers.clone();
        for container in &mut containers {
            container.ports.clear();
            container.readiness_probe = None;
            let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
            if mount_event && !mounts.iter().any(|m| m.name == EVENT_VOLUME) {
                mounts.push(k8s::VolumeMount {
                    name: EVENT_VOLUME.to_owned(),
                    mount_path: EVENT_MOUNT_DIR.to_owned(),
                    read_only: Some(true),
                    ..Default::default()
                });
            }
            if mounts.is_empty() {
                container.volume_mounts = None;
            }
        }
        // Several containers need one serving port to pass Knative's rule;
        // the first gets one that nothing uses.
        if containers.len() > 1
            && let Some(first) = containers.first_mut()
        {
            first.ports.push(super::service::ContainerPort {
                container_port: super::pod::DEFAULT_PORT,
                name: None,
                protocol: None,
            });
        }
        let mut volumes = pod.volumes.clone().unwrap_or_default();
        volumes.push(k8s::Volume {
            name: EVENT_VOLUME.to_owned(),
            empty_dir: Some(k8s::EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        RevisionTemplate {
            metadata: job.spec.template.metadata.clone(),
            spec: RevisionSpec {
                containers,
                volumes: Some(volumes),
                image_pull_secrets: pod.image_pull_secrets.clone(),
                service_account_name: pod.service_account_name.clone(),
                security_context: pod.security_context.clone(),
                ..RevisionSpec::default()
            },
        }
    }

    /// Jobs of this JobSink that run at once: [`MAX_RUNNING_ANNOTATION`],
    /// else `default` (`pilotlight run --max-running-jobs`). The eventing
    /// half delivers at most this many events to the job runner at a time.
    pub fn max_running_jobs(&self, default: usize) -> Result<usize, Invalid> {
        positive_annotation(&self.metadata.annotations, MAX_RUNNING_ANNOTATION, 10_000)
            .map(|n| n.unwrap_or(default).max(1))
    }

    /// Finished jobs kept in status: [`HISTORY_ANNOTATION`], else
    /// [`DEFAULT_HISTORY_LIMIT`].
    pub fn history_limit(&self) -> Result<usize, Invalid> {
        positive_annotation(
            &self.metadata.annotations,
            HISTORY_ANNOTATION,
            MAX_HISTORY_LIMIT,
        )
        .map(|n| n.unwrap_or(DEFAULT_HISTORY_LIMIT))
    }

    /// `backoffLimit`, Kubernetes' default when unset.
    pub fn backoff_limit(&self) -> u32 {
        let limit = self
            .spec
            .job
            .as_ref()
            .and_then(|j| j.spec.backoff_limit)
            .unwrap_or(DEFAULT_BACKOFF_LIMIT);
        u32::try_from(limit).unwrap_or(0)
    }
}

/// One job of a JobSink, as its status lists it (newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    /// The job's name: the JobSink's name and a hash of the event's
    /// `source` and `id`, so that a redelivered event finds its job.
    pub name: String,
    pub event_id: String,
    pub event_source: String,
    /// RFC 3339.
    pub start_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// `Running`, `Succeeded` or `Failed`.
    pub state: String,
    /// Pods started (the first try and each retry).
    pub attempts: u32,
    /// Pods that failed.
    pub failed: u32,
    /// The exit code of the last pod that ended (of its failing container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Why it failed, as Kubernetes says it: `BackoffLimitExceeded`,
    /// `DeadlineExceeded`, `PodFailurePolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The last lines the last pod wrote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<String>,
}

impl JobRecord {
    pub const RUNNING: &'static str = "Running";
    pub const SUCCEEDED: &'static str = "Succeeded";
    pub const FAILED: &'static str = "Failed";

    pub fn is_running(&self) -> bool {
        self.state == Self::RUNNING
    }
}

fn positive_annotation(
    annotations: &BTreeMap<String, String>,
    key: &str,
    max: usize,
) -> Result<Option<usize>, Invalid> {
    let Some(text) = annotations.get(key) else {
        return Ok(None);
    };
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
        _ => Err(Invalid::new(
            format!("metadata.annotations[\"{key}\"]"),
            format!("'{text}' is not a whole number from 1 to {max}"),
        )),
    }
}

impl crate::api::kinds::Kind for JobSink {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        self.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::broker::BrokerClass;
    use crate::api::kinds::{LoadContext, find};
    use crate::api::pod::PodSpec;

    fn parse(yaml: &str) -> Result<JobSink, (Option<String>, String)> {
        let value: serde_json::Value = serde_saphyr::from_str(yaml).expect("yaml");
        let context = LoadContext {
            default_class: BrokerClass::Memory,
        };
        match find("JobSink")
            .expect("registered")
            .parse(value, &context)?
        {
            crate::api::Resource::JobSink(sink) => Ok(*sink),
            other => panic!("not a JobSink: {other:?}"),
        }
    }

    /// Knative's docs (eventing/sinks/job-sink), unchanged.
    const DOCS_LOGGER: &str = r#"
apiVersion: sinks.knative.dev/v1alpha1
kind: JobSink
metadata:
  name: job-sink-logger
spec:
  job:
    spec:
      completions: 1
      parallelism: 1
      template:
        spec:
          restartPolicy: Never
          containers:
            - name: main
              image: docker.io/library/bash:5
              command: [ "cat" ]
              args:
                - "/etc/jobsink-event/event"
"#;

    const DOCS_CUSTOM_MOUNT: &str = r#"
apiVersion: sinks.knative.dev/v1alpha1
kind: JobSink
metadata:
  name: job-sink-custom-mount-path
spec:
  job:
    spec:
      completions: 1
      parallelism: 1
      template:
        spec:
          restartPolicy: Never
          containers:
            - name: main
              image: docker.io/library/bash:5
              command: [ "bash" ]
              args:
                - -c
                - echo "Hello world!" && sleep 5

              # The event will be available in a file at `/etc/custom-path/event`
              volumeMounts:
                - name: "jobsink-event"
                  mountPath: "/etc/custom-path"
                  readOnly: true
"#;

    const DOCS_FAILURE: &str = r#"
apiVersion: sinks.knative.dev/v1alpha1
kind: JobSink
metadata:
  name: job-sink-failure
spec:
  job:
    metadata:
      labels:
        my-label: my-value
    spec:
      completions: 12
      parallelism: 3
      template:
        spec:
          restartPolicy: Never
          containers:
            - name: main
              image: docker.io/library/bash:5
              command: [ "bash" ]        # example command simulating a bug which triggers the FailJob action
              args:
                - -c
                - echo "Hello world!" && sleep 5 && exit 42
      backoffLimit: 6
      podFailurePolicy:
        rules:
          - action: FailJob
            onExitCodes:
              containerName: main      # optional
              operator: In             # one of: In, NotIn
              values: [ 42 ]
          - action: Ignore             # one of: Ignore, FailJob, Count
            onPodConditions:
              - type: DisruptionTarget   # indicates Pod disruption
"#;

    #[test]
    fn knatives_docs_manifests_load_unchanged() {
        let logger = parse(DOCS_LOGGER).expect("the logger loads");
        let job = logger.job().expect("job");
        assert_eq!(job.spec.completions, Some(1));
        let container = &job.spec.template.spec.containers[0];
        assert_eq!(container.image.as_deref(), Some("docker.io/library/bash:5"));
        assert_eq!(container.command, ["cat"]);
        assert_eq!(container.args, ["/etc/jobsink-event/event"]);
        assert_eq!(logger.backoff_limit(), 6, "Kubernetes' default");

        let custom = parse(DOCS_CUSTOM_MOUNT).expect("the custom mount loads");
        let pod = PodSpec::from_template(&custom.revision_template(true)).expect("converts");
        let mounts = &pod.containers[0].volume_mounts;
        assert_eq!(mounts.len(), 1, "the custom mount replaces the default");
        assert_eq!(mounts[0].mount_path, "/etc/custom-path");

        let failure = parse(DOCS_FAILURE).expect("the failure example loads");
        let job = failure.job().expect("job");
        assert_eq!(job.metadata.labels["my-label"], "my-value");
        let rules = &job.spec.pod_failure_policy.as_ref().expect("policy").rules;
        assert_eq!(rules[0].action, "FailJob");
        assert_eq!(
            rules[0].on_exit_codes.as_ref().map(|c| c.values.clone()),
            Some(vec![42])
        );
    }

    #[test]
    fn the_event_is_mounted_in_every_container() {
        let sink = parse(DOCS_LOGGER).expect("loads");
        let pod = PodSpec::from_template(&sink.revision_template(true)).expect("converts");
        let mount = &pod.containers[0].volume_mounts[0];
        assert_eq!(mount.name, EVENT_VOLUME);
        assert_eq!(mount.mount_path, EVENT_MOUNT_DIR);
        let bare = PodSpec::from_template(&sink.revision_template(false)).expect("converts");
        assert!(bare.containers[0].volume_mounts.is_empty());
    }

    #[test]
    fn refusals_name_the_field() {
        let no_job = "apiVersion: sinks.knative.dev/v1alpha1\nkind: JobSink\nmetadata: {name: j}\nspec: {}\n";
        assert_eq!(
            parse(no_job).expect_err("no job").0.as_deref(),
            Some("spec.job")
        );

        let unknown = DOCS_LOGGER.replace("completions: 1", "completion: 1");
        let (field, reason) = parse(&unknown).expect_err("unknown field");
        assert_eq!(field.as_deref(), Some("spec.job.spec.completion"));
        assert!(reason.contains("completions"), "{reason}");

        let always = DOCS_LOGGER.replace("restartPolicy: Never", "restartPolicy: Always");
        let (field, _) = parse(&always).expect_err("Always");
        assert_eq!(
            field.as_deref(),
            Some("spec.job.spec.template.spec.restartPolicy")
        );

        let none = DOCS_LOGGER.replace(
            "containers:\n            - name: main\n              image: docker.io/library/bash:5\n              command: [ \"cat\" ]\n              args:\n                - \"/etc/jobsink-event/event\"\n",
            "containers: []\n",
        );
        let (field, _) = parse(&none).expect_err("no container");
        assert_eq!(
            field.as_deref(),
            Some("spec.job.spec.template.spec.containers")
        );

        let negative = DOCS_LOGGER.replace("completions: 1", "backoffLimit: -1");
        let (field, _) = parse(&negative).expect_err("negative");
        assert_eq!(field.as_deref(), Some("spec.job.spec.backoffLimit"));

        let annotated = DOCS_LOGGER.replace(
            "name: job-sink-logger",
            "name: job-sink-logger\n  annotations:\n    pilotlight.dev/max-running-jobs: \"0\"",
        );
        let (field, _) = parse(&annotated).expect_err("zero");
        assert_eq!(
            field.as_deref(),
            Some("metadata.annotations[\"pilotlight.dev/max-running-jobs\"]")
        );
    }

    #[test]
    fn several_containers_need_no_port() {
        let two = DOCS_LOGGER.replace(
            "          containers:\n",
            "          containers:\n            - name: side\n              command: [\"true\"]\n",
        );
        let sink = parse(&two).expect("two containers load");
        assert_eq!(
            sink.job().expect("job").spec.template.spec.containers.len(),
            2
        );
    }

    #[test]
    fn the_limits_come_from_annotations() {
        let annotated = DOCS_LOGGER.replace(
            "name: job-sink-logger",
            "name: job-sink-logger\n  annotations:\n    pilotlight.dev/max-running-jobs: \"2\"\n    pilotlight.dev/job-history-limit: \"5\"",
        );
        let sink = parse(&annotated).expect("loads");
        assert_eq!(sink.max_running_jobs(4), Ok(2));
        assert_eq!(sink.history_limit(), Ok(5));
        let plain = parse(DOCS_LOGGER).expect("loads");
        assert_eq!(plain.max_running_jobs(4), Ok(4));
        assert_eq!(plain.history_limit(), Ok(DEFAULT_HISTORY_LIMIT));
    }
}
