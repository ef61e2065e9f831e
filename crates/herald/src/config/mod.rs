//! Configuration: a TOML file, overridden by `HERALD_*` environment variables, then by
//! command-line flags (`layers`), read into the sections of the file (`sections`),
//! then checked and turned into the typed settings of each part ([`Config`]).
//! Everything is parsed and validated once, before any port is bound, and every
//! problem is reported at once.
//!
//! Durations are strings (`"250ms"`, `"5s"`, `"2m"`) everywhere; the options that were
//! whole numbers of a unit named in the key (`activity_timeout_secs`) keep working
//! under their old names (see `layers`).

mod layers;
mod sections;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use herald_api::GrpcConfig;
use herald_core::{App, AppLimits, Apps};
use herald_dispatcher::DispatcherConfig;
use herald_kafka::KafkaConfig;
use herald_node::{ConnectionConfig, EdgeConfig, EventsConfig, HttpApiConfig};
use herald_telemetry::TracingConfig;
use herald_webhooks::endpoint::Endpoint;
pub use layers::Flags;
use layers::{Alias, Layered};
use sections::Sections;
pub use sections::{LogConfig, RedisSection, ServerConfig};

/// The whole configuration, typed and validated (see `config/herald.example.toml` for
/// every option).
#[derive(Debug, Clone)]
pub struct Config {
    /// `server.host`: the address every listener binds.
    pub host: IpAddr,
    pub server: ServerConfig,
    pub connection: ConnectionConfig,
    pub http: HttpApiConfig,
    pub grpc: GrpcConfig,
    pub log: LogConfig,
    /// `[telemetry]`: where traces go (nowhere by default).
    pub telemetry: TracingConfig,
    pub redis: RedisSection,
    pub events: EventsConfig,
    /// The Kafka event log; absent: an edge records no events (no webhooks).
    pub kafka: Option<KafkaConfig>,
    /// `[dispatcher]`, reading `events.topic`; `client.policy` is the SSRF policy of
    /// `dispatcher.allow_addresses`, which the webhook admin API applies too.
    pub dispatcher: DispatcherConfig,
    /// `dispatcher.allow_addresses` lists something: `herald dev` then applies it as
    /// it is, instead of allowing loopback receivers.
    pub allow_addresses_set: bool,
    /// The endpoints of `[[webhooks]]`, created or updated at start-up.
    pub webhooks: Vec<Endpoint>,
    /// The configured apps, or (`demo`, for `herald dev` without any) the demo app.
    pub apps: Apps,
    pub demo: bool,
    /// The deprecated option names used, one note each.
    pub deprecated: Vec<String>,
}

