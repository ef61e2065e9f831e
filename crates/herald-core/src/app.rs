//! Apps (tenants): credentials, switches and limits, as configured by the operator.

use std::{collections::HashMap, sync::Arc};

use serde::Deserialize;

use crate::{ChannelName, HistoryRule};

/// One app (tenant): the credentials its clients and backends sign with, and its limits.
/// Every limit has Pusher's default where Pusher documents one.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The app id used in HTTP API paths (`/apps/{id}/...`).
    pub id: String,
    /// The public key clients connect with (`/app/{key}`); also the HTTP API `auth_key`.
    pub key: String,
    /// The secret that signs channel authorizations and HTTP API requests.
    pub secret: String,
    /// A disabled app refuses connections (4003) and API calls (403).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Whether connections may send `client-*` events on private and presence channels.
    #[serde(default)]
    pub enable_client_events: bool,
    /// Whether subscribers of a (non-presence) channel are sent
    /// `pusher_internal:subscription_count` when its cluster-wide count changes
    /// (pusher-js: `pusher:subscription_count`). Pusher's "Subscription Count" setting.
    #[serde(default)]
    pub enable_subscription_count: bool,
    /// Whether signed-in users' `watchlist`s are honoured: each connection signed in
    /// with one is sent `pusher_internal:watchlist_events` (`online` / `offline`) as the
    /// users it watches come and go, cluster-wide (pusher-js: `pusher.user.watchlist`).
    /// Pusher's "Watchlist events" setting.
    #[serde(default)]
    pub enable_watchlist_events: bool,
    /// Bearer tokens accepted by the gRPC API for this app (compared in constant time).
    #[serde(default)]
    pub api_tokens: Vec<String>,
    /// Limits, in the `[apps.limits]` table under the app.
    #[serde(default)]
    pub limits: AppLimits,
    /// Which channels keep their recent publications, so clients recover what they
    /// missed while disconnected (`[[apps.history]]`; none by default).
    #[serde(default)]
    pub history: Vec<HistoryRule>,
}

/// Per-app limits (`[apps.limits]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppLimits {
    /// Concurrent connections on one node; 0 means unlimited. Over it: error 4004.
    pub max_connections: u64,
    /// Largest event `data`, in bytes (Pusher: 10 KB). Over it: HTTP 413, or `pusher:error`.
    pub max_event_data_bytes: usize,
    /// Longest event name (Pusher: 200).
    pub max_event_name_len: usize,
    /// Channels one HTTP publish may name (Pusher: 100).
    pub max_channels_per_event: usize,
    /// Events in one `batch_events` request (Pusher: 10).
    pub max_batch_events: usize,
    /// Channels one connection may be subscribed to at once.
    pub max_channels_per_connection: usize,
    /// Members of one presence channel (Pusher: 100).
    pub max_presence_members: usize,
    /// Size of a presence member's `user_info` JSON, in bytes (Pusher: 1 KB).
    pub max_presence_user_info_bytes: usize,
    /// `client-*` events one connection may send per second (Pusher: 10). Over it: 4301.
    pub client_events_per_second: u32,
    /// User ids of a signed-in user's `watchlist` that are watched (Pusher: 100); the
    /// rest are ignored, with `pusher:error` 4302.
    pub max_watchlist_size: usize,
    /// Webhook deliveries per second to all of the app's endpoints together, across
    /// every dispatcher replica; 0 means unlimited. Deliveries over it wait (in a retry
    /// tier when the wait is long) without using up a retry attempt.
    pub webhooks_per_second: u32,
    /// How many webhook deliveries may go at once after a quiet period (the GCRA burst).
    pub webhooks_burst: u32,
}

impl Default for AppLimits {
    fn default() -> Self {
        Self {
            max_connections: 0,
            max_event_data_bytes: 10 * 1024,
            max_event_name_len: 200,
            max_channels_per_event: 100,
            max_batch_events: 10,
            max_channels_per_connection: 200,
            max_presence_members: 100,
            max_presence_user_info_bytes: 1024,
            client_events_per_second: 10,
            max_watchlist_size: 100,
            webhooks_per_second: 1_000,
            webhooks_burst: 100,
        }
    }
}

/// Credentials never reach logs: the secret and tokens are redacted.
impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("enabled", &self.enabled)
            .field("enable_client_events", &self.enable_client_events)
            .field("enable_subscription_count", &self.enable_subscription_count)
            .field("enable_watchlist_events", &self.enable_watchlist_events)
            .field("api_tokens", &format_args!("<{} redacted>", self.api_tokens.len()))
            .field("limits", &self.limits)
            .field("history", &self.history)
            .finish()
    }
}

fn yes() -> bool {
    true
}

