//! The broker topics a node is subscribed to, kept equal to the topics it has local
//! subscribers for.
//!
//! Changes to one topic are serialized by a striped async lock, so a subscribe racing
//! an unsubscribe can never leave the node deaf to a channel it serves. Subscribing
//! waits for the broker (nothing published after a subscription ack may be missed);
//! unsubscribing after the last local subscriber left happens in the background,
//! retried with backoff, on a task the node owns.

use std::{
    collections::HashSet,
    hash::{BuildHasher, RandomState},
    sync::Arc,
    time::Duration,
};

use herald_backbone::{Broker, Topic};
use herald_core::time::Backoff;
use herald_hub::Hub;
use parking_lot::Mutex;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Attempts at a broker unsubscription before it is left to the next change of the
/// topic (a stale subscription only costs the node messages it drops).
const UNSUBSCRIBE_ATTEMPTS: u32 = 10;

pub(crate) struct Interest {
    hasher: RandomState,
    stripes: Box<[tokio::sync::Mutex<()>]>,
    subscribed: Mutex<HashSet<Topic>>,
}

impl Interest {
    pub(crate) fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            stripes: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            subscribed: Mutex::new(HashSet::new()),
        }
    }

    /// Subscribes or unsubscribes `topic` at the broker so that it matches whether the
    /// hub has local subscribers for it.
    pub(crate) async fn reconcile(
        &self,
        hub: &Hub,
        broker: &dyn Broker,
        topic: &Topic,
    ) -> herald_backbone::Result<()> {
        let stripe = self.hasher.hash_one(topic) as usize % self.stripes.len();
        let _serialized = self.stripes[stripe].lock().await;
        let want = hub.has_subscribers(topic);
        let have = self.subscribed.lock().contains(topic);
        if want && !have {
            broker.subscribe(topic).await?;
            self.subscribed.lock().insert(topic.clone());
        } else if !want && have {
            broker.unsubscribe(topic).await?;
            let mut subscribed = self.subscribed.lock();
            subscribed.remove(topic);
            herald_core::sharded::shrink_set(&mut *subscribed);
        }
        Ok(())
    }

    /// Reconciles `topic` on a task of `tasks`, retrying with backoff until `stop`.
    pub(crate) fn reconcile_later(
        self: &Arc<Self>,
        tasks: &TaskTracker,
        stop: &CancellationToken,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
        topic: Topic,
    ) {
        let (interest, stop) = (self.clone(), stop.clone());
        tasks.spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            for attempt in 1..=UNSUBSCRIBE_ATTEMPTS {
                match interest.reconcile(&hub, broker.as_ref(), &topic).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, "broker unsubscribe failed; retrying");
                        tokio::select! {
                            () = backoff.wait() => {}
                            () = stop.cancelled() => return,
                        }
                    }
                }
            }
        });
    }
}
