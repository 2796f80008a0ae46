//! The transactional simulator: every node's [`CommitMachine`] in one thread, with the
//! network, the write-ahead logs, the clock and the faults owned by the simulator.
//!
//! Each node has a commit machine (the one crl-net drives), its regions (a model of what the
//! engine keeps: contents, the node holding each exclusively, holds of prepared
//! transactions) and a write-ahead log whose appends are durable only once a *sync* step
//! takes them (disks stall at random). Links are per-pair FIFO queues, as crl's sessions
//! deliver while both ends live; a step delivers the head of *any* link, so links interleave
//! in every order. Writers start transactions that write (and sometimes delete) one to three
//! regions on any homes, with a value unique to the transaction, through the machine's three
//! commit paths: one phase (everything at the writer), two-phase with the writer as
//! coordinator, and handed to a deciding home (the writer homes none of it). Coordinators
//! time their votes out; every node re-sends what may be lost once per virtual second.
//!
//! **Crashes** stop a node at any step: its unsynced appends are lost (a random prefix of
//! them reached the disk first), what was in flight to and from it is lost, and it restarts
//! later with a new epoch, its state replayed from its log ([`DurableState`]), asking about
//! its in-doubt transactions at once; its peers learn the new incarnation as crl-net's driver
//! does (the regions the old one held are forgotten once nothing prepared there waits on it).
//!
//! After the steps the simulator **heals** (restarts every node, no more crashes or new
//! transactions) and runs until nothing is pending, then checks:
//! - every acknowledged commit is durable at its coordinator (it survived every crash);
//! - **atomicity**: every home of a transaction applied it (a `Commit`, or a `Prepare` and a
//!   `Decide { commit: true }` in its durable log) exactly when its coordinator's log holds
//!   its commit; a transaction reported aborted is committed nowhere;
//! - **serializability** of the committed transactions: each region's contents, in memory and
//!   replayed from its home's log, are those of the last committed transaction that held it
//!   (locks order the transactions on a region; a committed delete leaves it absent);
//! - **liveness**: after the faults heal, everything completes (no vote, decision, inquiry
//!   or hand-over left pending, no writer left waiting), within a bound.
//!
//! [`CommitBug`] plants the 2PC bugs these checks must catch. A failure names the seed, the
//! step and the last events; [`shrink`] finds the shortest run of a seed that still fails.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::commit::{
    CommitBug, CommitMachine, CommitOutput, CommitRegions, CommitTimer, LogDone, Outcome,
};
use crate::liveness::Timestamp;
use crate::region::{NodeId, RegionId};
use crate::wal::{DurableState, LogRecord};
use crate::wire::{Message, TxImage};

/// What the transactional simulator runs.
#[derive(Clone, Debug)]
pub struct CommitSimConfig {
    /// Nodes (2 to 8); every node writes and homes regions.
    pub nodes: u32,
    /// Regions homed at each node.
    pub regions_per_node: u32,
    /// Steps before healing.
    pub steps: u64,
    /// Crashes per million steps.
    pub crash_per_million: u32,
    /// Percentage of transactions that delete one of their regions.
    pub delete_percent: u32,
    /// Syncs per million that fail (a failed or hung fsync): a random prefix of the batch
    /// reached the disk anyway, every pending append fails, the store accepts no more, and
    /// the node is restarted soon after (a failed store's node must be).
    pub store_failure_per_million: u32,
    /// A decider's wait for votes.
    pub vote_timeout: Duration,
    /// A coordinator's wait for votes.
    pub op_timeout: Duration,
    /// A planted bug (tests of the checks).
    pub bug: CommitBug,
}

