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
//! changes never overtake each other. A letter whose seal does not match
//! (`seal`: a row walhook did not write, or one stored under an earlier
//! secret) is refused unless `--trust-unsealed` vouches for it, and holds
//! back the rest of its subscription's letters like a failure. Purge deletes
//! without sending and refuses to run without a selector.
//!
//! It does not read the slot: dead letters are already confirmed there.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::SystemTime;

use bytes::Bytes;

use crate::commands::CommandError;
use crate::config::Config;
use crate::deliver::http::{Attempt, Clients, Endpoint, EndpointError, RequestBody};
use crate::deliver::policy::Verdict;
use crate::pgconn::connect_sql;
pub use crate::store::dead_letters::Selector;
use crate::store::dead_letters::{self as store, Letter};
use crate::store::schema::has_seal_column;

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
    #[error(
        "{refused} dead letter(s) were refused because their seal does not match, and are kept \
         ({held} more held back to keep their order): walhook did not store them under their \
         subscription's current secret. Check them with `walhook dead-letters list --json`; \
         replay with --trust-unsealed only if you vouch for them (docs/security.md)"
    )]
    ReplayRefused { refused: usize, held: usize },
    #[error("no dead letter matches {what}; `walhook dead-letters list` shows them")]
    NothingSelected { what: String },
    #[error(
        "purge --all deletes every dead letter without sending it: confirm with --yes (asked \
         at a terminal; needed in scripts)"
    )]
    PurgeAllUnconfirmed,
}

