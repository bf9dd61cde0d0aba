//! Fault points: named moments where a test can make the process abort, to
//! show that a crash exactly there loses no acknowledged event and leaves
//! nothing corrupt behind (tests/faults.rs).
//!
//! `PILOTLIGHT_FAULT_POINT=NAME` aborts the process (`std::process::abort`,
//! as abrupt as kill -9) the first time the code reaches that point;
//! `NAME:N` the N-th time, so that a test can let the log fill first. The
//! variable is read once; unset, a point costs one load of a static.
//!
//! | name | where |
//! |---|---|
//! | `segment-roll` | the log's writer created the next segment file, before the segment list and the directory know it |
//! | `retention-delete` | retention removed a segment file, before the directory is synced (and before the next one goes) |
//! | `cursor-save` | the new cursors are written to `cursors.tmp`, before it replaces `cursors` |

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The variable that arms a fault point.
pub const FAULT_POINT_VAR: &str = "PILOTLIGHT_FAULT_POINT";

pub(crate) const SEGMENT_ROLL: &str = "segment-roll";
pub(crate) const RETENTION_DELETE: &str = "retention-delete";
pub(crate) const CURSOR_SAVE: &str = "cursor-save";

/// The armed point and on which hit it fires.
struct Armed {
    name: String,
    on_hit: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| parse(&std::env::var(FAULT_POINT_VAR).ok()?))
        .as_ref()
}

/// `NAME` or `NAME:N` (N ≥ 1); anything else arms nothing.
fn parse(value: &str) -> Option<Armed> {
    let (name, on_hit) = match value.split_once(':') {
        Some((name, n)) => (name, n.trim().parse().ok().filter(|n| *n >= 1)?),
        None => (value, 1),
    };
    let name = name.trim();
    (!name.is_empty()).then(|| Armed {
        name: name.to_owned(),
        on_hit,
        hits: AtomicU64::new(0),
    })
}

/// Aborts the process if `point` is armed and this is the hit it fires on.
pub(crate) fn hit(point: &str) {
    let Some(armed) = armed() else { return };
    if armed.name != point {
        return;
    }
    if armed.hits.fetch_add(1, Ordering::SeqCst) + 1 == armed.on_hit {
        eprintln!("pilotlight: fault point {point} reached ({FAULT_POINT_VAR}): aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn a_point_fires_on_the_hit_it_names() {
        let armed = parse("segment-roll:3").expect("armed");
        assert_eq!((armed.name.as_str(), armed.on_hit), ("segment-roll", 3));
        assert_eq!(parse("cursor-save").map(|a| a.on_hit), Some(1));
        for wrong in ["", ":2", "x:0", "x:y"] {
            assert!(parse(wrong).is_none(), "{wrong}");
        }
    }
}
