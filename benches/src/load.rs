//! The load generator of the HTTP suites (one implementation for every
//! target): N keep-alive HTTP/1.1 connections (plain or TLS) posting
//! binary-mode CloudEvents or sending `GET`s, closed loop or paced, over a
//! window with a warm-up that is not counted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Not counted at the start of every phase: connections, caches and the
/// log's first segment settle.
pub(crate) const WARMUP: Duration = Duration::from_secs(1);
/// Time given to the connections to connect before a phase starts.
const CONNECT_GRACE: Duration = Duration::from_millis(200);

/// The extension carrying the send time, in ns since the bench's origin.
pub(crate) const BENCH_TS: &str = "ce-benchts";

pub(crate) fn nanos_since(origin: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

/// What one phase sends, and how fast.
pub(crate) struct Load {
    pub(crate) addr: SocketAddr,
    pub(crate) path: String,
    pub(crate) payload: Bytes,
    pub(crate) connections: usize,
    pub(crate) duration: Duration,
    /// Total events/s to pace to; `None`: back to back (closed loop).
    pub(crate) rate: Option<f64>,
    pub(crate) origin: Instant,
    /// Makes every `ce-id` of the run unique.
    pub(crate) id_prefix: String,
    pub(crate) shape: Shape,
    /// HTTPS with this client configuration (the server named
    /// `localhost`); None for plain HTTP.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

/// The requests of a load.
pub(crate) enum Shape {
    /// Binary-mode CloudEvents POSTed with the payload; a 202 is success.
    CloudEvent,
    /// The same, each with this `Authorization` header (an OIDC bearer
    /// token, the same one every time, as a sender reuses its token).
    SignedCloudEvent { authorization: http::HeaderValue },
    /// `GET {path}` with this Host header and no body (a Service, or an app
    /// directly); a 200 is success.
    Get { host: String },
    /// Binary-mode CloudEvents whose `type` cycles through these (the n-th
    /// send of a connection has the (n mod len)-th), for brokers whose
    /// triggers filter by type.
    TypedCloudEvent { types: Arc<[String]> },
}

impl Load {
    /// The answer that counts as success.
    pub(crate) fn expected(&self) -> StatusCode {
        match self.shape {
            Shape::CloudEvent | Shape::SignedCloudEvent { .. } | Shape::TypedCloudEvent { .. } => {
                StatusCode::ACCEPTED
            }
            Shape::Get { .. } => StatusCode::OK,
        }
    }

    /// A binary-mode CloudEvent stamped with its send time, or a GET.
    pub(crate) fn request(
        &self,
        connection: usize,
        seq: u64,
        sent_at: Instant,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        if let Shape::Get { host } = &self.shape {
            return Request::builder()
                .method(Method::GET)
                .uri(self.path.as_str())
                .header(header::HOST, host.as_str())
                .body(Full::new(Bytes::new()))
                .context("building a bench request");
        }
        let mut builder = Request::builder();
        if let Shape::SignedCloudEvent { authorization } = &self.shape {
            builder = builder.header(header::AUTHORIZATION, authorization.clone());
        }
        builder
            .method(Method::POST)
            .uri(self.path.as_str())
            .header(header::HOST, self.addr.to_string())
            .header("ce-specversion", "1.0")
            .header("ce-id", format!("{}-{connection}-{seq}", self.id_prefix))
            .header("ce-source", "/pilotlight/bench")
            .header("ce-type", self.event_type(seq))
            .header(BENCH_TS, nanos_since(self.origin, sent_at))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(self.payload.clone()))
            .context("building a bench request")
    }

    /// The `type` of a connection's `seq`-th event.
    fn event_type(&self, seq: u64) -> &str {
        match &self.shape {
            Shape::TypedCloudEvent { types } if !types.is_empty() => {
                &types[(seq % types.len() as u64) as usize]
            }
            _ => "dev.pilotlight.bench",
        }
    }

    /// Time between two sends of one connection when paced.
    fn interval(&self) -> Option<Duration> {
        self.rate
            .map(|rate| Duration::from_secs_f64(self.connections as f64 / rate))
    }
}

/// When a phase starts, starts counting, and ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) start: Instant,
    pub(crate) measure_from: Instant,
    pub(crate) end: Instant,
}

impl Window {
    pub(crate) fn starting_now(duration: Duration) -> Self {
        let start = Instant::now() + CONNECT_GRACE;
        Window {
            start,
            measure_from: start + WARMUP,
            end: start + WARMUP + duration,
        }
    }

    pub(crate) fn measured(&self) -> Duration {
        self.end.duration_since(self.measure_from)
    }

    pub(crate) fn counts(&self, at: Instant) -> bool {
        at >= self.measure_from && at <= self.end
    }
}

/// What connections saw. Answers other than the expected one (202 for
/// events, 200 for GETs) are kept apart: a benchmark that counted errors as
/// throughput would flatter a failing server.
pub(crate) struct Tally {
    /// The answer that counts as success.
    expected: StatusCode,
    /// 202s at any time, warm-up included: what the subscriber must receive.
    pub(crate) sent_accepted: u64,
    /// 202s completed inside the measured window.
    pub(crate) accepted: u64,
    /// Other answers, by status code.
    pub(crate) rejected: BTreeMap<u16, u64>,
    pub(crate) transport_errors: u64,
    first_error: Option<String>,
    /// Ingress latency (send to 202) of the measured 202s, in ns.
    pub(crate) latency: Histogram<u64>,
    /// Paced phases: how late the generator sent, at worst (it competes for
    /// the same cores, and a late send is load the server did not see).
    pub(crate) max_lag: Duration,
}

