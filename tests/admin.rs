//! The admin server: `/metrics` counters move by exactly the delivered
//! events, the lag in time is the age of the oldest waiting commit,
//! `/healthz` answers, and `/readyz` turns unready when PostgreSQL stops
//! (and ready again when it is back).

use std::sync::Arc;
use std::time::Duration;

use walhook::pgtemp::TempPostgres;

use crate::support::config::subscription;
use crate::support::receiver::Receiver;
use crate::support::{TestDb, Walhook, free_port, get, sample, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_deliveries_exactly_and_readyz_follows_postgres() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = Arc::new(
        tokio::task::spawn_blocking(TempPostgres::start)
            .await
            .unwrap()
            .unwrap(),
    );
    let db = TestDb::on(&cluster).await;
    db.client
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    let port = free_port();
    let config = db
        .configure()
        .admin(&format!("127.0.0.1:{port}"))
        .subscription(subscription("orders", &receiver.url("/orders")).tables(&["orders"]))
        .build();
    let walhook = Walhook::start(config);
    db.wait_slot_active().await;
    let base = format!("http://127.0.0.1:{port}");

    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    wait_until("/readyz to be ready", Duration::from_secs(30), || async {
        get(&format!("{base}/readyz")).await.0 == 200
    })
    .await;
    let (status, before) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    let delivered = "walhook_events_delivered_total{subscription=\"orders\"}";
    assert_eq!(sample(&before, delivered), Some(0.0), "{before}");

    db.client
        .batch_execute("INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 25) g")
        .await
        .unwrap();
    receiver
        .wait_for_delivered(25, Duration::from_secs(30))
        .await;
    // The counter moves when the lane records the 2xx, just after the
    // receiver answered: wait for it, then check it is exact.
    wait_until(
        "the delivered counter to reach 25",
        Duration::from_secs(10),
        || async { sample(&get(&format!("{base}/metrics")).await.1, delivered) == Some(25.0) },
    )
    .await;
    let (_, after) = get(&format!("{base}/metrics")).await;
    for (series, value) in [
        (delivered, 25.0),
        (
            "walhook_events_matched_total{subscription=\"orders\"}",
            25.0,
        ),
        ("walhook_changes_decoded_total", 25.0),
        (
            "walhook_http_responses_total{subscription=\"orders\",class=\"2xx\"}",
            25.0,
        ),
        (
            "walhook_http_responses_total{subscription=\"orders\",class=\"5xx\"}",
            0.0,
        ),
        (
            "walhook_events_dead_lettered_total{subscription=\"orders\"}",
            0.0,
        ),
        (
            "walhook_delivery_latency_seconds_count{subscription=\"orders\"}",
            25.0,
        ),
    ] {
        assert_eq!(sample(&after, series), Some(value), "{series}:\n{after}");
    }
    assert!(sample(&after, "walhook_confirmed_lsn").unwrap() > 0.0);
    assert_eq!(
        crate::support::labeled_sample(
            &after,
            "walhook_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "which walhook answers:\n{after}"
    );

    // /status carries the same facts as `walhook status`, as JSON.
    let content_type = reqwest::get(format!("{base}/status"))
        .await
        .unwrap()
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let (status, report) = get(&format!("{base}/status")).await;
    assert_eq!(status, 200, "{report}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["slot"], db.name.as_str());
    assert_eq!(report["active"], true);

    // PostgreSQL stops: not ready. It comes back: ready again.
    let stopping = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap()
        .unwrap();
    wait_until(
        "/readyz to turn unready",
        Duration::from_secs(30),
        || async { get(&format!("{base}/readyz")).await.0 == 503 },
    )
    .await;
    let starting = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || starting.start_again())
        .await
        .unwrap()
        .unwrap();
    wait_until(
        "/readyz to be ready again",
        Duration::from_secs(60),
        || async { get(&format!("{base}/readyz")).await.0 == 200 },
    )
    .await;
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    assert!(
        sample(&metrics, "walhook_reconnects_total").unwrap() >= 1.0,
        "{metrics}"
    );
    walhook.stop().await.unwrap();
}

/// docs/operations.md: `walhook_replication_lag_seconds` is the age of the
/// oldest committed change not yet confirmed, 0 when nothing is pending.
#[tokio::test]
async fn the_lag_in_time_is_the_age_of_the_oldest_waiting_commit() {
    const LAG: &str = "walhook_replication_lag_seconds";
    let db = TestDb::with_schema("CREATE TABLE orders (id int PRIMARY KEY, status text)").await;
    let receiver = Receiver::start().await;
    receiver.respond_with(503);
    let port = free_port();
    let walhook = Walhook::start(
        db.configure()
            .admin(&format!("127.0.0.1:{port}"))
            .delivery("max_attempts", "100000")
            .subscription(subscription("orders", &receiver.url("/orders")).tables(&["orders"]))
            .build(),
    );
    db.wait_slot_active().await;
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let lag = || async { sample(&get(&metrics).await.1, LAG) };
    assert_eq!(lag().await, Some(0.0), "nothing pending yet");

    let before_commit = std::time::Instant::now();
    db.client
        .batch_execute("INSERT INTO orders VALUES (1, 'waiting')")
        .await
        .unwrap();
    receiver.wait_for_requests(1, Duration::from_secs(30)).await;
    wait_until(
        "the lag to show the waiting row",
        Duration::from_secs(30),
        || async { lag().await.is_some_and(|seconds| seconds > 0.0) },
    )
    .await;
    let waiting = lag().await.unwrap();
    // Read after walhook computed it, so no older than the commit itself.
    let since_commit = before_commit.elapsed().as_secs_f64();
    assert!(
        0.0 < waiting && waiting <= since_commit,
        "lag {waiting}s for a row committed {since_commit}s ago"
    );

    receiver.respond_with(200);
    receiver
        .wait_for_delivered(1, Duration::from_secs(30))
        .await;
    wait_until("the lag to fall to 0", Duration::from_secs(30), || async {
        lag().await == Some(0.0)
    })
    .await;
    walhook.stop().await.unwrap();
}
