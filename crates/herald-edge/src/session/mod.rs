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
//!
//! | module | what |
//! |---|---|
//! | this one | [`Session`], `run`, `serve` (the wait) and `end` |
//! | `input` | bytes → WebSocket messages ([`MessageAssembler`]) within the node's input budget |
//! | `protocol` | a Pusher message → its handler (dispatch only) |
//! | `subscribe` | subscribe (authorize → join → acknowledge), unsubscribe, leaving channels |
//! | `signin` | `pusher:signin` and the user's topic |
//! | `client_event` | `client-*` events and their [`client_event::TokenBucket`] |
//! | `close` | how a connection ends: refuse, finish, close codes |
//!
//! # Boxing: what an idle connection costs
//!
//! Every connection is one task, and a task's size is its future's largest state. The
//! future of [`run`] spends its life parked in `serve`'s wait, so `serve` keeps only the
//! session, the outbox and the socket alive across it; everything that runs now and
//! then and holds more across its own awaits is a separate boxed future, allocated
//! only while it runs: message handling (`Box::pin(self.on_input(…))`, which reaches
//! subscribe, sign-in, client events and the backbone), the end (`Box::pin(session.end())`)
//! and the close (`Box::pin(finish(…))`). Awaiting any of them inline would make every
//! idle connection pay for the deepest of them; `an_idle_session_is_a_small_task`
//! fails if that happens.

mod client_event;
mod close;
mod input;
mod protocol;
mod signin;
mod subscribe;

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use herald_core::{App, ChannelName, ErrorCode, SocketId, protocol as frames};
use herald_hub::{Close, Outbox, Wake, frame};
use herald_telemetry::Metric;

pub(crate) use self::close::refuse;
use self::{
    client_event::TokenBucket,
    close::{Ending, finish},
    signin::SignedIn,
    subscribe::{Subscription, leave_all},
};
use herald_node::Node;

use crate::websocket::MessageAssembler;

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
    let mut session = Session::start(node, app, outbox, handshake);
    async move {
        // Served where it was captured: moving it into a binding of its own would give
        // the future two copies of it.
        if let Ok(session) = &mut session {
            session.serve(input).await;
        }
        // Boxed: run once per connection, they would otherwise enlarge every idle
        // connection's task to their size.
        match session {
            Ok(session) => Box::pin(session.end()).await,
            Err(ending) => Box::pin(finish(ending)).await,
        }
    }
}

struct Session {
    node: Arc<Node>,
    app: Arc<App>,
    /// `app.id`, shared: topics and publications hold it.
    app_id: Arc<str>,
    /// Its text (`socket_id`) is formatted where it is needed, rather than held by
    /// every idle connection.
    socket: SocketId,
    outbox: Arc<Outbox>,
    /// Subscribed channels. A list, not a map: a connection has a few, and an empty
    /// or one-entry list costs less than a map of any size.
    channels: Vec<(ChannelName, Subscription)>,
    /// Set by a successful `pusher:signin`.
    user_id: Option<Arc<str>>,
    /// The users it watches (its sign-in's `watchlist`, when the app has watchlist
    /// events). Boxed: one pointer, in sessions that have none.
    watching: Option<Box<[Arc<str>]>>,
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

impl Session {
    /// Registers the connection and sends the `101` with `pusher:connection_established`
    /// in one write; or, over the app's connection quota, refuses it.
    fn start(
        node: Arc<Node>,
        app: Arc<App>,
        outbox: Arc<Outbox>,
        handshake: Vec<u8>,
    ) -> Result<Self, Ending> {
        let Some(app_id) = node.acquire_connection(&app.id, app.limits.max_connections) else {
            outbox.push(Bytes::from(handshake));
            outbox.close(Close::error(
                ErrorCode::OverConnectionQuota,
                "over connection quota: the app has reached its connection limit",
            ));
            return Err(Ending { outbox, node });
        };
        let socket = node.next_socket_id();
        node.sessions().shard(&socket.conn).insert(socket.conn, outbox.clone());
        metrics::gauge!(Metric::Connections.name()).increment(1);
        metrics::counter!(Metric::ConnectionsAccepted.name()).increment(1);

        let session = Session {
            client_events: TokenBucket::new(app.limits.client_events_per_second),
            app_id,
            node,
            app,
            socket,
            outbox,
            channels: Vec::new(),
            user_id: None,
            watching: None,
            assembler: MessageAssembler::new(),
            held_input: 0,
            ended: false,
        };
        let mut first = handshake;
        let activity_timeout = session.node.config().connection.activity_timeout.as_secs();
        let established = frames::connection_established(&socket.to_string(), activity_timeout);
        first.extend_from_slice(&frame::text(established.as_bytes()));
        session.outbox.push(Bytes::from(first));
        Ok(session)
    }