impl Default for CommitSimConfig {
    fn default() -> Self {
        CommitSimConfig {
            nodes: 4,
            regions_per_node: 6,
            steps: 20_000,
            crash_per_million: 2_000,
            delete_percent: 10,
            store_failure_per_million: 0,
            vote_timeout: Duration::from_millis(60),
            op_timeout: Duration::from_millis(150),
            bug: CommitBug::None,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitSimReport {
    /// Steps, healing included.
    pub steps: u64,
    /// Transactions started.
    pub started: u64,
    /// Transactions acknowledged committed to their writer.
    pub acked: u64,
    /// Transactions reported aborted to their writer.
    pub aborted: u64,
    /// Transactions whose writer crashed before it learned the outcome.
    pub unknown: u64,
    /// Transactions committed (durable at their coordinator).
    pub committed: u64,
    /// Two-phase commits started (coordinated by the writer, or handed to a home).
    pub two_phase: u64,
    /// Messages delivered.
    pub messages: u64,
    /// Records made durable.
    pub records: u64,
    /// Crashes.
    pub crashes: u64,
    /// Steps the healing took.
    pub heal_steps: u64,
}

impl CommitSimReport {
    /// Adds `other`'s counts to these (the longest healing is kept).
    pub fn add(&mut self, other: &CommitSimReport) {
        self.steps += other.steps;
        self.started += other.started;
        self.acked += other.acked;
        self.aborted += other.aborted;
        self.unknown += other.unknown;
        self.committed += other.committed;
        self.two_phase += other.two_phase;
        self.messages += other.messages;
        self.records += other.records;
        self.crashes += other.crashes;
        self.heal_steps = self.heal_steps.max(other.heal_steps);
    }
}

/// A failed check.
#[derive(Clone, Debug)]
pub struct CommitSimFailure {
    /// The seed.
    pub seed: u64,
    /// The steps the run was given.
    pub steps: u64,
    /// The step it failed at.
    pub step: u64,
    /// What failed.
    pub reason: String,
    /// The last events.
    pub trace: Vec<String>,
}

impl fmt::Display for CommitSimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "commit simulation failed (seed {}, {} steps) at step {}: {}",
            self.seed, self.steps, self.step, self.reason
        )?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// The regions of one node: what the engine keeps, as far as commits see it.
#[derive(Clone, Debug, Default)]
struct Regions {
    contents: BTreeMap<RegionId, Vec<u8>>,
    holder: BTreeMap<RegionId, NodeId>,
    /// Holds per region, counted as the engine counts them (two prepared transactions of a
    /// writer's old and new incarnation may hold one region).
    held: BTreeMap<RegionId, u32>,
}

impl CommitRegions for Regions {
    fn holds_exclusive(&self, region: RegionId, node: NodeId) -> bool {
        self.contents.contains_key(&region) && self.holder.get(&region) == Some(&node)
    }
    fn hold(&mut self, region: RegionId) -> Result<(), String> {
        *self.held.entry(region).or_default() += 1;
        Ok(())
    }
    fn release_hold(&mut self, region: RegionId) {
        if let Some(n) = self.held.get_mut(&region) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&region);
            }
        }
    }
    fn install_master(&mut self, region: RegionId, bytes: &[u8]) -> Result<(), String> {
        match self.contents.get_mut(&region) {
            Some(c) => {
                *c = bytes.to_vec();
                Ok(())
            }
            None => Err(format!("{region} does not exist")),
        }
    }
    fn delete_committed(&mut self, region: RegionId) {
        self.contents.remove(&region);
        self.holder.remove(&region);
    }
}

/// What a durable append completes.
#[derive(Clone, Debug)]
enum Completion {
    Machine(LogDone),
    /// A one-phase commit of the writer's.
    OnePhase(u64),
    Nothing,
}

/// A transaction the writer waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    OnePhase,
    Coordinated { began: Timestamp },
    Handed,
}

struct Node {
    up: bool,
    epoch: u64,
    machine: CommitMachine,
    regions: Regions,
    durable: Vec<LogRecord>,
    /// `durable` applied: what a restart recovers.
    state: DurableState,
    /// The regions of each transaction prepared here (to see what a `Decide` touches).
    prepares: BTreeMap<u64, Vec<RegionId>>,
    /// The next region `seq` this home gives out.
    next_seq: u64,
    pending: VecDeque<(LogRecord, Completion)>,
    /// The disk takes nothing before this.
    stalled_until: Timestamp,
    /// The store failed: every append fails until the node restarts, which it does at this
    /// time.
    failed_until: Option<Timestamp>,
    waiting: BTreeMap<u64, Path>,
    timers: Vec<(Timestamp, CommitTimer)>,
    /// Peers whose new incarnation waits for what they wrote here to be decided.
    restarting: BTreeSet<NodeId>,
    next_resend: Timestamp,
    down_until: Timestamp,
}

/// A transaction, as the simulator knows it.
#[derive(Clone, Debug)]
struct Tx {
    writer: NodeId,
    /// Who logs the decision: the writer, or the deciding home it handed it to.
    coordinator: NodeId,
    writes: Vec<RegionId>,
    deletes: Vec<RegionId>,
    outcome: Option<Result<(), String>>,
    unknown: bool,
}

impl Tx {
    fn regions(&self) -> impl Iterator<Item = RegionId> + '_ {
        self.writes.iter().chain(&self.deletes).copied()
    }
    fn homes(&self) -> BTreeSet<NodeId> {
        self.regions().map(|r| r.home).collect()
    }
}

const TRACE: usize = 40;

