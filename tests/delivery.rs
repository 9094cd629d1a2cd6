//! Delivery under failure: receivers that answer 500, walhook killed with
//! SIGKILL mid-stream, undeliverable events parked as dead letters.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::receiver::Receiver;
use crate::support::{TestDb, Walhook, wait_until, walhook_binary};

fn subscription(receiver: &Receiver) -> String {
    format!(
        r#"
        [[subscriptions]]
        name = "rows"
        tables = ["items"]
        events = ["insert"]
        url = "{}"
        "#,
        receiver.url("/rows")
    )
}

/// Row id → the distinct event ids it arrived with.
fn ids_by_row(events: &[Value]) -> HashMap<i64, HashSet<String>> {
    let mut by_row: HashMap<i64, HashSet<String>> = HashMap::new();
    for event in events {
        by_row
            .entry(event["record"]["id"].as_i64().unwrap())
            .or_default()
            .insert(event["id"].as_str().unwrap().to_owned());
    }
    by_row
}

#[tokio::test]
async fn a_receiver_that_fails_for_a_while_gets_every_row_once_it_recovers() {
    let db = TestDb::new().await;
    db.client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, payload text)")
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    receiver.respond_with(500);
    let walhook = Walhook::start(db.config(&subscription(&receiver)));
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 300) g")
        .await
        .unwrap();
    receiver
        .wait_for_requests(100, Duration::from_secs(30))
        .await;
    let before = db.confirmed_flush().await.unwrap();
    receiver.respond_with(200);
    let events = receiver
        .wait_for_delivered(300, Duration::from_secs(60))
        .await;
    let by_row = ids_by_row(&events);
    assert_eq!(by_row.len(), 300, "every row delivered");
    assert!(by_row.values().all(|ids| ids.len() == 1));
    // While every request failed, the slot could not move past the rows.
    let insert_end = db.current_wal().await;
    assert!(before < insert_end);
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn a_permanent_refusal_is_parked_as_a_dead_letter_before_the_slot_moves() {
    let db = TestDb::new().await;
    db.client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, payload text)")
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    receiver.respond_with(422);
    let walhook = Walhook::start(db.config(&subscription(&receiver)));
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items VALUES (1, 'refused')")
        .await
        .unwrap();
    let written = db.current_wal().await;
    receiver.wait_for_requests(1, Duration::from_secs(30)).await;
    wait_until(
        "the slot to move past the parked row",
        Duration::from_secs(30),
        || async {
            db.confirmed_flush()
                .await
                .is_some_and(|confirmed| confirmed >= written)
        },
    )
    .await;
    let row = db
        .client
        .query_one(
            "SELECT subscription, event_id, payload::text, last_status, attempts \
             FROM walhook.dead_letters",
            &[],
        )
        .await
        .unwrap();
    let request = &receiver.requests()[0];
    assert_eq!(row.get::<_, String>(0), "rows");
    assert_eq!(row.get::<_, String>(1), request.headers["webhook-id"]);
    assert_eq!(row.get::<_, String>(2).as_bytes(), &request.body[..]);
    assert_eq!(row.get::<_, Option<i32>>(3), Some(422));
    assert_eq!(row.get::<_, i32>(4), 1, "a 4xx is not retried");
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn sigkill_at_any_moment_loses_nothing_and_duplicates_keep_their_id() {
    const ROWS: i64 = 4000;
    const PER_TRANSACTION: i64 = 40;
    let db = TestDb::new().await;
    db.client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, payload text)")
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("walhook.toml");
    std::fs::write(&config_path, db.config_text(&subscription(&receiver))).unwrap();
    let spawn = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("walhook.log"))
            .unwrap();
        tokio::process::Command::new(walhook_binary())
            .args(["run", "--config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut walhook = spawn();
    db.wait_slot_active().await;

    let writer = {
        let client = crate::support::connect(&db.url).await;
        tokio::spawn(async move {
            for start in (1..=ROWS).step_by(PER_TRANSACTION as usize) {
                let end = start + PER_TRANSACTION - 1;
                client
                    .batch_execute(&format!(
                        "INSERT INTO items SELECT g, 'row ' || g FROM generate_series({start}, {end}) g"
                    ))
                    .await
                    .unwrap();
            }
        })
    };

    // Kill it at moments spread over the stream, restarting each time.
    for (kill, after) in [(1, 300), (2, 1200), (3, 2500)] {
        receiver
            .wait_for_delivered(after, Duration::from_secs(60))
            .await;
        walhook.kill().await.unwrap();
        let _ = walhook.wait().await;
        eprintln!(
            "killed walhook (kill {kill}) after {} deliveries",
            receiver.delivered().len()
        );
        walhook = spawn();
    }
    writer.await.unwrap();

    let until = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let by_row = ids_by_row(&receiver.delivered());
        if by_row.len() as i64 == ROWS {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "only {} of {ROWS} rows arrived; log:\n{}",
            by_row.len(),
            std::fs::read_to_string(dir.path().join("walhook.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = receiver.delivered();
    let by_row = ids_by_row(&delivered);
    let lost = (1..=ROWS).filter(|id| !by_row.contains_key(id)).count();
    let duplicates = delivered.len() as i64 - ROWS;
    eprintln!(
        "rows {ROWS}, deliveries {}, duplicates {duplicates}, lost {lost}",
        delivered.len()
    );
    assert_eq!(lost, 0);
    for (row, ids) in &by_row {
        assert_eq!(
            ids.len(),
            1,
            "row {row} arrived with different ids: {ids:?}"
        );
    }
    walhook.kill().await.unwrap();
}
