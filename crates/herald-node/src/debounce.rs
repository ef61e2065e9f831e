//! Debounced lifecycle announcements (`channel_vacated`, `member_removed`): decided
//! once a channel (a user) has stayed away for the debounce, by one driver task per
//! node.
//!
//! What waits is one entry per channel and per user that left, not one task per
//! leave: a client that subscribes and unsubscribes in a loop, to one channel or to
//! a new one each time, adds nothing for a channel already waiting (it moves its
//! deadline), and otherwise a small entry (about 200 bytes) that lives for the
//! debounce. A task per leave (as before) held a few kilobytes for the whole
//! debounce, so memory grew with the rate of leaves times the debounce, and again
//! for each leave of the same channel.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use herald_core::ChannelName;
use parking_lot::Mutex;
use tokio::{sync::Notify, time::Instant};

/// An announcement waiting for its time: `user` `None` is the channel's
/// `channel_vacated`, `Some` that user's `member_removed`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    pub app_id: Arc<str>,
    pub channel: ChannelName,
    pub user: Option<Arc<str>>,
}

#[derive(Default)]
pub(crate) struct Debouncer {
    state: Mutex<State>,
    changed: Notify,
    started: AtomicBool,
}

#[derive(Default)]
struct State {
    /// The deadline of every waiting key: its latest leave plus the debounce.
    due: HashMap<Key, Instant>,
    /// The same keys by deadline (ties in the order they were added: a user's
    /// `member_removed` before the `channel_vacated` of the same leave). At most one
    /// entry per key: a key whose deadline moved is put back when its old one comes.
    order: BinaryHeap<Reverse<(Instant, u64, Key)>>,
    next: u64,
}

impl State {
    fn push(&mut self, key: Key, deadline: Instant) {
        self.next += 1;
        self.order.push(Reverse((deadline, self.next, key)));
    }
}

impl Debouncer {
    /// Whether the caller must start the driver (the first call answers true, once).
    pub fn needs_driver(&self) -> bool {
        !self.started.swap(true, Ordering::AcqRel)
    }

    /// Waits `key` until `deadline`, or moves its deadline there if it already waits.
    /// Gives the key back when `max` keys wait already: the caller decides it now.
    pub fn schedule(&self, key: Key, deadline: Instant, max: usize) -> Result<(), Key> {
        let mut state = self.state.lock();
        let waiting = state.due.len();
        match state.due.get_mut(&key) {
            Some(due) => *due = (*due).max(deadline),
            None if waiting >= max => return Err(key),
            None => {
                state.due.insert(key.clone(), deadline);
                state.push(key, deadline);
                drop(state);
                self.changed.notify_one();
            }
        }
        Ok(())
    }

    /// Every waiting key at once, grouped by channel (for a leave scheduled after
    /// the driver ended at shutdown).
    pub fn take_all(&self) -> Vec<Vec<Key>> {
        by_channel(self.take_due(None).0)
    }

