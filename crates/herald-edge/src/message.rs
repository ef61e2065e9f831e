//! The messages a client sends over its WebSocket, parsed without any session state:
//! the envelope (`event`, `channel`, `data`) and the `data` of the `pusher:*` events (a
//! presence subscription's `channel_data` is read by
//! [`herald_core::auth::authorize_subscription`], once its signature is checked).
//! Untrusted input: every failure is an `Err` with a message for the client, never a
//! panic (see the property tests).

use serde::Deserialize;
use serde_json::value::RawValue;

/// A client message's envelope; `data` stays raw until the event says what it holds.
#[derive(Deserialize)]
pub(crate) struct Incoming<'a> {
    #[serde(borrow)]
    pub(crate) event: std::borrow::Cow<'a, str>,
    #[serde(default)]
    pub(crate) channel: Option<String>,
    #[serde(default, borrow)]
    pub(crate) data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
pub(crate) struct SubscribeData {
    pub(crate) channel: String,
    #[serde(default)]
    pub(crate) auth: Option<String>,
    #[serde(default)]
    pub(crate) channel_data: Option<String>,
    /// Where the client left off in the channel's history, to recover what it missed
    /// (Herald's extension; Pusher's clients never send it).
    #[serde(default)]
    pub(crate) since: Option<Since>,
}

/// A position in a channel's history, as a client sends it.
#[derive(Deserialize)]
pub(crate) struct Since {
    pub(crate) offset: u64,
    pub(crate) epoch: String,
    /// The socket id the client had when it received that position: publications a
    /// backend excluded for it (`socket_id`, Laravel's `toOthers()`) are not replayed.
    #[serde(default)]
    pub(crate) socket_id: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct UnsubscribeData {
    pub(crate) channel: String,
}

#[derive(Deserialize)]
pub(crate) struct SigninData {
    pub(crate) auth: String,
    pub(crate) user_data: String,
}

/// `data` of a client message: an object, or (older clients) a string holding one.
pub(crate) fn parse_data<T: serde::de::DeserializeOwned>(data: Option<&RawValue>) -> Result<T, String> {
    let raw = data.ok_or("missing data")?;
    match serde_json::from_str::<T>(raw.get()) {
        Ok(value) => Ok(value),
        Err(e) => match serde_json::from_str::<String>(raw.get()) {
            Ok(inner) => serde_json::from_str(&inner).map_err(|e| e.to_string()),
            Err(_) => Err(e.to_string()),
        },
    }
}

#[cfg(test)]
mod properties {
    use herald_core::{ChannelName, auth::parse_presence_data};
    use proptest::{
        collection::vec,
        prelude::*,
        sample::{Index, select},
    };
    use serde_json::{Value, json};

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
    }

