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
//! # Images that follow their message
//!
//! A [`Message::Data`], [`Message::RecallAck`] or [`Message::Flush`] whose image is longer than
//! a fragment is not archived whole: archiving would copy the image into the archive, and
//! decoding would copy it out again, twice the bytes of a big region in fresh memory at each
//! end. Instead its head, a [`Message::ImageFollows`] naming the message, the region, the
//! version and the image's length, is sent as a message of its own, and the image's bytes
//! follow raw, cut into fragments (every one but the last flagged
//! [`FLAG_MORE`](crate::wire::FLAG_MORE)). The receiver collects exactly that many bytes into
//! one buffer and hands on the message the head names, with that buffer as its image: the
//! region's bytes are copied once on the way in. On the way out they are not copied at all:
//! each piece is an [`EncodedFrame`] whose body is a slice of the image, shared by all the
//! pieces, that the writer hands to the stream as it is. The image's buffer is therefore
//! freed when its last piece is acknowledged, not piece by piece (the retransmit buffer's
//! count of bytes still drops as pieces are acknowledged): until then a big image costs its
//! own length once, where copied pieces cost it twice at the start of the transfer.
//!
//! An image piece that is empty, that takes the image past its announced length, or that
//! ends it short (no `FLAG_MORE` before the length is reached, or `FLAG_MORE` once it is) is
//! a protocol violation, as is a head announcing an empty image or one over the message
//! limit.
//!
//! # Messages that pass an image
//!
//! Each piece of an image is flagged [`FLAG_IMAGE`](crate::wire::FLAG_IMAGE). A message of one
//! frame about another region, a ping or a pong ([`Lane::Passes`]) may be written between
//! two pieces: the session numbers an image's pieces only as it writes them, and numbers
//! such a message at once ([`crate::session`]). So a small miss does not wait for hundreds of
//! megabytes of another region's image. The receiver delivers a frame without the flag that
//! comes between pieces as the message it is, before the image's, and refuses, as a protocol
//! violation, one that may not pass ([`Lane::may_pass_image_of`]) and a piece when no image
//! was announced. Every other message keeps its place: fragments bound what one frame costs
//! to read; passing bounds how long a small message waits behind a big image of another
//! region.

use std::ops::Range;

use bytes::Bytes;

use crate::region::RegionId;
use crate::wire::{
    self, FrameHeader, HEADER_LEN, ImageOf, Lane, MAX_FRAME_LEN, Message, RegionImage, WireError,
};
use rkyv::rancor;
use rkyv::util::AlignedVec;

/// Default length of a fragment's payload: 1 MiB.
pub const DEFAULT_FRAGMENT_LEN: usize = 1 << 20;

/// How much of an announced image ([`Message::ImageFollows`]) the receiver reserves before
/// its pieces arrive: 256 MiB.
const IMAGE_RESERVE_LEN: usize = 256 << 20;

/// Default bound on one message's archived length, fragments together: 1 GiB plus room for
/// the fields around a region image of 1 GiB.
pub const DEFAULT_MAX_MESSAGE_LEN: usize =
    crate::engine::DEFAULT_MAX_IMAGE_LEN + crate::engine::MESSAGE_OVERHEAD;

/// One frame as written on a stream: its head (the caller's prefix, the wire header and, but
/// for a piece of an image, the payload) followed by its body (a piece of an image that
/// follows its message, shared with the image's other pieces; empty otherwise). A big
/// region's image is thus kept once, in its pieces, until they are acknowledged, and written
/// without a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedFrame {
    head: Vec<u8>,
    body: Bytes,
}

impl EncodedFrame {
    /// A frame of `head` alone.
    pub fn new(head: Vec<u8>) -> Self {
        EncodedFrame {
            head,
            body: Bytes::new(),
        }
    }

    /// The frame's first bytes (the whole frame, unless it carries a piece of an image).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// The head, to fill in the caller's prefix.
    pub fn head_mut(&mut self) -> &mut [u8] {
        &mut self.head
    }

    /// The piece of an image after the head (empty if none).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The frame's length in bytes, head and body.
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// Whether the frame has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the frame is a raw piece of an image that follows its head (its body is the
    /// piece; see the [module docs](self#messages-that-pass-an-image)).
    pub fn is_image_piece(&self) -> bool {
        !self.body.is_empty()
    }

