//! The protocol's named races, each scripted message by message against real engines:
//! a recall crossing a flush, an upgrade crossing an invalidation, requests queued behind a
//! busy region, the home waiting on a remote owner, delete racing a map, and more.

use std::sync::Arc;

use crl::Region;
use crl::core::engine::{
    Access, CacheState, DirState, Engine, EngineConfig, EntrySnapshot, OpError, OpId,
    PRIORITY_NONE, Progress, RegionCell, Start,
};
use crl::core::sim::Network;
use crl::core::wire::{Grant, Message, Recall, Refusal};
use crl::{NodeId, RegionId};

#[derive(Region, Clone, Debug, PartialEq)]
struct Counter {
    value: u64,
}

#[derive(Region, Clone, Debug, PartialEq)]
struct Other {
    name: String,
}

/// Test helpers on top of the simulator's hand-driven network.
trait NetExt {
    fn map(&mut self, node: usize, id: RegionId) -> Arc<RegionCell<Counter>>;
    fn access(&mut self, node: usize, id: RegionId, op: OpId, write: bool) -> Access;
    fn cache_state(&self, node: usize, id: RegionId) -> CacheState;
    fn dir(&self, id: RegionId) -> DirState;
}

impl NetExt for Network {
    fn map(&mut self, node: usize, id: RegionId) -> Arc<RegionCell<Counter>> {
        let (cell, progress) = self
            .engine(node)
            .map::<Counter>(id, 9_000 + node as u64)
            .unwrap();
        self.pump(node);
        if progress == Progress::Pending {
            self.settle();
            assert_eq!(self.completed(node, 9_000 + node as u64), Some(Ok(())));
        }
        cell
    }

    /// A read or write that may miss: returns the access once granted (settling the net).
    fn access(&mut self, node: usize, id: RegionId, op: OpId, write: bool) -> Access {
        let started = if write {
            self.engine(node).start_write(id, op)
        } else {
            self.engine(node).start_read(id, op)
        };
        self.pump(node);
        match started.unwrap() {
            Start::Granted(a) => a,
            Start::Queued => {
                self.settle();
                self.granted(node, op).expect("granted after settling")
            }
        }
    }

    fn cache_state(&self, node: usize, id: RegionId) -> CacheState {
        match self.inspect(node, id) {
            Some(EntrySnapshot::Cache { state, .. }) => state,
            other => panic!("no cache entry: {other:?}"),
        }
    }

    fn dir(&self, id: RegionId) -> DirState {
        match self.inspect(id.home.0 as usize, id) {
            Some(EntrySnapshot::Home { dir, .. }) => dir,
            other => panic!("no home entry: {other:?}"),
        }
    }
}

fn set(a: &mut Access, v: u64) {
    a.with_value_mut(|c: &mut Counter| c.value = v);
}

fn get(a: &Access) -> u64 {
    a.with_value(|c: &Counter| c.value)
}

/// Makes `nodes` hold shared copies of a fresh region homed at node 0.
fn shared_by(net: &mut Network, nodes: &[usize]) -> (RegionId, Vec<Arc<RegionCell<Counter>>>) {
    let id = net.engine(0).create(Counter { value: 1 }).id();
    let mut cells = Vec::new();
    for &n in nodes {
        let cell = net.map(n, id);
        drop(net.access(n, id, 100 + n as u64, false));
        assert_eq!(net.cache_state(n, id), CacheState::Shared);
        cells.push(cell);
    }
    (id, cells)
}

#[test]
fn hits_send_nothing_and_readers_share_one_copy() {
    let mut net = Network::new(2, EngineConfig::default());
    let (id, cells) = shared_by(&mut net, &[1]);
    let sent = net.engine(1).stats().messages_sent;
    let r1 = cells[0].try_read().expect("read hit on a shared copy");
    let r2 = cells[0]
        .try_read()
        .expect("a second reader shares the copy");
    assert_eq!((r1.value, r2.value), (1, 1));
    assert!(
        cells[0].try_write().is_none(),
        "a write on a shared copy must miss"
    );
    drop((r1, r2));
    assert_eq!(
        net.engine(1).stats().messages_sent,
        sent,
        "hits sent messages"
    );
    assert_eq!(net.cache_state(1, id), CacheState::Shared);
}

#[test]
fn recall_crossing_a_flush() {
    // n1 shares the region; n2 asks to write, so the home recalls n1's copy while n1 is
    // flushing it. The flush reaches the home first (same link), the recall finds n1 empty.
    let mut net = Network::new(3, EngineConfig::default());
    let (id, _cells) = shared_by(&mut net, &[1]);
    net.map(2, id);
    assert!(matches!(
        net.engine(2).start_write(id, 1).unwrap(),
        Start::Queued
    ));
    net.pump(2);
    net.deliver(2, 0); // GetExclusive: the home recalls n1
    assert_eq!(
        net.peek(0, 1),
        Some(&Message::Recall {
            region: id,
            kind: Recall::Invalidate,
            priority: PRIORITY_NONE,
        })
    );
    assert_eq!(net.engine(1).flush(id, 2).unwrap(), Progress::Pending);
    net.pump(1);
    assert_eq!(
        net.peek(1, 0),
        Some(&Message::Flush {
            region: id,
            image: None
        })
    );
    net.deliver(0, 1); // the recall reaches n1 after its flush: an empty ack
    assert_eq!(
        net.peek(1, 0),
        Some(&Message::Flush {
            region: id,
            image: None
        })
    );
    assert_eq!(net.in_flight(1, 0), 2);
    net.settle();
    assert_eq!(net.completed(1, 2), Some(Ok(())), "the flush completes");
    let mut w = net.granted(2, 1).expect("the write is granted");
    assert_eq!(get(&w), 1);
    set(&mut w, 2);
    drop(w);
    assert_eq!(net.dir(id), DirState::Exclusive(NodeId(2)));
    assert_eq!(net.cache_state(1, id), CacheState::Invalid);
}

