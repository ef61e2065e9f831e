//! The edge's listener: one port for WebSocket clients (`/app/{key}`) and the Pusher
//! HTTP API (`/apps/{id}/...`), as Pusher-compatible servers conventionally do;
//! over TLS (`wss://`, `https://`) when it has a certificate.

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use herald_core::{ErrorCode, protocol::PROTOCOL_VERSION};
use herald_hub::{Close, Outbox};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    time::{Instant, Sleep},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use herald_node::Node;
use herald_telemetry::{Metric, accept};
use herald_tls::{ClientAuth, ServerTls, TlsStream};

use crate::{
    http_api, liveness, session,
    websocket::{self, RequestHead},
};

/// Oldest protocol version still accepted (v5–v7 differ in nothing this server uses).
const MIN_PROTOCOL_VERSION: u32 = 5;

/// Serves clients and the HTTP API on `listener` until `shutdown` resolves, then shuts
/// down gracefully: reports not-ready, stops accepting, closes WebSocket clients with
/// 4200 (reconnect) spread over most of the grace period, lets in-flight HTTP requests
/// finish, and returns within the grace period.
///
/// With `threads` = 0 (the default) connections are served on the caller's runtime;
/// with N, by N edge threads, each with its own single-threaded event loop and its
/// own `SO_REUSEPORT` socket on the port (when `listener` came from [`crate::bind`]):
/// a connection then lives on the thread that accepted it. Either way, fan-out writes
/// into any connection's socket from wherever the publication arrives.
///
/// With `tls`, every connection is TLS: the handshake first (within the connection's
/// handshake timeout), then the same protocols inside it.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()>,
) {
    let file_limit = herald_telemetry::listen::raise_file_limit();
    let max_connections = match node.config().max_connections {
        0 => herald_telemetry::listen::default_max_connections(file_limit),
        max => max,
    };
    tracing::info!(max_connections, file_limit, "edge connection cap");
    let tls = tls.map(|tls| {
        tls.watch();
        Arc::new(Tls {
            acceptor: tls.acceptor(),
            api_needs_certificate: tls.client_auth() == Some(ClientAuth::Api),
        })
    });
    let edge = Edge {
        node: node.clone(),
        tls,
        max_connections,
        connections: TaskTracker::new(),
        stop_accept: CancellationToken::new(),
        stop_http: CancellationToken::new(),
        abandon: CancellationToken::new(),
    };
    let acceptors = match node.config().threads {
        0 => {
            let acceptor = tokio::spawn(accept_loop(listener, edge.clone()));
            vec![Box::pin(async move {
                let _ = acceptor.await;
            }) as Pin<Box<dyn Future<Output = ()> + Send>>]
        }
        threads => match start_threads(listener, threads, &edge) {
            Ok(threads) => threads,
            Err(e) => {
                tracing::error!(error = %e, "could not start the edge threads");
                return;
            }
        },
    };
    let sweeper = tokio::spawn(liveness::sweep(node.clone()));
    shutdown.await;

    let grace = node.config().shutdown_grace;
    let deadline = Instant::now() + grace;
    tracing::info!(grace_secs = grace.as_secs_f32(), "shutting down");
    node.set_not_ready();
    edge.stop_accept.cancel();
    edge.stop_http.cancel();
    edge.connections.close();
    // Keep a fifth of the grace for the last close frames and clean-up.
    let closer = tokio::spawn(close_sessions_spread(node.clone(), grace.mul_f64(0.8)));
    if tokio::time::timeout_at(deadline, edge.connections.wait()).await.is_err() {
        tracing::warn!("grace period over with connections still open");
    }
    closer.abort();
    sweeper.abort();
    // Whatever is still open is dropped with its acceptor.
    edge.abandon.cancel();
    for acceptor in acceptors {
        acceptor.await;
    }
    // Channels emptied by the shutdown are announced now rather than after the
    // debounce (this process will not be there), and the event log gets them.
    node.flush_events(Duration::from_secs(5)).await;
}

/// What the acceptors share.
#[derive(Clone)]
struct Edge {
    node: Arc<Node>,
    tls: Option<Arc<Tls>>,
    /// At this many connections the edge leaves its port ([`accept_loop`]).
    max_connections: usize,
    /// Every connection, for the graceful shutdown to wait on.
    connections: TaskTracker,
    stop_accept: CancellationToken,
    stop_http: CancellationToken,
    /// The grace period is over: drop what is left.
    abandon: CancellationToken,
}

