use crl::Region;

#[derive(Region)]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
