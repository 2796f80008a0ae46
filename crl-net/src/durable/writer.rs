//! The writer thread: group commit, the in-memory durable table, checkpoints.
//!
//! Callers encode their record on their own thread and queue it ([`Shared::push`]). The writer
//! sleeps until some queued record has a waiter (or lazy records pile up, or the store
//! closes), takes the whole queue, writes it with one `write_all` and one `fdatasync`, runs
//! the completions, and applies the records to its table. While it syncs, new records queue
//! up for the next batch: that is what lets many commits share one fsync.
//!
//! The writer gives each record its place in the chain (sequence number and the previous
//! record's checksum) as it writes the batch. A watchdog thread bounds every disk operation
//! of the writer by [`StoreConfig::io_timeout`](super::StoreConfig::io_timeout): one that
//! overruns fails the store as an fsync error does, and the watchdog itself fails the
//! completions of the batch in flight and of everything queued, since the writer is stuck.

use std::fs::File;
use std::io::{self, Write};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tracing::{debug, error, info, warn};

use super::files;
use super::{AppendDone, DiskFault, DiskFaults, DiskOp, LogRecord, StoreError, StoreStats};
use crl_core::wal::DurableState;
use crl_core::wal::EpochFile;
use crl_core::wal::{LOG_HEADER, LogHeader, encode_frame, seal_frame};

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

/// The disk operation in flight, watched by the watchdog thread.
#[derive(Default)]
struct Watch {
    /// When the operation started, and what it is.
    started: Option<(Instant, &'static str)>,
    /// The completions of the batch in flight.
    dones: Vec<AppendDone>,
    /// The watchdog failed the store: the completions are gone.
    timed_out: bool,
    stop: bool,
}

/// State shared by the store's handles and its writer and watchdog threads.
pub(crate) struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    watch: Mutex<Watch>,
    watch_wake: Condvar,
    io_timeout: Duration,
    failed: OnceLock<String>,
    inject: AtomicBool,
    appends: AtomicU64,
    batches: AtomicU64,
    bytes_written: AtomicU64,
    checkpoints: AtomicU64,
    log_bytes: AtomicU64,
    largest_batch: AtomicU64,
    skipped_writes: AtomicU64,
    batch_io_nanos: AtomicU64,
    batch_io_nanos_max: AtomicU64,
}

fn run_done(done: AppendDone, result: Result<(), StoreError>) {
    if std::panic::catch_unwind(AssertUnwindSafe(move || done(result))).is_err() {
        error!("a durable append completion panicked");
    }
}

impl Shared {
    pub(crate) fn new(log_bytes: u64, io_timeout: Duration) -> Self {
        Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            watch: Mutex::new(Watch::default()),
            watch_wake: Condvar::new(),
            io_timeout,
            failed: OnceLock::new(),
            inject: AtomicBool::new(false),
            appends: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            log_bytes: AtomicU64::new(log_bytes),
            largest_batch: AtomicU64::new(0),
            skipped_writes: AtomicU64::new(0),
            batch_io_nanos: AtomicU64::new(0),
            batch_io_nanos_max: AtomicU64::new(0),
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
            return refuse(done, err.into());
        }
        let mut q = self.queue.lock();
        // Checked again under the queue lock: the watchdog fails the store, then drains the
        // queue, so nothing queued after a failure waits for a stuck writer.
        if let Some(err) = self.failure() {
            drop(q);
            return refuse(done, err);
        }
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

    /// Marks a disk operation as started: the watchdog fails the store if it runs past the
    /// I/O timeout, running `dones` with the error itself.
    fn begin_io(&self, what: &'static str, dones: Vec<AppendDone>) {
        let mut w = self.watch.lock();
        w.started = Some((Instant::now(), what));
        w.dones = dones;
        drop(w);
        self.watch_wake.notify_one();
    }

    /// Marks the disk operation as finished: its completions, unless the watchdog already
    /// failed them (then `None`).
    fn end_io(&self) -> Option<Vec<AppendDone>> {
        let mut w = self.watch.lock();
        w.started = None;
        if w.timed_out {
            None
        } else {
            Some(std::mem::take(&mut w.dones))
        }
    }

