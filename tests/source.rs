//! The PostgreSQL connections against a real throw-away cluster: both
//! connections' authentication (trust, cleartext, MD5, SCRAM) and TLS modes,
//! streaming pgoutput frames from a slot, standby status moving the slot's
//! `confirmed_flush_lsn`, and the errors a standby and an operator rely on
//! (slot in use, slot missing, wrong password, unreachable server).
//!
//! One cluster (with `ssl = on` and a test CA) serves every test of this
//! binary; each test works in its own database, roles and slot, so they run in
//! parallel. Waits are bounded by deadlines, never fixed sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use walhook::lsn::Lsn;
use walhook::pgconn::{ConnectParams, connect_sql};
use walhook::pgtemp::{SUPERUSER, TempPostgres, TempPostgresOptions};
use walhook::source::{ReplicationMessage, ReplicationStream, SourceError};

/// How long any wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// pgoutput protocol version 1 (PostgreSQL 10+).
const PROTO: u32 = 1;

/// Roles and the pg_hba.conf method each must use; every role belongs to one
/// test.
const PASSWORD_ROLES: &[(&str, &str)] = &[
    ("md5_user", "md5"),
    ("scram_user", "scram-sha-256"),
    ("clear_user", "password"),
    ("wrongpw_user", "scram-sha-256"),
];

struct Cluster {
    // Dropped first: the server stops before its certificate files go.
    pg: TempPostgres,
    tls: TlsFiles,
}

struct TlsFiles {
    _dir: tempfile::TempDir,
    /// The CA that signed the server's certificate (issued for `localhost`).
    ca: PathBuf,
    /// A CA that signed nothing the server has.
    other_ca: PathBuf,
}

/// The cluster of this test binary, started by the first test that asks and
/// stopped when the last test holding it finishes.
fn cluster() -> Arc<Cluster> {
    static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let tls = make_tls_files();
    let hba_lines = PASSWORD_ROLES
        .iter()
        .map(|(role, method)| format!("host all {role} 127.0.0.1/32 {method}"))
        .collect();
    let pg = TempPostgres::start_with(TempPostgresOptions {
        extra_conf: vec![
            "ssl = on".into(),
            format!(
                "ssl_cert_file = '{}'",
                tls.dir().join("server.crt").display()
            ),
            format!(
                "ssl_key_file = '{}'",
                tls.dir().join("server.key").display()
            ),
        ],
        hba_lines,
    })
    .expect("start a throw-away PostgreSQL");
    let cluster = Arc::new(Cluster { pg, tls });
    *shared = Arc::downgrade(&cluster);
    cluster
}

impl TlsFiles {
    fn dir(&self) -> &Path {
        self._dir.path()
    }
}

/// A test CA, a server certificate it signs for `localhost` only, and a
/// second, unrelated CA; readable by the server (the `postgres` user when we
/// are root).
fn make_tls_files() -> TlsFiles {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
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

    let dir = tempfile::Builder::new()
        .prefix("walhook-test-tls-")
        .tempdir()
        .unwrap();
    let (ca_pem, issuer) = ca("walhook test CA");
    let (other_ca_pem, _) = ca("walhook unrelated CA");
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();

    let write = |name: &str, text: &str, mode: u32| {
        let path = dir.path().join(name);
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
        for path in [dir.path().to_path_buf(), dir.path().join("server.key")] {
            std::os::unix::fs::chown(&path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .unwrap();
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    TlsFiles {
        _dir: dir,
        ca,
        other_ca,
    }
}

fn params(url: &str) -> ConnectParams {
    ConnectParams::from_url(url).unwrap()
}

/// A fresh database named after the test, and a superuser client on it.
async fn fresh_database(cluster: &Cluster, name: &str) -> tokio_postgres::Client {
    let admin = connect_sql(&params(&cluster.pg.url("postgres")))
        .await
        .unwrap();
    // One statement per call: DROP / CREATE DATABASE refuse a transaction.
    for statement in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin.batch_execute(&statement).await.unwrap();
    }
    connect_sql(&params(&cluster.pg.url(name))).await.unwrap()
}

/// A table `t`, a publication `name` for it, and a pgoutput slot `name`.
async fn publication_and_slot(client: &tokio_postgres::Client, name: &str) {
    client
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, note text, at timestamptz);
             CREATE PUBLICATION {name} FOR TABLE t;"
        ))
        .await
        .unwrap();
    // Separately: a slot cannot be created in a transaction that wrote.
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )
        .await
        .unwrap();
}

