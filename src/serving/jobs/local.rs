//! Jobs on this machine: a job is pods run to completion, each pod the
//! template's containers as local processes or in the container engine
//! (the rule of Services: `pilotlight.dev/runtime`, else images mean
//! containers).
//!
//! Each job gets a folder, `{data_dir}/serving/jobs/{namespace}-{job}`,
//! with the event file (`jobsink-event/event`), and each container pod a
//! folder there with its volumes; the folder goes when the job ends (and
//! leftovers of a killed run at the next start). A process sees the event
//! at `$K_EVENT_PATH`; a container at `/etc/jobsink-event/event` (or where
//! its `volumeMounts` put the `jobsink-event` volume), with `K_EVENT_PATH`
//! set to it too.
//!
//! A pod whose container cannot start (no such command) counts as failed;
//! a job whose engine or image is not there does not start at all (the
//! endpoint answers 503 and the event comes again), as a Kubernetes pod
//! waits for its image instead of failing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, RemoveContainerOptions,
};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;

use super::{
    EVENT_PATH_ENV, EXECUTION_MODE_ENV, JobOutcome, JobRun, JobRuntime, JobSettings,
    KNATIVE_EXECUTION_MODE_ENV, Progress,
};
use crate::api::jobsink::{EVENT_FILE, EVENT_MOUNT_DIR, EVENT_VOLUME, JobSink};
use crate::api::pod::{ContainerNetwork, LocalRuntime, PodSpec, RUNTIME_ANNOTATION};
use crate::backoff::Backoff;
use crate::serving::runtime::config::{self, ConfigObjects};
use crate::serving::runtime::container::engine::{Engine, EngineConnector, OWNER_LABEL};
use crate::serving::runtime::container::image::{self, ImageRef, engine_message};
use crate::serving::runtime::container::launcher::{
    describe_exit as container_exit, forward_output, wait_stopped, write_volumes,
};
use crate::serving::runtime::container::spec::{InstancePlan, create_body};
use crate::serving::runtime::local::output::Output;
use crate::serving::runtime::local::{ConditionReport, LocalWorkload};
use crate::serving::runtime::process::launcher::{
    command, describe_exit, pipe, signal_group, spawn,
};

/// How long an ended pod's last lines may take to arrive.
const DRAIN_WAIT: Duration = Duration::from_millis(500);
/// The same for a container's, which come through the engine's attach
/// stream: it ends by itself once the container has exited, so this only
/// bounds a stream that hangs.
const CONTAINER_OUTPUT_WAIT: Duration = Duration::from_secs(10);
/// The label of a job's containers (besides the data folder's owner label).
const JOB_LABEL: &str = "dev.pilotlight.job";
/// Knative's label naming the JobSink of a job.
pub(super) const SINK_LABEL: &str = "sinks.knative.dev/job-sink-name";

/// Runs jobs as local processes or containers.
pub(crate) struct LocalJobs {
    settings: JobSettings,
    objects: watch::Receiver<Arc<ConfigObjects>>,
    connector: Arc<EngineConnector>,
    network: ContainerNetwork,
    jobs_dir: PathBuf,
}

impl LocalJobs {
    /// Shares the container runtime's engine connection (and so its
    /// cleanup of a killed run's containers, which carry the same owner
    /// label).
    pub(crate) fn new(
        settings: JobSettings,
        objects: watch::Receiver<Arc<ConfigObjects>>,
        connector: Arc<EngineConnector>,
        network: ContainerNetwork,
    ) -> Self {
        let jobs_dir = settings.data_dir.join("serving").join("jobs");
        // Events of a killed run's jobs; those events come again.
        let _ = std::fs::remove_dir_all(&jobs_dir);
        LocalJobs {
            settings,
            objects,
            connector,
            network,
            jobs_dir,
        }
    }

