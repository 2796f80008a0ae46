use crl::Region;

#[derive(Region)]
struct Node {
    value: u64,
    next: *const Node,
}

fn main() {}
