//! What an HTTP outcome means, and how long to wait before the next attempt.
//!
//! Decisions (deliver, retry, give up) are kept apart from timing (backoff
//! with full jitter, Retry-After within bounds) so each can be tested alone.
//! 2xx delivers; 408, 429 and 5xx other than 501 retry; a 3xx is a failure
//! that retries (redirects are not followed: a moved endpoint is a
//! configuration problem an operator should see); other 4xx are permanent.

use std::time::Duration;

// Timing lives with the other waits (`retry`); tests here check both halves.
#[cfg(test)]
use crate::config::BackoffConfig;
pub use crate::retry::backoff_delay;

/// The verdict on one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again, no sooner than `not_before` when the receiver said so.
    Retry {
        not_before: Option<Duration>,
    },
    /// Retrying cannot help; park it as a dead letter.
    GiveUp,
}

/// Classifies an HTTP status.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 => Verdict::Retry {
            not_before: retry_after,
        },
        501 => Verdict::GiveUp,
        500..=599 => Verdict::Retry {
            not_before: retry_after,
        },
        300..=399 => Verdict::Retry { not_before: None },
        _ => Verdict::GiveUp,
    }
}

/// Parses a `Retry-After` header: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate_parse(value)?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn httpdate_parse(value: &str) -> Option<std::time::SystemTime> {
    // RFC 9110 IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
    let rest = value.split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|name| name == month)?
        + 1;
    let rfc3339 = format!("{year}-{month:02}-{day:0>2}T{time}Z");
    humantime::parse_rfc3339(&rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify_as_the_style_guide_says() {
        assert_eq!(classify_status(200, None), Verdict::Delivered);
        assert_eq!(classify_status(204, None), Verdict::Delivered);
        for retry in [408, 429, 500, 502, 503, 504, 301, 302] {
            assert!(
                matches!(classify_status(retry, None), Verdict::Retry { .. }),
                "{retry}"
            );
        }
        for give_up in [400, 401, 403, 404, 410, 422, 501] {
            assert_eq!(classify_status(give_up, None), Verdict::GiveUp, "{give_up}");
        }
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let policy = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for attempt in 1..40 {
            let delay = backoff_delay(&policy, attempt, None);
            let cap = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 1).min(30))
                .min(policy.max);
            assert!(delay <= cap, "attempt {attempt}: {delay:?} > {cap:?}");
        }
        // Grows: the waits after each further failure reach past the
        // previous cap (full jitter draws from [0, cap] and the cap doubles:
        // that 100 draws all stay at or below half of it has a chance of
        // 2^-100), until the maximum stops it.
        for attempt in 2..=5 {
            let previous_cap = Duration::from_millis(100) * (1 << (attempt - 2));
            let longest = (0..100)
                .map(|_| backoff_delay(&policy, attempt, None))
                .max()
                .unwrap_or_default();
            assert!(
                longest > previous_cap,
                "attempt {attempt}: never longer than the cap before it, {previous_cap:?}"
            );
        }
        let late = (0..100)
            .map(|_| backoff_delay(&policy, 30, None))
            .max()
            .unwrap_or_default();
        assert!(late > policy.max / 2 && late <= policy.max, "{late:?}");
        let spread: std::collections::HashSet<_> = (0..20)
            .map(|_| backoff_delay(&policy, 5, None).as_micros())
            .collect();
        assert!(spread.len() > 10, "full jitter spreads the waits");
    }

    #[test]
    fn retry_after_is_honoured_within_the_maximum() {
        let policy = BackoffConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(60),
        };
        let delay = backoff_delay(&policy, 1, Some(Duration::from_secs(3)));
        assert!(delay >= Duration::from_secs(3));
        let delay = backoff_delay(&policy, 1, Some(Duration::from_secs(3600)));
        assert_eq!(delay, Duration::from_secs(60));
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        // A date to come: the wait lasts until then, month by month.
        let until = |date: &str| parse_retry_after(date).unwrap_or_default();
        let (january, february, march) = (
            until("Thu, 01 Jan 2099 00:00:00 GMT"),
            until("Sun, 01 Feb 2099 00:00:00 GMT"),
            until("Sun, 01 Mar 2099 00:00:00 GMT"),
        );
        let day = Duration::from_secs(24 * 3600);
        assert!(january > day * 365, "{january:?}");
        for (earlier, later, days) in [(january, february, 31), (february, march, 28)] {
            let between = later.saturating_sub(earlier);
            assert!(
                between.abs_diff(day * days) < Duration::from_secs(1),
                "{between:?} for {days} days"
            );
        }
    }
}
