//! The home directory: the master copy of each region created at this node, who holds
//! copies of it, and the FIFO queue of requests waiting while one is served.
//!
//! A request (a remote `GetShared`/`GetExclusive`/`Delete`, or a local access the hit path
//! could not take) is served in three steps: **start** revokes the home's own hit permissions
//! and sends the recalls it needs (downgrade the owner for a read; invalidate every other
//! holder for a write; recall everyone for a delete); **wait** collects one `RecallAck` per
//! recall and lets the home's own accesses in progress drain; **finish** grants (data to a
//! remote requester, an [`Access`](super::Access) to a local one) and updates the directory.
//! Only then does the next queued request start.
//!
//! Priorities (wound-wait support, see the [engine docs](super)): the request being served
//! waits for the holders and, through it, so do the requests queued behind it; its effective
//! priority is the oldest of them all. Recalls carry it; when it gets older (a `Contend` or an
//! older request queued) the holders still to acknowledge get a `Contend`, and if the home's own
//! accesses in progress hold the request up, [`Event::Wanted`] reports it here.

use std::collections::{BTreeSet, VecDeque};

use std::sync::Arc;

use tracing::{debug, trace, warn};

use super::access::{AccessMode, ErasedCell};
use super::{
    DecodedImage, Engine, Event, OpError, OpId, PRIORITY_NONE, PeerReset, ProtocolViolation,
    install_image, planted,
};
use crate::region::{NodeId, RegionId};
use crate::wire::{Grant, Message, Recall, Refusal, RegionImage};

/// Who holds copies of a region, as its home sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirState {
    /// Only the home has a copy (and may write it without asking anyone).
    Unowned,
    /// These nodes hold read-only copies; the home's copy is valid too.
    Shared(Sharers),
    /// This node holds the only valid copy, possibly modified.
    Exclusive(NodeId),
}

/// The nodes holding read-only copies of a region: a sorted set kept inline up to
/// [`Sharers::INLINE`] nodes (the common case costs no allocation; more spill to the heap).
/// It is 16 bytes, so a directory entry is 48: a home keeps one per region.
#[derive(Clone)]
pub struct Sharers(SharerSet);

#[derive(Clone)]
enum SharerSet {
    /// The first `len` of `ids`, sorted.
    Inline {
        len: u8,
        ids: [NodeId; Sharers::INLINE],
    },
    /// Sorted; more than [`Sharers::INLINE`] nodes.
    #[allow(
        clippy::box_collection,
        reason = "a thin pointer keeps the set at 16 bytes; a Vec would make it 32 (rarely spilled)"
    )]
    Spilled(Box<Vec<NodeId>>),
}

impl Default for Sharers {
    fn default() -> Self {
        Sharers(SharerSet::Inline {
            len: 0,
            ids: [NodeId(0); Sharers::INLINE],
        })
    }
}

impl PartialEq for Sharers {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Sharers {}

impl std::fmt::Debug for Sharers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.as_slice()).finish()
    }
}

impl Sharers {
    /// How many sharers are kept without an allocation.
    pub const INLINE: usize = 3;

    fn as_slice(&self) -> &[NodeId] {
        match &self.0 {
            SharerSet::Inline { len, ids } => &ids[..usize::from(*len)],
            SharerSet::Spilled(v) => v,
        }
    }

    /// Whether `node` holds a copy.
    pub fn contains(&self, node: &NodeId) -> bool {
        self.as_slice().binary_search(node).is_ok()
    }

    /// Adds `node`; false if it was there already.
    pub fn insert(&mut self, node: NodeId) -> bool {
        let Err(at) = self.as_slice().binary_search(&node) else {
            return false;
        };
        match &mut self.0 {
            SharerSet::Inline { len, ids } if usize::from(*len) < Self::INLINE => {
                let n = usize::from(*len);
                ids.copy_within(at..n, at + 1);
                ids[at] = node;
                *len += 1;
            }
            SharerSet::Inline { ids, .. } => {
                let mut v = Vec::with_capacity(Self::INLINE * 2);
                v.extend_from_slice(ids);
                v.insert(at, node);
                self.0 = SharerSet::Spilled(Box::new(v));
            }
            SharerSet::Spilled(v) => v.insert(at, node),
        }
        true
    }

