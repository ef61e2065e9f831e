//! `herald-loadtest`: measures Herald and any Pusher-compatible server. Every run is
//! bounded in time, stops by itself, and prints a human summary on stderr followed by
//! one JSON line on stdout.
//!
//! | scenario | what |
//! |---|---|
//! | `connect` | N connections, each subscribed to one of C channels: accept rate, server memory and CPU per connection |
//! | `fanout` | N subscribers over C channels, publishes at R/s: loss, deliveries/s, latency percentiles, server CPU per delivery |
//! | `churn` | `fanout` while connections open, subscribe and drop at `--churn` per second |
//! | `publish` | gRPC publishes per second (unary or stream) |
//! | `null-server` | the fan-out floor the servers are compared against: a Pusher-speaking server that only `write()`s |
//! | `webhooks` | the webhook dispatcher on one core: deliveries per second to a keep-alive sink, append→2xx latency |
//! | `scale` | a whole cluster (Redis, many edges, many load processes) holding N connections: connect rate, memory, broadcast and steady latency, kill -9 and rolling-restart recovery |
//! | `history` | channel history: publish cost with it on and off, and a reconnect storm of clients each recovering what it missed |
//! | `tls` | `wss://` against `ws://` in one run: server CPU per connection set up and per delivery, memory per idle connection |
//! | `otlp-sink` | an OTLP/gRPC trace collector that only counts spans: the other end of a traced server |

mod connect;
mod fanout;
mod history;
mod null_server;
mod otlp_sink;
mod plot;
mod publish;
mod pusher;
mod scale;
mod server_stats;
mod tls;
mod webhooks;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "herald-loadtest", about = "Load generator for Herald and Pusher-compatible servers")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Open many subscribed connections; report accept rate and per-connection cost.
    Connect(connect::ConnectArgs),
    /// Fan publications out to many subscribers; report loss, rate, latency, CPU.
    Fanout(fanout::FanoutArgs),
    /// Fan-out while connections open and drop at `--churn` per second.
    Churn(fanout::FanoutArgs),
    /// Publish through the gRPC API; report publishes per second.
    Publish(publish::PublishArgs),
    /// Serve as the null server: the floor of fan-out cost (one thread).
    NullServer(null_server::NullServerArgs),
    /// Deliver webhooks with the dispatcher on one core; report rate and latency.
    Webhooks(webhooks::WebhooksArgs),
    /// Run a whole cluster at scale: connections, broadcasts, crashes, rolling restarts.
    Scale(scale::ScaleArgs),
    /// Channel history: publish cost on and off, and a storm of recovering reconnects.
    History(history::HistoryArgs),
    /// TLS on the edge port against plain, one run: setup and fan-out CPU, memory.
    Tls(tls::TlsArgs),
    /// Internal: one load process of `scale`.
    #[command(hide = true)]
    ScaleWorker(scale::worker::WorkerArgs),
    /// Serve OTLP/gRPC traces, counting spans; report the counts when stopped.
    OtlpSink(otlp_sink::OtlpSinkArgs),
}

fn main() -> anyhow::Result<()> {
    let scenario = Cli::parse().scenario;
    let report = match scenario {
        Scenario::NullServer(args) => null_server::run(args)?,
        // A worker holds thousands of connections on one thread: no cross-thread
        // wake-ups, and the machine's cores go to the servers being measured.
        Scenario::ScaleWorker(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(scale::worker::run(args))?,
        scenario => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(async {
                match scenario {
                    Scenario::Connect(args) => connect::run(args).await,
                    Scenario::Fanout(args) => fanout::run(args).await,
                    Scenario::Churn(args) if args.churn > 0.0 => fanout::run(args).await,
                    Scenario::Churn(_) => anyhow::bail!("churn needs --churn RATE (connections per second)"),
                    Scenario::Publish(args) => publish::run(args).await,
                    Scenario::Webhooks(args) => webhooks::run(args).await,
                    Scenario::OtlpSink(args) => otlp_sink::run(args).await,
                    Scenario::Scale(args) => scale::run(args).await,
                    Scenario::History(args) => history::run(args).await,
                    Scenario::Tls(args) => tls::run(args).await,
                    Scenario::ScaleWorker(_) => anyhow::bail!("a scale worker runs on its own runtime"),
                    Scenario::NullServer(_) => anyhow::bail!("the null server runs on its own runtime"),
                }
            })?
        }
    };
    println!("{report}");
    Ok(())
}