impl Tally {
    pub(crate) fn new(expected: StatusCode) -> anyhow::Result<Self> {
        Ok(Tally {
            expected,
            sent_accepted: 0,
            accepted: 0,
            rejected: BTreeMap::new(),
            transport_errors: 0,
            first_error: None,
            latency: new_histogram()?,
            max_lag: Duration::ZERO,
        })
    }

    pub(crate) fn record(&mut self, status: StatusCode, took: Duration, counted: bool) {
        if status != self.expected {
            *self.rejected.entry(status.as_u16()).or_default() += 1;
            return;
        }
        self.sent_accepted += 1;
        if counted {
            self.accepted += 1;
            record(
                &mut self.latency,
                u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            );
        }
    }

    pub(crate) fn transport_error(&mut self, error: String) {
        self.transport_errors += 1;
        self.first_error.get_or_insert(error);
    }

    pub(crate) fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.sent_accepted += other.sent_accepted;
        self.accepted += other.accepted;
        for (status, n) in other.rejected {
            *self.rejected.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency
            .add(&other.latency)
            .context("merging latency histograms")?;
        self.max_lag = self.max_lag.max(other.max_lag);
        Ok(())
    }

    pub(crate) fn errors(&self) -> u64 {
        self.rejected.values().sum::<u64>() + self.transport_errors
    }

    pub(crate) fn describe_errors(&self) -> String {
        let mut out = String::new();
        for (status, n) in &self.rejected {
            let _ = write!(out, "{n} answered {status}; ");
        }
        if self.transport_errors > 0 {
            let _ = write!(
                out,
                "{} connection errors (first: {})",
                self.transport_errors,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        out.trim_end_matches("; ").to_owned()
    }
}

pub(crate) fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::<u64>::new(3).context("creating a latency histogram")
}

/// Records a latency in ns. The histograms grow as needed (`saturating_record`
/// would clamp to the initial tiny range instead).
pub(crate) fn record(histogram: &mut Histogram<u64>, nanos: u64) {
    if histogram.record(nanos).is_err() {
        histogram.saturating_record(nanos);
    }
}

/// Runs a phase that starts as soon as the connections are up.
pub(crate) async fn run_load(load: Load) -> anyhow::Result<(Tally, Window)> {
    let window = Window::starting_now(load.duration);
    Ok((run_load_in(load, window).await?, window))
}

/// Runs one task per connection over the window and adds up what they saw.
pub(crate) async fn run_load_in(load: Load, window: Window) -> anyhow::Result<Tally> {
    let load = Arc::new(load);
    let mut tasks = JoinSet::new();
    for index in 0..load.connections {
        tasks.spawn(connection(load.clone(), window, index));
    }
    let mut total = Tally::new(load.expected())?;
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined.context("a load generator connection panicked")??)?;
    }
    Ok(total)
}

/// One connection's share of the phase. A failure ends the connection and is
/// counted, not hidden.
async fn connection(load: Arc<Load>, window: Window, index: usize) -> anyhow::Result<Tally> {
    let mut tally = Tally::new(load.expected())?;
    if let Err(e) = drive(&load, window, index, &mut tally).await {
        tally.transport_error(format!("{e:#}"));
    }
    Ok(tally)
}

async fn drive(load: &Load, window: Window, index: usize, tally: &mut Tally) -> anyhow::Result<()> {
    let mut sender = connect_with(load.addr, load.tls.as_ref()).await?;
    tokio::time::sleep_until(window.start.into()).await;
    let interval = load.interval();
    // Spread the connections over one interval so paced sends do not come
    // in bursts of N.
    let offset = interval.map_or(Duration::ZERO, |i| {
        i.mul_f64(index as f64 / load.connections as f64)
    });
    for seq in 0u64.. {
        if let Some(interval) = interval {
            // Fixed deadlines, not a fixed gap: a late send does not lower
            // the rate, the next ones catch up.
            let due = window.start + offset + interval.mul_f64(seq as f64);
            if due >= window.end {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let now = Instant::now();
            if window.counts(now) {
                tally.max_lag = tally.max_lag.max(now.duration_since(due));
            }
        }
        if Instant::now() >= window.end {
            break;
        }
        sender
            .ready()
            .await
            .context("the server closed the connection")?;
        let sent_at = Instant::now();
        let response = sender
            .send_request(load.request(index, seq, sent_at)?)
            .await
            .context("sending an event")?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .context("reading an answer")?;
        let done = Instant::now();
        tally.record(status, done.duration_since(sent_at), window.counts(done));
    }
    Ok(())
}

/// Sends `request` on `sender` once it is free and reads the whole answer:
/// its status and body. `what` names the request in errors. For the
/// suites' probes and control requests; the load's own requests time each
/// step themselves.
pub(crate) async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
    what: &str,
) -> anyhow::Result<(StatusCode, Bytes)> {
    sender
        .ready()
        .await
        .with_context(|| format!("the connection closed before {what}"))?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("sending {what}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the answer to {what}"))?
        .to_bytes();
    Ok((status, body))
}

/// A bare HTTP/1.1 connection (no pool: one in flight, kept alive).
pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    connect_with(addr, None).await
}

/// [`connect`], over TLS when `tls` is given (the server named `localhost`).
pub(crate) async fn connect_with(
    addr: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
    let Some(tls) = tls else {
        return handshake(addr, stream).await;
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").context("a server name")?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, stream)
        .await
        .with_context(|| format!("TLS handshake with {addr}"))?;
    handshake(addr, stream).await
}

async fn handshake<IO>(addr: SocketAddr, io: IO) -> anyhow::Result<SendRequest<Full<Bytes>>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
    // Ends when the sender is dropped; its errors surface through the sender.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
