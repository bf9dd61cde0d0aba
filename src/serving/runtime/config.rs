//! The Secrets and ConfigMaps pilotlight has loaded, as the local runtimes
//! read them when an instance starts (as the kubelet does when it creates a
//! pod): environment values, `envFrom`, the files of `secret`, `configMap`
//! and `projected` volumes, and registry credentials.
//!
//! Values never reach a log or a status: `Debug` shows keys only, and errors
//! name the object and key, never the value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::api::ObjectKey;
use crate::api::pod::{
    ConfigKind, ContainerSpec, EnvValue, FileSource, KeyRef, PodSpec, VolumeSource, expand,
};

/// One Secret's or ConfigMap's entries.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct ConfigData {
    pub entries: BTreeMap<String, Vec<u8>>,
    /// A Secret's `type`, such as `kubernetes.io/dockerconfigjson`.
    pub secret_type: Option<String>,
}

impl fmt::Debug for ConfigData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigData")
            .field("keys", &self.entries.keys().collect::<Vec<_>>())
            .field("secret_type", &self.secret_type)
            .finish()
    }
}

/// Every loaded Secret and ConfigMap, by kind, namespace and name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ConfigObjects {
    objects: BTreeMap<(ConfigKind, ObjectKey), ConfigData>,
}

impl ConfigObjects {
    pub(crate) fn insert(&mut self, kind: ConfigKind, key: ObjectKey, data: ConfigData) {
        self.objects.insert((kind, key), data);
    }

    pub(crate) fn get(&self, kind: ConfigKind, namespace: &str, name: &str) -> Option<&ConfigData> {
        self.objects.get(&(kind, ObjectKey::new(namespace, name)))
    }

    /// The object; `None` when it is missing and `optional`; an error that
    /// names it when it is missing and required.
    fn lookup(
        &self,
        kind: ConfigKind,
        namespace: &str,
        name: &str,
        optional: bool,
    ) -> Result<Option<&ConfigData>, String> {
        match self.get(kind, namespace, name) {
            Some(data) => Ok(Some(data)),
            None if optional => Ok(None),
            None => Err(format!(
                "{} {namespace}/{name} does not exist: load it with the Service's manifests, or mark the reference optional",
                kind.name()
            )),
        }
    }

    /// One key's value; None when an optional reference is missing.
    fn value(&self, namespace: &str, key: &KeyRef) -> Result<Option<&[u8]>, String> {
        let Some(data) = self.lookup(key.kind, namespace, &key.name, key.optional)? else {
            return Ok(None);
        };
        match data.entries.get(&key.key) {
            Some(value) => Ok(Some(value)),
            None if key.optional => Ok(None),
            None => Err(format!(
                "{} {namespace}/{} has no key '{}'; its keys are {}",
                key.kind.name(),
                key.name,
                key.key,
                keys(data)
            )),
        }
    }
}

