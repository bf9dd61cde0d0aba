//! The container runtime against a real engine (dockerd or Podman), with
//! images built in the test (no registry): scale from zero and back, a burst
//! at zero, the environment, Secrets as env and files, readiness, crashes,
//! a missing image, a traffic split, sidecars, offline pulls, host
//! networking, and leftovers of a `kill -9`.
//!
//! Needs an engine: `.ci/start-docker` starts one. Without one the tests are
//! skipped, and fail under `CI=true`.

mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use pilotlight::api::broker::BrokerClass;
use pilotlight::control::manifest;
use pilotlight::server::ServerConfig;
use support::images::{self, Image, SERVE};
use support::{TestServer, request, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// A Knative Service of `image`, with template annotations and more
/// container lines (indented under the container).
fn service(name: &str, image: &str, annotations: &[(&str, &str)], container: &str) -> String {
    let mut text = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n"
    );
    if !annotations.is_empty() {
        text.push_str("    metadata:\n      annotations:\n");
        for (k, v) in annotations {
            text.push_str(&format!("        {k}: \"{v}\"\n"));
        }
    }
    text.push_str(&format!(
        "    spec:\n      containers:\n        - image: {image}\n{container}"
    ));
    text
}

const AT_ZERO: (&str, &str) = ("autoscaling.knative.dev/initial-scale", "0");

/// Short grace (busybox as PID 1 ignores SIGTERM) and a quick way to zero.
fn quick(config: &mut ServerConfig) {
    config.serving.local.stop_grace = Duration::from_secs(1);
    config.serving.local.restart_backoff_initial = Duration::from_millis(200);
    config.serving.local.restart_backoff_max = Duration::from_secs(1);
    let autoscaler = &mut config.serving.autoscaler;
    autoscaler.stable_window = Duration::from_secs(6);
    autoscaler.scale_to_zero_grace_period = Duration::from_secs(1);
    autoscaler.tick_interval = Duration::from_millis(500);
}

/// The web image: `SERVE` on `$PORT`.
async fn web_image(engine: &pilotlight::serving::runtime::container::engine::Engine, tag: &str) {
    Image {
        tag,
        files: &[],
        cmd: SERVE,
    }
    .load(engine)
    .await;
}

/// Waits until the revision's Ready condition has `reason`; returns its
/// status.
async fn wait_reason(s: &TestServer, revision: &str, reason: &str) -> serde_json::Value {
    wait_status(s, revision, reason, |c| c["reason"] == reason).await
}

/// Waits until the revision is Ready; returns its status.
async fn wait_ready(s: &TestServer, revision: &str) -> serde_json::Value {
    wait_status(s, revision, "Ready", |c| c["status"] == "True").await
}