/// Accepts and serves connections until shutdown, then waits for them to finish, or
/// for the grace period to end (when they are dropped with this future).
///
/// At the edge's connection cap the listener is closed: the kernel then spreads new
/// connections over the other processes sharing the port (`SO_REUSEPORT`) instead of
/// queueing them here, where they would wait for a file or be turned away, and
/// `/readyz` says "at capacity" so a load balancer does the same. Once the edge is
/// down to [`REJOIN_AT`] of its cap it listens again. (With
/// `net.ipv4.tcp_migrate_req = 1` the kernel hands connections still queued on a
/// closed listener to another; those already queued are taken first either way.)
async fn accept_loop(listener: TcpListener, edge: Edge) {
    let local = TaskTracker::new();
    let tasks = Tasks { local: local.clone(), all: edge.connections.clone() };
    let addr = listener.local_addr().ok();
    let mut listener = Some(listener);
    loop {
        let Some(listening) = &listener else {
            // Out at the cap: back once the edge is down to its rejoin mark.
            let Some(rejoined) = rejoin(&edge, addr).await else { break };
            listener = Some(rejoined);
            continue;
        };
        let stream = tokio::select! {
            _ = edge.stop_accept.cancelled() => break,
            stream = accept(listening, "edge") => stream,
        };
        take(&edge, &tasks, stream);
        if edge.connections.len() >= edge.max_connections {
            // Whatever already waits in this socket's queue is served: closing it would
            // reset them (unless the kernel migrates them).
            let mut cx = Context::from_waker(std::task::Waker::noop());
            while let Poll::Ready(Ok((stream, _))) = listening.poll_accept(&mut cx) {
                take(&edge, &tasks, stream);
            }
            listener = None;
            edge.node.set_listener_full(true);
            metrics::gauge!(Metric::ListenersFull.name()).increment(1);
            tracing::warn!(
                connections = edge.connections.len(),
                max_connections = edge.max_connections,
                "at the connection cap: left the port to the other edges until down to 95%"
            );
        }
    }
    drop(listener);
    local.close();
    tokio::select! {
        _ = local.wait() => {}
        _ = edge.abandon.cancelled() => {}
    }
}

/// The edge port's TLS.
struct Tls {
    acceptor: herald_tls::TlsAcceptor,
    /// `client_auth = "api"`: the HTTP API only for connections that presented a
    /// client certificate (verified in the handshake).
    api_needs_certificate: bool,
}

/// Starts serving an accepted connection.
fn take(edge: &Edge, tasks: &Tasks, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (node, stop, tasks_) = (edge.node.clone(), edge.stop_http.clone(), tasks.clone());
    match &edge.tls {
        None => tasks.spawn(connection(node, stream, stop, tasks_, Api::Allowed)),
        Some(tls) => tasks.spawn(tls_connection(node, tls.clone(), stream, stop, tasks_)),
    }
}

/// Whether a connection may call the HTTP API (see [`Tls::api_needs_certificate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Allowed,
    NeedsCertificate,
}

/// A TLS connection: the handshake, within the handshake timeout, then served as any
/// other connection.
async fn tls_connection(
    node: Arc<Node>,
    tls: Arc<Tls>,
    stream: TcpStream,
    stop: CancellationToken,
    tasks: Tasks,
) {
    let timeout = node.config().connection.handshake_timeout;
    let Some(stream) = herald_tls::accept(&tls.acceptor, stream, timeout, "edge").await else { return };
    let api = match tls.api_needs_certificate && stream.get_ref().1.peer_certificates().is_none() {
        true => Api::NeedsCertificate,
        false => Api::Allowed,
    };
    connection(node, stream, stop, tasks, api).await;
}

/// A connection's byte stream: TCP, or TLS over TCP.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The outbox of the WebSocket session this connection becomes; plaintext that
    /// TLS already decrypted is appended to `input`.
    fn into_outbox(self, limit: usize, input: &mut Vec<u8>) -> Outbox;
}

