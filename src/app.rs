//! The daemon: builds the stages, owns every task, reconnects, and stops in
//! order.
//!
//! Start-up checks everything it can before the slot is touched (the config
//! is already valid; here the database connection, setup, and the rules
//! against the catalog). Then it streams until shutdown, reconnecting with
//! backoff whenever the replication connection is lost — a slot held by
//! another walhook makes this one a standby that takes over when the slot is
//! free. On shutdown it stops reading, lets delivery finish within the grace
//! period, sends the final confirmed LSN and returns.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{BackoffConfig, Config, ConfigError};
use crate::deliver::Delivery;
use crate::deliver::dead_letters::DeadLetters;
use crate::lsn::Lsn;
use crate::pgconn::{ConnectParams, PgConnError, connect_sql};
use crate::pipeline::{Pipeline, PipelineError};
use crate::rules::Rules;
use crate::rules::catalog_check::{self, RuleError};
use crate::setup::{self, SetupError};
use crate::source::{ReplicationStream, SourceError};

/// pgoutput protocol version walhook speaks (no streaming of in-progress
/// transactions: large ones arrive at commit, spilled by the server).
const PROTO_VERSION: u32 = 1;

/// How long to wait between reconnection attempts.
const RECONNECT_BACKOFF: BackoffConfig = BackoffConfig {
    initial: Duration::from_millis(200),
    max: Duration::from_secs(5),
};

/// How often a standby checks whether the slot has become free.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("source.url: {0}")]
    SourceUrl(String),
    #[error(transparent)]
    Connect(#[from] PgConnError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Rules(#[from] RuleError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot start delivery: {0}")]
    Delivery(String),
}

impl AppError {
    /// 2 for problems in the configuration or the rules (fix the file), 1 for
    /// everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Config(_) | AppError::SourceUrl(_) | AppError::Delivery(_) => 2,
            AppError::Rules(RuleError::Catalog(_)) => 1,
            AppError::Rules(_) => 2,
            _ => 1,
        }
    }
}

/// The connection parameters of `[source]`.
pub fn source_params(config: &Config) -> Result<ConnectParams, AppError> {
    let url = config.source.url.expose();
    let mut params =
        ConnectParams::from_url(url).map_err(|error| AppError::SourceUrl(error.to_string()))?;
    if !url.contains("connect_timeout=") {
        params.connect_timeout = config.source.connect_timeout;
    }
    Ok(params)
}

/// Runs the daemon until `shutdown` is cancelled or a fatal error.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let params = source_params(&config)?;
    let client = connect_sql(&params).await?;
    catalog_check::check(&client, &config.subscriptions).await?;
    let rules = Arc::new(Rules::new(&config.subscriptions));
    if config.source.auto_setup {
        let report = setup::run(
            &client,
            &config.source.publication,
            &config.source.slot,
            &rules.tables(),
        )
        .await?;
        if report.slot_created {
            tracing::info!(slot = %config.source.slot, "replication slot created");
        }
        if report.publication_created || report.publication_changed {
            tracing::info!(publication = %config.source.publication, tables = rules.tables().len(), "publication set to the tables the rules name");
        }
    }
    drop(client);

    let mut failures = 0u32;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let stream = match ReplicationStream::start(
            &params,
            &config.source.slot,
            &config.source.publication,
            Lsn::ZERO,
            PROTO_VERSION,
        )
        .await
        {
            Ok(stream) => stream,
            Err(error) if error.is_slot_in_use() => {
                if failures == 0 {
                    tracing::info!(slot = %config.source.slot, reason = %error, "slot is active in another process; standing by");
                }
                failures = 1;
                if !pause(STANDBY_POLL, &shutdown).await {
                    return Ok(());
                }
                continue;
            }
            Err(error) if error.is_transient() => {
                failures += 1;
                tracing::warn!(%error, attempt = failures, "cannot open the replication connection; retrying");
                if !pause(reconnect_wait(failures), &shutdown).await {
                    return Ok(());
                }
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let catalog = match connect_sql(&params).await {
            Ok(client) => client,
            Err(error) if error.is_transient() => {
                failures += 1;
                tracing::warn!(%error, "cannot open the catalog connection; retrying");
                if !pause(reconnect_wait(failures), &shutdown).await {
                    return Ok(());
                }
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let start = slot_confirmed_lsn(&catalog, &config.source.slot)
            .await
            .unwrap_or(Lsn::ZERO);
        tracing::info!(slot = %config.source.slot, from = %start, server = %params.redacted(), "streaming changes");
        failures = 0;

        let mut lanes = JoinSet::new();
        let abandon = CancellationToken::new();
        let mut delivery = Delivery::start(
            &config.delivery,
            &config.subscriptions,
            DeadLetters::new(params.clone()),
            abandon.clone(),
            &mut lanes,
        )
        .map_err(|error| AppError::Delivery(error.to_string()))?;
        let mut pipeline = Pipeline::new(
            stream,
            catalog,
            Arc::clone(&rules),
            start,
            config.source.status_interval,
        );
        let outcome = pipeline.run(&mut delivery, &shutdown).await;
        // Closing the lanes lets them finish what they hold.
        drop(delivery);
        match outcome {
            Ok(()) => {
                let grace = config.delivery.shutdown_grace;
                if tokio::time::timeout(grace, drain(&mut lanes))
                    .await
                    .is_err()
                {
                    tracing::warn!(grace = ?grace, "in-flight deliveries did not finish within the grace period; abandoning them (they will be sent again)");
                    abandon.cancel();
                    drain(&mut lanes).await;
                }
                match pipeline.finish().await {
                    Ok(confirmed) => {
                        tracing::info!(%confirmed, "stopped; final position confirmed")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "stopped, but could not send the final position")
                    }
                }
                return Ok(());
            }
            Err(error) => {
                abandon.cancel();
                drain(&mut lanes).await;
                if !error.is_transient() {
                    tracing::error!(%error, "stopping: the stream cannot go on");
                    return Err(error.into());
                }
                failures += 1;
                tracing::warn!(%error, confirmed = %pipeline.confirmed(), "replication connection lost; reconnecting (unconfirmed changes will be sent again)");
                if !pause(reconnect_wait(failures), &shutdown).await {
                    return Ok(());
                }
            }
        }
    }
}

async fn drain(lanes: &mut JoinSet<()>) {
    while lanes.join_next().await.is_some() {}
}

fn reconnect_wait(failures: u32) -> Duration {
    crate::deliver::policy::backoff_delay(&RECONNECT_BACKOFF, failures, None)
        .max(Duration::from_millis(50))
}

/// Sleeps unless shutdown comes first; false on shutdown.
async fn pause(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

async fn slot_confirmed_lsn(client: &tokio_postgres::Client, slot: &str) -> Option<Lsn> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .ok()??;
    let text: Option<String> = row.get(0);
    text?.parse().ok()
}
