use crl::Region;

#[derive(Region)]
struct Sizes {
    len: usize,
}

fn main() {}
