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
