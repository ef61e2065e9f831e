//! Rate limits of webhook deliveries: per app (tenant) and, optionally, per endpoint.
//!
//! The limit is GCRA. The state is shared by every dispatcher replica through a
//! [`RateLimiter`] backend (Redis: one Lua script, `herald-redis`; memory: one
//! process). Asking the backend for every delivery would cost a round trip each, so a
//! replica takes a **lease**: a few cells at once (about [`LEASE_WINDOW`] worth of the
//! rate, at most the burst) that it spends locally. Cells are counted against the
//! shared limit when leased, so replicas together never exceed it; a lease not spent
//! within the window is dropped, which can only make a replica send less. The
//! tolerance is therefore one-sided: over any window the receiver sees at most
//! `rate × window + burst` deliveries.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

use herald_backbone::Error;
use herald_webhooks::{gcra::Rate, limiter::RateLimiter};

/// How much of the rate a replica leases at once.
pub const LEASE_WINDOW: Duration = Duration::from_millis(50);

/// Cells leased from the shared limit and not spent yet.
struct Lease {
    cells: u32,
    expires: Instant,
}

/// A replica's view of the limits: spends leased cells, leases more when out.
pub struct Leases {
    backend: std::sync::Arc<dyn RateLimiter>,
    leases: Mutex<HashMap<String, Lease>>,
}

impl Leases {
    pub fn new(backend: std::sync::Arc<dyn RateLimiter>) -> Self {
        Self { backend, leases: Mutex::new(HashMap::new()) }
    }

    /// Takes one cell of `key`'s limit: `Ok(None)` when taken, `Ok(Some(wait))` when
    /// the limit allows the next one only after `wait`.
    pub async fn take_one(&self, key: &str, rate: Rate) -> Result<Option<Duration>, Error> {
        if self.spend_leased(key) {
            return Ok(None);
        }
        let size = lease_size(rate);
        let (granted, wait) = self.backend.take(key, rate, size).await?;
        if granted == 0 {
            return Ok(Some(wait.max(Duration::from_millis(1))));
        }
        if granted > 1 {
            let mut leases = self.leases.lock();
            let lease = leases.entry(key.to_owned()).or_insert(Lease { cells: 0, expires: Instant::now() });
            lease.cells += granted - 1;
            lease.expires = Instant::now() + LEASE_WINDOW;
        }
        Ok(None)
    }

    fn spend_leased(&self, key: &str) -> bool {
        let mut leases = self.leases.lock();
        let Some(lease) = leases.get_mut(key) else {
            return false;
        };
        if lease.expires <= Instant::now() || lease.cells == 0 {
            leases.remove(key);
            return false;
        }
        lease.cells -= 1;
        true
    }
}

/// About [`LEASE_WINDOW`] worth of the rate, at least 1, at most the burst.
fn lease_size(rate: Rate) -> u32 {
    let size = (rate.per_second * LEASE_WINDOW.as_secs_f64()).ceil();
    (size as u32).clamp(1, rate.burst.max(1))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_webhooks::limiter::LocalRateLimiter;

    use super::*;

    #[test]
    fn leases_are_a_slice_of_the_rate() {
        assert_eq!(lease_size(Rate::new(1.0, 10).unwrap()), 1);
        assert_eq!(lease_size(Rate::new(1000.0, 100).unwrap()), 50);
        assert_eq!(lease_size(Rate::new(100_000.0, 20).unwrap()), 20, "never more than the burst");
    }

    #[tokio::test]
    async fn leased_cells_are_spent_locally_and_the_limit_holds() {
        let leases = Leases::new(Arc::new(LocalRateLimiter::default()));
        let rate = Rate::new(100.0, 10).unwrap();
        let mut granted = 0;
        let mut waited = None;
        for _ in 0..50 {
            match leases.take_one("app", rate).await.unwrap() {
                None => granted += 1,
                Some(wait) => {
                    waited = Some(wait);
                    break;
                }
            }
        }
        assert_eq!(granted, 10, "the burst, then the limit");
        let wait = waited.unwrap();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(10), "{wait:?}");
    }
}
