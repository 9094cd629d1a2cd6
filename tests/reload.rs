//! Reloading the configuration of a running `walhook run` with SIGHUP: a
//! subscription added on a table the publication did not hold gets its rows,
//! a subscription moved to another URL sends new rows there and loses none
//! committed around the reload, a bad file (or rules the catalog refuses,
//! or another slot) changes nothing, and SIGHUP no longer ends the process.
//! The binary runs as a child process, as systemd's `ExecReload` would
//! signal it. It does not test reloads of the admin address (kept until a
//! restart) or of `[delivery]` settings one by one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::support::config::subscription;
use crate::support::receiver::Receiver;
use crate::support::{TestDb, WalhookBinary, free_port, get, sigterm, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);
/// The line a reload that was applied ends with.
const RELOADED: &str = "configuration reloaded";

/// Sends SIGHUP to a child process (what `systemctl reload` does).
fn sighup(child: &tokio::process::Child) {
    let pid = child.id().expect("the child is running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}

/// How many times `text` appears in the log.
fn occurrences(binary: &WalhookBinary, text: &str) -> usize {
    binary.log().matches(text).count()
}

/// Rewrites the config file, sends SIGHUP and waits for the `n`th
/// occurrence of `line` in the log.
async fn reload(
    binary: &WalhookBinary,
    child: &tokio::process::Child,
    text: &str,
    line: &str,
) -> String {
    let before = occurrences(binary, line);
    std::fs::write(&binary.config_path, text).unwrap();
    sighup(child);
    wait_until(&format!("{line:?} in the log"), DEADLINE, || async {
        occurrences(binary, line) > before
    })
    .await;
    binary.log()
}

/// SIGTERM, then the exit code (which must come within the deadline).
async fn stop(binary: &WalhookBinary, mut child: tokio::process::Child) -> Option<i32> {
    sigterm(&child);
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap_or_else(|_| panic!("walhook exits after SIGTERM; log:\n{}", binary.log()))
        .unwrap();
    status.code()
}

async fn published_tables(db: &TestDb) -> Vec<String> {
    db.client
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
            &[&db.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn tables_of(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .map(|event| event["table"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_subscription_added_on_reload_gets_rows_of_a_table_new_to_the_publication() {
    let db = TestDb::with_schema(
        "CREATE TABLE t1 (id int PRIMARY KEY); CREATE TABLE t2 (id int PRIMARY KEY);",
    )
    .await;
    let first = Receiver::start().await;
    let second = Receiver::start().await;
    let port = free_port();
    let a = subscription("a", &first.url("/a")).tables(&["t1"]);
    let b = subscription("b", &second.url("/b")).tables(&["t2"]);
    let config = db
        .configure()
        .admin(&format!("127.0.0.1:{port}"))
        .subscription(&a);
    let binary = WalhookBinary::new(&config.text());
    let child = binary.spawn_run();
    let pid = child.id();
    db.wait_slot_active().await;
    assert_eq!(published_tables(&db).await, ["t1"]);

    let log = reload(&binary, &child, &config.subscription(&b).text(), RELOADED).await;
    assert!(log.contains("subscriptions added: b"), "{log}");
    assert_eq!(published_tables(&db).await, ["t1", "t2"]);
    db.client
        .batch_execute("INSERT INTO t2 VALUES (1); INSERT INTO t1 VALUES (1);")
        .await
        .unwrap();
    let to_b = second.wait_for_delivered(1, DEADLINE).await;
    let to_a = first.wait_for_delivered(1, DEADLINE).await;
    assert_eq!(tables_of(&to_b), BTreeSet::from(["t2".to_owned()]));
    assert_eq!(tables_of(&to_a), BTreeSet::from(["t1".to_owned()]));
    assert_eq!(to_b[0]["subscription"], "b");

    // The same process, still running, its admin server on the new config.
    assert_eq!(child.id(), pid);
    let (status, metrics) = get(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("walhook_events_delivered_total{subscription=\"b\"} 1"),
        "{metrics}"
    );
    let (status, report) = get(&format!("http://127.0.0.1:{port}/status")).await;
    assert_eq!(status, 200, "{report}");
    assert!(report.contains("\"b\""), "/status lists b: {report}");
    assert_eq!(stop(&binary, child).await, Some(0), "{}", binary.log());
}

/// Row id → the event ids it arrived with at either receiver.
fn ids_by_row(receivers: &[&Receiver]) -> BTreeMap<i64, BTreeSet<String>> {
    let mut by_row: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for receiver in receivers {
        for event in receiver.delivered() {
            by_row
                .entry(event["record"]["id"].as_i64().unwrap())
                .or_default()
                .insert(event["id"].as_str().unwrap().to_owned());
        }
    }
    by_row
}

fn rows_at(receiver: &Receiver) -> BTreeSet<i64> {
    receiver
        .delivered()
        .iter()
        .map(|event| event["record"]["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_moved_to_another_url_loses_nothing_committed_around_the_reload() {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY)").await;
    let old = Receiver::start().await;
    let new = Receiver::start().await;
    // Requests take a while, so that some are in flight at the reload.
    old.delay_responses(Duration::from_millis(30));
    let moved = |receiver: &Receiver| {
        db.configure()
            .subscription(subscription("a", &receiver.url("/a")).tables(&["items"]))
            .text()
    };
    let binary = WalhookBinary::new(&moved(&old));
    let child = binary.spawn_run();
    db.wait_slot_active().await;

    // A writer commits one row per transaction throughout the reload.
    let written = Arc::new(AtomicI64::new(0));
    let writing = tokio_util::sync::CancellationToken::new();
    let writer = {
        let client = crate::support::connect(&db.url).await;
        let (written, writing) = (Arc::clone(&written), writing.clone());
        tokio::spawn(async move {
            let mut id = 0;
            while !writing.is_cancelled() {
                id += 1;
                client
                    .batch_execute(&format!("INSERT INTO items VALUES ({id})"))
                    .await
                    .unwrap();
                written.store(id, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    old.wait_for_delivered_count(20, DEADLINE).await;
    let log = reload(&binary, &child, &moved(&new), RELOADED).await;
    assert!(log.contains("changed: a"), "{log}");
    // Rows committed from here on are read with the new configuration.
    // (The row after the last one seen committed may have committed just
    // before the line: one more makes sure.)
    let after_reload = written.load(Ordering::SeqCst) + 2;
    wait_until("rows after the reload", DEADLINE, || async {
        written.load(Ordering::SeqCst) >= after_reload + 20
    })
    .await;
    writing.cancel();
    writer.await.unwrap();
    let last = written.load(Ordering::SeqCst);

    wait_until("every row at one of the receivers", DEADLINE, || async {
        ids_by_row(&[&old, &new]).len() as i64 >= last
    })
    .await;
    let by_row = ids_by_row(&[&old, &new]);
    let missing: Vec<i64> = (1..=last).filter(|id| !by_row.contains_key(id)).collect();
    assert!(missing.is_empty(), "lost rows {missing:?}");
    for (row, ids) in &by_row {
        assert_eq!(
            ids.len(),
            1,
            "row {row} arrived with different ids: {ids:?}"
        );
    }
    let at_old = rows_at(&old);
    let at_new = rows_at(&new);
    assert!(
        at_old.iter().all(|id| *id < after_reload),
        "rows committed after the reload went to the old URL: {:?}",
        at_old.range(after_reload..).collect::<Vec<_>>()
    );
    assert!((after_reload..=last).all(|id| at_new.contains(&id)));
    eprintln!(
        "rows {last}: {} at the old URL, {} at the new, reloaded before row {after_reload}",
        at_old.len(),
        at_new.len()
    );
    assert_eq!(stop(&binary, child).await, Some(0), "{}", binary.log());
}

#[tokio::test]
async fn a_reload_that_is_rejected_keeps_the_running_configuration() {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY)").await;
    let receiver = Receiver::start().await;
    let items = subscription("a", &receiver.url("/a")).tables(&["items"]);
    let config = db.configure().subscription(&items);
    let binary = WalhookBinary::new(&config.text());
    let child = binary.spawn_run();
    db.wait_slot_active().await;

    const REJECTED: &str = "reload rejected";
    // A file that does not load: the message `walhook check` gives.
    let broken = config
        .text()
        .replace("[delivery]\n", "[delivery]\nretries = 3\n");
    let log = reload(&binary, &child, &broken, REJECTED).await;
    let check = binary.command(&["check"]).await;
    let problem = crate::support::stderr(&check);
    let problem = problem
        .lines()
        .find(|line| line.contains("retries"))
        .unwrap_or_else(|| panic!("check names the key: {problem}"))
        .trim_start_matches("error: ");
    assert!(log.contains(problem), "{problem:?} in the log:\n{log}");

    // Rules the catalog refuses: a table that does not exist.
    let unknown = db
        .configure()
        .subscription(subscription("a", &receiver.url("/a")).tables(&["nosuch"]))
        .text();
    let log = reload(&binary, &child, &unknown, REJECTED).await;
    assert!(log.contains("does not exist"), "{log}");

    // Another slot: needs a restart.
    let slot = db.configure().slot("another").subscription(&items).text();
    let log = reload(&binary, &child, &slot, REJECTED).await;
    assert!(log.contains("source.slot"), "{log}");

    assert!(!log.contains(RELOADED), "{log}");
    db.client
        .batch_execute("INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    let delivered = receiver.wait_for_delivered(1, DEADLINE).await;
    assert_eq!(delivered[0]["record"]["id"], 1);
    assert!(
        db.confirmed_flush_of("another").await.is_none(),
        "no slot made"
    );
    assert_eq!(stop(&binary, child).await, Some(0), "{}", binary.log());
}

#[tokio::test]
async fn sighup_does_not_end_walhook_and_an_unchanged_file_changes_nothing() {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY)").await;
    let receiver = Receiver::start().await;
    let config = db.config_text(subscription("a", &receiver.url("/a")).tables(&["items"]));
    let binary = WalhookBinary::new(&config);
    let mut child = binary.spawn_run();
    binary.wait_for_log("streaming changes", DEADLINE).await;

    let log = reload(&binary, &child, &config, "configuration unchanged").await;
    assert!(child.try_wait().unwrap().is_none(), "still running:\n{log}");
    // The stream was not restarted for nothing.
    assert_eq!(occurrences(&binary, "streaming changes"), 1, "{log}");
    db.client
        .batch_execute("INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    receiver.wait_for_delivered(1, DEADLINE).await;
    let code = stop(&binary, child).await;
    assert_ne!(code, Some(129), "SIGHUP's default action ended it");
    assert_eq!(code, Some(0), "{}", binary.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_goes_on_across_a_reload_from_its_last_completed_chunk() {
    const ROWS: i64 = 2_000;
    const CHUNK: i32 = 100;
    let db = TestDb::with_schema(&format!(
        "CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY); \
         INSERT INTO items SELECT generate_series(1, {ROWS});"
    ))
    .await;
    let receiver = Receiver::start().await;
    // Slow enough that the reload comes mid-way.
    receiver.delay_responses(Duration::from_millis(20));
    let config = db
        .configure()
        .subscription(subscription("crm", &receiver.url("/crm")).tables(&["items"]));
    let binary = WalhookBinary::new(&config.text());
    let child = binary.spawn_run();
    binary.wait_for_log("streaming changes", DEADLINE).await;
    let id: i64 = db
        .client
        .query_one(
            "INSERT INTO walhook.backfills (subscription, table_name, chunk_rows) \
             VALUES ('crm', 'public.items', $1) RETURNING id",
            &[&CHUNK],
        )
        .await
        .unwrap()
        .get(0);
    let progress = || async {
        let row = db
            .client
            .query_one(
                "SELECT state, rows_sent FROM walhook.backfills WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (row.get::<_, String>(0), row.get::<_, i64>(1))
    };
    wait_until("the backfill to be under way", DEADLINE, || async {
        progress().await.1 >= 3 * i64::from(CHUNK)
    })
    .await;
    let added = config.subscription(subscription("b", &receiver.url("/b")).tables(&["other"]));
    reload(&binary, &child, &added.text(), RELOADED).await;
    let (state, sent) = progress().await;
    assert!(
        state != "done" && sent < ROWS,
        "reloaded mid-way: {state} {sent}"
    );

    wait_until(
        "the backfill to be done",
        Duration::from_secs(60),
        || async { progress().await.0 == "done" },
    )
    .await;
    let reads: Vec<i64> = receiver
        .delivered_to("/crm")
        .iter()
        .filter(|event| event["type"] == "READ")
        .map(|event| event["record"]["id"].as_i64().unwrap())
        .collect();
    let distinct: BTreeSet<i64> = reads.iter().copied().collect();
    assert_eq!(distinct.len() as i64, ROWS, "every row once at least");
    // Resumed, not started over: at most the chunk in flight repeats.
    let repeated = reads.len() - distinct.len();
    assert!(
        repeated <= CHUNK as usize,
        "{repeated} rows sent twice; log:\n{}",
        binary.log()
    );
    eprintln!("backfill of {ROWS} rows across a reload: {repeated} sent twice");
    assert_eq!(stop(&binary, child).await, Some(0), "{}", binary.log());
}
