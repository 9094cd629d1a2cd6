//! `walhook status`: slot lag (bytes and time), confirmed position, the
//! walsender serving the slot, and per subscription its mode, backlog and
//! dead letters (with a warning for a backlog past `delivery.backlog`), as a
//! table, as JSON (`--json`), or refreshed in place (`--watch`).

use std::path::Path;
use std::time::Duration;

use crate::commands::CommandError;
use crate::config::Config;
use crate::pgconn::connect_sql;

/// How often `--watch` refreshes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Prints the status once, or every two seconds with `watch`.
pub async fn run(config_path: &Path, json: bool, watch: bool) -> Result<(), CommandError> {
    let config = Config::load(config_path)?;
    let params = crate::pgconn::ConnectParams::from_source(&config.source)?;
    let client = connect_sql(&params).await?;
    let names: Vec<String> = config
        .subscriptions
        .iter()
        .map(|subscription| subscription.name.clone())
        .collect();
    // What would make every figure below misleading, said as `check` says it.
    let refuse = |error: crate::store::StatementError| {
        CommandError::Failed(format!("status: reading the catalog: {error}"))
    };
    if let Some(problem) = crate::store::slots::wal_level_problem(&client)
        .await
        .map_err(refuse)?
    {
        return Err(CommandError::Failed(problem.to_string()));
    }
    if let Some(found) = crate::store::slots::find(&client, &config.source.slot)
        .await
        .map_err(refuse)?
    {
        let current = crate::store::slots::current_database(&client)
            .await
            .map_err(refuse)?;
        if let Some(problem) =
            crate::store::slots::in_other_database(&config.source.slot, &found, &current)
        {
            return Err(CommandError::Failed(problem.to_string()));
        }
    }
    let mut peek = crate::status::Peek::through(&config.source.publication);
    loop {
        let mut report =
            crate::status::collect(&client, &config.source.slot, &names, Some(&mut peek))
                .await
                .map_err(|error| {
                    CommandError::Failed(format!("status: reading the catalog: {error}"))
                })?;
        report.warn_about_backlogs(&config.delivery.backlog);
        if json {
            let text = serde_json::to_string_pretty(&report)
                .map_err(|error| CommandError::Failed(format!("status: {error}")))?;
            println!("{text}");
        } else {
            if watch {
                // Clear the screen and go home, so the table refreshes in place.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", report.render());
        }
        if !watch {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
    }
}
