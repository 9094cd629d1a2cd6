//! Batches under `ordering = "key"`: a request carries events of many keys,
//! a key's events are never in two requests in flight at once and arrive in
//! commit order, a key-changing update stays behind its old key's changes,
//! and a burst of many keys goes in a few full requests rather than one
//! small one per lane.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::support::config::subscription;
use crate::support::receiver::Receiver;
use crate::support::{TestDb, Walhook};

const DEADLINE: Duration = Duration::from_secs(60);

/// The row id of an event: from `record`, else `old_record`.
fn row_id(event: &Value) -> i64 {
    event["record"]["id"]
        .as_i64()
        .or_else(|| event["old_record"]["id"].as_i64())
        .unwrap_or(-1)
}

fn counter(event: &Value) -> i64 {
    event["record"]["n"].as_i64().unwrap_or(-1)
}

/// A database with `keys` rows in `items` from before the slot, so only
/// what the test commits later streams.
async fn items_db(keys: i64) -> TestDb {
    let db = TestDb::new().await;
    db.client
        .batch_execute(&format!(
            "CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL);
             INSERT INTO items SELECT g, 0 FROM generate_series(1, {keys}) g;"
        ))
        .await
        .unwrap();
    db
}

/// `rounds` rounds of one update per key (n = round), each its own
/// transaction, keys shuffled differently in each round, in one burst.
fn update_burst(keys: i64, rounds: i64) -> String {
    let mut burst = String::new();
    for round in 1..=rounds {
        let mut ids: Vec<i64> = (1..=keys).collect();
        fastrand::shuffle(&mut ids);
        for id in ids {
            burst.push_str(&format!(
                "BEGIN; UPDATE items SET n = {round} WHERE id = {id}; COMMIT;\n"
            ));
        }
    }
    burst
}

/// Per row, its counters in the order they were delivered.
fn per_row(events: &[Value], fold: impl Fn(i64) -> i64) -> BTreeMap<i64, Vec<i64>> {
    let mut rows: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for event in events {
        rows.entry(fold(row_id(event)))
            .or_default()
            .push(counter(event));
    }
    rows
}

