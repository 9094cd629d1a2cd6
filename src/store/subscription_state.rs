//! `walhook.subscription_state`: which subscriptions an operator paused
//! (`walhook pause` / `resume` write it, the running daemon polls it), and
//! the delivery mode the daemon last reported for each (read by `status`).
//!
//! It stores and reads; what a pause does is `deliver`'s business.

use std::collections::HashMap;

use super::{StatementError, failed};

/// Pauses or resumes a subscription.
pub async fn set_paused(
    client: &tokio_postgres::Client,
    subscription: &str,
    paused: bool,
) -> Result<(), StatementError> {
    const QUERY: &str = "INSERT INTO walhook.subscription_state (subscription, paused, paused_at) \
         VALUES ($1, $2, CASE WHEN $2 THEN now() END) \
         ON CONFLICT (subscription) DO UPDATE SET paused = EXCLUDED.paused, \
             paused_at = CASE WHEN EXCLUDED.paused \
                 THEN coalesce(walhook.subscription_state.paused_at, now()) END";
    client
        .execute(QUERY, &[&subscription, &paused])
        .await
        .map(|_| ())
        .map_err(failed(QUERY))
}

/// The names of the paused subscriptions.
pub async fn paused(client: &tokio_postgres::Client) -> Result<Vec<String>, StatementError> {
    const QUERY: &str = "SELECT subscription FROM walhook.subscription_state WHERE paused";
    client
        .query(QUERY, &[])
        .await
        .and_then(|rows| rows.iter().map(|row| row.try_get(0)).collect())
        .map_err(failed(QUERY))
}

/// Records the mode the daemon is in for a subscription.
pub async fn report_mode(
    client: &tokio_postgres::Client,
    subscription: &str,
    mode: &str,
) -> Result<(), StatementError> {
    const QUERY: &str = "INSERT INTO walhook.subscription_state (subscription, mode, mode_since) \
         VALUES ($1, $2, now()) \
         ON CONFLICT (subscription) DO UPDATE SET mode = EXCLUDED.mode, mode_since = now() \
         WHERE walhook.subscription_state.mode IS DISTINCT FROM EXCLUDED.mode";
    client
        .execute(QUERY, &[&subscription, &mode])
        .await
        .map(|_| ())
        .map_err(failed(QUERY))
}

/// One subscription's recorded state.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub paused: bool,
    /// The mode the daemon last reported, if it ever did.
    pub mode: Option<String>,
}

/// Every recorded state, by subscription name.
pub async fn all(
    client: &tokio_postgres::Client,
) -> Result<HashMap<String, State>, StatementError> {
    const QUERY: &str = "SELECT subscription, paused, mode FROM walhook.subscription_state";
    client
        .query(QUERY, &[])
        .await
        .and_then(|rows| {
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get(0)?,
                        State {
                            paused: row.try_get(1)?,
                            mode: row.try_get(2)?,
                        },
                    ))
                })
                .collect()
        })
        .map_err(failed(QUERY))
}
