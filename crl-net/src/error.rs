//! What can go wrong: the one error type of the node API, and how to classify it
//! ([`Error::is_retryable`], [`Error::maybe_committed`]).

use std::time::Duration;

use crl_core::engine::OpError;
use crl_core::{NodeId, RegionId};

use crate::config::ConfigError;
use crate::tls::TlsError;
use crate::transport::TransportError;

/// What can go wrong with a node operation.
///
/// New variants may come in later versions (`#[non_exhaustive]`): classify with
/// [`is_retryable`](Error::is_retryable) and [`maybe_committed`](Error::maybe_committed)
/// rather than by listing variants.
///
/// **The rule for transactions.** `Node::transaction` retries conflicts itself; an `Err` it
/// returns means the transaction did *not* commit, unless `maybe_committed()` is true: then
/// it may have (the outcome was decided where this node could not learn it in time). Before
/// retrying such a transaction, read what it wrote, or make it idempotent (for example by
/// recording its id in a region it writes), as with any database whose commit reply can be
/// lost.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The region was deleted.
    #[error("region {0} was deleted")]
    Deleted(RegionId),
    /// The region's home never created it.
    #[error("no region {0} exists at its home")]
    NoSuchRegion(RegionId),
    /// The region exists with another type.
    #[error("region {region} is not a {expected} (its type fingerprint is {actual:#x})")]
    WrongType {
        /// The region.
        region: RegionId,
        /// The type asked for.
        expected: &'static str,
        /// The fingerprint of its actual type.
        actual: u64,
    },
    /// The region is not mapped on this node.
    #[error("region {0} is not mapped on this node")]
    NotMapped(RegionId),
    /// No connection to the region's home, and the operation timed out.
    #[error("{what} of {region} failed: its home {home} is unreachable (waited {after:?})")]
    HomeUnreachable {
        /// The operation.
        what: &'static str,
        /// The region.
        region: RegionId,
        /// Its home.
        home: NodeId,
        /// How long it waited.
        after: Duration,
    },
    /// The operation did not complete within the node's operation timeout.
    #[error("{what} of {region} timed out after {after:?}")]
    TimedOut {
        /// The operation.
        what: &'static str,
        /// The region.
        region: RegionId,
        /// How long it waited.
        after: Duration,
    },
    /// The region's home is not a member of this cluster.
    #[error("{0} is not a member of this cluster")]
    UnknownNode(NodeId),
    /// No region is bound to this name.
    #[error("no region is bound to the name {0:?}")]
    NameNotFound(String),
    /// The name is bound to another region.
    #[error("the name {name:?} is already bound to {bound}")]
    NameTaken {
        /// The name.
        name: String,
        /// The region it is bound to.
        bound: RegionId,
    },
    /// A peer broke the protocol (for example sent region bytes that do not decode).
    #[error("protocol violation: {0}")]
    ProtocolViolation(String),
    /// The transport could not start.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Certificates could not be made or loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The node was shut down.
    #[error("the node is shut down")]
    ShutDown,
    /// [`Node::create_at`](crate::Node::create_at): the home refused to create the region;
    /// nothing was created.
    #[error("{home} refused to create the region: {reason}")]
    CreateRefused {
        /// The home asked.
        home: NodeId,
        /// Why.
        reason: String,
    },
    /// [`Node::create_at`](crate::Node::create_at): no answer came from the home. The region
    /// may exist there anyway, with nobody knowing its id.
    #[error(
        "{home} did not answer a create ({why}; waited at most {after:?}): the region may exist there, unreferenced"
    )]
    CreateUnanswered {
        /// The home asked.
        home: NodeId,
        /// The operation timeout.
        after: Duration,
        /// What happened.
        why: &'static str,
    },
    /// The region is too large to ship between nodes: its encoded image is over the limit
    /// ([`NodeConfig::max_region_len`](crate::NodeConfig::max_region_len) of its home).
    #[error(
        "region {region} is {len} bytes encoded, over the limit of {max} bytes for one message"
    )]
    TooLarge {
        /// The region.
        region: RegionId,
        /// Its encoded length.
        len: u64,
        /// The largest image one message may carry.
        max: u64,
    },
    /// A region was not created: its encoded value is over the limit
    /// ([`NodeConfig::max_region_len`](crate::NodeConfig::max_region_len)), so it could never
    /// be shipped to another node.
    #[error("a region of {len} bytes encoded is over the limit of {max} bytes (max_region_len)")]
    RegionTooLarge {
        /// The encoded length of the value.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The transaction was wounded by an older one (wound-wait) or lost a conflict; it is
    /// aborted and retried automatically when this error is returned from its closure.
    #[error("the transaction must abort: an older transaction needs its locks (it is retried)")]
    Wounded,
    /// The transaction conflicted on every one of its attempts.
    #[error("the transaction gave up after {attempts} conflicting attempts")]
    Conflict {
        /// How many times it ran.
        attempts: u32,
    },
    /// This node has used every transaction id of its incarnation (2^32 - 1 commits that
    /// wrote something since it started): restart it (a new epoch starts a new range).
    #[error("this node has used every transaction id of its incarnation: restart it")]
    TxIdsExhausted,
    /// A guard of this transaction on the region is still alive.
    #[error("region {0} is already borrowed by this transaction (drop the other guard first)")]
    TxBorrowed(RegionId),
    /// A transaction was given a handle mapped on another node (every handle a transaction
    /// uses must come from the node that runs it: map the region there).
    #[error(
        "region {region} was mapped on {handle_node}, not on {tx_node}, which runs this transaction"
    )]
    ForeignHandle {
        /// The region.
        region: RegionId,
        /// The node the handle belongs to.
        handle_node: NodeId,
        /// The node running the transaction.
        tx_node: NodeId,
    },
    /// The transaction has already committed or aborted.
    #[error("the transaction has already ended")]
    TxFinished,
    /// A region's contents could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] crl_core::CodecError),
    /// The region's home restarted and lost what this node's request was about (a
    /// transaction that meets this error is retried).
    #[error("the home of region {0} restarted")]
    HomeRestarted(RegionId),
    /// The session between this node and the region's home was fenced while the operation
    /// waited on it: one of the two heard nothing from the other for longer than the peer
    /// timeout ([`NodeConfig::peer_timeout`](crate::NodeConfig::peer_timeout)), and everything they shared was dropped (a
    /// transaction that meets this error is retried). The next operation starts afresh.
    #[error(
        "the session with the home of region {0} was fenced (silent for longer than the peer timeout)"
    )]
    Fenced(RegionId),
    /// The write-ahead log failed (an fsync or write error): this node accepts no more
    /// commits until it is restarted. Never retried silently.
    #[error("the write-ahead log failed: {0}")]
    LogFailed(String),
    /// The durable store could not be opened or recovered.
    #[error("cannot open the durable store: {0}")]
    Store(#[from] crate::durable::StoreError),
    /// A two-phase commit did not collect its votes in time; the transaction was aborted.
    #[error(
        "commit of transaction {txid:#x} timed out after {after:?} waiting for votes (aborted)"
    )]
    CommitTimedOut {
        /// The transaction.
        txid: u64,
        /// How long it waited.
        after: Duration,
    },
    /// A transaction handed to a deciding home (it wrote nothing homed at this node) got no
    /// answer in time: it **may have committed**. Its locks stay held until the answer
    /// arrives (the node keeps asking); read the regions again to learn the outcome before
    /// retrying a write that is not idempotent.
    #[error(
        "commit of transaction {txid:#x}: no outcome from deciding home {decider} after {after:?} (it may have committed)"
    )]
    CommitOutcomeUnknown {
        /// The transaction.
        txid: u64,
        /// The home that decides it.
        decider: NodeId,
        /// How long the commit waited.
        after: Duration,
    },
    /// After a restart, transactions prepared here stayed in doubt: their coordinators did not
    /// answer in time. The node refuses to serve their regions with a guessed outcome.
    #[error("{count} transaction(s) still in doubt after {after:?} (coordinators unreachable)")]
    InDoubt {
        /// How many.
        count: usize,
        /// How long recovery waited.
        after: Duration,
    },
}

