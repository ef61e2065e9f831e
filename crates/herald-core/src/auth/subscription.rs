//! Whether a connection may subscribe to a channel: every rule of a `pusher:subscribe`
//! that needs no I/O, decided in one pure function so that Pusher's rules are tested
//! without a socket. What is left to the session is what needs its state or the
//! backbone (the per-connection channel limit, interest, presence membership).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::verify_channel_auth;
use crate::{App, ChannelKind, ChannelName};

/// Who a connection joins a presence channel as, read from its signed `channel_data`.
/// The backbone's presence member, without depending on the backbone.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceMember {
    pub user_id: Arc<str>,
    /// `null` when `channel_data` has none.
    pub user_info: Value,
}

/// Why a subscription was refused. All are Pusher `AuthError`s; [`Self::status`] is
/// the HTTP-like status Pusher puts in the `pusher:subscription_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    #[error("presence channels need channel_data")]
    MissingChannelData,
    #[error("auth is required for this channel")]
    MissingAuth,
    #[error("invalid signature for this socket id and channel")]
    BadSignature,
    #[error("channel_data is not valid presence data: {0}")]
    InvalidChannelData(String),
    #[error("channel_data.user_id must be a non-empty string or a number")]
    InvalidUserId,
    #[error("user_info is {size} bytes, the limit is {limit}")]
    UserInfoTooLarge { size: usize, limit: usize },
    /// A `#server-to-user-<id>` channel, and the connection is not signed in as `<id>`.
    #[error("sign in as this user before subscribing to its channel")]
    NotSignedIn,
}

impl SubscriptionError {
    /// The `type` of the `pusher:subscription_error`.
    pub fn error_type(&self) -> &'static str {
        "AuthError"
    }

    /// The `status` of the `pusher:subscription_error`: 401 for a missing or wrong
    /// signature, 400 for signed but unusable presence data, 403 for a user channel
    /// of someone else.
    pub fn status(&self) -> u16 {
        match self {
            Self::MissingChannelData | Self::MissingAuth | Self::BadSignature => 401,
            Self::InvalidChannelData(_) | Self::InvalidUserId | Self::UserInfoTooLarge { .. } => 400,
            Self::NotSignedIn => 403,
        }
    }
}

/// Decides a subscription by Pusher's rules:
/// - public channels need nothing;
/// - private and `private-encrypted-` channels need `auth` signing `"socket_id:channel"`
///   (a `channel_data` sent along is not part of what is signed);
/// - presence channels need `channel_data` and `auth` signing
///   `"socket_id:channel:channel_data"`, and then usable presence data (see
///   [`parse_presence_data`]): the member returned is who the connection joins as;
/// - `#server-to-user-<id>` needs the connection signed in as `<id>` (`signed_in`).
///
/// The signature is checked before `channel_data` is read: unsigned data is never parsed.
pub fn authorize_subscription(
    app: &App,
    socket_id: &str,
    channel: &ChannelName,
    auth: Option<&str>,
    channel_data: Option<&str>,
    signed_in: Option<&str>,
) -> Result<Option<PresenceMember>, SubscriptionError> {
    let kind = channel.kind();
    match kind {
        ChannelKind::Public => return Ok(None),
        ChannelKind::ServerToUser => {
            let own = signed_in.is_some() && signed_in == channel.server_to_user_id();
            return if own { Ok(None) } else { Err(SubscriptionError::NotSignedIn) };
        }
        ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence => {}
    }
    let signed_data = match kind {
        ChannelKind::Presence => Some(channel_data.ok_or(SubscriptionError::MissingChannelData)?),
        _ => None,
    };
    let auth = auth.ok_or(SubscriptionError::MissingAuth)?;
    if !verify_channel_auth(app, socket_id, channel.as_str(), signed_data, auth) {
        return Err(SubscriptionError::BadSignature);
    }
    signed_data.map(|data| parse_presence_data(data, app.limits.max_presence_user_info_bytes)).transpose()
}

#[derive(Deserialize)]
struct PresenceData {
    user_id: Value,
    #[serde(default)]
    user_info: Option<Value>,
}

