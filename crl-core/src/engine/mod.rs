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
//! arrive once, in the order sent, for as long as both incarnations live. A QUIC stream alone
//! does not give this (frames in flight die with their connection); the session layer
//! ([`crate::session`], driven by crl-net's transport) does, across any number of broken
//! connections, and a peer's restart is reported to the engine
//! ([`peer_restarted`](Engine::peer_restarted)) before any message of its new incarnation.
//! Messages on different links may be reordered arbitrarily. On one link, the only reordering
//! is that a message of one frame about another region (or a ping or pong) may pass the
//! remaining pieces of a big region's image ([`crate::wire::Lane`]): the messages of one
//! region, and everything that is not about one region, stay in the order sent. The engine
//! needs no more: each region's state machine sees its own messages in order, and a message
//! of region B arriving before an earlier image of region A is indistinguishable from one
//! sent before it. A driver that decodes or encodes a big image beside the engine
//! ([`ImageWork`]) may reorder the same way after delivery, and no more: a message of the
//! same peer passes the one being worked on only if it is about another region (or a ping
//! or pong: [`Message::lane`]) and nothing else of that peer waits. The simulator delivers
//! in every order per-link FIFO allows, through the real session layer with connections
//! that break (and with `SimConfig::image_work`, through such a driver), and so also these
//! passes when images
//! travel as pieces (`SimConfig::value_len`; lifting the rule for a region's own messages, at
//! both ends, made it find two writers at once). Under it:
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
//!
//! # Priorities and wound-wait
//! Transactions hold their accesses to commit (DESIGN.md §5), so a request can wait on an
//! access that waits elsewhere: a deadlock. The engine never aborts anything; it tells the node
//! who waits on what, and the node applies wound-wait (an older transaction wounds a younger
//! one that holds what it wants). Every access carries a **priority**
//! ([`start_read_with`](Engine::start_read_with)): lower is older and wins;
//! [`PRIORITY_NONE`] (`u64::MAX`) is a plain access, younger than every transaction.
//! - A request to a home (`GetShared`/`GetExclusive`) carries the oldest priority of the local
//!   accesses queued on the entry. An older access queued later, while the request is in flight,
//!   sends `Contend{region, p}` to the home.
//! - A home serves its FIFO queue as before. The **effective priority** of the request it
//!   serves is the oldest of that request and every request queued behind it (they all wait on
//!   the holders). Each `Recall` carries it; when it gets older (a `Contend`, or an older
//!   request queued), the home sends `Contend{region, p}` to every node whose `RecallAck` it
//!   still awaits.
//! - [`Event::Wanted`]`{region, priority}` is emitted on a node whenever something with that
//!   priority (not [`PRIORITY_NONE`]) waits for **this node's local accesses in progress** on
//!   the region: a recall deferred here (its priority, lowered by `Contend`s), a request the
//!   home serves that its own accesses hold up, or a local access or flush queued behind them.
//!   It is reported once per wait, again only when an older priority joins the wait. The node
//!   should then wound every local transaction younger than `priority` that holds an access
//!   to the region (aborting ends its accesses, and the wait ends).
//! - A `Contend` for a region or request that is no longer waiting is stale and ignored (it can
//!   cross the answer on the wire).
//!
//! # Cancel, restarts and fences
//! [`cancel`](Engine::cancel) withdraws a queued operation (a waiter timed out, a transaction
//! was wounded). [`peer_restarted`](Engine::peer_restarted) forgets a peer's previous
//! incarnation: copies of its regions are dropped, operations waiting on it fail with
//! [`OpError::HomeRestarted`], and as a home this node forgets the copies it held (a lost
//! exclusive copy is reported with [`Event::CopyLost`]). [`peer_fenced`](Engine::peer_fenced)
//! is the same recovery for a pair whose session was fenced (one end was silent for longer
//! than the peer timeout; DESIGN.md §6, rule 3), with [`OpError::Fenced`]. The engine itself
//! knows nothing of time or leases: the node checks its lease from a home
//! ([`crate::liveness`]) after every access to a copy is acquired, and decides fences.
//!
//! # Commit and restore support
//! The transaction layer (not the engine) handles the `Tx*` messages; at a home it checks
//! [`holds_exclusive`](Engine::holds_exclusive) and installs committed images with
//! [`install_master`](Engine::install_master). A restarted home recreates its regions with
//! [`restore_raw`](Engine::restore_raw) (bytes, no Rust type yet) and
//! [`set_next_seq`](Engine::set_next_seq).

