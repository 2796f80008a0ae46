//! Encoding and validated decoding of log records and log file headers (and the fields
//! checkpoints share with them). Every length read from disk is checked against the bytes that remain before it is
//! used, so a corrupt input gives an error, never a panic or a huge allocation.

use super::{LogRecord, RecordTooLarge};
use crate::region::{NodeId, RegionId};

/// The largest payload of one log record: 64 MiB.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// Magic of a log frame: `b"CRLR"` (format version 2; version 1 used `b"CRLW"`).
pub const RECORD_MAGIC: [u8; 4] = *b"CRLR";
/// Size of a log frame's header: magic, payload length, sequence number, previous record's
/// checksum, payload checksum, header checksum.
pub const FRAME_HEADER: usize = 28;

/// Magic of a log file's header: `b"CRLL"`.
pub const LOG_MAGIC: [u8; 4] = *b"CRLL";
/// Size of a log file's header.
pub const LOG_HEADER: usize = 40;
/// The on-disk format version of log, checkpoint and epoch files.
pub const FORMAT_VERSION: u32 = 2;

const TAG_CREATE: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_COMMIT: u8 = 3;
const TAG_PREPARE: u8 = 4;
const TAG_DECIDE: u8 = 5;
const TAG_FORGET: u8 = 6;

const REGION_ID_LEN: usize = 12;

// ---------------------------------------------------------------------------------------------
// Encoding

/// Appends little-endian fields to a buffer.
pub(crate) struct Enc<'a>(pub &'a mut Vec<u8>);

impl Enc<'_> {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A length or count known to fit (checked by [`payload_len`] beforehand).
    fn len32(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.len32(b.len());
        self.0.extend_from_slice(b);
    }
    pub(crate) fn region(&mut self, r: RegionId) {
        self.u32(r.home.0);
        self.u64(r.seq);
    }
    pub(crate) fn writes(&mut self, writes: &[(RegionId, Vec<u8>)]) {
        self.len32(writes.len());
        for (r, b) in writes {
            self.region(*r);
            self.bytes(b);
        }
    }
    pub(crate) fn regions(&mut self, regions: &[RegionId]) {
        self.len32(regions.len());
        for r in regions {
            self.region(*r);
        }
    }
    pub(crate) fn nodes(&mut self, nodes: &[NodeId]) {
        self.len32(nodes.len());
        for n in nodes {
            self.u32(n.0);
        }
    }
}

fn writes_len(writes: &[(RegionId, Vec<u8>)]) -> usize {
    writes.iter().fold(4usize, |acc, (_, b)| {
        acc.saturating_add(REGION_ID_LEN + 4)
            .saturating_add(b.len())
    })
}

fn regions_len(regions: &[RegionId]) -> usize {
    4usize.saturating_add(regions.len().saturating_mul(REGION_ID_LEN))
}

/// The encoded payload size of `record` (saturating: a huge record gives a huge size).
pub fn payload_len(record: &LogRecord) -> usize {
    1 + match record {
        LogRecord::Create {
            type_name, bytes, ..
        } => (REGION_ID_LEN + 8 + 4 + 4)
            .saturating_add(type_name.len())
            .saturating_add(bytes.len()),
        LogRecord::Delete { .. } => REGION_ID_LEN,
        LogRecord::Commit {
            writes,
            deletes,
            participants,
            ..
        } => 8usize
            .saturating_add(writes_len(writes))
            .saturating_add(regions_len(deletes))
            .saturating_add(4usize.saturating_add(participants.len().saturating_mul(4))),
        LogRecord::Prepare {
            writes, deletes, ..
        } => 12usize
            .saturating_add(writes_len(writes))
            .saturating_add(regions_len(deletes)),
        LogRecord::Decide { .. } => 9,
        LogRecord::Forget { .. } => 8,
    }
}

