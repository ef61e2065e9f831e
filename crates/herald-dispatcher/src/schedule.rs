//! When to retry a failed delivery: a fixed schedule of delays with jitter, the receiver's
//! `Retry-After` (bounded, so a receiver can neither hammer us nor park a message for a
//! week), and the duration syntax (`250ms`, `5s`, `5m`, `2h`) the config uses for both.

use std::time::{Duration, SystemTime};

/// Delays between delivery attempts. Attempt 1 is immediate; after attempt `k` fails the
/// next waits `delays[k - 1]`, jittered, until the delays run out.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    pub delays: Vec<Duration>,
    /// Fraction of each delay to spread retries over, uniformly in `[d·(1−j), d·(1+j)]`,
    /// so endpoints that failed together (an outage) aren't retried in lockstep. Values
    /// outside 0..=1 are clamped when used.
    pub jitter: f64,
}

impl Default for RetrySchedule {
    /// Svix's schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h with ±20%, eight attempts
    /// over about a day and a bit, which rides out most receiver outages and deploys.
    fn default() -> Self {
        const MINUTE: u64 = 60;
        const HOUR: u64 = 60 * MINUTE;
        Self {
            delays: [5, 5 * MINUTE, 30 * MINUTE, 2 * HOUR, 5 * HOUR, 10 * HOUR, 10 * HOUR]
                .map(Duration::from_secs)
                .to_vec(),
            jitter: 0.2,
        }
    }
}

impl RetrySchedule {
    /// Every attempt the schedule allows: the first try plus one per delay.
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).map_or(u32::MAX, |retries| retries.saturating_add(1))
    }

    /// The jittered wait before the next attempt, after attempt `failed_attempt` (1 for the
    /// first try) failed; None when that was the last attempt (or for 0, which is no
    /// attempt at all).
    pub fn delay_after(&self, failed_attempt: u32) -> Option<Duration> {
        let index = usize::try_from(failed_attempt.checked_sub(1)?).ok()?;
        let delay = *self.delays.get(index)?;
        Some(jittered(delay, self.jitter, fastrand::f64()))
    }
}

/// `delay` scaled by a factor spread uniformly over `[1 − j, 1 + j]` by `unit` (0..1).
fn jittered(delay: Duration, jitter: f64, unit: f64) -> Duration {
    // `clamp` passes NaN through, and a NaN factor would make every delay fall back below.
    let jitter = if jitter.is_nan() { 0.0 } else { jitter.clamp(0.0, 1.0) };
    let factor = 1.0 - jitter + 2.0 * jitter * unit;
    // `mul_f64` panics on overflow; a delay that doesn't fit keeps its unjittered value.
    Duration::try_from_secs_f64(delay.as_secs_f64() * factor).unwrap_or(delay)
}

/// Bounds on a receiver's `Retry-After`: honoured, but at least `min` (a `0` would turn
/// retries into a busy loop) and at most `max` (a message must not wait out the schedule
/// on one receiver's say-so).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryAfterBounds {
    pub min: Duration,
    pub max: Duration,
}

impl Default for RetryAfterBounds {
    fn default() -> Self {
        Self { min: Duration::from_secs(1), max: Duration::from_secs(60 * 60) }
    }
}

impl RetryAfterBounds {
    pub fn new(min: Duration, max: Duration) -> Result<Self, String> {
        if min > max {
            return Err(format!("retry_after minimum ({min:?}) is above the maximum ({max:?})"));
        }
        Ok(Self { min, max })
    }

    /// `d` within `[min, max]`. With the public fields set to `min > max` (which
    /// [`RetryAfterBounds::new`] refuses), `max` wins rather than panicking like
    /// `Ord::clamp`: the cap is the bound that protects the schedule.
    pub fn clamp(&self, d: Duration) -> Duration {
        d.max(self.min).min(self.max)
    }
}

