//! Cache entries: this node's copies of regions homed elsewhere.
//!
//! A cache entry is `Invalid`, `Shared` or `Modified`, with at most one request to the home in
//! flight (`pending`: the transient WaitShared / WaitExclusive states), a deferred recall, and
//! a FIFO queue of local operations the hit path could not take. [`Engine::cache_advance`]
//! moves an entry forward as far as the protocol allows: first a pending recall (once the
//! accesses in progress have ended), then the queued operations in order, asking the home for a
//! copy when the head of the queue needs one.
//!
//! Priorities (wound-wait support, see the [engine docs](super)): a request to the home carries
//! the oldest priority of the local accesses queued here; a later, older access sends a
//! `Contend`. A recall remembers the priority it was sent with (lowered by `Contend`), and
//! whenever the entry waits for local accesses in progress (a deferred recall, a queued access
//! or flush, a stale copy) the oldest waiting priority is reported once as [`Event::Wanted`].

use std::collections::VecDeque;
use std::sync::Arc;

use tracing::{debug, error, trace};

use super::access::{AccessMode, ErasedCell};
use super::home::encode_image;
use super::{
    Engine, Event, OpError, OpId, PRIORITY_NONE, PeerReset, ProtocolViolation, install_image,
    planted,
};
use crate::region::{NodeId, RegionId};
use crate::wire::{Grant, Message, Recall, Refusal, RegionImage};

/// The state of a cached copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheState {
    /// No valid copy.
    Invalid,
    /// A read-only copy.
    Shared,
    /// The only valid copy, possibly modified.
    Modified,
}

/// A local operation waiting at a cache entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LocalOp {
    /// A read, with its priority.
    Read(OpId, u64),
    /// A write, with its priority.
    Write(OpId, u64),
    Flush(OpId),
}

impl LocalOp {
    pub(crate) fn op(self) -> OpId {
        match self {
            LocalOp::Read(op, _) | LocalOp::Write(op, _) | LocalOp::Flush(op) => op,
        }
    }

    fn priority(self) -> u64 {
        match self {
            LocalOp::Read(_, p) | LocalOp::Write(_, p) => p,
            LocalOp::Flush(_) => PRIORITY_NONE,
        }
    }
}

pub(crate) struct CacheEntry {
    pub(crate) cell: Arc<dyn ErasedCell>,
    /// The entry's state, its request in flight, its flags and its mappings, in one word
    /// (issue 10: the entry is 32 bytes, two to a 64-byte cache line).
    pub(crate) meta: EntryMeta,
    /// What waits on the entry; `None` while nothing does (most entries, most of the time:
    /// an idle copy costs no queue).
    waits: Option<Box<Waits>>,
}

/// A cache entry's small fields packed in one word:
///
/// | bits | field |
/// |---|---|
/// | 0–54 | the number of local mappings (handles) of the copy, or, while it has none, its position in the engine's unmapped LRU (a clock value, never 0; 0: not in the LRU) |
/// | 55 | set while bits 0–54 hold an LRU position |
/// | 56–57 | the [`CacheState`] |
/// | 58–59 | the grant asked of the home, if a request is in flight (`None`, `Shared`, `Exclusive`) |
/// | 60 | deleted |
/// | 61 | a `Map` is in flight (its answer is awaited) |
/// | 62 | stale: the home restarted while accesses were in progress on the copy; it is dropped (and no request sent) once they end |
///
/// One word for the count and the position, since the position only means something while
/// nothing maps the copy.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EntryMeta(u64);

/// The largest position in the unmapped LRU an entry can hold (55 bits: over a century of
/// unmaps at ten million a second); the engine renumbers its LRU before its clock passes it.
pub(crate) const MAX_UNMAPPED_AT: u64 = (1 << 55) - 1;
const UNMAPPED_AT: u64 = 1 << 55;
const STATE_SHIFT: u32 = 56;
const PENDING_SHIFT: u32 = 58;
const DELETED: u64 = 1 << 60;
const MAP_PENDING: u64 = 1 << 61;
const STALE: u64 = 1 << 62;

impl EntryMeta {
    fn field(self, shift: u32) -> u64 {
        (self.0 >> shift) & 0b11
    }

    fn set_field(&mut self, shift: u32, v: u64) {
        self.0 = (self.0 & !(0b11 << shift)) | (v << shift);
    }

    fn flag(self, bit: u64) -> bool {
        self.0 & bit != 0
    }

    fn set_flag(&mut self, bit: u64, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }

    /// The mapping count or LRU position (bits 0–55), the rest kept.
    fn set_low(&mut self, low: u64) {
        self.0 = (self.0 & !(UNMAPPED_AT | MAX_UNMAPPED_AT)) | low;
    }
}

impl std::fmt::Debug for EntryMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryMeta")
            .field("state", &self.state())
            .field("pending", &self.pending())
            .field("deleted", &self.deleted())
            .field("map_pending", &self.map_pending())
            .field("stale", &self.stale())
            .field("mappings", &self.mappings())
            .field("unmapped_at", &self.unmapped_at())
            .finish()
    }
}

