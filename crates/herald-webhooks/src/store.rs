//! Where webhook state lives: endpoints, recent delivery attempts and dead letters.
//! Redis in a cluster (`herald-redis`), memory in `herald dev`
//! ([`MemoryWebhookStore`]).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{
    endpoint::Endpoint,
    sign::{SignError, generate_secret},
};

/// A store failure is the backbone's: [`herald_backbone::Error::Unavailable`], with its
/// source; nothing changed, and the call may be retried.
pub type Result<T, E = herald_backbone::Error> = std::result::Result<T, E>;

/// Attempts kept per endpoint (the newest).
pub const ATTEMPTS_KEPT: usize = 1_000;
/// Dead letters kept per app (the newest).
pub const DEAD_LETTERS_KEPT: usize = 10_000;
/// How long attempts and dead letters are kept at most.
pub const RETENTION_MS: i64 = 14 * 24 * 3600 * 1000;

/// One delivery attempt, for `ListAttempts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub webhook_id: String,
    pub endpoint_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub time_ms: i64,
    /// 0: no response.
    pub status: u16,
    pub latency_ms: u32,
    pub response_excerpt: String,
    pub error: String,
}

/// A delivery that exhausted its retries (or whose endpoint is gone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub webhook_id: String,
    pub endpoint_id: String,
    pub failed_ms: i64,
    pub attempts: u32,
    pub last_error: String,
    pub event_types: Vec<String>,
    /// The `herald.v1.Delivery`, protobuf-encoded, to replay it.
    #[serde(with = "base64_bytes")]
    pub delivery: Vec<u8>,
}

/// Webhook state shared by the admin API and every dispatcher replica.
///
/// Contract: writes are visible to every reader once they return; `put_endpoint`
/// replaces the whole endpoint (last writer wins); attempts and dead letters are kept
/// newest first, at most [`ATTEMPTS_KEPT`] per endpoint and [`DEAD_LETTERS_KEPT`] per
/// app, for at most [`RETENTION_MS`].
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    async fn put_endpoint(&self, endpoint: &Endpoint) -> Result<()>;
    async fn get_endpoint(&self, app_id: &str, id: &str) -> Result<Option<Endpoint>>;
    async fn list_endpoints(&self, app_id: &str) -> Result<Vec<Endpoint>>;
    /// Returns whether it existed.
    async fn delete_endpoint(&self, app_id: &str, id: &str) -> Result<bool>;

    async fn record_attempt(&self, app_id: &str, attempt: &AttemptRecord) -> Result<()>;
    /// Newest first; only those of `webhook_id` when given.
    async fn attempts(
        &self,
        app_id: &str,
        endpoint_id: &str,
        webhook_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AttemptRecord>>;

    async fn put_dead_letter(&self, app_id: &str, dead: &DeadLetter) -> Result<()>;
    /// Newest first, those that failed at or after `since_ms`.
    async fn dead_letters(&self, app_id: &str, since_ms: i64, limit: usize) -> Result<Vec<DeadLetter>>;
    /// Removes and returns one (to replay it).
    async fn take_dead_letter(&self, app_id: &str, webhook_id: &str) -> Result<Option<DeadLetter>>;
}