    /// Removes `node`; false if it was not there.
    pub fn remove(&mut self, node: &NodeId) -> bool {
        let Ok(at) = self.as_slice().binary_search(node) else {
            return false;
        };
        match &mut self.0 {
            SharerSet::Inline { len, ids } => {
                let n = usize::from(*len);
                ids.copy_within(at + 1..n, at);
                *len -= 1;
            }
            SharerSet::Spilled(v) => {
                v.remove(at);
                if v.len() <= Self::INLINE {
                    // Back inline: a region shared widely once does not keep a heap set.
                    let mut ids = [NodeId(0); Self::INLINE];
                    ids[..v.len()].copy_from_slice(v);
                    self.0 = SharerSet::Inline {
                        len: v.len() as u8,
                        ids,
                    };
                }
            }
        }
        true
    }

    /// The sharers, in increasing order.
    pub fn iter(&self) -> std::slice::Iter<'_, NodeId> {
        self.as_slice().iter()
    }

    /// How many nodes share the region.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether no node does.
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

impl<const N: usize> From<[NodeId; N]> for Sharers {
    fn from(nodes: [NodeId; N]) -> Self {
        let mut s = Sharers::default();
        for n in nodes {
            s.insert(n);
        }
        s
    }
}

/// Who is waiting for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Requester {
    /// A local operation at the home.
    Local(OpId),
    /// A remote node.
    Remote(NodeId),
    /// Nobody: a transaction's delete, decided (see [`Engine::delete_committed`]).
    Decided,
}

impl Requester {
    fn is_local(self) -> bool {
        matches!(self, Requester::Local(_))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    Read,
    Write,
    Delete,
}

/// A request at the home directory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    who: Requester,
    want: Want,
    /// The oldest priority waiting for this request.
    priority: u64,
    /// A committed delete from a remote node that has already given its copy up: that node
    /// is not recalled.
    copy_given_up: bool,
}

impl Request {
    pub(crate) fn access(who: Requester, mode: AccessMode, priority: u64) -> Self {
        let want = match mode {
            AccessMode::Read => Want::Read,
            AccessMode::Write => Want::Write,
        };
        Request {
            who,
            want,
            priority,
            copy_given_up: false,
        }
    }

    pub(crate) fn delete(who: Requester) -> Self {
        Request {
            who,
            want: Want::Delete,
            priority: PRIORITY_NONE,
            copy_given_up: false,
        }
    }

    /// A delete that a transaction at `from` committed: `from`'s copy admits no access any
    /// more and is given up with the request.
    fn committed_delete(from: NodeId) -> Self {
        Request {
            copy_given_up: true,
            ..Request::delete(Requester::Remote(from))
        }
    }
}

pub(crate) struct Serving {
    req: Request,
    /// Nodes whose `RecallAck` is still awaited.
    acks: BTreeSet<NodeId>,
    /// The oldest priority waiting: the request's and those of the requests queued behind it.
    priority: u64,
    /// The oldest priority reported by [`Event::Wanted`] while waiting on local accesses.
    wanted: u64,
    /// The requester is gone (cancelled, or its node restarted): finish without answering.
    cancelled: bool,
}

/// The directory entry of one region homed here.
pub(crate) struct HomeEntry {
    pub(crate) cell: Arc<dyn ErasedCell>,
    pub(crate) dir: DirState,
    /// The request being served and those waiting; `None` while there are none (most
    /// entries, most of the time: an idle region costs no queue).
    waits: Option<Box<HomeWaits>>,
    /// Local mappings (handles) of the region at the home (32 bits: four billion live
    /// handles of one region on one node would need more memory than a node has).
    pub(crate) map_count: u32,
    /// Prepared transactions holding the region (see [`Engine::hold`]): while any does, no
    /// request is finished and the home's own copy admits no hit.
    pub(crate) holds: u16,
    /// A delete that must happen before any request not yet answered (a committed
    /// transaction's, or one from the exclusive owner).
    pub(crate) delete_first: bool,
}

/// The parts of a directory entry that only matter while requests wait on it.
#[derive(Default)]
pub(crate) struct HomeWaits {
    pub(crate) serving: Option<Serving>,
    pub(crate) queue: VecDeque<Request>,
}

static NO_HOME_WAITS: HomeWaits = HomeWaits {
    serving: None,
    queue: VecDeque::new(),
};

impl HomeEntry {
    /// The requests being served or waiting (none, if none are).
    pub(crate) fn w(&self) -> &HomeWaits {
        self.waits.as_deref().unwrap_or(&NO_HOME_WAITS)
    }

