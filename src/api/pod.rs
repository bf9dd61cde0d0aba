//! A revision's pod as the local runtimes (processes and containers) run it:
//! Knative's defaults applied (container names, port 8080, the serving
//! container, Kubernetes' image pull policy), and each field reduced to what
//! a runtime on one machine needs.
//!
//! Two steps, because Kubernetes mode needs only the first:
//! - [`check`] holds Knative's rules that any runtime needs (one serving
//!   port across the containers, unique names, mounts that name a volume,
//!   probes that name a port). `Service::validate` runs it at load.
//! - [`PodSpec::from_template`] converts for the local runtimes and refuses,
//!   naming the field, what cannot run on one machine (a `hostPath` volume,
//!   a `fieldRef` to the node's IP). The revision's status shows that error.
//!
//! Values in Secrets and ConfigMaps stay references ([`EnvValue`],
//! [`FileSource`]): a runtime reads them when an instance starts, as the
//! kubelet does when it creates a pod, so a new instance sees a changed
//! Secret.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::Invalid;
use super::quantity::{Unit, parse_quantity};
use super::service::{Container, Probe as ProbeSpec, RevisionTemplate};

/// Knative's default `containerPort`.
pub(crate) const DEFAULT_PORT: u16 = 8080;
/// Knative's name for the only container, and the stem of its default names
/// for several (`user-container-0`, `user-container-1`, ...).
pub(crate) const DEFAULT_CONTAINER_NAME: &str = "user-container";
/// The template annotation that picks the local runtime.
pub(crate) const RUNTIME_ANNOTATION: &str = "pilotlight.dev/runtime";
/// The template annotation that picks the container network.
pub(crate) const NETWORK_ANNOTATION: &str = "pilotlight.dev/container-network";

/// Where a revision runs on one machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalRuntime {
    /// Each container's `command` as a child process.
    Process,
    /// Each container's `image` in a Docker or Podman engine.
    Container,
}

impl LocalRuntime {
    /// The runtime rule for a template, before it is converted: see
    /// [`PodSpec::local_runtime`].
    pub(crate) fn of(template: &RevisionTemplate) -> Result<LocalRuntime, Invalid> {
        match runtime_annotation(template)? {
            Some(runtime) => Ok(runtime),
            None => Ok(LocalRuntime::by_images(
                template.spec.containers.iter().map(|c| c.image.as_deref()),
            )),
        }
    }

    fn by_images<'a>(mut images: impl Iterator<Item = Option<&'a str>>) -> LocalRuntime {
        if images.any(|image| image.is_some_and(|i| !i.is_empty())) {
            LocalRuntime::Container
        } else {
            LocalRuntime::Process
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            LocalRuntime::Process => "process",
            LocalRuntime::Container => "container",
        }
    }
}

/// How a container instance is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContainerNetwork {
    /// The engine's bridge network, the serving port published on a free
    /// 127.0.0.1 port (as `docker run -p 127.0.0.1::8080`).
    #[default]
    Bridge,
    /// The host's network: `PORT` is a free port of the host, and the
    /// engine makes no network namespace (faster to start).
    Host,
}

impl ContainerNetwork {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "bridge" => Some(ContainerNetwork::Bridge),
            "host" => Some(ContainerNetwork::Host),
            _ => None,
        }
    }
}

/// A revision's pod, ready for a local runtime.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodSpec {
    /// Every container; the one at [`PodSpec::serving`] receives requests,
    /// the others are sidecars started and stopped with it.
    pub containers: Vec<ContainerSpec>,
    pub serving: usize,
    pub volumes: Vec<VolumeSpec>,
    /// `imagePullSecrets`: names of Secrets of type
    /// `kubernetes.io/dockerconfigjson` in the revision's namespace.
    pub image_pull_secrets: Vec<String>,
    /// `pilotlight.dev/runtime`, when the template sets it.
    pub runtime: Option<LocalRuntime>,
    /// `pilotlight.dev/container-network`, when the template sets it.
    pub network: Option<ContainerNetwork>,
    /// `serviceAccountName`, for `fieldRef: spec.serviceAccountName`.
    pub service_account: String,
}

impl PodSpec {
    /// The container that receives requests.
    pub(crate) fn serving_container(&self) -> &ContainerSpec {
        &self.containers[self.serving]
    }

    /// The runtime rule: the annotation if set; else the container runtime
    /// when any container names an image, else processes.
    pub fn local_runtime(&self) -> LocalRuntime {
        self.runtime.unwrap_or_else(|| {
            LocalRuntime::by_images(self.containers.iter().map(|c| c.image.as_deref()))
        })
    }

