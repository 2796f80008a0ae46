//! Virtual time and the faults that need it: clocks that drift, liveness (pings, leases,
//! fences) on every node, frame latencies, cuts, pauses; and the checks they call for (no
//! stale hit, ever; what a fence may lose and nothing else).
//!
//! **Time.** The simulator owns one global clock (nanoseconds), advanced only by
//! [`Choice::Tick`](super::Choice::Tick). Every node reads its own local clock, `offset +
//! global × (1 + rate)`, with a rate drawn within ±[`TimeConfig::drift_ppm`]: the drift that
//! [`LivenessConfig::lease_margin`] must cover. A node's [`Liveness`] is fed its local clock.
//!
//! **Links.** Every frame written gets a latency (usually small, sometimes long); a frame
//! cannot arrive before it. A cut takes every link between a group and the rest down in both
//! directions: their connections break (frames in flight lost, or delayed further and still
//! arriving) and none reconnects until the cut heals. A paused node does nothing at all (no
//! delivery to it, no write, no timer, no access, no hit) while global time runs on.
//!
//! **Fencing** is crl-net's: the fencer bumps its session generation towards the peer, drops
//! its receiving session from it, recovers ([`Engine::peer_fenced`](crate::engine::Engine::peer_fenced)),
//! and starts a new sending session; the fenced node learns at the next handshake (see
//! `link.rs`) and recovers the same way.
//!
//! **Checks.** Every access to a copy of another home's region (a hit, or granted after a
//! miss) is used only if the node's lease from the home is valid *after* acquiring it, as in
//! crl-net; otherwise it is released and waits for a renewal (or times out). At every tick,
//! and after every write and every loss, every node that could serve a read hit (a valid copy
//! and, for another home's region, a valid lease) is probed: the value must be the latest the
//! model allows, and no other node may be writing. The model follows DESIGN.md §6 rule 4: a
//! completed write lives only in its writer's copy until that copy reaches the home (a recall
//! or flush with data, delivered); if the home loses the copy (the pair was fenced), those
//! writes are lost, the home's last installed value is current again, and the home must
//! report the loss ([`Event::CopyLost`](crate::engine::Event::CopyLost)). Accesses in progress
//! on a copy its home reclaimed are orphaned: their writes are lost, and they no longer count
//! as readers or writers.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::engine::{Engine, PeerReset, RegionCell};
use crate::liveness::{Liveness, LivenessConfig, LivenessEvent, Timestamp};
use crate::region::NodeId;
use crate::session::SessionEpoch;
use crate::wire::Message;

use super::{Check, MapState, OpKind, Sim, SimValue, engine_config};

/// A planted bug of the simulated node's hit path, to prove the checks catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimLeaseFault {
    /// Accesses to other homes' regions are used without checking the lease.
    HitWithoutLeaseCheck,
}

/// Virtual time, liveness and the faults that need time. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct TimeConfig {
    /// Every node's liveness settings (durations in virtual time).
    pub liveness: LivenessConfig,
    /// Clock rates differ from the global clock by at most this much (parts per million).
    pub drift_ppm: u32,
    /// In random runs, the percentage of choices that advance time.
    pub tick_percent: u32,
    /// The largest time step of a random tick, in virtual milliseconds.
    pub max_tick_ms: u32,
    /// Every frame's latency is drawn up to this (milliseconds)…
    pub latency_ms: u32,
    /// …and this percentage of frames (and every frame that survives a broken connection)
    /// is delayed further, up to [`max_delay_ms`](Self::max_delay_ms).
    pub delay_percent: u32,
    /// The longest extra delay of a frame, in milliseconds.
    pub max_delay_ms: u32,
    /// In random runs, the rate (per million choices) of cuts of a node or a group.
    pub cut_per_million: u32,
    /// In random runs, the rate (per million choices) of pauses of a node.
    pub pause_per_million: u32,
    /// In random runs, the rate (per million choices) of crashes of a node (each followed by
    /// a restart).
    pub crash_per_million: u32,
    /// How long an access waits for a lease renewal before it fails (node's clock).
    pub op_timeout: Duration,
    /// Check rule 2 itself at every fence: the fenced node's lease on the fencer's regions
    /// has ended (the simulator sees both clocks). Off, only what a lease bug breaks (a stale
    /// hit, a read beside a write) can catch it.
    pub check_leases_at_fences: bool,
    /// A planted bug of the hit path.
    pub planted: Option<SimLeaseFault>,
}