fn encode_payload(record: &LogRecord, e: &mut Enc<'_>) {
    match record {
        LogRecord::Create {
            region,
            fingerprint,
            type_name,
            bytes,
        } => {
            e.u8(TAG_CREATE);
            e.region(*region);
            e.u64(*fingerprint);
            e.bytes(type_name.as_bytes());
            e.bytes(bytes);
        }
        LogRecord::Delete { region } => {
            e.u8(TAG_DELETE);
            e.region(*region);
        }
        LogRecord::Commit {
            txid,
            writes,
            deletes,
            participants,
        } => {
            e.u8(TAG_COMMIT);
            e.u64(*txid);
            e.writes(writes);
            e.regions(deletes);
            e.nodes(participants);
        }
        LogRecord::Prepare {
            txid,
            coordinator,
            writes,
            deletes,
        } => {
            e.u8(TAG_PREPARE);
            e.u64(*txid);
            e.u32(coordinator.0);
            e.writes(writes);
            e.regions(deletes);
        }
        LogRecord::Decide { txid, commit } => {
            e.u8(TAG_DECIDE);
            e.u64(*txid);
            e.u8(u8::from(*commit));
        }
        LogRecord::Forget { txid } => {
            e.u8(TAG_FORGET);
            e.u64(*txid);
        }
    }
}

/// Encodes `record` as one log frame appended to `out`: the payload and its checksum, with
/// the rest of the header left for [`seal_frame`] (which the writer thread calls, in log
/// order, once it knows the record's sequence number and the previous record's checksum).
pub fn encode_frame(record: &LogRecord, out: &mut Vec<u8>) -> Result<(), RecordTooLarge> {
    let len = payload_len(record);
    if len > MAX_RECORD_BYTES {
        return Err(RecordTooLarge {
            size: len,
            max: MAX_RECORD_BYTES,
        });
    }
    let start = out.len();
    out.reserve(FRAME_HEADER + len);
    out.extend_from_slice(&[0; FRAME_HEADER]);
    encode_payload(record, &mut Enc(out));
    let payload = &out[start + FRAME_HEADER..];
    debug_assert_eq!(payload.len(), len);
    let body_crc = crc32fast::hash(payload);
    let header = &mut out[start..start + FRAME_HEADER];
    header[0..4].copy_from_slice(&RECORD_MAGIC);
    header[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    header[20..24].copy_from_slice(&body_crc.to_le_bytes());
    Ok(())
}

/// The header checksum of a frame: CRC-32 of the store id and the header's first 24 bytes.
fn header_crc(store_id: u64, header: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&store_id.to_le_bytes());
    h.update(&header[..FRAME_HEADER - 4]);
    h.finalize()
}

/// Completes the header of a frame made by [`encode_frame`]: its sequence number, the
/// previous record's checksum (the chain) and the header checksum, which it returns (the next
/// record's `prev`).
pub fn seal_frame(frame: &mut [u8], store_id: u64, seq: u64, prev: u32) -> u32 {
    frame[8..16].copy_from_slice(&seq.to_le_bytes());
    frame[16..20].copy_from_slice(&prev.to_le_bytes());
    let crc = header_crc(store_id, frame);
    frame[24..28].copy_from_slice(&crc.to_le_bytes());
    crc
}

/// A log file's header: which store and generation it belongs to, and where its chain starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogHeader {
    /// The random id of the store (data directory) that wrote it.
    pub store_id: u64,
    /// Its generation.
    pub generation: u64,
    /// The sequence number of its first record.
    pub first_seq: u64,
    /// The checksum of the record before its first one (0 before the very first record).
    pub prev: u32,
}