#[test]
fn modified_flush_crossing_a_downgrade() {
    // n1 holds the region modified and flushes it while the home, serving n2's read, asks n1
    // to downgrade: the home takes the data from the flush and the empty ack completes it.
    let mut net = Network::new(3, EngineConfig::default());
    let id = net.engine(0).create(Counter { value: 1 }).id();
    net.map(1, id);
    let mut w = net.access(1, id, 1, true);
    set(&mut w, 42);
    drop(w);
    net.map(2, id);
    assert!(matches!(
        net.engine(2).start_read(id, 2).unwrap(),
        Start::Queued
    ));
    net.pump(2);
    net.deliver(2, 0);
    assert_eq!(
        net.peek(0, 1),
        Some(&Message::Recall {
            region: id,
            kind: Recall::Downgrade,
            priority: PRIORITY_NONE,
        })
    );
    assert_eq!(net.engine(1).flush(id, 3).unwrap(), Progress::Pending);
    net.pump(1);
    assert!(matches!(
        net.peek(1, 0),
        Some(Message::Flush { image: Some(_), .. })
    ));
    net.settle();
    assert_eq!(net.completed(1, 3), Some(Ok(())));
    let r = net.granted(2, 2).expect("read granted");
    assert_eq!(get(&r), 42, "the flushed value reached the reader");
    assert_eq!(net.dir(id), DirState::Shared([NodeId(2)].into()));
}

#[test]
fn upgrade_crossing_an_invalidation_becomes_a_full_request() {
    // n1 and n2 share the region and both start writing. n2's upgrade wins; the home recalls
    // n1's copy while n1's own upgrade is in flight, so n1 must then receive full data.
    let mut net = Network::new(3, EngineConfig::default());
    let (id, _cells) = shared_by(&mut net, &[1, 2]);
    assert!(matches!(
        net.engine(1).start_write(id, 1).unwrap(),
        Start::Queued
    ));
    net.pump(1);
    assert!(matches!(
        net.engine(2).start_write(id, 2).unwrap(),
        Start::Queued
    ));
    net.pump(2);
    net.deliver(2, 0); // n2's upgrade first: recall n1
    net.deliver(1, 0); // n1's upgrade queues behind it
    net.deliver(0, 1); // the recall reaches n1 while its upgrade is pending
    assert_eq!(net.cache_state(1, id), CacheState::Invalid);
    net.deliver(1, 0); // ack: n2 gets a bare upgrade (it still has its copy)
    assert_eq!(
        net.peek(0, 2),
        Some(&Message::Data {
            region: id,
            grant: Grant::Exclusive,
            image: None
        })
    );
    net.deliver(0, 2);
    let mut w2 = net.granted(2, 2).expect("n2 writes");
    set(&mut w2, 7);
    drop(w2);
    net.deliver(0, 2); // the home now recalls n2 for n1's request
    net.deliver(2, 0); // with n2's data
    match net.peek(0, 1) {
        Some(Message::Data {
            grant: Grant::Exclusive,
            image: Some(image),
            ..
        }) => {
            assert_eq!(Counter::decode_region(&image.bytes).unwrap().value, 7)
        }
        other => panic!("n1 must get full data, not a bare upgrade: {other:?}"),
    }
    net.settle();
    let w1 = net.granted(1, 1).expect("n1 writes");
    assert_eq!(get(&w1), 7);
}

#[test]
fn requests_queue_behind_a_busy_region_in_fifo_order() {
    let mut net = Network::new(4, EngineConfig::default());
    let id = net.engine(0).create(Counter { value: 0 }).id();
    for n in 1..4 {
        net.map(n, id);
    }
    let w = net.access(1, id, 1, true); // n1 owns it, write in progress: the home will wait
    for (n, op) in [(2usize, 2u64), (3, 3)] {
        assert!(matches!(
            net.engine(n).start_write(id, op).unwrap(),
            Start::Queued
        ));
        net.pump(n);
    }
    net.deliver(2, 0); // n2 first: the home recalls n1, which defers (write in progress)
    net.deliver(3, 0); // n3 queues
    assert!(matches!(
        net.engine(0).start_read(id, 4).unwrap(),
        Start::Queued
    )); // the home too
    net.pump(0);
    net.deliver(0, 1);
    assert_eq!(
        net.in_flight(1, 0),
        0,
        "the recall must wait for n1's write"
    );
    let mut w = w;
    set(&mut w, 1);
    drop(w);
    net.engine(1).process_drained();
    net.pump(1);
    assert_eq!(net.in_flight(1, 0), 1, "write ended: the ack goes out");
    let mut order = Vec::new();
    for _ in 0..50 {
        net.settle();
        for (n, op) in [(2usize, 2u64), (3, 3), (0, 4)] {
            if let Some(mut a) = net.granted(n, op) {
                order.push(n);
                if n != 0 {
                    let v = get(&a);
                    set(&mut a, v + 1);
                }
                drop(a);
                net.engine(n).process_drained();
                net.pump(n);
            }
        }
        if order.len() == 3 {
            break;
        }
    }
    assert_eq!(order, vec![2, 3, 0], "served in arrival order");
    let r = net.access(0, id, 5, false);
    assert_eq!(get(&r), 3);
}

