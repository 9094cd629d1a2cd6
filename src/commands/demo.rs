//! `walhook demo`: the whole loop in one command. It starts a throw-away
//! PostgreSQL, a built-in webhook receiver and walhook itself, writes a few
//! orders (inserts, an update to paid, a delete), prints each webhook as it
//! arrives with its signature check, then stops everything and removes the
//! cluster. Nothing is left behind.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app;
use crate::commands::CommandError;
use crate::config::Config;
use crate::pgtemp::TempPostgres;
use crate::webhook::SigningKey;

const DEMO_SECRET: &str = "whsec_ZGVtby1zZWNyZXQtZm9yLXdhbGhvb2stZGVtbw==";

/// The statements the demo runs, in order, and how many webhooks each makes.
const SCRIPT: &[(&str, usize)] = &[
    (
        "INSERT INTO orders (customer, amount, status, items) VALUES \
         ('ada@example.com', 12.50, 'pending', '[{\"sku\": \"tea\", \"qty\": 2}]'), \
         ('grace@example.com', 99.00, 'pending', '[{\"sku\": \"coffee\", \"qty\": 1}]')",
        2,
    ),
    (
        "UPDATE orders SET status = 'paid' WHERE customer = 'ada@example.com'",
        1,
    ),
    (
        "INSERT INTO orders (customer, amount, status, items) VALUES \
         ('linus@example.com', 7.25, 'pending', '[]')",
        1,
    ),
    ("DELETE FROM orders WHERE customer = 'grace@example.com'", 1),
];

/// The error of a demo step that is not walhook's own.
fn demo_error(what: &str, error: impl std::fmt::Display) -> CommandError {
    CommandError::Failed(format!("demo: {what}: {error}"))
}

/// Runs the demo.
pub async fn run() -> Result<(), CommandError> {
    println!("walhook demo: starting a throw-away PostgreSQL (initdb, wal_level = logical)…");
    let postgres = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .map_err(|error| demo_error("starting PostgreSQL", error))?
        .map_err(|error| demo_error("starting PostgreSQL", error))?;
    let url = postgres.url("postgres");
    let outcome = run_with(&url).await;
    println!("walhook demo: stopping PostgreSQL and removing its files");
    tokio::task::spawn_blocking(move || drop(postgres))
        .await
        .map_err(|error| demo_error("stopping PostgreSQL", error))?;
    outcome
}

async fn run_with(url: &str) -> Result<(), CommandError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|error| demo_error("connecting", error))?;
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE orders (\
               id bigserial PRIMARY KEY, customer text NOT NULL, amount numeric(10,2) NOT NULL, \
               status text NOT NULL, items jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now());\
             ALTER TABLE orders REPLICA IDENTITY FULL;",
        )
        .await
        .map_err(|error| demo_error("creating the orders table", error))?;

    let (arrivals, mut arrived) = mpsc::unbounded_channel();
    let key = SigningKey::from_secret(DEMO_SECRET).map_err(|error| demo_error("key", error))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| demo_error("binding the receiver", error))?;
    let receiver_addr = listener
        .local_addr()
        .map_err(|error| demo_error("binding the receiver", error))?;
    // The same receiver as `walhook listen`: prints and verifies each webhook.
    let stop_receiver = CancellationToken::new();
    let receiver_task = tokio::spawn({
        let stop = stop_receiver.clone();
        super::listen::serve(listener, vec![key], Some(arrivals), async move {
            stop.cancelled().await
        })
    });
    println!("walhook demo: receiver listening on http://{receiver_addr}/hooks/orders");

    let config = Config::from_toml(
        std::path::Path::new("(demo)"),
        &format!(
            r#"
            [source]
            url = "{url}"
            slot = "walhook_demo"
            publication = "walhook_demo"
            [delivery]
            shutdown_grace = "5s"
            [admin]
            listen = ""
            [[subscriptions]]
            name = "orders"
            tables = ["public.orders"]
            events = ["insert", "update", "delete"]
            url = "http://{receiver_addr}/hooks/orders"
            secret = "{DEMO_SECRET}"
            "#
        ),
    )?;
    let shutdown = CancellationToken::new();
    tokio::spawn(super::cancel_on_signal(shutdown.clone()));
    let daemon = tokio::spawn(app::run(config, shutdown.clone()));

    // Rows committed before the slot exists would not be streamed; a slot
    // being created is already active, so wait for the walsender.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = crate::store::slots::find(&client, "walhook_demo")
            .await
            .map_err(|error| demo_error("waiting for the slot", error))?
            .is_some_and(|slot| slot.streamed);
        if ready || daemon.is_finished() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(demo_error(
                "waiting for the slot",
                "walhook did not start within 30s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut expected = 0;
    let mut received = 0;
    for (statement, webhooks) in SCRIPT {
        println!("\n$ {statement}");
        client
            .batch_execute(statement)
            .await
            .map_err(|error| demo_error("writing orders", error))?;
        expected += webhooks;
        while received < expected {
            let next = tokio::time::timeout(Duration::from_secs(30), arrived.recv()).await;
            match next {
                Ok(Some(())) => received += 1,
                _ => {
                    shutdown.cancel();
                    return Err(demo_error(
                        "waiting for webhooks",
                        format!("{received} of {expected} arrived within 30s"),
                    ));
                }
            }
        }
    }
    println!(
        "\nwalhook demo: {received} webhooks delivered and verified. \
         Next: README.md, 'Run it against your own PostgreSQL'."
    );
    shutdown.cancel();
    let result = daemon
        .await
        .map_err(|error| demo_error("stopping walhook", error))?;
    stop_receiver.cancel();
    let _ = receiver_task.await;
    Ok(result?)
}
