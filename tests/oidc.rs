//! OIDC authentication and EventPolicies over real HTTP: a test issuer
//! served here (discovery and JWKS; ES256 keys made with ring, tokens
//! signed with jsonwebtoken), each reason for a 401, policies with `sub`
//! wildcards, `ref`s to a PingSource and a Trigger, `filters` at the
//! ingress and the default modes, pilotlight's own tokens checked by a
//! subscriber against pilotlight's JWKS, `pilotlight send --token`, and the
//! Kubernetes API server's service-account issuer through the fake.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use pilotlight::auth::{AuthConfig, AuthorizationMode};
use pilotlight::eventing::source::PingClock;
use pilotlight::server::{Server, ServerConfig};
use serde_json::{Value, json};
use support::apiserver::FakeApiServer;
use support::oidc::{SigningKey, TestIssuer, now};
use support::{Reply, Subscriber, TestServer, admin_list, broker, request, trigger};

const PATIENCE: Duration = Duration::from_secs(20);
const AUDIENCE: &str = "eventing.knative.dev/broker/default/default";

fn on(issuer: &TestIssuer, mode: AuthorizationMode) -> impl FnOnce(&mut ServerConfig) {
    let url = issuer.url.clone();
    move |config: &mut ServerConfig| {
        config.auth = AuthConfig {
            enabled: true,
            issuers: vec![url],
            default_mode: mode,
            ..AuthConfig::default()
        };
    }
}

/// Posts a binary-mode event of `ty`, with `token` when given.
async fn post(url: &str, id: &str, ty: &str, token: Option<&str>) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "/test"),
        ("ce-type", ty),
        ("content-type", "application/json"),
    ];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer.as_str()));
    }
    request(Method::POST, url, &headers, "{}").await
}

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1alpha1\nkind: EventPolicy\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

