//! Liveness: heartbeats, leases and failure detection (DESIGN.md §6, rules 2 and 3).
//!
//! One [`Liveness`] per node watches every peer. It is a sans-IO state machine in the style of
//! quinn-proto: fed the time ([`Liveness::handle_timeout`]) and what arrives
//! ([`Liveness::on_heard`], [`Liveness::on_pong`]), it emits [`LivenessEvent`]s (pings to send,
//! lease changes, fences) and says when it next needs the time ([`Liveness::poll_timeout`]).
//! It reads no clock: [`Timestamp`]s come from the driver (a monotonic clock in crl-net, the
//! virtual clock in the simulator).
//!
//! # Leases (rule 2)
//! A node may use its copies of a home's regions (serve hits, grant accesses) only while its
//! **lease** from that home is valid. Every [`ping_interval`](LivenessConfig::ping_interval) a
//! node pings each peer (at most one ping outstanding per peer); when the answer comes back,
//! the lease runs until the ping's **send** time plus [`lease`](LivenessConfig::lease). The home
//! counts from when it **received** something from the node, which is later, and waits a
//! further [`lease_margin`](LivenessConfig::lease_margin) for clock-rate drift before it
//! reclaims. So a holder's lease always ends before its home may reclaim, whatever the network
//! delays and however long the holder is paused: after a pause, the holder's clock has moved
//! on, and the check (made by the holder's hit path against the same clock) fails.
//!
//! # Failure detection and fencing (rule 3)
//! A peer heard from in the current session and then silent for
//! [`peer_timeout`](LivenessConfig::peer_timeout) + [`lease_margin`](LivenessConfig::lease_margin)
//! is **fenced** ([`LivenessEvent::Fence`]): the driver retires the pair's session for good
//! and recovers as if the peer had restarted. The peer is not watched again until it is heard
//! from in a new session ([`Liveness::peer_reset`] then [`Liveness::on_heard`]).
//!
//! # Pauses of this node
//! The driver must call [`handle_timeout`](Liveness::handle_timeout) at least once per
//! [`ping_interval`](LivenessConfig::ping_interval) ([`poll_timeout`](Liveness::poll_timeout)
//! never asks for a longer wait). A gap of more than [`PAUSE_GAP`] ping intervals between two
//! calls means this node itself did not run (a SIGSTOP, a stall): it heard nothing because it
//! was not listening, so every peer's silence is counted again from the end of the gap
//! instead of fencing them all at once. Delaying a fence is always safe (only a home's
//! reclaim must wait for the holder's lease, never the other way round); the peers, for
//! their part, have fenced this node if the gap was long, and say so when it reconnects.
//!
//! # Bounds
//! State is one small record per peer; the event queue holds at most three events per peer
//! between two polls.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::region::NodeId;

/// How many ping intervals without a call to [`Liveness::handle_timeout`] count as a pause
/// of this node (see the [module docs](self#pauses-of-this-node)).
pub const PAUSE_GAP: u32 = 3;

/// The peer timeout crl uses unless configured otherwise: 12 s.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(12);

/// A point on a monotonic clock, in nanoseconds from an origin the driver chooses. Stored in
/// an `AtomicU64` by the hit path, hence a plain integer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The origin.
    pub const ZERO: Timestamp = Timestamp(0);
    /// Later than every other timestamp.
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// `nanos` nanoseconds after the origin.
    pub const fn from_nanos(nanos: u64) -> Self {
        Timestamp(nanos)
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `d` later, saturating at [`Timestamp::MAX`].
    pub fn saturating_add(self, d: Duration) -> Self {
        let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(d))
    }

    /// How long after `earlier` this is (zero if it is not later).
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// A deliberately broken liveness rule, for proving the simulator's checks can fail.
#[cfg(feature = "sim")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedLivenessFault {
    /// The holder counts its lease from when the answer to its ping *arrived*, not from when
    /// it sent the ping: a delayed answer stretches the lease past the home's reclaim.
    LeaseFromReceiveTime,
    /// The home reclaims after `peer_timeout` of silence, without waiting for the drift margin.
    ReclaimWithoutMargin,
}

