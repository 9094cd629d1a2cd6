//! Setup: makes a database ready for walhook — the `walhook` schema (from the
//! SQL files under `sql/`), the publication for exactly the tables and
//! schemas the rules select (what it must hold: `publication`), and the
//! logical replication slot (a failover slot on PostgreSQL 17+) —
//! idempotently, and one instance at a time (an advisory lock), so instances
//! that start together do not race each other's checks.
//!
//! The publication is created before the slot: pgoutput looks publications
//! up as of the WAL it decodes, so a slot older than its publication fails.
//! A failed statement is reported with the statement and the server's words.
//! It does not validate rules (`rules::catalog_check`) or read changes.

use crate::config::SourceConfig;
use crate::lsn::Lsn;
use crate::publication::{self, WantedPublication};
use crate::rules::Rules;
use crate::tables::Resolution;

/// The SQL files of `sql/`, in the order they run.
pub const SQL_FILES: &[(&str, &str)] = &[(
    "sql/001_walhook_schema.sql",
    include_str!("../sql/001_walhook_schema.sql"),
)];

/// A setup step failed.
#[derive(Debug, thiserror::Error)]
#[error("setup failed running `{statement}`: {message}{hint}")]
pub struct SetupError {
    pub statement: String,
    pub message: String,
    hint: String,
    #[source]
    source: Option<tokio_postgres::Error>,
}

impl SetupError {
    fn new(statement: &str, source: tokio_postgres::Error) -> SetupError {
        let (message, hint) = match source.as_db_error() {
            Some(db) => {
                let hint = match db.code().code() {
                    "42501" => " — the role lacks a privilege: grant it (see sql/ and README \
                                 'Least privilege'), or run `walhook setup` once as a superuser"
                        .to_owned(),
                    _ => db
                        .hint()
                        .map(|hint| format!(" ({hint})"))
                        .unwrap_or_default(),
                };
                (db.message().to_owned(), hint)
            }
            None => (source.to_string(), String::new()),
        };
        SetupError {
            statement: statement.to_owned(),
            message,
            hint,
            source: Some(source),
        }
    }

    fn other(statement: &str, message: impl Into<String>) -> SetupError {
        SetupError {
            statement: statement.to_owned(),
            message: message.into(),
            hint: String::new(),
            source: None,
        }
    }
}

/// What setup found or did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SetupReport {
    pub publication_created: bool,
    pub publication_changed: bool,
    pub slot_created: bool,
    /// The slot's confirmed position (where reading resumes).
    pub slot_confirmed: Option<Lsn>,
}

/// The advisory lock setup holds: its steps check then create (schema,
/// publication, slot), which races when two instances start at once — an
/// active one and its standby, or shards of one database — and PostgreSQL's
/// own `IF NOT EXISTS` does not make `CREATE SCHEMA` safe against that. The
/// key spells "walhook" in ASCII.
const SETUP_LOCK: i64 = 0x0077_616c_686f_6f6b;

/// Runs every setup step for `source`'s slot and publication and the
/// tables and operations `rules` name, one instance at a time per database.
pub async fn run(
    client: &tokio_postgres::Client,
    source: &SourceConfig,
    rules: &Rules,
    resolution: &Resolution,
) -> Result<SetupReport, SetupError> {
    let lock = "SELECT pg_advisory_lock($1)";
    client
        .execute(lock, &[&SETUP_LOCK])
        .await
        .map_err(|error| SetupError::new(lock, error))?;
    let outcome = run_steps(client, source, rules, resolution).await;
    // Released even when a step failed; a lost connection releases it too.
    let unlock = "SELECT pg_advisory_unlock($1)";
    let unlocked = client.execute(unlock, &[&SETUP_LOCK]).await;
    let report = outcome?;
    unlocked.map_err(|error| SetupError::new(unlock, error))?;
    Ok(report)
}