impl EntryMeta {
    /// The state of the copy.
    pub(crate) fn state(self) -> CacheState {
        match self.field(STATE_SHIFT) {
            0 => CacheState::Invalid,
            1 => CacheState::Shared,
            _ => CacheState::Modified,
        }
    }

    fn set_state(&mut self, state: CacheState) {
        let v = match state {
            CacheState::Invalid => 0,
            CacheState::Shared => 1,
            CacheState::Modified => 2,
        };
        self.set_field(STATE_SHIFT, v);
    }

    /// The grant asked of the home, if a request is in flight.
    pub(crate) fn pending(self) -> Option<Grant> {
        match self.field(PENDING_SHIFT) {
            0 => None,
            1 => Some(Grant::Shared),
            _ => Some(Grant::Exclusive),
        }
    }

    fn set_pending(&mut self, pending: Option<Grant>) {
        let v = match pending {
            None => 0,
            Some(Grant::Shared) => 1,
            Some(Grant::Exclusive) => 2,
        };
        self.set_field(PENDING_SHIFT, v);
    }

    pub(crate) fn deleted(self) -> bool {
        self.flag(DELETED)
    }

    pub(crate) fn map_pending(self) -> bool {
        self.flag(MAP_PENDING)
    }

    pub(crate) fn stale(self) -> bool {
        self.flag(STALE)
    }

    /// The number of local mappings.
    pub(crate) fn mappings(self) -> u32 {
        if self.0 & UNMAPPED_AT != 0 {
            0
        } else {
            self.0 as u32
        }
    }

    /// The position in the unmapped LRU (0: none).
    pub(crate) fn unmapped_at(self) -> u64 {
        if self.0 & UNMAPPED_AT != 0 {
            self.0 & MAX_UNMAPPED_AT
        } else {
            0
        }
    }
}

impl CacheEntry {
    /// The state of the copy.
    pub(crate) fn state(&self) -> CacheState {
        self.meta.state()
    }

    pub(crate) fn set_state(&mut self, state: CacheState) {
        self.meta.set_state(state);
    }

    /// The grant asked of the home, if a request is in flight.
    pub(crate) fn pending(&self) -> Option<Grant> {
        self.meta.pending()
    }

    pub(crate) fn set_pending(&mut self, pending: Option<Grant>) {
        self.meta.set_pending(pending);
    }

    /// The grant asked of the home, if any, which is no longer in flight.
    pub(crate) fn take_pending(&mut self) -> Option<Grant> {
        let p = self.meta.pending();
        self.meta.set_pending(None);
        p
    }

    pub(crate) fn deleted(&self) -> bool {
        self.meta.deleted()
    }

    pub(crate) fn set_deleted(&mut self, on: bool) {
        self.meta.set_flag(DELETED, on);
    }

    /// Whether a `Map` is in flight (its answer is awaited).
    pub(crate) fn map_pending(&self) -> bool {
        self.meta.map_pending()
    }

    pub(crate) fn set_map_pending(&mut self, on: bool) {
        self.meta.set_flag(MAP_PENDING, on);
    }

    /// The home restarted while accesses were in progress on the copy: it is dropped (and no
    /// request sent) once they end.
    pub(crate) fn stale(&self) -> bool {
        self.meta.stale()
    }

    pub(crate) fn set_stale(&mut self, on: bool) {
        self.meta.set_flag(STALE, on);
    }

    /// The number of local mappings (handles) of the copy.
    pub(crate) fn mappings(&self) -> u32 {
        self.meta.mappings()
    }

    /// Sets the number of mappings (which forgets any LRU position).
    pub(crate) fn set_mappings(&mut self, count: u32) {
        self.meta.set_low(u64::from(count));
    }

    /// One more mapping (the LRU position, if any, is forgotten: take it out of the LRU
    /// first).
    pub(crate) fn add_mapping(&mut self) {
        self.set_mappings(self.mappings() + 1);
    }

    /// The position in the unmapped LRU (0: none).
    pub(crate) fn unmapped_at(&self) -> u64 {
        self.meta.unmapped_at()
    }

    /// Records the position in the unmapped LRU of a copy nothing maps.
    pub(crate) fn set_unmapped_at(&mut self, at: u64) {
        debug_assert_eq!(self.mappings(), 0, "an LRU position for a mapped copy");
        assert!(
            (1..=MAX_UNMAPPED_AT).contains(&at),
            "LRU position {at} out of range"
        );
        self.meta.set_low(UNMAPPED_AT | at);
    }
}

/// The parts of a cache entry that only matter while something waits on it.
pub(crate) struct Waits {
    /// The priority the home knows the pending request under.
    pub(crate) req_priority: u64,
    pub(crate) queue: VecDeque<LocalOp>,
    /// A recall waiting for the accesses in progress to end, and the priority waiting on it.
    pub(crate) recall: Option<(Recall, u64)>,
    /// Map operations waiting for the home's answer.
    pub(crate) mapping: Vec<OpId>,
    /// Flush operations waiting for `FlushAck` (`None`: cancelled, the ack is still due).
    pub(crate) flushes: VecDeque<Option<OpId>>,
    /// Delete operations waiting for `DeleteAck` (`None`: cancelled, the answer is still due).
    pub(crate) deletes: VecDeque<Option<OpId>>,
    /// The oldest priority reported by [`Event::Wanted`] during the current wait on local
    /// accesses ([`PRIORITY_NONE`] when none was).
    pub(crate) wanted: u64,
}

