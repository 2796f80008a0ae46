//! The durable state of a home as an in-memory table, and how each log record changes it
//! (replay): what a checkpoint holds, what recovery rebuilds and what the log writer keeps
//! current.

use std::collections::{BTreeMap, HashMap};

use tracing::{debug, warn};

use super::{InDoubt, LogRecord, StoredRegion};
use crate::region::{NodeId, RegionId};

/// The smallest `next_seq` a store reports.
pub const MIN_NEXT_SEQ: u64 = 2;

/// The durable state of a home: what a checkpoint holds and what replaying the log builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurableState {
    /// Every region of the home, with its last durable contents.
    pub regions: HashMap<RegionId, StoredRegion>,
    /// Transactions prepared here (a 2PC participant) with no decision yet.
    pub in_doubt: BTreeMap<u64, InDoubt>,
    /// Transactions committed here as 2PC coordinator whose participants have not all
    /// acknowledged the decision: txid → participants.
    pub coordinating: BTreeMap<u64, Vec<NodeId>>,
    /// 1 + the largest region `seq` ever created here (deleted regions included); at least
    /// [`MIN_NEXT_SEQ`].
    pub next_seq: u64,
}

impl Default for DurableState {
    fn default() -> Self {
        DurableState {
            regions: HashMap::new(),
            in_doubt: BTreeMap::new(),
            coordinating: BTreeMap::new(),
            next_seq: MIN_NEXT_SEQ,
        }
    }
}

impl DurableState {
    /// Applies one record in log order; returns the number of writes skipped because their
    /// region does not exist.
    pub fn apply(&mut self, record: LogRecord) -> u64 {
        match record {
            LogRecord::Create {
                region,
                fingerprint,
                type_name,
                bytes,
            } => {
                self.next_seq = self.next_seq.max(region.seq.saturating_add(1));
                let old = self.regions.insert(
                    region,
                    StoredRegion {
                        region,
                        fingerprint,
                        type_name,
                        bytes,
                    },
                );
                if old.is_some() {
                    warn!(%region, "durable log creates a region that exists; replaced");
                }
                0
            }
            LogRecord::Delete { region } => {
                if self.regions.remove(&region).is_none() {
                    debug!(%region, "durable log deletes a region that does not exist");
                }
                0
            }
            LogRecord::Commit {
                txid,
                writes,
                deletes,
                participants,
            } => {
                let skipped = self.apply_effects(txid, writes, deletes);
                if !participants.is_empty() {
                    self.coordinating.insert(txid, participants);
                }
                skipped
            }
            LogRecord::Prepare {
                txid,
                coordinator,
                writes,
                deletes,
            } => {
                let old = self.in_doubt.insert(
                    txid,
                    InDoubt {
                        txid,
                        coordinator,
                        writes,
                        deletes,
                    },
                );
                if old.is_some() {
                    warn!(
                        txid,
                        "durable log prepares a transaction twice; kept the last"
                    );
                }
                0
            }
            LogRecord::Decide { txid, commit } => match self.in_doubt.remove(&txid) {
                Some(t) if commit => self.apply_effects(txid, t.writes, t.deletes),
                Some(_) => 0,
                None => {
                    debug!(
                        txid,
                        commit, "decision for a transaction not in doubt; ignored"
                    );
                    0
                }
            },
            LogRecord::Forget { txid } => {
                self.coordinating.remove(&txid);
                0
            }
        }
    }

    fn apply_effects(
        &mut self,
        txid: u64,
        writes: Vec<(RegionId, Vec<u8>)>,
        deletes: Vec<RegionId>,
    ) -> u64 {
        let mut skipped = 0;
        for (region, bytes) in writes {
            match self.regions.get_mut(&region) {
                Some(r) => r.bytes = bytes,
                None => {
                    warn!(txid, %region, "committed write to a region that does not exist; skipped");
                    skipped += 1;
                }
            }
        }
        for region in deletes {
            self.regions.remove(&region);
        }
        skipped
    }

    /// The regions, sorted by id.
    pub fn regions_sorted(&self) -> Vec<StoredRegion> {
        let mut v: Vec<StoredRegion> = self.regions.values().cloned().collect();
        v.sort_unstable_by_key(|r| r.region);
        v
    }
}
