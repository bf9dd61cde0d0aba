//! `pilotlight run` assembled: the main listener (broker ingress), the admin
//! listener, the control plane and hot reload. Integration tests and the
//! benchmark start it in process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::admin::{self, AdminState};
use crate::control::manifest;
use crate::control::reconcile::{ControlPlane, Settings};
use crate::control::resources::broker::BrokerClass;
use crate::eventing::backend::log::LogConfig;
use crate::eventing::backend::memory::MemoryConfig;
use crate::eventing::broker::BrokerRegistry;
use crate::eventing::broker::ingress::{self, IngressState};
use crate::eventing::delivery::EventSender;

/// Everything `pilotlight run` is configured with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub paths: Vec<PathBuf>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    pub max_event_bytes: usize,
    pub default_class: BrokerClass,
    pub log: LogConfig,
    pub memory: MemoryConfig,
    pub max_in_flight: usize,
    /// Re-apply manifests when their files change.
    pub watch: bool,
}

/// A running server.
pub struct Server {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub control: Arc<ControlPlane>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Server {
    /// Binds both listeners, applies the manifests and starts serving.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
        let admin_listener = TcpListener::bind(config.admin)
            .await
            .with_context(|| format!("cannot listen on {} (--admin)", config.admin))?;
        let listen = listener.local_addr()?;
        let admin = admin_listener.local_addr()?;
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {} (--data-dir)",
                config.data_dir.display()
            )
        })?;

        let registry = Arc::new(BrokerRegistry::default());
        let settings = Settings {
            data_dir: config.data_dir.clone(),
            ingress_url: format!("http://{listen}"),
            default_class: config.default_class,
            log: config.log.clone(),
            memory: config.memory.clone(),
            max_in_flight: config.max_in_flight,
        };
        let control = Arc::new(ControlPlane::new(
            settings,
            registry.clone(),
            EventSender::new(),
        ));
        let ready = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = watch::channel(false);

        let ingress_router = ingress::router(IngressState {
            brokers: registry,
            max_event_bytes: config.max_event_bytes,
        });
        let admin_router = admin::router(AdminState {
            control: control.clone(),
            metrics: crate::telemetry::metrics_handle(),
            ready: ready.clone(),
        });
        let tasks = vec![
            tokio::spawn(serve(listener, ingress_router, stopped.clone())),
            tokio::spawn(serve(admin_listener, admin_router, stopped)),
        ];

        let paths = config.paths.clone();
        let class = config.default_class;
        let manifests = tokio::task::spawn_blocking(move || manifest::load(&paths, class)).await?;
        tracing::info!(objects = manifests.objects.len(), refused = manifests.errors.len(), %listen, %admin, "manifests loaded");
        control.apply(&manifests).await;
        ready.store(true, Ordering::Release);
        let watcher = if config.watch {
            crate::control::watch::watch(config.paths.clone(), control.clone())
                .map_err(|e| tracing::warn!(error = %e, "hot reload is off: cannot watch the manifest paths"))
                .ok()
        } else {
            None
        };
        Ok(Server {
            listen,
            admin,
            control,
            stop,
            tasks,
            _watcher: watcher,
        })
    }

    /// Stops listening, stops dispatchers and saves cursors.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.control.shutdown().await;
        for task in self.tasks {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, router: axum::Router, mut stopped: watch::Receiver<bool>) {
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "listener failed");
    }
}