    /// Converts a checked template; see the module doc.
    pub fn from_template(template: &RevisionTemplate) -> Result<PodSpec, Invalid> {
        check(template)?;
        let spec = &template.spec;
        let serving = serving_index(&spec.containers);
        let names = container_names(&spec.containers);
        let pod_security = spec.security_context.as_ref();
        let containers = spec
            .containers
            .iter()
            .enumerate()
            .map(|(i, container)| {
                ContainerSpec::convert(
                    i,
                    container,
                    names[i].clone(),
                    i == serving,
                    pod_security,
                    template,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let volumes = spec
            .volumes
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, v)| VolumeSpec::convert(i, v))
            .collect::<Result<Vec<_>, _>>()?;
        let annotations = &template.metadata.annotations;
        let runtime = runtime_annotation(template)?;
        let network = match annotations.get(NETWORK_ANNOTATION) {
            None => None,
            Some(text) => Some(
                ContainerNetwork::parse(text)
                    .ok_or_else(|| annotation_error(NETWORK_ANNOTATION, text, "bridge or host"))?,
            ),
        };
        Ok(PodSpec {
            containers,
            serving,
            volumes,
            image_pull_secrets: spec
                .image_pull_secrets
                .iter()
                .flatten()
                .map(|r| r.name.clone())
                .collect(),
            runtime,
            network,
            service_account: spec.service_account_name.clone().unwrap_or_default(),
        })
    }
}

/// `pilotlight.dev/runtime`, checked.
fn runtime_annotation(template: &RevisionTemplate) -> Result<Option<LocalRuntime>, Invalid> {
    match template
        .metadata
        .annotations
        .get(RUNTIME_ANNOTATION)
        .map(String::as_str)
    {
        None => Ok(None),
        Some("process") => Ok(Some(LocalRuntime::Process)),
        Some("container") => Ok(Some(LocalRuntime::Container)),
        Some(other) => Err(annotation_error(
            RUNTIME_ANNOTATION,
            other,
            "process or container",
        )),
    }
}

fn annotation_error(key: &str, value: &str, allowed: &str) -> Invalid {
    Invalid::new(
        format!("spec.template.metadata.annotations[\"{key}\"]"),
        format!("'{value}' is not one of {allowed}"),
    )
}

/// One container, for a local runtime.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerSpec {
    /// `name`, or Knative's default.
    pub name: String,
    /// Where it is in the Service, for messages:
    /// `spec.template.spec.containers[1]`.
    pub field: String,
    pub image: Option<String>,
    pub pull_policy: PullPolicy,
    /// `command` (the image's entrypoint when it has an image), then `args`.
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// In order; later entries win, and `$(NAME)` refers to earlier ones.
    pub env: Vec<EnvVar>,
    pub env_from: Vec<EnvFrom>,
    pub working_dir: Option<PathBuf>,
    /// The serving container's `ports[0].containerPort` (8080 unless set);
    /// None for sidecars.
    pub port: Option<u16>,
    /// The serving container's readiness (a TCP connect to its port unless
    /// set); a sidecar's only when it declares one.
    pub readiness: Option<Probe>,
    pub volume_mounts: Vec<VolumeMount>,
    pub resources: Resources,
    pub security: Security,
}

impl ContainerSpec {
    fn convert(
        index: usize,
        container: &Container,
        name: String,
        serving: bool,
        pod_security: Option<&k8s::PodSecurityContext>,
        template: &RevisionTemplate,
    ) -> Result<ContainerSpec, Invalid> {
        let field = container_field(index);
        let resources = Resources::convert(&field, container.resources.as_ref())?;
        let env = container
            .env
            .iter()
            .enumerate()
            .map(|(i, var)| {
                let at = format!("{field}.env[{i}]");
                let value = EnvValue::convert(&at, var, &resources, template)?;
                Ok(EnvVar {
                    name: var.name.clone(),
                    value,
                })
            })
            .collect::<Result<Vec<_>, Invalid>>()?;
        let env_from = container
            .env_from
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, source)| EnvFrom::convert(&format!("{field}.envFrom[{i}]"), source))
            .collect::<Result<Vec<_>, _>>()?;
        let port = serving.then(|| {
            container
                .ports
                .first()
                .map_or(DEFAULT_PORT, |p| p.container_port)
        });
        let readiness = match (&container.readiness_probe, serving) {
            (Some(probe), _) => Some(probe_of(&field, container, probe)?),
            (None, true) => Some(Probe::TcpDefault),
            (None, false) => None,
        };
        Ok(ContainerSpec {
            pull_policy: PullPolicy::convert(&field, container)?,
            image: container.image.clone().filter(|i| !i.is_empty()),
            command: container.command.clone(),
            args: container.args.clone(),
            env,
            env_from,
            working_dir: container.working_dir.as_ref().map(Into::into),
            port,
            readiness,
            volume_mounts: container
                .volume_mounts
                .iter()
                .flatten()
                .map(VolumeMount::convert)
                .collect(),
            resources,
            security: Security::convert(container.security_context.as_ref(), pod_security),
            name,
            field,
        })
    }
}

fn container_field(index: usize) -> String {
    format!("spec.template.spec.containers[{index}]")
}

/// `imagePullPolicy`, with Kubernetes' default: `Always` for `:latest` or
/// no tag (and no digest), else `IfNotPresent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    fn convert(field: &str, container: &Container) -> Result<PullPolicy, Invalid> {
        match container.image_pull_policy.as_deref() {
            Some("Always") => Ok(PullPolicy::Always),
            Some("IfNotPresent") => Ok(PullPolicy::IfNotPresent),
            Some("Never") => Ok(PullPolicy::Never),
            Some(other) => Err(Invalid::new(
                format!("{field}.imagePullPolicy"),
                format!("'{other}' is not one of Always, IfNotPresent, Never"),
            )),
            None => Ok(PullPolicy::default_for(
                container.image.as_deref().unwrap_or_default(),
            )),
        }
    }

    /// Kubernetes' default for an image reference.
    pub(crate) fn default_for(image: &str) -> PullPolicy {
        if image.contains('@') {
            return PullPolicy::IfNotPresent;
        }
        // The tag follows the last ':' after the last '/', so that a
        // registry's port (`localhost:5000/app`) is not taken for a tag.
        let last = image.rsplit('/').next().unwrap_or(image);
        match last.split_once(':') {
            Some((_, "latest")) | None => PullPolicy::Always,
            Some(_) => PullPolicy::IfNotPresent,
        }
    }
}

