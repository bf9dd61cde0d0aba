//! Kubernetes mode against the fake API server (tests/support/apiserver.rs),
//! over HTTP: pilotlight reads Brokers and Triggers from it, runs them, and
//! writes their status through the status subresource; finalizers, 409
//! conflicts, 410 Gone and leader election as a cluster would give them.

mod support;

use std::path::Path;
use std::time::Duration;

use pilotlight::control::kubernetes::leader::{LeaderElector, LeaseSettings};
use pilotlight::eventing::source::PingClock;
use pilotlight::server::Server;
use serde_json::{Value, json};
use support::apiserver::FakeApiServer;
use support::{Subscriber, send};

/// Generous: the machine is shared, and a slow pass beats a flaky one.
const PATIENCE: Duration = Duration::from_secs(20);
const EVENTING: &str = "eventing.knative.dev/v1";
const INGRESS: &str = "http://pilotlight-ingress.pilotlight.svc.cluster.local";

fn broker(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": EVENTING, "kind": "Broker",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {},
    })
}

fn trigger(namespace: &str, name: &str, broker: &str, subscriber: &str) -> Value {
    json!({
        "apiVersion": EVENTING, "kind": "Trigger",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"broker": broker, "subscriber": {"uri": subscriber}},
    })
}

/// A pilotlight replica in Kubernetes mode, pointed at the fake by a
/// kubeconfig, with a short lease so that tests of the election are quick.
async fn replica(fake: &FakeApiServer, dir: &Path, identity: &str) -> Server {
    replica_on(fake, dir, identity, PingClock::default()).await
}

/// [`replica`] whose PingSources tick on `clock` (give every replica of a
/// test the same one).
async fn replica_on(fake: &FakeApiServer, dir: &Path, identity: &str, clock: PingClock) -> Server {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = fake.replica_config(dir, identity);
    config.default_class = pilotlight::api::broker::BrokerClass::Memory;
    config.ingress_url = Some(INGRESS.into());
    config.ping_clock = clock;
    Server::start(config).await.expect("pilotlight starts")
}

fn ready_condition(object: &Value) -> Option<&Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// Waits until the object's status says Ready=`want` for its current generation.
async fn wait_ready(
    fake: &FakeApiServer,
    kind: &str,
    namespace: &str,
    name: &str,
    want: &str,
) -> Value {
    fake.wait_for(
        &format!("{kind} {namespace}/{name} Ready={want}"),
        PATIENCE,
        |fake| {
            let object = fake.get(EVENTING, kind, namespace, name)?;
            let observed =
                object["status"]["observedGeneration"] == object["metadata"]["generation"];
            (observed && ready_condition(&object)?["status"] == want).then_some(object)
        },
    )
    .await
}

#[tokio::test]
async fn objects_from_the_api_server_run_and_report_status_through_the_subresource() {
    let fake = FakeApiServer::start().await;
    let subscriber = Subscriber::accepting().await;
    fake.create(broker("team", "default"));
    fake.create(trigger("team", "all", "default", &subscriber.url("/")));
    let dir = tempfile::tempdir().expect("dir");
    let server = replica(&fake, dir.path(), "one").await;

    let broker = wait_ready(&fake, "Broker", "team", "default", "True").await;
    assert_eq!(
        broker["status"]["address"]["url"],
        format!("{INGRESS}/team/default")
    );
    assert_eq!(broker["status"]["observedGeneration"], 1);
    assert_eq!(
        broker["metadata"]["finalizers"],
        json!(["brokers.eventing.knative.dev"])
    );
    let trigger = wait_ready(&fake, "Trigger", "team", "all", "True").await;
    assert_eq!(
        trigger["metadata"]["finalizers"],
        json!(["triggers.eventing.knative.dev"])
    );
    assert_eq!(trigger["status"]["subscriberUri"], subscriber.url("/"));

    let status_writes: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.contains(".knative.dev/"))
        .map(|r| r.path)
        .collect();
    assert!(
        status_writes.contains(
            &"/apis/eventing.knative.dev/v1/namespaces/team/brokers/default/status".to_owned()
        ),
        "{status_writes:?}"
    );
    assert!(
        status_writes.iter().all(|p| p.ends_with("/status")),
        "{status_writes:?}"
    );

    let accepted = send(
        &format!("http://{}/team/default", server.listen),
        "e-1",
        "demo.created",
    )
    .await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let received = subscriber.wait_for(1, PATIENCE).await;
    assert_eq!(received[0].id(), "e-1");
    server.shutdown().await;
}

