//! What a delivery looks like on the wire, per endpoint format.
//!
//! **Standard Webhooks**: one event per request, body `{"type", "timestamp", "data"}`;
//! headers `webhook-id` (the same on every attempt), `webhook-timestamp` (seconds, of
//! this attempt) and `webhook-signature` (`v1,<base64>` per key, space-separated while
//! a rotated secret still signs).
//!
//! **Pusher**: body `{"time_ms", "events": [...]}` with Pusher's event objects
//! (`channel_occupied`, `member_added`, `client_event`, ...); headers `X-Pusher-Key`
//! (the app key) and `X-Pusher-Signature` (hex HMAC-SHA256 of the body with the app
//! secret). Publications (`channel.event`) have no Pusher form and never go to Pusher
//! endpoints.

use bytes::Bytes;
use herald_core::App;
use herald_proto::v1::{ChannelEvent, ChannelEventType, Delivery};
use serde_json::{Map, Value, json};

use herald_webhooks::{
    endpoint::{Endpoint, Format},
    filter::EventType,
    sign,
};

/// The webhook event type of a log record (`None` for unknown records).
pub fn event_type(event: &ChannelEvent) -> Option<EventType> {
    Some(match ChannelEventType::try_from(event.r#type).ok()? {
        ChannelEventType::Publication => EventType::ChannelEvent,
        ChannelEventType::ClientEvent => EventType::ClientEvent,
        ChannelEventType::ChannelOccupied => EventType::ChannelOccupied,
        ChannelEventType::ChannelVacated => EventType::ChannelVacated,
        ChannelEventType::MemberAdded => EventType::MemberAdded,
        ChannelEventType::MemberRemoved => EventType::MemberRemoved,
        ChannelEventType::SubscriptionCount => EventType::SubscriptionCount,
        ChannelEventType::CacheMiss => EventType::CacheMiss,
        ChannelEventType::Unspecified => return None,
    })
}

/// Whether `endpoint` wants `event`.
pub fn wants(endpoint: &Endpoint, filter: &herald_webhooks::filter::Filter, event: &ChannelEvent) -> bool {
    let Some(kind) = event_type(event) else {
        return false;
    };
    if endpoint.format == Format::Pusher && kind.pusher_name().is_none() {
        return false;
    }
    filter.matches(kind, &event.channel)
}

/// A request ready to send.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

/// Builds the request of one attempt of `delivery` at `now_ms`.
pub fn prepare(delivery: &Delivery, endpoint: &Endpoint, app: &App, now_ms: i64) -> Result<Prepared, String> {
    let mut headers = vec![
        ("content-type", "application/json".to_owned()),
        ("user-agent", concat!("Herald-Webhooks/", env!("CARGO_PKG_VERSION")).to_owned()),
        ("webhook-id", delivery.id.clone()),
    ];
    let body = match endpoint.format {
        Format::StandardWebhooks => {
            let event = delivery.events.first().ok_or("a delivery without events")?;
            let body = Bytes::from(standard_body(event).to_string());
            let timestamp = now_ms / 1000;
            let keys = endpoint.signing_keys(now_ms).map_err(|e| e.to_string())?;
            headers.push(("webhook-timestamp", timestamp.to_string()));
            headers.push((
                "webhook-signature",
                sign::standard_signature_header(&keys, &delivery.id, timestamp, &body),
            ));
            body
        }
        Format::Pusher => {
            let events: Vec<Value> = delivery.events.iter().filter_map(pusher_event).collect();
            let body = Bytes::from(json!({ "time_ms": now_ms, "events": events }).to_string());
            headers.push(("x-pusher-key", app.key.clone()));
            headers.push(("x-pusher-signature", sign::pusher_signature(&app.secret, &body)));
            body
        }
    };
    Ok(Prepared { headers, body })
}

/// `{"type", "timestamp", "data"}` of one event.
pub fn standard_body(event: &ChannelEvent) -> Value {
    let kind = event_type(event).map_or("unknown", |t| t.as_str());
    let mut data = Map::new();
    data.insert("id".into(), event.id.clone().into());
    data.insert("app_id".into(), event.app_id.clone().into());
    data.insert("channel".into(), event.channel.clone().into());
    fn put(data: &mut Map<String, Value>, key: &str, value: &str) {
        if !value.is_empty() {
            data.insert(key.into(), value.into());
        }
    }
    match event_type(event) {
        Some(EventType::ChannelEvent | EventType::ClientEvent) => {
            put(&mut data, "event", &event.event);
            data.insert("data".into(), event.data.clone().into());
            put(&mut data, "socket_id", &event.socket_id);
            put(&mut data, "user_id", &event.user_id);
        }
        Some(EventType::MemberAdded | EventType::MemberRemoved) => put(&mut data, "user_id", &event.user_id),
        Some(EventType::SubscriptionCount) => {
            data.insert("subscription_count".into(), event.subscription_count.into());
        }
        _ => {}
    }
    json!({ "type": kind, "timestamp": rfc3339(event.time_ms), "data": data })
}

/// One event in Pusher's webhook form.
fn pusher_event(event: &ChannelEvent) -> Option<Value> {
    let kind = event_type(event)?;
    let mut out = Map::new();
    out.insert("name".into(), kind.pusher_name()?.into());
    out.insert("channel".into(), event.channel.clone().into());
    match kind {
        EventType::ClientEvent => {
            out.insert("event".into(), event.event.clone().into());
            out.insert("data".into(), event.data.clone().into());
            out.insert("socket_id".into(), event.socket_id.clone().into());
            if !event.user_id.is_empty() {
                out.insert("user_id".into(), event.user_id.clone().into());
            }
        }
        EventType::MemberAdded | EventType::MemberRemoved => {
            out.insert("user_id".into(), event.user_id.clone().into());
        }
        EventType::SubscriptionCount => {
            out.insert("subscription_count".into(), event.subscription_count.into());
        }
        _ => {}
    }
    Some(Value::Object(out))
}

/// `2026-11-27T00:00:00.000Z` for milliseconds since the Unix epoch.
pub fn rfc3339(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_614_265_330_123), "2021-02-25T15:02:10.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    fn event(kind: ChannelEventType) -> ChannelEvent {
        ChannelEvent {
            id: "evt_1".into(),
            app_id: "app".into(),
            channel: "presence-room".into(),
            time_ms: 1_614_265_330_000,
            r#type: kind as i32,
            user_id: "alice".into(),
            ..Default::default()
        }
    }

    #[test]
    fn bodies_have_each_formats_shape() {
        let body = standard_body(&event(ChannelEventType::MemberAdded));
        assert_eq!(body["type"], "member.added");
        assert_eq!(body["timestamp"], "2021-02-25T15:02:10.000Z");
        assert_eq!(body["data"]["user_id"], "alice");
        assert_eq!(body["data"]["channel"], "presence-room");
        let pusher = pusher_event(&event(ChannelEventType::MemberRemoved)).unwrap();
        assert_eq!(
            pusher,
            json!({ "name": "member_removed", "channel": "presence-room", "user_id": "alice" })
        );
        assert!(pusher_event(&event(ChannelEventType::Publication)).is_none());
        assert!(pusher_event(&event(ChannelEventType::Unspecified)).is_none());
        // Pusher's cache_miss: the channel alone.
        let miss = pusher_event(&event(ChannelEventType::CacheMiss)).unwrap();
        assert_eq!(miss, json!({ "name": "cache_miss", "channel": "presence-room" }));
        assert_eq!(standard_body(&event(ChannelEventType::CacheMiss))["type"], "cache.miss");
    }
}
