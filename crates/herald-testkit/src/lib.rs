//! Test helpers shared by the role crates' integration tests: real services started on
//! demand (`redis-server`, tansu, webhook receivers), a real WebSocket client
//! (fastwebsockets) and a real HTTP client (hyper) that signs requests as the Pusher
//! SDKs do; with the `edge` feature, a real edge on 127.0.0.1:0 with the in-memory
//! backbone ([`Server`]). Only the crates that test through an edge enable it, so the
//! contract and role crates' tests never depend on the edge.
//! Helpers panic on failure: they are for tests only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "edge")]
mod edge;
pub mod ports;
pub mod process;
pub mod receiver;
pub mod redis;
pub mod tansu;
pub mod tls;

use std::{
    future::Future,
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use herald_core::{App, auth};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

#[cfg(feature = "edge")]
pub use edge::{Server, config};
pub use herald_test_util::{
    Deadline, WAIT, eventually, eventually_async, tcp_pair, wait_until, wait_until_blocking,
};

/// [`App::for_test`]: key `{id}-key`, secret `{id}-secret`, client events on.
pub fn app(id: &str) -> App {
    App::for_test(id)
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A raw HTTP/1.1 request over a fresh connection.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    http_request_with(addr, method, path_and_query, &[], body).await
}

/// [`http_request`] with more headers.
pub async fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let stream = TcpStream::connect(addr).await.unwrap();
    http_request_over(stream, addr, method, path_and_query, headers, body).await
}

/// [`http_request_with`] over TLS (`https://`), trusting what `config` trusts.
pub async fn https_request(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let stream = tls::connect(addr, config).await.unwrap();
    http_request_over(stream, addr, method, path_and_query, headers, body).await
}

async fn http_request_over(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value =
        serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

struct SpawnExecutor;

impl<F: Future + Send + 'static> hyper::rt::Executor<F> for SpawnExecutor
where
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future);
    }
}

/// What the server did to a connection that ended.
#[derive(Debug)]
pub struct Closed {
    pub code: Option<u16>,
    /// Messages received before the close frame.
    pub messages: Vec<Value>,
}

pub struct Client {
    pub ws: WebSocket<TokioIo<Upgraded>>,
    pub socket_id: String,
}

/// Opens a WebSocket to `path_and_query` without reading anything.
pub async fn open(addr: SocketAddr, path_and_query: &str) -> WebSocket<TokioIo<Upgraded>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    open_over(stream, addr, path_and_query).await
}

/// [`open`] over TLS (`wss://`).
pub async fn open_tls(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    path_and_query: &str,
) -> WebSocket<TokioIo<Upgraded>> {
    let stream = tls::connect(addr, config).await.unwrap();
    open_over(stream, addr, path_and_query).await
}

async fn open_over(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    addr: SocketAddr,
    path_and_query: &str,
) -> WebSocket<TokioIo<Upgraded>> {
    let request = Request::builder()
        .method("GET")
        .uri(format!("http://{addr}{path_and_query}"))
        .header("host", addr.to_string())
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-key", fastwebsockets::handshake::generate_key())
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let executor = SpawnExecutor;
    let (ws, _) = fastwebsockets::handshake::client(&executor, request, stream).await.unwrap();
    ws
}

impl Client {
    pub async fn connect(addr: SocketAddr, key: &str) -> Self {
        let ws = open(addr, &format!("/app/{key}?protocol=7&client=rust&version=1.0")).await;
        Self::established(ws).await
    }

    /// [`Client::connect`] over TLS (`wss://`).
    pub async fn connect_tls(
        addr: SocketAddr,
        key: &str,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> Self {
        let ws = open_tls(addr, config, &format!("/app/{key}?protocol=7&client=rust&version=1.0")).await;
        Self::established(ws).await
    }

    async fn established(ws: WebSocket<TokioIo<Upgraded>>) -> Self {
        let mut client = Self { ws, socket_id: String::new() };
        let established = client.recv_event("pusher:connection_established").await;
        let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
        client.socket_id = data["socket_id"].as_str().unwrap().to_string();
        client
    }

    pub async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        let frame = Frame::text(Payload::Owned(text.as_bytes().to_vec()));
        self.ws.write_frame(frame).await.unwrap();
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws.write_frame(Frame::binary(Payload::Owned(bytes.to_vec()))).await.unwrap();
    }

