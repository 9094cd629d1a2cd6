//! A subscription's gate: whether its events may go to its endpoint now.
//! It holds the circuit breaker, the operator's pause flag and the reader's
//! choice of path (live, or behind the backlog), and counts the events sent
//! to the backlog so the reader knows when the backlog has caught up.
//!
//! Shared by the reader, the subscription's lanes, spiller and drainer, and
//! kept across reconnections (an endpoint stays down while the replication
//! connection is re-opened). It decides nothing on its own: the breaker
//! counts what the lanes tell it, and `deliver` acts on what it says.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::BreakerConfig;
pub use crate::mode::Mode;

/// See the module documentation.
pub struct Gate {
    pub name: String,
    pub breaker: Breaker,
    paused: AtomicBool,
    /// The reader sends this subscription's new events to the backlog.
    backlogged: AtomicBool,
    /// Events handed to the backlog (by the reader, or by lanes giving back
    /// what they held when the circuit opened), and of those, how many are
    /// committed there. Equal, and drained, means the backlog caught up.
    spill_requested: AtomicU64,
    spill_committed: AtomicU64,
    /// Which drain pass is current: events of an abandoned pass are dropped
    /// by the lanes (their rows stay, and the next pass reads them again).
    generation: AtomicU64,
    /// Wakes the drainer when anything above changed.
    changed: Notify,
    /// Wakes every waiter of [`Gate::until`] when the pause flag, the
    /// circuit or the reader's path changed.
    switched: Notify,
}

impl Gate {
    pub fn new(name: &str, breaker: BreakerConfig) -> Gate {
        Gate {
            name: name.to_owned(),
            breaker: Breaker::new(breaker),
            paused: AtomicBool::new(false),
            backlogged: AtomicBool::new(false),
            spill_requested: AtomicU64::new(0),
            spill_committed: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            changed: Notify::new(),
            switched: Notify::new(),
        }
    }

