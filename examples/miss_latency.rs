//! Miss latency and miss throughput over QUIC, each next to a raw quinn baseline measured in
//! the same run (DESIGN.md §7 "Targets"; the figures live in BENCHMARKS.md, "Miss latency").
//!
//! Every endpoint lives in this process, on 127.0.0.1, on one multi-thread tokio runtime. The
//! raw baseline uses the same mutual-TLS configuration as crl (`NodeIdentity::server_config` /
//! `client_config`) and one long-lived bidirectional stream per client task: the client writes a
//! 64-byte request and the server answers with 64 bytes (or 4 KiB for the 4 KiB baseline).
//!
//! Cases (one 6-node crl cluster; every region is homed at node 0):
//! - read miss: node 1 reads (timed), then flushes its copy (untimed) so the next read misses.
//! - write miss invalidating 1 / 4 sharers: the sharers read first (untimed), then node 1's
//!   `start_write` is timed; node 1 flushes its copy afterwards (untimed).
//! - write miss to a region Modified at node 2: node 2 writes (untimed), node 1 writes (timed).
//! - 16 read misses in flight: 16 tasks on node 1, each reading then flushing its own region
//!   (a read miss plus a flush round trip per loop), and a second variant where each task reads
//!   regions it has never read (cold misses, no flush: one round trip per miss).
//!
//! Run: `cargo run --release --example miss_latency [-- --iters N | --quick]`, and pinned to
//! one vCPU: `taskset -c 0 cargo run --release --example miss_latency`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use crl::net::tls::{ClusterCa, node_dns_name};
use crl::{Cluster, Handle, Node, NodeId, Region};

/// Concurrency of the throughput cases.
const IN_FLIGHT: usize = 16;
/// Size of a raw request frame.
const REQUEST: usize = 64;

#[derive(Parser, Debug)]
#[command(about = "crl miss latency and throughput against a raw quinn baseline")]
struct Args {
    /// Timed iterations per latency case (and per task in the throughput cases).
    #[arg(long, default_value_t = 2000)]
    iters: usize,
    /// CI-size run (200 iterations, short warm-up).
    #[arg(long)]
    quick: bool,
    /// Also write every latency sample to this CSV file (`case,latency_us`), for
    /// `tools/crl-plots` (the CDF in BENCHMARKS.md).
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
}

#[derive(Region, Clone, Debug)]
struct Blob {
    data: Vec<u8>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One row of the result table.
struct Row {
    case: String,
    result: Measured,
    /// Engine messages (all nodes) per timed operation.
    msgs: Option<f64>,
}

enum Measured {
    Latency {
        p50: Duration,
        p99: Duration,
        /// Every sample, sorted (for `--csv`).
        samples: Vec<Duration>,
    },
    Throughput {
        ops_per_s: f64,
    },
}

fn latency(mut samples: Vec<Duration>) -> Measured {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Measured::Latency {
        p50: at(0.50),
        p99: at(0.99),
        samples,
    }
}

fn progress(what: &str) {
    eprintln!("[miss_latency] {what}");
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ---------------------------------------------------------------------------------------------
// Raw quinn baseline
// ---------------------------------------------------------------------------------------------

struct Raw {
    server: quinn::Endpoint,
    client: quinn::Endpoint,
    conn: quinn::Connection,
}

/// A server echoing on every bidirectional stream: for each 64-byte request it writes back the
/// number of bytes named by the request's first 4 bytes (little endian).
async fn raw_start(ca: &ClusterCa) -> Result<Raw, BoxError> {
    let server_cfg = ca.issue(NodeId(100))?.server_config()?;
    let client_cfg = ca.issue(NodeId(101))?.client_config()?;
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
    let addr: SocketAddr = server.local_addr()?;
    let accept = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let mut req = [0u8; REQUEST];
                        let mut resp = Vec::new();
                        while recv.read_exact(&mut req).await.is_ok() {
                            let len = u32::from_le_bytes(req[..4].try_into().unwrap()) as usize;
                            resp.resize(len, 0xA5);
                            if send.write_all(&resp).await.is_err() {
                                return;
                            }
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
        server,
        client,
        conn,
    })
}

struct RawStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    req: [u8; REQUEST],
    resp: Vec<u8>,
}

