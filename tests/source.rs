//! The PostgreSQL connections against a real throw-away cluster: both
//! connections' authentication (trust, cleartext, MD5, SCRAM) and TLS modes,
//! streaming pgoutput frames from a slot, standby status moving the slot's
//! `confirmed_flush_lsn`, and the errors a standby and an operator rely on
//! (slot in use, slot missing, wrong password, unreachable server).
//!
//! The shared cluster serves TLS with a test CA and makes the password roles
//! authenticate (`support::PASSWORD_ROLES`); each test works in its own
//! database, roles and slot, so they run in parallel. Waits are bounded by
//! deadlines, never fixed sleeps.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use walhook::lsn::Lsn;
use walhook::pgconn::{ConnectParams, connect_sql};
use walhook::pgtemp::SUPERUSER;
use walhook::source::{ReplicationMessage, ReplicationStream, SourceError};

use crate::support::{TestDb, cluster, tls_files, wait_until, within};

/// How long any wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// pgoutput protocol version 1 (PostgreSQL 10+).
const PROTO: u32 = 1;

fn params(url: &str) -> ConnectParams {
    ConnectParams::from_url(url).unwrap()
}

/// A table `t`, a publication and a pgoutput slot both named after the
/// database.
async fn publication_and_slot(db: &TestDb) {
    db.client
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, note text, at timestamptz);
             CREATE PUBLICATION {} FOR TABLE t;",
            db.name
        ))
        .await
        .unwrap();
    // Separately: a slot cannot be created in a transaction that wrote.
    db.client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&db.name],
        )
        .await
        .unwrap();
}

/// A login role with REPLICATION and a password stored as `encryption`
/// (one of the shared cluster's password roles).
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

