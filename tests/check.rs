//! `walhook check` against the real throw-away PostgreSQL: a healthy setup
//! passes (warnings allowed); each thing that must be fixed exits 1 and
//! prints its fix; a bad file exits 2 like `run`.

use std::process::Output;

use crate::support::config::subscription;
use crate::support::receiver::Receiver;
use crate::support::{LOGICAL_ONLY_ROLE, TestDb, WalhookBinary, cluster, stderr, stdout};

/// Runs `walhook <args> --config <file with text>`; returns the output and
/// stdout + stderr as text.
async fn walhook(args: &[&str], config: &str) -> (Output, String) {
    let output = WalhookBinary::new(config).command(args).await;
    let text = format!("{}{}", stdout(&output), stderr(&output));
    (output, text)
}

async fn create_tables(db: &TestDb) {
    db.client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, status text);
             CREATE TABLE audit (at timestamptz, what text);
             CREATE TABLE clicks (at timestamptz, url text);",
        )
        .await
        .unwrap();
}

/// Lines of the output that start with `prefix`.
fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .collect()
}

#[tokio::test]
async fn a_healthy_setup_exits_0_and_warns_about_a_table_without_replica_identity() {
    let db = TestDb::new().await;
    create_tables(&db).await;
    // check connects to each URL's port (no request is sent).
    let receiver = Receiver::start().await;
    // Signed, so that the only warnings are about replica identity.
    const SECRET: &str = "whsec_c2VjcmV0LWZvci10aGUtY2hlY2stdGVzdHM=";
    let orders = subscription("orders", &receiver.url("/hook"))
        .tables(&["public.orders"])
        .events(&["insert", "update", "delete"])
        .secret(SECRET);
    let config = db
        .configure()
        .subscription(&orders)
        .subscription(
            subscription(
                "audit",
                &receiver.url("/audit").replace("127.0.0.1", "localhost"),
            )
            .tables(&["audit"])
            .events(&["insert", "update"])
            .secret(SECRET),
        )
        .subscription(
            subscription("clicks", &receiver.url("/clicks"))
                .tables(&["clicks"])
                .events(&["insert"])
                .secret(SECRET),
        )
        .text();
    // setup refuses to publish updates for the key-less tables (PostgreSQL
    // would refuse the application's UPDATE and DELETE on them) ...
    let (output, text) = walhook(&["setup"], &config).await;
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("public.audit, public.clicks"), "{text}");
    // ... so set up for orders alone, then widen the publication by hand,
    // as an administrator might: check warns about what that means.
    let orders_only = db.config_text(&orders);
    let (output, text) = walhook(&["setup"], &orders_only).await;
    assert!(output.status.success(), "{text}");
    db.client
        .batch_execute(&format!(
            "ALTER PUBLICATION {} ADD TABLE audit, clicks",
            db.name
        ))
        .await
        .unwrap();

    let (output, text) = walhook(&["check"], &config).await;
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(lines(&text, "problem:").is_empty(), "{text}");
    let warnings = lines(&text, "warning:");
    assert_eq!(warnings.len(), 3, "{text}");
    // A primary key identifies rows, but updates come without the old row.
    assert!(
        warnings[0].contains("public.orders")
            && warnings[0].contains("REPLICA IDENTITY DEFAULT")
            && warnings[0].contains("old_record null")
            && warnings[0].contains("unchanged_toast")
            && warnings[0].contains("ALTER TABLE \"public\".\"orders\" REPLICA IDENTITY FULL"),
        "{text}"
    );
    assert!(
        warnings[1].contains("public.audit")
            && warnings[1].contains("old_record will be null")
            && warnings[1].contains("ALTER TABLE \"public\".\"audit\" REPLICA IDENTITY FULL"),
        "{text}"
    );
    // An insert-only subscription: the hazard is the publication's.
    assert!(
        warnings[2].contains("public.clicks")
            && warnings[2].contains("refuses UPDATE and DELETE")
            && warnings[2].contains("SET (publish = 'insert, truncate')"),
        "{text}"
    );
    assert_eq!(receiver.arrivals(), 0, "check sends no webhook");
    assert!(text.contains("ready to run"), "{text}");
    // What the warning says is so.
    let refused = db
        .client
        .batch_execute("UPDATE clicks SET url = 'x'")
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("replica identity")
            || format!("{refused:?}").contains("replica identity"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_missing_publication_slot_and_table_exit_1_with_their_fixes() {
    let db = TestDb::new().await;
    create_tables(&db).await;
    let config = db
        .configure()
        .subscription(
            subscription("orders", "http://127.0.0.1:9/hook")
                .tables(&["orders"])
                .events(&["insert"]),
        )
        .subscription(
            subscription("typo", "http://127.0.0.1:9/hook")
                .tables(&["public.ordersz"])
                .events(&["insert"]),
        )
        .text();
    let (output, text) = walhook(&["check"], &config).await;
    assert_eq!(output.status.code(), Some(1), "{text}");
    let problems = lines(&text, "problem:");
    let has = |needles: &[&str]| {
        problems
            .iter()
            .any(|line| needles.iter().all(|needle| line.contains(needle)))
    };
    assert!(
        has(&["publication", "does not exist", "fix: run `walhook setup`"]),
        "{text}"
    );
    assert!(
        has(&[
            "replication slot",
            "does not exist",
            "fix: run `walhook setup`"
        ]),
        "{text}"
    );
    assert!(
        has(&["public.ordersz", "does not exist", "typo", "fix:"]),
        "{text}"
    );
    assert!(
        has(&["walhook.dead_letters", "fix: run `walhook setup`"]),
        "{text}"
    );
    assert!(text.contains("problems to fix"), "{text}");
    // check only reads: nothing was created.
    let slot = db
        .client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name],
        )
        .await
        .unwrap();
    assert!(slot.is_none());
}

