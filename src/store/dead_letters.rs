//! `walhook.dead_letters`: events that could not be delivered, committed
//! there before their changes may be confirmed, and read back, replayed and
//! purged by `walhook dead-letters`.
//!
//! [`DeadLetters`] writes them for delivery: a store that fails is reported
//! to the caller, which retries; nothing here gives up on an event. Storing
//! the same event twice (a replay after a crash) updates the row instead of
//! adding one. The functions below read and change them for the commands;
//! which letters a command means is a [`Selector`].

use std::time::SystemTime;

use tokio::sync::Mutex;

use super::schema::{has_column, has_seal_column};
use super::{StatementError, failed};
use crate::pgconn::{ConnectParams, connect_sql};
use crate::seal::SEAL_BYTES;

/// One undeliverable event.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    pub subscription: &'a str,
    pub event_id: &'a str,
    pub payload: &'a [u8],
    pub last_status: Option<u16>,
    pub last_error: &'a str,
    /// The start of the receiver's answer to the last attempt (see
    /// `deliver::http::KEPT_RESPONSE_BODY`), when it answered.
    pub last_response: Option<&'a str>,
    pub attempts: u32,
    pub first_attempt_at: SystemTime,
    /// The row's seal (`None` for a subscription without one, and for an
    /// event that failed its own seal check: it is stored unsealed).
    pub mac: Option<[u8; SEAL_BYTES]>,
}

/// Writes dead letters over its own SQL connection, reconnecting as needed.
pub struct DeadLetters {
    params: ConnectParams,
    client: Mutex<Option<Connection>>,
}

/// The open connection, whether its table holds seals, and the insert for
/// the columns its table has.
struct Connection {
    client: tokio_postgres::Client,
    sealed: bool,
    responses: bool,
    insert: String,
}

/// Storing a dead letter failed; the caller retries.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to store a dead letter: {0}")]
    Connect(String),
    #[error("cannot insert into walhook.dead_letters (run `walhook setup`?): {0}")]
    Insert(#[source] tokio_postgres::Error),
    #[error("the payload is not UTF-8 JSON")]
    Payload,
}

/// The insert for a table with (or, made before them, without) the `mac`
/// and `last_response` columns. A row stored again keeps its first attempt
/// and counts the new ones; its payload and seal are the event's (a row
/// someone wrote first under the event's id does not survive walhook
/// storing the real one).
fn insert_statement(sealed: bool, responses: bool) -> String {
    let mut columns =
        "subscription, event_id, payload, last_status, last_error, attempts, first_attempt_at"
            .to_owned();
    let mut values = "$1, $2, $3::text::json, $4, $5, $6, to_timestamp($7::float8)".to_owned();
    let mut updates = "payload = EXCLUDED.payload, last_status = EXCLUDED.last_status, \
         last_error = EXCLUDED.last_error, \
         attempts = walhook.dead_letters.attempts + EXCLUDED.attempts, last_attempt_at = now()"
        .to_owned();
    let mut next = 8;
    for (present, column) in [(sealed, "mac"), (responses, "last_response")] {
        if present {
            columns.push_str(&format!(", {column}"));
            values.push_str(&format!(", ${next}"));
            updates.push_str(&format!(", {column} = EXCLUDED.{column}"));
            next += 1;
        }
    }
    format!(
        "INSERT INTO walhook.dead_letters ({columns}) VALUES ({values}) \
         ON CONFLICT (subscription, event_id) DO UPDATE SET {updates}"
    )
}

impl DeadLetters {
    pub fn new(params: ConnectParams) -> Self {
        DeadLetters {
            params,
            client: Mutex::new(None),
        }
    }

