//! The node: crl-core's protocol engine driven over the QUIC [`Transport`], and the
//! handles programs use.
//!
//! A [`Node`] owns one [`Engine`] behind a mutex, a driver task that feeds it received
//! messages, and the transport. Programs get typed [`Handle`]s from [`Node::create`] and
//! [`Node::map`]. [`Handle::start_read`] / [`Handle::start_write`] first try the hit path on
//! the region's local copy (one atomic operation, no lock, no message); only a miss takes the
//! engine lock, queues the operation and waits, bounded by the node's operation timeout.
//!
//! **Order.** The messages an engine call produces are handed to the transport while the
//! engine lock is still held, so two threads can never reorder messages to the same peer: the
//! per-link FIFO the protocol relies on holds end to end.
//!
//! **Bounded waits.** Every wait for a remote answer is bounded by
//! [`NodeConfig::op_timeout`]. On timeout the operation fails with [`Error::TimedOut`], or
//! [`Error::HomeUnreachable`] when there is no connection to the region's home. A grant that
//! arrives after its waiter gave up is dropped, which ends the access at once.
//!
//! **Names.** [`Node::bind`] and [`Node::lookup`] keep a name → region directory in ordinary
//! regions: every node homes one name table (its first region, `r<node>.1`), and a name lives
//! in the table of the member chosen by a hash of the name. Lookups are cached like any read,
//! so a repeated lookup is a local hit. Binding and unbinding are transactions, so names are
//! durable with a data dir.
//!
//! **Placement.** [`Node::create_at`] creates a region homed at another node (the home
//! creates it from the archived bytes and logs it, if it has a data dir, before answering),
//! so programs can keep their regions on `crl-node` servers and only cache them.
//!
//! **Restarts.** With a data dir a node recovers its regions from its log at start (see
//! [`crate::txn`]); in every case it starts with a new epoch, and its peers forget what they
//! knew of the previous incarnation (`Engine::peer_restarted`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::durable::{DurableStore, LogRecord, StoreConfig};
use crl_core::engine::{
    Access, AccessMode, Engine, EngineConfig, EngineStats, Event, OpError, OpId, Progress,
    ReadGuard, RegionCell, Start, WriteGuard,
};
use crl_core::liveness::LivenessConfig;
use crl_core::wire::Message;
use crl_core::{NodeId, Region, RegionId};
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, oneshot, watch};
use tracing::{Instrument, debug, info, info_span, warn};

mod commits;
mod driver;
pub(crate) mod locks;
mod placement;

use driver::drive;
pub use placement::MAX_PENDING_PLACEMENTS;
use placement::Placements;

use crate::config::{ConfigError, NodeConfig, TxFault};
use crate::error::Error;
use crate::hits::HitCounter;
use crate::liveness::{LeaseTable, LivenessDriver, LivenessStats};
use crate::transport::{PeerStats, Room, Transport, TransportError, TransportSettings};
pub(crate) use commits::Durability;
use commits::IN_DOUBT_RESEND;
use locks::{LockTable, TxShared, next_priority};

/// Most slow-path operations a node admits at once; this bounds the transport's queues.
const MAX_OPS_IN_FLIGHT: usize = 4096;

/// A node's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStats {
    /// This node.
    pub node: NodeId,
    /// Accesses (`start_read`, `start_write`, `try_read`) served by the local copy with no
    /// message: hits. Counted per thread, so counting costs the hit path no shared write.
    pub hits: u64,
    /// The protocol engine's counters (misses, messages, recalls, evictions).
    pub engine: EngineStats,
    /// Traffic per peer.
    pub peers: Vec<PeerStats>,
    /// Protocol violations by peers (each closed the peer's connection).
    pub violations: u64,
    /// Transactions run on this node.
    pub tx: TxStats,
    /// Restarts of peers this node noticed (each dropped what it knew of the old incarnation).
    pub peer_restarts: u64,
    /// This node's epoch (its incarnation: bumped at every start).
    pub epoch: u64,
    /// Fences and lease waits (all zero without a peer timeout).
    pub liveness: LivenessStats,
    /// [`Node::create_at`] calls waiting for their homes' answers now.
    pub placements_waiting: usize,
}

enum Outcome {
    Granted(Access),
    Done(Result<(), OpError>),
}

struct EngineState {
    engine: Engine,
    waiters: HashMap<OpId, oneshot::Sender<Outcome>>,
    /// The node's log, if it has a data dir: deletes of regions homed here are recorded.
    store: Option<DurableStore>,
}

impl EngineState {
    /// Hands the engine's output to the transport (in order) and to the waiters. Called with
    /// the engine lock held.
    fn flush(&mut self, transport: &Transport, locks: &LockTable) {
        while let Some(t) = self.engine.poll_transmit() {
            // A refusal (an oversized message) is logged and counted by the transport.
            let _ = transport.send(t.to, t.msg);
        }
        while let Some(event) = self.engine.poll_event() {
            let (op, outcome) = match event {
                Event::Granted { op, access } => (op, Outcome::Granted(access)),
                Event::Completed { op, result } => (op, Outcome::Done(result)),
                Event::Wanted { region, priority } => {
                    // Wound-wait: an older request waits for this node's accesses.
                    locks.wound_younger(region, priority);
                    continue;
                }
                Event::CopyLost { region } => {
                    warn!(%region, "a restarted peer held this region modified: its unlogged changes are lost");
                    continue;
                }
                Event::Deleted { region } => {
                    // Written with the next group commit (the delete is answered now: a crash
                    // of this home before that fsync brings the region back; a transaction's
                    // delete is in its commit records already).
                    if let Some(store) = &self.store {
                        store.append(
                            LogRecord::Delete { region },
                            Box::new(move |res| {
                                if let Err(e) = res {
                                    warn!(%region, "logging a delete failed: {e}");
                                }
                            }),
                        );
                    }
                    continue;
                }
                _ => continue,
            };
            // A waiter that gave up (timeout) is gone: dropping a grant ends the access.
            if let Some(tx) = self.waiters.remove(&op) {
                let _ = tx.send(outcome);
            }
        }
    }
}