#[tokio::test]
async fn a_role_without_replication_or_select_exits_1_with_the_grants() {
    let db = TestDb::new().await;
    create_tables(&db).await;
    let receiver = Receiver::start().await;
    let subscriptions = subscription("orders", &receiver.url("/hook"))
        .tables(&["orders"])
        .events(&["insert"]);
    let (output, text) = walhook(&["setup"], &db.config_text(&subscriptions)).await;
    assert!(output.status.success(), "{text}");
    let role = format!("{}_reader", db.name);
    db.client
        .batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'pw'"))
        .await
        .unwrap();
    let role_url = crate::support::cluster().url_as(&role, "pw", &db.name);
    assert_ne!(role_url, db.url, "the test URL has the expected shape");
    let config = db
        .configure()
        .url(&role_url)
        .subscription(&subscriptions)
        .text();

    let (output, text) = walhook(&["check"], &config).await;
    assert_eq!(output.status.code(), Some(1), "{text}");
    let problems = lines(&text, "problem:");
    assert!(
        problems.iter().any(|line| line.contains("REPLICATION")
            && line.contains(&format!("ALTER ROLE \"{role}\" REPLICATION"))),
        "{text}"
    );
    assert!(
        problems
            .iter()
            .any(|line| line.contains("lacks SELECT on public.orders")
                && line.contains(&format!(
                    "GRANT SELECT ON \"public\".\"orders\" TO \"{role}\""
                ))),
        "{text}"
    );

    // Granted, both problems go away.
    db.client
        .batch_execute(&format!(
            "ALTER ROLE {role} REPLICATION; GRANT SELECT ON orders TO {role};
             GRANT USAGE ON SCHEMA walhook TO {role};
             GRANT SELECT, INSERT, DELETE ON walhook.dead_letters TO {role};"
        ))
        .await
        .unwrap();
    let (output, text) = walhook(&["check"], &config).await;
    assert_eq!(output.status.code(), Some(0), "{text}");
}

#[tokio::test]
async fn an_unresolvable_host_exits_1_a_closed_port_warns_and_a_bad_file_exits_2() {
    let db = TestDb::new().await;
    create_tables(&db).await;
    // A port nothing listens on: bound (so no other test takes it) but not
    // listening, so connections are refused.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    let config = db
        .configure()
        .subscription(
            subscription(
                "orders",
                "http://no-such-host.invalid/hook?token=secret-token",
            )
            .tables(&["orders"])
            .events(&["insert"]),
        )
        .subscription(
            subscription(
                "down",
                &format!("http://127.0.0.1:{closed_port}/hook?token=secret-token"),
            )
            .tables(&["orders"])
            .events(&["insert"]),
        )
        .text();
    let (output, text) = walhook(&["setup"], &config).await;
    assert!(output.status.success(), "{text}");
    let (output, text) = walhook(&["check"], &config).await;
    assert_eq!(output.status.code(), Some(1), "{text}");
    let problems = lines(&text, "problem:");
    assert_eq!(problems.len(), 1, "{text}");
    assert!(
        problems[0].contains("no-such-host.invalid does not resolve")
            && problems[0].contains("fix: correct `url`"),
        "{text}"
    );
    // A receiver that is down is a warning: walhook would retry, then park.
    let warnings = lines(&text, "warning:");
    assert!(
        warnings.iter().any(|line| line.contains("\"down\"")
            && line.contains(&format!(
                "nothing accepts connections at 127.0.0.1 port {closed_port}"
            ))
            && line.contains("fix: start the receiver, or correct `url`")),
        "{text}"
    );
    drop(closed);
    assert!(
        !text.contains("secret-token"),
        "the URL is not printed whole"
    );

    let (output, text) = walhook(
        &["check"],
        &config.replace("[admin]", "[admin]\nlistn = \"x\""),
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("listn"), "{text}");
}