pub mod access;
mod cache;
mod cache_table;
mod detached;
mod home;
mod home_table;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use tracing::{debug, warn};

pub use access::{Access, AccessMode, InProgress, ReadGuard, RegionCell, WriteGuard};
use access::{DrainList, ErasedCell, RawCell};
pub use cache::CacheState;
use cache::{CacheEntry, LocalOp};
use cache_table::CacheTable;
use detached::{DecodedImage, EncodedImage, install_image};
pub use detached::{IMAGE_WORK_MIN_BYTES, ImageWork, PreparedMessage};
pub use home::{DirState, Sharers};
use home::{HomeEntry, Requester};
use home_table::HomeTable;

use crate::region::{CodecError, NodeId, Region, RegionId};
pub use crate::wire::PRIORITY_NONE;
use crate::wire::{Message, Refusal};

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
    /// A request with `priority` waits for this node's local accesses in progress on
    /// `region` (see the [module docs](self#priorities-and-wound-wait)): the node should wound
    /// its local transactions younger than `priority` that hold an access to `region`. Not an
    /// operation's completion.
    Wanted {
        /// The region.
        region: RegionId,
        /// The oldest priority waiting (never [`PRIORITY_NONE`]).
        priority: u64,
    },
    /// A node that held the only valid copy of `region` (homed here) restarted: the home's
    /// copy, as last installed, is the region's value now and later writes may be lost. Also
    /// counted in [`EngineStats::lost_copies`].
    CopyLost {
        /// The region.
        region: RegionId,
    },
    /// `region`, homed here, was deleted (by anyone): a node with a log records it, so that
    /// the region stays deleted after a restart.
    Deleted {
        /// The region.
        region: RegionId,
    },
}

impl Event {
    /// The operation this event completes, if it is a completion.
    pub fn op(&self) -> Option<OpId> {
        match self {
            Event::Granted { op, .. } | Event::Completed { op, .. } => Some(*op),
            Event::Wanted { .. } | Event::CopyLost { .. } | Event::Deleted { .. } => None,
        }
    }
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
    /// The region's home restarted while the operation waited on it; retry.
    #[error("the home of region {0} restarted")]
    HomeRestarted(RegionId),
    /// The session between this node and the region's home was fenced (one of the two was
    /// silent for longer than the peer timeout) while the operation waited on it; retry.
    #[error("the session with the home of region {0} was fenced")]
    Fenced(RegionId),
    /// The home's copy of the region is in use by a local access (see
    /// [`Engine::install_master`]).
    #[error("region {0} is in use at its home")]
    InUse(RegionId),
    /// The region's image is larger than a message may carry, so its home cannot ship it.
    #[error(
        "region {region} is {len} bytes encoded, over the limit of {max} bytes for one message"
    )]
    TooLarge {
        /// The region.
        region: RegionId,
        /// Its encoded length.
        len: u64,
        /// The largest image a message may carry ([`EngineConfig::max_image_len`]).
        max: u64,
    },
}

/// Why the engine forgets what it shared with a peer ([`Engine::peer_reset`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerReset {
    /// The peer came back with a new incarnation.
    Restarted,
    /// The pair's session was fenced: one end was silent past the peer timeout.
    Fenced,
}