/// The name directory shard every node homes as its first region.
#[derive(crl_core::Region, Clone, Debug, Default)]
#[region(crate = ::crl_core)]
pub struct NameTable {
    names: Vec<(String, RegionId)>,
}

struct NodeInner {
    id: NodeId,
    /// Accesses served by the local copy (hits), counted per thread.
    hits: HitCounter,
    cluster_id: u64,
    state: Mutex<EngineState>,
    transport: Transport,
    members: Vec<NodeId>,
    next_op: AtomicU64,
    drained: Arc<Notify>,
    admission: Semaphore,
    op_timeout: Duration,
    violations: AtomicU64,
    peer_restarts: AtomicU64,
    epoch: u64,
    name_tables: Mutex<HashMap<NodeId, InternalHandle<NameTable>>>,
    /// The program's `Node` values (see [`Node`]).
    users: AtomicUsize,
    /// Set by the first stop because the program dropped everything.
    stop_requested: AtomicBool,
    shutdown: watch::Sender<bool>,
    locks: LockTable,
    last_priority: AtomicU64,
    tx_counters: TxCounters,
    tx_max_attempts: u32,
    tx_fault: Option<TxFault>,
    /// The write-ahead log and two-phase commit state (with a data dir).
    durability: Option<Arc<Durability>>,
    /// Set while a restarted node resolves its in-doubt transactions: protocol messages are
    /// held back until then.
    recovering: AtomicBool,
    recovered: Notify,
    /// What recovering the durable store did (with a data dir).
    recovery_report: Option<crate::durable::RecoveryReport>,
    /// Leases and failure detection (`None` without a peer timeout).
    liveness: Option<Arc<LivenessDriver>>,
    /// The lease words the hit path reads (the liveness task's; empty without it: every
    /// lease valid).
    leases: LeaseTable,
    /// Creates this node asked other homes for, not answered yet.
    placements: Placements,
    /// The largest region image one message carries.
    max_image_len: usize,
}

/// How a transaction ended, for statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Transactions committed.
    pub committed: u64,
    /// Attempts aborted and retried (wounded or conflicting).
    pub retried: u64,
    /// Transactions aborted by the closure's own error.
    pub aborted: u64,
    /// Wounds dealt by this node's lock table.
    pub wounds: u64,
}

/// Counters of [`TxStats`].
#[derive(Default)]
pub(crate) struct TxCounters {
    pub(crate) committed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) aborted: AtomicU64,
}

/// A running crl node. Cheap to clone; every clone drives the same node.
///
/// The node runs until [`shutdown`](Node::shutdown) or until the program drops the last of
/// its clones, handles and transactions (as a quinn endpoint closes when dropped): then it
/// stops in the background, its connections close and its address is free again.
pub struct Node {
    /// Every `Node` value counts in `inner.users` (the program's clones, and those its
    /// handles and transactions hold), except those the node keeps for itself
    /// ([`InternalNode`]); the count reaching 0 stops the node. One pointer, not two: a
    /// handle is two words (issue 10).
    inner: Arc<NodeInner>,
}

impl Clone for Node {
    fn clone(&self) -> Self {
        // As `Arc::clone`: a new reference is made from an existing one, so no ordering is
        // needed.
        self.inner.users.fetch_add(1, Ordering::Relaxed);
        Node {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.inner.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            stop_unused(&self.inner);
        }
    }
}

/// Stops the node once the program's last `Node` (or handle, or transaction) is dropped.
fn stop_unused(inner: &Arc<NodeInner>) {
    if *inner.shutdown.borrow() || inner.stop_requested.swap(true, Ordering::AcqRel) {
        return;
    }
    let node = InternalNode::from_inner(inner.clone());
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            debug!(node = %node.id(), "every handle was dropped: stopping the node");
            rt.spawn(async move { node.shutdown().await });
        }
        // No runtime to finish on: stop at once, without waiting for the peers to
        // acknowledge the close.
        Err(_) => node.stop_now(),
    }
}

/// The node as it keeps itself (its tasks, its name tables): a [`Node`] whose count is given
/// back while this holds it, so what the node keeps does not keep it running.
pub(crate) struct InternalNode(Node);

impl InternalNode {
    /// Takes `node` out of the program's count.
    fn new(node: Node) -> Self {
        // No stop is due here: `node` was cloned just before, from a program's node that
        // still lives (`Node::internal`: the count stays above 0) or from an internal one
        // (`clone`), or the count was raised for it (`from_inner`): either way the count
        // returns to what it was before the clone.
        node.inner.users.fetch_sub(1, Ordering::Relaxed);
        InternalNode(node)
    }

    fn from_inner(inner: Arc<NodeInner>) -> Self {
        inner.users.fetch_add(1, Ordering::Relaxed);
        InternalNode::new(Node { inner })
    }
}

impl Clone for InternalNode {
    fn clone(&self) -> Self {
        InternalNode::new(self.0.clone())
    }
}

