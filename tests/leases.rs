//! Leases and fencing on a real in-process cluster (DESIGN.md §6, rules 2 and 3), with a short
//! peer timeout so that the tests run in seconds. Node 1 is cut off by its fault-injecting
//! socket (`Cluster::faults`) while it holds copies of node 0's regions.

use std::time::{Duration, Instant};

use crl::{Cluster, Error, Region};

#[derive(Region, Clone, Debug, PartialEq)]
struct Cell {
    value: u64,
}

const PEER_TIMEOUT: Duration = Duration::from_secs(1);

/// A new region `Cell { value }` homed at node `home`.
async fn cell_at(cluster: &Cluster, home: usize, value: u64) -> crl::RegionId {
    cluster
        .node(home)
        .create(Cell { value })
        .await
        .unwrap()
        .id()
}

async fn cluster() -> Cluster {
    Cluster::local_with(3, |c| {
        c.peer_timeout = Some(PEER_TIMEOUT);
        c.op_timeout = Duration::from_secs(2);
    })
    .await
    .unwrap()
}

/// A cut-off node's lease lapses before its home may reclaim: from then on it serves no hit
/// on its copy, so it never reads a value the home has since replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_reader_serves_no_stale_hit() {
    let cluster = cluster().await;
    let id = cell_at(&cluster, 0, 1).await;
    let at0 = cluster.node(0).map::<Cell>(id).await.unwrap();
    let at1 = cluster.node(1).map::<Cell>(id).await.unwrap();
    assert_eq!(at1.start_read().await.unwrap().value, 1);
    assert!(at1.try_read().is_some(), "a valid copy under a lease hits");

    cluster.faults(1).cut();
    let cut = Instant::now();
    // The home waits for node 1's lease (and the margin) before it takes the copy back.
    let mut w = at0.start_write().await.unwrap();
    let waited = cut.elapsed();
    w.value = 2;
    w.end();
    assert!(
        waited >= PEER_TIMEOUT,
        "the home reclaimed after {waited:?}, inside the holder's lease"
    );
    // Node 1 still has its copy, but no lease: no hit, and a read waits and fails.
    assert!(
        at1.try_read().is_none(),
        "a stale hit {:?} after the home wrote",
        cut.elapsed()
    );
    match at1.start_read().await {
        Ok(g) => panic!("read {} while cut off", g.value),
        Err(e) => assert!(matches!(e, Error::HomeUnreachable { .. }), "{e}"),
    }
    cluster.faults(1).heal();
    // Back, node 1 learns it was fenced and reads the new value.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match at1.start_read().await {
            Ok(g) => {
                assert_eq!(g.value, 2);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "still failing: {e}"),
        }
    }
    let s0 = cluster.node(0).stats().liveness;
    let s1 = cluster.node(1).stats().liveness;
    assert!(s0.fences >= 1, "node 0 did not fence node 1: {s0:?}");
    assert!(
        s1.fenced_by_peers >= 1,
        "node 1 was not told it was fenced: {s1:?}"
    );
    cluster.shutdown().await;
}

/// The hit path itself stops at the end of the lease, before the cut-off node fences the
/// silent home and drops its copies (a peer timeout plus a margin after it last heard from
/// it): the lease check, not the fence, is what ends the hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_end_with_the_lease_before_the_fence() {
    let cluster = cluster().await;
    let id = cell_at(&cluster, 0, 1).await;
    let at1 = cluster.node(1).map::<Cell>(id).await.unwrap();
    assert_eq!(at1.start_read().await.unwrap().value, 1);
    cluster.faults(1).cut();
    let cut = Instant::now();
    // Polled from a thread of its own (`try_read` needs no runtime), so that a busy runtime
    // cannot delay the poll past the fence, a few hundred milliseconds after the lease.
    let node1 = cluster.node(1).clone();
    let (ended, fences) = tokio::task::spawn_blocking(move || {
        while at1.try_read().is_some() {
            assert!(
                cut.elapsed() < PEER_TIMEOUT * 3,
                "still hitting {:?} after the cut",
                cut.elapsed()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        (cut.elapsed(), node1.stats().liveness.fences)
    })
    .await
    .unwrap();
    assert_eq!(
        fences, 0,
        "hits ended {ended:?} after the cut only because node 1 fenced the home"
    );
    cluster.faults(1).heal();
    cluster.shutdown().await;
}

/// A transaction that read a copy whose lease lapsed before its commit does not commit on
/// that read: it is retried and reads the home's new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_does_not_commit_on_a_read_whose_lease_lapsed() {
    let cluster = cluster().await;
    let a = cell_at(&cluster, 0, 1).await;
    let b = cell_at(&cluster, 1, 0).await;
    let n1 = cluster.node(1).clone();
    let (ha, hb) = (
        n1.map::<Cell>(a).await.unwrap(),
        n1.map::<Cell>(b).await.unwrap(),
    );
    let at0 = cluster.node(0).map::<Cell>(a).await.unwrap();
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let faults = cluster.faults(1).clone();
    n1.transaction(async |tx| {
        let first = attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
        let seen = tx.read(&ha).await?.value;
        if first {
            // Cut off after the read; meanwhile the home fences node 1 and writes `a`.
            faults.cut();
            let mut w = at0.start_write().await.expect("the home reclaims");
            w.value = 2;
            w.end();
            faults.heal();
        }
        tx.write(&hb).await?.value = seen;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    let committed = hb.start_read().await.unwrap().value;
    assert_eq!(
        committed, 2,
        "committed a read of `a` made under a lease that lapsed before the commit"
    );
    assert!(attempts.into_inner() >= 2);
    cluster.shutdown().await;
}

/// After a peer restarts, leases on its regions are granted again (the ping of the old
/// session, dropped with it, must not stall the new one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_granted_again_after_a_restart() {
    let mut cluster = Cluster::local_with(3, |c| {
        c.peer_timeout = Some(Duration::from_secs(5));
        c.op_timeout = Duration::from_secs(2);
    })
    .await
    .unwrap();
    for round in 0..2 {
        cluster.restart(0).await.unwrap();
        let id = cell_at(&cluster, 0, round).await;
        for n in [1, 2] {
            // Until node n has learnt of the restart, what it asks the old incarnation fails
            // with `HomeRestarted` (retry); then leases must come back within a ping or two.
            let deadline = Instant::now() + Duration::from_secs(4);
            let v = loop {
                let r = match cluster.node(n).map::<Cell>(id).await {
                    Ok(h) => h.start_read().await.map(|g| g.value),
                    Err(e) => Err(e),
                };
                match r {
                    Err(Error::HomeRestarted(_)) if Instant::now() < deadline => continue,
                    r => break r,
                }
            };
            assert_eq!(
                v.as_ref().ok(),
                Some(&round),
                "round {round}: node {n} cannot read the restarted home's region: {v:?}"
            );
        }
    }
    cluster.shutdown().await;
}
