//! The fan-out's publisher: gRPC, or the signed Pusher HTTP API (so any
//! Pusher-compatible server can be measured).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use bytes::Bytes;
use herald_api::client;
use herald_core::auth;
use herald_proto::v1::{
    Event, PublishBatchRequest, PublishRequest, event::Payload, publisher_client::PublisherClient,
};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tonic::metadata::MetadataValue;

use crate::{
    connect::target_of,
    fanout::{FanoutArgs, Via, now_micros},
    publish::authed,
};

/// The data of one event: its send time, padded to the payload size.
pub(super) fn stamped_data(payload: usize) -> String {
    let stamp = format!("ts:{};", now_micros());
    format!("{stamp}{}", "x".repeat(payload.saturating_sub(stamp.len())))
}

pub(super) enum Publisher {
    Grpc {
        client: PublisherClient<herald_api::client::H2Channel>,
        token: Arc<MetadataValue<tonic::metadata::Ascii>>,
    },
    Http {
        workers: Vec<mpsc::Sender<HttpJob>>,
        next: AtomicU64,
    },
}

impl Publisher {
    pub(super) async fn connect(args: &FanoutArgs) -> anyhow::Result<Self> {
        match args.via {
            Via::Grpc => {
                let channel = client::connect(args.grpc)
                    .await
                    .with_context(|| format!("connecting to {}", args.grpc))?;
                let client = PublisherClient::with_origin(channel, format!("http://{}", args.grpc).parse()?);
                let token = Arc::new(format!("Bearer {}", args.token).parse()?);
                Ok(Self::Grpc { client, token })
            }
            Via::Http => {
                let mut workers = Vec::new();
                // Publishes go to every node of a cluster, round-robin by connection.
                for i in 0..args.http_connections.max(1) {
                    let (tx, rx) = mpsc::channel(1024);
                    let target = target_of(&args.subscribers.target, i);
                    let sender = http_connection(target).await?;
                    tokio::spawn(http_worker(sender, rx, target));
                    workers.push(tx);
                }
                Ok(Self::Http { workers, next: AtomicU64::new(0) })
            }
        }
    }

    /// One publish call of `args.batch` events to channel `c{index}`; resolves to
    /// whether the server accepted it.
    pub(super) fn call(
        &self,
        args: &FanoutArgs,
        index: usize,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        let channel = format!("c{index}");
        let events: Vec<(String, String)> =
            (0..args.batch.max(1)).map(|_| (channel.clone(), stamped_data(args.payload))).collect();
        enum Call {
            Grpc(tokio::task::JoinHandle<bool>),
            Http(Option<oneshot::Receiver<bool>>),
        }
        let call = match self {
            Self::Grpc { client, token } => {
                let (mut client, token, app_id) = (client.clone(), token.clone(), args.app_id.clone());
                let to_event = |(channel, data): (String, String)| Event {
                    name: "fanout".into(),
                    payload: Some(Payload::Data(data)),
                    channels: vec![channel],
                    ..Default::default()
                };
                Call::Grpc(tokio::spawn(async move {
                    if events.len() == 1 {
                        let event = events.into_iter().next().map(to_event);
                        client.publish(authed(PublishRequest { app_id, event }, &token)).await.is_ok()
                    } else {
                        let events = events.into_iter().map(to_event).collect();
                        let request = PublishBatchRequest { app_id, events };
                        client.publish_batch(authed(request, &token)).await.is_ok()
                    }
                }))
            }
            Self::Http { workers, next } => {
                let (path, body) = http_body(&args.app_id, events);
                let app =
                    herald_core::App::with_credentials(&args.app_id, &args.subscribers.key, &args.secret);
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let query = auth::sign_api_request(&app, "POST", &path, Vec::new(), &body, now);
                let query: String =
                    query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
                let (done, result) = oneshot::channel();
                let worker = &workers[next.fetch_add(1, Ordering::Relaxed) as usize % workers.len()];
                Call::Http(worker.try_send((body, format!("{path}?{query}"), done)).ok().map(|()| result))
            }
        };
        async move {
            match call {
                Call::Grpc(task) => task.await.unwrap_or(false),
                Call::Http(Some(result)) => result.await.unwrap_or(false),
                Call::Http(None) => false,
            }
        }
    }
}

/// `POST /apps/{id}/events` for one event, `/batch_events` for several.
fn http_body(app_id: &str, events: Vec<(String, String)>) -> (String, Vec<u8>) {
    if events.len() == 1 {
        let (channel, data) = &events[0];
        let body = json!({ "name": "fanout", "channels": [channel], "data": data });
        return (format!("/apps/{app_id}/events"), body.to_string().into_bytes());
    }
    let batch: Vec<_> = events
        .iter()
        .map(|(channel, data)| json!({ "name": "fanout", "channel": channel, "data": data }))
        .collect();
    (format!("/apps/{app_id}/batch_events"), json!({ "batch": batch }).to_string().into_bytes())
}

/// A publish over HTTP: body, path and query, and where to say whether it worked.
type HttpJob = (Vec<u8>, String, oneshot::Sender<bool>);

type HttpSender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http_connection(target: SocketAddr) -> anyhow::Result<HttpSender> {
    let stream =
        tokio::net::TcpStream::connect(target).await.with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends one keep-alive connection's share of the publishes, one at a time,
/// reconnecting if the server closed it.
async fn http_worker(mut sender: HttpSender, mut jobs: mpsc::Receiver<HttpJob>, target: SocketAddr) {
    while let Some((body, path_and_query, done)) = jobs.recv().await {
        if sender.ready().await.is_err() {
            match http_connection(target).await {
                Ok(fresh) => sender = fresh,
                Err(_) => {
                    let _ = done.send(false);
                    continue;
                }
            }
        }
        let request = http::Request::post(path_and_query)
            .header("host", target.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)));
        let ok = match request {
            Ok(request) => match sender.send_request(request).await {
                Ok(response) => {
                    let ok = response.status().is_success();
                    let _ = response.into_body().collect().await;
                    ok
                }
                Err(_) => false,
            },
            Err(_) => false,
        };
        let _ = done.send(ok);
    }
}
