//! `walhook.backlog`: the events of subscriptions whose endpoint is down,
//! paused or slower than the stream, in commit order (docs/operations.md,
//! "When an endpoint is down").
//!
//! [`BacklogStore`] appends events in batches (one multi-row INSERT per
//! batch), reads them back in commit order and deletes them once delivered,
//! over its own SQL connection that it reopens when lost. It seals each row
//! it appends and checks each seal it reads (`seal`): a row that fails comes
//! back marked, for `deliver` to park instead of send. The functions
//! below read and change backlogs for `status`, `check` and the commands.
//! Nothing here decides when an event goes into a backlog (`deliver`).

use std::sync::Arc;

use tokio::sync::{Mutex, OnceCell};

use super::schema::has_seal_column;
use super::{StatementError, failed};
use crate::event::{EventId, event_id};
use crate::lsn::Lsn;
use crate::pgconn::{ConnectParams, connect_sql};
use crate::seal::RowSeal;

/// One event as stored in, or read back from, a backlog.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub position: Position,
    /// As it went out live: read back from the table's `event_id` column
    /// (a backfilled row's id is not made from its position).
    pub event_id: EventId,
    pub ordering_key: u64,
    pub previous_ordering_key: Option<u64>,
    pub barrier: bool,
    pub park_reason: Option<String>,
    /// Microseconds since 2000-01-01.
    pub commit_time_micros: i64,
    pub payload: bytes::Bytes,
    /// Read back with a seal that does not match: `park_reason` says so.
    pub seal_failed: bool,
}

/// Why a row whose seal does not match is parked, not sent.
pub const SEAL_FAILED: &str = "the backlog row's seal does not match: walhook did not store it \
     under this subscription's current secret (written by someone else, or before the secret \
     or headers changed), so it was not sent; check it with `walhook dead-letters list`, and \
     replay it with --trust-unsealed only if you vouch for it (docs/security.md)";

/// An event's place in the stream: its transaction's commit LSN and its
/// ordinal within the transaction. Ordered as the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub commit_lsn: u64,
    pub ordinal: u32,
}

