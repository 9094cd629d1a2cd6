//! Backfills: the rows a table already has, sent as `READ` events while the
//! stream goes on (docs/backfills.md), by the watermark algorithm of
//! Netflix's DBLog.
//!
//! The [`worker`] reads a table in primary-key chunks over its own SQL
//! connection and brackets each chunk's SELECT between a low and a high
//! watermark it writes into the WAL (`pg_logical_emit_message`, which the
//! slot delivers in stream order). The reader ([`window::Windows`], inside
//! the pipeline) notes which keys of that table the stream changes around a
//! chunk; at the chunk's high watermark it drops those keys from the chunk —
//! the stream carries their newer state — and hands the rest to delivery as
//! READ events at that point of the stream. So a READ never overtakes a
//! newer change of its key, and the stream never pauses.
//!
//! This module holds what the two share: the watermark messages and the
//! chunk handed from one to the other. Neither side decides where events go
//! (`rules`, `deliver`).

pub mod window;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::sync::oneshot;

use crate::event::TableInfo;

/// The prefix of walhook's watermark messages in the WAL.
pub const WATERMARK_PREFIX: &str = "walhook.backfill";

/// Where a watermark stands around a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Before a backfill's first chunk: from here the reader notes the
    /// table's changed keys.
    Arm,
    /// Before the chunk's snapshot.
    Low,
    /// After the chunk's SELECT: the chunk's rows go out here.
    High,
    /// The backfill ended: the reader stops noting the table's keys.
    End,
}

impl Mark {
    fn as_str(self) -> &'static str {
        match self {
            Mark::Arm => "arm",
            Mark::Low => "low",
            Mark::High => "high",
            Mark::End => "end",
        }
    }
}

/// One watermark: which slot's walhook wrote it (every slot of the
/// database sees it), for which backfill, chunk and table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub slot: String,
    pub backfill: i64,
    pub chunk: u64,
    pub table: u32,
    pub mark: Mark,
}

impl Watermark {
    /// The message content: `mark backfill chunk table slot`.
    pub fn content(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.mark.as_str(),
            self.backfill,
            self.chunk,
            self.table,
            self.slot
        )
    }

    /// Parses [`Watermark::content`]; `None` for anything else.
    pub fn parse(content: &[u8]) -> Option<Watermark> {
        let text = std::str::from_utf8(content).ok()?;
        let mut parts = text.splitn(5, ' ');
        let mark = match parts.next()? {
            "arm" => Mark::Arm,
            "low" => Mark::Low,
            "high" => Mark::High,
            "end" => Mark::End,
            _ => return None,
        };
        Some(Watermark {
            mark,
            backfill: parts.next()?.parse().ok()?,
            chunk: parts.next()?.parse().ok()?,
            table: parts.next()?.parse().ok()?,
            slot: parts.next()?.to_owned(),
        })
    }
}

/// Checks a backfill's `--where` condition before it is pasted into the
/// chunk's SELECT: SQL from `walhook.backfills`, which whoever may write
/// that table could fill. It must stay one condition: no `;`, no comments,
/// no dollar quotes (which this check cannot follow), and parentheses that
/// never close more than they opened (so nothing can end the WHERE and
/// append, say, a UNION with another table). Quoted strings and names are
/// skipped. The error says what to change.
pub fn check_condition(condition: &str) -> Result<(), String> {
    if condition.trim().is_empty() {
        return Err("the condition is empty".into());
    }
    let mut depth = 0i64;
    let mut quote: Option<char> = None;
    let mut previous = '\0';
    for character in condition.chars() {
        match quote {
            // A doubled quote closes and reopens: the same as staying in.
            Some(open) if character == open => quote = None,
            Some(_) => {}
            None => match character {
                '\'' | '"' => quote = Some(character),
                ';' => return Err("the condition holds `;`: give one SQL condition".into()),
                '$' => {
                    return Err(
                        "the condition holds `$`: dollar quotes and parameters are not accepted"
                            .into(),
                    );
                }
                '-' if previous == '-' => {
                    return Err("the condition holds a `--` comment; leave it out".into());
                }
                '*' if previous == '/' => {
                    return Err("the condition holds a `/*` comment; leave it out".into());
                }
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth < 0 {
                        return Err(
                            "the condition closes a parenthesis it did not open".into(),
                        );
                    }
                }
                _ => {}
            },
        }
        previous = character;
    }
    if quote.is_some() {
        return Err("the condition leaves a quote open".into());
    }
    if depth != 0 {
        return Err("the condition leaves a parenthesis open".into());
    }
    Ok(())
}

/// A chunk the worker read, for the reader to send at its high watermark.
pub struct Chunk {
    pub backfill: i64,
    pub chunk: u64,
    /// Which subscription (by index in the config) the backfill is for.
    pub subscription: usize,
    /// The table's shape as the worker read it (columns in pgoutput's order).
    pub table: Arc<TableInfo>,
    /// Each row's columns as their type's text output (`None`: NULL).
    pub rows: Vec<Vec<Option<String>>>,
    /// Transactions the chunk's snapshot did not see (their xids' low 32
    /// bits): their changes conflict even when they came before the low
    /// watermark (a commit logged before it but not yet visible).
    pub in_progress: Vec<u32>,
    /// Counts the chunk's READ events not yet delivered or stored.
    pub pending: Arc<AtomicUsize>,
    /// Told how many READ events the chunk gave, once all are handed out.
    pub handed: oneshot::Sender<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_stays_one_condition() {
        assert!(check_condition("country = 'DE'").is_ok());
        assert!(check_condition("(a > 1 OR b < 2) AND note = 'it''s (odd'").is_ok());
        assert!(check_condition("\"a)b\" IS NOT NULL").is_ok());
        for hostile in [
            "true) UNION SELECT * FROM secrets WHERE (true",
            "a > 1; DELETE FROM items",
            "a > 1 -- and the rest",
            "a > 1 /* x */",
            "$$ ' $$) OR (true",
            "note = 'open",
            "(a > 1",
            "",
        ] {
            assert!(check_condition(hostile).is_err(), "{hostile}");
        }
    }

    #[test]
    fn watermarks_round_trip_and_nothing_else_parses() {
        let mark = Watermark {
            slot: "walhook slot".into(),
            backfill: 7,
            chunk: 3,
            table: 16384,
            mark: Mark::High,
        };
        assert_eq!(Watermark::parse(mark.content().as_bytes()), Some(mark));
        assert_eq!(Watermark::parse(b"hello"), None);
        assert_eq!(Watermark::parse(b"high x 3 1 s"), None);
    }
}