    /// The runtime and the pod of `sink`'s jobs, checked for it.
    fn plan(&self, sink: &JobSink) -> Result<(LocalRuntime, PodSpec), String> {
        let field = |e: crate::api::Invalid| format!("spec.job.{e}");
        let runtime = LocalRuntime::of(&sink.revision_template(false)).map_err(field)?;
        let mut pod = match runtime {
            LocalRuntime::Process => {
                PodSpec::from_template(&sink.revision_template(false)).map_err(field)?
            }
            LocalRuntime::Container => {
                PodSpec::from_template(&sink.revision_template(true)).map_err(field)?
            }
        };
        // No container serves: none gets PORT or Knative's K_SERVICE.
        pod.serving = pod.containers.len();
        for container in &mut pod.containers {
            container.port = None;
            container.readiness = None;
            let field = format!("spec.job.{}", container.field);
            match runtime {
                LocalRuntime::Process => {
                    if container.command.is_empty() {
                        return Err(format!(
                            "{field} has no command: the process runtime runs commands; add command (and args), or give it an image (without the annotation {RUNTIME_ANNOTATION}: process) to run it in a container engine"
                        ));
                    }
                    // The event is at $K_EVENT_PATH, wherever it is mounted.
                    container.volume_mounts.retain(|m| m.name != EVENT_VOLUME);
                    if let Some(mount) = container.volume_mounts.first() {
                        return Err(format!(
                            "{field}.volumeMounts: a process cannot mount volume '{}' at {}; give the container an image to run it in a container engine",
                            mount.name, mount.mount_path
                        ));
                    }
                }
                LocalRuntime::Container => {
                    if container.image.is_none() {
                        return Err(format!(
                            "{field} has no image: the container runtime runs images; give it one, or set the annotation {RUNTIME_ANNOTATION}: process on spec.job.spec.template.metadata"
                        ));
                    }
                }
            }
        }
        Ok((runtime, pod))
    }
}

#[async_trait::async_trait]
impl JobRuntime for LocalJobs {
    fn name_for(&self, sink: &JobSink) -> &'static str {
        LocalRuntime::of(&sink.revision_template(false))
            .unwrap_or(LocalRuntime::Process)
            .name()
    }

    fn check(&self, sink: &JobSink) -> Result<(), String> {
        sink.job().map_err(|e| e.to_string())?;
        self.plan(sink).map(|_| ())
    }

    async fn run(&self, job: &JobRun, progress: &Progress) -> Result<JobOutcome, String> {
        let (runtime, pod) = self.plan(&job.spec)?;
        {
            let objects = self.objects.borrow().clone();
            config::check(&pod, &objects, &job.sink.namespace)
                .map_err(|e| format!("spec.job.{e}"))?;
        }
        let dir = self
            .jobs_dir
            .join(format!("{}-{}", job.sink.namespace, job.name));
        let folder = JobFolder::create(&dir, &job.event_json)
            .map_err(|e| format!("cannot write the event file in {}: {e}", dir.display()))?;
        let workload = Arc::new(LocalWorkload {
            service: job.sink.clone(),
            revision: job.name.clone(),
            pod,
            drain_timeout: self.settings.stop_grace,
        });
        let pods = match runtime {
            LocalRuntime::Process => Pods::Process(ProcessPods {
                workload,
                objects: self.objects.clone(),
                event: folder.event_file(),
            }),
            LocalRuntime::Container => {
                let prepared = self.prepare(&workload).await?;
                Pods::Container(ContainerPods {
                    network: workload.pod.network.unwrap_or(self.network),
                    workload,
                    objects: self.objects.clone(),
                    engine: prepared.0,
                    images: prepared.1,
                    owner: self.connector.owner().to_owned(),
                    dir: dir.clone(),
                    event_json: job.event_json.clone(),
                })
            }
        };
        let outcome = run_pods(job, &pods, progress, &self.settings).await;
        drop(folder);
        Ok(outcome)
    }

    async fn exit(&self) {
        self.connector.remove_all().await;
    }
}

