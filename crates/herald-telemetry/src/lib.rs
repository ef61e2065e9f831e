//! Logs, metrics and traces for every Herald role: one place that names each metric,
//! installs the Prometheus recorder and the tracing subscriber with its span exporter
//! ([`init`], [`trace`]), and serves them on the
//! operations listener (`/healthz`, `/readyz`, `/metrics`, see [`serve_ops`]) that
//! every role binds with [`bind`] and accepts on with [`accept`].
//!
//! # Labels are bounded by construction
//!
//! Every label value is one of a fixed set written in Herald's code (a `&'static str`
//! literal, or a bucket computed from a closed enum), documented on its [`Metric`]
//! variant. Never a value that a client, a publisher or an app chooses or that grows
//! with traffic: no channel, event name, user id, socket id, endpoint URL or id, app
//! id, error message, or a number taken from the wire (a close code a client sent is
//! bucketed first). Each distinct label set is a time series that the recorder keeps
//! for the life of the process and every scrape returns, so an unbounded label is
//! both a memory leak and a way for anyone to flood the monitoring system.
//!
//! Apps are not a label either (no metric has one today): the config fixes the set
//! of apps, but one deployment may serve thousands of tenants, and every metric
//! would be multiplied by that. Per-app figures belong in the APIs that already
//! scope by app (channel info, delivery attempts). Were per-app series ever needed,
//! they would be opt-in, for apps the operator lists in the config, with every other
//! app counted under one `other` value; never an id taken from a request.

pub mod listen;
mod ops;
mod setup;
pub mod trace;

pub use listen::{accept, bind};
pub use ops::{Readiness, serve_ops};
pub use setup::{Telemetry, TracingConfig, init};

pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Every metric Herald records. Names are stable: dashboards depend on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Gauge: open WebSocket connections.
    Connections,
    /// Counter: WebSocket connections accepted since start.
    ConnectionsAccepted,
    /// Counter: connections turned away at once because the process was out of file
    /// descriptors (so their clients reconnect elsewhere instead of waiting in the
    /// accept queue), label `listener`.
    ConnectionsShed,
    /// Gauge: edge listeners closed because the edge holds `server.max_connections`
    /// (it left its port to the other edges and says not ready until down to 95%).
    ListenersFull,
    /// Gauge: when the certificate a TLS listener presents expires (Unix seconds),
    /// label `listener` (`edge`, `grpc`); updated when a renewed one is loaded.
    TlsCertificateExpiry,
    /// Counter: TLS handshakes that did not complete, labels `listener` (`edge`,
    /// `grpc`) and `reason`: `error` (refused or broken: a client that does not trust
    /// the certificate, no or a bad client certificate, not TLS at all) or `timeout`.
    TlsHandshakeFailures,
    /// Counter: WebSocket connections closed, label `code`: the close code bucketed
    /// into a bounded set, since clients choose the code of closes they start:
    /// `normal` (1000, 1001), `protocol_error` (1002, 1003), `abnormal` (1006: no
    /// close frame, the connection dropped), `invalid_payload` (1007),
    /// `message_too_large` (1009), `try_again_later` (1013: the node's unfinished
    /// input budget), Herald's Pusher codes by number (`4001` … `4009`, `4100`,
    /// `4200`, `4201`, `4202`, `4301`, `4302`), other codes of Pusher's ranges by range
    /// (`4000-4099`, `4100-4199`, `4200-4299`, `4300-4399`), and `other`.
    ConnectionsClosed,
    /// Counter: publications received from the broker and fanned out on this node.
    Publications,
    /// Counter: frames handed to local subscribers' queues.
    Deliveries,
    /// Counter: subscribers disconnected because their queue overflowed (4100).
    SlowConsumers,
    /// Counter: subscriptions that asked to resume a channel's history (`since`), label
    /// `outcome`: `recovered` (what was missed was replayed) or `unrecoverable` (told
    /// `recovered: false`: too old, another epoch, or too large to replay).
    Recoveries,
    /// Counter: events accepted by the Pusher HTTP API, label `outcome`.
    HttpApiRequests,
    /// Counter: `client-*` events relayed.
    ClientEvents,
    /// Gauge: channels with at least one local subscriber.
    LocalChannels,
    /// Gauge: backbone (Redis) subscriber connections down right now; publications
    /// for this node's channels on them are missed until they are back.
    BackboneDown,
    /// Counter: backbone (Redis) connections re-established, label `connection`
    /// (`subscriber` or `command`).
    BackboneReconnects,
    /// Counter: channel events appended to the event log.
    EventsAppended,
    /// Counter: channel events not appended, label `reason` (`queue_full`,
    /// `unavailable`).
    EventsDropped,
    /// Counter: webhook delivery attempts, label `outcome` (`success`, `failure`,
    /// `gone`, `refused`).
    WebhookAttempts,
    /// Counter: webhook deliveries handed to a retry tier, label `reason` (`failure`,
    /// `throttled`, `busy`).
    WebhookRetries,
    /// Counter: webhook deliveries dead-lettered.
    WebhookDeadLetters,
    /// Histogram: seconds from an event's append to its webhook's 2xx.
    WebhookLatency,
    /// Counter: times this node re-asserted its presence share after a gap, label
    /// `gap` (`interrupted`, `expired`, `lost`).
    PresenceReasserts,
    /// Histogram: seconds from a publication's acceptance (its timestamp, taken by
    /// the edge that accepted it) to its frame handed to every local subscriber's
    /// socket, on each node that fans it out.
    DeliveryLatency,
    /// Gauge: webhook deliveries held by this dispatcher until they are due, label
    /// `queue` (`retry`: waiting for their next attempt; `parked`: put aside while
    /// their endpoint was busy or their app over its limit).
    WebhookWaiting,
    /// Gauge: seconds since the oldest event this dispatcher has read but not
    /// finished was appended (0 when nothing is unfinished): how far webhooks lag
    /// behind the events.
    DispatcherLag,
    /// Counter: times a webhook delivery had to wait for a rate limit, label `limit`
    /// (`app`: its app's `webhooks_per_second`; `endpoint`: the endpoint's own).
    WebhookThrottled,
    /// Histogram: seconds a webhook delivery was told to wait by a rate limit, label
    /// `limit` as for [`Metric::WebhookThrottled`].
    WebhookThrottleWait,
}