#[tokio::test]
async fn a_refused_object_names_its_field_in_its_status_and_the_rest_runs() {
    let fake = FakeApiServer::start().await;
    fake.create(broker("default", "default"));
    let mut typo = trigger("default", "typo", "default", "http://127.0.0.1:1/");
    typo["spec"]["subscriber"]["urii"] = json!("http://127.0.0.1:1/");
    fake.create(typo);
    let dir = tempfile::tempdir().expect("dir");
    let server = replica(&fake, dir.path(), "one").await;

    let refused = wait_ready(&fake, "Trigger", "default", "typo", "False").await;
    let condition = ready_condition(&refused).expect("ready condition");
    assert_eq!(condition["reason"], "InvalidSpec");
    let message = condition["message"].as_str().unwrap_or_default();
    assert!(message.contains("spec.subscriber.urii"), "{message}");
    wait_ready(&fake, "Broker", "default", "default", "True").await;
    server.shutdown().await;
}

/// Names as a real cluster has them: a Trigger named `orders.v1` (the API
/// server takes dotted names) runs, and the cluster's own ConfigMaps and
/// Secrets, even ones pilotlight cannot read, are neither refusals shown to
/// users nor errors.
#[tokio::test]
async fn dotted_names_run_and_the_clusters_own_config_maps_are_not_refusals() {
    let fake = FakeApiServer::start().await;
    let subscriber = Subscriber::accepting().await;
    fake.create(broker("default", "default"));
    fake.create(trigger(
        "default",
        "orders.v1",
        "default",
        &subscriber.url("/"),
    ));
    for (kind, name, extra) in [
        (
            "ConfigMap",
            "kube-root-ca.crt",
            json!({"data": {"ca.crt": "pem"}}),
        ),
        (
            "Secret",
            "sh.helm.release.v1.x.v1",
            json!({"data": {"release": "aGVsbQ=="}}),
        ),
        // Unreadable for pilotlight: a name no API server takes, a value
        // that is not base64.
        ("ConfigMap", "Not_A_Name", json!({})),
        ("Secret", "garbled", json!({"data": {"k": "not base64!"}})),
    ] {
        let mut object = json!({
            "apiVersion": "v1", "kind": kind,
            "metadata": {"name": name, "namespace": "default"},
        });
        if let (Some(object), Some(extra)) = (object.as_object_mut(), extra.as_object()) {
            object.extend(extra.clone());
        }
        fake.create(object);
    }
    let dir = tempfile::tempdir().expect("dir");
    let server = replica(&fake, dir.path(), "one").await;

    wait_ready(&fake, "Trigger", "default", "orders.v1", "True").await;
    let url = format!("http://{}/api/v1/triggers", server.admin);
    let reply = support::request(http::Method::GET, &url, &[], "").await;
    let list: Value = serde_json::from_str(&reply.body).expect("a JSON list");
    assert_eq!(list["errors"], json!([]), "{list}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_spec_change_is_applied_and_its_generation_observed() {
    let fake = FakeApiServer::start().await;
    let (first, second) = (Subscriber::accepting().await, Subscriber::accepting().await);
    fake.create(broker("default", "default"));
    fake.create(trigger("default", "t", "default", &first.url("/")));
    let dir = tempfile::tempdir().expect("dir");
    let server = replica(&fake, dir.path(), "one").await;
    wait_ready(&fake, "Trigger", "default", "t", "True").await;

    let mut changed = fake
        .get(EVENTING, "Trigger", "default", "t")
        .expect("trigger");
    changed["spec"]["subscriber"]["uri"] = json!(second.url("/"));
    fake.put(changed);
    let trigger = fake
        .wait_for("the new subscriber in status", PATIENCE, |fake| {
            let t = fake.get(EVENTING, "Trigger", "default", "t")?;
            (t["status"]["observedGeneration"] == 2).then_some(t)
        })
        .await;
    assert_eq!(trigger["status"]["subscriberUri"], second.url("/"));
    let accepted = send(
        &format!("http://{}/default/default", server.listen),
        "e-2",
        "demo",
    )
    .await;
    assert_eq!(accepted.status, 202);
    second.wait_for(1, PATIENCE).await;
    assert_eq!(first.count(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn deleting_a_broker_removes_it_before_its_finalizer_is_released() {
    let fake = FakeApiServer::start().await;
    fake.create(broker("default", "gone"));
    let dir = tempfile::tempdir().expect("dir");
    let server = replica(&fake, dir.path(), "one").await;
    wait_ready(&fake, "Broker", "default", "gone", "True").await;
    let url = format!("http://{}/default/gone", server.listen);
    assert_eq!(send(&url, "before", "demo").await.status, 202);

    assert!(fake.delete(EVENTING, "Broker", "default", "gone"));
    fake.wait_for("the broker to be deleted", PATIENCE, |fake| {
        fake.get(EVENTING, "Broker", "default", "gone")
            .is_none()
            .then_some(())
    })
    .await;
    // The finalizer went only after the ingress stopped serving the broker.
    assert_eq!(send(&url, "after", "demo").await.status, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn conflicts_and_server_errors_on_writes_are_retried() {
    let fake = FakeApiServer::start().await;
    fake.create(broker("default", "default"));
    // The finalizer patch and the status writes meet these first (the
    // Lease's writes do not).
    fake.fail_only_paths_containing("/brokers/default");
    fake.conflict_next(3);
    fake.fail_next(2, 500);
    let dir = tempfile::tempdir().expect("dir");
    let server = replica(&fake, dir.path(), "one").await;
    let broker = wait_ready(&fake, "Broker", "default", "default", "True").await;
    assert_eq!(
        broker["metadata"]["finalizers"],
        json!(["brokers.eventing.knative.dev"])
    );
    let broker_writes = fake
        .requests()
        .iter()
        .filter(|r| r.method != "GET" && r.path.contains("/brokers/default"))
        .count();
    // Five refused, then the finalizer and the status went through.
    assert!(broker_writes >= 7, "{broker_writes} writes to the broker");
    server.shutdown().await;
}

#[tokio::test]
async fn an_expired_watch_relists_and_sees_what_changed_meanwhile() {
    let fake = FakeApiServer::start().await;
    fake.create(broker("default", "default"));
    let dir = tempfile::tempdir().expect("dir");
    let server = replica(&fake, dir.path(), "one").await;
    wait_ready(&fake, "Broker", "default", "default", "True").await;
    let lists_before = trigger_lists(&fake);

    // Compaction while every watch is down: resuming from the last
    // resourceVersion gets 410 Gone, and only a new list shows the trigger.
    fake.expire_history();
    fake.drop_watches();
    fake.create(trigger("default", "late", "default", "http://127.0.0.1:1/"));
    wait_ready(&fake, "Trigger", "default", "late", "True").await;
    assert!(trigger_lists(&fake) > lists_before, "no relist after 410");
    server.shutdown().await;
}

fn trigger_lists(fake: &FakeApiServer) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/triggers") && !r.is_watch())
        .count()
}

#[tokio::test]
async fn one_replica_leads_and_a_stopped_leader_hands_over() {
    let fake = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let first = replica(&fake, dir.path(), "first").await;
    let holder = FakeApiServer::lease_holder;
    let leader = fake.wait_for("a leader", PATIENCE, holder).await;
    assert!(leader.starts_with("first"), "{leader}");
    let second = replica(&fake, dir.path(), "second").await;
    fake.create(broker("default", "b1"));
    wait_ready(&fake, "Broker", "default", "b1", "True").await;
    // Both replicas serve the ingress, whichever leads.
    for server in [&first, &second] {
        support::wait_accepted(
            &format!("http://{}/default/b1", server.listen),
            "probe",
            PATIENCE,
        )
        .await;
    }

    first.shutdown().await;
    fake.wait_for("the second replica to lead", PATIENCE, |fake| {
        holder(fake).filter(|h| h.starts_with("second"))
    })
    .await;
    fake.create(broker("default", "b2"));
    wait_ready(&fake, "Broker", "default", "b2", "True").await;
    second.shutdown().await;
}

#[tokio::test]
async fn of_two_electors_racing_for_a_free_lease_one_wins() {
    let fake = FakeApiServer::start().await;
    let settings = |identity: &str| LeaseSettings::new("pilotlight", identity);
    let mut a = LeaderElector::new(fake.client(), settings("a"));
    let mut b = LeaderElector::new(fake.client(), settings("b"));
    let (won_a, won_b) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let (won_a, won_b) = (won_a.expect("a"), won_b.expect("b"));
    assert!(won_a ^ won_b, "a={won_a} b={won_b}");
    let (mut leader, mut follower) = if won_a { (a, b) } else { (b, a) };
    assert!(leader.try_acquire_or_renew().await.expect("renew"));
    assert!(!follower.try_acquire_or_renew().await.expect("held"));
    leader.release().await.expect("release");
    assert!(follower.try_acquire_or_renew().await.expect("free"));
    let lease = fake
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "pilotlight",
            "pilotlight-controller",
        )
        .expect("lease");
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
}

/// The whole serving loop in a cluster: a Knative Service becomes a
/// Deployment owned by it; a request at zero scales it to one; the pod the
/// test plays (a real HTTP server, published in an EndpointSlice as the
/// cluster would) answers through pilotlight's activator.
#[tokio::test]
async fn a_knative_service_scales_its_deployment_from_zero_on_the_first_request() {
    let fake = FakeApiServer::start().await;
    let service = fake.create(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"},
        // At zero until a request comes (pilotlight allows a zero initial scale).
        "spec": {"template": {
            "metadata": {"annotations": {"autoscaling.knative.dev/initial-scale": "0"}},
            "spec": {"containers": [{"image": "ghcr.io/example/hello:1"}]},
        }},
    }));
    let dir = tempfile::tempdir().expect("dir");
    let server = replica(&fake, dir.path(), "one").await;
    let deployment = fake
        .wait_for("the revision's Deployment", PATIENCE, |fake| {
            fake.get("apps/v1", "Deployment", "default", "hello-00001-deployment")
        })
        .await;
    let labels = &deployment["metadata"]["labels"];
    assert_eq!(labels["serving.knative.dev/service"], "hello");
    assert_eq!(labels["serving.knative.dev/revision"], "hello-00001");
    let owner = &deployment["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Service");
    assert_eq!(owner["uid"], service["metadata"]["uid"]);
    assert_eq!(deployment["spec"]["replicas"], 0, "{deployment}");

    let listen = server.listen;
    let first_request = tokio::spawn(async move {
        support::request(
            http::Method::GET,
            &format!("http://{listen}/"),
            &[("host", "hello.default.localhost")],
            "",
        )
        .await
    });
    fake.wait_for("a replica for the held request", PATIENCE, |fake| {
        let d = fake.get("apps/v1", "Deployment", "default", "hello-00001-deployment")?;
        (d["spec"]["replicas"] == 1).then_some(())
    })
    .await;
    let pod = Subscriber::accepting().await;
    fake.create(FakeApiServer::ready_slice("hello-00001", pod.addr.port()));
    let reply = tokio::time::timeout(PATIENCE, first_request)
        .await
        .expect("the held request is answered")
        .expect("no panic");
    assert!(reply.status.is_success(), "{} {}", reply.status, reply.body);
    assert_eq!(pod.count(), 1);

    let service = fake
        .wait_for("the Service Ready", PATIENCE, |fake| {
            let s = fake.get("serving.knative.dev/v1", "Service", "default", "hello")?;
            (ready_condition(&s)?["status"] == "True").then_some(s)
        })
        .await;
    // The port of --ingress-url (none: 80), not the listener's.
    assert_eq!(service["status"]["url"], "http://hello.default.localhost");
    assert_eq!(service["status"]["latestReadyRevisionName"], "hello-00001");

    // Deleting the Knative Service removes its revision's objects before
    // the finalizer lets it go.
    assert!(fake.delete("serving.knative.dev/v1", "Service", "default", "hello"));
    fake.wait_for("the Service and its Deployment to go", PATIENCE, |fake| {
        let gone = fake
            .get("serving.knative.dev/v1", "Service", "default", "hello")
            .is_none()
            && fake
                .get("apps/v1", "Deployment", "default", "hello-00001-deployment")
                .is_none()
            && fake
                .get("v1", "Service", "default", "hello-00001-private")
                .is_none();
        gone.then_some(())
    })
    .await;
    server.shutdown().await;
}

// ---- sources with several replicas ----

/// A minute of PingSource time in a second: a per-minute schedule ticks
/// every second (the schedule's finest step is a minute).
const PING_SPEEDUP: u32 = 60;

fn every_minute_ping(namespace: &str, name: &str, sink: &str) -> Value {
    json!({
        "apiVersion": "sources.knative.dev/v1", "kind": "PingSource",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"schedule": "* * * * *", "data": "tick", "sink": {"uri": sink}},
    })
}

/// The ticks a subscriber received: (time, id) in the order they came.
fn ticks(subscriber: &Subscriber) -> Vec<(chrono::DateTime<chrono::Utc>, String)> {
    subscriber
        .events()
        .iter()
        .map(|e| {
            let time = e.attribute("time").expect("a ping has a time");
            let time = chrono::DateTime::parse_from_rfc3339(time).expect("RFC 3339");
            (time.with_timezone(&chrono::Utc), e.id().to_owned())
        })
        .collect()
}

/// Every tick once: no time twice, no id twice, and no minute missing
/// between the first tick received and the last.
fn assert_each_tick_once(ticks: &[(chrono::DateTime<chrono::Utc>, String)]) {
    let mut times: Vec<_> = ticks.iter().map(|(t, _)| *t).collect();
    times.sort();
    let mut distinct = times.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), times.len(), "a tick came twice: {times:?}");
    let ids: std::collections::BTreeSet<_> = ticks.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), ticks.len(), "an id came twice: {ticks:?}");
    for pair in times.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::minutes(1),
            "a tick is missing between {} and {}: {times:?}",
            pair[0],
            pair[1]
        );
    }
}