impl LogHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; LOG_HEADER] {
        let mut b = [0; LOG_HEADER];
        b[0..4].copy_from_slice(&LOG_MAGIC);
        b[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.store_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_seq.to_le_bytes());
        b[32..36].copy_from_slice(&self.prev.to_le_bytes());
        let crc = crc32fast::hash(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header; the error says what is wrong.
    pub fn decode(b: &[u8]) -> Result<LogHeader, String> {
        if b.len() < LOG_HEADER {
            return Err(format!(
                "a log header of {LOG_HEADER} bytes, found {} bytes",
                b.len()
            ));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if crc32fast::hash(&b[..36]) != u32_at(36) {
            return Err("a log header checksum mismatch".into());
        }
        if b[0..4] != LOG_MAGIC {
            return Err("a bad log header magic".into());
        }
        if u32_at(4) != FORMAT_VERSION {
            return Err(format!("log format version {}", u32_at(4)));
        }
        Ok(LogHeader {
            store_id: u64_at(8),
            generation: u64_at(16),
            first_seq: u64_at(24),
            prev: u32_at(32),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Why bytes did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError(
    /// What was wrong.
    pub &'static str,
);

type DResult<T> = Result<T, DecodeError>;

/// Reads little-endian fields from untrusted bytes, bounds-checking everything.
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Dec { buf }
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
    fn take(&mut self, n: usize) -> DResult<&'a [u8]> {
        if n > self.buf.len() {
            return Err(DecodeError("field runs past the end"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> DResult<[u8; N]> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> DResult<u8> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> DResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> DResult<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn bool(&mut self) -> DResult<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError("bool is neither 0 nor 1")),
        }
    }
    pub(crate) fn bytes(&mut self) -> DResult<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > MAX_RECORD_BYTES {
            return Err(DecodeError("byte string longer than the maximum record"));
        }
        self.take(n)
    }
    pub(crate) fn string(&mut self) -> DResult<String> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_owned)
            .map_err(|_| DecodeError("string is not utf-8"))
    }
    pub(crate) fn region(&mut self) -> DResult<RegionId> {
        let home = NodeId(self.u32()?);
        let seq = self.u64()?;
        Ok(RegionId { home, seq })
    }
    /// A count of items each at least `min_item` bytes long: bounded by what remains.
    fn bounded(&self, n: u64, min_item: usize) -> DResult<usize> {
        let n = usize::try_from(n).map_err(|_| DecodeError("count too large"))?;
        if n.saturating_mul(min_item.max(1)) > self.buf.len() {
            return Err(DecodeError("count exceeds the bytes that remain"));
        }
        Ok(n)
    }
    pub(crate) fn count32(&mut self, min_item: usize) -> DResult<usize> {
        let n = self.u32()?;
        self.bounded(u64::from(n), min_item)
    }
    pub(crate) fn count64(&mut self, min_item: usize) -> DResult<usize> {
        let n = self.u64()?;
        self.bounded(n, min_item)
    }
    pub(crate) fn writes(&mut self) -> DResult<Vec<(RegionId, Vec<u8>)>> {
        let n = self.count32(REGION_ID_LEN + 4)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let r = self.region()?;
            v.push((r, self.bytes()?.to_vec()));
        }
        Ok(v)
    }
    pub(crate) fn regions(&mut self) -> DResult<Vec<RegionId>> {
        let n = self.count32(REGION_ID_LEN)?;
        (0..n).map(|_| self.region()).collect()
    }
    pub(crate) fn nodes(&mut self) -> DResult<Vec<NodeId>> {
        let n = self.count32(4)?;
        (0..n).map(|_| self.u32().map(NodeId)).collect()
    }
    /// Requires every byte to have been consumed.
    pub(crate) fn finish(&self) -> DResult<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError("trailing bytes"))
        }
    }
}

