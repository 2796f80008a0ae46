//! Dropping a transaction's future (a `timeout`, a `select!`, an aborted task) at any await
//! aborts the attempt cleanly (issue 9): no uncommitted write becomes visible, and nothing stays
//! locked.

use std::time::Duration;

use crl::{Cluster, Error, Region};

#[derive(Region, Clone, Debug, PartialEq)]
struct Counter {
    n: u64,
}

/// The reproduction: a write made inside a transaction whose future is dropped by a
/// timeout must not be seen by anyone, and the region must be usable at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transaction_leaves_no_write_and_no_lock() {
    let cluster = Cluster::local(2).await.unwrap();
    let a = cluster.node(0);
    let h = a.create(Counter { n: 1 }).await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_millis(50),
        a.transaction(async |tx| {
            let mut w = tx.write(&h).await?;
            w.n = 999;
            drop(w);
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, Error>(())
        }),
    )
    .await;
    assert!(r.is_err(), "the timeout fired");
    // Another node reads at once: the before-image, and no wait for a leftover lock.
    let at1 = cluster.node(1).map::<Counter>(h.id()).await.unwrap();
    let started = std::time::Instant::now();
    let v = at1.start_read().await.unwrap().n;
    assert_eq!(v, 1, "a write of a dropped transaction became visible");
    assert!(started.elapsed() < Duration::from_secs(1));
    // A later transaction at the same node takes the region without being wounded.
    a.transaction(async |tx| {
        tx.write(&h).await?.n += 1;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert_eq!(at1.start_read().await.unwrap().n, 2);
    assert_eq!(
        a.stats().tx.retried,
        0,
        "a leftover lock wounded a later transaction"
    );
    cluster.shutdown().await;
}

/// A transaction dropped while it waits for a region another transaction holds leaves no
/// waiter behind: the region's next holder is not wounded by a ghost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_dropped_while_waiting_leaves_no_waiter() {
    let cluster = Cluster::local(2).await.unwrap();
    let a = cluster.node(0).clone();
    let h = a.create(Counter { n: 0 }).await.unwrap();
    let at1 = cluster.node(1).map::<Counter>(h.id()).await.unwrap();
    // Node 1 holds a plain write on the region for a while.
    let mut w = at1.start_write().await.unwrap();
    let waiting = tokio::time::timeout(
        Duration::from_millis(200),
        a.transaction(async |tx| {
            tx.write(&h).await?.n = 555;
            Ok::<_, Error>(())
        }),
    )
    .await;
    assert!(waiting.is_err(), "the transaction should still be waiting");
    w.n = 7;
    w.end();
    a.transaction(async |tx| {
        tx.write(&h).await?.n += 1;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert_eq!(h.start_read().await.unwrap().n, 8);
    assert_eq!(
        a.stats().tx.retried,
        0,
        "a waiter left behind by the dropped transaction wounded a later one"
    );
    cluster.shutdown().await;
}

#[derive(Region, Clone, Debug, PartialEq)]
struct Account {
    balance: i64,
}

/// A two-region transfer (one region local, one at another home) whose future is dropped
/// after every delay from 0 to 30 ms: before, inside and during the commit. Whatever the
/// moment, the transfer is all or nothing, and both regions are free at once afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_dropped_at_any_moment_is_all_or_nothing() {
    for durable in [false, true] {
        let base = std::env::temp_dir().join(format!("crl-tx-cancel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dirs = base.clone();
        let cluster = Cluster::local_with(2, move |c| {
            if durable {
                c.data_dir = Some(dirs.join(format!("n{}", c.node.0)));
            }
        })
        .await
        .unwrap();
        let a = cluster.node(0).clone();
        let from = a.create(Account { balance: 1000 }).await.unwrap();
        let to_id = cluster
            .node(1)
            .create(Account { balance: 0 })
            .await
            .unwrap()
            .id();
        let to = a.map::<Account>(to_id).await.unwrap();
        let mut committed = 0i64;
        for delay_us in (0..30_000).step_by(1_500) {
            let r = tokio::time::timeout(
                Duration::from_micros(delay_us),
                a.transaction(async |tx| {
                    tx.write(&from).await?.balance -= 1;
                    let mut t = tx.write(&to).await?;
                    t.balance += 1;
                    drop(t);
                    tokio::task::yield_now().await;
                    Ok::<_, Error>(())
                }),
            )
            .await;
            if matches!(r, Ok(Ok(()))) {
                committed += 1;
            }
            // Both free at once, and all or nothing (a commit already begun may finish on its
            // own after the drop, so read both in one transaction).
            let (f, t) = tokio::time::timeout(
                Duration::from_secs(5),
                a.transaction(async |tx| {
                    let f = tx.read(&from).await?.balance;
                    let t = tx.read(&to).await?.balance;
                    Ok::<_, Error>((f, t))
                }),
            )
            .await
            .expect("a region stayed locked after a dropped transaction")
            .unwrap();
            assert_eq!(
                f + t,
                1000,
                "half a transfer is visible (delay {delay_us} µs)"
            );
            assert!(t >= committed, "an acknowledged transfer is missing");
        }
        cluster.shutdown().await;
        let _ = std::fs::remove_dir_all(&base);
    }
}

/// A panic in the closure drops the transaction: its write is undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_closure_undoes_its_writes() {
    let cluster = Cluster::local(1).await.unwrap();
    let a = cluster.node(0).clone();
    let h = a.create(Counter { n: 5 }).await.unwrap();
    let (a2, h2) = (a.clone(), h.clone());
    let joined = tokio::spawn(async move {
        a2.transaction(async |tx| {
            tx.write(&h2).await?.n = 666;
            if tx.priority() > 0 {
                panic!("the closure panics after writing");
            }
            Ok::<_, Error>(())
        })
        .await
    })
    .await;
    assert!(joined.is_err(), "the closure panicked");
    assert_eq!(h.start_read().await.unwrap().n, 5);
    a.transaction(async |tx| {
        tx.write(&h).await?.n += 1;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert_eq!(h.start_read().await.unwrap().n, 6);
    cluster.shutdown().await;
}

/// A closure that swallows the error of a doomed transaction (here: its region changed
/// between its read and its write) and returns `Ok` must not commit: the read lock was let go.
/// The commit refuses and the transaction runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doomed_transaction_whose_closure_swallowed_the_error_does_not_commit() {
    let cluster = Cluster::local(2).await.unwrap();
    let a = cluster.node(0).clone();
    let h = a.create(Counter { n: 0 }).await.unwrap();
    let at1 = cluster.node(1).map::<Counter>(h.id()).await.unwrap();
    let attempts = std::sync::atomic::AtomicU32::new(0);
    a.transaction(async |tx| {
        let first = attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
        let _seen = tx.read(&h).await?.n;
        if first {
            // Node 1 queues a write behind this read; the upgrade below lets it in first.
            let at1 = at1.clone();
            tokio::spawn(async move {
                at1.start_write().await.unwrap().n = 100;
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            let r = tx.write(&h).await.map(|_| ());
            assert!(matches!(r, Err(Error::Wounded)), "{r:?}");
            return Ok(()); // the error is swallowed
        }
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert!(
        attempts.into_inner() >= 2,
        "a doomed attempt committed after its closure swallowed the error"
    );
    cluster.shutdown().await;
}

/// A transaction that read a copy of a home which then restarted must not commit on that read
/// (issue 9), even without leases (`peer_timeout = None`): the read lock died with the home's
/// old incarnation, and another transaction may have written the region since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_holding_a_copy_of_a_restarted_home_does_not_commit() {
    let base = std::env::temp_dir().join(format!("crl-tx-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let dirs = base.clone();
    let mut cluster = Cluster::local_with(3, move |c| {
        c.peer_timeout = None;
        c.data_dir = Some(dirs.join(format!("n{}", c.node.0)));
    })
    .await
    .unwrap();
    let a = cluster.node(0).create(Counter { n: 1 }).await.unwrap().id();
    let b = cluster.node(1).create(Counter { n: 0 }).await.unwrap().id();
    let n1 = cluster.node(1).clone();
    let (read_done, read_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_on, go_rx) = tokio::sync::oneshot::channel::<()>();
    let txn = tokio::spawn(async move {
        let (ha, hb) = (
            n1.map::<Counter>(a).await.unwrap(),
            n1.map::<Counter>(b).await.unwrap(),
        );
        let signals = parking_lot::Mutex::new(Some((read_done, go_rx)));
        let attempts = std::sync::atomic::AtomicU32::new(0);
        n1.transaction(async |tx| {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let seen = tx.read(&ha).await?.n;
            tx.write(&hb).await?.n = seen;
            let first = signals.lock().take();
            if let Some((read_done, go_rx)) = first {
                // Home 0 restarts and `a` is written meanwhile; nothing of this transaction
                // blocks afterwards, so only its commit can notice.
                read_done.send(()).unwrap();
                go_rx.await.unwrap();
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        let committed = hb.start_read().await.unwrap().n;
        (attempts.into_inner(), committed)
    });
    read_rx.await.unwrap();
    cluster.restart(0).await.unwrap();
    // Node 2 commits a = 2 at the new incarnation of home 0.
    let n2 = cluster.node(2).clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Until node 2 learns of the restart, what it asks fails with `HomeRestarted`.
        let r = match n2.map::<Counter>(a).await {
            Ok(h2) => {
                n2.transaction(async |tx| {
                    tx.write(&h2).await?.n = 2;
                    Ok::<_, Error>(())
                })
                .await
            }
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
    }
    go_on.send(()).unwrap();
    let (attempts, committed) = txn.await.unwrap();
    assert_eq!(
        committed, 2,
        "committed a read of `a` from before its home restarted ({attempts} attempts)"
    );
    cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(&base);
}