/// Liveness settings. See the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LivenessConfig {
    /// How long a peer may stay silent before it is fenced (plus
    /// [`lease_margin`](Self::lease_margin)). Also the length of a lease, counted by the
    /// holder from the send time of the ping its home answered.
    pub peer_timeout: Duration,
    /// How often each peer is pinged.
    pub ping_interval: Duration,
    /// How much longer than `peer_timeout` a home waits before it fences a silent peer: covers
    /// the difference in clock rates between two nodes and the holder's clock granularity.
    pub lease_margin: Duration,
    /// A planted bug (tests only).
    #[cfg(feature = "sim")]
    pub planted: Option<PlantedLivenessFault>,
}

impl LivenessConfig {
    /// Settings for `peer_timeout`: a ping every eighth of it, and a margin of a tenth of it
    /// (so clocks may run 10 % apart) plus 50 ms (clock granularity).
    pub fn new(peer_timeout: Duration) -> Self {
        LivenessConfig {
            peer_timeout,
            ping_interval: (peer_timeout / 8).max(Duration::from_millis(1)),
            lease_margin: peer_timeout / 10 + Duration::from_millis(50),
            #[cfg(feature = "sim")]
            planted: None,
        }
    }

    /// How long a lease lasts, counted from the send time of the answered ping.
    pub fn lease(&self) -> Duration {
        self.peer_timeout
    }

    /// How long after it last heard from a peer a node fences it.
    pub fn fence_after(&self) -> Duration {
        #[cfg(feature = "sim")]
        if self.planted == Some(PlantedLivenessFault::ReclaimWithoutMargin) {
            return self.peer_timeout;
        }
        self.peer_timeout + self.lease_margin
    }
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig::new(DEFAULT_PEER_TIMEOUT)
    }
}

/// What [`Liveness`] asks its driver to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LivenessEvent {
    /// Send `Ping { nonce }` to `peer`; it answers with a `Pong` carrying the same nonce, to be
    /// fed to [`Liveness::on_pong`].
    Ping {
        /// The peer.
        peer: NodeId,
        /// The ping's nonce.
        nonce: u64,
    },
    /// This node's lease on `peer`'s regions now ends at `until` (`None`: it has none).
    Lease {
        /// The home.
        peer: NodeId,
        /// The end of the lease.
        until: Option<Timestamp>,
    },
    /// `peer` was silent for longer than the peer timeout: fence it (retire the pair's
    /// session, recover as if it had restarted).
    Fence {
        /// The peer.
        peer: NodeId,
    },
}

/// What this node knows about one peer's liveness.
#[derive(Clone, Debug)]
struct PeerLiveness {
    /// When something of the peer's current session last arrived (`None`: nothing yet, so
    /// nothing to fence).
    last_heard: Option<Timestamp>,
    /// The ping waiting for its answer: nonce and send time.
    outstanding: Option<(u64, Timestamp)>,
    /// When the next ping is due (if none is outstanding).
    next_ping: Timestamp,
    /// The end of this node's lease on the peer's regions.
    lease_until: Option<Timestamp>,
    /// Fences of this peer.
    fences: u64,
}

/// Heartbeats, leases and failure detection for every peer of one node. See the
/// [module docs](self).
#[derive(Debug)]
pub struct Liveness {
    config: LivenessConfig,
    peers: BTreeMap<NodeId, PeerLiveness>,
    events: VecDeque<LivenessEvent>,
    next_nonce: u64,
    /// The previous call to [`handle_timeout`](Self::handle_timeout).
    last_tick: Option<Timestamp>,
    /// Pauses of this node detected.
    pauses: u64,
}

