//! Rows walhook reads back from its own tables are sent only when walhook
//! wrote them: a dead letter inserted or edited by someone with write access
//! to `walhook.dead_letters` is refused by `dead-letters replay` (and sent
//! with `--trust-unsealed` only), and a row slipped into `walhook.backlog` is
//! parked as an unsealed dead letter, never sent, while the real events
//! around it are delivered. `check` warns when the schema predates seals.

use std::time::Duration;

use crate::support::config::{Subscription, subscription};
use crate::support::receiver::Receiver;
use crate::support::{TestDb, Walhook, WalhookBinary, stderr, stdout, wait_until};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, note text NOT NULL)";
const FORGED: &str = r#"{"forged":true,"table":"items","op":"delete"}"#;

/// Inserts into `items`, signed, in commit order.
fn items(name: &str, receiver: &Receiver) -> Subscription {
    subscription(name, &receiver.url(&format!("/{name}")))
        .tables(&["items"])
        .events(&["insert"])
        .ordering("strict")
        .secret(SECRET)
}

/// The bodies the receiver got, as text.
fn bodies(receiver: &Receiver) -> Vec<String> {
    receiver
        .requests()
        .iter()
        .map(|request| String::from_utf8_lossy(&request.body).into_owned())
        .collect()
}

#[tokio::test]
async fn a_forged_or_edited_dead_letter_is_refused_and_kept_unless_vouched_for() {
    let db = TestDb::with_schema(ITEMS).await;
    let receiver = Receiver::start().await;
    let config = items("rows", &receiver).to_string();
    receiver.respond_with(422);
    let walhook = Walhook::start(db.config(&config));
    db.wait_slot_active().await;
    db.insert_items(1, 2).await;
    wait_until("two dead letters", Duration::from_secs(30), || async {
        db.dead_letter_count().await == 2
    })
    .await;
    walhook.stop().await.unwrap();
    let parked: Vec<String> = db
        .client
        .query("SELECT event_id FROM walhook.dead_letters ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();

    // Someone with write access edits the second letter and adds a third
    // that walhook never parked, copying a real letter's seal.
    db.client
        .batch_execute(&format!(
            "UPDATE walhook.dead_letters SET payload = '{FORGED}' WHERE event_id = '{}';
             INSERT INTO walhook.dead_letters
                 (subscription, event_id, payload, last_error, attempts, first_attempt_at, mac)
             SELECT 'rows', 'wh_forged', '{FORGED}', 'x', 1, now(), mac
             FROM walhook.dead_letters WHERE event_id = '{}'",
            parked[1], parked[0]
        ))
        .await
        .unwrap();

    receiver.respond_with(200);
    let before = receiver.requests().len();
    let binary = WalhookBinary::new(&db.config_text(&config));
    let replay = binary.command(&["dead-letters", "replay", "--all"]).await;
    let text = format!("{}{}", stdout(&replay), stderr(&replay));
    assert_eq!(replay.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("refused  {}", parked[1])),
        "the edited letter is refused by name: {text}"
    );
    assert!(text.contains("seal does not match"), "{text}");
    assert!(
        text.contains("--trust-unsealed"),
        "says how to override: {text}"
    );
    let sent = &receiver.requests()[before..];
    assert_eq!(sent.len(), 1, "only the untouched letter went: {text}");
    assert_eq!(sent[0].headers["webhook-id"], parked[0]);
    assert!(sent[0].signature_verifies(SECRET));
    assert!(
        !bodies(&receiver).iter().any(|body| body.contains("forged")),
        "no forged payload reached the receiver"
    );
    assert_eq!(db.dead_letter_count().await, 2, "refused letters are kept");

    // The operator checked them and vouches: now they go, in order.
    let vouched = binary
        .command(&["dead-letters", "replay", "--all", "--trust-unsealed"])
        .await;
    assert!(vouched.status.success(), "{}", stderr(&vouched));
    let sent = &receiver.requests()[before + 1..];
    let ids: Vec<&str> = sent
        .iter()
        .map(|request| request.headers["webhook-id"].as_str())
        .collect();
    assert_eq!(ids, vec![parked[1].as_str(), "wh_forged"]);
    assert_eq!(db.dead_letter_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_slipped_into_the_backlog_is_parked_unsealed_and_never_sent() {
    const ROWS: i64 = 5;
    let db = TestDb::with_schema(ITEMS).await;
    let receiver = Receiver::start().await;
    receiver.respond_with(503);
    let config = db
        .configure()
        .delivery(
            "breaker",
            r#"{ failures = 3, window = "30s", probe_interval = "300ms" }"#,
        )
        .subscription(items("rows", &receiver));
    let binary = WalhookBinary::new(&config.text());
    let walhook = Walhook::start(config.build());
    db.wait_slot_active().await;
    db.insert_items(1, ROWS).await;
    wait_until(
        "the events in the backlog",
        Duration::from_secs(20),
        || async { db.backlog_count("rows").await == ROWS },
    )
    .await;

    // A row walhook did not write, placed among the real ones (its seal
    // copied from a real row, which does not make it valid).
    db.client
        .batch_execute(&format!(
            "INSERT INTO walhook.backlog (subscription, commit_lsn, ordinal, event_id,
                 ordering_key, commit_time, payload, mac)
             SELECT subscription, commit_lsn, 1000000, 'wh_forged', ordering_key, commit_time,
                 '{FORGED}', mac
             FROM walhook.backlog WHERE subscription = 'rows'
             ORDER BY commit_lsn, ordinal LIMIT 1"
        ))
        .await
        .unwrap();

    receiver.respond_with(200);
    receiver
        .wait_for_delivered_count(ROWS as usize, Duration::from_secs(20))
        .await;
    wait_until("the backlog to drain", Duration::from_secs(20), || async {
        db.backlog_count("rows").await == 0
    })
    .await;
    assert!(
        !bodies(&receiver).iter().any(|body| body.contains("forged")),
        "the slipped-in row is never sent"
    );
    assert_eq!(receiver.delivered_count(), ROWS as usize);
    let row = db
        .client
        .query_one(
            "SELECT payload::text, last_error, mac IS NULL FROM walhook.dead_letters",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), FORGED);
    let error: String = row.get(1);
    assert!(error.contains("seal does not match"), "{error}");
    assert!(
        row.get::<_, bool>(2),
        "parked unsealed, so no replay vouches for it"
    );
    walhook.stop().await.unwrap();

    let replay = binary.command(&["dead-letters", "replay", "--all"]).await;
    assert_eq!(replay.status.code(), Some(1), "{}", stdout(&replay));
    assert!(stdout(&replay).contains("refused"), "{}", stdout(&replay));
    assert_eq!(receiver.delivered_count(), ROWS as usize);
}

