//! The operator's side of backfills, run as an operator runs it (the
//! binary, against the database), without a daemon, so every request stays
//! `pending`: `walhook backfill --detach` records one row per table the
//! subscription selects (or the one `--table` names) with its estimate,
//! `--list` and `--list --json` show them, `--cancel` ends one and refuses
//! one that is not active; everything the command can check it checks
//! before recording anything (the subscription, the table, a primary key,
//! a `--where` that parses and is one statement), exiting 2 with the fix;
//! following a request while no walhook streams says so and ends, exit 1,
//! when the request is cancelled; `status` and `check` show backfills.

use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::support::config::{Subscription, subscription};
use crate::support::{TestDb, WalhookBinary, stderr, stdout, wait_until, walhook_binary, within};

/// `customers` (10 rows, 4 in DE, analyzed), `notes` (no primary key), a
/// table no subscription selects, and a schema `sales` with two tables.
const SCHEMA: &str = "
CREATE TABLE customers (id int PRIMARY KEY, country text NOT NULL);
INSERT INTO customers SELECT g, CASE WHEN g <= 4 THEN 'DE' ELSE 'FR' END
  FROM generate_series(1, 10) g;
ANALYZE customers;
CREATE TABLE notes (body text);
CREATE TABLE unrelated (id int PRIMARY KEY);
CREATE SCHEMA sales;
CREATE TABLE sales.invoices (id int PRIMARY KEY);
CREATE TABLE sales.refunds (id bigint, line int, PRIMARY KEY (id, line));
";

/// The receiver is never reached: no daemon runs in these tests.
const URL: &str = "http://127.0.0.1:9/hook";

/// `crm` selects customers and the whole `sales` schema.
fn crm() -> Subscription {
    subscription("crm", URL).tables(&["customers", "sales.*"])
}

/// A database with [`SCHEMA`] and the walhook schema (as `walhook setup`
/// would create it, without a slot), and the binary with `subscriptions`.
async fn prepared(subscriptions: &[Subscription]) -> (TestDb, WalhookBinary) {
    let db = TestDb::with_schema(SCHEMA).await;
    for (file, sql) in walhook::store::schema::SQL_FILES {
        db.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|error| panic!("{file}: {error}"));
    }
    let mut config = db.configure();
    for subscription in subscriptions {
        config = config.subscription(subscription);
    }
    let binary = WalhookBinary::new(&config.text());
    (db, binary)
}

/// One row of `walhook.backfills`: (id, subscription, table, condition,
/// chunk rows, state, estimated rows).
type Row = (
    i64,
    String,
    String,
    Option<String>,
    i32,
    String,
    Option<i64>,
);

async fn backfills(db: &TestDb) -> Vec<Row> {
    db.client
        .query(
            "SELECT id, subscription, table_name, condition, chunk_rows, state, estimated_rows \
             FROM walhook.backfills ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| {
            (
                row.get(0),
                row.get(1),
                row.get(2),
                row.get(3),
                row.get(4),
                row.get(5),
                row.get(6),
            )
        })
        .collect()
}

/// Stdout and stderr of a finished command, for messages.
fn both(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        stdout(output),
        stderr(output)
    )
}

/// Runs `walhook <args> --config …`, which must exit with `code`.
async fn exits(binary: &WalhookBinary, code: i32, args: &[&str]) -> Output {
    let output = binary.command(args).await;
    assert_eq!(
        output.status.code(),
        Some(code),
        "walhook {args:?}: {}",
        both(&output)
    );
    output
}

