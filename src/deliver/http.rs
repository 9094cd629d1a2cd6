//! One subscription's endpoint: the request walhook sends (URL, headers,
//! Standard Webhooks signature), the HTTP client it goes through, and what
//! came back.
//!
//! It sends exactly one request per call and judges nothing beyond turning
//! the response into an [`Attempt`]; `policy` says what that means. Clients
//! are shared: one for the delivery-wide TLS settings, and one more for each
//! distinct per-subscription `ca_file` / client certificate ([`Clients`]).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT};
use sha2::{Digest, Sha256};

use super::Outbound;
use super::direct::{DirectError, DirectTarget};
use super::policy::{self, Verdict};
use super::resolve::PolicyResolver;
use super::transport_error;
use crate::config::{DeliveryConfig, ReceiverTls, SubscriptionConfig};
use crate::destination::DestinationPolicy;
use crate::seal::{RowSeal, SEAL_BYTES};
use crate::webhook::{self, SigningKey};

/// The endpoint could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("subscription {subscription}: {what}")]
    Invalid { subscription: String, what: String },
    #[error("cannot build the HTTP client{tls}: {source}")]
    Client {
        /// Which TLS files it was built with, if any.
        tls: String,
        #[source]
        source: reqwest::Error,
    },
}

/// The HTTP clients of one delivery: built on demand, one per distinct TLS
/// setting, all with the same pool, timeouts, redirect policy, user agent
/// and destination policy. Subscriptions that use the delivery-wide TLS
/// settings share one client (and its connection pool).
pub struct Clients {
    config: DeliveryConfig,
    policy: DestinationPolicy,
    built: Vec<(ReceiverTls, reqwest::Client)>,
}

impl Clients {
    pub fn new(config: &DeliveryConfig) -> Clients {
        Clients {
            config: config.clone(),
            policy: config.destination_policy(),
            built: Vec::new(),
        }
    }

    /// The client for `tls`, built the first time it is asked for.
    pub fn client(&mut self, tls: &ReceiverTls) -> Result<reqwest::Client, EndpointError> {
        if let Some((_, client)) = self.built.iter().find(|(built, _)| built == tls) {
            return Ok(client.clone());
        }
        let client = build_client(&self.config, &self.policy, tls)?;
        self.built.push((tls.clone(), client.clone()));
        Ok(client)
    }

    /// `delivery.deny_private` and `delivery.allow`.
    pub fn policy(&self) -> &DestinationPolicy {
        &self.policy
    }
}

/// One HTTP client: keep-alive pool as large as the in-flight bound, no
/// redirects, rustls with the system roots plus `tls`'s CA certificates and
/// its client certificate, and, with `deny_private`, a resolver that drops
/// refused addresses.
fn build_client(
    config: &DeliveryConfig,
    policy: &DestinationPolicy,
    tls: &ReceiverTls,
) -> Result<reqwest::Client, EndpointError> {
    // reqwest panics without a process-wide TLS provider; `main` installs
    // one, but walhook used as a library (tests, embedders) may not have.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let failed = |source: reqwest::Error| EndpointError::Client {
        tls: describe_tls_files(tls),
        source,
    };
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("walhook/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(config.concurrency.clamp(1, crate::config::MAX_CONCURRENCY))
        .connect_timeout(config.timeout)
        .tcp_nodelay(true);
    if let Some(ca) = &tls.ca {
        // Added to the system roots, not instead of them.
        let certificates = ca
            .certificates
            .iter()
            .map(|certificate| reqwest::Certificate::from_der(certificate))
            .collect::<Result<Vec<_>, _>>()
            .map_err(failed)?;
        builder = builder.tls_certs_merge(certificates);
    }
    if let Some(identity) = &tls.identity {
        builder = builder.identity(reqwest::Identity::from_pem(identity.pem()).map_err(failed)?);
    }
    if policy.is_active() {
        builder = builder.dns_resolver(PolicyResolver::new(policy.clone()));
    }
    builder.build().map_err(failed)
}

fn describe_tls_files(tls: &ReceiverTls) -> String {
    let mut files = Vec::new();
    if let Some(ca) = &tls.ca {
        files.push(format!("ca_file {}", ca.path.display()));
    }
    if let Some(identity) = &tls.identity {
        files.push(format!(
            "client_cert {} and client_key {}",
            identity.cert_path.display(),
            identity.key_path.display()
        ));
    }
    if files.is_empty() {
        String::new()
    } else {
        format!(" with {}", files.join(", "))
    }
}

