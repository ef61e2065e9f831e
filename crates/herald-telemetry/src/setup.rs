//! The process's `tracing` subscriber: log lines to stderr (text or JSON, filtered by
//! `RUST_LOG`), and, when an OTLP endpoint is configured, Herald's spans (target
//! [`TARGET`]) to an OpenTelemetry collector over gRPC.

use std::{fmt, time::Duration};

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider},
};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::Targets,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

use crate::trace::{self, TARGET};

/// `[telemetry]`: where spans go, and which.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// An OTLP/gRPC endpoint (`http://otel-collector:4317`); `None`: no spans are
    /// made or exported.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of every span.
    pub service_name: String,
    /// The fraction of traces started here that are recorded (0.0 to 1.0). A trace
    /// the caller started follows the caller's decision (its `traceparent` flag).
    pub sample_ratio: f64,
    /// More resource attributes (`deployment.environment = "prod"`).
    pub resource_attributes: Vec<(String, String)>,
    /// Longest wait for the collector to take one batch.
    pub export_timeout: Duration,
    /// Spans that may wait for export; more are dropped (and the SDK logs it), so a
    /// slow or absent collector never costs unbounded memory.
    pub max_queue_size: usize,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "herald".into(),
            sample_ratio: 1.0,
            resource_attributes: Vec::new(),
            export_timeout: Duration::from_secs(10),
            max_queue_size: 2_048,
        }
    }
}

impl TracingConfig {
    pub fn validate(&self, errors: &mut Vec<String>) {
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            errors.push(format!(
                "telemetry.otlp_endpoint: {endpoint:?} must be an http:// or https:// URL (OTLP over gRPC)"
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            errors.push(format!("telemetry.sample_ratio: {} is not between 0.0 and 1.0", self.sample_ratio));
        }
        if self.service_name.is_empty() {
            errors.push("telemetry.service_name: must not be empty".into());
        }
        if self.max_queue_size == 0 {
            errors.push("telemetry.max_queue_size: must be at least 1".into());
        }
    }
}

/// The installed exporter, flushed and stopped by [`Telemetry::shutdown`].
#[must_use = "spans still queued are lost unless the telemetry is shut down"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is queued (within the export timeout) and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "spans not exported at shutdown");
        }
    }
}

/// Installs the subscriber: logs to stderr filtered by `RUST_LOG` (default `info`),
/// as JSON with `json` (with `trace_id` and `span_id` inside a traced span); and with
/// an OTLP endpoint, the span exporter, described by `resource` (role, node id) and
/// `config.resource_attributes`. Needs a Tokio runtime (the exporter's gRPC client
/// runs on it) when exporting. Later calls install nothing.
pub fn init(json: bool, config: &TracingConfig, resource: Vec<(&'static str, String)>) -> Telemetry {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Herald's spans are for the exporter, not for log lines (their fields would be
    // formatted on every publish): off in the log unless `RUST_LOG` names them.
    let named = std::env::var("RUST_LOG").is_ok_and(|v| v.contains(TARGET));
    if !named && let Ok(directive) = format!("{TARGET}=off").parse() {
        filter = filter.add_directive(directive);
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Its fallback for a failed write is `eprintln!`, which panics when stderr is
    // gone (a closed pipe to a log shipper): the panic would kill whichever task was
    // logging. A lost log line is the lesser evil.
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    let logs = if json {
        logs.json()
            .event_format(WithTraceIds(tracing_subscriber::fmt::format().json()))
            .with_filter(filter)
            .boxed()
    } else {
        logs.with_filter(filter).boxed()
    };
    let provider =
        config.otlp_endpoint.as_deref().and_then(|endpoint| match provider(endpoint, config, resource) {
            Ok(provider) => Some(provider),
            Err(e) => {
                eprintln!("herald: traces are not exported: {e}");
                None
            }
        });
    // Without an exporter no layer wants Herald's spans, so they are never made (an
    // absent `Option` layer would claim an interest in every callsite).
    let installed = match &provider {
        Some(provider) => {
            let spans = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("herald"))
                .with_threads(false)
                .with_filter(Targets::new().with_target(TARGET, Level::INFO));
            tracing_subscriber::registry().with(logs).with(spans).try_init().is_ok()
        }
        None => tracing_subscriber::registry().with(logs).try_init().is_ok(),
    };
    if installed && provider.is_some() {
        trace::enable(config.sample_ratio);
    }
    Telemetry { provider }
}

fn provider(
    endpoint: &str,
    config: &TracingConfig,
    resource: Vec<(&'static str, String)>,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(config.export_timeout)
        .build()?;
    let batches = BatchConfigBuilder::default().with_max_queue_size(config.max_queue_size).build();
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches).build();
    let attributes = resource
        .into_iter()
        .map(|(key, value)| KeyValue::new(key, value))
        .chain(config.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())));
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attributes(attributes)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        // Sampling is decided before a span is made (`trace::api_span`): every span that
        // exists is recorded.
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .build())
}

/// The JSON log format, with the current span's `trace_id` and `span_id` added to
/// every line logged inside one of Herald's traced spans, so a log line leads to its
/// trace and back.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = trace::current_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.rfind('}') {
            Some(end) => write!(
                writer,
                "{},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"{}",
                &line[..end],
                &line[end..]
            ),
            None => writer.write_str(&line),
        }
    }
}