impl LocalJobs {
    /// Connects the engine and makes each container's image present; an
    /// error means the job cannot start now.
    async fn prepare(
        &self,
        workload: &LocalWorkload,
    ) -> Result<(Arc<Engine>, Vec<String>), String> {
        let engine = self.connector.engine().await?;
        let objects = self.objects.borrow().clone();
        let pod = &workload.pod;
        let mut ids = Vec::with_capacity(pod.containers.len());
        for container in &pod.containers {
            let reference = ImageRef::parse(container.image.as_deref().unwrap_or_default());
            let credentials = config::registry_credentials(
                &pod.image_pull_secrets,
                &objects,
                &workload.service.namespace,
                &reference.registry,
            )?;
            let prepared = image::prepare(
                &engine,
                &reference,
                container.pull_policy,
                credentials,
                &ConditionReport::detached(),
            )
            .await
            .map_err(|condition| condition.message)?;
            ids.push(prepared.id);
        }
        Ok((engine, ids))
    }
}

/// Runs pods until `completions` succeeded (`parallelism` at once), a
/// failure is one too many, a `podFailurePolicy` rule fails the job, or
/// `activeDeadlineSeconds` passes.
async fn run_pods(
    job: &JobRun,
    pods: &Pods,
    progress: &Progress,
    settings: &JobSettings,
) -> JobOutcome {
    let Some(template) = job.spec.spec.job.as_ref() else {
        return failed("CannotRun", "spec.job is required".into(), None, Vec::new());
    };
    let spec = &template.spec;
    let count = |n: Option<i32>| u32::try_from(n.unwrap_or(1)).unwrap_or(1).max(1);
    let completions = count(spec.completions);
    let parallelism = count(spec.parallelism);
    let backoff_limit = job.spec.backoff_limit();
    let policy = spec.pod_failure_policy.as_ref();
    let body = async {
        let mut running = FuturesUnordered::new();
        let (mut succeeded, mut failures, mut index) = (0u32, 0u32, 0u32);
        let mut backoff = Backoff::new(settings.backoff_initial, settings.backoff_max);
        loop {
            while (running.len() as u32) < parallelism
                && succeeded + (running.len() as u32) < completions
            {
                if failures > 0 {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                progress.pod_started();
                running.push(pods.run(index));
                index += 1;
            }
            let Some(pod) = running.next().await else {
                return failed("CannotRun", "no pod ran".into(), None, Vec::new());
            };
            let ok = pod.exit_code == Some(0);
            progress.pod_ended(!ok, pod.exit_code, &pod.output);
            if ok {
                succeeded += 1;
                if succeeded >= completions {
                    return JobOutcome {
                        succeeded: true,
                        exit_code: Some(0),
                        reason: None,
                        message: None,
                        output: pod.output,
                    };
                }
                continue;
            }
            match policy_action(policy, &pod) {
                Action::FailJob => {
                    return failed(
                        "PodFailurePolicy",
                        format!("{}; a podFailurePolicy rule fails the job", pod.how),
                        pod.exit_code,
                        pod.output,
                    );
                }
                Action::Ignore => {}
                Action::Count => {
                    failures += 1;
                    if failures > backoff_limit {
                        return failed(
                            "BackoffLimitExceeded",
                            format!(
                                "{} pod(s) failed, over backoffLimit {backoff_limit}; the last {}",
                                failures, pod.how
                            ),
                            pod.exit_code,
                            pod.output,
                        );
                    }
                }
            }
        }
    };
    let deadline = spec
        .active_deadline_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs);
    match deadline {
        None => body.await,
        Some(deadline) => match tokio::time::timeout(deadline, body).await {
            Ok(outcome) => outcome,
            // The pods' guards stop what still runs.
            Err(_) => failed(
                "DeadlineExceeded",
                format!(
                    "the job was active longer than activeDeadlineSeconds ({}s)",
                    deadline.as_secs()
                ),
                None,
                Vec::new(),
            ),
        },
    }
}

fn failed(
    reason: &str,
    message: String,
    exit_code: Option<i64>,
    output: Vec<String>,
) -> JobOutcome {
    JobOutcome {
        succeeded: false,
        exit_code,
        reason: Some(reason.into()),
        message: Some(message),
        output,
    }
}

