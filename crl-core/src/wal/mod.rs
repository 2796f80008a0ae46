//! The write-ahead log's format and its replay: what a home's durable state is, the records
//! that change it, and the bytes of every file a store keeps. Pure: no files, no clock, no
//! threads. The store that writes and reads these files (group commit, checkpoints,
//! recovery, the operator's tools) is `crl_net::durable`.
//!
//! # Formats
//!
//! A store directory (laid out as `crl_net::durable` describes) holds log files, a
//! checkpoint and an epoch file.
//!
//! Every integer is little endian. CRCs are CRC-32 (IEEE, as computed by `crc32fast`). This
//! is format version 2; a store of version 1 (no log headers, unchained records) is refused
//! as corrupt (its epoch file has the wrong length).
//!
//! ## Log files and records: a chain
//!
//! A log file starts with a 40-byte header, then a sequence of frames:
//!
//! ```text
//! log header:
//!      0     4  magic        = b"CRLL"
//!      4     4  version      = 2
//!      8     8  store_id     random id of the data directory, chosen when it was created
//!     16     8  generation   the <gen> of its name
//!     24     8  first_seq    sequence number of its first record
//!     32     4  prev         checksum of the record before its first one (0 before record 1)
//!     36     4  crc          CRC-32 of bytes 0..36
//!
//! frame:
//!      0     4  magic        = b"CRLR"
//!      4     4  payload_len  <= MAX_RECORD_BYTES (64 MiB)
//!      8     8  seq          the record's sequence number: 1, 2, 3, ... across all generations
//!     16     4  prev         the previous record's `crc` (the chain)
//!     20     4  body_crc     CRC-32 of the payload
//!     24     4  crc          CRC-32 of store_id (8 bytes) ‖ bytes 0..24 of the frame
//!     28     n  payload      tag u8, then the record's fields
//! ```
//!
//! `crc` covers the store id, the length, the sequence number, the chain and (through
//! `body_crc`) the payload, so each record's `crc` vouches for it and, through `prev`, for
//! every record before it, as in TigerBeetle's hash chain. A record is replayed only if its
//! checksums match under this store's id and it continues the chain exactly (`seq` one more
//! than the last record's, `prev` equal to its `crc`); each log header must continue the
//! chain where the checkpoint or the previous log left it. So a well-formed record left
//! behind a cut or copied from elsewhere, a log file of another data directory, and a log
//! out of order are never replayed.
//!
//! Payload fields: a [`RegionId`] is `home u32, seq u64`; a byte string or string is
//! `len u32, bytes` (strings are UTF-8); a list is `count u32, items`; a bool is one byte,
//! 0 or 1. Tags: 1 `Create { region, fingerprint u64, type_name, bytes }`, 2
//! `Delete { region }`, 3 `Commit { txid u64, writes [(region, bytes)], deletes [region],
//! participants [node u32] }`, 4 `Prepare { txid, coordinator u32, writes, deletes }`, 5
//! `Decide { txid, commit bool }`, 6 `Forget { txid }`. A payload must be consumed exactly.
//!
//! ## Checkpoint and epoch files
//!
//! ```text
//! checkpoint: magic b"CRLK", version u32 = 2, payload_len u64, crc u32, payload
//!   payload:  epoch u64, log_gen u64, next_seq u64, store_id u64,
//!             first_seq u64 (of log_gen's first record), prev u32 (the chain before it),
//!             regions u64 count × (region, fingerprint u64, type_name, bytes),
//!             in-doubt u64 count × (txid u64, coordinator u32, writes, deletes),
//!             coordinating u64 count × (txid u64, participants [node u32])
//! epoch:      magic b"CRLE", version u32 = 2, epoch u64, store_id u64,
//!             sealed_gen u64, sealed_len u64, sealed_chain u32, crc u32 (of the 44 bytes before it)
//! ```
//!
//! The store writes both to a `.tmp` file, fsynced, renamed over the real name, and the directory
//! is fsynced: a reader sees the old file or the new one, never a mix.
//!
//! **The seal** (`sealed_gen`, `sealed_len`, `sealed_chain`) says that log `sealed_gen` is
//! durable up to `sealed_len` and that the record ending there has checksum `sealed_chain`.
//! The store seals what it recovered when it opens (after syncing it), and a clean close
//! seals everything written. Only the records written since
//! the last open or clean close are unsealed.