struct Sim {
    config: CommitSimConfig,
    rng: SmallRng,
    now: Timestamp,
    step: u64,
    nodes: Vec<Node>,
    links: BTreeMap<(NodeId, NodeId), VecDeque<Message>>,
    /// The coherence model: who holds each region for which transaction.
    locks: BTreeMap<RegionId, (NodeId, u64)>,
    /// Regions a transaction deletes (or deleted): never locked again.
    retired: BTreeSet<RegionId>,
    /// The transactions that held each region, in lock order.
    history: BTreeMap<RegionId, Vec<u64>>,
    /// Every region ever created.
    created: BTreeSet<RegionId>,
    txs: BTreeMap<u64, Tx>,
    report: CommitSimReport,
    trace: VecDeque<String>,
    seed: u64,
    /// A check that failed during a step.
    failed: Option<CommitSimFailure>,
}

fn value(txid: u64) -> Vec<u8> {
    txid.to_le_bytes().to_vec()
}

const INITIAL: [u8; 8] = [0; 8];

/// Runs the transactional simulator with `seed`.
pub fn run(config: &CommitSimConfig, seed: u64) -> Result<CommitSimReport, CommitSimFailure> {
    let mut sim = Sim::new(config.clone(), seed);
    sim.run().map(|()| sim.report.clone())
}

/// The shortest run of `seed` (fewest steps before healing) that still fails, if the run
/// with `config.steps` fails.
pub fn shrink(config: &CommitSimConfig, seed: u64) -> Option<CommitSimFailure> {
    let mut failure = run(config, seed).err()?;
    let (mut lo, mut hi) = (0, config.steps);
    while lo + 1 < hi {
        let mid = lo + (hi - lo) / 2;
        let c = CommitSimConfig {
            steps: mid,
            ..config.clone()
        };
        match run(&c, seed) {
            Err(f) => {
                hi = mid;
                failure = f;
            }
            Ok(_) => lo = mid,
        }
    }
    Some(failure)
}

impl Sim {
    fn new(config: CommitSimConfig, seed: u64) -> Sim {
        let nodes = config.nodes.clamp(2, 8);
        let mut sim = Sim {
            rng: SmallRng::seed_from_u64(seed),
            now: Timestamp::from_nanos(1),
            step: 0,
            nodes: Vec::new(),
            links: BTreeMap::new(),
            locks: BTreeMap::new(),
            retired: BTreeSet::new(),
            history: BTreeMap::new(),
            created: BTreeSet::new(),
            txs: BTreeMap::new(),
            report: CommitSimReport::default(),
            trace: VecDeque::new(),
            seed,
            failed: None,
            config,
        };
        for n in 0..nodes {
            let id = NodeId(n);
            let mut machine = CommitMachine::new(id, 1, sim.config.vote_timeout);
            machine.plant(sim.config.bug);
            sim.nodes.push(Node {
                up: true,
                epoch: 1,
                machine,
                regions: Regions::default(),
                durable: Vec::new(),
                state: DurableState::default(),
                prepares: BTreeMap::new(),
                next_seq: 2,
                pending: VecDeque::new(),
                stalled_until: Timestamp::ZERO,
                failed_until: None,
                waiting: BTreeMap::new(),
                timers: Vec::new(),
                restarting: BTreeSet::new(),
                next_resend: Timestamp::from_nanos(1_000_000_000),
                down_until: Timestamp::ZERO,
            });
            for _ in 0..sim.config.regions_per_node.max(1) {
                sim.create(id);
            }
        }
        sim
    }

    /// A new region at `home`, created durably (before anything else happens there).
    fn create(&mut self, home: NodeId) {
        let n = self.node(home);
        let region = RegionId::new(home, n.next_seq);
        n.next_seq += 1;
        n.regions.contents.insert(region, INITIAL.to_vec());
        let record = LogRecord::Create {
            region,
            fingerprint: 1,
            type_name: "SimRegion".into(),
            bytes: INITIAL.to_vec(),
        };
        n.state.apply(record.clone());
        n.durable.push(record);
        self.created.insert(region);
    }

    /// The regions `record` at `at` touches.
    fn touches(&self, at: NodeId, record: &LogRecord) -> Vec<RegionId> {
        match record {
            LogRecord::Create { region, .. } | LogRecord::Delete { region } => vec![*region],
            LogRecord::Commit {
                writes, deletes, ..
            }
            | LogRecord::Prepare {
                writes, deletes, ..
            } => writes
                .iter()
                .map(|(r, _)| *r)
                .chain(deletes.iter().copied())
                .collect(),
            LogRecord::Decide { txid, .. } => self.nodes[at.0 as usize]
                .prepares
                .get(txid)
                .cloned()
                .unwrap_or_default(),
            LogRecord::Forget { .. } => Vec::new(),
        }
    }

