//! The lean way to a plain-HTTP receiver: kept-alive HTTP/1.1
//! connections of the endpoint's own, each driven in the task of the lane
//! that sends on it, with the request line, `Host` and fixed headers
//! prepared once. A lane takes the most recently used idle connection (or
//! opens one), sends one request and puts it back, so light traffic keeps
//! one or two connections open and a burst as many as lanes send at once.
//! One POST costs one write and one read with no connection task to hand
//! the request to, no pool machinery and no URL parsed again per request
//! (docs/benchmarks.md, "Where the per-row cost went").
//!
//! It covers `http://` receivers when no proxy is configured in the
//! environment; HTTPS and proxies go through the shared reqwest client
//! (`http`). It applies the destination policy to the addresses it
//! connects to, as that client's resolver does. It does not sign, judge
//! answers or retry (`http`, `policy`, `lane`).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{HOST, HeaderMap, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::http::{MAX_RESPONSE_BODY, kept_body_len, retry_after};
use crate::destination::DestinationPolicy;

/// Where a plain-HTTP endpoint's requests go.
#[derive(Debug)]
pub struct DirectTarget {
    /// The URL's host as resolved (no brackets around IPv6).
    host: String,
    port: u16,
    /// `Host`: the URL's authority.
    host_header: HeaderValue,
    /// The request target: path and query.
    path: Uri,
    policy: DestinationPolicy,
    /// Connections between requests, the most recently used last.
    idle: Mutex<Vec<Open>>,
}

/// The environment variables that give reqwest a proxy for plain HTTP.
const PROXY_VARIABLES: [&str; 4] = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"];

impl DirectTarget {
    /// The direct target of `url`, or `None` when its requests must go
    /// through the shared client: HTTPS, a proxy in the environment, or a
    /// URL with credentials.
    pub fn for_url(url: &reqwest::Url, policy: &DestinationPolicy) -> Option<DirectTarget> {
        if url.scheme() != "http" || !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let proxied = PROXY_VARIABLES
            .iter()
            .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()));
        if proxied {
            return None;
        }
        let host = url.host_str()?.trim_matches(['[', ']']).to_owned();
        let port = url.port_or_known_default()?;
        let authority = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str()?),
            None => url.host_str()?.to_owned(),
        };
        let host_header = HeaderValue::from_str(&authority).ok()?;
        let mut target = url.path().to_owned();
        if let Some(query) = url.query() {
            target.push('?');
            target.push_str(query);
        }
        let path = target.parse::<Uri>().ok()?;
        Some(DirectTarget {
            host,
            port,
            host_header,
            path,
            policy: policy.clone(),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends one POST on an idle connection (or a new one) within
    /// `timeout`, reading at most [`MAX_RESPONSE_BODY`] of the answer.
    pub async fn post(
        &self,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, DirectError> {
        // Not `now + timeout`: the config accepts durations that would
        // overflow the clock; a year is as long.
        let now = Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
        let reused = self.take_idle();
        let was_reused = reused.is_some();
        let mut open = match reused {
            Some(open) => open,
            None => self.connect(deadline).await?,
        };
        let answer = match open.round_trip(self.request(headers, body), deadline).await {
            // A kept-alive connection the receiver closed meanwhile, found
            // before the request was written: it goes once more on a new
            // one. A request written and then lost is an attempt that
            // failed, as through the shared client.
            Err(RoundTripError::Unsent(request, _)) if was_reused => {
                open = self.connect(deadline).await?;
                open.round_trip(*request, deadline).await
            }
            other => other,
        };
        match answer {
            Ok((answer, keep)) => {
                if keep {
                    open.last_used = Instant::now();
                    if let Ok(mut idle) = self.idle.lock() {
                        idle.push(open);
                    }
                }
                Ok(answer)
            }
            Err(error) => Err(error.into()),
        }
    }

    fn request(&self, mut headers: HeaderMap, body: Bytes) -> Request<Full<Bytes>> {
        // A `Host` the subscription configures (virtual hosts behind an
        // address) wins, as through the shared client.
        if !headers.contains_key(HOST) {
            headers.insert(HOST, self.host_header.clone());
        }
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.path.clone();
        *request.headers_mut() = headers;
        request
    }

    /// Resolves the host, keeps the addresses the destination policy
    /// permits, and connects to the first that answers, each address with
    /// its share of the time left (at least [`MIN_CONNECT_SHARE`]), so that
    /// one that drops packets does not use up the attempt.
    async fn connect(&self, deadline: Instant) -> Result<Open, DirectError> {
        let addresses: Vec<SocketAddr> = match self.host.parse::<IpAddr>() {
            Ok(address) => vec![SocketAddr::new(address, self.port)],
            Err(_) => {
                let lookup = tokio::net::lookup_host((self.host.as_str(), self.port));
                tokio::time::timeout_at(deadline, lookup)
                    .await
                    .map_err(|_| DirectError::TimedOut)?
                    .map_err(DirectError::Connect)?
                    .collect()
            }
        };
        let ips: Vec<IpAddr> = addresses.iter().map(SocketAddr::ip).collect();
        if let Some(refused) = self.policy.refuse_all(&self.host, &ips) {
            return Err(DirectError::Refused(refused.to_string()));
        }
        let permitted: Vec<SocketAddr> = addresses
            .into_iter()
            .filter(|address| self.policy.refuses(address.ip()).is_none())
            .collect();
        let mut last_error = None;
        for (index, address) in permitted.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            let share = (left / (permitted.len() - index) as u32).max(MIN_CONNECT_SHARE);
            let until = Instant::now() + share.min(left);
            match tokio::time::timeout_at(until, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => {
                    // Small requests go out at once, not after an ACK.
                    let _ = stream.set_nodelay(true);
                    let handshake = http1::handshake(TokioIo::new(stream));
                    let (sender, driver) = tokio::time::timeout_at(deadline, handshake)
                        .await
                        .map_err(|_| DirectError::TimedOut)?
                        .map_err(|error| DirectError::Request(error.to_string()))?;
                    return Ok(Open {
                        sender,
                        driver: Box::pin(driver),
                        ended: false,
                        last_used: Instant::now(),
                    });
                }
                Ok(Err(error)) => last_error = Some(DirectError::Connect(error)),
                Err(_) => last_error = Some(DirectError::TimedOut),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            DirectError::Connect(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} has no address", self.host),
            ))
        }))
    }
}

