//! `walhook send-test SUBSCRIPTION`: one signed test event to a
//! subscription's endpoint, and what the endpoint answered
//! (docs/operations.md#testing-an-endpoint).
//!
//! The event is built the way the stream builds one: the table's columns as
//! pgoutput sends them, each value rendered by the same conversion as a
//! live change's (`value::write_json`, through the decoder), the
//! subscription's projection, then the payload writer with a fresh id and
//! `"test": true` in `source`. Its values are samples of each column's type
//! ([`sample`]), or with `--from-row` a row read by its key in the session
//! settings a backfill reads with. An update carries the `old_record` the
//! table's replica identity would give one that keeps its key; a delete the
//! old row or key it would give. The request goes through the
//! subscription's endpoint exactly as deliveries do (URL, headers,
//! signature, TLS, destination policy), as one event or a batch of one.
//! The subscription's `events` and `filter` are evaluated and reported but
//! do not stop the test.
//!
//! It does not touch the slot, the backlog, the dead letters or any table:
//! it reads the catalog (and the one row) over an ordinary connection. Its
//! source position is `0/0` and its xid 0, which no real change has.

mod sample;

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::backfill::worker::output_text;
use crate::catalog::TypeRegistry;
use crate::commands::CommandError;
use crate::config::{Config, SubscriptionConfig, TableName, quote_identifier};
use crate::decode::Decoder;
use crate::deliver::http::{Clients, Endpoint, Exchange, RequestBody};
use crate::event::{
    Cell, Change, ColumnInfo, EventKind, Projection, Row, TableInfo, TransactionInfo,
};
use crate::lsn::Lsn;
use crate::pgconn::{ConnectParams, connect_sql};
use crate::rules::{Decision, Rules};
use crate::store::publication::GENERATED_COLUMNS_SINCE;
use crate::tables::CatalogTable;

/// How much of the request and response bodies is printed.
const SHOWN_BODY: usize = 4 * 1024;

/// What `walhook send-test` asks for.
#[derive(Debug, Clone)]
pub struct Options {
    pub subscription: String,
    /// `--table`: needed when the subscription selects several.
    pub table: Option<String>,
    /// Insert, update or delete.
    pub kind: EventKind,
    /// `--from-row KEY`: the row with this key instead of samples.
    pub from_row: Option<String>,
    pub json: bool,
}

/// A table as the test event describes it, and what reading it needs.
struct Shape {
    table: Arc<TableInfo>,
    /// Each column's type as `format_type` gives it (with its modifier).
    type_names: Vec<String>,
    /// The primary key's columns, else the replica identity index's, in
    /// index order (by index into the columns): what `--from-row` names.
    key: Vec<usize>,
    /// `d`efault, `f`ull, `i`ndex or `n`othing.
    replica_identity: char,
}