impl Metric {
    pub const ALL: [Metric; 28] = [
        Metric::Connections,
        Metric::ConnectionsAccepted,
        Metric::ConnectionsShed,
        Metric::ListenersFull,
        Metric::TlsCertificateExpiry,
        Metric::TlsHandshakeFailures,
        Metric::ConnectionsClosed,
        Metric::Publications,
        Metric::Deliveries,
        Metric::SlowConsumers,
        Metric::Recoveries,
        Metric::HttpApiRequests,
        Metric::ClientEvents,
        Metric::LocalChannels,
        Metric::BackboneDown,
        Metric::BackboneReconnects,
        Metric::EventsAppended,
        Metric::EventsDropped,
        Metric::WebhookAttempts,
        Metric::WebhookRetries,
        Metric::WebhookDeadLetters,
        Metric::WebhookLatency,
        Metric::PresenceReasserts,
        Metric::DeliveryLatency,
        Metric::WebhookWaiting,
        Metric::DispatcherLag,
        Metric::WebhookThrottled,
        Metric::WebhookThrottleWait,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Metric::Connections => "herald_connections",
            Metric::ConnectionsAccepted => "herald_connections_accepted_total",
            Metric::ConnectionsShed => "herald_connections_shed_total",
            Metric::ListenersFull => "herald_edge_listeners_full",
            Metric::TlsCertificateExpiry => "herald_tls_certificate_expiry_timestamp_seconds",
            Metric::TlsHandshakeFailures => "herald_tls_handshake_failures_total",
            Metric::ConnectionsClosed => "herald_connections_closed_total",
            Metric::Publications => "herald_publications_total",
            Metric::Deliveries => "herald_deliveries_total",
            Metric::SlowConsumers => "herald_slow_consumers_total",
            Metric::Recoveries => "herald_recoveries_total",
            Metric::HttpApiRequests => "herald_http_api_requests_total",
            Metric::ClientEvents => "herald_client_events_total",
            Metric::LocalChannels => "herald_local_channels",
            Metric::BackboneDown => "herald_backbone_down",
            Metric::BackboneReconnects => "herald_backbone_reconnects_total",
            Metric::EventsAppended => "herald_events_appended_total",
            Metric::EventsDropped => "herald_events_dropped_total",
            Metric::WebhookAttempts => "herald_webhook_attempts_total",
            Metric::WebhookRetries => "herald_webhook_retries_total",
            Metric::WebhookDeadLetters => "herald_webhook_dead_letters_total",
            Metric::WebhookLatency => "herald_webhook_latency_seconds",
            Metric::PresenceReasserts => "herald_presence_reasserts_total",
            Metric::DeliveryLatency => "herald_delivery_latency_seconds",
            Metric::WebhookWaiting => "herald_webhook_waiting",
            Metric::DispatcherLag => "herald_dispatcher_lag_seconds",
            Metric::WebhookThrottled => "herald_webhook_throttled_total",
            Metric::WebhookThrottleWait => "herald_webhook_throttle_wait_seconds",
        }
    }

    const fn help(self) -> &'static str {
        match self {
            Metric::Connections => "Open WebSocket connections on this node.",
            Metric::ConnectionsAccepted => "WebSocket connections accepted since start.",
            Metric::ConnectionsShed => {
                "Connections turned away at once because the process was out of file descriptors."
            }
            Metric::ListenersFull => {
                "Edge listeners closed because the edge holds server.max_connections (not ready until down to 95%)."
            }
            Metric::TlsHandshakeFailures => "TLS handshakes that did not complete, by listener and reason.",
            Metric::TlsCertificateExpiry => {
                "When the certificate a TLS listener presents expires, in seconds since the Unix epoch."
            }
            Metric::ConnectionsClosed => {
                "WebSocket connections closed, by close code (bucketed: normal, protocol_error, abnormal, \
                 invalid_payload, message_too_large, try_again_later, Herald's 4xxx codes, 4xxx ranges, other)."
            }
            Metric::Publications => "Publications fanned out on this node.",
            Metric::Deliveries => "Frames queued to local subscribers.",
            Metric::SlowConsumers => "Subscribers disconnected because their outbound queue overflowed.",
            Metric::Recoveries => "Subscriptions that asked to resume a channel's history, by outcome.",
            Metric::HttpApiRequests => "Pusher HTTP API requests, by outcome.",
            Metric::ClientEvents => "client-* events relayed.",
            Metric::LocalChannels => "Channels with at least one subscriber on this node.",
            Metric::BackboneDown => "Backbone subscriber connections down (publications missed meanwhile).",
            Metric::BackboneReconnects => "Backbone connections re-established, by connection kind.",
            Metric::EventsAppended => "Channel events appended to the event log.",
            Metric::EventsDropped => "Channel events that could not be appended to the event log, by reason.",
            Metric::WebhookAttempts => "Webhook delivery attempts, by outcome.",
            Metric::WebhookRetries => "Webhook deliveries handed to a retry tier, by reason.",
            Metric::WebhookDeadLetters => "Webhook deliveries dead-lettered after exhausting their retries.",
            Metric::WebhookLatency => "Seconds from an event's append to its webhook's 2xx response.",
            Metric::PresenceReasserts => {
                "Times this node re-asserted its presence share in the backbone after a gap, by kind of gap."
            }
            Metric::DeliveryLatency => {
                "Seconds from a publication's acceptance to its frame handed to every local subscriber's socket."
            }
            Metric::WebhookWaiting => "Webhook deliveries held until due, by queue (retry, parked).",
            Metric::DispatcherLag => {
                "Seconds since the oldest event read but not finished by this dispatcher was appended."
            }
            Metric::WebhookThrottled => {
                "Times a webhook delivery waited for a rate limit, by limit (app, endpoint)."
            }
            Metric::WebhookThrottleWait => {
                "Seconds webhook deliveries were told to wait by a rate limit, by limit."
            }
        }
    }
}

