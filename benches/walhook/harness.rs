//! The benchmark that drives walhook's performance work (`cargo bench
//! --bench walhook`; see `main.rs` for its options).
//!
//! On a throw-away PostgreSQL it loads a backlog (N rows in transactions of B
//! rows into a 6-column table of about 200 bytes a row), then runs the
//! `walhook` binary against it with a fast in-process receiver and measures
//! rows/s from start to the last row acknowledged, walhook's CPU time per row
//! and its peak RSS. The same backlog is read by `pg_recvlogical` (pgoutput to
//! /dev/null) for the ceiling, and walhook's rate is printed as a ratio of it.
//! A live mode commits single-row transactions at a fixed rate and reports
//! commit-to-arrival latency after a one-second warm-up. Results print as
//! one table and are written as JSON for comparison across commits.
//!
//! Figures are measurements of this machine at this moment, not assertions;
//! nothing here fails because something is slow.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use tokio::sync::Notify;

use walhook::pgtemp::{TempPostgres, TempPostgresOptions, find_program};

/// Why a bench run stopped: what it was doing, and the cause.
#[derive(Debug)]
pub struct BenchError(pub String);

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub rows: u64,
    pub rows_per_transaction: u64,
    pub live_rates: Vec<u64>,
    pub live_seconds: u64,
    pub json_path: PathBuf,
    /// Only the backlog scenarios whose name contains this.
    pub only: Option<String>,
    /// How many times to run everything; the table shows medians.
    pub repeat: u32,
    /// The isolation scenario: seconds of live load while one of two
    /// endpoints is down (0 skips it), after a burst of this many rows.
    pub isolation_seconds: u64,
    pub isolation_burst: u64,
    /// The backfill scenario: existing rows (0 skips it) and chunk size.
    pub backfill_rows: u64,
    pub backfill_chunk: i32,
}

/// Two subscriptions on one table, one endpoint down (503) through a burst
/// and `live_seconds` of live load at 20 rows/s, then back: what the
/// healthy one saw, how soon the slot moved on, walhook's memory, and how
/// long the backlog took to drain.
#[derive(Debug, Clone, Serialize)]
struct IsolationResult {
    burst_rows: u64,
    live_rows: u64,
    /// Commit-to-arrival latency of the live rows at the healthy endpoint.
    healthy_p50_ms: f64,
    healthy_p99_ms: f64,
    healthy_max_ms: f64,
    /// From the burst's last commit to the slot confirming past it.
    slot_past_burst_seconds: Option<f64>,
    rss_mb_after_burst: f64,
    rss_mb_after_live: f64,
    /// Events waiting in the down subscription's backlog when it came back.
    backlog_events: i64,
    /// From its first answered probe to its last event delivered.
    drain_seconds: f64,
    drained_events: u64,
}

/// One backlog scenario's figures.
#[derive(Debug, Clone, Serialize)]
struct BacklogResult {
    scenario: String,
    rows: u64,
    seconds: f64,
    rows_per_second: f64,
    cpu_us_per_row: f64,
    peak_rss_mb: f64,
    ratio_of_ceiling: Option<f64>,
    requests: u64,
    /// CPU the bench process (the receiver) spent per request: what the
    /// other end of each POST costs on the same cores.
    receiver_cpu_us_per_request: Option<f64>,
}

/// One live run's figures.
#[derive(Debug, Clone, Serialize)]
struct LiveResult {
    target_rows_per_second: u64,
    achieved_rows_per_second: f64,
    rows: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// walhook's CPU over the whole live run (warm-up included) per row.
    cpu_us_per_row: f64,
}

/// The backfill scenario: a table's existing rows backfilled into a fast
/// receiver in batches, while live rows stream to another endpoint.
#[derive(Debug, Clone, Serialize)]
struct BackfillResult {
    rows: u64,
    chunk_rows: i32,
    batch: usize,
    /// From the request to its last READ event arriving.
    seconds: f64,
    rows_per_second: f64,
    peak_rss_mb: f64,
    /// Commit-to-arrival of live rows at BACKFILL_LIVE_RATE, before the
    /// backfill and while it runs.
    live_p99_ms_before: f64,
    live_p99_ms_during: f64,
    live_max_ms_during: f64,
}

/// Live rows per second while the backfill scenario runs.
const BACKFILL_LIVE_RATE: u64 = 200;

/// Medians over the runs, and every run.
#[derive(Debug, Serialize)]
struct Report {
    commit: String,
    rows: u64,
    rows_per_transaction: u64,
    runs: u32,
    ceiling: BacklogResult,
    backlog: Vec<BacklogResult>,
    live: Vec<LiveResult>,
    /// The last run's (it is a scenario over time, not a rate to median).
    isolation: Option<IsolationResult>,
    backfill: Option<BackfillResult>,
    every_run: EveryRun,
}

#[derive(Debug, Default, Serialize)]
struct EveryRun {
    ceiling: Vec<BacklogResult>,
    /// By scenario, then run.
    backlog: Vec<Vec<BacklogResult>>,
    /// By rate, then run.
    live: Vec<Vec<LiveResult>>,
}

struct Scenario {
    name: &'static str,
    batch: usize,
    ordering: &'static str,
    failure_percent: u32,
    kind: Kind,
}

/// What a scenario measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// From start to the last row answered.
    Deliver,
    /// The endpoint is down from the start: from start until the slot
    /// confirmed the whole backlog (every row committed to
    /// `walhook.backlog`); the next scenario's figures come from the same
    /// run.
    BacklogWrite,
    /// After `BacklogWrite`: from the first answered probe to the last row
    /// delivered out of `walhook.backlog`.
    BacklogDrain,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "batch=1 ordering=key",
        batch: 1,
        ordering: "key",
        failure_percent: 0,
        kind: Kind::Deliver,
    },
    Scenario {
        name: "batch=1 ordering=none",
        batch: 1,
        ordering: "none",
        failure_percent: 0,
        kind: Kind::Deliver,
    },
    Scenario {
        name: "batch=100 ordering=key",
        batch: 100,
        ordering: "key",
        failure_percent: 0,
        kind: Kind::Deliver,
    },
    Scenario {
        name: "batch=1 ordering=key 1% HTTP 500",
        batch: 1,
        ordering: "key",
        failure_percent: 1,
        kind: Kind::Deliver,
    },
    Scenario {
        name: "backlog write, endpoint down",
        batch: 1,
        ordering: "key",
        failure_percent: 0,
        kind: Kind::BacklogWrite,
    },
    Scenario {
        name: "backlog drain",
        batch: 1,
        ordering: "key",
        failure_percent: 0,
        kind: Kind::BacklogDrain,
    },
];

