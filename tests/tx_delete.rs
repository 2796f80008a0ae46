//! Deletes are atomic and durable: a transaction's delete takes effect at the same moment as
//! its writes, at every home, and survives restarts; a transaction waiting for a region that
//! another one deletes never commits to it; a plain `Node::delete` is logged at the home.
//! Also: a home holds a prepared region until it learns the decision, so a late decision
//! never installs an older image over a newer commit.

use std::time::Duration;

use crl::net::txn::TxFault;
use crl::{Cluster, Error, NodeId, Region};

#[derive(Region, Debug, Clone)]
struct Account {
    balance: i64,
}

fn data_dirs(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("crl-tx-delete-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn cluster(n: usize, durable: Option<&std::path::Path>) -> Result<Cluster, Error> {
    let base = durable.map(|b| b.to_path_buf());
    Cluster::local_with(n, move |c| {
        if let Some(base) = &base {
            c.data_dir = Some(base.join(format!("n{}", c.node.0)));
        }
    })
    .await
}

/// Node 1's transaction deletes X (homed at node 0) while node 2's younger transaction waits
/// to write X: node 2 must learn that X is gone, never commit a write to it.
async fn waiter_on_a_deleted_region(durable: bool) -> Result<(), Error> {
    let base = data_dirs(if durable { "waiter-d" } else { "waiter" });
    let cluster = cluster(3, durable.then_some(base.as_path())).await?;
    let x = cluster.node(0).create(Account { balance: 7 }).await?.id();
    let (n1, n2) = (cluster.node(1).clone(), cluster.node(2).clone());
    let x1 = n1.map::<Account>(x).await?;
    let x2 = n2.map::<Account>(x).await?;
    let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
    let deleter = tokio::spawn(async move {
        let held = std::sync::Mutex::new(Some(held_tx));
        n1.transaction(async |tx| {
            tx.delete(&x1).await?;
            if let Some(h) = held.lock().unwrap().take() {
                let _ = h.send(());
            }
            // Node 2's transaction queues behind this one meanwhile.
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok::<_, Error>(())
        })
        .await
    });
    held_rx.await.expect("the deleter holds X");
    let waiter = n2
        .transaction(async |tx| {
            tx.write(&x2).await?.balance += 1;
            Ok::<_, Error>(())
        })
        .await;
    deleter.await.expect("deleter task")?;
    assert!(
        matches!(waiter, Err(Error::Deleted(id)) if id == x),
        "a transaction waiting for a region another one deleted committed to it: {waiter:?}"
    );
    // Everyone sees it deleted, the home too.
    let x0 = cluster.node(0).map::<Account>(x).await;
    assert!(matches!(x0, Err(Error::Deleted(_))), "{x0:?}");
    assert!(matches!(x2.start_read().await, Err(Error::Deleted(_))));
    drop(x2);
    cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_waiting_for_a_deleted_region_never_commits_to_it() -> Result<(), Error> {
    waiter_on_a_deleted_region(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_transaction_waiting_for_a_deleted_region_never_commits_to_it()
-> Result<(), Error> {
    waiter_on_a_deleted_region(true).await
}

/// The writer learns its delete at once: the next access on the writer's node fails, and the
/// transaction's writes are never visible with the deleted region still alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_delete_is_visible_with_the_writes() -> Result<(), Error> {
    let cluster = cluster(2, None).await?;
    let x = cluster.node(0).create(Account { balance: 1 }).await?.id();
    let y = cluster.node(0).create(Account { balance: 1 }).await?.id();
    let n1 = cluster.node(1).clone();
    let (x1, y1) = (n1.map::<Account>(x).await?, n1.map::<Account>(y).await?);
    n1.transaction(async |tx| {
        tx.delete(&x1).await?;
        tx.write(&y1).await?.balance = 2;
        Ok::<_, Error>(())
    })
    .await?;
    assert!(matches!(x1.start_read().await, Err(Error::Deleted(_))));
    // At the home, once Y shows the write, X is gone.
    let n0 = cluster.node(0).clone();
    let y0 = n0.map::<Account>(y).await?;
    assert_eq!(y0.start_read().await?.balance, 2);
    assert!(matches!(n0.map::<Account>(x).await, Err(Error::Deleted(_))));
    drop((x1, y1, y0));
    cluster.shutdown().await;
    Ok(())
}

/// A transaction's delete at another home, and a plain delete, both survive a restart of the
/// home (the plain one was not logged: the region came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_survive_a_restart_of_the_home() -> Result<(), Error> {
    let base = data_dirs("restart");
    let mut cluster = cluster(2, Some(&base)).await?;
    let by_tx = cluster.node(0).create(Account { balance: 1 }).await?.id();
    let plain = cluster.node(0).create(Account { balance: 2 }).await?.id();
    let kept = cluster.node(0).create(Account { balance: 3 }).await?.id();
    let n1 = cluster.node(1).clone();
    let h = n1.map::<Account>(by_tx).await?;
    n1.transaction(async |tx| tx.delete(&h).await).await?;
    let p = n1.map::<Account>(plain).await?;
    n1.delete(plain).await?;
    drop((h, p, n1));
    cluster.restart(0).await?;
    // Asked at the restarted home itself (node 1 remembers the deletes it saw).
    let n0 = cluster.node(0).clone();
    for id in [by_tx, plain] {
        let r = n0.map::<Account>(id).await.map(|_| ());
        assert!(
            matches!(r, Err(Error::Deleted(_) | Error::NoSuchRegion(_))),
            "{id} came back after a restart of its home: {r:?}"
        );
    }
    assert_eq!(
        n0.map::<Account>(kept).await?.start_read().await?.balance,
        3
    );
    drop(n0);
    cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

/// The writer (node 2, homing nothing) hands the decision to home 0, which tells home 1 late.
/// Home 1 must not serve X to anyone before it knows: otherwise node 1 commits X = 2 and the
/// late decision then installs the older X = 1 over it (in memory and in the log's order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_decision_never_installs_an_older_image() -> Result<(), Error> {
    let base = data_dirs("late");
    let late = Duration::from_millis(1500);
    let mut cluster = Cluster::local_with(3, {
        let base = base.clone();
        move |c| {
            c.data_dir = Some(base.join(format!("n{}", c.node.0)));
            if c.node == NodeId(0) {
                c.tx_fault = Some(TxFault::DelayDecisionTo(NodeId(1), late));
            }
        }
    })
    .await?;
    let y = cluster.node(0).create(Account { balance: 0 }).await?.id();
    let x = cluster.node(1).create(Account { balance: 0 }).await?.id();
    let n2 = cluster.node(2).clone();
    let (x2, y2) = (n2.map::<Account>(x).await?, n2.map::<Account>(y).await?);
    n2.transaction(async |tx| {
        tx.write(&x2).await?.balance = 1;
        tx.write(&y2).await?.balance = 1;
        Ok::<_, Error>(())
    })
    .await?;
    // Home 1 has not heard the decision yet.
    let n1 = cluster.node(1).clone();
    let x1 = n1.map::<Account>(x).await?;
    let t = std::time::Instant::now();
    n1.transaction(async |tx| {
        let mut w = tx.write(&x1).await?;
        assert_eq!(w.balance, 1, "the first transaction's write");
        w.balance = 2;
        Ok::<_, Error>(())
    })
    .await?;
    eprintln!(
        "node 1 waited {:?} for its home to learn the decision",
        t.elapsed()
    );
    tokio::time::sleep(late + Duration::from_millis(500)).await;
    assert_eq!(
        x1.start_read().await?.balance,
        2,
        "a late decision undid a commit"
    );
    drop((x1, x2, y2, n1, n2));
    cluster.restart(1).await?;
    let x1 = cluster.node(1).map::<Account>(x).await?;
    assert_eq!(
        x1.start_read().await?.balance,
        2,
        "the log replays the late decision over the newer commit"
    );
    drop(x1);
    cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
