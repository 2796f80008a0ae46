//! The TDSM thesis's airline reservation system on a crl cluster (QUIC on 127.0.0.1).
//!
//! Flights (with a date and a seat capacity), a flight+date index (one manifest per flight)
//! and a passenger index (hash-sharded) are regions spread over every node. Travel agents on
//! every node book, change and cancel reservations concurrently. Each operation is one
//! `node.transaction`: a booking takes a seat on the flight and inserts the reservation into
//! both indices, all or nothing; a change moves it between two flights and both manifests.
//! Transactions lock regions in whatever order the operation needs them; wound-wait breaks
//! the deadlocks that causes (the younger transaction is retried), so there is no global lock
//! order to maintain.
//!
//! At the end it checks that no flight is overbooked and that every reservation appears in
//! both indices exactly once, then prints bookings/s, the hit rate, messages per booking and
//! the transaction counters (committed, retried, wounds).
//!
//! Run: `cargo run --release --example airline [-- --nodes 3 --agents 4 --flights 24 --seconds 10]`

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use crl::net::txn::TxStats;
use crl::{Cluster, Error, Handle, Node, Region, RegionId, RegionRef};

#[derive(Parser, Clone)]
#[command(about = "Airline reservations on a crl cluster")]
struct Args {
    /// Nodes in the local cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Travel agents per node.
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// Flights (each on its own date).
    #[arg(long, default_value_t = 24)]
    flights: usize,
    /// Seats per flight.
    #[arg(long, default_value_t = 40)]
    seats: u32,
    /// Distinct passengers.
    #[arg(long, default_value_t = 3000)]
    passengers: usize,
    /// Shards of the passenger index.
    #[arg(long, default_value_t = 12)]
    shards: usize,
    /// How long the agents run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seed of the agents' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A directory for the nodes' data: node i gets `<DIR>/n<i>` as its `data_dir`, where
    /// transactions are logged durably once the library supports it. Default: none.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// A flight on one date.
#[derive(Region, Clone, Debug)]
struct Flight {
    number: String,
    /// Days since 2026-01-01.
    date: u32,
    seats: u32,
    booked: u32,
}

/// The flight+date index: who is booked on one flight.
#[derive(Region, Clone, Debug, Default)]
struct Manifest {
    passengers: Vec<String>,
}

/// One shard of the passenger index: each passenger's reservations.
#[derive(Region, Clone, Debug, Default)]
struct PassengerShard {
    reservations: Vec<(String, RegionRef<Flight>)>,
}

/// The roots, bound to the name `airline/catalog`.
#[derive(Region, Clone, Debug, Default)]
struct Catalog {
    flights: Vec<RegionRef<Flight>>,
    manifests: Vec<RegionRef<Manifest>>,
    shards: Vec<RegionRef<PassengerShard>>,
}

/// One node's view of the database.
struct Db {
    node: Node,
    flights: Vec<Handle<Flight>>,
    manifests: Vec<Handle<Manifest>>,
    shards: Vec<Handle<PassengerShard>>,
    flight_index: HashMap<RegionId, usize>,
}

impl Db {
    async fn open(node: &Node) -> Result<Db, Error> {
        let catalog = node
            .map::<Catalog>(node.lookup("airline/catalog").await?)
            .await?;
        let c = catalog.start_read().await?.clone();
        let mut db = Db {
            node: node.clone(),
            flights: Vec::new(),
            manifests: Vec::new(),
            shards: Vec::new(),
            flight_index: HashMap::new(),
        };
        for (i, f) in c.flights.iter().enumerate() {
            db.flights.push(node.map(f.id()).await?);
            db.flight_index.insert(f.id(), i);
        }
        for m in &c.manifests {
            db.manifests.push(node.map(m.id()).await?);
        }
        for s in &c.shards {
            db.shards.push(node.map(s.id()).await?);
        }
        Ok(db)
    }