#[test]
fn home_waits_on_a_remote_owner() {
    let mut net = Network::new(2, EngineConfig::default());
    let home_cell = net.engine(0).create(Counter { value: 0 });
    let id = home_cell.id();
    net.map(1, id);
    let mut w = net.access(1, id, 1, true);
    set(&mut w, 5);
    assert!(
        home_cell.try_read().is_none(),
        "the home's copy is stale: no hit"
    );
    assert!(matches!(
        net.engine(0).start_read(id, 2).unwrap(),
        Start::Queued
    ));
    net.pump(0);
    net.settle();
    assert!(
        net.granted(0, 2).is_none(),
        "the home must wait for the remote write to end"
    );
    drop(w);
    net.engine(1).process_drained();
    net.pump(1);
    net.settle();
    let r = net
        .granted(0, 2)
        .expect("home read granted after the owner's write");
    assert_eq!(get(&r), 5);
    drop(r);
    assert_eq!(
        net.cache_state(1, id),
        CacheState::Shared,
        "owner downgraded, kept a copy"
    );
    assert_eq!(home_cell.try_read().expect("home hit").value, 5);
}

#[test]
fn delete_racing_a_map() {
    let mut net = Network::new(2, EngineConfig::default());
    let id = net.engine(0).create(Counter { value: 0 }).id();
    let (_cell, progress) = net.engine(1).map::<Counter>(id, 1).unwrap();
    assert_eq!(progress, Progress::Pending);
    net.pump(1);
    assert_eq!(
        net.engine(0).delete(id, 2).unwrap(),
        Progress::Done,
        "no copies: immediate"
    );
    net.settle();
    assert_eq!(net.completed(1, 1), Some(Err(OpError::Deleted(id))));
    assert!(matches!(
        net.engine(1).map::<Counter>(id, 3),
        Ok((_, Progress::Pending))
    ));
    net.pump(1);
    net.settle();
    assert_eq!(net.completed(1, 3), Some(Err(OpError::Deleted(id))));
}

#[test]
fn delete_while_mapped_elsewhere_fails_the_next_access_and_never_hangs() {
    let mut net = Network::new(3, EngineConfig::default());
    let (id, cells) = shared_by(&mut net, &[1]);
    net.map(2, id); // mapped at n2 but holding no copy
    let r = cells[0].try_read().expect("n1 is reading");
    assert_eq!(net.engine(0).delete(id, 1).unwrap(), Progress::Pending);
    net.pump(0);
    net.settle();
    assert!(
        net.completed(0, 1).is_none(),
        "delete waits for n1's read to end"
    );
    drop(r);
    net.engine(1).process_drained();
    net.pump(1);
    net.settle();
    assert_eq!(net.completed(0, 1), Some(Ok(())));
    assert!(cells[0].try_read().is_none());
    assert_eq!(
        net.engine(1).start_read(id, 2).unwrap_err(),
        OpError::Deleted(id)
    );
    // n2 learns at its next request.
    assert!(matches!(
        net.engine(2).start_write(id, 3).unwrap(),
        Start::Queued
    ));
    net.pump(2);
    net.settle();
    assert_eq!(net.completed(2, 3), Some(Err(OpError::Deleted(id))));
    assert_eq!(
        net.engine(2).start_read(id, 4).unwrap_err(),
        OpError::Deleted(id)
    );
    // The home too; deleting again is idempotent.
    assert_eq!(
        net.engine(0).start_read(id, 5).unwrap_err(),
        OpError::Deleted(id)
    );
    assert_eq!(net.engine(0).delete(id, 6).unwrap(), Progress::Done);
}

#[test]
fn mapping_as_the_wrong_type_is_an_error() {
    let mut net = Network::new(2, EngineConfig::default());
    let id = net.engine(0).create(Counter { value: 0 }).id();
    assert!(matches!(
        net.engine(0).map::<Other>(id, 1),
        Err(OpError::WrongType {
            expected: "Other",
            ..
        })
    ));
    let (_c, progress) = net.engine(1).map::<Other>(id, 2).unwrap();
    assert_eq!(progress, Progress::Pending);
    net.pump(1);
    net.settle();
    match net.completed(1, 2) {
        Some(Err(OpError::WrongType { region, actual, .. })) => {
            assert_eq!(region, id);
            assert_eq!(actual, Counter::FINGERPRINT);
        }
        other => panic!("expected a wrong-type error, got {other:?}"),
    }
    // A region that never existed.
    let ghost = RegionId::new(NodeId(0), 999);
    net.engine(1).map::<Counter>(ghost, 3).unwrap();
    net.pump(1);
    net.settle();
    assert_eq!(net.completed(1, 3), Some(Err(OpError::NoSuchRegion(ghost))));
}

#[test]
fn protocol_violations_are_reported_not_applied() {
    let mut net = Network::new(3, EngineConfig::default());
    let (id, cells) = shared_by(&mut net, &[1]);
    // Unasked-for data, and data from a node that is not the home.
    let bogus = Message::Data {
        region: id,
        grant: Grant::Exclusive,
        image: None,
    };
    assert!(
        net.engine(1)
            .handle_message(NodeId(0), bogus.clone())
            .is_err()
    );
    assert!(net.engine(1).handle_message(NodeId(2), bogus).is_err());
    // A recall ack nobody asked for, a refusal sent to a home.
    let ack = Message::RecallAck {
        region: id,
        image: None,
    };
    assert!(net.engine(0).handle_message(NodeId(2), ack).is_err());
    let refusal = Message::Refused {
        region: id,
        reason: Refusal::Deleted,
    };
    assert!(net.engine(0).handle_message(NodeId(1), refusal).is_err());
    // Nothing changed.
    assert_eq!(net.cache_state(1, id), CacheState::Shared);
    assert_eq!(cells[0].try_read().expect("still a hit").value, 1);
    assert_eq!(net.dir(id), DirState::Shared([NodeId(1)].into()));
}

