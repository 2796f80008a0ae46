//! Hit-path latency: what one local access costs when the copy is already valid here.
//!
//! Measured (criterion group `hit`, all cases in one run so the ratios compare like with like):
//!
//! - `rwlock_read` / `rwlock_write`: an uncontended `parking_lot::RwLock` `read()` / `write()`
//!   plus drop, the baseline of DESIGN.md §7 "Targets".
//! - `home_read_hit` / `home_write_hit`: `RegionCell::try_read` / `try_write` plus drop on a
//!   region this node created (it is the home and holds the only copy).
//! - `remote_shared_read_hit`: `try_read` on a copy node 1 holds Shared (granted by node 0).
//! - `remote_modified_read_hit` / `remote_modified_write_hit`: `try_read` / `try_write` on a
//!   copy node 1 holds Modified.
//! - `node_remote_read_hit_lease`: the user's hit path on a real node, `Handle::try_read` on a
//!   Shared copy of another node's region, with the lease check every access of a remote copy
//!   makes (DESIGN.md §6 rule 2: an atomic load and a read of the coarse monotonic clock,
//!   after acquiring). `node_remote_read_hit_no_lease`: the same on a cluster with
//!   `peer_timeout = None` (no leases), so the difference is the lease check's cost.
//!
//! Each iteration acquires the guard, passes a field through `black_box` (a write also mutates
//! a field), and drops the guard (ending the access; a write bumps the version). The two engines
//! exchange their messages in memory during setup only; the timed loop never touches an engine.
//! Setup asserts that every `try_*` hits, so a miss can never be benchmarked by accident.
//!
//! Run (target: ≤ 50 ns median and ≤ 2.5× `rwlock_read`):
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo bench --bench hit_path
//! CARGO_TARGET_DIR=/work/target-bench taskset -c 0 cargo bench --bench hit_path -- --warm-up-time 1 --measurement-time 3
//! ```

#![allow(
    missing_docs,
    reason = "criterion_group! generates an undocumented pub fn"
)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use crl::Cluster;
use crl::core::engine::{Engine, EngineConfig, Event, OpId, Progress, RegionCell, Start};
use crl::core::region::NodeId;
use parking_lot::RwLock;

/// A small application region, derived from the facade as a user would.
#[derive(crl::Region, Clone, Debug)]
struct Account {
    balance: u64,
    owner: u32,
}

fn account() -> Account {
    Account {
        balance: 100,
        owner: 7,
    }
}