async fn wait_status(
    s: &TestServer,
    revision: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let status = s.revisions().await.remove(revision).unwrap_or_default();
        if done(&status["conditions"][0]) {
            return status;
        }
        assert!(start.elapsed() < WAIT, "{revision} never {what}: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_image_scales_from_zero_on_the_first_request_and_back_to_zero() {
    let Some(engine) = images::engine().await else {
        return;
    };
    let image = "localhost/pilotlight-test/zero:1";
    web_image(&engine, image).await;
    let s = TestServer::start_with(
        &[("web.yaml", &service("web", image, &[AT_ZERO], ""))],
        quick,
    )
    .await;
    let status = wait_ready(&s, "web-00001").await;
    assert_eq!(status["runtime"], "container", "{status}");
    assert_eq!(status["conditions"][0]["status"], "True", "{status}");
    assert_eq!(images::containers_of(&engine, "web-00001").await, 0);
    // dockerd gives a loaded image no repository digest (its id stands in);
    // Podman does.
    let digest = status["containerStatuses"][0]["imageDigest"]
        .as_str()
        .unwrap_or("");
    assert!(digest.contains("sha256:"), "pinned to the image: {status}");

    let reply = s.get_host("web.default.localhost", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, "hello from a container\n");
    assert_eq!(images::containers_of(&engine, "web-00001").await, 1);
    // The container's cold start is timed in its three phases.
    let scrape = request(Method::GET, &s.admin_url("/metrics"), &[], "").await;
    for phase in ["launch", "ready", "first_byte"] {
        let phase = format!("phase=\"{phase}\"");
        assert!(
            scrape.body.lines().any(|line| {
                line.starts_with("pilotlight_instance_start_phase_seconds_count{")
                    && line.contains("revision=\"default/web-00001\"")
                    && line.contains(&phase)
            }),
            "no {phase} start phase for default/web-00001 in /metrics"
        );
    }

    wait_until("the revision is back at zero", WAIT, async || {
        s.revisions().await["web-00001"]["actualReplicas"] == 0
    })
    .await;
    wait_until("its container is removed", WAIT, async || {
        images::containers_of(&engine, "web-00001").await == 0
    })
    .await;
    let again = s.get_host("web.default.localhost", "/").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    s.server.shutdown().await;
    assert_eq!(
        images::containers_of(&engine, "web-00001").await,
        0,
        "a clean stop removes every container"
    );
}

#[tokio::test]
async fn a_burst_at_zero_starts_one_container() {
    let Some(engine) = images::engine().await else {
        return;
    };
    let image = "localhost/pilotlight-test/burst:1";
    web_image(&engine, image).await;
    let s = TestServer::start_with(
        &[("burst.yaml", &service("burst", image, &[AT_ZERO], ""))],
        quick,
    )
    .await;
    let requests = (0..20).map(|_| s.get_host("burst.default.localhost", "/"));
    for reply in futures::future::join_all(requests).await {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    assert_eq!(images::containers_of(&engine, "burst-00001").await, 1);
    s.server.shutdown().await;
}

#[tokio::test]
async fn env_knatives_variables_and_the_user_reach_the_app() {
    let Some(engine) = images::engine().await else {
        return;
    };
    let image = "localhost/pilotlight-test/env:1";
    web_image(&engine, image).await;
    let container = "          env:\n            - {name: TARGET, value: containers}\n            - {name: GREETING, value: 'hello $(TARGET)'}\n            - {name: PORT, value: '1'}\n            - name: POD\n              valueFrom:\n                fieldRef: {fieldPath: metadata.name}\n          securityContext: {runAsUser: 1000}\n";
    let s = TestServer::start_with(
        &[("env.yaml", &service("env", image, &[AT_ZERO], container))],
        quick,
    )
    .await;
    let reply = s.get_host("env.default.localhost", "/cgi-bin/env").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let env: Vec<&str> = reply.body.lines().collect();
    for expected in [
        "TARGET=containers",
        "GREETING=hello containers",
        "PORT=8080",
        "K_SERVICE=env",
        "K_CONFIGURATION=env",
        "K_REVISION=env-00001",
        "POD=env-00001-1",
    ] {
        assert!(
            env.contains(&expected),
            "{expected} missing:\n{}",
            reply.body
        );
    }
    s.server.shutdown().await;
}

const SECRET: &str =
    "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  token: s3cret-value\n";

#[tokio::test]
async fn a_secret_reaches_the_app_as_env_and_file_and_nowhere_else() {
    let Some(engine) = images::engine().await else {
        return;
    };
    let image = "localhost/pilotlight-test/secret:1";
    web_image(&engine, image).await;
    let container = "          env:\n            - name: TOKEN\n              valueFrom:\n                secretKeyRef: {name: creds, key: token}\n          volumeMounts:\n            - {name: creds, mountPath: /var/secret}\n      volumes:\n        - name: creds\n          secret: {secretName: creds}\n";
    let missing = "          env:\n            - name: TOKEN\n              valueFrom:\n                secretKeyRef: {name: creds, key: password}\n";
    let s = TestServer::start_with(
        &[
            ("secret.yaml", SECRET),
            ("app.yaml", &service("app", image, &[AT_ZERO], container)),
            (
                "broken.yaml",
                &service("broken", image, &[AT_ZERO], missing),
            ),
        ],
        quick,
    )
    .await;
    let env = s.get_host("app.default.localhost", "/cgi-bin/env").await;
    assert_eq!(env.status, StatusCode::OK, "{}", env.body);
    assert!(
        env.body.lines().any(|l| l == "TOKEN=s3cret-value"),
        "{}",
        env.body
    );
    let file = s
        .get_host("app.default.localhost", "/cgi-bin/cat?var/secret/token")
        .await;
    assert_eq!(file.body.trim(), "s3cret-value");

    let broken = wait_reason(&s, "broken-00001", "CreateContainerConfigError").await;
    let message = broken["conditions"][0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("env[0] (TOKEN): Secret default/creds has no key 'password'"),
        "{message}"
    );
    let refused = s.get_host("broken.default.localhost", "/").await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert!(
        refused.body.contains("has no key 'password'"),
        "{}",
        refused.body
    );

    let everything = request(Method::GET, &s.admin_url("/api/v1/revisions"), &[], "").await;
    assert!(!everything.body.contains("s3cret"), "{}", everything.body);
    s.server.shutdown().await;
}

#[tokio::test]
async fn the_readiness_probe_holds_requests_until_it_passes() {
    let Some(engine) = images::engine().await else {
        return;
    };
    let image = "localhost/pilotlight-test/ready:1";
    // Listens at once, and is ready two seconds later.
    Image {
        tag: image,
        files: &[],
        cmd: "httpd -p $PORT -h /www; sleep 2; touch /www/ready; exec sleep 3600",
    }
    .load(&engine)
    .await;
    let probe = "          readinessProbe:\n            httpGet: {path: /ready}\n";
    let s = TestServer::start_with(
        &[("ready.yaml", &service("ready", image, &[AT_ZERO], probe))],
        quick,
    )
    .await;
    let started = Instant::now();
    let reply = s.get_host("ready.default.localhost", "/ready").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "answered after {:?}, before the probe could pass",
        started.elapsed()
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_crashing_image_shows_its_exit_code_output_and_oom() {
    let Some(engine) = images::engine().await else {
        return;
    };
    let image = "localhost/pilotlight-test/crash:1";
    Image {
        tag: image,
        files: &[],
        cmd: "echo about to fail; echo on stderr >&2; exit 3",
    }
    .load(&engine)
    .await;
    let s =
        TestServer::start_with(&[("crash.yaml", &service("crash", image, &[], ""))], quick).await;
    let status = wait_reason(&s, "crash-00001", "ContainerFailed").await;
    wait_until("three restarts", WAIT, async || {
        s.revisions().await["crash-00001"]["restarts"]
            .as_u64()
            .is_some_and(|r| r >= 3)
    })
    .await;
    assert!(
        images::containers_of(&engine, "crash-00001").await <= 1,
        "a crashed instance's container is removed before the next starts"
    );
    let message = status["conditions"][0]["message"].as_str().unwrap_or("");
    assert!(message.contains("exited with code 3"), "{message}");
    // Both streams; the engine keeps each in order, not one against the other.
    assert!(
        message.contains("about to fail") && message.contains("on stderr"),
        "{message}"
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_missing_image_is_image_pull_failed_and_requests_do_not_hang() {
    let Some(_engine) = images::engine().await else {
        return;
    };
    let s = TestServer::start_with(
        &[(
            "missing.yaml",
            &service(
                "missing",
                "localhost/pilotlight-test/never-built:1",
                &[AT_ZERO],
                "",
            ),
        )],
        quick,
    )
    .await;
    let status = wait_reason(&s, "missing-00001", "ImagePullFailed").await;
    let message = status["conditions"][0]["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("cannot pull image localhost/pilotlight-test/never-built:1: "),
        "{message}"
    );
    let started = Instant::now();
    let reply = s.get_host("missing.default.localhost", "/").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert!(reply.body.contains("cannot pull image"), "{}", reply.body);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn an_image_pulled_always_runs_the_local_copy_when_offline_and_says_so() {
    let Some(engine) = images::engine().await else {
        return;
    };
    // `:latest` means imagePullPolicy Always; no registry answers here.
    let image = "localhost/pilotlight-test/offline:latest";
    web_image(&engine, image).await;
    let s = TestServer::start_with(
        &[("offline.yaml", &service("offline", image, &[AT_ZERO], ""))],
        quick,
    )
    .await;
    wait_ready(&s, "offline-00001").await;
    let reply = s.get_host("offline.default.localhost", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let status = &s.revisions().await["offline-00001"];
    let message = status["conditions"][0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("could not pull image localhost/pilotlight-test/offline:latest")
            && message.contains("running the copy on this machine"),
        "{status}"
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn traffic_splits_across_two_image_revisions() {
    let Some(engine) = images::engine().await else {
        return;
    };
    let image = "localhost/pilotlight-test/split:1";
    web_image(&engine, image).await;
    let env =
        |target: &str| format!("          env:\n            - {{name: TARGET, value: {target}}}\n");
    let s = TestServer::start_with(
        &[("split.yaml", &service("split", image, &[], &env("one")))],
        quick,
    )
    .await;
    wait_until("split-00001 is ready", WAIT, async || {
        s.revisions().await["split-00001"]["actualReplicas"] == 1
    })
    .await;
    let split = format!(
        "{}  traffic:\n    - {{revisionName: split-00001, percent: 50}}\n    - {{latestRevision: true, percent: 50}}\n",
        service("split", image, &[], &env("two"))
    );
    std::fs::write(s.manifests.join("split.yaml"), split).expect("write");
    s.reapply().await;
    wait_until("split-00002 is ready", WAIT, async || {
        s.revisions()
            .await
            .get("split-00002")
            .is_some_and(|r| r["conditions"][0]["status"] == "True")
    })
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let reply = s.get_host("split.default.localhost", "/cgi-bin/env").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        seen.extend(
            reply
                .body
                .lines()
                .filter(|l| l.starts_with("TARGET="))
                .map(str::to_owned),
        );
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["TARGET=one", "TARGET=two"]
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_sidecar_shares_the_serving_containers_network_as_in_a_pod() {
    let Some(engine) = images::engine().await else {
        return;
    };
    let image = "localhost/pilotlight-test/pod:1";
    let side_cgi =
        b"#!/bin/sh\necho 'Content-Type: text/plain'\necho\nwget -qO- http://127.0.0.1:9090/\n";
    Image {
        tag: image,
        files: &[
            ("www/cgi-bin/side", side_cgi, 0o755),
            ("side/index.html", b"from the sidecar\n", 0o644),
        ],
        cmd: SERVE,
    }
    .load(&engine)
    .await;
    let manifest = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: pod\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/initial-scale: \"0\"\n    spec:\n      containers:\n        - name: app\n          image: {image}\n          ports: [{{containerPort: 8080}}]\n        - name: side\n          image: {image}\n          command: [httpd, -f, -p, '9090', -h, /side]\n          readinessProbe:\n            tcpSocket: {{port: 9090}}\n"
    );
    let s = TestServer::start_with(&[("pod.yaml", &manifest)], quick).await;
    let reply = s.get_host("pod.default.localhost", "/cgi-bin/side").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, "from the sidecar\n");
    assert_eq!(images::containers_of(&engine, "pod-00001").await, 2);
    s.server.shutdown().await;
    assert_eq!(images::containers_of(&engine, "pod-00001").await, 0);
}

#[tokio::test]
async fn host_networking_gives_the_app_a_free_port() {
    let Some(engine) = images::engine().await else {
        return;
    };
    let image = "localhost/pilotlight-test/host:1";
    web_image(&engine, image).await;
    let s = TestServer::start_with(
        &[(
            "host.yaml",
            &service(
                "host",
                image,
                &[AT_ZERO, ("pilotlight.dev/container-network", "host")],
                "",
            ),
        )],
        quick,
    )
    .await;
    let reply = s.get_host("host.default.localhost", "/cgi-bin/env").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let port = reply
        .body
        .lines()
        .find_map(|l| l.strip_prefix("PORT="))
        .expect("PORT set");
    assert_ne!(port, "8080", "a free host port, not the container port");
    s.server.shutdown().await;
}

/// `pilotlight run` as a real process on `data`, serving `manifests`.
fn run_pilotlight(manifests: &std::path::Path, data: &std::path::Path) -> tokio::process::Child {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .to_string()
    };
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pilotlight"))
        .args(["run", "--no-watch", "-f"])
        .arg(manifests)
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", &free(), "--admin", &free()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("pilotlight runs")
}

#[tokio::test]
async fn containers_left_by_a_kill_9_are_removed_at_the_next_start() {
    let Some(engine) = images::engine().await else {
        return;
    };
    let image = "localhost/pilotlight-test/leftover:1";
    web_image(&engine, image).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    // One instance from the start (initial scale 1).
    std::fs::write(manifests.join("left.yaml"), service("left", image, &[], "")).expect("write");
    let data = dir.path().join("data");
    let mut first = run_pilotlight(&manifests, &data);
    wait_until("its container runs", WAIT, async || {
        images::containers_of(&engine, "left-00001").await == 1
    })
    .await;
    first.kill().await.expect("SIGKILL");
    assert_eq!(
        images::containers_of(&engine, "left-00001").await,
        1,
        "a killed pilotlight cannot remove its container"
    );

    // The next run with the same data folder, serving nothing.
    std::fs::remove_file(manifests.join("left.yaml")).expect("remove");
    let mut second = run_pilotlight(&manifests, &data);
    wait_until("the leftover is removed", WAIT, async || {
        images::containers_of(&engine, "left-00001").await == 0
    })
    .await;
    second.kill().await.expect("stop");
}

/// Shapes of Knative's documented Services (several containers with probes
/// on their own ports, a Secret volume, requests and limits, capabilities,
/// env from a Secret), written here: they load, and convert for the
/// container runtime. Needs no engine.
#[test]
fn services_shaped_like_knatives_documentation_load_for_the_container_runtime() {
    let manifests = "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: two-containers
spec:
  template:
    spec:
      containers:
        - name: first
          image: example.com/first
          ports:
            - containerPort: 8881
          readinessProbe:
            httpGet: {port: 8881, path: /health}
          livenessProbe:
            tcpSocket: {port: 8881}
        - name: second
          image: example.com/second
          readinessProbe:
            httpGet: {port: 8089, path: /health}
          startupProbe:
            httpGet: {port: 8881, path: /}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: with-secret
spec:
  template:
    spec:
      containers:
        - image: example.com/app
          env:
            - name: GOOGLE_APPLICATION_CREDENTIALS
              value: /var/secret/robot.json
            - name: TOKEN
              valueFrom:
                secretKeyRef: {name: robot, key: token}
          volumeMounts:
            - name: robot
              mountPath: /var/secret
          resources:
            requests: {cpu: 100m, memory: 640M}
            limits: {cpu: '1'}
          securityContext:
            runAsUser: 1000
            capabilities:
              add: [NET_BIND_SERVICE]
      volumes:
        - name: robot
          secret:
            secretName: robot
";
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("docs.yaml"), manifests).expect("write");
    let loaded = manifest::load(&[dir.path().to_owned()], BrokerClass::Log);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    for object in &loaded.objects {
        let pilotlight::api::Resource::Service(service) = &object.resource else {
            continue;
        };
        let pod = pilotlight::api::pod::PodSpec::from_template(&service.spec.template)
            .unwrap_or_else(|e| panic!("{}: {e}", service.metadata.name));
        assert_eq!(
            pod.local_runtime(),
            pilotlight::api::pod::LocalRuntime::Container
        );
        if service.metadata.name == "two-containers" {
            assert_eq!(pod.serving, 0);
            assert_eq!(
                pod.containers[1].readiness.as_ref().and_then(|p| p.port()),
                Some(8089)
            );
        }
    }
}

#[tokio::test]
async fn without_an_engine_an_image_revision_is_not_ready_and_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("no-engine.sock");
    let engine = format!("unix://{}", socket.display());
    let s = TestServer::start_with(
        &[("web.yaml", &service("web", "nginx", &[AT_ZERO], ""))],
        |config| config.serving.container.engine = Some(engine),
    )
    .await;
    let status = wait_reason(&s, "web-00001", "ContainerEngineUnavailable").await;
    assert_eq!(status["conditions"][0]["status"], "False", "{status}");
    assert_eq!(status["runtime"], "container");
    let message = status["conditions"][0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(&format!("{} (no such file)", socket.display()))
            && message.contains("pilotlight.dev/runtime: process"),
        "{message}"
    );
    let reply = s.get_host("web.default.localhost", "/").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("no container engine answers"),
        "{}",
        reply.body
    );
    s.server.shutdown().await;
}