fn bench_error(what: &str, error: impl BenchFailure) -> BenchError {
    BenchError(format!("bench: {what}: {}", error.describe()))
}

/// Error text with the server's own message when there is one.
trait BenchFailure {
    fn describe(&self) -> String;
}

impl<T: std::fmt::Display + 'static> BenchFailure for T {
    fn describe(&self) -> String {
        let any: &dyn std::any::Any = self;
        match any
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::as_db_error)
        {
            Some(db) => db.message().to_owned(),
            None => self.to_string(),
        }
    }
}

/// Runs every scenario and prints the table.
pub async fn run(options: BenchOptions) -> Result<(), BenchError> {
    let postgres = tokio::task::spawn_blocking(|| {
        TempPostgres::start_with(TempPostgresOptions {
            extra_conf: vec![
                "max_wal_size = '4GB'".into(),
                "shared_buffers = '256MB'".into(),
            ],
            hba_lines: Vec::new(),
        })
    })
    .await
    .map_err(|error| bench_error("starting PostgreSQL", error))?
    .map_err(|error| bench_error("starting PostgreSQL", error))?;
    let outcome = run_all(&postgres, &options).await;
    tokio::task::spawn_blocking(move || drop(postgres))
        .await
        .map_err(|error| bench_error("stopping PostgreSQL", error))?;
    let report = outcome?;
    print_report(&report);
    let json = serde_json::to_string_pretty(&report).map_err(|error| bench_error("json", error))?;
    std::fs::write(&options.json_path, json)
        .map_err(|error| bench_error("writing the JSON report", error))?;
    println!("\nwritten: {}", options.json_path.display());
    Ok(())
}

async fn run_all(postgres: &TempPostgres, options: &BenchOptions) -> Result<Report, BenchError> {
    let runs = options.repeat.max(1);
    let mut every = EveryRun::default();
    let selected: Vec<bool> = SCENARIOS
        .iter()
        .map(|scenario| {
            scenario.kind != Kind::BacklogDrain
                && options.only.as_ref().is_none_or(|only| {
                    scenario.name.contains(only.as_str())
                        || (scenario.kind == Kind::BacklogWrite && only.contains("backlog"))
                })
        })
        .collect();
    every.backlog = vec![Vec::new(); SCENARIOS.len()];
    every.live = vec![Vec::new(); options.live_rates.len()];
    for run in 0..runs {
        if runs > 1 {
            eprintln!("bench: run {} of {runs}", run + 1);
        }
        let mut ceiling = None;
        for (index, scenario) in SCENARIOS.iter().enumerate() {
            // The first scenario's backlog also gives the ceiling.
            if !selected[index] && index > 0 {
                continue;
            }
            let database = format!("bench{index}_{run}");
            let client = prepare_database(postgres, &database).await?;
            let ceiling_slot = format!("ceiling_{run}");
            // The ceiling reads the first backlog with its own slot.
            if index == 0 {
                client
                    .batch_execute(&format!(
                        "SELECT pg_create_logical_replication_slot('{ceiling_slot}', 'pgoutput')"
                    ))
                    .await
                    .map_err(|error| bench_error("creating the ceiling slot", error))?;
            }
            eprintln!("bench: loading {} rows into {database}…", options.rows);
            load_backlog(&client, options.rows, options.rows_per_transaction).await?;
            if index == 0 {
                eprintln!("bench: pg_recvlogical ceiling…");
                let measured =
                    measure_ceiling(postgres, &client, &database, &ceiling_slot, options.rows)
                        .await?;
                ceiling = Some(measured.rows_per_second);
                every.ceiling.push(measured);
            }
            if !selected[index] {
                continue;
            }
            eprintln!("bench: walhook {}…", scenario.name);
            let results = match scenario.kind {
                Kind::Deliver => {
                    vec![measure_walhook(postgres, &database, scenario, options.rows).await?]
                }
                Kind::BacklogWrite => {
                    let (write, drain) =
                        measure_backlog(postgres, &client, &database, scenario, options.rows)
                            .await?;
                    vec![write, drain]
                }
                // Measured with the write, just before.
                Kind::BacklogDrain => Vec::new(),
            };
            for (offset, mut result) in results.into_iter().enumerate() {
                result.ratio_of_ceiling = ceiling.map(|ceiling| result.rows_per_second / ceiling);
                if let Some(runs) = every.backlog.get_mut(index + offset) {
                    runs.push(result);
                }
            }
        }
        for (index, &rate) in options.live_rates.iter().enumerate() {
            eprintln!(
                "bench: live at {rate} rows/s for {}s…",
                options.live_seconds
            );
            let database = format!("live{rate}_{index}_{run}");
            prepare_database(postgres, &database).await?;
            let result = measure_live(postgres, &database, rate, options.live_seconds).await?;
            every.live[index].push(result);
        }
    }
    let mut isolation = None;
    if options.isolation_seconds > 0 {
        eprintln!(
            "bench: isolation, one endpoint down: {} rows, then {}s at {ISOLATION_RATE} rows/s…",
            options.isolation_burst, options.isolation_seconds
        );
        isolation = Some(
            measure_isolation(
                postgres,
                "isolation",
                options.isolation_burst,
                options.isolation_seconds,
            )
            .await?,
        );
    }
    let mut backfill = None;
    if options.backfill_rows > 0 {
        eprintln!(
            "bench: backfill of {} existing rows, live rows at {BACKFILL_LIVE_RATE}/s…",
            options.backfill_rows
        );
        backfill = Some(
            measure_backfill(
                postgres,
                "backfill",
                options.backfill_rows,
                options.backfill_chunk,
            )
            .await?,
        );
    }
    every
        .backlog
        .retain(|scenario_runs| !scenario_runs.is_empty());
    let ceiling =
        median_backlog(&every.ceiling).ok_or_else(|| bench_error("ceiling", "not measured"))?;
    Ok(Report {
        commit: git_commit(),
        rows: options.rows,
        rows_per_transaction: options.rows_per_transaction,
        runs,
        ceiling,
        backlog: every
            .backlog
            .iter()
            .filter_map(|runs| median_backlog(runs))
            .collect(),
        live: every
            .live
            .iter()
            .filter_map(|runs| median_live(runs))
            .collect(),
        isolation,
        backfill,
        every_run: every,
    })
}

