//! The daemon: builds the stages, owns every task, reconnects, and stops in
//! order.
//!
//! Start-up checks everything it can before the slot is touched (the config
//! is already valid; here the database connection, setup, and the rules
//! against the catalog). Then it streams until shutdown, reconnecting with
//! backoff whenever the replication connection is lost — a slot held by
//! another walhook makes this one a standby that takes over when the slot is
//! free. On shutdown it stops reading, lets delivery finish within the grace
//! period, sends the final confirmed LSN, closes the replication connection
//! (so a standby can take the slot at once) and returns.
//!
//! A reload (SIGHUP, through [`crate::reload`]) is that same stop followed
//! by a new start in the same process: the new configuration is checked
//! beside the running stream, and only one that holds stops it; then setup
//! runs for the new rules and the stream goes on from the slot's confirmed
//! position. The admin server, the process and whatever a subscription that
//! did not change carries (its gate, its metrics) stay.
//!
//! A slot that vanishes is never silently replaced: a new slot starts at the
//! current WAL position, so every change between the old slot's confirmed
//! position and now would be skipped. walhook records each slot it streamed
//! from in `walhook.slots`; if that slot is gone — while streaming, or at the
//! next start with `auto_setup` — it stops with an error that says so and
//! names the fix (`walhook setup` creates a new slot, accepting the gap).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::backfill::window::Windows;
use crate::backfill::worker::Worker;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, StatusScope};
use crate::catalog::TypeRegistry;
use crate::config::{BackoffConfig, Config};
use crate::control::Control;
use crate::deliver::gate::Gate;
use crate::deliver::{BacklogStart, Delivery, Stores};
use crate::health::Health;
use crate::lsn::Lsn;
use crate::pgconn::{ConnectParams, ConnectParamsError, PgConnError, connect_sql};
use crate::pipeline::{Observers, Pipeline, PipelineError};
use crate::reload::{self, Plan, Reloads, Verdict};
use crate::retry;
use crate::rules::Rules;
use crate::rules::catalog_check::{self, RuleError};
use crate::setup::{self, SetupError};
use crate::source::{ReplicationStream, SourceError};
use crate::store::dead_letters::DeadLetters;
use crate::store::{backlog, slots, subscription_state};
use crate::tables::{self, Resolution};
use crate::telemetry::Metrics;
use crate::watch::CatalogWatch;

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

/// After a reload, how long the slot may stay held (by the walsender of the
/// stream that just stopped) before this walhook stands by as for another
/// process; and how often it looks meanwhile.
const RELOAD_HANDOVER: Duration = Duration::from_secs(10);
const RELOAD_HANDOVER_POLL: Duration = Duration::from_millis(50);

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("source.url: {0}")]
    SourceUrl(#[from] ConnectParamsError),
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
    #[error(
        "admin.listen: cannot listen on {listen}: {source}; choose another address, \
         or set admin.listen = \"\" to disable the admin server"
    )]
    AdminListen {
        listen: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "replication slot \"{slot}\" has vanished (it was dropped){since}; changes after its last confirmed position cannot be \
         replayed. walhook will not silently start a new slot at the current position. Run \
         `walhook setup` to create a new slot (changes made while the slot was missing are \
         not delivered), then start walhook again"
    )]
    SlotVanished { slot: String, since: String },
    #[error(
        "replication slot \"{slot}\" was invalidated by PostgreSQL (wal_status = lost: it fell \
         more than max_slot_wal_keep_size behind, and the WAL it needed is gone); changes after \
         {confirmed} cannot be read any more. Drop it with SELECT \
         pg_drop_replication_slot('{slot}') and run `walhook setup` to start a new slot \
         (changes in between are not delivered), and consider a larger max_slot_wal_keep_size"
    )]
    SlotInvalidated { slot: String, confirmed: String },
    /// The server cannot serve this slot: `wal_level` below logical, or a
    /// slot of the name in another database.
    #[error("{0}")]
    ServerNotReady(String),
}

impl DaemonError {
    /// 2 for problems in the configuration or the rules (fix the file), 1 for
    /// everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::SourceUrl(_) | DaemonError::Delivery(_) => 2,
            DaemonError::Rules(RuleError::Catalog(_)) => 1,
            DaemonError::Rules(_) => 2,
            _ => 1,
        }
    }
}

