//! `walhook dead-letters list / replay / purge`: inspect, redeliver and
//! delete the events parked in `walhook.dead_letters`.
//!
//! A replay sends each stored payload byte for byte to its subscription's
//! *current* endpoint — URL, headers and signing key from the config as it is
//! now — with the event's original id as `webhook-id`, so a receiver that
//! already saw it recognises the duplicate. A batched subscription gets each
//! letter alone in the shape its receiver parses, `{"events": [payload]}`:
//! a batch of one, whose `webhook-id` is the event's id, live or replayed.
//! Letters go in their original order (`walhook.dead_letters.id`); a row is
//! deleted only after a 2xx. When one letter of a subscription fails, the
//! rest of that subscription's letters wait for the next replay, so a key's
//! changes never overtake each other. Purge deletes without sending and
//! refuses to run without a selector.
//!
//! It does not read the slot: dead letters are already confirmed there.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use bytes::Bytes;

use crate::commands::CommandError;
use crate::config::Config;
use crate::deliver::http::{Attempt, Endpoint, EndpointError, RequestBody, build_client};
use crate::deliver::policy::Verdict;
use crate::pgconn::connect_sql;

/// Which dead letters a command acts on.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub all: bool,
    pub subscription: Option<String>,
    /// Event ids (`wh_…`), as in `list`.
    pub ids: Vec<String>,
}

impl Selector {
    fn is_empty(&self) -> bool {
        !self.all && self.subscription.is_none() && self.ids.is_empty()
    }

    /// The WHERE clause and its parameters (`all` selects everything).
    fn clause(&self) -> (String, Vec<Param>) {
        let mut conditions = Vec::new();
        let mut params = Vec::new();
        if let Some(subscription) = &self.subscription {
            params.push(Param::Text(subscription.clone()));
            conditions.push(format!("subscription = ${}", params.len()));
        }
        if !self.ids.is_empty() {
            params.push(Param::List(self.ids.clone()));
            conditions.push(format!("event_id = ANY(${})", params.len()));
        }
        if conditions.is_empty() {
            (String::new(), params)
        } else {
            (format!(" WHERE {}", conditions.join(" AND ")), params)
        }
    }
}

enum Param {
    Text(String),
    List(Vec<String>),
}

impl Param {
    fn as_sql(&self) -> &(dyn tokio_postgres::types::ToSql + Sync) {
        match self {
            Param::Text(text) => text,
            Param::List(list) => list,
        }
    }
}

/// What went wrong in a dead-letter command.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(
        "table walhook.dead_letters does not exist in this database; run `walhook setup` \
         (or `walhook run`, which sets it up) first"
    )]
    NoTable,
    #[error("reading or writing walhook.dead_letters failed: {0}")]
    Query(#[source] tokio_postgres::Error),
    #[error("{command} needs a selector: --all, --subscription NAME or --id EVENT_ID (see `list`)")]
    NoSelector { command: &'static str },
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(
        "{failed} dead letter(s) could not be replayed and are kept ({held} more held back to \
         keep their order); fix the receiver and run replay again"
    )]
    ReplayIncomplete { failed: usize, held: usize },
}

impl DeadLetterError {
    /// 2 when the command line or the config is wrong, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            DeadLetterError::NoSelector { .. } | DeadLetterError::Endpoint(_) => 2,
            _ => 1,
        }
    }

    fn from_query(error: tokio_postgres::Error) -> Self {
        match error.code() {
            Some(code) if *code == tokio_postgres::error::SqlState::UNDEFINED_TABLE => {
                DeadLetterError::NoTable
            }
            _ => DeadLetterError::Query(error),
        }
    }
}

/// One row of `walhook.dead_letters`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Letter {
    pub id: i64,
    pub subscription: String,
    pub event_id: String,
    pub last_status: Option<i32>,
    pub attempts: i32,
    pub last_error: String,
    pub first_attempt_at: String,
    pub last_attempt_at: String,
    #[serde(skip)]
    pub payload: String,
}

