//! Connection liveness, for every connection of a node at once: one task sweeps the
//! sessions periodically, pings clients that have been silent for the activity
//! timeout, closes with 4201 those that do not answer within the pong timeout, and
//! drops those that stopped reading for longer than the write timeout.
//!
//! One sweep instead of a timer per connection: an idle connection holds no timer,
//! and a busy one never re-arms one on every message.

use std::{sync::Arc, time::Duration};

use herald_core::{ErrorCode, protocol};
use herald_hub::{Close, Outbox, frame, millis};
use tokio::time::{Instant, MissedTickBehavior};

use herald_node::{ConnectionConfig, Node};

/// How often to sweep: often enough that every timeout is kept to within half of the
/// shortest one, and at most a second late.
pub(crate) fn sweep_interval(config: &ConnectionConfig) -> Duration {
    let shortest = config.activity_timeout.min(config.pong_timeout).min(config.write_timeout);
    (shortest / 2).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Sweeps the node's sessions until the task is aborted.
pub(crate) async fn sweep(node: Arc<Node>) {
    let config = &node.config().connection;
    let mut ticks = tokio::time::interval(sweep_interval(config));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut due = Vec::new();
    loop {
        ticks.tick().await;
        let now = millis();
        let instant = Instant::now();
        // Decide under each shard's lock; act (write, close) after releasing it.
        node.sessions().for_each_shard(|shard| {
            due.extend(shard.values().filter_map(|outbox| {
                let action = check(outbox, now, instant, config)?;
                Some((outbox.clone(), action))
            }));
        });
        for (outbox, action) in due.drain(..) {
            match action {
                Action::Ping => {
                    outbox.set_pinged(Some(now));
                    outbox.push(frame::text(protocol::ping().as_bytes()));
                }
                Action::Answered => outbox.set_pinged(None),
                Action::Close(close) => outbox.close(close),
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Action {
    Ping,
    /// The client was heard from since the ping.
    Answered,
    Close(Close),
}

fn check(outbox: &Outbox, now: u64, instant: Instant, config: &ConnectionConfig) -> Option<Action> {
    let status = outbox.status();
    if status.closing.is_some() {
        return None;
    }
    if status.stalled_since.is_some_and(|since| instant.duration_since(since) >= config.write_timeout) {
        // The client stopped reading: it cannot be sent even a close frame.
        return Some(Action::Close(Close::plain(1006, "")));
    }
    let ms = |d: Duration| d.as_millis() as u64;
    match outbox.liveness() {
        (heard, Some(pinged)) if heard >= pinged => Some(Action::Answered),
        (_, Some(pinged)) if now.saturating_sub(pinged) >= ms(config.pong_timeout) => {
            Some(Action::Close(Close::error(ErrorCode::PongNotReceived, "pong reply not received")))
        }
        (heard, None) if now.saturating_sub(heard) >= ms(config.activity_timeout) => Some(Action::Ping),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn outbox() -> (Outbox, tokio::net::TcpStream) {
        let (server, client) = herald_testkit::tcp_pair().await;
        (Outbox::new(server, 1 << 20), client)
    }

    #[tokio::test]
    async fn pings_after_silence_then_closes_with_4201_without_an_answer() {
        let config = ConnectionConfig {
            activity_timeout: Duration::from_secs(120),
            pong_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let (outbox, _client) = outbox().await;
        let (heard, _) = outbox.liveness();
        let instant = Instant::now();
        let at = |secs: u64| heard + secs * 1000;
        assert_eq!(check(&outbox, at(119), instant, &config), None);
        assert_eq!(check(&outbox, at(120), instant, &config), Some(Action::Ping));
        outbox.set_pinged(Some(at(120)));
        assert_eq!(check(&outbox, at(149), instant, &config), None, "waiting for the pong");
        let Some(Action::Close(close)) = check(&outbox, at(150), instant, &config) else {
            panic!("no close after the pong timeout");
        };
        assert_eq!(close.code, 4201);
        // An answer (any frame) clears the ping.
        outbox.set_pinged(Some(heard));
        assert_eq!(check(&outbox, at(150), instant, &config), Some(Action::Answered));
    }

    #[tokio::test]
    async fn drops_a_client_that_stopped_reading_after_the_write_timeout() {
        let config = ConnectionConfig { write_timeout: Duration::from_secs(10), ..Default::default() };
        let (outbox, _client) = outbox().await;
        // The socket takes nothing more: the rest waits in the queue.
        while outbox.queued_bytes() == 0 {
            outbox.push(bytes::Bytes::from(vec![0; 1 << 20]));
        }
        let since = outbox.status().stalled_since.unwrap();
        let now = millis();
        assert_eq!(check(&outbox, now, since + Duration::from_secs(9), &config), None);
        let Some(Action::Close(close)) = check(&outbox, now, since + Duration::from_secs(10), &config) else {
            panic!("not dropped after the write timeout");
        };
        assert_eq!(close.code, 1006);
    }
}
