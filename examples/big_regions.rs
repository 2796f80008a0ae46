//! Big regions: read misses of 1 MiB, 64 MiB and 256 MiB regions between two nodes, next to
//! raw quinn moving the same bytes in the same run (issue 10; figures in BENCHMARKS.md, "Big
//! regions").
//!
//! The nodes (three; the third only for the probe below) and both raw endpoints live in this
//! process, on 127.0.0.1, on one multi-thread tokio runtime, with the same mutual-TLS
//! configuration. A crl read miss of a region of N bytes ships its archived image (N bytes)
//! from the home after the message's head, raw, in fragments of 1 MiB on the session,
//! collects and decodes it, and grants the copy; the timed span is `start_read` until the
//! guard is granted. After each rep node 1 flushes its copy (untimed), so the next read misses
//! again. The raw baseline asks, on a new bidirectional stream, for N bytes that the server
//! writes from memory with `write_all`; the client reads them into one buffer with
//! `read_to_end`.
//!
//! During one more miss of the largest size, three tasks each write a small region at its
//! home and read it at another node, in a loop: homed at node 0 (the big image's sender)
//! and read at node 1 (its reader), homed at node 1 and read at node 0, homed at node 2 and
//! read at node 1. A write recalls the reader's copy and the read misses, so each round trip
//! crosses a link both ways; on the big image's link the messages pass its remaining pieces
//! (`crl_core::wire::Lane`). For each probe the number of round trips, the median, the
//! longest and when the longest began are printed (the head-of-line cost, stated rather than
//! hidden). The home encodes the big image, and the reader decodes it, beside the engine
//! (`crl_core::engine::ImageWork`), so neither node stops handling other messages for it;
//! before that, the longest round trip was that work. (An earlier version timed
//! the read alone, which came after the wait: it printed 0.3 ms while the round trip took the
//! whole transfer.)
//!
//! Run: `cargo run --release --example big_regions [-- --sizes 1,64,256 --reps 3]`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use crl::net::tls::{ClusterCa, node_dns_name};
use crl::{Cluster, Node, NodeId, Region};

#[derive(Parser, Debug)]
#[command(about = "crl big-region read misses against raw quinn")]
struct Args {
    /// Region sizes in MiB, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
    sizes: Vec<usize>,
    /// Timed repetitions per size (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Skip the head-of-line measurement.
    #[arg(long)]
    no_small: bool,
}

#[derive(Region, Clone, Debug)]
struct Blob {
    data: Vec<u8>,
}

#[derive(Region, Clone, Debug)]
struct Counter {
    value: u64,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The size of the warm-up transfer on both paths, in MiB.
const WARM_UP_MIB: usize = 8;

fn progress(what: &str) {
    eprintln!("[big_regions] {what}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// A raw quinn server that answers each bidirectional stream's 8-byte length request with
/// that many bytes from one preallocated buffer.
struct Raw {
    _server: quinn::Endpoint,
    _client: quinn::Endpoint,
    conn: quinn::Connection,
}

async fn raw_start(ca: &ClusterCa, max: usize) -> Result<Raw, BoxError> {
    let server_cfg = ca.issue(NodeId(100))?.server_config()?;
    let client_cfg = ca.issue(NodeId(101))?.client_config()?;
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
    let addr: SocketAddr = server.local_addr()?;
    let accept = server.clone();
    let data: Arc<Vec<u8>> = Arc::new((0..max).map(|i| i as u8).collect());
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let data = data.clone();
                    tokio::spawn(async move {
                        let mut req = [0u8; 8];
                        if recv.read_exact(&mut req).await.is_err() {
                            return;
                        }
                        let len = (u64::from_le_bytes(req) as usize).min(data.len());
                        if send.write_all(&data[..len]).await.is_ok() {
                            let _ = send.finish();
                        }
                    });
                }
            });
        }
    });
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(client_cfg);
    let conn = client.connect(addr, &node_dns_name(NodeId(100)))?.await?;
    Ok(Raw {
        _server: server,
        _client: client,
        conn,
    })
}

