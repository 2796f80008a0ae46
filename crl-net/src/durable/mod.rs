//! Durability at a home node: write-ahead log, group commit, checkpoints and recovery.
//!
//! A home keeps the master copy of its regions. [`DurableStore`] makes the changes to them
//! durable: every change is a [`LogRecord`] appended to a write-ahead log; a dedicated writer
//! thread writes everything queued in one `write` and one `fdatasync` (group commit: many
//! concurrent commits share one fsync) and then runs each caller's completion. The writer also
//! applies each record, in log order, to an in-memory copy of the durable state (the region
//! table, the in-doubt transactions of two-phase commit, the transactions this node still
//! coordinates), which it writes out as a checkpoint when the log grows past
//! [`StoreConfig::checkpoint_bytes`]. [`DurableStore::open`] recovers that state
//! ([`Recovered`]) and bumps the node's epoch, so every copy cached before a restart can be
//! recognised as stale.
//!
//! The bytes of every file (log headers and records chained by checksums, the checkpoint,
//! the epoch file with its seal) and the replay of records into the durable state are
//! [`crl_core::wal`]'s; this module does the file I/O, the fsyncs, the writer thread and
//! checkpoints.
//!
//! # Files
//!
//! A store directory holds:
//!
//! ```text
//! lock                      held (flock) while a store has the directory open
//! epoch                     the epoch of the last open, the store id, the seal (checksummed)
//! checkpoint                the durable state as of the start of log.<log_gen> (checksummed)
//! log.<gen>                 write-ahead logs, <gen> zero-padded to 20 digits
//! epoch.tmp, checkpoint.tmp being written; removed by recovery
//! cut-<gen>-<offset>-<time>/ what `repair_cut` cut (kept for the operator; never read)
//! ```
//!
//! [`DurableStore::open`] seals what it recovered (after syncing it), and a clean
//! [`close`](DurableStore::close) seals everything written (see the seal in
//! [`crl_core::wal`]).
//!
//! # Recovery rules: a torn tail is cut, corruption is refused
//!
//! Bytes read from disk are untrusted: every length is bounded by the bytes that remain and
//! by [`MAX_RECORD_BYTES`], and nothing is trusted before its checksums match.
//!
//! 1. Leftover `epoch.tmp` and `checkpoint.tmp` are removed (they were never renamed, so
//!    never in effect).
//! 2. The epoch file and the checkpoint, if present, must be entirely valid, and the
//!    checkpoint's store id must be the epoch file's: anything else is
//!    [`StoreError::Corrupt`]. A missing epoch file while a checkpoint or a log exists is
//!    also `Corrupt`: recovery never guesses.
//! 3. The checkpoint names `log_gen`, the first log that follows it (1 without a
//!    checkpoint). Logs older than `log_gen` are stale (a checkpoint finished but their
//!    removal did not) and are deleted. The logs from `log_gen` on must be consecutive,
//!    starting at `log_gen`; a gap is `Corrupt`.
//! 4. The logs are replayed in order, each header and record checked as above. When bytes
//!    that are not a valid record are found at some offset (short, bad magic, a checksum
//!    mismatch, a length over the maximum), recovery scans forward, in that log and the later
//!    ones, for any record whose header and checksums are valid. The bad bytes are a **torn
//!    tail**, and are cut (the file truncated and synced, reported as
//!    [`RecoveryReport::cut_bytes`] and [`RecoveryReport::cut_at`], logged with `warn!`),
//!    only if all of these hold:
//!    - no valid record follows them,
//!    - they are in the last log,
//!    - they start at or after the seal.
//!
//!    Anything else is **corruption**: [`StoreError::Corrupt`] names the file, the offset,
//!    what was expected there, what was found, and how many valid records follow; the store
//!    refuses to start and changes nothing. So is a record whose checksums match but whose
//!    payload does not decode, a well-formed record out of the chain, a log header of another
//!    store, generation or chain position, a log shorter than its seal, and a record that
//!    does not end exactly at the seal with the sealed checksum.
//! 5. The new epoch, one more than the stored one, is persisted (with the seal) before
//!    [`DurableStore::open`] returns; new records are appended to the last log. One line
//!    (`info!`) reports the records, bytes, bytes cut and seconds.
//!
//! Why this is safe: a record is acknowledged only after it and everything before it were
//! written and synced. A crash can tear only the batch being written, at the end of the last
//! log, after the seal; nothing valid was written after that batch. Damage anywhere else is
//! not a crash, and cutting there would silently drop acknowledged commits.
//!
//! The limit: damage (a bit rot, a lost write) to the very last records written since the
//! last open or clean close, with nothing valid after them, looks exactly like a torn write
//! after a crash and is cut: those records, acknowledged, are lost, and the cut is reported.
//! Only a second copy (a replica) could tell. After a clean close nothing is in that window.
//!
//! # Checkpoint sequence
//!
//! With the current log `log.<g>`, the writer thread: creates `log.<g+1>` with its header
//! (continuing the chain), fsyncs it and the directory; writes `checkpoint.tmp` (state as of
//! the end of `log.<g>`, `log_gen = g + 1`, the chain position) and fsyncs it; renames it
//! over `checkpoint` and fsyncs the directory; switches to `log.<g+1>`; removes the older
//! logs. A crash before the rename leaves the old checkpoint in effect, with `log.<g>`
//! complete and `log.<g+1>` empty (or with a torn header, which is a torn tail), both
//! replayed; a crash after it leaves the new checkpoint, and `log.<g>` is stale. Records go
//! to `log.<g+1>` only after the new checkpoint is durable.
//!
//! # Failures
//!
//! An error from writing or syncing the log (or writing a checkpoint) is fatal: the store
//! records it ([`DurableStore::failure`]), fails the batch in flight and every later append
//! with [`StoreError::Failed`], and never retries (after a failed fsync the kernel may have
//! dropped the dirty pages; retrying could report as durable what is not). A failed write
//! cuts the partial batch off the log at once (so a full disk leaves no partial record; if
//! even that fails, recovery cuts it as a torn tail). A write, fsync or checkpoint that runs
//! longer than [`StoreConfig::io_timeout`] (default 10 s) is treated the same way: a watchdog
//! thread fails the store, the batch in flight and everything queued, so callers are not
//! held by a hung disk (the writer thread stays stuck until the kernel returns; nothing it
//! does after that is acknowledged). A record whose append failed may or may not be found by
//! the next recovery: its outcome is unknown.
//!
//! # What to do after a disk fault
//!
//! - **A crash or power loss**: nothing. Restart; a torn tail is cut and reported.
//! - **A full disk** (`Failed`, "the disk is full"): free space, restart the node. Every
//!   acknowledged commit is recovered; the failed batch was never acknowledged.
//! - **A failed or timed-out write or fsync** (`Failed`): the disk is suspect. Check it
//!   (kernel log, SMART); restart the node, on another disk if needed: recovery reads back
//!   and checks everything. A commit that failed this way has an unknown outcome.
//! - **Corruption** (`Corrupt`: the node refuses to start): do not delete anything. Run
//!   `crl-node log verify --data-dir D` to see the file, the offset and how many valid
//!   records follow. Restore the data directory from a backup or a replica if there is one.
//!   Otherwise, accepting the loss of every record from the bad one on, cut there with
//!   `crl-node log repair --data-dir D --cut-at GEN:OFFSET` ([`repair_cut`]), which keeps a
//!   copy of what it cuts in the data directory, and restart. A corrupt checkpoint or epoch
//!   file cannot be repaired by cutting: restore it.
//! - **A log of another data directory** (`Corrupt`, "another data dir"): a file was copied
//!   into the wrong directory; put the right one back.