impl Waits {
    const NONE: Waits = Waits {
        req_priority: PRIORITY_NONE,
        queue: VecDeque::new(),
        recall: None,
        mapping: Vec::new(),
        flushes: VecDeque::new(),
        deletes: VecDeque::new(),
        wanted: PRIORITY_NONE,
    };

    fn is_empty(&self) -> bool {
        self.req_priority == PRIORITY_NONE
            && self.queue.is_empty()
            && self.recall.is_none()
            && self.mapping.is_empty()
            && self.flushes.is_empty()
            && self.deletes.is_empty()
            && self.wanted == PRIORITY_NONE
    }
}

static NO_WAITS: Waits = Waits::NONE;

impl CacheEntry {
    pub(crate) fn new(cell: Arc<dyn ErasedCell>) -> Self {
        CacheEntry {
            cell,
            meta: EntryMeta::default(),
            waits: None,
        }
    }

    /// What waits on the entry (nothing, if nothing does).
    pub(crate) fn w(&self) -> &Waits {
        self.waits.as_deref().unwrap_or(&NO_WAITS)
    }

    fn no_longer_wanted(&mut self) {
        if let Some(w) = self.waits.as_deref_mut() {
            w.wanted = PRIORITY_NONE;
        }
    }

    fn no_request_priority(&mut self) {
        if let Some(w) = self.waits.as_deref_mut() {
            w.req_priority = PRIORITY_NONE;
        }
    }

    fn no_recall(&mut self) {
        if let Some(w) = self.waits.as_deref_mut() {
            w.recall = None;
        }
    }

    /// What waits on the entry, to change it.
    pub(crate) fn w_mut(&mut self) -> &mut Waits {
        self.waits.get_or_insert_with(|| Box::new(Waits::NONE))
    }

    /// The oldest priority of the queued accesses.
    pub(crate) fn queued_priority(&self) -> u64 {
        self.w()
            .queue
            .iter()
            .map(|o| o.priority())
            .min()
            .unwrap_or(PRIORITY_NONE)
    }

    /// The oldest priority waiting for the local accesses in progress, if it is older than
    /// any reported so far in this wait: the caller emits [`Event::Wanted`] for it.
    fn newly_wanted(&mut self) -> Option<u64> {
        let recall = self.w().recall.map_or(PRIORITY_NONE, |(_, p)| p);
        let p = recall.min(self.queued_priority());
        if p < self.w().wanted {
            self.w_mut().wanted = p;
            Some(p)
        } else {
            None
        }
    }

    /// Idle: nothing queued, in flight or in progress; safe to evict.
    fn is_idle(&self) -> bool {
        self.pending().is_none()
            && self.w().queue.is_empty()
            && self.w().recall.is_none()
            && !self.map_pending()
            && !self.stale()
            && self.w().mapping.is_empty()
            && self.w().flushes.is_empty()
            && self.w().deletes.is_empty()
            && self.cell.word().in_progress().is_idle()
    }

    /// The copy's image, if modified (to return to the home), and whether a modified image
    /// had to be dropped: one that cannot be encoded, or one over `max` bytes, which no
    /// message could carry (the home then keeps its last image, as after a lost copy; the
    /// write is logged here).
    fn modified_image(&self, node: NodeId, max: usize) -> (Option<RegionImage>, bool) {
        if self.state() != CacheState::Modified {
            return (None, false);
        }
        match encode_image(&*self.cell) {
            Ok(image) if image.bytes.len() > max => {
                error!(
                    %node,
                    region = %self.cell.id(),
                    len = image.bytes.len(),
                    max,
                    "a modified copy grew over the region size limit and cannot be returned to its home: its writes are lost"
                );
                (None, true)
            }
            Ok(image) => (Some(image), false),
            Err(e) => {
                error!(%node, region = %self.cell.id(), "cannot encode a modified copy: {e}");
                (None, true)
            }
        }
    }

    fn invalidate(&mut self) {
        self.set_state(CacheState::Invalid);
        self.cell.clear();
    }

    /// Drops what waited once nothing does: a million idle copies must not each keep the
    /// queues their last miss needed.
    fn release_buffers(&mut self) {
        if self.waits.as_deref().is_some_and(Waits::is_empty) {
            self.waits = None;
        }
    }

    fn permit(&self) {
        let (read, write) = match self.state() {
            CacheState::Invalid => (false, false),
            CacheState::Shared => (true, false),
            CacheState::Modified => (true, true),
        };
        self.cell.word().permit(read, write);
    }
}