/// Sends the test event; `Ok` only when the endpoint answered 2xx.
pub async fn run(config_path: &Path, options: Options) -> Result<(), CommandError> {
    let config = Config::load(config_path)?;
    let subscription =
        super::backfill::find_subscription(&config, config_path, &options.subscription)?;
    let mut clients = Clients::new(&config.delivery);
    let endpoint = Endpoint::new(subscription, &mut clients)?;
    let client = connect_sql(&ConnectParams::from_source(&config.source)?).await?;
    // Values print as the walsender prints them (as a backfill reads rows).
    client
        .batch_execute(crate::backfill::worker::SESSION)
        .await
        .map_err(|error| failed("setting up the session", &error))?;

    let resolution = crate::tables::resolve(&client, &subscription.tables)
        .await
        .map_err(|error| failed("looking up the subscription's tables", &error))?;
    let selected: Vec<&CatalogTable> = resolution.selected_by(&subscription.tables).collect();
    let table = choose_table(subscription, &selected, options.table.as_deref())?;
    let shape = load_shape(&client, table.oid)
        .await
        .map_err(|error| failed(&format!("reading the columns of {}", table.name), &error))?;

    let column_types: Vec<u32> = shape.table.columns.iter().map(|c| c.type_oid).collect();
    let mut types = TypeRegistry::new();
    types
        .ensure(&client, &column_types)
        .await
        .map_err(|error| {
            CommandError::Failed(format!(
                "loading the column types of {}: {error}",
                table.name
            ))
        })?;
    let (texts, values_from) = match &options.from_row {
        Some(key) => (
            read_row(&client, &table.name, &shape, key).await?,
            format!("row {key}"),
        ),
        None => (
            sample::texts(&client, &column_types, &shape.type_names, &types)
                .await
                .map_err(|error| failed("making sample values", &error))?,
            "sample values".to_owned(),
        ),
    };
    // Rendered by the decoder, as a live change's values are.
    let mut decoder = Decoder::new(types);
    let row = decoder
        .backfill_rows(&client, &shape.table, &[texts])
        .await
        .map_err(|error| CommandError::Failed(format!("rendering the values: {error}")))?
        .pop()
        .unwrap_or_default();
    let change = test_change(&shape, options.kind, row);

    let mut rules = Rules::new(&config.subscriptions);
    rules.bind(&resolution);
    let index = config
        .subscriptions
        .iter()
        .position(|candidate| candidate.name == subscription.name)
        .unwrap_or_default();
    let route = rules
        .routes_for(&shape.table)
        .into_iter()
        .find(|route| route.subscription == index);
    let verdict = match &route {
        None => "not applied: the subscription does not select this table".to_owned(),
        Some(route) if !route.wants(options.kind) => format!(
            "not applied: the subscription's events do not list {}, so a real {} would not \
             be sent",
            options.kind.sql_operation(),
            options.kind.payload_type(),
        ),
        Some(route) => match route.decide(&change) {
            Decision::Deliver if subscription.filter.is_some() => {
                "true for this event; a real one would be sent".to_owned()
            }
            Decision::Deliver => "none; a real one would be sent".to_owned(),
            Decision::Skip => "not true for this event; a real one would not be sent".to_owned(),
            Decision::Park(reason) => format!("cannot be evaluated: {reason}"),
        },
    };
    let mask = route.as_ref().and_then(|route| route.projection.clone());
    let projection = mask.as_deref().map_or(Projection::All, Projection::Only);

    let nonce = fastrand::u128(..)
        ^ SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|since| since.as_nanos())
            .unwrap_or_default();
    let id = crate::event::test_event_id(&subscription.name, nonce);
    let mut payload = Vec::new();
    crate::event::write_test_payload(&mut payload, &change, &subscription.name, projection, id);
    let request = if endpoint.batched() {
        RequestBody::batch(std::iter::once((id.as_str(), &payload[..])))
    } else {
        RequestBody {
            id: id.to_string(),
            body: Bytes::from(payload),
        }
    };
    tracing::info!(
        subscription = %subscription.name,
        table = %table.name,
        event_id = %id,
        "sending a test event (source.test = true); no slot, backlog or dead letter is touched"
    );
    let exchange = endpoint
        .exchange(&request, config.delivery.timeout, SHOWN_BODY)
        .await;

    let about = About {
        subscription: &subscription.name,
        table: &table.name,
        kind: options.kind,
        values_from: &values_from,
        event_id: id.as_str(),
        filter: &verdict,
    };
    if options.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&as_json(&about, &request, &exchange)).unwrap_or_default()
        );
    } else {
        print!("{}", as_text(&about, &request, &exchange));
    }
    match &exchange.answer {
        Ok(answer) if (200..300).contains(&answer.status) => Ok(()),
        Ok(answer) => Err(CommandError::Failed(format!(
            "the endpoint answered HTTP {} to the test event (a 2xx means delivered)",
            answer.status
        ))),
        Err(why) => Err(CommandError::Failed(format!(
            "the test event got no answer: {why}"
        ))),
    }
}

fn failed(what: &str, error: &tokio_postgres::Error) -> CommandError {
    CommandError::Failed(format!("{what}: {}", server_message(error)))
}

/// The server's message without the driver's wrapping.
fn server_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => error.to_string(),
    }
}

