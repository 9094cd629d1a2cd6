//! PostgreSQL's clock: timestamps on the wire are microseconds since
//! 2000-01-01 00:00:00 UTC. This module converts wall-clock times to that
//! count (standby status updates, lag and latency metrics) and formats it as
//! RFC 3339 for payloads. It does not read clocks other than the one given.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const POSTGRES_EPOCH_UNIX_SECONDS: i64 = 946_684_800;

/// Microseconds since 2000-01-01 UTC for a wall-clock time.
pub fn micros_since_2000(time: SystemTime) -> i64 {
    let unix_micros = match time.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
    };
    unix_micros.saturating_sub(POSTGRES_EPOCH_UNIX_SECONDS * 1_000_000)
}

/// RFC 3339, UTC, microseconds and `Z`; times before 1970 print as the
/// Unix epoch (commit times never are).
pub fn format_rfc3339(micros_since_2000: i64) -> String {
    let unix_micros = micros_since_2000.saturating_add(POSTGRES_EPOCH_UNIX_SECONDS * 1_000_000);
    let Ok(unix_micros) = u64::try_from(unix_micros) else {
        return "1970-01-01T00:00:00.000000Z".to_owned();
    };
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(unix_micros)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_2000() {
        let y2k = UNIX_EPOCH + Duration::from_secs(946_684_800);
        assert_eq!(micros_since_2000(y2k), 0);
        assert_eq!(
            micros_since_2000(y2k + Duration::from_micros(1_500_000)),
            1_500_000
        );
        assert_eq!(micros_since_2000(UNIX_EPOCH), -946_684_800_000_000);
    }

    #[test]
    fn formats_rfc3339_micros_utc() {
        // 2026-11-27T08:00:00.123456Z
        let unix = 1_795_737_600_i64 + 8 * 3600;
        let micros = (unix - 946_684_800) * 1_000_000 + 123_456;
        assert_eq!(format_rfc3339(micros), "2026-11-27T08:00:00.123456Z");
        assert_eq!(format_rfc3339(0), "2000-01-01T00:00:00.000000Z");
        let now = SystemTime::now();
        assert_eq!(
            format_rfc3339(micros_since_2000(now)),
            humantime::format_rfc3339_micros(now).to_string()
        );
    }
}
