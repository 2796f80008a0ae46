//! Committing a transaction, and the home's side of it: the write-ahead log and two-phase
//! commit.
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
//! - **Two-phase commit.** If some written region lives elsewhere, the committing node is the
//!   coordinator. (1) It sends `TxPrepare` with the new images to each other home; the home
//!   checks that its directory lists the coordinator as the exclusive holder of every region
//!   concerned (so a copy that went stale, e.g. because the home restarted, is refused), logs
//!   a `Prepare` record, fsyncs and votes yes. (2) With every vote yes, the coordinator logs
//!   its own part and the decision in one `Commit` record naming the participants and fsyncs:
//!   this is the commit point. (3) It sends `TxDecide` to the participants *before*
//!   releasing its locks; since links are FIFO, each home installs the committed image as its
//!   master copy before any later message about the region arrives, logs `Decide`, and
//!   answers `TxDone`; once all have, the coordinator logs `Forget`. A no vote or a timeout
//!   aborts: `TxDecide{commit: false}` to every participant, before-images restored.
//! - **Crashes.** A participant that restarts with a `Prepare` and no `Decide` (in doubt)
//!   asks the coordinator (`TxInquire`) before serving anything; the coordinator answers
//!   commit if its log has the `Commit` record, abort if it has no record of the transaction
//!   (presumed abort: it never decides commit without logging it first), and stays silent
//!   while still collecting votes (its decision will be sent anyway). A coordinator that
//!   restarts re-sends `TxDecide` for every committed transaction not yet forgotten. Decisions
//!   are idempotent. A home that sees a coordinator come back with a new epoch while
//!   transactions it coordinated are prepared here first asks it how they ended (holding back
//!   its other messages), and only then forgets the regions the old incarnation held:
//!   otherwise it would serve a master copy that misses a committed write.
//! - **Failure of the log** (an fsync error) is fatal for that store: the commit fails with
//!   [`Error::LogFailed`], later commits fail at once; nothing is retried silently.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::durable::{DurableStore, LogRecord, StoreError};
use crl_core::wire::{Message, TxImage};
use crl_core::{NodeId, RegionId};
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::{CommitFailure, Tx};
use crate::error::Error;
use crate::node::Node;

/// A prepared transaction at a participant home, waiting for the decision.
struct Prepared {
    /// Who decides (and is asked after a crash or a fence).
    coordinator: NodeId,
    /// Who shipped the images (holds the regions exclusively until the decision).
    writer: NodeId,
    writes: Vec<(RegionId, Vec<u8>)>,
    /// The regions it deletes if it commits.
    deletes: Vec<RegionId>,
    /// Whether the engine holds its regions until the decision (see `Engine::hold`); not for
    /// a transaction found in doubt at recovery (the node serves nothing until it is decided).
    held: bool,
    /// When it was prepared: a decision that does not come is asked for (see `unanswered`).
    since: std::time::Instant,
}

impl Prepared {
    fn regions(&self) -> impl Iterator<Item = RegionId> + '_ {
        self.writes
            .iter()
            .map(|(r, _)| *r)
            .chain(self.deletes.iter().copied())
    }
}

/// A transaction a writer handed to this node to decide (`TxCommit` from a writer that homes
/// none of the regions it wrote): this node is a participant and the coordinator.
struct Delegated {
    writer: NodeId,
    /// The other homes, prepared with this node as coordinator.
    participants: Vec<NodeId>,
    /// Participants whose vote has not arrived.
    waiting: HashSet<NodeId>,
    writes: Vec<(RegionId, Vec<u8>)>,
    deletes: Vec<RegionId>,
}

/// A writer's transaction handed to a deciding home, waiting for its outcome.
struct Awaiting {
    decider: NodeId,
    since: std::time::Instant,
    reply: Option<oneshot::Sender<Result<(), String>>>,
}

/// Votes per transaction (voter, yes, reason), oldest transaction first.
type EarlyVotes = (VecDeque<u64>, HashMap<u64, Vec<(NodeId, bool, String)>>);

/// The most votes kept for transactions whose `TxCommit` has not arrived yet.
const MAX_EARLY_VOTES: usize = 4096;
/// The most transaction ids remembered as aborted by an inquiry (so that a `TxCommit` that
/// arrives after the answer is refused).
const MAX_PRESUMED_ABORTS: usize = 65_536;
/// The most participants one `TxCommit` may name.
const MAX_PARTICIPANTS: usize = 1024;

