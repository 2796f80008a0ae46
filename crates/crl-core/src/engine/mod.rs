//! The coherence protocol engine: one sans-IO state machine per node.
//!
//! An [`Engine`] is a node's half of crl's home-based, invalidate protocol (DESIGN.md §4,
//! after CRL). It is fed local requests ([`create`](Engine::create), [`map`](Engine::map),
//! [`start_read`](Engine::start_read), …) and incoming messages
//! ([`handle_message`](Engine::handle_message)); it emits messages to send
//! ([`poll_transmit`](Engine::poll_transmit)) and completions of queued operations
//! ([`poll_event`](Engine::poll_event)). It does no I/O, reads no clock, starts no thread and
//! draws no random number, so a simulator can drive many engines deterministically.
//!
//! - `home.rs` holds the **home directory**: for each region created here, the master copy, who
//!   holds copies (`Unowned` / `Shared{sharers}` / `Exclusive{owner}`), and a FIFO queue of the
//!   requests that arrive while one is being served.
//! - `cache.rs` holds the **cache entries** of regions homed elsewhere: `Invalid` / `Shared` /
//!   `Modified`, the request in flight, a deferred recall and the local operations waiting.
//! - [`access`] holds the hit path shared with the program's threads ([`RegionCell`]).
//!
//! # Transport assumption
//! The engine requires **reliable, per-link FIFO** delivery: messages from one node to another
//! arrive once, in the order sent (one QUIC stream per direction per peer pair gives exactly
//! this). Messages on different links may be reordered arbitrarily. The simulator delivers in
//! every order this allows. Under it:
//! - a `Recall` that crosses a `Flush` is answered with an empty `RecallAck` (the home applied
//!   the flush first, since it was sent first on the same link);
//! - a `GetExclusive` from a node the home no longer lists as a sharer (its copy was recalled
//!   while the request was in flight) is answered with full data, never a bare upgrade;
//! - the home serves one request per region at a time; later ones wait in FIFO order.
//!
//! # Local operations
//! Each operation is indivisible and operations on a region are sequentially consistent. A
//! read on a valid copy or a write on an exclusively held copy is a hit on the [`RegionCell`]
//! and sends nothing. Otherwise the operation queues at the entry (FIFO, behind earlier local
//! operations and behind a pending recall, so nothing starves) and is granted with
//! [`Event::Granted`] once the protocol allows. A recall waits for the accesses in progress to
//! end. The home's own accesses take the same path: they queue in the home's request queue.
//!
//! # Delete
//! Deleting a region recalls every copy; afterwards each node's next access fails with
//! [`OpError::Deleted`] (nodes that held a copy learn at once, others at their next request).
//! Deleting is idempotent: deleting a deleted region succeeds.

pub mod access;
mod cache;
mod home;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tracing::{debug, warn};

pub use access::{Access, AccessMode, InProgress, ReadGuard, RegionCell, WriteGuard};
use access::{DrainList, ErasedCell};
pub use cache::CacheState;
use cache::{CacheEntry, LocalOp};
pub use home::DirState;
use home::{HomeEntry, Requester};

use crate::region::{CodecError, NodeId, Region, RegionId};
use crate::wire::Message;

/// Identifies a local operation that may complete later ([`Event`]); chosen by the caller.
pub type OpId = u64;

/// A message the engine wants sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The destination node.
    pub to: NodeId,
    /// The message.
    pub msg: Message,
}

/// The completion of a queued local operation.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A queued `start_read`/`start_write` was granted; the access is in progress until the
    /// [`Access`] (or the guard made from it) is dropped.
    Granted {
        /// The operation.
        op: OpId,
        /// The access.
        access: Access,
    },
    /// A queued operation finished (map, flush, delete), or a queued access failed.
    Completed {
        /// The operation.
        op: OpId,
        /// Its outcome.
        result: Result<(), OpError>,
    },
}

/// How a local request was taken.
#[derive(Debug)]
pub enum Start {
    /// Granted at once (the access is in progress).
    Granted(Access),
    /// Queued: an [`Event`] with the same [`OpId`] will report the outcome.
    Queued,
}

/// How a local operation other than an access was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Done.
    Done,
    /// Pending: an [`Event::Completed`] with the same [`OpId`] will report the outcome.
    Pending,
}

