//! The lock table for wound-wait: which local transactions hold or wait for each region, and
//! whom to wound. Pure bookkeeping: no I/O, no clock, no waking (the driver wounds what it is
//! told to, and wakes the wounded).
//!
//! A transaction's locks *are* its coherence accesses (a held read or write defers every
//! recall, DESIGN.md §5), so this table grants nothing: it records who holds what, so that an
//! older transaction (lower priority number) that has to wait can **wound** the younger
//! transactions in its way. Each call returns the transactions to wound; a transaction that
//! has started to commit refuses a wound (the driver's [`Transaction::wound`] says so) and
//! finishes instead.
//!
//! The oldest transaction in the system is never wounded and every wait it has is on a
//! younger transaction (wounded, so it releases), a committing one (which finishes) or a plain
//! access (which ends), so it commits: no deadlock hangs and no transaction starves, since a
//! retried transaction keeps its first priority.

use std::collections::HashMap;
use std::sync::Arc;

use crate::region::{NodeId, RegionId};

/// A transaction as the table knows it (the table keeps `Arc`s of it; the same transaction
/// is the same allocation).
pub trait Transaction {
    /// Its age: lower is older and wins. Unique in the cluster.
    fn priority(&self) -> u64;
    /// Asks it to abort; false if it refuses (it has started to commit). Idempotent.
    fn wound(&self) -> bool;
    /// Whether it was wounded already.
    fn is_wounded(&self) -> bool;
}

struct RegionLocks<T> {
    holders: Vec<Arc<T>>,
    waiters: Vec<Arc<T>>,
}

impl<T> Default for RegionLocks<T> {
    fn default() -> Self {
        RegionLocks {
            holders: Vec::new(),
            waiters: Vec::new(),
        }
    }
}

/// Who holds and who waits for each region, among one node's transactions. Entries of a
/// region are removed once nobody holds or waits for it.
pub struct WoundWaitTable<T> {
    regions: HashMap<RegionId, RegionLocks<T>>,
    wounds: u64,
}

impl<T> Default for WoundWaitTable<T> {
    fn default() -> Self {
        WoundWaitTable {
            regions: HashMap::new(),
            wounds: 0,
        }
    }
}

impl<T: Transaction> WoundWaitTable<T> {
    /// Records that `tx` holds `region`. If an older transaction waits for it, `tx` is wounded
    /// at once (it will release the region at its next blocking point).
    pub fn hold(&mut self, region: RegionId, tx: &Arc<T>) {
        let locks = self.regions.entry(region).or_default();
        if !locks.holders.iter().any(|h| Arc::ptr_eq(h, tx)) {
            locks.holders.push(tx.clone());
        }
        if locks.waiters.iter().any(|w| w.priority() < tx.priority()) && tx.wound() {
            self.wounds += 1;
        }
    }

    /// Records that `tx` no longer holds `region`.
    pub fn release(&mut self, region: RegionId, tx: &Arc<T>) {
        if let Some(locks) = self.regions.get_mut(&region) {
            locks.holders.retain(|h| !Arc::ptr_eq(h, tx));
            if locks.holders.is_empty() && locks.waiters.is_empty() {
                self.regions.remove(&region);
            }
        }
    }

    /// Records that `tx` waits for `region` and wounds the younger holders; returns how many.
    pub fn wait(&mut self, region: RegionId, tx: &Arc<T>) -> usize {
        self.regions
            .entry(region)
            .or_default()
            .waiters
            .push(tx.clone());
        self.wound_younger(region, tx.priority())
    }

    /// Records that `tx` stopped waiting for `region` (once for each [`wait`](Self::wait)).
    pub fn stop_waiting(&mut self, region: RegionId, tx: &Arc<T>) {
        if let Some(locks) = self.regions.get_mut(&region) {
            if let Some(i) = locks.waiters.iter().position(|w| Arc::ptr_eq(w, tx)) {
                locks.waiters.swap_remove(i);
            }
            if locks.holders.is_empty() && locks.waiters.is_empty() {
                self.regions.remove(&region);
            }
        }
    }

    /// Wounds the holders of `region` younger than `priority` (a local waiter, or a request
    /// of another node the engine reported); returns how many.
    pub fn wound_younger(&mut self, region: RegionId, priority: u64) -> usize {
        let Some(locks) = self.regions.get(&region) else {
            return 0;
        };
        let mut n = 0;
        for h in &locks.holders {
            if h.priority() > priority && !h.is_wounded() && h.wound() {
                n += 1;
            }
        }
        self.wounds += n as u64;
        n
    }

    /// Every holder of a region homed at `home` (whose session ended: their locks went with
    /// it), each once.
    pub fn holders_of(&self, home: NodeId) -> Vec<Arc<T>> {
        let mut out: Vec<Arc<T>> = Vec::new();
        for (region, locks) in &self.regions {
            if region.home != home {
                continue;
            }
            for h in &locks.holders {
                if !out.iter().any(|o| Arc::ptr_eq(o, h)) {
                    out.push(h.clone());
                }
            }
        }
        out
    }