impl Drop for InternalNode {
    fn drop(&mut self) {
        // Given back before the inner `Node` drops and takes it again: a net change of 0
        // (which stops the node only if the program holds nothing of it, as it should).
        self.0.inner.users.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::ops::Deref for InternalNode {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.0
    }
}

/// A handle the node keeps for itself (a name table), out of the program's count as
/// [`InternalNode`] is.
struct InternalHandle<T: Region>(Handle<T>);

impl<T: Region> InternalHandle<T> {
    fn new(handle: Handle<T>) -> Self {
        // No stop is due here, as in `InternalNode::new`: the handle was made just before,
        // and its node's count returns to what it was before.
        handle.node.inner.users.fetch_sub(1, Ordering::Relaxed);
        InternalHandle(handle)
    }
}

impl<T: Region> Drop for InternalHandle<T> {
    fn drop(&mut self) {
        self.0.node.inner.users.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts a node: binds `config.listen`, starts the transport and the driver, and creates
    /// this node's name table. Must be called inside a tokio runtime.
    pub async fn start(config: NodeConfig) -> Result<Node, Error> {
        let socket = std::net::UdpSocket::bind(config.listen).map_err(TransportError::Endpoint)?;
        Node::start_with_socket(config, socket).await
    }

    /// Starts a node on an already bound UDP socket (for example one bound to port 0).
    pub async fn start_with_socket(
        config: NodeConfig,
        socket: std::net::UdpSocket,
    ) -> Result<Node, Error> {
        let runtime = quinn::default_runtime()
            .ok_or_else(|| TransportError::Endpoint(std::io::Error::other("no async runtime")))?;
        let socket = runtime
            .wrap_udp_socket(socket)
            .map_err(TransportError::Endpoint)?;
        Node::start_with_abstract_socket(config, socket).await
    }

    /// Starts a node on any [`quinn::AsyncUdpSocket`], for example a
    /// [`FaultySocket`](crate::fault::FaultySocket) that cuts the node off on command.
    pub async fn start_with_abstract_socket(
        config: NodeConfig,
        socket: Arc<dyn quinn::AsyncUdpSocket>,
    ) -> Result<Node, Error> {
        let id = config.node;
        if let Some(&too_large) = config
            .peers
            .keys()
            .chain([&id])
            .find(|n| n.0 > crate::config::MAX_NODE_ID)
        {
            return Err(ConfigError::NodeIdTooLarge {
                file: String::new(),
                id: too_large.0,
                max: crate::config::MAX_NODE_ID,
            }
            .into());
        }
        let vote_timeout = config.op_timeout;
        // Recover first: the epoch goes into every hello.
        let (durability, recovered) = match &config.data_dir {
            Some(dir) => {
                let config = StoreConfig::new(dir);
                let (store, rec) = tokio::task::spawn_blocking(move || DurableStore::open(config))
                    .await
                    .map_err(|e| {
                        Error::ProtocolViolation(format!("store recovery panicked: {e}"))
                    })??;
                info!(
                    node = %id,
                    epoch = rec.epoch,
                    regions = rec.regions.len(),
                    log_records = rec.report.log_records,
                    log_bytes = rec.report.log_bytes,
                    cut_bytes = rec.report.cut_bytes,
                    in_doubt = rec.in_doubt.len(),
                    "recovered in {:?}",
                    rec.report.elapsed
                );
                (
                    Some(Arc::new(Durability::new(store, id, vote_timeout))),
                    Some(rec),
                )
            }
            None => (None, None),
        };
        let epoch = match &durability {
            Some(d) => d.epoch(),
            None => {
                // Without a log every start is a new incarnation, and epochs must only grow
                // (peers refuse an older one as a zombie): the wall clock in nanoseconds.
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            }
        };
        let settings = TransportSettings {
            cluster_id: config.cluster_id,
            connect_timeout: config.connect_timeout,
            max_frame_len: config.max_frame_len,
            max_message_len: config
                .max_region_len
                .saturating_add(crl_core::engine::MESSAGE_OVERHEAD),
            max_unacked_bytes: config.send_buffer_bytes,
            epoch,
            silence_on_overflow: config.peer_timeout.is_some(),
        };
        let (transport, inbound) = Transport::start_with_abstract_socket(
            &config.identity,
            socket,
            config.peers.clone(),
            settings,
        )?;
        let drained = Arc::new(Notify::new());
        let wake = drained.clone();
        let engine_config = EngineConfig::default()
            .with_unmapped_capacity(config.unmapped_capacity)
            .with_max_message_len(
                config
                    .max_region_len
                    .saturating_add(crl_core::engine::MESSAGE_OVERHEAD),
            )
            .with_on_drain(Arc::new(move || wake.notify_one()));
        let max_image_len = engine_config.max_image_len;
        let mut engine = Engine::new(id, engine_config);
        let mut has_name_table = false;
        let mut in_doubt = Vec::new();
        let mut coordinating = Vec::new();
        let recovery_report = recovered.as_ref().map(|r| r.report.clone());
        if let Some(rec) = recovered {
            // A fresh store reports the smallest safe next id (2); this node's first region,
            // its name table, takes 1.
            if !rec.regions.is_empty() {
                engine.set_next_seq(rec.next_seq);
            }
            for r in rec.regions {
                has_name_table |= r.region == name_table_id(id);
                engine
                    .restore_raw(r.region, r.fingerprint, r.type_name, r.bytes)
                    .map_err(|e| Error::ProtocolViolation(format!("restoring a region: {e}")))?;
            }
            in_doubt = rec.in_doubt;
            coordinating = rec.coordinating;
        }
        let recovering = !in_doubt.is_empty();
        if let Some(d) = &durability {
            d.recovered(in_doubt, coordinating);
        }
        let mut members: Vec<NodeId> = config.peers.keys().copied().chain([id]).collect();
        members.sort();
        let (shutdown, _) = watch::channel(false);
        let liveness = config.peer_timeout.map(|t| {
            Arc::new(LivenessDriver::new(
                LivenessConfig::new(t),
                config.peers.keys().copied(),
            ))
        });
        if let Some(l) = &liveness {
            tokio::spawn(
                l.clone()
                    .run(transport.clone(), shutdown.subscribe())
                    .instrument(info_span!("liveness", node = %id)),
            );
        }
        let inner = Arc::new(NodeInner {
            hits: HitCounter::new(),
            id,
            cluster_id: config.cluster_id,
            state: Mutex::new(EngineState {
                engine,
                waiters: HashMap::new(),
                store: durability.as_ref().map(|d| d.store().clone()),
            }),
            transport,
            members,
            next_op: AtomicU64::new(1),
            drained,
            admission: Semaphore::new(MAX_OPS_IN_FLIGHT),
            op_timeout: config.op_timeout,
            violations: AtomicU64::new(0),
            peer_restarts: AtomicU64::new(0),
            epoch,
            name_tables: Mutex::new(HashMap::new()),
            users: AtomicUsize::new(1),
            stop_requested: AtomicBool::new(false),
            shutdown,
            locks: LockTable::default(),
            last_priority: AtomicU64::new(0),
            tx_counters: TxCounters::default(),
            tx_max_attempts: config.tx_max_attempts,
            tx_fault: config.tx_fault,
            durability,
            recovering: AtomicBool::new(recovering),
            recovered: Notify::new(),
            recovery_report,
            leases: liveness
                .as_ref()
                .map(|l| l.leases().clone())
                .unwrap_or_default(),
            liveness,
            placements: Placements::default(),
            max_image_len,
        });
        // The program's (the count starts at 1); what the node keeps itself (tasks, name
        // tables) is internal and does not keep it running.
        let node = Node { inner };
        let span = info_span!("node", node = %id);
        tokio::spawn(drive(node.internal(), inbound).instrument(span.clone()));
        if node.inner.durability.is_some() {
            tokio::spawn(resend_decisions(node.internal()).instrument(span));
        }
        // Peers learn the (new) epoch now and drop what they knew of an earlier incarnation.
        node.inner.transport.announce();
        // A start that fails from here on stops what it started (tasks, socket, store lock).
        if let Err(e) = node.finish_start(recovering, has_name_table, epoch).await {
            warn!(node = %id, "start failed: {e}");
            node.shutdown().await;
            return Err(e);
        }
        Ok(node)
    }

    /// The end of a start: in-doubt transactions resolved, the name table in place.
    async fn finish_start(
        &self,
        recovering: bool,
        has_name_table: bool,
        epoch: u64,
    ) -> Result<(), Error> {
        let (node, id) = (self, self.inner.id);
        if recovering {
            node.resolve_in_doubt().await?;
        }
        let table = if has_name_table {
            node.map::<NameTable>(name_table_id(id)).await?
        } else {
            let t = node.create(NameTable::default()).await?;
            debug_assert_eq!(t.id(), name_table_id(id));
            if node.inner.durability.is_none() {
                // Without a log, nothing records which region ids earlier incarnations used,
                // and peers may still hold copies of those regions until they learn of this
                // restart: never reuse an id. Epochs are wall-clock nanoseconds and a node
                // creates fewer than one region per nanosecond, so numbering from the epoch
                // stays above every id an earlier incarnation gave out.
                node.inner.state.lock().engine.set_next_seq(epoch.max(2));
            }
            t
        };
        node.inner
            .name_tables
            .lock()
            .insert(id, InternalHandle::new(table));
        Ok(())
    }

    /// Whether `other` drives the same node (not merely one with the same id).
    pub(crate) fn same_node(&self, other: &Node) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Resolves once the node has been told to stop (by `shutdown`, or when the program
    /// dropped its last handle).
    pub(crate) async fn stopped(&self) {
        let mut stop = self.inner.shutdown.subscribe();
        let _ = stop.wait_for(|&s| s).await;
    }

    /// The same node, out of the program's count (for what the node keeps itself).
    pub(crate) fn internal(&self) -> InternalNode {
        InternalNode::new(self.clone())
    }

    /// After a restart: asks the coordinators of the transactions prepared here what they
    /// decided, until none is in doubt (bounded), then lets protocol messages in.
    async fn resolve_in_doubt(&self) -> Result<(), Error> {
        let d = self.inner.durability.clone().expect("durable node");
        let limit = self.inner.op_timeout * 6;
        let started = std::time::Instant::now();
        loop {
            let pending = d.in_doubt();
            if pending.is_empty() {
                break;
            }
            if started.elapsed() > limit {
                return Err(Error::InDoubt {
                    count: pending.len(),
                    after: limit,
                });
            }
            for (txid, coordinator) in pending {
                self.send(coordinator, Message::TxInquire { txid });
            }
            tokio::time::sleep(IN_DOUBT_RESEND).await;
        }
        self.inner.recovering.store(false, Ordering::Release);
        self.inner.recovered.notify_one();
        info!(node = %self.inner.id, "in-doubt transactions resolved in {:?}", started.elapsed());
        Ok(())
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The id of this node's cluster (carried in every hello).
    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id
    }

    /// The address this node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.transport.local_addr().expect("endpoint address")
    }

    /// What recovering this node's durable store did when it started (records replayed,
    /// bytes, a torn tail cut, time); `None` without a data dir.
    pub fn recovery_report(&self) -> Option<crate::durable::RecoveryReport> {
        self.inner.recovery_report.clone()
    }

    /// Creates a region homed at this node, holding `value`.
    ///
    /// With a data dir the creation is logged (and fsynced) before this returns, so the region
    /// survives a restart with these contents. A value whose encoding is over
    /// [`NodeConfig::max_region_len`](crate::NodeConfig::max_region_len) is refused with
    /// [`Error::RegionTooLarge`]: it could never be shipped.
    pub async fn create<T: Region>(&self, value: T) -> Result<Handle<T>, Error> {
        self.check_running()?;
        let encoded = value.encode_region()?;
        if encoded.len() > self.inner.max_image_len {
            return Err(Error::RegionTooLarge {
                len: encoded.len() as u64,
                max: self.inner.max_image_len as u64,
            });
        }
        let len = encoded.len();
        let bytes = self.inner.durability.is_some().then_some(encoded);
        let cell = {
            let mut st = self.inner.state.lock();
            let cell = st.engine.create(value);
            // So that even its first request is encoded beside the engine if it is big.
            st.engine.note_encoded_len(cell.id(), len);
            cell
        };
        let handle = Handle::new(self.clone(), cell);
        if let (Some(d), Some(bytes)) = (&self.inner.durability, bytes) {
            d.log_create(handle.id(), T::FINGERPRINT, T::TYPE_NAME, bytes)
                .await
                .map_err(|e| Error::LogFailed(e.to_string()))?;
        }
        Ok(handle)
    }

    /// Maps region `id` as a `T`: checks with its home that it exists with this type (unless a
    /// copy is cached here already). The first access fetches the data.
    pub async fn map<T: Region>(&self, id: RegionId) -> Result<Handle<T>, Error> {
        let mut mapped = None;
        let outcome = self
            .run_op("map", Room::Request, id, |engine, op| {
                let (cell, progress) = engine.map::<T>(id, op)?;
                mapped = Some(cell);
                Ok((progress == Progress::Done).then_some(Outcome::Done(Ok(()))))
            })
            .await?;
        let cell = mapped.expect("map returned a cell");
        match outcome {
            Outcome::Done(Ok(())) => Ok(Handle::new(self.clone(), cell)),
            Outcome::Done(Err(e)) => Err(e.into()),
            Outcome::Granted(_) => {
                Err(Error::ProtocolViolation("map answered with a grant".into()))
            }
        }
    }

    /// Deletes region `id` everywhere. Later accesses on any node fail with
    /// [`Error::Deleted`]. Deleting a deleted region succeeds. A home with a data dir logs the
    /// delete with its next group commit, after answering (a crash in between can bring the
    /// region back); [`Tx::delete`](crate::txn::Tx::delete) is durable when its commit
    /// returns.
    pub async fn delete(&self, id: RegionId) -> Result<(), Error> {
        let outcome = self
            .run_op("delete", Room::Request, id, |engine, op| {
                Ok((engine.delete(id, op)? == Progress::Done).then_some(Outcome::Done(Ok(()))))
            })
            .await?;
        done(outcome)
    }

    /// Binds `name` to region `id` in the cluster's name directory (a transaction: durable
    /// with a data dir). Binding a name again to
    /// the same region succeeds; to another region fails with [`Error::NameTaken`].
    pub async fn bind(&self, name: &str, id: RegionId) -> Result<(), Error> {
        let table = self.name_table(name).await?;
        self.transaction(async |tx| {
            let mut w = tx.write(&table).await?;
            match w.names.iter().find(|(n, _)| n == name) {
                Some((_, bound)) if *bound == id => Ok(()),
                Some((_, bound)) => Err(Error::NameTaken {
                    name: name.to_owned(),
                    bound: *bound,
                }),
                None => {
                    w.names.push((name.to_owned(), id));
                    Ok(())
                }
            }
        })
        .await
    }

    /// The region bound to `name`.
    pub async fn lookup(&self, name: &str) -> Result<RegionId, Error> {
        let table = self.name_table(name).await?;
        let r = table.start_read().await?;
        r.names
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
            .ok_or_else(|| Error::NameNotFound(name.to_owned()))
    }

    /// Removes the binding of `name` (if any).
    pub async fn unbind(&self, name: &str) -> Result<(), Error> {
        let table = self.name_table(name).await?;
        self.transaction(async |tx| {
            tx.write(&table).await?.names.retain(|(n, _)| n != name);
            Ok(())
        })
        .await
    }

    async fn name_table(&self, name: &str) -> Result<Handle<NameTable>, Error> {
        let members = &self.inner.members;
        let shard = members[(fnv1a(name.as_bytes()) % members.len() as u64) as usize];
        if let Some(h) = self.inner.name_tables.lock().get(&shard) {
            return Ok(h.0.clone());
        }
        let h = self.map::<NameTable>(name_table_id(shard)).await?;
        Ok(self
            .inner
            .name_tables
            .lock()
            .entry(shard)
            .or_insert_with(|| InternalHandle::new(h))
            .0
            .clone())
    }

    /// Test hook: closes the connections `peer` opened to this node, as a broken link would
    /// (the peer reconnects and its session re-sends what was not acknowledged).
    #[doc(hidden)]
    pub fn break_connections_from(&self, peer: NodeId) {
        self.inner
            .transport
            .close_peer(peer, "closed by a test (break_connections_from)");
    }

    /// Counters: protocol engine, traffic per peer, violations.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            node: self.inner.id,
            hits: self.inner.hits.total(),
            engine: self.inner.state.lock().engine.stats().clone(),
            peers: self.inner.transport.peer_stats(),
            violations: self.inner.violations.load(Ordering::Relaxed),
            tx: TxStats {
                committed: self.inner.tx_counters.committed.load(Ordering::Relaxed),
                retried: self.inner.tx_counters.retried.load(Ordering::Relaxed),
                aborted: self.inner.tx_counters.aborted.load(Ordering::Relaxed),
                wounds: self.inner.locks.wounds(),
            },
            peer_restarts: self.inner.peer_restarts.load(Ordering::Relaxed),
            epoch: self.inner.epoch,
            liveness: self
                .inner
                .liveness
                .as_ref()
                .map(|l| l.stats())
                .unwrap_or_default(),
            placements_waiting: self.inner.placements.waiting(),
        }
    }

