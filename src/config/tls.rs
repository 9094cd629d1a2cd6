//! The files of `ca_file`, `client_cert` and `client_key` (under
//! `[delivery]` and per subscription), read and checked once, when the
//! config is loaded: a missing file, a file without a certificate or key,
//! or a key that does not belong to its certificate stops walhook with a
//! message naming the key, the path and the fix, before anything starts.
//!
//! It does not build the HTTP client (`deliver::http` does, from the
//! [`ReceiverTls`] given here) and does not verify anything about the
//! receivers; a certificate that expires while walhook runs is not
//! noticed here.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS settings walhook uses towards one subscription's receiver: CA
/// certificates trusted in addition to the system's roots, and a client
/// certificate to present when the receiver asks for one. Two settings are
/// equal when they name the same files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverTls {
    pub ca: Option<Arc<CaFile>>,
    pub identity: Option<Arc<ClientIdentity>>,
}

/// `ca_file`: PEM CA certificates, trusted in addition to the system roots.
pub struct CaFile {
    pub path: PathBuf,
    pub certificates: Vec<CertificateDer<'static>>,
}

impl PartialEq for CaFile {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}
impl Eq for CaFile {}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaFile")
            .field("path", &self.path)
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

/// `client_cert` + `client_key`: a certificate chain and the private key it
/// was issued for, checked to belong together.
pub struct ClientIdentity {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The chain then the key, re-encoded as PEM (the form reqwest takes).
    /// Never printed.
    pem: Vec<u8>,
}

impl ClientIdentity {
    /// The certificate chain and the key as one PEM text: secret.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

impl PartialEq for ClientIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.cert_path == other.cert_path && self.key_path == other.key_path
    }
}
impl Eq for ClientIdentity {}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// The three keys as written in one place (`delivery` or a subscription).
#[derive(Debug, Clone, Copy)]
pub(super) struct TlsKeys<'a> {
    /// `delivery` or `subscriptions[0] (orders)`.
    pub at: &'a str,
    pub ca_file: Option<&'a Path>,
    pub client_cert: Option<&'a Path>,
    pub client_key: Option<&'a Path>,
}

/// Loads files once each, however many subscriptions name them.
#[derive(Default)]
pub(super) struct TlsLoader {
    cas: HashMap<PathBuf, Arc<CaFile>>,
    identities: HashMap<(PathBuf, PathBuf), Arc<ClientIdentity>>,
}

impl TlsLoader {
    /// The settings of `keys`, each one not given taken from `inherited`
    /// (the delivery-wide settings, for a subscription).
    pub fn load(
        &mut self,
        keys: TlsKeys<'_>,
        inherited: &ReceiverTls,
    ) -> Result<ReceiverTls, String> {
        let at = keys.at;
        let ca = match keys.ca_file {
            Some(path) => Some(match self.cas.get(path) {
                Some(loaded) => Arc::clone(loaded),
                None => {
                    let loaded = Arc::new(load_ca_file(&format!("{at}.ca_file"), path)?);
                    self.cas.insert(path.to_owned(), Arc::clone(&loaded));
                    loaded
                }
            }),
            None => inherited.ca.clone(),
        };
        let identity = match (keys.client_cert, keys.client_key) {
            (Some(cert), Some(key)) => {
                let paths = (cert.to_owned(), key.to_owned());
                Some(match self.identities.get(&paths) {
                    Some(loaded) => Arc::clone(loaded),
                    None => {
                        let loaded = Arc::new(load_identity(at, cert, key)?);
                        self.identities.insert(paths, Arc::clone(&loaded));
                        loaded
                    }
                })
            }
            (None, None) => inherited.identity.clone(),
            (Some(_), None) => {
                return Err(format!(
                    "key `{at}.client_cert` is set without `{at}.client_key`; give both \
                     (the PEM certificate and the PEM private key it was issued for) or neither"
                ));
            }
            (None, Some(_)) => {
                return Err(format!(
                    "key `{at}.client_key` is set without `{at}.client_cert`; give both \
                     (the PEM certificate and the PEM private key it was issued for) or neither"
                ));
            }
        };
        Ok(ReceiverTls { ca, identity })
    }
}

fn read(key: &str, path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| {
        format!(
            "key `{key}`: cannot read {}: {error}; give the path of {what} that walhook's user \
             can read",
            path.display()
        )
    })
}

/// The certificates of a PEM file; an error when there are none or the PEM
/// is broken.
fn certificates(
    key: &str,
    path: &Path,
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            format!(
                "key `{key}`: {} is not valid PEM ({error}); give {what}",
                path.display()
            )
        })?;
    if certificates.is_empty() {
        return Err(format!(
            "key `{key}`: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give {what}",
            path.display()
        ));
    }
    Ok(certificates)
}

fn load_ca_file(key: &str, path: &Path) -> Result<CaFile, String> {
    const WHAT: &str = "a PEM file of CA certificates";
    let pem = read(key, path, WHAT)?;
    let certificates = certificates(key, path, &pem, WHAT)?;
    // The verifier refuses the whole set for one it cannot use: say which.
    for (index, certificate) in certificates.iter().enumerate() {
        rustls::RootCertStore::empty()
            .add(certificate.clone())
            .map_err(|error| {
                format!(
                    "key `{key}`: certificate {} of {} cannot be used as a CA ({error}); give {WHAT}",
                    index + 1,
                    path.display()
                )
            })?;
    }
    Ok(CaFile {
        path: path.to_owned(),
        certificates,
    })
}

fn load_identity(at: &str, cert_path: &Path, key_path: &Path) -> Result<ClientIdentity, String> {
    let cert_key = format!("{at}.client_cert");
    let key_key = format!("{at}.client_key");
    const CERT: &str = "the PEM client certificate (then any intermediates)";
    const KEY: &str = "the PEM private key (PKCS#8, PKCS#1 or SEC1)";
    let cert_pem = read(&cert_key, cert_path, CERT)?;
    let chain = certificates(&cert_key, cert_path, &cert_pem, CERT)?;
    let key_pem = read(&key_key, key_path, KEY)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| {
        let why = match error {
            rustls::pki_types::pem::Error::NoItemsFound => "holds no PEM private key".to_owned(),
            other => format!("is not a valid PEM private key ({other})"),
        };
        format!("key `{key_key}`: {} {why}; give {KEY}", key_path.display())
    })?;
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let pem = encode_pem(&chain, &key);
    rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|error| match error {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
            "key `{key_key}`: {} is not the private key of the certificate in `{cert_key}` \
             ({}); give the key the certificate was issued for",
            key_path.display(),
            cert_path.display()
        ),
        other => format!(
            "keys `{cert_key}` and `{key_key}`: {} and {} cannot be used ({other}); give a PEM \
             certificate and its RSA, ECDSA or Ed25519 private key",
            cert_path.display(),
            key_path.display()
        ),
    })?;
    Ok(ClientIdentity {
        cert_path: cert_path.to_owned(),
        key_path: key_path.to_owned(),
        pem,
    })
}

/// The chain and the key as PEM, with the labels reqwest recognises.
fn encode_pem(chain: &[CertificateDer<'_>], key: &PrivateKeyDer<'_>) -> Vec<u8> {
    let mut pem = String::new();
    let mut section = |label: &str, der: &[u8]| {
        let text = base64::engine::general_purpose::STANDARD.encode(der);
        pem.push_str(&format!("-----BEGIN {label}-----\n"));
        for line in text.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str(&format!("-----END {label}-----\n"));
    };
    for certificate in chain {
        section("CERTIFICATE", certificate);
    }
    let label = match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    section(label, key.secret_der());
    pem.into_bytes()
}