impl RawStream {
    async fn open(conn: &quinn::Connection, resp_len: usize) -> Result<Self, BoxError> {
        let (send, recv) = conn.open_bi().await?;
        let mut req = [0u8; REQUEST];
        req[..4].copy_from_slice(&(resp_len as u32).to_le_bytes());
        Ok(RawStream {
            send,
            recv,
            req,
            resp: vec![0; resp_len],
        })
    }

    async fn round_trip(&mut self) -> Result<(), BoxError> {
        self.send.write_all(&self.req).await?;
        self.recv.read_exact(&mut self.resp).await?;
        Ok(())
    }
}

async fn raw_latency(
    raw: &Raw,
    resp_len: usize,
    warm: usize,
    iters: usize,
) -> Result<Measured, BoxError> {
    let mut s = RawStream::open(&raw.conn, resp_len).await?;
    for _ in 0..warm {
        s.round_trip().await?;
    }
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        s.round_trip().await?;
        samples.push(t.elapsed());
    }
    Ok(latency(samples))
}

async fn raw_throughput(raw: &Raw, warm: usize, per_task: usize) -> Result<Measured, BoxError> {
    let mut streams = Vec::new();
    for _ in 0..IN_FLIGHT {
        let mut s = RawStream::open(&raw.conn, REQUEST).await?;
        for _ in 0..warm {
            s.round_trip().await?;
        }
        streams.push(s);
    }
    let start = Arc::new(tokio::sync::Barrier::new(IN_FLIGHT + 1));
    let mut tasks = Vec::new();
    for mut s in streams {
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await; // warm-up done everywhere
            start.wait().await; // go
            for _ in 0..per_task {
                s.round_trip().await?;
            }
            Ok::<_, BoxError>(())
        }));
    }
    start.wait().await;
    let t = Instant::now();
    start.wait().await;
    for task in tasks {
        task.await??;
    }
    let elapsed = t.elapsed();
    Ok(Measured::Throughput {
        ops_per_s: (IN_FLIGHT * per_task) as f64 / elapsed.as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------------------------
// crl cases
// ---------------------------------------------------------------------------------------------

/// Engine messages sent by every node so far.
fn messages(cluster: &Cluster) -> u64 {
    cluster
        .nodes()
        .iter()
        .map(|n| n.stats().engine.messages_sent)
        .sum()
}

fn misses(node: &Node) -> u64 {
    node.stats().engine.misses
}

/// Latency of one timed step, with untimed set-up before it; counts the engine messages (all
/// nodes) sent during the timed step.
async fn crl_latency<S, SF, T, TF>(
    cluster: &Cluster,
    warm: usize,
    iters: usize,
    mut setup: S,
    mut timed: T,
) -> Result<(Measured, f64), BoxError>
where
    S: FnMut() -> SF,
    SF: Future<Output = Result<(), crl::Error>>,
    T: FnMut() -> TF,
    TF: Future<Output = Result<(), crl::Error>>,
{
    for _ in 0..warm {
        setup().await?;
        timed().await?;
    }
    let mut samples = Vec::with_capacity(iters);
    let mut msgs = 0;
    for _ in 0..iters {
        setup().await?;
        let before = messages(cluster);
        let t = Instant::now();
        timed().await?;
        samples.push(t.elapsed());
        msgs += messages(cluster) - before;
    }
    Ok((latency(samples), msgs as f64 / iters as f64))
}

async fn blob(node: &Node, len: usize) -> Result<Handle<Blob>, crl::Error> {
    node.create(Blob { data: vec![7; len] }).await
}

/// Read miss at node 1 of a region homed at node 0.
async fn read_miss(c: &Cluster, len: usize, warm: usize, iters: usize) -> Result<Row, BoxError> {
    let home = blob(c.node(0), len).await?;
    let h = c.node(1).map::<Blob>(home.id()).await?;
    let h = &h;
    let before = misses(c.node(1));
    let (m, msgs) = crl_latency(
        c,
        warm,
        iters,
        move || h.flush(),
        move || async move {
            let r = h.start_read().await?;
            assert_eq!(r.data.len(), len);
            Ok(())
        },
    )
    .await?;
    let n = misses(c.node(1)) - before;
    assert!(
        n >= (warm + iters) as u64,
        "only {n} misses: some reads hit"
    );
    Ok(Row {
        case: format!("read miss, {} region", size_name(len)),
        result: m,
        msgs: Some(msgs),
    })
}

fn size_name(len: usize) -> String {
    if len >= 1024 {
        format!("{} KiB", len / 1024)
    } else {
        format!("{len} B")
    }
}

/// Write miss at node 1 that invalidates the copies of `sharers` (each reads first, untimed).
async fn write_miss_sharers(
    c: &Cluster,
    sharers: &[usize],
    warm: usize,
    iters: usize,
) -> Result<Row, BoxError> {
    let home = blob(c.node(0), 64).await?;
    let w = c.node(1).map::<Blob>(home.id()).await?;
    let mut readers = Vec::new();
    for &s in sharers {
        readers.push(c.node(s).map::<Blob>(home.id()).await?);
    }
    let (w, readers) = (&w, &readers);
    let recalls_before = c.node(0).stats().engine.recalls_sent;
    let (m, msgs) = crl_latency(
        c,
        warm,
        iters,
        move || async move {
            w.flush().await?; // node 1 drops its Modified copy (written back home)
            for r in readers {
                drop(r.start_read().await?);
            }
            Ok(())
        },
        move || async move {
            let mut g = w.start_write().await?;
            g.data[0] = g.data[0].wrapping_add(1);
            Ok(())
        },
    )
    .await?;
    let recalls = c.node(0).stats().engine.recalls_sent - recalls_before;
    let per = (warm + iters) * sharers.len();
    assert!(recalls >= per as u64, "{recalls} recalls, expected {per}");
    let noun = if sharers.len() == 1 {
        "sharer"
    } else {
        "sharers"
    };
    Ok(Row {
        case: format!("write miss, invalidates {} {noun}", sharers.len()),
        result: m,
        msgs: Some(msgs),
    })
}

/// Write miss at node 1 to a region Modified at node 2 (the home recalls it from node 2).
async fn write_miss_modified(c: &Cluster, warm: usize, iters: usize) -> Result<Row, BoxError> {
    let home = blob(c.node(0), 64).await?;
    let w1 = c.node(1).map::<Blob>(home.id()).await?;
    let w2 = c.node(2).map::<Blob>(home.id()).await?;
    let (w1, w2) = (&w1, &w2);
    let before = misses(c.node(1));
    let (m, msgs) = crl_latency(
        c,
        warm,
        iters,
        move || async move {
            let mut g = w2.start_write().await?;
            g.data[1] = g.data[1].wrapping_add(1);
            Ok(())
        },
        move || async move {
            let mut g = w1.start_write().await?;
            g.data[0] = g.data[0].wrapping_add(1);
            Ok(())
        },
    )
    .await?;
    let n = misses(c.node(1)) - before;
    assert!(n >= (warm + iters) as u64, "only {n} misses at node 1");
    Ok(Row {
        case: "write miss, Modified at a 3rd node".into(),
        result: m,
        msgs: Some(msgs),
    })
}

/// 16 tasks on node 1, each reading (miss) then flushing its own region, `per_task` times.
async fn read_flush_in_flight(c: &Cluster, warm: usize, per_task: usize) -> Result<Row, BoxError> {
    let mut handles = Vec::new();
    for _ in 0..IN_FLIGHT {
        let home = blob(c.node(0), 64).await?;
        handles.push((home.clone(), c.node(1).map::<Blob>(home.id()).await?));
    }
    let start = Arc::new(tokio::sync::Barrier::new(IN_FLIGHT + 1));
    let mut tasks = Vec::new();
    for (_home, h) in &handles {
        let h = h.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..warm {
                drop(h.start_read().await?);
                h.flush().await?;
            }
            start.wait().await; // warm-up done everywhere
            start.wait().await; // go
            for _ in 0..per_task {
                drop(h.start_read().await?);
                h.flush().await?;
            }
            Ok::<_, crl::Error>(())
        }));
    }
    start.wait().await;
    let before = messages(c);
    let t = Instant::now();
    start.wait().await;
    for task in tasks {
        task.await??;
    }
    let elapsed = t.elapsed();
    let n = IN_FLIGHT * per_task;
    Ok(Row {
        case: "16 in flight: read miss + flush loop".into(),
        result: Measured::Throughput {
            ops_per_s: n as f64 / elapsed.as_secs_f64(),
        },
        msgs: Some((messages(c) - before) as f64 / n as f64),
    })
}

