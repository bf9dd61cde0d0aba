//! Property tests of the AMQP binding: any message properties, header
//! values of every AMQP type and any body give an event or an error naming
//! the problem, never a panic or an allocation beyond the message's size;
//! an event encoded and decoded keeps every attribute with its type and
//! its data.

use std::collections::BTreeMap;

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, LongString, ShortString};
use proptest::prelude::*;

use super::{DecodeError, decode, encode};
use crate::cloudevent::{AttributeType, CONTENT_TYPE_STRUCTURED, Event, encode_structured};
use crate::properties::{CI_CASES, allocation_bound, config, event, mutate, peak_allocation};

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            &[
                "cloudEvents:specversion",
                "cloudEvents:id",
                "cloudEvents:source",
                "cloudEvents:type",
                "cloudEvents:time",
                "cloudEvents_specversion",
                "cloudEvents:datacontenttype",
                "pilotlight-types",
                "cloudEvents:",
            ][..]
        )
        .prop_map(str::to_owned),
        "cloudEvents[:_][a-zA-Z0-9]{0,24}",
        "[ -~]{0,12}",
    ]
}

/// AMQP values of every type the binding meets, and some it refuses.
fn amqp_value() -> impl Strategy<Value = AMQPValue> {
    prop_oneof![
        prop::sample::select(&["1.0", "0.3", "true", "x=boolean,y=integer", ""][..])
            .prop_map(|s| AMQPValue::LongString(LongString::from(s))),
        prop::collection::vec(any::<u8>(), 0..24)
            .prop_map(|b| AMQPValue::LongString(LongString::from(b))),
        "[ -~]{0,24}".prop_map(|s| AMQPValue::ShortString(ShortString::from(s))),
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        Just(AMQPValue::Void),
        Just(AMQPValue::FieldArray(FieldArray::default())),
        Just(AMQPValue::FieldTable(FieldTable::default())),
    ]
}

fn properties() -> impl Strategy<Value = BasicProperties> {
    let content_type = prop::option::of(prop_oneof![
        Just(CONTENT_TYPE_STRUCTURED.to_owned()),
        Just(format!("{CONTENT_TYPE_STRUCTURED}; charset=utf-8")),
        Just("application/json".to_owned()),
        "[ -~]{0,24}",
    ]);
    let headers = prop::option::of(prop::collection::vec((key(), amqp_value()), 0..10));
    (content_type, headers).prop_map(|(content_type, headers)| {
        let mut properties = BasicProperties::default();
        if let Some(content_type) = content_type {
            properties = properties.with_content_type(ShortString::from(content_type));
        }
        if let Some(headers) = headers {
            let mut table = FieldTable::default();
            for (key, value) in headers {
                table.insert(ShortString::from(key), value);
            }
            properties = properties.with_headers(table);
        }
        properties
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        (
            event(),
            prop::collection::vec(any::<(usize, u8, u8)>(), 0..3)
        )
            .prop_map(|(e, edits)| mutate(encode_structured(&e), &edits)),
    ]
}

type View = (BTreeMap<String, (String, AttributeType)>, Option<Bytes>);

fn view(event: &Event) -> View {
    let attributes = event
        .attributes_with_types()
        .map(|(n, v, t)| (n.to_owned(), (v.to_owned(), t)))
        .collect();
    (attributes, event.data().filter(|d| !d.is_empty()).cloned())
}

proptest! {
    #![proptest_config(config(CI_CASES))]

    /// Any message: an event, or an error naming the header or the problem.
    #[test]
    fn any_message_decodes_or_says_why(properties in properties(), body in body()) {
        let size = body.len() + 1024;
        let (result, peak) = peak_allocation(|| decode(&properties, Bytes::from(body)));
        prop_assert!(peak <= allocation_bound(size), "held {peak} bytes");
        if let Err(e) = result {
            let message = e.to_string();
            prop_assert!(!message.is_empty());
            if let DecodeError::BadHeader { header, .. } = &e {
                let has = properties.headers().as_ref().is_some_and(|h| h.inner().keys().any(|k| k.as_str() == header));
                prop_assert!(has, "names a header the message lacks: {message}");
                let value = properties.headers().as_ref().and_then(|h| h.inner().iter().find(|(k, _)| k.as_str() == header).map(|(_, v)| v.clone()));
                if let Some(AMQPValue::LongString(_)) = value {
                    prop_assert!(message.contains("UTF-8"), "a string refused for another reason: {message}");
                }
            }
        }
    }

    /// Binary mode keeps every attribute with its type, and the data.
    #[test]
    fn binary_round_trip(event in event()) {
        let (properties, body) = encode(&event);
        let back = decode(&properties, Bytes::copy_from_slice(body)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(view(&back), view(&event));
    }
}

/// Found by `any_message_decodes_or_says_why`: a header holding bytes that
/// are not UTF-8 was refused as "must be a string, number or boolean",
/// though it was a string; the error now says what is wrong with it.
#[test]
fn regression_a_header_that_is_not_utf8_says_so() {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("cloudEvents:specversion"),
        AMQPValue::LongString(LongString::from("1.0")),
    );
    headers.insert(
        ShortString::from("cloudEvents:id"),
        AMQPValue::LongString(LongString::from(vec![0xff, 0xfe])),
    );
    let properties = BasicProperties::default().with_headers(headers);
    let error = decode(&properties, Bytes::new()).expect_err("refused");
    let message = error.to_string();
    assert!(
        message.contains("cloudEvents:id") && message.contains("UTF-8"),
        "{message}"
    );
}

/// Found alongside: an AMQP timestamp (unsigned) above i64::MAX was cast
/// with `as`, so u64::MAX became -1 and the event's time silently read
/// 1969-12-31T23:59:59Z. It is now refused as out of range.
#[test]
fn regression_a_timestamp_out_of_range_says_so() {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("cloudEvents:specversion"),
        AMQPValue::LongString(LongString::from("1.0")),
    );
    headers.insert(
        ShortString::from("cloudEvents:time"),
        AMQPValue::Timestamp(u64::MAX),
    );
    let properties = BasicProperties::default().with_headers(headers);
    let message = decode(&properties, Bytes::new())
        .expect_err("refused")
        .to_string();
    assert!(
        message.contains("cloudEvents:time") && message.contains("out of range"),
        "{message}"
    );
}
