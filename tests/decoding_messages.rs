//! Logical decoding messages (`pg_logical_emit_message`), which walhook asks
//! pgoutput for on PostgreSQL 14 and newer: markers in the stream that are
//! not rows. Between and beside the rows they must change nothing — no
//! webhook, no lost or repeated row, no slot stuck behind them.

use std::time::Duration;

use crate::support::config::subscription;
use crate::support::receiver::Receiver;
use crate::support::{TestDb, Walhook, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn messages_between_inserts_do_not_disturb_delivery_or_the_slot() {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY, note text)").await;
    let receiver = Receiver::start().await;
    let walhook = Walhook::start(
        db.config(
            subscription("items", &receiver.url("/items"))
                .tables(&["items"])
                .events(&["insert"]),
        ),
    );
    db.wait_slot_active().await;
    // A transactional message between two rows of one transaction, a
    // non-transactional one between transactions, a transaction that holds
    // only a message, and a message last of all.
    db.client
        .batch_execute(
            "BEGIN;
             INSERT INTO items VALUES (1, 'one');
             SELECT pg_logical_emit_message(true, 'x', 'y');
             INSERT INTO items VALUES (2, 'two');
             COMMIT;
             SELECT pg_logical_emit_message(false, 'x', 'between transactions');
             INSERT INTO items VALUES (3, 'three');
             BEGIN;
             SELECT pg_logical_emit_message(true, 'x', 'alone in its transaction');
             COMMIT;
             SELECT pg_logical_emit_message(false, 'x', 'last');",
        )
        .await
        .unwrap();
    let written = db.current_wal().await;
    receiver.wait_for_delivered(3, DEADLINE).await;
    wait_until(
        "confirmed_flush_lsn to pass the last message",
        DEADLINE,
        || async { db.confirmed_flush().await.is_some_and(|lsn| lsn >= written) },
    )
    .await;
    walhook.stop().await.unwrap();

    let events = receiver.delivered();
    let rows: Vec<(i64, &str)> = events
        .iter()
        .map(|event| {
            (
                event["record"]["id"].as_i64().unwrap(),
                event["record"]["note"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [(1, "one"), (2, "two"), (3, "three")], "{events:#?}");
    assert!(
        events.iter().all(|event| event["type"] == "INSERT"),
        "{events:#?}"
    );
}
