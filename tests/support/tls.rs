//! The certificates of the shared test cluster: a test CA, a server
//! certificate it signs for `localhost` only, and a second, unrelated CA for
//! tests of a root that signed nothing the server has. [`ReceiverCertificates`]
//! are the certificates of HTTPS receivers (private CA, mTLS).
//!
//! The files live in a temporary directory that a small watchdog removes
//! when the test process ends (the cluster is a static, never dropped; its
//! own watchdog stops it the same way).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use walhook::pgtemp::SUPERUSER;

/// Where the test certificates are.
#[derive(Debug)]
pub struct TlsFiles {
    dir: PathBuf,
    /// The CA that signed the server's certificate (issued for `localhost`).
    pub ca: PathBuf,
    /// A CA that signed nothing the server has.
    pub other_ca: PathBuf,
}

impl TlsFiles {
    /// Makes the files, readable by the server (the `postgres` user when
    /// the tests run as root).
    pub fn create() -> TlsFiles {
        let dir = tempfile::Builder::new()
            .prefix("walhook-test-tls-")
            .tempdir()
            .unwrap()
            .keep();
        remove_when_this_process_ends(&dir);
        let (ca_pem, issuer) = certificate_authority("walhook test CA");
        let (other_ca_pem, _) = certificate_authority("walhook unrelated CA");
        let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();

        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let ca = write("ca.crt", &ca_pem, 0o644);
        let other_ca = write("other-ca.crt", &other_ca_pem, 0o644);
        write("server.crt", &server_cert.pem(), 0o644);
        // PostgreSQL refuses a key that others can read.
        write("server.key", &server_key.serialize_pem(), 0o600);
        if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name(SUPERUSER)
                .unwrap()
                .expect("a postgres system user");
            for path in [dir.clone(), dir.join("server.key")] {
                std::os::unix::fs::chown(&path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .unwrap();
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        TlsFiles { dir, ca, other_ca }
    }

    /// The `postgresql.conf` lines that serve TLS with these files.
    pub fn server_conf(&self) -> Vec<String> {
        vec![
            "ssl = on".into(),
            format!(
                "ssl_cert_file = '{}'",
                self.dir.join("server.crt").display()
            ),
            format!("ssl_key_file = '{}'", self.dir.join("server.key").display()),
        ]
    }
}

fn certificate_authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// Removes `dir` once this process has exited.
fn remove_when_this_process_ends(dir: &Path) {
    let script = format!(
        "while kill -0 {parent} 2>/dev/null; do sleep 1; done; rm -rf '{dir}'",
        parent = std::process::id(),
        dir = dir.display(),
    );
    let _ = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// Certificates for HTTPS receivers, in a directory removed on drop: a
/// private CA and a server certificate it signed for `localhost` and
/// 127.0.0.1; a server certificate that is the CA's own (a CA used as an
/// end entity); and a second CA with a client certificate it signed, for
/// receivers that require one.
pub struct ReceiverCertificates {
    dir: tempfile::TempDir,
    server_chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 DER.
    server_key: Vec<u8>,
    ca_der: CertificateDer<'static>,
    ca_key: Vec<u8>,
    client_ca_der: CertificateDer<'static>,
}

impl ReceiverCertificates {
    pub fn create() -> ReceiverCertificates {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, ca) = certificate_authority("walhook receiver test CA");
        let (client_ca_pem, client_ca) = certificate_authority("walhook client test CA");

        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &ca).unwrap();

        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(DnType::CommonName, "walhook");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().unwrap();
        let client_cert = client.signed_by(&client_key, &client_ca).unwrap();

        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.crt", &ca_pem);
        write("client.crt", &client_cert.pem());
        write("client.key", &client_key.serialize_pem());
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
        let client_ca_der = CertificateDer::from_pem_slice(client_ca_pem.as_bytes()).unwrap();
        ReceiverCertificates {
            dir,
            server_chain: vec![server_cert.der().clone()],
            server_key: server_key.serialize_der(),
            ca_der,
            ca_key: ca.key().serialize_der(),
            client_ca_der,
        }
    }

    /// The PEM file of the CA that signed the server certificate.
    pub fn ca_file(&self) -> String {
        self.path("ca.crt")
    }

    /// The client certificate (signed by the client CA) and its key.
    pub fn client_cert(&self) -> String {
        self.path("client.crt")
    }

    pub fn client_key(&self) -> String {
        self.path("client.key")
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A server that presents the certificate the CA signed, and, with
    /// `require_client_certificate`, refuses clients without one the client
    /// CA signed.
    pub fn server(&self, require_client_certificate: bool) -> rustls::ServerConfig {
        self.server_with(
            self.server_chain.clone(),
            &self.server_key,
            require_client_certificate,
        )
    }

    /// A server that presents the CA's own certificate as its certificate.
    pub fn server_presenting_the_ca(&self) -> rustls::ServerConfig {
        self.server_with(vec![self.ca_der.clone()], &self.ca_key, false)
    }

    fn server_with(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: &[u8],
        require_client_certificate: bool,
    ) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_certificate {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.client_ca_der.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivatePkcs8KeyDer::from(key.to_vec());
        builder.with_single_cert(chain, key.into()).unwrap()
    }
}
