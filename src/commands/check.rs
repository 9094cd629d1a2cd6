//! `walhook check`: validates the configuration and the database walhook
//! will read, and prints each problem with the statement or step that fixes
//! it, one line each, then a summary.
//!
//! It only reads: it creates nothing, opens no replication connection and
//! sends no webhook (a URL's port is connected to, never sent a request). A
//! problem is something that stops walhook or loses data (exit 1); a warning
//! is something that works but probably not as the user expects (exit 0). The
//! config file itself is loaded as `run` loads it, so a bad file exits 2
//! before anything is checked. A query the role may not run becomes a
//! problem line of its own rather than ending the check, so one run shows
//! as much as it can.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::commands::CommandError;
use crate::config::{Config, SubscriptionConfig, TableName, TableSelector, quote_identifier};
use crate::destination::DestinationPolicy;
use crate::event::EventKind;
use crate::pgconn::connect_sql;
use crate::rules::catalog_check::{self, RuleError};
use crate::store;
use crate::store::publication::{self, WantedPublication};
use crate::tables::{self, Resolution};

/// How long resolving one URL host may take before it counts as failed.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting to one URL's address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the check found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub problems: Vec<Finding>,
    pub warnings: Vec<Finding>,
    /// Checks that found nothing wrong.
    pub passed: usize,
}

/// One problem or warning: what is wrong and how to fix it.
#[derive(Debug, Clone)]
pub struct Finding {
    pub what: String,
    /// Empty when `what` already says how.
    pub fix: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.fix.is_empty() {
            f.write_str(&self.what)
        } else {
            write!(f, "{} — fix: {}", self.what, self.fix)
        }
    }
}

impl CheckReport {
    /// 0 when walhook can run as configured (warnings allowed), 1 when
    /// something must be fixed first.
    pub fn exit_code(&self) -> u8 {
        if self.problems.is_empty() { 0 } else { 1 }
    }

    fn problem(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        let finding = Finding {
            what: what.into(),
            fix: fix.into(),
        };
        println!("problem: {finding}");
        self.problems.push(finding);
    }

    fn warning(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        let finding = Finding {
            what: what.into(),
            fix: fix.into(),
        };
        println!("warning: {finding}");
        self.warnings.push(finding);
    }

    fn pass(&mut self) {
        self.passed += 1;
    }

    /// A catalog query failed: the check it belonged to cannot be judged.
    fn query_failed(&mut self, what: &str, error: &tokio_postgres::Error) {
        self.problem(
            format!("cannot read {what}: {}", server_message(error)),
            "grant the role read access to the system catalogs, or run check as a role that has it",
        );
    }

    fn summary(&self) -> String {
        let plural = |count: usize, word: &str| {
            format!("{count} {word}{}", if count == 1 { "" } else { "s" })
        };
        if self.problems.is_empty() {
            let warnings = if self.warnings.is_empty() {
                String::new()
            } else {
                format!(", {}", plural(self.warnings.len(), "warning"))
            };
            format!(
                "walhook check: ready to run — {} passed{warnings}",
                plural(self.passed, "check")
            )
        } else {
            format!(
                "walhook check: {} to fix, {} ({} passed)",
                plural(self.problems.len(), "problem"),
                plural(self.warnings.len(), "warning"),
                plural(self.passed, "check")
            )
        }
    }
}

/// `walhook check`: loads the config (a bad file is an error, exit 2),
/// connects (an unreachable server is an error, exit 1), prints the report
/// and returns it; its [`CheckReport::exit_code`] is the command's.
pub async fn run(config_path: &Path) -> Result<CheckReport, CommandError> {
    let config = Config::load(config_path)?;
    let params = crate::pgconn::ConnectParams::from_source(&config.source)?;
    let client = connect_sql(&params).await?;
    println!(
        "walhook check: {} (slot {}, publication {}, {} subscription{})",
        params.redacted(),
        config.source.slot,
        config.source.publication,
        config.subscriptions.len(),
        if config.subscriptions.len() == 1 {
            ""
        } else {
            "s"
        },
    );
    let mut report = CheckReport::default();
    check_server_verification(&params, &mut report);
    let role = check_server_and_role(&client, &mut report).await;
    check_physical_replication(&client, &role, &mut report).await;
    let tables = check_tables(&client, &config.subscriptions, &role, &mut report).await;
    check_rules(&client, &config.subscriptions, &tables, &mut report).await;
    check_publication(&client, &config, &tables, &mut report).await;
    check_slot(&client, &config, &mut report).await;
    check_dead_letters(&client, &role, &mut report).await;
    check_backlogs(&client, &config, &role, &mut report).await;
    check_backfills(&client, &role, &mut report).await;
    check_state_owners(&client, &role, &mut report).await;
    check_urls(
        &config.subscriptions,
        &config.delivery.destination_policy(),
        &mut report,
    )
    .await;
    println!("{}", report.summary());
    Ok(report)
}

/// Whether a stopped walhook could fill the server's disk: with
/// `max_slot_wal_keep_size = -1` (the default) the slot keeps every WAL
/// segment from its position on, however long walhook is away.
async fn check_wal_retention(client: &tokio_postgres::Client, report: &mut CheckReport) {
    let setting = match client
        .query_one("SELECT current_setting('max_slot_wal_keep_size')", &[])
        .await
        .and_then(|row| row.try_get::<_, String>(0))
    {
        Ok(setting) => setting,
        Err(error) => {
            report.query_failed("max_slot_wal_keep_size", &error);
            return;
        }
    };
    match wal_retention_warning(&setting) {
        Some(what) => report.warning(
            what,
            "set a limit the disk can hold, e.g. ALTER SYSTEM SET max_slot_wal_keep_size = \
             '50GB'; SELECT pg_reload_conf() (docs/operations.md, \"Lag and slot safety\")",
        ),
        None => report.pass(),
    }
}

