//! `Trigger` (eventing.knative.dev/v1).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duck::{DeliverySpec, Destination};
use super::{Invalid, ObjectMeta};
use crate::api::filter::{Filter, SubscriptionsApiFilter, check_attribute_name};

/// Delivery order annotation (Knative's Kafka broker name, used for every backend).
pub(crate) const DELIVERY_ORDER_ANNOTATION: &str = "kafka.eventing.knative.dev/delivery.order";
/// Deliveries a trigger keeps in flight at most (unordered triggers).
pub(crate) const MAX_IN_FLIGHT_ANNOTATION: &str = "pilotlight.dev/max-in-flight";
/// Concurrent deliveries (and prefetch) of a trigger on a RabbitMQBroker, as
/// in eventing-rabbitmq: 1 (the default) delivers in order.
pub(crate) const RABBITMQ_PARALLELISM_ANNOTATION: &str =
    "rabbitmq.eventing.knative.dev/parallelism";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trigger {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: TriggerSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerSpec {
    pub broker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<AttributesFilter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<SubscriptionsApiFilter>,
    pub subscriber: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// The legacy `spec.filter`: exact matches on attributes, ANDed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttributesFilter {
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// How a trigger's events are delivered relative to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DeliveryOrder {
    Ordered,
    Unordered,
}

impl Trigger {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.spec.broker.is_empty() {
            return Err(Invalid::new("spec.broker", "is required"));
        }
        self.compile_filter()?;
        self.spec.subscriber.validate("spec.subscriber")?;
        if let Some(delivery) = &self.spec.delivery {
            delivery.validate("spec.delivery")?;
        }
        self.delivery_order()?;
        self.max_in_flight(1)?;
        self.rabbitmq_parallelism()?;
        Ok(())
    }

    /// The trigger's parallelism on a RabbitMQBroker: 1 to 1000, default 1.
    pub(crate) fn rabbitmq_parallelism(&self) -> Result<usize, Invalid> {
        match self
            .metadata
            .annotations
            .get(RABBITMQ_PARALLELISM_ANNOTATION)
        {
            None => Ok(1),
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => Ok(n),
                _ => Err(Invalid::new(
                    format!("metadata.annotations.{RABBITMQ_PARALLELISM_ANNOTATION}"),
                    format!("'{text}' must be a whole number from 1 to 1000"),
                )),
            },
        }
    }

    /// The trigger's filter: `spec.filters` when set (then `spec.filter` is
    /// ignored, as in Knative), else `spec.filter.attributes`.
    pub(crate) fn compile_filter(&self) -> Result<Filter, Invalid> {
        if !self.spec.filters.is_empty() {
            return Filter::compile_all(&self.spec.filters, "spec.filters");
        }
        let attributes = self.spec.filter.as_ref().map(|f| &f.attributes);
        for name in attributes.into_iter().flatten().map(|(n, _)| n) {
            check_attribute_name(&format!("spec.filter.attributes.{name}"), name)?;
        }
        Ok(Filter::from_attributes(
            attributes
                .into_iter()
                .flatten()
                .map(|(n, v)| (n.as_str(), v.as_str())),
        ))
    }

    pub(crate) fn delivery_order(&self) -> Result<DeliveryOrder, Invalid> {
        match self
            .metadata
            .annotations
            .get(DELIVERY_ORDER_ANNOTATION)
            .map(String::as_str)
        {
            None | Some("unordered") => Ok(DeliveryOrder::Unordered),
            Some("ordered") => Ok(DeliveryOrder::Ordered),
            Some(other) => Err(Invalid::new(
                format!("metadata.annotations.{DELIVERY_ORDER_ANNOTATION}"),
                format!("'{other}' is not a delivery order: use 'ordered' or 'unordered'"),
            )),
        }
    }

    /// Deliveries in flight at most: 1 when ordered, else the annotation or `default`.
    pub(crate) fn max_in_flight(&self, default: usize) -> Result<usize, Invalid> {
        if self.delivery_order()? == DeliveryOrder::Ordered {
            return Ok(1);
        }
        annotated_max_in_flight(&self.metadata, default)
    }
}