    /// Stops the node: pending and later operations fail with [`Error::ShutDown`], connections
    /// close. Copies held only here are lost (plain writes are not durable).
    pub async fn shutdown(&self) {
        self.stop_local();
        self.inner.transport.shutdown().await;
        if let Some(d) = &self.inner.durability {
            d.store().close();
        }
    }

    /// What [`shutdown`](Self::shutdown) does, without a runtime: the connections are closed
    /// without waiting for the peers to acknowledge.
    fn stop_now(&self) {
        self.stop_local();
        self.inner.transport.close_now();
        if let Some(d) = &self.inner.durability {
            d.store().close();
        }
    }

    /// Fails pending and later operations and revokes every local access.
    fn stop_local(&self) {
        self.inner.shutdown.send_replace(true);
        self.inner.admission.close();
        // Dropped outside the lock: the handles unmap through the engine.
        let tables = std::mem::take(&mut *self.inner.name_tables.lock());
        drop(tables);
        let mut st = self.inner.state.lock();
        st.waiters.clear();
        st.engine.revoke_all();
    }

    /// Sends `msg` to `to` in order with the engine's own messages.
    pub(crate) fn send(&self, to: NodeId, msg: Message) {
        let _st = self.inner.state.lock();
        // A refusal (an oversized message) is logged and counted by the transport.
        let _ = self.inner.transport.send(to, msg);
    }