/// Delivers messages between the two engines until neither has anything to send.
fn pump(a: &mut Engine, b: &mut Engine) {
    loop {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            assert_eq!(t.to, b.node(), "setup: unexpected destination");
            b.handle_message(a.node(), t.msg)
                .expect("setup: protocol violation at node 1");
            moved = true;
        }
        while let Some(t) = b.poll_transmit() {
            assert_eq!(t.to, a.node(), "setup: unexpected destination");
            a.handle_message(b.node(), t.msg)
                .expect("setup: protocol violation at node 0");
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

/// Waits (pumping) for the event of `op` at `b`.
fn event_for(a: &mut Engine, b: &mut Engine, op: OpId) -> Event {
    pump(a, b);
    let ev = b
        .poll_event()
        .unwrap_or_else(|| panic!("setup: no event for op {op} after the engines went quiet"));
    assert_eq!(ev.op(), Some(op), "setup: event for another op");
    ev
}

/// Maps a region homed at `a` on `b`, then runs one slow-path access (read or write) at `b`
/// and ends it, leaving `b` with a Shared (read) or Modified (write) copy.
fn remote_copy(
    a: &mut Engine,
    b: &mut Engine,
    home: &RegionCell<Account>,
    op: OpId,
    write: bool,
) -> Arc<RegionCell<Account>> {
    let (cell, progress) = b.map::<Account>(home.id(), op).expect("setup: map failed");
    if progress == Progress::Pending {
        match event_for(a, b, op) {
            Event::Completed { result, .. } => result.expect("setup: map completed with an error"),
            other => panic!("setup: a map ended with {other:?}"),
        }
    }
    let start = if write {
        b.start_write(home.id(), op + 1)
    } else {
        b.start_read(home.id(), op + 1)
    }
    .expect("setup: slow-path access refused");
    let access = match start {
        Start::Granted(access) => access,
        Start::Queued => match event_for(a, b, op + 1) {
            Event::Granted { access, .. } => access,
            other => panic!("setup: access ended with {other:?}"),
        },
    };
    drop(access);
    b.process_drained();
    pump(a, b);
    cell
}

fn must_read(cell: &RegionCell<Account>, what: &str) {
    let g = cell
        .try_read()
        .unwrap_or_else(|| panic!("setup: {what}: try_read missed; refusing to benchmark a miss"));
    assert_eq!(g.owner, 7, "setup: {what}: wrong value");
}

fn must_write(cell: &RegionCell<Account>, what: &str) {
    let g = cell
        .try_write()
        .unwrap_or_else(|| panic!("setup: {what}: try_write missed; refusing to benchmark a miss"));
    assert_eq!(g.owner, 7, "setup: {what}: wrong value");
}

#[inline(always)]
fn read_hit(cell: &RegionCell<Account>) {
    let g = cell.try_read().expect("read hit turned into a miss");
    black_box(g.balance);
}

#[inline(always)]
fn write_hit(cell: &RegionCell<Account>) {
    let mut g = cell.try_write().expect("write hit turned into a miss");
    g.balance = black_box(g.balance).wrapping_add(1);
}

fn hit(c: &mut Criterion) {
    // Setup (not timed).
    let mut a = Engine::new(NodeId(0), EngineConfig::default());
    let mut b = Engine::new(NodeId(1), EngineConfig::default());
    let home = a.create(account());
    let for_shared = a.create(account());
    let for_modified = a.create(account());
    let shared = remote_copy(&mut a, &mut b, &for_shared, 10, false);
    let modified = remote_copy(&mut a, &mut b, &for_modified, 20, true);

    must_read(&home, "home_read_hit");
    must_write(&home, "home_write_hit");
    must_read(&shared, "remote_shared_read_hit");
    assert!(
        shared.try_write().is_none(),
        "setup: a Shared copy admitted a write hit"
    );
    must_read(&modified, "remote_modified_read_hit");
    must_write(&modified, "remote_modified_write_hit");
    assert!(
        for_modified.try_read().is_none(),
        "setup: the home still admits reads beside a remote Modified copy"
    );

    let lock = RwLock::new(account());

    // Real nodes: node 1 holds a Shared copy of a region homed at node 0 (one cluster with
    // leases, the default, and one without).
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let node_copy = |peer_timeout: Option<std::time::Duration>| {
        rt.block_on(async {
            let cluster = Cluster::local_with(2, |c| c.peer_timeout = peer_timeout)
                .await
                .expect("setup: cluster");
            let id = cluster
                .node(0)
                .create(account())
                .await
                .expect("create")
                .id();
            std::mem::forget(cluster.node(0).map::<Account>(id).await.expect("map"));
            let h = cluster.node(1).map::<Account>(id).await.expect("map");
            assert_eq!(h.start_read().await.expect("read").owner, 7);
            (cluster, h)
        })
    };
    let (_with_leases, leased) = node_copy(Some(crl::net::config::DEFAULT_PEER_TIMEOUT));
    let (_without, unleased) = node_copy(None);
    assert!(leased.try_read().is_some(), "setup: the leased copy missed");
    assert!(unleased.try_read().is_some(), "setup: the copy missed");

    let mut g = c.benchmark_group("hit");
    g.bench_function("rwlock_read", |bch| {
        bch.iter(|| {
            let r = lock.read();
            black_box(r.balance);
        })
    });
    g.bench_function("rwlock_write", |bch| {
        bch.iter(|| {
            let mut w = lock.write();
            w.balance = black_box(w.balance).wrapping_add(1);
        })
    });
    g.bench_function("home_read_hit", |bch| bch.iter(|| read_hit(&home)));
    g.bench_function("home_write_hit", |bch| bch.iter(|| write_hit(&home)));
    g.bench_function("remote_shared_read_hit", |bch| {
        bch.iter(|| read_hit(&shared))
    });
    g.bench_function("remote_modified_read_hit", |bch| {
        bch.iter(|| read_hit(&modified))
    });
    g.bench_function("remote_modified_write_hit", |bch| {
        bch.iter(|| write_hit(&modified))
    });
    g.bench_function("node_remote_read_hit_lease", |bch| {
        bch.iter(|| {
            let g = leased.try_read().expect("leased hit turned into a miss");
            black_box(g.balance);
        })
    });
    g.bench_function("node_remote_read_hit_no_lease", |bch| {
        bch.iter(|| {
            let g = unleased.try_read().expect("hit turned into a miss");
            black_box(g.balance);
        })
    });
    g.finish();

    // The write hits really ended (the version moved) and the copies are still hittable.
    assert!(home.version() > 0 && modified.version() > 0);
    must_read(&home, "home after the run");
    must_read(&shared, "shared after the run");
    must_write(&modified, "modified after the run");
    drop((a, b));
}

criterion_group!(benches, hit);
criterion_main!(benches);
