//! The checkpoint: which WAL position may be confirmed to PostgreSQL.
//!
//! Transactions arrive in commit order. Each one that produced events is held
//! here, with a count of its events that are not yet resolved (answered 2xx
//! or stored as a dead letter). The confirmed LSN is the end of the newest
//! transaction such that it and every transaction before it are fully
//! resolved: the contiguous resolved frontier. Transactions without events
//! and idle keepalives move the frontier too, but never past an unresolved
//! transaction. The reader task owns the [`Checkpoint`]; delivery tasks hold
//! [`Ack`]s, which cost one atomic decrement to resolve.
//!
//! It does not talk to PostgreSQL; the source sends what [`Checkpoint::advance`]
//! returns.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::lsn::Lsn;

/// A claim on one event of one transaction. Resolve it only when the event is
/// durable (delivered or dead-lettered); dropping it unresolved keeps the
/// transaction, and so the slot, where it is — which is what a shutdown that
/// abandons in-flight requests needs.
///
/// Nobody is woken when a transaction completes: the reader looks at the
/// front of the queue when it reports, so resolving costs one atomic
/// decrement on the delivery side and nothing else.
#[derive(Debug)]
pub struct Ack {
    pending: Arc<AtomicUsize>,
}

impl Ack {
    /// A claim counted in `pending` rather than in a transaction: the rows
    /// of a backfill chunk, which hold their chunk's progress record, not
    /// the slot (a chunk not completed is read again after a restart).
    pub fn counted(pending: &Arc<AtomicUsize>) -> Ack {
        pending.fetch_add(1, Ordering::AcqRel);
        Ack {
            pending: Arc::clone(pending),
        }
    }

