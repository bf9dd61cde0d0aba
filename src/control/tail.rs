//! Following a broker's events over the admin API, for `pilotlight tail`
//! and the console:
//!
//! `GET /api/v1/brokers/{namespace}/{name}/events` (a channel's store:
//! `GET /api/v1/channels/{namespace}/{name}/events`), with the query
//! parameters
//! - `since`: start in the past, with the oldest event the backend still
//!   holds that was stored at or after it: a duration back from now or an
//!   RFC 3339 time, as replay takes it (`super::since`). Without it, the tail starts with
//!   the next event stored.
//! - `filter`: a CESQL expression; only events it is true for are sent.
//! - `buffer`: how many events are held for a client that reads slower
//!   than they come (1 to 65536, default 1024).
//! - `rate`: at most this many events a second (1 to 100000); the others
//!   are reported as skipped, at most once a second. The console asks
//!   for a few dozen: a browser shows a sample of a busy broker, not all of
//!   it.
//!
//! It answers `200` with `text/event-stream` (Server-Sent Events):
//! - first a comment `: tailing {namespace}/{name}`: the tail is open, every
//!   event stored from now on will come;
//! - each event as one `data:` line, the event in structured-mode JSON
//!   (`application/cloudevents+json`);
//! - `event: skipped` with `data: {"skipped": N}`: N events were not sent,
//!   because the client read too slowly and the buffer was full, because
//!   they were over the `rate`, or because the backend no longer had them
//!   (retention; the memory backend drops events every trigger is done
//!   with);
//! - `event: end` with `data: {"reason": "..."}` when the broker stopped
//!   (deleted, or its backend changed); the response then ends;
//! - a `: keep-alive` comment every 15 s.
//!
//! Refusals are text: `400` for a `since`, `filter` or `buffer` that does
//! not parse (a CESQL error names its line and column), `404` for an unknown
//! broker, `409` for a backend that cannot be tailed (RabbitMQ, with why),
//! `503` for a broker that is not ready or a backend that cannot open a
//! reader now.
//!
//! A tail never slows the broker: the backend's reader is its own (see
//! `Backend::tail`) and a task moves what it reads into a bounded buffer
//! without ever waiting for the client: what does not fit is counted and
//! reported as skipped. Tails are independent: each request has its own
//! reader, buffer and task, which end when the client goes away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::admin::AdminState;
use super::since::parse_since;
use crate::api::ObjectKey;
use crate::cesql::{parser, program::Program};
use crate::cloudevent::{Event, encode_structured};
use crate::eventing::backend::{TailError, TailItem, TailStart, TailStream};
use crate::eventing::broker::BrokerEntry;
use crate::eventing::channel;

/// Events held for a slow client when the request does not say.
const DEFAULT_BUFFER: usize = 1024;
const MAX_BUFFER: usize = 65536;
const MAX_RATE: u32 = 100_000;
/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
pub(crate) struct TailQuery {
    since: Option<String>,
    filter: Option<String>,
    buffer: Option<String>,
    rate: Option<String>,
}

/// `GET /api/v1/brokers/{namespace}/{name}/events`.
pub(crate) async fn broker_events(
    State(state): State<AdminState>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<TailQuery>,
) -> Response {
    tail(&state, &namespace, &name, "broker", query).await
}

/// `GET /api/v1/channels/{namespace}/{name}/events`: the channel's store.
pub(crate) async fn channel_events(
    State(state): State<AdminState>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<TailQuery>,
) -> Response {
    let store = channel::store_key(&ObjectKey::new(namespace, name));
    tail(&state, &store.namespace, &store.name, "channel", query).await
}

