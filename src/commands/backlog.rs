//! `walhook pause`, `walhook resume` and `walhook backlog purge`: an
//! operator's hands on a subscription's backlog.
//!
//! Pause and resume write the flag in `walhook.subscription_state`; a
//! running walhook picks it up within a second (`control`), and one started
//! later reads it at start. A paused subscription's events wait in its
//! backlog, in commit order, and drain after `resume`. Purge deletes waiting
//! events without sending them (all of a subscription's, or those committed
//! before `--older-than`): for an endpoint that will never want them, or a
//! subscription removed from the config that left events behind.
//!
//! It talks to the database only; it never signals the daemon.

use std::path::Path;
use std::time::Duration;

use crate::commands::CommandError;
use crate::config::Config;
use crate::pgconn::{ConnectParams, connect_sql};
use crate::store::{StatementError, backlog, subscription_state};

/// Loads the config and checks that it names `subscription`.
fn load(config_path: &Path, subscription: &str) -> Result<Config, CommandError> {
    let config = Config::load(config_path)?;
    if !config
        .subscriptions
        .iter()
        .any(|candidate| candidate.name == subscription)
    {
        let names: Vec<&str> = config
            .subscriptions
            .iter()
            .map(|candidate| candidate.name.as_str())
            .collect();
        return Err(CommandError::Usage(format!(
            "no subscription named {subscription:?} in {}; it has: {}",
            config_path.display(),
            names.join(", ")
        )));
    }
    Ok(config)
}

async fn connect(config: &Config) -> Result<tokio_postgres::Client, CommandError> {
    let params = ConnectParams::from_source(&config.source)?;
    Ok(connect_sql(&params).await?)
}

/// Says what a failed statement means for the operator.
fn explain(error: StatementError) -> CommandError {
    super::explain_statement(
        error,
        "the walhook schema has no backlog tables yet; run `walhook setup` (or the files of \
             sql/ as an administrator) first",
    )
}

/// `walhook pause SUBSCRIPTION` / `walhook resume SUBSCRIPTION`.
pub async fn set_paused(
    config_path: &Path,
    subscription: &str,
    paused: bool,
) -> Result<(), CommandError> {
    let config = load(config_path, subscription)?;
    let client = connect(&config).await?;
    subscription_state::set_paused(&client, subscription, paused)
        .await
        .map_err(explain)?;
    if paused {
        println!(
            "{subscription}: paused. A running walhook holds its new events in walhook.backlog \
             within a second; `walhook resume {subscription}` lets them flow, in order."
        );
    } else {
        println!(
            "{subscription}: resumed. A running walhook drains its backlog, in order, within a \
             second."
        );
    }
    Ok(())
}

/// `walhook backlog purge --subscription NAME [--older-than DURATION]`.
pub async fn purge(
    config_path: &Path,
    subscription: &str,
    older_than: Option<Duration>,
) -> Result<(), CommandError> {
    // A subscription removed from the config may have left events behind:
    // those can be purged too; a name that has none is a typo.
    let config = Config::load(config_path)?;
    let configured = config
        .subscriptions
        .iter()
        .any(|candidate| candidate.name == subscription);
    let client = connect(&config).await?;
    let deleted = backlog::purge(
        &client,
        subscription,
        older_than.map(|age| age.as_secs_f64()),
    )
    .await
    .map_err(explain)?;
    if deleted == 0 && !configured {
        load(config_path, subscription)?;
    }
    println!(
        "{subscription}: deleted {deleted} waiting event(s) from walhook.backlog; they will not \
         be delivered."
    );
    Ok(())
}
