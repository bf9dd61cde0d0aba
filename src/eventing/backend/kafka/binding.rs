//! The CloudEvents Kafka protocol binding, shared by the Kafka broker class
//! and KafkaSource.
//!
//! Out (the broker's topic): binary mode. Every attribute is a `ce_{name}`
//! header with its value as UTF-8 bytes, `datacontenttype` is the
//! `content-type` header, the data is the record value, and the
//! `partitionkey` extension is the record key (so one key stays in one
//! partition, in order). Header values are text, so the types of Boolean and
//! Integer extensions (from a structured-mode ingress) travel in one more
//! header, `pilotlight-types`, which other consumers ignore.
//!
//! In: binary mode (a `ce_specversion` header) or structured mode
//! (`content-type: application/cloudevents+json`, the event as JSON in the
//! value). Anything else is not a CloudEvent ([`Decoded::NotAnEvent`]); the
//! KafkaSource maps such records itself.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};

use crate::cloudevent::{
    BindingError, CONTENT_TYPE_STRUCTURED, Event, TYPES_HEADER, ValidationError, parse_http,
};

/// The extension whose value becomes the record key.
pub(crate) const PARTITION_KEY: &str = "partitionkey";
const HEADER_PREFIX: &str = "ce_";
const CONTENT_TYPE_HEADER: &str = "content-type";

/// A record as the binding writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutRecord {
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub value: Option<Bytes>,
}

/// Encodes an event in binary mode.
pub(crate) fn encode(event: &Event) -> OutRecord {
    let mut headers = Vec::with_capacity(8);
    for (name, value) in event.attributes() {
        if name == "datacontenttype" {
            headers.push((CONTENT_TYPE_HEADER.to_owned(), value.to_owned()));
        } else {
            headers.push((format!("{HEADER_PREFIX}{name}"), value.to_owned()));
        }
    }
    if let Some(types) = event.types_header() {
        headers.push((TYPES_HEADER.to_owned(), types));
    }
    OutRecord {
        key: event.attribute(PARTITION_KEY).map(str::to_owned),
        headers,
        value: event.data().cloned(),
    }
}

/// What a record turned out to be.
#[derive(Debug)]
pub(crate) enum Decoded {
    Event(Event),
    /// Neither binary nor structured mode: a plain record.
    NotAnEvent,
}

/// Why a record that claims to be a CloudEvent is not a valid one.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("header {0} is not UTF-8")]
    NotUtf8(String),
    #[error("invalid binary-mode CloudEvent: {0}")]
    Binary(#[from] ValidationError),
    #[error("invalid structured-mode CloudEvent: {0}")]
    Structured(#[from] BindingError),
}

/// Decodes a record's headers and value as a CloudEvent, if it is one.
pub(crate) fn decode<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    value: Option<&[u8]>,
) -> Result<Decoded, DecodeError> {
    let mut attributes = Vec::with_capacity(8);
    let mut content_type = None;
    let mut types = None;
    let mut binary = false;
    for (name, raw) in headers {
        let text = || {
            std::str::from_utf8(raw.unwrap_or_default())
                .map(str::to_owned)
                .map_err(|_| DecodeError::NotUtf8(name.to_owned()))
        };
        if name.eq_ignore_ascii_case(CONTENT_TYPE_HEADER) {
            content_type = Some(text()?);
        } else if name == TYPES_HEADER {
            types = Some(text()?);
        } else if let Some(attribute) = name.strip_prefix(HEADER_PREFIX) {
            binary |= attribute == "specversion";
            attributes.push((attribute.to_owned(), text()?));
        }
    }
    if binary {
        if let Some(content_type) = content_type {
            attributes.push(("datacontenttype".to_owned(), content_type));
        }
        let data = value.filter(|v| !v.is_empty()).map(Bytes::copy_from_slice);
        let attributes = Event::apply_types_header(attributes, types.as_deref());
        return Ok(Decoded::Event(Event::typed(attributes, data)?));
    }
    let structured = content_type.as_deref().is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|media| media.trim().eq_ignore_ascii_case(CONTENT_TYPE_STRUCTURED))
    });
    if !structured {
        return Ok(Decoded::NotAnEvent);
    }
    let mut http_headers = HeaderMap::new();
    http_headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_STRUCTURED),
    );
    let body = Bytes::copy_from_slice(value.unwrap_or_default());
    let (_, mut events) = parse_http(&http_headers, body)?;
    match events.pop() {
        Some(event) => Ok(Decoded::Event(event)),
        None => Ok(Decoded::NotAnEvent),
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudevent::test_event;

    fn headers(record: &OutRecord) -> Vec<(&str, Option<&[u8]>)> {
        record
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), Some(v.as_bytes())))
            .collect()
    }

    #[test]
    fn binary_round_trip_keeps_attributes_and_data_bytes() {
        let mut event = test_event("1", "t", Some(Bytes::from_static(b"{\"a\": 1}")));
        event.set_attribute("datacontenttype", "application/json");
        event.set_attribute("partitionkey", "user-7");
        event.set_attribute("subject", "caf\u{e9}");
        let record = encode(&event);
        assert_eq!(record.key.as_deref(), Some("user-7"));
        assert!(record.headers.contains(&("ce_id".into(), "1".into())));
        assert!(
            record
                .headers
                .contains(&("content-type".into(), "application/json".into()))
        );
        let Decoded::Event(back) = decode(headers(&record), record.value.as_deref()).unwrap()
        else {
            panic!("binary mode is an event");
        };
        assert_eq!(back.data(), event.data());
        for (name, value) in event.attributes() {
            assert_eq!(back.attribute(name), Some(value), "{name}");
        }
    }

    #[test]
    fn binary_mode_keeps_the_types_of_boolean_and_integer_extensions() {
        let event = crate::cloudevent::test_typed_event("1");
        let record = encode(&event);
        assert!(record.headers.contains(&("ce_flag".into(), "true".into())));
        assert!(record.headers.contains(&(
            "pilotlight-types".into(),
            "flag=boolean,count=integer".into()
        )));
        let Decoded::Event(back) = decode(headers(&record), None).expect("decodes") else {
            panic!("binary mode is an event");
        };
        assert_eq!(back, event);
    }

    #[test]
    fn structured_mode_is_an_event() {
        let value = br#"{"specversion":"1.0","id":"s1","source":"/s","type":"t","data":{"x":1}}"#;
        let decoded = decode(
            [(
                "content-type",
                Some(&b"application/cloudevents+json; charset=utf-8"[..]),
            )],
            Some(value),
        )
        .unwrap();
        let Decoded::Event(event) = decoded else {
            panic!("structured mode is an event")
        };
        assert_eq!(event.id(), "s1");
        assert_eq!(event.data().map(|d| &d[..]), Some(&b"{\"x\":1}"[..]));
    }

    #[test]
    fn a_plain_record_is_not_an_event() {
        let decoded = decode([("trace", Some(&b"x"[..]))], Some(b"hello")).unwrap();
        assert!(matches!(decoded, Decoded::NotAnEvent));
        let json = decode(
            [("content-type", Some(&b"application/json"[..]))],
            Some(b"{}"),
        );
        assert!(matches!(json.unwrap(), Decoded::NotAnEvent));
    }

    #[test]
    fn an_invalid_binary_event_is_an_error() {
        let missing_id = decode(
            [
                ("ce_specversion", Some(&b"1.0"[..])),
                ("ce_source", Some(&b"/s"[..])),
                ("ce_type", Some(&b"t"[..])),
            ],
            None,
        );
        assert!(matches!(missing_id, Err(DecodeError::Binary(_))));
    }
}
