use crl::Region;

#[derive(Region)]
struct Named {
    id: u32,
    name: &'static str,
}

fn main() {}
