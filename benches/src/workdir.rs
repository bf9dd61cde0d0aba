//! Where a suite's in-process pilotlight keeps its manifests and data.

use std::path::PathBuf;

use anyhow::Context as _;
use pilotlight::server::ServerConfig;

/// The namespace of every manifest the suites write.
pub(crate) const NAMESPACE: &str = "default";

/// Where a suite's Trigger delivers.
pub(crate) enum TriggerSubscriber<'a> {
    /// A server of the bench's own, by address.
    Uri(std::net::SocketAddr),
    /// One of pilotlight's Services, by name.
    Service(&'a str),
}

/// One Trigger, `---` first, on `broker`, filtering on `type` when given:
/// the manifest every suite writes its triggers with.
pub(crate) fn trigger_yaml(
    name: &str,
    broker: &str,
    event_type: Option<&str>,
    subscriber: TriggerSubscriber<'_>,
) -> String {
    let filter = event_type.map_or_else(String::new, |ty| {
        format!("  filter:\n    attributes:\n      type: {ty}\n")
    });
    let subscriber = match subscriber {
        TriggerSubscriber::Uri(address) => format!("    uri: http://{address}/\n"),
        TriggerSubscriber::Service(service) => format!(
            "    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: {service}\n"
        ),
    };
    format!(
        "---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  broker: {broker}
{filter}  subscriber:
{subscriber}"
    )
}

pub(crate) fn server_config(dir: &WorkDir) -> ServerConfig {
    ServerConfig::on_free_ports(dir.manifests(), dir.path.join("data"))
}

/// A temporary folder for manifests and the log, removed when dropped.
pub(crate) struct WorkDir {
    pub(crate) path: PathBuf,
}

impl WorkDir {
    pub(crate) fn create(label: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "pilotlight-bench-{label}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let dir = WorkDir { path };
        std::fs::create_dir_all(dir.manifests())
            .with_context(|| format!("cannot create {}", dir.path.display()))?;
        Ok(dir)
    }

    pub(crate) fn manifests(&self) -> PathBuf {
        self.path.join("manifests")
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove the bench's temporary folder");
        }
    }
}
