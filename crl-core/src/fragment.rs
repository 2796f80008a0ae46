//! Fragments: messages longer than a frame, such as the image of a big region, travel on a
//! session as several frames.
//!
//! A frame carries at most [`MAX_FRAME_LEN`] bytes, so that a
//! reader never allocates more than that for one frame it has not checked. A message whose
//! archive is longer than the sender's fragment length ([`DEFAULT_FRAGMENT_LEN`]) is cut into
//! pieces of that length; each piece is a frame of its own whose header carries
//! [`FLAG_MORE`](crate::wire::FLAG_MORE), but for the last. On a session every piece is a
//! numbered message of its own ([`crate::session`]): acknowledged, kept for retransmission and
//! re-sent after a reconnect like any other, so a message survives connection breaks in the
//! middle of its transfer and its acknowledged pieces leave the retransmit buffer early.
//!
//! The receiver appends the pieces, in session order, to one aligned buffer
//! ([`Reassembly`]) and decodes the message when the last arrives. What a peer can make it
//! hold is bounded by the session's message limit ([`Reassembly::new`]): a piece that would
//! take the message past it is a protocol violation, as is an empty piece announcing more.
//!
//! Sessions keep their order, so a message queued behind a big one waits for the whole big
//! one: fragments bound what one frame costs to read, not how long a link is busy.

use crate::wire::{self, FrameHeader, HEADER_LEN, MAX_FRAME_LEN, Message, WireError};
use rkyv::rancor;
use rkyv::util::AlignedVec;

/// Default length of a fragment's payload: 1 MiB.
pub const DEFAULT_FRAGMENT_LEN: usize = 1 << 20;

/// Default bound on one message's archived length, fragments together: 1 GiB plus room for
/// the fields around a region image of 1 GiB.
pub const DEFAULT_MAX_MESSAGE_LEN: usize =
    crate::engine::DEFAULT_MAX_IMAGE_LEN + crate::engine::MESSAGE_OVERHEAD;

/// Encodes `msg` as the frames that carry it: one frame if its archive is at most
/// `fragment_len` bytes (the same bytes as [`wire::encode_frame`]), otherwise one frame per
/// `fragment_len` bytes, every one but the last flagged [`FLAG_MORE`](wire::FLAG_MORE).
///
/// Each frame starts with `prefix_len` zero bytes the caller fills in (a session's sequence
/// number), so a frame is one buffer and one write. `fragment_len` is clamped to
/// `1..=MAX_FRAME_LEN`. A message whose archive exceeds `max_message_len` is refused with
/// [`WireError::MessageTooLarge`] before anything is produced.
pub fn encode_fragments(
    msg: &Message,
    fragment_len: usize,
    max_message_len: usize,
    prefix_len: usize,
) -> Result<Vec<Vec<u8>>, WireError> {
    // Sized for the contents up front: growing by doubling would copy a big image again and
    // again.
    let room = msg.payload_hint().saturating_add(1024);
    let payload = rkyv::api::high::to_bytes_in::<_, rancor::Error>(
        msg,
        AlignedVec::<16>::with_capacity(room),
    )
    .map_err(|e| WireError::Encode(e.to_string()))?;
    if payload.len() > max_message_len {
        return Err(WireError::MessageTooLarge {
            len: payload.len(),
            max: max_message_len,
        });
    }
    let fragment_len = fragment_len.clamp(1, MAX_FRAME_LEN);
    let pieces = payload.len().div_ceil(fragment_len).max(1);
    let mut frames = Vec::with_capacity(pieces);
    // An empty archive cannot happen (the root is never empty), but one empty frame would
    // still be the right encoding of it.
    let mut chunks = payload.chunks(fragment_len).peekable();
    if chunks.peek().is_none() {
        let mut f = vec![0u8; prefix_len];
        wire::write_header(&mut f, 0, 0);
        frames.push(f);
    }
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_some() {
            wire::FLAG_MORE
        } else {
            0
        };
        let mut f = Vec::with_capacity(prefix_len + HEADER_LEN + chunk.len());
        f.resize(prefix_len, 0);
        wire::write_header(&mut f, chunk.len(), flags);
        f.extend_from_slice(chunk);
        frames.push(f);
    }
    Ok(frames)
}