    /// Runs `f` on the engine under its lock, sends what the engine produced, then runs
    /// `then` on `f`'s result and the transport, still under the lock (what `then` sends
    /// follows the engine's messages, and precedes everything sent after the lock).
    pub(crate) fn with_engine_then<R, S>(
        &self,
        f: impl FnOnce(&mut Engine) -> R,
        then: impl FnOnce(R, &Transport) -> S,
    ) -> S {
        let mut st = self.inner.state.lock();
        let r = f(&mut st.engine);
        st.flush(&self.inner.transport, &self.inner.locks);
        then(r, &self.inner.transport)
    }

    /// Runs `f` on the engine (under its lock) and sends what it produced.
    pub(crate) fn with_engine<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> R {
        self.with_engine_then(f, |r, _| r)
    }

    pub(crate) fn durability(&self) -> Option<&Arc<Durability>> {
        self.inner.durability.as_ref()
    }

    pub(crate) fn op_timeout(&self) -> Duration {
        self.inner.op_timeout
    }

    pub(crate) fn placements(&self) -> &Placements {
        &self.inner.placements
    }

    pub(crate) fn max_image_len(&self) -> usize {
        self.inner.max_image_len
    }

    /// Whether `peer` is a member this node can talk to.
    pub(crate) fn knows_peer(&self, peer: NodeId) -> bool {
        self.inner.transport.knows(peer)
    }