/// Runs the daemon until `shutdown` is cancelled or a fatal error.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    run_with_reloads(config, shutdown, Reloads::never()).await
}

/// [`run`], applying each configuration `reloads` brings that loads and
/// holds against the catalog: the stream stops at a confirmed position as
/// on shutdown, the publication follows the new rules, and the stream goes
/// on with them in the same process (docs/operations.md, "Reloading the
/// configuration"). One that does not is logged and changes nothing.
pub(crate) async fn run_with_reloads(
    config: Config,
    shutdown: CancellationToken,
    mut reloads: Reloads,
) -> Result<(), DaemonError> {
    let mut params = ConnectParams::from_source(&config.source)?;
    let names = subscription_names(&config);
    let mut observers = Observers {
        metrics: Metrics::new(&names),
        health: Arc::new(Health::default()),
    };
    let (scope, scope_view) = tokio::sync::watch::channel(StatusScope {
        subscriptions: names,
        backlog_limits: config.delivery.backlog,
    });
    // Bound before the database is touched: an address that is taken is a
    // start-up error that leaves the slot and publication as they were.
    let admin_task = if config.admin.listen.is_empty() {
        None
    } else {
        let state = admin::AdminState {
            metrics: Arc::clone(&observers.metrics),
            health: Arc::clone(&observers.health),
            params: params.clone(),
            slot: config.source.slot.clone(),
            scope: scope_view,
            status: admin::StatusSource::default(),
        };
        let (_, task) = admin::serve(&config.admin.listen, state, shutdown.clone())
            .await
            .map_err(|source| DaemonError::AdminListen {
                listen: config.admin.listen.clone(),
                source,
            })?;
        Some(task)
    };
    // Kept across reconnections, and across reloads for the subscriptions
    // they leave as they were: an endpoint stays down, and a subscription
    // paused, while the replication connection is re-opened.
    let mut gates = carry_gates(&config, &config, &[]);
    let mut running = config;
    let mut stream_state = StreamState::default();
    let outcome = async {
        let mut prepared = prepare(&running, &params).await?;
        loop {
            // Everything below runs with this configuration, until it stops
            // for a reload (`stop`) or for good (`shutdown`, a child of it).
            let stop = shutdown.child_token();
            let mut helpers = JoinSet::new();
            helpers.spawn(
                Control {
                    params: params.clone(),
                    gates: gates.clone(),
                    metrics: Arc::clone(&observers.metrics),
                }
                .run(stop.clone()),
            );
            helpers.spawn(
                CatalogWatch {
                    params: params.clone(),
                    publication: running.source.publication.clone(),
                    auto_setup: running.source.auto_setup,
                    interval: running.source.catalog_watch_interval,
                    rules: Arc::clone(&prepared.rules),
                    metrics: Arc::clone(&observers.metrics),
                }
                .run(prepared.resolution.clone(), stop.clone()),
            );
            let next = stream_and_listen(
                Streaming {
                    config: &running,
                    params: &params,
                    rules: &prepared.rules,
                    gates: &gates,
                    observers: &observers,
                },
                &stop,
                &mut stream_state,
                &mut reloads,
            )
            .await;
            stop.cancel();
            helpers.abort_all();
            let plan = match next {
                Next::Stopped(outcome) => return outcome,
                Next::Reload(plan) => plan,
            };
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let Plan { config, changes } = *plan;
            let applied = match ConnectParams::from_source(&config.source) {
                Ok(new_params) => prepare(&config, &new_params)
                    .await
                    .map(|ready| (new_params, ready)),
                Err(error) => Err(error.into()),
            };
            match applied {
                Ok((new_params, ready)) => {
                    gates = carry_gates(&running, &config, &gates);
                    let names = subscription_names(&config);
                    observers.metrics = observers.metrics.rebind(&names);
                    scope.send_replace(StatusScope {
                        subscriptions: names,
                        backlog_limits: config.delivery.backlog,
                    });
                    running = config;
                    params = new_params;
                    prepared = ready;
                    tracing::info!(changes = %changes.summary(), "configuration reloaded");
                }
                // The stream goes on with the rules prepared before. Each
                // setup statement is atomic (one that failed changed
                // nothing), and the catalog watch puts back, or names, any
                // table of these rules the publication lacks.
                Err(error) => {
                    tracing::error!(%error, "reload failed while applying it; walhook goes on with its running configuration");
                }
            }
        }
    }
    .await;
    if let Some(task) = admin_task {
        task.abort();
    }
    outcome
}

