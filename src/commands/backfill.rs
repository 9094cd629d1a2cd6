//! `walhook backfill`: an operator asks for a table's existing rows to be
//! sent as `READ` events (docs/backfills.md), lists the requests, cancels
//! one, and follows one to its end.
//!
//! The command checks everything it can before it records anything: the
//! subscription is in the config, each table is one it selects and has a
//! primary key (or a replica identity index) to read in order, and a
//! `--where` condition parses against each table (in a read-only
//! transaction, rolled back). Only then does it write one row per table to
//! `walhook.backfills`, in one transaction, with the planner's estimate of
//! the rows.
//!
//! It never reads the user's rows and never sends an event: the running
//! daemon's backfill worker does. Following is polling that table (and
//! whether a walhook streams from the slot); stopping the command leaves
//! the request in place.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio_postgres::types::{FromSql, Type};

use crate::commands::CommandError;
use crate::config::{Config, SubscriptionConfig, TableName};
use crate::pgconn::{ConnectParams, connect_sql};
use crate::store::StatementError;
use crate::store::backfills::{self, Backfill, BackfillState};
use crate::tables::CatalogTable;

/// Rows per chunk when `--chunk-rows` is not given.
pub const DEFAULT_CHUNK_ROWS: i32 = 5000;
/// The largest `--chunk-rows`: a chunk is read in one statement and held in
/// memory until its watermarks are through the stream.
pub const MAX_CHUNK_ROWS: i32 = 100_000;

/// How often following reads the requests' progress.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often following prints a progress line when stdout is not a terminal
/// (a log, a CI job): often enough to show life, rarely enough to read.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// What `walhook backfill SUBSCRIPTION …` asks for.
#[derive(Debug, Clone)]
pub struct Request {
    pub subscription: String,
    /// `--table`: only these (each must be one the subscription selects);
    /// empty means every table it selects.
    pub tables: Vec<String>,
    /// `--where`: an SQL condition on the table's columns.
    pub condition: Option<String>,
    pub chunk_rows: i32,
    /// Print the ids and return instead of following.
    pub detach: bool,
}

/// One table about to be requested.
struct Planned {
    /// Quoted for SQL, as recorded.
    quoted: String,
    estimated_rows: Option<i64>,
}

/// `walhook backfill SUBSCRIPTION`: records the request, then follows it
/// (unless `detach`).
pub async fn request(config_path: &Path, request: Request) -> Result<(), CommandError> {
    let config = Config::load(config_path)?;
    let subscription = find_subscription(&config, config_path, &request.subscription)?;
    if !(1..=MAX_CHUNK_ROWS).contains(&request.chunk_rows) {
        return Err(CommandError::Usage(format!(
            "--chunk-rows {}: must be between 1 and {MAX_CHUNK_ROWS}",
            request.chunk_rows
        )));
    }
    if let Some(condition) = &request.condition {
        crate::backfill::check_condition(condition).map_err(|why| {
            CommandError::Usage(format!(
                "--where {condition:?}: {why}; nothing was recorded"
            ))
        })?;
    }
    let client = connect(&config).await?;
    require_table(&client).await?;
    let tables = chosen_tables(&client, subscription, &request.tables).await?;
    refuse_tables_without_key(&client, &tables).await?;
    let mut planned = Vec::with_capacity(tables.len());
    for table in &tables {
        let quoted = table.name.quoted();
        let estimated_rows = estimate(&client, &quoted, request.condition.as_deref())
            .await
            .map_err(|error| {
                if request.condition.is_some() {
                    CommandError::Usage(format!(
                        "--where {:?} does not work on {}: {}; nothing was recorded",
                        request.condition.as_deref().unwrap_or_default(),
                        table.name,
                        server_message(&error)
                    ))
                } else {
                    CommandError::Failed(format!(
                        "estimating the rows of {}: {}",
                        table.name,
                        server_message(&error)
                    ))
                }
            })?;
        planned.push(Planned {
            quoted,
            estimated_rows,
        });
    }
    let recorded = record(&client, &request, &planned).await?;
    for backfill in &recorded {
        println!(
            "backfill {}: {} of subscription {} requested ({} rows estimated, chunks of {})",
            backfill.id,
            backfill.table,
            backfill.subscription,
            backfill
                .estimated_rows
                .map_or_else(|| "?".to_owned(), format_count),
            backfill.chunk_rows,
        );
    }
    let ids: Vec<i64> = recorded.iter().map(|backfill| backfill.id).collect();
    if request.detach {
        println!(
            "a running walhook sends them; follow with `walhook backfill --list`, stop with \
             `walhook backfill --cancel ID`"
        );
        return Ok(());
    }
    follow(&client, &config.source.slot, &ids).await
}

