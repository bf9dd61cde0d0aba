//! Readiness probes, polled fast during a cold start: a request is waiting
//! for this instance, so every millisecond between "listening" and "ready"
//! is latency the user sees.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::serving::runtime::Probe;

/// Probe fast for this long: most apps are up by then.
const FAST_PHASE: Duration = Duration::from_millis(100);
/// The first pause between connects while the port is not open yet, and
/// the longest one: a refused connect on loopback costs a few microseconds,
/// and the app's own start takes milliseconds, so noticing its port costs
/// about half of the longest pause.
const FIRST_CONNECT_PAUSE: Duration = Duration::from_micros(50);
const MAX_CONNECT_PAUSE: Duration = Duration::from_micros(200);
/// Then back off, doubling, up to this interval.
const SLOW_INTERVAL: Duration = Duration::from_millis(20);
/// One probe attempt may take this long (an HTTP handler that hangs).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// The most of an HTTP answer read to find its status line.
const MAX_STATUS_LINE: usize = 1024;

/// Resolves once the probe passes against `address` (where the probe's
/// port of the instance is reached).
pub(super) async fn wait_until_ready(probe: &Probe, address: SocketAddr) {
    let started = Instant::now();
    // Nothing can pass before the port is open; watch for that first, at a
    // finer grain than tokio's millisecond timer.
    if until_listening(address, FAST_PHASE).await && attempt(probe, address).await {
        return;
    }
    let mut interval = Duration::from_millis(1);
    loop {
        if attempt(probe, address).await {
            return;
        }
        tokio::time::sleep(interval).await;
        interval = next_interval(interval, started.elapsed());
    }
}

/// Connects to `address` until it accepts, pausing [`FIRST_CONNECT_PAUSE`]
/// and doubling up to [`MAX_CONNECT_PAUSE`], for at most `limit`; true once
/// it accepted. It runs on a blocking thread: tokio's timer sleeps whole
/// milliseconds (about half a millisecond of a cold start lost on average),
/// a thread's sleep does not. Dropping the future ends the thread's loop at
/// its next pause.
async fn until_listening(address: SocketAddr, limit: Duration) -> bool {
    let abandoned = Arc::new(AtomicBool::new(false));
    let _abandon_on_drop = SetOnDrop(abandoned.clone());
    let connects = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut pause = FIRST_CONNECT_PAUSE;
        loop {
            if std::net::TcpStream::connect(address).is_ok() {
                return true;
            }
            if abandoned.load(Ordering::Relaxed) || started.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(MAX_CONNECT_PAUSE);
        }
    });
    connects.await.unwrap_or(false)
}

/// Sets its flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn next_interval(current: Duration, elapsed: Duration) -> Duration {
    if elapsed < FAST_PHASE {
        current
    } else {
        current.saturating_mul(2).min(SLOW_INTERVAL)
    }
}

/// One probe attempt, bounded by [`ATTEMPT_TIMEOUT`].
pub(super) async fn attempt(probe: &Probe, address: SocketAddr) -> bool {
    let check = async {
        match probe {
            Probe::TcpDefault | Probe::Tcp { .. } => tcp(address).await,
            Probe::Http { path, headers, .. } => http(address, path, headers).await,
        }
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, check)
        .await
        .unwrap_or(false)
}

async fn tcp(address: SocketAddr) -> bool {
    TcpStream::connect(address).await.is_ok()
}

/// An HTTP/1.1 GET, ready on 200..=399. Hand-written: a probe only needs the
/// status line, and this keeps it free of connection pools.
async fn http(address: SocketAddr, path: &str, headers: &[(String, String)]) -> bool {
    let Ok(mut stream) = TcpStream::connect(address).await else {
        return false;
    };
    let request = probe_request(address, path, headers);
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    match read_status(&mut stream).await {
        Some(status) => (200..400).contains(&status),
        None => false,
    }
}

