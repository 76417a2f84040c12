//! HTTPS for the registry: a rustls server configuration from PEM files, or a throw-away CA and
//! server certificate for 127.0.0.1/localhost generated at start (peers such as SOCI fetch over
//! HTTPS whatever they are told, so the bed needs a registry they can trust).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("reading {path:?}: {source}")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0:?} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("writing the CA certificate to {path:?}: {source}")]
    WriteCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("--tls-cert and --tls-key go together and exclude --tls self-signed; --tls-name needs --tls self-signed")]
    Args,
}

/// The `serve` flags for HTTPS (flattened into the CLI). Without any, the registry speaks
/// plain HTTP.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Parser)]
pub struct TlsArgs {
    /// Serve HTTPS with this certificate chain (PEM; with --tls-key).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// `self-signed`: generate a CA and a certificate for 127.0.0.1 and localhost at start.
    #[arg(long, value_name = "MODE", value_parser = ["self-signed"])]
    pub tls: Option<String>,
    /// With --tls self-signed: write the generated CA certificate (PEM) here.
    #[arg(long, value_name = "FILE")]
    pub tls_ca_out: Option<PathBuf>,
    /// With --tls self-signed: one more IP address or DNS name for the certificate
    /// (repeatable), e.g. a host name mapped to loopback for clients that speak plain HTTP to
    /// `localhost` and loopback IP literals.
    #[arg(long = "tls-name", value_name = "NAME")]
    pub tls_names: Vec<String>,
}

impl TlsArgs {
    /// The server configuration the flags ask for (`None`: plain HTTP). A generated CA is
    /// written to `--tls-ca-out`.
    pub fn load(&self) -> Result<Option<Tls>, TlsError> {
        match (&self.tls_cert, &self.tls_key, self.tls.is_some()) {
            (None, None, false) if self.tls_names.is_empty() => Ok(None),
            (Some(c), Some(k), false) if self.tls_names.is_empty() => {
                Tls::from_pem_files(c, k).map(Some)
            }
            (None, None, true) => {
                let tls = Tls::self_signed_for(&self.tls_names)?;
                if let (Some(path), Some(pem)) = (&self.tls_ca_out, &tls.ca_pem) {
                    std::fs::write(path, pem).map_err(|source| TlsError::WriteCa {
                        path: path.clone(),
                        source,
                    })?;
                    tracing::info!(path = %path.display(), "wrote the registry's CA certificate");
                }
                Ok(Some(tls))
            }
            _ => Err(TlsError::Args),
        }
    }
}

/// A server's TLS setup.
#[derive(Clone)]
pub struct Tls {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    /// The generated CA's certificate (PEM), for [`Tls::self_signed`].
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("self_signed", &self.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// A certificate chain and its key from PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let pem_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Pem { path, source }
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(pem_err(cert))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err(cert))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(cert.to_path_buf()));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(pem_err(key))?;
        Ok(Tls {
            acceptor: acceptor(chain, key)?,
            ca_pem: None,
        })
    }

    /// A fresh CA (kept only in memory; its certificate is [`Tls::ca_pem`]) and a server
    /// certificate it signs for `127.0.0.1`, `::1` and `localhost`.
    pub fn self_signed() -> Result<Tls, TlsError> {
        Tls::self_signed_for(&[])
    }

    /// [`Tls::self_signed`] with more names (IP addresses or DNS names) in the certificate.
    pub fn self_signed_for(extra_names: &[String]) -> Result<Tls, TlsError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "registry-mock test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;

        let mut names = vec![
            "127.0.0.1".to_string(),
            "::1".to_string(),
            "localhost".to_string(),
        ];
        names.extend(extra_names.iter().cloned());
        let mut leaf = CertificateParams::new(names)?;
        leaf.distinguished_name
            .push(DnType::CommonName, "registry-mock");
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate()?;
        let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key)?;

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        Ok(Tls {
            acceptor: acceptor(vec![leaf_cert.der().clone(), ca_cert.der().clone()], key)?,
            ca_pem: Some(ca_cert.pem()),
        })
    }
}

fn acceptor(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // The server speaks HTTP/1.1 only.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}