/// The Ready condition of a source as a replica's admin API shows it.
async fn source_ready_on(server: &Server, name: &str) -> Value {
    let items = support::admin_list(server.admin, "sources").await;
    let item = items
        .iter()
        .find(|i| i["metadata"]["name"] == name)
        .expect("the source is listed");
    ready_condition(item).cloned().expect("a Ready condition")
}

#[tokio::test]
async fn with_two_replicas_each_ping_tick_arrives_once() {
    let fake = FakeApiServer::start().await;
    let subscriber = Subscriber::accepting().await;
    fake.create(every_minute_ping("team", "tick", &subscriber.url("/")));
    let dir = tempfile::tempdir().expect("dir");
    let clock = PingClock::accelerated(PING_SPEEDUP);
    let first = replica_on(&fake, dir.path(), "first", clock.clone()).await;
    let second = replica_on(&fake, dir.path(), "second", clock).await;

    subscriber.wait_for(5, PATIENCE).await;
    let received = ticks(&subscriber);
    assert_each_tick_once(&received);
    // The last tick fired is in the API server, for the next leader.
    let state = fake
        .get("v1", "ConfigMap", "pilotlight", "pilotlight-source-state")
        .expect("the source state ConfigMap");
    assert_eq!(
        state["metadata"]["labels"]["pilotlight.dev/source-state"],
        "true"
    );
    let entry: Value = serde_json::from_str(
        state["data"]["pingsource.team.tick"]
            .as_str()
            .expect("the entry"),
    )
    .expect("JSON");
    let recorded =
        chrono::DateTime::parse_from_rfc3339(entry["lastTick"].as_str().expect("lastTick"))
            .expect("RFC 3339");
    assert!(
        received.iter().any(|(t, _)| *t == recorded),
        "{entry} among {received:?}"
    );

    // The follower stands by without claiming the source failed; the
    // leader's status, Ready, is the object's.
    let leader = fake.lease_holder().expect("a leader");
    let follower = if leader.starts_with("first") {
        &second
    } else {
        &first
    };
    let standby = source_ready_on(follower, "tick").await;
    assert_eq!(standby["status"], "Unknown", "{standby}");
    assert_eq!(standby["reason"], "NotLeader", "{standby}");
    fake.wait_for("the PingSource Ready", PATIENCE, |fake| {
        let ping = fake.get("sources.knative.dev/v1", "PingSource", "team", "tick")?;
        (ready_condition(&ping)?["status"] == "True").then_some(())
    })
    .await;
    first.shutdown().await;
    second.shutdown().await;
    assert_each_tick_once(&ticks(&subscriber));
}