/// What a `podFailurePolicy` does with a failed pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    FailJob,
    Ignore,
    Count,
}

/// The first rule whose `onExitCodes` matches the pod's failing container;
/// rules on pod conditions never match here (a local pod is not disrupted
/// or evicted). No match counts the failure.
fn policy_action(
    policy: Option<&k8s_openapi::api::batch::v1::PodFailurePolicy>,
    pod: &PodResult,
) -> Action {
    let Some(policy) = policy else {
        return Action::Count;
    };
    let Some(code) = pod.exit_code.and_then(|c| i32::try_from(c).ok()) else {
        return Action::Count;
    };
    for rule in &policy.rules {
        let Some(codes) = &rule.on_exit_codes else {
            continue;
        };
        if codes
            .container_name
            .as_ref()
            .is_some_and(|name| *name != pod.container)
        {
            continue;
        }
        let listed = codes.values.contains(&code);
        let matches = match codes.operator.as_str() {
            "In" => listed,
            "NotIn" => !listed,
            _ => false,
        };
        if matches {
            return match rule.action.as_str() {
                "FailJob" | "FailIndex" => Action::FailJob,
                "Ignore" => Action::Ignore,
                _ => Action::Count,
            };
        }
    }
    Action::Count
}

/// How one pod ended.
#[derive(Debug, Clone, Default)]
struct PodResult {
    /// 0 when every container exited 0; else the failing container's code
    /// (128 + the signal for a killed process, as Kubernetes reports it),
    /// None when it could not start.
    exit_code: Option<i64>,
    /// The container that failed (or the last one).
    container: String,
    /// "container main exited with code 3".
    how: String,
    output: Vec<String>,
}

/// The job's folder and event file, removed when dropped.
struct JobFolder {
    dir: PathBuf,
}

impl JobFolder {
    fn create(dir: &Path, event: &[u8]) -> std::io::Result<JobFolder> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        // Only pilotlight's user reads the events on the host.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let folder = JobFolder {
            dir: dir.to_owned(),
        };
        let events = dir.join(EVENT_VOLUME);
        std::fs::create_dir_all(&events)?;
        std::fs::set_permissions(&events, std::fs::Permissions::from_mode(0o755))?;
        write_event(&events, event)?;
        Ok(folder)
    }

    fn event_file(&self) -> PathBuf {
        self.dir.join(EVENT_VOLUME).join(EVENT_FILE)
    }
}

impl Drop for JobFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `event` as `dir/event`, readable by a container's user.
fn write_event(dir: &Path, event: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(EVENT_FILE);
    std::fs::write(&path, event)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
}

/// The environment a job's container gets besides its own: the event's
/// path and the execution mode (unless the template sets it, as Knative's
/// webhook leaves it).
fn job_env(env: &mut Vec<(String, String)>, event_path: &str) {
    env.retain(|(name, _)| name != EVENT_PATH_ENV);
    env.push((EVENT_PATH_ENV.to_owned(), event_path.to_owned()));
    for name in [EXECUTION_MODE_ENV, KNATIVE_EXECUTION_MODE_ENV] {
        if !env.iter().any(|(n, _)| n == name) {
            env.push((name.to_owned(), "batch".to_owned()));
        }
    }
}

enum Pods {
    Process(ProcessPods),
    Container(ContainerPods),
}

impl Pods {
    async fn run(&self, index: u32) -> PodResult {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        match self {
            Pods::Process(pods) => {
                let name: Arc<str> =
                    format!("{}-{index}-{}", pods.workload.revision, &suffix[..5]).into();
                pods.run(&name).await
            }
            Pods::Container(pods) => {
                let name: Arc<str> =
                    format!("{}-{index}-{}", pods.workload.revision, &suffix[..5]).into();
                pods.run(&name).await
            }
        }
    }
}

