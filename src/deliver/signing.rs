//! Standard Webhooks signatures (<https://www.standardwebhooks.com>).
//!
//! The signature is `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))
//! where the key is the base64 after `whsec_` in the configured secret. This
//! module only signs; it does not pick ids or timestamps.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A decoded signing key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl SigningKey {
    /// Parses `whsec_<base64>` (the prefix may be left out).
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
        Ok(SigningKey(key))
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
        assert!(!format!("{:?}", SigningKey::from_secret("whsec_AAAA").unwrap()).contains("AAAA"));
    }
}
