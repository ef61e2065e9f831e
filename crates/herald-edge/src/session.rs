//! One WebSocket connection speaking the Pusher Channels protocol v7.
//!
//! One task per connection. It waits for the socket to be readable, for its outbox
//! to have news (frames the socket did not take, or a close) or for a timer (ping,
//! pong, write timeout). Everything the server sends goes through the outbox: replies
//! and fan-out frames are written straight into the socket when nothing is queued,
//! so the task is not woken for deliveries to a client that keeps up; the outbox's
//! byte limit bounds what one slow client can pin.
//!
//! An idle connection holds no read buffer: bytes are read into a fresh buffer when
//! the socket is readable, and only the unfinished rest of a message is kept.

use std::{future::Future, ops::ControlFlow, sync::Arc, task::Poll, time::Duration};

use bytes::Bytes;
use herald_backbone::{Member, Topic};
use herald_core::{
    App, ChannelKind, ChannelName, ErrorCode, Publication, PublicationData, SocketId, auth, protocol,
};
use herald_hub::{Close, Outbox, frame};
use herald_proto::v1::ChannelEventType;
use herald_telemetry::Metric;
use serde_json::{Value, json, value::RawValue};
use tokio::time::Instant;

use herald_node::Node;

use crate::{
    message::{self, Incoming, SigninData, SubscribeData, UnsubscribeData, parse_data},
    websocket::{self, Message, MessageAssembler, Read, Violation},
};

/// How long a closing connection waits for the client's half of the close handshake
/// before it drops the socket (dropping it with unread input would reset the
/// connection and could destroy the close frame just sent).
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes asked of the socket per read: client messages are small.
const READ_CHUNK: usize = 4096;

/// Runs a connection that passed admission until it ends, then cleans up after it.
/// `handshake` is the `101` response, sent together with the first message.
///
/// Not an `async fn`: its setup runs here, so the returned future holds only the
/// session and what it needs while it waits — that future is what every idle
/// connection costs.
pub(crate) fn run(
    node: Arc<Node>,
    app: Arc<App>,
    outbox: Arc<Outbox>,
    handshake: Vec<u8>,
    input: Vec<u8>,
) -> impl Future<Output = ()> + Send {
    let session = Session::start(node, app, outbox, handshake);
    async move {
        match session {
            Ok(mut session) => {
                session.serve(input).await;
                // Boxed: run once per connection, it would otherwise enlarge every
                // idle connection's task to its size.
                Box::pin(session.end()).await;
            }
            Err(ending) => Box::pin(finish(ending)).await,
        }
    }
}

/// Sends a Pusher error and closes a connection that was refused at admission
/// (unknown app, disabled app, bad protocol version).
pub(crate) async fn refuse(node: Arc<Node>, outbox: Arc<Outbox>, handshake: Vec<u8>, close: Close) {
    outbox.push(Bytes::from(handshake));
    outbox.close(close);
    finish(Ending { outbox, node }).await;
}

/// A connection being closed: what `finish` needs of it.
struct Ending {
    outbox: Arc<Outbox>,
    node: Arc<Node>,
}

