//! The oracle for value fidelity: for every column of a wide table,
//! `walhook::value::write_json` applied to the column's text output must give
//! what PostgreSQL's own `to_jsonb(row)` gives, compared after PostgreSQL
//! parses both as jsonb (so `12.50` and `12.5` differ, and floats compare by
//! value), and with the sign of every number compared too (jsonb has no
//! negative zero, so that comparison alone would let `-0` for `0` pass).

use anyhow::{Context, Result, bail};
use tokio_postgres::{Client, SimpleQueryMessage};
use walhook::catalog::{JsonKind, TypeRegistry, builtin_oids};
use walhook::value::write_json;

use crate::support::TestDb;
use crate::support::zero_sign::sign_differences;

/// A fresh database whose session formats values as the walsender's does
/// (UTC, ISO dates, postgres intervals, hex bytea).
async fn walsender_session() -> Result<TestDb> {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres';
             SET extra_float_digits = 1; SET bytea_output = 'hex';",
        )
        .await?;
    Ok(db)
}

const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy ish', 'quo"te');
CREATE TYPE inner_t AS (x int, label text);
CREATE TYPE outer_t AS (id int8, name text, inner_v inner_t, tags text[], at timestamptz,
                        j json, price numeric, flag bool);
CREATE DOMAIN price_d AS numeric(12,2);
CREATE DOMAIN price_dd AS price_d;
CREATE DOMAIN ints_d AS int[];
CREATE DOMAIN outer_d AS outer_t;
CREATE TABLE v (
    row_id int PRIMARY KEY,
    c_int2 int2, c_int4 int4, c_int8 int8, c_numeric numeric, c_float4 float4, c_float8 float8,
    c_bool bool, c_text text, c_varchar varchar(40), c_char char(5), c_json json, c_jsonb jsonb,
    c_bytea bytea, c_date date, c_time time, c_timetz timetz, c_ts timestamp, c_tstz timestamptz,
    c_interval interval, c_uuid uuid, c_inet inet, c_money money, c_oid oid,
    c_int4_arr int4[], c_text_arr text[], c_int_2d int[][], c_int_lb int[], c_jsonb_arr jsonb[],
    c_json_arr json[], c_tstz_arr timestamptz[], c_ts_arr timestamp[], c_date_arr date[],
    c_bool_arr bool[], c_float8_arr float8[], c_numeric_arr numeric[], c_bytea_arr bytea[],
    c_mood mood, c_mood_arr mood[], c_price price_d, c_price_dd price_dd, c_price_arr price_d[],
    c_ints ints_d, c_outer outer_t, c_outer_arr outer_t[], c_outer_d outer_d,
    c_range int4range, c_range_arr int4range[], c_box_arr box[], c_int2vector int2vector,
    c_oidvector oidvector, c_point point
);
INSERT INTO v VALUES (
    1,
    -32768, 2147483647, -9223372036854775808, 12.50, 0.1, 0.1,
    true, E'unicode é 😀 "quotes" back\\slash\nnew line\ttab\x01ctl', 'varchar, with comma', 'ab',
    '{"b": 1, "a": 2, "a": 3, "n": [1e2, 1.50, -0, 1.5e1, 1E-2], "u": "\u00e9\"\/\n"}',
    '{"z": 1, "a": [1.50, "x"]}',
    '\x00ff10', '2026-11-27', '08:00:00.5', '08:00:00+05:30', '2026-11-27 08:00:00.123456',
    '2026-11-27 08:00:00.123456+05:30', '1 year 2 mons 3 days 04:05:06.7',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', '12.50', 4294967295,
    '{1,NULL,3}', ARRAY['a,b', '{x}', 'NULL', '', ' sp ', 'q"uo\te', NULL, 'null', 'é', E'new\nline', 'back\\slash'],
    '{{1,2},{3,4}}', '[0:1]={1,2}', ARRAY['{"b":1,"a":[1.50]}'::jsonb, 'null', '"s"'],
    ARRAY['{"b":1,"a":2,"a":3}'::json, '[1e2, -0.0]', '"\u00e9"'],
    ARRAY['2026-11-27 08:00:00+00'::timestamptz, 'infinity', '0044-03-15 10:00:00+00 BC'],
    ARRAY['2026-11-27 08:00:00.5'::timestamp, '-infinity'], ARRAY['2026-11-27'::date, 'infinity', '0044-03-15 BC'],
    '{t,f,NULL}', ARRAY[1.5::float8, 'NaN', '1e300', '-Infinity', '-0'], ARRAY[12.50, 'NaN', NULL, -0.000001],
    ARRAY['\x00'::bytea, '\xdeadbeef'],
    'happy ish', ARRAY['ok', 'quo"te', 'happy ish']::mood[], 12.5, 7, ARRAY[1.5, NULL]::price_d[],
    '{1,2}',
    ROW(1, 'a "q" b,c (x)', ROW(2, NULL), ARRAY['x', 'y z'], '2026-01-01 00:00+00', '{"z":1,"a":2}', 12.50, true),
    ARRAY[ROW(1, 'a', ROW(2, 'b c'), '{}', NULL, NULL, 1, false)::outer_t, NULL],
    ROW(3, '', NULL, NULL, 'infinity', '[]', 'NaN', NULL),
    '[1,3)', ARRAY['[1,3)'::int4range, 'empty'], ARRAY['(1,1),(0,0)'::box, '(3,3),(2,2)'],
    '1 2 3', '1 2', '(1.5,-2)'
), (
    2,
    0, -1, 0, 'NaN', 'Infinity', '-Infinity',
    false, '', '', '', '[]', '{}',
    '', '-infinity', '00:00', '23:59:59.999999-12', '-infinity', 'infinity', '-178000000 years',
    '00000000-0000-0000-0000-000000000000', '::1', '-0.01', 0,
    '{}', '{}', '{{NULL,NULL},{NULL,NULL}}', '[-3:-2]={-1,-2}', '{}',
    '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}',
    'sad', '{}', 0, 0, '{}', '{}',
    ROW(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    '{}', ROW(NULL, 'x', ROW(NULL, NULL), '{NULL}', NULL, 'null', NULL, NULL),
    'empty', '{}', '{}', '', '', '(0,0)'
), (
    3,
    1, 1, 1, '-1234567890123456789012345678901234567890.0000000001', 'NaN', 'NaN',
    true, E'\\x not bytea, "\\" and }{,', 'x', 'abcde', ' {"a" : 1e400 , "b":[  ] , "a" : -1.0E-0 } ',
    '[1, "a", null, true, {"k": {}}]',
    '\x', '0001-01-01 BC', '24:00:00', '00:00:00+00', '0044-03-15 10:00:00 BC',
    '0001-01-01 00:00:00+00 BC', '-1 days +02:03:04', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
    '2001:db8::1/128', '92233720368547758.07', 1,
    '{NULL}', '{"","NULL",NULL}', '[1:2][3:4]={{1,2},{3,4}}', '[0:0]={7}', ARRAY['{"a": {"b": [1, 2.50]}}'::jsonb],
    ARRAY['  {"b" : 1e-3}  '::json, NULL], ARRAY['0001-01-01 00:00:00+00 BC'::timestamptz],
    ARRAY['0044-03-15 10:00:00 BC'::timestamp], ARRAY['12345-01-01'::date],
    '{NULL}', ARRAY[1e-310::float8, 3.4e38], ARRAY[1e40, 0.0],
    ARRAY[NULL::bytea],
    'quo"te', ARRAY[NULL]::mood[], -0.5, -0.5, '{}', '{}',
    ROW(-9, E'new\nline "and" \\ back', ROW(-1, E',()"\\'), ARRAY[NULL, 'NULL', ''], '0044-03-15 10:00:00+00 BC', '"s"', -0.0, NULL),
    ARRAY[NULL, ROW(NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL)]::outer_t[],
    ROW(1, E'tab\there', ROW(1, 'l'), ARRAY['a'], NULL, '{"x": [1e2]}', 1e-5, true),
    '(,5]', ARRAY[NULL::int4range], '{}', '0', '0', '(1e300,-1e-300)'
), (
    4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL
);
"#;

/// A column's name and type.
struct Column {
    name: String,
    type_oid: u32,
    type_name: String,
}

async fn columns(client: &Client, table: &str) -> Result<Vec<Column>> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&table],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Column {
                name: row.try_get(0)?,
                type_oid: row.try_get(1)?,
                type_name: row.try_get(2)?,
            })
        })
        .collect()
}

