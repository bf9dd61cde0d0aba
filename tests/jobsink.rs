//! JobSinks' jobs through the job endpoint of the admin listener, with real
//! processes (and containers, where an engine runs): the event file and
//! `K_EXECUTION_MODE`, exit codes and output in the history, retries per
//! `backoffLimit`, `podFailurePolicy`, `activeDeadlineSeconds`, the bounded
//! history, redelivery, the concurrency limit, and the endpoint's errors.
//! The event intake (ingress, storage, dispatch) is the eventing half's.

mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use pilotlight::server::ServerConfig;
use support::images::{self, Image};
use support::{TestServer, request};

/// A JobSink whose only container runs `script` with `sh -c` as a local
/// process; `job` lines go under `spec.job.spec`, `annotations` under
/// metadata.
fn process_sink(name: &str, script: &str, job: &str, annotations: &str) -> String {
    format!(
        "apiVersion: sinks.knative.dev/v1alpha1\nkind: JobSink\nmetadata:\n  name: {name}\n{annotations}spec:\n  job:\n    spec:\n{job}      template:\n        spec:\n          restartPolicy: Never\n          containers:\n            - name: main\n              command: [sh, -c]\n              args: [{}]\n",
        serde_json::to_string(script).expect("json")
    )
}

/// Quick retries, so that a test of backoffLimit takes milliseconds.
fn quick(config: &mut ServerConfig) {
    config.serving.jobs.backoff_initial = Duration::from_millis(50);
    config.serving.jobs.backoff_max = Duration::from_millis(200);
}

fn endpoint(s: &TestServer, name: &str) -> String {
    s.admin_url(&format!("/internal/v1/jobsinks/default/{name}"))
}

/// Posts event `id` in binary mode and returns the status and the body.
async fn post_event(s: &TestServer, name: &str, id: &str) -> (StatusCode, serde_json::Value) {
    let reply = request(
        Method::POST,
        &endpoint(s, name),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-source", "my/curl/command"),
            ("ce-type", "my.demo.event"),
            ("content-type", "application/json"),
        ],
        r#"{"details":"JobSinkDemo"}"#,
    )
    .await;
    let body = serde_json::from_str(&reply.body).unwrap_or(serde_json::Value::String(reply.body));
    (reply.status, body)
}

/// The JobSink `name` as the admin API lists it.
async fn jobsink(s: &TestServer, name: &str) -> serde_json::Value {
    let list = request(Method::GET, &s.admin_url("/api/v1/jobsinks"), &[], "").await;
    let body: serde_json::Value = serde_json::from_str(&list.body).expect("json");
    body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["metadata"]["name"] == name))
        .cloned()
        .unwrap_or_default()
}

