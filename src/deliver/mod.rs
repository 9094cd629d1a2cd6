//! Delivery: POSTs each event to its subscription's URL, in order per lane,
//! with retries, and resolves the event's claim only once it is durable —
//! answered 2xx, stored as a dead letter, or committed to the subscription's
//! backlog.
//!
//! Each subscription has lanes: one lane per ordering key bucket (`key`), a
//! single lane (`strict`) or round-robin lanes (`none`). A lane sends one
//! request (or one batch) at a time and retries it before moving on, which is
//! what keeps per-key order. A semaphore per subscription caps its requests
//! in flight at `delivery.concurrency`, so a slow endpoint cannot take
//! another's share.
//!
//! Some events must wait for others of their subscription: under `key`, a
//! key-changing update for its old key's lane, a barrier event (a TRUNCATE)
//! until every lane is idle, and everything after a barrier until the
//! barrier resolved. Such an event is held in its subscription's own queue
//! (with everything after it, in commit order) and released by
//! [`Delivery::flush`] once what it waits for is idle: the reader never
//! stops for it, so other subscriptions go on.
//!
//! Queues are bounded in bytes, per subscription: every queued or in-flight
//! event holds its payload size (plus a fixed overhead) from its
//! subscription's budget of [`SUBSCRIPTION_BUFFER_BYTES`] until it is
//! resolved (held events too). A subscription that cannot keep up — its
//! budget stays spent, its circuit is open (`gate`), or it is paused — goes
//! into backlog mode: its new events are appended to `walhook.backlog`
//! (`spill`) and their claims resolve once committed there, so neither the
//! reader nor the slot waits for it; its drainer (`drain`) feeds them back
//! to the lanes in commit order, and once it has caught up the reader sends
//! new events the live way again (docs/operations.md, "When an endpoint is
//! down"). Without a usable backlog table (a schema from before it), a spent
//! budget makes [`Delivery::try_submit`] hand the event back and the reader
//! waits for room, as walhook did before the backlog. Events reach a lane in
//! chunks whose payloads share one buffer (trimmed to at most a quarter of
//! spare room), so memory stays below `subscriptions × (budget × 1.25 +
//! spill budget)` plus one request per lane.
//!
//! It does not build payloads (`event`) or decide what confirms (`checkpoint`).

mod direct;
mod drain;
pub mod gate;
pub mod http;
mod lane;
pub mod policy;
mod resolve;
mod route;
mod spill;
mod transport_error;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Ack;
use crate::config::{
    BatchConfig, DeliveryConfig, DeliveryOrder, MAX_CONCURRENCY, SubscriptionConfig,
};
use crate::event::EventId;
use crate::lsn::Lsn;
use crate::pgconn::ConnectParams;
use crate::store::backlog::{BacklogStore, Position, Summary};
use crate::seal::SEAL_BYTES;
use crate::store::dead_letters::DeadLetters;
use crate::telemetry::Metrics;
pub use drain::BacklogClaim;
use drain::{DrainMessage, Drainer};
use gate::Gate;
use http::Endpoint;
use lane::{FailureLog, LaneMetrics, run_lane};
use route::{KeyConstraint, KeyOwners, Spread};
use spill::SpillItem;

/// Bytes of events one subscription may hold in its lanes (queued or in
/// flight): past it, once [`SPILL_PATIENCE`] passed without room, the
/// subscription goes into backlog mode.
pub const SUBSCRIPTION_BUFFER_BYTES: usize = 4 << 20;
/// Bytes of events one subscription may have on their way into its backlog
/// (not yet committed there); past it the reader waits, which is the one
/// case where the backlog's database holds the stream back.
const SPILL_BUFFER_BYTES: usize = 4 << 20;
/// How long the reader waits for room in a live subscription's budget
/// before sending its events to the backlog instead: long enough that a
/// burst to a fast endpoint stays in memory, short enough that a slow one
/// holds the others back only this once.
const SPILL_PATIENCE: Duration = Duration::from_millis(500);
/// What one queued event costs beyond its payload (the event, its id, its
/// claim, the queue slot), so that many tiny events are bounded too.
const EVENT_OVERHEAD_BYTES: usize = 256;
/// Lanes of one `key` or `none` subscription; more keys than lanes share.
const MAX_LANES: usize = 256;

/// One event on its way to one subscription.
#[derive(Debug)]
pub struct Outbound {
    pub id: EventId,
    /// Its place in the stream (the backlog's order).
    pub position: Position,
    pub ordering_key: u64,
    /// Set when an update changed the row's key: the old key's hash.
    pub previous_ordering_key: Option<u64>,
    /// The payload. Set by [`Delivery`] when the event is handed to its lane
    /// (it arrives as a slice of the lane's chunk); empty before.
    pub body: Bytes,
    /// The transaction's commit time (microseconds since 2000-01-01), for
    /// the commit-to-delivery latency.
    pub commit_time_micros: i64,
    /// Set when the event must not be sent but parked as a dead letter at
    /// its turn (its filter cannot be evaluated), with the reason.
    pub park: Option<Arc<str>>,
    /// A TRUNCATE: under `key` ordering it goes out only once every earlier
    /// event of its subscription has resolved, and later events wait for it
    /// to resolve, so no row change overtakes it either way.
    pub barrier: bool,
    /// Read back from the backlog with a seal that does not match (a row
    /// walhook did not write, or one stored under another secret): it is
    /// parked (`park` says why) and its dead letter is stored unsealed, so
    /// no replay sends it as walhook's.
    pub seal_failed: bool,
    pub claim: Claim,
}

/// What resolving an event settles.
#[derive(Debug)]
pub enum Claim {
    /// A change read from the stream: its transaction may be confirmed once
    /// all its claims are resolved.
    Checkpoint(Ack),
    /// An event read from the backlog: its row is deleted.
    Backlog(BacklogClaim),
}

impl Outbound {
    /// Whether it was read back by a drain pass that has ended since.
    fn is_stale(&self, generation: u64) -> bool {
        matches!(&self.claim, Claim::Backlog(claim) if claim.is_stale(generation))
    }

    /// The seal its dead letter is stored with: none for an event whose own
    /// seal failed, so that parking never vouches for it.
    fn dead_letter_seal(&self, endpoint: &Endpoint) -> Option<[u8; SEAL_BYTES]> {
        if self.seal_failed {
            None
        } else {
            endpoint.seal(self.id.as_str(), &self.body)
        }
    }
}

impl Claim {
    /// The event is durable elsewhere (delivered, or a dead letter).
    pub fn resolve(self) {
        match self {
            Claim::Checkpoint(ack) => ack.resolve(),
            Claim::Backlog(claim) => claim.resolve(),
        }
    }
}

