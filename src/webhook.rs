//! The Standard Webhooks scheme (<https://www.standardwebhooks.com>) in one
//! place: the header names, the `whsec_` key, signing and verifying.
//!
//! The signature is `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))
//! where the key is the base64 after `whsec_` in the configured secret; a
//! header may carry several space-separated signatures (one per key, while
//! keys roll). A receiver accepts a timestamp within [`TIMESTAMP_TOLERANCE_SECS`]
//! of its clock, as the reference libraries do. Delivery signs, `listen`
//! verifies; this module picks no ids or timestamps and imports nothing of
//! walhook's.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries the message id (the event's, or a batch's).
pub const ID_HEADER: &str = "webhook-id";
/// The header that carries the signing time, in seconds since the epoch.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// The header that carries the `v1,…` signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// How far `webhook-timestamp` may be from a receiver's clock, as in the
/// Standard Webhooks reference libraries.
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;

/// A decoded signing key. Its `Debug` never shows the key; equality is
/// for comparing configurations (a reload), not for checking signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// The shortest signing key accepted: 128 bits, so that a signature cannot
/// be forged by guessing the key (docs/security.md).
pub const MIN_KEY_BYTES: usize = 16;

impl SigningKey {
    /// Parses `whsec_<base64>` (the prefix may be left out); the key must be
    /// at least [`MIN_KEY_BYTES`] long.
    pub fn from_secret(secret: &str) -> Result<Self, String> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = BASE64.decode(encoded.trim()).map_err(|_| {
            "is not a Standard Webhooks secret: expected whsec_ followed by base64 \
             (e.g. generate one with `openssl rand -base64 32`)"
                .to_owned()
        })?;
        if key.is_empty() {
            return Err("is empty; expected whsec_ followed by base64".into());
        }
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "is {} bytes long: a signing key needs at least {MIN_KEY_BYTES} random bytes \
                 (generate one with `openssl rand -base64 32`, and give it to the receiver too)",
                key.len()
            ));
        }
        Ok(SigningKey(key))
    }

    /// The key's bytes, for deriving other keys from it (`seal`); never for
    /// printing.
    pub(crate) fn key_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The `webhook-signature` header value for one request.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes keys of any length; this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

/// The Standard Webhooks headers of a request, as received.
#[derive(Debug, Clone, Copy, Default)]
pub struct WebhookHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Checks a request's headers against `key`: any of the space-separated
/// `v1,…` signatures may match, and the timestamp must be within
/// [`TIMESTAMP_TOLERANCE_SECS`] of `now` (seconds since the epoch). The
/// error says why not, for a person to read.
pub fn verify(
    key: &SigningKey,
    headers: &WebhookHeaders<'_>,
    body: &[u8],
    now: i64,
) -> Result<(), String> {
    let (Some(id), Some(timestamp), Some(signatures)) =
        (headers.id, headers.timestamp, headers.signature)
    else {
        return Err("missing webhook-id, webhook-timestamp or webhook-signature".to_owned());
    };
    let Ok(timestamp) = timestamp.trim().parse::<i64>() else {
        return Err(format!(
            "webhook-timestamp {timestamp:?} is not a number of seconds"
        ));
    };
    let skew = now.saturating_sub(timestamp);
    if skew.abs() > TIMESTAMP_TOLERANCE_SECS {
        return Err(format!(
            "webhook-timestamp is {}s {} now; the tolerance is {TIMESTAMP_TOLERANCE_SECS}s",
            skew.abs(),
            if skew > 0 { "before" } else { "after" }
        ));
    }
    let expected = key.sign(id, timestamp, body);
    let matches = signatures
        .split_whitespace()
        .filter(|candidate| candidate.starts_with("v1,"))
        .any(|candidate| constant_time_eq(candidate.as_bytes(), expected.as_bytes()));
    if matches {
        Ok(())
    } else {
        Err("no v1 signature matches this secret and body".to_owned())
    }
}

fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        // The example in the Standard Webhooks specification.
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = key.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rejects_what_is_not_base64() {
        assert!(SigningKey::from_secret("whsec_not base64!").is_err());
        assert!(SigningKey::from_secret("whsec_").is_err());
        let key = "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUE=";
        assert!(!format!("{:?}", SigningKey::from_secret(key).unwrap()).contains("QUFB"));
        // Three bytes, then fifteen: too short to resist guessing.
        assert!(SigningKey::from_secret("whsec_AAAA").is_err());
        let error = SigningKey::from_secret("whsec_QUFBQUFBQUFBQUFBQUFB").unwrap_err();
        assert!(error.contains("15 bytes"), "{error}");
        assert!(SigningKey::from_secret("whsec_QUFBQUFBQUFBQUFBQUFBQQ==").is_ok());
    }
}
