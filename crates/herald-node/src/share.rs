//! The node's share of the cluster's presence: which of its connections are members of
//! which presence channels, and as whom (a subscription to any channel is also one in
//! the channel's count, which the node keeps per channel: `crate::occupancy`). The
//! node is the source of truth for it; the backbone
//! ([`herald_backbone::PresenceManager`]) holds a copy that the node re-asserts
//! whenever that copy may be wrong ([`LeaseHolder::reassert`]): after a stall, a
//! partition, a Redis restart with or without its data, a write that failed, or after
//! another node took this one for crashed and reaped it.
//!
//! Every change of a connection's share and every re-assertion of it holds that
//! connection's stripe of an async lock, so a re-assertion never races a join or a
//! leave of the same connection: it never brings back a connection that just left,
//! nor removes one that just joined.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use async_trait::async_trait;
use herald_backbone::{
    Gap, Held, LeaseHolder, Lifecycle, Member, MemberChange, Message, Reaped, Result, Topic,
};
use herald_core::{ChannelName, Publication, PublicationData, SocketId, protocol, sharded::Sharded};
use herald_hub::ConnId;

use crate::node::Node;

/// One connection's presence channels, and as which member. Kept small (it is paid per
/// member): the app once, a channel name (one pointer), and the member boxed.
struct Channels {
    app_id: Arc<str>,
    list: Vec<(ChannelName, Box<Member>)>,
}

/// A member whose removal failed: app, channel, connection, user.
type FailedLeave = (Arc<str>, ChannelName, SocketId, Arc<str>);

/// A presence channel to (re-)join, as which member.
type Joining = (ChannelName, Member);

pub(crate) struct Share {
    /// Connection → its channels. Only connections with at least one channel.
    entries: Sharded<ConnId, Channels>,
    hasher: RandomState,
    stripes: Box<[tokio::sync::Mutex<()>]>,
    /// A write to the backbone failed: its copy may be wrong until re-asserted.
    dirty: AtomicBool,
    /// Members whose removal failed: the backbone may have made it anyway (a write
    /// that timed out can still arrive), so the re-assertion tells their channels.
    failed_leaves: parking_lot::Mutex<Vec<FailedLeave>>,
}

impl Share {
    pub(crate) fn new() -> Self {
        Self {
            entries: Sharded::new(64),
            hasher: RandomState::new(),
            stripes: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
            dirty: AtomicBool::new(false),
            failed_leaves: parking_lot::Mutex::new(Vec::new()),
        }
    }

    async fn lock(&self, conn: ConnId) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = self.hasher.hash_one(conn) as usize % self.stripes.len();
        self.stripes[stripe].lock().await
    }

    fn insert(&self, conn: ConnId, app_id: &Arc<str>, channel: &ChannelName, member: Member) {
        let mut shard = self.entries.shard(&conn);
        let channels =
            shard.entry(conn).or_insert_with(|| Channels { app_id: app_id.clone(), list: Vec::new() });
        // Grown one at a time: most connections are in one or two channels.
        channels.list.reserve_exact(1);
        channels.list.push((channel.clone(), Box::new(member)));
    }

    /// Removes a connection from a presence channel; returns the member it was.
    fn remove(&self, conn: ConnId, channel: &ChannelName) -> Option<Box<Member>> {
        let mut shard = self.entries.shard(&conn);
        let channels = shard.get_mut(&conn)?;
        let at = channels.list.iter().position(|(c, _)| c == channel)?;
        let (_, member) = channels.list.swap_remove(at);
        if channels.list.is_empty() {
            shard.remove(&conn);
        }
        Some(member)
    }

    fn contains(&self, conn: ConnId, app_id: &str, channel: &ChannelName) -> bool {
        self.entries.shard(&conn).get(&conn).is_some_and(|channels| {
            &*channels.app_id == app_id && channels.list.iter().any(|(c, _)| c == channel)
        })
    }

    /// A connection's app and channels as they are now.
    fn of(&self, conn: ConnId) -> Option<(Arc<str>, Vec<Joining>)> {
        self.entries.shard(&conn).get(&conn).map(|channels| {
            let list = channels.list.iter().map(|(c, m)| (c.clone(), Member::clone(m))).collect();
            (channels.app_id.clone(), list)
        })
    }

    fn connections(&self) -> Vec<ConnId> {
        let mut conns = Vec::new();
        self.entries.for_each_shard(|shard| conns.extend(shard.keys().copied()));
        conns
    }

    pub(crate) fn failed(&self, what: &str, e: &herald_backbone::Error) {
        tracing::warn!(error = %e, "presence {what} failed: re-asserting this node's share later");
        self.dirty.store(true, Ordering::Relaxed);
    }
}

