//! The CloudEvent as pilotlight stores and forwards it.
//!
//! Attributes are kept as the strings they arrived as and the data as the raw
//! bytes it arrived as, so an event leaves pilotlight exactly as it entered (the
//! CloudEvents SDK re-encodes JSON data, which changes bytes users may sign).
//! Every constructor validates, so an [`Event`] in hand is always a valid event.

mod http_binding;
mod validate;

pub(crate) use http_binding::{
    BindingError, CONTENT_TYPE_STRUCTURED, carries_event, encode_binary_headers, encode_structured,
    is_json_media_type,
};
pub use http_binding::{Mode, parse_http};
pub(crate) use validate::{ValidationError, is_valid_name as is_valid_attribute_name};

use bytes::Bytes;

/// The header that carries [`Event::types_header`] beside binary-mode
/// attributes, in the broker's Kafka topics and RabbitMQ exchanges.
pub(crate) const TYPES_HEADER: &str = "pilotlight-types";

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

/// The CloudEvents type of an attribute's value, where the format it arrived
/// in says one (JSON, AMQP): a structured-mode `"flag": true` is a Boolean,
/// `"count": 3` an Integer. Binary HTTP and Kafka headers carry only text, so
/// what arrives that way is a String (CESQL casts it where it needs to).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttributeType {
    #[default]
    String,
    Boolean,
    /// 32-bit signed, as CloudEvents defines Integer.
    Integer,
}

impl AttributeType {
    fn code(self) -> u8 {
        match self {
            AttributeType::String => 0,
            AttributeType::Boolean => 1,
            AttributeType::Integer => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => AttributeType::String,
            1 => AttributeType::Boolean,
            2 => AttributeType::Integer,
            _ => return None,
        })
    }

    /// The name the type-carrying header uses (see [`Event::types_header`]).
    fn name(self) -> &'static str {
        match self {
            AttributeType::String => "string",
            AttributeType::Boolean => "boolean",
            AttributeType::Integer => "integer",
        }
    }
}

/// An attribute's value with its type, as CESQL and structured mode see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttributeValue<'a> {
    String(&'a str),
    Boolean(bool),
    Integer(i32),
}

/// One context attribute or extension: its name, its canonical text (what
/// binary mode sends) and the type it arrived as.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Attribute {
    name: String,
    value: String,
    ty: AttributeType,
}

/// A validated CloudEvent: its context attributes and extensions in arrival
/// order, and its data as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    attributes: Vec<Attribute>,
    data: Option<Bytes>,
}

/// Why stored bytes are not an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Postcard(#[from] postcard::Error),
    #[error("attribute types do not match the attributes")]
    Types,
}

impl Event {
    /// Builds an event from attributes given as text (binary modes: every
    /// value a String), validating it.
    pub fn new(
        attributes: Vec<(String, String)>,
        data: Option<Bytes>,
    ) -> Result<Self, ValidationError> {
        Self::typed(
            attributes
                .into_iter()
                .map(|(name, value)| (name, value, AttributeType::String))
                .collect(),
            data,
        )
    }

    /// Builds an event from attributes with their types, validating it: a
    /// Boolean's text must be `true` or `false`, an Integer's a 32-bit decimal,
    /// and the spec's context attributes are Strings.
    pub fn typed(
        attributes: Vec<(String, String, AttributeType)>,
        data: Option<Bytes>,
    ) -> Result<Self, ValidationError> {
        let attributes = attributes
            .into_iter()
            .map(|(name, value, ty)| Attribute { name, value, ty })
            .collect();
        let event = Event { attributes, data };
        validate::validate(&event)?;
        Ok(event)
    }