    /// The watchdog thread: fails the store when a disk operation overruns the I/O timeout.
    pub(crate) fn watchdog(&self) {
        // The watchdog looks every `slice`. Time the whole process did not run (a SIGSTOP, a
        // suspended VM) is not the disk's fault: a look that comes later than asked counts as
        // at most two slices, so a stopped and resumed process does not fail its store.
        let slice = (self.io_timeout / 10).max(Duration::from_millis(1));
        // The operation being timed, the time counted against it, and the last look.
        let mut timing: Option<(Instant, Duration, Instant)> = None;
        let mut w = self.watch.lock();
        loop {
            if w.stop {
                return;
            }
            match w.started {
                None => {
                    timing = None;
                    self.watch_wake.wait(&mut w);
                }
                Some((start, what)) => {
                    let now = Instant::now();
                    let (counted, last) = match timing {
                        Some((op, counted, last)) if op == start => (counted, last),
                        _ => (Duration::ZERO, start),
                    };
                    let counted = counted
                        + now
                            .saturating_duration_since(last)
                            .min(slice.saturating_mul(2));
                    if counted < self.io_timeout {
                        timing = Some((start, counted, now));
                        let _ = self
                            .watch_wake
                            .wait_for(&mut w, slice.min(self.io_timeout - counted));
                        continue;
                    }
                    timing = None;
                    let reason = format!(
                        "{what} did not finish within the i/o timeout of {:?}: the disk is sick",
                        self.io_timeout
                    );
                    error!(error = %reason, "durable store failed; every later append fails");
                    let _ = self.failed.set(reason);
                    w.timed_out = true;
                    w.started = None;
                    let dones = std::mem::take(&mut w.dones);
                    drop(w);
                    let err = self.failure().expect("just failed");
                    for done in dones {
                        run_done(done, Err(clone_failed(&err)));
                    }
                    let mut queued = {
                        let mut q = self.queue.lock();
                        q.waiting = 0;
                        std::mem::take(&mut q.items)
                    };
                    fail_all(&mut queued, &err);
                    w = self.watch.lock();
                }
            }
        }
    }