/// Why [`Engine::restore_raw`] refused a region.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The region is homed at another node.
    #[error("region {region} is not homed at {node}")]
    NotHome {
        /// The region.
        region: RegionId,
        /// This node.
        node: NodeId,
    },
    /// A region with this id already exists here.
    #[error("region {0} already exists")]
    Exists(RegionId),
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
    /// A cache entry keeps the priority it last reported wanted after nothing waits any more
    /// (a cancelled wait), so a later, younger wait behind new hits goes unreported and the
    /// holders it waits on are never wounded.
    WantedNotForgotten,
    /// The last unmap of a copy puts it in the unmapped LRU without recording its position
    /// in the entry, so a later map leaves it there (and eviction may drop a mapped copy).
    LruPositionNotRecorded,
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
    /// The largest region image the home ships in one message; a request for a larger
    /// region is refused with [`OpError::TooLarge`] instead of producing a message the
    /// transport cannot send (default [`DEFAULT_MAX_IMAGE_LEN`]).
    pub max_image_len: usize,
    /// The most regions this node homes when another node asks it to create one
    /// ([`Engine::create_placed`]): beyond it placements are refused with
    /// [`Refusal::Full`], so no peer can make this node store regions without bound
    /// (default [`DEFAULT_MAX_HOMED_REGIONS`]; the node's own creates are not limited).
    pub max_homed_regions: usize,
    /// The shortest image [`Engine::image_work`] offers to decode or encode away from the
    /// engine (default [`IMAGE_WORK_MIN_BYTES`]; the simulator sets 0 to put every image
    /// through that path).
    pub image_work_min_bytes: usize,
    /// A planted bug (tests of the checker only).
    #[cfg(feature = "sim")]
    pub fault: Option<PlantedFault>,
}

/// Room a message needs beyond its region image (the frame header, the message's fields and
/// the archive's layout), with a wide margin.
pub const MESSAGE_OVERHEAD: usize = 1024;

/// Default [`EngineConfig::max_image_len`]: 1 GiB. Images longer than a frame travel in
/// fragments ([`crate::fragment`]).
pub const DEFAULT_MAX_IMAGE_LEN: usize = 1 << 30;

