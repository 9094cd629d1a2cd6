//! One lane's task: takes its events in order, delivers each request (one
//! event, or a batch) with retries, parks what cannot be delivered as dead
//! letters, and only then resolves the events' claims and gives their
//! budget back. The order of a lane is the order of its key's changes: a
//! request is retried (or parked) before the next one goes.
//!
//! It does not choose lanes or bound memory (`deliver`), nor decide what an
//! HTTP answer means (`policy`).

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::gate::Gate;
use super::http::{Attempt, Endpoint};
use super::policy::{self, Verdict};
use super::{LaneLoad, Outbound, Queued, Shared, SubscriptionContext};
use crate::config::BatchConfig;
use crate::retry;
use crate::store::dead_letters::DeadLetter;
use crate::telemetry::{ResponseClass, SubscriptionMetrics};

/// The shortest wait between attempts to store a dead letter.
const DEAD_LETTER_RETRY_FLOOR: Duration = Duration::from_millis(100);


/// Takes events from one lane and delivers them one request at a time,
/// until the lane is closed or abandoned.
pub(super) async fn run_lane(
    mut receiver: mpsc::UnboundedReceiver<Vec<Queued>>,
    load: Arc<LaneLoad>,
    context: Arc<SubscriptionContext>,
    shared: Arc<Shared>,
) {
    let budget = &context.budget;
    let mut queue: VecDeque<Queued> = VecDeque::new();
    // Grows to the largest batch this lane actually sends and is reused; not
    // sized from `batch.max_events`, which would reserve the configured
    // maximum in every lane whether or not batches ever get that large.
    let mut events = Vec::new();
    loop {
        let Some(first) = queue.pop_front() else {
            let chunk = tokio::select! {
                biased;
                _ = shared.abandon.cancelled() => return,
                next = receiver.recv() => match next {
                    Some(chunk) => chunk,
                    None => return,
                },
            };
            queue.extend(chunk);
            continue;
        };
        if first.event.is_stale(context.gate.generation()) {
            // Read back by a drain pass that has ended: its row stays for
            // the next pass.
            budget.add_permits(first.cost as usize);
            load.finished(1);
            continue;
        }
        if context.spill.is_some() && context.gate.holds_back() {
            // Paused, or the circuit is open: the backlog takes it (once the
            // reader sends new events there too), and the checkpoint may
            // pass it once it is stored there.
            let mut events = vec![first.event];
            match spill_if_held_back(&context, &shared, &mut events).await {
                ControlFlow::Break(()) => return,
                ControlFlow::Continue(true) => {
                    budget.add_permits(first.cost as usize);
                    load.finished(1);
                    continue;
                }
                ControlFlow::Continue(false) => {}
            }
            let Some(event) = events.pop() else {
                continue;
            };
            queue.push_front(Queued {
                event,
                cost: first.cost,
                payload: 0..0,
            });
            continue;
        }
        if let Some(reason) = first.event.park.clone() {
            // Parked at its turn in the lane, so the key's order holds.
            let mut parked = vec![first.event];
            let stored = park_as_dead_letters(
                &context.endpoint,
                &shared,
                &mut parked,
                None,
                &reason,
                0,
                std::time::SystemTime::now(),
            )
            .await;
            if stored.is_break() {
                return;
            }
            if let Some(handles) = &context.metrics.handles {
                handles.dead_lettered.inc();
            }
            budget.add_permits(first.cost as usize);
            load.finished(1);
            continue;
        }
        // The budget shares of the events being delivered.
        let mut held = first.cost as usize;
        events.push(first.event);
        if context.batch.max_events > 1 {
            held += fill_batch(
                &mut receiver,
                &mut queue,
                &mut events,
                context.batch,
                context.gate.generation(),
            )
            .await;
        }
        let count = events.len();
        if deliver(&context, &shared, &mut events).await.is_break() {
            return;
        }
        budget.add_permits(held);
        load.finished(count);
    }
}