/// `walhook backfill --list [--json]`: every backfill, oldest first.
pub async fn list(config_path: &Path, json: bool) -> Result<(), CommandError> {
    let config = Config::load(config_path)?;
    let client = connect(&config).await?;
    require_table(&client).await?;
    let all = backfills::list(&client, false).await.map_err(explain)?;
    if json {
        let text = serde_json::to_string_pretty(&all)
            .map_err(|error| CommandError::Failed(format!("backfill --list: {error}")))?;
        println!("{text}");
    } else {
        print!("{}", render_table(&all));
    }
    Ok(())
}

/// `walhook backfill --cancel ID`: ends an active backfill; exit 1 when
/// there is no active backfill with that id.
pub async fn cancel(config_path: &Path, id: i64) -> Result<(), CommandError> {
    let config = Config::load(config_path)?;
    let client = connect(&config).await?;
    require_table(&client).await?;
    if backfills::cancel(&client, id).await.map_err(explain)? {
        println!(
            "backfill {id}: cancelled. A running walhook stops it after the chunk in flight; \
             rows already sent stay sent."
        );
        return Ok(());
    }
    let why = match backfills::get(&client, id).await.map_err(explain)? {
        Some(backfill) => format!("it is {} already", backfill.state.as_str()),
        None => "there is none with that id".to_owned(),
    };
    Err(CommandError::Failed(format!(
        "backfill {id} is not active ({why}); `walhook backfill --list` shows them all"
    )))
}

/// The subscription named on the command line, or a usage error naming
/// the config's subscriptions.
pub(crate) fn find_subscription<'a>(
    config: &'a Config,
    config_path: &Path,
    name: &str,
) -> Result<&'a SubscriptionConfig, CommandError> {
    config
        .subscriptions
        .iter()
        .find(|candidate| candidate.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = config
                .subscriptions
                .iter()
                .map(|candidate| candidate.name.as_str())
                .collect();
            CommandError::Usage(format!(
                "no subscription named {name:?} in {}; it has: {}",
                config_path.display(),
                names.join(", ")
            ))
        })
}

async fn connect(config: &Config) -> Result<tokio_postgres::Client, CommandError> {
    let params = ConnectParams::from_source(&config.source)?;
    Ok(connect_sql(&params).await?)
}

/// Fails unless `walhook.backfills` is there for this role.
async fn require_table(client: &tokio_postgres::Client) -> Result<(), CommandError> {
    if backfills::usable(client).await.map_err(explain)? {
        return Ok(());
    }
    Err(CommandError::Failed(
        "walhook.backfills is missing or this role may not use it; run `walhook setup` (or the \
         files of sql/ as an administrator) first"
            .to_owned(),
    ))
}

/// Says what a failed statement on walhook's tables means for the operator.
fn explain(error: StatementError) -> CommandError {
    super::explain_statement(
        error,
        "walhook.backfills is missing; run `walhook setup` (or the files of sql/ as an \
             administrator) first",
    )
}

/// The server's own message for a failed statement, without the driver's
/// wrapping ("db error: …").
fn server_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => error.to_string(),
    }
}