/// Why a local operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The region was deleted.
    #[error("region {0} was deleted")]
    Deleted(RegionId),
    /// The region's home never created it.
    #[error("no region {0} exists at its home")]
    NoSuchRegion(RegionId),
    /// The region exists with another type.
    #[error(
        "region {region} is not a {expected}: type fingerprints differ ({actual:#x} at the home)"
    )]
    WrongType {
        /// The region.
        region: RegionId,
        /// The type it was mapped as.
        expected: &'static str,
        /// The fingerprint of its actual type.
        actual: u64,
    },
    /// The region is not mapped on this node.
    #[error("region {0} is not mapped on this node")]
    NotMapped(RegionId),
    /// A peer sent bytes that do not decode as the region's type.
    #[error("region {region}: {source}")]
    Codec {
        /// The region.
        region: RegionId,
        /// The decoding error.
        source: CodecError,
    },
}

/// A peer broke the protocol; the driver should close the connection to it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("protocol violation by {peer} on {region:?}: {what}")]
pub struct ProtocolViolation {
    /// The peer.
    pub peer: NodeId,
    /// The region concerned, if any.
    pub region: Option<RegionId>,
    /// What was wrong.
    pub what: String,
}

/// A deliberately broken protocol rule, for proving the simulator's checker can fail.
#[cfg(feature = "sim")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedFault {
    /// Caches apply a recall at once, even while accesses are in progress.
    RecallNotDeferred,
    /// The home forgets to recall one sharer before granting exclusive access.
    SkipOneSharerRecall,
}

/// Engine settings.
#[derive(Clone)]
pub struct EngineConfig {
    /// How many unmapped regions stay cached (LRU); beyond this the least recently unmapped
    /// idle one is flushed and dropped.
    pub unmapped_capacity: usize,
    /// Called (from any thread) when an access ends that the engine was waiting for: the
    /// driver should then call [`Engine::process_drained`].
    pub on_drain: Option<Arc<dyn Fn() + Send + Sync>>,
    /// A planted bug (tests of the checker only).
    #[cfg(feature = "sim")]
    pub fault: Option<PlantedFault>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            unmapped_capacity: 1024,
            on_drain: None,
            #[cfg(feature = "sim")]
            fault: None,
        }
    }
}

impl EngineConfig {
    /// Sets [`unmapped_capacity`](Self::unmapped_capacity).
    pub fn with_unmapped_capacity(mut self, capacity: usize) -> Self {
        self.unmapped_capacity = capacity;
        self
    }

    /// Sets [`on_drain`](Self::on_drain).
    pub fn with_on_drain(mut self, on_drain: Arc<dyn Fn() + Send + Sync>) -> Self {
        self.on_drain = Some(on_drain);
        self
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("unmapped_capacity", &self.unmapped_capacity)
            .finish_non_exhaustive()
    }
}

/// Counters of a node's protocol activity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Accesses that had to go to the engine (slow path) and were queued.
    pub misses: u64,
    /// Messages handed to the transport.
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Recalls (invalidate, downgrade, delete) sent as a home.
    pub recalls_sent: u64,
    /// Recalls received as a cache.
    pub recalls_received: u64,
    /// Regions flushed and dropped from the unmapped cache.
    pub evictions: u64,
}

/// A snapshot of one region's protocol state at this node, for tests and debugging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntrySnapshot {
    /// This node is the region's home.
    Home {
        /// The directory state.
        dir: DirState,
        /// Whether a request is being served.
        busy: bool,
        /// Requests waiting.
        queued: usize,
        /// Accesses in progress at the home.
        in_progress: InProgress,
    },
    /// This node caches a region homed elsewhere.
    Cache {
        /// The copy's state.
        state: CacheState,
        /// Whether a request to the home is in flight.
        pending: bool,
        /// Local operations waiting.
        queued: usize,
        /// Accesses in progress.
        in_progress: InProgress,
        /// Whether a recall is waiting for accesses in progress to end.
        recalling: bool,
        /// Whether the region is known deleted.
        deleted: bool,
    },
}

