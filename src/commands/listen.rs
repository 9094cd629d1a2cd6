//! `walhook listen`: a webhook receiver for development. It listens on
//! 127.0.0.1, prints every webhook it is sent (a header line with the event
//! type, table and id, then the payload as pretty JSON with every number's
//! digits kept), and says whether its Standard Webhooks signature verifies.
//!
//! Answers: 204 when the signature verifies, or when no secret was given
//! (nothing to check against); 401 when a secret was given and the
//! signature is missing, does not match or is older or newer than the
//! five-minute tolerance the Standard Webhooks libraries apply; 400 for a
//! body that is not JSON. walhook treats 401 and 400 as permanent, so a
//! mismatched secret shows up as dead letters, as it would in production.
//! `{"events": [...]}` batches are printed event by event. Output is
//! coloured only when stdout is a terminal. Ctrl-C (or SIGTERM) stops it.
//! With `--config` it stands in for one subscription of a config file: it
//! listens on that subscription's URL's port and checks its secret.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::Value;

use crate::commands::CommandError;
use crate::config::{Config, ConfigError};
use crate::webhook::{self, SigningKey, WebhookHeaders};

/// The largest body accepted (a batch of big rows can exceed axum's 2 MB).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The port a development receiver listens on when nothing says otherwise.
const DEFAULT_PORT: u16 = 8080;

/// Where a secret is read from when no `--secret` and no `--config` give one.
const SECRET_VARIABLE: &str = "WALHOOK_LISTEN_SECRET";

/// What `walhook listen` was asked for.
#[derive(Default)]
pub struct ListenOptions {
    pub port: Option<u16>,
    /// `whsec_…` or `env:NAME`.
    pub secret: Option<String>,
    /// A config file whose subscription `listen` stands in for.
    pub config: Option<PathBuf>,
    pub subscription: Option<String>,
}

/// `walhook listen [--port P] [--secret S] [--config F [--subscription N]]`:
/// serves until Ctrl-C or SIGTERM. A bad secret, a port that cannot be bound
/// or a subscription it cannot stand in for is an argument problem (exit 2).
pub async fn run(options: ListenOptions) -> Result<(), CommandError> {
    let stand_in = match &options.config {
        Some(path) => Some(stand_in_for(path, options.subscription.as_deref())?),
        None => None,
    };
    // An explicit --secret wins; a stand-in uses its subscription's (a
    // WALHOOK_LISTEN_SECRET left in the shell must not override it).
    let (keys, checked_against) = match (&options.secret, &stand_in) {
        (Some(secret), _) => (vec![signing_key(secret)?], "the given secret".to_owned()),
        (None, Some(stand_in)) => (
            stand_in.keys.clone(),
            if stand_in.keys.len() > 1 {
                format!("any of subscription {:?}'s secrets", stand_in.name)
            } else {
                format!("subscription {:?}'s secret", stand_in.name)
            },
        ),
        (None, None) => match std::env::var(SECRET_VARIABLE) {
            Ok(secret) => (
                vec![signing_key(&secret)?],
                format!("the secret in {SECRET_VARIABLE}"),
            ),
            Err(_) => (Vec::new(), String::new()),
        },
    };
    let port = match (options.port, &stand_in) {
        (Some(port), _) => port,
        (None, Some(stand_in)) => stand_in.port,
        (None, None) => DEFAULT_PORT,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|error| {
            argument_error(
                "--port",
                format!(
                    "cannot listen on 127.0.0.1:{port}: {error}; choose another port (0 picks a free one)"
                ),
            )
        })?;
    let addr = listener.local_addr().map_err(|error| {
        argument_error("--port", format!("cannot read the bound address: {error}"))
    })?;
    emit(&format!(
        "listening on http://{addr}\n{}{}\n",
        match &stand_in {
            Some(stand_in) => format!("standing in for subscription {:?}\n", stand_in.name),
            None => String::new(),
        },
        if !keys.is_empty() {
            format!("signatures: checked against {checked_against} (a bad one is answered 401)")
        } else {
            "signatures: not checked (pass --secret whsec_… to check them)".to_owned()
        }
    ));
    let received = serve(listener, keys, None, super::stop_requested())
        .await
        .map_err(|error| CommandError::Failed(format!("listen: the server stopped: {error}")))?;
    emit(&format!("stopped after {received} webhook request(s)\n"));
    Ok(())
}

