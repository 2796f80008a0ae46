//! Deadlock-prone transaction workloads finish, on a real local cluster (QUIC with mutual TLS
//! on 127.0.0.1): two transactions locking two regions in opposite orders (on one node, and
//! on two nodes), a 3-cycle across three nodes, and many tasks hammering a few hot regions in
//! random orders with reads, writes and read-then-write upgrades. In the cycle tests every
//! round forces the deadlock: each transaction takes its first lock, waits until the others
//! hold theirs, then asks for the next one. Every transaction must commit (wound-wait aborts
//! and retries the younger ones; none may fail or time out), promptly (well under the 5 s
//! operation timeout, so the deadlock was broken, not timed out), with money conserved.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crl::net::txn::TxStats;
use crl::{Cluster, Error, Handle, Node, Region, RegionId};

#[derive(Region, Debug, Clone)]
struct Account {
    balance: i64,
}

const INITIAL: i64 = 1_000;
/// A round that takes longer was not resolved by wound-wait (the operation timeout is 5 s).
const PROMPT: Duration = Duration::from_secs(2);

/// xorshift64*: the workloads' choices.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

fn tx_totals(cluster: &Cluster) -> TxStats {
    cluster
        .nodes()
        .iter()
        .map(|n| n.stats().tx)
        .fold(TxStats::default(), |t, s| TxStats {
            committed: t.committed + s.committed,
            retried: t.retried + s.retried,
            aborted: t.aborted + s.aborted,
            wounds: t.wounds + s.wounds,
        })
}

/// Creates one account per entry of `homes`, homed there.
async fn accounts(cluster: &Cluster, homes: &[usize]) -> Result<Vec<RegionId>, Error> {
    let mut ids = Vec::new();
    for &h in homes {
        ids.push(
            cluster
                .node(h)
                .create(Account { balance: INITIAL })
                .await?
                .id(),
        );
    }
    Ok(ids)
}

async fn map_all(node: &Node, ids: &[RegionId]) -> Result<Vec<Handle<Account>>, Error> {
    let mut hs = Vec::new();
    for id in ids {
        hs.push(node.map::<Account>(*id).await?);
    }
    Ok(hs)
}

async fn total(node: &Node, ids: &[RegionId]) -> Result<i64, Error> {
    let mut sum = 0;
    for h in map_all(node, ids).await? {
        sum += h.start_read().await?.balance;
    }
    Ok(sum)
}