/// The lanes of every subscription. Dropping it closes the lanes: they finish
/// what they hold and end.
pub struct Delivery {
    subscriptions: Vec<SubscriptionLanes>,
    /// (subscription, lane) pairs with pending events.
    dirty: Vec<(usize, usize)>,
    /// Subscriptions with events for their backlog not yet handed over.
    spilling: Vec<usize>,
    /// Events held in all subscriptions' `held` queues.
    held_events: usize,
    /// Events the drainers read back from their backlogs, for the lanes.
    drained: Option<mpsc::Receiver<DrainMessage>>,
    /// Cancelled when delivery is dropped: the drainers end.
    closing: CancellationToken,
    /// How far the reader has handed everything it read to delivery; see
    /// [`Delivery::read_up_to`].
    reader_position: Arc<AtomicU64>,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.closing.cancel();
    }
}

/// Where delivery keeps what it cannot deliver now: the dead letters, and
/// (when the schema has it) the backlogs.
pub struct Stores {
    pub dead_letters: DeadLetters,
    pub backlog: Option<BacklogStart>,
}

/// Where the backlogs are, and what they held when delivery started.
pub struct BacklogStart {
    pub params: ConnectParams,
    pub waiting: HashMap<String, Summary>,
    /// Where the stream resumes (the slot's confirmed position).
    pub resumes_at: Lsn,
}

/// What [`Delivery::try_submit`] did with an event.
#[derive(Debug)]
pub enum Submitted {
    /// Queued for its lane, held behind earlier events of its subscription,
    /// or on its way into the backlog; either way delivery has it.
    Accepted,
    /// Its subscription's budget is spent: acquire `cost` permits from
    /// `budget`, forget them, then call [`Delivery::submit_paid`] — or, once
    /// `patience` (when set) ran out, [`Delivery::spill_instead`].
    NeedsBudget(Box<BudgetWait>),
}

/// An event waiting for room in a byte budget.
#[derive(Debug)]
pub struct BudgetWait {
    event: Outbound,
    pub budget: Arc<Semaphore>,
    pub cost: u32,
    /// How long to wait before sending it to the backlog instead; `None`
    /// when waiting is the only way (no backlog, or this is the backlog's
    /// own budget).
    pub patience: Option<Duration>,
    to_backlog: bool,
}

/// The lanes the first held event waits for; see [`Delivery::held_waiter`].
pub struct HeldWait(Vec<Arc<LaneLoad>>);

impl HeldWait {
    /// Resolves once every lane the event waits for is idle.
    pub async fn until_ready(self) {
        for load in self.0 {
            load.wait_idle().await;
        }
    }
}

/// An event held in its subscription's queue, with its payload and the
/// budget share it already holds.
struct Held {
    event: Outbound,
    payload: Vec<u8>,
    cost: u32,
}

/// What a subscription's lanes, spiller and drainer share.
struct SubscriptionContext {
    endpoint: Arc<Endpoint>,
    metrics: LaneMetrics,
    gate: Arc<Gate>,
    /// The lanes' byte budget; see [`SUBSCRIPTION_BUFFER_BYTES`].
    budget: Arc<Semaphore>,
    /// Requests in flight, at most `delivery.concurrency`.
    in_flight: Semaphore,
    batch: BatchConfig,
    /// The way into the backlog; `None` when there is no usable one.
    spill: Option<mpsc::UnboundedSender<Vec<SpillItem>>>,
    /// Cancelled once the reader has stopped (delivery dropped): no new
    /// events come the live way any more.
    closing: CancellationToken,
}

impl SubscriptionContext {
    /// Whether the lanes should hand their events to the backlog rather
    /// than send them: paused, or circuit open, with a backlog to hold them,
    /// and the reader already sending new events there too (or stopped) —
    /// else a new event could go live ahead of them.
    fn spills(&self) -> bool {
        self.spill.is_some()
            && self.gate.holds_back()
            && (self.gate.is_backlogged() || self.closing.is_cancelled())
    }

    /// Hands events a lane holds to the backlog: a change from the stream is
    /// appended (its claim resolves once committed); an event read from the
    /// backlog is still there, so it is only let go.
    fn spill_back(&self, events: impl IntoIterator<Item = Outbound>) {
        let mut items = Vec::new();
        for event in events {
            match event.claim {
                Claim::Checkpoint(_) => items.push(SpillItem { event, cost: 0 }),
                Claim::Backlog(_) => drop(event),
            }
        }
        if items.is_empty() {
            return;
        }
        self.gate.spill_requested(items.len() as u64);
        if let Some(spill) = &self.spill {
            // A closed spiller means shutdown; the claims stay unresolved.
            let _ = spill.send(items);
        }
    }
}

struct SubscriptionLanes {
    ordering: DeliveryOrder,
    lanes: Vec<Lane>,
    /// Under `key`: which lane holds each key's unresolved events.
    owners: KeyOwners,
    /// How events free to go to any lane are spread.
    spread: Spread,
    context: Arc<SubscriptionContext>,
    /// The reader sends new events to the backlog (mirrored in the gate).
    backlogged: bool,
    /// Bytes of events on their way into the backlog.
    spill_budget: Arc<Semaphore>,
    /// Events for the backlog not yet handed to the spiller.
    pending_spill: Vec<SpillItem>,
    /// The lane holding a barrier event (a TRUNCATE) that may not have
    /// resolved yet: later events wait until that lane is idle.
    barrier_lane: Option<usize>,
    /// Events that must wait for earlier ones of this subscription (a key
    /// change for its old key's lane, anything for a barrier), in commit
    /// order. They hold their budget shares, so the budget bounds them.
    held: VecDeque<Held>,
}

impl SubscriptionLanes {
    /// The lane `event` goes to, or `None` while it must wait for busy
    /// lanes ([`SubscriptionLanes::blocking_loads`]). Its keys are looked
    /// up once: this is the reader's per-event path.
    fn lane_if_free(&mut self, event: &Outbound) -> Option<usize> {
        match self.ordering {
            DeliveryOrder::Strict => Some(0),
            DeliveryOrder::None => Some(self.spread.next_lane(event.ordering_key, &self.lanes)),
            DeliveryOrder::Key => {
                if (self.barrier_lane.is_some() || event.barrier)
                    && !self.blocking_loads(event).is_empty()
                {
                    return None;
                }
                match self.owners.constraint(event, &self.lanes) {
                    KeyConstraint::Follow(lane) => Some(lane),
                    KeyConstraint::WaitFor(lane)
                        if self.lanes.get(lane).is_some_and(|lane| !lane.load.is_idle()) =>
                    {
                        None
                    }
                    KeyConstraint::Free | KeyConstraint::WaitFor(_) => {
                        Some(self.spread.next_lane(event.ordering_key, &self.lanes))
                    }
                }
            }
        }
    }