/// The warning for a `max_slot_wal_keep_size` setting, if it deserves one.
fn wal_retention_warning(setting: &str) -> Option<String> {
    (setting.trim() == "-1").then(|| {
        "max_slot_wal_keep_size is -1 (no limit): while walhook is stopped or behind, its slot \
         keeps every WAL segment, until the server's disk is full"
            .to_owned()
    })
}

/// Whether walhook checks it talks to the right server.
fn check_server_verification(params: &crate::pgconn::ConnectParams, report: &mut CheckReport) {
    match server_verification_warning(params) {
        Some(what) => report.warning(
            what,
            "use sslmode=verify-full&sslrootcert=/path/to/root.crt (the CA that signed the \
             server's certificate; sslrootcert=system for a public CA) in the source URL \
             (docs/security.md)",
        ),
        None => report.pass(),
    }
}

/// Below `verify-full` (chain and host name), something in between reads
/// every change — for a host other than this machine.
fn server_verification_warning(params: &crate::pgconn::ConnectParams) -> Option<String> {
    use crate::pgconn::SslMode;
    let loopback = params.host == "localhost"
        || params
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback());
    if loopback || params.sslmode == SslMode::VerifyFull {
        return None;
    }
    let risk = match params.sslmode {
        SslMode::VerifyCa => "checks the certificate's chain but not that it names this host",
        _ if params.sslrootcert.is_some() => {
            "checks the certificate's chain but not that it names this host"
        }
        SslMode::Require => "encrypts but does not check the server's certificate",
        _ => "may not encrypt, and does not check the server's certificate",
    };
    Some(format!(
        "the source URL's sslmode={} {risk}: something in between {} could read every change \
         walhook streams",
        params.sslmode,
        params.address()
    ))
}

/// Whether pg_hba.conf also lets a least-privilege role connect for
/// physical replication (`pg_basebackup`: a copy of the whole cluster),
/// where it may read `pg_hba_file_rules` (a grant; a superuser may do
/// everything anyway). The first line that
/// names the `replication` database and the role decides, as pg_hba.conf
/// is read top-down (addresses are not compared).
async fn check_physical_replication(
    client: &tokio_postgres::Client,
    role: &str,
    report: &mut CheckReport,
) {
    const QUERY: &str = "SELECT h.line_number, h.type, h.auth_method \
         FROM pg_hba_file_rules h, pg_roles r \
         WHERE h.error IS NULL AND r.rolname = current_user \
           AND r.rolreplication AND NOT r.rolsuper AND 'replication' = ANY(h.database) \
           AND EXISTS (SELECT FROM unnest(h.user_name) u WHERE u = 'all' OR u = current_user \
                       OR (left(u, 1) = '+' AND pg_has_role(current_user, substr(u, 2), 'MEMBER'))) \
         ORDER BY h.line_number LIMIT 1";
    let row = match client.query_opt(QUERY, &[]).await {
        Ok(row) => row,
        // Not readable for this role (the default below superuser): nothing
        // can be seen, so nothing is said.
        Err(_) => return,
    };
    let Some(row) = row else {
        report.pass();
        return;
    };
    let line: i32 = row.get(0);
    let kind: String = row.get(1);
    let method: String = row.get(2);
    if method == "reject" {
        report.pass();
        return;
    }
    let role = quote_identifier(role);
    report.warning(
        format!(
            "pg_hba.conf line {line} ({kind} replication … {method}) also lets role {role} \
             connect for physical replication: with REPLICATION it could copy the whole cluster \
             (pg_basebackup), every table of every database"
        ),
        format!(
            "walhook needs only logical replication, which matches its database's own lines: \
             put `{kind} replication {role} all reject` above line {line} (or narrow that line), \
             then SELECT pg_reload_conf()"
        ),
    );
}

