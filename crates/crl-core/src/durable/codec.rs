//! Encoding and validated decoding of log records (and the fields checkpoints share with
//! them). Every length read from disk is checked against the bytes that remain before it is
//! used, so a corrupt input gives an error, never a panic or a huge allocation.

use super::{LogRecord, StoreError};
use crate::region::{NodeId, RegionId};

/// The largest payload of one log record: 64 MiB.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// Magic of a log frame: `b"CRLW"`.
pub(crate) const RECORD_MAGIC: [u8; 4] = *b"CRLW";
/// Size of a log frame's header: magic, payload length, CRC.
pub(crate) const FRAME_HEADER: usize = 12;

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
pub(crate) fn payload_len(record: &LogRecord) -> usize {
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

/// Encodes `record` as one log frame (header and payload), appended to `out`.
pub(crate) fn encode_frame(record: &LogRecord, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let len = payload_len(record);
    if len > MAX_RECORD_BYTES {
        return Err(StoreError::RecordTooLarge {
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
    let crc = crc32fast::hash(payload);
    let header = &mut out[start..start + FRAME_HEADER];
    header[0..4].copy_from_slice(&RECORD_MAGIC);
    header[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    header[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Why bytes did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DecodeError(pub &'static str);

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
pub(crate) fn decode_payload(payload: &[u8]) -> DResult<LogRecord> {
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

/// Why a log frame ends the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Fewer bytes than the header or the payload needs.
    Torn,
    /// The magic does not match.
    BadMagic,
    /// The payload length exceeds [`MAX_RECORD_BYTES`].
    TooLarge(u32),
    /// The payload's checksum does not match.
    Checksum,
    /// The payload does not decode.
    Decode(DecodeError),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Torn => f.write_str("torn record"),
            FrameError::BadMagic => f.write_str("bad record magic"),
            FrameError::TooLarge(n) => write!(f, "record length {n} over the maximum"),
            FrameError::Checksum => f.write_str("record checksum mismatch"),
            FrameError::Decode(DecodeError(why)) => write!(f, "record does not decode: {why}"),
        }
    }
}

/// Decodes the frame at the start of `buf`: the record and the frame's length.
pub(crate) fn decode_frame(buf: &[u8]) -> Result<(LogRecord, usize), FrameError> {
    if buf.len() < FRAME_HEADER {
        return Err(FrameError::Torn);
    }
    if buf[0..4] != RECORD_MAGIC {
        return Err(FrameError::BadMagic);
    }
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let crc = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if len as usize > MAX_RECORD_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let end = FRAME_HEADER + len as usize;
    if buf.len() < end {
        return Err(FrameError::Torn);
    }
    let payload = &buf[FRAME_HEADER..end];
    if crc32fast::hash(payload) != crc {
        return Err(FrameError::Checksum);
    }
    let record = decode_payload(payload).map_err(FrameError::Decode)?;
    Ok((record, end))
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

    #[test]
    fn roundtrip_and_exact_length() {
        for r in samples() {
            let mut buf = Vec::new();
            encode_frame(&r, &mut buf).unwrap();
            assert_eq!(buf.len(), FRAME_HEADER + payload_len(&r));
            let (back, n) = decode_frame(&buf).unwrap();
            assert_eq!(back, r);
            assert_eq!(n, buf.len());
        }
    }

    #[test]
    fn every_truncation_and_flip_is_rejected_or_harmless() {
        for r in samples() {
            let mut buf = Vec::new();
            encode_frame(&r, &mut buf).unwrap();
            for cut in 0..buf.len() {
                assert_eq!(decode_frame(&buf[..cut]).unwrap_err(), FrameError::Torn);
            }
            for i in 0..buf.len() {
                let mut bad = buf.clone();
                bad[i] ^= 0x40;
                assert!(decode_frame(&bad).is_err(), "flip at {i} of {r:?} accepted");
            }
        }
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

    /// Pins the log format: these bytes must decode the same in every release.
    #[test]
    fn golden_frames() {
        let mut buf = Vec::new();
        encode_frame(&LogRecord::Delete { region: rid(2) }, &mut buf).unwrap();
        let payload = [2, 3, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        let mut expected = b"CRLW".to_vec();
        expected.extend_from_slice(&13u32.to_le_bytes());
        expected.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        expected.extend_from_slice(&payload);
        assert_eq!(buf, expected);
        // CRC-32 (IEEE) of that payload, as zlib.crc32 computes it: a change is a format change.
        assert_eq!(&buf[8..12], &0x5a93_2644u32.to_le_bytes());

        buf.clear();
        encode_frame(
            &LogRecord::Decide {
                txid: 0x0102,
                commit: true,
            },
            &mut buf,
        )
        .unwrap();
        assert_eq!(&buf[12..], &[5, 2, 1, 0, 0, 0, 0, 0, 0, 1]);
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
            Err(StoreError::RecordTooLarge { .. })
        ));
        assert!(buf.is_empty());
    }
}
