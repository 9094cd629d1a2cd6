//! What an operator has to act on a dead letter: the receiver's own answer
//! kept with it (`dead-letters show`), the letters of a time window
//! (`--since` / `--until` on list, replay and purge), and the count per
//! subscription on `/metrics` beside the process's own figures.

use std::time::Duration;

use crate::support::config::subscription;
use crate::support::receiver::Receiver;
use crate::support::{
    TestDb, Walhook, WalhookBinary, free_port, get, labeled_sample, sample, stdout, wait_until,
};

/// The receiver's explanation, then more than walhook keeps of it.
fn refusal() -> String {
    format!(
        "inventory rejected order: sku 42 is unknown\n{}",
        "x".repeat(10 * 1024)
    )
}

/// A database with `items` and a config whose subscription `rows` gives up
/// after two attempts, quickly.
async fn setup(receiver: &Receiver) -> (TestDb, String) {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY, note text)").await;
    let config = subscription("rows", &receiver.url("/rows"))
        .tables(&["items"])
        .events(&["insert"])
        .to_string();
    (db, config)
}

#[tokio::test]
async fn a_parked_letter_keeps_the_receivers_answer_and_is_counted_on_metrics() {
    let receiver = Receiver::start().await;
    receiver.respond_with(500);
    receiver.respond_with_body(refusal());
    let (db, subscriptions) = setup(&receiver).await;
    let admin = format!("127.0.0.1:{}", free_port());
    let config = db
        .configure()
        .delivery("max_attempts", "2")
        .delivery("backoff", r#"{ initial = "10ms", max = "20ms" }"#)
        .admin(&admin)
        .subscription(&subscriptions)
        .build();
    let walhook = Walhook::start(config);
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items VALUES (1, 'one'), (2, 'two')")
        .await
        .unwrap();
    wait_until("both rows parked", Duration::from_secs(30), || async {
        db.dead_letter_count().await == 2
    })
    .await;

    let (status, metrics) = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(
        labeled_sample(
            &metrics,
            "walhook_dead_letters",
            &[("subscription", "rows")]
        ),
        Some(2.0),
        "{metrics}"
    );
    let rss = sample(&metrics, "process_resident_memory_bytes").expect("rss");
    assert!((1e6..64e9).contains(&rss), "rss {rss}");
    let cpu = sample(&metrics, "process_cpu_seconds_total").expect("cpu");
    assert!(cpu > 0.0, "cpu {cpu}");
    let fds = sample(&metrics, "process_open_fds").expect("open fds");
    assert!((4.0..10_000.0).contains(&fds), "fds {fds}");
    assert!(metrics.ends_with("# EOF\n"), "one exposition, one EOF");

    // Purged outside the daemon: the next scrape (a second later) says so.
    db.client
        .batch_execute("DELETE FROM walhook.dead_letters WHERE event_id = (SELECT min(event_id) FROM walhook.dead_letters)")
        .await
        .unwrap();
    wait_until(
        "the gauge to follow the table",
        Duration::from_secs(10),
        || async {
            let (_, metrics) = get(&format!("http://{admin}/metrics")).await;
            labeled_sample(
                &metrics,
                "walhook_dead_letters",
                &[("subscription", "rows")],
            ) == Some(1.0)
        },
    )
    .await;
    walhook.stop().await.unwrap();

    let binary = WalhookBinary::new(&db.config_text(&subscriptions));
    let shown = binary
        .command(&["dead-letters", "show", &remaining_id(&db).await])
        .await;
    let text = stdout(&shown);
    assert!(shown.status.success(), "{shown:?}");
    assert!(text.contains("last status   500"), "{text}");
    assert!(text.contains("attempts      2"), "{text}");
    assert!(
        text.contains("last response (the start of its body, at most 4096 bytes):\ninventory rejected order: sku 42 is unknown\n"),
        "{text}"
    );
    // Kept: 4 KiB of the answer, not the 10 KiB sent.
    let kept: Option<String> = db
        .client
        .query_one("SELECT last_response FROM walhook.dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept.map(|body| body.len()), Some(4096));
}

async fn remaining_id(db: &TestDb) -> String {
    db.client
        .query_one("SELECT id FROM walhook.dead_letters", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        .to_string()
}

#[tokio::test]
async fn since_and_until_select_letters_by_their_last_attempt() {
    let receiver = Receiver::start().await;
    receiver.respond_with(422);
    let (db, subscriptions) = setup(&receiver).await;
    let walhook = Walhook::start(db.config(&subscriptions));
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items VALUES (1, 'old'), (2, 'new')")
        .await
        .unwrap();
    wait_until("both rows parked", Duration::from_secs(30), || async {
        db.dead_letter_count().await == 2
    })
    .await;
    walhook.stop().await.unwrap();
    // One letter last tried three hours ago.
    db.client
        .batch_execute(
            "UPDATE walhook.dead_letters SET last_attempt_at = now() - interval '3 hours', \
             first_attempt_at = now() - interval '3 hours' WHERE payload->'record'->>'note' = 'old'",
        )
        .await
        .unwrap();
    let event_of = |note: &'static str| {
        let db = &db;
        async move {
            db.client
                .query_one(
                    "SELECT event_id FROM walhook.dead_letters WHERE payload->'record'->>'note' = $1",
                    &[&note],
                )
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    let (old, new) = (event_of("old").await, event_of("new").await);
    let binary = WalhookBinary::new(&db.config_text(&subscriptions));

    let recent = stdout(
        &binary
            .command(&["dead-letters", "list", "--since", "2h"])
            .await,
    );
    assert!(recent.contains(&new) && !recent.contains(&old), "{recent}");
    assert!(recent.contains("1 dead letter(s)"), "{recent}");
    let older = stdout(
        &binary
            .command(&["dead-letters", "list", "--until", "2h"])
            .await,
    );
    assert!(older.contains(&old) && !older.contains(&new), "{older}");
    // An RFC 3339 time with an offset: far in the past selects both.
    let both = stdout(
        &binary
            .command(&[
                "dead-letters",
                "list",
                "--since",
                "2000-01-01T02:00:00+02:00",
            ])
            .await,
    );
    assert!(both.contains("2 dead letter(s)"), "{both}");

    let dry = binary
        .command(&["dead-letters", "purge", "--until", "2h", "--dry-run"])
        .await;
    assert!(dry.status.success(), "{dry:?}");
    assert!(
        stdout(&dry).contains(&format!("would purge {old}")),
        "{dry:?}"
    );
    assert!(!stdout(&dry).contains(&new), "{dry:?}");
    let purged = binary
        .command(&["dead-letters", "purge", "--until", "2h"])
        .await;
    assert!(purged.status.success(), "{purged:?}");
    assert_eq!(db.dead_letter_count().await, 1);

    // Nothing in the window: a non-zero exit that says what was asked.
    let none = binary
        .command(&[
            "dead-letters",
            "replay",
            "--subscription",
            "rows",
            "--until",
            "2h",
        ])
        .await;
    assert_eq!(none.status.code(), Some(1), "{none:?}");
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("last tried before"),
        "{none:?}"
    );
    let bad = binary
        .command(&["dead-letters", "list", "--since", "soon"])
        .await;
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");

    // A schema from before the kept answers (and a role that may not add
    // the column): letters are parked, listed and shown without them.
    db.client
        .batch_execute("ALTER TABLE walhook.dead_letters DROP COLUMN last_response")
        .await
        .unwrap();
    let config = db
        .configure()
        .source("auto_setup", "false")
        .subscription(&subscriptions)
        .build();
    let walhook = Walhook::start(config);
    db.wait_slot_active().await;
    db.client
        .batch_execute("INSERT INTO items VALUES (3, 'older schema')")
        .await
        .unwrap();
    wait_until("the row parked", Duration::from_secs(30), || async {
        db.dead_letter_count().await == 2
    })
    .await;
    walhook.stop().await.unwrap();
    let listed = binary
        .command(&["dead-letters", "list", "--since", "1h"])
        .await;
    assert!(stdout(&listed).contains("2 dead letter(s)"), "{listed:?}");
    let shown = binary
        .command(&["dead-letters", "show", &event_of("older schema").await])
        .await;
    assert!(shown.status.success(), "{shown:?}");
    assert!(
        stdout(&shown).contains("last response: none kept"),
        "{shown:?}"
    );
}
