//! The kinds of issue 19 in Kubernetes mode, with two replicas against the
//! fake API server (tests/support/apiserver.rs): channels, subscriptions and
//! flows get their status from the leader only, and the channels and
//! subscriptions a flow owns stay in pilotlight; a ContainerSource's
//! Deployment is written once, by the leader, and adopted by the next one;
//! a JobSink's event makes one Job; events go through a Sequence.
//!
//! Each replica's kubeconfig names it (`Impersonate-User`), so the fake's
//! request log says which replica wrote what.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pilotlight::server::Server;
use serde_json::{Value, json};
use support::apiserver::{FakeApiServer, RecordedRequest};
use support::{Subscriber, send};

/// Generous: the machine is shared, and a slow pass beats a flaky one.
const PATIENCE: Duration = Duration::from_secs(30);
const INGRESS: &str = "http://pilotlight-ingress.pilotlight.svc.cluster.local";
const MESSAGING: &str = "messaging.knative.dev/v1";
const FLOWS: &str = "flows.knative.dev/v1";
const SOURCES: &str = "sources.knative.dev/v1";
const SINKS: &str = "sinks.knative.dev/v1alpha1";

/// A pilotlight replica in Kubernetes mode, named `identity` in the fake's
/// request log.
async fn replica(fake: &FakeApiServer, dir: &Path, identity: &str) -> Server {
    replica_behind(fake, dir, identity, INGRESS).await
}

/// [`replica`] whose addresses are under `ingress` (a `pilotlight-ingress`
/// Service in a cluster).
async fn replica_behind(fake: &FakeApiServer, dir: &Path, identity: &str, ingress: &str) -> Server {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = fake.replica_config(dir, identity);
    config.default_class = pilotlight::api::broker::BrokerClass::Memory;
    config.ingress_url = Some(ingress.into());
    Server::start(config).await.expect("pilotlight starts")
}

/// Two replicas, `leader` started first and holding the Lease before
/// `follower` starts, so that which one leads is known.
async fn two_replicas(fake: &FakeApiServer, dir: &Path) -> (Server, Server) {
    let leader = replica(fake, dir, "leader").await;
    fake.wait_for("the first replica to lead", PATIENCE, |fake| {
        fake.lease_holder().filter(|h| h.starts_with("leader"))
    })
    .await;
    let follower = replica(fake, dir, "follower").await;
    (leader, follower)
}

fn ready_condition(object: &Value) -> Option<&Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// Waits until the object's status says Ready=True for its current
/// generation.
async fn wait_ready(fake: &FakeApiServer, api_version: &str, kind: &str, name: &str) -> Value {
    fake.wait_for(&format!("{kind} {name} Ready"), PATIENCE, |fake| {
        let object = fake.get(api_version, kind, "default", name)?;
        let observed = object["status"]["observedGeneration"] == object["metadata"]["generation"];
        (observed && ready_condition(&object)?["status"] == "True").then_some(object)
    })
    .await
}

/// The writes (anything but GET) that `user` sent to paths containing `part`.
fn writes_by(fake: &FakeApiServer, user: &str, part: &str) -> Vec<RecordedRequest> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method != "GET" && r.user.as_deref() == Some(user) && r.path.contains(part))
        .collect()
}

fn names(objects: &[Value]) -> Vec<&str> {
    objects
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect()
}

/// The path of an address of `INGRESS`, to post to a replica's listener.
fn ingress_path(url: &Value) -> String {
    let url = url.as_str().expect("an address URL");
    url.strip_prefix(INGRESS)
        .unwrap_or_else(|| panic!("{url} is not under {INGRESS}"))
        .to_owned()
}

