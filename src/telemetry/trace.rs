//! Traces (OpenTelemetry): a span for each hop an event or a request takes,
//! exported over OTLP/HTTP in batches by the SDK's own thread.
//!
//! With no endpoint configured nothing is installed: every [`Hop`] is empty
//! and each place that would start one pays a load and a branch.
//!
//! Context travels as Knative and CloudEvents carry it: W3C `traceparent` /
//! `tracestate` headers on HTTP, and the CloudEvents distributed-tracing
//! extension (the `traceparent` and `tracestate` attributes) stored with an
//! event. Following OpenTelemetry's CloudEvents conventions, an event's
//! extension is its *creation* context: pilotlight adds it where the event
//! has none and never changes one it has, and every delivery of the event,
//! however much later and from whichever replica, continues from it.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::cloudevent::Event;
use crate::http_util::{self, ClientSettings};

/// The W3C trace-context attribute and header names.
pub(crate) const TRACEPARENT: &str = "traceparent";
pub(crate) const TRACESTATE: &str = "tracestate";

/// Where spans go and how many are kept: `pilotlight run`'s flags, with
/// OpenTelemetry's standard variables behind them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceSettings {
    /// The OTLP/HTTP base URL (`http://collector:4318`); spans go to its
    /// `/v1/traces`. None: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` if set,
    /// else no traces.
    pub endpoint: Option<String>,
    /// The share of new traces kept (0 to 1), parent-based: a request that
    /// arrives sampled (or not) by its `traceparent` keeps that decision.
    /// None: `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, else all.
    pub sampling: Option<f64>,
}

/// Why traces could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(
        "--trace-sampling must be between 0 and 1 (0.01 keeps one trace in a hundred), not {0}"
    )]
    Sampling(f64),
    #[error(
        "--otlp-endpoint {endpoint:?} is not an http:// or https:// URL with a host; give the collector's OTLP/HTTP address, such as http://localhost:4318"
    )]
    Endpoint { endpoint: String },
    #[error("the OTLP exporter could not be built: {0}")]
    Exporter(String),
}

struct Installed {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Whether spans are recorded at all: the one branch each hop pays when
/// traces are off.
#[inline]
pub(crate) fn enabled() -> bool {
    INSTALLED.get().is_some()
}

/// Sets up the exporter and the tracer for this process, if an endpoint is
/// configured; says whether it did. The exporter's requests run on
/// `runtime`, whose reactor the SDK's own export thread lacks.
pub fn install(
    settings: &TraceSettings,
    runtime: tokio::runtime::Handle,
) -> Result<bool, TraceError> {
    if let Some(share) = settings.sampling
        && !(0.0..=1.0).contains(&share)
    {
        return Err(TraceError::Sampling(share));
    }
    if disabled_by_environment() {
        return Ok(false);
    }
    let endpoint = match &settings.endpoint {
        Some(base) => Some(traces_url(base)?),
        None if std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() => None,
        None => return Ok(false),
    };
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(ExportClient::new(runtime));
    if let Some(url) = endpoint {
        exporter = exporter.with_endpoint(url);
    }
    let exporter = exporter
        .build()
        .map_err(|e| TraceError::Exporter(e.to_string()))?;
    let mut provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource());
    if let Some(share) = settings.sampling {
        provider = provider.with_sampler(Sampler::ParentBased(Box::new(
            Sampler::TraceIdRatioBased(share),
        )));
    }
    let provider = provider.build();
    let tracer = provider.tracer("pilotlight");
    // A second server in one process (tests) keeps the first's tracer.
    let _ = INSTALLED.set(Installed { tracer, provider });
    Ok(true)
}

/// Exports what is still queued; called as the process stops.
pub fn shutdown() {
    if let Some(installed) = INSTALLED.get()
        && let Err(e) = installed.provider.shutdown()
    {
        tracing::warn!(error = %e, "the last spans could not be exported");
    }
}

/// OpenTelemetry's switches for turning the SDK or the trace exporter off.
fn disabled_by_environment() -> bool {
    let is = |name: &str, value: &str| {
        std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
    };
    is("OTEL_SDK_DISABLED", "true") || is("OTEL_TRACES_EXPORTER", "none")
}

