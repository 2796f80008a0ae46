//! Transactions: atomic, serializable (and, with a data dir, durable) groups of region
//! accesses, after the TDSM thesis (DESIGN.md §5).
//!
//! ```text
//! node.transaction(async |tx| {
//!     let mut from = tx.write(&a).await?;   // held until the transaction ends
//!     let mut to = tx.write(&b).await?;
//!     from.balance -= 10;
//!     to.balance += 10;
//!     Ok::<_, crl::Error>(())
//! }).await?;
//! ```
//!
//! **Locks are coherence accesses.** [`Tx::read`] is a `start_read` and [`Tx::write`] a
//! `start_write` that the transaction keeps until it commits or aborts; while they are held the
//! engine defers every recall, so no other node can see or change the region. This is strict
//! two-phase locking, hence serializable. Reading a region and later writing it releases the
//! read, takes the write and checks that the contents did not change in between (else the
//! transaction conflicts and is retried).
//!
//! **Deadlocks** are broken by wound-wait (`crl_core::wound_wait`, kept by `node/locks.rs`):
//! every transaction has a priority (its first start time); an older transaction that waits
//! for a younger one wounds it, and the wounded one aborts at its next blocking point and is
//! retried with its original priority, so it eventually becomes the oldest and commits.
//!
//! **Abort** restores every written region from the before-image taken when the write was
//! first granted, deletes the regions the transaction created, and releases everything. No
//! other node can have seen the uncommitted values, since the locks deferred every recall.
//!
//! **Errors.** The closure's error type `E` must convert from [`Error`]. An error from the
//! closure aborts the transaction; if the transaction had been wounded (or lost a conflict)
//! it is retried, with exponential backoff, up to [`NodeConfig::tx_max_attempts`] times
//! (then [`Error::Conflict`]); otherwise the error is returned as is.
//!
//! **Plain accesses beside transactions.** A plain `start_read`/`start_write` is an
//! indivisible operation that waits for the transactions holding the region, and that
//! transactions wait for (it is never wounded). Plain writes are coherent but not durable:
//! they reach the log only when a later transaction commits the region.
//!
//! # Dropped transactions
//! The future of [`Node::transaction`] may be dropped at any await (a `timeout`, a `select!`,
//! an aborted task, a panic in the closure). The attempt is then aborted as if the closure had
//! failed: the before-images are restored, every lock is released, a wait in the lock table is
//! withdrawn, and the regions it created are deleted (by a spawned task). A commit that has
//! begun runs in a task of its own and ends (committed or aborted) on its own, never half
//! applied; the dropped caller just does not learn the outcome. Its commit also checks that
//! every lease on the copies it holds is still valid (DESIGN.md §6, rule 2), or it retries.
//!
//! # Commit protocol (`txn/commit.rs`)
//!
//! **Without a data dir** committing only releases the locks: the transaction is atomic and
//! serializable (its writes became visible all at once, when its locks were released) but not
//! durable.
//!
//! **With a data dir** every home logs what the transactions write to its regions
//! ([`crate::durable`]: checksummed records, group commit, checkpoints) before the writer
//! releases its locks:
//!
//! - **Local commit.** If every region written lives at the committing node, one `Commit`
//!   record (plus a `Create` for each region created) is appended and fsynced, then the locks
//!   are released.
//! - **Two-phase commit.** If some written region lives elsewhere and some lives here, the
//!   committing node is the coordinator. (1) It sends `TxPrepare` with the new images to each
//!   other home; the home checks that its directory lists the writer as the exclusive holder
//!   of every region concerned (so a copy that went stale, e.g. because the home restarted, is
//!   refused), logs a `Prepare` record, fsyncs and votes yes. (2) With every vote yes, the
//!   coordinator logs its own part and the decision in one `Commit` record naming the
//!   participants and fsyncs: this is the commit point. (3) It sends `TxDecide` to the
//!   participants *before* releasing its locks; since links are FIFO, each home installs the
//!   committed image as its master copy before any later message about the region arrives,
//!   logs `Decide`, and answers `TxDone`; once all have, the coordinator logs `Forget`. A no
//!   vote or a timeout aborts: `TxDecide{commit: false}` to every participant, before-images
//!   restored.
//! - **A home decides for a writer that homes nothing it wrote.** Then the lowest-numbered
//!   home written is the coordinator instead: the writer sends the other homes `TxPrepare`
//!   naming that home, and that home `TxCommit` with its own part and the list of
//!   participants. The participants vote to the deciding home, which logs its part with the
//!   decision (one phase if it is the only home: one fsync in all), installs it, and sends
//!   `TxDecide` to the participants and to the writer; it forgets the transaction once all of
//!   them, the writer too, confirmed. So the writer, often a client that can be cut off or
//!   fenced at any moment, never holds a decision that homes wait for: a home that fences a
//!   silent writer while one of its transactions is prepared asks the deciding home and goes
//!   on (`tests/cuts.rs`, `a_writer_cut_off_mid_commit_blocks_no_home`). If the writer gets no
//!   answer within twice the operation timeout, the commit fails with
//!   [`Error::CommitOutcomeUnknown`] (it *may* have committed); the transaction keeps its
//!   locks until the answer arrives (the writer asks again), then finishes or aborts.
//! - **Crashes and fences.** A participant that restarts with a `Prepare` and no `Decide` (in
//!   doubt) asks the coordinator (`TxInquire`) before serving anything; the coordinator
//!   answers commit if its log has the `Commit` record, abort if it has no record of the
//!   transaction (presumed abort: it never decides commit without logging it first, and it
//!   remembers, within a bound, the transactions it answered abort so that a `TxCommit` still
//!   on its way is refused), and stays silent while still collecting votes or writing the
//!   `Commit` record (its decision will be sent anyway). A coordinator that restarts re-sends
//!   `TxDecide` for every committed transaction not yet forgotten. Decisions are idempotent.
//!   A home whose session with a writer ends (the writer restarted or was fenced) while
//!   transactions it wrote are prepared or being decided here first asks their coordinators
//!   how they ended (holding back the writer's other messages), and only then forgets the
//!   regions the old session held: otherwise it would serve a master copy that misses a
//!   committed write. Still open: if the *coordinator* is cut off, its prepared participants
//!   wait for it (two-phase commit's blocking case), bounded only by the cut.
//! - **Failure of the log** (an fsync error) is fatal for that store: the commit fails with
//!   [`Error::LogFailed`], later commits fail at once; nothing is retried silently.
//!
//! [`NodeConfig::tx_max_attempts`]: crate::NodeConfig::tx_max_attempts