#[tokio::test]
async fn detach_records_a_pending_row_per_table_and_list_and_cancel_manage_them() {
    let (db, binary) = prepared(&[crm()]).await;

    // Every table crm selects, `sales.*` expanded; not `notes`, not
    // `unrelated`. The command returns at once with the ids.
    let output = within(
        "backfill --detach to return",
        Duration::from_secs(20),
        exits(&binary, 0, &["backfill", "crm", "--detach"]),
    )
    .await;
    let rows = backfills(&db).await;
    let tables: Vec<&str> = rows.iter().map(|row| row.2.as_str()).collect();
    assert_eq!(
        tables,
        vec![
            "\"public\".\"customers\"",
            "\"sales\".\"invoices\"",
            "\"sales\".\"refunds\""
        ],
        "{}",
        both(&output)
    );
    for (id, subscription, table, condition, chunk_rows, state, _) in &rows {
        assert_eq!(subscription, "crm");
        assert_eq!(condition, &None);
        assert_eq!(*chunk_rows, 5000, "the default chunk");
        assert_eq!(state, "pending", "no daemon runs");
        assert!(
            stdout(&output).contains(&format!("backfill {id}: {table}")),
            "id {id} printed: {}",
            both(&output)
        );
    }
    assert_eq!(rows[0].6, Some(10), "customers' analyzed row count");
    assert_eq!(rows[1].6, Some(0), "an empty table, never analyzed");

    // --table: only that one, with its chunk size.
    exits(
        &binary,
        0,
        &[
            "backfill",
            "crm",
            "--table",
            "sales.invoices",
            "--chunk-rows",
            "100",
            "--detach",
        ],
    )
    .await;
    let rows = backfills(&db).await;
    assert_eq!(rows.len(), 4);
    let only = &rows[3];
    assert_eq!(
        (only.2.as_str(), only.4),
        ("\"sales\".\"invoices\"", 100),
        "{rows:?}"
    );

    // --list shows each, --list --json the same for scripts.
    let output = exits(&binary, 0, &["backfill", "--list"]).await;
    let table = stdout(&output);
    for (id, _, name, ..) in &rows {
        assert!(
            table.lines().any(|line| line.starts_with(&format!("{id} "))
                && line.contains(name.as_str())
                && line.contains("pending")),
            "backfill {id} in:\n{table}"
        );
    }
    let output = exits(&binary, 0, &["backfill", "--list", "--json"]).await;
    let listed: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("JSON: {error}\n{}", both(&output)));
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert_eq!(listed[0]["id"], rows[0].0);
    assert_eq!(listed[0]["table"], "\"public\".\"customers\"");
    assert_eq!(listed[0]["state"], "pending");
    assert_eq!(listed[0]["estimated_rows"], 10);
    assert_eq!(listed[3]["chunk_rows"], 100);

    // --cancel ends one; a second time it is not active: exit 1.
    let id = rows[1].0.to_string();
    exits(&binary, 0, &["backfill", "--cancel", &id]).await;
    let states: Vec<String> = backfills(&db).await.into_iter().map(|row| row.5).collect();
    assert_eq!(states, ["pending", "cancelled", "pending", "pending"]);
    let output = exits(&binary, 1, &["backfill", "--cancel", &id]).await;
    assert!(stderr(&output).contains("cancelled"), "{}", both(&output));
    let output = exits(&binary, 1, &["backfill", "--cancel", "999999"]).await;
    assert!(stderr(&output).contains("999999"), "{}", both(&output));
}

