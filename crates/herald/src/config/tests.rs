use std::{collections::BTreeMap, path::Path, time::Duration};

use herald_core::{App, AppLimits};
use herald_dispatcher::DispatcherConfig;
use toml::Value;

use super::{layers::read_file, *};

const SECOND: Duration = Duration::from_secs(1);

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A config file removed on drop (std only, to keep dependencies lean).
struct TempConfig(std::path::PathBuf);

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn with_file(text: &str) -> (TempConfig, Flags) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("herald-config-test-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let flags = Flags { config: Some(path.clone()), ..Flags::default() };
    (TempConfig(path), flags)
}

#[test]
fn defaults_without_a_file() {
    let config = Config::load(&Flags::default(), env(&[])).unwrap();
    assert_eq!(config.server.port, 6001);
    assert_eq!(config.server.metrics_port, 9091);
    assert_eq!(config.connection.activity_timeout, 120 * SECOND);
    let (apps, demo) = config.apps_or_demo();
    assert!(demo);
    assert!(apps.by_key("demo-key").is_some());
}

#[test]
fn file_then_env_then_flags() {
    let (_file, mut flags) = with_file(
        r#"
        [server]
        port = 7000
        metrics_port = 7001
        [[apps]]
        id = "1"
        key = "k"
        secret = "s"
        [apps.limits]
        max_connections = 5
        "#,
    );
    let config = Config::load(
        &flags,
        env(&[("HERALD_SERVER__PORT", "8000"), ("HERALD_CONNECTION__POUT", "1"), ("HERALD_BIN", "x")]),
    );
    assert!(config.unwrap_err()[0].contains("pout"), "unknown keys are errors");
    assert!(Config::load(&flags, env(&[("HERALD_BIN", "x")])).is_ok(), "other tools' variables");

    let config = Config::load(&flags, env(&[("HERALD_SERVER__PORT", "8000")])).unwrap();
    assert_eq!(config.server.port, 8000);
    assert_eq!(config.apps.by_id("1").unwrap().limits.max_connections, 5);
    flags.port = Some(9000);
    let config = Config::load(&flags, env(&[("HERALD_SERVER__PORT", "8000")])).unwrap();
    assert_eq!(config.server.port, 9000);
}