impl TimeConfig {
    /// Faults for `peer_timeout` ([`LivenessConfig::new`]): drift of ±4 %, frames up to 5 ms
    /// late and 3 % of them up to 400 ms, cuts and pauses about once per 2 000 choices each.
    pub fn new(peer_timeout: Duration) -> Self {
        TimeConfig {
            liveness: LivenessConfig::new(peer_timeout),
            drift_ppm: 40_000,
            tick_percent: 10,
            max_tick_ms: 20,
            latency_ms: 5,
            delay_percent: 3,
            max_delay_ms: 400,
            cut_per_million: 500,
            pause_per_million: 500,
            crash_per_million: 40,
            op_timeout: peer_timeout * 4,
            check_leases_at_fences: true,
            planted: None,
        }
    }

    /// Once every fault healed, the longest the cluster may go without completing an
    /// operation while any waits (no region stays blocked): a fence that was due (peer
    /// timeout plus margin), frames delayed twice, and a few pings to renew leases.
    pub fn recovery_bound(&self) -> Duration {
        let l = &self.liveness;
        l.peer_timeout
            + l.lease_margin
            + Duration::from_millis(2 * u64::from(self.max_delay_ms))
            + 4 * l.ping_interval
    }
}

/// An access waiting for its lease to be renewed.
pub(super) struct LeaseWait {
    pub(super) node: usize,
    pub(super) region: usize,
    write: bool,
    /// When it gives up (the node's clock).
    deadline: Timestamp,
}

/// A node's clock.
struct NodeClock {
    offset: u64,
    rate_ppm: i64,
}

/// A group of nodes cut off from the rest until `until`.
struct Cut {
    members: Vec<bool>,
    until: u64,
}

/// Everything about time in a run.
pub(super) struct TimeState {
    pub(super) cfg: TimeConfig,
    clocks: Vec<NodeClock>,
    pub(super) liveness: Vec<Liveness>,
    cuts: Vec<Cut>,
    paused_until: Vec<u64>,
    pub(super) lease_waits: Vec<LeaseWait>,
    /// Latencies and delays.
    rng: SmallRng,
    /// When the quiescence phase healed every fault.
    pub(super) healed_at: Option<u64>,
}

impl TimeState {
    pub(super) fn new(cfg: TimeConfig, nodes: usize, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x7469_6d65);
        let drift = i64::from(cfg.drift_ppm);
        let clocks = (0..nodes)
            .map(|_| NodeClock {
                offset: rng.random_range(1..10_000_000_000u64),
                rate_ppm: rng.random_range(-drift..=drift),
            })
            .collect();
        TimeState {
            liveness: (0..nodes).map(|_| Liveness::new(cfg.liveness)).collect(),
            cfg,
            clocks,
            cuts: Vec::new(),
            paused_until: vec![0; nodes],
            lease_waits: Vec::new(),
            rng,
            healed_at: None,
        }
    }

    fn local(&self, node: usize, global: u64) -> Timestamp {
        let c = &self.clocks[node];
        let g = i128::from(global);
        let t = i128::from(c.offset) + g + g * i128::from(c.rate_ppm) / 1_000_000;
        Timestamp::from_nanos(u64::try_from(t.max(0)).unwrap_or(u64::MAX))
    }
}

const MS: u64 = 1_000_000;

