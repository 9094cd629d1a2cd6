//! A subscription's spiller: appends the events sent to its backlog, in
//! the order they come, a batch per statement, and only once a batch is
//! committed resolves the claims of its changes (so the slot may pass them)
//! and gives back their share of the spill budget.
//!
//! It retries a failed append until it works (the slot stays behind the
//! events meanwhile, which is the one way the backlog's database can hold
//! the stream back); it never drops an event. It does not decide which
//! events go to the backlog (`deliver`) nor read them back (`drain`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use super::gate::Gate;
use super::{Claim, Outbound, Shared};
use crate::retry;
use crate::store::backlog::{BacklogStore, StoredEvent};
use crate::telemetry::SubscriptionMetrics;

/// The most events one append writes.
const APPEND_EVENTS: usize = 2000;
/// The shortest wait between attempts at a failing append.
const APPEND_RETRY_FLOOR: Duration = Duration::from_millis(100);

/// An event on its way into the backlog, with its share of the spill budget
/// (none for events a lane gives back: the lanes' budget bounded those).
#[derive(Debug)]
pub(super) struct SpillItem {
    pub(super) event: Outbound,
    pub(super) cost: u32,
}

/// Appends what arrives until every sender is gone or delivery is abandoned.
pub(super) async fn run_spiller(
    mut receiver: mpsc::UnboundedReceiver<Vec<SpillItem>>,
    store: Arc<BacklogStore>,
    gate: Arc<Gate>,
    spill_budget: Arc<Semaphore>,
    metrics: Option<SubscriptionMetrics>,
    shared: Arc<Shared>,
) {
    let mut batch: Vec<SpillItem> = Vec::new();
    loop {
        if batch.is_empty() {
            let chunk = tokio::select! {
                biased;
                _ = shared.abandon.cancelled() => return,
                chunk = receiver.recv() => match chunk {
                    Some(chunk) => chunk,
                    None => return,
                },
            };
            batch.extend(chunk);
        }
        // Whatever else is already waiting joins this append.
        while batch.len() < APPEND_EVENTS {
            match receiver.try_recv() {
                Ok(chunk) => batch.extend(chunk),
                Err(_) => break,
            }
        }
        let take = batch.len().min(APPEND_EVENTS);
        let items: Vec<SpillItem> = batch.drain(..take).collect();
        let stored: Vec<StoredEvent> = items.iter().map(|item| stored(&item.event)).collect();
        let appended = retry::until_ok(
            &shared.config.backoff,
            APPEND_RETRY_FLOOR,
            &shared.abandon,
            || store.append(&stored),
            |error, failures| {
                if failures == 1 || failures.is_power_of_two() {
                    tracing::error!(subscription = %gate.name, %error, failures, "cannot append to walhook.backlog; retrying (the slot stays behind these events until this works)");
                }
            },
        )
        .await;
        let std::ops::ControlFlow::Continue(added) = appended else {
            return;
        };
        let mut cost = 0usize;
        for item in items {
            cost += item.cost as usize;
            // An event read back from the backlog never comes here (its row
            // is there already); a change's claim resolves now.
            item.event.claim.resolve_if_checkpoint();
        }
        spill_budget.add_permits(cost);
        gate.spill_committed(stored.len() as u64);
        if let Some(metrics) = &metrics {
            let bytes: usize = stored.iter().map(|event| event.payload.len()).sum();
            // Events stored already (read again after a restart) add no
            // row; their bytes are then counted once more, until the next
            // start reads the sizes again.
            metrics.backlog_bytes.inc_by(bytes as i64);
            metrics.backlog_events.inc_by(added as i64);
        }
    }
}

/// The backlog row of an event.
fn stored(event: &Outbound) -> StoredEvent {
    StoredEvent {
        position: event.position,
        event_id: event.id,
        ordering_key: event.ordering_key,
        previous_ordering_key: event.previous_ordering_key,
        barrier: event.barrier,
        park_reason: event.park.as_deref().map(str::to_owned),
        commit_time_micros: event.commit_time_micros,
        payload: event.body.clone(),
        seal_failed: event.seal_failed,
    }
}

impl Claim {
    /// Resolves a change's claim; an event from the backlog is let go (its
    /// row stays until it is delivered).
    fn resolve_if_checkpoint(self) {
        if let Claim::Checkpoint(ack) = self {
            ack.resolve();
        }
    }
}
