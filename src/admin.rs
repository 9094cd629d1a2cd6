//! The admin HTTP server on `admin.listen`: `/metrics` (Prometheus text),
//! `/healthz` (the process answers), `/readyz` (the replication stream is
//! connected and the checkpoint is not stalled) and `/status` (the facts of
//! `walhook status`, as JSON, over one shared database connection).
//!
//! It only reads shared state and the database; it never changes the
//! pipeline. Binding failure is a start-up error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use tokio_util::sync::CancellationToken;

use crate::config::BacklogConfig;
use crate::health::Health;
use crate::pgconn::{ConnectParams, connect_sql};
use crate::telemetry::Metrics;

/// What the admin server reads from.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Where `/status` reads the slot and the subscriptions' state.
    pub params: ConnectParams,
    pub slot: String,
    /// What `/status` reports on; a reload sends the new configuration's.
    pub scope: tokio::sync::watch::Receiver<StatusScope>,
    pub status: StatusSource,
}

/// The subscriptions `/status` lists and the backlog limits it warns at.
#[derive(Debug, Clone)]
pub struct StatusScope {
    pub subscriptions: Vec<String>,
    pub backlog_limits: BacklogConfig,
}

/// Binds `listen` (a start-up error when it cannot) and serves until
/// `shutdown`.
pub async fn serve(
    listen: &str,
    state: AdminState,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), std::io::Error> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(state);
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics_endpoint))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(ready_endpoint))
        .route("/status", axum::routing::get(status_endpoint))
        .with_state(state);
    let task = tokio::spawn(accept_until(listener, router, shutdown));
    tracing::info!(%addr, "admin server listening (/metrics, /healthz, /readyz, /status)");
    Ok((addr, task))
}

/// Connections the admin server serves at once…
const MAX_CONNECTIONS: usize = 64;
/// … and may hold waiting for one of those, up to [`HEADER_TIMEOUT`]; more
/// are closed as they come, so that clients of the admin port cannot take
/// the file descriptors delivery needs (docs/security.md).
const MAX_WAITING: usize = 128;
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open (keep-alive included).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Accepts connections until `shutdown`, each served with the limits
/// above.
async fn accept_until(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let held = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS + MAX_WAITING));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(%error, "admin server cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(holding) = Arc::clone(&held).try_acquire_owned() else {
            tracing::debug!("admin server at its connection limit; closing a new one");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let slots = Arc::clone(&slots);
        tokio::spawn(async move {
            let Ok(Ok(slot)) =
                tokio::time::timeout(HEADER_TIMEOUT, slots.acquire_owned()).await
            else {
                return;
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop((slot, holding));
        });
    }
}

async fn metrics_endpoint(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    // A database that does not answer in time leaves the last counts.
    let _ = tokio::time::timeout(DEAD_LETTER_COUNT_TIMEOUT, state.status.count_dead_letters(&state))
        .await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn ready_endpoint(State(state): State<Arc<AdminState>>) -> (StatusCode, String) {
    match state.health.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn status_endpoint(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let answer = state.status.answer(&state).await;
    let (status, body) = match answer {
        Ok(json) => (StatusCode::OK, json),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": error }).to_string(),
        ),
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

/// How long a computed `/status` answer is served again.
const STATUS_FRESH_FOR: Duration = Duration::from_secs(1);

/// How long a scrape waits for the dead-letter counts before it answers
/// with the last ones.
const DEAD_LETTER_COUNT_TIMEOUT: Duration = Duration::from_secs(2);

/// `/status` answers over one database connection, one computation at a
/// time, each served again for [`STATUS_FRESH_FOR`]: a flood of requests
/// waits its turn instead of opening a connection each (which once used up
/// the database's `max_connections`, docs/security.md).
#[derive(Default)]
pub struct StatusSource {
    inner: tokio::sync::Mutex<StatusCache>,
}

#[derive(Default)]
struct StatusCache {
    client: Option<tokio_postgres::Client>,
    last: Option<(Instant, Result<String, String>)>,
    /// When `walhook_dead_letters` was last counted.
    counted_at: Option<Instant>,
}

impl StatusSource {
    async fn answer(&self, state: &AdminState) -> Result<String, String> {
        let mut cache = self.inner.lock().await;
        if let Some((at, answer)) = &cache.last
            && at.elapsed() < STATUS_FRESH_FOR
        {
            return answer.clone();
        }
        let answer = compute_status(&mut cache.client, state).await;
        cache.last = Some((Instant::now(), answer.clone()));
        answer
    }

    /// Sets `walhook_dead_letters` from the table, over the same connection
    /// and at most once per [`STATUS_FRESH_FOR`]: the table is the truth
    /// (`dead-letters replay` and `purge` change it from outside the
    /// daemon), and one grouped count on its `(subscription, event_id)`
    /// index is cheap for the few letters a healthy system keeps.
    async fn count_dead_letters(&self, state: &AdminState) {
        let mut cache = self.inner.lock().await;
        if cache
            .counted_at
            .is_some_and(|at| at.elapsed() < STATUS_FRESH_FOR)
        {
            return;
        }
        cache.counted_at = Some(Instant::now());
        if let Err(error) = connected(&mut cache.client, state).await {
            tracing::debug!(%error, "cannot count dead letters for /metrics");
            return;
        }
        let Some(client) = cache.client.as_ref() else {
            return;
        };
        match crate::store::dead_letters::counts(client).await {
            Ok(counts) => {
                let subscriptions = state.scope.borrow().subscriptions.clone();
                for name in &subscriptions {
                    let count = counts
                        .iter()
                        .find(|(subscription, _)| subscription == name)
                        .map_or(0, |(_, count)| *count);
                    state.metrics.set_dead_letters(name, count);
                }
            }
            Err(error) => tracing::debug!(%error, "cannot count dead letters for /metrics"),
        }
    }
}

/// Opens the admin server's connection when it has none (or lost it).
async fn connected(
    client: &mut Option<tokio_postgres::Client>,
    state: &AdminState,
) -> Result<(), String> {
    if client.as_ref().is_none_or(|client| client.is_closed()) {
        *client = Some(
            connect_sql(&state.params)
                .await
                .map_err(|error| error.to_string())?,
        );
    }
    Ok(())
}

async fn compute_status(
    client: &mut Option<tokio_postgres::Client>,
    state: &AdminState,
) -> Result<String, String> {
    connected(client, state).await?;
    let Some(connected) = client.as_ref() else {
        return Err("no database connection".to_owned());
    };
    let scope = state.scope.borrow().clone();
    let mut report = crate::status::collect(connected, &state.slot, &scope.subscriptions, None)
        .await
        .map_err(|error| error.to_string())?;
    report.warn_about_backlogs(&scope.backlog_limits);
    serde_json::to_string_pretty(&report).map_err(|error| error.to_string())
}