/// Waits (at most a second) until `parties` transactions have arrived; true if they all did.
async fn rendezvous(arrived: &AtomicUsize, parties: usize) -> bool {
    arrived.fetch_add(1, Ordering::AcqRel);
    let deadline = Instant::now() + Duration::from_secs(1);
    while arrived.load(Ordering::Acquire) < parties {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// Runs `rounds` forced deadlock cycles: in each round, task `i` (on node `on[i]`) moves
/// money from region `cycle[i]` to region `cycle[(i + 1) % n]`, locking them in that order;
/// on its first attempt it waits after the first lock until every task holds its own. With
/// `read_first` the first lock is a read and the task only deposits into the second region.
/// Returns how many rounds the rendezvous completed in (each of those was a real deadlock).
async fn forced_cycles(
    cluster: &Cluster,
    on: &[usize],
    cycle: &[RegionId],
    rounds: usize,
    read_first: bool,
) -> Result<usize, Error> {
    let n = on.len();
    let arrived: Arc<Vec<AtomicUsize>> =
        Arc::new((0..rounds).map(|_| AtomicUsize::new(0)).collect());
    let forced: Arc<Vec<AtomicBool>> =
        Arc::new((0..rounds).map(|_| AtomicBool::new(false)).collect());
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for (i, &node_index) in on.iter().enumerate() {
        let node = cluster.node(node_index).clone();
        let hs = map_all(&node, cycle).await?;
        let (arrived, forced, start) = (arrived.clone(), forced.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let (first, second) = (&hs[i], &hs[(i + 1) % n]);
            for round in 0..rounds {
                // Every task has finished the previous round.
                if tokio::time::timeout(Duration::from_secs(10), start.wait())
                    .await
                    .is_err()
                {
                    panic!("task {i}: another task never reached round {round}");
                }
                let began = Instant::now();
                let attempts = AtomicU32::new(0);
                node.transaction(async |tx| {
                    let attempt = attempts.fetch_add(1, Ordering::Relaxed);
                    let amount = 1 + round as i64;
                    if read_first {
                        // A shared lock, then a write: the deposit lands exactly once.
                        let seen = tx.read(first).await?.balance;
                        if attempt == 0 && rendezvous(&arrived[round], n).await {
                            forced[round].store(true, Ordering::Relaxed);
                        }
                        let mut to = tx.write(second).await?;
                        to.balance += amount;
                        assert!(seen >= INITIAL);
                    } else {
                        let mut from = tx.write(first).await?;
                        if attempt == 0 && rendezvous(&arrived[round], n).await {
                            forced[round].store(true, Ordering::Relaxed);
                        }
                        let mut to = tx.write(second).await?;
                        from.balance -= amount;
                        to.balance += amount;
                    }
                    Ok::<_, Error>(())
                })
                .await?;
                let took = began.elapsed();
                assert!(
                    took < PROMPT,
                    "task {i}, round {round}: the deadlock took {took:?} to resolve \
                     ({} attempts): broken by a timeout, not by wound-wait?",
                    attempts.load(Ordering::Relaxed)
                );
            }
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await.expect("cycle task")?;
    }
    Ok(forced.iter().filter(|f| f.load(Ordering::Relaxed)).count())
}

async fn check_cycles(
    on: &[usize],
    homes: &[usize],
    rounds: usize,
    read_first: bool,
) -> Result<(), Error> {
    let cluster = Cluster::local(on.iter().chain(homes).max().map_or(1, |m| m + 1)).await?;
    let ids = accounts(&cluster, homes).await?;
    let started = Instant::now();
    let met = forced_cycles(&cluster, on, &ids, rounds, read_first).await?;
    let stats = tx_totals(&cluster);
    println!(
        "{} tasks on nodes {on:?}, regions homed at {homes:?}: {rounds} rounds ({met} forced \
         deadlocks) in {:.2} s; tx {stats:?}",
        on.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(stats.committed, (rounds * on.len()) as u64);
    assert_eq!(stats.aborted, 0);
    assert!(
        stats.retried >= met as u64,
        "{met} forced deadlocks but only {} retries",
        stats.retried
    );
    // Transfers conserve money; a read-then-write round deposits `1 + round` per task.
    let deposits: i64 = if read_first {
        (1..=rounds as i64).sum::<i64>() * on.len() as i64
    } else {
        0
    };
    assert_eq!(
        total(cluster.node(0), &ids).await?,
        INITIAL * ids.len() as i64 + deposits
    );
    cluster.shutdown().await;
    Ok(())
}

/// Two transactions on one node lock x and y in opposite orders (x and y homed on two other
/// nodes): the node's own lock table must break the deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_order_on_one_node() -> Result<(), Error> {
    check_cycles(&[0, 0], &[1, 2], 15, false).await
}

/// The same with x homed at the node itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_order_on_one_node_at_a_home() -> Result<(), Error> {
    check_cycles(&[0, 0], &[0, 1], 15, false).await
}

/// Two transactions on two nodes lock x and y in opposite orders: the deadlock spans nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_order_across_two_nodes() -> Result<(), Error> {
    check_cycles(&[0, 1], &[0, 1], 15, false).await
}

/// Three transactions on three nodes, each holding its node's region and asking for the next
/// node's: a 3-cycle across the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_cycle_across_three_nodes() -> Result<(), Error> {
    check_cycles(&[0, 1, 2], &[0, 1, 2], 15, false).await
}

