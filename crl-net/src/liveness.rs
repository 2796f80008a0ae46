//! Leases and failure detection at run time (DESIGN.md §6, rules 2 and 3): the clock, the
//! lease words the hit path checks, and the task that drives [`crl_core::liveness`].
//!
//! The state machine ([`Liveness`]) decides; this module only reads the clock, sends the pings
//! it asks for, stores the lease ends where the program's threads can read them, and fences
//! the peers it names (through [`Transport::fence`]).
//!
//! **The hit path.** Every access to a copy of another home's region checks, *after* it has
//! acquired the copy, that this node's lease from the home is still valid
//! ([`LeaseTable::valid`]: one atomic load and one read of the coarse monotonic clock). The
//! order matters: a thread paused between the check and its read would otherwise read a copy
//! its home may have reclaimed meanwhile; checked after acquisition, the access is linearized
//! at the check, while the lease still held. A process paused for longer than its leases
//! (SIGSTOP, a stall) therefore serves no stale hit when it resumes: its clock has moved on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crl_core::NodeId;
use crl_core::liveness::{Liveness, LivenessConfig, LivenessEvent, Timestamp};
use crl_core::wire::Message;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::transport::Transport;

/// The monotonic clock leases are counted on. On Linux it is `CLOCK_MONOTONIC_COARSE` (read
/// through the vDSO in a few nanoseconds, a tick of a few milliseconds, covered by the lease
/// margin); elsewhere [`std::time::Instant`]. Both keep counting while the process is
/// stopped, which is what makes a pause visible to the lease check.
pub mod clock {
    use crl_core::liveness::Timestamp;

    /// Now.
    #[cfg(target_os = "linux")]
    #[inline]
    pub fn now() -> Timestamp {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
        let nanos = u64::try_from(t.tv_sec)
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0));
        Timestamp::from_nanos(nanos)
    }

    /// Now.
    #[cfg(not(target_os = "linux"))]
    #[inline]
    pub fn now() -> Timestamp {
        use std::sync::OnceLock;
        use std::time::Instant;
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(Instant::now);
        let nanos = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // Start above zero: zero means "no lease".
        Timestamp::from_nanos(nanos.saturating_add(1))
    }
}

/// The end of this node's lease on each home's regions, as the program's threads see it: one
/// word per node id, indexed by id (ids are at most [`MAX_NODE_ID`](crate::config::MAX_NODE_ID),
/// so the table is at most 32 KiB), shared by the node and its liveness task.
///
/// A word holds the end of the lease in [`clock`] nanoseconds, 0 while there is none, and
/// [`LeaseTable::NOT_NEEDED`] for this node's own regions and for ids that are not peers. The
/// hit path finds the word from the region's home, so a handle carries no lease pointer of
/// its own (issue 10: 8 bytes less per mapped region).
#[derive(Clone, Debug, Default)]
pub struct LeaseTable {
    until: Arc<[AtomicU64]>,
}

impl LeaseTable {
    /// A word that never expires: no lease is needed.
    pub const NOT_NEEDED: u64 = u64::MAX;

    /// A table for `peers` (no lease from any yet); every other id needs none.
    fn new(peers: impl IntoIterator<Item = NodeId>) -> Self {
        let peers: Vec<NodeId> = peers.into_iter().collect();
        let len = peers.iter().map(|p| p.0 as usize + 1).max().unwrap_or(0);
        let until: Arc<[AtomicU64]> = (0..len).map(|_| AtomicU64::new(Self::NOT_NEEDED)).collect();
        for p in peers {
            until[p.0 as usize].store(0, Ordering::Relaxed);
        }
        LeaseTable { until }
    }

    /// Whether this node's lease on `home`'s regions is valid now (always, for a home that
    /// needs none).
    #[inline]
    pub fn valid(&self, home: NodeId) -> bool {
        match self.until.get(home.0 as usize) {
            None => true,
            Some(word) => {
                let until = word.load(Ordering::Acquire);
                until == Self::NOT_NEEDED || clock::now().as_nanos() < until
            }
        }
    }

    /// Records the end of `peer`'s lease (`None`: no lease).
    fn set(&self, peer: NodeId, until: Option<Timestamp>) {
        if let Some(word) = self.until.get(peer.0 as usize) {
            // A lease never reaches `NOT_NEEDED`: that would be 584 years of uptime.
            let nanos = until.map_or(0, |t| t.as_nanos().min(Self::NOT_NEEDED - 1));
            word.store(nanos, Ordering::Release);
        }
    }
}

/// Counters of the liveness layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LivenessStats {
    /// Peers this node fenced (each was silent for longer than the peer timeout).
    pub fences: u64,
    /// Times a peer told this node it had been fenced.
    pub fenced_by_peers: u64,
    /// Accesses that found their lease expired and waited for a renewal.
    pub lease_waits: u64,
    /// Pauses of this node detected (it did not run for several ping intervals).
    pub pauses: u64,
}

/// Drives a node's [`Liveness`] (when a peer timeout is configured).
pub(crate) struct LivenessDriver {
    machine: Mutex<Liveness>,
    leases: LeaseTable,
    /// Per peer: signalled whenever its lease word changes.
    lease_changed: BTreeMap<NodeId, Notify>,
    /// Wakes the task (a renewal was asked for).
    wake: Notify,
    fences: AtomicU64,
    fenced_by_peers: AtomicU64,
    lease_waits: AtomicU64,
}

