//! The local certificate authority used to intercept TLS in forward-proxy mode: created
//! once, its key readable by the owner only and never logged; leaf certificates minted on
//! the fly per host and cached.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::tls::{self, TlsError};

/// The CA certificate, PEM; give this file to clients.
pub const CERT_FILE: &str = "graphvcr-ca.pem";
/// The CA key, PEM, mode 0600.
pub const KEY_FILE: &str = "graphvcr-ca-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot create the CA directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable CA key: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("{dir} holds a CA key but no certificate ({CERT_FILE}); remove the directory to start afresh")]
    Incomplete { dir: PathBuf },
    #[error("cannot mint a certificate for {host}: {detail}")]
    Mint { host: String, detail: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A loaded CA.
pub struct CertificateAuthority {
    dir: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    leaves: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CertificateAuthority")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The CA's parameters, rebuilt identically from its key every time, so the issuer name
/// in minted leaves always matches the stored certificate. The name carries a digest of
/// the public key so two graphvcr CAs on one machine are told apart.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let digest = blake3::hash(key.public_key_raw());
    let tag: String = digest.to_hex().chars().take(12).collect();
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("graphvcr local CA {tag}"));
    name.push(DnType::OrganizationName, "graphvcr");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl CertificateAuthority {
    pub fn cert_path(dir: &Path) -> PathBuf {
        dir.join(CERT_FILE)
    }

    pub fn key_path(dir: &Path) -> PathBuf {
        dir.join(KEY_FILE)
    }

    /// Loads the CA in `dir`, creating it first if there is none. Returns whether it was
    /// created.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), CaError> {
        let key_path = Self::key_path(dir);
        let cert_path = Self::cert_path(dir);
        if key_path.exists() {
            if !cert_path.exists() {
                return Err(CaError::Incomplete {
                    dir: dir.to_owned(),
                });
            }
            return Ok((Self::load(dir)?, false));
        }
        std::fs::create_dir_all(dir).map_err(|source| CaError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let key = KeyPair::generate().map_err(|e| CaError::Mint {
            host: "the CA".into(),
            detail: e.to_string(),
        })?;
        let params = ca_params(&key);
        let cert = params.self_signed(&key).map_err(|e| CaError::Mint {
            host: "the CA".into(),
            detail: e.to_string(),
        })?;
        tls::write_pem(&key_path, &key.serialize_pem(), true)?;
        tls::write_pem(&cert_path, &cert.pem(), false)?;
        tracing::info!(cert = %cert_path.display(), "created a local CA for TLS interception");
        Ok((Self::load(dir)?, true))
    }

    /// Loads an existing CA.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let key_path = Self::key_path(dir);
        let cert_path = Self::cert_path(dir);
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CaError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let key_pem = read(&key_path)?;
        let cert_pem = read(&cert_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::BadKey {
            path: key_path.clone(),
            detail: e.to_string(),
        })?;
        let cert_der = tls::load_certificates(&cert_path)?
            .into_iter()
            .next()
            .ok_or_else(|| CaError::Incomplete {
                dir: dir.to_owned(),
            })?;
        let issuer = Issuer::new(ca_params(&key), key);
        Ok(Self {
            dir: dir.to_owned(),
            cert_pem,
            cert_der,
            issuer,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A TLS server configuration presenting a leaf for `host`, signed by this CA;
    /// minted on first use and cached.
    pub fn server_config_for(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, CaError> {
        let host = host.to_ascii_lowercase();
        if let Some(config) = self
            .leaves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&host)
        {
            return Ok(config.clone());
        }
        let mint_error = |e: rcgen::Error| CaError::Mint {
            host: host.clone(),
            detail: e.to_string(),
        };
        let key = KeyPair::generate().map_err(mint_error)?;
        let mut params = CertificateParams::new(vec![host.clone()]).map_err(mint_error)?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host.clone());
        params.distinguished_name = name;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        // A short, recent validity: clients reject leaves valid for many years.
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(365 * 24 * 3600)).into();
        let leaf = params.signed_by(&key, &self.issuer).map_err(mint_error)?;
        let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| CaError::Mint {
            host: host.clone(),
            detail: e.to_string(),
        })?;
        let config = tls::server_config(vec![leaf.der().clone(), self.cert_der.clone()], key)?;
        self.leaves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host, config.clone());
        Ok(config)
    }
}

/// The lines `graphvcr ca show` prints: environment settings that make common clients
/// trust the CA.
pub fn environment_lines(cert: &Path) -> String {
    let path = cert.display();
    format!(
        "# Trust graphvcr's CA (these replace the system bundle for that client; to keep both,\n\
         # point them at a file that holds the system bundle followed by {CERT_FILE}):\n\
         export SSL_CERT_FILE={path}        # Python httpx (msgraph-sdk), OpenSSL-based tools\n\
         export REQUESTS_CA_BUNDLE={path}   # Python requests\n\
         export NODE_EXTRA_CA_CERTS={path}  # Node.js (adds to the built-in roots)\n\
         export CURL_CA_BUNDLE={path}       # curl\n\
         # and send traffic through graphvcr:\n\
         export HTTPS_PROXY=http://127.0.0.1:7878\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_key_private_leaves_cached() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, created) = CertificateAuthority::load_or_create(dir.path()).expect("create");
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(CertificateAuthority::key_path(dir.path()))
                .expect("key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let first = ca.server_config_for("graph.microsoft.com").expect("leaf");
        let again = ca.server_config_for("GRAPH.microsoft.com").expect("leaf");
        assert!(Arc::ptr_eq(&first, &again), "cached per host");
        let (reloaded, created) = CertificateAuthority::load_or_create(dir.path()).expect("load");
        assert!(!created);
        assert_eq!(reloaded.cert_pem(), ca.cert_pem());
        assert!(!format!("{reloaded:?}").contains("PRIVATE"));
    }
}