    /// The lanes whose events must resolve before `event` may be queued:
    /// under `key`, the old key's lane of a key-changing update whose new
    /// key is in another lane (so the receiver never sees the old key after
    /// the change), the lane of an unresolved barrier, and for a barrier
    /// itself every lane. Idle lanes are left out; none left means it may
    /// go.
    fn blocking_loads(&self, event: &Outbound) -> Vec<Arc<LaneLoad>> {
        if self.ordering != DeliveryOrder::Key {
            return Vec::new();
        }
        let mut waits: Vec<usize> = Vec::new();
        if let KeyConstraint::WaitFor(lane) = self.owners.constraint(event, &self.lanes) {
            waits.push(lane);
        }
        waits.extend(self.barrier_lane);
        if event.barrier {
            waits.extend(0..self.lanes.len());
        }
        waits.sort_unstable();
        waits.dedup();
        waits
            .into_iter()
            .filter_map(|lane| self.lanes.get(lane))
            .filter(|lane| !lane.load.is_idle())
            .map(|lane| Arc::clone(&lane.load))
            .collect()
    }

    /// Forgets the barrier once its lane is idle (it resolved), so that
    /// later traffic on that lane holds nothing back.
    fn clear_finished_barrier(&mut self) {
        if let Some(lane) = self.barrier_lane
            && self
                .lanes
                .get(lane)
                .is_none_or(|lane| lane.load.outstanding.load(AtomicOrdering::Acquire) == 0)
        {
            self.barrier_lane = None;
        }
    }

    /// Switches the reader's path for this subscription, saying why.
    fn set_backlogged(&mut self, backlogged: bool, why: &str) {
        if self.backlogged == backlogged {
            return;
        }
        self.backlogged = backlogged;
        self.context.gate.set_backlogged(backlogged);
        if backlogged {
            tracing::warn!(subscription = %self.context.gate.name, reason = why, "subscription in backlog mode: its new events wait in walhook.backlog until its endpoint catches up");
        } else {
            tracing::info!(subscription = %self.context.gate.name, "backlog drained; subscription back to live delivery");
        }
    }
}

/// The sending side of one lane. The queue itself is unbounded: the
/// subscription's byte budget bounds it.
struct Lane {
    sender: mpsc::UnboundedSender<Vec<Queued>>,
    load: Arc<LaneLoad>,
    /// Submitted but not yet handed over: events travel to the lane in
    /// chunks, one wake-up per chunk rather than per event.
    pending: Vec<Queued>,
    /// The payloads of `pending`, back to back: one allocation per chunk,
    /// freed by the lane once it has delivered the chunk's last event,
    /// instead of one allocation per event freed on another thread.
    payloads: Vec<u8>,
    /// Events ever given to this lane: a key whose last event was the
    /// `n`th is free once the lane has finished `n` ([`LaneLoad`]).
    enqueued: u64,
}

/// An event in a lane and the share of its subscription's budget it holds
/// until it is resolved. The lane returns the shares of a whole request at
/// once (one semaphore update per request, not per event); a lane that is
/// abandoned at shutdown returns nothing, which no longer matters.
struct Queued {
    event: Outbound,
    cost: u32,
    /// Where its payload is in the lane's `payloads` until the chunk is
    /// handed over.
    payload: std::ops::Range<usize>,
}

/// What an event costs from its subscription's budget; an event larger than
/// the whole budget takes all of it (and so goes alone).
fn budget_cost(payload: &[u8]) -> u32 {
    let cost = (payload.len() + EVENT_OVERHEAD_BYTES).min(SUBSCRIPTION_BUFFER_BYTES);
    u32::try_from(cost).unwrap_or(u32::MAX)
}

/// Events submitted to a lane and not yet resolved or abandoned, and how
/// many it has finished. A lane finishes its events in the order it got
/// them, so the count says which keys it no longer holds.
#[derive(Default)]
struct LaneLoad {
    outstanding: AtomicUsize,
    finished_total: AtomicU64,
    idle: Notify,
}

impl LaneLoad {
    fn finished(&self, events: usize) {
        // Counted before `outstanding` drops: whoever sees the lane idle
        // sees its keys free too.
        self.finished_total
            .fetch_add(events as u64, AtomicOrdering::AcqRel);
        if self.outstanding.fetch_sub(events, AtomicOrdering::AcqRel) == events {
            self.idle.notify_waiters();
        }
    }

    fn is_idle(&self) -> bool {
        self.outstanding.load(AtomicOrdering::Acquire) == 0
    }

    /// Waits until everything submitted so far is resolved.
    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.is_idle() {
                return;
            }
            idle.await;
        }
    }
}

/// What every lane shares.
struct Shared {
    config: DeliveryConfig,
    dead_letters: DeadLetters,
    /// Cancelled when in-flight work is to be abandoned (after the grace).
    abandon: CancellationToken,
    metrics: Arc<Metrics>,
}

/// The lane closed because delivery is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("delivery is shutting down")]
pub struct DeliveryClosed;

