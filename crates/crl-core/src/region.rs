//! Regions: the unit of sharing and coherence.
//!
//! A region is a plain Rust value (a struct or enum deriving [`Region`](macro@crate::Region))
//! that lives at a fixed **home** node and may be cached on any other node. This module holds
//! the identity of a region ([`RegionId`], [`NodeId`]), the [`Region`] trait that typed values
//! implement (archiving with the pinned rkyv format, plus a stable type fingerprint so mapping
//! a region as the wrong type is an error), and the [`CodecError`] returned when bytes do not
//! decode.

use std::fmt;
use std::str::FromStr;

/// Identifies a node of a cluster. Node ids are assigned by the cluster's configuration.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// Identifies a region cluster-wide: the node that created it (its home) and a sequence
/// number unique at that home. Displayed as `r<home>.<seq>`, e.g. `r2.1042`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub struct RegionId {
    /// The home node: it keeps the master copy and the directory entry.
    pub home: NodeId,
    /// Sequence number of the region at its home (never reused).
    pub seq: u64,
}

impl RegionId {
    /// Makes a region id from its home node and sequence number.
    pub const fn new(home: NodeId, seq: u64) -> Self {
        RegionId { home, seq }
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}.{}", self.home.0, self.seq)
    }
}

/// Error parsing a [`RegionId`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid region id {0:?}: expected r<home>.<seq>, e.g. r2.1042")]
pub struct ParseRegionIdError(String);

impl FromStr for RegionId {
    type Err = ParseRegionIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseRegionIdError(s.to_owned());
        let rest = s.strip_prefix('r').ok_or_else(err)?;
        let (home, seq) = rest.split_once('.').ok_or_else(err)?;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(home) || !digits(seq) {
            return Err(err());
        }
        Ok(RegionId {
            home: NodeId(home.parse().map_err(|_| err())?),
            seq: seq.parse().map_err(|_| err())?,
        })
    }
}

/// Error encoding or decoding a region value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not a valid archive of the expected type (validation failed).
    #[error("invalid region bytes for {type_name}: {reason}")]
    Invalid {
        /// The type the bytes were decoded as.
        type_name: &'static str,
        /// What validation reported.
        reason: String,
    },
    /// Serializing the value failed.
    #[error("cannot encode {type_name}: {reason}")]
    Encode {
        /// The type being encoded.
        type_name: &'static str,
        /// What the serializer reported.
        reason: String,
    },
}

/// A typed region value. Implement it with `#[derive(Region)]`, never by hand.
///
/// The encoding is rkyv's archive in crl's pinned format (little endian, aligned, 32-bit
/// relative pointers), identical on every platform. Decoding validates untrusted bytes first:
/// bad bytes give a [`CodecError`], never a panic or undefined behaviour.
pub trait Region: Send + Sync + Sized + 'static {
    /// The type's name, for messages.
    const TYPE_NAME: &'static str;
    /// A stable 64-bit fingerprint of the type's definition (name, fields and their types),
    /// the same on every platform and build. Mapping a region with another fingerprint fails.
    const FINGERPRINT: u64;

    /// Archives the value into bytes in crl's wire format.
    fn encode_region(&self) -> Result<Vec<u8>, CodecError>;

    /// Validates `bytes` as an archive of `Self` and deserializes it.
    fn decode_region(bytes: &[u8]) -> Result<Self, CodecError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_id_display_round_trips() {
        let id = RegionId::new(NodeId(2), 1042);
        assert_eq!(id.to_string(), "r2.1042");
        assert_eq!("r2.1042".parse::<RegionId>().unwrap(), id);
        for bad in ["", "r", "r2", "r2.", "r.5", "2.5", "r2.5.1", "r-1.5", "r2.x", "r99999999999.1"] {
            assert!(bad.parse::<RegionId>().is_err(), "{bad:?} parsed");
        }
    }
}
