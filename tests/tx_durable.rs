//! Durable transactions over a real local cluster with data dirs: committed work survives a
//! restart of any participant (local commit and two-phase commit), names survive, and a
//! restarted home makes its peers drop their stale copies.

use crl::{Cluster, Error, Region};

#[derive(Region, Debug, Clone)]
struct Account {
    balance: i64,
}

fn data_dirs(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("crl-tx-durable-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn durable_cluster(n: usize, base: &std::path::Path) -> Result<Cluster, Error> {
    let base = base.to_path_buf();
    Cluster::local_with(n, move |c| {
        c.data_dir = Some(base.join(format!("n{}", c.node.0)))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_work_survives_restarts() -> Result<(), Error> {
    let base = data_dirs("survive");
    let mut cluster = durable_cluster(3, &base).await?;
    let (a_id, b_id) = {
        let a = cluster.node(0).create(Account { balance: 100 }).await?;
        let b = cluster.node(1).create(Account { balance: 0 }).await?;
        cluster.node(0).bind("acct/a", a.id()).await?;
        cluster.node(1).bind("acct/b", b.id()).await?;
        (a.id(), b.id())
    };
    {
        // Node 2 coordinates a two-phase commit over homes 0 and 1.
        let n2 = cluster.node(2).clone();
        let a = n2.map::<Account>(a_id).await?;
        let b = n2.map::<Account>(b_id).await?;
        for _ in 0..5 {
            n2.transaction(async |tx| {
                tx.write(&a).await?.balance -= 10;
                tx.write(&b).await?.balance += 10;
                Ok::<_, Error>(())
            })
            .await?;
        }
        // A local commit at node 0.
        let n0 = cluster.node(0).clone();
        let a0 = n0.map::<Account>(a_id).await?;
        n0.transaction(async |tx| {
            tx.write(&a0).await?.balance += 1;
            Ok::<_, Error>(())
        })
        .await?;
    }
    // Restart both homes: their regions come back from their logs.
    cluster.restart(0).await?;
    cluster.restart(1).await?;
    let n2 = cluster.node(2).clone();
    assert_eq!(n2.lookup("acct/a").await?, a_id);
    assert_eq!(n2.lookup("acct/b").await?, b_id);
    let a = n2.map::<Account>(a_id).await?;
    let b = n2.map::<Account>(b_id).await?;
    let (va, vb) = n2
        .transaction(async |tx| {
            Ok::<_, Error>((tx.read(&a).await?.balance, tx.read(&b).await?.balance))
        })
        .await?;
    assert_eq!((va, vb), (51, 50));
    // And the coordinator too.
    drop((a, b, n2));
    cluster.restart(2).await?;
    let a = cluster.node(2).map::<Account>(a_id).await?;
    assert_eq!(a.start_read().await?.balance, 51);
    drop(a);
    cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_home_makes_peers_drop_stale_copies() -> Result<(), Error> {
    let base = data_dirs("stale");
    let mut cluster = durable_cluster(2, &base).await?;
    let id = cluster.node(0).create(Account { balance: 7 }).await?.id();
    let remote = cluster.node(1).map::<Account>(id).await?;
    assert_eq!(remote.start_read().await?.balance, 7); // node 1 caches a shared copy
    let restarts_before = cluster.node(1).stats().peer_restarts;
    cluster.restart(0).await?;
    // Wait (bounded) until node 1 has noticed the new incarnation of node 0.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cluster.node(1).stats().peer_restarts == restarts_before {
        assert!(
            std::time::Instant::now() < deadline,
            "node 1 never noticed the restart"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Node 0 no longer lists node 1 as a sharer, so this write is a local hit at the home...
    let home = cluster.node(0).map::<Account>(id).await?;
    cluster
        .node(0)
        .transaction(async |tx| {
            tx.write(&home).await?.balance = 8;
            Ok::<_, Error>(())
        })
        .await?;
    // ...and node 1 must not read its old copy.
    assert!(
        remote.try_read().is_none(),
        "a stale copy is still readable"
    );
    assert_eq!(remote.start_read().await?.balance, 8);
    drop((remote, home));
    cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