mod files;
mod probe;
mod recovery;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::info;

pub use crl_core::wal::{Coordinating, InDoubt, LogRecord, MAX_RECORD_BYTES, StoredRegion};
pub use probe::fsync_probe;

/// The default [`StoreConfig::checkpoint_bytes`]: 64 MiB.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 64 << 20;

/// The default [`StoreConfig::io_timeout`]: 10 s. A healthy disk syncs in milliseconds; a
/// write or fsync still running after this long is a sick disk.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a [`DurableStore`] keeps its files, when it checkpoints, and how long it waits for
/// the disk.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The store's directory (created if needed). One store per directory at a time.
    pub dir: PathBuf,
    /// Checkpoint when the current log exceeds this many bytes (default
    /// [`DEFAULT_CHECKPOINT_BYTES`]).
    pub checkpoint_bytes: u64,
    /// The longest a log write, a log fsync or a checkpoint may take (default
    /// [`DEFAULT_IO_TIMEOUT`]). One that takes longer makes the store fail exactly as an fsync
    /// error does: the batch in flight and everything queued fail with
    /// [`StoreError::Failed`], and so does every later append. Time the whole process is
    /// stopped (a SIGSTOP, a suspended VM) is not counted against the disk: the watchdog
    /// looks every tenth of this and counts a late look as at most two tenths.
    pub io_timeout: Duration,
    /// A hook called before each file operation of the log writer (`None` in production):
    /// tests inject stalls, failed writes and a full disk with it.
    pub faults: Option<Arc<dyn DiskFaults>>,
}

