//! What the engine is asked to create for one container of an instance:
//! Kubernetes' meaning of `command` and `args`, the environment, labels,
//! published ports, mounts, limits and security settings.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, PortBinding};

use super::engine::OWNER_LABEL;
use crate::api::pod::{ContainerNetwork, VolumeSource};
use crate::serving::runtime::config;
use crate::serving::runtime::local::LocalWorkload;

/// Labels: Knative's, so that `docker ps --filter label=...` reads like
/// `kubectl get pods -l ...`, plus pilotlight's own.
pub(crate) const INSTANCE_LABEL: &str = "dev.pilotlight.instance";
pub(crate) const CONTAINER_LABEL: &str = "dev.pilotlight.container";

/// Where one instance's containers meet the host.
pub(crate) struct InstancePlan<'a> {
    pub instance: &'a str,
    pub owner: &'a str,
    pub network: ContainerNetwork,
    /// The serving container's `PORT`: its `containerPort` on a bridge, a
    /// free host port on the host's network.
    pub port: u16,
    /// Bridge: host port by container port, for the serving port and every
    /// probed port; published on the serving container, whose network the
    /// sidecars share.
    pub published: &'a BTreeMap<u16, u16>,
    /// The host folder of each `secret`, `configMap`, `projected` and
    /// `emptyDir` volume, by volume name.
    pub volume_dirs: &'a BTreeMap<String, PathBuf>,
    /// For sidecars: the serving container's id, whose network they join (a
    /// pod's containers share one network namespace).
    pub join: Option<&'a str>,
}

/// The create request of `containers[index]`. `env` is its resolved
/// environment (without `PORT` and `K_*`, which are added here).
pub(crate) fn create_body(
    workload: &LocalWorkload,
    index: usize,
    image_id: &str,
    env: Vec<(String, String)>,
    plan: &InstancePlan<'_>,
) -> ContainerCreateBody {
    let container = &workload.pod.containers[index];
    let serving = index == workload.pod.serving;
    let (command, args) = config::command_line(container, &env);
    // Kubernetes' rule: `command` replaces the image's entrypoint (and its
    // cmd goes with it); `args` alone replaces only its cmd.
    let (entrypoint, cmd) = match (command.is_empty(), args.is_empty()) {
        (false, _) => (Some(command), Some(args)),
        (true, false) => (None, Some(args)),
        (true, true) => (None, None),
    };
    let mut env: Vec<String> = env
        .into_iter()
        .filter(|(name, _)| !(serving && RESERVED.contains(&name.as_str())))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    // A daemon's pod (no serving port) gets none of the serving variables.
    if serving && container.port.is_some() {
        env.extend([
            format!("PORT={}", plan.port),
            format!("K_SERVICE={}", workload.service.name),
            format!("K_CONFIGURATION={}", workload.service.name),
            format!("K_REVISION={}", workload.revision),
        ]);
    }
    let security = &container.security;
    let user = security.run_as_user.map(|uid| match security.run_as_group {
        Some(gid) => format!("{uid}:{gid}"),
        None => uid.to_string(),
    });
    let resources = &container.resources;
    let millis_to_nanos = |m: u64| i64::try_from(m.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
    let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
    let host_config = HostConfig {
        network_mode: Some(match (plan.join, plan.network) {
            (Some(id), _) => format!("container:{id}"),
            (None, ContainerNetwork::Host) => "host".to_owned(),
            (None, ContainerNetwork::Bridge) => "bridge".to_owned(),
        }),
        port_bindings: (serving && plan.join.is_none() && !plan.published.is_empty())
            .then(|| port_bindings(plan.published)),
        mounts: Some(mounts(workload, index, plan)).filter(|m| !m.is_empty()),
        nano_cpus: resources.cpu_limit_millis.map(millis_to_nanos),
        memory: resources.memory_limit.map(bytes),
        memory_reservation: resources.memory_request.map(bytes),
        // Kubernetes turns a CPU request into cgroup shares the same way.
        cpu_shares: resources.cpu_request_millis.map(|m| {
            i64::try_from(m.saturating_mul(1024) / 1000)
                .unwrap_or(i64::MAX)
                .max(2)
        }),
        readonly_rootfs: security.read_only_root_filesystem.then_some(true),
        security_opt: security
            .no_new_privileges
            .then(|| vec!["no-new-privileges".to_owned()]),
        cap_add: Some(security.capabilities_add.clone()).filter(|c| !c.is_empty()),
        cap_drop: Some(security.capabilities_drop.clone()).filter(|c| !c.is_empty()),
        ..HostConfig::default()
    };
    ContainerCreateBody {
        image: Some(image_id.to_owned()),
        entrypoint,
        cmd,
        env: Some(env),
        user,
        working_dir: container
            .working_dir
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned()),
        labels: Some(labels(workload, &container.name, plan)),
        exposed_ports: (serving && plan.join.is_none() && !plan.published.is_empty())
            .then(|| plan.published.keys().map(|p| format!("{p}/tcp")).collect()),
        host_config: Some(host_config),
        ..ContainerCreateBody::default()
    }
}

