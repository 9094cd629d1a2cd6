//! Which lane an event goes to. Under `key` ordering a key belongs to the
//! lane that holds its unresolved events, so its next event follows them
//! there (and so never travels in a second request at the same time); a key
//! with nothing unresolved is free and may go to any lane. A key-changing
//! update follows whichever of its two keys is owned; when both are owned by
//! different lanes it waits for the old key's lane.
//!
//! Free events are spread by their key's hash when requests carry one event,
//! and packed into one lane at a time when they carry batches: a lane takes
//! `batch.max_events` free events before the next one takes over, so that a
//! batch fills with many keys at any rate instead of each of the lanes
//! batching the few events its own keys had (docs/configuration.md,
//! `batch.max_events`).
//!
//! It does not queue events, hold them, or know about barriers (`deliver`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::Ordering as AtomicOrdering;

use super::{Lane, Outbound};
use crate::config::DeliveryOrder;

/// Below this many owned keys the map is not pruned.
pub(super) const MIN_PRUNE_AT: usize = 4096;

/// Where a `key` subscription's event may go, as far as its keys say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum KeyConstraint {
    /// Neither of its keys has unresolved events: any lane.
    Free,
    /// It must follow its key's (or its old key's) events into this lane.
    Follow(usize),
    /// Its new key and its old key are owned by different lanes: it waits
    /// for this lane (the old key's) to resolve them.
    WaitFor(usize),
}

/// The lane a key's events are in, and how many events that lane had been
/// given once the key's last one was queued: the key is free again once the
/// lane has finished that many.
#[derive(Clone, Copy)]
struct Owner {
    lane: usize,
    through: u64,
}

/// The owners of the keys with unresolved events, of one subscription.
pub(super) struct KeyOwners {
    owners: HashMap<u64, Owner, BuildHasherDefault<KeyHashHasher>>,
    prune_at: usize,
}

impl KeyOwners {
    pub(super) fn new() -> KeyOwners {
        KeyOwners {
            owners: HashMap::default(),
            prune_at: MIN_PRUNE_AT,
        }
    }

    /// The lane holding unresolved events of `key`, if any.
    fn owner(&self, key: u64, lanes: &[Lane]) -> Option<usize> {
        let owner = self.owners.get(&key)?;
        let lane = lanes.get(owner.lane)?;
        (lane.load.finished_total.load(AtomicOrdering::Acquire) < owner.through).then_some(owner.lane)
    }

    /// What `event`'s keys say about where it may go.
    pub(super) fn constraint(&self, event: &Outbound, lanes: &[Lane]) -> KeyConstraint {
        let new = self.owner(event.ordering_key, lanes);
        let old = event
            .previous_ordering_key
            .and_then(|previous| self.owner(previous, lanes));
        match (new, old) {
            (Some(new), Some(old)) if new != old => KeyConstraint::WaitFor(old),
            (Some(lane), _) | (None, Some(lane)) => KeyConstraint::Follow(lane),
            (None, None) => KeyConstraint::Free,
        }
    }

    /// Records that `event` was queued in `lane` as the lane's `through`th
    /// event: its key, and an update's old key (whose later events — a new
    /// row taking the old key — must not overtake the change), belong to
    /// that lane until then.
    pub(super) fn queued(&mut self, event: &Outbound, lane: usize, through: u64, lanes: &[Lane]) {
        let owner = Owner { lane, through };
        self.owners.insert(event.ordering_key, owner);
        if let Some(previous) = event.previous_ordering_key {
            self.owners.insert(previous, owner);
        }
        if self.owners.len() >= self.prune_at {
            // Keys whose events all resolved need no entry; the map stays
            // about as large as what is in flight, which the byte budget
            // bounds.
            self.owners.retain(|_, owner| {
                lanes.get(owner.lane).is_some_and(|lane| {
                    lane.load.finished_total.load(AtomicOrdering::Acquire) < owner.through
                })
            });
            self.prune_at = (self.owners.len() * 2).max(MIN_PRUNE_AT);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.owners.len()
    }
}

/// How free events are spread over the lanes.
pub(super) enum Spread {
    /// By the key's hash (`key`, one event per request).
    Hash,
    /// Each to the next lane (`none`, one event per request).
    RoundRobin { last: usize },
    /// One lane at a time takes `batch` free events, then the next.
    Pack { lane: usize, taken: usize, batch: usize },
}

impl Spread {
    pub(super) fn new(ordering: DeliveryOrder, max_events: usize) -> Spread {
        if max_events > 1 {
            Spread::Pack {
                lane: 0,
                taken: 0,
                batch: max_events,
            }
        } else if ordering == DeliveryOrder::None {
            Spread::RoundRobin { last: 0 }
        } else {
            Spread::Hash
        }
    }

    /// The lane for a free event with `key`.
    pub(super) fn next_lane(&mut self, key: u64, lanes: &[Lane]) -> usize {
        let lane_count = lanes.len().max(1);
        match self {
            Spread::Hash => (key % lane_count as u64) as usize,
            Spread::RoundRobin { last } => {
                *last = (*last + 1) % lane_count;
                *last
            }
            Spread::Pack { lane, taken, batch } => {
                if *taken >= *batch || *lane >= lane_count {
                    *lane = least_busy_after(*lane, lanes);
                    *taken = 0;
                }
                *taken += 1;
                *lane
            }
        }
    }
}

/// The lane to pack next: the first idle one after `current`, else the one
/// with the fewest unresolved events. A lane stuck retrying one request is
/// passed over, so it does not gather the keys of batch after batch.
fn least_busy_after(current: usize, lanes: &[Lane]) -> usize {
    let count = lanes.len().max(1);
    let mut best = (current + 1) % count;
    let mut best_load = usize::MAX;
    for step in 1..=count {
        let index = (current + step) % count;
        let Some(lane) = lanes.get(index) else {
            continue;
        };
        let load = lane.load.outstanding.load(AtomicOrdering::Acquire);
        if load == 0 {
            return index;
        }
        if load < best_load {
            (best, best_load) = (index, load);
        }
    }
    best
}

/// Keys are already hashes (`event::ordering_key`), FNV-1a, which is quick
/// but whose bits chosen keys can make collide: the map mixes them once
/// more instead of hashing them again.
#[derive(Default)]
pub(super) struct KeyHashHasher(u64);

impl Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; this keeps any other input well mixed.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, key: u64) {
        // FNV-1a's low bits are easy to make collide with chosen keys;
        // mixing spreads them over the table (the map's probe length).
        let mixed = (key ^ (key >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = mixed ^ (mixed >> 29);
    }
}