/// Two transactions on two nodes each read one region and then write the other's: shared
/// locks held across nodes deadlock with writes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_then_write_cycle_across_two_nodes() -> Result<(), Error> {
    check_cycles(&[0, 1], &[0, 1], 15, true).await
}

/// The same read-then-write 3-cycle across three nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_then_write_three_cycle_across_three_nodes() -> Result<(), Error> {
    check_cycles(&[0, 1, 2], &[0, 1, 2], 15, true).await
}

/// The read-then-write cycle between two transactions of one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_then_write_cycle_on_one_node() -> Result<(), Error> {
    check_cycles(&[0, 0], &[1, 2], 15, true).await
}

/// Nine tasks on three nodes each run transactions over 2–3 of four hot regions in random
/// order, taking each with a write, a read then a write (an upgrade), or a read only, and
/// move money between the ones they write. All must commit and money must be conserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_regions_in_random_orders() -> Result<(), Error> {
    hot_regions(&[0, 1, 2]).await
}

/// The same nine tasks all on one node (the regions still homed on three): only the node's
/// own lock table is involved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_regions_in_random_orders_on_one_node() -> Result<(), Error> {
    hot_regions(&[0, 0, 0]).await
}

/// Three tasks on each node of `on` hammer four hot regions homed on three nodes.
async fn hot_regions(on: &[usize]) -> Result<(), Error> {
    const HOT: usize = 4;
    const TXNS: usize = 60;
    let cluster = Cluster::local(3).await?;
    let ids = accounts(&cluster, &[0, 1, 2, 0]).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (ni, &node_index) in on.iter().enumerate() {
        for t in 0..3 {
            let node = cluster.node(node_index).clone();
            let hs = map_all(&node, &ids).await?;
            let mut rng = Rng::new(0x407 + (ni * 8 + t) as u64);
            tasks.push(tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                for _ in 0..TXNS {
                    // Regions in random order; 0 = write, 1 = read then write, 2 = read only.
                    let k = 2 + rng.below(2);
                    let mut order: Vec<usize> = (0..HOT).collect();
                    for i in 0..k {
                        let j = i + rng.below(HOT - i);
                        order.swap(i, j);
                    }
                    order.truncate(k);
                    let modes: Vec<usize> = (0..k)
                        .map(|i| if i < 2 { rng.below(2) } else { rng.below(3) })
                        .collect();
                    let amount = 1 + rng.below(50) as i64;
                    let payees = modes.iter().filter(|&&m| m <= 1).count() as i64 - 1;
                    let began = Instant::now();
                    node.transaction(async |tx| {
                        let mut written = Vec::new();
                        for (&r, &mode) in order.iter().zip(&modes) {
                            if mode >= 1 {
                                drop(tx.read(&hs[r]).await?);
                                tokio::task::yield_now().await;
                            }
                            if mode <= 1 {
                                let mut w = tx.write(&hs[r]).await?;
                                // The first written region pays each later one.
                                if written.is_empty() {
                                    w.balance -= amount * payees;
                                } else {
                                    w.balance += amount;
                                }
                                written.push(r);
                            }
                            tokio::task::yield_now().await;
                        }
                        Ok::<_, Error>(())
                    })
                    .await?;
                    slowest = slowest.max(began.elapsed());
                }
                Ok::<_, Error>(slowest)
            }));
        }
    }
    let mut slowest = Duration::ZERO;
    for t in tasks {
        slowest = slowest.max(t.await.expect("hot task")?);
    }
    let stats = tx_totals(&cluster);
    println!(
        "9 tasks on nodes {on:?} x {TXNS} transactions on {HOT} hot regions in {:.2} s \
         (slowest {slowest:?}); tx {stats:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(stats.committed, 9 * TXNS as u64);
    assert_eq!(stats.aborted, 0);
    assert_eq!(total(cluster.node(0), &ids).await?, INITIAL * HOT as i64);
    assert!(
        slowest < PROMPT,
        "a transaction took {slowest:?}: a deadlock broken by a timeout, not by wound-wait?"
    );
    cluster.shutdown().await;
    Ok(())
}