/// Reads a presence subscription's `channel_data`: a JSON object with `user_id` (a
/// non-empty string, or a number, kept as its decimal text) and an optional
/// `user_info` of at most `max_user_info_bytes` as JSON.
pub fn parse_presence_data(
    channel_data: &str,
    max_user_info_bytes: usize,
) -> Result<PresenceMember, SubscriptionError> {
    let data: PresenceData = serde_json::from_str(channel_data)
        .map_err(|e| SubscriptionError::InvalidChannelData(e.to_string()))?;
    let user_id = match data.user_id {
        Value::String(s) if !s.is_empty() => s,
        Value::Number(n) => n.to_string(),
        _ => return Err(SubscriptionError::InvalidUserId),
    };
    let user_info = data.user_info.unwrap_or(Value::Null);
    let size = user_info.to_string().len();
    if size > max_user_info_bytes {
        return Err(SubscriptionError::UserInfoTooLarge { size, limit: max_user_info_bytes });
    }
    Ok(PresenceMember { user_id: user_id.into(), user_info })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::auth::channel_auth;

    const SOCKET: &str = "1234.1234";

    /// The app of Pusher's "auth signatures" documentation.
    fn app() -> App {
        App::pusher_docs_example()
    }

    fn channel(name: &str) -> ChannelName {
        ChannelName::new(name).unwrap()
    }

    /// Authorizes with an `auth` correctly signed for what is sent.
    fn signed(name: &str, channel_data: Option<&str>) -> Result<Option<PresenceMember>, SubscriptionError> {
        let signed_data = channel_data.filter(|_| name.starts_with("presence-"));
        let auth = channel_auth(&app(), SOCKET, name, signed_data);
        authorize_subscription(&app(), SOCKET, &channel(name), Some(&auth), channel_data, None)
    }

    #[test]
    fn public_channels_need_nothing() {
        let anything = Some("not a signature");
        assert_eq!(authorize_subscription(&app(), SOCKET, &channel("news"), None, None, None), Ok(None));
        assert_eq!(
            authorize_subscription(&app(), SOCKET, &channel("news"), anything, anything, None),
            Ok(None)
        );
    }

    #[test]
    fn private_channels_need_a_signature_of_socket_and_channel() {
        // Pusher's worked example.
        let auth = "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        let foobar = channel("private-foobar");
        assert_eq!(authorize_subscription(&app(), SOCKET, &foobar, Some(auth), None, None), Ok(None));
        let refused = authorize_subscription(&app(), SOCKET, &foobar, None, None, None);
        assert_eq!(refused, Err(SubscriptionError::MissingAuth));
        let other_socket = authorize_subscription(&app(), "1234.1235", &foobar, Some(auth), None, None);
        assert_eq!(other_socket, Err(SubscriptionError::BadSignature));
        let other_channel =
            authorize_subscription(&app(), SOCKET, &channel("private-other"), Some(auth), None, None);
        assert_eq!(other_channel, Err(SubscriptionError::BadSignature));
        assert_eq!(refused.unwrap_err().status(), 401);
    }

    #[test]
    fn channel_data_is_not_signed_on_private_channels() {
        assert_eq!(signed("private-foobar", Some(r#"{"user_id":"1"}"#)), Ok(None));
    }

    #[test]
    fn encrypted_channels_need_a_signature_too() {
        assert_eq!(signed("private-encrypted-foobar", None), Ok(None));
        let unsigned =
            authorize_subscription(&app(), SOCKET, &channel("private-encrypted-foobar"), None, None, None);
        assert_eq!(unsigned, Err(SubscriptionError::MissingAuth));
        let auth = channel_auth(&app(), SOCKET, "private-foobar", None);
        let borrowed = authorize_subscription(
            &app(),
            SOCKET,
            &channel("private-encrypted-foobar"),
            Some(&auth),
            None,
            None,
        );
        assert_eq!(borrowed, Err(SubscriptionError::BadSignature));
    }

    #[test]
    fn presence_channels_join_as_the_signed_member() {
        // Pusher's worked example: a numeric user id.
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        let auth = "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80";
        let member =
            authorize_subscription(&app(), SOCKET, &channel("presence-foobar"), Some(auth), Some(data), None);
        let expected = PresenceMember { user_id: "10".into(), user_info: json!({ "name": "Mr. Channels" }) };
        assert_eq!(member, Ok(Some(expected)));
        let without_info = signed("presence-foobar", Some(r#"{"user_id":"ada"}"#));
        assert_eq!(without_info, Ok(Some(PresenceMember { user_id: "ada".into(), user_info: Value::Null })));
    }

    #[test]
    fn presence_channels_need_signed_channel_data() {
        let auth = channel_auth(&app(), SOCKET, "presence-foobar", None);
        let missing =
            authorize_subscription(&app(), SOCKET, &channel("presence-foobar"), Some(&auth), None, None);
        assert_eq!(missing, Err(SubscriptionError::MissingChannelData));
        assert_eq!(missing.unwrap_err().status(), 401);
        // Data other than what was signed.
        let data = r#"{"user_id":"eve"}"#;
        let forged = authorize_subscription(
            &app(),
            SOCKET,
            &channel("presence-foobar"),
            Some(&auth),
            Some(data),
            None,
        );
        assert_eq!(forged, Err(SubscriptionError::BadSignature));
        let unsigned =
            authorize_subscription(&app(), SOCKET, &channel("presence-foobar"), None, Some(data), None);
        assert_eq!(unsigned, Err(SubscriptionError::MissingAuth));
    }

    #[test]
    fn unsigned_channel_data_is_never_read() {
        let refused = authorize_subscription(
            &app(),
            SOCKET,
            &channel("presence-x"),
            Some("k:00"),
            Some("not json"),
            None,
        );
        assert_eq!(refused, Err(SubscriptionError::BadSignature));
    }

    #[test]
    fn signed_presence_data_must_be_usable() {
        let refused = signed("presence-x", Some("not json")).unwrap_err();
        assert!(matches!(refused, SubscriptionError::InvalidChannelData(_)), "{refused:?}");
        assert_eq!(refused.status(), 400);
        let no_user_id = signed("presence-x", Some(r#"{"user_info":{}}"#)).unwrap_err();
        assert!(matches!(no_user_id, SubscriptionError::InvalidChannelData(_)), "{no_user_id:?}");
        for data in [r#"{"user_id":""}"#, r#"{"user_id":null}"#, r#"{"user_id":[1]}"#] {
            assert_eq!(signed("presence-x", Some(data)), Err(SubscriptionError::InvalidUserId), "{data}");
        }
    }

    #[test]
    fn user_info_is_held_to_the_apps_limit() {
        let mut app = app();
        app.limits.max_presence_user_info_bytes = 16;
        let data = json!({ "user_id": "ada", "user_info": { "name": "Ada Lovelace" } }).to_string();
        let auth = channel_auth(&app, SOCKET, "presence-x", Some(&data));
        let refused =
            authorize_subscription(&app, SOCKET, &channel("presence-x"), Some(&auth), Some(&data), None);
        assert_eq!(refused, Err(SubscriptionError::UserInfoTooLarge { size: 23, limit: 16 }));
        let refused = refused.unwrap_err();
        assert_eq!(
            (refused.status(), refused.to_string().as_str()),
            (400, "user_info is 23 bytes, the limit is 16")
        );
        // Pusher's default: 1 KB.
        let big = json!({ "user_id": "ada", "user_info": "x".repeat(1100) }).to_string();
        assert!(matches!(signed("presence-x", Some(&big)), Err(SubscriptionError::UserInfoTooLarge { .. })));
    }

    #[test]
    fn a_users_channel_needs_that_user_signed_in() {
        let own = channel("#server-to-user-ada");
        assert_eq!(authorize_subscription(&app(), SOCKET, &own, None, None, Some("ada")), Ok(None));
        let refused = authorize_subscription(&app(), SOCKET, &own, None, None, Some("eve"));
        assert_eq!(refused, Err(SubscriptionError::NotSignedIn));
        assert_eq!(refused.unwrap_err().status(), 403);
        assert_eq!(
            authorize_subscription(&app(), SOCKET, &own, None, None, None),
            Err(SubscriptionError::NotSignedIn)
        );
    }

    #[test]
    fn every_refusal_is_an_auth_error() {
        let all = [
            SubscriptionError::MissingChannelData,
            SubscriptionError::MissingAuth,
            SubscriptionError::BadSignature,
            SubscriptionError::InvalidChannelData(String::new()),
            SubscriptionError::InvalidUserId,
            SubscriptionError::UserInfoTooLarge { size: 2, limit: 1 },
            SubscriptionError::NotSignedIn,
        ];
        assert!(all.iter().all(|e| e.error_type() == "AuthError"));
    }

    mod properties {
        use proptest::{collection::vec, prelude::*};

        use super::*;

        fn config() -> ProptestConfig {
            ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn presence_data_round_trips_within_the_limit(
                user_id in prop_oneof![
                    ".{1,20}".prop_map(Value::String),
                    any::<i64>().prop_map(Value::from),
                    any::<u64>().prop_map(Value::from),
                ],
                user_info in proptest::option::of(herald_test_util::strategy::json_value(false)),
                limit in 0usize..200,
            ) {
                let mut data = json!({ "user_id": user_id });
                if let Some(info) = &user_info {
                    data["user_info"] = info.clone();
                }
                let parsed = parse_presence_data(&data.to_string(), limit);
                let info = user_info.unwrap_or(Value::Null);
                let size = info.to_string().len();
                if size > limit {
                    let expected = format!("user_info is {size} bytes, the limit is {limit}");
                    prop_assert_eq!(parsed.err().map(|e| e.to_string()), Some(expected));
                } else {
                    let member = parsed.unwrap();
                    let expected = match &user_id {
                        Value::String(s) => s.clone(),
                        number => number.to_string(),
                    };
                    prop_assert_eq!(&*member.user_id, expected.as_str());
                    prop_assert_eq!(member.user_info, info);
                }
            }

            #[test]
            fn presence_data_without_a_usable_user_id_is_refused(
                user_id in prop_oneof![
                    Just(Value::String(String::new())),
                    Just(Value::Null),
                    any::<bool>().prop_map(Value::Bool),
                    vec(herald_test_util::strategy::json_value(false), 0..3).prop_map(Value::Array),
                ],
            ) {
                let data = json!({ "user_id": user_id }).to_string();
                prop_assert!(parse_presence_data(&data, 1024).is_err());
            }

            #[test]
            fn arbitrary_channel_data_never_panics(data in herald_test_util::strategy::json_value(false), text in any::<String>(), limit in 0usize..2048) {
                let _ = parse_presence_data(&data.to_string(), limit);
                let _ = parse_presence_data(&text, limit);
            }
        }
    }
}