impl Sim {
    /// Node `node`'s clock now.
    pub(super) fn local_now(&self, node: usize) -> Timestamp {
        match &self.time {
            Some(t) => t.local(node, self.global),
            None => Timestamp::ZERO,
        }
    }

    /// Whether `node` is paused.
    pub(super) fn is_paused(&self, node: usize) -> bool {
        self.time
            .as_ref()
            .is_some_and(|t| t.paused_until[node] > self.global)
    }

    /// Whether a cut separates `a` and `b`.
    pub(super) fn link_down(&self, a: usize, b: usize) -> bool {
        self.time
            .as_ref()
            .is_some_and(|t| t.cuts.iter().any(|c| c.members[a] != c.members[b]))
    }

    /// A frame's latency (ns).
    pub(super) fn latency(&mut self) -> u64 {
        let Some(t) = &mut self.time else {
            return 0;
        };
        let mut ns = t.rng.random_range(0..=u64::from(t.cfg.latency_ms) * MS);
        if t.rng.random_range(0..100u32) < t.cfg.delay_percent {
            ns += t.rng.random_range(0..=u64::from(t.cfg.max_delay_ms) * MS);
        }
        ns
    }

    /// The extra delay of a frame that survives a broken connection (ns).
    pub(super) fn delay(&mut self) -> u64 {
        let Some(t) = &mut self.time else {
            return 0;
        };
        t.rng.random_range(0..=u64::from(t.cfg.max_delay_ms) * MS)
    }

    /// Sets up every node's liveness (at the start of a run).
    pub(super) fn start_liveness(&mut self) {
        let n = self.cfg.nodes;
        let nows: Vec<Timestamp> = (0..n).map(|i| self.local_now(i)).collect();
        if let Some(t) = &mut self.time {
            for (i, l) in t.liveness.iter_mut().enumerate() {
                for peer in (0..n).filter(|&p| p != i) {
                    l.add_peer(NodeId(peer as u32), nows[i]);
                }
            }
        }
    }

    /// Advances global time by `ms` milliseconds: cuts heal, pauses end, every node is probed
    /// (a program thread may run before the timers: a node waking from a pause must not
    /// serve a single stale hit), every running node's timers fire (pings, fences), lease
    /// waits retry or time out, and every node is probed again.
    pub(super) fn tick(&mut self, ms: u64) -> Check {
        let Some(t) = &mut self.time else {
            return Ok(());
        };
        self.global += ms.max(1) * MS;
        let now = self.global;
        let before = t.cuts.len();
        t.cuts.retain(|c| c.until > now);
        if t.cuts.len() != before {
            self.note("a cut healed".to_string());
        }
        self.report.ticks += 1;
        self.probe_all()?;
        for node in 0..self.cfg.nodes {
            if self.is_paused(node) {
                continue;
            }
            let local = self.local_now(node);
            if let Some(t) = &mut self.time {
                t.liveness[node].handle_timeout(local);
            }
            self.liveness_events(node)?;
            self.retry_lease_waits(node)?;
        }
        self.probe_all()
    }

    /// Acts on what `node`'s liveness asks for.
    pub(super) fn liveness_events(&mut self, node: usize) -> Check {
        loop {
            let Some(event) = self
                .time
                .as_mut()
                .and_then(|t| t.liveness[node].poll_event())
            else {
                return Ok(());
            };
            match event {
                LivenessEvent::Ping { peer, nonce } => {
                    self.send(node, peer.0 as usize, &Message::Ping { nonce })?;
                }
                LivenessEvent::Lease { peer, until } => {
                    let now = self.local_now(node);
                    self.note(format!(
                        "n{node}: lease on {peer} {}",
                        match until {
                            Some(u) => format!(
                                "until +{} ms",
                                u.as_nanos().saturating_sub(now.as_nanos()) / MS
                            ),
                            None => "void".to_string(),
                        }
                    ));
                    if until.is_some() {
                        self.retry_lease_waits(node)?;
                    }
                }
                LivenessEvent::Fence { peer } => self.fence(node, peer.0 as usize)?,
            }
        }
    }