/// The median of some figures (the upper one of an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.filter(|value| value.is_finite()).collect();
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Each figure's median over the runs of one scenario.
fn median_backlog(runs: &[BacklogResult]) -> Option<BacklogResult> {
    let first = runs.first()?;
    let of = |figure: fn(&BacklogResult) -> f64| median(runs.iter().map(figure));
    let optional = |figure: fn(&BacklogResult) -> Option<f64>| {
        runs.iter()
            .any(|run| figure(run).is_some())
            .then(|| median(runs.iter().filter_map(figure)))
    };
    Some(BacklogResult {
        scenario: first.scenario.clone(),
        rows: first.rows,
        seconds: of(|run| run.seconds),
        rows_per_second: of(|run| run.rows_per_second),
        cpu_us_per_row: of(|run| run.cpu_us_per_row),
        peak_rss_mb: of(|run| run.peak_rss_mb),
        ratio_of_ceiling: optional(|run| run.ratio_of_ceiling),
        requests: of(|run| run.requests as f64) as u64,
        receiver_cpu_us_per_request: optional(|run| run.receiver_cpu_us_per_request),
    })
}

/// Each figure's median over the runs at one live rate.
fn median_live(runs: &[LiveResult]) -> Option<LiveResult> {
    let first = runs.first()?;
    let of = |figure: fn(&LiveResult) -> f64| median(runs.iter().map(figure));
    Some(LiveResult {
        target_rows_per_second: first.target_rows_per_second,
        achieved_rows_per_second: of(|run| run.achieved_rows_per_second),
        rows: first.rows,
        p50_ms: of(|run| run.p50_ms),
        p99_ms: of(|run| run.p99_ms),
        max_ms: of(|run| run.max_ms),
        cpu_us_per_row: of(|run| run.cpu_us_per_row),
    })
}

async fn prepare_database(
    postgres: &TempPostgres,
    database: &str,
) -> Result<tokio_postgres::Client, BenchError> {
    let admin = connect(&postgres.url("postgres")).await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .map_err(|error| bench_error("creating a database", error))?;
    let client = connect(&postgres.url(database)).await?;
    // Separate statements: a slot cannot be created in a transaction that
    // has written.
    for statement in [
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, \
           amount numeric(10,2) NOT NULL, status text NOT NULL, note text NOT NULL, \
           created_at timestamptz NOT NULL DEFAULT now())",
        "CREATE PUBLICATION walhook FOR TABLE orders",
        &format!("SELECT pg_create_logical_replication_slot('{database}', 'pgoutput')"),
    ] {
        client
            .batch_execute(statement)
            .await
            .map_err(|error| bench_error("creating the table, publication and slot", error))?;
    }
    Ok(client)
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, BenchError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|error| bench_error("connecting", error))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Inserts rows 1..=rows, `per_transaction` rows a transaction.
async fn load_backlog(
    client: &tokio_postgres::Client,
    rows: u64,
    per_transaction: u64,
) -> Result<(), BenchError> {
    let mut start = 1;
    while start <= rows {
        let end = (start + per_transaction - 1).min(rows);
        client
            .batch_execute(&insert_rows(start, end))
            .await
            .map_err(|error| bench_error("loading rows", error))?;
        start = end + 1;
    }
    Ok(())
}

fn insert_rows(start: u64, end: u64) -> String {
    format!(
        "INSERT INTO orders (id, customer, amount, status, note) \
         SELECT g, 'customer-' || g || '@example.com', (g % 10000) / 100.0, 'pending', \
                repeat('x', 100) \
         FROM generate_series({start}, {end}) g"
    )
}

/// `pg_recvlogical` reading the backlog from the `ceiling` slot.
async fn measure_ceiling(
    postgres: &TempPostgres,
    client: &tokio_postgres::Client,
    database: &str,
    slot: &str,
    rows: u64,
) -> Result<BacklogResult, BenchError> {
    let end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|error| bench_error("reading the WAL position", error))?
        .get(0);
    let program = find_program("pg_recvlogical").ok_or_else(|| {
        bench_error(
            "pg_recvlogical",
            "not found beside the server binaries, on PATH or in /usr/lib/postgresql/*/bin; \
             install the PostgreSQL client programs (e.g. apt-get install -y postgresql-client)",
        )
    })?;
    let before = children_usage();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(program)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &postgres.port().to_string(),
            "-U",
            "postgres",
        ])
        .args(["-d", database, "--slot", slot, "--start", "--no-loop"])
        .args(["-o", "proto_version=1", "-o", "publication_names=walhook"])
        .args(["-f", "/dev/null", "--endpos", &end])
        .env("PGPASSWORD", postgres.password())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| bench_error("starting pg_recvlogical", error))?;
    let peak = watch_peak_rss(child.id());
    let status = child
        .wait()
        .await
        .map_err(|error| bench_error("pg_recvlogical", error))?;
    let seconds = started.elapsed().as_secs_f64();
    let peak_kb = peak.await.unwrap_or(0);
    if !status.success() {
        return Err(bench_error("pg_recvlogical", status));
    }
    let cpu = children_usage().cpu_seconds - before.cpu_seconds;
    Ok(BacklogResult {
        scenario: "pg_recvlogical → /dev/null (ceiling)".into(),
        rows,
        seconds,
        rows_per_second: rows as f64 / seconds,
        cpu_us_per_row: cpu * 1e6 / rows as f64,
        peak_rss_mb: peak_kb as f64 / 1024.0,
        ratio_of_ceiling: Some(1.0),
        requests: 0,
        receiver_cpu_us_per_request: None,
    })
}

