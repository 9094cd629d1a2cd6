//! The backfill worker: takes the oldest active request of this walhook's
//! subscriptions from `walhook.backfills`, reads its table in primary-key
//! chunks over a SQL connection of its own, brackets each chunk between
//! watermarks, hands it to the reader, waits until every READ event of it
//! is delivered (or stored), then records the last key reached — so a
//! restart reads on from the last completed chunk, and a chunk interrupted
//! is read again (its rows repeat, with the same ids).
//!
//! One chunk at a time, so memory holds one chunk. Each chunk's SELECT runs
//! in a `REPEATABLE READ READ ONLY` transaction (the request's condition is
//! SQL from `walhook.backfills`, so it may read but never write), in a
//! session whose settings make values print as the walsender prints them.
//! It does not decide which rows go out (`window`) nor send them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Chunk, Mark, WATERMARK_PREFIX, Watermark};
use crate::config::quote_identifier;
use crate::event::{ColumnInfo, TableInfo};
use crate::pgconn::{ConnectParams, connect_sql};
use crate::store::backfills::{self, Backfill, BackfillState};
use crate::telemetry::Metrics;

/// The session's settings: values print as the replication connection's
/// (`source::SESSION_OPTIONS`), so a row read here renders as the stream
/// renders it, and keys compare equal.
pub(crate) const SESSION: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = postgres; SET extra_float_digits = 1; SET bytea_output = hex; \
     SET standard_conforming_strings = on; SET jit = off";

/// An SQL expression for the value of `expression` as its type's output
/// function prints it — the text the walsender sends — and NULL for NULL.
/// A cast to text is not that for every type: `bool::text` is `true` where
/// the output is `t`, `inet::text` adds the netmask, `char(n)::text` drops
/// the padding. `concat` calls the output function; `num_nulls` tells a
/// NULL from a composite whose fields are all NULL (`IS NULL` holds for both).
pub(crate) fn output_text(expression: &str) -> String {
    format!("CASE WHEN num_nulls({expression}) = 0 THEN concat({expression}) END")
}

/// How often an idle worker looks for a request.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often it looks whether a chunk's events are all delivered.
const DELIVERED_POLL: Duration = Duration::from_millis(20);
/// How often it looks again for a `walhook.backfills` it could not read.
const MISSING_TABLE_POLL: Duration = Duration::from_secs(30);
/// Waits after a failed statement before trying again.
const RETRY: Duration = Duration::from_secs(2);

/// What the worker needs to know.
pub struct Worker {
    pub params: ConnectParams,
    pub slot: String,
    /// The config's subscriptions, by index.
    pub subscriptions: Vec<String>,
    pub chunks: mpsc::UnboundedSender<Chunk>,
    pub metrics: Arc<Metrics>,
}

/// Why a backfill cannot go on.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The database: try again (the request stays as it is).
    #[error("{0}")]
    Transient(String),
    /// The request itself: it ends `failed` with this.
    #[error("{0}")]
    Permanent(String),
    /// Shutting down, or the reader is gone.
    #[error("stopped")]
    Stopped,
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        // A statement's own error (a condition that fails for some row, a
        // table that is gone) ends the request; a lost connection does not.
        match error.as_db_error() {
            Some(db) if !db.code().code().starts_with("08") && !db.code().code().starts_with("57") => {
                Failure::Permanent(db.message().to_owned())
            }
            _ => Failure::Transient(error.to_string()),
        }
    }
}

impl From<crate::store::StatementError> for Failure {
    fn from(error: crate::store::StatementError) -> Self {
        Failure::Transient(error.to_string())
    }
}

/// A table as a backfill reads it.
struct Source {
    table: Arc<TableInfo>,
    /// `"schema"."name"`.
    quoted: String,
    /// The key columns in the key index's order (the chunks' ORDER BY), as
    /// (index into the columns, quoted name, type as `format_type` says).
    order: Vec<(usize, String, String)>,
}

