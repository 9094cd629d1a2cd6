//! Backfills against a real PostgreSQL and receiver: the rows a table
//! already has arrive as READ events rendered like live ones; while other
//! sessions update, delete and insert throughout, and the daemon is killed
//! with SIGKILL mid-way and restarted, every key's last event is its final
//! row (or its DELETE), and no row that stayed was left out; a filter
//! narrows a backfill as it narrows inserts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::support::config::{Subscription, subscription};
use crate::support::receiver::Receiver;
use crate::support::{TestDb, Walhook, WalhookBinary, free_port, get, labeled_sample, wait_until};

/// `flag`, `grade` and `origin` are types whose cast to text is not their
/// output (`true`, unpadded, with a netmask): rows must be read as printed.
const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, version int NOT NULL, \
     note text, at timestamptz, flag bool DEFAULT true, grade char(4) DEFAULT 'ab', \
     origin inet DEFAULT '10.0.0.1')";

fn items(name: &str, receiver: &Receiver) -> Subscription {
    subscription(name, &receiver.url(&format!("/{name}")))
        .tables(&["items"])
        .ordering("key")
}

/// Fills `items` with rows `1..=rows`.
async fn fill(db: &TestDb, rows: i64) {
    db.client
        .batch_execute(&format!(
            "INSERT INTO items SELECT g, 0, 'row ' || g, \
                 timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' \
             FROM generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
}

/// Records a backfill request as `walhook backfill` does; returns its id.
async fn request(db: &TestDb, subscription: &str, condition: Option<&str>, chunk: i32) -> i64 {
    db.client
        .query_one(
            "INSERT INTO walhook.backfills (subscription, table_name, condition, chunk_rows) \
             VALUES ($1, 'public.items', $2, $3) RETURNING id",
            &[&subscription, &condition, &chunk],
        )
        .await
        .unwrap()
        .get(0)
}

async fn state(db: &TestDb, id: i64) -> (String, i64) {
    let row = db
        .client
        .query_one(
            "SELECT state, rows_sent FROM walhook.backfills WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// `to_jsonb` of every row of `items`, by id.
async fn table_rows(db: &TestDb) -> BTreeMap<i64, Value> {
    db.client
        .query("SELECT id::int8, to_jsonb(items)::text FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let json: String = row.get(1);
            (row.get(0), serde_json::from_str(&json).unwrap())
        })
        .collect()
}

/// Each key's last event, in arrival order: `Some(record)`, or `None` for
/// a DELETE.
fn last_events(events: &[Value]) -> BTreeMap<i64, Option<Value>> {
    let mut last = BTreeMap::new();
    for event in events {
        let deleted = event["type"] == "DELETE";
        let row = if deleted {
            &event["old_record"]
        } else {
            &event["record"]
        };
        let Some(id) = row["id"].as_i64() else {
            continue;
        };
        last.insert(id, (!deleted).then(|| event["record"].clone()));
    }
    last
}

/// What differs between the table and the last events (empty: nothing).
fn mismatches(table: &BTreeMap<i64, Value>, last: &BTreeMap<i64, Option<Value>>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (id, row) in table {
        match last.get(id) {
            Some(Some(record)) if record == row => {}
            other => wrong.push(format!("key {id}: table has {row}, last event {other:?}")),
        }
    }
    for (id, event) in last {
        if !table.contains_key(id) && event.is_some() {
            wrong.push(format!(
                "key {id}: deleted, but its last event is {event:?}"
            ));
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_rows_arrive_as_read_events_like_inserts() {
    const ROWS: i64 = 2_500;
    let db = TestDb::with_schema(ITEMS).await;
    fill(&db, ROWS).await;
    let receiver = Receiver::start().await;
    let port = free_port();
    let config = db
        .configure()
        .admin(&format!("127.0.0.1:{port}"))
        .subscription(items("crm", &receiver));
    let walhook = Walhook::start(config.build());
    db.wait_slot_active().await;
    let id = request(&db, "crm", None, 1_000).await;
    receiver
        .wait_for_delivered_count(ROWS as usize, Duration::from_secs(60))
        .await;
    wait_until(
        "the backfill to be done",
        Duration::from_secs(30),
        || async { state(&db, id).await == ("done".to_owned(), ROWS) },
    )
    .await;
    let events = receiver.delivered();
    assert_eq!(events.len(), ROWS as usize, "each row once");
    let table = table_rows(&db).await;
    for event in &events {
        assert_eq!(event["type"], "READ", "{event}");
        assert_eq!(event["schema"], "public");
        assert_eq!(event["table"], "items");
        assert_eq!(event["subscription"], "crm");
        assert!(event["old_record"].is_null(), "{event}");
        assert!(event["changed_columns"].is_null(), "{event}");
        assert_eq!(event["source"]["backfill"], id, "{event}");
        let row_id = event["record"]["id"].as_i64().unwrap();
        assert_eq!(event["record"], table[&row_id], "as to_jsonb renders it");
    }
    let (status, metrics) = get(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(
        labeled_sample(
            &metrics,
            "walhook_backfill_rows_total",
            &[("subscription", "crm"), ("table", "public.items")]
        ),
        Some(ROWS as f64),
        "{metrics}"
    );
    walhook.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_and_a_condition_narrow_the_backfill() {
    let db = TestDb::with_schema(ITEMS).await;
    fill(&db, 300).await;
    let receiver = Receiver::start().await;
    // The subscription takes ids above 40; the request asks for ids up to
    // 100.
    let config = db.config(items("some", &receiver).filter("id > 40"));
    let walhook = Walhook::start(config);
    db.wait_slot_active().await;
    let id = request(&db, "some", Some("id <= 100"), 30).await;
    wait_until(
        "the backfill to be done",
        Duration::from_secs(60),
        || async { state(&db, id).await.0 == "done" },
    )
    .await;
    receiver
        .wait_for_delivered_count(60, Duration::from_secs(30))
        .await;
    let mut ids: Vec<i64> = receiver
        .delivered()
        .iter()
        .map(|event| event["record"]["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (41..=100).collect::<Vec<_>>());
    walhook.stop().await.unwrap();
}

/// The rows of the big backfill: the 100,000, unless
/// `WALHOOK_TEST_BACKFILL_ROWS` says fewer (CI's runs on the other
/// PostgreSQL versions).
fn backfill_rows() -> i64 {
    std::env::var("WALHOOK_TEST_BACKFILL_ROWS")
        .ok()
        .and_then(|rows| rows.parse().ok())
        .unwrap_or(100_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_backfill_and_a_sigkill_leave_every_key_at_its_final_row() {
    let rows = backfill_rows();
    let db = TestDb::with_schema(ITEMS).await;
    fill(&db, rows).await;
    let receiver = Receiver::start().await;
    // Batches, as a receiver of many rows would take them; per key, the
    // events of a batch keep their order.
    let config = db.config_text(items("crm", &receiver).with("batch", "{ max_events = 100 }"));
    let binary = WalhookBinary::new(&config);
    let mut daemon = binary.spawn_run();
    db.wait_slot_active().await;
    let started = std::time::Instant::now();
    let id = request(&db, "crm", None, 2_000).await;

    // Another session changes rows throughout: updates, deletes, inserts
    // of new keys, spread over the whole key range.
    let writer_db = crate::support::connect(&db.url).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let writer_stop = stop.clone();
    let writer = tokio::spawn(async move {
        let mut round: i64 = 0;
        while !writer_stop.is_cancelled() && round < 50_000 {
            round += 1;
            let key = (round * 7919) % rows + 1;
            let statement = match round % 10 {
                0..=5 => format!("UPDATE items SET version = version + 1 WHERE id = {key}"),
                6 | 7 => format!("DELETE FROM items WHERE id = {key}"),
                _ => format!(
                    "INSERT INTO items VALUES ({}, 0, 'new', now()) ON CONFLICT (id) DO UPDATE \
                     SET version = items.version + 1",
                    rows + round
                ),
            };
            writer_db.batch_execute(&statement).await.unwrap();
        }
        round
    });

    // Killed mid-way, without a chance to say anything, then started again.
    wait_until(
        "the backfill to be under way",
        Duration::from_secs(60),
        || async { state(&db, id).await.1 >= rows / 4 },
    )
    .await;
    eprintln!("TIMING killed at {:?}", started.elapsed());
    daemon.kill().await.unwrap();
    let (_, sent_before) = state(&db, id).await;
    assert!(sent_before < rows, "killed before the end: {sent_before}");
    let daemon_again = binary.spawn_run();
    wait_until(
        "the backfill to be done",
        Duration::from_secs(120),
        || async { state(&db, id).await.0 == "done" },
    )
    .await;
    eprintln!("TIMING done at {:?}", started.elapsed());
    stop.cancel();
    let rounds = writer.await.unwrap();
    eprintln!("TIMING writer rounds {rounds}");

    // Once the stream has caught up, every key's last event is its row.
    let table = table_rows(&db).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let wrong = mismatches(&table, &last_events(&receiver.delivered()));
        if wrong.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} keys differ, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("TIMING consistent at {:?}", started.elapsed());
    drop(daemon_again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_cancelled_while_it_runs_stops_after_its_chunk_in_flight() {
    let db = TestDb::with_schema(ITEMS).await;
    fill(&db, 1_000).await;
    let receiver = Receiver::start().await;
    // The first chunk's events wait at the receiver while the operator
    // cancels.
    receiver.hold();
    let config = items("crm", &receiver);
    let binary = WalhookBinary::new(&db.config_text(config.clone()));
    let walhook = Walhook::start(db.config(config));
    db.wait_slot_active().await;
    let id = request(&db, "crm", None, 100).await;
    receiver.wait_for_arrivals(1, Duration::from_secs(30)).await;
    let cancelled = binary
        .command(&["backfill", "--cancel", &id.to_string()])
        .await;
    assert!(cancelled.status.success(), "{cancelled:?}");
    receiver.release();

    // The chunk in flight is delivered; nothing after it is read.
    wait_until(
        "the first chunk to arrive",
        Duration::from_secs(30),
        || async { receiver.delivered_count() >= 100 },
    )
    .await;
    // The worker takes one backfill at a time, in id order: once a second
    // (empty) one is done, it is past the cancelled one for good.
    let next = request(&db, "crm", Some("id > 1000000"), 100).await;
    wait_until(
        "the next backfill to be done",
        Duration::from_secs(30),
        || async { state(&db, next).await.0 == "done" },
    )
    .await;
    assert_eq!(receiver.delivered_count(), 100, "read on after the cancel");
    assert_eq!(state(&db, id).await.0, "cancelled");
    walhook.stop().await.unwrap();
}