/// The table to describe: `--table`, or the only one the subscription
/// selects.
fn choose_table<'a>(
    subscription: &SubscriptionConfig,
    selected: &[&'a CatalogTable],
    wanted: Option<&str>,
) -> Result<&'a CatalogTable, CommandError> {
    let names = || {
        selected
            .iter()
            .map(|table| table.name.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (wanted, selected) {
        (None, []) => Err(CommandError::Usage(format!(
            "subscription {:?} selects no table that exists ({}); create it, or run \
             `walhook check`",
            subscription.name,
            super::backfill::configured_tables(subscription)
        ))),
        (None, [only]) => Ok(only),
        (None, _) => Err(CommandError::Usage(format!(
            "subscription {:?} selects several tables; name one with --table: {}",
            subscription.name,
            names()
        ))),
        (Some(wanted), _) => {
            let name = TableName::parse(wanted)
                .map_err(|why| CommandError::Usage(format!("--table {wanted:?} {why}")))?;
            selected
                .iter()
                .find(|table| table.name == name)
                .copied()
                .ok_or_else(|| {
                    CommandError::Usage(format!(
                        "--table {name}: not a table subscription {:?} selects; it selects: {}",
                        subscription.name,
                        if selected.is_empty() {
                            "none that exists".to_owned()
                        } else {
                            names()
                        }
                    ))
                })
        }
    }
}

/// The table's columns as pgoutput sends them (not dropped; generated ones
/// only where the server publishes them), which of them the replica
/// identity sends for an old row, and its key.
async fn load_shape(
    client: &tokio_postgres::Client,
    oid: u32,
) -> Result<Shape, tokio_postgres::Error> {
    let table = client
        .query_one(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text, \
                    current_setting('server_version_num')::int \
               FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&oid],
        )
        .await?;
    let schema: String = table.try_get(0)?;
    let name: String = table.try_get(1)?;
    let replica_identity = table.try_get::<_, String>(2)?.chars().next().unwrap_or('d');
    let generated_published = table.try_get::<_, i32>(3)? >= GENERATED_COLUMNS_SINCE;
    let columns = client
        .query(
            "SELECT attname::text, atttypid, format_type(atttypid, atttypmod) \
               FROM pg_catalog.pg_attribute \
              WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped \
                AND (attgenerated = '' OR (attgenerated = 's' AND $2)) \
              ORDER BY attnum",
            &[&oid, &generated_published],
        )
        .await?;
    // Each unique index that may identify rows, its columns in index order:
    // the primary key first, then the replica identity index.
    let indexes = client
        .query(
            "SELECT i.indisprimary, i.indisreplident, \
                    ARRAY(SELECT a.attname::text \
                            FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) \
                            JOIN pg_catalog.pg_attribute a \
                              ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                           ORDER BY k.position) \
               FROM pg_catalog.pg_index i \
              WHERE i.indrelid = $1 AND (i.indisprimary OR i.indisreplident) \
              ORDER BY i.indisprimary DESC",
            &[&oid],
        )
        .await?;
    let mut primary: Vec<String> = Vec::new();
    let mut identity_index: Vec<String> = Vec::new();
    for index in &indexes {
        let names: Vec<String> = index.try_get(2)?;
        if index.try_get(0)? {
            primary = names.clone();
        }
        if index.try_get(1)? {
            identity_index = names;
        }
    }
    // The columns an old key-only row carries (docs/payload.md#old_record).
    let identity: Vec<String> = match replica_identity {
        'd' => primary.clone(),
        'i' => identity_index.clone(),
        _ => Vec::new(),
    };
    let mut infos = Vec::with_capacity(columns.len());
    let mut type_names = Vec::with_capacity(columns.len());
    for column in &columns {
        let name: String = column.try_get(0)?;
        let in_identity = replica_identity == 'f' || identity.contains(&name);
        infos.push(ColumnInfo::new(name, column.try_get(1)?, in_identity));
        type_names.push(column.try_get(2)?);
    }
    let position = |name: &String| infos.iter().position(|column| column.name == *name);
    let key_names = if primary.is_empty() {
        &identity_index
    } else {
        &primary
    };
    let key: Vec<usize> = key_names.iter().filter_map(position).collect();
    let mut ordering_key = key.clone();
    ordering_key.sort_unstable();
    Ok(Shape {
        table: Arc::new(TableInfo::new(
            oid,
            schema,
            name,
            infos,
            ordering_key,
            replica_identity == 'f',
        )),
        type_names,
        key,
        replica_identity,
    })
}

