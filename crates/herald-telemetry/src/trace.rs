//! Traces: the spans Herald makes along an event's way (publish, the fan-out on each
//! edge, the dispatcher's consume and each webhook attempt), exported over OTLP/gRPC
//! when `[telemetry] otlp_endpoint` is set, and the W3C trace context that ties them
//! into the publisher's trace across processes.
//!
//! Every span of Herald's is made with the target [`TARGET`] and only through the
//! helpers here, which return [`Span::none`] while tracing is off: a disabled
//! callsite costs one relaxed load. Connections get no span (there are millions);
//! their events stay metrics and logs.
//!
//! How a span joins a trace: [`api_span`] for a request from outside (the caller's
//! `traceparent` becomes the parent, or the sampler starts a trace), [`child_of`]
//! for work done for a publication elsewhere (the fan-out on another edge, a webhook
//! attempt), which is skipped when the publisher's trace is not sampled. What is
//! handed on is [`context_of`] a span, or [`current`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use herald_core::TraceContext;
use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span Herald exports (and only those reach the exporter).
pub const TARGET: &str = "herald::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// `sample_ratio` (the bits of an `f64`).
static SAMPLE_RATIO: AtomicU64 = AtomicU64::new(0);

/// Whether spans are exported (an OTLP endpoint is configured).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn enable(sample_ratio: f64) {
    SAMPLE_RATIO.store(sample_ratio.to_bits(), Ordering::Relaxed);
    ENABLED.store(true, Ordering::Relaxed);
}

/// A span for a request that came from outside (an API call): `make` builds it, the
/// caller's context `parent` (if any) becomes its parent. The sampling decision is
/// taken here, before any span exists: a caller's trace follows its sampled flag, a
/// new one is recorded with probability `sample_ratio`. An unrecorded request gets
/// `Span::none()` (and so do its children, see [`child`]): at 1 % sampling, 99 % of
/// publishes cost no span at all. `Span::none()` when off.
pub fn api_span(parent: Option<&TraceContext>, make: impl FnOnce() -> Span) -> Span {
    if !enabled() {
        return Span::none();
    }
    match parent {
        Some(parent) if parent.sampled() => {
            let span = make();
            set_parent(&span, parent);
            span
        }
        Some(_) => Span::none(),
        None if fastrand::f64() < f64::from_bits(SAMPLE_RATIO.load(Ordering::Relaxed)) => make(),
        None => Span::none(),
    }
}

/// A span for a step of the current span's work (`validate`, `broker.publish`): only
/// inside one of Herald's recorded spans, so an unrecorded request makes none.
pub fn child(make: impl FnOnce() -> Span) -> Span {
    if !enabled() {
        return Span::none();
    }
    let current = Span::current();
    match current.metadata() {
        Some(metadata) if metadata.target() == TARGET => make(),
        _ => Span::none(),
    }
}

/// A span for work done on behalf of a publication traced elsewhere: only when its
/// trace is sampled (an unsampled one would be dropped by the sampler anyway, after
/// costing the span).
pub fn child_of(parent: Option<&TraceContext>, make: impl FnOnce() -> Span) -> Span {
    match parent {
        Some(parent) if enabled() && parent.sampled() => {
            let span = make();
            set_parent(&span, parent);
            span
        }
        _ => Span::none(),
    }
}

/// The context to hand on for work done inside `span`: `None` when tracing is off
/// or the span is disabled.
pub fn context_of(span: &Span) -> Option<TraceContext> {
    if !enabled() || span.is_disabled() {
        return None;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut headers = Headers::default();
    TraceContextPropagator::new().inject_context(&context, &mut headers);
    TraceContext::from_headers(headers.traceparent.as_deref(), headers.tracestate.as_deref())
}

/// [`context_of`] the current span.
pub fn current() -> Option<TraceContext> {
    if !enabled() {
        return None;
    }
    context_of(&Span::current())
}

/// The trace and span ids (hex) of the current span, for log lines.
pub(crate) fn current_ids() -> Option<(String, String)> {
    current().map(|context| (context.trace_id().to_owned(), context.parent_id().to_owned()))
}

fn set_parent(span: &Span, parent: &TraceContext) {
    let headers = Headers {
        traceparent: Some(parent.traceparent().to_owned()),
        tracestate: parent.tracestate().map(str::to_owned),
    };
    let context = TraceContextPropagator::new().extract(&headers);
    // Fails only for a disabled span (nothing to parent) or one already started.
    let _ = span.set_parent(context);
}

/// The two headers of the W3C propagator, as its carrier.
#[derive(Default)]
struct Headers {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Extractor for Headers {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent.as_deref(),
            "tracestate" => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}
