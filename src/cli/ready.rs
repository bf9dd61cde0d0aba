//! `pilotlight ready`: exits 0 when a running pilotlight answers `/readyz`
//! with 200, for health checks in images that have no curl (the container
//! image, docker-compose.yml).

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use http::{HeaderMap, Method, Uri};

use super::http::request;

#[derive(Debug, Args)]
pub struct ReadyArgs {
    /// The admin listener of the running pilotlight.
    #[arg(long, env = "PILOTLIGHT_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: String,
}

pub async fn ready(args: ReadyArgs) -> anyhow::Result<()> {
    let uri: Uri = format!("http://{}/readyz", args.admin)
        .parse()
        .with_context(|| {
            format!(
                "'{}' is not an address (--admin / PILOTLIGHT_ADMIN)",
                args.admin
            )
        })?;
    let response = request(Method::GET, &uri, HeaderMap::new(), Bytes::new())
        .await
        .with_context(|| format!("is pilotlight running with --admin {}?", args.admin))?;
    if !response.status.is_success() {
        bail!(
            "not ready: {uri} answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body).trim()
        );
    }
    Ok(())
}
