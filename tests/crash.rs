//! kill -9 of `pilotlight run` during a load: after a restart on the same data
//! folder, every event that was answered 202 reaches the subscriber.

mod support;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::{Subscriber, broker, request, trigger};

fn start(manifests: &std::path::Path, data: &std::path::Path, listen: u16, admin: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pilotlight"))
        .args(["run", "--no-watch", "-f"])
        .arg(manifests)
        .arg("--data-dir")
        .arg(data)
        .args([
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("pilotlight starts")
}

async fn wait_ready(admin: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    loop {
        let uri: http::Uri = format!("http://127.0.0.1:{admin}/readyz")
            .parse()
            .expect("uri");
        if let Ok(r) = client.get(uri).await
            && r.status() == StatusCode::OK
        {
            return;
        }
        assert!(Instant::now() < deadline, "pilotlight did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_accepted_event_survives_kill_9() {
    let subscriber = Subscriber::accepting().await;
    let dir = tempfile::tempdir().expect("tmp");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    std::fs::write(manifests.join("broker.yaml"), broker("default", "")).expect("write");
    std::fs::write(
        manifests.join("trigger.yaml"),
        trigger("all", "default", &subscriber.url("/"), ""),
    )
    .expect("write");
    let data = dir.path().join("data");
    let (listen, admin) = (support::free_port(), support::free_port());

    let mut child = start(&manifests, &data, listen, admin);
    wait_ready(admin).await;

    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("http://127.0.0.1:{listen}/default/default");
    let loaders: Vec<_> = (0..16)
        .map(|task| {
            let (accepted, stop, url) = (accepted.clone(), stop.clone(), url.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let id = format!("{task}-{n}");
                    let headers = [
                        ("ce-specversion", "1.0"),
                        ("ce-id", id.as_str()),
                        ("ce-source", "/crash"),
                        ("ce-type", "t"),
                    ];
                    let sent = tokio::time::timeout(
                        Duration::from_secs(5),
                        request(Method::POST, &url, &headers, vec![b'x'; 512]),
                    )
                    .await;
                    match sent {
                        Ok(r) if r.status == StatusCode::ACCEPTED => {
                            accepted.lock().expect("lock").insert(id);
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();

    // Kill -9 in the middle of the load.
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted.lock().expect("lock").len() < 3000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    stop.store(true, Ordering::Relaxed);
    for loader in loaders {
        let _ = loader.await;
    }
    let accepted = accepted.lock().expect("lock").clone();
    assert!(
        accepted.len() >= 3000,
        "only {} events were accepted before the kill",
        accepted.len()
    );

    let mut child = start(&manifests, &data, listen, admin);
    wait_ready(admin).await;
    support::wait_all_delivered(&accepted, &[&subscriber], Duration::from_secs(60)).await;
    let requests = subscriber.count();
    let parsed = subscriber.events().len();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        requests, parsed,
        "every delivered request was a valid CloudEvent (no corrupt record)"
    );
}