/// Serves the printing receiver on `listener` until `shutdown`, returning
/// how many requests it took. Each printed request is also announced on
/// `arrivals` (the demo counts them there).
pub async fn serve(
    listener: tokio::net::TcpListener,
    keys: Vec<SigningKey>,
    arrivals: Option<tokio::sync::mpsc::UnboundedSender<()>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<u64, std::io::Error> {
    let receiver = Arc::new(Listener {
        keys,
        colour: std::io::stdout().is_terminal(),
        received: AtomicU64::new(0),
        arrivals,
    });
    let router = axum::Router::new()
        .fallback(axum::routing::post(receive))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::clone(&receiver));
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(receiver.received.load(Ordering::Relaxed))
}

/// The port and key of the subscription `listen` stands in for.
struct StandIn {
    name: String,
    port: u16,
    keys: Vec<SigningKey>,
}

/// Reads `path` as `run` would and picks the subscription named `name` (or
/// the only one). Its URL must be plain HTTP to this machine: that is where
/// `listen` can answer in its place.
fn stand_in_for(path: &Path, name: Option<&str>) -> Result<StandIn, ConfigError> {
    let config = Config::load(path)?;
    let names = || {
        config
            .subscriptions
            .iter()
            .map(|subscription| format!("{:?}", subscription.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let subscription = match name {
        Some(name) => config
            .subscriptions
            .iter()
            .find(|subscription| subscription.name == name)
            .ok_or_else(|| {
                argument_error(
                    "--subscription",
                    format!("{name:?} is not in {}; it has {}", path.display(), names()),
                )
            })?,
        None => match config.subscriptions.as_slice() {
            [only] => only,
            _ => {
                return Err(argument_error(
                    "--subscription",
                    format!(
                        "{} has several subscriptions; name one of {}",
                        path.display(),
                        names()
                    ),
                ));
            }
        },
    };
    let url = url::Url::parse(subscription.url.expose()).map_err(|error| {
        argument_error(
            "--config",
            format!(
                "subscription {:?}: url is not valid: {error}",
                subscription.name
            ),
        )
    })?;
    // It binds 127.0.0.1 only.
    let local = matches!(url.host_str(), Some("127.0.0.1" | "localhost"));
    let port = match (url.scheme(), local, url.port_or_known_default()) {
        ("http", true, Some(port)) => port,
        // Only the host is printed: the rest of a URL may hold a token.
        _ => {
            return Err(argument_error(
                "--config",
                format!(
                    "subscription {:?} sends to {}://{}, not plain HTTP on this machine; \
                     pass --port to listen anyway",
                    subscription.name,
                    url.scheme(),
                    url.host_str().unwrap_or("")
                ),
            ));
        }
    };
    let keys = subscription
        .signing_key
        .iter()
        .chain(&subscription.previous_keys)
        .cloned()
        .collect();
    Ok(StandIn {
        name: subscription.name.clone(),
        port,
        keys,
    })
}

/// `whsec_…`, or `env:NAME` naming a variable that holds it.
fn signing_key(secret: &str) -> Result<SigningKey, ConfigError> {
    let value = match secret.strip_prefix("env:") {
        Some(variable) => std::env::var(variable).map_err(|_| {
            argument_error(
                "--secret",
                format!("reads the environment variable {variable}, which is not set"),
            )
        })?,
        None => {
            eprintln!(
                "warning: a --secret on the command line is visible to every user of this \
                 machine (ps, /proc); pass --secret env:NAME, or set {SECRET_VARIABLE}"
            );
            secret.to_owned()
        }
    };
    SigningKey::from_secret(&value).map_err(|why| argument_error("--secret", why))
}

/// A bad argument, reported like a config problem: "--port: …", exit 2.
fn argument_error(argument: &str, message: String) -> ConfigError {
    ConfigError {
        file: argument.to_owned(),
        message,
    }
}

struct Listener {
    /// Any of them verifies a request (a subscription rolling its key).
    keys: Vec<SigningKey>,
    colour: bool,
    received: AtomicU64,
    arrivals: Option<tokio::sync::mpsc::UnboundedSender<()>>,
}

/// What the signature headers came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Signature {
    Verified,
    /// No secret was given; `signed` says whether the headers were there.
    NotChecked {
        signed: bool,
    },
    Invalid(String),
}

impl Signature {
    fn status(&self) -> StatusCode {
        match self {
            Signature::Verified | Signature::NotChecked { .. } => StatusCode::NO_CONTENT,
            Signature::Invalid(_) => StatusCode::UNAUTHORIZED,
        }
    }

    fn describe(&self, colour: bool) -> String {
        match self {
            Signature::Verified => paint(colour, GREEN, "signature verified ✓"),
            Signature::NotChecked { signed: true } => {
                "signature not checked (no --secret)".to_owned()
            }
            Signature::NotChecked { signed: false } => "unsigned".to_owned(),
            Signature::Invalid(why) => paint(colour, RED, &format!("signature INVALID ✗ ({why})")),
        }
    }
}

async fn receive(
    State(listener): State<Arc<Listener>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    listener.received.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0);
    let signature = verify(&listener.keys, &headers, &body, now);
    let parsed = serde_json::from_slice::<Value>(&body);
    let status = match (&signature, &parsed) {
        (Signature::Invalid(_), _) => StatusCode::UNAUTHORIZED,
        (_, Err(_)) => StatusCode::BAD_REQUEST,
        _ => signature.status(),
    };
    let webhook_id = header(&headers, webhook::ID_HEADER).unwrap_or("-");
    let mut out = String::new();
    match &parsed {
        Ok(value) => render(
            &mut out,
            uri.path(),
            webhook_id,
            value,
            &signature,
            status,
            listener.colour,
        ),
        Err(error) => {
            let _ = writeln!(
                out,
                "{} {}  {}  body is not JSON ({error}) → {}",
                paint(listener.colour, BOLD, "←"),
                uri.path(),
                signature.describe(listener.colour),
                status.as_u16()
            );
            let _ = writeln!(out, "{}", printable(&String::from_utf8_lossy(&body)));
        }
    }
    out.push('\n');
    emit(&out);
    if let Some(arrivals) = &listener.arrivals {
        let _ = arrivals.send(());
    }
    status
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// Checks the Standard Webhooks headers against `keys` (see
/// [`webhook::verify`]): any of them may match; without a key, nothing is
/// checked.
fn verify(keys: &[SigningKey], headers: &HeaderMap, body: &[u8], now: i64) -> Signature {
    let signed = WebhookHeaders {
        id: header(headers, webhook::ID_HEADER),
        timestamp: header(headers, webhook::TIMESTAMP_HEADER),
        signature: header(headers, webhook::SIGNATURE_HEADER),
    };
    let mut refusals = keys
        .iter()
        .map(|key| webhook::verify(key, &signed, body, now));
    let Some(first) = refusals.next() else {
        return Signature::NotChecked {
            signed: signed.signature.is_some(),
        };
    };
    match first {
        Ok(()) => Signature::Verified,
        Err(_) if refusals.any(|outcome| outcome.is_ok()) => Signature::Verified,
        Err(why) => Signature::Invalid(why),
    }
}

/// The header line(s) and pretty JSON of one request.
fn render(
    out: &mut String,
    path: &str,
    webhook_id: &str,
    body: &Value,
    signature: &Signature,
    status: StatusCode,
    colour: bool,
) {
    let verdict = format!("{}  → {}", signature.describe(colour), status.as_u16());
    match body.get("events").and_then(Value::as_array) {
        Some(events) => {
            let _ = writeln!(
                out,
                "{} {}  {verdict}",
                paint(
                    colour,
                    BOLD,
                    &format!(
                        "← batch of {} event{}  {webhook_id}",
                        events.len(),
                        if events.len() == 1 { "" } else { "s" }
                    )
                ),
                path,
            );
            for (index, event) in events.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  [{}/{}] {}",
                    index + 1,
                    events.len(),
                    paint(colour, BOLD, &event_title(event))
                );
                write_pretty(out, event, colour);
            }
        }
        None => {
            let _ = writeln!(
                out,
                "{} {}  {verdict}",
                paint(colour, BOLD, &format!("← {}", event_title(body))),
                path,
            );
            write_pretty(out, body, colour);
        }
    }
}

