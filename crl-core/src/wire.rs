//! The wire format: every protocol message, and how it is framed and validated.
//!
//! One [`Message`] enum covers the whole coherence protocol. Messages are archived with rkyv in
//! a format pinned by this crate's rkyv features (little endian, aligned, 32-bit relative
//! pointers), so the bytes are the same on every platform. A frame is a fixed header (magic,
//! protocol version, payload length) followed by the archived message; frames from the network
//! are untrusted and are decoded only through validated access.
//!
//! # Frame layout
//!
//! Every integer of the header is little endian; the header is [`HEADER_LEN`] = 12 bytes:
//!
//! ```text
//! offset  size  field
//!      0     4  magic        = MAGIC (b"CRLM")
//!      4     2  version      = PROTOCOL_VERSION
//!      6     2  flags        = 0, or FLAG_MORE on a fragment that is not a message's last,
//!                            and FLAG_IMAGE on a raw piece of an image that follows its head
//!      8     4  payload_len  <= MAX_FRAME_LEN
//!     12     n  payload      the rkyv archive of a Message (or a piece of one, or of an image
//!                            that follows its head), n = payload_len bytes
//! ```
//!
//! A message whose archive is longer than one frame travels as several frames on a session
//! (see [`crate::fragment`]): each carries the next piece of the archive, every one but the
//! last with [`FLAG_MORE`]. A message with an image longer than a fragment is sent as its
//! head ([`Message::ImageFollows`]) followed by the image's raw bytes in the same way, each
//! piece flagged [`FLAG_IMAGE`] (a message that may pass the rest of the image
//! ([`Message::lane`]) can come between them). Outside a session (handshakes,
//! acknowledgements) no flag is valid.
//!
//! The payload is the output of `rkyv::to_bytes` for the [`Message`]: the archived root sits at
//! the end of the payload, out-of-line data (image bytes) before it. Archived layouts are
//! fixed by the pinned rkyv format, so a given message always encodes to the same bytes; the
//! golden vectors in this module's tests detect any drift across platforms or releases.
//!
//! # Validation rules
//!
//! Frames come from the network and are untrusted. Decoding never panics and never trusts a
//! byte before checking it:
//!
//! 1. [`parse_header`] checks the magic, the version (exactly [`PROTOCOL_VERSION`]), that no
//!    flag is set ([`parse_fragment_header`]: no flag but [`FLAG_MORE`] and [`FLAG_IMAGE`]),
//!    and that `payload_len <= MAX_FRAME_LEN`, so a stream reader
//!    allocates at most [`MAX_FRAME_LEN`] bytes for a payload.
//! 2. [`decode_frame`] requires exactly `HEADER_LEN + payload_len` bytes: missing bytes give
//!    [`WireError::Truncated`], extra ones [`WireError::TrailingBytes`].
//! 3. The payload is copied into an aligned buffer ([`rkyv::util::AlignedVec`]) and checked
//!    with bytecheck (`rkyv::access`) before deserialization: enum tags, relative pointers
//!    and lengths must all stay within the payload; any failure is [`WireError::Invalid`].
//!
//! A version bump is required for any change to [`Message`] or the types it contains (adding,
//! removing or reordering variants or fields, changing a field's type).

use crate::region::RegionId;
use rkyv::rancor;
use rkyv::util::AlignedVec;

pub use defs::{
    ArchivedGrant, ArchivedImageOf, ArchivedMessage, ArchivedRecall, ArchivedRefusal,
    ArchivedRegionImage, ArchivedTxImage, Grant, ImageOf, Message, Recall, Refusal, RegionImage,
    TxImage,
};

/// The priority of a request that no transaction made: younger than every transaction.
///
/// Priorities order requests for wound-wait (DESIGN.md §5): a lower value is an older
/// transaction, which wins a conflict. See the engine's module docs for how they travel.
pub const PRIORITY_NONE: u64 = u64::MAX;

/// The message types. They live in a private module, re-exported above, because the rkyv
/// derive also generates resolver types (`MessageResolver`, ...) whose fields carry no docs;
/// kept private, those never trip the `missing_docs` lint, while everything exported is
/// documented.
mod defs {
    use crate::region::{NodeId, RegionId};

    /// A region's contents as shipped between nodes: its version and its archived bytes.
    #[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    #[rkyv(derive(Debug))]
    pub struct RegionImage {
        /// The region's version: bumped by every completed write.
        pub version: u64,
        /// The region value archived by [`Region::encode_region`](crate::region::Region::encode_region).
        pub bytes: Vec<u8>,
    }

    /// A region's committed contents in a transaction-commit message: the region and its new
    /// image, archived by [`Region::encode_region`](crate::region::Region::encode_region).
    #[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    #[rkyv(derive(Debug))]
    pub struct TxImage {
        /// The region written.
        pub region: RegionId,
        /// Its new contents.
        pub bytes: Vec<u8>,
    }

