//! The epoch file and the checkpoint: their bytes, encoded and decoded with every field
//! checked (see the [module docs](super) for the layouts). Reading and writing the files is
//! the store's (in crl-net); this is only the format.

use std::io::{self, Write};

use super::codec::{Dec, DecodeError, Enc, FORMAT_VERSION, LogHeader};
use super::state::{DurableState, MIN_NEXT_SEQ};
use super::{InDoubt, StoredRegion};
use crate::region::NodeId;

const EPOCH_MAGIC: [u8; 4] = *b"CRLE";
/// The size of an epoch file.
pub const EPOCH_LEN: usize = 48;
const CHECKPOINT_MAGIC: [u8; 4] = *b"CRLK";
/// The size of a checkpoint's header (magic, version, payload length, payload checksum).
pub const CHECKPOINT_HEADER: usize = 20;

/// Where a file's bytes break the format, and how: the store names the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at offset {offset}: expected {expected}, found {found}")]
pub struct FormatError {
    /// The offset in the file.
    pub offset: u64,
    /// What should be there.
    pub expected: String,
    /// What is there.
    pub found: String,
}

fn bad(offset: u64, expected: impl Into<String>, found: impl Into<String>) -> FormatError {
    FormatError {
        offset,
        expected: expected.into(),
        found: found.into(),
    }
}

/// The epoch file: the node's epoch, the store's random id, and the seal: a log position up
/// to which every byte is known to be durable (written and synced, and verified by a
/// recovery or written before a clean close), so a bad record before it is corruption, never
/// a torn tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochFile {
    /// The epoch of the last open.
    pub epoch: u64,
    /// The store's random id.
    pub store_id: u64,
    /// The sealed log generation.
    pub sealed_gen: u64,
    /// The sealed length of that log.
    pub sealed_len: u64,
    /// The checksum of the record that ends there (the chain value at the seal).
    pub sealed_chain: u32,
}