/// The receiver holds the request carrying one key's first update. Every key
/// in that request is then in flight: none of them may arrive in another
/// request until it is answered, while keys of other requests go on. This
/// does not rely on timing: without per-key ownership of batches, a later
/// change of one of those keys goes out in another lane's batch.
#[tokio::test]
async fn no_key_of_a_batch_in_flight_goes_out_in_another_request() {
    const KEYS: i64 = 60;
    const ROUNDS: i64 = 4;
    const HELD: i64 = 7;
    let db = items_db(KEYS).await;
    let receiver = Receiver::start().await;
    receiver.hold_where(|event| row_id(event) == HELD && counter(event) == 1);
    let walhook = Walhook::start(
        db.configure()
            .delivery("concurrency", "8")
            .subscription(
                subscription("items", &receiver.url("/items"))
                    .tables(&["items"])
                    .ordering("key")
                    .with("batch", r#"{ max_events = 10, max_wait = "20ms" }"#),
            )
            .build(),
    );
    db.wait_slot_active().await;
    db.client
        .batch_execute(&update_burst(KEYS, ROUNDS))
        .await
        .unwrap();

    receiver
        .wait_for_arrival_of("the held update", DEADLINE, |event| {
            row_id(event) == HELD && counter(event) == 1
        })
        .await;
    let held_index = receiver
        .arrived_requests()
        .iter()
        .position(|events| {
            events
                .iter()
                .any(|event| row_id(event) == HELD && counter(event) == 1)
        })
        .unwrap();
    let in_flight: BTreeSet<i64> = receiver.arrived_requests()[held_index]
        .iter()
        .map(row_id)
        .collect();
    // Other keys go on meanwhile.
    receiver
        .wait_for(
            "events arrived after the held request",
            60,
            DEADLINE,
            |receiver| {
                receiver.arrived_requests()[held_index + 1..]
                    .iter()
                    .map(Vec::len)
                    .sum()
            },
        )
        .await;
    for (index, events) in receiver.arrived_requests().iter().enumerate() {
        if index <= held_index {
            continue;
        }
        let keys: BTreeSet<i64> = events.iter().map(row_id).collect();
        assert!(
            keys.is_disjoint(&in_flight),
            "request {index} carries keys {:?} of the request still in flight ({in_flight:?})",
            keys.intersection(&in_flight).collect::<Vec<_>>()
        );
    }

    receiver.release();
    let delivered = receiver
        .wait_for_delivered((KEYS * ROUNDS) as usize, DEADLINE)
        .await;
    let rows = per_row(&delivered, |id| id);
    assert_eq!(rows.len() as i64, KEYS);
    for (id, seen) in &rows {
        assert_eq!(seen, &(1..=ROUNDS).collect::<Vec<_>>(), "row {id}");
    }
    // Batches did carry many keys each.
    let widest = receiver
        .requests()
        .iter()
        .map(|request| {
            request
                .events()
                .iter()
                .map(row_id)
                .collect::<BTreeSet<_>>()
                .len()
        })
        .max()
        .unwrap_or(0);
    assert!(widest >= 5, "the widest request carried {widest} keys");
    walhook.stop().await.unwrap();
}

/// Renames in batches, with slow, uneven answers: a row's update, its
/// rename and the renamed row's update arrive in that order.
#[tokio::test]
async fn a_key_change_in_a_batch_arrives_after_the_old_keys_changes_and_before_the_new_keys() {
    const KEYS: i64 = 40;
    const RENAMED: i64 = 1000;
    let db = items_db(KEYS).await;
    let receiver = Receiver::start().await;
    receiver.delay_responses_randomly(Duration::from_millis(4));
    let walhook = Walhook::start(
        db.configure()
            .delivery("concurrency", "16")
            .subscription(
                subscription("items", &receiver.url("/items"))
                    .tables(&["items"])
                    .ordering("key")
                    .with("batch", r#"{ max_events = 8, max_wait = "5ms" }"#),
            )
            .build(),
    );
    db.wait_slot_active().await;
    let mut burst = String::new();
    let mut commit = |statement: String| {
        burst.push_str(&format!("BEGIN; {statement}; COMMIT;\n"));
    };
    for id in 1..=KEYS {
        commit(format!("UPDATE items SET n = 1 WHERE id = {id}"));
    }
    for id in 1..=KEYS {
        commit(format!(
            "UPDATE items SET id = id + {RENAMED}, n = 2 WHERE id = {id}"
        ));
    }
    for id in 1..=KEYS {
        // The old key comes back as a new row, after the rename.
        commit(format!("INSERT INTO items VALUES ({id}, 10)"));
        commit(format!(
            "UPDATE items SET n = 3 WHERE id = {}",
            id + RENAMED
        ));
    }
    db.client.batch_execute(&burst).await.unwrap();
    let delivered = receiver
        .wait_for_delivered((4 * KEYS) as usize, DEADLINE)
        .await;
    // Per original row: update, rename, update of the new key; the new row
    // under the old key only after the rename.
    let rows = per_row(&delivered, |id| id % RENAMED);
    assert_eq!(rows.len() as i64, KEYS);
    for (id, seen) in &rows {
        let without_new_row: Vec<i64> = seen.iter().copied().filter(|n| *n != 10).collect();
        assert_eq!(without_new_row, [1, 2, 3], "row {id}, in arrival order");
        let rename = seen.iter().position(|n| *n == 2).unwrap();
        let new_row = seen.iter().position(|n| *n == 10).unwrap();
        assert!(
            rename < new_row,
            "row {id}: the new row under the old key arrived before the rename: {seen:?}"
        );
    }
    walhook.stop().await.unwrap();
}

/// 300 single-row transactions of 300 keys in one burst, batches of up to
/// 100: a few full requests, not one or two events for each of 64 lanes.
#[tokio::test]
async fn a_burst_of_many_keys_goes_in_a_few_full_batches() {
    const KEYS: i64 = 300;
    let db = items_db(KEYS).await;
    let receiver = Receiver::start().await;
    let walhook = Walhook::start(
        db.configure()
            .delivery("concurrency", "64")
            .subscription(
                subscription("items", &receiver.url("/items"))
                    .tables(&["items"])
                    .ordering("key")
                    .with("batch", r#"{ max_events = 100, max_wait = "1s" }"#),
            )
            .build(),
    );
    db.wait_slot_active().await;
    db.client
        .batch_execute(&update_burst(KEYS, 1))
        .await
        .unwrap();
    let delivered = receiver.wait_for_delivered(KEYS as usize, DEADLINE).await;
    assert_eq!(per_row(&delivered, |id| id).len() as i64, KEYS);
    let requests = receiver.requests().len();
    assert!(
        requests <= 10,
        "{KEYS} events took {requests} requests (batches of up to 100)"
    );
    walhook.stop().await.unwrap();
}