async fn run_steps(
    client: &tokio_postgres::Client,
    source: &SourceConfig,
    rules: &Rules,
    resolution: &Resolution,
) -> Result<SetupReport, SetupError> {
    let mut report = SetupReport::default();
    let version = "SELECT current_setting('server_version_num')::int";
    let server_version = publication::server_version(client)
        .await
        .map_err(|error| SetupError::new(version, error))?;
    let schemas = rules.schemas();
    if !schemas.is_empty() && server_version < publication::SCHEMA_PUBLICATIONS_SINCE {
        return Err(SetupError::other(
            "CREATE PUBLICATION … FOR TABLES IN SCHEMA",
            format!(
                "`tables` selects whole schemas ({}), which needs PostgreSQL 15 or newer \
                 (FOR TABLES IN SCHEMA); this server is {}. List the tables one by one instead",
                schemas
                    .iter()
                    .map(|schema| format!("{schema}.*"))
                    .collect::<Vec<_>>()
                    .join(", "),
                server_version
            ),
        ));
    }
    let wanted = WantedPublication::new(&rules.tables(), &schemas, &rules.events(), server_version)
        .for_tables(resolution);
    for (name, sql) in SQL_FILES {
        if let Err(error) = client.batch_execute(sql).await {
            // A least-privilege role cannot run the DDL, but an administrator
            // may already have run these files with psql.
            let denied = error
                .as_db_error()
                .is_some_and(|db| db.code().code() == "42501");
            if denied && schema_installed(client).await {
                tracing::debug!(file = name, "walhook schema present; skipping its DDL");
                continue;
            }
            return Err(SetupError::new(name, error));
        }
    }
    ensure_publication(client, &source.publication, &wanted, &mut report).await?;
    ensure_slot(client, &source.slot, &mut report).await?;
    Ok(report)
}

async fn schema_installed(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT to_regclass('walhook.dead_letters') IS NOT NULL",
            &[],
        )
        .await
        .map(|row| row.get::<_, bool>(0))
        .unwrap_or(false)
}

async fn ensure_publication(
    client: &tokio_postgres::Client,
    publication: &str,
    wanted: &WantedPublication,
    report: &mut SetupReport,
) -> Result<(), SetupError> {
    let lookup = "the publication's definition (pg_publication)";
    let current = publication::read(client, publication, wanted.server_version)
        .await
        .map_err(|error| SetupError::new(lookup, error))?;
    let Some(current) = current else {
        let statement = wanted.create_statement(publication);
        client
            .batch_execute(&statement)
            .await
            .map_err(|error| SetupError::new(&statement, error))?;
        report.publication_created = true;
        return Ok(());
    };
    // A publication that already delivers every change the rules need works
    // as it is; narrowing it only saves decoding, and a least-privilege role
    // (not its owner) may not alter it.
    let covers = wanted.is_covered_by(&current);
    for statement in wanted.alterations(publication, &current) {
        match client.batch_execute(&statement).await {
            Ok(()) => report.publication_changed = true,
            Err(error) if covers => {
                tracing::info!(publication, reason = %SetupError::new(&statement, error), "the publication covers more than the rules need and cannot be narrowed by this role; using it as it is");
            }
            Err(error) => return Err(SetupError::new(&statement, error)),
        }
    }
    Ok(())
}

async fn ensure_slot(
    client: &tokio_postgres::Client,
    slot: &str,
    report: &mut SetupReport,
) -> Result<(), SetupError> {
    let lookup = "SELECT plugin::text, slot_type::text, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1";
    let existing = client
        .query_opt(lookup, &[&slot])
        .await
        .map_err(|error| SetupError::new(lookup, error))?;
    if let Some(row) = existing {
        let plugin: Option<String> = row.get(0);
        let kind: String = row.get(1);
        if kind != "logical" || plugin.as_deref() != Some("pgoutput") {
            return Err(SetupError::other(
                lookup,
                format!(
                    "slot {slot:?} exists but is a {kind} slot for {plugin:?}, not pgoutput; \
                     choose another source.slot or drop it with SELECT pg_drop_replication_slot('{slot}')"
                ),
            ));
        }
        let confirmed: Option<String> = row.get(2);
        report.slot_confirmed = confirmed.and_then(|text| text.parse().ok());
        return Ok(());
    }
    // From PostgreSQL 17 on the slot is a failover slot: a standby with
    // sync_replication_slots keeps a copy of it and its position, so walhook
    // resumes on a promoted standby instead of finding no slot there
    // (docs/operations.md, "Failover").
    let version = "SELECT current_setting('server_version_num')::int";
    let version_num: i32 = client
        .query_one(version, &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|error| SetupError::new(version, error))?;
    let create = if version_num >= 170_000 {
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', failover => true)"
    } else {
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')"
    };
    let row = client
        .query_one(create, &[&slot])
        .await
        .map_err(|error| SetupError::new(create, error))?;
    let lsn: String = row.get(0);
    report.slot_created = true;
    report.slot_confirmed = lsn.parse().ok();
    Ok(())
}
