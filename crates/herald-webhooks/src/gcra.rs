//! Per-tenant delivery rate limits with the Generic Cell Rate Algorithm: one timestamp of
//! state per limiter (the theoretical arrival time, TAT) instead of a token count and a
//! refill clock, so the shared Redis version is a single key read and written atomically.
//!
//! A cell (one delivery) conforms at time `t` when `TAT - t + T <= burst·T`, with `T` the
//! emission interval `1 / per_second`; granting it moves the TAT `T` further. After an idle
//! period `burst` cells go at once, and in steady state exactly `per_second` per second.
//!
//! [`Gcra`] is the in-process limiter (tests, single replica); `herald-redis` runs the
//! same algorithm as a script for every dispatcher replica to share.

use std::time::{Duration, Instant};

/// The shortest emission interval limiters use, so rates above 1,000,000/s act as
/// 1,000,000/s: the Redis limiter counts whole microseconds, and a shorter interval would
/// round to nothing there.
pub const MIN_INTERVAL: Duration = Duration::from_micros(1);
/// The longest emission interval limiters use (one cell every ~11.6 days), so slower rates
/// act as that rate. Any rate that slow is a config mistake; the bound keeps every TAT far
/// from `Instant` overflow.
pub const MAX_INTERVAL: Duration = Duration::from_secs(1_000_000);

/// A sustained rate and how many cells may go at once after idling.
///
/// The fields are public for config plumbing; [`Rate::new`] validates them, and a [`Gcra`]
/// built from an unvalidated rate still never panics: the interval is clamped to
/// [`MIN_INTERVAL`]..=[`MAX_INTERVAL`] (non-finite or non-positive rates take the slow end)
/// and a zero burst acts as 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    pub fn new(per_second: f64, burst: u32) -> Result<Self, String> {
        if !per_second.is_finite() || per_second <= 0.0 {
            return Err(format!("rate must be a positive number per second, got {per_second}"));
        }
        if burst == 0 {
            return Err("burst must be at least 1".to_owned());
        }
        Ok(Self { per_second, burst })
    }

    /// `T`: the time one cell costs, `1 / per_second`, to the nanosecond, within
    /// [`MIN_INTERVAL`]..=[`MAX_INTERVAL`].
    pub fn emission_interval(&self) -> Duration {
        // `try_from` refuses negative, NaN and overflowing values; those get the slowest
        // interval, so a broken rate limits hard instead of not at all.
        Duration::try_from_secs_f64(1.0 / self.per_second)
            .unwrap_or(MAX_INTERVAL)
            .clamp(MIN_INTERVAL, MAX_INTERVAL)
    }

    /// `T` in whole microseconds for `ARGV[1]` of `herald-redis`'s GCRA script, rounded up (and at
    /// least 1) so rounding can only make the shared limit slightly stricter, never looser.
    pub fn emission_interval_micros(&self) -> u64 {
        let micros = self.emission_interval().as_nanos().div_ceil(1_000).max(1);
        u64::try_from(micros).unwrap_or(u64::MAX)
    }

    fn effective_burst(&self) -> u32 {
        self.burst.max(1)
    }
}

/// An in-process GCRA limiter. Time is passed in, so it is exact under test and the caller
/// decides which clock (and when) to read.
///
/// The burst is also the tolerance for callers coming back late: lateness up to
/// `(burst - 1)·T` is made up by later grants, beyond that it is lost. With a burst of 1 a
/// caller only gets the full rate by returning exactly after [`Gcra::wait_time`].
#[derive(Debug, Clone)]
pub struct Gcra {
    rate: Rate,
    /// Theoretical arrival time: when the next cell would be due at the sustained rate.
    /// `None` (never used) behaves like a TAT in the past: the full burst is available.
    tat: Option<Instant>,
}

