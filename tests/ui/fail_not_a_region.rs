use crl::Region;

struct Plain {
    x: u32,
}

#[derive(Region)]
struct Outer {
    inner: Plain,
}

fn main() {}
