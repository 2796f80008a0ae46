//! The table of the directory entries homed at this node, keyed by the regions' sequence
//! numbers.
//!
//! A node numbers the regions it creates consecutively (from a base per incarnation, see
//! [`Engine::set_next_seq`](super::Engine::set_next_seq)), so the table keeps entries in
//! **pages** of [`PAGE`] consecutive numbers, each slot an entry or empty, found through an
//! ordered map of pages. A full page costs its entries' size and nothing else: no hash, no
//! spare capacity of a table that has just doubled (a `HashMap` of a million entries sits
//! at about half load, and its entries carry their keys). The price: numbers far apart
//! (regions of many past incarnations, most of them deleted) keep a page each, up to
//! [`PAGE`] slots for one live entry.
//!
//! The table also remembers which numbers were **deleted** (a request for a deleted region is
//! refused as deleted, not as unknown), as one bit per number in its page: a page whose
//! entries are all gone keeps its bits (a few dozen bytes) and drops its slots. Creating and
//! deleting a million regions leaves about 128 KiB of tombstones, not a set of a million keys.

use std::collections::BTreeMap;
use std::ops::Index;

use super::home::HomeEntry;

/// Sequence numbers per page, a power of two.
pub(crate) const PAGE: usize = 256;
const PAGE_SHIFT: u32 = PAGE.trailing_zeros();

/// One page: `PAGE` slots (none while no entry is live), how many are taken, and the deleted
/// numbers' bits. A page is never dropped: one with no live entry is its bits alone.
struct Page {
    live: usize,
    slots: Option<Box<[Option<HomeEntry>]>>,
    deleted: [u64; PAGE / 64],
}

impl Page {
    fn new() -> Self {
        Page {
            live: 0,
            slots: None,
            deleted: [0; PAGE / 64],
        }
    }

    fn slot(&self, slot: usize) -> Option<&HomeEntry> {
        self.slots.as_ref()?[slot].as_ref()
    }

    fn is_deleted(&self, slot: usize) -> bool {
        self.deleted[slot / 64] & (1 << (slot % 64)) != 0
    }

    fn set_deleted(&mut self, slot: usize, deleted: bool) {
        if deleted {
            self.deleted[slot / 64] |= 1 << (slot % 64);
        } else {
            self.deleted[slot / 64] &= !(1 << (slot % 64));
        }
    }
}

/// Directory entries by sequence number (see the [module docs](self)).
#[derive(Default)]
pub(crate) struct HomeTable {
    pages: BTreeMap<u64, Page>,
    len: usize,
}

fn split(seq: u64) -> (u64, usize) {
    (seq >> PAGE_SHIFT, (seq & (PAGE as u64 - 1)) as usize)
}

impl HomeTable {
    /// How many entries there are.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The entry of `seq`.
    pub(crate) fn get(&self, seq: &u64) -> Option<&HomeEntry> {
        let (page, slot) = split(*seq);
        self.pages.get(&page)?.slot(slot)
    }

    /// The entry of `seq`, to change it.
    pub(crate) fn get_mut(&mut self, seq: &u64) -> Option<&mut HomeEntry> {
        let (page, slot) = split(*seq);
        self.pages.get_mut(&page)?.slots.as_mut()?[slot].as_mut()
    }

    /// Whether `seq` has an entry.
    pub(crate) fn contains_key(&self, seq: &u64) -> bool {
        self.get(seq).is_some()
    }

    /// Sets the entry of `seq` (no longer deleted, if it was); returns the one it replaces.
    pub(crate) fn insert(&mut self, seq: u64, entry: HomeEntry) -> Option<HomeEntry> {
        let (page, slot) = split(seq);
        let page = self.pages.entry(page).or_insert_with(Page::new);
        page.set_deleted(slot, false);
        let slots = page
            .slots
            .get_or_insert_with(|| (0..PAGE).map(|_| None).collect());
        let old = slots[slot].replace(entry);
        if old.is_none() {
            page.live += 1;
            self.len += 1;
        }
        old
    }

    /// Takes the entry of `seq` out, remembering the number as deleted; a page left with no
    /// live entry drops its slots.
    pub(crate) fn delete(&mut self, seq: &u64) -> Option<HomeEntry> {
        let (page, slot) = split(*seq);
        let page = self.pages.get_mut(&page)?;
        let old = page.slots.as_mut()?[slot].take()?;
        page.live -= 1;
        self.len -= 1;
        page.set_deleted(slot, true);
        if page.live == 0 {
            page.slots = None;
        }
        Some(old)
    }

    /// Whether `seq` was deleted (and not restored since).
    pub(crate) fn is_deleted(&self, seq: &u64) -> bool {
        let (page, slot) = split(*seq);
        self.pages.get(&page).is_some_and(|p| p.is_deleted(slot))
    }

