//! Wall-clock time as the records carry it, and the one backoff every retry loop of
//! Herald's operational code uses (reconnects, appends, unsubscriptions). The webhook
//! retry *schedule* is a business table, not this (see the dispatcher's `schedule`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it): the timestamps of
/// channel events, deliveries, attempts and presence leases.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Microseconds since the Unix epoch (0 if the clock is before it): when a
/// publication was accepted, so every node can tell how long its fan-out took from
/// there.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Exponential backoff: each [`Backoff::next_delay`] is `factor` times the previous
/// one, from `initial` up to `max`, optionally jittered to 50–150 % so that many
/// clients that failed together do not retry in lockstep. [`Backoff::reset`] after a
/// success starts again from `initial`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    factor: u32,
    jitter: bool,
    next: Duration,
}

impl Backoff {
    /// Doubling from `initial` to `max`, without jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, factor: 2, jitter: false, next: initial }
    }

    /// Multiplies by `factor` (at least 1) instead of 2.
    pub fn factor(mut self, factor: u32) -> Self {
        self.factor = factor.max(1);
        self
    }

    /// Spreads every delay over 50–150 % of its nominal value.
    pub fn jittered(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The delay to wait now; the next one grows.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = nominal.saturating_mul(self.factor).min(self.max);
        if self.jitter { nominal.mul_f64(0.5 + fastrand::f64()) } else { nominal }
    }

    /// Sleeps for [`Backoff::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Starts again from the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_by_the_factor_up_to_the_cap_and_starts_over_after_a_reset() {
        let mut backoff = Backoff::new(100 * MS, 500 * MS);
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays, [100 * MS, 200 * MS, 400 * MS, 500 * MS, 500 * MS]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), 100 * MS);
        let mut fourfold = Backoff::new(100 * MS, Duration::from_secs(10)).factor(4);
        assert_eq!(
            [fourfold.next_delay(), fourfold.next_delay(), fourfold.next_delay()],
            [100 * MS, 400 * MS, 1600 * MS]
        );
    }

    #[test]
    fn jitter_stays_within_half_to_one_and_a_half() {
        let mut backoff = Backoff::new(100 * MS, 100 * MS).jittered();
        for _ in 0..1000 {
            let delay = backoff.next_delay();
            assert!((50 * MS..=150 * MS).contains(&delay), "{delay:?}");
        }
    }

    #[test]
    fn now_is_after_2020() {
        assert!(now_ms() > 1_577_836_800_000);
    }
}
