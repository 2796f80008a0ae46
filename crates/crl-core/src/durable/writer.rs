//! The writer thread: group commit, the in-memory durable table, checkpoints.
//!
//! Callers encode their record on their own thread and queue it ([`Shared::push`]). The writer
//! sleeps until some queued record has a waiter (or lazy records pile up, or the store
//! closes), takes the whole queue, writes it with one `write_all` and one `fdatasync`, runs
//! the completions, and applies the records to its table. While it syncs, new records queue
//! up for the next batch: that is what lets many commits share one fsync.

use std::fs::File;
use std::io::{self, Write};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use tracing::{debug, error, info, warn};

use super::codec::encode_frame;
use super::files;
use super::table::Table;
use super::{AppendDone, LogRecord, StoreError, StoreStats};

/// Queued lazy records that wake the writer even if nobody waits.
const LAZY_FLUSH: usize = 1024;
/// A batch buffer larger than this is released after use.
const KEEP_BUFFER: usize = 16 << 20;

struct Pending {
    frame: Vec<u8>,
    record: LogRecord,
    done: Option<AppendDone>,
}

#[derive(Default)]
struct Queue {
    items: Vec<Pending>,
    /// Queued items with a completion.
    waiting: usize,
    closed: bool,
}

impl Queue {
    fn ready(&self) -> bool {
        self.closed || self.waiting > 0 || self.items.len() >= LAZY_FLUSH
    }
}

/// State shared by the store's handles and its writer thread.
pub(crate) struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    failed: OnceLock<String>,
    inject: AtomicBool,
    appends: AtomicU64,
    batches: AtomicU64,
    bytes_written: AtomicU64,
    checkpoints: AtomicU64,
    log_bytes: AtomicU64,
    largest_batch: AtomicU64,
    skipped_writes: AtomicU64,
}

fn run_done(done: AppendDone, result: Result<(), StoreError>) {
    if std::panic::catch_unwind(AssertUnwindSafe(move || done(result))).is_err() {
        error!("a durable append completion panicked");
    }
}

impl Shared {
    pub(crate) fn new(log_bytes: u64) -> Self {
        Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            failed: OnceLock::new(),
            inject: AtomicBool::new(false),
            appends: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            log_bytes: AtomicU64::new(log_bytes),
            largest_batch: AtomicU64::new(0),
            skipped_writes: AtomicU64::new(0),
        }
    }

    pub(crate) fn failure(&self) -> Option<StoreError> {
        self.failed.get().map(|reason| StoreError::Failed {
            reason: reason.clone(),
        })
    }

    /// Queues a record (with a completion unless lazy).
    pub(crate) fn push(&self, record: LogRecord, done: Option<AppendDone>) {
        let refuse = |done: Option<AppendDone>, err: StoreError| match done {
            Some(done) => done(Err(err)),
            None => debug!(error = %err, "lazy log record dropped"),
        };
        if let Some(err) = self.failure() {
            return refuse(done, err);
        }
        let mut frame = Vec::new();
        if let Err(err) = encode_frame(&record, &mut frame) {
            return refuse(done, err);
        }
        let mut q = self.queue.lock();
        if q.closed {
            drop(q);
            return refuse(done, StoreError::Closed);
        }
        let waits = done.is_some();
        q.waiting += usize::from(waits);
        q.items.push(Pending {
            frame,
            record,
            done,
        });
        let notify = waits || q.items.len() >= LAZY_FLUSH;
        drop(q);
        if notify {
            self.wake.notify_one();
        }
    }

    pub(crate) fn close(&self) {
        self.queue.lock().closed = true;
        self.wake.notify_all();
    }

    pub(crate) fn inject_failure(&self) {
        self.inject.store(true, Relaxed);
    }

    pub(crate) fn stats(&self) -> StoreStats {
        StoreStats {
            appends: self.appends.load(Relaxed),
            batches: self.batches.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            checkpoints: self.checkpoints.load(Relaxed),
            log_bytes: self.log_bytes.load(Relaxed),
            largest_batch: self.largest_batch.load(Relaxed),
            skipped_writes: self.skipped_writes.load(Relaxed),
        }
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    pub(crate) shared: std::sync::Arc<Shared>,
    pub(crate) dir: PathBuf,
    pub(crate) checkpoint_bytes: u64,
    pub(crate) epoch: u64,
    /// The generation of the current log.
    pub(crate) generation: u64,
    pub(crate) log: File,
    pub(crate) log_bytes: u64,
    pub(crate) table: Table,
    /// The directory lock, released when the writer stops.
    pub(crate) _lock: File,
}