#[tokio::test]
async fn a_stopped_leader_hands_its_ping_schedule_over_without_missing_or_doubling_a_tick() {
    let fake = FakeApiServer::start().await;
    let subscriber = Subscriber::accepting().await;
    fake.create(every_minute_ping("team", "tick", &subscriber.url("/")));
    let dir = tempfile::tempdir().expect("dir");
    let clock = PingClock::accelerated(PING_SPEEDUP);
    let first = replica_on(&fake, dir.path(), "first", clock.clone()).await;
    fake.wait_for("the first replica to lead", PATIENCE, |fake| {
        fake.lease_holder().filter(|h| h.starts_with("first"))
    })
    .await;
    let second = replica_on(&fake, dir.path(), "second", clock.clone()).await;
    subscriber.wait_for(3, PATIENCE).await;

    // A clean stop gives the Lease up; the second replica takes over and
    // resumes after the last tick the first recorded.
    first.shutdown().await;
    let handed_over = subscriber.count();
    fake.wait_for("the second replica to lead", PATIENCE, |fake| {
        fake.lease_holder().filter(|h| h.starts_with("second"))
    })
    .await;
    subscriber.wait_for(handed_over + 3, PATIENCE).await;

    // No replica for two ticks or so, as when a killed leader's Lease runs
    // out: the next one (with a data folder of its own) fires the missed
    // ticks from the state in the API server, then goes on.
    second.shutdown().await;
    let stopped = ticks(&subscriber);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let third = replica_on(&fake, dir.path(), "third", clock).await;
    subscriber.wait_for(stopped.len() + 4, PATIENCE).await;
    third.shutdown().await;

    let received = ticks(&subscriber);
    assert_each_tick_once(&received);
    let last_before_the_gap = stopped.iter().map(|(t, _)| *t).max().expect("ticks");
    let caught_up = received
        .iter()
        .filter(|(t, _)| *t > last_before_the_gap)
        .count();
    assert!(caught_up >= 4, "{received:?}");
}