    fn shard_of(&self, passenger: &str) -> usize {
        let h = passenger.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (h % self.shards.len() as u64) as usize
    }

    /// Books `p` on flight `f` if a seat is free and `p` is not on it already: one
    /// transaction takes the seat and inserts the reservation into both indices.
    async fn book(&self, p: &str, f: usize, n: &AtomicU64) -> Result<bool, Error> {
        let s = self.shard_of(p);
        let flight_ref = RegionRef::new(self.flights[f].id());
        self.node
            .transaction(async |tx| {
                n.fetch_add(1, Ordering::Relaxed);
                let mut shard = tx.write(&self.shards[s]).await?;
                if shard
                    .reservations
                    .iter()
                    .any(|(q, r)| q == p && *r == flight_ref)
                {
                    return Ok(false); // already on board
                }
                n.fetch_add(1, Ordering::Relaxed);
                let mut flight = tx.write(&self.flights[f]).await?;
                if flight.booked == flight.seats {
                    return Ok(false); // full
                }
                n.fetch_add(1, Ordering::Relaxed);
                let mut manifest = tx.write(&self.manifests[f]).await?;
                flight.booked += 1;
                manifest.passengers.push(p.to_owned());
                shard.reservations.push((p.to_owned(), flight_ref));
                Ok(true)
            })
            .await
    }