#[test]
fn unmapped_regions_stay_cached_until_evicted_then_flush_home() {
    let mut net = Network::new(2, EngineConfig::default());
    net.replace_engine(
        1,
        Engine::new(
            NodeId(1),
            EngineConfig {
                unmapped_capacity: 1,
                ..EngineConfig::default()
            },
        ),
    );
    let a = net.engine(0).create(Counter { value: 0 }).id();
    let b = net.engine(0).create(Counter { value: 0 }).id();
    for (id, v, op) in [(a, 10, 1), (b, 20, 2)] {
        net.map(1, id);
        let mut w = net.access(1, id, op, true);
        set(&mut w, v);
        drop(w);
    }
    net.engine(1).unmap(a).unwrap();
    net.pump(1);
    assert_eq!(net.in_flight(1, 0), 0, "within capacity: still cached");
    let sent = net.engine(1).stats().messages_sent;
    let (cell, progress) = net.engine(1).map::<Counter>(a, 3).unwrap();
    assert_eq!(
        progress,
        Progress::Done,
        "remap of a cached region is local"
    );
    assert_eq!(net.engine(1).stats().messages_sent, sent);
    assert_eq!(cell.try_read().expect("still modified here").value, 10);
    drop(cell);
    net.engine(1).unmap(a).unwrap();
    assert!(
        net.engine(1).unmap(a).is_err(),
        "unmapping more often than mapped is an error"
    );
    net.engine(1).unmap(b).unwrap(); // over capacity: a (least recent) is flushed home
    net.pump(1);
    assert!(
        matches!(net.peek(1, 0), Some(Message::Flush { region, image: Some(_) }) if *region == a)
    );
    net.settle();
    assert_eq!(net.dir(a), DirState::Unowned);
    assert_eq!(net.dir(b), DirState::Exclusive(NodeId(1)));
    let r = net.access(0, a, 4, false);
    assert_eq!(get(&r), 10, "the evicted copy's data reached the home");
}

/// Starts an access with a transaction priority; returns the grant if immediate.
fn start_with(
    net: &mut Network,
    node: usize,
    id: RegionId,
    op: OpId,
    write: bool,
    priority: u64,
) -> Option<Access> {
    let started = if write {
        net.engine(node).start_write_with(id, op, priority)
    } else {
        net.engine(node).start_read_with(id, op, priority)
    };
    net.pump(node);
    match started.unwrap() {
        Start::Granted(a) => Some(a),
        Start::Queued => None,
    }
}

#[test]
fn a_recall_held_up_by_a_local_access_is_wanted_at_the_holder_and_contend_lowers_it() {
    // n1 reads (a transaction with priority 10, in progress); n2's write (priority 20) makes
    // the home recall n1's copy: n1 defers it and reports Wanted(20). An older write queued
    // behind it at n2 (priority 5) sends a Contend that the home forwards: Wanted(5) at n1.
    let mut net = Network::new(3, EngineConfig::default());
    let (id, _cells) = shared_by(&mut net, &[1]);
    net.map(2, id);
    let held = start_with(&mut net, 1, id, 1, false, 10).expect("a read hit on a shared copy");
    assert!(start_with(&mut net, 2, id, 2, true, 20).is_none());
    net.settle();
    assert_eq!(net.take_wanted(1), vec![(id, 20)]);
    assert!(start_with(&mut net, 2, id, 3, true, 5).is_none());
    assert_eq!(
        net.peek(2, 0),
        Some(&Message::Contend {
            region: id,
            priority: 5
        })
    );
    net.settle();
    assert_eq!(net.take_wanted(1), vec![(id, 5)]);
    // A younger request queued at the home changes nothing; an older one (priority 2) is
    // forwarded too (it waits behind the request being served).
    let n0_sent = net.engine(0).stats().messages_sent;
    assert!(start_with(&mut net, 0, id, 4, true, 30).is_none());
    assert_eq!(net.engine(0).stats().messages_sent, n0_sent);
    assert!(start_with(&mut net, 0, id, 5, false, 2).is_none());
    net.settle();
    assert_eq!(net.take_wanted(1), vec![(id, 2)]);
    // Wounding the reader (ending its access) lets everything proceed.
    end(&mut net, 1, held);
    grant_all(&mut net, &[(2, 2), (2, 3), (0, 4), (0, 5)]);
}

/// Ends an access at `node` and lets the engine act on it.
fn end(net: &mut Network, node: usize, access: Access) {
    drop(access);
    net.engine(node).process_drained();
    net.pump(node);
}

/// Settles the network, ending each of `ops` (node, op) as soon as it is granted, until all
/// were granted.
fn grant_all(net: &mut Network, ops: &[(usize, OpId)]) {
    let mut left = ops.to_vec();
    for _ in 0..100 {
        net.settle();
        let Some(i) = left
            .iter()
            .position(|&(node, op)| net.has_event_for(node, op))
        else {
            continue;
        };
        let (node, op) = left.remove(i);
        let access = net.granted(node, op).expect("a grant");
        end(net, node, access);
        if left.is_empty() {
            return;
        }
    }
    panic!("never granted: {left:?}");
}

#[test]
fn the_home_reports_its_own_accesses_holding_up_a_request() {
    let mut net = Network::new(2, EngineConfig::default());
    let id = net.engine(0).create(Counter { value: 1 }).id();
    net.map(1, id);
    let held = start_with(&mut net, 0, id, 1, false, 9).expect("a read hit at the home");
    // Plain requests (no transaction) are never reported.
    assert!(start_with(&mut net, 1, id, 2, true, PRIORITY_NONE).is_none());
    net.settle();
    assert!(net.take_wanted(0).is_empty());
    // An older transaction joining the wait through a Contend is.
    assert!(start_with(&mut net, 1, id, 3, false, 4).is_none());
    net.settle();
    assert_eq!(net.take_wanted(0), vec![(id, 4)]);
    end(&mut net, 0, held);
    grant_all(&mut net, &[(1, 2), (1, 3)]);
}