impl App {
    /// An enabled app with these credentials, client events off, no API tokens and
    /// default limits (for tools that sign requests as an app: the load generator).
    pub fn with_credentials(id: &str, key: &str, secret: &str) -> Self {
        Self {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            enabled: true,
            enable_client_events: false,
            enable_subscription_count: false,
            enable_watchlist_events: false,
            api_tokens: vec![],
            limits: AppLimits::default(),
            history: vec![],
        }
    }

    /// The history rule of `channel`, if it keeps history: the first rule matching it,
    /// else, for a cache channel, [`cache_rule`](crate::history::cache_rule) (its last
    /// event).
    pub fn history_for(&self, channel: &ChannelName) -> Option<&HistoryRule> {
        self.history
            .iter()
            .find(|rule| rule.channels.matches(channel.as_str()))
            .or_else(|| channel.is_cache().then(crate::history::cache_rule))
    }
}

#[cfg(any(test, feature = "test-util"))]
impl App {
    /// The app of Pusher's "auth signatures" documentation, whose worked examples the
    /// signature tests reproduce.
    pub fn pusher_docs_example() -> Self {
        Self::with_credentials("3", "278d425bdf160c739803", "7ad3773142a6692b25b8")
    }

    /// An enabled app `id` for tests: key `{id}-key`, secret `{id}-secret`, client events
    /// on, no API tokens, default limits. Change a field with struct update syntax:
    /// `App { limits, ..App::for_test("a") }`.
    pub fn for_test(id: &str) -> Self {
        Self {
            enable_client_events: true,
            ..Self::with_credentials(id, &format!("{id}-key"), &format!("{id}-secret"))
        }
    }
}

/// The configured apps, looked up by id (HTTP API) or key (WebSocket, `auth_key`).
#[derive(Debug, Default, Clone)]
pub struct Apps {
    by_id: HashMap<String, Arc<App>>,
    by_key: HashMap<String, Arc<App>>,
}

impl Apps {
    /// Builds the registry, reporting every problem at once (empty credentials,
    /// duplicate ids or keys) rather than the first.
    pub fn new(apps: impl IntoIterator<Item = App>) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut registry = Self::default();
        for (index, app) in apps.into_iter().enumerate() {
            let at = format!("apps[{index}]");
            for (field, value) in [("id", &app.id), ("key", &app.key), ("secret", &app.secret)] {
                if value.trim().is_empty() {
                    errors.push(format!("{at}.{field}: must not be empty"));
                }
            }
            // '/' would split HTTP API paths; braces would make Redis hash tags of part
            // of the id and split a channel's keys from its pub/sub slot.
            if app.id.contains(['/', '{', '}']) {
                errors.push(format!("{at}.id: must not contain '/', '{{' or '}}'"));
            }
            if app.api_tokens.iter().any(|t| t.len() < 16) {
                errors.push(format!("{at}.api_tokens: tokens must be at least 16 characters"));
            }
            if app.limits.max_event_data_bytes == 0 {
                errors.push(format!("{at}.max_event_data_bytes: must be at least 1"));
            }
            if app.limits.webhooks_per_second > 0 && app.limits.webhooks_burst == 0 {
                errors
                    .push(format!("{at}.webhooks_burst: must be at least 1 when webhooks_per_second is set"));
            }
            if app.limits.max_channels_per_event == 0 {
                errors.push(format!("{at}.max_channels_per_event: must be at least 1"));
            }
            if app.limits.max_batch_events == 0 {
                errors.push(format!("{at}.max_batch_events: must be at least 1"));
            }
            for (i, rule) in app.history.iter().enumerate() {
                errors.extend(rule.problems(&format!("{at}.history[{i}]")));
            }
            let app = Arc::new(app);
            if registry.by_id.insert(app.id.clone(), app.clone()).is_some() {
                errors.push(format!("{at}.id: {:?} is used by another app", app.id));
            }
            if registry.by_key.insert(app.key.clone(), app.clone()).is_some() {
                errors.push(format!("{at}.key: {:?} is used by another app", app.key));
            }
        }
        if errors.is_empty() { Ok(registry) } else { Err(errors) }
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id)
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<App>> {
        self.by_id.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, key: &str) -> App {
        App { key: key.into(), ..App::for_test(id) }
    }

    #[test]
    fn reports_every_problem() {
        let errors = Apps::new([app("1", "k"), app("1", "k"), app("", "k2")]).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
    }

    #[test]
    fn looks_up_by_id_and_key() {
        let apps = Apps::new([app("1", "k1"), app("2", "k2")]).unwrap();
        assert_eq!(apps.by_id("2").unwrap().key, "k2");
        assert_eq!(apps.by_key("k1").unwrap().id, "1");
        assert!(apps.by_key("nope").is_none());
    }
}
