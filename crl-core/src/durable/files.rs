//! The store's files: names, the directory lock, the epoch file and the checkpoint.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::codec::{Dec, DecodeError, Enc, FORMAT_VERSION, LogHeader};
use super::table::{MIN_NEXT_SEQ, Table};
use super::{InDoubt, StoreError, StoredRegion};
use crate::region::NodeId;

pub(crate) const LOCK_FILE: &str = "lock";
pub(crate) const EPOCH_FILE: &str = "epoch";
pub(crate) const EPOCH_TMP: &str = "epoch.tmp";
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";
pub(crate) const CHECKPOINT_TMP: &str = "checkpoint.tmp";
const LOG_PREFIX: &str = "log.";

const EPOCH_MAGIC: [u8; 4] = *b"CRLE";
const EPOCH_LEN: usize = 48;
const CHECKPOINT_MAGIC: [u8; 4] = *b"CRLK";
const CHECKPOINT_HEADER: usize = 20;

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

/// The epoch file: the node's epoch, the store's random id, and the seal: a log position up
/// to which every byte is known to be durable (written and synced, and verified by a
/// recovery or written before a clean close), so a bad record before it is corruption, never
/// a torn tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EpochFile {
    pub(crate) epoch: u64,
    pub(crate) store_id: u64,
    /// The sealed log generation.
    pub(crate) sealed_gen: u64,
    /// The sealed length of that log.
    pub(crate) sealed_len: u64,
    /// The checksum of the record that ends there (the chain value at the seal).
    pub(crate) sealed_chain: u32,
}

/// Reads the epoch file: `None` if there is none.
pub(crate) fn read_epoch(dir: &Path) -> Result<Option<EpochFile>, StoreError> {
    let path = dir.join(EPOCH_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Io {
                what: "reading the epoch file",
                source: e,
            });
        }
    };
    if bytes.len() >= 8 && bytes[0..4] == EPOCH_MAGIC {
        // A store of another format version is named as such, whatever its length.
        let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(corrupt(
                path,
                4,
                format!("format version {FORMAT_VERSION}"),
                format!("version {version} (this release reads only version {FORMAT_VERSION})"),
            ));
        }
    }
    if bytes.len() != EPOCH_LEN {
        return Err(corrupt(
            path,
            0,
            format!("{EPOCH_LEN} bytes"),
            format!("{} bytes", bytes.len()),
        ));
    }
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..44]) != u32_at(44) {
        return Err(corrupt(path, 44, "the epoch file's checksum", "a mismatch"));
    }
    if bytes[0..4] != EPOCH_MAGIC {
        return Err(corrupt(path, 0, "magic CRLE", "another magic"));
    }
    let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(corrupt(
            path,
            4,
            format!("format version {FORMAT_VERSION}"),
            format!("version {version}"),
        ));
    }
    Ok(Some(EpochFile {
        epoch: u64_at(8),
        store_id: u64_at(16),
        sealed_gen: u64_at(24),
        sealed_len: u64_at(32),
        sealed_chain: u32_at(40),
    }))
}

