//! A Trigger's filter, compiled from Knative's dialects (`spec.filter.attributes`
//! and `spec.filters`: exact, prefix, suffix, all, any, not, cesql) when the
//! Trigger loads. How a filter matches an event is `eventing::trigger::filter`.

use std::sync::Arc;

/// A compiled trigger filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// No filter: every event matches.
    Everything,
    Exact {
        attribute: String,
        value: String,
    },
    Prefix {
        attribute: String,
        prefix: String,
    },
    Suffix {
        attribute: String,
        suffix: String,
    },
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
    /// A CESQL expression, compiled once when the Trigger loads.
    Cesql(Arc<crate::cesql::program::Program>),
}

impl Filter {
    /// Knative's legacy `spec.filter.attributes`: every pair must match exactly;
    /// an empty value matches any value (Knative's `TriggerAnyFilter`).
    pub(crate) fn from_attributes<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Filter {
        let exact: Vec<Filter> = pairs
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(a, v)| Filter::Exact {
                attribute: a.to_owned(),
                value: v.to_owned(),
            })
            .collect();
        match exact.len() {
            0 => Filter::Everything,
            1 => exact.into_iter().next().unwrap_or(Filter::Everything),
            _ => Filter::All(exact),
        }
    }
}
