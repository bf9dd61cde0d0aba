//! `pilotlight ready`: exits 0 when a running pilotlight answers `/readyz`
//! with 200, for health checks in images that have no curl (the container
//! image, docker-compose.yml).

use anyhow::Context as _;
use clap::Args;

use super::http::admin_get;

#[derive(Debug, Args)]
pub struct ReadyArgs {
    /// The admin listener of the running pilotlight.
    #[arg(long, env = "PILOTLIGHT_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: String,
}

pub(crate) async fn ready(args: ReadyArgs) -> anyhow::Result<()> {
    admin_get(&args.admin, "/readyz")
        .await
        .context("not ready")?;
    Ok(())
}
