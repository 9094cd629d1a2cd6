//! The one rustls client configuration both PostgreSQL connections use,
//! built from `sslmode` and `sslrootcert` with libpq's meaning
//! (<https://www.postgresql.org/docs/current/libpq-ssl.html#LIBPQ-SSL-PROTECTION>).
//!
//! It decides what is verified (nothing, the chain, or the chain and the host
//! name), and gives the server certificate's hash for SCRAM channel binding;
//! it does not negotiate TLS with the server (tokio-postgres does for
//! the SQL connection, [`crate::source`] for the replication connection), and
//! does not support client certificates or certificate revocation lists.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::{ConnectParams, SslMode};

/// The TLS configuration could not be built from the URL.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read sslrootcert {path}: {source}")]
    ReadRootCert {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "sslrootcert {path} holds no usable PEM certificate; give a PEM file of CA certificates"
    )]
    NoRootCert { path: PathBuf },
    #[error("no system CA certificates could be loaded ({errors}); set sslrootcert to a PEM file")]
    NoSystemRoots { errors: String },
    #[error("the host name `{host}` cannot be used for TLS; use a DNS name or an IP address")]
    BadServerName { host: String },
    #[error("building the TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The rustls client configuration for `params.sslmode`, or `None` for
/// `disable`. Both connections use it.
///
/// - `prefer` / `require`: TLS without certificate checks (libpq without a
///   root certificate), unless `sslrootcert` is given, which makes them check
///   the chain as `verify-ca` does.
/// - `verify-ca`: the chain must lead to `sslrootcert` (or the system roots
///   when it is absent or `system`); the host name is not compared.
/// - `verify-full`: chain and host name.
///
/// The handshake signature is always verified. The crypto provider is the
/// process default when one is installed, else ring.
pub fn tls_client_config(params: &ConnectParams) -> Result<Option<ClientConfig>, TlsSetupError> {
    if params.sslmode == SslMode::Disable {
        return Ok(None);
    }
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let verify_chain = matches!(params.sslmode, SslMode::VerifyCa | SslMode::VerifyFull)
        || params.sslrootcert.is_some();
    let verifier: Arc<dyn ServerCertVerifier> = if verify_chain {
        let roots = Arc::new(root_store(params)?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|error| TlsSetupError::Rustls(rustls::Error::General(error.to_string())))?;
        if params.sslmode == SslMode::VerifyFull {
            webpki
        } else {
            Arc::new(ChainOnlyVerifier { inner: webpki })
        }
    } else {
        Arc::new(NoCertificateVerifier {
            provider: provider.clone(),
        })
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(config))
}

/// The name rustls checks the certificate against (and sends as SNI).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, TlsSetupError> {
    ServerName::try_from(host.to_owned()).map_err(|_| TlsSetupError::BadServerName {
        host: host.to_owned(),
    })
}

fn root_store(params: &ConnectParams) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    match &params.sslrootcert {
        Some(path) if path.as_os_str() != "system" => {
            let pem = std::fs::read(path).map_err(|source| TlsSetupError::ReadRootCert {
                path: path.clone(),
                source,
            })?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| TlsSetupError::ReadRootCert {
                    path: path.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
                })?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsSetupError::NoRootCert { path: path.clone() });
            }
        }
        _ => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                let errors = native
                    .errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(TlsSetupError::NoSystemRoots { errors });
            }
        }
    }
    Ok(roots)
}

/// `verify-ca`: the full webpki check, except that a certificate issued for
/// another name is accepted. webpki checks the chain before the name, so a
/// name error means the chain was good.
#[derive(Debug)]
struct ChainOnlyVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `prefer` / `require` without a root certificate: encryption without
/// authentication of the server, as libpq does. The handshake signature is
/// still checked against the presented certificate.
#[derive(Debug)]
struct NoCertificateVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoCertificateVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The `tls-server-end-point` channel binding data of a TLS session (RFC
/// 5929): the hash of the server's certificate, with the hash function of
/// its signature (SHA-256 for MD5 and SHA-1). `None` when there is no
/// certificate or its signature has no such hash (Ed25519, RSA-PSS), as in
/// PostgreSQL's own `be_tls_get_certificate_hash`.
pub(crate) fn end_point_hash(session: &rustls::ClientConnection) -> Option<Vec<u8>> {
    use sha2::Digest;
    use x509_cert::der::Decode;
    use x509_cert::der::oid::db::rfc5912;

    let certificate = session.peer_certificates()?.first()?;
    let parsed = x509_cert::Certificate::from_der(certificate.as_ref()).ok()?;
    let algorithm = parsed.signature_algorithm.oid;
    if [
        rfc5912::MD_5_WITH_RSA_ENCRYPTION,
        rfc5912::SHA_1_WITH_RSA_ENCRYPTION,
        rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
        rfc5912::ECDSA_WITH_SHA_256,
        rfc5912::DSA_WITH_SHA_1,
    ]
    .contains(&algorithm)
    {
        Some(sha2::Sha256::digest(certificate.as_ref()).to_vec())
    } else if [
        rfc5912::SHA_384_WITH_RSA_ENCRYPTION,
        rfc5912::ECDSA_WITH_SHA_384,
    ]
    .contains(&algorithm)
    {
        Some(sha2::Sha384::digest(certificate.as_ref()).to_vec())
    } else if [
        rfc5912::SHA_512_WITH_RSA_ENCRYPTION,
        rfc5912::ECDSA_WITH_SHA_512,
    ]
    .contains(&algorithm)
    {
        Some(sha2::Sha512::digest(certificate.as_ref()).to_vec())
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(url: &str) -> ConnectParams {
        ConnectParams::from_url(url).unwrap_or_else(|error| panic!("{url}: {error}"))
    }

    #[test]
    fn tls_config_per_sslmode() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        assert!(
            tls_client_config(&parse("postgres://u@h/db?sslmode=disable"))
                .unwrap()
                .is_none()
        );
        for mode in ["prefer", "require"] {
            let config = tls_client_config(&parse(&format!("postgres://u@h/db?sslmode={mode}")));
            assert!(matches!(config, Ok(Some(_))), "{mode}");
        }
        let missing =
            parse("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
        let err = tls_client_config(&missing).unwrap_err();
        assert!(matches!(err, TlsSetupError::ReadRootCert { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        // require with a root certificate checks the chain, like libpq.
        let require_with_root =
            parse("postgres://u@h/db?sslmode=require&sslrootcert=/nonexistent/ca.pem");
        assert!(tls_client_config(&require_with_root).is_err());
    }
}