#[test]
fn apps_from_the_environment() {
    let config = Config::load(
        &Flags::default(),
        env(&[("HERALD_APPS", r#"[{id = "a", key = "k", secret = "s", enable_client_events = true}]"#)]),
    )
    .unwrap();
    assert!(config.apps.by_id("a").unwrap().enable_client_events);
}

/// Kubernetes sets a dispatcher replica's static membership from its pod name this way
/// (`HERALD_KAFKA__PROPERTIES__group.instance.id` from the downward API): a property
/// name with dots, kept as it is.
#[test]
fn a_kafka_property_with_dots_from_the_environment() {
    let (_file, flags) = with_file("[kafka]\nbrokers = \"127.0.0.1:9092\"\n");
    let vars = env(&[("HERALD_KAFKA__PROPERTIES__group.instance.id", "herald-dispatcher-2")]);
    let config = Config::load(&flags, vars).unwrap();
    let kafka = config.kafka.unwrap();
    assert_eq!(kafka.properties.get("group.instance.id").map(String::as_str), Some("herald-dispatcher-2"));
}

#[test]
fn reports_every_semantic_error_at_once() {
    let (_file, flags) = with_file(
        r#"
        [server]
        host = "not-an-ip"
        shutdown_grace = "0s"
        occupancy_flush = "11s"
        [connection]
        pong_timeout = "999ms"
        [http]
        body_timeout = "0s"
        [[apps]]
        id = "1"
        key = "k"
        secret = ""
        [[apps]]
        id = "1"
        key = "k2"
        secret = "s"
        "#,
    );
    let errors = Config::load(&flags, env(&[])).unwrap_err();
    assert_eq!(errors.len(), 7, "{errors:#?}");
    assert!(errors.iter().any(|e| e == "http.body_timeout: must be at least 1s"), "{errors:#?}");
    assert!(errors.iter().any(|e| e == "server.occupancy_flush: at most 10s"), "{errors:#?}");
    assert!(errors.iter().any(|e| e == "connection.pong_timeout: must be at least 1s"), "{errors:#?}");
}

#[test]
fn durations_are_strings_in_the_file_and_the_environment() {
    let (_file, flags) = with_file(
        r#"
        [connection]
        activity_timeout = "2m"
        [events]
        debounce = "250ms"
        [dispatcher]
        connect_timeout = "1s 500ms"
        retry_schedule = ["200ms", "1m", "1h 30m"]
        "#,
    );
    let config = Config::load(
        &flags,
        env(&[("HERALD_REDIS__LEASE", "20s"), ("HERALD_GRPC__IDEMPOTENCY_WINDOW", "\"1h\"")]),
    )
    .unwrap();
    assert_eq!(config.connection.activity_timeout, 120 * SECOND);
    assert_eq!(config.events.debounce, Duration::from_millis(250));
    assert_eq!(config.dispatcher.client.connect_timeout, Duration::from_millis(1500));
    assert_eq!(config.dispatcher.retry.delays, [Duration::from_millis(200), 60 * SECOND, 5400 * SECOND]);
    assert_eq!(config.redis.lease, 20 * SECOND);
    assert_eq!(config.grpc.idempotency_window, 3600 * SECOND);
    assert!(config.deprecated.is_empty());
}

#[test]
fn the_redis_command_timeout_defaults_to_2s_or_a_third_of_the_lease() {
    let (_file, flags) = with_file("");
    let load = |vars: &[(&str, &str)]| Config::load(&flags, env(vars));
    assert_eq!(load(&[]).unwrap().redis.command_timeout(), 2 * SECOND);
    let short_lease = load(&[("HERALD_REDIS__LEASE", "1500ms")]).unwrap();
    assert_eq!(short_lease.redis.command_timeout(), Duration::from_millis(500));
    let set = load(&[("HERALD_REDIS__COMMAND_TIMEOUT", "750ms")]).unwrap();
    assert_eq!(set.redis.command_timeout(), Duration::from_millis(750));
    let errors = load(&[("HERALD_REDIS__COMMAND_TIMEOUT", "6s")]).unwrap_err();
    assert!(
        errors.iter().any(|e| e == "redis.command_timeout: at most a third of redis.lease"),
        "{errors:#?}"
    );
    let errors = load(&[("HERALD_REDIS__COMMAND_TIMEOUT", "50ms")]).unwrap_err();
    assert!(errors.iter().any(|e| e.starts_with("redis.command_timeout")), "{errors:#?}");
}

#[test]
fn the_old_names_still_work_in_their_old_units() {
    let (_file, flags) = with_file(
        r#"
        [server]
        shutdown_grace_secs = 3
        [connection]
        activity_timeout_secs = 60
        [events]
        debounce_ms = 300
        [dispatcher]
        pusher_batch_window_ms = 20
        retry_after_max_secs = 120
        "#,
    );
    let config = Config::load(
        &flags,
        env(&[("HERALD_REDIS__LEASE_SECS", "1"), ("HERALD_DISPATCHER__ENDPOINT_REFRESH_MS", "100")]),
    )
    .unwrap();
    assert_eq!(config.server.shutdown_grace, 3 * SECOND);
    assert_eq!(config.connection.activity_timeout, 60 * SECOND);
    assert_eq!(config.events.debounce, Duration::from_millis(300));
    assert_eq!(config.dispatcher.pusher_batch_window, Duration::from_millis(20));
    assert_eq!(config.dispatcher.retry_after.max, 120 * SECOND);
    assert_eq!(config.redis.lease, SECOND);
    assert_eq!(config.dispatcher.endpoint_refresh, Duration::from_millis(100));
    assert_eq!(config.deprecated.len(), 7, "{:#?}", config.deprecated);
    assert!(
        config.deprecated.contains(
            &"connection.activity_timeout_secs is deprecated (it still works): write connection.activity_timeout = \"1m\""
                .to_string()
        ),
        "{:#?}",
        config.deprecated
    );
    assert!(config.deprecated.iter().any(|n| n.starts_with("HERALD_REDIS__LEASE_SECS is deprecated")
        && n.ends_with("write HERALD_REDIS__LEASE=1s")));

    // A whole section from the environment may use them too.
    let config = Config::load(&Flags::default(), env(&[("HERALD_HTTP", "{body_timeout_secs = 7}")])).unwrap();
    assert_eq!(config.http.body_timeout, 7 * SECOND);
}

#[test]
fn a_later_layer_overrides_an_earlier_one_whichever_name_each_uses() {
    let (_file, flags) = with_file("[connection]\npong_timeout_secs = 5\nwrite_timeout = \"5s\"\n");
    let config = Config::load(
        &flags,
        env(&[("HERALD_CONNECTION__PONG_TIMEOUT", "7s"), ("HERALD_CONNECTION__WRITE_TIMEOUT_SECS", "8")]),
    )
    .unwrap();
    assert_eq!(config.connection.pong_timeout, 7 * SECOND);
    assert_eq!(config.connection.write_timeout, 8 * SECOND);
}

#[test]
fn the_old_and_the_new_name_together_are_an_error_naming_both() {
    let (_file, flags) = with_file("[events]\ndebounce_ms = 300\ndebounce = \"1s\"\n");
    let errors = Config::load(&flags, env(&[])).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("events.debounce ") && errors[0].contains("events.debounce_ms"),
        "{errors:#?}"
    );

    let errors = Config::load(
        &Flags::default(),
        env(&[
            ("HERALD_REDIS__LEASE_SECS", "1"),
            ("HERALD_REDIS__LEASE", "2s"),
            ("HERALD_HTTP", "{body_timeout_secs = 1, body_timeout = \"1s\"}"),
        ]),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors.iter().any(|e| e.contains("HERALD_REDIS__LEASE ") && e.contains("HERALD_REDIS__LEASE_SECS")),
        "{errors:#?}"
    );
    assert!(errors.iter().any(|e| e.contains("http.body_timeout_secs")), "{errors:#?}");
}

#[test]
fn a_bad_duration_names_its_key() {
    let errors =
        Config::load(&Flags::default(), env(&[("HERALD_CONNECTION__PONG_TIMEOUT", "soon")])).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("connection.pong_timeout: invalid duration \"soon\""), "{errors:#?}");

    let (_file, flags) = with_file("[dispatcher]\nrequest_timeout = 15\n");
    let errors = Config::load(&flags, env(&[])).unwrap_err();
    assert!(
        errors[0].starts_with("dispatcher.request_timeout: ") && errors[0].contains("250ms"),
        "{errors:#?}"
    );

    // An old name keeps its old type.
    let (_file, flags) = with_file("[events]\ndebounce_ms = \"300ms\"\n");
    let errors = Config::load(&flags, env(&[])).unwrap_err();
    assert_eq!(errors, ["events.debounce_ms: expected a whole number of milliseconds, got a string"]);
    let errors =
        Config::load(&Flags::default(), env(&[("HERALD_SERVER__SHUTDOWN_GRACE_SECS", "-1")])).unwrap_err();
    assert_eq!(errors, ["HERALD_SERVER__SHUTDOWN_GRACE_SECS: expected a whole number of seconds, got -1"]);
}

#[test]
fn a_bound_names_the_old_key_when_that_was_given() {
    let (_file, flags) =
        with_file("[connection]\npong_timeout_secs = 0\n[dispatcher]\nconnect_timeout = \"0s\"\n");
    let errors = Config::load(&flags, env(&[])).unwrap_err();
    assert_eq!(
        errors,
        [
            "connection.pong_timeout (given as connection.pong_timeout_secs): must be at least 1s",
            "dispatcher.connect_timeout: must be at least 1ms",
        ]
    );
}

#[test]
fn the_retry_schedule_uses_the_same_parser_and_reports_with_the_rest() {
    let (_file, flags) = with_file(
        r#"
        [dispatcher]
        retry_schedule = ["5s", "soon"]
        retry_jitter = 1.5
        allow_addresses = ["10.0.0.0/33"]
        [[apps]]
        id = "a"
        key = "k"
        secret = ""
        "#,
    );
    let errors = Config::load(&flags, env(&[])).unwrap_err();
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(
        errors[0].starts_with("dispatcher.retry_schedule: delay #2: invalid duration \"soon\""),
        "{errors:#?}"
    );
    assert!(errors[1].starts_with("dispatcher.retry_jitter: must be between 0 and 1"), "{errors:#?}");
    assert!(errors[2].starts_with("dispatcher.allow_addresses: "), "{errors:#?}");
    assert_eq!(errors[3], "apps[0].secret: must not be empty");
}

#[test]
fn the_dispatcher_section_defaults_are_the_dispatchers() {
    let config = Config::load(&Flags::default(), env(&[])).unwrap();
    assert_dispatcher_defaults(&config.dispatcher);
    assert!(!config.allow_addresses_set);
    let defaults = Sections::default().dispatcher;
    assert_eq!(defaults.retry_schedule, ["5s", "5m", "30m", "2h", "5h", "10h", "10h"]);
}

#[test]
fn the_example_config_is_valid_and_documents_the_defaults() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/herald.example.toml");
    let flags = Flags { config: Some(example.into()), ..Flags::default() };
    let config = Config::load(&flags, env(&[])).unwrap();
    assert!(config.deprecated.is_empty(), "the example uses the current names: {:?}", config.deprecated);
    let defaults = Sections::default();
    assert_eq!(config.connection, defaults.connection);
    assert_eq!(config.http, defaults.http);
    assert_eq!(config.grpc, defaults.grpc);
    assert_eq!(config.server.port, defaults.server.port);
    assert_eq!(config.server.shutdown_grace, defaults.server.shutdown_grace);
    assert_eq!(config.redis, defaults.redis);
    assert_eq!(config.events, defaults.events);
    assert_dispatcher_defaults(&config.dispatcher);
    let app = config.apps.iter().next().unwrap();
    assert_eq!(app.limits, AppLimits::default());
    // The history rule documents meta_ttl's default.
    let rule = &app.history[..];
    assert_eq!(rule.len(), 1, "{rule:?}");
    let defaulted: herald_core::HistoryRule =
        serde_json::from_value(serde_json::json!({ "channels": "x", "size": 1, "ttl": "1s" })).unwrap();
    assert_eq!(rule[0].meta_ttl, defaulted.meta_ttl);
}

