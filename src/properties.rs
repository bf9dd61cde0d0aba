//! What the property tests share (each parser's own `mod properties` sits
//! beside it): how many cases a run tries, a strategy for valid events, and
//! a measure of the most memory a parser holds at once.
//!
//! The CI pass tries [`CI_CASES`] inputs per property (or fewer where one
//! case writes files); `PROPTEST_CASES=100000 cargo test --release
//! properties` is the long pass. `ProptestConfig::with_cases` would ignore
//! that variable, so [`config`] reads it first.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::Config;

use crate::cloudevent::{AttributeType, CONTEXT_ATTRIBUTES, Event};

/// Inputs tried per property in a plain `cargo test`: with the slowest
/// properties at a fraction of this, the whole set stays well under a
/// minute in a debug build on two cores.
pub(crate) const CI_CASES: u32 = 256;

/// The proptest settings of a property: `PROPTEST_CASES` when set (the long
/// pass), else `default_cases`. No failure-persistence files: every input a
/// property found is kept as an explicit regression test instead.
pub(crate) fn config(default_cases: u32) -> Config {
    let base = Config {
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_some() {
        base
    } else {
        Config {
            cases: default_cases,
            ..base
        }
    }
}

/// Any text, control characters and all (attribute values are user input).
pub(crate) fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..=max).prop_map(String::from_iter)
}

/// Non-empty [`text`].
pub(crate) fn nonempty_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 1..=max.max(1)).prop_map(String::from_iter)
}

/// Data as events carry it: none, arbitrary bytes, JSON documents (with and
/// without surrounding whitespace) or text.
pub(crate) fn data() -> impl Strategy<Value = Option<Bytes>> {
    prop_oneof![
        Just(None),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| Some(Bytes::from(b))),
        json_text().prop_map(|t| Some(Bytes::from(t))),
        text(32).prop_map(|t| Some(Bytes::from(t))),
    ]
}

/// Small JSON documents, sometimes padded with whitespace.
pub(crate) fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        text(8).prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z]{1,4}", inner), 0..4).prop_map(|v| {
                let members: Vec<String> = v.iter().map(|(k, x)| format!("\"{k}\":{x}")).collect();
                format!("{{{}}}", members.join(", "))
            }),
        ]
    });
    (value, "[ \n\t]{0,2}", "[ \n\t]{0,2}").prop_map(|(v, pre, post)| format!("{pre}{v}{post}"))
}

/// An extension: a valid name that is not a context attribute, and a value
/// of one of the three types.
fn extension() -> impl Strategy<Value = (String, String, AttributeType)> {
    let name = "[a-z0-9]{1,20}".prop_filter("an extension, not a context attribute", |n| {
        !CONTEXT_ATTRIBUTES.contains(&n.as_str())
    });
    let value = prop_oneof![
        text(16).prop_map(|s| (s, AttributeType::String)),
        any::<bool>().prop_map(|b| (b.to_string(), AttributeType::Boolean)),
        any::<i32>().prop_map(|i| (i.to_string(), AttributeType::Integer)),
    ];
    (name, value).prop_map(|(n, (v, t))| (n, v, t))
}

/// A content type: the common ones, parameters, and arbitrary text.
fn content_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("application/json".to_owned()),
        Just("text/plain".to_owned()),
        Just("text/plain; charset=utf-8".to_owned()),
        Just("application/octet-stream".to_owned()),
        Just("application/vnd.example+json".to_owned()),
        "[a-z]{1,8}/[a-z0-9.+-]{1,12}",
        nonempty_text(12),
    ]
}

/// An RFC 3339 time, in the shapes clients write.
fn time() -> impl Strategy<Value = String> {
    (0i64..4_102_444_800, 0u32..1_000_000_000, any::<bool>()).prop_map(|(s, ns, utc)| {
        let t = chrono::DateTime::from_timestamp(s, ns).unwrap_or_default();
        match chrono::FixedOffset::east_opt(5400).filter(|_| !utc) {
            Some(offset) => t.with_timezone(&offset).to_rfc3339(),
            None => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        }
    })
}

