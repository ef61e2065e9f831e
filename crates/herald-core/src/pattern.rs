//! Channel-name globs: `*` matches any run of characters. Apps select channels with
//! them (which keep history), and webhook endpoints (which events they receive).

use std::{fmt, str::FromStr};

/// Longer than any channel name (164) so a pattern can spell one out in full, with room for
/// `*`s; short enough that matching cost is trivially bounded.
pub const MAX_PATTERN_LEN: usize = 200;

/// A channel-name glob: `*` matches any run of characters (including none), everything
/// else matches itself. `private-*`, `*-orders`, `presence-room-*-admins`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
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

    /// `*`: every channel.
    pub(crate) fn everything() -> Self {
        Self("*".to_owned())
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

impl TryFrom<String> for ChannelPattern {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl FromStr for ChannelPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
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
}
