//! A long soak of the coherence protocol under the deterministic simulator: many seeds and
//! cluster shapes (2–8 nodes, 1–16 regions, deletes on and off, tiny unmapped caches), every
//! check of `crl::core::sim` after every step. Prints progress and the step rate; on a
//! failure prints the seed, the reason and the trace, and exits 1.
//!
//! Every link runs the session layer; `--break-percent N` breaks connections on N% of the
//! choices (frames in flight lost or delayed, re-sends, duplicates). One seed in three cuts
//! every message into fragments of 8 to 47 bytes, so breaks, crashes and fences also fall
//! between the pieces of a message (as they do for big regions on real links). Another one
//! in three pads every region to 100–400 bytes and cuts at 40–99 bytes: images travel as
//! pieces that small messages of other regions, pings and pongs pass
//! (`crl::core::wire::Lane`). Every other seed puts every image through the work beside the
//! engine that crl-net's driver does for big ones (decodes, and a home's encodes for
//! requests), finished at a later step while the same peer's messages pass it or wait
//! (`SimConfig::image_work`).
//!
//! `--faults` gives the simulator a clock: drifting node clocks (`--drift-ppm`), leases and
//! fencing on every node (`--peer-timeout-ms`), frame latencies and delays
//! (`--max-delay-ms`), cuts of a node or a group and pauses shorter and longer than the peer
//! timeout (`--cut-per-million`, `--pause-per-million`), crashes and restarts without
//! durability (`--crash-per-million`: the node's regions, copies and the writes only they
//! held are lost, peers learn the new incarnation at a handshake). Every node that could serve a hit is
//! probed for a stale read at every tick; losses must be exactly what fences allow
//! (DESIGN.md §6 rule 4); after the faults heal every operation completes and every region
//! is read again from every node without a stall longer than the recovery bound. Deletes are
//! off with faults.
//!
//! Run (10^8 steps each):
//! - `cargo run --release --example sim_soak -- --steps 100000000 --break-percent 5`
//! - `cargo run --release --example sim_soak -- --steps 100000000 --break-percent 2 --faults`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use crl::core::sim::{Sim, SimConfig, SimReport, TimeConfig};
use parking_lot::Mutex;

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
    /// Virtual time, leases and fencing, cuts and pauses (needs the session layer).
    #[arg(long)]
    faults: bool,
    /// The peer timeout, in virtual milliseconds (with `--faults`).
    #[arg(long, default_value_t = 1_000)]
    peer_timeout_ms: u64,
    /// Clock-rate drift of each node, ± parts per million (with `--faults`).
    #[arg(long, default_value_t = 40_000)]
    drift_ppm: u32,
    /// Cuts per million choices (with `--faults`).
    #[arg(long, default_value_t = 500)]
    cut_per_million: u32,
    /// Pauses per million choices (with `--faults`).
    #[arg(long, default_value_t = 500)]
    pause_per_million: u32,
    /// Crashes (each followed by a restart without durability) per million choices (with
    /// `--faults`).
    #[arg(long, default_value_t = 40)]
    crash_per_million: u32,
    /// The longest extra delay of a frame, in virtual milliseconds (with `--faults`).
    #[arg(long, default_value_t = 400)]
    max_delay_ms: u32,
}

fn shape(seed: u64, args: &Args) -> SimConfig {
    let wire = !args.no_wire;
    let time = (args.faults && wire).then(|| {
        let mut t = TimeConfig::new(Duration::from_millis(args.peer_timeout_ms));
        t.drift_ppm = args.drift_ppm;
        t.cut_per_million = args.cut_per_million;
        t.pause_per_million = args.pause_per_million;
        t.crash_per_million = args.crash_per_million;
        t.max_delay_ms = args.max_delay_ms;
        t
    });
    let break_percent = if wire { args.break_percent } else { 0 };
    SimConfig {
        nodes: 2 + (seed % 7) as usize,
        regions: 1 + (seed * 7 % 16) as usize,
        deletes: seed.is_multiple_of(4),
        unmapped_capacity: (seed % 5) as usize,
        max_ops_per_node: 2 + (seed % 4) as usize,
        wire,
        sessions: wire,
        break_percent,
        time,
        fragment_len: match seed % 3 {
            0 => 8 + (seed / 3 % 40) as usize,
            1 => 40 + (seed / 3 % 60) as usize,
            _ => crl::core::wire::MAX_FRAME_LEN,
        },
        value_len: if seed % 3 == 1 {
            100 + (seed / 3 % 301) as usize
        } else {
            0
        },
        image_work: wire && !seed.is_multiple_of(2),
        ..SimConfig::default()
    }
}

fn main() {
    let args = Args::parse();
    let runs = args.steps.div_ceil(args.steps_per_run);
    let next = AtomicU64::new(0);
    let steps = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let total = Mutex::new(SimReport::default());
    let started = Instant::now();
    println!(
        "soak: {} runs of {} steps, seeds from {}, {} threads, wire round trip and sessions {}, connection breaks on {}% of choices, faults with time {}",
        runs,
        args.steps_per_run,
        args.seed,
        args.threads,
        if args.no_wire { "off" } else { "on" },
        if args.no_wire { 0 } else { args.break_percent },
        if args.faults && !args.no_wire {
            "on"
        } else {
            "off"
        }
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
                    match Sim::run_random(shape(seed, &args), seed, args.steps_per_run) {
                        Ok(report) => {
                            steps.fetch_add(report.steps, Ordering::Relaxed);
                            total.lock().add(&report);
                        }
                        Err(failure) => {
                            failed.store(true, Ordering::Relaxed);
                            eprintln!("{failure}");
                            eprintln!(
                                "replay: Sim::run_random({:?}, {seed}, {})",
                                shape(seed, &args),
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
    let t = total.lock();
    println!(
        "  {} messages ({} more fragments, {} images after their heads, {} messages passed one; {} worked on beside the engine, {} messages passed that work), {} breaks, {} frames lost in flight, {} duplicates dropped",
        t.messages,
        t.fragments,
        t.images_joined,
        t.passed_images,
        t.image_work,
        t.passed_work,
        t.breaks,
        t.frames_lost,
        t.duplicates_dropped
    );
    if args.faults {
        println!(
            "  {} s virtual, {} cuts, {} pauses, {} crashes ({} regions lost), {} fences ({} learned at reconnect), {} lease waits ({} timed out), {} ops failed Fenced, {} stale-read checks, {} copies lost ({} with writes), {} accesses orphaned, {} void frames, longest recovery after heal {} ms",
            t.virtual_ms / 1000,
            t.cuts,
            t.pauses,
            t.crashes,
            t.regions_lost,
            t.fences,
            t.fenced_learned,
            t.lease_waits,
            t.lease_timeouts,
            t.fenced_errors,
            t.stale_checks,
            t.lost_copies,
            t.lost_writes,
            t.orphaned,
            t.void_frames,
            t.max_recovery_ms
        );
    }
}
