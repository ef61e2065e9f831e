//! Pusher Channels protocol v7: error codes and the server's own messages.
//!
//! Codes follow Pusher's ranges: 4000–4099 the client must not reconnect, 4100–4199
//! reconnect after backing off, 4200–4299 reconnect at once, 4300–4399 other errors.

use serde_json::{Value, json};

/// The protocol version this server speaks.
pub const PROTOCOL_VERSION: u32 = 7;

/// Pusher error codes, sent in `pusher:error` and as WebSocket close codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// 4001: the app key is not known to this server.
    AppNotFound = 4001,
    /// 4003: the app exists but is disabled.
    AppDisabled = 4003,
    /// 4004: the app is over its connection quota.
    OverConnectionQuota = 4004,
    /// 4005: the path is not `/app/{key}`.
    PathNotFound = 4005,
    /// 4006: `protocol` is not a number.
    InvalidVersionFormat = 4006,
    /// 4007: this server does not speak the requested protocol version.
    UnsupportedProtocol = 4007,
    /// 4008: no `protocol` query parameter.
    NoProtocolVersion = 4008,
    /// 4009: the connection is not authorized (also used when the app terminates it).
    Unauthorized = 4009,
    /// 4100: over capacity, or a consumer too slow to keep up with its channels.
    OverCapacity = 4100,
    /// 4200: generic "reconnect immediately" (used on graceful shutdown).
    ReconnectImmediately = 4200,
    /// 4201: the client did not answer a ping in time.
    PongNotReceived = 4201,
    /// 4202: closed after inactivity.
    ClosedAfterInactivity = 4202,
    /// 4301: client events sent faster than the app's limit.
    ClientEventRateLimit = 4301,
    /// 4302: a sign-in's watchlist was longer than the app's limit; the first ones are
    /// watched.
    WatchlistLimitExceeded = 4302,
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The Pusher error with this code, if it is one.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }

    const ALL: [ErrorCode; 14] = [
        Self::AppNotFound,
        Self::AppDisabled,
        Self::OverConnectionQuota,
        Self::PathNotFound,
        Self::InvalidVersionFormat,
        Self::UnsupportedProtocol,
        Self::NoProtocolVersion,
        Self::Unauthorized,
        Self::OverCapacity,
        Self::ReconnectImmediately,
        Self::PongNotReceived,
        Self::ClosedAfterInactivity,
        Self::ClientEventRateLimit,
        Self::WatchlistLimitExceeded,
    ];
}

/// `pusher:connection_established`; `data` is a JSON-encoded string, as Pusher sends it.
pub fn connection_established(socket_id: &str, activity_timeout_secs: u64) -> String {
    let data = json!({ "socket_id": socket_id, "activity_timeout": activity_timeout_secs });
    event_with_string_data("pusher:connection_established", None, &data)
}

/// `pusher:error` with a code (`data` is an object, not a string, in this message).
pub fn error(code: Option<ErrorCode>, message: &str) -> String {
    json!({
        "event": "pusher:error",
        "data": { "code": code.map(ErrorCode::code), "message": message },
    })
    .to_string()
}

pub fn ping() -> String {
    r#"{"event":"pusher:ping","data":{}}"#.to_string()
}

pub fn pong() -> String {
    r#"{"event":"pusher:pong","data":{}}"#.to_string()
}

/// `pusher_internal:subscription_succeeded`; `data` is `{}` or the presence set.
pub fn subscription_succeeded(channel: &str, data: &Value) -> String {
    event_with_string_data("pusher_internal:subscription_succeeded", Some(channel), data)
}

/// `pusher:subscription_error`, in the shape pusher-js reports to `channel.bind`.
pub fn subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> String {
    json!({
        "event": "pusher:subscription_error",
        "channel": channel,
        "data": { "type": kind, "error": error, "status": status },
    })
    .to_string()
}

/// `pusher:signin_success`; pusher-js parses `user_data` out of it again.
pub fn signin_success(user_data: &str) -> String {
    event_with_string_data("pusher:signin_success", None, &json!({ "user_data": user_data }))
}

/// `pusher_internal:member_added` / `member_removed` payloads, as JSON strings.
pub fn member_added_data(user_id: &str, user_info: &Value) -> String {
    json!({ "user_id": user_id, "user_info": user_info }).to_string()
}

/// `pusher_internal:watchlist_events`: watched users that came `online` or went
/// `offline` (an empty list is left out).
pub fn watchlist_events(online: &[&str], offline: &[&str]) -> String {
    let events: Vec<Value> = [("online", online), ("offline", offline)]
        .into_iter()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(name, ids)| json!({ "name": name, "user_ids": ids }))
        .collect();
    event_with_string_data("pusher_internal:watchlist_events", None, &json!({ "events": events }))
}

/// `pusher:cache_miss`: a cache channel had no event to send a new subscriber.
pub fn cache_miss(channel: &str) -> String {
    json!({ "event": "pusher:cache_miss", "channel": channel }).to_string()
}

pub fn member_removed_data(user_id: &str) -> String {
    json!({ "user_id": user_id }).to_string()
}

fn event_with_string_data(event: &str, channel: Option<&str>, data: &Value) -> String {
    let mut message = json!({ "event": event, "data": data.to_string() });
    if let Some(channel) = channel {
        message["channel"] = Value::from(channel);
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_have_pusher_shapes() {
        let m: Value = serde_json::from_str(&connection_established("1.2", 120)).unwrap();
        assert_eq!(m["event"], "pusher:connection_established");
        let data: Value = serde_json::from_str(m["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, json!({"socket_id": "1.2", "activity_timeout": 120}));

        let e: Value = serde_json::from_str(&error(Some(ErrorCode::AppNotFound), "nope")).unwrap();
        assert_eq!(e["data"], json!({"code": 4001, "message": "nope"}));

        let s: Value = serde_json::from_str(&subscription_succeeded("c", &json!({}))).unwrap();
        assert_eq!(
            s,
            json!({"event": "pusher_internal:subscription_succeeded", "channel": "c", "data": "{}"})
        );
    }
}
