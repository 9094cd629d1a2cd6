//! Operator control of a running daemon's subscriptions: it polls
//! `walhook.subscription_state` for the pause flags `walhook pause` and
//! `walhook resume` write and applies them to the subscriptions' gates
//! (within [`POLL_INTERVAL`]), records each subscription's mode there when
//! it changes (for `walhook status`), and keeps the mode and backlog-age
//! gauges current.
//!
//! It never touches the stream or the lanes: the gates carry what it sets,
//! and `deliver` acts on them. A database it cannot reach, or a schema from
//! before these tables, leaves everything as it was and is logged once.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::deliver::gate::{Gate, Mode};
use crate::pgconn::{ConnectParams, connect_sql};
use crate::store::{backlog, subscription_state};
use crate::telemetry::Metrics;

/// How often the pause flags are read: the promised "within a second".
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often the backlog-age gauge is refreshed.
const AGE_INTERVAL: Duration = Duration::from_secs(5);

/// See the module documentation.
pub struct Control {
    pub params: ConnectParams,
    pub gates: Vec<Arc<Gate>>,
    pub metrics: Arc<Metrics>,
}

impl Control {
    /// Polls until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut client: Option<tokio_postgres::Client> = None;
        let mut reported: Vec<Option<Mode>> = vec![None; self.gates.len()];
        let mut last_age = tokio::time::Instant::now() - AGE_INTERVAL;
        let mut failing = false;
        loop {
            for (index, gate) in self.gates.iter().enumerate() {
                if let Some(handles) = self.metrics.subscription(index) {
                    handles.set_mode(gate.mode());
                }
            }
            if client.as_ref().is_none_or(|client| client.is_closed()) {
                client = connect_sql(&self.params).await.ok();
            }
            if let Some(connected) = &client {
                let ages_due = last_age.elapsed() >= AGE_INTERVAL;
                match self.poll(connected, &mut reported, ages_due).await {
                    Ok(()) => {
                        if failing {
                            tracing::info!("walhook.subscription_state readable again; pause and resume apply");
                        }
                        failing = false;
                        if ages_due {
                            last_age = tokio::time::Instant::now();
                        }
                    }
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%error, "cannot read walhook.subscription_state: `walhook pause` and `resume` do not reach this daemon until it can (run `walhook setup`, or the files of sql/ as an administrator)");
                        }
                        failing = true;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    async fn poll(
        &self,
        client: &tokio_postgres::Client,
        reported: &mut [Option<Mode>],
        ages_due: bool,
    ) -> Result<(), crate::store::StatementError> {
        let paused = subscription_state::paused(client).await?;
        for gate in &self.gates {
            let pause = paused.iter().any(|name| *name == gate.name);
            if gate.set_paused(pause) {
                if pause {
                    tracing::info!(subscription = %gate.name, "paused by an operator: its events wait in walhook.backlog");
                } else {
                    tracing::info!(subscription = %gate.name, "resumed by an operator: its backlog drains");
                }
            }
        }
        for (index, gate) in self.gates.iter().enumerate() {
            let mode = gate.mode();
            if let Some(last) = reported.get_mut(index)
                && *last != Some(mode)
            {
                subscription_state::report_mode(client, &gate.name, mode.label()).await?;
                *last = Some(mode);
            }
            if ages_due && let Some(handles) = self.metrics.subscription(index) {
                let age = if handles.backlog_events.get() > 0 || gate.mode() != Mode::Live {
                    backlog::oldest_age_seconds(client, &gate.name).await?
                } else {
                    None
                };
                handles.backlog_oldest_seconds.set(age.unwrap_or(0.0).max(0.0));
            }
        }
        Ok(())
    }
}
