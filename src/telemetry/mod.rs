//! Logs (tracing) and metrics (Prometheus, and the readings the console
//! shows) set-up.

pub(crate) mod readings;
pub mod trace;

use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::layers::FanoutBuilder;
use readings::{Readings, ReadingsRecorder};
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// How the output of instances (processes and containers) is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppOutput {
    /// As log records with service, revision and instance fields: for JSON
    /// logs, and where no log format was chosen (tests, embedding).
    Log,
    /// Each line as the app wrote it, after a short prefix naming the
    /// instance (coloured on a terminal), as `docker compose` shows it.
    Terminal { color: bool },
}

static APP_OUTPUT: std::sync::OnceLock<AppOutput> = std::sync::OnceLock::new();

/// How instances' output is shown; set by [`init_logging`].
pub(crate) fn app_output() -> AppOutput {
    APP_OUTPUT.get().copied().unwrap_or(AppOutput::Log)
}

/// Installs the global log subscriber. `RUST_LOG` overrides the default level
/// (`info`).
pub fn init_logging(format: LogFormat) {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = APP_OUTPUT.set(match format {
        LogFormat::Pretty => AppOutput::Terminal { color: terminal },
        LogFormat::Json => AppOutput::Log,
    });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Pretty => builder.with_ansi(terminal).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Already installed (tests start several servers in one process): keep it.
    let _ = result;
}

/// Latency buckets in seconds, from 100 µs to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// What the process's recorder feeds: Prometheus's text for `/metrics`,
/// and the readings for the console.
struct Installed {
    prometheus: PrometheusHandle,
    readings: Arc<Readings>,
}

/// Installs the global recorder on first use; later calls (several servers
/// in one test process) share it.
fn installed() -> &'static Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let prometheus = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = prometheus.handle();
        let readings = Arc::new(Readings::default());
        let both = FanoutBuilder::default()
            .add_recorder(prometheus)
            .add_recorder(ReadingsRecorder(readings.clone()))
            .build();
        // Fails only if another recorder is installed; /metrics and the
        // console's numbers are then empty.
        if metrics::set_global_recorder(both).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics and the console will not show pilotlight's metrics");
        }
        Installed {
            prometheus: handle,
            readings,
        }
    })
}

/// The handle that renders `/metrics`.
pub(crate) fn metrics_handle() -> PrometheusHandle {
    installed().prometheus.clone()
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the histograms' recorded samples into their buckets every few
/// seconds until `stopped`. The exporter keeps every sample recorded since
/// the last fold (8 bytes each, one per proxied request and per event), and
/// without this only a scrape of `/metrics` folded them: memory grew with
/// traffic on a server nobody scraped.
pub(crate) async fn upkeep(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let handle = metrics_handle();
    loop {
        tokio::select! {
            () = tokio::time::sleep(UPKEEP_INTERVAL) => handle.run_upkeep(),
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

fn installed_readings() -> Arc<Readings> {
    installed().readings.clone()
}