/// The dispatcher's own defaults, field by field (its settings have no `PartialEq`).
fn assert_dispatcher_defaults(config: &DispatcherConfig) {
    let defaults = DispatcherConfig::default();
    assert_eq!(config.group, defaults.group);
    assert_eq!(config.events_topic, defaults.events_topic);
    assert_eq!(config.topic_prefix, defaults.topic_prefix);
    assert_eq!(config.partitions, defaults.partitions);
    assert_eq!(config.retry, defaults.retry);
    assert_eq!(config.retry_after, defaults.retry_after);
    assert_eq!(config.client.connect_timeout, defaults.client.connect_timeout);
    assert_eq!(config.client.request_timeout, defaults.client.request_timeout);
    assert_eq!(config.client.max_response_bytes, defaults.client.max_response_bytes);
    assert_eq!(config.client.max_idle_per_host, defaults.client.max_idle_per_host);
    assert!(config.client.extra_roots.is_empty());
    assert_eq!(config.endpoint_concurrency, defaults.endpoint_concurrency);
    assert_eq!(config.endpoint_queue, defaults.endpoint_queue);
    assert_eq!(config.max_in_flight, defaults.max_in_flight);
    assert_eq!(config.max_throttle_wait, defaults.max_throttle_wait);
    assert_eq!(config.pusher_batch_max, defaults.pusher_batch_max);
    assert_eq!(config.pusher_batch_window, defaults.pusher_batch_window);
    assert_eq!(config.endpoint_refresh, defaults.endpoint_refresh);
    assert_eq!(config.commit_interval, defaults.commit_interval);
}

