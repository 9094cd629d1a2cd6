//! notify: a new signup → a chat message.
//!
//! walhook sends each INSERT into `signups` (examples/notify/walhook.toml);
//! this receiver checks the signature and the `Authorization` header the
//! subscription adds, turns the row into a Slack incoming-webhook message
//! (`{"text": "…"}`) and posts it to the chat URL. It answers 2xx only once
//! the chat service accepted the message, so a chat outage makes walhook
//! retry instead of losing the signup. It keeps no state: in the rare case
//! walhook redelivers (an answer lost on the way back), the message is
//! posted twice — see examples/integrate for de-duplication.
//!
//! ```sh
//! cargo run --example notify -- --listen 127.0.0.1:3001 --chat-url https://hooks.slack.com/services/…
//! ```

#[path = "../common/signature.rs"]
mod signature;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use clap::Parser;
use serde::Deserialize;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Where to listen for walhook's requests (port 0: any free port).
    #[arg(long, env = "NOTIFY_LISTEN", default_value = "127.0.0.1:3001")]
    listen: SocketAddr,
    /// The subscription's signing secret (whsec_…), as walhook.toml reads it.
    #[arg(long, env = "NOTIFY_WEBHOOK_SECRET", hide_env_values = true)]
    secret: String,
    /// The value the subscription sends in `Authorization` (its `headers`).
    #[arg(long, env = "NOTIFY_AUTHORIZATION", hide_env_values = true)]
    authorization: String,
    /// A Slack incoming-webhook URL, or any URL that takes `{"text": "…"}`.
    #[arg(long, env = "CHAT_WEBHOOK_URL", hide_env_values = true)]
    chat_url: String,
}

struct App {
    verifier: signature::Verifier,
    authorization: String,
    chat_url: String,
    http: reqwest::Client,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // reqwest is built here without a default TLS provider; Slack is https.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let app = Arc::new(App {
        verifier: signature::Verifier::new(&args.secret)?,
        authorization: args.authorization,
        chat_url: args.chat_url,
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()?,
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("notify: listening on http://{}", listener.local_addr()?);
    let router = axum::Router::new()
        .route("/", axum::routing::post(receive))
        .with_state(app);
    axum::serve(listener, router).await?;
    Ok(())
}

async fn receive(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    // The headers a subscription sets are not covered by the signature:
    // check both.
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|value| same_bytes(value.as_bytes(), app.authorization.as_bytes()));
    if !authorized {
        eprintln!("notify: refused a request without the expected Authorization");
        return StatusCode::UNAUTHORIZED;
    }
    let id = match app.verifier.verify(&headers, &body) {
        Ok(id) => id.to_owned(),
        Err(why) => {
            eprintln!("notify: refused a request: {why}");
            return StatusCode::UNAUTHORIZED;
        }
    };
    let Ok(SignupEvent { record: signup }) = serde_json::from_slice(&body) else {
        // Permanent: walhook parks it as a dead letter instead of retrying.
        eprintln!("notify: {id} is not a signup with name and email");
        return StatusCode::UNPROCESSABLE_ENTITY;
    };
    let text = format!("New signup: {} <{}>", signup.name, signup.email);
    let message = json!({ "text": text }).to_string();
    let posted = app
        .http
        .post(&app.chat_url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(message)
        .send()
        .await;
    match posted {
        Ok(answer) if answer.status().is_success() => {
            eprintln!("notify: {id} posted to the chat");
            StatusCode::NO_CONTENT
        }
        // 5xx: walhook retries later, with the same webhook-id.
        Ok(answer) => {
            eprintln!("notify: the chat answered {} for {id}", answer.status());
            StatusCode::BAD_GATEWAY
        }
        Err(error) => {
            eprintln!("notify: the chat is unreachable for {id}: {error}");
            StatusCode::BAD_GATEWAY
        }
    }
}

/// Whether `a` and `b` are equal, taking as long whichever byte differs, so
/// the answer's timing does not reveal how much of a guessed token fits.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |differ, (x, y)| differ | (x ^ y)) == 0
}

/// The part of walhook's payload (docs/payload.md) this receiver reads.
#[derive(Deserialize)]
struct SignupEvent {
    record: Signup,
}

/// A row of `signups` (examples/notify/schema.sql).
#[derive(Deserialize)]
struct Signup {
    name: String,
    email: String,
}