impl StoreConfig {
    /// A configuration for the store in `dir`, with the default checkpoint threshold and I/O
    /// timeout.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            dir: dir.into(),
            checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
            io_timeout: DEFAULT_IO_TIMEOUT,
            faults: None,
        }
    }
}

/// A file operation of the log writer thread, as shown to a [`DiskFaults`] hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskOp {
    /// Appending one batch of `len` bytes at `offset` of log `generation`.
    Write {
        /// The log.
        generation: u64,
        /// Where the batch starts.
        offset: u64,
        /// The batch's size.
        len: usize,
    },
    /// The `fdatasync` of log `generation` after a batch.
    Sync {
        /// The log.
        generation: u64,
    },
    /// Writing the checkpoint file, after log `generation` (the one that follows the
    /// checkpoint) was created.
    Checkpoint {
        /// The log that follows the checkpoint.
        generation: u64,
    },
}

/// What a [`DiskFaults`] hook makes of an operation.
#[derive(Debug)]
pub enum DiskFault {
    /// Do the operation.
    Proceed,
    /// Fail with this error without doing anything.
    Fail(std::io::Error),
    /// For a [`DiskOp::Write`]: write only the first `n` bytes (at most the batch), then fail
    /// with this error, as a disk filling up does. Like [`DiskFault::Fail`] otherwise.
    Partial(usize, std::io::Error),
}

/// The seam between the log writer and its disk: a hook called on the writer thread before
/// each of its file operations. Tests make a sick disk by sleeping in it (a stall), returning
/// [`DiskFault::Fail`] (a failed write or fsync) or [`DiskFault::Partial`] with `ENOSPC` (a
/// full disk).
pub trait DiskFaults: std::fmt::Debug + Send + Sync + 'static {
    /// Called before `op`; may block (a stall) and decides what the operation does.
    fn before(&self, op: DiskOp) -> DiskFault;
}

/// What recovery found and did, for logs and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Regions loaded from the checkpoint (0 without one).
    pub checkpoint_regions: usize,
    /// Log records replayed after the checkpoint.
    pub log_records: u64,
    /// Bytes of log replayed (valid records only).
    pub log_bytes: u64,
    /// Bytes cut from the end of the last log: a torn tail (never anything before the seal,
    /// nor anything followed by a valid record).
    pub cut_bytes: u64,
    /// Where the torn tail was cut: (log generation, offset), if it was.
    pub cut_at: Option<(u64, u64)>,
    /// Writes replayed for a region that did not exist (skipped, see [`StoreStats`]).
    pub skipped_writes: u64,
    /// How long recovery took (reading, replaying, truncating; not the epoch write).
    pub elapsed: Duration,
}

/// The durable state recovered by [`DurableStore::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The new epoch: the previous one plus 1 (1 on a fresh directory). Already persisted.
    pub epoch: u64,
    /// Every region of this home: checkpoint plus replayed log, sorted by id.
    pub regions: Vec<StoredRegion>,
    /// 1 + the largest `RegionId::seq` ever created here, deleted regions included; at
    /// least 2. Allocate new region ids from here.
    pub next_seq: u64,
    /// Transactions prepared here with no decision yet, sorted by txid: ask their
    /// coordinator.
    pub in_doubt: Vec<InDoubt>,
    /// Transactions committed here as coordinator, not yet acknowledged by every
    /// participant, sorted by txid: tell them again.
    pub coordinating: Vec<Coordinating>,
    /// What recovery did.
    pub report: RecoveryReport,
}