async fn raw_fetch(raw: &Raw, len: usize) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let (mut send, mut recv) = raw.conn.open_bi().await?;
    send.write_all(&(len as u64).to_le_bytes()).await?;
    let got = recv.read_to_end(len + 1).await?;
    let took = started.elapsed();
    if got.len() != len {
        return Err(format!("raw fetch got {} of {len} bytes", got.len()).into());
    }
    Ok(took)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    // The raw server's buffer holds the largest size and the warm-up's 8 MiB.
    let max = args
        .sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(WARM_UP_MIB)
        << 20;
    progress("starting a 3-node cluster and a raw quinn pair");
    let cluster = Cluster::local_with(3, |c| c.op_timeout = Duration::from_secs(120)).await?;
    let (home, reader) = (cluster.node(0).clone(), cluster.node(1).clone());
    // Only the small-message probe uses the third node.
    let third = cluster.node(2).clone();
    let ca = ClusterCa::generate("big-regions-raw")?;
    let raw = raw_start(&ca, max).await?;
    // Warm both paths (connections, congestion windows, allocator).
    raw_fetch(&raw, WARM_UP_MIB << 20).await?;
    let warm = home
        .create(Blob {
            data: vec![1; WARM_UP_MIB << 20],
        })
        .await?;
    let w = reader.map::<Blob>(warm.id()).await?;
    drop(w.start_read().await?);
    w.flush().await?;

    println!(
        "{:>9} {:>16} {:>16} {:>8}",
        "size", "raw quinn MiB/s", "crl miss MiB/s", "crl/raw"
    );
    for &mib in &args.sizes {
        let len = mib << 20;
        progress(&format!("{mib} MiB: creating the region"));
        let region = home
            .create(Blob {
                data: (0..len).map(|i| (i * 7) as u8).collect(),
            })
            .await?;
        let far = reader.map::<Blob>(region.id()).await?;
        let mut crl_times = Vec::new();
        let mut raw_times = Vec::new();
        for rep in 0..args.reps {
            progress(&format!("{mib} MiB: rep {}", rep + 1));
            raw_times.push(raw_fetch(&raw, len).await?);
            let started = Instant::now();
            let g = far.start_read().await?;
            crl_times.push(started.elapsed());
            assert_eq!(g.data.len(), len);
            assert_eq!(g.data[len - 1], ((len - 1) * 7) as u8);
            drop(g);
            far.flush().await?;
        }
        let (raw_t, crl_t) = (median(raw_times), median(crl_times));
        let (raw_rate, crl_rate) = (mib_per_s(len, raw_t), mib_per_s(len, crl_t));
        println!(
            "{:>6} MiB {:>16.0} {:>16.0} {:>7.2}x   (median of {}: raw {:.1} ms, crl {:.1} ms)",
            mib,
            raw_rate,
            crl_rate,
            crl_rate / raw_rate,
            args.reps,
            raw_t.as_secs_f64() * 1e3,
            crl_t.as_secs_f64() * 1e3,
        );
        if !args.no_small && mib == *args.sizes.iter().max().unwrap() {
            progress(&format!(
                "{mib} MiB: small misses on the same link during the transfer"
            ));
            let done = Arc::new(AtomicBool::new(false));
            // Small regions homed at either end, each written at its home and read at the
            // other node: a write+read round trip crosses the link both ways.
            let t0 = Instant::now();
            let toward_reader = probe(&home, &reader, done.clone(), t0).await?;
            let toward_home = probe(&reader, &home, done.clone(), t0).await?;
            let beside = probe(&third, &reader, done.clone(), t0).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let started = Instant::now();
            let g = far.start_read().await?;
            let big_t = started.elapsed();
            drop(g);
            done.store(true, Ordering::Relaxed);
            for (what, prober) in [
                (
                    "small write at the big image's sender, read at its reader",
                    toward_reader,
                ),
                (
                    "small write at the big image's reader, read at its sender",
                    toward_home,
                ),
                (
                    "small write at a third node, read at the big image's reader",
                    beside,
                ),
            ] {
                let mut trips = prober.await??;
                trips.sort_unstable();
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                let at = |d: Duration| ms(d) - ms(started - t0); // from the big miss's start
                let (median, (longest, longest_at)) = match trips.last() {
                    Some(&last) => (trips[trips.len() / 2].0, (last.0, at(last.1))),
                    None => (Duration::ZERO, (Duration::ZERO, 0.0)),
                };
                println!(
                    "  during a {mib} MiB miss ({:.0} ms): {} round trips ({what}), median {:.1} ms, longest {:.1} ms (started at {:+.0} ms)",
                    ms(big_t),
                    trips.len(),
                    ms(median),
                    ms(longest),
                    longest_at
                );
            }
            far.flush().await?;
        }
        drop(far);
        home.delete(region.id()).await?;
    }
    cluster.shutdown().await;
    Ok(())
}

/// Starts a task that, until `done`, writes a small region homed at `writer` and reads it at
/// `reader` (a recall, then a miss: both cross the link), timing each round trip: its
/// duration and when it started, after `t0`.
async fn probe(
    writer: &Node,
    reader: &Node,
    done: Arc<AtomicBool>,
    t0: Instant,
) -> Result<tokio::task::JoinHandle<Result<Vec<(Duration, Duration)>, crl::Error>>, crl::Error> {
    let small = writer.create(Counter { value: 0 }).await?;
    let far = reader.map::<Counter>(small.id()).await?;
    Ok(tokio::spawn(async move {
        let mut trips = Vec::new();
        while !done.load(Ordering::Relaxed) {
            let started = Instant::now();
            small.start_write().await?.value += 1;
            drop(far.start_read().await?);
            trips.push((started.elapsed(), started - t0));
        }
        Ok(trips)
    }))
}
