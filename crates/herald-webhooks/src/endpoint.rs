//! Webhook endpoints: where an app's channel events are delivered, in which format,
//! signed with which secret, and which events they want.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    filter::{ChannelPattern, EventType, Filter},
    sign::{SignError, SigningKey},
};

/// How long a rotated-out secret keeps signing, so receivers can roll over.
pub const SECRET_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// The wire format of an endpoint's deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// One event per request, `{type, timestamp, data}`, Standard Webhooks signatures.
    #[default]
    StandardWebhooks,
    /// Pusher Channels webhooks: batches `{time_ms, events}`, `X-Pusher-Signature`.
    Pusher,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StandardWebhooks => "standard-webhooks",
            Self::Pusher => "pusher",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "standard-webhooks" => Ok(Self::StandardWebhooks),
            "pusher" => Ok(Self::Pusher),
            other => Err(format!("{other:?} is not a format (standard-webhooks, pusher)")),
        }
    }
}

/// One webhook endpoint of an app, as stored (JSON in Redis).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub app_id: String,
    pub url: String,
    /// Empty: every type.
    #[serde(default)]
    pub event_types: Vec<EventType>,
    /// Channel globs; empty: every channel.
    #[serde(default)]
    pub channel_patterns: Vec<String>,
    #[serde(default)]
    pub format: Format,
    /// `whsec_…`: signs Standard Webhooks deliveries.
    pub secret: String,
    /// The secret before the last rotation, signing alongside until it expires.
    #[serde(default)]
    pub previous_secret: Option<String>,
    #[serde(default)]
    pub previous_secret_expires_ms: i64,
    pub enabled: bool,
    #[serde(default)]
    pub disabled_reason: String,
    /// Deliveries per second to this endpoint; 0: only the app's limit.
    #[serde(default)]
    pub rate_per_second: f64,
    /// Requests in flight to this endpoint; 0: the dispatcher's default.
    #[serde(default)]
    pub max_concurrency: u32,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("app_id", &self.app_id)
            .field("url", &self.url)
            .field("format", &self.format)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// Most endpoints one app may have.
pub const MAX_ENDPOINTS_PER_APP: usize = 50;
/// Longest endpoint URL.
pub const MAX_URL_LEN: usize = 2048;

impl Endpoint {
    /// An enabled endpoint of `app_id` with every other field at its default: no
    /// filters, no own limits, never created (`created_ms` 0).
    pub fn new(id: String, app_id: &str, url: &str, format: Format, secret: &str) -> Self {
        Self {
            id,
            app_id: app_id.to_owned(),
            url: url.to_owned(),
            event_types: Vec::new(),
            channel_patterns: Vec::new(),
            format,
            secret: secret.to_owned(),
            previous_secret: None,
            previous_secret_expires_ms: 0,
            enabled: true,
            disabled_reason: String::new(),
            rate_per_second: 0.0,
            max_concurrency: 0,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    /// The filter its fields describe (patterns are validated on the way in).
    pub fn filter(&self) -> Filter {
        Filter {
            event_types: self.event_types.clone(),
            channels: self.channel_patterns.iter().filter_map(|p| ChannelPattern::new(p).ok()).collect(),
        }
    }

    /// The keys that sign a delivery at `now_ms`: the current secret, and the
    /// previous one while it has not expired.
    pub fn signing_keys(&self, now_ms: i64) -> Result<Vec<SigningKey>, SignError> {
        let mut keys = vec![SigningKey::from_secret(&self.secret)?];
        if let Some(previous) = &self.previous_secret
            && now_ms < self.previous_secret_expires_ms
        {
            keys.push(SigningKey::from_secret(previous)?);
        }
        Ok(keys)
    }

    /// Checks every field, naming the field and the reason of each problem.
    pub fn validate(&self) -> Result<(), String> {
        validate_url(&self.url)?;
        for pattern in &self.channel_patterns {
            ChannelPattern::new(pattern).map_err(|e| format!("channel_patterns: {pattern:?}: {e}"))?;
        }
        if self.format == Format::StandardWebhooks || !self.secret.is_empty() {
            SigningKey::from_secret(&self.secret).map_err(|e| format!("secret: {e}"))?;
        }
        if !(self.rate_per_second.is_finite() && self.rate_per_second >= 0.0) {
            return Err("rate_per_second: must be 0 (no limit) or positive".into());
        }
        if self.max_concurrency > 1_000 {
            return Err("max_concurrency: at most 1000".into());
        }
        Ok(())
    }
}

/// The parts of an endpoint URL the client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

/// Parses an `http://` or `https://` URL without credentials or fragment.
pub fn validate_url(url: &str) -> Result<Target, String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("url: longer than {MAX_URL_LEN} characters"));
    }
    let uri: http::Uri = url.parse().map_err(|e| format!("url: {url:?} is not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("url: {url:?} must start with http:// or https://")),
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("url: {url:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err("url: must not contain credentials (user@host)".into());
    }
    if url.contains('#') {
        return Err("url: must not contain a fragment".into());
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("url: {url:?} has no host"));
    }
    Ok(Target {
        https,
        host: host.to_owned(),
        port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
        path: uri.path_and_query().map_or("/".to_owned(), |p| p.as_str().to_owned()),
    })
}

/// A new endpoint id: `ep_` and 20 random base32 characters.
pub fn new_endpoint_id() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut id = String::from("ep_");
    id.extend((0..20).map(|_| char::from(ALPHABET[fastrand::usize(..32)])));
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let t = validate_url("http://127.0.0.1:8080/hook?x=1").unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port, t.path.as_str()),
            (false, "127.0.0.1", 8080, "/hook?x=1")
        );
        let t = validate_url("https://example.com").unwrap();
        assert_eq!((t.https, t.port, t.path.as_str()), (true, 443, "/"));
        assert_eq!(validate_url("http://[::1]:9/").unwrap().host, "::1");
        for bad in ["ftp://x/", "example.com/hook", "http://user:pw@x/", "http://x/#f", "http:///"] {
            assert!(validate_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_look_right() {
        let id = new_endpoint_id();
        assert!(id.starts_with("ep_") && id.len() == 23);
        assert_ne!(id, new_endpoint_id());
    }
}
