//! The [`Source`] implementation: connects to the API server (pilotlight's
//! `--kubeconfig`, else kube's inference), then runs one list-and-watch per
//! `spec.resources` entry.

use std::path::PathBuf;
use std::sync::Arc;

use super::health::{Reporter, missing_kubeconfig};
use super::watch::{KindWatch, Settings, Target, sleep_or_stop};
use crate::api::filter::Filter;
use crate::api::sources::apiserver::{ApiServerSource, EventMode};
use crate::backoff::Backoff;
use crate::eventing::source::{Source, SourceContext};
use crate::kubeconfig::load_config;

/// A running `ApiServerSource`.
pub struct ApiServerSourceRunner {
    targets: Vec<Target>,
    settings: Settings,
    connect: Connect,
}

/// Where the Kubernetes client configuration comes from; read in `run`, so
/// that a missing one shows in status and is retried.
#[derive(Clone)]
enum Connect {
    /// kube's inference: `KUBECONFIG` or `~/.kube/config`, else the
    /// in-cluster service account.
    Infer,
    /// This kubeconfig file (its current context).
    Kubeconfig(PathBuf),
    Config(Box<kube::Config>),
}

impl Connect {
    async fn config(&self) -> Result<kube::Config, String> {
        match self {
            Connect::Infer => load_config(None).await,
            Connect::Kubeconfig(path) => load_config(Some(path)).await,
            Connect::Config(config) => Ok((**config).clone()),
        }
    }
}

impl ApiServerSourceRunner {
    /// Connects with kube's inference (see [`Connect::Infer`]).
    pub fn new(manifest: &ApiServerSource) -> Self {
        ApiServerSourceRunner {
            targets: manifest
                .spec
                .resources
                .iter()
                .map(|r| Target {
                    api_version: r.api_version.clone(),
                    kind: r.kind.clone(),
                    label_selector: r.selector.as_ref().and_then(|s| s.to_query()),
                })
                .collect(),
            settings: Settings {
                mode: manifest.mode().unwrap_or(EventMode::Reference),
                owner: manifest.spec.owner.clone(),
                overrides: manifest.spec.ce_overrides.clone(),
                // Checked at load; were it not valid, nothing passes rather
                // than everything (any of no filters is false).
                filter: Arc::new(manifest.filter().unwrap_or(Filter::Any(Vec::new()))),
                namespace: manifest.metadata.namespace().to_string(),
                namespace_selector: manifest
                    .spec
                    .namespace_selector
                    .as_ref()
                    .map(|s| s.to_query().unwrap_or_default()),
                cluster_url: String::new(),
            },
            connect: Connect::Infer,
        }
    }

    /// Connects with this configuration instead (tests, or a chosen context).
    pub fn with_config(mut self, config: kube::Config) -> Self {
        self.connect = Connect::Config(Box::new(config));
        self
    }

    /// Reads this kubeconfig file (`--kubeconfig`; when `run` starts, and
    /// again while it is missing or unreadable) instead of inferring the
    /// configuration.
    pub fn with_kubeconfig(mut self, path: impl Into<PathBuf>) -> Self {
        self.connect = Connect::Kubeconfig(path.into());
        self
    }
}

#[async_trait::async_trait]
impl Source for ApiServerSourceRunner {
    async fn run(self: Box<Self>, ctx: SourceContext) {
        let ApiServerSourceRunner {
            targets,
            mut settings,
            connect,
        } = *self;
        let reporter = Reporter::new(ctx.clone(), targets.len());
        let mut backoff = Backoff::default();
        let client = loop {
            if ctx.is_stopped() {
                return;
            }
            let attempt = connect.config().await.and_then(|config| {
                let url = config.cluster_url.to_string();
                kube::Client::try_from(config)
                    .map(|client| (client, url))
                    .map_err(|e| e.to_string())
            });
            match attempt {
                Ok(connected) => break connected,
                Err(e) => {
                    tracing::warn!(source = %ctx.key, error = %e, "no Kubernetes client");
                    let given = matches!(connect, Connect::Kubeconfig(_));
                    reporter.set_all(missing_kubeconfig(&e, given));
                    if sleep_or_stop(&ctx, backoff.next_delay()).await {
                        return;
                    }
                }
            }
        };
        let (client, url) = client;
        settings.cluster_url = url.trim_end_matches('/').to_string();
        let watches = targets.into_iter().enumerate().map(|(i, target)| {
            KindWatch::new(i, client.clone(), target, &settings, &ctx, &reporter).run()
        });
        tokio::select! {
            _ = futures::future::join_all(watches) => {}
            _ = ctx.stopped() => {}
        }
    }
}