#[tokio::test]
async fn check_warns_about_unsigned_subscriptions_secrets_in_clear_text_and_metadata_urls() {
    let db = TestDb::with_schema("CREATE TABLE orders (id int PRIMARY KEY)").await;
    let receiver = Receiver::start().await;
    let config = db
        .configure()
        .subscription(subscription("unsigned", &receiver.url("/unsigned")).tables(&["orders"]))
        // A signed subscription to another machine over http. The host is
        // a documentation address (RFC 5737); check only warns about it.
        .subscription(
            subscription("exposed", "http://192.0.2.1:8080/hook")
                .tables(&["orders"])
                .secret("whsec_c2VjcmV0LWZvci10aGUtY2hlY2stdGVzdHM="),
        )
        // The cloud metadata address.
        .subscription(
            subscription("metadata", "http://169.254.169.254/latest/meta-data/")
                .tables(&["orders"])
                .secret("whsec_c2VjcmV0LWZvci10aGUtY2hlY2stdGVzdHM="),
        )
        // Signed, to this machine: nothing crosses a network.
        .subscription(
            subscription("local", &receiver.url("/local"))
                .tables(&["orders"])
                .secret("whsec_c2VjcmV0LWZvci10aGUtY2hlY2stdGVzdHM="),
        )
        .text();
    let (output, text) = walhook(&["setup"], &config).await;
    assert!(output.status.success(), "{text}");
    let (_, text) = walhook(&["check"], &config).await;
    let warnings = lines(&text, "warning:");
    let about = |name: &str| {
        warnings
            .iter()
            .filter(|line| line.contains(&format!("{name:?}")))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        about("unsigned")
            .iter()
            .any(|line| line.contains("no `secret`")),
        "{text}"
    );
    assert!(
        about("exposed")
            .iter()
            .any(|line| line.contains("plain http") && line.contains("https://")),
        "{text}"
    );
    assert!(
        about("metadata")
            .iter()
            .any(|line| line.contains("link-local address 169.254.169.254")),
        "{text}"
    );
    assert!(
        about("local")
            .iter()
            .all(|line| !line.contains("plain http") && !line.contains("no `secret`")),
        "{text}"
    );
}

#[tokio::test]
async fn check_warns_when_someone_else_owns_walhooks_state() {
    let db = TestDb::with_schema("CREATE TABLE orders (id int PRIMARY KEY)").await;
    let receiver = Receiver::start().await;
    let config = db
        .configure()
        .subscription(
            subscription("orders", &receiver.url("/orders"))
                .tables(&["orders"])
                .secret("whsec_c2VjcmV0LWZvci10aGUtY2hlY2stdGVzdHM="),
        )
        .text();
    let (output, text) = walhook(&["setup"], &config).await;
    assert!(output.status.success(), "{text}");
    let (_, text) = walhook(&["check"], &config).await;
    assert!(
        !text.contains("can rewrite what walhook stores"),
        "set up by this role: {text}"
    );
    // Another, ordinary role takes the dead letters over.
    let other = format!("{}_other", db.name);
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {other}; ALTER TABLE walhook.dead_letters OWNER TO {other}"
        ))
        .await
        .unwrap();
    let (_, text) = walhook(&["check"], &config).await;
    let warning = lines(&text, "warning:")
        .into_iter()
        .find(|line| line.contains("table walhook.dead_letters "))
        .unwrap_or_else(|| panic!("a warning about walhook.dead_letters: {text}"));
    assert!(warning.contains(&format!("{other:?}")), "{warning}");
    assert!(
        warning.contains("ALTER TABLE walhook.dead_letters OWNER TO"),
        "{warning}"
    );
}