/// The tables to backfill: those the subscription selects that exist, or
/// of those, the ones `--table` names.
async fn chosen_tables(
    client: &tokio_postgres::Client,
    subscription: &SubscriptionConfig,
    wanted: &[String],
) -> Result<Vec<CatalogTable>, CommandError> {
    let resolution = crate::tables::resolve(client, &subscription.tables)
        .await
        .map_err(|error| {
            CommandError::Failed(format!(
                "resolving the tables of subscription {:?} in the catalog: {}",
                subscription.name,
                server_message(&error)
            ))
        })?;
    let selected: Vec<CatalogTable> = resolution
        .selected_by(&subscription.tables)
        .cloned()
        .collect();
    let names = || {
        let names: Vec<String> = selected
            .iter()
            .map(|table| table.name.to_string())
            .collect();
        if names.is_empty() {
            "none that exists".to_owned()
        } else {
            names.join(", ")
        }
    };
    if wanted.is_empty() {
        if selected.is_empty() {
            return Err(CommandError::Usage(format!(
                "subscription {:?} selects no table that exists (its tables: {}); nothing to \
                 backfill",
                subscription.name,
                configured_tables(subscription)
            )));
        }
        return Ok(selected);
    }
    let mut chosen: Vec<CatalogTable> = Vec::new();
    for text in wanted {
        let name = TableName::parse(text)
            .map_err(|why| CommandError::Usage(format!("--table {text:?} {why}")))?;
        let Some(table) = selected.iter().find(|table| table.name == name) else {
            return Err(CommandError::Usage(format!(
                "--table {text}: subscription {:?} does not select {name}; it selects: {}",
                subscription.name,
                names()
            )));
        };
        if !chosen.iter().any(|already| already.name == name) {
            chosen.push(table.clone());
        }
    }
    Ok(chosen)
}

/// The tables a subscription's config names, for a message.
pub(crate) fn configured_tables(subscription: &SubscriptionConfig) -> String {
    subscription
        .tables
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses, naming each and the fix, tables without a primary key or a
/// replica identity index: a backfill reads in key order and resumes after
/// the last key it reached, and the stream identifies a changed row by that
/// key.
async fn refuse_tables_without_key(
    client: &tokio_postgres::Client,
    tables: &[CatalogTable],
) -> Result<(), CommandError> {
    const QUERY: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
         WHERE i.indrelid = $1 AND i.indisvalid AND (i.indisprimary OR i.indisreplident))";
    let mut keyless: Vec<&TableName> = Vec::new();
    for table in tables {
        let has_key: bool = client
            .query_one(QUERY, &[&table.oid])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|error| {
                CommandError::Failed(format!(
                    "reading the keys of {}: {}",
                    table.name,
                    server_message(&error)
                ))
            })?;
        if !has_key {
            keyless.push(&table.name);
        }
    }
    let Some(first) = keyless.first() else {
        return Ok(());
    };
    let names: Vec<String> = keyless.iter().map(ToString::to_string).collect();
    Err(CommandError::Usage(format!(
        "{} {} no primary key (nor a replica identity index): a backfill reads a table in key \
         order and needs one. Add one, e.g. `ALTER TABLE {} ADD PRIMARY KEY (id);` (or `ALTER \
         TABLE … REPLICA IDENTITY USING INDEX <a unique index on NOT NULL columns>`), then run \
         this again; nothing was recorded",
        names.join(", "),
        if keyless.len() == 1 { "has" } else { "have" },
        first.quoted(),
    )))
}

/// The text of a `json` value (EXPLAIN's output): its binary form is the
/// text itself.
struct JsonText(String);

impl<'a> FromSql<'a> for JsonText {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> Result<JsonText, Box<dyn std::error::Error + Sync + Send>> {
        Ok(JsonText(std::str::from_utf8(raw)?.to_owned()))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON
    }
}