/// Decodes a record's payload (exactly).
pub fn decode_payload(payload: &[u8]) -> DResult<LogRecord> {
    let mut d = Dec::new(payload);
    let record = match d.u8()? {
        TAG_CREATE => LogRecord::Create {
            region: d.region()?,
            fingerprint: d.u64()?,
            type_name: d.string()?,
            bytes: d.bytes()?.to_vec(),
        },
        TAG_DELETE => LogRecord::Delete {
            region: d.region()?,
        },
        TAG_COMMIT => LogRecord::Commit {
            txid: d.u64()?,
            writes: d.writes()?,
            deletes: d.regions()?,
            participants: d.nodes()?,
        },
        TAG_PREPARE => LogRecord::Prepare {
            txid: d.u64()?,
            coordinator: NodeId(d.u32()?),
            writes: d.writes()?,
            deletes: d.regions()?,
        },
        TAG_DECIDE => LogRecord::Decide {
            txid: d.u64()?,
            commit: d.bool()?,
        },
        TAG_FORGET => LogRecord::Forget { txid: d.u64()? },
        _ => return Err(DecodeError("unknown record tag")),
    };
    d.finish()?;
    Ok(record)
}

/// Why the bytes at an offset of a log are not a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header or the payload needs.
    Torn,
    /// The magic does not match.
    BadMagic,
    /// The header checksum does not match (this covers the store id, the length, the
    /// sequence number, the chain and the payload checksum).
    HeaderChecksum,
    /// The payload length exceeds [`MAX_RECORD_BYTES`].
    TooLarge(u32),
    /// The payload's checksum does not match.
    Checksum,
    /// The checksums match but the payload does not decode.
    Decode(DecodeError),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Torn => f.write_str("a record that runs past the end of the file"),
            FrameError::BadMagic => f.write_str("a bad record magic"),
            FrameError::HeaderChecksum => f.write_str("a record header checksum mismatch"),
            FrameError::TooLarge(n) => write!(f, "a record length {n} over the maximum"),
            FrameError::Checksum => f.write_str("a record payload checksum mismatch"),
            FrameError::Decode(DecodeError(why)) => {
                write!(f, "a checksummed payload that does not decode ({why})")
            }
        }
    }
}

/// A frame that checked out: its record, length and chain fields.
#[derive(Debug)]
pub struct Frame {
    /// The decoded record.
    pub record: LogRecord,
    /// The frame's length (header and payload).
    pub len: usize,
    /// The record's sequence number.
    pub seq: u64,
    /// The previous record's checksum, as this frame claims it.
    pub prev: u32,
    /// This frame's header checksum (the next frame's `prev`).
    pub crc: u32,
}

/// Checks the frame at the start of `buf` written by store `store_id` (magic, length, both
/// checksums) without decoding its payload; returns its length, sequence number, `prev` and
/// checksum.
pub fn check_frame(buf: &[u8], store_id: u64) -> Result<(usize, u64, u32, u32), FrameError> {
    if buf.len() < FRAME_HEADER {
        return Err(FrameError::Torn);
    }
    if buf[0..4] != RECORD_MAGIC {
        return Err(FrameError::BadMagic);
    }
    let u32_at = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
    let crc = u32_at(24);
    if header_crc(store_id, buf) != crc {
        return Err(FrameError::HeaderChecksum);
    }
    let len = u32_at(4);
    if len as usize > MAX_RECORD_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let end = FRAME_HEADER + len as usize;
    if buf.len() < end {
        return Err(FrameError::Torn);
    }
    if crc32fast::hash(&buf[FRAME_HEADER..end]) != u32_at(20) {
        return Err(FrameError::Checksum);
    }
    let seq = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    Ok((end, seq, u32_at(16), crc))
}

/// Decodes the frame at the start of `buf` written by store `store_id`.
pub fn decode_frame(buf: &[u8], store_id: u64) -> Result<Frame, FrameError> {
    let (len, seq, prev, crc) = check_frame(buf, store_id)?;
    let record = decode_payload(&buf[FRAME_HEADER..len]).map_err(FrameError::Decode)?;
    Ok(Frame {
        record,
        len,
        seq,
        prev,
        crc,
    })
}