/// A pod's containers as local processes.
struct ProcessPods {
    workload: Arc<LocalWorkload>,
    objects: watch::Receiver<Arc<ConfigObjects>>,
    event: PathBuf,
}

/// Kills the process groups of a pod's processes when dropped (the job
/// ended, failed its deadline, or pilotlight stops).
struct ProcessGroups(Vec<u32>);

impl Drop for ProcessGroups {
    fn drop(&mut self) {
        for pid in &self.0 {
            signal_group(*pid, libc::SIGKILL);
        }
    }
}

impl ProcessPods {
    async fn run(&self, pod: &Arc<str>) -> PodResult {
        let workload = &self.workload;
        let objects = self.objects.borrow().clone();
        let several = workload.pod.containers.len() > 1;
        let mut groups = ProcessGroups(Vec::new());
        let mut children = Vec::new();
        for container in &workload.pod.containers {
            let failure = |how: String| PodResult {
                exit_code: None,
                container: container.name.clone(),
                how: format!("container {} {how}", container.name),
                output: Vec::new(),
            };
            let mut env =
                match config::environment(container, &objects, &workload.service.namespace, pod) {
                    Ok(env) => env,
                    Err(e) => return failure(format!("cannot start: {e}")),
                };
            job_env(&mut env, &self.event.to_string_lossy());
            let command = match command(workload, container, env, None) {
                Ok(command) => command,
                Err(e) => return failure(format!("cannot start: {e}")),
            };
            let program = command
                .as_std()
                .get_program()
                .to_string_lossy()
                .into_owned();
            let mut child = match spawn(command).await {
                Ok(child) => child,
                Err(e) => return failure(format!("cannot start '{program}': {e}")),
            };
            groups.0.extend(child.id());
            let output = Output::new(workload, pod, several.then_some(container.name.as_str()));
            let readers = pipe(&mut child, &output);
            children.push((container.name.clone(), child, output, readers));
        }
        let waits = children.iter_mut().map(|(_, child, _, _)| child.wait());
        let statuses = futures::future::join_all(waits).await;
        let mut result = PodResult::default();
        for ((name, _, output, readers), status) in children.into_iter().zip(statuses) {
            let _ = tokio::time::timeout(DRAIN_WAIT, futures::future::join_all(readers)).await;
            let (code, how) = match status {
                Ok(status) => (exit_code(status), describe_exit(status)),
                Err(e) => (None, format!("could not be waited for ({e})")),
            };
            // The first failing container speaks for the pod.
            if result.how.is_empty() || (result.exit_code == Some(0) && code != Some(0)) {
                result = PodResult {
                    exit_code: code,
                    how: format!("container {name} {how}"),
                    container: name,
                    output: output.tail(),
                };
            }
        }
        // Helpers a container left running go with the pod.
        drop(groups);
        result
    }
}

/// Kubernetes' exit code: the process's, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> Option<i64> {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .map(i64::from)
}

/// A pod's containers in the container engine, sharing the first one's
/// network as a pod's do.
struct ContainerPods {
    workload: Arc<LocalWorkload>,
    objects: watch::Receiver<Arc<ConfigObjects>>,
    engine: Arc<Engine>,
    /// Each container's image id.
    images: Vec<String>,
    network: ContainerNetwork,
    owner: String,
    /// The job's folder; each pod's volumes go in a folder of its own there.
    dir: PathBuf,
    event_json: Arc<[u8]>,
}

/// Removes a pod's containers when dropped, in the background (the job
/// ended or stopped).
struct Containers {
    docker: bollard::Docker,
    ids: Vec<String>,
}

impl Drop for Containers {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut self.ids);
        if ids.is_empty() {
            return;
        }
        let docker = self.docker.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(remove_containers(docker, ids));
        }
    }
}

async fn remove_containers(docker: bollard::Docker, ids: Vec<String>) {
    // Joined containers first: Podman keeps a container whose network
    // others share.
    for id in ids.iter().rev() {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        if let Err(e) = docker.remove_container(id, Some(options)).await {
            tracing::debug!(container = %id, "cannot remove a job's container: {}", engine_message(&e));
        }
    }
}