/// `UPDATE public.orders  wh_…` from a payload's own fields.
fn event_title(event: &Value) -> String {
    let text = |name: &str| printable(event.get(name).and_then(Value::as_str).unwrap_or("?"));
    format!(
        "{} {}.{}  {}",
        text("type"),
        text("schema"),
        text("table"),
        text("id")
    )
}

/// Pretty JSON laid out as `serde_json::to_string_pretty` lays it out (two
/// spaces, `"key": value`), optionally coloured. Numbers are written from
/// their own text, so `12.50` stays `12.50`.
fn write_pretty(out: &mut String, value: &Value, colour: bool) {
    if colour {
        write_value(out, value, 0);
    } else {
        match serde_json::to_string_pretty(value) {
            Ok(text) => out.push_str(&printable(&text)),
            Err(_) => out.push_str(&printable(&value.to_string())),
        }
    }
    out.push('\n');
}

fn write_value(out: &mut String, value: &Value, depth: usize) {
    match value {
        Value::Null => out.push_str(&paint(true, MAGENTA, "null")),
        Value::Bool(flag) => out.push_str(&paint(true, MAGENTA, &flag.to_string())),
        Value::Number(number) => out.push_str(&paint(true, YELLOW, &number.to_string())),
        Value::String(text) => out.push_str(&paint(true, GREEN, &quoted(text))),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Object(fields) if fields.is_empty() => out.push_str("{}"),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                out.push_str(if index == 0 { "\n" } else { ",\n" });
                indent(out, depth + 1);
                write_value(out, item, depth + 1);
            }
            out.push('\n');
            indent(out, depth);
            out.push(']');
        }
        Value::Object(fields) => {
            out.push('{');
            for (index, (name, field)) in fields.iter().enumerate() {
                out.push_str(if index == 0 { "\n" } else { ",\n" });
                indent(out, depth + 1);
                out.push_str(&paint(true, CYAN, &quoted(name)));
                out.push_str(": ");
                write_value(out, field, depth + 1);
            }
            out.push('\n');
            indent(out, depth);
            out.push('}');
        }
    }
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn quoted(text: &str) -> String {
    printable(&serde_json::to_string(text).unwrap_or_else(|_| format!("{text:?}"))).into_owned()
}