pub mod admin;
pub(crate) mod commit;

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crl_core::engine::{Access, AccessMode};
use crl_core::{CodecError, NodeId, Region, RegionId};
use parking_lot::Mutex;
use tracing::debug;

use crate::error::Error;
use crate::node::locks::TxShared;
use crate::node::{Handle, Node};

pub use crate::config::TxFault;
pub use crate::node::TxStats;

/// One region held by a transaction.
struct Held {
    region: RegionId,
    mode: AccessMode,
    /// The access, or `None` while a guard has it.
    access: Option<Access>,
    /// The contents before the first write (for abort).
    before: Option<Vec<u8>>,
    /// Created by this transaction (deleted on abort).
    created: bool,
    /// Keeps the region mapped while it is held.
    _handle: Box<dyn Any + Send + Sync>,
    encode: fn(&Access) -> Result<Vec<u8>, CodecError>,
    restore: fn(&mut Access, &[u8]) -> Result<(), CodecError>,
    fingerprint: u64,
    type_name: &'static str,
}

fn encode_access<T: Region>(a: &Access) -> Result<Vec<u8>, CodecError> {
    a.value::<T>().encode_region()
}

fn restore_access<T: Region>(a: &mut Access, bytes: &[u8]) -> Result<(), CodecError> {
    *a.value_mut::<T>() = T::decode_region(bytes)?;
    Ok(())
}

#[derive(Default)]
struct TxState {
    held: Vec<Held>,
    deletes: Vec<RegionId>,
    /// Why the transaction cannot commit (it will be retried).
    doomed: Option<String>,
    finished: bool,
}