    /// The requests, to change them.
    pub(crate) fn w_mut(&mut self) -> &mut HomeWaits {
        self.waits.get_or_insert_with(Box::default)
    }

    /// The requests, if any wait (never allocates).
    fn waits_mut(&mut self) -> Option<&mut HomeWaits> {
        self.waits.as_deref_mut()
    }

    pub(crate) fn new(cell: Arc<dyn ErasedCell>) -> Self {
        HomeEntry {
            cell,
            dir: DirState::Unowned,
            waits: None,
            map_count: 1,
            holds: 0,
            delete_first: false,
        }
    }

    fn holders(&self) -> Vec<NodeId> {
        match &self.dir {
            DirState::Unowned => vec![],
            DirState::Shared(s) => s.iter().copied().collect(),
            DirState::Exclusive(o) => vec![*o],
        }
    }

    fn remove_holder(&mut self, node: NodeId) {
        match &mut self.dir {
            DirState::Shared(s) => {
                s.remove(&node);
                if s.is_empty() {
                    self.dir = DirState::Unowned;
                }
            }
            DirState::Exclusive(o) if *o == node => self.dir = DirState::Unowned,
            _ => {}
        }
    }

    /// Sets the home's hit permissions from the directory state (when nothing is queued).
    pub(crate) fn permit(&self) {
        let (read, write) = match self.dir {
            DirState::Unowned => (true, true),
            DirState::Shared(_) => (true, false),
            DirState::Exclusive(_) => (false, false),
        };
        self.cell.word().permit(read, write);
    }
}

impl Engine {
    pub(crate) fn home_missing(&self, id: RegionId) -> OpError {
        if self.homes.is_deleted(&id.seq) {
            OpError::Deleted(id)
        } else {
            OpError::NoSuchRegion(id)
        }
    }

    pub(crate) fn home_enqueue(&mut self, id: RegionId, req: Request) {
        let entry = self.homes.get_mut(&id.seq).expect("home entry");
        entry.w_mut().queue.push_back(req);
        self.home_contend(id, req.priority);
        self.home_advance(id);
    }

    /// A request with `priority` now waits for the one being served: if that is older than the
    /// serving's priority so far, tell the holders still to acknowledge.
    fn home_contend(&mut self, id: RegionId, priority: u64) {
        let Some(serving) = self
            .homes
            .get_mut(&id.seq)
            .and_then(|e| e.waits_mut())
            .and_then(|w| w.serving.as_mut())
        else {
            return;
        };
        if priority >= serving.priority {
            return;
        }
        serving.priority = priority;
        let targets: Vec<NodeId> = serving.acks.iter().copied().collect();
        trace!(node = %self.node, region = %id, priority, ?targets, "contend");
        for to in targets {
            self.send(
                to,
                Message::Contend {
                    region: id,
                    priority,
                },
            );
        }
    }

