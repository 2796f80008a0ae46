//! Recovery: checkpoint plus replayed logs, with a torn or corrupt tail cut (see the rules in
//! the [module docs](super)).

use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;

use tracing::{debug, info, warn};

use super::codec::decode_frame;
use super::files::{self, CHECKPOINT_TMP, EPOCH_FILE, EPOCH_TMP};
use super::table::Table;
use super::{RecoveryReport, StoreError};

/// What recovery found; [`super::DurableStore::open`] turns it into a store.
pub(crate) struct Recovery {
    /// The stored epoch (0 on a fresh directory).
    pub(crate) epoch: u64,
    pub(crate) table: Table,
    /// The log to append to.
    pub(crate) active_gen: u64,
    /// Its length (after any cut).
    pub(crate) active_len: u64,
    pub(crate) report: RecoveryReport,
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => {
            debug!(file = %path.display(), "removed a leftover file");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io {
            what: "removing a leftover file",
            source: e,
        }),
    }
}

/// Recovers the durable state in `dir` (which the caller has locked).
pub(crate) fn recover(dir: &Path) -> Result<Recovery, StoreError> {
    remove_if_present(&dir.join(EPOCH_TMP))?;
    remove_if_present(&dir.join(CHECKPOINT_TMP))?;

    let stored_epoch = files::read_epoch(dir)?;
    let checkpoint = files::read_checkpoint(dir)?;
    let mut logs = files::list_logs(dir)?;
    if stored_epoch.is_none() && (checkpoint.is_some() || !logs.is_empty()) {
        return Err(StoreError::Corrupt {
            file: dir.join(EPOCH_FILE),
            reason: "missing, but the directory holds a checkpoint or a log".into(),
        });
    }

    let mut report = RecoveryReport::default();
    let (mut epoch, first_gen, mut table) = match checkpoint {
        Some(c) => {
            report.checkpoint_regions = c.table.regions.len();
            (c.epoch, c.log_gen, c.table)
        }
        None => (0, 1, Table::default()),
    };
    epoch = epoch.max(stored_epoch.unwrap_or(0));

    // Logs older than the checkpoint: their removal after the checkpoint did not finish.
    let newer = logs.split_off(&first_gen);
    for (generation, path) in logs {
        info!(generation, "removing a log older than the checkpoint");
        remove_if_present(&path)?;
    }
    let logs = newer;
    for (i, &generation) in logs.keys().enumerate() {
        if generation != first_gen + i as u64 {
            return Err(StoreError::Corrupt {
                file: dir.join(files::log_name(generation)),
                reason: format!(
                    "expected {} here: the logs after the checkpoint are not consecutive",
                    files::log_name(first_gen + i as u64)
                ),
            });
        }
    }

    let mut active_gen = first_gen;
    let mut active_len = 0;
    let mut cut = false;
    for (generation, path) in logs {
        let io_err = |what| move |source| StoreError::Io { what, source };
        if cut {
            let len = fs::metadata(&path)
                .map_err(io_err("reading a log's size"))?
                .len();
            warn!(
                log = %path.display(),
                bytes = len,
                "removing a log that follows a cut"
            );
            report.cut_bytes += len;
            remove_if_present(&path)?;
            continue;
        }
        let bytes = fs::read(&path).map_err(io_err("reading a log"))?;
        let mut pos = 0;
        while pos < bytes.len() {
            match decode_frame(&bytes[pos..]) {
                Ok((record, n)) => {
                    report.skipped_writes += table.apply(record);
                    report.log_records += 1;
                    pos += n;
                }
                Err(why) => {
                    let dropped = (bytes.len() - pos) as u64;
                    warn!(
                        log = %path.display(),
                        offset = pos,
                        cut_bytes = dropped,
                        %why,
                        "cutting the log at an unusable record"
                    );
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| {
                            f.set_len(pos as u64)?;
                            f.sync_all()
                        })
                        .map_err(io_err("truncating a log"))?;
                    report.cut_bytes += dropped;
                    cut = true;
                    break;
                }
            }
        }
        report.log_bytes += pos as u64;
        active_gen = generation;
        active_len = pos as u64;
    }
    if report.cut_bytes > 0 {
        files::sync_dir(dir)?;
    }
    Ok(Recovery {
        epoch,
        table,
        active_gen,
        active_len,
        report,
    })
}