    /// The access a [`Message::Data`] grants.
    #[derive(
        Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
    )]
    #[rkyv(derive(Debug))]
    pub enum Grant {
        /// A read-only copy; other nodes may hold copies too.
        Shared,
        /// The only valid copy, which the holder may modify.
        Exclusive,
    }

    /// The message an [`Message::ImageFollows`] stands for.
    #[derive(
        Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
    )]
    #[rkyv(derive(Debug))]
    pub enum ImageOf {
        /// A [`Message::Data`] granting this access.
        Data {
            /// The access granted.
            grant: Grant,
        },
        /// A [`Message::RecallAck`].
        RecallAck,
        /// A [`Message::Flush`].
        Flush,
    }

    /// What a home asks of a node holding a copy.
    #[derive(
        Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
    )]
    #[rkyv(derive(Debug))]
    pub enum Recall {
        /// Drop the copy (returning it if modified).
        Invalidate,
        /// Keep a read-only copy, returning the modified contents.
        Downgrade,
        /// The region is being deleted: drop the copy; later accesses fail.
        Delete,
    }

    /// Why a home refused a request for a region.
    #[derive(
        Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
    )]
    #[rkyv(derive(Debug))]
    pub enum Refusal {
        /// The region was deleted.
        Deleted,
        /// The home has never created a region with this id.
        NoSuchRegion,
        /// The region exists with another type; its fingerprint is given.
        WrongType {
            /// The fingerprint of the region's actual type.
            actual: u64,
        },
        /// The region's encoded image is larger than one message may carry (the session's
        /// message limit, `max_region_len`), so it cannot be shipped.
        TooLarge {
            /// The image's length in bytes.
            len: u64,
            /// The largest image a message may carry.
            max: u64,
        },
        /// The home homes as many regions as other nodes may place there
        /// (`EngineConfig::max_homed_regions`).
        Full {
            /// The limit.
            limit: u64,
        },
        /// The create named a type longer than [`MAX_TYPE_NAME_LEN`](super::MAX_TYPE_NAME_LEN).
        BadTypeName,
    }

    /// A message of the coherence protocol. R is a requester, H the region's home, O a node
    /// holding a copy.
    #[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    #[rkyv(derive(Debug))]
    pub enum Message {
        /// R→H: check that a region exists with this type before mapping it.
        Map {
            /// The region.
            region: RegionId,
            /// The fingerprint of the type R maps it as.
            fingerprint: u64,
        },
        /// H→R: the region exists with the requested type.
        MapOk {
            /// The region.
            region: RegionId,
        },
        /// R→H: a read-only copy, please.
        GetShared {
            /// The region.
            region: RegionId,
            /// The fingerprint of the type R holds it as.
            fingerprint: u64,
            /// The oldest priority of the local operations waiting for this request
            /// ([`PRIORITY_NONE`](super::PRIORITY_NONE) if no transaction waits).
            priority: u64,
        },
        /// R→H: the exclusive (writable) copy, please. If H still lists R as a sharer, H answers
        /// with an upgrade (a [`Message::Data`] without an image).
        GetExclusive {
            /// The region.
            region: RegionId,
            /// The fingerprint of the type R holds it as.
            fingerprint: u64,
            /// The oldest priority of the local operations waiting for this request
            /// ([`PRIORITY_NONE`](super::PRIORITY_NONE) if no transaction waits).
            priority: u64,
        },
        /// H→R: the answer to a get; `image` is `None` only for an upgrade of a copy R holds.
        Data {
            /// The region.
            region: RegionId,
            /// The access granted.
            grant: Grant,
            /// The contents, unless R's shared copy is current (upgrade).
            image: Option<RegionImage>,
        },
        /// H→O: give up (or downgrade) the copy; answered by [`Message::RecallAck`].
        Recall {
            /// The region.
            region: RegionId,
            /// What to do with the copy.
            kind: Recall,
            /// The oldest priority of the requests waiting for this recall (the one being
            /// served and those queued behind it).
            priority: u64,
        },
        /// O→H: the recall is done; the image is the modified contents, if O had them.
        RecallAck {
            /// The region.
            region: RegionId,
            /// The contents, if O held the region modified.
            image: Option<RegionImage>,
        },
        /// O→H: O dropped its copy voluntarily (flush or eviction); the image if it was modified.
        Flush {
            /// The region.
            region: RegionId,
            /// The contents, if O held the region modified.
            image: Option<RegionImage>,
        },
        /// H→O: the flush has been applied at the home.
        FlushAck {
            /// The region.
            region: RegionId,
        },
        /// R→H: delete the region.
        Delete {
            /// The region.
            region: RegionId,
            /// A transaction committed the delete: R's copy already admits no access and is
            /// given up with this message, so the home does not recall it.
            committed: bool,
        },
        /// H→R: the region is deleted; every copy has been dropped.
        DeleteAck {
            /// The region.
            region: RegionId,
        },
        /// H→R: a map, get or delete was refused.
        Refused {
            /// The region.
            region: RegionId,
            /// Why.
            reason: Refusal,
        },
        /// R→H: a local operation with this (older) priority now waits on R's pending request
        /// for the region. H→O: a request with this priority waits for O's copy. Only ever
        /// lowers the priority a wait is known under; stale ones are ignored.
        Contend {
            /// The region.
            region: RegionId,
            /// The priority now waiting.
            priority: u64,
        },
        /// First message on every connection (used by the transport, not the engine): who the
        /// sender claims to be, and which cluster it belongs to.
        Hello {
            /// The cluster's id; nodes of other clusters are refused.
            cluster_id: u64,
            /// The sender's node id (must match its certificate).
            node: NodeId,
            /// The sender's incarnation number (only grows: bumped at every start).
            epoch: u64,
            /// The sender's session generation towards the receiver within its incarnation
            /// (bumped each time the sender fences the receiver).
            generation: u64,
            /// The receiver's incarnation the sender's queued messages are meant for (0: the
            /// sender has never heard from the receiver).
            peer_epoch: u64,
            /// The receiver's session generation the sender's queued messages are meant for.
            peer_generation: u64,
        },
        /// Answer to a [`Message::Hello`] on the same stream (transport, not the engine): the
        /// receiver's incarnation and how far it got in the sender's session, so the sender
        /// re-sends exactly what was not delivered.
        HelloAck {
            /// The receiver's incarnation number.
            epoch: u64,
            /// The receiver's session generation towards the sender.
            generation: u64,
            /// The highest message number of the sender's session delivered so far (every
            /// lower one was delivered too).
            received: u64,
        },
        /// Cumulative acknowledgement on a link's stream (transport, not the engine): every
        /// message up to `received` was delivered; the sender may forget them.
        Ack {
            /// The highest message number delivered.
            received: u64,
        },
        /// Lease heartbeat (liveness, not the engine): answered at once with a
        /// [`Message::Pong`] carrying the same nonce. The sender's lease on the receiver's
        /// regions runs from the moment it sent the ping (DESIGN.md §6, rule 2).
        Ping {
            /// Chosen by the sender; echoed in the answer.
            nonce: u64,
        },
        /// Answer to a [`Message::Ping`].
        Pong {
            /// The ping's nonce.
            nonce: u64,
        },
        /// Writer→deciding home (transaction layer, not the engine): commit these images at
        /// the receiver, which decides the transaction. With no `participants` that is a
        /// one-phase commit; otherwise each participant was sent a [`Message::TxPrepare`]
        /// naming the receiver as its coordinator, votes to the receiver, and the receiver
        /// logs the decision (so a writer that is cut off or fenced blocks no home). Answered
        /// by [`Message::TxDecide`] (committed) or [`Message::TxReply`] with `ok: false`.
        TxCommit {
            /// The transaction.
            txid: u64,
            /// The new images of the regions written (all homed at the receiver).
            writes: Vec<TxImage>,
            /// The regions deleted.
            deletes: Vec<RegionId>,
            /// The other homes, each prepared with the receiver as coordinator.
            participants: Vec<NodeId>,
        },
        /// Coordinator→participant home (transaction layer): two-phase commit, phase 1;
        /// answered by a vote ([`Message::TxReply`]).
        TxPrepare {
            /// The transaction.
            txid: u64,
            /// The coordinator to ask after a crash.
            coordinator: NodeId,
            /// The new images of the regions written (all homed at the receiver).
            writes: Vec<TxImage>,
            /// The regions deleted.
            deletes: Vec<RegionId>,
        },
        /// H→writer (transaction layer): the answer to a [`Message::TxCommit`] or the vote on a
        /// [`Message::TxPrepare`].
        TxReply {
            /// The transaction.
            txid: u64,
            /// Committed (one phase) or prepared (vote yes).
            ok: bool,
            /// Why not, when `ok` is false (empty otherwise).
            reason: String,
        },
        /// Coordinator→participant (transaction layer): phase 2, and the answer to a
        /// [`Message::TxInquire`].
        TxDecide {
            /// The transaction.
            txid: u64,
            /// Commit (true) or abort.
            commit: bool,
        },
        /// Participant→coordinator (transaction layer): the decision is durable and applied.
        TxDone {
            /// The transaction.
            txid: u64,
        },
        /// Recovering participant→coordinator (transaction layer): what was decided?
        TxInquire {
            /// The transaction.
            txid: u64,
        },
        /// R→H (placement): create a region homed at H with these first contents
        /// (`Node::create_at`).
        CreateAt {
            /// R's number for the request, echoed in the answer.
            request: u64,
            /// The fingerprint of the region's type.
            fingerprint: u64,
            /// The name of the region's type (at most [`MAX_TYPE_NAME_LEN`](super::MAX_TYPE_NAME_LEN) bytes).
            type_name: String,
            /// The region's first contents, archived by
            /// [`Region::encode_region`](crate::region::Region::encode_region).
            bytes: Vec<u8>,
        },
        /// H→R (placement): the region of `request` exists (and is logged, at a home with a
        /// data dir).
        Created {
            /// R's number for the request.
            request: u64,
            /// The new region.
            region: RegionId,
        },
        /// H→R (placement): the create of `request` was refused; nothing was created.
        CreateRefused {
            /// R's number for the request.
            request: u64,
            /// Why.
            reason: Refusal,
        },
        /// The head of a [`Message::Data`], [`Message::RecallAck`] or [`Message::Flush`]
        /// whose image is longer than a fragment: the image's bytes follow it raw, in the
        /// session's next frames (exactly `len` bytes, each frame flagged
        /// [`FLAG_IMAGE`](super::FLAG_IMAGE), [`FLAG_MORE`](super::FLAG_MORE) on every one but
        /// the last), so neither end copies them into and out of an archive
        /// (see [`crate::fragment`]). The receiving session joins the two into the message
        /// `of` names; an engine never sees this one.
        ImageFollows {
            /// The message it stands for.
            of: ImageOf,
            /// The region.
            region: RegionId,
            /// The image's version.
            version: u64,
            /// The image's length in bytes (at least 1).
            len: u64,
        },
    }
}