impl Transport for TcpStream {
    fn into_outbox(self, limit: usize, _input: &mut Vec<u8>) -> Outbox {
        Outbox::new(self, limit)
    }
}

impl Transport for TlsStream<TcpStream> {
    fn into_outbox(self, limit: usize, input: &mut Vec<u8>) -> Outbox {
        let (socket, mut tls) = self.into_inner();
        // What the client sent right after its request and rustls already decrypted:
        // the session reads it first (the outbox reads only from the socket on).
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = std::io::Read::read(&mut tls.reader(), &mut chunk) {
            input.extend_from_slice(&chunk[..n]);
        }
        Outbox::with_tls(socket, tls, limit)
    }
}

/// An edge that left its port at the cap listens again at this share of it.
const REJOIN_AT: f64 = 0.95;

/// How often an edge out at its cap looks at its connection count.
const CAPACITY_CHECK: Duration = Duration::from_millis(50);

/// Waits until the edge is down to its rejoin mark and listens on `addr` again; `None`
/// at shutdown. A failed bind is retried.
async fn rejoin(edge: &Edge, addr: Option<std::net::SocketAddr>) -> Option<TcpListener> {
    let mark = (edge.max_connections as f64 * REJOIN_AT) as usize;
    loop {
        tokio::select! {
            _ = edge.stop_accept.cancelled() => break None,
            _ = tokio::time::sleep(CAPACITY_CHECK) => {}
        }
        if edge.connections.len() > mark {
            continue;
        }
        let Some(addr) = addr else {
            tracing::error!("the edge listener's address is unknown: it cannot listen again");
            break None;
        };
        let bound = herald_telemetry::listen::reuse_port_listener(addr).and_then(TcpListener::from_std);
        match bound {
            Ok(listener) => {
                edge.node.set_listener_full(false);
                metrics::gauge!(Metric::ListenersFull.name()).decrement(1);
                tracing::info!(
                    connections = edge.connections.len(),
                    "below the connection cap: listening again"
                );
                break Some(listener);
            }
            Err(e) => {
                tracing::error!(error = %e, %addr, "could not listen again after the connection cap; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Where an edge thread's connection tasks run: on its own event loop, counted by the
/// thread (which waits for them when it stops accepting) and by the edge (whose
/// graceful shutdown waits for all of them).
#[derive(Clone)]
struct Tasks {
    local: TaskTracker,
    all: TaskTracker,
}

impl Tasks {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.local.spawn(self.all.track_future(task));
    }
}

/// Starts `count` edge threads; each future resolves when its thread has finished.
fn start_threads(
    listener: TcpListener,
    count: usize,
    edge: &Edge,
) -> io::Result<Vec<Pin<Box<dyn Future<Output = ()> + Send>>>> {
    let listener = listener.into_std()?;
    let addr = listener.local_addr()?;
    let mut threads: Vec<Pin<Box<dyn Future<Output = ()> + Send>>> = Vec::with_capacity(count);
    for index in 0..count {
        // A socket of its own per thread when the listener was bound with
        // `SO_REUSEPORT` (see [`crate::bind`]); else all threads share it.
        let listener = match index {
            0 => listener.try_clone()?,
            _ => herald_telemetry::listen::reuse_port_listener(addr).or_else(|_| listener.try_clone())?,
        };
        let edge = edge.clone();
        let (finished, on_finish) = oneshot::channel::<()>();
        std::thread::Builder::new().name(format!("herald-edge-{index}")).spawn(move || {
            edge_thread(listener, edge);
            let _ = finished.send(());
        })?;
        threads.push(Box::pin(async move {
            let _ = on_finish.await;
        }));
    }
    Ok(threads)
}

/// One edge thread: its own event loop running an acceptor.
fn edge_thread(listener: std::net::TcpListener, edge: Edge) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "could not start an edge thread's event loop");
            return;
        }
    };
    runtime.block_on(async move {
        match TcpListener::from_std(listener) {
            Ok(listener) => accept_loop(listener, edge).await,
            Err(e) => tracing::error!(error = %e, "could not register the listener"),
        }
    });
}

/// Why a request head could not be read.
enum HeadError {
    /// The client went away, or the socket failed.
    Gone,
    TooLarge,
    Malformed(httparse::Error),
}

