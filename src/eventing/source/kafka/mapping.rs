//! A Kafka record as the CloudEvent a KafkaSource sends.
//!
//! A record that is a CloudEvent (binary or structured binding) is sent as
//! it is. Any other record becomes, as in Knative:
//! - type `dev.knative.kafka.event`,
//! - source `/apis/v1/namespaces/{namespace}/kafkasources/{name}#{topic}`,
//! - id `partition:{p}/offset:{o}`, subject `partition:{p}#{o}`,
//! - time: the record's timestamp,
//! - the record key in the `key` extension, read as the key-type label says
//!   (a key that does not read as that type is left out, and logged),
//! - each header as a `kafkaheader{name}` extension (name lower-cased,
//!   characters other than a-z and 0-9 dropped; a header whose extension
//!   name would exceed CloudEvents' 20 characters is left out, and logged),
//! - the value as data, `application/json` when it is JSON.
//!
//! `spec.ceOverrides` extensions are set on both shapes.

use base64::Engine;
use bytes::Bytes;
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};

use crate::api::ObjectKey;
use crate::api::sources::kafka::KeyType;
use crate::cloudevent::{Event, is_valid_attribute_name};
use crate::eventing::backend::kafka::binding::{self, Decoded};

/// The type of mapped records.
pub(crate) const KAFKA_EVENT_TYPE: &str = "dev.knative.kafka.event";

impl KeyType {
    /// The key as text, or why it cannot be read as this type.
    pub(crate) fn read(self, key: &[u8]) -> Result<String, String> {
        match self {
            KeyType::String => std::str::from_utf8(key)
                .map(str::to_owned)
                .map_err(|_| "the key is not UTF-8 text".to_owned()),
            KeyType::Int => match key.len() {
                4 => Ok(i32::from_be_bytes(key.try_into().unwrap_or_default()).to_string()),
                8 => Ok(i64::from_be_bytes(key.try_into().unwrap_or_default()).to_string()),
                n => Err(format!("an int key has 4 or 8 bytes, not {n}")),
            },
            KeyType::Float => match key.len() {
                4 => Ok(f32::from_be_bytes(key.try_into().unwrap_or_default()).to_string()),
                8 => Ok(f64::from_be_bytes(key.try_into().unwrap_or_default()).to_string()),
                n => Err(format!("a float key has 4 or 8 bytes, not {n}")),
            },
            KeyType::ByteArray => Ok(base64::engine::general_purpose::STANDARD.encode(key)),
        }
    }
}

/// The event for a record; `Err` says why the record cannot be sent.
pub(crate) fn to_event(
    source: &ObjectKey,
    key_type: KeyType,
    message: &OwnedMessage,
) -> Result<Event, String> {
    let headers: Vec<(&str, Option<&[u8]>)> = message
        .headers()
        .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
        .unwrap_or_default();
    match binding::decode(headers.iter().copied(), message.payload()) {
        Ok(Decoded::Event(event)) => return Ok(event),
        Ok(Decoded::NotAnEvent) => {}
        Err(e) => return Err(e.to_string()),
    }
    let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
    let mut attributes = vec![
        ("specversion".to_owned(), "1.0".to_owned()),
        (
            "id".to_owned(),
            format!("partition:{partition}/offset:{offset}"),
        ),
        (
            "source".to_owned(),
            format!(
                "/apis/v1/namespaces/{}/kafkasources/{}#{topic}",
                source.namespace, source.name
            ),
        ),
        ("type".to_owned(), KAFKA_EVENT_TYPE.to_owned()),
        (
            "subject".to_owned(),
            format!("partition:{partition}#{offset}"),
        ),
    ];
    if let Some(millis) = message.timestamp().to_millis()
        && let Some(time) = chrono::DateTime::from_timestamp_millis(millis)
    {
        attributes.push((
            "time".to_owned(),
            time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ));
    }
    if let Some(key) = message.key() {
        match key_type.read(key) {
            Ok(text) => attributes.push(("key".to_owned(), text)),
            Err(reason) => {
                tracing::warn!(source = %source, topic, partition, offset, "{reason} (label {}); the event is sent without its key", crate::api::sources::kafka::KEY_TYPE_LABEL)
            }
        }
    }
    for (name, value) in headers {
        let extension = header_extension(name);
        if !is_valid_attribute_name(&extension) || attributes.iter().any(|(n, _)| *n == extension) {
            tracing::warn!(source = %source, header = name, "a record header has no valid CloudEvents extension name (kafkaheader + at most 9 letters or digits); it is left out");
            continue;
        }
        let text = String::from_utf8_lossy(value.unwrap_or_default()).into_owned();
        attributes.push((extension, text));
    }
    let data = message
        .payload()
        .filter(|p| !p.is_empty())
        .map(Bytes::copy_from_slice);
    if data
        .as_ref()
        .is_some_and(|d| serde_json::from_slice::<serde::de::IgnoredAny>(d).is_ok())
    {
        attributes.push(("datacontenttype".to_owned(), "application/json".to_owned()));
    }
    Event::new(attributes, data).map_err(|e| e.to_string())
}

/// `kafkaheader` + the header name lower-cased with other characters dropped.
pub(crate) fn header_extension(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    format!("kafkaheader{cleaned}")
}
