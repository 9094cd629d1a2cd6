//! What the integration tests share: one throw-away PostgreSQL per test
//! binary with a fresh database per test, a scriptable webhook receiver, and
//! walhook run in-process or as its binary.
#![allow(dead_code)]

pub mod receiver;
pub mod zero_sign;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use walhook::config::Config;
use walhook::pgtemp::TempPostgres;

/// The cluster of this test binary (its watchdog cleans up after the process).
pub fn cluster() -> &'static TempPostgres {
    static CLUSTER: OnceLock<TempPostgres> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // WALHOOK_LOG=debug shows walhook's own logs beside a failing test.
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("WALHOOK_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        TempPostgres::start().expect("start the throw-away PostgreSQL")
    })
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

    /// A walhook config for this database (slot and publication named after
    /// it), with the given subscriptions TOML appended.
    pub fn config(&self, subscriptions: &str) -> Config {
        Config::from_toml(
            &PathBuf::from("test.toml"),
            &self.config_text(subscriptions),
        )
        .expect("valid test config")
    }

    pub fn config_text(&self, subscriptions: &str) -> String {
        self.config_text_with("", subscriptions)
    }

    /// A config whose `[delivery]` section also has `delivery` (keys the
    /// defaults here do not set, e.g. `max_attempts = 1000`).
    pub fn config_with(&self, delivery: &str, subscriptions: &str) -> Config {
        Config::from_toml(
            &PathBuf::from("test.toml"),
            &self.config_text_with(delivery, subscriptions),
        )
        .expect("valid test config")
    }

    pub fn config_text_with(&self, delivery: &str, subscriptions: &str) -> String {
        // Defaults for the tests, each unless `delivery` sets that key. The
        // timeout is generous: on a loaded 2-core CI machine a 2 s timeout
        // makes spurious retries (duplicates), which tests of exact
        // sequences would misread.
        let defaults = [
            ("concurrency", "16"),
            ("timeout", "\"10s\""),
            ("backoff", "{ initial = \"20ms\", max = \"200ms\" }"),
            ("shutdown_grace", "\"10s\""),
        ]
        .iter()
        .filter(|(key, _)| !delivery.contains(&format!("{key} =")))
        .map(|(key, value)| format!("{key} = {value}"))
        .collect::<Vec<_>>()
        .join("\n");
        format!(
            r#"
            [source]
            url = "{url}"
            slot = "{name}"
            publication = "{name}"
            status_interval = "1s"
            [delivery]
            {defaults}
            {delivery}
            [admin]
            listen = ""
            {subscriptions}
            "#,
            url = self.url,
            name = self.name,
        )
    }

    /// The slot's confirmed_flush_lsn as numbers, for comparisons.
    pub async fn confirmed_flush(&self) -> Option<u64> {
        self.confirmed_flush_of(&self.name).await
    }

    /// `slot`'s confirmed_flush_lsn as a number.
    pub async fn confirmed_flush_of(&self, slot: &str) -> Option<u64> {
        let row = self
            .client
            .query_opt(
                "SELECT (confirmed_flush_lsn - '0/0')::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()?;
        let text: Option<String> = row.get(0);
        text.and_then(|text| text.parse().ok())
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
        wait_until(
            "the slot to be streamed",
            Duration::from_secs(30),
            || async {
                self.client
                    .query_opt(
                        "SELECT 1 FROM pg_replication_slots s \
                     JOIN pg_stat_replication r ON r.pid = s.active_pid \
                     WHERE s.slot_name = $1",
                        &[&slot],
                    )
                    .await
                    .unwrap()
                    .is_some()
            },
        )
        .await;
    }

    /// `pg_current_wal_lsn()` as a number.
    pub async fn current_wal(&self) -> u64 {
        let row = self
            .client
            .query_one("SELECT (pg_current_wal_lsn() - '0/0')::text", &[])
            .await
            .unwrap();
        row.get::<_, String>(0).parse().unwrap()
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| panic!("connect to {url}: {error}"));
    tokio::spawn(connection);
    client
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
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        tokio::process::Command::new(walhook_binary())
            .args(["run", "--config"])
            .arg(&self.config_path)
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

    /// Runs `walhook <args…> --config <file>` to completion.
    pub async fn command(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(walhook_binary())
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .kill_on_drop(true)
            .output()
            .await
            .unwrap()
    }
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
