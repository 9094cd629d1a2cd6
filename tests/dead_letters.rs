//! `walhook dead-letters list / replay / purge` against parked events: a
//! refused event is listed, replays with its original id once the receiver is
//! fixed, and is gone afterwards; a batched subscription's letter comes back
//! as a batch of one carrying the event's own id, as it did live; purge
//! removes without sending.

use std::time::Duration;

use serde_json::Value;

use crate::support::config::{Subscription, subscription};
use crate::support::receiver::{Received, Receiver};
use crate::support::{TestDb, Walhook, WalhookBinary, stdout, wait_until};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_c29tZW9uZS1lbHNlcy1zZWNyZXQ=";

/// Inserts into `items`, signed, to `/<name>`.
fn items(name: &str, receiver: &Receiver) -> Subscription {
    subscription(name, &receiver.url(&format!("/{name}")))
        .tables(&["items"])
        .events(&["insert"])
        .secret(SECRET)
}

/// Inserts `rows` rows that the receiver refuses with 422 and waits until
/// `letters` dead letters are parked.
async fn park(db: &TestDb, receiver: &Receiver, config: &str, rows: i64, letters: i64) {
    receiver.respond_with(422);
    let walhook = Walhook::start(db.config(config));
    db.wait_slot_active().await;
    for id in 1..=rows {
        db.client
            .batch_execute(&format!("INSERT INTO items VALUES ({id}, 'row {id}')"))
            .await
            .unwrap();
    }
    wait_until("the rows to be parked", Duration::from_secs(30), || async {
        db.dead_letter_count().await == letters
    })
    .await;
    walhook.stop().await.unwrap();
}

/// A database with the `items` table the tests park, and a receiver.
async fn items_db() -> (TestDb, Receiver) {
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY, payload text)").await;
    (db, Receiver::start().await)
}

#[tokio::test]
async fn a_refused_event_is_listed_replayed_with_its_id_and_then_gone() {
    let (db, receiver) = items_db().await;
    let config = items("rows", &receiver).to_string();
    park(&db, &receiver, &config, 3, 3).await;
    let refused = receiver.requests();
    let refused_ids: Vec<String> = refused
        .iter()
        .map(|request| request.headers["webhook-id"].clone())
        .collect();

    let binary = WalhookBinary::new(&db.config_text(&config));
    let listed = binary.command(&["dead-letters", "list"]).await;
    assert!(listed.status.success(), "{listed:?}");
    let table = stdout(&listed);
    for id in &refused_ids {
        assert!(table.contains(id.as_str()), "{id} listed in:\n{table}");
    }
    assert!(table.contains("422"), "{table}");
    assert!(table.contains("3 dead letter(s)"), "{table}");

    let listed = binary.command(&["dead-letters", "list", "--json"]).await;
    let letters: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 3);
    assert_eq!(letters[0]["subscription"], "rows");
    assert_eq!(letters[0]["last_status"], 422);
    assert_eq!(letters[0]["payload"]["record"]["id"], 1);

    // No selector: replay refuses rather than guessing.
    let refused_replay = binary.command(&["dead-letters", "replay"]).await;
    assert_eq!(refused_replay.status.code(), Some(2));

    // Still refused: the letters stay, with one more attempt each, and the
    // failure holds the rest back to keep their order.
    let failing = binary
        .command(&["dead-letters", "replay", "--subscription", "rows"])
        .await;
    assert_eq!(failing.status.code(), Some(1), "{failing:?}");
    assert_eq!(db.dead_letter_count().await, 3);
    let before = receiver.requests().len();

    receiver.respond_with(200);
    let replayed = binary.command(&["dead-letters", "replay", "--all"]).await;
    assert!(replayed.status.success(), "{replayed:?}");
    assert!(stdout(&replayed).contains("replayed 3, failed 0"));
    let replays = &receiver.requests()[before..];
    assert_eq!(replays.len(), 3);
    let parked_order: Vec<&str> = letters
        .iter()
        .map(|letter| letter["event_id"].as_str().unwrap())
        .collect();
    for (replay, parked_id) in replays.iter().zip(parked_order) {
        // In the order they were parked, with the same id and the same body,
        // freshly signed.
        assert_eq!(replay.headers["webhook-id"], parked_id);
        let original = refused
            .iter()
            .find(|request| request.headers["webhook-id"] == parked_id)
            .unwrap();
        assert_eq!(replay.body, original.body);
        assert!(
            replay.signature_verifies(SECRET),
            "a replay's Standard Webhooks signature verifies with the subscription's secret: {replay:?}"
        );
        let signed_at =
            |request: &Received| -> i64 { request.headers["webhook-timestamp"].parse().unwrap() };
        assert!(signed_at(replay) >= signed_at(original), "signed anew");
    }
    // The check can fail: another key, or a changed body, does not verify.
    assert!(!replays[0].signature_verifies(OTHER_SECRET));
    let mut tampered = replays[0].clone();
    tampered.body = replays[0].body.slice(..replays[0].body.len() - 1);
    assert!(!tampered.signature_verifies(SECRET));
    assert_eq!(db.dead_letter_count().await, 0);
    let listed = binary.command(&["dead-letters", "list"]).await;
    assert!(stdout(&listed).contains("0 dead letter(s)"));
}

