//! One autoscaler for a revision however many pilotlight replicas serve it,
//! against the fake API server with two replicas: the leader decides on the
//! load every replica counts, and scales back down what a follower woke.
//!
//! A small stand-in for the kubelet and the EndpointSlice controller
//! ([`fake_pods`]) publishes a ready endpoint while the Deployment asks
//! for a pod, and removes it at zero.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use pilotlight::server::Server;
use serde_json::json;
use support::Subscriber;
use support::apiserver::FakeApiServer;

const PATIENCE: Duration = Duration::from_secs(30);
const HOST: &str = "hello.default.localhost";
const DEPLOYMENT: &str = "hello-00001-deployment";

/// A replica with a short lease and a quick autoscaler: a 6 s stable window
/// (Knative's least), 1 s ticks, 1 s of grace before zero.
async fn replica(fake: &FakeApiServer, dir: &Path, identity: &str) -> Server {
    let mut config = fake.replica_config(dir, identity);
    let autoscaler = &mut config.serving.autoscaler;
    autoscaler.stable_window = Duration::from_secs(6);
    autoscaler.tick_interval = Duration::from_secs(1);
    autoscaler.scale_to_zero_grace_period = Duration::from_secs(1);
    Server::start(config).await.expect("pilotlight starts")
}

/// Two replicas, `leader` holding the Lease, and a Knative Service at zero.
async fn two_replicas(fake: &FakeApiServer, dir: &Path) -> (Server, Server) {
    fake.create(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"template": {
            "metadata": {"annotations": {"autoscaling.knative.dev/initial-scale": "0"}},
            "spec": {"containers": [{"image": "ghcr.io/example/hello:1"}]},
        }},
    }));
    let leader = replica(fake, dir, "leader").await;
    fake.wait_for("the first replica to lead", PATIENCE, |fake| {
        fake.lease_holder().filter(|h| h.starts_with("leader"))
    })
    .await;
    let follower = replica(fake, dir, "follower").await;
    fake.wait_for("the revision's Deployment", PATIENCE, |fake| {
        fake.get("apps/v1", "Deployment", "default", DEPLOYMENT)
    })
    .await;
    (leader, follower)
}

fn replicas(fake: &FakeApiServer) -> Option<u64> {
    fake.get("apps/v1", "Deployment", "default", DEPLOYMENT)?["spec"]["replicas"].as_u64()
}

/// Plays the kubelet and the EndpointSlice controller: while the
/// Deployment asks for pods, `pod` is its ready endpoint; at zero, none.
/// Also counts how many times the Deployment went from above zero to zero.
struct FakePods {
    stop: Arc<AtomicBool>,
    zeros: Arc<AtomicU32>,
}

fn fake_pods(fake: &FakeApiServer, pod: &Subscriber) -> FakePods {
    let stop = Arc::new(AtomicBool::new(false));
    let zeros = Arc::new(AtomicU32::new(0));
    let slice = FakeApiServer::ready_slice("hello-00001", pod.addr.port());
    let fake = fake.clone();
    let (stopping, counting) = (stop.clone(), zeros.clone());
    tokio::spawn(async move {
        let mut up = false;
        while !stopping.load(Ordering::Relaxed) {
            let wanted = replicas(&fake).unwrap_or(0) > 0;
            if wanted && !up {
                fake.create(slice.clone());
            } else if !wanted && up {
                fake.delete(
                    "discovery.k8s.io/v1",
                    "EndpointSlice",
                    "default",
                    "hello-00001-private-a1",
                );
                counting.fetch_add(1, Ordering::Relaxed);
            }
            up = wanted;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    FakePods { stop, zeros }
}

impl Drop for FakePods {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn get(server: &Server) -> support::Reply {
    support::request(
        http::Method::GET,
        &format!("http://{}/", server.listen),
        &[("host", HOST)],
        "",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_only_through_the_follower_keeps_the_revision_up() {
    let fake = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let (leader, follower) = two_replicas(&fake, dir.path()).await;
    let pod = Subscriber::accepting().await;
    let pods = fake_pods(&fake, &pod);

    // Three stable windows and more of steady traffic, only through the
    // follower: the leader's own proxy sees none of it.
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < until {
        let reply = get(&follower).await;
        assert!(reply.status.is_success(), "{} {}", reply.status, reply.body);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        pods.zeros.load(Ordering::Relaxed),
        0,
        "the leader scaled the revision to zero while the follower served it"
    );
    assert_eq!(replicas(&fake), Some(1));

    // Traffic stops: the leader takes the revision it did not wake to zero.
    let zeros = pods.zeros.clone();
    support::wait_until("the leader to scale to zero", PATIENCE, async || {
        zeros.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(replicas(&fake), Some(0));
    drop(pods);
    follower.shutdown().await;
    leader.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_scales_down_what_a_follower_woke() {
    let fake = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let (leader, follower) = two_replicas(&fake, dir.path()).await;
    let pod = Subscriber::accepting().await;
    let _pods = fake_pods(&fake, &pod);

    let reply = get(&follower).await;
    assert!(reply.status.is_success(), "{} {}", reply.status, reply.body);
    assert_eq!(pod.count(), 1);
    // One stable window, the grace period and a few ticks later: zero.
    fake.wait_for("the leader to scale to zero", PATIENCE, |fake| {
        (replicas(fake) == Some(0)).then_some(())
    })
    .await;
    follower.shutdown().await;
    leader.shutdown().await;
}

/// The leader takes samples only from replicas that hold the token they all
/// read from the `pilotlight-peer-token` Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_need_the_replicas_token() {
    let fake = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let (leader, follower) = two_replicas(&fake, dir.path()).await;
    let url = format!("http://{}/internal/v1/autoscaler/stats", leader.admin);
    let report = r#"{"replica":"intruder","revisions":[{"revision":"default/hello-00001","concurrency":50.0,"requests_per_second":1.0}]}"#;
    let reply = support::request(http::Method::POST, &url, &[], report).await;
    assert_eq!(
        reply.status,
        http::StatusCode::UNAUTHORIZED,
        "{}",
        reply.body
    );
    let wrong = support::request(
        http::Method::POST,
        &url,
        &[("authorization", &format!("Bearer {}", "0".repeat(64)))],
        report,
    )
    .await;
    assert_eq!(wrong.status, http::StatusCode::UNAUTHORIZED);

    let secret = fake
        .get("v1", "Secret", "pilotlight", "pilotlight-peer-token")
        .expect("the replicas made their Secret");
    let token = secret["data"]["token"].as_str().expect("token");
    let token =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, token).expect("base64");
    let bearer = format!("Bearer {}", String::from_utf8(token).expect("utf-8"));
    let admitted = support::request(
        http::Method::POST,
        &url,
        &[("authorization", &bearer)],
        report,
    )
    .await;
    assert_eq!(
        admitted.status,
        http::StatusCode::NO_CONTENT,
        "{}",
        admitted.body
    );
    let garbage =
        support::request(http::Method::POST, &url, &[("authorization", &bearer)], "{").await;
    assert_eq!(garbage.status, http::StatusCode::BAD_REQUEST);
    assert!(
        garbage.body.starts_with("body: not a stats report"),
        "{}",
        garbage.body
    );
    // The follower is no leader: it says so, and its sender looks again.
    let to_follower = format!("http://{}/internal/v1/autoscaler/stats", follower.admin);
    let refused = support::request(
        http::Method::POST,
        &to_follower,
        &[("authorization", &bearer)],
        report,
    )
    .await;
    assert_eq!(refused.status, http::StatusCode::CONFLICT);
    follower.shutdown().await;
    leader.shutdown().await;
}
