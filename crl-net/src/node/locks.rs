//! The node's lock table for wound-wait (crl-core's [`WoundWaitTable`], whose docs explain
//! the scheme) and the part of a transaction the table and the driver see ([`TxShared`]:
//! wounds wake it). Waits come from three places, and each ends in a wound of the younger
//! holders:
//! - a local transaction waiting for a region held by local transactions (checked when it
//!   starts to wait, again while it waits, and when a younger one starts to hold the region);
//! - a remote request waiting for this node's copy (the engine reports it as
//!   `Event::Wanted { region, priority }`);
//! - an older request queued behind a younger one at the home (the engine forwards the older
//!   priority with `Contend`, which ends up as `Event::Wanted` at the holder).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crl_core::wound_wait::{Transaction, WoundWaitTable};
use crl_core::{NodeId, RegionId};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// A transaction's age: lower is older and wins. Unique in the cluster: wall-clock
/// microseconds in the high bits (kept strictly increasing per node), the node id in the low
/// 16 bits.
pub(crate) fn next_priority(last: &AtomicU64, node: NodeId) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut prev = last.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match last.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return (next << 16) | u64::from(node.0 & 0xffff),
            Err(p) => prev = p,
        }
    }
}

/// The part of a transaction that other tasks (the lock table, the driver) can see.
#[derive(Debug)]
pub(crate) struct TxShared {
    /// Its age (lower is older).
    pub(crate) priority: u64,
    wounded: AtomicBool,
    committing: AtomicBool,
    /// A home of a region it holds restarted or was fenced: its lock on that region is gone.
    lost_a_lock: AtomicBool,
    wake: Notify,
}

impl TxShared {
    pub(crate) fn new(priority: u64) -> Self {
        TxShared {
            priority,
            wounded: AtomicBool::new(false),
            committing: AtomicBool::new(false),
            lost_a_lock: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Asks the transaction to abort; false if it has started to commit (it will finish).
    pub(crate) fn wound(&self) -> bool {
        if self.committing.load(Ordering::Acquire) {
            return false;
        }
        if !self.wounded.swap(true, Ordering::AcqRel) {
            self.wake.notify_waiters();
        }
        true
    }

    /// Whether a home of a region it holds restarted or was fenced since it took the lock.
    pub(crate) fn lost_a_lock(&self) -> bool {
        self.lost_a_lock.load(Ordering::Acquire)
    }

    /// Whether the transaction was wounded.
    pub(crate) fn is_wounded(&self) -> bool {
        self.wounded.load(Ordering::Acquire)
    }

    /// Marks the start of the commit: from now on the transaction is not wounded. A wound
    /// that came earlier does not stop it: it holds every lock it needs and will release them
    /// as soon as the commit is done, which is all a wound asks for.
    pub(crate) fn begin_commit(&self) {
        self.committing.store(true, Ordering::Release);
    }

    /// Resolves when the transaction is wounded.
    pub(crate) async fn wounded(&self) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_wounded() {
                return;
            }
            notified.await;
        }
    }
}

impl Transaction for TxShared {
    fn priority(&self) -> u64 {
        self.priority
    }
    fn wound(&self) -> bool {
        TxShared::wound(self)
    }
    fn is_wounded(&self) -> bool {
        TxShared::is_wounded(self)
    }
}

/// Who holds and who waits for each region, among this node's transactions: crl-core's
/// [`WoundWaitTable`] behind a lock.
#[derive(Default)]
pub(crate) struct LockTable {
    table: Mutex<WoundWaitTable<TxShared>>,
}

impl LockTable {
    /// The session with `home` ended (it restarted, or a fence): every local transaction that
    /// holds one of its regions lost that lock with the old session. Each is marked (its commit
    /// refuses) and wounded (it aborts at its next blocking point); returns how many.
    pub(crate) fn home_reset(&self, home: NodeId) -> usize {
        let holders = self.table.lock().holders_of(home);
        let mut n = 0;
        for h in holders {
            if !h.lost_a_lock.swap(true, Ordering::AcqRel) {
                n += 1;
            }
            h.wound();
        }
        n
    }

    /// Wounds the holders of `region` younger than `priority`; returns how many.
    pub(crate) fn wound_younger(&self, region: RegionId, priority: u64) -> usize {
        self.table.lock().wound_younger(region, priority)
    }

    /// Records that `tx` holds `region`. If an older local transaction waits for it, `tx` is
    /// wounded at once (it will release the region at its next blocking point).
    pub(crate) fn hold(&self, region: RegionId, tx: &Arc<TxShared>) {
        self.table.lock().hold(region, tx);
    }

    /// Records that `tx` no longer holds `region`.
    pub(crate) fn release(&self, region: RegionId, tx: &Arc<TxShared>) {
        self.table.lock().release(region, tx);
    }

    /// Records that `tx` waits for `region` and wounds the younger holders.
    pub(crate) fn wait(&self, region: RegionId, tx: &Arc<TxShared>) {
        self.table.lock().wait(region, tx);
    }

    /// Records that `tx` stopped waiting for `region`.
    pub(crate) fn stop_waiting(&self, region: RegionId, tx: &Arc<TxShared>) {
        self.table.lock().stop_waiting(region, tx);
    }

    /// How many wounds this table has dealt.
    pub(crate) fn wounds(&self) -> u64 {
        self.table.lock().wounds()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_wounds_younger_holder_not_older() {
        let table = LockTable::default();
        let r = RegionId::new(NodeId(0), 5);
        let old = Arc::new(TxShared::new(10));
        let young = Arc::new(TxShared::new(20));
        table.hold(r, &young);
        table.hold(r, &old);
        table.wait(r, &Arc::new(TxShared::new(15)));
        assert!(young.is_wounded());
        assert!(!old.is_wounded());
    }

    #[test]
    fn a_committing_transaction_is_not_wounded() {
        let tx = TxShared::new(20);
        tx.begin_commit();
        assert!(!tx.wound());
        assert!(!tx.is_wounded());
    }

    #[test]
    fn a_young_holder_is_wounded_when_an_older_one_already_waits() {
        let table = LockTable::default();
        let r = RegionId::new(NodeId(0), 5);
        let old = Arc::new(TxShared::new(10));
        table.wait(r, &old);
        let young = Arc::new(TxShared::new(20));
        table.hold(r, &young);
        assert!(young.is_wounded());
        table.stop_waiting(r, &old);
        table.release(r, &young);
        assert!(table.table.lock().is_empty());
    }

    #[test]
    fn priorities_are_unique_and_increasing() {
        let last = AtomicU64::new(0);
        let a = next_priority(&last, NodeId(3));
        let b = next_priority(&last, NodeId(3));
        assert!(b > a);
        assert_eq!(a & 0xffff, 3);
    }
}