#[tokio::test]
async fn with_two_replicas_each_api_server_change_arrives_once() {
    let fake = FakeApiServer::start().await;
    let subscriber = Subscriber::accepting().await;
    let configmap = |name: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "watched"}, "data": {"k": "v"}})
    };
    fake.create(configmap("before"));
    fake.create(json!({
        "apiVersion": "sources.knative.dev/v1", "kind": "ApiServerSource",
        "metadata": {"name": "changes", "namespace": "watched"},
        "spec": {"mode": "Reference",
                 "resources": [{"apiVersion": "v1", "kind": "ConfigMap"}],
                 "sink": {"uri": subscriber.url("/")}},
    }));
    let dir = tempfile::tempdir().expect("dir");
    let first = replica(&fake, dir.path(), "first").await;
    let second = replica(&fake, dir.path(), "second").await;

    // Ready once its watch runs; what existed before is not announced (as
    // Knative's adapter), what comes after is, once.
    fake.wait_for("the ApiServerSource Ready", PATIENCE, |fake| {
        let source = fake.get(
            "sources.knative.dev/v1",
            "ApiServerSource",
            "watched",
            "changes",
        )?;
        (ready_condition(&source)?["status"] == "True").then_some(())
    })
    .await;
    fake.create(configmap("after"));
    subscriber.wait_for(1, PATIENCE).await;
    // Time for a second replica's copy to arrive, were there one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let subjects: Vec<String> = subscriber
        .events()
        .iter()
        .map(|e| format!("{} {}", e.ty(), e.attribute("subject").unwrap_or_default()))
        .collect();
    assert_eq!(
        subjects,
        ["dev.knative.apiserver.ref.add /apis/v1/namespaces/watched/configmaps/after"]
    );
    first.shutdown().await;
    second.shutdown().await;
}
