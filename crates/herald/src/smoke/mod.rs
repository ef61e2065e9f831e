//! `herald smoke`: checks a running Herald end to end, as its users reach it. A Pusher
//! client connects and subscribes to a fresh channel; an event published through the
//! signed Pusher HTTP API and one published through gRPC (when `--grpc` is given) must
//! both arrive. Exit 0, or 1 naming the step that failed. `helm test` runs it; operators
//! can run it against any deployment.
//!
//! The app, its secret and API token come from the same configuration layers as every
//! other command (file, `HERALD_*` environment), so a pod given the deployment's
//! ConfigMap and Secret needs nothing more.
//!
//! `wss://` and `https://` endpoints are reached over TLS (rustls), trusting Mozilla's
//! roots or `--ca-file`, presenting `--cert-file`/`--key-file` when the listener asks
//! for a client certificate.

mod ws;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use herald_core::{App, auth};
use herald_proto::v1::{Event, PublishRequest, event::Payload, publisher_client::PublisherClient};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use crate::config::{Config, Flags};
use ws::WebSocket;

/// `herald smoke`'s arguments.
#[derive(clap::Args)]
pub(crate) struct SmokeArgs {
    #[command(flatten)]
    pub(crate) flags: Flags,
    /// The WebSocket endpoint clients use: ws://HOST:PORT or wss://HOST:PORT.
    #[arg(long)]
    ws: String,
    /// The Pusher HTTP API: http://HOST:PORT or https://HOST:PORT.
    #[arg(long)]
    http: String,
    /// The gRPC API: http://HOST:PORT or https://HOST:PORT (its step is skipped
    /// without it).
    #[arg(long)]
    grpc: Option<String>,
    /// TLS: PEM CA certificates to trust instead of Mozilla's roots.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// TLS: a PEM client certificate to present (with --key-file).
    #[arg(long, requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// TLS: the PEM key of --cert-file.
    #[arg(long, requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// TLS: the name the server's certificate must carry, when the URLs reach it
    /// under another (a Service name in Kubernetes, say); default: the URL's host.
    #[arg(long)]
    server_name: Option<String>,
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
    let dialer = Dialer::new(args).map_err(|e| ("read the TLS files", e))?;
    let mut report = Vec::new();
    let channel = format!("smoke-{:016x}", fastrand::u64(..));
    let started = Instant::now();
    let mut client = connect(&dialer, &args.ws, &app, &channel, args.timeout)
        .await
        .map_err(|e| ("connect and subscribe", e))?;
    report.push(format!("subscribed to {channel} in {:?}", started.elapsed()));

    let sent = Instant::now();
    publish_http(&dialer, &args.http, &app, &channel, args.timeout)
        .await
        .map_err(|e| ("publish over the HTTP API", e))?;
    delivered(&mut client, &channel, "smoke-http", args.timeout)
        .await
        .map_err(|e| ("delivery of the HTTP API publish", e))?;
    report.push(format!("HTTP API publish delivered in {:?}", sent.elapsed()));

    match &args.grpc {
        Some(grpc) => {
            let sent = Instant::now();
            publish_grpc(&dialer, grpc, &app, &channel, args.timeout)
                .await
                .map_err(|e| ("publish over gRPC", e))?;
            delivered(&mut client, &channel, "smoke-grpc", args.timeout)
                .await
                .map_err(|e| ("delivery of the gRPC publish", e))?;
            report.push(format!("gRPC publish delivered in {:?}", sent.elapsed()));
        }
        None => report.push("gRPC skipped (no --grpc)".into()),
    }
    Ok(report)
}

/// Where an endpoint is: host, port, and whether it is TLS.
#[derive(Debug, PartialEq, Eq)]
struct Endpoint {
    host: String,
    port: u16,
    tls: bool,
}