/// Adds queued events to a batch until it is full or `max_wait` passes;
/// returns the budget shares of the events it added.
async fn fill_batch(
    receiver: &mut mpsc::UnboundedReceiver<Vec<Queued>>,
    queue: &mut VecDeque<Queued>,
    events: &mut Vec<Outbound>,
    batch: BatchConfig,
    generation: u64,
) -> usize {
    // Not `now + max_wait`: a max_wait of centuries, which the config
    // accepts, would overflow the clock and panic; a year is as long.
    let now = tokio::time::Instant::now();
    let deadline = now
        .checked_add(batch.max_wait)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
    let mut held = 0;
    while events.len() < batch.max_events {
        if let Some(queued) = queue.pop_front() {
            if queued.event.park.is_some() || queued.event.is_stale(generation) {
                // Goes alone (or not at all), at its turn.
                queue.push_front(queued);
                break;
            }
            held += queued.cost as usize;
            events.push(queued.event);
            continue;
        }
        match receiver.try_recv() {
            Ok(chunk) => queue.extend(chunk),
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(chunk)) => queue.extend(chunk),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
    held
}

/// One subscription's metric handles and failure summary, shared by its
/// lanes.
pub(super) struct LaneMetrics {
    pub(super) handles: Option<SubscriptionMetrics>,
    pub(super) failures: FailureLog,
}

/// Summarises an endpoint's failures: one warning when a streak starts, then
/// at most one every [`FAILURE_LOG_INTERVAL`] with the count, and one line
/// when it recovers — not a line per attempt.
#[derive(Default)]
pub(super) struct FailureLog {
    state: std::sync::Mutex<FailureStreak>,
}

#[derive(Default)]
struct FailureStreak {
    failures: u64,
    unreported: u64,
    last_report: Option<std::time::Instant>,
}

/// How often an ongoing failure streak is logged.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl FailureLog {
    /// Counts a failed request; `last` when no attempt follows (the events
    /// are parked), which the log line says instead of a retry.
    fn failed(&self, endpoint: &str, failure: &Attempt, last: bool) {
        let Ok(mut streak) = self.state.lock() else {
            return;
        };
        streak.failures += 1;
        streak.unreported += 1;
        let due = streak
            .last_report
            .is_none_or(|last| last.elapsed() >= FAILURE_LOG_INTERVAL);
        if due {
            let next = if last {
                "no attempts left: parking as dead letters"
            } else {
                "retrying with backoff"
            };
            tracing::warn!(subscription = %endpoint, %failure, failures = streak.unreported, total = streak.failures, "deliveries failing; {next}");
            streak.unreported = 0;
            streak.last_report = Some(std::time::Instant::now());
        }
    }

    fn succeeded(&self, endpoint: &str) {
        let Ok(mut streak) = self.state.lock() else {
            return;
        };
        if streak.failures > 0 {
            tracing::info!(subscription = %endpoint, failures = streak.failures, "deliveries succeed again");
            *streak = FailureStreak::default();
        }
    }
}

/// Delivers `events` as one request, retrying, and resolves their claims once
/// delivered or dead-lettered. `Break` when abandoned.
async fn deliver(
    context: &SubscriptionContext,
    shared: &Shared,
    events: &mut Vec<Outbound>,
) -> ControlFlow<()> {
    let endpoint = &*context.endpoint;
    let metrics = &context.metrics;
    let breaker = &context.gate.breaker;
    let request = super::http::RequestBody::for_events(events, endpoint.batched());
    let max_attempts = shared.config.max_attempts;
    let first_attempt_at = std::time::SystemTime::now();
    let mut last_failure = None;
    let mut attempts_made = 0;
    for attempt in 1..=max_attempts {
        attempts_made = attempt;
        let outcome = {
            let permit = tokio::select! {
                biased;
                _ = shared.abandon.cancelled() => return ControlFlow::Break(()),
                permit = context.in_flight.acquire() => permit,
            };
            let Ok(_permit) = permit else {
                return ControlFlow::Break(());
            };
            shared.metrics.requests_in_flight.inc();
            let outcome = tokio::select! {
                biased;
                _ = shared.abandon.cancelled() => None,
                outcome = endpoint.send(&request, shared.config.timeout) => Some(outcome),
            };
            shared.metrics.requests_in_flight.dec();
            match outcome {
                Some(outcome) => outcome,
                None => return ControlFlow::Break(()),
            }
        };
        if let Some(handles) = &metrics.handles {
            handles.response(match outcome.status() {
                Some(status) => ResponseClass::of_status(status),
                None => ResponseClass::Transport,
            });
            if attempt > 1 {
                handles.retries.inc();
            }
        }
        let not_before = match outcome.verdict() {
            Verdict::Delivered => {
                breaker.succeeded();
                metrics.failures.succeeded(&endpoint.name);
                if let Some(handles) = &metrics.handles {
                    handles.delivered.inc_by(events.len() as u64);
                    let now = crate::pgtime::micros_since_2000(std::time::SystemTime::now());
                    for event in events.iter() {
                        let latency = now.saturating_sub(event.commit_time_micros).max(0);
                        handles.latency.observe(latency as f64 / 1e6);
                    }
                }
                for event in events.drain(..) {
                    event.claim.resolve();
                }
                return ControlFlow::Continue(());
            }
            Verdict::GiveUp => {
                // A definite answer about this event: the endpoint works.
                breaker.succeeded();
                last_failure = Some(outcome);
                break;
            }
            Verdict::Retry { not_before } => not_before,
        };
        metrics
            .failures
            .failed(&endpoint.name, &outcome, attempt == max_attempts);
        tracing::debug!(subscription = %endpoint.name, attempt, failure = %outcome, "delivery failed");
        last_failure = Some(outcome);
        // Without a backlog there is nowhere to wait: the breaker stays
        // out of it, and the retries go on as before.
        if context.spill.is_some() && context.gate.request_failed() {
            tracing::warn!(subscription = %endpoint.name, failures = attempts_made, "circuit open: the endpoint keeps failing; its events wait in walhook.backlog and one probe at a time tests it");
        }
        if spill_if_held_back(context, shared, events).await? {
            return ControlFlow::Continue(());
        }
        if attempt == max_attempts {
            break;
        }
        let wait = policy::backoff_delay(&shared.config.backoff, attempt, not_before);
        tokio::select! {
            biased;
            _ = shared.abandon.cancelled() => return ControlFlow::Break(()),
            _ = tokio::time::sleep(wait) => {}
            // Another lane opened the circuit, or an operator paused.
            _ = until_held_back(context) => {}
        }
        if spill_if_held_back(context, shared, events).await? {
            return ControlFlow::Continue(());
        }
    }
    let parked = events.len() as u64;
    let last_error = match &last_failure {
        Some(attempt) => attempt.to_string(),
        None => "no attempt was made".to_owned(),
    };
    let stored = park_as_dead_letters(
        endpoint,
        shared,
        events,
        last_failure.as_ref(),
        &last_error,
        attempts_made,
        first_attempt_at,
    )
    .await;
    stored?;
    if let Some(handles) = &metrics.handles {
        handles.dead_lettered.inc_by(parked);
    }
    ControlFlow::Continue(())
}