    /// Announcements waiting now.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.state.lock().due.len()
    }

    /// The keys due at `now` (all of them with `now` `None`), in order, each removed;
    /// and the next deadline after them.
    fn take_due(&self, now: Option<Instant>) -> (Vec<Key>, Option<Instant>) {
        let mut state = self.state.lock();
        let mut out = Vec::new();
        while let Some(Reverse((deadline, _, _))) = state.order.peek() {
            if now.is_some_and(|now| *deadline > now) {
                break;
            }
            let Some(Reverse((deadline, _, key))) = state.order.pop() else { break };
            match state.due.get(&key).copied() {
                Some(due) if due > deadline && now.is_some() => state.push(key, due),
                Some(_) => {
                    state.due.remove(&key);
                    out.push(key);
                }
                None => {}
            }
        }
        herald_core::sharded::shrink_map(&mut state.due);
        if state.order.len() <= state.order.capacity() / 4 {
            let keep = state.order.len() * 2;
            state.order.shrink_to(keep);
        }
        let next = state.order.peek().map(|Reverse((deadline, _, _))| *deadline);
        (out, next)
    }

    /// Hands every due key to `decide`, grouped by channel (in order within one),
    /// until `now` is cancelled; then hands over everything still waiting and ends.
    pub async fn drive<F, Fut>(&self, now: tokio_util::sync::CancellationToken, decide: F)
    where
        F: Fn(Vec<Key>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        loop {
            let changed = self.changed.notified();
            let (due, next) = self.take_due(Some(Instant::now()));
            for keys in by_channel(due) {
                decide(keys).await;
            }
            tokio::select! {
                _ = changed => {}
                _ = sleep_until(next) => {}
                _ = now.cancelled() => break,
            }
        }
        let (all, _) = self.take_due(None);
        for keys in by_channel(all) {
            decide(keys).await;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// `keys` split by channel, each group in the order given.
fn by_channel(keys: Vec<Key>) -> Vec<Vec<Key>> {
    let mut groups: Vec<Vec<Key>> = Vec::new();
    let mut index: HashMap<(Arc<str>, ChannelName), usize> = HashMap::new();
    for key in keys {
        let at = *index.entry((key.app_id.clone(), key.channel.clone())).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(key);
    }
    groups
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    fn key(channel: &str, user: Option<&str>) -> Key {
        Key {
            app_id: Arc::from("app"),
            channel: ChannelName::new(channel).unwrap(),
            user: user.map(Arc::from),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_waits_once_and_a_later_leave_moves_its_deadline() {
        let debouncer = Debouncer::default();
        let start = Instant::now();
        for i in 0..1_000 {
            let deadline = start + Duration::from_secs(3) + Duration::from_millis(i);
            debouncer.schedule(key("busy", None), deadline, 1).unwrap();
        }
        assert_eq!(
            debouncer.schedule(key("other", None), start, 1),
            Err(key("other", None)),
            "past the limit a new key is given back"
        );
        assert_eq!(debouncer.pending(), 1);
        assert_eq!(debouncer.state.lock().order.len(), 1);
        let (due, next) = debouncer.take_due(Some(start + Duration::from_secs(3)));
        assert!(due.is_empty(), "its deadline moved to the last leave's");
        assert_eq!(next, Some(start + Duration::from_millis(3_999)));
        let (due, next) = debouncer.take_due(Some(start + Duration::from_millis(3_999)));
        assert_eq!(due, vec![key("busy", None)]);
        assert_eq!((next, debouncer.pending()), (None, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn due_keys_come_by_channel_in_the_order_they_were_added() {
        let debouncer = Debouncer::default();
        let at = Instant::now() + Duration::from_secs(1);
        for key in [key("a", Some("u")), key("b", None), key("a", None)] {
            debouncer.schedule(key, at, usize::MAX).unwrap();
        }
        let (due, _) = debouncer.take_due(Some(at));
        assert_eq!(
            by_channel(due),
            vec![vec![key("a", Some("u")), key("a", None)], vec![key("b", None)]],
            "a member leaves before its channel is vacated"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_driver_decides_when_due_and_everything_at_once_when_told() {
        let debouncer = Arc::new(Debouncer::default());
        let decided = Arc::new(Mutex::new(Vec::new()));
        let now = tokio_util::sync::CancellationToken::new();
        let driver = {
            let (debouncer, decided, now) = (debouncer.clone(), decided.clone(), now.clone());
            tokio::spawn(async move {
                debouncer
                    .drive(now, |keys| {
                        decided.lock().extend(keys);
                        async {}
                    })
                    .await
            })
        };
        debouncer.schedule(key("soon", None), Instant::now() + Duration::from_secs(1), 10).unwrap();
        debouncer.schedule(key("later", None), Instant::now() + Duration::from_secs(60), 10).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(*decided.lock(), vec![key("soon", None)]);
        now.cancel();
        driver.await.unwrap();
        assert_eq!(*decided.lock(), vec![key("soon", None), key("later", None)]);
        assert_eq!(debouncer.pending(), 0);
    }
}