    /// `node` fences `peer` (it was silent for longer than the peer timeout), as crl-net's
    /// `Transport::fence` and driver do.
    fn fence(&mut self, node: usize, peer: usize) -> Check {
        let n = self.cfg.nodes;
        self.report.fences += 1;
        if let Some(t) = &self.time
            && t.cfg.check_leases_at_fences
        {
            let peer_now = t.local(peer, self.global);
            if let Some(until) = t.liveness[peer].lease(NodeId(node as u32))
                && peer_now < until
            {
                return Err(self.fail(format!(
                    "n{node} fences n{peer} while n{peer}'s lease on n{node}'s regions runs {} ms more",
                    (until.as_nanos() - peer_now.as_nanos()).div_ceil(MS)
                )));
            }
        }
        let mine = self.mine[node * n + peer].next_generation();
        self.mine[node * n + peer] = mine;
        self.note(format!(
            "n{node}: fences n{peer} (silent too long); its session towards it is now {mine}"
        ));
        // Nothing more of the old session from the peer is delivered; its connection closes.
        let from_peer = &mut self.sessions[peer * n + node];
        from_peer.set_recv(None);
        from_peer.disconnect();
        self.reset_pair(node, peer, PeerReset::Fenced)
    }

    /// `node` forgets what it shared with `peer` (a fence, by either side): engine, liveness,
    /// sending session; the model orphans the accesses the reset voids and checks the losses.
    pub(super) fn reset_pair(&mut self, node: usize, peer: usize, cause: PeerReset) -> Check {
        // What the peer's old session delivered is handled first, as crl-net's driver does.
        self.finish_work_from(node, peer)?;
        let n = self.cfg.nodes;
        // What rule 4 says this node, as a home, loses: the writes that live only in the
        // peer's copy.
        let expected: Vec<usize> = (0..self.regions.len())
            .filter(|&r| {
                let m = &self.model[r];
                self.regions[r].home.0 as usize == node
                    && !m.deleted
                    && !m.lost
                    && m.value != m.home_value
                    && m.last_writer == Some(peer)
            })
            .collect();
        self.orphan(node, peer);
        self.orphan(peer, node);
        self.engines[node].peer_reset(NodeId(peer as u32), cause);
        let now = self.local_now(node);
        if let Some(t) = &mut self.time {
            t.liveness[node].peer_reset(NodeId(peer as u32), now);
        }
        let known = self.known[node * n + peer];
        let to_peer = &mut self.sessions[node * n + peer];
        let dropped = to_peer.reset_send(known);
        to_peer.disconnect();
        self.note(format!(
            "n{node}: forgets n{peer}'s session ({cause:?}), {dropped} queued messages dropped"
        ));
        self.copy_lost.clear();
        let outer = self.resetting.replace((node, peer));
        let collected = self.collect(node);
        self.resetting = outer;
        collected?;
        for r in expected {
            if !self.copy_lost.contains(&r) {
                return Err(self.fail(format!(
                    "n{node} lost n{peer}'s copy of {} (with writes the home never saw) without reporting it",
                    self.regions[r]
                )));
            }
        }
        self.liveness_events(node)?;
        self.probe_all()
    }

    /// Accesses in progress at `holder` on copies of `home`'s regions: the home may give the
    /// region to others now. They no longer count; their writes are lost.
    fn orphan(&mut self, holder: usize, home: usize) {
        for h in self.held.iter_mut() {
            if h.node != holder || h.orphaned || self.regions[h.region].home.0 as usize != home {
                continue;
            }
            h.orphaned = true;
            let m = &mut self.model[h.region];
            if h.wrote.is_some() {
                m.writer = None;
            } else {
                m.readers -= 1;
            }
            self.report.orphaned += 1;
        }
    }