/// Variables Knative sets in the serving container; the user's entries of
/// these names give way.
const RESERVED: [&str; 4] = ["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"];

fn labels(
    workload: &LocalWorkload,
    container: &str,
    plan: &InstancePlan<'_>,
) -> HashMap<String, String> {
    [
        (OWNER_LABEL, plan.owner),
        ("serving.knative.dev/service", &workload.service.name),
        ("serving.knative.dev/configuration", &workload.service.name),
        ("serving.knative.dev/revision", &workload.revision),
        ("serving.knative.dev/namespace", &workload.service.namespace),
        (INSTANCE_LABEL, plan.instance),
        (CONTAINER_LABEL, container),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Each published port on 127.0.0.1 only: the instance is reached through
/// pilotlight, not from the network.
fn port_bindings(published: &BTreeMap<u16, u16>) -> HashMap<String, Option<Vec<PortBinding>>> {
    published
        .iter()
        .map(|(container_port, host_port)| {
            (
                format!("{container_port}/tcp"),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".to_owned()),
                    host_port: Some(host_port.to_string()),
                }]),
            )
        })
        .collect()
}

fn mounts(workload: &LocalWorkload, index: usize, plan: &InstancePlan<'_>) -> Vec<Mount> {
    let container = &workload.pod.containers[index];
    container
        .volume_mounts
        .iter()
        .filter_map(|mount| {
            let volume = workload.pod.volumes.iter().find(|v| v.name == mount.name)?;
            let (typ, source, read_only) = match &volume.source {
                VolumeSource::Files { .. } | VolumeSource::EmptyDir { .. } => {
                    let dir = plan.volume_dirs.get(&volume.name)?;
                    let dir = match &mount.sub_path {
                        Some(sub) => dir.join(sub),
                        None => dir.clone(),
                    };
                    // Files of Secrets and ConfigMaps are read-only, as in a pod.
                    let files = matches!(volume.source, VolumeSource::Files { .. });
                    (
                        MountType::BIND,
                        dir.to_string_lossy().into_owned(),
                        mount.read_only || files,
                    )
                }
                VolumeSource::Claim { claim, read_only } => (
                    MountType::VOLUME,
                    claim_volume(&workload.service.namespace, claim),
                    mount.read_only || *read_only,
                ),
            };
            Some(Mount {
                target: Some(mount.mount_path.clone()),
                source: Some(source),
                typ: Some(typ),
                read_only: Some(read_only),
                ..Mount::default()
            })
        })
        .collect()
}