/// A batch of one, live or replayed: the body a batch receiver parses,
/// `{"events": [event]}`, with `webhook-id` = the event's own `id`, signed.
fn assert_batch_of_one(request: &Received) -> Value {
    let body = request.json();
    assert_eq!(body.as_object().map(|body| body.len()), Some(1), "{body}");
    let events = body["events"].as_array().expect("a batch envelope");
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(
        request.headers["webhook-id"], events[0]["id"],
        "a batch of one carries its event's id"
    );
    assert!(request.signature_verifies(SECRET), "{request:?}");
    events[0].clone()
}

#[tokio::test]
async fn a_batched_subscriptions_letter_replays_as_a_batch_of_one_with_the_events_id() {
    let (db, receiver) = items_db().await;
    let config = items("batched", &receiver)
        .with("batch", r#"{ max_events = 10, max_wait = "50ms" }"#)
        .to_string();
    receiver.respond_with(422);
    let walhook = Walhook::start(db.config(&config));
    db.wait_slot_active().await;
    // One row alone: live, it goes as a batch of one.
    db.client
        .batch_execute("INSERT INTO items VALUES (1, 'alone')")
        .await
        .unwrap();
    wait_until("the row to be parked", Duration::from_secs(30), || async {
        db.dead_letter_count().await == 1
    })
    .await;
    let live = receiver.requests();
    assert_eq!(live.len(), 1, "a 422 is not retried");
    let alone = assert_batch_of_one(&live[0]);
    assert_eq!(alone["record"]["id"], 1);
    // Two rows of one transaction: however they are grouped, a batch of
    // several has the whb_ id of its events, a batch of one its event's id.
    db.client
        .batch_execute("INSERT INTO items VALUES (2, 'pair'), (3, 'pair')")
        .await
        .unwrap();
    wait_until("the rows to be parked", Duration::from_secs(30), || async {
        db.dead_letter_count().await == 3
    })
    .await;
    walhook.stop().await.unwrap();
    let mut parked = vec![alone];
    for request in &receiver.requests()[1..] {
        let events = request.events();
        if events.len() == 1 {
            assert_batch_of_one(request);
        } else {
            let webhook_id = &request.headers["webhook-id"];
            assert!(webhook_id.starts_with("whb_"), "{webhook_id}");
            assert!(events.iter().all(|event| event["id"] != *webhook_id));
            assert!(request.signature_verifies(SECRET), "{request:?}");
        }
        parked.extend(events);
    }
    assert_eq!(parked.len(), 3);

    receiver.respond_with(200);
    let before = receiver.requests().len();
    let binary = WalhookBinary::new(&db.config_text(&config));
    let replayed = binary.command(&["dead-letters", "replay", "--all"]).await;
    assert!(replayed.status.success(), "{replayed:?}");
    let replays = &receiver.requests()[before..];
    assert_eq!(replays.len(), 3, "each letter alone");
    let mut replayed_ids = Vec::new();
    for replay in replays {
        // The parked event unchanged, in the envelope, under its own id.
        // (Lanes park concurrently, so match by id, not by position.)
        let event = assert_batch_of_one(replay);
        let original = parked.iter().find(|parked| parked["id"] == event["id"]);
        assert_eq!(original, Some(&event));
        replayed_ids.push(event["id"].clone());
    }
    replayed_ids.sort_by_key(Value::to_string);
    replayed_ids.dedup();
    assert_eq!(replayed_ids.len(), 3, "every letter once");
    // The first row went alone live: a receiver that dedupes on webhook-id
    // sees the same id again.
    assert_eq!(
        replays[0].headers["webhook-id"],
        live[0].headers["webhook-id"]
    );
    // The check can fail: a changed body does not verify.
    let mut tampered = replays[0].clone();
    tampered.body = replays[0].body.slice(..replays[0].body.len() - 1);
    assert!(!tampered.signature_verifies(SECRET));
    assert_eq!(db.dead_letter_count().await, 0);
}

#[tokio::test]
async fn purge_removes_only_what_it_selects_and_refuses_without_a_selector() {
    let (db, receiver) = items_db().await;
    let config = format!(
        "{}{}",
        items("first", &receiver),
        items("second", &receiver)
    );
    // Two subscriptions × two rows.
    park(&db, &receiver, &config, 2, 4).await;
    let binary = WalhookBinary::new(&db.config_text(&config));

    let refused = binary.command(&["dead-letters", "purge"]).await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--all"));
    assert_eq!(db.dead_letter_count().await, 4);

    let one: String = db
        .client
        .query_one(
            "SELECT event_id FROM walhook.dead_letters WHERE subscription = 'second' ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let purged = binary
        .command(&["dead-letters", "purge", "--id", &one])
        .await;
    assert!(purged.status.success(), "{purged:?}");
    assert!(stdout(&purged).contains("purged 1 dead letter(s)"));
    assert_eq!(db.dead_letter_count().await, 3);

    let purged = binary
        .command(&["dead-letters", "purge", "--subscription", "first"])
        .await;
    assert!(stdout(&purged).contains("purged 2 dead letter(s)"));
    let listed = binary
        .command(&["dead-letters", "list", "--subscription", "second"])
        .await;
    assert!(stdout(&listed).contains("1 dead letter(s)"));

    // Everything: only when confirmed (no terminal here, so --yes); a dry
    // run says what would go and deletes nothing.
    let unconfirmed = binary.command(&["dead-letters", "purge", "--all"]).await;
    assert_eq!(unconfirmed.status.code(), Some(2), "{unconfirmed:?}");
    assert!(String::from_utf8_lossy(&unconfirmed.stderr).contains("--yes"));
    let dry = binary
        .command(&["dead-letters", "purge", "--all", "--dry-run"])
        .await;
    assert!(
        stdout(&dry).contains("would purge 1 dead letter(s)"),
        "{dry:?}"
    );
    assert_eq!(db.dead_letter_count().await, 1);
    let purged = binary
        .command(&["dead-letters", "purge", "--all", "--yes"])
        .await;
    assert!(stdout(&purged).contains("purged 1 dead letter(s)"));
    assert_eq!(db.dead_letter_count().await, 0);

    // A selector that matches nothing says so and fails.
    for command in ["purge", "replay"] {
        let nothing = binary
            .command(&["dead-letters", command, "--subscription", "first"])
            .await;
        assert_eq!(nothing.status.code(), Some(1), "{command}: {nothing:?}");
        assert!(
            String::from_utf8_lossy(&nothing.stderr).contains("no dead letter matches"),
            "{command}: {nothing:?}"
        );
    }
}

#[tokio::test]
async fn show_prints_one_letter_whole_and_a_dry_replay_sends_nothing() {
    let (db, receiver) = items_db().await;
    let config = items("rows", &receiver).to_string();
    park(&db, &receiver, &config, 1, 1).await;
    let binary = WalhookBinary::new(&db.config_text(&config));
    let (id, event_id): (i64, String) = db
        .client
        .query_one("SELECT id, event_id FROM walhook.dead_letters", &[])
        .await
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    let listed = stdout(&binary.command(&["dead-letters", "list"]).await);
    assert!(
        listed.contains("INSERT") && listed.contains("public.items"),
        "{listed}"
    );
    for key in [id.to_string(), event_id.clone()] {
        let shown = binary.command(&["dead-letters", "show", &key]).await;
        let text = stdout(&shown);
        assert!(shown.status.success(), "{shown:?}");
        assert!(text.contains(&event_id), "{text}");
        assert!(text.contains("422"), "{text}");
        assert!(text.contains("seal          matches"), "{text}");
        assert!(
            text.contains("\"note\": \"row 1\"") || text.contains("row 1"),
            "{text}"
        );
    }
    let missing = binary
        .command(&["dead-letters", "show", "wh_nothing"])
        .await;
    assert_eq!(missing.status.code(), Some(1));

    let before = receiver.requests().len();
    receiver.respond_with(200);
    let dry = binary
        .command(&["dead-letters", "replay", "--all", "--dry-run"])
        .await;
    assert!(dry.status.success(), "{dry:?}");
    assert!(stdout(&dry).contains(&format!("would replay {event_id}")));
    assert_eq!(receiver.requests().len(), before, "nothing sent");
    assert_eq!(db.dead_letter_count().await, 1, "nothing deleted");
}
