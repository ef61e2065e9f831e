//! One attempt of a delivery and its consequence: done, the next retry tier, the dead
//! letters, or (410) the endpoint disabled.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use herald_core::{
    TraceContext,
    time::{Backoff, now_ms},
};
use herald_proto::v1::{ChannelEvent, Delivery};
use herald_telemetry::{Metric, trace};
use prost::Message as _;
use tokio::sync::mpsc;
use tracing::Instrument;

use herald_webhooks::{
    delivery::encode_delivery,
    endpoint::Endpoint,
    store::{AttemptRecord, DeadLetter, WebhookStore},
};

use super::{Dispatcher, Job, routing::Route};
use crate::{
    client::{Response, SendError},
    format,
    schedule::parse_retry_after,
};

/// Retries of a write that must happen (an append to a topic, a dead letter in the
/// store): from this, doubling up to [`HAND_OVER_MAX`].
const HAND_OVER_FIRST: Duration = Duration::from_millis(100);
const HAND_OVER_MAX: Duration = Duration::from_secs(10);

/// What an attempt came to, decided once; the attempt's label, record and consequence
/// all follow from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// A 2xx answer.
    Delivered,
    /// 410 Gone: the receiver says the endpoint is no more.
    Gone,
    /// Any other answer, or none (connect, TLS, timeout): tried again on the schedule,
    /// or after the receiver's `Retry-After` (429, 503) when it gave one.
    Failed { retry_after: Option<Duration> },
    /// The address is refused by the SSRF policy; tried again like a failure (DNS may
    /// change), but counted apart.
    Refused,
}

impl Outcome {
    fn of(result: &Result<Response, SendError>, dispatcher: &Dispatcher) -> Self {
        match result {
            Ok(response) if response.status.is_success() => Self::Delivered,
            Ok(response) if response.status == http::StatusCode::GONE => Self::Gone,
            Ok(response) => Self::Failed {
                retry_after: matches!(response.status.as_u16(), 429 | 503)
                    .then(|| response.headers.get(http::header::RETRY_AFTER))
                    .flatten()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
                    .map(|d| dispatcher.config.retry_after.clamp(d)),
            },
            Err(e) if e.is_refused() => Self::Refused,
            Err(_) => Self::Failed { retry_after: None },
        }
    }

    /// The `outcome` label of the attempts counter.
    fn label(&self) -> &'static str {
        match self {
            Self::Delivered => "success",
            Self::Gone => "gone",
            Self::Failed { .. } => "failure",
            Self::Refused => "refused",
        }
    }
}

/// The trace context the delivery's (first) event was published with.
fn published_trace(delivery: &Delivery) -> Option<TraceContext> {
    event_trace(delivery.events.first()?)
}

/// The trace context an event was published with.
pub(super) fn event_trace(event: &ChannelEvent) -> Option<TraceContext> {
    let state = (!event.tracestate.is_empty()).then_some(event.tracestate.as_str());
    TraceContext::from_headers(Some(&event.traceparent), state)
}

/// The span of one attempt, a child of the publisher's span when its trace is sampled.
fn attempt_span(published: Option<&TraceContext>, delivery: &Delivery, endpoint: &Endpoint) -> tracing::Span {
    trace::child_of(published, || {
        tracing::info_span!(
            target: trace::TARGET,
            "webhook.attempt",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            webhook_id = %delivery.id,
            endpoint_id = %endpoint.id,
            attempt = delivery.attempt,
            events = delivery.events.len(),
            status = tracing::field::Empty,
            outcome = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
            error = tracing::field::Empty,
        )
    })
}