impl Writer {
    pub(crate) fn run(mut self) {
        let mut batch = Vec::new();
        let mut buf = Vec::new();
        loop {
            {
                let mut q = self.shared.queue.lock();
                while !q.ready() {
                    self.shared.wake.wait(&mut q);
                }
                if q.items.is_empty() {
                    // Closed, and everything queued is written.
                    break;
                }
                std::mem::swap(&mut batch, &mut q.items);
                q.waiting = 0;
            }
            self.write_batch(&mut batch, &mut buf);
            if buf.capacity() > KEEP_BUFFER {
                buf = Vec::new();
            }
        }
        debug!(dir = %self.dir.display(), "durable log writer stopped");
    }

    fn write_batch(&mut self, batch: &mut Vec<Pending>, buf: &mut Vec<u8>) {
        if let Some(err) = self.shared.failure() {
            return fail_all(batch, &err);
        }
        buf.clear();
        for p in batch.iter() {
            buf.extend_from_slice(&p.frame);
        }
        let written = self
            .log
            .write_all(buf)
            .map_err(StoreError::io("writing the log"))
            .and_then(|()| self.sync());
        if let Err(err) = written {
            self.fail(err);
            let err = self.shared.failure().expect("just failed");
            return fail_all(batch, &err);
        }
        let n = batch.len() as u64;
        self.log_bytes += buf.len() as u64;
        let s = &self.shared;
        s.appends.fetch_add(n, Relaxed);
        s.batches.fetch_add(1, Relaxed);
        s.bytes_written.fetch_add(buf.len() as u64, Relaxed);
        s.log_bytes.store(self.log_bytes, Relaxed);
        s.largest_batch.fetch_max(n, Relaxed);
        for p in batch.iter_mut() {
            if let Some(done) = p.done.take() {
                run_done(done, Ok(()));
            }
        }
        let mut skipped = 0;
        for p in batch.drain(..) {
            skipped += self.table.apply(p.record);
        }
        s.skipped_writes.fetch_add(skipped, Relaxed);
        if self.log_bytes > self.checkpoint_bytes
            && let Err(err) = self.checkpoint()
        {
            self.fail(err);
        }
    }

    fn sync(&self) -> Result<(), StoreError> {
        if self.shared.inject.swap(false, Relaxed) {
            return Err(StoreError::Io {
                what: "syncing the log",
                source: io::Error::other("injected fdatasync failure"),
            });
        }
        self.log
            .sync_data()
            .map_err(StoreError::io("syncing the log"))
    }

    fn fail(&self, err: StoreError) {
        let reason = err.to_string();
        error!(dir = %self.dir.display(), error = %reason, "durable store failed; every later append fails");
        // Only the writer thread sets it, once: later failures are consequences.
        let _ = self.shared.failed.set(reason);
    }

    /// Writes a checkpoint and switches to a fresh log (order: see the module docs).
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        let start = Instant::now();
        let next = self.generation + 1;
        let new_log = files::create_log(&self.dir, next)?;
        files::sync_dir(&self.dir)?;
        files::write_checkpoint(&self.dir, &self.table, self.epoch, next)?;
        // The checkpoint is durable: records go to the new log from now on.
        self.log = new_log;
        let old_bytes = self.log_bytes;
        self.generation = next;
        self.log_bytes = 0;
        self.shared.log_bytes.store(0, Relaxed);
        self.shared.checkpoints.fetch_add(1, Relaxed);
        match files::list_logs(&self.dir) {
            Ok(logs) => {
                for (_, path) in logs.range(..next) {
                    if let Err(e) = std::fs::remove_file(path) {
                        warn!(log = %path.display(), error = %e, "could not remove a log older than the checkpoint");
                    }
                }
            }
            Err(e) => warn!(error = %e, "could not list the logs older than the checkpoint"),
        }
        info!(
            regions = self.table.regions.len(),
            in_doubt = self.table.in_doubt.len(),
            coordinating = self.table.coordinating.len(),
            log_bytes = old_bytes,
            generation = next,
            elapsed = ?start.elapsed(),
            "checkpoint written"
        );
        Ok(())
    }
}

fn fail_all(batch: &mut Vec<Pending>, err: &StoreError) {
    for p in batch.drain(..) {
        if let Some(done) = p.done {
            let err = match err {
                StoreError::Failed { reason } => StoreError::Failed {
                    reason: reason.clone(),
                },
                other => StoreError::Failed {
                    reason: other.to_string(),
                },
            };
            run_done(done, Err(err));
        }
    }
}