    /// Whether nothing may be sent now but probes: paused, or circuit open.
    pub fn holds_back(&self) -> bool {
        self.is_paused() || self.breaker.is_open()
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Sets the pause flag; true when it changed.
    pub fn set_paused(&self, paused: bool) -> bool {
        let changed = self.paused.swap(paused, Ordering::AcqRel) != paused;
        if changed {
            self.switched();
        }
        changed
    }

    /// A request failed; true when that opened the circuit.
    pub(super) fn request_failed(&self) -> bool {
        let opened = self.breaker.failed();
        if opened {
            self.switched();
        }
        opened
    }

    /// A probe was answered: the circuit closes.
    pub(super) fn close_circuit(&self) {
        self.breaker.close();
        self.switched();
    }

    /// Resolves once `condition` holds, looking again whenever the pause
    /// flag, the circuit or the reader's path changes.
    pub(super) async fn until(&self, condition: impl Fn(&Gate) -> bool) {
        loop {
            let switched = self.switched.notified();
            tokio::pin!(switched);
            switched.as_mut().enable();
            if condition(self) {
                return;
            }
            switched.await;
        }
    }

    fn switched(&self) {
        self.switched.notify_waiters();
        self.wake();
    }

    pub fn is_backlogged(&self) -> bool {
        self.backlogged.load(Ordering::Acquire)
    }

    pub(super) fn set_backlogged(&self, backlogged: bool) {
        self.backlogged.store(backlogged, Ordering::Release);
        self.switched();
    }

    pub fn mode(&self) -> Mode {
        if self.is_paused() {
            Mode::Paused
        } else if self.breaker.is_open() {
            Mode::CircuitOpen
        } else if self.is_backlogged() {
            Mode::Backlog
        } else {
            Mode::Live
        }
    }

    /// A new delivery starts: the spills of the last one are over (stored,
    /// or abandoned and to be read again from the slot).
    pub(super) fn reset_spill_counts(&self) {
        self.spill_requested.store(0, Ordering::Release);
        self.spill_committed.store(0, Ordering::Release);
    }

    pub(super) fn spill_requested(&self, events: u64) {
        self.spill_requested.fetch_add(events, Ordering::AcqRel);
    }

    pub(super) fn spill_committed(&self, events: u64) {
        self.spill_committed.fetch_add(events, Ordering::AcqRel);
        self.wake();
    }

    pub(super) fn requested(&self) -> u64 {
        self.spill_requested.load(Ordering::Acquire)
    }

    pub(super) fn committed(&self) -> u64 {
        self.spill_committed.load(Ordering::Acquire)
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Starts a new drain pass; events of earlier passes become stale.
    pub(super) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Wakes the drainer (it keeps one wake-up if it is not waiting).
    pub(super) fn wake(&self) {
        self.changed.notify_one();
    }

    /// Resolves at the next [`Gate::wake`] (or at once if one is pending).
    pub(super) async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// A subscription's circuit breaker. Closed, requests go as usual; after
/// `failures` consecutive failed requests, or failures only for `window`,
/// it opens: the lanes stop sending and the drainer sends one probe every
/// `probe_interval` until one is answered.
pub struct Breaker {
    config: BreakerConfig,
    open: AtomicBool,
    streak: Mutex<Streak>,
}

#[derive(Default)]
struct Streak {
    failures: u32,
    since: Option<Instant>,
    /// When it opened, or was last probed: the next probe is due an
    /// interval later.
    last_probe: Option<Instant>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            open: AtomicBool::new(false),
            streak: Mutex::new(Streak::default()),
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// The endpoint gave a definite answer: the failure streak ends. It
    /// does not close an open circuit; only a probe does.
    pub fn succeeded(&self) {
        if let Ok(mut streak) = self.streak.lock() {
            streak.failures = 0;
            streak.since = None;
        }
    }

    /// A request failed (no answer, or one that asks to retry); true when
    /// this failure opened the circuit.
    pub fn failed(&self) -> bool {
        let Ok(mut streak) = self.streak.lock() else {
            return false;
        };
        if self.is_open() {
            return false;
        }
        let now = Instant::now();
        streak.failures = streak.failures.saturating_add(1);
        let since = *streak.since.get_or_insert(now);
        if streak.failures >= self.config.failures
            || now.saturating_duration_since(since) >= self.config.window
        {
            streak.last_probe = Some(now);
            self.open.store(true, Ordering::Release);
            return true;
        }
        false
    }

    /// A probe was answered: requests go as usual again.
    pub fn close(&self) {
        if let Ok(mut streak) = self.streak.lock() {
            *streak = Streak::default();
        }
        self.open.store(false, Ordering::Release);
    }

    /// When the next probe is due.
    pub fn next_probe_at(&self) -> Instant {
        let last = self
            .streak
            .lock()
            .ok()
            .and_then(|streak| streak.last_probe)
            .unwrap_or_else(Instant::now);
        last + self.config.probe_interval.min(Duration::from_secs(24 * 3600))
    }

    /// A probe went out (and failed): the next one waits an interval.
    pub fn probed(&self) {
        if let Ok(mut streak) = self.streak.lock() {
            streak.last_probe = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, window: Duration) -> Breaker {
        Breaker::new(BreakerConfig {
            failures,
            window,
            probe_interval: Duration::from_secs(10),
        })
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_between_resets_the_count() {
        let breaker = breaker(3, Duration::from_secs(3600));
        assert!(!breaker.failed());
        assert!(!breaker.failed());
        breaker.succeeded();
        assert!(!breaker.failed());
        assert!(!breaker.failed());
        assert!(!breaker.is_open());
        assert!(breaker.failed(), "the third in a row opens it");
        assert!(breaker.is_open());
        assert!(!breaker.failed(), "already open");
        breaker.succeeded();
        assert!(breaker.is_open(), "only a probe closes it");
        breaker.close();
        assert!(!breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn failing_for_the_whole_window_opens_it_whatever_the_count() {
        let breaker = breaker(1000, Duration::from_secs(30));
        assert!(!breaker.failed());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!breaker.failed());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(breaker.failed());
    }

    #[tokio::test(start_paused = true)]
    async fn probes_are_spaced_by_the_interval() {
        let breaker = breaker(1, Duration::from_secs(30));
        let opened = Instant::now();
        assert!(breaker.failed());
        assert_eq!(breaker.next_probe_at(), opened + Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(10)).await;
        breaker.probed();
        assert_eq!(breaker.next_probe_at(), opened + Duration::from_secs(20));
    }

    #[test]
    fn the_mode_says_the_most_pressing_reason() {
        let gate = Gate::new("s", BreakerConfig::default());
        assert_eq!(gate.mode(), Mode::Live);
        gate.set_backlogged(true);
        assert_eq!(gate.mode(), Mode::Backlog);
        for _ in 0..BreakerConfig::default().failures {
            gate.request_failed();
        }
        assert_eq!(gate.mode(), Mode::CircuitOpen);
        assert!(gate.set_paused(true));
        assert!(!gate.set_paused(true), "no change");
        assert_eq!(gate.mode(), Mode::Paused);
        assert!(gate.holds_back());
    }
}
