//! A subscription's drainer: reads its backlog back in commit order and
//! hands the events to the reader, which places them in the lanes like live
//! ones (so per-key order, barriers and batching work the same); deletes
//! each row once its event is delivered or parked; tells the reader when it
//! has read everything, so the subscription may go back to live delivery.
//! While the circuit is open it sends the probes: the oldest waiting event,
//! one at a time, every `probe_interval`, and the first one answered closes
//! the circuit.
//!
//! A drain *pass* starts only when the subscription's lanes are idle and
//! every event sent to the backlog is stored (so whatever lanes handed back
//! is there), reads from the start, and ends when the circuit opens or an
//! operator pauses. Rows are appended in commit order, and after a restart
//! nothing is read before the changes the slot sends again are stored
//! ([`Drainer::horizon`]), so no row ever lands behind a pass's cursor. Events of
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
use crate::retry;
use crate::store::backlog::{BacklogError, BacklogStore, Position, StoredEvent};
use crate::store::dead_letters::DeadLetter;
use crate::telemetry::ResponseClass;

/// Messages the drainers may have queued for the reader.
pub(super) const CHANNEL_EVENTS: usize = 1024;
/// Rows read per statement, at most…
const PAGE_EVENTS: i64 = 1000;
/// … and about this many payload bytes (the next page is sized by the
/// last one's rows), so large payloads do not make a large page.
const PAGE_BYTES: usize = 4 << 20;
/// How long a caught-up drainer waits before it looks again unasked.
const CAUGHT_UP_RECHECK: Duration = Duration::from_secs(1);
/// How often a drainer waiting for the reader looks again.
const HORIZON_POLL: Duration = Duration::from_millis(20);
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
    /// Its payload's size, for the backlog-bytes gauge.
    bytes: usize,
    generation: u64,
    ledger: Arc<Ledger>,
    resolved: bool,
}

impl BacklogClaim {
    pub(super) fn resolve(mut self) {
        self.resolved = true;
        if let Ok(mut delivered) = self.ledger.delivered.lock() {
            delivered.push((self.position, self.bytes));
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
    /// Delivered or parked, row not yet deleted (with payload sizes).
    delivered: Mutex<Vec<(Position, usize)>>,
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
    /// The position of the newest event the backlog held when delivery
    /// started (0: none). The slot may send changes again from before it
    /// (their claims were in memory when walhook stopped): nothing is read
    /// back until the reader has passed it and they are stored, or a
    /// replayed change would arrive after a newer one of its key.
    pub(super) horizon: u64,
    /// How far the reader has read and handed everything to delivery (the
    /// end of the last transaction, or an idle keepalive's position).
    pub(super) reader_position: Arc<AtomicU64>,
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
        let mut caught_up_with_stream = false;
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
            if !caught_up_with_stream {
                caught_up_with_stream = self.past_horizon(&ledger).await;
                continue;
            }
            if gate.breaker.is_open() {
                self.probe(&ledger).await;
                continue;
            }
            self.pass(&ledger).await;
            if gate.holds_back() {
                // What it handed out and was not sent is stale now: its
                // rows stay for the next pass.
                gate.next_generation();
            }
        }
    }

    /// Whether the reader has passed [`Drainer::horizon`] and everything it
    /// sent to the backlog up to then is stored; waits a little otherwise.
    async fn past_horizon(&self, ledger: &Ledger) -> bool {
        if self.reader_position.load(Ordering::Acquire) <= self.horizon {
            self.wait_for_change(ledger, Some(HORIZON_POLL)).await;
            return false;
        }
        self.all_spills_stored(ledger).await
    }