/// The longest type name a [`Message::CreateAt`] may carry, in bytes.
pub const MAX_TYPE_NAME_LEN: usize = 1024;

/// The frame magic: the first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"CRLM";

/// The wire protocol version carried by every frame. Only frames of exactly this version are
/// accepted. Bump it for any change to the encoding of [`Message`].
pub const PROTOCOL_VERSION: u16 = 9;

/// The header flag of a fragment that is not its message's last (see [`crate::fragment`]).
pub const FLAG_MORE: u16 = 0x0001;

/// The header flag of a raw piece of an image that follows its [`Message::ImageFollows`]
/// (see [`crate::fragment`]); a frame without it between two pieces is a message that passed
/// the rest of the image ([`Lane::Passes`]).
pub const FLAG_IMAGE: u16 = 0x0002;

/// A checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The payload length that follows, at most [`MAX_FRAME_LEN`].
    pub payload_len: usize,
    /// [`FLAG_MORE`] is set: the message continues in the session's next frame.
    pub more: bool,
    /// [`FLAG_IMAGE`] is set: the payload is a raw piece of the image being received.
    pub image: bool,
}

/// The length of a frame header: `[magic:4][version:u16][reserved:u16][payload_len:u32]`.
pub const HEADER_LEN: usize = 12;

/// The largest payload (archived message, header excluded) a frame may carry: 16 MiB.
///
/// [`encode_frame`] refuses to produce a larger frame and [`parse_header`] rejects a header
/// announcing one before anything is allocated, so a peer can make a reader allocate at most
/// this much per frame. Longer messages (big region images) travel as several frames: see
/// [`crate::fragment`].
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Error encoding or decoding a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame does not start with [`MAGIC`].
    #[error("bad frame magic")]
    BadMagic,
    /// The frame's protocol version is not [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {got} (supported: {supported})")]
    UnsupportedVersion {
        /// The version the frame carries.
        got: u16,
        /// The version this build speaks.
        supported: u16,
    },
    /// The header's flags field has a bit that is not valid where the frame was read (only
    /// [`FLAG_MORE`] and [`FLAG_IMAGE`] are defined, and only on a session's frames).
    #[error("header flags {0:#06x} not valid here")]
    ReservedBits(u16),
    /// A message longer than the limit of the session that carries it.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// The archived length (or what the fragments received so far add up to).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A fragment announcing more to come but carrying nothing.
    #[error("empty fragment")]
    EmptyFragment,
    /// The pieces of an image that follows its [`Message::ImageFollows`] do not add up to
    /// the announced length (an empty piece, one past the length, or an end flag that does
    /// not match it).
    #[error("image piece ends at byte {got} of {announced} announced (more flag {more})")]
    ImageLength {
        /// The length the head announced.
        announced: usize,
        /// Where this piece would end the image.
        got: usize,
        /// Whether the piece announced more.
        more: bool,
    },
    /// A raw piece of an image ([`FLAG_IMAGE`]) with no image announced before it.
    #[error("image piece with no image announced")]
    PieceWithoutImage,
    /// A message came between the pieces of an image that it may not pass
    /// ([`Message::lane`]): one about the image's own region, one in several frames, or one
    /// that keeps its place in the session's order.
    #[error("a {kind} came between the pieces of an image of {region} and may not pass it")]
    MayNotPass {
        /// The message's kind ([`Message::kind_name`]).
        kind: &'static str,
        /// The region whose image it came into.
        region: RegionId,
    },
    /// The payload is larger than [`MAX_FRAME_LEN`].
    #[error("frame payload of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The payload length (announced by the header, or produced by the encoder).
        len: usize,
        /// [`MAX_FRAME_LEN`].
        max: usize,
    },
    /// The frame is shorter than its header says.
    #[error("truncated frame: {got} bytes, expected {needed}")]
    Truncated {
        /// The bytes the frame needs (header, then header and payload).
        needed: usize,
        /// The bytes present.
        got: usize,
    },
    /// The frame is longer than its header says.
    #[error("{extra} trailing bytes after the frame payload")]
    TrailingBytes {
        /// How many bytes follow the payload.
        extra: usize,
    },
    /// The payload is not a valid archived [`Message`] (validation failed).
    #[error("invalid message payload: {0}")]
    Invalid(String),
    /// Serializing the message failed.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Where a message goes on a session relative to the pieces of a big image still to be
/// written before it (see [`crate::session`] and [`crate::fragment`]).
///
/// A session delivers in order, but a small message should not wait for hundreds of
/// megabytes of another region's image. The messages of one region are handled by that
/// region's state machine alone, and pings and pongs only time the link, so such a message
/// may be written before the rest of an image of another region; every other message keeps
/// its place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Keeps its place behind everything sent before it.
    InOrder,
    /// A message that may pass the rest of an image of any region but its own (`None`: a
    /// ping or pong, which has no region), if it travels in one frame.
    Passes(Option<RegionId>),
    /// A message of `region` whose image follows its head as raw pieces: the pieces are the
    /// ones other messages may pass.
    Image(RegionId),
}

impl Lane {
    /// Whether a message of this lane may come before the rest of an image of `region`.
    pub fn may_pass_image_of(self, region: RegionId) -> bool {
        match self {
            Lane::Passes(None) => true,
            Lane::Passes(Some(r)) => r != region,
            Lane::InOrder | Lane::Image(_) => false,
        }
    }
}

impl Message {
    /// The message's [`Lane`]: a message about one region (but an
    /// [`ImageFollows`](Message::ImageFollows) head), a ping and a pong may pass the rest of
    /// another region's image; the others (handshakes, transactions, placement) keep their
    /// place. Only a message of one frame passes: one in several frames keeps its place
    /// whatever this says ([`crate::session::SendSession::push_all`]).
    pub fn lane(&self) -> Lane {
        match self {
            Message::Ping { .. } | Message::Pong { .. } => Lane::Passes(None),
            other => other
                .region()
                .map_or(Lane::InOrder, |r| Lane::Passes(Some(r))),
        }
    }

    /// The bytes of region contents the message carries (images, transaction writes, a
    /// placed region's first contents): what dominates its encoded length.
    pub fn payload_hint(&self) -> usize {
        use Message::*;
        match self {
            Data { image, .. } | RecallAck { image, .. } | Flush { image, .. } => {
                image.as_ref().map_or(0, |i| i.bytes.len())
            }
            TxCommit { writes, .. } | TxPrepare { writes, .. } => {
                writes.iter().map(|w| w.bytes.len()).sum()
            }
            CreateAt { bytes, .. } => bytes.len(),
            _ => 0,
        }
    }