    /// Serves queued requests for `id` as far as the protocol allows now.
    pub(crate) fn home_advance(&mut self, id: RegionId) {
        loop {
            let skip_one = planted!(self, SkipOneSharerRecall);
            let Some(entry) = self.homes.get_mut(&id.seq) else {
                return;
            };
            if entry.w().serving.is_none() {
                if entry.delete_first
                    && entry
                        .w()
                        .queue
                        .front()
                        .is_none_or(|r| r.want != Want::Delete)
                {
                    entry
                        .w_mut()
                        .queue
                        .push_front(Request::delete(Requester::Decided));
                }
                let Some(req) = entry.waits_mut().and_then(|w| w.queue.pop_front()) else {
                    // Idle regions keep no request buffers (a million of them add up).
                    entry.waits = None;
                    if entry.holds == 0 {
                        entry.permit();
                    }
                    return;
                };
                entry.cell.word().revoke();
                let (targets, kind) = match req.want {
                    Want::Read => match entry.dir {
                        DirState::Exclusive(o) => (vec![o], Recall::Downgrade),
                        _ => (vec![], Recall::Downgrade),
                    },
                    Want::Write => {
                        let mut t = entry.holders();
                        if let Requester::Remote(r) = req.who {
                            t.retain(|&n| n != r);
                        }
                        if skip_one && matches!(entry.dir, DirState::Shared(_)) && !t.is_empty() {
                            t.remove(0);
                        }
                        (t, Recall::Invalidate)
                    }
                    Want::Delete => {
                        let mut t = entry.holders();
                        if let Requester::Remote(r) = req.who
                            && req.copy_given_up
                        {
                            // Recalling it would let what it sent after the delete (a
                            // transaction's other writes) arrive while the region exists.
                            t.retain(|&n| n != r);
                        }
                        (t, Recall::Delete)
                    }
                };
                let priority = entry
                    .w()
                    .queue
                    .iter()
                    .map(|r| r.priority)
                    .fold(req.priority, u64::min);
                trace!(node = %self.node, region = %id, ?req, ?targets, priority, "serving");
                entry.w_mut().serving = Some(Serving {
                    req,
                    acks: targets.iter().copied().collect(),
                    priority,
                    wanted: PRIORITY_NONE,
                    cancelled: false,
                });
                for to in targets {
                    self.stats.recalls_sent += 1;
                    self.send(
                        to,
                        Message::Recall {
                            region: id,
                            kind,
                            priority,
                        },
                    );
                }
                continue;
            }
            let busy = entry.cell.word().revoke();
            let serving = entry.w_mut().serving.as_mut().expect("serving");
            let ready = match serving.req.want {
                Want::Read => !busy.writer,
                Want::Write | Want::Delete => busy.is_idle(),
            };
            if !ready && serving.priority < serving.wanted {
                // The home's own accesses in progress hold the request up.
                serving.wanted = serving.priority;
                let priority = serving.priority;
                trace!(node = %self.node, region = %id, priority, "wanted");
                self.events.push_back(Event::Wanted {
                    region: id,
                    priority,
                });
            }
            if !ready || !serving.acks.is_empty() || entry.holds > 0 {
                return;
            }
            let serving = entry.w_mut().serving.take().expect("serving");
            if entry.delete_first && serving.req.want != Want::Delete {
                // Not answered yet, so it may as well come after the delete (and learn it).
                if !serving.cancelled {
                    entry.w_mut().queue.push_front(serving.req);
                }
                continue;
            }
            self.home_finish(id, serving.req, serving.cancelled);
        }
    }

    fn home_finish(&mut self, id: RegionId, req: Request, cancelled: bool) {
        let entry = self.homes.get_mut(&id.seq).expect("home entry");
        if cancelled && req.want != Want::Delete {
            // Nobody to answer. The recalls are done: a write's leaves the home sole holder.
            debug!(node = %self.node, region = %id, ?req, "served a withdrawn request");
            if req.want == Want::Write && req.who.is_local() {
                entry.dir = DirState::Unowned;
            }
            return;
        }
        match (req.want, req.who) {
            (Want::Read, Requester::Local(op)) => {
                debug_assert!(!matches!(entry.dir, DirState::Exclusive(_)));
                let cell = entry.cell.clone();
                self.grant(op, &cell, AccessMode::Read);
            }
            (Want::Read, Requester::Remote(r)) => {
                let image = match Engine::home_image(self.encoded.take(), &*entry.cell) {
                    Ok(image) => image,
                    Err(e) => {
                        tracing::error!(node = %self.node, region = %id, "cannot encode: {e}");
                        return;
                    }
                };
                let len = image.bytes.len();
                if let Some(reason) = too_large(&image, self.config.max_image_len) {
                    self.refuse_too_large(r, id, reason);
                    return;
                }
                match &mut entry.dir {
                    DirState::Shared(s) => {
                        s.insert(r);
                    }
                    d => *d = DirState::Shared(Sharers::from([r])),
                }
                self.send(
                    r,
                    Message::Data {
                        region: id,
                        grant: Grant::Shared,
                        image: Some(image),
                    },
                );
                self.note_image_len(id, len);
            }
            (Want::Write, Requester::Local(op)) => {
                entry.dir = DirState::Unowned;
                let cell = entry.cell.clone();
                self.grant(op, &cell, AccessMode::Write);
            }
            (Want::Write, Requester::Remote(r)) => {
                let upgrade = matches!(&entry.dir, DirState::Shared(s) if s.contains(&r));
                let image = if upgrade {
                    None
                } else {
                    match Engine::home_image(self.encoded.take(), &*entry.cell) {
                        Ok(image) => Some(image),
                        Err(e) => {
                            tracing::error!(node = %self.node, region = %id, "cannot encode: {e}");
                            return;
                        }
                    }
                };
                if let Some(reason) = image
                    .as_ref()
                    .and_then(|i| too_large(i, self.config.max_image_len))
                {
                    // The recalls are done: the home holds the only copy.
                    entry.dir = DirState::Unowned;
                    self.refuse_too_large(r, id, reason);
                    return;
                }
                entry.dir = DirState::Exclusive(r);
                let len = image.as_ref().map(|i| i.bytes.len());
                self.send(
                    r,
                    Message::Data {
                        region: id,
                        grant: Grant::Exclusive,
                        image,
                    },
                );
                if let Some(len) = len {
                    self.note_image_len(id, len);
                }
            }
            (Want::Read | Want::Write, Requester::Decided) => {
                // Never made: a decided request is a delete.
                debug!(node = %self.node, region = %id, ?req, "an access asked by nobody");
            }
            (Want::Delete, who) => {
                let entry = self.homes.delete(&id.seq).expect("home entry");
                self.big_images.remove(&id.seq);
                entry.cell.clear();
                debug!(node = %self.node, region = %id, "deleted");
                self.events.push_back(Event::Deleted { region: id });
                if !cancelled {
                    self.home_reply_deleted(id, who, true);
                }
                for queued in entry.waits.map(|w| w.queue).unwrap_or_default() {
                    let delete = queued.want == Want::Delete;
                    self.home_reply_deleted(id, queued.who, delete);
                }
            }
        }
    }

