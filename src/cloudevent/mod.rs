//! The CloudEvent as pilotlight stores and forwards it.
//!
//! Attributes are kept as the strings they arrived as and the data as the raw
//! bytes it arrived as, so an event leaves pilotlight exactly as it entered (the
//! CloudEvents SDK re-encodes JSON data, which changes bytes users may sign).
//! Every constructor validates, so an [`Event`] in hand is always a valid event.

mod http_binding;
mod validate;

pub use http_binding::parse_http;
pub(crate) use http_binding::{
    BindingError, CONTENT_TYPE_STRUCTURED, carries_event, encode_binary_headers, encode_structured,
    is_json_media_type,
};
pub(crate) use validate::{ValidationError, is_valid_name as is_valid_attribute_name};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The spec versions pilotlight accepts.
pub(crate) const SPEC_VERSIONS: [&str; 2] = ["1.0", "0.3"];

/// Attribute names the spec defines for v1.0 and v0.3; everything else is an
/// extension and must match `[a-z0-9]{1,20}`.
pub(crate) const CONTEXT_ATTRIBUTES: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "schemaurl",
    "datacontentencoding",
];

/// A validated CloudEvent: its context attributes and extensions in arrival
/// order, and its data as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    attributes: Vec<(String, String)>,
    data: Option<Bytes>,
}

impl Event {
    /// Builds an event from attributes and data, validating it.
    pub fn new(
        attributes: Vec<(String, String)>,
        data: Option<Bytes>,
    ) -> Result<Self, ValidationError> {
        let event = Event { attributes, data };
        validate::validate(&event)?;
        Ok(event)
    }

    /// The value of an attribute (context attribute or extension), if set.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[inline]
    pub(crate) fn attributes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attributes
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn id(&self) -> &str {
        self.attribute("id").unwrap_or_default()
    }

    pub fn source(&self) -> &str {
        self.attribute("source").unwrap_or_default()
    }

    pub fn ty(&self) -> &str {
        self.attribute("type").unwrap_or_default()
    }

    pub(crate) fn specversion(&self) -> &str {
        self.attribute("specversion").unwrap_or_default()
    }

    pub fn datacontenttype(&self) -> Option<&str> {
        self.attribute("datacontenttype")
    }

    pub fn data(&self) -> Option<&Bytes> {
        self.data.as_ref()
    }

    /// Sets (or replaces) an attribute. Used for the attributes pilotlight adds
    /// itself (`knativearrivaltime`, `knativeerror*`), whose names and values are
    /// known to be valid.
    pub(crate) fn set_attribute(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attributes.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.attributes.push((name.to_owned(), value)),
        }
    }

    /// Approximate size in memory and on disk, used for size limits and retention.
    pub(crate) fn size(&self) -> usize {
        self.attributes
            .iter()
            .map(|(n, v)| n.len() + v.len() + 8)
            .sum::<usize>()
            + self.data.as_ref().map_or(0, |d| d.len())
    }

    /// Encodes the event for storage (postcard: compact, schema-checked by serde).
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // Serialising owned strings and bytes into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a stored event; stored events were validated before they were
    /// written, and records are checksummed, so this only fails on a format change.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// A minimal valid event for unit tests: the given id and type, source
/// `/test`, and data if given. Other attributes go on with `set_attribute`.
#[cfg(test)]
pub(crate) fn test_event(id: &str, ty: &str, data: Option<Bytes>) -> Event {
    let attributes = [
        ("specversion", "1.0"),
        ("id", id),
        ("source", "/test"),
        ("type", ty),
    ];
    Event::new(
        attributes
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        data,
    )
    .expect("a valid test event")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        test_event(
            "1",
            "com.example.test",
            Some(Bytes::from_static(b"{\"a\":1}")),
        )
    }

    #[test]
    fn storage_round_trip_keeps_bytes() {
        let event = sample();
        let back = Event::from_bytes(&event.to_bytes()).expect("decodes");
        assert_eq!(back, event);
        assert_eq!(back.data().map(|d| &d[..]), Some(&b"{\"a\":1}"[..]));
    }

    #[test]
    fn set_attribute_replaces() {
        let mut event = sample();
        event.set_attribute("knativearrivaltime", "x");
        event.set_attribute("knativearrivaltime", "y");
        assert_eq!(event.attribute("knativearrivaltime"), Some("y"));
        assert_eq!(event.attributes().count(), 5);
    }
}
