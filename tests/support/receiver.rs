//! A real HTTP receiver for the tests: records every request (headers,
//! body, when it arrived), answers with a status the test can change at any
//! time (optionally after a delay, to hang past walhook's timeout), or with
//! scripted answers (status and headers) for the next requests, holds
//! requests (all, or those whose events match) until the test releases them,
//! answers chosen requests (those whose events match) with a status of their
//! own, and lets tests wait for a number of events with a deadline.
//! [`ResettingListener`] is the endpoint that accepts connections and resets
//! them; [`RefusingPort`] the one that refuses them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header::LOCATION};
use serde_json::Value;
use tokio::sync::Notify;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
    pub status: u16,
    /// When the request arrived (before any hold or delay).
    pub arrived_at: Instant,
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

    /// Whether `webhook-signature` holds the Standard Webhooks signature of
    /// this request: `v1,` + base64(HMAC-SHA256(key, "{webhook-id}.
    /// {webhook-timestamp}.{body}")), key = the base64 after `whsec_`.
    /// Computed here from the specification, not with walhook's signer.
    pub fn signature_verifies(&self, secret: &str) -> bool {
        use base64::Engine as _;
        use base64::engine::general_purpose::STANDARD;
        use hmac::{Hmac, Mac};
        let key = STANDARD
            .decode(secret.trim_start_matches("whsec_"))
            .expect("a whsec_ secret");
        let (Some(id), Some(timestamp), Some(signatures)) = (
            self.headers.get("webhook-id"),
            self.headers.get("webhook-timestamp"),
            self.headers.get("webhook-signature"),
        ) else {
            return false;
        };
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(&self.body);
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        // The header may list several, space-separated.
        signatures.split(' ').any(|signature| signature == expected)
    }
}

#[derive(Default)]
struct Inner {
    requests: Mutex<Vec<Received>>,
    /// Status to answer; 2xx means the events count as delivered.
    status: Mutex<u16>,
    /// The body of every answer (empty unless set).
    answer_body: Mutex<Bytes>,
    /// How long to wait before answering (and recording) a request. A
    /// request whose client gives up first is never recorded.
    delay: Mutex<Duration>,
    /// Requests that arrived, answered or not.
    arrivals: AtomicUsize,
    /// The body of every request that arrived, answered or not, in arrival
    /// order (sharing the buffers of `requests`).
    arrived_bodies: Mutex<Vec<Bytes>>,
    /// Answers for the next requests, first come first served, before
    /// `status` applies again.
    script: Mutex<std::collections::VecDeque<Reply>>,
    /// Events of requests answered 2xx (counted once per request, so large
    /// tests need not re-parse every body).
    delivered_events: AtomicUsize,
    /// A further random wait of up to this before answering each request.
    max_random_delay: Mutex<Duration>,
    /// Each distinct body is answered 503 this many times before `status`.
    fail_first: Mutex<u32>,
    attempts_by_body: Mutex<HashMap<Bytes, u32>>,
    changed: Notify,
    /// While set, requests with an event it matches wait (arrived, not
    /// answered) until released.
    hold: Mutex<Option<HoldRule>>,
    released: Notify,
    /// Statuses for the requests with an event a rule matches (the first
    /// matching rule wins), before `status` applies.
    answer_rules: Mutex<Vec<(u16, HoldRule)>>,
}

type HoldRule = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// A scripted answer: a status, headers and a body.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: &str) -> Reply {
        self.body = body.to_owned();
        self
    }
}

