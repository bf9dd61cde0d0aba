//! The listeners' and the ingress's limits over raw TCP, so that each
//! misbehaving client is exactly what it claims to be: one connection too
//! many, a head too large, a head or a body trickled, one request too many
//! for a broker. Each gets its own answer, and the admin listener keeps
//! answering.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use pilotlight::server::{IngressLimits, ListenerLimits};
use support::{TestServer, broker, request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);
const EVENT: &str = "{\"n\":1}";

/// A binary-mode event's request head for `/default/default`, announcing
/// `length` bytes of body.
fn head(id: &str, length: usize) -> String {
    format!(
        "POST /default/default HTTP/1.1\r\nhost: pilotlight\r\nce-specversion: 1.0\r\nce-id: {id}\r\nce-source: /overload\r\nce-type: test\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    )
}

fn whole_request(id: &str) -> String {
    format!("{}{EVENT}", head(id, EVENT.len()))
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// Reads one response's head (and what came with it) and its status.
async fn read_response(stream: &mut TcpStream) -> (StatusCode, String) {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    while !contains_head_end(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(left, stream.read(&mut buffer))
            .await
            .expect("a response within the wait")
            .expect("read");
        assert!(
            read > 0,
            "closed before a response: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..read]);
    }
    // The short bodies these answers carry come in the same read, or soon.
    if let Ok(Ok(read)) =
        tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buffer)).await
    {
        seen.extend_from_slice(&buffer[..read]);
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text}"));
    (code, text)
}

fn contains_head_end(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| w == b"\r\n\r\n")
}

/// Sends a whole event on `stream` and reads the answer.
async fn send_event(stream: &mut TcpStream, id: &str) -> (StatusCode, String) {
    stream
        .write_all(whole_request(id).as_bytes())
        .await
        .expect("write");
    read_response(stream).await
}

/// Whether the server closes `stream` within `within` (a read of 0 bytes
/// or a reset), reading and dropping anything it sends first.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

async fn start(adjust: impl FnOnce(&mut pilotlight::server::ServerConfig)) -> TestServer {
    let server = TestServer::start_with(&[("b.yaml", &broker("default", ""))], adjust).await;
    support::wait_accepted(&server.broker_url("default", "default"), "warm-up", WAIT).await;
    server
}

#[tokio::test]
async fn past_max_connections_a_connection_is_answered_503_and_admin_still_answers() {
    let s = start(|c| {
        c.listener = ListenerLimits {
            max_connections: Some(3),
            ..ListenerLimits::default()
        }
    })
    .await;
    let listen = s.server.listen;
    let mut held = Vec::new();
    for i in 0..3 {
        let mut stream = connect(listen).await;
        let (status, text) = send_event(&mut stream, &format!("held-{i}")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{text}");
        held.push(stream);
    }

    let mut one_more = connect(listen).await;
    let (status, text) = read_response(&mut one_more).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1"), "{text}");
    assert!(text.contains("--max-connections"), "{text}");
    assert!(closed_within(&mut one_more, WAIT).await, "not closed");

    // Probes and metrics live on the admin listener, which has no limit.
    let health = request(http::Method::GET, &s.admin_url("/healthz"), &[], "").await;
    assert_eq!(health.status, StatusCode::OK);
    let metrics = request(http::Method::GET, &s.admin_url("/metrics"), &[], "").await;
    assert!(
        metrics
            .body
            .contains("pilotlight_http_connections_refused_total{listener=\"main\"} 1"),
        "{}",
        metrics.body
    );

    // A connection that ends gives its slot back.
    drop(held.pop());
    support::wait_until("a slot comes back", WAIT, async || {
        let mut stream = connect(listen).await;
        send_event(&mut stream, "after").await.0 == StatusCode::ACCEPTED
    })
    .await;
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_request_head_over_the_limit_is_431() {
    let s = start(|c| {
        c.listener = ListenerLimits {
            max_header_bytes: 8192,
            ..ListenerLimits::default()
        }
    })
    .await;
    let mut stream = connect(s.server.listen).await;
    let padding = "x".repeat(20_000);
    let request = whole_request("big-head").replacen(
        "host: pilotlight\r\n",
        &format!("host: pilotlight\r\nx-padding: {padding}\r\n"),
        1,
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let (status, text) = read_response(&mut stream).await;
    assert_eq!(
        status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{text}"
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_trickles_its_head_is_cut_off() {
    let s = start(|c| {
        c.listener = ListenerLimits {
            header_timeout: Duration::from_secs(1),
            ..ListenerLimits::default()
        }
    })
    .await;
    let mut stream = connect(s.server.listen).await;
    let started = Instant::now();
    stream
        .write_all(b"POST /default/default HTTP/1.1\r\nhost: pilotlight\r\n")
        .await
        .expect("write");
    assert!(
        closed_within(&mut stream, Duration::from_secs(5)).await,
        "a half-sent head kept its connection"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A client that sends its head in time is served on the same listener.
    let mut prompt = connect(s.server.listen).await;
    assert_eq!(
        send_event(&mut prompt, "prompt").await.0,
        StatusCode::ACCEPTED
    );
    // The same timeout ends a kept-alive connection left idle that long
    // (hyper times the wait for the next head from the last response).
    assert!(
        closed_within(&mut prompt, Duration::from_secs(5)).await,
        "an idle connection outlived the header timeout"
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_408() {
    let s = start(|c| {
        c.ingress = IngressLimits {
            body_timeout: Duration::from_secs(1),
            ..IngressLimits::default()
        }
    })
    .await;
    let mut stream = connect(s.server.listen).await;
    stream
        .write_all(format!("{}{{\"n\"", head("slow-body", 100)).as_bytes())
        .await
        .expect("write");
    let (status, text) = read_response(&mut stream).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{text}");
    assert!(text.contains("--request-body-timeout"), "{text}");
    assert!(closed_within(&mut stream, WAIT).await, "not closed");
    s.server.shutdown().await;
}

#[tokio::test]
async fn past_max_requests_per_broker_the_ingress_answers_429_and_recovers() {
    let s = start(|c| {
        c.ingress = IngressLimits {
            max_requests_per_broker: 2,
            body_timeout: Duration::from_secs(20),
        }
    })
    .await;
    let listen = s.server.listen;
    // Two requests whose bodies are still coming hold both slots.
    let mut slow = Vec::new();
    for i in 0..2 {
        let mut stream = connect(listen).await;
        let first_half = &EVENT[..3];
        stream
            .write_all(
                format!("{}{first_half}", head(&format!("slow-{i}"), EVENT.len())).as_bytes(),
            )
            .await
            .expect("write");
        slow.push(stream);
    }
    let mut third = connect(listen).await;
    // The slow requests reach the ingress in their own time.
    let mut refused = String::new();
    support::wait_until("the third request is refused", WAIT, async || {
        let (status, text) = send_event(&mut connect(listen).await, "third").await;
        refused = text;
        status == StatusCode::TOO_MANY_REQUESTS
    })
    .await;
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused}"
    );
    assert!(refused.contains("--max-requests-per-broker"), "{refused}");

    // The slow bodies finish: both stored, and the slots come back.
    for stream in &mut slow {
        stream
            .write_all(&EVENT.as_bytes()[3..])
            .await
            .expect("write");
        let (status, text) = read_response(stream).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    }
    assert_eq!(
        send_event(&mut third, "after").await.0,
        StatusCode::ACCEPTED
    );
    s.server.shutdown().await;
}