impl TxState {
    fn find(&mut self, region: RegionId) -> Option<&mut Held> {
        self.held.iter_mut().find(|h| h.region == region)
    }
}

pub(crate) struct TxInner {
    node: Node,
    shared: Arc<TxShared>,
    state: Mutex<TxState>,
}

/// A transaction in progress: the argument of the closure given to [`Node::transaction`].
/// Cheap to clone; every clone is the same transaction.
#[derive(Clone)]
pub struct Tx {
    inner: Arc<TxInner>,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("priority", &self.inner.shared.priority)
            .finish_non_exhaustive()
    }
}

/// A read held by a transaction; the lock is kept until the transaction ends, even after this
/// guard is dropped.
pub struct TxRead<'t, T: Region> {
    tx: &'t Tx,
    region: RegionId,
    access: Option<Access>,
    _t: PhantomData<fn() -> T>,
}

/// A write held by a transaction; the lock is kept until the transaction ends, even after this
/// guard is dropped.
pub struct TxWrite<'t, T: Region> {
    tx: &'t Tx,
    region: RegionId,
    access: Option<Access>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Region> Deref for TxRead<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.access
            .as_ref()
            .expect("guard holds its access")
            .value::<T>()
    }
}

impl<T: Region> Deref for TxWrite<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.access
            .as_ref()
            .expect("guard holds its access")
            .value::<T>()
    }
}

impl<T: Region> DerefMut for TxWrite<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.access
            .as_mut()
            .expect("guard holds its access")
            .value_mut::<T>()
    }
}

impl<T: Region> Drop for TxRead<'_, T> {
    fn drop(&mut self) {
        if let Some(a) = self.access.take() {
            self.tx.park(self.region, a);
        }
    }
}

impl<T: Region> Drop for TxWrite<'_, T> {
    fn drop(&mut self) {
        if let Some(a) = self.access.take() {
            self.tx.park(self.region, a);
        }
    }
}

impl<T: Region> std::fmt::Debug for TxRead<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxRead")
            .field("region", &self.region)
            .finish()
    }
}

impl<T: Region> std::fmt::Debug for TxWrite<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxWrite")
            .field("region", &self.region)
            .finish()
    }
}

impl Tx {
    fn new(node: Node, priority: u64) -> Tx {
        Tx {
            inner: Arc::new(TxInner {
                node,
                shared: Arc::new(TxShared::new(priority)),
                state: Mutex::new(TxState::default()),
            }),
        }
    }

    /// This transaction's priority (lower is older; kept across retries).
    pub fn priority(&self) -> u64 {
        self.inner.shared.priority
    }

    /// The node running this transaction.
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// Fails if the transaction cannot go on (wounded, doomed or finished).
    /// A handle mapped on another node cannot take part: its locks would be that node's.
    fn check_handle<T: Region>(&self, h: &Handle<T>) -> Result<(), Error> {
        if h.node().same_node(&self.inner.node) {
            Ok(())
        } else {
            Err(Error::ForeignHandle {
                region: h.id(),
                handle_node: h.node().id(),
                tx_node: self.inner.node.id(),
            })
        }
    }

    fn check_live(&self) -> Result<(), Error> {
        let mut st = self.inner.state.lock();
        if st.finished {
            return Err(Error::TxFinished);
        }
        if st.doomed.is_some() {
            return Err(Error::Wounded);
        }
        if self.inner.shared.is_wounded() {
            st.doomed = Some("wounded by an older transaction".into());
            return Err(Error::Wounded);
        }
        Ok(())
    }

    fn doom(&self, why: String) {
        let mut st = self.inner.state.lock();
        st.doomed.get_or_insert(why);
    }

    fn park(&self, region: RegionId, access: Access) {
        let mut st = self.inner.state.lock();
        if st.finished {
            return; // dropping the access ends it
        }
        match st.find(region) {
            Some(h) => h.access = Some(access),
            None => drop(access),
        }
    }

