//! The public API on a real in-process cluster (QUIC with mutual TLS on 127.0.0.1): every
//! call and every error, concurrent writers on several nodes, and the blocking facade.

use std::time::{Duration, Instant};

use crl::{Cluster, Error, Handle, NodeId, Region, RegionId};

#[derive(Region, Clone, Debug, PartialEq)]
struct Counter {
    value: u64,
}

#[derive(Region, Clone, Debug, PartialEq)]
struct Flight {
    seats: u32,
    booked: u32,
    passengers: Vec<String>,
}

async fn cluster(n: usize) -> Cluster {
    Cluster::local_with(n, |c| c.op_timeout = Duration::from_millis(1500))
        .await
        .expect("local cluster")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_works_across_nodes() {
    let c = cluster(3).await;
    let (a, b, d) = (c.node(0), c.node(1), c.node(2));
    let f = a
        .create(Flight {
            seats: 2,
            booked: 0,
            passengers: vec![],
        })
        .await
        .unwrap();
    a.bind("flight/UA100", f.id()).await.unwrap();
    a.bind("flight/UA100", f.id()).await.unwrap(); // idempotent
    let id = b.lookup("flight/UA100").await.unwrap();
    assert_eq!(id, f.id());
    let g = b.map::<Flight>(id).await.unwrap();
    {
        let r = g.start_read().await.unwrap();
        assert_eq!(r.seats, 2);
        r.end();
    }
    {
        let mut w = g.start_write().await.unwrap();
        w.booked += 1;
        w.passengers.push("ada".into());
        w.end();
    }
    let h = d.map::<Flight>(id).await.unwrap();
    assert_eq!(
        h.start_read().await.unwrap().passengers,
        vec!["ada".to_string()]
    );
    g.flush().await.unwrap();
    assert_eq!(f.start_read().await.unwrap().booked, 1);
    let stats = b.stats();
    assert_eq!(stats.node, NodeId(1));
    assert!(stats.engine.misses >= 2, "{stats:?}");
    assert!(
        stats
            .peers
            .iter()
            .any(|p| p.messages_sent > 0 && p.bytes_sent > 0)
    );
    assert_eq!(stats.violations, 0);
    d.unbind("flight/UA100").await.unwrap();
    assert!(matches!(
        a.lookup("flight/UA100").await,
        Err(Error::NameNotFound(_))
    ));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed() {
    let c = cluster(2).await;
    let (a, b) = (c.node(0), c.node(1));
    let counter = a.create(Counter { value: 0 }).await.unwrap();
    // Wrong type, at the home and remotely.
    assert!(matches!(
        a.map::<Flight>(counter.id()).await,
        Err(Error::WrongType { .. })
    ));
    assert!(matches!(
        b.map::<Flight>(counter.id()).await,
        Err(Error::WrongType { .. })
    ));
    // No such region; a home outside the cluster.
    let ghost = RegionId::new(NodeId(0), 9_999);
    assert!(matches!(
        b.map::<Counter>(ghost).await,
        Err(Error::NoSuchRegion(_))
    ));
    let alien = RegionId::new(NodeId(42), 1);
    assert!(matches!(
        b.map::<Counter>(alien).await,
        Err(Error::UnknownNode(NodeId(42)))
    ));
    // Names.
    assert!(matches!(
        b.lookup("nothing/here").await,
        Err(Error::NameNotFound(_))
    ));
    a.bind("taken", counter.id()).await.unwrap();
    let other = a.create(Counter { value: 1 }).await.unwrap();
    assert!(matches!(
        b.bind("taken", other.id()).await,
        Err(Error::NameTaken { .. })
    ));
    // Deleted: the next access on any node fails, never hangs.
    let remote = b.map::<Counter>(counter.id()).await.unwrap();
    drop(remote.start_read().await.unwrap());
    b.delete(counter.id()).await.unwrap();
    assert!(matches!(remote.start_read().await, Err(Error::Deleted(_))));
    assert!(matches!(
        counter.start_write().await,
        Err(Error::Deleted(_))
    ));
    assert!(matches!(
        a.map::<Counter>(counter.id()).await,
        Err(Error::Deleted(_))
    ));
    b.delete(counter.id()).await.unwrap(); // idempotent
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_home_gives_a_bounded_error() {
    let c = cluster(3).await;
    let counter = c.node(2).create(Counter { value: 7 }).await.unwrap();
    let remote = c.node(1).map::<Counter>(counter.id()).await.unwrap();
    c.node(2).shutdown().await;
    let started = Instant::now();
    let err = remote.start_write().await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(err, Error::HomeUnreachable { .. } | Error::TimedOut { .. }),
        "{err}"
    );
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    // The stopped node itself refuses work.
    assert!(matches!(counter.start_write().await, Err(Error::ShutDown)));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_every_node_lose_no_update() {
    let c = cluster(3).await;
    let counter = c.node(0).create(Counter { value: 0 }).await.unwrap();
    let mut tasks = Vec::new();
    for node in c.nodes() {
        let h = node.map::<Counter>(counter.id()).await.unwrap();
        for _ in 0..3 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..100 {
                    let mut w = h.start_write().await.expect("write");
                    w.value += 1;
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter.start_read().await.unwrap().value, 900);
    c.shutdown().await;
}

#[test]
fn blocking_facade_from_plain_threads() {
    let c = crl::blocking::Cluster::local(2).unwrap();
    let counter = c.node(0).create(Counter { value: 0 }).unwrap();
    c.node(0).bind("blocking/counter", counter.id()).unwrap();
    let id = c.node(1).lookup("blocking/counter").unwrap();
    std::thread::scope(|s| {
        for n in 0..2 {
            let node = c.node(n).clone();
            s.spawn(move || {
                let h = node.map::<Counter>(id).unwrap();
                for _ in 0..100 {
                    h.start_write().unwrap().value += 1;
                }
            });
        }
    });
    assert_eq!(counter.start_read().unwrap().value, 200);
    assert!(matches!(
        c.node(1).lookup("missing"),
        Err(Error::NameNotFound(_))
    ));
    c.shutdown();
}

/// `NodeStats::hits` counts accesses served by the local copy, on every thread, and nothing
/// else: a miss is not a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_are_counted_on_every_thread() {
    let cluster = cluster(2).await;
    let (n0, n1) = (cluster.node(0), cluster.node(1));
    let h = n0.create(Counter { value: 7 }).await.unwrap();
    let before = n0.stats().hits;
    for _ in 0..50 {
        assert_eq!(h.start_read().await.unwrap().value, 7);
    }
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    assert_eq!(h.try_read().expect("a hit at the home").value, 7);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    h.start_write().await.unwrap().value = 8;
    assert_eq!(n0.stats().hits - before, 50 + 100 + 1);
    // The first read at another node is a miss, not a hit.
    let remote = n1.map::<Counter>(h.id()).await.unwrap();
    let (hits, misses) = (n1.stats().hits, n1.stats().engine.misses);
    assert_eq!(remote.start_read().await.unwrap().value, 8);
    assert_eq!(n1.stats().hits, hits, "a miss was counted as a hit");
    assert!(n1.stats().engine.misses > misses);
    cluster.shutdown().await;
}

/// Every clone of a handle is a mapping of its own: the copy stays mapped (and cached) while
/// any clone lives, wherever the clones went, and is unmapped (here: evicted at once, with no
/// room kept for unmapped copies) when the last one is dropped.
#[tokio::test]
async fn a_region_stays_mapped_while_any_clone_of_its_handle_lives() -> Result<(), Error> {
    let cluster = Cluster::local_with(2, |c| c.unmapped_capacity = 0).await?;
    let (home, cache) = (cluster.node(0), cluster.node(1));
    let id = home.create(Counter { value: 7 }).await?.id();
    let h = cache.map::<Counter>(id).await?;
    assert_eq!(h.start_read().await?.value, 7);
    let clones: Vec<_> = (0..3).map(|_| h.clone()).collect();
    drop(h);
    let moved = clones[0].clone();
    let read = tokio::spawn(async move { moved.try_read().map(|g| g.value) })
        .await
        .expect("task");
    assert_eq!(read, Some(7), "a clone moved to a task still hits");
    for c in &clones[..2] {
        assert_eq!(c.try_read().map(|g| g.value), Some(7));
    }
    let mut clones = clones;
    let last = clones.pop().expect("a clone");
    drop(clones);
    // Every clone but one dropped: the copy stays.
    assert_eq!(cache.stats().engine.evictions, 0);
    assert_eq!(last.try_read().map(|g| g.value), Some(7));
    drop(last);
    assert_eq!(
        cache.stats().engine.evictions,
        1,
        "the last clone dropped unmaps the region"
    );
    cluster.shutdown().await;
    Ok(())
}

/// Handles count themselves in the region's cell and the node maps the region once for all
/// that live at the same time (issue 10: handles without an allocation). Many tasks on two
/// threads map, clone, read and drop handles of one region at once: no access may find the
/// region unmapped under a live handle (a mapping given back twice), and once every handle is
/// gone the region must be unmapped (not one mapping left behind): with an unmapped cache of
/// 0 it is then evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_mapped_cloned_and_dropped_at_once_leave_one_mapping() -> Result<(), Error> {
    let cluster = Cluster::local_with(2, |c| c.unmapped_capacity = 0).await?;
    let (home, cache) = (cluster.node(0), cluster.node(1));
    for (n, node) in [home, cache].into_iter().enumerate() {
        let id = home.create(Counter { value: 7 }).await?.id();
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let node = node.clone();
                tokio::spawn(async move {
                    let mut kept: Vec<Handle<Counter>> = Vec::new();
                    for i in 0..300u64 {
                        let h = node.map::<Counter>(id).await?;
                        let c = h.clone();
                        if (i + t) % 3 == 0 {
                            drop(h);
                        } else {
                            kept.push(h);
                        }
                        assert_eq!(c.start_read().await?.value, 7);
                        if (i * 7 + t) % 5 == 0 {
                            kept.clear();
                        }
                        if i % 16 == 0 {
                            tokio::task::yield_now().await;
                        }
                        if let Some(k) = kept.last() {
                            assert_eq!(k.start_read().await?.value, 7);
                        }
                    }
                    Ok::<_, Error>(())
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task")?;
        }
        if n == 1 {
            // Every handle is gone: the copy was unmapped and, with room for none, evicted.
            let evictions = cache.stats().engine.evictions;
            assert!(evictions > 0, "the copy was never unmapped: {evictions}");
            let h = cache.map::<Counter>(id).await?;
            assert_eq!(h.start_read().await?.value, 7);
            drop(h);
            assert_eq!(
                cache.stats().engine.evictions,
                evictions + 1,
                "a mapping was left behind: the last handle did not unmap"
            );
        }
    }
    cluster.shutdown().await;
    Ok(())
}