/// A backlog statement failed; the caller retries.
#[derive(Debug, thiserror::Error)]
pub enum BacklogError {
    #[error("cannot connect to the backlog's database: {0}")]
    Connect(String),
    #[error("{0} (run `walhook setup`, or the files of sql/ as an administrator?)")]
    Statement(#[from] StatementError),
    #[error("a backlog payload is not UTF-8 JSON")]
    Payload,
}

/// One subscription's backlog, over two connections of its own (each opened
/// when first needed, so a subscription that never falls behind costs
/// none): appends on one, reads and deletes on the other, each set up for
/// its statements (see [`APPENDER_SETTINGS`], [`DRAINER_SETTINGS`]).
pub struct BacklogStore {
    subscription: String,
    params: ConnectParams,
    /// The first seals; any verifies (older keys while one rolls). Empty
    /// for a subscription with nothing to derive a seal key from.
    seals: Vec<RowSeal>,
    /// Rows whose seal fails are sent anyway (`delivery.backlog.trust_unsealed`).
    trust_unsealed: bool,
    /// Whether the table has the `mac` column, once a connection looked.
    sealed_table: OnceCell<bool>,
    appender: Mutex<Option<Arc<tokio_postgres::Client>>>,
    drainer: Mutex<Option<Arc<tokio_postgres::Client>>>,
}

/// The appender's session: no JIT (a multi-row INSERT compiles for longer
/// than it runs). Commits stay synchronous: an event's claim on the slot
/// resolves once its row is committed, so the row must survive a crash.
const APPENDER_SETTINGS: &str = "SET jit = off";

/// The drainer's session. Its reads walk the primary key in order, which a
/// planner without statistics for a backlog that just grew would not do (it
/// sorted all of it, 50 ms a page), so other plans are off — and JIT, which
/// the resulting costs would trigger. Its deletes need not be durable at
/// once: a delete lost in a crash only sends an event again, with its id.
const DRAINER_SETTINGS: &str = "SET jit = off; SET enable_seqscan = off; \
     SET enable_bitmapscan = off; SET enable_sort = off; SET synchronous_commit = off";

const APPEND: &str = "INSERT INTO walhook.backlog (subscription, commit_lsn, ordinal, event_id, \
         ordering_key, previous_ordering_key, barrier, park_reason, commit_time, payload, mac) \
     SELECT $1, e.commit_lsn, e.ordinal, e.event_id, e.ordering_key, e.previous_ordering_key, \
         e.barrier, e.park_reason, \
         timestamptz '2000-01-01 00:00:00+00' + e.commit_micros * interval '1 microsecond', \
         e.payload::json, e.mac \
     FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[], $7::bool[], \
                 $8::text[], $9::bigint[], $10::text[], $11::bytea[]) \
         AS e(commit_lsn, ordinal, event_id, ordering_key, previous_ordering_key, barrier, \
              park_reason, commit_micros, payload, mac) \
     ON CONFLICT (subscription, commit_lsn, ordinal) DO NOTHING";

/// [`APPEND`] for a table made before seals (no `mac` column).
const APPEND_UNSEALED: &str = "INSERT INTO walhook.backlog (subscription, commit_lsn, ordinal, \
         event_id, ordering_key, previous_ordering_key, barrier, park_reason, commit_time, payload) \
     SELECT $1, e.commit_lsn, e.ordinal, e.event_id, e.ordering_key, e.previous_ordering_key, \
         e.barrier, e.park_reason, \
         timestamptz '2000-01-01 00:00:00+00' + e.commit_micros * interval '1 microsecond', \
         e.payload::json \
     FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[], $7::bool[], \
                 $8::text[], $9::bigint[], $10::text[]) \
         AS e(commit_lsn, ordinal, event_id, ordering_key, previous_ordering_key, barrier, \
              park_reason, commit_micros, payload) \
     ON CONFLICT (subscription, commit_lsn, ordinal) DO NOTHING";

const READ: &str = "SELECT commit_lsn, ordinal, ordering_key, previous_ordering_key, \
         barrier, park_reason, \
         (extract(epoch FROM commit_time - timestamptz '2000-01-01 00:00:00+00') * 1000000)::bigint, \
         payload::text, mac, event_id \
     FROM walhook.backlog \
     WHERE subscription = $1 AND (commit_lsn, ordinal) > ($2, $3) \
     ORDER BY commit_lsn, ordinal LIMIT $4";

/// [`READ`] for a table made before seals.
const READ_UNSEALED: &str = "SELECT commit_lsn, ordinal, ordering_key, previous_ordering_key, \
         barrier, park_reason, \
         (extract(epoch FROM commit_time - timestamptz '2000-01-01 00:00:00+00') * 1000000)::bigint, \
         payload::text, NULL::bytea, event_id \
     FROM walhook.backlog \
     WHERE subscription = $1 AND (commit_lsn, ordinal) > ($2, $3) \
     ORDER BY commit_lsn, ordinal LIMIT $4";

// A join on the primary key: one index probe per delivered event, never a
// scan of the whole backlog.
const DELETE: &str = "DELETE FROM walhook.backlog AS b \
     USING unnest($2::bigint[], $3::bigint[]) AS d(commit_lsn, ordinal) \
     WHERE b.subscription = $1 AND b.commit_lsn = d.commit_lsn AND b.ordinal = d.ordinal";

const OLDEST_AGE: &str = "SELECT extract(epoch FROM now() - commit_time)::float8 \
     FROM walhook.backlog WHERE subscription = $1 ORDER BY commit_lsn, ordinal LIMIT 1";

/// Reinterprets a u64 as the i64 PostgreSQL's bigint holds, bit for bit
/// (ordering-key hashes use all 64 bits); [`from_bigint`] undoes it.
fn to_bigint(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

fn from_bigint(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

impl BacklogStore {
    /// The backlog of `subscription`, sealing its rows with the first of
    /// `seals` (any verifies); rows
    /// whose seal fails come back marked unless `trust_unsealed`.
    pub fn new(
        subscription: &str,
        params: ConnectParams,
        seals: Vec<RowSeal>,
        trust_unsealed: bool,
    ) -> Self {
        BacklogStore {
            subscription: subscription.to_owned(),
            params,
            seals,
            trust_unsealed,
            sealed_table: OnceCell::new(),
            appender: Mutex::new(None),
            drainer: Mutex::new(None),
        }
    }

    /// The appender's connection, opened if needed.
    async fn appender(&self) -> Result<Arc<tokio_postgres::Client>, BacklogError> {
        self.connection(&self.appender, APPENDER_SETTINGS).await
    }

    /// The drainer's connection, opened if needed.
    async fn drainer(&self) -> Result<Arc<tokio_postgres::Client>, BacklogError> {
        self.connection(&self.drainer, DRAINER_SETTINGS).await
    }

    /// The connection in `slot`, opened with `settings` if there is none (or
    /// it closed). Concurrent statements pipeline on it.
    async fn connection(
        &self,
        slot: &Mutex<Option<Arc<tokio_postgres::Client>>>,
        settings: &'static str,
    ) -> Result<Arc<tokio_postgres::Client>, BacklogError> {
        let mut guard = slot.lock().await;
        if let Some(client) = guard.as_ref().filter(|client| !client.is_closed()) {
            return Ok(Arc::clone(client));
        }
        let client = connect_sql(&self.params)
            .await
            .map_err(|error| BacklogError::Connect(error.to_string()))?;
        client
            .batch_execute(settings)
            .await
            .map_err(failed(settings))?;
        if !self.sealed_table.initialized() {
            let sealed = has_seal_column(&client, "backlog").await?;
            if self.sealed_table.set(sealed).is_ok() && !sealed {
                tracing::warn!(subscription = %self.subscription, "walhook.backlog has no `mac` column (a schema from before row seals): backlog rows are stored and sent unsealed. Run `walhook setup` as the schema's owner to add it (docs/security.md)");
            }
        }
        let client = Arc::new(client);
        *guard = Some(Arc::clone(&client));
        Ok(client)
    }

    /// Commits `events` (in one statement); an event stored already (a
    /// change read again after a restart) is left as it is. Returns the
    /// rows added.
    pub async fn append(&self, events: &[StoredEvent]) -> Result<u64, BacklogError> {
        let mut commit_lsns = Vec::with_capacity(events.len());
        let mut ordinals = Vec::with_capacity(events.len());
        let mut ids = Vec::with_capacity(events.len());
        let mut keys = Vec::with_capacity(events.len());
        let mut previous_keys = Vec::with_capacity(events.len());
        let mut barriers = Vec::with_capacity(events.len());
        let mut park_reasons = Vec::with_capacity(events.len());
        let mut commit_times = Vec::with_capacity(events.len());
        let mut payloads = Vec::with_capacity(events.len());
        let mut macs = Vec::with_capacity(events.len());
        for event in events {
            commit_lsns.push(to_bigint(event.position.commit_lsn));
            ordinals.push(i64::from(event.position.ordinal));
            ids.push(event.event_id.as_str());
            keys.push(to_bigint(event.ordering_key));
            previous_keys.push(event.previous_ordering_key.map(to_bigint));
            barriers.push(event.barrier);
            park_reasons.push(event.park_reason.as_deref());
            commit_times.push(event.commit_time_micros);
            payloads.push(std::str::from_utf8(&event.payload).map_err(|_| BacklogError::Payload)?);
            // An event whose own seal failed is stored unsealed again.
            macs.push(self.seals.first().filter(|_| !event.seal_failed).map(|seal| {
                seal.seal(&self.subscription, event.event_id.as_str(), &event.payload)
                    .to_vec()
            }));
        }
        let client = self.appender().await?;
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
            &self.subscription,
            &commit_lsns,
            &ordinals,
            &ids,
            &keys,
            &previous_keys,
            &barriers,
            &park_reasons,
            &commit_times,
            &payloads,
        ];
        let statement = if self.sealed_table.get().copied().unwrap_or(false) {
            params.push(&macs);
            APPEND
        } else {
            APPEND_UNSEALED
        };
        client
            .execute(statement, &params)
            .await
            .map_err(failed(statement))
            .map_err(BacklogError::from)
    }

    /// Up to `limit` events after `after` (from the start when `None`), in
    /// commit order.
    pub async fn read_after(
        &self,
        after: Option<Position>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, BacklogError> {
        let (lsn, ordinal) = match after {
            Some(position) => (to_bigint(position.commit_lsn), position.ordinal as i64),
            None => (i64::MIN, i64::MIN),
        };
        // -2^63 sorts before every position.
        let client = self.drainer().await?;
        let sealed_table = self.sealed_table.get().copied().unwrap_or(false);
        let statement = if sealed_table { READ } else { READ_UNSEALED };
        let rows = client
            .query(statement, &[&self.subscription, &lsn, &ordinal, &limit])
            .await
            .map_err(failed(statement))?;
        // Without the column nothing can be checked (warned at connect).
        let check = sealed_table && !self.trust_unsealed && !self.seals.is_empty();
        rows.iter()
            .map(|row| {
                let ordinal: i64 = row.try_get(1)?;
                let payload: String = row.try_get(7)?;
                let mac: Option<&[u8]> = row.try_get(8)?;
                let position = Position {
                    commit_lsn: from_bigint(row.try_get(0)?),
                    ordinal: u32::try_from(ordinal).unwrap_or_default(),
                };
                let stored_id: String = row.try_get(9)?;
                // The seal covers the id: a row whose id was edited fails it.
                let event_id = EventId::parse(&stored_id).unwrap_or_else(|| {
                    event_id(&self.subscription, Lsn(position.commit_lsn), position.ordinal)
                });
                let seal_failed = check
                    && !self.seals.iter().any(|seal| {
                        seal.verify(&self.subscription, event_id.as_str(), payload.as_bytes(), mac)
                    });
                let mut park_reason: Option<String> = row.try_get(5)?;
                if seal_failed {
                    park_reason = Some(SEAL_FAILED.to_owned());
                }
                Ok(StoredEvent {
                    position,
                    event_id,
                    ordering_key: from_bigint(row.try_get(2)?),
                    previous_ordering_key: row.try_get::<_, Option<i64>>(3)?.map(from_bigint),
                    barrier: row.try_get(4)?,
                    park_reason,
                    commit_time_micros: row.try_get(6)?,
                    payload: bytes::Bytes::from(payload),
                    seal_failed,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(failed(statement))
            .map_err(BacklogError::from)
    }

    /// Deletes delivered events; returns the rows deleted.
    pub async fn delete(&self, positions: &[Position]) -> Result<u64, BacklogError> {
        let lsns: Vec<i64> = positions
            .iter()
            .map(|position| to_bigint(position.commit_lsn))
            .collect();
        let ordinals: Vec<i64> = positions
            .iter()
            .map(|position| i64::from(position.ordinal))
            .collect();
        let client = self.drainer().await?;
        client
            .execute(DELETE, &[&self.subscription, &lsns, &ordinals])
            .await
            .map_err(failed(DELETE))
            .map_err(BacklogError::from)
    }

}

/// Whether this role can use the backlog (the table exists, and it may
/// read, write and delete there). A walhook whose schema predates the
/// backlog runs without one; see `deliver`.
pub async fn usable(client: &tokio_postgres::Client) -> Result<bool, StatementError> {
    const QUERY: &str = "SELECT coalesce(bool_and(has_schema_privilege(n.oid, 'USAGE') \
                AND has_table_privilege(c.oid, 'INSERT') \
                AND has_table_privilege(c.oid, 'SELECT') \
                AND has_table_privilege(c.oid, 'DELETE')), false) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'walhook' AND c.relname IN ('backlog', 'subscription_state') \
         HAVING count(*) = 2";
    Ok(client
        .query_opt(QUERY, &[])
        .await
        .map_err(failed(QUERY))?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(failed(QUERY))?
        .unwrap_or(false))
}

/// The age in seconds of the commit of `subscription`'s oldest waiting
/// event, if one waits (read through the primary key: one row).
pub async fn oldest_age_seconds(
    client: &tokio_postgres::Client,
    subscription: &str,
) -> Result<Option<f64>, StatementError> {
    client
        .query_opt(OLDEST_AGE, &[&subscription])
        .await
        .and_then(|row| row.map(|row| row.try_get(0)).transpose())
        .map_err(failed(OLDEST_AGE))
}

/// What one subscription's backlog holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub events: i64,
    pub bytes: i64,
    /// The commit LSN of the newest waiting event.
    pub last_commit_lsn: u64,
    /// Age of the oldest waiting event's commit, in seconds.
    pub oldest_seconds: Option<f64>,
}

/// The backlog of every subscription that has one, by name.
pub async fn summaries(
    client: &tokio_postgres::Client,
) -> Result<std::collections::HashMap<String, Summary>, StatementError> {
    const QUERY: &str = "SELECT subscription, count(*), \
             coalesce(sum(octet_length(payload::text)), 0)::bigint, \
             extract(epoch FROM now() - min(commit_time))::float8, max(commit_lsn) \
         FROM walhook.backlog GROUP BY subscription";
    client
        .query(QUERY, &[])
        .await
        .and_then(|rows| {
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get(0)?,
                        Summary {
                            events: row.try_get(1)?,
                            bytes: row.try_get(2)?,
                            oldest_seconds: row.try_get(3)?,
                            last_commit_lsn: from_bigint(row.try_get(4)?),
                        },
                    ))
                })
                .collect()
        })
        .map_err(failed(QUERY))
}

/// Deletes a subscription's backlog (or its events committed before
/// `older_than` seconds ago); returns the events deleted.
pub async fn purge(
    client: &tokio_postgres::Client,
    subscription: &str,
    older_than_seconds: Option<f64>,
) -> Result<u64, StatementError> {
    const QUERY: &str = "DELETE FROM walhook.backlog WHERE subscription = $1 \
         AND ($2::float8 IS NULL OR commit_time < now() - $2::float8 * interval '1 second')";
    client
        .execute(QUERY, &[&subscription, &older_than_seconds])
        .await
        .map_err(failed(QUERY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_keys_survive_a_bigint_bit_for_bit() {
        for key in [0, 1, u64::MAX, 1 << 63, 0xDEAD_BEEF_0000_0001] {
            assert_eq!(from_bigint(to_bigint(key)), key);
        }
    }

    #[test]
    fn positions_order_as_the_stream() {
        let at = |commit_lsn, ordinal| Position {
            commit_lsn,
            ordinal,
        };
        assert!(at(1, 9) < at(2, 0));
        assert!(at(2, 0) < at(2, 1));
    }
}