/// 16 tasks on node 1, each reading `per_task` regions it has never read (mapped beforehand):
/// every read is a miss and nothing else is sent.
async fn cold_in_flight(c: &Cluster, warm: usize, per_task: usize) -> Result<Row, BoxError> {
    let n0 = c.node(0).clone();
    let n1 = c.node(1).clone();
    let mut sets = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (n0, n1) = (n0.clone(), n1.clone());
        sets.push(tokio::spawn(async move {
            let mut v = Vec::with_capacity(warm + per_task);
            for _ in 0..warm + per_task {
                let home = blob(&n0, 64).await?;
                v.push((home.clone(), n1.map::<Blob>(home.id()).await?));
            }
            Ok::<_, crl::Error>(v)
        }));
    }
    let mut handle_sets = Vec::new();
    for s in sets {
        handle_sets.push(s.await??);
    }
    let start = Arc::new(tokio::sync::Barrier::new(IN_FLIGHT + 1));
    let mut tasks = Vec::new();
    for set in handle_sets {
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            for (_home, h) in &set[..warm] {
                drop(h.start_read().await?);
            }
            start.wait().await; // warm-up done everywhere
            start.wait().await; // go
            for (_home, h) in &set[warm..] {
                drop(h.start_read().await?);
            }
            Ok::<_, crl::Error>(set)
        }));
    }
    start.wait().await;
    let before = messages(c);
    let misses_before = misses(&n1);
    let t = Instant::now();
    start.wait().await;
    let mut keep = Vec::new();
    for task in tasks {
        keep.push(task.await??);
    }
    let elapsed = t.elapsed();
    let n = IN_FLIGHT * per_task;
    let msgs = (messages(c) - before) as f64 / n as f64;
    assert!(
        misses(&n1) - misses_before >= n as u64,
        "some cold reads hit"
    );
    drop(keep);
    Ok(Row {
        case: "16 in flight: cold read misses".into(),
        result: Measured::Throughput {
            ops_per_s: n as f64 / elapsed.as_secs_f64(),
        },
        msgs: Some(msgs),
    })
}

