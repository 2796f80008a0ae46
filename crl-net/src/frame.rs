//! Length-bounded frames on byte streams (QUIC streams in production, in-memory pipes in
//! tests).
//!
//! A frame is crl-core's wire frame: a 12-byte header (magic, protocol version, payload length)
//! and the archived [`Message`]. The reader checks the header before allocating and refuses a
//! payload longer than the configured bound, so a peer cannot make a node allocate without
//! limit; the payload is then validated by [`crl_core::wire::decode_payload`].

use crl_core::wire::{self, FrameHeader, HEADER_LEN, Message, WireError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The frame announced a payload longer than this node accepts.
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The header or payload is not a valid crl frame.
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    /// The stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Fills `out` from the stream. `Ok(false)` means the stream ended cleanly before the first
/// byte; an end after it is [`FrameError::Truncated`].
async fn read_full_or_eof<R: AsyncRead + Unpin>(
    r: &mut R,
    out: &mut [u8],
) -> Result<bool, FrameError> {
    let mut got = 0;
    while got < out.len() {
        let n = r.read(&mut out[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(false)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    Ok(true)
}

/// Reads one frame. `Ok(None)` means the stream ended cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_len: usize,
    buf: &mut Vec<u8>,
) -> Result<Option<Message>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    if !read_full_or_eof(r, &mut header).await? {
        return Ok(None);
    }
    let len = wire::parse_header(&header)?;
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    Ok(Some(wire::decode_payload(buf)?))
}

/// Reads one frame of a session, which may be a fragment of a longer message
/// ([`crl_core::fragment`]): its checked header, with the payload in `buf`, not decoded.
/// `Ok(None)` means the stream ended cleanly between frames.
pub async fn read_fragment<R: AsyncRead + Unpin>(
    r: &mut R,
    max_len: usize,
    buf: &mut Vec<u8>,
) -> Result<Option<FrameHeader>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    if !read_full_or_eof(r, &mut header).await? {
        return Ok(None);
    }
    let header = wire::parse_fragment_header(&header)?;
    let len = header.payload_len;
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    Ok(Some(header))
}

/// Reads the sequence number that precedes a numbered frame on a session stream
/// ([`crl_core::session::SEQ_LEN`] bytes, little endian). `Ok(None)` means the stream ended
/// cleanly between frames.
pub async fn read_seq<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<u64>, FrameError> {
    let mut bytes = [0u8; crl_core::session::SEQ_LEN];
    Ok(read_full_or_eof(r, &mut bytes)
        .await?
        .then(|| u64::from_le_bytes(bytes)))
}

/// Writes one frame (`buf` is scratch space, reused between calls).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message,
    buf: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    buf.clear();
    wire::encode_frame(msg, buf)?;
    w.write_all(buf).await?;
    Ok(buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crl_core::{NodeId, RegionId};

    fn sample() -> Message {
        Message::GetShared {
            region: RegionId::new(NodeId(1), 2),
            fingerprint: 3,
            priority: crl_core::wire::PRIORITY_NONE,
        }
    }

    #[tokio::test]
    async fn frames_round_trip_and_eof_is_clean() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let mut buf = Vec::new();
        for _ in 0..3 {
            write_frame(&mut a, &sample(), &mut buf).await.unwrap();
        }
        drop(a);
        let mut rbuf = Vec::new();
        for _ in 0..3 {
            assert_eq!(
                read_frame(&mut b, 1024, &mut rbuf).await.unwrap(),
                Some(sample())
            );
        }
        assert_eq!(read_frame(&mut b, 1024, &mut rbuf).await.unwrap(), None);
    }

    #[tokio::test]
    async fn bad_input_is_an_error_not_a_panic() {
        let mut frame = Vec::new();
        wire::encode_frame(&sample(), &mut frame).unwrap();
        // Truncated inside the header and inside the payload.
        for cut in [5, HEADER_LEN + 3] {
            let (mut a, mut b) = tokio::io::duplex(1 << 16);
            a.write_all(&frame[..cut]).await.unwrap();
            drop(a);
            let err = read_frame(&mut b, 1024, &mut Vec::new()).await.unwrap_err();
            assert!(matches!(err, FrameError::Truncated), "{err}");
        }
        // Garbage.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&[0xAB; 64]).await.unwrap();
        assert!(matches!(
            read_frame(&mut b, 1024, &mut Vec::new()).await,
            Err(FrameError::Wire(_))
        ));
        // Over this node's bound (checked before reading the payload).
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&frame).await.unwrap();
        let err = read_frame(&mut b, 8, &mut Vec::new()).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { max: 8, .. }), "{err}");
    }
}
