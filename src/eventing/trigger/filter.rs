//! How trigger filters match events (the filters themselves, compiled from
//! `spec.filter.attributes` and `spec.filters`, are `api::filter`), and the
//! index that finds the triggers an event matches without testing every
//! trigger.

use std::collections::HashMap;
use std::sync::Arc;

use crate::api::filter::Filter;
use crate::cloudevent::Event;

impl Filter {
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            Filter::Everything => true,
            Filter::Exact { attribute, value } => event.attribute(attribute) == Some(value),
            Filter::Prefix { attribute, prefix } => event
                .attribute(attribute)
                .is_some_and(|v| v.starts_with(prefix.as_str())),
            Filter::Suffix { attribute, suffix } => event
                .attribute(attribute)
                .is_some_and(|v| v.ends_with(suffix.as_str())),
            Filter::All(filters) => filters.iter().all(|f| f.matches(event)),
            Filter::Any(filters) => filters.iter().any(|f| f.matches(event)),
            Filter::Not(filter) => !filter.matches(event),
            Filter::Cesql(expression) => cesql_matches(expression, event),
        }
    }

    /// An exact condition every matching event satisfies, if the filter has one:
    /// the key under which the index files this filter.
    pub(crate) fn required_exact(&self) -> Option<(&str, &str)> {
        match self {
            Filter::Exact { attribute, value } => Some((attribute, value)),
            Filter::All(filters) => {
                // Prefer `type`: it is the most selective attribute in practice.
                let exact = filters.iter().filter_map(Filter::required_exact);
                let mut first = None;
                for (a, v) in exact {
                    if a == "type" {
                        return Some((a, v));
                    }
                    first.get_or_insert((a, v));
                }
                first
            }
            _ => None,
        }
    }
}

/// The spec: an expression that errors does not match. The error is counted
/// by kind and logged at debug, since it repeats for every such event.
fn cesql_matches(program: &crate::cesql::program::Program, event: &Event) -> bool {
    program.matches(event, |kind, message| {
        metrics::counter!("pilotlight_cesql_errors_total", "kind" => kind.as_str()).increment(1);
        tracing::debug!(
            event = event.id(),
            kind = kind.as_str(),
            "CESQL filter error: {message}"
        );
    })
}

/// The trigger slots an event matched, computed once per event against one
/// version of the index. Sparse (the slots themselves, sorted), not a bitmap:
/// an event matches a few of many triggers, and a bitmap as wide as the
/// highest matched slot would cost every tail entry a kilobyte at 10,000
/// triggers. An event that matches nothing allocates nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct MatchSet {
    pub index_version: u64,
    slots: Vec<u32>,
}

impl MatchSet {
    pub(crate) fn contains(&self, slot: usize) -> bool {
        u32::try_from(slot).is_ok_and(|slot| self.slots.binary_search(&slot).is_ok())
    }

    /// The matched slots, in increasing order.
    pub(crate) fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots.iter().map(|&slot| slot as usize)
    }

    /// Builds the set from slots in any order, with repeats.
    fn from_slots(index_version: u64, mut slots: Vec<u32>) -> Self {
        slots.sort_unstable();
        slots.dedup();
        slots.shrink_to_fit();
        MatchSet {
            index_version,
            slots,
        }
    }
}

/// Finds the triggers an event matches. Filters with an exact condition are
/// filed under it (attribute -> value -> slots), so an event costs one hash
/// look-up per indexed attribute plus a full test of the few candidates, not a
/// test of every trigger. Filters without one are tested for every event.
#[derive(Debug, Default)]
pub(crate) struct FilterIndex {
    version: u64,
    filters: Vec<Option<Arc<Filter>>>,
    by_attribute: HashMap<String, HashMap<String, Vec<usize>>>,
    unindexed: Vec<usize>,
}

