//! The certificates of the shared test cluster: a test CA, a server
//! certificate it signs for `localhost` only, and a second, unrelated CA for
//! tests of a root that signed nothing the server has.
//!
//! The files live in a temporary directory that a small watchdog removes
//! when the test process ends (the cluster is a static, never dropped; its
//! own watchdog stops it the same way).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
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