    /// The event is durable.
    pub fn resolve(self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct OpenTransaction {
    /// Where confirming this transaction (and any empty ones after it) lands.
    end: Lsn,
    pending: Arc<AtomicUsize>,
    /// Its commit time (microseconds since 2000-01-01), for the lag metric.
    commit_time_micros: i64,
}

/// The resolved frontier over transactions in commit order.
#[derive(Debug)]
pub struct Checkpoint {
    confirmed: Lsn,
    open: VecDeque<OpenTransaction>,
    /// The transaction being read, between Begin and Commit. Its count holds
    /// one extra token until Commit so it cannot complete early.
    reading: Option<Arc<AtomicUsize>>,
    reading_commit_time_micros: i64,
}

impl Checkpoint {
    /// Starts at `confirmed`, the slot's confirmed position.
    pub fn new(confirmed: Lsn) -> Self {
        Checkpoint {
            confirmed,
            open: VecDeque::new(),
            reading: None,
            reading_commit_time_micros: 0,
        }
    }

    /// The position that may be confirmed now (after the last `advance`).
    #[cfg(test)]
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// How many committed transactions still wait on their events.
    #[cfg(test)]
    pub fn open_transactions(&self) -> usize {
        self.open.len()
    }

    /// Whether a transaction is being read (between Begin and Commit).
    pub fn is_reading(&self) -> bool {
        self.reading.is_some()
    }

    /// A transaction begins (pgoutput Begin, which carries its commit time).
    pub fn begin(&mut self, commit_time_micros: i64) {
        debug_assert!(self.reading.is_none(), "begin inside a transaction");
        self.reading = Some(Arc::new(AtomicUsize::new(1)));
        self.reading_commit_time_micros = commit_time_micros;
    }

    /// The commit time of the oldest transaction with unresolved events
    /// (microseconds since 2000-01-01), or `None` when nothing is pending.
    pub fn oldest_pending_commit_micros(&self) -> Option<i64> {
        match self.open.front() {
            Some(oldest) => Some(oldest.commit_time_micros),
            None => self
                .reading
                .as_ref()
                .filter(|pending| pending.load(Ordering::Acquire) > 1)
                .map(|_| self.reading_commit_time_micros),
        }
    }

    /// Registers one event of the transaction being read.
    pub fn track_event(&mut self) -> Ack {
        let pending = Arc::clone(self.reading.get_or_insert_with(|| {
            // An event outside Begin/Commit is a protocol violation the
            // decoder rejects; track it as its own transaction anyway.
            Arc::new(AtomicUsize::new(1))
        }));
        pending.fetch_add(1, Ordering::AcqRel);
        Ack { pending }
    }

    /// The transaction being read commits; `end` is its Commit end LSN.
    pub fn commit(&mut self, end: Lsn) {
        let Some(pending) = self.reading.take() else {
            self.skip_to(end);
            return;
        };
        if pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            // No event outstanding: as good as a transaction that matched
            // nothing.
            self.skip_to(end);
        } else {
            self.open.push_back(OpenTransaction {
                end,
                pending,
                commit_time_micros: self.reading_commit_time_micros,
            });
        }
    }

    /// Nothing needs confirming up to `position` beyond what is already open:
    /// a transaction with no events, or an idle keepalive's WAL end. Ignored
    /// while a transaction is being read.
    pub fn skip_to(&mut self, position: Lsn) {
        if self.reading.is_some() {
            return;
        }
        match self.open.back_mut() {
            // Confirming the last open transaction may then go this far too.
            Some(last) => last.end = last.end.max(position),
            None => self.confirmed = self.confirmed.max(position),
        }
    }

    /// Pops every fully resolved transaction at the front and returns the new
    /// confirmed position.
    pub fn advance(&mut self) -> Lsn {
        while let Some(front) = self.open.front() {
            if front.pending.load(Ordering::Acquire) != 0 {
                break;
            }
            let end = front.end;
            debug_assert!(end >= self.confirmed, "checkpoint moved backwards");
            self.confirmed = self.confirmed.max(end);
            self.open.pop_front();
        }
        self.confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(value: u64) -> Lsn {
        Lsn(value)
    }

    #[test]
    fn empty_transactions_and_keepalives_move_an_idle_frontier() {
        let mut checkpoint = Checkpoint::new(lsn(10));
        checkpoint.begin(0);
        checkpoint.commit(lsn(20));
        assert_eq!(checkpoint.advance(), lsn(20));
        checkpoint.skip_to(lsn(30));
        assert_eq!(checkpoint.advance(), lsn(30));
        checkpoint.skip_to(lsn(25));
        assert_eq!(checkpoint.advance(), lsn(30), "never backwards");
    }

    #[test]
    fn frontier_waits_for_the_oldest_unresolved_transaction() {
        let mut checkpoint = Checkpoint::new(lsn(0));
        checkpoint.begin(0);
        let first = checkpoint.track_event();
        checkpoint.commit(lsn(100));
        checkpoint.begin(0);
        let second_a = checkpoint.track_event();
        let second_b = checkpoint.track_event();
        checkpoint.commit(lsn(200));
        // A later empty transaction and a keepalive ride behind the second.
        checkpoint.begin(0);
        checkpoint.commit(lsn(300));
        checkpoint.skip_to(lsn(350));

        second_a.resolve();
        second_b.resolve();
        assert_eq!(checkpoint.advance(), lsn(0), "the first is still open");
        first.resolve();
        assert_eq!(checkpoint.advance(), lsn(350));
        assert_eq!(checkpoint.open_transactions(), 0);
    }

    #[test]
    fn a_transaction_cannot_complete_before_its_commit() {
        let mut checkpoint = Checkpoint::new(lsn(0));
        checkpoint.begin(0);
        let event = checkpoint.track_event();
        event.resolve();
        // Still reading: a keepalive in the middle must not move anything.
        checkpoint.skip_to(lsn(50));
        assert_eq!(checkpoint.advance(), lsn(0));
        checkpoint.commit(lsn(60));
        assert_eq!(checkpoint.advance(), lsn(60));
    }

    #[test]
    fn dropped_acks_hold_the_frontier() {
        let mut checkpoint = Checkpoint::new(lsn(0));
        checkpoint.begin(0);
        drop(checkpoint.track_event());
        checkpoint.commit(lsn(10));
        assert_eq!(checkpoint.advance(), lsn(0));
    }

    #[test]
    fn an_ack_resolved_on_another_thread_moves_the_frontier() {
        let mut checkpoint = Checkpoint::new(lsn(0));
        checkpoint.begin(0);
        let event = checkpoint.track_event();
        checkpoint.commit(lsn(10));
        assert_eq!(checkpoint.advance(), lsn(0));
        std::thread::spawn(move || event.resolve()).join().unwrap();
        assert_eq!(checkpoint.advance(), lsn(10));
    }
}
