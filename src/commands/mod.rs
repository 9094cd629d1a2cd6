//! The commands behind the CLI: each loads what it needs, does one thing and
//! returns an [`AppError`] whose exit code `main` uses.

pub mod bench;
pub mod check;
pub mod dead_letters;
pub mod demo;
pub mod listen;
pub mod status;

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError};
use crate::config::Config;
use crate::pgconn::connect_sql;
use crate::rules::Rules;
use crate::rules::catalog_check;

/// `walhook run`: the daemon, until SIGINT or SIGTERM.
pub async fn run(config_path: &Path) -> Result<(), AppError> {
    let config = Config::load(config_path)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    app::run(config, shutdown).await
}

/// `walhook setup`: schema, publication and slot, then a one-line report.
pub async fn setup(config_path: &Path) -> Result<(), AppError> {
    let config = Config::load(config_path)?;
    let params = app::source_params(&config)?;
    let client = connect_sql(&params).await?;
    let resolution = catalog_check::check(&client, &config.subscriptions).await?;
    let rules = Rules::new(&config.subscriptions);
    catalog_check::refuse_unloggable(&resolution, &rules.events())?;
    let report = crate::setup::run(&client, &config.source, &rules, &resolution).await?;
    println!(
        "schema walhook: ready\npublication {}: {}\nslot {}: {}{}",
        config.source.publication,
        if report.publication_created {
            "created"
        } else if report.publication_changed {
            "updated to the tables the rules name"
        } else {
            "already as wanted"
        },
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