    /// What a session does with a text message before it looks at its own state:
    /// the envelope, the event's data, the channel name, presence data.
    fn handle(text: &str, max_user_info_bytes: usize) {
        let Ok(message) = serde_json::from_str::<Incoming<'_>>(text) else {
            return;
        };
        match &*message.event {
            "pusher:subscribe" => {
                if let Ok(data) = parse_data::<SubscribeData>(message.data) {
                    let _ = ChannelName::new(&data.channel);
                    if let Some(channel_data) = &data.channel_data {
                        let _ = parse_presence_data(channel_data, max_user_info_bytes);
                    }
                }
            }
            "pusher:unsubscribe" => {
                if let Ok(data) = parse_data::<UnsubscribeData>(message.data) {
                    let _ = ChannelName::new(&data.channel);
                }
            }
            "pusher:signin" => {
                if let Ok(data) = parse_data::<SigninData>(message.data) {
                    let _ = serde_json::from_str::<Value>(&data.user_data);
                }
            }
            _ => {
                if let Some(channel) = &message.channel {
                    let _ = ChannelName::new(channel);
                }
            }
        }
    }

    /// Valid channel names, of every kind.
    fn channel_name() -> impl Strategy<Value = String> {
        let prefix = select(vec!["", "private-", "private-encrypted-", "presence-", "#server-to-user-"]);
        (prefix, "[A-Za-z0-9_=@,.;-]{1,140}").prop_map(|(prefix, body)| format!("{prefix}{body}"))
    }

    /// The data of a `pusher:subscribe`: sometimes an object, sometimes (older clients)
    /// a string holding one.
    fn subscribe_message(
        channel: &str,
        auth: &Option<String>,
        channel_data: &Option<String>,
        as_string: bool,
        extra: &Value,
    ) -> String {
        let mut data = json!({ "channel": channel });
        if let Some(auth) = auth {
            data["auth"] = json!(auth);
        }
        if let Some(channel_data) = channel_data {
            data["channel_data"] = json!(channel_data);
        }
        let data = if as_string { Value::String(data.to_string()) } else { data };
        // Fields the server does not know are ignored.
        json!({ "event": "pusher:subscribe", "data": data, "extra": extra }).to_string()
    }

    /// Text that is almost a valid message: a subscribe message with a few
    /// characters replaced by JSON punctuation, then cut short. Gets past the first
    /// checks, unlike most random strings.
    fn mangled() -> impl Strategy<Value = String> {
        let message = (channel_name(), any::<Option<String>>(), any::<Option<String>>(), any::<bool>())
            .prop_map(|(channel, auth, data, as_string)| {
                subscribe_message(&channel, &auth, &data, as_string, &Value::Null)
            });
        let punctuation = select(vec!['"', '\\', '{', '}', '[', ']', ':', ',', 'u', '0', 'n', ' ', 'é']);
        (message, vec((any::<Index>(), punctuation), 0..4), any::<Index>()).prop_map(|(text, edits, cut)| {
            let mut chars: Vec<char> = text.chars().collect();
            for (at, c) in edits {
                let at = at.index(chars.len());
                chars[at] = c;
            }
            chars.truncate(cut.index(chars.len() + 1).max(chars.len() / 2));
            chars.into_iter().collect()
        })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_text_never_panics(
            text in prop_oneof![any::<String>(), mangled()],
            limit in 0usize..2048,
        ) {
            handle(&text, limit);
        }

        #[test]
        fn arbitrary_json_never_panics(
            event in select(
                vec!["pusher:subscribe", "pusher:unsubscribe", "pusher:signin", "client-x", "other"],
            ),
            data in herald_test_util::strategy::json_value(false),
            as_string in any::<bool>(),
            channel_data in herald_test_util::strategy::json_value(false),
            limit in 0usize..2048,
        ) {
            let data = if as_string { Value::String(data.to_string()) } else { data };
            handle(&json!({ "event": event, "data": data, "channel": data }).to_string(), limit);
            let subscribe = json!({ "channel": "presence-a", "channel_data": channel_data.to_string() });
            handle(&json!({ "event": "pusher:subscribe", "data": subscribe }).to_string(), limit);
            let _ = parse_presence_data(&channel_data.to_string(), limit);
        }

        #[test]
        fn subscribe_messages_round_trip(
            channel in channel_name(),
            auth in any::<Option<String>>(),
            channel_data in any::<Option<String>>(),
            as_string in any::<bool>(),
            extra in herald_test_util::strategy::json_value(false),
        ) {
            let text = subscribe_message(&channel, &auth, &channel_data, as_string, &extra);
            let message: Incoming<'_> = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&*message.event, "pusher:subscribe");
            prop_assert_eq!(message.channel, None);
            let data: SubscribeData = parse_data(message.data).unwrap();
            prop_assert_eq!(&data.channel, &channel);
            prop_assert_eq!(data.auth, auth);
            prop_assert_eq!(data.channel_data, channel_data);
            let parsed = ChannelName::new(&data.channel).unwrap();
            prop_assert_eq!(parsed.as_str(), channel.as_str());
        }
    }
}
