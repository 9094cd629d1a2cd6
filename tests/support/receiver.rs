//! A real HTTP receiver for the tests: records every request (headers and
//! body), answers with a status the test can change at any time, and lets
//! tests wait for a number of events with a deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use tokio::sync::Notify;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the webhook body is JSON")
    }

    /// The events of the request: the body, or each of `{"events": [...]}`.
    pub fn events(&self) -> Vec<Value> {
        let body = self.json();
        match body.get("events").and_then(Value::as_array) {
            Some(events) => events.clone(),
            None => vec![body],
        }
    }
}

#[derive(Default)]
struct Inner {
    requests: Mutex<Vec<Received>>,
    /// Status to answer; 2xx means the events count as delivered.
    status: Mutex<u16>,
    changed: Notify,
}

/// A running receiver on 127.0.0.1.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
    pub base_url: String,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let inner = Arc::new(Inner {
            status: Mutex::new(200),
            ..Inner::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .fallback(axum::routing::any(record))
            .with_state(Arc::clone(&inner));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Receiver {
            inner,
            base_url: format!("http://{addr}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Answer every following request with `status`.
    pub fn respond_with(&self, status: u16) {
        *self.inner.status.lock().unwrap() = status;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Received> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// The events of every request answered 2xx, in arrival order.
    pub fn delivered(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|request| (200..300).contains(&request.status))
            .flat_map(Received::events)
            .collect()
    }

    /// Waits until at least `count` events were answered 2xx.
    pub async fn wait_for_delivered(&self, count: usize, deadline: Duration) -> Vec<Value> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.inner.changed.notified();
            let delivered = self.delivered();
            if delivered.len() >= count {
                return delivered;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                panic!(
                    "timed out after {deadline:?}: {} of {count} events delivered",
                    self.delivered().len()
                );
            }
        }
    }

    /// Waits until at least `count` requests arrived, whatever the answer.
    pub async fn wait_for_requests(&self, count: usize, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.inner.changed.notified();
            if self.requests().len() >= count {
                return;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                panic!(
                    "timed out after {deadline:?}: {} of {count} requests arrived",
                    self.requests().len()
                );
            }
        }
    }
}

async fn record(
    State(inner): State<Arc<Inner>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let status = *inner.status.lock().unwrap();
    let headers = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    inner.requests.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        headers,
        body,
        status,
    });
    inner.changed.notify_waiters();
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
