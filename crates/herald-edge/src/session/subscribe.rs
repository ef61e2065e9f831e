//! `pusher:subscribe` in steps, authorize → receive the channel (catching up on its
//! history, when it keeps one) → join its presence → acknowledge, each undoing what
//! it did when it fails; `pusher:unsubscribe`; and leaving channels when a connection
//! ends.

use std::sync::Arc;

use bytes::Bytes;
use herald_backbone::{Direction, HistoryQuery, Member, Retention, Topic};
use herald_core::{
    ChannelKind, ChannelName, SocketId, StreamPosition,
    auth::{self, PresenceMember, SubscriptionError},
    protocol,
};
use herald_hub::frame;
use herald_telemetry::Metric;
use serde_json::{Value, json};

use super::{Session, signin::SignedIn};
use herald_node::Node;

use crate::message::{Since, SubscribeData};

/// One subscribed channel.
pub(super) struct Subscription {
    /// The presence member this connection joined as (presence channels only).
    pub(super) presence_user: Option<Arc<str>>,
}

/// Why a subscription was refused: what its `pusher:subscription_error` says.
struct Refusal {
    kind: &'static str,
    status: u16,
    message: String,
}

impl Refusal {
    fn new(kind: &'static str, status: u16, message: impl Into<String>) -> Self {
        Self { kind, status, message: message.into() }
    }
}

impl From<SubscriptionError> for Refusal {
    fn from(error: SubscriptionError) -> Self {
        Self::new(error.error_type(), error.status(), error.to_string())
    }
}

/// What a catch-up read of a channel's history found.
struct HistoryRead {
    /// The channel's latest position when it was read.
    position: StreamPosition,
    /// Whether what the client missed is replayed (`None`: it gave no position).
    recovered: Option<bool>,
    /// The frames of what it missed, in order.
    replay: Vec<Bytes>,
    /// A cache channel's last event for a client that did not recover (`Some(None)`:
    /// there is none, a cache miss); `None` for other channels or a recovery.
    cached: Option<Option<herald_core::Publication>>,
}

impl HistoryRead {
    /// Adds `position` (and `recovered`) to the subscription ack's data: the client
    /// resumes from there, even if it receives nothing before its next reconnect.
    fn describe(&self, data: &mut Value) {
        data["position"] = json!({ "offset": self.position.offset, "epoch": &*self.position.epoch });
        if let Some(recovered) = self.recovered {
            data["recovered"] = Value::Bool(recovered);
        }
    }
}

/// The member the backbone keeps, from the one the subscription rules read.
fn backbone_member(member: PresenceMember) -> Member {
    Member { user_id: member.user_id, user_info: member.user_info }
}

