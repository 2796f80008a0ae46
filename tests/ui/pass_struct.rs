use crl::{NodeId, Region, RegionId, RegionRef};

#[derive(Region, Debug, Clone)]
struct Flight {
    seats: u32,
    booked: u32,
    passengers: Vec<RegionId>,
    home: NodeId,
    next: Option<RegionRef<Flight>>,
    code: [u8; 6],
    note: Box<str>,
}

fn main() {
    let f = Flight {
        seats: 1,
        booked: 0,
        passengers: vec![],
        home: NodeId(0),
        next: None,
        code: *b"UA100 ",
        note: "".into(),
    };
    let bytes = f.encode_region().unwrap();
    let g = Flight::decode_region(&bytes).unwrap();
    assert_eq!(g.seats, f.seats);
}
