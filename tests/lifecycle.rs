//! walhook's life beside PostgreSQL: Postgres restarted mid-stream, a slot
//! that vanishes, schema changes and unchanged TOAST while streaming, a huge
//! transaction, a standby taking over, a graceful stop, SIGKILL at random
//! moments, and two instances sharding tables across their own slots.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use walhook::pgtemp::TempPostgres;

use crate::support::config::{Subscription, subscription};
use crate::support::receiver::Receiver;
use crate::support::{
    TestDb, Walhook, WalhookBinary, connect, ids_by_row, peak_rss_kb, sigterm, source_lsn,
    wait_for_rows, wait_until,
};

fn rows(receiver: &Receiver, tables: &[&str], events: &[&str]) -> Subscription {
    subscription("rows", &receiver.url("/rows"))
        .tables(tables)
        .events(events)
}

fn items_subscription(receiver: &Receiver) -> Subscription {
    rows(receiver, &["items"], &["insert"])
}

async fn create_items(db: &TestDb) {
    db.client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, payload text)")
        .await
        .unwrap();
}

async fn insert_rows(client: &tokio_postgres::Client, from: i64, to: i64, per_transaction: i64) {
    for start in (from..=to).step_by(per_transaction as usize) {
        let end = (start + per_transaction - 1).min(to);
        client
            .batch_execute(&format!(
                "INSERT INTO items SELECT g, 'row ' || g FROM generate_series({start}, {end}) g"
            ))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_stream_walhook_reconnects_and_every_row_arrives() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(TempPostgres::start)
            .await
            .unwrap()
            .unwrap(),
    );
    let db = TestDb::on(&cluster).await;
    create_items(&db).await;
    let receiver = Receiver::start().await;
    // Slow answers keep requests in flight when the server goes away.
    receiver.delay_responses(Duration::from_millis(5));
    let binary = WalhookBinary::new(&db.config_text(items_subscription(&receiver)));
    let mut walhook = binary.spawn_run();
    db.wait_slot_active().await;

    insert_rows(&db.client, 1, 2000, 20).await;
    receiver
        .wait_for_delivered_count(200, Duration::from_secs(30))
        .await;
    let restarting = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || restarting.restart())
        .await
        .unwrap()
        .unwrap();
    binary
        .wait_for_log("reconnected; resuming", Duration::from_secs(30))
        .await;
    assert!(binary.log().contains("replication connection lost"));

    let client = connect(&db.url).await;
    insert_rows(&client, 2001, 4000, 20).await;
    wait_for_rows(&receiver, 4000, Duration::from_secs(90), || binary.log()).await;
    assert!(
        walhook.try_wait().unwrap().is_none(),
        "walhook kept running"
    );
    walhook.kill().await.unwrap();
}

#[tokio::test]
async fn a_slot_that_vanishes_stops_walhook_with_the_fix_and_is_not_silently_recreated() {
    let db = TestDb::new().await;
    create_items(&db).await;
    let receiver = Receiver::start().await;
    let binary = WalhookBinary::new(&db.config_text(items_subscription(&receiver)));
    let mut walhook = binary.spawn_run();
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items VALUES (1, 'before')")
        .await
        .unwrap();
    receiver
        .wait_for_delivered(1, Duration::from_secs(30))
        .await;

    // Drop the slot between walhook's reconnection attempts.
    let mut dropped = false;
    for _ in 0..100 {
        db.client
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots \
                 WHERE slot_name = '{}' AND active_pid IS NOT NULL",
                db.name
            ))
            .await
            .unwrap();
        if db
            .client
            .batch_execute(&format!("SELECT pg_drop_replication_slot('{}')", db.name))
            .await
            .is_ok()
        {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "could not drop the slot");
    let status = tokio::time::timeout(Duration::from_secs(30), walhook.wait())
        .await
        .expect("walhook stops when its slot vanished")
        .unwrap();
    assert_eq!(status.code(), Some(1), "log:\n{}", binary.log());
    let log = binary.log();
    assert!(log.contains("has vanished"), "{log}");
    assert!(log.contains("walhook setup"), "{log}");

    // Starting again does not quietly create a new slot (auto_setup is on).
    let again = tokio::time::timeout(Duration::from_secs(30), binary.command(&["run"]))
        .await
        .expect("run refuses at once");
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("has vanished"), "{stderr}");
    assert!(stderr.contains("walhook setup"), "{stderr}");
    assert_eq!(db.confirmed_flush().await, None, "no slot was created");

    // `walhook setup` creates a new slot on purpose; then walhook runs.
    let setup = binary.command(&["setup"]).await;
    assert!(setup.status.success(), "{setup:?}");
    let mut walhook = binary.spawn_run();
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items VALUES (2, 'after')")
        .await
        .unwrap();
    // (Row 1 may have been delivered more than once: at least once.)
    wait_until("row 2 from the new slot", Duration::from_secs(30), || {
        let delivered = receiver.delivered();
        async move { delivered.iter().any(|event| event["record"]["id"] == 2) }
    })
    .await;
    walhook.kill().await.unwrap();
}

