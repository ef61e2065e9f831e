//! Edge settings. Every field has a documented default (see
//! `config/herald.example.toml`); the binary fills these from the config file,
//! `HERALD_*` environment variables and flags.

use std::time::Duration;

use serde::Deserialize;

/// Durations in the configuration, one convention for every option: a string of a
/// number and a unit (`"250ms"`, `"5s"`, `"2m"`, `"1h 30m"`), read by `humantime`
/// straight into a [`Duration`].
pub mod duration {
    use std::{fmt, time::Duration};

    use serde::{Deserializer, de};

    /// Parses a configured duration; the error quotes the text and shows the form.
    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim())
            .map_err(|e| format!("invalid duration {text:?}: {e} (e.g. \"250ms\", \"5s\", \"2m\", \"1h\")"))
    }

    /// A duration as the config writes it (`5m`, `2h 30m`), which [`parse`] reads back.
    pub fn format(duration: Duration) -> String {
        humantime::format_duration(duration).to_string()
    }

    /// `#[serde(deserialize_with = "duration::deserialize")]` on a `Duration` field.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        struct Text;

        impl de::Visitor<'_> for Text {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"250ms\", \"5s\" or \"2m\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
                parse(text).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Text)
    }

    /// Records `"{name}: must be at least {min}"` unless `value` reaches `min`.
    pub fn at_least(errors: &mut Vec<String>, name: &str, value: Duration, min: Duration) {
        if value < min {
            errors.push(format!("{name}: must be at least {}", humantime::format_duration(min)));
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_humantime_strings_and_quotes_bad_ones() {
            assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
            assert_eq!(parse(" 2m "), Ok(Duration::from_secs(120)));
            assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
            assert_eq!(parse("0s"), Ok(Duration::ZERO));
            for d in [
                Duration::ZERO,
                Duration::from_millis(250),
                Duration::from_secs(300),
                Duration::from_secs(9000),
            ] {
                assert_eq!(parse(&format(d)), Ok(d));
            }
            assert_eq!(format(Duration::from_secs(300)), "5m");
            for bad in ["", "5", "soon", "-1s", "5 parsecs"] {
                let err = parse(bad).unwrap_err();
                assert!(err.contains(&format!("{bad:?}")) && err.contains("250ms"), "{bad:?}: {err}");
            }
        }

        #[test]
        fn bounds_are_named_in_the_unit_of_the_bound() {
            let mut errors = Vec::new();
            at_least(&mut errors, "a.b", Duration::from_millis(999), Duration::from_secs(1));
            at_least(&mut errors, "a.c", Duration::ZERO, Duration::from_millis(1));
            at_least(&mut errors, "a.d", Duration::from_secs(1), Duration::from_secs(1));
            assert_eq!(errors, ["a.b: must be at least 1s", "a.c: must be at least 1ms"]);
        }
    }
}

const SECOND: Duration = Duration::from_secs(1);

/// Settings of WebSocket connections.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Silence after which the server pings a client; also advertised to clients, in
    /// whole seconds, in `pusher:connection_established` (Pusher: 120 s).
    #[serde(deserialize_with = "duration::deserialize")]
    pub activity_timeout: Duration,
    /// How long a client has to answer a ping before it is closed with 4201 (Pusher: 30 s).
    #[serde(deserialize_with = "duration::deserialize")]
    pub pong_timeout: Duration,
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
    /// How long data may wait for a client that stopped reading before it is dropped
    /// (WebSocket clients and HTTP API connections alike).
    #[serde(deserialize_with = "duration::deserialize")]
    pub write_timeout: Duration,
    /// How long a client may take to send a request head: the WebSocket upgrade or an
    /// HTTP API request. Also how long an HTTP API connection may stay idle between
    /// requests before it is closed.
    #[serde(deserialize_with = "duration::deserialize")]
    pub handshake_timeout: Duration,
    /// Largest head (request line and headers) of a connection's first HTTP request,
    /// in bytes. Larger: 431.
    pub max_request_head_bytes: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            activity_timeout: Duration::from_secs(120),
            pong_timeout: Duration::from_secs(30),
            max_message_bytes: 64 * 1024,
            max_pending_input_bytes: 64 * 1024 * 1024,
            outbound_queue_bytes: 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_request_head_bytes: 16 * 1024,
        }
    }
}

impl ConnectionConfig {
    pub fn validate(&self, errors: &mut Vec<String>) {
        for (name, value) in [
            ("connection.activity_timeout", self.activity_timeout),
            ("connection.pong_timeout", self.pong_timeout),
            ("connection.write_timeout", self.write_timeout),
            ("connection.handshake_timeout", self.handshake_timeout),
        ] {
            duration::at_least(errors, name, value, SECOND);
        }
        if self.max_message_bytes == 0 {
            errors.push("connection.max_message_bytes: must be at least 1".into());
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
    /// How far `auth_timestamp` may be from the server's clock, counted in whole
    /// seconds (Pusher: 600 s).
    #[serde(deserialize_with = "duration::deserialize")]
    pub timestamp_tolerance: Duration,
    /// How long a client may take to send a request body once its head has arrived.
    /// Slower: 408, and the connection is closed.
    #[serde(deserialize_with = "duration::deserialize")]
    pub body_timeout: Duration,
}

impl Default for HttpApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            timestamp_tolerance: Duration::from_secs(600),
            body_timeout: Duration::from_secs(10),
        }
    }
}

impl HttpApiConfig {
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.max_body_bytes < 1024 {
            errors.push("http.max_body_bytes: must be at least 1024".into());
        }
        duration::at_least(errors, "http.body_timeout", self.body_timeout, SECOND);
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
    /// How long the node gathers changes of its subscription counts before sending
    /// them to the backbone in one batch (0: as soon as the previous batch is done).
    pub occupancy_flush: Duration,
    /// Connections (WebSocket and HTTP) the edge holds before it leaves its port to
    /// the others sharing it, until it is down to 95% of this (0: the open-file
    /// limit less a reserve, [`herald_telemetry::listen::default_max_connections`]).
    pub max_connections: usize,
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
