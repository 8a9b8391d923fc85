//! The API's listener: plain TCP on loopback, or HTTPS in process (rustls) with a certificate that is
//! re-read on SIGHUP without closing the listening socket.
//!
//! With TLS, every accepted connection is handshaken on a task of its own (bounded in number and in
//! time), so a slow or silent client never holds up the others; only finished handshakes reach axum.
//! A client that speaks plain HTTP to the port fails the handshake and is closed without an answer.
//! The certificate comes from a resolver behind a lock that a reload swaps: connections already open
//! keep the certificate they started with, new ones get the new one. A file that does not load on
//! reload leaves the old certificate in place, and the error names the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Handshakes in progress at once; beyond this, accepted connections wait for a slot.
const MAX_HANDSHAKES: usize = 256;

/// A client gets this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}: no certificate found; expected PEM \"BEGIN CERTIFICATE\" blocks")]
    NoCertificate { file: PathBuf },
    #[error("{file}: no private key found; expected a PEM PKCS#8, PKCS#1 or SEC1 private key")]
    NoKey { file: PathBuf },
    #[error("{key} does not fit {cert}: {message}")]
    Mismatch { cert: PathBuf, key: PathBuf, message: String },
    #[error("TLS setup failed: {0}")]
    Setup(rustls::Error),
}

/// Reads a certificate chain and its private key from PEM files.
///
/// # Errors
/// A file cannot be read or holds nothing usable, or the key is not the certificate's.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |file: &Path| std::fs::read(file).map_err(|source| TlsError::Read { file: file.to_owned(), source });
    let cert_pem = read(cert)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read { file: cert.to_owned(), source })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { file: cert.to_owned() });
    }
    let key_pem = read(key)?;
    let private = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|source| TlsError::Read { file: key.to_owned(), source })?
        .ok_or_else(|| TlsError::NoKey { file: key.to_owned() })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        message: e.to_string(),
    })
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Hands out the current certificate; a reload swaps it.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The API's HTTPS settings: the files and the certificate currently served.
#[derive(Clone)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    resolver: Arc<Resolver>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("cert", &self.cert).field("key", &self.key).finish()
    }
}

impl Tls {
    /// Loads the certificate and key.
    ///
    /// # Errors
    /// As [`load`].
    pub fn new(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let resolver = Arc::new(Resolver(RwLock::new(Arc::new(load(cert, key)?))));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            resolver,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Reads the files again; on success new connections get the new certificate, on failure the
    /// old one stays.
    ///
    /// # Errors
    /// As [`load`]; nothing changed.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(load(&self.cert, &self.key)?);
        *self.resolver.0.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// Reloads on every SIGHUP until `shutdown`.
    pub async fn reload_on_sighup(self, shutdown: CancellationToken) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "Cannot handle SIGHUP; the API certificate is not reloaded without a restart.");
                return;
            }
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                s = hup.recv() => if s.is_none() { return },
            }
            match self.reload() {
                Ok(()) => info!(cert = %self.cert.display(), "API certificate reloaded."),
                Err(e) => error!(error = %e, "API certificate not reloaded; the previous one is still served."),
            }
        }
    }
}

/// A connection's byte stream, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// The peer of a request, as handlers see it (`ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// The listener axum serves from: plain TCP, or finished TLS handshakes.
#[derive(Debug)]
pub struct ApiListener {
    local: SocketAddr,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Plain(TcpListener),
    /// Connections whose handshake finished, from the accepting task.
    Tls(mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>),
}

impl ApiListener {
    /// Serves plain HTTP from `listener`.
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn plain(listener: TcpListener) -> std::io::Result<Self> {
        Ok(Self { local: listener.local_addr()?, inner: Inner::Plain(listener) })
    }

    /// Serves HTTPS from `listener`: a task accepts and handshakes until this listener is dropped.
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn tls(listener: TcpListener, tls: &Tls) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept_tls(listener, tls.acceptor.clone(), tx));
        Ok(Self { local, inner: Inner::Tls(rx) })
    }
}

async fn accept_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: mpsc::Sender<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                warn!(error = %e, "API cannot accept a connection.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, peer)).await;
                }
                Ok(Err(e)) => debug!(peer = %peer, error = %e, "TLS handshake failed."),
                Err(_) => debug!(peer = %peer, "TLS handshake timed out."),
            }
        });
    }
}

impl Listener for ApiListener {
    type Io = Box<dyn Stream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match &mut self.inner {
            Inner::Plain(l) => {
                let (s, peer) = Listener::accept(l).await;
                (Box::new(s), peer)
            }
            Inner::Tls(rx) => match rx.recv().await {
                Some((s, peer)) => (Box::new(s), peer),
                // The accepting task only ends when this receiver is gone; never reached while serving.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl Connected<IncomingStream<'_, ApiListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, ApiListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("api.pem"), dir.path().join("api.key"));
        let e = load(&cert, &key).unwrap_err().to_string();
        assert!(e.starts_with(&format!("cannot read {}", cert.display())), "{e}");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        let e = load(&cert, &key).unwrap_err().to_string();
        assert_eq!(e, format!("{}: no certificate found; expected PEM \"BEGIN CERTIFICATE\" blocks", cert.display()));
    }
}