#[test]
fn a_local_access_held_up_by_another_local_access_is_wanted() {
    let mut net = Network::new(2, EngineConfig::default());
    let id = net.engine(0).create(Counter { value: 1 }).id();
    net.map(1, id);
    let w = net.access(1, id, 1, true);
    drop(w);
    let r = start_with(&mut net, 1, id, 2, false, 50).expect("a read hit on a modified copy");
    assert!(start_with(&mut net, 1, id, 3, true, 7).is_none());
    assert_eq!(net.take_wanted(1), vec![(id, 7)]);
    drop(r);
    net.engine(1).process_drained();
    net.pump(1);
    drop(net.granted(1, 3).expect("granted once the read ends"));
}

/// Found by `tx_serializable`'s list-append (a 5 s stall broken only by the operation
/// timeout): the priority last reported at an entry outlived the wait it was reported for when
/// that wait ended by a cancel, so a later, younger wait on the same copy was never reported
/// and the younger local holder it waited on was never wounded (a deadlock with the waiter's
/// transaction, until the timeout).
#[test]
fn a_wait_after_a_cancelled_one_is_wanted_again() {
    let mut net = Network::new(2, EngineConfig::default());
    let id = net.engine(0).create(Counter { value: 1 }).id();
    let cell = net.map(1, id);
    drop(net.access(1, id, 1, true));
    // An old reader holds n1's modified copy; a younger write queued behind it is reported
    // (and would not wound the older reader), then cancelled (its transaction was wounded
    // elsewhere), and the reader ends.
    let old = start_with(&mut net, 1, id, 2, false, 3).expect("a read hit on a modified copy");
    assert!(start_with(&mut net, 1, id, 3, true, 5).is_none());
    assert_eq!(net.take_wanted(1), vec![(id, 5)]);
    assert!(net.engine(1).cancel(id, 3));
    end(&mut net, 1, old);
    // A young reader hits; the home's write (priority 10) recalls the copy: that wait is new,
    // and the young reader holds it up.
    // (A transaction's hit takes the cell without the engine, as `Tx::read` does.)
    let young = cell.try_read().expect("a read hit on the cell");
    assert!(start_with(&mut net, 0, id, 5, true, 10).is_none());
    net.settle();
    assert_eq!(
        net.take_wanted(1),
        vec![(id, 10)],
        "the recall held up by a younger reader is not reported"
    );
    drop(young);
    net.engine(1).process_drained();
    net.pump(1);
    grant_all(&mut net, &[(0, 5)]);
}

#[test]
fn a_cancelled_access_leaves_no_event_and_its_grant_stays_cached() {
    let mut net = Network::new(2, EngineConfig::default());
    let id = net.engine(0).create(Counter { value: 1 }).id();
    let cell = net.map(1, id);
    assert!(start_with(&mut net, 1, id, 1, true, 3).is_none());
    assert!(net.engine(1).cancel(id, 1));
    assert!(
        !net.engine(1).cancel(id, 1),
        "a second cancel finds nothing"
    );
    assert!(!net.engine(1).cancel(id, 777), "an unknown op is a no-op");
    net.settle();
    assert!(!net.has_event_for(1, 1));
    assert_eq!(net.cache_state(1, id), CacheState::Modified);
    let mut w = cell.try_write().expect("the grant was kept: a write hit");
    w.value = 5;
    drop(w);
    // A queued local request at the home, cancelled while another is served.
    let mut hold = net.access(1, id, 2, true);
    set(&mut hold, 6);
    drop(hold);
    let r = cell.try_read().expect("read hit");
    assert!(start_with(&mut net, 0, id, 3, true, PRIORITY_NONE).is_none()); // served: recall n1
    assert!(start_with(&mut net, 0, id, 4, false, PRIORITY_NONE).is_none()); // queued
    assert!(net.engine(0).cancel(id, 4));
    assert!(net.engine(0).cancel(id, 3), "the request being served");
    net.settle();
    drop(r);
    net.engine(1).process_drained();
    net.pump(1);
    net.settle();
    assert!(!net.has_event_for(0, 3) && !net.has_event_for(0, 4));
    assert_eq!(
        net.dir(id),
        DirState::Unowned,
        "the recall completed anyway"
    );
    assert_eq!(get(&net.access(0, id, 5, false)), 6);
}

#[test]
fn a_cancelled_map_is_undone() {
    let mut net = Network::new(2, EngineConfig::default());
    let id = net.engine(0).create(Counter { value: 1 }).id();
    let (_cell, progress) = net.engine(1).map::<Counter>(id, 1).unwrap();
    assert_eq!(progress, Progress::Pending);
    net.pump(1);
    assert!(net.engine(1).cancel(id, 1));
    net.settle();
    assert!(!net.has_event_for(1, 1));
    assert_eq!(
        net.engine(1).start_read(id, 2).unwrap_err(),
        OpError::NotMapped(id)
    );
    assert!(
        net.engine(1).unmap(id).is_err(),
        "the mapping was undone: nothing to unmap"
    );
    // The home's answer arrived: mapping again is local.
    let (_cell, progress) = net.engine(1).map::<Counter>(id, 3).unwrap();
    assert_eq!(progress, Progress::Done);
    assert_eq!(get(&net.access(1, id, 4, false)), 1);
    // A map cancelled before the home refuses it.
    let ghost = RegionId::new(NodeId(0), 999);
    net.engine(1).map::<Counter>(ghost, 5).unwrap();
    net.pump(1);
    assert!(net.engine(1).cancel(ghost, 5));
    net.settle();
    assert!(!net.has_event_for(1, 5));
    assert!(
        net.inspect(1, ghost).is_none(),
        "the refused entry is dropped"
    );
}

