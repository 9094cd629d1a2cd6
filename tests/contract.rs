//! The webhook contract of docs/payload.md, end to end against real
//! PostgreSQL and a real receiver: signatures that the public
//! `standardwebhooks` library verifies unchanged, headers, projections,
//! batches, ordering under concurrency, and subscriptions that share tables.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::support::config::subscription;
use crate::support::receiver::{Received, Receiver};
use crate::support::{TestDb, Walhook, WalhookBinary, sigterm, source_lsn};

const DEADLINE: Duration = Duration::from_secs(60);
const SECRET: &str = "whsec_Y29udHJhY3QtdGVzdC1zZWNyZXQtZm9yLXdhbGhvb2s=";
const ENV_SECRET: &str = "whsec_ZW52LXNlY3JldC1mb3Itd2FsaG9vay1jb250cmFjdA==";

// ---------------------------------------------------------------------------
// The `standardwebhooks` Python library as the oracle.

/// A directory holding the `standardwebhooks` package, installed there by
/// pip once per test binary when it is not there yet.
fn standard_webhooks_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("standardwebhooks-py");
        let importable = || {
            std::process::Command::new("python3")
                .args(["-c", "import standardwebhooks"])
                .env("PYTHONPATH", &dir)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        };
        if !importable() {
            let output = std::process::Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--target"])
                .arg(&dir)
                .arg("standardwebhooks")
                .output()
                .expect("python3 runs");
            assert!(
                output.status.success() && importable(),
                "cannot install the standardwebhooks Python package: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        dir
    })
}

const VERIFY_SCRIPT: &str = r#"
import json, sys
from standardwebhooks import Webhook
for item in json.load(sys.stdin):
    try:
        Webhook(item["secret"]).verify(item["body"], item["headers"], json_parse=False)
        print("ok")
    except Exception as error:
        print("fail: %s: %s" % (type(error).__name__, error))
"#;

/// Verifies each (secret, body, headers) with `standardwebhooks.Webhook`;
/// one "ok" or "fail: …" per item.
async fn verify_with_library(items: &[(&str, &[u8], &HashMap<String, String>)]) -> Vec<String> {
    let dir = tokio::task::spawn_blocking(standard_webhooks_dir)
        .await
        .unwrap();
    let input: Vec<Value> = items
        .iter()
        .map(|(secret, body, headers)| {
            json!({
                "secret": secret,
                "body": std::str::from_utf8(body).expect("a UTF-8 body"),
                "headers": headers,
            })
        })
        .collect();
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", VERIFY_SCRIPT])
        .env("PYTHONPATH", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&serde_json::to_vec(&input).unwrap())
        .await
        .unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(results.len(), items.len());
    results
}

/// Asserts that the library verifies every request with `secret`, and (as a
/// control) rejects the first one with its body changed by one byte.
async fn assert_library_verifies(requests: &[&Received], secret: &str) {
    assert!(!requests.is_empty());
    let items: Vec<_> = requests
        .iter()
        .map(|request| (secret, &request.body[..], &request.headers))
        .collect();
    let results = verify_with_library(&items).await;
    for (request, result) in requests.iter().zip(&results) {
        assert_eq!(
            result,
            "ok",
            "{} {:?}",
            request.path,
            String::from_utf8_lossy(&request.body)
        );
    }
    let mut tampered = requests[0].body.to_vec();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b' ' { b'\n' } else { b' ' };
    let control = verify_with_library(&[(secret, &tampered[..], &requests[0].headers)]).await;
    assert!(
        control[0].starts_with("fail: WebhookVerificationError"),
        "{control:?}"
    );
}

// ---------------------------------------------------------------------------
// Helpers

fn requests_to(receiver: &Receiver, path: &str) -> Vec<Received> {
    receiver
        .requests()
        .into_iter()
        .filter(|request| request.path == path)
        .collect()
}