/// One environment variable.
#[derive(Clone, PartialEq)]
pub struct EnvVar {
    pub name: String,
    pub value: EnvValue,
}

/// Values are left out: they may come from a Secret, or be one.
impl fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvVar")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum EnvValue {
    /// `value` (may refer to earlier variables as `$(NAME)`), or a
    /// `fieldRef`/`resourceFieldRef` known before the instance starts.
    Literal(String),
    /// `valueFrom.secretKeyRef` or `valueFrom.configMapKeyRef`.
    Key(KeyRef),
    /// `valueFrom.fieldRef: metadata.name`: the instance's name.
    InstanceName,
    /// `valueFrom.fieldRef: metadata.namespace`: the Service's namespace.
    Namespace,
}

impl EnvValue {
    fn convert(
        at: &str,
        var: &super::service::EnvVar,
        resources: &Resources,
        template: &RevisionTemplate,
    ) -> Result<EnvValue, Invalid> {
        let Some(source) = &var.value_from else {
            return Ok(EnvValue::Literal(var.value.clone().unwrap_or_default()));
        };
        let at = format!("{at}.valueFrom");
        match (
            &source.secret_key_ref,
            &source.config_map_key_ref,
            &source.field_ref,
            &source.resource_field_ref,
        ) {
            (Some(secret), None, None, None) => Ok(EnvValue::Key(KeyRef {
                kind: ConfigKind::Secret,
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: secret.optional.unwrap_or(false),
            })),
            (None, Some(map), None, None) => Ok(EnvValue::Key(KeyRef {
                kind: ConfigKind::ConfigMap,
                name: map.name.clone(),
                key: map.key.clone(),
                optional: map.optional.unwrap_or(false),
            })),
            (None, None, Some(field), None) => field_value(
                &format!("{at}.fieldRef.fieldPath"),
                &field.field_path,
                template,
            ),
            (None, None, None, Some(resource)) => Ok(EnvValue::Literal(
                resources.field_value(&format!("{at}.resourceFieldRef"), resource)?,
            )),
            _ if source.file_key_ref.is_some() => Err(Invalid::new(
                format!("{at}.fileKeyRef"),
                "is not supported by the local runtimes",
            )),
            _ => Err(Invalid::new(
                at,
                "set exactly one of secretKeyRef, configMapKeyRef, fieldRef and resourceFieldRef",
            )),
        }
    }
}

/// `fieldRef` paths that mean something on one machine.
fn field_value(at: &str, path: &str, template: &RevisionTemplate) -> Result<EnvValue, Invalid> {
    let metadata = &template.metadata;
    let subscript = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix("['"))
            .and_then(|rest| rest.strip_suffix("']"))
    };
    let value = match path {
        "metadata.name" => return Ok(EnvValue::InstanceName),
        "metadata.namespace" => return Ok(EnvValue::Namespace),
        "spec.serviceAccountName" => template
            .spec
            .service_account_name
            .clone()
            .unwrap_or_default(),
        "spec.nodeName" => hostname(),
        "status.hostIP" | "status.hostIPs" => "127.0.0.1".to_owned(),
        _ => {
            if let Some(key) = subscript("metadata.labels") {
                metadata.labels.get(key).cloned().unwrap_or_default()
            } else if let Some(key) = subscript("metadata.annotations") {
                metadata.annotations.get(key).cloned().unwrap_or_default()
            } else {
                return Err(Invalid::new(
                    at,
                    format!(
                        "'{path}' is not available on one machine; use metadata.name, metadata.namespace, metadata.labels['…'], metadata.annotations['…'], spec.serviceAccountName, spec.nodeName or status.hostIP"
                    ),
                ));
            }
        }
    };
    Ok(EnvValue::Literal(value))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// A Secret or a ConfigMap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConfigKind {
    Secret,
    ConfigMap,
}

impl ConfigKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ConfigKind::Secret => "Secret",
            ConfigKind::ConfigMap => "ConfigMap",
        }
    }
}

/// One key of a Secret or ConfigMap in the revision's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    pub kind: ConfigKind,
    pub name: String,
    pub key: String,
    /// A missing object or key is then no value instead of an error.
    pub optional: bool,
}

/// `envFrom`: every key of a Secret or ConfigMap, as variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFrom {
    pub kind: ConfigKind,
    pub name: String,
    pub prefix: String,
    pub optional: bool,
}

impl EnvFrom {
    fn convert(at: &str, source: &k8s::EnvFromSource) -> Result<EnvFrom, Invalid> {
        let prefix = source.prefix.clone().unwrap_or_default();
        match (&source.secret_ref, &source.config_map_ref) {
            (Some(secret), None) => Ok(EnvFrom {
                kind: ConfigKind::Secret,
                name: secret.name.clone(),
                prefix,
                optional: secret.optional.unwrap_or(false),
            }),
            (None, Some(map)) => Ok(EnvFrom {
                kind: ConfigKind::ConfigMap,
                name: map.name.clone(),
                prefix,
                optional: map.optional.unwrap_or(false),
            }),
            _ => Err(Invalid::new(
                at,
                "set exactly one of secretRef and configMapRef",
            )),
        }
    }
}