#[test]
fn a_restarted_owner_loses_its_copy_and_the_home_serves_the_installed_image() {
    let mut net = Network::new(3, EngineConfig::default());
    let id = net.engine(0).create(Counter { value: 1 }).id();
    net.map(1, id);
    net.map(2, id);
    let mut w = net.access(1, id, 1, true);
    set(&mut w, 41);
    drop(w);
    // A commit installs 41 at the home while n1 keeps its exclusive copy.
    assert!(net.engine(0).holds_exclusive(id, NodeId(1)));
    assert!(!net.engine(0).holds_exclusive(id, NodeId(0)));
    let bytes = Counter { value: 41 }.encode_region().unwrap();
    net.engine(0).install_master(id, &bytes).unwrap();
    assert!(matches!(
        net.engine(0).install_master(id, b"garbage"),
        Err(OpError::Codec { .. })
    ));
    // n1 writes on (not committed); n2's read makes the home recall n1, which then restarts.
    let mut w = net.access(1, id, 2, true);
    set(&mut w, 42);
    drop(w);
    assert!(start_with(&mut net, 2, id, 3, false, PRIORITY_NONE).is_none());
    net.deliver(2, 0);
    assert!(matches!(net.peek(0, 1), Some(Message::Recall { .. })));
    net.restart(1, Engine::new(NodeId(1), EngineConfig::default()));
    net.settle();
    let r = net
        .granted(2, 3)
        .expect("n2's read is served from the installed image");
    assert_eq!(get(&r), 41);
    assert_eq!(net.take_lost(0), vec![id]);
    assert_eq!(net.engine(0).stats().lost_copies, 1);
    assert_eq!(net.dir(id), DirState::Shared([NodeId(2)].into()));
    drop(r);
    // The new incarnation of n1 starts afresh.
    net.map(1, id);
    assert_eq!(get(&net.access(1, id, 4, false)), 41);
}

#[test]
fn a_restarted_sharer_is_forgotten_and_its_requests_dropped() {
    let mut net = Network::new(3, EngineConfig::default());
    let (id, _cells) = shared_by(&mut net, &[1, 2]);
    let r = net.access(2, id, 1, false);
    // n1 asks to write (the home recalls n2, held up by its read), then restarts.
    assert!(start_with(&mut net, 1, id, 2, true, PRIORITY_NONE).is_none());
    net.settle();
    net.restart(1, Engine::new(NodeId(1), EngineConfig::default()));
    drop(r);
    net.engine(2).process_drained();
    net.pump(2);
    net.settle();
    assert!(net.take_lost(0).is_empty(), "a shared copy is no loss");
    assert_eq!(net.dir(id), DirState::Unowned);
    assert_eq!(get(&net.access(0, id, 3, false)), 1);
}

#[test]
fn a_restarted_home_drops_cached_copies_and_fails_waiting_operations() {
    let mut net = Network::new(3, EngineConfig::default());
    let (id, cells) = shared_by(&mut net, &[1, 2]);
    let other = net.engine(2).create(Counter { value: 9 }).id();
    net.map(1, other);
    drop(net.access(1, other, 1, false));
    // n1 reads (in progress) and queues a write; n2 queues a write too.
    let r = net.access(1, id, 2, false);
    assert!(start_with(&mut net, 1, id, 3, true, PRIORITY_NONE).is_none());
    assert!(start_with(&mut net, 2, id, 4, true, PRIORITY_NONE).is_none());
    net.restart(0, Engine::new(NodeId(0), EngineConfig::default()));
    assert_eq!(net.completed(1, 3), Some(Err(OpError::HomeRestarted(id))));
    assert_eq!(net.completed(2, 4), Some(Err(OpError::HomeRestarted(id))));
    // n2's idle copy is gone; n1's is stale: nothing hits on it, it goes when the read ends.
    assert_eq!(net.cache_state(2, id), CacheState::Invalid);
    assert!(cells[1].try_read().is_none());
    assert!(cells[0].try_read().is_none(), "no hit on a stale copy");
    assert_eq!(get(&r), 1, "the access in progress still sees its copy");
    drop(r);
    net.engine(1).process_drained();
    assert!(matches!(
        net.inspect(1, id),
        Some(EntrySnapshot::Cache {
            state: CacheState::Invalid,
            pending: false,
            recalling: false,
            ..
        })
    ));
    // Regions homed elsewhere are untouched.
    assert_eq!(net.cache_state(1, other), CacheState::Shared);
    // The new home does not know the region (nothing restored it).
    assert!(start_with(&mut net, 1, id, 5, false, PRIORITY_NONE).is_none());
    net.settle();
    assert_eq!(net.completed(1, 5), Some(Err(OpError::NoSuchRegion(id))));
}

