//! A long soak of the coherence protocol under the deterministic simulator: many seeds and
//! cluster shapes (2–8 nodes, 1–16 regions, deletes on and off, tiny unmapped caches), every
//! check of `crl::core::sim` after every step. Prints progress and the step rate; on a
//! failure prints the seed, the reason and the trace, and exits 1.
//!
//! Every link runs the session layer; `--break-percent N` breaks connections on N% of the
//! choices (frames in flight lost or delayed, re-sends, duplicates).
//!
//! Run: `cargo run --release --example sim_soak -- --steps 100000000 --break-percent 5`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use crl::core::sim::{Sim, SimConfig};

#[derive(Parser)]
#[command(about = "Soak the crl protocol in the deterministic simulator")]
struct Args {
    /// Total scheduler steps.
    #[arg(long, default_value_t = 10_000_000)]
    steps: u64,
    /// Steps per run (one seed, one cluster shape).
    #[arg(long, default_value_t = 20_000)]
    steps_per_run: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: u64,
    /// Skip the wire-format round trip of each message and the session layer (faster).
    #[arg(long)]
    no_wire: bool,
    /// Percentage of choices that break a connection (0–100).
    #[arg(long, default_value_t = 5)]
    break_percent: u32,
}

fn shape(seed: u64, wire: bool, break_percent: u32) -> SimConfig {
    SimConfig {
        nodes: 2 + (seed % 7) as usize,
        regions: 1 + (seed * 7 % 16) as usize,
        deletes: seed.is_multiple_of(4),
        unmapped_capacity: (seed % 5) as usize,
        max_ops_per_node: 2 + (seed % 4) as usize,
        wire,
        sessions: wire,
        break_percent,
        ..SimConfig::default()
    }
}

fn main() {
    let args = Args::parse();
    let runs = args.steps.div_ceil(args.steps_per_run);
    let next = AtomicU64::new(0);
    let steps = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let started = Instant::now();
    println!(
        "soak: {} runs of {} steps, seeds from {}, {} threads, wire round trip and sessions {}, connection breaks on {}% of choices",
        runs,
        args.steps_per_run,
        args.seed,
        args.threads,
        if args.no_wire { "off" } else { "on" },
        if args.no_wire { 0 } else { args.break_percent }
    );
    std::thread::scope(|s| {
        for _ in 0..args.threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= runs || failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let seed = args.seed + i;
                    match Sim::run_random(
                        shape(seed, !args.no_wire, args.break_percent),
                        seed,
                        args.steps_per_run,
                    ) {
                        Ok(report) => {
                            steps.fetch_add(report.steps, Ordering::Relaxed);
                        }
                        Err(failure) => {
                            failed.store(true, Ordering::Relaxed);
                            eprintln!("{failure}");
                            eprintln!(
                                "replay: Sim::run_random({:?}, {seed}, {})",
                                shape(seed, !args.no_wire, args.break_percent),
                                args.steps_per_run
                            );
                        }
                    }
                }
            });
        }
        s.spawn(|| {
            let mut last = Instant::now();
            while next.load(Ordering::Relaxed) < runs && !failed.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() >= Duration::from_secs(5) {
                    last = Instant::now();
                    let done = steps.load(Ordering::Relaxed);
                    let secs = started.elapsed().as_secs_f64();
                    println!(
                        "  {done} steps ({:.0}%) in {secs:.0} s, {:.0} steps/s",
                        100.0 * done as f64 / args.steps as f64,
                        done as f64 / secs
                    );
                }
            }
        });
    });
    let done = steps.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    if failed.load(Ordering::Relaxed) {
        std::process::exit(1);
    }
    println!(
        "soak passed: {done} steps in {secs:.1} s, {:.0} steps/s",
        done as f64 / secs
    );
}
