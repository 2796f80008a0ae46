use crl::Region;

#[derive(Region, Debug, Clone, PartialEq)]
enum Seat {
    Free,
    Held { until_ms: u64 },
    Taken(String, Option<u32>),
}

#[derive(Region, Debug, Clone, PartialEq)]
enum Tree {
    Leaf(u32),
    Node(#[region(omit_bounds)] Vec<Tree>),
}

fn main() {
    let s = Seat::Taken("Ada".into(), Some(3));
    assert_eq!(Seat::decode_region(&s.encode_region().unwrap()).unwrap(), s);
    let t = Tree::Node(vec![Tree::Leaf(1)]);
    assert_eq!(Tree::decode_region(&t.encode_region().unwrap()).unwrap(), t);
}