/// The seal key of a subscription's rows: from its signing secret, or else
/// from its header values (the credentials its receiver checks), so that it
/// changes when they do (docs/security.md).
fn row_seals(subscription: &SubscriptionConfig) -> Vec<RowSeal> {
    if let Some(key) = &subscription.signing_key {
        // The newest key seals; rows sealed under the older ones, while a
        // key rolls, still verify.
        return std::iter::once(key)
            .chain(&subscription.previous_keys)
            .filter_map(|key| RowSeal::derive([key.key_bytes()]))
            .collect();
    }
    let mut headers: Vec<(&str, &[u8])> = subscription
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    headers.sort();
    RowSeal::derive(
        headers
            .into_iter()
            .flat_map(|(name, value)| [name.as_bytes(), value]),
    )
    .into_iter()
    .collect()
}

/// Where and how one subscription's requests go.
#[derive(Debug)]
pub struct Endpoint {
    pub name: String,
    url: reqwest::Url,
    /// The URL's host, the one part of it errors may show.
    host: String,
    headers: HeaderMap,
    /// The newest key first; a request carries one signature per key.
    keys: Vec<SigningKey>,
    /// The newest first: it seals; any verifies.
    seals: Vec<RowSeal>,
    batched: bool,
    client: reqwest::Client,
    /// Whether the client presents a certificate (for error messages).
    client_certificate: bool,
    /// Set when the URL's host is an IP address the destination policy
    /// refuses: every attempt fails with it. (The client resolves no
    /// literal address, so its resolver cannot refuse it.)
    refused: Option<String>,
    /// Set for a plain-HTTP URL without a proxy: requests go on the
    /// endpoint's own connections instead of the client's pool.
    direct: Option<DirectTarget>,
}