impl Delivery {
    /// Starts the lanes of every subscription into `tasks`, and with a
    /// backlog, each one's spiller and drainer. `gates` are the
    /// subscriptions' gates, in config order.
    pub fn start(
        config: &DeliveryConfig,
        subscriptions: &[SubscriptionConfig],
        gates: &[Arc<Gate>],
        stores: Stores,
        abandon: CancellationToken,
        metrics: Arc<Metrics>,
        tasks: &mut JoinSet<()>,
    ) -> Result<Delivery, http::EndpointError> {
        let Stores {
            dead_letters,
            backlog,
        } = stores;
        let mut clients = http::Clients::new(config);
        // `Config::load` keeps it in range; this is for a config built
        // another way (a test, an embedder), where an absurd value would
        // make the semaphore panic.
        let concurrency = config.concurrency.clamp(1, MAX_CONCURRENCY);
        let shared = Arc::new(Shared {
            config: config.clone(),
            dead_letters,
            abandon,
            metrics: Arc::clone(&metrics),
        });
        let closing = CancellationToken::new();
        let (drained_sender, drained) = mpsc::channel(drain::CHANNEL_EVENTS);
        let reader_position = Arc::new(AtomicU64::new(
            backlog.as_ref().map_or(0, |backlog| backlog.resumes_at.0),
        ));
        let mut all = Vec::with_capacity(subscriptions.len());
        for (index, subscription) in subscriptions.iter().enumerate() {
            let endpoint = Arc::new(Endpoint::new(subscription, &mut clients)?);
            let gate = match gates.get(index) {
                Some(gate) => Arc::clone(gate),
                None => Arc::new(Gate::new(&subscription.name, config.breaker)),
            };
            gate.reset_spill_counts();
            let handles = metrics.subscription(index).cloned();
            let buffer = Arc::new(Semaphore::new(SUBSCRIPTION_BUFFER_BYTES));
            let spill_budget = Arc::new(Semaphore::new(SPILL_BUFFER_BYTES));
            let mut spill = None;
            let mut store = None;
            let mut horizon = 0;
            if let Some(backlog) = &backlog {
                let opened = Arc::new(BacklogStore::new(
                    &subscription.name,
                    backlog.params.clone(),
                    endpoint.row_seals().to_vec(),
                    config.backlog.trust_unsealed,
                ));
                let waiting = backlog.waiting.get(&subscription.name);
                horizon = waiting.map_or(0, |summary| summary.last_commit_lsn);
                if let Some(handles) = &handles {
                    let summary = waiting.cloned().unwrap_or_default();
                    handles.backlog_events.set(summary.events);
                    handles.backlog_bytes.set(summary.bytes);
                }
                // Whatever waits in the backlog goes before new events.
                gate.set_backlogged(waiting.is_some_and(|summary| summary.events > 0));
                let (sender, receiver) = mpsc::unbounded_channel();
                tasks.spawn(spill::run_spiller(
                    receiver,
                    Arc::clone(&opened),
                    Arc::clone(&gate),
                    Arc::clone(&spill_budget),
                    handles.clone(),
                    Arc::clone(&shared),
                ));
                spill = Some(sender);
                store = Some(opened);
            } else {
                gate.set_backlogged(false);
            }
            let context = Arc::new(SubscriptionContext {
                endpoint,
                metrics: LaneMetrics {
                    handles,
                    failures: FailureLog::default(),
                },
                gate: Arc::clone(&gate),
                budget: Arc::clone(&buffer),
                in_flight: Semaphore::new(concurrency),
                batch: subscription.batch,
                spill,
                closing: closing.clone(),
            });
            let lane_count = match subscription.ordering {
                DeliveryOrder::Strict => 1,
                DeliveryOrder::Key | DeliveryOrder::None => concurrency.min(MAX_LANES),
            };
            let mut lanes = Vec::with_capacity(lane_count);
            for _ in 0..lane_count {
                let (sender, receiver) = mpsc::unbounded_channel();
                let load = Arc::new(LaneLoad::default());
                tasks.spawn(run_lane(
                    receiver,
                    Arc::clone(&load),
                    Arc::clone(&context),
                    Arc::clone(&shared),
                ));
                lanes.push(Lane {
                    sender,
                    load,
                    pending: Vec::new(),
                    payloads: Vec::new(),
                    enqueued: 0,
                });
            }
            if let Some(store) = store {
                let drainer = Drainer {
                    subscription: index,
                    store,
                    context: Arc::clone(&context),
                    shared: Arc::clone(&shared),
                    to_reader: drained_sender.clone(),
                    loads: lanes.iter().map(|lane| Arc::clone(&lane.load)).collect(),
                    closing: closing.clone(),
                    horizon,
                    reader_position: Arc::clone(&reader_position),
                };
                tasks.spawn(drainer.run());
            }
            all.push(SubscriptionLanes {
                ordering: subscription.ordering,
                lanes,
                owners: KeyOwners::new(),
                spread: Spread::new(subscription.ordering, subscription.batch.max_events),
                backlogged: gate.is_backlogged(),
                context,
                spill_budget,
                pending_spill: Vec::new(),
                barrier_lane: None,
                held: VecDeque::new(),
            });
        }
        Ok(Delivery {
            subscriptions: all,
            dirty: Vec::new(),
            spilling: Vec::new(),
            held_events: 0,
            drained: backlog.is_some().then_some(drained),
            closing,
            reader_position,
        })
    }

    /// Takes an event for subscription number `subscription`. Live, when
    /// its budget has room, the event is queued for its lane (reaching it at
    /// the next [`Delivery::flush`]) or, when it must wait for earlier
    /// events of its subscription (a key change, a TRUNCATE), held in the
    /// subscription's own queue. In backlog mode it goes on its way into
    /// the backlog. Never by stopping the reader, so other subscriptions go
    /// on; when a budget is spent, the event comes back with what to wait
    /// for ([`BudgetWait`]). The reader's common case registers no future
    /// and no wake-up.
    pub fn try_submit(
        &mut self,
        subscription: usize,
        event: Outbound,
        payload: &[u8],
    ) -> Result<Submitted, DeliveryClosed> {
        let target = self
            .subscriptions
            .get_mut(subscription)
            .ok_or(DeliveryClosed)?;
        if target.context.spill.is_some() {
            if !target.backlogged && target.context.gate.holds_back() {
                self.enter_backlog(subscription);
            }
            let target = self
                .subscriptions
                .get_mut(subscription)
                .ok_or(DeliveryClosed)?;
            if target.backlogged {
                return Ok(self.try_spill(subscription, event, payload));
            }
        }
        let cost = budget_cost(payload);
        if !self.try_take_budget(subscription, cost)? {
            // Events not yet handed over count against the budget: hand
            // them over so the lanes can give some of it back.
            self.flush();
            let target = self.subscriptions.get(subscription).ok_or(DeliveryClosed)?;
            return Ok(Submitted::NeedsBudget(Box::new(BudgetWait {
                event,
                budget: Arc::clone(&target.context.budget),
                cost,
                patience: target.context.spill.is_some().then_some(SPILL_PATIENCE),
                to_backlog: false,
            })));
        }
        self.place(subscription, event, payload, cost)?;
        Ok(Submitted::Accepted)
    }

    /// Takes an event whose budget share the caller acquired from
    /// [`BudgetWait::budget`] (and forgot): queued, held or on its way into
    /// the backlog as in [`Delivery::try_submit`].
    pub fn submit_paid(
        &mut self,
        subscription: usize,
        wait: Box<BudgetWait>,
        payload: &[u8],
    ) -> Result<(), DeliveryClosed> {
        if wait.to_backlog {
            return self.push_spill(subscription, wait.event, payload, wait.cost);
        }
        self.place(subscription, wait.event, payload, wait.cost)
    }

    /// The subscription's budget stayed spent for [`BudgetWait::patience`]:
    /// it goes into backlog mode, starting with this event.
    pub fn spill_instead(
        &mut self,
        subscription: usize,
        wait: Box<BudgetWait>,
        payload: &[u8],
    ) -> Result<Submitted, DeliveryClosed> {
        // Gives back this event's share: it was never taken.
        self.enter_backlog(subscription);
        Ok(self.try_spill(subscription, wait.event, payload))
    }