impl LivenessDriver {
    /// Watches `peers` with `config`.
    pub(crate) fn new(config: LivenessConfig, peers: impl IntoIterator<Item = NodeId>) -> Self {
        let now = clock::now();
        let mut machine = Liveness::new(config);
        let mut lease_changed = BTreeMap::new();
        for peer in peers {
            machine.add_peer(peer, now);
            lease_changed.insert(peer, Notify::new());
        }
        LivenessDriver {
            machine: Mutex::new(machine),
            leases: LeaseTable::new(lease_changed.keys().copied()),
            lease_changed,
            wake: Notify::new(),
            fences: AtomicU64::new(0),
            fenced_by_peers: AtomicU64::new(0),
            lease_waits: AtomicU64::new(0),
        }
    }

    /// The lease words the hit path reads (shared with the node).
    pub(crate) fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// A message of `peer`'s current session was delivered.
    pub(crate) fn on_heard(&self, peer: NodeId) {
        self.machine.lock().on_heard(peer, clock::now());
    }

    /// `peer` answered a ping.
    pub(crate) fn on_pong(&self, transport: &Transport, peer: NodeId, nonce: u64) {
        let events = {
            let mut m = self.machine.lock();
            m.on_pong(peer, nonce, clock::now());
            drain(&mut m)
        };
        self.apply(transport, events);
    }

    /// The session with `peer` started again; `fenced_us`: because the peer fenced this node.
    pub(crate) fn peer_reset(&self, transport: &Transport, peer: NodeId, fenced_us: bool) {
        if fenced_us {
            self.fenced_by_peers.fetch_add(1, Ordering::Relaxed);
        }
        let events = {
            let mut m = self.machine.lock();
            m.peer_reset(peer, clock::now());
            drain(&mut m)
        };
        self.apply(transport, events);
        self.wake.notify_one();
    }

    /// Waits until the lease on `home`'s regions is valid; the caller bounds the wait.
    /// Cancel-safe.
    pub(crate) async fn wait_for_lease(&self, home: NodeId) {
        let Some(lease_changed) = self.lease_changed.get(&home) else {
            return;
        };
        self.lease_waits.fetch_add(1, Ordering::Relaxed);
        loop {
            let changed = lease_changed.notified();
            if self.leases.valid(home) {
                return;
            }
            self.machine.lock().renew_soon(home, clock::now());
            self.wake.notify_one();
            changed.await;
        }
    }

    pub(crate) fn stats(&self) -> LivenessStats {
        LivenessStats {
            fences: self.fences.load(Ordering::Relaxed),
            fenced_by_peers: self.fenced_by_peers.load(Ordering::Relaxed),
            lease_waits: self.lease_waits.load(Ordering::Relaxed),
            pauses: self.machine.lock().pauses(),
        }
    }

    fn apply(&self, transport: &Transport, events: Vec<LivenessEvent>) {
        for event in events {
            match event {
                LivenessEvent::Ping { peer, nonce } => {
                    let _ = transport.send(peer, Message::Ping { nonce });
                }
                LivenessEvent::Lease { peer, until } => {
                    self.leases.set(peer, until);
                    if let Some(changed) = self.lease_changed.get(&peer) {
                        changed.notify_waiters();
                    }
                }
                LivenessEvent::Fence { peer } => {
                    self.fences.fetch_add(1, Ordering::Relaxed);
                    warn!(%peer, "the peer was silent for longer than the peer timeout: fencing it");
                    transport.fence(peer);
                }
            }
        }
    }

    /// The task: fires the state machine's timers until shutdown.
    pub(crate) async fn run(
        self: Arc<Self>,
        transport: Transport,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let (events, next) = {
                let mut m = self.machine.lock();
                m.handle_timeout(clock::now());
                let events = drain(&mut m);
                (events, m.poll_timeout())
            };
            self.apply(&transport, events);
            let wait = next.map_or(Duration::from_secs(1), |t| {
                t.saturating_since(clock::now())
                    // Coarse clock: never spin on a deadline a tick away.
                    .max(Duration::from_millis(1))
            });
            let woken = self.wake.notified();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = woken => {}
                _ = shutdown.changed() => {
                    debug!("liveness stops");
                    return;
                }
            }
        }
    }
}

fn drain(m: &mut Liveness) -> Vec<LivenessEvent> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_lease_table_needs_leases_of_peers_only() {
        let t = LeaseTable::new([NodeId(1), NodeId(3)]);
        // This node (2), ids that are not peers, and ids beyond the table need none.
        for free in [0, 2, 4, 4095] {
            assert!(t.valid(NodeId(free)), "node {free}");
        }
        // Peers: none until one is granted; valid until it ends; gone when withdrawn.
        assert!(!t.valid(NodeId(1)));
        assert!(!t.valid(NodeId(3)));
        let now = clock::now();
        t.set(NodeId(1), Some(now.saturating_add(Duration::from_secs(60))));
        assert!(t.valid(NodeId(1)));
        assert!(!t.valid(NodeId(3)), "one peer's lease is not another's");
        t.set(NodeId(3), Some(now));
        assert!(!t.valid(NodeId(3)), "a lease that ended");
        t.set(NodeId(1), None);
        assert!(!t.valid(NodeId(1)));
        // Setting a lease for an id that is not a peer changes nothing.
        t.set(NodeId(4), Some(now));
        assert!(t.valid(NodeId(4)));
    }

    #[test]
    fn without_peers_the_table_is_empty_and_every_lease_valid() {
        let t = LeaseTable::default();
        assert!(t.valid(NodeId(0)));
        assert!(t.valid(NodeId(7)));
    }
}