#[tokio::test]
async fn check_warns_when_the_role_may_also_replicate_physically() {
    let db = TestDb::with_schema("CREATE TABLE orders (id int PRIMARY KEY)").await;
    let receiver = Receiver::start().await;
    let orders = subscription("orders", &receiver.url("/orders")).tables(&["orders"]);
    // A REPLICATION role that may read the rules (so the check can see
    // them): the cluster's `host replication all …` line lets it take a
    // base backup.
    let replicating = format!("{}_replicating", db.name);
    let may_read_rules = |role: &str| {
        format!(
            "DROP ROLE IF EXISTS {role};
             CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'pw';
             GRANT SELECT ON pg_catalog.pg_hba_file_rules TO {role};
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_hba_file_rules() TO {role};"
        )
    };
    db.client
        .batch_execute(&may_read_rules(&replicating))
        .await
        .unwrap();
    let config = db
        .configure()
        .url(&cluster().url_as(&replicating, "pw", &db.name))
        .subscription(orders.clone())
        .text();
    let (_, text) = walhook(&["check"], &config).await;
    let warning = lines(&text, "warning:")
        .into_iter()
        .find(|line| line.contains("physical replication"))
        .unwrap_or_else(|| panic!("a warning about physical replication: {text}"));
    assert!(warning.contains("pg_hba.conf line"), "{warning}");
    assert!(warning.contains("pg_basebackup"), "{warning}");
    assert!(
        text.contains("replication") && text.contains("reject"),
        "the fix: {text}"
    );

    // A role that pg_hba.conf refuses physical replication first: no
    // warning.
    db.client
        .batch_execute(&may_read_rules(LOGICAL_ONLY_ROLE))
        .await
        .unwrap();
    let config = db
        .configure()
        .url(&cluster().url_as(LOGICAL_ONLY_ROLE, "pw", &db.name))
        .subscription(orders)
        .text();
    let (_, text) = walhook(&["check"], &config).await;
    assert!(text.contains("walhook check:"), "it ran: {text}");
    assert!(!text.contains("physical replication"), "{text}");
}

/// `setup`, `status` and `run` refuse what `check` reports, with its fix,
/// instead of PostgreSQL's bare error, a report of the wrong slot, or a
/// standby that waits forever.
async fn setup_status_and_run_refuse(binary: &WalhookBinary, expected: &str) {
    for args in [&["setup"][..], &["status"][..], &["run"][..]] {
        let output = tokio::time::timeout(std::time::Duration::from_secs(60), binary.command(args))
            .await
            .unwrap_or_else(|_| panic!("walhook {args:?} did not stop"));
        let text = format!("{}{}", stdout(&output), stderr(&output));
        assert!(!output.status.success(), "walhook {args:?}: {text}");
        assert!(text.contains(expected), "walhook {args:?}: {text}");
    }
}

#[tokio::test]
async fn a_slot_of_the_same_name_in_another_database_is_refused_everywhere() {
    let other = TestDb::new().await;
    other
        .client
        .batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('{}_shared', 'pgoutput')",
            other.name
        ))
        .await
        .unwrap();
    let db = TestDb::with_schema("CREATE TABLE orders (id int PRIMARY KEY)").await;
    let binary = WalhookBinary::new(
        &db.configure()
            .slot(&format!("{}_shared", other.name))
            .subscription(subscription("orders", "http://127.0.0.1:9/orders").tables(&["orders"]))
            .text(),
    );
    setup_status_and_run_refuse(&binary, &format!("belongs to database \"{}\"", other.name)).await;
}

#[tokio::test]
async fn wal_level_below_logical_is_refused_with_the_fix_everywhere() {
    let cluster = tokio::task::spawn_blocking(|| {
        walhook::pgtemp::TempPostgres::start_with(walhook::pgtemp::TempPostgresOptions {
            extra_conf: vec!["wal_level = replica".into()],
            hba_lines: Vec::new(),
        })
    })
    .await
    .unwrap()
    .unwrap();
    let db = TestDb::on(&cluster).await;
    db.client
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY)")
        .await
        .unwrap();
    let binary = WalhookBinary::new(
        &db.configure()
            .subscription(subscription("orders", "http://127.0.0.1:9/orders").tables(&["orders"]))
            .text(),
    );
    setup_status_and_run_refuse(&binary, "ALTER SYSTEM SET wal_level = logical").await;
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
