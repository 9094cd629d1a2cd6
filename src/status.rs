//! What `walhook status` and the admin `/status` endpoint report, read from
//! PostgreSQL itself: the slot's confirmed position and lag, the walsender
//! serving it, and per subscription its mode (as the running daemon last
//! recorded it), its backlog, its dead letters and its active backfills,
//! with warnings for backlogs past the configured age or size.
//!
//! It reads and reports; it changes nothing. For an inactive slot it may
//! peek at the oldest waiting transaction (which does not move the slot).

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::config::BacklogConfig;
use crate::mode::Mode;
use crate::pgoutput::{self, PgOutputMessage};

/// How long a peek at an inactive slot may decode before the lag in time is
/// left unknown (the oldest waiting transaction is then a large one).
const PEEK_TIMEOUT: Duration = Duration::from_secs(2);

/// The facts about one slot.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub slot: String,
    pub exists: bool,
    pub active: bool,
    pub active_pid: Option<i32>,
    pub confirmed_flush_lsn: Option<String>,
    pub restart_lsn: Option<String>,
    pub current_wal_lsn: String,
    /// Current WAL position minus the confirmed position.
    pub lag_bytes: Option<i64>,
    /// WAL the slot holds back from removal (current minus restart position).
    pub retained_bytes: Option<i64>,
    /// Active slot: `pg_stat_replication.flush_lag` of the walsender serving
    /// it. Inactive slot (when peeking was asked for): the age of the oldest
    /// transaction waiting in it.
    pub lag_seconds: Option<f64>,
    /// Inactive slot: the commit time (RFC 3339) of the oldest transaction
    /// waiting in it, when a peek found one in time.
    pub oldest_waiting_commit: Option<String>,
    pub wal_status: Option<String>,
    pub subscriptions: Vec<SubscriptionStatus>,
}

/// One subscription's mode, backlog and dead letters.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionStatus {
    pub name: String,
    /// `live`, `backlog`, `paused` or `circuit_open` while a walhook streams
    /// (`paused` also when none does); `stopped` when no walhook streams.
    pub mode: String,
    pub backlog_events: i64,
    pub backlog_bytes: i64,
    /// Age of the commit of the oldest event waiting in the backlog.
    pub backlog_oldest_seconds: Option<f64>,
    pub dead_letters: i64,
    pub oldest_dead_letter: Option<String>,
    /// Its backfills still pending or running (none when the schema has no
    /// `walhook.backfills`).
    pub backfills: Vec<BackfillStatus>,
    /// What an operator should look at (a backlog past `delivery.backlog`'s
    /// age or size).
    pub warnings: Vec<String>,
}

/// One active backfill of a subscription (docs/backfills.md).
#[derive(Debug, Clone, Serialize)]
pub struct BackfillStatus {
    pub id: i64,
    /// `"schema"."table"`, as recorded.
    pub table: String,
    /// `pending` (no walhook has taken it yet) or `running`.
    pub state: String,
    pub rows_sent: i64,
    pub estimated_rows: Option<i64>,
    /// Rows sent per second since it started.
    pub rows_per_second: Option<f64>,
}

impl BackfillStatus {
    fn of(backfill: &crate::store::backfills::Backfill) -> BackfillStatus {
        BackfillStatus {
            id: backfill.id,
            table: backfill.table.clone(),
            state: backfill.state.as_str().to_owned(),
            rows_sent: backfill.rows_sent,
            estimated_rows: backfill.estimated_rows,
            rows_per_second: backfill
                .elapsed_seconds
                .filter(|seconds| *seconds > 0.0)
                .map(|seconds| backfill.rows_sent as f64 / seconds),
        }
    }
}

/// How `status` peeks at an inactive slot, and what it found last time.
#[derive(Debug)]
pub struct Peek {
    publication: String,
    /// The confirmed position last peeked from and the commit time found
    /// (`None`: nothing in time). The same position has the same oldest
    /// waiting transaction, so `--watch` decodes it once, not every refresh.
    last: Option<(String, Option<i64>)>,
}

impl Peek {
    /// Peeks through `publication` (the one walhook streams with).
    pub fn through(publication: &str) -> Peek {
        Peek {
            publication: publication.to_owned(),
            last: None,
        }
    }
}

