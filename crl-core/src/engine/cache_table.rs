//! The table of this node's cache entries (its copies of regions homed elsewhere), keyed by
//! region id.
//!
//! Homes number their regions consecutively, and programs tend to map runs of them (the
//! regions one program created, one after another), so entries live in **pages** of [`PAGE`]
//! consecutive sequence numbers of one home, found through a hash map of pages. A page keeps
//! a bit per number and exactly the entries present, in number order (a boxed slice,
//! reallocated as entries come and go: a copy of at most 64 entries on a miss, which costs a
//! network round trip anyway): a full page costs its entries and a few bytes.
//!
//! Why not one hash map of entries (as before issue 10's work): a slot carries its key, a
//! table of a million entries has just doubled to two million slots, and the table it
//! outgrew stays resident in the allocator (measured: 327 B per cached copy at a million with
//! `HashMap<RegionId, CacheEntry>`, 277 B with a key-less table). The price: a program that
//! maps isolated regions pays a page per region (its bits, its vector and the map's slot,
//! about 80 bytes beyond the entry at half load) where a flat table paid about 40.
//!
//! The page map's hasher is keyed at random per table (as `HashMap`'s is): a peer chooses
//! the ids of the regions it homes and cannot aim them at one bucket.

use std::collections::HashMap;

use super::cache::CacheEntry;
use crate::region::{NodeId, RegionId};

/// Sequence numbers per page (the bits of a `u64`).
pub(crate) const PAGE: u64 = 64;

/// A page: which of its numbers are present, and their entries in number order.
struct Page {
    present: u64,
    entries: Box<[CacheEntry]>,
}

impl Page {
    /// Where the entry of `slot` is (or would be) in `entries`.
    fn rank(&self, slot: u32) -> usize {
        (self.present & ((1u64 << slot) - 1)).count_ones() as usize
    }

    fn has(&self, slot: u32) -> bool {
        self.present & (1 << slot) != 0
    }
}

/// The cache entries of one engine, by region id.
#[derive(Default)]
pub(crate) struct CacheTable {
    pages: HashMap<(NodeId, u64), Page>,
    len: usize,
}

fn split(id: &RegionId) -> ((NodeId, u64), u32) {
    ((id.home, id.seq / PAGE), (id.seq % PAGE) as u32)
}

impl CacheTable {
    /// The entry of `id`, if cached.
    pub(crate) fn get(&self, id: &RegionId) -> Option<&CacheEntry> {
        let (key, slot) = split(id);
        let page = self.pages.get(&key)?;
        page.has(slot).then(|| &page.entries[page.rank(slot)])
    }

    /// The entry of `id`, if cached, to change.
    pub(crate) fn get_mut(&mut self, id: &RegionId) -> Option<&mut CacheEntry> {
        let (key, slot) = split(id);
        let page = self.pages.get_mut(&key)?;
        if !page.has(slot) {
            return None;
        }
        let rank = page.rank(slot);
        Some(&mut page.entries[rank])
    }

    /// Whether `id` is cached.
    pub(crate) fn contains_key(&self, id: &RegionId) -> bool {
        let (key, slot) = split(id);
        self.pages.get(&key).is_some_and(|p| p.has(slot))
    }

    /// Adds `entry` under its cell's id, returning the entry it replaces (if any).
    pub(crate) fn insert(&mut self, entry: CacheEntry) -> Option<CacheEntry> {
        let (key, slot) = split(&entry.cell.id());
        let page = self.pages.entry(key).or_insert_with(|| Page {
            present: 0,
            entries: Box::default(),
        });
        let rank = page.rank(slot);
        if page.has(slot) {
            return Some(std::mem::replace(&mut page.entries[rank], entry));
        }
        let mut entries = std::mem::take(&mut page.entries).into_vec();
        entries.reserve_exact(1);
        entries.insert(rank, entry);
        page.entries = entries.into_boxed_slice();
        page.present |= 1 << slot;
        self.len += 1;
        None
    }