/// How a runtime decides an instance is ready.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Probe {
    /// Ready once a TCP connection to the port succeeds (Knative's default).
    #[default]
    TcpDefault,
    /// `readinessProbe.tcpSocket`; `port` None means the serving port.
    Tcp { port: Option<u16> },
    /// `readinessProbe.httpGet`: ready on a 2xx or 3xx answer.
    Http {
        path: String,
        port: Option<u16>,
        headers: Vec<(String, String)>,
    },
}

impl Probe {
    /// The port probed, None for the serving port.
    pub fn port(&self) -> Option<u16> {
        match self {
            Probe::TcpDefault => None,
            Probe::Tcp { port } | Probe::Http { port, .. } => *port,
        }
    }
}

/// The readiness probe as a runtime runs it; checks ports and the action.
fn probe_of(field: &str, container: &Container, probe: &ProbeSpec) -> Result<Probe, Invalid> {
    let field = format!("{field}.readinessProbe");
    let port = |value: &Option<serde_json::Value>, at: &str| -> Result<Option<u16>, Invalid> {
        match value {
            None => Ok(None),
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
                .map(Some)
                .ok_or_else(|| Invalid::new(at, format!("{n} is not a port number"))),
            Some(serde_json::Value::String(name)) => container
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| Some(p.container_port))
                .ok_or_else(|| Invalid::new(at, format!("no entry of ports is named '{name}'"))),
            Some(other) => Err(Invalid::new(
                at,
                format!("{other} is not a port number or name"),
            )),
        }
    };
    // A probe naming the container's own port means the serving port,
    // which a runtime may map elsewhere (a process gets a free PORT).
    let container_port = container.ports.first().map(|p| p.container_port);
    let own = |p: Option<u16>| p.filter(|p| Some(*p) != container_port);
    match (&probe.http_get, &probe.tcp_socket, &probe.exec, &probe.grpc) {
        (Some(http), None, None, None) => {
            if http
                .scheme
                .as_deref()
                .is_some_and(|s| !s.eq_ignore_ascii_case("http"))
            {
                return Err(Invalid::new(
                    format!("{field}.httpGet.scheme"),
                    "only HTTP is supported",
                ));
            }
            Ok(Probe::Http {
                path: http.path.clone().unwrap_or_else(|| "/".into()),
                port: own(port(&http.port, &format!("{field}.httpGet.port"))?),
                headers: http
                    .http_headers
                    .iter()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            })
        }
        (None, Some(tcp), None, None) => Ok(Probe::Tcp {
            port: own(port(&tcp.port, &format!("{field}.tcpSocket.port"))?),
        }),
        (None, None, None, None) => Ok(Probe::TcpDefault),
        (None, None, Some(_), None) | (None, None, None, Some(_)) => Err(Invalid::new(
            field,
            "exec and grpc probes are not supported; use httpGet or tcpSocket",
        )),
        _ => Err(Invalid::new(field, "set only one of httpGet and tcpSocket")),
    }
}

/// `resources`, reduced to CPU and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    /// `limits.cpu` in thousandths of a core.
    pub cpu_limit_millis: Option<u64>,
    /// `limits.memory` in bytes.
    pub memory_limit: Option<u64>,
    /// `requests.cpu` in thousandths of a core.
    pub cpu_request_millis: Option<u64>,
    /// `requests.memory` in bytes.
    pub memory_request: Option<u64>,
}

impl Resources {
    fn convert(
        field: &str,
        resources: Option<&k8s::ResourceRequirements>,
    ) -> Result<Self, Invalid> {
        let Some(resources) = resources else {
            return Ok(Resources::default());
        };
        let get =
            |which: &str, map: &Option<BTreeMap<String, Quantity>>, name: &str, unit: Unit| {
                map.as_ref()
                    .and_then(|m| m.get(name))
                    .map(|q| {
                        parse_quantity(&q.0, unit).map_err(|reason| {
                            Invalid::new(format!("{field}.resources.{which}.{name}"), reason)
                        })
                    })
                    .transpose()
            };
        Ok(Resources {
            cpu_limit_millis: get("limits", &resources.limits, "cpu", Unit::Millis)?,
            memory_limit: get("limits", &resources.limits, "memory", Unit::One)?,
            cpu_request_millis: get("requests", &resources.requests, "cpu", Unit::Millis)?,
            memory_request: get("requests", &resources.requests, "memory", Unit::One)?,
        })
    }

    /// A `resourceFieldRef` value, as the kubelet computes it: the amount
    /// divided by the divisor, rounded up.
    fn field_value(
        &self,
        at: &str,
        selector: &k8s::ResourceFieldSelector,
    ) -> Result<String, Invalid> {
        let (amount, unit) = match selector.resource.as_str() {
            "limits.cpu" => (self.cpu_limit_millis, Unit::Millis),
            "requests.cpu" => (self.cpu_request_millis, Unit::Millis),
            "limits.memory" => (self.memory_limit, Unit::One),
            "requests.memory" => (self.memory_request, Unit::One),
            other => {
                return Err(Invalid::new(
                    format!("{at}.resource"),
                    format!(
                        "'{other}' is not one of limits.cpu, requests.cpu, limits.memory, requests.memory"
                    ),
                ));
            }
        };
        let divisor = match &selector.divisor {
            Some(q) => parse_quantity(&q.0, unit)
                .map_err(|reason| Invalid::new(format!("{at}.divisor"), reason))?,
            None => match unit {
                Unit::Millis => 1000,
                Unit::One => 1,
            },
        };
        if divisor == 0 {
            return Err(Invalid::new(format!("{at}.divisor"), "must not be zero"));
        }
        // Unset: the node's capacity in Kubernetes; here what one machine has.
        let amount = amount.unwrap_or(match unit {
            Unit::Millis => 1000 * available_cpus(),
            Unit::One => total_memory(),
        });
        Ok(amount.div_ceil(divisor).to_string())
    }
}

