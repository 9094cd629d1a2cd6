//! The reader: one task that pulls the replication stream through decode and
//! rules into delivery, and reports the checkpoint back to PostgreSQL.
//!
//! Its loop is one prioritised `select!`: shutdown first, then events held
//! behind a barrier that may now go, then the status timer (which advances
//! the checkpoint over acknowledged events), then the next message. While a
//! subscription's budget is spent it stops reading but keeps answering the
//! walsender, so a slow receiver never trips `wal_sender_timeout`. It holds
//! no event longer than it takes to hand it to delivery.
//!
//! It does not connect, retry connections or own the delivery lanes; `app`
//! does.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::backfill::window::{Ready, Windows, key_bytes};
use crate::backfill::{WATERMARK_PREFIX, Watermark};
use crate::catalog::TypeRegistry;
use crate::checkpoint::{Ack, Checkpoint};
use crate::decode::{DecodeFailure, Decoder};
use crate::deliver::{
    BudgetWait, Claim, Delivery, DeliveryClosed, HeldWait, Outbound, Submitted,
};
use crate::event::EventKind;
use crate::event::{
    Change, Projection, TableInfo, TransactionInfo, backfill_event_id, write_payload,
    write_payload_with_id,
};
use crate::health::Health;
use crate::lsn::Lsn;
use crate::oid::OidMap;
use crate::pgoutput::{self, PgOutputMessage};
use crate::rules::{Decision, Route, Rules};
use crate::store::backlog::Position;
use crate::source::{ReplicationMessage, ReplicationStream, SourceError};
use crate::telemetry::{Metrics, TableProblem};

/// How long a stopping walhook waits for the server to acknowledge its final
/// position.
const FINAL_STATUS_WAIT: Duration = Duration::from_secs(5);

/// The longest walhook waits between progress reports when progress moved.
const PROGRESS_REPORT_INTERVAL: Duration = Duration::from_millis(500);

/// Why the reader stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot decode a pgoutput message: {0}")]
    Decode(#[from] pgoutput::DecodeError),
    #[error(transparent)]
    Change(#[from] DecodeFailure),
    #[error("delivery stopped")]
    DeliveryClosed(#[from] DeliveryClosed),
}

impl PipelineError {
    /// Whether reconnecting may help.
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Source(error) => error.is_transient(),
            PipelineError::Change(error) => error.is_transient(),
            PipelineError::Decode(_) | PipelineError::DeliveryClosed(_) => false,
        }
    }
}

/// The reader's state for one replication connection.
pub struct Pipeline {
    stream: ReplicationStream,
    catalog: tokio_postgres::Client,
    decoder: Decoder,
    rules: Arc<Rules>,
    routes: OidMap<Routing>,
    checkpoint: Checkpoint,
    reporter: Reporter,
    observers: Observers,
    /// Where payloads are written before delivery copies them into their
    /// lane's chunk.
    scratch: Vec<u8>,
    /// (relation, column) pairs whose malformed values were logged once.
    text_fallback_logged: std::collections::HashSet<(u32, usize)>,
    /// Backfills: the keys changed around a chunk, and the chunks to send.
    windows: Windows,
}

/// What the reader does with the changes of one relation, as its latest
/// Relation message shaped it.
#[derive(Clone)]
struct Routing {
    routes: Arc<[Route]>,
    /// Counts its changes when no rule selects it (the publication holds a
    /// table the rules do not name): passed over, but never silently.
    unrouted: Option<prometheus_client::metrics::counter::Counter>,
}

