//! The replication slot walhook reads, and walhook's record of the slots it
//! streamed from (`walhook.slots`), which is how a slot that vanished is
//! told from one that never existed.
//!
//! [`find`] reads everything walhook (and `check` and `status`) want to know
//! about a slot in one query. Creating the slot makes it a failover slot on
//! PostgreSQL 17 and newer: a standby with `sync_replication_slots` keeps a
//! copy of it and its position, so walhook resumes on a promoted standby
//! instead of finding no slot there (docs/operations.md, "Failover").

use super::{StatementError, failed};
use crate::lsn::Lsn;

/// The first server version with failover slots.
pub const FAILOVER_SLOTS_SINCE: i32 = 170_000;

/// A replication slot as `pg_replication_slots` (and `pg_stat_replication`)
/// describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// `logical` or `physical`.
    pub kind: String,
    /// The output plugin of a logical slot.
    pub plugin: Option<String>,
    /// The database of a logical slot.
    pub database: Option<String>,
    /// A process holds it.
    pub active: bool,
    /// The walsender holding it.
    pub active_pid: Option<i32>,
    /// A walsender streams from it (a slot being created is `active`
    /// before anything streams).
    pub streamed: bool,
    pub confirmed_flush: Option<Lsn>,
    pub restart_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// The current WAL position minus the confirmed one.
    pub lag_bytes: Option<i64>,
    /// The WAL the slot holds on the server.
    pub retained_bytes: Option<i64>,
    /// The walsender's `flush_lag`, in seconds, while one streams.
    pub flush_lag_seconds: Option<f64>,
}

impl Slot {
    /// Whether it can stream pgoutput for walhook.
    pub fn is_pgoutput(&self) -> bool {
        self.kind == "logical" && self.plugin.as_deref() == Some("pgoutput")
    }

    /// PostgreSQL invalidated it (it fell behind `max_slot_wal_keep_size`).
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

/// Something about the server or the slot that stops walhook, in the two
/// parts `check` prints them in; as one sentence (`Display`) for the
/// commands that refuse with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerProblem {
    pub what: String,
    pub fix: String,
}

impl std::fmt::Display for ServerProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.fix)
    }
}

/// When `found` (the slot named `slot`) is a logical slot of another
/// database than `current` (slot names are per server).
pub fn in_other_database(slot: &str, found: &Slot, current: &str) -> Option<ServerProblem> {
    let database = found.database.as_deref()?;
    (found.kind == "logical" && database != current).then(|| ServerProblem {
        what: format!("slot {slot:?} belongs to database {database:?}, not {current:?}"),
        fix: format!(
            "choose another source.slot, or drop that one with SELECT \
             pg_drop_replication_slot('{}') while connected to {database:?} and run \
             `walhook setup`",
            slot.replace('\'', "''")
        ),
    })
}

/// When a server whose `wal_level` is `level` cannot decode changes.
pub fn wal_level_problem_of(level: &str) -> Option<ServerProblem> {
    (level != "logical").then(|| ServerProblem {
        what: format!(
            "wal_level is '{level}', so the server keeps no logical decoding information"
        ),
        fix: "run ALTER SYSTEM SET wal_level = logical as a superuser, then restart PostgreSQL"
            .to_owned(),
    })
}

/// The server's `wal_level` problem, if it has one.
pub async fn wal_level_problem(
    client: &tokio_postgres::Client,
) -> Result<Option<ServerProblem>, StatementError> {
    const QUERY: &str = "SELECT current_setting('wal_level')";
    let level: String = client
        .query_one(QUERY, &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(failed(QUERY))?;
    Ok(wal_level_problem_of(&level))
}

/// The database this connection is to.
pub async fn current_database(client: &tokio_postgres::Client) -> Result<String, StatementError> {
    const QUERY: &str = "SELECT current_database()::text";
    client
        .query_one(QUERY, &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(failed(QUERY))
}

/// Everything about `slot`, or `None` when there is no such slot.
pub async fn find(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<Slot>, StatementError> {
    // wal_status through to_jsonb: a column some servers lack stays a query
    // that works everywhere.
    const QUERY: &str = "SELECT s.slot_type::text, s.plugin::text, s.database::text, s.active, \
            s.active_pid, r.pid IS NOT NULL, s.confirmed_flush_lsn::text, s.restart_lsn::text, \
            to_jsonb(s) ->> 'wal_status', \
            (pg_current_wal_lsn() - s.confirmed_flush_lsn)::int8, \
            (pg_current_wal_lsn() - s.restart_lsn)::int8, \
            extract(epoch FROM r.flush_lag)::float8 \
         FROM pg_catalog.pg_replication_slots s \
         LEFT JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid \
         WHERE s.slot_name = $1";
    let Some(row) = client
        .query_opt(QUERY, &[&slot])
        .await
        .map_err(failed(QUERY))?
    else {
        return Ok(None);
    };
    let lsn = |index: usize| -> Result<Option<Lsn>, tokio_postgres::Error> {
        let text: Option<String> = row.try_get(index)?;
        Ok(text.and_then(|text| text.parse().ok()))
    };
    let read = || -> Result<Slot, tokio_postgres::Error> {
        Ok(Slot {
            kind: row.try_get(0)?,
            plugin: row.try_get(1)?,
            database: row.try_get(2)?,
            active: row.try_get(3)?,
            active_pid: row.try_get(4)?,
            streamed: row.try_get(5)?,
            confirmed_flush: lsn(6)?,
            restart_lsn: lsn(7)?,
            wal_status: row.try_get(8)?,
            lag_bytes: row.try_get(9)?,
            retained_bytes: row.try_get(10)?,
            flush_lag_seconds: row.try_get(11)?,
        })
    };
    read().map(Some).map_err(failed(QUERY))
}

/// Creates `slot` for pgoutput (a failover slot on PostgreSQL 17+);
/// returns the position it starts at.
pub async fn create(
    client: &tokio_postgres::Client,
    slot: &str,
    server_version: i32,
) -> Result<Option<Lsn>, StatementError> {
    let create = if server_version >= FAILOVER_SLOTS_SINCE {
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', failover => true)"
    } else {
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')"
    };
    let lsn: String = client
        .query_one(create, &[&slot])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(failed(create))?;
    Ok(lsn.parse().ok())
}

/// When `slot` is recorded in `walhook.slots` as one walhook streamed from
/// but no longer exists: the time walhook first streamed from it. `None`
/// too before the first setup (there is no table yet: nothing vanished).
pub async fn vanished_since(client: &tokio_postgres::Client, slot: &str) -> Option<String> {
    let row = client
        .query_opt(
            "SELECT s.first_streamed_at::text FROM walhook.slots s \
             WHERE s.slot_name = $1 \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots r \
                               WHERE r.slot_name = s.slot_name)",
            &[&slot],
        )
        .await
        .ok()??;
    row.try_get(0).ok()
}

/// Notes that walhook streams from `slot`, so that its disappearance is
/// recognised later. Best effort: without the `walhook` schema (no setup
/// run, `auto_setup = false`) there is nothing to record into.
pub async fn record_streamed(client: &tokio_postgres::Client, slot: &str) {
    let recorded = client
        .execute(
            "INSERT INTO walhook.slots (slot_name) VALUES ($1) ON CONFLICT (slot_name) DO NOTHING",
            &[&slot],
        )
        .await;
    if let Err(error) = recorded {
        tracing::debug!(%error, "cannot record the slot in walhook.slots");
    }
}