    /// Waits until every event sent to the backlog so far is stored (lanes
    /// hand events back to it when the circuit opens; a pass must see them).
    /// False when delivery closed first.
    async fn all_spills_stored(&self, ledger: &Ledger) -> bool {
        let gate = &self.context.gate;
        let requested = gate.requested();
        while gate.committed() < requested {
            if self.closing.is_cancelled() || self.shared.abandon.is_cancelled() {
                return false;
            }
            self.wait_for_change(ledger, Some(HORIZON_POLL)).await;
        }
        true
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

    /// Waits until every lane is idle at once (an event may reach a lane
    /// already looked at, so it sweeps until one sweep waited for none);
    /// false when delivery closed first.
    async fn lanes_idle(&self) -> bool {
        loop {
            let mut waited = false;
            for load in &self.loads {
                if load.is_idle() {
                    continue;
                }
                waited = true;
                tokio::select! {
                    _ = self.closing.cancelled() => return false,
                    _ = self.shared.abandon.cancelled() => return false,
                    _ = load.wait_idle() => {}
                }
            }
            if !waited {
                return true;
            }
        }
    }

    /// Deletes the rows of delivered events; returns how many were deleted.
    async fn delete_delivered(&self, ledger: &Ledger) -> u64 {
        let delivered: Vec<(Position, usize)> = match ledger.delivered.lock() {
            Ok(mut delivered) => std::mem::take(&mut *delivered),
            Err(_) => return 0,
        };
        if delivered.is_empty() {
            return 0;
        }
        let positions: Vec<Position> = delivered.iter().map(|(position, _)| *position).collect();
        let bytes: usize = delivered.iter().map(|(_, bytes)| bytes).sum();
        loop {
            match self.store.delete(&positions).await {
                Ok(deleted) => {
                    if let Some(handles) = &self.context.metrics.handles {
                        handles.backlog_events.dec_by(deleted as i64);
                        handles.backlog_bytes.dec_by(bytes as i64);
                        if handles.backlog_events.get() <= 0 || handles.backlog_bytes.get() < 0 {
                            handles.backlog_events.set(handles.backlog_events.get().max(0));
                            handles.backlog_bytes.set(handles.backlog_bytes.get().max(0));
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
        let gate = &self.context.gate;
        // Anything of an earlier pass still on its way is stale from here.
        let generation = gate.next_generation();
        if !self.lanes_idle().await || !self.all_spills_stored(ledger).await {
            return;
        }
        // Rows delivered by earlier passes go before this one reads.
        self.delete_delivered(ledger).await;
        let mut count = PassCount {
            deleted: 0,
            handed: 0,
            dropped_at_start: ledger.dropped.load(Ordering::Acquire),
        };
        let mut cursor: Option<Position> = None;
        let mut page = PAGE_EVENTS;
        // The next page, read while the last one was handed out, with the
        // count of events committed to the backlog before that read began.
        let mut prefetched: Option<(u64, Result<Vec<StoredEvent>, BacklogError>)> = None;
        loop {
            if self.closing.is_cancelled() || gate.holds_back() || !gate.is_backlogged() {
                return;
            }
            let (committed, read) = match prefetched.take() {
                Some(prefetched) => prefetched,
                None => {
                    count.deleted += self.delete_delivered(ledger).await;
                    self.read_page(cursor, page).await
                }
            };
            let rows = match read {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::warn!(subscription = %gate.name, %error, "cannot read walhook.backlog; retrying");
                    self.wait_for_change(ledger, Some(STATEMENT_RETRY)).await;
                    continue;
                }
            };
            let Some(last) = rows.last().map(|row| row.position) else {
                if self.outstanding(&count, ledger) > 0 {
                    // Going live now could let a new event of a key pass
                    // a drained one not yet deleted (sent again after a
                    // crash, after it): wait until they are gone.
                    self.wait_for_change(ledger, Some(CAUGHT_UP_RECHECK)).await;
                    count.deleted += self.delete_delivered(ledger).await;
                    continue;
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
            };
            let bytes: usize = rows.iter().map(|row| row.payload.len()).sum();
            page = next_page(rows.len(), bytes);
            cursor = Some(last);
            let handed = rows.len() as u64;
            // The lanes get this page while the next one is read and the
            // delivered rows are deleted: statements never leave the lanes
            // without work.
            let (handed_out, next, deleted) = tokio::join!(
                self.hand_out_all(rows, generation, ledger),
                self.read_page(cursor, page),
                self.delete_delivered(ledger),
            );
            count.deleted += deleted;
            if handed_out.is_break() {
                return;
            }
            count.handed += handed;
            prefetched = Some(next);
        }
    }

    /// Reads a page after `cursor`, with the count of events committed to
    /// the backlog before the read began (all of them are in what it sees).
    async fn read_page(
        &self,
        cursor: Option<Position>,
        page: i64,
    ) -> (u64, Result<Vec<StoredEvent>, BacklogError>) {
        let committed = self.context.gate.committed();
        (committed, self.store.read_after(cursor, page).await)
    }

    /// Hands out a page's events in order.
    async fn hand_out_all(
        &self,
        rows: Vec<StoredEvent>,
        generation: u64,
        ledger: &Arc<Ledger>,
    ) -> ControlFlow<()> {
        let gate = &self.context.gate;
        for row in rows {
            if gate.holds_back() || !gate.is_backlogged() {
                return ControlFlow::Break(());
            }
            self.hand_out(row, generation, ledger).await?;
        }
        ControlFlow::Continue(())
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
        let event = outbound(row, generation, ledger);
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
        let generation = gate.next_generation();
        let due = gate.breaker.next_probe_at();
        tokio::select! {
            _ = self.closing.cancelled() => return,
            _ = gate.changed() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        if !gate.breaker.is_open()
            || gate.is_paused()
            || !self.lanes_idle().await
            || !self.all_spills_stored(ledger).await
        {
            return;
        }
        self.delete_delivered(ledger).await;
        let oldest = loop {
            let row = match self.store.read_after(None, 1).await {
                Ok(mut rows) => rows.pop(),
                Err(error) => {
                    tracing::warn!(subscription = %gate.name, %error, "cannot read walhook.backlog for a probe; retrying");
                    gate.breaker.probed();
                    return;
                }
            };
            // An event to be parked is parked at its turn, never sent.
            match row {
                Some(row) if row.park_reason.is_some() => {
                    let event = outbound(row, generation, ledger);
                    let reason = event.park.clone().unwrap_or_default();
                    if self.park(event, None, &reason, None).await.is_break() {
                        return;
                    }
                    self.delete_delivered(ledger).await;
                }
                row => break row,
            }
        };
        let Some(row) = oldest else {
            // Nothing to probe with: live traffic will tell.
            gate.close_circuit();
            return;
        };
        let event = outbound(row, generation, ledger);
        let endpoint = &self.context.endpoint;
        let request = RequestBody::for_events(std::slice::from_ref(&event), endpoint.batched());
        let outcome = {
            let Ok(_permit) = self.context.in_flight.acquire().await else {
                return;
            };
            tokio::select! {
                _ = self.shared.abandon.cancelled() => return,
                outcome = endpoint.send(&request, self.shared.config.timeout) => outcome,
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
                    let now = crate::pgtime::micros_since_2000(std::time::SystemTime::now());
                    let latency = now.saturating_sub(event.commit_time_micros).max(0);
                    handles.latency.observe(latency as f64 / 1e6);
                }
                tracing::info!(subscription = %gate.name, "endpoint answers again; draining its backlog");
                event.claim.resolve();
            }
            Verdict::GiveUp => {
                let failure = outcome.to_string();
                tracing::warn!(subscription = %gate.name, event_id = %event.id, %failure, "the probe event was rejected; parked as a dead letter, and the endpoint, which answers, gets the rest");
                if self
                    .park(event, outcome.status(), &failure, outcome.response_body())
                    .await
                    .is_break()
                {
                    return;
                }
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

    /// Stores `event` as a dead letter (retrying until it works) and
    /// resolves its claim. `Break` when abandoned.
    async fn park(
        &self,
        event: Outbound,
        status: Option<u16>,
        error: &str,
        response: Option<&str>,
    ) -> ControlFlow<()> {
        let gate = &self.context.gate;
        let letter = DeadLetter {
            subscription: &gate.name,
            event_id: event.id.as_str(),
            payload: &event.body,
            last_status: status,
            last_error: error,
            last_response: response,
            attempts: u32::from(status.is_some()),
            first_attempt_at: std::time::SystemTime::now(),
            mac: event.dead_letter_seal(&self.context.endpoint),
        };
        retry::until_ok(
            &self.shared.config.backoff,
            STATEMENT_RETRY,
            &self.shared.abandon,
            || self.shared.dead_letters.store(&letter),
            |error, _| tracing::error!(subscription = %gate.name, %error, "cannot store a dead letter"),
        )
        .await?;
        if let Some(handles) = &self.context.metrics.handles {
            handles.dead_lettered.inc();
        }
        event.claim.resolve();
        ControlFlow::Continue(())
    }
}

/// How many rows to read next, after a page of `rows` rows and `bytes`
/// payload bytes.
fn next_page(rows: usize, bytes: usize) -> i64 {
    let average = (bytes / rows.max(1)).max(1);
    i64::try_from(PAGE_BYTES / average)
        .unwrap_or(PAGE_EVENTS)
        .clamp(1, PAGE_EVENTS)
}

/// An event read back from the backlog, for the lanes (its id was made
/// again from its place in the stream, as it was made live).
fn outbound(
    row: StoredEvent,
    generation: u64,
    ledger: &Arc<Ledger>,
) -> Outbound {
    let bytes = row.payload.len();
    Outbound {
        id: row.event_id,
        position: row.position,
        ordering_key: row.ordering_key,
        previous_ordering_key: row.previous_ordering_key,
        body: row.payload,
        commit_time_micros: row.commit_time_micros,
        park: row.park_reason.map(Arc::from),
        barrier: row.barrier,
        seal_failed: row.seal_failed,
        claim: Claim::Backlog(BacklogClaim {
            position: row.position,
            bytes,
            generation,
            ledger: Arc::clone(ledger),
            resolved: false,
        }),
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_shrink_for_large_payloads_and_never_vanish() {
        assert_eq!(next_page(1000, 400_000), PAGE_EVENTS, "small rows: full pages");
        assert_eq!(next_page(10, 10 << 20), 4, "1 MiB rows: four a page");
        assert_eq!(next_page(1, 100 << 20), 1, "a huge row still gets read");
        assert_eq!(next_page(0, 0), PAGE_EVENTS, "an empty page keeps the size");
    }
}
