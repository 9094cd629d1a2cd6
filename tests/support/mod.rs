//! What the integration tests share: one throw-away PostgreSQL for the
//! whole binary with a fresh database per test, configs built in one place,
//! a scriptable webhook receiver, walhook run in-process or as its binary,
//! and waits with deadlines.
#![allow(dead_code)]

pub mod config;
pub mod examples;
pub mod receiver;
pub mod relay;
pub mod tls;
pub mod zero_sign;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Output;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use walhook::config::Config;
use walhook::lsn::Lsn;
use walhook::pgtemp::{TempPostgres, TempPostgresOptions};

use config::TestConfig;
use receiver::Receiver;
use tls::TlsFiles;

/// Login roles of the shared cluster that must authenticate with a
/// password, and the `pg_hba.conf` method each uses (every other role is
/// trusted on loopback). Each belongs to one test of `source`.
pub const PASSWORD_ROLES: &[(&str, &str)] = &[
    ("md5_user", "md5"),
    ("scram_user", "scram-sha-256"),
    ("clear_user", "password"),
    ("wrongpw_user", "scram-sha-256"),
];

/// A role the shared cluster's pg_hba.conf refuses physical replication
/// (as docs/operations.md recommends for walhook's role).
pub const LOGICAL_ONLY_ROLE: &str = "logical_only_user";

/// The shared cluster and the certificates it serves TLS with.
struct Shared {
    cluster: TempPostgres,
    tls: TlsFiles,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // WALHOOK_LOG=debug shows walhook's own logs beside a failing test.
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("WALHOOK_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let tls = TlsFiles::create();
        let cluster = TempPostgres::start_with(TempPostgresOptions {
            extra_conf: tls.server_conf(),
            hba_lines: PASSWORD_ROLES
                .iter()
                .map(|(role, method)| format!("host all {role} 127.0.0.1/32 {method}"))
                .chain([format!("host replication {LOGICAL_ONLY_ROLE} all reject")])
                .collect(),
        })
        .expect("start the throw-away PostgreSQL");
        Shared { cluster, tls }
    })
}

/// The one cluster of this test binary, started by the first test that
/// asks: TLS on (see [`tls_files`]), the [`PASSWORD_ROLES`] authenticating
/// with passwords. Its watchdog stops it and removes its files when the
/// process ends. Tests that stop, restart or reconfigure PostgreSQL start
/// their own with [`TempPostgres::start_with`] and use [`TestDb::on`].
pub fn cluster() -> &'static TempPostgres {
    &shared().cluster
}

/// The certificates the shared cluster serves.
pub fn tls_files() -> &'static TlsFiles {
    &shared().tls
}