    /// Reads `h`'s region under this transaction: the read lock is held until the transaction
    /// ends. Reading a region this transaction writes gives its written value.
    pub async fn read<'t, T: Region>(&'t self, h: &Handle<T>) -> Result<TxRead<'t, T>, Error> {
        self.check_live()?;
        self.check_handle(h)?;
        let region = h.id();
        if let Some(access) = self.take_held(region)? {
            return Ok(TxRead {
                tx: self,
                region,
                access: Some(access),
                _t: PhantomData,
            });
        }
        let access = self.acquire(h, AccessMode::Read).await?;
        if self.inner.node.tx_fault() == Some(TxFault::ReleaseReadsEarly) {
            // The planted bug: not two-phase. The guard keeps the access only while it lives.
            self.inner.node.locks().release(region, &self.inner.shared);
            return Ok(TxRead {
                tx: self,
                region,
                access: Some(access),
                _t: PhantomData,
            });
        }
        self.push_held(h, region, AccessMode::Read, None, false);
        Ok(TxRead {
            tx: self,
            region,
            access: Some(access),
            _t: PhantomData,
        })
    }

    /// Writes `h`'s region under this transaction: the write lock is held until the
    /// transaction ends, and the region is restored if it aborts.
    pub async fn write<'t, T: Region>(&'t self, h: &Handle<T>) -> Result<TxWrite<'t, T>, Error> {
        self.check_live()?;
        self.check_handle(h)?;
        let region = h.id();
        let upgrade = {
            let mut st = self.inner.state.lock();
            match st.find(region) {
                Some(held) if held.mode == AccessMode::Write => {
                    let access = held.access.take().ok_or(Error::TxBorrowed(region))?;
                    return Ok(TxWrite {
                        tx: self,
                        region,
                        access: Some(access),
                        _t: PhantomData,
                    });
                }
                Some(held) => {
                    // Read → write: remember what was read, release the read.
                    let access = held.access.take().ok_or(Error::TxBorrowed(region))?;
                    let seen = encode_access::<T>(&access)?;
                    st.held.retain(|h| h.region != region);
                    drop(st);
                    drop(access);
                    self.inner.node.locks().release(region, &self.inner.shared);
                    Some(seen)
                }
                None => None,
            }
        };
        let access = self.acquire(h, AccessMode::Write).await?;
        let before = encode_access::<T>(&access)?;
        if let Some(seen) = upgrade
            && seen != before
        {
            drop(access);
            self.inner.node.locks().release(region, &self.inner.shared);
            self.doom(format!("{region} changed between its read and its write"));
            return Err(Error::Wounded);
        }
        self.push_held(h, region, AccessMode::Write, Some(before), false);
        Ok(TxWrite {
            tx: self,
            region,
            access: Some(access),
            _t: PhantomData,
        })
    }

    /// Creates a region homed at this node as part of the transaction: it is deleted again if
    /// the transaction aborts, and nobody else can access it before the commit.
    pub async fn create<T: Region>(&self, value: T) -> Result<Handle<T>, Error> {
        self.check_live()?;
        let h = self.inner.node.create_volatile(value)?;
        let region = h.id();
        self.inner.node.locks().hold(region, &self.inner.shared);
        let access = match h.cell().try_write() {
            Some(g) => Access::from_write(g, h.cell()),
            None => {
                return Err(Error::ProtocolViolation(format!(
                    "a region just created ({region}) is already in use"
                )));
            }
        };
        let mut st = self.inner.state.lock();
        st.held.push(Held {
            region,
            mode: AccessMode::Write,
            access: Some(access),
            before: None,
            created: true,
            _handle: Box::new(h.clone()),
            encode: encode_access::<T>,
            restore: restore_access::<T>,
            fingerprint: T::FINGERPRINT,
            type_name: T::TYPE_NAME,
        });
        Ok(h)
    }

    /// Creates a region homed at node `home` as part of the transaction
    /// ([`Node::create_at`](crate::Node::create_at) within it): the home creates it at once
    /// (and logs it, with a data dir), the transaction holds its write lock until it ends,
    /// its contents at the commit are committed with the rest, and it is deleted again if the
    /// transaction aborts. `home` may be this node: then it is [`create`](Self::create).
    ///
    /// Until the transaction ends the region exists at its home with nobody else knowing its
    /// id. If this node crashes before the transaction ends, it stays there, holding `value`,
    /// unreferenced (as after a dropped `create_at`).
    pub async fn create_at<T: Region>(&self, home: NodeId, value: T) -> Result<Handle<T>, Error> {
        self.check_live()?;
        if home == self.inner.node.id() {
            return self.create(value).await;
        }
        let h = self.inner.node.create_at(home, value).await?;
        let region = h.id();
        // Registered as created before its lock is awaited: from here on an abort, or this
        // future dropped, deletes it.
        self.push_held(&h, region, AccessMode::Write, None, true);
        let access = self.acquire(&h, AccessMode::Write).await?;
        let mut st = self.inner.state.lock();
        match st.held.iter_mut().find(|held| held.region == region) {
            Some(held) => held.access = Some(access),
            None => {
                // The transaction ended meanwhile (it cannot: it is borrowed here).
                drop(st);
                drop(access);
                self.inner.node.locks().release(region, &self.inner.shared);
                return Err(Error::TxFinished);
            }
        }
        Ok(h)
    }

    /// Deletes `h`'s region when (and only if) the transaction commits. Takes the write lock
    /// now, so nobody else uses the region meanwhile. The delete takes effect with the commit
    /// at every node: transactions waiting for the region then fail with [`Error::Deleted`].
    pub async fn delete<T: Region>(&self, h: &Handle<T>) -> Result<(), Error> {
        drop(self.write(h).await?);
        let mut st = self.inner.state.lock();
        if !st.deletes.contains(&h.id()) {
            st.deletes.push(h.id());
        }
        Ok(())
    }

    fn take_held(&self, region: RegionId) -> Result<Option<Access>, Error> {
        let mut st = self.inner.state.lock();
        match st.find(region) {
            Some(held) => held
                .access
                .take()
                .map(Some)
                .ok_or(Error::TxBorrowed(region)),
            None => Ok(None),
        }
    }

    fn push_held<T: Region>(
        &self,
        h: &Handle<T>,
        region: RegionId,
        mode: AccessMode,
        before: Option<Vec<u8>>,
        created: bool,
    ) {
        self.inner.state.lock().held.push(Held {
            region,
            mode,
            access: None,
            before,
            created,
            _handle: Box::new(h.clone()),
            encode: encode_access::<T>,
            restore: restore_access::<T>,
            fingerprint: T::FINGERPRINT,
            type_name: T::TYPE_NAME,
        });
    }

    /// Takes `mode` access on `h`'s region: a hit at once, else through the engine, waiting
    /// (bounded) unless wounded. Registered in the lock table before it can be granted, so a
    /// wound cannot miss it.
    async fn acquire<T: Region>(&self, h: &Handle<T>, mode: AccessMode) -> Result<Access, Error> {
        let node = &self.inner.node;
        let region = h.id();
        let shared = &self.inner.shared;
        node.locks().hold(region, shared);
        let hit = match mode {
            AccessMode::Read => h.cell().try_read().map(|g| Access::from_read(g, h.cell())),
            AccessMode::Write => h
                .cell()
                .try_write()
                .map(|g| Access::from_write(g, h.cell())),
        };
        // A hit counts only under a valid lease from the home, checked after acquiring.
        if let Some(a) = hit
            && h.lease_valid()
        {
            return Ok(a);
        }
        node.locks().wait(region, shared);
        // If this future is dropped while it waits, the lock table must forget the wait and the
        // hold (the transaction never got the region).
        let waiting = WaitGuard {
            node,
            region,
            shared,
        };
        let r = node.run_access(region, mode, shared).await;
        std::mem::forget(waiting);
        node.locks().stop_waiting(region, shared);
        match r {
            Ok(a) => Ok(a),
            Err(e) => {
                node.locks().release(region, shared);
                if matches!(
                    e,
                    Error::Wounded | Error::HomeRestarted(_) | Error::Fenced(_)
                ) {
                    self.doom("wounded while waiting".into());
                }
                Err(e)
            }
        }
    }

    /// The homes of the regions this transaction holds (read or written), each once.
    fn held_homes(&self) -> Vec<NodeId> {
        let mut homes: Vec<NodeId> = self
            .inner
            .state
            .lock()
            .held
            .iter()
            .map(|h| h.region.home)
            .collect();
        homes.sort_unstable();
        homes.dedup();
        homes
    }

    /// The regions this transaction wrote, with their new images, grouped for the commit.
    fn written(&self) -> Result<Vec<Written>, Error> {
        let st = self.inner.state.lock();
        let mut out = Vec::new();
        for h in &st.held {
            if h.mode != AccessMode::Write {
                continue;
            }
            let access = h.access.as_ref().ok_or(Error::TxBorrowed(h.region))?;
            let after = (h.encode)(access)?;
            if !h.created && h.before.as_deref() == Some(after.as_slice()) {
                continue; // unchanged: nothing to log
            }
            out.push(Written {
                region: h.region,
                bytes: after,
                created: h.created,
                fingerprint: h.fingerprint,
                type_name: h.type_name,
            });
        }
        Ok(out)
    }

    /// Ends the transaction: on abort restores the before-images; releases every lock.
    /// Returns the regions to delete after a commit and the regions created (to delete after
    /// an abort).
    fn release(&self, commit: bool) -> (Vec<RegionId>, Vec<RegionId>) {
        self.inner.release(commit)
    }

    fn is_doomed(&self) -> bool {
        self.inner.state.lock().doomed.is_some() || self.inner.shared.is_wounded()
    }

    /// Whether one of its operations failed in a way that dooms it (see `doom`).
    fn has_failed_operation(&self) -> bool {
        self.inner.state.lock().doomed.is_some()
    }
}

