//! `pusher:subscribe` in three steps, authorize → join → acknowledge, each undoing
//! what it did when it fails; `pusher:unsubscribe`; and leaving channels when a
//! connection ends.

use std::sync::Arc;

use herald_backbone::{Member, Topic};
use herald_core::{
    ChannelKind, ChannelName, SocketId,
    auth::{self, PresenceMember, SubscriptionError},
    protocol,
};
use serde_json::{Value, json};

use super::Session;
use herald_node::Node;

use crate::message::SubscribeData;

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
        let added = match self.join(&channel, member).await {
            Ok(joined) => joined,
            Err(refusal) => return self.refuse_subscription(channel.as_str(), refusal),
        };
        if let Some(member) = &added {
            self.announce_member(&channel, member).await;
        }
        // Grown one at a time: most connections subscribe to one or two channels.
        self.channels.reserve_exact(1);
        let joined_user = presence_user.clone().filter(|_| added.is_some());
        self.channels.push((channel.clone(), Subscription { presence_user }));
        self.acknowledge(&channel).await;
        if let Some(user) = joined_user {
            self.node.record_joined(&self.app.id, &channel, &user).await;
        }
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

    /// Step two: the local subscription (and the node's interest in the channel), then
    /// the presence share; when the second fails, the first is undone. Returns the
    /// member to announce, if the user is new to the channel.
    async fn join(&self, channel: &ChannelName, member: Option<Member>) -> Result<Option<Member>, Refusal> {
        let topic = Topic::channel(&self.app_id, channel);
        if let Err(e) = self.node.subscribe(&topic, self.socket.conn, self.outbox.clone()).await {
            return Err(Refusal::new("ServiceUnavailable", 503, e.to_string()));
        }
        let max = self.app.limits.max_presence_members;
        match self.node.join_presence(&self.app_id, channel, self.socket, member, max).await {
            Ok(joined) => Ok(joined.added),
            Err(e) => {
                self.node.unsubscribe(&topic, self.socket.conn);
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

    /// Step three: `pusher_internal:subscription_succeeded`, with the member set on
    /// presence channels.
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

/// Leaves every channel (emitting presence events) and the user topic.
pub(super) async fn leave_all(
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
