//! The coherence protocol under the deterministic simulator: seeded random schedules,
//! proptest-generated schedules that shrink, planted bugs the checker must catch.

use std::time::Instant;

use crl::core::engine::PlantedFault;
use crl::core::sim::{Choice, OpKind, Sim, SimConfig, SimReport};
use proptest::prelude::*;

fn config(nodes: usize, regions: usize, deletes: bool, capacity: usize) -> SimConfig {
    SimConfig {
        nodes,
        regions,
        deletes,
        unmapped_capacity: capacity,
        ..SimConfig::default()
    }
}

/// Seeded random schedules over many cluster shapes; prints the step count and rate.
#[test]
fn random_schedules_keep_every_invariant() {
    let started = Instant::now();
    let mut total = SimReport::default();
    let mut runs = 0;
    for seed in 0..60u64 {
        let nodes = 2 + (seed as usize % 7);
        let regions = 1 + (seed as usize * 5 % 16);
        let cfg = config(nodes, regions, seed % 3 == 0, seed as usize % 4);
        match Sim::run_random(cfg, seed, 2_000) {
            Ok(report) => total.add(&report),
            Err(failure) => panic!("{failure}"),
        }
        runs += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "random schedules: {runs} runs, {} steps ({:.0} steps/s), {} messages, {} hits, {} misses, {} reads, {} writes",
        total.steps,
        total.steps as f64 / secs,
        total.messages,
        total.hits,
        total.misses,
        total.reads,
        total.writes
    );
    assert!(total.steps >= 100_000, "too few steps: {}", total.steps);
    assert!(total.hits > 0 && total.misses > 0 && total.writes > 0);
}
