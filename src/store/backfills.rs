//! `walhook.backfills`: the requests to send a table's existing rows
//! (docs/backfills.md), written by `walhook backfill`, taken and advanced by
//! the daemon's backfill worker, read by `status`.
//!
//! One row per table of a request. The worker moves a row from `pending` to
//! `running`, records after each completed chunk the last key it reached
//! and the rows it sent, and ends it `done` or `failed`; an operator may end
//! it `cancelled` at any time. Nothing here reads the user's tables.

use super::{StatementError, failed};

/// Where a backfill is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackfillState {
    Pending,
    Running,
    Done,
    Cancelled,
    Failed,
}

impl BackfillState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillState::Pending => "pending",
            BackfillState::Running => "running",
            BackfillState::Done => "done",
            BackfillState::Cancelled => "cancelled",
            BackfillState::Failed => "failed",
        }
    }

    fn parse(text: &str) -> BackfillState {
        match text {
            "pending" => BackfillState::Pending,
            "running" => BackfillState::Running,
            "done" => BackfillState::Done,
            "cancelled" => BackfillState::Cancelled,
            _ => BackfillState::Failed,
        }
    }

    /// Still to be worked on.
    pub fn is_active(self) -> bool {
        matches!(self, BackfillState::Pending | BackfillState::Running)
    }
}

/// One row of `walhook.backfills`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Backfill {
    pub id: i64,
    pub subscription: String,
    /// `schema.table`, quoted as PostgreSQL quotes names.
    pub table: String,
    pub condition: Option<String>,
    pub chunk_rows: i32,
    pub state: BackfillState,
    pub rows_sent: i64,
    pub estimated_rows: Option<i64>,
    #[serde(skip)]
    pub last_key: Option<Vec<String>>,
    pub error: Option<String>,
    pub requested_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Seconds since it started (to its end, once ended).
    pub elapsed_seconds: Option<f64>,
}

/// `SELECT <a backfill's columns, in from_row's order> FROM walhook.backfills`
/// followed by `$tail`.
macro_rules! select_backfills {
    ($tail:literal) => {
        concat!(
            "SELECT id, subscription, table_name, condition, chunk_rows, state, rows_sent, \
             estimated_rows, last_key, error, \
             to_char(requested_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
             to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
             to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
             extract(epoch FROM coalesce(finished_at, now()) - started_at)::float8 \
             FROM walhook.backfills ",
            $tail
        )
    };
}

fn from_row(row: &tokio_postgres::Row) -> Result<Backfill, tokio_postgres::Error> {
    Ok(Backfill {
        id: row.try_get(0)?,
        subscription: row.try_get(1)?,
        table: row.try_get(2)?,
        condition: row.try_get(3)?,
        chunk_rows: row.try_get(4)?,
        state: BackfillState::parse(row.try_get(5)?),
        rows_sent: row.try_get(6)?,
        estimated_rows: row.try_get(7)?,
        last_key: row.try_get(8)?,
        error: row.try_get(9)?,
        requested_at: row.try_get(10)?,
        started_at: row.try_get(11)?,
        finished_at: row.try_get(12)?,
        elapsed_seconds: row.try_get(13)?,
    })
}

