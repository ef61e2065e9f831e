//! What an endpoint receives: event types (the Standard Webhooks `type` values, with their
//! Pusher webhook names) and channel-name globs, combined into a [`Filter`].

use std::{fmt, str::FromStr};

pub use herald_core::ChannelPattern;

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
    /// A client subscribed to a cache channel with no cached event.
    #[serde(rename = "cache.miss")]
    CacheMiss,
}

/// The valid names, for error messages; a test keeps it in step with [`EventType::ALL`].
const VALID_NAMES: &str = "channel.event, client.event, channel.occupied, channel.vacated, member.added, \
                           member.removed, subscription.count, cache.miss";

impl EventType {
    pub const ALL: [EventType; 8] = [
        EventType::ChannelEvent,
        EventType::ClientEvent,
        EventType::ChannelOccupied,
        EventType::ChannelVacated,
        EventType::MemberAdded,
        EventType::MemberRemoved,
        EventType::SubscriptionCount,
        EventType::CacheMiss,
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
            EventType::CacheMiss => "cache.miss",
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
            EventType::CacheMiss => Some("cache_miss"),
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
        assert_eq!(names.len(), 8);

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
                ("cache.miss", Some("cache_miss")),
            ]
        );
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
