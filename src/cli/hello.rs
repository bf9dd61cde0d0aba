//! `pilotlight hello`: Knative's helloworld sample as a subcommand, so
//! examples, tests and benchmarks have a real app without installing one.
//!
//! It is what the cold-start benchmark starts, so it is a bare hyper HTTP/1
//! server: nothing to set up before the first accept.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use http::header::{CONNECTION, CONTENT_TYPE, UPGRADE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::http_util;

#[derive(Debug, Args)]
pub struct HelloArgs {
    /// Address to listen on (default: --host and $PORT, else 8080).
    #[arg(long, conflicts_with = "host")]
    pub listen: Option<SocketAddr>,
    /// Interface to listen on, with $PORT: 0.0.0.0 in a container, whose
    /// 127.0.0.1 nothing outside it reaches.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
}

pub(crate) async fn run(args: HelloArgs) -> anyhow::Result<()> {
    let address = args.listen.unwrap_or_else(|| default_address(args.host));
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    eprintln!("hello: listening on http://{}", listener.local_addr()?);
    let stop = stop_signal()?;
    serve(listener, Arc::new(App::from_env()), stop).await;
    Ok(())
}

/// `host` and `$PORT`, as Knative sets it; 8080 otherwise.
fn default_address(host: std::net::IpAddr) -> SocketAddr {
    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    SocketAddr::new(host, port)
}

/// Resolves on SIGTERM (how runtimes stop an instance) or Ctrl-C.
fn stop_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    })
}

/// What every answer is made of, computed once at start.
struct App {
    /// `Hello {TARGET}!\n`.
    greeting: Bytes,
    /// `$K_REVISION`, sent back as `k-revision` so tests see which revision answered.
    revision: Option<HeaderValue>,
    pid: HeaderValue,
}

impl App {
    fn from_env() -> Self {
        let target = std::env::var("TARGET").unwrap_or_else(|_| "World".to_owned());
        let revision = std::env::var("K_REVISION").ok();
        App::new(&target, revision.as_deref())
    }

    fn new(target: &str, revision: Option<&str>) -> Self {
        App {
            greeting: Bytes::from(format!("Hello {target}!\n")),
            revision: revision.and_then(|r| HeaderValue::from_str(r).ok()),
            pid: HeaderValue::from(std::process::id()),
        }
    }
}

/// Serves until `stop` resolves, then stops accepting and returns once the
/// requests in flight are answered (idle keep-alive connections are closed).
async fn serve(listener: TcpListener, app: Arc<App>, stop: impl Future<Output = ()>) {
    let (closing, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, app.clone(), closing_rx.clone()));
                }
                // Out of file descriptors and the like: wait instead of spinning.
                Err(e) => {
                    eprintln!("hello: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            // Forget finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(stream: TcpStream, app: Arc<App>, mut closing: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| answer(app.clone(), request));
    let connection = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = closing.wait_for(|closing| *closing) => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
}

type Body = BoxBody<Bytes, hyper::Error>;

async fn answer(app: Arc<App>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut response = route(&app, request).await;
    let headers = response.headers_mut();
    if let Some(revision) = &app.revision {
        headers.insert("k-revision", revision.clone());
    }
    headers.insert("x-instance-pid", app.pid.clone());
    Ok(response)
}

async fn route(app: &App, request: Request<Incoming>) -> Response<Body> {
    match request.uri().path() {
        "/" => hello(app),
        "/sleep" => sleep_then_hello(app, request.uri()).await,
        "/echo" => echo(request),
        "/exit" => exit(request.uri()),
        "/headers" => text(StatusCode::OK, list_headers(request.headers())),
        "/upgrade" => upgrade(request),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /, /sleep?ms=N, /echo, /exit?code=N, /headers or /upgrade\n".into(),
        ),
    }
}

fn hello(app: &App) -> Response<Body> {
    let mut response = Response::new(full(app.greeting.clone()));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Holds the request for `ms` milliseconds: concurrency and drain tests.
async fn sleep_then_hello(app: &App, uri: &Uri) -> Response<Body> {
    let Some(ms) = query(uri, "ms").and_then(|ms| ms.parse().ok()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "use /sleep?ms=<milliseconds>\n".into(),
        );
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    hello(app)
}

/// Streams the request body back as it arrives.
fn echo(request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let mut response = Response::new(body.boxed());
    if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, content_type.clone());
    }
    response
}

/// Exits the whole process at once, as a crashing app would.
fn exit(uri: &Uri) -> Response<Body> {
    let Some(code) = query(uri, "code").and_then(|code| code.parse::<i32>().ok()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "use /exit?code=<exit code>\n".into(),
        );
    };
    eprintln!("hello: exiting with code {code} as asked");
    std::process::exit(code)
}

fn list_headers(headers: &HeaderMap) -> String {
    headers
        .iter()
        .map(|(name, value)| format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())))
        .collect()
}

/// `Upgrade: echo` switches to echoing raw bytes, to test a proxy's upgrade
/// pass-through without a WebSocket library.
fn upgrade(mut request: Request<Incoming>) -> Response<Body> {
    if !asks_for_echo_upgrade(request.headers()) {
        let mut response = text(
            StatusCode::UPGRADE_REQUIRED,
            "send Connection: upgrade and Upgrade: echo\n".into(),
        );
        response
            .headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("echo"));
        return response;
    }
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgraded.await {
            echo_raw(TokioIo::new(upgraded)).await;
        }
    });
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("echo"));
    response
}