#[tokio::test]
async fn check_warns_when_the_schema_predates_row_seals() {
    let db = TestDb::with_schema(ITEMS).await;
    let receiver = Receiver::start().await;
    let binary = WalhookBinary::new(&db.config_text(items("rows", &receiver)));
    let setup = binary.command(&["setup"]).await;
    assert!(setup.status.success(), "{}", stderr(&setup));
    let sealed = binary.command(&["check"]).await;
    assert!(
        !stdout(&sealed).contains("no `mac` column"),
        "{}",
        stdout(&sealed)
    );

    db.client
        .batch_execute("ALTER TABLE walhook.dead_letters DROP COLUMN mac")
        .await
        .unwrap();
    let old = binary.command(&["check"]).await;
    let report = stdout(&old);
    assert_eq!(
        old.status.code(),
        Some(0),
        "a warning, not a problem: {report}"
    );
    assert!(
        report.contains("walhook.dead_letters has no `mac` column"),
        "{report}"
    );
    assert!(report.contains("walhook setup"), "{report}");

    // `setup` adds it back.
    let setup = binary.command(&["setup"]).await;
    assert!(setup.status.success(), "{}", stderr(&setup));
    let again = binary.command(&["check"]).await;
    assert!(
        !stdout(&again).contains("no `mac` column"),
        "{}",
        stdout(&again)
    );
}

#[tokio::test]
async fn a_key_rolls_without_refusing_what_the_old_one_sealed() {
    const NEW: &str = "whsec_bmV3LWtleS1mb3ItdGhlLXJvbGwtdGVzdA==";
    let db = TestDb::with_schema(ITEMS).await;
    let receiver = Receiver::start().await;
    // Parked under the old key alone.
    receiver.respond_with(422);
    let old_only = items("rows", &receiver).to_string();
    let walhook = Walhook::start(db.config(&old_only));
    db.wait_slot_active().await;
    db.insert_items(1, 1).await;
    wait_until("a dead letter", Duration::from_secs(30), || async {
        db.dead_letter_count().await == 1
    })
    .await;
    walhook.stop().await.unwrap();
    receiver.respond_with(200);

    // The new key alone: the old seal does not verify, so it is refused.
    let new_only = subscription("rows", &receiver.url("/rows"))
        .tables(&["items"])
        .events(&["insert"])
        .secret(NEW)
        .to_string();
    let replay = WalhookBinary::new(&db.config_text(&new_only))
        .command(&["dead-letters", "replay", "--all"])
        .await;
    assert_eq!(replay.status.code(), Some(1), "{}", stdout(&replay));
    assert!(stdout(&replay).contains("refused"), "{}", stdout(&replay));

    // While rolling, `secrets = [new, old]`: the old seal verifies, and the
    // request carries both signatures, so a receiver on either key takes it.
    let rolling = subscription("rows", &receiver.url("/rows"))
        .tables(&["items"])
        .events(&["insert"])
        .with("secrets", &format!("[\"{NEW}\", \"{SECRET}\"]"))
        .to_string();
    let before = receiver.requests().len();
    let replay = WalhookBinary::new(&db.config_text(&rolling))
        .command(&["dead-letters", "replay", "--all"])
        .await;
    assert!(replay.status.success(), "{}", stdout(&replay));
    let sent = &receiver.requests()[before..];
    assert_eq!(sent.len(), 1);
    assert!(sent[0].signature_verifies(NEW), "{:?}", sent[0].headers);
    assert!(sent[0].signature_verifies(SECRET), "{:?}", sent[0].headers);
    assert_eq!(db.dead_letter_count().await, 0);
}
