//! Receivers that misbehave: one that hangs past `delivery.timeout`, one
//! that resets every connection, one that answers 3xx, and one that is down
//! while another subscription's endpoint is healthy. Each ends in retries,
//! never a stuck pipeline; the slot stays behind the undelivered changes; and
//! once the receiver recovers every change arrives, in per-key order.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use walhook::config::Config;

use crate::support::config::{Subscription, TestConfig, subscription};
use crate::support::receiver::{Receiver, ResettingListener};
use crate::support::{TestDb, Walhook};

const KEYS: i64 = 20;
const VERSIONS: i64 = 5;

fn items(name: &str, url: &str) -> Subscription {
    subscription(name, url)
        .tables(&["items"])
        .events(&["insert", "update"])
}

/// Retries for as long as these tests take: they are about retries, not
/// dead letters.
/// Retries in place without end: no dead letters, and a circuit breaker
/// that never opens, so these tests see the retry loop itself (the breaker
/// and the backlog are tests/backlog.rs's).
fn patient(db: &TestDb) -> TestConfig {
    db.configure()
        .delivery("max_attempts", "100000")
        .delivery("breaker", r#"{ failures = 1000000, window = "1d" }"#)
}

fn patient_config(db: &TestDb, subscription: Subscription) -> Config {
    patient(db).subscription(subscription).build()
}

async fn create_table(db: &TestDb) {
    db.client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, version int NOT NULL)")
        .await
        .unwrap();
}

/// `keys` inserts at version 0, then `versions - 1` transactions that each
/// update every key to the next version.
async fn write_versions(db: &TestDb, keys: i64, versions: i64) {
    db.client
        .batch_execute(&format!(
            "INSERT INTO items SELECT g, 0 FROM generate_series(1, {keys}) g"
        ))
        .await
        .unwrap();
    for version in 1..versions {
        db.client
            .batch_execute(&format!("UPDATE items SET version = {version}"))
            .await
            .unwrap();
    }
}

/// Every (key, version) arrived, and per key the versions first arrived in
/// commit order (a retried duplicate may repeat one, never reorder).
fn assert_complete_in_key_order(events: &[Value], keys: i64, versions: i64) {
    let mut by_key: HashMap<i64, Vec<i64>> = HashMap::new();
    for event in events {
        let record = &event["record"];
        let seen = by_key.entry(record["id"].as_i64().unwrap()).or_default();
        let version = record["version"].as_i64().unwrap();
        if !seen.contains(&version) {
            seen.push(version);
        }
    }
    assert_eq!(by_key.len() as i64, keys, "every key arrived");
    for (key, seen) in &by_key {
        assert_eq!(
            seen,
            &(0..versions).collect::<Vec<_>>(),
            "key {key}: versions out of order or missing"
        );
    }
}

