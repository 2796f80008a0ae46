//! Regions: the unit of sharing and coherence.
//!
//! A region is a plain Rust value (a struct or enum deriving [`Region`](macro@crate::Region))
//! that lives at a fixed **home** node and may be cached on any other node. This module holds
//! the identity of a region ([`RegionId`], [`NodeId`]), the [`Region`] trait that typed values
//! implement (archiving with the pinned rkyv format, plus a stable type fingerprint so mapping
//! a region as the wrong type is an error), and the [`CodecError`] returned when bytes do not
//! decode.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
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

/// A type that can be stored in a region value: a field type of a `#[derive(Region)]` type.
///
/// Implemented for the primitives (`u8`..`u128`, `i8`..`i128`, `f32`, `f64`, `bool`, `char`,
/// `()`), [`String`], [`Vec<T>`], [`Option<T>`], [`Box<T>`], `Box<str>`, `Box<[T]>`, arrays
/// `[T; N]`, tuples of up to 4 elements, [`RegionId`], [`NodeId`], [`RegionRef<T>`] and every
/// type deriving [`Region`](macro@crate::Region) (the derive emits the impl). `usize` and
/// `isize` are deliberately not implemented: their width differs between platforms, and the
/// wire format is the same everywhere.
///
/// References, raw pointers, `Rc`/`Arc`, `Cell`/`RefCell` and other types that do not own
/// plain, thread-safe data are rejected at compile time with a message at the field.
///
/// Implement it only through `#[derive(Region)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in a region",
    label = "this field's type cannot be stored in a region",
    note = "region fields must be owned, thread-safe, plain data: primitives (not usize/isize), \
            String, Vec<T>, Option<T>, Box<T>, [T; N], tuples, RegionId, NodeId, RegionRef<T>, \
            or a type that derives `Region`",
    note = "references, raw pointers, Rc/Arc, Cell/RefCell and lifetimes are not allowed: a \
            region is copied between nodes; link another region with `RegionRef<T>` instead"
)]
pub trait RegionField {
    /// A stable 64-bit fingerprint of the type, folded into the fingerprint of region types
    /// that contain it.
    const FIELD_FINGERPRINT: u64;
}

/// FNV-1a 64 offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of a string, at compile time.
const fn fnv_str(s: &str) -> u64 {
    let bytes = s.as_bytes();
    let mut h = FNV_OFFSET;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    h
}

/// Folds `parts` (as little-endian bytes) into the FNV-1a 64 hash of `name`. The derive
/// inlines the same computation.
const fn fnv_fold(name: &str, parts: &[u64]) -> u64 {
    let mut h = fnv_str(name);
    let mut i = 0;
    while i < parts.len() {
        let bytes = parts[i].to_le_bytes();
        let mut j = 0;
        while j < 8 {
            h ^= bytes[j] as u64;
            h = h.wrapping_mul(FNV_PRIME);
            j += 1;
        }
        i += 1;
    }
    h
}

macro_rules! region_field_primitive {
    ($($t:ty),* $(,)?) => {
        $(impl RegionField for $t {
            const FIELD_FINGERPRINT: u64 = fnv_str(stringify!($t));
        })*
    };
}

region_field_primitive!(
    u8,
    u16,
    u32,
    u64,
    u128,
    i8,
    i16,
    i32,
    i64,
    i128,
    f32,
    f64,
    bool,
    char,
    (),
    String,
    RegionId,
    NodeId
);

impl<T: RegionField> RegionField for Vec<T> {
    const FIELD_FINGERPRINT: u64 = fnv_fold("Vec", &[T::FIELD_FINGERPRINT]);
}

impl<T: RegionField> RegionField for Option<T> {
    const FIELD_FINGERPRINT: u64 = fnv_fold("Option", &[T::FIELD_FINGERPRINT]);
}

impl<T: RegionField> RegionField for Box<T> {
    const FIELD_FINGERPRINT: u64 = fnv_fold("Box", &[T::FIELD_FINGERPRINT]);
}

impl RegionField for Box<str> {
    const FIELD_FINGERPRINT: u64 = fnv_str("Box<str>");
}

impl<T: RegionField> RegionField for Box<[T]> {
    const FIELD_FINGERPRINT: u64 = fnv_fold("Box<[]>", &[T::FIELD_FINGERPRINT]);
}

impl<T: RegionField, const N: usize> RegionField for [T; N] {
    const FIELD_FINGERPRINT: u64 = fnv_fold("[;]", &[T::FIELD_FINGERPRINT, N as u64]);
}

impl<A: RegionField> RegionField for (A,) {
    const FIELD_FINGERPRINT: u64 = fnv_fold("(,)", &[A::FIELD_FINGERPRINT]);
}

