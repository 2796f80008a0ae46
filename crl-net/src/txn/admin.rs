//! Operator tools for the transactions in a **stopped** node's log (`crl-node txn list` and
//! `crl-node txn resolve`).
//!
//! A participant that restarts with a prepared transaction asks its coordinator for the
//! outcome before it serves anything; if the coordinator stays unreachable (its machine is
//! gone), the start fails with [`Error::InDoubt`](crate::Error::InDoubt) after six operation
//! timeouts, releasing everything it took. The operator then:
//!
//! 1. runs [`list`] on the participant's data dir to see the transactions in doubt and their
//!    coordinators;
//! 2. finds each outcome in the coordinator's log if it still exists ([`list`] on the
//!    coordinator's data dir shows the committed transactions whose participants have not all
//!    confirmed: those committed; a transaction the coordinator has no record of did not);
//! 3. records it with [`resolve`] (commit applies the prepared writes, abort drops them) and
//!    starts the node again.
//!
//! Both open the store as a start would (so they fail while the node runs: the store is
//! locked, and the node's epoch grows by one).

use std::path::Path;

use crate::durable::{DurableStore, LogRecord, StoreConfig, StoreError};
use crl_core::NodeId;

/// A transaction prepared in this log and not decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InDoubtTxn {
    /// The transaction id.
    pub txid: u64,
    /// The node that decides it (ask its log).
    pub coordinator: NodeId,
    /// Regions it writes if it commits.
    pub writes: usize,
    /// Regions it deletes if it commits.
    pub deletes: usize,
}

/// A transaction this log committed as coordinator whose participants have not all confirmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedTxn {
    /// The transaction id.
    pub txid: u64,
    /// The nodes still to be told (they learn it when the node runs again).
    pub participants: Vec<NodeId>,
}

/// What a stopped node's log holds about unfinished transactions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnListing {
    /// The epoch the listing's own open gave the store.
    pub epoch: u64,
    /// Prepared here, undecided.
    pub in_doubt: Vec<InDoubtTxn>,
    /// Committed here as coordinator, not yet confirmed by every participant.
    pub committed: Vec<CommittedTxn>,
}

/// Why a resolution was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The store could not be opened (the node runs, or the directory is damaged).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing to resolve: the log holds no undecided prepare of that transaction.
    #[error("transaction {0:#x} is not in doubt in this log")]
    NotInDoubt(u64),
}

fn open(data_dir: &Path) -> Result<(DurableStore, crate::durable::Recovered), StoreError> {
    DurableStore::open(StoreConfig::new(data_dir.to_path_buf()))
}

/// Lists the unfinished transactions in the log of the stopped node at `data_dir`.
pub fn list(data_dir: &Path) -> Result<TxnListing, StoreError> {
    let (store, rec) = open(data_dir)?;
    store.close();
    Ok(TxnListing {
        epoch: rec.epoch,
        in_doubt: rec
            .in_doubt
            .iter()
            .map(|d| InDoubtTxn {
                txid: d.txid,
                coordinator: d.coordinator,
                writes: d.writes.len(),
                deletes: d.deletes.len(),
            })
            .collect(),
        committed: rec
            .coordinating
            .iter()
            .map(|c| CommittedTxn {
                txid: c.txid,
                participants: c.participants.clone(),
            })
            .collect(),
    })
}

/// Records the outcome of in-doubt transaction `txid` in the log of the stopped node at
/// `data_dir` (durably), as if its coordinator had answered. The node applies it at its next
/// start. Deciding against the coordinator's own outcome breaks the transaction's atomicity:
/// look it up first (see the module docs).
pub fn resolve(data_dir: &Path, txid: u64, commit: bool) -> Result<(), ResolveError> {
    let (store, rec) = open(data_dir)?;
    if !rec.in_doubt.iter().any(|d| d.txid == txid) {
        store.close();
        return Err(ResolveError::NotInDoubt(txid));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    store.append(
        LogRecord::Decide { txid, commit },
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    let logged = rx.recv().unwrap_or(Err(StoreError::Closed));
    store.close();
    logged?;
    Ok(())
}
