//! `herald smoke`: checks a running Herald end to end, as its users reach it. A Pusher
//! client connects and subscribes to a fresh channel; an event published through the
//! signed Pusher HTTP API and one published through gRPC (when `--grpc` is given) must
//! both arrive. Exit 0, or 1 naming the step that failed. `helm test` runs it; operators
//! can run it against any deployment.
//!
//! The app, its secret and API token come from the same configuration layers as every
//! other command (file, `HERALD_*` environment), so a pod given the deployment's
//! ConfigMap and Secret needs nothing more.

mod ws;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use herald_core::{App, auth};
use herald_proto::v1::{Event, PublishRequest, event::Payload, publisher_client::PublisherClient};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::config::{Config, Flags};
use ws::WebSocket;

/// `herald smoke`'s arguments.
#[derive(clap::Args)]
pub(crate) struct SmokeArgs {
    #[command(flatten)]
    pub(crate) flags: Flags,
    /// The WebSocket endpoint clients use: ws://HOST:PORT.
    #[arg(long)]
    ws: String,
    /// The Pusher HTTP API: http://HOST:PORT.
    #[arg(long)]
    http: String,
    /// The gRPC API: http://HOST:PORT (its step is skipped without it).
    #[arg(long)]
    grpc: Option<String>,
    /// The app to use (required when several are configured).
    #[arg(long)]
    app: Option<String>,
    /// How long each step may take.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// One step of the check: what it is called in the report.
type Step = &'static str;

/// Runs every step; the error names the step that failed.
pub(crate) async fn run(args: &SmokeArgs, config: &Config) -> Result<Vec<String>, (Step, anyhow::Error)> {
    let app = match &args.app {
        Some(id) => {
            config.apps.by_id(id).cloned().ok_or_else(|| anyhow::anyhow!("no app {id:?} is configured"))
        }
        None if config.apps.len() == 1 => config.apps.iter().next().cloned().context("no app configured"),
        None => Err(anyhow::anyhow!("{} apps are configured: name one with --app", config.apps.len())),
    }
    .map_err(|e| ("choose the app", e))?;
    let mut report = Vec::new();
    let channel = format!("smoke-{:016x}", fastrand::u64(..));
    let started = Instant::now();
    let mut client =
        connect(&args.ws, &app, &channel, args.timeout).await.map_err(|e| ("connect and subscribe", e))?;
    report.push(format!("subscribed to {channel} in {:?}", started.elapsed()));

    let sent = Instant::now();
    publish_http(&args.http, &app, &channel, args.timeout)
        .await
        .map_err(|e| ("publish over the HTTP API", e))?;
    delivered(&mut client, &channel, "smoke-http", args.timeout)
        .await
        .map_err(|e| ("delivery of the HTTP API publish", e))?;
    report.push(format!("HTTP API publish delivered in {:?}", sent.elapsed()));

    match &args.grpc {
        Some(grpc) => {
            let sent = Instant::now();
            publish_grpc(grpc, &app, &channel, args.timeout).await.map_err(|e| ("publish over gRPC", e))?;
            delivered(&mut client, &channel, "smoke-grpc", args.timeout)
                .await
                .map_err(|e| ("delivery of the gRPC publish", e))?;
            report.push(format!("gRPC publish delivered in {:?}", sent.elapsed()));
        }
        None => report.push("gRPC skipped (no --grpc)".into()),
    }
    Ok(report)
}

/// `host` and `port` of `url` with the expected scheme.
fn endpoint(url: &str, scheme: &str, default_port: u16) -> anyhow::Result<(String, u16)> {
    let uri: http::Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
    if uri.scheme_str() != Some(scheme) {
        bail!("{url:?}: expected a {scheme}:// URL");
    }
    let host = uri.host().with_context(|| format!("{url:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    Ok((host, uri.port_u16().unwrap_or(default_port)))
}

/// Connects as a Pusher client of `app` and subscribes to `channel`.
async fn connect(url: &str, app: &App, channel: &str, within: Duration) -> anyhow::Result<WebSocket> {
    let (host, port) = endpoint(url, "ws", 80)?;
    let path =
        format!("/app/{}?protocol=7&client=herald-smoke&version={}", app.key, env!("CARGO_PKG_VERSION"));
    let connecting = WebSocket::connect(&host, port, &path);
    let mut client = tokio::time::timeout(within, connecting).await.context("no handshake in time")??;
    let established = client.next_text(within).await?;
    let established: Value = serde_json::from_str(&established)?;
    if established["event"] != "pusher:connection_established" {
        bail!("expected pusher:connection_established, got {established}");
    }
    let subscribe = json!({ "event": "pusher:subscribe", "data": { "channel": channel } });
    client.send(&subscribe.to_string()).await?;
    loop {
        let message: Value = serde_json::from_str(&client.next_text(within).await?)?;
        match message["event"].as_str() {
            Some("pusher_internal:subscription_succeeded") if message["channel"] == channel => {
                return Ok(client);
            }
            Some("pusher:error" | "pusher:subscription_error") => bail!("refused: {message}"),
            _ => {}
        }
    }
}

/// Waits for `event` on `channel`.
async fn delivered(
    client: &mut WebSocket,
    channel: &str,
    event: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message: Value = serde_json::from_str(&client.next_text(left).await?)?;
        if message["event"] == event && message["channel"] == channel {
            return Ok(());
        }
    }
}

/// `POST /apps/{id}/events`, signed as the Pusher server SDKs sign it.
async fn publish_http(url: &str, app: &App, channel: &str, within: Duration) -> anyhow::Result<()> {
    let (host, port) = endpoint(url, "http", 80)?;
    let path = format!("/apps/{}/events", app.id);
    let body = json!({ "name": "smoke-http", "channels": [channel], "data": "{}" }).to_string();
    let now = u64::try_from(herald_core::time::now_ms() / 1000).unwrap_or_default();
    let query = auth::sign_api_request(app, "POST", &path, Vec::new(), body.as_bytes(), now);
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", percent_encode(v))).collect();
    let request = format!(
        "POST {path}?{} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        query.join("&"),
        body.len()
    );
    let exchange = async {
        let mut stream = TcpStream::connect((host.as_str(), port)).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(within, exchange).await.context("no answer in time")??;
    let status = response.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        bail!("{status}: {body}");
    }
    Ok(())
}

/// `herald.v1.Publisher/Publish` with the app's first API token.
async fn publish_grpc(url: &str, app: &App, channel: &str, within: Duration) -> anyhow::Result<()> {
    let token = app.api_tokens.first().context("the app has no api_tokens, which gRPC needs")?;
    let (host, port) = endpoint(url, "http", 80)?;
    let publish = async {
        let address = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .with_context(|| format!("{host} resolves to nothing"))?;
        let channel_to = herald_api::client::connect(address).await?;
        let mut client = PublisherClient::with_origin(channel_to, url.parse()?);
        let event = Event {
            name: "smoke-grpc".into(),
            payload: Some(Payload::Data("{}".into())),
            channels: vec![channel.to_owned()],
            ..Event::default()
        };
        let mut request = tonic::Request::new(PublishRequest { app_id: app.id.clone(), event: Some(event) });
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
        client.publish(request).await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(within, publish).await.context("no answer in time")?
}

/// Percent-encodes a query value (the signature is over the decoded pairs).
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_need_their_scheme_and_a_host() {
        assert_eq!(endpoint("ws://edge:6001", "ws", 80).unwrap(), ("edge".into(), 6001));
        assert_eq!(endpoint("http://[::1]:9", "http", 80).unwrap(), ("::1".into(), 9));
        assert_eq!(endpoint("http://api", "http", 80).unwrap(), ("api".into(), 80));
        assert!(endpoint("http://edge:6001", "ws", 80).unwrap_err().to_string().contains("ws://"));
        assert!(endpoint("not a url", "ws", 80).is_err());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode("a b/c=d"), "a%20b%2Fc%3Dd");
        assert_eq!(percent_encode("1.0"), "1.0");
    }
}