#[tokio::test]
async fn channels_subscriptions_and_flows_get_their_status_from_the_leader_only() {
    let fake = FakeApiServer::start().await;
    let subscriber = Subscriber::accepting().await;
    let step = subscriber.url("/step");
    // Both replicas run before the objects come, so that both see them at
    // once, as they would in a cluster.
    let dir = tempfile::tempdir().expect("dir");
    let (leader, follower) = two_replicas(&fake, dir.path()).await;
    fake.create(json!({
        "apiVersion": MESSAGING, "kind": "InMemoryChannel",
        "metadata": {"name": "orders", "namespace": "default"},
    }));
    fake.create(json!({
        "apiVersion": MESSAGING, "kind": "Subscription",
        "metadata": {"name": "orders-to-step", "namespace": "default"},
        "spec": {"channel": {"apiVersion": MESSAGING, "kind": "InMemoryChannel", "name": "orders"},
                 "subscriber": {"uri": step}},
    }));
    fake.create(json!({
        "apiVersion": FLOWS, "kind": "Sequence",
        "metadata": {"name": "seq", "namespace": "default"},
        "spec": {"steps": [{"uri": step}, {"uri": subscriber.url("/second")}]},
    }));
    fake.create(json!({
        "apiVersion": FLOWS, "kind": "Parallel",
        "metadata": {"name": "par", "namespace": "default"},
        "spec": {"branches": [{"subscriber": {"uri": step}}]},
    }));

    let channel = wait_ready(&fake, MESSAGING, "InMemoryChannel", "orders").await;
    assert_eq!(
        channel["status"]["address"]["url"],
        format!("{INGRESS}/default/orders-kn-channel")
    );
    assert_eq!(
        channel["metadata"]["finalizers"],
        json!(["inmemorychannels.messaging.knative.dev"])
    );
    let subscription = wait_ready(&fake, MESSAGING, "Subscription", "orders-to-step").await;
    assert_eq!(
        subscription["status"]["physicalSubscription"]["subscriberUri"],
        step
    );
    assert_eq!(
        subscription["metadata"]["finalizers"],
        json!(["subscriptions.messaging.knative.dev"])
    );
    let sequence = wait_ready(&fake, FLOWS, "Sequence", "seq").await;
    let address = &sequence["status"]["address"]["url"];
    assert!(
        address.as_str().is_some_and(|a| a.starts_with(INGRESS)),
        "{sequence}"
    );
    let channels = sequence["status"]["channelStatuses"]
        .as_array()
        .expect("channelStatuses");
    let subscriptions = sequence["status"]["subscriptionStatuses"]
        .as_array()
        .expect("subscriptionStatuses");
    assert_eq!((channels.len(), subscriptions.len()), (2, 2), "{sequence}");
    assert_eq!(channels[0]["channel"]["name"], "seq-kn-sequence-0");
    assert_eq!(channels[0]["channel"]["kind"], "InMemoryChannel");
    assert_eq!(channels[0]["ready"]["status"], "True", "{sequence}");
    assert_eq!(
        subscriptions[1]["subscription"]["name"],
        "seq-kn-sequence-1"
    );
    assert_eq!(subscriptions[1]["ready"]["status"], "True", "{sequence}");
    assert_eq!(
        sequence["metadata"]["finalizers"],
        json!(["sequences.flows.knative.dev"])
    );
    let parallel = wait_ready(&fake, FLOWS, "Parallel", "par").await;
    assert_eq!(
        parallel["status"]["address"]["url"],
        format!("{INGRESS}/default/par-kn-parallel-kn-channel")
    );
    assert_eq!(
        parallel["metadata"]["finalizers"],
        json!(["parallels.flows.knative.dev"])
    );

    // The leader wrote every status and finalizer; the follower none.
    let knative_writes = |user| {
        let mut writes = writes_by(&fake, user, "messaging.knative.dev/");
        writes.extend(writes_by(&fake, user, "flows.knative.dev/"));
        writes
    };
    assert_eq!(
        knative_writes("follower"),
        [],
        "the follower writes nothing"
    );
    let by_leader = knative_writes("leader");
    for path in [
        "/apis/messaging.knative.dev/v1/namespaces/default/inmemorychannels/orders/status",
        "/apis/messaging.knative.dev/v1/namespaces/default/subscriptions/orders-to-step/status",
        "/apis/flows.knative.dev/v1/namespaces/default/sequences/seq/status",
        "/apis/flows.knative.dev/v1/namespaces/default/parallels/par/status",
    ] {
        assert!(
            by_leader
                .iter()
                .any(|r| r.method == "PUT" && r.path == path),
            "no status write to {path}: {by_leader:?}"
        );
    }
    // What the flows own stays in pilotlight: neither replica created it.
    assert!(
        by_leader.iter().all(|r| r.method != "POST"),
        "{by_leader:?}"
    );
    assert_eq!(
        names(&fake.list(MESSAGING, "InMemoryChannel", None)),
        ["orders"]
    );
    assert_eq!(
        names(&fake.list(MESSAGING, "Subscription", None)),
        ["orders-to-step"]
    );
    // Yet both replicas run them: the follower's admin API lists the
    // sequence's channels.
    let listed = support::admin_list(follower.admin, "channels").await;
    assert!(names(&listed).contains(&"seq-kn-sequence-0"), "{listed:?}");
    leader.shutdown().await;
    follower.shutdown().await;
}

