use crl::Region;
use std::cell::{Cell, RefCell};

#[derive(Region)]
struct Counter {
    hits: Cell<u32>,
    log: RefCell<Vec<String>>,
}

fn main() {}
