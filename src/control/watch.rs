//! Hot reload: re-applies the manifests when files under the watched paths
//! change. Changes are debounced so an editor's save (often several writes)
//! makes one reload.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::manifest;
use super::reconcile::ControlPlane;

const DEBOUNCE: Duration = Duration::from_millis(250);

/// Watches `paths` and applies the manifests on every change, until the
/// returned watcher is dropped.
pub(crate) fn watch(
    paths: Vec<PathBuf>,
    control: Arc<ControlPlane>,
) -> notify::Result<notify::RecommendedWatcher> {
    let (changed, mut changes) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = changed.send(());
        }
    })?;
    for path in &paths {
        // A missing path was reported by the loader; watch what exists.
        if let Err(e) = watcher.watch(path, RecursiveMode::Recursive) {
            tracing::warn!(path = %path.display(), error = %e, "cannot watch for changes");
        }
    }
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            // Wait for the burst of events to settle.
            while tokio::time::timeout(DEBOUNCE, changes.recv())
                .await
                .is_ok_and(|e| e.is_some())
            {}
            let class = control.default_class();
            let paths = paths.clone();
            let loaded = tokio::task::spawn_blocking(move || manifest::load(&paths, class)).await;
            match loaded {
                Ok(manifests) => {
                    tracing::info!(
                        objects = manifests.objects.len(),
                        refused = manifests.errors.len(),
                        "manifests changed; reconciling"
                    );
                    control.apply(Arc::new(manifests)).await;
                }
                Err(e) => tracing::error!(error = %e, "reloading manifests failed"),
            }
        }
    });
    Ok(watcher)
}