    /// Withdraws local operation `op` from the queue of `id` (homed here); true if found.
    pub(crate) fn home_cancel(&mut self, id: RegionId, op: OpId) -> bool {
        let Some(entry) = self.homes.get_mut(&id.seq) else {
            return false;
        };
        let Some(w) = entry.waits_mut() else {
            return false;
        };
        if let Some(pos) = w.queue.iter().position(|r| r.who == Requester::Local(op)) {
            w.queue.remove(pos);
            debug!(node = %self.node, region = %id, op, "cancelled a queued request");
            return true;
        }
        if let Some(serving) = w.serving.as_mut()
            && serving.req.who == Requester::Local(op)
            && !serving.cancelled
        {
            // Its recalls are out: it is served to the end, without an answer.
            serving.cancelled = true;
            debug!(node = %self.node, region = %id, op, "cancelled the request being served");
            return true;
        }
        false
    }

    /// Node `node` restarted: forget it in every directory entry homed here.
    pub(crate) fn home_peer_reset(&mut self, node: NodeId, cause: PeerReset) {
        let seqs: Vec<u64> = self.homes.seqs().collect();
        for seq in seqs {
            let id = RegionId::new(self.node, seq);
            let entry = self.homes.get_mut(&seq).expect("home entry");
            if let Some(w) = entry.waits_mut() {
                w.queue.retain(|r| r.who != Requester::Remote(node));
                if let Some(serving) = w.serving.as_mut() {
                    serving.acks.remove(&node);
                    if serving.req.who == Requester::Remote(node) {
                        serving.cancelled = true;
                    }
                }
            }
            let lost = entry.dir == DirState::Exclusive(node);
            entry.remove_holder(node);
            if lost {
                // Its copy may have been modified since the home's image was installed: the
                // home's copy, as it is, is the region now.
                self.stats.lost_copies += 1;
                tracing::warn!(node = %self.node, region = %id, owner = %node, ?cause,
                    "the exclusive owner restarted or was fenced: its copy is lost");
                self.events.push_back(Event::CopyLost { region: id });
            }
            self.home_advance(id);
        }
    }

    /// Whether the directory says `node` holds the exclusive copy of `id` (for this node: the
    /// home holds it and no remote copy exists).
    pub(crate) fn home_holds_exclusive(&self, id: RegionId, node: NodeId) -> bool {
        if id.home != self.node {
            return false;
        }
        match self.homes.get(&id.seq) {
            Some(e) if node == self.node => e.dir == DirState::Unowned,
            Some(e) => e.dir == DirState::Exclusive(node),
            None => false,
        }
    }

    /// See [`Engine::hold`].
    pub(crate) fn home_hold(&mut self, id: RegionId) -> Result<(), OpError> {
        if id.home != self.node {
            return Err(OpError::NoSuchRegion(id));
        }
        let Some(entry) = self.homes.get_mut(&id.seq) else {
            return Err(self.home_missing(id));
        };
        entry.holds = entry.holds.checked_add(1).ok_or(OpError::InUse(id))?;
        // The home's own copy admits no hit until the decision (a queued request also
        // revokes when it starts).
        entry.cell.word().revoke();
        trace!(node = %self.node, region = %id, holds = entry.holds, "held");
        Ok(())
    }