impl Session {
    pub(super) async fn subscribe(&mut self, request: SubscribeData) {
        let channel = match ChannelName::new(&request.channel) {
            Ok(channel) => channel,
            Err(e) => {
                let refusal = Refusal::new("InvalidChannel", 400, e.to_string());
                return self.refuse_subscription(&request.channel, refusal);
            }
        };
        if self.subscription(&channel).is_some() {
            // Already subscribed (a client retrying): acknowledge again.
            return self.acknowledge(&channel).await;
        }
        let member = match self.authorize(&channel, &request) {
            Ok(member) => member,
            Err(refusal) => return self.refuse_subscription(channel.as_str(), refusal),
        };
        let presence_user = member.as_ref().map(|m| m.user_id.clone());
        let topic = Topic::channel(&self.app_id, &channel);
        // A channel that keeps history is joined catching up on it, so the client gets
        // what it missed and then the live channel, in order, without a gap.
        let catch_up = match self.app.history_for(&channel).map(Retention::from) {
            Some(retention) => match self.catch_up(&channel, &topic, retention, request.since.as_ref()).await
            {
                Ok(read) => Some(read),
                Err(refusal) => return self.refuse_subscription(channel.as_str(), refusal),
            },
            None => match self.node.subscribe(&topic, self.socket.conn, self.outbox.clone()).await {
                Ok(()) => None,
                Err(e) => {
                    let refusal = Refusal::new("ServiceUnavailable", 503, e.to_string());
                    return self.refuse_subscription(channel.as_str(), refusal);
                }
            },
        };
        let added = match self.join(&channel, member).await {
            Ok(joined) => joined,
            Err(refusal) => {
                match catch_up {
                    Some(_) => self.node.abandon_catch_up(&topic, self.socket.conn),
                    None => self.node.unsubscribe(&topic, self.socket.conn),
                }
                return self.refuse_subscription(channel.as_str(), refusal);
            }
        };
        if let Some(member) = &added {
            self.announce_member(&channel, member).await;
        }
        // Grown one at a time: most connections subscribe to one or two channels.
        self.channels.reserve_exact(1);
        let joined_user = presence_user.clone().filter(|_| added.is_some());
        self.channels.push((channel.clone(), Subscription { presence_user }));
        let mut data = self.acknowledgement(&channel).await;
        match catch_up {
            Some(read) => {
                read.describe(&mut data);
                let mut first = read.replay;
                first.push(frame::text(protocol::subscription_succeeded(channel.as_str(), &data).as_bytes()));
                // A cache channel's last event (or its absence) comes right after the ack.
                match &read.cached {
                    Some(Some(last)) => first.push(frame::text(last.to_message().as_bytes())),
                    Some(None) => {
                        first.push(frame::text(protocol::cache_miss(channel.as_str()).as_bytes()));
                        self.node.record_cache_miss(&self.app_id, &channel);
                    }
                    None => {}
                }
                // Overflowed: the connection was closed (4100); it leaves at its end.
                self.node.finish_catch_up(&topic, self.socket.conn, read.position.offset, first);
            }
            None => {
                if request.since.is_some() {
                    // The channel keeps no history: nothing can be recovered.
                    data["recovered"] = Value::Bool(false);
                    metrics::counter!(Metric::Recoveries.name(), "outcome" => "unrecoverable").increment(1);
                }
                self.send(protocol::subscription_succeeded(channel.as_str(), &data));
            }
        }
        if let Some(user) = joined_user {
            self.node.record_joined(&self.app.id, &channel, &user).await;
        }
    }

    /// Begins catching up on a channel's history: the node receives the channel (kept
    /// for this connection meanwhile), then the history since `since` is read. What
    /// the client missed is replayed if it is all there, in the same epoch.
    async fn catch_up(
        &self,
        channel: &ChannelName,
        topic: &Topic,
        retention: Retention,
        since: Option<&Since>,
    ) -> Result<HistoryRead, Refusal> {
        let unavailable = |e: herald_backbone::Error| Refusal::new("ServiceUnavailable", 503, e.to_string());
        let conn = self.socket.conn;
        self.node.begin_catch_up(topic, conn, self.outbox.clone()).await.map_err(unavailable)?;
        let cache = channel.is_cache();
        // A cache channel's first read without a position is of its last event.
        let last = HistoryQuery { since: None, limit: 1, direction: Direction::Backward };
        let query = match since {
            Some(since) => HistoryQuery::after(since.offset, retention.size),
            None if cache => last,
            None => HistoryQuery::position(),
        };
        let read = |query| async move {
            match self.node.history(topic, retention, query).await {
                Ok(page) => Ok(page),
                Err(e) => {
                    self.node.abandon_catch_up(topic, conn);
                    Err(unavailable(e))
                }
            }
        };
        let mut page = read(query).await?;
        let mut recovered = since.map(|s| page.recovers(&StreamPosition::new(s.offset, s.epoch.as_str())));
        let mut replay = Vec::new();
        if recovered == Some(true) {
            // Not what the backend excluded for the connection the client had then.
            let excluded =
                since.and_then(|s| s.socket_id.as_deref()).and_then(|id| id.parse::<SocketId>().ok());
            replay = page
                .publications
                .iter()
                .filter(|p| excluded.is_none() || p.exclude != excluded)
                .map(|p| frame::text(p.to_message().as_bytes()))
                .collect();
        }
        // A replay larger than the connection may queue would close it as a slow
        // consumer each time it came back: it is told to reload instead.
        if replay.iter().map(Bytes::len).sum::<usize>() > self.outbox.limit() {
            (recovered, replay) = (Some(false), Vec::new());
        }
        // A cache channel gives whoever did not recover its last event, as it gives a
        // new subscriber. (Read again after a failed recovery: the later read's
        // position is the one the live channel is merged from.)
        let mut cached = None;
        if cache && recovered != Some(true) {
            if since.is_some() {
                page = read(last).await?;
            }
            cached = Some(page.publications.into_iter().next());
        }
        if let Some(recovered) = recovered {
            let outcome = if recovered { "recovered" } else { "unrecoverable" };
            metrics::counter!(Metric::Recoveries.name(), "outcome" => outcome).increment(1);
        }
        Ok(HistoryRead { position: page.position, recovered, replay, cached })
    }

