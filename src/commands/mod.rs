//! The commands behind the CLI: each loads what it needs, does one thing and
//! returns a [`CommandError`], whose exit code `main` uses.

pub mod backfill;
pub mod backlog;
pub mod check;
pub mod dead_letters;
pub mod demo;
pub mod listen;
pub mod send_test;
pub mod status;

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::app::{self, DaemonError};
use crate::config::{Config, ConfigError};
use crate::pgconn::{ConnectParams, ConnectParamsError, PgConnError, connect_sql};
use crate::rules::Rules;
use crate::rules::catalog_check;
use crate::rules::catalog_check::RuleError;
use crate::setup::SetupError;

/// Why a command failed, and so its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("source.url: {0}")]
    SourceUrl(#[from] ConnectParamsError),
    #[error(transparent)]
    Connect(#[from] PgConnError),
    #[error(transparent)]
    Rules(#[from] RuleError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    DeadLetters(#[from] dead_letters::DeadLetterError),
    /// A subscription's endpoint cannot be built from its config.
    #[error(transparent)]
    Endpoint(#[from] crate::deliver::http::EndpointError),
    /// A command failed at run time (demo, bench, status, listen).
    #[error("{0}")]
    Failed(String),
    /// The command line names something the config does not have.
    #[error("{0}")]
    Usage(String),
}

impl CommandError {
    /// 2 for a problem in the configuration or the rules (fix the file; the
    /// database is untouched), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::Config(_)
            | CommandError::SourceUrl(_)
            | CommandError::Usage(_)
            | CommandError::Endpoint(_) => 2,
            CommandError::Rules(RuleError::Catalog(_)) => 1,
            CommandError::Rules(_) => 2,
            CommandError::Daemon(error) => error.exit_code(),
            CommandError::DeadLetters(error) => error.exit_code(),
            CommandError::Connect(_) | CommandError::Setup(_) | CommandError::Failed(_) => 1,
        }
    }
}

/// `walhook run`: the daemon, until SIGINT or SIGTERM; SIGHUP reloads the
/// config file.
pub async fn run(config_path: &Path) -> Result<(), CommandError> {
    // First: from here on SIGHUP no longer ends the process.
    let reloads = reload_on_hangup(config_path);
    let config = Config::load(config_path)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    Ok(app::run_with_reloads(config, shutdown, reloads).await?)
}

/// Turns each SIGHUP into a request to reload `config_path`; requests that
/// come while one waits are one request (the file is read when it is
/// handled).
fn reload_on_hangup(config_path: &Path) -> crate::reload::Reloads {
    use tokio::signal::unix::{SignalKind, signal};
    let (requests, reloads) = tokio::sync::mpsc::channel(1);
    match signal(SignalKind::hangup()) {
        Ok(mut hangups) => {
            let path = config_path.display().to_string();
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!(config = %path, "reload requested (SIGHUP)");
                    match requests.try_send(()) {
                        Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(())) => {}
                        Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => return,
                    }
                }
            });
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP: the configuration cannot be reloaded; restart walhook to change it");
        }
    }
    crate::reload::Reloads::from_file(config_path.to_owned(), reloads)
}

/// `walhook setup`: schema, publication and slot, then a one-line report.
/// A failed statement on walhook's own tables, for the operator: `missing`
/// when the table does not exist (a schema from before it), else the
/// statement's error.
pub(crate) fn explain_statement(
    error: crate::store::StatementError,
    missing: &str,
) -> CommandError {
    let undefined = error
        .source
        .code()
        .is_some_and(|code| *code == tokio_postgres::error::SqlState::UNDEFINED_TABLE);
    CommandError::Failed(if undefined {
        missing.to_owned()
    } else {
        error.to_string()
    })
}

/// `walhook sql`: the files of `sql/` as the binary carries them, so that
/// an administrator needs no copy of the repository: the schema (what
/// `setup` runs), or the least-privilege role script.
pub fn sql_text(least_privilege: bool) -> String {
    if least_privilege {
        return crate::store::schema::LEAST_PRIVILEGE_SQL.to_owned();
    }
    crate::store::schema::SQL_FILES
        .iter()
        .map(|(name, sql)| format!("-- {name}\n{sql}"))
        .collect()
}

pub async fn setup(config_path: &Path) -> Result<(), CommandError> {
    let config = Config::load(config_path)?;
    let params = ConnectParams::from_source(&config.source)?;
    let client = connect_sql(&params).await?;
    let resolution = catalog_check::check(&client, &config.subscriptions).await?;
    let rules = Rules::new(&config.subscriptions);
    catalog_check::refuse_unloggable(&resolution, &rules.events())?;
    let report = crate::setup::run(&client, &config.source, &rules, &resolution).await?;
    println!(
        "schema walhook: ready\npublication {}: {}\nslot {}: {}{}",
        config.source.publication,
        report.publication_outcome(),
        config.source.slot,
        if report.slot_created {
            "created"
        } else {
            "already exists"
        },
        report
            .slot_confirmed
            .map(|lsn| format!(" (confirmed {lsn})"))
            .unwrap_or_default(),
    );
    Ok(())
}

/// Cancels `token` on the first SIGINT or SIGTERM.
pub async fn cancel_on_signal(token: CancellationToken) {
    stop_requested().await;
    tracing::info!("shutdown requested; finishing in-flight deliveries");
    token.cancel();
}

/// Resolves on the first Ctrl-C (SIGINT) or SIGTERM.
pub(crate) async fn stop_requested() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
