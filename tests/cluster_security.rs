//! Who may talk to a node: only the cluster's own nodes, each as itself. A foreign
//! certificate, a hello claiming another node or cluster, garbage frames and oversized frames
//! are refused, and the cluster keeps serving.

use std::net::SocketAddr;
use std::time::Duration;

use crl::core::wire::{self, Message};
use crl::net::tls::{ClusterCa, NodeIdentity, node_dns_name};
use crl::{Cluster, NodeId, Region};

#[derive(Region, Clone, Debug, PartialEq)]
struct Counter {
    value: u64,
}

const WAIT: Duration = Duration::from_secs(5);

/// A QUIC client with `identity`'s certificate, connected to `addr` as `server`.
async fn connect(
    identity: &NodeIdentity,
    addr: SocketAddr,
    server: NodeId,
) -> Option<quinn::Connection> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(identity.client_config().unwrap());
    let connecting = endpoint.connect(addr, &node_dns_name(server)).unwrap();
    tokio::time::timeout(WAIT, connecting).await.ok()?.ok()
}

/// Sends raw bytes on a fresh stream and returns whether the node closed the connection.
async fn send_and_expect_close(conn: &quinn::Connection, bytes: &[u8]) -> bool {
    let (mut s, _answers) = conn.open_bi().await.unwrap();
    let _ = s.write_all(bytes).await;
    let _ = s.finish();
    tokio::time::timeout(WAIT, conn.closed()).await.is_ok()
}

fn frame(msg: &Message) -> Vec<u8> {
    wire::encode(msg).unwrap()
}

/// The cluster still works: node 1 reads and writes a region homed at node 0.
async fn still_serving(cluster: &Cluster, counter: crl::RegionId) {
    let h = cluster
        .node(1)
        .map::<Counter>(counter)
        .await
        .expect("map after the attack");
    h.start_write().await.expect("write after the attack").value += 1;
    h.flush().await.unwrap();
}

