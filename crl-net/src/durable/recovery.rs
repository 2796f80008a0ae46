//! Recovery: checkpoint plus replayed logs, telling a torn tail (cut) from corruption
//! (refused), and the operator's read-only verification and explicit repair (see the rules in
//! the [module docs](super)).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{debug, info, warn};

use super::files::{self, CHECKPOINT_FILE, CHECKPOINT_TMP, EPOCH_FILE, EPOCH_TMP};
use super::{
    CheckpointSummary, LogSummary, RecoveryReport, RepairReport, StoreError, TornTail, VerifyReport,
};
use crl_core::wal::DurableState;
use crl_core::wal::EpochFile;
use crl_core::wal::{
    FrameError, LOG_HEADER, LogHeader, check_frame, count_valid_frames, decode_frame,
};

/// What recovery found; [`super::DurableStore::open`] turns it into a store.
pub(crate) struct Recovery {
    /// The stored epoch (0 on a fresh directory).
    pub(crate) epoch: u64,
    /// The store's random id (new on a fresh directory).
    pub(crate) store_id: u64,
    pub(crate) table: DurableState,
    /// The log to append to.
    pub(crate) active_gen: u64,
    /// Its length (after any cut); 0 if it must be created.
    pub(crate) active_len: u64,
    /// The sequence number of the next record.
    pub(crate) next_record: u64,
    /// The checksum of the last record (the next record's `prev`).
    pub(crate) chain: u32,
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

/// The result of reading a store directory without changing it.
struct Scan {
    verify: VerifyReport,
    store_id: u64,
    table: DurableState,
    next_record: u64,
    chain: u32,
    /// The first log generation after the checkpoint (1 without one).
    first_gen: u64,
    stale: Vec<PathBuf>,
    skipped_writes: u64,
    log_bytes: u64,
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> StoreError {
    StoreError::io(what)
}

/// Reads the store in `dir` (locked by the caller) and replays it in memory, changing
/// nothing. `Err` only for I/O errors and a bad epoch file or checkpoint; a bad log is
/// reported in [`VerifyReport::corruption`].
fn scan(dir: &Path) -> Result<Scan, StoreError> {
    let epoch_file = files::read_epoch(dir)?;
    let checkpoint = files::read_checkpoint(dir)?;
    let mut logs = files::list_logs(dir)?;
    if epoch_file.is_none() && (checkpoint.is_some() || !logs.is_empty()) {
        return Err(files::corrupt(
            dir.join(EPOCH_FILE),
            0,
            "an epoch file (the directory holds a checkpoint or a log)",
            "none",
        ));
    }
    let store_id = epoch_file.map_or_else(files::new_store_id, |e| e.store_id);
    let mut verify = VerifyReport {
        store_id,
        epoch: epoch_file.map_or(0, |e| e.epoch),
        sealed: epoch_file
            .filter(|e| e.sealed_len > 0)
            .map(|e| (e.sealed_gen, e.sealed_len)),
        ..VerifyReport::default()
    };
    let (first_gen, mut seq, mut chain, mut table) = match checkpoint {
        Some(c) => {
            if c.store_id != store_id {
                return Err(files::corrupt(
                    dir.join(CHECKPOINT_FILE),
                    44,
                    format!("store id {store_id:#018x} (the epoch file's)"),
                    format!(
                        "store id {:#018x}: a checkpoint of another data dir",
                        c.store_id
                    ),
                ));
            }
            verify.epoch = verify.epoch.max(c.epoch);
            verify.checkpoint = Some(CheckpointSummary {
                log_gen: c.log_gen,
                first_record: c.first_seq,
                regions: c.state.regions.len(),
                in_doubt: c.state.in_doubt.len(),
                coordinating: c.state.coordinating.len(),
            });
            (c.log_gen, c.first_seq, c.prev, c.state)
        }
        None => (1, 1, 0, DurableState::default()),
    };

    // Logs older than the checkpoint: their removal after the checkpoint did not finish.
    let newer = logs.split_off(&first_gen);
    verify.stale_logs = logs.keys().copied().collect();
    let stale = logs.into_values().collect();
    let logs = newer;
    for (i, &generation) in logs.keys().enumerate() {
        let expected = first_gen + i as u64;
        if generation != expected {
            return Err(files::corrupt(
                dir.join(files::log_name(generation)),
                0,
                format!(
                    "{} here: the logs after the checkpoint are consecutive",
                    files::log_name(expected)
                ),
                files::log_name(generation),
            ));
        }
    }
    let sealed = verify.sealed.filter(|&(g, _)| g >= first_gen);
    let sealed_chain = epoch_file.map_or(0, |e| e.sealed_chain);
    let last_gen = logs.keys().next_back().copied();
    let paths: Vec<(u64, PathBuf)> = logs.into_iter().collect();
    let mut skipped_writes = 0;
    let mut log_bytes = 0;
    'logs: for (i, (generation, path)) in paths.iter().enumerate() {
        let generation = *generation;
        let is_last = Some(generation) == last_gen;
        let bytes = fs::read(path).map_err(io_err("reading a log"))?;
        let len = bytes.len() as u64;
        // Is a bad record at `offset` of this log before the seal (known durable)?
        let below_seal = |offset: u64| {
            sealed.is_some_and(|(g, l)| g > generation || (g == generation && offset < l))
        };
        // Valid records in the logs after this one.
        let later = || -> Result<u64, StoreError> {
            let mut n = 0;
            for (_, p) in &paths[i + 1..] {
                let b = fs::read(p).map_err(io_err("reading a log"))?;
                n += count_valid_frames(&b, 0, store_id);
            }
            Ok(n)
        };
        let mut summary = LogSummary {
            generation,
            path: path.clone(),
            bytes: len,
            records: 0,
            first_record: seq,
        };
        let header = match LogHeader::decode(&bytes) {
            Ok(h) => h,
            Err(why) => {
                let valid_after = count_valid_frames(&bytes, 0, store_id) + later()?;
                if is_last && len <= LOG_HEADER as u64 && !below_seal(0) && valid_after == 0 {
                    // A log created by a checkpoint that crashed before its header was synced.
                    verify.torn_tail = Some(TornTail {
                        generation,
                        offset: 0,
                        bytes: len,
                        why,
                    });
                } else {
                    verify.corruption = Some(StoreError::Corrupt {
                        file: path.clone(),
                        offset: 0,
                        expected: "a valid log header".into(),
                        found: why,
                        valid_after,
                    });
                }
                verify.logs.push(summary);
                break 'logs;
            }
        };
        let expected = LogHeader {
            store_id,
            generation,
            first_seq: seq,
            prev: chain,
        };
        if header != expected {
            let (offset, expected, found) = if header.store_id != store_id {
                (
                    8,
                    format!("store id {store_id:#018x}"),
                    format!(
                        "store id {:#018x}: a log of another data dir",
                        header.store_id
                    ),
                )
            } else if header.generation != generation {
                (
                    16,
                    format!("generation {generation}"),
                    format!("generation {}", header.generation),
                )
            } else {
                (
                    24,
                    format!("the chain to go on at record {seq} after checksum {chain:#010x}"),
                    format!(
                        "record {} after checksum {:#010x}: a log that does not follow the previous one",
                        header.first_seq, header.prev
                    ),
                )
            };
            verify.corruption = Some(StoreError::Corrupt {
                file: path.clone(),
                offset,
                expected,
                found,
                valid_after: count_valid_frames(&bytes, 0, store_id) + later()?,
            });
            verify.logs.push(summary);
            break 'logs;
        }
        // The seal names the chain value at its offset: a record that fits the chain but
        // is not the one sealed (a misdirected or stale write) is caught there.
        let seal_mismatch = |pos: usize, before: usize, chain: u32| -> Option<String> {
            let (g, l) = sealed?;
            if g != generation || (pos as u64) < l || (pos as u64 > l && before as u64 >= l) {
                return None;
            }
            if pos as u64 > l {
                return Some(format!(
                    "a record from offset {before} to {pos}, across the sealed end {l}"
                ));
            }
            (chain != sealed_chain).then(|| {
                format!(
                    "checksum {chain:#010x} at the sealed end (the seal says {sealed_chain:#010x})"
                )
            })
        };
        if let Some(found) = seal_mismatch(LOG_HEADER, LOG_HEADER, chain) {
            verify.corruption = Some(StoreError::Corrupt {
                file: path.clone(),
                offset: LOG_HEADER as u64,
                expected: "the sealed chain".into(),
                found,
                valid_after: count_valid_frames(&bytes, 0, store_id) + later()?,
            });
            verify.logs.push(summary);
            break 'logs;
        }
        let mut pos = LOG_HEADER;
        while pos < bytes.len() {
            let bad = match decode_frame(&bytes[pos..], store_id) {
                Ok(f) if f.seq == seq && f.prev == chain => {
                    if let Some(found) = seal_mismatch(pos + f.len, pos, f.crc) {
                        Some(found)
                    } else {
                        skipped_writes += table.apply(f.record);
                        summary.records += 1;
                        seq += 1;
                        chain = f.crc;
                        pos += f.len;
                        continue;
                    }
                }
                Ok(f) => Some(format!(
                    "a well-formed record {} after checksum {:#010x}, out of the chain (stale, or from another log)",
                    f.seq, f.prev
                )),
                Err(FrameError::Decode(why)) => Some(FrameError::Decode(why).to_string()),
                Err(why) => {
                    let valid_after = count_valid_frames(&bytes, pos + 1, store_id) + later()?;
                    if valid_after == 0 && is_last && !below_seal(pos as u64) {
                        verify.torn_tail = Some(TornTail {
                            generation,
                            offset: pos as u64,
                            bytes: len - pos as u64,
                            why: why.to_string(),
                        });
                        None
                    } else {
                        let mut found = why.to_string();
                        if valid_after == 0 {
                            found.push_str(if is_last {
                                " before the sealed end of the log"
                            } else {
                                " in a log that later logs follow"
                            });
                        }
                        verify.corruption = Some(StoreError::Corrupt {
                            file: path.clone(),
                            offset: pos as u64,
                            expected: format!("record {seq} after checksum {chain:#010x}"),
                            found,
                            valid_after,
                        });
                        None
                    }
                }
            };
            if let Some(found) = bad {
                verify.corruption = Some(StoreError::Corrupt {
                    file: path.clone(),
                    offset: pos as u64,
                    expected: format!("record {seq} after checksum {chain:#010x}"),
                    found,
                    valid_after: count_valid_frames(&bytes, pos + 1, store_id) + later()?,
                });
            }
            log_bytes += pos as u64;
            verify.logs.push(summary);
            break 'logs;
        }
        log_bytes += pos as u64;
        verify.logs.push(summary);
        if let Some((g, l)) = sealed
            && g == generation
            && len < l
        {
            verify.corruption = Some(StoreError::Corrupt {
                file: path.clone(),
                offset: len,
                expected: format!("records up to offset {l} (sealed as durable)"),
                found: "the end of the file: the log was shortened".into(),
                valid_after: later()?,
            });
            break;
        }
    }
    if verify.corruption.is_none()
        && let Some((g, l)) = sealed
        && last_gen.is_none_or(|last| g > last)
        && l > LOG_HEADER as u64
    {
        verify.corruption = Some(StoreError::Corrupt {
            file: dir.join(files::log_name(g)),
            offset: 0,
            expected: format!("{l} bytes of log (sealed as durable)"),
            found: "no such log".into(),
            valid_after: 0,
        });
    }
    if verify.corruption.is_none()
        && last_gen.is_none()
        && let Some(c) = &verify.checkpoint
    {
        verify.corruption = Some(StoreError::Corrupt {
            file: dir.join(files::log_name(c.log_gen)),
            offset: 0,
            expected: "the log that the checkpoint names".into(),
            found: "no such log".into(),
            valid_after: 0,
        });
    }
    verify.records = verify.logs.iter().map(|l| l.records).sum();
    Ok(Scan {
        verify,
        store_id,
        table,
        next_record: seq,
        chain,
        first_gen,
        stale,
        skipped_writes,
        log_bytes,
    })
}

/// Recovers the durable state in `dir` (which the caller has locked): refuses corruption,
/// cuts a torn tail, removes stale logs and leftovers.
pub(crate) fn recover(dir: &Path) -> Result<Recovery, StoreError> {
    remove_if_present(&dir.join(EPOCH_TMP))?;
    remove_if_present(&dir.join(CHECKPOINT_TMP))?;
    let s = scan(dir)?;
    if let Some(err) = s.verify.corruption {
        return Err(err);
    }
    for path in &s.stale {
        info!(log = %path.display(), "removing a log older than the checkpoint");
        remove_if_present(path)?;
    }
    let mut report = RecoveryReport {
        checkpoint_regions: s.verify.checkpoint.as_ref().map_or(0, |c| c.regions),
        log_records: s.verify.records,
        log_bytes: s.log_bytes,
        skipped_writes: s.skipped_writes,
        ..RecoveryReport::default()
    };
    let (active_gen, mut active_len) = match s.verify.logs.last() {
        Some(l) => (l.generation, l.bytes),
        None => (s.first_gen, 0),
    };
    if let Some(t) = &s.verify.torn_tail {
        let path = dir.join(files::log_name(t.generation));
        warn!(
            log = %path.display(),
            offset = t.offset,
            cut_bytes = t.bytes,
            why = %t.why,
            "cutting a torn tail: nothing valid follows it, and it is past the sealed end"
        );
        // A torn header (offset 0) leaves an empty file, which open rewrites.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| {
                f.set_len(t.offset)?;
                f.sync_all()
            })
            .map_err(io_err("truncating a log"))?;
        active_len = t.offset;
        report.cut_bytes = t.bytes;
        report.cut_at = Some((t.generation, t.offset));
    } else if active_len > 0 {
        // What a previous run wrote may still be only in the page cache: the seal written
        // next must not cover bytes that are not durable.
        File::open(dir.join(files::log_name(active_gen)))
            .and_then(|f| f.sync_all())
            .map_err(io_err("syncing the log"))?;
    }
    if report.cut_bytes > 0 || !s.stale.is_empty() {
        files::sync_dir(dir)?;
    }
    Ok(Recovery {
        epoch: s.verify.epoch,
        store_id: s.store_id,
        table: s.table,
        active_gen,
        active_len,
        next_record: s.next_record,
        chain: s.chain,
        report,
    })
}

