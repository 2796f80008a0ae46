//! Transactions over a real local cluster: commit, abort, user errors, opposite-order locking.

use crl::{Cluster, Error, Region};

#[derive(Region, Debug, Clone)]
struct Account {
    balance: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_abort_and_user_errors() -> Result<(), Error> {
    let cluster = Cluster::local(2).await?;
    let (a, b) = (cluster.node(0), cluster.node(1));
    let x = a.create(Account { balance: 100 }).await?;
    let y = b.create(Account { balance: 0 }).await?;
    let xb = b.map::<Account>(x.id()).await?;
    // Commit moves 30 from x to y, from node b.
    b.transaction(async |tx| {
        let mut from = tx.write(&xb).await?;
        let mut to = tx.write(&y).await?;
        from.balance -= 30;
        to.balance += 30;
        Ok::<_, Error>(())
    })
    .await?;
    assert_eq!(x.start_read().await?.balance, 70);
    assert_eq!(y.start_read().await?.balance, 30);

    // A user error aborts: both writes are undone.
    #[derive(Debug)]
    enum Refused {
        Insufficient,
        #[allow(dead_code)]
        Crl(Error),
    }
    impl From<Error> for Refused {
        fn from(e: Error) -> Self {
            Refused::Crl(e)
        }
    }
    let r = b
        .transaction(async |tx| {
            let mut from = tx.write(&xb).await?;
            let mut to = tx.write(&y).await?;
            from.balance -= 1000;
            to.balance += 1000;
            if from.balance < 0 {
                return Err(Refused::Insufficient);
            }
            Ok(())
        })
        .await;
    assert!(matches!(r, Err(Refused::Insufficient)), "{r:?}");
    assert_eq!(x.start_read().await?.balance, 70);
    assert_eq!(y.start_read().await?.balance, 30);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_order_transfers_do_not_deadlock_and_conserve_money() -> Result<(), Error> {
    let cluster = Cluster::local(2).await?;
    let (a, b) = (cluster.node(0), cluster.node(1));
    let x = a.create(Account { balance: 1000 }).await?;
    let y = b.create(Account { balance: 1000 }).await?;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let hx = node.map::<Account>(x.id()).await?;
        let hy = node.map::<Account>(y.id()).await?;
        tasks.push(tokio::spawn(async move {
            for k in 0..40 {
                // Even tasks lock x then y, odd ones y then x.
                node.transaction(async |tx| {
                    let (first, second) = if i % 2 == 0 { (&hx, &hy) } else { (&hy, &hx) };
                    let mut f = tx.write(first).await?;
                    tokio::task::yield_now().await;
                    let mut s = tx.write(second).await?;
                    f.balance -= k;
                    s.balance += k;
                    Ok::<_, Error>(())
                })
                .await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await.expect("task")?;
    }
    let total = x.start_read().await?.balance + y.start_read().await?.balance;
    assert_eq!(total, 2000);
    let stats: Vec<_> = cluster.nodes().iter().map(|n| n.stats().tx).collect();
    eprintln!("tx stats: {stats:?}");
    assert_eq!(stats.iter().map(|s| s.committed).sum::<u64>(), 240);
    cluster.shutdown().await;
    Ok(())
}

/// A transaction refuses a handle mapped on another node with a clear error (its locks would
/// be that node's, outside the transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_of_another_node_is_refused() {
    let cluster = crl::Cluster::local(2).await.unwrap();
    let (n0, n1) = (cluster.node(0), cluster.node(1));
    let id = n0.create(Account { balance: 0 }).await.unwrap().id();
    let foreign = n1.map::<Account>(id).await.unwrap();
    let r = n0
        .transaction(async |tx| {
            tx.write(&foreign).await?.balance += 1;
            Ok::<_, crl::Error>(())
        })
        .await;
    match r {
        Err(crl::Error::ForeignHandle {
            handle_node,
            tx_node,
            ..
        }) => {
            assert_eq!((handle_node, tx_node), (n1.id(), n0.id()));
        }
        other => panic!("expected ForeignHandle, got {other:?}"),
    }
    let r = n0
        .transaction(async |tx| Ok::<_, crl::Error>(tx.read(&foreign).await?.balance))
        .await;
    assert!(matches!(r, Err(crl::Error::ForeignHandle { .. })), "{r:?}");
    // Nothing was written.
    assert_eq!(foreign.start_read().await.unwrap().balance, 0);
    cluster.shutdown().await;
}