impl Endpoint {
    /// The endpoint of `subscription`, with the client for its TLS settings.
    pub fn new(
        subscription: &SubscriptionConfig,
        clients: &mut Clients,
    ) -> Result<Endpoint, EndpointError> {
        let invalid = |what: String| EndpointError::Invalid {
            subscription: subscription.name.clone(),
            what,
        };
        let url = reqwest::Url::parse(subscription.url.expose())
            .map_err(|error| invalid(format!("url is not valid: {error}")))?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("walhook/", env!("CARGO_PKG_VERSION"))),
        );
        // Parsed (and marked sensitive) when the config was loaded.
        for (name, value) in &subscription.headers {
            headers.insert(name.clone(), value.clone());
        }
        let keys: Vec<SigningKey> = subscription
            .signing_key
            .iter()
            .chain(&subscription.previous_keys)
            .cloned()
            .collect();
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_owned();
        let refused = host.parse::<IpAddr>().ok().and_then(|address| {
            clients
                .policy()
                .refuse_all(&host, &[address])
                .map(|refused| format!("could not connect: {refused}"))
        });
        let direct = DirectTarget::for_url(&url, clients.policy());
        Ok(Endpoint {
            name: subscription.name.clone(),
            url,
            host,
            headers,
            seals: row_seals(subscription),
            keys,
            batched: subscription.batch.max_events > 1,
            client: clients.client(&subscription.tls)?,
            client_certificate: subscription.tls.identity.is_some(),
            refused,
            direct,
        })
    }

    /// The key that seals this subscription's stored rows; `None` when it has
    /// no secret to derive one from.
    pub fn row_seals(&self) -> &[RowSeal] {
        &self.seals
    }

    /// The seal of one of this subscription's rows, if it has a seal key.
    pub fn seal(&self, event_id: &str, payload: &[u8]) -> Option<[u8; SEAL_BYTES]> {
        self.seals
            .first()
            .map(|seal| seal.seal(&self.name, event_id, payload))
    }

    /// Whether a stored row's seal is this subscription's (under any of its
    /// keys); false for a subscription without seals.
    pub fn seal_matches(&self, event_id: &str, payload: &[u8], stored: Option<&[u8]>) -> bool {
        self.seals
            .iter()
            .any(|seal| seal.verify(&self.name, event_id, payload, stored))
    }

    fn describe(&self, error: &reqwest::Error) -> String {
        transport_error::describe(error, &self.host, self.client_certificate)
    }

    /// Whether requests carry `{"events": [...]}` rather than one event.
    pub fn batched(&self) -> bool {
        self.batched
    }

    /// Sends one request and reports what happened. A plain-HTTP endpoint
    /// sends it on one of its own kept-alive connections (`direct`); the
    /// others through the shared client's pool.
    pub async fn send(&self, request: &RequestBody, timeout: Duration) -> Attempt {
        if let Some(refused) = &self.refused {
            return Attempt::Transport(refused.clone());
        }
        let mut headers = self.headers.clone();
        self.add_webhook_headers(&mut headers, request);
        if let Some(direct) = &self.direct {
            return match direct
                .post(headers, request.body.clone(), timeout)
                .await
            {
                Ok(answer) => Attempt::Status {
                    status: answer.status,
                    retry_after: answer.retry_after,
                    body: answer.body,
                },
                // A 2xx whose body broke off still said 2xx.
                Err(DirectError::Body {
                    status,
                    retry_after,
                    ..
                }) if (200..300).contains(&status) => Attempt::Status {
                    status,
                    retry_after,
                    body: None,
                },
                Err(error) => Attempt::Transport(error.describe()),
            };
        }
        let builder = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .timeout(timeout)
            .body(request.body.clone());
        match builder.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = retry_after(response.headers());
                match read_body(response, kept_body_len(status)).await {
                    Ok(kept) => Attempt::Status {
                        status,
                        retry_after,
                        body: kept,
                    },
                    // A 2xx whose body broke off still said 2xx: the receiver
                    // accepted it before answering.
                    Err(_) if (200..300).contains(&status) => Attempt::Status {
                        status,
                        retry_after,
                        body: None,
                    },
                    Err(error) => Attempt::Transport(self.describe(&error)),
                }
            }
            Err(error) => Attempt::Transport(self.describe(&error)),
        }
    }

    /// `webhook-id`, and with signing keys `webhook-timestamp` and
    /// `webhook-signature`.
    fn add_webhook_headers(&self, headers: &mut HeaderMap, request: &RequestBody) {
        let id = HeaderValue::from_str(&request.id);
        if let Ok(id) = id {
            headers.insert(webhook::ID_HEADER, id);
        }
        if !self.keys.is_empty() {
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_secs() as i64)
                .unwrap_or(0);
            // One `v1,` signature per key, space-separated, newest first: a
            // receiver that knows any of them accepts the request. Appended
            // to the first: one string per request, as with a single key.
            let mut keys = self.keys.iter();
            let mut signatures = keys
                .next()
                .map(|key| key.sign(&request.id, timestamp, &request.body))
                .unwrap_or_default();
            for key in keys {
                signatures.push(' ');
                signatures.push_str(&key.sign(&request.id, timestamp, &request.body));
            }
            headers.insert(webhook::TIMESTAMP_HEADER, HeaderValue::from(timestamp));
            if let Ok(signatures) = HeaderValue::from_str(&signatures) {
                headers.insert(webhook::SIGNATURE_HEADER, signatures);
            }
        }
    }

    /// The request of `request` through the shared client: URL, headers,
    /// body, and the Standard Webhooks headers signed now.
    fn request(&self, request: &RequestBody, timeout: Duration) -> reqwest::RequestBuilder {
        let mut headers = self.headers.clone();
        self.add_webhook_headers(&mut headers, request);
        self.client
            .post(self.url.clone())
            .headers(headers)
            .timeout(timeout)
            .body(request.body.clone())
    }

    /// Sends one request with the same headers and signature as
    /// [`send`](Self::send) (through the shared client, whatever the
    /// scheme: a one-off needs no kept connection) and keeps
    /// what a person checking an endpoint wants to see (`walhook
    /// send-test`): the headers sent, the answer's status, headers and
    /// first `body_limit` bytes, and the round-trip time.
    pub async fn exchange(
        &self,
        request: &RequestBody,
        timeout: Duration,
        body_limit: usize,
    ) -> Exchange {
        let started = std::time::Instant::now();
        let built = self.request(request, timeout).build();
        let headers = built
            .as_ref()
            .map(|built| built.headers().clone())
            .unwrap_or_default();
        let answer = match (&self.refused, built) {
            (Some(refused), _) => Err(refused.clone()),
            (None, Err(error)) => Err(self.describe(&error)),
            (None, Ok(built)) => match self.client.execute(built).await {
                Err(error) => Err(self.describe(&error)),
                Ok(mut response) => {
                    let status = response.status();
                    let response_headers = response.headers().clone();
                    let mut body = Vec::new();
                    let mut truncated = false;
                    loop {
                        match response.chunk().await {
                            Ok(Some(chunk)) => {
                                let room = body_limit.saturating_sub(body.len());
                                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                                if chunk.len() > room {
                                    truncated = true;
                                    break;
                                }
                            }
                            Ok(None) => break,
                            // The status was answered; the body broke off.
                            Err(_) => {
                                truncated = true;
                                break;
                            }
                        }
                    }
                    Ok(Answer {
                        status: status.as_u16(),
                        reason: status.canonical_reason(),
                        headers: response_headers,
                        body,
                        truncated,
                    })
                }
            },
        };
        Exchange {
            url: self.url.clone(),
            headers,
            answer,
            elapsed: started.elapsed(),
        }
    }
}