/// `wal_level` and the role's right to replicate. Returns the role's name.
async fn check_server_and_role(
    client: &tokio_postgres::Client,
    report: &mut CheckReport,
) -> String {
    let row = match client
        .query_one(
            "SELECT current_setting('wal_level'), current_user::text, r.rolsuper, r.rolreplication \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
    {
        Ok(row) => row,
        Err(error) => {
            report.query_failed("the server settings and the role", &error);
            return String::new();
        }
    };
    let wal_level: String = row.get(0);
    let role: String = row.get(1);
    let superuser: bool = row.get(2);
    let replication: bool = row.get(3);
    match store::slots::wal_level_problem_of(&wal_level) {
        None => report.pass(),
        Some(problem) => report.problem(problem.what, problem.fix),
    }
    if superuser || replication {
        report.pass();
    } else {
        report.problem(
            format!(
                "role {role:?} has neither REPLICATION nor SUPERUSER, so it cannot open a replication connection"
            ),
            format!(
                "as a superuser run ALTER ROLE {} REPLICATION",
                quote_identifier(&role)
            ),
        );
    }
    role
}

/// One table a rule names, as the catalog has it.
struct TableState {
    /// The subscriptions naming it, in configuration order.
    subscriptions: Vec<String>,
    /// `None` when the table does not exist.
    found: Option<FoundTable>,
}

struct FoundTable {
    /// `d` default, `n` nothing, `f` full, `i` index.
    replica_identity: String,
    has_primary_key: bool,
    /// REPLICA IDENTITY USING INDEX whose index is gone.
    identity_index_missing: bool,
    /// It, or its leaf partitions, when they cannot log updates and deletes.
    without_identity: Vec<TableName>,
    partitioned: bool,
}

impl FoundTable {
    /// `REPLICA IDENTITY` as `ALTER TABLE` spells it.
    fn identity_name(&self) -> &'static str {
        match self.replica_identity.as_str() {
            "f" => "FULL",
            "n" => "NOTHING",
            "i" => "USING INDEX",
            _ => "DEFAULT",
        }
    }

    /// How the table's replica identity fails to identify old rows, if it
    /// does. For a partitioned table, its leaves' identities count.
    fn missing_identity(&self) -> Option<String> {
        match self.replica_identity.as_str() {
            _ if self.partitioned && !self.without_identity.is_empty() => Some(format!(
                "missing on its partitions {} (each partition's own identity counts)",
                self.without_identity
                    .iter()
                    .map(TableName::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            "n" => Some("NOTHING".to_owned()),
            "d" if !self.has_primary_key && !self.partitioned => {
                Some("DEFAULT and no primary key".to_owned())
            }
            "i" if self.identity_index_missing => {
                Some("USING INDEX but the index is gone".to_owned())
            }
            _ => None,
        }
    }
}

/// Existence, SELECT privilege and replica identity of every table the rules
/// select (one by one, or each table a `schema.*` has now).
async fn check_tables(
    client: &tokio_postgres::Client,
    subscriptions: &[SubscriptionConfig],
    role: &str,
    report: &mut CheckReport,
) -> BTreeMap<TableName, TableState> {
    let selectors: Vec<TableSelector> = subscriptions
        .iter()
        .flat_map(SubscriptionConfig::table_selectors)
        .collect();
    let resolution = match tables::resolve(client, &selectors).await {
        Ok(resolution) => resolution,
        Err(error) => {
            report.query_failed("the rule tables in pg_class", &error);
            Resolution::default()
        }
    };
    for schema in &resolution.missing_schemas {
        let named_by: Vec<String> = subscriptions
            .iter()
            .filter(|subscription| subscription.schemas().contains(schema))
            .map(|subscription| subscription.name.clone())
            .collect();
        report.problem(
            format!(
                "schema {schema:?} does not exist (selected whole by subscription {})",
                names(&named_by)
            ),
            "create the schema, or correct `tables` in the subscription",
        );
    }
    let mut tables: BTreeMap<TableName, TableState> = BTreeMap::new();
    for subscription in subscriptions {
        let own = subscription.table_selectors();
        let selected = subscription
            .table_names()
            .into_iter()
            .chain(resolution.selected_by(&own).map(|table| table.name.clone()));
        for table in selected {
            let state = tables.entry(table).or_insert_with(|| TableState {
                subscriptions: Vec::new(),
                found: None,
            });
            if !state.subscriptions.contains(&subscription.name) {
                state.subscriptions.push(subscription.name.clone());
            }
        }
    }
    for (table, state) in &mut tables {
        let row = match client
            .query_opt(
                "SELECT c.relreplident::text, has_table_privilege(c.oid, 'SELECT'), \
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                        c.relreplident = 'i' AND NOT EXISTS \
                          (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&table.schema, &table.name],
            )
            .await
        {
            Ok(row) => row,
            Err(error) => {
                report.query_failed(&format!("the catalog entry of {table}"), &error);
                continue;
            }
        };
        let Some(row) = row else {
            report.problem(
                format!(
                    "table {table} does not exist (named by subscription {})",
                    names(&state.subscriptions)
                ),
                "create the table, or correct `tables` in the subscription \
                 (if it was renamed while walhook ran, walhook went on delivering it under \
                 its new name: put that name in the config)",
            );
            continue;
        };
        report.pass();
        let can_select: bool = row.get(1);
        if can_select {
            report.pass();
        } else {
            report.problem(
                format!("role {role:?} lacks SELECT on {table}"),
                format!(
                    "GRANT SELECT ON {} TO {}",
                    table.quoted(),
                    quote_identifier(role)
                ),
            );
        }
        state.found = Some(FoundTable {
            replica_identity: row.get(0),
            has_primary_key: row.get(2),
            identity_index_missing: row.get(3),
            without_identity: resolution
                .tables
                .get(table)
                .map(|found| found.without_identity.clone())
                .unwrap_or_default(),
            partitioned: resolution
                .tables
                .get(table)
                .is_some_and(|found| found.partitioned),
        });
    }
    for subscription in subscriptions {
        let wants_old_rows = subscription
            .events
            .iter()
            .any(|kind| matches!(kind, EventKind::Update | EventKind::Delete));
        if !wants_old_rows {
            continue;
        }
        for (table, state) in &tables {
            if !state.subscriptions.contains(&subscription.name) {
                continue;
            }
            let Some(found) = state.found.as_ref() else {
                continue;
            };
            match found.missing_identity() {
                None if found.replica_identity == "f"
                    || !subscription.events.contains(&EventKind::Update) =>
                {
                    report.pass()
                }
                // Updates work, but without the old row: say what that
                // means for the payload, once per subscription and table.
                None => report.warning(
                    format!(
                        "table {table} has REPLICA IDENTITY {}: the updates subscription {:?} receives carry \
                         old_record null (only the key columns when the key changes) and changed_columns null, \
                         and large values an update leaves alone are listed in unchanged_toast instead of sent",
                        found.identity_name(),
                        subscription.name
                    ),
                    format!(
                        "ALTER TABLE {} REPLICA IDENTITY FULL if receivers need the old row",
                        table.quoted()
                    ),
                ),
                Some(identity) => report.warning(
                    format!(
                        "table {table} has REPLICA IDENTITY {identity}: subscription {:?} receives updates/deletes \
                         but old_record will be null (and PostgreSQL refuses UPDATE and DELETE on a table \
                         without a replica identity while a publication publishes them)",
                        subscription.name
                    ),
                    format!(
                        "ALTER TABLE {} REPLICA IDENTITY FULL (or add a primary key)",
                        table.quoted()
                    ),
                ),
            }
        }
    }
    // PostgreSQL publishes a partition's changes through its root, and a
    // TRUNCATE of one partition names only the partition: it is not sent.
    for subscription in subscriptions
        .iter()
        .filter(|subscription| subscription.events.contains(&EventKind::Truncate))
    {
        for (table, state) in &tables {
            if state.subscriptions.contains(&subscription.name)
                && state.found.as_ref().is_some_and(|found| found.partitioned)
            {
                report.warning(
                    format!(
                        "subscription {:?} receives TRUNCATE of partitioned {table}, but a TRUNCATE \
                         of one of its partitions alone is not published (PostgreSQL publishes \
                         partitions through their root) and is not delivered",
                        subscription.name
                    ),
                    format!(
                        "truncate {} itself, or delete the partition's rows, when receivers must hear of it",
                        table.quoted()
                    ),
                );
            }
        }
    }
    tables
}

/// The rules against the catalog (columns, filters), per subscription whose
/// tables all exist, so that one bad rule does not hide the next.
async fn check_rules(
    client: &tokio_postgres::Client,
    subscriptions: &[SubscriptionConfig],
    tables: &BTreeMap<TableName, TableState>,
    report: &mut CheckReport,
) {
    for (index, subscription) in subscriptions.iter().enumerate() {
        let all_found = subscription
            .table_names()
            .iter()
            .all(|table| tables.get(table).is_some_and(|state| state.found.is_some()));
        if !all_found {
            continue;
        }
        match catalog_check::check_subscription(client, index, subscription).await {
            Ok(_) => report.pass(),
            // Reported above with the other missing tables and schemas.
            Err(RuleError::UnknownTable { .. } | RuleError::UnknownSchema { .. }) => {}
            Err(RuleError::Catalog(error)) => {
                report.query_failed(
                    &format!("the catalog for subscription {:?}", subscription.name),
                    &error,
                );
            }
            Err(error) => report.problem(error.to_string(), ""),
        }
    }
}

/// The publication exists, holds every table and schema the rules select,
/// publishes partitions through their root, and publishes the operations
/// the subscriptions ask for; and which published tables no rule selects.
async fn check_publication(
    client: &tokio_postgres::Client,
    config: &Config,
    tables: &BTreeMap<TableName, TableState>,
    report: &mut CheckReport,
) {
    let publication = &config.source.publication;
    let server_version = match crate::store::server_version(client).await {
        Ok(version) => version,
        Err(error) => {
            report.query_failed("server_version_num", &error.source);
            return;
        }
    };
    let explicit: Vec<TableName> = config
        .subscriptions
        .iter()
        .flat_map(SubscriptionConfig::table_names)
        .collect();
    let schemas: Vec<String> = config
        .subscriptions
        .iter()
        .flat_map(SubscriptionConfig::schemas)
        .collect();
    let events: Vec<EventKind> = config
        .subscriptions
        .iter()
        .flat_map(|subscription| subscription.events.iter().copied())
        .collect();
    let wanted = WantedPublication::new(&explicit, &schemas, &events, server_version);
    if !wanted.schemas.is_empty() && server_version < publication::SCHEMA_PUBLICATIONS_SINCE {
        report.problem(
            format!(
                "`tables` selects whole schemas ({}), which needs PostgreSQL 15 or newer \
                 (FOR TABLES IN SCHEMA); this server's version is {server_version}",
                wanted.schemas.join(", ")
            ),
            "list the tables one by one in `tables`",
        );
    }
    let current = match publication::read(client, publication, server_version).await {
        Ok(current) => current,
        Err(error) => {
            report.query_failed("pg_publication", &error);
            return;
        }
    };
    let Some(current) = current else {
        report.problem(
            format!("publication {publication:?} does not exist"),
            "run `walhook setup` (it creates the publication for the tables the rules name)",
        );
        return;
    };
    report.pass();
    let missing: Vec<String> = tables
        .iter()
        .filter(|(table, state)| {
            state.found.is_some()
                && !current.all_tables
                && !current.tables.contains(table)
                && !current.schemas.contains(&table.schema)
        })
        .map(|(table, _)| table.to_string())
        .chain(
            wanted
                .schemas
                .iter()
                .filter(|schema| !current.all_tables && !current.schemas.contains(schema))
                .map(|schema| {
                    format!(
                        "schema {schema} (as a whole, so that tables created later are published)"
                    )
                }),
        )
        .collect();
    if missing.is_empty() {
        report.pass();
    } else {
        report.problem(
            format!(
                "publication {publication:?} does not include {}",
                missing.join(", ")
            ),
            "run `walhook setup` (it sets the publication to the tables the rules name)",
        );
    }
    let partitioned: Vec<String> = tables
        .iter()
        .filter(|(_, state)| state.found.as_ref().is_some_and(|found| found.partitioned))
        .map(|(table, _)| table.to_string())
        .collect();
    if !current.via_root && !partitioned.is_empty() {
        report.problem(
            format!(
                "publication {publication:?} publishes the changes of partitioned {} under its \
                 partitions' names, which no rule selects: they would be passed over",
                partitioned.join(", ")
            ),
            format!(
                "run `walhook setup`, or ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                quote_identifier(publication)
            ),
        );
    } else {
        report.pass();
    }
    let published = match publication::published_tables(client, publication).await {
        Ok(published) => published,
        Err(error) => {
            report.query_failed("pg_publication_tables", &error);
            return;
        }
    };
    let has = |kind: EventKind| current.operations.contains(&kind);
    // A table without a replica identity in a publication that publishes
    // updates or deletes makes PostgreSQL refuse the application's UPDATE
    // and DELETE on it, whatever walhook subscribes to. (Subscriptions that
    // receive updates or deletes were warned about with the tables.)
    let publishes_old_rows = has(EventKind::Update) || has(EventKind::Delete);
    for (table, state) in tables {
        let Some(identity) = state.found.as_ref().and_then(FoundTable::missing_identity) else {
            continue;
        };
        let warned = config.subscriptions.iter().any(|subscription| {
            state.subscriptions.contains(&subscription.name)
                && subscription
                    .events
                    .iter()
                    .any(|kind| matches!(kind, EventKind::Update | EventKind::Delete))
        });
        if publishes_old_rows && published.contains(table) && !warned {
            report.warning(
                format!(
                    "table {table} has REPLICA IDENTITY {identity} and publication {publication:?} \
                     publishes updates/deletes, so PostgreSQL refuses UPDATE and DELETE on it"
                ),
                format!(
                    "ALTER TABLE {} REPLICA IDENTITY FULL (or add a primary key), or if the table \
                     only ever gets inserts, ALTER PUBLICATION {} SET (publish = 'insert, truncate')",
                    table.quoted(),
                    quote_identifier(publication)
                ),
            );
        }
    }
    let unpublished: Vec<&str> = wanted
        .operations
        .iter()
        .filter(|kind| !has(**kind) && events.contains(kind))
        .map(|kind| kind.sql_operation())
        .collect();
    if unpublished.is_empty() {
        report.pass();
    } else {
        report.problem(
            format!(
                "publication {publication:?} does not publish {}, which a subscription asks for",
                unpublished.join(", ")
            ),
            format!(
                "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate')",
                quote_identifier(publication)
            ),
        );
    }
    // What the publication sends that no rule selects: decoded, counted in
    // walhook_changes_unrouted_total, and passed over.
    let selectors: Vec<TableSelector> = config
        .subscriptions
        .iter()
        .flat_map(SubscriptionConfig::table_selectors)
        .collect();
    for table in published.iter().filter(|table| {
        !selectors
            .iter()
            .any(|selector| selector.selects(&table.schema, &table.name))
    }) {
        report.warning(
            format!(
                "publication {publication:?} sends the changes of {table}, which no rule selects: \
                 walhook decodes them and passes them over (counted in \
                 walhook_changes_unrouted_total{{table=\"{table}\"}}); a table renamed while walhook \
                 ran shows up here under its new name"
            ),
            format!(
                "add {table} to a subscription's `tables`, or ALTER PUBLICATION {} DROP TABLE {} \
                 (`walhook setup` narrows the publication to the rules' tables)",
                quote_identifier(publication),
                table.quoted()
            ),
        );
    }
}

/// The slot exists, is a pgoutput slot of this database and still has its
/// WAL; or, when missing, that it could be created; and that a WAL sender is
/// free for walhook.
async fn check_slot(client: &tokio_postgres::Client, config: &Config, report: &mut CheckReport) {
    check_wal_retention(client, report).await;
    let slot = &config.source.slot;
    let limits = match client
        .query_one(
            "SELECT current_setting('max_replication_slots')::int, \
                    (SELECT count(*)::int FROM pg_replication_slots), \
                    current_setting('max_wal_senders')::int, \
                    (SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'walsender'), \
                    current_database()::text",
            &[],
        )
        .await
    {
        Ok(row) => row,
        Err(error) => {
            report.query_failed("the replication limits", &error);
            return;
        }
    };
    let max_slots: i32 = limits.get(0);
    let slots_used: i32 = limits.get(1);
    let max_senders: i32 = limits.get(2);
    let senders_used: i32 = limits.get(3);
    let database: String = limits.get(4);
    let found = match store::slots::find(client, slot).await {
        Ok(found) => found,
        Err(error) => {
            report.query_failed("pg_replication_slots", &error.source);
            return;
        }
    };
    let active = match found {
        None => {
            report.problem(
                format!("replication slot {slot:?} does not exist"),
                "run `walhook setup` (it creates the slot; changes are streamed from then on)",
            );
            if slots_used >= max_slots {
                report.problem(
                    format!(
                        "all {max_slots} replication slots are in use (max_replication_slots = {max_slots}), \
                         so the slot cannot be created"
                    ),
                    "raise max_replication_slots (ALTER SYSTEM SET max_replication_slots = …, then restart) \
                     or drop an unused slot with SELECT pg_drop_replication_slot('name')",
                );
            } else {
                report.pass();
            }
            false
        }
        Some(found) => {
            let drop_it = format!(
                "choose another source.slot, or drop this one with SELECT pg_drop_replication_slot('{}') \
                 and run `walhook setup`",
                slot.replace('\'', "''")
            );
            if !found.is_pgoutput() {
                report.problem(
                    format!(
                        "slot {slot:?} is a {} slot for {}, not a logical pgoutput slot",
                        found.kind,
                        found.plugin.as_deref().unwrap_or("no plugin")
                    ),
                    drop_it,
                );
            } else if let Some(problem) = store::slots::in_other_database(slot, &found, &database) {
                report.problem(problem.what, problem.fix);
            } else if found.is_lost() {
                report.problem(
                    format!(
                        "slot {slot:?} has lost WAL it needs (wal_status = lost) and cannot stream any more"
                    ),
                    format!("{drop_it} (changes in between are not delivered)"),
                );
            } else {
                report.pass();
            }
            found.active
        }
    };
    // An active slot means a walhook (or another reader) already holds a WAL
    // sender; this one would stand by without needing a new one until then.
    if !active && senders_used >= max_senders {
        report.problem(
            format!(
                "all {max_senders} WAL senders are in use (max_wal_senders = {max_senders}), \
                 so walhook cannot open its replication connection"
            ),
            "raise max_wal_senders (ALTER SYSTEM SET max_wal_senders = …, then restart) \
             or stop an unused replication client",
        );
    } else {
        report.pass();
    }
}

/// The `walhook` schema that holds dead letters, and the role's right to
/// write there.
async fn check_dead_letters(client: &tokio_postgres::Client, role: &str, report: &mut CheckReport) {
    let writable = match store::dead_letters::writable(client).await {
        Ok(writable) => writable,
        Err(error) => {
            report.query_failed("the walhook schema", &error.source);
            return;
        }
    };
    if writable.is_none() {
        report.problem(
            "table walhook.dead_letters does not exist, so undeliverable events cannot be parked",
            "run `walhook setup` (it runs sql/001_walhook_schema.sql)",
        );
    } else if writable == Some(false) {
        let role = quote_identifier(role);
        report.problem(
            format!("role {role} cannot write dead letters to walhook.dead_letters"),
            format!(
                "GRANT USAGE ON SCHEMA walhook TO {role}; \
                 GRANT SELECT, INSERT, DELETE ON walhook.dead_letters TO {role}; \
                 GRANT USAGE ON SEQUENCE walhook.dead_letters_id_seq TO {role}"
            ),
        );
    } else {
        check_seal_columns(client, report).await;
    }
}

/// Both tables of stored events have the `mac` column that holds row seals
/// (a schema from before seals gains it when `walhook setup` runs as its
/// owner; until then rows are stored and read back unchecked).
async fn check_seal_columns(client: &tokio_postgres::Client, report: &mut CheckReport) {
    let mut missing = Vec::new();
    // A schema without the backlog table is reported by `check_backlogs`.
    let has_backlog = matches!(store::backlog::usable(client).await, Ok(true));
    let tables: &[&str] = if has_backlog {
        &["dead_letters", "backlog"]
    } else {
        &["dead_letters"]
    };
    for table in tables {
        match store::schema::has_seal_column(client, table).await {
            Ok(true) => {}
            Ok(false) => missing.push(format!("walhook.{table}")),
            Err(error) => {
                report.query_failed("the walhook schema", &error.source);
                return;
            }
        }
    }
    if missing.is_empty() {
        report.pass();
    } else {
        report.warning(
            format!(
                "{} has no `mac` column (a schema from before row seals): rows there are not \
                 sealed, so a row written by anyone with INSERT on the table would be sent as \
                 walhook's",
                missing.join(" and ")
            ),
            "run `walhook setup` as the walhook schema's owner (or sql/001_walhook_schema.sql \
             with psql) to add it",
        );
    }
}

/// The backlog tables are there and writable (a warning when not: walhook
/// runs without them, as before they existed), and no subscription is
/// paused or has a backlog past `delivery.backlog`.
async fn check_backlogs(
    client: &tokio_postgres::Client,
    config: &Config,
    role: &str,
    report: &mut CheckReport,
) {
    match store::backlog::usable(client).await {
        Ok(true) => {}
        Ok(false) => {
            let role = quote_identifier(role);
            report.warning(
                "walhook.backlog or walhook.subscription_state is missing or not writable: a down \
                 or slow endpoint will hold back every subscription and the slot once its 4 MiB \
                 are spent, and `walhook pause` cannot work",
                format!(
                    "run `walhook setup`, or the files of sql/ as an administrator (GRANT SELECT, \
                     INSERT, UPDATE, DELETE ON walhook.backlog, walhook.subscription_state TO {role})"
                ),
            );
            return;
        }
        Err(error) => {
            report.query_failed("the walhook schema", &error.source);
            return;
        }
    }
    let (backlogs, states) = match (
        store::backlog::summaries(client).await,
        store::subscription_state::all(client).await,
    ) {
        (Ok(backlogs), Ok(states)) => (backlogs, states),
        (Err(error), _) | (_, Err(error)) => {
            report.query_failed("walhook.backlog", &error.source);
            return;
        }
    };
    let mut clean = true;
    for subscription in &config.subscriptions {
        let name = &subscription.name;
        if states.get(name).is_some_and(|state| state.paused) {
            clean = false;
            report.warning(
                format!("subscription {name:?} is paused: its events wait in walhook.backlog"),
                format!("walhook resume {name}"),
            );
        }
        let Some(backlog) = backlogs.get(name) else {
            continue;
        };
        let mut status = crate::status::SubscriptionStatus::waiting(name, backlog);
        status.warn_about_backlog(&config.delivery.backlog);
        for warning in status.warnings {
            clean = false;
            report.warning(format!("subscription {name:?}: {warning}"), "");
        }
    }
    for (name, backlog) in &backlogs {
        if !config
            .subscriptions
            .iter()
            .any(|subscription| subscription.name == *name)
        {
            clean = false;
            report.warning(
                format!(
                    "walhook.backlog holds {} events of subscription {name:?}, which the config \
                     no longer has: nothing will deliver them",
                    backlog.events
                ),
                format!(
                    "add the subscription back, or delete them: walhook backlog purge \
                     --subscription {name}"
                ),
            );
        }
    }
    if clean {
        report.pass();
    }
}

/// `walhook.backfills` is there and writable (a warning when not: walhook
/// streams without it, but `walhook backfill` cannot record a request and
/// the daemon cannot take one).
async fn check_backfills(client: &tokio_postgres::Client, role: &str, report: &mut CheckReport) {
    match store::backfills::usable(client).await {
        Ok(true) => report.pass(),
        Ok(false) => {
            let role = quote_identifier(role);
            report.warning(
                "walhook.backfills is missing or not writable: `walhook backfill` cannot record                  a request, and walhook cannot send a table's existing rows",
                format!(
                    "run `walhook setup`, or the files of sql/ as an administrator (GRANT SELECT, \
                     INSERT, UPDATE ON walhook.backfills TO {role}; GRANT USAGE ON SEQUENCE \
                     walhook.backfills_id_seq TO {role})"
                ),
            );
        }
        Err(error) => report.query_failed("walhook.backfills", &error.source),
    }
}

/// The `walhook` schema and its tables belong to this role or a superuser:
/// whoever owns them can rewrite dead letters and backlogs, and so what
/// walhook sends, signed, to the receivers (docs/security.md).
async fn check_state_owners(client: &tokio_postgres::Client, role: &str, report: &mut CheckReport) {
    const QUERY: &str = "SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, \
                format('%I.%I', n.nspname, c.relname), r.rolname \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_roles r ON r.oid = c.relowner \
         WHERE n.nspname = 'walhook' AND c.relkind IN ('r', 'p', 'S') \
           AND r.rolname <> current_user AND NOT r.rolsuper \
         UNION ALL \
         SELECT 'SCHEMA', 'walhook', r.rolname FROM pg_namespace n \
         JOIN pg_roles r ON r.oid = n.nspowner \
         WHERE n.nspname = 'walhook' AND r.rolname <> current_user AND NOT r.rolsuper \
         ORDER BY 1, 2";
    let rows = match client.query(QUERY, &[]).await {
        Ok(rows) => rows,
        Err(error) => {
            report.query_failed("the walhook schema's owners", &error);
            return;
        }
    };
    if rows.is_empty() {
        report.pass();
        return;
    }
    for row in rows {
        let (Ok(kind), Ok(name), Ok(owner)) = (
            row.try_get::<_, String>(0),
            row.try_get::<_, String>(1),
            row.try_get::<_, String>(2),
        ) else {
            continue;
        };
        report.warning(
            format!(
                "{} {name} belongs to role {owner:?}, neither this role ({role:?}) nor a \
                 superuser: {owner:?} can rewrite what walhook stores, and so what it sends",
                kind.to_lowercase()
            ),
            format!("ALTER {kind} {name} OWNER TO {}", quote_identifier(role)),
        );
    }
}

/// Warns about a subscription whose requests anyone could forge (no
/// `secret`), or whose signature or Authorization header crosses the
/// network in clear text (`http://` to a host that is not this machine).
fn warn_about_exposure(
    subscription: &SubscriptionConfig,
    url: &url::Url,
    host: &str,
    report: &mut CheckReport,
) {
    let name = &subscription.name;
    if subscription.signing_key.is_none() {
        report.warning(
            format!(
                "subscription {name:?} has no `secret`: its receiver cannot tell walhook's \
                 requests from anyone else's"
            ),
            "set `secret = \"env:…\"` to a whsec_ key (openssl rand -base64 32) the receiver \
             verifies",
        );
    }
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback());
    let authorization = subscription
        .headers
        .keys()
        .any(|header| *header == reqwest::header::AUTHORIZATION);
    if url.scheme() == "http" && !loopback && (subscription.signing_key.is_some() || authorization)
    {
        report.warning(
            format!(
                "subscription {name:?} sends its {} over plain http to {host}: anyone on the \
                 way can read it (and replay the request)",
                if authorization {
                    "Authorization header"
                } else {
                    "signed requests"
                }
            ),
            "use an https:// URL",
        );
    }
}

/// Warns about a URL whose host is (or resolves to) a link-local address,
/// where clouds serve instance metadata and credentials: events sent there
/// are a configuration mistake at best.
async fn warn_about_metadata_address(
    subscription: &SubscriptionConfig,
    host: &str,
    port: u16,
    report: &mut CheckReport,
) {
    let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .ok()
        .and_then(Result::ok);
    let Some(addresses) = resolved else {
        return;
    };
    let link_local = |address: std::net::IpAddr| match address {
        std::net::IpAddr::V4(v4) => v4.is_link_local() || v4.octets() == [100, 100, 100, 200],
        std::net::IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]
        }
    };
    if let Some(address) = addresses
        .map(|address| address.ip())
        .find(|ip| link_local(*ip))
    {
        report.warning(
            format!(
                "subscription {:?}: url host {host} is the link-local address {address}, where \
                 clouds serve instance metadata and credentials",
                subscription.name
            ),
            "correct `url`",
        );
    }
}

