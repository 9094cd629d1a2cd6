//! The operator's commands for a backlog, run as an operator runs them (the
//! binary, against the database): `pause` and `resume` refuse a
//! subscription the config does not have, name the ones it has and write
//! nothing; `backlog purge` deletes what it says it deleted, of one
//! subscription only (with `--older-than`, only old events), and those
//! events are never delivered; `check` warns about a paused subscription
//! and about waiting events of a subscription the config no longer has;
//! `status` warns about a backlog older than `delivery.backlog.warn_age`,
//! with what to do about it.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::support::config::{Subscription, subscription};
use crate::support::receiver::Receiver;
use crate::support::{TestDb, Walhook, WalhookBinary, stderr, stdout, wait_until};

/// The circuit opens after 3 failed requests in a row and is probed every
/// 500 ms, so a down endpoint's events reach the backlog quickly.
const BREAKER: &str = r#"{ failures = 3, window = "30s", probe_interval = "500ms" }"#;

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, note text NOT NULL)";

/// The inserts into `items`, in full commit order (so nothing older can
/// arrive after a newer event).
fn items(name: &str, url: &str) -> Subscription {
    subscription(name, url)
        .tables(&["items"])
        .events(&["insert"])
        .ordering("strict")
}

/// A receiver that answers every request 503, as a down endpoint does.
async fn down_receiver() -> Receiver {
    let receiver = Receiver::start().await;
    receiver.respond_with(503);
    receiver
}

/// Inserts rows `1..=rows` and waits until each of `subscriptions` has
/// exactly that many events waiting in `walhook.backlog`.
async fn fill_backlogs(db: &TestDb, subscriptions: &[&str], rows: i64) {
    db.insert_items(1, rows).await;
    for name in subscriptions {
        wait_until(
            &format!("{rows} events of {name} in walhook.backlog"),
            Duration::from_secs(20),
            || async { db.backlog_count(name).await == rows },
        )
        .await;
    }
}

/// Stdout and stderr of a finished command, for messages.
fn both(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        stdout(output),
        stderr(output)
    )
}

/// Runs `walhook <args> --config …`, which must exit 0.
async fn succeeds(binary: &WalhookBinary, args: &[&str]) -> Output {
    let output = binary.command(args).await;
    assert!(
        output.status.success(),
        "walhook {args:?}: {}",
        both(&output)
    );
    output
}

/// The whole numbers written in `text`, in order.
fn numbers(text: &str) -> Vec<i64> {
    text.split(|character: char| !character.is_ascii_digit())
        .filter(|word| !word.is_empty())
        .map(|word| word.parse().unwrap())
        .collect()
}

/// The lines of `text` that start with `warning:`.
fn warnings(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| line.starts_with("warning:"))
        .collect()
}