/// The subscriptions' names, in the config's order (the index every stage
/// numbers them by).
fn subscription_names(config: &Config) -> Vec<String> {
    config
        .subscriptions
        .iter()
        .map(|subscription| subscription.name.clone())
        .collect()
}

/// The gates of `new`'s subscriptions: a subscription `running` has with
/// the same settings (and the same breaker settings) keeps its gate, so its
/// circuit and mode carry over; any other gets a fresh one.
fn carry_gates(running: &Config, new: &Config, gates: &[Arc<Gate>]) -> Vec<Arc<Gate>> {
    new.subscriptions
        .iter()
        .map(|subscription| {
            let kept = (running.delivery.breaker == new.delivery.breaker)
                .then(|| {
                    running
                        .subscriptions
                        .iter()
                        .zip(gates)
                        .find(|(old, _)| reload::same_subscription(old, subscription))
                })
                .flatten();
            match kept {
                Some((_, gate)) => Arc::clone(gate),
                None => Arc::new(Gate::new(&subscription.name, new.delivery.breaker)),
            }
        })
        .collect()
}

/// What one configuration streams with.
struct Streaming<'a> {
    config: &'a Config,
    params: &'a ConnectParams,
    rules: &'a Arc<Rules>,
    gates: &'a [Arc<Gate>],
    observers: &'a Observers,
}

/// How [`stream_and_listen`] ended.
enum Next {
    /// Shutdown, or a fatal error.
    Stopped(Result<(), DaemonError>),
    /// The stream stopped at a confirmed position for this configuration.
    Reload(Box<Plan>),
}

/// Streams until shutdown or a fatal error, meanwhile reviewing each
/// reload request beside the stream; a configuration to apply stops the
/// stream the way shutdown does (in-flight requests finish within the
/// grace period, the final position is confirmed) and is returned.
async fn stream_and_listen(
    streaming: Streaming<'_>,
    stop: &CancellationToken,
    state: &mut StreamState,
    reloads: &mut Reloads,
) -> Next {
    let config = streaming.config.clone();
    let stream = stream_until_stopped(streaming, stop, state);
    tokio::pin!(stream);
    let mut reviews = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            // PRIORITY 1: the stream ended: shutdown or a fatal error.
            outcome = &mut stream => return Next::Stopped(outcome),
            // PRIORITY 2: a reviewed configuration (the review logged why
            // one is kept).
            Some(reviewed) = reviews.join_next() => match reviewed {
                Ok(Verdict::Apply(plan)) => {
                    tracing::info!(changes = %plan.changes.summary(), "applying the new configuration: stopping the stream at a confirmed position");
                    stop.cancel();
                    return match stream.await {
                        Ok(()) => Next::Reload(plan),
                        Err(error) => Next::Stopped(Err(error)),
                    };
                }
                Ok(Verdict::Keep) => {}
                Err(error) => {
                    tracing::error!(%error, "reload rejected: reviewing the configuration failed; walhook goes on with its running configuration");
                }
            },
            // PRIORITY 3: a reload request, one at a time (more wait, and
            // read the file when their turn comes). The review reads the
            // catalog, so it runs beside the stream, not in its way.
            path = reloads.requested(), if reviews.is_empty() => {
                let running = config.clone();
                reviews.spawn(async move { reload::review(&path, &running).await });
            }
        }
    }
}

