//! `pilotlight cesql [--event FILE|-] [--] 'EXPR'`: evaluates a CESQL expression
//! against an event, with the same parser and evaluator Triggers use, and
//! prints `{"result": ..., "error": null | {"kind": ..., "message": ...}}`.
//! Exit 0 when the expression evaluated (even with an evaluation error), 2
//! when it does not parse.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use http::{HeaderMap, HeaderValue, header};

use crate::cesql::ast::Value;
use crate::cesql::{eval, parser};
use crate::cloudevent::{Event, parse_http};

#[derive(Debug, Args)]
pub struct CesqlArgs {
    /// The expression, e.g. "type LIKE 'com.example.%' AND EXISTS subject".
    /// One that starts with '-' (such as "-5 < 0") is taken as is; after
    /// `--` anything is, even "--5".
    #[arg(allow_hyphen_values = true)]
    pub expression: String,
    /// The event as CloudEvents JSON (structured mode), from a file or `-`
    /// for standard input. Default: a minimal valid event.
    #[arg(long)]
    pub event: Option<PathBuf>,
}

/// Exit code for an expression that does not parse.
const PARSE_ERROR_EXIT: u8 = 2;

pub(crate) fn run(args: CesqlArgs) -> anyhow::Result<()> {
    let event = load_event(args.event.as_deref())?;
    let expression = match parser::parse(&args.expression) {
        Ok(expression) => expression,
        Err(e) => {
            let output = serde_json::json!({
                "result": null,
                "error": { "kind": "parse", "message": e.to_string() },
            });
            println!("{output}");
            // The documented exit code for a parse error; nothing is left to
            // clean up in this command.
            std::process::exit(i32::from(PARSE_ERROR_EXIT));
        }
    };
    let evaluation = eval::evaluate(&expression, &event);
    let error = evaluation
        .error
        .map(|e| serde_json::json!({ "kind": e.kind.as_str(), "message": e.message }));
    println!(
        "{}",
        serde_json::json!({ "result": json_value(&evaluation.value), "error": error })
    );
    Ok(())
}

fn json_value(value: &Value) -> serde_json::Value {
    match value {
        Value::Boolean(b) => (*b).into(),
        Value::Integer(i) => (*i).into(),
        Value::String(s) => s.as_ref().into(),
    }
}

fn load_event(path: Option<&std::path::Path>) -> anyhow::Result<Event> {
    let Some(path) = path else {
        return Event::new(
            vec![
                ("specversion".into(), "1.0".into()),
                ("id".into(), "1".into()),
                ("source".into(), "/pilotlight/cesql".into()),
                ("type".into(), "dev.pilotlight.cesql".into()),
            ],
            None,
        )
        .context("building the default event");
    };
    let mut text = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut text)
            .context("reading the event from standard input")?;
    } else {
        text = std::fs::read(path)
            .with_context(|| format!("cannot read the event file {} (--event)", path.display()))?;
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/cloudevents+json"),
    );
    let (_, mut events) = parse_http(&headers, Bytes::from(text)).map_err(|e| {
        anyhow::anyhow!("--event {}: not a CloudEvent in JSON: {e}", path.display())
    })?;
    events
        .pop()
        .with_context(|| format!("--event {}: no event in the file", path.display()))
}