    /// Moves one of `p`'s reservations (the `pick`-th, modulo their number) to flight `to`,
    /// or cancels it if `to` is `None`: one transaction updates both flights and both
    /// indices. False if `p` has no reservation or the new flight is full or already theirs.
    async fn cancel_or_change(
        &self,
        p: &str,
        pick: usize,
        to: Option<usize>,
        n: &AtomicU64,
    ) -> Result<bool, Error> {
        let s = self.shard_of(p);
        self.node
            .transaction(async |tx| {
                n.fetch_add(1, Ordering::Relaxed);
                let mut shard = tx.write(&self.shards[s]).await?;
                let mine: Vec<usize> = shard
                    .reservations
                    .iter()
                    .enumerate()
                    .filter(|(_, (q, _))| q == p)
                    .map(|(i, _)| i)
                    .collect();
                if mine.is_empty() {
                    return Ok(false); // no reservation to move
                }
                let pos = mine[pick % mine.len()];
                let from = self.flight_index[&shard.reservations[pos].1.id()];
                if let Some(t) = to {
                    let to_ref = RegionRef::new(self.flights[t].id());
                    if shard
                        .reservations
                        .iter()
                        .any(|(q, r)| q == p && *r == to_ref)
                    {
                        return Ok(false); // already on it (or t == from)
                    }
                    n.fetch_add(1, Ordering::Relaxed);
                    let mut flight = tx.write(&self.flights[t]).await?;
                    if flight.booked == flight.seats {
                        return Ok(false); // full
                    }
                    n.fetch_add(1, Ordering::Relaxed);
                    let mut manifest = tx.write(&self.manifests[t]).await?;
                    flight.booked += 1;
                    manifest.passengers.push(p.to_owned());
                    shard.reservations[pos].1 = to_ref;
                } else {
                    shard.reservations.swap_remove(pos);
                }
                n.fetch_add(2, Ordering::Relaxed);
                let mut flight = tx.write(&self.flights[from]).await?;
                let mut manifest = tx.write(&self.manifests[from]).await?;
                flight.booked -= 1;
                let i = manifest
                    .passengers
                    .iter()
                    .position(|q| q == p)
                    .expect("manifest and passenger index agree");
                manifest.passengers.swap_remove(i);
                Ok(true)
            })
            .await
    }
}

#[derive(Default)]
struct Counts {
    bookings: AtomicU64,
    changes: AtomicU64,
    cancels: AtomicU64,
    refused: AtomicU64,
    accesses: AtomicU64,
    errors: AtomicU64,
}

async fn agent(db: Arc<Db>, args: Args, seed: u64, until: Instant, c: Arc<Counts>) {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    while Instant::now() < until {
        let p = format!("passenger-{}", next(args.passengers));
        let dice = next(100);
        let result = if dice < 60 {
            db.book(&p, next(args.flights), &c.accesses)
                .await
                .map(|ok| (ok, &c.bookings))
        } else {
            let (pick, to) = (next(64), next(args.flights));
            let (to, counter) = if dice < 80 {
                (Some(to), &c.changes)
            } else {
                (None, &c.cancels)
            };
            db.cancel_or_change(&p, pick, to, &c.accesses)
                .await
                .map(|ok| (ok, counter))
        };
        match result {
            Ok((true, counter)) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok((false, _)) => {
                c.refused.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("agent error: {e}");
            }
        }
    }
}

/// Creates the database, spreading homes over the nodes, and binds the catalog's name.
async fn create(cluster: &Cluster, args: &Args) -> Result<(), Error> {
    let nodes = cluster.nodes();
    let mut catalog = Catalog::default();
    let mut keep = Vec::new();
    for f in 0..args.flights {
        let home = &nodes[f % nodes.len()];
        let flight = home
            .create(Flight {
                number: format!("CR{:03}", 100 + f),
                date: 330 + (f as u32 % 30),
                seats: args.seats,
                booked: 0,
            })
            .await?;
        let manifest = home.create(Manifest::default()).await?;
        catalog.flights.push(RegionRef::new(flight.id()));
        catalog.manifests.push(RegionRef::new(manifest.id()));
        keep.push((flight.id(), manifest.id()));
        // Homes keep their master copies when the creating handles are dropped.
    }
    for s in 0..args.shards {
        let shard = nodes[s % nodes.len()]
            .create(PassengerShard::default())
            .await?;
        catalog.shards.push(RegionRef::new(shard.id()));
    }
    let root = nodes[0].create(catalog).await?;
    nodes[0].bind("airline/catalog", root.id()).await?;
    Ok(())
}

/// Checks the invariants from node 0: no overbooking, both indices agree exactly.
async fn verify(db: &Db) -> Result<(u64, Vec<String>), Error> {
    let mut problems = Vec::new();
    let mut by_manifest: BTreeMap<(String, usize), usize> = BTreeMap::new();
    let mut total = 0u64;
    for (i, (f, m)) in db.flights.iter().zip(&db.manifests).enumerate() {
        let flight = f.start_read().await?;
        let manifest = m.start_read().await?;
        if flight.booked > flight.seats {
            problems.push(format!(
                "{} on day {} is overbooked: {}/{}",
                flight.number, flight.date, flight.booked, flight.seats
            ));
        }
        if flight.booked as usize != manifest.passengers.len() {
            problems.push(format!(
                "{}: booked {} but the manifest lists {}",
                flight.number,
                flight.booked,
                manifest.passengers.len()
            ));
        }
        for p in &manifest.passengers {
            *by_manifest.entry((p.clone(), i)).or_default() += 1;
        }
        total += u64::from(flight.booked);
    }
    let mut by_passenger: BTreeMap<(String, usize), usize> = BTreeMap::new();
    for (s, shard) in db.shards.iter().enumerate() {
        let r = shard.start_read().await?;
        for (p, f) in &r.reservations {
            if db.shard_of(p) != s {
                problems.push(format!(
                    "{p} is in passenger shard {s}, not {}",
                    db.shard_of(p)
                ));
            }
            *by_passenger
                .entry((p.clone(), db.flight_index[&f.id()]))
                .or_default() += 1;
        }
    }
    for (k, n) in by_manifest.iter().chain(by_passenger.iter()) {
        if *n != 1 {
            problems.push(format!(
                "{} on flight {} appears {n} times in one index",
                k.0, k.1
            ));
        }
    }
    if by_manifest.keys().ne(by_passenger.keys()) {
        problems.push(format!(
            "the indices disagree: {} reservations by flight, {} by passenger",
            by_manifest.len(),
            by_passenger.len()
        ));
    }
    Ok((total, problems))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    println!(
        "airline: {} nodes x {} agents, {} flights x {} seats, {} passengers, {} s",
        args.nodes, args.agents, args.flights, args.seats, args.passengers, args.seconds
    );
    if let Some(dir) = &args.data_dir {
        for i in 0..args.nodes {
            std::fs::create_dir_all(dir.join(format!("n{i}")))?;
        }
    }
    let data_dir = args.data_dir.clone();
    let cluster = Cluster::local_with(args.nodes, |c| {
        c.data_dir = data_dir.as_ref().map(|d| d.join(format!("n{}", c.node.0)));
    })
    .await?;
    create(&cluster, &args).await?;
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let until = start + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    let mut dbs = Vec::new();
    for (n, node) in cluster.nodes().iter().enumerate() {
        let db = Arc::new(Db::open(node).await?);
        dbs.push(db.clone());
        for a in 0..args.agents {
            let seed = args.seed * 1_000 + (n * args.agents + a) as u64;
            tasks.push(tokio::spawn(agent(
                db.clone(),
                args.clone(),
                seed,
                until,
                counts.clone(),
            )));
        }
    }
    let progress = {
        let counts = counts.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let s = start.elapsed().as_secs_f64();
                let b = counts.bookings.load(Ordering::Relaxed);
                println!(
                    "  {s:4.0} s: {b} bookings, {} changes, {} cancels ({:.0} bookings/s)",
                    counts.changes.load(Ordering::Relaxed),
                    counts.cancels.load(Ordering::Relaxed),
                    b as f64 / s
                );
            }
        })
    };
    for t in tasks {
        t.await.expect("agent task");
    }
    progress.abort();
    let secs = start.elapsed().as_secs_f64();
    let (booked, problems) = verify(&dbs[0]).await?;
    let stats: Vec<_> = cluster.nodes().iter().map(|n| n.stats()).collect();
    let misses: u64 = stats.iter().map(|s| s.engine.misses).sum();
    let messages: u64 = stats.iter().map(|s| s.engine.messages_sent).sum();
    let accesses = counts.accesses.load(Ordering::Relaxed);
    let (b, ch, ca) = (
        counts.bookings.load(Ordering::Relaxed),
        counts.changes.load(Ordering::Relaxed),
        counts.cancels.load(Ordering::Relaxed),
    );
    println!(
        "done in {secs:.1} s: {b} bookings ({:.0}/s), {ch} changes, {ca} cancels, {} refused (full, duplicate or gone), {} errors",
        b as f64 / secs,
        counts.refused.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed)
    );
    println!(
        "accesses {accesses}, misses {misses}: hit rate {:.1}%; {:.1} messages per booking, change or cancel",
        100.0 * (accesses.saturating_sub(misses)) as f64 / accesses.max(1) as f64,
        messages as f64 / (b + ch + ca).max(1) as f64
    );
    let tx = stats.iter().fold(TxStats::default(), |t, s| TxStats {
        committed: t.committed + s.tx.committed,
        retried: t.retried + s.tx.retried,
        aborted: t.aborted + s.tx.aborted,
        wounds: t.wounds + s.tx.wounds,
    });
    println!(
        "transactions: {} committed ({:.0}/s), {} retried, {} wounds, {} aborted",
        tx.committed,
        tx.committed as f64 / secs,
        tx.retried,
        tx.wounds,
        tx.aborted
    );
    println!("seats booked at the end: {booked}");
    drop(dbs);
    cluster.shutdown().await;
    if problems.is_empty() {
        println!(
            "verified: no flight overbooked; every reservation is in both indices exactly once"
        );
        Ok(())
    } else {
        for p in &problems {
            eprintln!("INVARIANT BROKEN: {p}");
        }
        std::process::exit(1);
    }
}
