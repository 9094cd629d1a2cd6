//! `walhook status` reports the lag of a slot that is held back on purpose,
//! and dead letters per subscription.

use std::time::Duration;

use serde_json::Value;

use crate::support::config::subscription;
use crate::support::{TestDb, WalhookBinary, lsn, stderr};

/// Runs `walhook <args>`, which must succeed.
async fn walhook(binary: &WalhookBinary, args: &[&str]) -> std::process::Output {
    let output = binary.command(args).await;
    assert!(
        output.status.success(),
        "walhook {args:?}: {}",
        stderr(&output)
    );
    output
}

#[tokio::test]
async fn status_reports_the_lag_of_a_slot_held_back() {
    let db = TestDb::with_schema("CREATE TABLE orders (id int PRIMARY KEY, note text)").await;
    let binary = WalhookBinary::new(
        &db.configure()
            .subscription(subscription("orders", "http://127.0.0.1:9/").tables(&["orders"]))
            .subscription(subscription("quiet", "http://127.0.0.1:9/").tables(&["orders"]))
            .text(),
    );
    // The slot, the publication and the schema, and nobody reading the slot.
    walhook(&binary, &["setup"]).await;
    let before_inserts = std::time::SystemTime::now();
    db.client
        .batch_execute(
            "INSERT INTO orders SELECT g, repeat('x', 500) FROM generate_series(1, 2000) g;
             INSERT INTO walhook.dead_letters
               (subscription, event_id, payload, last_status, last_error, attempts, first_attempt_at)
             VALUES ('orders', 'wh_1', '{}', 422, 'HTTP 422', 1, now());",
        )
        .await
        .unwrap();
    let lag_before: i64 = db
        .client
        .query_one(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(lag_before > 1_000_000, "the inserts wrote over a megabyte");

    let confirmed_before = db.confirmed_flush().await.unwrap();
    let output = walhook(&binary, &["status", "--json"]).await;
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let lag_after: i64 = db
        .client
        .query_one(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(report["slot"], db.name.as_str());
    assert_eq!(report["exists"], true);
    assert_eq!(report["active"], false);
    let lag = report["lag_bytes"].as_i64().unwrap();
    assert!(
        (lag_before..=lag_after).contains(&lag),
        "lag {lag} not within [{lag_before}, {lag_after}]"
    );
    // The lag in time of a slot nobody reads: the age of the oldest waiting
    // transaction, found by peeking (the slot does not move).
    let waited = before_inserts.elapsed().unwrap().as_secs_f64();
    let lag_seconds = report["lag_seconds"].as_f64().expect("lag_seconds");
    assert!(
        lag_seconds > 0.0 && lag_seconds <= waited,
        "lag {lag_seconds}s, inserted {waited}s ago"
    );
    let oldest = report["oldest_waiting_commit"]
        .as_str()
        .expect("a commit time");
    let committed = humantime::parse_rfc3339(oldest).expect("RFC 3339");
    assert!(
        committed >= before_inserts - Duration::from_millis(1)
            && committed <= std::time::SystemTime::now(),
        "{oldest} is the inserts' commit"
    );
    assert_eq!(
        report["confirmed_flush_lsn"].as_str().map(lsn),
        Some(confirmed_before)
    );
    assert_eq!(
        db.confirmed_flush().await.unwrap(),
        confirmed_before,
        "peeking did not move the slot"
    );
    assert_eq!(report["subscriptions"][0]["name"], "orders");
    assert_eq!(report["subscriptions"][0]["dead_letters"], 1);
    assert_eq!(report["subscriptions"][1]["dead_letters"], 0);
    // When the oldest letter was first tried, in ISO 8601 like the other
    // times (not PostgreSQL's own text).
    let oldest_letter = report["subscriptions"][0]["oldest_dead_letter"]
        .as_str()
        .unwrap_or_else(|| panic!("{report}"));
    humantime::parse_rfc3339(oldest_letter).unwrap_or_else(|_| panic!("RFC 3339: {oldest_letter}"));

    // The table form names the same facts.
    let output = walhook(&binary, &["status"]).await;
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(
        table.contains(&format!("slot {}: inactive", db.name)),
        "{table}"
    );
    assert!(table.contains("lag 1.") || table.contains("MB"), "{table}");
    assert!(
        table.contains(&format!("oldest waiting change committed {oldest}")),
        "{table}"
    );
}