    /// Switches a subscription to backlog mode. Its held events (which wait
    /// for a barrier or a key change) go to the backlog first: once the
    /// backlog holds anything, nothing may reach the endpoint except
    /// through it, in commit order.
    fn enter_backlog(&mut self, subscription: usize) {
        let Some(target) = self.subscriptions.get_mut(subscription) else {
            return;
        };
        if target.backlogged || target.context.spill.is_none() {
            return;
        }
        let gate = &target.context.gate;
        let why = if gate.is_paused() {
            "paused"
        } else if gate.breaker.is_open() {
            "circuit open: its endpoint keeps failing"
        } else {
            "slower than the stream: its memory budget stayed full"
        };
        target.set_backlogged(true, why);
        let held = std::mem::take(&mut target.held);
        self.held_events -= held.len();
        if !held.is_empty() && target.pending_spill.is_empty() {
            self.spilling.push(subscription);
        }
        for held in held {
            target.context.budget.add_permits(held.cost as usize);
            let mut event = held.event;
            event.body = Bytes::from(held.payload);
            target.context.gate.spill_requested(1);
            target.pending_spill.push(SpillItem { event, cost: 0 });
        }
    }

    /// Switches to backlog mode each subscription whose gate holds it back
    /// (paused, or its circuit opened) though no new event of it came: its
    /// lanes wait for this to hand their events to the backlog. The reader
    /// calls it on every tick.
    pub fn follow_gates(&mut self) {
        for subscription in 0..self.subscriptions.len() {
            let Some(target) = self.subscriptions.get(subscription) else {
                continue;
            };
            if !target.backlogged
                && target.context.spill.is_some()
                && target.context.gate.holds_back()
            {
                self.enter_backlog(subscription);
            }
        }
    }

    /// Sends an event towards the backlog if the spill budget has room.
    fn try_spill(&mut self, subscription: usize, event: Outbound, payload: &[u8]) -> Submitted {
        let Some(target) = self.subscriptions.get(subscription) else {
            return Submitted::Accepted;
        };
        let cost = budget_cost(payload);
        let budget = Arc::clone(&target.spill_budget);
        let taken = budget
            .try_acquire_many(cost)
            .map(|share| share.forget())
            .is_ok();
        match taken {
            true => {
                // Only fails for a subscription that does not exist.
                let _ = self.push_spill(subscription, event, payload, cost);
                Submitted::Accepted
            }
            false => {
                // What waits to be handed over counts against the budget.
                self.flush();
                Submitted::NeedsBudget(Box::new(BudgetWait {
                    event,
                    budget,
                    cost,
                    patience: None,
                    to_backlog: true,
                }))
            }
        }
    }

    fn push_spill(
        &mut self,
        subscription: usize,
        mut event: Outbound,
        payload: &[u8],
        cost: u32,
    ) -> Result<(), DeliveryClosed> {
        let target = self
            .subscriptions
            .get_mut(subscription)
            .ok_or(DeliveryClosed)?;
        event.body = Bytes::copy_from_slice(payload);
        target.context.gate.spill_requested(1);
        if target.pending_spill.is_empty() {
            self.spilling.push(subscription);
        }
        target.pending_spill.push(SpillItem { event, cost });
        Ok(())
    }

    /// Queues a paid-for event for its lane, or holds it behind the events
    /// of its subscription it must wait for (and behind those already held,
    /// which keeps commit order).
    fn place(
        &mut self,
        subscription: usize,
        event: Outbound,
        payload: &[u8],
        cost: u32,
    ) -> Result<(), DeliveryClosed> {
        let target = self
            .subscriptions
            .get_mut(subscription)
            .ok_or(DeliveryClosed)?;
        target.clear_finished_barrier();
        // Behind held events, in commit order, whatever its own keys say.
        let lane = match target.held.is_empty() {
            true => target.lane_if_free(&event),
            false => None,
        };
        let Some(lane) = lane else {
            target.held.push_back(Held {
                event,
                payload: payload.to_vec(),
                cost,
            });
            self.held_events += 1;
            return Ok(());
        };
        self.enqueue(subscription, lane, event, payload, cost)
    }

    /// The reader has handed delivery every event of the stream before
    /// `position` (a transaction's end, or an idle keepalive's position).
    /// A drainer reads its backlog back only once the reader has passed
    /// what the backlog held at start.
    pub fn read_up_to(&self, position: Lsn) {
        self.reader_position
            .fetch_max(position.0, AtomicOrdering::AcqRel);
    }

