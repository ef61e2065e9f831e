//! Idempotency keys: a publish retried with the same key within the window is not
//! published twice; the retry gets the first result. Per node for now (the
//! cluster-wide store comes with the Redis backbone).

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// Longest accepted idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

type Key = (Arc<str>, String);

enum Entry<T> {
    /// A first publish is under way; its runner drops the sender when it finishes.
    Pending(watch::Receiver<()>),
    Done(T),
}

/// Remembers the results of keyed publishes for `window`, at most `max_keys` of them
/// (the oldest are forgotten first once full).
pub struct Idempotency<T> {
    window: Duration,
    max_keys: usize,
    state: Mutex<State<T>>,
}

struct State<T> {
    entries: HashMap<Key, Entry<T>>,
    /// Completion order, for expiry and eviction.
    order: VecDeque<(Instant, Key)>,
}

impl<T: Clone> Idempotency<T> {
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            window,
            max_keys,
            state: Mutex::new(State { entries: HashMap::new(), order: VecDeque::new() }),
        }
    }

    /// Runs `publish` unless `key` already succeeded within the window, in which case
    /// its stored value is returned with `true`. Concurrent calls with one key wait
    /// for the first; a failed or cancelled first call lets the next one run.
    pub async fn run<F, Fut>(&self, app_id: &str, key: &str, publish: F) -> Result<(T, bool)>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if key.len() > MAX_KEY_BYTES {
            return Err(Error::InvalidArgument(format!(
                "idempotency_key: longer than {MAX_KEY_BYTES} bytes"
            )));
        }
        let key: Key = (Arc::from(app_id), key.to_string());
        let done = loop {
            let mut waiting = {
                let mut state = self.state.lock();
                self.expire(&mut state, Instant::now());
                match state.entries.get(&key) {
                    Some(Entry::Done(value)) => return Ok((value.clone(), true)),
                    Some(Entry::Pending(receiver)) => receiver.clone(),
                    None => {
                        self.make_room(&mut state)?;
                        let (sender, receiver) = watch::channel(());
                        state.entries.insert(key.clone(), Entry::Pending(receiver));
                        break sender;
                    }
                }
            };
            // Resolves when the first caller's sender is dropped (done, failed or
            // cancelled); then look again.
            let _ = waiting.changed().await;
        };

        let mut guard = PendingGuard { cache: self, key: Some(key), _done: done };
        let result = publish().await;
        if let Some(key) = guard.key.take() {
            let mut state = self.state.lock();
            match &result {
                Ok(value) => {
                    let at = Instant::now();
                    state.entries.insert(key.clone(), Entry::Done(value.clone()));
                    state.order.push_back((at, key));
                }
                Err(_) => {
                    state.entries.remove(&key);
                }
            }
        }
        result.map(|value| (value, false))
    }

    fn expire(&self, state: &mut State<T>, now: Instant) {
        while let Some((at, _)) = state.order.front() {
            if now.duration_since(*at) < self.window {
                break;
            }
            if let Some((_, key)) = state.order.pop_front() {
                state.entries.remove(&key);
            }
        }
    }

    fn make_room(&self, state: &mut State<T>) -> Result<()> {
        while state.entries.len() >= self.max_keys {
            match state.order.pop_front() {
                Some((_, key)) => {
                    state.entries.remove(&key);
                }
                None => {
                    return Err(Error::ResourceExhausted(format!(
                        "{} keyed publishes are in flight, the limit",
                        self.max_keys
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Removes a pending entry whose publish never completed (its future was dropped),
/// so the key is not stuck; dropping `_done` wakes the waiters either way.
struct PendingGuard<'a, T: Clone> {
    cache: &'a Idempotency<T>,
    key: Option<Key>,
    _done: watch::Sender<()>,
}

impl<T: Clone> Drop for PendingGuard<'_, T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.cache.state.lock().entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_repeated_key_returns_the_first_result_without_publishing() {
        let cache = Idempotency::new(Duration::from_secs(300), 100);
        let published = AtomicU32::new(0);
        let publish = || async {
            let n = published.fetch_add(1, Ordering::SeqCst);
            Ok(format!("id-{n}"))
        };
        assert_eq!(cache.run("app", "k", publish).await.unwrap(), ("id-0".to_string(), false));
        assert_eq!(cache.run("app", "k", publish).await.unwrap(), ("id-0".to_string(), true));
        assert_eq!(cache.run("other-app", "k", publish).await.unwrap(), ("id-1".to_string(), false));
        assert_eq!(published.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn keys_expire_after_the_window_and_failures_are_not_remembered() {
        let cache = Idempotency::new(Duration::from_secs(300), 100);
        let fail = || async { Err::<String, _>(Error::Unavailable("down".into())) };
        assert!(cache.run("app", "k", fail).await.is_err());
        let ok = || async { Ok("first".to_string()) };
        assert!(!cache.run("app", "k", ok).await.unwrap().1, "a failure is retried");
        let later = Instant::now() + Duration::from_secs(301);
        cache.expire(&mut cache.state.lock(), later);
        let again = || async { Ok("second".to_string()) };
        assert_eq!(cache.run("app", "k", again).await.unwrap(), ("second".to_string(), false));
    }

    #[tokio::test]
    async fn concurrent_duplicates_wait_for_the_first() {
        let cache = Arc::new(Idempotency::new(Duration::from_secs(300), 100));
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let cache = cache.clone();
            async move {
                cache
                    .run("app", "k", || async {
                        let _ = gate.await;
                        Ok("first".to_string())
                    })
                    .await
            }
        });
        tokio::task::yield_now().await;
        let second = tokio::spawn({
            let cache = cache.clone();
            async move { cache.run("app", "k", || async { Ok("second".to_string()) }).await }
        });
        tokio::task::yield_now().await;
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), ("first".to_string(), false));
        assert_eq!(second.await.unwrap().unwrap(), ("first".to_string(), true));
    }

    #[tokio::test]
    async fn full_cache_forgets_the_oldest_and_long_keys_are_refused() {
        let cache = Idempotency::new(Duration::from_secs(300), 2);
        for key in ["a", "b", "c"] {
            cache.run("app", key, || async { Ok(key.to_string()) }).await.unwrap();
        }
        assert!(
            !cache.run("app", "a", || async { Ok("new".to_string()) }).await.unwrap().1,
            "a was forgotten"
        );
        assert!(
            cache.run("app", "c", || async { Ok("new".to_string()) }).await.unwrap().1,
            "c is remembered"
        );
        let long = "x".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(
            cache.run("app", &long, || async { Ok(String::new()) }).await,
            Err(Error::InvalidArgument(_))
        ));
    }
}