/// `text` with every control character (C0, DEL, C1 — JSON escapes only
/// C0) written as `\u{…}`, so that what a request carries cannot move the
/// cursor, rewrite the screen or set the terminal's title: only walhook's
/// own colour codes reach the terminal.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\n') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() && c != '\n' {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const MAGENTA: &str = "\x1b[35m";
const CYAN: &str = "\x1b[36m";
const RESET: &str = "\x1b[0m";

fn paint(colour: bool, code: &str, text: &str) -> String {
    if colour {
        format!("{code}{text}{RESET}")
    } else {
        text.to_owned()
    }
}

/// Writes a whole block at once so that concurrent requests do not
/// interleave their lines. A closed stdout is not worth failing a request.
fn emit(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    #[test]
    fn what_a_request_carries_cannot_drive_the_terminal() {
        // ESC (a colour or cursor sequence), BEL, DEL and CSI (C1).
        let hostile = "ok\u{1b}]0;owned\u{7}\u{7f}\u{9b}2J";
        let shown = super::printable(hostile);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(shown, "ok\\u{1b}]0;owned\\u{7}\\u{7f}\\u{9b}2J");
        assert_eq!(super::printable("plain\ntext"), "plain\ntext");
        // JSON strings get the same, beyond what JSON escapes itself.
        assert!(!super::quoted("a\u{9b}b").chars().any(char::is_control));
    }

    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let key = SigningKey::from_secret(SECRET).unwrap();
        let body = br#"{"id":"wh_1"}"#;
        let good = key.sign("wh_1", 1_000_000, body);
        let map = headers(&[
            ("webhook-id", "wh_1"),
            ("webhook-timestamp", "1000000"),
            (
                "webhook-signature",
                &format!("v1,bm90IHRoaXMgb25l v1a,ignored {good}"),
            ),
        ]);
        assert_eq!(
            verify(std::slice::from_ref(&key), &map, body, 1_000_010),
            Signature::Verified
        );
        assert!(matches!(
            verify(std::slice::from_ref(&key), &map, b"{}", 1_000_010),
            Signature::Invalid(_)
        ));
        // Outside the five-minute tolerance, a good signature still fails.
        assert!(matches!(
            verify(std::slice::from_ref(&key), &map, body, 1_000_000 + 301),
            Signature::Invalid(why) if why.contains("tolerance")
        ));
        assert_eq!(
            verify(&[], &map, body, 0),
            Signature::NotChecked { signed: true }
        );
        assert!(matches!(
            verify(std::slice::from_ref(&key), &HeaderMap::new(), body, 0),
            Signature::Invalid(_)
        ));
        assert_eq!(
            verify(&[], &HeaderMap::new(), body, 0).status(),
            StatusCode::NO_CONTENT
        );
    }

    #[test]
    fn coloured_json_has_the_plain_layout_and_keeps_digits() {
        let value: Value = serde_json::from_str(
            r#"{"amount": 12.50, "big": 123456789012345678901234567890, "tags": ["a", null, true],
                "empty": [], "none": {}, "nested": {"x": "q\"uote"}}"#,
        )
        .unwrap();
        let mut coloured = String::new();
        write_value(&mut coloured, &value, 0);
        let mut stripped = String::new();
        let mut rest = coloured.as_str();
        while let Some(start) = rest.find('\x1b') {
            stripped.push_str(&rest[..start]);
            let after = &rest[start..];
            rest = &after[after.find('m').unwrap() + 1..];
        }
        stripped.push_str(rest);
        assert_eq!(stripped, serde_json::to_string_pretty(&value).unwrap());
        assert!(stripped.contains("\"amount\": 12.50"));
        assert!(stripped.contains("123456789012345678901234567890"));
    }

    #[test]
    fn batches_are_printed_event_by_event() {
        let body: Value = serde_json::from_str(
            r#"{"events": [{"id": "wh_a", "type": "INSERT", "schema": "public", "table": "t"},
                           {"id": "wh_b", "type": "DELETE", "schema": "public", "table": "t"}]}"#,
        )
        .unwrap();
        let mut out = String::new();
        render(
            &mut out,
            "/hook",
            "whb_1",
            &body,
            &Signature::Verified,
            StatusCode::NO_CONTENT,
            false,
        );
        assert!(out.starts_with("← batch of 2 events  whb_1 /hook  signature verified ✓  → 204"));
        assert!(out.contains("[1/2] INSERT public.t  wh_a"));
        assert!(out.contains("[2/2] DELETE public.t  wh_b"));
    }

    #[test]
    fn any_of_a_rolling_subscriptions_keys_verifies() {
        let old = SigningKey::from_secret(SECRET).unwrap();
        let new = SigningKey::from_secret("whsec_bmV3LWtleS1mb3ItdGhlLXJvbGwtdGVzdA==").unwrap();
        let body = br#"{"id":1}"#;
        let mut map = HeaderMap::new();
        map.insert(webhook::ID_HEADER, "wh_1".parse().unwrap());
        map.insert(webhook::TIMESTAMP_HEADER, "1000000".parse().unwrap());
        map.insert(
            webhook::SIGNATURE_HEADER,
            old.sign("wh_1", 1_000_000, body).parse().unwrap(),
        );
        let keys = [new.clone(), old];
        assert_eq!(verify(&keys, &map, body, 1_000_010), Signature::Verified);
        assert!(matches!(
            verify(std::slice::from_ref(&new), &map, body, 1_000_010),
            Signature::Invalid(_)
        ));
    }
}