/// The least time one address gets to accept a connection when a host has
/// several (the rest of the attempt's time is shared out).
const MIN_CONNECT_SHARE: Duration = Duration::from_millis(300);

/// How long a kept connection may sit unused before it is closed rather
/// than used: a NAT or firewall may have forgotten it (the shared client's
/// pool does the same after 90 s).
const IDLE_LIMIT: Duration = Duration::from_secs(60);

impl DirectTarget {
    /// The most recently used idle connection that is still usable; the
    /// ones the receiver closed meanwhile, or that sat unused too long, are
    /// dropped on the way.
    fn take_idle(&self) -> Option<Open> {
        loop {
            let mut open = self.idle.lock().ok()?.pop()?;
            if open.is_usable() {
                return Some(open);
            }
        }
    }
}

type Driver = Connection<TokioIo<TcpStream>, Full<Bytes>>;

struct Open {
    sender: SendRequest<Full<Bytes>>,
    /// The connection's own future, polled while a request is out: it
    /// writes the request and reads the answer in the lane's task.
    driver: Pin<Box<Driver>>,
    /// The connection's future has completed: it must not be polled again.
    ended: bool,
    last_used: Instant,
}

/// What a receiver answered.
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    /// The start of the body of an answer other than 2xx.
    pub body: Option<Box<str>>,
}

enum RoundTripError {
    /// The connection failed before the request was written: here it is
    /// back.
    Unsent(Box<Request<Full<Bytes>>>, String),
    /// Failed before any answer arrived.
    BeforeAnswer(String),
    /// No answer within the attempt's time.
    TimedOut,
    /// The answer's body broke off (its status is known).
    Body { status: u16, retry_after: Option<Duration>, error: String },
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Open")
            .field("ended", &self.ended)
            .field("last_used", &self.last_used)
            .finish_non_exhaustive()
    }
}

impl Open {
    /// Whether the connection may carry a request: open, not closed by the
    /// receiver while idle, and not idle too long.
    fn is_usable(&mut self) -> bool {
        if self.ended || self.last_used.elapsed() > IDLE_LIMIT {
            return false;
        }
        // Lets the connection notice a close that arrived while it was idle.
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        if self.driver.as_mut().poll(&mut context).is_ready() {
            self.ended = true;
            return false;
        }
        !self.sender.is_closed()
    }

