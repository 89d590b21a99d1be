//! Optional TLS (rustls) on both receivers, from a PEM certificate chain and key.
//!
//! gRPC uses tonic's own rustls acceptor; HTTP gets a [`TlsListener`] for
//! `axum::serve` that handshakes each connection on a task of its own, so one slow
//! or silent client cannot hold up the accept loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::serve::{LimitedListener, Slotted};

/// A client gets this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("receivers.tls_cert_file and receivers.tls_key_file must be set together")]
    Incomplete,
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key: {reason}")]
    NoKey { path: String, reason: String },
    #[error("invalid TLS certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// rustls panics at the first handshake when no (or more than one) crypto provider
/// is chosen by the feature set, so one is installed explicitly at start.
pub fn install_crypto_provider() {
    // Err means one is installed already (a second collector in the same process).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The PEM files, read and checked once at start.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsFiles {
    // The private key stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsFiles({} certificate bytes)", self.cert_pem.len())
    }
}

impl TlsFiles {
    /// `None` when TLS is off (both paths empty).
    pub fn load(cert_path: &str, key_path: &str) -> Result<Option<TlsFiles>, TlsError> {
        match (cert_path.is_empty(), key_path.is_empty()) {
            (true, true) => return Ok(None),
            (false, false) => {}
            _ => return Err(TlsError::Incomplete),
        }
        let read = |path: &str| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.into(),
                source,
            })
        };
        let files = TlsFiles {
            cert_pem: read(cert_path)?,
            key_pem: read(key_path)?,
        };
        // Parse now so a bad file fails at start, not at the first client.
        files.server_config(cert_path, key_path)?;
        Ok(Some(files))
    }

    fn server_config(
        &self,
        cert_path: &str,
        key_path: &str,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .filter_map(Result::ok)
            .collect();
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert_path.into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| TlsError::NoKey {
            path: key_path.into(),
            reason: e.to_string(),
        })?;
        Ok(rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)?)
    }

    /// For OTLP/HTTP: HTTP/2 or HTTP/1.1, chosen by ALPN.
    pub fn http_acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let mut config = self.server_config("certificate", "key")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    pub fn grpc_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }
}

type Conn = TlsStream<Slotted<TcpStream>>;

/// TLS connections for the HTTP server; handshakes run concurrently. A connection
/// holds its listener slot from the TCP accept on, handshake included.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(Conn, SocketAddr)>,
}

impl TlsListener {
    pub fn new(
        tcp: LimitedListener,
        acceptor: TlsAcceptor,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = tcp.next() => accepted,
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local_addr, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task ended (shutdown): no more connections, and axum's
            // graceful shutdown ends the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_when_both_paths_are_empty() {
        assert!(TlsFiles::load("", "").unwrap().is_none());
        assert!(matches!(
            TlsFiles::load("cert.pem", ""),
            Err(TlsError::Incomplete)
        ));
    }

    #[test]
    fn bad_files_fail_at_start() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        std::fs::write(&key, "not a key").unwrap();
        let (c, k) = (cert.display().to_string(), key.display().to_string());
        let e = TlsFiles::load(&c, &k).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        let e = TlsFiles::load(&c, "/nonexistent/key.pem").unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
    }

    #[test]
    fn loads_a_generated_certificate() {
        install_crypto_provider();
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
        let files = TlsFiles::load(&cert.display().to_string(), &key.display().to_string())
            .unwrap()
            .unwrap();
        assert!(files.http_acceptor().is_ok());
    }
}