/// One request sent by [`Endpoint::exchange`] and what came back.
#[derive(Debug)]
pub struct Exchange {
    /// As configured: it may hold credentials.
    pub url: reqwest::Url,
    /// The headers the request carried (the connection's own `host` and
    /// `content-length` aside); configured values are marked sensitive.
    pub headers: HeaderMap,
    /// The answer, or why there was none.
    pub answer: Result<Answer, String>,
    pub elapsed: Duration,
}

/// An HTTP answer as [`Endpoint::exchange`] keeps it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub reason: Option<&'static str>,
    pub headers: HeaderMap,
    /// The first bytes of the body.
    pub body: Vec<u8>,
    /// The body was longer (or broke off).
    pub truncated: bool,
}

/// The most of a response body walhook reads. The status says what
/// happened; the body is read so that the connection can be used again
/// (and a failure's start kept, [`KEPT_RESPONSE_BODY`]), and a receiver
/// must not make walhook hold gigabytes (docs/security.md).
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// How much of a failed answer's body is kept (as text, for the dead
/// letter it may become): enough for a receiver's error message, never a
/// receiver's whole page.
pub const KEPT_RESPONSE_BODY: usize = 4 * 1024;

/// How much of an answer's body with `status` is kept: none of a 2xx's,
/// which says nothing walhook keeps; the start of a failure's, for its dead
/// letter (`dead-letters show`).
pub fn kept_body_len(status: u16) -> usize {
    if (200..300).contains(&status) {
        0
    } else {
        KEPT_RESPONSE_BODY
    }
}

/// An answer's `Retry-After`, when it is one walhook understands.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(policy::parse_retry_after)
}

/// Reads a response body up to [`MAX_RESPONSE_BODY`], keeping its first
/// `keep` bytes as text (invalid UTF-8 replaced; `None` when empty or
/// `keep` is 0); the rest is dropped as it arrives. A longer body is left
/// unread and its connection closed instead of pooled.
async fn read_body(
    mut response: reqwest::Response,
    keep: usize,
) -> Result<Option<Box<str>>, reqwest::Error> {
    let mut read = 0usize;
    let mut kept = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        read += chunk.len();
        let room = keep.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..room.min(chunk.len())]);
        if read > MAX_RESPONSE_BODY {
            // Dropping a response with body left closes its connection.
            break;
        }
    }
    Ok((!kept.is_empty()).then(|| String::from_utf8_lossy(&kept).into()))
}

/// The body and webhook id of one request.
#[derive(Debug)]
pub struct RequestBody {
    pub id: String,
    pub body: Bytes,
}

impl RequestBody {
    /// One event's payload for a subscription that does not batch, else
    /// `{"events": [...]}` with the id [`RequestBody::batch`] gives it.
    pub fn for_events(events: &[Outbound], batched: bool) -> RequestBody {
        match events {
            [single] if !batched => RequestBody {
                id: single.id.to_string(),
                body: single.body.clone(),
            },
            _ => RequestBody::batch(
                events
                    .iter()
                    .map(|event| (event.id.as_str(), &event.body[..])),
            ),
        }
    }

