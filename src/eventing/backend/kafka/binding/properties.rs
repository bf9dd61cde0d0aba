//! Property tests of the Kafka binding: any record headers and value give
//! an event, "not an event" or an error naming the problem, never a panic
//! or an allocation beyond the record's size; an event encoded and decoded
//! keeps every attribute with its type, its data and its partition key.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;

use super::{DecodeError, Decoded, decode, encode};
use crate::cloudevent::{AttributeType, CONTENT_TYPE_STRUCTURED, Event, encode_structured};
use crate::properties::{CI_CASES, allocation_bound, config, event, mutate, peak_allocation};

/// Header names a record may have: the binding's, near misses, others.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            &[
                "ce_specversion",
                "ce_id",
                "ce_source",
                "ce_type",
                "ce_time",
                "ce_partitionkey",
                "content-type",
                "Content-Type",
                "pilotlight-types",
                "ce_",
                "CE_ID",
            ][..]
        )
        .prop_map(str::to_owned),
        "ce_[a-zA-Z0-9_]{0,24}",
        "[ -~]{0,12}",
    ]
}

/// Header values: plausible ones, type lists, and arbitrary bytes (Kafka
/// header values are bytes, not necessarily UTF-8); `None` is a null value.
fn header_value() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::of(prop_oneof![
        prop::sample::select(
            &[
                "1.0",
                "0.3",
                CONTENT_TYPE_STRUCTURED,
                "application/json",
                "x=boolean",
                "a=integer,b=boolean",
                "=",
                ",,",
                "true",
                "-1",
            ][..]
        )
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..24),
    ])
}

/// Record values: arbitrary bytes, or structured events damaged.
fn value() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::of(prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        (
            event(),
            prop::collection::vec(any::<(usize, u8, u8)>(), 0..3)
        )
            .prop_map(|(e, edits)| mutate(encode_structured(&e), &edits)),
    ])
}

/// An event as binary mode carries it: attributes with their types in any
/// order, and data, where empty data is no data.
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

    /// Any record: an event, not an event, or an error naming the problem.
    #[test]
    fn any_record_decodes_or_says_why(
        headers in prop::collection::vec((header_name(), header_value()), 0..10),
        value in value(),
    ) {
        let size = value.as_ref().map_or(0, Vec::len)
            + headers.iter().map(|(n, v)| n.len() + v.as_ref().map_or(0, Vec::len)).sum::<usize>();
        let borrowed = headers.iter().map(|(n, v)| (n.as_str(), v.as_deref()));
        let (result, peak) = peak_allocation(|| decode(borrowed, value.as_deref()));
        prop_assert!(peak <= allocation_bound(size), "held {peak} bytes for a {size}-byte record");
        match result {
            Ok(Decoded::Event(_) | Decoded::NotAnEvent) => {}
            Err(e) => {
                let message = e.to_string();
                prop_assert!(!message.is_empty());
                if let DecodeError::NotUtf8(name) = &e {
                    prop_assert!(headers.iter().any(|(n, _)| n == name), "names a header the record lacks: {message}");
                }
            }
        }
    }

    /// Binary mode keeps every attribute with its type, the data bytes and
    /// the partition key.
    #[test]
    fn binary_round_trip(event in event(), partition_key in prop::option::of("[ -~]{1,12}")) {
        let mut event = event;
        if let Some(key) = &partition_key {
            event.set_attribute("partitionkey", key.as_str());
        }
        let record = encode(&event);
        prop_assert_eq!(record.key.as_deref(), partition_key.as_deref());
        let headers = record.headers.iter().map(|(n, v)| (n.as_str(), Some(v.as_bytes())));
        match decode(headers, record.value.as_deref()) {
            Ok(Decoded::Event(back)) => prop_assert_eq!(view(&back), view(&event)),
            Ok(Decoded::NotAnEvent) => return Err(TestCaseError::fail("not an event")),
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        }
    }

    /// Structured mode (what other producers send) reads as the event.
    #[test]
    fn structured_records_read_as_the_event(event in event()) {
        let value = encode_structured(&event);
        let headers = [("content-type", Some(CONTENT_TYPE_STRUCTURED.as_bytes()))];
        match decode(headers, Some(&value)) {
            Ok(Decoded::Event(back)) => {
                prop_assert_eq!(back.data().map(|d| d.trim_ascii().to_vec()), event.data().map(|d| d.trim_ascii().to_vec()));
                prop_assert_eq!(view(&back).0, view(&event).0);
            }
            Ok(Decoded::NotAnEvent) => return Err(TestCaseError::fail("not an event")),
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        }
    }
}