/// One accepted connection. Its first request decides what it is: a WebSocket upgrade
/// becomes a session, anything else is HTTP, served by hyper from the bytes already
/// read. A session is a task of its own, started when this one ends: a task is as
/// large as its future's largest state, and that task is what every idle connection
/// costs for as long as it lives, so it must not also carry this one's.
async fn connection(
    node: Arc<Node>,
    stream: impl Transport,
    stop: CancellationToken,
    tasks: Tasks,
    api: Api,
) {
    if let Some(upgrade) = first_request(&node, stream, stop, api).await {
        let Upgrade { outbox, admission, handshake, input } = upgrade;
        match admission {
            Ok(app) => tasks.spawn(session::run(node, app, outbox, handshake, input)),
            // Refused connections are upgraded too, then sent their `pusher:error`
            // and close code, because that is how Pusher clients learn why.
            Err(close) => session::refuse(node, outbox, handshake, close).await,
        }
    }
}

/// A WebSocket upgrade, ready to become a session.
struct Upgrade {
    outbox: Arc<Outbox>,
    admission: Result<Arc<herald_core::App>, Close>,
    /// The `101 Switching Protocols` to send.
    handshake: Vec<u8>,
    /// What the client sent after its request.
    input: Vec<u8>,
}

/// Reads and answers a connection's first request: HTTP is served here to the end;
/// a valid WebSocket upgrade is returned.
async fn first_request(
    node: &Arc<Node>,
    mut stream: impl Transport,
    stop: CancellationToken,
    api: Api,
) -> Option<Upgrade> {
    let config = &node.config().connection;
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(
        config.handshake_timeout,
        read_head(&mut stream, &mut buf, config.max_request_head_bytes),
    )
    .await;
    let head = match head {
        Ok(Ok(head)) => head,
        // Too slow, or gone: there is nobody to answer.
        Err(_) | Ok(Err(HeadError::Gone)) => return None,
        Ok(Err(HeadError::TooLarge)) => {
            let limit = config.max_request_head_bytes;
            let error = format!("request head larger than {limit} bytes");
            respond(stream, "431 Request Header Fields Too Large", &[], &error).await;
            return None;
        }
        Ok(Err(HeadError::Malformed(e))) => {
            respond(stream, "400 Bad Request", &[], &format!("malformed request: {e}")).await;
            return None;
        }
    };
    if !head.websocket {
        let io =
            Prefixed { prefix: buf, read: 0, stream, write_timeout: config.write_timeout, stalled: None };
        serve_http(node.clone(), io, stop, api).await;
        return None;
    }
    let Some(key) = head.key.as_deref() else {
        respond(stream, "400 Bad Request", &[], "invalid WebSocket upgrade: no Sec-WebSocket-Key").await;
        return None;
    };
    if !websocket::is_valid_key(key) {
        let error = "invalid WebSocket upgrade: Sec-WebSocket-Key must be 16 bytes in base64";
        respond(stream, "400 Bad Request", &[], error).await;
        return None;
    }
    if head.version.as_deref() != Some("13") {
        let headers = ["Sec-WebSocket-Version: 13"];
        respond(
            stream,
            "426 Upgrade Required",
            &headers,
            "unsupported WebSocket version: this server speaks 13",
        )
        .await;
        return None;
    }
    let mut input = buf.get(head.len..).map(<[u8]>::to_vec).unwrap_or_default();
    let outbox = Arc::new(stream.into_outbox(config.outbound_queue_bytes, &mut input));
    Some(Upgrade {
        handshake: websocket::switching_protocols(key),
        input,
        admission: admit(node, &head.target),
        outbox,
    })
}

/// Reads until `buf` holds a complete request head.
async fn read_head(
    stream: &mut impl Transport,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<RequestHead, HeadError> {
    loop {
        if buf.len() >= limit {
            return Err(HeadError::TooLarge);
        }
        buf.reserve(1024.min(limit - buf.len()));
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(HeadError::Gone),
            Ok(_) => {}
        }
        match websocket::parse_head(buf) {
            Ok(Some(head)) => return Ok(head),
            Ok(None) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Malformed(e)),
        }
    }
}