/// Counters of a [`DurableStore`] since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Records appended to the log (written and synced).
    pub appends: u64,
    /// Batches written, each with one `fdatasync`.
    pub batches: u64,
    /// Bytes written to logs.
    pub bytes_written: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Size of the current log file.
    pub log_bytes: u64,
    /// Most records in one batch.
    pub largest_batch: u64,
    /// Writes to a region that did not exist, skipped (each logged with `warn!`).
    pub skipped_writes: u64,
    /// Time spent writing and fdatasync'ing the successful batches, in all (nanoseconds):
    /// divided by `batches`, the mean time a commit waits for the disk.
    pub batch_io_nanos: u64,
    /// The longest write and fdatasync of one batch (nanoseconds).
    pub batch_io_nanos_max: u64,
}

/// An error of a [`DurableStore`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The store failed earlier (an I/O error while writing the log or a checkpoint) and
    /// accepts no more appends. Reopen it to recover.
    #[error("durable store failed: {reason}")]
    Failed {
        /// The error that made it fail.
        reason: String,
    },
    /// A checkpoint, epoch or log file is corrupt (not a torn tail): the store refuses to
    /// start rather than lose or invent committed data. See the module docs for what to do.
    #[error(
        "corrupt {} at offset {offset}: expected {expected}, found {found}; {valid_after} valid records follow",
        file.display()
    )]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Where in it.
        offset: u64,
        /// What should be there.
        expected: String,
        /// What is there.
        found: String,
        /// How many records that check out follow the bad bytes, in that log and the later
        /// ones (0 for the epoch file and the checkpoint).
        valid_after: u64,
    },
    /// `repair_cut` refused: the cut point is not a record boundary, or no such log.
    #[error("log repair refused: {why}")]
    Repair {
        /// Why.
        why: String,
    },
    /// The store was closed.
    #[error("durable store is closed")]
    Closed,
    /// The record encodes to more than [`MAX_RECORD_BYTES`] bytes; it was not appended
    /// (the store does not fail).
    #[error(transparent)]
    RecordTooLarge(#[from] crl_core::wal::RecordTooLarge),
    /// Another store has the directory open (its lock was still held after a wait of 2 s).
    #[error("store directory {} is in use by another store", dir.display())]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
}

impl StoreError {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
        move |source| StoreError::Io { what, source }
    }
}

/// The completion of [`DurableStore::append`].
pub type AppendDone = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A home node's durable store: a write-ahead log with group commit, checkpoints and
/// recovery. Cheap to clone (all clones share one store); the writer thread stops on
/// [`close`](Self::close) or when the last clone is dropped. See the [module
/// docs](self) for the file format and recovery rules.
#[derive(Clone)]
pub struct DurableStore {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<writer::Shared>,
    /// The writer and watchdog threads.
    thread: Mutex<Option<(JoinHandle<()>, JoinHandle<()>)>>,
    /// Disconnected when the writer thread exits.
    exited: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    io_timeout: Duration,
    epoch: u64,
}