    /// `{"events": [...]}` of (id, payload) pairs. A batch of one carries its
    /// event's own id, so that one event has one `webhook-id` however it
    /// travels (alone in a live batch, or replayed from the dead letters,
    /// which are stored per event). A batch of several carries `whb_` and a
    /// digest of their ids: the same events always make the same id, and no
    /// event's id is a batch's.
    pub fn batch<'a>(events: impl Iterator<Item = (&'a str, &'a [u8])> + Clone) -> RequestBody {
        let size = events
            .clone()
            .map(|(_, payload)| payload.len() + 1)
            .sum::<usize>();
        let mut body = Vec::with_capacity(size + 12);
        body.extend_from_slice(b"{\"events\":[");
        let mut hasher = Sha256::new();
        let mut only = None;
        for (index, (id, payload)) in events.enumerate() {
            if index > 0 {
                body.push(b',');
            }
            body.extend_from_slice(payload);
            hasher.update(id.as_bytes());
            hasher.update(b",");
            only = (index == 0).then_some(id);
        }
        body.extend_from_slice(b"]}");
        let id = match only {
            Some(id) => id.to_owned(),
            None => {
                let digest = hasher.finalize();
                let mut id = String::with_capacity(36);
                id.push_str("whb_");
                crate::value::escape::push_hex(&mut id, &digest[..16]);
                id
            }
        };
        RequestBody {
            id,
            body: Bytes::from(body),
        }
    }
}

/// What one request came to.
#[derive(Debug, Clone)]
pub enum Attempt {
    Status {
        status: u16,
        retry_after: Option<Duration>,
        /// The start of the body of an answer other than 2xx.
        body: Option<Box<str>>,
    },
    /// No HTTP answer: refused, reset, timed out, TLS failed.
    Transport(String),
}

impl Attempt {
    pub fn verdict(&self) -> Verdict {
        match self {
            Attempt::Status {
                status,
                retry_after,
                ..
            } => policy::classify_status(*status, *retry_after),
            Attempt::Transport(_) => Verdict::Retry { not_before: None },
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Attempt::Status { status, .. } => Some(*status),
            Attempt::Transport(_) => None,
        }
    }

    /// The start of the receiver's answer, when it answered other than 2xx
    /// with a body ([`KEPT_RESPONSE_BODY`] bytes at most).
    pub fn response_body(&self) -> Option<&str> {
        match self {
            Attempt::Status { body, .. } => body.as_deref(),
            Attempt::Transport(_) => None,
        }
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attempt::Status { status, .. } => write!(f, "HTTP {status}"),
            Attempt::Transport(what) => f.write_str(what),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_with_the_same_tls_settings_share_a_client() {
        let mut clients = Clients::new(&DeliveryConfig::default());
        let delivery_wide = ReceiverTls::default();
        clients.client(&delivery_wide).unwrap();
        clients.client(&delivery_wide.clone()).unwrap();
        assert_eq!(clients.built.len(), 1);
        let own_ca = ReceiverTls {
            ca: Some(std::sync::Arc::new(crate::config::CaFile {
                path: "/etc/walhook/ca.pem".into(),
                certificates: Vec::new(),
            })),
            identity: None,
        };
        clients.client(&own_ca).unwrap();
        clients.client(&own_ca.clone()).unwrap();
        assert_eq!(clients.built.len(), 2, "one more for the other settings");
    }

    #[test]
    fn a_batch_of_one_carries_its_events_id_and_a_larger_one_a_batch_id() {
        let one = RequestBody::batch([("wh_a", &b"{\"n\":1}"[..])].into_iter());
        assert_eq!(one.id, "wh_a");
        assert_eq!(&one.body[..], b"{\"events\":[{\"n\":1}]}");

        let pair = [("wh_a", &b"{\"n\":1}"[..]), ("wh_b", &b"{\"n\":2}"[..])];
        let two = RequestBody::batch(pair.into_iter());
        assert!(
            two.id.starts_with("whb_") && two.id.len() == 36,
            "{}",
            two.id
        );
        assert_eq!(&two.body[..], b"{\"events\":[{\"n\":1},{\"n\":2}]}");
        // Deterministic over the ids, in order.
        assert_eq!(RequestBody::batch(pair.into_iter()).id, two.id);
        assert_ne!(RequestBody::batch(pair.into_iter().rev()).id, two.id);
    }
}