/// Checks the rules against the catalog and, unless `auto_setup = false`,
/// runs the `setup` steps; returns the rules and the tables they selected.
async fn prepare(config: &Config, params: &ConnectParams) -> Result<Prepared, DaemonError> {
    let client = connect_sql(params).await?;
    let resolution = catalog_check::check(&client, &config.subscriptions).await?;
    let mut rules = Rules::new(&config.subscriptions);
    rules.bind(&resolution);
    check_slot_not_lost(&client, &config.source.slot).await?;
    if config.source.auto_setup {
        catalog_check::refuse_unloggable(&resolution, &rules.events())?;
        if let Some(streamed_since) = slots::vanished_since(&client, &config.source.slot).await {
            return Err(DaemonError::SlotVanished {
                slot: config.source.slot.clone(),
                since: format!(" (walhook streamed from it since {streamed_since})"),
            });
        }
        let report = setup::run(&client, &config.source, &rules, &resolution).await?;
        if report.slot_created {
            tracing::info!(slot = %config.source.slot, "replication slot created");
        }
        if report.publication_created || report.publication_changed {
            tracing::info!(publication = %config.source.publication, tables = rules.tables().len(), "publication set to the tables the rules name");
        }
        if !report.publication_wider.is_empty() {
            tracing::info!(publication = %config.source.publication, "publication {}", report.publication_outcome());
        }
        if report.nothing_to_do() {
            tracing::info!(slot = %config.source.slot, publication = %config.source.publication, "schema, publication and slot as wanted; no setup needed");
        }
    }
    drop(client);
    Ok(Prepared {
        rules: Arc::new(rules),
        resolution,
    })
}

/// The rules bound to the catalog, and the tables they selected.
struct Prepared {
    rules: Arc<Rules>,
    resolution: Resolution,
}

/// What outlives one replication connection, and one configuration.
#[derive(Default)]
struct StreamState {
    /// Whether this process has streamed from the slot (so a missing slot
    /// means it vanished).
    streamed: bool,
    /// A type dropped while walhook reconnected is still known.
    types: TypeRegistry,
    warned_no_backlog: bool,
}