    /// The frame's bytes in one buffer (a copy, for tests and the simulator).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(&self.head);
        v.extend_from_slice(&self.body);
        v
    }
}

impl From<Vec<u8>> for EncodedFrame {
    fn from(head: Vec<u8>) -> Self {
        EncodedFrame::new(head)
    }
}

/// A message encoded for a session: the frames that carry it and where it may go among the
/// pieces of an image before it ([`Lane`]).
#[derive(Clone, Debug)]
pub struct EncodedMessage {
    /// The frames, in order.
    pub frames: Vec<EncodedFrame>,
    /// [`Lane::Image`] if the frames end with the raw pieces of an image; the message's own
    /// lane ([`Message::lane`]) otherwise. A message of several frames keeps its place
    /// whatever its lane ([`crate::session::SendSession::push_all`]).
    pub lane: Lane,
}

/// Encodes `msg` as the frames that carry it: one frame if its archive is at most
/// `fragment_len` bytes (the same bytes as [`wire::encode_frame`]), otherwise one frame per
/// `fragment_len` bytes, every one but the last flagged [`FLAG_MORE`](wire::FLAG_MORE). A
/// message with an image longer than `fragment_len` is sent as its head
/// ([`Message::ImageFollows`]) followed by the image's raw bytes (see the module docs).
///
/// Each frame starts with `prefix_len` zero bytes the caller fills in (a session's sequence
/// number), so a frame is one buffer and one write. `fragment_len` is clamped to
/// `1..=MAX_FRAME_LEN`. A message whose archive (or image) exceeds `max_message_len` is
/// refused with [`WireError::MessageTooLarge`] before anything is produced.
pub fn encode_fragments(
    msg: Message,
    fragment_len: usize,
    max_message_len: usize,
    prefix_len: usize,
) -> Result<EncodedMessage, WireError> {
    let fragment_len = fragment_len.clamp(1, MAX_FRAME_LEN);
    let (head, region, image) = match split_image(msg, fragment_len) {
        Ok(split) => split,
        Err(msg) => {
            let frames = encode_archive(&msg, fragment_len, max_message_len, prefix_len)?;
            return Ok(EncodedMessage {
                frames,
                lane: msg.lane(),
            });
        }
    };
    if image.len() > max_message_len {
        return Err(WireError::MessageTooLarge {
            len: image.len(),
            max: max_message_len,
        });
    }
    let mut frames = encode_archive(&head, fragment_len, max_message_len, prefix_len)?;
    frames.reserve(image.len().div_ceil(fragment_len));
    push_image_pieces(&mut frames, Bytes::from(image), fragment_len, prefix_len);
    Ok(EncodedMessage {
        frames,
        lane: Lane::Image(region),
    })
}

/// The head to send instead of `msg`, its region and the image to send after it, if `msg`
/// carries an image longer than `fragment_len`; `msg` itself otherwise.
fn split_image(msg: Message, fragment_len: usize) -> Result<(Message, RegionId, Vec<u8>), Message> {
    let long =
        |image: &Option<RegionImage>| image.as_ref().is_some_and(|i| i.bytes.len() > fragment_len);
    let (of, region, image) = match msg {
        Message::Data {
            region,
            grant,
            image,
        } if long(&image) => (ImageOf::Data { grant }, region, image),
        Message::RecallAck { region, image } if long(&image) => (ImageOf::RecallAck, region, image),
        Message::Flush { region, image } if long(&image) => (ImageOf::Flush, region, image),
        other => return Err(other),
    };
    let image = image.expect("checked by `long`");
    let head = Message::ImageFollows {
        of,
        region,
        version: image.version,
        len: image.bytes.len() as u64,
    };
    Ok((head, region, image.bytes))
}

/// Where `len` bytes are cut into pieces of at most `fragment_len` bytes: each piece's range
/// and its flags ([`FLAG_MORE`](wire::FLAG_MORE) on every one but the last). None for no
/// bytes.
fn pieces(len: usize, fragment_len: usize) -> impl Iterator<Item = (Range<usize>, u16)> {
    (0..len).step_by(fragment_len).map(move |start| {
        let end = (start + fragment_len).min(len);
        let flags = if end < len { wire::FLAG_MORE } else { 0 };
        (start..end, flags)
    })
}

