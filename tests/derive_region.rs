//! `#[derive(Region)]` used from the facade exactly as an application would: no rkyv in the
//! application's dependencies, only `crl`.

use crl::{NodeId, Region, RegionId, RegionRef};

/// A passenger, its own region.
#[derive(Region, Debug, Clone, PartialEq)]
struct Passenger {
    name: String,
    seat: Option<(u16, char)>,
}

/// Where a flight is.
#[derive(Region, Debug, Clone, PartialEq)]
enum Status {
    Scheduled,
    Boarding { gate: String },
    Cancelled(String),
}

/// The flight from the design sketch, plus a few more kinds of fields.
#[derive(Region, Debug, Clone, PartialEq)]
struct Flight {
    seats: u32,
    booked: u32,
    passengers: Vec<RegionId>,
    manifest: Vec<RegionRef<Passenger>>,
    status: Status,
    crew: Vec<Passenger>,
}

/// A generic region value.
#[derive(Region, Debug, Clone, PartialEq)]
struct Tagged<T> {
    tag: String,
    value: T,
}

/// A recursive type: the recursive field opts out of rkyv's derived bounds.
#[derive(Region, Debug, Clone, PartialEq)]
struct Chain {
    value: i64,
    #[region(omit_bounds)]
    next: Option<Box<Chain>>,
}

fn round_trip<T: Region + PartialEq + std::fmt::Debug>(value: &T) {
    let bytes = value.encode_region().expect("encodes");
    assert_eq!(&T::decode_region(&bytes).expect("decodes"), value);
}

#[test]
fn flight_round_trips() {
    let p = RegionId::new(NodeId(1), 42);
    let flight = Flight {
        seats: 180,
        booked: 1,
        passengers: vec![p],
        manifest: vec![RegionRef::new(p)],
        status: Status::Boarding { gate: "B12".into() },
        crew: vec![Passenger {
            name: "Captain".into(),
            seat: None,
        }],
    };
    round_trip(&flight);
    round_trip(&Status::Scheduled);
    round_trip(&Status::Cancelled("weather".into()));
    round_trip(&Passenger {
        name: "Ada".into(),
        seat: Some((12, 'C')),
    });
    assert_eq!(Flight::TYPE_NAME, "Flight");
    assert_ne!(Flight::FINGERPRINT, Passenger::FINGERPRINT);
}

#[test]
fn generic_and_recursive_round_trip() {
    round_trip(&Tagged {
        tag: "n".into(),
        value: 7u64,
    });
    round_trip(&Tagged {
        tag: "s".into(),
        value: Status::Scheduled,
    });
    assert_ne!(Tagged::<u64>::FINGERPRINT, Tagged::<u32>::FINGERPRINT);
    round_trip(&Chain {
        value: 1,
        next: Some(Box::new(Chain {
            value: 2,
            next: None,
        })),
    });
}

#[test]
fn bad_bytes_are_errors() {
    let bytes = Passenger {
        name: "a long enough name to be out of line".into(),
        seat: None,
    }
    .encode_region()
    .unwrap();
    for len in 0..bytes.len() {
        assert!(matches!(
            Passenger::decode_region(&bytes[..len]),
            Err(crl::CodecError::Invalid {
                type_name: "Passenger",
                ..
            })
        ));
    }
}

#[test]
fn types_local_to_a_function() {
    #[derive(Debug, Clone, PartialEq, Region)]
    struct Local {
        id: u8,
    }
    #[derive(Debug, Clone, PartialEq, Region)]
    struct Holder {
        locals: Vec<Local>,
    }
    round_trip(&Holder {
        locals: vec![Local { id: 1 }],
    });
}

#[test]
fn archived_form_is_reachable_through_rkyv() {
    // Zero-copy access to the archived form (crl's engine does this through its rkyv
    // re-export; applications normally just call decode_region).
    use crl::__private::rkyv;
    let bytes = Passenger {
        name: "Ada".into(),
        seat: Some((3, 'A')),
    }
    .encode_region()
    .unwrap();
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&bytes);
    let archived =
        rkyv::access::<rkyv::Archived<Passenger>, rkyv::rancor::Error>(&aligned).unwrap();
    assert_eq!(archived.name.as_str(), "Ada");
}
