//! The binary as a user meets it: bad configs give one clear message and
//! exit 2; an unreachable database exits 1 naming host and port; the demo
//! works end to end.

use std::ffi::OsStr;
use std::process::Output;
use std::time::Duration;

use crate::support::config::subscription;
use crate::support::{TestDb, WalhookBinary, run_binary, run_binary_within, stderr, stdout};

/// Runs `walhook <args> --config <file with config>` (a file that does not
/// exist when `config` is `None`); returns the output and stderr.
async fn run_walhook(args: &[&str], config: Option<&str>) -> (Output, String) {
    let output = match config {
        Some(text) => WalhookBinary::new(text).command(args).await,
        None => {
            let dir = tempfile::tempdir().unwrap();
            let missing = dir.path().join("walhook.toml");
            let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
            all.extend([OsStr::new("--config"), missing.as_os_str()]);
            run_binary(&all, &[]).await
        }
    };
    let text = stderr(&output);
    (output, text)
}

/// How many of the slot and the publication named `name` exist.
async fn made(db: &TestDb, name: &str) -> i64 {
    db.client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1) \
                  + (SELECT count(*) FROM pg_publication WHERE pubname = $1)",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

const GOOD_SUBSCRIPTION: &str = r#"
[[subscriptions]]
name = "orders"
tables = ["orders"]
url = "http://127.0.0.1:9/hook"
"#;

#[tokio::test]
async fn bad_config_files_exit_2_with_a_message_that_names_the_key() {
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "syntax error",
            "[source\nurl = 'x'".to_owned(),
            &["walhook.toml"],
        ),
        (
            "unknown key",
            format!(
                "[source]\nurl = \"postgres://localhost/x\"\nslots = \"a\"\n{GOOD_SUBSCRIPTION}"
            ),
            &["walhook.toml", "slots", "source"],
        ),
        (
            "bad value type",
            format!(
                "[source]\nurl = \"postgres://localhost/x\"\n[delivery]\nconcurrency = \"many\"\n{GOOD_SUBSCRIPTION}"
            ),
            &["delivery.concurrency"],
        ),
        (
            "no subscriptions",
            "[source]\nurl = \"postgres://localhost/x\"\n".to_owned(),
            &["subscriptions"],
        ),
        (
            "unset env reference",
            format!("[source]\nurl = \"env:WALHOOK_TEST_NOT_SET_ANYWHERE\"\n{GOOD_SUBSCRIPTION}"),
            &["source.url", "WALHOOK_TEST_NOT_SET_ANYWHERE"],
        ),
    ];
    for (case, text, needles) in cases {
        let (output, stderr) = run_walhook(&["run"], Some(&text)).await;
        assert_eq!(output.status.code(), Some(2), "{case}: {stderr}");
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{case}: {needle:?} not in: {stderr}"
            );
        }
    }
    let (output, stderr) = run_walhook(&["run"], None).await;
    assert_eq!(output.status.code(), Some(2), "missing file: {stderr}");
    assert!(stderr.contains("no such config file"), "{stderr}");
}

#[tokio::test]
async fn an_unknown_table_exits_2_naming_subscription_and_table_and_leaves_no_slot() {
    let db = TestDb::new().await;
    let config = db
        .configure()
        .without_source("status_interval")
        .subscription(subscription("typo", "http://127.0.0.1:9/").tables(&["public.ordersz"]))
        .text();
    let (output, stderr) = run_walhook(&["run"], Some(&config)).await;
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("typo") && stderr.contains("public.ordersz"),
        "{stderr}"
    );
    let slot = db
        .client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name],
        )
        .await
        .unwrap();
    assert!(slot.is_none(), "the slot was not touched");
}