/// `{base}/v1/traces`, as the OTLP specification builds a signal's URL
/// from `OTEL_EXPORTER_OTLP_ENDPOINT`; a URL that already names the
/// path is kept.
fn traces_url(base: &str) -> Result<String, TraceError> {
    let wrong = || TraceError::Endpoint {
        endpoint: base.to_owned(),
    };
    let uri: http::Uri = base.parse().map_err(|_| wrong())?;
    if !http_util::is_http_url(&uri) {
        return Err(wrong());
    }
    let base = base.trim_end_matches('/');
    Ok(if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    })
}

fn resource() -> Resource {
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "pilotlight".to_owned());
    Resource::builder()
        .with_service_name(name)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The exporter's HTTP client: pilotlight's own hyper client, with the
/// request run on the server's runtime (the SDK exports from a thread of
/// its own, without a reactor).
#[derive(Debug)]
struct ExportClient {
    runtime: tokio::runtime::Handle,
}

type PlainClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;
type TlsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// How the exporter connects: one idle connection per collector is enough
/// for one batch at a time.
const EXPORT_SETTINGS: ClientSettings = ClientSettings {
    nodelay: true,
    connect_timeout: Some(Duration::from_secs(5)),
    tcp_keepalive: Some(Duration::from_secs(60)),
    pool_idle_timeout: Some(Duration::from_secs(90)),
    pool_max_idle_per_host: 2,
};

impl ExportClient {
    fn new(runtime: tokio::runtime::Handle) -> Self {
        ExportClient { runtime }
    }

    fn plain() -> &'static PlainClient {
        static CLIENT: OnceLock<PlainClient> = OnceLock::new();
        CLIENT.get_or_init(|| {
            http_util::client(
                hyper_util::client::legacy::connect::dns::GaiResolver::new(),
                EXPORT_SETTINGS,
            )
        })
    }

    fn tls() -> Result<&'static TlsClient, HttpError> {
        static CLIENT: OnceLock<Result<TlsClient, String>> = OnceLock::new();
        CLIENT
            .get_or_init(|| {
                let config = crate::tls::ClientTls::default()
                    .config(None)
                    .map_err(|e| e.to_string())?;
                Ok(http_util::https_client(
                    hyper_util::client::legacy::connect::dns::GaiResolver::new(),
                    EXPORT_SETTINGS,
                    (*config).clone(),
                ))
            })
            .as_ref()
            .map_err(|e| HttpError::from(e.clone()))
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = request.map(Full::new);
        let https = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
        let exchange = async move {
            let response = if https {
                Self::tls()?.request(request).await?
            } else {
                Self::plain().request(request).await?
            };
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        self.runtime
            .spawn(exchange)
            .await
            .map_err(|e| HttpError::from(format!("the export task failed: {e}")))?
    }
}

/// One hop's span, or nothing when traces are off or the hop is not
/// sampled. It ends when dropped.
#[derive(Default)]
pub(crate) struct Hop {
    /// The span, inside the context its children start from.
    context: Option<Context>,
    /// Sampled: its attributes are kept. An unsampled span only passes its
    /// context (and the decision) on, so nothing is built for it.
    recording: bool,
}

/// A hop's parent: what arrived with a request or an event.
pub(crate) struct Parent(Context);

impl Parent {
    /// A new trace.
    pub(crate) fn root() -> Parent {
        Parent(Context::new())
    }

    /// The `traceparent` / `tracestate` headers of a request; a new trace
    /// without them.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Parent {
        if !enabled() {
            return Parent::root();
        }
        Parent(propagator().extract(&HeaderExtractor(headers)))
    }

    /// The event's distributed-tracing extension; a new trace without it.
    pub(crate) fn from_event(event: &Event) -> Parent {
        if !enabled() {
            return Parent::root();
        }
        Parent(propagator().extract(&EventAttributes(event)))
    }
}

