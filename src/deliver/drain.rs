//! A subscription's drainer: reads its backlog back in commit order and
//! hands the events to the reader, which places them in the lanes like live
//! ones (so per-key order, barriers and batching work the same); deletes
//! each row once its event is delivered or parked; tells the reader when it
//! has read everything, so the subscription may go back to live delivery.
//! While the circuit is open it sends the probes: the oldest waiting event,
//! one at a time, every `probe_interval`, and the first one answered closes
//! the circuit.
//!
//! A drain *pass* starts only when the subscription's lanes are idle (so
//! whatever lanes handed back to the backlog is there), reads from the
//! start, and ends when the circuit opens or an operator pauses. Events of
//! an ended pass that are still queued are dropped by the lanes, unsent;
//! their rows stay for the next pass. It does not decide when a
//! subscription goes into backlog mode (`deliver`), nor append (`spill`).

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::http::RequestBody;
use super::policy::Verdict;
use super::{Claim, LaneLoad, Outbound, Shared, SubscriptionContext, budget_cost};
use crate::event::event_id;
use crate::lsn::Lsn;
use crate::retry;
use crate::store::backlog::{BacklogStore, Position, StoredEvent};
use crate::store::dead_letters::DeadLetter;
use crate::telemetry::ResponseClass;

/// Messages the drainers may have queued for the reader.
pub(super) const CHANNEL_EVENTS: usize = 1024;
/// Rows read per statement.
const PAGE_EVENTS: i64 = 1000;
/// How long a caught-up drainer waits before it looks again unasked.
const CAUGHT_UP_RECHECK: Duration = Duration::from_secs(1);
/// Waits after a failed backlog statement (the database is the source's:
/// the stream fails too if it is gone).
const STATEMENT_RETRY: Duration = Duration::from_secs(1);

/// From a drainer to the reader.
#[derive(Debug)]
pub enum DrainMessage {
    /// An event read back, its budget share paid, for its lane.
    Event {
        subscription: usize,
        event: Outbound,
        cost: u32,
    },
    /// The drainer found nothing more to read after every event committed
    /// to the backlog before it looked (`through` of them in all).
    CaughtUp { subscription: usize, through: u64 },
}

/// The claim of an event read back from the backlog: resolving it has its
/// row deleted; dropping it leaves the row for the next pass.
#[derive(Debug)]
pub struct BacklogClaim {
    position: Position,
    generation: u64,
    ledger: Arc<Ledger>,
    resolved: bool,
}

impl BacklogClaim {
    pub(super) fn resolve(mut self) {
        self.resolved = true;
        if let Ok(mut delivered) = self.ledger.delivered.lock() {
            delivered.push(self.position);
        }
        self.ledger.changed.notify_one();
    }

    /// Whether its pass has ended (the lanes drop it unsent).
    pub(super) fn is_stale(&self, current_generation: u64) -> bool {
        self.generation != current_generation
    }
}

impl Drop for BacklogClaim {
    fn drop(&mut self) {
        if !self.resolved {
            self.ledger.dropped.fetch_add(1, Ordering::AcqRel);
            self.ledger.changed.notify_one();
        }
    }
}

/// What became of the events a drainer handed out.
#[derive(Debug, Default)]
struct Ledger {
    /// Delivered or parked, row not yet deleted.
    delivered: Mutex<Vec<Position>>,
    /// Let go unsent (their rows stay).
    dropped: AtomicU64,
    changed: Notify,
}

/// See the module documentation.
pub(super) struct Drainer {
    pub(super) subscription: usize,
    pub(super) store: Arc<BacklogStore>,
    pub(super) context: Arc<SubscriptionContext>,
    pub(super) shared: Arc<Shared>,
    pub(super) to_reader: mpsc::Sender<DrainMessage>,
    pub(super) loads: Vec<Arc<LaneLoad>>,
    pub(super) closing: CancellationToken,
}

/// Counts of one pass: rows handed out, and of those, deleted or dropped.
#[derive(Debug, Default)]
struct PassCount {
    handed: u64,
    deleted: u64,
    dropped_at_start: u64,
}

impl Drainer {
    pub(super) async fn run(self) {
        let ledger = Arc::new(Ledger::default());
        loop {
            if self.closing.is_cancelled() || self.shared.abandon.is_cancelled() {
                self.finish(&ledger).await;
                return;
            }
            self.delete_delivered(&ledger).await;
            let gate = &self.context.gate;
            if !gate.is_backlogged() || gate.is_paused() {
                self.wait_for_change(&ledger, None).await;
                continue;
            }
            if gate.breaker.is_open() {
                self.probe(&ledger).await;
                continue;
            }
            self.pass(&ledger).await;
        }
    }

