//! TLS to the collector for both transports (rustls, ring provider). The PEM
//! files are read and parsed once when the agent starts, so a missing or broken
//! file is an `init` error instead of every export failing later.
//!
//! Trust: the configured CA certificate(s) alone when given; otherwise the
//! system's roots together with webpki's (so a slim container without a CA
//! bundle still reaches a public endpoint).

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use crate::config::TlsConfig;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key: {reason}")]
    NoKey { path: String, reason: String },
    #[error("the TLS client cannot be built: {0}")]
    Client(String),
}

/// The PEM bytes of one signal's TLS settings, checked.
#[derive(Clone, Default)]
pub(crate) struct TlsMaterial {
    ca_pem: Option<Vec<u8>>,
    /// Certificate chain and key, for mutual TLS.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(path)?;
    if !CertificateDer::pem_slice_iter(&pem).any(|c| c.is_ok()) {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(pem)
}

impl TlsMaterial {
    pub(crate) fn load(config: &TlsConfig) -> Result<TlsMaterial, TlsError> {
        let ca_pem = config
            .certificate
            .as_deref()
            .map(certificates)
            .transpose()?;
        let identity = match (&config.client_certificate, &config.client_key) {
            (Some(cert), Some(key)) => {
                let cert = certificates(cert)?;
                let key_pem = read(key)?;
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
                    path: key.display().to_string(),
                    reason: e.to_string(),
                })?;
                Some((cert, key_pem))
            }
            _ => None,
        };
        Ok(TlsMaterial { ca_pem, identity })
    }

    /// For a tonic channel to `https://host…`; `host` is the name checked against
    /// the certificate.
    pub(crate) fn grpc(&self, host: &str) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut tls = ClientTlsConfig::new().domain_name(host);
        tls = match &self.ca_pem {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_native_roots().with_webpki_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        tls
    }

    /// Applies the same trust and identity to an OTLP/HTTP client.
    pub(crate) fn http(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, TlsError> {
        let client = |e: reqwest::Error| TlsError::Client(e.to_string());
        let mut builder = builder.use_rustls_tls();
        if let Some(pem) = &self.ca_pem {
            builder = builder.tls_built_in_root_certs(false);
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(client)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &self.identity {
            let mut pem = cert.clone();
            pem.push(b'\n');
            pem.extend_from_slice(key);
            builder = builder.identity(reqwest::Identity::from_pem(&pem).map_err(client)?);
        }
        Ok(builder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_broken_files_are_reported_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = TlsMaterial::load(&TlsConfig {
            certificate: Some(junk.clone()),
            ..TlsConfig::default()
        })
        .err()
        .unwrap();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        let e = TlsMaterial::load(&TlsConfig {
            certificate: Some(dir.path().join("absent.pem")),
            ..TlsConfig::default()
        })
        .err()
        .unwrap();
        assert!(matches!(e, TlsError::Read { .. }), "{e}");

        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        let e = TlsMaterial::load(&TlsConfig {
            client_certificate: Some(cert.clone()),
            client_key: Some(junk),
            ..TlsConfig::default()
        })
        .err()
        .unwrap();
        assert!(matches!(e, TlsError::NoKey { .. }), "{e}");

        let key = dir.path().join("key.pem");
        std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
        let material = TlsMaterial::load(&TlsConfig {
            certificate: Some(cert.clone()),
            client_certificate: Some(cert),
            client_key: Some(key),
            insecure: false,
        })
        .unwrap();
        assert!(material.http(reqwest::Client::builder()).is_ok());
    }
}