#[tokio::test]
async fn a_where_condition_is_checked_against_each_table_before_anything_is_recorded() {
    let (db, binary) = prepared(&[crm()]).await;

    // A column the table does not have: the server's message, exit 2.
    let output = exits(
        &binary,
        2,
        &[
            "backfill",
            "crm",
            "--table",
            "customers",
            "--where",
            "nosuchcolumn > 1",
            "--detach",
        ],
    )
    .await;
    assert!(
        stderr(&output).contains("nosuchcolumn") && stderr(&output).contains("does not exist"),
        "{}",
        both(&output)
    );
    // A condition that fits customers but not the sales tables: nothing for
    // customers either.
    let output = exits(
        &binary,
        2,
        &["backfill", "crm", "--where", "country = 'DE'", "--detach"],
    )
    .await;
    assert!(stderr(&output).contains("country"), "{}", both(&output));
    // A second statement smuggled in is refused, and does not run.
    let output = exits(
        &binary,
        2,
        &[
            "backfill",
            "crm",
            "--table",
            "customers",
            "--where",
            "true); DELETE FROM customers; --",
            "--detach",
        ],
    )
    .await;
    let count: i64 = db
        .client
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 10, "{}", both(&output));
    assert_eq!(backfills(&db).await, Vec::<Row>::new(), "nothing recorded");

    // A comment, or a parenthesis closed that was not opened, could reach
    // past the WHERE: refused before anything else.
    for hostile in [
        "country = 'DE' -- the German ones",
        "true) UNION SELECT * FROM customers WHERE (true",
    ] {
        let output = exits(
            &binary,
            2,
            &[
                "backfill",
                "crm",
                "--table",
                "public.customers",
                "--where",
                hostile,
                "--detach",
            ],
        )
        .await;
        assert!(
            stderr(&output).contains("nothing was recorded"),
            "{}",
            both(&output)
        );
    }
    assert_eq!(backfills(&db).await, Vec::<Row>::new(), "nothing recorded");

    // A valid one is stored verbatim, with the planner's estimate.
    let condition = "country = 'DE' AND (country <> 'it''s (odd')";
    exits(
        &binary,
        0,
        &[
            "backfill",
            "crm",
            "--table",
            "public.customers",
            "--where",
            condition,
            "--detach",
        ],
    )
    .await;
    let rows = backfills(&db).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].3.as_deref(), Some(condition));
    let estimate = rows[0].6.expect("an estimate");
    assert!((1..=10).contains(&estimate), "{estimate}");
}

#[tokio::test]
async fn an_unknown_subscription_an_unselected_table_and_a_table_without_key_are_refused() {
    let notes = subscription("journal", URL)
        .tables(&["notes", "customers"])
        .events(&["insert"]);
    let (db, binary) = prepared(&[crm(), notes]).await;

    let output = exits(&binary, 2, &["backfill", "billing", "--detach"]).await;
    for name in ["billing", "crm", "journal"] {
        assert!(stderr(&output).contains(name), "{name}: {}", both(&output));
    }

    let output = exits(
        &binary,
        2,
        &["backfill", "crm", "--table", "unrelated", "--detach"],
    )
    .await;
    for name in [
        "unrelated",
        "public.customers",
        "sales.invoices",
        "sales.refunds",
    ] {
        assert!(stderr(&output).contains(name), "{name}: {}", both(&output));
    }

    // journal's other table has a key, but the request is all or nothing.
    let output = exits(&binary, 2, &["backfill", "journal", "--detach"]).await;
    let error = stderr(&output);
    assert!(
        error.contains("public.notes")
            && error.contains("primary key")
            && error.contains("ALTER TABLE \"public\".\"notes\" ADD PRIMARY KEY"),
        "{}",
        both(&output)
    );

    let output = exits(
        &binary,
        2,
        &["backfill", "crm", "--chunk-rows", "0", "--detach"],
    )
    .await;
    assert!(stderr(&output).contains("chunk-rows"), "{}", both(&output));
    assert_eq!(backfills(&db).await, Vec::<Row>::new(), "nothing recorded");

    // The same table with a key is accepted: the refusal was the key's.
    db.client
        .batch_execute(
            "ALTER TABLE notes ADD COLUMN id serial; ALTER TABLE notes ADD PRIMARY KEY (id)",
        )
        .await
        .unwrap();
    exits(&binary, 0, &["backfill", "journal", "--detach"]).await;
    assert_eq!(backfills(&db).await.len(), 2);
}

/// A child process's stdout and stderr, collected as they come.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<String>>);