/// A `Retry-After` header value (RFC 9110 §10.2.3): delay-seconds (a non-negative
/// integer) or an HTTP-date, as the time to wait from `now`. A date in the past means no
/// wait; anything else (negative, fractional, garbage) is None, and the schedule applies.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but too big for u64 is still "a very long time": saturate, and let
        // the bounds cap it.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn the_default_is_svixs_schedule() {
        let schedule = RetrySchedule::default();
        let minutes = |m: u64| Duration::from_secs(m * 60);
        assert_eq!(
            schedule.delays,
            vec![5 * SEC, minutes(5), minutes(30), minutes(120), minutes(300), minutes(600), minutes(600)]
        );
        assert_eq!(schedule.jitter, 0.2);
        assert_eq!(schedule.attempts(), 8);
    }

    #[test]
    fn delay_after_walks_the_schedule_within_the_jitter_and_then_stops() {
        let schedule = RetrySchedule::default();
        for _ in 0..200 {
            for (i, base) in schedule.delays.iter().enumerate() {
                let delay = schedule.delay_after(i as u32 + 1).unwrap();
                assert!(
                    delay >= base.mul_f64(0.8) && delay <= base.mul_f64(1.2),
                    "attempt {}: {delay:?}",
                    i + 1
                );
            }
        }
        assert_eq!(schedule.delay_after(8), None, "the eighth attempt was the last");
        assert_eq!(schedule.delay_after(9), None);
        assert_eq!(schedule.delay_after(u32::MAX), None);
        assert_eq!(schedule.delay_after(0), None, "attempts count from 1");
    }

    #[test]
    fn jitter_spreads_over_the_whole_range() {
        let schedule = RetrySchedule { delays: vec![100 * SEC], jitter: 0.2 };
        let samples: Vec<f64> = (0..2000).map(|_| schedule.delay_after(1).unwrap().as_secs_f64()).collect();
        let (min, max) = samples.iter().fold((f64::MAX, f64::MIN), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!(min >= 80.0 && max <= 120.0, "{min}..{max}");
        // Uniform over 80..120: 2000 samples reach near both ends and centre on 100.
        assert!(min < 82.0 && max > 118.0, "{min}..{max}");
        assert!((98.0..102.0).contains(&mean), "mean {mean}");
    }

    #[test]
    fn jitter_bounds_are_exact_and_broken_jitter_is_harmless() {
        let d = 10 * SEC;
        assert_eq!(jittered(d, 0.2, 0.0), 8 * SEC);
        assert_eq!(jittered(d, 0.2, 0.5), 10 * SEC);
        assert!(jittered(d, 0.2, 0.999_999) < 12 * SEC);
        assert_eq!(jittered(d, 0.0, 0.7), d);
        assert_eq!(jittered(d, f64::NAN, 0.7), d);
        assert_eq!(jittered(d, -1.0, 0.7), d);
        assert_eq!(jittered(d, 5.0, 0.0), Duration::ZERO, "jitter above 1 is clamped to 1");
        assert_eq!(jittered(Duration::MAX, 0.5, 0.99), Duration::MAX, "overflow keeps the delay");
        let no_jitter = RetrySchedule { delays: vec![d], jitter: 0.0 };
        assert_eq!(no_jitter.delay_after(1), Some(d));
    }

    #[test]
    fn an_empty_schedule_means_one_attempt() {
        let schedule = RetrySchedule { delays: Vec::new(), jitter: 0.1 };
        assert_eq!(schedule.attempts(), 1);
        assert_eq!(schedule.delay_after(1), None);
    }

    #[test]
    fn retry_after_accepts_delay_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("120", now), Some(120 * SEC));
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(" 30 ", now), Some(30 * SEC));
        assert_eq!(parse_retry_after("99999999999999999999999", now), Some(Duration::from_secs(u64::MAX)));
    }

    #[test]
    fn retry_after_accepts_http_dates_relative_to_now() {
        // Wed, 21 Oct 2015 07:28:00 GMT
        let date = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let now = date - 90 * SEC;
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(90 * SEC));
        // The obsolete forms HTTP still requires recipients to accept.
        assert_eq!(parse_retry_after("Wednesday, 21-Oct-15 07:28:00 GMT", now), Some(90 * SEC));
        assert_eq!(parse_retry_after("Wed Oct 21 07:28:00 2015", now), Some(90 * SEC));
        // In the past: retry now, the bounds will make that at least the minimum.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", date + 3600 * SEC),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_garbage_is_none() {
        let now = SystemTime::now();
        for bad in ["", " ", "-1", "1.5", "+5", "soon", "120s", "0x10", "Wed, 32 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_bounds_clamp() {
        let bounds = RetryAfterBounds::default();
        assert_eq!(bounds, RetryAfterBounds { min: SEC, max: 3600 * SEC });
        assert_eq!(bounds.clamp(Duration::ZERO), SEC);
        assert_eq!(bounds.clamp(90 * SEC), 90 * SEC);
        assert_eq!(bounds.clamp(Duration::from_secs(u64::MAX)), 3600 * SEC);

        assert!(RetryAfterBounds::new(10 * SEC, SEC).unwrap_err().contains("above"));
        let inverted = RetryAfterBounds { min: 10 * SEC, max: SEC };
        assert_eq!(inverted.clamp(5 * SEC), SEC, "max wins, no panic");
    }
}