    /// A message from `from` reaches `to`: liveness hears it; pings are answered, pongs
    /// renew leases; the rest goes to the engine.
    pub(super) fn receive(&mut self, from: usize, to: usize, msg: Message) -> Check {
        let now = self.local_now(to);
        if let Some(t) = &mut self.time {
            t.liveness[to].on_heard(NodeId(from as u32), now);
        }
        match msg {
            Message::Ping { nonce } => {
                self.report.pings += 1;
                return self.send(to, from, &Message::Pong { nonce });
            }
            Message::Pong { nonce } => {
                if let Some(t) = &mut self.time {
                    t.liveness[to].on_pong(NodeId(from as u32), nonce, now);
                }
                return self.liveness_events(to);
            }
            _ => {}
        }
        self.hand_to_engine(from, to, msg)
    }

    /// A copy's image reaching its home (a recall answer or a flush with data) becomes the
    /// home's value.
    pub(super) fn observe_image(&mut self, to: usize, msg: &Message) {
        let (Message::RecallAck {
            region,
            image: Some(image),
            ..
        }
        | Message::Flush {
            region,
            image: Some(image),
            ..
        }) = msg
        else {
            return;
        };
        if region.home.0 as usize != to {
            return;
        }
        let Some(r) = self.regions.iter().position(|id| id == region) else {
            return;
        };
        if let Ok(v) = <SimValue as crate::region::Region>::decode_region(&image.bytes) {
            let m = &mut self.model[r];
            m.home_value = m.home_value.max(v.value);
        }
    }

    /// Whether `node` may use an access to `region` now: homed here, or a valid lease from
    /// its home (after acquiring the access, as crl-net checks).
    pub(super) fn lease_ok(&self, node: usize, region: usize) -> bool {
        let Some(t) = &self.time else {
            return true;
        };
        let home = self.regions[region].home;
        if home.0 as usize == node || t.cfg.planted == Some(SimLeaseFault::HitWithoutLeaseCheck) {
            return true;
        }
        t.liveness[node].lease_valid(home, t.local(node, self.global))
    }

    /// An access was released because its lease had lapsed: it waits for a renewal.
    pub(super) fn start_lease_wait(&mut self, node: usize, region: usize, write: bool) {
        self.report.lease_waits += 1;
        let now = self.local_now(node);
        let home = self.regions[region].home;
        self.note(format!(
            "n{node}: lease on {home} lapsed: {} {} waits for a renewal",
            if write { "write" } else { "read" },
            self.regions[region]
        ));
        if let Some(t) = &mut self.time {
            t.liveness[node].renew_soon(home, now);
            let deadline = now.saturating_add(t.cfg.op_timeout);
            t.lease_waits.push(LeaseWait {
                node,
                region,
                write,
                deadline,
            });
        }
    }

    /// Retries `node`'s accesses waiting for a lease: those whose lease is valid start again;
    /// those past their deadline fail.
    fn retry_lease_waits(&mut self, node: usize) -> Check {
        let Some(t) = &mut self.time else {
            return Ok(());
        };
        if !t.lease_waits.iter().any(|w| w.node == node) {
            return Ok(());
        }
        let (mine, rest): (Vec<LeaseWait>, Vec<LeaseWait>) = std::mem::take(&mut t.lease_waits)
            .into_iter()
            .partition(|w| w.node == node);
        t.lease_waits = rest;
        let now = self.local_now(node);
        for w in mine {
            if self.lease_ok(node, w.region) {
                let MapState::Mapped(cell) = &self.maps[node][w.region] else {
                    return Err(self.fail(format!(
                        "n{node}: {} unmapped while an access waited for its lease",
                        self.regions[w.region]
                    )));
                };
                let cell: std::sync::Arc<RegionCell<SimValue>> = cell.clone();
                let op = self.next_op;
                self.next_op += 1;
                let kind = if w.write { OpKind::Write } else { OpKind::Read };
                self.start_access(node, w.region, op, kind, &cell)?;
            } else if now >= w.deadline {
                self.report.lease_timeouts += 1;
                self.progress_at = self.global;
                self.note(format!(
                    "n{node}: {} of {} failed: no lease from its home within the op timeout",
                    if w.write { "write" } else { "read" },
                    self.regions[w.region]
                ));
            } else {
                let home = self.regions[w.region].home;
                if let Some(t) = &mut self.time {
                    t.liveness[node].renew_soon(home, now);
                    t.lease_waits.push(w);
                }
            }
        }
        Ok(())
    }