/// The receiving side: the pieces of the message in progress on one session.
///
/// Reset it (a new one) whenever the receiving session starts again: pieces of a previous
/// session's message must never be joined to a new session's. The pieces are kept as they
/// came and joined once, into one buffer of the exact length, when the last arrives.
#[derive(Debug)]
pub struct Reassembly {
    pieces: Vec<Vec<u8>>,
    /// Bytes in `pieces`.
    pending: usize,
    max_message_len: usize,
}

impl Reassembly {
    /// Nothing received yet; messages are bounded by `max_message_len` archived bytes.
    pub fn new(max_message_len: usize) -> Self {
        Reassembly {
            pieces: Vec::new(),
            pending: 0,
            max_message_len,
        }
    }

    /// Takes the next delivered frame of the session (its checked header and exactly
    /// `header.payload_len` bytes of payload, which it may take: `payload` is left empty when
    /// it is kept as a piece). Returns the message it completes, or `None` while more pieces
    /// are to come.
    ///
    /// Errors (the peer broke the protocol; the caller closes the connection) leave nothing
    /// of the message behind.
    pub fn push(
        &mut self,
        header: FrameHeader,
        payload: &mut Vec<u8>,
    ) -> Result<Option<Message>, WireError> {
        debug_assert_eq!(header.payload_len, payload.len());
        if !header.more && self.pieces.is_empty() {
            return wire::decode_payload(payload).map(Some);
        }
        if header.more && payload.is_empty() {
            self.clear();
            return Err(WireError::EmptyFragment);
        }
        let len = self.pending + payload.len();
        if len > self.max_message_len {
            self.clear();
            return Err(WireError::MessageTooLarge {
                len,
                max: self.max_message_len,
            });
        }
        self.pending = len;
        self.pieces.push(std::mem::take(payload));
        if header.more {
            return Ok(None);
        }
        let mut whole = AlignedVec::<16>::with_capacity(len);
        for piece in self.pieces.drain(..) {
            whole.extend_from_slice(&piece);
        }
        self.clear();
        wire::decode_aligned(&whole).map(Some)
    }

    /// Bytes of the message in progress.
    pub fn pending_bytes(&self) -> usize {
        self.pending
    }

