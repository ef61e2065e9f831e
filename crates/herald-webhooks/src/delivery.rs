//! A delivery as it travels between the dispatcher's topics (retry tiers, parked, dead):
//! its id and its record.

use bytes::Bytes;
use herald_backbone::Append;
use herald_proto::v1::Delivery;
use prost::Message as _;

/// The webhook id of `event`'s delivery to `endpoint_id`: the same on every attempt.
pub fn webhook_id(event_id: &str, endpoint_id: &str) -> String {
    let event = event_id.strip_prefix("evt_").unwrap_or(event_id);
    let endpoint = endpoint_id.strip_prefix("ep_").unwrap_or(endpoint_id);
    format!("msg_{event}_{endpoint}")
}

/// A delivery (or Pusher batch) encoded for a topic, keyed so that one endpoint's
/// deliveries share a partition.
pub fn encode_delivery(delivery: &Delivery) -> Append {
    Append {
        key: Bytes::from(format!("{}/{}", delivery.app_id, delivery.endpoint_id)),
        value: Bytes::from(delivery.encode_to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_ids_are_stable_per_event_and_endpoint() {
        assert_eq!(webhook_id("evt_01ABC", "ep_xyz"), "msg_01ABC_xyz");
        assert_ne!(webhook_id("evt_01ABC", "ep_xyz"), webhook_id("evt_01ABC", "ep_other"));
    }
}