    /// Waits until `peer`'s retransmit buffer has room (see [`Transport::wait_for_room`]).
    pub(crate) async fn wait_for_room(&self, peer: NodeId, room: Room) {
        self.inner.transport.wait_for_room(peer, room).await
    }

    pub(crate) fn locks(&self) -> &LockTable {
        &self.inner.locks
    }

    pub(crate) fn next_tx_priority(&self) -> u64 {
        next_priority(&self.inner.last_priority, self.inner.id)
    }

    pub(crate) fn tx_max_attempts(&self) -> u32 {
        self.inner.tx_max_attempts
    }

    pub(crate) fn tx_fault(&self) -> Option<TxFault> {
        self.inner.tx_fault
    }

    pub(crate) fn tx_counters(&self) -> &TxCounters {
        &self.inner.tx_counters
    }

    /// Creates a region without logging it (a transaction logs its creates at commit).
    pub(crate) fn create_volatile<T: Region>(&self, value: T) -> Result<Handle<T>, Error> {
        self.check_running()?;
        let cell = self.inner.state.lock().engine.create(value);
        Ok(Handle::new(self.clone(), cell))
    }

    /// A transaction's access after a miss: like [`Self::run_op`], but given up (with
    /// [`Error::Wounded`]) as soon as the transaction is wounded. While it waits it wounds,
    /// every few milliseconds, the younger local holders of the region.
    pub(crate) async fn run_access(
        &self,
        region: RegionId,
        mode: AccessMode,
        tx: &Arc<TxShared>,
    ) -> Result<Access, Error> {
        let what = match mode {
            AccessMode::Read => "read",
            AccessMode::Write => "write",
        };
        let deadline = tokio::time::Instant::now() + self.inner.op_timeout;
        loop {
            let access = self.run_access_once(what, region, mode, tx).await?;
            if self.lease_valid(region.home) {
                return Ok(access);
            }
            // Granted on a copy whose lease lapsed: not usable until the home renews it.
            drop(access);
            self.wait_for_lease(what, region, deadline).await?;
        }
    }