/// Where the reader reports what it sees: metrics and health.
#[derive(Clone)]
pub struct Observers {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// When and what to tell the walsender.
struct Reporter {
    /// The newest WAL position received.
    received: Lsn,
    last_sent: Lsn,
    last_sent_at: Instant,
    status_interval: Duration,
    ticks: Interval,
}

impl Pipeline {
    pub fn new(
        stream: ReplicationStream,
        catalog: tokio_postgres::Client,
        rules: Arc<Rules>,
        types: TypeRegistry,
        start: Lsn,
        status_interval: Duration,
        observers: Observers,
    ) -> Pipeline {
        let mut ticks = tokio::time::interval(PROGRESS_REPORT_INTERVAL.min(status_interval));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Pipeline {
            stream,
            catalog,
            decoder: Decoder::new(types),
            rules,
            routes: OidMap::default(),
            checkpoint: Checkpoint::new(start),
            reporter: Reporter {
                received: start,
                last_sent: start,
                last_sent_at: Instant::now(),
                status_interval,
                ticks,
            },
            observers,
            scratch: Vec::with_capacity(4096),
            text_fallback_logged: std::collections::HashSet::new(),
            windows: Windows::none(),
        }
    }

    /// Takes part in backfills: watermarks of `windows`' slot are acted on
    /// and its chunks sent.
    pub fn with_backfills(mut self, windows: Windows) -> Pipeline {
        self.windows = windows;
        self
    }

    /// Reads until `shutdown` or an error. On shutdown it returns with every
    /// queued event handed to delivery; the caller closes delivery, waits for
    /// it, then calls [`Pipeline::finish`].
    pub async fn run(
        &mut self,
        delivery: &mut Delivery,
        shutdown: &CancellationToken,
    ) -> Result<(), PipelineError> {
        // Resolved events are not watched one by one: every report (on the
        // tick, or when the walsender asks) advances the checkpoint first.
        // One cancellation future for the whole loop, not one per message.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            let held = delivery.held_waiter();
            tokio::select! {
                biased;
                // PRIORITY 1: shutdown. Everything read so far is handed to
                // delivery; the caller drains it and sends the final status.
                _ = &mut cancelled => {
                    // Lanes of a paused or failing subscription wait for
                    // this to hand what they hold to its backlog.
                    delivery.follow_gates();
                    delivery.flush();
                    return Ok(());
                }
                // PRIORITY 2: events held behind a barrier (a TRUNCATE, a key
                // change) go to their lanes as soon as what they wait for
                // resolved, before more is read behind them.
                _ = until_held_ready(held) => delivery.flush(),
                // PRIORITY 3: progress reports, so that a busy stream never
                // starves the walsender of status (wal_sender_timeout). Also
                // a backstop: events normally go out as soon as nothing more
                // is buffered (below); and the moment a paused or failing
                // subscription with no new events switches to its backlog.
                _ = self.reporter.ticks.tick() => {
                    delivery.follow_gates();
                    delivery.flush();
                    self.report(false).await?;
                }
                // PRIORITY 4: events read back from a backlog, for their
                // lanes (or word that a backlog caught up).
                Some(drained) = delivery.next_drained() => {
                    delivery.take_all_drained(drained)?;
                }
                // PRIORITY 5: the next message from the walsender.
                message = self.stream.next() => {
                    match message? {
                        ReplicationMessage::XLogData { wal_start, wal_end, data, .. } => {
                            self.reporter.received = self.reporter.received.max(wal_end);
                            if self.handle(wal_start, data, delivery, shutdown).await?.is_break() {
                                delivery.flush();
                                return Ok(());
                            }
                        }
                        ReplicationMessage::Keepalive { wal_end, reply_requested, .. } => {
                            self.reporter.received = self.reporter.received.max(wal_end);
                            self.checkpoint.skip_to(wal_end);
                            if !self.checkpoint.is_reading() {
                                delivery.read_up_to(wal_end);
                            }
                            if reply_requested {
                                self.report(true).await?;
                            }
                        }
                    }
                    // Hand the burst to the lanes once nothing more is at hand:
                    // one wake-up per lane instead of one per event.
                    if !self.stream.has_buffered_message() {
                        delivery.flush();
                    }
                }
            }
        }
    }

