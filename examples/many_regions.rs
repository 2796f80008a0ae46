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

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Node 1 reads only every K-th region (K = 64: one per page of its cache table, the
    /// sparse case); per-copy figures are per region read.
    #[arg(long, default_value_t = 1)]
    read_every: usize,
}

/// The system allocator, counting the bytes allocated and not yet freed: what the program
/// and the library asked for, without the allocator's rounding and the freed memory it
/// keeps (which resident memory includes).
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; the counter is only a
// statistic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn heap_per_region(before: usize, after: usize, n: usize) -> String {
    format!("{:.0} B", after.saturating_sub(before) as f64 / n as f64)
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
    if args.csv.is_some() && args.read_every > 1 {
        return Err("--csv records full runs only (without --read-every)".into());
    }
    let n = args.regions;
    let in_flight = args.in_flight.max(1);
    let cluster = Cluster::local(2).await?;
    let (home, cache) = (cluster.node(0).clone(), cluster.node(1).clone());
    let archived = Pair { a: 1, b: 2 }.encode_region()?.len();
    // The program's own bookkeeping is allocated and touched before the baseline.
    let mut ids = vec![RegionId::new(home.id(), 0); n];
    let base = rss();
    let heap_base = LIVE_BYTES.load(Ordering::Relaxed);
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
    let heap_created = LIVE_BYTES.load(Ordering::Relaxed);
    println!(
        "node 0 created {n} regions ({archived} archived bytes each) in {created:.2?}: {:.0} creates/s, resident memory +{} per region (heap +{})",
        n as f64 / created.as_secs_f64(),
        per_region(base, after_create, n),
        heap_per_region(heap_base, heap_created, n)
    );
    // Node 1 maps and reads every region (or every `read_every`-th), `in_flight` at a time;
    // it keeps the handles (the copies stay cached while mapped).
    let every = args.read_every.max(1);
    let reads = n.div_ceil(every).max(1);
    // Shared, not copied: the figures below must not count the program's list of ids twice.
    let ids = std::sync::Arc::new(ids);
    let t = Instant::now();
    let chunk = reads.div_ceil(in_flight);
    let mut tasks = Vec::new();
    for start in (0..reads).step_by(chunk) {
        let (ids, cache) = (ids.clone(), cache.clone());
        let end = (start + chunk).min(reads);
        tasks.push(tokio::spawn(async move {
            let mut handles: Vec<Handle<Pair>> = Vec::with_capacity(end - start);
            for i in (start..end).map(|k| k * every) {
                let id = ids[i];
                let h = cache.map::<Pair>(id).await?;
                let a = h.start_read().await?.a;
                assert_eq!(a, i as u64, "{id} read a wrong value");
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
    let heap_read = LIVE_BYTES.load(Ordering::Relaxed);
    let misses = cache.stats().engine.misses;
    println!(
        "node 1 mapped and read {reads} regions ({in_flight} in flight) in {read:.2?}: {:.0} map+read/s, {misses} misses, resident memory +{} per cached copy (heap +{}; handles included: {} B each)",
        reads as f64 / read.as_secs_f64(),
        per_region(after_create, after_read, reads),
        heap_per_region(heap_created, heap_read, reads),
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
            r.saturating_sub(c) as f64 / reads as f64,
            n as f64 / created.as_secs_f64(),
            reads as f64 / read.as_secs_f64()
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
