//! ApiServerSource in a real server. Its watch semantics are tested against
//! the fake API server in tests/apiserver_source.rs; here,
//! what a user without a cluster sees: the source loads, and its status says
//! why it cannot connect and what to do.

mod support;

use std::time::{Duration, Instant};

use http::Method;
use support::{TestServer, request};

#[tokio::test]
async fn without_a_kubeconfig_the_source_is_not_ready_and_says_why() {
    // This file is its own test process, so the variable affects no other test.
    // SAFETY: set before the server (and any thread reading the environment) starts.
    unsafe { std::env::set_var("KUBECONFIG", "/nonexistent/pilotlight-test/kubeconfig") };
    let manifest = "apiVersion: sources.knative.dev/v1\nkind: ApiServerSource\nmetadata:\n  name: events\nspec:\n  mode: Resource\n  resources:\n    - apiVersion: v1\n      kind: ConfigMap\n  sink:\n    uri: http://127.0.0.1:1/\n";
    let s = TestServer::start(&[("source.yaml", manifest)]).await;
    let started = Instant::now();
    loop {
        let list = request(Method::GET, &s.admin_url("/api/v1/sources"), &[], "").await;
        let body: serde_json::Value = serde_json::from_str(&list.body).expect("json");
        let item = &body["items"][0];
        assert_eq!(item["kind"], "ApiServerSource", "{body}");
        let ready = item["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .unwrap_or_default();
        if ready["status"] == "False" {
            let message = ready["message"].as_str().unwrap_or_default();
            assert!(
                ready["reason"] == "KubeconfigMissing" || ready["reason"] == "ApiServerUnreachable",
                "{ready}"
            );
            assert!(
                message.to_ascii_lowercase().contains("kubeconfig"),
                "{ready}"
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still {ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.server.shutdown().await;
}

#[tokio::test]
async fn an_invalid_mode_is_refused_with_its_field() {
    let manifest = "apiVersion: sources.knative.dev/v1\nkind: ApiServerSource\nmetadata:\n  name: bad\nspec:\n  mode: Everything\n  resources:\n    - apiVersion: v1\n      kind: Pod\n  sink:\n    uri: http://127.0.0.1:1/\n";
    let s = TestServer::start(&[("bad.yaml", manifest)]).await;
    let list = request(Method::GET, &s.admin_url("/api/v1/sources"), &[], "").await;
    let body: serde_json::Value = serde_json::from_str(&list.body).expect("json");
    let error = body["errors"][0].as_str().unwrap_or_default();
    assert!(
        error.contains("bad.yaml:1: ApiServerSource default/bad: field spec.mode:"),
        "{error}"
    );
    s.server.shutdown().await;
}