    /// The region a coherence message is about (`None` for [`Message::Hello`] and the
    /// transaction messages, which may concern many regions).
    pub fn region(&self) -> Option<RegionId> {
        use Message::*;
        match self {
            Map { region, .. }
            | MapOk { region }
            | GetShared { region, .. }
            | GetExclusive { region, .. }
            | Data { region, .. }
            | Recall { region, .. }
            | RecallAck { region, .. }
            | Flush { region, .. }
            | FlushAck { region }
            | Delete { region, .. }
            | DeleteAck { region }
            | Refused { region, .. }
            | Contend { region, .. } => Some(*region),
            Hello { .. }
            | HelloAck { .. }
            | Ack { .. }
            | Ping { .. }
            | Pong { .. }
            | TxCommit { .. }
            | TxPrepare { .. }
            | TxReply { .. }
            | TxDecide { .. }
            | TxDone { .. }
            | TxInquire { .. }
            | CreateAt { .. }
            | Created { .. }
            | CreateRefused { .. }
            | ImageFollows { .. } => None,
        }
    }

    /// Whether this is a placement message (`CreateAt`, `Created`, `CreateRefused`): handled
    /// by the node (the home creates through [`Engine::create_placed`](crate::engine::Engine::create_placed)),
    /// never fed to [`Engine::handle_message`](crate::engine::Engine::handle_message).
    pub fn is_placement(&self) -> bool {
        matches!(
            self,
            Message::CreateAt { .. } | Message::Created { .. } | Message::CreateRefused { .. }
        )
    }

    /// Whether this is a transaction-commit message (`TxCommit`, `TxPrepare`, `TxReply`,
    /// `TxDecide`, `TxDone`, `TxInquire`): handled by the transaction layer, never by the
    /// engine.
    pub fn is_transaction(&self) -> bool {
        use Message::*;
        matches!(
            self,
            TxCommit { .. }
                | TxPrepare { .. }
                | TxReply { .. }
                | TxDecide { .. }
                | TxDone { .. }
                | TxInquire { .. }
        )
    }

    /// The variant's name (`"GetShared"`, `"Data"`, ...), for logs.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Map { .. } => "Map",
            Message::MapOk { .. } => "MapOk",
            Message::GetShared { .. } => "GetShared",
            Message::GetExclusive { .. } => "GetExclusive",
            Message::Data { .. } => "Data",
            Message::Recall { .. } => "Recall",
            Message::RecallAck { .. } => "RecallAck",
            Message::Flush { .. } => "Flush",
            Message::FlushAck { .. } => "FlushAck",
            Message::Delete { .. } => "Delete",
            Message::DeleteAck { .. } => "DeleteAck",
            Message::Refused { .. } => "Refused",
            Message::Contend { .. } => "Contend",
            Message::Hello { .. } => "Hello",
            Message::HelloAck { .. } => "HelloAck",
            Message::Ack { .. } => "Ack",
            Message::Ping { .. } => "Ping",
            Message::Pong { .. } => "Pong",
            Message::TxCommit { .. } => "TxCommit",
            Message::TxPrepare { .. } => "TxPrepare",
            Message::TxReply { .. } => "TxReply",
            Message::TxDecide { .. } => "TxDecide",
            Message::TxDone { .. } => "TxDone",
            Message::TxInquire { .. } => "TxInquire",
            Message::CreateAt { .. } => "CreateAt",
            Message::Created { .. } => "Created",
            Message::CreateRefused { .. } => "CreateRefused",
            Message::ImageFollows { .. } => "ImageFollows",
        }
    }
}

/// Appends `msg` as one frame (header, then archived payload) to `out`.
///
/// Fails with [`WireError::FrameTooLarge`] if the payload would exceed [`MAX_FRAME_LEN`]; `out`
/// is left unchanged on error.
pub fn encode_frame(msg: &Message, out: &mut Vec<u8>) -> Result<(), WireError> {
    let payload =
        rkyv::to_bytes::<rancor::Error>(msg).map_err(|e| WireError::Encode(e.to_string()))?;
    if payload.len() > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge {
            len: payload.len(),
            max: MAX_FRAME_LEN,
        });
    }
    out.reserve(HEADER_LEN + payload.len());
    write_header(out, payload.len(), 0);
    out.extend_from_slice(&payload);
    Ok(())
}

/// Encodes `msg` as one frame in a new buffer. See [`encode_frame`].
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    encode_frame(msg, &mut out)?;
    Ok(out)
}

/// Checks a frame header and returns the payload length that follows it.
///
/// For stream readers: read [`HEADER_LEN`] bytes, call this, then read exactly the returned
/// number of bytes and pass them to [`decode_payload`]. The magic, version, flags (none may be
/// set) and length bound are all checked, so the returned length is at most [`MAX_FRAME_LEN`]
/// and safe to allocate.
pub fn parse_header(bytes: &[u8; HEADER_LEN]) -> Result<usize, WireError> {
    let h = parse_fragment_header(bytes)?;
    if h.more || h.image {
        return Err(WireError::ReservedBits(u16::from_le_bytes([
            bytes[6], bytes[7],
        ])));
    }
    Ok(h.payload_len)
}