#[test]
fn a_restored_region_serves_raw_bytes_until_typed_locally() {
    let mut net = Network::new(2, EngineConfig::default());
    let id = RegionId::new(NodeId(0), 5);
    let bytes = Counter { value: 7 }.encode_region().unwrap();
    net.engine(0)
        .restore_raw(id, Counter::FINGERPRINT, "Counter".into(), bytes)
        .unwrap();
    assert!(
        net.engine(0)
            .restore_raw(id, Counter::FINGERPRINT, "Counter".into(), vec![])
            .is_err()
    );
    assert!(
        net.engine(0)
            .restore_raw(RegionId::new(NodeId(1), 1), 0, String::new(), vec![])
            .is_err()
    );
    assert_eq!(net.engine(0).next_seq(), 6);
    net.engine(0).set_next_seq(10);
    assert_eq!(net.engine(0).create(Counter { value: 0 }).id().seq, 10);
    assert_eq!(net.engine(0).next_seq(), 11);
    // Not typed here yet: local accesses need a map first.
    assert_eq!(
        net.engine(0).start_read(id, 1).unwrap_err(),
        OpError::NotMapped(id)
    );
    // A remote node is served from the bytes, and its writes come back as bytes.
    net.map(1, id);
    assert_eq!(get(&net.access(1, id, 2, false)), 7);
    let mut w = net.access(1, id, 3, true);
    set(&mut w, 8);
    drop(w);
    let committed = Counter { value: 8 }.encode_region().unwrap();
    assert!(net.engine(0).holds_exclusive(id, NodeId(1)));
    net.engine(0).install_master(id, &committed).unwrap();
    assert!(matches!(
        net.engine(0).map::<Other>(id, 4),
        Err(OpError::WrongType { .. })
    ));
    // The home types it by mapping it, while n1 still owns it.
    let (cell, progress) = net.engine(0).map::<Counter>(id, 5).unwrap();
    assert_eq!(progress, Progress::Done);
    assert!(cell.try_read().is_none(), "n1 owns it: no hit at the home");
    let mut w = net.access(1, id, 6, true);
    set(&mut w, 9);
    drop(w);
    assert_eq!(get(&net.access(0, id, 7, false)), 9);
    assert_eq!(cell.try_read().expect("a hit now").value, 9);
}

#[test]
fn transaction_messages_are_not_engine_messages() {
    let mut net = Network::new(2, EngineConfig::default());
    for msg in [
        Message::TxCommit {
            txid: 1,
            writes: vec![],
            deletes: vec![],
            participants: vec![],
        },
        Message::TxDecide {
            txid: 1,
            commit: true,
        },
        Message::TxInquire { txid: 1 },
    ] {
        assert!(msg.is_transaction());
        let err = net.engine(0).handle_message(NodeId(1), msg).unwrap_err();
        assert!(err.what.contains("not an engine message"), "{err}");
    }
    // A stale Contend (nothing waits any more) is ignored, not a violation.
    let id = net.engine(0).create(Counter { value: 1 }).id();
    let contend = Message::Contend {
        region: id,
        priority: 1,
    };
    net.engine(0).handle_message(NodeId(1), contend).unwrap();
    let ghost = RegionId::new(NodeId(0), 999);
    net.engine(0)
        .handle_message(
            NodeId(1),
            Message::Contend {
                region: ghost,
                priority: 1,
            },
        )
        .unwrap();
}

/// A fenced (or restarted) requester asks again, in its new session, while the home still
/// serves its withdrawn request (a recall held up elsewhere): a new request, not a
/// duplicate, so it queues behind instead of being refused as a protocol violation.
#[test]
fn a_fenced_requester_asks_again_while_its_withdrawn_request_is_still_served() {
    let mut net = Network::new(3, EngineConfig::default());
    let (id, _cells) = shared_by(&mut net, &[1, 2]);
    let r = net.access(2, id, 1, false);
    // n1 asks to write: the home serves it and recalls n2, held up by its read.
    assert!(start_with(&mut net, 1, id, 2, true, PRIORITY_NONE).is_none());
    net.settle();
    // The pair n0-n1 is fenced: both sides forget the session.
    net.engine(0).peer_fenced(NodeId(1));
    net.pump(0);
    net.engine(1).peer_fenced(NodeId(0));
    net.pump(1);
    assert_eq!(net.completed(1, 2), Some(Err(OpError::Fenced(id))));
    // n1 asks again at once.
    let started = net.engine(1).start_read(id, 3).unwrap();
    assert!(matches!(started, Start::Queued));
    net.pump(1);
    net.deliver(1, 0);
    // The recall completes; the withdrawn request is dropped, the new one served.
    drop(r);
    net.engine(2).process_drained();
    net.pump(2);
    net.settle();
    let a = net.granted(1, 3).expect("the new request is served");
    assert_eq!(get(&a), 1);
}

/// A transaction at n1 deletes X (homed at n0) while holding its only copy, and n2's write is
/// already being served at the home (waiting for n1's recall). The delete goes first: n2
/// learns `Deleted`, never gets X. (Enqueued like a plain request, the delete came after n2's
/// write, which then committed to a deleted region.)
#[test]
fn a_committed_delete_from_the_owner_goes_before_requests_waiting_for_it() {
    let mut net = Network::new(3, EngineConfig::default());
    let id = net.engine(0).create(Counter { value: 1 }).id();
    net.map(1, id);
    net.map(2, id);
    let mut w = net.access(1, id, 1, true);
    set(&mut w, 2);
    assert!(matches!(
        net.engine(2).start_write(id, 2).unwrap(),
        Start::Queued
    ));
    net.pump(2);
    net.settle();
    assert!(net.granted(2, 2).is_none(), "n1's access defers the recall");
    // The commit: the delete is done here and sent home before the access ends.
    net.engine(1).delete_committed(id);
    net.pump(1);
    assert_eq!(
        net.engine(1).start_read(id, 3).unwrap_err(),
        OpError::Deleted(id),
        "the writer's node knows at once"
    );
    end(&mut net, 1, w);
    net.settle();
    assert_eq!(net.completed(2, 2), Some(Err(OpError::Deleted(id))));
    assert_eq!(
        net.engine(0).start_read(id, 4).unwrap_err(),
        OpError::Deleted(id)
    );
    assert!(net.inspect(0, id).is_none());
}