/// Stores each event as a dead letter (retrying the store until it works),
/// and only then resolves its claim; the last attempt's status and the
/// start of its answer go with it. `Break` when abandoned.
async fn park_as_dead_letters(
    endpoint: &Endpoint,
    shared: &Shared,
    events: &mut Vec<Outbound>,
    last_attempt: Option<&Attempt>,
    last_error: &str,
    attempts: u32,
    first_attempt_at: std::time::SystemTime,
) -> ControlFlow<()> {
    let last_status = last_attempt.and_then(Attempt::status);
    let last_response = last_attempt.and_then(Attempt::response_body);
    tracing::warn!(subscription = %endpoint.name, events = events.len(), error = %last_error, "parking undeliverable events as dead letters");
    for event in events.drain(..) {
        let letter = DeadLetter {
            subscription: &endpoint.name,
            event_id: event.id.as_str(),
            payload: &event.body,
            last_status,
            last_error,
            last_response,
            attempts,
            first_attempt_at,
            mac: event.dead_letter_seal(endpoint),
        };
        retry::until_ok(
            &shared.config.backoff,
            DEAD_LETTER_RETRY_FLOOR,
            &shared.abandon,
            || shared.dead_letters.store(&letter),
            |error, _| {
                tracing::error!(subscription = %endpoint.name, event_id = %event.id, %error, "cannot store a dead letter; the slot stays behind it until this works");
            },
        )
        .await?;
        event.claim.resolve();
    }
    ControlFlow::Continue(())
}

/// While the subscription is held back (circuit open, or paused) and has a
/// backlog: hands `events` to it once the reader has switched to backlog
/// mode (within its next tick), and says so. `Break` when abandoned.
async fn spill_if_held_back(
    context: &SubscriptionContext,
    shared: &Shared,
    events: &mut Vec<Outbound>,
) -> ControlFlow<(), bool> {
    if context.spill.is_none() || !context.gate.holds_back() {
        return ControlFlow::Continue(false);
    }
    // The reader switches within a tick; until then new events still come
    // the live way, and these must not go into the backlog behind them.
    tokio::select! {
        biased;
        _ = shared.abandon.cancelled() => return ControlFlow::Break(()),
        _ = context.closing.cancelled() => {}
        _ = context.gate.until(|gate| !gate.holds_back() || gate.is_backlogged()) => {}
    }
    if !context.spills() {
        return ControlFlow::Continue(false);
    }
    context.spill_back(events.drain(..));
    ControlFlow::Continue(true)
}

/// Resolves once the subscription is held back (never without a backlog).
async fn until_held_back(context: &SubscriptionContext) {
    if context.spill.is_none() {
        return std::future::pending().await;
    }
    context.gate.until(Gate::holds_back).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_BATCH_EVENTS;

    #[tokio::test]
    async fn a_batch_wait_of_centuries_does_not_overflow_the_clock() {
        // The config accepts any duration humantime parses; `now + max_wait`
        // panicked for the largest.
        let (sender, mut receiver) = mpsc::unbounded_channel();
        drop(sender);
        let batch = BatchConfig {
            max_events: MAX_BATCH_EVENTS,
            max_wait: Duration::MAX,
        };
        let mut events = Vec::new();
        let held = fill_batch(&mut receiver, &mut VecDeque::new(), &mut events, batch, 0).await;
        assert_eq!((held, events.len()), (0, 0));
    }
}