impl DurableStore {
    /// Opens the store in `config.dir` (creating the directory if needed), recovers its
    /// durable state, bumps and persists the epoch, and starts the writer thread.
    pub fn open(config: StoreConfig) -> Result<(DurableStore, Recovered), StoreError> {
        let start = Instant::now();
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(StoreError::io("creating the store directory"))?;
        let lock = files::lock_dir(&dir)?;
        let mut rec = recovery::recover(&dir)?;
        rec.report.elapsed = start.elapsed();
        let epoch = rec.epoch.checked_add(1).ok_or_else(|| {
            files::corrupt(
                dir.join(files::EPOCH_FILE),
                8,
                "an epoch below the maximum",
                "u64::MAX",
            )
        })?;
        // The epoch first (with the seal: everything recovered is durable, so no later
        // recovery may take damage to it for a torn tail), then a log to append to if there
        // is none yet; a new log is not sealed until a clean close.
        files::write_epoch(
            &dir,
            &crl_core::wal::EpochFile {
                epoch,
                store_id: rec.store_id,
                sealed_gen: rec.active_gen,
                sealed_len: rec.active_len,
                sealed_chain: rec.chain,
            },
        )?;
        let mut active_len = rec.active_len;
        let log = if active_len == 0 {
            let header = crl_core::wal::LogHeader {
                store_id: rec.store_id,
                generation: rec.active_gen,
                first_seq: rec.next_record,
                prev: rec.chain,
            };
            let log = files::create_log(&dir, &header)?;
            files::sync_dir(&dir)?;
            active_len = crl_core::wal::LOG_HEADER as u64;
            log
        } else {
            files::open_log(&dir, rec.active_gen)?
        };
        let recovered = Recovered {
            epoch,
            regions: rec.table.regions_sorted(),
            next_seq: rec.table.next_seq,
            in_doubt: rec.table.in_doubt.values().cloned().collect(),
            coordinating: rec
                .table
                .coordinating
                .iter()
                .map(|(&txid, participants)| Coordinating {
                    txid,
                    participants: participants.clone(),
                })
                .collect(),
            report: rec.report.clone(),
        };
        let r = &rec.report;
        info!(
            dir = %dir.display(),
            epoch,
            regions = recovered.regions.len(),
            in_doubt = recovered.in_doubt.len(),
            coordinating = recovered.coordinating.len(),
            "durable store recovered: {} records, {} bytes, {} bytes cut, {:.3} s",
            r.log_records,
            r.log_bytes,
            r.cut_bytes,
            r.elapsed.as_secs_f64(),
        );
        let shared = Arc::new(writer::Shared::new(active_len, config.io_timeout));
        let (exit_tx, exit_rx) = std::sync::mpsc::channel();
        let w = writer::Writer {
            shared: shared.clone(),
            dir,
            checkpoint_bytes: config.checkpoint_bytes,
            faults: config.faults.clone(),
            epoch,
            store_id: rec.store_id,
            generation: rec.active_gen,
            next_record: rec.next_record,
            chain: rec.chain,
            log,
            log_bytes: active_len,
            table: rec.table,
            _lock: lock,
            _exit: exit_tx,
        };
        let watchdog = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("crl-durable-watchdog".into())
                .spawn(move || shared.watchdog())
                .map_err(StoreError::io("spawning the log watchdog thread"))?
        };
        let handle = match std::thread::Builder::new()
            .name("crl-durable-writer".into())
            .spawn(move || w.run())
        {
            Ok(h) => h,
            Err(e) => {
                shared.stop_watchdog();
                let _ = watchdog.join();
                return Err(StoreError::Io {
                    what: "spawning the log writer thread",
                    source: e,
                });
            }
        };
        let store = DurableStore {
            inner: Arc::new(Inner {
                shared,
                thread: Mutex::new(Some((handle, watchdog))),
                exited: Mutex::new(Some(exit_rx)),
                io_timeout: config.io_timeout,
                epoch,
            }),
        };
        Ok((store, recovered))
    }

    /// Group commit: queues `record` for the writer thread, which runs `done` after the
    /// record is written and fdatasync'ed (`Ok`), or with the error if the store failed.
    ///
    /// `done` runs on the writer thread, and should be quick (it delays the completions of
    /// the rest of its batch, and the next batch). If the store has already failed or is
    /// closed, or the record is too large, `done` runs at once on the calling thread, before
    /// `append` returns: do not call `append` while holding a lock that `done` takes.
    pub fn append(&self, record: LogRecord, done: AppendDone) {
        self.inner.shared.push(record, Some(done));
    }

    /// Like [`append`](Self::append), but nobody waits: the record is written with the next
    /// batch. For records whose loss in a crash is harmless (e.g. [`LogRecord::Forget`]).
    /// Dropped (with a `debug!`) if the store failed or is closed.
    pub fn append_lazy(&self, record: LogRecord) {
        self.inner.shared.push(record, None);
    }

    /// The error that made the store fail, once an I/O error did (fatal: every later append
    /// fails at once; nothing is retried).
    pub fn failure(&self) -> Option<StoreError> {
        self.inner.shared.failure()
    }

    /// Counters since the store was opened.
    pub fn stats(&self) -> StoreStats {
        self.inner.shared.stats()
    }

    /// This node's epoch since the store was opened (persisted by [`open`](Self::open)).
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// Writes what is queued, then stops the writer thread and waits for it (unless called
    /// from the writer thread itself, i.e. from a completion). Later appends fail with
    /// [`StoreError::Closed`]. Idempotent; also done when the last clone is dropped.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Test hook: makes the next log sync fail as if `fdatasync` had returned an error.
    #[doc(hidden)]
    pub fn inject_failure(&self) {
        self.inner.shared.inject_failure();
    }
}