/// A login role with REPLICATION and a password stored as `encryption`.
async fn password_role(client: &tokio_postgres::Client, role: &str, encryption: &str) {
    client
        .batch_execute(&format!(
            "SET password_encryption = '{encryption}';
             DROP ROLE IF EXISTS {role};
             CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'pw-{role}';"
        ))
        .await
        .unwrap();
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {DEADLINE:?} waiting for {what}"))
}

/// Polls `check` until it holds, failing the test at the deadline.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start(url: &str, slot: &str) -> Result<ReplicationStream, SourceError> {
    ReplicationStream::start(&params(url), slot, slot, Lsn::ZERO, PROTO).await
}

/// Reads XLogData until a pgoutput Insert and then a Commit have gone by;
/// returns the Inserts' bytes and the Commit's end LSN.
async fn read_until_insert_and_commit(stream: &mut ReplicationStream) -> (Vec<Bytes>, Lsn) {
    within("an Insert and a Commit", async {
        let mut inserts = Vec::new();
        loop {
            match stream.next().await.unwrap() {
                ReplicationMessage::XLogData { data, .. } => match data.first() {
                    Some(b'I') => inserts.push(data),
                    Some(b'C') if !inserts.is_empty() => {
                        // Commit: tag, flags, commit LSN, end LSN, time.
                        let end: [u8; 8] = data[10..18].try_into().unwrap();
                        return (inserts, Lsn(u64::from_be_bytes(end)));
                    }
                    _ => {}
                },
                ReplicationMessage::Keepalive { .. } => {}
            }
        }
    })
    .await
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

async fn confirmed_flush_lsn(client: &tokio_postgres::Client, slot: &str) -> Lsn {
    let row = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    row.get::<_, String>(0).parse().unwrap()
}

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test]
async fn trust_auth_streams_and_identifies_the_system() {
    init();
    let cluster = cluster();
    let client = fresh_database(&cluster, "trust_db").await;
    publication_and_slot(&client, "trust_slot").await;

    let url = format!("{}&application_name=trust_test", cluster.pg.url("trust_db"));
    let stream = start(&url, "trust_slot").await.unwrap();
    let system_id: String = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stream.system_id().to_string(), system_id);
    assert_eq!(stream.timeline(), 1);
    assert!(!stream.xlogpos().is_zero());
    assert_eq!(stream.dbname(), Some("trust_db"));
    assert_eq!(stream.slot(), "trust_slot");
    assert_eq!(
        stream.server_address(),
        format!("127.0.0.1:{}", cluster.pg.port())
    );
    assert!(!stream.is_tls(), "sslmode=disable");
    let walsenders: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'trust_test'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        walsenders, 1,
        "the server lists our walsender by its application_name"
    );
}

/// Starts streaming as `role` with its password, and checks that the same
/// role without a password is refused (so the method was really used).
async fn password_auth(database: &str, role: &str, encryption: &str) {
    init();
    let cluster = cluster();
    let client = fresh_database(&cluster, database).await;
    password_role(&client, role, encryption).await;
    publication_and_slot(&client, database).await;
    let url = cluster.pg.url_as(role, &format!("pw-{role}"), database);

    let stream = start(&url, database).await.unwrap();
    assert_eq!(stream.dbname(), Some(database));
    drop(stream);
    connect_sql(&params(&url)).await.unwrap();

    let mut without_password = params(&url);
    without_password.password = None;
    let error = ReplicationStream::start(&without_password, database, database, Lsn::ZERO, PROTO)
        .await
        .unwrap_err();
    assert!(matches!(error, SourceError::Auth { .. }), "{error:?}");
    assert!(!error.is_transient());
    assert!(error.to_string().contains("has none"), "{error}");
}

#[tokio::test]
async fn md5_auth() {
    // Held throughout: the cluster stops when no test holds it, and a new
    // one would not have the role.
    let cluster = cluster();
    password_auth("md5_db", "md5_user", "md5").await;
    // The role's password really is an MD5 hash, so MD5 was negotiated.
    let client = connect_sql(&params(&cluster.pg.url("postgres")))
        .await
        .unwrap();
    let stored: String = client
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'md5_user'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("md5"), "{stored}");
}