/// Answers a connection whose first request cannot be served, and closes it.
async fn respond(mut stream: impl Transport, status: &str, headers: &[&str], error: &str) {
    let body = json!({ "error": error }).to_string();
    let mut response = format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\n");
    for header in headers {
        response.push_str(header);
        response.push_str("\r\n");
    }
    response.push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()));
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Serves HTTP requests (the Pusher HTTP API) on a connection until it closes, or
/// until shutdown, when in-flight requests finish first.
///
/// Nothing waits on a client without a bound: hyper's header read timeout runs from
/// the moment the connection is idle, so it closes a keep-alive connection that sends
/// nothing as well as one whose next head never ends, and [`http_api`] bounds the
/// reading of each body.
async fn serve_http<S: Transport>(node: Arc<Node>, io: Prefixed<S>, stop: CancellationToken, api: Api) {
    let handshake_timeout = node.config().connection.handshake_timeout;
    let service = service_fn(move |request| route(node.clone(), request, api));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .serve_connection(TokioIo::new(io), service);
    herald_telemetry::listen::serve_until_stopped(connection, stop, "http").await;
}

/// An HTTP connection's socket, whose first bytes were already read: they are read
/// again first. Writes fail once they have waited `write_timeout` for a client that
/// stopped reading, so hyper drops the connection instead of holding it forever.
struct Prefixed<S> {
    prefix: Vec<u8>,
    read: usize,
    stream: S,
    write_timeout: Duration,
    /// Runs while writes wait for the client; reset by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S: Transport> Prefixed<S> {
    /// Polls a write, and fails it once writing has made no progress for
    /// `write_timeout`.
    fn poll_timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if let Poll::Ready(result) = write(Pin::new(&mut self.stream), cx) {
            self.stalled = None;
            return Poll::Ready(result);
        }
        let timeout = self.write_timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("client read nothing for {} s", timeout.as_secs()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: Transport> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.read);
            buf.put_slice(&self.prefix[self.read..self.read + n]);
            self.read += n;
            if self.read == self.prefix.len() {
                self.prefix = Vec::new();
                self.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: Transport> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_timed(cx, |stream, cx| stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_timed(cx, |stream, cx| stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_timed(cx, |stream, cx| stream.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_timed(cx, |stream, cx| stream.poll_shutdown(cx))
    }
}

/// Closes every session with 4200 in random order, evenly spread over `spread`: a
/// deploy never makes every client reconnect in the same instant.
async fn close_sessions_spread(node: Arc<Node>, spread: Duration) {
    let mut outboxes = Vec::new();
    node.sessions().for_each_shard(|shard| outboxes.extend(shard.values().cloned()));
    fastrand::shuffle(&mut outboxes);
    let start = Instant::now();
    let count = outboxes.len().max(1) as u32;
    for (i, outbox) in outboxes.into_iter().enumerate() {
        tokio::time::sleep_until(start + spread * i as u32 / count).await;
        outbox.close(reconnect());
    }
    // Sessions that opened while the spread ran.
    node.sessions().for_each_shard(|shard| shard.values().for_each(|outbox| outbox.close(reconnect())));
}

fn reconnect() -> Close {
    Close::error(ErrorCode::ReconnectImmediately, "server shutting down: reconnect")
}

async fn route(
    node: Arc<Node>,
    request: Request<Incoming>,
    api: Api,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    let response = if fastwebsockets::upgrade::is_upgrade_request(&request) {
        http_api::json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "a WebSocket upgrade must be the first request on its connection" }),
        )
    } else if path.starts_with("/apps/") && api == Api::NeedsCertificate {
        http_api::json_response(
            StatusCode::UNAUTHORIZED,
            &json!({ "error": "the HTTP API requires a TLS client certificate on this server" }),
        )
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

/// Checks the path, app and protocol version of a connection request.
fn admit(node: &Node, target: &str) -> Result<Arc<herald_core::App>, Close> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(key) = path.strip_prefix("/app/") else {
        return Err(Close::error(ErrorCode::PathNotFound, "path not found: connect to /app/{key}"));
    };
    let app = node
        .apps()
        .by_key(key)
        .ok_or_else(|| Close::error(ErrorCode::AppNotFound, format!("app key {key} not in this cluster")))?;
    if !app.enabled {
        return Err(Close::error(ErrorCode::AppDisabled, "application disabled"));
    }
    let protocol =
        form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "protocol").map(|(_, v)| v.into_owned());
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
