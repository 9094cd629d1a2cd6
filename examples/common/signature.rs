//! Verifying walhook's Standard Webhooks signature, shared by the example
//! receivers (copy it beside your own receiver).
//!
//! walhook signs each request (docs/payload.md, docs/security.md):
//! `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`
//! with `key` the base64 after `whsec_` of the subscription's `secret`. The
//! header may carry several signatures, space-separated (a walhook rolling
//! its secret signs with each); one that matches is enough. The timestamp
//! must be within five minutes of now, so a captured request cannot be
//! replayed later. This checks the bytes as they arrived: verify before
//! parsing the JSON, never a re-serialised body.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a request's `webhook-timestamp` may be from this machine's clock.
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Checks requests against one subscription's secret.
pub struct Verifier {
    key: Vec<u8>,
}

impl Verifier {
    /// `secret` as walhook.toml gives it: `whsec_` and base64.
    pub fn new(secret: &str) -> anyhow::Result<Verifier> {
        let Some(encoded) = secret.strip_prefix("whsec_") else {
            bail!("the webhook secret must start with whsec_, as in walhook.toml");
        };
        let key = STANDARD
            .decode(encoded)
            .context("the webhook secret is not whsec_ followed by base64")?;
        Ok(Verifier { key })
    }

    /// The request's `webhook-id` when it is signed with this secret, at a
    /// time within [`TOLERANCE`]; otherwise why not.
    pub fn verify<'h>(&self, headers: &'h HeaderMap, body: &[u8]) -> Result<&'h str, Rejected> {
        let id = header(headers, "webhook-id")?;
        let timestamp = header(headers, "webhook-timestamp")?;
        let signatures = header(headers, "webhook-signature")?;

        let sent: u64 = timestamp.parse().map_err(|_| Rejected::Timestamp)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |now| now.as_secs());
        if now.abs_diff(sent) > TOLERANCE.as_secs() {
            return Err(Rejected::Timestamp);
        }

        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return Err(Rejected::Signature);
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        let matches = signatures
            .split(' ')
            .filter_map(|signature| signature.strip_prefix("v1,"))
            .filter_map(|encoded| STANDARD.decode(encoded).ok())
            // verify_slice compares in constant time.
            .any(|signature| mac.clone().verify_slice(&signature).is_ok());
        if matches {
            Ok(id)
        } else {
            Err(Rejected::Signature)
        }
    }
}

/// Why a request was not accepted as walhook's.
#[derive(Debug)]
pub enum Rejected {
    MissingHeader(&'static str),
    Timestamp,
    Signature,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::MissingHeader(name) => write!(f, "no {name} header"),
            Rejected::Timestamp => {
                write!(f, "webhook-timestamp is not within {TOLERANCE:?} of now")
            }
            Rejected::Signature => write!(f, "no webhook-signature matches the secret"),
        }
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, Rejected> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .ok_or(Rejected::MissingHeader(name))
}