/// The row whose key is `key` (`a,b` for a key of two columns), each
/// column as its text output.
async fn read_row(
    client: &tokio_postgres::Client,
    name: &TableName,
    shape: &Shape,
    key: &str,
) -> Result<Vec<Option<String>>, CommandError> {
    let columns = &shape.table.columns;
    if shape.key.is_empty() {
        return Err(CommandError::Usage(format!(
            "--from-row: table {name} has no primary key (nor replica identity index) to find \
             the row by; send sample values instead (leave out --from-row)"
        )));
    }
    let key_names: Vec<&str> = shape
        .key
        .iter()
        .map(|&index| columns[index].name.as_str())
        .collect();
    let values: Vec<String> = if shape.key.len() == 1 {
        vec![key.to_owned()]
    } else {
        key.split(',').map(str::to_owned).collect()
    };
    if values.len() != shape.key.len() {
        return Err(CommandError::Usage(format!(
            "--from-row {key:?}: the key of {name} has {} columns ({}); give their values \
             separated by commas, in that order (a value that holds a comma cannot be given)",
            shape.key.len(),
            key_names.join(", ")
        )));
    }
    let select: Vec<String> = columns
        .iter()
        .map(|column| output_text(&quote_identifier(&column.name)))
        .collect();
    let matches: Vec<String> = shape
        .key
        .iter()
        .enumerate()
        .map(|(position, &index)| {
            format!(
                "{} = ${}::text::{}",
                quote_identifier(&columns[index].name),
                position + 1,
                shape.type_names[index]
            )
        })
        .collect();
    let query = format!(
        "SELECT {} FROM {} WHERE {}",
        select.join(", "),
        name.quoted(),
        matches.join(" AND ")
    );
    let parameters: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
        .iter()
        .map(|value| value as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let row = client
        .query_opt(&query, &parameters)
        .await
        .map_err(|error| match error.as_db_error() {
            // A key the column's type does not take, say.
            Some(db) => CommandError::Usage(format!("--from-row {key:?}: {}", db.message())),
            None => failed(&format!("reading the row of {name}"), &error),
        })?
        .ok_or_else(|| {
            CommandError::Usage(format!(
                "--from-row {key:?}: table {name} has no row with {} = {key}",
                key_names.join(", ")
            ))
        })?;
    (0..row.len())
        .map(|index| row.try_get::<_, Option<String>>(index))
        .collect::<Result<_, _>>()
        .map_err(|error| failed(&format!("reading the row of {name}"), &error))
}

/// The change a test event describes: `row` inserted, updated in place, or
/// deleted, with the old row the table's replica identity would give.
fn test_change(shape: &Shape, kind: EventKind, row: Row) -> Change {
    // An update that keeps the key sends the old row only under FULL; a
    // delete sends it whole under FULL, else its identity columns.
    let key_only = |row: &Row| {
        let mut key = row.clone();
        for (cell, column) in key.cells.iter_mut().zip(&shape.table.columns) {
            if !column.in_identity {
                *cell = Cell::Absent;
            }
        }
        key
    };
    let has_identity = shape.table.columns.iter().any(|column| column.in_identity);
    let (new, old) = match kind {
        EventKind::Update if shape.replica_identity == 'f' => (Some(row.clone()), Some(row)),
        EventKind::Delete if shape.replica_identity == 'f' => (None, Some(row)),
        EventKind::Delete if has_identity => (None, Some(key_only(&row))),
        EventKind::Delete => (None, None),
        _ => (Some(row), None),
    };
    let now = crate::pgtime::micros_since_2000(SystemTime::now());
    Change {
        table: Arc::clone(&shape.table),
        kind,
        new,
        old,
        lsn: Lsn(0),
        ordinal: 0,
        transaction: Arc::new(TransactionInfo {
            xid: 0,
            commit_lsn: Lsn(0),
            commit_time: crate::pgtime::format_rfc3339(now),
            commit_time_micros: now,
            backfill: None,
        }),
    }
}

/// What the test was about, for the report.
struct About<'a> {
    subscription: &'a str,
    table: &'a TableName,
    kind: EventKind,
    values_from: &'a str,
    event_id: &'a str,
    filter: &'a str,
}

/// The URL as configured, with its password and query values hidden (they
/// may be credentials).
fn shown_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    if shown.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, _)| (name.into_owned(), "***".to_owned()))
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// A header's value as shown: configured values (marked sensitive) are
/// hidden, since they are credentials more often than not.
fn shown_header(value: &reqwest::header::HeaderValue) -> String {
    if value.is_sensitive() {
        return format!("*** (from the config, {} bytes)", value.len());
    }
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// A body as shown: pretty JSON when it is JSON, cut after
/// [`SHOWN_BODY`] bytes.
fn shown_body(body: &[u8], truncated: bool) -> String {
    let pretty = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    if pretty.len() <= SHOWN_BODY {
        return if truncated {
            format!("{pretty}\n… (cut after {} bytes)", body.len())
        } else {
            pretty
        };
    }
    let mut end = SHOWN_BODY;
    while !pretty.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n… (cut after {SHOWN_BODY} of {} bytes)",
        &pretty[..end],
        pretty.len()
    )
}