async fn tail(
    state: &AdminState,
    namespace: &str,
    name: &str,
    what: &str,
    query: TailQuery,
) -> Response {
    let from = match query.since.as_deref().map(|s| parse_since(s, Utc::now())) {
        None => TailStart::Now,
        Some(Ok(since)) => TailStart::Since(since),
        Some(Err(e)) => return refuse(StatusCode::BAD_REQUEST, format!("since: {e}")),
    };
    let filter = match query.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        None => None,
        Some(text) => match parser::parse(text) {
            Ok(expr) => Some(Program::new(expr)),
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("filter: not a CESQL expression: {e}"),
                );
            }
        },
    };
    let buffer = match query.buffer.as_deref().map(str::parse::<usize>) {
        None => DEFAULT_BUFFER,
        Some(Ok(n)) if (1..=MAX_BUFFER).contains(&n) => n,
        Some(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("buffer: a number of events from 1 to {MAX_BUFFER}"),
            );
        }
    };
    let sampler = match query.rate.as_deref().map(str::parse::<u32>) {
        None => None,
        Some(Ok(n)) if (1..=MAX_RATE).contains(&n) => Some(Sampler::new(n)),
        Some(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("rate: a number of events a second from 1 to {MAX_RATE}"),
            );
        }
    };
    let broker = match state.control.broker(namespace, name) {
        Some(BrokerEntry::Ready(broker)) => broker,
        Some(BrokerEntry::NotReady { reason }) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{what} {namespace}/{name} is not ready: {reason}"),
            );
        }
        None => {
            let shown = name.strip_suffix(channel::STORE_SUFFIX).unwrap_or(name);
            return refuse(
                StatusCode::NOT_FOUND,
                format!("no {what} {namespace}/{shown} is running"),
            );
        }
    };
    let stream = match broker.backend.tail(from).await {
        Ok(stream) => stream,
        Err(e @ TailError::Unsupported(_)) => return refuse(StatusCode::CONFLICT, e.to_string()),
        Err(e @ TailError::Unavailable(_)) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{what} {namespace}/{name}: cannot open a tail: {e}"),
            );
        }
    };
    let (tx, rx) = mpsc::channel(buffer);
    tokio::spawn(pump(stream, filter, sampler, tx));
    let opened = Bytes::from(format!(": tailing {namespace}/{name}\n\n"));
    let body = futures::stream::unfold((Some(opened), rx), |(first, mut rx)| async move {
        if let Some(first) = first {
            return Some((Ok::<_, std::convert::Infallible>(first), (None, rx)));
        }
        let frame = match tokio::time::timeout(KEEP_ALIVE, rx.recv()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return None,
            Err(_) => Frame::KeepAlive,
        };
        Some((Ok(frame.encode()), (None, rx)))
    });
    (
        [
            (http::header::CONTENT_TYPE, "text/event-stream"),
            (http::header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

fn refuse(status: StatusCode, message: String) -> Response {
    (status, format!("{message}\n")).into_response()
}

/// What goes to the client.
enum Frame {
    Event(Arc<Event>),
    Skipped(u64),
    End(&'static str),
    KeepAlive,
}

impl Frame {
    fn encode(&self) -> Bytes {
        match self {
            Frame::Event(event) => {
                let mut json = encode_structured(event);
                if json.iter().any(|b| *b == b'\n' || *b == b'\r') {
                    // JSON data embedded as sent, with its line breaks: one
                    // line per event, as the contract says.
                    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&json)
                        && let Ok(compact) = serde_json::to_vec(&value)
                    {
                        json = compact;
                    }
                }
                let mut out = Vec::with_capacity(json.len() + 8);
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&json);
                out.extend_from_slice(b"\n\n");
                Bytes::from(out)
            }
            Frame::Skipped(n) => {
                Bytes::from(format!("event: skipped\ndata: {{\"skipped\":{n}}}\n\n"))
            }
            Frame::End(reason) => Bytes::from(format!(
                "event: end\ndata: {}\n\n",
                serde_json::json!({ "reason": reason })
            )),
            Frame::KeepAlive => Bytes::from_static(b": keep-alive\n\n"),
        }
    }
}

/// Lets through at most `per_second` events in each second.
struct Sampler {
    per_second: u32,
    window: Instant,
    sent: u32,
    /// Events held back in this window, reported once it ends.
    held: u64,
}

impl Sampler {
    fn new(per_second: u32) -> Self {
        Sampler {
            per_second,
            window: Instant::now(),
            sent: 0,
            held: 0,
        }
    }

    fn window_end(&self) -> Instant {
        self.window + Duration::from_secs(1)
    }

    /// Whether the event now may go; if not, it is held.
    fn admits(&mut self, now: Instant) -> bool {
        if now >= self.window_end() {
            self.window = now;
            self.sent = 0;
        }
        if self.sent < self.per_second {
            self.sent += 1;
            true
        } else {
            self.held += 1;
            false
        }
    }
}

/// Moves what the backend reads into the client's buffer, never waiting for
/// the client: an event that does not fit is counted, and the count is sent
/// as soon as there is room; with a `rate`, events over it are counted and
/// the count sent when their second ends. Ends when the client goes away
/// or the backend stops.
async fn pump(
    mut stream: Box<dyn TailStream>,
    filter: Option<Program>,
    mut sampler: Option<Sampler>,
    tx: mpsc::Sender<Frame>,
) {
    let mut skipped: u64 = 0;
    loop {
        let held = sampler
            .as_ref()
            .filter(|s| s.held > 0)
            .map(Sampler::window_end);
        let item = tokio::select! {
            item = stream.next() => item,
            permit = tx.reserve(), if skipped > 0 => {
                match permit {
                    Ok(permit) => {
                        permit.send(Frame::Skipped(skipped));
                        skipped = 0;
                        continue;
                    }
                    Err(_) => return,
                }
            }
            () = tokio::time::sleep_until(held.unwrap_or_else(Instant::now).into()), if held.is_some() => {
                if let Some(sampler) = sampler.as_mut() {
                    skipped += std::mem::take(&mut sampler.held);
                }
                continue;
            }
            _ = tx.closed() => return,
        };
        let event = match item {
            None => {
                skipped += sampler.as_mut().map_or(0, |s| std::mem::take(&mut s.held));
                if skipped > 0 && tx.send(Frame::Skipped(skipped)).await.is_err() {
                    return;
                }
                let _ = tx.send(Frame::End("the broker stopped")).await;
                return;
            }
            Some(TailItem::Skipped(n)) => {
                skipped += n;
                continue;
            }
            Some(TailItem::Event(event)) => event,
        };
        if let Some(filter) = &filter
            && !filter.matches(&event, |_, _| {})
        {
            continue;
        }
        if let Some(sampler) = sampler.as_mut() {
            if !sampler.admits(Instant::now()) {
                continue;
            }
            // A new second: what the last one held back is reported first.
            skipped += std::mem::take(&mut sampler.held);
        }
        if skipped > 0 {
            match tx.try_send(Frame::Skipped(skipped)) {
                Ok(()) => skipped = 0,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    skipped += 1;
                    continue;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        match tx.try_send(Frame::Event(event)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => skipped += 1,
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sampler_lets_through_its_rate_each_second_and_holds_the_rest() {
        let start = Instant::now();
        let mut sampler = Sampler::new(2);
        sampler.window = start;
        let admitted: Vec<bool> = (0..4).map(|_| sampler.admits(start)).collect();
        assert_eq!(admitted, [true, true, false, false]);
        assert_eq!(sampler.held, 2);
        assert!(sampler.admits(start + Duration::from_millis(1000)));
        assert!(sampler.admits(start + Duration::from_millis(1500)));
        assert!(!sampler.admits(start + Duration::from_millis(1900)));
    }
}