/// A fresh database of the shared cluster, with a superuser connection.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub client: tokio_postgres::Client,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let cluster = tokio::task::spawn_blocking(cluster).await.unwrap();
        TestDb::on(cluster).await
    }

    /// A fresh database of the shared cluster in which `sql` (tables, rows)
    /// has run.
    pub async fn with_schema(sql: &str) -> TestDb {
        let db = TestDb::new().await;
        db.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
        db
    }

    /// A fresh database of `cluster` (a test's own cluster, for tests that
    /// stop or restart PostgreSQL).
    pub async fn on(cluster: &TempPostgres) -> TestDb {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let admin = connect(&cluster.url("postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = cluster.url(&name);
        let client = connect(&url).await;
        client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
        TestDb { name, url, client }
    }

    /// The walhook config for this database (slot and publication named
    /// after it), to add subscriptions and settings to.
    pub fn configure(&self) -> TestConfig {
        TestConfig::new(&self.url, &self.name)
    }

    /// The config with these subscriptions and the test defaults.
    pub fn config(&self, subscriptions: impl std::fmt::Display) -> Config {
        self.configure().subscription(subscriptions).build()
    }

    /// Its text, for the binary.
    pub fn config_text(&self, subscriptions: impl std::fmt::Display) -> String {
        self.configure().subscription(subscriptions).text()
    }

    /// The slot's confirmed position.
    pub async fn confirmed_flush(&self) -> Option<Lsn> {
        self.confirmed_flush_of(&self.name).await
    }

    /// `slot`'s confirmed position; `None` when there is no such slot.
    pub async fn confirmed_flush_of(&self, slot: &str) -> Option<Lsn> {
        let row = self
            .client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()?;
        row.get::<_, Option<String>>(0).map(|text| lsn(&text))
    }

    /// Waits until a walsender streams from the slot. (A slot being created
    /// is already `active`, held by the creating backend, but rows committed
    /// before its creation finishes are not in its stream.)
    pub async fn wait_slot_active(&self) {
        self.wait_slot_streamed(&self.name).await;
    }

    /// Waits until a walsender streams from `slot` (a slot being created is
    /// already `active`, so `pg_stat_replication` is what tells).
    pub async fn wait_slot_streamed(&self, slot: &str) {
        self.wait_for_walsender("the slot to be streamed", slot, "true")
            .await;
    }

    /// Waits until walhook sends a standby status update for the slot that
    /// it built after this call (`pg_stat_replication.reply_time` says when
    /// it was built): whatever walhook had resolved by the call is in the
    /// confirmed position that update carried. (It reports at least every
    /// `status_interval`, 1 s in the test configs.)
    pub async fn wait_for_status_report(&self) {
        let now: String = self
            .client
            .query_one("SELECT clock_timestamp()::text", &[])
            .await
            .unwrap()
            .get(0);
        self.wait_for_walsender(
            "walhook to report its position",
            &self.name,
            &format!("r.reply_time > '{now}'::timestamptz"),
        )
        .await;
    }

    /// Waits until a walsender streams from `slot` and its
    /// `pg_stat_replication` row `r` meets `condition`.
    async fn wait_for_walsender(&self, what: &str, slot: &str, condition: &str) {
        let query = format!(
            "SELECT 1 FROM pg_replication_slots s \
             JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = $1 AND ({condition})"
        );
        wait_until(what, Duration::from_secs(30), || async {
            self.client
                .query_opt(&query, &[&slot])
                .await
                .unwrap()
                .is_some()
        })
        .await;
    }

    /// `pg_current_wal_lsn()`.
    pub async fn current_wal(&self) -> Lsn {
        let row = self
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap();
        lsn(&row.get::<_, String>(0))
    }

    /// `server_version_num`, e.g. 170004.
    pub async fn server_version_num(&self) -> i32 {
        self.client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// One transaction: rows `from..=to` into `items (id int, note text)`,
    /// each noted `row <id>`.
    pub async fn insert_items(&self, from: i64, to: i64) {
        self.client
            .batch_execute(&format!(
                "INSERT INTO items SELECT g, 'row ' || g FROM generate_series({from}, {to}) g"
            ))
            .await
            .unwrap();
    }

    /// How many events are parked in `walhook.dead_letters`.
    pub async fn dead_letter_count(&self) -> i64 {
        self.client
            .query_one("SELECT count(*) FROM walhook.dead_letters", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// How many events of `subscription` wait in `walhook.backlog` (0 while
    /// that table does not exist yet).
    pub async fn backlog_count(&self, subscription: &str) -> i64 {
        let exists: bool = self
            .client
            .query_one("SELECT to_regclass('walhook.backlog') IS NOT NULL", &[])
            .await
            .unwrap()
            .get(0);
        if !exists {
            return 0;
        }
        self.client
            .query_one(
                "SELECT count(*) FROM walhook.backlog WHERE subscription = $1",
                &[&subscription],
            )
            .await
            .unwrap()
            .get(0)
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| panic!("connect to {url}: {error}"));
    tokio::spawn(connection);
    client
}

/// A WAL position as PostgreSQL and the payload's `source` print it.
pub fn lsn(text: &str) -> Lsn {
    text.parse()
        .unwrap_or_else(|error| panic!("a WAL position: {error}"))
}

/// An event's `source.lsn` or `source.commit_lsn`.
pub fn source_lsn(event: &Value, field: &str) -> Lsn {
    lsn(event["source"][field]
        .as_str()
        .unwrap_or_else(|| panic!("source.{field} in {event}")))
}

/// Row id (`record.id`) → the distinct event ids it arrived with.
pub fn ids_by_row(events: &[Value]) -> BTreeMap<i64, BTreeSet<String>> {
    let mut by_row: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for event in events {
        by_row
            .entry(event["record"]["id"].as_i64().unwrap())
            .or_default()
            .insert(event["id"].as_str().unwrap().to_owned());
    }
    by_row
}

/// Waits until every row 1..=rows arrived (at least once), prints
/// `lost = 0` and the duplicates, and asserts that each row arrived with
/// one id. `log` is shown when the deadline passes.
pub async fn wait_for_rows(
    receiver: &Receiver,
    rows: i64,
    deadline: Duration,
    log: impl Fn() -> String,
) {
    // Counting is cheap, parsing every body is not: wait for at least as
    // many more deliveries as rows are missing before parsing again.
    let mut needed = rows as usize;
    loop {
        let waited = tokio::time::timeout(
            deadline,
            receiver.wait_for_delivered_count(needed, Duration::from_secs(3600)),
        )
        .await;
        let count = receiver.delivered_count();
        let arrived = ids_by_row(&receiver.delivered()).len();
        if arrived as i64 >= rows {
            break;
        }
        assert!(
            waited.is_ok(),
            "only {arrived} of {rows} rows arrived; log:\n{}",
            log()
        );
        needed = count + (rows as usize - arrived);
    }
    let delivered = receiver.delivered();
    let by_row = ids_by_row(&delivered);
    let lost = (1..=rows).filter(|id| !by_row.contains_key(id)).count();
    eprintln!(
        "rows {rows}, deliveries {}, duplicates {}, lost = {lost}",
        delivered.len(),
        delivered.len() as i64 - rows
    );
    assert_eq!(lost, 0);
    for (row, ids) in &by_row {
        assert_eq!(
            ids.len(),
            1,
            "row {row} arrived with different ids: {ids:?}"
        );
    }
}

/// Polls `check` until it is true, failing the test after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `future`'s output, failing the test if it takes longer than `deadline`.
pub async fn within<T>(what: &str, deadline: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(deadline, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {deadline:?} waiting for {what}"))
}

/// walhook running in this process.
pub struct Walhook {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), walhook::app::DaemonError>>,
}

impl Walhook {
    pub fn start(config: Config) -> Walhook {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(walhook::app::run(config, shutdown.clone()));
        Walhook { shutdown, task }
    }

    /// Stops it gracefully and returns its result.
    pub async fn stop(self) -> Result<(), walhook::app::DaemonError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("walhook stops within 30s")
            .expect("walhook task did not panic")
    }
}

/// The walhook binary built for these tests.
pub fn walhook_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_walhook"))
}

/// The walhook binary with a config file and a log in a temp dir: `run` as
/// a child process (stderr appended to the log), or one-shot commands.
pub struct WalhookBinary {
    dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl WalhookBinary {
    pub fn new(config_text: &str) -> WalhookBinary {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("walhook.toml");
        std::fs::write(&config_path, config_text).unwrap();
        WalhookBinary { dir, config_path }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("walhook.log")
    }

    /// Starts `walhook run`; killed when the handle is dropped.
    pub fn spawn_run(&self) -> tokio::process::Child {
        self.spawn_run_with_env(&[])
    }

    /// Starts `walhook run` with these variables set (for `env:` values).
    pub fn spawn_run_with_env(&self, env: &[(&str, &str)]) -> tokio::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        tokio::process::Command::new(walhook_binary())
            .args(["run", "--config"])
            .arg(&self.config_path)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// What every `run` so far logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until the log contains `text`.
    pub async fn wait_for_log(&self, text: &str, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        while !self.log().contains(text) {
            assert!(
                tokio::time::Instant::now() < until,
                "timed out after {deadline:?} waiting for {text:?} in the log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `walhook <args…> --config <file>` to completion (see
    /// [`run_binary`]).
    pub async fn command(&self, args: &[&str]) -> Output {
        let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        all.extend([OsStr::new("--config"), self.config_path.as_os_str()]);
        run_binary(&all, &[]).await
    }
}

/// How long a one-shot command of the binary may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// Runs the walhook binary with `args` to completion, with `WALHOOK_CONFIG`
/// and proxy variables unset (the tests' receivers are local) and `env`
/// applied (`None` removes a variable); fails the test if it takes longer
/// than a minute or panics.
pub async fn run_binary(args: &[&OsStr], env: &[(&str, Option<&str>)]) -> Output {
    run_binary_within(args, env, COMMAND_DEADLINE).await
}

/// [`run_binary`] with another deadline, for the long commands (`demo`,
/// `bench`).
pub async fn run_binary_within(
    args: &[&OsStr],
    env: &[(&str, Option<&str>)],
    deadline: Duration,
) -> Output {
    let mut command = tokio::process::Command::new(walhook_binary());
    command.args(args).env_remove("WALHOOK_CONFIG");
    // The receivers are local: no request goes through a proxy.
    for (name, _) in std::env::vars_os() {
        if name
            .to_string_lossy()
            .to_ascii_lowercase()
            .ends_with("_proxy")
        {
            command.env_remove(name);
        }
    }
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    command.kill_on_drop(true);
    let output = within(
        &format!("walhook {args:?} to exit"),
        deadline,
        command.output(),
    )
    .await
    .unwrap();
    assert!(
        !stderr(&output).contains("panicked"),
        "walhook {args:?} panicked:\n{}",
        stderr(&output)
    );
    output
}

/// A finished command's standard output, as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A finished command's standard error, as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Sends SIGTERM to a child process.
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("the child is running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// A process's peak resident memory (VmHWM) in kB, from /proc.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of one sample line of the Prometheus text, e.g.
/// `walhook_events_delivered_total{subscription="orders"}`.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// The value of the sample of `name` whose labels are exactly `labels`, in
/// whatever order the text lists them, e.g. `walhook_subscription_mode` with
/// `[("subscription", "orders"), ("mode", "live")]`. (Label values with a
/// comma or an escaped quote are not parsed.)
pub fn labeled_sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut wanted: Vec<String> = labels
        .iter()
        .map(|(label, value)| format!("{label}=\"{value}\""))
        .collect();
    wanted.sort();
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (found, value) = match rest.strip_prefix('{') {
            Some(rest) => {
                let end = rest.find('}')?;
                (&rest[..end], &rest[end + 1..])
            }
            None => ("", rest),
        };
        let mut found: Vec<String> = found
            .split(',')
            .filter(|pair| !pair.is_empty())
            .map(str::to_owned)
            .collect();
        found.sort();
        if found != wanted {
            return None;
        }
        value.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// GETs `url`: the status and body, or status 0 when nothing answered.
pub async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}