impl Dispatcher {
    /// One attempt of a job, and what follows from its outcome.
    pub(super) async fn attempt(self: Arc<Self>, mut job: Job, route: Arc<Route>) {
        let delivery = &job.delivery;
        let endpoint = &route.endpoint;
        if !endpoint.enabled {
            return self.dead_letter(job, "the endpoint is disabled".into()).await;
        }
        let Some(app) = self.apps.by_id(&delivery.app_id) else {
            tracing::info!(app = %delivery.app_id, "app removed: delivery dropped");
            return;
        };
        let target = match &route.target {
            Ok(target) => target,
            Err(e) => return self.dead_letter(job, e.clone()).await,
        };
        let mut prepared = match format::prepare(delivery, endpoint, app, now_ms()) {
            Ok(prepared) => prepared,
            Err(e) => return self.dead_letter(job, e).await,
        };
        job.delivery.attempt += 1;
        // A span of the publisher's trace; the receiver continues it from the
        // `traceparent` header (the publisher's own when Herald does not trace).
        let published = published_trace(&job.delivery);
        let span = attempt_span(published.as_ref(), &job.delivery, endpoint);
        if let Some(trace) = trace::context_of(&span).or(published) {
            prepared.headers.push(("traceparent", trace.traceparent().to_owned()));
            if let Some(state) = trace.tracestate() {
                prepared.headers.push(("tracestate", state.to_owned()));
            }
        }
        let started = Instant::now();
        // Boxed: the request future is large, and this one is moved into a task.
        let result = Box::pin(self.client.post(target, prepared.headers, prepared.body))
            .instrument(span.clone())
            .await;
        let latency = started.elapsed();
        let outcome = Outcome::of(&result, &self);
        let (status, response_excerpt, error) = match result {
            Ok(response) => {
                let status = response.status.as_u16();
                let error = if response.status.is_success() || outcome == Outcome::Gone {
                    String::new()
                } else {
                    format!("HTTP {status}")
                };
                (status, response.excerpt, error)
            }
            Err(e) => (0, String::new(), e.to_string()),
        };
        metrics::counter!(Metric::WebhookAttempts.name(), "outcome" => outcome.label()).increment(1);
        if !span.is_disabled() {
            span.record("status", status);
            span.record("outcome", outcome.label());
            span.record("latency_ms", latency.as_millis() as u64);
            if outcome != Outcome::Delivered {
                span.record("otel.status_code", "ERROR");
                span.record("error", error.as_str());
            }
        }
        self.record_attempt(
            job.delivery.app_id.clone(),
            AttemptRecord {
                webhook_id: job.delivery.id.clone(),
                endpoint_id: endpoint.id.clone(),
                attempt: job.delivery.attempt,
                time_ms: now_ms(),
                status,
                latency_ms: u32::try_from(latency.as_millis()).unwrap_or(u32::MAX),
                response_excerpt,
                error: error.clone(),
            },
        );
        // What follows is part of the attempt's span (its log lines carry its ids).
        let consequence = async {
            if outcome != Outcome::Delivered {
                tracing::debug!(webhook_id = %job.delivery.id, attempt = job.delivery.attempt, status, %error, "webhook attempt failed");
            }
            match outcome {
                Outcome::Delivered => {
                    let age = (now_ms() - job.delivery.created_ms).max(0) as f64 / 1000.0;
                    metrics::histogram!(Metric::WebhookLatency.name()).record(age);
                }
                Outcome::Gone => {
                    self.disable(endpoint, "the endpoint answered 410 Gone").await;
                    self.dead_letter(job, "HTTP 410 Gone: endpoint disabled".into()).await;
                }
                Outcome::Failed { retry_after } => self.retry(job, error, retry_after).await,
                Outcome::Refused => self.retry(job, error, None).await,
            }
        };
        consequence.instrument(span).await;
    }

    /// Queues an attempt record for the store; dropped (and logged) when the writer is
    /// behind or gone (after shutdown).
    fn record_attempt(&self, app_id: String, record: AttemptRecord) {
        if let Some(attempts) = self.attempts.lock().as_ref()
            && attempts.try_send((app_id, record)).is_err()
        {
            tracing::warn!("attempt records are backing up: one dropped");
        }
    }

    /// After a failed attempt: the next retry tier, or the dead letters when the
    /// schedule is exhausted.
    async fn retry(&self, mut job: Job, error: String, retry_after: Option<Duration>) {
        let Some(delay) = self.config.retry.delay_after(job.delivery.attempt) else {
            return self.dead_letter(job, error).await;
        };
        let delay = retry_after.unwrap_or(delay);
        job.delivery.due_ms = now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        job.delivery.last_error = error;
        let tier = (job.delivery.attempt as usize).saturating_sub(1).min(self.topics.retries.len() - 1);
        metrics::counter!(Metric::WebhookRetries.name(), "reason" => "failure").increment(1);
        self.hand_over(&self.topics.retries[tier], &job.delivery).await;
    }