impl Error {
    /// Whether the same operation may succeed if tried again later: a conflict, a timeout, an
    /// unreachable, restarted or fencing home, a commit that timed out. False for errors that
    /// will not change by waiting (a deleted or mistyped region, a bad configuration, a shut
    /// down node, a failed log) and for [`CommitOutcomeUnknown`](Error::CommitOutcomeUnknown),
    /// which must be resolved by reading first (see [`maybe_committed`](Error::maybe_committed)).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::TimedOut { .. }
                | Error::HomeUnreachable { .. }
                | Error::Wounded
                | Error::Conflict { .. }
                | Error::HomeRestarted(_)
                | Error::Fenced(_)
                | Error::CommitTimedOut { .. }
                | Error::CreateUnanswered { .. }
        )
    }

    /// Whether a transaction that returned this error may nonetheless have committed: its
    /// commit was under way when the node lost sight of the outcome (a timeout or an
    /// unreachable home during the commit, a shutdown, a failed log, no answer from the
    /// deciding home). Every other error means it did not commit.
    pub fn maybe_committed(&self) -> bool {
        matches!(
            self,
            Error::TimedOut { .. }
                | Error::HomeUnreachable { .. }
                | Error::ShutDown
                | Error::LogFailed(_)
                | Error::CommitOutcomeUnknown { .. }
        )
    }
}

impl From<OpError> for Error {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Deleted(id) => Error::Deleted(id),
            OpError::NoSuchRegion(id) => Error::NoSuchRegion(id),
            OpError::WrongType {
                region,
                expected,
                actual,
            } => Error::WrongType {
                region,
                expected,
                actual,
            },
            OpError::NotMapped(id) => Error::NotMapped(id),
            OpError::HomeRestarted(id) => Error::HomeRestarted(id),
            OpError::Fenced(id) => Error::Fenced(id),
            OpError::TooLarge { region, len, max } => Error::TooLarge { region, len, max },
            e @ OpError::InUse(_) => Error::ProtocolViolation(e.to_string()),
            e @ OpError::Codec { .. } => Error::ProtocolViolation(e.to_string()),
        }
    }
}
