//! ET1 (DebitCredit) with pgbench's TPC-B proportions, over a crl cluster.
//!
//! **Data** (scale `s`): `s` branches, `10·s` tellers, `100,000·s` accounts and a history,
//! all balances starting at 0. Branch `b` is homed on node `b % nodes` together with its 10
//! tellers and its 100,000 accounts. Accounts are stored `--accounts-per-region` (default 100)
//! to an `AccountBlock` region: one region per account would be 1,000,000 regions at scale 10,
//! each mapped on every node of this one process (3 million handles and cached copies), which
//! is far heavier than the workload needs. A transaction locks the whole block, like a
//! database page lock; with 100 accounts per block, two of 16 clients collide on a block with
//! negligible probability. Branches and tellers are one region each. Each client appends its
//! history rows to its own `HistoryChunk` regions (100 rows each), homed on its own node and
//! listed in its `HistoryIndex` region; when a chunk is full the transaction creates the next
//! one and records it in the index, both in the same transaction. A row's `txn` id is unique:
//! the client's id in the high bits, a sequence number in the low bits.
//!
//! **The transaction**, in pgbench's order: account += delta, read the account's balance,
//! teller += delta, branch += delta, append a history row; delta uniform in [-5000, 5000].
//! With `--access uniform` (pgbench) the account, teller and branch are uniform and
//! independent. With `--access local` (DebitCredit) each client is bound to a branch homed on
//! its own node; its teller is one of that branch's, and its account is one of that branch's
//! with 85% probability, otherwise one of another branch (a client whose node homes no branch,
//! when `--scale` < `--nodes`, is bound to a remote one). Clients are spread round-robin over
//! the nodes; each is a tokio task on its node, and all nodes run in this process (QUIC with
//! mutual TLS on 127.0.0.1).
//!
//! **Durability.** With `--durable on` (the default) every node gets a data directory (under
//! the system temp dir, removed at exit), so commits are logged at the homes; the fsync floor
//! of that file system (4 KiB append + fdatasync, 200 samples) is measured before each run and
//! printed as `fsync_p50_ms`.
//!
//! **Output.** Progress every second, then per run one line that scripts parse:
//! `et1 access=.. scale=.. nodes=.. clients=.. durable=.. tps=.. p50_ms=.. p99_ms=..
//! retries_per_commit=.. aborts=.. [fsync_p50_ms=..]`. TPS counts the commits completed in the
//! `--seconds` window after `--warmup`; latency is the whole `transaction` call (retries
//! included) of each of those commits; `aborts` counts transactions that returned an error.
//! `--clients 1 4 16` runs each count in turn on the same loaded data.
//!
//! **Verification**, after every run, in one read-only transaction: sum(accounts) =
//! sum(tellers) = sum(branches) = sum(history deltas); every account, teller and branch
//! balance equals the sum of the history deltas naming it; the history holds exactly the
//! transactions the clients got `Ok` for, once each, with their deltas. Any violation exits
//! with status 1.
//!
//! **Crash soak** (`et1 crash-soak`, see `soak.rs`): real node processes of this same binary
//! (`et1 node ...`), `kill -9`ed and restarted in rounds, then the same checks plus "no
//! acknowledged commit lost".
//!
//! Run:
//! ```text
//! cargo run --release --example et1 -- --scale 1 --seconds 3 --clients 4 --access local
//! cargo run --release --example et1 -- --scale 10 --nodes 3 --clients 1 4 16 --access uniform
//! cargo run --release --example et1 -- crash-soak --rounds 20 --nodes 3 --clients-per-node 2 --scale 1
//! scripts/et1-vs-pgbench.sh     # against PostgreSQL's pgbench, same machine, same run
//! ```

mod db;
mod soak;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use crl::{Cluster, Error, Node};

use db::{Access, Db, History, Res, Rng, Shape};