fn keys(data: &ConfigData) -> String {
    if data.entries.is_empty() {
        return "none".into();
    }
    data.entries
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A container's environment, as Kubernetes builds it: `envFrom` first, then
/// `env` in order (later entries win), each `env` value with `$(NAME)`
/// references to earlier variables expanded. Errors name the field, the
/// object and the key.
pub(crate) fn environment(
    container: &ContainerSpec,
    objects: &ConfigObjects,
    namespace: &str,
    instance: &str,
) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| match env
        .iter_mut()
        .find(|(n, _)| *n == name)
    {
        Some(existing) => existing.1 = value,
        None => env.push((name, value)),
    };
    for (i, from) in container.env_from.iter().enumerate() {
        let data = objects
            .lookup(from.kind, namespace, &from.name, from.optional)
            .map_err(|e| format!("{}.envFrom[{i}]: {e}", container.field))?;
        let Some(data) = data else {
            continue;
        };
        for (key, value) in &data.entries {
            set(&mut env, format!("{}{key}", from.prefix), text(value));
        }
    }
    for (i, var) in container.env.iter().enumerate() {
        let value = match &var.value {
            EnvValue::Literal(value) => {
                let known = |name: &str| {
                    env.iter()
                        .rev()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone())
                };
                expand(value, &known)
            }
            EnvValue::InstanceName => instance.to_owned(),
            EnvValue::Namespace => namespace.to_owned(),
            EnvValue::Key(key) => match objects.value(namespace, key) {
                Ok(Some(value)) => text(value),
                Ok(None) => continue,
                Err(error) => {
                    return Err(format!(
                        "{}.env[{i}] ({}): {error}",
                        container.field, var.name
                    ));
                }
            },
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// Checks, before any instance starts, that everything the pod reads from
/// Secrets and ConfigMaps is there: the environment of each container and
/// the files of each mounted volume. The error is what an instance would
/// fail with (Kubernetes' `CreateContainerConfigError`).
pub(crate) fn check(pod: &PodSpec, objects: &ConfigObjects, namespace: &str) -> Result<(), String> {
    for container in &pod.containers {
        environment(container, objects, namespace, "check")?;
    }
    let mounted = |name: &str| {
        pod.containers
            .iter()
            .any(|c| c.volume_mounts.iter().any(|m| m.name == name))
    };
    for (index, volume) in pod.volumes.iter().enumerate() {
        let VolumeSource::Files { sources, .. } = &volume.source else {
            continue;
        };
        if !mounted(&volume.name) {
            continue;
        }
        let field = format!("spec.template.spec.volumes[{index}]");
        for source in sources {
            let data = objects
                .lookup(source.kind, namespace, &source.name, source.optional)
                .map_err(|e| format!("{field}: {e}"))?;
            let Some(data) = data else {
                continue;
            };
            if let Some((key, _, _)) = source
                .items
                .iter()
                .find(|(key, _, _)| !source.optional && !data.entries.contains_key(key))
            {
                return Err(format!(
                    "{field}: {} {namespace}/{} has no key '{key}'; its keys are {}",
                    source.kind.name(),
                    source.name,
                    keys(data)
                ));
            }
        }
    }
    Ok(())
}

/// `command` and `args` with `$(NAME)` expanded from the environment.
pub(crate) fn command_line(
    container: &ContainerSpec,
    env: &[(String, String)],
) -> (Vec<String>, Vec<String>) {
    let known = |name: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let expand_all = |items: &[String]| items.iter().map(|i| expand(i, &known)).collect();
    (expand_all(&container.command), expand_all(&container.args))
}

/// Environment values are text; bytes that are not UTF-8 are replaced.
fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

/// Writes a files volume into `dir` (which exists and is empty): each key
/// as a file named by its `items` path, or by the key, with its mode.
pub(crate) fn write_files(
    dir: &Path,
    field: &str,
    sources: &[FileSource],
    default_mode: u32,
    objects: &ConfigObjects,
    namespace: &str,
) -> Result<(), String> {
    for source in sources {
        let data = objects
            .lookup(source.kind, namespace, &source.name, source.optional)
            .map_err(|e| format!("{field}: {e}"))?;
        let Some(data) = data else {
            continue;
        };
        let files: Vec<(&str, &str, Option<u32>)> = if source.items.is_empty() {
            data.entries
                .keys()
                .map(|k| (k.as_str(), k.as_str(), None))
                .collect()
        } else {
            source
                .items
                .iter()
                .map(|(key, path, mode)| (key.as_str(), path.as_str(), *mode))
                .collect()
        };
        for (key, path, mode) in files {
            let Some(value) = data.entries.get(key) else {
                if source.optional {
                    continue;
                }
                return Err(format!(
                    "{field}: {} {namespace}/{} has no key '{key}'; its keys are {}",
                    source.kind.name(),
                    source.name,
                    keys(data)
                ));
            };
            write_file(&dir.join(path), value, mode.unwrap_or(default_mode))
                .map_err(|e| format!("{field}: cannot write the file {path}: {e}"))?;
        }
    }
    Ok(())
}

fn write_file(path: &Path, value: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, value)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Registry credentials from `imagePullSecrets`: Secrets of type
/// `kubernetes.io/dockerconfigjson` (key `.dockerconfigjson`) or
/// `kubernetes.io/dockercfg` (key `.dockercfg`), in order. Returns the
/// first entry for `registry`.
pub(crate) fn registry_credentials(
    secrets: &[String],
    objects: &ConfigObjects,
    namespace: &str,
    registry: &str,
) -> Result<Option<RegistryAuth>, String> {
    for name in secrets {
        let Some(secret) = objects.get(ConfigKind::Secret, namespace, name) else {
            // The kubelet goes on without a missing pull secret; so do we,
            // with a word in the log.
            tracing::warn!(secret = %format!("{namespace}/{name}"), "imagePullSecrets names a Secret that is not loaded; pulling without it");
            continue;
        };
        let auths = docker_config(secret)
            .map_err(|e| format!("imagePullSecrets: Secret {namespace}/{name}: {e}"))?;
        if let Some(auth) = auths
            .into_iter()
            .find(|(server, _)| same_registry(server, registry))
        {
            return Ok(Some(auth.1));
        }
    }
    Ok(None)
}

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RegistryAuth {
    pub username: Option<String>,
    pub password: Option<String>,
    /// `base64(user:password)`, as Docker's config files keep it.
    pub auth: Option<String>,
    pub identity_token: Option<String>,
    pub server: String,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

fn docker_config(secret: &ConfigData) -> Result<Vec<(String, RegistryAuth)>, String> {
    let (key, nested) = match secret.secret_type.as_deref() {
        Some("kubernetes.io/dockerconfigjson") => (".dockerconfigjson", true),
        Some("kubernetes.io/dockercfg") => (".dockercfg", false),
        other => {
            return Err(format!(
                "has type {}, not kubernetes.io/dockerconfigjson",
                other.unwrap_or("Opaque")
            ));
        }
    };
    let raw = secret
        .entries
        .get(key)
        .ok_or_else(|| format!("has no key '{key}'"))?;
    let json: serde_json::Value =
        serde_json::from_slice(raw).map_err(|e| format!("'{key}' is not JSON ({e})"))?;
    let auths = if nested { &json["auths"] } else { &json };
    let auths = auths
        .as_object()
        .ok_or_else(|| format!("'{key}' has no map of registries"))?;
    let field = |entry: &serde_json::Value, name: &str| {
        entry[name]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    Ok(auths
        .iter()
        .map(|(server, entry)| {
            (
                server.clone(),
                RegistryAuth {
                    username: field(entry, "username"),
                    password: field(entry, "password"),
                    auth: field(entry, "auth"),
                    identity_token: field(entry, "identitytoken"),
                    server: server.clone(),
                },
            )
        })
        .collect())
}

/// Whether a config file's server key (`https://index.docker.io/v1/`,
/// `ghcr.io`, `localhost:5000`) is `registry` (a reference's domain).
fn same_registry(server: &str, registry: &str) -> bool {
    let host = server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    let docker_hub =
        |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    host == registry || (docker_hub(host) && docker_hub(registry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pod::{EnvFrom, EnvVar};

    fn objects() -> ConfigObjects {
        let mut objects = ConfigObjects::default();
        let data = |pairs: &[(&str, &str)]| ConfigData {
            entries: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect(),
            secret_type: None,
        };
        objects.insert(
            ConfigKind::Secret,
            ObjectKey::new("shop", "creds"),
            data(&[("token", "s3cret"), ("user", "alice")]),
        );
        objects.insert(
            ConfigKind::ConfigMap,
            ObjectKey::new("shop", "settings"),
            data(&[("MODE", "fast"), ("LEVEL", "2")]),
        );
        objects
    }

    fn key(kind: ConfigKind, name: &str, key: &str, optional: bool) -> EnvValue {
        EnvValue::Key(KeyRef {
            kind,
            name: name.into(),
            key: key.into(),
            optional,
        })
    }

    fn container(env: Vec<(&str, EnvValue)>, env_from: Vec<EnvFrom>) -> ContainerSpec {
        ContainerSpec {
            field: "spec.template.spec.containers[0]".into(),
            env: env
                .into_iter()
                .map(|(name, value)| EnvVar {
                    name: name.into(),
                    value,
                })
                .collect(),
            env_from,
            ..ContainerSpec::default()
        }
    }

    #[test]
    fn env_from_comes_first_and_env_wins_and_expands() {
        let c = container(
            vec![
                ("MODE", EnvValue::Literal("slow".into())),
                ("TOKEN", key(ConfigKind::Secret, "creds", "token", false)),
                (
                    "URL",
                    EnvValue::Literal("https://$(CFG_user)@host/$(MODE)".into()),
                ),
                ("ME", EnvValue::InstanceName),
                ("GONE", key(ConfigKind::Secret, "nope", "x", true)),
            ],
            vec![
                EnvFrom {
                    kind: ConfigKind::ConfigMap,
                    name: "settings".into(),
                    prefix: String::new(),
                    optional: false,
                },
                EnvFrom {
                    kind: ConfigKind::Secret,
                    name: "creds".into(),
                    prefix: "CFG_".into(),
                    optional: false,
                },
            ],
        );
        let env = environment(&c, &objects(), "shop", "app-00001-1").expect("resolves");
        let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("MODE"), Some("slow"), "env wins over envFrom");
        assert_eq!(get("LEVEL"), Some("2"));
        assert_eq!(get("TOKEN"), Some("s3cret"));
        assert_eq!(get("URL"), Some("https://alice@host/slow"));
        assert_eq!(get("ME"), Some("app-00001-1"));
        assert_eq!(get("GONE"), None, "optional and missing: no variable");
    }

    #[test]
    fn a_missing_key_names_the_object_and_key_but_no_value() {
        let c = container(
            vec![("T", key(ConfigKind::Secret, "creds", "tokn", false))],
            vec![],
        );
        let err = environment(&c, &objects(), "shop", "i").expect_err("missing key");
        assert!(
            err.starts_with(
                "spec.template.spec.containers[0].env[0] (T): Secret shop/creds has no key 'tokn'"
            ),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
        let c = container(
            vec![("T", key(ConfigKind::ConfigMap, "other", "k", false))],
            vec![],
        );
        let err = environment(&c, &objects(), "shop", "i").expect_err("missing object");
        assert!(err.contains("ConfigMap shop/other does not exist"), "{err}");
    }

    #[test]
    fn files_are_written_with_their_modes() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let sources = [FileSource {
            kind: ConfigKind::Secret,
            name: "creds".into(),
            items: vec![("token".into(), "nested/t.txt".into(), Some(0o400))],
            optional: false,
        }];
        write_files(
            dir.path(),
            "volumes[0]",
            &sources,
            0o644,
            &objects(),
            "shop",
        )
        .expect("writes");
        let path = dir.path().join("nested/t.txt");
        assert_eq!(std::fs::read_to_string(&path).expect("file"), "s3cret");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        let all = [FileSource {
            kind: ConfigKind::ConfigMap,
            name: "settings".into(),
            items: vec![],
            optional: false,
        }];
        write_files(dir.path(), "volumes[1]", &all, 0o644, &objects(), "shop").expect("writes");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("MODE")).expect("file"),
            "fast"
        );
    }

    #[test]
    fn registry_credentials_come_from_docker_config_secrets() {
        let mut objects = objects();
        objects.insert(
            ConfigKind::Secret,
            ObjectKey::new("shop", "pull"),
            ConfigData {
                entries: [(
                    ".dockerconfigjson".to_owned(),
                    br#"{"auths":{"https://index.docker.io/v1/":{"auth":"YTpi"},"ghcr.io":{"username":"u","password":"hunter2"}}}"#.to_vec(),
                )]
                .into(),
                secret_type: Some("kubernetes.io/dockerconfigjson".into()),
            },
        );
        let secrets = ["missing".to_owned(), "pull".to_owned()];
        let hub = registry_credentials(&secrets, &objects, "shop", "docker.io")
            .expect("reads")
            .expect("found");
        assert_eq!(hub.auth.as_deref(), Some("YTpi"));
        let ghcr = registry_credentials(&secrets, &objects, "shop", "ghcr.io")
            .expect("reads")
            .expect("found");
        assert_eq!(ghcr.username.as_deref(), Some("u"));
        assert!(
            !format!("{ghcr:?}").contains("hunter2"),
            "no password in Debug"
        );
        assert_eq!(
            registry_credentials(&secrets, &objects, "shop", "quay.io").expect("reads"),
            None
        );
        let wrong = ["creds".to_owned()];
        let err =
            registry_credentials(&wrong, &objects, "shop", "ghcr.io").expect_err("wrong type");
        assert!(
            err.contains("Secret shop/creds") && err.contains("dockerconfigjson"),
            "{err}"
        );
    }
}
