//! What walhook's logs hold: at `WALHOOK_LOG=debug` walhook's own detail,
//! not the statements (with their row values) of the libraries it uses; and
//! no colour codes when the log is not a terminal (the journal, a file).

use std::time::Duration;

use crate::support::config::subscription;
use crate::support::receiver::Receiver;
use crate::support::{TestDb, WalhookBinary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_hold_no_row_values_and_no_colour_codes_in_a_file() {
    const VALUE: &str = "a-value-that-must-stay-out-of-the-logs";
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY, note text)").await;
    let receiver = Receiver::start().await;
    // Down: its events go through the backlog, whose statements carry the
    // payloads as parameters.
    receiver.respond_with(503);
    let binary = WalhookBinary::new(
        &db.configure()
            .delivery(
                "breaker",
                r#"{ failures = 1, window = "30s", probe_interval = "500ms" }"#,
            )
            .subscription(subscription("rows", &receiver.url("/rows")).tables(&["items"]))
            .text(),
    );
    let mut walhook = binary.spawn_run_with_env(&[("WALHOOK_LOG", "debug")]);
    db.wait_slot_active().await;
    db.client
        .batch_execute(&format!(
            "INSERT INTO items SELECT g, '{VALUE}' FROM generate_series(1, 20) g"
        ))
        .await
        .unwrap();
    crate::support::wait_until(
        "the rows in the backlog",
        Duration::from_secs(30),
        || async { db.backlog_count("rows").await == 20 },
    )
    .await;
    receiver.respond_with(200);
    receiver
        .wait_for_delivered_count(20, Duration::from_secs(30))
        .await;
    walhook.kill().await.unwrap();
    let log = binary.log();
    assert!(log.contains("DEBUG"), "debug logging is on: {log}");
    assert!(
        !log.contains(VALUE),
        "a row value reached the debug log:\n{}",
        log.lines()
            .filter(|line| line.contains(VALUE))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!log.contains('\u{1b}'), "colour codes in a log file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_failed_attempt_is_logged_as_parking_not_as_a_retry() {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY, note text)").await;
    let receiver = Receiver::start().await;
    receiver.respond_with(500);
    let binary = WalhookBinary::new(
        &db.configure()
            .delivery("max_attempts", "1")
            .delivery("breaker", r#"{ failures = 1000000, window = "1d" }"#)
            .subscription(subscription("rows", &receiver.url("/rows")).tables(&["items"]))
            .text(),
    );
    let mut walhook = binary.spawn_run();
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items VALUES (1, 'one')")
        .await
        .unwrap();
    binary
        .wait_for_log("parking undeliverable events", Duration::from_secs(30))
        .await;
    walhook.kill().await.unwrap();
    let log = binary.log();
    assert!(log.contains("no attempts left"), "{log}");
    assert!(!log.contains("retrying with backoff"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_logged_at_warn_once_not_per_attempt() {
    let cluster = std::sync::Arc::new(
        tokio::task::spawn_blocking(|| {
            walhook::pgtemp::TempPostgres::start_with(walhook::pgtemp::TempPostgresOptions {
                extra_conf: Vec::new(),
                hba_lines: Vec::new(),
            })
        })
        .await
        .unwrap()
        .unwrap(),
    );
    let db = TestDb::on(&cluster).await;
    db.client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    let binary = WalhookBinary::new(
        &db.configure()
            .subscription(subscription("rows", "http://127.0.0.1:9/rows").tables(&["items"]))
            .text(),
    );
    let mut walhook = binary.spawn_run_with_env(&[("WALHOOK_LOG", "walhook=debug")]);
    db.wait_slot_active().await;
    let stopping = std::sync::Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap()
        .unwrap();
    // Several attempts go by (the backoff starts at 200 ms)…
    let attempts = |log: &str| {
        log.lines()
            .filter(|line| line.contains("cannot open the"))
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while attempts(&binary.log()) < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retries logged:\n{}",
            binary.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    walhook.kill().await.unwrap();
    // …but only the first says so at WARN.
    let log = binary.log();
    let warned = log
        .lines()
        .filter(|line| line.contains("cannot open the") && line.contains("WARN"))
        .count();
    assert_eq!(warned, 1, "{log}");
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