    /// Commits one dead letter.
    pub async fn store(&self, letter: &DeadLetter<'_>) -> Result<(), StoreError> {
        let payload = std::str::from_utf8(letter.payload).map_err(|_| StoreError::Payload)?;
        let first_attempt = letter
            .first_attempt_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs_f64())
            .unwrap_or(0.0);
        let mut guard = self.client.lock().await;
        if guard
            .as_ref()
            .is_none_or(|connection| connection.client.is_closed())
        {
            let client = connect_sql(&self.params)
                .await
                .map_err(|error| StoreError::Connect(error.to_string()))?;
            let sealed = has_seal_column(&client, "dead_letters")
                .await
                .map_err(|error| StoreError::Connect(error.to_string()))?;
            if !sealed {
                tracing::warn!("walhook.dead_letters has no `mac` column (a schema from before row seals): dead letters are stored unsealed. Run `walhook setup` as the schema's owner to add it (docs/security.md)");
            }
            let responses = has_column(&client, "dead_letters", "last_response")
                .await
                .map_err(|error| StoreError::Connect(error.to_string()))?;
            if !responses {
                tracing::info!("walhook.dead_letters has no `last_response` column (a schema from an older walhook): dead letters are stored without the receiver's answer. Run `walhook setup` as the schema's owner to add it");
            }
            *guard = Some(Connection {
                client,
                sealed,
                responses,
                insert: insert_statement(sealed, responses),
            });
        }
        let Some(connection) = guard.as_ref() else {
            return Err(StoreError::Connect("no connection".into()));
        };
        let status = letter.last_status.map(i32::from);
        let attempts = letter.attempts as i32;
        let mac = letter.mac.as_ref().map(|mac| mac.as_slice());
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
            &letter.subscription,
            &letter.event_id,
            &payload,
            &status,
            &letter.last_error,
            &attempts,
            &first_attempt,
        ];
        if connection.sealed {
            params.push(&mac);
        }
        if connection.responses {
            params.push(&letter.last_response);
        }
        let result = connection
            .client
            .execute(connection.insert.as_str(), &params)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) => {
                if error.is_closed() {
                    *guard = None;
                }
                Err(StoreError::Insert(error))
            }
        }
    }
}

/// Whether this role may use the table (USAGE on the schema, INSERT and
/// SELECT on the table); `None` when the table does not exist.
pub async fn writable(client: &tokio_postgres::Client) -> Result<Option<bool>, StatementError> {
    // By catalog rather than to_regclass, which fails outright in a schema
    // the role may not use.
    const QUERY: &str = "SELECT has_schema_privilege(n.oid, 'USAGE') \
                AND has_table_privilege(c.oid, 'INSERT') \
                AND has_table_privilege(c.oid, 'SELECT') \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'walhook' AND c.relname = 'dead_letters'";
    match client.query_opt(QUERY, &[]).await.map_err(failed(QUERY))? {
        Some(row) => row.try_get(0).map(Some).map_err(failed(QUERY)),
        None => Ok(None),
    }
}

