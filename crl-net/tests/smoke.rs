//! Smoke test: two in-process nodes share a counter over QUIC.

use crl_core::Region;
use crl_net::Cluster;

#[derive(Region, Clone, Debug, PartialEq)]
#[region(crate = ::crl_core)]
struct Counter {
    value: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_counter() {
    let cluster = Cluster::local(2).await.unwrap();
    let (a, b) = (cluster.node(0), cluster.node(1));
    let h = a.create(Counter { value: 1 }).await.unwrap();
    let g = b.map::<Counter>(h.id()).await.unwrap();
    assert_eq!(g.start_read().await.unwrap().value, 1);
    {
        let mut w = g.start_write().await.unwrap();
        w.value = 2;
    }
    assert_eq!(h.start_read().await.unwrap().value, 2);
    a.bind("counter", h.id()).await.unwrap();
    assert_eq!(b.lookup("counter").await.unwrap(), h.id());
    println!("{:?}", b.stats());
    cluster.shutdown().await;
}