fn available_cpus() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

/// `securityContext`, the container's over the pod's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Security {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: bool,
    pub read_only_root_filesystem: bool,
    /// `allowPrivilegeEscalation: false` sets `no-new-privileges`.
    pub no_new_privileges: bool,
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
}

impl Security {
    fn convert(
        container: Option<&k8s::SecurityContext>,
        pod: Option<&k8s::PodSecurityContext>,
    ) -> Security {
        let capabilities = container.and_then(|c| c.capabilities.as_ref());
        Security {
            run_as_user: container
                .and_then(|c| c.run_as_user)
                .or_else(|| pod.and_then(|p| p.run_as_user)),
            run_as_group: container
                .and_then(|c| c.run_as_group)
                .or_else(|| pod.and_then(|p| p.run_as_group)),
            run_as_non_root: container
                .and_then(|c| c.run_as_non_root)
                .or_else(|| pod.and_then(|p| p.run_as_non_root))
                .unwrap_or(false),
            read_only_root_filesystem: container
                .and_then(|c| c.read_only_root_filesystem)
                .unwrap_or(false),
            no_new_privileges: container.and_then(|c| c.allow_privilege_escalation) == Some(false),
            capabilities_add: capabilities.and_then(|c| c.add.clone()).unwrap_or_default(),
            capabilities_drop: capabilities
                .and_then(|c| c.drop.clone())
                .unwrap_or_default(),
        }
    }
}

/// One entry of `spec.template.spec.volumes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub name: String,
    pub source: VolumeSource,
}

/// The volume kinds the local runtimes provide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// `secret`, `configMap` or `projected`: files written from keys, read
    /// only.
    Files {
        sources: Vec<FileSource>,
        /// Permission bits of files without their own `mode`.
        default_mode: u32,
    },
    /// `emptyDir`: a folder shared by the instance's containers, gone with
    /// the instance; in memory (tmpfs) for `medium: Memory`.
    EmptyDir { memory: bool },
    /// `persistentVolumeClaim`: a named volume of the engine
    /// (`pilotlight-<namespace>-<claim>`), kept across instances.
    Claim { claim: String, read_only: bool },
}

/// The keys of one Secret or ConfigMap, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSource {
    pub kind: ConfigKind,
    pub name: String,
    /// `items`: (key, relative path, mode); empty means every key, each as
    /// a file named after it.
    pub items: Vec<(String, String, Option<u32>)>,
    pub optional: bool,
}

/// Kubernetes' `defaultMode` (0644).
const DEFAULT_FILE_MODE: u32 = 0o644;

impl VolumeSpec {
    fn convert(index: usize, volume: &k8s::Volume) -> Result<VolumeSpec, Invalid> {
        let field = format!("spec.template.spec.volumes[{index}]");
        let mode = |m: Option<i32>, at: &str| -> Result<u32, Invalid> {
            match m {
                None => Ok(DEFAULT_FILE_MODE),
                Some(m) => u32::try_from(m)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| {
                        Invalid::new(
                            format!("{field}.{at}"),
                            format!("{m} is not a file mode (0 to 0777)"),
                        )
                    }),
            }
        };
        let items = |items: &Option<Vec<k8s::KeyToPath>>,
                     at: &str|
         -> Result<Vec<(String, String, Option<u32>)>, Invalid> {
            items
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, item)| {
                    let item_at = format!("{field}.{at}.items[{i}]");
                    check_relative_path(&format!("{item_at}.path"), &item.path)?;
                    let mode = item
                        .mode
                        .map(|m| mode(Some(m), &format!("{at}.items[{i}].mode")))
                        .transpose()?;
                    Ok((item.key.clone(), item.path.clone(), mode))
                })
                .collect()
        };
        let source = if let Some(secret) = &volume.secret {
            VolumeSource::Files {
                sources: vec![FileSource {
                    kind: ConfigKind::Secret,
                    name: secret.secret_name.clone().ok_or_else(|| {
                        Invalid::new(format!("{field}.secret.secretName"), "is required")
                    })?,
                    items: items(&secret.items, "secret")?,
                    optional: secret.optional.unwrap_or(false),
                }],
                default_mode: mode(secret.default_mode, "secret.defaultMode")?,
            }
        } else if let Some(map) = &volume.config_map {
            VolumeSource::Files {
                sources: vec![FileSource {
                    kind: ConfigKind::ConfigMap,
                    name: map.name.clone(),
                    items: items(&map.items, "configMap")?,
                    optional: map.optional.unwrap_or(false),
                }],
                default_mode: mode(map.default_mode, "configMap.defaultMode")?,
            }
        } else if let Some(projected) = &volume.projected {
            let sources = projected
                .sources
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, projection)| {
                    let at = format!("projected.sources[{i}]");
                    match (&projection.secret, &projection.config_map) {
                        (Some(secret), None) => Ok(FileSource {
                            kind: ConfigKind::Secret,
                            name: secret.name.clone(),
                            items: items(&secret.items, &format!("{at}.secret"))?,
                            optional: secret.optional.unwrap_or(false),
                        }),
                        (None, Some(map)) => Ok(FileSource {
                            kind: ConfigKind::ConfigMap,
                            name: map.name.clone(),
                            items: items(&map.items, &format!("{at}.configMap"))?,
                            optional: map.optional.unwrap_or(false),
                        }),
                        _ => Err(Invalid::new(
                            format!("{field}.{at}"),
                            "only secret and configMap sources can be projected on one machine",
                        )),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            VolumeSource::Files {
                sources,
                default_mode: mode(projected.default_mode, "projected.defaultMode")?,
            }
        } else if let Some(empty) = &volume.empty_dir {
            VolumeSource::EmptyDir {
                memory: empty.medium.as_deref() == Some("Memory"),
            }
        } else if let Some(claim) = &volume.persistent_volume_claim {
            VolumeSource::Claim {
                claim: claim.claim_name.clone(),
                read_only: claim.read_only.unwrap_or(false),
            }
        } else {
            return Err(Invalid::new(
                field,
                "only secret, configMap, projected, emptyDir and persistentVolumeClaim volumes run on one machine",
            ));
        };
        Ok(VolumeSpec {
            name: volume.name.clone(),
            source,
        })
    }
}