fn probe_request(address: SocketAddr, path: &str, headers: &[(String, String)]) -> String {
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: pilotlight-probe\r\nConnection: close\r\n"
    );
    // A header with a line break would smuggle more headers: leave it out.
    let safe = |s: &str| !s.contains(['\r', '\n']);
    for (name, value) in headers.iter().filter(|(n, v)| safe(n) && safe(v)) {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// Reads until the end of the status line and returns its code.
async fn read_status(stream: &mut TcpStream) -> Option<u16> {
    let mut answer = Vec::with_capacity(128);
    let mut buffer = [0u8; 256];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        if answer.len() >= MAX_STATUS_LINE {
            return None;
        }
        let n = stream.read(&mut buffer).await.ok()?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..n]);
    }
    parse_status(&answer)
}

/// `HTTP/1.x NNN ...` → NNN.
fn parse_status(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|b| *b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::net::TcpListener;

    fn local(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    /// A one-shot server that answers `status` and hands back the request.
    async fn answer_once(status: u16) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buffer).await.expect("read");
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..n]);
            }
            let answer = format!("HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n");
            stream.write_all(answer.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&request).into_owned()
        });
        (port, server)
    }

    fn http_probe(path: &str, headers: &[(&str, &str)]) -> Probe {
        Probe::Http {
            path: path.into(),
            port: None,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[tokio::test]
    async fn http_probe_is_ready_on_2xx_and_3xx_only() {
        for (status, ready) in [
            (200, true),
            (204, true),
            (302, true),
            (404, false),
            (503, false),
        ] {
            let (port, server) = answer_once(status).await;
            assert_eq!(
                attempt(&http_probe("/healthz", &[]), local(port)).await,
                ready,
                "status {status}"
            );
            server.await.expect("server");
        }
    }

    #[tokio::test]
    async fn http_probe_sends_path_and_headers() {
        let (port, server) = answer_once(200).await;
        let probe = http_probe("ready", &[("X-Probe", "yes"), ("Bad", "a\r\nInjected: 1")]);
        assert!(attempt(&probe, local(port)).await);
        let request = server.await.expect("server");
        assert!(request.starts_with("GET /ready HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("\r\nX-Probe: yes\r\n"), "{request}");
        assert!(!request.contains("Injected"), "{request}");
    }

    #[tokio::test]
    async fn tcp_probe_needs_a_listener() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("address").port();
        assert!(attempt(&Probe::TcpDefault, local(port)).await);
        assert!(attempt(&Probe::Tcp { port: Some(port) }, local(port)).await);
        drop(listener);
        assert!(!attempt(&Probe::TcpDefault, local(port)).await);
    }

    #[tokio::test]
    async fn a_port_is_noticed_once_it_listens_and_given_up_after_the_limit() {
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("bind")
            .local_addr()
            .expect("address")
            .port();
        let started = std::time::Instant::now();
        assert!(!until_listening(local(port), Duration::from_millis(20)).await);
        assert!(started.elapsed() >= Duration::from_millis(20));
        let opener = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("bind");
            (std::time::Instant::now(), listener)
        });
        assert!(until_listening(local(port), Duration::from_secs(5)).await);
        let noticed = std::time::Instant::now();
        let (opened, _listener) = opener.join().expect("opener");
        // Loose: a loaded machine may delay either thread.
        assert!(
            noticed - opened < Duration::from_millis(50),
            "{:?}",
            noticed - opened
        );
    }

    #[test]
    fn polling_is_fast_first_then_backs_off_to_the_slow_interval() {
        let ms = Duration::from_millis;
        assert_eq!(next_interval(ms(1), ms(50)), ms(1));
        assert_eq!(next_interval(ms(1), ms(150)), ms(2));
        assert_eq!(next_interval(ms(16), ms(300)), SLOW_INTERVAL);
        assert_eq!(next_interval(SLOW_INTERVAL, ms(300)), SLOW_INTERVAL);
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 301\r\n"), Some(301));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
    }
}
