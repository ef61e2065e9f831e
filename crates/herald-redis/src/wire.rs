//! How a [`Message`] travels through Redis: a small JSON object. The event data stays
//! the raw JSON it arrived as, so a publication is never re-serialized on its way.

use std::sync::Arc;

use herald_backbone::Message;
use herald_core::{ChannelName, Publication, PublicationData, SocketId, StreamPosition, TraceContext};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

#[derive(Default, Serialize, Deserialize)]
struct Wire<'a> {
    /// App id.
    #[serde(borrow)]
    a: &'a str,
    /// Set: close this user's connections (`terminate_connections`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    terminate: Option<&'a str>,
    /// Set: this user came online (`on`) or went offline, for its watchers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    watch: Option<&'a str>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    on: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    /// The socket id the publication excludes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exclude: Option<String>,
    /// When it was published (microseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "is_zero")]
    t: i64,
    /// W3C `traceparent` and `tracestate`.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    tp: Option<&'a str>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    ts: Option<&'a str>,
    /// Offset and epoch in the channel's history. Never encoded here: the history
    /// script appends them, as it gives the offset (see `history.rs`).
    #[serde(default, skip_serializing)]
    o: u64,
    #[serde(default, borrow, skip_serializing)]
    e: Option<&'a str>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Encodes a message of `app_id` for Redis.
pub(crate) fn encode(app_id: &str, message: &Message) -> Vec<u8> {
    let wire = match message {
        Message::Publication(p) => Wire {
            a: app_id,
            channel: Some(p.channel.as_str()),
            event: Some(&p.event),
            data: serde_json::from_str(p.data.as_json()).ok(),
            user: p.user_id.as_deref(),
            exclude: p.exclude.map(|s| s.to_string()),
            t: p.published_us,
            tp: p.trace.as_ref().map(|t| t.traceparent()),
            ts: p.trace.as_ref().and_then(|t| t.tracestate()),
            ..Wire::default()
        },
        Message::TerminateUser { user_id } => Wire { a: app_id, terminate: Some(user_id), ..Wire::default() },
        Message::Watchlist { user_id, online } => {
            Wire { a: app_id, watch: Some(user_id), on: *online, ..Wire::default() }
        }
    };
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// Decodes what [`encode`] made; `None` for anything else (another program's message).
pub(crate) fn decode(bytes: &[u8]) -> Option<Message> {
    let wire: Wire<'_> = serde_json::from_slice(bytes).ok()?;
    if let Some(user_id) = wire.terminate {
        return Some(Message::TerminateUser { user_id: Arc::from(user_id) });
    }
    if let Some(user_id) = wire.watch {
        return Some(Message::Watchlist { user_id: Arc::from(user_id), online: wire.on });
    }
    Some(Message::Publication(Publication {
        app_id: Arc::from(wire.a),
        channel: ChannelName::new(wire.channel?).ok()?,
        event: Arc::from(wire.event?),
        data: PublicationData::from_json(wire.data?.get()),
        user_id: wire.user.map(Arc::from),
        exclude: wire.exclude.and_then(|s| s.parse::<SocketId>().ok()),
        published_us: wire.t,
        trace: TraceContext::from_headers(wire.tp, wire.ts),
        position: wire.e.filter(|_| wire.o > 0).map(|epoch| StreamPosition::new(wire.o, epoch)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_their_data_untouched() {
        let publication = Message::Publication(Publication {
            app_id: "app".into(),
            channel: ChannelName::new("presence-room").unwrap(),
            event: "client-typing".into(),
            data: PublicationData::from_json(r#"{"b": [1, "x"] }"#),
            user_id: Some("u1".into()),
            exclude: Some(SocketId { node: 7, conn: 42 }),
            published_us: 1_700_000_000_123_456,
            trace: TraceContext::from_headers(
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                Some("vendor=value"),
            ),
            position: None,
        });
        let terminate = Message::TerminateUser { user_id: "u:1".into() };
        let online = Message::Watchlist { user_id: "u:2".into(), online: true };
        let offline = Message::Watchlist { user_id: "u:2".into(), online: false };
        for message in [publication, terminate, online, offline] {
            assert_eq!(decode(&encode("app", &message)), Some(message));
        }
        assert_eq!(decode(b"not json"), None);
        // What the history script makes of a message: offset and epoch appended.
        let kept = br#"{"a":"app","channel":"chat","event":"e","data":1,"o":7,"e":"ep"}"#;
        let Some(Message::Publication(p)) = decode(kept) else { panic!("not decoded") };
        assert_eq!(p.position, Some(StreamPosition::new(7, "ep")));
        assert_eq!(decode(br#"{"a":"app","channel":"bad name","event":"e","data":1}"#), None);
    }
}