impl Collected {
    fn drain(&self, mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static) {
        let text = self.0.clone();
        tokio::spawn(async move {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = pipe.read(&mut buffer).await {
                if read == 0 {
                    break;
                }
                text.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..read]));
            }
        });
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_without_a_daemon_says_so_and_ends_with_exit_1_when_cancelled() {
    let (db, binary) = prepared(&[crm()]).await;
    let mut child = tokio::process::Command::new(walhook_binary())
        .args(["backfill", "crm", "--table", "customers", "--config"])
        .arg(&binary.config_path)
        .env_remove("WALHOOK_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = Collected::default();
    let err = Collected::default();
    out.drain(child.stdout.take().unwrap());
    err.drain(child.stderr.take().unwrap());

    let slot = db.name.clone();
    wait_until(
        "the command to say that no walhook streams",
        Duration::from_secs(30),
        || async {
            out.text()
                .contains(&format!("no walhook is streaming from slot {slot}"))
        },
    )
    .await;
    // It keeps following: the request is pending, the command still runs.
    let rows = backfills(&db).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].5, "pending");
    assert!(child.try_wait().unwrap().is_none(), "{}", out.text());

    exits(
        &binary,
        0,
        &["backfill", "--cancel", &rows[0].0.to_string()],
    )
    .await;
    let status = within("the command to end", Duration::from_secs(20), child.wait())
        .await
        .unwrap();
    // The pipes close with the process; give the readers their last bytes.
    wait_until(
        "stderr to hold the reason",
        Duration::from_secs(5),
        || async { err.text().contains("cancelled") },
    )
    .await;
    assert_eq!(
        status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        out.text(),
        err.text()
    );
    assert!(
        err.text().contains(&format!(
            "backfill {} of \"public\".\"customers\" was cancelled",
            rows[0].0
        )),
        "{}",
        err.text()
    );
}

#[tokio::test]
async fn status_shows_active_backfills_and_check_warns_without_the_table() {
    let (db, binary) = prepared(&[crm()]).await;
    exits(
        &binary,
        0,
        &["backfill", "crm", "--table", "customers", "--detach"],
    )
    .await;
    let id = backfills(&db).await[0].0;

    let output = exits(&binary, 0, &["status"]).await;
    let text = stdout(&output);
    assert!(
        text.lines().any(|line| line.starts_with(&format!("{id} "))
            && line.contains("crm")
            && line.contains("\"public\".\"customers\"")
            && line.contains("pending")
            && line.contains("0/10")),
        "{}",
        both(&output)
    );
    let output = exits(&binary, 0, &["status", "--json"]).await;
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let listed = &report["subscriptions"][0]["backfills"];
    assert_eq!(listed[0]["id"], id, "{report}");
    assert_eq!(listed[0]["state"], "pending");
    assert_eq!(listed[0]["rows_sent"], 0);
    assert_eq!(listed[0]["estimated_rows"], 10);

    // Cancelled, it is no longer active and no longer shown.
    exits(&binary, 0, &["backfill", "--cancel", &id.to_string()]).await;
    let output = exits(&binary, 0, &["status", "--json"]).await;
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["subscriptions"][0]["backfills"],
        serde_json::json!([])
    );

    // A schema from before backfills: status shows none, check says what
    // to run, and the command says so too.
    db.client
        .batch_execute("DROP TABLE walhook.backfills")
        .await
        .unwrap();
    let output = exits(&binary, 0, &["status", "--json"]).await;
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["subscriptions"][0]["backfills"],
        serde_json::json!([])
    );
    let output = binary.command(&["check"]).await;
    assert!(
        stdout(&output)
            .lines()
            .any(|line| line.starts_with("warning:")
                && line.contains("walhook.backfills")
                && line.contains("walhook setup")),
        "{}",
        both(&output)
    );
    let output = exits(&binary, 1, &["backfill", "crm", "--detach"]).await;
    assert!(
        stderr(&output).contains("walhook setup"),
        "{}",
        both(&output)
    );
}