/// The row id of an event: from `record`, else `old_record`.
fn row_id(event: &Value) -> i64 {
    event["record"]["id"]
        .as_i64()
        .or_else(|| event["old_record"]["id"].as_i64())
        .unwrap_or(-1)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn signed_webhooks_verify_with_the_standardwebhooks_library() {
    let db = TestDb::with_schema(
        "CREATE TABLE orders (id int PRIMARY KEY, status text, amount numeric(10,2), note text);
         ALTER TABLE orders REPLICA IDENTITY FULL;",
    )
    .await;
    let receiver = Receiver::start().await;
    // `env:` secrets and headers are read from walhook's environment, so
    // this test runs the binary with its own.
    let config = db
        .configure()
        .subscription(
            subscription("literal-secret", &receiver.url("/literal"))
                .tables(&["orders"])
                .secret(SECRET)
                .with("headers", r#"{ "X-Tenant" = "acme" }"#),
        )
        .subscription(
            subscription("env-secret", &receiver.url("/env"))
                .tables(&["public.orders"])
                .secret("env:WALHOOK_CONTRACT_SECRET")
                .with(
                    "headers",
                    r#"{ "Authorization" = "env:WALHOOK_CONTRACT_AUTH", "X-Tenant" = "globex" }"#,
                ),
        )
        .text();
    let binary = WalhookBinary::new(&config);
    let mut walhook = binary.spawn_run_with_env(&[
        ("WALHOOK_CONTRACT_SECRET", ENV_SECRET),
        ("WALHOOK_CONTRACT_AUTH", "Bearer t0ken-from-env"),
    ]);
    db.wait_slot_active().await;
    db.client
        .batch_execute(
            "INSERT INTO orders VALUES (1, 'pending', 12.50, 'ünïcödé ✓'), (2, 'pending', 7.00, NULL);
             UPDATE orders SET status = 'paid' WHERE id = 1;
             DELETE FROM orders WHERE id = 2;",
        )
        .await
        .unwrap();
    receiver.wait_for_delivered(8, DEADLINE).await;

    for (path, secret, tenant, authorization) in [
        ("/literal", SECRET, "acme", None),
        ("/env", ENV_SECRET, "globex", Some("Bearer t0ken-from-env")),
    ] {
        let requests = requests_to(&receiver, path);
        assert_eq!(requests.len(), 4, "{path}");
        for request in &requests {
            let headers = &request.headers;
            let payload = request.json();
            assert_eq!(
                headers["webhook-id"],
                payload["id"].as_str().unwrap(),
                "webhook-id is the payload id"
            );
            let timestamp: i64 = headers["webhook-timestamp"].parse().unwrap();
            assert!(
                (unix_now() - timestamp).abs() <= 60,
                "timestamp {timestamp} within a minute of now"
            );
            assert!(headers["webhook-signature"].starts_with("v1,"));
            assert!(headers["user-agent"].starts_with("walhook/"), "{headers:?}");
            assert_eq!(headers["content-type"], "application/json");
            assert_eq!(headers["x-tenant"], tenant);
            assert_eq!(
                headers.get("authorization").map(String::as_str),
                authorization
            );
        }
        let refs: Vec<&Received> = requests.iter().collect();
        assert_library_verifies(&refs, secret).await;
    }
    // The other subscription's secret does not verify: each has its own.
    let literal = requests_to(&receiver, "/literal");
    let crossed =
        verify_with_library(&[(ENV_SECRET, &literal[0].body[..], &literal[0].headers)]).await;
    assert!(crossed[0].starts_with("fail"), "{crossed:?}");

    sigterm(&walhook);
    let status = tokio::time::timeout(DEADLINE, walhook.wait())
        .await
        .expect("walhook stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}\n{}", binary.log());
}

#[tokio::test]
async fn a_projection_keeps_only_its_columns_everywhere() {
    let db = TestDb::with_schema(
        "CREATE TABLE orders (id int PRIMARY KEY, status text, amount numeric(10,2), note text);
         ALTER TABLE orders REPLICA IDENTITY FULL;",
    )
    .await;
    let receiver = Receiver::start().await;
    let walhook = Walhook::start(
        db.config(
            subscription("narrow", &receiver.url("/narrow"))
                .tables(&["orders"])
                .columns(&["id", "status"]),
        ),
    );
    db.wait_slot_active().await;
    for statement in [
        "INSERT INTO orders VALUES (1, 'pending', 12.50, 'first')",
        "UPDATE orders SET status = 'paid', amount = 13.00 WHERE id = 1",
        "UPDATE orders SET amount = 14.00, note = 'only unprojected columns' WHERE id = 1",
        "DELETE FROM orders WHERE id = 1",
    ] {
        db.client.batch_execute(statement).await.unwrap();
    }
    let events = receiver.wait_for_delivered(4, DEADLINE).await;
    let view: Vec<Value> = events
        .iter()
        .map(|event| {
            json!({
                "type": event["type"],
                "record": event["record"],
                "old_record": event["old_record"],
                "changed_columns": event["changed_columns"],
            })
        })
        .collect();
    assert_eq!(
        view,
        vec![
            json!({"type": "INSERT", "record": {"id": 1, "status": "pending"},
                   "old_record": null, "changed_columns": null}),
            json!({"type": "UPDATE", "record": {"id": 1, "status": "paid"},
                   "old_record": {"id": 1, "status": "pending"}, "changed_columns": ["status"]}),
            json!({"type": "UPDATE", "record": {"id": 1, "status": "paid"},
                   "old_record": {"id": 1, "status": "paid"}, "changed_columns": []}),
            json!({"type": "DELETE", "record": null,
                   "old_record": {"id": 1, "status": "paid"}, "changed_columns": null}),
        ]
    );
    for event in &events {
        assert!(event.get("unchanged_toast").is_none_or(Value::is_null));
    }
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn batches_hold_at_most_max_events_signed_once_with_a_deterministic_id() {
    const ROWS: i64 = 60;
    const ROUNDS: i64 = 3;
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)").await;
    let receiver = Receiver::start().await;
    // Every distinct body is refused once: each batch is sent at least
    // twice, which shows that the same batch carries the same webhook-id.
    // (Many first attempts fail in a row, which would open the circuit
    // breaker; this is about retries of one batch, so it stays closed.)
    receiver.fail_first_attempts(1);
    let walhook = Walhook::start(
        db.configure()
            .delivery("breaker", r#"{ failures = 1000000, window = "1d" }"#)
            .subscription(
                subscription("batched", &receiver.url("/batched"))
                    .tables(&["items"])
                    .secret(SECRET)
                    .with("batch", r#"{ max_events = 10, max_wait = "50ms" }"#),
            )
            .build(),
    );
    db.wait_slot_active().await;
    db.client
        .batch_execute(&format!(
            "INSERT INTO items SELECT g, 0 FROM generate_series(1, {ROWS}) g"
        ))
        .await
        .unwrap();
    for _ in 0..ROUNDS {
        db.client
            .batch_execute("UPDATE items SET v = v + 1")
            .await
            .unwrap();
    }
    let total = (ROWS * (ROUNDS + 1)) as usize;
    receiver.wait_for_delivered(total, DEADLINE).await;
    let requests = requests_to(&receiver, "/batched");

    // Shape: {"events": [...]}, at most 10 each, and batching happened.
    let mut sizes = Vec::new();
    for request in &requests {
        let body = request.json();
        let events = body["events"].as_array().expect("a batch body");
        assert_eq!(body.as_object().unwrap().len(), 1, "only `events`");
        assert!(!events.is_empty() && events.len() <= 10, "{}", events.len());
        sizes.push(events.len());
    }
    assert!(
        sizes.iter().any(|&size| size > 1),
        "some requests carry several events: {sizes:?}"
    );

    // One signature over the whole batch body, verified by the library.
    let delivered: Vec<&Received> = requests
        .iter()
        .filter(|request| request.status == 200)
        .collect();
    assert_library_verifies(&delivered, SECRET).await;

    // webhook-id is a function of the events' ids: the same list of ids
    // (a retry) has the same webhook-id, and different lists different ones.
    let mut id_by_events: HashMap<Vec<String>, String> = HashMap::new();
    let mut events_by_id: HashMap<String, Vec<String>> = HashMap::new();
    let mut retried = 0;
    for request in &requests {
        let ids: Vec<String> = request
            .events()
            .iter()
            .map(|event| event["id"].as_str().unwrap().to_owned())
            .collect();
        let webhook_id = request.headers["webhook-id"].clone();
        if let [only] = &ids[..] {
            assert_eq!(&webhook_id, only, "a batch of one carries its event's id");
        } else {
            assert!(webhook_id.starts_with("whb_"), "{webhook_id}");
            assert!(!ids.contains(&webhook_id), "a batch id is not an event id");
        }
        if let Some(previous) = id_by_events.insert(ids.clone(), webhook_id.clone()) {
            assert_eq!(previous, webhook_id, "same batch, same webhook-id");
            retried += 1;
        }
        if let Some(previous) = events_by_id.insert(webhook_id, ids.clone()) {
            assert_eq!(previous, ids, "one webhook-id, one batch");
        }
    }
    assert!(
        retried >= delivered.len(),
        "every batch was sent again after its 503"
    );

    // Every row change exactly once among the 2xx answers, in order per key.
    let events = receiver.delivered_to("/batched");
    assert_eq!(events.len(), total);
    let unique: HashSet<&str> = events
        .iter()
        .map(|event| event["id"].as_str().unwrap())
        .collect();
    assert_eq!(unique.len(), total, "no event twice");
    let mut versions: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for event in &events {
        versions
            .entry(row_id(event))
            .or_default()
            .push(event["record"]["v"].as_i64().unwrap());
    }
    assert_eq!(versions.len() as i64, ROWS);
    for (id, seen) in &versions {
        assert_eq!(seen, &(0..=ROUNDS).collect::<Vec<_>>(), "row {id}");
    }
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn order_holds_per_key_and_strictly_under_concurrency_64() {
    const KEYS: i64 = 40;
    const ROUNDS: i64 = 5;
    let db =
        TestDb::with_schema("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)").await;
    let receiver = Receiver::start().await;
    receiver.delay_responses_randomly(Duration::from_millis(4));
    let config = db
        .configure()
        .delivery("concurrency", "64")
        .subscription(
            subscription("by-key", &receiver.url("/key"))
                .tables(&["counters"])
                .ordering("key"),
        )
        .subscription(
            subscription("strict", &receiver.url("/strict"))
                .tables(&["counters"])
                .ordering("strict"),
        )
        .build();
    assert_eq!(config.delivery.concurrency, 64);
    let walhook = Walhook::start(config);
    db.wait_slot_active().await;

    // Commit order is the order this one session commits in: the inserts
    // (one transaction), then one transaction per update, keys shuffled
    // differently in each round.
    db.client
        .batch_execute(&format!(
            "INSERT INTO counters SELECT g, 0 FROM generate_series(1, {KEYS}) g"
        ))
        .await
        .unwrap();
    // The updates go in one burst (each its own BEGIN … COMMIT) so that
    // walhook has many keys in flight at once.
    let mut committed: Vec<(i64, i64)> = (1..=KEYS).map(|id| (id, 0)).collect();
    let mut burst = String::new();
    for round in 1..=ROUNDS {
        let mut keys: Vec<i64> = (1..=KEYS).collect();
        fastrand::shuffle(&mut keys);
        for id in keys {
            burst.push_str(&format!(
                "BEGIN; UPDATE counters SET n = {round} WHERE id = {id}; COMMIT;\n"
            ));
            committed.push((id, round));
        }
    }
    db.client.batch_execute(&burst).await.unwrap();
    let total = committed.len();
    receiver.wait_for_delivered(2 * total, DEADLINE).await;
    let arrived = |path: &str| -> Vec<(i64, i64)> {
        receiver
            .delivered_to(path)
            .iter()
            .map(|event| (row_id(event), event["record"]["n"].as_i64().unwrap()))
            .collect()
    };

    // key: per key, arrival order is commit order, each change once.
    let by_key = arrived("/key");
    assert_eq!(by_key.len(), total);
    let mut per_key: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (id, n) in &by_key {
        per_key.entry(*id).or_default().push(*n);
    }
    for (id, seen) in &per_key {
        assert_eq!(seen, &(0..=ROUNDS).collect::<Vec<_>>(), "key {id}");
    }
    assert_eq!(per_key.len() as i64, KEYS);
    // Under concurrency the keys did interleave differently from commit order
    // (otherwise this test would show nothing about lanes).
    assert_ne!(by_key, committed, "per-key lanes ran concurrently");

    // strict: the whole arrival order is commit order.
    let strict = arrived("/strict");
    assert_eq!(strict, committed);
    let lsns: Vec<_> = receiver
        .delivered_to("/strict")
        .iter()
        .map(|event| (source_lsn(event, "commit_lsn"), source_lsn(event, "lsn")))
        .collect();
    assert!(lsns.windows(2).all(|pair| pair[0] <= pair[1]), "LSN order");
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn a_key_change_arrives_after_the_old_keys_changes_and_before_the_new_keys() {
    const KEYS: i64 = 30;
    const RENAMED: i64 = 1000;
    let db = TestDb::with_schema("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL)").await;
    let receiver = Receiver::start().await;
    // Slow, uneven answers: without the key-change barrier a rename (in the
    // new key's lane) would overtake the old key's last update.
    receiver.delay_responses_randomly(Duration::from_millis(4));
    let config = db
        .configure()
        .delivery("concurrency", "64")
        .subscription(
            subscription("items", &receiver.url("/items"))
                .tables(&["items"])
                .ordering("key"),
        )
        .build();
    assert_eq!(config.delivery.concurrency, 64);
    let walhook = Walhook::start(config);
    db.wait_slot_active().await;

    // n = 0 insert, n = 1 update, n = 2 the rename, n = 3 an update of the
    // new key: one transaction each (a multi-statement query would otherwise
    // be one implicit transaction), all in one burst.
    let mut burst = format!("INSERT INTO items SELECT g, 0 FROM generate_series(1, {KEYS}) g;\n");
    let mut commit = |statement: String| {
        burst.push_str(&format!("BEGIN; {statement}; COMMIT;\n"));
    };
    for id in 1..=KEYS {
        commit(format!("UPDATE items SET n = 1 WHERE id = {id}"));
    }
    for id in 1..=KEYS {
        commit(format!(
            "UPDATE items SET id = id + {RENAMED}, n = 2 WHERE id = {id}"
        ));
    }
    for id in 1..=KEYS {
        commit(format!(
            "UPDATE items SET n = 3 WHERE id = {}",
            id + RENAMED
        ));
    }
    db.client.batch_execute(&burst).await.unwrap();
    receiver
        .wait_for_delivered((4 * KEYS) as usize, DEADLINE)
        .await;

    let mut per_row: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for event in receiver.delivered_to("/items") {
        let original = row_id(&event) % RENAMED;
        per_row
            .entry(original)
            .or_default()
            .push(event["record"]["n"].as_i64().unwrap());
    }
    assert_eq!(per_row.len() as i64, KEYS);
    for (id, seen) in &per_row {
        assert_eq!(seen, &[0, 1, 2, 3], "row {id}, in arrival order");
    }
    walhook.stop().await.unwrap();
}

/// Per-key order without relying on timing: the receiver holds one key's
/// update until the test releases it. That key's delete, committed later,
/// must not arrive meanwhile, while the other keys' updates and deletes go
/// on; once released, every key arrives as update then delete.
#[tokio::test]
async fn a_delete_waits_for_its_keys_held_update_while_other_keys_go_on() {
    const KEYS: i64 = 20;
    const HELD: i64 = 1;
    let db = TestDb::new().await;
    // The rows exist before the slot: only the updates and deletes stream.
    db.client
        .batch_execute(&format!(
            "CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL);
             INSERT INTO items SELECT g, 0 FROM generate_series(1, {KEYS}) g;"
        ))
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    receiver.hold_where(|event| event["type"] == "UPDATE" && row_id(event) == HELD);
    let walhook = Walhook::start(
        db.configure()
            .delivery("concurrency", "64")
            .subscription(
                subscription("items", &receiver.url("/items"))
                    .tables(&["items"])
                    .events(&["update", "delete"])
                    .ordering("key"),
            )
            .build(),
    );
    db.wait_slot_active().await;
    // Commit order: every update, then the held key's delete, then the
    // other deletes.
    for statement in [
        "UPDATE items SET n = 1".to_owned(),
        format!("DELETE FROM items WHERE id = {HELD}"),
        format!("DELETE FROM items WHERE id <> {HELD}"),
    ] {
        db.client.batch_execute(&statement).await.unwrap();
    }
    let is_delete_of = |event: &Value, key: i64| event["type"] == "DELETE" && row_id(event) == key;
    receiver
        .wait_for_arrival_of("the held update", DEADLINE, |event| {
            event["type"] == "UPDATE" && row_id(event) == HELD
        })
        .await;
    // A later delete of another key: had the held key's delete been free
    // to go, it would have been sent by now (deletes go in commit order).
    receiver
        .wait_for_arrival_of("another key's delete", DEADLINE, |event| {
            event["type"] == "DELETE" && row_id(event) != HELD
        })
        .await;
    let early: Vec<String> = receiver
        .arrived_events()
        .iter()
        .filter(|event| is_delete_of(event, HELD))
        .map(Value::to_string)
        .collect();
    assert!(
        early.is_empty(),
        "key {HELD}'s delete arrived while its update was held: {}",
        early.join("\n")
    );

    receiver.release();
    receiver
        .wait_for_delivered((2 * KEYS) as usize, DEADLINE)
        .await;
    let mut per_key: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for event in receiver.delivered_to("/items") {
        per_key
            .entry(row_id(&event))
            .or_default()
            .push(event["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(per_key.len() as i64, KEYS);
    for (key, kinds) in &per_key {
        assert_eq!(kinds, &["UPDATE", "DELETE"], "key {key}, in arrival order");
    }
    walhook.stop().await.unwrap();
}

#[tokio::test]
async fn subscriptions_share_tables_and_span_tables_with_their_own_events() {
    let db = TestDb::with_schema(
        "CREATE TABLE orders (id int PRIMARY KEY, status text);
         CREATE TABLE signups (id int PRIMARY KEY, email text);",
    )
    .await;
    let receiver = Receiver::start().await;
    let walhook = Walhook::start(
        db.configure()
            .subscription(
                subscription("created", &receiver.url("/created"))
                    .tables(&["orders", "public.signups"])
                    .events(&["insert"]),
            )
            .subscription(
                subscription("order-changes", &receiver.url("/order-changes"))
                    .tables(&["orders"])
                    .events(&["update", "delete"]),
            )
            .subscription(
                subscription("signup-lifecycle", &receiver.url("/signups"))
                    .tables(&["signups"])
                    .events(&["insert", "delete", "truncate"]),
            )
            .subscription(
                subscription("orders-all", &receiver.url("/orders-all")).tables(&["public.orders"]),
            )
            .build(),
    );
    db.wait_slot_active().await;
    for statement in [
        "INSERT INTO orders VALUES (1, 'new'), (2, 'new')",
        "INSERT INTO signups VALUES (1, 'ada@example.com')",
        "UPDATE orders SET status = 'paid' WHERE id = 1",
        "DELETE FROM orders WHERE id = 2",
        "DELETE FROM signups WHERE id = 1",
        "INSERT INTO signups VALUES (2, 'grace@example.com')",
        "TRUNCATE signups",
    ] {
        db.client.batch_execute(statement).await.unwrap();
    }
    let expected: BTreeMap<&str, Vec<(&str, &str, i64)>> = BTreeMap::from([
        (
            "/created",
            vec![
                ("INSERT", "orders", 1),
                ("INSERT", "orders", 2),
                ("INSERT", "signups", 1),
                ("INSERT", "signups", 2),
            ],
        ),
        (
            "/order-changes",
            vec![("DELETE", "orders", 2), ("UPDATE", "orders", 1)],
        ),
        (
            "/signups",
            vec![
                ("DELETE", "signups", 1),
                ("INSERT", "signups", 1),
                ("INSERT", "signups", 2),
                ("TRUNCATE", "signups", -1),
            ],
        ),
        (
            "/orders-all",
            vec![
                ("DELETE", "orders", 2),
                ("INSERT", "orders", 1),
                ("INSERT", "orders", 2),
                ("UPDATE", "orders", 1),
            ],
        ),
    ]);
    let total = expected.values().map(Vec::len).sum();
    receiver.wait_for_delivered(total, DEADLINE).await;
    assert_eq!(receiver.delivered().len(), total, "nothing more");
    for (path, wanted) in &expected {
        let mut got: Vec<(String, String, i64)> = receiver
            .delivered_to(path)
            .iter()
            .map(|event| {
                (
                    event["type"].as_str().unwrap().to_owned(),
                    event["table"].as_str().unwrap().to_owned(),
                    row_id(event),
                )
            })
            .collect();
        got.sort();
        let wanted: Vec<(String, String, i64)> = wanted
            .iter()
            .map(|(kind, table, id)| (kind.to_string(), table.to_string(), *id))
            .collect();
        assert_eq!(&got, &wanted, "{path}");
    }
    // Each subscription names itself, and one change to several
    // subscriptions has a distinct id for each.
    let mut ids = HashSet::new();
    for request in receiver.requests() {
        let event = request.json();
        let name = event["subscription"].as_str().unwrap();
        let path = match name {
            "created" => "/created",
            "order-changes" => "/order-changes",
            "signup-lifecycle" => "/signups",
            "orders-all" => "/orders-all",
            other => panic!("unknown subscription {other}"),
        };
        assert_eq!(request.path, path);
        assert!(ids.insert(event["id"].as_str().unwrap().to_owned()));
    }
    walhook.stop().await.unwrap();
}