/// Sends what is still queued (the close frame last), within the write timeout, then
/// ends the connection: shuts the write side and reads (and discards) whatever the
/// client still sends until it closes its side, briefly — dropping a socket with
/// unread input resets the connection, which can destroy the close frame.
async fn finish(connection: Ending) {
    let Ending { outbox, node } = connection;
    let config = &node.config().connection;
    let socket = outbox.socket();
    let deadline = Instant::now() + config.write_timeout();
    loop {
        let status = outbox.status();
        if status.broken || !status.pending {
            break;
        }
        match tokio::time::timeout_at(deadline, socket.writable()).await {
            Ok(Ok(())) => outbox.write_pending(),
            _ => break,
        }
    }
    let status = outbox.status();
    let code = status.closing.unwrap_or(1006);
    metrics::counter!(Metric::ConnectionsClosed.name(), "code" => close_code_label(code)).increment(1);
    if status.broken || status.pending {
        return;
    }
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
        loop {
            if socket.readable().await.is_err() {
                return;
            }
            let read = {
                let mut scratch = [0u8; 256];
                socket.try_read(&mut scratch)
            };
            match read {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

/// The `code` label of `herald_connections_closed_total`. A client picks the code of
/// a close it starts (the server echoes it), from about 4,000 valid ones: the label
/// is bucketed so that clients cannot create series at will. Herald's own Pusher
/// codes keep their number; the rest of Pusher's ranges are named by range.
fn close_code_label(code: u16) -> &'static str {
    match code {
        1000 | 1001 => "normal",
        1002 | 1003 => "protocol_error",
        1006 => "abnormal",
        1007 => "invalid_payload",
        1009 => "message_too_large",
        1013 => "try_again_later",
        4001 => "4001",
        4003 => "4003",
        4004 => "4004",
        4005 => "4005",
        4006 => "4006",
        4007 => "4007",
        4008 => "4008",
        4009 => "4009",
        4100 => "4100",
        4200 => "4200",
        4201 => "4201",
        4202 => "4202",
        4301 => "4301",
        // The rest of each range (a test keeps these in step with `ErrorCode`).
        4000 | 4002 | 4010..=4099 => "4000-4099",
        4101..=4199 => "4100-4199",
        4203..=4299 => "4200-4299",
        4300 | 4302..=4399 => "4300-4399",
        _ => "other",
    }
}

struct Session {
    node: Arc<Node>,
    app: Arc<App>,
    socket: SocketId,
    socket_id: String,
    outbox: Arc<Outbox>,
    /// Subscribed channels. A list, not a map: a connection has a few, and an empty
    /// or one-entry list costs less than a map of any size.
    channels: Vec<(ChannelName, Subscription)>,
    /// Set by a successful `pusher:signin`.
    user_id: Option<Arc<str>>,
    client_events: TokenBucket,
    /// Puts the client's frames together into messages.
    assembler: MessageAssembler,
    /// Bytes of unfinished input this session has counted in the node's budget.
    held_input: usize,
    /// `end` ran to completion: the connection is deregistered.
    ended: bool,
}

impl Drop for Session {
    /// Gives back what the session counted in the node's input budget, however it
    /// ended (it gives it back earlier when it starts closing); and, if it never
    /// ended (a panic unwound through it), deregisters the connection so that
    /// nothing it held leaks.
    fn drop(&mut self) {
        self.node.input_budget().resize(self.held_input, 0);
        if !self.ended {
            self.abandon();
        }
    }
}

struct Subscription {
    /// The presence member this connection joined as (presence channels only).
    presence_user: Option<Arc<str>>,
}

/// What ended a session's wait.
enum Wake {
    /// The outbox has news: frames to drain, or a close.
    News,
    /// The socket is writable (or failed: `false`).
    Writable(bool),
    /// The socket is readable (or failed: `false`).
    Readable(bool),
}

impl Session {
    /// Registers the connection and sends the `101` with `pusher:connection_established`
    /// in one write; or, over the app's connection quota, refuses it.
    fn start(
        node: Arc<Node>,
        app: Arc<App>,
        outbox: Arc<Outbox>,
        handshake: Vec<u8>,
    ) -> Result<Self, Ending> {
        if !node.acquire_connection(&app.id, app.limits.max_connections) {
            outbox.push(Bytes::from(handshake));
            outbox.close(Close::error(
                ErrorCode::OverConnectionQuota,
                "over connection quota: the app has reached its connection limit",
            ));
            return Err(Ending { outbox, node });
        }
        let socket = node.next_socket_id();
        node.sessions().shard(&socket.conn).insert(socket.conn, outbox.clone());
        metrics::gauge!(Metric::Connections.name()).increment(1);
        metrics::counter!(Metric::ConnectionsAccepted.name()).increment(1);

        let session = Session {
            client_events: TokenBucket::new(app.limits.client_events_per_second),
            socket_id: socket.to_string(),
            node,
            app,
            socket,
            outbox,
            channels: Vec::new(),
            user_id: None,
            assembler: MessageAssembler::new(),
            held_input: 0,
            ended: false,
        };
        let mut first = handshake;
        let activity_timeout = session.node.config().connection.activity_timeout_secs;
        let established = protocol::connection_established(&session.socket_id, activity_timeout);
        first.extend_from_slice(&frame::text(established.as_bytes()));
        session.outbox.push(Bytes::from(first));
        Ok(session)
    }

    /// Leaves every channel, sends what is left (the close frame last) and
    /// deregisters the connection.
    async fn end(mut self) {
        self.cleanup().await;
        let node = self.node.clone();
        finish(Ending { outbox: self.outbox.clone(), node: node.clone() }).await;
        self.deregister();
        self.ended = true;
    }

    fn deregister(&self) {
        self.node.sessions().shard(&self.socket.conn).remove(&self.socket.conn);
        self.node.release_connection(&self.app.id);
        metrics::gauge!(Metric::Connections.name()).decrement(1);
    }

    /// The session is dropped without having ended (a panic unwound through it, which
    /// is a bug): closes the connection, deregisters it, and leaves its channels on a
    /// task of its own, as `end` would have.
    fn abandon(&mut self) {
        tracing::error!(socket_id = %self.socket_id, "a session ended abnormally: cleaning up after it");
        self.outbox.close(Close::plain(1011, "internal error"));
        self.deregister();
        let channels = std::mem::take(&mut self.channels);
        let user_id = self.user_id.take();
        let (node, app_id, socket, outbox) =
            (self.node.clone(), Arc::<str>::from(self.app.id.as_str()), self.socket, self.outbox.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                leave_all(&node, &app_id, socket, channels, user_id).await;
                finish(Ending { outbox, node }).await;
            });
        }
    }

    /// Serves the connection until it is closing. `input` holds bytes the client sent
    /// right after its upgrade request.
    ///
    /// The wait is one `poll_fn` over the outbox's news and the socket's readiness,
    /// whose wakers live in the outbox and the socket's registration, rather than a
    /// `select!` of futures; timers (ping, pong, write timeout) are the node's
    /// [`crate::liveness`] sweep. This state is what every idle connection holds.
    async fn serve(&mut self, mut input: Vec<u8>) {
        let outbox = self.outbox.clone();
        let socket = outbox.socket();
        if !input.is_empty() && Box::pin(self.on_input(&mut input)).await.is_break() {
            return;
        }
        loop {
            let status = outbox.status();
            if status.closing.is_some() {
                return;
            }
            let wake = std::future::poll_fn(|cx| {
                if outbox.poll_news(cx).is_ready() {
                    return Poll::Ready(Wake::News);
                }
                if status.pending
                    && let Poll::Ready(ready) = socket.poll_write_ready(cx)
                {
                    return Poll::Ready(Wake::Writable(ready.is_ok()));
                }
                socket.poll_read_ready(cx).map(|ready| Wake::Readable(ready.is_ok()))
            })
            .await;
            match wake {
                Wake::News => {}
                Wake::Writable(true) => outbox.write_pending(),
                Wake::Readable(true) => {
                    input.reserve(READ_CHUNK);
                    match socket.try_read_buf(&mut input) {
                        // The client went away without a close frame: nothing to send.
                        Ok(0) => outbox.close(Close::plain(1006, "")),
                        Ok(_) => {
                            outbox.touch();
                            if Box::pin(self.on_input(&mut input)).await.is_break() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => outbox.close(Close::plain(1006, "")),
                    }
                    if input.is_empty() {
                        // Idle again: hold no buffer.
                        input = Vec::new();
                    }
                }
                Wake::Writable(false) | Wake::Readable(false) => outbox.close(Close::plain(1006, "")),
            }
        }
    }

    /// Handles every complete message and control frame in `input` and keeps the
    /// unfinished rest there. Breaks when the connection is closing.
    async fn on_input(&mut self, input: &mut Vec<u8>) -> ControlFlow<()> {
        let max_message = self.node.config().connection.max_message_bytes;
        // What arrived counts against the node's budget before it is looked at: the
        // bytes moved into the assembler below come out of `input`, so the count
        // only falls while they are handled.
        if !self.hold_input(input.len() + self.assembler.buffered()) {
            // 1013 (try again later) rather than 1008 (policy violation): the client
            // broke no rule, its message is within the limit; the node is short of
            // room for now, and a client may well succeed on reconnecting.
            let reason = "try again later: the server holds too much unfinished input";
            self.outbox.close(Close::plain(1013, reason));
            self.hold_input(0);
            return ControlFlow::Break(());
        }
        let mut used = 0;
        let flow = loop {
            if self.outbox.is_closing() {
                break ControlFlow::Break(());
            }
            let message = match self.assembler.read(&mut input[used..], max_message) {
                Ok(Read { message: Some(message), used: taken }) => {
                    used += taken;
                    message
                }
                Ok(Read { message: None, used: taken }) => {
                    used += taken;
                    break ControlFlow::Continue(());
                }
                Err(violation) => {
                    self.close_violation(violation, max_message);
                    break ControlFlow::Break(());
                }
            };
            if self.on_message(message).await.is_break() {
                break ControlFlow::Break(());
            }
        };
        input.drain(..used);
        // A closing session reads no more: what it held is given back now.
        let held = if flow.is_break() { 0 } else { input.len() + self.assembler.buffered() };
        self.hold_input(held);
        flow
    }

    /// Counts `bytes` of unfinished input as this session's share of the node's
    /// budget; false (and nothing changes) when that would pass the budget.
    fn hold_input(&mut self, bytes: usize) -> bool {
        let held = self.node.input_budget().resize(self.held_input, bytes);
        if held {
            self.held_input = bytes;
        }
        held
    }

    async fn on_message(&mut self, message: Message<'_>) -> ControlFlow<()> {
        match message {
            Message::Text(text) => self.on_data_message(&text).await,
            Message::Binary(_) => self.error(None, "binary frames are not supported: send JSON text frames"),
            Message::Ping(payload) => {
                self.outbox.push(frame::pong(payload));
            }
            Message::Pong(_) => {}
            Message::Close { code, .. } => {
                self.outbox.close(Close::plain(websocket::close_reply(code), ""));
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    /// Closes a connection whose input broke RFC 6455 (1002, 1007) or the size limit (1009).
    fn close_violation(&self, violation: Violation, max_message: usize) {
        tracing::debug!(socket_id = %self.socket_id, why = violation.reason(), "websocket violation");
        let close = match violation {
            Violation::TooLarge => {
                Close::plain(1009, format!("message too large: the limit is {max_message} bytes"))
            }
            _ => Close::plain(violation.code(), violation.reason()),
        };
        self.outbox.close(close);
    }

    async fn on_data_message(&mut self, text: &str) {
        let message: Incoming<'_> = match serde_json::from_str(text) {
            Ok(message) => message,
            Err(e) => return self.error(None, &format!("invalid message: {e}")),
        };
        match &*message.event {
            "pusher:ping" => self.send(protocol::pong()),
            "pusher:pong" => {}
            "pusher:subscribe" => match parse_data::<SubscribeData>(message.data) {
                Ok(data) => self.subscribe(data).await,
                Err(e) => self.error(None, &format!("invalid pusher:subscribe: {e}")),
            },
            "pusher:unsubscribe" => match parse_data::<UnsubscribeData>(message.data) {
                Ok(data) => self.unsubscribe(&data.channel).await,
                Err(e) => self.error(None, &format!("invalid pusher:unsubscribe: {e}")),
            },
            "pusher:signin" => match parse_data::<SigninData>(message.data) {
                Ok(data) => self.signin(data).await,
                Err(e) => self.error(None, &format!("invalid pusher:signin: {e}")),
            },
            event if event.starts_with("client-") => {
                let event = event.to_string();
                self.client_event(event, message.channel, message.data).await;
            }
            other => {
                let other = other.chars().take(64).collect::<String>();
                self.error(None, &format!("unsupported event {other:?}"));
            }
        }
    }

    async fn subscribe(&mut self, request: SubscribeData) {
        let channel = match ChannelName::new(&request.channel) {
            Ok(channel) => channel,
            Err(e) => {
                return self.subscription_error(&request.channel, "InvalidChannel", &e.to_string(), 400);
            }
        };
        if self.subscription(&channel).is_some() {
            // Already subscribed (a client retrying): acknowledge again.
            return self.acknowledge(&channel).await;
        }
        let limits = &self.app.limits;
        if self.channels.len() >= limits.max_channels_per_connection {
            let message = format!(
                "this connection is subscribed to {} channels, the limit",
                limits.max_channels_per_connection
            );
            return self.subscription_error(channel.as_str(), "LimitReached", &message, 429);
        }
        let kind = channel.kind();
        let mut member = None;
        if kind.requires_auth() {
            let channel_data = match kind {
                ChannelKind::Presence => match request.channel_data.as_deref() {
                    Some(data) => Some(data),
                    None => {
                        return self.subscription_error(
                            channel.as_str(),
                            "AuthError",
                            "presence channels need channel_data",
                            401,
                        );
                    }
                },
                _ => None,
            };
            let valid = request.auth.as_deref().is_some_and(|auth| {
                auth::verify_channel_auth(&self.app, &self.socket_id, channel.as_str(), channel_data, auth)
            });
            if !valid {
                let message = match request.auth {
                    None => "auth is required for this channel",
                    Some(_) => "invalid signature for this socket id and channel",
                };
                return self.subscription_error(channel.as_str(), "AuthError", message, 401);
            }
            if let Some(data) = channel_data {
                match self.parse_member(data) {
                    Ok(m) => member = Some(m),
                    Err(message) => {
                        return self.subscription_error(channel.as_str(), "AuthError", &message, 400);
                    }
                }
            }
        } else if kind == ChannelKind::ServerToUser && self.user_id.as_deref() != channel.server_to_user_id()
        {
            return self.subscription_error(
                channel.as_str(),
                "AuthError",
                "sign in as this user before subscribing to its channel",
                403,
            );
        }

        let topic = Topic::channel(&Arc::from(self.app.id.as_str()), &channel);
        if let Err(e) = self.node.subscribe(&topic, self.socket.conn, self.outbox.clone()).await {
            return self.subscription_error(channel.as_str(), "ServiceUnavailable", &e.to_string(), 503);
        }
        let app_id = Arc::from(self.app.id.as_str());
        let max = self.app.limits.max_presence_members;
        let presence_user = member.as_ref().map(|m| m.user_id.clone());
        let joined = match self.node.join_presence(&app_id, &channel, self.socket, member, max).await {
            Ok(joined) => joined,
            Err(e) => {
                self.node.unsubscribe(&topic, self.socket.conn);
                let (kind, status) = match &e {
                    herald_backbone::Error::PresenceFull { .. } => ("LimitReached", 403),
                    _ => ("ServiceUnavailable", 503),
                };
                return self.subscription_error(channel.as_str(), kind, &e.to_string(), status);
            }
        };
        let count = joined.count;
        let new_member = joined.added.is_some();
        if let Some(member) = &joined.added {
            let data = protocol::member_added_data(&member.user_id, &member.user_info);
            self.publish_internal(&channel, "pusher_internal:member_added", data, Some(self.socket)).await;
        }
        // Grown one at a time: most connections subscribe to one or two channels.
        self.channels.reserve_exact(1);
        let joined_user = presence_user.clone().filter(|_| new_member);
        self.channels.push((channel.clone(), Subscription { presence_user }));
        self.acknowledge(&channel).await;
        self.node.record_joined(&self.app.id, &channel, count, joined_user.as_deref()).await;
    }

    /// `pusher_internal:subscription_succeeded`, with the member set on presence channels.
    async fn acknowledge(&self, channel: &ChannelName) {
        let data = if channel.kind() == ChannelKind::Presence {
            let members = match self.node.presence().members(&self.app.id, channel).await {
                Ok(members) => members,
                Err(e) => {
                    tracing::warn!(error = %e, "presence members unavailable");
                    Vec::new()
                }
            };
            let ids: Vec<&str> = members.iter().map(|m| &*m.user_id).collect();
            let hash: serde_json::Map<String, Value> =
                members.iter().map(|m| (m.user_id.to_string(), m.user_info.clone())).collect();
            json!({ "presence": { "ids": ids, "hash": hash, "count": members.len() } })
        } else {
            json!({})
        };
        self.send(protocol::subscription_succeeded(channel.as_str(), &data));
    }

    /// Reads `channel_data` of a presence subscription (see [`message::parse_member`]).
    fn parse_member(&self, channel_data: &str) -> Result<Member, String> {
        message::parse_member(channel_data, self.app.limits.max_presence_user_info_bytes)
    }

    async fn unsubscribe(&mut self, channel: &str) {
        let Ok(channel) = ChannelName::new(channel) else {
            return;
        };
        if let Some(at) = self.channels.iter().position(|(c, _)| *c == channel) {
            let (channel, subscription) = self.channels.swap_remove(at);
            self.leave(&channel, subscription).await;
        }
    }

    async fn leave(&self, channel: &ChannelName, subscription: Subscription) {
        let app_id = Arc::from(self.app.id.as_str());
        leave_channel(&self.node, &app_id, self.socket, channel, subscription).await;
    }

    async fn publish_internal(
        &self,
        channel: &ChannelName,
        event: &str,
        data: String,
        exclude: Option<SocketId>,
    ) {
        self.node.tell(&self.app.id, channel, event, &data, exclude).await;
    }

    async fn signin(&mut self, data: SigninData) {
        if !auth::verify_user_auth(&self.app, &self.socket_id, &data.user_data, &data.auth) {
            return self.error(Some(ErrorCode::Unauthorized), "invalid signature for pusher:signin");
        }
        let user_id = match serde_json::from_str::<Value>(&data.user_data) {
            Ok(Value::Object(user)) => match user.get("id") {
                Some(Value::String(id)) if !id.is_empty() => Arc::<str>::from(id.as_str()),
                _ => {
                    return self
                        .error(Some(ErrorCode::Unauthorized), "user_data must have a non-empty string id");
                }
            },
            _ => return self.error(Some(ErrorCode::Unauthorized), "user_data must be a JSON object"),
        };
        let app_id = Arc::from(self.app.id.as_str());
        if let Some(previous) = self.user_id.take() {
            self.node.unsubscribe(&Topic::user(&app_id, &previous), self.socket.conn);
        }
        let topic = Topic::user(&app_id, &user_id);
        if let Err(e) = self.node.subscribe(&topic, self.socket.conn, self.outbox.clone()).await {
            return self.error(None, &format!("sign-in failed: {e}"));
        }
        self.user_id = Some(user_id);
        self.send(protocol::signin_success(&data.user_data));
    }

    async fn client_event(&mut self, event: String, channel: Option<String>, data: Option<&RawValue>) {
        if !self.app.enable_client_events {
            return self.error(None, "client events are not enabled for this app");
        }
        let Some(channel) = channel.and_then(|c| ChannelName::new(&c).ok()) else {
            return self.error(None, "client events need a valid channel");
        };
        if !channel.kind().allows_client_events() {
            return self.error(
                None,
                "client events are only accepted on private and presence channels (not encrypted ones)",
            );
        }
        let Some(presence_user) = self.subscription(&channel).map(|s| s.presence_user.clone()) else {
            return self.error(None, &format!("not subscribed to {channel}"));
        };
        let limits = &self.app.limits;
        if event.len() > limits.max_event_name_len {
            return self
                .error(None, &format!("event name longer than {} characters", limits.max_event_name_len));
        }
        let data = data.map_or("null", RawValue::get);
        if data.len() > limits.max_event_data_bytes {
            let message =
                format!("event data is {} bytes, the limit is {}", data.len(), limits.max_event_data_bytes);
            return self.error(None, &message);
        }
        if !self.client_events.try_take(Instant::now()) {
            let message =
                format!("client event rejected: more than {} per second", limits.client_events_per_second);
            return self.error(Some(ErrorCode::ClientEventRateLimit), &message);
        }
        let publication = Publication {
            app_id: Arc::from(self.app.id.as_str()),
            channel,
            event: Arc::from(event),
            data: PublicationData::from_json(data),
            user_id: presence_user,
            exclude: Some(self.socket),
        };
        match self.node.publish(publication.clone()).await {
            Ok(()) => {
                metrics::counter!(Metric::ClientEvents.name()).increment(1);
                self.node.record(|| {
                    let mut event = herald_node::channel_event(
                        &self.app.id,
                        publication.channel.as_str(),
                        ChannelEventType::ClientEvent,
                    );
                    event.event = publication.event.to_string();
                    // Webhooks carry data as a string, as clients receive it: a JSON
                    // string as its text, anything else as its JSON.
                    event.data = serde_json::from_str::<String>(data).unwrap_or_else(|_| data.to_owned());
                    event.socket_id = self.socket_id.clone();
                    event.user_id = publication.user_id.as_deref().unwrap_or_default().to_owned();
                    event
                });
            }
            Err(e) => self.error(None, &format!("client event not delivered: {e}")),
        }
    }

    /// Leaves every channel (emitting presence events) and the user topic.
    async fn cleanup(&mut self) {
        let app_id = Arc::from(self.app.id.as_str());
        let (channels, user_id) = (std::mem::take(&mut self.channels), self.user_id.take());
        leave_all(&self.node, &app_id, self.socket, channels, user_id).await;
    }

    fn subscription(&self, channel: &ChannelName) -> Option<&Subscription> {
        self.channels.iter().find(|(c, _)| c == channel).map(|(_, s)| s)
    }

    fn send(&self, message: String) {
        self.outbox.push(frame::text(message.as_bytes()));
    }

    fn error(&self, code: Option<ErrorCode>, message: &str) {
        self.send(protocol::error(code, message));
    }

    fn subscription_error(&self, channel: &str, kind: &str, message: &str, status: u16) {
        self.send(protocol::subscription_error(channel, kind, message, status));
    }
}

/// Leaves one channel: the local subscription, the node's presence share (with
/// `member_removed` when it was the user's last connection) and the lifecycle events.
async fn leave_channel(
    node: &Arc<Node>,
    app_id: &Arc<str>,
    socket: SocketId,
    channel: &ChannelName,
    subscription: Subscription,
) {
    node.unsubscribe(&Topic::channel(app_id, channel), socket.conn);
    let member = subscription.presence_user.is_some();
    let (count, removed) = node.leave_presence(app_id, channel, socket, member).await;
    let removed = removed.map(|member| member.user_id);
    if let Some(user_id) = &removed {
        node.tell_member_removed(app_id, channel, user_id).await;
    }
    node.record_left(app_id, channel, count, removed.as_deref());
}

/// Leaves every channel (emitting presence events) and the user topic.
async fn leave_all(
    node: &Arc<Node>,
    app_id: &Arc<str>,
    socket: SocketId,
    channels: Vec<(ChannelName, Subscription)>,
    user_id: Option<Arc<str>>,
) {
    for (channel, subscription) in channels {
        leave_channel(node, app_id, socket, &channel, subscription).await;
    }
    if let Some(user_id) = user_id {
        node.unsubscribe(&Topic::user(app_id, &user_id), socket.conn);
    }
}

/// A token bucket: `rate` tokens a second, bursts of up to `rate`.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second);
        Self { rate, tokens: rate, updated: Instant::now() }
    }

    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_backbone::MemoryBackbone;
    use herald_core::{AppLimits, Apps};
    use herald_hub::Hub;

    fn test_node() -> (Arc<Node>, Arc<App>) {
        let app = App {
            id: "a".into(),
            key: "k".into(),
            secret: "s".into(),
            enabled: true,
            enable_client_events: true,
            api_tokens: vec![],
            limits: AppLimits::default(),
        };
        let backbone = MemoryBackbone::new();
        let hub = Arc::new(Hub::new(1));
        let broker = Arc::new(backbone.broker(hub.clone()));
        let apps = Apps::new([app.clone()]).unwrap();
        let node =
            Node::builder(1, apps, herald_node::EdgeConfig::default(), hub, broker, backbone.presence())
                .build();
        (node, Arc::new(app))
    }

    async fn test_socket() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    /// What an idle connection costs is mostly its task, whose size is that of the
    /// session's future in its largest state: keep message handling and the close
    /// boxed, and no buffer or timer alive across the wait, or every connection pays.
    #[tokio::test]
    async fn an_idle_session_is_a_small_task() {
        let (node, app) = test_node();
        let (server, _client) = test_socket().await;
        let outbox = Arc::new(Outbox::new(server, 1 << 20));
        let future = run(node, app, outbox, Vec::new(), Vec::new());
        let size = std::mem::size_of_val(&future);
        assert!(size <= 512, "the session future grew to {size} bytes");
    }

    /// A session dropped without ending (what a panic in it would do) leaks nothing:
    /// the connection is deregistered and its channels are left.
    #[tokio::test]
    async fn a_session_that_never_ends_is_cleaned_up_after() {
        let (node, app) = test_node();
        let (server, _client) = test_socket().await;
        let outbox = Arc::new(Outbox::new(server, 1 << 20));
        let Ok(mut session) = Session::start(node.clone(), app, outbox, Vec::new()) else {
            panic!("admitted")
        };
        let news = ChannelName::new("news").unwrap();
        session.subscribe(SubscribeData { channel: "news".into(), auth: None, channel_data: None }).await;
        assert_eq!(node.presence().channel("a", &news).await.unwrap().subscription_count, 1);
        assert_eq!(node.sessions().shard(&session.socket.conn).len(), 1);
        let conn = session.socket.conn;

        drop(session);
        assert!(!node.sessions().shard(&conn).contains_key(&conn), "deregistered at once");
        let deadline = Instant::now() + Duration::from_secs(5);
        while node.presence().channel("a", &news).await.unwrap().subscription_count != 0 {
            assert!(Instant::now() < deadline, "the channel was never left");
            tokio::task::yield_now().await;
        }
        let topic = Topic::channel(&Arc::from("a"), &news);
        assert!(!node.hub().has_subscribers(&topic));
    }

    #[test]
    fn close_code_labels_are_a_bounded_set() {
        let labels: std::collections::HashSet<&str> = (0..=u16::MAX).map(close_code_label).collect();
        assert!(labels.len() <= 32, "{labels:?}");
        assert_eq!(close_code_label(1000), "normal");
        assert_eq!(close_code_label(1006), "abnormal");
        assert_eq!(close_code_label(4150), "4100-4199");
        assert_eq!(close_code_label(3000), "other");
        for code in 4000..4400 {
            // Every Pusher code Herald sends keeps its number, and only those.
            let named = close_code_label(code) == code.to_string();
            assert_eq!(named, ErrorCode::from_code(code).is_some(), "{code}");
        }
    }

    #[test]
    fn token_bucket_allows_the_rate_and_refills() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10);
        let allowed = (0..30).filter(|_| bucket.try_take(start)).count();
        assert_eq!(allowed, 10);
        assert!(bucket.try_take(start + Duration::from_millis(100)));
        assert!(!bucket.try_take(start + Duration::from_millis(100)));
        let later = start + Duration::from_secs(5);
        assert_eq!((0..30).filter(|_| bucket.try_take(later)).count(), 10, "bursts cap at the rate");
    }

    #[test]
    fn data_may_be_an_object_or_a_string_holding_one() {
        let object = RawValue::from_string(r#"{"channel":"a"}"#.into()).unwrap();
        let string = RawValue::from_string(r#""{\"channel\":\"b\"}""#.into()).unwrap();
        assert_eq!(parse_data::<UnsubscribeData>(Some(&object)).unwrap().channel, "a");
        assert_eq!(parse_data::<UnsubscribeData>(Some(&string)).unwrap().channel, "b");
        assert!(parse_data::<UnsubscribeData>(None).is_err());
    }
}
