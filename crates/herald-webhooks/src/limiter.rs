//! The shared state of webhook rate limits: the [`RateLimiter`] contract a backend
//! implements (Redis: `herald-redis`; memory: [`LocalRateLimiter`]). How a dispatcher
//! replica spends it without a round trip per delivery is the dispatcher's business.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use herald_backbone::Error;
use parking_lot::Mutex;

use crate::gcra::{Gcra, Rate};

/// The shared GCRA state of every limit.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Takes up to `n` cells from `key`'s limit (which has `rate`). Returns how many
    /// were granted and, when none was, how long until one conforms.
    async fn take(&self, key: &str, rate: Rate, n: u32) -> Result<(u32, Duration), Error>;
}

/// GCRA in this process only: `herald dev`, or a single dispatcher.
#[derive(Default)]
pub struct LocalRateLimiter {
    limits: Mutex<HashMap<String, Gcra>>,
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn take(&self, key: &str, rate: Rate, n: u32) -> Result<(u32, Duration), Error> {
        let now = Instant::now();
        let mut limits = self.limits.lock();
        // A limit whose rate changed starts over with the new one.
        let gcra = limits.entry(key.to_owned()).or_insert_with(|| Gcra::new(rate));
        if gcra.rate() != rate {
            *gcra = Gcra::new(rate);
        }
        let granted = gcra.acquire(now, n);
        let wait = if granted == 0 { gcra.wait_time(now) } else { Duration::ZERO };
        Ok((granted, wait))
    }
}
