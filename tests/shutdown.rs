//! Shutting a node down releases its address at once, even while handles keep the node
//! alive and peers keep sending to it: `Cluster::restart` binds the same port again. (Found
//! as a flaky `AddrInUse` from `Cluster::restart` in `tests/leases.rs`: quinn keeps the socket
//! an endpoint was rebound away from until traffic arrives on the new one.)

use std::time::Duration;

use crl::{Cluster, Region};

#[derive(Region, Clone, Debug)]
struct Cell {
    value: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_down_node_releases_its_address_at_once() {
    let cluster = Cluster::local_with(3, |c| c.peer_timeout = Some(Duration::from_secs(2)))
        .await
        .unwrap();
    // Connections in both directions, and a handle that keeps node 0 alive.
    let id = cluster
        .node(0)
        .create(Cell { value: 1 })
        .await
        .unwrap()
        .id();
    for n in 1..3 {
        let h = cluster.node(n).map::<Cell>(id).await.unwrap();
        assert_eq!(h.start_read().await.unwrap().value, 1);
    }
    let kept = cluster.node(0).clone();
    let addr = kept.local_addr();
    kept.shutdown().await;
    // Peers keep pinging the address meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bound = std::net::UdpSocket::bind(addr);
    assert!(
        bound.is_ok(),
        "{addr} is still in use after shutdown: {:?}",
        bound.err()
    );
    drop(kept);
    cluster.shutdown().await;
}

/// Dropping every clone, handle and transaction of a node stops it, as a quinn endpoint closes
/// when dropped: its address is free again soon after, without a call to `shutdown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_stops_the_node() {
    let cluster = Cluster::local(2).await.unwrap();
    let addrs: Vec<_> = cluster.nodes().iter().map(|n| n.local_addr()).collect();
    let id = cluster
        .node(0)
        .create(Cell { value: 1 })
        .await
        .unwrap()
        .id();
    let h = cluster.node(1).map::<Cell>(id).await.unwrap();
    assert_eq!(h.start_read().await.unwrap().value, 1);
    cluster
        .node(1)
        .transaction(async |tx| {
            tx.write(&h).await?.value = 2;
            Ok::<_, crl::Error>(())
        })
        .await
        .unwrap();
    // Names on both nodes' tables: each node then keeps handles on the other's table, which
    // must not keep it running.
    for (i, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
        cluster.node(i % 2).bind(name, id).await.unwrap();
        assert_eq!(cluster.node(1 - i % 2).lookup(name).await.unwrap(), id);
    }
    drop(h);
    drop(cluster);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for addr in addrs {
        loop {
            if std::net::UdpSocket::bind(addr).is_ok() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{addr} is still in use 10 s after every handle of its node was dropped"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