    /// Parks a job (full queue, long rate-limit wait) without counting an attempt.
    pub(super) fn park(self: &Arc<Self>, mut job: Job, due_ms: i64, reason: &'static str) {
        job.delivery.due_ms = due_ms;
        metrics::counter!(Metric::WebhookRetries.name(), "reason" => reason).increment(1);
        let dispatcher = self.clone();
        self.tasks.spawn(async move {
            dispatcher.hand_over(&dispatcher.topics.parked, &job.delivery).await;
            drop(job);
        });
    }

    async fn dead_letter(&self, mut job: Job, error: String) {
        job.delivery.failed_ms = now_ms();
        job.delivery.last_error = error.clone();
        metrics::counter!(Metric::WebhookDeadLetters.name()).increment(1);
        tracing::info!(webhook_id = %job.delivery.id, endpoint = %job.delivery.endpoint_id, %error, "dead-lettered");
        if !self.hand_over(&self.topics.dead, &job.delivery).await {
            return;
        }
        let dead = DeadLetter {
            webhook_id: job.delivery.id.clone(),
            endpoint_id: job.delivery.endpoint_id.clone(),
            failed_ms: job.delivery.failed_ms,
            attempts: job.delivery.attempt,
            last_error: error,
            event_types: job
                .delivery
                .events
                .iter()
                .filter_map(format::event_type)
                .map(|t| t.as_str().to_owned())
                .collect(),
            delivery: job.delivery.encode_to_vec(),
        };
        let mut backoff = Backoff::new(HAND_OVER_FIRST, HAND_OVER_MAX);
        while let Err(e) = self.store.put_dead_letter(&job.delivery.app_id, &dead).await {
            tracing::warn!(error = %e, "could not record a dead letter; retrying");
            if !self.pause(&mut backoff).await {
                return;
            }
        }
    }

    /// Appends a delivery to a topic, retrying until it is durable: the records it
    /// finishes stay unfinished until then. False when the dispatcher halted first.
    async fn hand_over(&self, topic: &str, delivery: &Delivery) -> bool {
        let mut backoff = Backoff::new(HAND_OVER_FIRST, HAND_OVER_MAX);
        while let Err(e) = self.log.append(topic, vec![encode_delivery(delivery)]).await {
            tracing::warn!(error = %e, topic, "could not hand a delivery over; retrying");
            if !self.pause(&mut backoff).await {
                return false;
            }
        }
        true
    }

    /// Waits out one step of `backoff`: false when the dispatcher halted meanwhile
    /// (the write is abandoned; its records are never committed).
    pub(super) async fn pause(&self, backoff: &mut Backoff) -> bool {
        tokio::select! {
            () = backoff.wait() => true,
            () = self.halt.cancelled() => false,
        }
    }

    async fn disable(&self, endpoint: &Endpoint, reason: &str) {
        let mut disabled = endpoint.clone();
        disabled.enabled = false;
        disabled.disabled_reason = reason.to_owned();
        disabled.updated_ms = now_ms();
        if let Err(e) = self.store.put_endpoint(&disabled).await {
            tracing::warn!(error = %e, "could not disable an endpoint");
        }
        self.endpoints.invalidate(&endpoint.app_id);
        tracing::warn!(endpoint = %endpoint.id, app = %endpoint.app_id, reason, "endpoint disabled");
    }
}

/// Writes attempt records to the store, one after another, until every sender is gone
/// and the queue is empty.
pub(super) async fn write_attempts(
    store: Arc<dyn WebhookStore>,
    mut records: mpsc::Receiver<(String, AttemptRecord)>,
) {
    while let Some((app_id, record)) = records.recv().await {
        if let Err(e) = store.record_attempt(&app_id, &record).await {
            tracing::warn!(error = %e, "could not record a delivery attempt");
        }
    }
}