    /// After delivery has drained (or been abandoned): reports the final
    /// confirmed position and closes the connection, which frees the slot
    /// for a standby at once.
    pub async fn finish(mut self) -> Result<Lsn, PipelineError> {
        let confirmed = self.checkpoint.advance();
        let written = self.reporter.received.max(confirmed);
        // Ask for a reply: the walsender answers only after it has processed
        // our status, so the keepalive that comes back proves the final
        // position reached the slot. Closing at once could race a walsender
        // busy sending, which then exits without reading our status.
        self.stream.send_status(written, confirmed, true).await?;
        let acknowledged = tokio::time::timeout(FINAL_STATUS_WAIT, async {
            loop {
                match self.stream.next().await {
                    Ok(ReplicationMessage::Keepalive { .. }) => return true,
                    Ok(ReplicationMessage::XLogData { .. }) => continue,
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        if !acknowledged {
            tracing::warn!(%confirmed, "the server did not acknowledge the final position; changes after the last acknowledged one will be sent again");
        }
        self.stream.close().await?;
        Ok(confirmed)
    }

    /// The confirmed position now.
    pub fn confirmed(&mut self) -> Lsn {
        self.checkpoint.advance()
    }

    /// Loads the column types of `relations` (the rule tables) before the
    /// first change, so that a type dropped soon after a change that used it
    /// is still rendered faithfully.
    pub async fn preload_types(&mut self, relations: &[u32]) -> Result<(), PipelineError> {
        Ok(self.decoder.preload(&self.catalog, relations).await?)
    }

    /// The type registry, for the next connection's pipeline.
    pub fn take_types(&mut self) -> TypeRegistry {
        self.decoder.take_types()
    }

    /// Sends a standby status update when progress moved, when the interval
    /// passed, or when `now`.
    async fn report(&mut self, now: bool) -> Result<(), SourceError> {
        let confirmed = self.checkpoint.advance();
        self.observe(confirmed);
        let reporter = &mut self.reporter;
        let due = reporter.last_sent_at.elapsed() >= reporter.status_interval;
        if now || due || confirmed != reporter.last_sent {
            // Written is what we hold; flushed is what is durable downstream.
            let written = reporter.received.max(confirmed);
            self.stream.send_status(written, confirmed, false).await?;
            reporter.last_sent = confirmed;
            reporter.last_sent_at = Instant::now();
        }
        Ok(())
    }

    /// Updates the progress metrics and the health.
    fn observe(&self, confirmed: Lsn) {
        let metrics = &self.observers.metrics;
        metrics.confirmed_lsn.set(confirmed.0 as i64);
        let lag = self.reporter.received.0.saturating_sub(confirmed.0);
        metrics.replication_lag_bytes.set(lag as i64);
        let lag_seconds = match self.checkpoint.oldest_pending_commit_micros() {
            Some(commit) => {
                let now = crate::pgtime::micros_since_2000(std::time::SystemTime::now());
                now.saturating_sub(commit).max(0) as f64 / 1e6
            }
            None => 0.0,
        };
        metrics.replication_lag_seconds.set(lag_seconds);
        if confirmed != self.reporter.last_sent
            || self.checkpoint.oldest_pending_commit_micros().is_none()
        {
            self.observers.health.progressed();
        }
    }

    /// Handles one pgoutput message; `Break` when shutdown interrupted a
    /// wait for delivery.
    async fn handle(
        &mut self,
        wal_start: Lsn,
        data: Bytes,
        delivery: &mut Delivery,
        shutdown: &CancellationToken,
    ) -> Result<ControlFlow<()>, PipelineError> {
        let message = pgoutput::parse(data)?;
        tracing::trace!(?message, %wal_start, "pgoutput message");
        match message {
            PgOutputMessage::Begin {
                final_lsn,
                commit_time_micros,
                xid,
            } => {
                self.checkpoint.begin(commit_time_micros);
                self.decoder.begin(xid, final_lsn, commit_time_micros);
            }
            PgOutputMessage::Commit { end_lsn, .. } => {
                self.decoder.commit();
                self.checkpoint.commit(end_lsn);
                self.reporter.received = self.reporter.received.max(end_lsn);
                delivery.read_up_to(end_lsn);
            }
            PgOutputMessage::Relation(relation) => {
                let table = self.decoder.relation(relation, &self.catalog).await?;
                let routing = self.routing(&table);
                self.routes.insert(table.relation_id, routing);
            }
            PgOutputMessage::Type { id, .. } => self.decoder.type_changed(id),
            PgOutputMessage::Insert { relation_id, new } => {
                let change = self.decoder.change(
                    EventKind::Insert,
                    relation_id,
                    Some(&new),
                    None,
                    wal_start,
                )?;
                return self.dispatch(change, delivery, shutdown).await;
            }
            PgOutputMessage::Update {
                relation_id,
                old,
                new,
            } => {
                let change = self.decoder.change(
                    EventKind::Update,
                    relation_id,
                    Some(&new),
                    old.as_ref(),
                    wal_start,
                )?;
                return self.dispatch(change, delivery, shutdown).await;
            }
            PgOutputMessage::Delete { relation_id, old } => {
                let change = self.decoder.change(
                    EventKind::Delete,
                    relation_id,
                    None,
                    Some(&old),
                    wal_start,
                )?;
                return self.dispatch(change, delivery, shutdown).await;
            }
            PgOutputMessage::Truncate { relation_ids, .. } => {
                for relation_id in relation_ids {
                    let change = self.decoder.truncate(relation_id, wal_start)?;
                    if self.dispatch(change, delivery, shutdown).await?.is_break() {
                        return Ok(ControlFlow::Break(()));
                    }
                }
            }
            PgOutputMessage::Message {
                prefix,
                content,
                lsn,
                ..
            } if prefix == WATERMARK_PREFIX => {
                let ready = Watermark::parse(&content)
                    .and_then(|watermark| self.windows.watermark(&watermark));
                if let Some(ready) = ready {
                    return self.send_chunk(ready, lsn, delivery, shutdown).await;
                }
            }
            PgOutputMessage::Origin { .. } | PgOutputMessage::Message { .. } => {}
        }
        Ok(ControlFlow::Continue(()))
    }

    /// The routes of a relation's new shape, saying what is unusual about
    /// it: a table no rule selects, or one selected by the oid it had at
    /// start-up under a name the config no longer matches.
    fn routing(&self, table: &TableInfo) -> Routing {
        let routes: Arc<[Route]> = self.rules.routes_for(table).into();
        let name = format!("{}.{}", table.schema, table.name);
        if routes.is_empty() {
            tracing::warn!(table = %name, "the publication sends changes of a table no rule selects; they are passed over and counted in walhook_changes_unrouted_total (remove the table from the publication, or add it to a subscription)");
            return Routing {
                routes,
                unrouted: Some(self.observers.metrics.unrouted_counter(&name)),
            };
        }
        if let Some(former) = self.rules.former_name(table) {
            tracing::warn!(table = %former, now = %name, "a table the rules name was renamed or moved to another schema; walhook keeps delivering its changes, under its new name — update `tables` in the config, which still says the old name (a restart with the old name fails)");
            self.observers.metrics.set_table_problem(
                &former.to_string(),
                TableProblem::Renamed,
                true,
            );
        }
        Routing {
            routes,
            unrouted: None,
        }
    }

    /// Counts (and, the first time per column, logs) values of `change`
    /// that went out as text rather than as `to_jsonb` renders them.
    fn count_text_fallbacks(&mut self, change: &Change) {
        for &index in self.decoder.text_fallbacks() {
            let Some(column) = change.table.columns.get(index) else {
                continue;
            };
            let table = format!("{}.{}", change.table.schema, change.table.name);
            self.observers
                .metrics
                .values_as_text(&table, &column.name, 1);
            if !column.type_unknown
                && self
                    .text_fallback_logged
                    .insert((change.table.relation_id, index))
            {
                tracing::warn!(%table, column = %column.name, "a value's text is not what its type's output gives; it goes out as a JSON string of its text (counted in walhook_values_as_text_total)");
            }
        }
    }

    /// Hands a change to every subscription that wants it.
    async fn dispatch(
        &mut self,
        change: Change,
        delivery: &mut Delivery,
        shutdown: &CancellationToken,
    ) -> Result<ControlFlow<()>, PipelineError> {
        self.observers.metrics.changes_decoded.inc();
        if !self.decoder.text_fallbacks().is_empty() {
            self.count_text_fallbacks(&change);
        }
        if self.windows.is_tracking() {
            self.windows.note(&change);
        }
        let Some(routing) = self.routes.get(&change.table.relation_id) else {
            return Ok(ControlFlow::Continue(()));
        };
        if let Some(unrouted) = &routing.unrouted {
            unrouted.inc();
            return Ok(ControlFlow::Continue(()));
        }
        let routes = Arc::clone(&routing.routes);
        for route in routes.iter() {
            let park = match route.decide(&change) {
                Decision::Skip => continue,
                Decision::Deliver => None,
                Decision::Park(reason) => Some(reason),
            };
            if let Some(handles) = self.observers.metrics.subscription(route.subscription) {
                handles.matched.inc();
            }
            let projection = match &route.projection {
                Some(mask) => Projection::Only(mask),
                None => Projection::All,
            };
            // Written into a reused buffer; delivery copies it into its
            // lane's chunk.
            self.scratch.clear();
            let id = write_payload(
                &mut self.scratch,
                &change,
                self.rules.name(route.subscription),
                projection,
            );
            let event = Outbound {
                id,
                position: Position {
                    commit_lsn: change.transaction.commit_lsn.0,
                    ordinal: change.ordinal,
                },
                ordering_key: change.ordering_key(),
                previous_ordering_key: change.previous_ordering_key(),
                commit_time_micros: change.transaction.commit_time_micros,
                barrier: change.kind == EventKind::Truncate,
                seal_failed: false,
                park,
                body: Bytes::new(),
                claim: Claim::Checkpoint(self.checkpoint.track_event()),
            };
            if self
                .submit(route.subscription, event, delivery, shutdown)
                .await?
                .is_break()
            {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Sends a backfill chunk's rows as READ events at its high watermark
    /// (`lsn`), except the keys the stream changed around it; tells the
    /// worker how many went once all are handed to delivery. Its events
    /// hold the chunk's progress, not the slot.
    async fn send_chunk(
        &mut self,
        ready: Ready,
        lsn: Lsn,
        delivery: &mut Delivery,
        shutdown: &CancellationToken,
    ) -> Result<ControlFlow<()>, PipelineError> {
        let Ready {
            chunk,
            conflicts,
            all_conflict,
        } = ready;
        let table = Arc::clone(&chunk.table);
        let route = self
            .rules
            .routes_for(&table)
            .into_iter()
            .find(|route| route.subscription == chunk.subscription);
        let mut sent = 0;
        if let Some(route) = route.filter(|_| !all_conflict) {
            let rows = self
                .decoder
                .backfill_rows(&self.catalog, &table, &chunk.rows)
                .await?;
            let now = crate::pgtime::micros_since_2000(std::time::SystemTime::now());
            let transaction = Arc::new(TransactionInfo {
                xid: 0,
                commit_lsn: lsn,
                commit_time: crate::pgtime::format_rfc3339(now),
                commit_time_micros: now,
                backfill: Some(chunk.backfill),
            });
            let name = self.rules.name(route.subscription).to_owned();
            for (ordinal, row) in rows.into_iter().enumerate() {
                if key_bytes(&table, &row).is_some_and(|key| conflicts.contains(&key)) {
                    continue;
                }
                let change = Change {
                    table: Arc::clone(&table),
                    kind: EventKind::Read,
                    new: Some(row),
                    old: None,
                    lsn,
                    ordinal: ordinal as u32,
                    transaction: Arc::clone(&transaction),
                };
                let park = match route.decide_backfilled(&change) {
                    Decision::Skip => continue,
                    Decision::Deliver => None,
                    Decision::Park(reason) => Some(reason),
                };
                let projection = match &route.projection {
                    Some(mask) => Projection::Only(mask),
                    None => Projection::All,
                };
                let Some(new) = change.new.as_ref() else {
                    continue;
                };
                let id = backfill_event_id(&name, chunk.backfill, &table, new);
                self.scratch.clear();
                write_payload_with_id(&mut self.scratch, &change, &name, projection, id);
                let event = Outbound {
                    id,
                    position: Position {
                        commit_lsn: lsn.0,
                        ordinal: change.ordinal,
                    },
                    ordering_key: change.ordering_key(),
                    previous_ordering_key: None,
                    commit_time_micros: now,
                    barrier: false,
                    seal_failed: false,
                    park,
                    body: Bytes::new(),
                    claim: Claim::Checkpoint(Ack::counted(&chunk.pending)),
                };
                sent += 1;
                if self
                    .submit(route.subscription, event, delivery, shutdown)
                    .await?
                    .is_break()
                {
                    return Ok(ControlFlow::Break(()));
                }
            }
            delivery.flush();
        }
        tracing::debug!(backfill = chunk.backfill, rows = chunk.rows.len(), conflicts = conflicts.len(), all_conflict, sent, "backfill chunk handed to delivery");
        // The worker's own count: the chunk is complete once its events are.
        chunk.pending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        let _ = chunk.handed.send(sent);
        Ok(ControlFlow::Continue(()))
    }

    /// Hands the event to delivery, waiting for room in a byte budget (while
    /// still answering the walsender) only when there is none.
    async fn submit(
        &mut self,
        subscription: usize,
        event: Outbound,
        delivery: &mut Delivery,
        shutdown: &CancellationToken,
    ) -> Result<ControlFlow<()>, PipelineError> {
        let wait = match delivery.try_submit(subscription, event, &self.scratch)? {
            Submitted::Accepted => return Ok(ControlFlow::Continue(())),
            Submitted::NeedsBudget(wait) => wait,
        };
        // The payload leaves `self` while waiting, which answers the
        // walsender through `self`; it comes back whatever the outcome.
        let payload = std::mem::take(&mut self.scratch);
        let outcome = self
            .wait_for_budget(subscription, wait, &payload, delivery, shutdown)
            .await;
        self.scratch = payload;
        outcome
    }

    async fn wait_for_budget(
        &mut self,
        subscription: usize,
        mut wait: Box<BudgetWait>,
        payload: &[u8],
        delivery: &mut Delivery,
        shutdown: &CancellationToken,
    ) -> Result<ControlFlow<()>, PipelineError> {
        loop {
            // Owned, so waiting keeps its place in the queue across loops
            // and borrows nothing from delivery.
            let share = Arc::clone(&wait.budget).acquire_many_owned(wait.cost);
            tokio::pin!(share);
            let patience = wait.patience.map(|patience| Instant::now() + patience);
            let next = loop {
                let held = delivery.held_waiter();
                tokio::select! {
                    biased;
                    // PRIORITY 1: the event is dropped unresolved, so its
                    // change stays unconfirmed.
                    _ = shutdown.cancelled() => return Ok(ControlFlow::Break(())),
                    // PRIORITY 2: room in the budget.
                    acquired = &mut share => {
                        acquired.map_err(|_| DeliveryClosed)?.forget();
                        delivery.submit_paid(subscription, wait, payload)?;
                        return Ok(ControlFlow::Continue(()));
                    }
                    // PRIORITY 3: no room for too long: the subscription is
                    // slower than the stream, and its backlog takes over.
                    _ = until(patience) => {
                        break delivery.spill_instead(subscription, wait, payload)?;
                    }
                    // PRIORITY 4: events held behind a barrier of another
                    // subscription may go on meanwhile.
                    _ = until_held_ready(held) => delivery.flush(),
                    // PRIORITY 5: keep the walsender answered.
                    _ = self.reporter.ticks.tick() => {
                        delivery.follow_gates();
                        delivery.flush();
                        self.report(false).await?;
                    }
                }
            };
            match next {
                Submitted::Accepted => return Ok(ControlFlow::Continue(())),
                Submitted::NeedsBudget(next) => wait = next,
            }
        }
    }
}

/// Resolves at `deadline` (never, without one).
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the first held event may go (never, when none is held).
async fn until_held_ready(held: Option<HeldWait>) {
    match held {
        Some(held) => held.until_ready().await,
        None => std::future::pending().await,
    }
}
