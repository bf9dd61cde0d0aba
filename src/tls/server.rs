//! A listener's certificate: loaded from a PEM pair, served to every
//! handshake from one shared slot, and swapped in that slot when the pair
//! changes. Connections already open keep the session they negotiated; new
//! handshakes get the new certificate. A new pair that does not load (a
//! half-written file, a key of another certificate) keeps the old one in
//! service, and the reason is logged once per change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use super::{TlsError, certificates_from_pem, provider};

/// How often the files are looked at for a change.
pub(crate) const RELOAD_POLL: Duration = Duration::from_secs(1);

/// A certificate chain file and its private key file, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The flags they were given with, for errors (`--tls-cert/--tls-key`).
    pub flags: &'static str,
}

impl CertFiles {
    /// Reads and checks the pair.
    pub(crate) fn load(&self) -> Result<CertifiedKey, TlsError> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                what,
                path: format!("{} ({})", path.display(), self.flags),
                source,
            })
        };
        let cert = read("the certificate file", &self.cert)?;
        let key = read("the private key file", &self.key)?;
        certified_key(
            &cert,
            &key,
            &format!("{} ({})", self.cert.display(), self.flags),
            &format!("{} ({})", self.key.display(), self.flags),
        )
    }

    /// What changes when either file is rewritten: modification times and
    /// lengths (a file replaced through a symbolic link, as Kubernetes
    /// updates a mounted Secret, is followed).
    fn stamp(&self) -> Option<Stamp> {
        let of = |path: &Path| {
            let metadata = std::fs::metadata(path).ok()?;
            Some((metadata.modified().ok()?, metadata.len()))
        };
        Some(Stamp {
            cert: of(&self.cert)?,
            key: of(&self.key)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    cert: (SystemTime, u64),
    key: (SystemTime, u64),
}

/// A certificate and key from PEM texts: the chain (leaf first) and one
/// private key (PKCS#8, PKCS#1 or SEC1), checked to belong together.
pub(crate) fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_origin: &str,
    key_origin: &str,
) -> Result<CertifiedKey, TlsError> {
    let chain = certificates_from_pem(cert_pem, cert_origin)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            origin: key_origin.to_owned(),
        },
        other => TlsError::BadKey {
            origin: key_origin.to_owned(),
            reason: other.to_string(),
        },
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey {
            origin: key_origin.to_owned(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(e) => Err(TlsError::KeyMismatch {
            origin: format!("{cert_origin} and {key_origin}"),
            reason: e.to_string(),
        }),
    }
}

/// The certificate a listener serves, swapped in place on reload. It is
/// the handshakes' [`ResolvesServerCert`], and deliveries trust what it
/// serves (see [`CertStore::serves`]).
#[derive(Debug)]
pub(crate) struct CertStore {
    /// The certificate in service and the one before it (a delivery that
    /// began its handshake just before a swap still knows it).
    slot: RwLock<Served>,
    /// Where it reloads from, with what it last tried.
    files: Option<(CertFiles, Mutex<Option<Stamp>>)>,
}

#[derive(Debug, Clone)]
struct Served {
    current: Arc<CertifiedKey>,
    previous: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    /// The pair in `files`, which must load; [`CertStore::watch_files`]
    /// reloads it when the files change.
    pub(crate) fn from_files(files: CertFiles) -> Result<Arc<CertStore>, TlsError> {
        let stamp = files.stamp();
        let key = files.load()?;
        Ok(Arc::new(CertStore {
            slot: RwLock::new(Served {
                current: Arc::new(key),
                previous: None,
            }),
            files: Some((files, Mutex::new(stamp))),
        }))
    }

    /// A certificate given whole (from a Kubernetes Secret), replaced with
    /// [`CertStore::replace`].
    pub(crate) fn with_key(key: CertifiedKey) -> Arc<CertStore> {
        Arc::new(CertStore {
            slot: RwLock::new(Served {
                current: Arc::new(key),
                previous: None,
            }),
            files: None,
        })
    }

    /// Puts `key` in service; the one it replaces is still recognised by
    /// [`CertStore::serves`] until the next swap.
    pub(crate) fn replace(&self, key: CertifiedKey) {
        let mut slot = self.slot.write().unwrap_or_else(|e| e.into_inner());
        let previous = std::mem::replace(&mut slot.current, Arc::new(key));
        slot.previous = Some(previous);
    }

    /// Whether `key` is the certificate in service already.
    pub(crate) fn holds(&self, key: &CertifiedKey) -> bool {
        let slot = self.slot.read().unwrap_or_else(|e| e.into_inner());
        slot.current.cert == key.cert
    }

    /// Whether `leaf` is the certificate in service or the one before it.
    pub(crate) fn serves(&self, leaf: &CertificateDer<'_>) -> bool {
        let slot = self.slot.read().unwrap_or_else(|e| e.into_inner());
        std::iter::once(&slot.current)
            .chain(&slot.previous)
            .any(|key| {
                key.cert
                    .first()
                    .is_some_and(|c| c.as_ref() == leaf.as_ref())
            })
    }

    /// Reloads from the files if they changed since the last look. Returns
    /// whether a new certificate went into service; a pair that does not
    /// load is logged (once per change) and the old one kept.
    pub(crate) fn reload_if_changed(&self) -> bool {
        let Some((files, seen)) = &self.files else {
            return false;
        };
        let stamp = files.stamp();
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        if stamp == *seen {
            return false;
        }
        *seen = stamp;
        drop(seen);
        match files.load() {
            Ok(key) => {
                self.replace(key);
                tracing::info!(cert = %files.cert.display(), key = %files.key.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the new TLS certificate does not load; the previous one stays in service");
                false
            }
        }
    }

    /// Looks at the files every [`RELOAD_POLL`] until `stopped` or until
    /// the store is dropped.
    pub(crate) fn watch_files(
        store: &Arc<CertStore>,
        mut stopped: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let store: Weak<CertStore> = Arc::downgrade(store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
                let Some(store) = store.upgrade() else { return };
                // Small files; a blocking thread keeps a slow disk off the runtime.
                let _ = tokio::task::spawn_blocking(move || store.reload_if_changed()).await;
            }
        })
    }

    /// The rustls server configuration of a listener serving this store:
    /// HTTP/2 and HTTP/1.1 offered through ALPN, session tickets on.
    pub(crate) fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| {
                // ring supports every default version; never taken.
                rustls::ServerConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .expect("ring supports TLS 1.3")
            });
        let mut config = builder
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if let Ok(ticketer) = rustls::crypto::ring::Ticketer::new() {
            config.ticketer = ticketer;
        }
        Arc::new(config)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let slot = self.slot.read().unwrap_or_else(|e| e.into_inner());
        Some(slot.current.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named_with_its_flag() {
        let files = CertFiles {
            cert: "/nonexistent/tls.crt".into(),
            key: "/nonexistent/tls.key".into(),
            flags: "--tls-cert/--tls-key",
        };
        let err = CertStore::from_files(files).expect_err("no such file");
        assert!(
            err.to_string().starts_with(
                "cannot read the certificate file /nonexistent/tls.crt (--tls-cert/--tls-key):"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_key_file_without_a_key_is_refused() {
        let err = certified_key(b"", b"nothing", "c", "k").expect_err("no cert");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    }
}