/// One node's protocol engine. See the [module docs](self).
pub struct Engine {
    node: NodeId,
    config: EngineConfig,
    next_seq: u64,
    homes: HashMap<u64, HomeEntry>,
    deleted: HashSet<u64>,
    cache: HashMap<RegionId, CacheEntry>,
    unmapped: BTreeMap<u64, RegionId>,
    unmap_clock: u64,
    /// Flush acks still due for entries evicted (and dropped) since.
    stray_flush_acks: HashMap<RegionId, u32>,
    drains: Arc<DrainList>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: EngineStats,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node", &self.node)
            .field("homed", &self.homes.len())
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// A new engine for `node`, homing no regions yet.
    pub fn new(node: NodeId, config: EngineConfig) -> Self {
        let drains = Arc::new(DrainList::new(config.on_drain.clone()));
        Engine {
            node,
            config,
            next_seq: 1,
            homes: HashMap::new(),
            deleted: HashSet::new(),
            cache: HashMap::new(),
            unmapped: BTreeMap::new(),
            unmap_clock: 0,
            stray_flush_acks: HashMap::new(),
            drains,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: EngineStats::default(),
        }
    }

    /// This engine's node.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Counters so far.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next completion, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether messages are waiting to be sent.
    pub fn has_transmits(&self) -> bool {
        !self.transmits.is_empty()
    }

    /// Creates a region homed at this node, holding `value`, mapped once.
    pub fn create<T: Region>(&mut self, value: T) -> Arc<RegionCell<T>> {
        let id = RegionId::new(self.node, self.next_seq);
        self.next_seq += 1;
        let cell = Arc::new(RegionCell::new(id, Some(value), self.drains.clone()));
        cell.word().permit(true, true);
        self.homes.insert(id.seq, HomeEntry::new(cell.clone()));
        debug!(node = %self.node, region = %id, ty = T::TYPE_NAME, "created");
        cell
    }

    /// Maps region `id` as a `T`. Returns the cell at once; if `Pending`, the home is being
    /// asked whether the region exists with this type, and the cell must not be used until
    /// [`Event::Completed`] for `op` reports success.
    pub fn map<T: Region>(
        &mut self,
        id: RegionId,
        op: OpId,
    ) -> Result<(Arc<RegionCell<T>>, Progress), OpError> {
        if id.home == self.node {
            return self.map_home(id);
        }
        if let Some(entry) = self.cache.get_mut(&id) {
            let cell = downcast::<T>(id, &entry.cell)?;
            if entry.deleted {
                return Err(OpError::Deleted(id));
            }
            if entry.map_count == 0 {
                self.unmapped.remove(&entry.unmapped_at);
            }
            entry.map_count += 1;
            if entry.mapping.is_empty() {
                return Ok((cell, Progress::Done));
            }
            entry.mapping.push(op);
            return Ok((cell, Progress::Pending));
        }
        let cell = Arc::new(RegionCell::<T>::new(id, None, self.drains.clone()));
        let mut entry = CacheEntry::new(cell.clone());
        entry.map_count = 1;
        entry.mapping.push(op);
        self.cache.insert(id, entry);
        self.send(
            id.home,
            Message::Map {
                region: id,
                fingerprint: T::FINGERPRINT,
            },
        );
        Ok((cell, Progress::Pending))
    }

    fn map_home<T: Region>(
        &mut self,
        id: RegionId,
    ) -> Result<(Arc<RegionCell<T>>, Progress), OpError> {
        match self.homes.get_mut(&id.seq) {
            Some(entry) => {
                let cell = downcast::<T>(id, &entry.cell)?;
                entry.map_count += 1;
                Ok((cell, Progress::Done))
            }
            None if self.deleted.contains(&id.seq) => Err(OpError::Deleted(id)),
            None => Err(OpError::NoSuchRegion(id)),
        }
    }

    /// Drops one mapping of `id`. A region homed elsewhere that is no longer mapped stays
    /// cached (bounded LRU); when evicted it is flushed to its home.
    pub fn unmap(&mut self, id: RegionId) -> Result<(), OpError> {
        if id.home == self.node {
            return match self.homes.get_mut(&id.seq) {
                Some(entry) => {
                    entry.map_count = entry.map_count.saturating_sub(1);
                    Ok(())
                }
                // Unmapping a deleted region (e.g. dropping its last handle) is fine.
                None if self.deleted.contains(&id.seq) => Ok(()),
                None => Err(OpError::NotMapped(id)),
            };
        }
        let entry = self.cache.get_mut(&id).ok_or(OpError::NotMapped(id))?;
        if entry.map_count == 0 {
            return Err(OpError::NotMapped(id));
        }
        entry.map_count -= 1;
        if entry.map_count == 0 {
            self.unmap_clock += 1;
            entry.unmapped_at = self.unmap_clock;
            self.unmapped.insert(self.unmap_clock, id);
            self.evict_unmapped();
        }
        Ok(())
    }

