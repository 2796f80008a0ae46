//! Committing a transaction: the write-ahead log and two-phase commit. The decisions are
//! crl-core's commit machine (`crl_core::commit`), driven by the node (`node/commits.rs`);
//! this is the committing transaction's side.
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

use std::collections::BTreeMap;
use std::sync::Arc;

use crl_core::commit::Outcome;
use crl_core::wire::TxImage;
use crl_core::{NodeId, RegionId};
use tracing::warn;

use super::{CommitFailure, Tx};
use crate::durable::LogRecord;
use crate::error::Error;
use crate::liveness::clock;
use crate::node::{Durability, Node};

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
    if let Some(e) = durability.store().failure() {
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
    // This node's part and (for 2PC) the decision, durable in one batch: the commit point.
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
        participants,
    });
    if remote.is_empty() {
        // One phase: nothing to vote on.
        if let Err(e) = durability.append_all(records).await {
            super::abort(tx).await;
            return Err(CommitFailure::Fatal(Error::LogFailed(e.to_string())));
        }
        return finish(tx, &node).await;
    }
    let mut outcome = durability.wait_for(txid);
    durability.run(&node, |m, _| m.begin_two_phase(txid, records, remote));
    let outcome = match tokio::time::timeout(node.op_timeout(), &mut outcome).await {
        Ok(o) => o,
        Err(_) => {
            if durability.run(&node, |m, _| m.votes_timed_out(txid)) {
                durability.stop_waiting(txid);
                super::abort(tx).await;
                return Err(CommitFailure::Fatal(Error::CommitTimedOut {
                    txid,
                    after: node.op_timeout(),
                }));
            }
            // Every vote came in: the commit record is being written (bounded by the log's
            // I/O timeout), and its outcome follows.
            outcome.await
        }
    };
    match outcome {
        Ok(Outcome::Committed) => finish(tx, &node).await,
        Ok(Outcome::Aborted(why)) => {
            super::abort(tx).await;
            Err(CommitFailure::Retry(why))
        }
        Ok(Outcome::LogFailed(e)) => {
            super::abort(tx).await;
            Err(CommitFailure::Fatal(Error::LogFailed(e)))
        }
        Err(_) => {
            super::abort(tx).await;
            Err(CommitFailure::Fatal(Error::ShutDown))
        }
    }
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
    let Some((decider, part)) = remote.pop_first() else {
        return finish(tx, node).await;
    };
    let participants: Vec<NodeId> = remote.keys().copied().collect();
    let mut outcome = durability.wait_for(txid);
    let now = clock::now();
    durability.run(node, |m, _| m.begin_delegated(now, txid, decider, remote));
    if let Some(super::TxFault::StallMidCommit(d)) = node.tx_fault() {
        tokio::time::sleep(d).await;
    }
    durability.run(node, |m, _| m.hand_over(txid, part, participants));
    // The decider answers within its vote timeout plus a log write, unless the link to it
    // fails; then the outcome is asked again on the next session (`inquire_after_reset`).
    let patience = node.op_timeout() * 2;
    match tokio::time::timeout(patience, &mut outcome).await {
        Ok(Ok(Outcome::Committed)) => finish(tx, node).await,
        Ok(Ok(Outcome::Aborted(why) | Outcome::LogFailed(why))) => {
            super::abort(tx).await;
            Err(CommitFailure::Retry(why))
        }
        Ok(Err(_)) => {
            durability.run(node, |m, _| m.forget_awaiting(txid));
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
                    Ok(Outcome::Committed) => {
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

#[cfg(test)]
mod tests {
    //! Hostile transaction messages from authenticated peers (issue 9): refused and logged,
    //! never stored or obeyed.
    use std::time::Duration;

    use crl_core::wire::Message;

    use super::*;
    use crate::cluster::Cluster;
    use crate::durable::DurableStore;

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
        let prepared = n0.durability().unwrap().holding(n1.id());
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
        let d0 = n0.durability().unwrap();
        assert_eq!(
            d0.holding(n1.id()) + d0.holding(n2.id()),
            0,
            "a prepare under another node's transaction id was stored"
        );
        // The same prepare under node 1's own id is stored (the test can fail).
        n1.send(
            n0.id(),
            prepare(n1.durability().unwrap().next_txid().unwrap()),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(n0.durability().unwrap().holding(n1.id()), 1);
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
        d.run(n0, |m, _| m.skip_txids_to(first | 0xffff_ffff));
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

    // A vote from a node outside the transaction: crl-core's commit machine tests.

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
