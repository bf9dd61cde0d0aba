//! The process runtime with real processes: `sh` and python3 one-liners that
//! listen on `$PORT` (the cargo-built binary is not available to lib tests).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::api::ObjectKey;
use crate::api::pod::ConfigKind;
use crate::api::service::{
    Container, EnvVar, HttpGetAction, Probe, RevisionSpec, RevisionTemplate,
};
use crate::serving::runtime::config::ConfigData;
use crate::serving::runtime::{DeploymentStatus, Endpoint, WorkloadKind};

/// Generous: the machine is shared, and a slow pass beats a flaky one.
const PATIENCE: Duration = Duration::from_secs(30);

/// An HTTP server on `$PORT` that serves the working directory.
const PYTHON_SERVER: &str = r#"exec python3 -c 'import http.server,os; http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), http.server.SimpleHTTPRequestHandler).serve_forever()'"#;

/// Writes its pid to `$PIDS/<port>.pid`, then becomes the server (same pid).
/// The shell's `$$` is written `$$$$`: a command, as in Kubernetes, reads
/// `$$` as an escaped `$`.
fn server_recording_pid() -> String {
    format!(r#"echo $$$$ > "$PIDS/$PORT.pid"; {PYTHON_SERVER}"#)
}

fn fast_config() -> LocalConfig {
    LocalConfig {
        stop_grace: Duration::from_secs(5),
        restart_backoff_initial: Duration::from_millis(10),
        restart_backoff_max: Duration::from_millis(100),
    }
}

fn workload(script: &str, env: &[(&str, &str)]) -> Workload {
    workload_of(vec![shell(script, env)])
}

/// A container that runs `script` with `sh -c`.
fn shell(script: &str, env: &[(&str, &str)]) -> Container {
    Container {
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: env
            .iter()
            .map(|(k, v)| EnvVar {
                name: (*k).to_owned(),
                value: Some((*v).to_owned()),
                value_from: None,
            })
            .collect(),
        ..Container::default()
    }
}

fn workload_of(containers: Vec<Container>) -> Workload {
    Workload {
        service: ObjectKey::new("default", "hello"),
        revision: "hello-00001".into(),
        template: RevisionTemplate {
            spec: RevisionSpec {
                containers,
                ..RevisionSpec::default()
            },
            ..RevisionTemplate::default()
        },
        drain_timeout: Duration::from_secs(60),
        kind: WorkloadKind::Revision,
    }
}

/// No Secrets or ConfigMaps loaded.
fn no_objects() -> watch::Receiver<Arc<ConfigObjects>> {
    watch::channel(Arc::new(ConfigObjects::default())).1
}

fn deploy(workload: Workload) -> Arc<dyn Deployment> {
    ProcessRuntime::new(fast_config(), no_objects())
        .deploy(workload)
        .expect("a command can run")
}

async fn wait_status(
    deployment: &dyn Deployment,
    what: &str,
    done: impl Fn(&DeploymentStatus) -> bool,
) -> DeploymentStatus {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = deployment.status();
        if done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; status: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_endpoints(deployment: &dyn Deployment, count: usize) -> Arc<[Endpoint]> {
    let mut endpoints = deployment.endpoints();
    let waited = tokio::time::timeout(PATIENCE, endpoints.wait_for(|e| e.len() == count)).await;
    match waited {
        Ok(Ok(endpoints)) => endpoints.clone(),
        _ => panic!(
            "timed out waiting for {count} endpoints; status: {:?}",
            deployment.status()
        ),
    }
}

/// A raw HTTP/1.0 GET; returns the whole answer.
async fn get(address: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Alive and not a zombie (a container's init may be slow to reap).
fn is_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.trim().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

async fn wait_dead(pid: i32) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while is_alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} still alive"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads a pid file, waiting until the child has written it.
async fn read_pid(path: &Path) -> i32 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Ok(pid) = text.trim().parse() {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pid in {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn pid_of(pids: &Path, endpoint: &Endpoint) -> i32 {
    read_pid(&pids.join(format!("{}.pid", endpoint.address.port()))).await
}

#[tokio::test]
async fn scaling_from_zero_starts_an_instance_that_answers() {
    let deployment = deploy(workload(PYTHON_SERVER, &[]));
    assert_eq!(deployment.status(), DeploymentStatus::default());
    deployment.scale(1);
    let endpoints = wait_endpoints(&*deployment, 1).await;
    assert_eq!(&*endpoints[0].id, "hello-00001-1");
    let answer = get(endpoints[0].address, "/").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let status = deployment.status();
    assert_eq!((status.desired, status.actual, status.ready), (1, 1, 1));
    deployment.shutdown().await;
}

#[tokio::test]
async fn instances_get_port_knative_variables_and_container_env() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().to_string_lossy().into_owned();
    let script = format!(r#"env > "$OUT/env"; {PYTHON_SERVER}"#);
    let env = [("OUT", out.as_str()), ("GREETING", "hi"), ("PORT", "1")];
    let deployment = deploy(workload(&script, &env));
    deployment.scale(1);
    let endpoints = wait_endpoints(&*deployment, 1).await;
    let env = std::fs::read_to_string(dir.path().join("env")).expect("env written");
    let lines: Vec<&str> = env.lines().collect();
    let port = format!("PORT={}", endpoints[0].address.port());
    for expected in [
        port.as_str(),
        "K_SERVICE=hello",
        "K_CONFIGURATION=hello",
        "K_REVISION=hello-00001",
        "GREETING=hi",
    ] {
        assert!(lines.contains(&expected), "{expected} missing from:\n{env}");
    }
    assert!(
        lines.iter().any(|l| l.starts_with("PATH=")),
        "pilotlight's own environment is inherited:\n{env}"
    );
    deployment.shutdown().await;
}

#[tokio::test]
async fn scaling_down_stops_idle_instances_first_and_waits_for_in_flight_requests() {
    let pids_dir = tempfile::tempdir().expect("temp dir");
    let pids = pids_dir.path().to_string_lossy().into_owned();
    let deployment = deploy(workload(&server_recording_pid(), &[("PIDS", &pids)]));
    deployment.scale(2);
    let endpoints = wait_endpoints(&*deployment, 2).await;
    let (busy, idle) = (&endpoints[0], &endpoints[1]);
    let (busy_pid, idle_pid) = (
        pid_of(pids_dir.path(), busy).await,
        pid_of(pids_dir.path(), idle).await,
    );
    assert!(busy.load.try_begin(), "a request to the busy instance");

    // 2 → 1 stops the idle one.
    deployment.scale(1);
    wait_dead(idle_pid).await;
    let remaining = wait_endpoints(&*deployment, 1).await;
    assert_eq!(remaining[0].id, busy.id);

    // 1 → 0: out of the endpoints at once, but no SIGTERM until the request ends.
    deployment.scale(0);
    wait_endpoints(&*deployment, 0).await;
    assert!(busy.load.is_draining());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(is_alive(busy_pid), "stopped while a request was in flight");
    assert_eq!(deployment.status().actual, 1);
    busy.load.end();
    wait_dead(busy_pid).await;
    wait_status(&*deployment, "no instances", |s| s.actual == 0).await;
}

#[tokio::test]
async fn a_crash_is_reported_and_restarted_with_backoff() {
    let deployment = deploy(workload("echo starting; echo boom >&2; exit 3", &[]));
    deployment.scale(1);
    let status = wait_status(&*deployment, "two restarts", |s| s.restarts >= 2).await;
    let failure = status.last_failure.expect("a failure is reported");
    assert!(failure.starts_with("instance hello-00001-"), "{failure}");
    // Its last output lines, stdout and stderr as they came.
    assert!(
        failure.ends_with(" exited with code 3: starting\nboom"),
        "{failure}"
    );
    assert_eq!(status.ready, 0);
    deployment.shutdown().await;
}

#[tokio::test]
async fn an_instance_that_becomes_ready_clears_the_last_failure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("crashed").to_string_lossy().into_owned();
    let script = format!(
        r#"if [ ! -e "$MARKER" ]; then touch "$MARKER"; echo boom >&2; exit 3; fi; {PYTHON_SERVER}"#
    );
    let deployment = deploy(workload(&script, &[("MARKER", &marker)]));
    deployment.scale(1);
    let endpoints = wait_endpoints(&*deployment, 1).await;
    assert_eq!(&*endpoints[0].id, "hello-00001-2", "the replacement");
    let status = deployment.status();
    assert_eq!(status.restarts, 1);
    assert_eq!(status.last_failure, None);
    deployment.shutdown().await;
}

#[tokio::test]
async fn a_command_that_cannot_start_is_a_failure() {
    let mut workload = workload("", &[]);
    workload.template.spec.containers[0].command = vec!["/nonexistent/app".into()];
    let deployment = deploy(workload);
    deployment.scale(1);
    let status = wait_status(&*deployment, "a failure", |s| s.last_failure.is_some()).await;
    let failure = status.last_failure.unwrap_or_default();
    assert!(
        failure.starts_with("instance hello-00001-1 cannot start '/nonexistent/app': "),
        "{failure}"
    );
    deployment.shutdown().await;
}

#[tokio::test]
async fn http_readiness_waits_for_a_successful_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut workload = workload(&format!(r#"echo $PORT > port; {PYTHON_SERVER}"#), &[]);
    let container = &mut workload.template.spec.containers[0];
    container.working_dir = Some(dir.path().to_string_lossy().into_owned());
    container.readiness_probe = Some(Probe {
        http_get: Some(HttpGetAction {
            path: Some("/ready".into()),
            ..HttpGetAction::default()
        }),
        ..Probe::default()
    });
    let deployment = deploy(workload);
    deployment.scale(1);
    let port = read_pid(&dir.path().join("port")).await;
    let address = SocketAddr::from(([127, 0, 0, 1], u16::try_from(port).expect("a port")));
    // Listening, but /ready answers 404 until the file exists.
    let listening = async {
        while tokio::net::TcpStream::connect(address).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PATIENCE, listening)
        .await
        .expect("the server listens");
    let answer = get(address, "/ready").await;
    assert!(answer.starts_with("HTTP/1.0 404"), "{answer}");
    assert_eq!(deployment.status().ready, 0);
    std::fs::write(dir.path().join("ready"), "yes").expect("write");
    wait_endpoints(&*deployment, 1).await;
    deployment.shutdown().await;
}

#[test]
fn an_image_without_a_command_cannot_run() {
    let mut workload = workload("", &[]);
    let container = &mut workload.template.spec.containers[0];
    container.command.clear();
    container.image = Some("ghcr.io/knative/helloworld-go".into());
    let error = ProcessRuntime::new(fast_config(), no_objects())
        .deploy(workload)
        .err()
        .expect("refused");
    assert_eq!(
        error.0,
        "spec.template.spec.containers[0] has image 'ghcr.io/knative/helloworld-go' and no \
         command: the process runtime runs commands, not images; add command (and args) to run \
         it as a local process, or remove the annotation pilotlight.dev/runtime: process to run \
         the image in a container engine"
    );
}

#[test]
fn volume_mounts_cannot_run_as_a_process() {
    let template: RevisionTemplate = serde_saphyr::from_str(
        "spec:\n  containers:\n    - command: [app]\n      volumeMounts: [{name: v, mountPath: /etc/app}]\n  volumes:\n    - name: v\n      emptyDir: {}\n",
    )
    .expect("a template");
    let mut workload = workload("", &[]);
    workload.template = template;
    let error = ProcessRuntime::new(fast_config(), no_objects())
        .deploy(workload)
        .err()
        .expect("refused");
    assert!(
        error.0.starts_with("spec.template.spec.containers[0].volumeMounts: a process cannot mount volume 'v' at /etc/app"),
        "{}",
        error.0
    );
}

/// Writes `env` into `$OUT/env`, then serves.
fn env_recorder(out: &str) -> Container {
    shell(
        &format!(r#"env > "$OUT/env"; {PYTHON_SERVER}"#),
        &[("OUT", out)],
    )
}

fn secret(name: &str, pairs: &[(&str, &str)]) -> ConfigObjects {
    let mut objects = ConfigObjects::default();
    objects.insert(
        ConfigKind::Secret,
        ObjectKey::new("default", name),
        ConfigData {
            entries: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect(),
            secret_type: None,
        },
    );
    objects
}

#[tokio::test]
async fn env_from_a_secret_waits_for_the_secret_and_reaches_the_process() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut container = env_recorder(&dir.path().to_string_lossy());
    container.env.push(
        serde_json::from_value(serde_json::json!({
            "name": "TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}},
        }))
        .expect("an env var"),
    );
    let (objects_tx, objects) = watch::channel(Arc::new(ConfigObjects::default()));
    let deployment = ProcessRuntime::new(fast_config(), objects)
        .deploy(workload_of(vec![container]))
        .expect("deploys");
    deployment.scale(1);
    let status = wait_status(&*deployment, "the missing Secret", |s| {
        s.condition.is_some()
    })
    .await;
    let condition = status.condition.expect("a condition");
    assert_eq!(condition.reason, "CreateContainerConfigError");
    assert!(
        condition
            .message
            .contains("env[1] (TOKEN): Secret default/creds does not exist"),
        "{}",
        condition.message
    );
    assert_eq!(status.actual, 0, "no instance starts without its Secret");
    // Loading the Secret retries at once, without waiting out a backoff.
    objects_tx.send_replace(Arc::new(secret("creds", &[("token", "s3cret")])));
    wait_endpoints(&*deployment, 1).await;
    let env = std::fs::read_to_string(dir.path().join("env")).expect("env written");
    assert!(env.lines().any(|l| l == "TOKEN=s3cret"), "{env}");
    assert_eq!(deployment.status().condition, None);
    deployment.shutdown().await;
}

#[tokio::test]
async fn a_sidecar_runs_beside_the_serving_process_and_stops_with_it() {
    let pids_dir = tempfile::tempdir().expect("temp dir");
    let pids = pids_dir.path().to_string_lossy().into_owned();
    let mut serving = shell(&server_recording_pid(), &[("PIDS", &pids)]);
    serving.ports =
        vec![serde_json::from_value(serde_json::json!({"containerPort": 8881})).expect("a port")];
    let sidecar = shell(
        r#"echo $$$$ > "$PIDS/sidecar.pid"; [ -z "$PORT" ] || exit 9; exec sleep 600"#,
        &[("PIDS", &pids)],
    );
    let deployment = deploy(workload_of(vec![sidecar, serving]));
    deployment.scale(1);
    let endpoints = wait_endpoints(&*deployment, 1).await;
    let serving_pid = pid_of(pids_dir.path(), &endpoints[0]).await;
    let sidecar_pid = read_pid(&pids_dir.path().join("sidecar.pid")).await;
    assert!(is_alive(sidecar_pid), "the sidecar runs (and has no PORT)");
    drop(endpoints);
    deployment.scale(0);
    wait_dead(serving_pid).await;
    wait_dead(sidecar_pid).await;
    deployment.shutdown().await;
}

#[tokio::test]
async fn a_crashing_sidecar_takes_the_instance_down_and_is_named() {
    let sidecar = Container {
        name: Some("helper".into()),
        ..shell("echo sidecar broke >&2; exit 4", &[])
    };
    let mut serving = shell(PYTHON_SERVER, &[]);
    serving.ports =
        vec![serde_json::from_value(serde_json::json!({"containerPort": 8080})).expect("a port")];
    let deployment = deploy(workload_of(vec![serving, sidecar]));
    deployment.scale(1);
    let status = wait_status(&*deployment, "a restart", |s| s.restarts >= 1).await;
    let failure = status.last_failure.expect("a failure");
    assert!(
        failure.contains(": container helper exited with code 4: sidecar broke"),
        "{failure}"
    );
    deployment.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_every_instance() {
    let pids_dir = tempfile::tempdir().expect("temp dir");
    let pids = pids_dir.path().to_string_lossy().into_owned();
    let deployment = deploy(workload(&server_recording_pid(), &[("PIDS", &pids)]));
    deployment.scale(3);
    let endpoints = wait_endpoints(&*deployment, 3).await;
    let mut alive = Vec::new();
    for endpoint in endpoints.iter() {
        alive.push(pid_of(pids_dir.path(), endpoint).await);
    }
    tokio::time::timeout(PATIENCE, deployment.shutdown())
        .await
        .expect("shutdown returns");
    for pid in alive {
        assert!(!is_alive(pid), "process {pid} outlived shutdown");
    }
    assert_eq!(deployment.status().actual, 0);
    assert!(deployment.endpoints().borrow().is_empty());
}

#[tokio::test]
async fn an_instance_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let pids_dir = tempfile::tempdir().expect("temp dir");
    let pids = pids_dir.path().to_string_lossy().into_owned();
    let script = format!("trap '' TERM; {}", server_recording_pid());
    let config = LocalConfig {
        stop_grace: Duration::from_millis(200),
        ..fast_config()
    };
    let deployment = ProcessRuntime::new(config, no_objects())
        .deploy(workload(&script, &[("PIDS", &pids)]))
        .expect("a command can run");
    deployment.scale(1);
    let endpoints = wait_endpoints(&*deployment, 1).await;
    let pid = pid_of(pids_dir.path(), &endpoints[0]).await;
    tokio::time::timeout(PATIENCE, deployment.shutdown())
        .await
        .expect("shutdown returns");
    assert!(!is_alive(pid), "SIGKILL follows the grace period");
}

#[tokio::test]
async fn dropping_the_deployment_stops_its_instances() {
    let pids_dir = tempfile::tempdir().expect("temp dir");
    let pids = pids_dir.path().to_string_lossy().into_owned();
    let deployment = deploy(workload(&server_recording_pid(), &[("PIDS", &pids)]));
    deployment.scale(1);
    let endpoints = wait_endpoints(&*deployment, 1).await;
    let pid = pid_of(pids_dir.path(), &endpoints[0]).await;
    drop(endpoints);
    drop(deployment);
    wait_dead(pid).await;
}

const PARENT_DEATH_DIR: &str = "PILOTLIGHT_TEST_PARENT_DEATH_DIR";

/// Kills a process running a ProcessRuntime with SIGKILL (no chance to clean
/// up) and checks that the kernel kills its child: this test binary runs
/// [`parent_death_helper`] as that process.
#[tokio::test]
async fn children_die_when_pilotlight_is_killed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary");
    let mut helper = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "serving::runtime::process::tests::parent_death_helper",
            "--ignored",
            "--test-threads=1",
        ])
        .env(PARENT_DEATH_DIR, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run the helper");
    let child = read_pid(&dir.path().join("child.pid")).await;
    assert!(is_alive(child));
    helper.kill().await.expect("SIGKILL the helper");
    wait_dead(child).await;
}

/// The "pilotlight" of [`children_die_when_pilotlight_is_killed`]: starts one
/// instance, then waits to be killed. Does nothing when run on its own.
#[tokio::test]
#[ignore = "run by children_die_when_pilotlight_is_killed"]
async fn parent_death_helper() {
    let Some(dir) = std::env::var_os(PARENT_DEATH_DIR) else {
        return;
    };
    let dir = dir.to_string_lossy().into_owned();
    let script = r#"echo $$$$ > "$DIR/child.pid"; exec sleep 600"#;
    let deployment = deploy(workload(script, &[("DIR", &dir)]));
    deployment.scale(1);
    tokio::time::sleep(PATIENCE).await;
}