impl Liveness {
    /// Watches no peer yet.
    pub fn new(config: LivenessConfig) -> Self {
        Liveness {
            config,
            peers: BTreeMap::new(),
            events: VecDeque::new(),
            next_nonce: 1,
            last_tick: None,
            pauses: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &LivenessConfig {
        &self.config
    }

    /// Starts watching `peer` (idempotent); the first ping is due at once.
    pub fn add_peer(&mut self, peer: NodeId, now: Timestamp) {
        self.peers.entry(peer).or_insert(PeerLiveness {
            last_heard: None,
            outstanding: None,
            next_ping: now,
            lease_until: None,
            fences: 0,
        });
    }

    /// A message of `peer`'s current session was delivered at `now`.
    pub fn on_heard(&mut self, peer: NodeId, now: Timestamp) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.last_heard = Some(p.last_heard.map_or(now, |h| h.max(now)));
        }
    }

    /// `peer` answered ping `nonce` at `now`. Returns whether the answer was the one awaited
    /// (a stale nonce, from before a reset, is ignored).
    pub fn on_pong(&mut self, peer: NodeId, nonce: u64, now: Timestamp) -> bool {
        let config = self.config;
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        let Some((expected, sent)) = p.outstanding else {
            return false;
        };
        if expected != nonce {
            return false;
        }
        p.outstanding = None;
        p.last_heard = Some(p.last_heard.map_or(now, |h| h.max(now)));
        #[allow(unused_mut)]
        let mut from = sent;
        #[cfg(feature = "sim")]
        if config.planted == Some(PlantedLivenessFault::LeaseFromReceiveTime) {
            from = now;
        }
        let until = from.saturating_add(config.lease());
        p.lease_until = Some(p.lease_until.map_or(until, |u| u.max(until)));
        p.next_ping = sent.saturating_add(config.ping_interval).max(now);
        self.events.push_back(LivenessEvent::Lease {
            peer,
            until: p.lease_until,
        });
        true
    }

    /// An operation found the lease on `peer`'s regions expired: ping at the next
    /// [`handle_timeout`](Self::handle_timeout) unless a ping is already outstanding.
    pub fn renew_soon(&mut self, peer: NodeId, now: Timestamp) {
        if let Some(p) = self.peers.get_mut(&peer)
            && p.outstanding.is_none()
        {
            p.next_ping = p.next_ping.min(now);
        }
    }