/// Why a declared endpoint could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    #[error(transparent)]
    Store(#[from] herald_backbone::Error),
    /// No secret was declared and none could be generated.
    #[error(transparent)]
    Secret(#[from] SignError),
}

/// Writes an endpoint declared in the config file (`[[webhooks]]`), creating it or
/// replacing the stored one of the same app and id, and returns what was stored.
///
/// The declaration wins, except for what it cannot say: an existing endpoint keeps its
/// `created_ms` (a new one is created at `now_ms`), `updated_ms` becomes `now_ms`, and
/// an endpoint declared without a secret keeps its stored one, or gets a fresh one
/// ([`generate_secret`]) when it is new, so a Pusher-format endpoint can be switched to
/// Standard Webhooks later. Running it again with the same declaration changes only
/// `updated_ms`.
pub async fn upsert_declared(
    store: &dyn WebhookStore,
    mut endpoint: Endpoint,
    now_ms: i64,
) -> Result<Endpoint, DeclareError> {
    let existing = store.get_endpoint(&endpoint.app_id, &endpoint.id).await?;
    endpoint.created_ms = existing.as_ref().map_or(now_ms, |e| e.created_ms);
    endpoint.updated_ms = now_ms;
    if endpoint.secret.is_empty() {
        endpoint.secret = match existing {
            Some(e) => e.secret,
            None => generate_secret()?,
        };
    }
    store.put_endpoint(&endpoint).await?;
    Ok(endpoint)
}

/// The in-memory store of `herald dev` and tests.
#[derive(Default, Clone)]
pub struct MemoryWebhookStore {
    inner: Arc<Mutex<MemoryState>>,
}

#[derive(Default)]
struct MemoryState {
    endpoints: HashMap<String, Vec<Endpoint>>,
    attempts: HashMap<(String, String), VecDeque<AttemptRecord>>,
    dead: HashMap<String, VecDeque<DeadLetter>>,
}

#[async_trait]
impl WebhookStore for MemoryWebhookStore {
    async fn put_endpoint(&self, endpoint: &Endpoint) -> Result<()> {
        let mut state = self.inner.lock();
        let list = state.endpoints.entry(endpoint.app_id.clone()).or_default();
        match list.iter_mut().find(|e| e.id == endpoint.id) {
            Some(existing) => *existing = endpoint.clone(),
            None => list.push(endpoint.clone()),
        }
        Ok(())
    }

    async fn get_endpoint(&self, app_id: &str, id: &str) -> Result<Option<Endpoint>> {
        let state = self.inner.lock();
        Ok(state.endpoints.get(app_id).and_then(|l| l.iter().find(|e| e.id == id).cloned()))
    }

    async fn list_endpoints(&self, app_id: &str) -> Result<Vec<Endpoint>> {
        Ok(self.inner.lock().endpoints.get(app_id).cloned().unwrap_or_default())
    }

    async fn delete_endpoint(&self, app_id: &str, id: &str) -> Result<bool> {
        let mut state = self.inner.lock();
        let Some(list) = state.endpoints.get_mut(app_id) else {
            return Ok(false);
        };
        let before = list.len();
        list.retain(|e| e.id != id);
        Ok(list.len() != before)
    }

    async fn record_attempt(&self, app_id: &str, attempt: &AttemptRecord) -> Result<()> {
        let mut state = self.inner.lock();
        let list = state.attempts.entry((app_id.to_owned(), attempt.endpoint_id.clone())).or_default();
        list.push_front(attempt.clone());
        list.truncate(ATTEMPTS_KEPT);
        Ok(())
    }

    async fn attempts(
        &self,
        app_id: &str,
        endpoint_id: &str,
        webhook_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AttemptRecord>> {
        let state = self.inner.lock();
        let Some(list) = state.attempts.get(&(app_id.to_owned(), endpoint_id.to_owned())) else {
            return Ok(Vec::new());
        };
        Ok(list
            .iter()
            .filter(|a| webhook_id.is_none_or(|w| a.webhook_id == w))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn put_dead_letter(&self, app_id: &str, dead: &DeadLetter) -> Result<()> {
        let mut state = self.inner.lock();
        let list = state.dead.entry(app_id.to_owned()).or_default();
        list.retain(|d| d.webhook_id != dead.webhook_id);
        list.push_front(dead.clone());
        list.truncate(DEAD_LETTERS_KEPT);
        Ok(())
    }

    async fn dead_letters(&self, app_id: &str, since_ms: i64, limit: usize) -> Result<Vec<DeadLetter>> {
        let state = self.inner.lock();
        let Some(list) = state.dead.get(app_id) else {
            return Ok(Vec::new());
        };
        Ok(list.iter().filter(|d| d.failed_ms >= since_ms).take(limit).cloned().collect())
    }

    async fn take_dead_letter(&self, app_id: &str, webhook_id: &str) -> Result<Option<DeadLetter>> {
        let mut state = self.inner.lock();
        let Some(list) = state.dead.get_mut(app_id) else {
            return Ok(None);
        };
        let at = list.iter().position(|d| d.webhook_id == webhook_id);
        Ok(at.and_then(|at| list.remove(at)))
    }
}

mod base64_bytes {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(any(test, feature = "test-util"))]
pub mod conformance {
    //! The [`WebhookStore`] contract as a scenario, for every implementation.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::endpoint::{Format, new_endpoint_id};

    pub fn endpoint(app_id: &str, url: &str) -> Endpoint {
        let mut endpoint = Endpoint::new(
            new_endpoint_id(),
            app_id,
            url,
            Format::StandardWebhooks,
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        endpoint.channel_patterns = vec!["presence-*".into()];
        endpoint.created_ms = 1;
        endpoint.updated_ms = 1;
        endpoint
    }

    /// Attempt `n` of a delivery, made at `time_ms`.
    pub fn attempt(endpoint_id: &str, webhook_id: &str, n: u32, time_ms: i64) -> AttemptRecord {
        AttemptRecord {
            webhook_id: webhook_id.into(),
            endpoint_id: endpoint_id.into(),
            attempt: n,
            time_ms,
            status: 500,
            latency_ms: 3,
            response_excerpt: "oops".into(),
            error: String::new(),
        }
    }

    pub fn dead(webhook_id: &str, failed_ms: i64) -> DeadLetter {
        DeadLetter {
            webhook_id: webhook_id.into(),
            endpoint_id: "ep".into(),
            failed_ms,
            attempts: 8,
            last_error: "HTTP 500".into(),
            event_types: vec!["channel.occupied".into()],
            delivery: vec![1, 2, 3, 0, 255],
        }
    }

    pub async fn store_scenarios(store: &dyn WebhookStore) {
        let mut a = endpoint("app-1", "http://127.0.0.1:1/a");
        let b = endpoint("app-1", "http://127.0.0.1:1/b");
        let other = endpoint("app-2", "http://127.0.0.1:1/c");
        for e in [&a, &b, &other] {
            store.put_endpoint(e).await.unwrap();
        }
        let mut listed: Vec<String> =
            store.list_endpoints("app-1").await.unwrap().into_iter().map(|e| e.url).collect();
        listed.sort();
        assert_eq!(listed, ["http://127.0.0.1:1/a", "http://127.0.0.1:1/b"]);
        a.enabled = false;
        a.disabled_reason = "HTTP 410".into();
        store.put_endpoint(&a).await.unwrap();
        assert_eq!(store.get_endpoint("app-1", &a.id).await.unwrap(), Some(a.clone()));
        assert_eq!(store.get_endpoint("app-2", &a.id).await.unwrap(), None, "endpoints are per app");
        assert!(store.delete_endpoint("app-1", &b.id).await.unwrap());
        assert!(!store.delete_endpoint("app-1", &b.id).await.unwrap());
        assert_eq!(store.list_endpoints("app-1").await.unwrap().len(), 1);
        assert!(store.list_endpoints("nobody").await.unwrap().is_empty());

        for n in 1..=3 {
            store.record_attempt("app-1", &attempt(&a.id, "msg_1", n, i64::from(n))).await.unwrap();
        }
        store.record_attempt("app-1", &attempt(&a.id, "msg_2", 1, 1)).await.unwrap();
        let all = store.attempts("app-1", &a.id, None, 100).await.unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].webhook_id, "msg_2", "newest first");
        let one = store.attempts("app-1", &a.id, Some("msg_1"), 2).await.unwrap();
        assert_eq!(one.iter().map(|a| a.attempt).collect::<Vec<_>>(), [3, 2]);

        store.put_dead_letter("app-1", &dead("msg_old", 1_000)).await.unwrap();
        store.put_dead_letter("app-1", &dead("msg_new", 2_000)).await.unwrap();
        let listed = store.dead_letters("app-1", 0, 10).await.unwrap();
        assert_eq!(listed.iter().map(|d| d.webhook_id.as_str()).collect::<Vec<_>>(), ["msg_new", "msg_old"]);
        assert_eq!(listed[0], dead("msg_new", 2_000));
        assert_eq!(store.dead_letters("app-1", 1_500, 10).await.unwrap().len(), 1);
        assert_eq!(store.take_dead_letter("app-1", "msg_old").await.unwrap(), Some(dead("msg_old", 1_000)));
        assert_eq!(store.take_dead_letter("app-1", "msg_old").await.unwrap(), None);
        assert_eq!(store.dead_letters("app-1", 0, 10).await.unwrap().len(), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_conforms() {
        conformance::store_scenarios(&MemoryWebhookStore::default()).await;
    }

    #[tokio::test]
    async fn declared_endpoints_keep_their_creation_time_and_secret() {
        let store = MemoryWebhookStore::default();
        let mut declared = conformance::endpoint("app-1", "http://127.0.0.1:1/a");
        declared.secret = String::new();

        // New: created now, with a fresh secret.
        let first = upsert_declared(&store, declared.clone(), 1_000).await.unwrap();
        assert_eq!((first.created_ms, first.updated_ms), (1_000, 1_000));
        assert!(first.secret.starts_with("whsec_"), "{}", first.secret);
        assert_eq!(store.get_endpoint("app-1", &declared.id).await.unwrap(), Some(first.clone()));

        // Declared again, changed and still without a secret: the stored secret and
        // creation time stay, the declaration's fields win.
        declared.url = "http://127.0.0.1:1/b".into();
        let second = upsert_declared(&store, declared.clone(), 2_000).await.unwrap();
        assert_eq!((second.created_ms, second.updated_ms), (1_000, 2_000));
        assert_eq!(second.secret, first.secret);
        assert_eq!(second.url, "http://127.0.0.1:1/b");

        // A declared secret replaces the stored one.
        declared.secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into();
        let third = upsert_declared(&store, declared, 3_000).await.unwrap();
        assert_eq!(third.secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(third.created_ms, 1_000);
        assert_eq!(store.list_endpoints("app-1").await.unwrap(), vec![third]);
    }
}
