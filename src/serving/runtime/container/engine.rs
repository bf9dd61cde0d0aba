//! Finding the container engine and talking to it: dockerd or Podman's
//! Docker-compatible service, over a unix socket, with the `bollard` client
//! at the API version the engine speaks.
//!
//! Where to look, in order: `--container-engine` (or
//! `PILOTLIGHT_CONTAINER_ENGINE`), else `DOCKER_HOST`, else the usual
//! sockets of dockerd and of Podman (rootful, then rootless). The first
//! that answers `GET /version` wins. Nothing is connected until a revision
//! needs an engine; a failed attempt is tried again when asked again.
//!
//! The first connection also removes what an earlier run with the same data
//! folder left behind (a `kill -9` gives pilotlight no chance to remove its
//! containers), before anything else runs. A file in the data folder
//! records that it ever ran containers, so that a start that needs no
//! engine connects at once only then.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::RemoveContainerOptions;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;

/// The label every container pilotlight makes carries: its data folder, so
/// that two pilotlights on one engine never touch each other's containers.
pub(crate) const OWNER_LABEL: &str = "dev.pilotlight.data-dir";
/// The newest Docker API version this client knows (bollard's).
const NEWEST_API: (usize, usize) = (1, 53);
/// How long one socket may take to answer `/version`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest any one API request may take to answer (a pull or a
/// container's wait stream the body for longer).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// A connected engine.
pub struct Engine {
    pub docker: Docker,
    pub socket: PathBuf,
    /// Such as `Docker Engine 20.10.24 (API 1.41)` or `Podman Engine 4.3.1
    /// (API 1.41)`.
    pub description: String,
    /// The engine runs without root: its containers' own addresses cannot be
    /// reached from the host, so instances are reached through published
    /// ports.
    pub rootless: bool,
}

impl Engine {
    /// `GET path` as plain JSON: for what runs while pilotlight idles
    /// (listing its containers, inspecting images), so that an idle
    /// pilotlight does not page in bollard's models for a field or two.
    pub(crate) async fn get_json(&self, path: &str) -> Result<serde_json::Value, String> {
        get_json(&self.socket, path).await
    }
}

/// Finds and connects the engine when a revision first needs it.
pub struct EngineConnector {
    /// `--container-engine`, when given.
    configured: Option<String>,
    /// The value of [`OWNER_LABEL`] for this pilotlight.
    owner: String,
    engine: tokio::sync::Mutex<Option<Arc<Engine>>>,
    /// A file written once an engine is connected: a later start with the
    /// same data folder knows that containers may be left over.
    marker: Option<PathBuf>,
}

impl EngineConnector {
    pub fn new(configured: Option<String>, owner: String) -> Self {
        EngineConnector {
            configured,
            owner,
            engine: tokio::sync::Mutex::new(None),
            marker: None,
        }
    }

    /// Writes `marker` on the first connection (see [`EngineConnector::used_before`]).
    pub(crate) fn with_marker(mut self, marker: PathBuf) -> Self {
        self.marker = Some(marker);
        self
    }

