//! The backlog at its edges, each a scenario that once broke it: a restart
//! or a reconnect while a slow subscription is in backlog mode keeps key
//! order (changes the slot sends again are stored before the drain reads
//! past them), a probe never sends an event that must be parked, a database
//! without the backlog table keeps retrying in place, and a stop right after
//! a circuit opened does not wait out the shutdown grace.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::backlog::{ITEMS, change_of, configure, items};
use crate::support::config::subscription;
use crate::support::receiver::Receiver;
use crate::support::{TestDb, Walhook, WalhookBinary, wait_until};

/// Rows whose versions first *arrived* (answered or not) out of commit
/// order: (row, versions in first-arrival order).
fn reordered_rows(events: &[Value]) -> Vec<(i64, Vec<i64>)> {
    let mut order: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for event in events {
        let (row, version) = change_of(event);
        let seen = order.entry(row).or_default();
        if !seen.contains(&version) {
            seen.push(version);
        }
    }
    order
        .into_iter()
        .filter(|(_, seen)| seen.windows(2).any(|pair| pair[0] > pair[1]))
        .collect()
}

async fn wait_for_distinct(
    receiver: &Receiver,
    changes: usize,
    deadline: Duration,
    log: impl Fn() -> String,
) {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let distinct: BTreeSet<(i64, i64)> = receiver.delivered().iter().map(change_of).collect();
        if distinct.len() >= changes {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "only {} of {changes} changes arrived; log:\n{}",
            distinct.len(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the backlog of `subscription` holds more than `more_than`
/// rows and has not changed for a second.
async fn wait_for_stable_backlog(db: &TestDb, subscription: &str, more_than: i64) -> i64 {
    let mut last = -1;
    let mut stable_since = tokio::time::Instant::now();
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = db.backlog_count(subscription).await;
        if now != last {
            last = now;
            stable_since = tokio::time::Instant::now();
        } else if now > more_than && stable_since.elapsed() >= Duration::from_secs(1) {
            return now;
        }
        assert!(tokio::time::Instant::now() < until, "backlog at {now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const ROWS: i64 = 2000;
/// About 2.3 kB a payload: the 4 MiB budget holds ~1,600 of them, so the
/// burst of inserts overflows it (slow backlog mode), and every update
/// after it goes to the backlog.
const NOTE: usize = 2000;

/// A slow (not failing) receiver: the inserts' head waits in the lanes, the
/// rest and every update in the backlog.
async fn slow_backlog(db: &TestDb, receiver: &Receiver) -> i64 {
    db.client
        .batch_execute(&format!(
            "INSERT INTO items SELECT g, 0, repeat('x', {NOTE}) FROM generate_series(1, {ROWS}) g"
        ))
        .await
        .unwrap();
    db.client
        .batch_execute("UPDATE items SET version = 1")
        .await
        .unwrap();
    let stored = wait_for_stable_backlog(db, "slow", ROWS).await;
    eprintln!(
        "backlog holds {stored} rows; {} requests arrived so far",
        receiver.arrivals()
    );
    stored
}

/// Slow-mode backlog, then walhook is killed (-9) and started again with
/// the receiver fast: the inserts that waited in the lanes come again from
/// the slot and are stored *behind* the updates the drainer already read,
/// so a row's update reaches the receiver before its insert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_slow_backlog_mode_keeps_key_order() {
    let db = TestDb::with_schema(ITEMS).await;
    let receiver = Receiver::start().await;
    receiver.delay_responses(Duration::from_secs(5));
    let binary = WalhookBinary::new(
        &configure(&db)
            .subscription(items("slow", &receiver.url("/slow")))
            .text(),
    );
    let mut walhook = binary.spawn_run();
    db.wait_slot_active().await;
    slow_backlog(&db, &receiver).await;
    walhook.kill().await.unwrap();

    receiver.delay_responses(Duration::ZERO);
    let mut walhook = binary.spawn_run();
    wait_for_distinct(
        &receiver,
        2 * ROWS as usize,
        Duration::from_secs(90),
        || binary.log(),
    )
    .await;
    let reordered = reordered_rows(&receiver.arrived_events());
    walhook.kill().await.unwrap();
    assert!(
        reordered.is_empty(),
        "{} rows got their update before their insert, e.g. {:?}",
        reordered.len(),
        &reordered[..reordered.len().min(5)]
    );
}

/// The same across a reconnection of the replication stream (the walsender
/// is terminated): Delivery is rebuilt, the lanes' events come again from
/// the slot, and the new drainer reads the stored updates first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_in_slow_backlog_mode_keeps_key_order() {
    let db = TestDb::with_schema(ITEMS).await;
    let receiver = Receiver::start().await;
    receiver.delay_responses(Duration::from_secs(5));
    let walhook = Walhook::start(
        configure(&db)
            .subscription(items("slow", &receiver.url("/slow")))
            .build(),
    );
    db.wait_slot_active().await;
    slow_backlog(&db, &receiver).await;
    receiver.delay_responses(Duration::ZERO);
    db.client
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots \
             WHERE slot_name = '{}' AND active_pid IS NOT NULL",
            db.name
        ))
        .await
        .unwrap();
    wait_for_distinct(
        &receiver,
        2 * ROWS as usize,
        Duration::from_secs(90),
        String::new,
    )
    .await;
    let reordered = reordered_rows(&receiver.arrived_events());
    walhook.stop().await.unwrap();
    assert!(
        reordered.is_empty(),
        "{} rows got their update before their insert, e.g. {:?}",
        reordered.len(),
        &reordered[..reordered.len().min(5)]
    );
}

/// A change whose filter cannot be evaluated is parked as a dead letter at
/// its turn, never sent — also when it is the oldest event of a backlog
/// whose circuit is open, where the probe would take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_never_sends_an_event_that_must_be_parked() {
    let db =
        TestDb::with_schema("CREATE TABLE orders (id int PRIMARY KEY, status text, note text)")
            .await;
    let receiver = Receiver::start().await;
    receiver.respond_with(503);
    let walhook = Walhook::start(
        configure(&db)
            .subscription(
                subscription("by-note", &receiver.url("/by-note"))
                    .tables(&["orders"])
                    .events(&["insert"])
                    .filter("note = 'x'"),
            )
            .build(),
    );
    db.wait_slot_active().await;
    // Row 1 fails three times: the circuit opens and it waits in the backlog.
    db.client
        .batch_execute("INSERT INTO orders VALUES (1, 'a', 'x')")
        .await
        .unwrap();
    wait_until("row 1 in the backlog", Duration::from_secs(30), || async {
        db.backlog_count("by-note").await == 1
    })
    .await;
    // The filter's column goes: row 3 cannot be judged and must be parked.
    db.client
        .batch_execute("ALTER TABLE orders DROP COLUMN note; INSERT INTO orders VALUES (3, 'a');")
        .await
        .unwrap();
    wait_until("row 3 in the backlog", Duration::from_secs(30), || async {
        db.backlog_count("by-note").await == 2
    })
    .await;
    let parked: bool = db
        .client
        .query_one(
            "SELECT park_reason IS NOT NULL FROM walhook.backlog \
             WHERE subscription = 'by-note' AND payload->'record'->>'id' = '3'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(parked, "row 3 is stored with its park reason");
    // An operator purges the old event (`walhook backlog purge`): row 3 is
    // now the oldest, and the next probe takes it.
    db.client
        .batch_execute(
            "DELETE FROM walhook.backlog WHERE subscription = 'by-note' \
             AND payload->'record'->>'id' = '1'",
        )
        .await
        .unwrap();
    receiver.respond_with(200);
    wait_until("the backlog to drain", Duration::from_secs(30), || async {
        db.backlog_count("by-note").await == 0
    })
    .await;
    // A row leaves the backlog only after its event was sent or parked, so
    // whatever was sent has arrived by now.
    let sent: Vec<Value> = receiver
        .arrived_events()
        .into_iter()
        .filter(|event| event["record"]["id"] == 3)
        .collect();
    let letters: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM walhook.dead_letters WHERE subscription = 'by-note' \
             AND payload->'record'->>'id' = '3'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    walhook.stop().await.unwrap();
    assert!(
        sent.is_empty(),
        "row 3 (filter not evaluable) was sent {} times; dead letters for it: {letters}",
        sent.len()
    );
    assert_eq!(letters, 1, "row 3 is parked as a dead letter");
}

/// Without a backlog table (a schema from before it) there is nowhere for
/// a failing endpoint's events to wait: the circuit never opens, the mode
/// stays `live` and the lanes keep retrying in place, as before the
/// backlog existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_backlog_the_circuit_stays_closed_and_retries_go_on() {
    use crate::support::{free_port, get, labeled_sample};
    let db = TestDb::with_schema(ITEMS).await;
    let receiver = Receiver::start().await;
    // First run: setup creates the slot, publication and schema.
    let first = Walhook::start(
        configure(&db)
            .subscription(items("rows", &receiver.url("/rows")))
            .build(),
    );
    db.wait_slot_active().await;
    first.stop().await.unwrap();
    db.client
        .batch_execute("DROP TABLE walhook.backlog")
        .await
        .unwrap();

    receiver.respond_with(503);
    let port = free_port();
    let walhook = Walhook::start(
        configure(&db)
            .source("auto_setup", "false")
            .delivery("backoff", r#"{ initial = "10ms", max = "50ms" }"#)
            .delivery("max_attempts", "1000")
            .admin(&format!("127.0.0.1:{port}"))
            .subscription(items("rows", &receiver.url("/rows")))
            .build(),
    );
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items VALUES (1, 0, 'x')")
        .await
        .unwrap();
    let mode = |metrics: &str, mode: &str| {
        labeled_sample(
            metrics,
            "walhook_subscription_mode",
            &[("subscription", "rows"), ("mode", mode)],
        )
    };
    // Far more failures than the breaker's 3: it would have opened.
    receiver
        .wait_for_requests(20, Duration::from_secs(30))
        .await;
    let metrics = get(&format!("http://127.0.0.1:{port}/metrics")).await.1;
    assert_eq!(mode(&metrics, "live"), Some(1.0), "{metrics}");
    assert_ne!(mode(&metrics, "circuit_open"), Some(1.0));
    receiver.respond_with(200);
    receiver
        .wait_for_delivered_count(1, Duration::from_secs(30))
        .await;
    walhook.stop().await.unwrap();
    assert_eq!(db.dead_letter_count().await, 0);
}

/// A graceful stop right after the circuit opened: the lane that opened it
/// waits for the reader to switch to backlog mode (it never will, it has
/// stopped), so the stop takes the whole shutdown grace instead of storing
/// the event in the backlog at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_right_after_the_circuit_opened_does_not_wait_out_the_grace() {
    let db = TestDb::with_schema(ITEMS).await;
    let receiver = Receiver::start().await;
    receiver.respond_with(503);
    let walhook = Walhook::start(
        configure(&db)
            .delivery("shutdown_grace", "\"8s\"")
            .subscription(items("rows", &receiver.url("/rows")))
            .build(),
    );
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items VALUES (1, 0, 'x')")
        .await
        .unwrap();
    // The third failure opens the circuit.
    receiver.wait_for_requests(3, Duration::from_secs(30)).await;
    let started = std::time::Instant::now();
    walhook.stop().await.unwrap();
    let took = started.elapsed();
    let stored = db.backlog_count("rows").await;
    assert!(
        took < Duration::from_secs(4),
        "the stop took {took:?} (backlog rows: {stored})"
    );
}
