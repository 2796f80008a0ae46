//! The transactional simulator (`crl::core::sim::commit`): two-phase commit as crl runs it
//! (crl-core's commit machine), under crashes that lose unsynced log appends, stalled disks
//! and every interleaving of the links; and the planted 2PC bugs its checks must catch.

use crl::core::commit::CommitBug;
use crl::core::sim::commit::{CommitSimConfig, CommitSimReport, run, shrink};

/// Runs `seeds`, summing their reports; panics with the shortest failing run of a seed.
fn soak(config: &CommitSimConfig, seeds: std::ops::Range<u64>) -> CommitSimReport {
    let mut total = CommitSimReport::default();
    for seed in seeds {
        match run(config, seed) {
            Ok(r) => total.add(&r),
            Err(_) => panic!("{}", shrink(config, seed).expect("fails again")),
        }
    }
    total
}

/// 10^6 steps over 50 seeds of varied shapes: 2 to 6 nodes, 3 to 6 regions each, from no
/// crash to a crash every 200 steps, and failed syncs (the store fails, part of the batch may
/// be on the disk, the node restarts) in three seeds of five.
#[test]
fn two_phase_commit_survives_crashes_and_stalled_disks() {
    let mut total = CommitSimReport::default();
    for seed in 0..50u64 {
        let config = CommitSimConfig {
            nodes: 2 + (seed % 5) as u32,
            regions_per_node: 3 + (seed % 4) as u32,
            crash_per_million: [0, 500, 2_000, 5_000][(seed % 4) as usize],
            store_failure_per_million: [0, 2_000, 0, 500, 5_000][(seed % 5) as usize],
            steps: 20_000,
            ..CommitSimConfig::default()
        };
        total.add(&soak(&config, seed..seed + 1));
    }
    println!(
        "commit simulation: {} steps, {} transactions ({} two-phase), {} acknowledged, {} committed, {} aborted, {} outcome unknown to a crashed writer, {} messages, {} durable records, {} crashes, longest healing {} steps",
        total.steps,
        total.started,
        total.two_phase,
        total.acked,
        total.committed,
        total.aborted,
        total.unknown,
        total.messages,
        total.records,
        total.crashes,
        total.heal_steps
    );
    assert!(total.steps >= 1_000_000, "{total:?}");
    assert!(
        total.committed > 10_000 && total.two_phase > 5_000 && total.crashes > 500,
        "{total:?}"
    );
}

/// Each planted bug is caught within a few seeds.
#[test]
fn the_simulator_catches_planted_two_phase_commit_bugs() {
    for bug in [
        CommitBug::PresumeAbortWhileLogging,
        CommitBug::DecideBeforeDurable,
        CommitBug::SkipDeletes,
    ] {
        let config = CommitSimConfig {
            bug,
            ..CommitSimConfig::default()
        };
        let caught = (0..50).find_map(|seed| run(&config, seed).err());
        let failure = caught.unwrap_or_else(|| panic!("{bug:?} was not caught in 50 seeds"));
        println!("{bug:?} caught: {}", failure.reason);
    }
}

/// A longer soak (not in CI): `cargo test --release --test commit_sim -- --ignored --nocapture`.
/// 500 seeds, about 10^7 steps, 2–8 nodes, crashes and failed stores. It found two things:
/// the simulator's model kept holds as a set while the engine counts them (seed 1042), and a
/// real bug, `holding` not counting a handed-over transaction whose decision record was
/// being written (seed 1089; `commit::tests::a_decision_being_written_still_holds_its_writer`).
#[test]
#[ignore]
fn a_longer_soak_with_failed_stores() {
    let mut total = CommitSimReport::default();
    for seed in 1_000..1_500u64 {
        let config = CommitSimConfig {
            nodes: 2 + (seed % 7) as u32,
            regions_per_node: 2 + (seed % 5) as u32,
            crash_per_million: [500, 2_000, 5_000][(seed % 3) as usize],
            store_failure_per_million: [1_000, 5_000][(seed % 2) as usize],
            ..CommitSimConfig::default()
        };
        total.add(&soak(&config, seed..seed + 1));
    }
    println!("longer commit soak: {total:?}");
}
