//! Knative's duck types shared by many kinds: object references, destinations
//! and the delivery spec.

use serde::{Deserialize, Serialize};

use super::Invalid;

/// `KReference`: a reference to another object, by kind and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// `Destination`: where events go, as a reference, a URI, or a reference plus
/// a path (the URI is then resolved against the reference's address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<KReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, rename = "CACerts", skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

impl Destination {
    /// Checks the destination's shape (not whether its reference resolves).
    pub(crate) fn validate(&self, field: &str) -> Result<(), Invalid> {
        if let Some(pem) = self.ca_certs.as_deref().filter(|p| !p.trim().is_empty()) {
            crate::tls::check_ca_pem(pem, "the PEM text")
                .map_err(|e| Invalid::new(format!("{field}.CACerts"), e.to_string()))?;
        }
        match (&self.reference, &self.uri) {
            (None, None) => Err(Invalid::new(field, "set 'ref' or 'uri'")),
            (None, Some(uri)) => {
                let parsed: http::Uri = uri.parse().map_err(|e| {
                    Invalid::new(format!("{field}.uri"), format!("'{uri}' is not a URI: {e}"))
                })?;
                if parsed.scheme().is_none() || parsed.host().is_none() {
                    return Err(Invalid::new(
                        format!("{field}.uri"),
                        format!("'{uri}' must be an absolute URI such as http://host:port/path"),
                    ));
                }
                Ok(())
            }
            (Some(r), _) => {
                for (name, value) in [
                    ("apiVersion", &r.api_version),
                    ("kind", &r.kind),
                    ("name", &r.name),
                ] {
                    if value.is_empty() {
                        return Err(Invalid::new(
                            format!("{field}.ref.{name}"),
                            "must not be empty",
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

/// `BackoffPolicyType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackoffPolicy {
    Linear,
    #[default]
    Exponential,
}

/// `DeliverySpec`: retries, backoff, timeout and the dead-letter sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliverySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_policy: Option<BackoffPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_max: Option<String>,
    /// The HTTP mode events are sent in (`json` or `binary`); read it with
    /// [`DeliverySpec::format`]. Text, not an enum, so that a wrong value is
    /// refused with the values there are rather than serde's variant list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// Knative's `DeliverySpec.format`: how an event is put in an HTTP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryFormat {
    /// Attributes as `ce-` headers, data as the body (the default).
    #[default]
    Binary,
    /// The whole event as one `application/cloudevents+json` document
    /// (structured mode).
    Json,
}

impl DeliveryFormat {
    fn parse(text: &str) -> Option<DeliveryFormat> {
        match text {
            "binary" => Some(DeliveryFormat::Binary),
            "json" => Some(DeliveryFormat::Json),
            _ => None,
        }
    }
}

impl DeliverySpec {
    pub(crate) fn validate(&self, field: &str) -> Result<(), Invalid> {
        if let Some(sink) = &self.dead_letter_sink {
            sink.validate(&format!("{field}.deadLetterSink"))?;
        }
        if let Some(retry) = self.retry
            && retry < 0
        {
            return Err(Invalid::new(
                format!("{field}.retry"),
                format!("{retry} must be 0 or more"),
            ));
        }
        for (name, value) in [
            ("backoffDelay", &self.backoff_delay),
            ("timeout", &self.timeout),
            ("retryAfterMax", &self.retry_after_max),
        ] {
            if let Some(text) = value {
                let duration = parse_duration(text)
                    .map_err(|reason| Invalid::new(format!("{field}.{name}"), reason))?;
                // Knative refuses a zero timeout (period.IsZero): no request
                // could ever be answered in it.
                if name == "timeout" && duration.is_zero() {
                    return Err(Invalid::new(
                        format!("{field}.timeout"),
                        format!("'{text}' is zero: a request needs some time, such as PT10S"),
                    ));
                }
            }
        }
        self.format()
            .map_err(|reason| Invalid::new(format!("{field}.format"), reason))?;
        Ok(())
    }

    /// `format`: binary when not set, as Knative sends by default.
    pub(crate) fn format(&self) -> Result<DeliveryFormat, String> {
        match self.format.as_deref() {
            None => Ok(DeliveryFormat::default()),
            Some(text) => DeliveryFormat::parse(text)
                .ok_or_else(|| format!("'{text}' is not one of json, binary")),
        }
    }
}

pub use super::duration::parse_duration;

/// `spec.ceOverrides`: extension attributes set on every event a source sends.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CeOverrides {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extensions: std::collections::BTreeMap<String, String>,
}

impl CeOverrides {
    /// Extension names must be CloudEvents attribute names, and not the
    /// required attributes a source sets itself.
    pub(crate) fn validate(&self, field: &str) -> Result<(), Invalid> {
        for name in self.extensions.keys() {
            if !crate::cloudevent::is_valid_attribute_name(name) {
                return Err(Invalid::new(
                    format!("{field}.extensions.{name}"),
                    "is not a CloudEvents attribute name: use 1-20 lower-case letters and digits",
                ));
            }
            if matches!(
                name.as_str(),
                "id" | "source"
                    | "type"
                    | "specversion"
                    | "time"
                    | "subject"
                    | "datacontenttype"
                    | "dataschema"
                    | "data"
            ) {
                return Err(Invalid::new(
                    format!("{field}.extensions.{name}"),
                    "is a context attribute the source sets; ceOverrides only adds extensions",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_needs_ref_or_absolute_uri() {
        let err = Destination::default()
            .validate("spec.subscriber")
            .expect_err("empty");
        assert_eq!(err.to_string(), "spec.subscriber: set 'ref' or 'uri'");
        let relative = Destination {
            uri: Some("/path".into()),
            ..Default::default()
        };
        let err = relative.validate("spec.subscriber").expect_err("relative");
        assert!(
            err.to_string()
                .starts_with("spec.subscriber.uri: '/path' must be an absolute URI")
        );
    }

    #[test]
    fn delivery_fields_are_checked() {
        let spec = DeliverySpec {
            retry: Some(-1),
            ..Default::default()
        };
        assert_eq!(
            spec.validate("spec.delivery").expect_err("neg").to_string(),
            "spec.delivery.retry: -1 must be 0 or more"
        );
        let spec = DeliverySpec {
            timeout: Some("10s".into()),
            ..Default::default()
        };
        assert!(
            spec.validate("spec.delivery")
                .expect_err("dur")
                .to_string()
                .starts_with("spec.delivery.timeout: '10s'")
        );
    }

    /// Each duration field, with what Knative accepts and refuses (see
    /// `api::duration`): the error names the field and the value.
    #[test]
    fn delivery_durations_are_checked_per_field() {
        let spec = |field: &str, text: &str| {
            let mut spec = DeliverySpec::default();
            let value = Some(text.to_owned());
            match field {
                "backoffDelay" => spec.backoff_delay = value,
                "timeout" => spec.timeout = value,
                _ => spec.retry_after_max = value,
            }
            spec.validate("spec.delivery").map_err(|e| e.to_string())
        };
        for field in ["backoffDelay", "timeout", "retryAfterMax"] {
            for text in ["PT0.2S", "PT1M", "P1D", "P1Y", "P1M", "P1W"] {
                assert_eq!(spec(field, text), Ok(()), "{field} {text}");
            }
            for (text, why) in [
                ("PT", "has a T with no hours, minutes or seconds"),
                ("P", "has no value"),
                ("-PT1S", "has a sign"),
                ("2s", "does not start with P"),
            ] {
                let error = spec(field, text).expect_err(text);
                let prefix = format!("spec.delivery.{field}: '{text}' {why}");
                assert!(error.starts_with(&prefix), "{error}");
            }
        }
        // As Knative: a zero timeout is refused, a zero delay or
        // retryAfterMax (opting out of Retry-After) is not.
        assert_eq!(
            spec("timeout", "PT0S").expect_err("zero"),
            "spec.delivery.timeout: 'PT0S' is zero: a request needs some time, such as PT10S"
        );
        assert_eq!(spec("backoffDelay", "PT0S"), Ok(()));
        assert_eq!(spec("retryAfterMax", "PT0S"), Ok(()));
    }

    #[test]
    fn format_is_json_or_binary_and_binary_by_default() {
        let spec = |format: Option<&str>| DeliverySpec {
            format: format.map(str::to_owned),
            ..Default::default()
        };
        assert_eq!(spec(None).format(), Ok(DeliveryFormat::Binary));
        assert_eq!(spec(Some("binary")).format(), Ok(DeliveryFormat::Binary));
        assert_eq!(spec(Some("json")).format(), Ok(DeliveryFormat::Json));
        assert_eq!(
            spec(Some("xml"))
                .validate("spec.delivery")
                .expect_err("xml")
                .to_string(),
            "spec.delivery.format: 'xml' is not one of json, binary"
        );
    }
}