    /// See [`Engine::release_hold`].
    pub(crate) fn home_release_hold(&mut self, id: RegionId) {
        let Some(entry) = self.homes.get_mut(&id.seq) else {
            return;
        };
        entry.holds = entry.holds.saturating_sub(1);
        trace!(node = %self.node, region = %id, holds = entry.holds, "hold released");
        if entry.holds == 0 {
            self.home_advance(id);
        }
    }

    /// See [`Engine::delete_committed`] (the region is homed here).
    pub(crate) fn home_delete_committed(&mut self, id: RegionId) {
        let Some(entry) = self.homes.get_mut(&id.seq) else {
            return;
        };
        entry.delete_first = true;
        debug!(node = %self.node, region = %id, "a committed delete goes first");
        self.home_advance(id);
    }

    /// Replaces the home's copy of `id` with `bytes` (see [`Engine::install_master`]).
    pub(crate) fn home_install_master(
        &mut self,
        id: RegionId,
        bytes: &[u8],
    ) -> Result<(), OpError> {
        if id.home != self.node {
            return Err(OpError::NoSuchRegion(id));
        }
        let Some(entry) = self.homes.get(&id.seq) else {
            return Err(self.home_missing(id));
        };
        // No hit may start while the value is replaced.
        let busy = entry.cell.word().revoke();
        let result = if busy.is_idle() {
            let version = entry.cell.version() + 1;
            entry
                .cell
                .install(bytes, version)
                .map_err(|source| OpError::Codec { region: id, source })
        } else {
            Err(OpError::InUse(id))
        };
        debug!(node = %self.node, region = %id, ok = result.is_ok(), "install master");
        self.home_advance(id);
        result
    }

    /// Answers a requester after (or because of) the region's deletion.
    fn home_reply_deleted(&mut self, id: RegionId, who: Requester, was_delete: bool) {
        match (who, was_delete) {
            (Requester::Local(op), true) => self.complete(op, Ok(())),
            (Requester::Local(op), false) => self.complete(op, Err(OpError::Deleted(id))),
            (Requester::Remote(r), true) => self.send(r, Message::DeleteAck { region: id }),
            (Requester::Remote(r), false) => self.send(
                r,
                Message::Refused {
                    region: id,
                    reason: Refusal::Deleted,
                },
            ),
            (Requester::Decided, _) => {}
        }
    }

    fn home_refusal(&self, id: RegionId, fingerprint: Option<u64>) -> Option<Refusal> {
        match self.homes.get(&id.seq) {
            None if self.homes.is_deleted(&id.seq) => Some(Refusal::Deleted),
            None => Some(Refusal::NoSuchRegion),
            Some(e) => match fingerprint {
                Some(f) if f != e.cell.fingerprint() => Some(Refusal::WrongType {
                    actual: e.cell.fingerprint(),
                }),
                _ => None,
            },
        }
    }

