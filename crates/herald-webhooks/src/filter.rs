//! What an endpoint receives: event types (the Standard Webhooks `type` values, with their
//! Pusher webhook names) and channel-name globs, combined into a [`Filter`].

use std::{fmt, str::FromStr};

/// A kind of event an endpoint can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum EventType {
    /// A publication on a channel.
    #[serde(rename = "channel.event")]
    ChannelEvent,
    /// A client event (`client-*`) sent by a subscriber on a private or presence channel.
    #[serde(rename = "client.event")]
    ClientEvent,
    /// A channel got its first subscriber.
    #[serde(rename = "channel.occupied")]
    ChannelOccupied,
    /// A channel lost its last subscriber.
    #[serde(rename = "channel.vacated")]
    ChannelVacated,
    /// A user joined a presence channel.
    #[serde(rename = "member.added")]
    MemberAdded,
    /// A user's last connection left a presence channel.
    #[serde(rename = "member.removed")]
    MemberRemoved,
    /// A channel's subscriber count changed.
    #[serde(rename = "subscription.count")]
    SubscriptionCount,
}

/// The valid names, for error messages; a test keeps it in step with [`EventType::ALL`].
const VALID_NAMES: &str = "channel.event, client.event, channel.occupied, channel.vacated, member.added, \
                           member.removed, subscription.count";

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::ChannelEvent,
        EventType::ClientEvent,
        EventType::ChannelOccupied,
        EventType::ChannelVacated,
        EventType::MemberAdded,
        EventType::MemberRemoved,
        EventType::SubscriptionCount,
    ];

    /// The Standard Webhooks `type` value; the same string serde uses.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::ChannelEvent => "channel.event",
            EventType::ClientEvent => "client.event",
            EventType::ChannelOccupied => "channel.occupied",
            EventType::ChannelVacated => "channel.vacated",
            EventType::MemberAdded => "member.added",
            EventType::MemberRemoved => "member.removed",
            EventType::SubscriptionCount => "subscription.count",
        }
    }

    /// The `name` of the event in a Pusher-format webhook. None for publications: Pusher
    /// never sends those as webhooks, so a Pusher-format endpoint can't receive them.
    pub fn pusher_name(&self) -> Option<&'static str> {
        match self {
            EventType::ChannelEvent => None,
            EventType::ClientEvent => Some("client_event"),
            EventType::ChannelOccupied => Some("channel_occupied"),
            EventType::ChannelVacated => Some("channel_vacated"),
            EventType::MemberAdded => Some("member_added"),
            EventType::MemberRemoved => Some("member_removed"),
            EventType::SubscriptionCount => Some("subscription_count"),
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?}; valid are {VALID_NAMES}")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

/// Longer than any channel name (164) so a pattern can spell one out in full, with room for
/// `*`s; short enough that matching cost is trivially bounded.
pub const MAX_PATTERN_LEN: usize = 200;

/// A channel-name glob: `*` matches any run of characters (including none), everything
/// else matches itself. `private-*`, `*-orders`, `presence-room-*-admins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPattern(String);

impl ChannelPattern {
    /// 1–200 characters: the channel-name characters `A-Z a-z 0-9 _ - = @ , . ;`, `#`
    /// (for `#server-to-user-*` channels) and `*`.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("channel pattern is empty".to_owned());
        }
        // Every allowed character is one byte, so bytes are characters once all pass.
        if let Some(bad) = pattern.chars().find(|c| !is_pattern_char(*c)) {
            return Err(format!(
                "channel pattern {pattern:?} contains {bad:?}; allowed are A-Z a-z 0-9 _ - = @ , . ; # \
                 and * (any run of characters)"
            ));
        }
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "channel pattern is {} characters long, the limit is {MAX_PATTERN_LEN}",
                pattern.len()
            ));
        }
        Ok(Self(pattern.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `channel` matches, in time linear in both lengths.
    ///
    /// With `*` the only wildcard, a pattern is `prefix*s1*s2*…*suffix`: the prefix and
    /// suffix are anchored, and each middle segment can take its leftmost occurrence after
    /// the previous one (a later occurrence never leaves more room for the rest). So there
    /// is no backtracking at all, just one substring search per segment over the part of
    /// the channel not yet consumed.
    pub fn matches(&self, channel: &str) -> bool {
        let pattern = self.0.as_str();
        let (Some(first_star), Some(last_star)) = (pattern.find('*'), pattern.rfind('*')) else {
            return pattern == channel;
        };
        let (prefix, suffix) = (&pattern[..first_star], &pattern[last_star + 1..]);
        if channel.len() < prefix.len() + suffix.len()
            || !channel.starts_with(prefix)
            || !channel.ends_with(suffix)
        {
            return false;
        }
        // The boundaries sit right after the ASCII prefix and right before the ASCII
        // suffix, so they are char boundaries; `get` keeps that from ever being a panic.
        let Some(mut rest) = channel.get(prefix.len()..channel.len() - suffix.len()) else {
            return false;
        };
        // Between the first and last star; nothing when they are the same star.
        let middle = pattern.get(first_star + 1..last_star).unwrap_or_default();
        for segment in middle.split('*').filter(|s| !s.is_empty()) {
            match rest.find(segment).and_then(|at| rest.get(at + segment.len()..)) {
                Some(after) => rest = after,
                None => return false,
            }
        }
        true
    }
}

fn is_pattern_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';' | '#' | '*')
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ChannelPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Which events an endpoint receives: an event of one of `event_types` on a channel
/// matching one of `channels`. An empty list means no restriction on that side, so the
/// default filter receives everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub event_types: Vec<EventType>,
    pub channels: Vec<ChannelPattern>,
}

