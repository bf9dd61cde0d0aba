//! One port for both schemes: a TLS client speaks first with a handshake
//! record (its first byte is `0x16`), a plain HTTP client with a method
//! name or HTTP/2's preface, so one peeked byte tells them apart. The
//! peek and the handshake run in the connection's own task, never in the
//! accept loop, and both are bounded in time.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{CertStore, TransportEncryption};

/// The first byte of a TLS record carrying a handshake.
const HANDSHAKE: u8 = 0x16;
/// How long a new connection may take to send its first byte and finish a
/// handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a listener treats its connections.
#[derive(Clone)]
pub(crate) struct ListenerTls {
    pub level: TransportEncryption,
    /// None when the level is disabled.
    acceptor: Option<TlsAcceptor>,
    store: Option<Arc<CertStore>>,
}

/// A connection, sorted.
pub(crate) enum Accepted {
    /// Plain HTTP, to be served.
    Plain(TcpStream),
    /// Plain HTTP on a listener that takes HTTPS only: to be answered with
    /// a refusal that says so.
    Refused(TcpStream),
    /// HTTPS, handshake done (ALPN may have chosen HTTP/2).
    Tls { stream: Box<TlsStream<TcpStream>> },
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("level", &self.level)
            .field("store", &self.store)
            .finish()
    }
}

impl ListenerTls {
    /// Plain HTTP only: today's listener.
    pub(crate) fn plain() -> Self {
        ListenerTls {
            level: TransportEncryption::Disabled,
            acceptor: None,
            store: None,
        }
    }

    /// HTTPS (and HTTP too when `level` is permissive) with the
    /// certificate in `store`. `level` disabled gives [`ListenerTls::plain`].
    pub(crate) fn new(level: TransportEncryption, store: Arc<CertStore>) -> Self {
        if !level.https() {
            return Self::plain();
        }
        ListenerTls {
            level,
            acceptor: Some(TlsAcceptor::from(store.server_config())),
            store: Some(store),
        }
    }

    /// The certificate served, when HTTPS is.
    pub(crate) fn store(&self) -> Option<&Arc<CertStore>> {
        self.store.as_ref()
    }

    /// Sorts a new connection: peeks at its first byte when both schemes
    /// are possible, then shakes hands for TLS. An error means the
    /// connection is to be dropped (it closed, stalled, or failed its
    /// handshake), with the reason.
    pub(crate) async fn accept(&self, stream: TcpStream) -> Result<Accepted, String> {
        let Some(acceptor) = &self.acceptor else {
            return Ok(Accepted::Plain(stream));
        };
        let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, peek_first(&stream))
            .await
            .map_err(|_| format!("no data within {HANDSHAKE_TIMEOUT:?}"))?
            .map_err(|e| format!("reading the first byte failed: {e}"))?;
        match first {
            None => Err("closed before sending anything".to_owned()),
            Some(HANDSHAKE) => {
                let handshake = acceptor.accept(stream);
                let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                    .await
                    .map_err(|_| format!("TLS handshake not done within {HANDSHAKE_TIMEOUT:?}"))?
                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                Ok(Accepted::Tls {
                    stream: Box::new(stream),
                })
            }
            Some(_) if self.level.http() => Ok(Accepted::Plain(stream)),
            Some(_) => Ok(Accepted::Refused(stream)),
        }
    }
}

/// The first byte the peer sent, without taking it; None at end of stream.
async fn peek_first(stream: &TcpStream) -> std::io::Result<Option<u8>> {
    let mut byte = [0u8; 1];
    Ok(match stream.peek(&mut byte).await? {
        0 => None,
        _ => Some(byte[0]),
    })
}