/// How many letters `subscription` has, and when the oldest was first tried.
pub async fn count(
    client: &tokio_postgres::Client,
    subscription: &str,
) -> Result<(i64, Option<String>), StatementError> {
    const QUERY: &str = "SELECT count(*), \
         to_char(min(first_attempt_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
         FROM walhook.dead_letters \
                         WHERE subscription = $1";
    client
        .query_one(QUERY, &[&subscription])
        .await
        .and_then(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .map_err(failed(QUERY))
}

/// How many letters each subscription that has any has (for
/// `walhook_dead_letters`).
pub async fn counts(
    client: &tokio_postgres::Client,
) -> Result<Vec<(String, i64)>, StatementError> {
    const QUERY: &str =
        "SELECT subscription, count(*) FROM walhook.dead_letters GROUP BY subscription";
    client
        .query(QUERY, &[])
        .await
        .map_err(failed(QUERY))?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(failed(QUERY))
}

/// Which dead letters a command acts on.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub all: bool,
    pub subscription: Option<String>,
    /// Event ids (`wh_…`), as in `list`.
    pub ids: Vec<String>,
    /// Row ids (the `ID` column of `list`).
    pub rows: Vec<i64>,
    /// Only letters last tried at or after this time…
    pub since: Option<SystemTime>,
    /// … and before this one (`last_attempt_at`).
    pub until: Option<SystemTime>,
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        !self.all
            && self.subscription.is_none()
            && self.ids.is_empty()
            && self.rows.is_empty()
            && self.since.is_none()
            && self.until.is_none()
    }

    /// The WHERE clause and its parameters (`all` selects everything).
    fn clause(&self) -> (String, Vec<Param>) {
        let mut conditions = Vec::new();
        let mut params = Vec::new();
        if let Some(subscription) = &self.subscription {
            params.push(Param::Text(subscription.clone()));
            conditions.push(format!("subscription = ${}", params.len()));
        }
        if !self.ids.is_empty() {
            params.push(Param::List(self.ids.clone()));
            conditions.push(format!("event_id = ANY(${})", params.len()));
        }
        if !self.rows.is_empty() {
            params.push(Param::Numbers(self.rows.clone()));
            conditions.push(format!("id = ANY(${})", params.len()));
        }
        if let Some(since) = self.since {
            params.push(Param::Time(since));
            conditions.push(format!("last_attempt_at >= ${}", params.len()));
        }
        if let Some(until) = self.until {
            params.push(Param::Time(until));
            conditions.push(format!("last_attempt_at < ${}", params.len()));
        }
        if conditions.is_empty() {
            (String::new(), params)
        } else {
            (format!(" WHERE {}", conditions.join(" AND ")), params)
        }
    }
}

enum Param {
    Text(String),
    List(Vec<String>),
    Numbers(Vec<i64>),
    Time(SystemTime),
}

impl Param {
    fn as_sql(&self) -> &(dyn tokio_postgres::types::ToSql + Sync) {
        match self {
            Param::Text(text) => text,
            Param::List(list) => list,
            Param::Numbers(numbers) => numbers,
            Param::Time(time) => time,
        }
    }
}

/// One row of `walhook.dead_letters`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Letter {
    pub id: i64,
    pub subscription: String,
    pub event_id: String,
    pub last_status: Option<i32>,
    pub attempts: i32,
    pub last_error: String,
    pub first_attempt_at: String,
    pub last_attempt_at: String,
    #[serde(skip)]
    pub payload: String,
    /// Its stored seal; `None` when unsealed or the table has no column.
    #[serde(skip)]
    pub mac: Option<Vec<u8>>,
    /// The payload's `type` (INSERT, UPDATE, …) and `schema.table`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub table: Option<String>,
    /// The start of the receiver's answer to the last attempt; `None` when
    /// there was none, or the table has no column for it.
    pub last_response: Option<String>,
}

/// The columns of a [`Letter`], before the seal (see [`select`]).
const SELECT: &str = "SELECT id, subscription, event_id, last_status, attempts, last_error, \
     to_char(first_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
     to_char(last_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
     payload::text";

pub async fn select(
    client: &tokio_postgres::Client,
    selector: &Selector,
) -> Result<Vec<Letter>, tokio_postgres::Error> {
    let (clause, params) = selector.clause();
    let params: Vec<_> = params.iter().map(Param::as_sql).collect();
    // A table from before seals has no column: its letters read as unsealed.
    let sealed = has_seal_column(client, "dead_letters")
        .await
        .map_err(|error| error.source)?;
    let mac = if sealed { "mac" } else { "NULL::bytea" };
    // Likewise a table from before the kept responses.
    let responses = has_column(client, "dead_letters", "last_response")
        .await
        .map_err(|error| error.source)?;
    let response = if responses {
        "last_response"
    } else {
        "NULL::text"
    };
    let rows = client
        .query(
            &format!(
                "{SELECT}, {mac}, payload->>'type', \
                 (payload->>'schema') || '.' || (payload->>'table'), {response} \
                 FROM walhook.dead_letters{clause} ORDER BY id"
            ),
            &params,
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Letter {
                id: row.try_get(0)?,
                subscription: row.try_get(1)?,
                event_id: row.try_get(2)?,
                last_status: row.try_get(3)?,
                attempts: row.try_get(4)?,
                last_error: row.try_get(5)?,
                first_attempt_at: row.try_get(6)?,
                last_attempt_at: row.try_get(7)?,
                payload: row.try_get(8)?,
                mac: row.try_get(9)?,
                kind: row.try_get(10)?,
                table: row.try_get(11)?,
                last_response: row.try_get(12)?,
            })
        })
        .collect()
}

