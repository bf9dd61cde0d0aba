//! The CloudEvents HTTP protocol binding (v1.0): binary, structured and batched
//! modes in, binary and structured out.
//!
//! pilotlight parses the binding itself rather than through the SDK's extractor
//! so that each error names the header or attribute at fault, data bytes are kept
//! unchanged, and batches are supported (the SDK has no batch mode).

use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header::CONTENT_TYPE};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{AttributeType, CONTEXT_ATTRIBUTES, Event, ValidationError};

pub(crate) const CONTENT_TYPE_STRUCTURED: &str = "application/cloudevents+json";
pub(super) const CONTENT_TYPE_BATCH: &str = "application/cloudevents-batch+json";

/// Characters the HTTP binding percent-encodes in `ce-` header values (besides
/// every non-ASCII byte, which the crate always encodes).
const HEADER_VALUE_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Why an HTTP request or response does not carry valid CloudEvents.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    #[error(
        "no CloudEvent in the request: binary mode needs a 'ce-specversion' header, structured mode the content type '{CONTENT_TYPE_STRUCTURED}'"
    )]
    NotAnEvent,
    #[error("header '{header}': {reason}")]
    BadHeader { header: String, reason: String },
    #[error("{0}")]
    Invalid(ValidationError),
    #[error("body is not a structured CloudEvent: {0}")]
    BadJson(String),
    #[error("attribute '{attribute}' must be {expected}, not {found}")]
    BadAttributeType {
        attribute: String,
        expected: &'static str,
        found: String,
    },
    #[error("event has both 'data' and 'data_base64': set only one")]
    DataAndBase64,
    #[error("attribute 'data_base64': not valid base64 ({0})")]
    BadBase64(String),
    #[error("unsupported event format '{0}': only JSON ({CONTENT_TYPE_STRUCTURED}) is supported")]
    UnsupportedFormat(String),
    #[error("batch is empty")]
    EmptyBatch,
    #[error("batch event {index}: {source}")]
    InBatch {
        index: usize,
        source: Box<BindingError>,
    },
}

impl From<ValidationError> for BindingError {
    fn from(e: ValidationError) -> Self {
        BindingError::Invalid(e)
    }
}

/// How an event arrived: the three modes of the HTTP binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Structured,
    Batch,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Binary => "binary",
            Mode::Structured => "structured",
            Mode::Batch => "batch",
        })
    }
}

/// Parses the CloudEvents an HTTP message carries. A batch is all-or-nothing:
/// the first invalid event fails it, and the error names its index.
pub fn parse_http(headers: &HeaderMap, body: Bytes) -> Result<(Mode, Vec<Event>), BindingError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media_type == CONTENT_TYPE_BATCH {
        return parse_batch(&body).map(|events| (Mode::Batch, events));
    }
    if media_type == CONTENT_TYPE_STRUCTURED {
        return parse_structured(&body).map(|event| (Mode::Structured, vec![event]));
    }
    if let Some(format) = media_type.strip_prefix("application/cloudevents+") {
        return Err(BindingError::UnsupportedFormat(format.to_owned()));
    }
    parse_binary(headers, content_type, body).map(|event| (Mode::Binary, vec![event]))
}

/// True when an HTTP message looks like it carries a CloudEvent at all (used to
/// tell a reply event from a plain 200 response).
pub(crate) fn carries_event(headers: &HeaderMap) -> bool {
    headers.contains_key("ce-specversion")
        || headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().starts_with("application/cloudevents"))
}

