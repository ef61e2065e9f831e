//! From a channel event to the deliveries of the endpoints that want it, through a
//! short-lived cache of each app's endpoints.

use std::{collections::HashMap, sync::Arc, time::Duration};

use herald_backbone::LogRecord;
use herald_core::time::Backoff;
use herald_proto::v1::{ChannelEvent, Delivery};
use herald_telemetry::trace;
use parking_lot::Mutex;
use prost::Message as _;
// Tokio's clock, so tests can run the cache's time.
use tokio::time::Instant;

use herald_webhooks::{
    delivery::webhook_id,
    endpoint::{Endpoint, Format, Target, validate_url},
    filter::Filter,
    store::{self, WebhookStore},
};

use tracing::Instrument;

use super::{Dispatcher, Job, attempt, offsets::RecordAck};
use crate::format;

/// An endpoint as deliveries use it: its filter and its URL parsed once, when its
/// app's list is fetched (and again only when the endpoint changes).
pub(super) struct Route {
    pub(super) endpoint: Endpoint,
    pub(super) filter: Filter,
    /// The URL, or why it is not one a delivery can go to (its deliveries are
    /// dead-lettered with that reason).
    pub(super) target: Result<Target, String>,
}

impl Route {
    fn new(endpoint: Endpoint) -> Self {
        Self { filter: endpoint.filter(), target: validate_url(&endpoint.url), endpoint }
    }
}

/// An app's endpoints, as fetched together.
pub(super) type Routes = Arc<[Arc<Route>]>;

/// The endpoint lists of apps, each kept for `ttl` after it was fetched.
///
/// An app's list is fetched by one caller at a time: the others wait for that fetch
/// and use its result, so a burst of events of an app whose entry expired costs one
/// store read, not one per event.
pub(super) struct EndpointCache {
    ttl: Duration,
    apps: Mutex<HashMap<String, Arc<AppEndpoints>>>,
}

#[derive(Default)]
struct AppEndpoints {
    /// Held while the list is fetched.
    fetching: tokio::sync::Mutex<()>,
    cached: Mutex<Option<(Instant, Routes)>>,
}

impl AppEndpoints {
    fn fresh(&self, ttl: Duration) -> Option<Routes> {
        match &*self.cached.lock() {
            Some((fetched, list)) if fetched.elapsed() < ttl => Some(list.clone()),
            _ => None,
        }
    }
}

impl EndpointCache {
    pub(super) fn new(ttl: Duration) -> Self {
        Self { ttl, apps: Mutex::new(HashMap::new()) }
    }

    /// Every endpoint of the app (enabled or not), at most `ttl` old.
    pub(super) async fn list(&self, store: &dyn WebhookStore, app_id: &str) -> store::Result<Routes> {
        let entry = self.apps.lock().entry(app_id.to_owned()).or_default().clone();
        if let Some(list) = entry.fresh(self.ttl) {
            return Ok(list);
        }
        let _fetching = entry.fetching.lock().await;
        if let Some(list) = entry.fresh(self.ttl) {
            return Ok(list);
        }
        let previous = entry.cached.lock().as_ref().map(|(_, list)| list.clone());
        let list: Routes = store
            .list_endpoints(app_id)
            .await?
            .into_iter()
            .map(|endpoint| {
                // An unchanged endpoint keeps its parsed route.
                previous
                    .iter()
                    .flat_map(|list| list.iter())
                    .find(|route| route.endpoint == endpoint)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Route::new(endpoint)))
            })
            .collect();
        *entry.cached.lock() = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// One endpoint of the app: `Ok(None)` when the app's list does not have it.
    pub(super) async fn get(
        &self,
        store: &dyn WebhookStore,
        app_id: &str,
        id: &str,
    ) -> store::Result<Option<Arc<Route>>> {
        let list = self.list(store, app_id).await?;
        Ok(list.iter().find(|route| route.endpoint.id == id).cloned())
    }

    /// Forgets the app's list (after the dispatcher changed one of its endpoints).
    pub(super) fn invalidate(&self, app_id: &str) {
        if let Some(entry) = self.apps.lock().get(app_id) {
            *entry.cached.lock() = None;
        }
    }
}

