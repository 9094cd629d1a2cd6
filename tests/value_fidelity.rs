//! Every column of a row with 30-odd types arrives as `to_jsonb(row)` gives it
//! (TimeZone UTC): the oracle is PostgreSQL itself, compared as jsonb and by
//! the sign of every number (jsonb alone cannot tell `-0` from `0`).

use std::time::Duration;

use serde_json::Value;

use crate::support::config::subscription;
use crate::support::receiver::Receiver;
use crate::support::zero_sign::sign_differences;
use crate::support::{TestDb, Walhook};

const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy "quoted"');
CREATE DOMAIN positive_amount AS numeric(12,2) CHECK (VALUE > 0);
CREATE DOMAIN int_list AS int[];
CREATE TYPE geo AS (lat float8, lon float8);
CREATE TYPE address AS (street text, city text, zip int, at geo, tags text[]);
CREATE TABLE everything (
    id int PRIMARY KEY,
    c_int2 int2, c_int4 int4, c_int8 int8, c_oid oid,
    c_numeric numeric, c_numeric_scaled numeric(10,2),
    c_float4 float4, c_float8 float8,
    c_bool bool,
    c_text text, c_varchar varchar(40), c_char char(5),
    c_json json, c_jsonb jsonb,
    c_bytea bytea,
    c_date date, c_time time, c_timetz timetz,
    c_timestamp timestamp, c_timestamptz timestamptz, c_interval interval,
    c_uuid uuid, c_inet inet, c_money money,
    c_int_array int[], c_text_array text[], c_int_2d int[][], c_bounded int[],
    c_jsonb_array jsonb[], c_tstz_array timestamptz[], c_bool_array bool[],
    c_mood mood, c_mood_array mood[],
    c_amount positive_amount, c_int_list int_list,
    c_address address, c_addresses address[],
    c_range int4range, c_tsrange tsrange,
    c_float4_array float4[], c_float8_array float8[]
);
"#;

const ROWS: &str = r#"
INSERT INTO everything VALUES (
    1, 32767, -2147483648, 9223372036854775807, 4294967295,
    12345678901234567890123456789012345678.000001, 12.50,
    3.14159, 0.1,
    true,
    'héllo "wörld" \ back\slash', 'tab	and
newline', 'ab',
    '{"b": 1, "a": [1, 2.50, 1e2, -0], "a": "dup", "u": "\u00e9\n"}', '{"z": {"y": null}, "k": 1.10}',
    '\xdeadbeef00',
    '2026-11-27', '08:00:00.123456', '08:00:00+05:30',
    '2026-11-27 08:00:00.123456', '2026-11-27 08:00:00.5+02', '1 year 2 mons 3 days 04:05:06.7',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', 1234.56,
    '{1,NULL,3}', '{"a b","c,d","e\"f","g\\h","NULL",NULL,"","{x}"}', '{{1,2},{3,4}}', '[0:1]={7,8}',
    ARRAY['{"k": [1, 2]}'::jsonb, 'null'::jsonb, '"s"'::jsonb], '{"2026-01-01 00:00:00+00",infinity}', '{t,f,NULL}',
    'happy "quoted"', '{sad,"happy \"quoted\""}',
    99.90, '{5,6}',
    ROW('1 Main St, "Apt" 2', 'Zürich', 8000, ROW(47.37, 8.54), '{a,"b c"}')::address,
    ARRAY[ROW('x', NULL, NULL, NULL, NULL)::address, ROW(NULL, 'y', 1, ROW(NULL, 0.5), '{}')::address],
    '[1,10)', '["2026-01-01 00:00","2026-02-01 00:00")'
), (
    2, -1, 0, -1, 0,
    'NaN', -0.01,
    'Infinity', '-Infinity',
    false,
    '', 'x', 'abcde',
    '[]', '[1, "two", {"three": 3.0}]',
    '\x',
    'infinity', '00:00:00', '23:59:59.999999-12',
    '-infinity', 'infinity', '-1 days -00:00:01',
    '00000000-0000-0000-0000-000000000000', '::1', -0.5,
    '{}', '{}', '{{NULL,NULL}}', '{}',
    '{}', '{}', '{}',
    'sad', '{}',
    0.01, '{}',
    ROW(NULL, NULL, NULL, NULL, NULL)::address, '{}',
    'empty', '(,)'
), (
    3, NULL, NULL, NULL, NULL, 'Infinity', NULL, 'NaN', 1e300, NULL,
    'emoji 🎉 and control ' || chr(1) || chr(31), NULL, NULL,
    '{"nested": {"deep": [[], {}]}, "num": 1.5e1}', '"just a string"',
    NULL,
    '0044-03-15 BC', NULL, NULL,
    '0044-03-15 12:00:00 BC', '0044-03-15 12:00:00+00 BC', NULL,
    NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
), (
    4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
);
-- Negative zeros: float4/float8 print `-0`, to_jsonb gives 0 (numeric has
-- no negative zero), in arrays and composites too.
INSERT INTO everything (id, c_numeric, c_float4, c_float8, c_address, c_addresses,
                        c_float4_array, c_float8_array)