/// The offset of the first frame of store `store_id` that checks out (both checksums) at
/// `from` or later in `buf`, if any: how recovery tells a torn tail (nothing valid after the
/// bad bytes) from corruption (a valid record after them).
pub fn find_valid_frame(buf: &[u8], from: usize, store_id: u64) -> Option<usize> {
    let mut at = from;
    while at + FRAME_HEADER <= buf.len() {
        let rel = buf[at..].windows(4).position(|w| w == RECORD_MAGIC)?;
        at += rel;
        if check_frame(&buf[at..], store_id).is_ok() {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// How many frames of store `store_id` check out at `from` or later in `buf` (each found by
/// [`find_valid_frame`], skipping bad bytes in between).
pub fn count_valid_frames(buf: &[u8], from: usize, store_id: u64) -> u64 {
    let mut n = 0;
    let mut at = from;
    while let Some(found) = find_valid_frame(buf, at, store_id) {
        n += 1;
        let (len, ..) = check_frame(&buf[found..], store_id).expect("just checked");
        at = found + len;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(seq: u64) -> RegionId {
        RegionId::new(NodeId(3), seq)
    }

    fn samples() -> Vec<LogRecord> {
        vec![
            LogRecord::Create {
                region: rid(2),
                fingerprint: 0xdead_beef,
                type_name: "bank::Account".into(),
                bytes: vec![1, 2, 3],
            },
            LogRecord::Delete { region: rid(2) },
            LogRecord::Commit {
                txid: 7,
                writes: vec![(rid(4), vec![9; 40]), (rid(5), vec![])],
                deletes: vec![rid(6)],
                participants: vec![NodeId(1), NodeId(2)],
            },
            LogRecord::Prepare {
                txid: 8,
                coordinator: NodeId(1),
                writes: vec![(rid(4), vec![1])],
                deletes: vec![],
            },
            LogRecord::Decide {
                txid: 8,
                commit: true,
            },
            LogRecord::Forget { txid: 7 },
        ]
    }

    const STORE: u64 = 0x1234_5678_9abc_def0;

    fn sealed(r: &LogRecord, seq: u64, prev: u32) -> (Vec<u8>, u32) {
        let mut buf = Vec::new();
        encode_frame(r, &mut buf).unwrap();
        let crc = seal_frame(&mut buf, STORE, seq, prev);
        (buf, crc)
    }

    #[test]
    fn roundtrip_and_exact_length() {
        for (i, r) in samples().into_iter().enumerate() {
            let (buf, crc) = sealed(&r, i as u64 + 1, 77);
            assert_eq!(buf.len(), FRAME_HEADER + payload_len(&r));
            let f = decode_frame(&buf, STORE).unwrap();
            assert_eq!(f.record, r);
            assert_eq!(f.len, buf.len());
            assert_eq!((f.seq, f.prev, f.crc), (i as u64 + 1, 77, crc));
            // Another store's id does not check out.
            assert_eq!(
                decode_frame(&buf, STORE + 1).unwrap_err(),
                FrameError::HeaderChecksum
            );
        }
    }

    #[test]
    fn every_truncation_and_flip_is_rejected() {
        for r in samples() {
            let (buf, _) = sealed(&r, 5, 9);
            for cut in 0..buf.len() {
                assert!(decode_frame(&buf[..cut], STORE).is_err());
            }
            for i in 0..buf.len() {
                let mut bad = buf.clone();
                bad[i] ^= 0x40;
                assert!(
                    decode_frame(&bad, STORE).is_err(),
                    "flip at {i} of {r:?} accepted"
                );
            }
        }
    }

    #[test]
    fn valid_frames_are_found_after_garbage() {
        let (a, crc) = sealed(&samples()[0], 1, 0);
        let (b, _) = sealed(&samples()[1], 2, crc);
        let mut buf = a.clone();
        buf[3] ^= 1;
        buf.extend_from_slice(&[0x43; 7]);
        buf.extend_from_slice(&b);
        assert_eq!(find_valid_frame(&buf, 1, STORE), Some(a.len() + 7));
        assert_eq!(count_valid_frames(&buf, 1, STORE), 1);
        assert_eq!(count_valid_frames(&buf, 1, STORE + 1), 0);
        assert_eq!(find_valid_frame(&buf, a.len() + 8, STORE), None);
    }

    #[test]
    fn log_header_roundtrip_and_flips() {
        let h = LogHeader {
            store_id: STORE,
            generation: 3,
            first_seq: 40,
            prev: 0xabcd,
        };
        let b = h.encode();
        assert_eq!(LogHeader::decode(&b).unwrap(), h);
        for i in 0..LOG_HEADER {
            let mut bad = b;
            bad[i] ^= 1;
            assert!(LogHeader::decode(&bad).is_err(), "flip at {i}");
        }
        assert!(LogHeader::decode(&b[..LOG_HEADER - 1]).is_err());
    }

    #[test]
    fn payload_decoding_is_bounded() {
        // A commit claiming 2^32-1 writes in a tiny payload.
        let mut p = vec![TAG_COMMIT];
        p.extend_from_slice(&1u64.to_le_bytes());
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_payload(&p).is_err());
        // Invalid utf-8 type name.
        let mut p = vec![TAG_CREATE];
        p.extend_from_slice(&[0; 20]);
        p.extend_from_slice(&1u32.to_le_bytes());
        p.push(0xff);
        p.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            decode_payload(&p).unwrap_err(),
            DecodeError("string is not utf-8")
        );
        // Trailing bytes and unknown tags.
        assert!(decode_payload(&[TAG_FORGET, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_payload(&[99]).is_err());
        assert!(decode_payload(&[]).is_err());
        assert!(decode_payload(&[TAG_DECIDE, 0, 0, 0, 0, 0, 0, 0, 0, 2]).is_err());
    }

    /// Pins the log format (version 2): these bytes must decode the same in every release.
    #[test]
    fn golden_frames() {
        let (buf, crc) = sealed(&LogRecord::Delete { region: rid(2) }, 7, 0x0102_0304);
        let payload = [2, 3, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        let mut expected = b"CRLR".to_vec();
        expected.extend_from_slice(&13u32.to_le_bytes());
        expected.extend_from_slice(&7u64.to_le_bytes());
        expected.extend_from_slice(&0x0102_0304u32.to_le_bytes());
        expected.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&STORE.to_le_bytes());
        h.update(&expected);
        let header_crc = h.finalize();
        assert_eq!(crc, header_crc);
        expected.extend_from_slice(&header_crc.to_le_bytes());
        expected.extend_from_slice(&payload);
        assert_eq!(buf, expected);
        // CRC-32 (IEEE) of that payload, as zlib.crc32 computes it: a change is a format change.
        assert_eq!(&buf[20..24], &0x5a93_2644u32.to_le_bytes());
        assert_eq!(&buf[24..28], &0x3bd6_ba6du32.to_le_bytes());

        let (buf, _) = sealed(
            &LogRecord::Decide {
                txid: 0x0102,
                commit: true,
            },
            1,
            0,
        );
        assert_eq!(&buf[FRAME_HEADER..], &[5, 2, 1, 0, 0, 0, 0, 0, 0, 1]);

        let header = LogHeader {
            store_id: 1,
            generation: 2,
            first_seq: 3,
            prev: 4,
        }
        .encode();
        assert_eq!(&header[0..8], b"CRLL\x02\0\0\0");
        assert_eq!(
            &header[8..36],
            &[
                1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0
            ]
        );
    }

    #[test]
    fn oversized_record_is_refused() {
        let r = LogRecord::Create {
            region: rid(2),
            fingerprint: 0,
            type_name: String::new(),
            bytes: vec![0; MAX_RECORD_BYTES],
        };
        let mut buf = Vec::new();
        assert!(matches!(
            encode_frame(&r, &mut buf),
            Err(RecordTooLarge { .. })
        ));
        assert!(buf.is_empty());
    }
}