/// A frame's first bytes: `prefix_len` zero bytes and the header of a `payload_len`-byte
/// payload, with room for `room` more bytes.
fn frame_head(prefix_len: usize, payload_len: usize, flags: u16, room: usize) -> Vec<u8> {
    let mut head = Vec::with_capacity(prefix_len + HEADER_LEN + room);
    head.resize(prefix_len, 0);
    wire::write_header(&mut head, payload_len, flags);
    head
}

/// Appends `image` to `frames` cut into frames of at most `fragment_len` bytes of payload
/// ([`pieces`]), each flagged [`FLAG_IMAGE`](wire::FLAG_IMAGE) after `prefix_len` zero bytes;
/// the pieces are slices of `image`, not copies.
fn push_image_pieces(
    frames: &mut Vec<EncodedFrame>,
    image: Bytes,
    fragment_len: usize,
    prefix_len: usize,
) {
    for (range, flags) in pieces(image.len(), fragment_len) {
        frames.push(EncodedFrame {
            head: frame_head(prefix_len, range.len(), flags | wire::FLAG_IMAGE, 0),
            body: image.slice(range),
        });
    }
}

/// Appends `bytes` to `frames` cut into frames of at most `fragment_len` bytes of payload
/// ([`pieces`]), each after `prefix_len` zero bytes, copied into the frames.
fn push_pieces(
    frames: &mut Vec<EncodedFrame>,
    bytes: &[u8],
    fragment_len: usize,
    prefix_len: usize,
) {
    for (range, flags) in pieces(bytes.len(), fragment_len) {
        let mut f = frame_head(prefix_len, range.len(), flags, range.len());
        f.extend_from_slice(&bytes[range]);
        frames.push(EncodedFrame::new(f));
    }
}

/// `msg` archived and cut into frames (see [`encode_fragments`]); `fragment_len` is clamped.
fn encode_archive(
    msg: &Message,
    fragment_len: usize,
    max_message_len: usize,
    prefix_len: usize,
) -> Result<Vec<EncodedFrame>, WireError> {
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
    let mut frames = Vec::with_capacity(payload.len().div_ceil(fragment_len).max(1));
    // An empty archive cannot happen (the root is never empty), but one empty frame would
    // still be the right encoding of it.
    if payload.is_empty() {
        let mut f = vec![0u8; prefix_len];
        wire::write_header(&mut f, 0, 0);
        frames.push(EncodedFrame::new(f));
    }
    push_pieces(&mut frames, &payload, fragment_len, prefix_len);
    Ok(frames)
}

/// The receiving side: the pieces of the message in progress on one session.
///
/// Reset it (a new one) whenever the receiving session starts again: pieces of a previous
/// session's message must never be joined to a new session's. The pieces of an archive are
/// kept as they came and joined once, into one buffer of the exact length, when the last
/// arrives; an image that follows its head is collected into one buffer of its announced
/// length.
#[derive(Debug)]
pub struct Reassembly {
    pieces: Vec<Vec<u8>>,
    /// Bytes in `pieces`.
    pending: usize,
    /// The image being received after its head, if one is.
    image: Option<IncomingImage>,
    max_message_len: usize,
}

/// An image following its [`Message::ImageFollows`].
#[derive(Debug)]
struct IncomingImage {
    of: ImageOf,
    region: RegionId,
    version: u64,
    len: usize,
    bytes: Vec<u8>,
}

impl IncomingImage {
    fn into_message(self) -> Message {
        let image = Some(RegionImage {
            version: self.version,
            bytes: self.bytes,
        });
        let region = self.region;
        match self.of {
            ImageOf::Data { grant } => Message::Data {
                region,
                grant,
                image,
            },
            ImageOf::RecallAck => Message::RecallAck { region, image },
            ImageOf::Flush => Message::Flush { region, image },
        }
    }
}

impl Reassembly {
    /// Nothing received yet; messages are bounded by `max_message_len` archived bytes.
    pub fn new(max_message_len: usize) -> Self {
        Reassembly {
            pieces: Vec::new(),
            pending: 0,
            image: None,
            max_message_len,
        }
    }