/// A running receiver on 127.0.0.1.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
    pub base_url: String,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// A receiver on a given address (e.g. one a [`ResettingListener`] held).
    pub async fn start_on(addr: SocketAddr) -> Receiver {
        let inner = Arc::new(Inner {
            status: Mutex::new(200),
            ..Inner::default()
        });
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let router = router(Arc::clone(&inner));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Receiver {
            inner,
            base_url: format!("http://{addr}"),
        }
    }

    /// An HTTPS receiver on 127.0.0.1 serving `tls` (its certificate, and
    /// whether it asks for a client's); its URLs name the host `localhost`.
    /// A connection whose handshake fails is dropped, unrecorded.
    pub async fn start_https(tls: rustls::ServerConfig) -> Receiver {
        let inner = Arc::new(Inner {
            status: Mutex::new(200),
            ..Inner::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let router = router(Arc::clone(&inner));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            inner,
            base_url: format!("https://localhost:{port}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Answer every following request with `status`.
    pub fn respond_with(&self, status: u16) {
        *self.inner.status.lock().unwrap() = status;
    }

    /// Answer every following request with this body (and the status set).
    pub fn respond_with_body(&self, body: impl Into<Bytes>) {
        *self.inner.answer_body.lock().unwrap() = body.into();
    }

    /// Wait `delay` before answering each following request; a delay past
    /// walhook's `delivery.timeout` is a receiver that hangs.
    pub fn delay_responses(&self, delay: Duration) {
        *self.inner.delay.lock().unwrap() = delay;
    }

    /// Also wait a random time between 0 and `max` before answering (and
    /// recording) each request.
    pub fn delay_responses_randomly(&self, max: Duration) {
        *self.inner.max_random_delay.lock().unwrap() = max;
    }

    /// Answer the first `attempts` requests carrying each distinct body with
    /// 503 (then the configured status), so every request is retried.
    pub fn fail_first_attempts(&self, attempts: u32) {
        *self.inner.fail_first.lock().unwrap() = attempts;
    }

    /// Answers the next requests with `replies`, one each in arrival order,
    /// then with the configured status again.
    pub fn answer_next(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.script.lock().unwrap().extend(replies);
    }

    /// Holds every request that arrives from now on (it counts as arrived,
    /// is neither answered nor recorded) until [`Receiver::release`].
    pub fn hold(&self) {
        self.hold_where(|_| true);
    }

    /// Holds the requests that carry an event `matches` (one of a batch is
    /// enough), from now on until [`Receiver::release`]; the others are
    /// answered as usual. A held request has arrived: it is in
    /// [`Receiver::arrived_events`].
    pub fn hold_where(&self, matches: impl Fn(&Value) -> bool + Send + Sync + 'static) {
        *self.inner.hold.lock().unwrap() = Some(Arc::new(matches));
    }

    /// Answers `status` to every following request that carries an event
    /// `matches` (one of a batch is enough) — e.g. 422 to the one event a
    /// receiver cannot take — while the others get the configured status.
    /// Rules added earlier win; scripted answers ([`Receiver::answer_next`])
    /// still come first.
    pub fn respond_where(
        &self,
        status: u16,
        matches: impl Fn(&Value) -> bool + Send + Sync + 'static,
    ) {
        self.inner
            .answer_rules
            .lock()
            .unwrap()
            .push((status, Arc::new(matches)));
    }

    /// Lets held requests (and later ones) be answered.
    pub fn release(&self) {
        *self.inner.hold.lock().unwrap() = None;
        self.inner.released.notify_waiters();
    }

    /// The events of every request that arrived so far, answered (whatever
    /// the answer), held or still waiting, in arrival order.
    pub fn arrived_events(&self) -> Vec<Value> {
        let bodies = self.inner.arrived_bodies.lock().unwrap().clone();
        bodies.iter().flat_map(|body| events_of(body)).collect()
    }

    /// The events of each request that arrived so far (answered, held or
    /// still waiting), one list per request, in arrival order.
    pub fn arrived_requests(&self) -> Vec<Vec<Value>> {
        let bodies = self.inner.arrived_bodies.lock().unwrap().clone();
        bodies.iter().map(|body| events_of(body)).collect()
    }

    /// Waits until an event that `matches` has arrived (answered or not).
    pub async fn wait_for_arrival_of(
        &self,
        what: &str,
        deadline: Duration,
        matches: impl Fn(&Value) -> bool,
    ) {
        self.wait_for(what, 1, deadline, |receiver| {
            receiver
                .arrived_events()
                .iter()
                .filter(|event| matches(event))
                .count()
        })
        .await;
    }

    /// Requests that arrived so far, answered or not.
    pub fn arrivals(&self) -> usize {
        self.inner.arrivals.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` requests arrived, answered or not.
    pub async fn wait_for_arrivals(&self, count: usize, deadline: Duration) {
        self.wait_for("requests arrived", count, deadline, Self::arrivals)
            .await;
    }

    /// Waits until `measure` reaches `count`, waking on every request.
    pub async fn wait_for(
        &self,
        what: &str,
        count: usize,
        deadline: Duration,
        measure: impl Fn(&Self) -> usize,
    ) {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.inner.changed.notified();
            if measure(self) >= count {
                return;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                panic!(
                    "timed out after {deadline:?}: {} of {count} {what}",
                    measure(self)
                );
            }
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Received> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// The events of every request answered 2xx, in arrival order.
    pub fn delivered(&self) -> Vec<Value> {
        self.delivered_where(|_| true)
    }

    /// The events of every request to `path` answered 2xx, in arrival order.
    pub fn delivered_to(&self, path: &str) -> Vec<Value> {
        self.delivered_where(|request| request.path == path)
    }

    fn delivered_where(&self, keep: impl Fn(&Received) -> bool) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|request| (200..300).contains(&request.status) && keep(request))
            .flat_map(Received::events)
            .collect()
    }

    /// Waits until at least `count` events were answered 2xx.
    pub async fn wait_for_delivered(&self, count: usize, deadline: Duration) -> Vec<Value> {
        self.wait_for_delivered_count(count, deadline).await;
        self.delivered()
    }

    /// How many events were answered 2xx so far (duplicates included).
    pub fn delivered_count(&self) -> usize {
        self.inner.delivered_events.load(Ordering::SeqCst)
    }

    /// Like [`Receiver::wait_for_delivered`] without collecting the events.
    pub async fn wait_for_delivered_count(&self, count: usize, deadline: Duration) {
        self.wait_for("events delivered", count, deadline, Self::delivered_count)
            .await;
    }

    /// Waits until at least `count` requests were answered, whatever the
    /// answer.
    pub async fn wait_for_requests(&self, count: usize, deadline: Duration) {
        self.wait_for("requests answered", count, deadline, |receiver| {
            receiver.inner.requests.lock().unwrap().len()
        })
        .await;
    }
}

fn router(inner: Arc<Inner>) -> axum::Router {
    axum::Router::new()
        .fallback(axum::routing::any(record))
        // Tests send rows larger than axum's 2 MB default.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(inner)
}

async fn record(
    State(inner): State<Arc<Inner>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, Bytes) {
    let arrived_at = Instant::now();
    inner.arrived_bodies.lock().unwrap().push(body.clone());
    inner.arrivals.fetch_add(1, Ordering::SeqCst);
    inner.changed.notify_waiters();
    loop {
        let released = inner.released.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        let hold = inner.hold.lock().unwrap().clone();
        // Parsed only while a rule holds requests: large tests send many.
        if !hold.is_some_and(|matches| events_of(&body).iter().any(|event| matches(event))) {
            break;
        }
        released.await;
    }
    let mut delay = *inner.delay.lock().unwrap();
    let max_random_delay = *inner.max_random_delay.lock().unwrap();
    if !max_random_delay.is_zero() {
        delay += Duration::from_micros(fastrand::u64(0..=max_random_delay.as_micros() as u64));
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let scripted = inner.script.lock().unwrap().pop_front();
    let mut status = match &scripted {
        Some(reply) => reply.status,
        None => rule_status(&inner, &body).unwrap_or(*inner.status.lock().unwrap()),
    };
    let fail_first = *inner.fail_first.lock().unwrap();
    if fail_first > 0 {
        let mut attempts = inner.attempts_by_body.lock().unwrap();
        let seen = attempts.entry(body.clone()).or_insert(0);
        if *seen < fail_first {
            *seen += 1;
            status = 503;
        }
    }
    // Counted once per request (large tests need not re-parse every body),
    // and only after the request is recorded, so a waiter that sees the
    // count also sees the request.
    let delivered_events = (200..300).contains(&status).then(|| {
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|body| body.get("events").and_then(Value::as_array).map(Vec::len))
            .unwrap_or(1)
    });
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
        arrived_at,
    });
    if let Some(events) = delivered_events {
        inner.delivered_events.fetch_add(events, Ordering::SeqCst);
    }
    inner.changed.notify_waiters();
    let mut answer = HeaderMap::new();
    if (300..400).contains(&status) {
        // Somewhere a client that follows redirects would go.
        answer.insert(LOCATION, HeaderValue::from_static("/redirected"));
    }
    for (name, value) in scripted.iter().flat_map(|reply| &reply.headers) {
        answer.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        answer,
        match scripted {
            Some(reply) => Bytes::from(reply.body),
            None => inner.answer_body.lock().unwrap().clone(),
        },
    )
}

/// The status of the first answer rule one of the body's events matches.
fn rule_status(inner: &Inner, body: &[u8]) -> Option<u16> {
    let rules = inner.answer_rules.lock().unwrap().clone();
    // Parsed only while there are rules: large tests send many.
    if rules.is_empty() {
        return None;
    }
    let events = events_of(body);
    rules
        .iter()
        .find(|(_, matches)| events.iter().any(|event| matches(event)))
        .map(|(status, _)| *status)
}

/// The events of a body: itself, or each of `{"events": [...]}`; none when
/// it is not JSON.
fn events_of(body: &[u8]) -> Vec<Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut object)) => match object.remove("events") {
            Some(Value::Array(events)) => events,
            Some(other) => {
                object.insert("events".into(), other);
                vec![Value::Object(object)]
            }
            None => vec![Value::Object(object)],
        },
        Ok(other) => vec![other],
        Err(_) => Vec::new(),
    }
}

/// An endpoint that accepts every connection and resets it at once (RST,
/// no HTTP answer). Dropping it frees the port for a [`Receiver`].
pub struct ResettingListener {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ResettingListener {
    pub async fn start() -> ResettingListener {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_zero_linger();
                drop(stream);
            }
        });
        ResettingListener {
            addr,
            accepted,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connections accepted (and reset) so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops listening and frees the port.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A port of 127.0.0.1 where nothing listens: the socket is bound (so no one
/// else takes the port) but never listens, so every connection is refused at
/// once. [`RefusingPort::open`] starts a [`Receiver`] there: the endpoint
/// comes back on the same URL.
pub struct RefusingPort {
    pub addr: SocketAddr,
    socket: tokio::net::TcpSocket,
}

impl RefusingPort {
    pub fn bind() -> RefusingPort {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        RefusingPort { addr, socket }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Frees the port and starts a receiver on it.
    pub async fn open(self) -> Receiver {
        let addr = self.addr;
        drop(self.socket);
        Receiver::start_on(addr).await
    }
}