fn lines(record: &serde_json::Value) -> Vec<String> {
    record["output"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .map(|l| l.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_job_reads_the_event_file_and_its_outcome_goes_to_history() {
    let script = "cat \"$K_EVENT_PATH\"; echo; echo mode=$K_EXECUTION_MODE; echo knative=$KNATIVE_EXECUTION_MODE";
    let s = TestServer::start(&[("sink.yaml", &process_sink("logger", script, "", ""))]).await;
    let sink = jobsink(&s, "logger").await;
    assert_eq!(sink["status"]["conditions"][0]["status"], "True", "{sink}");
    assert_eq!(
        sink["metadata"]["annotations"]["pilotlight.dev/job-endpoint"],
        endpoint(&s, "logger")
    );

    let (status, record) = post_event(&s, "logger", "123").await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["state"], "Succeeded", "{record}");
    assert_eq!(record["exitCode"], 0);
    assert_eq!(record["attempts"], 1);
    assert_eq!(record["eventId"], "123");
    let output = lines(&record);
    // The event file is the structured-mode JSON of the event, as Knative's.
    let event: serde_json::Value = serde_json::from_str(&output[0]).expect("the event is JSON");
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["id"], "123");
    assert_eq!(event["source"], "my/curl/command");
    assert_eq!(event["type"], "my.demo.event");
    assert_eq!(event["data"]["details"], "JobSinkDemo");
    assert!(output.contains(&"mode=batch".to_owned()), "{output:?}");
    assert!(output.contains(&"knative=batch".to_owned()), "{output:?}");

    let sink = jobsink(&s, "logger").await;
    let jobs = sink["status"]["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["name"], record["name"]);
    assert!(jobs[0]["completionTime"].is_string());
    // The job's folder, with the event, is gone once the job ended.
    let folder = s.dir.path().join("data/serving/jobs");
    let left: Vec<_> = std::fs::read_dir(&folder)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_failing_job_is_retried_up_to_its_backoff_limit() {
    let s = TestServer::start_with(
        &[(
            "sink.yaml",
            &process_sink(
                "failing",
                "echo trying; exit 3",
                "      backoffLimit: 2\n",
                "",
            ),
        )],
        quick,
    )
    .await;
    let (status, record) = post_event(&s, "failing", "e-1").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "failed for good is an answer: {record}"
    );
    assert_eq!(record["state"], "Failed", "{record}");
    assert_eq!(
        record["attempts"], 3,
        "the first try and backoffLimit retries"
    );
    assert_eq!(record["failed"], 3);
    assert_eq!(record["exitCode"], 3);
    assert_eq!(record["reason"], "BackoffLimitExceeded");
    assert_eq!(lines(&record), ["trying"]);
}

#[tokio::test]
async fn a_job_that_fails_once_succeeds_on_its_retry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let count = dir.path().join("count");
    let script = format!(
        "n=$(cat {0} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {0}; echo run $n; [ $n -ge 2 ]",
        count.display()
    );
    let s = TestServer::start_with(
        &[("sink.yaml", &process_sink("flaky", &script, "", ""))],
        quick,
    )
    .await;
    let (status, record) = post_event(&s, "flaky", "e-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["state"], "Succeeded", "{record}");
    assert_eq!(record["attempts"], 2);
    assert_eq!(record["failed"], 1);
    assert_eq!(lines(&record), ["run 2"]);
}

#[tokio::test]
async fn pod_failure_policy_and_the_deadline_end_a_job_at_once() {
    let policy = "      backoffLimit: 6\n      podFailurePolicy:\n        rules:\n          - action: FailJob\n            onExitCodes:\n              containerName: main\n              operator: In\n              values: [ 42 ]\n";
    let deadline = "      activeDeadlineSeconds: 1\n";
    let s = TestServer::start_with(
        &[
            (
                "policy.yaml",
                &process_sink("policy", "exit 42", policy, ""),
            ),
            ("slow.yaml", &process_sink("slow", "sleep 30", deadline, "")),
        ],
        quick,
    )
    .await;
    let (_, record) = post_event(&s, "policy", "e-1").await;
    assert_eq!(record["state"], "Failed", "{record}");
    assert_eq!(record["reason"], "PodFailurePolicy");
    assert_eq!(record["attempts"], 1, "no retry after FailJob");
    assert_eq!(record["exitCode"], 42);

    let started = Instant::now();
    let (_, record) = post_event(&s, "slow", "e-1").await;
    assert_eq!(record["reason"], "DeadlineExceeded", "{record}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn history_is_bounded_and_a_redelivered_event_runs_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runs = dir.path().join("runs");
    let script = format!("echo run >> {}", runs.display());
    let annotations = "  annotations:\n    pilotlight.dev/job-history-limit: \"3\"\n";
    let s = TestServer::start(&[(
        "sink.yaml",
        &process_sink("bounded", &script, "", annotations),
    )])
    .await;
    let mut names = Vec::new();
    for n in 1..=5 {
        let (status, record) = post_event(&s, "bounded", &format!("e-{n}")).await;
        assert_eq!(status, StatusCode::OK);
        names.push(record["name"].as_str().expect("name").to_owned());
    }
    let (status, again) = post_event(&s, "bounded", "e-5").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["name"], names[4].as_str(), "the same job's record");
    let ran = std::fs::read_to_string(&runs).expect("runs");
    assert_eq!(
        ran.lines().count(),
        5,
        "the redelivered event did not run again"
    );

    let sink = jobsink(&s, "bounded").await;
    let listed: Vec<&str> = sink["status"]["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        listed,
        [&names[4], &names[3], &names[2]],
        "newest first, 3 kept"
    );
}

#[tokio::test]
async fn the_limit_holds_jobs_beyond_it_until_one_ends() {
    let annotations = "  annotations:\n    pilotlight.dev/max-running-jobs: \"1\"\n";
    let s = TestServer::start(&[(
        "sink.yaml",
        &process_sink("one", "sleep 0.5", "", annotations),
    )])
    .await;
    let started = Instant::now();
    let (a, b) = tokio::join!(post_event(&s, "one", "a"), post_event(&s, "one", "b"));
    assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "one job at a time: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_endpoint_refuses_unknown_sinks_bad_events_and_unrunnable_templates() {
    // An image and no command, forced to run as a process: it cannot.
    let unrunnable = "apiVersion: sinks.knative.dev/v1alpha1\nkind: JobSink\nmetadata:\n  name: imageonly\nspec:\n  job:\n    spec:\n      template:\n        metadata:\n          annotations:\n            pilotlight.dev/runtime: process\n        spec:\n          containers:\n            - image: busybox:1\n";
    let s = TestServer::start(&[
        ("sink.yaml", &process_sink("logger", "true", "", "")),
        ("bad.yaml", unrunnable),
    ])
    .await;
    let (status, body) = post_event(&s, "nope", "e-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let reply = request(Method::POST, &endpoint(&s, "logger"), &[], "not an event").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let (status, body) = post_event(&s, "imageonly", "e-1").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.as_str()
            .is_some_and(|b| b.contains("spec.job.spec.template.spec.containers[0]")),
        "{body}"
    );
    let sink = jobsink(&s, "imageonly").await;
    assert_eq!(sink["status"]["conditions"][0]["reason"], "CannotRunJobs");
}

#[tokio::test]
async fn a_container_job_reads_the_event_mounted_as_knative_mounts_it() {
    let Some(engine) = images::engine().await else {
        return;
    };
    let tag = "localhost/pilotlight-test/job:1";
    Image {
        tag,
        files: &[],
        cmd: "true",
    }
    .load(&engine)
    .await;
    // Knative's docs' JobSink, with a local image.
    let manifest = format!(
        "apiVersion: sinks.knative.dev/v1alpha1\nkind: JobSink\nmetadata:\n  name: job-sink-logger\nspec:\n  job:\n    spec:\n      completions: 1\n      parallelism: 1\n      template:\n        spec:\n          restartPolicy: Never\n          containers:\n            - name: main\n              image: {tag}\n              command: [ \"cat\" ]\n              args:\n                - \"/etc/jobsink-event/event\"\n"
    );
    let failing = format!(
        "apiVersion: sinks.knative.dev/v1alpha1\nkind: JobSink\nmetadata:\n  name: failing\nspec:\n  job:\n    spec:\n      backoffLimit: 1\n      template:\n        spec:\n          containers:\n            - name: main\n              image: {tag}\n              command: [sh, -c, 'echo mode=$K_EXECUTION_MODE path=$K_EVENT_PATH; exit 7']\n"
    );
    let s = TestServer::start_with(
        &[("sink.yaml", &manifest), ("failing.yaml", &failing)],
        quick,
    )
    .await;
    let (status, record) = post_event(&s, "job-sink-logger", "123").await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["state"], "Succeeded", "{record}");
    let output = lines(&record);
    let event: serde_json::Value = serde_json::from_str(&output[0]).expect("the event is JSON");
    assert_eq!(event["id"], "123");
    assert_eq!(event["data"]["details"], "JobSinkDemo");

    let (_, record) = post_event(&s, "failing", "e-1").await;
    assert_eq!(record["state"], "Failed", "{record}");
    assert_eq!(record["attempts"], 2);
    assert_eq!(record["exitCode"], 7);
    assert_eq!(lines(&record), ["mode=batch path=/etc/jobsink-event/event"]);
    // Each pod's containers are removed once it ended.
    let options = bollard::query_parameters::ListContainersOptions {
        all: true,
        filters: Some(
            [(
                "label".to_owned(),
                vec!["sinks.knative.dev/job-sink-name".to_owned()],
            )]
            .into(),
        ),
        ..Default::default()
    };
    let mut left = usize::MAX;
    for _ in 0..50 {
        left = engine
            .docker
            .list_containers(Some(options.clone()))
            .await
            .expect("list")
            .into_iter()
            .filter(|c| {
                c.labels.as_ref().is_some_and(|l| {
                    l.get("dev.pilotlight.data-dir")
                        .is_some_and(|d| d.contains(&*s.dir.path().to_string_lossy()))
                })
            })
            .count();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "a job's containers outlived it");
}

/// Kubernetes mode: the job is a batch/v1 Job with the event in a Secret
/// mounted where Knative mounts it, both owned by the JobSink; the endpoint
/// answers once the Job's condition says it ended, and the Secret goes.
#[tokio::test]
async fn in_kubernetes_mode_a_job_is_a_job_with_the_event_in_a_secret() {
    use support::apiserver::FakeApiServer;
    let fake = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = "apiVersion: sinks.knative.dev/v1alpha1\nkind: JobSink\nmetadata:\n  name: logger\n  namespace: default\nspec:\n  job:\n    spec:\n      backoffLimit: 1\n      template:\n        spec:\n          containers:\n            - name: main\n              image: docker.io/library/bash:5\n              command: [cat]\n              args: [/etc/jobsink-event/event]\n";
    let object: serde_json::Value = serde_saphyr::from_str(manifest).expect("yaml");
    fake.create(object);
    let server = pilotlight::server::Server::start(fake.replica_config(dir.path(), "r1"))
        .await
        .expect("starts");
    let url = format!(
        "http://{}/internal/v1/jobsinks/default/logger",
        server.admin
    );
    let post = tokio::spawn(async move {
        request(
            Method::POST,
            &url,
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "123"),
                ("ce-source", "my/curl/command"),
                ("ce-type", "my.demo.event"),
            ],
            "hello",
        )
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let jobs = fake.list("batch/v1", "Job", Some("default"));
        if let Some(job) = jobs.into_iter().next() {
            break job;
        }
        assert!(Instant::now() < deadline, "no Job was made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let name = job["metadata"]["name"].as_str().expect("name").to_owned();
    assert!(name.starts_with("logger-"), "{name}");
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "JobSink");
    assert_eq!(
        job["metadata"]["labels"]["sinks.knative.dev/job-sink-name"],
        "logger"
    );
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], name.as_str());
    assert_eq!(
        pod["containers"][0]["volumeMounts"][0]["mountPath"],
        "/etc/jobsink-event"
    );
    let secret = fake
        .get("v1", "Secret", "default", &name)
        .expect("the event's Secret");
    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "JobSink");
    let encoded = secret["data"]["event"].as_str().expect("event");
    let event = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded)
        .expect("base64");
    let event: serde_json::Value = serde_json::from_slice(&event).expect("json");
    assert_eq!(event["id"], "123");
    assert_eq!(event["source"], "my/curl/command");

    // Kubernetes runs it: the Job completes.
    let mut done = job.clone();
    done["status"] = serde_json::json!({
        "succeeded": 1,
        "conditions": [{"type": "Complete", "status": "True"}],
    });
    fake.put(done);
    let reply = tokio::time::timeout(Duration::from_secs(30), post)
        .await
        .expect("answered once the Job completed")
        .expect("no panic");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let record: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
    assert_eq!(record["state"], "Succeeded", "{record}");
    assert_eq!(record["name"], name.as_str());
    assert!(
        fake.get("v1", "Secret", "default", &name).is_none(),
        "the event's Secret is deleted once the Job ended"
    );
    server.shutdown().await;
}

