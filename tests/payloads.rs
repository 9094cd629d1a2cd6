//! Inserts, updates and deletes become the payload of docs/payload.md.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::config::{Subscription, subscription};
use crate::support::receiver::Receiver;
use crate::support::{TestDb, Walhook, source_lsn};

const DEADLINE: Duration = Duration::from_secs(30);

fn orders_hook(receiver: &Receiver, table: &str) -> Subscription {
    subscription("orders-hook", &receiver.url("/hooks/orders")).tables(&[table])
}

#[tokio::test]
async fn full_identity_gives_record_old_record_and_changed_columns() {
    let db = TestDb::with_schema(
        "CREATE TABLE orders (id int PRIMARY KEY, status text, amount numeric(10,2), note text);
         ALTER TABLE orders REPLICA IDENTITY FULL;",
    )
    .await;
    let receiver = Receiver::start().await;
    let walhook = Walhook::start(db.config(orders_hook(&receiver, "public.orders")));
    db.wait_slot_active().await;

    db.client
        .batch_execute(
            "INSERT INTO orders VALUES (42, 'pending', 12.50, NULL);
             UPDATE orders SET status = 'paid' WHERE id = 42;
             DELETE FROM orders WHERE id = 42;",
        )
        .await
        .unwrap();
    let events = receiver.wait_for_delivered(3, DEADLINE).await;
    let requests = receiver.requests();

    let insert = &events[0];
    assert_eq!(insert["type"], "INSERT");
    assert_eq!(insert["schema"], "public");
    assert_eq!(insert["table"], "orders");
    assert_eq!(insert["subscription"], "orders-hook");
    assert_eq!(
        insert["record"],
        exact(r#"{"id": 42, "status": "pending", "amount": 12.50, "note": null}"#)
    );
    assert_eq!(insert["old_record"], Value::Null);
    assert_eq!(insert["changed_columns"], Value::Null);
    // The digits survive: 12.50, not 12.5.
    let raw = String::from_utf8(requests[0].body.to_vec()).unwrap();
    assert!(raw.contains("\"amount\":12.50"), "{raw}");

    let update = &events[1];
    assert_eq!(update["type"], "UPDATE");
    assert_eq!(update["record"]["status"], "paid");
    assert_eq!(
        update["old_record"],
        exact(r#"{"id": 42, "status": "pending", "amount": 12.50, "note": null}"#)
    );
    assert_eq!(update["changed_columns"], json!(["status"]));

    let delete = &events[2];
    assert_eq!(delete["type"], "DELETE");
    assert_eq!(delete["record"], Value::Null);
    assert_eq!(delete["old_record"]["status"], "paid");

    // Source facts: one transaction each, distinct ids, commit after change.
    let ids: std::collections::HashSet<_> = events
        .iter()
        .map(|event| event["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    for (event, request) in events.iter().zip(&requests) {
        let source = &event["source"];
        assert!(source["xid"].as_u64().unwrap() > 0);
        let lsn = source_lsn(event, "lsn");
        let commit = source_lsn(event, "commit_lsn");
        assert!(lsn <= commit, "{source}");
        let time = source["commit_time"].as_str().unwrap();
        assert!(
            time.len() == 27 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "RFC 3339 with microseconds: {time}"
        );
        assert_eq!(request.headers["webhook-id"], event["id"].as_str().unwrap());
        assert_eq!(request.headers["content-type"], "application/json");
        assert!(request.headers["user-agent"].starts_with("walhook/"));
        assert_eq!(request.path, "/hooks/orders");
    }
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn default_identity_sends_keys_only_when_postgres_does() {
    let db = TestDb::with_schema("CREATE TABLE orders (id int PRIMARY KEY, status text)").await;
    let receiver = Receiver::start().await;
    let walhook = Walhook::start(db.config(orders_hook(&receiver, "orders")));
    db.wait_slot_active().await;

    db.client
        .batch_execute(
            "INSERT INTO orders VALUES (1, 'new');
             UPDATE orders SET status = 'paid' WHERE id = 1;
             UPDATE orders SET id = 2 WHERE id = 1;
             DELETE FROM orders WHERE id = 2;",
        )
        .await
        .unwrap();
    let events = receiver.wait_for_delivered(4, DEADLINE).await;
    assert_eq!(events[0]["record"], json!({"id": 1, "status": "new"}));
    // An update that keeps the key: Postgres sends no old row.
    assert_eq!(events[1]["old_record"], Value::Null);
    assert_eq!(events[1]["changed_columns"], Value::Null);
    assert_eq!(events[1]["record"], json!({"id": 1, "status": "paid"}));
    // A key-changing update and a delete: only the key columns, never a
    // column filled with null.
    assert_eq!(events[2]["old_record"], json!({"id": 1}));
    assert_eq!(events[2]["record"], json!({"id": 2, "status": "paid"}));
    assert_eq!(events[3]["type"], "DELETE");
    assert_eq!(events[3]["old_record"], json!({"id": 2}));
    assert_eq!(events[3]["record"], Value::Null);
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn several_rows_in_one_statement_get_distinct_ids_and_keep_order() {
    let db = TestDb::with_schema("CREATE TABLE orders (id int PRIMARY KEY, n int)").await;
    let receiver = Receiver::start().await;
    let walhook = Walhook::start(db.config(orders_hook(&receiver, "orders")));
    db.wait_slot_active().await;
    db.client
        .batch_execute(
            "INSERT INTO orders SELECT g, 0 FROM generate_series(1, 200) g;
             UPDATE orders SET n = n + 1;
             UPDATE orders SET n = n + 1;",
        )
        .await
        .unwrap();
    let events = receiver.wait_for_delivered(600, DEADLINE).await;
    let ids: std::collections::HashSet<_> = events
        .iter()
        .map(|event| event["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 600, "every change has its own id");
    // Per key, commit order: each row's n goes 0, 1, 2.
    let mut seen: std::collections::HashMap<i64, Vec<i64>> = Default::default();
    for event in &events {
        let record = &event["record"];
        seen.entry(record["id"].as_i64().unwrap())
            .or_default()
            .push(record["n"].as_i64().unwrap());
    }
    assert_eq!(seen.len(), 200);
    for (id, ns) in seen {
        assert_eq!(ns, vec![0, 1, 2], "row {id} out of order");
    }
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn truncate_is_one_event_per_table_when_asked_for() {
    let db = TestDb::with_schema(
        "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders VALUES (1);",
    )
    .await;
    let receiver = Receiver::start().await;
    let walhook = Walhook::start(
        db.config(
            subscription("truncates", &receiver.url("/t"))
                .tables(&["orders"])
                .events(&["truncate", "insert"]),
        ),
    );
    db.wait_slot_active().await;
    db.client
        .batch_execute("TRUNCATE orders; INSERT INTO orders VALUES (7);")
        .await
        .unwrap();
    let events = receiver.wait_for_delivered(2, DEADLINE).await;
    assert_eq!(events[0]["type"], "TRUNCATE");
    assert_eq!(events[0]["table"], "orders");
    assert_eq!(events[0]["record"], Value::Null);
    assert_eq!(events[0]["old_record"], Value::Null);
    assert_eq!(events[1]["record"], json!({"id": 7}));
    walhook.stop().await.unwrap();
}

/// JSON parsed with its numbers' digits kept (`json!` would turn 12.50 into
/// 12.5).
fn exact(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}
