//! Jobs in Kubernetes mode: each event's job is a batch/v1 Job made from
//! `spec.job`, with the event in a Secret of the same name mounted at
//! `/etc/jobsink-event` (as Knative does), both owned by the JobSink, so
//! that deleting it deletes them. Kubernetes runs the pods, retries and
//! deadline; this side waits for the Job's `Complete` or `Failed`
//! condition, reads the last pod's exit code and last lines, and deletes
//! the Secret (the Job keeps running on its own if pilotlight stops, and
//! its Secret then goes with the JobSink).
//!
//! The Job's name comes from the event's `source` and `id`, so a redelivered
//! event (to this replica or another) finds the Job already there and
//! waits for it instead of running it twice.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use serde_json::json;

use super::local::SINK_LABEL;
use super::{
    EVENT_PATH_ENV, EXECUTION_MODE_ENV, JobOutcome, JobRun, JobRuntime, KNATIVE_EXECUTION_MODE_ENV,
    Progress,
};
use crate::api::jobsink::{EVENT_FILE, EVENT_MOUNT_DIR, EVENT_VOLUME, JobSink};

/// How often a running Job's status is read.
const POLL: Duration = Duration::from_secs(1);
/// Lines of the last pod's log kept in the history.
const TAIL_LINES: i64 = 20;

/// Runs jobs as batch/v1 Jobs in the cluster `client` talks to.
pub(crate) struct KubernetesJobs {
    client: kube::Client,
}

impl KubernetesJobs {
    pub(crate) fn new(client: kube::Client) -> Self {
        KubernetesJobs { client }
    }
}

#[async_trait::async_trait]
impl JobRuntime for KubernetesJobs {
    fn name_for(&self, _sink: &JobSink) -> &'static str {
        "kubernetes"
    }

    fn check(&self, sink: &JobSink) -> Result<(), String> {
        sink.job().map(|_| ()).map_err(|e| e.to_string())
    }

    async fn run(&self, job: &JobRun, progress: &Progress) -> Result<JobOutcome, String> {
        let namespace = &job.sink.namespace;
        let (secret, kube_job) = build(job)?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        create(&secrets, &secret, "Secret").await?;
        create(&jobs, &kube_job, "Job").await?;
        let outcome = self.wait(&jobs, job, progress).await;
        if let Err(e) = secrets.delete(&job.name, &DeleteParams::default()).await
            && !is_status(&e, 404)
        {
            tracing::warn!(job = %job.name, error = %e, "cannot delete the event's Secret; it goes with the JobSink");
        }
        outcome
    }
}