    async fn run_access_once(
        &self,
        what: &'static str,
        region: RegionId,
        mode: AccessMode,
        tx: &Arc<TxShared>,
    ) -> Result<Access, Error> {
        let priority = tx.priority;
        let op_id = AtomicU64::new(0);
        let op_future = self.run_op(what, Room::Request, region, |engine, op| {
            op_id.store(op, Ordering::Relaxed);
            let start = match mode {
                AccessMode::Read => engine.start_read_with(region, op, priority)?,
                AccessMode::Write => engine.start_write_with(region, op, priority)?,
            };
            Ok(granted(start))
        });
        tokio::pin!(op_future);
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            tokio::select! {
                r = &mut op_future => break r?,
                _ = tx.wounded() => {
                    let op = op_id.load(Ordering::Relaxed);
                    let mut st = self.inner.state.lock();
                    st.waiters.remove(&op);
                    st.engine.cancel(region, op);
                    st.flush(&self.inner.transport, &self.inner.locks);
                    return Err(Error::Wounded);
                }
                _ = tick.tick() => {
                    self.inner.locks.wound_younger(region, priority);
                }
            }
        };
        match outcome {
            Outcome::Granted(access) => Ok(access),
            Outcome::Done(r) => {
                Err(r
                    .err()
                    .map(Error::from)
                    .unwrap_or(Error::ProtocolViolation(format!(
                        "{what} completed without access"
                    ))))
            }
        }
    }

    /// Whether this node may use its copies of `home`'s regions now (always for its own,
    /// and without a peer timeout).
    #[inline]
    pub(crate) fn lease_valid(&self, home: NodeId) -> bool {
        self.inner.leases.valid(home)
    }

    /// Waits (until `deadline`) for the lease on the home of `region` to be renewed.
    async fn wait_for_lease(
        &self,
        what: &'static str,
        region: RegionId,
        deadline: tokio::time::Instant,
    ) -> Result<(), Error> {
        self.check_running()?;
        let Some(l) = &self.inner.liveness else {
            return Ok(());
        };
        match tokio::time::timeout_at(deadline, l.wait_for_lease(region.home)).await {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::HomeUnreachable {
                what,
                region,
                home: region.home,
                after: self.inner.op_timeout,
            }),
        }
    }

    pub(crate) fn check_running(&self) -> Result<(), Error> {
        if *self.inner.shutdown.borrow() {
            Err(Error::ShutDown)
        } else {
            Ok(())
        }
    }

    /// Runs a slow-path operation: `start` is called with the engine lock held and returns
    /// the outcome if it is immediate; otherwise waits (bounded) for the engine's event.
    async fn run_op(
        &self,
        what: &'static str,
        room: Room,
        region: RegionId,
        start: impl FnOnce(&mut Engine, OpId) -> Result<Option<Outcome>, OpError>,
    ) -> Result<Outcome, Error> {
        self.check_running()?;
        if region.home != self.inner.id && !self.inner.transport.knows(region.home) {
            return Err(Error::UnknownNode(region.home));
        }
        let deadline = tokio::time::Instant::now() + self.inner.op_timeout;
        let _permit = self
            .inner
            .admission
            .acquire()
            .await
            .map_err(|_| Error::ShutDown)?;
        if region.home != self.inner.id {
            // A home that does not acknowledge what it is sent slows its clients down
            // instead of growing this node's retransmit buffer.
            let room = self.inner.transport.wait_for_room(region.home, room);
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(Error::HomeUnreachable {
                    what,
                    region,
                    home: region.home,
                    after: self.inner.op_timeout,
                });
            }
        }
        let op = self.inner.next_op.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.inner.state.lock();
            let started = start(&mut st.engine, op);
            match started {
                Ok(Some(outcome)) => {
                    st.flush(&self.inner.transport, &self.inner.locks);
                    return Ok(outcome);
                }
                Ok(None) => {
                    st.waiters.insert(op, tx);
                    st.flush(&self.inner.transport, &self.inner.locks);
                }
                Err(e) => {
                    st.flush(&self.inner.transport, &self.inner.locks);
                    return Err(e.into());
                }
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err(Error::ShutDown),
            Err(_) => {
                {
                    let mut st = self.inner.state.lock();
                    st.waiters.remove(&op);
                    st.engine.cancel(region, op);
                    st.flush(&self.inner.transport, &self.inner.locks);
                }
                let after = self.inner.op_timeout;
                let home = region.home;
                if home != self.inner.id && !self.inner.transport.is_connected(home) {
                    Err(Error::HomeUnreachable {
                        what,
                        region,
                        home,
                        after,
                    })
                } else {
                    Err(Error::TimedOut {
                        what,
                        region,
                        after,
                    })
                }
            }
        }
    }

    fn unmap(&self, id: RegionId) {
        let mut st = self.inner.state.lock();
        if let Err(e) = st.engine.unmap(id) {
            warn!(node = %self.inner.id, region = %id, "unmap: {e}");
        }
        st.flush(&self.inner.transport, &self.inner.locks);
    }
}

fn done(outcome: Outcome) -> Result<(), Error> {
    match outcome {
        Outcome::Done(r) => r.map_err(Error::from),
        Outcome::Granted(_) => Err(Error::ProtocolViolation(
            "an access granted to a non-access operation".into(),
        )),
    }
}

pub(crate) fn name_table_id(node: NodeId) -> RegionId {
    RegionId::new(node, 1)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Re-sends, every second, the decisions of committed two-phase transactions that some
/// participant has not confirmed (it may have been down), and the inquiries of in-doubt ones.
async fn resend_decisions(node: InternalNode) {
    let Some(d) = node.inner.durability.clone() else {
        return;
    };
    let mut shutdown = node.inner.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        d.resend(&node);
    }
}

