//! integrate: keep a copy of `orders` in a second database.
//!
//! walhook sends each INSERT, UPDATE and DELETE of `orders`
//! (examples/integrate/walhook.toml); this receiver checks the signature and
//! applies the change to the `orders` table of another database, in one
//! transaction with a row in `processed_webhooks` keyed by `webhook-id`.
//! walhook delivers at least once and a redelivered change carries the same
//! id, so a change seen before is answered 2xx without being applied again:
//! each change takes effect exactly once. It answers 2xx only after the
//! commit, so nothing is acknowledged that is not stored.
//!
//! ```sh
//! cargo run --example integrate -- --listen 127.0.0.1:3002 --database-url postgres://…/warehouse
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
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// Where to listen for walhook's requests (port 0: any free port).
    #[arg(long, env = "INTEGRATE_LISTEN", default_value = "127.0.0.1:3002")]
    listen: SocketAddr,
    /// The subscription's signing secret (whsec_…), as walhook.toml reads it.
    #[arg(long, env = "INTEGRATE_WEBHOOK_SECRET", hide_env_values = true)]
    secret: String,
    /// The database that receives the copy (tables: examples/integrate/target.sql).
    #[arg(long, env = "TARGET_DATABASE_URL", hide_env_values = true)]
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
    eprintln!("integrate: listening on http://{}", listener.local_addr()?);
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
            eprintln!("integrate: refused a request: {why}");
            return StatusCode::UNAUTHORIZED;
        }
    };
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        // Permanent: walhook parks it as a dead letter instead of retrying.
        return StatusCode::UNPROCESSABLE_ENTITY;
    };
    let mut database = match app.database.lock().await {
        Ok(database) => database,
        Err(error) => {
            eprintln!("integrate: cannot reach the target database: {error}");
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    };
    match apply(&mut database, id, &event).await {
        Ok(Applied::Now) => {
            eprintln!("integrate: {id} applied");
            StatusCode::NO_CONTENT
        }
        Ok(Applied::Before) => {
            eprintln!("integrate: {id} was applied before; nothing to do");
            StatusCode::NO_CONTENT
        }
        // Retryable: walhook sends the same change again later.
        Err(error) => {
            eprintln!("integrate: {id} not applied: {error}");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

enum Applied {
    Now,
    Before,
}

async fn apply(
    database: &mut tokio_postgres::Client,
    id: &str,
    event: &Value,
) -> Result<Applied, tokio_postgres::Error> {
    let transaction = database.transaction().await?;
    let first_time = transaction
        .execute(
            "INSERT INTO processed_webhooks (webhook_id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&id],
        )
        .await?
        == 1;
    if !first_time {
        // Rolled back on drop: the earlier delivery did the work.
        return Ok(Applied::Before);
    }
    match event["type"].as_str() {
        Some("INSERT" | "UPDATE") => {
            // The record is the row as PostgreSQL's to_jsonb renders it
            // (docs/payload.md), so jsonb_populate_record reads it back
            // exactly, numerics with all their digits.
            let record = event["record"].to_string();
            transaction
                .execute(
                    "INSERT INTO orders \
                     SELECT * FROM jsonb_populate_record(NULL::orders, $1::text::jsonb) \
                     ON CONFLICT (id) DO UPDATE SET customer = EXCLUDED.customer, \
                     amount = EXCLUDED.amount, status = EXCLUDED.status",
                    &[&record],
                )
                .await?;
        }
        Some("DELETE") => {
            // old_record holds at least the primary key.
            let old = event["old_record"].to_string();
            transaction
                .execute(
                    "DELETE FROM orders WHERE id = ($1::text::jsonb ->> 'id')::bigint",
                    &[&old],
                )
                .await?;
        }
        // TRUNCATE is not subscribed to; anything else is not a row change.
        _ => {}
    }
    transaction.commit().await?;
    Ok(Applied::Now)
}