    /// The value of an attribute (context attribute or extension) as text,
    /// if set.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.find(name).map(|a| a.value.as_str())
    }

    /// The value of an attribute with its type, if set.
    pub fn attribute_value(&self, name: &str) -> Option<AttributeValue<'_>> {
        self.find(name).map(Attribute::typed_value)
    }

    fn find(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }

    /// Every attribute as (name, text), in arrival order.
    #[inline]
    pub(crate) fn attributes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attributes
            .iter()
            .map(|a| (a.name.as_str(), a.value.as_str()))
    }

    /// Every attribute as (name, canonical text, type), in arrival order:
    /// for the compiled filters (which test text and need the type only to
    /// know whether text is what the spec compares) and structured mode.
    #[inline]
    pub(crate) fn attributes_with_types(
        &self,
    ) -> impl Iterator<Item = (&str, &str, AttributeType)> {
        self.attributes
            .iter()
            .map(|a| (a.name.as_str(), a.value.as_str(), a.ty))
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

    /// Gives the data its own allocation. Data parsed from a request can be
    /// a slice of the connection's read buffer (several KiB): an event kept
    /// in memory for long (a broker's tail) would keep the whole buffer.
    pub(crate) fn own_data(&mut self) {
        if let Some(data) = &mut self.data {
            *data = Bytes::copy_from_slice(data);
        }
    }

    /// Sets (or replaces) a String attribute. Used for the attributes
    /// pilotlight adds itself (`knativearrivaltime`, `knativeerror*`), whose
    /// names and values are known to be valid.
    pub(crate) fn set_attribute(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attributes.iter_mut().find(|a| a.name == name) {
            Some(attribute) => {
                attribute.value = value;
                attribute.ty = AttributeType::String;
            }
            None => self.attributes.push(Attribute {
                name: name.to_owned(),
                value,
                ty: AttributeType::String,
            }),
        }
    }

    /// Approximate size in memory and on disk, used for size limits and retention.
    pub(crate) fn size(&self) -> usize {
        self.attributes
            .iter()
            .map(|a| a.name.len() + a.value.len() + 8)
            .sum::<usize>()
            + self.data.as_ref().map_or(0, |d| d.len())
    }

    /// The types of the attributes that are not Strings, as one header value
    /// (`flag=boolean,count=integer`), for the formats whose headers carry
    /// only text (the broker's Kafka topic and RabbitMQ exchange, which routes
    /// on the text); `None` when every attribute is a String.
    pub(crate) fn types_header(&self) -> Option<String> {
        let typed: Vec<String> = self
            .attributes
            .iter()
            .filter(|a| a.ty != AttributeType::String)
            .map(|a| format!("{}={}", a.name, a.ty.name()))
            .collect();
        (!typed.is_empty()).then(|| typed.join(","))
    }

    /// Applies a [`Event::types_header`] value to attributes read as text:
    /// names it does not list, or lists with a type whose text does not
    /// parse, stay Strings (validation then refuses a bad Boolean or Integer).
    pub(crate) fn apply_types_header(
        attributes: Vec<(String, String)>,
        header: Option<&str>,
    ) -> Vec<(String, String, AttributeType)> {
        let types: Vec<(&str, AttributeType)> = header
            .unwrap_or_default()
            .split(',')
            .filter_map(|entry| {
                let (name, ty) = entry.trim().split_once('=')?;
                let ty = match ty {
                    "boolean" => AttributeType::Boolean,
                    "integer" => AttributeType::Integer,
                    _ => return None,
                };
                Some((name, ty))
            })
            .collect();
        attributes
            .into_iter()
            .map(|(name, value)| {
                let ty = types
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(AttributeType::String, |(_, ty)| *ty);
                (name, value, ty)
            })
            .collect()
    }

    /// Encodes the event for storage (postcard: compact, schema-checked by
    /// serde). Attributes and data come first, in the layout of every
    /// release before typed attributes; the types follow only when some
    /// attribute is not a String, so records written by an earlier release
    /// read back unchanged and an all-String event costs nothing more.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let attributes: Vec<(&str, &str)> = self.attributes().collect();
        // Serialising strings and bytes into a Vec cannot fail.
        let mut bytes = postcard::to_allocvec(&(attributes, &self.data)).unwrap_or_default();
        if self
            .attributes
            .iter()
            .any(|a| a.ty != AttributeType::String)
        {
            let types: Vec<u8> = self.attributes.iter().map(|a| a.ty.code()).collect();
            bytes = postcard::to_extend(&types, bytes).unwrap_or_default();
        }
        bytes
    }

    /// Decodes a stored event; stored events were validated before they were
    /// written, and records are checksummed, so this only fails on a format change.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        type Stored = (Vec<(String, String)>, Option<Bytes>);
        let ((attributes, data), rest): (Stored, &[u8]) = postcard::take_from_bytes(bytes)?;
        let types: Vec<u8> = if rest.is_empty() {
            vec![0; attributes.len()]
        } else {
            postcard::from_bytes(rest)?
        };
        if types.len() != attributes.len() {
            return Err(DecodeError::Types);
        }
        let attributes = attributes
            .into_iter()
            .zip(types)
            .map(|((name, value), code)| {
                let ty = AttributeType::from_code(code).ok_or(DecodeError::Types)?;
                Ok(Attribute { name, value, ty })
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(Event { attributes, data })
    }
}