    /// A message about a region homed here.
    pub(crate) fn home_message(
        &mut self,
        from: NodeId,
        id: RegionId,
        msg: Message,
    ) -> Result<(), ProtocolViolation> {
        match msg {
            Message::Map { fingerprint, .. } => {
                let reply = match self.home_refusal(id, Some(fingerprint)) {
                    Some(reason) => Message::Refused { region: id, reason },
                    None => Message::MapOk { region: id },
                };
                self.send(from, reply);
            }
            Message::GetShared {
                fingerprint,
                priority,
                ..
            }
            | Message::GetExclusive {
                fingerprint,
                priority,
                ..
            } => {
                let want = if matches!(msg, Message::GetShared { .. }) {
                    AccessMode::Read
                } else {
                    AccessMode::Write
                };
                if let Some(reason) = self.home_refusal(id, Some(fingerprint)) {
                    self.send(from, Message::Refused { region: id, reason });
                    return Ok(());
                }
                let entry = &self.homes[&id.seq];
                let holds = match &entry.dir {
                    DirState::Exclusive(o) => *o == from,
                    DirState::Shared(s) => want == AccessMode::Read && s.contains(&from),
                    DirState::Unowned => false,
                };
                let asked =
                    |r: &Request| r.who == Requester::Remote(from) && r.want != Want::Delete;
                // A request being served that was withdrawn (its requester's session ended:
                // a restart or a fence) is not this one: the requester may ask again in its
                // new session while the withdrawn one finishes its recalls.
                let queued = entry.w().queue.iter().any(asked)
                    || entry
                        .w()
                        .serving
                        .as_ref()
                        .is_some_and(|s| !s.cancelled && asked(&s.req));
                if holds || queued {
                    return Err(self.violation(
                        from,
                        Some(id),
                        "request for a copy it holds or already asked for",
                    ));
                }
                self.home_enqueue(id, Request::access(Requester::Remote(from), want, priority));
            }
            Message::Delete { committed, .. } => match self.home_refusal(id, None) {
                Some(Refusal::Deleted) => self.send(from, Message::DeleteAck { region: id }),
                Some(reason) => self.send(from, Message::Refused { region: id, reason }),
                None => {
                    let request = if committed {
                        Request::committed_delete(from)
                    } else {
                        Request::delete(Requester::Remote(from))
                    };
                    let entry = self.homes.get_mut(&id.seq).expect("home entry");
                    if entry.dir == DirState::Exclusive(from) {
                        // The owner holds the only copy: no request waiting here has been
                        // answered since it took the region, so the delete goes first. (A
                        // transaction's delete is sent before its writes are released, and
                        // its sender is not recalled: FIFO links then never show them here
                        // with the region still alive.)
                        entry.delete_first = true;
                        entry.w_mut().queue.push_front(request);
                        self.home_advance(id);
                    } else {
                        self.home_enqueue(id, request);
                    }
                }
            },
            Message::RecallAck { image, .. } => {
                let violation = |e: &Engine, what: &str| Err(e.violation(from, Some(id), what));
                let Some(entry) = self.homes.get_mut(&id.seq) else {
                    return violation(self, "recall ack for a region not homed here");
                };
                let Some(serving) = entry.waits_mut().and_then(|w| w.serving.as_mut()) else {
                    return violation(self, "recall ack while no recall is outstanding");
                };
                if !serving.acks.remove(&from) {
                    return violation(self, "recall ack from a node that was not recalled");
                }
                let downgrade = serving.req.want == Want::Read;
                let owner = entry.dir == DirState::Exclusive(from);
                match image {
                    Some(image) => {
                        if !owner {
                            return violation(
                                self,
                                "recall ack with data from a node that does not own the region",
                            );
                        }
                        install(&*entry.cell, &image, self.decoded.take())
                            .map_err(|e| self.violation(from, Some(id), e))?;
                        self.keep_returned_image(id, image);
                        let entry = self.homes.get_mut(&id.seq).expect("home entry");
                        entry.dir = if downgrade {
                            DirState::Shared(Sharers::from([from]))
                        } else {
                            DirState::Unowned
                        };
                    }
                    None if owner => {
                        // The owner could not return its copy (it grew past the size limit):
                        // its writes are lost, the home keeps its last image (rule 4: counted
                        // and logged here).
                        warn!(node = %self.node, region = %id, owner = %from, "the owner returned no data for its modified copy (too large to ship): its writes are lost, the last image stays");
                        self.stats.lost_copies += 1;
                        let entry = self.homes.get_mut(&id.seq).expect("home entry");
                        entry.dir = DirState::Unowned;
                    }
                    None => entry.remove_holder(from),
                }
                self.home_advance(id);
            }
            Message::Flush { image, .. } => {
                let Some(entry) = self.homes.get_mut(&id.seq) else {
                    // Deleted meanwhile: the flushed copy is moot.
                    self.send(from, Message::FlushAck { region: id });
                    return Ok(());
                };
                match image {
                    Some(image) => {
                        if entry.dir != DirState::Exclusive(from) {
                            return Err(self.violation(
                                from,
                                Some(id),
                                "flush with data from a node that does not own the region",
                            ));
                        }
                        install(&*entry.cell, &image, self.decoded.take())
                            .map_err(|e| self.violation(from, Some(id), e))?;
                        self.keep_returned_image(id, image);
                        self.homes.get_mut(&id.seq).expect("home entry").dir = DirState::Unowned;
                    }
                    None if entry.dir == DirState::Exclusive(from) => {
                        // As for a recall answered without data: the owner's writes are lost.
                        warn!(node = %self.node, region = %id, owner = %from, "the owner flushed its modified copy without data (too large to ship): its writes are lost, the last image stays");
                        self.stats.lost_copies += 1;
                        entry.dir = DirState::Unowned;
                    }
                    None => {
                        if !matches!(&entry.dir, DirState::Shared(s) if s.contains(&from)) {
                            return Err(self.violation(
                                from,
                                Some(id),
                                "flush of a shared copy the home does not know of",
                            ));
                        }
                        entry.remove_holder(from);
                    }
                }
                self.send(from, Message::FlushAck { region: id });
                self.home_advance(id);
            }
            Message::Contend { priority, .. } => {
                // A request `from` sent now waits under an older priority. It may have been
                // served already (the answer crossed this message): then it is stale.
                let Some(entry) = self.homes.get_mut(&id.seq) else {
                    return Ok(());
                };
                let asked =
                    |r: &Request| r.who == Requester::Remote(from) && r.want != Want::Delete;
                let Some(w) = entry.waits_mut() else {
                    return Ok(());
                };
                if let Some(serving) = w.serving.as_mut().filter(|s| asked(&s.req)) {
                    serving.req.priority = serving.req.priority.min(priority);
                } else if let Some(req) = w.queue.iter_mut().find(|r| asked(r)) {
                    req.priority = req.priority.min(priority);
                } else {
                    return Ok(());
                }
                self.home_contend(id, priority);
                self.home_advance(id);
            }
            Message::MapOk { .. }
            | Message::Data { .. }
            | Message::Recall { .. }
            | Message::FlushAck { .. }
            | Message::DeleteAck { .. }
            | Message::Refused { .. }
            | Message::Hello { .. }
            | Message::HelloAck { .. }
            | Message::Ack { .. }
            | Message::Ping { .. }
            | Message::Pong { .. }
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
                    format!("{} sent to the region's home", msg.kind_name()),
                ));
            }
        }
        Ok(())
    }
}