impl Hop {
    /// Starts a span named `name` under `parent`; `attributes` are built
    /// only when traces are on.
    pub(crate) fn start(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: impl FnOnce() -> Parent,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Hop {
        let Some(installed) = INSTALLED.get() else {
            return Hop::default();
        };
        let Parent(parent) = parent();
        // Sampled first, attributes after: the 99 % a low sampling ratio
        // drops cost no attribute.
        let mut span = installed
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(&installed.tracer, &parent);
        let recording = span.is_recording();
        if recording {
            span.set_attributes(attributes());
        }
        Hop {
            context: Some(parent.with_span(span)),
            recording,
        }
    }

    /// A span inside this hop that already ended, from `started` to
    /// `ended` (a wait, timed before the request learnt of it). Spans
    /// inside it can still be made.
    pub(crate) fn finished(
        &self,
        name: &'static str,
        started: SystemTime,
        ended: SystemTime,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Hop {
        let (Some(installed), Some(parent)) = (INSTALLED.get(), &self.context) else {
            return Hop::default();
        };
        let mut span = installed
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(started)
            .start_with_context(&installed.tracer, parent);
        let recording = span.is_recording();
        if recording {
            span.set_attributes(attributes());
        }
        span.end_with_timestamp(ended);
        // Ending it again when the hop drops does nothing.
        Hop {
            context: Some(parent.with_span(span)),
            recording,
        }
    }

    /// A hop inside this one.
    pub(crate) fn child(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Hop {
        match &self.context {
            Some(context) => Hop::start(name, kind, || Parent(context.clone()), attributes),
            None => Hop::default(),
        }
    }

    /// Whether traces are on for this hop. An unsampled span is on too: it
    /// records nothing but passes the decision on to what it calls.
    pub(crate) fn is_on(&self) -> bool {
        self.context.is_some()
    }

    /// Adds an attribute; `attribute` runs only when the hop records.
    pub(crate) fn set(&self, attribute: impl FnOnce() -> KeyValue) {
        if let Some(context) = self.recorded() {
            context.span().set_attribute(attribute());
        }
    }

    /// Marks the hop failed, with why (built only when the hop records).
    pub(crate) fn fail(&self, why: impl FnOnce() -> String) {
        if let Some(context) = self.recorded() {
            context.span().set_status(Status::error(why()));
        }
    }

    fn recorded(&self) -> Option<&Context> {
        self.context.as_ref().filter(|_| self.recording)
    }

    /// Sets `traceparent` (and `tracestate`) on an outgoing request, so
    /// that whatever it reaches continues this trace.
    pub(crate) fn inject(&self, headers: &mut HeaderMap) {
        if let Some(context) = &self.context {
            propagator().inject_context(context, &mut HeaderInjector(headers));
        }
    }

    /// Gives `event` this hop as its creation context when it has none:
    /// its deliveries, whenever they happen, continue from here. An event
    /// that has one keeps it (an intermediary must not change it).
    pub(crate) fn stamp_if_absent(&self, event: &mut Event) {
        let Some(context) = &self.context else { return };
        if event.attribute(TRACEPARENT).is_some() {
            return;
        }
        propagator().inject_context(context, &mut EventStamp(event));
    }
}

impl Drop for Hop {
    fn drop(&mut self) {
        if let Some(context) = self.context.take() {
            context.span().end();
        }
    }
}

fn propagator() -> &'static TraceContextPropagator {
    static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();
    PROPAGATOR.get_or_init(TraceContextPropagator::new)
}

/// Reads the distributed-tracing extension of an event.
struct EventAttributes<'a>(&'a Event);

impl Extractor for EventAttributes<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.attribute(key)
    }

    fn keys(&self) -> Vec<&str> {
        [TRACEPARENT, TRACESTATE]
            .into_iter()
            .filter(|k| self.0.attribute(k).is_some())
            .collect()
    }
}

/// Writes the distributed-tracing extension of an event.
struct EventStamp<'a>(&'a mut Event);

impl Injector for EventStamp<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty tracestate is no tracestate.
        if !value.is_empty() {
            self.0.set_attribute(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_gains_the_traces_path_once() {
        assert_eq!(
            traces_url("http://collector:4318").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c.example/v1/traces").unwrap(),
            "https://c.example/v1/traces"
        );
        for wrong in ["collector:4318", "ftp://c/x", "not a url", ""] {
            let error = traces_url(wrong).unwrap_err().to_string();
            assert!(error.contains("--otlp-endpoint"), "{wrong}: {error}");
        }
    }

    #[test]
    fn without_an_installed_tracer_hops_are_empty_and_change_nothing() {
        // No test in this binary installs one (the traces test runs
        // pilotlight as a process of its own).
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let hop = Hop::start(
            "ingress",
            SpanKind::Server,
            || Parent::from_headers(&headers),
            || panic!("attributes are not built when traces are off"),
        );
        assert!(!hop.is_on());
        let mut out = HeaderMap::new();
        hop.inject(&mut out);
        assert!(out.is_empty());
        let mut event = crate::cloudevent::test_event("1", "t", None);
        hop.stamp_if_absent(&mut event);
        assert!(event.attribute(TRACEPARENT).is_none());
    }
}