/// The issue's case: `check` passed `batch.max_events = 1000000000`, then
/// `run` aborted (exit 134) asking for 128 GB. Both must refuse the file
/// with the key and the allowed range, before the slot is touched.
#[tokio::test]
async fn oversized_batch_and_concurrency_exit_2_from_check_and_run() {
    let db = TestDb::with_schema("CREATE TABLE orders (id int PRIMARY KEY, status text)").await;
    let batch = db.config_text(
        subscription("huge", "http://127.0.0.1:9/")
            .tables(&["orders"])
            .with("batch", "{ max_events = 1000000000 }"),
    );
    for command in ["check", "run"] {
        let (output, stderr) = run_walhook(&[command], Some(&batch)).await;
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("`subscriptions[0] (huge).batch.max_events` = 1000000000")
                && stderr.contains("allowed: 1 to 10000"),
            "{command}: {stderr}"
        );
    }
    let concurrency = db
        .configure()
        .delivery("concurrency", "9223372036854775807")
        .subscription(subscription("many", "http://127.0.0.1:9/").tables(&["orders"]))
        .text();
    let (output, stderr) = run_walhook(&["check"], Some(&concurrency)).await;
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`delivery.concurrency`") && stderr.contains("allowed: 1 to 10000"),
        "{stderr}"
    );
    assert_eq!(
        made(&db, &db.name).await,
        0,
        "slot and publication untouched"
    );
}

#[tokio::test]
async fn an_unreachable_database_exits_1_naming_host_and_port() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = format!(
        "[source]\nurl = \"postgres://walhook@127.0.0.1:{port}/app?sslmode=disable\"\nconnect_timeout = \"2s\"\n[admin]\nlisten = \"\"\n{GOOD_SUBSCRIPTION}"
    );
    let started = std::time::Instant::now();
    let (output, stderr) = run_walhook(&["run"], Some(&config)).await;
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn demo_shows_the_whole_loop_and_exits_cleanly() {
    let output = run_binary_within(&[OsStr::new("demo")], &[], Duration::from_secs(120)).await;
    let (stdout, stderr) = (stdout(&output), stderr(&output));
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(stdout.matches("verified ✓").count(), 5, "{stdout}");
    assert!(
        stdout.contains("5 webhooks delivered and verified"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"amount\": 12.50"),
        "digits kept: {stdout}"
    );
    assert!(stdout.contains("\"type\": \"DELETE\""), "{stdout}");
}

/// The benchmark (`cargo bench --bench walhook`), compiled into the tests
/// too, so that it keeps working.
#[path = "../benches/walhook/harness.rs"]
mod bench;