/// The refusal for an image over `max` bytes, if it is.
fn too_large(image: &RegionImage, max: usize) -> Option<Refusal> {
    (image.bytes.len() > max).then_some(Refusal::TooLarge {
        len: image.bytes.len() as u64,
        max: max as u64,
    })
}

impl Engine {
    /// Refuses a request for a region too large to ship (logged: the program must keep the
    /// region under the frame limit).
    fn refuse_too_large(&mut self, to: NodeId, id: RegionId, reason: Refusal) {
        tracing::error!(node = %self.node, region = %id, requester = %to, ?reason, "region too large to ship; request refused");
        self.send(to, Message::Refused { region: id, reason });
    }
}

pub(crate) fn encode_image(
    cell: &dyn ErasedCell,
) -> Result<RegionImage, crate::region::CodecError> {
    Ok(RegionImage {
        version: cell.version(),
        bytes: cell.encode()?,
    })
}

fn install(
    cell: &dyn ErasedCell,
    image: &RegionImage,
    decoded: Option<DecodedImage>,
) -> Result<(), String> {
    if !cell.word().in_progress().is_idle() {
        return Err("returned data for a region the home is using".into());
    }
    install_image(cell, image, decoded).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::Sharers;
    use crate::region::NodeId;

    #[test]
    fn a_directory_entry_is_48_bytes() {
        assert_eq!(std::mem::size_of::<Sharers>(), 16);
        assert_eq!(std::mem::size_of::<super::DirState>(), 16);
        assert_eq!(std::mem::size_of::<super::HomeEntry>(), 48);
    }

    proptest! {
        /// `Sharers` behaves as the `BTreeSet` it replaced (same answers, same order), inline
        /// and spilled past `INLINE`.
        #[test]
        fn sharers_behave_as_a_sorted_set(ops in proptest::collection::vec((any::<bool>(), 0u32..12), 0..64)) {
            let mut s = Sharers::default();
            let mut model = BTreeSet::new();
            for (insert, n) in ops {
                let n = NodeId(n);
                if insert {
                    prop_assert_eq!(s.insert(n), model.insert(n));
                } else {
                    prop_assert_eq!(s.remove(&n), model.remove(&n));
                }
                prop_assert_eq!(s.len(), model.len());
                prop_assert_eq!(s.is_empty(), model.is_empty());
                prop_assert!(s.iter().eq(model.iter()));
                let rebuilt = model.iter().fold(Sharers::default(), |mut r, &n| {
                    r.insert(n);
                    r
                });
                prop_assert_eq!(&s, &rebuilt, "equal whatever the path to them");
                for m in 0..12 {
                    prop_assert_eq!(s.contains(&NodeId(m)), model.contains(&NodeId(m)));
                }
            }
        }
    }
}
