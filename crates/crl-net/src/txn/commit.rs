//! Committing a transaction.
//!
//! Without a data dir the commit only releases the locks: the transaction is atomic and
//! serializable (its writes became visible all at once, when its locks were released) but not
//! durable.

use super::{CommitFailure, Tx};

/// Commits `tx` (its closure returned `Ok`).
pub(crate) async fn commit(tx: &Tx) -> Result<(), CommitFailure> {
    tx.inner.shared.begin_commit();
    let written = tx.written().map_err(CommitFailure::Fatal)?;
    let _ = written;
    let (deletes, _) = tx.release(true);
    for id in deletes {
        tx.inner
            .node
            .delete(id)
            .await
            .map_err(CommitFailure::Fatal)?;
    }
    Ok(())
}
