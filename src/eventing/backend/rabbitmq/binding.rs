//! The CloudEvents AMQP protocol binding as RabbitMQ carries it.
//!
//! Binary mode (what pilotlight publishes): each attribute is an AMQP header
//! named `cloudEvents:{attribute}` (the binding spec's prefix; `cloudEvents_`,
//! the spec's older spelling, is read too), `datacontenttype` is the
//! `content-type` property, and the body is the data. The headers exchange of
//! a RabbitMQBroker matches on these headers, so a trigger's exact filters
//! are evaluated by RabbitMQ.
//!
//! Structured mode (read only): content type `application/cloudevents+json`
//! and the event as JSON in the body, parsed by the HTTP binding's code.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_TYPE, HeaderValue};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::cloudevent::{
    AttributeType, BindingError, CONTENT_TYPE_STRUCTURED, CONTEXT_ATTRIBUTES, Event, TYPES_HEADER,
    parse_http,
};

/// The header prefix of a CloudEvents attribute.
pub(crate) const HEADER_PREFIX: &str = "cloudEvents:";
/// The prefix of earlier drafts of the AMQP binding, accepted on input.
const LEGACY_HEADER_PREFIX: &str = "cloudEvents_";
/// AMQP delivery mode 2: the message is written to disk by a durable queue.
const PERSISTENT: u8 = 2;

/// The header an attribute travels in.
pub(crate) fn header_name(attribute: &str) -> String {
    format!("{HEADER_PREFIX}{attribute}")
}

/// An event as an AMQP message in binary mode: (properties, body), the body
/// borrowed from the event (lapin copies it into its frame).
pub fn encode(event: &Event) -> (BasicProperties, &[u8]) {
    let mut headers = FieldTable::default();
    let mut properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
    for (name, value) in event.attributes() {
        if name == "datacontenttype"
            && let Ok(content_type) = ShortString::try_new(value)
        {
            properties = properties.with_content_type(content_type);
            continue;
        }
        // Attribute names are at most 20 characters, so the key fits.
        if let Ok(key) = ShortString::try_new(header_name(name)) {
            headers.insert(key, AMQPValue::LongString(LongString::from(value)));
        }
    }
    // Values stay text, which the exchange's bindings match on; the types of
    // Boolean and Integer extensions go beside them.
    if let Some(types) = event.types_header() {
        headers.insert(
            ShortString::from(TYPES_HEADER),
            AMQPValue::LongString(LongString::from(types)),
        );
    }
    let body = event.data().map_or(&[][..], |d| &d[..]);
    (properties.with_headers(headers), body)
}

/// Bytes of the AMQP content-header frame that [`encode`] gives `event`,
/// counted from above: AMQP carries every attribute in that one frame, and
/// a frame over the connection's `frame_max` makes RabbitMQ close the whole
/// connection, so an event whose attributes do not fit must be refused
/// before it is published.
pub(crate) fn header_frame_bytes(event: &Event) -> usize {
    // Frame header and end (8), class, weight, body size and flags (14),
    // delivery mode (1), the table's length (4).
    const FIXED: usize = 8 + 14 + 1 + 4;
    event
        .attributes()
        .map(|(name, value)| {
            if name == "datacontenttype" {
                1 + value.len()
            } else {
                // Key length, key, value type, value length, value.
                1 + HEADER_PREFIX.len() + name.len() + 1 + 4 + value.len()
            }
        })
        .sum::<usize>()
        + event
            .types_header()
            .map_or(0, |types| 1 + TYPES_HEADER.len() + 1 + 4 + types.len())
        + FIXED
}

/// Why a message is not a CloudEvent this binding can read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    /// No `cloudEvents:specversion` header and not structured: a plain message.
    #[error("the message is not a CloudEvent")]
    NotAnEvent,
    #[error("header '{header}': {reason}")]
    BadHeader { header: String, reason: String },
    #[error("{0}")]
    Invalid(#[from] BindingError),
}

/// Reads a CloudEvent from an AMQP message (binary or structured mode).
/// `body` is the message's own (lapin hands it over owned), kept as the
/// event's data without a copy.
pub(crate) fn decode(properties: &BasicProperties, body: Bytes) -> Result<Event, DecodeError> {
    let content_type = properties.content_type().as_ref().map(|c| c.as_str());
    let structured = content_type.is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|media| media.trim().eq_ignore_ascii_case(CONTENT_TYPE_STRUCTURED))
    });
    if structured {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE_STRUCTURED),
        );
        let (_, mut events) = parse_http(&headers, body)?;
        return events.pop().ok_or(DecodeError::NotAnEvent);
    }
    decode_binary(properties, content_type, body)
}