#[derive(Parser, Debug)]
#[command(
    about = "ET1 / DebitCredit (pgbench TPC-B) over a crl cluster",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Real node processes, killed with SIGKILL and restarted in rounds; then verifies that no
    /// acknowledged commit was lost and the balances agree.
    CrashSoak(soak::SoakArgs),
    /// One node process of a crash soak (started by `crash-soak`).
    #[command(hide = true)]
    Node(soak::NodeArgs),
}

/// on / off.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OnOff {
    On,
    Off,
}

#[derive(Args, Debug, Clone)]
struct BenchArgs {
    /// Scale factor: branches (10 tellers and 100,000 accounts each).
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// Nodes of the in-process cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Concurrent clients; several values run one after the other on the same data.
    #[arg(long, num_args = 1.., default_values_t = [16u32])]
    clients: Vec<u32>,
    /// Measured seconds per run (after the warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Warm-up seconds per run (not measured).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// How clients choose accounts, tellers and branches.
    #[arg(long, value_enum, default_value_t = Access::Uniform)]
    access: Access,
    /// Give every node a data directory, so commits are logged (durable).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    durable: OnOff,
    /// Accounts per AccountBlock region (a transaction locks the whole block).
    #[arg(long, default_value_t = 100)]
    accounts_per_region: u32,
    /// Seed of the clients' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::CrashSoak(args)) => soak::orchestrate(&args),
        Some(Command::Node(args)) => soak::node_main(&args),
        None => bench_main(&cli.bench),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("et1: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bench_main(args: &BenchArgs) -> Res<()> {
    if args.scale == 0 || args.nodes == 0 || args.accounts_per_region == 0 {
        return Err("--scale, --nodes and --accounts-per-region must be positive".into());
    }
    if args.clients.contains(&0) {
        return Err("--clients must be positive".into());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?
        .block_on(bench(args))
}

/// What a client did in one run.
#[derive(Default)]
struct ClientResult {
    /// Latency (µs) of every commit completed in the measured window.
    latencies_us: Vec<u32>,
    /// txn id → delta of every commit it got `Ok` for.
    acked: Vec<(u64, i64)>,
    /// Transactions that returned an error.
    errors: u64,
}

/// Counters shared by the clients of a run and the progress printer.
#[derive(Default)]
struct Live {
    committed: AtomicU64,
    measured: AtomicU64,
    errors: AtomicU64,
}

async fn bench(args: &BenchArgs) -> Res<()> {
    let shape = Shape {
        scale: args.scale,
        nodes: args.nodes,
        per_block: args.accounts_per_region,
    };
    let durable = args.durable == OnOff::On;
    let dir = TempDir(std::env::temp_dir().join(format!("et1-{}", std::process::id())));
    let data_dir = |i: u32| dir.0.join(format!("n{i}"));
    if durable {
        for i in 0..args.nodes {
            let d = data_dir(i);
            std::fs::create_dir_all(&d)
                .map_err(|e| format!("cannot create the data dir {}: {e}", d.display()))?;
        }
    }
    println!(
        "et1: scale {} ({} branches, {} tellers, {} accounts in regions of {}), {} nodes, access {}, durable {}{}",
        shape.scale,
        shape.scale,
        shape.tellers(),
        shape.accounts(),
        shape.per_block,
        shape.nodes,
        args.access,
        if durable { "on" } else { "off" },
        if durable {
            format!(" (data dirs under {})", dir.0.display())
        } else {
            String::new()
        }
    );
    let base = dir.0.clone();
    let cluster = Cluster::local_with(args.nodes as usize, |c| {
        if durable {
            c.data_dir = Some(base.join(format!("n{}", c.node.0)));
        }
    })
    .await?;
    let nodes: Vec<Node> = cluster.nodes().to_vec();

    // Load: every node creates its own branches (local creates), all nodes in parallel.
    let t = Instant::now();
    let mut loads = Vec::new();
    for node in &nodes {
        let node = node.clone();
        loads.push(tokio::spawn(async move {
            let mut regions = 0;
            for b in shape.branches_of(node.id().0) {
                regions += db::load_branch(&node, shape, b).await?;
            }
            Ok::<_, Error>(regions)
        }));
    }
    let mut regions = 0;
    for l in loads {
        regions += l.await.map_err(|e| format!("load task: {e}"))??;
    }
    let load_time = t.elapsed();
    let t = Instant::now();
    let mut dbs = Vec::new();
    for node in &nodes {
        dbs.push(Arc::new(
            Db::open(node, shape, Duration::from_secs(30)).await?,
        ));
    }
    println!(
        "loaded {regions} regions in {:.3} s (in transactions, every node its own branches in parallel); mapped everywhere in {:.2} s",
        load_time.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );

    let mut acked: HashMap<u64, i64> = HashMap::new();
    let mut all_clients: Vec<u32> = Vec::new();
    let mut next_client = 0u32;
    let mut failed = false;
    for &clients in &args.clients {
        let fsync_p50 = if durable {
            let samples = db::fsync_probe(&data_dir(0), 200)
                .map_err(|e| format!("fsync probe in {}: {e}", data_dir(0).display()))?;
            db::quantile(&samples, 0.5)
        } else {
            None
        };
        // Each client gets a fresh history (index + first chunk) on its node.
        let mut histories = Vec::new();
        for i in 0..clients {
            let node = &nodes[(i % args.nodes) as usize];
            let id = next_client;
            next_client += 1;
            all_clients.push(id);
            histories.push(db::open_history(node, id, true, Duration::from_secs(10)).await?);
        }
        let stats_before = tx_totals(&nodes);
        let live = Arc::new(Live::default());
        let start = Instant::now();
        let warm_end = start + Duration::from_secs(args.warmup);
        let end = warm_end + Duration::from_secs(args.seconds);
        let mut tasks = Vec::new();
        for (i, hist) in histories.into_iter().enumerate() {
            let i = i as u32;
            let node_ix = i % args.nodes;
            let db = dbs[node_ix as usize].clone();
            let home = db::home_branch(shape, node_ix, i / args.nodes);
            let live = live.clone();
            let seed = args.seed ^ (u64::from(hist.client) << 32);
            let access = args.access;
            tasks.push(tokio::spawn(async move {
                client(db, hist, access, home, seed, warm_end, end, live).await
            }));
        }
        // Snapshot the retry counters when the measured window starts.
        let stats_at_warm = {
            let nodes = nodes.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(warm_end.into()).await;
                tx_totals(&nodes)
            })
        };
        let progress = {
            let live = live.clone();
            tokio::spawn(async move {
                let mut last = 0;
                let mut tick = 1u64;
                loop {
                    tokio::time::sleep_until((start + Duration::from_secs(tick)).into()).await;
                    let c = live.committed.load(Ordering::Relaxed);
                    let phase = if start + Duration::from_secs(tick) <= warm_end {
                        "warm-up"
                    } else {
                        "measuring"
                    };
                    println!(
                        "  {tick:3} s: {c} committed, {} TPS ({phase}), {} errors",
                        c - last,
                        live.errors.load(Ordering::Relaxed)
                    );
                    last = c;
                    tick += 1;
                }
            })
        };
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.map_err(|e| format!("client task: {e}"))?);
        }
        progress.abort();
        let stats_end = tx_totals(&nodes);
        let stats_warm = stats_at_warm.await.unwrap_or(stats_before);
        let measured = live.measured.load(Ordering::Relaxed);
        let mut lat: Vec<u32> = results
            .iter()
            .flat_map(|r| r.latencies_us.iter().copied())
            .collect();
        lat.sort_unstable();
        let errors: u64 = results.iter().map(|r| r.errors).sum();
        for r in &results {
            for &(txn, delta) in &r.acked {
                if acked.insert(txn, delta).is_some() {
                    return Err(format!("txn id {txn:#x} was used twice").into());
                }
            }
        }
        let ms = |us: Option<u32>| us.map_or(f64::NAN, |u| f64::from(u) / 1000.0);
        let retries = stats_end.1.saturating_sub(stats_warm.1);
        println!(
            "et1 access={} scale={} nodes={} clients={} durable={} tps={:.1} p50_ms={:.3} p99_ms={:.3} retries_per_commit={:.4} aborts={}{}",
            args.access,
            shape.scale,
            shape.nodes,
            clients,
            if durable { "on" } else { "off" },
            measured as f64 / args.seconds as f64,
            ms(db::quantile(&lat, 0.5)),
            ms(db::quantile(&lat, 0.99)),
            retries as f64 / measured.max(1) as f64,
            errors,
            fsync_p50.map_or(String::new(), |d| format!(
                " fsync_p50_ms={:.3}",
                d.as_secs_f64() * 1000.0
            ))
        );
        // Verify, from node 0, in one read-only transaction.
        let t = Instant::now();
        let snap = db::snapshot(&dbs[0], &all_clients).await?;
        let checked = db::check(shape, &snap);
        let (ack_checks, ack_violations) = db::check_acks(&snap, &acked);
        let violations: Vec<String> = checked
            .violations
            .iter()
            .cloned()
            .chain(ack_violations)
            .collect();
        if violations.is_empty() {
            println!(
                "verified in {:.2} s: sums equal ({}), every balance matches its history, the history holds exactly the {} acknowledged commits ({} checks)",
                t.elapsed().as_secs_f64(),
                checked.accounts,
                acked.len(),
                checked.checks + ack_checks
            );
        } else {
            for v in &violations {
                eprintln!("INVARIANT BROKEN: {v}");
            }
            eprintln!(
                "sums: accounts {}, tellers {}, branches {}, history {} ({} rows, {} acknowledged)",
                checked.accounts,
                checked.tellers,
                checked.branches,
                checked.history,
                snap.history.len(),
                acked.len()
            );
            failed = true;
            break;
        }
    }
    drop(dbs);
    cluster.shutdown().await;
    drop(dir);
    if failed {
        Err("verification failed".into())
    } else {
        Ok(())
    }
}

