//! `client-*` events: what a client may send to the other subscribers of a private or
//! presence channel it is subscribed to, within the app's limits and its rate.

use std::sync::Arc;

use herald_core::{ChannelName, ErrorCode, Publication, PublicationData};
use herald_proto::v1::ChannelEventType;
use herald_telemetry::Metric;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::Session;

/// Why a client event was refused: the `pusher:error` to send.
type Refused = (Option<ErrorCode>, String);

impl Session {
    pub(super) async fn client_event(
        &mut self,
        event: String,
        channel: Option<String>,
        data: Option<&RawValue>,
    ) {
        let data = data.map_or("null", RawValue::get);
        let (channel, presence_user) = match self.admit_client_event(&event, channel, data) {
            Ok(admitted) => admitted,
            Err((code, message)) => return self.error(code, &message),
        };
        let publication = Publication {
            app_id: self.app_id.clone(),
            channel,
            event: Arc::from(event),
            data: PublicationData::from_json(data),
            user_id: presence_user,
            exclude: Some(self.socket),
            published_us: herald_core::time::now_us(),
            trace: None,
            position: None,
        };
        match self.node.publish(publication.clone()).await {
            Ok(()) => {
                metrics::counter!(Metric::ClientEvents.name()).increment(1);
                self.record_client_event(&publication, data);
            }
            Err(e) => self.error(None, &format!("client event not delivered: {e}")),
        }
    }

    /// Pusher's rules for a client event, the rate last (a refused event costs no
    /// token). The channel, and the presence user the connection is there as.
    fn admit_client_event(
        &mut self,
        event: &str,
        channel: Option<String>,
        data: &str,
    ) -> Result<(ChannelName, Option<Arc<str>>), Refused> {
        if !self.app.enable_client_events {
            return Err((None, "client events are not enabled for this app".into()));
        }
        let Some(channel) = channel.and_then(|c| ChannelName::new(&c).ok()) else {
            return Err((None, "client events need a valid channel".into()));
        };
        if !channel.kind().allows_client_events() {
            let message =
                "client events are only accepted on private and presence channels (not encrypted ones)";
            return Err((None, message.into()));
        }
        let Some(presence_user) = self.subscription(&channel).map(|s| s.presence_user.clone()) else {
            return Err((None, format!("not subscribed to {channel}")));
        };
        let limits = &self.app.limits;
        if event.len() > limits.max_event_name_len {
            return Err((None, format!("event name longer than {} characters", limits.max_event_name_len)));
        }
        if data.len() > limits.max_event_data_bytes {
            let message =
                format!("event data is {} bytes, the limit is {}", data.len(), limits.max_event_data_bytes);
            return Err((None, message));
        }
        if !self.client_events.try_take(Instant::now()) {
            let message =
                format!("client event rejected: more than {} per second", limits.client_events_per_second);
            return Err((Some(ErrorCode::ClientEventRateLimit), message));
        }
        Ok((channel, presence_user))
    }

    /// The event log's record of a client event (for webhooks).
    fn record_client_event(&self, publication: &Publication, data: &str) {
        self.node.record(|| {
            let mut event = herald_node::channel_event(
                &self.app.id,
                publication.channel.as_str(),
                ChannelEventType::ClientEvent,
            );
            event.event = publication.event.to_string();
            // Webhooks carry data as a string, as clients receive it: a JSON
            // string as its text, anything else as its JSON.
            event.data = serde_json::from_str::<String>(data).unwrap_or_else(|_| data.to_owned());
            event.socket_id = self.socket.to_string();
            event.user_id = publication.user_id.as_deref().unwrap_or_default().to_owned();
            event
        });
    }
}

/// A token bucket: `rate` tokens a second, bursts of up to `rate`.
pub(super) struct TokenBucket {
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub(super) fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second);
        Self { rate, tokens: rate, updated: Instant::now() }
    }

    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn token_bucket_allows_the_rate_and_refills() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10);
        let allowed = (0..30).filter(|_| bucket.try_take(start)).count();
        assert_eq!(allowed, 10);
        assert!(bucket.try_take(start + Duration::from_millis(100)));
        assert!(!bucket.try_take(start + Duration::from_millis(100)));
        let later = start + Duration::from_secs(5);
        assert_eq!((0..30).filter(|_| bucket.try_take(later)).count(), 10, "bursts cap at the rate");
    }
}