/// The in-process receiver: counts events, answers 204 (or 500 for a share).
struct Sink {
    events: AtomicUsize,
    requests: AtomicU64,
    failure_percent: u32,
    /// While set, every request is answered 503.
    down: std::sync::atomic::AtomicBool,
    /// When the first request was answered 2xx.
    first_success: std::sync::Mutex<Option<Instant>>,
    arrived: Notify,
    /// Live mode: arrival instants by row id.
    arrivals: Option<std::sync::Mutex<Vec<Option<Instant>>>>,
}

async fn receive(State(sink): State<Arc<Sink>>, body: Bytes) -> StatusCode {
    sink.requests.fetch_add(1, Ordering::Relaxed);
    if sink.down.load(Ordering::Relaxed) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if let Ok(mut first) = sink.first_success.lock() {
        first.get_or_insert_with(Instant::now);
    }
    if sink.failure_percent > 0 && fastrand::u32(0..100) < sink.failure_percent {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let marker = b"\"subscription\":";
    let count = body
        .windows(marker.len())
        .filter(|window| *window == marker)
        .count();
    if let Some(arrivals) = &sink.arrivals
        && let Some(id) = record_id(&body)
        && let Ok(mut arrivals) = arrivals.lock()
        && let Some(slot) = arrivals.get_mut(id as usize)
    {
        slot.get_or_insert_with(Instant::now);
    }
    sink.events.fetch_add(count, Ordering::Relaxed);
    sink.arrived.notify_one();
    StatusCode::NO_CONTENT
}

/// The `id` of `"record":{"id":N,` in a single-event body.
fn record_id(body: &[u8]) -> Option<u64> {
    let marker = b"\"record\":{\"id\":";
    let start = body
        .windows(marker.len())
        .position(|window| window == marker)?
        + marker.len();
    let digits = body[start..]
        .iter()
        .take_while(|byte| byte.is_ascii_digit())
        .fold(0u64, |id, byte| id * 10 + u64::from(byte - b'0'));
    Some(digits)
}

async fn start_sink(
    failure_percent: u32,
    live_rows: Option<usize>,
) -> Result<(Arc<Sink>, String), BenchError> {
    let sink = Arc::new(Sink {
        events: AtomicUsize::new(0),
        requests: AtomicU64::new(0),
        failure_percent,
        down: std::sync::atomic::AtomicBool::new(false),
        first_success: std::sync::Mutex::new(None),
        arrived: Notify::new(),
        arrivals: live_rows.map(|rows| std::sync::Mutex::new(vec![None; rows + 1])),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| bench_error("binding the receiver", error))?;
    let addr = listener
        .local_addr()
        .map_err(|error| bench_error("binding the receiver", error))?;
    let router = axum::Router::new()
        .fallback(axum::routing::post(receive))
        .with_state(Arc::clone(&sink));
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok((sink, format!("http://{addr}/hook")))
}

fn walhook_config(
    postgres: &TempPostgres,
    database: &str,
    url: &str,
    scenario: &Scenario,
) -> String {
    format!(
        r#"
        [source]
        url = "{}"
        slot = "{database}"
        auto_setup = false
        [delivery]
        concurrency = 64
        backoff = {{ initial = "10ms", max = "1s" }}
        breaker = {{ failures = 5, probe_interval = "500ms" }}
        [admin]
        listen = ""
        [[subscriptions]]
        name = "bench"
        tables = ["orders"]
        url = "{url}"
        ordering = "{}"
        batch = {{ max_events = {}, max_wait = "20ms" }}
        "#,
        postgres.url(database),
        scenario.ordering,
        scenario.batch
    )
}

/// A running `walhook run` child.
struct Daemon {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

fn spawn_walhook(config: &str) -> Result<Daemon, BenchError> {
    let dir = tempfile::tempdir().map_err(|error| bench_error("temp dir", error))?;
    let path = dir.path().join("walhook.toml");
    std::fs::write(&path, config).map_err(|error| bench_error("writing the config", error))?;
    // Built by cargo for this bench target (and for the tests that run it).
    let exe = env!("CARGO_BIN_EXE_walhook");
    // `WALHOOK_BENCH_WRAPPER="valgrind --tool=callgrind"` runs the daemon
    // under a profiler (instruction counts do not vary from run to run the
    // way times do here); its figures then include the wrapper's cost. The
    // wrapper must be the daemon's process (valgrind is): SIGTERM and the
    // memory reading go to the process started here, so one that forks
    // (`perf stat`) would leave the daemon running.
    let wrapper = std::env::var("WALHOOK_BENCH_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = tokio::process::Command::new(program);
            command.args(words).arg(exe);
            command
        }
        None => tokio::process::Command::new(exe),
    };
    let child = command
        .args(["run", "--config"])
        .arg(&path)
        .env("WALHOOK_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| bench_error("starting walhook", error))?;
    Ok(Daemon { child, _dir: dir })
}

/// SIGTERM, wait; returns walhook's CPU seconds over its life.
async fn stop_walhook(mut daemon: Daemon, before: Usage) -> Result<f64, BenchError> {
    if let Some(pid) = daemon.child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), daemon.child.wait()).await;
    let _ = daemon.child.kill().await;
    Ok(children_usage().cpu_seconds - before.cpu_seconds)
}

/// Answers 2xx again and waits for `count` events: the seconds from the
/// first answered request (walhook's probe) to the last event.
async fn come_back_and_drain(sink: &Sink, count: usize) -> Result<f64, BenchError> {
    sink.down.store(false, Ordering::Relaxed);
    wait_for_events(sink, count, Duration::from_secs(600)).await?;
    let drained_at = Instant::now();
    let first_success = sink
        .first_success
        .lock()
        .ok()
        .and_then(|first| *first)
        .unwrap_or(drained_at);
    Ok(drained_at.duration_since(first_success).as_secs_f64())
}

async fn wait_for_events(sink: &Sink, count: usize, deadline: Duration) -> Result<(), BenchError> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let arrived = sink.arrived.notified();
        if sink.events.load(Ordering::Relaxed) >= count {
            return Ok(());
        }
        if tokio::time::timeout_at(until, arrived).await.is_err() {
            return Err(bench_error(
                "waiting for deliveries",
                format!(
                    "{} of {count} events within {deadline:?}",
                    sink.events.load(Ordering::Relaxed)
                ),
            ));
        }
    }
}