/// See [`super::verify`].
pub(crate) fn verify(dir: &Path) -> Result<VerifyReport, StoreError> {
    if !dir.is_dir() {
        return Err(StoreError::Io {
            what: "opening the store directory",
            source: io::Error::new(io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let _lock = files::lock_dir(dir)?;
    match scan(dir) {
        Ok(s) => Ok(s.verify),
        Err(err @ StoreError::Corrupt { .. }) => Ok(VerifyReport {
            corruption: Some(err),
            ..VerifyReport::default()
        }),
        Err(err) => Err(err),
    }
}

/// See [`super::repair_cut`].
pub(crate) fn repair_cut(
    dir: &Path,
    generation: u64,
    offset: u64,
) -> Result<RepairReport, StoreError> {
    let start = Instant::now();
    let _lock = files::lock_dir(dir)?;
    let refuse = |why: String| StoreError::Repair { why };
    let Some(epoch) = files::read_epoch(dir)? else {
        return Err(refuse(format!(
            "{} has no epoch file: not a store",
            dir.display()
        )));
    };
    let logs = files::list_logs(dir)?;
    let Some(path) = logs.get(&generation).cloned() else {
        return Err(refuse(format!(
            "there is no {}",
            files::log_name(generation)
        )));
    };
    let bytes = fs::read(&path).map_err(io_err("reading a log"))?;
    if (offset as usize) < LOG_HEADER || offset > bytes.len() as u64 {
        return Err(refuse(format!(
            "offset {offset} is outside the records of {} ({LOG_HEADER}..={})",
            path.display(),
            bytes.len()
        )));
    }
    let header = LogHeader::decode(&bytes).map_err(|why| {
        refuse(format!(
            "{} has no valid header (expected {why}): it cannot be cut",
            path.display()
        ))
    })?;
    // The cut must fall on a record boundary with only valid records before it.
    let mut pos = LOG_HEADER;
    let mut chain = header.prev;
    while pos < offset as usize {
        match check_frame(&bytes[pos..], epoch.store_id) {
            Ok((n, _, _, crc)) => {
                pos += n;
                chain = crc;
            }
            Err(why) => {
                return Err(refuse(format!(
                    "the record at offset {pos} of {} is bad ({why}): cut there, not after it",
                    path.display()
                )));
            }
        }
    }
    if pos != offset as usize {
        return Err(refuse(format!(
            "offset {offset} is inside a record of {}: the record boundaries around it are {} and {pos}",
            path.display(),
            pos - check_prev_len(&bytes, offset as usize, epoch.store_id)
        )));
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let backup = dir.join(format!("cut-{generation}-{offset}-{stamp}"));
    fs::create_dir_all(&backup).map_err(io_err("creating the repair backup directory"))?;
    let save = |name: String, data: &[u8]| -> Result<(), StoreError> {
        let mut f = File::create(backup.join(name)).map_err(io_err("writing the repair backup"))?;
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .map_err(io_err("writing the repair backup"))
    };
    save(
        format!("{}.from-{offset}", files::log_name(generation)),
        &bytes[offset as usize..],
    )?;
    let mut cut_bytes = bytes.len() as u64 - offset;
    let mut removed = Vec::new();
    for (&g, p) in logs.range(generation + 1..) {
        let data = fs::read(p).map_err(io_err("reading a log"))?;
        save(files::log_name(g), &data)?;
        cut_bytes += data.len() as u64;
        removed.push(g);
    }
    files::sync_dir(&backup)?;
    files::sync_dir(dir)?;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| {
            f.set_len(offset)?;
            f.sync_all()
        })
        .map_err(io_err("truncating a log"))?;
    for g in &removed {
        remove_if_present(&dir.join(files::log_name(*g)))?;
    }
    files::sync_dir(dir)?;
    if (epoch.sealed_gen, epoch.sealed_len) > (generation, offset) {
        files::write_epoch(
            dir,
            &EpochFile {
                sealed_gen: generation,
                sealed_len: offset,
                sealed_chain: chain,
                ..epoch
            },
        )?;
    }
    let report = RepairReport {
        generation,
        offset,
        cut_bytes,
        removed_logs: removed,
        backup,
    };
    warn!(
        dir = %dir.display(),
        generation,
        offset,
        cut_bytes,
        backup = %report.backup.display(),
        elapsed = ?start.elapsed(),
        "log repaired: cut by the operator"
    );
    Ok(report)
}

/// The length of the record that ends at or contains `offset`, for error messages.
fn check_prev_len(bytes: &[u8], offset: usize, store_id: u64) -> usize {
    let mut pos = LOG_HEADER;
    while let Ok((n, ..)) = check_frame(&bytes[pos..], store_id) {
        if pos + n >= offset {
            return n;
        }
        pos += n;
    }
    0
}