    /// Whether an engine was connected with this marker before: then
    /// containers of a killed run may be left over.
    pub(crate) fn used_before(&self) -> bool {
        self.marker.as_ref().is_some_and(|m| m.exists())
    }

    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    /// The engine, connecting (and removing leftovers) on first use. The
    /// error says which sockets were tried, what each answered, and how to
    /// start an engine.
    pub async fn engine(&self) -> Result<Arc<Engine>, String> {
        let mut engine = self.engine.lock().await;
        if let Some(engine) = &*engine {
            return Ok(engine.clone());
        }
        let connected = Arc::new(self.connect().await?);
        tracing::info!(engine = %connected.description, socket = %connected.socket.display(), "container engine connected");
        remove_owned(
            &connected,
            &self.owner,
            "removed containers left by an earlier run with this data folder",
        )
        .await;
        if let Some(marker) = &self.marker {
            let written = marker
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| {
                    std::fs::write(marker, connected.socket.to_string_lossy().as_bytes())
                });
            if let Err(e) = written {
                tracing::warn!(file = %marker.display(), error = %e, "cannot record that this data folder runs containers; after a kill -9, its containers are removed only once a revision needs the engine again");
            }
        }
        *engine = Some(connected.clone());
        Ok(connected)
    }

    /// Removes every container of this pilotlight, if an engine is
    /// connected.
    pub(crate) async fn remove_all(&self) {
        let engine = self.engine.lock().await.clone();
        if let Some(engine) = engine {
            remove_owned(
                &engine,
                &self.owner,
                "removed containers still running at exit",
            )
            .await;
        }
    }

    async fn connect(&self) -> Result<Engine, String> {
        let (candidates, origin) = self.candidates()?;
        let mut tried = Vec::with_capacity(candidates.len());
        for socket in candidates {
            match connect(&socket).await {
                Ok(engine) => return Ok(engine),
                Err(why) => tried.push(format!("{} ({why})", socket.display())),
            }
        }
        Err(format!(
            "no container engine answers: tried {origin} {}. Start one (dockerd, or `podman system service --time=0` for Podman) or point --container-engine (PILOTLIGHT_CONTAINER_ENGINE) at its socket; or run the revision as a local process: give its container a command and the annotation pilotlight.dev/runtime: process",
            tried.join(", ")
        ))
    }

    /// The sockets to try, and where they came from.
    fn candidates(&self) -> Result<(Vec<PathBuf>, &'static str), String> {
        if let Some(configured) = &self.configured {
            let socket = socket_path(configured).map_err(|e| format!("--container-engine: {e}"))?;
            return Ok((vec![socket], "--container-engine"));
        }
        if let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
            let socket = socket_path(&host).map_err(|e| format!("DOCKER_HOST: {e}"))?;
            return Ok((vec![socket], "DOCKER_HOST"));
        }
        let mut sockets = vec![
            PathBuf::from("/var/run/docker.sock"),
            PathBuf::from("/run/podman/podman.sock"),
        ];
        let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            // SAFETY: getuid has no preconditions and cannot fail.
            .unwrap_or_else(|| PathBuf::from(format!("/run/user/{}", unsafe { libc::getuid() })));
        sockets.push(runtime_dir.join("podman/podman.sock"));
        sockets.push(runtime_dir.join("docker.sock"));
        Ok((sockets, "the usual sockets"))
    }
}

/// `unix:///path`, `unix:/path` or a plain path. Only unix sockets: the
/// runtime publishes ports on 127.0.0.1, so the engine must be local.
pub(crate) fn socket_path(address: &str) -> Result<PathBuf, String> {
    if let Some(path) = address
        .strip_prefix("unix://")
        .or_else(|| address.strip_prefix("unix:"))
    {
        return Ok(PathBuf::from(path));
    }
    if address.starts_with('/') {
        return Ok(PathBuf::from(address));
    }
    Err(format!(
        "'{address}' is not a unix socket; give unix:///path/to/docker.sock (an engine on another host cannot publish ports on this one)"
    ))
}

/// Asks the socket for the engine's version and connects at the highest API
/// version both sides speak. bollard's own negotiation asks `/v1.53/version`,
/// which dockerd 20.10 refuses, so the version comes from the unversioned
/// `/version` here.
async fn connect(socket: &Path) -> Result<Engine, String> {
    if !socket.exists() {
        return Err("no such file".into());
    }
    let version = tokio::time::timeout(PROBE_TIMEOUT, get_json(socket, "/version"))
        .await
        .map_err(|_| format!("no answer within {PROBE_TIMEOUT:?}"))??;
    let api = parse_api_version(&version)?;
    let api = api.min(NEWEST_API);
    let client_version = bollard::ClientVersion {
        major_version: api.0,
        minor_version: api.1,
    };
    let path = socket.to_string_lossy();
    let docker = Docker::connect_with_unix(&path, REQUEST_TIMEOUT_SECS, &client_version)
        .map_err(|e| e.to_string())?;
    // Read as plain JSON: the engine's whole /info as bollard's types would
    // cost pilotlight's idle memory for one flag.
    let rootless = tokio::time::timeout(PROBE_TIMEOUT, get_json(socket, "/info"))
        .await
        .ok()
        .and_then(Result::ok)
        .is_some_and(|info| {
            info["SecurityOptions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o.as_str().is_some_and(|o| o.contains("rootless")))
        });
    Ok(Engine {
        docker,
        socket: socket.to_owned(),
        description: describe(&version, api),
        rootless,
    })
}

/// `GET path` with no API version prefix (every engine answers `/version`
/// so), as JSON.
async fn get_json(socket: &Path, path: &str) -> Result<serde_json::Value, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, "docker")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "{path} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{path} is not JSON ({e})"))
}