#[tokio::test]
async fn unchanged_toast_is_filled_under_replica_identity_full_and_listed_otherwise() {
    let db = TestDb::new().await;
    // EXTERNAL: out of line, uncompressed; md5 chains would not compress
    // anyway. 6,250 × 32 hex digits = 200,000 bytes.
    db.client
        .batch_execute(
            "CREATE TABLE toast_full (id int PRIMARY KEY, n int NOT NULL, big text NOT NULL);
             ALTER TABLE toast_full ALTER COLUMN big SET STORAGE EXTERNAL;
             ALTER TABLE toast_full REPLICA IDENTITY FULL;
             CREATE TABLE toast_default (id int PRIMARY KEY, n int NOT NULL, big text NOT NULL);
             ALTER TABLE toast_default ALTER COLUMN big SET STORAGE EXTERNAL;",
        )
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    let walhook = Walhook::start(db.config(rows(
        &receiver,
        &["toast_full", "toast_default"],
        &["insert", "update"],
    )));
    db.wait_slot_active().await;
    let big_sql =
        "(SELECT string_agg(md5(g::text), '' ORDER BY g) FROM generate_series(1, 6250) g)";
    db.client
        .batch_execute(&format!(
            "INSERT INTO toast_full VALUES (1, 0, {big_sql});
             INSERT INTO toast_default VALUES (1, 0, {big_sql});"
        ))
        .await
        .unwrap();
    let big: String = db
        .client
        .query_one(&format!("SELECT {big_sql}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big.len(), 200_000);
    for table in ["toast_full", "toast_default"] {
        let toasted: i64 = db
            .client
            .query_one(
                "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE relname = $1",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            toasted >= 200_000,
            "{table}: the value is stored out of line"
        );
    }
    db.client
        .batch_execute(
            "UPDATE toast_full SET n = n + 1;
             UPDATE toast_default SET n = n + 1;",
        )
        .await
        .unwrap();
    let events = receiver
        .wait_for_delivered(4, Duration::from_secs(30))
        .await;
    let update = |table: &str| {
        events
            .iter()
            .find(|event| event["table"] == table && event["type"] == "UPDATE")
            .unwrap_or_else(|| panic!("an update of {table}"))
            .clone()
    };

    let full = update("toast_full");
    assert_eq!(full["record"]["big"].as_str(), Some(big.as_str()));
    assert_eq!(full["record"]["n"], 1);
    assert_eq!(full["old_record"]["big"].as_str(), Some(big.as_str()));
    assert_eq!(full["changed_columns"], json!(["n"]));
    assert!(
        full.get("unchanged_toast").is_none(),
        "{}",
        full["unchanged_toast"]
    );

    let default = update("toast_default");
    let record = default["record"].as_object().unwrap();
    assert_eq!(record.keys().collect::<Vec<_>>(), ["id", "n"]);
    assert_eq!(record["n"], 1);
    assert_eq!(default["unchanged_toast"], json!(["big"]));
    assert_eq!(default["old_record"], Value::Null);
    assert_eq!(default["changed_columns"], Value::Null);
    // No placeholder and no stale copy of the value anywhere in the body.
    assert!(serde_json::to_string(&default).unwrap().len() < 10_000);
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn schema_changes_mid_stream_change_the_payload_shape() {
    let db = TestDb::with_schema("CREATE TABLE shapes (id int PRIMARY KEY, a int)").await;
    let receiver = Receiver::start().await;
    let walhook = Walhook::start(db.config(rows(&receiver, &["shapes"], &["insert", "update"])));
    db.wait_slot_active().await;
    for statement in [
        "INSERT INTO shapes VALUES (1, 10)",
        "ALTER TABLE shapes ADD COLUMN b text DEFAULT 'x'",
        "INSERT INTO shapes VALUES (2, 20, 'yy')",
        "ALTER TABLE shapes DROP COLUMN a",
        "INSERT INTO shapes VALUES (3, 'zzz')",
        "ALTER TABLE shapes ALTER COLUMN b DROP DEFAULT, ALTER COLUMN b TYPE int USING length(b)",
        "INSERT INTO shapes VALUES (4, 42)",
        "UPDATE shapes SET b = b + 100 WHERE id = 1",
    ] {
        db.client.batch_execute(statement).await.unwrap();
    }
    let events = receiver
        .wait_for_delivered(5, Duration::from_secs(30))
        .await;
    // Under `key` ordering only each row's own changes keep their order:
    // sorted by row (stably), row 1's insert stays before its update.
    let mut records: Vec<&Value> = events.iter().map(|event| &event["record"]).collect();
    records.sort_by_key(|record| record["id"].as_i64());
    assert_eq!(
        records,
        [
            &json!({"id": 1, "a": 10}),
            &json!({"id": 1, "b": 101}),
            &json!({"id": 2, "a": 20, "b": "yy"}),
            &json!({"id": 3, "b": "zzz"}),
            &json!({"id": 4, "b": 42}),
        ]
    );
    walhook.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_transaction_streams_with_bounded_memory_and_confirms_only_at_its_commit() {
    // WALHOOK_HUGE_ROWS=1000000 for the full-size run (by hand).
    let rows: i64 = std::env::var("WALHOOK_HUGE_ROWS")
        .ok()
        .and_then(|rows| rows.parse().ok())
        .unwrap_or(100_000);
    let db = TestDb::new().await;
    create_items(&db).await;
    let receiver = Receiver::start().await;
    let binary = WalhookBinary::new(
        &db.config_text(items_subscription(&receiver).with("batch", "{ max_events = 500 }")),
    );
    let mut walhook = binary.spawn_run();
    let pid = walhook.id().unwrap();
    db.wait_slot_active().await;

    let started = std::time::Instant::now();
    let writer = {
        let client = connect(&db.url).await;
        tokio::spawn(async move {
            client
                .batch_execute(&format!(
                    "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, {rows}) g"
                ))
                .await
                .unwrap();
        })
    };
    // (confirmed position, events delivered by then), sampled in that order:
    // delivered only grows, so a confirmed position past the commit with
    // fewer than every row delivered would be a broken guarantee.
    let mut samples = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(600);
    while receiver.delivered_count() < rows as usize {
        let confirmed = db.confirmed_flush().await.unwrap();
        samples.push((confirmed, receiver.delivered_count()));
        assert!(tokio::time::Instant::now() < until, "{}", binary.log());
        let _ = tokio::time::timeout(
            Duration::from_millis(50),
            receiver.wait_for_delivered_count(rows as usize, Duration::from_secs(600)),
        )
        .await;
    }
    writer.await.unwrap();
    let elapsed = started.elapsed();
    let first = &receiver.requests()[0].events()[0];
    let commit_lsn = source_lsn(first, "commit_lsn");
    for &(confirmed, delivered) in &samples {
        assert!(
            confirmed <= commit_lsn || delivered >= rows as usize,
            "confirmed {confirmed} past the commit {commit_lsn} with {delivered} of {rows} delivered"
        );
    }
    assert!(
        samples
            .iter()
            .any(|&(confirmed, _)| confirmed <= commit_lsn),
        "sampled while the transaction was open"
    );
    wait_until(
        "the slot to move past the commit",
        Duration::from_secs(30),
        || async { db.confirmed_flush().await.unwrap() > commit_lsn },
    )
    .await;
    let peak = peak_rss_kb(pid).unwrap_or_default();
    eprintln!(
        "huge transaction: {rows} rows in {:.1}s, walhook peak RSS (VmHWM) {} MiB",
        elapsed.as_secs_f64(),
        peak / 1024
    );
    // The rows are all there, once each.
    let by_row = ids_by_row(&receiver.delivered());
    assert_eq!(by_row.len() as i64, rows);
    sigterm(&walhook);
    let status = tokio::time::timeout(Duration::from_secs(30), walhook.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_within_seconds_when_the_active_walhook_is_killed() {
    const ROWS: i64 = 2000;
    let db = TestDb::new().await;
    create_items(&db).await;
    let receiver = Receiver::start().await;
    let config = db.config_text(items_subscription(&receiver));
    let first = WalhookBinary::new(&config);
    let second = WalhookBinary::new(&config);
    let mut active = first.spawn_run();
    db.wait_slot_active().await;
    let mut standby = second.spawn_run();
    second
        .wait_for_log("standing by", Duration::from_secs(30))
        .await;

    let writer = {
        let client = connect(&db.url).await;
        tokio::spawn(async move { insert_rows(&client, 1, ROWS, 20).await })
    };
    receiver
        .wait_for_delivered_count(300, Duration::from_secs(30))
        .await;
    active.kill().await.unwrap();
    let killed = std::time::Instant::now();
    second
        .wait_for_log("streaming changes", Duration::from_secs(15))
        .await;
    let takeover = killed.elapsed();
    eprintln!(
        "standby took over {:.2}s after the kill",
        takeover.as_secs_f64()
    );
    assert!(takeover < Duration::from_secs(10));
    writer.await.unwrap();
    wait_for_rows(&receiver, ROWS, Duration::from_secs(60), || second.log()).await;
    standby.kill().await.unwrap();
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_confirms_them_and_exits_0() {
    const ROWS: i64 = 40;
    let db = TestDb::new().await;
    create_items(&db).await;
    let receiver = Receiver::start().await;
    receiver.delay_responses(Duration::from_millis(100));
    let config = db.config_text(items_subscription(&receiver));
    let binary = WalhookBinary::new(&config);
    let mut walhook = binary.spawn_run();
    db.wait_slot_active().await;
    // One row per transaction: a delivered row is a delivered transaction.
    for id in 1..=ROWS {
        db.client
            .batch_execute(&format!("INSERT INTO items VALUES ({id}, 'row')"))
            .await
            .unwrap();
    }
    receiver.wait_for_arrivals(1, Duration::from_secs(30)).await;
    sigterm(&walhook);
    let status = tokio::time::timeout(Duration::from_secs(15), walhook.wait())
        .await
        .expect("walhook exits within the grace period")
        .unwrap();
    assert_eq!(status.code(), Some(0), "log:\n{}", binary.log());
    assert!(
        binary.log().contains("final position confirmed"),
        "{}",
        binary.log()
    );
    let arrived = receiver.arrivals();
    let delivered = receiver.delivered();
    assert_eq!(
        delivered.len(),
        arrived,
        "every request in flight at SIGTERM was answered, none abandoned"
    );
    let confirmed = db.confirmed_flush().await.unwrap();
    let mut commits: Vec<_> = delivered
        .iter()
        .map(|event| source_lsn(event, "commit_lsn"))
        .collect();
    commits.sort_unstable();
    commits.dedup();
    // The newest delivered transaction may have been cut off between its row
    // and its Commit message when reading stopped: it cannot be confirmed
    // and is sent again after a restart. Every one before it is confirmed.
    if let Some((_newest, earlier)) = commits.split_last() {
        for commit in earlier {
            assert!(
                confirmed > *commit,
                "confirmed {confirmed} covers the delivered commit {commit}"
            );
        }
    }

    // What was not delivered before the stop arrives after a restart.
    receiver.delay_responses(Duration::ZERO);
    let walhook = Walhook::start(db.config(items_subscription(&receiver)));
    wait_for_rows(&receiver, ROWS, Duration::from_secs(30), String::new).await;
    walhook.stop().await.unwrap();
}

/// SIGTERM while the receiver answers 503: the row in flight is abandoned
/// after the grace period, and the final position confirms only what was
/// acknowledged — before the row, after the one delivered earlier — so the
/// next start sends the row.
#[tokio::test]
async fn sigterm_while_the_receiver_fails_confirms_only_what_was_acknowledged() {
    let db = TestDb::new().await;
    create_items(&db).await;
    let receiver = Receiver::start().await;
    let binary = WalhookBinary::new(
        &db.configure()
            .delivery("shutdown_grace", "\"1s\"")
            .delivery("max_attempts", "100000")
            // Retried in place: a circuit that opened would store the row
            // in the backlog, which resolves it (tests/backlog.rs).
            .delivery("breaker", r#"{ failures = 1000000, window = "1d" }"#)
            .subscription(items_subscription(&receiver))
            .text(),
    );
    let mut walhook = binary.spawn_run();
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items VALUES (1, 'acknowledged')")
        .await
        .unwrap();
    let delivered = receiver
        .wait_for_delivered(1, Duration::from_secs(30))
        .await;
    let acknowledged = source_lsn(&delivered[0], "commit_lsn");

    receiver.respond_with(503);
    db.client
        .batch_execute("INSERT INTO items VALUES (2, 'refused')")
        .await
        .unwrap();
    // Refused twice: walhook has read the row, its commit, and is retrying.
    receiver.wait_for_requests(3, Duration::from_secs(30)).await;
    let refused = receiver.requests()[1].json();
    assert_eq!(refused["record"]["id"], 2);
    let commit = source_lsn(&refused, "commit_lsn");

    sigterm(&walhook);
    let status = tokio::time::timeout(Duration::from_secs(15), walhook.wait())
        .await
        .expect("walhook exits after the grace period")
        .unwrap();
    assert_eq!(status.code(), Some(0), "log:\n{}", binary.log());
    assert!(binary.log().contains("abandoning them"), "{}", binary.log());
    let confirmed = db.confirmed_flush().await.unwrap();
    assert!(
        confirmed > acknowledged,
        "the acknowledged row's commit {acknowledged} is confirmed: {confirmed}"
    );
    assert!(
        confirmed < commit,
        "stopped with {confirmed} confirmed, past the commit {commit} of a row the receiver never acknowledged"
    );

    // The next start sends it, under the same id.
    receiver.respond_with(200);
    let mut walhook = binary.spawn_run();
    wait_until("row 2 to be delivered", Duration::from_secs(30), || {
        let delivered = receiver.delivered();
        async move { delivered.iter().any(|event| event["record"]["id"] == 2) }
    })
    .await;
    let delivered = receiver.delivered();
    let again = delivered
        .iter()
        .find(|event| event["record"]["id"] == 2)
        .unwrap();
    assert_eq!(again["id"], refused["id"]);
    walhook.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_of_a_20000_row_stream_loses_nothing() {
    const ROWS: i64 = 20_000;
    const KILLS: usize = 6;
    let seed = std::env::var("WALHOOK_KILL_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("kill seed {seed} (WALHOOK_KILL_SEED={seed} repeats it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let db = TestDb::new().await;
    create_items(&db).await;
    let receiver = Receiver::start().await;
    let binary = WalhookBinary::new(&db.config_text(items_subscription(&receiver)));
    let mut walhook = binary.spawn_run();
    db.wait_slot_active().await;
    let writer = {
        let client = connect(&db.url).await;
        tokio::spawn(async move { insert_rows(&client, 1, ROWS, 100).await })
    };
    // Kill after a random number of deliveries each time, restarting at
    // once: mid-request, mid-transaction, mid-status-update, wherever.
    let mut moments: Vec<usize> = (0..KILLS)
        .map(|_| rng.usize(1..(ROWS as usize * 9 / 10)))
        .collect();
    moments.sort_unstable();
    for (kill, after) in moments.into_iter().enumerate() {
        receiver
            .wait_for_delivered_count(after, Duration::from_secs(60))
            .await;
        walhook.kill().await.unwrap();
        eprintln!(
            "kill {} after {} deliveries",
            kill + 1,
            receiver.delivered_count()
        );
        walhook = binary.spawn_run();
    }
    writer.await.unwrap();
    wait_for_rows(&receiver, ROWS, Duration::from_secs(60), || binary.log()).await;
    walhook.kill().await.unwrap();
}

#[tokio::test]
async fn an_invalidated_slot_stops_walhook_with_the_fix() {
    // A cluster that keeps at most 1 MB of WAL for a lagging slot.
    let cluster = tokio::task::spawn_blocking(|| {
        TempPostgres::start_with(walhook::pgtemp::TempPostgresOptions {
            extra_conf: vec![
                "max_slot_wal_keep_size = '1MB'".into(),
                "wal_keep_size = 0".into(),
                "min_wal_size = '32MB'".into(),
                "max_wal_size = '64MB'".into(),
            ],
            hba_lines: Vec::new(),
        })
    })
    .await
    .unwrap()
    .unwrap();
    let db = TestDb::on(&cluster).await;
    create_items(&db).await;
    let receiver = Receiver::start().await;
    let binary = WalhookBinary::new(&db.config_text(items_subscription(&receiver)));
    let setup = binary.command(&["setup"]).await;
    assert!(setup.status.success(), "{setup:?}");
    // Nobody reads the slot; write past the limit, then checkpoint so the
    // WAL it needs is removed.
    for round in 0..6 {
        db.client
            .batch_execute(&format!(
                "INSERT INTO items SELECT g, repeat(md5(g::text), 40) \
                 FROM generate_series({}, {}) g; CHECKPOINT; SELECT pg_switch_wal();",
                round * 5000 + 1,
                round * 5000 + 5000
            ))
            .await
            .unwrap();
    }
    wait_until(
        "the slot to be invalidated",
        Duration::from_secs(60),
        || async {
            db.client.batch_execute("CHECKPOINT").await.unwrap();
            db.client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND wal_status = 'lost'",
                &[&db.name],
            )
            .await
            .unwrap()
            .is_some()
        },
    )
    .await;
    let run = tokio::time::timeout(Duration::from_secs(60), binary.command(&["run"]))
        .await
        .expect("walhook stops at once");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("invalidated"), "{stderr}");
    assert!(stderr.contains("max_slot_wal_keep_size"), "{stderr}");
    assert!(stderr.contains("walhook setup"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_shard_tables_across_their_own_slots_and_progress_independently() {
    let db = TestDb::with_schema(
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         CREATE TABLE signups (id int PRIMARY KEY, note text);",
    )
    .await;
    let receiver = Receiver::start().await;
    // One config per shard: its own slot, publication and table.
    let shard = |table: &str| {
        let own = format!("{}_{table}", db.name);
        db.configure()
            .slot(&own)
            .publication(&own)
            .subscription(subscription(table, &receiver.url(&format!("/{table}"))).tables(&[table]))
            .build()
    };
    let orders_slot = format!("{}_orders", db.name);
    let signups_slot = format!("{}_signups", db.name);
    let orders = Walhook::start(shard("orders"));
    let signups = Walhook::start(shard("signups"));
    db.wait_slot_streamed(&orders_slot).await;
    db.wait_slot_streamed(&signups_slot).await;

    let insert = |table: &'static str, from: i32, to: i32| {
        let client = &db.client;
        async move {
            client
                .batch_execute(&format!(
                    "INSERT INTO {table} SELECT g, 'x' FROM generate_series({from}, {to}) g"
                ))
                .await
                .unwrap();
        }
    };
    // Row ids delivered to `path`, sorted (lanes interleave keys).
    let delivered_to = |path: &str| -> Vec<i64> {
        let mut ids: Vec<i64> = receiver
            .delivered_to(path)
            .iter()
            .map(|event| event["record"]["id"].as_i64().unwrap())
            .collect();
        ids.sort_unstable();
        ids
    };
    insert("orders", 1, 50).await;
    insert("signups", 1, 30).await;
    receiver
        .wait_for_delivered(80, Duration::from_secs(30))
        .await;
    // Each shard sends its own table only, every row once.
    assert_eq!(delivered_to("/orders"), (1..=50).collect::<Vec<_>>());
    assert_eq!(delivered_to("/signups"), (1..=30).collect::<Vec<_>>());

    // With the orders shard stopped, the signups shard goes on and its slot
    // moves on; the orders slot keeps its place for when it comes back.
    orders.stop().await.unwrap();
    let orders_held = db.confirmed_flush_of(&orders_slot).await.unwrap();
    insert("orders", 51, 60).await;
    insert("signups", 31, 40).await;
    // The confirmed position cannot pass an unresolved transaction: reaching
    // the WAL written so far means rows 31-40 were delivered and confirmed.
    let signups_written = db.current_wal().await;
    receiver
        .wait_for_delivered(90, Duration::from_secs(30))
        .await;
    assert_eq!(delivered_to("/signups"), (1..=40).collect::<Vec<_>>());
    assert_eq!(
        delivered_to("/orders").len(),
        50,
        "the stopped shard sent nothing"
    );
    // walhook confirms on its next progress report.
    wait_until(
        "the signups slot to confirm its new rows, past the stopped orders slot",
        Duration::from_secs(30),
        || async {
            db.confirmed_flush_of(&signups_slot)
                .await
                .is_some_and(|confirmed| confirmed >= signups_written)
        },
    )
    .await;
    assert!(signups_written > orders_held);
    assert_eq!(db.confirmed_flush_of(&orders_slot).await, Some(orders_held));

    // Back again: the orders shard sends what it missed, from its own slot.
    let orders = Walhook::start(shard("orders"));
    receiver
        .wait_for_delivered(100, Duration::from_secs(30))
        .await;
    assert_eq!(delivered_to("/orders"), (1..=60).collect::<Vec<_>>());
    orders.stop().await.unwrap();
    signups.stop().await.unwrap();
}
