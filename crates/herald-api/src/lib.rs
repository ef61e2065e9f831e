//! Herald's gRPC API: the `herald.v1.Publisher` service (publishing, channel state,
//! terminate) on the same publish path as the Pusher HTTP API, and
//! `herald.v1.WebhookAdmin` (webhook endpoints, attempts, dead-letter replay), with bearer-token
//! authentication per app, idempotency keys, standard gRPC health and server
//! reflection. Served by hyper (HTTP/2) directly: the edge's HTTP stack, no second one.

mod auth;
pub mod client;
mod error;
mod idempotency;
mod server;
mod service;
mod webhooks;

use std::time::Duration;

use serde::Deserialize;

pub use error::Error;
pub use server::serve;
pub use service::PublisherService;
pub use webhooks::{WebhookAdminConfig, WebhookAdminService};

/// Settings of the gRPC listener (`[grpc]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// gRPC port, on `server.host`.
    pub port: u16,
    /// Largest request message, in bytes; larger ones get RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// How long an idempotency key is remembered.
    #[serde(deserialize_with = "herald_node::duration::deserialize")]
    pub idempotency_window: Duration,
    /// Idempotency keys remembered at most (per node); the oldest go first.
    pub idempotency_max_keys: usize,
    /// Answers a PublishStream may have waiting to be read by the publisher before
    /// the server stops reading its requests.
    pub stream_window: usize,
    /// `[grpc.tls]`: TLS (HTTP/2 with ALPN `h2`), optionally requiring client
    /// certificates; plain HTTP/2 without a certificate.
    pub tls: herald_tls::ListenerTls,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            port: 50051,
            max_message_bytes: 4 * 1024 * 1024,
            idempotency_window: Duration::from_secs(300),
            idempotency_max_keys: 100_000,
            stream_window: 256,
            tls: herald_tls::ListenerTls::default(),
        }
    }
}

impl GrpcConfig {
    pub fn validate(&self, errors: &mut Vec<String>) {
        for (name, value) in [
            ("grpc.max_message_bytes", self.max_message_bytes),
            ("grpc.idempotency_max_keys", self.idempotency_max_keys),
            ("grpc.stream_window", self.stream_window),
        ] {
            if value == 0 {
                errors.push(format!("{name}: must be at least 1"));
            }
        }
        herald_node::duration::at_least(
            errors,
            "grpc.idempotency_window",
            self.idempotency_window,
            Duration::from_secs(1),
        );
    }
}