VALUES (
    5, '-0', '-0', '-0',
    ROW(NULL, NULL, NULL, ROW('-0', '-0'), NULL)::address,
    ARRAY[ROW(NULL, NULL, NULL, ROW('-0', 0), NULL)::address],
    '{-0,0,-1.5}', '{{-0,1},{2,-0}}'
);
"#;

#[tokio::test]
async fn every_record_equals_to_jsonb_of_its_row() {
    let db = TestDb::new().await;
    db.client.batch_execute(SCHEMA).await.unwrap();
    let receiver = Receiver::start().await;
    let walhook = Walhook::start(
        db.config(subscription("everything", &receiver.url("/")).tables(&["everything"])),
    );
    db.wait_slot_active().await;
    db.client.batch_execute(ROWS).await.unwrap();
    let inserts = receiver
        .wait_for_delivered(5, Duration::from_secs(30))
        .await;
    assert_records_match(&db, &inserts).await;

    // An update's new row must be just as faithful.
    db.client
        .batch_execute("UPDATE everything SET c_text = c_text || '!' WHERE id = 1")
        .await
        .unwrap();
    let events = receiver
        .wait_for_delivered(6, Duration::from_secs(30))
        .await;
    assert_eq!(events[5]["type"], "UPDATE");
    assert_records_match(&db, &events[5..]).await;

    // Digits are kept, not only values: numeric(10,2) 12.50 and -0.01.
    let raw: Vec<String> = receiver
        .requests()
        .iter()
        .map(|request| String::from_utf8(request.body.to_vec()).unwrap())
        .collect();
    let body_of = |id: i32| {
        raw.iter()
            .find(|body| body.contains(&format!("\"record\":{{\"id\":{id},")))
            .unwrap()
    };
    assert!(
        body_of(1).contains("\"c_numeric_scaled\":12.50"),
        "{}",
        body_of(1)
    );
    assert!(
        body_of(2).contains("\"c_numeric\":\"NaN\""),
        "{}",
        body_of(2)
    );
    walhook.stop().await.unwrap();
}

/// Compares each event's record with `to_jsonb` of its row, as PostgreSQL
/// canonicalises both (numeric digits kept, floats by value).
async fn assert_records_match(db: &TestDb, events: &[Value]) {
    let mut mismatches = Vec::new();
    for event in events {
        let record = &event["record"];
        let id = record["id"].as_i64().unwrap() as i32;
        let ours = serde_json::to_string(record).unwrap();
        let row = db
            .client
            .query_one(
                "SELECT $1::text::jsonb::text = to_jsonb(t)::text, to_jsonb(t)::text \
                 FROM everything t WHERE id = $2",
                &[&ours, &id],
            )
            .await
            .unwrap();
        let equal: bool = row.get(0);
        let oracle: String = row.get(1);
        let signs = sign_differences(record, &serde_json::from_str(&oracle).unwrap());
        if !equal || !signs.is_empty() {
            mismatches.push(format!(
                "{}\n  signs differ at: {signs:?}",
                column_diff(id, record, &oracle)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "records differ from to_jsonb:\n{}",
        mismatches.join("\n")
    );
}

/// Which columns differ, for a readable failure.
fn column_diff(id: i32, ours: &Value, oracle_text: &str) -> String {
    let oracle: Value = serde_json::from_str(oracle_text).unwrap();
    let mut lines = vec![format!("row {id}:")];
    if let (Some(ours), Some(oracle)) = (ours.as_object(), oracle.as_object()) {
        for (column, expected) in oracle {
            let got = ours
                .get(column)
                .cloned()
                .unwrap_or(Value::String("<missing>".into()));
            if &got != expected {
                lines.push(format!("  {column}: ours {got} oracle {expected}"));
            }
        }
    }
    lines.join("\n")
}
