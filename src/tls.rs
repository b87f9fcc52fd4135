//! rustls set-up in one place: the crypto provider, trust roots, PEM files and
//! certificates minted with rcgen.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What went wrong while setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read PEM file {path}: {source}")]
    ReadPem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("certificate from {path} is not usable as a trust anchor: {source}")]
    BadCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot mint a certificate: {0}")]
    Mint(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Installs ring as the process-wide crypto provider. Safe to call many times; without
/// it a dependency that enables aws-lc-rs would make `ClientConfig::builder()` panic.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads every certificate in a PEM file.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::ReadPem {
            path: path.to_owned(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

/// Reads the first private key in a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::ReadPem {
        path: path.to_owned(),
        source,
    })
}

/// A client configuration trusting Mozilla's roots plus, optionally, the certificates
/// in `extra_ca` (a private or test upstream).
pub fn client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        for certificate in load_certificates(path)? {
            roots
                .add(certificate)
                .map_err(|source| TlsError::BadCertificate {
                    path: path.to_owned(),
                    source,
                })?;
        }
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A server configuration offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    install_crypto_provider();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Loads a server configuration from a certificate chain file and a key file.
pub fn server_config_from_files(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config(load_certificates(cert)?, load_private_key(key)?)
}

/// A freshly minted self-signed certificate and its key.
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: String,
    pub config: Arc<rustls::ServerConfig>,
}

/// Mints a self-signed certificate for `names` (DNS names or IP addresses).
pub fn self_signed(names: &[&str]) -> Result<SelfSigned, TlsError> {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let certified = rcgen::generate_simple_self_signed(names)?;
    let cert_pem = certified.cert.pem();
    let key_pem = certified.signing_key.serialize_pem();
    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).map_err(|e| {
        TlsError::Config(rustls::Error::General(format!("minted key unusable: {e}")))
    })?;
    let config = server_config(vec![certified.cert.der().clone()], key)?;
    Ok(SelfSigned {
        cert_pem,
        key_pem,
        config,
    })
}

/// Writes `contents` to `path`, readable by the owner only when `private` is set.
pub fn write_pem(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let write = || -> std::io::Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path)?;
        std::io::Write::write_all(&mut file, contents.as_bytes())?;
        file.sync_all()
    };
    let _ = private;
    write().map_err(|source| TlsError::Write {
        path: path.to_owned(),
        source,
    })
}