/// Checks the header of a frame read from a session, where a message may come in fragments:
/// as [`parse_header`], but [`FLAG_MORE`] and [`FLAG_IMAGE`] are allowed.
pub fn parse_fragment_header(bytes: &[u8; HEADER_LEN]) -> Result<FrameHeader, WireError> {
    if bytes[0..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion {
            got: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
    if flags & !(FLAG_MORE | FLAG_IMAGE) != 0 {
        return Err(WireError::ReservedBits(flags));
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(FrameHeader {
        payload_len: len,
        more: flags & FLAG_MORE != 0,
        image: flags & FLAG_IMAGE != 0,
    })
}

/// Appends a frame header for a payload of `len` bytes (at most [`MAX_FRAME_LEN`]).
pub(crate) fn write_header(out: &mut Vec<u8>, len: usize, flags: u16) {
    debug_assert!(len <= MAX_FRAME_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    // MAX_FRAME_LEN < u32::MAX, so the length fits.
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

/// Decodes one complete frame: a header followed by exactly `payload_len` bytes.
///
/// Missing bytes are [`WireError::Truncated`], extra bytes [`WireError::TrailingBytes`]; the
/// payload is validated as by [`decode_payload`].
pub fn decode_frame(frame: &[u8]) -> Result<Message, WireError> {
    let Some((header, payload)) = frame.split_first_chunk::<HEADER_LEN>() else {
        return Err(WireError::Truncated {
            needed: HEADER_LEN,
            got: frame.len(),
        });
    };
    let len = parse_header(header)?;
    if payload.len() < len {
        return Err(WireError::Truncated {
            needed: HEADER_LEN + len,
            got: frame.len(),
        });
    }
    if payload.len() > len {
        return Err(WireError::TrailingBytes {
            extra: payload.len() - len,
        });
    }
    decode_payload(payload)
}

/// Decodes a frame's payload (the bytes after the header) into a [`Message`].
///
/// The bytes are copied into an aligned buffer and validated (bytecheck) before being
/// deserialized; invalid bytes give [`WireError::Invalid`], never a panic. Payloads longer than
/// [`MAX_FRAME_LEN`] are refused.
pub fn decode_payload(payload: &[u8]) -> Result<Message, WireError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge {
            len: payload.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    decode_aligned(&aligned)
}

/// Decodes a whole archived [`Message`] already in an aligned buffer (a reassembled message:
/// see [`crate::fragment`]), validated as by [`decode_payload`]. The caller bounds its length.
pub fn decode_aligned(archive: &AlignedVec<16>) -> Result<Message, WireError> {
    rkyv::from_bytes::<Message, rancor::Error>(archive)
        .map_err(|e| WireError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::NodeId;
    use proptest::prelude::*;

    fn rid(home: u32, seq: u64) -> RegionId {
        RegionId::new(NodeId(home), seq)
    }

    fn image(version: u64, bytes: &[u8]) -> RegionImage {
        RegionImage {
            version,
            bytes: bytes.to_vec(),
        }
    }

    /// One fixed sample per golden vector: every Message variant, every Grant, Recall and
    /// Refusal variant, and Data/RecallAck/Flush with and without an image.
    fn samples() -> Vec<(&'static str, Message)> {
        let r = rid(2, 1042);
        vec![
            (
                "map",
                Message::Map {
                    region: r,
                    fingerprint: 0x0123_4567_89ab_cdef,
                },
            ),
            ("map_ok", Message::MapOk { region: r }),
            (
                "get_shared",
                Message::GetShared {
                    region: r,
                    fingerprint: 0xfedc_ba98_7654_3210,
                    priority: PRIORITY_NONE,
                },
            ),
            (
                "get_exclusive",
                Message::GetExclusive {
                    region: r,
                    fingerprint: 7,
                    priority: 0x0102_0304_0506_0708,
                },
            ),
            (
                "data_shared_image",
                Message::Data {
                    region: r,
                    grant: Grant::Shared,
                    image: Some(image(3, b"hello")),
                },
            ),
            (
                "data_exclusive_image",
                Message::Data {
                    region: r,
                    grant: Grant::Exclusive,
                    image: Some(image(u64::MAX, &[0, 1, 2, 3, 4, 5, 6, 7, 8])),
                },
            ),
            (
                "data_upgrade",
                Message::Data {
                    region: r,
                    grant: Grant::Exclusive,
                    image: None,
                },
            ),
            (
                "recall_invalidate",
                Message::Recall {
                    region: r,
                    kind: Recall::Invalidate,
                    priority: 3,
                },
            ),
            (
                "recall_downgrade",
                Message::Recall {
                    region: r,
                    kind: Recall::Downgrade,
                    priority: PRIORITY_NONE,
                },
            ),
            (
                "recall_delete",
                Message::Recall {
                    region: r,
                    kind: Recall::Delete,
                    priority: 0,
                },
            ),
            (
                "recall_ack_none",
                Message::RecallAck {
                    region: r,
                    image: None,
                },
            ),
            (
                "recall_ack_image",
                Message::RecallAck {
                    region: r,
                    image: Some(image(9, b"xyz")),
                },
            ),
            (
                "flush_none",
                Message::Flush {
                    region: r,
                    image: None,
                },
            ),
            (
                "flush_image",
                Message::Flush {
                    region: r,
                    image: Some(image(1, b"")),
                },
            ),
            ("flush_ack", Message::FlushAck { region: r }),
            (
                "delete",
                Message::Delete {
                    region: r,
                    committed: false,
                },
            ),
            (
                "delete_committed",
                Message::Delete {
                    region: r,
                    committed: true,
                },
            ),
            ("delete_ack", Message::DeleteAck { region: r }),
            (
                "refused_deleted",
                Message::Refused {
                    region: r,
                    reason: Refusal::Deleted,
                },
            ),
            (
                "refused_no_such",
                Message::Refused {
                    region: r,
                    reason: Refusal::NoSuchRegion,
                },
            ),
            (
                "refused_wrong_type",
                Message::Refused {
                    region: r,
                    reason: Refusal::WrongType { actual: 0xabcd },
                },
            ),
            (
                "refused_too_large",
                Message::Refused {
                    region: r,
                    reason: Refusal::TooLarge {
                        len: 0x0180_0000,
                        max: 0x00ff_fc00,
                    },
                },
            ),
            (
                "contend",
                Message::Contend {
                    region: r,
                    priority: 0x55,
                },
            ),
            (
                "hello",
                Message::Hello {
                    cluster_id: 0x1122_3344_5566_7788,
                    node: NodeId(5),
                    epoch: 0x0a0b_0c0d,
                    generation: 0x07,
                    peer_epoch: 0x0e0f_1011,
                    peer_generation: 0x09,
                },
            ),
            (
                "hello_ack",
                Message::HelloAck {
                    epoch: 0x1213_1415,
                    generation: 0x03,
                    received: 0x42,
                },
            ),
            ("ack", Message::Ack { received: 0x4243 }),
            ("ping", Message::Ping { nonce: 0x5152 }),
            ("pong", Message::Pong { nonce: 0x5354 }),
            (
                "tx_commit",
                Message::TxCommit {
                    txid: 0x7001,
                    writes: vec![
                        TxImage {
                            region: r,
                            bytes: b"abc".to_vec(),
                        },
                        TxImage {
                            region: rid(2, 7),
                            bytes: vec![],
                        },
                    ],
                    deletes: vec![rid(2, 9)],
                    participants: vec![NodeId(4), NodeId(6)],
                },
            ),
            (
                "tx_prepare",
                Message::TxPrepare {
                    txid: 0x7002,
                    coordinator: NodeId(3),
                    writes: vec![TxImage {
                        region: r,
                        bytes: b"xy".to_vec(),
                    }],
                    deletes: vec![],
                },
            ),
            (
                "tx_reply_ok",
                Message::TxReply {
                    txid: 0x7003,
                    ok: true,
                    reason: String::new(),
                },
            ),
            (
                "tx_reply_refused",
                Message::TxReply {
                    txid: 0x7004,
                    ok: false,
                    reason: "region 2.1042 is not held exclusively".into(),
                },
            ),
            (
                "tx_decide",
                Message::TxDecide {
                    txid: 0x7005,
                    commit: true,
                },
            ),
            ("tx_done", Message::TxDone { txid: 0x7006 }),
            ("tx_inquire", Message::TxInquire { txid: 0x7007 }),
            (
                "create_at",
                Message::CreateAt {
                    request: 0x8001,
                    fingerprint: 0x0123_4567_89ab_cdef,
                    type_name: "Seat".into(),
                    bytes: b"abc".to_vec(),
                },
            ),
            (
                "created",
                Message::Created {
                    request: 0x8002,
                    region: r,
                },
            ),
            (
                "create_refused",
                Message::CreateRefused {
                    request: 0x8003,
                    reason: Refusal::Full { limit: 9 },
                },
            ),
            (
                "image_follows",
                Message::ImageFollows {
                    of: ImageOf::Data {
                        grant: Grant::Exclusive,
                    },
                    region: r,
                    version: 0x0102_0304,
                    len: 64 << 20,
                },
            ),
        ]
    }

    /// Prints the golden vectors in the format of [`GOLDEN`]. Run it by hand
    /// (`cargo test -p crl-core --lib wire::tests::print_golden -- --ignored --nocapture`) only
    /// when the wire format is changed on purpose, together with a PROTOCOL_VERSION bump.
    #[test]
    #[ignore]
    fn print_golden() {
        for (name, msg) in samples() {
            let bytes = encode(&msg).unwrap();
            println!("    (\n        \"{name}\",\n        &[");
            for chunk in bytes.chunks(16) {
                let line: Vec<String> = chunk.iter().map(|b| format!("0x{b:02x}")).collect();
                println!("            {},", line.join(", "));
            }
            println!("        ],\n    ),");
        }
    }

    /// The encoded frames of [`samples`], generated once by `print_golden`.
    ///
    /// A mismatch means the wire format drifted (across platforms, rkyv releases, or a change
    /// to the message types). Never regenerate these silently: a deliberate format change must
    /// bump PROTOCOL_VERSION, and an accidental one must be fixed.
    const GOLDEN: &[(&str, &[u8])] = &[
        (
            "map",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xef, 0xcd, 0xab, 0x89, 0x67, 0x45,
                0x23, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "map_ok",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x01, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "get_shared",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x02, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x32, 0x54, 0x76, 0x98, 0xba,
                0xdc, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "get_exclusive",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x03, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "data_shared_image",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x68, 0x65,
                0x6c, 0x6c, 0x6f, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x12, 0x04, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc8, 0xff,
                0xff, 0xff, 0x05, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "data_exclusive_image",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x48, 0x00, 0x00, 0x00, 0x00, 0x01,
                0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff,
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xff, 0xff, 0xff, 0x09, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "data_upgrade",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x04, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "recall_invalidate",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x05, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "recall_downgrade",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x05, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "recall_delete",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x05, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "recall_ack_none",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x06, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "recall_ack_image",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x78, 0x79,
                0x7a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x12, 0x04, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0xd0, 0xff, 0xff, 0xff, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "flush_none",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x07, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "flush_image",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x07, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xd8, 0xff, 0xff, 0xff,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "flush_ack",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x08, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "delete",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x09, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "delete_committed",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x09, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "delete_ack",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x0a, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "refused_deleted",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x0b, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "refused_no_such",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x0b, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "refused_wrong_type",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x0b, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0xcd, 0xab, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "refused_too_large",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x0b, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x80, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0xfc, 0xff, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "contend",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x0c, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x55, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "hello",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x0d, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
                0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0d, 0x0c, 0x0b, 0x0a, 0x00, 0x00,
                0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x11, 0x10, 0x0f, 0x0e,
                0x00, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "hello_ack",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x0e, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x15, 0x14, 0x13, 0x12, 0x00, 0x00, 0x00, 0x00,
                0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x42, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "ack",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x0f, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x43, 0x42, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "ping",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x10, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x52, 0x51, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "pong",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x11, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x54, 0x53, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "tx_commit",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x88, 0x00, 0x00, 0x00, 0x61, 0x62,
                0x63, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xe8, 0xff, 0xff, 0xff, 0x03, 0x00,
                0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0xd3, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x04, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x12, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x01, 0x70, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xa8, 0xff, 0xff, 0xff,
                0x02, 0x00, 0x00, 0x00, 0xd0, 0xff, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00, 0xd8, 0xff,
                0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "tx_prepare",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x58, 0x00, 0x00, 0x00, 0x78, 0x79,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xe8, 0xff, 0xff, 0xff, 0x02, 0x00,
                0x00, 0x00, 0x13, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x70, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0xd4, 0xff, 0xff, 0xff, 0x01, 0x00,
                0x00, 0x00, 0xe4, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00,
            ],
        ),
        (
            "tx_reply_ok",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x14, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x70, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x01, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "tx_reply_refused",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x60, 0x00, 0x00, 0x00, 0x72, 0x65,
                0x67, 0x69, 0x6f, 0x6e, 0x20, 0x32, 0x2e, 0x31, 0x30, 0x34, 0x32, 0x20, 0x69, 0x73,
                0x20, 0x6e, 0x6f, 0x74, 0x20, 0x68, 0x65, 0x6c, 0x64, 0x20, 0x65, 0x78, 0x63, 0x6c,
                0x75, 0x73, 0x69, 0x76, 0x65, 0x6c, 0x79, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x04, 0x70, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0xa5, 0x00, 0x00, 0x00, 0xc4, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "tx_decide",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x15, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x70, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "tx_done",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x16, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0x70, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "tx_inquire",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x17, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x70, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "create_at",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x61, 0x62,
                0x63, 0x00, 0x00, 0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x01, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xef, 0xcd, 0xab, 0x89, 0x67, 0x45,
                0x23, 0x01, 0x53, 0x65, 0x61, 0x74, 0xff, 0xff, 0xff, 0xff, 0xd8, 0xff, 0xff, 0xff,
                0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "created",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x19, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x12, 0x04, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "create_refused",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x1a, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "image_follows",
            &[
                0x43, 0x52, 0x4c, 0x4d, 0x09, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00, 0x00, 0x1b, 0x00,
                0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x12, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x03, 0x02, 0x01, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
    ];

    #[test]
    fn golden_vectors() {
        let samples = samples();
        assert_eq!(GOLDEN.len(), samples.len(), "one golden vector per sample");
        for ((name, msg), (gname, golden)) in samples.into_iter().zip(GOLDEN) {
            assert_eq!(name, *gname);
            let bytes = encode(&msg).unwrap();
            assert_eq!(
                bytes,
                *golden,
                "wire format drifted for {name} ({}): see GOLDEN",
                msg.kind_name()
            );
            assert_eq!(decode_frame(golden).unwrap(), msg, "decoding golden {name}");
        }
    }

    #[test]
    fn get_shared_frame_size() {
        // A GetShared frame is 68 bytes: the 12-byte header + the 56-byte archived Message. The
        // root is the whole archived enum, as large as its largest variant (Data: tag, region,
        // grant, optional image header), so every message without out-of-line bytes (all but
        // Data/RecallAck/Flush with an image) has this size.
        let msg = Message::GetShared {
            region: rid(1, 1),
            fingerprint: 1,
            priority: PRIORITY_NONE,
        };
        let frame = encode(&msg).unwrap();
        assert_eq!(frame.len(), HEADER_LEN + size_of::<ArchivedMessage>());
        assert_eq!(size_of::<ArchivedMessage>(), 56);
        assert_eq!(frame.len(), 68);
    }

    #[test]
    fn header_layout() {
        let frame = encode(&Message::MapOk { region: rid(1, 2) }).unwrap();
        assert_eq!(frame[0..4], MAGIC);
        assert_eq!(frame[4..6], PROTOCOL_VERSION.to_le_bytes());
        assert_eq!(frame[6..8], [0, 0]);
        let len = parse_header(frame[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - HEADER_LEN);
        assert_eq!(
            decode_payload(&frame[HEADER_LEN..]).unwrap(),
            Message::MapOk { region: rid(1, 2) }
        );
    }

    #[test]
    fn encode_frame_appends() {
        let a = Message::Delete {
            region: rid(1, 2),
            committed: false,
        };
        let b = Message::Hello {
            cluster_id: 3,
            node: NodeId(4),
            epoch: 1,
            generation: 0,
            peer_epoch: 2,
            peer_generation: 0,
        };
        let mut out = vec![0xaa];
        encode_frame(&a, &mut out).unwrap();
        let first = out.len();
        encode_frame(&b, &mut out).unwrap();
        assert_eq!(out[0], 0xaa);
        assert_eq!(decode_frame(&out[1..first]).unwrap(), a);
        assert_eq!(decode_frame(&out[first..]).unwrap(), b);
    }

    #[test]
    fn oversized_message_is_refused() {
        let msg = Message::Flush {
            region: rid(1, 1),
            image: Some(image(1, &vec![0; MAX_FRAME_LEN])),
        };
        let mut out = vec![1, 2, 3];
        let err = encode_frame(&msg, &mut out).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::FrameTooLarge {
                    max: MAX_FRAME_LEN,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(out, [1, 2, 3]);
    }

    fn header(magic: [u8; 4], version: u16, reserved: u16, len: u32) -> [u8; HEADER_LEN] {
        let mut h = [0; HEADER_LEN];
        h[0..4].copy_from_slice(&magic);
        h[4..6].copy_from_slice(&version.to_le_bytes());
        h[6..8].copy_from_slice(&reserved.to_le_bytes());
        h[8..12].copy_from_slice(&len.to_le_bytes());
        h
    }

    #[test]
    fn parse_header_checks() {
        assert_eq!(
            parse_header(&header(MAGIC, PROTOCOL_VERSION, 0, 40)),
            Ok(40)
        );
        assert_eq!(
            parse_header(&header(MAGIC, PROTOCOL_VERSION, 0, MAX_FRAME_LEN as u32)),
            Ok(MAX_FRAME_LEN)
        );
        assert_eq!(
            parse_header(&header(*b"CRLX", PROTOCOL_VERSION, 0, 40)),
            Err(WireError::BadMagic)
        );
        assert_eq!(
            parse_header(&header(MAGIC, PROTOCOL_VERSION + 1, 0, 40)),
            Err(WireError::UnsupportedVersion {
                got: PROTOCOL_VERSION + 1,
                supported: PROTOCOL_VERSION
            })
        );
        assert_eq!(
            parse_header(&header(MAGIC, 0, 0, 40)),
            Err(WireError::UnsupportedVersion {
                got: 0,
                supported: PROTOCOL_VERSION
            })
        );
        // Outside a session no flag is valid.
        for flags in [FLAG_MORE, FLAG_IMAGE, FLAG_MORE | FLAG_IMAGE] {
            assert_eq!(
                parse_header(&header(MAGIC, PROTOCOL_VERSION, flags, 40)),
                Err(WireError::ReservedBits(flags))
            );
        }
        // A session's frames may carry FLAG_MORE and FLAG_IMAGE, and no other flag.
        for (flags, more, image) in [
            (0, false, false),
            (FLAG_MORE, true, false),
            (FLAG_IMAGE, false, true),
            (FLAG_MORE | FLAG_IMAGE, true, true),
        ] {
            assert_eq!(
                parse_fragment_header(&header(MAGIC, PROTOCOL_VERSION, flags, 40)),
                Ok(FrameHeader {
                    payload_len: 40,
                    more,
                    image
                })
            );
        }
        for flags in [4, 7, 0x8000, 0x8001] {
            assert_eq!(
                parse_fragment_header(&header(MAGIC, PROTOCOL_VERSION, flags, 40)),
                Err(WireError::ReservedBits(flags))
            );
        }
        for len in [MAX_FRAME_LEN as u32 + 1, u32::MAX] {
            assert_eq!(
                parse_header(&header(MAGIC, PROTOCOL_VERSION, 0, len)),
                Err(WireError::FrameTooLarge {
                    len: len as usize,
                    max: MAX_FRAME_LEN
                })
            );
        }
    }

    #[test]
    fn huge_announced_length_is_rejected_before_reading_payload() {
        // A lone header announcing 4 GiB: refused as too large, not reported as truncated
        // (which would invite a reader to wait for / allocate the payload).
        let h = header(MAGIC, PROTOCOL_VERSION, 0, u32::MAX);
        assert_eq!(
            decode_frame(&h),
            Err(WireError::FrameTooLarge {
                len: u32::MAX as usize,
                max: MAX_FRAME_LEN
            })
        );
    }

    #[test]
    fn wrong_version_frame_is_rejected() {
        let mut frame = encode(&Message::MapOk { region: rid(1, 2) }).unwrap();
        frame[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
        assert!(matches!(
            decode_frame(&frame),
            Err(WireError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn truncated_and_trailing_frames_are_rejected() {
        for (name, msg) in samples() {
            let frame = encode(&msg).unwrap();
            for cut in 0..frame.len() {
                let err = decode_frame(&frame[..cut]).unwrap_err();
                assert!(
                    matches!(err, WireError::Truncated { .. }),
                    "{name} cut at {cut}: {err}"
                );
            }
            let mut long = frame.clone();
            long.push(0);
            assert_eq!(
                decode_frame(&long),
                Err(WireError::TrailingBytes { extra: 1 }),
                "{name}"
            );
        }
    }

    #[test]
    fn header_bit_flips_are_rejected() {
        for (name, msg) in samples() {
            let frame = encode(&msg).unwrap();
            for bit in 0..HEADER_LEN * 8 {
                let mut bad = frame.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    decode_frame(&bad).is_err(),
                    "{name}: header bit {bit} flipped"
                );
            }
        }
    }

    #[test]
    fn empty_and_short_payloads_are_invalid() {
        for len in 0..size_of::<ArchivedMessage>() {
            let payload = vec![0u8; len];
            assert!(
                matches!(decode_payload(&payload), Err(WireError::Invalid(_))),
                "len {len}"
            );
        }
    }

    /// Offsets, within the payload, of the relative pointer and the length of the image's
    /// byte vector in an encoded Data/RecallAck/Flush message with an image.
    fn image_vec_offsets(payload: &[u8]) -> (usize, usize) {
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(payload);
        let archived = rkyv::access::<ArchivedMessage, rancor::Error>(&aligned).unwrap();
        let img = match archived {
            ArchivedMessage::Data { image, .. }
            | ArchivedMessage::RecallAck { image, .. }
            | ArchivedMessage::Flush { image, .. } => image.as_ref().expect("an image"),
            _ => panic!("no image"),
        };
        let base = aligned.as_ptr() as usize;
        let vec_at = &img.bytes as *const _ as usize - base;
        // ArchivedVec is [relative offset: i32][len: u32] in the pinned format.
        (vec_at, vec_at + 4)
    }

    #[test]
    fn out_of_bounds_relative_pointers_are_rejected() {
        let msg = Message::Data {
            region: rid(3, 4),
            grant: Grant::Shared,
            image: Some(image(5, b"some region bytes")),
        };
        let frame = encode(&msg).unwrap();
        let (ptr_at, len_at) = image_vec_offsets(&frame[HEADER_LEN..]);
        let (ptr_at, len_at) = (HEADER_LEN + ptr_at, HEADER_LEN + len_at);
        // Sanity: the offsets point at the real length.
        assert_eq!(frame[len_at..len_at + 4], 17u32.to_le_bytes());

        let corrupt = |at: usize, value: u32| {
            let mut bad = frame.clone();
            bad[at..at + 4].copy_from_slice(&value.to_le_bytes());
            decode_frame(&bad)
        };
        // Pointer far past either end of the payload, and a little past either end.
        for off in [
            0x7fff_0000u32,
            (-0x7fff_0000i32) as u32,
            1000,
            (-1000i32) as u32,
        ] {
            let err = corrupt(ptr_at, off).unwrap_err();
            assert!(
                matches!(err, WireError::Invalid(_)),
                "offset {off:#x}: {err}"
            );
        }
        // Length running past the end of the payload.
        for len in [(frame.len() - HEADER_LEN) as u32 + 1, 1000, u32::MAX] {
            let err = corrupt(len_at, len).unwrap_err();
            assert!(matches!(err, WireError::Invalid(_)), "len {len}: {err}");
        }
    }

    #[test]
    fn bad_enum_tags_are_rejected() {
        let msg = Message::Refused {
            region: rid(1, 1),
            reason: Refusal::Deleted,
        };
        let frame = encode(&msg).unwrap();
        // The root (the archived enum) is the last size_of::<ArchivedMessage>() bytes; its tag
        // is the first of them.
        let tag_at = frame.len() - size_of::<ArchivedMessage>();
        // Message has 28 variants (tags 0..=27).
        for tag in [28u8, 29, 0x80, 0xff] {
            let mut bad = frame.clone();
            bad[tag_at] = tag;
            assert!(
                matches!(decode_frame(&bad), Err(WireError::Invalid(_))),
                "tag {tag}"
            );
        }
    }

    fn arb_region() -> impl Strategy<Value = RegionId> {
        (any::<u32>(), any::<u64>()).prop_map(|(h, s)| rid(h, s))
    }

    fn arb_image() -> impl Strategy<Value = Option<RegionImage>> {
        proptest::option::of(
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(version, bytes)| RegionImage { version, bytes }),
        )
    }

    fn arb_grant() -> impl Strategy<Value = Grant> {
        prop_oneof![Just(Grant::Shared), Just(Grant::Exclusive)]
    }

    fn arb_recall() -> impl Strategy<Value = Recall> {
        prop_oneof![
            Just(Recall::Invalidate),
            Just(Recall::Downgrade),
            Just(Recall::Delete)
        ]
    }

    fn arb_refusal() -> impl Strategy<Value = Refusal> {
        prop_oneof![
            Just(Refusal::Deleted),
            Just(Refusal::NoSuchRegion),
            any::<u64>().prop_map(|actual| Refusal::WrongType { actual }),
            (any::<u64>(), any::<u64>()).prop_map(|(len, max)| Refusal::TooLarge { len, max }),
            any::<u64>().prop_map(|limit| Refusal::Full { limit }),
            Just(Refusal::BadTypeName),
        ]
    }

    fn arb_tx_images() -> impl Strategy<Value = Vec<TxImage>> {
        proptest::collection::vec(
            (arb_region(), proptest::collection::vec(any::<u8>(), 0..32))
                .prop_map(|(region, bytes)| TxImage { region, bytes }),
            0..4,
        )
    }

    /// Any message.
    fn arb_message() -> impl Strategy<Value = Message> {
        let r = arb_region;
        prop_oneof![
            (r(), any::<u64>()).prop_map(|(region, fingerprint)| Message::Map {
                region,
                fingerprint
            }),
            r().prop_map(|region| Message::MapOk { region }),
            (r(), any::<u64>(), any::<u64>()).prop_map(|(region, fingerprint, priority)| {
                Message::GetShared {
                    region,
                    fingerprint,
                    priority,
                }
            }),
            (r(), any::<u64>(), any::<u64>()).prop_map(|(region, fingerprint, priority)| {
                Message::GetExclusive {
                    region,
                    fingerprint,
                    priority,
                }
            }),
            (r(), arb_grant(), arb_image()).prop_map(|(region, grant, image)| Message::Data {
                region,
                grant,
                image
            }),
            (r(), arb_recall(), any::<u64>()).prop_map(|(region, kind, priority)| {
                Message::Recall {
                    region,
                    kind,
                    priority,
                }
            }),
            (r(), arb_image()).prop_map(|(region, image)| Message::RecallAck { region, image }),
            (r(), arb_image()).prop_map(|(region, image)| Message::Flush { region, image }),
            r().prop_map(|region| Message::FlushAck { region }),
            (r(), any::<bool>())
                .prop_map(|(region, committed)| Message::Delete { region, committed }),
            r().prop_map(|region| Message::DeleteAck { region }),
            (r(), arb_refusal()).prop_map(|(region, reason)| Message::Refused { region, reason }),
            (r(), any::<u64>())
                .prop_map(|(region, priority)| Message::Contend { region, priority }),
            (
                any::<u64>(),
                any::<u32>(),
                any::<(u64, u64)>(),
                any::<(u64, u64)>()
            )
                .prop_map(
                    |(cluster_id, node, (epoch, generation), (peer_epoch, peer_generation))| {
                        Message::Hello {
                            cluster_id,
                            node: NodeId(node),
                            epoch,
                            generation,
                            peer_epoch,
                            peer_generation,
                        }
                    }
                ),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(epoch, generation, received)| {
                Message::HelloAck {
                    epoch,
                    generation,
                    received,
                }
            }),
            any::<u64>().prop_map(|received| Message::Ack { received }),
            any::<u64>().prop_map(|nonce| Message::Ping { nonce }),
            any::<u64>().prop_map(|nonce| Message::Pong { nonce }),
            (
                any::<u64>(),
                arb_tx_images(),
                proptest::collection::vec(r(), 0..4),
                proptest::collection::vec(any::<u32>().prop_map(NodeId), 0..4)
            )
                .prop_map(|(txid, writes, deletes, participants)| Message::TxCommit {
                    txid,
                    writes,
                    deletes,
                    participants,
                }),
            (
                any::<u64>(),
                any::<u32>(),
                arb_tx_images(),
                proptest::collection::vec(r(), 0..4)
            )
                .prop_map(|(txid, c, writes, deletes)| Message::TxPrepare {
                    txid,
                    coordinator: NodeId(c),
                    writes,
                    deletes
                }),
            (any::<u64>(), any::<bool>(), ".{0,40}")
                .prop_map(|(txid, ok, reason)| { Message::TxReply { txid, ok, reason } }),
            (any::<u64>(), any::<bool>())
                .prop_map(|(txid, commit)| Message::TxDecide { txid, commit }),
            any::<u64>().prop_map(|txid| Message::TxDone { txid }),
            any::<u64>().prop_map(|txid| Message::TxInquire { txid }),
            (
                any::<u64>(),
                any::<u64>(),
                ".{0,40}",
                proptest::collection::vec(any::<u8>(), 0..32)
            )
                .prop_map(|(request, fingerprint, type_name, bytes)| {
                    Message::CreateAt {
                        request,
                        fingerprint,
                        type_name,
                        bytes,
                    }
                }),
            (any::<u64>(), arb_region())
                .prop_map(|(request, region)| Message::Created { request, region }),
            (any::<u64>(), arb_refusal())
                .prop_map(|(request, reason)| Message::CreateRefused { request, reason }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(msg in arb_message()) {
            let frame = encode(&msg).unwrap();
            let len = parse_header(frame[..HEADER_LEN].try_into().unwrap()).unwrap();
            prop_assert_eq!(len, frame.len() - HEADER_LEN);
            prop_assert_eq!(decode_frame(&frame).unwrap(), msg.clone());
            prop_assert_eq!(decode_payload(&frame[HEADER_LEN..]).unwrap(), msg.clone());
            // Encoding is deterministic.
            prop_assert_eq!(encode(&msg).unwrap(), frame);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame(&bytes);
            let _ = decode_payload(&bytes);
        }

        #[test]
        fn random_payload_behind_valid_header_never_panics(
            payload in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut frame = header(MAGIC, PROTOCOL_VERSION, 0, payload.len() as u32).to_vec();
            frame.extend_from_slice(&payload);
            let _ = decode_frame(&frame);
        }

        #[test]
        fn corrupted_frames_never_panic(
            msg in arb_message(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..8),
        ) {
            let mut frame = encode(&msg).unwrap();
            for (at, bit) in flips {
                let i = HEADER_LEN + at.index(frame.len() - HEADER_LEN);
                frame[i] ^= 1 << bit;
            }
            // Any outcome but a panic is fine: a flip may land in padding or data bytes.
            let _ = decode_frame(&frame);
        }
    }
}
