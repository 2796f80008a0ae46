//! Two nodes share a counter over QUIC (mutual TLS, ephemeral certificates, 127.0.0.1).
//!
//! Run: `cargo run --example hello`

use crl::{Cluster, Region};

#[derive(Region, Debug, Clone)]
struct Counter {
    value: u64,
}

#[tokio::main]
async fn main() -> Result<(), crl::Error> {
    let cluster = Cluster::local(2).await?;
    let (a, b) = (cluster.node(0), cluster.node(1));
    let counter = a.create(Counter { value: 0 }).await?;
    a.bind("hello/counter", counter.id()).await?;
    println!(
        "n0 created {} and bound it to \"hello/counter\"",
        counter.id()
    );

    let id = b.lookup("hello/counter").await?;
    let remote = b.map::<Counter>(id).await?;
    for _ in 0..10 {
        let mut w = remote.start_write().await?; // the first is a miss, the rest are hits
        w.value += 1;
    }
    println!("n1 incremented it 10 times");
    let r = counter.start_read().await?; // the home recalls n1's modified copy
    println!("n0 reads value = {}", r.value);
    drop(r);
    for node in cluster.nodes() {
        let s = node.stats();
        let bytes: u64 = s.peers.iter().map(|p| p.bytes_sent).sum();
        println!(
            "n{}: {} misses, {} messages sent ({} bytes), {} recalls sent",
            s.node.0, s.engine.misses, s.engine.messages_sent, bytes, s.engine.recalls_sent
        );
    }
    cluster.shutdown().await;
    Ok(())
}
