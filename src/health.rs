//! The daemon's health as its stages report it: whether the replication
//! stream is connected and whether the checkpoint moves while work is
//! pending. The reader and `app` write it; `/readyz` reads it. It knows
//! nothing of HTTP.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long the checkpoint may stand still while work is pending before
/// `/readyz` says the pipeline is stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(120);

/// What the pipeline tells the admin server about its health.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    connected: AtomicBool,
    /// Milliseconds since `started` when the checkpoint last moved or was
    /// found idle (nothing pending).
    last_progress_ms: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            connected: AtomicBool::new(false),
            last_progress_ms: AtomicU64::new(0),
        }
    }
}

impl Health {
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
        self.progressed();
    }

    /// The checkpoint moved, or nothing is pending.
    pub fn progressed(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_progress_ms.store(now, Ordering::Release);
    }

    /// Connected, and progress within [`STALL_AFTER`].
    pub fn ready(&self) -> Result<(), &'static str> {
        if !self.connected.load(Ordering::Acquire) {
            return Err("replication stream not connected");
        }
        let since = self.started.elapsed().as_millis() as u64
            - self
                .last_progress_ms
                .load(Ordering::Acquire)
                .min(self.started.elapsed().as_millis() as u64);
        if Duration::from_millis(since) > STALL_AFTER {
            return Err("checkpoint stalled: pending events have not been delivered");
        }
        Ok(())
    }
}
