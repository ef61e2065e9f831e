//! Edge settings. Every field has a documented default (see
//! `config/herald.example.toml`); the binary fills these from the config file,
//! `HERALD_*` environment variables and flags.

use std::time::Duration;

use serde::Deserialize;

/// Settings of WebSocket connections.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Seconds of silence after which the server pings a client; also advertised to
    /// clients in `pusher:connection_established` (Pusher: 120).
    pub activity_timeout_secs: u64,
    /// Seconds a client has to answer a ping before it is closed with 4201 (Pusher: 30).
    pub pong_timeout_secs: u64,
    /// Largest WebSocket message a client may send, in bytes. Larger: closed with 1009.
    pub max_message_bytes: usize,
    /// Bytes of unfinished client input (frames and fragmented messages not yet
    /// complete) all connections of the node may hold together. A connection whose
    /// input would take the node past it is closed with 1013 (try again later).
    /// At least `max_message_bytes`.
    pub max_pending_input_bytes: usize,
    /// Bytes that may wait in one connection's outbound queue. A subscriber that falls
    /// further behind is disconnected with 4100, so it cannot slow others down.
    pub outbound_queue_bytes: usize,
    /// Seconds data may wait for a client that stopped reading before it is dropped
    /// (WebSocket clients and HTTP API connections alike).
    pub write_timeout_secs: u64,
    /// Seconds a client may take to send a request head: the WebSocket upgrade or an
    /// HTTP API request. Also how long an HTTP API connection may stay idle between
    /// requests before it is closed.
    pub handshake_timeout_secs: u64,
    /// Largest head (request line and headers) of a connection's first HTTP request,
    /// in bytes. Larger: 431.
    pub max_request_head_bytes: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            activity_timeout_secs: 120,
            pong_timeout_secs: 30,
            max_message_bytes: 64 * 1024,
            max_pending_input_bytes: 64 * 1024 * 1024,
            outbound_queue_bytes: 1024 * 1024,
            write_timeout_secs: 10,
            handshake_timeout_secs: 10,
            max_request_head_bytes: 16 * 1024,
        }
    }
}

impl ConnectionConfig {
    pub fn activity_timeout(&self) -> Duration {
        Duration::from_secs(self.activity_timeout_secs)
    }

    pub fn pong_timeout(&self) -> Duration {
        Duration::from_secs(self.pong_timeout_secs)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs)
    }

    pub fn validate(&self, errors: &mut Vec<String>) {
        let positive = [
            ("connection.activity_timeout_secs", self.activity_timeout_secs as usize),
            ("connection.pong_timeout_secs", self.pong_timeout_secs as usize),
            ("connection.max_message_bytes", self.max_message_bytes),
            ("connection.write_timeout_secs", self.write_timeout_secs as usize),
            ("connection.handshake_timeout_secs", self.handshake_timeout_secs as usize),
        ];
        for (name, value) in positive {
            if value == 0 {
                errors.push(format!("{name}: must be at least 1"));
            }
        }
        if self.max_request_head_bytes < 1024 {
            errors.push("connection.max_request_head_bytes: must be at least 1024".into());
        }
        if self.max_pending_input_bytes < self.max_message_bytes {
            errors.push(
                "connection.max_pending_input_bytes: must be at least connection.max_message_bytes".into(),
            );
        }
        if self.outbound_queue_bytes < 16 * 1024 {
            errors.push("connection.outbound_queue_bytes: must be at least 16384".into());
        }
    }
}

/// Settings of the Pusher HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpApiConfig {
    /// Largest request body, in bytes. Larger: 413.
    pub max_body_bytes: usize,
    /// How far `auth_timestamp` may be from the server's clock, in seconds (Pusher: 600).
    pub timestamp_tolerance_secs: u64,
    /// Seconds a client may take to send a request body once its head has arrived.
    /// Slower: 408, and the connection is closed.
    pub body_timeout_secs: u64,
}

impl Default for HttpApiConfig {
    fn default() -> Self {
        Self { max_body_bytes: 256 * 1024, timestamp_tolerance_secs: 600, body_timeout_secs: 10 }
    }
}

impl HttpApiConfig {
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }

    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.max_body_bytes < 1024 {
            errors.push("http.max_body_bytes: must be at least 1024".into());
        }
        if self.body_timeout_secs == 0 {
            errors.push("http.body_timeout_secs: must be at least 1".into());
        }
    }
}

/// Everything an edge node needs besides its listeners and backbone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeConfig {
    /// 0: serve connections on the process's shared multi-threaded runtime. N: on N
    /// dedicated threads, each with its own event loop and `SO_REUSEPORT` socket.
    pub threads: usize,
    pub connection: ConnectionConfig,
    pub http: HttpApiConfig,
    /// How long a graceful shutdown may take. Client connections are closed with a
    /// reconnect code spread over most of it, so clients do not all reconnect at once.
    pub shutdown_grace: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_budget_must_hold_at_least_one_message() {
        let validate = |config: ConnectionConfig| {
            let mut errors = Vec::new();
            config.validate(&mut errors);
            errors
        };
        assert!(validate(ConnectionConfig::default()).is_empty());
        let small = ConnectionConfig { max_pending_input_bytes: 1000, ..Default::default() };
        let errors = validate(small);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("connection.max_pending_input_bytes"), "{errors:?}");
    }
}