async fn measure_walhook(
    postgres: &TempPostgres,
    database: &str,
    scenario: &Scenario,
    rows: u64,
) -> Result<BacklogResult, BenchError> {
    let (sink, url) = start_sink(scenario.failure_percent, None).await?;
    let before = children_usage();
    let receiver_before = own_cpu_seconds();
    let started = Instant::now();
    let daemon = spawn_walhook(&walhook_config(postgres, database, &url, scenario))?;
    let pid = daemon.child.id();
    let peak = watch_peak_rss(pid);
    wait_for_events(&sink, rows as usize, Duration::from_secs(600)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let receiver_cpu = own_cpu_seconds() - receiver_before;
    let peak_kb = pid.map(read_peak_rss_kb).unwrap_or(0);
    peak.abort();
    let cpu = stop_walhook(daemon, before).await?;
    let requests = sink.requests.load(Ordering::Relaxed);
    Ok(BacklogResult {
        scenario: scenario.name.into(),
        rows,
        seconds,
        rows_per_second: rows as f64 / seconds,
        cpu_us_per_row: cpu * 1e6 / rows as f64,
        peak_rss_mb: peak_kb as f64 / 1024.0,
        ratio_of_ceiling: None,
        requests,
        receiver_cpu_us_per_request: Some(receiver_cpu * 1e6 / requests.max(1) as f64),
    })
}

/// The endpoint is down while walhook reads the backlog loaded in the slot:
/// every row goes into `walhook.backlog`. Then it comes back and the rows
/// drain from there. Returns (write, drain) figures.
async fn measure_backlog(
    postgres: &TempPostgres,
    client: &tokio_postgres::Client,
    database: &str,
    scenario: &Scenario,
    rows: u64,
) -> Result<(BacklogResult, BacklogResult), BenchError> {
    client
        .batch_execute(include_str!("../../sql/001_walhook_schema.sql"))
        .await
        .map_err(|error| bench_error("creating the walhook schema", error))?;
    let end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|error| bench_error("reading the WAL position", error))?
        .get(0);
    let (sink, url) = start_sink(0, None).await?;
    sink.down.store(true, Ordering::Relaxed);
    let before = children_usage();
    let started = Instant::now();
    let daemon = spawn_walhook(&walhook_config(postgres, database, &url, scenario))?;
    let pid = daemon.child.id();
    let peak = watch_peak_rss(pid);
    let cpu_now = || pid.map_or(0.0, process_cpu_seconds);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let stored: i64 = client
            .query_one(
                "SELECT count(*) FROM walhook.backlog WHERE subscription = 'bench'",
                &[],
            )
            .await
            .map_err(|error| bench_error("counting the backlog", error))?
            .get(0);
        let confirmed: bool = client
            .query_one(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots \
                 WHERE slot_name = $2",
                &[&end, &database],
            )
            .await
            .map_err(|error| bench_error("reading the slot", error))?
            .get(0);
        if stored as u64 >= rows && confirmed {
            break;
        }
        if Instant::now() > deadline {
            return Err(bench_error(
                "writing the backlog",
                format!("{stored} of {rows} rows stored within 600 s"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let write_seconds = started.elapsed().as_secs_f64();
    let write_cpu = cpu_now();
    let drain_seconds = come_back_and_drain(&sink, rows as usize).await?;
    let drain_cpu = cpu_now() - write_cpu;
    let peak_kb = pid.map(read_peak_rss_kb).unwrap_or(0);
    peak.abort();
    let _ = stop_walhook(daemon, before).await?;
    let figures = |name: &str, seconds: f64, cpu: f64| BacklogResult {
        scenario: name.into(),
        rows,
        seconds,
        rows_per_second: rows as f64 / seconds,
        cpu_us_per_row: cpu * 1e6 / rows as f64,
        peak_rss_mb: peak_kb as f64 / 1024.0,
        ratio_of_ceiling: None,
        requests: sink.requests.load(Ordering::Relaxed),
        receiver_cpu_us_per_request: None,
    };
    Ok((
        figures(scenario.name, write_seconds, write_cpu),
        figures(
            SCENARIOS
                .iter()
                .find(|candidate| candidate.kind == Kind::BacklogDrain)
                .map_or("backlog drain", |drain| drain.name),
            drain_seconds,
            drain_cpu.max(0.0),
        ),
    ))
}

/// The CPU time (user and system) a running process has used so far, from
/// /proc (a child's rusage counts only once it has been reaped).
fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces), from field 3.
    let Some((_, after_name)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (indices 11 and 12 here).
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |ticks| ticks as f64);
    (ticks(11) + ticks(12)) / per_second
}

/// Commit-to-arrival latencies in milliseconds, sorted.
struct Latencies(Vec<f64>);

impl Latencies {
    /// Of each row from `first` on that both committed and arrived (an
    /// arrival can precede the client's view of its own commit: 0).
    fn between(committed: &[Option<Instant>], arrived: &[Option<Instant>], first: usize) -> Self {
        let mut latencies: Vec<f64> = committed
            .iter()
            .zip(arrived)
            .skip(first)
            .filter_map(|(commit, arrival)| match (commit, arrival) {
                (Some(commit), Some(arrival)) => {
                    Some(arrival.saturating_duration_since(*commit).as_secs_f64() * 1e3)
                }
                _ => None,
            })
            .collect();
        latencies.sort_by(|a, b| a.total_cmp(b));
        Latencies(latencies)
    }

    fn percentile(&self, share: f64) -> f64 {
        let index = ((self.0.len() as f64 * share) as usize).min(self.0.len().saturating_sub(1));
        self.0.get(index).copied().unwrap_or(f64::NAN)
    }

    fn max(&self) -> f64 {
        self.0.last().copied().unwrap_or(f64::NAN)
    }
}

/// Live rows a second in the isolation scenario.
const ISOLATION_RATE: u64 = 20;

async fn measure_isolation(
    postgres: &TempPostgres,
    database: &str,
    burst: u64,
    seconds: u64,
) -> Result<IsolationResult, BenchError> {
    let client = prepare_database(postgres, database).await?;
    client
        .batch_execute(include_str!("../../sql/001_walhook_schema.sql"))
        .await
        .map_err(|error| bench_error("creating the walhook schema", error))?;
    let live_rows = ISOLATION_RATE * seconds;
    let total = burst + live_rows;
    let (healthy, healthy_url) = start_sink(0, Some(total as usize)).await?;
    let (down, down_url) = start_sink(0, None).await?;
    down.down.store(true, Ordering::Relaxed);
    // walhook's default delivery settings.
    let config = format!(
        r#"
        [source]
        url = "{}"
        slot = "{database}"
        auto_setup = false
        [admin]
        listen = ""
        [[subscriptions]]
        name = "healthy"
        tables = ["orders"]
        url = "{healthy_url}"
        [[subscriptions]]
        name = "down"
        tables = ["orders"]
        url = "{down_url}"
        "#,
        postgres.url(database),
    );
    let before = children_usage();
    let daemon = spawn_walhook(&config)?;
    let pid = daemon.child.id();
    wait_until_streaming(&client).await?;

    load_backlog(&client, burst, 100).await?;
    let burst_end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|error| bench_error("reading the WAL position", error))?
        .get(0);
    let burst_done = Instant::now();
    let slot_watch = {
        let client = connect(&postgres.url(database)).await?;
        let database = database.to_owned();
        tokio::spawn(async move {
            loop {
                let past = client
                    .query_one(
                        "SELECT confirmed_flush_lsn >= $1::text::pg_lsn \
                         FROM pg_replication_slots WHERE slot_name = $2",
                        &[&burst_end, &database],
                    )
                    .await
                    .ok()
                    .and_then(|row| row.try_get::<_, bool>(0).ok())
                    .unwrap_or(false);
                if past {
                    return burst_done.elapsed().as_secs_f64();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Once walhook has dealt with the burst (delivered to one, stored for
    // the other), so that the live phase's memory is compared with that.
    wait_for_events(&healthy, burst as usize, Duration::from_secs(120)).await?;
    let slot_past_burst_seconds = tokio::time::timeout(Duration::from_secs(60), slot_watch)
        .await
        .ok()
        .and_then(Result::ok);
    let rss_after_burst = pid.map_or(0, current_rss_kb);

    let insert = prepare_live_insert(&client).await?;
    let mut committed = vec![None; total as usize + 1];
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / ISOLATION_RATE as u32);
    for id in burst + 1..=total {
        ticks.tick().await;
        client
            .execute(&insert, &[&(id as i64)])
            .await
            .map_err(|error| bench_error("inserting live rows", error))?;
        if let Some(slot) = committed.get_mut(id as usize) {
            *slot = Some(Instant::now());
        }
    }
    let rss_after_live = pid.map_or(0, current_rss_kb);
    wait_for_events(&healthy, total as usize, Duration::from_secs(120)).await?;
    let arrived = healthy
        .arrivals
        .as_ref()
        .and_then(|arrivals| arrivals.lock().ok().map(|guard| guard.clone()))
        .unwrap_or_default();
    let latencies = Latencies::between(&committed, &arrived, burst as usize + 1);
    let backlog_events: i64 = client
        .query_one(
            "SELECT count(*) FROM walhook.backlog WHERE subscription = 'down'",
            &[],
        )
        .await
        .map_err(|error| bench_error("counting the backlog", error))?
        .get(0);

    let drain_seconds = come_back_and_drain(&down, total as usize).await?;
    let result = IsolationResult {
        burst_rows: burst,
        live_rows,
        healthy_p50_ms: latencies.percentile(0.50),
        healthy_p99_ms: latencies.percentile(0.99),
        healthy_max_ms: latencies.max(),
        slot_past_burst_seconds,
        rss_mb_after_burst: rss_after_burst as f64 / 1024.0,
        rss_mb_after_live: rss_after_live as f64 / 1024.0,
        backlog_events,
        drain_seconds,
        drained_events: down.events.load(Ordering::Relaxed) as u64,
    };
    stop_walhook(daemon, before).await?;
    Ok(result)
}

/// Backfills `rows` rows that exist before walhook starts, into a sink that
/// takes batches of 100, while a second subscription gets live rows.
async fn measure_backfill(
    postgres: &TempPostgres,
    database: &str,
    rows: u64,
    chunk_rows: i32,
) -> Result<BackfillResult, BenchError> {
    const BATCH: usize = 100;
    const LIVE_SECONDS_BEFORE: u64 = 3;
    let client = prepare_database(postgres, database).await?;
    // The rows exist before the slot: it is made again after them.
    client
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{database}')"))
        .await
        .map_err(|error| bench_error("dropping the slot", error))?;
    load_backlog(&client, rows, 10_000).await?;
    client
        .batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('{database}', 'pgoutput')"
        ))
        .await
        .map_err(|error| bench_error("creating the slot", error))?;
    client
        .batch_execute(include_str!("../../sql/001_walhook_schema.sql"))
        .await
        .map_err(|error| bench_error("creating the walhook schema", error))?;
    // Live rows get ids above the backfilled ones; the live sink keeps
    // their arrival times.
    let live_capacity = rows as usize + 1_000_000;
    let (crm, crm_url) = start_sink(0, None).await?;
    let (live, live_url) = start_sink(0, Some(live_capacity)).await?;
    let config = format!(
        r#"
        [source]
        url = "{}"
        slot = "{database}"
        auto_setup = false
        [admin]
        listen = ""
        [[subscriptions]]
        name = "crm"
        tables = ["orders"]
        events = ["insert"]
        filter = "id <= {rows}"
        url = "{crm_url}"
        batch = {{ max_events = {BATCH} }}
        [[subscriptions]]
        name = "live"
        tables = ["orders"]
        events = ["insert"]
        url = "{live_url}"
        "#,
        postgres.url(database),
    );
    let daemon = spawn_walhook(&config)?;
    let pid = daemon.child.id();
    wait_until_streaming(&client).await?;
    let insert = prepare_live_insert(&client).await?;
    let mut committed: Vec<Option<Instant>> = vec![None; live_capacity + 1];
    let mut next_id = rows + 1;
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / BACKFILL_LIVE_RATE as u32);
    let live_row = async |committed: &mut Vec<Option<Instant>>, id: u64| {
        client
            .execute(&insert, &[&(id as i64)])
            .await
            .map_err(|error| bench_error("inserting live rows", error))?;
        if let Some(slot) = committed.get_mut(id as usize) {
            *slot = Some(Instant::now());
        }
        Ok::<_, BenchError>(())
    };
    for _ in 0..BACKFILL_LIVE_RATE * LIVE_SECONDS_BEFORE {
        ticks.tick().await;
        live_row(&mut committed, next_id).await?;
        next_id += 1;
    }
    let first_during = next_id;
    let started = Instant::now();
    client
        .execute(
            "INSERT INTO walhook.backfills (subscription, table_name, chunk_rows) \
             VALUES ('crm', 'public.orders', $1)",
            &[&chunk_rows],
        )
        .await
        .map_err(|error| bench_error("requesting the backfill", error))?;
    while crm.events.load(Ordering::Relaxed) < rows as usize {
        if started.elapsed() > Duration::from_secs(600) {
            return Err(bench_error("backfill", "not done within 600 s"));
        }
        ticks.tick().await;
        live_row(&mut committed, next_id).await?;
        next_id += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    // VmHWM: the most the process ever held, the backfill included.
    let peak_rss_kb = pid.map_or(0, read_peak_rss_kb);
    wait_for_events(
        &live,
        (next_id - rows - 1) as usize,
        Duration::from_secs(60),
    )
    .await?;
    let arrived = live
        .arrivals
        .as_ref()
        .and_then(|arrivals| arrivals.lock().ok().map(|guard| guard.clone()))
        .unwrap_or_default();
    let before = Latencies::between(
        &committed[..first_during as usize],
        &arrived[..first_during as usize],
        rows as usize + 1,
    );
    let during = Latencies::between(
        &committed[..next_id as usize],
        &arrived[..next_id as usize],
        first_during as usize,
    );
    let result = BackfillResult {
        rows,
        chunk_rows,
        batch: BATCH,
        seconds,
        rows_per_second: rows as f64 / seconds,
        peak_rss_mb: peak_rss_kb as f64 / 1024.0,
        live_p99_ms_before: before.percentile(0.99),
        live_p99_ms_during: during.percentile(0.99),
        live_max_ms_during: during.max(),
    };
    stop_walhook(daemon, children_usage()).await?;
    Ok(result)
}

/// The insert of one live row (`$1` its id), prepared once: parsing and
/// planning every insert would spend the 2 cores walhook shares with
/// PostgreSQL on the load generator.
async fn prepare_live_insert(
    client: &tokio_postgres::Client,
) -> Result<tokio_postgres::Statement, BenchError> {
    client
        .prepare(
            "INSERT INTO orders (id, customer, amount, status, note) \
             VALUES ($1::bigint, 'customer-' || $1::bigint || '@example.com', \
                     ($1::bigint % 10000) / 100.0, 'pending', repeat('x', 100))",
        )
        .await
        .map_err(|error| bench_error("preparing the live insert", error))
}

/// A running process's resident memory now (VmRSS), in kB.
fn current_rss_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmRSS:")
}

/// Seconds of live load before the latency figures start.
const LIVE_WARM_UP_SECONDS: u64 = 1;

async fn measure_live(
    postgres: &TempPostgres,
    database: &str,
    rate: u64,
    seconds: u64,
) -> Result<LiveResult, BenchError> {
    // The first second warms up (the first Relation message's catalog
    // lookups, the keep-alive connections opening) and is not counted: the
    // figures describe a daemon that has been running.
    let warm_up_rows = rate * LIVE_WARM_UP_SECONDS;
    let rows = rate * seconds + warm_up_rows;
    let (sink, url) = start_sink(0, Some(rows as usize)).await?;
    let scenario = &SCENARIOS[0];
    let before = children_usage();
    let daemon = spawn_walhook(&walhook_config(postgres, database, &url, scenario))?;
    // Let it connect before the clock starts.
    let client = connect(&postgres.url(database)).await?;
    wait_until_streaming(&client).await?;

    // Several connections so the commit rate is not capped by one session's
    // round trips.
    const WRITERS: u64 = 4;
    let committed = Arc::new(std::sync::Mutex::new(vec![None; rows as usize + 1]));
    let started = Instant::now();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let client = connect(&postgres.url(database)).await?;
        let insert = prepare_live_insert(&client).await?;
        let committed = Arc::clone(&committed);
        writers.push(tokio::spawn(async move {
            let interval = Duration::from_secs_f64(WRITERS as f64 / rate as f64);
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut id = 1 + writer;
            while id <= rows {
                ticks.tick().await;
                if client.execute(&insert, &[&(id as i64)]).await.is_err() {
                    break;
                }
                if let Ok(mut committed) = committed.lock()
                    && let Some(slot) = committed.get_mut(id as usize)
                {
                    *slot = Some(Instant::now());
                }
                id += WRITERS;
            }
        }));
    }
    for writer in writers {
        let _ = writer.await;
    }
    let write_seconds = started.elapsed().as_secs_f64();
    wait_for_events(&sink, rows as usize, Duration::from_secs(120)).await?;
    let cpu = stop_walhook(daemon, before).await?;

    let committed = committed
        .lock()
        .map(|guard| guard.clone())
        .unwrap_or_default();
    let arrived = sink
        .arrivals
        .as_ref()
        .and_then(|arrivals| arrivals.lock().ok().map(|guard| guard.clone()))
        .unwrap_or_default();
    let latencies = Latencies::between(&committed, &arrived, warm_up_rows as usize + 1);
    Ok(LiveResult {
        target_rows_per_second: rate,
        achieved_rows_per_second: rows as f64 / write_seconds,
        rows: rows - warm_up_rows,
        p50_ms: latencies.percentile(0.50),
        p99_ms: latencies.percentile(0.99),
        max_ms: latencies.max(),
        cpu_us_per_row: cpu * 1e6 / rows as f64,
    })
}

async fn wait_until_streaming(client: &tokio_postgres::Client) -> Result<(), BenchError> {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let streaming = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r \
                 ON r.pid = s.active_pid WHERE s.slot_name = current_database()",
                &[],
            )
            .await
            .map_err(|error| bench_error("waiting for walhook", error))?
            .is_some();
        if streaming {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(bench_error(
        "waiting for walhook",
        "it did not start streaming in 30s",
    ))
}

/// CPU time of every child process reaped so far.
#[derive(Debug, Clone, Copy)]
struct Usage {
    cpu_seconds: f64,
}

fn children_usage() -> Usage {
    Usage {
        cpu_seconds: cpu_seconds(nix::sys::resource::UsageWho::RUSAGE_CHILDREN),
    }
}

/// CPU time of this process (the receiver, while a scenario runs).
fn own_cpu_seconds() -> f64 {
    cpu_seconds(nix::sys::resource::UsageWho::RUSAGE_SELF)
}

fn cpu_seconds(who: nix::sys::resource::UsageWho) -> f64 {
    let seconds =
        |time: nix::sys::time::TimeVal| time.tv_sec() as f64 + time.tv_usec() as f64 / 1e6;
    match nix::sys::resource::getrusage(who) {
        Ok(usage) => seconds(usage.user_time()) + seconds(usage.system_time()),
        Err(_) => 0.0,
    }
}

/// Peak resident set (VmHWM) of a live process, in kB.
fn read_peak_rss_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmHWM:")
}

/// A `kB` figure of /proc/PID/status (0 when it cannot be read).
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Polls a process's VmHWM until it exits; returns the last value seen.
fn watch_peak_rss(pid: Option<u32>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let Some(pid) = pid else { return 0 };
        let mut peak = 0;
        loop {
            let now = read_peak_rss_kb(pid);
            if now == 0 && !Path::new(&format!("/proc/{pid}")).exists() {
                return peak;
            }
            peak = peak.max(now);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn print_report(report: &Report) {
    let medians = if report.runs > 1 {
        format!(", medians of {} runs", report.runs)
    } else {
        String::new()
    };
    println!(
        "\nwalhook bench — commit {}, {} rows in transactions of {}{medians}\n",
        report.commit, report.rows, report.rows_per_transaction
    );
    println!(
        "| {:<38} | {:>9} | {:>8} | {:>10} | {:>8} | {:>9} | {:>14} |",
        "emitter", "rows/s", "ceiling", "CPU µs/row", "peak RSS", "requests", "receiver µs/req"
    );
    println!(
        "|{:-<40}|{:->11}|{:->10}|{:->12}|{:->10}|{:->11}|{:->17}|",
        "", "", "", "", "", "", ""
    );
    for result in std::iter::once(&report.ceiling).chain(&report.backlog) {
        let receiver = result
            .receiver_cpu_us_per_request
            .map_or_else(|| "–".to_owned(), |cpu| format!("{cpu:.1}"));
        println!(
            "| {:<38} | {:>9.0} | {:>7.0}% | {:>10.2} | {:>5.1} MB | {:>9} | {:>15} |",
            result.scenario,
            result.rows_per_second,
            result.ratio_of_ceiling.unwrap_or(f64::NAN) * 100.0,
            result.cpu_us_per_row,
            result.peak_rss_mb,
            result.requests,
            receiver
        );
    }
    if let Some(isolation) = &report.isolation {
        println!(
            "\nisolation — one of two endpoints down (503) through a {}-row burst and {} live \
             rows at {ISOLATION_RATE}/s, walhook's default settings:",
            isolation.burst_rows, isolation.live_rows
        );
        println!(
            "  healthy endpoint, live rows: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            isolation.healthy_p50_ms, isolation.healthy_p99_ms, isolation.healthy_max_ms
        );
        println!(
            "  slot confirmed past the burst {} after its last commit; RSS {:.1} MB after the \
             burst, {:.1} MB after the live load",
            isolation
                .slot_past_burst_seconds
                .map_or("not within 60 s".to_owned(), |seconds| format!(
                    "{seconds:.1} s"
                )),
            isolation.rss_mb_after_burst,
            isolation.rss_mb_after_live
        );
        println!(
            "  the down endpoint back: {} events waited in its backlog; all {} arrived {:.1} s \
             after the first answered probe",
            isolation.backlog_events, isolation.drained_events, isolation.drain_seconds
        );
    }
    if let Some(backfill) = &report.backfill {
        println!(
            "\nbackfill — {} existing rows, chunks of {}, batches of {}, live rows at \
             {BACKFILL_LIVE_RATE}/s to another endpoint:",
            backfill.rows, backfill.chunk_rows, backfill.batch
        );
        println!(
            "  {:.0} rows/s ({:.1} s); peak RSS {:.1} MB; live p99 {:.1} ms before, {:.1} ms \
             during (max {:.1} ms)",
            backfill.rows_per_second,
            backfill.seconds,
            backfill.peak_rss_mb,
            backfill.live_p99_ms_before,
            backfill.live_p99_ms_during,
            backfill.live_max_ms_during
        );
    }
    if !report.live.is_empty() {
        println!(
            "\n| {:>12} | {:>12} | {:>8} | {:>8} | {:>8} | {:>10} |",
            "live rows/s", "achieved", "p50 ms", "p99 ms", "max ms", "CPU µs/row"
        );
        println!(
            "|{:->14}|{:->14}|{:->10}|{:->10}|{:->10}|{:->12}|",
            "", "", "", "", "", ""
        );
        for live in &report.live {
            println!(
                "| {:>12} | {:>12.0} | {:>8.2} | {:>8.2} | {:>8.2} | {:>10.1} |",
                live.target_rows_per_second,
                live.achieved_rows_per_second,
                live.p50_ms,
                live.p99_ms,
                live.max_ms,
                live.cpu_us_per_row
            );
        }
    }
}