mod properties {
    //! The environment and the file are untrusted input too (a typo, a template
    //! gone wrong): whatever they hold, loading ends in a config or in a list of
    //! errors (exit 64), never a panic.
    use herald_node::{ConnectionConfig, HttpApiConfig};
    use proptest::{collection::vec, prelude::*, sample::select};

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
    }

    /// `HERALD_SECTION__KEY` of every option the example file documents, and the
    /// Kafka ones (commented out there).
    fn real_keys() -> Vec<String> {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/herald.example.toml");
        let table = read_file(Path::new(example)).unwrap();
        let mut keys = vec!["HERALD_APPS".to_string(), "HERALD_WEBHOOKS".to_string()];
        for (section, value) in &table {
            if let Value::Table(options) = value {
                keys.extend(options.keys().map(|k| format!("HERALD_{section}__{k}").to_ascii_uppercase()));
            }
        }
        for kafka in ["brokers", "client_id", "replication_factor", "properties", "property_files"] {
            keys.push(format!("HERALD_KAFKA__{}", kafka.to_ascii_uppercase()));
        }
        keys
    }

    fn env_key() -> impl Strategy<Value = String> {
        let odd = vec![
            "HERALD_SERVER",
            "HERALD_SERVER__",
            "HERALD___PORT",
            "HERALD_SERVER____PORT",
            "HERALD_SERVER__PORT__X",
            "HERALD_APPS__0__ID",
            "HERALD_KAFKA",
            "HERALD_KAFKA__PROPERTIES__ACKS",
            "HERALD_LOG",
            "HERALD_CONNECTION__ACTIVITY_TIMEOUT_SECS",
            "HERALD_EVENTS__DEBOUNCE_MS",
            "HERALD_DISPATCHER__RETRY_AFTER_MAX_SECS",
            "HERALD_BIN",
            "herald_server__port",
            "HERALD_server__Port",
        ];
        prop_oneof![
            6 => select(real_keys()),
            2 => select(odd).prop_map(String::from),
            1 => "HERALD_[A-Za-z_]{0,24}",
            1 => any::<String>(),
        ]
    }

    fn env_value() -> impl Strategy<Value = String> {
        let snippets = vec![
            "",
            "0",
            "-1",
            "65536",
            "9223372036854775807",
            "18446744073709551616",
            "nan",
            "-inf",
            "1e308",
            "true",
            "\"quoted\"",
            "'single'",
            "\"unterminated",
            "[]",
            "[1, \"a\"]",
            "[\"5s\", \"99999999999999999h\", \"0ms\", \"-1s\"]",
            "[\"10.0.0.0/99\", \"::1/129\", \"not-an-ip\"]",
            "{}",
            "{port = 1}",
            "[{id = \"a\", key = \"k\", secret = \"s\"}]",
            "[{id = \"a\", key = \"k\", secret = \"s\"}, {id = \"a\", key = \"k\", secret = \"\"}]",
            "[{id = \"a/b\", key = \"k\", secret = \"s\", limits = {max_batch_events = 0}}]",
            "[{app_id = \"a\", id = \"x\", url = \"http://[::1\"}]",
            "redis://127.0.0.1:1/",
            "127.0.0.1",
            "::1",
            "/nonexistent/dir/file",
            "/",
        ];
        prop_oneof![
            3 => select(snippets).prop_map(String::from),
            2 => any::<i64>().prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            1 => any::<f64>().prop_map(|n| n.to_string()),
            1 => "[a-z0-9:/._\\[\\]{}=\", -]{0,24}",
            1 => any::<String>(),
        ]
    }

    /// What a configuration sets, within the documented ranges, as TOML values.
    #[derive(Debug, Clone)]
    struct Valid {
        host: String,
        ports: (u16, u16, u16),
        node_id: u32,
        shutdown_grace: Duration,
        edge_threads: usize,
        connection: ConnectionConfig,
        http: HttpApiConfig,
        redis_url: String,
        redis_prefix: String,
        lease: Duration,
        apps: Vec<App>,
    }

    fn quoted(s: &str) -> String {
        format!("\"{s}\"")
    }

    /// A duration as the config writes it, in a unit picked by its size.
    fn duration(d: Duration) -> String {
        quoted(&herald_node::duration::format(d))
    }

    impl Valid {
        /// Every option as (section, key, TOML value); an empty section is top level.
        fn options(&self) -> Vec<(&'static str, &'static str, String)> {
            let c = &self.connection;
            let mut options = vec![
                ("server", "host", quoted(&self.host)),
                ("server", "port", self.ports.0.to_string()),
                ("server", "metrics_port", self.ports.1.to_string()),
                ("grpc", "port", self.ports.2.to_string()),
                ("server", "node_id", self.node_id.to_string()),
                ("server", "shutdown_grace", duration(self.shutdown_grace)),
                ("server", "edge_threads", self.edge_threads.to_string()),
                ("connection", "activity_timeout", duration(c.activity_timeout)),
                ("connection", "pong_timeout", duration(c.pong_timeout)),
                ("connection", "max_message_bytes", c.max_message_bytes.to_string()),
                ("connection", "max_pending_input_bytes", c.max_pending_input_bytes.to_string()),
                ("connection", "outbound_queue_bytes", c.outbound_queue_bytes.to_string()),
                ("connection", "write_timeout", duration(c.write_timeout)),
                ("connection", "handshake_timeout", duration(c.handshake_timeout)),
                ("connection", "max_request_head_bytes", c.max_request_head_bytes.to_string()),
                ("http", "max_body_bytes", self.http.max_body_bytes.to_string()),
                ("http", "timestamp_tolerance", duration(self.http.timestamp_tolerance)),
                ("http", "body_timeout", duration(self.http.body_timeout)),
                ("redis", "url", quoted(&self.redis_url)),
                ("redis", "prefix", quoted(&self.redis_prefix)),
                ("redis", "lease", duration(self.lease)),
            ];
            let apps: Vec<String> = self.apps.iter().map(app_toml).collect();
            options.push(("", "apps", format!("[{}]", apps.join(", "))));
            options
        }

        fn check(&self, config: &Config) -> Result<(), TestCaseError> {
            let server = &config.server;
            prop_assert_eq!(&server.host, &self.host);
            prop_assert_eq!(Some(config.host), self.host.parse().ok());
            prop_assert_eq!((server.port, server.metrics_port, config.grpc.port), self.ports);
            prop_assert_eq!(server.node_id, self.node_id);
            prop_assert_eq!(server.shutdown_grace, self.shutdown_grace);
            prop_assert_eq!(server.edge_threads, self.edge_threads);
            prop_assert_eq!(&config.connection, &self.connection);
            prop_assert_eq!(&config.http, &self.http);
            prop_assert_eq!(&config.redis.url, &self.redis_url);
            prop_assert_eq!(&config.redis.prefix, &self.redis_prefix);
            prop_assert_eq!(config.redis.lease, self.lease);
            prop_assert_eq!(config.apps.len(), self.apps.len());
            for app in &self.apps {
                prop_assert_eq!(config.apps.by_id(&app.id).map(|a| &**a), Some(app));
            }
            Ok(())
        }
    }

    /// An inline TOML table.
    fn inline(fields: &[(&str, String)]) -> String {
        let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        format!("{{{}}}", fields.join(", "))
    }

    fn app_toml(app: &App) -> String {
        let l = &app.limits;
        let limits = inline(&[
            ("max_connections", l.max_connections.to_string()),
            ("max_event_data_bytes", l.max_event_data_bytes.to_string()),
            ("max_event_name_len", l.max_event_name_len.to_string()),
            ("max_channels_per_event", l.max_channels_per_event.to_string()),
            ("max_batch_events", l.max_batch_events.to_string()),
            ("max_channels_per_connection", l.max_channels_per_connection.to_string()),
            ("max_presence_members", l.max_presence_members.to_string()),
            ("max_presence_user_info_bytes", l.max_presence_user_info_bytes.to_string()),
            ("client_events_per_second", l.client_events_per_second.to_string()),
            ("max_watchlist_size", l.max_watchlist_size.to_string()),
            ("webhooks_per_second", l.webhooks_per_second.to_string()),
            ("webhooks_burst", l.webhooks_burst.to_string()),
        ]);
        let tokens: Vec<String> = app.api_tokens.iter().map(|t| quoted(t)).collect();
        inline(&[
            ("id", quoted(&app.id)),
            ("key", quoted(&app.key)),
            ("secret", quoted(&app.secret)),
            ("enabled", app.enabled.to_string()),
            ("enable_client_events", app.enable_client_events.to_string()),
            ("api_tokens", format!("[{}]", tokens.join(", "))),
            ("limits", limits),
        ])
    }

    const BIG: usize = 1 << 40;

    fn limits() -> impl Strategy<Value = AppLimits> {
        (
            (0u64..BIG as u64, 1..BIG, 0..BIG, 1..BIG, 1..BIG, 0..BIG),
            (0..BIG, 0..BIG, any::<u32>(), any::<u32>(), 1..u32::MAX),
        )
            .prop_map(
                |(
                    (connections, data, name, channels, batch, per_connection),
                    (members, info, client, hooks, burst),
                )| {
                    AppLimits {
                        max_connections: connections,
                        max_event_data_bytes: data,
                        max_event_name_len: name,
                        max_channels_per_event: channels,
                        max_batch_events: batch,
                        max_channels_per_connection: per_connection,
                        max_presence_members: members,
                        max_presence_user_info_bytes: info,
                        client_events_per_second: client,
                        max_watchlist_size: members,
                        webhooks_per_second: hooks,
                        webhooks_burst: burst,
                    }
                },
            )
    }

    fn apps() -> impl Strategy<Value = Vec<App>> {
        let app =
            ("[A-Za-z0-9_.-]{1,12}", any::<bool>(), any::<bool>(), vec("[A-Za-z0-9]{16,24}", 0..3), limits());
        vec(app, 1..4).prop_map(|apps| {
            apps.into_iter()
                .enumerate()
                // Ids and keys made distinct by their index.
                .map(|(i, (secret, enabled, client_events, api_tokens, limits))| App {
                    id: format!("app-{i}"),
                    key: format!("key-{i}"),
                    secret,
                    enabled,
                    enable_client_events: client_events,
                    enable_subscription_count: false,
                    enable_watchlist_events: false,
                    api_tokens,
                    limits,
                    history: vec![],
                })
                .collect()
        })
    }

    /// A duration of at least `min_ms` milliseconds, up to about thirty years.
    fn millis(min_ms: u64) -> impl Strategy<Value = Duration> {
        (min_ms..1_000_000_000_000).prop_map(Duration::from_millis)
    }

    fn connection() -> impl Strategy<Value = ConnectionConfig> {
        (millis(1_000), millis(1_000), 1..BIG, 0..BIG, 16_384..BIG, millis(1_000), millis(1_000), 1024..BIG)
            .prop_map(|(activity, pong, message, pending, outbound, write, handshake, head)| {
                ConnectionConfig {
                    activity_timeout: activity,
                    pong_timeout: pong,
                    max_message_bytes: message,
                    max_pending_input_bytes: message + pending,
                    outbound_queue_bytes: outbound,
                    write_timeout: write,
                    handshake_timeout: handshake,
                    max_request_head_bytes: head,
                }
            })
    }

    fn valid() -> impl Strategy<Value = Valid> {
        let host = prop_oneof![
            any::<[u8; 4]>().prop_map(|ip| std::net::Ipv4Addr::from(ip).to_string()),
            any::<[u16; 8]>().prop_map(|ip| std::net::Ipv6Addr::from(ip).to_string()),
        ];
        let ports = (any::<u16>(), any::<u16>(), any::<u16>())
            // Two listeners may share only port 0 (each gets a port of its own).
            .prop_filter("distinct ports", |&(a, b, c)| {
                let ports = [a, b, c];
                ports.iter().enumerate().all(|(i, p)| *p == 0 || !ports[..i].contains(p))
            });
        let http = (1024..BIG, millis(0), millis(1_000)).prop_map(|(body, tolerance, timeout)| {
            HttpApiConfig { max_body_bytes: body, timestamp_tolerance: tolerance, body_timeout: timeout }
        });
        let redis = ("[a-z0-9.-]{1,20}", any::<u16>(), "[a-z0-9:_-]{1,12}", millis(1_000));
        let server = (any::<u32>(), millis(1_000), 0usize..64);
        (host, ports, server, connection(), http, redis, apps()).prop_map(
            |(
                host,
                ports,
                (node_id, grace, threads),
                connection,
                http,
                (redis_host, redis_port, prefix, lease),
                apps,
            )| {
                Valid {
                    host,
                    ports,
                    node_id,
                    shutdown_grace: grace,
                    edge_threads: threads,
                    connection,
                    http,
                    redis_url: format!("redis://{redis_host}:{redis_port}/"),
                    redis_prefix: prefix,
                    lease,
                    apps,
                }
            },
        )
    }

    /// Where an option is set: the file, the environment, or both (the file then
    /// holds a decoy of the wrong type, which the environment must replace).
    #[derive(Debug, Clone, Copy)]
    enum Place {
        File,
        Env,
        Both,
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_environment_overrides_load_or_list_errors(
            vars in vec((env_key(), env_value()), 0..6),
        ) {
            match Config::load(&Flags::default(), vars) {
                Ok(_) => {}
                Err(errors) => {
                    prop_assert!(!errors.is_empty());
                    prop_assert!(errors.iter().all(|e| !e.is_empty()), "{:?}", errors);
                }
            }
        }

        #[test]
        fn arbitrary_environment_over_the_example_file_never_panics(
            vars in vec((env_key(), env_value()), 1..4),
        ) {
            let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/herald.example.toml");
            let flags = Flags { config: Some(example.into()), ..Flags::default() };
            if let Err(errors) = Config::load(&flags, vars) {
                prop_assert!(!errors.is_empty());
            }
        }

        #[test]
        fn a_valid_configuration_loads_with_the_values_set(
            valid in valid(),
            places in vec(select(vec![Place::File, Place::Env, Place::Both]), 22),
            lowercase in any::<bool>(),
            noise in vec(("HERALD_(BIN|TEST|X)[A-Z_]{0,8}", env_value()), 0..3),
        ) {
            let mut top = String::new();
            let mut sections: BTreeMap<&str, String> = BTreeMap::new();
            let mut vars: Vec<(String, String)> = noise;
            for ((section, key, value), place) in valid.options().into_iter().zip(places) {
                let in_file = match place {
                    Place::File => value.clone(),
                    Place::Env | Place::Both => "\"decoy\"".to_string(),
                };
                if !matches!(place, Place::Env) {
                    let text =
                        if section.is_empty() { &mut top } else { sections.entry(section).or_default() };
                    text.push_str(&format!("{key} = {in_file}\n"));
                }
                if !matches!(place, Place::File) {
                    let name =
                        if section.is_empty() { key.to_string() } else { format!("{section}__{key}") };
                    let name = if lowercase { name } else { name.to_ascii_uppercase() };
                    vars.push((format!("HERALD_{name}"), value));
                }
            }
            for (section, text) in &sections {
                top.push_str(&format!("[{section}]\n{text}"));
            }
            let (_file, flags) = with_file(&top);
            let config =
                Config::load(&flags, vars).map_err(|e| TestCaseError::fail(format!("{e:?}\n{top}")))?;
            valid.check(&config)?;
        }
    }
}

