//! `pilotlight send`: send one CloudEvent, like `kn event send`.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http::{HeaderMap, HeaderValue, Method, Uri, header::CONTENT_TYPE};

use super::http::request;
use crate::cloudevent::{CONTENT_TYPE_STRUCTURED, Event, encode_binary_headers, encode_structured};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SendMode {
    Binary,
    Structured,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["to", "broker"]))]
pub struct SendArgs {
    /// Send to this URL.
    #[arg(long)]
    pub to: Option<String>,
    /// Send to a broker of the running pilotlight, as NAMESPACE/NAME (or NAME in "default").
    #[arg(long)]
    pub broker: Option<String>,
    /// The ingress of the running pilotlight, for --broker.
    #[arg(long, env = "PILOTLIGHT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// CloudEvent type.
    #[arg(long = "type")]
    pub ty: String,
    /// CloudEvent source.
    #[arg(long)]
    pub source: String,
    /// CloudEvent id (default: a random UUID).
    #[arg(long)]
    pub id: Option<String>,
    /// JSON data, or @FILE to read it from a file.
    #[arg(long)]
    pub data: Option<String>,
    /// Content type of the data (default: application/json when --data is given).
    #[arg(long)]
    pub content_type: Option<String>,
    /// Extension attribute NAME=VALUE. Repeatable.
    #[arg(long = "extension", short = 'e')]
    pub extensions: Vec<String>,
    /// HTTP binding mode.
    #[arg(long, value_enum, default_value = "binary")]
    pub mode: SendMode,
    /// An OIDC token to send as `Authorization: Bearer` (for a pilotlight
    /// run with --authentication-oidc): a file that holds it, or - for
    /// standard input. Its audience must be the broker's
    /// (`status.address.audience` in `pilotlight get brokers -o yaml`).
    #[arg(long, value_name = "FILE|-")]
    pub token: Option<String>,
}

/// The token of `--token`: the file's (or standard input's) text, trimmed.
fn read_token(from: &str) -> anyhow::Result<String> {
    let text = if from == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("--token -: cannot read standard input")?;
        text
    } else {
        std::fs::read_to_string(from).with_context(|| format!("--token: cannot read {from}"))?
    };
    let token = text.trim().to_owned();
    anyhow::ensure!(
        !token.is_empty(),
        "--token {from}: it is empty; put the OIDC token (a JWT) in it"
    );
    anyhow::ensure!(
        token.split('.').count() == 3 && !token.contains(char::is_whitespace),
        "--token {from}: not a JWT (three base64url parts separated by dots)"
    );
    Ok(token)
}

pub(crate) async fn send(args: SendArgs) -> anyhow::Result<()> {
    let uri = target(&args)?;
    let event = build_event(&args)?;
    let mut headers = HeaderMap::new();
    if let Some(from) = &args.token {
        let token = read_token(from)?;
        let value = HeaderValue::try_from(format!("Bearer {token}"))
            .with_context(|| format!("--token {from}: not a valid header value"))?;
        headers.insert(http::header::AUTHORIZATION, value);
    }
    let body = match args.mode {
        SendMode::Binary => {
            encode_binary_headers(&event, &mut headers);
            event.data().cloned().unwrap_or_default()
        }
        SendMode::Structured => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPE_STRUCTURED),
            );
            Bytes::from(encode_structured(&event))
        }
    };
    let response = request(Method::POST, &uri, headers, body).await?;
    if !response.status.is_success() {
        bail!(
            "{uri} answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body).trim()
        );
    }
    eprintln!("sent event {} to {uri}: {}", event.id(), response.status);
    Ok(())
}

fn target(args: &SendArgs) -> anyhow::Result<Uri> {
    let url = match (&args.to, &args.broker) {
        (Some(to), _) => to.clone(),
        (None, Some(broker)) => {
            let (namespace, name) = broker.split_once('/').unwrap_or(("default", broker));
            format!("http://{}/{namespace}/{name}", args.listen)
        }
        (None, None) => bail!("give --to URL or --broker NAMESPACE/NAME"),
    };
    url.parse().with_context(|| format!("'{url}' is not a URL"))
}

/// The event the flags describe, validated like any event the ingress takes.
pub(crate) fn build_event(args: &SendArgs) -> anyhow::Result<Event> {
    let mut attributes = vec![
        ("specversion".to_owned(), "1.0".to_owned()),
        (
            "id".to_owned(),
            args.id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        ),
        ("source".to_owned(), args.source.clone()),
        ("type".to_owned(), args.ty.clone()),
        (
            "time".to_owned(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
    ];
    for extension in &args.extensions {
        let (name, value) = extension
            .split_once('=')
            .with_context(|| format!("--extension '{extension}': write it as NAME=VALUE"))?;
        attributes.push((name.to_owned(), value.to_owned()));
    }
    let data = match args.data.as_deref() {
        None => None,
        Some(text) => {
            let bytes = match text.strip_prefix('@') {
                Some(file) => std::fs::read(file)
                    .with_context(|| format!("--data @{file}: cannot read the file"))?,
                None => text.as_bytes().to_vec(),
            };
            let content_type = args
                .content_type
                .clone()
                .unwrap_or_else(|| "application/json".into());
            if content_type == "application/json" {
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .context("--data is not JSON (set --content-type for other data)")?;
            }
            attributes.push(("datacontenttype".to_owned(), content_type));
            Some(Bytes::from(bytes))
        }
    };
    Event::new(attributes, data).context("the event is not valid")
}
