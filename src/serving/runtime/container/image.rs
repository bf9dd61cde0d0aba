//! Images: the pull policy as Kubernetes defines it, pulls with progress and
//! registry credentials, and the image id each revision is pinned to.
//!
//! Pulling happens when the revision is made, never on a request: a cold
//! start is a container start, not a download. Knative resolves a tag to a
//! digest when it makes a revision; here the revision keeps the image id it
//! was prepared with, so a later pull of the same tag does not change a
//! running revision.

use std::collections::BTreeMap;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::CreateImageOptions;
use futures::StreamExt as _;
use tokio::time::Instant;

use super::engine::Engine;
use super::reason;
use crate::api::pod::PullPolicy;
use crate::serving::runtime::RuntimeCondition;
use crate::serving::runtime::config::RegistryAuth;
use crate::serving::runtime::local::ConditionReport;

/// How often pull progress reaches the log and the status.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// An image reference, split as a registry reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageRef {
    /// As written: `nginx`, `ghcr.io/knative/helloworld-go:latest`.
    pub written: String,
    /// The registry's host: `docker.io` when the reference names none.
    pub registry: String,
    /// What to pull: the reference with `:latest` added when it has neither
    /// tag nor digest (an engine given no tag pulls every tag).
    pub pull: String,
}

impl ImageRef {
    pub(crate) fn parse(image: &str) -> ImageRef {
        let first = image.split('/').next().unwrap_or_default();
        let has_registry = image.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        let registry = if has_registry { first } else { "docker.io" };
        let last = image.rsplit('/').next().unwrap_or(image);
        let pull = if image.contains('@') || last.contains(':') {
            image.to_owned()
        } else {
            format!("{image}:latest")
        };
        ImageRef {
            written: image.to_owned(),
            registry: registry.to_owned(),
            pull,
        }
    }
}

/// The image a revision's container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PreparedImage {
    /// The engine's id (`sha256:...`): what instances are created from.
    pub id: String,
    /// `repository@sha256:...` when the image came from a registry, else the
    /// id, for `status.containerStatuses[].imageDigest`.
    pub digest: String,
    /// Set when `Always` could not pull and the local copy runs.
    pub offline: Option<String>,
}

/// Makes the image present as its pull policy asks. Errors are the
/// revision's `ImagePullFailed` condition, with the engine's message.
pub(crate) async fn prepare(
    engine: &Engine,
    image: &ImageRef,
    policy: PullPolicy,
    credentials: Option<RegistryAuth>,
    report: &ConditionReport,
) -> Result<PreparedImage, RuntimeCondition> {
    let local = local_image(engine, &image.pull).await;
    match (policy, local) {
        (PullPolicy::IfNotPresent | PullPolicy::Never, Some(found)) => Ok(found),
        (PullPolicy::Never, None) => Err(RuntimeCondition::failed(
            reason::IMAGE_PULL_FAILED,
            format!(
                "image {} is not on this machine and its imagePullPolicy is Never; load it into the engine (docker load, docker pull) or change the policy",
                image.written
            ),
        )),
        (PullPolicy::Always, local) | (PullPolicy::IfNotPresent, local @ None) => {
            match pull(&engine.docker, image, credentials, report).await {
                Ok(()) => local_image(engine, &image.pull).await.ok_or_else(|| {
                    RuntimeCondition::failed(
                        reason::IMAGE_PULL_FAILED,
                        format!(
                            "image {} was pulled but the engine does not list it",
                            image.written
                        ),
                    )
                }),
                // A laptop offline still runs what it has.
                Err(why) => match local {
                    Some(mut found) => {
                        let note = format!(
                            "could not pull image {} ({why}); running the copy on this machine, {}",
                            image.written, found.id
                        );
                        tracing::warn!("{note}");
                        found.offline = Some(note);
                        Ok(found)
                    }
                    None => Err(RuntimeCondition::failed(
                        reason::IMAGE_PULL_FAILED,
                        format!("cannot pull image {}: {why}", image.written),
                    )),
                },
            }
        }
    }
}