/// Deletes one letter (replayed).
pub async fn delete(client: &tokio_postgres::Client, id: i64) -> Result<(), tokio_postgres::Error> {
    client
        .execute("DELETE FROM walhook.dead_letters WHERE id = $1", &[&id])
        .await?;
    Ok(())
}

/// Records a failed replay of one letter: its status, error and the start
/// of the receiver's answer (where the table has a column for it), one more
/// attempt.
pub async fn record_replay_failure(
    client: &tokio_postgres::Client,
    id: i64,
    status: Option<u16>,
    error: &str,
    response: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    let responses = has_column(client, "dead_letters", "last_response")
        .await
        .map_err(|error| error.source)?;
    let status = status.map(i32::from);
    if responses {
        client
            .execute(
                "UPDATE walhook.dead_letters SET last_status = $2, last_error = $3, \
                 last_response = $4, attempts = attempts + 1, last_attempt_at = now() \
                 WHERE id = $1",
                &[&id, &status, &error, &response],
            )
            .await?;
    } else {
        client
            .execute(
                "UPDATE walhook.dead_letters SET last_status = $2, last_error = $3, \
                 attempts = attempts + 1, last_attempt_at = now() WHERE id = $1",
                &[&id, &status, &error],
            )
            .await?;
    }
    Ok(())
}

/// Deletes the selected letters; returns each one's (subscription, event id).
pub async fn purge(
    client: &tokio_postgres::Client,
    selector: &Selector,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let (clause, params) = selector.clause();
    let params: Vec<_> = params.iter().map(Param::as_sql).collect();
    client
        .query(
            &format!("DELETE FROM walhook.dead_letters{clause} RETURNING subscription, event_id"),
            &params,
        )
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_build_their_where_clause() {
        assert!(Selector::default().is_empty());
        let (clause, params) = Selector {
            all: true,
            ..Selector::default()
        }
        .clause();
        assert_eq!(clause, "");
        assert!(params.is_empty());
        let (clause, params) = Selector {
            subscription: Some("orders".into()),
            ids: vec!["wh_1".into()],
            ..Selector::default()
        }
        .clause();
        assert_eq!(clause, " WHERE subscription = $1 AND event_id = ANY($2)");
        assert_eq!(params.len(), 2);
        let window = Selector {
            since: Some(SystemTime::UNIX_EPOCH),
            until: Some(SystemTime::now()),
            ..Selector::default()
        };
        assert!(!window.is_empty(), "a time window selects on its own");
        let (clause, params) = window.clause();
        assert_eq!(
            clause,
            " WHERE last_attempt_at >= $1 AND last_attempt_at < $2"
        );
        assert_eq!(params.len(), 2);
    }

    #[test]
    fn the_insert_names_only_the_columns_the_table_has() {
        let oldest = insert_statement(false, false);
        assert!(!oldest.contains("mac") && !oldest.contains("last_response"));
        assert!(oldest.contains("to_timestamp($7::float8))"));
        let sealed = insert_statement(true, false);
        assert!(sealed.contains(", mac) VALUES") && sealed.contains(", $8)"));
        let both = insert_statement(true, true);
        assert!(both.contains("mac, last_response) VALUES"));
        assert!(both.contains(", $8, $9)"));
        assert!(both.contains("last_response = EXCLUDED.last_response"));
        let unsealed = insert_statement(false, true);
        assert!(unsealed.contains(", last_response) VALUES") && unsealed.contains(", $8)"));
    }
}