    /// How many wounds this table has dealt.
    pub fn wounds(&self) -> u64 {
        self.wounds
    }

    /// Regions with a holder or a waiter.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether nobody holds or waits for anything.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug)]
    struct Tx {
        priority: u64,
        wounded: AtomicBool,
        committing: AtomicBool,
    }

    impl Transaction for Tx {
        fn priority(&self) -> u64 {
            self.priority
        }
        fn wound(&self) -> bool {
            if self.committing.load(Relaxed) {
                return false;
            }
            self.wounded.store(true, Relaxed);
            true
        }
        fn is_wounded(&self) -> bool {
            self.wounded.load(Relaxed)
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Hold(usize, u64),
        Release(usize, u64),
        Wait(usize, u64),
        StopWaiting(usize, u64),
        Commit(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let tx = 0..6usize;
        let region = 0..3u64;
        prop_oneof![
            (tx.clone(), region.clone()).prop_map(|(t, r)| Op::Hold(t, r)),
            (tx.clone(), region.clone()).prop_map(|(t, r)| Op::Release(t, r)),
            (tx.clone(), region.clone()).prop_map(|(t, r)| Op::Wait(t, r)),
            (tx.clone(), region).prop_map(|(t, r)| Op::StopWaiting(t, r)),
            tx.prop_map(Op::Commit),
        ]
    }

    proptest! {
        /// After any sequence of holds, waits and releases: the oldest transaction is never
        /// wounded; whenever a transaction waits, every younger holder of that region that
        /// is not committing is wounded; the table forgets a region nobody holds or waits for.
        #[test]
        fn wound_wait_wounds_exactly_the_younger_holders(ops in proptest::collection::vec(op(), 0..80)) {
            let txs: Vec<Arc<Tx>> = (0..6)
                .map(|p| Arc::new(Tx {
                    priority: p as u64,
                    wounded: AtomicBool::new(false),
                    committing: AtomicBool::new(false),
                }))
                .collect();
            let mut table = WoundWaitTable::default();
            let mut held: Vec<(usize, u64)> = Vec::new();
            let mut waiting: Vec<(usize, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Hold(t, r) => {
                        table.hold(RegionId::new(NodeId(0), r), &txs[t]);
                        if !held.contains(&(t, r)) {
                            held.push((t, r));
                        }
                        // Held while an older one waits: wounded at once (unless committing).
                        if waiting.iter().any(|&(w, wr)| wr == r && w < t) && !txs[t].committing.load(Relaxed) {
                            prop_assert!(txs[t].is_wounded());
                        }
                    }
                    Op::Release(t, r) => {
                        table.release(RegionId::new(NodeId(0), r), &txs[t]);
                        held.retain(|&h| h != (t, r));
                    }
                    Op::Wait(t, r) => {
                        table.wait(RegionId::new(NodeId(0), r), &txs[t]);
                        waiting.push((t, r));
                        for &(h, hr) in &held {
                            if hr == r && h > t && !txs[h].committing.load(Relaxed) {
                                prop_assert!(txs[h].is_wounded(), "tx {} holds r{} younger than waiting tx {}", h, r, t);
                            }
                        }
                    }
                    Op::StopWaiting(t, r) => {
                        if let Some(i) = waiting.iter().position(|&w| w == (t, r)) {
                            waiting.swap_remove(i);
                            table.stop_waiting(RegionId::new(NodeId(0), r), &txs[t]);
                        }
                    }
                    Op::Commit(t) => txs[t].committing.store(true, Relaxed),
                }
                prop_assert!(!txs[0].is_wounded(), "the oldest transaction was wounded");
                let live: std::collections::BTreeSet<u64> =
                    held.iter().chain(&waiting).map(|&(_, r)| r).collect();
                prop_assert_eq!(table.len(), live.len());
            }
            let wounded = txs.iter().filter(|t| t.is_wounded()).count() as u64;
            prop_assert!(table.wounds() >= wounded);
        }
    }

    #[test]
    fn holders_of_a_home_are_listed_once() {
        let t = Arc::new(Tx {
            priority: 3,
            wounded: AtomicBool::new(false),
            committing: AtomicBool::new(false),
        });
        let mut table = WoundWaitTable::default();
        table.hold(RegionId::new(NodeId(1), 2), &t);
        table.hold(RegionId::new(NodeId(1), 3), &t);
        table.hold(RegionId::new(NodeId(2), 3), &t);
        assert_eq!(table.holders_of(NodeId(1)).len(), 1);
        assert_eq!(table.holders_of(NodeId(3)).len(), 0);
    }
}
