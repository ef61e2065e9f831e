//! `pusher:signin`: the connection becomes a user's, and receives what is sent to
//! that user (its topic) and may subscribe to its `#server-to-user-` channel.

use std::sync::Arc;

use herald_backbone::Topic;
use herald_core::{ErrorCode, SocketId, auth, protocol};
use herald_node::Node;
use serde_json::Value;

use super::Session;
use crate::message::SigninData;

impl Session {
    pub(super) async fn signin(&mut self, data: SigninData) {
        if !auth::verify_user_auth(&self.app, &self.socket.to_string(), &data.user_data, &data.auth) {
            return self.error(Some(ErrorCode::Unauthorized), "invalid signature for pusher:signin");
        }
        let (user_id, watchlist) = match parse_user_data(&data.user_data) {
            Ok(user) => user,
            Err(message) => return self.error(Some(ErrorCode::Unauthorized), message),
        };
        if let Some(previous) = self.signed_in() {
            previous.leave(&self.node, &self.app_id, self.socket).await;
        }
        let topic = Topic::user(&self.app_id, &user_id);
        if let Err(e) = self.node.subscribe(&topic, self.socket.conn, self.outbox.clone()).await {
            return self.error(None, &format!("sign-in failed: {e}"));
        }
        self.user_id = Some(user_id.clone());
        self.send(protocol::signin_success(&data.user_data));
        if self.app.enable_watchlist_events {
            self.watch(&user_id, watchlist).await;
        }
    }

    /// Watchlist events for a connection that signed in as `user_id`: it is online,
    /// it hears of the users it watches, and is told where they are now.
    async fn watch(&mut self, user_id: &Arc<str>, mut watchlist: Vec<Arc<str>>) {
        let limit = self.app.limits.max_watchlist_size;
        if watchlist.len() > limit {
            let message =
                format!("the watchlist has {} user ids; the first {limit} are watched", watchlist.len());
            watchlist.truncate(limit);
            self.error(Some(ErrorCode::WatchlistLimitExceeded), &message);
        }
        if let Err(e) = self.node.user_online(&self.app_id, self.socket, user_id).await {
            // Nothing of it stays (it is not in the node's share either): its watchers
            // see it offline until it signs in again.
            tracing::warn!(error = %e, "could not mark a user online");
        }
        if watchlist.is_empty() {
            return;
        }
        match self.node.watch(&self.app_id, self.socket.conn, &self.outbox, &watchlist).await {
            Ok(online) => {
                let (mut on, mut off) = (Vec::new(), Vec::new());
                for (user, online) in watchlist.iter().zip(&online) {
                    if *online { on.push(&**user) } else { off.push(&**user) }
                }
                self.send(protocol::watchlist_events(&on, &off));
                self.watching = Some(watchlist.into_boxed_slice());
            }
            Err(e) => self.error(None, &format!("watchlist unavailable: {e}")),
        }
    }
}

/// What signing in gave a connection: its user's topic, its place among the app's
/// online users, the users it watches.
pub(crate) struct SignedIn {
    pub(super) user_id: Arc<str>,
    /// It counts among the app's online users (the app has watchlist events).
    pub(super) online: bool,
    pub(super) watching: Option<Box<[Arc<str>]>>,
}

impl SignedIn {
    /// Undoes it all (the connection ended, or signed in as another user).
    pub(super) async fn leave(self, node: &Node, app_id: &Arc<str>, socket: SocketId) {
        node.unsubscribe(&Topic::user(app_id, &self.user_id), socket.conn);
        if let Some(watching) = &self.watching {
            node.unwatch(app_id, socket.conn, watching);
        }
        if self.online {
            node.user_offline(app_id, socket).await;
        }
    }
}

/// The `id` of signed `user_data` (a JSON object with a non-empty string `id`) and its
/// `watchlist` (an array of user ids; other entries are ignored).
fn parse_user_data(user_data: &str) -> Result<(Arc<str>, Vec<Arc<str>>), &'static str> {
    let Ok(Value::Object(user)) = serde_json::from_str::<Value>(user_data) else {
        return Err("user_data must be a JSON object");
    };
    let id = match user.get("id") {
        Some(Value::String(id)) if !id.is_empty() => Arc::from(id.as_str()),
        _ => return Err("user_data must have a non-empty string id"),
    };
    let watchlist = match user.get("watchlist") {
        Some(Value::Array(ids)) => {
            ids.iter().filter_map(Value::as_str).filter(|id| !id.is_empty()).map(Arc::from).collect()
        }
        _ => Vec::new(),
    };
    Ok((id, watchlist))
}