    fn note(&mut self, event: String) {
        if self.trace.len() == TRACE {
            self.trace.pop_front();
        }
        self.trace.push_back(format!(
            "[{} {} ms] {event}",
            self.step,
            self.now.as_nanos() / 1_000_000
        ));
    }

    fn fail(&self, reason: String) -> CommitSimFailure {
        CommitSimFailure {
            seed: self.seed,
            steps: self.config.steps,
            step: self.step,
            reason,
            trace: self.trace.iter().cloned().collect(),
        }
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.0 as usize]
    }

    fn run(&mut self) -> Result<(), CommitSimFailure> {
        while self.step < self.config.steps {
            self.tick();
            self.random_step();
            if let Some(f) = self.failed.take() {
                return Err(f);
            }
        }
        self.heal()?;
        self.check()
    }

    /// Time moves on; due timers fire, periodic re-sends go out, restarts happen.
    fn tick(&mut self) {
        self.step += 1;
        self.report.steps += 1;
        self.now = self.now.saturating_add(Duration::from_millis(1));
        let now = self.now;
        for i in 0..self.nodes.len() {
            let id = NodeId(i as u32);
            if !self.nodes[i].up {
                continue;
            }
            let due: Vec<CommitTimer> = {
                let n = &mut self.nodes[i];
                let (due, later): (Vec<_>, Vec<_>) =
                    n.timers.drain(..).partition(|(at, _)| *at <= now);
                n.timers = later;
                due.into_iter().map(|(_, t)| t).collect()
            };
            for t in due {
                self.drive(id, |m, _| m.timer(t));
            }
            let timed_out: Vec<u64> = self.nodes[i]
                .waiting
                .iter()
                .filter(|(_, p)| {
                    matches!(p, Path::Coordinated { began } if now.saturating_since(*began) > self.config.op_timeout)
                })
                .map(|(&t, _)| t)
                .collect();
            for txid in timed_out {
                if self.drive(id, |m, _| m.votes_timed_out(txid)) {
                    self.finish(id, txid, Outcome::Aborted("votes timed out".into()));
                }
            }
            if self.nodes[i].next_resend <= now {
                self.nodes[i].next_resend = now.saturating_add(Duration::from_secs(1));
                self.drive(id, |m, _| m.resends(now));
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].up && self.nodes[i].failed_until.is_some_and(|t| t <= now) {
                self.crash(NodeId(i as u32));
            }
        }
        self.release_restarted();
    }

    fn random_step(&mut self) {
        let roll = self.rng.random_range(0..1_000_000u32);
        if roll < self.config.crash_per_million {
            let i = self.rng.random_range(0..self.nodes.len());
            if self.nodes[i].up {
                self.crash(NodeId(i as u32));
            }
            return;
        }
        match self.rng.random_range(0..100u32) {
            0..=49 => self.deliver_any(),
            50..=74 => {
                let i = self.rng.random_range(0..self.nodes.len());
                self.sync(NodeId(i as u32));
            }
            75..=77 => {
                // A disk stall of up to 300 ms.
                let i = self.rng.random_range(0..self.nodes.len());
                let ms = self.rng.random_range(1..300);
                self.nodes[i].stalled_until = self.now.saturating_add(Duration::from_millis(ms));
            }
            78..=79 => self.restart_due(),
            _ => {
                let i = self.rng.random_range(0..self.nodes.len());
                self.start(NodeId(i as u32));
            }
        }
    }

    /// Runs `f` on `id`'s machine with its regions, then carries out what it emitted.
    fn drive<R>(&mut self, id: NodeId, f: impl FnOnce(&mut CommitMachine, &mut Regions) -> R) -> R {
        let n = &mut self.nodes[id.0 as usize];
        let r = f(&mut n.machine, &mut n.regions);
        self.pump(id);
        r
    }

    fn pump(&mut self, id: NodeId) {
        while let Some(output) = self.nodes[id.0 as usize].machine.poll() {
            match output {
                CommitOutput::Send { to, msg } => {
                    if self.nodes[to.0 as usize].up && to != id {
                        self.links.entry((id, to)).or_default().push_back(msg);
                    }
                }
                CommitOutput::Append { record, done } => {
                    if let LogRecord::Prepare { txid, .. } = &record {
                        let regions = self.touches(id, &record);
                        self.node(id).prepares.insert(*txid, regions);
                    }
                    let c = done.map_or(Completion::Nothing, Completion::Machine);
                    self.node(id).pending.push_back((record, c));
                }
                CommitOutput::Timer { timer, at } => self.node(id).timers.push((at, timer)),
                CommitOutput::Outcome { txid, outcome } => self.finish(id, txid, outcome),
                CommitOutput::Resolved => {}
            }
        }
    }

    /// The writer `id` learns how `txid` ended.
    fn finish(&mut self, id: NodeId, txid: u64, outcome: Outcome) {
        let Some(path) = self.node(id).waiting.remove(&txid) else {
            return;
        };
        let tx = self.txs[&txid].clone();
        let result = match &outcome {
            Outcome::Committed => Ok(()),
            Outcome::Aborted(why) => Err(why.clone()),
            Outcome::LogFailed(why) => {
                // The commit record may or may not be on the disk: the outcome is unknown
                // to the writer (`Error::maybe_committed`), and the node restarts soon.
                self.note(format!("{id} learns {txid:#x}: log failed ({why})"));
                self.outcome_unknown(id, txid);
                let _ = path;
                return;
            }
        };
        self.note(format!("{id} learns {txid:#x}: {result:?}"));
        if result.is_ok() {
            self.report.acked += 1;
            if path != Path::Handed {
                // The writer's own part was written in place; it stays.
                let n = self.node(id);
                for &r in tx.writes.iter().filter(|r| r.home == id) {
                    n.regions.contents.insert(r, value(txid));
                }
                for &r in tx.deletes.iter().filter(|r| r.home == id) {
                    n.regions.contents.remove(&r);
                }
            }
        } else {
            self.report.aborted += 1;
        }
        self.txs.get_mut(&txid).expect("known").outcome = Some(result);
        for r in tx.regions() {
            if self.locks.get(&r) == Some(&(id, txid)) {
                self.locks.remove(&r);
            }
            let home = &mut self.nodes[r.home.0 as usize];
            if home.up && home.regions.holder.get(&r) == Some(&id) {
                home.regions.holder.remove(&r);
            }
        }
    }

    /// Writer `id` will not learn how `txid` ended (its log failed, or it crashed): the
    /// outcome is unknown, and its locks go (what the homes still hold stays held).
    fn outcome_unknown(&mut self, id: NodeId, txid: u64) {
        let tx = self.txs.get_mut(&txid).expect("known");
        tx.unknown = true;
        let regions: Vec<RegionId> = tx.regions().collect();
        for r in regions {
            if self.locks.get(&r) == Some(&(id, txid)) {
                self.locks.remove(&r);
            }
        }
    }

    fn deliver_any(&mut self) {
        let live: Vec<(NodeId, NodeId)> = self
            .links
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(&k, _)| k)
            .collect();
        if live.is_empty() {
            return;
        }
        let (from, to) = live[self.rng.random_range(0..live.len())];
        self.deliver(from, to);
    }

    fn deliver(&mut self, from: NodeId, to: NodeId) {
        let Some(msg) = self.links.get_mut(&(from, to)).and_then(|q| q.pop_front()) else {
            return;
        };
        self.report.messages += 1;
        self.note(format!("{from} -> {to}: {msg:?}"));
        let now = self.now;
        self.drive(to, |m, regions| m.handle(now, regions, from, msg));
    }

    /// The disk of `id` makes a prefix of its pending appends durable, then completes them.
    fn sync(&mut self, id: NodeId) {
        let now = self.now;
        let n = self.node(id);
        if !n.up || n.pending.is_empty() || n.stalled_until > now {
            return;
        }
        if n.failed_until.is_some() {
            // A failed store: nothing more is written, every append fails.
            let failed: Vec<Completion> = n.pending.drain(..).map(|(_, c)| c).collect();
            for c in failed {
                self.complete(id, c, Err("the store failed".into()));
            }
            return;
        }
        let len = n.pending.len();
        if self.rng.random_range(0..1_000_000u32) < self.config.store_failure_per_million {
            // The fsync fails: a prefix of the batch may have reached the disk anyway, and
            // every append of it fails.
            let keep = self.rng.random_range(0..=len);
            let restart_in = Duration::from_millis(self.rng.random_range(1..200));
            let batch: Vec<(LogRecord, Completion)> = self.node(id).pending.drain(..).collect();
            self.note(format!(
                "{id}'s store fails ({keep} of {len} records reached the disk)"
            ));
            self.node(id).failed_until = Some(now.saturating_add(restart_in));
            let mut failed = Vec::new();
            for (i, (record, c)) in batch.into_iter().enumerate() {
                if i < keep {
                    let n = self.node(id);
                    n.state.apply(record.clone());
                    n.durable.push(record);
                }
                failed.push(c);
            }
            for c in failed {
                self.complete(id, c, Err("the store failed".into()));
            }
            return;
        }
        let k = 1 + self.rng.random_range(0..len);
        let batch: Vec<(LogRecord, Completion)> = self.node(id).pending.drain(..k).collect();
        let mut done = Vec::new();
        let mut touched = BTreeSet::new();
        for (record, c) in batch {
            self.report.records += 1;
            if let LogRecord::Commit { txid, .. } = &record {
                self.note(format!("{id} commit record of {txid:#x} durable"));
            }
            touched.extend(self.touches(id, &record));
            let n = self.node(id);
            n.state.apply(record.clone());
            n.durable.push(record);
            done.push(c);
        }
        for c in done {
            self.complete(id, c, Ok(()));
        }
        // What this home serves must be what it made durable, for every region no record
        // still on its way to the disk touches: no commit is ever half visible.
        let n = &self.nodes[id.0 as usize];
        if !n.up {
            return;
        }
        let in_flight: BTreeSet<RegionId> = n
            .pending
            .iter()
            .flat_map(|(r, _)| self.touches(id, r))
            .collect();
        for r in touched.difference(&in_flight) {
            let memory = n.regions.contents.get(r);
            let disk = n.state.regions.get(r).map(|s| &s.bytes);
            if memory != disk {
                let reason = format!(
                    "{id} serves {r} as {memory:?} but its log says {disk:?} (a decision applied in part?)"
                );
                self.failed = Some(self.fail(reason));
                return;
            }
        }
    }

    /// An append of `id` completes with `result`.
    fn complete(&mut self, id: NodeId, c: Completion, result: Result<(), String>) {
        match c {
            Completion::Machine(d) => self.drive(id, |m, regions| m.logged(regions, d, result)),
            Completion::OnePhase(txid) => {
                let outcome = match result {
                    Ok(()) => Outcome::Committed,
                    Err(e) => Outcome::LogFailed(e),
                };
                self.finish(id, txid, outcome)
            }
            Completion::Nothing => {}
        }
    }

    /// Writer `id` starts a transaction on one to three free regions.
    fn start(&mut self, id: NodeId) {
        if !self.nodes[id.0 as usize].up {
            return;
        }
        let free: Vec<RegionId> = self
            .nodes
            .iter()
            .filter(|n| n.up && n.machine.in_doubt().is_empty())
            .flat_map(|n| {
                n.regions.contents.keys().copied().filter(|r| {
                    !n.regions.holder.contains_key(r) && !n.regions.held.contains_key(r)
                })
            })
            .filter(|r| !self.locks.contains_key(r) && !self.retired.contains(r))
            .collect();
        if free.is_empty() {
            return;
        }
        let want = self.rng.random_range(1..=3usize).min(free.len());
        let mut chosen = BTreeSet::new();
        while chosen.len() < want {
            chosen.insert(free[self.rng.random_range(0..free.len())]);
        }
        let Some(txid) = self.nodes[id.0 as usize].machine.next_txid() else {
            return;
        };
        let mut writes: Vec<RegionId> = chosen.into_iter().collect();
        let mut deletes = Vec::new();
        if self.rng.random_range(0..100) < self.config.delete_percent {
            let i = self.rng.random_range(0..writes.len());
            deletes.push(writes.remove(i));
        }
        for &r in writes.iter().chain(&deletes) {
            self.locks.insert(r, (id, txid));
            self.history.entry(r).or_default().push(txid);
            self.nodes[r.home.0 as usize].regions.holder.insert(r, id);
        }
        self.retired.extend(deletes.iter().copied());
        for r in &deletes {
            // A fresh region replaces each one deleted, so transactions go on.
            self.create(r.home);
        }
        self.report.started += 1;
        let mut local_writes = Vec::new();
        let mut local_deletes = Vec::new();
        let mut remote: BTreeMap<NodeId, (Vec<TxImage>, Vec<RegionId>)> = BTreeMap::new();
        for &r in &writes {
            if r.home == id {
                local_writes.push((r, value(txid)));
            } else {
                remote.entry(r.home).or_default().0.push(TxImage {
                    region: r,
                    bytes: value(txid),
                });
            }
        }
        for &r in &deletes {
            if r.home == id {
                local_deletes.push(r);
            } else {
                remote.entry(r.home).or_default().1.push(r);
            }
        }
        let local = !local_writes.is_empty() || !local_deletes.is_empty();
        let coordinator = if local {
            id
        } else {
            *remote.keys().next().expect("some home")
        };
        self.txs.insert(
            txid,
            Tx {
                writer: id,
                coordinator,
                writes,
                deletes,
                outcome: None,
                unknown: false,
            },
        );
        self.note(format!(
            "{id} starts {txid:#x} ({} homes)",
            remote.len() + usize::from(local)
        ));
        let now = self.now;
        let participants: Vec<NodeId> = remote.keys().copied().collect();
        let record = LogRecord::Commit {
            txid,
            writes: local_writes,
            deletes: local_deletes,
            participants: participants.clone(),
        };
        if remote.is_empty() {
            let n = self.node(id);
            n.waiting.insert(txid, Path::OnePhase);
            n.pending.push_back((record, Completion::OnePhase(txid)));
        } else if local {
            self.report.two_phase += 1;
            self.node(id)
                .waiting
                .insert(txid, Path::Coordinated { began: now });
            self.drive(id, |m, _| m.begin_two_phase(txid, vec![record], remote));
        } else {
            self.report.two_phase += 1;
            self.node(id).waiting.insert(txid, Path::Handed);
            let (decider, part) = remote.pop_first().expect("some home");
            let others: Vec<NodeId> = remote.keys().copied().collect();
            self.drive(id, |m, _| {
                m.begin_delegated(now, txid, decider, remote);
                m.hand_over(txid, part, others);
            });
        }
    }

    fn crash(&mut self, id: NodeId) {
        self.report.crashes += 1;
        let keep = {
            let len = self.nodes[id.0 as usize].pending.len();
            self.rng.random_range(0..=len)
        };
        let down_for = Duration::from_millis(self.rng.random_range(1..400));
        let now = self.now;
        let n = self.node(id);
        let reached: Vec<LogRecord> = n.pending.drain(..keep).map(|(r, _)| r).collect();
        for r in &reached {
            n.state.apply(r.clone());
        }
        n.durable.extend(reached);
        n.pending.clear();
        n.up = false;
        n.failed_until = None;
        n.timers.clear();
        n.down_until = now.saturating_add(down_for);
        let lost: Vec<u64> = std::mem::take(&mut n.waiting).into_keys().collect();
        self.links.retain(|&(a, b), _| a != id && b != id);
        for txid in lost {
            self.outcome_unknown(id, txid);
        }
        self.note(format!(
            "{id} crashes ({keep} unsynced records reached the disk)"
        ));
    }

    fn restart_due(&mut self) {
        let now = self.now;
        let due: Vec<NodeId> = (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].up && self.nodes[i].down_until <= now)
            .map(|i| NodeId(i as u32))
            .collect();
        for id in due {
            self.restart(id);
        }
    }

    fn restart(&mut self, id: NodeId) {
        let now = self.now;
        let state = self.nodes[id.0 as usize].state.clone();
        let (vote_timeout, bug) = (self.config.vote_timeout, self.config.bug);
        let n = self.node(id);
        n.epoch += 1;
        n.machine = CommitMachine::new(id, n.epoch, vote_timeout);
        n.machine.plant(bug);
        n.regions = Regions {
            contents: state
                .regions
                .values()
                .map(|r| (r.region, r.bytes.clone()))
                .collect(),
            ..Regions::default()
        };
        n.up = true;
        n.restarting.clear();
        n.next_resend = now.saturating_add(Duration::from_secs(1));
        let in_doubt = state.in_doubt.into_values().collect();
        let coordinating = state
            .coordinating
            .into_iter()
            .map(|(txid, participants)| crate::wal::Coordinating { txid, participants })
            .collect();
        self.note(format!(
            "{id} restarts (epoch {})",
            self.nodes[id.0 as usize].epoch
        ));
        // Recovery asks about what is in doubt at once.
        self.drive(id, |m, _| {
            m.recovered(now, in_doubt, coordinating);
            m.resends(now);
        });
        for i in 0..self.nodes.len() {
            let peer = NodeId(i as u32);
            if peer == id || !self.nodes[i].up {
                continue;
            }
            if self.nodes[i].machine.holding(id) == 0 {
                self.forget(peer, id);
            } else {
                self.nodes[i].restarting.insert(id);
                self.drive(peer, |m, _| m.inquire_after_reset(id));
            }
        }
    }

    /// `at` forgets what `old`'s previous incarnation held, as crl-net's driver does.
    fn forget(&mut self, at: NodeId, old: NodeId) {
        self.node(at).regions.holder.retain(|_, h| *h != old);
        self.drive(at, |m, _| m.peer_restarted(old));
    }

    fn release_restarted(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                continue;
            }
            let done: Vec<NodeId> = self.nodes[i]
                .restarting
                .iter()
                .copied()
                .filter(|&p| self.nodes[i].machine.holding(p) == 0)
                .collect();
            for p in done {
                self.nodes[i].restarting.remove(&p);
                self.forget(NodeId(i as u32), p);
            }
        }
    }

    /// No more crashes or transactions: every node comes back, and everything pending must
    /// complete.
    fn heal(&mut self) -> Result<(), CommitSimFailure> {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                self.restart(NodeId(i as u32));
            }
            self.nodes[i].stalled_until = Timestamp::ZERO;
        }
        self.config.store_failure_per_million = 0;
        let limit = 200_000;
        let start = self.step;
        loop {
            let busy = self.links.values().any(|q| !q.is_empty())
                || self.nodes.iter().any(|n| {
                    !n.pending.is_empty() || !n.machine.is_idle() || !n.waiting.is_empty()
                });
            if !busy {
                self.report.heal_steps = self.step - start;
                return Ok(());
            }
            if self.step - start > limit {
                let what: Vec<String> = self
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| !n.machine.is_idle() || !n.waiting.is_empty())
                    .map(|(i, n)| format!("n{i}: {:?}, waiting {:?}", n.machine, n.waiting))
                    .collect();
                return Err(self.fail(format!(
                    "not everything completed {limit} steps after the faults healed: {}",
                    what.join("; ")
                )));
            }
            self.tick();
            self.restart_due();
            match self.rng.random_range(0..2u32) {
                0 => self.deliver_any(),
                _ => {
                    let i = self.rng.random_range(0..self.nodes.len());
                    self.sync(NodeId(i as u32));
                }
            }
            if let Some(f) = self.failed.take() {
                return Err(f);
            }
        }
    }

    fn applied(&self, home: NodeId, txid: u64) -> bool {
        let log = &self.nodes[home.0 as usize].durable;
        let committed = log
            .iter()
            .any(|r| matches!(r, LogRecord::Commit { txid: t, .. } if *t == txid));
        let prepared = log
            .iter()
            .any(|r| matches!(r, LogRecord::Prepare { txid: t, .. } if *t == txid));
        let decided = log
            .iter()
            .any(|r| matches!(r, LogRecord::Decide { txid: t, commit: true } if *t == txid));
        committed || (prepared && decided)
    }

    fn check(&mut self) -> Result<(), CommitSimFailure> {
        let mut committed = BTreeSet::new();
        for (&txid, tx) in &self.txs {
            let decided = self.applied(tx.coordinator, txid);
            if decided {
                committed.insert(txid);
            }
            if tx.outcome == Some(Ok(())) && !decided {
                return Err(self.fail(format!(
                    "{txid:#x} was acknowledged to {} but its commit is not durable at {}",
                    tx.writer, tx.coordinator
                )));
            }
            if matches!(tx.outcome, Some(Err(_))) && decided {
                return Err(self.fail(format!(
                    "{txid:#x} was reported aborted to {} but {} committed it",
                    tx.writer, tx.coordinator
                )));
            }
            for home in tx.homes() {
                if self.applied(home, txid) != decided {
                    return Err(self.fail(format!(
                        "atomicity: {txid:#x} is {} at its coordinator {} but {} at {home}",
                        if decided {
                            "committed"
                        } else {
                            "not committed"
                        },
                        tx.coordinator,
                        if decided { "not applied" } else { "applied" },
                    )));
                }
            }
        }
        self.report.committed = committed.len() as u64;
        // Each region holds what the last committed transaction that locked it left.
        for i in 0..self.nodes.len() {
            let home = NodeId(i as u32);
            let mut state = DurableState::default();
            for r in &self.nodes[i].durable {
                state.apply(r.clone());
            }
            let created: Vec<RegionId> = self
                .created
                .iter()
                .copied()
                .filter(|r| r.home == home)
                .collect();
            for region in created {
                let last = self
                    .history
                    .get(&region)
                    .and_then(|h| h.iter().rev().find(|t| committed.contains(t)).copied());
                let expected = match last {
                    None => Some(INITIAL.to_vec()),
                    Some(t) if self.txs[&t].deletes.contains(&region) => None,
                    Some(t) => Some(value(t)),
                };
                let in_memory = self.nodes[i].regions.contents.get(&region).cloned();
                let on_disk = state.regions.get(&region).map(|r| r.bytes.clone());
                if in_memory != expected || on_disk != expected {
                    return Err(self.fail(format!(
                        "{region}: the last committed transaction that held it is {last:?}, so it should be {expected:?}; in memory {in_memory:?}, replayed {on_disk:?}"
                    )));
                }
            }
        }
        let unknown = self.txs.values().filter(|t| t.unknown).count() as u64;
        self.report.unknown = unknown;
        Ok(())
    }
}
