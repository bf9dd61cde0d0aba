//! An OTLP/HTTP collector in the bench's process for `eventing
//! --trace-sampling`: it answers every export 200 at once and counts the
//! requests and bytes, so what tracing costs is pilotlight's own work
//! (making, batching and encoding spans), not a collector's.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use pilotlight::telemetry::trace::{self, TraceSettings};

use crate::http_server::HttpServer;

pub(crate) struct Collector {
    share: f64,
    counts: Arc<Counts>,
    started: Instant,
    _server: HttpServer,
}

#[derive(Default)]
struct Counts {
    exports: AtomicU64,
    bytes: AtomicU64,
}

impl Collector {
    /// Starts the collector and installs pilotlight's tracer (for this
    /// whole process: every pilotlight of the run is traced).
    pub(crate) async fn install(share: f64) -> anyhow::Result<Collector> {
        let counts = Arc::new(Counts::default());
        let counting = counts.clone();
        let server = HttpServer::start(
            move |request: Request<Incoming>| {
                let counts = counting.clone();
                async move {
                    let body = request.into_body().collect().await.map(|b| b.to_bytes());
                    let length = body.map_or(0, |b| b.len() as u64);
                    counts.exports.fetch_add(1, Ordering::Relaxed);
                    counts.bytes.fetch_add(length, Ordering::Relaxed);
                    Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
                }
            },
            true,
            "the OTLP collector",
        )
        .await?;
        let settings = TraceSettings {
            endpoint: Some(format!("http://{}", server.addr)),
            sampling: Some(share),
        };
        let installed = trace::install(&settings, tokio::runtime::Handle::current())
            .context("installing pilotlight's tracer")?;
        anyhow::ensure!(
            installed,
            "traces are turned off in this environment (OTEL_SDK_DISABLED or OTEL_TRACES_EXPORTER=none)"
        );
        Ok(Collector {
            share,
            counts,
            started: Instant::now(),
            _server: server,
        })
    }

    /// One line: the sampling and what reached the collector.
    pub(crate) fn summary(&self) -> String {
        let seconds = self.started.elapsed().as_secs_f64();
        let exports = self.counts.exports.load(Ordering::Relaxed);
        let bytes = self.counts.bytes.load(Ordering::Relaxed) as f64;
        format!(
            "traces: sampling {}; the collector got {exports} exports, {:.1} MiB ({:.0} KiB/s over {seconds:.0} s)",
            self.share,
            bytes / f64::from(1 << 20),
            bytes / 1024.0 / seconds.max(1.0)
        )
    }
}