    /// The sequence numbers with an entry, in increasing order.
    pub(crate) fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.pages.iter().flat_map(|(&page, p)| {
            p.slots
                .iter()
                .flat_map(|slots| slots.iter().enumerate())
                .filter(|(_, s)| s.is_some())
                .map(move |(slot, _)| (page << PAGE_SHIFT) | slot as u64)
        })
    }

    /// Every entry, in increasing order of sequence number.
    pub(crate) fn values(&self) -> impl Iterator<Item = &HomeEntry> {
        self.pages
            .values()
            .flat_map(|p| p.slots.iter().flat_map(|slots| slots.iter().flatten()))
    }
}

impl Index<&u64> for HomeTable {
    type Output = HomeEntry;

    fn index(&self, seq: &u64) -> &HomeEntry {
        self.get(seq)
            .expect("no home entry for this sequence number")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::access::{DrainList, RegionCell};
    use crate::region::{CodecError, NodeId, Region, RegionId};

    struct Seq;

    impl Region for Seq {
        const TYPE_NAME: &'static str = "Seq";
        const FINGERPRINT: u64 = 1;
        fn encode_region(&self) -> Result<Vec<u8>, CodecError> {
            Ok(Vec::new())
        }
        fn decode_region(_: &[u8]) -> Result<Self, CodecError> {
            Ok(Seq)
        }
    }

    fn entry(seq: u64) -> HomeEntry {
        let drains = Arc::new(DrainList::new(None));
        let id = RegionId::new(NodeId(0), seq);
        HomeEntry::new(Arc::new(RegionCell::new(id, Some(Seq), drains)))
    }

    #[test]
    fn an_empty_slot_costs_no_more_than_the_entry_itself() {
        assert_eq!(
            std::mem::size_of::<Option<HomeEntry>>(),
            std::mem::size_of::<HomeEntry>()
        );
    }

    #[test]
    fn entries_across_pages_are_found_and_listed_in_order() {
        let mut t = HomeTable::default();
        let seqs = [1u64, 2, 255, 256, 257, 1 << 40, (1 << 40) + 3, u64::MAX];
        for &s in seqs.iter().rev() {
            assert!(t.insert(s, entry(s)).is_none());
        }
        assert!(
            t.insert(2, entry(2)).is_some(),
            "a replaced entry is returned"
        );
        assert_eq!(t.len(), seqs.len());
        assert_eq!(t.seqs().collect::<Vec<_>>(), seqs);
        assert_eq!(t.values().count(), seqs.len());
        for &s in &seqs {
            assert!(t.contains_key(&s));
            assert!(t.get_mut(&s).is_some());
            assert_eq!(t[&s].cell.id().seq, s);
        }
        assert!(!t.contains_key(&3) && t.get(&258).is_none() && t.delete(&3).is_none());
        assert!(!t.is_deleted(&3), "never there, so never deleted");
        // Pages: 1, 2, 255 | 256, 257 | 2^40, 2^40 + 3 | u64::MAX.
        assert_eq!(t.pages.len(), 4);
        assert!(t.delete(&256).is_some() && t.delete(&256).is_none());
        assert!(t.pages[&1].slots.is_some(), "257 keeps its page's slots");
        assert!(t.delete(&257).is_some());
        assert!(
            t.pages[&1].slots.is_none(),
            "the page's last entry dropped its slots"
        );
        assert_eq!(t.len(), seqs.len() - 2);
        assert_eq!(
            t.seqs().collect::<Vec<_>>(),
            [1, 2, 255, 1 << 40, (1 << 40) + 3, u64::MAX]
        );
    }

    #[test]
    fn deleted_numbers_are_remembered_in_bits_and_forgotten_when_restored() {
        let mut t = HomeTable::default();
        for s in 0..1024 {
            t.insert(s, entry(s));
        }
        for s in 0..1024 {
            assert!(t.delete(&s).is_some());
        }
        assert!(t.delete(&5).is_none(), "deleted twice");
        assert_eq!(t.len(), 0);
        assert_eq!(t.seqs().count(), 0);
        assert!((0..1024).all(|s| t.is_deleted(&s) && !t.contains_key(&s)));
        assert!(!t.is_deleted(&1024) && !t.is_deleted(&u64::MAX));
        assert_eq!(t.pages.len(), 4, "each page keeps its bits");
        assert!(
            t.pages.values().all(|p| p.slots.is_none()),
            "and drops its slots"
        );
        // A restore (the log brings the region back) clears the bit.
        t.insert(7, entry(7));
        assert!(!t.is_deleted(&7) && t.contains_key(&7));
        assert!(t.is_deleted(&6) && t.is_deleted(&8));
    }
}