/// Reads the report for `slot` and the named subscriptions. With `peek`, an
/// inactive slot with lag is peeked for the commit time of its oldest
/// waiting transaction; the daemon's own endpoint does not peek, so it never
/// holds its slot.
pub async fn collect(
    client: &tokio_postgres::Client,
    slot: &str,
    subscriptions: &[String],
    peek: Option<&mut Peek>,
) -> Result<StatusReport, tokio_postgres::Error> {
    let current: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let found = crate::store::slots::find(client, slot)
        .await
        .map_err(|error| error.source)?;
    let has_dead_letters = crate::store::schema::installed(client).await;
    let mut report = StatusReport {
        slot: slot.to_owned(),
        exists: found.is_some(),
        active: false,
        active_pid: None,
        confirmed_flush_lsn: None,
        restart_lsn: None,
        current_wal_lsn: current,
        lag_bytes: None,
        retained_bytes: None,
        lag_seconds: None,
        oldest_waiting_commit: None,
        wal_status: None,
        subscriptions: Vec::new(),
    };
    if let Some(found) = found {
        report.active = found.active;
        report.active_pid = found.active_pid;
        report.confirmed_flush_lsn = found.confirmed_flush.map(|lsn| lsn.to_string());
        report.restart_lsn = found.restart_lsn.map(|lsn| lsn.to_string());
        report.lag_bytes = found.lag_bytes;
        report.retained_bytes = found.retained_bytes;
        report.lag_seconds = found.flush_lag_seconds;
        report.wal_status = found.wal_status;
    }
    if let Some(peek) = peek
        && let Some(confirmed) = &report.confirmed_flush_lsn
        && !report.active
        && report.lag_bytes.is_some_and(|lag| lag > 0)
    {
        let commit = match &peek.last {
            Some((position, commit)) if position == confirmed => *commit,
            _ => {
                let commit = oldest_waiting_commit(client, slot, &peek.publication).await;
                peek.last = Some((confirmed.clone(), commit));
                commit
            }
        };
        if let Some(commit) = commit {
            let now = crate::pgtime::micros_since_2000(std::time::SystemTime::now());
            report.lag_seconds = Some(now.saturating_sub(commit).max(0) as f64 / 1e6);
            report.oldest_waiting_commit = Some(crate::pgtime::format_rfc3339(commit));
        }
    }
    let has_backlog = crate::store::backlog::usable(client)
        .await
        .map_err(|error| error.source)?;
    let (backlogs, states) = if has_backlog {
        (
            crate::store::backlog::summaries(client)
                .await
                .map_err(|error| error.source)?,
            crate::store::subscription_state::all(client)
                .await
                .map_err(|error| error.source)?,
        )
    } else {
        Default::default()
    };
    // A schema from before backfills has none to show.
    let backfills = if crate::store::backfills::usable(client)
        .await
        .map_err(|error| error.source)?
    {
        crate::store::backfills::list(client, true)
            .await
            .map_err(|error| error.source)?
    } else {
        Vec::new()
    };
    for name in subscriptions {
        let (count, oldest) = if has_dead_letters {
            crate::store::dead_letters::count(client, name)
                .await
                .map_err(|error| error.source)?
        } else {
            (0, None)
        };
        let backlog = backlogs.get(name).cloned().unwrap_or_default();
        let state = states.get(name).cloned().unwrap_or_default();
        let mode = if state.paused {
            Mode::Paused.label().to_owned()
        } else if report.active {
            state.mode.unwrap_or_else(|| Mode::Live.label().to_owned())
        } else {
            "stopped".to_owned()
        };
        report.subscriptions.push(SubscriptionStatus {
            name: name.clone(),
            mode,
            backlog_events: backlog.events,
            backlog_bytes: backlog.bytes,
            backlog_oldest_seconds: backlog.oldest_seconds,
            dead_letters: count,
            oldest_dead_letter: oldest,
            backfills: backfills
                .iter()
                .filter(|backfill| backfill.subscription == *name)
                .map(BackfillStatus::of)
                .collect(),
            warnings: Vec::new(),
        });
    }
    Ok(report)
}

impl StatusReport {
    /// Adds a warning to each subscription whose backlog is past `limits`.
    pub fn warn_about_backlogs(&mut self, limits: &BacklogConfig) {
        for subscription in &mut self.subscriptions {
            subscription.warn_about_backlog(limits);
        }
    }
}