    /// The pair's session with `peer` started again (it restarted, fenced this node, or was
    /// fenced by it): the lease and the outstanding ping belong to the old session. The peer
    /// is watched again once heard from.
    pub fn peer_reset(&mut self, peer: NodeId, now: Timestamp) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.last_heard = None;
            p.outstanding = None;
            p.next_ping = now;
            if p.lease_until.take().is_some() {
                self.events
                    .push_back(LivenessEvent::Lease { peer, until: None });
            }
        }
    }

    /// Advances to `now`: fences peers silent for too long and sends pings that are due.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let fence_after = self.config.fence_after();
        let gap = self.config.ping_interval * PAUSE_GAP;
        let paused = self
            .last_tick
            .is_some_and(|prev| now.saturating_since(prev) > gap);
        self.last_tick = Some(now);
        if paused {
            self.pauses += 1;
        }
        for (&peer, p) in self.peers.iter_mut() {
            if paused && let Some(heard) = p.last_heard.as_mut() {
                // This node was not running: the peers' silence says nothing yet.
                *heard = (*heard).max(now);
            }
            if let Some(heard) = p.last_heard
                && now >= heard.saturating_add(fence_after)
            {
                p.fences += 1;
                p.last_heard = None;
                p.outstanding = None;
                p.next_ping = now;
                p.lease_until = None;
                self.events
                    .push_back(LivenessEvent::Lease { peer, until: None });
                self.events.push_back(LivenessEvent::Fence { peer });
            }
            // A ping unanswered for a whole peer timeout was lost with a session that
            // ended (sessions lose nothing while both ends live): ask again.
            if let Some((_, sent)) = p.outstanding
                && now >= sent.saturating_add(self.config.peer_timeout)
            {
                p.outstanding = None;
            }
            if p.outstanding.is_none() && now >= p.next_ping {
                let nonce = self.next_nonce;
                self.next_nonce += 1;
                p.outstanding = Some((nonce, now));
                self.events.push_back(LivenessEvent::Ping { peer, nonce });
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called (`None`: only after
    /// something arrives).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let fence_after = self.config.fence_after();
        // At least one call per ping interval, so that a long gap means a pause.
        let tick = self
            .last_tick
            .map(|t| t.saturating_add(self.config.ping_interval));
        self.peers
            .values()
            .flat_map(|p| {
                let fence = p.last_heard.map(|h| h.saturating_add(fence_after));
                let ping = p.outstanding.is_none().then_some(p.next_ping);
                [fence, ping]
            })
            .chain([tick])
            .flatten()
            .min()
    }

    /// Pauses of this node detected so far (gaps between calls to
    /// [`handle_timeout`](Self::handle_timeout)).
    pub fn pauses(&self) -> u64 {
        self.pauses
    }

    /// The next thing to do.
    pub fn poll_event(&mut self) -> Option<LivenessEvent> {
        self.events.pop_front()
    }

    /// The end of this node's lease on `peer`'s regions.
    pub fn lease(&self, peer: NodeId) -> Option<Timestamp> {
        self.peers.get(&peer).and_then(|p| p.lease_until)
    }

    /// Whether the lease on `peer`'s regions is valid at `now`.
    pub fn lease_valid(&self, peer: NodeId, now: Timestamp) -> bool {
        self.lease(peer).is_some_and(|until| now < until)
    }

    /// How often `peer` was fenced by this node.
    pub fn fences(&self, peer: NodeId) -> u64 {
        self.peers.get(&peer).map_or(0, |p| p.fences)
    }

    /// When something of `peer`'s current session last arrived.
    pub fn last_heard(&self, peer: NodeId) -> Option<Timestamp> {
        self.peers.get(&peer).and_then(|p| p.last_heard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: NodeId = NodeId(1);

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_nanos(ms * 1_000_000)
    }

    fn config() -> LivenessConfig {
        LivenessConfig {
            peer_timeout: Duration::from_millis(1000),
            ping_interval: Duration::from_millis(100),
            lease_margin: Duration::from_millis(100),
            #[cfg(feature = "sim")]
            planted: None,
        }
    }

    fn events(l: &mut Liveness) -> Vec<LivenessEvent> {
        std::iter::from_fn(|| l.poll_event()).collect()
    }

    fn ping_nonce(events: &[LivenessEvent]) -> u64 {
        events
            .iter()
            .find_map(|e| match e {
                LivenessEvent::Ping { nonce, .. } => Some(*nonce),
                _ => None,
            })
            .expect("a ping")
    }

    #[test]
    fn the_lease_runs_from_the_send_time_of_the_answered_ping() {
        let mut l = Liveness::new(config());
        l.add_peer(A, at(0));
        assert_eq!(l.poll_timeout(), Some(at(0)));
        l.handle_timeout(at(10));
        let nonce = ping_nonce(&events(&mut l));
        // The answer arrives late: the lease still counts from the send time.
        assert!(l.on_pong(A, nonce, at(400)));
        assert_eq!(l.lease(A), Some(at(1010)));
        assert!(l.lease_valid(A, at(1009)));
        assert!(!l.lease_valid(A, at(1010)));
        assert_eq!(
            events(&mut l),
            vec![LivenessEvent::Lease {
                peer: A,
                until: Some(at(1010))
            }]
        );
        // A stale or repeated answer changes nothing.
        assert!(!l.on_pong(A, nonce, at(500)));
        assert!(!l.on_pong(A, nonce + 7, at(500)));
        assert!(events(&mut l).is_empty());
    }

    #[test]
    fn one_ping_outstanding_and_the_next_one_interval_after_the_last() {
        let mut l = Liveness::new(config());
        l.add_peer(A, at(0));
        l.handle_timeout(at(0));
        let n1 = ping_nonce(&events(&mut l));
        // Unanswered: no second ping within a peer timeout.
        l.handle_timeout(at(300));
        assert!(events(&mut l).is_empty());
        assert!(l.on_pong(A, n1, at(310)));
        let _ = events(&mut l);
        // Sent at 0, so the next is due at 100, i.e. at once.
        assert_eq!(l.poll_timeout(), Some(at(310)));
        l.handle_timeout(at(310));
        let n2 = ping_nonce(&events(&mut l));
        assert!(l.on_pong(A, n2, at(320)));
        let _ = events(&mut l);
        // Sent at 310: the next at 410.
        l.handle_timeout(at(409));
        assert!(events(&mut l).is_empty());
        l.handle_timeout(at(410));
        assert_eq!(
            events(&mut l),
            vec![LivenessEvent::Ping {
                peer: A,
                nonce: n2 + 1
            }]
        );
    }

    /// Calls `handle_timeout` every ping interval from `from` to `to` (a running node).
    fn run(l: &mut Liveness, from: u64, to: u64) -> Vec<LivenessEvent> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            l.handle_timeout(at(t));
            out.extend(events(l));
            t += 100;
        }
        l.handle_timeout(at(to));
        out.extend(events(l));
        out
    }

    #[test]
    fn a_silent_peer_is_fenced_after_the_timeout_and_the_margin() {
        let mut l = Liveness::new(config());
        l.add_peer(A, at(0));
        // Never heard from: nothing to fence.
        let ev = run(&mut l, 0, 5000);
        assert!(!ev.iter().any(|e| matches!(e, LivenessEvent::Fence { .. })));
        l.on_heard(A, at(5000));
        let _ = l.poll_timeout();
        assert!(l.poll_timeout() <= Some(at(6100)));
        let ev = run(&mut l, 5000, 6099);
        assert!(!ev.iter().any(|e| matches!(e, LivenessEvent::Fence { .. })));
        l.handle_timeout(at(6100));
        let ev = events(&mut l);
        assert!(ev.contains(&LivenessEvent::Fence { peer: A }), "{ev:?}");
        assert_eq!(l.fences(A), 1);
        assert_eq!(l.last_heard(A), None);
        // Fenced once: not again until it is heard from in a new session.
        let ev = run(&mut l, 6100, 20_000);
        assert!(
            !ev.contains(&LivenessEvent::Fence { peer: A }),
            "fenced twice"
        );
        assert_eq!(l.pauses(), 0);
    }

    #[test]
    fn a_pause_of_this_node_restarts_the_count_instead_of_fencing_everyone() {
        let mut l = Liveness::new(config());
        l.add_peer(A, at(0));
        l.on_heard(A, at(0));
        let _ = run(&mut l, 0, 500);
        // Asleep from 500 to 30 000 (a SIGSTOP): no fence at wake-up.
        l.handle_timeout(at(30_000));
        let ev = events(&mut l);
        assert!(!ev.contains(&LivenessEvent::Fence { peer: A }), "{ev:?}");
        assert_eq!(l.pauses(), 1);
        // Still silent a full timeout and margin after waking: fenced then.
        let ev = run(&mut l, 30_000, 31_099);
        assert!(!ev.contains(&LivenessEvent::Fence { peer: A }));
        l.handle_timeout(at(31_100));
        assert!(events(&mut l).contains(&LivenessEvent::Fence { peer: A }));
    }

    #[test]
    fn a_ping_unanswered_for_a_peer_timeout_is_sent_again() {
        let mut l = Liveness::new(config());
        l.add_peer(A, at(0));
        let ev = run(&mut l, 0, 999);
        assert_eq!(
            ev.iter()
                .filter(|e| matches!(e, LivenessEvent::Ping { .. }))
                .count(),
            1
        );
        l.handle_timeout(at(1000));
        let n2 = ping_nonce(&events(&mut l));
        assert!(l.on_pong(A, n2, at(1001)));
        assert_eq!(l.lease(A), Some(at(2000)));
    }

    #[test]
    fn poll_timeout_asks_for_a_call_every_ping_interval() {
        let mut l = Liveness::new(config());
        l.add_peer(A, at(0));
        l.handle_timeout(at(0));
        let _ = events(&mut l);
        // A ping is outstanding and nothing was heard: only the tick remains.
        assert_eq!(l.poll_timeout(), Some(at(100)));
    }

    #[test]
    fn a_reset_voids_the_lease_and_the_outstanding_ping() {
        let mut l = Liveness::new(config());
        l.add_peer(A, at(0));
        l.handle_timeout(at(0));
        let n1 = ping_nonce(&events(&mut l));
        assert!(l.on_pong(A, n1, at(1)));
        l.handle_timeout(at(100));
        let n2 = ping_nonce(&events(&mut l));
        l.peer_reset(A, at(150));
        assert_eq!(
            events(&mut l),
            vec![LivenessEvent::Lease {
                peer: A,
                until: None
            }]
        );
        assert_eq!(l.lease(A), None);
        // The ping of the old session will never be answered in the new one; one is due now.
        assert!(!l.on_pong(A, n2, at(160)));
        l.handle_timeout(at(160));
        assert!(matches!(
            events(&mut l).as_slice(),
            [LivenessEvent::Ping { .. }]
        ));
    }

    #[test]
    fn renew_soon_pings_early_unless_one_is_outstanding() {
        let mut l = Liveness::new(config());
        l.add_peer(A, at(0));
        l.handle_timeout(at(0));
        let n1 = ping_nonce(&events(&mut l));
        assert!(l.on_pong(A, n1, at(1)));
        let _ = events(&mut l);
        l.renew_soon(A, at(20));
        assert_eq!(l.poll_timeout(), Some(at(20)));
        l.handle_timeout(at(20));
        let _ = ping_nonce(&events(&mut l));
        l.renew_soon(A, at(30));
        l.handle_timeout(at(30));
        assert!(events(&mut l).is_empty(), "a second ping while one is out");
    }

    proptest! {
        /// Whatever the delays, the holder's lease ends before the home may reclaim: the home
        /// fences at the earliest `fence_after` after it last heard from the holder, and it
        /// heard the ping no earlier than it was sent.
        #[test]
        fn leases_end_before_the_home_may_fence(
            steps in proptest::collection::vec((0u64..400, 0u64..3000, 0u64..3000), 1..40)
        ) {
            let cfg = config();
            let mut holder = Liveness::new(cfg);
            let mut home = Liveness::new(cfg);
            holder.add_peer(A, at(0));
            home.add_peer(NodeId(2), at(0));
            let mut now = 0u64;
            for (advance, to_home, back) in steps {
                now += advance;
                holder.handle_timeout(at(now));
                let evs: Vec<_> = std::iter::from_fn(|| holder.poll_event()).collect();
                for ev in evs {
                    if let LivenessEvent::Ping { nonce, .. } = ev {
                        // The ping reaches the home after `to_home`, the pong comes back
                        // after `back` more.
                        home.on_heard(NodeId(2), at(now + to_home));
                        holder.on_pong(A, nonce, at(now + to_home + back));
                        let heard = home.last_heard(NodeId(2)).expect("heard");
                        let fence_at = heard.saturating_add(cfg.fence_after());
                        let lease = holder.lease(A).expect("lease");
                        prop_assert!(lease < fence_at, "lease {lease:?} fence {fence_at:?}");
                        now += to_home + back;
                    }
                }
            }
        }
    }
}
