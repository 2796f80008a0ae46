//! Many regions per node: node 0 creates N small regions, node 1 maps and reads every one of
//! them (many at a time), and the process's resident memory is measured after each phase
//! (issue 10: "a million regions per node, ≤ 128 B of metadata per homed region and per
//! cached copy beyond the region's archived bytes").
//!
//! ```sh
//! cargo run --release --example many_regions -- --regions 1000000 --in-flight 256
//! ```
//!
//! Both nodes run in this process, so each phase's growth is measured on its own: the first
//! is node 0's home entries (and the cells holding the values); the second is node 1's cache
//! entries, the handles the program keeps (one per mapped region, their size is printed), and
//! what the home adds to record node 1 as a sharer. Resident memory comes from
//! `/proc/self/statm` (Linux); freed memory the allocator keeps counts as used, so the figures
//! are upper bounds.

use std::time::Instant;

use clap::Parser;
use crl::{Cluster, Handle, Region, RegionId};

#[derive(Region, Clone, Debug)]
struct Pair {
    a: u64,
    b: u64,
}

#[derive(Parser)]
struct Args {
    /// Regions to create at node 0 and read at node 1.
    #[arg(long, default_value_t = 1_000_000)]
    regions: usize,
    /// Maps and reads node 1 keeps in flight.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Append this run's figures to a CSV file (`regions,homed_bytes,cached_bytes,creates_per_s,reads_per_s`;
    /// the header is written when the file is new), for `tools/crl-plots`.
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
    /// Then create and delete this many more regions at node 0 (10,000 at a time) and print
    /// what the deleted ones leave behind (their tombstones: a deleted region is refused as
    /// deleted, not as unknown).
    #[arg(long, default_value_t = 0)]
    churn: usize,
}

/// The process's resident set, in bytes (`None` where `/proc/self/statm` is missing).
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn per_region(before: Option<u64>, after: Option<u64>, n: usize) -> String {
    match (before, after) {
        (Some(b), Some(a)) => format!("{:.0} B", a.saturating_sub(b) as f64 / n as f64),
        _ => "n/a (no /proc/self/statm)".into(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let n = args.regions;
    let in_flight = args.in_flight.max(1);
    let cluster = Cluster::local(2).await?;
    let (home, cache) = (cluster.node(0).clone(), cluster.node(1).clone());
    let archived = Pair { a: 1, b: 2 }.encode_region()?.len();
    // The program's own bookkeeping is allocated and touched before the baseline.
    let mut ids = vec![RegionId::new(home.id(), 0); n];
    let base = rss();
    let t = Instant::now();
    for (i, slot) in ids.iter_mut().enumerate() {
        *slot = home
            .create(Pair {
                a: i as u64,
                b: !(i as u64),
            })
            .await?
            .id();
        if i > 0 && i % 250_000 == 0 {
            eprintln!(
                "  created {i} ({:.0}/s)",
                i as f64 / t.elapsed().as_secs_f64()
            );
        }
    }
    let created = t.elapsed();
    let after_create = rss();
    println!(
        "node 0 created {n} regions ({archived} archived bytes each) in {created:.2?}: {:.0} creates/s, resident memory +{} per region",
        n as f64 / created.as_secs_f64(),
        per_region(base, after_create, n)
    );
    // Node 1 maps and reads every region, `in_flight` at a time; it keeps the handles (the
    // copies stay cached while mapped).
    let t = Instant::now();
    let chunk = n.div_ceil(in_flight);
    let mut tasks = Vec::new();
    for (k, part) in ids.chunks(chunk).enumerate() {
        let part = part.to_vec();
        let first = k * chunk;
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            let mut handles: Vec<Handle<Pair>> = Vec::with_capacity(part.len());
            for (j, id) in part.into_iter().enumerate() {
                let h = cache.map::<Pair>(id).await?;
                let a = h.start_read().await?.a;
                assert_eq!(a, (first + j) as u64, "{id} read a wrong value");
                handles.push(h);
            }
            Ok::<_, crl::Error>(handles)
        }));
    }
    let mut kept = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.into_iter().enumerate() {
        kept.push(task.await??);
        if i > 0 && i % (in_flight / 4).max(1) == 0 {
            eprintln!("  {} of {in_flight} readers done", i + 1);
        }
    }
    let read = t.elapsed();
    let after_read = rss();
    let misses = cache.stats().engine.misses;
    println!(
        "node 1 mapped and read {n} regions ({in_flight} in flight) in {read:.2?}: {:.0} map+read/s, {misses} misses, resident memory +{} per cached copy (handles included: {} B each)",
        n as f64 / read.as_secs_f64(),
        per_region(after_create, after_read, n),
        std::mem::size_of::<Handle<Pair>>()
    );
    if let (Some(path), Some(b), Some(c), Some(r)) = (&args.csv, base, after_create, after_read) {
        use std::io::Write;
        let new = !path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        if new {
            writeln!(
                f,
                "regions,homed_bytes,cached_bytes,creates_per_s,reads_per_s"
            )?;
        }
        writeln!(
            f,
            "{n},{:.0},{:.0},{:.0},{:.0}",
            c.saturating_sub(b) as f64 / n as f64,
            r.saturating_sub(c) as f64 / n as f64,
            n as f64 / created.as_secs_f64(),
            n as f64 / read.as_secs_f64()
        )?;
    }
    drop(kept);
    if args.churn > 0 {
        let before = rss();
        let t = Instant::now();
        let mut left = args.churn;
        let mut last = None;
        while left > 0 {
            let batch = left.min(10_000);
            let mut made = Vec::with_capacity(batch);
            for i in 0..batch {
                made.push(home.create(Pair { a: i as u64, b: 0 }).await?.id());
            }
            for id in made {
                home.delete(id).await?;
                last = Some(id);
            }
            left -= batch;
        }
        if let Some(id) = last {
            let refused = home.map::<Pair>(id).await.err();
            assert!(
                matches!(refused, Some(crl::Error::Deleted(_))),
                "a deleted region must be refused as deleted: {refused:?}"
            );
        }
        println!(
            "node 0 created and deleted {} regions in {:.2?}: resident memory +{} per deleted region",
            args.churn,
            t.elapsed(),
            per_region(before, rss(), args.churn)
        );
    }
    drop((home, cache));
    cluster.shutdown().await;
    Ok(())
}