impl Engine {
    /// Reports the oldest priority waiting on local accesses at the cache entry of `id`.
    fn cache_wait_local(&mut self, id: RegionId) {
        if let Some(entry) = self.cache.get_mut(&id)
            && let Some(priority) = entry.newly_wanted()
        {
            trace!(node = %self.node, region = %id, priority, "wanted");
            self.events.push_back(Event::Wanted {
                region: id,
                priority,
            });
        }
    }

    /// Moves the cache entry of `id` forward as far as the protocol allows now.
    pub(crate) fn cache_advance(&mut self, id: RegionId) {
        loop {
            let node = self.node;
            let no_defer = planted!(self, RecallNotDeferred);
            let Some(entry) = self.cache.get_mut(&id) else {
                return;
            };
            if entry.stale() {
                if !entry.cell.word().revoke().is_idle() {
                    return self.cache_wait_local(id);
                }
                entry.set_stale(false);
                entry.no_longer_wanted();
                entry.invalidate();
                continue;
            }
            if let Some((kind, _)) = entry.w().recall {
                let busy = entry.cell.word().revoke();
                let ready = no_defer
                    || match kind {
                        Recall::Downgrade => !busy.writer,
                        Recall::Invalidate | Recall::Delete => busy.is_idle(),
                    };
                if !ready {
                    return self.cache_wait_local(id);
                }
                let (image, dropped) = entry.modified_image(node, self.config.max_image_len);
                self.stats.oversized_writes_dropped += u64::from(dropped);
                // A dropped image leaves no copy: the home keeps different contents.
                if kind == Recall::Downgrade && entry.state() == CacheState::Modified && !dropped {
                    entry.set_state(CacheState::Shared);
                } else {
                    entry.invalidate();
                }
                if kind == Recall::Delete {
                    entry.set_deleted(true);
                }
                entry.no_recall();
                entry.no_longer_wanted();
                trace!(%node, region = %id, ?kind, "recall done");
                self.send(id.home, Message::RecallAck { region: id, image });
                continue;
            }
            if entry.deleted() {
                let busy = entry.cell.word().revoke();
                if busy.is_idle()
                    && entry.w().deletes.is_empty()
                    && entry.state() != CacheState::Invalid
                {
                    // A committed delete's sender was never recalled: its copy goes now that
                    // the home has deleted (no recall can come any more) and no access is left.
                    entry.invalidate();
                }
                let failed: Vec<_> = entry.w_mut().queue.drain(..).map(LocalOp::op).collect();
                entry.release_buffers();
                for op in failed {
                    self.complete(op, Err(OpError::Deleted(id)));
                }
                return;
            }
            if entry.pending().is_some() {
                entry.cell.word().revoke();
                return;
            }
            let Some(&head) = entry.w().queue.front() else {
                // Nothing waits any more (what did may have been cancelled): the next wait,
                // behind accesses that hit from now on, is a new one and must be reported.
                if !planted!(self, WantedNotForgotten) {
                    entry.no_longer_wanted();
                }
                entry.release_buffers();
                entry.permit();
                return;
            };
            let busy = entry.cell.word().revoke();
            let fingerprint = entry.cell.fingerprint();
            match (head, entry.state()) {
                (LocalOp::Read(op, _), CacheState::Shared | CacheState::Modified) => {
                    if busy.writer {
                        return self.cache_wait_local(id);
                    }
                    entry.w_mut().queue.pop_front();
                    entry.no_longer_wanted();
                    let cell = entry.cell.clone();
                    self.grant(op, &cell, AccessMode::Read);
                }
                (LocalOp::Write(op, _), CacheState::Modified) => {
                    if !busy.is_idle() {
                        return self.cache_wait_local(id);
                    }
                    entry.w_mut().queue.pop_front();
                    entry.no_longer_wanted();
                    let cell = entry.cell.clone();
                    self.grant(op, &cell, AccessMode::Write);
                }
                (LocalOp::Read(..), CacheState::Invalid) => {
                    let priority = entry.queued_priority();
                    entry.set_pending(Some(Grant::Shared));
                    entry.w_mut().req_priority = priority;
                    self.send(
                        id.home,
                        Message::GetShared {
                            region: id,
                            fingerprint,
                            priority,
                        },
                    );
                    return;
                }
                (LocalOp::Write(..), CacheState::Invalid | CacheState::Shared) => {
                    let priority = entry.queued_priority();
                    entry.set_pending(Some(Grant::Exclusive));
                    entry.w_mut().req_priority = priority;
                    self.send(
                        id.home,
                        Message::GetExclusive {
                            region: id,
                            fingerprint,
                            priority,
                        },
                    );
                    return;
                }
                (LocalOp::Flush(op), CacheState::Invalid) => {
                    entry.w_mut().queue.pop_front();
                    self.complete(op, Ok(()));
                }
                (LocalOp::Flush(op), CacheState::Shared | CacheState::Modified) => {
                    if !busy.is_idle() {
                        return self.cache_wait_local(id);
                    }
                    entry.w_mut().queue.pop_front();
                    entry.no_longer_wanted();
                    let (image, dropped) = entry.modified_image(node, self.config.max_image_len);
                    self.stats.oversized_writes_dropped += u64::from(dropped);
                    entry.invalidate();
                    entry.w_mut().flushes.push_back(Some(op));
                    self.send(id.home, Message::Flush { region: id, image });
                }
            }
        }
    }