impl SubscriptionStatus {
    /// A subscription known only by its backlog (for `check`).
    pub fn waiting(name: &str, backlog: &crate::store::backlog::Summary) -> SubscriptionStatus {
        SubscriptionStatus {
            name: name.to_owned(),
            mode: String::new(),
            backlog_events: backlog.events,
            backlog_bytes: backlog.bytes,
            backlog_oldest_seconds: backlog.oldest_seconds,
            dead_letters: 0,
            oldest_dead_letter: None,
            backfills: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Warns when the backlog is past `limits`, saying what to do.
    pub fn warn_about_backlog(&mut self, limits: &BacklogConfig) {
        let old = self
            .backlog_oldest_seconds
            .is_some_and(|age| age >= limits.warn_age.as_secs_f64());
        let large = self.backlog_bytes as u64 >= limits.warn_megabytes.saturating_mul(1 << 20);
        if old || large {
            self.warnings.push(format!(
                "backlog of {} events ({}), oldest {} old: fix the receiver, or `walhook pause {}` \
                 while you do, or drop them with `walhook backlog purge --subscription {}`",
                self.backlog_events,
                format_bytes(self.backlog_bytes),
                self.backlog_oldest_seconds
                    .map_or("?".to_owned(), format_age),
                self.name,
                self.name,
            ));
        }
    }
}

/// Seconds as an operator reads them: 45s, 12m, 3.5h, 2.0d.
fn format_age(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.0}s")
    } else if seconds < 3600.0 {
        format!("{:.0}m", seconds / 60.0)
    } else if seconds < 86400.0 {
        format!("{:.1}h", seconds / 3600.0)
    } else {
        format!("{:.1}d", seconds / 86400.0)
    }
}

/// The commit time (microseconds since 2000) of the first transaction the
/// slot would send, read with `pg_logical_slot_peek_binary_changes`, which
/// decodes without confirming. `None` when nothing waits, when decoding takes
/// longer than [`PEEK_TIMEOUT`], or when the peek is refused (a walhook
/// took the slot meanwhile, or the role may not).
async fn oldest_waiting_commit(
    client: &tokio_postgres::Client,
    slot: &str,
    publication: &str,
) -> Option<i64> {
    let timeout = format!("SET statement_timeout = {}", PEEK_TIMEOUT.as_millis());
    client.batch_execute(&timeout).await.ok()?;
    let first = client
        .query_opt(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, 1, \
                 'proto_version', '1', 'publication_names', $2) LIMIT 1",
            &[&slot, &crate::config::quote_identifier(publication)],
        )
        .await;
    let _ = client.batch_execute("RESET statement_timeout").await;
    let data: Vec<u8> = first.ok()??.try_get(0).ok()?;
    match pgoutput::parse(Bytes::from(data)) {
        Ok(PgOutputMessage::Begin {
            commit_time_micros, ..
        }) => Some(commit_time_micros),
        _ => None,
    }
}