impl DeadLetterError {
    /// 2 when the command line or the config is wrong, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            DeadLetterError::NoSelector { .. }
            | DeadLetterError::Endpoint(_)
            | DeadLetterError::PurgeAllUnconfirmed => 2,
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

async fn connect(config: &Config) -> Result<tokio_postgres::Client, CommandError> {
    let params = crate::pgconn::ConnectParams::from_source(&config.source)?;
    Ok(connect_sql(&params).await?)
}

/// `list`: a table (or JSON lines with `json`) of the selected letters; no
/// selector lists all.
pub async fn list(config_path: &Path, selector: &Selector, json: bool) -> Result<(), CommandError> {
    let config = Config::load(config_path)?;
    let client = connect(&config).await?;
    let letters = store::select(&client, selector)
        .await
        .map_err(DeadLetterError::from_query)?;
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
        "TYPE",
        "TABLE",
        "LAST STATUS",
        "ATTEMPTS",
        "LAST ERROR",
        "FIRST ATTEMPT",
        "LAST ATTEMPT",
    ];
    let rows: Vec<[String; 10]> = letters
        .iter()
        .map(|letter| {
            [
                letter.id.to_string(),
                letter.subscription.clone(),
                letter.event_id.clone(),
                letter.kind.clone().unwrap_or_else(|| "-".into()),
                letter.table.clone().unwrap_or_else(|| "-".into()),
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
pub async fn replay(
    config_path: &Path,
    selector: &Selector,
    trust_unsealed: bool,
    dry_run: bool,
) -> Result<(), CommandError> {
    if selector.is_empty() {
        return Err(DeadLetterError::NoSelector { command: "replay" }.into());
    }
    let config = Config::load(config_path)?;
    let client = connect(&config).await?;
    let mut clients = Clients::new(&config.delivery);
    let mut endpoints = HashMap::new();
    for subscription in &config.subscriptions {
        endpoints.insert(
            subscription.name.clone(),
            Endpoint::new(subscription, &mut clients).map_err(DeadLetterError::from)?,
        );
    }
    let letters = store::select(&client, selector)
        .await
        .map_err(DeadLetterError::from_query)?;
    if letters.is_empty() {
        return Err(nothing_selected(selector).into());
    }
    let sealed_table = has_seal_column(&client, "dead_letters")
        .await
        .map_err(|error| DeadLetterError::from_query(error.source))?;
    if !sealed_table {
        println!(
            "warning: walhook.dead_letters has no `mac` column (a schema from before row seals), \
             so no letter's seal can be checked; run `walhook setup` as the schema's owner"
        );
    }
    let mut stopped: BTreeSet<String> = BTreeSet::new();
    let (mut replayed, mut failed, mut refused, mut held) = (0usize, 0usize, 0usize, 0usize);
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
        let unsealed = sealed_table
            && !endpoint.row_seals().is_empty()
            && !endpoint.seal_matches(
                &letter.event_id,
                letter.payload.as_bytes(),
                letter.mac.as_deref(),
            );
        if unsealed && !trust_unsealed {
            println!(
                "refused  {} ({}): its seal does not match; kept",
                letter.event_id, letter.subscription
            );
            refused += 1;
            stopped.insert(letter.subscription.clone());
            continue;
        }
        if dry_run {
            println!(
                "would replay {} ({}) to its subscription's endpoint",
                letter.event_id, letter.subscription
            );
            replayed += 1;
            continue;
        }
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
        let attempt = endpoint.send(&request, config.delivery.timeout).await;
        if attempt.verdict() == Verdict::Delivered {
            store::delete(&client, letter.id)
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
        "{} {replayed}, failed {failed}, refused {refused}, held back {held} of {} dead letter(s)",
        if dry_run { "would replay" } else { "replayed" },
        letters.len()
    );
    if refused > 0 {
        return Err(DeadLetterError::ReplayRefused { refused, held }.into());
    }
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
    store::record_replay_failure(
        client,
        letter.id,
        attempt.status(),
        &format!("replay: {attempt}"),
        attempt.response_body(),
    )
    .await
    .map_err(DeadLetterError::from_query)
}

/// `purge`: deletes the selected letters without sending them.
pub async fn purge(
    config_path: &Path,
    selector: &Selector,
    dry_run: bool,
    yes: bool,
) -> Result<(), CommandError> {
    if selector.is_empty() {
        return Err(DeadLetterError::NoSelector { command: "purge" }.into());
    }
    let config = Config::load(config_path)?;
    let client = connect(&config).await?;
    let selected = store::select(&client, selector)
        .await
        .map_err(DeadLetterError::from_query)?;
    if selected.is_empty() {
        return Err(nothing_selected(selector).into());
    }
    if dry_run {
        for letter in &selected {
            println!("would purge {} ({})", letter.event_id, letter.subscription);
        }
        println!("would purge {} dead letter(s)", selected.len());
        return Ok(());
    }
    if selector.all && !yes && !confirmed(selected.len())? {
        return Err(DeadLetterError::PurgeAllUnconfirmed.into());
    }
    let purged = store::purge(&client, selector)
        .await
        .map_err(DeadLetterError::from_query)?;
    for (subscription, event_id) in &purged {
        println!("purged   {event_id} ({subscription})");
    }
    println!("purged {} dead letter(s)", purged.len());
    Ok(())
}

/// Asks at a terminal whether to purge `count` letters; false (not asked)
/// when stdin is not one.
fn confirmed(count: usize) -> Result<bool, CommandError> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    print!("purge all {count} dead letter(s), without sending them? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|error| CommandError::Failed(format!("reading the answer: {error}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// What a selector that matched nothing asked for, for its error.
fn nothing_selected(selector: &Selector) -> DeadLetterError {
    let mut what = Vec::new();
    if let Some(subscription) = &selector.subscription {
        what.push(format!("subscription {subscription:?}"));
    }
    if !selector.ids.is_empty() {
        what.push(format!("event id(s) {}", selector.ids.join(", ")));
    }
    if !selector.rows.is_empty() {
        let rows: Vec<String> = selector.rows.iter().map(i64::to_string).collect();
        what.push(format!("id(s) {}", rows.join(", ")));
    }
    if let Some(since) = selector.since {
        what.push(format!(
            "last tried since {}",
            humantime::format_rfc3339_seconds(since)
        ));
    }
    if let Some(until) = selector.until {
        what.push(format!(
            "last tried before {}",
            humantime::format_rfc3339_seconds(until)
        ));
    }
    DeadLetterError::NothingSelected {
        what: if what.is_empty() {
            "--all (there are none)".to_owned()
        } else {
            what.join(" and ")
        },
    }
}

/// `show ID`: one letter whole — what `list` shortens, its seal, and its
/// payload as it would be sent. ID is the `ID` column or the event id.
pub async fn show(config_path: &Path, id: &str) -> Result<(), CommandError> {
    let config = Config::load(config_path)?;
    let client = connect(&config).await?;
    let mut selector = Selector::default();
    match id.parse::<i64>() {
        Ok(row) => selector.rows.push(row),
        Err(_) => selector.ids.push(id.to_owned()),
    }
    let letters = store::select(&client, &selector)
        .await
        .map_err(DeadLetterError::from_query)?;
    let Some(letter) = letters.first() else {
        return Err(nothing_selected(&selector).into());
    };
    let sealed_table = has_seal_column(&client, "dead_letters")
        .await
        .map_err(|error| DeadLetterError::from_query(error.source))?;
    let mut clients = Clients::new(&config.delivery);
    let endpoint = config
        .subscriptions
        .iter()
        .find(|subscription| subscription.name == letter.subscription)
        .map(|subscription| Endpoint::new(subscription, &mut clients))
        .transpose()
        .map_err(DeadLetterError::from)?;
    let seal = match &endpoint {
        None => "not checked: the subscription is not in the config".to_owned(),
        Some(_) if !sealed_table => {
            "not checked: the table has no `mac` column (run `walhook setup`)".to_owned()
        }
        Some(endpoint) if endpoint.row_seals().is_empty() => {
            "none: the subscription has no secret or headers to seal with".to_owned()
        }
        Some(endpoint)
            if endpoint.seal_matches(
                &letter.event_id,
                letter.payload.as_bytes(),
                letter.mac.as_deref(),
            ) =>
        {
            "matches: stored by walhook under this subscription's key".to_owned()
        }
        Some(_) => "DOES NOT MATCH: replay refuses it unless --trust-unsealed".to_owned(),
    };
    let payload = serde_json::from_str::<serde_json::Value>(&letter.payload)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok())
        .unwrap_or_else(|| letter.payload.clone());
    let response = match &letter.last_response {
        Some(body) => format!(
            "last response (the start of its body, at most {} bytes):\n{}\n",
            crate::deliver::http::KEPT_RESPONSE_BODY,
            printable(body)
        ),
        None => "last response: none kept (no HTTP answer, an empty body, or a schema \
                 from before walhook kept them)\n"
            .to_owned(),
    };
    println!(
        "dead letter {} (event {})\n  subscription  {}\n  type, table   {} {}\n  \
         attempts      {} (first {}, last {})\n  last status   {}\n  last error    {}\n  \
         seal          {seal}\n{response}payload:\n{payload}",
        letter.id,
        letter.event_id,
        letter.subscription,
        letter.kind.as_deref().unwrap_or("-"),
        letter.table.as_deref().unwrap_or("-"),
        letter.attempts,
        letter.first_attempt_at,
        letter.last_attempt_at,
        letter
            .last_status
            .map_or_else(|| "-".to_owned(), |status| status.to_string()),
        letter.last_error.replace(['\n', '\r'], " "),
    );
    Ok(())
}

/// A receiver's text with control characters (a terminal's escape
/// sequences among them) shown as `\u{..}` escapes; lines and tabs kept.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A time for `--since` / `--until`: RFC 3339 (`2026-12-04T10:00:00Z`, an
/// offset such as `+02:00`, or a space for the `T`), a date
/// (`2026-12-04`, midnight UTC), or a duration back from now (`2h`,
/// `3days`, `90min`).
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    let text = text.trim();
    let expected = || {
        format!(
            "{text:?} is neither a time such as 2026-12-04T10:00:00Z (or +02:00 for an offset, \
             or a date 2026-12-04) nor a duration back from now such as 2h, 30min or 7days"
        )
    };
    if let Ok(ago) = humantime::parse_duration(text) {
        return SystemTime::now().checked_sub(ago).ok_or_else(expected);
    }
    if text.len() == 10 {
        return humantime::parse_rfc3339_weak(&format!("{text}T00:00:00Z")).map_err(|_| expected());
    }
    // humantime reads UTC only: an offset is taken off by hand.
    let (local, offset_seconds) = match text.len().checked_sub(6).map(|at| text.split_at(at)) {
        Some((local, offset))
            if (offset.starts_with('+') || offset.starts_with('-'))
                && offset.as_bytes().get(3) == Some(&b':') =>
        {
            let hours: u64 = offset[1..3].parse().map_err(|_| expected())?;
            let minutes: u64 = offset[4..6].parse().map_err(|_| expected())?;
            let seconds = hours * 3600 + minutes * 60;
            (
                local,
                if offset.starts_with('-') {
                    -(seconds as i64)
                } else {
                    seconds as i64
                },
            )
        }
        _ => (text, 0),
    };
    let local = humantime::parse_rfc3339_weak(local.trim_end_matches(['Z', 'z']))
        .map_err(|_| expected())?;
    let shift = std::time::Duration::from_secs(offset_seconds.unsigned_abs());
    // 10:00+02:00 is 08:00 UTC.
    if offset_seconds >= 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
    .ok_or_else(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_dates_or_durations_back_from_now() {
        let utc = parse_time("2026-12-04T10:00:00Z").unwrap();
        assert_eq!(
            humantime::format_rfc3339_seconds(utc).to_string(),
            "2026-12-04T10:00:00Z"
        );
        let offset = parse_time("2026-12-04T12:00:00+02:00").unwrap();
        assert_eq!(offset, utc);
        let west = parse_time("2026-12-04T05:30:00-04:30").unwrap();
        assert_eq!(west, utc);
        assert_eq!(parse_time("2026-12-04 10:00:00").unwrap(), utc);
        let date = parse_time("2026-12-04").unwrap();
        assert_eq!(
            humantime::format_rfc3339_seconds(date).to_string(),
            "2026-12-04T00:00:00Z"
        );
        let ago = parse_time("2h").unwrap();
        let elapsed = SystemTime::now().duration_since(ago).unwrap();
        assert!((7199..=7201).contains(&elapsed.as_secs()), "{elapsed:?}");
        let error = parse_time("yesterday").unwrap_err();
        assert!(
            error.contains("2026-12-04T10:00:00Z") && error.contains("2h"),
            "{error}"
        );
        assert!(parse_time("2026-13-45T00:00:00Z").is_err());
    }

    #[test]
    fn a_receivers_text_cannot_drive_the_terminal() {
        assert_eq!(
            printable("bad\x1b[2Jinput\n\tok"),
            "bad\\u{1b}[2Jinput\n\tok"
        );
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
            mac: None,
            kind: Some("INSERT".into()),
            table: Some("public.items".into()),
            last_response: None,
        };
        let table = render_table(&[letter]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ID  SUBSCRIPTION  EVENT ID  TYPE    TABLE"));
        assert!(lines[1].starts_with("7   orders        wh_abc    INSERT  public.items"));
        assert_eq!(lines[2], "1 dead letter(s)");
        assert_eq!(shorten("a\nb", 10), "a b");
        assert_eq!(shorten("abcdef", 4), "abc…");
    }
}