/// A valid event: the required attributes, some optional ones and
/// extensions of every type, in a stable order, and any data.
pub(crate) fn event() -> impl Strategy<Value = Event> {
    let required = (
        prop_oneof![Just("1.0"), Just("0.3")],
        nonempty_text(12),
        nonempty_text(12),
        nonempty_text(12),
    );
    let optional = (
        prop::option::of(nonempty_text(12)),
        prop::option::of(content_type()),
        prop::option::of(time()),
        prop::collection::vec(extension(), 0..4),
    );
    (required, optional, data()).prop_filter_map(
        "extension names must differ",
        |((version, id, source, ty), (subject, content_type, time, extensions), data)| {
            let mut attributes = vec![
                (
                    "specversion".to_owned(),
                    version.to_owned(),
                    AttributeType::String,
                ),
                ("id".to_owned(), id, AttributeType::String),
                ("source".to_owned(), source, AttributeType::String),
                ("type".to_owned(), ty, AttributeType::String),
            ];
            let optional = [
                ("subject", subject),
                ("datacontenttype", content_type),
                ("time", time),
            ];
            for (name, value) in optional {
                if let Some(value) = value {
                    attributes.push((name.to_owned(), value, AttributeType::String));
                }
            }
            attributes.extend(extensions);
            Event::typed(attributes, data).ok()
        },
    )
}

/// Applies edits to a document: each (position, byte, what) overwrites a
/// byte, inserts one, or cuts the document there.
pub(crate) fn mutate(mut doc: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, byte, what) in edits {
        if doc.is_empty() {
            break;
        }
        let at = at % doc.len();
        match what % 3 {
            0 => doc[at] = byte,
            1 => doc.insert(at, byte),
            _ => doc.truncate(at),
        }
    }
    doc
}

/// Wraps the system allocator to record, per thread, the most bytes held
/// at once while [`peak_allocation`] runs: how a property checks that a
/// length field claiming gigabytes, or an alias bomb, does not make a
/// parser allocate them.
pub(crate) struct Tracking;

/// Bytes allocated and not yet freed on this thread since tracking began,
/// and the most of them at any moment.
#[derive(Clone, Copy)]
struct Held {
    now: isize,
    peak: isize,
}

thread_local! {
    /// `None` when not tracking.
    static HELD: Cell<Option<Held>> = const { Cell::new(None) };
}

fn record(delta: isize) {
    // `try_with`: allocations during thread teardown are not tracked.
    let _ = HELD.try_with(|held| {
        if let Some(mut h) = held.get() {
            h.now += delta;
            h.peak = h.peak.max(h.now);
            held.set(Some(h));
        }
    });
}

fn signed(size: usize) -> isize {
    isize::try_from(size).unwrap_or(isize::MAX)
}

// SAFETY: every call is passed to `System` unchanged; recording only reads
// and writes a const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(signed(layout.size()));
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(signed(layout.size()));
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(-signed(layout.size()));
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(signed(new_size) - signed(layout.size()));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f` and returns its result with the most bytes it held allocated
/// at once on this thread (what it returns included).
pub(crate) fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    HELD.with(|h| h.set(Some(Held { now: 0, peak: 0 })));
    let out = f();
    let peak = HELD.with(|h| h.replace(None)).map_or(0, |h| h.peak);
    (out, usize::try_from(peak).unwrap_or(0))
}

/// The memory bound the parsers must keep: a fixed allowance (buffers of a
/// fixed size, such as the log's read chunk) plus a multiple of the input's
/// length. A length field is never trusted beyond what the input actually
/// holds.
pub(crate) fn allocation_bound(input_len: usize) -> usize {
    (2 << 20) + 16 * input_len
}
