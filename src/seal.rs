//! Row seals: a MAC walhook stores beside each dead letter and backlog row,
//! so that a row someone else wrote into `walhook.dead_letters` or
//! `walhook.backlog` is not sent as walhook's (docs/security.md, "Rows
//! walhook reads back").
//!
//! The seal is HMAC-SHA256 over the subscription's name, the event id and
//! the payload bytes, under a key derived from what makes the
//! subscription's requests authentic to its receiver — its signing secret,
//! or else its configured header values — none of which is in the database.
//! A subscription with neither has nothing a receiver could authenticate,
//! so its rows are not sealed. This module computes and checks seals; it
//! does not decide what happens to a row that fails (`deliver`, the
//! `dead-letters` command).

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The length of a seal.
pub const SEAL_BYTES: usize = 32;

/// Separates the seal key from every other use of the same secret.
const KEY_LABEL: &[u8] = b"walhook row seal v1";

/// One subscription's sealing key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct RowSeal {
    key: [u8; SEAL_BYTES],
}

impl std::fmt::Debug for RowSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowSeal(***)")
    }
}

impl RowSeal {
    /// The seal key derived from `secrets` (the signing key's bytes, or
    /// else the header values as name/value pairs in a fixed order);
    /// `None` when there is no secret to derive from.
    pub fn derive<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Option<RowSeal> {
        let mut mac = new_mac(KEY_LABEL);
        let mut any = false;
        for secret in secrets {
            any |= !secret.is_empty();
            update_framed(&mut mac, secret);
        }
        any.then(|| RowSeal {
            key: mac.finalize().into_bytes().into(),
        })
    }

    /// The seal of one event's row.
    pub fn seal(&self, subscription: &str, event_id: &str, payload: &[u8]) -> [u8; SEAL_BYTES] {
        let mut mac = new_mac(&self.key);
        update_framed(&mut mac, subscription.as_bytes());
        update_framed(&mut mac, event_id.as_bytes());
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }

    /// Whether `stored` is the seal of this row (in constant time).
    pub fn verify(
        &self,
        subscription: &str,
        event_id: &str,
        payload: &[u8],
        stored: Option<&[u8]>,
    ) -> bool {
        let Some(stored) = stored else {
            return false;
        };
        let mut mac = new_mac(&self.key);
        update_framed(&mut mac, subscription.as_bytes());
        update_framed(&mut mac, event_id.as_bytes());
        mac.update(payload);
        mac.verify_slice(stored).is_ok()
    }
}

fn new_mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so the error arm cannot happen; were it
    // to, a zero key only makes every stored seal fail to verify.
    <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()))
}

/// Feeds `part` with its length first, so that no two different lists of
/// parts feed the same bytes.
fn update_framed(mac: &mut Hmac<Sha256>, part: &[u8]) {
    mac.update(&(part.len() as u64).to_be_bytes());
    mac.update(part);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal() -> RowSeal {
        RowSeal::derive([b"sixteen byte key".as_slice()]).unwrap()
    }

    #[test]
    fn a_row_verifies_only_unchanged_and_under_its_key() {
        let stored = seal().seal("orders", "wh_1", b"{\"a\":1}");
        assert!(seal().verify("orders", "wh_1", b"{\"a\":1}", Some(&stored)));
        assert!(!seal().verify("orders", "wh_1", b"{\"a\":2}", Some(&stored)));
        assert!(!seal().verify("orders", "wh_2", b"{\"a\":1}", Some(&stored)));
        assert!(!seal().verify("signups", "wh_1", b"{\"a\":1}", Some(&stored)));
        assert!(!seal().verify("orders", "wh_1", b"{\"a\":1}", None));
        assert!(!seal().verify("orders", "wh_1", b"{\"a\":1}", Some(&stored[..31])));
        let other = RowSeal::derive([b"another key here".as_slice()]).unwrap();
        assert!(!other.verify("orders", "wh_1", b"{\"a\":1}", Some(&stored)));
    }

    #[test]
    fn parts_are_framed_and_nothing_seals_without_a_secret() {
        // "ab" + "c" and "a" + "bc" must not give the same key or seal.
        let left = RowSeal::derive([b"ab".as_slice(), b"c"]).unwrap();
        let right = RowSeal::derive([b"a".as_slice(), b"bc"]).unwrap();
        assert_ne!(left.key, right.key);
        assert_ne!(seal().seal("ab", "c", b""), seal().seal("a", "bc", b""));
        assert!(RowSeal::derive(std::iter::empty()).is_none());
        assert!(RowSeal::derive([b"".as_slice()]).is_none());
        assert!(!format!("{:?}", seal()).contains("key"));
    }
}