/// What a join did in the backbone.
pub struct Joined {
    /// The user is new to the presence channel (announce `member_added`).
    pub added: Option<Member>,
}

/// Adds `socket` to `channel` (as `member`, in a presence channel) in the node's
/// share and its count of the channel (which reaches the backbone with the next
/// batch), and the member to the backbone. On error nothing of it stays.
pub(crate) async fn join_presence(
    node: &Node,
    app_id: &Arc<str>,
    channel: &ChannelName,
    socket: SocketId,
    member: Option<Member>,
    max_members: usize,
) -> Result<Joined> {
    // Only members are kept per connection: a subscription is one in the channel's
    // count, which the node keeps per channel (and re-asserts from there).
    let Some(member) = member else {
        node.occupancy.add(app_id, channel);
        return Ok(Joined { added: None });
    };
    let added = join_member(node, app_id, channel, socket, member, max_members).await?;
    node.occupancy.add(app_id, channel);
    Ok(Joined { added })
}

/// Adds `socket` to `channel`'s members as `member`, in the node's share and the
/// backbone; returns the member if the user is new to the channel. On error nothing
/// of it stays.
async fn join_member(
    node: &Node,
    app_id: &Arc<str>,
    channel: &ChannelName,
    socket: SocketId,
    member: Member,
    max_members: usize,
) -> Result<Option<Member>> {
    let _serialized = node.share.lock(socket.conn).await;
    node.share.insert(socket.conn, app_id, channel, member.clone());
    match node.presence.add_member(app_id, channel, socket, member, max_members).await {
        Ok(MemberChange::Changed(member)) => Ok(Some(member)),
        Ok(MemberChange::Unchanged) => Ok(None),
        Err(e) => {
            node.share.remove(socket.conn, channel);
            if !matches!(e, herald_backbone::Error::PresenceFull { .. }) {
                // The member may have been added before the error: the next
                // re-assertion undoes it.
                node.share.failed("member addition", &e);
            }
            Err(e)
        }
    }
}

/// A connection signed in as `user_id`: adds it to the app's online users (the
/// members of [`ChannelName::online_users`], kept and re-asserted like any presence
/// share, but counted in no channel). Returns true if the user came online.
pub(crate) async fn join_online(
    node: &Node,
    app_id: &Arc<str>,
    socket: SocketId,
    user_id: &Arc<str>,
) -> Result<bool> {
    let member = Member { user_id: user_id.clone(), user_info: Default::default() };
    let added = join_member(node, app_id, &ChannelName::online_users(), socket, member, usize::MAX).await?;
    Ok(added.is_some())
}

/// A signed-in connection ended (or signed in as another user): removes it from the
/// app's online users; returns the user if that was its last connection.
pub(crate) async fn leave_online(node: &Node, app_id: &Arc<str>, socket: SocketId) -> Option<Member> {
    leave_member(node, app_id, &ChannelName::online_users(), socket).await
}

/// Removes `socket` from `channel` in the node's share, its count of the channel
/// and (in a presence channel) the backbone's members. Returns the member that left
/// (its user's last connection), where the backbone could tell; what it could not do
/// is done by the next re-assertion.
pub(crate) async fn leave_presence(
    node: &Node,
    app_id: &Arc<str>,
    channel: &ChannelName,
    socket: SocketId,
    member: bool,
) -> Option<Member> {
    node.occupancy.remove(app_id, channel);
    if !member {
        return None;
    }
    leave_member(node, app_id, channel, socket).await
}