fn decode_binary(
    properties: &BasicProperties,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<Event, DecodeError> {
    let Some(headers) = properties.headers() else {
        return Err(DecodeError::NotAnEvent);
    };
    let mut attributes = Vec::with_capacity(headers.inner().len() + 1);
    let mut types = None;
    for (key, value) in headers {
        let key = key.as_str();
        if key == TYPES_HEADER {
            types = header_text(value).ok().map(|(text, _)| text);
            continue;
        }
        let Some(name) = key
            .strip_prefix(HEADER_PREFIX)
            .or_else(|| key.strip_prefix(LEGACY_HEADER_PREFIX))
        else {
            continue;
        };
        let (text, ty) = header_text(value).map_err(|reason| DecodeError::BadHeader {
            header: key.to_owned(),
            reason: reason.into(),
        })?;
        // The spec's context attributes are Strings whatever AMQP type a
        // client gave them.
        let ty = if CONTEXT_ATTRIBUTES.contains(&name) {
            AttributeType::String
        } else {
            ty
        };
        attributes.push((name.to_owned(), text, ty));
    }
    if !attributes.iter().any(|(n, _, _)| n == "specversion") {
        return Err(DecodeError::NotAnEvent);
    }
    if let Some(content_type) = content_type
        && !attributes.iter().any(|(n, _, _)| n == "datacontenttype")
    {
        attributes.push((
            "datacontenttype".to_owned(),
            content_type.to_owned(),
            AttributeType::String,
        ));
    }
    // pilotlight's own messages carry text and name the typed ones apart.
    if let Some(types) = types {
        let text = attributes.into_iter().map(|(n, v, _)| (n, v)).collect();
        attributes = Event::apply_types_header(text, Some(&types));
    }
    let data = (!body.is_empty()).then_some(body);
    Event::typed(attributes, data).map_err(|e| DecodeError::Invalid(BindingError::Invalid(e)))
}

/// An AMQP header value as attribute text with its CloudEvents type, for the
/// types other clients use for CloudEvents attributes: the AMQP binding maps
/// Boolean to boolean and Integer to long, and an integer outside 32 bits can
/// only be a String. The error says what is wrong with the value: a
/// client that sent bytes that are not UTF-8 needs to hear that, not that
/// strings are allowed (the property tests found the one message for every
/// case misleading).
fn header_text(value: &AMQPValue) -> Result<(String, AttributeType), &'static str> {
    let integer = |n: i64| match i32::try_from(n) {
        Ok(i) => (i.to_string(), AttributeType::Integer),
        Err(_) => (n.to_string(), AttributeType::String),
    };
    Ok(match value {
        AMQPValue::LongString(s) => (
            String::from_utf8(s.as_bytes().to_vec())
                .map_err(|_| "the string is not valid UTF-8")?,
            AttributeType::String,
        ),
        AMQPValue::ShortString(s) => (s.as_str().to_owned(), AttributeType::String),
        AMQPValue::Boolean(b) => (b.to_string(), AttributeType::Boolean),
        AMQPValue::ShortShortInt(n) => integer(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => integer(i64::from(*n)),
        AMQPValue::ShortInt(n) => integer(i64::from(*n)),
        AMQPValue::ShortUInt(n) => integer(i64::from(*n)),
        AMQPValue::LongInt(n) => integer(i64::from(*n)),
        AMQPValue::LongUInt(n) => integer(i64::from(*n)),
        AMQPValue::LongLongInt(n) => integer(*n),
        AMQPValue::Timestamp(t) => (
            i64::try_from(*t)
                .ok()
                .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                .ok_or("the timestamp is out of range")?
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            AttributeType::String,
        ),
        _ => {
            return Err(
                "a CloudEvents attribute must be a string, an integer, a boolean or a timestamp",
            );
        }
    })
}

/// The headers-exchange binding arguments for exact attribute matches: every
/// pair must be present with that value (`x-match: all`); no pairs bind
/// everything.
pub fn binding_arguments(exact: &[(String, String)]) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-match"),
        AMQPValue::LongString(LongString::from("all")),
    );
    for (attribute, value) in exact {
        if let Ok(key) = ShortString::try_new(header_name(attribute)) {
            arguments.insert(key, AMQPValue::LongString(LongString::from(value.as_str())));
        }
    }
    arguments
}

#[cfg(test)]
mod properties;