/// Streams, reconnecting as needed, until shutdown or a fatal error.
/// `shutdown` here is whatever ends this configuration's stream: the
/// daemon's shutdown, or a reload.
async fn stream_until_stopped(
    streaming: Streaming<'_>,
    shutdown: &CancellationToken,
    state: &mut StreamState,
) -> Result<(), DaemonError> {
    let Streaming {
        config,
        params,
        rules,
        gates,
        observers,
    } = streaming;
    let mut failures = 0u32;
    let mut outage = OutageLog::default();
    // Whether another process held the slot at the last attempt.
    let mut standing_by = false;
    // After a reload, the walsender of the stream just closed may hold the
    // slot a moment longer: that is waited for quietly, not stood by for.
    let reload_handover = state
        .streamed
        .then(|| tokio::time::Instant::now() + RELOAD_HANDOVER);
    // No connection of this configuration yet: the first is not a reconnect.
    let mut connected_before = false;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let stream = match ReplicationStream::start(
            params,
            &config.source.slot,
            &config.source.publication,
            Lsn::ZERO,
            PROTO_VERSION,
        )
        .await
        {
            Ok(stream) => stream,
            Err(error)
                if error.is_slot_in_use()
                    && reload_handover.is_some_and(|until| tokio::time::Instant::now() < until) =>
            {
                tracing::debug!(slot = %config.source.slot, reason = %error, "waiting for the previous stream's walsender to release the slot");
                if retry::pause(RELOAD_HANDOVER_POLL, shutdown)
                    .await
                    .is_break()
                {
                    return Ok(());
                }
                continue;
            }
            Err(error) if error.is_slot_in_use() => {
                if !standing_by {
                    tracing::info!(slot = %config.source.slot, reason = %error, "slot is active in another process; standing by");
                }
                standing_by = true;
                if retry::pause(STANDBY_POLL, shutdown).await.is_break() {
                    return Ok(());
                }
                continue;
            }
            Err(error) if error.is_slot_missing() && state.streamed => {
                tracing::error!(slot = %config.source.slot, %error, "the replication slot vanished while walhook was running");
                return Err(DaemonError::SlotVanished {
                    slot: config.source.slot.clone(),
                    since: " while walhook was running".to_owned(),
                });
            }
            Err(error) if error.is_transient() => {
                failures += 1;
                if outage.due() {
                    tracing::warn!(%error, attempt = failures, "cannot open the replication connection; retrying (said again every 30 s while it lasts)");
                } else {
                    tracing::debug!(%error, attempt = failures, "cannot open the replication connection; retrying");
                }
                if retry::pause(reconnect_wait(failures), shutdown)
                    .await
                    .is_break()
                {
                    return Ok(());
                }
                continue;
            }
            Err(error) => {
                // An invalidated slot deserves its fix, not the server's words.
                if let Ok(client) = connect_sql(params).await {
                    check_slot_not_lost(&client, &config.source.slot).await?;
                }
                return Err(error.into());
            }
        };
        let catalog = match connect_sql(params).await {
            Ok(client) => client,
            Err(error) if error.is_transient() => {
                failures += 1;
                if outage.due() {
                    tracing::warn!(%error, "cannot open the catalog connection; retrying (said again every 30 s while it lasts)");
                } else {
                    tracing::debug!(%error, "cannot open the catalog connection; retrying");
                }
                if retry::pause(reconnect_wait(failures), shutdown)
                    .await
                    .is_break()
                {
                    return Ok(());
                }
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let start = slots::find(&catalog, &config.source.slot)
            .await
            .ok()
            .flatten()
            .and_then(|slot| slot.confirmed_flush)
            .unwrap_or(Lsn::ZERO);
        if standing_by {
            tracing::info!(slot = %config.source.slot, "the slot is free; this walhook takes over");
            standing_by = false;
        }
        observers.health.set_connected(true);
        if connected_before {
            observers.metrics.reconnects.inc();
            tracing::info!(slot = %config.source.slot, from = %start, server = %params.redacted(), attempts = failures, "reconnected; resuming from the slot's confirmed position");
        } else if state.streamed {
            tracing::info!(slot = %config.source.slot, from = %start, "streaming changes with the new configuration from the slot's confirmed position");
        } else {
            tracing::info!(slot = %config.source.slot, from = %start, server = %params.redacted(), "streaming changes");
            slots::record_streamed(&catalog, &config.source.slot).await;
        }
        state.streamed = true;
        connected_before = true;
        failures = 0;
        outage = OutageLog::default();

        let warned = &mut state.warned_no_backlog;
        let backlog = match backlog_start(&catalog, params, start, warned).await {
            Ok(backlog) => backlog,
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, "cannot read walhook.backlog; retrying");
                if retry::pause(reconnect_wait(failures), shutdown)
                    .await
                    .is_break()
                {
                    return Ok(());
                }
                continue;
            }
        };
        if backlog.is_some() {
            // Before the first event: a paused subscription sends nothing.
            match subscription_state::paused(&catalog).await {
                Ok(paused) => {
                    for gate in gates {
                        gate.set_paused(paused.contains(&gate.name));
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot read which subscriptions are paused"),
            }
        }
        let mut lanes = JoinSet::new();
        let abandon = CancellationToken::new();
        let mut delivery = Delivery::start(
            &config.delivery,
            &config.subscriptions,
            gates,
            Stores {
                dead_letters: DeadLetters::new(params.clone()),
                backlog,
            },
            abandon.clone(),
            Arc::clone(&observers.metrics),
            &mut lanes,
        )
        .map_err(|error| DaemonError::Delivery(error.to_string()))?;
        // The rule tables as they are now (a `schema.*` may have gained
        // tables): their column types are loaded before their first change.
        let relations: Vec<u32> = match tables::resolve(&catalog, &rules.selectors()).await {
            Ok(resolution) => resolution.tables.values().map(|table| table.oid).collect(),
            Err(error) => {
                tracing::debug!(%error, "cannot list the rule tables to preload their types");
                Vec::new()
            }
        };
        // The backfill worker of this connection: it ends with it (a new
        // one goes on from the last completed chunk).
        let (chunk_sender, chunk_receiver) = tokio::sync::mpsc::unbounded_channel();
        let worker_stop = shutdown.child_token();
        let _stop_worker = worker_stop.clone().drop_guard();
        tokio::spawn(
            Worker {
                params: params.clone(),
                slot: config.source.slot.clone(),
                subscriptions: config
                    .subscriptions
                    .iter()
                    .map(|subscription| subscription.name.clone())
                    .collect(),
                chunks: chunk_sender,
                metrics: Arc::clone(&observers.metrics),
            }
            .run(worker_stop),
        );
        let mut pipeline = Pipeline::new(
            stream,
            catalog,
            Arc::clone(rules),
            std::mem::take(&mut state.types),
            start,
            config.source.status_interval,
            observers.clone(),
        )
        .with_backfills(Windows::new(&config.source.slot, chunk_receiver));
        let outcome = match pipeline.preload_types(&relations).await {
            Ok(()) => pipeline.run(&mut delivery, shutdown).await,
            Err(error) => Err(error),
        };
        state.types = pipeline.take_types();
        observers.health.set_connected(false);
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
                if retry::pause(reconnect_wait(failures), shutdown)
                    .await
                    .is_break()
                {
                    return Ok(());
                }
            }
        }
    }
}

