//! `pilotlight tail NS/BROKER [--filter CESQL] [--since 10m|TIME] [-o json|pretty]`:
//! follows a broker's events as they are stored (like `kubectl logs -f`),
//! through the admin API's Server-Sent Events stream
//! (`GET /api/v1/brokers/{namespace}/{name}/events`, see `control::tail`).
//! `channel/NS/NAME` follows a channel's events instead.

use std::io::{IsTerminal as _, Write as _};

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use clap::{Args, ValueEnum};
use http::{HeaderMap, HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::dns::GaiResolver;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use crate::http_util::{self, ClientSettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TailOutput {
    /// One block per event: attributes, then data (pretty-printed when JSON).
    Pretty,
    /// One structured-mode CloudEvent JSON object per line.
    Json,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// The broker, as NAMESPACE/NAME (a bare NAME is in namespace
    /// "default"), or channel/NAMESPACE/NAME for a channel's events.
    pub target: String,
    /// Only events this CESQL expression is true for, e.g.
    /// "type LIKE 'com.example.%'".
    #[arg(long, allow_hyphen_values = true)]
    pub filter: Option<String>,
    /// Start in the past, with what the broker still holds: a duration back
    /// from now (90s, 10m, 1h30m, 2d, PT10M) or an RFC 3339 time. Default: new events only.
    #[arg(long)]
    pub since: Option<String>,
    /// Output format (default: pretty on a terminal, json otherwise).
    #[arg(short, long, value_enum)]
    pub output: Option<TailOutput>,
    /// The admin listener of the running pilotlight.
    #[arg(long, env = "PILOTLIGHT_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: String,
}

/// The admin API path of a target's events.
fn events_path(target: &str) -> anyhow::Result<String> {
    let parts: Vec<&str> = target.split('/').collect();
    let (collection, namespace, name) = match parts.as_slice() {
        [name] => ("brokers", "default", *name),
        [namespace, name] => ("brokers", *namespace, *name),
        ["channel" | "channels", namespace, name] => ("channels", *namespace, *name),
        _ => anyhow::bail!(
            "'{target}': name a broker as NAMESPACE/NAME, or a channel as channel/NAMESPACE/NAME"
        ),
    };
    anyhow::ensure!(
        !namespace.is_empty() && !name.is_empty(),
        "'{target}': the namespace and the name must not be empty"
    );
    let segment = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    Ok(format!(
        "/api/v1/{collection}/{}/{}/events",
        segment(namespace),
        segment(name)
    ))
}

pub(crate) async fn run(args: TailArgs) -> anyhow::Result<()> {
    let mut path = events_path(&args.target)?;
    let mut query = Vec::new();
    if let Some(since) = &args.since {
        query.push(format!(
            "since={}",
            utf8_percent_encode(since, NON_ALPHANUMERIC)
        ));
    }
    if let Some(filter) = &args.filter {
        query.push(format!(
            "filter={}",
            utf8_percent_encode(filter, NON_ALPHANUMERIC)
        ));
    }
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let output = args.output.unwrap_or(if std::io::stdout().is_terminal() {
        TailOutput::Pretty
    } else {
        TailOutput::Json
    });
    let uri = super::http::admin_uri(&args.admin, &path)?;
    let client =
        http_util::client::<_, Empty<Bytes>>(GaiResolver::new(), ClientSettings::default());
    let mut request = Request::new(Empty::new());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri.clone();
    request.headers_mut().insert(
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
    let response = client.request(request).await.with_context(|| {
        format!(
            "GET {uri} failed: is pilotlight running with --admin {}?",
            args.admin
        )
    })?;
    let (parts, mut body) = response.into_parts();
    if !parts.status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        anyhow::bail!(
            "{} answered {}: {}",
            args.target,
            parts.status,
            String::from_utf8_lossy(&text).trim()
        );
    }
    let mut pending = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("the stream of {} broke off", args.target))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = find_blank_line(&pending) {
            let message = pending.split_to(end + 2);
            if let Some(done) = show(&message, output)? {
                eprintln!("{}: {done}", args.target);
                return Ok(());
            }
        }
    }
    anyhow::bail!("the stream of {} ended without a reason", args.target)
}

/// Where the first `\n\n` (the end of a Server-Sent Event) starts.
fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\n\n")
}

/// Prints one Server-Sent Event; `Some(reason)` when the stream ended.
fn show(message: &[u8], output: TailOutput) -> anyhow::Result<Option<String>> {
    let text = String::from_utf8_lossy(message);
    let mut kind = "message";
    let mut data = String::new();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            kind = value.trim();
        } else if let Some(value) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    let json = || serde_json::from_str::<serde_json::Value>(&data).unwrap_or_default();
    match kind {
        "message" if !data.is_empty() => {
            let mut out = std::io::stdout().lock();
            match output {
                TailOutput::Json => writeln!(out, "{data}")?,
                TailOutput::Pretty => writeln!(out, "{}", pretty(&data))?,
            }
            out.flush()?;
        }
        "skipped" => eprintln!(
            "... {} events skipped (the tail fell behind, or the broker no longer held them)",
            json()["skipped"]
        ),
        "end" => {
            return Ok(Some(
                json()["reason"].as_str().unwrap_or("ended").to_owned(),
            ));
        }
        _ => {}
    }
    Ok(None)
}

/// An event as `pilotlight event-display` prints it, or its JSON when the
/// CloudEvents SDK does not read it.
fn pretty(json: &str) -> String {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/cloudevents+json"),
    );
    match cloudevents::binding::http::to_event(&headers, json.as_bytes().to_vec()) {
        Ok(event) => super::event_display::render(&event),
        Err(_) => format!("{json}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_a_broker_or_a_channel() {
        let path = |t: &str| events_path(t).map_err(|e| e.to_string());
        assert_eq!(
            path("shop/orders").as_deref(),
            Ok("/api/v1/brokers/shop/orders/events")
        );
        assert_eq!(
            path("default").as_deref(),
            Ok("/api/v1/brokers/default/default/events")
        );
        assert_eq!(
            path("channel/shop/audit").as_deref(),
            Ok("/api/v1/channels/shop/audit/events")
        );
        for bad in ["a/b/c", "shop/", "/orders", "channel/shop/"] {
            let e = path(bad).expect_err(bad);
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