impl<A: RegionField, B: RegionField> RegionField for (A, B) {
    const FIELD_FINGERPRINT: u64 = fnv_fold("(,)", &[A::FIELD_FINGERPRINT, B::FIELD_FINGERPRINT]);
}

impl<A: RegionField, B: RegionField, C: RegionField> RegionField for (A, B, C) {
    const FIELD_FINGERPRINT: u64 = fnv_fold(
        "(,)",
        &[
            A::FIELD_FINGERPRINT,
            B::FIELD_FINGERPRINT,
            C::FIELD_FINGERPRINT,
        ],
    );
}

impl<A: RegionField, B: RegionField, C: RegionField, D: RegionField> RegionField for (A, B, C, D) {
    const FIELD_FINGERPRINT: u64 = fnv_fold(
        "(,)",
        &[
            A::FIELD_FINGERPRINT,
            B::FIELD_FINGERPRINT,
            C::FIELD_FINGERPRINT,
            D::FIELD_FINGERPRINT,
        ],
    );
}

/// A typed link to another region, for use inside region values: `RegionRef<Flight>` holds
/// the [`RegionId`] of a region whose value is a `Flight`.
///
/// It is only an id (the target is neither loaded nor kept alive): map it on a node to reach
/// the value. On the wire it is exactly a [`RegionId`]. It is `Copy`, `Send` and `Sync`
/// whatever `T` is, and may point to the type that contains it (`next:
/// Option<RegionRef<Self>>`) without `#[region(omit_bounds)]`. The target type is checked when
/// the region is mapped (by fingerprint), not when the link is decoded.
pub struct RegionRef<T> {
    id: RegionId,
    _type: PhantomData<fn() -> T>,
}

impl<T> RegionRef<T> {
    /// Makes a link to the region `id`, whose value is a `T`.
    pub const fn new(id: RegionId) -> Self {
        RegionRef {
            id,
            _type: PhantomData,
        }
    }

    /// The id of the linked region.
    pub const fn id(&self) -> RegionId {
        self.id
    }
}

impl<T> Clone for RegionRef<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for RegionRef<T> {}

impl<T> PartialEq for RegionRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl<T> Eq for RegionRef<T> {}

impl<T> PartialOrd for RegionRef<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for RegionRef<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id.cmp(&other.id)
    }
}

impl<T> Hash for RegionRef<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl<T> fmt::Debug for RegionRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = std::any::type_name::<T>();
        let short = name.rsplit("::").next().unwrap_or(name);
        write!(f, "RegionRef<{short}>({})", self.id)
    }
}

impl<T> fmt::Display for RegionRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.id, f)
    }
}

impl<T> From<RegionId> for RegionRef<T> {
    fn from(id: RegionId) -> Self {
        RegionRef::new(id)
    }
}

impl<T> From<RegionRef<T>> for RegionId {
    fn from(r: RegionRef<T>) -> Self {
        r.id
    }
}

impl<T> RegionField for RegionRef<T> {
    // The target type is not folded in: that would make self-referencing types cyclic.
    const FIELD_FINGERPRINT: u64 = fnv_str("RegionRef");
}

// A `RegionRef<T>` archives exactly as its `RegionId`.
impl<T> rkyv::Archive for RegionRef<T> {
    type Archived = ArchivedRegionId;
    type Resolver = <RegionId as rkyv::Archive>::Resolver;

    fn resolve(&self, resolver: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        rkyv::Archive::resolve(&self.id, resolver, out);
    }
}

impl<T, S: rkyv::rancor::Fallible + ?Sized> rkyv::Serialize<S> for RegionRef<T>
where
    RegionId: rkyv::Serialize<S>,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        rkyv::Serialize::serialize(&self.id, serializer)
    }
}

