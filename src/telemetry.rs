//! Metrics: every figure walhook exports, named once, registered once.
//!
//! [`Metrics`] owns a Prometheus registry and typed handles to each metric.
//! Per-subscription handles are resolved at start-up ([`SubscriptionMetrics`])
//! so the hot path touches an atomic, not a label map. It does not serve them
//! (`admin`) or decide what to count (the stages do).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::mode::Mode;

/// Metric names (without the `walhook_` prefix the registry adds; counters
/// get `_total` when exported).
pub mod names {
    pub const CHANGES_DECODED: &str = "changes_decoded";
    pub const EVENTS_MATCHED: &str = "events_matched";
    pub const EVENTS_DELIVERED: &str = "events_delivered";
    pub const EVENTS_DEAD_LETTERED: &str = "events_dead_lettered";
    pub const HTTP_RESPONSES: &str = "http_responses";
    pub const DELIVERY_RETRIES: &str = "delivery_retries";
    pub const REQUESTS_IN_FLIGHT: &str = "requests_in_flight";
    pub const DELIVERY_LATENCY_SECONDS: &str = "delivery_latency_seconds";
    pub const REPLICATION_LAG_BYTES: &str = "replication_lag_bytes";
    pub const REPLICATION_LAG_SECONDS: &str = "replication_lag_seconds";
    pub const CONFIRMED_LSN: &str = "confirmed_lsn";
    pub const RECONNECTS: &str = "reconnects";
    pub const CHANGES_UNROUTED: &str = "changes_unrouted";
    pub const VALUES_AS_TEXT: &str = "values_as_text";
    pub const RULE_TABLE_PROBLEMS: &str = "rule_table_problems";
    pub const BACKLOG_EVENTS: &str = "backlog_events";
    pub const BACKLOG_BYTES: &str = "backlog_bytes";
    pub const BACKLOG_OLDEST_SECONDS: &str = "backlog_oldest_seconds";
    pub const SUBSCRIPTION_MODE: &str = "subscription_mode";
    pub const BACKFILL_ROWS: &str = "backfill_rows";
    pub const BUILD_INFO: &str = "build_info";
    pub const DEAD_LETTERS: &str = "dead_letters";
    /// The standard process metrics, without the `walhook_` prefix so that
    /// dashboards made for any exporter read them.
    pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
    pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds";
    pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
    pub const PROCESS_MAX_FDS: &str = "process_max_fds";
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabel {
    subscription: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackfillLabel {
    subscription: String,
    table: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ColumnLabel {
    table: String,
    column: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableProblemLabel {
    table: String,
    problem: &'static str,
}

/// Something wrong with a table a rule names, as the catalog watch sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TableProblem {
    /// Renamed or moved to another schema: still delivered, under its new
    /// name, until the config is updated.
    Renamed,
    /// Dropped: nothing to deliver until a table of that name exists again.
    Dropped,
    /// Exists but the publication does not hold it: its changes are not
    /// published.
    Unpublished,
    /// Cannot log updates and deletes while the publication publishes them,
    /// so PostgreSQL refuses the application's UPDATE and DELETE on it.
    NoReplicaIdentity,
}

impl TableProblem {
    pub const ALL: [TableProblem; 4] = [
        TableProblem::Renamed,
        TableProblem::Dropped,
        TableProblem::Unpublished,
        TableProblem::NoReplicaIdentity,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TableProblem::Renamed => "renamed",
            TableProblem::Dropped => "dropped",
            TableProblem::Unpublished => "unpublished",
            TableProblem::NoReplicaIdentity => "no_replica_identity",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    subscription: String,
    mode: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabel {
    subscription: String,
    class: &'static str,
}

/// The class of an HTTP outcome, for `http_responses_total{class}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseClass {
    Success,
    Redirect,
    ClientError,
    ServerError,
    /// No HTTP answer: refused, reset, timed out.
    Transport,
}

impl ResponseClass {
    const ALL: [ResponseClass; 5] = [
        ResponseClass::Success,
        ResponseClass::Redirect,
        ResponseClass::ClientError,
        ResponseClass::ServerError,
        ResponseClass::Transport,
    ];

    fn label(self) -> &'static str {
        match self {
            ResponseClass::Success => "2xx",
            ResponseClass::Redirect => "3xx",
            ResponseClass::ClientError => "4xx",
            ResponseClass::ServerError => "5xx",
            ResponseClass::Transport => "error",
        }
    }

    /// The class of a status code (1xx counts as an error: it is no answer).
    pub fn of_status(status: u16) -> ResponseClass {
        match status {
            200..=299 => ResponseClass::Success,
            300..=399 => ResponseClass::Redirect,
            400..=499 => ResponseClass::ClientError,
            500..=599 => ResponseClass::ServerError,
            _ => ResponseClass::Transport,
        }
    }
}

/// One subscription's handles.
#[derive(Debug, Clone)]
pub struct SubscriptionMetrics {
    pub matched: Counter,
    pub delivered: Counter,
    pub dead_lettered: Counter,
    pub retries: Counter,
    responses: [Counter; 5],
    pub latency: Histogram,
    /// Events and payload bytes waiting in the subscription's backlog.
    pub backlog_events: Gauge,
    pub backlog_bytes: Gauge,
    /// Age of the oldest waiting event's commit (0 when none waits).
    pub backlog_oldest_seconds: Gauge<f64, AtomicU64>,
    /// One gauge per [`Mode`], 1 for the current one.
    modes: [Gauge; 4],
}

impl SubscriptionMetrics {
    /// Sets the mode gauge: 1 for `current`, 0 for the others.
    pub fn set_mode(&self, current: Mode) {
        for (mode, gauge) in Mode::ALL.iter().zip(&self.modes) {
            gauge.set(i64::from(*mode == current));
        }
    }

    pub fn response(&self, class: ResponseClass) {
        let index = ResponseClass::ALL
            .iter()
            .position(|candidate| *candidate == class)
            .unwrap_or(4);
        self.responses[index].inc();
    }
}

/// The buckets of `delivery_latency_seconds`: 0.5 ms to about 65 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// Every metric of one walhook process.
#[derive(Debug)]
pub struct Metrics {
    /// Shared with the [`Metrics`] a reload makes ([`Metrics::rebind`]).
    registry: Arc<Registry>,
    pub changes_decoded: Counter,
    pub requests_in_flight: Gauge,
    pub replication_lag_bytes: Gauge,
    pub replication_lag_seconds: Gauge<f64, AtomicU64>,
    pub confirmed_lsn: Gauge,
    pub reconnects: Counter,
    changes_unrouted: Family<TableLabel, Counter>,
    values_as_text: Family<ColumnLabel, Counter>,
    rule_table_problems: Family<TableProblemLabel, Gauge>,
    backfill_rows: Family<BackfillLabel, Counter>,
    families: SubscriptionFamilies,
    /// The subscriptions' names, in the order of `subscriptions`.
    names: Vec<String>,
    subscriptions: Vec<SubscriptionMetrics>,
    /// The unprefixed `process_*` metrics, read at each scrape.
    process: Arc<Registry>,
}

/// The labelled families behind [`SubscriptionMetrics`], kept to make the
/// handles of subscriptions a reload adds and to drop those it removes.
#[derive(Debug, Clone)]
struct SubscriptionFamilies {
    matched: Family<SubscriptionLabel, Counter>,
    delivered: Family<SubscriptionLabel, Counter>,
    dead_lettered: Family<SubscriptionLabel, Counter>,
    retries: Family<SubscriptionLabel, Counter>,
    responses: Family<ResponseLabel, Counter>,
    latency: Family<SubscriptionLabel, Histogram, fn() -> Histogram>,
    backlog_events: Family<SubscriptionLabel, Gauge>,
    backlog_bytes: Family<SubscriptionLabel, Gauge>,
    backlog_oldest: Family<SubscriptionLabel, Gauge<f64, AtomicU64>>,
    modes: Family<ModeLabel, Gauge>,
    /// Counted at the scrape, not kept by the handles.
    dead_letters: Family<SubscriptionLabel, Gauge>,
}

impl SubscriptionFamilies {
    /// The handles of subscription `name` (its series, created if new).
    fn handles(&self, name: &str) -> SubscriptionMetrics {
        let label = SubscriptionLabel {
            subscription: name.to_owned(),
        };
        // 0 from the start, not absent until the first scrape.
        let _ = self.dead_letters.get_or_create(&label);
        SubscriptionMetrics {
            matched: self.matched.get_or_create(&label).clone(),
            delivered: self.delivered.get_or_create(&label).clone(),
            dead_lettered: self.dead_lettered.get_or_create(&label).clone(),
            retries: self.retries.get_or_create(&label).clone(),
            responses: ResponseClass::ALL.map(|class| {
                self.responses
                    .get_or_create(&ResponseLabel {
                        subscription: name.to_owned(),
                        class: class.label(),
                    })
                    .clone()
            }),
            latency: self.latency.get_or_create(&label).clone(),
            backlog_events: self.backlog_events.get_or_create(&label).clone(),
            backlog_bytes: self.backlog_bytes.get_or_create(&label).clone(),
            backlog_oldest_seconds: self.backlog_oldest.get_or_create(&label).clone(),
            modes: Mode::ALL.map(|mode| {
                self.modes
                    .get_or_create(&ModeLabel {
                        subscription: name.to_owned(),
                        mode: mode.label(),
                    })
                    .clone()
            }),
        }
    }

    /// Removes subscription `name`'s series from the exposition.
    fn forget(&self, name: &str) {
        let label = SubscriptionLabel {
            subscription: name.to_owned(),
        };
        self.matched.remove(&label);
        self.delivered.remove(&label);
        self.dead_lettered.remove(&label);
        self.retries.remove(&label);
        self.latency.remove(&label);
        self.backlog_events.remove(&label);
        self.backlog_bytes.remove(&label);
        self.backlog_oldest.remove(&label);
        self.dead_letters.remove(&label);
        for class in ResponseClass::ALL {
            self.responses.remove(&ResponseLabel {
                subscription: name.to_owned(),
                class: class.label(),
            });
        }
        for mode in Mode::ALL {
            self.modes.remove(&ModeLabel {
                subscription: name.to_owned(),
                mode: mode.label(),
            });
        }
    }
}

impl Metrics {
    /// Registers everything, with handles for each named subscription.
    pub fn new(subscription_names: &[String]) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("walhook");
        let changes_decoded = Counter::default();
        registry.register(
            names::CHANGES_DECODED,
            "Row changes decoded from the slot",
            changes_decoded.clone(),
        );
        let matched = Family::<SubscriptionLabel, Counter>::default();
        registry.register(
            names::EVENTS_MATCHED,
            "Events a subscription's rules matched",
            matched.clone(),
        );
        let delivered = Family::<SubscriptionLabel, Counter>::default();
        registry.register(
            names::EVENTS_DELIVERED,
            "Events answered 2xx",
            delivered.clone(),
        );
        let dead_lettered = Family::<SubscriptionLabel, Counter>::default();
        registry.register(
            names::EVENTS_DEAD_LETTERED,
            "Events stored in walhook.dead_letters",
            dead_lettered.clone(),
        );
        let retries = Family::<SubscriptionLabel, Counter>::default();
        registry.register(
            names::DELIVERY_RETRIES,
            "Requests sent again after a failed attempt",
            retries.clone(),
        );
        let responses = Family::<ResponseLabel, Counter>::default();
        registry.register(
            names::HTTP_RESPONSES,
            "HTTP outcomes by status class (error: no answer)",
            responses.clone(),
        );
        let latency = Family::<SubscriptionLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            names::DELIVERY_LATENCY_SECONDS,
            "From the transaction's commit to the 2xx answer",
            latency.clone(),
        );
        let requests_in_flight = Gauge::default();
        registry.register(
            names::REQUESTS_IN_FLIGHT,
            "HTTP requests in flight",
            requests_in_flight.clone(),
        );
        let replication_lag_bytes = Gauge::default();
        registry.register(
            names::REPLICATION_LAG_BYTES,
            "Server WAL end minus the confirmed position",
            replication_lag_bytes.clone(),
        );
        let replication_lag_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            names::REPLICATION_LAG_SECONDS,
            "Age of the oldest committed change not yet confirmed",
            replication_lag_seconds.clone(),
        );
        let confirmed_lsn = Gauge::default();
        registry.register(
            names::CONFIRMED_LSN,
            "The confirmed WAL position, as a number",
            confirmed_lsn.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            names::RECONNECTS,
            "Replication connections re-opened after a loss",
            reconnects.clone(),
        );
        let changes_unrouted = Family::<TableLabel, Counter>::default();
        registry.register(
            names::CHANGES_UNROUTED,
            "Changes decoded for a published table that no rule selects, by table",
            changes_unrouted.clone(),
        );
        let values_as_text = Family::<ColumnLabel, Counter>::default();
        registry.register(
            names::VALUES_AS_TEXT,
            "Values sent as a JSON string of their text because their type could not be \
             rendered as to_jsonb does (unknown or dropped type, unexpected text)",
            values_as_text.clone(),
        );
        // 1, labelled with the version: which walhook answers.
        let build_info = Family::<BuildLabel, Gauge>::default();
        build_info
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register(
            names::BUILD_INFO,
            "Always 1; the label says which walhook version runs",
            build_info,
        );
        let backfill_rows = Family::<BackfillLabel, Counter>::default();
        registry.register(
            names::BACKFILL_ROWS,
            "Rows backfills sent as READ events (delivered or stored), by subscription and table",
            backfill_rows.clone(),
        );
        let rule_table_problems = Family::<TableProblemLabel, Gauge>::default();
        registry.register(
            names::RULE_TABLE_PROBLEMS,
            "1 while a table a rule names is renamed, dropped, unpublished or lacks the replica \
             identity its published operations need",
            rule_table_problems.clone(),
        );
        let backlog_events = Family::<SubscriptionLabel, Gauge>::default();
        registry.register(
            names::BACKLOG_EVENTS,
            "Events waiting in walhook.backlog (endpoint down, slow or paused)",
            backlog_events.clone(),
        );
        let backlog_bytes = Family::<SubscriptionLabel, Gauge>::default();
        registry.register(
            names::BACKLOG_BYTES,
            "Payload bytes waiting in walhook.backlog",
            backlog_bytes.clone(),
        );
        let backlog_oldest = Family::<SubscriptionLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            names::BACKLOG_OLDEST_SECONDS,
            "Age of the commit of the oldest event waiting in walhook.backlog",
            backlog_oldest.clone(),
        );
        let dead_letters = Family::<SubscriptionLabel, Gauge>::default();
        registry.register(
            names::DEAD_LETTERS,
            "Rows in walhook.dead_letters, counted at the scrape (at most once a second)",
            dead_letters.clone(),
        );
        let mut process = Registry::default();
        process.register_collector(Box::new(ProcessCollector));
        let modes = Family::<ModeLabel, Gauge>::default();
        registry.register(
            names::SUBSCRIPTION_MODE,
            "1 for the subscription's delivery mode: live, backlog, paused or circuit_open",
            modes.clone(),
        );
        let families = SubscriptionFamilies {
            matched,
            delivered,
            dead_lettered,
            retries,
            responses,
            latency,
            backlog_events,
            backlog_bytes,
            backlog_oldest,
            modes,
            dead_letters,
        };
        let subscriptions: Vec<SubscriptionMetrics> = subscription_names
            .iter()
            .map(|name| families.handles(name))
            .collect();
        for subscription in &subscriptions {
            subscription.set_mode(Mode::Live);
        }
        Arc::new(Metrics {
            registry: Arc::new(registry),
            changes_decoded,
            requests_in_flight,
            replication_lag_bytes,
            replication_lag_seconds,
            confirmed_lsn,
            reconnects,
            changes_unrouted,
            values_as_text,
            rule_table_problems,
            backfill_rows,
            families,
            names: subscription_names.to_vec(),
            subscriptions,
            process: Arc::new(process),
        })
    }

    /// The same metrics (one registry, every series kept) with handles for
    /// `subscription_names`, for the configuration a reload applies: a
    /// subscription that stays keeps its counts, a new one starts at zero
    /// (in `live` mode), and one no longer named leaves the exposition.
    pub fn rebind(&self, subscription_names: &[String]) -> Arc<Metrics> {
        for gone in &self.names {
            if !subscription_names.contains(gone) {
                self.families.forget(gone);
            }
        }
        let subscriptions: Vec<SubscriptionMetrics> = subscription_names
            .iter()
            .map(|name| {
                let handles = self.families.handles(name);
                if !self.names.contains(name) {
                    handles.set_mode(Mode::Live);
                }
                handles
            })
            .collect();
        Arc::new(Metrics {
            registry: Arc::clone(&self.registry),
            changes_decoded: self.changes_decoded.clone(),
            requests_in_flight: self.requests_in_flight.clone(),
            replication_lag_bytes: self.replication_lag_bytes.clone(),
            replication_lag_seconds: self.replication_lag_seconds.clone(),
            confirmed_lsn: self.confirmed_lsn.clone(),
            reconnects: self.reconnects.clone(),
            changes_unrouted: self.changes_unrouted.clone(),
            values_as_text: self.values_as_text.clone(),
            rule_table_problems: self.rule_table_problems.clone(),
            backfill_rows: self.backfill_rows.clone(),
            families: self.families.clone(),
            names: subscription_names.to_vec(),
            subscriptions,
            process: Arc::clone(&self.process),
        })
    }

    /// Sets `walhook_dead_letters` of `subscription`.
    pub fn set_dead_letters(&self, subscription: &str, count: i64) {
        self.families
            .dead_letters
            .get_or_create(&SubscriptionLabel {
                subscription: subscription.to_owned(),
            })
            .set(count);
    }

    /// The counter of changes of `table` that no rule selects.
    pub fn unrouted_counter(&self, table: &str) -> Counter {
        self.changes_unrouted
            .get_or_create(&TableLabel {
                table: table.to_owned(),
            })
            .clone()
    }

    /// Counts the rows of a completed backfill chunk.
    pub fn backfill_rows(&self, subscription: &str, table: &str, rows: u64) {
        self.backfill_rows
            .get_or_create(&BackfillLabel {
                subscription: subscription.to_owned(),
                table: table.to_owned(),
            })
            .inc_by(rows);
    }

    /// Counts `count` values of `table`.`column` sent as text.
    pub fn values_as_text(&self, table: &str, column: &str, count: u64) {
        self.values_as_text
            .get_or_create(&ColumnLabel {
                table: table.to_owned(),
                column: column.to_owned(),
            })
            .inc_by(count);
    }

    /// Sets whether `table` has `problem` (1) or not (0).
    pub fn set_table_problem(&self, table: &str, problem: TableProblem, present: bool) {
        self.rule_table_problems
            .get_or_create(&TableProblemLabel {
                table: table.to_owned(),
                problem: problem.label(),
            })
            .set(i64::from(present));
    }

    /// The handles of subscription number `index`.
    pub fn subscription(&self, index: usize) -> Option<&SubscriptionMetrics> {
        self.subscriptions.get(index)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut text, &self.registry);
        let _ = encode_registry(&mut text, &self.process);
        let _ = encode_eof(&mut text);
        text
    }
}

