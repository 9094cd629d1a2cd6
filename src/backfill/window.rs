//! The reader's side of backfills: which keys of a backfilled table the
//! stream changed around a chunk, and the chunk to send at its high
//! watermark, minus those keys.
//!
//! A table is noted from its backfill's `arm` watermark to its `end`. For
//! each change of it the reader records the transaction's xid, the key
//! (old and new, when an update moves the row) and whether the chunk's low
//! watermark was already seen. At the high watermark a key conflicts — and
//! its row leaves the chunk — when its change came after the low watermark,
//! or came before it from a transaction the chunk's snapshot did not see
//! (its commit was logged before the low watermark but was not yet visible
//! when the snapshot was taken). A TRUNCATE conflicts with every key.
//!
//! It does not read the table (`worker`) nor send anything (`pipeline`).

use std::collections::{HashMap, HashSet};

use tokio::sync::mpsc;

use super::{Chunk, Mark, Watermark};
use crate::event::{Change, EventKind, Row, TableInfo};

/// A row's key as the stream and a chunk both render it: each key column's
/// JSON text, length first. `None` when a key column is missing.
pub fn key_bytes(table: &TableInfo, row: &Row) -> Option<Box<[u8]>> {
    let mut key = Vec::new();
    for &index in &table.key_columns {
        let value = row.value(index)?;
        key.extend_from_slice(&(value.len() as u32).to_le_bytes());
        key.extend_from_slice(value);
    }
    Some(key.into_boxed_slice())
}

/// One change of a noted table: its xid, its key (`None`: every key, a
/// TRUNCATE), and whether it came after the chunk's low watermark.
struct Noted {
    xid: u32,
    key: Option<Box<[u8]>>,
    after_low: bool,
}

#[derive(Default)]
struct Tracked {
    /// The chunk whose low watermark came last, until its high one.
    low_seen: bool,
    /// Changes since the last high watermark.
    changes: Vec<Noted>,
}

/// The chunks coming from the worker and the tables being noted.
pub struct Windows {
    slot: String,
    chunks: mpsc::UnboundedReceiver<Chunk>,
    /// Chunks received whose high watermark has not come yet.
    waiting: Vec<Chunk>,
    tracked: HashMap<u32, Tracked>,
}

/// A chunk to send now, with the keys that must not be sent.
pub struct Ready {
    pub chunk: Chunk,
    pub conflicts: HashSet<Box<[u8]>>,
    /// A TRUNCATE conflicted: nothing of the chunk may be sent.
    pub all_conflict: bool,
}

impl Windows {
    pub fn new(slot: &str, chunks: mpsc::UnboundedReceiver<Chunk>) -> Windows {
        Windows {
            slot: slot.to_owned(),
            chunks,
            waiting: Vec::new(),
            tracked: HashMap::new(),
        }
    }

    /// Windows that never receive a chunk (a pipeline without backfills).
    pub fn none() -> Windows {
        let (_, chunks) = mpsc::unbounded_channel();
        Windows::new("", chunks)
    }

    /// Whether any table is being noted (so changes need looking at).
    pub fn is_tracking(&self) -> bool {
        !self.tracked.is_empty()
    }

    /// Notes a change of a tracked table.
    pub fn note(&mut self, change: &Change) {
        let Some(tracked) = self.tracked.get_mut(&change.table.relation_id) else {
            return;
        };
        let xid = change.transaction.xid;
        let after_low = tracked.low_seen;
        if change.kind == EventKind::Truncate {
            tracked.changes.push(Noted {
                xid,
                key: None,
                after_low,
            });
            return;
        }
        for row in [change.old.as_ref(), change.new.as_ref()].into_iter().flatten() {
            if let Some(key) = key_bytes(&change.table, row) {
                tracked.changes.push(Noted {
                    xid,
                    key: Some(key),
                    after_low,
                });
            }
        }
    }

    /// A watermark from the stream. At a high watermark of this walhook's,
    /// the chunk it closes, if the worker's chunk is at hand.
    pub fn watermark(&mut self, watermark: &Watermark) -> Option<Ready> {
        if watermark.slot != self.slot {
            return None;
        }
        match watermark.mark {
            Mark::Arm => {
                self.tracked.entry(watermark.table).or_default();
                None
            }
            Mark::End => {
                self.tracked.remove(&watermark.table);
                None
            }
            Mark::Low => {
                self.tracked.entry(watermark.table).or_default().low_seen = true;
                None
            }
            Mark::High => {
                let tracked = self.tracked.entry(watermark.table).or_default();
                let changes = std::mem::take(&mut tracked.changes);
                tracked.low_seen = false;
                let chunk = self.take_chunk(watermark)?;
                let mut conflicts = HashSet::new();
                let mut all_conflict = false;
                for noted in changes {
                    if !noted.after_low && !chunk.in_progress.contains(&noted.xid) {
                        continue;
                    }
                    match noted.key {
                        Some(key) => {
                            conflicts.insert(key);
                        }
                        None => all_conflict = true,
                    }
                }
                Some(Ready {
                    chunk,
                    conflicts,
                    all_conflict,
                })
            }
        }
    }

    /// The worker's chunk for `watermark`, if it is at hand. The worker
    /// hands a chunk over before it writes the chunk's high watermark, and
    /// numbers chunks uniquely per run, so a high watermark read again from
    /// an earlier run finds nothing; the worker reads that chunk again.
    fn take_chunk(&mut self, watermark: &Watermark) -> Option<Chunk> {
        while let Ok(chunk) = self.chunks.try_recv() {
            self.waiting.push(chunk);
        }
        let index = self.waiting.iter().position(|chunk| {
            chunk.backfill == watermark.backfill && chunk.chunk == watermark.chunk
        })?;
        let chunk = self.waiting.swap_remove(index);
        // Chunks whose worker gave up on them (it waits for one at a time).
        self.waiting.retain(|waiting| !waiting.handed.is_closed());
        Some(chunk)
    }
}
