//! A KafkaSource's `spec.net` resolved into librdkafka's settings, reading
//! its Secrets from the loaded objects as Knative's controller reads them
//! from the API server:
//!
//! - `sasl.enable` and `tls.enable` give `security.protocol`: SASL_SSL,
//!   SASL_PLAINTEXT, SSL (or PLAINTEXT with neither);
//! - SASL: `sasl.mechanisms` from the Secret key `sasl.type` names (PLAIN
//!   when not set), `sasl.username` and `sasl.password` from `user` and
//!   `password`;
//! - TLS: `ssl.ca.pem` from `caCert` (the system's CAs without it),
//!   `ssl.certificate.pem` and `ssl.key.pem` from `cert` and `key`.
//!
//! A section that is not enabled is not read. Errors name the field, the
//! Secret and the key.

use crate::api::ObjectKey;
use crate::api::index::ObjectIndex;
use crate::api::sources::kafka::{KafkaNetSpec, SecretValueFromSource};
use crate::eventing::backend::kafka::config::{KafkaAuth, Sasl, Security, Tls, sasl_mechanism};

/// The source's security settings; no properties without `spec.net`.
pub(crate) fn resolve(
    net: Option<&KafkaNetSpec>,
    namespace: &str,
    index: &ObjectIndex<'_>,
) -> Result<KafkaAuth, String> {
    let Some(net) = net else {
        return Ok(KafkaAuth::default());
    };
    let read = SecretReader { namespace, index };
    let mut security = Security::default();
    if net.sasl.enable {
        let mechanism = read
            .optional(&net.sasl.mechanism, "spec.net.sasl.type")?
            .unwrap_or_else(|| "PLAIN".to_owned());
        // A trailing newline is what `kubectl create secret --from-file`
        // leaves; it is never part of a mechanism's name.
        let mechanism = sasl_mechanism(mechanism.trim())
            .map_err(|e| format!("spec.net.sasl.type: the SASL mechanism {e}"))?;
        security.sasl = Some(Sasl {
            mechanism,
            user: read.required(&net.sasl.user, "spec.net.sasl.user")?,
            password: read.required(&net.sasl.password, "spec.net.sasl.password")?,
        });
    }
    if net.tls.enable {
        security.tls = Some(Tls {
            ca: read.optional(&net.tls.ca_cert, "spec.net.tls.caCert")?,
            certificate: read.optional(&net.tls.cert, "spec.net.tls.cert")?,
            key: read.optional(&net.tls.key, "spec.net.tls.key")?,
        });
    }
    Ok(KafkaAuth::new(security))
}

/// Reads `secretKeyRef`s of one namespace.
struct SecretReader<'a> {
    namespace: &'a str,
    index: &'a ObjectIndex<'a>,
}

impl SecretReader<'_> {
    /// The value, which must be set (load-time validation checked that the
    /// reference is there).
    fn required(&self, value: &SecretValueFromSource, field: &str) -> Result<String, String> {
        self.optional(value, field)?
            .ok_or_else(|| format!("{field}: is required: a secretKeyRef with name and key"))
    }

    /// The value, `None` when no reference is given. A reference to a
    /// Secret or key that does not exist, or to an empty or binary value,
    /// is an error (Knative refuses empty values too).
    fn optional(
        &self,
        value: &SecretValueFromSource,
        field: &str,
    ) -> Result<Option<String>, String> {
        let Some(selector) = &value.secret_key_ref else {
            return Ok(None);
        };
        let secret_key = ObjectKey::new(self.namespace, selector.name.clone());
        let field = format!("{field}.secretKeyRef");
        let secret = self
            .index
            .secret(&secret_key)
            .map_err(|e| format!("{field}: {e}"))?;
        let key = &selector.key;
        let text = match secret.text(key) {
            None => {
                return Err(format!(
                    "{field}: Secret {secret_key} has no key '{key}' (in data or stringData)"
                ));
            }
            Some(Err(reason)) => {
                return Err(format!("{field}: Secret {secret_key} key '{key}' {reason}"));
            }
            Some(Ok(text)) => text,
        };
        if text.is_empty() {
            return Err(format!("{field}: Secret {secret_key} key '{key}' is empty"));
        }
        Ok(Some(text))
    }
}