/// Removes `socket` from `channel`'s members in the node's share and the backbone;
/// returns the member that left (its user's last connection), where the backbone could
/// tell.
async fn leave_member(
    node: &Node,
    app_id: &Arc<str>,
    channel: &ChannelName,
    socket: SocketId,
) -> Option<Member> {
    let _serialized = node.share.lock(socket.conn).await;
    let joined_as = node.share.remove(socket.conn, channel);
    match node.presence.remove_member(app_id, channel, socket).await {
        Ok(MemberChange::Changed(member)) => Some(member),
        Ok(MemberChange::Unchanged) => None,
        Err(e) => {
            if let Some(member) = joined_as {
                let leave = (app_id.clone(), channel.clone(), socket, member.user_id.clone());
                node.share.failed_leaves.lock().push(leave);
            }
            node.share.failed("member removal", &e);
            None
        }
    }
}

/// A lease holder for this node: how the backbone's lease keeper reports reaped
/// nodes and asks for re-assertions.
pub(crate) fn lease_holder(node: &Arc<Node>) -> Arc<dyn LeaseHolder> {
    Arc::new(Holder { node: node.clone() })
}

async fn reassert(node: &Arc<Node>, held: Vec<Held>, gap: Gap) -> Result<()> {
    let mut removed = 0usize;
    let mut counted = Vec::new();
    // Members whose removal failed: done now if it is still to do, and told either
    // way if the user is gone (the failed write may have been made all the same,
    // with nobody told).
    let failed_leaves = std::mem::take(&mut *node.share.failed_leaves.lock());
    for (at, (app_id, channel, socket, user_id)) in failed_leaves.iter().enumerate() {
        let gone = match node.presence.remove_member(app_id, channel, *socket).await {
            Ok(MemberChange::Changed(_)) => Ok(true),
            Ok(MemberChange::Unchanged) => node
                .presence
                .members(app_id, channel)
                .await
                .map(|members| !members.iter().any(|m| m.user_id == *user_id)),
            Err(e) => Err(e),
        };
        match gone {
            Ok(true) => {
                removed += 1;
                node.tell_member_removed(app_id, channel, user_id).await;
                node.record_left(app_id, channel, None, Some(user_id));
            }
            Ok(false) => {}
            Err(e) => {
                node.share.failed_leaves.lock().extend(failed_leaves[at..].iter().cloned());
                return Err(e);
            }
        }
    }
    // What the backbone holds for this node that the node no longer has: leaves
    // whose write failed. They really left: tell their channels.
    for stale in held {
        let (app_id, channel, socket) = match stale {
            Held::Count { app_id, channel } => {
                counted.push((Arc::from(app_id.as_str()), channel));
                continue;
            }
            Held::Member { app_id, channel, socket } => (app_id, channel, socket),
        };
        if socket.node != node.id {
            continue;
        }
        let _serialized = node.share.lock(socket.conn).await;
        if node.share.contains(socket.conn, &app_id, &channel) {
            continue;
        }
        removed += 1;
        if let MemberChange::Changed(member) = node.presence.remove_member(&app_id, &channel, socket).await? {
            node.tell_member_removed(&app_id, &channel, &member.user_id).await;
            node.record_left(&app_id, &channel, None, Some(&member.user_id));
        }
    }
    // Every count the node has, and none of the others the backbone held.
    let counts = node.occupancy.reassert(node, counted).await?;
    for (count, change) in &counts {
        if change.vacated() {
            removed += 1;
            node.record_left(&count.app_id, &count.channel, Some(0), None);
        } else if change.after > 0 {
            reannounce(node, &count.app_id, &count.channel, Lifecycle::Occupied, change.occupied(), gap)
                .await;
        }
    }
    // Every presence connection the node has, added back where it is missing.
    let mut members_added = 0usize;
    for conn in node.share.connections() {
        let socket = SocketId { node: node.id, conn };
        let _serialized = node.share.lock(conn).await;
        let Some((app_id, channels)) = node.share.of(conn) else { continue };
        for (channel, member) in channels {
            // Re-admitted whatever the limit: the member was admitted before.
            let MemberChange::Changed(member) =
                node.presence.add_member(&app_id, &channel, socket, member, usize::MAX).await?
            else {
                continue;
            };
            members_added += 1;
            // The backbone had lost the member: the channel's other clients may have
            // been told it left (a reap), or joined without seeing it (after a
            // restart). Either way they converge on this.
            if channel.is_online_users() {
                tell_watchers(node, &app_id, &member.user_id, true).await;
                continue;
            }
            let data = protocol::member_added_data(&member.user_id, &member.user_info);
            node.tell(&app_id, &channel, "pusher_internal:member_added", &data, Some(socket)).await;
            let user = Lifecycle::MemberAdded(&member.user_id);
            reannounce(node, &app_id, &channel, user, true, gap).await;
        }
    }
    tracing::info!(
        node = node.id,
        gap = gap.as_str(),
        counts = counts.len(),
        removed,
        members_added,
        "presence share re-asserted"
    );
    Ok(())
}

