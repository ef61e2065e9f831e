//! `null-server`: the floor that fan-out is measured against. A Pusher-speaking server
//! that does nothing but the unavoidable: it accepts WebSocket clients, acknowledges
//! their subscriptions, and on each publish through the HTTP API encodes the frame
//! once and `write()`s it to every subscriber's socket in one pass — one system call
//! per socket per publish request (a batch's frames for a channel go out in one
//! write). One thread, no queues, no authentication, no limits: what is left is the
//! kernel's cost of a delivery, which a real server can approach but not beat.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    net::SocketAddr,
    rc::Rc,
    time::Duration,
};

use anyhow::Context;
use herald_edge::websocket::{self, RequestHead};
use herald_hub::frame;
use serde::Deserialize;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

#[derive(clap::Args, Clone)]
pub struct NullServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:16301")]
    pub listen: SocketAddr,
    /// Stop after this many seconds (it is a benchmark fixture, never left running).
    #[arg(long, default_value_t = 600.0)]
    pub seconds: f64,
}

#[derive(Default)]
struct Channels {
    subscribers: RefCell<HashMap<String, Vec<Rc<TcpStream>>>>,
    next_socket: Cell<u64>,
    /// Frames a socket did not take at once (the null server never queues).
    dropped: Cell<u64>,
}

pub fn run(args: NullServerArgs) -> anyhow::Result<serde_json::Value> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener =
            TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        eprintln!("null-server listening on {} pid {}", listener.local_addr()?, std::process::id());
        let channels = Rc::new(Channels::default());
        let accept = async {
            loop {
                if let Ok((stream, _)) = listener.accept().await {
                    tokio::task::spawn_local(connection(channels.clone(), stream));
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs_f64(args.seconds), accept).await;
        Ok(json!({ "scenario": "null-server", "dropped_frames": channels.dropped.get() }))
    })
}

async fn connection(channels: Rc<Channels>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let stream = Rc::new(stream);
    let mut buf = Vec::new();
    let Some(head) = read_head(&stream, &mut buf).await else { return };
    buf.drain(..head.len);
    if head.websocket {
        websocket_client(channels, stream, head, buf).await;
    } else {
        http_client(channels, stream, head, buf).await;
    }
}

/// Reads into `buf` until it holds a request head.
async fn read_head(stream: &TcpStream, buf: &mut Vec<u8>) -> Option<RequestHead> {
    loop {
        if let Ok(Some(head)) = websocket::parse_head(buf) {
            return Some(head);
        }
        if buf.len() > 64 * 1024 || !read_some(stream, buf).await {
            return None;
        }
    }
}

/// Reads what the socket has into `buf`; false when the peer is gone.
async fn read_some(stream: &TcpStream, buf: &mut Vec<u8>) -> bool {
    loop {
        if stream.readable().await.is_err() {
            return false;
        }
        buf.reserve(4096);
        match stream.try_read_buf(buf) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
    }
}

async fn write_all(stream: &TcpStream, bytes: &[u8]) -> bool {
    // `&TcpStream` has no `AsyncWrite`; wait for writability and retry instead.
    let mut written = 0;
    while written < bytes.len() {
        if stream.writable().await.is_err() {
            return false;
        }
        match stream.try_write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
    }
    true
}

