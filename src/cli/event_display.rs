//! `pilotlight event-display`: a sink that prints every CloudEvent it receives,
//! in the format of Knative's event_display. It parses with the CloudEvents
//! SDK, so it also checks that what pilotlight sends is what the SDK reads.

use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use clap::Args;
use cloudevents::{AttributesReader, Data};

#[derive(Debug, Args)]
pub struct EventDisplayArgs {
    /// Address to listen on (default: 127.0.0.1 and $PORT, else 8080).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

pub(crate) async fn run(args: EventDisplayArgs) -> anyhow::Result<()> {
    let address = match args.listen {
        Some(address) => address,
        None => {
            let port = std::env::var("PORT")
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(8080);
            SocketAddr::from(([127, 0, 0, 1], port))
        }
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    eprintln!(
        "event-display listening on http://{}",
        listener.local_addr()?
    );
    let app = axum::Router::new().fallback(receive);
    axum::serve(listener, app).await.context("serving")
}

async fn receive(headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    match cloudevents::binding::http::to_event(&headers, body.to_vec()) {
        Ok(event) => {
            println!("{}", render(&event));
            (StatusCode::ACCEPTED, String::new())
        }
        Err(e) => {
            eprintln!("not a CloudEvent: {e}");
            (StatusCode::BAD_REQUEST, format!("not a CloudEvent: {e}\n"))
        }
    }
}

/// Knative's event_display output for one event.
pub(crate) fn render(event: &cloudevents::Event) -> String {
    let mut out = String::from("☁️  cloudevents.Event\nContext Attributes,\n");
    for (name, value) in event.iter_attributes() {
        let _ = writeln!(out, "  {name}: {value}");
    }
    let mut extensions: Vec<_> = event.iter_extensions().collect();
    if !extensions.is_empty() {
        extensions.sort_by_key(|(name, _)| *name);
        out.push_str("Extensions,\n");
        for (name, value) in extensions {
            let _ = writeln!(out, "  {name}: {value}");
        }
    }
    if let Some(data) = event.data() {
        out.push_str("Data,\n");
        let text = match data {
            Data::Json(json) => serde_json::to_string_pretty(json).unwrap_or_default(),
            Data::String(s) => s.clone(),
            Data::Binary(bytes) => match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(json)
                    if event
                        .datacontenttype()
                        .is_some_and(crate::cloudevent::is_json_media_type) =>
                {
                    serde_json::to_string_pretty(&json).unwrap_or_default()
                }
                _ => String::from_utf8_lossy(bytes).into_owned(),
            },
        };
        for line in text.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}
