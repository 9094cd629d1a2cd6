//! `OidMap`: a hash map keyed by a PostgreSQL oid (relation ids, type oids),
//! with a hasher cheap enough for the look-ups done once per change and per
//! value. It is not for keys an outsider chooses.

/// A map keyed by an oid (relation ids, type oids). Oids are few and chosen
/// by PostgreSQL, not by an attacker: a multiplicative hash is enough, and
/// the default SipHash showed in profiles (several look-ups per change).
pub type OidMap<V> = std::collections::HashMap<u32, V, std::hash::BuildHasherDefault<OidHasher>>;

/// The hasher of [`OidMap`].
#[derive(Debug, Default, Clone, Copy)]
pub struct OidHasher(u64);

impl std::hash::Hasher for OidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
