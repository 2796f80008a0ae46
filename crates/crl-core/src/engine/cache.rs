//! Cache entries: this node's copies of regions homed elsewhere.
//!
//! A cache entry is `Invalid`, `Shared` or `Modified`, with at most one request to the home in
//! flight (`pending`: the transient WaitShared / WaitExclusive states), a deferred recall, and
//! a FIFO queue of local operations the hit path could not take. [`Engine::cache_advance`]
//! moves an entry forward as far as the protocol allows: first a pending recall (once the
//! accesses in progress have ended), then the queued operations in order, asking the home for a
//! copy when the head of the queue needs one.

use std::collections::VecDeque;
use std::sync::Arc;

use tracing::{error, trace};

use super::access::{AccessMode, ErasedCell};
use super::home::encode_image;
use super::{Engine, OpError, OpId, ProtocolViolation, planted};
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
    Read(OpId),
    Write(OpId),
    Flush(OpId),
}

impl LocalOp {
    fn op(self) -> OpId {
        match self {
            LocalOp::Read(op) | LocalOp::Write(op) | LocalOp::Flush(op) => op,
        }
    }
}

pub(crate) struct CacheEntry {
    pub(crate) cell: Arc<dyn ErasedCell>,
    pub(crate) state: CacheState,
    /// The grant asked of the home, if a request is in flight.
    pub(crate) pending: Option<Grant>,
    pub(crate) queue: VecDeque<LocalOp>,
    /// A recall waiting for the accesses in progress to end.
    pub(crate) recall: Option<Recall>,
    pub(crate) deleted: bool,
    pub(crate) map_count: usize,
    /// Position in the unmapped LRU (when `map_count` is 0).
    pub(crate) unmapped_at: u64,
    /// Map operations waiting for the home's answer.
    pub(crate) mapping: Vec<OpId>,
    /// Flush operations waiting for `FlushAck`.
    pub(crate) flushes: VecDeque<OpId>,
    /// Delete operations waiting for `DeleteAck`.
    pub(crate) deletes: VecDeque<OpId>,
}

impl CacheEntry {
    pub(crate) fn new(cell: Arc<dyn ErasedCell>) -> Self {
        CacheEntry {
            cell,
            state: CacheState::Invalid,
            pending: None,
            queue: VecDeque::new(),
            recall: None,
            deleted: false,
            map_count: 0,
            unmapped_at: 0,
            mapping: Vec::new(),
            flushes: VecDeque::new(),
            deletes: VecDeque::new(),
        }
    }

    /// Idle: nothing queued, in flight or in progress; safe to evict.
    fn is_idle(&self) -> bool {
        self.pending.is_none()
            && self.queue.is_empty()
            && self.recall.is_none()
            && self.mapping.is_empty()
            && self.flushes.is_empty()
            && self.deletes.is_empty()
            && self.cell.word().in_progress().is_idle()
    }

    /// The copy's image, if modified (to return to the home).
    fn modified_image(&self, node: NodeId) -> Option<RegionImage> {
        if self.state != CacheState::Modified {
            return None;
        }
        match encode_image(&*self.cell) {
            Ok(image) => Some(image),
            Err(e) => {
                error!(%node, region = %self.cell.id(), "cannot encode a modified copy: {e}");
                None
            }
        }
    }

    fn invalidate(&mut self) {
        self.state = CacheState::Invalid;
        self.cell.clear();
    }

    fn permit(&self) {
        let (read, write) = match self.state {
            CacheState::Invalid => (false, false),
            CacheState::Shared => (true, false),
            CacheState::Modified => (true, true),
        };
        self.cell.word().permit(read, write);
    }
}