    /// Serves the connection until it is closing. `input` holds bytes the client sent
    /// right after its upgrade request.
    ///
    /// The wait is one `poll_fn` over the outbox's news and the socket's readiness,
    /// whose wakers live in the outbox and the socket's registration, rather than a
    /// `select!` of futures; timers (ping, pong, write timeout) are the node's
    /// [`crate::liveness`] sweep. This state is what every idle connection holds:
    /// what handles input is boxed (see the module's documentation).
    async fn serve(&mut self, mut input: Vec<u8>) {
        let outbox = self.outbox.clone();
        if !input.is_empty() && Box::pin(self.on_input(&mut input)).await.is_break() {
            return;
        }
        loop {
            let status = outbox.status();
            if status.closing.is_some() {
                return;
            }
            let wake = outbox.wake(status.pending).await;
            match wake {
                Wake::News => {}
                Wake::Writable(true) => outbox.write_pending(),
                Wake::Readable(true) => {
                    input.reserve(READ_CHUNK);
                    match outbox.read(&mut input) {
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
        tracing::error!(socket_id = %self.socket, "a session ended abnormally: cleaning up after it");
        self.outbox.close(Close::plain(1011, "internal error"));
        self.deregister();
        let channels = std::mem::take(&mut self.channels);
        let user = self.signed_in();
        let (node, app_id, socket, outbox) =
            (self.node.clone(), self.app_id.clone(), self.socket, self.outbox.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                leave_all(&node, &app_id, socket, channels, user).await;
                finish(Ending { outbox, node }).await;
            });
        }
    }

    /// Leaves every channel (emitting presence events) and the user topic.
    async fn cleanup(&mut self) {
        let (channels, user) = (std::mem::take(&mut self.channels), self.signed_in());
        leave_all(&self.node, &self.app_id, self.socket, channels, user).await;
    }

    /// Takes what signing in gave the connection, for leaving it.
    fn signed_in(&mut self) -> Option<SignedIn> {
        let user_id = self.user_id.take()?;
        let online = self.app.enable_watchlist_events;
        Some(SignedIn { user_id, online, watching: self.watching.take() })
    }

    fn send(&self, message: String) {
        self.outbox.push(frame::text(message.as_bytes()));
    }

    fn error(&self, code: Option<ErrorCode>, message: &str) {
        self.send(frames::error(code, message));
    }
}

#[cfg(test)]
mod tests {

    use herald_backbone::{MemoryBackbone, Topic};
    use herald_core::Apps;
    use herald_hub::Hub;

    use super::*;
    use crate::message::SubscribeData;

    fn test_node() -> (Arc<Node>, Arc<App>) {
        let app = App::for_test("a");
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
        // Tokio adds about 100 bytes of task header and rounds the task up to 128-byte
        // lines: up to 384 here, an idle connection's task takes 512 bytes.
        assert!(size <= 384, "the session future grew to {size} bytes");
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
        session
            .subscribe(SubscribeData { channel: "news".into(), auth: None, channel_data: None, since: None })
            .await;
        // The node's count reaches the backbone with its next batch.
        let counted = || async { node.presence().channel("a", &news).await.unwrap().subscription_count == 1 };
        herald_testkit::eventually_async("the channel counted", counted).await;
        assert_eq!(node.sessions().shard(&session.socket.conn).len(), 1);
        let conn = session.socket.conn;

        drop(session);
        assert!(!node.sessions().shard(&conn).contains_key(&conn), "deregistered at once");
        let left = || async { node.presence().channel("a", &news).await.unwrap().subscription_count == 0 };
        herald_testkit::eventually_async("the channel left", left).await;
        let topic = Topic::channel(&Arc::from("a"), &news);
        assert!(!node.hub().has_subscribers(&topic));
    }
}