    /// Queues a local access at the cache entry of `id` and moves the entry forward; sends a
    /// `Contend` if the access is older than the request already in flight.
    pub(crate) fn cache_queue_access(
        &mut self,
        id: RegionId,
        op: OpId,
        mode: AccessMode,
        priority: u64,
    ) -> Result<(), OpError> {
        let entry = self.cache.get_mut(&id).ok_or(OpError::NotMapped(id))?;
        if entry.deleted() {
            return Err(OpError::Deleted(id));
        }
        if entry.mappings() == 0 || entry.map_pending() {
            return Err(OpError::NotMapped(id));
        }
        entry.w_mut().queue.push_back(match mode {
            AccessMode::Read => LocalOp::Read(op, priority),
            AccessMode::Write => LocalOp::Write(op, priority),
        });
        if entry.pending().is_some() && priority < entry.w().req_priority {
            entry.w_mut().req_priority = priority;
            trace!(node = %self.node, region = %id, priority, "contend");
            self.send(
                id.home,
                Message::Contend {
                    region: id,
                    priority,
                },
            );
        }
        self.cache_advance(id);
        Ok(())
    }

    /// Withdraws local operation `op` from the cache entry of `id`; true if it was found.
    pub(crate) fn cache_cancel(&mut self, id: RegionId, op: OpId) -> bool {
        let Some(entry) = self.cache.get_mut(&id) else {
            return false;
        };
        let mut found = None;
        if let Some(pos) = entry.w().queue.iter().position(|o| o.op() == op) {
            entry.w_mut().queue.remove(pos);
            found = Some((id, false));
        } else if let Some(pos) = entry.w().mapping.iter().position(|&o| o == op) {
            entry.w_mut().mapping.remove(pos);
            entry.set_mappings(entry.mappings() - 1);
            found = Some((id, entry.mappings() == 0));
        } else if let Some(w) = entry.waits.as_deref_mut()
            && let Some(slot) = w
                .flushes
                .iter_mut()
                .chain(w.deletes.iter_mut())
                .find(|s| **s == Some(op))
        {
            *slot = None;
            return true;
        }
        let Some((id, unmapped)) = found else {
            return false;
        };
        debug!(node = %self.node, region = %id, op, "cancelled");
        if unmapped {
            self.lru_push(id);
        }
        self.cache_advance(id);
        true
    }

    /// The home `node` restarted or its session was fenced: drop every copy of its regions and
    /// fail what waited on it.
    pub(crate) fn cache_peer_reset(&mut self, node: NodeId, cause: PeerReset) {
        let ids: Vec<RegionId> = self.cache.ids().filter(|id| id.home == node).collect();
        self.stray_flush_acks.retain(|id, _| id.home != node);
        for id in ids {
            let entry = self.cache.get_mut(&id).expect("cache entry");
            let err = match cause {
                PeerReset::Restarted => OpError::HomeRestarted(id),
                PeerReset::Fenced => OpError::Fenced(id),
            };
            let mut failed: Vec<OpId> = entry.w_mut().queue.drain(..).map(LocalOp::op).collect();
            if entry.map_pending() {
                entry.set_map_pending(false);
                let mapping = u32::try_from(entry.w().mapping.len()).unwrap_or(u32::MAX);
                // (With none left, all were cancelled and the entry keeps its LRU position.)
                let count = entry.mappings();
                if count > 0 {
                    entry.set_mappings(count.saturating_sub(mapping));
                }
            }
            failed.append(&mut entry.w_mut().mapping);
            failed.extend(entry.w_mut().flushes.drain(..).flatten());
            failed.extend(entry.w_mut().deletes.drain(..).flatten());
            entry.set_pending(None);
            entry.no_request_priority();
            entry.no_recall();
            entry.no_longer_wanted();
            entry.set_state(CacheState::Invalid);
            let busy = entry.cell.word().revoke();
            if busy.is_idle() {
                entry.cell.clear();
            } else {
                entry.set_stale(true);
            }
            let drop_entry = entry.mappings() == 0 && !entry.stale();
            if drop_entry {
                let entry = self.cache.remove(&id).expect("cache entry");
                self.unmapped.remove(&entry.unmapped_at());
            }
            debug!(node = %self.node, region = %id, failed = failed.len(), ?cause, "home reset");
            for op in failed {
                self.complete(op, Err(err.clone()));
            }
            if !drop_entry {
                self.cache_advance(id);
            }
        }
    }

    /// Puts the cache entry of `id`, which nothing maps any more, at the young end of the
    /// unmapped LRU.
    pub(crate) fn lru_push(&mut self, id: RegionId) {
        if self.unmap_clock >= MAX_UNMAPPED_AT {
            self.renumber_unmapped();
        }
        self.unmap_clock += 1;
        let entry = self.cache.get_mut(&id).expect("cache entry");
        if !planted!(self, LruPositionNotRecorded) {
            entry.set_unmapped_at(self.unmap_clock);
        }
        self.unmapped.insert(self.unmap_clock, id);
    }