    /// Takes the next delivered frame of the session (its checked header and exactly
    /// `header.payload_len` bytes of payload, which it may take: `payload` is left empty when
    /// it is kept as a piece). Returns the message it completes (or the message it is, if it
    /// came between two pieces of an image and may pass it), or `None` while more pieces are
    /// to come.
    ///
    /// Errors (the peer broke the protocol; the caller closes the connection) leave nothing
    /// of the message behind.
    pub fn push(
        &mut self,
        header: FrameHeader,
        payload: &mut Vec<u8>,
    ) -> Result<Option<Message>, WireError> {
        debug_assert_eq!(header.payload_len, payload.len());
        if let Some(image) = &self.image {
            if header.image {
                return self.push_image(header, payload);
            }
            // A message between two pieces: it must be one that may pass the image.
            let region = image.region;
            let decoded = (!header.more).then(|| wire::decode_payload(payload));
            return match decoded {
                Some(Ok(msg)) if msg.lane().may_pass_image_of(region) => Ok(Some(msg)),
                other => {
                    self.clear();
                    Err(match other {
                        Some(Err(e)) => e,
                        Some(Ok(msg)) => WireError::MayNotPass {
                            kind: msg.kind_name(),
                            region,
                        },
                        None => WireError::MayNotPass {
                            kind: "fragment of a longer message",
                            region,
                        },
                    })
                }
            };
        }
        if header.image {
            self.clear();
            return Err(WireError::PieceWithoutImage);
        }
        let msg = if !header.more && self.pieces.is_empty() {
            wire::decode_payload(payload)?
        } else {
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
            wire::decode_aligned(&whole)?
        };
        let Message::ImageFollows {
            of,
            region,
            version,
            len,
        } = msg
        else {
            return Ok(Some(msg));
        };
        let len = match usize::try_from(len) {
            Ok(0) => {
                return Err(WireError::ImageLength {
                    announced: 0,
                    got: 0,
                    more: false,
                });
            }
            Ok(len) if len <= self.max_message_len => len,
            _ => {
                return Err(WireError::MessageTooLarge {
                    len: usize::try_from(len).unwrap_or(usize::MAX),
                    max: self.max_message_len,
                });
            }
        };
        // Reserved as announced up to `IMAGE_RESERVE_LEN` (beyond it the buffer grows as
        // pieces come), and only touched as pieces arrive: a head alone costs no resident
        // memory, and a peer's word reserves no more address space than that.
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(len.min(IMAGE_RESERVE_LEN))
            .map_err(|_| WireError::MessageTooLarge {
                len,
                max: self.max_message_len,
            })?;
        self.image = Some(IncomingImage {
            of,
            region,
            version,
            len,
            bytes,
        });
        Ok(None)
    }

    /// The next piece of the image being received.
    fn push_image(
        &mut self,
        header: FrameHeader,
        payload: &[u8],
    ) -> Result<Option<Message>, WireError> {
        let Some(image) = &mut self.image else {
            return Ok(None);
        };
        let got = image.bytes.len() + payload.len();
        let complete = got == image.len;
        if payload.is_empty() || got > image.len || header.more == complete {
            let err = WireError::ImageLength {
                announced: image.len,
                got,
                more: header.more,
            };
            self.clear();
            return Err(err);
        }
        image.bytes.extend_from_slice(payload);
        if header.more {
            return Ok(None);
        }
        Ok(self.image.take().map(IncomingImage::into_message))
    }

    /// Whether an image is being received (its head came, not all its pieces): a message
    /// delivered now passed the rest of it.
    pub fn receiving_image(&self) -> bool {
        self.image.is_some()
    }

    /// Bytes of the message in progress.
    pub fn pending_bytes(&self) -> usize {
        self.pending + self.image.as_ref().map_or(0, |i| i.bytes.len())
    }

