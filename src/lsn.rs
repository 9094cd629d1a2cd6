//! A WAL position (log sequence number).
//!
//! `Lsn` is the one type for every WAL position walhook handles: what the
//! walsender sent, what a transaction committed at, what the checkpoint
//! confirms. It prints and parses in PostgreSQL's `X/Y` form (the high and low
//! 32 bits in hex), orders like the WAL, and has no arithmetic beyond what the
//! protocol needs. It does not decide when progress may move; the checkpoint
//! does.

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid position `0/0`, which `START_REPLICATION` reads as "from the
    /// slot's confirmed position".
    pub const ZERO: Lsn = Lsn(0);

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The text was not of the `X/Y` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a WAL position of the form X/Y (hex), such as 0/16B3748")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseLsnError(text.to_owned());
        let (high, low) = text.split_once('/').ok_or_else(error)?;
        let high = u32::from_str_radix(high, 16).map_err(|_| error())?;
        let low = u32::from_str_radix(low, 16).map_err(|_| error())?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_and_parses_postgres_form() {
        let lsn = Lsn(0x0000_0001_0A2B_3C48);
        assert_eq!(lsn.to_string(), "1/A2B3C48");
        assert_eq!("1/A2B3C48".parse::<Lsn>(), Ok(lsn));
        assert_eq!("0/0".parse::<Lsn>(), Ok(Lsn::ZERO));
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in ["", "1", "1/", "/1", "G/1", "1/2/3", "100000000/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn orders_like_the_wal() {
        assert!("0/FFFFFFFF".parse::<Lsn>().unwrap() < "1/0".parse::<Lsn>().unwrap());
    }
}