    /// Whether `node` has an access waiting for a lease on `region`.
    pub(super) fn lease_waiting(&self, node: usize, region: usize) -> bool {
        self.time.as_ref().is_some_and(|t| {
            t.lease_waits
                .iter()
                .any(|w| w.node == node && w.region == region)
        })
    }

    /// How many accesses of `node` wait for a lease.
    pub(super) fn lease_waits_of(&self, node: usize) -> usize {
        self.time.as_ref().map_or(0, |t| {
            t.lease_waits.iter().filter(|w| w.node == node).count()
        })
    }

    /// Whether `node` could serve a read hit on `region` now, and if so that it would read
    /// the latest value the model allows while nobody else writes.
    fn probe(&mut self, node: usize, region: usize) -> Check {
        if self.is_paused(node) {
            return Ok(());
        }
        let MapState::Mapped(cell) = &self.maps[node][region] else {
            return Ok(());
        };
        let (read_ok, _) = cell.word().permissions();
        if !read_ok || cell.word().in_progress().writer || !self.lease_ok(node, region) {
            return Ok(());
        }
        let Some(value) = cell.try_read().map(|g| g.value) else {
            return Ok(());
        };
        self.report.stale_checks += 1;
        let id = self.regions[region];
        let m = &self.model[region];
        if let Some(w) = m.writer
            && w != node
        {
            return Err(self.fail(format!(
                "n{node} could serve a read hit on {id} while n{w} writes it"
            )));
        }
        if value != m.value {
            let latest = m.value;
            return Err(self.fail(format!(
                "stale read: n{node} could serve a read hit on {id} with value {value}, but the latest value is {latest}"
            )));
        }
        Ok(())
    }

    /// Probes every node on `region`.
    pub(super) fn probe_region(&mut self, region: usize) -> Check {
        if self.time.is_none() {
            return Ok(());
        }
        for node in 0..self.cfg.nodes {
            self.probe(node, region)?;
        }
        Ok(())
    }

    /// Probes every node on every region.
    fn probe_all(&mut self) -> Check {
        if self.time.is_none() {
            return Ok(());
        }
        for region in 0..self.regions.len() {
            self.probe_region(region)?;
        }
        Ok(())
    }

    /// Cuts the group of `size` nodes from `first` (at most all but one) off from the rest
    /// for `ms` milliseconds. Of the frames in flight across the cut, `keep` per link still
    /// arrive (late).
    pub(super) fn cut(&mut self, first: usize, size: usize, ms: u64, keep: usize) {
        let n = self.cfg.nodes;
        let Some(t) = &mut self.time else {
            return;
        };
        let size = 1 + size % (n - 1);
        let mut members = vec![false; n];
        for i in 0..size {
            members[(first + i) % n] = true;
        }
        let until = self.global + ms.max(1) * MS;
        let group: Vec<String> = (0..n)
            .filter(|&i| members[i])
            .map(|i| format!("n{i}"))
            .collect();
        t.cuts.push(Cut {
            members: members.clone(),
            until,
        });
        self.report.cuts += 1;
        self.note(format!("cut: {} off for {ms} ms", group.join(",")));
        for a in 0..n {
            for b in 0..n {
                if a != b && members[a] != members[b] {
                    self.break_link(a * n + b, keep.wrapping_add(a + b));
                }
            }
        }
    }

