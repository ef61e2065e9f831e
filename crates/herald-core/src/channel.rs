//! Channel names and the kind of channel a name selects.

use std::{fmt, sync::Arc};

/// Pusher's documented maximum channel name length.
pub const MAX_CHANNEL_NAME_LEN: usize = 164;

/// The name of [`ChannelName::online_users`].
const ONLINE_USERS: &str = "#online";

/// The prefix of the per-user channel that `pusher:signin` unlocks.
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// A validated channel name: 1–164 characters of `[A-Za-z0-9_\-=@,.;]`, or the
/// `#server-to-user-<id>` channel of a signed-in user. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// What kind of channel a name selects; decides authorization and client events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    Public,
    Private,
    PrivateEncrypted,
    Presence,
    /// `#server-to-user-<id>`: only the connection signed in as `<id>` may subscribe.
    ServerToUser,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {len} characters long, the limit is {MAX_CHANNEL_NAME_LEN}")]
    TooLong { len: usize },
    #[error("channel name contains {0:?}; allowed are A-Z a-z 0-9 _ - = @ , . ;")]
    InvalidChar(char),
}

impl ChannelName {
    pub fn new(name: &str) -> Result<Self, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        let len = name.chars().count();
        if len > MAX_CHANNEL_NAME_LEN {
            return Err(ChannelNameError::TooLong { len });
        }
        let body = match name.strip_prefix(SERVER_TO_USER_PREFIX) {
            Some("") => return Err(ChannelNameError::Empty),
            Some(user) => user,
            None => name,
        };
        if let Some(bad) = body.chars().find(|c| !is_channel_char(*c)) {
            return Err(ChannelNameError::InvalidChar(bad));
        }
        Ok(Self(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> ChannelKind {
        let name = self.as_str();
        if name.starts_with("private-encrypted-") {
            ChannelKind::PrivateEncrypted
        } else if name.starts_with("private-") {
            ChannelKind::Private
        } else if name.starts_with("presence-") {
            ChannelKind::Presence
        } else if name.starts_with(SERVER_TO_USER_PREFIX) {
            ChannelKind::ServerToUser
        } else {
            ChannelKind::Public
        }
    }

    /// A cache channel (`cache-`, `private-cache-`, `private-encrypted-cache-`,
    /// `presence-cache-`): it remembers its last event and sends it to each new
    /// subscriber, or `pusher:cache_miss` when it has none.
    pub fn is_cache(&self) -> bool {
        let name = self.as_str();
        ["cache-", "private-cache-", "private-encrypted-cache-", "presence-cache-"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
    }

    /// The internal presence channel whose members are an app's signed-in users (for
    /// watchlists). No client can name it: `#` is not a channel character.
    pub fn online_users() -> Self {
        Self(Arc::from(ONLINE_USERS))
    }

    /// Whether this is [`ChannelName::online_users`] (a comparison, no allocation).
    pub fn is_online_users(&self) -> bool {
        &*self.0 == ONLINE_USERS
    }

    /// A channel name as Herald stores it (in Redis): a client's, or an internal one
    /// ([`ChannelName::online_users`]).
    pub fn stored(name: &str) -> Option<Self> {
        if name == ONLINE_USERS { Some(Self::online_users()) } else { Self::new(name).ok() }
    }

    /// The user id of a `#server-to-user-<id>` channel.
    pub fn server_to_user_id(&self) -> Option<&str> {
        self.as_str().strip_prefix(SERVER_TO_USER_PREFIX)
    }
}

impl ChannelKind {
    /// Private, encrypted and presence channels need a signed `auth` to subscribe.
    pub fn requires_auth(self) -> bool {
        matches!(self, Self::Private | Self::PrivateEncrypted | Self::Presence)
    }

    /// Pusher accepts `client-*` events on private and presence channels only; never on
    /// encrypted ones (the server could not check what it relays).
    pub fn allows_client_events(self) -> bool {
        matches!(self, Self::Private | Self::Presence)
    }
}

fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';')
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        let name = "Az09_-=@,.;";
        assert_eq!(ChannelName::new(name).unwrap().as_str(), name);
        assert_eq!(ChannelName::new(&"a".repeat(164)).unwrap().as_str().len(), 164);
    }

