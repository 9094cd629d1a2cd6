//! One endpoint down never holds back the others, nor the slot. A
//! subscription whose endpoint keeps failing (its circuit opens), which is
//! paused, or whose memory budget is full keeps its events in
//! `walhook.backlog`: the slot's confirmed position moves on and the other
//! subscriptions keep receiving. Once the endpoint answers again (or the
//! subscription is resumed) the backlog drains with the ids, bodies and
//! per-key order the events would have had live, and the subscription goes
//! back to live delivery. A `kill -9` in backlog mode or mid-drain loses
//! nothing; a slow receiver does not slow a fast one; only a poison event
//! becomes a dead letter; `/metrics`, `/status` and `walhook status` show
//! each subscription's mode and backlog.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use walhook::lsn::Lsn;

use crate::support::config::{Subscription, TestConfig, subscription};
use crate::support::receiver::{Receiver, RefusingPort};
use crate::support::{
    TestDb, Walhook, WalhookBinary, free_port, get, labeled_sample, source_lsn, stderr, stdout,
    wait_until,
};

/// The circuit opens after 3 failed requests in a row and is probed every
/// 500 ms, so the tests see it open and close quickly.
pub(crate) const BREAKER: &str = r#"{ failures = 3, window = "30s", probe_interval = "500ms" }"#;

/// `note` pads the payloads, so that a burst can outgrow a subscription's
/// 4 MiB budget.
pub(crate) const ITEMS: &str =
    "CREATE TABLE items (id int PRIMARY KEY, version int NOT NULL, note text NOT NULL)";

/// Inserts and updates of `items`, in order per key.
pub(crate) fn items(name: &str, url: &str) -> Subscription {
    subscription(name, url)
        .tables(&["items"])
        .events(&["insert", "update"])
        .ordering("key")
}

/// The test config with the quick breaker (and the default
/// `max_attempts`: an outage must not use it up into dead letters).
pub(crate) fn configure(db: &TestDb) -> TestConfig {
    db.configure().delivery("breaker", BREAKER)
}

/// One transaction: rows `from..=to` at version 0, each with a note of
/// `note` characters. Row `g` is change `g - from` of the transaction.
async fn insert_burst(db: &TestDb, from: i64, to: i64, note: usize) {
    db.client
        .batch_execute(&format!(
            "INSERT INTO items SELECT g, 0, repeat('x', {note}) \
             FROM generate_series({from}, {to}) g"
        ))
        .await
        .unwrap();
}

/// One transaction: rows `from..=to` to the next version.
async fn update_rows(db: &TestDb, from: i64, to: i64) {
    db.client
        .batch_execute(&format!(
            "UPDATE items SET version = version + 1 WHERE id BETWEEN {from} AND {to}"
        ))
        .await
        .unwrap();
}