    /// Numbers the unmapped LRU from 1 again, in the same order: its clock reached the
    /// largest position an entry holds (`MAX_UNMAPPED_AT`). O(n), once per 2^55 unmaps.
    fn renumber_unmapped(&mut self) {
        let old = std::mem::take(&mut self.unmapped);
        self.unmap_clock = 0;
        for id in old.into_values() {
            self.unmap_clock += 1;
            if let Some(entry) = self.cache.get_mut(&id) {
                entry.set_unmapped_at(self.unmap_clock);
            }
            self.unmapped.insert(self.unmap_clock, id);
        }
    }

    /// Drops idle unmapped entries beyond the LRU's capacity, flushing their copies home.
    pub(crate) fn evict_unmapped(&mut self) {
        while self.unmapped.len() > self.config.unmapped_capacity {
            let victim = self
                .unmapped
                .iter()
                .map(|(&at, &id)| (at, id))
                .find(|(_, id)| self.cache.get(id).is_some_and(CacheEntry::is_idle));
            let Some((at, id)) = victim else {
                return;
            };
            self.unmapped.remove(&at);
            let entry = self.cache.remove(&id).expect("unmapped entry");
            self.stats.evictions += 1;
            if entry.state() != CacheState::Invalid && !entry.deleted() {
                let (image, dropped) = entry.modified_image(self.node, self.config.max_image_len);
                self.stats.oversized_writes_dropped += u64::from(dropped);
                *self.stray_flush_acks.entry(id).or_default() += 1;
                self.send(id.home, Message::Flush { region: id, image });
            }
        }
    }

