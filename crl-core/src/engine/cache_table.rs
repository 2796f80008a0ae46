//! The table of this node's cache entries (its copies of regions homed elsewhere), keyed by
//! region id.
//!
//! A hash table whose entries are the [`CacheEntry`]s themselves, without a separate key: an
//! entry's id is its cell's ([`ErasedCell::id`](super::access::ErasedCell::id)), so the table
//! does not store it again. That is 16 bytes less per slot, and a slot costs twice over: a
//! table of a million entries has just doubled to about two million slots (issue 10). Unlike
//! the home table ([`super::home_table`]) a cache's ids are whatever the program maps, from
//! any home and any range, so pages of consecutive numbers would waste room on sparse use.
//!
//! The hasher is keyed at random per table (as `HashMap`'s is): a peer chooses the ids of
//! the regions it homes and cannot aim them at one bucket.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use super::cache::CacheEntry;
use crate::region::RegionId;

/// The cache entries of one engine, by region id.
pub(crate) struct CacheTable {
    table: HashTable<CacheEntry>,
    hasher: RandomState,
}

impl Default for CacheTable {
    fn default() -> Self {
        CacheTable {
            table: HashTable::new(),
            hasher: RandomState::new(),
        }
    }
}

impl CacheTable {
    fn hash(&self, id: &RegionId) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The entry of `id`, if cached.
    pub(crate) fn get(&self, id: &RegionId) -> Option<&CacheEntry> {
        self.table.find(self.hash(id), |e| e.cell.id() == *id)
    }

    /// The entry of `id`, if cached, to change.
    pub(crate) fn get_mut(&mut self, id: &RegionId) -> Option<&mut CacheEntry> {
        let hash = self.hash(id);
        self.table.find_mut(hash, |e| e.cell.id() == *id)
    }

    /// Whether `id` is cached.
    pub(crate) fn contains_key(&self, id: &RegionId) -> bool {
        self.get(id).is_some()
    }

    /// Adds `entry` under its cell's id, returning the entry it replaces (if any).
    pub(crate) fn insert(&mut self, entry: CacheEntry) -> Option<CacheEntry> {
        let id = entry.cell.id();
        let hash = self.hash(&id);
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |e| e.cell.id() == id,
            |e| hasher.hash_one(e.cell.id()),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                Some(std::mem::replace(o.get_mut(), entry))
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(entry);
                None
            }
        }
    }

    /// Removes and returns the entry of `id`.
    pub(crate) fn remove(&mut self, id: &RegionId) -> Option<CacheEntry> {
        let hash = self.hash(id);
        match self.table.find_entry(hash, |e| e.cell.id() == *id) {
            Ok(o) => Some(o.remove().0),
            Err(_) => None,
        }
    }

    /// How many entries there are.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Every entry, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &CacheEntry> {
        self.table.iter()
    }

    /// Every cached id, in no particular order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = RegionId> + '_ {
        self.table.iter().map(|e| e.cell.id())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::access::{DrainList, RegionCell};
    use crate::region::{CodecError, NodeId, Region};

    struct Unit;

    impl Region for Unit {
        const TYPE_NAME: &'static str = "Unit";
        const FINGERPRINT: u64 = 1;
        fn encode_region(&self) -> Result<Vec<u8>, CodecError> {
            Ok(Vec::new())
        }
        fn decode_region(_: &[u8]) -> Result<Self, CodecError> {
            Ok(Unit)
        }
    }

    fn entry(home: u32, seq: u64) -> CacheEntry {
        let drains = Arc::new(DrainList::new(None));
        let id = RegionId::new(NodeId(home), seq);
        CacheEntry::new(Arc::new(RegionCell::new(id, Some(Unit), drains)))
    }

    #[test]
    fn entries_are_found_by_their_cells_id_and_removed_once() {
        let mut t = CacheTable::default();
        for home in 1..4u32 {
            for seq in 0..500u64 {
                assert!(t.insert(entry(home, seq)).is_none());
            }
        }
        assert_eq!(t.len(), 1500);
        let id = RegionId::new(NodeId(2), 77);
        assert_eq!(t.get(&id).map(|e| e.cell.id()), Some(id));
        t.get_mut(&id).unwrap().mappings.set_count(3);
        assert_eq!(t.get(&id).unwrap().mappings.count(), 3);
        // The same id again replaces (and hands back) the entry.
        let old = t.insert(entry(2, 77)).expect("replaced");
        assert_eq!(old.mappings.count(), 3);
        assert_eq!(t.get(&id).unwrap().mappings.count(), 0);
        assert!(!t.contains_key(&RegionId::new(NodeId(4), 0)));
        assert!(!t.contains_key(&RegionId::new(NodeId(2), 500)));
        assert_eq!(t.remove(&id).map(|e| e.cell.id()), Some(id));
        assert!(t.remove(&id).is_none());
        assert!(!t.contains_key(&id));
        assert_eq!(t.len(), 1499);
        let mut ids: Vec<_> = t.ids().collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 1499);
        assert_eq!(t.values().count(), 1499);
    }

    #[test]
    fn a_slot_is_the_entry_alone() {
        // No key beside the entry: its id is its cell's.
        assert_eq!(std::mem::size_of::<CacheEntry>(), 40);
    }
}
