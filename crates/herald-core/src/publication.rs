//! A publication: one event on one channel of one app, as it travels through the
//! broker to every node with subscribers.

use std::{fmt, sync::Arc};

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::{ChannelName, SocketId, StreamPosition, TraceContext};

/// The `data` of an event, kept as the raw JSON text it arrived as: a JSON string for
/// events published through the HTTP API (Pusher double-encodes), any JSON value for
/// client events. Relayed byte for byte, never re-parsed on the fan-out path.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicationData(Arc<str>);

impl PublicationData {
    /// Wraps text that is already valid JSON (the caller parsed or produced it).
    pub fn from_json(raw: impl Into<Arc<str>>) -> Self {
        Self(raw.into())
    }

    /// Data that is a string, JSON-encoded (`"..."`), as the HTTP API sends it.
    pub fn from_string(text: &str) -> Self {
        Self(Arc::from(serde_json::to_string(text).unwrap_or_default()))
    }

    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// The data as clients read it: a JSON string's text, any other value's JSON.
    pub fn to_text(&self) -> String {
        serde_json::from_str::<String>(&self.0).unwrap_or_else(|_| self.0.to_string())
    }
}

impl fmt::Debug for PublicationData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One event on one channel of one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub app_id: Arc<str>,
    pub channel: ChannelName,
    pub event: Arc<str>,
    pub data: PublicationData,
    /// Set on client events sent on presence channels: the sender's user id.
    pub user_id: Option<Arc<str>>,
    /// The connection that must not receive it (the sender of a client event, or the
    /// `socket_id` an HTTP publisher asked to exclude).
    pub exclude: Option<SocketId>,
    /// When the edge that accepted it did (microseconds since the Unix epoch; 0:
    /// unknown): each node's fan-out latency is measured from here.
    pub published_us: i64,
    /// The trace it belongs to, when the publisher or Herald traces it.
    pub trace: Option<TraceContext>,
    /// Its place in the channel's history, when the channel keeps one: clients see it
    /// as the message's `offset` and `epoch`, and resume from it.
    pub position: Option<StreamPosition>,
}

impl Publication {
    /// The Pusher protocol message clients receive:
    /// `{"event":..,"channel":..,"data":..[,"user_id":..][,"offset":..,"epoch":..]}`.
    /// Pusher's clients read the fields they know and ignore the others.
    pub fn to_message(&self) -> String {
        serde_json::to_string(&Message(self)).unwrap_or_default()
    }
}

struct Message<'a>(&'a Publication);

impl Serialize for Message<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("event", &*p.event)?;
        map.serialize_entry("channel", p.channel.as_str())?;
        let raw: &serde_json::value::RawValue = serde_json::from_str(p.data.as_json())
            .map_err(|_| serde::ser::Error::custom("publication data is not JSON"))?;
        map.serialize_entry("data", raw)?;
        if let Some(user_id) = &p.user_id {
            map.serialize_entry("user_id", &**user_id)?;
        }
        if let Some(position) = &p.position {
            map.serialize_entry("offset", &position.offset)?;
            map.serialize_entry("epoch", &*position.epoch)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_pusher_message() {
        let mut p = Publication {
            app_id: "1".into(),
            channel: ChannelName::new("presence-room").unwrap(),
            event: "client-typing".into(),
            data: PublicationData::from_json(r#"{"a":[1,"x"]}"#),
            user_id: None,
            exclude: None,
            published_us: 0,
            trace: None,
            position: None,
        };
        assert_eq!(
            p.to_message(),
            r#"{"event":"client-typing","channel":"presence-room","data":{"a":[1,"x"]}}"#
        );
        p.data = PublicationData::from_string(r#"{"some":"data"}"#);
        p.user_id = Some("u1".into());
        assert_eq!(
            p.to_message(),
            r#"{"event":"client-typing","channel":"presence-room","data":"{\"some\":\"data\"}","user_id":"u1"}"#
        );
        p.user_id = None;
        p.position = Some(StreamPosition::new(42, "e1"));
        assert_eq!(
            p.to_message(),
            r#"{"event":"client-typing","channel":"presence-room","data":"{\"some\":\"data\"}","offset":42,"epoch":"e1"}"#
        );
    }
}