    /// A message about a region homed elsewhere.
    pub(crate) fn cache_message(
        &mut self,
        from: NodeId,
        id: RegionId,
        msg: Message,
    ) -> Result<(), ProtocolViolation> {
        if from != id.home {
            return Err(self.violation(
                from,
                Some(id),
                format!("{} about a region homed at {}", msg.kind_name(), id.home),
            ));
        }
        if let Message::Recall { kind, priority, .. } = msg {
            self.stats.recalls_received += 1;
            let Some(entry) = self.cache.get_mut(&id) else {
                // Evicted (its flush reached the home first): nothing to give back.
                self.send(
                    from,
                    Message::RecallAck {
                        region: id,
                        image: None,
                    },
                );
                return Ok(());
            };
            if entry.w().recall.is_some() {
                return Err(self.violation(
                    from,
                    Some(id),
                    "second recall while one is outstanding",
                ));
            }
            if entry.state() == CacheState::Invalid {
                // Our flush crossed the recall, or our copy was never installed.
                if kind == Recall::Delete {
                    entry.set_deleted(true);
                }
                self.send(
                    from,
                    Message::RecallAck {
                        region: id,
                        image: None,
                    },
                );
            } else {
                entry.w_mut().recall = Some((kind, priority));
            }
            self.cache_advance(id);
            return Ok(());
        }
        if let Message::Contend { priority, .. } = msg {
            // Only a recall still deferred here can be contended; otherwise it is stale.
            if let Some(entry) = self.cache.get_mut(&id)
                && let Some(w) = entry.waits.as_deref_mut()
                && let Some((_, p)) = &mut w.recall
                && priority < *p
            {
                *p = priority;
                self.cache_advance(id);
            }
            return Ok(());
        }
        if let Message::FlushAck { .. } = msg
            && let Some(n) = self.stray_flush_acks.get_mut(&id)
        {
            *n -= 1;
            if *n == 0 {
                self.stray_flush_acks.remove(&id);
            }
            return Ok(());
        }
        let Some(entry) = self.cache.get_mut(&id) else {
            return Err(self.violation(
                from,
                Some(id),
                format!("{} for a region not cached here", msg.kind_name()),
            ));
        };
        match msg {
            Message::MapOk { .. } => {
                if !entry.map_pending() {
                    return Err(self.violation(from, Some(id), "map reply without a map request"));
                }
                entry.set_map_pending(false);
                for op in std::mem::take(&mut entry.w_mut().mapping) {
                    self.complete(op, Ok(()));
                }
            }
            Message::Refused { reason, .. } => {
                let err = match reason {
                    Refusal::Deleted => OpError::Deleted(id),
                    Refusal::NoSuchRegion => OpError::NoSuchRegion(id),
                    Refusal::WrongType { actual } => OpError::WrongType {
                        region: id,
                        expected: entry.cell.type_name(),
                        actual,
                    },
                    Refusal::TooLarge { len, max } => OpError::TooLarge {
                        region: id,
                        len,
                        max,
                    },
                    Refusal::Full { .. } | Refusal::BadTypeName => {
                        return Err(self.violation(
                            from,
                            Some(id),
                            "a refusal of a create in answer to a request for a region",
                        ));
                    }
                };
                if entry.map_pending() {
                    // Every mapping of the entry was waiting for this answer (or cancelled).
                    entry.set_map_pending(false);
                    // (Its mappings may all have been cancelled: then it is in the LRU.)
                    let in_lru = entry.unmapped_at();
                    entry.set_mappings(0);
                    let failed = std::mem::take(&mut entry.w_mut().mapping);
                    if entry.w().deletes.is_empty() {
                        self.cache.remove(&id).expect("cache entry");
                        self.unmapped.remove(&in_lru);
                    } else if in_lru != 0 {
                        // Kept until the answers to its deletes arrive; then evictable.
                        entry.set_unmapped_at(in_lru);
                    } else {
                        self.lru_push(id);
                    }
                    for op in failed {
                        self.complete(op, Err(err.clone()));
                    }
                } else if entry.take_pending().is_some() {
                    entry.no_request_priority();
                    if reason == Refusal::Deleted {
                        entry.set_deleted(true);
                    }
                    let failed: Vec<_> = entry.w_mut().queue.drain(..).map(LocalOp::op).collect();
                    for op in failed {
                        self.complete(op, Err(err.clone()));
                    }
                    self.cache_advance(id);
                } else if let Some(op) = entry.w_mut().deletes.pop_front() {
                    if let Some(op) = op {
                        self.complete(op, Err(err));
                    }
                } else {
                    return Err(self.violation(from, Some(id), "refusal of nothing asked"));
                }
            }
            Message::Data { grant, image, .. } => {
                if entry.pending() != Some(grant) {
                    return Err(self.violation(from, Some(id), "data that was not asked for"));
                }
                match image {
                    Some(image) => {
                        if entry.state() != CacheState::Invalid
                            || !entry.cell.word().in_progress().is_idle()
                        {
                            return Err(self.violation(
                                from,
                                Some(id),
                                "data for a copy already held or in use",
                            ));
                        }
                        if let Err(source) =
                            install_image(&*entry.cell, &image, self.decoded.take())
                        {
                            entry.set_pending(None);
                            entry.no_request_priority();
                            let failed: Vec<_> =
                                entry.w_mut().queue.drain(..).map(LocalOp::op).collect();
                            let e = OpError::Codec {
                                region: id,
                                source: source.clone(),
                            };
                            for op in failed {
                                self.complete(op, Err(e.clone()));
                            }
                            return Err(self.violation(from, Some(id), source.to_string()));
                        }
                    }
                    None => {
                        if grant != Grant::Exclusive || entry.state() != CacheState::Shared {
                            return Err(self.violation(
                                from,
                                Some(id),
                                "upgrade of a copy not held",
                            ));
                        }
                    }
                }
                entry.set_pending(None);
                entry.no_request_priority();
                entry.set_state(match grant {
                    Grant::Shared => CacheState::Shared,
                    Grant::Exclusive => CacheState::Modified,
                });
                self.cache_advance(id);
            }
            Message::FlushAck { .. } => match entry.w_mut().flushes.pop_front() {
                Some(Some(op)) => self.complete(op, Ok(())),
                Some(None) => {}
                None => return Err(self.violation(from, Some(id), "flush ack without a flush")),
            },
            Message::DeleteAck { .. } => match entry.w_mut().deletes.pop_front() {
                Some(op) => {
                    entry.set_deleted(true);
                    if let Some(op) = op {
                        self.complete(op, Ok(()));
                    }
                    self.cache_advance(id);
                }
                None => return Err(self.violation(from, Some(id), "delete ack without a delete")),
            },
            Message::Map { .. }
            | Message::GetShared { .. }
            | Message::GetExclusive { .. }
            | Message::RecallAck { .. }
            | Message::Flush { .. }
            | Message::Delete { .. }
            | Message::Hello { .. }
            | Message::HelloAck { .. }
            | Message::Ack { .. }
            | Message::Ping { .. }
            | Message::Pong { .. }
            | Message::Recall { .. }
            | Message::Contend { .. }
            | Message::TxCommit { .. }
            | Message::TxPrepare { .. }
            | Message::TxReply { .. }
            | Message::TxDecide { .. }
            | Message::TxDone { .. }
            | Message::TxInquire { .. }
            | Message::CreateAt { .. }
            | Message::Created { .. }
            | Message::CreateRefused { .. }
            | Message::ImageFollows { .. } => {
                return Err(self.violation(
                    from,
                    Some(id),
                    format!("{} sent to a non-home node", msg.kind_name()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::engine::{EngineConfig, Progress};
    use crate::region::{CodecError, Region};

    /// What an [`EntryMeta`] stands for, as separate fields.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    struct Model {
        state: u8,
        pending: u8,
        deleted: bool,
        map_pending: bool,
        stale: bool,
        mappings: u32,
        unmapped_at: u64,
    }

    fn state(n: u8) -> CacheState {
        [
            CacheState::Invalid,
            CacheState::Shared,
            CacheState::Modified,
        ][n as usize]
    }

    fn grant(n: u8) -> Option<Grant> {
        [None, Some(Grant::Shared), Some(Grant::Exclusive)][n as usize]
    }

    #[derive(Clone, Debug)]
    enum Change {
        State(u8),
        Pending(u8),
        Deleted(bool),
        MapPending(bool),
        Stale(bool),
        Mappings(u32),
        UnmappedAt(u64),
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (0u8..3).prop_map(Change::State),
            (0u8..3).prop_map(Change::Pending),
            any::<bool>().prop_map(Change::Deleted),
            any::<bool>().prop_map(Change::MapPending),
            any::<bool>().prop_map(Change::Stale),
            prop_oneof![Just(0u32), Just(1), Just(u32::MAX), any::<u32>()]
                .prop_map(Change::Mappings),
            prop_oneof![Just(1u64), Just(MAX_UNMAPPED_AT), 1..=MAX_UNMAPPED_AT]
                .prop_map(Change::UnmappedAt),
        ]
    }

    proptest! {
        /// Each packed field reads back what was last set, whatever is set beside it.
        #[test]
        fn packed_fields_are_independent(changes in proptest::collection::vec(change(), 0..40)) {
            let mut m = EntryMeta::default();
            let mut model = Model::default();
            for c in changes {
                match c {
                    Change::State(s) => { m.set_state(state(s)); model.state = s; }
                    Change::Pending(p) => { m.set_pending(grant(p)); model.pending = p; }
                    Change::Deleted(b) => { m.set_flag(DELETED, b); model.deleted = b; }
                    Change::MapPending(b) => { m.set_flag(MAP_PENDING, b); model.map_pending = b; }
                    Change::Stale(b) => { m.set_flag(STALE, b); model.stale = b; }
                    Change::Mappings(n) => {
                        m.set_low(u64::from(n));
                        model.mappings = n;
                        model.unmapped_at = 0;
                    }
                    Change::UnmappedAt(at) => {
                        m.set_low(UNMAPPED_AT | at);
                        model.mappings = 0;
                        model.unmapped_at = at;
                    }
                }
                prop_assert_eq!(m.state(), state(model.state));
                prop_assert_eq!(m.pending(), grant(model.pending));
                prop_assert_eq!(m.deleted(), model.deleted);
                prop_assert_eq!(m.map_pending(), model.map_pending);
                prop_assert_eq!(m.stale(), model.stale);
                prop_assert_eq!(m.mappings(), model.mappings);
                prop_assert_eq!(m.unmapped_at(), model.unmapped_at);
            }
        }
    }

    #[derive(Debug)]
    struct Small(u64);

    impl Region for Small {
        const TYPE_NAME: &'static str = "Small";
        const FINGERPRINT: u64 = 9;
        fn encode_region(&self) -> Result<Vec<u8>, CodecError> {
            Ok(self.0.to_le_bytes().to_vec())
        }
        fn decode_region(bytes: &[u8]) -> Result<Self, CodecError> {
            let b = bytes.try_into().map_err(|_| CodecError::Invalid {
                type_name: "Small",
                reason: "not 8 bytes".into(),
            })?;
            Ok(Small(u64::from_le_bytes(b)))
        }
    }

    /// Delivers messages between the two engines until neither has anything to send.
    fn pump(a: &mut Engine, b: &mut Engine) {
        loop {
            let mut moved = false;
            while let Some(t) = a.poll_transmit() {
                b.handle_message(a.node(), t.msg).expect("no violation");
                moved = true;
            }
            while let Some(t) = b.poll_transmit() {
                a.handle_message(b.node(), t.msg).expect("no violation");
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    #[test]
    fn the_unmapped_lru_is_renumbered_in_order_before_its_clock_runs_out() {
        let mut home = Engine::new(NodeId(0), EngineConfig::default());
        let mut cache = Engine::new(
            NodeId(1),
            EngineConfig::default().with_unmapped_capacity(100),
        );
        let ids: Vec<RegionId> = (0..6).map(|i| home.create(Small(i)).id()).collect();
        for (op, &id) in (1..).zip(&ids) {
            let (_, progress) = cache.map::<Small>(id, op).expect("map");
            if progress == Progress::Pending {
                pump(&mut home, &mut cache);
            }
        }
        while cache.poll_event().is_some() {}
        // Three unmaps number the LRU just below the largest position; the fourth would pass
        // it, so the LRU is numbered from 1 again first.
        cache.unmap_clock = MAX_UNMAPPED_AT - 3;
        for &id in &ids[..3] {
            cache.unmap(id).expect("unmap");
        }
        assert_eq!(cache.unmap_clock, MAX_UNMAPPED_AT);
        cache.check_unmapped_lru().expect("consistent LRU");
        for &id in &ids[3..] {
            cache.unmap(id).expect("unmap");
        }
        cache
            .check_unmapped_lru()
            .expect("consistent LRU after renumbering");
        assert_eq!(cache.unmap_clock, 6, "renumbered from 1");
        let order: Vec<RegionId> = cache.unmapped.values().copied().collect();
        assert_eq!(order, ids, "the LRU keeps its order");
    }
}
