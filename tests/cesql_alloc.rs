//! CESQL evaluation allocates nothing per event in the common cases
//! (attribute comparisons, LIKE, IN, EXISTS), as the trigger hot path needs.
//! This test binary counts allocations with its own global allocator, on
//! the test's thread only: the harness's other threads allocate when they
//! like (more so on a loaded machine), which is no cost of the filter.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pilotlight::api::filter::Filter;
use pilotlight::cesql::parser;
use pilotlight::cesql::program::Program;
use pilotlight::cloudevent::Event;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set on the test's thread: only its allocations are counted.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    // `try_with`: a thread being torn down has no slot left, and is not ours.
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn event(ty: &str, source: &str, subject: Option<&str>) -> Event {
    let mut attributes = vec![
        ("specversion".to_owned(), "1.0".to_owned()),
        ("id".to_owned(), "1".to_owned()),
        ("source".to_owned(), source.to_owned()),
        ("type".to_owned(), ty.to_owned()),
        ("sequence".to_owned(), "42".to_owned()),
    ];
    if let Some(subject) = subject {
        attributes.push(("subject".to_owned(), subject.to_owned()));
    }
    Event::new(attributes, None).expect("valid event")
}

#[test]
fn common_filters_allocate_nothing_per_event() {
    COUNTED.with(|counted| counted.set(true));
    // The counter sees allocations at all (so a zero below means something).
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let upper = Filter::Cesql(Arc::new(Program::new(
        parser::parse("UPPER(type) = 'X'").expect("parses"),
    )));
    upper.matches(&event("x", "a", None));
    assert!(ALLOCATIONS.load(Ordering::Relaxed) > before);

    let events = [
        event("com.example.order.created", "a", Some("x")),
        event("org.other", "b", None),
        event("com.example.x", "c", Some("y")),
    ];
    for expression in [
        "type LIKE 'com.example.%' AND source IN ('a','b') AND EXISTS subject",
        "type = 'com.example.order.created' OR NOT (source = 'c')",
        "sequence = 42 AND type NOT LIKE '%other%'",
        "source NOT IN ('x', 'y', 'z') XOR EXISTS subject",
    ] {
        let filter = Filter::Cesql(Arc::new(Program::new(
            parser::parse(expression).expect("parses"),
        )));
        // Warm up anything lazily initialised (metrics, tracing).
        for e in &events {
            filter.matches(e);
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let mut matched = 0;
        for _ in 0..1000 {
            for e in &events {
                matched += usize::from(filter.matches(e));
            }
        }
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(
            allocations, 0,
            "{expression}: {allocations} allocations for 3000 evaluations"
        );
        assert!(
            matched > 0 || expression.contains("XOR"),
            "{expression} never matched"
        );
    }
}
