//! Nothing skipped silently when the schema moves: partitioned tables,
//! tables renamed, moved, dropped or created again while walhook runs,
//! `schema.*` selectors and tables created later, TRUNCATE's place in the
//! order, tables without a replica identity, types dropped right after a
//! change, and tables the publication sends but no rule selects.

use std::fmt::Display;
use std::time::Duration;

use serde_json::{Value, json};
use walhook::config::Config;

use crate::support::config::{TestConfig, subscription};
use crate::support::receiver::Receiver;
use crate::support::{TestDb, Walhook, WalhookBinary, free_port, get, sample, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

/// The config for `db` with a catalog watch every 200 ms, and an admin
/// server on `admin_port` when given.
fn watching(db: &TestDb, admin_port: Option<u16>) -> TestConfig {
    let config = db.configure().source("catalog_watch_interval", "\"200ms\"");
    match admin_port {
        Some(port) => config.admin(&format!("127.0.0.1:{port}")),
        None => config,
    }
}

fn config_text(db: &TestDb, admin_port: Option<u16>, subscriptions: impl Display) -> String {
    watching(db, admin_port).subscription(subscriptions).text()
}

fn config(db: &TestDb, admin_port: Option<u16>, subscriptions: impl Display) -> Config {
    watching(db, admin_port).subscription(subscriptions).build()
}

/// Waits until the admin server's `series` has `value`.
async fn wait_for_metric(port: u16, series: &str, value: f64) {
    let url = format!("http://127.0.0.1:{port}/metrics");
    wait_until(&format!("{series} = {value}"), DEADLINE, || async {
        sample(&get(&url).await.1, series) == Some(value)
    })
    .await;
}

/// Waits until the slot has confirmed everything written so far: every
/// change before now is resolved.
async fn wait_until_confirmed_to_now(db: &TestDb) {
    let now = db.current_wal().await;
    wait_until("the slot to confirm up to now", DEADLINE, || async {
        db.confirmed_flush()
            .await
            .is_some_and(|confirmed| confirmed >= now)
    })
    .await;
}

/// Runs `statements` (each its own transaction) while walhook's reader is
/// stopped, then lets it go on: an event of table `big` larger than the
/// subscription's memory budget is held by the receiver, so the reader
/// waits at the next event (another row of `big`, written first) and reads
/// nothing of `statements` until the receiver answers.
async fn while_the_reader_waits(db: &TestDb, receiver: &Receiver, statements: &[&str]) {
    receiver.hold();
    db.client
        .batch_execute("INSERT INTO big VALUES (1, repeat('x', 5000000))")
        .await
        .unwrap();
    receiver.wait_for_arrivals(1, DEADLINE).await;
    db.client
        .batch_execute("INSERT INTO big VALUES (2, 'small')")
        .await
        .unwrap();
    for statement in statements {
        db.client.batch_execute(statement).await.unwrap();
    }
    receiver.release();
}

fn row_ids(events: &[Value]) -> Vec<i64> {
    let mut ids: Vec<i64> = events
        .iter()
        .filter_map(|event| event["record"]["id"].as_i64())
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_is_delivered_under_its_own_name_through_attach_and_detach() {
    let db = TestDb::with_schema(
        "CREATE TABLE pt (id int, region text, note text, PRIMARY KEY (id, region)) \
             PARTITION BY LIST (region);
         CREATE TABLE pt_eu PARTITION OF pt FOR VALUES IN ('eu');
         CREATE TABLE pt_us PARTITION OF pt FOR VALUES IN ('us');",
    )
    .await;
    let receiver = Receiver::start().await;
    let subscriptions = subscription("parts", &receiver.url("/pt"))
        .tables(&["public.pt"])
        .events(&["insert", "update", "delete", "truncate"]);
    let walhook = Walhook::start(config(&db, None, &subscriptions));
    db.wait_slot_active().await;
    db.client
        .batch_execute(
            "INSERT INTO pt VALUES (1, 'eu', 'a'), (2, 'us', 'b');
             UPDATE pt SET note = 'c' WHERE id = 1;
             DELETE FROM pt WHERE id = 2;",
        )
        .await
        .unwrap();
    let events = receiver.wait_for_delivered(4, DEADLINE).await;
    let mut seen: Vec<(String, String)> = events
        .iter()
        .map(|event| {
            let row = if event["type"] == "DELETE" {
                &event["old_record"]
            } else {
                &event["record"]
            };
            (
                event["table"].as_str().unwrap().to_owned(),
                format!("{} {}", event["type"].as_str().unwrap(), row["id"]),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("pt", "DELETE 2"),
            ("pt", "INSERT 1"),
            ("pt", "INSERT 2"),
            ("pt", "UPDATE 1")
        ]
        .map(|(table, what)| (table.to_owned(), what.to_owned()))
    );

    // A partition attached while walhook runs: its rows are the table's.
    db.client
        .batch_execute(
            "CREATE TABLE pt_asia (id int, region text, note text, PRIMARY KEY (id, region));
             ALTER TABLE pt ATTACH PARTITION pt_asia FOR VALUES IN ('asia');
             INSERT INTO pt_asia VALUES (3, 'asia', 'into the partition');
             INSERT INTO pt VALUES (4, 'asia', 'through the table');",
        )
        .await
        .unwrap();
    let events = receiver.wait_for_delivered(6, DEADLINE).await;
    for event in &events[4..] {
        assert_eq!(event["table"], "pt", "{event}");
        assert_eq!(event["record"]["region"], "asia", "{event}");
    }
    assert_eq!(row_ids(&events[4..]), vec![3, 4]);

    // A partition detached is a table of its own, which no rule selects.
    // (Each its own transaction: PostgreSQL 14 still publishes a row
    // written in the detaching transaction through the old root.)
    for statement in [
        "ALTER TABLE pt DETACH PARTITION pt_us",
        "INSERT INTO pt_us VALUES (5, 'us', 'no longer pt')",
        "INSERT INTO pt VALUES (6, 'eu', 'still pt')",
    ] {
        db.client.batch_execute(statement).await.unwrap();
    }
    receiver.wait_for_delivered(7, DEADLINE).await;
    wait_until_confirmed_to_now(&db).await;
    let events = receiver.delivered();
    let after_detach = row_ids(&events[6..]);
    if db.server_version_num().await < 150_000 {
        // PostgreSQL 14's walsender keeps publishing a detached partition
        // through its old root until it restarts (documented).
        assert_eq!(after_detach, vec![5, 6], "{events:?}");
    } else {
        assert_eq!(after_detach, vec![6], "{events:?}");
    }
    walhook.stop().await.unwrap();

    // What `walhook setup` (run by `run`) made, `check` accepts.
    let binary = WalhookBinary::new(&config_text(&db, None, &subscriptions));
    let output = binary.command(&["check"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(!stdout.contains("problem:"), "{stdout}");
    assert!(
        stdout.contains("a TRUNCATE of one of its partitions alone is not published"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_renamed_or_moved_while_walhook_runs_is_still_delivered_and_reported() {
    let db = TestDb::with_schema(
        "CREATE TABLE rn (id int PRIMARY KEY, note text);
         CREATE SCHEMA archive;",
    )
    .await;
    let receiver = Receiver::start().await;
    let port = free_port();
    let walhook = Walhook::start(config(
        &db,
        Some(port),
        subscription("renamed", &receiver.url("/rn"))
            .tables(&["public.rn"])
            .events(&["insert"]),
    ));
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO rn VALUES (1, 'before')")
        .await
        .unwrap();
    receiver.wait_for_delivered(1, DEADLINE).await;

    db.client
        .batch_execute(
            "ALTER TABLE rn RENAME TO rn2;
             INSERT INTO rn2 VALUES (2, 'renamed');",
        )
        .await
        .unwrap();
    let events = receiver.wait_for_delivered(2, DEADLINE).await;
    assert_eq!(events[1]["table"], "rn2");
    assert_eq!(events[1]["record"], json!({"id": 2, "note": "renamed"}));
    let renamed = r#"walhook_rule_table_problems{table="public.rn",problem="renamed"}"#;
    wait_for_metric(port, renamed, 1.0).await;

    db.client
        .batch_execute(
            "ALTER TABLE rn2 SET SCHEMA archive;
             INSERT INTO archive.rn2 VALUES (3, 'moved');",
        )
        .await
        .unwrap();
    let events = receiver.wait_for_delivered(3, DEADLINE).await;
    assert_eq!(events[2]["schema"], "archive");
    assert_eq!(events[2]["table"], "rn2");
    assert_eq!(events[2]["record"]["id"], 3);

    db.client
        .batch_execute("DROP TABLE archive.rn2")
        .await
        .unwrap();
    let dropped = r#"walhook_rule_table_problems{table="public.rn",problem="dropped"}"#;
    wait_for_metric(port, dropped, 1.0).await;
    wait_for_metric(port, renamed, 0.0).await;
    walhook.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_and_created_again_is_published_again_and_delivered() {
    let db = TestDb::with_schema("CREATE TABLE again (id int PRIMARY KEY)").await;
    let receiver = Receiver::start().await;
    let walhook = Walhook::start(config(
        &db,
        None,
        subscription("again", &receiver.url("/again"))
            .tables(&["again"])
            .events(&["insert"]),
    ));
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO again VALUES (1)")
        .await
        .unwrap();
    receiver.wait_for_delivered(1, DEADLINE).await;

    db.client
        .batch_execute(
            "DROP TABLE again;
             CREATE TABLE again (id int PRIMARY KEY, extra text);",
        )
        .await
        .unwrap();
    wait_until("the new table to be published", DEADLINE, || async {
        db.client
            .query_opt(
                "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND tablename = 'again'",
                &[&db.name],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
    db.client
        .batch_execute("INSERT INTO again VALUES (2, 'new shape')")
        .await
        .unwrap();
    let events = receiver.wait_for_delivered(2, DEADLINE).await;
    assert_eq!(events[1]["record"], json!({"id": 2, "extra": "new shape"}));
    walhook.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_waits_for_earlier_changes_and_later_changes_wait_for_it() {
    let db = TestDb::with_schema("CREATE TABLE tr (id int PRIMARY KEY)").await;
    let receiver = Receiver::start().await;
    // Answers (and records) each request after a random wait, so requests
    // on different lanes finish in any order unless something orders them.
    receiver.delay_responses_randomly(Duration::from_millis(40));
    let walhook = Walhook::start(config(
        &db,
        None,
        subscription("truncates", &receiver.url("/tr"))
            .tables(&["tr"])
            .events(&["insert", "truncate"]),
    ));
    db.wait_slot_active().await;
    db.client
        .batch_execute(
            "INSERT INTO tr SELECT generate_series(1, 20);
             TRUNCATE tr;
             INSERT INTO tr SELECT generate_series(21, 40);",
        )
        .await
        .unwrap();
    let events = receiver.wait_for_delivered(41, DEADLINE).await;
    let truncate_at = events
        .iter()
        .position(|event| event["type"] == "TRUNCATE")
        .expect("the TRUNCATE arrived");
    assert_eq!(
        row_ids(&events[..truncate_at]),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(
        row_ids(&events[truncate_at + 1..]),
        (21..=40).collect::<Vec<_>>()
    );
    walhook.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_selector_delivers_the_first_rows_of_tables_created_while_walhook_runs() {
    let db = TestDb::with_schema(
        "CREATE SCHEMA shop;
         CREATE TABLE shop.orders (id int PRIMARY KEY);
         CREATE TABLE public.elsewhere (id int PRIMARY KEY);",
    )
    .await;
    let receiver = Receiver::start().await;
    let walhook = Walhook::start(config(
        &db,
        None,
        subscription("shop", &receiver.url("/shop"))
            .tables(&["shop.*"])
            .events(&["insert", "update", "delete"]),
    ));
    if db.server_version_num().await < 150_000 {
        // FOR TABLES IN SCHEMA came with PostgreSQL 15: refused, clearly.
        let error = tokio::time::timeout(DEADLINE, walhook.task)
            .await
            .unwrap()
            .unwrap()
            .expect_err("schema.* needs PostgreSQL 15");
        assert!(
            error.to_string().contains("needs PostgreSQL 15 or newer"),
            "{error}"
        );
        return;
    }
    db.wait_slot_active().await;
    db.client
        .batch_execute(
            "INSERT INTO shop.orders VALUES (1);
             INSERT INTO public.elsewhere VALUES (1);
             CREATE TABLE shop.signups (id int PRIMARY KEY, email text);
             INSERT INTO shop.signups VALUES (2, 'a@example.com');
             BEGIN;
             CREATE TABLE shop.refunds (id int PRIMARY KEY);
             INSERT INTO shop.refunds VALUES (3);
             COMMIT;",
        )
        .await
        .unwrap();
    receiver.wait_for_delivered(3, DEADLINE).await;
    wait_until_confirmed_to_now(&db).await;
    let mut tables: Vec<(String, i64)> = receiver
        .delivered()
        .iter()
        .map(|event| {
            assert_eq!(event["schema"], "shop", "{event}");
            (
                event["table"].as_str().unwrap().to_owned(),
                event["record"]["id"].as_i64().unwrap(),
            )
        })
        .collect();
    tables.sort();
    assert_eq!(
        tables,
        vec![
            ("orders".to_owned(), 1),
            ("refunds".to_owned(), 3),
            ("signups".to_owned(), 2)
        ]
    );
    walhook.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_never_publishes_updates_of_a_table_that_cannot_log_them() {
    let db = TestDb::with_schema(
        "CREATE TABLE nokey (a int, b text);
         INSERT INTO nokey VALUES (1, 'x');
         CREATE TABLE keyed (id int PRIMARY KEY);",
    )
    .await;
    let receiver = Receiver::start().await;
    let updates = subscription("nokey-updates", &receiver.url("/n"))
        .tables(&["nokey"])
        .events(&["insert", "update"]);
    // An insert-only rule on the key-less table beside an update rule on
    // another: the publication's operations are shared by its tables.
    let mixed = format!(
        "{}{}",
        subscription("nokey-inserts", &receiver.url("/n"))
            .tables(&["nokey"])
            .events(&["insert"]),
        subscription("keyed-updates", &receiver.url("/k"))
            .tables(&["keyed"])
            .events(&["update"]),
    );
    for rules in [updates.to_string(), mixed] {
        let binary = WalhookBinary::new(&config_text(&db, None, &rules));
        let output = binary.command(&["setup"]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("public.nokey") && stderr.contains("REPLICA IDENTITY FULL"),
            "{stderr}"
        );
        db.client
            .batch_execute("UPDATE nokey SET b = 'still works'")
            .await
            .expect("the application's UPDATE is not refused");
        let walhook = Walhook::start(config(&db, None, &rules));
        let error = tokio::time::timeout(DEADLINE, walhook.task)
            .await
            .unwrap()
            .unwrap()
            .expect_err("run refuses too");
        assert_eq!(error.exit_code(), 2, "{error}");
    }
    let publications: i64 = db
        .client
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(publications, 0, "nothing was published");

    // Inserts only: published, and the application's updates still work.
    let inserts = subscription("nokey-inserts", &receiver.url("/n"))
        .tables(&["nokey"])
        .events(&["insert"]);
    let output = WalhookBinary::new(&config_text(&db, None, &inserts))
        .command(&["setup"])
        .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    db.client
        .batch_execute("UPDATE nokey SET b = 'after setup'; DELETE FROM nokey;")
        .await
        .expect("the application's UPDATE and DELETE are not refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_types_dropped_right_after_their_change_are_still_rendered_faithfully() {
    let db = TestDb::with_schema(
        "CREATE DOMAIN positive AS int CHECK (VALUE > 0);
         CREATE TYPE pair AS (f1 int, f2 text);
         CREATE TABLE big (id int PRIMARY KEY, body text);
         CREATE TABLE typed (id int PRIMARY KEY, p positive, c pair, ps positive[]);",
    )
    .await;
    let receiver = Receiver::start().await;
    let walhook = Walhook::start(config(
        &db,
        None,
        subscription("typed", &receiver.url("/typed"))
            .tables(&["big", "typed"])
            .events(&["insert"]),
    ));
    db.wait_slot_active().await;
    // The types are gone from the catalog before walhook reads the row.
    while_the_reader_waits(
        &db,
        &receiver,
        &[
            "INSERT INTO typed VALUES (1, 6, ROW(-1, 'a'), ARRAY[7, 8]::positive[])",
            "DROP TABLE typed",
            "DROP DOMAIN positive",
            "DROP TYPE pair",
        ],
    )
    .await;
    let events = receiver.wait_for_delivered(3, DEADLINE).await;
    let typed = events
        .iter()
        .find(|event| event["table"] == "typed")
        .expect("the typed row arrived");
    assert_eq!(
        typed["record"],
        json!({"id": 1, "p": 6, "c": {"f1": -1, "f2": "a"}, "ps": [7, 8]})
    );
    walhook.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_a_published_table_no_rule_selects_are_counted_and_check_explains_them() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(&format!(
            "CREATE TABLE orders (id int PRIMARY KEY);
             CREATE TABLE audit (id int PRIMARY KEY);
             CREATE PUBLICATION {name} FOR TABLE orders, audit;",
            name = db.name
        ))
        .await
        .unwrap();
    db.client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&db.name],
        )
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    let port = free_port();
    // Set up by hand, as an administrator would for a least-privilege role:
    // walhook uses the publication as it is.
    let orders = subscription("orders", &receiver.url("/o"))
        .tables(&["orders"])
        .events(&["insert"]);
    let manual = watching(&db, Some(port))
        .source("auto_setup", "false")
        .subscription(&orders);
    let walhook = Walhook::start(manual.build());
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO audit VALUES (1); INSERT INTO orders VALUES (1);")
        .await
        .unwrap();
    let events = receiver.wait_for_delivered(1, DEADLINE).await;
    assert_eq!(events[0]["table"], "orders");
    wait_for_metric(
        port,
        r#"walhook_changes_unrouted_total{table="public.audit"}"#,
        1.0,
    )
    .await;
    walhook.stop().await.unwrap();

    let output = WalhookBinary::new(&manual.admin("").text())
        .command(&["check"])
        .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("sends the changes of public.audit, which no rule selects"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_generated_columns_are_sent_where_the_server_publishes_them() {
    let db = TestDb::with_schema(
        "CREATE TABLE g (id int PRIMARY KEY, a int, b int GENERATED ALWAYS AS (a * 2) STORED)",
    )
    .await;
    let version = db.server_version_num().await;
    let receiver = Receiver::start().await;
    if version < 180_000 {
        // A filter on a column the server never sends would never be true.
        let filtered = subscription("generated", &receiver.url("/g"))
            .tables(&["g"])
            .events(&["insert"])
            .filter("b > 10");
        let error = Walhook::start(config(&db, None, &filtered))
            .task
            .await
            .unwrap()
            .expect_err("a filter on a generated column is refused before 18");
        assert_eq!(error.exit_code(), 2, "{error}");
        assert!(error.to_string().contains("generated column"), "{error}");
    }
    let walhook = Walhook::start(config(
        &db,
        None,
        subscription("generated", &receiver.url("/g"))
            .tables(&["g"])
            .events(&["insert"]),
    ));
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO g (id, a) VALUES (1, 21)")
        .await
        .unwrap();
    let events = receiver.wait_for_delivered(1, DEADLINE).await;
    if version >= 180_000 {
        let row: Value = db
            .client
            .query_one("SELECT to_jsonb(g)::text FROM g", &[])
            .await
            .map(|row| serde_json::from_str(&row.get::<_, String>(0)).unwrap())
            .unwrap();
        assert_eq!(events[0]["record"], row);
    } else {
        // PostgreSQL before 18 never sends generated columns (documented).
        assert_eq!(events[0]["record"], json!({"id": 1, "a": 21}));
    }
    walhook.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_whose_type_is_gone_before_walhook_saw_it_goes_out_as_text_and_is_counted() {
    let db = TestDb::with_schema(
        "CREATE TABLE big (id int PRIMARY KEY, body text);
         CREATE TABLE late (id int PRIMARY KEY, v int);",
    )
    .await;
    let receiver = Receiver::start().await;
    let port = free_port();
    let walhook = Walhook::start(config(
        &db,
        Some(port),
        subscription("w", &receiver.url("/w"))
            .tables(&["big", "late"])
            .events(&["insert"]),
    ));
    db.wait_slot_active().await;
    // A column gets a new type, a row is written and the type dropped
    // while the reader waits: walhook never sees that type in the catalog.
    while_the_reader_waits(
        &db,
        &receiver,
        &[
            "CREATE DOMAIN short_lived AS int",
            "ALTER TABLE late ALTER COLUMN v TYPE short_lived",
            "INSERT INTO late VALUES (1, 5)",
            "DROP TABLE late",
            "DROP DOMAIN short_lived",
        ],
    )
    .await;
    let events = receiver.wait_for_delivered(3, DEADLINE).await;
    let late = events
        .iter()
        .find(|event| event["table"] == "late")
        .expect("the row of the dropped table arrived");
    assert_eq!(late["record"], json!({"id": 1, "v": "5"}));
    wait_for_metric(
        port,
        r#"walhook_values_as_text_total{table="public.late",column="v"}"#,
        1.0,
    )
    .await;
    walhook.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_waiting_for_a_failing_receiver_holds_back_no_other_subscription() {
    let db = TestDb::with_schema(
        "CREATE TABLE t (id int PRIMARY KEY);
         CREATE TABLE u (id int PRIMARY KEY);",
    )
    .await;
    let down = Receiver::start().await;
    down.respond_with(503);
    let up = Receiver::start().await;
    let subscriptions = format!(
        "{}{}",
        subscription("down", &down.url("/t"))
            .tables(&["t"])
            .events(&["insert", "truncate"]),
        subscription("up", &up.url("/u"))
            .tables(&["u"])
            .events(&["insert"]),
    );
    // The failing receiver's events are retried (not parked) for minutes.
    let config = db
        .configure()
        .delivery("max_attempts", "1000")
        .subscription(subscriptions)
        .build();
    let walhook = Walhook::start(config);
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO t VALUES (1); TRUNCATE t;")
        .await
        .unwrap();
    down.wait_for_arrivals(1, DEADLINE).await;
    db.client
        .batch_execute("INSERT INTO u VALUES (1)")
        .await
        .unwrap();
    let events = up.wait_for_delivered(1, DEADLINE).await;
    assert_eq!(events[0]["record"]["id"], 1);

    // Once the receiver answers, the TRUNCATE follows the insert.
    down.respond_with(200);
    let events = down.wait_for_delivered(2, DEADLINE).await;
    assert_eq!(events[0]["type"], "INSERT");
    assert_eq!(events[1]["type"], "TRUNCATE");
    walhook.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_on_a_partition_below_a_selected_partitioned_table_is_refused() {
    let db = TestDb::with_schema(
        "CREATE TABLE top (id int, region text, city text) PARTITION BY LIST (region);
         CREATE TABLE mid PARTITION OF top FOR VALUES IN ('eu') PARTITION BY LIST (city);
         CREATE TABLE leaf PARTITION OF mid FOR VALUES IN ('paris');",
    )
    .await;
    let receiver = Receiver::start().await;
    let subscriptions = format!(
        "{}{}",
        subscription("mid", &receiver.url("/mid"))
            .tables(&["mid"])
            .events(&["insert"]),
        subscription("leaf", &receiver.url("/leaf"))
            .tables(&["leaf"])
            .events(&["insert"]),
    );
    let walhook = Walhook::start(config(&db, None, &subscriptions));
    let error = tokio::time::timeout(DEADLINE, walhook.task)
        .await
        .unwrap()
        .unwrap()
        .expect_err("the rule on leaf would receive nothing");
    assert_eq!(error.exit_code(), 2, "{error}");
    let message = error.to_string();
    assert!(
        message.contains("table public.leaf is a partition of public.mid"),
        "{message}"
    );
}