#[tokio::test]
async fn each_bad_token_gets_401_with_its_reason() {
    let issuer = TestIssuer::start().await;
    let s = TestServer::start_with(
        &[("b.yaml", &broker("default", ""))],
        on(&issuer, AuthorizationMode::AllowAll),
    )
    .await;
    let url = s.broker_url("default", "default");

    let missing = post(&url, "1", "t", None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{}", missing.body);
    assert!(missing.body.contains("no bearer token"), "{}", missing.body);
    assert!(missing.body.contains(AUDIENCE), "{}", missing.body);
    assert_eq!(
        missing.headers["www-authenticate"],
        "Bearer realm=\"pilotlight\""
    );

    let sub = "system:serviceaccount:default:app";
    let cases = [
        (
            "wrong audience",
            issuer.token(sub, "eventing.knative.dev/broker/default/other"),
            format!(
                "the token's audience is eventing.knative.dev/broker/default/other, not {AUDIENCE}"
            ),
        ),
        (
            "wrong issuer",
            issuer.key.sign(&json!({"iss": "http://stranger.example", "sub": sub, "aud": AUDIENCE, "exp": now() + 600})),
            "the token's issuer 'http://stranger.example' is not trusted".to_owned(),
        ),
        (
            "expired",
            issuer.key.sign(&json!({"iss": issuer.url, "sub": sub, "aud": AUDIENCE,
                "iat": now() - 7200, "exp": now() - 3600})),
            "the token expired at".to_owned(),
        ),
        (
            "bad signature",
            // Another key under the issuer's key id.
            SigningKey::new(&issuer.key.kid).sign(&issuer.claims(sub, AUDIENCE)),
            "the token's signature does not verify".to_owned(),
        ),
        (
            "unknown key",
            SigningKey::new("rotated-away").sign(&issuer.claims(sub, AUDIENCE)),
            "has no key 'rotated-away'".to_owned(),
        ),
        (
            "not a JWT",
            "not-a-token".to_owned(),
            "the bearer token is not a JWT".to_owned(),
        ),
    ];
    for (what, token, reason) in cases {
        let reply = post(&url, "1", "t", Some(&token)).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            reply.body
        );
        assert!(reply.body.contains(&reason), "{what}: {}", reply.body);
        let challenge = reply.headers["www-authenticate"].to_str().expect("ascii");
        assert!(
            challenge.starts_with(
                "Bearer realm=\"pilotlight\", error=\"invalid_token\", error_description=\""
            ),
            "{what}: {challenge}"
        );
    }

    let good = issuer.token(sub, AUDIENCE);
    for id in ["ok-1", "ok-2"] {
        // The second from the cache of verified tokens.
        let reply = post(&url, id, "t", Some(&good)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    // The broker publishes its audience, and that no policy applies.
    let brokers = admin_list(s.server.admin, "brokers").await;
    assert_eq!(brokers[0]["status"]["address"]["audience"], AUDIENCE);
    let condition = brokers[0]["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "EventPoliciesReady"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        condition["reason"], "DefaultAuthorizationMode",
        "{condition}"
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn policies_allow_subjects_by_wildcard_and_filter_events_at_the_ingress() {
    let issuer = TestIssuer::start().await;
    let orders = policy(
        "orders",
        "  to:\n    - ref:\n        apiVersion: eventing.knative.dev/v1\n        kind: Broker\n        name: default\n  from:\n    - sub: \"system:serviceaccount:default:app-*\"\n  filters:\n    - prefix:\n        type: com.example.\n",
    );
    let s = TestServer::start_with(
        &[
            ("b.yaml", &broker("default", "")),
            ("closed.yaml", &broker("closed", "")),
            ("p.yaml", &orders),
        ],
        on(&issuer, AuthorizationMode::DenyAll),
    )
    .await;
    let url = s.broker_url("default", "default");
    let app = issuer.token("system:serviceaccount:default:app-7", AUDIENCE);
    let reply = post(&url, "1", "com.example.order", Some(&app)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);

    let reply = post(&url, "2", "org.other.thing", Some(&app)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert!(
        reply
            .body
            .contains("event 2 does not pass the filters of EventPolicy orders"),
        "{}",
        reply.body
    );

    let stranger = issuer.token("system:serviceaccount:default:intruder", AUDIENCE);
    let reply = post(&url, "3", "com.example.order", Some(&stranger)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert!(
        reply.body.contains(
            "system:serviceaccount:default:intruder may not send to Broker default/default"
        ),
        "{}",
        reply.body
    );

    // No policy applies to `closed`: deny-all.
    let closed = issuer.token(
        "system:serviceaccount:default:app-7",
        "eventing.knative.dev/broker/default/closed",
    );
    let reply = post(
        &s.broker_url("default", "closed"),
        "4",
        "com.example.order",
        Some(&closed),
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert!(reply.body.contains("deny-all"), "{}", reply.body);

    // Status: the policy's subjects and target, the broker's policies.
    let policies = admin_list(s.server.admin, "eventpolicies").await;
    assert_eq!(
        policies[0]["status"]["from"],
        json!(["system:serviceaccount:default:app-*"])
    );
    assert_eq!(
        policies[0]["metadata"]["annotations"]["pilotlight.dev/applies-to"],
        "Broker default"
    );
    let brokers = admin_list(s.server.admin, "brokers").await;
    let default = brokers
        .iter()
        .find(|b| b["metadata"]["name"] == "default")
        .expect("listed");
    assert_eq!(
        default["status"]["policies"],
        json!([{"apiVersion": "eventing.knative.dev/v1alpha1", "name": "orders"}])
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn allow_same_namespace_admits_the_namespaces_service_accounts_only() {
    let issuer = TestIssuer::start().await;
    let s = TestServer::start_with(
        &[("b.yaml", &broker("default", ""))],
        on(&issuer, AuthorizationMode::AllowSameNamespace),
    )
    .await;
    let url = s.broker_url("default", "default");
    let mine = issuer.token("system:serviceaccount:default:anyone", AUDIENCE);
    assert_eq!(
        post(&url, "1", "t", Some(&mine)).await.status,
        StatusCode::ACCEPTED
    );
    let theirs = issuer.token("system:serviceaccount:team-b:anyone", AUDIENCE);
    let reply = post(&url, "2", "t", Some(&theirs)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert!(
        reply
            .body
            .contains("not a service account of namespace default"),
        "{}",
        reply.body
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_pingsources_events_pass_a_policy_that_refers_to_it_and_a_strangers_do_not() {
    let issuer = TestIssuer::start().await;
    let subscriber = Subscriber::accepting().await;
    let ping = "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata:\n  name: beat\nspec:\n  schedule: \"* * * * *\"\n  data: '{\"beat\": true}'\n  sink:\n    ref:\n      apiVersion: eventing.knative.dev/v1\n      kind: Broker\n      name: default\n";
    let from_ping = policy(
        "from-ping",
        "  from:\n    - ref:\n        apiVersion: sources.knative.dev/v1\n        kind: PingSource\n        name: beat\n",
    );
    let files = [
        ("b.yaml", broker("default", "")),
        (
            "t.yaml",
            trigger("all", "default", &subscriber.url("/"), ""),
        ),
        ("ping.yaml", ping.to_owned()),
        ("p.yaml", from_ping),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let auth = on(&issuer, AuthorizationMode::DenyAll);
    let s = TestServer::start_with(&files, |config| {
        auth(config);
        // A minute a second.
        config.ping_clock = PingClock::accelerated(60);
    })
    .await;
    let events = subscriber.wait_for(1, PATIENCE).await;
    assert_eq!(events[0].ty(), "dev.knative.sources.ping");
    let policies = admin_list(s.server.admin, "eventpolicies").await;
    assert_eq!(
        policies[0]["status"]["from"],
        json!(["system:serviceaccount:default:beat-oidc-sources.knative.dev-pingsource"])
    );
    let stranger = issuer.token("system:serviceaccount:default:someone", AUDIENCE);
    let reply = post(
        &s.broker_url("default", "default"),
        "x",
        "t",
        Some(&stranger),
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_verifies_pilotlights_delivery_token_with_its_jwks() {
    let issuer = TestIssuer::start().await;
    let subscriber = Subscriber::accepting().await;
    let to_subscriber = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: signed\nspec:\n  broker: default\n  subscriber:\n    uri: {}\n    audience: https://subscriber.example\n",
        subscriber.url("/")
    );
    let s = TestServer::start_with(
        &[
            ("b.yaml", &broker("default", "")),
            ("t.yaml", &to_subscriber),
        ],
        on(&issuer, AuthorizationMode::AllowSameNamespace),
    )
    .await;
    let token = issuer.token("system:serviceaccount:default:app", AUDIENCE);
    let reply = post(&s.broker_url("default", "default"), "1", "t", Some(&token)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    subscriber.wait_for(1, PATIENCE).await;
    let received = subscriber.received.lock().expect("lock")[0].headers.clone();
    let bearer = received["authorization"].to_str().expect("ascii");
    let delivered = bearer.strip_prefix("Bearer ").expect("a bearer token");

    // As a subscriber would: discovery, then the JWKS, then the token.
    let discovery: Value = serde_json::from_str(
        &request(
            Method::GET,
            &s.admin_url("/.well-known/openid-configuration"),
            &[],
            "",
        )
        .await
        .body,
    )
    .expect("discovery JSON");
    let jwks_url = discovery["jwks_uri"].as_str().expect("jwks_uri");
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(&request(Method::GET, jwks_url, &[], "").await.body).expect("JWKS");
    let header = jsonwebtoken::decode_header(delivered).expect("a JWT");
    let jwk = jwks
        .find(header.kid.as_deref().expect("kid"))
        .expect("the key is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("a key");
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&["https://subscriber.example"]);
    validation.set_issuer(&[discovery["issuer"].as_str().expect("issuer")]);
    let claims = jsonwebtoken::decode::<Value>(delivered, &key, &validation)
        .expect("the delivery's token verifies")
        .claims;
    assert_eq!(
        claims["sub"],
        "system:serviceaccount:default:signed-oidc-eventing.knative.dev-trigger"
    );
    let triggers = admin_list(s.server.admin, "triggers").await;
    assert_eq!(
        triggers[0]["status"]["auth"]["serviceAccountName"],
        "signed-oidc-eventing.knative.dev-trigger"
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_dead_letter_into_another_broker_carries_the_triggers_token() {
    let issuer = TestIssuer::start().await;
    let failing = Subscriber::failing().await;
    let kept = Subscriber::accepting().await;
    let files = support::oidc::dead_letter_through_a_policy(&failing.url("/"), &kept.url("/"));
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let s = TestServer::start_with(&files, on(&issuer, AuthorizationMode::DenyAll)).await;
    let token = issuer.token("anyone", AUDIENCE);
    let reply = post(
        &s.broker_url("default", "default"),
        "dead-1",
        "t",
        Some(&token),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let dead = kept.wait_for(1, PATIENCE).await;
    assert_eq!(dead[0].id(), "dead-1");
    assert!(dead[0].attribute("knativeerrorcode").is_some());
    s.server.shutdown().await;
}

#[tokio::test]
async fn without_authentication_nothing_changes_and_policies_say_so() {
    let s = TestServer::start(&[
        ("b.yaml", &broker("default", "")),
        ("p.yaml", &policy("p", "  from:\n    - sub: x\n")),
    ])
    .await;
    let reply = post(&s.broker_url("default", "default"), "1", "t", None).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let policies = admin_list(s.server.admin, "eventpolicies").await;
    let ready = &policies[0]["status"]["conditions"][0];
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "AuthOIDCFeatureNotEnabled");
    let brokers = admin_list(s.server.admin, "brokers").await;
    assert!(brokers[0]["status"].get("policies").is_none());
    assert!(brokers[0]["status"]["address"].get("audience").is_none());
    let discovery = request(Method::GET, &s.admin_url("/openid/v1/jwks"), &[], "").await;
    assert_eq!(discovery.status, StatusCode::NOT_FOUND);
    s.server.shutdown().await;
}

#[tokio::test]
async fn pilotlight_send_takes_the_token_from_a_file_or_stdin() {
    let issuer = TestIssuer::start().await;
    let s = TestServer::start_with(
        &[("b.yaml", &broker("default", ""))],
        on(&issuer, AuthorizationMode::AllowAll),
    )
    .await;
    let file = s.dir.path().join("token");
    std::fs::write(&file, format!("{}\n", issuer.token("someone", AUDIENCE))).expect("write");
    let send = |token: &str| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pilotlight"));
        command.args([
            "send",
            "--broker",
            "default/default",
            "--listen",
            &s.server.listen.to_string(),
            "--type",
            "t",
            "--source",
            "/cli",
            "--token",
            token,
        ]);
        command.stdin(std::process::Stdio::piped());
        command.output()
    };
    let sent = send(file.to_str().expect("utf-8")).await.expect("runs");
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    // From standard input.
    let mut piped = tokio::process::Command::new(env!("CARGO_BIN_EXE_pilotlight"))
        .args([
            "send",
            "--broker",
            "default/default",
            "--listen",
            &s.server.listen.to_string(),
            "--type",
            "t",
            "--source",
            "/cli",
            "--token",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    let mut stdin = piped.stdin.take().expect("stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, issuer.token("someone", AUDIENCE).as_bytes())
        .await
        .expect("write the token");
    drop(stdin);
    let from_stdin = piped.wait_with_output().await.expect("ends");
    assert!(
        from_stdin.status.success(),
        "{}",
        String::from_utf8_lossy(&from_stdin.stderr)
    );
    std::fs::write(&file, "").expect("write");
    let empty = send(file.to_str().expect("utf-8")).await.expect("runs");
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("it is empty"));
    let stale = issuer
        .key
        .sign(&json!({"iss": issuer.url, "sub": "s", "aud": AUDIENCE, "exp": now() - 3600}));
    std::fs::write(&file, stale).expect("write");
    let refused = send(file.to_str().expect("utf-8")).await.expect("runs");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("expired"),
        "{stderr}"
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn in_kubernetes_mode_the_api_servers_service_account_tokens_are_trusted() {
    let fake = FakeApiServer::start().await;
    fake.create(json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
        "metadata": {"name": "default", "namespace": "default"},
    }));
    let dir = tempfile::tempdir().expect("dir");
    let mut config = fake.replica_config(dir.path(), "one");
    config.default_class = pilotlight::api::broker::BrokerClass::Memory;
    config.auth = AuthConfig {
        enabled: true,
        default_mode: AuthorizationMode::AllowSameNamespace,
        ..AuthConfig::default()
    };
    let server = Server::start(config).await.expect("pilotlight starts");
    fake.wait_for("the broker Ready", PATIENCE, |fake| {
        let broker = fake.get("eventing.knative.dev/v1", "Broker", "default", "default")?;
        (broker["status"]["address"]["audience"] == AUDIENCE).then_some(())
    })
    .await;
    fake.create(json!({
        "apiVersion": "eventing.knative.dev/v1alpha1", "kind": "EventPolicy",
        "metadata": {"name": "namespace-only", "namespace": "default"},
        "spec": {"from": [{"sub": "system:serviceaccount:default:*"}]},
    }));
    fake.wait_for("the policy's status and the broker's", PATIENCE, |fake| {
        let policy = fake.get(
            "eventing.knative.dev/v1alpha1",
            "EventPolicy",
            "default",
            "namespace-only",
        )?;
        let broker = fake.get("eventing.knative.dev/v1", "Broker", "default", "default")?;
        (policy["status"]["from"] == json!(["system:serviceaccount:default:*"])
            && broker["status"]["policies"][0]["name"] == "namespace-only")
            .then_some(())
    })
    .await;
    let url = format!("http://{}/default/default", server.listen);
    let token = fake.service_account_token("default", "app", AUDIENCE);
    let reply = post(&url, "1", "t", Some(&token)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let other = fake.service_account_token("elsewhere", "app", AUDIENCE);
    let reply = post(&url, "2", "t", Some(&other)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    server.shutdown().await;
}

#[tokio::test]
async fn a_channel_has_its_own_audience_and_policies() {
    let issuer = TestIssuer::start().await;
    let subscriber = Subscriber::accepting().await;
    let channel =
        "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: audit\n";
    let subscription = format!(
        "apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata:\n  name: to-sub\nspec:\n  channel:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n    name: audit\n  subscriber:\n    uri: {}\n",
        subscriber.url("/")
    );
    let only_auditors = policy(
        "auditors",
        "  to:\n    - ref: {apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: audit}\n  from:\n    - sub: system:serviceaccount:default:auditor\n",
    );
    let s = TestServer::start_with(
        &[
            ("c.yaml", channel),
            ("s.yaml", &subscription),
            ("p.yaml", &only_auditors),
        ],
        on(&issuer, AuthorizationMode::AllowAll),
    )
    .await;
    let url = s.broker_url("default", "audit-kn-channel");
    let audience = "messaging.knative.dev/inmemorychannel/default/audit";
    let as_broker = issuer.token("system:serviceaccount:default:auditor", AUDIENCE);
    let reply = post(&url, "1", "t", Some(&as_broker)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    assert!(reply.body.contains(audience), "{}", reply.body);
    let auditor = issuer.token("system:serviceaccount:default:auditor", audience);
    let reply = post(&url, "2", "t", Some(&auditor)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let other = issuer.token("system:serviceaccount:default:other", audience);
    let reply = post(&url, "3", "t", Some(&other)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert_eq!(subscriber.wait_for(1, PATIENCE).await[0].id(), "2");
    let channels = admin_list(s.server.admin, "channels").await;
    assert_eq!(channels[0]["status"]["address"]["audience"], audience);
    assert_eq!(channels[0]["status"]["policies"][0]["name"], "auditors");
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_reply_the_brokers_policies_refuse_goes_to_the_dead_letter_sink() {
    let issuer = TestIssuer::start().await;
    let replier = Subscriber::replying(|_| bytes::Bytes::from_static(b"hi")).await;
    let dead = Subscriber::accepting().await;
    let replying = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: replies\nspec:\n  broker: default\n  filter:\n    attributes:\n      type: order\n  subscriber:\n    uri: {}\n  delivery:\n    deadLetterSink:\n      uri: {}\n",
        replier.url("/"),
        dead.url("/")
    );
    let apps_only = policy(
        "apps",
        "  from:\n    - sub: \"system:serviceaccount:default:app-*\"\n",
    );
    let s = TestServer::start_with(
        &[
            ("b.yaml", &broker("default", "")),
            ("t.yaml", &replying),
            ("p.yaml", &apps_only),
        ],
        on(&issuer, AuthorizationMode::AllowAll),
    )
    .await;
    let token = issuer.token("system:serviceaccount:default:app-1", AUDIENCE);
    let reply = post(
        &s.broker_url("default", "default"),
        "o-1",
        "order",
        Some(&token),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let dead_lettered = dead.wait_for(1, PATIENCE).await;
    assert_eq!(dead_lettered[0].id(), "o-1");
    assert_eq!(dead_lettered[0].attribute("knativeerrorcode"), Some("403"));
    s.server.shutdown().await;
}