async fn setup() -> (Cluster, crl::RegionId, SocketAddr) {
    // No peer timeout: no pings, so node 2 stays silent towards node 0 and an impostor with
    // its certificate can start a session of its own there.
    let cluster = Cluster::local_with(3, |c| c.peer_timeout = None)
        .await
        .unwrap();
    let counter = cluster.node(0).create(Counter { value: 0 }).await.unwrap();
    let id = counter.id();
    std::mem::forget(counter); // keep it mapped at the home for the test's duration
    let addr = cluster.node(0).local_addr();
    (cluster, id, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_ca_certificate_is_refused() {
    let (cluster, counter, addr) = setup().await;
    let rogue = ClusterCa::generate("rogue")
        .unwrap()
        .issue(NodeId(1))
        .unwrap();
    // The rogue trusts its own CA, so it cannot even accept the node's certificate; either
    // way no authenticated exchange happens.
    match connect(&rogue, addr, NodeId(0)).await {
        None => {}
        Some(conn) => {
            let hello = frame(&Message::Hello {
                cluster_id: cluster.node(0).cluster_id(),
                node: NodeId(1),
                epoch: 0,
                generation: 0,
                peer_epoch: 0,
                peer_generation: 0,
            });
            assert!(
                send_and_expect_close(&conn, &hello).await,
                "a foreign certificate was accepted"
            );
        }
    }
    assert_eq!(cluster.node(0).stats().violations, 0);
    still_serving(&cluster, counter).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_must_match_the_certificate_and_the_cluster() {
    let (cluster, counter, addr) = setup().await;
    let cluster_id = cluster.node(0).cluster_id();
    let as_node1 = cluster.ca().issue(NodeId(1)).unwrap();
    // Node 1's certificate claiming to be node 2 (not even a member): refused.
    let conn = connect(&as_node1, addr, NodeId(0))
        .await
        .expect("tls handshake");
    assert!(
        send_and_expect_close(
            &conn,
            &frame(&Message::Hello {
                cluster_id,
                node: NodeId(2),
                epoch: 0,
                generation: 0,
                peer_epoch: 0,
                peer_generation: 0,
            })
        )
        .await
    );
    // Claiming node 0 (a member, but not this certificate): refused.
    let conn = connect(&as_node1, addr, NodeId(0))
        .await
        .expect("tls handshake");
    assert!(
        send_and_expect_close(
            &conn,
            &frame(&Message::Hello {
                cluster_id,
                node: NodeId(0),
                epoch: 0,
                generation: 0,
                peer_epoch: 0,
                peer_generation: 0,
            })
        )
        .await
    );
    // The right node id but another cluster: refused.
    let conn = connect(&as_node1, addr, NodeId(0))
        .await
        .expect("tls handshake");
    assert!(
        send_and_expect_close(
            &conn,
            &frame(&Message::Hello {
                cluster_id: cluster_id ^ 1,
                node: NodeId(1),
                epoch: 0,
                generation: 0,
                peer_epoch: 0,
                peer_generation: 0,
            })
        )
        .await
    );
    // A protocol message before any hello: refused.
    let get = Message::GetShared {
        region: counter,
        fingerprint: Counter::FINGERPRINT,
        priority: wire::PRIORITY_NONE,
    };
    let conn = connect(&as_node1, addr, NodeId(0))
        .await
        .expect("tls handshake");
    assert!(send_and_expect_close(&conn, &frame(&get)).await);
    still_serving(&cluster, counter).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_cut_the_connection_not_the_node() {
    let (cluster, counter, addr) = setup().await;
    let cluster_id = cluster.node(0).cluster_id();
    let as_node2 = cluster.ca().issue(NodeId(2)).unwrap();
    // The impostor speaks with node 2's certificate and epoch (node 2 stays idle): an older
    // epoch would be refused as a zombie, a newer one would make node 0 treat node 2 as
    // restarted. Node 1 checks that the cluster still serves.
    let hello = frame(&Message::Hello {
        cluster_id,
        node: NodeId(2),
        epoch: cluster.node(2).stats().epoch,
        generation: 0,
        peer_epoch: 0,
        peer_generation: 0,
    });

    // Garbage after a valid hello.
    let conn = connect(&as_node2, addr, NodeId(0))
        .await
        .expect("tls handshake");
    let mut bytes = hello.clone();
    bytes.extend_from_slice(&[0xA5; 300]);
    assert!(
        send_and_expect_close(&conn, &bytes).await,
        "garbage was not cut off"
    );

    // A header announcing a frame far over the limit (refused before any allocation).
    let conn = connect(&as_node2, addr, NodeId(0))
        .await
        .expect("tls handshake");
    let mut header = frame(&Message::FlushAck { region: counter })[..wire::HEADER_LEN].to_vec();
    header[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut bytes = hello.clone();
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&header);
    assert!(
        send_and_expect_close(&conn, &bytes).await,
        "an oversized frame was not cut off"
    );

    // A well-formed message that breaks the protocol: the engine reports it, the link closes.
    let conn = connect(&as_node2, addr, NodeId(0))
        .await
        .expect("tls handshake");
    let mut bytes = hello.clone();
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend(frame(&Message::RecallAck {
        region: counter,
        image: None,
    }));
    assert!(
        send_and_expect_close(&conn, &bytes).await,
        "a protocol violation was not cut off"
    );

    // A message number that skips ahead breaks the session: cut off.
    let conn = connect(&as_node2, addr, NodeId(0))
        .await
        .expect("tls handshake");
    let mut bytes = hello.clone();
    bytes.extend_from_slice(&1000u64.to_le_bytes());
    bytes.extend(frame(&Message::FlushAck { region: counter }));
    assert!(
        send_and_expect_close(&conn, &bytes).await,
        "a gap in the message numbers was not cut off"
    );

    // A hello from an older incarnation (a zombie): refused.
    let conn = connect(&as_node2, addr, NodeId(0))
        .await
        .expect("tls handshake");
    let zombie = frame(&Message::Hello {
        cluster_id,
        node: NodeId(2),
        epoch: cluster.node(2).stats().epoch - 1,
        generation: 0,
        peer_epoch: 0,
        peer_generation: 0,
    });
    assert!(
        send_and_expect_close(&conn, &zombie).await,
        "a zombie's hello was accepted"
    );
    assert!(cluster.node(0).stats().violations >= 1);

    // Raw UDP garbage at the port is dropped by QUIC.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..100u8 {
        udp.send_to(&[i; 1200], addr).unwrap();
    }
    still_serving(&cluster, counter).await;
    cluster.shutdown().await;
}