impl TxInner {
    /// See [`Tx::release`].
    fn release(&self, commit: bool) -> (Vec<RegionId>, Vec<RegionId>) {
        let mut st = self.state.lock();
        st.finished = true;
        let held = std::mem::take(&mut st.held);
        let deletes = std::mem::take(&mut st.deletes);
        drop(st);
        let mut created = Vec::new();
        let locks = self.node.locks();
        for mut h in held {
            if !commit
                && let (Some(before), Some(access)) = (&h.before, h.access.as_mut())
                && let Err(e) = (h.restore)(access, before)
            {
                // The before-image was encoded from this very type a moment ago.
                tracing::error!(region = %h.region, "abort: restoring the before-image failed: {e}");
            }
            if h.created {
                created.push(h.region);
            }
            drop(h.access.take());
            locks.release(h.region, &self.shared);
        }
        (if commit { deletes } else { Vec::new() }, created)
    }
}

/// A transaction dropped before it ended (its future was dropped by a timeout, a `select!`, an
/// aborted task, or a panic in the closure) is aborted here: before-images restored, locks
/// released, and the regions it created deleted (by a spawned task, if a runtime is there). A
/// commit that had begun runs in its own task, which holds the transaction until it ends.
impl Drop for TxInner {
    fn drop(&mut self) {
        if self.state.get_mut().finished {
            return;
        }
        let (_, created) = self.release(false);
        debug!(node = %self.node.id(), "a transaction was dropped before it ended: aborted");
        if created.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let node = self.node.clone();
                rt.spawn(async move {
                    for id in created {
                        if let Err(e) = node.delete(id).await {
                            debug!(region = %id, "deleting a region a dropped transaction created: {e}");
                        }
                    }
                });
            }
            Err(_) => {
                tracing::warn!(
                    regions = created.len(),
                    "a transaction dropped outside a runtime leaves the regions it created"
                );
            }
        }
    }
}