impl FilterIndex {
    /// Builds the index over `filters[slot]`; empty slots hold `None`.
    pub(crate) fn new(version: u64, filters: Vec<Option<Arc<Filter>>>) -> Self {
        let mut index = FilterIndex {
            version,
            ..Default::default()
        };
        for (slot, filter) in filters.iter().enumerate() {
            let Some(filter) = filter else { continue };
            match filter.required_exact() {
                Some((attribute, value)) => index
                    .by_attribute
                    .entry(attribute.to_owned())
                    .or_default()
                    .entry(value.to_owned())
                    .or_default()
                    .push(slot),
                None => index.unindexed.push(slot),
            }
        }
        index.filters = filters;
        index
    }

    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// The slots whose filter matches the event.
    pub(crate) fn matches(&self, event: &Event) -> MatchSet {
        let candidates = self
            .by_attribute
            .iter()
            .filter_map(|(attribute, values)| values.get(event.attribute(attribute)?))
            .flatten()
            .chain(self.unindexed.iter());
        let matched = candidates
            .filter(|&&slot| {
                self.filters
                    .get(slot)
                    .is_some_and(|f| f.as_ref().is_some_and(|f| f.matches(event)))
            })
            .filter_map(|&slot| u32::try_from(slot).ok())
            .collect();
        MatchSet::from_slots(self.version, matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: &str, source: &str, color: Option<&str>) -> Event {
        let mut event = crate::cloudevent::test_event("1", ty, None);
        event.set_attribute("source", source);
        if let Some(color) = color {
            event.set_attribute("color", color);
        }
        event
    }

    fn exact(a: &str, v: &str) -> Filter {
        Filter::Exact {
            attribute: a.into(),
            value: v.into(),
        }
    }

    #[test]
    fn legacy_attributes_are_anded_and_empty_means_any() {
        let f = Filter::from_attributes([("type", "a"), ("source", "")]);
        assert_eq!(f, exact("type", "a"));
        let f = Filter::from_attributes([("type", "a"), ("source", "/s")]);
        assert!(f.matches(&event("a", "/s", None)));
        assert!(!f.matches(&event("a", "/t", None)));
        assert_eq!(Filter::from_attributes([]), Filter::Everything);
    }

    #[test]
    fn dialects_match_as_knative_defines_them() {
        let e = event("com.example.created", "/orders/1", Some("red"));
        let prefix = Filter::Prefix {
            attribute: "type".into(),
            prefix: "com.example.".into(),
        };
        let suffix = Filter::Suffix {
            attribute: "source".into(),
            suffix: "/1".into(),
        };
        assert!(prefix.matches(&e));
        assert!(suffix.matches(&e));
        assert!(Filter::All(vec![prefix.clone(), suffix.clone()]).matches(&e));
        assert!(Filter::Any(vec![exact("type", "x"), suffix.clone()]).matches(&e));
        assert!(!Filter::Any(vec![exact("type", "x"), exact("color", "blue")]).matches(&e));
        assert!(Filter::Not(Box::new(exact("color", "blue"))).matches(&e));
        assert!(!Filter::Not(Box::new(prefix)).matches(&e));
        // A missing attribute never matches exact, prefix or suffix.
        let plain = event("t", "/s", None);
        assert!(!exact("color", "red").matches(&plain));
        assert!(Filter::Not(Box::new(exact("color", "red"))).matches(&plain));
        // All of nothing is true, any of nothing is false.
        assert!(Filter::All(vec![]).matches(&plain));
        assert!(!Filter::Any(vec![]).matches(&plain));
    }

    #[test]
    fn required_exact_prefers_type() {
        let f = Filter::All(vec![exact("source", "/s"), exact("type", "t")]);
        assert_eq!(f.required_exact(), Some(("type", "t")));
        assert_eq!(Filter::Any(vec![exact("type", "t")]).required_exact(), None);
    }

    #[test]
    fn index_agrees_with_testing_every_filter() {
        let filters: Vec<Option<Arc<Filter>>> = vec![
            Some(Arc::new(exact("type", "a"))),
            None,
            Some(Arc::new(Filter::All(vec![
                exact("type", "a"),
                exact("color", "red"),
            ]))),
            Some(Arc::new(Filter::Prefix {
                attribute: "type".into(),
                prefix: "b".into(),
            })),
            Some(Arc::new(Filter::Everything)),
            Some(Arc::new(exact("color", "red"))),
        ];
        let index = FilterIndex::new(7, filters.clone());
        for e in [
            event("a", "/s", None),
            event("a", "/s", Some("red")),
            event("bx", "/s", Some("blue")),
            event("c", "/s", Some("red")),
        ] {
            let set = index.matches(&e);
            assert_eq!(set.index_version, 7);
            for (slot, f) in filters.iter().enumerate() {
                let expected = f.as_ref().is_some_and(|f| f.matches(&e));
                assert_eq!(set.contains(slot), expected, "slot {slot} for {e:?}");
            }
        }
    }

    #[test]
    fn match_set_spans_many_slots() {
        let s = MatchSet::from_slots(1, vec![130, 3, 130]);
        assert!(s.contains(3) && s.contains(130));
        assert!(!s.contains(4) && !s.contains(129) && !s.contains(1000));
        assert_eq!(s.slots().collect::<Vec<_>>(), vec![3, 130]);
    }

    /// The scale case: 10,000 distinct exact filters on `type`, plus one
    /// prefix filter that cannot be indexed. An event finds its one exact
    /// trigger (and the prefix one) through the index, and the set holds
    /// only those slots.
    #[test]
    fn index_over_ten_thousand_exact_filters_finds_the_one_that_matches() {
        let mut filters: Vec<Option<Arc<Filter>>> = (0..10_000)
            .map(|n| Some(Arc::new(exact("type", &format!("t.{n}")))))
            .collect();
        filters.push(Some(Arc::new(Filter::Prefix {
            attribute: "type".into(),
            prefix: "t.99".into(),
        })));
        let index = FilterIndex::new(3, filters.clone());
        for n in [0usize, 42, 9_999] {
            let e = event(&format!("t.{n}"), "/s", None);
            let set = index.matches(&e);
            let expected: Vec<usize> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| f.as_ref().is_some_and(|f| f.matches(&e)))
                .map(|(slot, _)| slot)
                .collect();
            assert_eq!(set.slots().collect::<Vec<_>>(), expected, "event t.{n}");
        }
        let set = index.matches(&event("t.9999", "/s", None));
        assert_eq!(set.slots().collect::<Vec<_>>(), vec![9_999, 10_000]);
        assert_eq!(
            index.matches(&event("other", "/s", None)).slots().count(),
            0
        );
    }
}
