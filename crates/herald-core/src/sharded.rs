//! A map split over several mutex-protected shards, so that unrelated keys (channels,
//! say) never contend for one global lock.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, RandomState},
};

use parking_lot::{Mutex, MutexGuard};

pub struct Sharded<K, V> {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<K, V>>]>,
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    /// `shards` is rounded up to a power of two (at least 1).
    pub fn new(shards: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        Self { hasher: RandomState::new(), shards: (0..n).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    /// Locks the shard that holds `key`. Keep the guard short-lived and never await
    /// while holding it.
    pub fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, HashMap<K, V>> {
        let index = self.hasher.hash_one(key) as usize & (self.shards.len() - 1);
        self.shards[index].lock()
    }

    /// Visits every shard in turn (each locked only while it is visited).
    pub fn for_each_shard(&self, mut f: impl FnMut(&mut HashMap<K, V>)) {
        for shard in self.shards.iter() {
            f(&mut shard.lock());
        }
    }
}