/// A set of transaction ids that forgets the oldest past `cap` entries.
struct BoundedSet {
    cap: usize,
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl BoundedSet {
    fn new(cap: usize) -> BoundedSet {
        BoundedSet {
            cap,
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    fn insert(&mut self, txid: u64) {
        if self.set.insert(txid) {
            self.order.push_back(txid);
            if self.order.len() > self.cap
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }

    fn contains(&self, txid: u64) -> bool {
        self.set.contains(&txid)
    }
}

/// Votes a coordinator waits for.
struct Voting {
    waiting: HashSet<NodeId>,
    reply: Option<oneshot::Sender<Result<(), String>>>,
}

/// A node's durable state and its part in two-phase commits.
pub(crate) struct Durability {
    store: DurableStore,
    epoch: u64,
    next_txid: AtomicU64,
    /// The top 32 bits of every transaction id of this incarnation (node id, epoch).
    txid_prefix: u64,
    /// Participant: prepared, undecided.
    prepared: Mutex<HashMap<u64, Prepared>>,
    /// Coordinator: collecting votes.
    voting: Mutex<HashMap<u64, Voting>>,
    /// Coordinator: committed, waiting for `TxDone` from these participants.
    deciding: Mutex<HashMap<u64, HashSet<NodeId>>>,
    /// Participant, after a restart: in doubt until the coordinator answers.
    in_doubt: Mutex<HashMap<u64, NodeId>>,
    /// Decider: transactions handed over by their writers, collecting votes.
    delegated: Mutex<HashMap<u64, Delegated>>,
    /// Decider: votes that arrived before their writer's `TxCommit` (bounded).
    early_votes: Mutex<EarlyVotes>,
    /// Coordinator or decider: the decision is being logged. An inquiry then waits for it
    /// (the decision is sent anyway); it never presumes abort.
    logging: Mutex<HashSet<u64>>,
    /// Transactions answered "abort" to an inquiry while this node had no record of them: a
    /// `TxCommit` for one of them that arrives later is refused.
    presumed_aborted: Mutex<BoundedSet>,
    /// Writer: transactions handed to a deciding home, waiting for the outcome.
    awaiting: Mutex<HashMap<u64, Awaiting>>,
    /// Wakes the driver when a transaction that held a peer's incarnation is resolved.
    resolved: tokio::sync::Notify,
    /// How long a decider waits for the votes of a delegated transaction.
    vote_timeout: Duration,
}

impl Durability {
    pub(crate) fn new(store: DurableStore, node: NodeId, vote_timeout: Duration) -> Durability {
        let epoch = store.epoch();
        let txid_prefix =
            (u64::from(node.0.min(crate::config::MAX_NODE_ID)) << 20) | (epoch & 0xf_ffff);
        Durability {
            store,
            epoch,
            next_txid: AtomicU64::new((txid_prefix << 32) | 1),
            txid_prefix,
            prepared: Mutex::new(HashMap::new()),
            voting: Mutex::new(HashMap::new()),
            deciding: Mutex::new(HashMap::new()),
            in_doubt: Mutex::new(HashMap::new()),
            delegated: Mutex::new(HashMap::new()),
            early_votes: Mutex::new((VecDeque::new(), HashMap::new())),
            logging: Mutex::new(HashSet::new()),
            presumed_aborted: Mutex::new(BoundedSet::new(MAX_PRESUMED_ABORTS)),
            awaiting: Mutex::new(HashMap::new()),
            resolved: tokio::sync::Notify::new(),
            vote_timeout,
        }
    }

    /// Resolves when a transaction that held a peer's incarnation was decided (the driver
    /// then checks [`holding`](Self::holding) again).
    pub(crate) async fn resolved(&self) {
        self.resolved.notified().await
    }

    pub(crate) fn store(&self) -> &DurableStore {
        &self.store
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Registers what recovery found: prepared transactions in doubt, and committed ones whose
    /// participants may not know yet (the node then asks and re-sends, see `resend_decisions`).
    pub(crate) fn recovered(
        &self,
        in_doubt: Vec<crate::durable::InDoubt>,
        coordinating: Vec<crate::durable::Coordinating>,
    ) {
        let mut prepared = self.prepared.lock();
        let mut doubt = self.in_doubt.lock();
        for d in in_doubt {
            doubt.insert(d.txid, d.coordinator);
            prepared.insert(
                d.txid,
                Prepared {
                    coordinator: d.coordinator,
                    writer: d.coordinator,
                    writes: d.writes,
                    deletes: d.deletes,
                    held: false,
                    since: std::time::Instant::now(),
                },
            );
        }
        let mut deciding = self.deciding.lock();
        for c in coordinating {
            deciding.insert(c.txid, c.participants.into_iter().collect());
        }
    }

    /// The transactions still in doubt here, with their coordinators.
    pub(crate) fn in_doubt(&self) -> Vec<(u64, NodeId)> {
        self.in_doubt.lock().iter().map(|(&t, &c)| (t, c)).collect()
    }

    /// How many undecided transactions here were written by `writer` (prepared here, or
    /// handed here to decide): until they are decided, the regions they wrote must keep
    /// `writer` as their holder even if its session ended, or this home would serve contents
    /// that miss a committed write.
    pub(crate) fn holding(&self, writer: NodeId) -> usize {
        let prepared = self
            .prepared
            .lock()
            .values()
            .filter(|p| p.writer == writer)
            .count();
        let delegated = self
            .delegated
            .lock()
            .values()
            .filter(|d| d.writer == writer)
            .count();
        prepared + delegated
    }

    /// `peer`'s session ended (it restarted, or one of the two fenced the other): the
    /// transactions prepared here that it wrote or decides are in doubt until their
    /// coordinator answers (asked now, and again every second). Transactions this node handed
    /// to `peer` to decide are asked about too: an answer sent on the old session is lost.
    pub(crate) fn inquire_after_reset(&self, node: &Node, peer: NodeId) {
        let asks: Vec<(u64, NodeId)> = self
            .prepared
            .lock()
            .iter()
            .filter(|(_, p)| p.coordinator == peer || p.writer == peer)
            .map(|(&t, p)| (t, p.coordinator))
            .collect();
        {
            let mut doubt = self.in_doubt.lock();
            for &(txid, coordinator) in &asks {
                doubt.insert(txid, coordinator);
            }
        }
        for (txid, coordinator) in asks {
            node.send(coordinator, Message::TxInquire { txid });
        }
        let handed: Vec<u64> = self
            .awaiting
            .lock()
            .iter()
            .filter(|(_, a)| a.decider == peer)
            .map(|(&t, _)| t)
            .collect();
        for txid in handed {
            node.send(peer, Message::TxInquire { txid });
        }
    }

    /// Transactions this writer handed to a deciding home and has waited for longer than the
    /// decider's vote timeout (its answer may have been lost with a session).
    pub(crate) fn overdue(&self) -> Vec<(u64, NodeId)> {
        self.awaiting
            .lock()
            .iter()
            .filter(|(_, a)| a.since.elapsed() > self.vote_timeout)
            .map(|(&t, a)| (t, a.decider))
            .collect()
    }

    /// The decisions this coordinator still has to deliver.
    pub(crate) fn undelivered(&self) -> Vec<(u64, Vec<NodeId>)> {
        self.deciding
            .lock()
            .iter()
            .map(|(&t, p)| (t, p.iter().copied().collect()))
            .collect()
    }

    /// Logs the creation of a region at this home and waits until it is durable.
    pub(crate) async fn log_create(
        &self,
        region: RegionId,
        fingerprint: u64,
        type_name: &str,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.append_all(vec![LogRecord::Create {
            region,
            fingerprint,
            type_name: type_name.to_owned(),
            bytes,
        }])
        .await
    }

    /// A new transaction id: this node's id, 20 bits of its epoch, and a counter; `None`
    /// once the incarnation has used the counter's 2^32 - 1 ids (the next would carry
    /// another epoch's bits and could collide with a later incarnation's).
    fn next_txid(&self) -> Option<u64> {
        let txid = self.next_txid.fetch_add(1, Ordering::Relaxed);
        (txid >> 32 == self.txid_prefix).then_some(txid)
    }

    /// The node whose transaction `txid` is (its writer: node ids fit in the top 12 bits,
    /// see [`MAX_NODE_ID`](crate::config::MAX_NODE_ID)).
    fn writer_of(txid: u64) -> NodeId {
        NodeId((txid >> 52) as u32)
    }

    /// Appends `records` and waits until the last one is durable.
    async fn append_all(&self, records: Vec<LogRecord>) -> Result<(), StoreError> {
        let mut last = None;
        for r in records {
            let (tx, rx) = oneshot::channel();
            self.store.append(
                r,
                Box::new(move |res| {
                    let _ = tx.send(res);
                }),
            );
            last = Some(rx);
        }
        // The writer completes records in order, so the last completion covers them all; an
        // error fails every record of the batch and every later one.
        match last {
            Some(rx) => rx.await.unwrap_or(Err(StoreError::Closed)),
            None => Ok(()),
        }
    }

    /// Handles a transaction message from `from` (the driver routes them here).
    pub(crate) fn handle(self: &Arc<Self>, node: &Node, from: NodeId, msg: Message) {
        match msg {
            Message::TxPrepare {
                txid,
                coordinator,
                writes,
                deletes,
            } => self.on_prepare(node, from, txid, coordinator, writes, deletes),
            Message::TxReply { txid, ok, reason } => self.on_reply(node, from, txid, ok, reason),
            Message::TxDecide { txid, commit } => {
                if self.answer_awaiting(node, from, txid, commit, String::new()) {
                    return;
                }
                self.on_decide(node, from, txid, commit)
            }
            Message::TxDone { txid } => {
                let mut deciding = self.deciding.lock();
                if let Some(waiting) = deciding.get_mut(&txid) {
                    waiting.remove(&from);
                    if waiting.is_empty() {
                        deciding.remove(&txid);
                        self.store.append_lazy(LogRecord::Forget { txid });
                    }
                }
            }
            Message::TxInquire { txid } => self.on_inquire(node, from, txid),
            Message::TxCommit {
                txid,
                writes,
                deletes,
                participants,
            } => self.on_delegated_commit(node, from, txid, writes, deletes, participants),
            other => warn!(%from, "not a transaction message: {other:?}"),
        }
    }

    /// A vote (`TxReply` from a participant), or a deciding home's refusal of a transaction
    /// this node handed to it.
    fn on_reply(self: &Arc<Self>, node: &Node, from: NodeId, txid: u64, ok: bool, reason: String) {
        if !ok && self.answer_awaiting(node, from, txid, false, reason.clone()) {
            return;
        }
        {
            let mut voting = self.voting.lock();
            if let Some(v) = voting.get_mut(&txid) {
                if !v.waiting.contains(&from) {
                    // Not a participant, or one that has voted already: an authenticated
                    // peer still may not decide another node's transaction.
                    warn!(%from, txid, ok, "ignoring a vote from a node that owes none");
                    return;
                }
                if !ok {
                    if let Some(r) = v.reply.take() {
                        let _ = r.send(Err(format!("{from} voted no: {reason}")));
                    }
                } else {
                    v.waiting.remove(&from);
                    if v.waiting.is_empty()
                        && let Some(r) = v.reply.take()
                    {
                        let _ = r.send(Ok(()));
                    }
                }
                return;
            }
        }
        let all_voted = {
            let mut delegated = self.delegated.lock();
            match delegated.get_mut(&txid) {
                Some(d) if !d.waiting.contains(&from) => {
                    warn!(%from, txid, ok, "ignoring a vote from a node that owes none");
                    return;
                }
                Some(d) => {
                    if ok {
                        d.waiting.remove(&from);
                        Some(d.waiting.is_empty())
                    } else {
                        None
                    }
                }
                None => {
                    // The writer's TxCommit may still be on its way (another link): keep
                    // the vote, within a bound. A vote for a transaction already decided or
                    // forgotten is kept too, and ages out.
                    if !self.presumed_aborted.lock().contains(txid) {
                        let mut early = self.early_votes.lock();
                        let (order, votes) = &mut *early;
                        if !votes.contains_key(&txid) {
                            order.push_back(txid);
                            if order.len() > MAX_EARLY_VOTES
                                && let Some(old) = order.pop_front()
                            {
                                votes.remove(&old);
                            }
                        }
                        votes.entry(txid).or_default().push((from, ok, reason));
                    }
                    return;
                }
            }
        };
        match all_voted {
            None => self.abort_delegated(node, txid, format!("{from} voted no: {reason}")),
            Some(true) => self.decide_delegated(node, txid),
            Some(false) => {}
        }
    }

    /// The outcome of a transaction this node handed to `from` to decide; false if there is
    /// no such transaction (the message is for another role).
    fn answer_awaiting(
        &self,
        node: &Node,
        from: NodeId,
        txid: u64,
        commit: bool,
        reason: String,
    ) -> bool {
        let reply = {
            let mut awaiting = self.awaiting.lock();
            match awaiting.get(&txid) {
                Some(a) if a.decider == from => awaiting.remove(&txid).and_then(|a| a.reply),
                _ => return false,
            }
        };
        if commit {
            // The decider forgets the transaction once everyone, the writer too, knows.
            node.send(from, Message::TxDone { txid });
        }
        if let Some(r) = reply {
            let _ = r.send(if commit {
                Ok(())
            } else if reason.is_empty() {
                Err(format!("{from} decided abort"))
            } else {
                Err(reason)
            });
        }
        true
    }

    /// What was decided? Answered only from what this node knows for sure: a transaction
    /// still voting or being logged gets no answer yet (its decision will be sent anyway).
    fn on_inquire(&self, node: &Node, from: NodeId, txid: u64) {
        // States move forward only (voting → logging → deciding, each entered before the
        // previous is left), so checking them in that order never misses a transaction that
        // is moving on meanwhile.
        if self.voting.lock().contains_key(&txid)
            || self.delegated.lock().contains_key(&txid)
            || self.logging.lock().contains(&txid)
        {
            return;
        }
        if self.deciding.lock().contains_key(&txid) {
            node.send(from, Message::TxDecide { txid, commit: true });
            return;
        }
        // Presumed abort: a commit is always logged before it is announced. Remembered, so
        // that a TxCommit still on its way is refused.
        self.presumed_aborted.lock().insert(txid);
        self.early_votes.lock().1.remove(&txid);
        node.send(
            from,
            Message::TxDecide {
                txid,
                commit: false,
            },
        );
    }

    /// A writer hands this node a transaction to decide: this node's own part, and the other
    /// participants (prepared by the writer, voting to this node).
    fn on_delegated_commit(
        self: &Arc<Self>,
        node: &Node,
        from: NodeId,
        txid: u64,
        writes: Vec<TxImage>,
        deletes: Vec<RegionId>,
        participants: Vec<NodeId>,
    ) {
        let refuse = |reason: String| {
            warn!(%from, txid, "refusing a transaction to decide: {reason}");
            node.send(
                from,
                Message::TxReply {
                    txid,
                    ok: false,
                    reason,
                },
            );
        };
        let me = node.id();
        if Self::writer_of(txid) != from {
            return refuse(format!(
                "transaction id {txid:#x} is not {from}'s (it is {}'s)",
                Self::writer_of(txid)
            ));
        }
        if writes.is_empty() && deletes.is_empty() {
            return refuse("a commit with no part at its decider".into());
        }
        let others: HashSet<NodeId> = participants.iter().copied().collect();
        if participants.len() > MAX_PARTICIPANTS
            || others.len() != participants.len()
            || others.contains(&me)
            || others.contains(&from)
        {
            return refuse(format!("bad participants {participants:?}"));
        }
        if self.presumed_aborted.lock().contains(txid) {
            return refuse(format!("{me} answered an inquiry about it: aborted"));
        }
        if self.prepared.lock().contains_key(&txid)
            || self.voting.lock().contains_key(&txid)
            || self.delegated.lock().contains_key(&txid)
            || self.logging.lock().contains(&txid)
            || self.deciding.lock().contains_key(&txid)
        {
            return refuse("the transaction id is in use".into());
        }
        let regions: Vec<RegionId> = writes
            .iter()
            .map(|w| w.region)
            .chain(deletes.iter().copied())
            .collect();
        if let Some(bad) = node.with_engine(|engine| {
            regions
                .iter()
                .copied()
                .find(|&r| r.home != me || !engine.holds_exclusive(r, from))
        }) {
            return refuse(format!(
                "{from} does not hold {bad} exclusively here (stale copy?)"
            ));
        }
        let mut waiting = others;
        let mut no = None;
        for (voter, ok, reason) in self.early_votes.lock().1.remove(&txid).unwrap_or_default() {
            if waiting.contains(&voter) {
                if ok {
                    waiting.remove(&voter);
                } else {
                    no.get_or_insert(format!("{voter} voted no: {reason}"));
                }
            }
        }
        let all_voted = waiting.is_empty();
        self.delegated.lock().insert(
            txid,
            Delegated {
                writer: from,
                participants,
                waiting,
                writes: writes.into_iter().map(|w| (w.region, w.bytes)).collect(),
                deletes,
            },
        );
        if let Some(why) = no {
            return self.abort_delegated(node, txid, why);
        }
        if all_voted {
            return self.decide_delegated(node, txid);
        }
        let (this, node2, after) = (self.clone(), node.clone(), self.vote_timeout);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            this.abort_delegated(&node2, txid, format!("votes timed out after {after:?}"));
        });
    }

    /// Every vote of a delegated transaction is yes: log the decision with this node's part,
    /// then announce it (participants, and the writer).
    fn decide_delegated(self: &Arc<Self>, node: &Node, txid: u64) {
        let d = {
            let mut delegated = self.delegated.lock();
            let Some(d) = delegated.remove(&txid) else {
                return;
            };
            // Entered before `delegated` is left: an inquiry never sees neither.
            self.logging.lock().insert(txid);
            d
        };
        let mut told: Vec<NodeId> = d.participants.clone();
        told.push(d.writer);
        let record = LogRecord::Commit {
            txid,
            writes: d.writes.clone(),
            deletes: d.deletes.clone(),
            participants: told.clone(),
        };
        let (this, node2) = (self.clone(), node.clone());
        // Completions run on the log's writer thread: a delayed send needs the runtime.
        let rt = node
            .tx_fault()
            .and_then(|_| tokio::runtime::Handle::try_current().ok());
        self.store.append(
            record,
            Box::new(move |res| {
                match res {
                    Ok(()) => {
                        node2.with_engine(|engine| {
                            for (region, bytes) in &d.writes {
                                if let Err(e) = engine.install_master(*region, bytes) {
                                    warn!(%region, txid, "installing a committed image: {e}");
                                }
                            }
                            for &region in &d.deletes {
                                engine.delete_committed(region);
                            }
                        });
                        this.deciding
                            .lock()
                            .insert(txid, told.iter().copied().collect());
                        this.logging.lock().remove(&txid);
                        for &to in &told {
                            if let Some(super::TxFault::DelayDecisionTo(slow, by)) =
                                node2.tx_fault()
                                && slow == to
                            {
                                let node3 = node2.clone();
                                let Some(rt) = &rt else { continue };
                                rt.spawn(async move {
                                    tokio::time::sleep(by).await;
                                    node3.send(to, Message::TxDecide { txid, commit: true });
                                });
                                continue;
                            }
                            node2.send(to, Message::TxDecide { txid, commit: true });
                        }
                        debug!(txid, writer = %d.writer, ?d.participants, "delegated commit decided");
                    }
                    Err(e) => {
                        this.logging.lock().remove(&txid);
                        for &p in &d.participants {
                            node2.send(
                                p,
                                Message::TxDecide {
                                    txid,
                                    commit: false,
                                },
                            );
                        }
                        node2.send(
                            d.writer,
                            Message::TxReply {
                                txid,
                                ok: false,
                                reason: format!("the decider's log failed: {e}"),
                            },
                        );
                    }
                }
                this.resolved.notify_one();
            }),
        );
    }

    /// Aborts a delegated transaction that is still collecting votes (a no, a timeout, a
    /// participant that restarted); nothing if it was decided meanwhile.
    fn abort_delegated(&self, node: &Node, txid: u64, why: String) {
        let Some(d) = self.delegated.lock().remove(&txid) else {
            return;
        };
        debug!(txid, writer = %d.writer, "delegated transaction aborted: {why}");
        for &p in &d.participants {
            node.send(
                p,
                Message::TxDecide {
                    txid,
                    commit: false,
                },
            );
        }
        node.send(
            d.writer,
            Message::TxReply {
                txid,
                ok: false,
                reason: why,
            },
        );
        self.resolved.notify_one();
    }

    fn on_prepare(
        self: &Arc<Self>,
        node: &Node,
        from: NodeId,
        txid: u64,
        coordinator: NodeId,
        writes: Vec<TxImage>,
        deletes: Vec<RegionId>,
    ) {
        let me = node.id();
        // The vote goes to the coordinator: the writer itself, or the home it handed the
        // decision to (which must be another node).
        let refuse = |reason: String| {
            let to = if coordinator == me { from } else { coordinator };
            node.send(
                to,
                Message::TxReply {
                    txid,
                    ok: false,
                    reason,
                },
            );
        };
        if Self::writer_of(txid) != from {
            // Every prepare comes from the transaction's writer: a peer may not prepare (and
            // so hold regions under) another node's transaction id.
            warn!(%from, txid, "refusing a prepare with another node's transaction id");
            return refuse(format!(
                "transaction id {txid:#x} is not {from}'s (it is {}'s)",
                Self::writer_of(txid)
            ));
        }
        if coordinator == me {
            warn!(%from, txid, "refusing a prepare that names this node its coordinator");
            return refuse(format!(
                "prepare from {from} names {me}, a participant, as its coordinator"
            ));
        }
        if writes.is_empty() && deletes.is_empty() {
            // Nothing to make durable: a correct coordinator never sends one, and storing it
            // would let any peer grow this node's log and in-doubt table for free.
            warn!(%from, txid, "refusing an empty prepare");
            return refuse("an empty prepare".into());
        }
        if self.prepared.lock().contains_key(&txid) {
            // Sessions drop duplicates, so this is another node's transaction id.
            warn!(%from, txid, "refusing a prepare whose transaction id is in use here");
            return refuse("the transaction id is in use".into());
        }
        let regions: Vec<RegionId> = writes
            .iter()
            .map(|w| w.region)
            .chain(deletes.iter().copied())
            .collect();
        if let Some(bad) = node.with_engine(|engine| {
            regions
                .iter()
                .copied()
                .find(|&r| r.home != me || !engine.holds_exclusive(r, from))
        }) {
            return refuse(format!(
                "{from} does not hold {bad} exclusively here (stale copy?)"
            ));
        }
        let writes: Vec<(RegionId, Vec<u8>)> =
            writes.into_iter().map(|w| (w.region, w.bytes)).collect();
        // Until the decision is known here, nobody gets these regions: the writer may let
        // them go as soon as it learns the decision, possibly before this node does (from
        // another coordinator), and what this node serves must include the decision.
        node.with_engine(|engine| {
            for &r in &regions {
                if let Err(e) = engine.hold(r) {
                    warn!(region = %r, txid, "holding a prepared region: {e}");
                }
            }
        });
        self.prepared.lock().insert(
            txid,
            Prepared {
                coordinator,
                writer: from,
                writes: writes.clone(),
                deletes: deletes.clone(),
                held: true,
                since: std::time::Instant::now(),
            },
        );
        let node2 = node.clone();
        self.store.append(
            LogRecord::Prepare {
                txid,
                coordinator,
                writes,
                deletes,
            },
            Box::new(move |res| {
                let (ok, reason) = match res {
                    Ok(()) => (true, String::new()),
                    Err(e) => (false, e.to_string()),
                };
                node2.send(coordinator, Message::TxReply { txid, ok, reason });
            }),
        );
    }

    fn on_decide(self: &Arc<Self>, node: &Node, from: NodeId, txid: u64, commit: bool) {
        let Some(p) = self.prepared.lock().remove(&txid) else {
            // Already decided (a repeated decision): just confirm.
            node.send(from, Message::TxDone { txid });
            return;
        };
        if p.coordinator != from {
            warn!(%from, txid, "decision from a node that does not coordinate the transaction");
            self.prepared.lock().insert(txid, p);
            return;
        }
        self.in_doubt.lock().remove(&txid);
        // Queued first: whatever is logged after the holds are released (a later commit on
        // these regions) follows the decision in the log, and replays after it.
        let node2 = node.clone();
        self.store.append(
            LogRecord::Decide { txid, commit },
            Box::new(move |res| match res {
                Ok(()) => node2.send(from, Message::TxDone { txid }),
                Err(e) => warn!(txid, "logging a decision failed: {e}"),
            }),
        );
        node.with_engine(|engine| {
            if commit {
                for (region, bytes) in &p.writes {
                    if let Err(e) = engine.install_master(*region, bytes) {
                        warn!(%region, txid, "installing a committed image: {e}");
                    }
                }
                for &region in &p.deletes {
                    engine.delete_committed(region);
                }
            }
            if p.held {
                for region in p.regions() {
                    engine.release_hold(region);
                }
            }
        });
        self.resolved.notify_one();
    }

    /// Transactions prepared here for longer than twice the vote timeout without a decision:
    /// the decision may never be sent (a coordinator that aborted before this prepare
    /// arrived, from another link), so the coordinator is asked. Safe: a coordinator commits
    /// only after this node's vote, so it cannot have forgotten a commit this node has not
    /// confirmed; what it does not know was aborted.
    pub(crate) fn unanswered(&self) -> Vec<(u64, NodeId)> {
        let patience = self.vote_timeout * 2;
        self.prepared
            .lock()
            .iter()
            .filter(|(_, p)| p.held && p.since.elapsed() > patience)
            .map(|(&t, p)| (t, p.coordinator))
            .collect()
    }

    /// A peer restarted (and the node resolved the transactions it coordinated that were
    /// prepared here, see the driver): votes it owed will never come; decisions it had not
    /// confirmed are sent again.
    pub(crate) fn peer_restarted(&self, node: &Node, peer: NodeId) {
        let orphaned: Vec<u64> = self
            .delegated
            .lock()
            .iter()
            .filter(|(_, d)| d.waiting.contains(&peer))
            .map(|(&t, _)| t)
            .collect();
        for txid in orphaned {
            self.abort_delegated(node, txid, format!("{peer} restarted before voting"));
        }
        self.inquire_after_reset(node, peer);
        for v in self.voting.lock().values_mut() {
            if v.waiting.contains(&peer)
                && let Some(r) = v.reply.take()
            {
                let _ = r.send(Err(format!("{peer} restarted before voting")));
            }
        }
        for (&txid, waiting) in self.deciding.lock().iter() {
            if waiting.contains(&peer) {
                node.send(peer, Message::TxDecide { txid, commit: true });
            }
        }
    }
}

/// Commits `tx` (its closure returned `Ok`).
pub(crate) async fn commit(tx: &Tx) -> Result<(), CommitFailure> {
    let node = tx.inner.node.clone();
    tx.inner.shared.begin_commit();
    // A doomed transaction (one of its operations failed: wounded, a region changed under an
    // upgrade, a home restarted) may have let a lock go even if its closure swallowed the
    // error and returned `Ok`: it must not commit. (A wound no operation observed stops
    // nothing: the transaction still holds every lock, and committing releases them.)
    if tx.has_failed_operation() || tx.inner.shared.lost_a_lock() {
        super::abort(tx).await;
        return Err(CommitFailure::Retry(
            "the transaction was doomed before its commit".into(),
        ));
    }
    // The commit is the transaction's serialization point: every copy it holds must still be
    // under a valid lease now, or its home may have reclaimed it (DESIGN.md §6, rule 2).
    if let Some(home) = tx.held_homes().into_iter().find(|&h| !node.lease_valid(h)) {
        super::abort(tx).await;
        return Err(CommitFailure::Retry(format!(
            "the lease from {home} lapsed before the commit"
        )));
    }
    let written = match tx.written() {
        Ok(w) => w,
        Err(e) => {
            super::abort(tx).await;
            return Err(CommitFailure::Fatal(e));
        }
    };
    let Some(durability) = node.durability() else {
        return finish(tx, &node).await;
    };
    if let Some(e) = durability.store.failure() {
        super::abort(tx).await;
        return Err(CommitFailure::Fatal(Error::LogFailed(e.to_string())));
    }
    let me = node.id();
    let deletes = tx.inner.state.lock().deletes.clone();
    let mut local = Vec::new();
    let mut creates = Vec::new();
    let mut remote: BTreeMap<NodeId, (Vec<TxImage>, Vec<RegionId>)> = BTreeMap::new();
    for w in written {
        if w.home() != me {
            remote.entry(w.home()).or_default().0.push(TxImage {
                region: w.region,
                bytes: w.bytes,
            });
        } else if w.created {
            creates.push(w);
        } else {
            local.push((w.region, w.bytes));
        }
    }
    let mut local_deletes = Vec::new();
    for d in deletes {
        if d.home == me {
            local_deletes.push(d);
        } else {
            remote.entry(d.home).or_default().1.push(d);
        }
    }
    if remote.is_empty() && local.is_empty() && creates.is_empty() && local_deletes.is_empty() {
        return finish(tx, &node).await; // read-only
    }
    let Some(txid) = durability.next_txid() else {
        super::abort(tx).await;
        return Err(CommitFailure::Fatal(Error::TxIdsExhausted));
    };
    if local.is_empty() && creates.is_empty() && local_deletes.is_empty() {
        // Nothing of this transaction lives here: a home decides it, so that this node being
        // cut off or fenced never leaves prepared regions waiting for it.
        return commit_delegated(tx, &node, durability, txid, remote).await;
    }
    let participants: Vec<NodeId> = remote.keys().copied().collect();
    if !remote.is_empty() {
        // Phase 1: prepare at every other home.
        let (reply, votes) = oneshot::channel();
        durability.voting.lock().insert(
            txid,
            Voting {
                waiting: participants.iter().copied().collect(),
                reply: Some(reply),
            },
        );
        for (&home, (writes, deletes)) in &remote {
            node.send(
                home,
                Message::TxPrepare {
                    txid,
                    coordinator: me,
                    writes: writes.clone(),
                    deletes: deletes.clone(),
                },
            );
        }
        let outcome = tokio::time::timeout(node.op_timeout(), votes).await;
        if let Some(super::TxFault::StallMidCommit(d)) = node.tx_fault() {
            tokio::time::sleep(d).await;
        }
        if matches!(outcome, Ok(Ok(Ok(())))) {
            // Entered before `voting` is left: an inquiry never sees neither, so it never
            // presumes abort while the commit record is being written.
            durability.logging.lock().insert(txid);
        }
        durability.voting.lock().remove(&txid);
        let failure = match outcome {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(why))) => Some(CommitFailure::Retry(why)),
            Ok(Err(_)) => Some(CommitFailure::Fatal(Error::ShutDown)),
            Err(_) => Some(CommitFailure::Fatal(Error::CommitTimedOut {
                txid,
                after: node.op_timeout(),
            })),
        };
        if let Some(f) = failure {
            for &home in &participants {
                node.send(
                    home,
                    Message::TxDecide {
                        txid,
                        commit: false,
                    },
                );
            }
            super::abort(tx).await;
            return Err(f);
        }
    }
    // The commit point: this node's part and (for 2PC) the decision, durable in one batch.
    let mut records: Vec<LogRecord> = creates
        .iter()
        .map(|c| LogRecord::Create {
            region: c.region,
            fingerprint: c.fingerprint,
            type_name: c.type_name.to_owned(),
            bytes: c.bytes.clone(),
        })
        .collect();
    records.push(LogRecord::Commit {
        txid,
        writes: local,
        deletes: local_deletes,
        participants: participants.clone(),
    });
    if let Err(e) = durability.append_all(records).await {
        durability.logging.lock().remove(&txid);
        for &home in &participants {
            node.send(
                home,
                Message::TxDecide {
                    txid,
                    commit: false,
                },
            );
        }
        super::abort(tx).await;
        return Err(CommitFailure::Fatal(Error::LogFailed(e.to_string())));
    }
    if !participants.is_empty() {
        durability
            .deciding
            .lock()
            .insert(txid, participants.iter().copied().collect());
        durability.logging.lock().remove(&txid);
        // Before the locks are released: FIFO links then deliver the decision ahead of any
        // later message about these regions.
        for &home in &participants {
            node.send(home, Message::TxDecide { txid, commit: true });
        }
        debug!(txid, ?participants, "two-phase commit decided");
    }
    finish(tx, &node).await
}

/// Commits a transaction that wrote nothing homed here: the lowest-numbered home it wrote
/// decides. Every other home is prepared with that home as its coordinator and votes to it;
/// the decider logs its own part with the decision (one phase if it is the only home) and
/// tells the participants and this node. This node logs nothing, so its failure blocks no
/// home: a participant whose writer went silent asks the decider.
async fn commit_delegated(
    tx: &Tx,
    node: &Node,
    durability: &Arc<Durability>,
    txid: u64,
    mut remote: BTreeMap<NodeId, (Vec<TxImage>, Vec<RegionId>)>,
) -> Result<(), CommitFailure> {
    let Some((decider, (writes, deletes))) = remote.pop_first() else {
        return finish(tx, node).await;
    };
    let participants: Vec<NodeId> = remote.keys().copied().collect();
    let (reply, mut outcome) = oneshot::channel();
    durability.awaiting.lock().insert(
        txid,
        Awaiting {
            decider,
            since: std::time::Instant::now(),
            reply: Some(reply),
        },
    );
    for (&home, (writes, deletes)) in &remote {
        node.send(
            home,
            Message::TxPrepare {
                txid,
                coordinator: decider,
                writes: writes.clone(),
                deletes: deletes.clone(),
            },
        );
    }
    if let Some(super::TxFault::StallMidCommit(d)) = node.tx_fault() {
        tokio::time::sleep(d).await;
    }
    node.send(
        decider,
        Message::TxCommit {
            txid,
            writes,
            deletes,
            participants,
        },
    );
    // The decider answers within its vote timeout plus a log write, unless the link to it
    // fails; then the outcome is asked again on the next session (`inquire_after_reset`).
    let patience = node.op_timeout() * 2;
    match tokio::time::timeout(patience, &mut outcome).await {
        Ok(Ok(Ok(()))) => finish(tx, node).await,
        Ok(Ok(Err(why))) => {
            super::abort(tx).await;
            Err(CommitFailure::Retry(why))
        }
        Ok(Err(_)) => {
            durability.awaiting.lock().remove(&txid);
            super::abort(tx).await;
            Err(CommitFailure::Fatal(Error::ShutDown))
        }
        Err(_) => {
            // Maybe committed: keep every lock (restoring the before-images could undo a
            // committed write; keeping the new ones could publish an aborted one) until the
            // decider's answer arrives, then finish or abort. The caller learns it now.
            let (tx, node) = (tx.clone(), node.clone());
            tokio::spawn(async move {
                match outcome.await {
                    Ok(Ok(())) => {
                        let _ = finish(&tx, &node).await;
                    }
                    _ => super::abort(&tx).await,
                }
            });
            warn!(txid, %decider, "no outcome from the deciding home after {patience:?}");
            Err(CommitFailure::Fatal(Error::CommitOutcomeUnknown {
                txid,
                decider,
                after: patience,
            }))
        }
    }
}

/// Releases the locks of a committed transaction, its deletes done first: while it still
/// holds them, each deleted region is gone here and its home is told (the delete goes first
/// there, since this node owns the region), so nobody sees the transaction's writes with a
/// region it deleted still alive.
async fn finish(tx: &Tx, node: &Node) -> Result<(), CommitFailure> {
    let deletes = tx.inner.state.lock().deletes.clone();
    if !deletes.is_empty() {
        node.with_engine(|engine| {
            for &id in &deletes {
                engine.delete_committed(id);
            }
        });
    }
    tx.release(true);
    Ok(())
}

/// How often a restarting participant asks again about its in-doubt transactions.
pub(crate) const IN_DOUBT_RESEND: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    //! Hostile transaction messages from authenticated peers (issue 9): refused and logged,
    //! never stored or obeyed.
    use super::*;
    use crate::cluster::Cluster;