/// The deliveries in flight at most that `pilotlight.dev/max-in-flight`
/// asks of a trigger or subscription, else `default`.
pub(crate) fn annotated_max_in_flight(
    metadata: &ObjectMeta,
    default: usize,
) -> Result<usize, Invalid> {
    match metadata.annotations.get(MAX_IN_FLIGHT_ANNOTATION) {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => Ok(n),
            _ => Err(Invalid::new(
                format!("metadata.annotations.{MAX_IN_FLIGHT_ANNOTATION}"),
                format!("'{text}' must be a whole number from 1 to 10000"),
            )),
        },
    }
}

impl crate::api::kinds::Kind for Trigger {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        self.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(spec_yaml: &str) -> Trigger {
        let text = format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: default\n  subscriber:\n    uri: http://127.0.0.1:1/\n{spec_yaml}"
        );
        serde_saphyr::from_str(&text).expect("parses")
    }

    #[test]
    fn filters_win_over_filter() {
        let t = trigger(
            "  filter:\n    attributes:\n      type: a\n  filters:\n    - prefix:\n        type: b\n",
        );
        assert_eq!(
            t.compile_filter().expect("ok"),
            Filter::Prefix {
                attribute: "type".into(),
                prefix: "b".into()
            }
        );
    }

    #[test]
    fn nested_dialects_compile() {
        let t = trigger(
            "  filters:\n    - any:\n        - exact:\n            type: a\n        - not:\n            suffix:\n              source: /x\n",
        );
        let f = t.compile_filter().expect("ok");
        assert!(matches!(f, Filter::Any(ref v) if v.len() == 2));
    }

    #[test]
    fn two_dialects_in_one_filter_are_refused_with_the_path() {
        let t =
            trigger("  filters:\n    - exact:\n        type: a\n      prefix:\n        type: b\n");
        let err = t.validate().expect_err("two");
        assert_eq!(err.field, "spec.filters[0]");
        assert!(err.reason.contains("multiple dialects"));
    }

    #[test]
    fn exact_needs_exactly_one_attribute() {
        let t = trigger(
            "  filters:\n    - all:\n      - exact:\n          type: a\n          source: b\n",
        );
        let err = t.validate().expect_err("two keys");
        assert_eq!(
            err.to_string(),
            "spec.filters[0].all[0].exact: must have exactly one attribute"
        );
    }

    #[test]
    fn bad_attribute_name_is_refused() {
        let t = trigger("  filter:\n    attributes:\n      Type: a\n");
        let err = t.validate().expect_err("bad name");
        assert_eq!(err.field, "spec.filter.attributes.Type");
    }

    #[test]
    fn cesql_compiles_at_load_and_a_parse_error_names_line_and_column() {
        let t = trigger("  filters:\n    - cesql: \"type = 'a'\"\n");
        t.validate().expect("valid");
        assert!(matches!(t.compile_filter(), Ok(Filter::Cesql(_))));
        let bad = trigger("  filters:\n    - cesql: \"type = \"\n");
        let err = bad.validate().expect_err("parse error");
        assert_eq!(err.field, "spec.filters[0].cesql");
        assert!(err.reason.contains("line 1, column"), "{err}");
    }

    #[test]
    fn order_and_in_flight_annotations() {
        let mut t = trigger("");
        assert_eq!(t.max_in_flight(50), Ok(50));
        t.metadata
            .annotations
            .insert(DELIVERY_ORDER_ANNOTATION.into(), "ordered".into());
        assert_eq!(t.max_in_flight(50), Ok(1));
        t.metadata
            .annotations
            .insert(DELIVERY_ORDER_ANNOTATION.into(), "sorted".into());
        assert!(
            t.validate()
                .expect_err("bad order")
                .reason
                .contains("'sorted'")
        );
        t.metadata.annotations.remove(DELIVERY_ORDER_ANNOTATION);
        t.metadata
            .annotations
            .insert(MAX_IN_FLIGHT_ANNOTATION.into(), "0".into());
        assert!(t.validate().is_err());
    }
}