async fn echo_raw(io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite) {
    use tokio::io::AsyncWriteExt as _;
    let (mut from, mut to) = tokio::io::split(io);
    if tokio::io::copy(&mut from, &mut to).await.is_ok() {
        let _ = to.shutdown().await;
    }
}

fn asks_for_echo_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade_echo = headers
        .get(UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("echo"));
    connection_upgrade && upgrade_echo
}

/// The value of `name` in the query string.
fn query<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then_some(value)
    })
}

/// The shared plain-text answer, in this server's body type.
fn text(status: StatusCode, body: String) -> Response<Body> {
    http_util::text::<Bytes>(status, body).map(full)
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::sync::oneshot;

    const PATIENCE: Duration = Duration::from_secs(10);

    /// A running hello and the switch that stops it.
    struct Server {
        address: SocketAddr,
        stop: oneshot::Sender<()>,
        done: tokio::task::JoinHandle<()>,
    }

    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let app = Arc::new(App::new("Tests", Some("hello-00001")));
        let done = tokio::spawn(serve(listener, app, async move {
            let _ = stopped.await;
        }));
        Server {
            address,
            stop,
            done,
        }
    }

    type Sender<B> = hyper::client::conn::http1::SendRequest<B>;

    async fn connect<B>(address: SocketAddr) -> Sender<B>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = TcpStream::connect(address).await.expect("connect");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection.with_upgrades());
        sender
    }

    async fn get(address: SocketAddr, path: &str) -> (Response<()>, String) {
        let mut sender = connect::<Empty<Bytes>>(address).await;
        let request = Request::get(path)
            .header("host", "hello.default")
            .body(Empty::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        (Response::from_parts(parts, ()), text)
    }

    #[tokio::test]
    async fn says_hello_with_revision_and_pid() {
        let server = start().await;
        let (response, body) = get(server.address, "/").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body, "Hello Tests!\n");
        assert_eq!(response.headers()["k-revision"], "hello-00001");
        let pid = std::process::id().to_string();
        assert_eq!(response.headers()["x-instance-pid"], pid.as_str());
        let (response, _) = get(server.address, "/nowhere").await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["k-revision"], "hello-00001");
    }

    #[tokio::test]
    async fn sleep_needs_a_duration_then_says_hello() {
        let server = start().await;
        let (response, body) = get(server.address, "/sleep?ms=5").await;
        assert_eq!(
            (response.status(), body.as_str()),
            (StatusCode::OK, "Hello Tests!\n")
        );
        let (response, _) = get(server.address, "/sleep?ms=soon").await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn headers_are_listed_one_per_line() {
        let server = start().await;
        let (_, body) = get(server.address, "/headers").await;
        assert_eq!(body, "host: hello.default\n");
    }

    #[tokio::test]
    async fn echo_streams_each_chunk_back_before_the_request_ends() {
        let server = start().await;
        let (mut chunks, incoming) =
            futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        let mut sender = connect(server.address).await;
        let request = Request::post("/echo")
            .header(CONTENT_TYPE, "application/x-ping")
            .body(StreamBody::new(incoming))
            .expect("request");
        let response = tokio::spawn(async move { sender.send_request(request).await });
        let ping = Ok(Frame::data(Bytes::from("ping")));
        futures::SinkExt::send(&mut chunks, ping)
            .await
            .expect("send ping");

        // The request is still open, yet its first chunk comes back.
        let response = tokio::time::timeout(PATIENCE, response)
            .await
            .expect("answered while the request is open")
            .expect("no panic")
            .expect("response");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/x-ping");
        let mut body = response.into_body();
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .expect("the first chunk comes back before the request ends");
        let data = frame.and_then(|f| f.ok()).and_then(|f| f.into_data().ok());
        assert_eq!(data.as_deref(), Some(&b"ping"[..]));

        let pong = Ok(Frame::data(Bytes::from("pong")));
        futures::SinkExt::send(&mut chunks, pong)
            .await
            .expect("send pong");
        drop(chunks);
        let rest = body.collect().await.expect("body").to_bytes();
        assert_eq!(&rest[..], b"pong");
    }

    #[tokio::test]
    async fn echo_upgrade_switches_protocols_and_echoes_raw_bytes() {
        let server = start().await;
        let mut sender = connect::<Empty<Bytes>>(server.address).await;
        let request = Request::get("/upgrade")
            .header(CONNECTION, "Upgrade")
            .header(UPGRADE, "echo")
            .body(Empty::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let upgraded = hyper::upgrade::on(response).await.expect("upgraded");
        let mut io = TokioIo::new(upgraded);
        io.write_all(b"raw bytes").await.expect("write");
        let mut echoed = [0u8; 9];
        tokio::time::timeout(PATIENCE, io.read_exact(&mut echoed))
            .await
            .expect("echoed in time")
            .expect("read");
        assert_eq!(&echoed, b"raw bytes");

        let (response, _) = get(server.address, "/upgrade").await;
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
    }

    #[tokio::test]
    async fn stopping_finishes_requests_in_flight_first() {
        let server = start().await;
        let slow = tokio::spawn(get(server.address, "/sleep?ms=300"));
        // Let the request reach the server before asking it to stop.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = server.stop.send(());
        let (response, body) = tokio::time::timeout(PATIENCE, slow)
            .await
            .expect("answered")
            .expect("no panic");
        assert_eq!(
            (response.status(), body.as_str()),
            (StatusCode::OK, "Hello Tests!\n")
        );
        tokio::time::timeout(PATIENCE, server.done)
            .await
            .expect("serve returns")
            .expect("no panic");
        assert!(
            TcpStream::connect(server.address).await.is_err(),
            "no longer accepting"
        );
    }
}