/// Persists the epoch file (temporary file, fsync, rename, directory fsync).
pub(crate) fn write_epoch(dir: &Path, e: &EpochFile) -> Result<(), StoreError> {
    let mut bytes = Vec::with_capacity(EPOCH_LEN);
    bytes.extend_from_slice(&EPOCH_MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    for v in [e.epoch, e.store_id, e.sealed_gen, e.sealed_len] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes.extend_from_slice(&e.sealed_chain.to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    replace_file(dir, EPOCH_TMP, EPOCH_FILE, &bytes)
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

/// A loaded checkpoint.
pub(crate) struct Checkpoint {
    pub(crate) epoch: u64,
    /// The first log generation after the checkpoint.
    pub(crate) log_gen: u64,
    /// The store that wrote it.
    pub(crate) store_id: u64,
    /// The sequence number of the first record of `log_gen`.
    pub(crate) first_seq: u64,
    /// The checksum of the last record before `log_gen` (the chain).
    pub(crate) prev: u32,
    pub(crate) table: Table,
}

/// Counts and checksums what is written through it.
struct CrcWriter<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> CrcWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        self.inner.write_all(bytes)
    }
}

/// Writes a checkpoint of `table` (temporary file, fsync, rename, directory fsync).
pub(crate) fn write_checkpoint(
    dir: &Path,
    table: &Table,
    epoch: u64,
    next: &LogHeader,
) -> Result<(), StoreError> {
    let tmp_path = dir.join(CHECKPOINT_TMP);
    let file = File::create(&tmp_path).map_err(StoreError::io("creating the checkpoint file"))?;
    let write = || -> io::Result<File> {
        let mut w = CrcWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: crc32fast::Hasher::new(),
            len: 0,
        };
        w.inner.write_all(&[0; CHECKPOINT_HEADER])?;
        let mut scratch = Vec::with_capacity(1 << 16);
        let mut e = Enc(&mut scratch);
        e.u64(epoch);
        e.u64(next.generation);
        e.u64(table.next_seq);
        e.u64(next.store_id);
        e.u64(next.first_seq);
        e.u32(next.prev);
        e.u64(table.regions.len() as u64);
        w.put(&scratch)?;
        for r in table.regions.values() {
            scratch.clear();
            let mut e = Enc(&mut scratch);
            e.region(r.region);
            e.u64(r.fingerprint);
            e.bytes(r.type_name.as_bytes());
            e.bytes(&r.bytes);
            w.put(&scratch)?;
        }
        scratch.clear();
        Enc(&mut scratch).u64(table.in_doubt.len() as u64);
        w.put(&scratch)?;
        for t in table.in_doubt.values() {
            scratch.clear();
            let mut e = Enc(&mut scratch);
            e.u64(t.txid);
            e.u32(t.coordinator.0);
            e.writes(&t.writes);
            e.regions(&t.deletes);
            w.put(&scratch)?;
        }
        scratch.clear();
        Enc(&mut scratch).u64(table.coordinating.len() as u64);
        w.put(&scratch)?;
        for (&txid, participants) in &table.coordinating {
            scratch.clear();
            let mut e = Enc(&mut scratch);
            e.u64(txid);
            e.nodes(participants);
            w.put(&scratch)?;
        }
        let mut header = Vec::with_capacity(CHECKPOINT_HEADER);
        header.extend_from_slice(&CHECKPOINT_MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&w.len.to_le_bytes());
        header.extend_from_slice(&w.hasher.finalize().to_le_bytes());
        let mut file = w.inner.into_inner().map_err(|e| e.into_error())?;
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
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Io {
                what: "reading the checkpoint",
                source: e,
            });
        }
    };
    let bad = |offset: u64, expected: String, found: String| {
        corrupt(path.clone(), offset, expected, found)
    };
    if bytes.len() < CHECKPOINT_HEADER {
        return Err(bad(
            0,
            format!("a header of {CHECKPOINT_HEADER} bytes"),
            format!("{} bytes", bytes.len()),
        ));
    }
    if bytes[0..4] != CHECKPOINT_MAGIC {
        return Err(bad(0, "magic CRLK".into(), "another magic".into()));
    }
    let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(bad(
            4,
            format!("format version {FORMAT_VERSION}"),
            format!("version {version}"),
        ));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let payload = &bytes[CHECKPOINT_HEADER..];
    if len != payload.len() as u64 {
        return Err(bad(
            8,
            format!("a payload of {len} bytes (the header's length)"),
            format!("{} bytes", payload.len()),
        ));
    }
    if crc32fast::hash(payload) != crc {
        return Err(bad(
            16,
            "the payload's checksum".into(),
            "a mismatch".into(),
        ));
    }
    decode_checkpoint(payload).map(Some).map_err(|why| {
        bad(
            CHECKPOINT_HEADER as u64,
            "a valid checkpoint payload".into(),
            why,
        )
    })
}

fn decode_checkpoint(payload: &[u8]) -> Result<Checkpoint, String> {
    let de = |DecodeError(why)| why.to_string();
    let mut d = Dec::new(payload);
    let epoch = d.u64().map_err(de)?;
    let log_gen = d.u64().map_err(de)?;
    let next_seq = d.u64().map_err(de)?;
    let store_id = d.u64().map_err(de)?;
    let first_seq = d.u64().map_err(de)?;
    let prev = d.u32().map_err(de)?;
    if log_gen == 0 {
        return Err("log generation 0".into());
    }
    if next_seq < MIN_NEXT_SEQ {
        return Err(format!("next_seq {next_seq} below {MIN_NEXT_SEQ}"));
    }
    let mut table = Table {
        next_seq,
        ..Table::default()
    };
    let n = d.count64(12 + 8 + 4 + 4).map_err(de)?;
    table.regions.reserve(n);
    for _ in 0..n {
        let region = d.region().map_err(de)?;
        let fingerprint = d.u64().map_err(de)?;
        let type_name = d.string().map_err(de)?;
        let bytes = d.bytes().map_err(de)?.to_vec();
        // `next_seq` saturates at u64::MAX (see Table::apply).
        if region.seq.saturating_add(1) > next_seq {
            return Err(format!("region {region} not below next_seq {next_seq}"));
        }
        let r = StoredRegion {
            region,
            fingerprint,
            type_name,
            bytes,
        };
        if table.regions.insert(region, r).is_some() {
            return Err(format!("region {region} appears twice"));
        }
    }
    let n = d.count64(8 + 4 + 4 + 4).map_err(de)?;
    for _ in 0..n {
        let txid = d.u64().map_err(de)?;
        let coordinator = NodeId(d.u32().map_err(de)?);
        let writes = d.writes().map_err(de)?;
        let deletes = d.regions().map_err(de)?;
        let t = InDoubt {
            txid,
            coordinator,
            writes,
            deletes,
        };
        if table.in_doubt.insert(txid, t).is_some() {
            return Err(format!("in-doubt transaction {txid} appears twice"));
        }
    }
    let n = d.count64(8 + 4).map_err(de)?;
    for _ in 0..n {
        let txid = d.u64().map_err(de)?;
        let participants = d.nodes().map_err(de)?;
        if table.coordinating.insert(txid, participants).is_some() {
            return Err(format!("coordinated transaction {txid} appears twice"));
        }
    }
    if d.remaining() != 0 {
        return Err(format!("{} trailing bytes", d.remaining()));
    }
    Ok(Checkpoint {
        epoch,
        log_gen,
        store_id,
        first_seq,
        prev,
        table,
    })
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
