//! Committing a transaction, and the home's side of it: the write-ahead log and two-phase
//! commit.
//!
//! **Without a data dir** committing only releases the locks: the transaction is atomic and
//! serializable (its writes became visible all at once, when its locks were released) but not
//! durable.
//!
//! **With a data dir** every home logs what the transactions write to its regions
//! ([`crl_core::durable`]: checksummed records, group commit, checkpoints) before the writer
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crl_core::durable::{DurableStore, LogRecord, StoreError};
use crl_core::wire::{Message, TxImage};
use crl_core::{NodeId, RegionId};
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::{CommitFailure, Tx};
use crate::node::{Error, Node};

/// A prepared transaction at a participant home, waiting for the decision.
struct Prepared {
    coordinator: NodeId,
    writes: Vec<(RegionId, Vec<u8>)>,
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
    /// Participant: prepared, undecided.
    prepared: Mutex<HashMap<u64, Prepared>>,
    /// Coordinator: collecting votes.
    voting: Mutex<HashMap<u64, Voting>>,
    /// Coordinator: committed, waiting for `TxDone` from these participants.
    deciding: Mutex<HashMap<u64, HashSet<NodeId>>>,
    /// Participant, after a restart: in doubt until the coordinator answers.
    in_doubt: Mutex<HashMap<u64, NodeId>>,
}

impl Durability {
    pub(crate) fn new(store: DurableStore, node: NodeId) -> Durability {
        let epoch = store.epoch();
        Durability {
            store,
            epoch,
            next_txid: AtomicU64::new(
                (u64::from(node.0 & 0xfff) << 52) | ((epoch & 0xf_ffff) << 32) | 1,
            ),
            prepared: Mutex::new(HashMap::new()),
            voting: Mutex::new(HashMap::new()),
            deciding: Mutex::new(HashMap::new()),
            in_doubt: Mutex::new(HashMap::new()),
        }
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
        in_doubt: Vec<crl_core::durable::InDoubt>,
        coordinating: Vec<crl_core::durable::Coordinating>,
    ) {
        let mut prepared = self.prepared.lock();
        let mut doubt = self.in_doubt.lock();
        for d in in_doubt {
            doubt.insert(d.txid, d.coordinator);
            prepared.insert(
                d.txid,
                Prepared {
                    coordinator: d.coordinator,
                    writes: d.writes,
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

    /// How many transactions coordinated by `coordinator` are prepared here, undecided.
    pub(crate) fn prepared_by(&self, coordinator: NodeId) -> usize {
        self.prepared
            .lock()
            .values()
            .filter(|p| p.coordinator == coordinator)
            .count()
    }

    /// `coordinator` restarted: its transactions prepared here are in doubt until it answers
    /// (asked now, and again every second).
    pub(crate) fn inquire_prepared_by(&self, node: &Node, coordinator: NodeId) {
        let txids: Vec<u64> = self
            .prepared
            .lock()
            .iter()
            .filter(|(_, p)| p.coordinator == coordinator)
            .map(|(&t, _)| t)
            .collect();
        let mut doubt = self.in_doubt.lock();
        for txid in txids {
            doubt.insert(txid, coordinator);
            node.send(coordinator, Message::TxInquire { txid });
        }
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

    fn next_txid(&self) -> u64 {
        self.next_txid.fetch_add(1, Ordering::Relaxed)
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
            Message::TxReply { txid, ok, reason } => {
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
                }
            }
            Message::TxDecide { txid, commit } => self.on_decide(node, from, txid, commit),
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
            Message::TxInquire { txid } => {
                if self.deciding.lock().contains_key(&txid) {
                    node.send(from, Message::TxDecide { txid, commit: true });
                } else if self.voting.lock().contains_key(&txid) {
                    // Still collecting votes: the decision goes to every participant anyway.
                } else {
                    // Presumed abort: a commit is always logged before it is announced.
                    node.send(
                        from,
                        Message::TxDecide {
                            txid,
                            commit: false,
                        },
                    );
                }
            }
            Message::TxCommit { txid, .. } => {
                // This version commits remote writes with two-phase commit only.
                node.send(
                    from,
                    Message::TxReply {
                        txid,
                        ok: false,
                        reason: "one-phase remote commit is not supported".into(),
                    },
                );
            }
            other => warn!(%from, "not a transaction message: {other:?}"),
        }
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
        let refuse = |reason: String| {
            node.send(
                from,
                Message::TxReply {
                    txid,
                    ok: false,
                    reason,
                },
            );
        };
        if coordinator != from {
            warn!(%from, txid, %coordinator, "refusing a prepare for another coordinator");
            return refuse(format!(
                "prepare from {from} names coordinator {coordinator}"
            ));
        }
        if writes.is_empty() && deletes.is_empty() {
            // Nothing to make durable: a correct coordinator never sends one, and storing it
            // would let any peer grow this node's log and in-doubt table for free.
            warn!(%from, txid, "refusing an empty prepare");
            return refuse("an empty prepare".into());
        }
        let me = node.id();
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
        self.prepared.lock().insert(
            txid,
            Prepared {
                coordinator,
                writes: writes.clone(),
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
                node2.send(from, Message::TxReply { txid, ok, reason });
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
        if commit {
            node.with_engine(|engine| {
                for (region, bytes) in &p.writes {
                    if let Err(e) = engine.install_master(*region, bytes) {
                        warn!(%region, txid, "installing a committed image: {e}");
                    }
                }
            });
        }
        let node2 = node.clone();
        self.store.append(
            LogRecord::Decide { txid, commit },
            Box::new(move |res| match res {
                Ok(()) => node2.send(from, Message::TxDone { txid }),
                Err(e) => warn!(txid, "logging a decision failed: {e}"),
            }),
        );
    }

    /// A peer restarted (and the node resolved the transactions it coordinated that were
    /// prepared here, see the driver): votes it owed will never come; decisions it had not
    /// confirmed are sent again.
    pub(crate) fn peer_restarted(&self, node: &Node, peer: NodeId) {
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
    let txid = durability.next_txid();
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
        // Before the locks are released: FIFO links then deliver the decision ahead of any
        // later message about these regions.
        for &home in &participants {
            node.send(home, Message::TxDecide { txid, commit: true });
        }
        debug!(txid, ?participants, "two-phase commit decided");
    }
    finish(tx, &node).await
}

/// Releases the locks of a committed transaction and carries out its deletes.
async fn finish(tx: &Tx, node: &Node) -> Result<(), CommitFailure> {
    let (deletes, _) = tx.release(true);
    for id in deletes {
        if let Err(e) = node.delete(id).await {
            // The commit stands (the deletion is logged); the region will be refused at its
            // home after a restart even if this cluster-wide delete failed now.
            warn!(region = %id, "delete after commit: {e}");
        }
    }
    Ok(())
}

/// How often a restarting participant asks again about its in-doubt transactions.
pub(crate) const IN_DOUBT_RESEND: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    //! Hostile transaction messages from authenticated peers (issue 9): refused and logged,
    //! never stored or obeyed.
    use super::*;
    use crate::node::Cluster;

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
        for txid in 1..=20 {
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vote_from_a_node_outside_the_transaction_is_ignored() {
        let (cluster, base) = durable_cluster("vote").await;
        let (n0, n1, n2) = (cluster.node(0), cluster.node(1), cluster.node(2));
        let d = n0.durability().unwrap();
        let txid = d.next_txid();
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
}
