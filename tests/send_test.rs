//! `walhook send-test`: the binary sends one signed test event to a real
//! receiver and reports the answer. Sample values are typed by the real
//! table's columns and render exactly as `to_jsonb` renders such a row;
//! `--from-row` sends that row; update and delete carry the old row the
//! replica identity gives; a failing endpoint makes a non-zero exit that
//! shows its answer; unknown subscriptions, tables and rows are usage
//! errors (exit 2). None of it moves the slot or writes to the backlog or
//! the dead letters. It does not test the daemon's own delivery (see
//! `contract`, `delivery`).

use std::process::Output;

use serde_json::Value;

use crate::support::config::{Subscription, subscription};
use crate::support::receiver::{Receiver, Reply};
use crate::support::{TestDb, WalhookBinary, stderr, stdout};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const API_KEY: &str = "k-7f3a-do-not-print";

const SCHEMA: &str = "
    CREATE TYPE mood AS ENUM ('happy', 'sad');
    CREATE TABLE orders (
        id bigint PRIMARY KEY,
        status text NOT NULL,
        amount numeric(12,2),
        paid bool,
        placed_at timestamptz,
        ref uuid,
        meta jsonb,
        tags text[],
        feeling mood,
        code varchar(3),
        born date,
        grade char(4),
        origin inet
    );
    CREATE TABLE accounts (id int PRIMARY KEY, name text, balance numeric);
    ALTER TABLE accounts REPLICA IDENTITY FULL;
    CREATE TABLE lines (order_id int, line int, sku text, PRIMARY KEY (order_id, line));
    INSERT INTO orders VALUES (7, 'paid', 3.10, true, '2026-11-27 08:00:00.5+02', \
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"k\": 1.10}', '{a,NULL,\"b c\"}', 'sad', 'xy', \
        '2026-01-02', 'ab', '10.0.0.1');
    INSERT INTO accounts VALUES (3, 'acme', 12.500);
    INSERT INTO lines VALUES (7, 2, 'sku-2');
";

/// A subscription of `tables` and `events`, signed, with a configured
/// header.
fn signed(name: &str, receiver: &Receiver, tables: &[&str], events: &[&str]) -> Subscription {
    subscription(name, &receiver.url(&format!("/{name}")))
        .tables(tables)
        .events(events)
        .secret(SECRET)
        .with("headers", &format!(r#"{{ "X-Api-Key" = "{API_KEY}" }}"#))
}

/// `to_jsonb` of the row of `table` that `record` describes (a row built
/// from the record's values by the table's own type): the oracle for how a
/// real event renders it.
async fn as_to_jsonb(db: &TestDb, table: &str, record: &Value) -> Value {
    let row = db
        .client
        .query_one(
            &format!(
                "SELECT to_jsonb(jsonb_populate_record(NULL::{table}, $1::text::jsonb))::text"
            ),
            &[&record.to_string()],
        )
        .await
        .unwrap();
    serde_json::from_str(&row.get::<_, String>(0)).unwrap()
}

/// The one request the receiver got, and the command's output.
fn only_request(receiver: &Receiver, output: &Output) -> crate::support::receiver::Received {
    let requests = receiver.requests();
    assert_eq!(
        requests.len(),
        1,
        "exactly one request; stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
    requests.into_iter().next().unwrap()
}

/// Nothing in walhook's tables, and the slot where it was.
async fn untouched(db: &TestDb, slot_before: Option<walhook::lsn::Lsn>) {
    assert_eq!(db.dead_letter_count().await, 0);
    let backlog: i64 = db
        .client
        .query_one("SELECT count(*) FROM walhook.backlog", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(backlog, 0);
    assert_eq!(
        db.confirmed_flush().await,
        slot_before,
        "the slot did not move"
    );
}

#[tokio::test]
async fn a_sample_event_has_the_tables_columns_typed_signed_and_marked_test() {
    let db = TestDb::with_schema(SCHEMA).await;
    let receiver = Receiver::start().await;
    let binary = WalhookBinary::new(&db.config_text(
        signed("orders", &receiver, &["orders"], &["insert", "update"]).filter("status = 'paid'"),
    ));
    let setup = binary.command(&["setup"]).await;
    assert!(setup.status.success(), "{setup:?}");
    let slot_before = db.confirmed_flush().await;
    assert!(slot_before.is_some());

    let output = binary.command(&["send-test", "orders"]).await;
    assert!(output.status.success(), "{output:?}");
    let request = only_request(&receiver, &output);
    assert!(
        request.signature_verifies(SECRET),
        "signed with the subscription's secret: {request:?}"
    );
    assert_eq!(request.headers["x-api-key"], API_KEY);
    assert_eq!(request.headers["content-type"], "application/json");
    let event = request.json();
    assert_eq!(request.headers["webhook-id"], event["id"].as_str().unwrap());
    assert!(event["id"].as_str().unwrap().starts_with("wh_"));
    assert_eq!(event["type"], "INSERT");
    assert_eq!(event["schema"], "public");
    assert_eq!(event["table"], "orders");
    assert_eq!(event["subscription"], "orders");
    assert_eq!(event["source"]["test"], true);
    assert_eq!(event["source"]["lsn"], "0/0");
    assert_eq!(event["old_record"], Value::Null);

    // Every column, in table order, with a value of its type…
    let record = &event["record"];
    let columns: Vec<&str> = record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        columns,
        [
            "id",
            "status",
            "amount",
            "paid",
            "placed_at",
            "ref",
            "meta",
            "tags",
            "feeling",
            "code",
            "born",
            "grade",
            "origin"
        ]
    );
    let text = String::from_utf8_lossy(&request.body).into_owned();
    assert!(text.contains(r#""id":1,"#), "{text}");
    assert!(text.contains(r#""amount":12.50,"#), "digits kept: {text}");
    assert_eq!(record["status"], "sample");
    assert_eq!(record["paid"], true);
    assert_eq!(record["meta"], serde_json::json!({"sample": true}));
    assert_eq!(record["tags"], serde_json::json!(["sample"]));
    assert_eq!(record["feeling"], "happy", "the enum's first label");
    assert_eq!(record["code"], "sam", "cut to varchar(3)");
    assert_eq!(record["grade"], "samp", "cut to char(4)");
    assert_eq!(
        record["origin"], "192.0.2.1",
        "inet's output, not its cast to text"
    );
    assert_eq!(record["ref"].as_str().unwrap().len(), 36);
    let placed_at = record["placed_at"].as_str().unwrap();
    assert!(
        placed_at.contains('T') && placed_at.ends_with("+00:00"),
        "{placed_at}"
    );
    // …rendered exactly as to_jsonb renders such a row.
    assert_eq!(record, &as_to_jsonb(&db, "orders", record).await);

    let printed = stdout(&output);
    assert!(printed.contains("TEST event"), "{printed}");
    assert!(printed.contains("> POST http://127.0.0.1:"), "{printed}");
    assert!(printed.contains("> webhook-signature: v1,"), "{printed}");
    assert!(printed.contains("< HTTP 200"), "{printed}");
    assert!(
        printed.contains("filter: not true for this event"),
        "the filter is judged, not obeyed: {printed}"
    );
    for secret in [SECRET, API_KEY] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
        assert!(!stderr(&output).contains(secret), "{secret} logged");
    }
    untouched(&db, slot_before).await;
}

#[tokio::test]
async fn from_row_sends_the_row_with_the_old_record_its_identity_gives() {
    let db = TestDb::with_schema(SCHEMA).await;
    let receiver = Receiver::start().await;
    let binary = WalhookBinary::new(&db.config_text(signed(
        "all",
        &receiver,
        &["orders", "accounts", "lines"],
        &["insert", "update", "delete"],
    )));
    let setup = binary.command(&["setup"]).await;
    assert!(setup.status.success(), "{setup:?}");
    let slot_before = db.confirmed_flush().await;
    let expected = |table: &str, condition: &str| {
        let query = format!("SELECT to_jsonb(t)::text FROM {table} t WHERE {condition}");
        let client = &db.client;
        async move {
            let text: String = client.query_one(&query, &[]).await.unwrap().get(0);
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };

    // Insert of an existing row: its values as to_jsonb has them.
    let output = binary
        .command(&["send-test", "all", "--table", "orders", "--from-row", "7"])
        .await;
    assert!(output.status.success(), "{output:?}");
    let event = receiver.requests().last().unwrap().json();
    assert_eq!(event["record"], expected("orders", "id = 7").await);
    assert_eq!(event["record"]["status"], "paid");
    assert_eq!(event["record"]["paid"], true);
    assert_eq!(
        event["record"]["grade"], "ab  ",
        "char(4) keeps its padding"
    );
    assert_eq!(event["record"]["origin"], "10.0.0.1");
    assert_eq!(event["source"]["test"], true);

    // Delete under the primary key identity: the key only.
    let output = binary
        .command(&[
            "send-test",
            "all",
            "--table",
            "public.orders",
            "--from-row",
            "7",
            "--type",
            "delete",
        ])
        .await;
    assert!(output.status.success(), "{output:?}");
    let event = receiver.requests().last().unwrap().json();
    assert_eq!(event["type"], "DELETE");
    assert_eq!(event["record"], Value::Null);
    assert_eq!(event["old_record"], serde_json::json!({"id": 7}));

    // Update under REPLICA IDENTITY FULL: the whole old row.
    let output = binary
        .command(&[
            "send-test",
            "all",
            "--table",
            "accounts",
            "--from-row",
            "3",
            "--type",
            "update",
        ])
        .await;
    assert!(output.status.success(), "{output:?}");
    let event = receiver.requests().last().unwrap().json();
    let row = expected("accounts", "id = 3").await;
    assert_eq!(event["type"], "UPDATE");
    assert_eq!(event["record"], row);
    assert_eq!(event["old_record"], row);
    assert!(
        String::from_utf8_lossy(&receiver.requests().last().unwrap().body)
            .contains(r#""balance":12.500"#)
    );

    // A key of two columns, as `a,b`.
    let output = binary
        .command(&["send-test", "all", "--table", "lines", "--from-row", "7,2"])
        .await;
    assert!(output.status.success(), "{output:?}");
    let event = receiver.requests().last().unwrap().json();
    assert_eq!(event["record"]["sku"], "sku-2");

    // Update under the default identity, sample values: no old record.
    let output = binary
        .command(&["send-test", "all", "--table", "orders", "--type", "update"])
        .await;
    assert!(output.status.success(), "{output:?}");
    let event = receiver.requests().last().unwrap().json();
    assert_eq!(event["type"], "UPDATE");
    assert_eq!(event["old_record"], Value::Null);
    assert_eq!(receiver.requests().len(), 5, "one request per command");

    // The selection errors are the command line's: exit 2, nothing sent.
    let several = binary.command(&["send-test", "all"]).await;
    assert_eq!(several.status.code(), Some(2), "{several:?}");
    let said = stderr(&several);
    assert!(
        said.contains("--table")
            && said.contains("public.accounts")
            && said.contains("public.orders"),
        "{said}"
    );
    let other = binary
        .command(&["send-test", "all", "--table", "nosuch"])
        .await;
    assert_eq!(other.status.code(), Some(2), "{other:?}");
    assert!(
        stderr(&other).contains("public.nosuch"),
        "{}",
        stderr(&other)
    );
    let unknown = binary.command(&["send-test", "nobody"]).await;
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
    assert!(
        stderr(&unknown).contains("\"nobody\""),
        "{}",
        stderr(&unknown)
    );
    let missing = binary
        .command(&["send-test", "all", "--table", "orders", "--from-row", "999"])
        .await;
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    assert!(stderr(&missing).contains("no row"), "{}", stderr(&missing));
    let bad_key = binary
        .command(&["send-test", "all", "--table", "lines", "--from-row", "7"])
        .await;
    assert_eq!(bad_key.status.code(), Some(2), "{bad_key:?}");
    assert!(
        stderr(&bad_key).contains("order_id, line"),
        "{}",
        stderr(&bad_key)
    );
    assert_eq!(receiver.requests().len(), 5, "no request for an error");
    untouched(&db, slot_before).await;
}

#[tokio::test]
async fn a_failing_endpoint_exits_non_zero_and_shows_its_answer() {
    let db = TestDb::with_schema(SCHEMA).await;
    let receiver = Receiver::start().await;
    receiver.answer_next([Reply::status(500)
        .header("x-trace", "abc123")
        .body("database on fire")]);
    let binary = WalhookBinary::new(
        &db.config_text(
            signed("orders", &receiver, &["orders"], &["insert"])
                .columns(&["id", "status"])
                .with("batch", "{ max_events = 10 }"),
        ),
    );
    let setup = binary.command(&["setup"]).await;
    assert!(setup.status.success(), "{setup:?}");
    let slot_before = db.confirmed_flush().await;

    let output = binary.command(&["send-test", "orders", "--json"]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stderr(&output).contains("HTTP 500"), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["response"]["status"], 500);
    assert_eq!(report["response"]["body"], "database on fire");
    assert_eq!(report["response"]["headers"]["x-trace"], "abc123");
    assert!(report["elapsed_ms"].as_f64().unwrap() > 0.0);

    // A batched subscription gets a batch of one; the projection applies.
    let request = only_request(&receiver, &output);
    assert!(request.signature_verifies(SECRET));
    let events = request.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        request.headers["webhook-id"],
        events[0]["id"].as_str().unwrap()
    );
    assert_eq!(
        events[0]["record"],
        serde_json::json!({"id": 1, "status": "sample"})
    );
    assert_eq!(report["request"]["body"]["events"][0], events[0]);

    // Answered in text too: status, headers, body.
    receiver.answer_next([Reply::status(503).body("try later")]);
    let output = binary.command(&["send-test", "orders"]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let printed = stdout(&output);
    assert!(printed.contains("< HTTP 503"), "{printed}");
    assert!(printed.contains("try later"), "{printed}");
    untouched(&db, slot_before).await;
}