mod codec;
mod snapshot;
mod state;

pub use codec::{
    DecodeError, FORMAT_VERSION, FRAME_HEADER, Frame, FrameError, LOG_HEADER, LOG_MAGIC, LogHeader,
    MAX_RECORD_BYTES, RECORD_MAGIC, check_frame, count_valid_frames, decode_frame, decode_payload,
    encode_frame, find_valid_frame, payload_len, seal_frame,
};
pub use snapshot::{
    CHECKPOINT_HEADER, Checkpoint, EPOCH_LEN, EpochFile, FormatError, write_checkpoint_payload,
};
pub use state::{DurableState, MIN_NEXT_SEQ};

use crate::region::{NodeId, RegionId};

/// A record that encodes to more than [`MAX_RECORD_BYTES`] bytes: it cannot be logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("log record of {size} bytes exceeds the maximum of {max} bytes")]
pub struct RecordTooLarge {
    /// The encoded payload size.
    pub size: usize,
    /// The maximum, [`MAX_RECORD_BYTES`].
    pub max: usize,
}

/// One change to a home's durable state, appended to its write-ahead log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRecord {
    /// A region created at this home, with its first contents.
    Create {
        /// The new region (its `seq` is never reused at this home).
        region: RegionId,
        /// The fingerprint of the region's type.
        fingerprint: u64,
        /// The name of the region's type.
        type_name: String,
        /// The region's first contents (its archived bytes).
        bytes: Vec<u8>,
    },
    /// A region deleted at this home.
    Delete {
        /// The deleted region.
        region: RegionId,
    },
    /// A committed transaction's effects at this home (one-phase commit, or the
    /// coordinator's own part plus its decision when `participants` is non-empty: then this
    /// node is the 2PC coordinator and the decision is "commit" for `txid`).
    Commit {
        /// The transaction.
        txid: u64,
        /// The new contents of each region written at this home.
        writes: Vec<(RegionId, Vec<u8>)>,
        /// The regions of this home the transaction deleted.
        deletes: Vec<RegionId>,
        /// The other homes of a two-phase commit this node coordinates (empty otherwise).
        participants: Vec<NodeId>,
    },
    /// 2PC phase 1 at a participant: effects held in doubt until a [`LogRecord::Decide`].
    Prepare {
        /// The transaction.
        txid: u64,
        /// The node coordinating the transaction, to ask for the outcome.
        coordinator: NodeId,
        /// The new contents of each region written at this home.
        writes: Vec<(RegionId, Vec<u8>)>,
        /// The regions of this home the transaction deletes.
        deletes: Vec<RegionId>,
    },
    /// The outcome of a prepared transaction at a participant: applied if `commit`,
    /// discarded otherwise. A decision for an unknown transaction is ignored.
    Decide {
        /// The transaction.
        txid: u64,
        /// Whether it committed.
        commit: bool,
    },
    /// Coordinator: every participant acknowledged the decision of `txid`; it can be
    /// forgotten.
    Forget {
        /// The transaction.
        txid: u64,
    },
}

/// A region as recovered: its identity, type and last durable contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRegion {
    /// The region.
    pub region: RegionId,
    /// The fingerprint of its type.
    pub fingerprint: u64,
    /// The name of its type.
    pub type_name: String,
    /// Its contents.
    pub bytes: Vec<u8>,
}

/// A transaction prepared at this node (a 2PC participant) whose outcome is not known yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InDoubt {
    /// The transaction.
    pub txid: u64,
    /// The node coordinating it, to ask for the outcome.
    pub coordinator: NodeId,
    /// The new contents it writes, applied if it commits.
    pub writes: Vec<(RegionId, Vec<u8>)>,
    /// The regions it deletes, if it commits.
    pub deletes: Vec<RegionId>,
}

/// A transaction this node committed as 2PC coordinator and whose participants have not all
/// acknowledged the decision yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coordinating {
    /// The transaction (its decision is commit).
    pub txid: u64,
    /// The participants to tell.
    pub participants: Vec<NodeId>,
}
