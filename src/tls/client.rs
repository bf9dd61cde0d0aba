//! What deliveries to `https://` destinations trust: the system's roots,
//! the trust bundles (PEM CA certificates every delivery trusts), the
//! destination's own `CACerts`, and pilotlight's own serving certificates
//! (so that a Trigger delivering to a Broker or Service of the same
//! pilotlight over HTTPS needs no CA given: whoever presents that exact
//! certificate holds its private key, which only this process has).
//!
//! Client configurations are built once per distinct set of extra CAs and
//! cached; a change of the trust bundles starts a new generation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{CertStore, TlsError, provider, trust_anchors};

/// Cached configurations past this are dropped and built again on demand
/// (CA sets come from objects, which come and go).
const MAX_CACHED: usize = 256;

/// The trust of every delivery. Cheap to clone (shared).
#[derive(Clone, Default)]
pub(crate) struct ClientTls {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Pilotlight's own listeners' certificates.
    own: Mutex<Vec<Arc<CertStore>>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Trust bundles: (where from, PEM), as last set.
    bundles: Vec<(String, String)>,
    bundle_anchors: Arc<Vec<CertificateDer<'static>>>,
    generation: u64,
    /// By the destination's `CACerts` (None: none).
    configs: HashMap<Option<Arc<str>>, Arc<ClientConfig>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

/// The system's trust anchors, loaded once (the first HTTPS delivery).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "a system CA certificate could not be loaded");
        }
        if found.certs.is_empty() {
            tracing::warn!(
                "no system CA certificates found (install ca-certificates, or set SSL_CERT_FILE): HTTPS destinations are trusted through CACerts and trust bundles only"
            );
        }
        found.certs
    })
}

impl ClientTls {
    /// Trusts what `store` serves too (a listener of this process).
    pub(crate) fn trust_own(&self, store: Arc<CertStore>) {
        self.shared
            .own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(store);
    }

    /// Replaces the trust bundles: each a PEM text of CA certificates and
    /// where it came from (for errors). A bundle that does not parse is
    /// left out and logged (manifests are checked at load, so this is
    /// rare). Returns whether anything changed.
    pub(crate) fn set_trust_bundles(&self, mut bundles: Vec<(String, String)>) -> bool {
        bundles.sort();
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.bundles == bundles {
            return false;
        }
        let mut anchors = Vec::new();
        for (origin, pem) in &bundles {
            match trust_anchors(pem.as_bytes(), origin) {
                Ok(certificates) => anchors.extend(certificates),
                Err(e) => tracing::warn!(error = %e, "a trust bundle is left out"),
            }
        }
        state.bundles = bundles;
        state.bundle_anchors = Arc::new(anchors);
        state.generation += 1;
        state.configs.clear();
        true
    }

    /// The generation of the trust bundles: it changes with them.
    #[cfg(test)]
    fn generation(&self) -> u64 {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation
    }

    /// The client configuration that trusts the system, the bundles, this
    /// process's own certificates and `ca_certs` (a destination's PEM
    /// `CACerts`), built once per distinct `ca_certs`.
    pub(crate) fn config(
        &self,
        ca_certs: Option<&Arc<str>>,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let key = ca_certs.cloned();
        let bundles = {
            let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(config) = state.configs.get(&key) {
                return Ok(config.clone());
            }
            state.bundle_anchors.clone()
        };
        let extra = match ca_certs {
            Some(pem) => trust_anchors(pem.as_bytes(), "CACerts")?,
            None => Vec::new(),
        };
        let verifier = Verifier::new(&bundles, &extra, self.shared.clone());
        // ALPN is left to the connector (hyper-rustls offers what it speaks).
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::BadAnchor {
                origin: "the TLS client".into(),
                reason: e.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let config = Arc::new(config);
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.configs.len() >= MAX_CACHED {
            state.configs.clear();
        }
        state.configs.insert(key, config.clone());
        Ok(config)
    }
}

/// WebPKI verification against the roots, after a check for this
/// process's own certificates.
#[derive(Debug)]
struct Verifier {
    /// None when there are no roots at all (no system CAs, no bundles, no
    /// CACerts): every certificate but our own is then of an unknown issuer.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    own: OwnCertificates,
}

struct OwnCertificates(Arc<Shared>);

impl std::fmt::Debug for OwnCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnCertificates")
    }
}

impl OwnCertificates {
    fn serve(&self, leaf: &CertificateDer<'_>) -> bool {
        self.0
            .own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|store| store.serves(leaf))
    }
}

impl Verifier {
    fn new(
        bundles: &[CertificateDer<'static>],
        extra: &[CertificateDer<'static>],
        shared: Arc<Shared>,
    ) -> Self {
        let mut roots = RootCertStore::empty();
        // Parsed when loaded or set; a system certificate that does not
        // parse is skipped, as rustls-native-certs' users do.
        let (_, _) = roots.add_parsable_certificates(system_roots().iter().cloned());
        let (_, _) = roots.add_parsable_certificates(bundles.iter().cloned());
        let (_, _) = roots.add_parsable_certificates(extra.iter().cloned());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .ok();
        Verifier {
            webpki,
            own: OwnCertificates(shared),
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.own.serve(end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(webpki) => webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The certificate problem in an error chain, if that is why a connection
/// failed, as a sentence that names it and says what to do.
pub(crate) fn certificate_problem(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    // io::Errors wrap their cause without giving it as their source (an
    // io::Error in an io::Error, as the connectors make them): look
    // inside them as well as along the sources.
    let mut pending = vec![error];
    while let Some(error) = pending.pop() {
        if let Some(found) = error.downcast_ref::<rustls::Error>() {
            return Some(describe(found));
        }
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            pending.push(inner);
        }
        if let Some(source) = error.source() {
            pending.push(source);
        }
    }
    None
}

fn describe(error: &rustls::Error) -> String {
    let rustls::Error::InvalidCertificate(problem) = error else {
        return format!("TLS handshake failed: {error}");
    };
    let name = match problem {
        CertificateError::UnknownIssuer => "UnknownIssuer".to_owned(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("Expired ({problem})")
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("NotValidForName ({problem})")
        }
        other => format!("{other}"),
    };
    let hint = match problem {
        CertificateError::UnknownIssuer => {
            "; the server's certificate is not signed by a CA this client trusts"
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "; the certificate does not name the host of the destination's URL"
        }
        _ => "",
    };
    format!("certificate verify failed: {name}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_issuer_is_named_with_what_to_do() {
        let io = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        ));
        let message = certificate_problem(&io).expect("a certificate problem");
        assert!(
            message.starts_with("certificate verify failed: UnknownIssuer; "),
            "{message}"
        );

        let other = std::io::Error::other("connection refused");
        assert_eq!(certificate_problem(&other), None);
    }

    #[test]
    fn configurations_are_cached_per_ca_set_and_rebuilt_with_new_bundles() {
        let tls = ClientTls::default();
        let a = tls.config(None).expect("config");
        let b = tls.config(None).expect("config");
        assert!(Arc::ptr_eq(&a, &b));
        let generation = tls.generation();
        assert!(!tls.set_trust_bundles(Vec::new()));
        let bad = vec![("ConfigMap ns/b".to_owned(), "nothing".to_owned())];
        assert!(tls.set_trust_bundles(bad));
        assert_ne!(tls.generation(), generation);
        let c = tls.config(None).expect("config");
        assert!(!Arc::ptr_eq(&a, &c));
        let err = tls
            .config(Some(&Arc::from("not pem")))
            .expect_err("bad CACerts");
        assert!(err.to_string().starts_with("CACerts: no PEM certificate"));
    }
}
