//! `pusher:signin`: the connection becomes a user's, and receives what is sent to
//! that user (its topic) and may subscribe to its `#server-to-user-` channel.

use std::sync::Arc;

use herald_backbone::Topic;
use herald_core::{ErrorCode, auth, protocol};
use serde_json::Value;

use super::Session;
use crate::message::SigninData;

impl Session {
    pub(super) async fn signin(&mut self, data: SigninData) {
        if !auth::verify_user_auth(&self.app, &self.socket.to_string(), &data.user_data, &data.auth) {
            return self.error(Some(ErrorCode::Unauthorized), "invalid signature for pusher:signin");
        }
        let user_id = match user_id(&data.user_data) {
            Ok(user_id) => user_id,
            Err(message) => return self.error(Some(ErrorCode::Unauthorized), message),
        };
        if let Some(previous) = self.user_id.take() {
            self.node.unsubscribe(&Topic::user(&self.app_id, &previous), self.socket.conn);
        }
        let topic = Topic::user(&self.app_id, &user_id);
        if let Err(e) = self.node.subscribe(&topic, self.socket.conn, self.outbox.clone()).await {
            return self.error(None, &format!("sign-in failed: {e}"));
        }
        self.user_id = Some(user_id);
        self.send(protocol::signin_success(&data.user_data));
    }
}

/// The `id` of signed `user_data`: a JSON object with a non-empty string `id`.
fn user_id(user_data: &str) -> Result<Arc<str>, &'static str> {
    match serde_json::from_str::<Value>(user_data) {
        Ok(Value::Object(user)) => match user.get("id") {
            Some(Value::String(id)) if !id.is_empty() => Ok(Arc::from(id.as_str())),
            _ => Err("user_data must have a non-empty string id"),
        },
        _ => Err("user_data must be a JSON object"),
    }
}
