//! `pilotlight replay NAMESPACE/TRIGGER --since TIME|DURATION | --from-offset
//! N [--yes]`: delivers a trigger's events again from a point in time or an
//! offset, through the admin API (`POST /api/v1/triggers/{ns}/{name}/replay`,
//! see `control::replay`): a dry run first says how many events that is,
//! then, once confirmed (or with `--yes`), the replay itself.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use http::{HeaderMap, HeaderValue, Method, Uri};

use super::http::request;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("position").required(true).args(["since", "from_offset"])))]
pub struct ReplayArgs {
    /// The trigger: NAMESPACE/NAME (NAME alone: namespace default).
    pub trigger: String,
    /// Deliver again the events stored since this time: RFC 3339
    /// (2025-01-31T10:00:00Z) or a duration back from now (90s, 10m, 1h30m, 2d, PT10M).
    #[arg(long)]
    pub since: Option<String>,
    /// Deliver again from this offset of the broker's log (Kafka: of every
    /// partition).
    #[arg(long)]
    pub from_offset: Option<u64>,
    /// A channel's Subscription rather than a Trigger.
    #[arg(long)]
    pub subscription: bool,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub yes: bool,
    /// The admin listener of the running pilotlight.
    #[arg(long, env = "PILOTLIGHT_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// The running pilotlight's --admin-token, needed when its admin
    /// listener is not on loopback.
    #[arg(long, env = "PILOTLIGHT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

pub(crate) async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let (namespace, name) = args
        .trigger
        .split_once('/')
        .unwrap_or(("default", &args.trigger));
    anyhow::ensure!(
        !namespace.is_empty() && !name.is_empty() && !name.contains('/'),
        "'{}': write the trigger as NAMESPACE/NAME",
        args.trigger
    );
    let collection = if args.subscription {
        "subscriptions"
    } else {
        "triggers"
    };
    let what = if args.subscription {
        "subscription"
    } else {
        "trigger"
    };
    let uri = super::http::admin_uri(
        &args.admin,
        &format!("/api/v1/{collection}/{namespace}/{name}/replay"),
    )?;
    let dry = call(&uri, &args, true).await?;
    let events = dry["events"].as_u64().unwrap_or(0);
    if let Some(note) = dry["note"].as_str() {
        eprintln!("note: {note}");
    }
    println!(
        "{events} events will be delivered again to {what} {namespace}/{name} (at most: events its filter skips are counted too)"
    );
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!("not replaying: confirm on a terminal, or pass --yes");
        }
        print!("Replay? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("not replaying: not confirmed");
        }
    }
    let done = call(&uri, &args, false).await?;
    println!(
        "replaying: {} events are being delivered again",
        done["events"].as_u64().unwrap_or(0)
    );
    Ok(())
}

/// One replay request (a dry run or the real one); its JSON answer.
async fn call(uri: &Uri, args: &ReplayArgs, dry_run: bool) -> anyhow::Result<serde_json::Value> {
    let mut body = serde_json::json!({ "dryRun": dry_run });
    if let Some(since) = &args.since {
        body["since"] = since.clone().into();
    }
    if let Some(offset) = args.from_offset {
        body["fromOffset"] = offset.into();
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(token) = &args.admin_token {
        let value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .context("--admin-token has characters a header cannot carry")?;
        headers.insert(http::header::AUTHORIZATION, value);
    }
    let response = request(
        Method::POST,
        uri,
        headers,
        Bytes::from(serde_json::to_vec(&body)?),
    )
    .await
    .with_context(|| format!("is pilotlight running with --admin {}?", args.admin))?;
    anyhow::ensure!(
        response.status.is_success(),
        "{uri} answered {}: {}",
        response.status,
        String::from_utf8_lossy(&response.body).trim()
    );
    serde_json::from_slice(&response.body).with_context(|| format!("{uri}: the answer is not JSON"))
}