    /// Crashes `node` (no durability): everything it held is gone (its regions, its copies
    /// and the writes only they had, its operations, its sessions); it stays down for `ms`
    /// milliseconds and then runs as a new incarnation, which its peers learn at the next
    /// handshake (as a restart: [`crate::engine::Engine::peer_restarted`]).
    pub(super) fn crash(&mut self, node: usize, ms: u64) -> Check {
        if self.time.is_none() {
            return Ok(());
        }
        let n = self.cfg.nodes;
        self.report.crashes += 1;
        // The program dies with its accesses and operations.
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].node != node {
                i += 1;
                continue;
            }
            let h = self.held.swap_remove(i);
            if !h.orphaned {
                let m = &mut self.model[h.region];
                if h.wrote.is_some() {
                    m.writer = None;
                } else {
                    m.readers -= 1;
                }
            }
        }
        self.pending.retain(|_, p| p.node != node);
        if let Some(t) = &mut self.time {
            t.lease_waits.retain(|w| w.node != node);
        }
        for m in self.maps[node].iter_mut() {
            *m = MapState::Unmapped;
        }
        // Its regions die with it.
        let mut lost = Vec::new();
        for r in 0..self.regions.len() {
            if self.regions[r].home.0 as usize == node && !self.model[r].lost {
                self.model[r].lost = true;
                self.report.regions_lost += 1;
                lost.push(self.regions[r].to_string());
            }
        }
        self.drop_work_at(node);
        self.engines[node] = Engine::new(NodeId(node as u32), engine_config(&self.cfg));
        // A new incarnation: a greater epoch towards every peer, nothing known of them.
        let epoch = (0..n)
            .map(|p| self.mine[node * n + p].epoch)
            .max()
            .unwrap_or(1)
            + 1;
        for peer in (0..n).filter(|&p| p != node) {
            self.mine[node * n + peer] = SessionEpoch::new(epoch, 0);
            self.known[node * n + peer] = None;
            self.sessions[node * n + peer].restart_send();
            let to_node = &mut self.sessions[peer * n + node];
            to_node.set_recv(None);
            to_node.disconnect();
        }
        let now = self.local_now(node);
        let until = self.global + ms.max(1) * MS;
        if let Some(t) = &mut self.time {
            let mut l = Liveness::new(t.cfg.liveness);
            for peer in (0..n).filter(|&p| p != node) {
                l.add_peer(NodeId(peer as u32), now);
            }
            t.liveness[node] = l;
            t.paused_until[node] = t.paused_until[node].max(until);
        }
        self.note(format!(
            "n{node} crashed (regions lost: {}); restarts as incarnation {epoch} in {ms} ms",
            if lost.is_empty() {
                "none".to_string()
            } else {
                lost.join(", ")
            }
        ));
        Ok(())
    }

    /// Pauses `node` for `ms` milliseconds.
    pub(super) fn pause(&mut self, node: usize, ms: u64) {
        let until = self.global + ms.max(1) * MS;
        let Some(t) = &mut self.time else {
            return;
        };
        t.paused_until[node] = t.paused_until[node].max(until);
        self.report.pauses += 1;
        self.note(format!("n{node} paused for {ms} ms"));
    }

    /// Ends every cut and pause (the quiescence phase).
    pub(super) fn heal_all(&mut self) {
        let now = self.global;
        if let Some(t) = &mut self.time {
            t.cuts.clear();
            for p in t.paused_until.iter_mut() {
                *p = (*p).min(now);
            }
            t.healed_at = Some(now);
        }
    }

    /// Whether every pair of nodes agrees on the sessions between them (every fence learned).
    pub(super) fn sessions_settled(&self) -> bool {
        let n = self.cfg.nodes;
        (0..n).all(|a| {
            (0..n)
                .filter(|&b| b != a)
                .all(|b| self.known[b * n + a] == Some(self.mine[a * n + b]))
        })
    }

    /// The earliest time a frame in flight may arrive.
    pub(super) fn next_due(&self) -> Option<u64> {
        self.sessions.iter().filter_map(|s| s.next_due()).min()
    }
}
