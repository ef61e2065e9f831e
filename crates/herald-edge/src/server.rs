//! The edge's listener: one port for WebSocket clients (`/app/{key}`) and the Pusher
//! HTTP API (`/apps/{id}/...`), as Pusher-compatible servers conventionally do.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use herald_core::{ErrorCode, protocol::PROTOCOL_VERSION};
use herald_hub::Close;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::{net::TcpListener, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{accept::accept, http_api, node::Node, session};

/// Oldest protocol version still accepted (v5–v7 differ in nothing this server uses).
const MIN_PROTOCOL_VERSION: u32 = 5;

/// Serves clients and the HTTP API on `listener` until `shutdown` resolves, then shuts
/// down gracefully: reports not-ready, stops accepting, closes WebSocket clients with
/// 4200 (reconnect) spread over most of the grace period, lets in-flight HTTP requests
/// finish, and returns within the grace period.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: impl Future<Output = ()>) {
    let http_connections = TaskTracker::new();
    let sessions = TaskTracker::new();
    let stop_http = CancellationToken::new();
    let handshake_timeout = Duration::from_secs(node.config.connection.handshake_timeout_secs);
    tokio::pin!(shutdown);

    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            stream = accept(&listener, "edge") => stream,
        };
        let _ = stream.set_nodelay(true);
        let service = {
            let node = node.clone();
            let sessions = sessions.clone();
            service_fn(move |request| route(node.clone(), sessions.clone(), request))
        };
        let stop = stop_http.clone();
        http_connections.spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = &mut connection => result,
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }

    let grace = node.config.shutdown_grace;
    let deadline = Instant::now() + grace;
    tracing::info!(grace_secs = grace.as_secs_f32(), "shutting down");
    node.set_not_ready();
    drop(listener);
    stop_http.cancel();
    http_connections.close();
    sessions.close();
    // Keep a fifth of the grace for the last close frames and clean-up.
    let closer = tokio::spawn(close_sessions_spread(node.clone(), grace.mul_f64(0.8)));
    let finished = tokio::time::timeout_at(deadline, async {
        http_connections.wait().await;
        sessions.wait().await;
    })
    .await;
    closer.abort();
    if finished.is_err() {
        tracing::warn!("grace period over with connections still open");
    }
}

/// Closes every session with 4200 in random order, evenly spread over `spread`: a
/// deploy never makes every client reconnect in the same instant.
async fn close_sessions_spread(node: Arc<Node>, spread: Duration) {
    let mut outboxes = Vec::new();
    node.sessions.for_each_shard(|shard| outboxes.extend(shard.values().cloned()));
    fastrand::shuffle(&mut outboxes);
    let start = Instant::now();
    let count = outboxes.len().max(1) as u32;
    for (i, outbox) in outboxes.into_iter().enumerate() {
        tokio::time::sleep_until(start + spread * i as u32 / count).await;
        outbox.close(reconnect());
    }
    // Sessions that opened while the spread ran.
    node.sessions.for_each_shard(|shard| shard.values().for_each(|outbox| outbox.close(reconnect())));
}

fn reconnect() -> Close {
    Close::error(ErrorCode::ReconnectImmediately, "server shutting down: reconnect")
}

async fn route(
    node: Arc<Node>,
    sessions: TaskTracker,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    let response = if fastwebsockets::upgrade::is_upgrade_request(&request) {
        upgrade(node, sessions, request)
    } else if path.starts_with("/apps/") {
        http_api::handle(node, request).await
    } else if path.starts_with("/app/") {
        http_api::json_response(
            StatusCode::UPGRADE_REQUIRED,
            &json!({ "error": "this endpoint takes WebSocket connections" }),
        )
    } else {
        http_api::json_response(StatusCode::NOT_FOUND, &json!({ "error": "not found" }))
    };
    Ok(response)
}

/// Upgrades to a WebSocket. Refused connections are upgraded too, then sent their
/// `pusher:error` and close code, because that is how Pusher clients learn why.
fn upgrade(node: Arc<Node>, sessions: TaskTracker, mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    let admission = admit(&node, &request);
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(upgrade) => upgrade,
        Err(e) => {
            return http_api::json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "error": format!("invalid WebSocket upgrade: {e}") }),
            );
        }
    };
    sessions.spawn(async move {
        let io = match upgrade.await {
            Ok(ws) => ws.into_inner(),
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        match admission {
            Ok(app) => session::run(node, app, io).await,
            Err(close) => session::refuse(node, io, close).await,
        }
    });
    response.map(|_| Full::default())
}

/// Checks the path, app and protocol version of a connection request.
fn admit(node: &Node, request: &Request<Incoming>) -> Result<Arc<herald_core::App>, Close> {
    let Some(key) = request.uri().path().strip_prefix("/app/") else {
        return Err(Close::error(ErrorCode::PathNotFound, "path not found: connect to /app/{key}"));
    };
    let app = node
        .apps
        .by_key(key)
        .ok_or_else(|| Close::error(ErrorCode::AppNotFound, format!("app key {key} not in this cluster")))?;
    if !app.enabled {
        return Err(Close::error(ErrorCode::AppDisabled, "application disabled"));
    }
    let protocol = form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "protocol")
        .map(|(_, v)| v.into_owned());
    let Some(protocol) = protocol else {
        return Err(Close::error(ErrorCode::NoProtocolVersion, "no protocol version supplied"));
    };
    let version: u32 = protocol
        .parse()
        .map_err(|_| Close::error(ErrorCode::InvalidVersionFormat, "invalid version string format"))?;
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(Close::error(
            ErrorCode::UnsupportedProtocol,
            format!(
                "unsupported protocol version {version}: this server speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
            ),
        ));
    }
    Ok(app.clone())
}