impl EpochFile {
    /// The file's bytes.
    pub fn encode(&self) -> [u8; EPOCH_LEN] {
        let mut b = [0; EPOCH_LEN];
        b[0..4].copy_from_slice(&EPOCH_MAGIC);
        b[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        for (i, v) in [self.epoch, self.store_id, self.sealed_gen, self.sealed_len]
            .into_iter()
            .enumerate()
        {
            b[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        b[40..44].copy_from_slice(&self.sealed_chain.to_le_bytes());
        let crc = crc32fast::hash(&b[..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes an epoch file, refusing anything not entirely valid. A file of another format
    /// version is named as such, whatever its length.
    pub fn decode(bytes: &[u8]) -> Result<EpochFile, FormatError> {
        if bytes.len() >= 8 && bytes[0..4] == EPOCH_MAGIC {
            let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
            if version != FORMAT_VERSION {
                return Err(bad(
                    4,
                    format!("format version {FORMAT_VERSION}"),
                    format!("version {version} (this release reads only version {FORMAT_VERSION})"),
                ));
            }
        }
        if bytes.len() != EPOCH_LEN {
            return Err(bad(
                0,
                format!("{EPOCH_LEN} bytes"),
                format!("{} bytes", bytes.len()),
            ));
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        if crc32fast::hash(&bytes[..44]) != u32_at(44) {
            return Err(bad(44, "the epoch file's checksum", "a mismatch"));
        }
        if bytes[0..4] != EPOCH_MAGIC {
            return Err(bad(0, "magic CRLE", "another magic"));
        }
        let version = u32_at(4);
        if version != FORMAT_VERSION {
            return Err(bad(
                4,
                format!("format version {FORMAT_VERSION}"),
                format!("version {version}"),
            ));
        }
        Ok(EpochFile {
            epoch: u64_at(8),
            store_id: u64_at(16),
            sealed_gen: u64_at(24),
            sealed_len: u64_at(32),
            sealed_chain: u32_at(40),
        })
    }
}

/// A checkpoint: the durable state as of the start of log `log_gen`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The epoch of the store that wrote it.
    pub epoch: u64,
    /// The first log generation after the checkpoint.
    pub log_gen: u64,
    /// The store that wrote it.
    pub store_id: u64,
    /// The sequence number of the first record of `log_gen`.
    pub first_seq: u64,
    /// The checksum of the last record before `log_gen` (the chain).
    pub prev: u32,
    /// The durable state.
    pub state: DurableState,
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

/// Streams a checkpoint's payload of `state` (epoch `epoch`, followed by the log that `next`
/// starts) into `out`, one region at a time (a checkpoint is never built whole in memory),
/// and returns its header: write the header at the file's start, before the payload (the
/// caller leaves [`CHECKPOINT_HEADER`] bytes for it).
pub fn write_checkpoint_payload<W: Write>(
    out: W,
    state: &DurableState,
    epoch: u64,
    next: &LogHeader,
) -> io::Result<[u8; CHECKPOINT_HEADER]> {
    let mut w = CrcWriter {
        inner: out,
        hasher: crc32fast::Hasher::new(),
        len: 0,
    };
    let mut scratch = Vec::with_capacity(1 << 16);
    let mut e = Enc(&mut scratch);
    e.u64(epoch);
    e.u64(next.generation);
    e.u64(state.next_seq);
    e.u64(next.store_id);
    e.u64(next.first_seq);
    e.u32(next.prev);
    e.u64(state.regions.len() as u64);
    w.put(&scratch)?;
    for r in state.regions.values() {
        scratch.clear();
        let mut e = Enc(&mut scratch);
        e.region(r.region);
        e.u64(r.fingerprint);
        e.bytes(r.type_name.as_bytes());
        e.bytes(&r.bytes);
        w.put(&scratch)?;
    }
    scratch.clear();
    Enc(&mut scratch).u64(state.in_doubt.len() as u64);
    w.put(&scratch)?;
    for t in state.in_doubt.values() {
        scratch.clear();
        let mut e = Enc(&mut scratch);
        e.u64(t.txid);
        e.u32(t.coordinator.0);
        e.writes(&t.writes);
        e.regions(&t.deletes);
        w.put(&scratch)?;
    }
    scratch.clear();
    Enc(&mut scratch).u64(state.coordinating.len() as u64);
    w.put(&scratch)?;
    for (&txid, participants) in &state.coordinating {
        scratch.clear();
        let mut e = Enc(&mut scratch);
        e.u64(txid);
        e.nodes(participants);
        w.put(&scratch)?;
    }
    let mut header = [0; CHECKPOINT_HEADER];
    header[0..4].copy_from_slice(&CHECKPOINT_MAGIC);
    header[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&w.len.to_le_bytes());
    header[16..20].copy_from_slice(&w.hasher.finalize().to_le_bytes());
    Ok(header)
}

impl Checkpoint {
    /// Decodes a whole checkpoint file (header and payload), refusing anything not entirely
    /// valid.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, FormatError> {
        if bytes.len() < CHECKPOINT_HEADER {
            return Err(bad(
                0,
                format!("a header of {CHECKPOINT_HEADER} bytes"),
                format!("{} bytes", bytes.len()),
            ));
        }
        if bytes[0..4] != CHECKPOINT_MAGIC {
            return Err(bad(0, "magic CRLK", "another magic"));
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
            return Err(bad(16, "the payload's checksum", "a mismatch"));
        }
        decode_payload(payload)
            .map_err(|why| bad(CHECKPOINT_HEADER as u64, "a valid checkpoint payload", why))
    }
}

fn decode_payload(payload: &[u8]) -> Result<Checkpoint, String> {
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
    let mut state = DurableState {
        next_seq,
        ..DurableState::default()
    };
    let n = d.count64(12 + 8 + 4 + 4).map_err(de)?;
    state.regions.reserve(n);
    for _ in 0..n {
        let region = d.region().map_err(de)?;
        let fingerprint = d.u64().map_err(de)?;
        let type_name = d.string().map_err(de)?;
        let bytes = d.bytes().map_err(de)?.to_vec();
        // `next_seq` saturates at u64::MAX (see DurableState::apply).
        if region.seq.saturating_add(1) > next_seq {
            return Err(format!("region {region} not below next_seq {next_seq}"));
        }
        let r = StoredRegion {
            region,
            fingerprint,
            type_name,
            bytes,
        };
        if state.regions.insert(region, r).is_some() {
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
        if state.in_doubt.insert(txid, t).is_some() {
            return Err(format!("in-doubt transaction {txid} appears twice"));
        }
    }
    let n = d.count64(8 + 4).map_err(de)?;
    for _ in 0..n {
        let txid = d.u64().map_err(de)?;
        let participants = d.nodes().map_err(de)?;
        if state.coordinating.insert(txid, participants).is_some() {
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
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::RegionId;

    #[test]
    fn epoch_file_round_trips_and_refuses_any_flipped_bit() {
        let e = EpochFile {
            epoch: 7,
            store_id: 0x1234_5678_9abc_def0,
            sealed_gen: 3,
            sealed_len: 4096,
            sealed_chain: 0xdead_beef,
        };
        let bytes = e.encode();
        assert_eq!(EpochFile::decode(&bytes), Ok(e));
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                EpochFile::decode(&b).is_err(),
                "bit {bit} flipped was accepted"
            );
        }
        assert!(EpochFile::decode(&bytes[..40]).is_err());
    }

    #[test]
    fn checkpoint_round_trips_and_refuses_any_flipped_bit() {
        let mut state = DurableState::default();
        let region = RegionId::new(NodeId(2), 5);
        state.apply(super::super::LogRecord::Create {
            region,
            fingerprint: 9,
            type_name: "T".into(),
            bytes: vec![1, 2, 3],
        });
        state.apply(super::super::LogRecord::Prepare {
            txid: 11,
            coordinator: NodeId(1),
            writes: vec![(region, vec![4])],
            deletes: vec![],
        });
        state.apply(super::super::LogRecord::Commit {
            txid: 12,
            writes: vec![],
            deletes: vec![],
            participants: vec![NodeId(3)],
        });
        let next = LogHeader {
            store_id: 77,
            generation: 4,
            first_seq: 100,
            prev: 0xabcd,
        };
        let mut bytes = vec![0; CHECKPOINT_HEADER];
        let header = write_checkpoint_payload(&mut bytes, &state, 6, &next).unwrap();
        bytes[..CHECKPOINT_HEADER].copy_from_slice(&header);
        let c = Checkpoint::decode(&bytes).unwrap();
        assert_eq!(
            (c.epoch, c.log_gen, c.store_id, c.first_seq, c.prev),
            (6, 4, 77, 100, 0xabcd)
        );
        assert_eq!(c.state, state);
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                Checkpoint::decode(&b).is_err(),
                "bit {bit} flipped was accepted"
            );
        }
    }
}