impl Engine {
    /// Moves the cache entry of `id` forward as far as the protocol allows now.
    pub(crate) fn cache_advance(&mut self, id: RegionId) {
        loop {
            let node = self.node;
            let no_defer = planted!(self, RecallNotDeferred);
            let Some(entry) = self.cache.get_mut(&id) else {
                return;
            };
            if let Some(kind) = entry.recall {
                let busy = entry.cell.word().revoke();
                let ready = no_defer
                    || match kind {
                        Recall::Downgrade => !busy.writer,
                        Recall::Invalidate | Recall::Delete => busy.is_idle(),
                    };
                if !ready {
                    return;
                }
                let image = entry.modified_image(node);
                if kind == Recall::Downgrade && entry.state == CacheState::Modified {
                    entry.state = CacheState::Shared;
                } else {
                    entry.invalidate();
                }
                if kind == Recall::Delete {
                    entry.deleted = true;
                }
                entry.recall = None;
                trace!(%node, region = %id, ?kind, "recall done");
                self.send(id.home, Message::RecallAck { region: id, image });
                continue;
            }
            if entry.deleted {
                entry.cell.word().revoke();
                let failed: Vec<_> = entry.queue.drain(..).map(LocalOp::op).collect();
                for op in failed {
                    self.complete(op, Err(OpError::Deleted(id)));
                }
                return;
            }
            if entry.pending.is_some() {
                entry.cell.word().revoke();
                return;
            }
            let Some(&head) = entry.queue.front() else {
                entry.permit();
                return;
            };
            let busy = entry.cell.word().revoke();
            let fingerprint = entry.cell.fingerprint();
            match (head, entry.state) {
                (LocalOp::Read(op), CacheState::Shared | CacheState::Modified) => {
                    if busy.writer {
                        return;
                    }
                    entry.queue.pop_front();
                    let cell = entry.cell.clone();
                    self.grant(op, &cell, AccessMode::Read);
                }
                (LocalOp::Write(op), CacheState::Modified) => {
                    if !busy.is_idle() {
                        return;
                    }
                    entry.queue.pop_front();
                    let cell = entry.cell.clone();
                    self.grant(op, &cell, AccessMode::Write);
                }
                (LocalOp::Read(_), CacheState::Invalid) => {
                    entry.pending = Some(Grant::Shared);
                    self.send(
                        id.home,
                        Message::GetShared {
                            region: id,
                            fingerprint,
                        },
                    );
                    return;
                }
                (LocalOp::Write(_), CacheState::Invalid | CacheState::Shared) => {
                    entry.pending = Some(Grant::Exclusive);
                    self.send(
                        id.home,
                        Message::GetExclusive {
                            region: id,
                            fingerprint,
                        },
                    );
                    return;
                }
                (LocalOp::Flush(op), CacheState::Invalid) => {
                    entry.queue.pop_front();
                    self.complete(op, Ok(()));
                }
                (LocalOp::Flush(op), CacheState::Shared | CacheState::Modified) => {
                    if !busy.is_idle() {
                        return;
                    }
                    entry.queue.pop_front();
                    let image = entry.modified_image(node);
                    entry.invalidate();
                    entry.flushes.push_back(op);
                    self.send(id.home, Message::Flush { region: id, image });
                }
            }
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
            if entry.state != CacheState::Invalid && !entry.deleted {
                let image = entry.modified_image(self.node);
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
        if let Message::Recall { kind, .. } = msg {
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
            if entry.recall.is_some() {
                return Err(self.violation(
                    from,
                    Some(id),
                    "second recall while one is outstanding",
                ));
            }
            if entry.state == CacheState::Invalid {
                // Our flush crossed the recall, or our copy was never installed.
                if kind == Recall::Delete {
                    entry.deleted = true;
                }
                self.send(
                    from,
                    Message::RecallAck {
                        region: id,
                        image: None,
                    },
                );
            } else {
                entry.recall = Some(kind);
            }
            self.cache_advance(id);
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
                if entry.mapping.is_empty() {
                    return Err(self.violation(from, Some(id), "map reply without a map request"));
                }
                for op in std::mem::take(&mut entry.mapping) {
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
                };
                if !entry.mapping.is_empty() {
                    let entry = self.cache.remove(&id).expect("cache entry");
                    for op in entry.mapping {
                        self.complete(op, Err(err.clone()));
                    }
                } else if entry.pending.take().is_some() {
                    entry.deleted |= reason == Refusal::Deleted;
                    let failed: Vec<_> = entry.queue.drain(..).map(LocalOp::op).collect();
                    for op in failed {
                        self.complete(op, Err(err.clone()));
                    }
                    self.cache_advance(id);
                } else if let Some(op) = entry.deletes.pop_front() {
                    self.complete(op, Err(err));
                } else {
                    return Err(self.violation(from, Some(id), "refusal of nothing asked"));
                }
            }
            Message::Data { grant, image, .. } => {
                if entry.pending != Some(grant) {
                    return Err(self.violation(from, Some(id), "data that was not asked for"));
                }
                match image {
                    Some(image) => {
                        if entry.state != CacheState::Invalid
                            || !entry.cell.word().in_progress().is_idle()
                        {
                            return Err(self.violation(
                                from,
                                Some(id),
                                "data for a copy already held or in use",
                            ));
                        }
                        if let Err(source) = entry.cell.install(&image.bytes, image.version) {
                            entry.pending = None;
                            let failed: Vec<_> = entry.queue.drain(..).map(LocalOp::op).collect();
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
                        if grant != Grant::Exclusive || entry.state != CacheState::Shared {
                            return Err(self.violation(
                                from,
                                Some(id),
                                "upgrade of a copy not held",
                            ));
                        }
                    }
                }
                entry.pending = None;
                entry.state = match grant {
                    Grant::Shared => CacheState::Shared,
                    Grant::Exclusive => CacheState::Modified,
                };
                self.cache_advance(id);
            }
            Message::FlushAck { .. } => match entry.flushes.pop_front() {
                Some(op) => self.complete(op, Ok(())),
                None => return Err(self.violation(from, Some(id), "flush ack without a flush")),
            },
            Message::DeleteAck { .. } => match entry.deletes.pop_front() {
                Some(op) => {
                    entry.deleted = true;
                    self.complete(op, Ok(()));
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
            | Message::Recall { .. } => {
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