/// What [`verify`] found in a store directory.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// The store's random id (0 if the epoch file is unreadable).
    pub store_id: u64,
    /// The stored epoch.
    pub epoch: u64,
    /// The seal: (log generation, length) up to which the log is known durable.
    pub sealed: Option<(u64, u64)>,
    /// The checkpoint, if there is one.
    pub checkpoint: Option<CheckpointSummary>,
    /// Logs older than the checkpoint (recovery deletes them).
    pub stale_logs: Vec<u64>,
    /// The logs from the checkpoint on, as far as they were read.
    pub logs: Vec<LogSummary>,
    /// Valid records in those logs.
    pub records: u64,
    /// A torn tail that recovery would cut.
    pub torn_tail: Option<TornTail>,
    /// The corruption that makes recovery refuse ([`StoreError::Corrupt`]), if any.
    pub corruption: Option<StoreError>,
}

/// A checkpoint, as [`verify`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointSummary {
    /// The first log generation after it.
    pub log_gen: u64,
    /// The sequence number of the first record after it.
    pub first_record: u64,
    /// Regions in it.
    pub regions: usize,
    /// In-doubt transactions in it.
    pub in_doubt: usize,
    /// Coordinated transactions in it.
    pub coordinating: usize,
}

/// One log file, as [`verify`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSummary {
    /// Its generation.
    pub generation: u64,
    /// Its path.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Valid, chained records read from it.
    pub records: u64,
    /// The sequence number of its first record.
    pub first_record: u64,
}

/// A torn tail: bytes at the end of the last log that are not a valid record, with no valid
/// record after them, past the seal. Recovery cuts them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The log.
    pub generation: u64,
    /// Where the tail starts.
    pub offset: u64,
    /// Its length.
    pub bytes: u64,
    /// What is wrong with the first bad record.
    pub why: String,
}

/// What [`repair_cut`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairReport {
    /// The log cut.
    pub generation: u64,
    /// Where.
    pub offset: u64,
    /// Bytes cut: the rest of that log and every later log.
    pub cut_bytes: u64,
    /// The later logs removed.
    pub removed_logs: Vec<u64>,
    /// The directory (inside the store directory) holding a copy of everything cut.
    pub backup: PathBuf,
}

/// Reads the store in `dir` and reports its checkpoint, logs, records, any torn tail and any
/// corruption, as recovery would see them, changing nothing (it takes the directory's lock,
/// so the store must not be open). `Err` only for I/O errors and a store that is open.
pub fn verify(dir: &Path) -> Result<VerifyReport, StoreError> {
    recovery::verify(dir)
}

/// The operator's repair: cuts log `generation` at `offset` (which must be a record boundary
/// with only valid records before it) and removes every later log, after copying everything
/// cut into a `cut-<generation>-<offset>-<unix time>` directory inside `dir`. Records after
/// the cut are lost for good: run it only when [`verify`] reports corruption and the lost
/// records are recovered elsewhere, or accepted as lost.
pub fn repair_cut(dir: &Path, generation: u64, offset: u64) -> Result<RepairReport, StoreError> {
    recovery::repair_cut(dir, generation, offset)
}

impl Inner {
    fn close(&self) {
        self.shared.close();
        let threads = self.thread.lock().take();
        let Some((writer, watchdog)) = threads else {
            return;
        };
        if writer.thread().id() == std::thread::current().id() {
            // Called from a completion: the writer stops after this batch (and then stops
            // the watchdog).
            return;
        }
        // A writer stuck in the kernel on a sick disk is not waited for forever: after twice
        // the I/O timeout it is left behind (it holds the directory until it returns).
        let exited = self.exited.lock().take();
        if let Some(rx) = exited
            && let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                rx.recv_timeout(self.io_timeout.saturating_mul(2))
        {
            tracing::error!(
                "the durable log writer is stuck in a disk operation; close does not wait for it"
            );
            self.shared.stop_watchdog();
            return;
        }
        if writer.join().is_err() {
            tracing::error!("the durable log writer thread panicked");
        }
        self.shared.stop_watchdog();
        if watchdog.join().is_err() {
            tracing::error!("the durable log watchdog thread panicked");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for DurableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableStore")
            .field("epoch", &self.inner.epoch)
            .field("stats", &self.stats())
            .field("failure", &self.inner.shared.failure())
            .finish()
    }
}