const SELECT: &str = "SELECT id, subscription, event_id, last_status, attempts, last_error, \
     to_char(first_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
     to_char(last_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
     payload::text FROM walhook.dead_letters";

async fn connect(config: &Config) -> Result<tokio_postgres::Client, CommandError> {
    let params = crate::pgconn::ConnectParams::from_source(&config.source)?;
    Ok(connect_sql(&params).await?)
}

async fn select(
    client: &tokio_postgres::Client,
    selector: &Selector,
) -> Result<Vec<Letter>, DeadLetterError> {
    let (clause, params) = selector.clause();
    let params: Vec<_> = params.iter().map(Param::as_sql).collect();
    let rows = client
        .query(&format!("{SELECT}{clause} ORDER BY id"), &params)
        .await
        .map_err(DeadLetterError::from_query)?;
    Ok(rows
        .iter()
        .map(|row| Letter {
            id: row.get(0),
            subscription: row.get(1),
            event_id: row.get(2),
            last_status: row.get(3),
            attempts: row.get(4),
            last_error: row.get(5),
            first_attempt_at: row.get(6),
            last_attempt_at: row.get(7),
            payload: row.get(8),
        })
        .collect())
}

/// `list`: a table (or JSON lines with `json`) of the selected letters; no
/// selector lists all.
pub async fn list(config_path: &Path, selector: &Selector, json: bool) -> Result<(), CommandError> {
    let config = Config::load(config_path)?;
    let client = connect(&config).await?;
    let letters = select(&client, selector).await?;
    if json {
        // One JSON array, with the payload embedded as JSON.
        let values: Vec<serde_json::Value> = letters
            .iter()
            .map(|letter| {
                let mut value = serde_json::to_value(letter).unwrap_or_default();
                if let Some(object) = value.as_object_mut() {
                    object.insert(
                        "payload".into(),
                        serde_json::from_str(&letter.payload).unwrap_or_default(),
                    );
                }
                value
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&values).unwrap_or_default()
        );
        return Ok(());
    }
    print!("{}", render_table(&letters));
    Ok(())
}

fn render_table(letters: &[Letter]) -> String {
    let header = [
        "ID",
        "SUBSCRIPTION",
        "EVENT ID",
        "LAST STATUS",
        "ATTEMPTS",
        "LAST ERROR",
        "FIRST ATTEMPT",
        "LAST ATTEMPT",
    ];
    let rows: Vec<[String; 8]> = letters
        .iter()
        .map(|letter| {
            [
                letter.id.to_string(),
                letter.subscription.clone(),
                letter.event_id.clone(),
                letter
                    .last_status
                    .map(|status| status.to_string())
                    .unwrap_or_else(|| "-".into()),
                letter.attempts.to_string(),
                shorten(&letter.last_error, 60),
                letter.first_attempt_at.clone(),
                letter.last_attempt_at.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out.push_str(&format!("{} dead letter(s)\n", letters.len()));
    out
}

fn shorten(text: &str, max: usize) -> String {
    let single_line = text.replace(['\n', '\r'], " ");
    if single_line.chars().count() <= max {
        return single_line;
    }
    let mut short: String = single_line.chars().take(max - 1).collect();
    short.push('…');
    short
}

/// `replay`: redelivers the selected letters in their original order,
/// deleting each after a 2xx.
pub async fn replay(config_path: &Path, selector: &Selector) -> Result<(), CommandError> {
    if selector.is_empty() {
        return Err(DeadLetterError::NoSelector { command: "replay" }.into());
    }
    let config = Config::load(config_path)?;
    let client = connect(&config).await?;
    let http = build_client(&config.delivery).map_err(DeadLetterError::from)?;
    let mut endpoints = HashMap::new();
    for subscription in &config.subscriptions {
        endpoints.insert(
            subscription.name.clone(),
            Endpoint::new(subscription).map_err(DeadLetterError::from)?,
        );
    }
    let letters = select(&client, selector).await?;
    let mut stopped: BTreeSet<String> = BTreeSet::new();
    let (mut replayed, mut failed, mut held) = (0usize, 0usize, 0usize);
    for letter in &letters {
        if stopped.contains(&letter.subscription) {
            held += 1;
            continue;
        }
        let Some(endpoint) = endpoints.get(&letter.subscription) else {
            println!(
                "kept     {} ({}): subscription {:?} is not in {}",
                letter.event_id,
                letter.subscription,
                letter.subscription,
                config_path.display()
            );
            failed += 1;
            stopped.insert(letter.subscription.clone());
            continue;
        };
        // A batched subscription's receiver expects `{"events": [...]}`: the
        // letter goes as a batch of one, which carries the event's own id.
        let request = if endpoint.batched() {
            RequestBody::batch(std::iter::once((
                letter.event_id.as_str(),
                letter.payload.as_bytes(),
            )))
        } else {
            RequestBody {
                id: letter.event_id.clone(),
                body: Bytes::from(letter.payload.clone().into_bytes()),
            }
        };
        let attempt = endpoint
            .send(&http, &request, config.delivery.timeout)
            .await;
        if attempt.verdict() == Verdict::Delivered {
            client
                .execute(
                    "DELETE FROM walhook.dead_letters WHERE id = $1",
                    &[&letter.id],
                )
                .await
                .map_err(DeadLetterError::from_query)?;
            println!(
                "replayed {} ({}) → {attempt}; deleted",
                letter.event_id, letter.subscription
            );
            replayed += 1;
        } else {
            record_failure(&client, letter, &attempt).await?;
            println!(
                "failed   {} ({}) → {attempt}; kept",
                letter.event_id, letter.subscription
            );
            failed += 1;
            stopped.insert(letter.subscription.clone());
        }
    }
    println!(
        "replayed {replayed}, failed {failed}, held back {held} of {} dead letter(s)",
        letters.len()
    );
    if failed > 0 || held > 0 {
        return Err(DeadLetterError::ReplayIncomplete { failed, held }.into());
    }
    Ok(())
}

async fn record_failure(
    client: &tokio_postgres::Client,
    letter: &Letter,
    attempt: &Attempt,
) -> Result<(), DeadLetterError> {
    client
        .execute(
            "UPDATE walhook.dead_letters SET last_status = $2, last_error = $3, \
             attempts = attempts + 1, last_attempt_at = now() WHERE id = $1",
            &[
                &letter.id,
                &attempt.status().map(i32::from),
                &format!("replay: {attempt}"),
            ],
        )
        .await
        .map_err(DeadLetterError::from_query)?;
    Ok(())
}

/// `purge`: deletes the selected letters without sending them.
pub async fn purge(config_path: &Path, selector: &Selector) -> Result<(), CommandError> {
    if selector.is_empty() {
        return Err(DeadLetterError::NoSelector { command: "purge" }.into());
    }
    let config = Config::load(config_path)?;
    let client = connect(&config).await?;
    let (clause, params) = selector.clause();
    let params: Vec<_> = params.iter().map(Param::as_sql).collect();
    let rows = client
        .query(
            &format!("DELETE FROM walhook.dead_letters{clause} RETURNING subscription, event_id"),
            &params,
        )
        .await
        .map_err(DeadLetterError::from_query)?;
    for row in &rows {
        println!(
            "purged   {} ({})",
            row.get::<_, String>(1),
            row.get::<_, String>(0)
        );
    }
    println!("purged {} dead letter(s)", rows.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_build_their_where_clause() {
        assert!(Selector::default().is_empty());
        let (clause, params) = Selector {
            all: true,
            ..Selector::default()
        }
        .clause();
        assert_eq!(clause, "");
        assert!(params.is_empty());
        let (clause, params) = Selector {
            subscription: Some("orders".into()),
            ids: vec!["wh_1".into()],
            ..Selector::default()
        }
        .clause();
        assert_eq!(clause, " WHERE subscription = $1 AND event_id = ANY($2)");
        assert_eq!(params.len(), 2);
    }

    #[test]
    fn the_table_aligns_and_counts() {
        let letter = Letter {
            id: 7,
            subscription: "orders".into(),
            event_id: "wh_abc".into(),
            last_status: Some(422),
            attempts: 1,
            last_error: "HTTP 422".into(),
            first_attempt_at: "2026-01-01T00:00:00Z".into(),
            last_attempt_at: "2026-01-01T00:00:01Z".into(),
            payload: "{}".into(),
        };
        let table = render_table(&[letter]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ID  SUBSCRIPTION  EVENT ID"));
        assert!(lines[1].starts_with("7   orders        wh_abc"));
        assert_eq!(lines[2], "1 dead letter(s)");
        assert_eq!(shorten("a\nb", 10), "a b");
        assert_eq!(shorten("abcdef", 4), "abc…");
    }
}