/// Rows `from..=to` written live: transactions of `per_transaction` rows,
/// 10 ms apart.
async fn insert_live(db: &TestDb, from: i64, to: i64, per_transaction: i64) {
    for start in (from..=to).step_by(per_transaction as usize) {
        let end = (start + per_transaction - 1).min(to);
        db.client
            .batch_execute(&format!(
                "INSERT INTO items SELECT g, 0, 'live ' || g FROM generate_series({start}, {end}) g"
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the slot's confirmed position is at or past `position`.
async fn wait_for_slot_past(db: &TestDb, what: &str, position: Lsn, deadline: Duration) {
    wait_until(what, deadline, || async {
        db.confirmed_flush().await.unwrap() >= position
    })
    .await;
}

/// (row, version) of an event of `items`.
pub(crate) fn change_of(event: &Value) -> (i64, i64) {
    let record = &event["record"];
    let row = record["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("record.id in {event}"));
    let version = record["version"]
        .as_i64()
        .unwrap_or_else(|| panic!("record.version in {event}"));
    (row, version)
}

/// How many distinct changes (row, version) are among `events`.
fn distinct_changes(events: &[Value]) -> usize {
    events.iter().map(change_of).collect::<BTreeSet<_>>().len()
}

/// Waits until `changes` distinct changes were answered 2xx (duplicates do
/// not count); `log` is shown when the deadline passes.
async fn wait_for_changes(
    receiver: &Receiver,
    changes: usize,
    deadline: Duration,
    log: impl Fn() -> String,
) {
    // Counting is cheap, parsing every body is not: wait for at least as
    // many more deliveries as changes are missing before parsing again.
    let mut needed = changes;
    loop {
        let waited = tokio::time::timeout(
            deadline,
            receiver.wait_for_delivered_count(needed, Duration::from_secs(3600)),
        )
        .await;
        let count = receiver.delivered_count();
        let arrived = distinct_changes(&receiver.delivered());
        if arrived >= changes {
            return;
        }
        assert!(
            waited.is_ok(),
            "only {arrived} of {changes} changes arrived within {deadline:?}; log:\n{}",
            log()
        );
        needed = count + (changes - arrived);
    }
}

/// What a subscription received, checked as a receiver would: every row
/// `1..=rows` arrived with exactly the versions `versions(row)`, which
/// first arrived in that order (a duplicate may repeat one, never reorder
/// them); each change came with one id, and no id names two changes.
/// Returns the number of duplicate deliveries.
fn assert_every_change_in_key_order(
    events: &[Value],
    rows: i64,
    versions: impl Fn(i64) -> Vec<i64>,
) -> usize {
    let mut order: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut ids: BTreeMap<(i64, i64), BTreeSet<String>> = BTreeMap::new();
    for event in events {
        let (row, version) = change_of(event);
        let seen = order.entry(row).or_default();
        if !seen.contains(&version) {
            seen.push(version);
        }
        let id = event["id"]
            .as_str()
            .unwrap_or_else(|| panic!("id in {event}"));
        ids.entry((row, version)).or_default().insert(id.to_owned());
    }
    let missing: Vec<i64> = (1..=rows).filter(|row| !order.contains_key(row)).collect();
    assert!(
        missing.is_empty(),
        "{} of {rows} rows never arrived, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(order.len() as i64, rows, "rows beyond 1..={rows} arrived");
    for (row, seen) in &order {
        assert_eq!(
            seen,
            &versions(*row),
            "row {row}: versions missing or out of commit order"
        );
    }
    let mut owners: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for (change, change_ids) in &ids {
        assert_eq!(
            change_ids.len(),
            1,
            "row {} version {} arrived with different ids: {change_ids:?}",
            change.0,
            change.1
        );
        for id in change_ids {
            if let Some(other) = owners.insert(id, *change) {
                panic!("{id} names two changes: (row, version) {other:?} and {change:?}");
            }
        }
    }
    let duplicates = events.len() - ids.len();
    eprintln!(
        "rows {rows}, changes {}, deliveries {}, duplicates {duplicates}",
        ids.len(),
        events.len()
    );
    duplicates
}

/// The inserts of `INSERT … generate_series(from, to)` carry the ids walhook
/// gives those changes live: derived from the subscription, the
/// transaction's commit LSN and the change's position in it (row `g` is
/// change `g - from`).
fn assert_insert_ids_are_the_live_ids(events: &[Value], subscription: &str, from: i64, to: i64) {
    let mut checked = 0;
    for event in events {
        let (row, version) = change_of(event);
        if event["type"] != "INSERT" || version != 0 || !(from..=to).contains(&row) {
            continue;
        }
        let live = walhook::event::event_id(
            subscription,
            source_lsn(event, "commit_lsn"),
            (row - from) as u32,
        );
        assert_eq!(
            event["id"].as_str(),
            Some(live.as_str()),
            "row {row} of {subscription}: the id of that change live"
        );
        checked += 1;
    }
    assert!(checked >= (from..=to).count(), "every insert was checked");
}

/// Each request answered 2xx carried its event's id as `webhook-id`.
fn assert_webhook_ids_are_the_event_ids(receiver: &Receiver) {
    for request in receiver.requests() {
        if !(200..300).contains(&request.status) {
            continue;
        }
        let event = request.json();
        assert_eq!(
            request.headers.get("webhook-id").map(String::as_str),
            event["id"].as_str(),
            "webhook-id of {event}"
        );
    }
}

/// A payload without what differs from one subscription to another.
fn without_subscription(event: &Value) -> Value {
    let mut event = event.clone();
    let fields = event.as_object_mut().expect("a JSON object");
    fields.remove("id");
    fields.remove("subscription");
    event
}

/// Every change of `events` came with the body (`record`, `source`, …) that
/// `reference`, another subscription of the same rows, got for it.
fn assert_same_bodies(events: &[Value], reference: &[Value]) {
    let reference: BTreeMap<(i64, i64), Value> = reference
        .iter()
        .map(|event| (change_of(event), without_subscription(event)))
        .collect();
    for event in events {
        let change = change_of(event);
        assert_eq!(
            Some(&without_subscription(event)),
            reference.get(&change),
            "(row, version) {change:?}: the body the other subscription got live"
        );
    }
}

/// The text of `http://127.0.0.1:{port}/metrics` (empty while nothing
/// answers).
async fn metrics(port: u16) -> String {
    get(&format!("http://127.0.0.1:{port}/metrics")).await.1
}

/// A per-subscription gauge, e.g. `walhook_backlog_events`.
fn gauge(metrics: &str, name: &str, subscription: &str) -> Option<f64> {
    labeled_sample(metrics, name, &[("subscription", subscription)])
}

/// `walhook_subscription_mode{subscription, mode}`: 1 for the current mode.
fn mode_gauge(metrics: &str, subscription: &str, mode: &str) -> Option<f64> {
    labeled_sample(
        metrics,
        "walhook_subscription_mode",
        &[("subscription", subscription), ("mode", mode)],
    )
}

/// Waits until `subscription`'s mode gauge says `mode`.
async fn wait_for_mode(port: u16, subscription: &str, mode: &str, deadline: Duration) {
    wait_until(
        &format!("{subscription} to be in mode {mode}"),
        deadline,
        || async { mode_gauge(&metrics(port).await, subscription, mode) == Some(1.0) },
    )
    .await;
}

/// `subscriptions[]` entry `name` of a status report.
fn subscription_report<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["subscriptions"]
        .as_array()
        .unwrap_or_else(|| panic!("subscriptions in {report}"))
        .iter()
        .find(|entry| entry["name"] == name)
        .unwrap_or_else(|| panic!("no subscription {name} in {report}"))
}

/// The line of `walhook status`'s table that starts with `subscription`.
fn status_line<'a>(table: &'a str, subscription: &str) -> &'a str {
    table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(subscription))
        .unwrap_or_else(|| panic!("no line for {subscription} in:\n{table}"))
}

/// Runs `walhook <args> --config …`, which must succeed.
async fn walhook_command(binary: &WalhookBinary, args: &[&str]) -> std::process::Output {
    let output = binary.command(args).await;
    assert!(
        output.status.success(),
        "walhook {args:?}: {}{}",
        stdout(&output),
        stderr(&output)
    );
    output
}

/// How the endpoint of the tests' "down" subscription is down, and how it
/// comes back on the same URL.
enum Down {
    Answering503(Receiver),
    Refusing(RefusingPort),
}

impl Down {
    async fn start(refuse_connections: bool) -> Down {
        if refuse_connections {
            Down::Refusing(RefusingPort::bind())
        } else {
            let receiver = Receiver::start().await;
            receiver.respond_with(503);
            Down::Answering503(receiver)
        }
    }

    fn url(&self) -> String {
        match self {
            Down::Answering503(receiver) => receiver.url("/down"),
            Down::Refusing(port) => port.url("/down"),
        }
    }

    /// Nothing was delivered while it was down.
    fn assert_nothing_delivered(&self) {
        if let Down::Answering503(receiver) = self {
            assert_eq!(receiver.delivered_count(), 0, "the endpoint is still down");
        }
    }

    async fn come_back(self) -> Receiver {
        match self {
            Down::Answering503(receiver) => {
                receiver.respond_with(200);
                receiver
            }
            Down::Refusing(port) => port.open().await,
        }
    }
}

/// Two subscriptions of `items`, one whose endpoint is down: the healthy
/// one gets a burst of `rows` inserts and `updated` updates (more than the
/// other's 4 MiB budget holds when `note` is large) and rows written after
/// it; the slot moves past all of it while the other endpoint is still
/// down, its events waiting in `walhook.backlog`; nothing becomes a dead
/// letter. The endpoint comes back: every change arrives, in order per
/// key, with the id and body it would have had live; the backlog ends
/// empty and new rows go out live again.
async fn an_endpoint_that_is_down_holds_back_neither_the_others_nor_the_slot(
    refuse_connections: bool,
    rows: i64,
    updated: i64,
    note: usize,
) {
    const LIVE: i64 = 100;
    let db = TestDb::with_schema(ITEMS).await;
    let healthy = Receiver::start().await;
    let down = Down::start(refuse_connections).await;
    let walhook = Walhook::start(
        configure(&db)
            .subscription(items("down", &down.url()))
            .subscription(items("healthy", &healthy.url("/healthy")))
            .build(),
    );
    db.wait_slot_active().await;

    insert_burst(&db, 1, rows, note).await;
    update_rows(&db, 1, updated).await;
    let burst_end = db.current_wal().await;
    let burst = rows + updated;
    wait_for_changes(
        &healthy,
        burst as usize,
        Duration::from_secs(60),
        String::new,
    )
    .await;
    wait_for_slot_past(
        &db,
        "the slot to pass the burst while an endpoint is down",
        burst_end,
        Duration::from_secs(20),
    )
    .await;
    down.assert_nothing_delivered();
    // The slot passed them, so each one's row is committed.
    assert_eq!(
        db.backlog_count("down").await,
        burst,
        "every event of the endpoint that is down waits in walhook.backlog"
    );
    let distinct: i64 = db
        .client
        .query_one(
            "SELECT count(DISTINCT event_id) FROM walhook.backlog WHERE subscription = 'down'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, burst, "one row per event");
    assert_eq!(db.backlog_count("healthy").await, 0);
    assert_eq!(db.dead_letter_count().await, 0, "an outage parks nothing");

    // Rows written while it is still down: the healthy endpoint gets them,
    // the other's wait behind its backlog, and the slot passes them too.
    insert_live(&db, rows + 1, rows + LIVE, 10).await;
    let live_end = db.current_wal().await;
    wait_for_changes(
        &healthy,
        (burst + LIVE) as usize,
        Duration::from_secs(30),
        String::new,
    )
    .await;
    wait_until(
        "the live rows to join the backlog",
        Duration::from_secs(30),
        || async { db.backlog_count("down").await == burst + LIVE },
    )
    .await;
    wait_for_slot_past(
        &db,
        "the slot to pass the live rows",
        live_end,
        Duration::from_secs(20),
    )
    .await;
    down.assert_nothing_delivered();
    assert_eq!(db.dead_letter_count().await, 0, "an outage parks nothing");

    let all = rows + LIVE;
    let versions = |row: i64| {
        if row <= updated { vec![0, 1] } else { vec![0] }
    };
    let healthy_events = healthy.delivered();
    assert_every_change_in_key_order(&healthy_events, all, versions);
    assert_insert_ids_are_the_live_ids(&healthy_events, "healthy", 1, rows);

    // The endpoint comes back: the backlog drains.
    let down = down.come_back().await;
    wait_for_changes(
        &down,
        (burst + LIVE) as usize,
        Duration::from_secs(60),
        String::new,
    )
    .await;
    let events = down.delivered();
    assert_every_change_in_key_order(&events, all, versions);
    assert_insert_ids_are_the_live_ids(&events, "down", 1, rows);
    assert_same_bodies(&events, &healthy_events);
    assert_webhook_ids_are_the_event_ids(&down);
    wait_for_empty_backlog(&db, "down").await;
    assert_eq!(db.dead_letter_count().await, 0);

    // Live again: a new row goes out.
    let next = all + 1;
    insert_live(&db, next, next, 1).await;
    down.wait_for_arrival_of(
        "a row written after the drain",
        Duration::from_secs(10),
        |event| event["record"]["id"] == next,
    )
    .await;
    wait_for_changes(
        &down,
        (burst + LIVE + 1) as usize,
        Duration::from_secs(10),
        String::new,
    )
    .await;
    assert_eq!(db.backlog_count("down").await, 0);
    walhook.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_answering_503_holds_back_neither_the_others_nor_the_slot() {
    // 5,000 events of ~1 kB: more than the down subscription's 4 MiB.
    an_endpoint_that_is_down_holds_back_neither_the_others_nor_the_slot(false, 4000, 1000, 600)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_refusing_connections_holds_back_neither_the_others_nor_the_slot() {
    an_endpoint_that_is_down_holds_back_neither_the_others_nor_the_slot(true, 2000, 500, 200).await;
}

/// Waits until `subscription` has nothing left in its backlog.
async fn wait_for_empty_backlog(db: &TestDb, subscription: &str) {
    wait_until(
        "the backlog to be empty",
        Duration::from_secs(30),
        || async { db.backlog_count(subscription).await == 0 },
    )
    .await;
}

/// walhook (the binary) with subscription `rows` whose receiver answers
/// 503, after a burst of `rows` rows went into its backlog and the slot
/// passed them.
async fn backlogged_binary(rows: i64) -> (TestDb, Receiver, WalhookBinary, tokio::process::Child) {
    let db = TestDb::with_schema(ITEMS).await;
    let receiver = Receiver::start().await;
    receiver.respond_with(503);
    let binary = WalhookBinary::new(
        &configure(&db)
            .subscription(items("rows", &receiver.url("/rows")))
            .text(),
    );
    let walhook = binary.spawn_run();
    db.wait_slot_active().await;
    insert_burst(&db, 1, rows, 200).await;
    let burst_end = db.current_wal().await;
    wait_for_slot_past(
        &db,
        "the slot to pass the burst in backlog mode",
        burst_end,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(db.backlog_count("rows").await, rows, "{}", binary.log());
    (db, receiver, binary, walhook)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_in_backlog_mode_loses_nothing() {
    const ROWS: i64 = 3000;
    const UPDATED: i64 = 500;
    let (db, receiver, binary, mut walhook) = backlogged_binary(ROWS).await;
    walhook.kill().await.unwrap();

    // While walhook is dead, updates of backlogged rows wait in the slot:
    // after the restart they must come after their rows' inserts.
    update_rows(&db, 1, UPDATED).await;
    receiver.respond_with(200);
    let mut walhook = binary.spawn_run();
    wait_for_changes(
        &receiver,
        (ROWS + UPDATED) as usize,
        Duration::from_secs(60),
        || binary.log(),
    )
    .await;
    let events = receiver.delivered();
    assert_every_change_in_key_order(&events, ROWS, |row| {
        if row <= UPDATED { vec![0, 1] } else { vec![0] }
    });
    assert_insert_ids_are_the_live_ids(&events, "rows", 1, ROWS);
    assert_webhook_ids_are_the_event_ids(&receiver);
    assert_eq!(db.dead_letter_count().await, 0);
    wait_for_empty_backlog(&db, "rows").await;
    walhook.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_during_the_drain_loses_nothing_and_duplicates_keep_their_ids() {
    const ROWS: i64 = 4000;
    /// Rows near the end of the backlog, updated while it drains: their
    /// updates must wait for their inserts.
    const UPDATED_FROM: i64 = ROWS - 199;
    let (db, receiver, binary, mut walhook) = backlogged_binary(ROWS).await;

    // The receiver is back, slowly: 16 lanes × 50 ms, a drain of seconds.
    receiver.delay_responses(Duration::from_millis(50));
    receiver.respond_with(200);
    receiver
        .wait_for_delivered_count(500, Duration::from_secs(60))
        .await;
    update_rows(&db, UPDATED_FROM, ROWS).await;
    walhook.kill().await.unwrap();
    let at_kill = receiver.delivered_count();
    eprintln!("killed after {at_kill} deliveries");
    assert!(
        distinct_changes(&receiver.delivered()) < ROWS as usize,
        "killed during the drain"
    );

    receiver.delay_responses(Duration::ZERO);
    let mut walhook = binary.spawn_run();
    wait_for_changes(
        &receiver,
        (ROWS + 200) as usize,
        Duration::from_secs(60),
        || binary.log(),
    )
    .await;
    let events = receiver.delivered();
    assert_every_change_in_key_order(&events, ROWS, |row| {
        if row >= UPDATED_FROM {
            vec![0, 1]
        } else {
            vec![0]
        }
    });
    // Sent again after the kill with the ids they had before it.
    assert_insert_ids_are_the_live_ids(&events, "rows", 1, ROWS);
    assert_webhook_ids_are_the_event_ids(&receiver);
    assert_eq!(db.dead_letter_count().await, 0);
    wait_for_empty_backlog(&db, "rows").await;
    walhook.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_does_not_slow_a_fast_one() {
    // 3,000 events of ~2 kB: more than the slow subscription's 4 MiB.
    const ROWS: i64 = 3000;
    const NOTE: usize = 1500;
    let db = TestDb::with_schema(ITEMS).await;
    let slow = Receiver::start().await;
    slow.delay_responses(Duration::from_secs(2));
    let fast = Receiver::start().await;
    let walhook = Walhook::start(
        configure(&db)
            .delivery("shutdown_grace", "\"1s\"")
            .subscription(items("slow", &slow.url("/slow")))
            .subscription(items("fast", &fast.url("/fast")))
            .build(),
    );
    db.wait_slot_active().await;
    let started = Instant::now();
    insert_burst(&db, 1, ROWS, NOTE).await;
    let burst_end = db.current_wal().await;
    // 16 requests of 2 s at a time: the slow endpoint needs over six
    // minutes for these rows; the fast one must not wait for it.
    wait_for_changes(&fast, ROWS as usize, Duration::from_secs(30), String::new).await;
    eprintln!(
        "fast: {ROWS} rows in {:.1}s; slow: {} so far",
        started.elapsed().as_secs_f64(),
        slow.delivered_count()
    );
    assert_every_change_in_key_order(&fast.delivered(), ROWS, |_| vec![0]);
    assert!(
        (slow.delivered_count() as i64) < ROWS / 2,
        "the slow endpoint is slow"
    );
    // Slow, not failing: it is being served.
    slow.wait_for_delivered_count(1, Duration::from_secs(10))
        .await;

    // It speeds up: what overflowed its budget arrives too, in order.
    slow.delay_responses(Duration::ZERO);
    wait_for_changes(&slow, ROWS as usize, Duration::from_secs(60), String::new).await;
    let events = slow.delivered();
    assert_every_change_in_key_order(&events, ROWS, |_| vec![0]);
    assert_insert_ids_are_the_live_ids(&events, "slow", 1, ROWS);
    wait_for_slot_past(
        &db,
        "the slot to pass the burst",
        burst_end,
        Duration::from_secs(20),
    )
    .await;
    wait_for_empty_backlog(&db, "slow").await;
    assert_eq!(db.dead_letter_count().await, 0);
    walhook.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_keeps_a_subscriptions_events_in_the_backlog_and_resume_delivers_them_in_order() {
    const BEFORE: i64 = 100;
    const ROWS: i64 = 600;
    const UPDATED: std::ops::RangeInclusive<i64> = 101..=150;
    // Rows 101..=600 and the updates of 101..=150, written while paused.
    const WAITING: i64 = ROWS - BEFORE + 50;
    let db = TestDb::with_schema(ITEMS).await;
    let orders = Receiver::start().await;
    let audit = Receiver::start().await;
    let port = free_port();
    let binary = WalhookBinary::new(
        &configure(&db)
            .admin(&format!("127.0.0.1:{port}"))
            .subscription(items("orders", &orders.url("/orders")))
            .subscription(items("audit", &audit.url("/audit")))
            .text(),
    );
    let mut walhook = binary.spawn_run();
    db.wait_slot_active().await;
    insert_burst(&db, 1, BEFORE, 100).await;
    orders
        .wait_for_delivered_count(BEFORE as usize, Duration::from_secs(30))
        .await;
    wait_for_mode(port, "orders", "live", Duration::from_secs(10)).await;

    walhook_command(&binary, &["pause", "orders"]).await;
    // The running daemon picks it up (within about a second).
    wait_for_mode(port, "orders", "paused", Duration::from_secs(10)).await;
    let arrivals = orders.arrivals();
    insert_live(&db, BEFORE + 1, ROWS, 25).await;
    update_rows(&db, *UPDATED.start(), *UPDATED.end()).await;
    let written = db.current_wal().await;

    // The other subscription does not wait; the paused one's events wait
    // in the backlog, and the slot moves past them.
    wait_for_changes(
        &audit,
        (ROWS + 50) as usize,
        Duration::from_secs(30),
        || binary.log(),
    )
    .await;
    wait_until(
        "the paused subscription's events to be in the backlog",
        Duration::from_secs(30),
        || async { db.backlog_count("orders").await == WAITING },
    )
    .await;
    wait_for_slot_past(
        &db,
        "the slot to pass the paused subscription's events",
        written,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        orders.arrivals(),
        arrivals,
        "a paused subscription sends nothing"
    );

    let table = stdout(&walhook_command(&binary, &["status"]).await);
    let line = status_line(&table, "orders");
    assert!(line.contains("paused"), "{table}");
    assert!(
        line.split_whitespace()
            .any(|word| word == WAITING.to_string()),
        "the backlog's {WAITING} events in:\n{table}"
    );
    assert!(status_line(&table, "audit").contains("live"), "{table}");
    let report: Value =
        serde_json::from_slice(&walhook_command(&binary, &["status", "--json"]).await.stdout)
            .unwrap();
    let paused = subscription_report(&report, "orders");
    assert_eq!(paused["mode"], "paused", "{report}");
    assert_eq!(paused["backlog_events"], WAITING, "{report}");

    walhook_command(&binary, &["resume", "orders"]).await;
    wait_for_changes(
        &orders,
        (ROWS + 50) as usize,
        Duration::from_secs(60),
        || binary.log(),
    )
    .await;
    let events = orders.delivered();
    assert_every_change_in_key_order(&events, ROWS, |row| {
        if UPDATED.contains(&row) {
            vec![0, 1]
        } else {
            vec![0]
        }
    });
    assert_webhook_ids_are_the_event_ids(&orders);
    wait_for_mode(port, "orders", "live", Duration::from_secs(30)).await;
    wait_for_empty_backlog(&db, "orders").await;
    assert_eq!(db.dead_letter_count().await, 0);
    walhook.kill().await.unwrap();
}

#[tokio::test]
async fn metrics_and_status_show_each_subscriptions_mode_and_backlog() {
    // Below 1,000, so that the count reads the same with or without a
    // thousands separator.
    const ROWS: i64 = 800;
    const NOTE: usize = 100;
    let db = TestDb::with_schema(ITEMS).await;
    let down = Receiver::start().await;
    down.respond_with(503);
    let healthy = Receiver::start().await;
    let port = free_port();
    let config = configure(&db)
        .admin(&format!("127.0.0.1:{port}"))
        .subscription(items("down", &down.url("/down")))
        .subscription(items("healthy", &healthy.url("/healthy")));
    let walhook = Walhook::start(config.build());
    // For `walhook status`, which reads PostgreSQL.
    let binary = WalhookBinary::new(&config.text());
    db.wait_slot_active().await;
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    wait_until("/readyz to be ready", Duration::from_secs(30), || async {
        get(&readyz).await.0 == 200
    })
    .await;
    let before = metrics(port).await;
    for subscription in ["down", "healthy"] {
        assert_eq!(
            mode_gauge(&before, subscription, "live"),
            Some(1.0),
            "{before}"
        );
        assert_eq!(
            gauge(&before, "walhook_backlog_events", subscription),
            Some(0.0),
            "{before}"
        );
    }

    let before_burst = Instant::now();
    insert_burst(&db, 1, ROWS, NOTE).await;
    let burst_end = db.current_wal().await;
    wait_for_changes(
        &healthy,
        ROWS as usize,
        Duration::from_secs(30),
        String::new,
    )
    .await;
    wait_for_slot_past(
        &db,
        "the slot to pass the burst",
        burst_end,
        Duration::from_secs(20),
    )
    .await;
    wait_until(
        "the gauges to show the backlog and the open circuit",
        Duration::from_secs(10),
        || async {
            let now = metrics(port).await;
            gauge(&now, "walhook_backlog_events", "down") == Some(ROWS as f64)
                && mode_gauge(&now, "down", "circuit_open") == Some(1.0)
        },
    )
    .await;
    // The age may be counted in whole seconds: wait until it shows.
    wait_until(
        "the oldest backlogged event's age to show",
        Duration::from_secs(10),
        || async {
            gauge(
                &metrics(port).await,
                "walhook_backlog_oldest_seconds",
                "down",
            )
            .is_some_and(|seconds| seconds > 0.0)
        },
    )
    .await;
    let now = metrics(port).await;
    let bytes = gauge(&now, "walhook_backlog_bytes", "down").unwrap();
    assert!(
        bytes >= (ROWS as usize * NOTE) as f64,
        "{bytes} bytes for {ROWS} payloads of over {NOTE} bytes:\n{now}"
    );
    let oldest = gauge(&now, "walhook_backlog_oldest_seconds", "down").unwrap();
    // (Rounded up to a whole second at most.)
    assert!(
        oldest <= before_burst.elapsed().as_secs_f64() + 1.0,
        "oldest {oldest}s, burst {}s ago",
        before_burst.elapsed().as_secs_f64()
    );
    // One mode at a time (the others 0, or not exported).
    for mode in ["live", "backlog", "paused"] {
        assert_ne!(mode_gauge(&now, "down", mode), Some(1.0), "{mode}:\n{now}");
    }
    assert_eq!(mode_gauge(&now, "healthy", "live"), Some(1.0), "{now}");
    assert_ne!(
        mode_gauge(&now, "healthy", "circuit_open"),
        Some(1.0),
        "{now}"
    );
    assert_eq!(
        gauge(&now, "walhook_backlog_events", "healthy"),
        Some(0.0),
        "{now}"
    );
    assert_eq!(
        gauge(&now, "walhook_backlog_bytes", "healthy"),
        Some(0.0),
        "{now}"
    );

    let (status, report) = get(&format!("http://127.0.0.1:{port}/status")).await;
    assert_eq!(status, 200, "{report}");
    let report: Value = serde_json::from_str(&report).unwrap();
    let down_report = subscription_report(&report, "down");
    // The text form's spelling, or the metric label's.
    assert!(
        ["circuit open", "circuit_open"].contains(&down_report["mode"].as_str().unwrap_or("")),
        "{report}"
    );
    assert_eq!(down_report["backlog_events"], ROWS, "{report}");
    assert!(
        down_report["backlog_bytes"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
    assert!(
        down_report["backlog_oldest_seconds"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "{report}"
    );
    let healthy_report = subscription_report(&report, "healthy");
    assert_eq!(healthy_report["mode"], "live", "{report}");
    assert_eq!(healthy_report["backlog_events"], 0, "{report}");
    assert_eq!(
        get(&readyz).await.0,
        200,
        "ready while one endpoint is down"
    );

    let table = stdout(&walhook_command(&binary, &["status"]).await);
    let line = status_line(&table, "down");
    // `status` reads PostgreSQL: it names the open circuit when the daemon
    // records it there, and the backlog in any case.
    assert!(
        line.contains("circuit open") || line.contains("backlog"),
        "{table}"
    );
    assert!(
        line.split_whitespace().any(|word| word == ROWS.to_string()),
        "the backlog's {ROWS} events in:\n{table}"
    );
    assert!(status_line(&table, "healthy").contains("live"), "{table}");

    // The endpoint is back: the backlog drains and the gauges follow.
    down.respond_with(200);
    wait_for_changes(&down, ROWS as usize, Duration::from_secs(60), String::new).await;
    wait_until(
        "the gauges to show an empty backlog and live delivery",
        Duration::from_secs(30),
        || async {
            let now = metrics(port).await;
            gauge(&now, "walhook_backlog_events", "down") == Some(0.0)
                && mode_gauge(&now, "down", "live") == Some(1.0)
        },
    )
    .await;
    // /status answers are reused for a second, and the mode it reads is
    // recorded every half second: it follows within moments.
    wait_until(
        "/status to show live delivery",
        Duration::from_secs(10),
        || async {
            let (_, report) = get(&format!("http://127.0.0.1:{port}/status")).await;
            let report: Value = serde_json::from_str(&report).unwrap();
            let down = subscription_report(&report, "down");
            down["mode"] == "live" && down["backlog_events"] == 0
        },
    )
    .await;
    assert_eq!(db.dead_letter_count().await, 0);
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn a_poison_event_becomes_a_dead_letter_while_the_rest_flow_live() {
    const ROWS: i64 = 500;
    /// The inserts of these rows are refused with 422; everything else,
    /// their later updates included, is accepted.
    const POISON: [i64; 2] = [77, 377];
    let db = TestDb::with_schema(ITEMS).await;
    let receiver = Receiver::start().await;
    let poison = |event: &Value| {
        POISON.iter().any(|row| event["record"]["id"] == *row) && event["record"]["version"] == 0
    };
    receiver.respond_where(422, poison);
    let port = free_port();
    let walhook = Walhook::start(
        configure(&db)
            .admin(&format!("127.0.0.1:{port}"))
            .subscription(items("rows", &receiver.url("/rows")))
            .build(),
    );
    db.wait_slot_active().await;
    insert_live(&db, 1, ROWS, 25).await;
    // A dead-lettered change does not block its key.
    for row in POISON {
        update_rows(&db, row, row).await;
    }
    let written = db.current_wal().await;

    wait_until(
        "the poison events to be parked",
        Duration::from_secs(30),
        || async { db.dead_letter_count().await == POISON.len() as i64 },
    )
    .await;
    wait_for_changes(
        &receiver,
        ROWS as usize,
        Duration::from_secs(30),
        String::new,
    )
    .await;
    let events = receiver.delivered();
    assert_every_change_in_key_order(&events, ROWS, |row| {
        if POISON.contains(&row) {
            vec![1]
        } else {
            vec![0]
        }
    });
    let parked = db
        .client
        .query(
            "SELECT subscription, event_id, (payload->'record'->>'id')::int8, \
             (payload->'record'->>'version')::int8, last_status FROM walhook.dead_letters \
             ORDER BY 3",
            &[],
        )
        .await
        .unwrap();
    let refused: Vec<Value> = receiver
        .arrived_events()
        .into_iter()
        .filter(|event| poison(event))
        .collect();
    assert_eq!(
        refused.len(),
        POISON.len(),
        "each poison event was sent once (a 422 is not retried, nor probed)"
    );
    for (letter, row) in parked.iter().zip(POISON) {
        assert_eq!(letter.get::<_, String>(0), "rows");
        assert_eq!(letter.get::<_, i64>(2), row);
        assert_eq!(letter.get::<_, i64>(3), 0);
        assert_eq!(letter.get::<_, Option<i32>>(4), Some(422));
        let sent = refused
            .iter()
            .find(|event| event["record"]["id"] == row)
            .unwrap();
        assert_eq!(sent["id"].as_str(), Some(letter.get::<_, &str>(1)));
    }
    wait_for_slot_past(
        &db,
        "the slot to pass every row",
        written,
        Duration::from_secs(20),
    )
    .await;

    // The circuit never opened: nothing went to the backlog.
    let now = metrics(port).await;
    assert_eq!(mode_gauge(&now, "rows", "live"), Some(1.0), "{now}");
    assert_ne!(mode_gauge(&now, "rows", "circuit_open"), Some(1.0), "{now}");
    assert_eq!(
        gauge(&now, "walhook_backlog_events", "rows"),
        Some(0.0),
        "{now}"
    );
    assert_eq!(db.backlog_count("rows").await, 0);
    walhook.stop().await.unwrap();
}
