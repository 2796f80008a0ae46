//! A cluster of many nodes in one process: start, migrating writes and cross-node reads, then
//! shutdown, each timed (issue 10: "a 32-node cluster shuts down in under 3 s").
//!
//! ```sh
//! cargo run --release --example many_nodes -- --nodes 32
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use crl::{Cluster, Region};

#[derive(Region, Clone, Debug)]
struct Counter {
    n: u64,
}

#[derive(Parser)]
struct Args {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 32)]
    nodes: usize,
    /// Writes per node to the shared counter (each one migrates it).
    #[arg(long, default_value_t = 50)]
    writes: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let t = Instant::now();
    let cluster = Cluster::local(args.nodes).await.expect("cluster");
    let started = t.elapsed();
    let t = Instant::now();
    let id = cluster
        .node(0)
        .create(Counter { n: 0 })
        .await
        .expect("create")
        .id();
    let mut tasks = Vec::new();
    for node in cluster.nodes() {
        let node = node.clone();
        let writes = args.writes;
        tasks.push(tokio::spawn(async move {
            let h = node.map::<Counter>(id).await.expect("map");
            for _ in 0..writes {
                h.start_write().await.expect("write").n += 1;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let n = cluster
        .node(args.nodes - 1)
        .map::<Counter>(id)
        .await
        .expect("map")
        .start_read()
        .await
        .expect("read")
        .n;
    assert_eq!(n, args.writes * args.nodes as u64, "lost a write");
    let worked = t.elapsed();
    // Let the pings run for a while: the liveness traffic of an idle cluster.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let msgs: u64 = cluster
        .nodes()
        .iter()
        .flat_map(|n| n.stats().peers)
        .map(|p| p.messages_sent)
        .sum();
    let t = Instant::now();
    cluster.shutdown().await;
    let shutdown = t.elapsed();
    println!(
        "{} nodes: started in {started:?}; {} migrating writes and a read in {worked:?}; {msgs} messages sent in all; shut down in {shutdown:?}",
        args.nodes,
        args.writes * args.nodes as u64
    );
}
