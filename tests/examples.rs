//! The receivers of `examples/` (notify, integrate, automate) end to end:
//! each example's own `schema.sql` and `walhook.toml`, the walhook binary
//! running that file, and the example's binary as the receiver, then what a
//! user of the example would check — the chat message, the copied rows, the
//! stock. Exactly-once on the receiver's side is proven with real
//! redeliveries: a [`Relay`] between walhook and the receiver loses one 2xx
//! answer on its way back, so walhook sends the same webhook again, and the
//! test replays a delivered request once more itself. Each test also runs
//! `walhook check` on the example's file. What the receivers' code looks
//! like is the examples' business; these tests hold them to their READMEs.
//!
//! The example binaries are built by `cargo test` (it builds examples); a
//! run that selects this test binary alone (`cargo test --test integration
//! examples`) builds the ones that are missing or older than their sources.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

use crate::support::examples::{ExampleReceiver, ExampleWalhook, example_file};
use crate::support::receiver::Receiver;
use crate::support::relay::Relay;
use crate::support::{TestDb, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

/// A signing secret for the examples' subscriptions.
fn secret() -> String {
    format!("whsec_{}", STANDARD.encode([0x5a; 32]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_posts_a_chat_message_for_each_real_signup() {
    let db = TestDb::with_schema(&example_file("notify", "schema.sql")).await;
    let secret = secret();
    let authorization = "Bearer notify-test-token";
    // The chat service: records what it gets, and fails each message's first
    // attempt, which walhook must retry through the receiver.
    let chat = Receiver::start().await;
    chat.fail_first_attempts(1);
    let chat_url = chat.url("/services/T000/B000/XXXX");
    let notify = ExampleReceiver::start(
        "notify",
        &[
            ("NOTIFY_WEBHOOK_SECRET", secret.as_str()),
            ("NOTIFY_AUTHORIZATION", authorization),
            ("CHAT_WEBHOOK_URL", chat_url.as_str()),
        ],
    )
    .await;

    let walhook = ExampleWalhook::new("notify", &db);
    let env = [
        ("NOTIFY_RECEIVER_URL", notify.url.as_str()),
        ("NOTIFY_WEBHOOK_SECRET", secret.as_str()),
        ("NOTIFY_AUTHORIZATION", authorization),
    ];
    let _run = walhook.run(&env);
    db.wait_slot_active().await;
    walhook.check(&env).await;

    for (email, name, is_test) in [
        ("qa-bot@team.test", "QA bot", true),
        ("ada@example.com", "Ada Lovelace", false),
        ("grace@example.com", "Grace Hopper", false),
    ] {
        db.client
            .execute(
                "INSERT INTO signups (email, name, is_test) VALUES ($1, $2, $3)",
                &[&email, &name, &is_test],
            )
            .await
            .unwrap();
    }
    let last_commit = db.current_wal().await;
    wait_for_confirmed(&db, last_commit, || walhook.log() + &notify.log()).await;

    // Each real signup once, in Slack's format; not the test account.
    let messages = chat_messages(&chat);
    assert_eq!(
        messages,
        [
            json!({"text": "New signup: Ada Lovelace <ada@example.com>"}),
            json!({"text": "New signup: Grace Hopper <grace@example.com>"}),
        ],
        "receiver log:\n{}",
        notify.log()
    );
    let failed = chat.requests().iter().filter(|r| r.status == 503).count();
    assert_eq!(failed, 2, "each message's first attempt failed");
    assert!(chat.requests().iter().all(|request| {
        request.headers.get("content-type").map(String::as_str) == Some("application/json")
    }));

    // The receiver's own checks, with a request it accepts as the control.
    chat.fail_first_attempts(0);
    let body = json!({"type": "INSERT", "record": {"name": "Edsger", "email": "ew@example.com"}})
        .to_string();
    let now = unix_now();
    let accepted = post_signed(&notify.url, &secret, now, &body, Some(authorization)).await;
    assert_eq!(accepted, 204);
    let rejected = [
        (
            "no Authorization",
            post_signed(&notify.url, &secret, now, &body, None).await,
        ),
        (
            "another Authorization",
            post_signed(&notify.url, &secret, now, &body, Some("Bearer guess")).await,
        ),
        (
            "another secret",
            post_signed(
                &notify.url,
                &other_secret(),
                now,
                &body,
                Some(authorization),
            )
            .await,
        ),
        (
            "a timestamp ten minutes old",
            post_signed(&notify.url, &secret, now - 600, &body, Some(authorization)).await,
        ),
    ];
    for (what, status) in rejected {
        assert_eq!(status, 401, "{what}");
    }
    assert_eq!(
        chat_messages(&chat).len(),
        3,
        "only the accepted one posted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrate_mirrors_orders_into_a_second_database_exactly_once() {
    let db = TestDb::with_schema(&example_file("integrate", "schema.sql")).await;
    let target = TestDb::with_schema(&example_file("integrate", "target.sql")).await;
    let secret = secret();
    let integrate = ExampleReceiver::start(
        "integrate",
        &[
            ("INTEGRATE_WEBHOOK_SECRET", secret.as_str()),
            ("TARGET_DATABASE_URL", target.url.as_str()),
        ],
    )
    .await;
    // The receiver's 2xx for the update is lost on the way back: walhook
    // sends it again, after the receiver committed it.
    let relay = Relay::start(&integrate.url).await;
    relay.lose_answer_to(|event| event["type"] == "UPDATE");

    let walhook = ExampleWalhook::new("integrate", &db);
    let env = [
        ("INTEGRATE_RECEIVER_URL", relay.url.as_str()),
        ("INTEGRATE_WEBHOOK_SECRET", secret.as_str()),
    ];
    let _run = walhook.run(&env);
    db.wait_slot_active().await;
    walhook.check(&env).await;

    db.client
        .batch_execute(
            "INSERT INTO orders VALUES (1, 'ada', 12.50, 'pending'), (2, 'grace', 99.99, 'pending'), \
                                       (3, 'linus', 0.10, 'pending');
             UPDATE orders SET status = 'paid', amount = 100.00 WHERE id = 2;
             DELETE FROM orders WHERE id = 3;
             INSERT INTO orders VALUES (4, 'edsger', 7.00, 'pending');",
        )
        .await
        .unwrap();
    let last_commit = db.current_wal().await;
    wait_for_confirmed(&db, last_commit, || walhook.log() + &integrate.log()).await;

    // The copy is the orders, digits and all.
    let orders = "SELECT coalesce(jsonb_agg(to_jsonb(o) ORDER BY id), '[]')::text FROM orders o";
    let copied: String = target.client.query_one(orders, &[]).await.unwrap().get(0);
    let source: String = db.client.query_one(orders, &[]).await.unwrap().get(0);
    assert_eq!(copied, source, "receiver log:\n{}", integrate.log());
    assert!(copied.contains("\"amount\": 100.00"), "{copied}");

    // The update reached the receiver twice, with one id, and counted once.
    let updates = relay.exchanges_where(|event| event["type"] == "UPDATE");
    assert!(updates.len() >= 2, "{updates:?}");
    assert!(updates.iter().all(|update| update.id() == updates[0].id()));
    assert!(updates.iter().all(|update| update.receiver_status == 204));
    let processed: i64 = target
        .client
        .query_one("SELECT count(*) FROM processed_webhooks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(processed, 6, "4 inserts, 1 update, 1 delete");

    // Sent again now, the insert of the deleted order 3 changes nothing.
    let insert_3 =
        relay.exchanges_where(|event| event["type"] == "INSERT" && event["record"]["id"] == 3);
    assert_eq!(relay.replay(&insert_3[0]).await, 204);
    let copied_after: String = target.client.query_one(orders, &[]).await.unwrap().get(0);
    assert_eq!(copied_after, source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automate_takes_stock_once_per_paid_order_despite_redeliveries() {
    let db = TestDb::with_schema(&example_file("automate", "schema.sql")).await;
    db.client
        .batch_execute("INSERT INTO inventory VALUES ('widget', 10), ('gadget', 5)")
        .await
        .unwrap();
    let secret = secret();
    let automate = ExampleReceiver::start(
        "automate",
        &[
            ("AUTOMATE_WEBHOOK_SECRET", secret.as_str()),
            ("INVENTORY_DATABASE_URL", db.url.as_str()),
        ],
    )
    .await;
    // The receiver's 2xx for order 2 is lost on the way back: walhook sends
    // it again, after the stock was taken.
    let relay = Relay::start(&automate.url).await;
    relay.lose_answer_to(|event| event["record"]["id"] == 2);

    let walhook = ExampleWalhook::new("automate", &db);
    let env = [
        ("AUTOMATE_RECEIVER_URL", relay.url.as_str()),
        ("AUTOMATE_WEBHOOK_SECRET", secret.as_str()),
    ];
    let _run = walhook.run(&env);
    db.wait_slot_active().await;
    walhook.check(&env).await;

    db.client
        .batch_execute(
            "INSERT INTO orders VALUES (1, 'widget', 2, 'pending'), (2, 'gadget', 1, 'pending');
             UPDATE orders SET status = 'paid' WHERE id IN (1, 2);
             INSERT INTO orders VALUES (3, 'widget', 3, 'paid');
             -- Neither becomes paid: no webhook.
             UPDATE orders SET status = 'paid' WHERE id = 1;
             UPDATE orders SET status = 'shipped' WHERE id = 3;
             INSERT INTO orders VALUES (4, 'widget', 1, 'paid');",
        )
        .await
        .unwrap();
    let last_commit = db.current_wal().await;
    wait_for_confirmed(&db, last_commit, || walhook.log() + &automate.log()).await;

    let expected_stock = [
        ("gadget".to_owned(), 4),
        ("widget".to_owned(), 10 - 2 - 3 - 1),
    ];
    assert_eq!(stock(&db).await, expected_stock, "{}", automate.log());
    // One webhook (one id) per order that became paid; none for the others.
    let mut ids_by_order: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for exchange in relay.exchanges_where(|_| true) {
        let order = exchange.event()["record"]["id"].as_i64().unwrap();
        ids_by_order
            .entry(order)
            .or_default()
            .insert(exchange.id().to_owned());
    }
    assert_eq!(
        ids_by_order.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(
        ids_by_order.values().all(|ids| ids.len() == 1),
        "{ids_by_order:?}"
    );

    // Order 2 reached the receiver twice, with one id, answered 2xx both
    // times (walhook saw the first answer lost).
    let order_2 = relay.exchanges_where(|event| event["record"]["id"] == 2);
    assert!(order_2.len() >= 2, "{order_2:?}");
    assert!(
        order_2
            .iter()
            .all(|exchange| exchange.id() == order_2[0].id())
    );
    assert!(
        order_2
            .iter()
            .all(|exchange| exchange.receiver_status == 204)
    );
    assert_eq!(order_2[0].answered, 503);

    // Order 1's request sent once more: 2xx, and the stock stays.
    let order_1 = relay.exchanges_where(|event| event["record"]["id"] == 1);
    assert_eq!(relay.replay(&order_1[0]).await, 204);
    assert_eq!(stock(&db).await, expected_stock);

    // An order for an item the inventory does not know is refused (4xx):
    // parked as a dead letter, replayed once the item exists.
    db.client
        .batch_execute("INSERT INTO orders VALUES (5, 'gizmo', 1, 'paid')")
        .await
        .unwrap();
    wait_until("order 5 parked as a dead letter", DEADLINE, || async {
        db.dead_letter_count().await == 1
    })
    .await;
    db.client
        .batch_execute("INSERT INTO inventory VALUES ('gizmo', 3)")
        .await
        .unwrap();
    let replayed = walhook
        .command(&["dead-letters", "replay", "--all"], &env)
        .await;
    assert!(replayed.status.success(), "{replayed:?}");
    let gizmo: i32 = db
        .client
        .query_one("SELECT stock FROM inventory WHERE sku = 'gizmo'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(gizmo, 2);
}

/// `inventory`, by sku.
async fn stock(db: &TestDb) -> Vec<(String, i32)> {
    db.client
        .query("SELECT sku, stock FROM inventory ORDER BY sku", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Waits until the slot's confirmed position reaches `lsn`: every change
/// committed before it was answered 2xx or parked.
async fn wait_for_confirmed(db: &TestDb, lsn: walhook::lsn::Lsn, log: impl Fn() -> String) {
    let until = tokio::time::Instant::now() + DEADLINE;
    while db
        .confirmed_flush()
        .await
        .is_none_or(|confirmed| confirmed < lsn)
    {
        assert!(
            tokio::time::Instant::now() < until,
            "walhook did not confirm {lsn} within {DEADLINE:?}; logs:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bodies of the chat messages answered 2xx, sorted by text.
fn chat_messages(chat: &Receiver) -> Vec<Value> {
    let mut messages: Vec<Value> = chat
        .requests()
        .iter()
        .filter(|request| request.status == 200)
        .map(|request| request.json())
        .collect();
    messages.sort_by_key(|message| message["text"].as_str().map(str::to_owned));
    messages
}

fn other_secret() -> String {
    format!("whsec_{}", STANDARD.encode([0x17; 32]))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// POSTs `body` to `url` signed with `secret` at `timestamp` (computed here
/// from the Standard Webhooks scheme), with `authorization` if any; the
/// status.
async fn post_signed(
    url: &str,
    secret: &str,
    timestamp: u64,
    body: &str,
    authorization: Option<&str>,
) -> u16 {
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let id = "wh_test_request";
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let signature = STANDARD.encode(mac.finalize().into_bytes());
    let mut request = http_client()
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        // Two signatures, as while a secret is rolled: one that fits is
        // enough.
        .header(
            "webhook-signature",
            format!("v1,{} v1,{signature}", STANDARD.encode([0u8; 32])),
        )
        .body(body.to_owned());
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    request.send().await.unwrap().status().as_u16()
}

fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}