#[test]
fn telemetry_is_off_by_default_and_its_settings_are_checked() {
    let config = Config::load(&Flags::default(), env(&[])).unwrap();
    assert_eq!(config.telemetry.otlp_endpoint, None, "no exporter unless configured");
    let errors = Config::load(
        &Flags::default(),
        env(&[
            ("HERALD_TELEMETRY__OTLP_ENDPOINT", "collector:4317"),
            ("HERALD_TELEMETRY__SAMPLE_RATIO", "1.5"),
            ("HERALD_TELEMETRY__MAX_QUEUE_SIZE", "0"),
            ("HERALD_TELEMETRY__EXPORT_TIMEOUT", "10ms"),
        ]),
    )
    .unwrap_err();
    for field in ["otlp_endpoint", "sample_ratio", "max_queue_size", "export_timeout"] {
        assert!(errors.iter().any(|e| e.starts_with(&format!("telemetry.{field}"))), "{field}: {errors:#?}");
    }
    let config = Config::load(
        &Flags::default(),
        env(&[
            ("HERALD_TELEMETRY__OTLP_ENDPOINT", "http://collector:4317"),
            ("HERALD_TELEMETRY__SAMPLE_RATIO", "0.01"),
            ("HERALD_TELEMETRY__RESOURCE_ATTRIBUTES", r#"{"deployment.environment" = "prod"}"#),
        ]),
    )
    .unwrap();
    assert_eq!(config.telemetry.otlp_endpoint.as_deref(), Some("http://collector:4317"));
    assert_eq!(config.telemetry.sample_ratio, 0.01);
    assert_eq!(
        config.telemetry.resource_attributes,
        [("deployment.environment".to_owned(), "prod".to_owned())]
    );
}

/// `[redis]` over TLS with an ACL user: a password file (its trailing newline is not
/// part of the password), a private CA and a client certificate.
#[test]
fn redis_over_tls_with_an_acl_user_and_a_password_file() {
    let ca = herald_testkit::tls::TestCa::new();
    let client = ca.issue("herald-client");
    let password_file = ca.dir().join("redis-password");
    std::fs::write(&password_file, "from-the-file\n").unwrap();
    let path = |p: &Path| p.display().to_string();
    let (ca_file, cert_file, key_file) =
        (path(&ca.ca_file()), path(&client.cert_file), path(&client.key_file));
    let vars = [
        ("HERALD_REDIS__SHARDS", r#"["rediss://10.0.0.1:6380/", "rediss://10.0.0.2:6380/"]"#),
        ("HERALD_REDIS__USERNAME", "herald"),
        ("HERALD_REDIS__PASSWORD_FILE", &path(&password_file)),
        ("HERALD_REDIS__CA_FILE", &ca_file),
        ("HERALD_REDIS__CERT_FILE", &cert_file),
        ("HERALD_REDIS__KEY_FILE", &key_file),
    ];
    let config = Config::load(&Flags::default(), env(&vars)).unwrap();
    let client = config.redis.client().unwrap();
    assert_eq!(client.urls, ["rediss://10.0.0.1:6380/", "rediss://10.0.0.2:6380/"]);
    assert_eq!(
        (client.username.as_deref(), client.password.as_deref()),
        (Some("herald"), Some("from-the-file"))
    );
    assert_eq!(client.tls.ca_file.as_deref(), Some(ca.ca_file().as_path()));
    assert_eq!(client.tls.client.unwrap().key_file, Path::new(&key_file));
    assert!(!format!("{config:?}").contains("from-the-file"));

    // From the environment, a password is the text given, whatever it looks like.
    for password in ["123456", "\"quoted\"", "true", "1e3", "[x]"] {
        let config = Config::load(&Flags::default(), env(&[("HERALD_REDIS__PASSWORD", password)])).unwrap();
        assert_eq!(config.redis.client().unwrap().password.as_deref(), Some(password));
    }
}

/// Every problem of `[redis]`'s TLS and credentials at once, none of them quoting a
/// password.
#[test]
fn redis_tls_and_credential_problems_are_reported_together_without_the_password() {
    let ca = herald_testkit::tls::TestCa::new();
    let client = ca.issue("herald-client");
    let missing = ca.dir().join("missing.pem").display().to_string();
    let (_file, flags) = with_file(&format!(
        r#"
        [redis]
        shards = ["rediss://:url-secret-1@10.0.0.1:6380/", "redis://10.0.0.2:6379/", "rediss://h:1/#insecure"]
        password = "config-secret-2"
        password_file = "{missing}"
        ca_file = "{missing}"
        cert_file = "{}"
        "#,
        client.cert_file.display()
    ));
    let errors = Config::load(&flags, env(&[])).unwrap_err();
    let expected = [
        "redis.shards: mixes rediss:// (TLS) and redis:// URLs",
        "redis.shards[2]: \"rediss://h:1/#insecure\": #insecure",
        "redis.cert_file and redis.key_file: a client certificate needs both",
        "redis.ca_file: cannot read",
        "redis.password and redis.password_file: both given",
        "redis.shards[0]: has a password, and redis.password or redis.password_file is set too",
    ];
    for expected in expected {
        assert!(errors.iter().any(|e| e.starts_with(expected)), "{expected}: {errors:#?}");
    }
    let text = errors.join("\n");
    assert!(!text.contains("secret-1") && !text.contains("secret-2"), "{text}");

    // TLS settings with redis:// URLs; a password file that is not there; a URL
    // with a user name besides redis.username.
    let vars = [
        ("HERALD_REDIS__URL", "redis://user@127.0.0.1:6379/"),
        ("HERALD_REDIS__USERNAME", "herald"),
        ("HERALD_REDIS__CA_FILE", &ca.ca_file().display().to_string()),
        ("HERALD_REDIS__PASSWORD_FILE", missing.as_str()),
    ];
    let errors = Config::load(&Flags::default(), env(&vars)).unwrap_err();
    for expected in [
        "redis.ca_file: TLS settings, but redis.url is not rediss://",
        "redis.password_file: cannot read",
        "redis.url: has a user name, and redis.username is set too",
    ] {
        assert!(errors.iter().any(|e| e.starts_with(expected)), "{expected}: {errors:#?}");
    }

    // A password of another type than text is refused without being quoted.
    let (_file, flags) = with_file("[redis]\npassword = 987654321\n");
    let errors = Config::load(&flags, env(&[])).unwrap_err();
    assert_eq!(errors, ["redis.password: must be a string (put it in quotes)"]);
}

#[test]
fn a_redis_password_is_never_shown() {
    let vars = [("HERALD_REDIS__URL", "rediss://herald:url-secret-3@cache.example:6380/0")];
    let config = Config::load(&Flags::default(), env(&vars)).unwrap();
    let shown = format!("{config:?} {:?}", config.redis.client().unwrap());
    assert!(!shown.contains("url-secret-3"), "{shown}");
    assert!(shown.contains("rediss://herald:***@cache.example:6380/0"), "{shown}");
    let vars = [("HERALD_REDIS__PASSWORD", "env-secret-5")];
    let config = Config::load(&Flags::default(), env(&vars)).unwrap();
    let shown = format!("{config:?} {:?}", config.redis.client().unwrap());
    assert!(!shown.contains("env-secret-5") && shown.contains("<redacted>"), "{shown}");
    // Not even when the URL is wrong.
    let vars = [("HERALD_REDIS__URL", "http://herald:url-secret-4@cache.example/")];
    let errors = Config::load(&Flags::default(), env(&vars)).unwrap_err();
    assert!(!errors.join("\n").contains("url-secret-4"), "{errors:#?}");
}

#[test]
fn listener_tls_files_are_checked_by_the_commands_that_listen_only() {
    let (_file, flags) = with_file(
        "[server.tls]\ncert_file = \"/nonexistent/tls.crt\"\nkey_file = \"/nonexistent/tls.key\"\n\
         [grpc.tls]\ncert_file = \"/nonexistent/grpc.crt\"\nkey_file = \"/nonexistent/grpc.key\"\n",
    );
    // A dispatcher, or `herald smoke`, never serves these: it needs neither file.
    let config = Config::load(&flags, env(&[])).unwrap();
    assert!(config.server.tls.enabled() && config.grpc.tls.enabled());
    let errors = Config::load(&Flags { listens: true, ..flags }, env(&[])).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("server.tls: /nonexistent/tls.crt: cannot be read"), "{errors:?}");
    assert!(errors[1].starts_with("grpc.tls: /nonexistent/grpc.crt: cannot be read"), "{errors:?}");
}

#[test]
fn redis_client_certificates_are_checked_for_their_key_and_validity() {
    let ca = herald_testkit::tls::TestCa::new();
    let (a, b) = (ca.issue("a"), ca.issue("b"));
    let expired = ca.issue_leaf(herald_testkit::tls::Leaf::new("old").expired());
    let redis = |cert: &herald_testkit::tls::Issued, key: &herald_testkit::tls::Issued, ca_file: &Path| {
        format!(
            "[redis]\nurl = \"rediss://127.0.0.1:6380/\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
            cert.cert_file.display(),
            key.key_file.display(),
            ca_file.display()
        )
    };
    let (_file, flags) = with_file(&redis(&a, &a, &ca.ca_file()));
    Config::load(&flags, env(&[])).unwrap();
    let (_file, flags) = with_file(&redis(&a, &b, &expired.cert_file));
    let errors = Config::load(&flags, env(&[])).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("redis: ") && errors[0].contains("b.key is not the key of"), "{errors:?}");
    assert!(errors[1].starts_with("redis.ca_file: ") && errors[1].contains("no certificate in it is valid"));
    let (_file, flags) = with_file(&redis(&expired, &expired, &ca.ca_file()));
    let errors = Config::load(&flags, env(&[])).unwrap_err();
    assert!(
        errors[0].starts_with("redis.cert_file: ") && errors[0].contains("expired on 2021-01-01"),
        "{errors:?}"
    );
}

#[test]
fn kafka_security_settings_are_checked_with_the_rest() {
    let ca = herald_testkit::tls::TestCa::new();
    let expired = ca.issue_leaf(herald_testkit::tls::Leaf::new("old").expired());
    let (_file, flags) = with_file(&format!(
        "[server]\nhost = \"nowhere\"\n[kafka]\nbrokers = \"127.0.0.1:9093\"\n\
         [kafka.properties]\n\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"{}\"\n\
         \"ssl.certificate.location\" = \"{}\"\n\"ssl.key.location\" = \"{}\"\n\
         [kafka.property_files]\n\"ssl.key.password\" = \"/nonexistent/kafka-key-password\"\n",
        ca.ca_file().display(),
        expired.cert_file.display(),
        expired.key_file.display(),
    ));
    let errors = Config::load(&flags, env(&[])).unwrap_err();
    let text = errors.join("\n");
    assert!(text.contains("server.host"), "{text}");
    assert!(
        text.contains("kafka.property_files") && text.contains("/nonexistent/kafka-key-password"),
        "{text}"
    );
    assert!(
        text.contains("kafka.properties.ssl.certificate.location: ") && text.contains("expired on"),
        "{text}"
    );
}