/// A mapped region. Cheap to clone; the region is unmapped when the last handle on it is
/// dropped.
///
/// A handle has no allocation of its own (issue 10: a million mapped regions): the region's
/// cell counts the handles on it ([`RegionCell::add_handle`]), and the node maps the region
/// once for all of them.
pub struct Handle<T: Region> {
    node: Node,
    cell: Arc<RegionCell<T>>,
}

impl<T: Region> Drop for Handle<T> {
    fn drop(&mut self) {
        if self.cell.drop_handle() {
            self.node.unmap(self.cell.id());
        }
    }
}

impl<T: Region> Clone for Handle<T> {
    fn clone(&self) -> Self {
        // Never the first: this handle is counted.
        self.cell.add_handle();
        Handle {
            node: self.node.clone(),
            cell: self.cell.clone(),
        }
    }
}

impl<T: Region> std::fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("region", &self.id())
            .field("type", &T::TYPE_NAME)
            .finish()
    }
}

impl<T: Region> Handle<T> {
    /// A handle on `cell`, which the caller mapped once for it (and no lock is held).
    fn new(node: Node, cell: Arc<RegionCell<T>>) -> Self {
        if !cell.add_handle() {
            // Other handles on the cell live: their mapping stands for this one too.
            node.unmap(cell.id());
        }
        Handle { node, cell }
    }

    /// Whether this node's lease on the home's regions is valid now (always, for a region
    /// homed here or without a peer timeout). Checked after an access is acquired.
    #[inline]
    pub(crate) fn lease_valid(&self) -> bool {
        self.node.lease_valid(self.cell.id().home)
    }

    /// The region's id.
    pub fn id(&self) -> RegionId {
        self.cell.id()
    }

    /// The node this handle belongs to.
    pub fn node(&self) -> &Node {
        &self.node
    }

    pub(crate) fn cell(&self) -> &Arc<RegionCell<T>> {
        &self.cell
    }

    /// Starts a read: at once if the local copy is valid (a hit, no message), otherwise after
    /// fetching a copy. The read lasts until the guard is ended or dropped; meanwhile no node
    /// can write the region.
    pub async fn start_read(&self) -> Result<ReadGuard<'_, T>, Error> {
        if let Some(g) = self.cell.try_read()
            && self.lease_valid()
        {
            self.node.inner.hits.hit();
            return Ok(g);
        }
        Ok(self.slow_access(AccessMode::Read).await?.read(&self.cell))
    }

    /// Starts a write: at once if this node holds the only copy (a hit), otherwise after
    /// recalling every other copy. The write lasts until the guard is ended or dropped;
    /// meanwhile no other access to the region runs anywhere.
    pub async fn start_write(&self) -> Result<WriteGuard<'_, T>, Error> {
        if let Some(g) = self.cell.try_write()
            && self.lease_valid()
        {
            self.node.inner.hits.hit();
            return Ok(g);
        }
        Ok(self.slow_access(AccessMode::Write).await?.write(&self.cell))
    }

    /// A miss: the access through the engine, used only under a valid lease from the home
    /// (checked after it is granted; a lapsed one is waited for, within the op timeout).
    async fn slow_access(&self, mode: AccessMode) -> Result<Access, Error> {
        let what = match mode {
            AccessMode::Read => "read",
            AccessMode::Write => "write",
        };
        let id = self.id();
        let deadline = tokio::time::Instant::now() + self.node.inner.op_timeout;
        loop {
            let access = match self
                .node
                .run_op(what, Room::Request, id, |engine, op| {
                    Ok(granted(match mode {
                        AccessMode::Read => engine.start_read(id, op)?,
                        AccessMode::Write => engine.start_write(id, op)?,
                    }))
                })
                .await?
            {
                Outcome::Granted(access) => access,
                Outcome::Done(r) => {
                    return Err(r.err().map(Error::from).unwrap_or_else(|| {
                        Error::ProtocolViolation(format!("{what} completed without access"))
                    }));
                }
            };
            if self.lease_valid() {
                return Ok(access);
            }
            drop(access);
            self.node.wait_for_lease(what, id, deadline).await?;
        }
    }

    /// A read if it is a hit (a valid copy, under a valid lease from its home), without
    /// waiting; `None` otherwise.
    pub fn try_read(&self) -> Option<ReadGuard<'_, T>> {
        let g = self.cell.try_read().filter(|_| self.lease_valid())?;
        self.node.inner.hits.hit();
        Some(g)
    }

    /// Writes the local copy back to the region's home and drops it (a no-op at the home).
    /// Waits for reads and writes in progress on this node to end.
    pub async fn flush(&self) -> Result<(), Error> {
        let id = self.id();
        let outcome = self
            .node
            .run_op("flush", Room::Contents, id, |engine, op| {
                Ok((engine.flush(id, op)? == Progress::Done).then_some(Outcome::Done(Ok(()))))
            })
            .await?;
        done(outcome)
    }

    /// Drops this handle (the region is unmapped once no clone remains).
    pub fn unmap(self) {}
}

fn granted(start: Start) -> Option<Outcome> {
    match start {
        Start::Granted(access) => Some(Outcome::Granted(access)),
        Start::Queued => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_one_pointer_and_a_handle_two() {
        // A million mapped regions hold a million handles (issue 10).
        if cfg!(target_pointer_width = "64") {
            assert_eq!(std::mem::size_of::<Node>(), 8);
            assert_eq!(std::mem::size_of::<Handle<NameTable>>(), 16);
        }
    }
}
