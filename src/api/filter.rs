//! Filters on events, compiled from Knative's dialects when the object
//! loads: a Trigger's `spec.filter.attributes` and `spec.filters`, and an
//! ApiServerSource's `spec.filters` (the same Subscriptions API dialects:
//! exact, prefix, suffix, all, any, not, cesql). How a filter matches an
//! event is `eventing::trigger::filter`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::cloudevent::ValidationError;

/// One entry of a `filters` list (Knative's `SubscriptionsAPIFilter`):
/// exactly one dialect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionsApiFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<SubscriptionsApiFilter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<SubscriptionsApiFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<SubscriptionsApiFilter>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exact: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prefix: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub suffix: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cesql: Option<String>,
}

/// A compiled filter.
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

    /// A `filters` list (Knative's Subscriptions API filters, at `field`):
    /// an event must pass every entry.
    pub(crate) fn compile_all(
        filters: &[SubscriptionsApiFilter],
        field: &str,
    ) -> Result<Filter, Invalid> {
        let mut compiled = compile_list(filters, field)?;
        Ok(match compiled.len() {
            0 => Filter::Everything,
            1 => compiled.pop().unwrap_or(Filter::Everything),
            _ => Filter::All(compiled),
        })
    }
}

fn compile_list(filters: &[SubscriptionsApiFilter], field: &str) -> Result<Vec<Filter>, Invalid> {
    filters
        .iter()
        .enumerate()
        .map(|(i, f)| compile(f, &format!("{field}[{i}]")))
        .collect()
}

fn compile(filter: &SubscriptionsApiFilter, field: &str) -> Result<Filter, Invalid> {
    let dialects = [
        !filter.all.is_empty(),
        !filter.any.is_empty(),
        filter.not.is_some(),
        !filter.exact.is_empty(),
        !filter.prefix.is_empty(),
        !filter.suffix.is_empty(),
        filter.cesql.is_some(),
    ];
    match dialects.iter().filter(|set| **set).count() {
        0 => {
            return Err(Invalid::new(
                field,
                "set one dialect: exact, prefix, suffix, all, any, not or cesql",
            ));
        }
        1 => {}
        _ => {
            return Err(Invalid::new(
                field,
                "multiple dialects found: a filter has exactly one of exact, prefix, suffix, all, any, not, cesql",
            ));
        }
    }
    if !filter.all.is_empty() {
        return Ok(Filter::All(compile_list(
            &filter.all,
            &format!("{field}.all"),
        )?));
    }
    if !filter.any.is_empty() {
        return Ok(Filter::Any(compile_list(
            &filter.any,
            &format!("{field}.any"),
        )?));
    }
    if let Some(not) = &filter.not {
        return Ok(Filter::Not(Box::new(compile(
            not,
            &format!("{field}.not"),
        )?)));
    }
    if let Some(expression) = &filter.cesql {
        return crate::cesql::parser::parse(expression)
            .map(|parsed| {
                Filter::Cesql(std::sync::Arc::new(crate::cesql::program::Program::new(
                    parsed,
                )))
            })
            .map_err(|e| Invalid::new(format!("{field}.cesql"), e.to_string()));
    }
    let (dialect, map) = [
        ("exact", &filter.exact),
        ("prefix", &filter.prefix),
        ("suffix", &filter.suffix),
    ]
    .into_iter()
    .find(|(_, m)| !m.is_empty())
    .ok_or_else(|| Invalid::new(field, "empty filter"))?;
    let field = format!("{field}.{dialect}");
    let mut pairs = map.iter();
    let (Some((attribute, value)), None) = (pairs.next(), pairs.next()) else {
        return Err(Invalid::new(field, "must have exactly one attribute"));
    };
    check_attribute_name(&format!("{field}.{attribute}"), attribute)?;
    if value.is_empty() {
        return Err(Invalid::new(
            format!("{field}.{attribute}"),
            "value must not be empty",
        ));
    }
    let (attribute, value) = (attribute.clone(), value.clone());
    Ok(match dialect {
        "exact" => Filter::Exact { attribute, value },
        "prefix" => Filter::Prefix {
            attribute,
            prefix: value,
        },
        _ => Filter::Suffix {
            attribute,
            suffix: value,
        },
    })
}

/// Filters name CloudEvents attributes; a name no event can have is a
/// mistake, refused with its field.
pub(crate) fn check_attribute_name(field: &str, name: &str) -> Result<(), Invalid> {
    if crate::cloudevent::is_valid_attribute_name(name) {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            ValidationError::BadName(name.to_owned()).to_string(),
        ))
    }
}