// ---------------------------------------------------------------------------------------------

fn print_table(rows: &[Row], raw_p50: Duration, raw_tput: f64) {
    println!();
    println!("| case | p50 µs | p99 µs | ops/s | msgs/op | ratio to raw |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let msgs = r.msgs.map_or("–".into(), |m| format!("{m:.2}"));
        match r.result {
            Measured::Latency { p50, p99, .. } => println!(
                "| {} | {:.1} | {:.1} | – | {msgs} | {:.2}× |",
                r.case,
                us(p50),
                us(p99),
                us(p50) / us(raw_p50)
            ),
            Measured::Throughput { ops_per_s } => println!(
                "| {} | – | – | {:.0} | {msgs} | {:.2}× |",
                r.case,
                ops_per_s,
                ops_per_s / raw_tput
            ),
        }
    }
    println!();
}

/// Every latency sample of every latency case, one row each: `case,latency_us`.
fn write_csv(path: &std::path::Path, rows: &[Row]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "case,latency_us")?;
    for r in rows {
        if let Measured::Latency { samples, .. } = &r.result {
            for s in samples {
                writeln!(out, "{},{:.2}", r.case.replace(',', ";"), us(*s))?;
            }
        }
    }
    out.flush()
}

fn verdict(rows: &[Row], case: &str, raw_p50: Duration, raw_tput: f64, target: &str) {
    let Some(r) = rows.iter().find(|r| r.case == case) else {
        return;
    };
    let (ratio, met) = match r.result {
        Measured::Latency { p50, .. } => {
            let x = us(p50) / us(raw_p50);
            let limit: f64 = target
                .trim_start_matches("≤ ")
                .trim_end_matches('×')
                .parse()
                .unwrap();
            (x, x <= limit)
        }
        Measured::Throughput { ops_per_s } => {
            let x = ops_per_s / raw_tput;
            let limit: f64 = target
                .trim_start_matches("≥ ")
                .trim_end_matches('×')
                .parse()
                .unwrap();
            (x, x >= limit)
        }
    };
    println!(
        "target {case}: {target} raw → {ratio:.2}× {}",
        if met { "MET" } else { "NOT MET" }
    );
}