/// The endpoint `url` names, with `scheme` (plain) or `secure_scheme` (TLS).
fn endpoint(url: &str, scheme: &str, secure_scheme: &str) -> anyhow::Result<Endpoint> {
    let uri: http::Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
    let tls = match uri.scheme_str() {
        Some(s) if s == scheme => false,
        Some(s) if s == secure_scheme => true,
        _ => bail!("{url:?}: expected a {scheme}:// or {secure_scheme}:// URL"),
    };
    let host = uri.host().with_context(|| format!("{url:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    Ok(Endpoint { host, port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }), tls })
}

/// A connection to an endpoint, TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type Stream = Box<dyn Io>;

/// Opens connections to the endpoints, with TLS where they say so.
struct Dialer {
    roots: Arc<rustls::RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    server_name: Option<String>,
}

impl Dialer {
    fn new(args: &SmokeArgs) -> anyhow::Result<Self> {
        let roots = match &args.ca_file {
            None => rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
            Some(file) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(
                    herald_tls::pem::read_certs(file).map_err(anyhow::Error::msg)?,
                );
                roots
            }
        };
        let identity = match (&args.cert_file, &args.key_file) {
            (Some(cert), Some(key)) => Some((
                herald_tls::pem::read_certs(cert).map_err(anyhow::Error::msg)?,
                herald_tls::pem::read_key(key).map_err(anyhow::Error::msg)?,
            )),
            _ => None,
        };
        Ok(Self { roots: Arc::new(roots), identity, server_name: args.server_name.clone() })
    }

    /// A connection to `endpoint`; over TLS, offering the `alpn` protocol.
    async fn open(&self, endpoint: &Endpoint, alpn: &[u8]) -> anyhow::Result<Stream> {
        let Endpoint { host, port, tls } = endpoint;
        let stream =
            TcpStream::connect((host.as_str(), *port)).await.with_context(|| format!("{host}:{port}"))?;
        stream.set_nodelay(true)?;
        if !tls {
            return Ok(Box::new(stream));
        }
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(self.roots.clone());
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((certs, key)) => builder.with_client_auth_cert(certs.clone(), key.clone_key())?,
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        let name = self.server_name.clone().unwrap_or_else(|| host.clone());
        let name =
            ServerName::try_from(name.clone()).with_context(|| format!("{name:?} as a TLS server name"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .with_context(|| format!("TLS handshake with {host}:{port}"))?;
        Ok(Box::new(stream))
    }
}

/// Connects as a Pusher client of `app` and subscribes to `channel`.
async fn connect(
    dialer: &Dialer,
    url: &str,
    app: &App,
    channel: &str,
    within: Duration,
) -> anyhow::Result<WebSocket> {
    let endpoint = endpoint(url, "ws", "wss")?;
    let path =
        format!("/app/{}?protocol=7&client=herald-smoke&version={}", app.key, env!("CARGO_PKG_VERSION"));
    let connecting = async {
        let stream = dialer.open(&endpoint, b"http/1.1").await?;
        WebSocket::connect(stream, &endpoint.host, endpoint.port, &path).await
    };
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
async fn publish_http(
    dialer: &Dialer,
    url: &str,
    app: &App,
    channel: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let endpoint = endpoint(url, "http", "https")?;
    let Endpoint { host, port, .. } = &endpoint;
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
        let mut stream = dialer.open(&endpoint, b"http/1.1").await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // A TLS server may end without close_notify after `connection: close`: what
        // arrived is the answer.
        if let Err(e) = stream.read_to_end(&mut response).await
            && response.is_empty()
        {
            return Err(e.into());
        }
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
async fn publish_grpc(
    dialer: &Dialer,
    url: &str,
    app: &App,
    channel: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let token = app.api_tokens.first().context("the app has no api_tokens, which gRPC needs")?;
    let endpoint = endpoint(url, "http", "https")?;
    let publish = async {
        let stream = dialer.open(&endpoint, b"h2").await?;
        let channel_to = herald_api::client::over(stream, 2 << 20).await?;
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
        let at = |host: &str, port, tls| Endpoint { host: host.into(), port, tls };
        assert_eq!(endpoint("ws://edge:6001", "ws", "wss").unwrap(), at("edge", 6001, false));
        assert_eq!(endpoint("wss://edge", "ws", "wss").unwrap(), at("edge", 443, true));
        assert_eq!(endpoint("http://[::1]:9", "http", "https").unwrap(), at("::1", 9, false));
        assert_eq!(endpoint("http://api", "http", "https").unwrap(), at("api", 80, false));
        assert_eq!(endpoint("https://api:8443", "http", "https").unwrap(), at("api", 8443, true));
        assert!(endpoint("http://edge:6001", "ws", "wss").unwrap_err().to_string().contains("ws://"));
        assert!(endpoint("not a url", "ws", "wss").is_err());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode("a b/c=d"), "a%20b%2Fc%3Dd");
        assert_eq!(percent_encode("1.0"), "1.0");
    }
}