fn parse_binary(
    headers: &HeaderMap,
    content_type: &str,
    body: Bytes,
) -> Result<Event, BindingError> {
    if !headers.contains_key("ce-specversion") {
        return Err(BindingError::NotAnEvent);
    }
    let mut attributes = Vec::with_capacity(8);
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let raw = value.to_str().map_err(|_| BindingError::BadHeader {
            header: name.to_string(),
            reason: "value is not visible ASCII; percent-encode it".into(),
        })?;
        let decoded =
            percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| BindingError::BadHeader {
                    header: name.to_string(),
                    reason: "percent-encoded value is not UTF-8".into(),
                })?;
        attributes.push((attr.to_owned(), decoded.into_owned()));
    }
    if !content_type.is_empty() {
        attributes.push(("datacontenttype".to_owned(), content_type.to_owned()));
    }
    let data = (!body.is_empty()).then_some(body);
    Event::new(attributes, data).map_err(|e| match e {
        // In binary mode the user wrote a header, so name the header.
        ValidationError::BadName(n) => BindingError::BadHeader {
            header: format!("ce-{n}"),
            reason: "attribute names are 1 to 20 characters of a-z and 0-9".into(),
        },
        other => BindingError::Invalid(other),
    })
}

fn parse_structured(body: &[u8]) -> Result<Event, BindingError> {
    let object: OrderedObject =
        serde_json::from_slice(body).map_err(|e| BindingError::BadJson(e.to_string()))?;
    event_from_object(object)
}

fn parse_batch(body: &[u8]) -> Result<Vec<Event>, BindingError> {
    let objects: Vec<OrderedObject> = serde_json::from_slice(body)
        .map_err(|e| BindingError::BadJson(format!("a batch is a JSON array of events: {e}")))?;
    if objects.is_empty() {
        return Err(BindingError::EmptyBatch);
    }
    objects
        .into_iter()
        .enumerate()
        .map(|(index, object)| {
            event_from_object(object).map_err(|e| BindingError::InBatch {
                index,
                source: Box::new(e),
            })
        })
        .collect()
}

/// A JSON object as (key, raw value) pairs in document order.
struct OrderedObject(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    entries.push(entry);
                }
                Ok(OrderedObject(entries))
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

fn event_from_object(object: OrderedObject) -> Result<Event, BindingError> {
    let mut attributes = Vec::with_capacity(object.0.len());
    let mut data: Option<Box<RawValue>> = None;
    let mut data_base64: Option<Box<RawValue>> = None;
    for (key, value) in object.0 {
        match key.as_str() {
            "data" => data = Some(value),
            "data_base64" => data_base64 = Some(value),
            _ => {
                if let Some((text, ty)) = json_attribute(&key, &value)? {
                    attributes.push((key, text, ty));
                }
            }
        }
    }
    let data = match (data, data_base64) {
        (Some(d), Some(b)) if d.get() != "null" && b.get() != "null" => {
            return Err(BindingError::DataAndBase64);
        }
        (_, Some(b)) if b.get() != "null" => Some(decode_base64(&b)?),
        (Some(d), _) if d.get() != "null" => Some(json_data_bytes(&attributes, &d)),
        _ => None,
    };
    Ok(Event::typed(attributes, data)?)
}

/// An attribute of the JSON format with its CloudEvents type; `None` for
/// JSON null (an unset attribute). The spec's context attributes are JSON
/// strings (`time` one in RFC 3339, which validation checks); an extension is
/// a string, a boolean or an integer, since CloudEvents has no other types
/// (no floats, objects or arrays).
fn json_attribute(
    key: &str,
    value: &RawValue,
) -> Result<Option<(String, AttributeType)>, BindingError> {
    use serde_json::Value;
    let parsed: Value =
        serde_json::from_str(value.get()).map_err(|e| BindingError::BadJson(e.to_string()))?;
    let wrong = |expected| BindingError::BadAttributeType {
        attribute: key.to_owned(),
        expected,
        found: json_kind(&parsed),
    };
    if CONTEXT_ATTRIBUTES.contains(&key) {
        return match parsed {
            Value::String(s) => Ok(Some((s, AttributeType::String))),
            Value::Null => Ok(None),
            _ => Err(wrong("a JSON string")),
        };
    }
    const EXTENSION: &str = "a string, a boolean or an integer from -2147483648 to 2147483647";
    match &parsed {
        Value::String(s) => Ok(Some((s.clone(), AttributeType::String))),
        Value::Bool(b) => Ok(Some((b.to_string(), AttributeType::Boolean))),
        Value::Number(n) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
            Some(i) => Ok(Some((i.to_string(), AttributeType::Integer))),
            None => Err(wrong(EXTENSION)),
        },
        Value::Null => Ok(None),
        _ => Err(wrong(EXTENSION)),
    }
}