/// The planner's estimate of the rows a backfill of `table` sends. With a
/// condition this also proves that it parses against the table: `EXPLAIN`
/// plans without running, over the extended protocol (so the text is one
/// statement), in a read-only transaction that is rolled back. The
/// condition goes on lines of its own so that a `--` comment in it ends
/// with its line. Without a condition, `pg_class.reltuples` of the table
/// (summed over its partitions) when `ANALYZE` has set it, else the plan's
/// estimate. A table with no pages is estimated at 0 either way (the
/// planner guesses ten pages' worth for a table it knows nothing of).
async fn estimate(
    client: &tokio_postgres::Client,
    table: &str,
    condition: Option<&str>,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let statement = match condition {
        Some(condition) => {
            format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM {table} WHERE (\n{condition}\n)")
        }
        None => format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM {table}"),
    };
    client.batch_execute("BEGIN READ ONLY").await?;
    let planned = client.query_one(statement.as_str(), &[]).await;
    let rolled_back = client.batch_execute("ROLLBACK").await;
    let plan: JsonText = planned?.try_get(0)?;
    rolled_back?;
    let size = table_size(client, table).await?;
    Ok(match (size, condition) {
        (TableSize::Empty, _) => Some(0),
        (TableSize::Analyzed(rows), None) => Some(rows),
        _ => plan_rows(&plan.0),
    })
}

/// What the catalog knows of a table's size.
enum TableSize {
    /// It (each of its partitions) has no pages.
    Empty,
    /// `reltuples` summed over its leaves, each analyzed.
    Analyzed(i64),
    /// A leaf was never analyzed (`reltuples` is -1).
    Unknown,
}

/// `table`'s size over its leaves (itself, or its partitions).
async fn table_size(
    client: &tokio_postgres::Client,
    table: &str,
) -> Result<TableSize, tokio_postgres::Error> {
    const QUERY: &str = "SELECT coalesce(sum(pg_catalog.pg_relation_size(c.oid)), 0)::int8, \
                coalesce(bool_and(c.reltuples >= 0), true), \
                coalesce(sum(greatest(c.reltuples, 0)), 0)::int8 \
         FROM (SELECT t.relid FROM pg_catalog.pg_partition_tree($1::text::regclass) t \
               WHERE t.isleaf UNION SELECT $1::text::regclass) leaf \
         JOIN pg_catalog.pg_class c ON c.oid = leaf.relid AND c.relkind = 'r'";
    let row = client.query_one(QUERY, &[&table]).await?;
    let bytes: i64 = row.try_get(0)?;
    let analyzed: bool = row.try_get(1)?;
    let rows: i64 = row.try_get(2)?;
    Ok(if bytes == 0 {
        TableSize::Empty
    } else if analyzed {
        TableSize::Analyzed(rows)
    } else {
        TableSize::Unknown
    })
}

/// The top plan's "Plan Rows" of `EXPLAIN (FORMAT JSON)` output.
fn plan_rows(plan: &str) -> Option<i64> {
    let value: serde_json::Value = serde_json::from_str(plan).ok()?;
    let rows = value.get(0)?.get("Plan")?.get("Plan Rows")?.as_f64()?;
    Some(rows.max(0.0).round() as i64)
}

/// Writes one row per table in one transaction: all or none.
async fn record(
    client: &tokio_postgres::Client,
    request: &Request,
    planned: &[Planned],
) -> Result<Vec<Backfill>, CommandError> {
    let begun = client.batch_execute("BEGIN").await.map_err(|error| {
        CommandError::Failed(format!(
            "recording the backfill: {}",
            server_message(&error)
        ))
    });
    begun?;
    let mut ids = Vec::with_capacity(planned.len());
    for table in planned {
        match backfills::request(
            client,
            &request.subscription,
            &table.quoted,
            request.condition.as_deref(),
            request.chunk_rows,
            table.estimated_rows,
        )
        .await
        {
            Ok(id) => ids.push(id),
            Err(error) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(explain(error));
            }
        }
    }
    client.batch_execute("COMMIT").await.map_err(|error| {
        CommandError::Failed(format!(
            "recording the backfill (nothing was recorded): {}",
            server_message(&error)
        ))
    })?;
    let mut recorded = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(backfill) = backfills::get(client, id).await.map_err(explain)? {
            recorded.push(backfill);
        }
    }
    Ok(recorded)
}