/// `volumeMounts[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    pub read_only: bool,
    /// A path inside the volume to mount instead of its root.
    pub sub_path: Option<String>,
}

impl VolumeMount {
    fn convert(mount: &k8s::VolumeMount) -> VolumeMount {
        VolumeMount {
            name: mount.name.clone(),
            mount_path: mount.mount_path.clone(),
            read_only: mount.read_only.unwrap_or(false),
            sub_path: mount.sub_path.clone().filter(|p| !p.is_empty()),
        }
    }
}

fn check_relative_path(at: &str, path: &str) -> Result<(), Invalid> {
    let bad = path.is_empty() || path.starts_with('/') || path.split('/').any(|part| part == "..");
    if bad {
        return Err(Invalid::new(
            at,
            format!("'{path}' must be a relative path without '..'"),
        ));
    }
    Ok(())
}

/// The index of the container that receives requests: the one with
/// `ports`, else the first.
pub(crate) fn serving_index(containers: &[Container]) -> usize {
    containers
        .iter()
        .position(|c| !c.ports.is_empty())
        .unwrap_or(0)
}

/// Names, with Knative's defaults for those not given.
pub(crate) fn container_names(containers: &[Container]) -> Vec<String> {
    let given: BTreeSet<&str> = containers
        .iter()
        .filter_map(|c| c.name.as_deref())
        .collect();
    let mut suffix = 0;
    containers
        .iter()
        .map(|c| match &c.name {
            Some(name) => name.clone(),
            None if containers.len() == 1 && !given.contains(DEFAULT_CONTAINER_NAME) => {
                DEFAULT_CONTAINER_NAME.to_owned()
            }
            None => loop {
                let name = format!("{DEFAULT_CONTAINER_NAME}-{suffix}");
                suffix += 1;
                if !given.contains(name.as_str()) {
                    break name;
                }
            },
        })
        .collect()
}

/// Knative's rules for a revision's containers, for every runtime.
pub(crate) fn check(template: &RevisionTemplate) -> Result<(), Invalid> {
    let spec = &template.spec;
    let containers = &spec.containers;
    if containers.is_empty() {
        return Err(Invalid::new(
            "spec.template.spec.containers",
            "needs a container",
        ));
    }
    let ports: Vec<usize> = containers
        .iter()
        .enumerate()
        .flat_map(|(i, c)| std::iter::repeat_n(i, c.ports.len()))
        .collect();
    match ports.as_slice() {
        [] if containers.len() > 1 => {
            return Err(Invalid::new(
                "spec.template.spec.containers",
                "with several containers, exactly one declares ports[0].containerPort: the one that receives requests",
            ));
        }
        [_, second, ..] => {
            return Err(Invalid::new(
                format!("{}.ports", container_field(*second)),
                "more than one container port is set; Knative routes to a single port across all containers",
            ));
        }
        _ => {}
    }
    let volumes: BTreeSet<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let mut names = BTreeSet::new();
    for (i, container) in containers.iter().enumerate() {
        let field = container_field(i);
        if let Some(name) = &container.name
            && !names.insert(name.as_str())
        {
            return Err(Invalid::new(
                format!("{field}.name"),
                format!("'{name}' is the name of another container"),
            ));
        }
        if container.image.as_deref().is_none_or(str::is_empty) && container.command.is_empty() {
            return Err(Invalid::new(
                field,
                "needs 'image' (runs in a container engine or on Kubernetes) or 'command' (runs as a local process)",
            ));
        }
        for (j, var) in container.env.iter().enumerate() {
            if var.name.is_empty() {
                return Err(Invalid::new(
                    format!("{field}.env[{j}].name"),
                    "is required",
                ));
            }
        }
        PullPolicy::convert(&field, container)?;
        if let Some(probe) = &container.readiness_probe {
            probe_of(&field, container, probe)?;
        }
        check_mounts(&field, container, &volumes)?;
    }
    Ok(())
}