impl Filter {
    pub fn matches(&self, event_type: EventType, channel: &str) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&event_type))
            && (self.channels.is_empty() || self.channels.iter().any(|p| p.matches(channel)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> ChannelPattern {
        ChannelPattern::new(p).unwrap()
    }

    /// The obvious exponential definition, as an oracle for the linear one.
    fn naive(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| naive(rest, &s[i..])),
            Some((c, rest)) => s.first() == Some(c) && naive(rest, &s[1..]),
        }
    }

    #[test]
    fn event_type_names_round_trip_through_str_and_serde() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<EventType>(&json).unwrap(), t);
        }
        assert!(serde_json::from_str::<EventType>("\"ChannelEvent\"").is_err());
    }

    #[test]
    fn all_lists_every_variant_once_and_the_error_names_them() {
        let mut names: Vec<&str> = EventType::ALL.iter().map(EventType::as_str).collect();
        assert_eq!(names.join(", "), VALID_NAMES);
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 7);

        for bad in ["", "channel_occupied", "Channel.Occupied", "channel.occupied ", "member"] {
            let err = bad.parse::<EventType>().unwrap_err();
            assert_eq!(err, UnknownEventType(bad.to_owned()));
            let message = err.to_string();
            assert!(message.contains(&format!("{bad:?}")), "{message}");
            for t in EventType::ALL {
                assert!(message.contains(t.as_str()), "{message}");
            }
        }
    }

    #[test]
    fn pusher_names_are_pushers_webhook_events() {
        let pusher: Vec<_> = EventType::ALL.iter().map(|t| (t.as_str(), t.pusher_name())).collect();
        assert_eq!(
            pusher,
            vec![
                ("channel.event", None),
                ("client.event", Some("client_event")),
                ("channel.occupied", Some("channel_occupied")),
                ("channel.vacated", Some("channel_vacated")),
                ("member.added", Some("member_added")),
                ("member.removed", Some("member_removed")),
                ("subscription.count", Some("subscription_count")),
            ]
        );
    }

    #[test]
    fn patterns_validate_length_and_characters() {
        for ok in ["*", "private-*", "#server-to-user-*", "a", "presence-room-*-admins", "A-Za-z0-9_-=@,.;#*"]
        {
            assert_eq!(pattern(ok).as_str(), ok);
            assert_eq!(ok.parse::<ChannelPattern>().unwrap().to_string(), ok);
        }
        assert_eq!(ChannelPattern::new("").unwrap_err(), "channel pattern is empty");
        assert!(ChannelPattern::new(&"a".repeat(MAX_PATTERN_LEN)).is_ok());
        let err = ChannelPattern::new(&"a".repeat(MAX_PATTERN_LEN + 1)).unwrap_err();
        assert!(err.contains("201") && err.contains("200"), "{err}");
        for (bad, shown) in
            [("private-?", "'?'"), ("a b", "' '"), ("chan/1", "'/'"), ("é*", "'é'"), ("[a]", "'['")]
        {
            let err = ChannelPattern::new(bad).unwrap_err();
            assert!(err.contains(shown) && err.contains("allowed are"), "{bad}: {err}");
        }
    }

    #[test]
    fn literal_patterns_match_only_themselves() {
        let p = pattern("private-orders");
        assert!(p.matches("private-orders"));
        for other in ["private-order", "private-orders2", "xprivate-orders", "", "PRIVATE-ORDERS"] {
            assert!(!p.matches(other), "{other}");
        }
    }

    #[test]
    fn stars_match_any_run_including_none() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("*", &["", "a", "private-x", "#server-to-user-42"], &[]),
            (
                "private-*",
                &["private-", "private-a", "private-a-b"],
                &["private", "presence-a", "xprivate-a"],
            ),
            ("*-orders", &["-orders", "a-orders", "private-eu-orders"], &["orders", "a-orders-2"]),
            (
                "presence-*-admins",
                &["presence--admins", "presence-room-1-admins"],
                &["presence-admins", "presence-x-admin"],
            ),
            ("a*b*c", &["abc", "aXbYc", "abbbc", "acbc", "abcbc"], &["ab", "acb", "bac", "abcx"]),
            ("**", &["", "anything"], &[]),
            ("a**b", &["ab", "axxb"], &["a", "ba"]),
            ("*a*", &["a", "ba", "ab", "bab"], &["", "b", "bbb"]),
            ("ab*ab", &["abab", "abxab"], &["ab", "aba"]),
            ("*aa*aa*", &["aaaa", "aaxaa"], &["aaa", "aa"]),
            ("#server-to-user-*", &["#server-to-user-7"], &["server-to-user-7"]),
        ];
        for (p, matching, not_matching) in cases {
            let compiled = pattern(p);
            for channel in *matching {
                assert!(compiled.matches(channel), "{p} should match {channel:?}");
            }
            for channel in *not_matching {
                assert!(!compiled.matches(channel), "{p} should not match {channel:?}");
            }
        }
    }

    #[test]
    fn agrees_with_the_naive_definition_on_every_small_case() {
        // Every pattern over {a, b, *} up to length 5 against every string over {a, b} up
        // to length 6: overlapping segments and repeated letters are where greedy
        // matchers go wrong.
        fn all_strings(alphabet: &[u8], max_len: usize) -> Vec<Vec<u8>> {
            let mut out = vec![Vec::new()];
            let mut last = vec![Vec::new()];
            for _ in 0..max_len {
                last = last
                    .iter()
                    .flat_map(|s| {
                        alphabet.iter().map(move |c| {
                            let mut next = s.clone();
                            next.push(*c);
                            next
                        })
                    })
                    .collect();
                out.extend(last.iter().cloned());
            }
            out
        }
        let channels = all_strings(b"ab", 6);
        for p in all_strings(b"ab*", 5).into_iter().filter(|p| !p.is_empty()) {
            let compiled = pattern(std::str::from_utf8(&p).unwrap());
            for s in &channels {
                assert_eq!(
                    compiled.matches(std::str::from_utf8(s).unwrap()),
                    naive(&p, s),
                    "pattern {:?} channel {:?}",
                    String::from_utf8_lossy(&p),
                    String::from_utf8_lossy(s)
                );
            }
        }
    }

    #[test]
    fn adversarial_patterns_stay_fast() {
        // The classic exponential case for backtracking matchers: many stars and a near miss.
        let p = pattern(&format!("{}b", "a*".repeat(99)));
        let (no_b, ends_in_b, too_few) =
            ("a".repeat(164), format!("{}b", "a".repeat(163)), format!("{}b", "a".repeat(98)));
        let start = std::time::Instant::now();
        for _ in 0..1000 {
            assert!(!p.matches(&no_b));
            assert!(p.matches(&ends_in_b));
            assert!(!p.matches(&too_few));
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(2), "{:?}", start.elapsed());
    }

    #[test]
    fn non_ascii_channels_never_panic_and_match_only_via_stars() {
        // Channel names are ASCII, but `matches` takes any &str.
        assert!(pattern("*").matches("ünïcode"));
        assert!(pattern("a*").matches("aé"));
        assert!(pattern("*a").matches("éa"));
        assert!(pattern("a*b").matches("aéb"));
        assert!(!pattern("a*b").matches("aé"));
        assert!(pattern("*-*").matches("é-é"));
        assert!(!pattern("ab").matches("aé"));
    }

    #[test]
    fn filters_combine_types_and_channels() {
        let everything = Filter::default();
        assert!(everything.matches(EventType::ChannelEvent, "anything"));
        assert!(everything.matches(EventType::MemberAdded, "presence-x"));

        let presence = Filter {
            event_types: vec![EventType::MemberAdded, EventType::MemberRemoved],
            channels: vec![pattern("presence-*")],
        };
        assert!(presence.matches(EventType::MemberAdded, "presence-room"));
        assert!(presence.matches(EventType::MemberRemoved, "presence-room"));
        assert!(!presence.matches(EventType::ChannelOccupied, "presence-room"), "wrong type");
        assert!(!presence.matches(EventType::MemberAdded, "private-room"), "wrong channel");

        let types_only = Filter { event_types: vec![EventType::ChannelVacated], channels: vec![] };
        assert!(types_only.matches(EventType::ChannelVacated, "any"));
        assert!(!types_only.matches(EventType::ChannelOccupied, "any"));

        let channels_only = Filter { event_types: vec![], channels: vec![pattern("a-*"), pattern("*-z")] };
        assert!(channels_only.matches(EventType::ClientEvent, "a-1"));
        assert!(channels_only.matches(EventType::ClientEvent, "1-z"));
        assert!(!channels_only.matches(EventType::ClientEvent, "b-1"));
    }
}