#[tokio::test]
async fn scram_auth() {
    password_auth("scram_db", "scram_user", "scram-sha-256").await;
}

#[tokio::test]
async fn cleartext_password_auth() {
    password_auth("clear_db", "clear_user", "scram-sha-256").await;
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_permanent_error() {
    init();
    let cluster = cluster();
    let client = fresh_database(&cluster, "wrongpw_db").await;
    password_role(&client, "wrongpw_user", "scram-sha-256").await;
    publication_and_slot(&client, "wrongpw_slot").await;
    let url = cluster
        .pg
        .url_as("wrongpw_user", "not-the-password", "wrongpw_db");
    let addr = format!("127.0.0.1:{}", cluster.pg.port());

    let error = start(&url, "wrongpw_slot").await.unwrap_err();
    assert_eq!(error.code(), Some("28P01"), "{error:?}");
    assert!(!error.is_transient());
    let text = error.to_string();
    assert!(text.contains(&addr), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(text.contains("check the user name and password"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");

    let error = connect_sql(&params(&url)).await.unwrap_err();
    assert_eq!(error.code(), Some("28P01"), "{error:?}");
    assert!(!error.is_transient());
    let text = error.to_string();
    assert!(text.contains(&addr), "{text}");
    assert!(text.contains("check the user name and password"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
}

#[tokio::test]
async fn streams_inserts_and_status_moves_the_slot() {
    init();
    let cluster = cluster();
    let client = fresh_database(&cluster, "stream_db").await;
    publication_and_slot(&client, "stream_slot").await;
    // Settings the walsender would otherwise format values with; the
    // session options of the replication connection must win over them.
    client
        .batch_execute(
            "ALTER DATABASE stream_db SET TimeZone = 'Asia/Kolkata';
             ALTER DATABASE stream_db SET DateStyle = 'SQL, DMY';
             INSERT INTO t VALUES (1, 'one', '2026-11-27 08:00:00.5+00'), (2, 'two', NULL)",
        )
        .await
        .unwrap();

    let mut stream = start(&cluster.pg.url("stream_db"), "stream_slot")
        .await
        .unwrap();
    let (inserts, commit_end) = read_until_insert_and_commit(&mut stream).await;
    assert_eq!(inserts.len(), 2);
    assert!(contains(&inserts[0], "one"));
    assert!(
        contains(&inserts[0], "2026-11-27 08:00:00.5+00"),
        "timestamptz not in UTC ISO form: {:?}",
        String::from_utf8_lossy(&inserts[0])
    );
    let before = confirmed_flush_lsn(&client, "stream_slot").await;
    assert!(
        before < commit_end,
        "{before} should be before {commit_end}"
    );

    // A status update that asks for a reply gets a keepalive back.
    stream
        .send_status(commit_end, commit_end, true)
        .await
        .unwrap();
    within("a keepalive", async {
        loop {
            if let ReplicationMessage::Keepalive { wal_end, .. } = stream.next().await.unwrap() {
                assert!(wal_end >= commit_end, "{wal_end} < {commit_end}");
                return;
            }
        }
    })
    .await;
    eventually("confirmed_flush_lsn to reach the commit", || async {
        confirmed_flush_lsn(&client, "stream_slot").await >= commit_end
    })
    .await;

    // Later changes keep coming on the same stream.
    client
        .batch_execute("INSERT INTO t VALUES (3, 'three')")
        .await
        .unwrap();
    let (_, next_end) = read_until_insert_and_commit(&mut stream).await;
    assert!(next_end > commit_end);
    stream.close().await.unwrap();
}

#[tokio::test]
async fn a_second_stream_on_an_active_slot_is_refused_until_the_first_ends() {
    init();
    let cluster = cluster();
    let client = fresh_database(&cluster, "busy_db").await;
    publication_and_slot(&client, "busy_slot").await;
    let url = cluster.pg.url("busy_db");

    let first = start(&url, "busy_slot").await.unwrap();
    let error = start(&url, "busy_slot").await.unwrap_err();
    assert!(error.is_slot_in_use(), "{error:?}");
    assert!(error.is_transient(), "a standby retries");
    assert!(!error.is_slot_missing());
    let text = error.to_string();
    assert!(
        text.contains("busy_slot") && text.contains("is active for PID"),
        "{text}"
    );

    // The standby takes over once the first reader is gone.
    first.close().await.unwrap();
    let started = Instant::now();
    loop {
        match start(&url, "busy_slot").await {
            Ok(_) => break,
            Err(error) if error.is_slot_in_use() && started.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("the slot did not come free: {error}"),
        }
    }
}

#[tokio::test]
async fn a_missing_slot_is_reported_with_the_fix() {
    init();
    let cluster = cluster();
    let client = fresh_database(&cluster, "missing_db").await;
    client
        .batch_execute("CREATE TABLE t (id int); CREATE PUBLICATION missing_slot FOR TABLE t")
        .await
        .unwrap();
    let error = start(&cluster.pg.url("missing_db"), "missing_slot")
        .await
        .unwrap_err();
    assert!(error.is_slot_missing(), "{error:?}");
    assert!(!error.is_slot_in_use());
    assert!(!error.is_transient());
    let text = error.to_string();
    assert!(
        text.contains("\"missing_slot\"") && text.contains("walhook setup"),
        "{text}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_transient_and_named() {
    init();
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://u@127.0.0.1:{port}/db?sslmode=disable");
    let error = start(&url, "s").await.unwrap_err();
    assert!(matches!(error, SourceError::Connect { .. }), "{error:?}");
    assert!(error.is_transient());
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    let error = connect_sql(&params(&url)).await.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );

    // A server that accepts but never answers: connect_timeout bounds it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = format!("postgres://u@127.0.0.1:{port}/db?sslmode=prefer&connect_timeout=1");
    let started = Instant::now();
    let error = start(&url, "s").await.unwrap_err();
    assert!(matches!(error, SourceError::Timeout { .. }), "{error:?}");
    assert!(error.is_transient());
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    let error = connect_sql(&params(&url)).await.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// Whether the server sees the replication connection of `application_name`
/// as TLS.
async fn replication_uses_tls(client: &tokio_postgres::Client, application_name: &str) -> bool {
    client
        .query_one(
            "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)
             WHERE r.application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap()
        .get(0)
}

async fn sql_uses_tls(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn tls_require_and_prefer_encrypt_both_connections() {
    init();
    let cluster = cluster();
    let client = fresh_database(&cluster, "tls_db").await;
    publication_and_slot(&client, "tls_slot").await;
    let port = cluster.pg.port();

    for mode in ["require", "prefer"] {
        let app = format!("tls_{mode}");
        let url = format!(
            "postgres://{SUPERUSER}@127.0.0.1:{port}/tls_db?sslmode={mode}&application_name={app}"
        );
        let sql = connect_sql(&params(&url)).await.unwrap();
        assert!(
            sql_uses_tls(&sql).await,
            "{mode}: SQL connection without TLS"
        );
        let stream = start(&url, "tls_slot").await.unwrap();
        assert!(stream.is_tls(), "{mode}");
        assert!(
            replication_uses_tls(&client, &app).await,
            "{mode}: server sees no TLS"
        );
        stream.close().await.unwrap();
        eventually("the slot to come free", || async {
            client
                .query_one(
                    "SELECT NOT active FROM pg_replication_slots WHERE slot_name = 'tls_slot'",
                    &[],
                )
                .await
                .unwrap()
                .get(0)
        })
        .await;
    }
}

#[tokio::test]
async fn tls_verify_full_checks_the_root_and_the_host_name() {
    init();
    let cluster = cluster();
    let client = fresh_database(&cluster, "verify_db").await;
    publication_and_slot(&client, "verify_slot").await;
    let port = cluster.pg.port();
    let url = |host: &str, mode: &str, root: &Path| {
        format!(
            "postgres://{SUPERUSER}@{host}:{port}/verify_db?sslmode={mode}&sslrootcert={}",
            root.display()
        )
    };

    // The right root and the name on the certificate.
    let good = url("localhost", "verify-full", &cluster.tls.ca);
    let sql = connect_sql(&params(&good)).await.unwrap();
    assert!(sql_uses_tls(&sql).await);
    let stream = start(&good, "verify_slot").await.unwrap();
    assert!(stream.is_tls());
    stream.close().await.unwrap();

    // A root that did not sign the server's certificate.
    let wrong_root = url("localhost", "verify-full", &cluster.tls.other_ca);
    let error = connect_sql(&params(&wrong_root)).await.unwrap_err();
    assert!(!error.is_transient(), "{error:?}");
    assert!(error.to_string().contains("sslrootcert"), "{error}");
    let error = start(&wrong_root, "verify_slot").await.unwrap_err();
    assert!(matches!(error, SourceError::Tls { .. }), "{error:?}");
    assert!(!error.is_transient());
    assert!(error.to_string().contains("sslrootcert"), "{error}");

    // The right root, but the certificate is for localhost, not 127.0.0.1:
    // verify-full refuses, verify-ca does not look at the name.
    let wrong_name = url("127.0.0.1", "verify-full", &cluster.tls.ca);
    assert!(connect_sql(&params(&wrong_name)).await.is_err());
    let error = start(&wrong_name, "verify_slot").await.unwrap_err();
    assert!(matches!(error, SourceError::Tls { .. }), "{error:?}");
    let chain_only = url("127.0.0.1", "verify-ca", &cluster.tls.ca);
    let sql = connect_sql(&params(&chain_only)).await.unwrap();
    assert!(sql_uses_tls(&sql).await);
    eventually("the slot to come free", || async {
        client
            .query_one(
                "SELECT NOT active FROM pg_replication_slots WHERE slot_name = 'verify_slot'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    })
    .await;
    let stream = start(&chain_only, "verify_slot").await.unwrap();
    assert!(stream.is_tls());
    // verify-ca still checks the chain.
    let error = start(
        &url("127.0.0.1", "verify-ca", &cluster.tls.other_ca),
        "verify_slot",
    )
    .await
    .unwrap_err();
    assert!(matches!(error, SourceError::Tls { .. }), "{error:?}");
}

/// Reads XLogData until `commits` pgoutput Commits have gone by; returns
/// every message's bytes in order.
async fn read_through_commits(stream: &mut ReplicationStream, commits: usize) -> Vec<Bytes> {
    within("the Commits", async {
        let mut messages = Vec::new();
        let mut seen = 0;
        while seen < commits {
            if let ReplicationMessage::XLogData { data, .. } = stream.next().await.unwrap() {
                seen += usize::from(data.first() == Some(&b'C'));
                messages.push(data);
            }
        }
        messages
    })
    .await
}

#[tokio::test]
async fn logical_decoding_messages_arrive_from_postgresql_14_on() {
    init();
    let cluster = cluster();
    let client = fresh_database(&cluster, "messages_db").await;
    publication_and_slot(&client, "messages_slot").await;
    let version_num: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    let major = u32::try_from(version_num / 10_000).unwrap();

    let mut stream = start(&cluster.pg.url("messages_db"), "messages_slot")
        .await
        .unwrap();
    assert_eq!(
        stream.server_major(),
        Some(major),
        "server_version_num {version_num}"
    );
    // A transactional message between two inserts, then a non-transactional
    // one outside any transaction, then one more insert.
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO t VALUES (1, 'one');
             SELECT pg_logical_emit_message(true, 'walhook-test', 'inside');
             INSERT INTO t VALUES (2, 'two');
             COMMIT;
             SELECT pg_logical_emit_message(false, 'walhook-test', 'outside');
             INSERT INTO t VALUES (3, 'three');",
        )
        .await
        .unwrap();
    let messages = read_through_commits(&mut stream, 2).await;
    let tags: String = messages
        .iter()
        .filter_map(|data| data.first().map(|&tag| char::from(tag)))
        .filter(|&tag| tag != 'R')
        .collect();
    let logical: Vec<&Bytes> = messages
        .iter()
        .filter(|data| data.first() == Some(&b'M'))
        .collect();
    if major >= 14 {
        assert_eq!(tags, "BIMICMBIC", "PostgreSQL {major}");
        // 'M', flags (1 = transactional), LSN, prefix\0, length, content.
        for (message, transactional, content) in
            [(logical[0], 1, "inside"), (logical[1], 0, "outside")]
        {
            assert_eq!(message[1], transactional, "{message:?}");
            assert!(contains(message, "walhook-test\0"), "{message:?}");
            assert!(message.ends_with(content.as_bytes()), "{message:?}");
        }
    } else {
        // Older servers do not know the option; asking would be refused.
        assert_eq!(tags, "BIICBIC", "PostgreSQL {major}");
    }
    stream.close().await.unwrap();
}