async fn websocket_client(
    channels: Rc<Channels>,
    stream: Rc<TcpStream>,
    head: RequestHead,
    mut buf: Vec<u8>,
) {
    let Some(key) = head.key else { return };
    let id = channels.next_socket.get() + 1;
    channels.next_socket.set(id);
    let mut hello = websocket::switching_protocols(&key);
    let established = json!({ "event": "pusher:connection_established", "data": json!({ "socket_id": format!("1.{id}"), "activity_timeout": 120 }).to_string() });
    hello.extend_from_slice(&frame::text(established.to_string().as_bytes()));
    if !write_all(&stream, &hello).await {
        return;
    }
    let mut subscribed: Vec<String> = Vec::new();
    'read: while read_some(&stream, &mut buf).await {
        loop {
            let (parsed, used) = match websocket::parse_frame(&mut buf, 1 << 20) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(_) => break 'read,
            };
            let payload = buf[parsed.payload.clone()].to_vec();
            buf.drain(..used);
            match parsed.opcode {
                fastwebsockets::OpCode::Close => break 'read,
                fastwebsockets::OpCode::Text => {
                    let Some(reply) = on_message(&channels, &stream, &payload, &mut subscribed) else {
                        continue;
                    };
                    if !write_all(&stream, &frame::text(reply.as_bytes())).await {
                        break 'read;
                    }
                }
                _ => {}
            }
        }
    }
    let mut map = channels.subscribers.borrow_mut();
    for channel in subscribed {
        if let Some(list) = map.get_mut(&channel) {
            list.retain(|s| !Rc::ptr_eq(s, &stream));
        }
    }
}

#[derive(Deserialize)]
struct ClientMessage {
    event: String,
    #[serde(default)]
    data: serde_json::Value,
}

/// Subscribes and answers pings; returns the reply to send.
fn on_message(
    channels: &Channels,
    stream: &Rc<TcpStream>,
    payload: &[u8],
    subscribed: &mut Vec<String>,
) -> Option<String> {
    let message: ClientMessage = serde_json::from_slice(payload).ok()?;
    match message.event.as_str() {
        "pusher:subscribe" => {
            let channel = message.data.get("channel")?.as_str()?.to_string();
            channels.subscribers.borrow_mut().entry(channel.clone()).or_default().push(stream.clone());
            subscribed.push(channel.clone());
            let ack = json!({ "event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}" });
            Some(ack.to_string())
        }
        "pusher:ping" => Some(json!({ "event": "pusher:pong", "data": "{}" }).to_string()),
        _ => None,
    }
}

#[derive(Deserialize)]
struct Event {
    name: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    data: String,
}

#[derive(Deserialize)]
struct Batch {
    batch: Vec<Event>,
}

/// Serves `POST /apps/{id}/events` and `/batch_events` (keep-alive), ignoring signatures.
async fn http_client(channels: Rc<Channels>, stream: Rc<TcpStream>, mut head: RequestHead, mut buf: Vec<u8>) {
    loop {
        let length = head.content_length.unwrap_or(0);
        while buf.len() < length {
            if !read_some(&stream, &mut buf).await {
                return;
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let events = if head.target.contains("/batch_events") {
            serde_json::from_slice::<Batch>(&body).map(|b| b.batch).ok()
        } else {
            serde_json::from_slice::<Event>(&body).map(|e| vec![e]).ok()
        };
        let status = match events {
            Some(events) => {
                publish(&channels, events);
                "200 OK"
            }
            None => "400 Bad Request",
        };
        let response =
            format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}");
        if !write_all(&stream, response.as_bytes()).await {
            return;
        }
        head = match read_head(&stream, &mut buf).await {
            Some(head) => head,
            None => return,
        };
        buf.drain(..head.len);
    }
}

/// Encodes each event once and writes each channel's frames to each of its
/// subscribers in one `write`.
fn publish(channels: &Channels, events: Vec<Event>) {
    let mut per_channel: Vec<(String, Vec<u8>)> = Vec::new();
    for event in events {
        let targets = event.channel.iter().chain(&event.channels);
        for channel in targets {
            let message = json!({ "event": event.name, "channel": channel, "data": event.data }).to_string();
            let bytes = frame::text(message.as_bytes());
            match per_channel.iter_mut().find(|(c, _)| c == channel) {
                Some((_, frames)) => frames.extend_from_slice(&bytes),
                None => per_channel.push((channel.clone(), bytes.to_vec())),
            }
        }
    }
    let map = channels.subscribers.borrow();
    for (channel, frames) in &per_channel {
        for socket in map.get(channel).into_iter().flatten() {
            match socket.try_write(frames) {
                Ok(n) if n == frames.len() => {}
                _ => channels.dropped.set(channels.dropped.get() + 1),
            }
        }
    }
}