    /// Step one, without I/O (nothing to undo): the connection's channel limit, then
    /// Pusher's rules ([`auth::authorize_subscription`]). The member to join as, on
    /// presence channels.
    fn authorize(&self, channel: &ChannelName, request: &SubscribeData) -> Result<Option<Member>, Refusal> {
        let limit = self.app.limits.max_channels_per_connection;
        if self.channels.len() >= limit {
            let message = format!("this connection is subscribed to {limit} channels, the limit");
            return Err(Refusal::new("LimitReached", 429, message));
        }
        let member = auth::authorize_subscription(
            &self.app,
            &self.socket.to_string(),
            channel,
            request.auth.as_deref(),
            request.channel_data.as_deref(),
            self.user_id.as_deref(),
        )?;
        Ok(member.map(backbone_member))
    }

    /// Step two, once the connection receives the channel: the presence share. Returns
    /// the member to announce, if the user is new to the channel.
    async fn join(&self, channel: &ChannelName, member: Option<Member>) -> Result<Option<Member>, Refusal> {
        let max = self.app.limits.max_presence_members;
        match self.node.join_presence(&self.app_id, channel, self.socket, member, max).await {
            Ok(joined) => Ok(joined.added),
            Err(e) => {
                let (kind, status) = match &e {
                    herald_backbone::Error::PresenceFull { .. } => ("LimitReached", 403),
                    _ => ("ServiceUnavailable", 503),
                };
                Err(Refusal::new(kind, status, e.to_string()))
            }
        }
    }

    /// `pusher_internal:member_added` to the channel's other connections, on every node.
    async fn announce_member(&self, channel: &ChannelName, member: &Member) {
        let data = protocol::member_added_data(&member.user_id, &member.user_info);
        let event = "pusher_internal:member_added";
        self.node.tell(&self.app.id, channel, event, &data, Some(self.socket)).await;
    }

    /// `pusher_internal:subscription_succeeded` again, for a channel already subscribed.
    async fn acknowledge(&self, channel: &ChannelName) {
        let data = self.acknowledgement(channel).await;
        self.send(protocol::subscription_succeeded(channel.as_str(), &data));
    }

    /// Step three: the data of `pusher_internal:subscription_succeeded`, with the member
    /// set on presence channels.
    async fn acknowledgement(&self, channel: &ChannelName) -> Value {
        if channel.kind() != ChannelKind::Presence {
            return json!({});
        }
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
    }

    fn refuse_subscription(&self, channel: &str, refusal: Refusal) {
        let Refusal { kind, status, message } = refusal;
        self.send(protocol::subscription_error(channel, kind, &message, status));
    }

    pub(super) async fn unsubscribe(&mut self, channel: &str) {
        let Ok(channel) = ChannelName::new(channel) else {
            return;
        };
        if let Some(at) = self.channels.iter().position(|(c, _)| *c == channel) {
            let (channel, subscription) = self.channels.swap_remove(at);
            leave_channel(&self.node, &self.app_id, self.socket, &channel, subscription).await;
        }
    }

    pub(super) fn subscription(&self, channel: &ChannelName) -> Option<&Subscription> {
        self.channels.iter().find(|(c, _)| c == channel).map(|(_, s)| s)
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
    let removed = node.leave_presence(app_id, channel, socket, member).await;
    if let Some(member) = removed {
        node.tell_member_removed(app_id, channel, &member.user_id).await;
        node.record_left(app_id, channel, None, Some(&member.user_id));
    }
}

/// Leaves every channel (emitting presence events), and what signing in gave it.
pub(super) async fn leave_all(
    node: &Arc<Node>,
    app_id: &Arc<str>,
    socket: SocketId,
    channels: Vec<(ChannelName, Subscription)>,
    user: Option<SignedIn>,
) {
    for (channel, subscription) in channels {
        leave_channel(node, app_id, socket, &channel, subscription).await;
    }
    if let Some(user) = user {
        user.leave(node, app_id, socket).await;
    }
}