    /// Starts a read of `id` on the slow path (after [`RegionCell::try_read`] missed).
    pub fn start_read(&mut self, id: RegionId, op: OpId) -> Result<Start, OpError> {
        self.start_access(id, op, AccessMode::Read)
    }

    /// Starts a write of `id` on the slow path (after [`RegionCell::try_write`] missed).
    pub fn start_write(&mut self, id: RegionId, op: OpId) -> Result<Start, OpError> {
        self.start_access(id, op, AccessMode::Write)
    }

    fn start_access(&mut self, id: RegionId, op: OpId, mode: AccessMode) -> Result<Start, OpError> {
        self.process_drained();
        if id.home == self.node {
            if !self.homes.contains_key(&id.seq) {
                return Err(self.home_missing(id));
            }
            self.home_enqueue(id, home::Request::access(Requester::Local(op), mode));
        } else {
            let entry = self.cache.get_mut(&id).ok_or(OpError::NotMapped(id))?;
            if entry.deleted {
                return Err(OpError::Deleted(id));
            }
            if entry.map_count == 0 || !entry.mapping.is_empty() {
                return Err(OpError::NotMapped(id));
            }
            entry.queue.push_back(match mode {
                AccessMode::Read => LocalOp::Read(op),
                AccessMode::Write => LocalOp::Write(op),
            });
            self.cache_advance(id);
        }
        Ok(self.take_immediate(op))
    }

    /// If `op` was granted during the call that queued it, return it directly.
    fn take_immediate(&mut self, op: OpId) -> Start {
        let pos = self.events.iter().position(|e| match e {
            Event::Granted { op: o, .. } => *o == op,
            Event::Completed { .. } => false,
        });
        match pos.and_then(|p| self.events.remove(p)) {
            Some(Event::Granted { access, .. }) => Start::Granted(access),
            _ => {
                self.stats.misses += 1;
                Start::Queued
            }
        }
    }

    /// Writes the local copy of `id` back to its home and drops it (CRL's `rgn_flush`). At the
    /// home this is a no-op. Waits behind local operations in progress or queued.
    pub fn flush(&mut self, id: RegionId, op: OpId) -> Result<Progress, OpError> {
        self.process_drained();
        if id.home == self.node {
            return if self.homes.contains_key(&id.seq) {
                Ok(Progress::Done)
            } else {
                Err(self.home_missing(id))
            };
        }
        let entry = self.cache.get_mut(&id).ok_or(OpError::NotMapped(id))?;
        if entry.deleted {
            return Err(OpError::Deleted(id));
        }
        entry.queue.push_back(LocalOp::Flush(op));
        self.cache_advance(id);
        Ok(self.take_completed(op))
    }

    fn take_completed(&mut self, op: OpId) -> Progress {
        let pos = self.events.iter().position(|e| match e {
            Event::Completed { op: o, result } => *o == op && result.is_ok(),
            Event::Granted { .. } => false,
        });
        match pos.and_then(|p| self.events.remove(p)) {
            Some(_) => Progress::Done,
            None => Progress::Pending,
        }
    }

    /// Deletes region `id` everywhere. Completes once every copy has been recalled.
    pub fn delete(&mut self, id: RegionId, op: OpId) -> Result<Progress, OpError> {
        self.process_drained();
        if id.home == self.node {
            if !self.homes.contains_key(&id.seq) {
                return match self.home_missing(id) {
                    OpError::Deleted(_) => Ok(Progress::Done),
                    e => Err(e),
                };
            }
            self.home_enqueue(id, home::Request::delete(Requester::Local(op)));
            return Ok(self.take_completed(op));
        }
        if let Some(entry) = self.cache.get_mut(&id) {
            entry.deletes.push_back(op);
        } else {
            return Err(OpError::NotMapped(id));
        }
        self.send(id.home, Message::Delete { region: id });
        Ok(Progress::Pending)
    }

    /// Finishes protocol actions that were waiting for accesses to end. The driver calls it
    /// when [`EngineConfig::on_drain`] fires; `start_read`, `start_write`, `flush`, `delete` and
    /// `handle_message` call it first too.
    pub fn process_drained(&mut self) {
        if self.drains.is_empty() {
            return;
        }
        for id in self.drains.take() {
            if id.home == self.node {
                if self.homes.contains_key(&id.seq) {
                    self.home_advance(id);
                }
            } else if self.cache.contains_key(&id) {
                self.cache_advance(id);
            }
        }
        self.evict_unmapped();
    }