    /// Drops the message in progress, and its memory.
    pub fn clear(&mut self) {
        self.pieces = Vec::new();
        self.pending = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::{NodeId, RegionId};
    use crate::session::SEQ_LEN as SEQ_TEST_PREFIX;
    use crate::wire::{Grant, RegionImage};
    use proptest::prelude::*;

    fn data(len: usize) -> Message {
        Message::Data {
            region: RegionId::new(NodeId(1), 7),
            grant: Grant::Shared,
            image: Some(RegionImage {
                bytes: (0..len).map(|i| (i * 31 % 251) as u8).collect(),
                version: 3,
            }),
        }
    }

    fn reassemble(
        frames: &[Vec<u8>],
        prefix: usize,
        max: usize,
    ) -> Result<Vec<Message>, WireError> {
        let mut r = Reassembly::new(max);
        let mut out = Vec::new();
        for f in frames {
            let h =
                wire::parse_fragment_header(f[prefix..prefix + HEADER_LEN].try_into().unwrap())?;
            if let Some(m) = r.push(h, &mut f[prefix + HEADER_LEN..].to_vec())? {
                out.push(m);
            }
        }
        assert_eq!(r.pending_bytes(), 0);
        Ok(out)
    }

    #[test]
    fn a_small_message_is_one_frame_identical_to_encode() {
        let msg = data(100);
        let frames = encode_fragments(&msg, DEFAULT_FRAGMENT_LEN, usize::MAX, 0).unwrap();
        assert_eq!(frames, vec![wire::encode(&msg).unwrap()]);
    }

    #[test]
    fn a_big_message_is_cut_and_joined_again() {
        let msg = data(10_000);
        let frames = encode_fragments(&msg, 1000, usize::MAX, SEQ_TEST_PREFIX).unwrap();
        assert!(frames.len() >= 10, "{}", frames.len());
        for f in &frames[..frames.len() - 1] {
            assert_eq!(f.len(), SEQ_TEST_PREFIX + HEADER_LEN + 1000);
            assert_eq!(f[SEQ_TEST_PREFIX + 6], wire::FLAG_MORE as u8);
        }
        assert_eq!(
            reassemble(&frames, SEQ_TEST_PREFIX, usize::MAX).unwrap(),
            vec![msg]
        );
    }

    #[test]
    fn a_message_over_the_limit_is_refused_at_both_ends() {
        let msg = data(10_000);
        let err = encode_fragments(&msg, 1000, 5000, 0).unwrap_err();
        assert!(matches!(err, WireError::MessageTooLarge { max: 5000, len } if len > 10_000));
        // A peer that sends it anyway is refused once its pieces pass the bound.
        let frames = encode_fragments(&msg, 1000, usize::MAX, 0).unwrap();
        let err = reassemble(&frames, 0, 5000).unwrap_err();
        assert_eq!(
            err,
            WireError::MessageTooLarge {
                len: 6000,
                max: 5000
            }
        );
    }

    #[test]
    fn empty_or_damaged_pieces_are_violations_and_leave_nothing() {
        let mut r = Reassembly::new(1 << 20);
        let more = FrameHeader {
            payload_len: 0,
            more: true,
        };
        assert_eq!(r.push(more, &mut Vec::new()), Err(WireError::EmptyFragment));
        // A damaged piece in the middle: the joined archive fails validation.
        let msg = data(5000);
        let mut frames = encode_fragments(&msg, 1000, usize::MAX, 0).unwrap();
        let last = frames.len() - 1;
        let n = frames[last].len();
        frames[last][n - 3] ^= 0xff;
        assert!(matches!(
            reassemble(&frames, 0, usize::MAX),
            Err(WireError::Invalid(_))
        ));
        let mut r = Reassembly::new(1 << 20);
        let h = FrameHeader {
            payload_len: 4,
            more: true,
        };
        let mut piece = vec![1, 2, 3, 4];
        r.push(h, &mut piece).unwrap();
        assert!(piece.is_empty(), "the piece is kept, not copied");
        assert_eq!(r.pending_bytes(), 4);
        r.clear();
        assert_eq!(r.pending_bytes(), 0);
        // After a clear, a whole small message decodes on its own.
        let small = wire::encode(&data(10)).unwrap();
        let h = wire::parse_fragment_header(small[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(
            r.push(h, &mut small[HEADER_LEN..].to_vec()).unwrap(),
            Some(data(10))
        );
    }

    proptest! {
        /// Any sequence of messages, cut at any fragment length, comes back whole and in
        /// order; every frame stays within the fragment length.
        #[test]
        fn fragments_round_trip(
            lens in proptest::collection::vec(0usize..5000, 1..6),
            fragment_len in 1usize..3000,
        ) {
            let msgs: Vec<Message> = lens.iter().map(|&l| data(l)).collect();
            let mut frames = Vec::new();
            for m in &msgs {
                frames.extend(encode_fragments(m, fragment_len, usize::MAX, 0).unwrap());
            }
            for f in &frames {
                prop_assert!(f.len() <= HEADER_LEN + fragment_len);
            }
            prop_assert_eq!(reassemble(&frames, 0, usize::MAX).unwrap(), msgs);
        }
    }
}