    /// Sends `request` and reads the answer; `true` when the connection may
    /// carry the next request.
    async fn round_trip(
        &mut self,
        request: Request<Full<Bytes>>,
        deadline: Instant,
    ) -> Result<(Answer, bool), RoundTripError> {
        let Open {
            sender,
            driver,
            ended,
            ..
        } = self;
        // One timer for the whole exchange, armed once.
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        let ready = std::future::poll_fn(|cx| sender.poll_ready(cx));
        match drive(driver, ended, timer.as_mut(), ready).await {
            Driven::TimedOut => return Err(RoundTripError::TimedOut),
            Driven::Done(Ok(())) => {}
            Driven::Done(Err(error)) => {
                return Err(RoundTripError::Unsent(Box::new(request), error.to_string()));
            }
            Driven::Closed => {
                return Err(RoundTripError::Unsent(
                    Box::new(request),
                    "connection closed".to_owned(),
                ));
            }
        }
        let sent = sender.try_send_request(request);
        let response = match drive(driver, ended, timer.as_mut(), sent).await {
            Driven::TimedOut => return Err(RoundTripError::TimedOut),
            Driven::Done(Ok(response)) => response,
            Driven::Done(Err(mut error)) => {
                let why = error.error().to_string();
                return Err(match error.take_message() {
                    Some(request) => RoundTripError::Unsent(Box::new(request), why),
                    None => RoundTripError::BeforeAnswer(why),
                });
            }
            Driven::Closed => {
                return Err(RoundTripError::BeforeAnswer("connection closed".to_owned()));
            }
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let keep = kept_body_len(status);
        let mut kept = Vec::new();
        let answer = |kept: Vec<u8>| Answer {
            status,
            retry_after,
            body: (!kept.is_empty()).then(|| String::from_utf8_lossy(&kept).into()),
        };
        let mut body = response.into_body();
        let mut read = 0usize;
        loop {
            let frame = match drive(driver, ended, timer.as_mut(), body.frame()).await {
                Driven::Done(frame) => Some(frame),
                Driven::Closed => None,
                // The status came; its body did not in time.
                Driven::TimedOut => {
                    return Err(RoundTripError::Body {
                        status,
                        retry_after,
                        error: "timed out reading the answer's body".to_owned(),
                    });
                }
            };
            match frame {
                Some(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        read += data.len();
                        let room = keep.saturating_sub(kept.len());
                        kept.extend_from_slice(&data[..room.min(data.len())]);
                        if read > MAX_RESPONSE_BODY {
                            // Not read to its end: the connection goes.
                            return Ok((answer(kept), false));
                        }
                    }
                }
                Some(None) => break,
                Some(Some(Err(error))) => {
                    return Err(RoundTripError::Body {
                        status,
                        retry_after,
                        error: error.to_string(),
                    });
                }
                None => break,
            }
        }
        Ok((answer(kept), !*ended && !sender.is_closed()))
    }
}

/// What [`drive`] came to.
enum Driven<T> {
    Done(T),
    /// The connection ended first.
    Closed,
    /// The exchange's time ran out first.
    TimedOut,
}

/// Polls `future` while driving the connection (in this task) and watching
/// `timer`. The future is polled again right after the connection: what the
/// connection just read (the answer) completes it in the same poll instead
/// of after another trip through the scheduler.
async fn drive<F: Future>(
    driver: &mut Pin<Box<Driver>>,
    ended: &mut bool,
    mut timer: Pin<&mut tokio::time::Sleep>,
    future: F,
) -> Driven<F::Output> {
    use std::task::Poll;
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Driven::Done(output));
        }
        if *ended {
            return Poll::Ready(Driven::Closed);
        }
        let connection_ended = driver.as_mut().poll(cx).is_ready();
        if connection_ended {
            *ended = true;
        }
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Driven::Done(output));
        }
        if connection_ended {
            return Poll::Ready(Driven::Closed);
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Driven::TimedOut);
        }
        Poll::Pending
    })
    .await
}

/// Why a direct request got no usable answer.
#[derive(Debug)]
pub enum DirectError {
    TimedOut,
    Connect(std::io::Error),
    Refused(String),
    Request(String),
    /// The body broke off after a status.
    Body { status: u16, retry_after: Option<Duration>, error: String },
}

impl From<RoundTripError> for DirectError {
    fn from(error: RoundTripError) -> DirectError {
        match error {
            RoundTripError::Unsent(_, error) | RoundTripError::BeforeAnswer(error) => {
                DirectError::Request(error)
            }
            RoundTripError::TimedOut => DirectError::TimedOut,
            RoundTripError::Body {
                status,
                retry_after,
                error,
            } => DirectError::Body {
                status,
                retry_after,
                error,
            },
        }
    }
}

impl DirectError {
    /// The sentence for the logs and `last_error`, in the shared client's
    /// words.
    pub fn describe(&self) -> String {
        match self {
            DirectError::TimedOut => "timed out".to_owned(),
            DirectError::Connect(error) => format!("could not connect: {error}"),
            DirectError::Refused(refused) => format!("could not connect: {refused}"),
            DirectError::Request(error) => format!("request failed: {error}"),
            DirectError::Body { error, .. } => format!("response broke off: {error}"),
        }
    }
}