    pub(crate) fn stop_watchdog(&self) {
        self.watch.lock().stop = true;
        self.watch_wake.notify_all();
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
            batch_io_nanos: self.batch_io_nanos.load(Relaxed),
            batch_io_nanos_max: self.batch_io_nanos_max.load(Relaxed),
        }
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) dir: PathBuf,
    pub(crate) checkpoint_bytes: u64,
    pub(crate) faults: Option<Arc<dyn DiskFaults>>,
    pub(crate) epoch: u64,
    pub(crate) store_id: u64,
    /// The generation of the current log.
    pub(crate) generation: u64,
    /// The sequence number of the next record.
    pub(crate) next_record: u64,
    /// The checksum of the last record written.
    pub(crate) chain: u32,
    pub(crate) log: File,
    pub(crate) log_bytes: u64,
    pub(crate) table: DurableState,
    /// The directory lock, released when the writer stops.
    pub(crate) _lock: File,
    /// Dropped when the writer stops (so `close` knows).
    pub(crate) _exit: std::sync::mpsc::Sender<()>,
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
        if self.shared.failure().is_none() {
            // A clean close: seal the log, so that the next recovery treats damage anywhere
            // in it as corruption, not as a torn tail.
            let seal = EpochFile {
                epoch: self.epoch,
                store_id: self.store_id,
                sealed_gen: self.generation,
                sealed_len: self.log_bytes,
                sealed_chain: self.chain,
            };
            if let Err(e) = files::write_epoch(&self.dir, &seal) {
                warn!(dir = %self.dir.display(), error = %e, "could not seal the log at close");
            }
        }
        self.shared.stop_watchdog();
        debug!(dir = %self.dir.display(), "durable log writer stopped");
    }

    /// What the fault hook says of `op` (proceed without a hook).
    fn fault(&self, op: DiskOp) -> DiskFault {
        match &self.faults {
            Some(f) => f.before(op),
            None => DiskFault::Proceed,
        }
    }

    /// Appends `buf` to the log (through the fault hook); on a failed write, cuts the log
    /// back to where the batch started, so no partial record is left behind.
    fn write_log(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        let op = DiskOp::Write {
            generation: self.generation,
            offset: self.log_bytes,
            len: buf.len(),
        };
        let result = match self.fault(op) {
            DiskFault::Proceed => self.log.write_all(buf),
            DiskFault::Fail(e) => Err(e),
            DiskFault::Partial(n, e) => self.log.write_all(&buf[..n.min(buf.len())]).and(Err(e)),
        };
        if let Err(e) = result {
            let cut = self
                .log
                .set_len(self.log_bytes)
                .and_then(|()| self.log.sync_data());
            if let Err(cut) = cut {
                warn!(error = %cut, "could not cut a failed batch off the log; recovery will cut it as a torn tail");
            }
            return Err(StoreError::Io {
                what: "writing the log",
                source: e,
            });
        }
        Ok(())
    }

    fn write_batch(&mut self, batch: &mut Vec<Pending>, buf: &mut Vec<u8>) {
        if let Some(err) = self.shared.failure() {
            return fail_all(batch, &err);
        }
        buf.clear();
        for p in batch.iter_mut() {
            self.chain = seal_frame(&mut p.frame, self.store_id, self.next_record, self.chain);
            self.next_record += 1;
            buf.extend_from_slice(&p.frame);
        }
        let dones = batch.iter_mut().filter_map(|p| p.done.take()).collect();
        self.shared.begin_io("writing and syncing the log", dones);
        let io_started = Instant::now();
        let written = self.write_log(buf).and_then(|()| self.sync());
        let io_nanos = u64::try_from(io_started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let dones = self.shared.end_io();
        if let Err(err) = written {
            self.fail(err);
        }
        let dones = match (dones, self.shared.failure()) {
            (Some(dones), None) => dones,
            (dones, err) => {
                // Failed here, or timed out (the watchdog already failed those completions).
                let err = err.unwrap_or(StoreError::Closed);
                for done in dones.into_iter().flatten() {
                    run_done(done, Err(clone_failed(&err)));
                }
                return fail_all(batch, &err);
            }
        };
        let n = batch.len() as u64;
        self.log_bytes += buf.len() as u64;
        let s = &self.shared;
        s.appends.fetch_add(n, Relaxed);
        s.batches.fetch_add(1, Relaxed);
        s.bytes_written.fetch_add(buf.len() as u64, Relaxed);
        s.log_bytes.store(self.log_bytes, Relaxed);
        s.largest_batch.fetch_max(n, Relaxed);
        s.batch_io_nanos.fetch_add(io_nanos, Relaxed);
        s.batch_io_nanos_max.fetch_max(io_nanos, Relaxed);
        for done in dones {
            run_done(done, Ok(()));
        }
        let mut skipped = 0;
        for p in batch.drain(..) {
            skipped += self.table.apply(p.record);
        }
        s.skipped_writes.fetch_add(skipped, Relaxed);
        if self.log_bytes > self.checkpoint_bytes {
            self.shared.begin_io("writing a checkpoint", Vec::new());
            let result = self.checkpoint();
            let timed_out = self.shared.end_io().is_none();
            if let Err(err) = result {
                self.fail(err);
            } else if timed_out {
                // The store failed; the checkpoint is durable but nothing more is written.
                debug!("a checkpoint finished after the i/o timeout");
            }
        }
    }

    fn sync(&self) -> Result<(), StoreError> {
        if self.shared.inject.swap(false, Relaxed) {
            return Err(StoreError::Io {
                what: "syncing the log",
                source: io::Error::other("injected fdatasync failure"),
            });
        }
        match self.fault(DiskOp::Sync {
            generation: self.generation,
        }) {
            DiskFault::Proceed => {}
            DiskFault::Fail(e) | DiskFault::Partial(_, e) => {
                return Err(StoreError::Io {
                    what: "syncing the log",
                    source: e,
                });
            }
        }
        self.log
            .sync_data()
            .map_err(StoreError::io("syncing the log"))
    }

    fn fail(&self, err: StoreError) {
        let mut reason = err.to_string();
        if let StoreError::Io { source, .. } = &err
            && source.kind() == io::ErrorKind::StorageFull
        {
            reason.push_str(
                " (the disk is full: free space, then restart; every acknowledged commit is recovered)",
            );
        }
        error!(dir = %self.dir.display(), error = %reason, "durable store failed; every later append fails");
        // Only the writer thread sets it, once: later failures are consequences.
        let _ = self.shared.failed.set(reason);
    }

    /// Writes a checkpoint and switches to a fresh log (order: see the module docs).
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        let start = Instant::now();
        let next = LogHeader {
            store_id: self.store_id,
            generation: self.generation + 1,
            first_seq: self.next_record,
            prev: self.chain,
        };
        let new_log = files::create_log(&self.dir, &next)?;
        files::sync_dir(&self.dir)?;
        match self.fault(DiskOp::Checkpoint {
            generation: next.generation,
        }) {
            DiskFault::Proceed => {}
            DiskFault::Fail(e) | DiskFault::Partial(_, e) => {
                return Err(StoreError::Io {
                    what: "writing the checkpoint",
                    source: e,
                });
            }
        }
        files::write_checkpoint(&self.dir, &self.table, self.epoch, &next)?;
        let next = next.generation;
        // The checkpoint is durable: records go to the new log from now on.
        self.log = new_log;
        let old_bytes = self.log_bytes;
        self.generation = next;
        self.log_bytes = LOG_HEADER as u64;
        self.shared.log_bytes.store(self.log_bytes, Relaxed);
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

fn clone_failed(err: &StoreError) -> StoreError {
    match err {
        StoreError::Failed { reason } => StoreError::Failed {
            reason: reason.clone(),
        },
        other => StoreError::Failed {
            reason: other.to_string(),
        },
    }
}

fn fail_all(batch: &mut Vec<Pending>, err: &StoreError) {
    for p in batch.drain(..) {
        if let Some(done) = p.done {
            run_done(done, Err(clone_failed(err)));
        }
    }
}