/// At the home, a delete decided by a transaction goes before the local requests waiting.
#[test]
fn a_committed_delete_at_the_home_goes_before_local_requests() {
    let mut net = Network::new(2, EngineConfig::default());
    let cell = net.engine(0).create(Counter { value: 1 });
    let id = cell.id();
    let w = net.access(0, id, 1, true);
    assert!(matches!(
        net.engine(0).start_write(id, 2).unwrap(),
        Start::Queued
    ));
    net.engine(0).delete_committed(id);
    end(&mut net, 0, w);
    net.settle();
    assert_eq!(net.completed(0, 2), Some(Err(OpError::Deleted(id))));
}

/// A prepared region is held at its home: the owner's copy is recalled, but nobody (the
/// home's own code included) gets the region until the hold ends, so the decision is
/// installed before anything later reads or writes it.
#[test]
fn a_held_region_is_served_only_after_the_hold_ends() {
    let mut net = Network::new(3, EngineConfig::default());
    let cell = net.engine(0).create(Counter { value: 1 });
    let id = cell.id();
    net.map(1, id);
    net.map(2, id);
    let mut w = net.access(1, id, 1, true);
    set(&mut w, 2);
    end(&mut net, 1, w);
    net.engine(0).hold(id).unwrap();
    assert!(matches!(
        net.engine(2).start_read(id, 2).unwrap(),
        Start::Queued
    ));
    net.pump(2);
    net.settle();
    assert_eq!(net.cache_state(1, id), CacheState::Shared, "recalled");
    assert!(net.granted(2, 2).is_none(), "served while held");
    assert!(cell.try_write().is_none() && cell.try_read().is_none());
    net.engine(0).release_hold(id);
    net.pump(0);
    net.settle();
    let r = net.granted(2, 2).expect("granted once the hold ends");
    assert_eq!(get(&r), 2);
    drop(r);
    assert_eq!(cell.try_read().expect("home hit again").value, 2);
}

/// The home deletes a region on receipt of its owner's committed delete: nothing is recalled
/// from the owner (it gave its copy up with the delete), so whatever the owner sends after
/// the delete (a transaction's writes to other regions) never reaches the home while the
/// region still exists there. (Before: the home recalled the owner and deleted only on the
/// ack; a local map at the home between the two succeeded after the writes were seen.)
#[test]
fn the_owners_committed_delete_takes_effect_when_it_reaches_the_home() {
    let mut net = Network::new(2, EngineConfig::default());
    let id = net.engine(0).create(Counter { value: 1 }).id();
    net.map(1, id);
    let mut w = net.access(1, id, 1, true);
    set(&mut w, 2);
    net.engine(1).delete_committed(id);
    net.pump(1);
    // Only n1's messages reach the home; none of the home's reach n1.
    while net.in_flight(1, 0) > 0 {
        net.deliver(1, 0);
    }
    assert!(net.inspect(0, id).is_none(), "the home deleted on receipt");
    assert_eq!(
        net.engine(0).start_read(id, 2).unwrap_err(),
        OpError::Deleted(id)
    );
    end(&mut net, 1, w);
    net.settle();
    assert_eq!(
        net.engine(1).start_read(id, 3).unwrap_err(),
        OpError::Deleted(id)
    );
    assert_eq!(
        net.cache_state(1, id),
        CacheState::Invalid,
        "the copy is dropped"
    );
}

/// A region placed at a home by another node (`Node::create_at`) is served from its bytes
/// to any node and decoded by the home's first local map; a placement the home cannot take
/// is refused and creates nothing: bytes too long to ever ship, an overlong type name, or a
/// home that already homes its limit of regions (no peer makes it store without bound).
#[test]
fn placed_regions_are_served_from_their_bytes_and_bounded() {
    let config = EngineConfig {
        max_homed_regions: 3,
        max_image_len: 4096,
        ..EngineConfig::default()
    };
    let mut net = Network::new(2, config);
    let bytes = Counter { value: 41 }.encode_region().unwrap();
    let id = net
        .engine(0)
        .create_placed(
            Counter::FINGERPRINT,
            Counter::TYPE_NAME.to_owned(),
            bytes.clone(),
        )
        .unwrap();
    assert_eq!(id.home, NodeId(0));
    // Another node reads and writes it.
    net.map(1, id);
    let mut w = net.access(1, id, 1, true);
    assert_eq!(get(&w), 41);
    set(&mut w, 42);
    end(&mut net, 1, w);
    // The home's own map decodes what it holds (recalling the writer's copy first).
    let cell = net.map(0, id);
    let r = net.access(0, id, 2, false);
    assert_eq!(get(&r), 42);
    drop(r);
    drop(cell);
    let e = net.engine(0);
    assert_eq!(
        e.create_placed(Counter::FINGERPRINT, "T".into(), vec![0; 4097]),
        Err(Refusal::TooLarge {
            len: 4097,
            max: 4096
        })
    );
    assert_eq!(
        e.create_placed(Counter::FINGERPRINT, "T".repeat(1025), bytes.clone()),
        Err(Refusal::BadTypeName)
    );
    // With `id`, two more fill it.
    e.create_placed(Counter::FINGERPRINT, "T".into(), bytes.clone())
        .unwrap();
    e.create_placed(Counter::FINGERPRINT, "T".into(), bytes.clone())
        .unwrap();
    assert_eq!(
        e.create_placed(Counter::FINGERPRINT, "T".into(), bytes),
        Err(Refusal::Full { limit: 3 })
    );
    // A placement message fed to the engine is a protocol violation, not applied.
    let violation = e.handle_message(
        NodeId(1),
        Message::CreateAt {
            request: 1,
            fingerprint: 0,
            type_name: "T".into(),
            bytes: vec![],
        },
    );
    assert!(violation.is_err());
}