impl Worker {
    /// Runs until `shutdown` (or the reader goes away).
    pub async fn run(self, shutdown: CancellationToken) {
        // Chunk numbers unique across runs, so that a watermark of an
        // earlier run read again from the slot matches no chunk of this one.
        let mut next_chunk = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or(1);
        loop {
            let client = match self.connect().await {
                Ok(client) => client,
                Err(error) => {
                    tracing::debug!(%error, "backfill worker cannot connect; retrying");
                    if pause(RETRY, &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            loop {
                if shutdown.is_cancelled() || self.chunks.is_closed() {
                    return;
                }
                let next = match backfills::next_active(&client, &self.subscriptions).await {
                    Ok(next) => next,
                    Err(error) => {
                        // A schema from before backfills has no table: look
                        // again now and then (`walhook setup` may add it).
                        tracing::debug!(%error, "cannot read walhook.backfills");
                        if pause(MISSING_TABLE_POLL, &shutdown).await {
                            return;
                        }
                        break;
                    }
                };
                let Some(backfill) = next else {
                    if pause(IDLE_POLL, &shutdown).await {
                        return;
                    }
                    continue;
                };
                match self
                    .backfill(&client, &backfill, &mut next_chunk, &shutdown)
                    .await
                {
                    Ok(()) => {}
                    Err(Failure::Stopped) => return,
                    Err(Failure::Permanent(why)) => {
                        tracing::error!(backfill = backfill.id, table = %backfill.table, %why, "backfill failed");
                        if let Err(error) =
                            backfills::finish(&client, backfill.id, BackfillState::Failed, Some(&why))
                                .await
                        {
                            tracing::warn!(%error, "cannot record the failed backfill");
                        }
                    }
                    Err(Failure::Transient(why)) => {
                        tracing::warn!(backfill = backfill.id, %why, "backfill interrupted; going on from its last chunk");
                        if pause(RETRY, &shutdown).await {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, String> {
        let client = connect_sql(&self.params)
            .await
            .map_err(|error| error.to_string())?;
        client
            .batch_execute(SESSION)
            .await
            .map_err(|error| error.to_string())?;
        Ok(client)
    }

    /// Performs one request from its last completed chunk to its end.
    async fn backfill(
        &self,
        client: &tokio_postgres::Client,
        backfill: &Backfill,
        next_chunk: &mut u64,
        shutdown: &CancellationToken,
    ) -> Result<(), Failure> {
        let subscription = self
            .subscriptions
            .iter()
            .position(|name| *name == backfill.subscription)
            .ok_or_else(|| Failure::Permanent("the subscription is not in the config".into()))?;
        if let Some(condition) = &backfill.condition {
            super::check_condition(condition).map_err(Failure::Permanent)?;
        }
        // Watermarks reach the reader only as pgoutput messages, which
        // PostgreSQL sends from 14 on.
        if crate::store::server_version(client).await? < 140_000 {
            return Err(Failure::Permanent(
                "backfills need PostgreSQL 14 or newer (its logical decoding messages carry \
                 the watermarks)"
                    .into(),
            ));
        }
        let source = load_source(client, &backfill.table).await?;
        if backfill.state == BackfillState::Pending {
            let estimate: Option<f32> = client
                .query_one(
                    "SELECT reltuples FROM pg_class WHERE oid = $1",
                    &[&source.table.relation_id],
                )
                .await?
                .try_get(0)?;
            let estimate = estimate.filter(|rows| *rows >= 0.0).map(|rows| rows as i64);
            backfills::start(client, backfill.id, estimate).await?;
            tracing::info!(backfill = backfill.id, subscription = %backfill.subscription, table = %backfill.table, "backfill started");
        }
        let table_oid = source.table.relation_id;
        let mark = |mark: Mark, chunk: u64| Watermark {
            slot: self.slot.clone(),
            backfill: backfill.id,
            chunk,
            table: table_oid,
            mark,
        };
        emit(client, &mark(Mark::Arm, 0)).await?;
        let mut last_key = backfill.last_key.clone();
        let chunk_rows = i64::from(backfill.chunk_rows.max(1));
        loop {
            if shutdown.is_cancelled() {
                return Err(Failure::Stopped);
            }
            let chunk_number = *next_chunk;
            *next_chunk = next_chunk.wrapping_add(1);
            emit(client, &mark(Mark::Low, chunk_number)).await?;
            let (rows, in_progress) = read_chunk(
                client,
                &source,
                backfill.condition.as_deref(),
                last_key.as_deref(),
                chunk_rows,
            )
            .await?;
            let read = rows.len() as i64;
            let chunk_last_key: Option<Vec<String>> = rows.last().map(|row| {
                source
                    .order
                    .iter()
                    .map(|(index, _, _)| {
                        row.get(*index).cloned().flatten().unwrap_or_default()
                    })
                    .collect()
            });
            let pending = Arc::new(AtomicUsize::new(1));
            let (handed, handed_count) = oneshot::channel();
            let chunk = Chunk {
                backfill: backfill.id,
                chunk: chunk_number,
                subscription,
                table: Arc::clone(&source.table),
                rows,
                in_progress,
                pending: Arc::clone(&pending),
                handed,
            };
            if self.chunks.send(chunk).is_err() {
                return Err(Failure::Stopped);
            }
            emit(client, &mark(Mark::High, chunk_number)).await?;
            let sent = tokio::select! {
                _ = shutdown.cancelled() => return Err(Failure::Stopped),
                sent = handed_count => match sent {
                    Ok(sent) => sent,
                    // The reader dropped the chunk (it restarted): read it again.
                    Err(_) => continue,
                },
            };
            while pending.load(Ordering::Acquire) > 0 {
                if pause(DELIVERED_POLL, shutdown).await {
                    return Err(Failure::Stopped);
                }
            }
            let table_name = format!("{}.{}", source.table.schema, source.table.name);
            self.metrics
                .backfill_rows(&backfill.subscription, &table_name, sent as u64);
            if let Some(key) = &chunk_last_key {
                let running = backfills::chunk_done(client, backfill.id, key, sent as i64).await?;
                if !running {
                    tracing::info!(backfill = backfill.id, "backfill cancelled");
                    emit(client, &mark(Mark::End, 0)).await?;
                    return Ok(());
                }
                last_key = Some(key.clone());
            }
            if read < chunk_rows {
                backfills::finish(client, backfill.id, BackfillState::Done, None).await?;
                emit(client, &mark(Mark::End, 0)).await?;
                tracing::info!(backfill = backfill.id, table = %backfill.table, "backfill done");
                return Ok(());
            }
        }
    }
}

/// Sleeps `wait`; true when shutdown came first.
async fn pause(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}

/// Writes a watermark into the WAL as a transaction of its own: the slot
/// delivers it at its commit, in commit order with every other change. (A
/// non-transactional message is not flushed before PostgreSQL 17, so the
/// walsender would hold it back until something else flushes the WAL.)
async fn emit(client: &tokio_postgres::Client, watermark: &Watermark) -> Result<(), Failure> {
    client
        .execute(
            "SELECT pg_logical_emit_message(true, $1::text, $2::text)",
            &[&WATERMARK_PREFIX, &watermark.content()],
        )
        .await
        .map_err(|error| Failure::Transient(format!("writing a watermark: {error}")))?;
    Ok(())
}

/// The table of a request: its columns as pgoutput sends them (not
/// dropped, not generated, in order) and its key, as the decoder makes
/// them from a Relation message, so READ events look like live ones.
async fn load_source(client: &tokio_postgres::Client, table: &str) -> Result<Source, Failure> {
    let row = client
        .query_opt(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1)",
            &[&table],
        )
        .await?
        .ok_or_else(|| Failure::Permanent(format!("table {table} does not exist any more")))?;
    let oid: u32 = row.try_get(0)?;
    let schema: String = row.try_get(1)?;
    let name: String = row.try_get(2)?;
    let identity_full = row.try_get::<_, String>(3)? == "f";
    let columns = client
        .query(
            "SELECT attname::text, atttypid, format_type(atttypid, atttypmod) \
             FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped \
               AND attgenerated = '' ORDER BY attnum",
            &[&oid],
        )
        .await?;
    // The primary key, else the replica identity index, in index order.
    let key = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND (i.indisprimary OR i.indisreplident) \
             ORDER BY i.indisprimary DESC, i.indexrelid, k.position",
            &[&oid],
        )
        .await?;
    let mut key_names: Vec<String> = Vec::new();
    for row in &key {
        let name: String = row.try_get(0)?;
        if key_names.contains(&name) {
            // A second index (the identity after the primary key): stop.
            break;
        }
        key_names.push(name);
    }
    if key_names.is_empty() {
        return Err(Failure::Permanent(format!(
            "table {table} has no primary key or replica identity index to read it in order by; \
             add one (ALTER TABLE {table} ADD PRIMARY KEY (…))"
        )));
    }
    let mut infos = Vec::with_capacity(columns.len());
    let mut types = Vec::with_capacity(columns.len());
    for column in &columns {
        let name: String = column.try_get(0)?;
        let type_oid: u32 = column.try_get(1)?;
        let in_key = key_names.contains(&name);
        types.push(column.try_get::<_, String>(2)?);
        infos.push(ColumnInfo::new(name, type_oid, in_key));
    }
    let key_columns: Vec<usize> = infos
        .iter()
        .enumerate()
        .filter(|(_, column)| key_names.contains(&column.name))
        .map(|(index, _)| index)
        .collect();
    let order = key_names
        .iter()
        .filter_map(|name| {
            let index = infos.iter().position(|column| column.name == *name)?;
            Some((index, quote_identifier(name), types[index].clone()))
        })
        .collect();
    let quoted = format!("{}.{}", quote_identifier(&schema), quote_identifier(&name));
    Ok(Source {
        table: Arc::new(TableInfo::new(
            oid,
            schema,
            name,
            infos,
            key_columns,
            identity_full,
        )),
        quoted,
        order,
    })
}

/// Reads the next chunk after `after` (the key of the last row read), in
/// key order, with the xids its snapshot did not see.
async fn read_chunk(
    client: &tokio_postgres::Client,
    source: &Source,
    condition: Option<&str>,
    after: Option<&[String]>,
    limit: i64,
) -> Result<(Vec<Vec<Option<String>>>, Vec<u32>), Failure> {
    // Output columns are numbered, not named: ORDER BY a bare name would
    // sort by the output column (the text) rather than the key.
    let columns: Vec<String> = source
        .table
        .columns
        .iter()
        .enumerate()
        .map(|(index, column)| {
            format!(
                "{} AS c{index}",
                output_text(&quote_identifier(&column.name))
            )
        })
        .collect();
    let order: Vec<String> = source
        .order
        .iter()
        .map(|(_, name, _)| format!("backfilled.{name}"))
        .collect();
    let mut conditions = Vec::new();
    if after.is_some() {
        let bounds: Vec<String> = source
            .order
            .iter()
            .enumerate()
            .map(|(position, (_, _, type_name))| format!("${}::text::{type_name}", position + 1))
            .collect();
        conditions.push(format!("({}) > ({})", order.join(", "), bounds.join(", ")));
    }
    if let Some(condition) = condition {
        // On lines of its own: nothing in it can reach ORDER BY or LIMIT.
        conditions.push(format!("(\n{condition}\n)"));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let query = format!(
        "SELECT {} FROM {} AS backfilled {filter}\nORDER BY {} LIMIT {limit}",
        columns.join(", "),
        source.quoted,
        order.join(", "),
    );
    let bounds: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = after
        .unwrap_or_default()
        .iter()
        .map(|value| value as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let outcome = async {
        let snapshot: String = client
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await?
            .try_get(0)?;
        let rows = client.query(&query, &bounds).await?;
        let rows = rows
            .iter()
            .map(|row| {
                (0..row.len())
                    .map(|index| row.try_get::<_, Option<String>>(index))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, tokio_postgres::Error>((rows, in_progress(&snapshot)))
    }
    .await;
    let finish = if outcome.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = client.batch_execute(finish).await;
    let read = outcome?;
    ended?;
    Ok(read)
}

/// The in-progress xids of a `pg_current_snapshot()` text (`xmin:xmax:xip,…`),
/// as the low 32 bits pgoutput reports.
fn in_progress(snapshot: &str) -> Vec<u32> {
    snapshot
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .split(',')
        .filter_map(|xid| xid.trim().parse::<u64>().ok())
        .map(|xid| xid as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_progress_xids_are_read_from_the_snapshot() {
        assert_eq!(in_progress("100:105:"), Vec::<u32>::new());
        assert_eq!(in_progress("100:105:101,103"), vec![101, 103]);
        assert_eq!(in_progress("4294967396:4294967400:4294967397"), vec![101]);
    }
}