impl KubernetesJobs {
    /// Polls the Job until it has ended.
    async fn wait(
        &self,
        jobs: &Api<Job>,
        job: &JobRun,
        progress: &Progress,
    ) -> Result<JobOutcome, String> {
        loop {
            let current = match jobs.get(&job.name).await {
                Ok(current) => current,
                Err(e) if is_status(&e, 404) => {
                    return Ok(JobOutcome {
                        reason: Some("Deleted".into()),
                        message: Some(format!("Job {} was deleted before it ended", job.name)),
                        ..JobOutcome::default()
                    });
                }
                Err(e) => {
                    tracing::warn!(job = %job.name, error = %e, "cannot read the Job; trying again");
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            };
            let status = current.status.unwrap_or_default();
            let count = |n: Option<i32>| u32::try_from(n.unwrap_or(0)).unwrap_or(0);
            let failed = count(status.failed);
            progress.set_counts(
                count(status.active) + count(status.succeeded) + failed,
                failed,
            );
            let ended = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed"));
            if let Some(condition) = ended {
                let (exit_code, output) = self.last_pod(&job.sink.namespace, &job.name).await;
                let succeeded = condition.type_ == "Complete";
                return Ok(JobOutcome {
                    succeeded,
                    exit_code,
                    reason: (!succeeded).then(|| condition.reason.clone()).flatten(),
                    message: (!succeeded).then(|| condition.message.clone()).flatten(),
                    output,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The exit code and last lines of the Job's newest pod, as far as they
    /// can be read.
    async fn last_pod(&self, namespace: &str, job: &str) -> (Option<i64>, Vec<String>) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let listed = pods
            .list(&ListParams::default().labels(&format!("job-name={job}")))
            .await;
        let Some(pod) = listed.ok().and_then(|list| {
            list.items
                .into_iter()
                .max_by_key(|p| p.metadata.creation_timestamp.clone())
        }) else {
            return (None, Vec::new());
        };
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        let terminated: Vec<(String, i32)> = statuses
            .iter()
            .filter_map(|s| {
                let t = s.state.as_ref()?.terminated.as_ref()?;
                Some((s.name.clone(), t.exit_code))
            })
            .collect();
        let failing = terminated
            .iter()
            .find(|(_, code)| *code != 0)
            .or(terminated.first())
            .cloned();
        let Some((container, code)) = failing else {
            return (None, Vec::new());
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        let params = LogParams {
            container: Some(container),
            tail_lines: Some(TAIL_LINES),
            ..LogParams::default()
        };
        let output = pods
            .logs(&name, &params)
            .await
            .map(|text| text.lines().map(str::to_owned).collect())
            .unwrap_or_default();
        (Some(i64::from(code)), output)
    }
}

async fn create<K>(api: &Api<K>, object: &K, what: &str) -> Result<(), String>
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        // A redelivered event: its job is there already.
        Err(e) if is_status(&e, 409) => Ok(()),
        Err(e) => Err(format!("cannot create the job's {what}: {e}")),
    }
}

fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

/// The event's Secret and the Job, owned by the JobSink.
pub(super) fn build(job: &JobRun) -> Result<(Secret, Job), String> {
    let template = job.spec.job().map_err(|e| e.to_string())?;
    let key = &job.sink;
    let owner = job
        .spec
        .metadata
        .uid
        .as_ref()
        .and_then(|uid| uid.as_str())
        .map(|uid| {
            json!([{
                "apiVersion": job.spec.api_version,
                "kind": "JobSink",
                "name": key.name,
                "uid": uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }])
        });
    let mut labels = json!({ "sinks.knative.dev/job-sink": "true" });
    // A label value is at most 63 characters; a longer JobSink name is
    // only in the annotations.
    if key.name.len() <= 63 {
        labels[SINK_LABEL] = json!(key.name);
    }
    let annotations = json!({
        "sinks.knative.dev/job-sink-name": key.name,
        "sinks.knative.dev/event-id": job.event.id(),
        "sinks.knative.dev/event-source": job.event.source(),
    });
    let metadata = |extra_labels: &serde_json::Value| {
        let mut meta = json!({
            "name": job.name,
            "namespace": key.namespace,
            "labels": labels.clone(),
            "annotations": annotations.clone(),
        });
        if let (Some(map), Some(extra)) = (meta["labels"].as_object_mut(), extra_labels.as_object())
        {
            for (k, v) in extra {
                map.entry(k.clone()).or_insert(v.clone());
            }
        }
        if let Some(owner) = &owner {
            meta["ownerReferences"] = owner.clone();
        }
        meta
    };
    let encoded = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        &job.event_json[..],
    );
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(&json!({})),
        "immutable": true,
        "data": { EVENT_FILE: encoded },
    }))
    .map_err(|e| format!("cannot build the event's Secret: {e}"))?;

    let mut value = serde_json::to_value(template)
        .map_err(|e| format!("spec.job cannot be written as a Job: {e}"))?;
    value["apiVersion"] = json!("batch/v1");
    value["kind"] = json!("Job");
    let own_labels = value["metadata"]["labels"].clone();
    let own_annotations = value["metadata"]["annotations"].clone();
    value["metadata"] = metadata(&own_labels);
    if let (Some(map), Some(extra)) = (
        value["metadata"]["annotations"].as_object_mut(),
        own_annotations.as_object(),
    ) {
        for (k, v) in extra {
            map.entry(k.clone()).or_insert(v.clone());
        }
    }
    let pod = &mut value["spec"]["template"]["spec"];
    if pod
        .get("restartPolicy")
        .is_none_or(serde_json::Value::is_null)
    {
        pod["restartPolicy"] = json!("Never");
    }
    let volumes = pod
        .as_object_mut()
        .ok_or("spec.job.spec.template.spec is not an object")?
        .entry("volumes")
        .or_insert_with(|| json!([]));
    if let Some(volumes) = volumes.as_array_mut() {
        volumes.push(json!({
            "name": EVENT_VOLUME,
            "secret": { "secretName": job.name },
        }));
    }
    for list in ["containers", "initContainers"] {
        let Some(containers) = pod.get_mut(list).and_then(|c| c.as_array_mut()) else {
            continue;
        };
        for container in containers {
            prepare_container(container);
        }
    }
    let kube_job: Job = serde_json::from_value(value)
        .map_err(|e| format!("spec.job cannot be written as a Job: {e}"))?;
    Ok((secret, kube_job))
}