/// The process's resident memory, CPU time and file descriptors, read when
/// scraped. Memory and descriptors come from `/proc/self` (Linux; absent
/// elsewhere), CPU time and the descriptor limit from getrusage/getrlimit.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(bytes) = resident_memory_bytes() {
            let gauge = ConstGauge::new(bytes);
            gauge.encode(encoder.encode_descriptor(
                names::PROCESS_RESIDENT_MEMORY_BYTES,
                "Resident memory size in bytes",
                None,
                gauge.metric_type(),
            )?)?;
        }
        if let Ok(usage) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        {
            let seconds = |time: nix::sys::time::TimeVal| {
                time.tv_sec() as f64 + time.tv_usec() as f64 / 1e6
            };
            let counter = ConstCounter::new(seconds(usage.user_time()) + seconds(usage.system_time()));
            counter.encode(encoder.encode_descriptor(
                names::PROCESS_CPU_SECONDS,
                "User and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?)?;
        }
        if let Some(open) = open_fds() {
            let gauge = ConstGauge::new(open);
            gauge.encode(encoder.encode_descriptor(
                names::PROCESS_OPEN_FDS,
                "Open file descriptors",
                None,
                gauge.metric_type(),
            )?)?;
        }
        if let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            let gauge = ConstGauge::new(i64::try_from(soft).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(
                names::PROCESS_MAX_FDS,
                "The limit on open file descriptors",
                None,
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn resident_memory_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kilobytes: i64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kilobytes.checked_mul(1024)
}

/// The entries of `/proc/self/fd` (less the one reading it).
fn open_fds() -> Option<i64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count();
    i64::try_from(entries.saturating_sub(1)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_named_metrics_with_subscription_labels() {
        let metrics = Metrics::new(&["orders".to_owned()]);
        let orders = metrics.subscription(0).unwrap();
        orders.delivered.inc_by(3);
        orders.response(ResponseClass::of_status(503));
        orders.latency.observe(0.002);
        metrics.confirmed_lsn.set(42);
        let text = metrics.render();
        assert!(
            text.contains("walhook_events_delivered_total{subscription=\"orders\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("walhook_http_responses_total{subscription=\"orders\",class=\"5xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("walhook_confirmed_lsn 42"), "{text}");
        assert!(
            text.contains("walhook_delivery_latency_seconds_count{subscription=\"orders\"} 1"),
            "{text}"
        );
        assert!(metrics.subscription(1).is_none());
        assert!(
            text.contains("walhook_dead_letters{subscription=\"orders\"} 0"),
            "{text}"
        );
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn process_metrics_are_read_at_each_render() {
        let text = Metrics::new(&[]).render();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|line| line.strip_prefix(&format!("{name} ")))
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("{name} in {text}"))
        };
        let rss = value("process_resident_memory_bytes");
        assert!(rss > 1024.0 * 1024.0 && rss < 64.0 * 1024.0 * 1024.0 * 1024.0, "{rss}");
        assert!(value("process_cpu_seconds_total") > 0.0);
        let open = value("process_open_fds");
        assert!(open >= 3.0 && open <= value("process_max_fds"), "{open}");
    }

    #[test]
    fn rebind_keeps_the_counts_of_a_staying_subscription_and_drops_a_removed_one() {
        let metrics = Metrics::new(&["orders".to_owned(), "signups".to_owned()]);
        metrics.subscription(0).unwrap().delivered.inc_by(3);
        metrics.subscription(1).unwrap().delivered.inc_by(5);
        metrics.confirmed_lsn.set(42);
        let rebound = metrics.rebind(&["refunds".to_owned(), "orders".to_owned()]);
        rebound.subscription(1).unwrap().delivered.inc();
        let text = rebound.render();
        assert!(
            text.contains("walhook_events_delivered_total{subscription=\"orders\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("walhook_events_delivered_total{subscription=\"refunds\"} 0"),
            "{text}"
        );
        assert!(!text.contains("signups"), "{text}");
        assert!(text.contains("walhook_confirmed_lsn 42"), "{text}");
        // The process metrics are read anew at each render.
        let walhook_lines = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|line| !line.contains("process_"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            walhook_lines(&text),
            walhook_lines(&metrics.render()),
            "one registry behind both"
        );
    }
}
