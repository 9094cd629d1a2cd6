//! The dead-letter store: events that could not be delivered, committed to
//! `walhook.dead_letters` before their changes may be confirmed.
//!
//! A store that fails is reported to the caller, which retries; nothing here
//! gives up on an event. Storing the same event twice (a replay after a
//! crash) updates the row instead of adding one.

use std::time::SystemTime;

use tokio::sync::Mutex;

use crate::pgconn::{ConnectParams, connect_sql};

/// One undeliverable event.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    pub subscription: &'a str,
    pub event_id: &'a str,
    pub payload: &'a [u8],
    pub last_status: Option<u16>,
    pub last_error: &'a str,
    pub attempts: u32,
    pub first_attempt_at: SystemTime,
}

/// Writes dead letters over its own SQL connection, reconnecting as needed.
pub struct DeadLetters {
    params: ConnectParams,
    client: Mutex<Option<tokio_postgres::Client>>,
}

/// Storing a dead letter failed; the caller retries.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to store a dead letter: {0}")]
    Connect(String),
    #[error("cannot insert into walhook.dead_letters (run `walhook setup`?): {0}")]
    Insert(#[source] tokio_postgres::Error),
    #[error("the payload is not UTF-8 JSON")]
    Payload,
}

const INSERT: &str = "INSERT INTO walhook.dead_letters \
     (subscription, event_id, payload, last_status, last_error, attempts, first_attempt_at) \
     VALUES ($1, $2, $3::text::json, $4, $5, $6, to_timestamp($7::float8)) \
     ON CONFLICT (subscription, event_id) DO UPDATE SET \
       last_status = EXCLUDED.last_status, last_error = EXCLUDED.last_error, \
       attempts = walhook.dead_letters.attempts + EXCLUDED.attempts, last_attempt_at = now()";

impl DeadLetters {
    pub fn new(params: ConnectParams) -> Self {
        DeadLetters {
            params,
            client: Mutex::new(None),
        }
    }

    /// Commits one dead letter.
    pub async fn store(&self, letter: &DeadLetter<'_>) -> Result<(), StoreError> {
        let payload = std::str::from_utf8(letter.payload).map_err(|_| StoreError::Payload)?;
        let first_attempt = letter
            .first_attempt_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs_f64())
            .unwrap_or(0.0);
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|client| client.is_closed()) {
            let client = connect_sql(&self.params)
                .await
                .map_err(|error| StoreError::Connect(error.to_string()))?;
            *guard = Some(client);
        }
        let Some(client) = guard.as_ref() else {
            return Err(StoreError::Connect("no connection".into()));
        };
        let result = client
            .execute(
                INSERT,
                &[
                    &letter.subscription,
                    &letter.event_id,
                    &payload,
                    &letter.last_status.map(i32::from),
                    &letter.last_error,
                    &(letter.attempts as i32),
                    &first_attempt,
                ],
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) => {
                if error.is_closed() {
                    *guard = None;
                }
                Err(StoreError::Insert(error))
            }
        }
    }
}