/// The engine volume that stands for a PersistentVolumeClaim: kept across
/// instances, revisions and restarts, as a claim is.
pub(super) fn claim_volume(namespace: &str, claim: &str) -> String {
    format!("pilotlight-{namespace}-{claim}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ObjectKey;
    use crate::api::pod::PodSpec;
    use crate::api::service::Service;

    fn workload(containers: &str) -> LocalWorkload {
        let yaml = format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: app\n  namespace: shop\nspec:\n  template:\n    spec:\n{containers}"
        );
        let service: Service = serde_saphyr::from_str(&yaml).expect("parses");
        LocalWorkload {
            service: ObjectKey::new("shop", "app"),
            revision: "app-00001".into(),
            pod: PodSpec::from_template(&service.spec.template).expect("converts"),
            drain_timeout: std::time::Duration::from_secs(1),
        }
    }

    fn plan<'a>(
        published: &'a BTreeMap<u16, u16>,
        dirs: &'a BTreeMap<String, PathBuf>,
        join: Option<&'a str>,
    ) -> InstancePlan<'a> {
        InstancePlan {
            instance: "app-00001-1",
            owner: "/data",
            network: ContainerNetwork::Bridge,
            port: 8080,
            published,
            volume_dirs: dirs,
            join,
        }
    }

    #[test]
    fn command_and_args_mean_what_they_mean_in_kubernetes() {
        let published = BTreeMap::from([(8080, 40001)]);
        let dirs = BTreeMap::new();
        let plan = plan(&published, &dirs, None);
        let only_image = workload("      containers:\n        - image: app:1\n");
        let body = create_body(&only_image, 0, "sha256:1", vec![], &plan);
        assert_eq!((body.entrypoint, body.cmd), (None, None));
        let args =
            workload("      containers:\n        - image: app:1\n          args: [--fast]\n");
        let body = create_body(&args, 0, "sha256:1", vec![], &plan);
        assert_eq!(
            (body.entrypoint, body.cmd),
            (None, Some(vec!["--fast".to_owned()]))
        );
        let command = workload(
            "      containers:\n        - image: app:1\n          command: [/bin/app]\n          env: [{name: N, value: '3'}]\n          args: [--n, $(N)]\n",
        );
        let env = vec![
            ("N".to_owned(), "3".to_owned()),
            ("PORT".to_owned(), "1".to_owned()),
        ];
        let body = create_body(&command, 0, "sha256:1", env, &plan);
        assert_eq!(body.entrypoint, Some(vec!["/bin/app".to_owned()]));
        assert_eq!(body.cmd, Some(vec!["--n".to_owned(), "3".to_owned()]));
        let env = body.env.expect("env");
        assert!(
            env.contains(&"PORT=8080".to_owned()) && !env.contains(&"PORT=1".to_owned()),
            "{env:?}"
        );
        assert!(env.contains(&"K_REVISION=app-00001".to_owned()), "{env:?}");
        let host = body.host_config.expect("host config");
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        let binding = &host.port_bindings.expect("bindings")["8080/tcp"];
        assert_eq!(
            binding
                .as_ref()
                .and_then(|b| b[0].host_port.clone())
                .as_deref(),
            Some("40001")
        );
        let labels = body.labels.expect("labels");
        assert_eq!(labels["serving.knative.dev/revision"], "app-00001");
        assert_eq!(labels[OWNER_LABEL], "/data");
    }

    #[test]
    fn sidecars_join_the_serving_containers_network_and_get_no_port() {
        let two = workload(
            "      containers:\n        - image: app:1\n          ports: [{containerPort: 8881}]\n        - name: proxy\n          image: proxy:1\n",
        );
        let published = BTreeMap::from([(8881, 40002)]);
        let dirs = BTreeMap::new();
        let plan = plan(&published, &dirs, Some("abc123"));
        let body = create_body(&two, 1, "sha256:2", vec![], &plan);
        let host = body.host_config.expect("host config");
        assert_eq!(host.network_mode.as_deref(), Some("container:abc123"));
        assert!(host.port_bindings.is_none());
        assert!(
            !body
                .env
                .expect("env")
                .iter()
                .any(|v| v.starts_with("PORT="))
        );
    }

    #[test]
    fn limits_security_and_mounts() {
        let w = workload(
            "      containers:\n        - image: app:1\n          resources:\n            limits: {cpu: 500m, memory: 128Mi}\n            requests: {cpu: 250m}\n          securityContext:\n            runAsUser: 1000\n            runAsGroup: 1000\n            readOnlyRootFilesystem: true\n            allowPrivilegeEscalation: false\n          volumeMounts:\n            - {name: creds, mountPath: /var/secret}\n            - {name: data, mountPath: /data}\n      volumes:\n        - name: creds\n          secret: {secretName: robot}\n        - name: data\n          persistentVolumeClaim: {claimName: store}\n",
        );
        let published = BTreeMap::new();
        let dirs = BTreeMap::from([("creds".to_owned(), PathBuf::from("/tmp/v/creds"))]);
        let body = create_body(&w, 0, "sha256:3", vec![], &plan(&published, &dirs, None));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        let host = body.host_config.expect("host config");
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, Some(128 << 20));
        assert_eq!(host.cpu_shares, Some(256));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_owned()])
        );
        let mounts = host.mounts.expect("mounts");
        assert_eq!(mounts[0].source.as_deref(), Some("/tmp/v/creds"));
        assert_eq!(
            mounts[0].read_only,
            Some(true),
            "secret files are read-only"
        );
        assert_eq!(mounts[1].typ, Some(MountType::VOLUME));
        assert_eq!(mounts[1].source.as_deref(), Some("pilotlight-shop-store"));
    }
}
