use crl::Region;
use std::rc::Rc;

#[derive(Region)]
struct Shared {
    data: Rc<Vec<u8>>,
}

fn main() {}
