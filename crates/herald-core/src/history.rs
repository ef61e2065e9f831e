//! Channel history: which channels of an app keep their recent publications
//! ([`HistoryRule`]), and where a publication sits in its channel's history
//! ([`StreamPosition`]), so a client that lost its connection can resume from there.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Deserializer};

use crate::ChannelPattern;

/// A publication's place in its channel's history: its offset (1 for the channel's
/// first, then one more for each) within an epoch. The epoch names one unbroken run of
/// offsets: it changes whenever the history was lost (its store restarted empty, or
/// the channel was quiet for longer than [`HistoryRule::meta_ttl`]), so a position of
/// another epoch can never be mistaken for one of this run.
///
/// As a channel's latest position, offset 0 means nothing was published in the epoch
/// yet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// Longest epoch Herald accepts from a client (its own are 10 characters).
pub const MAX_EPOCH_LEN: usize = 32;

impl StreamPosition {
    pub fn new(offset: u64, epoch: impl Into<Arc<str>>) -> Self {
        Self { offset, epoch: epoch.into() }
    }

    /// A fresh epoch: 10 random characters of `[0-9a-z]` (about 52 bits), so two
    /// stores that lost their history never pick the same one by chance.
    pub fn new_epoch() -> Arc<str> {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let epoch: String = (0..10).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect();
        Arc::from(epoch)
    }
}

/// Publications of the channels matching `channels` are kept: the last `size` of them,
/// each for `ttl` (`[[apps.history]]` in the config file). A channel takes the first
/// rule that matches it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    /// The channels this rule applies to (`chat-*`).
    pub channels: ChannelPattern,
    /// How many publications are kept per channel, the latest ones.
    pub size: usize,
    /// How long each publication is kept.
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
    /// How long a channel's offset and epoch are kept after its last publication or
    /// subscription. A client that comes back later is told its position cannot be
    /// recovered (a new epoch), even if nothing was published meanwhile.
    #[serde(default = "default_meta_ttl", deserialize_with = "duration")]
    pub meta_ttl: Duration,
}

/// How long a cache channel keeps its last event when no rule of the app says
/// otherwise: Pusher's 30 minutes.
pub const CACHE_TTL: Duration = Duration::from_secs(30 * 60);

/// What a cache channel keeps when no `[[apps.history]]` rule matches it: its last
/// event, for [`CACHE_TTL`]. A rule that matches it takes precedence (a longer
/// history, another ttl), and the channel still sends its last event to each new
/// subscriber.
pub fn cache_rule() -> &'static HistoryRule {
    static RULE: std::sync::LazyLock<HistoryRule> = std::sync::LazyLock::new(|| HistoryRule {
        channels: ChannelPattern::everything(),
        size: 1,
        ttl: CACHE_TTL,
        meta_ttl: CACHE_TTL,
    });
    &RULE
}

/// Most publications one rule may keep per channel: a recovering client gets at most
/// this many at once.
pub const MAX_HISTORY_SIZE: usize = 10_000;

fn default_meta_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
}

impl HistoryRule {
    /// What is wrong with this rule, if anything (`at` names it in the messages).
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.size == 0 || self.size > MAX_HISTORY_SIZE {
            problems.push(format!("{at}.size: must be 1 to {MAX_HISTORY_SIZE}"));
        }
        if self.ttl < Duration::from_secs(1) {
            problems.push(format!("{at}.ttl: must be at least 1s"));
        }
        if self.meta_ttl < self.ttl {
            problems.push(format!("{at}.meta_ttl: must be at least ttl"));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_validate() {
        let rule: HistoryRule =
            serde_json::from_str(r#"{"channels":"chat-*","size":100,"ttl":"5m"}"#).unwrap();
        assert_eq!(rule.ttl, Duration::from_secs(300));
        assert_eq!(rule.meta_ttl, Duration::from_secs(86_400));
        assert!(rule.problems("h").is_empty());
        assert!(rule.channels.matches("chat-1"));
        let bad = HistoryRule { size: 0, ttl: Duration::ZERO, ..rule.clone() };
        assert_eq!(bad.problems("h").len(), 2, "{:?}", bad.problems("h"));
        let bad = HistoryRule { meta_ttl: Duration::from_secs(1), ..rule };
        assert_eq!(bad.problems("h"), vec!["h.meta_ttl: must be at least ttl"]);
        assert!(serde_json::from_str::<HistoryRule>(r#"{"channels":"a b","size":1,"ttl":"1s"}"#).is_err());
        assert!(serde_json::from_str::<HistoryRule>(r#"{"channels":"a","size":1,"ttl":"soon"}"#).is_err());
    }

    #[test]
    fn epochs_differ() {
        let (a, b) = (StreamPosition::new_epoch(), StreamPosition::new_epoch());
        assert_eq!(a.len(), 10);
        assert_ne!(a, b);
    }
}