impl Config {
    /// Loads the file (if any), applies `env` (`HERALD_*` variables) and the flags, and
    /// validates the result. `Err` lists every problem found.
    pub fn load(flags: &Flags, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, Vec<String>> {
        let Layered { table, aliases } = layers::layered(flags, env)?;
        let named =
            |errors: Vec<String>| errors.into_iter().map(|e| given_name(e, &aliases)).collect::<Vec<_>>();
        let sections: Sections =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().message().to_string();
                let error = if path == "." {
                    format!("invalid configuration: {message}")
                } else {
                    format!("{path}: {message}")
                };
                named(vec![error])
            })?;
        let mut config = Self::validate(sections, flags.listens).map_err(named)?;
        config.deprecated = aliases
            .iter()
            .map(|a| format!("{} is deprecated (it still works): write {}", a.given, a.instead))
            .collect();
        Ok(config)
    }

    /// Checks every section, and builds the typed settings from them. `listens`: the
    /// command serves the listeners, whose TLS files are then read and checked too
    /// (a dispatcher or `herald smoke` does not need the edge's private key).
    fn validate(sections: Sections, listens: bool) -> Result<Self, Vec<String>> {
        let Sections {
            server,
            connection,
            http,
            grpc,
            log,
            telemetry,
            redis,
            events,
            kafka,
            dispatcher,
            webhooks,
            apps,
        } = sections;
        let mut errors = Vec::new();
        redis.validate(&mut errors);
        let host = server
            .host
            .parse::<IpAddr>()
            .map_err(|_| errors.push(format!("server.host: {:?} is not an IP address", server.host)))
            .ok();
        server.validate(&mut errors);
        let ports = [
            ("server.port", server.port),
            ("server.metrics_port", server.metrics_port),
            ("grpc.port", grpc.port),
        ];
        for (i, (name, port)) in ports.iter().enumerate() {
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| *p == *port && *port != 0) {
                errors.push(format!("{name}: {port} is already used by {other}"));
            }
        }
        connection.validate(&mut errors);
        http.validate(&mut errors);
        grpc.validate(&mut errors);
        if let Some(kafka) = &kafka {
            kafka.check(&mut errors);
        }
        if listens {
            let now = std::time::SystemTime::now();
            server.tls.check("server.tls", true, now, &mut errors);
            grpc.tls.check("grpc.tls", false, now, &mut errors);
        }
        events.validate(&mut errors);
        let telemetry = telemetry.build(&mut errors);
        let allow_addresses_set = !dispatcher.allow_addresses.is_empty();
        let dispatcher = dispatcher.build(&events.topic, &mut errors);
        let demo = apps.is_empty();
        let apps = Apps::new(if demo { vec![demo_app()] } else { apps });
        let mut endpoints = Vec::new();
        for (i, webhook) in webhooks.iter().enumerate() {
            match webhook.endpoint() {
                Ok(endpoint) => endpoints.push(endpoint),
                Err(e) => errors.push(format!("webhooks[{i}]: {e}")),
            }
            if let Ok(apps) = &apps
                && !demo
                && apps.by_id(&webhook.app_id).is_none()
            {
                errors.push(format!("webhooks[{i}].app_id: no app {:?}", webhook.app_id));
            }
        }
        let apps = apps.map_err(|app_errors| errors.extend(app_errors)).ok();
        // Each of these is None only after recording why.
        match (host, dispatcher, apps) {
            (Some(host), Some(dispatcher), Some(apps)) if errors.is_empty() => Ok(Self {
                host,
                server,
                connection,
                http,
                grpc,
                log,
                telemetry,
                redis,
                events,
                kafka,
                dispatcher,
                allow_addresses_set,
                webhooks: endpoints,
                apps,
                demo,
                deprecated: Vec::new(),
            }),
            _ => Err(errors),
        }
    }

    pub fn edge(&self) -> EdgeConfig {
        EdgeConfig {
            connection: self.connection.clone(),
            http: self.http.clone(),
            shutdown_grace: self.server.shutdown_grace,
            threads: self.server.edge_threads,
            occupancy_flush: self.server.occupancy_flush,
            max_connections: self.server.max_connections,
        }
    }

    /// The configured apps, or (for `herald dev` without any) the demo app, and which.
    pub fn apps_or_demo(&self) -> (Apps, bool) {
        (self.apps.clone(), self.demo)
    }

    /// How many apps the configuration declares (none: the demo app is served).
    pub fn configured_apps(&self) -> usize {
        if self.demo { 0 } else { self.apps.len() }
    }
}

/// `error`, naming the deprecated key it is about as well when one was used:
/// `connection.pong_timeout (given as connection.pong_timeout_secs): …`.
fn given_name(error: String, aliases: &[Alias]) -> String {
    for alias in aliases {
        if let Some(rest) = error.strip_prefix(&alias.name)
            && rest.starts_with(':')
        {
            return format!("{} (given as {}){rest}", alias.name, alias.given);
        }
    }
    error
}

/// The app `herald dev` serves when no app is configured. Fixed credentials, so a demo
/// page keeps working across restarts; bound to loopback by default.
pub fn demo_app() -> App {
    App {
        id: "demo".into(),
        key: "demo-key".into(),
        secret: "demo-secret".into(),
        enabled: true,
        enable_client_events: true,
        enable_subscription_count: false,
        enable_watchlist_events: false,
        api_tokens: vec!["herald-demo-api-token".into()],
        limits: AppLimits::default(),
        history: vec![],
    }
}
