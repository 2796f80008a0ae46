use crl::Region;

#[derive(Region)]
struct Borrowed<'a> {
    name: &'a str,
}

fn main() {}
