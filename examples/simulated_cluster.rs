//! A three-node crl cluster, simulated in one process: the protocol engines are the real
//! ones, the network is a set of in-memory FIFO links. It walks through a shared flight
//! record (misses, hits, recalls, the home waiting on a remote writer), prints every message,
//! then runs a random workload under the simulator's checker and prints what happened.
//!
//! Run: `cargo run --release --example simulated_cluster [-- --steps N --seed S]`

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use crl::core::engine::{Access, EngineConfig, Progress, RegionCell, Start};
use crl::core::sim::{Network, Sim, SimConfig, describe_message};
use crl::{Region, RegionId};

/// A flight, as the airline example will share it.
#[derive(Region, Debug, Clone)]
struct Flight {
    seats: u32,
    booked: u32,
    passengers: Vec<RegionId>,
}

#[derive(Parser)]
#[command(about = "A simulated three-node crl cluster")]
struct Args {
    /// Steps of the random workload checked by the simulator.
    #[arg(long, default_value_t = 200_000)]
    steps: u64,
    /// Seed of the random workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn show(net: &mut Network, what: &str) {
    let delivered = net.settle();
    println!("  {what}: {} message(s)", delivered.len());
    for (from, to, msg) in delivered {
        println!("    n{from} -> n{to}  {}", describe_message(&msg));
    }
}

/// Starts an access at `node` (hit, or miss resolved over the network) and returns it.
fn access(
    net: &mut Network,
    node: usize,
    cell: &Arc<RegionCell<Flight>>,
    op: u64,
    write: bool,
    what: &str,
) -> Access {
    let hit = if write {
        cell.try_write().map(|g| Access::from_write(g, cell))
    } else {
        cell.try_read().map(|g| Access::from_read(g, cell))
    };
    if let Some(a) = hit {
        println!("  {what}: hit, no message");
        return a;
    }
    let started = if write {
        net.engine(node).start_write(cell.id(), op)
    } else {
        net.engine(node).start_read(cell.id(), op)
    };
    net.pump(node);
    match started.expect("access") {
        Start::Granted(a) => a,
        Start::Queued => {
            show(net, &format!("{what}: miss"));
            net.granted(node, op)
                .expect("granted once the network settles")
        }
    }
}

fn main() {
    let args = Args::parse();
    let mut net = Network::new(3, EngineConfig::default());
    println!("== a flight record shared by three nodes (n0 is its home) ==");
    let flight = net.engine(0).create(Flight {
        seats: 180,
        booked: 0,
        passengers: vec![],
    });
    let id = flight.id();
    println!(
        "  n0 created {id}: {:?}",
        *flight.try_read().expect("home hit")
    );

    let mut cells = vec![flight.clone()];
    for node in 1..3 {
        let (cell, progress) = net.engine(node).map::<Flight>(id, 1).expect("map");
        net.pump(node);
        assert_eq!(progress, Progress::Pending);
        show(
            &mut net,
            &format!("n{node} maps {id} (type checked at the home)"),
        );
        assert_eq!(net.completed(node, 1), Some(Ok(())));
        cells.push(cell);
    }

    let r = access(&mut net, 1, &cells[1], 2, false, "n1 reads");
    r.with_value(|f: &Flight| println!("  n1 sees booked={}/{}", f.booked, f.seats));
    drop(r);
    let sent = net.engine(1).stats().messages_sent;
    let started = Instant::now();
    let mut sum = 0u64;
    for _ in 0..1_000_000 {
        let g = cells[1].try_read().expect("a valid shared copy hits");
        sum += u64::from(g.booked);
    }
    let per = started.elapsed().as_nanos() as f64 / 1e6;
    println!(
        "  n1 reads 1,000,000 more times: {} message(s), {per:.1} ns per read (checksum {sum})",
        net.engine(1).stats().messages_sent - sent
    );

    let mut w = access(&mut net, 2, &cells[2], 3, true, "n2 books a seat (write)");
    w.with_value_mut(|f: &mut Flight| {
        f.booked += 1;
        f.passengers.push(id);
    });
    drop(w);
    for _ in 0..9 {
        let mut g = cells[2]
            .try_write()
            .expect("n2 holds the only copy: write hit");
        g.booked += 1;
    }
    println!("  n2 books 9 more seats: 9 write hits, no message");

    let r = access(
        &mut net,
        0,
        &cells[0],
        4,
        false,
        "the home n0 reads (it must wait for n2's copy)",
    );
    r.with_value(|f: &Flight| println!("  n0 sees booked={}", f.booked));
    drop(r);
    let r = access(
        &mut net,
        1,
        &cells[1],
        5,
        false,
        "n1 reads again (its copy was invalidated)",
    );
    r.with_value(|f: &Flight| println!("  n1 sees booked={}", f.booked));
    drop(r);

    println!("\n== per-node counters ==");
    for node in 0..3 {
        let s = net.engine(node).stats().clone();
        println!(
            "  n{node}: sent {} received {} misses {} recalls sent {} received {}",
            s.messages_sent, s.messages_received, s.misses, s.recalls_sent, s.recalls_received
        );
    }

    println!(
        "\n== random workload under the checker: 3 nodes, 8 regions, seed {} ==",
        args.seed
    );
    let cfg = SimConfig {
        nodes: 3,
        regions: 8,
        deletes: true,
        ..SimConfig::default()
    };
    let started = Instant::now();
    match Sim::run_random(cfg, args.seed, args.steps) {
        Ok(report) => {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "  {} steps in {secs:.2} s ({:.0} steps/s): {} messages, {} hits, {} misses, {} reads, {} writes",
                report.steps,
                report.steps as f64 / secs,
                report.messages,
                report.hits,
                report.misses,
                report.reads,
                report.writes
            );
            println!(
                "  every check held: one writer or many readers, reads see the latest write, no deadlock, directories agree"
            );
        }
        Err(failure) => {
            eprintln!("{failure}");
            std::process::exit(1);
        }
    }
}