/// Default [`EngineConfig::max_homed_regions`]: four times the million regions per node the
/// design aims at.
pub const DEFAULT_MAX_HOMED_REGIONS: usize = 4 << 20;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            unmapped_capacity: 1024,
            on_drain: None,
            max_image_len: DEFAULT_MAX_IMAGE_LEN,
            max_homed_regions: DEFAULT_MAX_HOMED_REGIONS,
            image_work_min_bytes: IMAGE_WORK_MIN_BYTES,
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

    /// Sets [`max_image_len`](Self::max_image_len) from the largest message the transport
    /// sends (fragments together): images must leave room for the rest of the message.
    pub fn with_max_message_len(mut self, max_message_len: usize) -> Self {
        self.max_image_len = max_message_len.saturating_sub(MESSAGE_OVERHEAD);
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
    /// Exclusive copies lost because their holder restarted (see [`Event::CopyLost`]).
    pub lost_copies: u64,
    /// Modified copies whose writes were dropped because the copy cannot be returned to its
    /// home: it grew past [`max_image_len`](EngineConfig::max_image_len) (or failed to
    /// encode). The writes are dropped when the copy is recalled, flushed or evicted (logged
    /// as an error), and the home keeps its last image.
    pub oversized_writes_dropped: u64,
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
    homes: HomeTable,
    cache: CacheTable,
    unmapped: BTreeMap<u64, RegionId>,
    unmap_clock: u64,
    /// Flush acks still due for entries evicted (and dropped) since.
    stray_flush_acks: HashMap<RegionId, u32>,
    drains: Arc<DrainList>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: EngineStats,
    /// The value of the image the message being handled carries, decoded already
    /// ([`handle_prepared`](Self::handle_prepared)); taken by the install.
    decoded: Option<DecodedImage>,
    /// The home's copy encoded for the request being handled
    /// ([`handle_prepared`](Self::handle_prepared)); taken by the answer.
    encoded: Option<EncodedImage>,
    /// Regions homed here whose image was big when last encoded or installed
    /// ([`big_images`](Self::big_images)).
    big_images: std::collections::BTreeSet<u64>,
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
            homes: HomeTable::default(),
            cache: CacheTable::default(),
            unmapped: BTreeMap::new(),
            unmap_clock: 0,
            stray_flush_acks: HashMap::new(),
            drains,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: EngineStats::default(),
            decoded: None,
            encoded: None,
            big_images: Default::default(),
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
            if entry.deleted() {
                return Err(OpError::Deleted(id));
            }
            if entry.mappings() == 0 {
                self.unmapped.remove(&entry.unmapped_at());
            }
            entry.add_mapping();
            if !entry.map_pending() {
                return Ok((cell, Progress::Done));
            }
            entry.w_mut().mapping.push(op);
            return Ok((cell, Progress::Pending));
        }
        let cell = Arc::new(RegionCell::<T>::new(id, None, self.drains.clone()));
        let mut entry = CacheEntry::new(cell.clone());
        entry.set_mappings(1);
        entry.set_map_pending(true);
        entry.w_mut().mapping.push(op);
        self.cache.insert(entry);
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
        let drains = self.drains.clone();
        let deleted = self.homes.is_deleted(&id.seq);
        match self.homes.get_mut(&id.seq) {
            Some(entry) => {
                if let Some(bytes) = entry.cell.raw_bytes() {
                    // A restored region, typed by its first local mapping.
                    let actual = entry.cell.fingerprint();
                    if actual != T::FINGERPRINT {
                        return Err(OpError::WrongType {
                            region: id,
                            expected: T::TYPE_NAME,
                            actual,
                        });
                    }
                    let value = T::decode_region(&bytes)
                        .map_err(|source| OpError::Codec { region: id, source })?;
                    let version = entry.cell.version();
                    let cell = Arc::new(RegionCell::with_version(id, Some(value), version, drains));
                    entry.cell = cell.clone();
                    entry.map_count += 1;
                    if entry.w().serving.is_some() || !entry.w().queue.is_empty() {
                        cell.word().revoke();
                    } else {
                        entry.permit();
                    }
                    debug!(node = %self.node, region = %id, ty = T::TYPE_NAME, "typed a restored region");
                    return Ok((cell, Progress::Done));
                }
                let cell = downcast::<T>(id, &entry.cell)?;
                entry.map_count += 1;
                Ok((cell, Progress::Done))
            }
            None if deleted => Err(OpError::Deleted(id)),
            None => Err(OpError::NoSuchRegion(id)),
        }
    }

    /// Drops one mapping of `id`. A region homed elsewhere that is no longer mapped stays
    /// cached (bounded LRU); when evicted it is flushed to its home.
    pub fn unmap(&mut self, id: RegionId) -> Result<(), OpError> {
        if id.home == self.node {
            let deleted = self.homes.is_deleted(&id.seq);
            return match self.homes.get_mut(&id.seq) {
                Some(entry) => {
                    entry.map_count = entry.map_count.saturating_sub(1);
                    Ok(())
                }
                // Unmapping a deleted region (e.g. dropping its last handle) is fine.
                None if deleted => Ok(()),
                None => Err(OpError::NotMapped(id)),
            };
        }
        let entry = self.cache.get_mut(&id).ok_or(OpError::NotMapped(id))?;
        let count = entry.mappings();
        if count == 0 {
            return Err(OpError::NotMapped(id));
        }
        entry.set_mappings(count - 1);
        if count == 1 {
            self.lru_push(id);
            self.evict_unmapped();
        }
        Ok(())
    }

    /// Starts a read of `id` on the slow path (after [`RegionCell::try_read`] missed), not on
    /// behalf of a transaction ([`PRIORITY_NONE`]).
    pub fn start_read(&mut self, id: RegionId, op: OpId) -> Result<Start, OpError> {
        self.start_access(id, op, AccessMode::Read, PRIORITY_NONE)
    }

    /// Starts a write of `id` on the slow path (after [`RegionCell::try_write`] missed), not on
    /// behalf of a transaction ([`PRIORITY_NONE`]).
    pub fn start_write(&mut self, id: RegionId, op: OpId) -> Result<Start, OpError> {
        self.start_access(id, op, AccessMode::Write, PRIORITY_NONE)
    }

    /// [`start_read`](Self::start_read) on behalf of a transaction with `priority` (lower is
    /// older; see the [module docs](self#priorities-and-wound-wait)).
    pub fn start_read_with(
        &mut self,
        id: RegionId,
        op: OpId,
        priority: u64,
    ) -> Result<Start, OpError> {
        self.start_access(id, op, AccessMode::Read, priority)
    }

    /// [`start_write`](Self::start_write) on behalf of a transaction with `priority` (lower is
    /// older; see the [module docs](self#priorities-and-wound-wait)).
    pub fn start_write_with(
        &mut self,
        id: RegionId,
        op: OpId,
        priority: u64,
    ) -> Result<Start, OpError> {
        self.start_access(id, op, AccessMode::Write, priority)
    }

    fn start_access(
        &mut self,
        id: RegionId,
        op: OpId,
        mode: AccessMode,
        priority: u64,
    ) -> Result<Start, OpError> {
        self.process_drained();
        if id.home == self.node {
            let Some(entry) = self.homes.get(&id.seq) else {
                return Err(self.home_missing(id));
            };
            if entry.cell.raw_bytes().is_some() {
                // Restored and never mapped here: no typed copy to access yet.
                return Err(OpError::NotMapped(id));
            }
            let req = home::Request::access(Requester::Local(op), mode, priority);
            self.home_enqueue(id, req);
        } else {
            self.cache_queue_access(id, op, mode, priority)?;
        }
        Ok(self.take_immediate(op))
    }

    /// If `op` was granted during the call that queued it, return it directly.
    fn take_immediate(&mut self, op: OpId) -> Start {
        let pos = self
            .events
            .iter()
            .position(|e| matches!(e, Event::Granted { op: o, .. } if *o == op));
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
        if entry.deleted() {
            return Err(OpError::Deleted(id));
        }
        entry.w_mut().queue.push_back(LocalOp::Flush(op));
        self.cache_advance(id);
        Ok(self.take_completed(op))
    }

    fn take_completed(&mut self, op: OpId) -> Progress {
        let pos = self.events.iter().position(
            |e| matches!(e, Event::Completed { op: o, result } if *o == op && result.is_ok()),
        );
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
            entry.w_mut().deletes.push_back(Some(op));
        } else {
            return Err(OpError::NotMapped(id));
        }
        self.send(
            id.home,
            Message::Delete {
                region: id,
                committed: false,
            },
        );
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
        if msg.is_transaction() || msg.is_placement() || matches!(msg, Message::ImageFollows { .. })
        {
            return Err(self.violation(
                from,
                None,
                format!("{} is not an engine message", msg.kind_name()),
            ));
        }
        let Some(region) = msg.region() else {
            return Err(self.violation(from, None, "hello on an established link"));
        };
        let result = if region.home == self.node {
            self.home_message(from, region, msg)
        } else {
            self.cache_message(from, region, msg)
        };
        // Work done for this message and not used (the request waits, or was refused) is
        // dropped: nothing of one message's images outlives its handling.
        self.decoded = None;
        self.encoded = None;
        self.evict_unmapped();
        result
    }

    /// Withdraws local operation `op` (an access, map, flush or delete) that has not completed:
    /// afterwards no [`Event`] for `op` is emitted. A queued access leaves its queue (if its
    /// request is already on its way, the grant is kept as a cached copy when it arrives); a
    /// pending map's mapping is undone (as by [`unmap`](Self::unmap)); a flush or delete already
    /// sent still happens, only its completion is suppressed, and so does a request the home is
    /// already serving for `op` (its recalls are out). Cancelling an unknown or finished
    /// operation does nothing; an event already queued for [`poll_event`](Self::poll_event)
    /// is not withdrawn. `id` is the region the operation was started on. Returns whether
    /// `op` was found. Looks at that region's entry only (its queues are bounded by the
    /// operations in flight), whatever the number of regions.
    pub fn cancel(&mut self, id: RegionId, op: OpId) -> bool {
        self.process_drained();
        let found = if id.home == self.node {
            self.home_cancel(id, op)
        } else {
            self.cache_cancel(id, op)
        };
        self.evict_unmapped();
        found
    }

    /// Peer `node` restarted (it came back with a new epoch). Call it before handling any
    /// message of its new incarnation; messages of the old one must not be handled afterwards.
    ///
    /// - As a cache: every copy of a region homed at `node` is dropped (a copy with accesses in
    ///   progress is kept for them, marked stale: nothing hits on it and it is dropped when they
    ///   end); operations waiting on that home (queued accesses, maps, flushes, deletes) fail
    ///   with [`OpError::HomeRestarted`].
    /// - As a home: `node` is forgotten everywhere. A sharer is removed; if it held a region
    ///   exclusively, the home's copy as last installed is the region's value again, and the
    ///   loss is reported ([`Event::CopyLost`], [`EngineStats::lost_copies`]; the home cannot
    ///   tell whether the copy was modified, so every lost exclusive copy counts). A recall
    ///   awaited from `node` counts as acknowledged without data; its queued requests are
    ///   dropped and one being served is finished without an answer.
    pub fn peer_restarted(&mut self, node: NodeId) {
        self.peer_reset(node, PeerReset::Restarted);
    }

    /// The session with `node` was fenced (DESIGN.md §6, rule 3): by this node, because `node`
    /// was silent for longer than the peer timeout, or by `node`, which says so when the two
    /// talk again. Recovery is [`peer_restarted`](Engine::peer_restarted)'s, except that
    /// operations waiting on `node` fail with [`OpError::Fenced`].
    pub fn peer_fenced(&mut self, node: NodeId) {
        self.peer_reset(node, PeerReset::Fenced);
    }

    /// Forgets everything shared with `node` (see [`peer_restarted`](Engine::peer_restarted)
    /// and [`peer_fenced`](Engine::peer_fenced)).
    pub fn peer_reset(&mut self, node: NodeId, cause: PeerReset) {
        self.process_drained();
        debug!(node = %self.node, peer = %node, ?cause, "peer reset");
        if node == self.node {
            return;
        }
        self.cache_peer_reset(node, cause);
        self.home_peer_reset(node, cause);
        self.evict_unmapped();
    }

    /// Whether the home directory of `id` (homed here) says `node` holds its exclusive copy.
    /// For `node == self`: the home holds the region and no remote copy exists. False for a
    /// region not homed here.
    pub fn holds_exclusive(&self, id: RegionId, node: NodeId) -> bool {
        self.home_holds_exclusive(id, node)
    }

    /// At the home of `id`, replaces the home's copy with committed `bytes` (the archive of the
    /// region's value), while a remote node owns the region exclusively (so the home's copy is
    /// stale and unused). Typed regions validate the bytes by decoding them
    /// ([`OpError::Codec`]); a [restored](Self::restore_raw) region not yet typed stores them.
    /// The copy's version is bumped. Fails with [`OpError::InUse`] if a local access is in
    /// progress on the home's copy, and [`OpError::NoSuchRegion`] / [`OpError::Deleted`] if the
    /// region is not homed here.
    pub fn install_master(&mut self, id: RegionId, bytes: &[u8]) -> Result<(), OpError> {
        self.process_drained();
        self.home_install_master(id, bytes)
    }

    /// At the home of `id`: a prepared transaction holds the region until its decision is
    /// known. While held, requests are started (recalls go out) but none is finished, and the
    /// home's own copy admits no hit, so that the decision (its image installed, or its delete
    /// done) comes before anything later sees the region. Every `hold` needs one
    /// [`release_hold`](Self::release_hold). Fails if the region is not homed here.
    pub fn hold(&mut self, id: RegionId) -> Result<(), OpError> {
        self.process_drained();
        self.home_hold(id)
    }

    /// Ends one [`hold`](Self::hold) of `id`; the last one lets the queued requests go on.
    pub fn release_hold(&mut self, id: RegionId) {
        self.process_drained();
        self.home_release_hold(id);
    }

    /// A committed transaction deleted `id`, while this node holds its only copy under the
    /// transaction's write access (or is its home). Call it before that access ends:
    ///
    /// - at the home, the delete is done before any request not yet answered (they then
    ///   learn [`OpError::Deleted`]), as soon as accesses in progress and holds allow;
    /// - at a node caching the region, the copy admits no further hit, later local accesses
    ///   fail with [`OpError::Deleted`], and the home is sent the delete, which goes first
    ///   there too (the sender owns the region exclusively).
    ///
    /// Idempotent; a region already gone is ignored.
    pub fn delete_committed(&mut self, id: RegionId) {
        self.process_drained();
        if id.home == self.node {
            self.home_delete_committed(id);
            return;
        }
        let Some(entry) = self.cache.get_mut(&id) else {
            return;
        };
        if entry.deleted() {
            return;
        }
        entry.set_deleted(true);
        entry.cell.word().revoke();
        // Its ack is still due; nobody waits for it.
        entry.w_mut().deletes.push_back(None);
        self.send(
            id.home,
            Message::Delete {
                region: id,
                committed: true,
            },
        );
        self.cache_advance(id);
    }

    /// Recreates region `id` (homed here) at restart from stored bytes, before any local code
    /// names its Rust type: the entry is `Unowned`, unmapped, version 0. Remote requests are
    /// served from the bytes (checked against `fingerprint`) and returned images replace them;
    /// the first local [`map`](Self::map) checks the fingerprint ([`OpError::WrongType`]) and
    /// decodes the bytes into a typed cell. Local accesses before that fail with
    /// [`OpError::NotMapped`]. Sequence numbers given by [`create`](Self::create) continue
    /// above `id.seq`.
    pub fn restore_raw(
        &mut self,
        id: RegionId,
        fingerprint: u64,
        type_name: String,
        bytes: Vec<u8>,
    ) -> Result<(), RestoreError> {
        if id.home != self.node {
            return Err(RestoreError::NotHome {
                region: id,
                node: self.node,
            });
        }
        if self.homes.contains_key(&id.seq) {
            return Err(RestoreError::Exists(id));
        }
        debug!(node = %self.node, region = %id, ty = %type_name, len = bytes.len(), "restored");
        let len = bytes.len();
        let cell = Arc::new(RawCell::new(id, fingerprint, type_name, bytes));
        let mut entry = HomeEntry::new(cell);
        entry.map_count = 0;
        self.homes.insert(id.seq, entry);
        self.note_image_len(id, len);
        self.next_seq = self.next_seq.max(id.seq.saturating_add(1));
        Ok(())
    }

    /// Creates a region homed here that another node asked for (`Node::create_at`), from its
    /// archived bytes, before any local code names its Rust type: as after
    /// [`restore_raw`](Self::restore_raw), remote requests are served from the bytes and the
    /// first local [`map`](Self::map) checks the fingerprint and decodes them. The bytes are
    /// not decoded here (this node may not know the type): a requester that sent bytes its
    /// own type does not accept learns it at its first access.
    ///
    /// Refused, creating nothing, when the bytes are longer than
    /// [`max_image_len`](EngineConfig::max_image_len) (the region could never be shipped),
    /// the type name is longer than [`MAX_TYPE_NAME_LEN`](crate::wire::MAX_TYPE_NAME_LEN),
    /// or this node already homes [`max_homed_regions`](EngineConfig::max_homed_regions).
    pub fn create_placed(
        &mut self,
        fingerprint: u64,
        type_name: String,
        bytes: Vec<u8>,
    ) -> Result<RegionId, Refusal> {
        if bytes.len() > self.config.max_image_len {
            return Err(Refusal::TooLarge {
                len: bytes.len() as u64,
                max: self.config.max_image_len as u64,
            });
        }
        if type_name.len() > crate::wire::MAX_TYPE_NAME_LEN {
            return Err(Refusal::BadTypeName);
        }
        if self.homes.len() >= self.config.max_homed_regions {
            return Err(Refusal::Full {
                limit: self.config.max_homed_regions as u64,
            });
        }
        let id = RegionId::new(self.node, self.next_seq);
        self.next_seq += 1;
        debug!(node = %self.node, region = %id, ty = %type_name, len = bytes.len(), "created for another node");
        let len = bytes.len();
        let cell = Arc::new(RawCell::new(id, fingerprint, type_name, bytes));
        let mut entry = HomeEntry::new(cell);
        entry.map_count = 0;
        self.homes.insert(id.seq, entry);
        self.note_image_len(id, len);
        Ok(id)
    }

    /// The sequence number the next [`create`](Self::create) will use.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Sets the sequence number the next [`create`](Self::create) will use (at restart, from
    /// the stored state; never below one already in use).
    pub fn set_next_seq(&mut self, seq: u64) {
        self.next_seq = seq;
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
                busy: e.w().serving.is_some(),
                queued: e.w().queue.len(),
                in_progress: e.cell.word().in_progress(),
            })
        } else {
            let e = self.cache.get(&id)?;
            Some(EntrySnapshot::Cache {
                state: e.state(),
                pending: e.pending().is_some(),
                queued: e.w().queue.len(),
                in_progress: e.cell.word().in_progress(),
                recalling: e.w().recall.is_some(),
                deleted: e.deleted(),
            })
        }
    }

    /// Checks that the unmapped LRU and the cache entries agree: every position in the LRU
    /// names an entry nothing maps that records that position, and every entry that records
    /// a position is there (a position lost either way would keep a copy forever or evict a
    /// mapped one). For the simulator.
    #[cfg(any(test, feature = "sim"))]
    pub fn check_unmapped_lru(&self) -> Result<(), String> {
        for (&at, id) in &self.unmapped {
            let Some(e) = self.cache.get(id) else {
                return Err(format!(
                    "LRU position {at} names {id}, which has no cache entry"
                ));
            };
            if e.mappings() != 0 || e.unmapped_at() != at {
                return Err(format!(
                    "LRU position {at} names {id}, whose entry says {:?}",
                    e.meta
                ));
            }
        }
        for e in self.cache.values() {
            let at = e.unmapped_at();
            if at != 0 && self.unmapped.get(&at) != Some(&e.cell.id()) {
                return Err(format!(
                    "{} records LRU position {at}, which the LRU does not have",
                    e.cell.id()
                ));
            }
        }
        Ok(())
    }

    /// Ids of the regions homed here (not deleted).
    pub fn homed_regions(&self) -> Vec<RegionId> {
        let mut v: Vec<_> = self
            .homes
            .seqs()
            .map(|s| RegionId::new(self.node, s))
            .collect();
        v.sort();
        v
    }

    /// Ids of the regions homed elsewhere that this node has an entry for.
    pub fn cached_regions(&self) -> Vec<RegionId> {
        let mut v: Vec<_> = self.cache.ids().collect();
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