/// The image as the engine has it, if it has it.
async fn local_image(engine: &Engine, reference: &str) -> Option<PreparedImage> {
    // The engine's router takes the name with its slashes as it is.
    let inspected = engine
        .get_json(&format!("/images/{reference}/json"))
        .await
        .ok()?;
    let id = inspected["Id"].as_str()?.to_owned();
    let repository = reference
        .rsplit_once('@')
        .map(|(repo, _)| repo)
        .or_else(|| {
            let (repo, tag) = reference.rsplit_once(':')?;
            // A ':' before the last '/' is a registry's port, not a tag.
            (!tag.contains('/')).then_some(repo)
        })
        .unwrap_or(reference);
    let digest = inspected["RepoDigests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str())
        .find(|d| d.split('@').next().is_some_and(|r| r.ends_with(repository)))
        .map_or_else(|| id.clone(), str::to_owned);
    Some(PreparedImage {
        id,
        digest,
        offline: None,
    })
}

/// Pulls with progress in the log and in `report`; the error is the
/// engine's message.
async fn pull(
    docker: &Docker,
    image: &ImageRef,
    credentials: Option<RegistryAuth>,
    report: &ConditionReport,
) -> Result<(), String> {
    let started = Instant::now();
    tracing::info!(image = %image.pull, "pulling image");
    report.set(Some(RuntimeCondition::pending(
        reason::IMAGE_PULLING,
        format!("pulling image {}", image.written),
    )));
    let options = CreateImageOptions {
        from_image: Some(image.pull.clone()),
        ..Default::default()
    };
    let credentials = credentials.map(|auth| DockerCredentials {
        username: auth.username,
        password: auth.password,
        auth: auth.auth,
        identitytoken: auth.identity_token,
        serveraddress: Some(auth.server),
        ..Default::default()
    });
    let mut stream = docker.create_image(Some(options), None, credentials);
    let mut progress = Progress::default();
    let mut last_report = Instant::now();
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| engine_message(&e))?;
        progress.update(&info);
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            let summary = progress.summary();
            tracing::info!(image = %image.pull, "pulling image: {summary}");
            report.set(Some(RuntimeCondition::pending(
                reason::IMAGE_PULLING,
                format!("pulling image {}: {summary}", image.written),
            )));
        }
    }
    tracing::info!(image = %image.pull, after = ?started.elapsed(), "image pulled");
    Ok(())
}

/// The engine's own words for an error, without bollard's wrapping.
pub(crate) fn engine_message(error: &bollard::errors::Error) -> String {
    use bollard::errors::Error;
    match error {
        Error::DockerResponseServerError { message, .. } => message.clone(),
        Error::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

/// Layers of a pull and their bytes, from the engine's progress messages.
#[derive(Debug, Default)]
struct Progress {
    /// Per layer id: (bytes done, bytes in all, finished).
    layers: BTreeMap<String, (i64, i64, bool)>,
}

impl Progress {
    fn update(&mut self, info: &bollard::models::CreateImageInfo) {
        let Some(id) = info.id.clone() else {
            return;
        };
        let status = info.status.as_deref().unwrap_or_default();
        let layer = self.layers.entry(id).or_default();
        if let Some(detail) = &info.progress_detail
            && status.starts_with("Downloading")
        {
            layer.0 = detail.current.unwrap_or(layer.0);
            layer.1 = detail.total.unwrap_or(layer.1);
        }
        if matches!(
            status,
            "Pull complete" | "Already exists" | "Download complete"
        ) {
            layer.2 = true;
            layer.0 = layer.1;
        }
    }

    fn summary(&self) -> String {
        let done = self.layers.values().filter(|l| l.2).count();
        let (current, total) = self
            .layers
            .values()
            .fold((0, 0), |(c, t), l| (c + l.0.max(0), t + l.1.max(0)));
        let mb = |bytes: i64| bytes as f64 / 1_000_000.0;
        format!(
            "{done} of {} layers, {:.1} MB of {:.1} MB",
            self.layers.len(),
            mb(current),
            mb(total)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_their_registry_and_get_a_tag() {
        let cases = [
            ("nginx", "docker.io", "nginx:latest"),
            ("nginx:1.27", "docker.io", "nginx:1.27"),
            ("library/nginx", "docker.io", "library/nginx:latest"),
            (
                "ghcr.io/knative/helloworld-go",
                "ghcr.io",
                "ghcr.io/knative/helloworld-go:latest",
            ),
            (
                "localhost:5000/app",
                "localhost:5000",
                "localhost:5000/app:latest",
            ),
            ("localhost/app:1", "localhost", "localhost/app:1"),
            ("gcr.io/a/b@sha256:00ff", "gcr.io", "gcr.io/a/b@sha256:00ff"),
        ];
        for (written, registry, pull) in cases {
            let parsed = ImageRef::parse(written);
            assert_eq!(
                (parsed.registry.as_str(), parsed.pull.as_str()),
                (registry, pull),
                "{written}"
            );
        }
    }

    #[test]
    fn progress_counts_layers_and_bytes() {
        let info =
            |id: &str, status: &str, current: i64, total: i64| bollard::models::CreateImageInfo {
                id: Some(id.into()),
                status: Some(status.into()),
                progress_detail: Some(bollard::models::ProgressDetail {
                    current: Some(current),
                    total: Some(total),
                }),
                ..Default::default()
            };
        let mut progress = Progress::default();
        progress.update(&info("a", "Downloading", 1_000_000, 4_000_000));
        progress.update(&info("b", "Pull complete", 0, 0));
        assert_eq!(progress.summary(), "1 of 2 layers, 1.0 MB of 4.0 MB");
    }
}
