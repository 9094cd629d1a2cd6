//! `sql/` as an administrator would use it: every file through psql on a
//! fresh database, then `walhook run` as the least-privilege role it creates.

use std::time::Duration;

use crate::support::config::subscription;
use crate::support::receiver::Receiver;
use crate::support::{TestDb, Walhook, WalhookBinary, cluster, connect, sigterm, stderr, stdout};

#[tokio::test]
async fn psql_runs_the_sql_files_then_walhook_runs_as_the_least_privilege_role() {
    let db = TestDb::with_schema(
        "CREATE TABLE orders (id int PRIMARY KEY, status text);
         CREATE TABLE secrets (id int PRIMARY KEY, token text);",
    )
    .await;
    // A table list that smuggles in a statement is refused before anything
    // is created.
    let output = run_sql_files(&db, "public.orders; DROP TABLE secrets; --", "s3cret-pw").await;
    assert!(!output.status.success(), "{}", both(&output));
    assert!(
        both(&output).contains("must name an existing table"),
        "{}",
        both(&output)
    );
    let secrets: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'secrets'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(secrets, 1, "the table survived");

    let output = run_sql_files(&db, "public.orders", "s3cret-pw").await;
    assert!(output.status.success(), "psql: {}", both(&output));
    // A second run (another password given) changes nothing of the role:
    // its password stays, and it is no more than LOGIN REPLICATION.
    let output = run_sql_files(&db, "public.orders", "another-pw").await;
    assert!(output.status.success(), "psql: {}", both(&output));
    let row = db
        .client
        .query_one(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolreplication \
             FROM pg_roles WHERE rolname = 'walhook'",
            &[],
        )
        .await
        .unwrap();
    let attributes: (bool, bool, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(attributes, (false, false, false, false, true));

    // The role may read orders, and not the other table.
    let as_walhook = cluster().url_as("walhook", "s3cret-pw", &db.name);
    let walhook_client = connect(&as_walhook).await;
    let denied = walhook_client
        .query("SELECT * FROM secrets", &[])
        .await
        .unwrap_err();
    assert_eq!(
        denied.as_db_error().map(|db| db.code().code()),
        Some("42501"),
        "{denied}"
    );

    let receiver = Receiver::start().await;
    let config = db
        .configure()
        .url(&as_walhook)
        .publication("walhook")
        .subscription(
            subscription("orders", &receiver.url("/orders"))
                .tables(&["orders"])
                .events(&["insert", "update"]),
        )
        .build();
    let walhook = Walhook::start(config);
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO orders VALUES (1, 'new'); UPDATE orders SET status = 'paid';")
        .await
        .unwrap();
    let events = receiver
        .wait_for_delivered(2, Duration::from_secs(30))
        .await;
    assert_eq!(events[0]["record"]["id"], 1);
    assert_eq!(events[1]["record"]["status"], "paid");
    walhook.stop().await.unwrap();
}

/// Every file of `sql/` through psql, as the README says to run them.
async fn run_sql_files(db: &TestDb, tables: &str, password: &str) -> std::process::Output {
    run_sql_files_with(db, tables, password, &[]).await
}

/// [`run_sql_files`] with more `-v name=value` variables.
async fn run_sql_files_with(
    db: &TestDb,
    tables: &str,
    password: &str,
    variables: &[&str],
) -> std::process::Output {
    // The role is the cluster's, shared by the tests' databases: one script
    // at a time, or two would both see it missing and create it.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut files: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    files.sort();
    let mut sql = String::new();
    for file in &files {
        sql.push_str(&std::fs::read_to_string(file).unwrap());
        sql.push('\n');
    }
    let mut psql = tokio::process::Command::new("psql")
        .args(["-X", "-q", "-v", &format!("tables={tables}")])
        .args(["-v", &format!("walhook_password={password}")])
        .args(variables.iter().flat_map(|variable| ["-v", variable]))
        .arg(&db.url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql is installed with the PostgreSQL client");
    let mut stdin = psql.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, sql.as_bytes())
        .await
        .unwrap();
    drop(stdin);
    psql.wait_with_output().await.unwrap()
}

fn both(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The operations the publication `walhook` sends, as the catalog says.
async fn published(db: &TestDb) -> (bool, bool, bool, bool, bool) {
    let row = db
        .client
        .query_one(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot \
             FROM pg_publication WHERE pubname = 'walhook'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
}

#[tokio::test]
async fn the_least_privilege_role_starts_with_one_truthful_line_and_no_failed_setup() {
    let db = TestDb::with_schema("CREATE TABLE orders (id int PRIMARY KEY, status text)").await;
    let refused =
        run_sql_files_with(&db, "public.orders", "s3cret-pw", &["publish=insert; drop"]).await;
    assert!(!refused.status.success(), "{}", both(&refused));
    assert!(
        both(&refused).contains("-v publish must list operations"),
        "{}",
        both(&refused)
    );
    let output = run_sql_files_with(
        &db,
        "public.orders",
        "s3cret-pw",
        &["publish=insert, update"],
    )
    .await;
    assert!(output.status.success(), "psql: {}", both(&output));
    assert_eq!(published(&db).await, (true, true, false, false, true));

    let receiver = Receiver::start().await;
    let as_walhook = cluster().url_as("walhook", "s3cret-pw", &db.name);
    let config = |events: &[&str]| {
        db.configure()
            .url(&as_walhook)
            .publication("walhook")
            .subscription(
                subscription("orders", &receiver.url("/orders"))
                    .tables(&["orders"])
                    .events(events),
            )
            .text()
    };
    // The rules want what the publication sends: the first start creates
    // the slot, the next finds nothing to set up.
    let exact = WalhookBinary::new(&config(&["insert", "update"]));
    let walhook = exact.spawn_run();
    exact
        .wait_for_log("replication slot created", Duration::from_secs(30))
        .await;
    db.wait_slot_active().await;
    sigterm(&walhook);
    assert!(walhook.wait_with_output().await.unwrap().status.success());
    let walhook = exact.spawn_run();
    exact
        .wait_for_log("no setup needed", Duration::from_secs(30))
        .await;
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO orders VALUES (1, 'new')")
        .await
        .unwrap();
    receiver
        .wait_for_delivered(1, Duration::from_secs(30))
        .await;
    sigterm(&walhook);
    assert!(walhook.wait_with_output().await.unwrap().status.success());
    let log = exact.log();
    assert!(
        !log.contains("setup failed") && !log.contains("superuser"),
        "{log}"
    );
    assert_eq!(log.matches("no setup needed").count(), 1, "{log}");

    // Wider than the rules (updates that no rule wants): one INFO line
    // with the statement its owner may run, no failure.
    let wider = WalhookBinary::new(&config(&["insert"]));
    let walhook = wider.spawn_run();
    wider
        .wait_for_log(
            "covers what the rules need and more",
            Duration::from_secs(30),
        )
        .await;
    db.wait_slot_active().await;
    sigterm(&walhook);
    assert!(walhook.wait_with_output().await.unwrap().status.success());
    let log = wider.log();
    assert!(
        !log.contains("setup failed") && !log.contains("WARN"),
        "{log}"
    );
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("PUBLICATION") || line.contains("narrow"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains(" INFO "), "{log}");
    assert!(
        lines[0].contains("ALTER PUBLICATION \"walhook\" SET (publish = 'insert')")
            && lines[0].contains("docs/operations.md"),
        "{log}"
    );
    let setup = wider.command(&["setup"]).await;
    assert!(setup.status.success(), "{setup:?}");
    assert!(
        !stdout(&setup).contains("already as wanted"),
        "{}",
        stdout(&setup)
    );
    assert!(
        stdout(&setup).contains("covers what the rules need and more"),
        "{}",
        stdout(&setup)
    );

    // Narrower than the rules: an error with the statement and where to
    // read what to do.
    let narrower = WalhookBinary::new(&config(&["insert", "update", "delete"]));
    let setup = narrower.command(&["setup"]).await;
    assert!(!setup.status.success(), "{setup:?}");
    let text = stderr(&setup);
    assert!(
        text.contains("ALTER PUBLICATION") && text.contains("docs/operations.md"),
        "{text}"
    );
}