/// With `delivery.deny_private` on, a URL whose host is, or resolves only
/// to, addresses the policy refuses is a problem: none of its events would
/// be delivered, and it is not connected to either. (A host with some
/// permitted addresses is used through those.) Returns whether it was
/// refused.
async fn check_destination_policy(
    subscription: &SubscriptionConfig,
    host: &str,
    port: u16,
    policy: &DestinationPolicy,
    report: &mut CheckReport,
) -> bool {
    if !policy.is_active() {
        return false;
    }
    let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .ok()
        .and_then(Result::ok);
    // A host that does not resolve is reported by `check_urls`.
    let Some(addresses) = resolved else {
        return false;
    };
    let addresses: Vec<std::net::IpAddr> = addresses.map(|address| address.ip()).collect();
    match policy.refuse_all(host, &addresses) {
        Some(refused) => {
            report.problem(
                format!("subscription {:?}: url host {refused}", subscription.name),
                "",
            );
            true
        }
        None => {
            report.pass();
            false
        }
    }
}

/// Each subscription URL's host resolves (a problem when it does not) and
/// accepts a TCP connection (a warning when it does not: the receiver may
/// not be up yet). No request is sent; with a proxy configured the
/// connection is not tried.
async fn check_urls(
    subscriptions: &[SubscriptionConfig],
    policy: &DestinationPolicy,
    report: &mut CheckReport,
) {
    let mut reached: BTreeMap<(String, u16), Result<(), Unreachable>> = BTreeMap::new();
    for subscription in subscriptions {
        // Only the host is printed: the rest of a URL may hold a token.
        let Ok(url) = url::Url::parse(subscription.url.expose()) else {
            report.problem(
                format!("subscription {:?}: url is not a URL", subscription.name),
                "correct `url`",
            );
            continue;
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            report.problem(
                format!("subscription {:?}: url has no host", subscription.name),
                "correct `url`",
            );
            continue;
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        warn_about_exposure(subscription, &url, &host, report);
        warn_about_metadata_address(subscription, &host, port, report).await;
        if check_destination_policy(subscription, &host, port, policy, report).await {
            continue;
        }
        let key = (host.clone(), port);
        let outcome = match reached.get(&key) {
            Some(outcome) => outcome.clone(),
            None => {
                let outcome = reach(&host, port).await;
                reached.insert(key, outcome.clone());
                outcome
            }
        };
        match outcome {
            Ok(()) => report.pass(),
            Err(Unreachable::Unresolved(why)) => report.problem(
                format!(
                    "subscription {:?}: url host {host} does not resolve ({why})",
                    subscription.name
                ),
                "correct `url`, or the DNS name it uses",
            ),
            // walhook runs and retries (then parks) while a receiver is
            // down: worth knowing, not a reason to stop.
            Err(Unreachable::Refused(why)) => report.warning(
                format!(
                    "subscription {:?}: nothing accepts connections at {host} port {port} ({why})",
                    subscription.name
                ),
                "start the receiver, or correct `url`",
            ),
            Err(Unreachable::ThroughProxy) => report.pass(),
        }
    }
}

/// Why a URL's host cannot be reached (or was not tried).
#[derive(Debug, Clone)]
enum Unreachable {
    Unresolved(String),
    Refused(String),
    /// A proxy is configured: walhook's requests go through it, so a direct
    /// connection proves nothing.
    ThroughProxy,
}

/// The variables reqwest reads a proxy from.
const PROXY_VARIABLES: [&str; 6] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// How many of a host's addresses are tried before it counts as unreachable.
const ADDRESSES_TRIED: usize = 3;

/// Resolves `host` and opens (then drops) a TCP connection to the first
/// address that takes one.
async fn reach(host: &str, port: u16) -> Result<(), Unreachable> {
    let addresses: Vec<std::net::SocketAddr> =
        match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await {
            Err(_) => {
                return Err(Unreachable::Unresolved(format!(
                    "no answer within {}s",
                    RESOLVE_TIMEOUT.as_secs()
                )));
            }
            Ok(Err(error)) => return Err(Unreachable::Unresolved(error.to_string())),
            Ok(Ok(addresses)) => addresses.collect(),
        };
    if addresses.is_empty() {
        return Err(Unreachable::Unresolved("no addresses".to_owned()));
    }
    if PROXY_VARIABLES
        .iter()
        .any(|variable| std::env::var_os(variable).is_some_and(|value| !value.is_empty()))
    {
        return Err(Unreachable::ThroughProxy);
    }
    let mut why = String::new();
    for address in addresses.into_iter().take(ADDRESSES_TRIED) {
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(error)) => why = error.to_string(),
            Err(_) => why = format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
        }
    }
    Err(Unreachable::Refused(why))
}