#[tokio::test]
async fn bench_measures_a_small_backlog_and_live_load_twice_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let options = bench::BenchOptions {
        rows: 300,
        rows_per_transaction: 30,
        live_rates: vec![200],
        live_seconds: 1,
        json_path: json.clone(),
        only: Some("batch=100".into()),
        repeat: 2,
        isolation_seconds: 1,
        isolation_burst: 300,
        backfill_rows: 500,
        backfill_chunk: 200,
    };
    tokio::time::timeout(Duration::from_secs(300), bench::run(options))
        .await
        .expect("the bench finishes within 300 s")
        .expect("the bench runs");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["runs"], 2);
    let runs = report["every_run"]["backlog"][0].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{report}");
    for run in runs {
        assert_eq!(run["scenario"], "batch=100 ordering=key");
        assert_eq!(run["rows"], 300);
        // 300 rows in batches of at most 100: at least 3 requests.
        assert!(run["requests"].as_u64().unwrap() >= 3, "{run}");
        assert!(run["cpu_us_per_row"].as_f64().unwrap() > 0.0, "{run}");
        assert!(
            run["receiver_cpu_us_per_request"].as_f64().is_some(),
            "{run}"
        );
    }
    assert_eq!(report["every_run"]["ceiling"].as_array().unwrap().len(), 2);
    // The backfill: every existing row arrived, and the live rows' latency
    // was measured while it ran.
    let backfill = &report["backfill"];
    assert_eq!(backfill["rows"], 500, "{backfill}");
    assert!(
        backfill["rows_per_second"].as_f64().unwrap() > 0.0,
        "{backfill}"
    );
    assert!(
        backfill["live_p99_ms_during"].as_f64().is_some(),
        "{backfill}"
    );
    // Live: 200 rows a second for one second after the warm-up, each row's
    // commit-to-arrival latency measured.
    let live = report["every_run"]["live"][0].as_array().unwrap();
    assert_eq!(live.len(), 2, "{report}");
    for run in live {
        assert_eq!(run["rows"], 200, "{run}");
        let (p50, p99, max) = (
            run["p50_ms"].as_f64().unwrap(),
            run["p99_ms"].as_f64().unwrap(),
            run["max_ms"].as_f64().unwrap(),
        );
        // A row can arrive before its writer sees its own commit (0 ms).
        assert!(0.0 <= p50 && p50 <= p99 && p99 <= max && max > 0.0, "{run}");
        assert!(run["cpu_us_per_row"].as_f64().unwrap() > 0.0, "{run}");
    }
    // Isolation: the down endpoint got every event once it came back.
    let isolation = &report["isolation"];
    assert_eq!(isolation["burst_rows"], 300, "{isolation}");
    assert_eq!(isolation["drained_events"], 320, "{isolation}");
    assert!(isolation["healthy_p99_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn environment_overrides_replace_scalar_keys_of_the_file() {
    // The file reads a variable that is not set; WALHOOK_SOURCE__URL names
    // an unreachable port instead. The override stands in for the file's
    // value, and the error names the port from the environment.
    let env_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = \"env:WALHOOK_TEST_UNSET_DATABASE_URL\"\nconnect_timeout = \"2s\"\n[admin]\nlisten = \"\"\n{GOOD_SUBSCRIPTION}"
        ),
    )
    .unwrap();
    let url = format!("postgres://walhook@127.0.0.1:{env_port}/app?sslmode=disable");
    let run = [OsStr::new("run"), "--config".as_ref(), path.as_os_str()];
    let output = run_binary(
        &run,
        &[
            ("WALHOOK_SOURCE__URL", Some(&url)),
            ("WALHOOK_DELIVERY__CONCURRENCY", Some("8")),
        ],
    )
    .await;
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{env_port}")), "{text}");

    // A bad value from the environment names the variable.
    let output = run_binary(
        &run,
        &[
            ("WALHOOK_SOURCE__URL", Some(&url)),
            ("WALHOOK_DELIVERY__CONCURRENCY", Some("many")),
        ],
    )
    .await;
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("delivery.concurrency"), "{text}");
}

#[tokio::test]
async fn env_references_work_for_any_key_and_an_unset_one_names_its_key() {
    let db = TestDb::with_schema("CREATE TABLE env_orders (id int PRIMARY KEY)").await;
    let slot = format!("{}_from_env", db.name);
    let config = format!(
        r#"
        [source]
        url = "{url}"
        slot = "env:WALHOOK_TEST_SLOT"
        publication = "env:WALHOOK_TEST_SLOT"
        [delivery]
        concurrency = "env:WALHOOK_TEST_CONCURRENCY"
        [admin]
        listen = ""
        [[subscriptions]]
        name = "orders"
        tables = ["env:WALHOOK_TEST_TABLE"]
        url = "http://127.0.0.1:9/hook"
        batch = {{ max_events = "env:WALHOOK_TEST_BATCH" }}
        "#,
        url = db.url
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    std::fs::write(&path, &config).unwrap();
    let setup_args = [OsStr::new("setup"), "--config".as_ref(), path.as_os_str()];
    let setup = async |table: Option<&str>, auth: Option<&str>| {
        let output = run_binary(
            &setup_args,
            &[
                ("WALHOOK_TEST_SLOT", Some(&slot)),
                ("WALHOOK_TEST_CONCURRENCY", Some("4")),
                ("WALHOOK_TEST_BATCH", Some("10")),
                ("WALHOOK_TEST_TABLE", table),
                ("WALHOOK_TEST_AUTH", auth),
            ],
        )
        .await;
        let text = stderr(&output);
        (output, text)
    };

    // Unset: the message names the nested key and the variable; nothing made.
    let (output, stderr) = setup(None, None).await;
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("subscriptions[0] (orders).tables[0]")
            && stderr.contains("WALHOOK_TEST_TABLE"),
        "{stderr}"
    );
    assert_eq!(made(&db, &slot).await, 0, "neither slot nor publication");

    // Set: the slot and the publication take their names from the
    // environment, and the publication the table.
    let (output, stderr) = setup(Some("public.env_orders"), None).await;
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        made(&db, &slot).await,
        2,
        "the slot and the publication are named from the environment"
    );
    let published: Vec<String> = db
        .client
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(published, ["env_orders"]);
    db.client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();

    // A variable's value in the wrong place is not echoed: it may be secret.
    std::fs::write(
        &path,
        config.replace(
            "url = \"http://127.0.0.1:9/hook\"",
            "url = \"http://127.0.0.1:9/hook\"\n        headers = \"env:WALHOOK_TEST_AUTH\"",
        ),
    )
    .unwrap();
    let (output, stderr) = setup(Some("public.env_orders"), Some("Bearer s3cret-t0ken")).await;
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("headers"), "{stderr}");
    assert!(!stderr.contains("s3cret-t0ken"), "{stderr}");
}

