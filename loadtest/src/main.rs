//! `herald-loadtest`: measures Herald and any Pusher-compatible server. Every run is
//! bounded in time, stops by itself, and prints a human summary on stderr followed by
//! one JSON line on stdout.
//!
//! | scenario | what |
//! |---|---|
//! | `connect` | N connections, each subscribed to one of C channels: accept rate, server memory and CPU per connection |
//! | `fanout` | N subscribers over C channels, publishes at R/s: loss, deliveries/s, latency percentiles, server CPU per delivery |
//! | `publish` | gRPC publishes per second (unary or stream) |

mod connect;
mod fanout;
mod publish;
mod pusher;
mod server_stats;

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
    /// Publish through the gRPC API; report publishes per second.
    Publish(publish::PublishArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let report = match Cli::parse().scenario {
        Scenario::Connect(args) => connect::run(args).await?,
        Scenario::Fanout(args) => fanout::run(args).await?,
        Scenario::Publish(args) => publish::run(args).await?,
    };
    println!("{report}");
    Ok(())
}