/// How an error message names a JSON value that has the wrong type.
fn json_kind(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn decode_base64(value: &RawValue) -> Result<Bytes, BindingError> {
    let text: String = serde_json::from_str(value.get())
        .map_err(|_| BindingError::BadBase64("expected a JSON string".into()))?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map(Bytes::from)
        .map_err(|e| BindingError::BadBase64(e.to_string()))
}

/// The data of a structured event: JSON data keeps its exact bytes; a JSON
/// string under a non-JSON content type is that string's text.
fn json_data_bytes(attributes: &[(String, String, AttributeType)], data: &RawValue) -> Bytes {
    let content_type = attributes
        .iter()
        .find(|(n, _, _)| n == "datacontenttype")
        .map(|(_, v, _)| v.as_str());
    if !content_type.is_none_or(is_json_media_type)
        && let Ok(text) = serde_json::from_str::<String>(data.get())
    {
        return Bytes::from(text);
    }
    Bytes::copy_from_slice(data.get().as_bytes())
}

/// `application/json`, `text/json` and any `+json` suffix type.
pub(crate) fn is_json_media_type(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/json")
        || media.eq_ignore_ascii_case("text/json")
        || media.to_ascii_lowercase().ends_with("+json")
}

/// Writes the event's attributes as `ce-` headers (and `content-type`), as the
/// binary mode of the HTTP binding sends them. The body is [`Event::data`].
pub(crate) fn encode_binary_headers(event: &Event, headers: &mut HeaderMap) {
    for (name, value) in event.attributes() {
        if name == "datacontenttype" {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(CONTENT_TYPE, v);
            }
            continue;
        }
        // Names were validated as [a-z0-9]{1,20} and values are ASCII once
        // encoded, so both conversions succeed; skipping keeps this infallible.
        if let (Some(n), Some(v)) = (header_name(name), header_value(value)) {
            headers.insert(n, v);
        }
    }
}

/// `ce-{name}`, without parsing for the attributes every event has.
fn header_name(attribute: &str) -> Option<HeaderName> {
    Some(match attribute {
        "specversion" => HeaderName::from_static("ce-specversion"),
        "id" => HeaderName::from_static("ce-id"),
        "source" => HeaderName::from_static("ce-source"),
        "type" => HeaderName::from_static("ce-type"),
        "time" => HeaderName::from_static("ce-time"),
        "subject" => HeaderName::from_static("ce-subject"),
        "knativearrivaltime" => HeaderName::from_static("ce-knativearrivaltime"),
        other => return HeaderName::from_bytes(format!("ce-{other}").as_bytes()).ok(),
    })
}

/// The value as the binding sends it: unchanged when nothing needs escaping
/// (the common case), percent-encoded otherwise.
fn header_value(value: &str) -> Option<HeaderValue> {
    let plain = value
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'%');
    if plain {
        return HeaderValue::from_str(value).ok();
    }
    HeaderValue::from_str(&utf8_percent_encode(value, HEADER_VALUE_ESCAPES).to_string()).ok()
}

