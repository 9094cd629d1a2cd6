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
use crate::rules::Rules;
use crate::store::publication::{self, WantedPublication};
use crate::store::{StatementError, schema, slots};
use crate::tables::Resolution;

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
                    "42501" => " — the role lacks a privilege: an administrator runs this once \
                                 (docs/operations.md, \"A least-privilege role\"), or runs \
                                 `walhook setup` as a superuser"
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

impl From<StatementError> for SetupError {
    fn from(error: StatementError) -> Self {
        SetupError::new(error.statement, error.source)
    }
}

impl SetupReport {
    /// One line on the publication for `walhook setup`'s output and `run`'s
    /// log: created, changed, as wanted, or wider than wanted (and what its
    /// owner could run).
    pub fn publication_outcome(&self) -> String {
        if self.publication_created {
            "created".to_owned()
        } else if self.publication_changed {
            "updated to the tables and operations the rules name".to_owned()
        } else if self.publication_wider.is_empty() {
            "already as wanted".to_owned()
        } else {
            format!(
                "covers what the rules need and more, which walhook ignores; this role \
                 may not narrow it (its owner may: {}; docs/operations.md)",
                self.publication_wider.join("; ")
            )
        }
    }

    /// Whether setup found everything as wanted and changed nothing.
    pub fn nothing_to_do(&self) -> bool {
        !self.publication_created
            && !self.publication_changed
            && !self.slot_created
            && self.publication_wider.is_empty()
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
    /// The publication covers what the rules need and more, and this role
    /// may not narrow it: the statements its owner could run. walhook
    /// ignores the changes no rule wants.
    pub publication_wider: Vec<String>,
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
    let server_version = crate::store::server_version(client).await?;
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
    schema::install(client)
        .await
        .map_err(|(file, error)| SetupError::new(file, error))?;
    ensure_publication(client, &source.publication, &wanted, &mut report).await?;
    ensure_slot(client, &source.slot, server_version, &mut report).await?;
    Ok(report)
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
            // Said once by the caller, with the statement: not a failure.
            Err(error) if covers => {
                tracing::debug!(publication, %error, "cannot narrow the publication");
                report.publication_wider.push(statement);
            }
            Err(error) => return Err(SetupError::new(&statement, error)),
        }
    }
    Ok(())
}

async fn ensure_slot(
    client: &tokio_postgres::Client,
    slot: &str,
    server_version: i32,
    report: &mut SetupReport,
) -> Result<(), SetupError> {
    if let Some(problem) = slots::wal_level_problem(client).await? {
        return Err(SetupError::other("wal_level", problem.to_string()));
    }
    if let Some(found) = slots::find(client, slot).await? {
        let current = slots::current_database(client).await?;
        if let Some(problem) = slots::in_other_database(slot, &found, &current) {
            return Err(SetupError::other(
                "the slot's database (pg_replication_slots)",
                problem.to_string(),
            ));
        }
        if !found.is_pgoutput() {
            return Err(SetupError::other(
                "the slot's definition (pg_replication_slots)",
                format!(
                    "slot {slot:?} exists but is a {} slot for {:?}, not pgoutput; \
                     choose another source.slot or drop it with SELECT pg_drop_replication_slot('{slot}')",
                    found.kind, found.plugin
                ),
            ));
        }
        report.slot_confirmed = found.confirmed_flush;
        return Ok(());
    }
    report.slot_confirmed = slots::create(client, slot, server_version).await?;
    report.slot_created = true;
    Ok(())
}