/// The lifecycle announcement of a re-asserted count or member. After a reap, the
/// cluster may have announced the channel vacated (the member removed): announce it
/// again if the re-assertion brought it back (`new`), as any join would. After Redis
/// lost its data nothing was announced, so the announcement is restored without a
/// new event.
async fn reannounce(
    node: &Node,
    app_id: &str,
    channel: &ChannelName,
    change: Lifecycle<'_>,
    new: bool,
    gap: Gap,
) {
    if node.recorder().is_none() {
        return;
    }
    match gap {
        Gap::Lost => {
            if let Err(e) = node.presence.announce(app_id, channel, change).await {
                tracing::warn!(error = %e, "could not restore a lifecycle announcement");
            }
        }
        Gap::Interrupted | Gap::Expired if new => node.announce(app_id, channel, change).await,
        Gap::Interrupted | Gap::Expired => {}
    }
}

/// Tells the connections watching `user_id`, on every node, that it came online or
/// went offline.
pub(crate) async fn tell_watchers(node: &Node, app_id: &str, user_id: &Arc<str>, online: bool) {
    let topic = Topic::watchers(&Arc::from(app_id), user_id);
    let message = Message::Watchlist { user_id: user_id.clone(), online };
    if let Err(e) = node.broker.publish(&topic, message).await {
        tracing::warn!(error = %e, online, "could not tell a user's watchers");
    }
}

/// Publishes a presence event to a channel's subscribers on every node.
pub(crate) async fn tell(
    node: &Node,
    app_id: &str,
    channel: &ChannelName,
    event: &str,
    data: &str,
    exclude: Option<SocketId>,
) {
    let publication = Publication {
        app_id: Arc::from(app_id),
        channel: channel.clone(),
        event: Arc::from(event),
        data: PublicationData::from_string(data),
        user_id: None,
        exclude,
        published_us: herald_core::time::now_us(),
        trace: None,
        position: None,
    };
    if let Err(e) = node.publish(publication).await {
        tracing::warn!(error = %e, event, "could not publish a presence event");
    }
}

/// `pusher_internal:member_removed` for `user_id`, to the channel's subscribers on
/// every node: its last connection left (here, or on a node that crashed).
pub(crate) async fn tell_member_removed(node: &Node, app_id: &str, channel: &ChannelName, user_id: &str) {
    if channel.is_online_users() {
        return tell_watchers(node, app_id, &Arc::from(user_id), false).await;
    }
    let data = protocol::member_removed_data(user_id);
    node.tell(app_id, channel, "pusher_internal:member_removed", &data, None).await;
}

/// [`Node`] as a [`LeaseHolder`].
struct Holder {
    node: Arc<Node>,
}

#[async_trait]
impl LeaseHolder for Holder {
    fn reaped(&self, reaped: Reaped) {
        let node = self.node.clone();
        let user_id = reaped.member.map(|m| m.user_id);
        node.record_reaped(&reaped.app_id, &reaped.channel, user_id.as_deref());
        let Some(user_id) = user_id else { return };
        self.node.lifecycle.spawn(async move {
            node.tell_member_removed(&reaped.app_id, &reaped.channel, &user_id).await;
        });
    }

    fn take_dirty(&self) -> bool {
        self.node.share.dirty.swap(false, Ordering::Relaxed)
    }

    async fn reassert(&self, held: Vec<Held>, gap: Gap) -> Result<()> {
        let result = reassert(&self.node, held, gap).await;
        if result.is_err() {
            self.node.share.dirty.store(true, Ordering::Relaxed);
        }
        result
    }
}