/// Encodes the event as one structured-mode JSON document: attributes in
/// arrival order, Boolean and Integer attributes as JSON booleans and
/// numbers, JSON data as the bytes it arrived as (not re-encoded, so a
/// signature over it still holds).
pub(crate) fn encode_structured(event: &Event) -> Vec<u8> {
    let mut document = Vec::with_capacity(256 + event.data().map_or(0, |d| d.len()));
    let member = |document: &mut Vec<u8>, name: &str, value: &[u8]| {
        document.push(if document.is_empty() { b'{' } else { b',' });
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *document, name);
        document.push(b':');
        document.extend_from_slice(value);
    };
    for (name, text, ty) in event.attributes_with_types() {
        // A Boolean's or an Integer's canonical text is its JSON already.
        match ty {
            AttributeType::String => member(
                &mut document,
                name,
                &serde_json::to_vec(text).unwrap_or_default(),
            ),
            AttributeType::Boolean | AttributeType::Integer => {
                member(&mut document, name, text.as_bytes())
            }
        }
    }
    if let Some(data) = event.data() {
        let (key, value) = structured_data(event, data);
        member(&mut document, key, &value);
    }
    document.push(b'}');
    document
}

/// The member that carries the data in structured mode, and its JSON text:
/// JSON data itself, text under a non-JSON type as a string, anything else
/// as base64. JSON data that is exactly `null` goes as base64 too: `"data":
/// null` means "no data" in the JSON format, so the receiver would lose it
/// (found by the property tests). Whitespace around JSON data is kept in
/// the document, though a JSON parser drops it.
fn structured_data(event: &Event, data: &[u8]) -> (&'static str, Vec<u8>) {
    let json_type = event.datacontenttype().is_none_or(is_json_media_type);
    let is_null = data.trim_ascii() == b"null";
    if json_type && !is_null && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok() {
        return ("data", data.to_vec());
    }
    match std::str::from_utf8(data) {
        Ok(text) if !json_type => ("data", serde_json::to_vec(text).unwrap_or_default()),
        _ => (
            "data_base64",
            serde_json::to_vec(&base64::engine::general_purpose::STANDARD.encode(data))
                .unwrap_or_default(),
        ),
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudevent::AttributeValue;

    fn binary_headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn base_headers() -> Vec<(&'static str, &'static str)> {
        vec![
            ("ce-specversion", "1.0"),
            ("ce-id", "42"),
            ("ce-source", "/src"),
            ("ce-type", "t.x"),
        ]
    }

    #[test]
    fn binary_mode_keeps_data_and_content_type() {
        let mut h = base_headers();
        h.push(("content-type", "application/json"));
        h.push(("ce-myext", "hello%20world"));
        let (mode, events) =
            parse_http(&binary_headers(&h), Bytes::from_static(b"{ \"a\" : 1 }")).expect("ok");
        assert_eq!(mode, Mode::Binary);
        let e = &events[0];
        assert_eq!(e.id(), "42");
        assert_eq!(e.datacontenttype(), Some("application/json"));
        assert_eq!(e.attribute("myext"), Some("hello world"));
        assert_eq!(&e.data().expect("data")[..], b"{ \"a\" : 1 }");
    }

    #[test]
    fn binary_mode_without_specversion_says_how_to_send() {
        let err = parse_http(&binary_headers(&[("ce-id", "1")]), Bytes::new()).expect_err("no");
        assert!(err.to_string().contains("ce-specversion"), "{err}");
    }

    #[test]
    fn binary_mode_names_the_missing_attribute() {
        let mut h = base_headers();
        h.retain(|(n, _)| *n != "ce-source");
        let err = parse_http(&binary_headers(&h), Bytes::new()).expect_err("no");
        assert_eq!(err.to_string(), "missing required attribute 'source'");
    }

    #[test]
    fn binary_mode_names_a_bad_extension_header() {
        let mut h = base_headers();
        h.push(("ce-my_ext", "x"));
        let err = parse_http(&binary_headers(&h), Bytes::new()).expect_err("no");
        assert!(err.to_string().starts_with("header 'ce-my_ext'"), "{err}");
    }

    fn structured(body: &str) -> Result<(Mode, Vec<Event>), BindingError> {
        let h = binary_headers(&[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )]);
        parse_http(&h, Bytes::from(body.to_owned()))
    }

    #[test]
    fn structured_mode_keeps_json_data_bytes_and_extension_types() {
        let (mode, events) = structured(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","count":3,"flag":true,"name":"x","data":{"b" : [1, 2]}}"#,
        )
        .expect("ok");
        assert_eq!(mode, Mode::Structured);
        let e = &events[0];
        assert_eq!(e.attribute("count"), Some("3"));
        assert_eq!(e.attribute_value("count"), Some(AttributeValue::Integer(3)));
        assert_eq!(
            e.attribute_value("flag"),
            Some(AttributeValue::Boolean(true))
        );
        assert_eq!(e.attribute_value("name"), Some(AttributeValue::String("x")));
        assert_eq!(&e.data().expect("data")[..], br#"{"b" : [1, 2]}"#);
    }

    #[test]
    fn binary_mode_attributes_are_strings_whatever_they_look_like() {
        let mut h = base_headers();
        h.push(("ce-flag", "true"));
        h.push(("ce-count", "3"));
        let (_, events) = parse_http(&binary_headers(&h), Bytes::new()).expect("ok");
        assert_eq!(
            events[0].attribute_value("flag"),
            Some(AttributeValue::String("true"))
        );
        assert_eq!(
            events[0].attribute_value("count"),
            Some(AttributeValue::String("3"))
        );
    }

    #[test]
    fn structured_mode_refuses_context_attributes_that_are_not_json_strings() {
        for (attribute, value, found) in [
            ("id", "42", "the number 42"),
            ("source", "true", "the boolean true"),
            ("type", "[\"t\"]", "an array"),
            ("specversion", "1.0", "the number 1.0"),
            ("datacontenttype", "{}", "an object"),
            ("dataschema", "7", "the number 7"),
            ("subject", "false", "the boolean false"),
            ("time", "1700000000", "the number 1700000000"),
        ] {
            let mut object = serde_json::json!({
                "specversion": "1.0", "id": "1", "source": "/s", "type": "t"
            });
            object[attribute] = serde_json::from_str(value).expect("json");
            let err = structured(&object.to_string()).expect_err(attribute);
            assert_eq!(
                err.to_string(),
                format!("attribute '{attribute}' must be a JSON string, not {found}")
            );
        }
    }

    #[test]
    fn structured_mode_refuses_extensions_that_are_not_strings_booleans_or_integers() {
        for (value, found) in [
            ("1.5", "the number 1.5"),
            ("2147483648", "the number 2147483648"),
            ("{}", "an object"),
            ("[1]", "an array"),
        ] {
            let body = format!(
                r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":{value}}}"#
            );
            let err = structured(&body).expect_err(value);
            assert_eq!(
                err.to_string(),
                format!(
                    "attribute 'ext' must be a string, a boolean or an integer from -2147483648 to 2147483647, not {found}"
                )
            );
        }
        // null is an unset attribute, as the JSON format says.
        let (_, events) =
            structured(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":null}"#)
                .expect("ok");
        assert_eq!(events[0].attribute("ext"), None);
    }

    #[test]
    fn a_batch_names_the_event_whose_attribute_has_the_wrong_type() {
        let h = binary_headers(&[("content-type", CONTENT_TYPE_BATCH)]);
        let bad = r#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":2,"source":"/s","type":"t"}]"#;
        let err = parse_http(&h, Bytes::from_static(bad.as_bytes())).expect_err("bad");
        assert_eq!(
            err.to_string(),
            "batch event 1: attribute 'id' must be a JSON string, not the number 2"
        );
    }

    #[test]
    fn structured_encoding_keeps_types_and_json_data_bytes() {
        let body = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","count":3,"flag":false,"data":{"b" : [1, 2]}}"#;
        let (_, events) = structured(body).expect("ok");
        let encoded = encode_structured(&events[0]);
        let text = std::str::from_utf8(&encoded).expect("utf8");
        assert!(text.ends_with(r#""data":{"b" : [1, 2]}}"#), "{text}");
        let json: serde_json::Value = serde_json::from_str(text).expect("json");
        assert_eq!(json["count"], serde_json::json!(3));
        assert_eq!(json["flag"], serde_json::json!(false));
        let (_, back) = structured(text).expect("ok");
        assert_eq!(back[0], events[0]);
    }

    #[test]
    fn structured_mode_decodes_base64_and_text() {
        let (_, events) = structured(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"aGVsbG8="}"#,
        )
        .expect("ok");
        assert_eq!(&events[0].data().expect("data")[..], b"hello");
        let (_, events) = structured(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"hi"}"#,
        )
        .expect("ok");
        assert_eq!(&events[0].data().expect("data")[..], b"hi");
    }

    #[test]
    fn structured_mode_rejects_data_and_data_base64() {
        let err = structured(
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"aA=="}"#,
        )
        .expect_err("both");
        assert_eq!(
            err.to_string(),
            "event has both 'data' and 'data_base64': set only one"
        );
    }

    #[test]
    fn structured_mode_rejects_object_attribute_and_bad_json() {
        let err = structured(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","x":{}}"#)
            .expect_err("object");
        assert!(
            err.to_string()
                .starts_with("attribute 'x' must be a string, a boolean or an integer"),
            "{err}"
        );
        let err = structured("{").expect_err("json");
        assert!(
            err.to_string()
                .starts_with("body is not a structured CloudEvent")
        );
    }

    #[test]
    fn batch_is_all_or_nothing_and_names_the_index() {
        let h = binary_headers(&[("content-type", CONTENT_TYPE_BATCH)]);
        let ok = r#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"t"}]"#;
        let (mode, events) = parse_http(&h, Bytes::from_static(ok.as_bytes())).expect("ok");
        assert_eq!((mode, events.len()), (Mode::Batch, 2));
        let bad = r#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","type":"t"}]"#;
        let err = parse_http(&h, Bytes::from_static(bad.as_bytes())).expect_err("bad");
        assert_eq!(
            err.to_string(),
            "batch event 1: missing required attribute 'source'"
        );
        let err = parse_http(&h, Bytes::from_static(b"[]")).expect_err("empty");
        assert_eq!(err.to_string(), "batch is empty");
    }

    #[test]
    fn binary_encoding_round_trips_through_parse() {
        let event = Event::new(
            vec![
                ("specversion".into(), "1.0".into()),
                ("id".into(), "a b\"c%".into()),
                ("source".into(), "/s".into()),
                ("type".into(), "t".into()),
                ("datacontenttype".into(), "text/plain".into()),
                ("ext".into(), "ünïcode".into()),
            ],
            Some(Bytes::from_static(b"payload")),
        )
        .expect("valid");
        let mut headers = HeaderMap::new();
        encode_binary_headers(&event, &mut headers);
        let (_, back) =
            parse_http(&headers, event.data().cloned().unwrap_or_default()).expect("ok");
        let mut a: Vec<_> = back[0].attributes().collect();
        let mut b: Vec<_> = event.attributes().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn structured_encoding_round_trips_through_parse() {
        let event = Event::new(
            vec![
                ("specversion".into(), "1.0".into()),
                ("id".into(), "1".into()),
                ("source".into(), "/s".into()),
                ("type".into(), "t".into()),
                ("datacontenttype".into(), "application/octet-stream".into()),
            ],
            Some(Bytes::from_static(&[0, 159, 146, 150])),
        )
        .expect("valid");
        let body = encode_structured(&event);
        let (_, back) = structured(std::str::from_utf8(&body).expect("utf8")).expect("ok");
        assert_eq!(back[0].data(), event.data());
    }
}