async fn run(args: Args) -> Result<(), BoxError> {
    let iters = if args.quick { 200 } else { args.iters.max(10) };
    let warm = (iters / 10).clamp(20, 200);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "miss_latency: {iters} timed iterations per case, {warm} warm-up; tokio multi-thread runtime, {workers} worker thread(s)"
    );

    let ca = ClusterCa::generate("miss-latency-raw")?;
    let raw = raw_start(&ca).await?;
    let mut rows = Vec::new();

    progress("raw quinn: 64 B round trip");
    let raw64 = raw_latency(&raw, REQUEST, warm, iters).await?;
    let Measured::Latency { p50: raw_p50, .. } = raw64 else {
        unreachable!()
    };
    rows.push(Row {
        case: "raw quinn 64 B round trip".into(),
        result: raw64,
        msgs: None,
    });
    progress("raw quinn: 64 B request, 4 KiB response");
    rows.push(Row {
        case: "raw quinn 64 B → 4 KiB round trip".into(),
        result: raw_latency(&raw, 4096, warm, iters).await?,
        msgs: None,
    });
    progress("raw quinn: 16 in flight");
    let tput = raw_throughput(&raw, warm, iters).await?;
    let Measured::Throughput {
        ops_per_s: raw_tput,
    } = tput
    else {
        unreachable!()
    };
    rows.push(Row {
        case: "raw quinn 16 in flight".into(),
        result: tput,
        msgs: None,
    });
    progress("crl: starting a 6-node cluster");
    let c = Cluster::local_with(6, |cfg| cfg.op_timeout = Duration::from_secs(10)).await?;

    progress("crl: read miss, 64 B");
    rows.push(read_miss(&c, 64, warm, iters).await?);
    progress("crl: read miss, 4 KiB");
    rows.push(read_miss(&c, 4096, warm, iters).await?);
    progress("crl: write miss invalidating 1 sharer");
    rows.push(write_miss_sharers(&c, &[2], warm, iters).await?);
    progress("crl: write miss invalidating 4 sharers");
    rows.push(write_miss_sharers(&c, &[2, 3, 4, 5], warm, iters).await?);
    progress("crl: write miss to a region Modified at a third node");
    rows.push(write_miss_modified(&c, warm, iters).await?);
    progress("crl: 16 in flight, read miss + flush");
    rows.push(read_flush_in_flight(&c, warm, iters).await?);
    progress("crl: 16 in flight, cold read misses");
    rows.push(cold_in_flight(&c, warm, iters).await?);

    progress("raw quinn: 64 B round trip again (drift check)");
    rows.push(Row {
        case: "raw quinn 64 B round trip, end of run".into(),
        result: raw_latency(&raw, REQUEST, warm, iters).await?,
        msgs: None,
    });
    raw.conn.close(0u32.into(), b"done");
    raw.client.wait_idle().await;
    raw.server.close(0u32.into(), b"done");

    print_table(&rows, raw_p50, raw_tput);
    if let Some(path) = &args.csv {
        write_csv(path, &rows)?;
        progress(&format!("latency samples written to {}", path.display()));
    }
    verdict(&rows, "read miss, 64 B region", raw_p50, raw_tput, "≤ 1.2×");
    verdict(
        &rows,
        "write miss, invalidates 1 sharer",
        raw_p50,
        raw_tput,
        "≤ 2.2×",
    );
    verdict(
        &rows,
        "16 in flight: read miss + flush loop",
        raw_p50,
        raw_tput,
        "≥ 0.8×",
    );
    verdict(
        &rows,
        "16 in flight: cold read misses",
        raw_p50,
        raw_tput,
        "≥ 0.8×",
    );

    for node in c.nodes().iter().take(3) {
        let s = node.stats();
        println!(
            "n{}: {} misses, {} messages sent, {} received, {} recalls sent, {} violations",
            s.node.0,
            s.engine.misses,
            s.engine.messages_sent,
            s.engine.messages_received,
            s.engine.recalls_sent,
            s.violations
        );
    }
    c.shutdown().await;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}