impl Dispatcher {
    /// Turns one event record into deliveries for the endpoints that want it.
    pub(super) async fn route_event(self: &Arc<Self>, record: &LogRecord, ack: Arc<RecordAck>) {
        let event = match ChannelEvent::decode(record.value.as_ref()) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(error = %e, "undecodable channel event skipped");
                return;
            }
        };
        let span = trace::child_of(attempt::event_trace(&event).as_ref(), || {
            tracing::info_span!(
                target: trace::TARGET,
                "events.consume",
                otel.kind = "consumer",
                event_id = %event.id,
                partition = record.partition,
                offset = record.offset,
                deliveries = tracing::field::Empty,
            )
        });
        self.route_event_in(event, ack, &span).instrument(span.clone()).await;
    }

    async fn route_event_in(
        self: &Arc<Self>,
        event: ChannelEvent,
        ack: Arc<RecordAck>,
        span: &tracing::Span,
    ) {
        match self.endpoints.list(self.store.as_ref(), &event.app_id).await {
            Ok(routes) => {
                let deliveries = self.route_to(&routes, &event, ack);
                span.record("deliveries", deliveries);
            }
            Err(e) => {
                // Without the endpoint list nothing can be decided: keep the record
                // unfinished (it is read again after a restart) and try again.
                tracing::warn!(error = %e, "endpoint list unavailable; retrying the event");
                let dispatcher = self.clone();
                self.tasks.spawn(async move {
                    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
                    while dispatcher.pause(&mut backoff).await {
                        if let Ok(routes) =
                            dispatcher.endpoints.list(dispatcher.store.as_ref(), &event.app_id).await
                        {
                            dispatcher.route_to(&routes, &event, ack);
                            return;
                        }
                    }
                });
            }
        }
    }

    /// Hands the event to each endpoint that wants it; returns how many do.
    fn route_to(self: &Arc<Self>, routes: &[Arc<Route>], event: &ChannelEvent, ack: Arc<RecordAck>) -> usize {
        let mut deliveries = 0;
        for route in routes {
            let endpoint = &route.endpoint;
            if !endpoint.enabled || !format::wants(endpoint, &route.filter, event) {
                continue;
            }
            match endpoint.format {
                Format::StandardWebhooks => {
                    let delivery = Delivery {
                        id: webhook_id(&event.id, &endpoint.id),
                        app_id: event.app_id.clone(),
                        endpoint_id: endpoint.id.clone(),
                        created_ms: event.time_ms,
                        events: vec![event.clone()],
                        ..Delivery::default()
                    };
                    self.enqueue(Job { delivery, _acks: vec![ack.clone()] });
                }
                Format::Pusher => self.gather(endpoint, event.clone(), ack.clone()),
            }
            deliveries += 1;
        }
        deliveries
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use herald_webhooks::store::{AttemptRecord, DeadLetter, MemoryWebhookStore};

    use super::*;

    /// The memory store, counting the lists asked of it.
    #[derive(Default)]
    struct Counting {
        inner: MemoryWebhookStore,
        lists: AtomicUsize,
    }

    #[async_trait]
    impl WebhookStore for Counting {
        async fn put_endpoint(&self, endpoint: &Endpoint) -> store::Result<()> {
            self.inner.put_endpoint(endpoint).await
        }
        async fn get_endpoint(&self, app_id: &str, id: &str) -> store::Result<Option<Endpoint>> {
            self.inner.get_endpoint(app_id, id).await
        }
        async fn list_endpoints(&self, app_id: &str) -> store::Result<Vec<Endpoint>> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            self.inner.list_endpoints(app_id).await
        }
        async fn delete_endpoint(&self, app_id: &str, id: &str) -> store::Result<bool> {
            self.inner.delete_endpoint(app_id, id).await
        }
        async fn record_attempt(&self, app_id: &str, attempt: &AttemptRecord) -> store::Result<()> {
            self.inner.record_attempt(app_id, attempt).await
        }
        async fn attempts(
            &self,
            app_id: &str,
            endpoint_id: &str,
            webhook_id: Option<&str>,
            limit: usize,
        ) -> store::Result<Vec<AttemptRecord>> {
            self.inner.attempts(app_id, endpoint_id, webhook_id, limit).await
        }
        async fn put_dead_letter(&self, app_id: &str, dead: &DeadLetter) -> store::Result<()> {
            self.inner.put_dead_letter(app_id, dead).await
        }
        async fn dead_letters(
            &self,
            app_id: &str,
            since_ms: i64,
            limit: usize,
        ) -> store::Result<Vec<DeadLetter>> {
            self.inner.dead_letters(app_id, since_ms, limit).await
        }
        async fn take_dead_letter(
            &self,
            app_id: &str,
            webhook_id: &str,
        ) -> store::Result<Option<DeadLetter>> {
            self.inner.take_dead_letter(app_id, webhook_id).await
        }
    }

    fn endpoint(id: &str, url: &str) -> Endpoint {
        Endpoint::new(id.into(), "a", url, Format::StandardWebhooks, "")
    }

    #[tokio::test(start_paused = true)]
    async fn one_fetch_per_app_and_urls_parsed_once() {
        let store = Counting::default();
        store.put_endpoint(&endpoint("ep_1", "https://example.com:8443/in?x=1")).await.unwrap();
        store.put_endpoint(&endpoint("ep_2", "ftp://example.com/")).await.unwrap();
        let cache = EndpointCache::new(Duration::from_secs(1));
        // Concurrent misses share one fetch.
        let (a, b) = tokio::join!(cache.list(&store, "a"), cache.list(&store, "a"));
        assert_eq!(store.lists.load(Ordering::SeqCst), 1);
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.len(), 2);
        assert!(Arc::ptr_eq(&a[0], &b[0]));
        let good = cache.get(&store, "a", "ep_1").await.unwrap().unwrap();
        let target = good.target.as_ref().unwrap();
        assert_eq!(
            (target.https, target.host.as_str(), target.port, target.path.as_str()),
            (true, "example.com", 8443, "/in?x=1")
        );
        let bad = cache.get(&store, "a", "ep_2").await.unwrap().unwrap();
        assert!(bad.target.as_ref().unwrap_err().contains("http"), "{:?}", bad.target.as_ref().err());
        assert!(cache.get(&store, "a", "ep_3").await.unwrap().is_none());
        assert_eq!(store.lists.load(Ordering::SeqCst), 1, "still fresh");

        // Expired: fetched again; an unchanged endpoint keeps its parsed route.
        tokio::time::advance(Duration::from_secs(2)).await;
        let again = cache.get(&store, "a", "ep_1").await.unwrap().unwrap();
        assert_eq!(store.lists.load(Ordering::SeqCst), 2);
        assert!(Arc::ptr_eq(&good, &again));
        // A changed one is parsed anew; invalidation forces the fetch.
        store.put_endpoint(&endpoint("ep_1", "http://example.org/")).await.unwrap();
        cache.invalidate("a");
        let changed = cache.get(&store, "a", "ep_1").await.unwrap().unwrap();
        assert_eq!(store.lists.load(Ordering::SeqCst), 3);
        assert_eq!(changed.target.as_ref().unwrap().host, "example.org");
    }
}
