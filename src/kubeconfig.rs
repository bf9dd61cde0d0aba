//! The connection to a Kubernetes API server, shared by Kubernetes mode and
//! ApiServerSource so that both read `--kubeconfig` the same way.

/// The API server configuration: this kubeconfig file (its current
/// context), or kube's inference (`KUBECONFIG` or `~/.kube/config`, else the
/// in-cluster service account). The error names the file.
pub(crate) async fn load_config(
    kubeconfig: Option<&std::path::Path>,
) -> Result<kube::Config, String> {
    let Some(path) = kubeconfig else {
        return kube::Config::infer().await.map_err(|e| e.to_string());
    };
    let file = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| format!("{}: {e}", path.display()))
}