impl<T, D: rkyv::rancor::Fallible + ?Sized> rkyv::Deserialize<RegionRef<T>, D> for ArchivedRegionId
where
    ArchivedRegionId: rkyv::Deserialize<RegionId, D>,
{
    fn deserialize(&self, deserializer: &mut D) -> Result<RegionRef<T>, D::Error> {
        let id: RegionId = rkyv::Deserialize::deserialize(self, deserializer)?;
        Ok(RegionRef::new(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Region;

    #[test]
    fn region_id_display_round_trips() {
        let id = RegionId::new(NodeId(2), 1042);
        assert_eq!(id.to_string(), "r2.1042");
        assert_eq!("r2.1042".parse::<RegionId>().unwrap(), id);
        for bad in [
            "",
            "r",
            "r2",
            "r2.",
            "r.5",
            "2.5",
            "r2.5.1",
            "r-1.5",
            "r2.x",
            "r99999999999.1",
        ] {
            assert!(bad.parse::<RegionId>().is_err(), "{bad:?} parsed");
        }
    }

    #[derive(Region, Debug, Clone, PartialEq)]
    #[region(crate = crate)]
    struct Seat {
        row: u16,
        letter: char,
    }

    #[derive(Region, Debug, Clone, PartialEq)]
    #[region(crate = crate)]
    enum Status {
        Open,
        Closed { reason: String },
        Delayed(u32, Option<String>),
    }

    #[derive(Region, Debug, Clone, PartialEq)]
    #[region(crate = crate)]
    struct Flight {
        seats: u32,
        booked: u32,
        passengers: Vec<RegionId>,
        name: String,
        gate: Option<String>,
        status: Status,
        seat_map: Vec<Seat>,
        next: Option<RegionRef<Flight>>,
        home: NodeId,
        pair: (u8, i64),
        arr: [u16; 3],
        boxed: Box<Seat>,
        ok: bool,
        ratio: f64,
    }

    #[derive(Region, Debug, Clone, PartialEq)]
    #[region(crate = crate)]
    struct Pair<T> {
        a: T,
        b: Vec<T>,
    }

    #[derive(Region, Debug, Clone, PartialEq)]
    #[region(crate = crate)]
    struct Wrapper(u32, String);

    #[derive(Region, Debug, Clone, PartialEq)]
    #[region(crate = crate)]
    struct Unit;

    #[derive(Region, Debug, Clone, PartialEq)]
    #[region(crate = crate)]
    struct List {
        val: u32,
        #[region(omit_bounds)]
        next: Option<Box<List>>,
    }

    #[derive(Region, Debug, Clone, PartialEq)]
    #[region(crate = crate)]
    enum Tree {
        Leaf(u32),
        Branch(#[region(omit_bounds)] Vec<Tree>),
    }

    fn flight() -> Flight {
        Flight {
            seats: 180,
            booked: 2,
            passengers: vec![RegionId::new(NodeId(1), 7), RegionId::new(NodeId(2), 9)],
            name: "UA100 San Francisco - Newark".to_owned(),
            gate: Some("B12".to_owned()),
            status: Status::Delayed(45, Some("weather".to_owned())),
            seat_map: vec![
                Seat {
                    row: 1,
                    letter: 'A',
                },
                Seat {
                    row: 30,
                    letter: 'é',
                },
            ],
            next: Some(RegionRef::new(RegionId::new(NodeId(0), 3))),
            home: NodeId(4),
            pair: (7, -5),
            arr: [1, 2, 3],
            boxed: Box::new(Seat {
                row: 2,
                letter: 'C',
            }),
            ok: true,
            ratio: 0.5,
        }
    }

    fn round_trip<T: Region + PartialEq + fmt::Debug>(v: &T) {
        let bytes = v.encode_region().unwrap();
        assert_eq!(&T::decode_region(&bytes).unwrap(), v);
        // Unaligned input is copied into an aligned buffer first.
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        assert_eq!(&T::decode_region(&shifted[1..]).unwrap(), v);
    }

    #[test]
    fn derived_regions_round_trip() {
        round_trip(&flight());
        for status in [
            Status::Open,
            Status::Closed {
                reason: "full".into(),
            },
            Status::Delayed(3, None),
        ] {
            round_trip(&status);
        }
        round_trip(&Pair {
            a: 1u64,
            b: vec![2, 3],
        });
        round_trip(&Pair {
            a: Seat {
                row: 1,
                letter: 'x',
            },
            b: vec![],
        });
        round_trip(&Pair {
            a: Pair {
                a: 'q',
                b: vec!['r'],
            },
            b: vec![],
        });
        round_trip(&Wrapper(5, "five".into()));
        round_trip(&Unit);
        round_trip(&List {
            val: 1,
            next: Some(Box::new(List { val: 2, next: None })),
        });
        round_trip(&Tree::Branch(vec![
            Tree::Leaf(1),
            Tree::Branch(vec![Tree::Leaf(2)]),
        ]));
        assert_eq!(Flight::TYPE_NAME, "Flight");
        assert_eq!(<Pair<u8>>::TYPE_NAME, "Pair");
    }

    #[test]
    fn region_ref_is_a_plain_id() {
        let id = RegionId::new(NodeId(3), 11);
        let r: RegionRef<Flight> = id.into();
        let copy = r;
        assert_eq!(copy, r);
        assert_eq!(r.id(), id);
        assert_eq!(RegionId::from(r), id);
        assert_eq!(format!("{r:?}"), "RegionRef<Flight>(r3.11)");
        assert_eq!(r.to_string(), "r3.11");
        fn send_sync<T: Send + Sync + Copy>() {}
        send_sync::<RegionRef<std::rc::Rc<u8>>>();
        // On the wire a RegionRef is exactly its RegionId.
        let as_ref = rkyv::to_bytes::<rkyv::rancor::Error>(&r).unwrap();
        let as_id = rkyv::to_bytes::<rkyv::rancor::Error>(&id).unwrap();
        assert_eq!(as_ref.as_slice(), as_id.as_slice());
    }

    #[test]
    fn truncated_bytes_are_invalid_not_panics() {
        let bytes = flight().encode_region().unwrap();
        for len in 0..bytes.len() {
            match Flight::decode_region(&bytes[..len]) {
                Err(CodecError::Invalid { type_name, .. }) => assert_eq!(type_name, "Flight"),
                other => panic!("truncation to {len} bytes gave {other:?}"),
            }
        }
    }

    #[test]
    fn corrupted_bytes_are_invalid_not_panics() {
        let original = flight();
        let bytes = original.encode_region().unwrap();
        let mut invalid = 0;
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                match Flight::decode_region(&bad) {
                    Ok(_) => {}
                    Err(CodecError::Invalid { .. }) => invalid += 1,
                    Err(e) => panic!("unexpected error {e:?}"),
                }
            }
        }
        assert!(invalid > 0, "no bit flip was detected");
        // An enum tag past the last variant.
        let status = Status::Open.encode_region().unwrap();
        let mut bad_tag = status;
        bad_tag[0] = 200;
        assert!(matches!(
            Status::decode_region(&bad_tag),
            Err(CodecError::Invalid { .. })
        ));
        // A char that is a surrogate (Seat is `row: u16`, 2 bytes of padding, `letter: char`).
        let mut bad_char = Seat {
            row: 1,
            letter: 'a',
        }
        .encode_region()
        .unwrap();
        assert_eq!(bad_char.len(), 8);
        bad_char[4..8].copy_from_slice(&0xD800u32.to_le_bytes());
        assert!(matches!(
            Seat::decode_region(&bad_char),
            Err(CodecError::Invalid { .. })
        ));
        // A bool that is 2 (found as the one byte that differs between ok = true and false).
        let not_ok = Flight {
            ok: false,
            ..flight()
        }
        .encode_region()
        .unwrap();
        let diff: Vec<usize> = (0..bytes.len())
            .filter(|&i| bytes[i] != not_ok[i])
            .collect();
        assert_eq!(diff.len(), 1);
        let ok_at = diff[0];
        let mut bad_bool = bytes.clone();
        bad_bool[ok_at] = 2;
        assert!(matches!(
            Flight::decode_region(&bad_bool),
            Err(CodecError::Invalid { .. })
        ));
        assert!(matches!(
            Flight::decode_region(&[0xff; 3]),
            Err(CodecError::Invalid { .. })
        ));
    }

    mod v1 {
        use crate::Region;

        #[derive(Region)]
        #[region(crate = crate)]
        pub struct Inner {
            pub a: u32,
        }

        #[derive(Region)]
        #[region(crate = crate)]
        pub struct Outer {
            pub inner: Inner,
            pub list: Vec<u64>,
        }
    }

    mod same {
        use crate::Region;

        #[derive(Region)]
        #[region(crate = crate)]
        pub struct Inner {
            pub a: u32,
        }

        #[derive(Region)]
        #[region(crate = crate)]
        pub struct Outer {
            pub inner: Inner,
            // Formatting and comments do not matter.
            pub list: Vec<u64>,
        }
    }

    mod nested_changed {
        use crate::Region;

        #[derive(Region)]
        #[region(crate = crate)]
        pub struct Inner {
            pub a: u64,
        }

        #[derive(Region)]
        #[region(crate = crate)]
        pub struct Outer {
            pub inner: Inner,
            pub list: Vec<u64>,
        }
    }

    mod field_type_changed {
        use crate::Region;

        #[derive(Region)]
        #[region(crate = crate)]
        pub struct Outer {
            pub inner: super::v1::Inner,
            pub list: Vec<u32>,
        }
    }

    mod field_renamed {
        use crate::Region;

        #[derive(Region)]
        #[region(crate = crate)]
        pub struct Outer {
            pub inner: super::v1::Inner,
            pub items: Vec<u64>,
        }
    }

    mod fields_reordered {
        use crate::Region;

        #[derive(Region)]
        #[region(crate = crate)]
        pub struct Outer {
            pub list: Vec<u64>,
            pub inner: super::v1::Inner,
        }
    }

    #[test]
    fn fingerprints_track_the_definition() {
        let base = v1::Outer::FINGERPRINT;
        assert_eq!(base, same::Outer::FINGERPRINT);
        assert_eq!(v1::Inner::FINGERPRINT, same::Inner::FINGERPRINT);
        assert_ne!(v1::Inner::FINGERPRINT, nested_changed::Inner::FINGERPRINT);
        assert_ne!(
            base,
            nested_changed::Outer::FINGERPRINT,
            "nested type changed"
        );
        assert_ne!(
            base,
            field_type_changed::Outer::FINGERPRINT,
            "field type changed"
        );
        assert_ne!(base, field_renamed::Outer::FINGERPRINT, "field renamed");
        assert_ne!(
            base,
            fields_reordered::Outer::FINGERPRINT,
            "fields reordered"
        );
        assert_ne!(Pair::<u32>::FINGERPRINT, Pair::<u64>::FINGERPRINT);
        assert_ne!(Pair::<u32>::FINGERPRINT, Pair::<Pair<u32>>::FINGERPRINT);
        assert_ne!(List::FINGERPRINT, Tree::FINGERPRINT);
    }

    /// A fixed layout whose encoding is pinned below.
    #[derive(Region, Debug, Clone, PartialEq)]
    #[region(crate = crate)]
    struct Sample {
        a: u32,
        b: u64,
        name: String,
        list: Vec<u16>,
        next: Option<RegionRef<Sample>>,
    }

    fn sample() -> Sample {
        Sample {
            a: 0x0102_0304,
            b: 0x1122_3344_5566_7788,
            name: "region sample, out of line".to_owned(),
            list: vec![1, 2, 0xbeef],
            next: Some(RegionRef::new(RegionId::new(NodeId(7), 0x0a0b_0c0d_0e0f))),
        }
    }

    /// The wire format of a sample region, pinned. If this test fails, the encoding of region
    /// values changed (rkyv version or features, the derive's shadow, or the layout of
    /// `RegionId`/`RegionRef`): nodes built before and after the change cannot exchange
    /// regions, and logs written before it cannot be replayed. Only update the bytes on purpose,
    /// together with a wire/log format version bump.
    ///
    /// Layout (rkyv, little endian, 32-bit relative pointers, root last): the string's bytes,
    /// the vector's elements, then the root `ArchivedSample` at offset 32: `a`, padding, `b`,
    /// the string (out of line: length 26 with the 0x80 out-of-line marker, relative offset), the vector (offset,
    /// length), and `Option<RegionRef>` (tag 1, padding, `RegionId { home: u32, seq: u64 }`).
    #[rustfmt::skip]
    const SAMPLE_GOLDEN: [u8; 88] = [
        // "region sample, out of line"
        114, 101, 103, 105, 111, 110, 32, 115, 97, 109, 112, 108, 101, 44, 32, 111,
        117, 116, 32, 111, 102, 32, 108, 105, 110, 101,
        // list: [1, 2, 0xbeef] as u16
        1, 0, 2, 0, 239, 190,
        // a: u32, 4 bytes padding
        4, 3, 2, 1, 0, 0, 0, 0,
        // b: u64
        136, 119, 102, 85, 68, 51, 34, 17,
        // name: ArchivedString (out of line: len 26 with the out-of-line marker, rel. offset)
        154, 0, 0, 0, 208, 255, 255, 255,
        // list: ArchivedVec (rel. offset, len 3)
        226, 255, 255, 255, 3, 0, 0, 0,
        // next: Some, padding, RegionId { home: 7, padding, seq: 0x0a0b0c0d0e0f }
        1, 0, 0, 0, 0, 0, 0, 0,
        7, 0, 0, 0, 0, 0, 0, 0,
        15, 14, 13, 12, 11, 10, 0, 0,
    ];

    /// The fingerprint of `Sample`, pinned: it changes when the derive's canonical text or
    /// hash changes, or when `Sample` or a field type's fingerprint changes.
    const SAMPLE_FINGERPRINT: u64 = 0x0ab3_2217_054c_2dc6;

    #[test]
    fn sample_wire_format_is_pinned() {
        let bytes = sample().encode_region().unwrap();
        assert_eq!(bytes, SAMPLE_GOLDEN, "the region wire format drifted");
        assert_eq!(Sample::decode_region(&SAMPLE_GOLDEN).unwrap(), sample());
        assert_eq!(
            Sample::FINGERPRINT,
            SAMPLE_FINGERPRINT,
            "Sample's fingerprint drifted: {:#018x}",
            Sample::FINGERPRINT
        );
    }
}
