//! `herald`: the one binary of every role. Parses and validates all configuration
//! before starting the runtime or binding a port, then runs the role (`roles`), which
//! composes its parts (`wiring`) and runs until SIGTERM/SIGINT, then drains within the
//! grace period.
//!
//! | module | what |
//! |---|---|
//! | `config` | the configuration: file, `HERALD_*` environment, flags; validated once |
//! | `roles` | `dev`, `edge`, `dispatcher`: one module each |
//! | `wiring` | listeners, backbone (memory or Redis), webhook services (memory or Kafka + Redis) |
//! | `ready` | the ready file with the bound addresses |
//! | `signal`, `demo` | SIGTERM/SIGINT; the demo banner of `herald dev` |

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config;
mod demo;
mod ready;
mod roles;
mod signal;
mod smoke;
mod wiring;

use config::{Config, Flags};

/// Exit code for a configuration error (EX_CONFIG would be 78; 64 is EX_USAGE, which
/// is what the docs promise operators).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "herald", version, about = "Pusher-compatible realtime pub/sub server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process with an in-memory backbone (the embedded default).
    Dev(Flags),
    /// One stateless edge node of a cluster: the same services, with the Redis
    /// backbone (`[redis]`) shared by every edge, and the Kafka event log (`[kafka]`)
    /// when webhooks are wanted.
    Edge(Flags),
    /// The webhook dispatcher: consumes the event log (`[kafka]`) as a group, so any
    /// number of replicas share the work; rate limits and endpoints in Redis.
    Dispatcher(Flags),
    /// Validate the configuration (file + HERALD_* env + flags); exit 64 if invalid.
    CheckConfig(Flags),
    /// Check a running Herald end to end: a Pusher client subscribes, an event
    /// published through the HTTP API and one through gRPC arrive. Exit 0, or 1
    /// naming the step that failed (`helm test` runs this).
    // Boxed: its TLS options make it much the largest.
    Smoke(Box<smoke::SmokeArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The one TLS stack's crypto for every client that asks for the default (the
    // Redis client does); Herald's own listeners name theirs.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let flags = match &cli.command {
        Command::Dev(flags)
        | Command::Edge(flags)
        | Command::Dispatcher(flags)
        | Command::CheckConfig(flags) => flags,
        Command::Smoke(args) => &args.flags,
    };
    let listens = matches!(cli.command, Command::Dev(_) | Command::Edge(_) | Command::CheckConfig(_));
    let flags = &Flags { listens, ..flags.clone() };
    let loaded = Config::load(flags, std::env::vars()).and_then(|config| {
        if matches!(cli.command, Command::Dispatcher(_)) && config.kafka.is_none() {
            return Err(vec!["kafka: herald dispatcher needs the event log: set [kafka] brokers".into()]);
        }
        Ok(config)
    });
    let config = match loaded {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("herald: the configuration has {} error(s):", errors.len());
            for error in errors {
                eprintln!("  - {error}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command {
        Command::CheckConfig(_) => {
            for note in &config.deprecated {
                eprintln!("herald: warning: {note}");
            }
            println!("configuration is valid ({} app(s))", config.configured_apps());
            ExitCode::SUCCESS
        }
        Command::Smoke(args) => {
            let Some(runtime) = runtime() else { return ExitCode::FAILURE };
            match runtime.block_on(smoke::run(&args, &config)) {
                Ok(report) => {
                    report.iter().for_each(|line| println!("smoke: {line}"));
                    println!("smoke: ok");
                    ExitCode::SUCCESS
                }
                Err((step, e)) => {
                    eprintln!("smoke: {step} failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dev(_) | Command::Edge(_) | Command::Dispatcher(_) => {
            let mut config = config;
            let role = match cli.command {
                Command::Dev(_) => "dev",
                Command::Edge(_) => "edge",
                _ => "dispatcher",
            };
            if role != "dispatcher" && config.server.node_id == 0 {
                config.server.node_id = herald_node::Node::random_id();
            }
            let Some(runtime) = runtime() else { return ExitCode::FAILURE };
            // Inside the runtime: the span exporter's gRPC client runs on it.
            let telemetry = runtime.block_on(async {
                herald_telemetry::init(config.log.json, &config.telemetry, resource(role, &config))
            });
            for note in &config.deprecated {
                tracing::warn!("{note}");
            }
            let run = async {
                match role {
                    "dev" => roles::dev::run(config).await,
                    "edge" => roles::edge::run(config).await,
                    _ => roles::dispatcher::run(config).await,
                }
            };
            let result = runtime.block_on(run);
            // Spans still queued are exported (within the export timeout).
            runtime.block_on(async { tokio::task::spawn_blocking(|| telemetry.shutdown()).await.ok() });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// What every span of this process says about where it comes from: the role, the
/// node id (edges), and the Kubernetes pod (`POD_NAME`, which the Helm chart sets).
fn resource(role: &str, config: &Config) -> Vec<(&'static str, String)> {
    let mut attributes = vec![("herald.role", role.to_owned())];
    if role != "dispatcher" {
        attributes.push(("herald.node_id", config.server.node_id.to_string()));
    }
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        attributes.push(("k8s.pod.name", pod.clone()));
        attributes.push(("service.instance.id", pod));
    } else if role != "dispatcher" {
        attributes.push(("service.instance.id", format!("node-{}", config.server.node_id)));
    }
    attributes
}

/// The multi-threaded runtime every command runs on (`None`, reported, if it cannot
/// start).
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            None
        }
    }
}