impl Attribute {
    /// The typed value; the text of a Boolean or Integer was checked when
    /// the event was built, so the fallbacks are never taken.
    fn typed_value(&self) -> AttributeValue<'_> {
        match self.ty {
            AttributeType::String => AttributeValue::String(&self.value),
            AttributeType::Boolean => AttributeValue::Boolean(self.value == "true"),
            AttributeType::Integer => AttributeValue::Integer(self.value.parse().unwrap_or(0)),
        }
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

/// A test event as a structured-mode ingress makes it from
/// `{"flag": true, "count": 3, "name": "x"}`: a Boolean, an Integer and a
/// String extension.
#[cfg(test)]
pub(crate) fn test_typed_event(id: &str) -> Event {
    let mut attributes: Vec<(String, String, AttributeType)> = test_event(id, "t", None)
        .attributes()
        .map(|(n, v)| (n.to_owned(), v.to_owned(), AttributeType::String))
        .collect();
    attributes.push(("flag".into(), "true".into(), AttributeType::Boolean));
    attributes.push(("count".into(), "3".into(), AttributeType::Integer));
    attributes.push(("name".into(), "x".into(), AttributeType::String));
    Event::typed(attributes, None).expect("a valid test event")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_data_lets_go_of_the_buffer_the_data_was_sliced_from() {
        let read_buffer = Bytes::from(vec![b'x'; 8192]);
        let mut event = test_event("1", "t", Some(read_buffer.slice(100..110)));
        event.own_data();
        let data = event.data().expect("data");
        assert_eq!(data.as_ref(), b"xxxxxxxxxx");
        let buffer = read_buffer.as_ptr_range();
        assert!(!buffer.contains(&data.as_ptr()), "still in the read buffer");
    }

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
    fn an_all_string_event_is_stored_in_the_layout_earlier_releases_wrote() {
        let event = sample();
        let legacy: (Vec<(String, String)>, Option<Bytes>) = (
            event
                .attributes()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
            event.data().cloned(),
        );
        let written = postcard::to_allocvec(&legacy).expect("encodes");
        assert_eq!(event.to_bytes(), written);
        assert_eq!(Event::from_bytes(&written).expect("decodes"), event);
    }

    #[test]
    fn storage_keeps_the_types_of_boolean_and_integer_extensions() {
        let mut attributes: Vec<(String, String, AttributeType)> = sample()
            .attributes()
            .map(|(n, v)| (n.to_owned(), v.to_owned(), AttributeType::String))
            .collect();
        attributes.push(("flag".into(), "true".into(), AttributeType::Boolean));
        attributes.push(("count".into(), "-7".into(), AttributeType::Integer));
        let event = Event::typed(attributes, None).expect("valid");
        let back = Event::from_bytes(&event.to_bytes()).expect("decodes");
        assert_eq!(back, event);
        assert_eq!(
            back.attribute_value("flag"),
            Some(AttributeValue::Boolean(true))
        );
        assert_eq!(
            back.attribute_value("count"),
            Some(AttributeValue::Integer(-7))
        );
    }

    #[test]
    fn the_types_header_round_trips_and_ignores_what_it_does_not_know() {
        let text = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let typed = Event::apply_types_header(
            text(&[("flag", "true"), ("count", "3"), ("other", "x")]),
            Some("flag=boolean,count=integer,gone=boolean,other=float"),
        );
        let types: Vec<AttributeType> = typed.iter().map(|(_, _, t)| *t).collect();
        assert_eq!(
            types,
            [
                AttributeType::Boolean,
                AttributeType::Integer,
                AttributeType::String
            ]
        );
        let mut attributes = text(&[
            ("specversion", "1.0"),
            ("id", "1"),
            ("source", "/s"),
            ("type", "t"),
        ]);
        attributes.extend(text(&[("flag", "true"), ("count", "3")]));
        let event = Event::typed(
            Event::apply_types_header(attributes, Some("flag=boolean,count=integer")),
            None,
        )
        .expect("valid");
        assert_eq!(
            event.types_header().as_deref(),
            Some("flag=boolean,count=integer")
        );
    }

    #[test]
    fn a_typed_value_must_be_the_types_canonical_text() {
        let with = |name: &str, value: &str, ty| {
            let mut attributes: Vec<(String, String, AttributeType)> = sample()
                .attributes()
                .map(|(n, v)| (n.to_owned(), v.to_owned(), AttributeType::String))
                .collect();
            attributes.push((name.into(), value.into(), ty));
            Event::typed(attributes, None).map_err(|e| e.to_string())
        };
        assert!(with("flag", "yes", AttributeType::Boolean).is_err());
        assert!(with("count", "3.5", AttributeType::Integer).is_err());
        assert!(with("count", "+3", AttributeType::Integer).is_err());
        assert_eq!(
            with("subject", "true", AttributeType::Boolean).expect_err("context"),
            "attribute 'subject' must be a String (in JSON, a string)"
        );
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