    /// Handles a message from `from`. An error means `from` broke the protocol: the message
    /// was ignored, and the driver should log it and close the connection.
    pub fn handle_message(&mut self, from: NodeId, msg: Message) -> Result<(), ProtocolViolation> {
        self.process_drained();
        self.stats.messages_received += 1;
        let Some(region) = msg.region() else {
            return Err(self.violation(from, None, "hello on an established link"));
        };
        let result = if region.home == self.node {
            self.home_message(from, region, msg)
        } else {
            self.cache_message(from, region, msg)
        };
        self.evict_unmapped();
        result
    }

    /// Revokes every hit permission on this node, so every later access takes the slow path
    /// (used when a node shuts down: accesses then fail instead of touching stale copies).
    /// Accesses in progress are not interrupted.
    pub fn revoke_all(&mut self) {
        for e in self.homes.values() {
            e.cell.word().revoke();
        }
        for e in self.cache.values() {
            e.cell.word().revoke();
        }
    }

    /// The protocol state of `id` at this node.
    pub fn inspect(&self, id: RegionId) -> Option<EntrySnapshot> {
        if id.home == self.node {
            let e = self.homes.get(&id.seq)?;
            Some(EntrySnapshot::Home {
                dir: e.dir.clone(),
                busy: e.serving.is_some(),
                queued: e.queue.len(),
                in_progress: e.cell.word().in_progress(),
            })
        } else {
            let e = self.cache.get(&id)?;
            Some(EntrySnapshot::Cache {
                state: e.state,
                pending: e.pending.is_some(),
                queued: e.queue.len(),
                in_progress: e.cell.word().in_progress(),
                recalling: e.recall.is_some(),
                deleted: e.deleted,
            })
        }
    }

    /// Ids of the regions homed here (not deleted).
    pub fn homed_regions(&self) -> Vec<RegionId> {
        let mut v: Vec<_> = self
            .homes
            .keys()
            .map(|&s| RegionId::new(self.node, s))
            .collect();
        v.sort();
        v
    }

    /// Ids of the regions homed elsewhere that this node has an entry for.
    pub fn cached_regions(&self) -> Vec<RegionId> {
        let mut v: Vec<_> = self.cache.keys().copied().collect();
        v.sort();
        v
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        debug_assert_ne!(to, self.node, "message to self");
        self.stats.messages_sent += 1;
        self.transmits.push_back(Transmit { to, msg });
    }

    fn complete(&mut self, op: OpId, result: Result<(), OpError>) {
        self.events.push_back(Event::Completed { op, result });
    }

    fn grant(&mut self, op: OpId, cell: &Arc<dyn ErasedCell>, mode: AccessMode) {
        match mode {
            AccessMode::Read => cell.word().grant_read(),
            AccessMode::Write => cell.word().grant_write(),
        }
        let access = Access::new(cell.clone(), mode);
        self.events.push_back(Event::Granted { op, access });
    }

    fn violation(
        &self,
        peer: NodeId,
        region: Option<RegionId>,
        what: impl Into<String>,
    ) -> ProtocolViolation {
        let v = ProtocolViolation {
            peer,
            region,
            what: what.into(),
        };
        warn!(node = %self.node, %peer, "{v}");
        v
    }
}

/// Whether a planted fault is switched on (always false without the `sim` feature).
macro_rules! planted {
    ($engine:expr, $fault:ident) => {{
        #[cfg(feature = "sim")]
        {
            $engine.config.fault == Some($crate::engine::PlantedFault::$fault)
        }
        #[cfg(not(feature = "sim"))]
        {
            false
        }
    }};
}
pub(crate) use planted;

fn downcast<T: Region>(
    id: RegionId,
    cell: &Arc<dyn ErasedCell>,
) -> Result<Arc<RegionCell<T>>, OpError> {
    if cell.fingerprint() != T::FINGERPRINT {
        return Err(OpError::WrongType {
            region: id,
            expected: T::TYPE_NAME,
            actual: cell.fingerprint(),
        });
    }
    cell.clone()
        .into_any()
        .downcast::<RegionCell<T>>()
        .map_err(|_| OpError::WrongType {
            region: id,
            expected: T::TYPE_NAME,
            actual: cell.fingerprint(),
        })
}