/// The server's words for a failed query, without the client's wrapping.
fn server_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => error.to_string(),
    }
}

/// `"a"` or `"a", "b"`.
fn names(subscriptions: &[String]) -> String {
    subscriptions
        .iter()
        .map(|name| format!("{name:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_wal_retention_is_warned_about() {
        assert!(wal_retention_warning("-1").is_some_and(|text| text.contains("disk")));
        assert!(wal_retention_warning("50GB").is_none());
        assert!(wal_retention_warning("10240MB").is_none());
    }

    #[test]
    fn a_remote_server_below_verify_full_is_warned_about() {
        let warning = |url: &str| {
            server_verification_warning(&crate::pgconn::ConnectParams::from_url(url).unwrap())
        };
        let remote = warning("postgres://u@db.example.com/app?sslmode=require").unwrap();
        assert!(remote.contains("sslmode=require"), "{remote}");
        assert!(remote.contains("db.example.com:5432"), "{remote}");
        assert!(warning("postgres://u@10.0.0.5/app").is_some(), "prefer");
        assert!(
            warning("postgres://u@db.example.com/app?sslmode=verify-ca&sslrootcert=ca.pem")
                .is_some_and(|text| text.contains("names this host"))
        );
        assert!(warning("postgres://u@db.example.com/app?sslmode=verify-full").is_none());
        assert!(warning("postgres://u@127.0.0.1/app?sslmode=disable").is_none());
        assert!(warning("postgres://u@localhost/app").is_none());
        assert!(warning("postgres://u@[::1]/app").is_none());
    }

    #[test]
    fn exit_code_follows_problems_not_warnings() {
        let mut report = CheckReport::default();
        report.warning("w", "f");
        assert_eq!(report.exit_code(), 0);
        assert!(report.summary().contains("ready to run"));
        report.problem("p", "f");
        assert_eq!(report.exit_code(), 1);
        assert!(report.summary().contains("1 problem to fix, 1 warning"));
    }

    #[test]
    fn a_finding_shows_its_fix() {
        let finding = Finding {
            what: "x is wrong".into(),
            fix: "do y".into(),
        };
        assert_eq!(finding.to_string(), "x is wrong — fix: do y");
    }
}