    /// Drops the message in progress, and its memory.
    pub fn clear(&mut self) {
        self.pieces = Vec::new();
        self.pending = 0;
        self.image = None;
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

    /// The frames as flat buffers (as they are written).
    fn encode_fragments(
        msg: &Message,
        fragment_len: usize,
        max_message_len: usize,
        prefix_len: usize,
    ) -> Result<Vec<Vec<u8>>, WireError> {
        super::encode_fragments(msg.clone(), fragment_len, max_message_len, prefix_len)
            .map(|m| m.frames.iter().map(EncodedFrame::to_vec).collect())
    }

    #[test]
    fn an_images_pieces_are_slices_of_it_not_copies() {
        let msg = data(2500);
        let encoded = super::encode_fragments(msg, 1000, usize::MAX, SEQ_TEST_PREFIX).unwrap();
        assert_eq!(encoded.lane, Lane::Image(RegionId::new(NodeId(1), 7)));
        let frames = encoded.frames;
        assert_eq!(frames.len(), 4, "a head and three pieces");
        assert!(frames[0].body().is_empty(), "the head is archived whole");
        let pieces = &frames[1..];
        for w in pieces.windows(2) {
            let (a, b) = (w[0].body(), w[1].body());
            assert_eq!(
                a.as_ptr().wrapping_add(a.len()),
                b.as_ptr(),
                "consecutive pieces of one buffer"
            );
        }
        let lens: Vec<_> = pieces.iter().map(|f| f.body().len()).collect();
        assert_eq!(lens, [1000, 1000, 500]);
        for f in pieces {
            assert_eq!(
                f.head().len(),
                SEQ_TEST_PREFIX + HEADER_LEN,
                "head: prefix and header"
            );
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

    /// A message archived whole however long (a placed create's bytes do not follow it).
    fn create_at(len: usize) -> Message {
        Message::CreateAt {
            request: 9,
            fingerprint: 5,
            type_name: "T".into(),
            bytes: (0..len).map(|i| (i * 7 % 253) as u8).collect(),
        }
    }

    #[test]
    fn a_big_archive_is_cut_and_joined_again() {
        let msg = create_at(10_000);
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
    fn a_big_image_follows_its_head_raw() {
        for msg in [
            data(10_000),
            Message::RecallAck {
                region: RegionId::new(NodeId(1), 7),
                image: Some(RegionImage {
                    bytes: vec![4; 2500],
                    version: 9,
                }),
            },
            Message::Flush {
                region: RegionId::new(NodeId(1), 7),
                image: Some(RegionImage {
                    bytes: vec![5; 1001],
                    version: 1,
                }),
            },
        ] {
            let frames = encode_fragments(&msg, 1000, usize::MAX, 0).unwrap();
            let head = wire::decode_frame(&frames[0]).unwrap();
            let (Message::Data { image, .. }
            | Message::RecallAck { image, .. }
            | Message::Flush { image, .. }) = &msg
            else {
                unreachable!()
            };
            let image = image.as_ref().unwrap();
            assert!(
                matches!(head, Message::ImageFollows { len, version, .. } if len == image.bytes.len() as u64 && version == image.version),
                "{head:?}"
            );
            // The image's bytes are the frames' payloads, raw and in order.
            let raw: Vec<u8> = frames[1..]
                .iter()
                .flat_map(|f| f[HEADER_LEN..].iter().copied())
                .collect();
            assert_eq!(raw, image.bytes);
            assert_eq!(reassemble(&frames, 0, usize::MAX).unwrap(), vec![msg]);
        }
        // An image of at most one fragment stays in its archive.
        let frames = encode_fragments(&data(900), 1000, usize::MAX, 0).unwrap();
        assert!(matches!(
            wire::decode_frame(&frames[0]).unwrap(),
            Message::Data { .. }
        ));
    }

    #[test]
    fn a_message_over_the_limit_is_refused_at_both_ends() {
        for msg in [create_at(10_000), data(10_000)] {
            let err = encode_fragments(&msg, 1000, 5000, 0).unwrap_err();
            assert!(
                matches!(err, WireError::MessageTooLarge { max: 5000, len } if len >= 10_000),
                "{err}"
            );
        }
        // A peer that sends it anyway is refused once its pieces pass the bound, or at the
        // head that announces an image over it.
        let frames = encode_fragments(&create_at(10_000), 1000, usize::MAX, 0).unwrap();
        assert_eq!(
            reassemble(&frames, 0, 5000).unwrap_err(),
            WireError::MessageTooLarge {
                len: 6000,
                max: 5000
            }
        );
        let frames = encode_fragments(&data(10_000), 1000, usize::MAX, 0).unwrap();
        assert_eq!(
            reassemble(&frames, 0, 5000).unwrap_err(),
            WireError::MessageTooLarge {
                len: 10_000,
                max: 5000
            }
        );
    }

    #[test]
    fn image_pieces_that_do_not_add_up_are_violations_and_leave_nothing() {
        let frames = encode_fragments(&data(3000), 1000, usize::MAX, 0).unwrap();
        assert_eq!(frames.len(), 4, "a head and three pieces");
        let header =
            |f: &Vec<u8>| wire::parse_fragment_header(f[..HEADER_LEN].try_into().unwrap()).unwrap();
        let piece = |f: &Vec<u8>| f[HEADER_LEN..].to_vec();
        let start = || {
            let mut r = Reassembly::new(1 << 20);
            assert_eq!(r.push(header(&frames[0]), &mut piece(&frames[0])), Ok(None));
            r
        };
        let more = |len| FrameHeader {
            payload_len: len,
            more: true,
            image: true,
        };
        let last = |len| FrameHeader {
            payload_len: len,
            more: false,
            image: true,
        };
        // An empty piece; one past the announced length; an end before it; more after it.
        let cases: Vec<Vec<(FrameHeader, Vec<u8>)>> = vec![
            vec![(more(0), vec![])],
            vec![(more(2000), vec![1; 2000]), (last(1001), vec![1; 1001])],
            vec![(last(1000), vec![1; 1000])],
            vec![(more(2000), vec![1; 2000]), (more(1000), vec![1; 1000])],
        ];
        for case in cases {
            let mut r = start();
            let n = case.len();
            for (i, (h, mut p)) in case.into_iter().enumerate() {
                let got = r.push(h, &mut p);
                if i + 1 < n {
                    assert_eq!(got, Ok(None));
                } else {
                    assert!(matches!(got, Err(WireError::ImageLength { .. })), "{got:?}");
                }
            }
            assert_eq!(r.pending_bytes(), 0);
            // Nothing of it is left: a whole small message decodes on its own.
            let small = wire::encode(&data(10)).unwrap();
            assert_eq!(
                r.push(header(&small), &mut piece(&small)),
                Ok(Some(data(10)))
            );
        }
        // A head announcing an empty image.
        let head = Message::ImageFollows {
            of: ImageOf::Flush,
            region: RegionId::new(NodeId(1), 7),
            version: 1,
            len: 0,
        };
        let f = wire::encode(&head).unwrap();
        assert!(matches!(
            Reassembly::new(1 << 20).push(header(&f), &mut piece(&f)),
            Err(WireError::ImageLength { announced: 0, .. })
        ));
        // A clear (a new session) drops an image in progress.
        let mut r = start();
        r.push(more(1000), &mut vec![1; 1000]).unwrap();
        assert_eq!(r.pending_bytes(), 1000);
        r.clear();
        assert_eq!(r.pending_bytes(), 0);
        let small = wire::encode(&data(10)).unwrap();
        assert_eq!(
            r.push(header(&small), &mut piece(&small)),
            Ok(Some(data(10)))
        );
    }

    #[test]
    fn empty_or_damaged_pieces_are_violations_and_leave_nothing() {
        let mut r = Reassembly::new(1 << 20);
        let more = FrameHeader {
            payload_len: 0,
            more: true,
            image: false,
        };
        assert_eq!(r.push(more, &mut Vec::new()), Err(WireError::EmptyFragment));
        // A damaged piece in the middle: the joined archive fails validation.
        let msg = create_at(5000);
        let mut frames = encode_fragments(&msg, 1000, usize::MAX, 0).unwrap();
        let last = frames.len() - 1;
        let n = frames[last].len();
        // The root (at the archive's end) overwritten: its enum tag is no variant.
        for b in &mut frames[last][n - 40..] {
            *b = 0xff;
        }
        let got = reassemble(&frames, 0, usize::MAX);
        assert!(matches!(got, Err(WireError::Invalid(_))), "{:?}", got.err());
        let mut r = Reassembly::new(1 << 20);
        let h = FrameHeader {
            payload_len: 4,
            more: true,
            image: false,
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

    fn small_data(region: u64) -> Message {
        Message::Data {
            region: RegionId::new(NodeId(1), region),
            grant: Grant::Shared,
            image: Some(RegionImage {
                bytes: vec![5; 10],
                version: 1,
            }),
        }
    }

    #[test]
    fn lanes_say_which_messages_may_pass_an_image() {
        let lane = |m: Message, fragment_len| {
            super::encode_fragments(m, fragment_len, usize::MAX, 0)
                .unwrap()
                .lane
        };
        let a = RegionId::new(NodeId(1), 7);
        assert_eq!(lane(data(3000), 1000), Lane::Image(a));
        assert_eq!(lane(data(10), 1000), Lane::Passes(Some(a)));
        assert_eq!(lane(Message::Ping { nonce: 1 }, 1000), Lane::Passes(None));
        assert_eq!(lane(Message::TxDone { txid: 1 }, 1000), Lane::InOrder);
        // A message of several frames has its lane too (the session keeps it in order).
        let map_ok = Message::MapOk {
            region: RegionId::new(NodeId(1), 3),
        };
        assert_eq!(lane(map_ok.clone(), 8), lane(map_ok, 1000));
        assert!(Lane::Passes(None).may_pass_image_of(a));
        assert!(Lane::Passes(Some(RegionId::new(NodeId(1), 8))).may_pass_image_of(a));
        assert!(!Lane::Passes(Some(a)).may_pass_image_of(a));
        assert!(!Lane::InOrder.may_pass_image_of(a));
        assert!(!Lane::Image(RegionId::new(NodeId(1), 8)).may_pass_image_of(a));
    }

    /// Issue 10 (head-of-line): a message of another region, a ping or a pong between two
    /// pieces of an image is delivered as it comes, before the image's message; the image
    /// still comes out whole.
    #[test]
    fn a_message_between_pieces_is_delivered_before_the_image() {
        let image = encode_fragments(&data(3000), 1000, usize::MAX, 0).unwrap();
        let mut frames = image.clone();
        frames.insert(2, wire::encode(&small_data(3)).unwrap());
        frames.insert(1, wire::encode(&Message::Pong { nonce: 4 }).unwrap());
        assert_eq!(
            reassemble(&frames, 0, usize::MAX).unwrap(),
            vec![Message::Pong { nonce: 4 }, small_data(3), data(3000)]
        );
        // Receiving an image: from its head until its last piece.
        let mut r = Reassembly::new(usize::MAX);
        let mut receiving = Vec::new();
        for f in &image {
            let h = wire::parse_fragment_header(f[..HEADER_LEN].try_into().unwrap()).unwrap();
            r.push(h, &mut f[HEADER_LEN..].to_vec()).unwrap();
            receiving.push(r.receiving_image());
        }
        assert_eq!(receiving, [true, true, true, false]);
    }

    /// What may not pass an image is refused where it comes between its pieces, and so is a
    /// piece with no image announced.
    #[test]
    fn a_message_that_may_not_pass_or_a_stray_piece_is_a_violation() {
        let image = encode_fragments(&data(3000), 1000, usize::MAX, 0).unwrap();
        let a = RegionId::new(NodeId(1), 7);
        let archive_piece = encode_fragments(&create_at(100), 40, usize::MAX, 0).unwrap();
        for (intruder, kind) in [
            (wire::encode(&small_data(7)).unwrap(), "Data"),
            (
                wire::encode(&Message::TxDone { txid: 1 }).unwrap(),
                "TxDone",
            ),
            (archive_piece[0].clone(), "fragment of a longer message"),
        ] {
            let mut frames = image.clone();
            frames.insert(2, intruder);
            assert_eq!(
                reassemble(&frames[..3], 0, usize::MAX).unwrap_err(),
                WireError::MayNotPass { kind, region: a }
            );
        }
        // A piece alone, with no head before it.
        let mut r = Reassembly::new(usize::MAX);
        let h = wire::parse_fragment_header(image[1][..HEADER_LEN].try_into().unwrap()).unwrap();
        assert!(h.image && h.more);
        assert_eq!(
            r.push(h, &mut image[1][HEADER_LEN..].to_vec()),
            Err(WireError::PieceWithoutImage)
        );
        // The pieces are flagged, the head is not.
        let flags = |f: &Vec<u8>| u16::from_le_bytes([f[6], f[7]]);
        assert_eq!(flags(&image[0]), 0);
        assert_eq!(flags(&image[1]), wire::FLAG_IMAGE | wire::FLAG_MORE);
        assert_eq!(flags(&image[3]), wire::FLAG_IMAGE);
    }

    proptest! {
        /// Any sequence of messages, cut at any fragment length, comes back whole and in
        /// order; every frame stays within the fragment length.
        #[test]
        fn fragments_round_trip(
            lens in proptest::collection::vec(0usize..5000, 1..6),
            fragment_len in 1usize..3000,
        ) {
            let msgs: Vec<Message> = lens
                .iter()
                .map(|&l| if l % 2 == 0 { data(l) } else { create_at(l) })
                .collect();
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