    #[test]
    fn rejects_bad_names_with_the_reason() {
        assert_eq!(ChannelName::new(""), Err(ChannelNameError::Empty));
        assert_eq!(ChannelName::new(&"a".repeat(165)), Err(ChannelNameError::TooLong { len: 165 }));
        assert_eq!(ChannelName::new("a b"), Err(ChannelNameError::InvalidChar(' ')));
        assert_eq!(ChannelName::new("a#b"), Err(ChannelNameError::InvalidChar('#')));
        assert_eq!(ChannelName::new("ünï"), Err(ChannelNameError::InvalidChar('ü')));
        assert_eq!(ChannelName::new("#server-to-user-"), Err(ChannelNameError::Empty));
    }

    #[test]
    fn kinds_follow_prefixes() {
        let kind = |n: &str| ChannelName::new(n).unwrap().kind();
        assert_eq!(kind("news"), ChannelKind::Public);
        assert_eq!(kind("private-a"), ChannelKind::Private);
        assert_eq!(kind("private-encrypted-a"), ChannelKind::PrivateEncrypted);
        assert_eq!(kind("presence-a"), ChannelKind::Presence);
        assert_eq!(kind("#server-to-user-42"), ChannelKind::ServerToUser);
        assert_eq!(ChannelName::new("#server-to-user-42").unwrap().server_to_user_id(), Some("42"));
    }

    mod properties {
        use proptest::{collection::vec, prelude::*, sample::select};

        use super::*;

        /// The documented grammar, written out plainly (no shared helper, no regex):
        /// 1–164 characters of the alphabet, or `#server-to-user-` and at least one
        /// character of it, 164 characters in all.
        fn model(name: &str) -> bool {
            const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-=@,.;";
            let chars: Vec<char> = name.chars().collect();
            if chars.is_empty() || chars.len() > 164 {
                return false;
            }
            let prefix: Vec<char> = "#server-to-user-".chars().collect();
            let body = if chars.starts_with(&prefix) { &chars[prefix.len()..] } else { &chars[..] };
            !body.is_empty() && body.iter().all(|c| ALPHABET.contains(*c))
        }

        /// Names near the grammar: mostly allowed characters, now and then one that is
        /// not, often behind one of the prefixes the code looks at, with lengths around
        /// the limit.
        fn name() -> impl Strategy<Value = String> {
            let allowed = select("Az09_-=@,.;".chars().collect::<Vec<_>>());
            let nearly = prop_oneof![
                20 => allowed,
                1 => select(vec!['#', ' ', '/', ':', '\0', 'é', 'ü', '€', '😀', '\u{7f}']),
                1 => any::<char>(),
            ];
            let prefix = select(vec![
                "",
                "",
                "private-",
                "private-encrypted-",
                "presence-",
                SERVER_TO_USER_PREFIX,
                "#server-to-user",
                "#SERVER-to-user-",
            ]);
            let body = prop_oneof![vec(nearly.clone(), 0..8), vec(nearly, 140..170)];
            prop_oneof![
                8 => (prefix, body).prop_map(|(p, b)| format!("{p}{}", b.into_iter().collect::<String>())),
                1 => any::<String>(),
            ]
        }

        fn config() -> ProptestConfig {
            ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() }
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn accepts_exactly_the_documented_grammar(name in name()) {
                let parsed = ChannelName::new(&name);
                prop_assert_eq!(parsed.is_ok(), model(&name), "{:?}: {:?}", name, parsed);
                match parsed {
                    Ok(channel) => {
                        prop_assert_eq!(channel.as_str(), name.as_str());
                        let kind = match () {
                            _ if name.starts_with("private-encrypted-") => ChannelKind::PrivateEncrypted,
                            _ if name.starts_with("private-") => ChannelKind::Private,
                            _ if name.starts_with("presence-") => ChannelKind::Presence,
                            _ if name.starts_with('#') => ChannelKind::ServerToUser,
                            _ => ChannelKind::Public,
                        };
                        prop_assert_eq!(channel.kind(), kind);
                    }
                    // The reason given is the first rule broken.
                    Err(ChannelNameError::Empty) => {
                        prop_assert!(name.is_empty() || name == SERVER_TO_USER_PREFIX)
                    }
                    Err(ChannelNameError::TooLong { len }) => {
                        prop_assert_eq!(len, name.chars().count());
                        prop_assert!(len > MAX_CHANNEL_NAME_LEN);
                    }
                    Err(ChannelNameError::InvalidChar(c)) => prop_assert!(name.contains(c)),
                }
            }
        }
    }
}