/// What the `pilotlight-ingress` Service is in a cluster: one address in
/// front of every replica, taking turns. A flow's step replies to the next
/// step's channel through it, as a pod would.
struct IngressService {
    url: String,
    replicas: Arc<Mutex<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl IngressService {
    async fn start() -> IngressService {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the ingress");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let replicas: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let backends = replicas.clone();
        let task = tokio::spawn(async move {
            let mut turn = 0usize;
            while let Ok((mut inbound, _)) = listener.accept().await {
                let backend = {
                    let backends = backends.lock().expect("backends");
                    turn += 1;
                    backends.get(turn % backends.len().max(1)).copied()
                };
                let Some(backend) = backend else { continue };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        IngressService {
            url,
            replicas,
            task,
        }
    }

    fn route_to(&self, server: &Server) {
        self.replicas.lock().expect("backends").push(server.listen);
    }
}

impl Drop for IngressService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn an_event_posted_to_either_replica_goes_through_a_sequence() {
    let fake = FakeApiServer::start().await;
    let ingress = IngressService::start().await;
    let first = Subscriber::replying(|id| bytes::Bytes::from(format!("step 0 saw {id}"))).await;
    let second = Subscriber::accepting().await;
    fake.create(json!({
        "apiVersion": FLOWS, "kind": "Sequence",
        "metadata": {"name": "seq", "namespace": "default"},
        "spec": {"steps": [{"uri": first.url("/")}, {"uri": second.url("/")}]},
    }));
    let dir = tempfile::tempdir().expect("dir");
    let leader = replica_behind(&fake, dir.path(), "leader", &ingress.url).await;
    let follower = replica_behind(&fake, dir.path(), "follower", &ingress.url).await;
    ingress.route_to(&leader);
    ingress.route_to(&follower);
    let sequence = wait_ready(&fake, FLOWS, "Sequence", "seq").await;
    let url = sequence["status"]["address"]["url"]
        .as_str()
        .expect("an address");
    let path = url
        .strip_prefix(&ingress.url)
        .unwrap_or_else(|| panic!("{url} is not under {}", ingress.url));

    for (server, id) in [(&follower, "via-follower"), (&leader, "via-leader")] {
        let accepted = send(&format!("http://{}{path}", server.listen), id, "demo").await;
        assert_eq!(accepted.status, 202, "{id}: {}", accepted.body);
    }
    first.wait_for(2, PATIENCE).await;
    let mut reached: Vec<String> = second
        .wait_for(2, PATIENCE)
        .await
        .iter()
        .map(|e| e.id().to_owned())
        .collect();
    reached.sort();
    // The second step gets the first step's replies.
    assert_eq!(reached, ["reply-via-follower", "reply-via-leader"]);
    assert_eq!(first.count(), 2, "each event went through step 0 once");

    // Deleting the Sequence: its finalizer goes once the leader stopped
    // serving its channels.
    assert!(fake.delete(FLOWS, "Sequence", "default", "seq"));
    fake.wait_for("the Sequence to go", PATIENCE, |fake| {
        fake.get(FLOWS, "Sequence", "default", "seq")
            .is_none()
            .then_some(())
    })
    .await;
    let after = send(&format!("http://{}{path}", leader.listen), "after", "demo").await;
    assert_eq!(after.status, 404, "{}", after.body);
    leader.shutdown().await;
    follower.shutdown().await;
}

/// A ContainerSource whose pod posts to its sink.
fn container_source(sink: &str) -> Value {
    json!({
        "apiVersion": SOURCES, "kind": "ContainerSource",
        "metadata": {"name": "heartbeats", "namespace": "default"},
        "spec": {
            "template": {"spec": {"containers": [{
                "name": "beats", "image": "ghcr.io/example/heartbeats:1",
                "env": [{"name": "PERIOD", "value": "5"}],
            }]}},
            "sink": {"uri": sink},
            "ceOverrides": {"extensions": {"team": "web"}},
        },
    })
}

/// The Deployments of the ContainerSource `heartbeats`.
fn source_deployments(fake: &FakeApiServer) -> Vec<Value> {
    fake.list("apps/v1", "Deployment", Some("default"))
        .into_iter()
        .filter(|d| d["metadata"]["labels"]["sources.knative.dev/containerSource"] == "heartbeats")
        .collect()
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

#[tokio::test]
async fn a_container_sources_deployment_is_written_by_the_leader_and_adopted_by_the_next() {
    let fake = FakeApiServer::start().await;
    let source = fake.create(container_source("http://sink.default.svc/"));
    let dir = tempfile::tempdir().expect("dir");
    let (leader, follower) = two_replicas(&fake, dir.path()).await;

    let deployment = fake
        .wait_for("the source's Deployment", PATIENCE, |fake| {
            source_deployments(fake).pop()
        })
        .await;
    let name = deployment["metadata"]["name"]
        .as_str()
        .expect("a name")
        .to_owned();
    assert_eq!(deployment["spec"]["replicas"], 1, "{deployment}");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/example/heartbeats:1");
    assert_eq!(env_value(container, "PERIOD"), Some("5"));
    assert_eq!(
        env_value(container, "K_SINK"),
        Some("http://sink.default.svc/")
    );
    let overrides: Value =
        serde_json::from_str(env_value(container, "K_CE_OVERRIDES").expect("K_CE_OVERRIDES"))
            .expect("JSON");
    assert_eq!(overrides, json!({"extensions": {"team": "web"}}));
    let owner = &deployment["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ContainerSource");
    assert_eq!(owner["uid"], source["metadata"]["uid"]);

    // The pod runs: the leader reports the source Ready with its sink.
    let mut running = deployment.clone();
    running["status"] = json!({"replicas": 1, "readyReplicas": 1, "availableReplicas": 1});
    fake.put(running);
    let ready = wait_ready(&fake, SOURCES, "ContainerSource", "heartbeats").await;
    assert_eq!(ready["status"]["sinkUri"], "http://sink.default.svc/");
    assert_eq!(
        ready["metadata"]["finalizers"],
        json!(["containersources.sources.knative.dev"])
    );
    assert_eq!(
        writes_by(&fake, "follower", "/deployments"),
        [],
        "the follower writes no Deployment"
    );
    let created_by_leader = writes_by(&fake, "leader", "/deployments")
        .into_iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(created_by_leader, 1);

    // The leader stops (giving the Lease up); its Deployment keeps running,
    // and the next leader adopts it rather than making another.
    leader.shutdown().await;
    fake.wait_for("the follower to lead", PATIENCE, |fake| {
        fake.lease_holder().filter(|h| h.starts_with("follower"))
    })
    .await;
    // Its writer tries to create the Deployment, finds it (409), and
    // keeps it.
    fake.wait_for("the new leader to look for it", PATIENCE, |fake| {
        writes_by(fake, "follower", "/deployments").pop()
    })
    .await;
    wait_ready(&fake, SOURCES, "ContainerSource", "heartbeats").await;
    assert_eq!(names(&source_deployments(&fake)), [name.as_str()]);
    let new_leader_writes: Vec<_> = writes_by(&fake, "follower", "/deployments")
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    assert!(
        new_leader_writes.iter().all(|(method, _)| method == "POST"),
        "adopting writes nothing but the create that finds it: {new_leader_writes:?}"
    );

    // Deleting the source: the leader deletes its Deployment before the
    // finalizer lets the source go.
    assert!(fake.delete(SOURCES, "ContainerSource", "default", "heartbeats"));
    fake.wait_for("the source and its Deployment to go", PATIENCE, |fake| {
        let gone = fake
            .get(SOURCES, "ContainerSource", "default", "heartbeats")
            .is_none()
            && fake
                .get("apps/v1", "Deployment", "default", &name)
                .is_none();
        gone.then_some(())
    })
    .await;
    assert!(
        writes_by(&fake, "follower", &format!("/deployments/{name}"))
            .iter()
            .any(|r| r.method == "DELETE"),
        "the leader deleted it (not Kubernetes' garbage collector, which the fake has not)"
    );
    follower.shutdown().await;
}

#[tokio::test]
async fn one_event_to_a_jobsink_makes_one_job_with_two_replicas() {
    let fake = FakeApiServer::start().await;
    let sink = fake.create(json!({
        "apiVersion": SINKS, "kind": "JobSink",
        "metadata": {"name": "logger", "namespace": "default"},
        "spec": {"job": {"spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "docker.io/library/bash:5",
                            "command": ["cat"], "args": ["/etc/jobsink-event/event"]}],
        }}}}},
    }));
    let dir = tempfile::tempdir().expect("dir");
    let (leader, follower) = two_replicas(&fake, dir.path()).await;
    let ready = wait_ready(&fake, SINKS, "JobSink", "logger").await;
    let path = ingress_path(&ready["status"]["address"]["url"]);