/// Follows the backfills `ids` until each is done (Ok), one failed or was
/// cancelled (an error saying which and why), or Ctrl-C / SIGTERM (an
/// error saying they go on).
async fn follow(
    client: &tokio_postgres::Client,
    slot: &str,
    ids: &[i64],
) -> Result<(), CommandError> {
    let terminal = std::io::stdout().is_terminal();
    let mut display = Display::new(terminal);
    let mut streaming: Option<bool> = None;
    let stop = super::stop_requested();
    tokio::pin!(stop);
    loop {
        let mut current = Vec::with_capacity(ids.len());
        for id in ids {
            match backfills::get(client, *id).await.map_err(explain)? {
                Some(backfill) => current.push(backfill),
                None => {
                    display.finish_line();
                    return Err(CommandError::Failed(format!(
                        "backfill {id} is gone from walhook.backfills (deleted by hand?)"
                    )));
                }
            }
        }
        if let Some(ended) = current.iter().find(|backfill| {
            matches!(
                backfill.state,
                BackfillState::Failed | BackfillState::Cancelled
            )
        }) {
            display.finish_line();
            let others: Vec<String> = current
                .iter()
                .filter(|backfill| backfill.id != ended.id && backfill.state.is_active())
                .map(|backfill| backfill.id.to_string())
                .collect();
            return Err(CommandError::Failed(format!(
                "backfill {} of {} was {}{}{}",
                ended.id,
                ended.table,
                ended.state.as_str(),
                ended
                    .error
                    .as_deref()
                    .map(|error| format!(": {error}"))
                    .unwrap_or_default(),
                if others.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (backfill {} still active: `walhook backfill --cancel ID` stops it)",
                        others.join(", ")
                    )
                }
            )));
        }
        let progress = Progress::of(&current);
        if current
            .iter()
            .all(|backfill| backfill.state == BackfillState::Done)
        {
            display.finish_line();
            println!("{}", progress.done_line(ids));
            return Ok(());
        }
        let active = crate::store::slots::find(client, slot)
            .await
            .map_err(explain)?
            .is_some_and(|found| found.active);
        if streaming != Some(active) {
            if !active {
                display.message(&format!(
                    "no walhook is streaming from slot {slot}: the backfill starts when `walhook \
                     run` does (waiting; Ctrl-C stops following and leaves the request in place)"
                ));
            } else if streaming.is_some() {
                display.message(&format!("a walhook is streaming from slot {slot} again"));
            }
            streaming = Some(active);
        }
        display.progress(&progress.line());
        tokio::select! {
            // PRIORITY 1: the operator stops following; the request stays.
            biased;
            _ = &mut stop => {
                display.finish_line();
                let list: Vec<String> = ids.iter().map(ToString::to_string).collect();
                return Err(CommandError::Failed(format!(
                    "stopped following; backfill {} is not done and goes on without this \
                     command (`walhook backfill --list` shows it, `walhook backfill --cancel ID` \
                     stops it)",
                    list.join(", ")
                )));
            }
            // PRIORITY 2: the next look at the table, bounded.
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

/// Where the followed backfills are, summed.
#[derive(Debug, Clone, PartialEq)]
struct Progress {
    sent: i64,
    /// `None` when a table's estimate is unknown.
    estimated: Option<i64>,
    /// Rows per second over the time the backfills ran.
    rate: Option<f64>,
    /// The state of the first not-done backfill, and its table.
    current: Option<(BackfillState, String)>,
}

impl Progress {
    fn of(backfills: &[Backfill]) -> Progress {
        let sent = backfills.iter().map(|backfill| backfill.rows_sent).sum();
        let estimated = backfills
            .iter()
            .map(|backfill| backfill.estimated_rows)
            .sum::<Option<i64>>();
        // The worker takes tables one after another, so their run times add
        // up to the time spent sending.
        let seconds: f64 = backfills
            .iter()
            .filter_map(|backfill| backfill.elapsed_seconds)
            .sum();
        let rate = (seconds >= 1.0).then(|| sent as f64 / seconds);
        let current = backfills
            .iter()
            .find(|backfill| backfill.state != BackfillState::Done)
            .map(|backfill| (backfill.state, backfill.table.clone()));
        Progress {
            sent,
            estimated,
            rate,
            current,
        }
    }

    /// `12,000 / 50,000 rows (24%), 1,500 rows/s, ETA 26s — running "public"."t"`.
    fn line(&self) -> String {
        let mut line = format!("{} / ", format_count(self.sent));
        match self.estimated {
            Some(estimated) => {
                line.push_str(&format!("{} rows", format_count(estimated)));
                if estimated > 0 {
                    let percent = (self.sent as f64 / estimated as f64 * 100.0).min(100.0);
                    line.push_str(&format!(" ({percent:.0}%)"));
                }
            }
            None => line.push_str("? rows"),
        }
        match self.rate {
            Some(rate) => {
                line.push_str(&format!(", {} rows/s", format_count(rate.round() as i64)));
                if let Some(estimated) = self.estimated
                    && rate > 0.0
                {
                    let left = (estimated - self.sent).max(0) as f64 / rate;
                    line.push_str(&format!(", ETA {}", format_duration(left)));
                }
            }
            None => line.push_str(", rate -"),
        }
        if let Some((state, table)) = &self.current {
            line.push_str(&format!(" — {} {table}", state.as_str()));
        }
        line
    }

    fn done_line(&self, ids: &[i64]) -> String {
        let list: Vec<String> = ids.iter().map(ToString::to_string).collect();
        format!(
            "backfill {}: done, {} rows sent{}",
            list.join(", "),
            format_count(self.sent),
            self.rate
                .map(|rate| format!(" ({} rows/s)", format_count(rate.round() as i64)))
                .unwrap_or_default()
        )
    }
}

/// The progress display: one line redrawn in place on a terminal, a line
/// every [`LOG_INTERVAL`] otherwise.
struct Display {
    terminal: bool,
    /// A progress line is on screen without its newline.
    open: bool,
    last_logged: Option<Instant>,
}

impl Display {
    fn new(terminal: bool) -> Display {
        Display {
            terminal,
            open: false,
            last_logged: None,
        }
    }

    fn progress(&mut self, line: &str) {
        let mut out = std::io::stdout().lock();
        if self.terminal {
            // Back to the line's start and clear it, so a shorter line
            // leaves nothing of the longer one behind.
            let _ = write!(out, "\r\x1b[K{line}");
            self.open = true;
        } else if self
            .last_logged
            .is_none_or(|logged| logged.elapsed() >= LOG_INTERVAL)
        {
            let _ = writeln!(out, "{line}");
            self.last_logged = Some(Instant::now());
        }
        let _ = out.flush();
    }

    /// A message on a line of its own.
    fn message(&mut self, text: &str) {
        self.finish_line();
        println!("{text}");
    }

    /// Ends a progress line left open on a terminal.
    fn finish_line(&mut self) {
        if self.open {
            println!();
            self.open = false;
        }
    }
}

/// `1234567` → `1,234,567`.
fn format_count(count: i64) -> String {
    let digits = count.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if count < 0 {
        out.push('-');
    }
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Seconds as an ETA: 45s, 12m 5s, 3h 20m.
fn format_duration(seconds: f64) -> String {
    let total = seconds.round().max(0.0) as u64;
    match total {
        0..60 => format!("{total}s"),
        60..3600 => format!("{}m {}s", total / 60, total % 60),
        _ => format!("{}h {}m", total / 3600, total % 3600 / 60),
    }
}

/// `--list`'s table.
fn render_table(all: &[Backfill]) -> String {
    if all.is_empty() {
        return "no backfills\n".to_owned();
    }
    let header = [
        "ID",
        "SUBSCRIPTION",
        "TABLE",
        "STATE",
        "ROWS SENT/ESTIMATED",
        "STARTED",
        "FINISHED",
        "ERROR",
    ];
    let rows: Vec<[String; 8]> = all
        .iter()
        .map(|backfill| {
            [
                backfill.id.to_string(),
                backfill.subscription.clone(),
                backfill.table.clone(),
                backfill.state.as_str().to_owned(),
                format!(
                    "{}/{}",
                    format_count(backfill.rows_sent),
                    backfill
                        .estimated_rows
                        .map_or_else(|| "?".to_owned(), format_count)
                ),
                backfill.started_at.clone().unwrap_or_else(|| "-".into()),
                backfill.finished_at.clone().unwrap_or_else(|| "-".into()),
                backfill
                    .error
                    .as_deref()
                    .map(|error| error.replace(['\n', '\r'], " "))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .into_iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backfill(id: i64, state: BackfillState, sent: i64, estimated: Option<i64>) -> Backfill {
        Backfill {
            id,
            subscription: "crm".into(),
            table: format!("\"public\".\"t{id}\""),
            condition: None,
            chunk_rows: 5000,
            state,
            rows_sent: sent,
            estimated_rows: estimated,
            last_key: None,
            error: None,
            requested_at: "2025-01-01T00:00:00Z".into(),
            started_at: None,
            finished_at: None,
            elapsed_seconds: None,
        }
    }

    #[test]
    fn counts_and_durations_read_like_an_operator_expects() {
        assert_eq!(format_count(0), "0");
        assert_eq!(format_count(999), "999");
        assert_eq!(format_count(1000), "1,000");
        assert_eq!(format_count(1_234_567), "1,234,567");
        assert_eq!(format_count(-4200), "-4,200");
        assert_eq!(format_duration(42.4), "42s");
        assert_eq!(format_duration(725.0), "12m 5s");
        assert_eq!(format_duration(12_000.0), "3h 20m");
    }

    #[test]
    fn progress_sums_tables_and_computes_rate_and_eta() {
        let mut first = backfill(1, BackfillState::Done, 6000, Some(6000));
        first.elapsed_seconds = Some(3.0);
        let mut second = backfill(2, BackfillState::Running, 2000, Some(4000));
        second.elapsed_seconds = Some(1.0);
        let progress = Progress::of(&[first, second]);
        assert_eq!(progress.sent, 8000);
        assert_eq!(progress.estimated, Some(10_000));
        assert_eq!(progress.rate, Some(2000.0));
        assert_eq!(
            progress.line(),
            "8,000 / 10,000 rows (80%), 2,000 rows/s, ETA 1s — running \"public\".\"t2\""
        );
    }

    #[test]
    fn progress_without_an_estimate_or_a_start_says_so() {
        let progress = Progress::of(&[
            backfill(1, BackfillState::Pending, 0, None),
            backfill(2, BackfillState::Pending, 0, Some(10)),
        ]);
        assert_eq!(progress.estimated, None);
        assert_eq!(
            progress.line(),
            "0 / ? rows, rate - — pending \"public\".\"t1\""
        );
    }

    #[test]
    fn plan_rows_reads_the_top_plan() {
        let plan = r#"[{"Plan": {"Node Type": "Seq Scan", "Plan Rows": 1234, "Plans": []}}]"#;
        assert_eq!(plan_rows(plan), Some(1234));
        assert_eq!(plan_rows("[]"), None);
        assert_eq!(plan_rows("not json"), None);
    }

    #[test]
    fn the_list_table_has_a_row_per_backfill() {
        let mut failed = backfill(7, BackfillState::Failed, 10, Some(20));
        failed.error = Some("the table\nwas dropped".into());
        let text = render_table(&[backfill(6, BackfillState::Pending, 0, None), failed]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID"));
        assert!(
            lines[1].contains("pending") && lines[1].contains("0/?"),
            "{text}"
        );
        assert!(lines[2].contains("10/20") && lines[2].contains("the table was dropped"));
        assert_eq!(render_table(&[]), "no backfills\n");
    }
}