    async fn durable_cluster(name: &str) -> (Cluster, std::path::PathBuf) {
        let base = std::env::temp_dir().join(format!("crl-hostile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dirs = base.clone();
        let cluster = Cluster::local_with(3, move |c| {
            c.data_dir = Some(dirs.join(format!("n{}", c.node.0)));
        })
        .await
        .unwrap();
        (cluster, base)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_prepare_is_refused_and_not_logged() {
        let (cluster, base) = durable_cluster("empty").await;
        let (n0, n1) = (cluster.node(0), cluster.node(1));
        for _ in 1..=20 {
            let txid = n1.durability().unwrap().next_txid().unwrap();
            n1.send(
                n0.id(),
                Message::TxPrepare {
                    txid,
                    coordinator: n1.id(),
                    writes: Vec::new(),
                    deletes: Vec::new(),
                },
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let prepared = n0.durability().unwrap().prepared.lock().len();
        assert_eq!(
            prepared, 0,
            "empty prepares were stored as in-doubt transactions"
        );
        cluster.shutdown().await;
        let _ = std::fs::remove_dir_all(&base);
    }

    /// Node 1 holds a region of node 0 exclusively, so a prepare of it is well-formed, but
    /// it uses node 2's transaction id: refused (it would collide with node 2's transaction
    /// at node 0, and hold the region under a transaction node 2 never decides).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_prepare_with_another_nodes_transaction_id_is_refused() {
        let (cluster, base) = durable_cluster("txid").await;
        let (n0, n1, n2) = (cluster.node(0), cluster.node(1), cluster.node(2));
        let region = crate::node::name_table_id(n0.id());
        let h = n1.map::<crate::node::NameTable>(region).await.expect("map");
        drop(h.start_write().await.expect("write"));
        let prepare = |txid| Message::TxPrepare {
            txid,
            coordinator: n1.id(),
            writes: vec![TxImage {
                region,
                bytes: vec![0; 8],
            }],
            deletes: Vec::new(),
        };
        n1.send(
            n0.id(),
            prepare(n2.durability().unwrap().next_txid().unwrap()),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            n0.durability().unwrap().prepared.lock().len(),
            0,
            "a prepare under another node's transaction id was stored"
        );
        // The same prepare under node 1's own id is stored (the test can fail).
        n1.send(
            n0.id(),
            prepare(n1.durability().unwrap().next_txid().unwrap()),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(n0.durability().unwrap().prepared.lock().len(), 1);
        drop(h);
        cluster.shutdown().await;
        let _ = std::fs::remove_dir_all(&base);
    }

    /// The counter of transaction ids never runs into the epoch's bits: the last id of the
    /// incarnation is given, the next commit fails with a clear error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transaction_ids_run_out_with_an_error_not_a_collision() {
        let (cluster, base) = durable_cluster("txids").await;
        let n0 = cluster.node(0);
        let d = n0.durability().unwrap();
        let first = d.next_txid().unwrap();
        d.next_txid.store(first | 0xffff_ffff, Ordering::Relaxed);
        assert_eq!(d.next_txid(), Some(first | 0xffff_ffff));
        assert_eq!(d.next_txid(), None);
        #[derive(crl_core::Region, Clone, Debug)]
        #[region(crate = ::crl_core)]
        struct Counter {
            n: u64,
        }
        let h = n0.create(Counter { n: 0 }).await.expect("create");
        let r = n0
            .transaction(async |tx| {
                tx.write(&h).await?.n += 1;
                Ok::<_, Error>(())
            })
            .await;
        assert!(matches!(r, Err(Error::TxIdsExhausted)), "{r:?}");
        drop(h);
        cluster.shutdown().await;
        let _ = std::fs::remove_dir_all(&base);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vote_from_a_node_outside_the_transaction_is_ignored() {
        let (cluster, base) = durable_cluster("vote").await;
        let (n0, n1, n2) = (cluster.node(0), cluster.node(1), cluster.node(2));
        let d = n0.durability().unwrap();
        let txid = d.next_txid().unwrap();
        let (reply, mut votes) = oneshot::channel();
        d.voting.lock().insert(
            txid,
            Voting {
                waiting: [n1.id()].into_iter().collect(),
                reply: Some(reply),
            },
        );
        // Node 2 is not a participant: its "no" must not abort the transaction.
        n2.send(
            n0.id(),
            Message::TxReply {
                txid,
                ok: false,
                reason: "not mine to say".into(),
            },
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            votes.try_recv().is_err(),
            "a non-participant's vote decided the transaction"
        );
        n1.send(
            n0.id(),
            Message::TxReply {
                txid,
                ok: true,
                reason: String::new(),
            },
        );
        let vote = tokio::time::timeout(Duration::from_secs(5), votes)
            .await
            .expect("the participant's vote")
            .unwrap();
        assert_eq!(vote, Ok(()));
        cluster.shutdown().await;
        let _ = std::fs::remove_dir_all(&base);
    }

    /// A participant whose coordinator is gone fails to start with `InDoubt`, releasing its
    /// address and its store; an operator lists the transaction and resolves it, and the node
    /// starts (issue 9: the failed start leaked its tasks, socket and data-dir lock).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_in_doubt_participant_fails_to_start_cleanly_and_an_operator_resolves_it() {
        let base = std::env::temp_dir().join(format!("crl-indoubt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dirs = base.clone();
        let mut cluster = Cluster::local_with(2, move |c| {
            c.op_timeout = Duration::from_millis(300);
            c.data_dir = Some(dirs.join(format!("n{}", c.node.0)));
        })
        .await
        .unwrap();
        let addr = cluster.node(0).local_addr();
        let dir0 = base.join("n0");
        cluster.shutdown().await;
        // Node 0's log gets a prepare from coordinator n1, which is down for good.
        let txid = 0x1234;
        {
            let (store, _) =
                DurableStore::open(crate::durable::StoreConfig::new(dir0.clone())).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            store.append(
                LogRecord::Prepare {
                    txid,
                    coordinator: NodeId(1),
                    writes: Vec::new(),
                    deletes: Vec::new(),
                },
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            rx.recv().unwrap().unwrap();
            store.close();
        }
        match cluster.restart(0).await {
            Err(Error::InDoubt { count: 1, .. }) => {}
            other => panic!("expected InDoubt, got {other:?}"),
        }
        // Everything the failed start took is free again.
        std::net::UdpSocket::bind(addr).expect("the failed start kept its address");
        let listing = super::super::admin::list(&dir0).expect("the failed start kept the store");
        assert_eq!(listing.in_doubt.len(), 1);
        assert_eq!(listing.in_doubt[0].txid, txid);
        assert_eq!(listing.in_doubt[0].coordinator, NodeId(1));
        assert!(matches!(
            super::super::admin::resolve(&dir0, txid + 1, false),
            Err(super::super::admin::ResolveError::NotInDoubt(_))
        ));
        super::super::admin::resolve(&dir0, txid, false).unwrap();
        assert!(
            super::super::admin::list(&dir0)
                .unwrap()
                .in_doubt
                .is_empty()
        );
        cluster.restart(0).await.expect("starts once resolved");
        cluster.shutdown().await;
        let _ = std::fs::remove_dir_all(&base);
    }
}
