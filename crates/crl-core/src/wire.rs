//! The wire format: every protocol message, and how it is framed and validated.
//!
//! One [`Message`] enum covers the whole coherence protocol. Messages are archived with rkyv in
//! a format pinned by this crate's rkyv features (little endian, aligned, 32-bit relative
//! pointers), so the bytes are the same on every platform. A frame is a fixed header (magic,
//! protocol version, payload length) followed by the archived message; frames from the network
//! are untrusted and are decoded only through validated access.

use crate::region::{NodeId, RegionId};

/// A region's contents as shipped between nodes: its version and its archived bytes.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RegionImage {
    /// The region's version: bumped by every completed write.
    pub version: u64,
    /// The region value archived by [`Region::encode_region`](crate::region::Region::encode_region).
    pub bytes: Vec<u8>,
}

/// The access a [`Message::Data`] grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Grant {
    /// A read-only copy; other nodes may hold copies too.
    Shared,
    /// The only valid copy, which the holder may modify.
    Exclusive,
}

/// What a home asks of a node holding a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Recall {
    /// Drop the copy (returning it if modified).
    Invalidate,
    /// Keep a read-only copy, returning the modified contents.
    Downgrade,
    /// The region is being deleted: drop the copy; later accesses fail.
    Delete,
}

/// Why a home refused a request for a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
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
}

/// A message of the coherence protocol. R is a requester, H the region's home, O a node
/// holding a copy.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
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
    },
    /// R→H: the exclusive (writable) copy, please. If H still lists R as a sharer, H answers
    /// with an upgrade (a [`Message::Data`] without an image).
    GetExclusive {
        /// The region.
        region: RegionId,
        /// The fingerprint of the type R holds it as.
        fingerprint: u64,
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
    /// First message on every connection (used by the transport, not the engine): who the
    /// sender claims to be, and which cluster it belongs to.
    Hello {
        /// The cluster's id; nodes of other clusters are refused.
        cluster_id: u64,
        /// The sender's node id (must match its certificate).
        node: NodeId,
    },
}

impl Message {
    /// The region a protocol message is about (`None` for [`Message::Hello`]).
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
            | Delete { region }
            | DeleteAck { region }
            | Refused { region, .. } => Some(*region),
            Hello { .. } => None,
        }
    }
}
