//! The store's files: names, the directory lock, reading and writing the epoch file and the
//! checkpoint (their bytes are `crl_core::wal`'s).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crl_core::wal::{
    CHECKPOINT_HEADER, Checkpoint, DurableState, EpochFile, FormatError, LogHeader,
    write_checkpoint_payload,
};

use super::StoreError;

pub(crate) const LOCK_FILE: &str = "lock";
pub(crate) const EPOCH_FILE: &str = "epoch";
pub(crate) const EPOCH_TMP: &str = "epoch.tmp";
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";
pub(crate) const CHECKPOINT_TMP: &str = "checkpoint.tmp";
const LOG_PREFIX: &str = "log.";

/// The file name of log generation `generation`.
pub(crate) fn log_name(generation: u64) -> String {
    format!("{LOG_PREFIX}{generation:020}")
}

/// The generation of a log file name, if it is one.
pub(crate) fn parse_log_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(LOG_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The logs in `dir`, by generation.
pub(crate) fn list_logs(dir: &Path) -> Result<BTreeMap<u64, PathBuf>, StoreError> {
    let mut logs = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(StoreError::io("listing the store directory"))? {
        let entry = entry.map_err(StoreError::io("listing the store directory"))?;
        if let Some(generation) = entry.file_name().to_str().and_then(parse_log_name) {
            logs.insert(generation, entry.path());
        }
    }
    Ok(logs)
}

/// How many times [`lock_dir`] tries a lock that someone else holds, pausing 1, 2, 4, …
/// ms (at most [`LOCK_PAUSE_MAX`]) between tries: about 2 s in all, counted in tries (the
/// core reads no clock). A closed store's lock can outlive it for a moment: a process forked
/// anywhere in the program (`Command::spawn`) inherits every open file description until it
/// execs, the lock's too. A store that is really open elsewhere holds it for longer and is
/// refused with [`StoreError::Locked`].
pub(crate) const LOCK_TRIES: u32 = 46;

/// The longest pause between two tries of [`lock_dir`].
pub(crate) const LOCK_PAUSE_MAX: Duration = Duration::from_millis(50);

/// Takes the directory's lock (released when the returned file is closed), trying up to
/// [`LOCK_TRIES`] times for a holder that is about to let go.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(StoreError::io("opening the store's lock file"))?;
    let mut pause = Duration::from_millis(1);
    for _ in 1..LOCK_TRIES {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(LOCK_PAUSE_MAX);
            }
            Err(fs::TryLockError::Error(e)) => return Err(lock_error(e)),
        }
    }
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(lock_error(e)),
    }
}

fn lock_error(source: io::Error) -> StoreError {
    StoreError::Io {
        what: "locking the store directory",
        source,
    }
}

/// Fsyncs the directory, making creations, renames and removals in it durable.
#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("syncing the store directory"))
}

/// Does nothing: outside Unix a directory cannot be opened as a file to be fsynced (on
/// Windows, `File::open` of a directory fails), so the durability of creations, renames and
/// removals rests on the file system's own metadata journal (NTFS).
#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Opens log `generation` for appending.
pub(crate) fn open_log(dir: &Path, generation: u64) -> Result<File, StoreError> {
    OpenOptions::new()
        .append(true)
        .open(dir.join(log_name(generation)))
        .map_err(StoreError::io("opening the log"))
}

/// Creates log `generation` (truncating any file of that name) with its header, fsynced,
/// open for appending. The caller fsyncs the directory.
pub(crate) fn create_log(dir: &Path, header: &LogHeader) -> Result<File, StoreError> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join(log_name(header.generation)))
        .map_err(StoreError::io("creating a log"))?;
    file.write_all(&header.encode())
        .and_then(|()| file.sync_all())
        .map_err(StoreError::io("writing a log header"))?;
    Ok(file)
}

/// Writes `bytes` to `tmp`, fsyncs it, renames it to `name`, fsyncs the directory.
fn replace_file(dir: &Path, tmp: &str, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp_path = dir.join(tmp);
    let mut f = File::create(&tmp_path).map_err(StoreError::io("creating a temporary file"))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(StoreError::io("writing a temporary file"))?;
    drop(f);
    fs::rename(&tmp_path, dir.join(name)).map_err(StoreError::io("renaming a temporary file"))?;
    sync_dir(dir)
}

pub(crate) fn corrupt(
    file: PathBuf,
    offset: u64,
    expected: impl Into<String>,
    found: impl Into<String>,
) -> StoreError {
    StoreError::Corrupt {
        file,
        offset,
        expected: expected.into(),
        found: found.into(),
        valid_after: 0,
    }
}

/// Reads and decodes the file `name` of `dir` with `decode`: `None` if there is none,
/// `Corrupt` unless it is entirely valid.
fn read_decoded<T>(
    dir: &Path,
    name: &str,
    what: &'static str,
    decode: impl FnOnce(&[u8]) -> Result<T, FormatError>,
) -> Result<Option<T>, StoreError> {
    let path = dir.join(name);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { what, source }),
    };
    decode(&bytes).map(Some).map_err(|e| format_error(path, e))
}

/// Reads the epoch file: `None` if there is none.
pub(crate) fn read_epoch(dir: &Path) -> Result<Option<EpochFile>, StoreError> {
    read_decoded(dir, EPOCH_FILE, "reading the epoch file", EpochFile::decode)
}

/// Persists the epoch file (temporary file, fsync, rename, directory fsync).
pub(crate) fn write_epoch(dir: &Path, e: &EpochFile) -> Result<(), StoreError> {
    replace_file(dir, EPOCH_TMP, EPOCH_FILE, &e.encode())
}

/// A fresh random store id (never 0): hashes the time, the process id and a per-process
/// random seed.
pub(crate) fn new_store_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// Writes a checkpoint of `state` (temporary file, fsync, rename, directory fsync).
pub(crate) fn write_checkpoint(
    dir: &Path,
    state: &DurableState,
    epoch: u64,
    next: &LogHeader,
) -> Result<(), StoreError> {
    let tmp_path = dir.join(CHECKPOINT_TMP);
    let file = File::create(&tmp_path).map_err(StoreError::io("creating the checkpoint file"))?;
    let write = || -> io::Result<File> {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&[0; CHECKPOINT_HEADER])?;
        let header = write_checkpoint_payload(&mut w, state, epoch, next)?;
        let mut file = w.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&header)?;
        file.sync_all()?;
        Ok(file)
    };
    drop(write().map_err(StoreError::io("writing the checkpoint"))?);
    fs::rename(&tmp_path, dir.join(CHECKPOINT_FILE))
        .map_err(StoreError::io("renaming the checkpoint"))?;
    sync_dir(dir)
}

/// Reads the checkpoint: `None` if there is none; `Corrupt` unless it is entirely valid.
pub(crate) fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>, StoreError> {
    read_decoded(
        dir,
        CHECKPOINT_FILE,
        "reading the checkpoint",
        Checkpoint::decode,
    )
}

/// A format error in `file` as [`StoreError::Corrupt`].
pub(crate) fn format_error(file: PathBuf, e: FormatError) -> StoreError {
    corrupt(file, e.offset, e.expected, e.found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_names_roundtrip_and_sort() {
        assert_eq!(parse_log_name(&log_name(7)), Some(7));
        assert_eq!(parse_log_name(&log_name(u64::MAX)), Some(u64::MAX));
        assert!(log_name(9) < log_name(10));
        for bad in ["log.", "log.-1", "log.1a", "log.+1", "logx1", "log.1.tmp"] {
            assert_eq!(parse_log_name(bad), None, "{bad}");
        }
    }
}