    /// Removes and returns the entry of `id`.
    pub(crate) fn remove(&mut self, id: &RegionId) -> Option<CacheEntry> {
        let (key, slot) = split(id);
        let page = self.pages.get_mut(&key)?;
        if !page.has(slot) {
            return None;
        }
        let rank = page.rank(slot);
        let mut entries = std::mem::take(&mut page.entries).into_vec();
        let entry = entries.remove(rank);
        page.entries = entries.into_boxed_slice();
        page.present &= !(1 << slot);
        self.len -= 1;
        if page.present == 0 {
            self.pages.remove(&key);
        }
        Some(entry)
    }

    /// How many entries there are.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every entry, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &CacheEntry> {
        self.pages.values().flat_map(|p| p.entries.iter())
    }

    /// Every cached id, in no particular order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = RegionId> + '_ {
        self.values().map(|e| e.cell.id())
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
        t.get_mut(&id).unwrap().set_mappings(3);
        assert_eq!(t.get(&id).unwrap().mappings(), 3);
        // The same id again replaces (and hands back) the entry.
        let old = t.insert(entry(2, 77)).expect("replaced");
        assert_eq!(old.mappings(), 3);
        assert_eq!(t.get(&id).unwrap().mappings(), 0);
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
    fn an_entry_is_32_bytes_and_a_page_keeps_no_room_for_absent_ones() {
        if cfg!(target_pointer_width = "64") {
            assert_eq!(std::mem::size_of::<CacheEntry>(), 32);
            // The map's slot: the key (home, page number) and the page (bits, boxed slice).
            assert_eq!(std::mem::size_of::<((NodeId, u64), Page)>(), 40);
        }
        let mut t = CacheTable::default();
        for seq in [3u64, 70, 64, 127, 0] {
            t.insert(entry(1, seq));
        }
        let lens: Vec<_> = {
            let mut v: Vec<_> = t
                .pages
                .iter()
                .map(|(k, p)| (k.1, p.entries.len()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(lens, [(0, 2), (1, 3)]);
        for seq in 128..192 {
            t.insert(entry(2, seq));
        }
        assert_eq!(t.pages[&(NodeId(2), 2)].entries.len(), 64);
        // Removing every entry of a page drops the page.
        assert!(t.remove(&RegionId::new(NodeId(1), 3)).is_some());
        assert!(t.remove(&RegionId::new(NodeId(1), 0)).is_some());
        assert_eq!(t.pages.len(), 2);
        assert_eq!(t.len(), 67);
    }

    proptest::proptest! {
        /// Any sequence of inserts and removes leaves the table as a `BTreeMap` of the same
        /// ids, entries in their pages in order (what `rank` relies on).
        #[test]
        fn the_table_behaves_as_a_map(ops in proptest::collection::vec(
            (proptest::bool::ANY, 0u32..3, 0u64..300), 0..400,
        )) {
            let mut t = CacheTable::default();
            let mut model = std::collections::BTreeMap::new();
            for (n, (insert, home, seq)) in ops.into_iter().enumerate() {
                let id = RegionId::new(NodeId(home), seq);
                if insert {
                    let mut e = entry(home, seq);
                    e.set_mappings(n as u32 + 1);
                    let old = t.insert(e).map(|e| e.mappings());
                    proptest::prop_assert_eq!(old, model.insert(id, n as u32 + 1));
                } else {
                    let old = t.remove(&id).map(|e| e.mappings());
                    proptest::prop_assert_eq!(old, model.remove(&id));
                }
                proptest::prop_assert_eq!(t.len(), model.len());
            }
            for (id, count) in &model {
                proptest::prop_assert_eq!(t.get(id).map(|e| e.mappings()), Some(*count));
                proptest::prop_assert!(t.contains_key(id));
            }
            let mut ids: Vec<_> = t.ids().collect();
            ids.sort();
            proptest::prop_assert_eq!(ids, model.keys().copied().collect::<Vec<_>>());
            for (key, page) in &t.pages {
                proptest::prop_assert_eq!(page.entries.len(), page.present.count_ones() as usize);
                proptest::prop_assert!(page.present != 0, "an empty page is kept");
                let seqs: Vec<_> = page.entries.iter().map(|e| e.cell.id().seq).collect();
                proptest::prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]));
                proptest::prop_assert!(seqs.iter().all(|s| s / PAGE == key.1));
            }
        }
    }
}