/// (committed, retried) summed over the nodes.
fn tx_totals(nodes: &[Node]) -> (u64, u64) {
    nodes.iter().fold((0, 0), |(c, r), n| {
        let s = n.stats().tx;
        (c + s.committed, r + s.retried)
    })
}

#[allow(clippy::too_many_arguments)]
async fn client(
    db: Arc<Db>,
    mut hist: History,
    access: Access,
    home: u32,
    seed: u64,
    warm_end: Instant,
    end: Instant,
    live: Arc<Live>,
) -> ClientResult {
    let mut rng = Rng::new(seed);
    let mut out = ClientResult::default();
    let mut seq = 0u64;
    let mut reported = 0;
    while Instant::now() < end {
        let p = db::pick(db.shape, access, home, &mut rng);
        seq += 1;
        let txn = (u64::from(hist.client) << 40) | seq;
        let t0 = Instant::now();
        match db::debit_credit(&db, &mut hist, txn, p).await {
            Ok(_) => {
                let t1 = Instant::now();
                out.acked.push((txn, p.delta));
                live.committed.fetch_add(1, Ordering::Relaxed);
                if t1 >= warm_end && t1 <= end {
                    live.measured.fetch_add(1, Ordering::Relaxed);
                    out.latencies_us
                        .push((t1 - t0).as_micros().min(u128::from(u32::MAX)) as u32);
                }
            }
            Err(e) => {
                out.errors += 1;
                live.errors.fetch_add(1, Ordering::Relaxed);
                if reported < 3 {
                    reported += 1;
                    eprintln!("client {}: txn {txn:#x} failed: {e}", hist.client);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    out
}