fn as_text(about: &About<'_>, request: &RequestBody, exchange: &Exchange) -> String {
    let mut out = format!(
        "TEST event {} ({} of {}, {}) for subscription {:?}; source.test = true\n\
         filter: {}\n\n> POST {}\n",
        about.event_id,
        about.kind.payload_type(),
        about.table,
        about.values_from,
        about.subscription,
        about.filter,
        shown_url(&exchange.url),
    );
    for (name, value) in &exchange.headers {
        out.push_str(&format!("> {name}: {}\n", shown_header(value)));
    }
    out.push_str(&format!("\n{}\n\n", shown_body(&request.body, false)));
    let elapsed = exchange.elapsed.as_secs_f64() * 1000.0;
    match &exchange.answer {
        Ok(answer) => {
            out.push_str(&format!(
                "< HTTP {} {} in {elapsed:.0} ms\n",
                answer.status,
                answer.reason.unwrap_or_default()
            ));
            for (name, value) in &answer.headers {
                out.push_str(&format!("< {name}: {}\n", shown_header(value)));
            }
            if !answer.body.is_empty() {
                out.push_str(&format!(
                    "\n{}\n",
                    shown_body(&answer.body, answer.truncated)
                ));
            }
        }
        Err(why) => out.push_str(&format!("< no answer after {elapsed:.0} ms: {why}\n")),
    }
    out
}

fn as_json(about: &About<'_>, request: &RequestBody, exchange: &Exchange) -> Value {
    let headers = |map: &reqwest::header::HeaderMap| {
        Value::Object(
            map.iter()
                .map(|(name, value)| (name.to_string(), Value::String(shown_header(value))))
                .collect(),
        )
    };
    let body = serde_json::from_slice::<Value>(&request.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&request.body).into_owned()));
    let (response, error) = match &exchange.answer {
        Ok(answer) => (
            json!({
                "status": answer.status,
                "headers": headers(&answer.headers),
                "body": String::from_utf8_lossy(&answer.body),
                "body_truncated": answer.truncated,
            }),
            Value::Null,
        ),
        Err(why) => (Value::Null, Value::String(why.clone())),
    };
    json!({
        "test": true,
        "subscription": about.subscription,
        "table": about.table.to_string(),
        "type": about.kind.payload_type(),
        "values": about.values_from,
        "event_id": about.event_id,
        "filter": about.filter,
        "request": {
            "method": "POST",
            "url": shown_url(&exchange.url),
            "headers": headers(&exchange.headers),
            "body": body,
        },
        "response": response,
        "error": error,
        "elapsed_ms": exchange.elapsed.as_secs_f64() * 1000.0,
        "ok": matches!(&exchange.answer, Ok(answer) if (200..300).contains(&answer.status)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_show_without_their_credentials() {
        let url = reqwest::Url::parse("https://user:pw@example.com/hooks?token=abc&x=1").unwrap();
        assert_eq!(
            shown_url(&url),
            "https://user:***@example.com/hooks?token=***&x=***"
        );
        let plain = reqwest::Url::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(shown_url(&plain), "http://127.0.0.1:8080/");
    }

    #[test]
    fn configured_header_values_are_hidden() {
        let mut secret = reqwest::header::HeaderValue::from_static("Bearer abc");
        secret.set_sensitive(true);
        assert_eq!(shown_header(&secret), "*** (from the config, 10 bytes)");
        let plain = reqwest::header::HeaderValue::from_static("application/json");
        assert_eq!(shown_header(&plain), "application/json");
    }

    #[test]
    fn long_bodies_are_cut() {
        let long = format!("\"{}\"", "x".repeat(10_000));
        let shown = shown_body(long.as_bytes(), false);
        assert!(shown.len() < SHOWN_BODY + 100, "{}", shown.len());
        assert!(shown.ends_with("bytes)"), "{shown}");
        assert_eq!(shown_body(b"{\"a\":1}", false), "{\n  \"a\": 1\n}");
    }
}
