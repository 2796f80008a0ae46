//! Placement: `Node::create_at` creates a region homed at another node. The region lives at
//! that home (which serves it from the bytes until its own code maps it), survives a restart
//! of a home with a data dir, and every failure is a typed error, never a hang.

use std::time::Duration;

use crl::{Cluster, Error, NodeId, Region};

#[derive(Region, Debug, Clone, PartialEq)]
struct Seat {
    row: u32,
    taken: bool,
    name: String,
}

#[derive(Region, Debug, Clone)]
struct Other {
    x: u64,
}

fn seat(row: u32) -> Seat {
    Seat {
        row,
        taken: false,
        name: String::new(),
    }
}

fn data_dirs(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("crl-placement-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Node 2 creates a seat homed at node 0; every node, the home included, reads and writes
/// it through the usual protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_created_at_another_home_lives_there() -> Result<(), Error> {
    let cluster = Cluster::local(3).await?;
    let (n0, n1, n2) = (
        cluster.node(0).clone(),
        cluster.node(1).clone(),
        cluster.node(2).clone(),
    );
    let h2 = n2.create_at(NodeId(0), seat(7)).await?;
    assert_eq!(h2.id().home, NodeId(0), "homed where it was asked");
    assert_eq!(*h2.start_read().await?, seat(7));
    {
        let mut w = h2.start_write().await?;
        w.taken = true;
        w.name = "ada".into();
    }
    let h1 = n1.map::<Seat>(h2.id()).await?;
    assert_eq!(h1.start_read().await?.name, "ada");
    // The home's own code maps it last: the bytes it held decode into its type.
    let h0 = n0.map::<Seat>(h2.id()).await?;
    {
        let mut w = h0.start_write().await?;
        assert!(w.taken);
        w.row = 8;
    }
    assert_eq!(h2.start_read().await?.row, 8);
    // Mapping it as another type is refused as for any region.
    assert!(matches!(
        n1.map::<Other>(h2.id()).await,
        Err(Error::WrongType { .. })
    ));
    // Creating "at" oneself is a plain create.
    assert_eq!(n1.create_at(NodeId(1), seat(1)).await?.id().home, NodeId(1));
    drop((h0, h1, h2, n0, n1, n2));
    cluster.shutdown().await;
    Ok(())
}

/// A home with a data dir logs the region before answering: it survives a restart of the
/// home, with the writes committed to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_region_survives_a_restart_of_its_home() -> Result<(), Error> {
    let base = data_dirs("restart");
    let b = base.clone();
    let mut cluster = Cluster::local_with(2, move |c| {
        c.data_dir = Some(b.join(format!("n{}", c.node.0)));
    })
    .await?;
    let n1 = cluster.node(1).clone();
    let untouched = n1.create_at(NodeId(0), seat(1)).await?.id();
    let written = n1.create_at(NodeId(0), seat(2)).await?;
    n1.transaction(async |tx| {
        tx.write(&written).await?.name = "grace".into();
        Ok::<_, Error>(())
    })
    .await?;
    let written = written.id();
    drop(n1);
    cluster.restart(0).await?;
    let n1 = cluster.node(1).clone();
    let n0 = cluster.node(0).clone();
    assert_eq!(
        *n0.map::<Seat>(untouched).await?.start_read().await?,
        seat(1)
    );
    assert_eq!(
        n1.map::<Seat>(written).await?.start_read().await?.name,
        "grace"
    );
    drop((n0, n1));
    cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

/// Failures are typed and bounded: an unknown home, a value over `max_region_len`, and a
/// home that is gone (no answer within the operation timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_cannot_happen_fails_with_a_clear_error() -> Result<(), Error> {
    let cluster = Cluster::local_with(2, |c| {
        c.op_timeout = Duration::from_millis(800);
        c.max_region_len = 1 << 20;
    })
    .await?;
    let n1 = cluster.node(1).clone();
    assert!(matches!(
        n1.create_at(NodeId(9), seat(1)).await,
        Err(Error::UnknownNode(NodeId(9)))
    ));
    let huge = Seat {
        row: 0,
        taken: false,
        name: "x".repeat(2 << 20),
    };
    let refused = n1.create_at(NodeId(0), huge).await;
    assert!(
        matches!(
            &refused,
            Err(Error::CreateRefused {
                home: NodeId(0),
                ..
            })
        ),
        "{refused:?}"
    );
    // The link still serves.
    let h = n1.create_at(NodeId(0), seat(3)).await?;
    assert_eq!(h.start_read().await?.row, 3);
    drop(h);
    cluster.node(0).shutdown().await;
    let started = tokio::time::Instant::now();
    let unanswered = n1.create_at(NodeId(0), seat(4)).await;
    assert!(
        matches!(
            &unanswered,
            Err(Error::CreateUnanswered {
                home: NodeId(0),
                ..
            })
        ),
        "{unanswered:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "bounded wait");
    drop(n1);
    cluster.shutdown().await;
    Ok(())
}

/// A `create_at` whose future is dropped leaves nothing waiting at the requester, and the
/// next create works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_create_at_leaves_nothing_behind() -> Result<(), Error> {
    let cluster = Cluster::local(2).await?;
    let n1 = cluster.node(1).clone();
    for _ in 0..50 {
        let _ =
            tokio::time::timeout(Duration::from_micros(50), n1.create_at(NodeId(0), seat(5))).await;
    }
    assert_eq!(n1.stats().placements_waiting, 0);
    let h = n1.create_at(NodeId(0), seat(6)).await?;
    assert_eq!(h.start_read().await?.row, 6);
    drop((h, n1));
    cluster.shutdown().await;
    Ok(())
}

/// `Tx::create_at`: a region created at another home inside a transaction holds what the
/// transaction wrote to it when it commits, and is gone again when the transaction aborts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_creates_at_another_home_atomically() -> Result<(), Error> {
    let cluster = Cluster::local(3).await?;
    let (n0, n2) = (cluster.node(0).clone(), cluster.node(2).clone());
    let id = n2
        .transaction(async |tx| {
            let h = tx.create_at(NodeId(0), seat(1)).await?;
            assert_eq!(h.id().home, NodeId(0));
            let mut w = tx.write(&h).await?;
            w.taken = true;
            w.name = "grace".into();
            Ok::<_, Error>(h.id())
        })
        .await?;
    let at_home = n0.map::<Seat>(id).await?;
    assert_eq!(
        *at_home.start_read().await?,
        Seat {
            row: 1,
            taken: true,
            name: "grace".into()
        }
    );
    // An aborted transaction leaves nothing behind.
    let created = std::sync::Mutex::new(None);
    let r: Result<(), Error> = n2
        .transaction(async |tx| {
            let h = tx.create_at(NodeId(1), seat(2)).await?;
            *created.lock().unwrap() = Some(h.id());
            tx.write(&h).await?.taken = true;
            Err(Error::ProtocolViolation("the program gives up".into()))
        })
        .await;
    assert!(matches!(r, Err(Error::ProtocolViolation(_))), "{r:?}");
    let gone = created.lock().unwrap().expect("created");
    let n1 = cluster.node(1).clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match n1.map::<Seat>(gone).await {
            Err(Error::Deleted(_)) => break,
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the aborted transaction's region is still there: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    cluster.shutdown().await;
    Ok(())
}
