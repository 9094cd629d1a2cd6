//! Waiting between attempts, in one place: exponential backoff with full
//! jitter ([`backoff_delay`]), a sleep that shutdown cuts short ([`pause`]),
//! and a loop that retries an operation until it succeeds or shutdown comes
//! ([`until_ok`]). Delivery uses them between attempts and while a dead
//! letter cannot be stored; the daemon while it reconnects or stands by.
//!
//! "Stopped by shutdown" is `ControlFlow::Break`, never a bare `bool`. This
//! module decides nothing about what failed or why (`deliver::policy`).

use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::BackoffConfig;

/// The wait before attempt number `attempt + 1` (after `attempt` failures,
/// counting from 1): full jitter over an exponentially growing cap, but no
/// sooner than a receiver's Retry-After and never longer than the policy's
/// maximum.
pub fn backoff_delay(
    policy: &BackoffConfig,
    attempt: u32,
    not_before: Option<Duration>,
) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let cap = policy
        .initial
        .saturating_mul(1u32 << exponent)
        .min(policy.max);
    let jittered = cap.mul_f64(fastrand::f64());
    match not_before {
        Some(wait) => jittered.max(wait).min(policy.max),
        None => jittered,
    }
}

/// Sleeps `wait`, unless `stop` is cancelled first: then `Break`.
pub async fn pause(wait: Duration, stop: &CancellationToken) -> ControlFlow<()> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => ControlFlow::Break(()),
        _ = tokio::time::sleep(wait) => ControlFlow::Continue(()),
    }
}

/// Runs `attempt` until it succeeds, waiting with backoff (never less than
/// `floor`) after each failure, which `failed` hears of with the number of
/// failures so far. `Break` when `stop` is cancelled first.
pub async fn until_ok<T, E, Attempt, Fut>(
    policy: &BackoffConfig,
    floor: Duration,
    stop: &CancellationToken,
    mut attempt: Attempt,
    mut failed: impl FnMut(&E, u32),
) -> ControlFlow<(), T>
where
    Attempt: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut failures = 0u32;
    loop {
        let outcome = tokio::select! {
            biased;
            _ = stop.cancelled() => return ControlFlow::Break(()),
            outcome = attempt() => outcome,
        };
        match outcome {
            Ok(value) => return ControlFlow::Continue(value),
            Err(error) => {
                failures = failures.saturating_add(1);
                failed(&error, failures);
                let wait = backoff_delay(policy, failures, None).max(floor);
                pause(wait, stop).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn until_ok_retries_with_growing_waits_and_stops_on_shutdown() {
        let policy = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        };
        let stop = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let mut calls = 0;
        let mut seen = Vec::new();
        let outcome = until_ok(
            &policy,
            Duration::from_millis(50),
            &stop,
            || {
                calls += 1;
                let result = if calls < 4 { Err(calls) } else { Ok("done") };
                async move { result }
            },
            |error: &i32, failures| seen.push((*error, failures)),
        )
        .await;
        assert_eq!(outcome, ControlFlow::Continue("done"));
        assert_eq!(seen, vec![(1, 1), (2, 2), (3, 3)]);
        // Three waits of at least the floor each.
        assert!(started.elapsed() >= Duration::from_millis(150));

        stop.cancel();
        let outcome: ControlFlow<(), ()> = until_ok(
            &policy,
            Duration::ZERO,
            &stop,
            || async { Err::<(), _>(()) },
            |_, _| {},
        )
        .await;
        assert_eq!(outcome, ControlFlow::Break(()));
        assert_eq!(
            pause(Duration::from_secs(60), &stop).await,
            ControlFlow::Break(())
        );
    }
}