/// Each column's text output for one row, as the walsender sends it: the
/// simple query protocol returns exactly the type output functions' text
/// (`col::text` would not: it strips a `char(n)`'s padding).
async fn text_values(
    client: &Client,
    table: &str,
    row_id: i32,
    columns: &[Column],
) -> Result<Vec<Option<String>>> {
    let list = columns
        .iter()
        .map(|c| format!("\"{}\"", c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let messages = client
        .simple_query(&format!(
            "SELECT {list} FROM {table} WHERE row_id = {row_id}"
        ))
        .await?;
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            return (0..columns.len())
                .map(|i| Ok(row.try_get(i)?.map(str::to_owned)))
                .collect();
        }
    }
    bail!("row {row_id} not found in {table}")
}

fn render(types: &TypeRegistry, type_oid: u32, text: Option<&str>) -> String {
    match text {
        None => "null".to_owned(),
        Some(text) => {
            let mut out = Vec::new();
            write_json(&mut out, type_oid, text.as_bytes(), types);
            String::from_utf8_lossy(&out).into_owned()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_column_type_renders_as_to_jsonb() -> Result<()> {
    let db = walsender_session().await?;
    let client = &db.client;
    client.batch_execute(SCHEMA).await?;
    let columns = columns(client, "v").await?;
    assert!(columns.len() > 50, "{} columns", columns.len());

    let mut types = TypeRegistry::new();
    let oids: Vec<u32> = columns.iter().map(|c| c.type_oid).collect();
    types.ensure(client, &oids).await?;

    // The comparison itself must tell digits apart (a control, not a value).
    let control = client
        .query_one(
            "SELECT '12.5'::jsonb::text = (to_jsonb(v) -> 'c_numeric')::text FROM v WHERE row_id = 1",
            &[],
        )
        .await?;
    assert!(
        !control.try_get::<_, bool>(0)?,
        "12.5 must differ from 12.50"
    );

    let compared = assert_renders_as_to_jsonb(client, "v", 1..=4, &columns, &types).await?;
    assert_eq!(compared, 4 * columns.len());
    Ok(())
}

/// Renders every column of the given rows of `table` (whose key column is
/// `row_id`) and compares each with `to_jsonb(row) -> column`, after
/// PostgreSQL parses ours as jsonb. Returns how many values it compared.
async fn assert_renders_as_to_jsonb(
    client: &Client,
    table: &str,
    row_ids: std::ops::RangeInclusive<i32>,
    columns: &[Column],
    types: &TypeRegistry,
) -> Result<usize> {
    let mut failures = Vec::new();
    let mut compared = 0;
    for row_id in row_ids {
        let texts = text_values(client, table, row_id, columns).await?;
        for (column, text) in columns.iter().zip(&texts) {
            let ours = render(types, column.type_oid, text.as_deref());
            let parses = serde_json::from_str::<serde_json::Value>(&ours).is_ok();
            let verdict = client
                .query_one(
                    &format!(
                        "SELECT $1::text::jsonb::text = (to_jsonb(t) -> $2::text)::text,
                                (to_jsonb(t) -> $2::text)::text
                           FROM {table} t WHERE row_id = $3"
                    ),
                    &[&ours, &column.name, &row_id],
                )
                .await;
            compared += 1;
            let (equal, oracle) = match verdict {
                Ok(row) => (row.try_get::<_, bool>(0)?, row.try_get::<_, String>(1)?),
                Err(error) => (false, format!("(comparison failed: {error})")),
            };
            let signs = if equal && parses {
                signs_of_numbers_differ(&ours, &oracle)?
            } else {
                String::new()
            };
            if !equal || !parses || !signs.is_empty() {
                failures.push(format!(
                    "row {row_id} column {} ({}, oid {}, kind {:?})\n    text:   {:?}\n    ours:   {ours}{}\n    oracle: {oracle}{signs}",
                    column.name,
                    column.type_name,
                    column.type_oid,
                    types.kind(column.type_oid),
                    text,
                    if parses { "" } else { "   <- not JSON" },
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {compared} values differ from to_jsonb:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(compared)
}

/// Empty when every number of `ours` has the sign of its counterpart in
/// `oracle` (JSON texts already equal as jsonb); else a line saying where
/// they differ, for a failure message.
fn signs_of_numbers_differ(ours: &str, oracle: &str) -> Result<String> {
    let differences =
        sign_differences(&serde_json::from_str(ours)?, &serde_json::from_str(oracle)?);
    Ok(if differences.is_empty() {
        String::new()
    } else {
        format!("\n    signs differ at: {}", differences.join("; "))
    })
}

/// float4 and float8 print a negative zero as `-0`; `to_jsonb` reads every
/// number back with numeric_in, which has no negative zero, and gives `0` —
/// as a scalar, in arrays, in composites and through a domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_zero_renders_as_to_jsonb_does() -> Result<()> {
    let db = walsender_session().await?;
    let client = &db.client;
    client
        .batch_execute(
            r#"
            CREATE TYPE fz AS (a float4, b float8, c numeric);
            CREATE DOMAIN f8_d AS float8;
            CREATE TABLE z (row_id int PRIMARY KEY, f4 float4, f8 float8, n numeric, f8d f8_d,
                            f4a float4[], f8a float8[], na numeric[], f8_2d float8[], comp fz,
                            comps fz[], j json, jb jsonb);
            INSERT INTO z VALUES
              (1, '-0', '-0', '-0', '-0', '{-0,0,-1.5}', '{-0}', '{-0,-0.0}', '{{-0,1},{2,-0}}',
               ROW('-0', '-0', '-0'), ARRAY[ROW('-0', '-0', '-0')::fz, NULL],
               '[-0, -0.0, {"a": -0}]', '[-0]'),
              (2, '0', '0', '0.0', '-1e-50', '{-0.5}', '{-1e-310}', '{0}', '{{0}}',
               ROW('1', '-2', '-0.00'), '{}', '-0', '-0.0');
            "#,
        )
        .await?;
    // The server's text output keeps the sign: what the walsender sends.
    let row = client
        .query_one("SELECT f4::text, f8::text FROM z WHERE row_id = 1", &[])
        .await?;
    assert_eq!(
        (row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?),
        ("-0".to_owned(), "-0".to_owned())
    );
    let columns = columns(client, "z").await?;
    let mut types = TypeRegistry::new();
    let oids: Vec<u32> = columns.iter().map(|c| c.type_oid).collect();
    types.ensure(client, &oids).await?;
    let compared = assert_renders_as_to_jsonb(client, "z", 1..=2, &columns, &types).await?;
    assert_eq!(compared, 2 * columns.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hstore_renders_as_its_cast_to_json_does() -> Result<()> {
    let db = walsender_session().await?;
    let client = &db.client;
    client
        .batch_execute(
            r#"
            CREATE EXTENSION hstore;
            CREATE DOMAIN tags_d AS hstore;
            CREATE TABLE h (row_id int PRIMARY KEY, c_hstore hstore, c_hstore_arr hstore[],
                            c_tags tags_d);
            INSERT INTO h VALUES
              (1, 'b=>1, a=>NULL, longer=>"x y", aa=>"q\"uote", "back\\slash"=>"é 😀", "="=>">"',
               ARRAY['a=>1'::hstore, '', NULL], 'k=>v'),
              (2, '', '{}', ''),
              (3, NULL, NULL, NULL),
              (4, '"new
line"=>"tab	here", ""=>""', ARRAY['x=>NULL'::hstore], 'z=>1, y=>2');
            "#,
        )
        .await?;
    let columns = columns(client, "h").await?;
    let mut types = TypeRegistry::new();
    let oids: Vec<u32> = columns.iter().map(|c| c.type_oid).collect();
    types.ensure(client, &oids).await?;
    assert_eq!(types.kind(columns[1].type_oid), &JsonKind::Hstore);
    let compared = assert_renders_as_to_jsonb(client, "h", 1..=4, &columns, &types).await?;
    assert_eq!(compared, 4 * columns.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_is_normalised_as_to_jsonb_does() -> Result<()> {
    let db = walsender_session().await?;
    let client = &db.client;
    let types = TypeRegistry::new();
    let documents = [
        r#"{"b":1, "a":2, "aa": 3, "a": 4}"#,
        "  [1e2, 1.50, 1.5e1, -0, 0.0, -0.0, 1E-2, 1e+2, 12e-1, 0e5, 1.0e1, -1.0E-0, 100e-2, 1.23e+2]  ",
        "123456789012345678901234567890e-10",
        "1e1000",
        "1e-1000",
        "0e-16383",
        "-0.000e3",
        r#""\u00e9\"\\\/\b\f\n\r\t\u0001\u001f\u007f\u2028\ud83d\ude00\uD83D\uDE00""#,
        r#"{"":1, " ":2, "é":3, "z":4, "aa":5, "ab": 6, "b": 7}"#,
        r#"{"a":{"b":[1,{"d":1,"c":2}]},"a":null}"#,
        r#"{"x": {"y": 1, "y": {"z": [true, false, null]}}, "é\u00e9": "\u0041"}"#,
        "\t\n\r [ \n ] \n",
        "{}",
        "[]",
        "true",
        "false",
        "null",
        r#""""#,
        "0",
        "-1",
        "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]",
        r#"[{"k": "v", "k": "w"}, {"k": "x"}, "k"]"#,
        r#"{"key with \"quotes\"": "and \\backslash", "tab\tkey": 1}"#,
    ];
    let mut failures = Vec::new();
    for document in documents {
        let mut out = Vec::new();
        write_json(&mut out, 114, document.as_bytes(), &types);
        let ours = String::from_utf8_lossy(&out).into_owned();
        let row = client
            .query_one(
                "SELECT $1::text::jsonb::text = to_jsonb($2::text::json)::text,
                        to_jsonb($2::text::json)::text,
                        $1::text::jsonb::text",
                &[&ours, &document],
            )
            .await
            .with_context(|| format!("comparing {document:?} / ours {ours:?}"))?;
        let equal: bool = row.try_get(0)?;
        let oracle: String = row.try_get(1)?;
        let signs = if equal {
            signs_of_numbers_differ(&ours, &oracle)?
        } else {
            String::new()
        };
        if !equal || !signs.is_empty() {
            let ours_as_jsonb: String = row.try_get(2)?;
            failures.push(format!(
                "json {document:?}\n    ours:   {ours}\n    ours as jsonb: {ours_as_jsonb}\n    oracle: {oracle}{signs}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// The types the registry knows without a query are what the catalog says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_types_match_the_catalog() -> Result<()> {
    let db = walsender_session().await?;
    let client = &db.client;
    let builtin = TypeRegistry::new();
    let mut loaded = TypeRegistry::without_builtins();
    let oids: Vec<u32> = builtin_oids().collect();
    loaded.ensure(client, &oids).await?;
    let mut failures = Vec::new();
    for oid in oids {
        let (Some(ours), Some(catalog)) = (builtin.get(oid), loaded.get(oid)) else {
            failures.push(format!("oid {oid}: not in the catalog"));
            continue;
        };
        if ours != catalog {
            failures.push(format!("oid {oid}: built in {ours:?}, catalog {catalog:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A domain over a domain, an array of a domain, a domain over a
    // composite: resolved to the final base in one ensure.
    client
        .batch_execute(
            "CREATE DOMAIN d1 AS numeric; CREATE DOMAIN d2 AS d1;
             CREATE TYPE pair AS (a d2, b text[]); CREATE DOMAIN dp AS pair;",
        )
        .await?;
    let row = client
        .query_one(
            "SELECT 'd2'::regtype::oid, '_d2'::regtype::oid, 'dp'::regtype::oid,
                    'pair'::regtype::oid",
            &[],
        )
        .await?;
    let (d2, d2_array, dp, pair): (u32, u32, u32, u32) = (
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    );
    let mut types = TypeRegistry::new();
    types.ensure(client, &[d2, d2_array, dp]).await?;
    assert_eq!(types.kind(d2), &JsonKind::Number);
    assert_eq!(
        types.kind(d2_array),
        &JsonKind::Array {
            element: d2,
            delimiter: b','
        }
    );
    assert_eq!(types.get(dp).map(|t| t.base_oid), Some(pair));
    assert_eq!(
        types.kind(dp),
        &JsonKind::Composite {
            fields: vec![("a".into(), d2), ("b".into(), 1009)]
        }
    );
    // A Type message invalidates; the next ensure reloads.
    types.invalidate(dp);
    assert!(types.get(dp).is_none());
    types.ensure(client, &[dp]).await?;
    assert!(types.get(dp).is_some());
    Ok(())
}