#[tokio::test]
async fn a_taken_admin_address_exits_1_before_the_database_is_touched() {
    let db = TestDb::with_schema("CREATE TABLE orders (id int PRIMARY KEY)").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let config = db
        .configure()
        .admin(&address)
        .subscription(GOOD_SUBSCRIPTION)
        .text();
    assert!(config.contains(&address));
    let (output, stderr) = run_walhook(&["run"], Some(&config)).await;
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&address), "{stderr}");
    // Neither the slot nor the publication was created.
    assert_eq!(made(&db, &db.name).await, 0, "{stderr}");
    drop(taken);
}

#[tokio::test]
async fn walhook_sql_prints_what_setup_runs_and_the_role_script() {
    // With only the binary: its SQL makes the schema in an empty database.
    let db = TestDb::new().await;
    let schema = run_binary(&[OsStr::new("sql")], &[]).await;
    assert!(schema.status.success(), "{}", stderr(&schema));
    db.client.batch_execute(&stdout(&schema)).await.unwrap();
    for table in ["dead_letters", "backlog", "backfills", "subscription_state"] {
        let exists: bool = db
            .client
            .query_one(
                &format!("SELECT to_regclass('walhook.{table}') IS NOT NULL"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(exists, "walhook.{table}");
    }
    let role = run_binary(&[OsStr::new("sql"), OsStr::new("--least-privilege")], &[]).await;
    assert!(role.status.success());
    assert_eq!(
        stdout(&role),
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/sql/002_least_privilege_role.sql"
        ))
        .unwrap()
    );
}

#[tokio::test]
async fn setup_run_again_does_not_log_postgresql_notices() {
    let db = TestDb::with_schema("CREATE TABLE orders (id int PRIMARY KEY)").await;
    let binary = WalhookBinary::new(
        &db.config_text(subscription("orders", "http://127.0.0.1:9/orders").tables(&["orders"])),
    );
    for run in ["first", "second"] {
        let output = binary.command(&["setup"]).await;
        assert!(output.status.success(), "{run}: {}", stderr(&output));
        // "schema \"walhook\" already exists, skipping" and the like: the
        // files are idempotent, which needs no line on every start.
        assert!(
            !stderr(&output).contains("NOTICE"),
            "{run}: {}",
            stderr(&output)
        );
    }
}

#[tokio::test]
async fn output_to_a_closed_pipe_ends_quietly_not_in_a_panic() {
    // `walhook sql | head -0`: the reader is gone before walhook writes.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    // std's `output` keeps the stdout given (tokio's would pipe it).
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::support::walhook_binary())
            .arg("sql")
            .stdout(writer)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(141), "{stderr}");
}