/// The backlogs, and what they hold, when this role can use them; without
/// them (a schema from before the backlog) a down endpoint holds the reader
/// back once its memory budget is spent, which is said once.
/// A backlog that cannot be read is an error (the connection is tried
/// again): starting without it would send new events ahead of waiting ones.
async fn backlog_start(
    catalog: &tokio_postgres::Client,
    params: &ConnectParams,
    resumes_at: Lsn,
    warned: &mut bool,
) -> Result<Option<BacklogStart>, crate::store::StatementError> {
    let waiting = match backlog::usable(catalog).await? {
        true => backlog::summaries(catalog).await?,
        false => {
            if !*warned {
                tracing::warn!(
                    "walhook.backlog is missing or not writable for this role: a down or slow endpoint will hold back every subscription and the slot once its memory budget is spent. Run `walhook setup` (or the files of sql/ as an administrator) to create it"
                );
                *warned = true;
            }
            return Ok(None);
        }
    };
    for (subscription, summary) in &waiting {
        tracing::info!(%subscription, events = summary.events, "events wait in the backlog; they go before new ones");
    }
    Ok(Some(BacklogStart {
        params: params.clone(),
        waiting,
        resumes_at,
    }))
}

/// How often a connection outage is logged at WARN while it lasts; the
/// attempts in between go to DEBUG (one line per attempt filled the
/// journal: ten in fourteen seconds).
const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// When an outage was last logged at WARN.
#[derive(Default)]
struct OutageLog {
    last_warned: Option<std::time::Instant>,
}

impl OutageLog {
    /// Whether this failed attempt gets a WARN line.
    fn due(&mut self) -> bool {
        let due = self
            .last_warned
            .is_none_or(|last| last.elapsed() >= OUTAGE_LOG_INTERVAL);
        if due {
            self.last_warned = Some(std::time::Instant::now());
        }
        due
    }
}

async fn drain(lanes: &mut JoinSet<()>) {
    while lanes.join_next().await.is_some() {}
}

fn reconnect_wait(failures: u32) -> Duration {
    retry::backoff_delay(&RECONNECT_BACKOFF, failures, None).max(Duration::from_millis(50))
}

/// A slot PostgreSQL invalidated (`wal_status = 'lost'`) cannot stream, nor
/// can one of another database: say so with the fix rather than relay the
/// server's terse error (or stand by forever).
async fn check_slot_not_lost(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<(), DaemonError> {
    let found = slots::find(client, slot).await;
    if let (Ok(Some(found)), Ok(current)) = (&found, slots::current_database(client).await)
        && let Some(problem) = slots::in_other_database(slot, found, &current)
    {
        return Err(DaemonError::ServerNotReady(problem.to_string()));
    }
    if let Ok(Some(problem)) = slots::wal_level_problem(client).await {
        return Err(DaemonError::ServerNotReady(problem.to_string()));
    }
    match found {
        Ok(Some(found)) if found.is_lost() => Err(DaemonError::SlotInvalidated {
            slot: slot.to_owned(),
            confirmed: found
                .confirmed_flush
                .map_or_else(|| "?".to_owned(), |lsn| lsn.to_string()),
        }),
        _ => Ok(()),
    }
}