    /// The next message of a drainer (never, without backlogs). Cancel-safe.
    pub async fn next_drained(&mut self) -> Option<DrainMessage> {
        match &mut self.drained {
            Some(drained) => drained.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Takes `first` and every drainer message already waiting behind it,
    /// then hands them to the lanes at once: one wake-up per lane for a
    /// page of the backlog, as for a burst from the stream.
    pub fn take_all_drained(&mut self, first: DrainMessage) -> Result<(), DeliveryClosed> {
        self.take_drained(first)?;
        for _ in 0..drain::CHANNEL_EVENTS {
            let Some(next) = self
                .drained
                .as_mut()
                .and_then(|drained| drained.try_recv().ok())
            else {
                break;
            };
            self.take_drained(next)?;
        }
        self.flush();
        Ok(())
    }

    /// Acts on a drainer's message: an event read back from the backlog is
    /// placed like a live one (its budget share is paid); a drainer that
    /// caught up lets the subscription go back to live delivery, if every
    /// event the reader sent to the backlog was read back by then.
    fn take_drained(&mut self, message: DrainMessage) -> Result<(), DeliveryClosed> {
        match message {
            DrainMessage::Event {
                subscription,
                event,
                cost,
            } => {
                let payload = event.body.clone();
                self.place(subscription, event, &payload, cost)
            }
            DrainMessage::CaughtUp {
                subscription,
                through,
            } => {
                let target = self
                    .subscriptions
                    .get_mut(subscription)
                    .ok_or(DeliveryClosed)?;
                if target.backlogged
                    && target.pending_spill.is_empty()
                    && !target.context.gate.holds_back()
                    && target.context.gate.requested() == through
                {
                    target.set_backlogged(false, "caught up");
                }
                Ok(())
            }
        }
    }

    /// Moves held events whose wait is over to their lanes, in order, each
    /// subscription up to its first event that must still wait.
    fn release_held(&mut self) -> Result<(), DeliveryClosed> {
        for subscription in 0..self.subscriptions.len() {
            loop {
                let target = self
                    .subscriptions
                    .get_mut(subscription)
                    .ok_or(DeliveryClosed)?;
                target.clear_finished_barrier();
                let Some(held) = target.held.pop_front() else {
                    break;
                };
                let Some(lane) = target.lane_if_free(&held.event) else {
                    // Still waiting: it stays first.
                    target.held.push_front(held);
                    break;
                };
                self.held_events -= 1;
                self.enqueue(subscription, lane, held.event, &held.payload, held.cost)?;
            }
        }
        Ok(())
    }

    /// While events are held: what the first one waits for, to be awaited
    /// (without borrowing delivery) before the next [`Delivery::flush`]
    /// releases it.
    pub fn held_waiter(&self) -> Option<HeldWait> {
        if self.held_events == 0 {
            return None;
        }
        let target = self
            .subscriptions
            .iter()
            .find(|target| !target.held.is_empty())?;
        let front = target.held.front()?;
        Some(HeldWait(target.blocking_loads(&front.event)))
    }

    /// Takes `cost` from the subscription's budget if it has that much now.
    /// The lane gives it back (`Semaphore::add_permits`) once the event is
    /// resolved.
    fn try_take_budget(&self, subscription: usize, cost: u32) -> Result<bool, DeliveryClosed> {
        let target = self.subscriptions.get(subscription).ok_or(DeliveryClosed)?;
        Ok(target
            .context
            .budget
            .try_acquire_many(cost)
            .map(|share| share.forget())
            .is_ok())
    }

    /// Adds an event whose budget share is taken to its lane's pending chunk.
    fn enqueue(
        &mut self,
        subscription: usize,
        lane: usize,
        event: Outbound,
        payload: &[u8],
        cost: u32,
    ) -> Result<(), DeliveryClosed> {
        let target = self
            .subscriptions
            .get_mut(subscription)
            .ok_or(DeliveryClosed)?;
        if event.barrier && target.ordering == DeliveryOrder::Key {
            target.barrier_lane = Some(lane);
        }
        let queue = target.lanes.get_mut(lane).ok_or(DeliveryClosed)?;
        queue.load.outstanding.fetch_add(1, AtomicOrdering::AcqRel);
        queue.enqueued += 1;
        if target.ordering == DeliveryOrder::Key {
            let through = queue.enqueued;
            target.owners.queued(&event, lane, through, &target.lanes);
        }
        let queue = target.lanes.get_mut(lane).ok_or(DeliveryClosed)?;
        if queue.pending.is_empty() {
            self.dirty.push((subscription, lane));
        }
        let start = queue.payloads.len();
        queue.payloads.extend_from_slice(payload);
        queue.pending.push(Queued {
            event,
            cost,
            payload: start..queue.payloads.len(),
        });
        Ok(())
    }

    /// Hands every pending event to its lane, and every event for a backlog
    /// to its spiller. The reader calls this when it has no more data at
    /// hand, so a burst of changes costs one wake-up per lane, not one per
    /// event.
    pub fn flush(&mut self) {
        if self.held_events > 0 {
            // Only fails for a subscription that does not exist.
            let _ = self.release_held();
        }
        for subscription in self.spilling.drain(..) {
            if let Some(target) = self.subscriptions.get_mut(subscription)
                && !target.pending_spill.is_empty()
                && let Some(spill) = &target.context.spill
            {
                // A closed spiller means shutdown; the claims stay unresolved.
                let _ = spill.send(std::mem::take(&mut target.pending_spill));
            }
        }
        for (subscription, lane) in self.dirty.drain(..) {
            if let Some(lane) = self
                .subscriptions
                .get_mut(subscription)
                .and_then(|target| target.lanes.get_mut(lane))
                && !lane.pending.is_empty()
            {
                // The next chunk is likely about as large as this one.
                let next = Vec::with_capacity(lane.pending.len());
                let mut chunk = std::mem::replace(&mut lane.pending, next);
                let next = Vec::with_capacity(lane.payloads.len());
                let mut payloads = std::mem::replace(&mut lane.payloads, next);
                // Spare capacity would stay allocated as long as any event of
                // the chunk, beyond what the budget counts.
                if payloads.capacity() > payloads.len() + payloads.len() / 4 {
                    payloads.shrink_to_fit();
                }
                let payloads = Bytes::from(payloads);
                for queued in &mut chunk {
                    queued.event.body = payloads.slice(queued.payload.clone());
                }
                // A closed lane means shutdown; its events stay unresolved.
                let _ = lane.sender.send(chunk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::config::MAX_BATCH_EVENTS;
    use crate::lsn::Lsn;

    fn event(checkpoint: &mut Checkpoint, ordinal: u32, ordering_key: u64) -> Outbound {
        Outbound {
            id: crate::event::event_id("s", Lsn(1), ordinal),
            position: Position {
                commit_lsn: 1,
                ordinal,
            },
            ordering_key,
            previous_ordering_key: None,
            body: Bytes::new(),
            commit_time_micros: 0,
            park: None,
            barrier: false,
            seal_failed: false,
            claim: Claim::Checkpoint(checkpoint.track_event()),
        }
    }

    /// A `key` subscription with `lanes` lanes whose receiving ends the test
    /// holds, instead of lane tasks.
    fn delivery_with_lanes(lanes: usize) -> (Delivery, Vec<mpsc::UnboundedReceiver<Vec<Queued>>>) {
        delivery_spreading(lanes, Spread::Hash)
    }

    /// [`delivery_with_lanes`] spreading free events by `spread`.
    fn delivery_spreading(
        lanes: usize,
        spread: Spread,
    ) -> (Delivery, Vec<mpsc::UnboundedReceiver<Vec<Queued>>>) {
        let mut receivers = Vec::new();
        let lanes = (0..lanes)
            .map(|_| {
                let (sender, receiver) = mpsc::unbounded_channel();
                receivers.push(receiver);
                Lane {
                    sender,
                    load: Arc::new(LaneLoad::default()),
                    pending: Vec::new(),
                    payloads: Vec::new(),
                    enqueued: 0,
                }
            })
            .collect();
        let config = crate::config::Config::from_toml(
            std::path::Path::new("test.toml"),
            "[source]\nurl = \"postgres://u@localhost/db\"\n\
             [[subscriptions]]\nname = \"s\"\ntables = [\"public.t\"]\n\
             url = \"http://127.0.0.1:9/\"\n",
        )
        .unwrap();
        let context = Arc::new(SubscriptionContext {
            endpoint: Arc::new(
                Endpoint::new(
                    &config.subscriptions[0],
                    &mut http::Clients::new(&config.delivery),
                )
                .unwrap(),
            ),
            metrics: LaneMetrics {
                handles: None,
                failures: FailureLog::default(),
            },
            gate: Arc::new(Gate::new("s", crate::config::BreakerConfig::default())),
            budget: Arc::new(Semaphore::new(SUBSCRIPTION_BUFFER_BYTES)),
            in_flight: Semaphore::new(1),
            batch: BatchConfig::default(),
            spill: None,
            closing: CancellationToken::new(),
        });
        let delivery = Delivery {
            subscriptions: vec![SubscriptionLanes {
                ordering: DeliveryOrder::Key,
                lanes,
                owners: KeyOwners::new(),
                spread,
                context,
                backlogged: false,
                spill_budget: Arc::new(Semaphore::new(SPILL_BUFFER_BYTES)),
                pending_spill: Vec::new(),
                barrier_lane: None,
                held: VecDeque::new(),
            }],
            dirty: Vec::new(),
            spilling: Vec::new(),
            held_events: 0,
            drained: None,
            closing: CancellationToken::new(),
            reader_position: Arc::new(AtomicU64::new(0)),
        };
        (delivery, receivers)
    }

    #[test]
    fn each_event_reaches_its_lane_with_its_own_payload_in_order() {
        let mut checkpoint = Checkpoint::new(Lsn(0));
        checkpoint.begin(0);
        let (mut delivery, mut receivers) = delivery_with_lanes(2);
        let mut sent = Vec::new();
        for ordinal in 0..10u32 {
            let payload = format!("{{\"n\":{ordinal}}}").repeat(ordinal as usize + 1);
            let event = event(&mut checkpoint, ordinal, u64::from(ordinal % 2));
            sent.push((event.id, ordinal % 2, payload.clone()));
            let submitted = delivery.try_submit(0, event, payload.as_bytes()).unwrap();
            assert!(
                matches!(submitted, Submitted::Accepted),
                "the budget has room"
            );
        }
        assert!(
            receivers[0].try_recv().is_err(),
            "nothing goes before flush"
        );
        delivery.flush();
        for (lane, receiver) in receivers.iter_mut().enumerate() {
            let chunk = receiver.try_recv().unwrap();
            let expected: Vec<_> = sent
                .iter()
                .filter(|(_, to, _)| *to as usize == lane)
                .collect();
            assert_eq!(chunk.len(), expected.len());
            for (queued, (id, _, payload)) in chunk.iter().zip(expected) {
                assert_eq!(queued.event.id, *id);
                assert_eq!(&queued.event.body[..], payload.as_bytes());
                assert_eq!(queued.cost, budget_cost(payload.as_bytes()));
            }
        }
        // The next chunk starts empty.
        delivery.flush();
        assert!(receivers[0].try_recv().is_err());
    }

    #[test]
    fn the_largest_batch_fits_in_one_subscription_budget() {
        // Otherwise a lane could never collect a full batch (the budget
        // runs out first) and every batch would wait out `max_wait`.
        const {
            assert!(MAX_BATCH_EVENTS * EVENT_OVERHEAD_BYTES <= SUBSCRIPTION_BUFFER_BYTES);
            assert!(MAX_CONCURRENCY <= Semaphore::MAX_PERMITS);
        }
    }

    /// The ids in the next chunk a lane received, if any.
    fn received(receiver: &mut mpsc::UnboundedReceiver<Vec<Queued>>) -> Vec<EventId> {
        receiver
            .try_recv()
            .map(|chunk| chunk.iter().map(|queued| queued.event.id).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_truncate_waits_for_earlier_events_and_holds_later_ones_without_blocking() {
        let mut checkpoint = Checkpoint::new(Lsn(0));
        checkpoint.begin(0);
        let (mut delivery, mut receivers) = delivery_with_lanes(2);
        let before = event(&mut checkpoint, 0, 0);
        let mut truncate = event(&mut checkpoint, 1, 1);
        truncate.barrier = true;
        let after = event(&mut checkpoint, 2, 1);
        let ids = [before.id, truncate.id, after.id];
        for event in [before, truncate, after] {
            let submitted = delivery.try_submit(0, event, b"{}").unwrap();
            assert!(matches!(submitted, Submitted::Accepted), "never blocks");
        }
        assert!(delivery.held_waiter().is_some(), "two are held");
        delivery.flush();
        assert_eq!(received(&mut receivers[0]), vec![ids[0]]);
        assert!(received(&mut receivers[1]).is_empty(), "the TRUNCATE waits");

        // The earlier event resolves: the TRUNCATE goes, the later one waits.
        delivery.subscriptions[0].lanes[0].load.finished(1);
        delivery.flush();
        assert_eq!(received(&mut receivers[1]), vec![ids[1]]);
        assert!(delivery.held_waiter().is_some(), "one is still held");
        delivery.flush();
        assert!(received(&mut receivers[1]).is_empty());

        // The TRUNCATE resolves: the later event follows.
        delivery.subscriptions[0].lanes[1].load.finished(1);
        delivery.flush();
        assert_eq!(received(&mut receivers[1]), vec![ids[2]]);
        assert!(delivery.held_waiter().is_none());
    }

    #[test]
    fn an_event_costs_its_bytes_plus_overhead_and_never_more_than_the_budget() {
        let small = vec![b'x'; 100];
        assert_eq!(budget_cost(&small) as usize, 100 + EVENT_OVERHEAD_BYTES);
        let huge = vec![b'x'; SUBSCRIPTION_BUFFER_BYTES * 2];
        assert_eq!(budget_cost(&huge) as usize, SUBSCRIPTION_BUFFER_BYTES);
        // The budget fits a Semaphore and one acquire (u32).
        const {
            assert!(SUBSCRIPTION_BUFFER_BYTES <= Semaphore::MAX_PERMITS);
            assert!(SUBSCRIPTION_BUFFER_BYTES <= u32::MAX as usize);
        }
    }

    /// Submits `event` (which must be accepted) and hands it to its lane.
    fn submit(delivery: &mut Delivery, event: Outbound) {
        let submitted = delivery.try_submit(0, event, b"{}").unwrap();
        assert!(matches!(submitted, Submitted::Accepted), "never blocks");
        delivery.flush();
    }

    fn finish(delivery: &Delivery, lane: usize, events: usize) {
        delivery.subscriptions[0].lanes[lane].load.finished(events);
    }

    #[test]
    fn a_key_follows_its_unresolved_events_into_their_lane_even_when_batches_move_on() {
        let mut checkpoint = Checkpoint::new(Lsn(0));
        checkpoint.begin(0);
        let batch = 2;
        let (mut delivery, mut receivers) = delivery_spreading(
            3,
            Spread::Pack {
                lane: 0,
                taken: 0,
                batch,
            },
        );
        // Keys 10 and 11 fill lane 0's batch; key 12 starts lane 1's.
        let first = [10, 11, 12].map(|key| event(&mut checkpoint, key as u32, key));
        let first_ids = first.each_ref().map(|event| event.id);
        for event in first {
            let submitted = delivery.try_submit(0, event, b"{}").unwrap();
            assert!(matches!(submitted, Submitted::Accepted));
        }
        delivery.flush();
        assert_eq!(received(&mut receivers[0]), first_ids[..2]);
        assert_eq!(received(&mut receivers[1]), first_ids[2..]);

        // Key 10 is unresolved in lane 0: its next event goes there although
        // lane 1 is the one filling.
        let again = event(&mut checkpoint, 20, 10);
        let again_id = again.id;
        submit(&mut delivery, again);
        assert_eq!(received(&mut receivers[0]), vec![again_id]);

        // Once lane 0 finished all three, key 10 is free again: it goes to
        // the lane that is filling (lane 1, which has room for one more).
        finish(&delivery, 0, 3);
        let free = event(&mut checkpoint, 21, 10);
        let free_id = free.id;
        submit(&mut delivery, free);
        assert_eq!(received(&mut receivers[1]), vec![free_id]);
        assert!(received(&mut receivers[0]).is_empty());
    }

    #[test]
    fn a_key_changing_update_joins_its_old_keys_lane_and_takes_the_new_key_with_it() {
        let mut checkpoint = Checkpoint::new(Lsn(0));
        checkpoint.begin(0);
        let (mut delivery, mut receivers) = delivery_with_lanes(2);
        // Key 1 hashes to lane 1.
        let insert = event(&mut checkpoint, 0, 1);
        let insert_id = insert.id;
        submit(&mut delivery, insert);
        assert_eq!(received(&mut receivers[1]), vec![insert_id]);

        // The update moves the row from key 1 to key 2 (which hashes to
        // lane 0): it must not overtake the insert, so it joins lane 1.
        let mut update = event(&mut checkpoint, 1, 2);
        update.previous_ordering_key = Some(1);
        let update_id = update.id;
        submit(&mut delivery, update);
        assert_eq!(received(&mut receivers[1]), vec![update_id]);
        assert!(delivery.held_waiter().is_none(), "nothing had to wait");

        // Key 2's next change follows the update; a new row taking key 1
        // too.
        let next = [event(&mut checkpoint, 2, 2), event(&mut checkpoint, 3, 1)];
        let next_ids: Vec<_> = next.iter().map(|event| event.id).collect();
        for event in next {
            submit(&mut delivery, event);
        }
        let mut lane_one = received(&mut receivers[1]);
        lane_one.extend(received(&mut receivers[1]));
        assert_eq!(lane_one, next_ids);
        assert!(received(&mut receivers[0]).is_empty());

        // All resolved: key 2 goes to its own lane again.
        finish(&delivery, 1, 4);
        let later = event(&mut checkpoint, 4, 2);
        let later_id = later.id;
        submit(&mut delivery, later);
        assert_eq!(received(&mut receivers[0]), vec![later_id]);
    }

    #[test]
    fn an_update_whose_two_keys_are_in_different_lanes_waits_for_the_old_one() {
        let mut checkpoint = Checkpoint::new(Lsn(0));
        checkpoint.begin(0);
        let (mut delivery, mut receivers) = delivery_with_lanes(2);
        let old_key = event(&mut checkpoint, 0, 0);
        let new_key = event(&mut checkpoint, 1, 1);
        let mut update = event(&mut checkpoint, 2, 1);
        update.previous_ordering_key = Some(0);
        let after = event(&mut checkpoint, 3, 1);
        let ids = [old_key.id, new_key.id, update.id, after.id];
        for event in [old_key, new_key, update, after] {
            submit(&mut delivery, event);
        }
        assert_eq!(received(&mut receivers[0]), vec![ids[0]]);
        assert_eq!(received(&mut receivers[1]), vec![ids[1]]);
        assert!(delivery.held_waiter().is_some(), "the update waits");

        // The old key resolved: the update and what came after it go, in
        // order, to the new key's lane.
        finish(&delivery, 0, 1);
        delivery.flush();
        assert_eq!(received(&mut receivers[1]), vec![ids[2], ids[3]]);
        assert!(received(&mut receivers[0]).is_empty());
        assert!(delivery.held_waiter().is_none());
    }

    #[test]
    fn free_events_fill_one_lane_at_a_time() {
        let mut checkpoint = Checkpoint::new(Lsn(0));
        checkpoint.begin(0);
        let (mut delivery, mut receivers) = delivery_spreading(
            4,
            Spread::Pack {
                lane: 0,
                taken: 0,
                batch: 3,
            },
        );
        let events: Vec<_> = (0..8u32)
            .map(|ordinal| event(&mut checkpoint, ordinal, u64::from(ordinal) * 7919))
            .collect();
        let ids: Vec<_> = events.iter().map(|event| event.id).collect();
        for event in events {
            let submitted = delivery.try_submit(0, event, b"{}").unwrap();
            assert!(matches!(submitted, Submitted::Accepted));
        }
        delivery.flush();
        assert_eq!(received(&mut receivers[0]), ids[0..3]);
        assert_eq!(received(&mut receivers[1]), ids[3..6]);
        assert_eq!(received(&mut receivers[2]), ids[6..8]);
        assert!(received(&mut receivers[3]).is_empty());
    }

    #[test]
    fn keys_whose_events_resolved_are_forgotten() {
        let mut checkpoint = Checkpoint::new(Lsn(0));
        checkpoint.begin(0);
        let (mut delivery, _receivers) = delivery_with_lanes(1);
        let total = 3 * route::MIN_PRUNE_AT as u32;
        for ordinal in 0..total {
            submit(&mut delivery, event(&mut checkpoint, ordinal, u64::from(ordinal)));
            finish(&delivery, 0, 1);
        }
        let owners = delivery.subscriptions[0].owners.len();
        assert!(owners <= route::MIN_PRUNE_AT, "{owners} keys still owned");
    }

    #[test]
    fn packing_passes_over_a_lane_still_busy_with_its_batch() {
        let mut checkpoint = Checkpoint::new(Lsn(0));
        checkpoint.begin(0);
        let (mut delivery, mut receivers) = delivery_spreading(
            3,
            Spread::Pack {
                lane: 0,
                taken: 0,
                batch: 2,
            },
        );
        let events: Vec<_> = (0..6u32)
            .map(|ordinal| event(&mut checkpoint, ordinal, 100 + u64::from(ordinal)))
            .collect();
        for event in events {
            submit(&mut delivery, event);
        }
        for receiver in &mut receivers {
            let mut got = received(receiver);
            got.extend(received(receiver));
            assert_eq!(got.len(), 2, "two per lane");
        }
        // Lanes 1 and 2 resolve theirs; lane 0 is stuck (retrying).
        finish(&delivery, 1, 2);
        finish(&delivery, 2, 2);
        let next = event(&mut checkpoint, 6, 200);
        let next_id = next.id;
        submit(&mut delivery, next);
        assert_eq!(received(&mut receivers[1]), vec![next_id]);
        assert!(received(&mut receivers[0]).is_empty());
    }
}