/// Mounts the event (unless the container mounts it elsewhere) and sets
/// the execution mode (unless it is set) and the event's path.
fn prepare_container(container: &mut serde_json::Value) {
    let Some(object) = container.as_object_mut() else {
        return;
    };
    let mounts = object.entry("volumeMounts").or_insert_with(|| json!([]));
    let mut dir = EVENT_MOUNT_DIR.to_owned();
    if let Some(mounts) = mounts.as_array_mut() {
        match mounts.iter().find(|m| m["name"] == EVENT_VOLUME) {
            Some(mount) => {
                dir = mount["mountPath"]
                    .as_str()
                    .unwrap_or(EVENT_MOUNT_DIR)
                    .trim_end_matches('/')
                    .to_owned();
            }
            None => mounts.push(json!({
                "name": EVENT_VOLUME,
                "mountPath": EVENT_MOUNT_DIR,
                "readOnly": true,
            })),
        }
    }
    let env = object.entry("env").or_insert_with(|| json!([]));
    if let Some(env) = env.as_array_mut() {
        for name in [EXECUTION_MODE_ENV, KNATIVE_EXECUTION_MODE_ENV] {
            if !env.iter().any(|e| e["name"] == name) {
                env.push(json!({ "name": name, "value": "batch" }));
            }
        }
        env.retain(|e| e["name"] != EVENT_PATH_ENV);
        env.push(json!({ "name": EVENT_PATH_ENV, "value": format!("{dir}/{EVENT_FILE}") }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ObjectKey;
    use std::sync::Arc;

    #[test]
    fn the_job_mounts_the_event_secret_and_is_owned_by_the_jobsink() {
        let yaml = "apiVersion: sinks.knative.dev/v1alpha1\nkind: JobSink\nmetadata:\n  name: logger\n  namespace: shop\n  uid: 1234-abcd\nspec:\n  job:\n    metadata:\n      labels: {team: a}\n    spec:\n      backoffLimit: 2\n      template:\n        spec:\n          containers:\n            - name: main\n              image: docker.io/library/bash:5\n              command: [cat]\n              args: [/etc/jobsink-event/event]\n            - name: side\n              image: busybox:1\n              volumeMounts:\n                - {name: jobsink-event, mountPath: /custom/}\n";
        let sink: JobSink = serde_saphyr::from_str(yaml).expect("parses");
        let event = crate::cloudevent::test_event("e-1", "demo", None);
        let job = JobRun {
            sink: ObjectKey::new("shop", "logger"),
            spec: Arc::new(sink),
            name: "logger-0123".into(),
            event_json: crate::cloudevent::encode_structured(&event).into(),
            event,
        };
        let (secret, kube_job) = build(&job).expect("builds");
        assert_eq!(secret.metadata.name.as_deref(), Some("logger-0123"));
        let data = secret.data.expect("data");
        assert_eq!(data["event"].0, &job.event_json[..]);
        let owners = kube_job.metadata.owner_references.expect("owned");
        assert_eq!(owners[0].kind, "JobSink");
        assert_eq!(owners[0].uid, "1234-abcd");
        let labels = kube_job.metadata.labels.expect("labels");
        assert_eq!(labels["team"], "a");
        assert_eq!(labels[SINK_LABEL], "logger");
        let spec = kube_job.spec.expect("spec");
        assert_eq!(spec.backoff_limit, Some(2));
        let pod = spec.template.spec.expect("pod");
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let volume = pod.volumes.expect("volumes").pop().expect("event volume");
        assert_eq!(
            volume.secret.and_then(|s| s.secret_name).as_deref(),
            Some("logger-0123")
        );
        let main = &pod.containers[0];
        let mount = &main.volume_mounts.as_ref().expect("mounts")[0];
        assert_eq!(mount.mount_path, "/etc/jobsink-event");
        let env = main.env.as_ref().expect("env");
        let value = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(value("K_EXECUTION_MODE").as_deref(), Some("batch"));
        assert_eq!(value("KNATIVE_EXECUTION_MODE").as_deref(), Some("batch"));
        assert_eq!(
            value("K_EVENT_PATH").as_deref(),
            Some("/etc/jobsink-event/event")
        );
        let side = &pod.containers[1];
        assert_eq!(side.volume_mounts.as_ref().expect("mounts").len(), 1);
        let side_path = side
            .env
            .as_ref()
            .and_then(|env| env.iter().find(|e| e.name == "K_EVENT_PATH"))
            .and_then(|e| e.value.clone());
        assert_eq!(side_path.as_deref(), Some("/custom/event"));
    }
}