impl Gcra {
    pub fn new(rate: Rate) -> Self {
        Self { rate, tat: None }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Grants as many of `n` cells as conform at `now` (0..=n) and charges them. Partial
    /// grants let a caller with a batch send part of it now rather than all of it late.
    pub fn acquire(&mut self, now: Instant, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let interval = self.rate.emission_interval();
        let tat = self.tat.map_or(now, |tat| tat.max(now));
        // How far ahead of schedule the limiter is; at most burst·T after any grant.
        let backlog = tat.saturating_duration_since(now);
        let room = interval.saturating_mul(self.rate.effective_burst()).saturating_sub(backlog);
        let fits = room.as_nanos() / interval.as_nanos();
        // `fits.min(n)` is at most `n`, so the conversion can't fail; 0 is the safe answer
        // if it ever did.
        let granted = u32::try_from(fits.min(u128::from(n))).unwrap_or(0);
        if granted == 0 {
            return 0;
        }
        match tat.checked_add(interval.saturating_mul(granted)) {
            Some(next) => {
                self.tat = Some(next);
                granted
            }
            // Unreachable with the interval clamped to 1e6 s, but refusing is the answer
            // that can't overshoot the rate.
            None => 0,
        }
    }

    /// How long until one cell conforms: ZERO when one does at `now`.
    pub fn wait_time(&self, now: Instant) -> Duration {
        let Some(tat) = self.tat else { return Duration::ZERO };
        let interval = self.rate.emission_interval();
        // One more cell conforms once the backlog is down to (burst - 1)·T.
        let tolerance = interval.saturating_mul(self.rate.effective_burst() - 1);
        tat.saturating_duration_since(now).saturating_sub(tolerance)
    }

    /// Whether the whole burst is available again, i.e. the limiter is indistinguishable
    /// from a new one and a map of per-tenant limiters may drop it.
    pub fn is_full(&self, now: Instant) -> bool {
        self.tat.is_none_or(|tat| tat <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn gcra(per_second: f64, burst: u32) -> Gcra {
        Gcra::new(Rate::new(per_second, burst).unwrap())
    }

    #[test]
    fn validates_rates() {
        assert!(Rate::new(50.0, 5).is_ok());
        assert!(Rate::new(1e-9, 1).is_ok());
        assert!(Rate::new(1e9, 1).is_ok());
        for bad in [0.0, -0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = Rate::new(bad, 1).unwrap_err();
            assert!(err.contains("rate"), "{bad}: {err}");
        }
        assert!(Rate::new(1.0, 0).unwrap_err().contains("burst"));
    }

    #[test]
    fn emission_interval_is_the_inverse_of_the_rate() {
        assert_eq!(Rate::new(50.0, 1).unwrap().emission_interval(), 20 * MS);
        assert_eq!(Rate::new(0.5, 1).unwrap().emission_interval(), Duration::from_secs(2));
        assert_eq!(Rate::new(1e6, 1).unwrap().emission_interval(), Duration::from_micros(1));
        assert_eq!(Rate::new(3.0, 1).unwrap().emission_interval().as_nanos(), 333_333_333);
        assert_eq!(Rate::new(50.0, 1).unwrap().emission_interval_micros(), 20_000);
        assert_eq!(Rate::new(3.0, 1).unwrap().emission_interval_micros(), 333_334);
        assert_eq!(Rate::new(1e6, 1).unwrap().emission_interval_micros(), 1);
        // Valid but extreme rates act as the nearest rate the limiters can represent.
        assert_eq!(Rate::new(1e9, 1).unwrap().emission_interval(), MIN_INTERVAL);
        assert_eq!(Rate::new(1e9, 1).unwrap().emission_interval_micros(), 1);
        assert_eq!(Rate::new(1e-9, 1).unwrap().emission_interval(), MAX_INTERVAL);
        assert_eq!(Rate::new(1e-9, 1).unwrap().emission_interval_micros(), 1_000_000_000_000);
    }

    #[test]
    fn unvalidated_rates_clamp_instead_of_panicking() {
        let slow = Rate { per_second: 0.0, burst: 0 };
        assert_eq!(slow.emission_interval(), MAX_INTERVAL);
        assert_eq!(Rate { per_second: -3.0, burst: 1 }.emission_interval(), MAX_INTERVAL);
        assert_eq!(Rate { per_second: f64::NAN, burst: 1 }.emission_interval(), MAX_INTERVAL);
        assert_eq!(Rate { per_second: f64::INFINITY, burst: 1 }.emission_interval(), MIN_INTERVAL);
        assert_eq!(Rate { per_second: 1e-300, burst: 1 }.emission_interval(), MAX_INTERVAL);

        // Burst 0 acts as 1; the slowest interval with the largest burst doesn't overflow.
        let now = Instant::now();
        let mut g = Gcra::new(slow);
        assert_eq!(g.acquire(now, 5), 1);
        assert_eq!(g.acquire(now, 5), 0);
        assert_eq!(g.wait_time(now), MAX_INTERVAL);
        let mut huge = Gcra::new(Rate { per_second: 0.0, burst: u32::MAX });
        assert_eq!(huge.acquire(now, u32::MAX), u32::MAX);
        assert_eq!(huge.acquire(now, 1), 0);
    }

    #[test]
    fn a_new_limiter_grants_the_burst_at_once_then_nothing() {
        let now = Instant::now();
        let mut g = gcra(10.0, 5);
        assert_eq!(g.wait_time(now), Duration::ZERO);
        assert!(g.is_full(now));
        assert_eq!(g.acquire(now, 5), 5);
        assert_eq!(g.acquire(now, 1), 0);
        assert!(!g.is_full(now));
        // The next cell is due one interval later, not a whole burst later.
        assert_eq!(g.wait_time(now), 100 * MS);
    }

    #[test]
    fn grants_are_partial_when_only_part_of_the_request_conforms() {
        let now = Instant::now();
        let mut g = gcra(10.0, 5);
        assert_eq!(g.acquire(now, 3), 3);
        assert_eq!(g.acquire(now, 3), 2, "only two of the burst were left");
        assert_eq!(g.acquire(now, 3), 0);
        // 250 ms later two intervals (100 ms each) have elapsed: two cells, not three.
        assert_eq!(g.acquire(now + 250 * MS, 3), 2);
        assert_eq!(g.wait_time(now + 250 * MS), 50 * MS);
        assert_eq!(g.acquire(now + 250 * MS, 0), 0, "asking for nothing grants nothing");
    }

    #[test]
    fn the_burst_refills_after_idling_and_no_further() {
        let start = Instant::now();
        let mut g = gcra(10.0, 5);
        assert_eq!(g.acquire(start, 5), 5);
        // Idle long past a full refill: still only one burst, unused time isn't banked.
        let later = start + Duration::from_secs(60);
        assert!(g.is_full(later));
        assert_eq!(g.acquire(later, 100), 5);
        assert_eq!(g.acquire(later, 1), 0);
        // Half a refill: half the burst (rounded down to whole intervals).
        let half = later + 250 * MS;
        assert_eq!(g.acquire(half, 100), 2);
    }

    #[test]
    fn steady_state_gives_the_rate_over_a_long_window_give_or_take_the_burst() {
        // Polled every 7 ms (not a multiple of any interval here), asking for more than
        // can conform: the burst has to absorb up to 7 ms of lateness, hence (burst-1)·T
        // above 7 ms in every case.
        for (per_second, burst) in [(50.0, 5), (3.0, 2), (1000.0, 20), (0.5, 2), (7.3, 4)] {
            let start = Instant::now();
            let mut g = gcra(per_second, burst);
            let window = Duration::from_secs(600);
            let step = 7 * MS;
            let mut granted: u64 = 0;
            let mut t = Duration::ZERO;
            while t <= window {
                granted += u64::from(g.acquire(start + t, 100));
                t += step;
            }
            let expected = per_second * window.as_secs_f64();
            let got = granted as f64;
            assert!(
                got <= expected + f64::from(burst) + 1.0 && got >= expected - f64::from(burst) - 1.0,
                "{per_second}/s burst {burst}: {got} granted, expected about {expected}"
            );
        }
    }

    #[test]
    fn without_a_burst_a_late_caller_loses_the_time_it_was_late() {
        // Burst 1 leaves no tolerance: the TAT restarts from `now`, so lateness is not made
        // up later. Callers that can't come back on time want a burst of 2 or more.
        let start = Instant::now();
        let mut g = gcra(10.0, 1);
        let mut granted = 0;
        for tick in 0..100u32 {
            granted += g.acquire(start + 130 * MS * tick, 1);
        }
        assert_eq!(granted, 100, "every 130 ms poll gets one cell at 10/s");
        // 12.87 s at 10/s would allow 128, but the 30 ms of each poll's lateness is gone.
        assert_eq!(g.acquire(start + 130 * MS * 99, 100), 0);
    }

    #[test]
    fn a_caller_that_waits_the_wait_time_gets_the_exact_rate_even_without_a_burst() {
        let start = Instant::now();
        let mut g = gcra(3.0, 1);
        let window = Duration::from_secs(600);
        let mut now = start;
        let mut granted = 0u64;
        while now <= start + window {
            granted += u64::from(g.acquire(now, 1));
            now += g.wait_time(now);
        }
        // One at 0 and one per interval after: 1 + floor(600 s / 333.333333 ms).
        assert_eq!(granted, 1800 + 1);
    }

    #[test]
    fn waiting_the_wait_time_is_exactly_enough() {
        let start = Instant::now();
        let mut g = gcra(3.0, 2);
        let mut now = start;
        for _ in 0..50 {
            while g.acquire(now, 1) == 1 {}
            let wait = g.wait_time(now);
            assert!(wait > Duration::ZERO);
            // A nanosecond early is too early; on time is on time.
            assert_eq!(g.clone().acquire(now + wait - Duration::from_nanos(1), 1), 0);
            now += wait;
            assert_eq!(g.wait_time(now), Duration::ZERO);
        }
        // 2 at the start, then one per interval.
        let elapsed = now - start;
        let interval = g.rate().emission_interval();
        assert_eq!(elapsed, interval * 50);
    }

    #[test]
    fn a_clock_read_before_the_last_grant_is_treated_as_the_same_moment() {
        // Callers read Instant::now() before taking a lock, so `now` can go backwards a bit.
        let now = Instant::now() + Duration::from_secs(1);
        let mut g = gcra(10.0, 2);
        assert_eq!(g.acquire(now, 2), 2);
        let earlier = now - 50 * MS;
        assert_eq!(g.acquire(earlier, 1), 0);
        assert_eq!(g.wait_time(earlier), 150 * MS);
    }
}