impl StatusReport {
    /// A compact table for a terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let bytes = |value: Option<i64>| {
            value.map_or_else(|| "-".to_owned(), |bytes| format_bytes(bytes.max(0)))
        };
        out.push_str(&format!(
            "slot {}: {}\n",
            self.slot,
            if !self.exists {
                "MISSING (run `walhook setup`)".to_owned()
            } else if self.active {
                // The pid is the server's walsender process, not walhook's.
                format!(
                    "active (read by walsender pid {} on the server)",
                    self.active_pid
                        .map_or("?".to_owned(), |pid| pid.to_string())
                )
            } else {
                "inactive (no walhook is reading it)".to_owned()
            }
        ));
        if self.exists {
            out.push_str(&format!(
                "  confirmed {}   current {}   lag {}   lag time {}   WAL held {}   wal_status {}\n",
                self.confirmed_flush_lsn.as_deref().unwrap_or("-"),
                self.current_wal_lsn,
                bytes(self.lag_bytes),
                self.lag_seconds
                    .map_or("-".to_owned(), |seconds| format!("{seconds:.3}s")),
                bytes(self.retained_bytes),
                self.wal_status.as_deref().unwrap_or("-"),
            ));
            if let Some(commit) = &self.oldest_waiting_commit {
                out.push_str(&format!("  oldest waiting change committed {commit}\n"));
            }
        }
        out.push_str(&format!(
            "\n{:<24} {:<13} {:>9} {:>9} {:>7}  {:>12}  {}\n",
            "subscription", "mode", "backlog", "bytes", "oldest", "dead letters", "oldest"
        ));
        for subscription in &self.subscriptions {
            let mode: &str = match Mode::from_label(&subscription.mode) {
                Some(mode) => mode.describe(),
                None => &subscription.mode,
            };
            out.push_str(&format!(
                "{:<24} {:<13} {:>9} {:>9} {:>7}  {:>12}  {}\n",
                subscription.name,
                mode,
                subscription.backlog_events,
                format_bytes(subscription.backlog_bytes),
                subscription
                    .backlog_oldest_seconds
                    .map_or("-".to_owned(), format_age),
                subscription.dead_letters,
                subscription.oldest_dead_letter.as_deref().unwrap_or("-")
            ));
        }
        let backfills: Vec<(&str, &BackfillStatus)> = self
            .subscriptions
            .iter()
            .flat_map(|subscription| {
                subscription
                    .backfills
                    .iter()
                    .map(|backfill| (subscription.name.as_str(), backfill))
            })
            .collect();
        if !backfills.is_empty() {
            out.push_str(&format!(
                "\n{:<8} {:<24} {:<32} {:<8} {:>21}  {}\n",
                "backfill", "subscription", "table", "state", "rows sent/estimated", "rate"
            ));
            for (name, backfill) in backfills {
                out.push_str(&format!(
                    "{:<8} {:<24} {:<32} {:<8} {:>21}  {}\n",
                    backfill.id,
                    name,
                    backfill.table,
                    backfill.state,
                    format!(
                        "{}/{}",
                        backfill.rows_sent,
                        backfill
                            .estimated_rows
                            .map_or("?".to_owned(), |rows| rows.to_string())
                    ),
                    backfill
                        .rows_per_second
                        .map_or("-".to_owned(), |rate| format!("{rate:.0} rows/s")),
                ));
            }
        }
        for subscription in &self.subscriptions {
            for warning in &subscription.warnings {
                out.push_str(&format!("warning: {}: {warning}\n", subscription.name));
            }
        }
        out
    }
}

fn format_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_an_operator_expects() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1536), "1.5 kB");
        assert_eq!(format_bytes(5 * 1024 * 1024), "5.0 MB");
    }

    #[test]
    fn a_backlog_past_its_limits_gets_a_warning_with_the_fix() {
        let mut subscription = SubscriptionStatus {
            name: "orders".into(),
            mode: "circuit_open".into(),
            backlog_events: 10,
            backlog_bytes: 1000,
            backlog_oldest_seconds: Some(30.0),
            dead_letters: 0,
            oldest_dead_letter: None,
            backfills: Vec::new(),
            warnings: Vec::new(),
        };
        let limits = BacklogConfig {
            warn_age: Duration::from_secs(60),
            warn_megabytes: 1,
            trust_unsealed: false,
        };
        subscription.warn_about_backlog(&limits);
        assert!(subscription.warnings.is_empty(), "young and small");
        subscription.backlog_oldest_seconds = Some(90.0);
        subscription.warn_about_backlog(&limits);
        assert_eq!(subscription.warnings.len(), 1);
        assert!(subscription.warnings[0].contains("walhook pause orders"));
        assert_eq!(format_age(90.0), "2m");
    }

    #[test]
    fn active_backfills_are_listed_under_the_subscriptions() {
        let mut subscription = SubscriptionStatus::waiting(
            "crm",
            &crate::store::backlog::Summary::default(),
        );
        let report = |subscriptions| StatusReport {
            slot: "walhook".into(),
            exists: false,
            active: false,
            active_pid: None,
            confirmed_flush_lsn: None,
            restart_lsn: None,
            current_wal_lsn: "0/0".into(),
            lag_bytes: None,
            retained_bytes: None,
            lag_seconds: None,
            oldest_waiting_commit: None,
            wal_status: None,
            subscriptions,
        };
        assert!(!report(vec![subscription.clone()]).render().contains("backfill"));
        subscription.backfills.push(BackfillStatus {
            id: 42,
            table: "\"public\".\"customers\"".into(),
            state: "running".into(),
            rows_sent: 1500,
            estimated_rows: Some(6000),
            rows_per_second: Some(750.0),
        });
        let text = report(vec![subscription]).render();
        let line = text
            .lines()
            .find(|line| line.starts_with("42 "))
            .unwrap_or_else(|| panic!("a line for backfill 42 in:\n{text}"));
        for part in ["crm", "\"public\".\"customers\"", "running", "1500/6000", "750 rows/s"] {
            assert!(line.contains(part), "{part} in {line}");
        }
    }
}