    /// Waits until the gate or the ledger changes, delivery closes, or
    /// `timeout` passes.
    async fn wait_for_change(&self, ledger: &Ledger, timeout: Option<Duration>) {
        let timeout = timeout.unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = self.closing.cancelled() => {}
            _ = self.shared.abandon.cancelled() => {}
            _ = self.context.gate.changed() => {}
            _ = ledger.changed.notified() => {}
            _ = tokio::time::sleep(timeout) => {}
        }
    }

    /// Waits until every lane is idle; false when delivery closed first.
    async fn lanes_idle(&self) -> bool {
        for load in &self.loads {
            tokio::select! {
                _ = self.closing.cancelled() => return false,
                _ = self.shared.abandon.cancelled() => return false,
                _ = load.wait_idle() => {}
            }
        }
        true
    }

    /// Deletes the rows of delivered events; returns how many were deleted.
    async fn delete_delivered(&self, ledger: &Ledger) -> u64 {
        let positions: Vec<Position> = match ledger.delivered.lock() {
            Ok(mut delivered) => std::mem::take(&mut *delivered),
            Err(_) => return 0,
        };
        if positions.is_empty() {
            return 0;
        }
        loop {
            match self.store.delete(&positions).await {
                Ok(deleted) => {
                    if let Some(handles) = &self.context.metrics.handles {
                        handles.backlog_events.dec_by(deleted as i64);
                        if handles.backlog_events.get() <= 0 {
                            handles.backlog_events.set(0);
                            handles.backlog_bytes.set(0);
                        }
                    }
                    return positions.len() as u64;
                }
                Err(error) => {
                    tracing::warn!(subscription = %self.context.gate.name, %error, "cannot delete delivered events from walhook.backlog; retrying (they would be sent again after a restart)");
                    if retry::pause(STATEMENT_RETRY, &self.shared.abandon)
                        .await
                        .is_break()
                    {
                        return 0;
                    }
                }
            }
        }
    }

    /// At shutdown: once the lanes finished (or were abandoned), deletes
    /// what they delivered, so a restart does not send it again.
    async fn finish(&self, ledger: &Ledger) {
        for load in &self.loads {
            tokio::select! {
                _ = self.shared.abandon.cancelled() => break,
                _ = load.wait_idle() => {}
            }
        }
        self.delete_delivered(ledger).await;
    }

    /// Reads the backlog from the start and hands every event out, until
    /// it has caught up and the reader went live, or the gate closes.
    async fn pass(&self, ledger: &Arc<Ledger>) {
        if !self.lanes_idle().await {
            return;
        }
        let gate = &self.context.gate;
        let mut count = PassCount {
            deleted: 0,
            handed: 0,
            dropped_at_start: ledger.dropped.load(Ordering::Acquire),
        };
        count.deleted += self.delete_delivered(ledger).await;
        let generation = gate.next_generation();
        let mut cursor: Option<Position> = None;
        loop {
            if self.closing.is_cancelled() || gate.holds_back() || !gate.is_backlogged() {
                return;
            }
            count.deleted += self.delete_delivered(ledger).await;
            // Read before the rows: every event committed by then is in
            // what the statement sees.
            let committed = gate.committed();
            let rows = match self.store.read_after(cursor, PAGE_EVENTS).await {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::warn!(subscription = %gate.name, %error, "cannot read walhook.backlog; retrying");
                    self.wait_for_change(ledger, Some(STATEMENT_RETRY)).await;
                    continue;
                }
            };
            if rows.is_empty() {
                if let Some(position) = cursor
                    && self.missed_rows(position, &count, ledger).await
                {
                    // Rows the pass went past (a change read again after a
                    // restart, stored behind the cursor): start over once
                    // what is out has resolved.
                    while self.outstanding(&count, ledger) > 0 && !self.closing.is_cancelled() {
                        self.wait_for_change(ledger, Some(CAUGHT_UP_RECHECK)).await;
                        count.deleted += self.delete_delivered(ledger).await;
                    }
                    return;
                }
                let caught_up = DrainMessage::CaughtUp {
                    subscription: self.subscription,
                    through: committed,
                };
                if self.send(caught_up).await.is_break() {
                    return;
                }
                self.wait_for_change(ledger, Some(CAUGHT_UP_RECHECK)).await;
                continue;
            }
            for row in rows {
                cursor = Some(row.position);
                if self.hand_out(row, generation, ledger).await.is_break() {
                    return;
                }
                count.handed += 1;
            }
        }
    }

    /// Events handed out in this pass whose rows are still there.
    fn outstanding(&self, count: &PassCount, ledger: &Ledger) -> u64 {
        let dropped = ledger
            .dropped
            .load(Ordering::Acquire)
            .saturating_sub(count.dropped_at_start);
        count
            .handed
            .saturating_sub(count.deleted)
            .saturating_sub(dropped)
    }

    /// Whether the backlog holds rows at or before `cursor` beyond those
    /// handed out and not yet deleted.
    async fn missed_rows(&self, cursor: Position, count: &PassCount, ledger: &Ledger) -> bool {
        match self.store.count_up_to(cursor).await {
            Ok(stored) => u64::try_from(stored).unwrap_or(0) > self.outstanding(count, ledger),
            Err(_) => false,
        }
    }

    /// Pays an event's budget share and sends it to the reader.
    async fn hand_out(
        &self,
        row: StoredEvent,
        generation: u64,
        ledger: &Arc<Ledger>,
    ) -> ControlFlow<()> {
        let cost = budget_cost(&row.payload);
        let share = tokio::select! {
            _ = self.closing.cancelled() => return ControlFlow::Break(()),
            share = Arc::clone(&self.context.budget).acquire_many_owned(cost) => share,
        };
        let Ok(share) = share else {
            return ControlFlow::Break(());
        };
        share.forget();
        let event = outbound(&self.context.gate.name, row, generation, ledger);
        let sent = self
            .send(DrainMessage::Event {
                subscription: self.subscription,
                event,
                cost,
            })
            .await;
        if sent.is_break() {
            self.context.budget.add_permits(cost as usize);
        }
        sent
    }

    async fn send(&self, message: DrainMessage) -> ControlFlow<()> {
        tokio::select! {
            _ = self.closing.cancelled() => ControlFlow::Break(()),
            sent = self.to_reader.send(message) => match sent {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            },
        }
    }

    /// Sends the oldest waiting event once the probe is due: answered 2xx,
    /// it is deleted and the circuit closes; answered with a permanent
    /// rejection, it is parked as a dead letter (the endpoint answers; that
    /// event is the problem) and the circuit closes; otherwise the circuit
    /// stays open until the next probe.
    async fn probe(&self, ledger: &Arc<Ledger>) {
        let gate = &self.context.gate;
        let due = gate.breaker.next_probe_at();
        tokio::select! {
            _ = self.closing.cancelled() => return,
            _ = gate.changed() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        if !gate.breaker.is_open() || gate.is_paused() || !self.lanes_idle().await {
            return;
        }
        self.delete_delivered(ledger).await;
        let oldest = match self.store.read_after(None, 1).await {
            Ok(mut rows) => rows.pop(),
            Err(error) => {
                tracing::warn!(subscription = %gate.name, %error, "cannot read walhook.backlog for a probe; retrying");
                gate.breaker.probed();
                return;
            }
        };
        let Some(row) = oldest else {
            // Nothing to probe with: live traffic will tell.
            gate.close_circuit();
            return;
        };
        let event = outbound(&gate.name, row, gate.generation(), ledger);
        let endpoint = &self.context.endpoint;
        let request = RequestBody::for_events(std::slice::from_ref(&event), endpoint.batched());
        let outcome = {
            let Ok(_permit) = self.context.in_flight.acquire().await else {
                return;
            };
            tokio::select! {
                _ = self.shared.abandon.cancelled() => return,
                outcome = endpoint.send(&self.shared.client, &request, self.shared.config.timeout) => outcome,
            }
        };
        if let Some(handles) = &self.context.metrics.handles {
            handles.response(match outcome.status() {
                Some(status) => ResponseClass::of_status(status),
                None => ResponseClass::Transport,
            });
        }
        match outcome.verdict() {
            Verdict::Delivered => {
                if let Some(handles) = &self.context.metrics.handles {
                    handles.delivered.inc();
                }
                tracing::info!(subscription = %gate.name, "endpoint answers again; draining its backlog");
                event.claim.resolve();
            }
            Verdict::GiveUp => {
                let letter = DeadLetter {
                    subscription: &gate.name,
                    event_id: event.id.as_str(),
                    payload: &event.body,
                    last_status: outcome.status(),
                    last_error: &outcome.to_string(),
                    attempts: 1,
                    first_attempt_at: std::time::SystemTime::now(),
                };
                let stored = retry::until_ok(
                    &self.shared.config.backoff,
                    STATEMENT_RETRY,
                    &self.shared.abandon,
                    || self.shared.dead_letters.store(&letter),
                    |error, _| tracing::error!(subscription = %gate.name, %error, "cannot store a dead letter"),
                )
                .await;
                if stored.is_break() {
                    return;
                }
                if let Some(handles) = &self.context.metrics.handles {
                    handles.dead_lettered.inc();
                }
                tracing::warn!(subscription = %gate.name, event_id = %event.id, failure = %outcome, "the probe event was rejected; parked as a dead letter, and the endpoint, which answers, gets the rest");
                event.claim.resolve();
            }
            Verdict::Retry { .. } => {
                gate.breaker.probed();
                tracing::debug!(subscription = %gate.name, failure = %outcome, "probe failed; the circuit stays open");
                return;
            }
        }
        self.delete_delivered(ledger).await;
        gate.close_circuit();
    }
}

/// An event read back from the backlog, for the lanes. Its id is made again
/// from its place in the stream, as it was made live.
fn outbound(
    subscription: &str,
    row: StoredEvent,
    generation: u64,
    ledger: &Arc<Ledger>,
) -> Outbound {
    Outbound {
        id: event_id(subscription, Lsn(row.position.commit_lsn), row.position.ordinal),
        position: row.position,
        ordering_key: row.ordering_key,
        previous_ordering_key: row.previous_ordering_key,
        body: row.payload,
        commit_time_micros: row.commit_time_micros,
        park: row.park_reason.map(Arc::from),
        barrier: row.barrier,
        claim: Claim::Backlog(BacklogClaim {
            position: row.position,
            generation,
            ledger: Arc::clone(ledger),
            resolved: false,
        }),
    }
}

