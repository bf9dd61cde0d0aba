//! `PingSource` (sources.knative.dev/v1): a fixed event sent to a sink on a
//! cron schedule. The running source is `eventing::source::ping`.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::schedule::Schedule;
use crate::api::duck::{CeOverrides, Destination};
use crate::api::{Invalid, ObjectMeta};

/// The CloudEvents type of every ping.
pub(crate) const PING_EVENT_TYPE: &str = "dev.knative.sources.ping";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PingSource {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: PingSourceSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PingSourceSpec {
    pub schedule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    pub sink: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_overrides: Option<CeOverrides>,
}

impl PingSource {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        Schedule::parse(&self.spec.schedule, self.spec.timezone.as_deref())
            .map_err(|e| Invalid::new(e.field, e.reason))?;
        self.data()?;
        self.spec.sink.validate("spec.sink")?;
        if let Some(overrides) = &self.spec.ce_overrides {
            overrides.validate("spec.ceOverrides")?;
        }
        // A sample event, so that a bad contentType (or anything else the
        // event validation rejects) fails here, not at the first tick.
        let mut attributes = vec![
            ("specversion".to_owned(), "1.0".to_owned()),
            ("id".to_owned(), "sample".to_owned()),
            ("source".to_owned(), "/sample".to_owned()),
            ("type".to_owned(), PING_EVENT_TYPE.to_owned()),
        ];
        if let Some(content_type) = &self.spec.content_type {
            attributes.push(("datacontenttype".to_owned(), content_type.clone()));
        }
        crate::cloudevent::Event::new(attributes, self.data()?)
            .map_err(|e| Invalid::new("spec.contentType", e.to_string()))?;
        Ok(())
    }

    /// The event data: `spec.data` as bytes, or `spec.dataBase64` decoded.
    pub(crate) fn data(&self) -> Result<Option<bytes::Bytes>, Invalid> {
        match (&self.spec.data, &self.spec.data_base64) {
            (Some(_), Some(_)) => Err(Invalid::new(
                "spec.dataBase64",
                "set data or dataBase64, not both",
            )),
            (Some(data), None) => Ok(Some(bytes::Bytes::from(data.clone().into_bytes()))),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map(|d| Some(bytes::Bytes::from(d)))
                .map_err(|e| Invalid::new("spec.dataBase64", format!("is not valid base64: {e}"))),
            (None, None) => Ok(None),
        }
    }
}

impl crate::api::kinds::Kind for PingSource {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        self.validate()
    }
}