    /// The next message; panics on close or after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Ok(message) => message,
            Err(closed) => panic!("connection closed: {closed:?}"),
        }
    }

    /// The next message, or how the connection ended.
    pub async fn next(&mut self) -> Result<Value, Closed> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.read_frame())
                .await
                .expect("timed out waiting for a message")
                .map_err(|_| Closed { code: None, messages: vec![] })?;
            match frame.opcode {
                OpCode::Text => return Ok(serde_json::from_slice(&frame.payload).unwrap()),
                OpCode::Close => {
                    let code = frame.payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    return Err(Closed { code, messages: vec![] });
                }
                _ => {}
            }
        }
    }

    /// Skips messages until `event`.
    pub async fn recv_event(&mut self, event: &str) -> Value {
        loop {
            let message = self.recv().await;
            if message["event"] == event {
                return message;
            }
        }
    }

    /// Reads until the server closes; returns the close code and what came before.
    pub async fn closed(&mut self) -> Closed {
        let mut messages = Vec::new();
        loop {
            match self.next().await {
                Ok(message) => messages.push(message),
                Err(mut closed) => {
                    closed.messages = messages;
                    return closed;
                }
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.send(json!({ "event": "pusher:subscribe", "data": { "channel": channel } })).await;
        self.subscription_result(channel).await
    }

    pub async fn subscribe_private(&mut self, app: &App, channel: &str) -> Value {
        let auth = auth::channel_auth(app, &self.socket_id, channel, None);
        self.send(json!({ "event": "pusher:subscribe", "data": { "channel": channel, "auth": auth } })).await;
        self.subscription_result(channel).await
    }

    pub async fn subscribe_presence(&mut self, app: &App, channel: &str, user_id: &str) -> Value {
        let channel_data = json!({ "user_id": user_id, "user_info": { "name": user_id } }).to_string();
        let auth = auth::channel_auth(app, &self.socket_id, channel, Some(&channel_data));
        self.send(json!({
            "event": "pusher:subscribe",
            "data": { "channel": channel, "auth": auth, "channel_data": channel_data },
        }))
        .await;
        self.subscription_result(channel).await
    }

    /// Waits for `subscription_succeeded` or `subscription_error` on `channel`.
    pub async fn subscription_result(&mut self, channel: &str) -> Value {
        loop {
            let message = self.recv().await;
            let event = message["event"].as_str().unwrap_or("");
            if message["channel"] == channel
                && matches!(event, "pusher_internal:subscription_succeeded" | "pusher:subscription_error")
            {
                return message;
            }
        }
    }

    pub async fn signin(&mut self, app: &App, user_id: &str) -> Value {
        let user_data = json!({ "id": user_id }).to_string();
        let auth = auth::user_auth(app, &self.socket_id, &user_data);
        self.send(json!({ "event": "pusher:signin", "data": { "auth": auth, "user_data": user_data } }))
            .await;
        self.recv().await
    }

    /// Round-trips a `pusher:ping`: everything the server sent before the pong has
    /// been received by the time this returns.
    pub async fn sync(&mut self) -> Vec<Value> {
        self.send(json!({ "event": "pusher:ping", "data": {} })).await;
        let mut before = Vec::new();
        loop {
            let message = self.recv().await;
            if message["event"] == "pusher:pong" {
                return before;
            }
            before.push(message);
        }
    }
}

/// `data` of an event, decoded once more when it is a JSON string (as Pusher sends).
pub fn data(message: &Value) -> Value {
    match &message["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}