fn check_mounts(
    field: &str,
    container: &Container,
    volumes: &BTreeSet<&str>,
) -> Result<(), Invalid> {
    let mut paths = BTreeSet::new();
    for (j, mount) in container.volume_mounts.iter().flatten().enumerate() {
        let at = format!("{field}.volumeMounts[{j}]");
        if !volumes.contains(mount.name.as_str()) {
            return Err(Invalid::new(
                format!("{at}.name"),
                format!(
                    "no entry of spec.template.spec.volumes is named '{}'",
                    mount.name
                ),
            ));
        }
        if !mount.mount_path.starts_with('/') {
            return Err(Invalid::new(
                format!("{at}.mountPath"),
                format!("'{}' must be an absolute path", mount.mount_path),
            ));
        }
        if !paths.insert(mount.mount_path.trim_end_matches('/')) {
            return Err(Invalid::new(
                format!("{at}.mountPath"),
                format!("'{}' is mounted twice", mount.mount_path),
            ));
        }
        if let Some(sub) = mount.sub_path.as_deref().filter(|p| !p.is_empty()) {
            check_relative_path(&format!("{at}.subPath"), sub)?;
        }
    }
    Ok(())
}

/// Expands `$(NAME)` from `vars` as Kubernetes does in `env` values,
/// `command` and `args`: `$$` is a literal `$`, and a reference to an
/// unknown name stays as written.
pub(crate) fn expand(text: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars(name) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::service::Service;

    fn template(containers: &str) -> RevisionTemplate {
        let yaml = format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: app\n  namespace: shop\nspec:\n  template:\n    spec:\n{containers}"
        );
        let service: Service = serde_saphyr::from_str(&yaml).expect("parses");
        service.spec.template
    }

    fn pod(containers: &str) -> PodSpec {
        PodSpec::from_template(&template(containers)).expect("converts")
    }

    fn error(containers: &str) -> Invalid {
        PodSpec::from_template(&template(containers)).expect_err("refused")
    }

    #[test]
    fn a_single_container_gets_knatives_name_port_and_probe() {
        let pod = pod("      containers:\n        - image: nginx\n");
        let c = pod.serving_container();
        assert_eq!(c.name, "user-container");
        assert_eq!(c.port, Some(8080));
        assert_eq!(c.readiness, Some(Probe::TcpDefault));
        assert_eq!(c.pull_policy, PullPolicy::Always, "no tag means latest");
        assert_eq!(pod.local_runtime(), LocalRuntime::Container);
    }

    #[test]
    fn the_runtime_rule_and_its_annotation() {
        let command = "      containers:\n        - command: [app]\n";
        assert_eq!(pod(command).local_runtime(), LocalRuntime::Process);
        let both = "      containers:\n        - image: app:1\n          command: [app]\n";
        assert_eq!(pod(both).local_runtime(), LocalRuntime::Container);
        let mut annotated = template(both);
        annotated
            .metadata
            .annotations
            .insert(RUNTIME_ANNOTATION.into(), "process".into());
        let converted = PodSpec::from_template(&annotated).expect("converts");
        assert_eq!(converted.local_runtime(), LocalRuntime::Process);
        annotated
            .metadata
            .annotations
            .insert(RUNTIME_ANNOTATION.into(), "vm".into());
        let err = PodSpec::from_template(&annotated).expect_err("unknown runtime");
        assert_eq!(
            err.field,
            "spec.template.metadata.annotations[\"pilotlight.dev/runtime\"]"
        );
    }

    #[test]
    fn pull_policy_follows_kubernetes_defaults() {
        for (image, policy) in [
            ("nginx", PullPolicy::Always),
            ("nginx:latest", PullPolicy::Always),
            ("nginx:1.27", PullPolicy::IfNotPresent),
            ("localhost:5000/app", PullPolicy::Always),
            ("localhost:5000/app:2", PullPolicy::IfNotPresent),
            ("ghcr.io/a/b@sha256:abcd", PullPolicy::IfNotPresent),
        ] {
            assert_eq!(PullPolicy::default_for(image), policy, "{image}");
        }
        let err =
            error("      containers:\n        - image: a\n          imagePullPolicy: Sometimes\n");
        assert_eq!(
            err.field,
            "spec.template.spec.containers[0].imagePullPolicy"
        );
    }

    #[test]
    fn several_containers_need_exactly_one_port() {
        let sidecar = pod(
            "      containers:\n        - image: side\n        - image: main\n          ports:\n            - containerPort: 8881\n",
        );
        assert_eq!(sidecar.serving, 1);
        assert_eq!(sidecar.containers[1].port, Some(8881));
        assert_eq!(sidecar.containers[0].port, None);
        assert_eq!(sidecar.containers[0].readiness, None);
        let names: Vec<&str> = sidecar.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["user-container-0", "user-container-1"]);

        let none = error("      containers:\n        - image: a\n        - image: b\n");
        assert_eq!(none.field, "spec.template.spec.containers");
        let two = error(
            "      containers:\n        - image: a\n          ports: [{containerPort: 1}]\n        - image: b\n          ports: [{containerPort: 2}]\n",
        );
        assert_eq!(two.field, "spec.template.spec.containers[1].ports");
        let same = error(
            "      containers:\n        - name: a\n          image: a\n          ports: [{containerPort: 1}]\n        - name: a\n          image: b\n",
        );
        assert_eq!(same.field, "spec.template.spec.containers[1].name");
    }

    #[test]
    fn env_keeps_references_and_resolves_fields() {
        let pod = pod(
            "      containers:\n        - image: a:1\n          env:\n            - {name: A, value: x}\n            - name: B\n              valueFrom:\n                secretKeyRef: {name: s, key: k}\n            - name: C\n              valueFrom:\n                configMapKeyRef: {name: m, key: k, optional: true}\n            - name: D\n              valueFrom:\n                fieldRef: {fieldPath: metadata.namespace}\n            - name: E\n              valueFrom:\n                fieldRef: {fieldPath: metadata.name}\n          envFrom:\n            - prefix: P_\n              secretRef: {name: all}\n",
        );
        let c = pod.serving_container();
        let values: Vec<&EnvValue> = c.env.iter().map(|v| &v.value).collect();
        assert_eq!(values[0], &EnvValue::Literal("x".into()));
        assert_eq!(
            values[1],
            &EnvValue::Key(KeyRef {
                kind: ConfigKind::Secret,
                name: "s".into(),
                key: "k".into(),
                optional: false
            })
        );
        assert!(matches!(
            values[2],
            EnvValue::Key(KeyRef { optional: true, .. })
        ));
        assert_eq!(values[3], &EnvValue::Namespace);
        assert_eq!(values[4], &EnvValue::InstanceName);
        assert_eq!(
            c.env_from,
            vec![EnvFrom {
                kind: ConfigKind::Secret,
                name: "all".into(),
                prefix: "P_".into(),
                optional: false
            }]
        );
        assert!(
            !format!("{:?}", c.env).contains('x'),
            "values stay out of Debug"
        );
        let err = error(
            "      containers:\n        - image: a:1\n          env:\n            - name: IP\n              valueFrom:\n                fieldRef: {fieldPath: status.podIP}\n",
        );
        assert_eq!(
            err.field,
            "spec.template.spec.containers[0].env[0].valueFrom.fieldRef.fieldPath"
        );
    }

    #[test]
    fn resources_are_read_and_a_bad_quantity_names_its_field() {
        let pod = pod(
            "      containers:\n        - image: a:1\n          resources:\n            limits: {cpu: 500m, memory: 128Mi}\n          env:\n            - name: MEM\n              valueFrom:\n                resourceFieldRef: {resource: limits.memory, divisor: 1Mi}\n",
        );
        let c = pod.serving_container();
        assert_eq!(c.resources.cpu_limit_millis, Some(500));
        assert_eq!(c.env[0].value, EnvValue::Literal("128".into()));
        let err = error(
            "      containers:\n        - image: a:1\n          resources:\n            limits: {memory: lots}\n",
        );
        assert_eq!(
            err.field,
            "spec.template.spec.containers[0].resources.limits.memory"
        );
    }

    #[test]
    fn volumes_and_mounts() {
        let pod = pod(
            "      containers:\n        - image: a:1\n          volumeMounts:\n            - {name: creds, mountPath: /var/secret}\n            - {name: scratch, mountPath: /tmp/x}\n      volumes:\n        - name: creds\n          secret:\n            secretName: robot\n            items: [{key: k, path: robot.json}]\n        - name: scratch\n          emptyDir: {}\n",
        );
        assert_eq!(pod.volumes.len(), 2);
        assert_eq!(
            pod.volumes[0].source,
            VolumeSource::Files {
                sources: vec![FileSource {
                    kind: ConfigKind::Secret,
                    name: "robot".into(),
                    items: vec![("k".into(), "robot.json".into(), None)],
                    optional: false
                }],
                default_mode: 0o644
            }
        );
        let unknown = error(
            "      containers:\n        - image: a:1\n          volumeMounts:\n            - {name: nope, mountPath: /x}\n",
        );
        assert_eq!(
            unknown.field,
            "spec.template.spec.containers[0].volumeMounts[0].name"
        );
        let host = error(
            "      containers:\n        - image: a:1\n      volumes:\n        - name: h\n          hostPath: {path: /etc}\n",
        );
        assert_eq!(host.field, "spec.template.spec.volumes[0]");
        let escape = error(
            "      containers:\n        - image: a:1\n      volumes:\n        - name: c\n          configMap:\n            name: m\n            items: [{key: k, path: ../../etc/passwd}]\n",
        );
        assert_eq!(
            escape.field,
            "spec.template.spec.volumes[0].configMap.items[0].path"
        );
    }

    #[test]
    fn security_context_merges_pod_and_container() {
        let pod = pod(
            "      securityContext: {runAsUser: 1000, runAsGroup: 3000}\n      containers:\n        - image: a:1\n          securityContext:\n            runAsUser: 2000\n            readOnlyRootFilesystem: true\n            allowPrivilegeEscalation: false\n            capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}\n",
        );
        let s = &pod.serving_container().security;
        assert_eq!(s.run_as_user, Some(2000));
        assert_eq!(s.run_as_group, Some(3000));
        assert!(s.read_only_root_filesystem && s.no_new_privileges);
        assert_eq!(s.capabilities_drop, ["ALL"]);
    }

    #[test]
    fn references_expand_as_in_kubernetes() {
        let vars = |name: &str| (name == "A").then(|| "x".to_owned());
        assert_eq!(expand("$(A)-$(B)-$$(A)-$-$", &vars), "x-$(B)-$(A)-$-$");
        assert_eq!(expand("no refs", &vars), "no refs");
        assert_eq!(expand("$(A", &vars), "$(A");
    }
}