    // To the follower: every replica takes a JobSink's events.
    let accepted = send(&format!("http://{}{path}", follower.listen), "e-1", "demo").await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let job = fake
        .wait_for("the event's Job", PATIENCE, |fake| {
            fake.list("batch/v1", "Job", Some("default")).pop()
        })
        .await;
    let job_name = job["metadata"]["name"].as_str().expect("a name").to_owned();
    let secret = fake
        .get("v1", "Secret", "default", &job_name)
        .expect("the event's Secret");
    assert!(secret["data"]["event"].is_string(), "{secret}");
    assert_eq!(
        job["metadata"]["annotations"]["sinks.knative.dev/event-id"],
        "e-1"
    );
    for owned in [&job, &secret] {
        let owner = &owned["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "JobSink", "{owned}");
        assert_eq!(owner["uid"], sink["metadata"]["uid"], "{owned}");
    }

    // The job ends; the replica that ran it records it and removes the
    // event's Secret.
    let mut done = job.clone();
    done["status"] = json!({"succeeded": 1,
        "conditions": [{"type": "Complete", "status": "True"}]});
    fake.put(done);
    fake.wait_for("the event's Secret to go", PATIENCE, |fake| {
        fake.get("v1", "Secret", "default", &job_name)
            .is_none()
            .then_some(())
    })
    .await;
    let jobs = fake.list("batch/v1", "Job", Some("default"));
    assert_eq!(names(&jobs), [job_name.as_str()]);
    let job_creates: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/jobs"))
        .map(|r| r.user)
        .collect();
    assert_eq!(
        job_creates,
        [Some("follower".to_owned())],
        "one create, by the replica that took the event"
    );
    leader.shutdown().await;
    follower.shutdown().await;
}

/// A template changed while no replica ran: the Deployment of the old
/// version is in the cluster, and no replica knows it. The leader that
/// deploys the current version deletes it, so the source does not send
/// twice.
#[tokio::test]
async fn a_leader_deletes_the_deployment_of_a_version_it_never_ran() {
    let fake = FakeApiServer::start().await;
    fake.create(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "heartbeats-00000000-deployment", "namespace": "default",
            "labels": {"sources.knative.dev/containerSource": "heartbeats",
                "pilotlight.dev/daemon": "heartbeats-00000000",
                "app.kubernetes.io/managed-by": "pilotlight"}},
        "spec": {"replicas": 1,
            "selector": {"matchLabels": {"pilotlight.dev/daemon": "heartbeats-00000000"}},
            "template": {"metadata": {"labels": {"pilotlight.dev/daemon": "heartbeats-00000000"}},
                "spec": {"containers": [{"name": "beats", "image": "ghcr.io/example/heartbeats:0"}]}}},
    }));
    // Someone else's Deployment with the same Knative label stays.
    fake.create(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "not-ours", "namespace": "default",
            "labels": {"sources.knative.dev/containerSource": "heartbeats"}},
        "spec": {"selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "x", "image": "x"}]}}},
    }));
    fake.create(container_source("http://sink.default.svc/"));
    let dir = tempfile::tempdir().expect("dir");
    let leader = replica(&fake, dir.path(), "leader").await;
    let current = fake
        .wait_for("only the current version's Deployment", PATIENCE, |fake| {
            let ours: Vec<String> = source_deployments(fake)
                .iter()
                .filter(|d| d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "pilotlight")
                .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned))
                .collect();
            match ours.as_slice() {
                [one] if one != "heartbeats-00000000-deployment" => Some(one.clone()),
                _ => None,
            }
        })
        .await;
    assert!(current.starts_with("heartbeats-"), "{current}");
    assert!(
        fake.get("apps/v1", "Deployment", "default", "not-ours")
            .is_some(),
        "a Deployment pilotlight did not make stays"
    );
    leader.shutdown().await;
}