/// Waits until nothing streams from `slot` any more.
async fn wait_slot_free(db: &TestDb, slot: &str) {
    wait_until("the slot to come free", DEADLINE, || async {
        db.client
            .query_one(
                "SELECT NOT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0)
    })
    .await;
}

async fn start(url: &str, slot: &str) -> Result<ReplicationStream, SourceError> {
    ReplicationStream::start(&params(url), slot, slot, Lsn::ZERO, PROTO).await
}

/// Reads XLogData until a pgoutput Insert and then a Commit have gone by;
/// returns the Inserts' bytes and the Commit's end LSN.
async fn read_until_insert_and_commit(stream: &mut ReplicationStream) -> (Vec<Bytes>, Lsn) {
    within("an Insert and a Commit", DEADLINE, async {
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

#[tokio::test]
async fn trust_auth_streams_and_identifies_the_system() {
    let db = TestDb::new().await;
    publication_and_slot(&db).await;

    let url = format!("{}&application_name=trust_test", db.url);
    let stream = start(&url, &db.name).await.unwrap();
    let system_id: String = db
        .client
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
    assert_eq!(stream.dbname(), Some(db.name.as_str()));
    assert_eq!(stream.slot(), db.name);
    assert_eq!(
        stream.server_address(),
        format!("127.0.0.1:{}", cluster().port())
    );
    assert!(!stream.is_tls(), "sslmode=disable");
    let walsenders: i64 = db
        .client
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
/// Both connections authenticate `role` (whose password is stored as
/// `encryption`) with `url_suffix` added to its URL.
async fn password_auth(role: &str, encryption: &str, url_suffix: &str) {
    let db = TestDb::new().await;
    password_role(&db.client, role, encryption).await;
    publication_and_slot(&db).await;
    let url = cluster().url_as(role, &format!("pw-{role}"), &db.name) + url_suffix;

    let stream = start(&url, &db.name).await.unwrap();
    assert_eq!(stream.dbname(), Some(db.name.as_str()));
    drop(stream);
    connect_sql(&params(&url)).await.unwrap();

    let mut without_password = params(&url);
    without_password.password = None;
    let error = ReplicationStream::start(&without_password, &db.name, &db.name, Lsn::ZERO, PROTO)
        .await
        .unwrap_err();
    assert!(matches!(error, SourceError::Auth { .. }), "{error:?}");
    assert!(!error.is_transient());
    assert!(error.to_string().contains("has none"), "{error}");
}

/// Both connections refuse to answer `role`'s password request over a
/// connection whose server walhook did not verify, and say what to do.
async fn password_request_refused(role: &str, encryption: &str, asked: &str, url_suffix: &str) {
    let db = TestDb::new().await;
    password_role(&db.client, role, encryption).await;
    let url = cluster().url_as(role, &format!("pw-{role}"), &db.name) + url_suffix;
    let error = start(&url, &db.name).await.unwrap_err();
    assert!(matches!(error, SourceError::Auth { .. }), "{error:?}");
    assert!(!error.is_transient(), "{error:?}");
    let sql_error = connect_sql(&params(&url)).await.unwrap_err();
    assert!(!sql_error.is_transient(), "{sql_error:?}");
    for text in [error.to_string(), sql_error.to_string()] {
        assert!(text.contains(asked), "{text}");
        assert!(text.contains("verify-full"), "{text}");
        assert!(text.contains("require_auth="), "{text}");
        assert!(!text.contains(&format!("pw-{role}")), "{text}");
    }
}

#[tokio::test]
async fn md5_auth() {
    // Refused over plain TCP and over TLS whose certificate is not checked.
    password_request_refused("md5_user", "md5", "MD5", "").await;
    password_request_refused("md5_user", "md5", "MD5", "&sslmode=require").await;
    // Allowed when the URL says so, or when the server is verified.
    password_auth("md5_user", "md5", "&require_auth=md5").await;
    let db = TestDb::new().await;
    publication_and_slot(&db).await;
    let verified = format!(
        "postgres://md5_user:pw-md5_user@localhost:{}/{}?sslmode=verify-full&sslrootcert={}",
        cluster().port(),
        db.name,
        tls_files().ca.display()
    );
    connect_sql(&params(&verified)).await.unwrap();
    start(&verified, &db.name)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    // The role's password really is an MD5 hash, so MD5 was negotiated.
    let client = connect_sql(&params(&cluster().url("postgres")))
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
    // Fine without a verified server: SCRAM never reveals the password.
    password_auth("scram_user", "scram-sha-256", "").await;
    // Unless the URL allows only something else.
    let db = TestDb::new().await;
    let url = cluster().url_as("scram_user", "pw-scram_user", &db.name) + "&require_auth=md5";
    let error = connect_sql(&params(&url)).await.unwrap_err();
    assert!(error.to_string().contains("require_auth=md5"), "{error}");
    let error = start(&url, &db.name).await.unwrap_err();
    assert!(error.to_string().contains("require_auth=md5"), "{error}");
}

#[tokio::test]
async fn cleartext_password_auth() {
    password_request_refused("clear_user", "scram-sha-256", "clear text", "").await;
    password_auth("clear_user", "scram-sha-256", "&require_auth=password").await;
}

#[tokio::test]
async fn scram_binds_to_the_tls_session_when_channel_binding_is_required() {
    // Over TLS, both connections complete SCRAM-SHA-256-PLUS: the server
    // proves it saw the same TLS session, so nothing in between relays it.
    password_auth(
        "scram_user",
        "scram-sha-256",
        "&sslmode=require&channel_binding=require",
    )
    .await;
    // Without TLS there is nothing to bind to: both refuse.
    let db = TestDb::new().await;
    let url =
        cluster().url_as("scram_user", "pw-scram_user", &db.name) + "&channel_binding=require";
    let error = start(&url, &db.name).await.unwrap_err();
    assert!(
        error.to_string().contains("channel_binding=require"),
        "{error}"
    );
    assert!(!error.is_transient());
    assert!(connect_sql(&params(&url)).await.is_err());
}

/// A server that asks each of `clients` connecting clients for its password
/// with `request` (an authentication message) and returns what each sent
/// after it — nothing, when the client refused.
async fn password_trap(
    request: Vec<u8>,
    clients: usize,
) -> (u16, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let trap = tokio::spawn(async move {
        let mut answers = Vec::new();
        for _ in 0..clients {
            let (mut socket, _) = listener.accept().await.unwrap();
            let read_message = async |socket: &mut tokio::net::TcpStream| {
                let length = socket.read_u32().await.unwrap() as usize;
                let mut body = vec![0; length - 4];
                socket.read_exact(&mut body).await.unwrap();
                body
            };
            // An SSLRequest gets `N`; then the startup message.
            let first = read_message(&mut socket).await;
            if first == [0x04, 0xd2, 0x16, 0x2f] {
                socket.write_all(b"N").await.unwrap();
                read_message(&mut socket).await;
            }
            socket.write_all(&request).await.unwrap();
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(DEADLINE, socket.read_to_end(&mut answer)).await;
            answers.push(answer);
        }
        answers
    });
    (port, trap)
}

#[tokio::test]
async fn a_server_in_between_asking_for_the_password_gets_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cleartext = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 3];
    let md5 = vec![b'R', 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4];
    for (request, asked) in [(cleartext, "clear text"), (md5, "MD5")] {
        let (port, trap) = password_trap(request.clone(), 2).await;
        let url = format!("postgres://walhook:s3cret@127.0.0.1:{port}/db?sslmode=prefer");
        let error = start(&url, "slot").await.unwrap_err();
        assert!(error.to_string().contains(asked), "{error}");
        let error = connect_sql(&params(&url)).await.unwrap_err();
        assert!(error.to_string().contains(asked), "{error}");
        for answer in trap.await.unwrap() {
            assert!(
                answer.is_empty(),
                "sent after the {asked} request: {answer:?}"
            );
        }

        // The same server with require_auth allowing it does get an answer,
        // so the emptiness above is the refusal's doing.
        let method = if asked == "MD5" { "md5" } else { "password" };
        let (port, trap) = password_trap(request, 1).await;
        let url = format!(
            "postgres://walhook:s3cret@127.0.0.1:{port}/db?sslmode=disable&require_auth={method}"
        );
        assert!(connect_sql(&params(&url)).await.is_err());
        let answers = trap.await.unwrap();
        assert_eq!(answers[0].first(), Some(&b'p'), "{answers:?}");
    }
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_permanent_error() {
    let db = TestDb::new().await;
    password_role(&db.client, "wrongpw_user", "scram-sha-256").await;
    publication_and_slot(&db).await;
    let url = cluster().url_as("wrongpw_user", "not-the-password", &db.name);
    let addr = format!("127.0.0.1:{}", cluster().port());

    let error = start(&url, &db.name).await.unwrap_err();
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
    let db = TestDb::new().await;
    publication_and_slot(&db).await;
    // Settings the walsender would otherwise format values with; the
    // session options of the replication connection must win over them.
    db.client
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET TimeZone = 'Asia/Kolkata';
             ALTER DATABASE {name} SET DateStyle = 'SQL, DMY';
             INSERT INTO t VALUES (1, 'one', '2026-11-27 08:00:00.5+00'), (2, 'two', NULL)",
            name = db.name
        ))
        .await
        .unwrap();

    let mut stream = start(&db.url, &db.name).await.unwrap();
    let (inserts, commit_end) = read_until_insert_and_commit(&mut stream).await;
    assert_eq!(inserts.len(), 2);
    assert!(contains(&inserts[0], "one"));
    assert!(
        contains(&inserts[0], "2026-11-27 08:00:00.5+00"),
        "timestamptz not in UTC ISO form: {:?}",
        String::from_utf8_lossy(&inserts[0])
    );
    let before = db.confirmed_flush().await.unwrap();
    assert!(
        before < commit_end,
        "{before} should be before {commit_end}"
    );

    // A status update that asks for a reply gets a keepalive back.
    stream
        .send_status(commit_end, commit_end, true)
        .await
        .unwrap();
    within("a keepalive", DEADLINE, async {
        loop {
            if let ReplicationMessage::Keepalive { wal_end, .. } = stream.next().await.unwrap() {
                assert!(wal_end >= commit_end, "{wal_end} < {commit_end}");
                return;
            }
        }
    })
    .await;
    wait_until(
        "confirmed_flush_lsn to reach the commit",
        DEADLINE,
        || async { db.confirmed_flush().await.unwrap() >= commit_end },
    )
    .await;

    // Later changes keep coming on the same stream.
    db.client
        .batch_execute("INSERT INTO t VALUES (3, 'three')")
        .await
        .unwrap();
    let (_, next_end) = read_until_insert_and_commit(&mut stream).await;
    assert!(next_end > commit_end);
    stream.close().await.unwrap();
}

#[tokio::test]
async fn a_second_stream_on_an_active_slot_is_refused_until_the_first_ends() {
    let db = TestDb::new().await;
    publication_and_slot(&db).await;

    let first = start(&db.url, &db.name).await.unwrap();
    let error = start(&db.url, &db.name).await.unwrap_err();
    assert!(error.is_slot_in_use(), "{error:?}");
    assert!(error.is_transient(), "a standby retries");
    assert!(!error.is_slot_missing());
    let text = error.to_string();
    assert!(
        text.contains(&db.name) && text.contains("is active for PID"),
        "{text}"
    );

    // The standby takes over once the first reader is gone.
    first.close().await.unwrap();
    let started = Instant::now();
    loop {
        match start(&db.url, &db.name).await {
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
    let db =
        TestDb::with_schema("CREATE TABLE t (id int); CREATE PUBLICATION missing_slot FOR TABLE t")
            .await;
    let error = start(&db.url, "missing_slot").await.unwrap_err();
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
    let _ = rustls::crypto::ring::default_provider().install_default();
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
    let db = TestDb::new().await;
    publication_and_slot(&db).await;
    let port = cluster().port();

    for mode in ["require", "prefer"] {
        let app = format!("tls_{mode}_{}", db.name);
        let url = format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{port}/{}?sslmode={mode}&application_name={app}",
            cluster().password(),
            db.name
        );
        let sql = connect_sql(&params(&url)).await.unwrap();
        assert!(
            sql_uses_tls(&sql).await,
            "{mode}: SQL connection without TLS"
        );
        let stream = start(&url, &db.name).await.unwrap();
        assert!(stream.is_tls(), "{mode}");
        assert!(
            replication_uses_tls(&db.client, &app).await,
            "{mode}: server sees no TLS"
        );
        stream.close().await.unwrap();
        wait_slot_free(&db, &db.name).await;
    }
}

#[tokio::test]
async fn tls_verify_full_checks_the_root_and_the_host_name() {
    let db = TestDb::new().await;
    publication_and_slot(&db).await;
    let port = cluster().port();
    let tls = tls_files();
    let url = |host: &str, mode: &str, root: &Path| {
        format!(
            "postgres://{SUPERUSER}:{}@{host}:{port}/{}?sslmode={mode}&sslrootcert={}",
            cluster().password(),
            db.name,
            root.display()
        )
    };

    // The right root and the name on the certificate.
    let good = url("localhost", "verify-full", &tls.ca);
    let sql = connect_sql(&params(&good)).await.unwrap();
    assert!(sql_uses_tls(&sql).await);
    let stream = start(&good, &db.name).await.unwrap();
    assert!(stream.is_tls());
    stream.close().await.unwrap();

    // A root that did not sign the server's certificate.
    let wrong_root = url("localhost", "verify-full", &tls.other_ca);
    let error = connect_sql(&params(&wrong_root)).await.unwrap_err();
    assert!(!error.is_transient(), "{error:?}");
    assert!(error.to_string().contains("sslrootcert"), "{error}");
    let error = start(&wrong_root, &db.name).await.unwrap_err();
    assert!(matches!(error, SourceError::Tls { .. }), "{error:?}");
    assert!(!error.is_transient());
    assert!(error.to_string().contains("sslrootcert"), "{error}");

    // The right root, but the certificate is for localhost, not 127.0.0.1:
    // verify-full refuses, verify-ca does not look at the name.
    let wrong_name = url("127.0.0.1", "verify-full", &tls.ca);
    assert!(connect_sql(&params(&wrong_name)).await.is_err());
    let error = start(&wrong_name, &db.name).await.unwrap_err();
    assert!(matches!(error, SourceError::Tls { .. }), "{error:?}");
    let chain_only = url("127.0.0.1", "verify-ca", &tls.ca);
    let sql = connect_sql(&params(&chain_only)).await.unwrap();
    assert!(sql_uses_tls(&sql).await);
    wait_slot_free(&db, &db.name).await;
    let stream = start(&chain_only, &db.name).await.unwrap();
    assert!(stream.is_tls());
    // verify-ca still checks the chain.
    let error = start(&url("127.0.0.1", "verify-ca", &tls.other_ca), &db.name)
        .await
        .unwrap_err();
    assert!(matches!(error, SourceError::Tls { .. }), "{error:?}");
}

/// Reads XLogData until `commits` pgoutput Commits have gone by; returns
/// every message's bytes in order.
async fn read_through_commits(stream: &mut ReplicationStream, commits: usize) -> Vec<Bytes> {
    within("the Commits", DEADLINE, async {
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
    let db = TestDb::new().await;
    publication_and_slot(&db).await;
    let version_num = db.server_version_num().await;
    let major = u32::try_from(version_num / 10_000).unwrap();

    let mut stream = start(&db.url, &db.name).await.unwrap();
    assert_eq!(
        stream.server_major(),
        Some(major),
        "server_version_num {version_num}"
    );
    // A transactional message between two inserts, then a non-transactional
    // one outside any transaction, then one more insert.
    db.client
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

#[tokio::test]
async fn the_throw_away_cluster_refuses_a_connection_without_its_password() {
    // Any local user could reach the port; without the password they get
    // nothing (the cluster used to trust everyone on 127.0.0.1).
    let url = format!(
        "postgres://{SUPERUSER}@127.0.0.1:{}/postgres?sslmode=disable",
        cluster().port()
    );
    let refused = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .err()
        .expect("no connection without the password");
    let wrong = format!(
        "postgres://{SUPERUSER}:guess@127.0.0.1:{}/postgres?sslmode=disable",
        cluster().port()
    );
    let denied = tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
        .await
        .err()
        .expect("no connection with a wrong password");
    assert!(
        denied
            .as_db_error()
            .is_some_and(|db| db.code().code() == "28P01"),
        "password authentication failed: {denied}; without one: {refused}"
    );
}