/// Undoes a lock-table wait and hold when an acquisition's future is dropped.
struct WaitGuard<'a> {
    node: &'a Node,
    region: RegionId,
    shared: &'a Arc<TxShared>,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.node.locks().stop_waiting(self.region, self.shared);
        self.node.locks().release(self.region, self.shared);
    }
}

/// A region a committing transaction wrote.
pub(crate) struct Written {
    pub(crate) region: RegionId,
    pub(crate) bytes: Vec<u8>,
    pub(crate) created: bool,
    pub(crate) fingerprint: u64,
    pub(crate) type_name: &'static str,
}

impl Written {
    pub(crate) fn home(&self) -> NodeId {
        self.region.home
    }
}

/// Why a commit did not happen.
pub(crate) enum CommitFailure {
    /// A conflict or a participant's refusal: abort and retry.
    Retry(String),
    /// A failure to report (the transaction aborted).
    Fatal(Error),
}

impl Node {
    /// Runs `f` as a transaction and returns its value once committed (durably, if this node
    /// has a data dir). See the [module docs](crate::txn) for the guarantees.
    ///
    /// `f` may run several times: it is retried when the transaction is wounded by an older
    /// one or conflicts, up to [`NodeConfig::tx_max_attempts`](crate::NodeConfig) attempts.
    /// An error returned by `f` for any other reason aborts the transaction and is returned.
    pub async fn transaction<F, Fut, T, E>(&self, mut f: F) -> Result<T, E>
    where
        F: FnMut(Tx) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        self.check_running()?;
        let priority = self.next_tx_priority();
        let max = self.tx_max_attempts().max(1);
        for attempt in 1..=max {
            let tx = Tx::new(self.clone(), priority);
            let result = f(tx.clone()).await;
            match settle(&tx, result, attempt).await {
                Settled::Done(r) => return r,
                Settled::Retry => tokio::time::sleep(backoff(priority, attempt)).await,
            }
        }
        Err(Error::Conflict { attempts: max }.into())
    }

    /// A new transaction for the blocking facade (which drives the attempts itself).
    pub(crate) fn begin_transaction(&self, priority: u64) -> Tx {
        Tx::new(self.clone(), priority)
    }
}

