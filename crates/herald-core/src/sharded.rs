//! A map split over several mutex-protected shards, so that unrelated keys (channels,
//! say) never contend for one global lock; and the rule that keeps such maps from
//! holding their peak size forever.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, Hash, RandomState},
    ops::{Deref, DerefMut},
};

use parking_lot::{Mutex, MutexGuard};

pub struct Sharded<K, V> {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<K, V>>]>,
}

/// Capacity a map may keep however empty it gets (small maps are not worth it).
const KEEP_CAPACITY: usize = 32;

/// Gives memory back once a map is a quarter full or less: a `HashMap` keeps its
/// largest capacity forever, so a burst of keys (channels, connections) would hold
/// its peak for the life of the process. Shrinks to twice the length, so it takes
/// at least as many removals again before the next shrink (amortised O(1)).
pub fn shrink_map<K: Hash + Eq, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if map.capacity() > KEEP_CAPACITY && map.len() <= map.capacity() / 4 {
        map.shrink_to((map.len() * 2).max(KEEP_CAPACITY));
    }
}

/// [`shrink_map`] for a set.
pub fn shrink_set<T: Hash + Eq, S: BuildHasher>(set: &mut HashSet<T, S>) {
    if set.capacity() > KEEP_CAPACITY && set.len() <= set.capacity() / 4 {
        set.shrink_to((set.len() * 2).max(KEEP_CAPACITY));
    }
}

/// [`shrink_map`] for a vector.
pub fn shrink_vec<T>(vec: &mut Vec<T>) {
    if vec.capacity() > KEEP_CAPACITY && vec.len() <= vec.capacity() / 4 {
        vec.shrink_to((vec.len() * 2).max(KEEP_CAPACITY));
    }
}

/// A locked shard. When it is released the shard gives memory back if it became
/// sparse ([`shrink_map`]), so no caller has to remember to.
pub struct Shard<'a, K: Hash + Eq, V>(MutexGuard<'a, HashMap<K, V>>);

impl<K: Hash + Eq, V> Deref for Shard<'_, K, V> {
    type Target = HashMap<K, V>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<K: Hash + Eq, V> DerefMut for Shard<'_, K, V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<K: Hash + Eq, V> Drop for Shard<'_, K, V> {
    fn drop(&mut self) {
        shrink_map(&mut self.0);
    }
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    /// `shards` is rounded up to a power of two (at least 1).
    pub fn new(shards: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        Self { hasher: RandomState::new(), shards: (0..n).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    /// Locks the shard that holds `key`. Keep the guard short-lived and never await
    /// while holding it.
    pub fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> Shard<'_, K, V> {
        let index = self.hasher.hash_one(key) as usize & (self.shards.len() - 1);
        Shard(self.shards[index].lock())
    }

    /// Visits every shard in turn (each locked only while it is visited).
    pub fn for_each_shard(&self, mut f: impl FnMut(&mut HashMap<K, V>)) {
        for shard in self.shards.iter() {
            let mut shard = Shard(shard.lock());
            f(&mut shard);
        }
    }

    /// Entries the shards have room for, together (what their tables hold on to).
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().capacity()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_gives_memory_back_once_its_keys_are_gone() {
        let map: Sharded<u32, u32> = Sharded::new(4);
        for key in 0..10_000 {
            map.shard(&key).insert(key, key);
        }
        assert!(map.capacity() >= 10_000);
        for key in 0..10_000 {
            map.shard(&key).remove(&key);
        }
        assert!(map.capacity() <= 4 * 2 * KEEP_CAPACITY, "still room for {} entries", map.capacity());
    }

    #[test]
    fn shrinking_keeps_room_for_twice_what_is_left() {
        let mut map: HashMap<u32, u32> = (0..1_000).map(|k| (k, k)).collect();
        map.retain(|k, _| *k < 100);
        shrink_map(&mut map);
        assert!(map.capacity() >= 200 && map.capacity() < 1_000, "{}", map.capacity());
        assert_eq!(map.len(), 100);
        let mut small: HashMap<u32, u32> = (0..10).map(|k| (k, k)).collect();
        let before = small.capacity();
        small.clear();
        shrink_map(&mut small);
        assert_eq!(small.capacity(), before, "small maps are left alone");
    }
}