/// The JobSink's own address, as its status gives it once wired.
async fn address(s: &TestServer, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sink = jobsink(s, name).await;
        if let Some(url) = sink["status"]["address"]["url"].as_str() {
            return url.to_owned();
        }
        assert!(Instant::now() < deadline, "no address: {sink}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn events_sent_to_its_address_are_stored_at_once_and_run_one_job_each_within_the_limit() {
    // Each job holds its slot for a while and records when it ran.
    let dir = tempfile::tempdir().expect("temp dir");
    let marks = dir.path().display().to_string();
    let script = format!(
        "id=$(sed -n 's/.*\"id\":\"\\([^\"]*\\)\".*/\\1/p' \"$K_EVENT_PATH\"); echo start > {marks}/$id.start; sleep 0.3; echo done > {marks}/$id.done"
    );
    let sink = process_sink(
        "limited",
        &script,
        "",
        "  annotations:\n    pilotlight.dev/max-running-jobs: \"1\"\n",
    );
    let s = TestServer::start_with(&[("sink.yaml", &sink)], quick).await;
    let url = address(&s, "limited").await;
    assert!(
        url.ends_with("/default/limited-jobsink-kn-channel"),
        "{url}"
    );
    // 202 for all three once stored, though only one job runs at a time:
    // the last cannot have run yet when its event is accepted.
    let done = |id: &str| dir.path().join(format!("{id}.done")).exists();
    for id in ["e1", "e2", "e3"] {
        let reply = support::send(&url, id, "my.demo.event").await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    assert!(!done("e3"));
    support::wait_until("three jobs done", Duration::from_secs(20), async || {
        ["e1", "e2", "e3"].iter().all(|id| done(id))
    })
    .await;
    // One at a time: each job started after the one before it was done.
    let mtime = |file: String| {
        std::fs::metadata(dir.path().join(file))
            .and_then(|m| m.modified())
            .expect("mark")
    };
    let mut spans: Vec<_> = ["e1", "e2", "e3"]
        .iter()
        .map(|id| (mtime(format!("{id}.start")), mtime(format!("{id}.done"))))
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "two jobs overlapped: {spans:?}");
    }
    let history = jobsink(&s, "limited").await;
    let jobs = history["status"]["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 3, "{history}");
}
