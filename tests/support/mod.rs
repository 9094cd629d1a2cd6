//! What the integration tests share: one throw-away PostgreSQL per test
//! binary with a fresh database per test, a scriptable webhook receiver, and
//! walhook run in-process or as its binary.
#![allow(dead_code)]

pub mod receiver;

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
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let cluster = tokio::task::spawn_blocking(cluster).await.unwrap();
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
        format!(
            r#"
            [source]
            url = "{url}"
            slot = "{name}"
            publication = "{name}"
            status_interval = "1s"
            [delivery]
            concurrency = 16
            timeout = "2s"
            backoff = {{ initial = "20ms", max = "200ms" }}
            shutdown_grace = "2s"
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
        let row = self
            .client
            .query_opt(
                "SELECT (confirmed_flush_lsn - '0/0')::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.name],
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
        wait_until(
            "the slot to be streamed",
            Duration::from_secs(30),
            || async {
                self.client
                    .query_opt(
                        "SELECT 1 FROM pg_replication_slots s \
                     JOIN pg_stat_replication r ON r.pid = s.active_pid \
                     WHERE s.slot_name = $1",
                        &[&self.name],
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
    pub task: JoinHandle<Result<(), walhook::app::AppError>>,
}

impl Walhook {
    pub fn start(config: Config) -> Walhook {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(walhook::app::run(config, shutdown.clone()));
        Walhook { shutdown, task }
    }

    /// Stops it gracefully and returns its result.
    pub async fn stop(self) -> Result<(), walhook::app::AppError> {
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
