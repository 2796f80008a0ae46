//! Hit counters that cost the hit path no shared write: every thread keeps its own counter per
//! node (written by that thread only, with a plain load and store, never a read-modify-write),
//! and [`HitCounter::total`] sums them when statistics are read.
//!
//! A process counts up to [`MAX_COUNTED_NODES`] nodes at once this way (each node takes a slot
//! at start and gives it back when it is dropped); nodes beyond that share one atomic counter
//! each. A thread that exits folds its counts into the process-wide total first, so no count is
//! lost and the registry holds only live threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// How many nodes of one process count hits per thread at once.
pub const MAX_COUNTED_NODES: usize = 64;

/// One thread's counters, a slot per node.
struct ThreadHits {
    counts: [AtomicU64; MAX_COUNTED_NODES],
}

impl ThreadHits {
    fn new() -> ThreadHits {
        ThreadHits {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Every live thread's counters, what exited threads counted, and the free slots.
struct Registry {
    threads: Vec<Arc<ThreadHits>>,
    retired: [u64; MAX_COUNTED_NODES],
    used: [bool; MAX_COUNTED_NODES],
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    threads: Vec::new(),
    retired: [0; MAX_COUNTED_NODES],
    used: [false; MAX_COUNTED_NODES],
});

/// This thread's entry in the registry; folded into `retired` when the thread exits.
struct Local(Arc<ThreadHits>);

impl Local {
    fn register() -> Local {
        let mine = Arc::new(ThreadHits::new());
        REGISTRY.lock().threads.push(mine.clone());
        Local(mine)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let mut r = REGISTRY.lock();
        for (slot, c) in self.0.counts.iter().enumerate() {
            r.retired[slot] += c.load(Ordering::Relaxed);
        }
        r.threads.retain(|t| !Arc::ptr_eq(t, &self.0));
    }
}

thread_local! {
    static LOCAL: Local = Local::register();
}

impl Registry {
    fn sum(&self, slot: usize) -> u64 {
        self.retired[slot]
            + self
                .threads
                .iter()
                .map(|t| t.counts[slot].load(Ordering::Relaxed))
                .sum::<u64>()
    }
}

/// A node's hit counter.
#[derive(Debug)]
pub(crate) struct HitCounter {
    /// The node's slot, or `None` past [`MAX_COUNTED_NODES`] nodes (then `shared` counts).
    slot: Option<usize>,
    /// What the slot had counted (for an earlier node) when this node took it.
    base: u64,
    shared: AtomicU64,
}

impl HitCounter {
    pub(crate) fn new() -> HitCounter {
        let mut r = REGISTRY.lock();
        let slot = r.used.iter().position(|u| !u);
        let base = slot.map_or(0, |s| {
            r.used[s] = true;
            r.sum(s)
        });
        HitCounter {
            slot,
            base,
            shared: AtomicU64::new(0),
        }
    }

    /// Counts one hit on the calling thread.
    #[inline]
    pub(crate) fn hit(&self) {
        match self.slot {
            Some(s) => {
                // At thread teardown the counter may be gone: that hit is not counted.
                let _ = LOCAL.try_with(|l| {
                    let c = &l.0.counts[s];
                    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                });
            }
            None => {
                self.shared.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Hits counted so far, on every thread.
    pub(crate) fn total(&self) -> u64 {
        match self.slot {
            Some(s) => REGISTRY.lock().sum(s).wrapping_sub(self.base),
            None => self.shared.load(Ordering::Relaxed),
        }
    }
}

impl Drop for HitCounter {
    fn drop(&mut self) {
        if let Some(s) = self.slot {
            REGISTRY.lock().used[s] = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_on_many_threads_are_all_counted_also_after_the_threads_exit() {
        let counter = Arc::new(HitCounter::new());
        let other = HitCounter::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let c = counter.clone();
                s.spawn(move || {
                    for _ in 0..1000 {
                        c.hit();
                    }
                });
            }
        });
        counter.hit();
        other.hit();
        assert_eq!(counter.total(), 4001);
        assert_eq!(other.total(), 1);
    }

    #[test]
    fn a_reused_slot_starts_from_zero() {
        let first = HitCounter::new();
        for _ in 0..10 {
            first.hit();
        }
        drop(first);
        let second = HitCounter::new();
        second.hit();
        assert_eq!(second.total(), 1);
    }
}