impl ContainerPods {
    async fn run(&self, pod: &Arc<str>) -> PodResult {
        let mut containers = Containers {
            docker: self.engine.docker.clone(),
            ids: Vec::new(),
        };
        let result = match self.start(pod, &mut containers).await {
            Ok(watched) => self.wait(watched).await,
            Err(failure) => failure,
        };
        let ids = std::mem::take(&mut containers.ids);
        remove_containers(self.engine.docker.clone(), ids).await;
        let _ = tokio::fs::remove_dir_all(self.dir.join(pod.as_ref())).await;
        result
    }

    /// Writes the pod's volumes, creates and starts its containers; what
    /// was created is in `containers`.
    async fn start(
        &self,
        pod: &Arc<str>,
        containers: &mut Containers,
    ) -> Result<Vec<Watched>, PodResult> {
        let workload = &self.workload;
        let spec = &workload.pod;
        let first = spec
            .containers
            .first()
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let failure = |container: &str, how: String| PodResult {
            exit_code: None,
            container: container.to_owned(),
            how,
            output: Vec::new(),
        };
        let objects = self.objects.borrow().clone();
        let dir = self.dir.join(pod.as_ref());
        let volume_dirs =
            write_volumes(workload, &dir, &objects).map_err(|e| failure(&first, e))?;
        if let Some(events) = volume_dirs.get(EVENT_VOLUME) {
            write_event(events, &self.event_json)
                .map_err(|e| failure(&first, format!("cannot write the event file: {e}")))?;
        }
        let docker = &self.engine.docker;
        let mut watched = Vec::new();
        let mut join: Option<String> = None;
        for (index, container) in spec.containers.iter().enumerate() {
            let name = &container.name;
            let mut env =
                config::environment(container, &objects, &workload.service.namespace, pod)
                    .map_err(|e| failure(name, format!("container {name} cannot start: {e}")))?;
            let event_dir = container
                .volume_mounts
                .iter()
                .find(|m| m.name == EVENT_VOLUME)
                .map_or(EVENT_MOUNT_DIR, |m| m.mount_path.as_str());
            job_env(
                &mut env,
                &format!("{}/{EVENT_FILE}", event_dir.trim_end_matches('/')),
            );
            let plan = InstancePlan {
                instance: pod,
                owner: &self.owner,
                network: self.network,
                port: 0,
                published: &BTreeMap::new(),
                volume_dirs: &volume_dirs,
                join: join.as_deref(),
            };
            let mut body = create_body(workload, index, &self.images[index], env, &plan);
            body.labels = Some(
                [
                    (OWNER_LABEL, self.owner.as_str()),
                    (SINK_LABEL, workload.service.name.as_str()),
                    (
                        "sinks.knative.dev/job-sink-namespace",
                        &workload.service.namespace,
                    ),
                    (JOB_LABEL, workload.revision.as_str()),
                    ("dev.pilotlight.container", name.as_str()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            );
            let options = CreateContainerOptions {
                name: Some(format!("pl-{}-{pod}-{name}", workload.service.namespace)),
                ..Default::default()
            };
            let created = docker
                .create_container(Some(options), body)
                .await
                .map_err(|e| {
                    failure(
                        name,
                        format!("creating container {name}: {}", engine_message(&e)),
                    )
                })?;
            containers.ids.push(created.id.clone());
            let output = Output::new(
                workload,
                pod,
                (spec.containers.len() > 1).then_some(name.as_str()),
            );
            // Attached before it starts, as `docker run` does, so that every
            // line is read however quickly the job exits: following its logs
            // once it ran raced with the engine writing them, and a quick
            // job's output was lost.
            let attach = AttachContainerOptions {
                stdout: true,
                stderr: true,
                stream: true,
                ..Default::default()
            };
            let attached = docker
                .attach_container(&created.id, Some(attach))
                .await
                .map_err(|e| {
                    failure(
                        name,
                        format!("attaching to container {name}: {}", engine_message(&e)),
                    )
                })?;
            let reader = tokio::spawn(forward_output(attached.output, output.clone()));
            docker
                .start_container(&created.id, None)
                .await
                .map_err(|e| {
                    failure(
                        name,
                        format!("starting container {name}: {}", engine_message(&e)),
                    )
                })?;
            join.get_or_insert_with(|| created.id.clone());
            watched.push(Watched {
                id: created.id,
                name: name.clone(),
                output,
                reader,
            });
        }
        Ok(watched)
    }

    /// Waits for every container to exit; the first failing one speaks for
    /// the pod.
    async fn wait(&self, watched: Vec<Watched>) -> PodResult {
        let docker = &self.engine.docker;
        let waits = watched.iter().map(|w| wait_exit(docker, &w.id));
        let exits = futures::future::join_all(waits).await;
        let mut result = PodResult::default();
        for (w, (code, how)) in watched.into_iter().zip(exits) {
            // The attach stream ends with the container; the bound only
            // guards against an engine that never closes it.
            let _ = tokio::time::timeout(CONTAINER_OUTPUT_WAIT, w.reader).await;
            if result.how.is_empty() || (result.exit_code == Some(0) && code != Some(0)) {
                result = PodResult {
                    exit_code: code,
                    how: format!("container {} {how}", w.name),
                    container: w.name,
                    output: w.output.tail(),
                };
            }
        }
        result
    }
}

/// A started container of a pod, with the task reading its output.
struct Watched {
    id: String,
    name: String,
    output: Output,
    reader: tokio::task::JoinHandle<()>,
}

/// Waits until the container stops, then reads its exit code and how it
/// ended.
async fn wait_exit(docker: &bollard::Docker, id: &str) -> (Option<i64>, String) {
    match wait_stopped(docker, id).await {
        Ok(state) => (
            state.as_ref().and_then(|s| s.exit_code),
            container_exit(state.as_ref()),
        ),
        Err(gone) => (None, gone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{
        PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
    };

    fn pod(code: i64, container: &str) -> PodResult {
        PodResult {
            exit_code: Some(code),
            container: container.into(),
            ..PodResult::default()
        }
    }

    #[test]
    fn pod_failure_policy_rules_on_exit_codes() {
        let rule = |action: &str, operator: &str, values: Vec<i32>, container: Option<&str>| {
            PodFailurePolicyRule {
                action: action.into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: container.map(Into::into),
                    operator: operator.into(),
                    values,
                }),
                on_pod_conditions: None,
            }
        };
        let policy = PodFailurePolicy {
            rules: vec![
                PodFailurePolicyRule {
                    action: "Ignore".into(),
                    on_exit_codes: None,
                    on_pod_conditions: Some(vec![]),
                },
                rule("FailJob", "In", vec![42], Some("main")),
                rule("Ignore", "NotIn", vec![1, 2], None),
            ],
        };
        assert_eq!(
            policy_action(Some(&policy), &pod(42, "main")),
            Action::FailJob
        );
        assert_eq!(
            policy_action(Some(&policy), &pod(42, "side")),
            Action::Ignore
        );
        assert_eq!(policy_action(Some(&policy), &pod(1, "main")), Action::Count);
        assert_eq!(policy_action(None, &pod(42, "main")), Action::Count);
    }

    #[test]
    fn the_job_env_points_at_the_event_and_keeps_a_set_mode() {
        let mut env = vec![(EXECUTION_MODE_ENV.to_owned(), "custom".to_owned())];
        job_env(&mut env, "/x/event");
        assert!(env.contains(&(EVENT_PATH_ENV.to_owned(), "/x/event".to_owned())));
        assert!(env.contains(&(EXECUTION_MODE_ENV.to_owned(), "custom".to_owned())));
        assert!(env.contains(&(KNATIVE_EXECUTION_MODE_ENV.to_owned(), "batch".to_owned())));
    }
}