fn parse_api_version(version: &serde_json::Value) -> Result<(usize, usize), String> {
    let text = version["ApiVersion"]
        .as_str()
        .ok_or("/version has no ApiVersion")?;
    let parsed = text
        .split_once('.')
        .and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)));
    parsed.ok_or_else(|| format!("/version gives ApiVersion '{text}', not MAJOR.MINOR"))
}

/// The engine's name and version: Podman names its component "Podman
/// Engine", dockerd "Engine".
fn describe(version: &serde_json::Value, api: (usize, usize)) -> String {
    let components = version["Components"].as_array();
    let podman = components
        .into_iter()
        .flatten()
        .find(|c| c["Name"].as_str().is_some_and(|n| n.contains("Podman")));
    let (name, number) = match podman {
        Some(component) => ("Podman Engine", component["Version"].as_str()),
        None => ("Docker Engine", version["Version"].as_str()),
    };
    format!(
        "{name} {} (API {}.{})",
        number.unwrap_or("(unknown version)"),
        api.0,
        api.1
    )
}

/// Removes every container (running or not) labelled with this data folder,
/// and says so with `what` when there were any.
async fn remove_owned(engine: &Engine, owner: &str, what: &str) {
    let filters = serde_json::json!({"label": [format!("{OWNER_LABEL}={owner}")]}).to_string();
    let path = format!(
        "/containers/json?all=1&filters={}",
        percent_encoding::utf8_percent_encode(&filters, percent_encoding::NON_ALPHANUMERIC)
    );
    let leftovers = match engine.get_json(&path).await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this pilotlight's containers to remove them; they stay");
            return;
        }
    };
    let ids: Vec<&str> = leftovers
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["Id"].as_str())
        .collect();
    if ids.is_empty() {
        return;
    }
    let removals = ids.iter().map(|id| {
        engine.docker.remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
    });
    let results = futures::future::join_all(removals).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    tracing::info!(removed = results.len() - failed, failed, "{what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_are_unix_paths() {
        assert_eq!(
            socket_path("unix:///run/podman/podman.sock"),
            Ok(PathBuf::from("/run/podman/podman.sock"))
        );
        assert_eq!(
            socket_path("/var/run/docker.sock"),
            Ok(PathBuf::from("/var/run/docker.sock"))
        );
        let err = socket_path("tcp://10.0.0.1:2375").expect_err("tcp");
        assert!(err.contains("not a unix socket"), "{err}");
    }

    #[test]
    fn versions_and_names_are_read_from_version() {
        let docker = serde_json::json!({
            "Version": "20.10.24+dfsg1", "ApiVersion": "1.41",
            "Components": [{"Name": "Engine", "Version": "20.10.24+dfsg1"}],
        });
        assert_eq!(parse_api_version(&docker), Ok((1, 41)));
        assert_eq!(
            describe(&docker, (1, 41)),
            "Docker Engine 20.10.24+dfsg1 (API 1.41)"
        );
        let podman = serde_json::json!({
            "Version": "4.3.1", "ApiVersion": "1.41",
            "Components": [{"Name": "Podman Engine", "Version": "4.3.1"}],
        });
        assert_eq!(describe(&podman, (1, 41)), "Podman Engine 4.3.1 (API 1.41)");
        assert!(parse_api_version(&serde_json::json!({"ApiVersion": "new"})).is_err());
    }

    #[tokio::test]
    async fn a_missing_engine_names_every_socket_tried_and_how_to_start_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("docker.sock");
        let connector =
            EngineConnector::new(Some(format!("unix://{}", socket.display())), "owner".into());
        let err = connector.engine().await.err().expect("no engine");
        assert!(
            err.contains(&format!("{} (no such file)", socket.display())),
            "{err}"
        );
        assert!(err.contains("--container-engine"), "{err}");
        assert!(err.contains("pilotlight.dev/runtime: process"), "{err}");
        // Something that is not an engine answers on the socket.
        let _listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        drop(_listener);
        let err = connector.engine().await.err().expect("no engine");
        assert!(err.contains(&socket.display().to_string()), "{err}");
    }
}
