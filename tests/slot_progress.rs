//! The slot keeps moving: writes to tables no rule names advance the
//! confirmed LSN, so WAL does not pile up behind them.

use std::time::Duration;

use crate::support::config::subscription;
use crate::support::receiver::Receiver;
use crate::support::{TestDb, Walhook, wait_until};

#[tokio::test]
async fn heavy_writes_to_an_unwatched_table_move_confirmed_flush_lsn() {
    let db = TestDb::with_schema(
        "CREATE TABLE orders (id int PRIMARY KEY);
         CREATE TABLE audit_noise (id bigserial PRIMARY KEY, filler text);",
    )
    .await;
    let receiver = Receiver::start().await;
    let walhook =
        Walhook::start(db.config(subscription("orders", &receiver.url("/")).tables(&["orders"])));
    db.wait_slot_active().await;
    let start = db.confirmed_flush().await.unwrap();
    for _ in 0..20 {
        db.client
            .batch_execute(
                "INSERT INTO audit_noise (filler) SELECT repeat('x', 200) FROM generate_series(1, 1000)",
            )
            .await
            .unwrap();
    }
    let written = db.current_wal().await;
    assert!(
        written.0 > start.0 + 1_000_000,
        "the noise wrote megabytes of WAL"
    );
    wait_until(
        "confirmed_flush_lsn to pass the unwatched writes",
        Duration::from_secs(30),
        || async { db.confirmed_flush().await.is_some_and(|lsn| lsn >= written) },
    )
    .await;
    assert!(
        receiver.requests().is_empty(),
        "nothing matched, nothing sent"
    );

    // And a watched row after all that still arrives.
    db.client
        .batch_execute("INSERT INTO orders VALUES (1)")
        .await
        .unwrap();
    receiver
        .wait_for_delivered(1, Duration::from_secs(30))
        .await;
    walhook.stop().await.unwrap();
}