#[tokio::test]
async fn a_receiver_that_hangs_past_the_timeout_is_retried_until_it_answers() {
    let db = TestDb::new().await;
    create_table(&db).await;
    let receiver = Receiver::start().await;
    receiver.delay_responses(Duration::from_secs(3600));
    let walhook = Walhook::start(
        patient(&db)
            .delivery("timeout", "\"2s\"")
            .subscription(items("rows", &receiver.url("/rows")))
            .build(),
    );
    db.wait_slot_active().await;
    write_versions(&db, KEYS, VERSIONS).await;
    let written = db.current_wal().await;
    // 16 requests in flight hang; more arrivals means they timed out (2 s)
    // and were sent again.
    receiver
        .wait_for_arrivals(40, Duration::from_secs(30))
        .await;
    assert!(receiver.delivered().is_empty());
    assert!(db.confirmed_flush().await.unwrap() < written);

    receiver.delay_responses(Duration::ZERO);
    let events = receiver
        .wait_for_delivered((KEYS * VERSIONS) as usize, Duration::from_secs(60))
        .await;
    assert_complete_in_key_order(&events, KEYS, VERSIONS);
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn a_receiver_that_resets_connections_is_retried_until_it_answers() {
    let db = TestDb::new().await;
    create_table(&db).await;
    let resetting = ResettingListener::start().await;
    let addr = resetting.addr;
    let walhook = Walhook::start(patient_config(&db, items("rows", &resetting.url("/rows"))));
    db.wait_slot_active().await;
    write_versions(&db, KEYS, VERSIONS).await;
    let written = db.current_wal().await;
    crate::support::wait_until(
        "connections to be reset",
        Duration::from_secs(30),
        || async { resetting.accepted() >= 40 },
    )
    .await;
    assert!(db.confirmed_flush().await.unwrap() < written);

    // The endpoint comes back on the same address.
    resetting.stop().await;
    let receiver = Receiver::start_on(addr).await;
    let events = receiver
        .wait_for_delivered((KEYS * VERSIONS) as usize, Duration::from_secs(60))
        .await;
    assert_complete_in_key_order(&events, KEYS, VERSIONS);
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn a_redirect_is_a_failure_that_is_retried_and_never_followed() {
    let db = TestDb::new().await;
    create_table(&db).await;
    let receiver = Receiver::start().await;
    receiver.respond_with(307);
    let walhook = Walhook::start(patient_config(&db, items("rows", &receiver.url("/rows"))));
    db.wait_slot_active().await;
    write_versions(&db, KEYS, VERSIONS).await;
    let written = db.current_wal().await;
    receiver
        .wait_for_requests(150, Duration::from_secs(30))
        .await;
    assert!(db.confirmed_flush().await.unwrap() < written);

    receiver.respond_with(200);
    let events = receiver
        .wait_for_delivered((KEYS * VERSIONS) as usize, Duration::from_secs(60))
        .await;
    assert_complete_in_key_order(&events, KEYS, VERSIONS);
    let followed = receiver
        .requests()
        .iter()
        .filter(|request| request.path == "/redirected")
        .count();
    assert_eq!(followed, 0, "the Location of a 3xx is never followed");
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn an_endpoint_that_is_down_does_not_hold_up_a_healthy_one() {
    // 1,000 rows × 5 versions of ~400-byte payloads: ~3 MB with overheads,
    // within the down subscription's 4 MiB buffer, so the healthy one gets
    // everything while the other is down, and with its circuit kept closed
    // the down one's events stay in memory (tests/backlog.rs has the rest).
    const MANY_KEYS: i64 = 1000;
    let db = TestDb::new().await;
    create_table(&db).await;
    let down = Receiver::start().await;
    down.respond_with(503);
    let healthy = Receiver::start().await;
    let walhook = Walhook::start(
        patient(&db)
            .subscription(items("down", &down.url("/down")))
            .subscription(items("healthy", &healthy.url("/healthy")))
            .build(),
    );
    db.wait_slot_active().await;
    write_versions(&db, MANY_KEYS, VERSIONS).await;
    let written = db.current_wal().await;

    healthy
        .wait_for_delivered_count((MANY_KEYS * VERSIONS) as usize, Duration::from_secs(60))
        .await;
    assert_complete_in_key_order(&healthy.delivered(), MANY_KEYS, VERSIONS);
    assert!(
        down.delivered().is_empty(),
        "the other endpoint is still down"
    );
    assert!(
        db.confirmed_flush().await.unwrap() < written,
        "the slot waits for the endpoint that is down"
    );

    down.respond_with(200);
    down.wait_for_delivered_count((MANY_KEYS * VERSIONS) as usize, Duration::from_secs(60))
        .await;
    assert_complete_in_key_order(&down.delivered(), MANY_KEYS, VERSIONS);
    crate::support::wait_until(
        "the slot to move past everything",
        Duration::from_secs(30),
        || async { db.confirmed_flush().await.unwrap() >= written },
    )
    .await;
    walhook.stop().await.unwrap();
}
