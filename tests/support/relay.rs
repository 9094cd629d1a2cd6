//! A forwarding proxy between walhook and a receiver under test, for the
//! one fault a receiver must absorb itself: its 2xx lost on the way back,
//! after its work was done, so walhook sends the same webhook again. It
//! records each request with both answers and replays a recorded request
//! unchanged. It changes no request; it is not a scriptable receiver (that
//! is `receiver.rs`).

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

/// One request walhook sent through the [`Relay`], and the answers.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// What the receiver answered.
    pub receiver_status: u16,
    /// What walhook was answered.
    pub answered: u16,
}

impl Exchange {
    pub fn id(&self) -> &str {
        self.headers["webhook-id"].to_str().unwrap()
    }

    pub fn event(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

type EventMatch = Box<dyn Fn(&Value) -> bool + Send + Sync>;

struct RelayState {
    target: String,
    http: reqwest::Client,
    exchanges: Mutex<Vec<Exchange>>,
    /// The next exchange whose event matches, answered 2xx by the
    /// receiver, is answered 503 to walhook instead (once).
    lose_answer: Mutex<Option<EventMatch>>,
}

/// A forwarding proxy between walhook and an example receiver: records each
/// request and both answers, and can lose one 2xx answer on its way back to
/// walhook — the case at-least-once delivery resends, which the receiver
/// must absorb.
pub struct Relay {
    pub url: String,
    state: Arc<RelayState>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: &str) -> Relay {
        // reqwest is built without a default TLS provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let state = Arc::new(RelayState {
            target: target.to_owned(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            exchanges: Mutex::new(Vec::new()),
            lose_answer: Mutex::new(None),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let router = axum::Router::new()
            .fallback(axum::routing::post(relay))
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Relay { url, state, task }
    }

    pub fn lose_answer_to(&self, matches: impl Fn(&Value) -> bool + Send + Sync + 'static) {
        *self.state.lose_answer.lock().unwrap() = Some(Box::new(matches));
    }

    /// The exchanges so far whose event matches, in arrival order.
    pub fn exchanges_where(&self, matches: impl Fn(&Value) -> bool) -> Vec<Exchange> {
        self.state
            .exchanges
            .lock()
            .unwrap()
            .iter()
            .filter(|exchange| matches(&exchange.event()))
            .cloned()
            .collect()
    }

    /// Sends `exchange`'s request to the receiver again, headers and body
    /// unchanged; its status.
    pub async fn replay(&self, exchange: &Exchange) -> u16 {
        forward(&self.state, &exchange.headers, exchange.body.clone()).await
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    State(state): State<Arc<RelayState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let receiver_status = forward(&state, &headers, body.clone()).await;
    let mut answered = receiver_status;
    if (200..300).contains(&receiver_status) {
        let mut lose_answer = state.lose_answer.lock().unwrap();
        let event = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if lose_answer.as_ref().is_some_and(|matches| matches(&event)) {
            *lose_answer = None;
            answered = 503;
        }
    }
    state.exchanges.lock().unwrap().push(Exchange {
        headers,
        body,
        receiver_status,
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

/// POSTs the request to the receiver with walhook's headers; its status (0
/// when it did not answer).
async fn forward(state: &RelayState, headers: &HeaderMap, body: Bytes) -> u16 {
    let mut request = state.http.post(&state.target).body(body);
    for (name, value) in headers {
        if !matches!(name.as_str(), "host" | "content-length" | "connection") {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(answer) => answer.status().as_u16(),
        Err(_) => 0,
    }
}