/// The rows of `walhook.subscription_state`: (subscription, paused).
async fn subscription_states(db: &TestDb) -> Vec<(String, bool)> {
    db.client
        .query(
            "SELECT subscription, paused FROM walhook.subscription_state ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// `record.id` of each event `receiver` answered 2xx, in arrival order.
fn delivered_rows(receiver: &Receiver) -> Vec<i64> {
    receiver
        .delivered()
        .iter()
        .map(|event| {
            event["record"]["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("record.id in {event}"))
        })
        .collect()
}

/// Runs `walhook <args>` until its output (stdout and stderr) satisfies
/// `done`, failing the test with the last output after `deadline`.
async fn wait_for_output(
    binary: &WalhookBinary,
    args: &[&str],
    deadline: Duration,
    done: impl Fn(&str) -> bool,
) -> Output {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let output = binary.command(args).await;
        if done(&format!("{}{}", stdout(&output), stderr(&output))) {
            return output;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out after {deadline:?} waiting for walhook {args:?}; last output: {}",
            both(&output)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn pause_and_resume_of_an_unknown_subscription_exit_2_and_write_nothing() {
    let db = TestDb::with_schema(ITEMS).await;
    let receiver = Receiver::start().await;
    let binary = WalhookBinary::new(
        &db.configure()
            .subscription(items("orders", &receiver.url("/orders")))
            .subscription(items("audit", &receiver.url("/audit")))
            .text(),
    );
    // With walhook.subscription_state in place, a stray write would show.
    succeeds(&binary, &["setup"]).await;

    for command in ["pause", "resume"] {
        let output = binary.command(&[command, "invoices"]).await;
        let text = both(&output);
        assert_eq!(output.status.code(), Some(2), "{command}: {text}");
        let error = stderr(&output);
        for name in ["invoices", "orders", "audit"] {
            assert!(error.contains(name), "{command}: {name} in {text}");
        }
        assert!(
            stdout(&output).trim().is_empty(),
            "{command} claims nothing: {text}"
        );
    }
    assert_eq!(
        subscription_states(&db).await,
        Vec::new(),
        "no row for an unknown subscription"
    );

    // The same command with a name the config has writes its row, so the
    // emptiness above is the refusal's doing.
    succeeds(&binary, &["pause", "orders"]).await;
    assert_eq!(
        subscription_states(&db).await,
        vec![("orders".to_owned(), true)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_purge_deletes_one_subscriptions_waiting_events_and_they_are_never_delivered() {
    const ROWS: i64 = 50;
    let db = TestDb::with_schema(ITEMS).await;
    let orders = down_receiver().await;
    let audit = down_receiver().await;
    let config = db
        .configure()
        .delivery("breaker", BREAKER)
        .subscription(items("orders", &orders.url("/orders")))
        .subscription(items("audit", &audit.url("/audit")));
    let binary = WalhookBinary::new(&config.text());
    let walhook = Walhook::start(config.build());
    db.wait_slot_active().await;
    fill_backlogs(&db, &["orders", "audit"], ROWS).await;

    // Everything waiting was committed moments ago: nothing is older than
    // an hour, and nothing goes.
    let output = succeeds(
        &binary,
        &[
            "backlog",
            "purge",
            "--subscription",
            "orders",
            "--older-than",
            "1h",
        ],
    )
    .await;
    assert_eq!(numbers(&stdout(&output)), vec![0], "{}", both(&output));
    assert!(stdout(&output).contains("orders"), "{}", both(&output));
    assert_eq!(db.backlog_count("orders").await, ROWS);
    assert_eq!(db.backlog_count("audit").await, ROWS);

    // Without --older-than, all of orders' events go, while walhook runs;
    // audit's stay.
    let output = succeeds(&binary, &["backlog", "purge", "--subscription", "orders"]).await;
    assert_eq!(numbers(&stdout(&output)), vec![ROWS], "{}", both(&output));
    assert_eq!(db.backlog_count("orders").await, 0);
    assert_eq!(
        db.backlog_count("audit").await,
        ROWS,
        "the other subscription's events are untouched"
    );

    // The endpoint comes back: a row written now arrives, and none of the
    // purged ones (in strict order they would have come first), nor are
    // they dead letters.
    orders.respond_with(200);
    db.insert_items(ROWS + 1, ROWS + 1).await;
    orders
        .wait_for_delivered_count(1, Duration::from_secs(20))
        .await;
    assert_eq!(
        delivered_rows(&orders),
        vec![ROWS + 1],
        "only the row written after the purge is delivered"
    );
    // Its backlog row is deleted once the 2xx is in.
    wait_until(
        "orders' backlog to be empty again",
        Duration::from_secs(10),
        || async { db.backlog_count("orders").await == 0 },
    )
    .await;
    assert_eq!(delivered_rows(&orders), vec![ROWS + 1]);
    assert_eq!(db.dead_letter_count().await, 0);
    assert!(
        db.backlog_count("audit").await >= ROWS,
        "audit is still down and keeps its events"
    );
    assert_eq!(audit.delivered_count(), 0);
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn check_warns_about_a_paused_subscription_with_the_command_that_resumes_it() {
    let db = TestDb::with_schema(ITEMS).await;
    // check connects to each URL's port: let it find a receiver.
    let receiver = Receiver::start().await;
    let binary = WalhookBinary::new(
        &db.configure()
            .subscription(items("orders", &receiver.url("/orders")))
            .subscription(items("audit", &receiver.url("/audit")))
            .text(),
    );
    succeeds(&binary, &["setup"]).await;
    succeeds(&binary, &["pause", "orders"]).await;

    let output = binary.command(&["check"]).await;
    let text = both(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "a warning, not a problem: {text}"
    );
    let report = stdout(&output);
    let found = warnings(&report);
    assert!(
        found
            .iter()
            .any(|line| line.contains("\"orders\"") && line.contains("walhook resume orders")),
        "a warning naming orders and `walhook resume orders`: {text}"
    );
    assert!(
        !found
            .iter()
            .any(|line| line.contains("walhook resume audit")),
        "audit is not paused: {text}"
    );

    // Resumed, the warning goes.
    succeeds(&binary, &["resume", "orders"]).await;
    let output = binary.command(&["check"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    assert!(
        !warnings(&stdout(&output))
            .iter()
            .any(|line| line.contains("walhook resume")),
        "{}",
        both(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_about_waiting_events_of_a_subscription_the_config_no_longer_has() {
    const ROWS: i64 = 20;
    let db = TestDb::with_schema(ITEMS).await;
    let orders = Receiver::start().await;
    let gone = down_receiver().await;
    let walhook = Walhook::start(
        db.configure()
            .delivery("breaker", BREAKER)
            .subscription(items("orders", &orders.url("/orders")))
            .subscription(items("gone", &gone.url("/gone")))
            .build(),
    );
    db.wait_slot_active().await;
    fill_backlogs(&db, &["gone"], ROWS).await;
    orders
        .wait_for_delivered_count(ROWS as usize, Duration::from_secs(20))
        .await;
    walhook.stop().await.unwrap();
    assert_eq!(db.backlog_count("gone").await, ROWS);

    // The operator removes the subscription from the config.
    let binary = WalhookBinary::new(
        &db.configure()
            .delivery("breaker", BREAKER)
            .subscription(items("orders", &orders.url("/orders")))
            .text(),
    );
    let output = binary.command(&["check"]).await;
    let text = both(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "a warning, not a problem: {text}"
    );
    let report = stdout(&output);
    let found = warnings(&report);
    let line = found
        .iter()
        .find(|line| line.contains("\"gone\""))
        .unwrap_or_else(|| panic!("a warning naming gone: {text}"));
    assert!(
        line.split_whitespace().any(|word| word == ROWS.to_string()),
        "the {ROWS} waiting events in: {line}"
    );
    assert!(
        !found
            .iter()
            .any(|line| line.contains("backlog") && line.contains("\"orders\"")),
        "orders has nothing waiting: {text}"
    );
    assert_eq!(db.backlog_count("gone").await, ROWS, "check only reads");
    assert!(
        line.contains("walhook backlog purge --subscription gone"),
        "the fix is a command: {line}"
    );

    // That command works for a name the config no longer has…
    let output = succeeds(&binary, &["backlog", "purge", "--subscription", "gone"]).await;
    assert_eq!(numbers(&stdout(&output)), vec![ROWS], "{}", both(&output));
    assert_eq!(db.backlog_count("gone").await, 0);
    // …and a name with nothing waiting that the config does not have is a
    // typo: exit 2, naming the subscriptions it has.
    let output = binary
        .command(&["backlog", "purge", "--subscription", "gone"])
        .await;
    assert_eq!(output.status.code(), Some(2), "{}", both(&output));
    assert!(stderr(&output).contains("orders"), "{}", both(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_warns_about_a_backlog_older_than_warn_age_with_what_to_do() {
    const ROWS: i64 = 20;
    let db = TestDb::with_schema(ITEMS).await;
    let down = down_receiver().await;
    let healthy = Receiver::start().await;
    let config = db
        .configure()
        .delivery("breaker", BREAKER)
        .delivery("backlog", r#"{ warn_age = "1s" }"#)
        .subscription(items("down", &down.url("/down")))
        .subscription(items("healthy", &healthy.url("/healthy")));
    let binary = WalhookBinary::new(&config.text());
    let walhook = Walhook::start(config.build());
    db.wait_slot_active().await;
    fill_backlogs(&db, &["down"], ROWS).await;
    healthy
        .wait_for_delivered_count(ROWS as usize, Duration::from_secs(20))
        .await;

    let is_warning_about_down = |line: &str| line.starts_with("warning: down:");
    let output = wait_for_output(&binary, &["status"], Duration::from_secs(15), |text| {
        warnings(text).into_iter().any(is_warning_about_down)
    })
    .await;
    let text = both(&output);
    assert!(output.status.success(), "{text}");
    let table = stdout(&output);
    let found = warnings(&table);
    let line = found
        .iter()
        .find(|line| is_warning_about_down(line))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("walhook pause down"), "{line}");
    assert!(
        line.contains("walhook backlog purge --subscription down"),
        "{line}"
    );
    assert!(
        line.split_whitespace().any(|word| word == ROWS.to_string()),
        "the {ROWS} waiting events in: {line}"
    );
    assert!(
        !found.iter().any(|line| line.contains("healthy")),
        "healthy has no backlog: {text}"
    );

    // The same warning for machines, and from check.
    let report: Value =
        serde_json::from_slice(&succeeds(&binary, &["status", "--json"]).await.stdout).unwrap();
    let subscription = |name: &str| {
        report["subscriptions"]
            .as_array()
            .unwrap_or_else(|| panic!("subscriptions in {report}"))
            .iter()
            .find(|entry| entry["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {report}"))
            .clone()
    };
    let down_warnings = subscription("down")["warnings"].clone();
    assert!(
        down_warnings
            .as_array()
            .is_some_and(|all| all.len() == 1
                && all[0].as_str().unwrap_or("").contains("walhook pause down")),
        "{report}"
    );
    assert_eq!(subscription("healthy")["warnings"], serde_json::json!([]));
    let output = binary.command(&["check"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    assert!(
        warnings(&stdout(&output))
            .iter()
            .any(|line| line.contains("\"down\"") && line.contains("walhook pause down")),
        "{}",
        both(&output)
    );
    walhook.stop().await.unwrap();
}