/// Whether the table exists and this role may use it.
pub async fn usable(client: &tokio_postgres::Client) -> Result<bool, StatementError> {
    const QUERY: &str = "SELECT coalesce(bool_and(has_schema_privilege(n.oid, 'USAGE') \
                AND has_table_privilege(c.oid, 'SELECT') \
                AND has_table_privilege(c.oid, 'UPDATE')), false) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'walhook' AND c.relname = 'backfills'";
    client
        .query_one(QUERY, &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(failed(QUERY))
}

/// Records a request for one table; returns its id. `estimated_rows` is
/// the planner's estimate at request time (`None`: unknown), which the
/// worker may refine when it starts.
pub async fn request(
    client: &tokio_postgres::Client,
    subscription: &str,
    table: &str,
    condition: Option<&str>,
    chunk_rows: i32,
    estimated_rows: Option<i64>,
) -> Result<i64, StatementError> {
    const QUERY: &str = "INSERT INTO walhook.backfills (subscription, table_name, condition, \
         chunk_rows, estimated_rows) VALUES ($1, $2, $3, $4, $5) RETURNING id";
    client
        .query_one(
            QUERY,
            &[
                &subscription,
                &table,
                &condition,
                &chunk_rows,
                &estimated_rows,
            ],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(failed(QUERY))
}

/// Every backfill (the active ones only, when `active`), oldest first.
pub async fn list(
    client: &tokio_postgres::Client,
    active: bool,
) -> Result<Vec<Backfill>, StatementError> {
    const ALL: &str = select_backfills!("WHERE NOT $1 OR state IN ('pending', 'running') ORDER BY id");
    client
        .query(ALL, &[&active])
        .await
        .and_then(|rows| rows.iter().map(from_row).collect())
        .map_err(failed(ALL))
}

/// One backfill by id.
pub async fn get(
    client: &tokio_postgres::Client,
    id: i64,
) -> Result<Option<Backfill>, StatementError> {
    const QUERY: &str = select_backfills!("WHERE id = $1");
    client
        .query_opt(QUERY, &[&id])
        .await
        .and_then(|row| row.as_ref().map(from_row).transpose())
        .map_err(failed(QUERY))
}

/// Cancels a backfill that has not ended; false when there is none such.
pub async fn cancel(client: &tokio_postgres::Client, id: i64) -> Result<bool, StatementError> {
    const QUERY: &str = "UPDATE walhook.backfills SET state = 'cancelled', finished_at = now() \
         WHERE id = $1 AND state IN ('pending', 'running')";
    client
        .execute(QUERY, &[&id])
        .await
        .map(|rows| rows > 0)
        .map_err(failed(QUERY))
}

/// The oldest active backfill of one of `subscriptions`.
pub async fn next_active(
    client: &tokio_postgres::Client,
    subscriptions: &[String],
) -> Result<Option<Backfill>, StatementError> {
    const QUERY: &str = select_backfills!("WHERE state IN ('pending', 'running')   AND subscription = ANY($1) ORDER BY id LIMIT 1");
    client
        .query_opt(QUERY, &[&subscriptions])
        .await
        .and_then(|row| row.as_ref().map(from_row).transpose())
        .map_err(failed(QUERY))
}

/// A pending backfill starts; `estimated_rows` is the table's size as the
/// planner estimates it.
pub async fn start(
    client: &tokio_postgres::Client,
    id: i64,
    estimated_rows: Option<i64>,
) -> Result<(), StatementError> {
    const QUERY: &str = "UPDATE walhook.backfills SET state = 'running', \
         started_at = coalesce(started_at, now()), \
         estimated_rows = coalesce($2, estimated_rows) \
         WHERE id = $1 AND state = 'pending'";
    client
        .execute(QUERY, &[&id, &estimated_rows])
        .await
        .map(|_| ())
        .map_err(failed(QUERY))
}

/// A chunk completed: every row it sent is delivered (or stored). Returns
/// whether the backfill is still running (an operator may have cancelled
/// it meanwhile).
pub async fn chunk_done(
    client: &tokio_postgres::Client,
    id: i64,
    last_key: &[String],
    rows: i64,
) -> Result<bool, StatementError> {
    const QUERY: &str = "UPDATE walhook.backfills SET last_key = $2, rows_sent = rows_sent + $3 \
         WHERE id = $1 AND state = 'running'";
    client
        .execute(QUERY, &[&id, &last_key, &rows])
        .await
        .map(|updated| updated > 0)
        .map_err(failed(QUERY))
}

/// The backfill ended (`done` or `failed`, with why), unless cancelled.
pub async fn finish(
    client: &tokio_postgres::Client,
    id: i64,
    state: BackfillState,
    error: Option<&str>,
) -> Result<(), StatementError> {
    const QUERY: &str = "UPDATE walhook.backfills SET state = $2, error = $3, finished_at = now() \
         WHERE id = $1 AND state IN ('pending', 'running')";
    client
        .execute(QUERY, &[&id, &state.as_str(), &error])
        .await
        .map(|_| ())
        .map_err(failed(QUERY))
}
