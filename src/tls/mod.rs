//! TLS for pilotlight's listeners and for its deliveries, on rustls with
//! ring (the one crypto provider in the tree: kube's).
//!
//! - [`server`]: a listener's certificate, from a PEM pair of files (or
//!   given whole, as a Kubernetes `kubernetes.io/tls` Secret's), swapped
//!   in place when it changes; a bad new pair keeps the old one and logs
//!   why. Connections already open are never dropped.
//! - [`accept`]: one port for both schemes: the first byte of a connection
//!   says whether it is a TLS handshake (`0x16`) or plain HTTP.
//! - [`client`]: what deliveries verify `https://` destinations against:
//!   the system's roots, the trust bundles, the destination's own
//!   `CACerts`, and pilotlight's own serving certificate.
//!
//! A bottom layer: it knows nothing of Knative's objects; callers hand it
//! PEM text, files and levels.

pub(crate) mod accept;
pub(crate) mod client;
pub(crate) mod server;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

pub(crate) use accept::{Accepted, ListenerTls};
pub(crate) use client::ClientTls;
pub use server::CertFiles;
pub(crate) use server::CertStore;

/// Knative's `transport-encryption` levels (its `config-features` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportEncryption {
    /// Plain HTTP only (today's behaviour, Knative's default).
    #[default]
    Disabled,
    /// HTTP and HTTPS on the same port; addresses list HTTPS first.
    Permissive,
    /// HTTPS only: a plain HTTP request is refused with a message that says so.
    Strict,
}

impl TransportEncryption {
    /// Knative's spelling of each level.
    pub fn name(self) -> &'static str {
        match self {
            TransportEncryption::Disabled => "disabled",
            TransportEncryption::Permissive => "permissive",
            TransportEncryption::Strict => "strict",
        }
    }

    /// Whether HTTPS is served (and preferred in addresses).
    pub fn https(self) -> bool {
        self != TransportEncryption::Disabled
    }

    /// Whether plain HTTP is served.
    pub fn http(self) -> bool {
        self != TransportEncryption::Strict
    }
}

impl std::str::FromStr for TransportEncryption {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "disabled" => Ok(TransportEncryption::Disabled),
            "permissive" => Ok(TransportEncryption::Permissive),
            "strict" => Ok(TransportEncryption::Strict),
            other => Err(format!(
                "'{other}' is not a transport-encryption level: use disabled, permissive or strict"
            )),
        }
    }
}

impl std::fmt::Display for TransportEncryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong with a certificate, a key or a CA bundle; each message
/// names where it came from.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { origin: String },
    #[error("{origin}: a PEM block does not parse: {reason}")]
    BadPem { origin: String, reason: String },
    #[error(
        "{origin}: no PEM private key found (expected -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)"
    )]
    NoKey { origin: String },
    #[error("{origin}: the private key is not usable: {reason}")]
    BadKey { origin: String, reason: String },
    #[error("{origin}: the private key does not belong to the certificate: {reason}")]
    KeyMismatch { origin: String, reason: String },
    #[error("{origin}: a certificate is not a valid trust anchor: {reason}")]
    BadAnchor { origin: String, reason: String },
}

/// The crypto provider of everything here: ring, as kube's.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The certificates of a PEM text (other blocks, such as keys, are
/// skipped), at least one; `origin` names the text in errors.
pub fn certificates_from_pem(
    pem: &[u8],
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut certificates = Vec::new();
    for certificate in CertificateDer::pem_slice_iter(pem) {
        certificates.push(certificate.map_err(|e| TlsError::BadPem {
            origin: origin.to_owned(),
            reason: e.to_string(),
        })?);
    }
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            origin: origin.to_owned(),
        });
    }
    Ok(certificates)
}

/// Checks that a PEM text holds CA certificates that can be trusted (what
/// a Destination's `CACerts` and a trust bundle hold); the error says why
/// not.
pub fn check_ca_pem(pem: &str, origin: &str) -> Result<(), TlsError> {
    trust_anchors(pem.as_bytes(), origin).map(drop)
}

/// The trust anchors of a PEM text of CA certificates.
pub(crate) fn trust_anchors(
    pem: &[u8],
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = certificates_from_pem(pem, origin)?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in &certificates {
        roots
            .add(certificate.clone())
            .map_err(|e| TlsError::BadAnchor {
                origin: origin.to_owned(),
                reason: e.to_string(),
            })?;
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_as_knative_spells_them() {
        assert_eq!(
            "Strict".parse::<TransportEncryption>(),
            Ok(TransportEncryption::Strict)
        );
        assert_eq!(
            "permissive".parse::<TransportEncryption>(),
            Ok(TransportEncryption::Permissive)
        );
        let err = "on"
            .parse::<TransportEncryption>()
            .expect_err("not a level");
        assert!(err.contains("disabled, permissive or strict"), "{err}");
        assert!(TransportEncryption::Permissive.http() && TransportEncryption::Permissive.https());
        assert!(!TransportEncryption::Strict.http());
        assert!(!TransportEncryption::Disabled.https());
    }

    #[test]
    fn a_pem_text_without_a_certificate_is_refused_by_name() {
        let err = certificates_from_pem(b"hello", "spec.subscriber.CACerts").expect_err("no cert");
        assert_eq!(
            err.to_string(),
            "spec.subscriber.CACerts: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)"
        );
        let err = check_ca_pem(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "CACerts",
        )
        .expect_err("not a certificate");
        assert!(
            err.to_string()
                .starts_with("CACerts: a certificate is not a valid trust anchor"),
            "{err}"
        );
    }
}
