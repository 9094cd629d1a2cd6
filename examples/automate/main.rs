//! automate: a paid order → take its items out of stock, exactly once.
//!
//! walhook sends each order that becomes paid (examples/automate/walhook.toml
//! filters on `changed(status)`); this receiver checks the signature and, in
//! one transaction, records the `webhook-id` in `processed_webhooks` and
//! decrements `inventory.stock`. walhook delivers at least once with the
//! same id each time, so a redelivery finds its id and is answered 2xx
//! without touching the stock again. It answers 2xx only after the commit.
//!
//! ```sh
//! cargo run --example automate -- --listen 127.0.0.1:3003 --database-url postgres://…/app
//! ```

#[path = "../common/database.rs"]
mod database;
#[path = "../common/signature.rs"]
mod signature;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use clap::Parser;
use serde::Deserialize;

#[derive(Parser)]
struct Args {
    /// Where to listen for walhook's requests (port 0: any free port).
    #[arg(long, env = "AUTOMATE_LISTEN", default_value = "127.0.0.1:3003")]
    listen: SocketAddr,
    /// The subscription's signing secret (whsec_…), as walhook.toml reads it.
    #[arg(long, env = "AUTOMATE_WEBHOOK_SECRET", hide_env_values = true)]
    secret: String,
    /// The database with `inventory` and `processed_webhooks`
    /// (examples/automate/schema.sql).
    #[arg(long, env = "INVENTORY_DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

struct App {
    verifier: signature::Verifier,
    database: database::Database,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app = Arc::new(App {
        verifier: signature::Verifier::new(&args.secret)?,
        database: database::Database::connect(args.database_url).await?,
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("automate: listening on http://{}", listener.local_addr()?);
    let router = axum::Router::new()
        .route("/", axum::routing::post(receive))
        .with_state(app);
    axum::serve(listener, router).await?;
    Ok(())
}

async fn receive(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let id = match app.verifier.verify(&headers, &body) {
        Ok(id) => id,
        Err(why) => {
            eprintln!("automate: refused a request: {why}");
            return StatusCode::UNAUTHORIZED;
        }
    };
    let Ok(PaidOrderEvent { record: order }) = serde_json::from_slice(&body) else {
        // Permanent: walhook parks it as a dead letter instead of retrying.
        eprintln!("automate: {id} is not an order with id, sku and quantity");
        return StatusCode::UNPROCESSABLE_ENTITY;
    };
    let mut database = match app.database.lock().await {
        Ok(database) => database,
        Err(error) => {
            eprintln!("automate: cannot reach the database: {error}");
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    };
    match take_from_stock(&mut database, id, &order).await {
        Ok(Outcome::Taken) => {
            eprintln!(
                "automate: order {}: {} × {} taken from stock",
                order.id, order.quantity, order.sku
            );
            StatusCode::NO_CONTENT
        }
        Ok(Outcome::AlreadyTaken) => {
            eprintln!("automate: {id} was handled before; stock unchanged");
            StatusCode::NO_CONTENT
        }
        Ok(Outcome::UnknownSku) => {
            // Permanent: parked as a dead letter, to replay once the item
            // exists (`walhook dead-letters replay`).
            eprintln!(
                "automate: order {}: no inventory row for {}",
                order.id, order.sku
            );
            StatusCode::UNPROCESSABLE_ENTITY
        }
        // Retryable: walhook sends the same order again later.
        Err(error) => {
            eprintln!("automate: {id} not handled: {error}");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// The part of walhook's payload (docs/payload.md) this receiver reads.
#[derive(Deserialize)]
struct PaidOrderEvent {
    record: Order,
}

/// A row of `orders`, as the subscription's `columns` send it.
#[derive(Deserialize)]
struct Order {
    id: i64,
    sku: String,
    quantity: i32,
}

enum Outcome {
    Taken,
    AlreadyTaken,
    UnknownSku,
}

async fn take_from_stock(
    database: &mut tokio_postgres::Client,
    id: &str,
    order: &Order,
) -> Result<Outcome, tokio_postgres::Error> {
    let transaction = database.transaction().await?;
    let first_time = transaction
        .execute(
            "INSERT INTO processed_webhooks (webhook_id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&id],
        )
        .await?
        == 1;
    if !first_time {
        // Rolled back on drop: the earlier delivery took the stock.
        return Ok(Outcome::AlreadyTaken);
    }
    let updated = transaction
        .execute(
            "UPDATE inventory SET stock = stock - $2 WHERE sku = $1",
            &[&order.sku, &order.quantity],
        )
        .await?;
    if updated == 0 {
        // Rolled back on drop, so a replay after the item exists applies.
        return Ok(Outcome::UnknownSku);
    }
    transaction.commit().await?;
    Ok(Outcome::Taken)
}