/// What became of one attempt.
pub(crate) enum Settled<T, E> {
    /// Committed (`Ok`) or failed for good (`Err`).
    Done(Result<T, E>),
    /// Aborted by a conflict: run the closure again.
    Retry,
}

/// Commits or aborts an attempt, given what its closure returned.
pub(crate) async fn settle<T, E: From<Error>>(
    tx: &Tx,
    result: Result<T, E>,
    attempt: u32,
) -> Settled<T, E> {
    let node = tx.inner.node.clone();
    let counters = node.tx_counters();
    match result {
        Ok(value) => match commit_in_own_task(tx).await {
            Ok(()) => {
                counters.committed.fetch_add(1, Ordering::Relaxed);
                return Settled::Done(Ok(value));
            }
            Err(CommitFailure::Retry(why)) => {
                debug!(node = %node.id(), attempt, "transaction conflicted at commit: {why}");
            }
            Err(CommitFailure::Fatal(e)) => {
                counters.aborted.fetch_add(1, Ordering::Relaxed);
                return Settled::Done(Err(e.into()));
            }
        },
        Err(e) => {
            let doomed = tx.is_doomed();
            abort(tx).await;
            if !doomed {
                counters.aborted.fetch_add(1, Ordering::Relaxed);
                return Settled::Done(Err(e));
            }
        }
    }
    counters.retried.fetch_add(1, Ordering::Relaxed);
    Settled::Retry
}

/// Commits in a task of its own: if the caller's future is dropped, the commit still
/// finishes (or aborts) as a whole, never half applied.
async fn commit_in_own_task(tx: &Tx) -> Result<(), CommitFailure> {
    let committing = tx.clone();
    tokio::spawn(async move { commit::commit(&committing).await })
        .await
        .unwrap_or_else(|e| {
            Err(CommitFailure::Fatal(Error::ProtocolViolation(format!(
                "the commit task failed: {e}"
            ))))
        })
}

/// Aborts: restores, releases, deletes what the transaction created.
pub(crate) async fn abort(tx: &Tx) {
    let (_, created) = tx.release(false);
    for id in created {
        if let Err(e) = tx.inner.node.delete(id).await {
            debug!(region = %id, "abort: deleting a region the transaction created: {e}");
        }
    }
}

/// Exponential backoff with jitter: up to 50 µs · 2^attempt, at most 20 ms.
pub(crate) fn backoff(priority: u64, attempt: u32) -> Duration {
    let cap = (50u64 << attempt.min(9)).min(20_000);
    let mut x = priority ^ u64::from(attempt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    Duration::from_micros(cap / 2 + x % (cap / 2 + 1))
}