/// Installs the global Prometheus recorder and describes every metric. Returns the
/// handle that renders `/metrics`. Call once per process; later calls return a
/// handle to a fresh, unattached recorder (useful in tests that start several nodes).
pub fn install_prometheus() -> PrometheusHandle {
    // Histograms are exported with buckets (not as per-process summaries), so their
    // quantiles can be aggregated across pods with `histogram_quantile`. (The only
    // error is an empty list, which the constant is not.)
    let builder = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(Metric::DeliveryLatency.name().into()), FANOUT_BUCKETS)
        })
        .unwrap_or_else(|_| PrometheusBuilder::new());
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_ok() {
        for metric in Metric::ALL {
            match metric {
                Metric::Connections
                | Metric::LocalChannels
                | Metric::BackboneDown
                | Metric::WebhookWaiting
                | Metric::DispatcherLag => metrics::describe_gauge!(metric.name(), metric.help()),
                Metric::WebhookLatency | Metric::DeliveryLatency | Metric::WebhookThrottleWait => {
                    metrics::describe_histogram!(metric.name(), metric.help())
                }
                _ => metrics::describe_counter!(metric.name(), metric.help()),
            }
        }
    }
    handle
}

/// Bucket bounds of every latency histogram, in seconds: from a local delivery (a few
/// milliseconds) to a webhook endpoint at the client's request timeout.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Bucket bounds of [`Metric::DeliveryLatency`]: a fan-out within one data centre
/// takes well under a millisecond to a few; seconds mean a node is overloaded.
pub const FANOUT_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
