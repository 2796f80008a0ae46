use crl::Region;

#[derive(Region, Debug, Clone, PartialEq)]
pub struct Slot<T, const N: usize> {
    pub items: [T; N],
    pub extra: Vec<(T, bool)>,
}

#[derive(Region, Debug, Clone, PartialEq)]
pub struct Pair<A, B>(pub A, pub B)
where
    A: Clone;

fn main() {
    let s = Slot {
        items: [1u16, 2, 3],
        extra: vec![(4, true)],
    };
    assert_eq!(
        Slot::<u16, 3>::decode_region(&s.encode_region().unwrap()).unwrap(),
        s
    );
    let p = Pair(String::from("a"), Some(1i8));
    assert_eq!(Pair::decode_region(&p.encode_region().unwrap()).unwrap(), p);
}
