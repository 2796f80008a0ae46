//! Committing transactions across homes: two-phase commit as a state machine.
//!
//! [`CommitMachine`] is one node's part in every durable commit that concerns it, in each of
//! its four roles. It does no I/O and reads no clock: it is fed messages, log completions,
//! timer expiries and the time, and it emits [`CommitOutput`]s (messages to send, records to
//! append to the write-ahead log, timers, outcomes for a local waiter), which the driver
//! (crl-net's node, or the simulator) carries out **in order**. The regions themselves are
//! reached through [`CommitRegions`] (the coherence engine, or the simulator's model).
//!
//! - **Coordinator** (a writer that homes part of what it wrote): *voting* (prepares sent,
//!   votes awaited) → *logging* (every vote yes; its own part and the decision are being
//!   appended as one `Commit` record naming the participants) → *deciding* (durable: the
//!   decision is sent to every participant and re-sent until each confirms with `TxDone`)
//!   → *forgotten* (a lazy `Forget` record). A no vote or a timeout aborts:
//!   `TxDecide { commit: false }` to every participant. A failed write of the commit record
//!   decides nothing: the record may still be on the disk, so the transaction stays
//!   undecided (no abort sent, no inquiry answered) until the node restarts and its recovery
//!   finds the record or not.
//! - **Writer** of a transaction that homes none of what it wrote: it prepares the other
//!   homes with a *decider* (the lowest home) as coordinator and hands the decider its part
//!   (`TxCommit`); it awaits the decider's outcome.
//! - **Decider**: collects the votes of a handed-over transaction (bounded by a vote
//!   timeout), logs its part with the decision, installs it, and tells the participants and
//!   the writer.
//! - **Participant**: checks that the writer holds every region concerned exclusively
//!   here (so a copy that went stale is refused), holds them, logs `Prepare` and votes once it
//!   is durable; in doubt until the decision, which it logs (`Decide`), applies (writes and
//!   deletes) and confirms (`TxDone`). After a restart it asks the coordinator
//!   (`TxInquire`) before serving anything.
//!
//! **Inquiries are answered only from what is certain**: a transaction still voting or
//! being logged gets no answer (its decision will be sent anyway); one being decided is
//! committed; one this node has no record of is aborted (presumed abort: a commit is always
//! logged before it is announced), and remembered, so that its `TxCommit` arriving later is
//! refused. States move forward only, each entered before the previous is left, within one
//! call.
//!
//! **Peers are authenticated, not trusted**: a prepare or hand-over must come from the
//! transaction's writer (its id carries the writer's node id), may not be empty, and may not
//! reuse an id in use; votes count only from participants that owe one; decisions only from
//! the coordinator. Early votes and remembered aborts are bounded.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use tracing::{debug, warn};

use crate::engine::Engine;
use crate::liveness::Timestamp;
use crate::region::{NodeId, RegionId};
use crate::wal::{Coordinating, InDoubt, LogRecord};
use crate::wire::{Message, TxImage};

/// The most votes kept for transactions whose `TxCommit` has not arrived yet.
pub const MAX_EARLY_VOTES: usize = 4096;
/// The most transaction ids remembered as aborted by an inquiry (so that a `TxCommit` that
/// arrives after the answer is refused).
pub const MAX_PRESUMED_ABORTS: usize = 65_536;
/// The most participants one `TxCommit` may name.
pub const MAX_PARTICIPANTS: usize = 1024;
/// The largest node id a transaction id can carry (12 bits).
pub const MAX_TXID_NODE: u32 = 4095;

/// The regions a [`CommitMachine`] works on: the coherence engine at run time, a model in the
/// simulator.
pub trait CommitRegions {
    /// Whether `node` holds `region` (homed here) exclusively.
    fn holds_exclusive(&self, region: RegionId, node: NodeId) -> bool;
    /// Keeps `region` from everyone until [`release_hold`](Self::release_hold).
    fn hold(&mut self, region: RegionId) -> Result<(), String>;
    /// Ends a [`hold`](Self::hold).
    fn release_hold(&mut self, region: RegionId);
    /// Installs committed contents as the master copy of `region`.
    fn install_master(&mut self, region: RegionId, bytes: &[u8]) -> Result<(), String>;
    /// Deletes `region`, a committed delete.
    fn delete_committed(&mut self, region: RegionId);
}

impl CommitRegions for Engine {
    fn holds_exclusive(&self, region: RegionId, node: NodeId) -> bool {
        Engine::holds_exclusive(self, region, node)
    }
    fn hold(&mut self, region: RegionId) -> Result<(), String> {
        Engine::hold(self, region).map_err(|e| e.to_string())
    }
    fn release_hold(&mut self, region: RegionId) {
        Engine::release_hold(self, region)
    }
    fn install_master(&mut self, region: RegionId, bytes: &[u8]) -> Result<(), String> {
        Engine::install_master(self, region, bytes).map_err(|e| e.to_string())
    }
    fn delete_committed(&mut self, region: RegionId) {
        Engine::delete_committed(self, region)
    }
}

/// What a durable append was for: fed back with its result to
/// [`CommitMachine::logged`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogDone {
    /// A participant's `Prepare`: vote to `coordinator`.
    Prepared {
        /// The transaction.
        txid: u64,
        /// Who receives the vote.
        coordinator: NodeId,
    },
    /// A participant's `Decide`: confirm to `coordinator`.
    Decided {
        /// The transaction.
        txid: u64,
        /// Who receives the confirmation.
        coordinator: NodeId,
    },
    /// A coordinator's or a decider's `Commit` record: the commit point.
    Committed {
        /// The transaction.
        txid: u64,
    },
}

/// A timer a [`CommitMachine`] asked for; fed back to [`CommitMachine::timer`] when due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitTimer {
    /// A decider's wait for the votes of a handed-over transaction.
    DelegatedVotes(u64),
}

/// How a transaction with a local waiter ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed: durable at every home.
    Committed,
    /// Aborted before the commit point (a no vote, a peer that restarted, a refusal): retry.
    Aborted(String),
    /// The coordinator's own log failed: the commit did not happen, and the log accepts no
    /// more (fatal).
    LogFailed(String),
}

/// One thing for the driver to do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum CommitOutput {
    /// Send `msg` to `to` (on the session, in order with the engine's messages).
    Send {
        /// The receiver.
        to: NodeId,
        /// The message.
        msg: Message,
    },
    /// Append `record` to the write-ahead log; once durable (or failed), feed `done` back to
    /// [`CommitMachine::logged`] (`None`: nobody waits, a lazy record).
    Append {
        /// The record.
        record: LogRecord,
        /// What to feed back.
        done: Option<LogDone>,
    },
    /// Feed `timer` back to [`CommitMachine::timer`] at `at`.
    Timer {
        /// Which.
        timer: CommitTimer,
        /// When.
        at: Timestamp,
    },
    /// The local waiter of `txid` (its coordinator or writer) learns how it ended.
    Outcome {
        /// The transaction.
        txid: u64,
        /// How it ended.
        outcome: Outcome,
    },
    /// A transaction that kept a peer's regions held was decided: the driver checks
    /// [`CommitMachine::holding`] again.
    Resolved,
}

/// A prepared transaction at a participant home, waiting for the decision.
#[derive(Clone, Debug)]
struct Prepared {
    /// Who decides (and is asked after a crash or a fence).
    coordinator: NodeId,
    /// Who shipped the images (holds the regions exclusively until the decision).
    writer: NodeId,
    writes: Vec<(RegionId, Vec<u8>)>,
    /// The regions it deletes if it commits.
    deletes: Vec<RegionId>,
    /// Whether its regions are held until the decision; not for a transaction found in doubt
    /// at recovery (the node serves nothing until it is decided).
    held: bool,
    /// When it was prepared: a decision that does not come is asked for (see `unanswered`).
    since: Timestamp,
}

impl Prepared {
    fn regions(&self) -> impl Iterator<Item = RegionId> + '_ {
        self.writes
            .iter()
            .map(|(r, _)| *r)
            .chain(self.deletes.iter().copied())
    }
}

/// A transaction a writer handed to this node to decide: this node is a participant and the
/// coordinator.
#[derive(Clone, Debug)]
struct Delegated {
    writer: NodeId,
    /// The other homes, prepared with this node as coordinator.
    participants: Vec<NodeId>,
    /// Participants whose vote has not arrived.
    waiting: BTreeSet<NodeId>,
    writes: Vec<(RegionId, Vec<u8>)>,
    deletes: Vec<RegionId>,
}

/// A coordinator's transaction collecting votes.
#[derive(Clone, Debug)]
struct Voting {
    waiting: BTreeSet<NodeId>,
    participants: Vec<NodeId>,
    /// Its own part and the decision, appended once every vote is yes.
    records: Vec<LogRecord>,
}

/// A decision being logged.
#[derive(Clone, Debug)]
enum Logging {
    /// A coordinator's: tell these participants.
    Coordinator { participants: Vec<NodeId> },
    /// A decider's: install this part, tell the participants and the writer.
    Decider(Delegated),
}

/// A writer's transaction handed to a deciding home, waiting for its outcome.
#[derive(Clone, Copy, Debug)]
struct Awaiting {
    decider: NodeId,
    since: Timestamp,
}

/// Votes per transaction (voter, yes, reason), oldest transaction first.
type EarlyVotes = (VecDeque<u64>, BTreeMap<u64, Vec<(NodeId, bool, String)>>);

/// A set of transaction ids that forgets the oldest past `cap` entries.
#[derive(Debug)]
struct BoundedSet {
    cap: usize,
    order: VecDeque<u64>,
    set: BTreeSet<u64>,
}

impl BoundedSet {
    fn new(cap: usize) -> BoundedSet {
        BoundedSet {
            cap,
            order: VecDeque::new(),
            set: BTreeSet::new(),
        }
    }

    fn insert(&mut self, txid: u64) {
        if self.set.insert(txid) {
            self.order.push_back(txid);
            if self.order.len() > self.cap
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }

    fn contains(&self, txid: u64) -> bool {
        self.set.contains(&txid)
    }
}

/// Planted bugs for the simulator's checks (each must be caught); none in production.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CommitBug {
    /// None.
    #[default]
    None,
    /// An inquiry about a transaction whose commit record is being written is answered
    /// "abort" (presumed abort while logging).
    PresumeAbortWhileLogging,
    /// The coordinator sends its decision before the commit record is durable.
    DecideBeforeDurable,
    /// A participant applies a commit's writes but not its deletes.
    SkipDeletes,
}

/// One node's part in durable commits (see the [module docs](self)).
#[derive(Debug)]
pub struct CommitMachine {
    me: NodeId,
    /// The top 32 bits of every transaction id of this incarnation (node id, epoch).
    txid_prefix: u64,
    next_txid: u64,
    vote_timeout: Duration,
    /// Participant: prepared, undecided.
    prepared: BTreeMap<u64, Prepared>,
    /// Participant: decided, the `Decide` record not durable yet (a repeated decision is
    /// confirmed only once it is).
    deciding_here: BTreeSet<u64>,
    /// Participant, after a restart or a peer's reset: in doubt until the coordinator answers.
    in_doubt: BTreeMap<u64, NodeId>,
    /// Coordinator: collecting votes.
    voting: BTreeMap<u64, Voting>,
    /// Coordinator or decider: the decision is being logged.
    logging: BTreeMap<u64, Logging>,
    /// Coordinator or decider: the decision's record failed to be written (it may still be
    /// on the disk): undecided until this node restarts and its recovery decides.
    unknown: BTreeSet<u64>,
    /// Coordinator or decider: committed, waiting for `TxDone` from these nodes.
    deciding: BTreeMap<u64, BTreeSet<NodeId>>,
    /// Decider: transactions handed over by their writers, collecting votes.
    delegated: BTreeMap<u64, Delegated>,
    /// Decider: votes that arrived before their writer's `TxCommit` (bounded), oldest first.
    early_votes: EarlyVotes,
    /// Transactions answered "abort" to an inquiry while this node had no record of them.
    presumed_aborted: BoundedSet,
    /// Writer: transactions handed to a deciding home, waiting for the outcome.
    awaiting: BTreeMap<u64, Awaiting>,
    bug: CommitBug,
    out: VecDeque<CommitOutput>,
}

impl CommitMachine {
    /// The machine of node `me` in incarnation `epoch`; a decider waits `vote_timeout` for
    /// the votes of a handed-over transaction.
    pub fn new(me: NodeId, epoch: u64, vote_timeout: Duration) -> CommitMachine {
        let txid_prefix = (u64::from(me.0.min(MAX_TXID_NODE)) << 20) | (epoch & 0xf_ffff);
        CommitMachine {
            me,
            txid_prefix,
            next_txid: (txid_prefix << 32) | 1,
            vote_timeout,
            prepared: BTreeMap::new(),
            deciding_here: BTreeSet::new(),
            in_doubt: BTreeMap::new(),
            voting: BTreeMap::new(),
            logging: BTreeMap::new(),
            unknown: BTreeSet::new(),
            deciding: BTreeMap::new(),
            delegated: BTreeMap::new(),
            early_votes: (VecDeque::new(), BTreeMap::new()),
            presumed_aborted: BoundedSet::new(MAX_PRESUMED_ABORTS),
            awaiting: BTreeMap::new(),
            bug: CommitBug::None,
            out: VecDeque::new(),
        }
    }

    /// Plants a bug (tests of the simulator's checks only).
    #[doc(hidden)]
    pub fn plant(&mut self, bug: CommitBug) {
        self.bug = bug;
    }

    /// The next thing to do, in order.
    pub fn poll(&mut self) -> Option<CommitOutput> {
        self.out.pop_front()
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        self.out.push_back(CommitOutput::Send { to, msg });
    }

    fn decide(&mut self, to: NodeId, txid: u64, commit: bool) {
        self.send(to, Message::TxDecide { txid, commit });
    }

    fn outcome(&mut self, txid: u64, outcome: Outcome) {
        self.out.push_back(CommitOutput::Outcome { txid, outcome });
    }

    /// A new transaction id: this node's id, 20 bits of its epoch, and a counter; `None`
    /// once the incarnation has used the counter's 2^32 - 1 ids (the next would carry another
    /// epoch's bits and could collide with a later incarnation's).
    pub fn next_txid(&mut self) -> Option<u64> {
        let txid = self.next_txid;
        self.next_txid = self.next_txid.saturating_add(1);
        (txid >> 32 == self.txid_prefix).then_some(txid)
    }

    /// Moves the transaction id counter to `txid` (tests of running out of ids).
    #[doc(hidden)]
    pub fn skip_txids_to(&mut self, txid: u64) {
        self.next_txid = txid;
    }

    /// The node whose transaction `txid` is (its writer).
    pub fn writer_of(txid: u64) -> NodeId {
        NodeId((txid >> 52) as u32)
    }

    /// Registers what recovery found: prepared transactions in doubt, and committed ones
    /// whose participants may not know yet.
    pub fn recovered(
        &mut self,
        now: Timestamp,
        in_doubt: Vec<InDoubt>,
        coordinating: Vec<Coordinating>,
    ) {
        for d in in_doubt {
            self.in_doubt.insert(d.txid, d.coordinator);
            self.prepared.insert(
                d.txid,
                Prepared {
                    coordinator: d.coordinator,
                    writer: d.coordinator,
                    writes: d.writes,
                    deletes: d.deletes,
                    held: false,
                    since: now,
                },
            );
        }
        for c in coordinating {
            self.deciding
                .insert(c.txid, c.participants.into_iter().collect());
        }
    }

    /// The transactions in doubt here, with their coordinators.
    pub fn in_doubt(&self) -> Vec<(u64, NodeId)> {
        self.in_doubt.iter().map(|(&t, &c)| (t, c)).collect()
    }

    /// How many undecided transactions here were written by `writer` (prepared here, or
    /// handed here to decide, including while the decision record is written): until they are decided, the regions they wrote must keep
    /// `writer` as their holder even if its session ended, or this home would serve contents
    /// that miss a committed write.
    pub fn holding(&self, writer: NodeId) -> usize {
        self.prepared
            .values()
            .filter(|p| p.writer == writer)
            .count()
            + self
                .delegated
                .values()
                .filter(|d| d.writer == writer)
                .count()
            + self
                .logging
                .values()
                .filter(|l| matches!(l, Logging::Decider(d) if d.writer == writer))
                .count()
    }

    /// Whether nothing is pending here (no transaction voting, logging, deciding, prepared,
    /// handed over or awaited).
    pub fn is_idle(&self) -> bool {
        self.prepared.is_empty()
            && self.deciding_here.is_empty()
            && self.voting.is_empty()
            && self.logging.is_empty()
            && self.unknown.is_empty()
            && self.deciding.is_empty()
            && self.delegated.is_empty()
            && self.awaiting.is_empty()
    }

    // -----------------------------------------------------------------------------------
    // Coordinator

    /// Starts a two-phase commit of `txid`, which this node coordinates: `records` are its
    /// own part (creates, then a `Commit` naming the participants), appended once every
    /// participant voted yes; `remote` is each other home's part. The outcome comes as
    /// [`CommitOutput::Outcome`].
    pub fn begin_two_phase(
        &mut self,
        txid: u64,
        records: Vec<LogRecord>,
        remote: BTreeMap<NodeId, (Vec<TxImage>, Vec<RegionId>)>,
    ) {
        let participants: Vec<NodeId> = remote.keys().copied().collect();
        self.voting.insert(
            txid,
            Voting {
                waiting: participants.iter().copied().collect(),
                participants,
                records,
            },
        );
        let me = self.me;
        for (home, (writes, deletes)) in remote {
            self.send(
                home,
                Message::TxPrepare {
                    txid,
                    coordinator: me,
                    writes,
                    deletes,
                },
            );
        }
    }

    /// The coordinator gave up waiting for the votes of `txid` (its operation timeout):
    /// aborts it if it is still voting; returns whether it was.
    pub fn votes_timed_out(&mut self, txid: u64) -> bool {
        let Some(v) = self.voting.remove(&txid) else {
            return false;
        };
        for p in v.participants {
            self.decide(p, txid, false);
        }
        true
    }

    fn vote_as_coordinator(&mut self, from: NodeId, txid: u64, ok: bool, reason: String) {
        let Some(v) = self.voting.get_mut(&txid) else {
            return;
        };
        if !v.waiting.contains(&from) {
            // Not a participant, or one that has voted already: an authenticated peer still
            // may not decide another node's transaction.
            warn!(%from, txid, ok, "ignoring a vote from a node that owes none");
            return;
        }
        if !ok {
            let v = self.voting.remove(&txid).expect("present");
            for p in v.participants {
                self.decide(p, txid, false);
            }
            self.outcome(txid, Outcome::Aborted(format!("{from} voted no: {reason}")));
            return;
        }
        v.waiting.remove(&from);
        if v.waiting.is_empty() {
            // Logging is entered as voting is left: an inquiry never sees neither, so it
            // never presumes abort while the commit record is being written.
            let v = self.voting.remove(&txid).expect("present");
            let n = v.records.len();
            if self.bug == CommitBug::DecideBeforeDurable {
                for &p in &v.participants {
                    self.decide(p, txid, true);
                }
            }
            self.logging.insert(
                txid,
                Logging::Coordinator {
                    participants: v.participants,
                },
            );
            for (i, record) in v.records.into_iter().enumerate() {
                let done = (i + 1 == n).then_some(LogDone::Committed { txid });
                self.out.push_back(CommitOutput::Append { record, done });
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Writer that homes none of what it wrote

    /// Starts handing `txid` to `decider` (a home it wrote): the other homes in `others` are
    /// prepared with the decider as coordinator. [`hand_over`](Self::hand_over) then gives
    /// the decider its own part; the outcome comes as [`CommitOutput::Outcome`] when the
    /// decider answers.
    pub fn begin_delegated(
        &mut self,
        now: Timestamp,
        txid: u64,
        decider: NodeId,
        others: BTreeMap<NodeId, (Vec<TxImage>, Vec<RegionId>)>,
    ) {
        self.awaiting.insert(
            txid,
            Awaiting {
                decider,
                since: now,
            },
        );
        for (home, (writes, deletes)) in others {
            self.send(
                home,
                Message::TxPrepare {
                    txid,
                    coordinator: decider,
                    writes,
                    deletes,
                },
            );
        }
    }

    /// Hands the decider of `txid` its part (`part`: writes and deletes at the decider) and
    /// names the other homes prepared by [`begin_delegated`](Self::begin_delegated).
    pub fn hand_over(
        &mut self,
        txid: u64,
        part: (Vec<TxImage>, Vec<RegionId>),
        participants: Vec<NodeId>,
    ) {
        let Some(a) = self.awaiting.get(&txid) else {
            return;
        };
        let decider = a.decider;
        self.send(
            decider,
            Message::TxCommit {
                txid,
                writes: part.0,
                deletes: part.1,
                participants,
            },
        );
    }

    /// The writer stops waiting for `txid` (its node shuts down).
    pub fn forget_awaiting(&mut self, txid: u64) {
        self.awaiting.remove(&txid);
    }

    /// Transactions this writer handed to a deciding home and has waited for longer than
    /// the vote timeout at `now` (the answer may have been lost with a session).
    pub fn overdue(&self, now: Timestamp) -> Vec<(u64, NodeId)> {
        self.awaiting
            .iter()
            .filter(|(_, a)| now.saturating_since(a.since) > self.vote_timeout)
            .map(|(&t, a)| (t, a.decider))
            .collect()
    }

    /// The outcome of a transaction this node handed to `from` to decide; false if there is
    /// no such transaction (the message is for another role).
    fn answer_awaiting(&mut self, from: NodeId, txid: u64, commit: bool, reason: String) -> bool {
        match self.awaiting.get(&txid) {
            Some(a) if a.decider == from => {
                self.awaiting.remove(&txid);
            }
            _ => return false,
        }
        if commit {
            // The decider forgets the transaction once everyone, the writer too, knows.
            self.send(from, Message::TxDone { txid });
        }
        let outcome = if commit {
            Outcome::Committed
        } else if reason.is_empty() {
            Outcome::Aborted(format!("{from} decided abort"))
        } else {
            Outcome::Aborted(reason)
        };
        self.outcome(txid, outcome);
        true
    }

    // -----------------------------------------------------------------------------------
    // Messages

    /// Handles a transaction message from `from`.
    pub fn handle(
        &mut self,
        now: Timestamp,
        regions: &mut dyn CommitRegions,
        from: NodeId,
        msg: Message,
    ) {
        match msg {
            Message::TxPrepare {
                txid,
                coordinator,
                writes,
                deletes,
            } => self.on_prepare(now, regions, from, txid, coordinator, writes, deletes),
            Message::TxReply { txid, ok, reason } => self.on_reply(from, txid, ok, reason),
            Message::TxDecide { txid, commit } => {
                if !self.answer_awaiting(from, txid, commit, String::new()) {
                    self.on_decide(regions, from, txid, commit);
                }
            }
            Message::TxDone { txid } => {
                if let Some(waiting) = self.deciding.get_mut(&txid) {
                    waiting.remove(&from);
                    if waiting.is_empty() {
                        self.deciding.remove(&txid);
                        self.out.push_back(CommitOutput::Append {
                            record: LogRecord::Forget { txid },
                            done: None,
                        });
                    }
                }
            }
            Message::TxInquire { txid } => self.on_inquire(from, txid),
            Message::TxCommit {
                txid,
                writes,
                deletes,
                participants,
            } => self.on_delegated_commit(now, regions, from, txid, writes, deletes, participants),
            other => warn!(%from, "not a transaction message: {other:?}"),
        }
    }

    /// A vote, or a deciding home's refusal of a transaction this node handed to it.
    fn on_reply(&mut self, from: NodeId, txid: u64, ok: bool, reason: String) {
        if !ok && self.answer_awaiting(from, txid, false, reason.clone()) {
            return;
        }
        if self.voting.contains_key(&txid) {
            return self.vote_as_coordinator(from, txid, ok, reason);
        }
        let all_voted = match self.delegated.get_mut(&txid) {
            Some(d) if !d.waiting.contains(&from) => {
                warn!(%from, txid, ok, "ignoring a vote from a node that owes none");
                return;
            }
            Some(d) => {
                if ok {
                    d.waiting.remove(&from);
                    Some(d.waiting.is_empty())
                } else {
                    None
                }
            }
            None => {
                // The writer's TxCommit may still be on its way (another link): keep the vote,
                // within a bound. A vote for a transaction already decided or forgotten is
                // kept too, and ages out.
                if !self.presumed_aborted.contains(txid) {
                    let (order, votes) = &mut self.early_votes;
                    if !votes.contains_key(&txid) {
                        order.push_back(txid);
                        if order.len() > MAX_EARLY_VOTES
                            && let Some(old) = order.pop_front()
                        {
                            votes.remove(&old);
                        }
                    }
                    votes.entry(txid).or_default().push((from, ok, reason));
                }
                return;
            }
        };
        match all_voted {
            None => self.abort_delegated(txid, format!("{from} voted no: {reason}")),
            Some(true) => self.decide_delegated(txid),
            Some(false) => {}
        }
    }

    /// What was decided? Answered only from what this node knows for sure.
    fn on_inquire(&mut self, from: NodeId, txid: u64) {
        if self.voting.contains_key(&txid) || self.delegated.contains_key(&txid) {
            return;
        }
        if (self.logging.contains_key(&txid) || self.unknown.contains(&txid))
            && self.bug != CommitBug::PresumeAbortWhileLogging
        {
            return;
        }
        if self.deciding.contains_key(&txid) {
            self.decide(from, txid, true);
            return;
        }
        // Presumed abort: a commit is always logged before it is announced. Remembered, so
        // that a TxCommit still on its way is refused.
        self.presumed_aborted.insert(txid);
        self.early_votes.1.remove(&txid);
        self.decide(from, txid, false);
    }

    /// Whether `regions` are all homed here and held exclusively by `writer`; the first that
    /// is not, otherwise.
    fn not_held(
        &self,
        regions: &dyn CommitRegions,
        writer: NodeId,
        list: &[RegionId],
    ) -> Option<RegionId> {
        list.iter()
            .copied()
            .find(|&r| r.home != self.me || !regions.holds_exclusive(r, writer))
    }

    fn txid_in_use(&self, txid: u64) -> bool {
        self.prepared.contains_key(&txid)
            || self.voting.contains_key(&txid)
            || self.delegated.contains_key(&txid)
            || self.logging.contains_key(&txid)
            || self.unknown.contains(&txid)
            || self.deciding.contains_key(&txid)
    }

    /// A writer hands this node a transaction to decide.
    #[allow(clippy::too_many_arguments)]
    fn on_delegated_commit(
        &mut self,
        now: Timestamp,
        regions: &mut dyn CommitRegions,
        from: NodeId,
        txid: u64,
        writes: Vec<TxImage>,
        deletes: Vec<RegionId>,
        participants: Vec<NodeId>,
    ) {
        let me = self.me;
        let refusal = if Self::writer_of(txid) != from {
            Some(format!(
                "transaction id {txid:#x} is not {from}'s (it is {}'s)",
                Self::writer_of(txid)
            ))
        } else if writes.is_empty() && deletes.is_empty() {
            Some("a commit with no part at its decider".into())
        } else {
            let others: BTreeSet<NodeId> = participants.iter().copied().collect();
            if participants.len() > MAX_PARTICIPANTS
                || others.len() != participants.len()
                || others.contains(&me)
                || others.contains(&from)
            {
                Some(format!("bad participants {participants:?}"))
            } else if self.presumed_aborted.contains(txid) {
                Some(format!("{me} answered an inquiry about it: aborted"))
            } else if self.txid_in_use(txid) {
                Some("the transaction id is in use".into())
            } else {
                let list: Vec<RegionId> = writes
                    .iter()
                    .map(|w| w.region)
                    .chain(deletes.iter().copied())
                    .collect();
                self.not_held(regions, from, &list)
                    .map(|bad| format!("{from} does not hold {bad} exclusively here (stale copy?)"))
            }
        };
        if let Some(reason) = refusal {
            warn!(%from, txid, "refusing a transaction to decide: {reason}");
            self.send(
                from,
                Message::TxReply {
                    txid,
                    ok: false,
                    reason,
                },
            );
            return;
        }
        let mut waiting: BTreeSet<NodeId> = participants.iter().copied().collect();
        let mut no = None;
        for (voter, ok, reason) in self.early_votes.1.remove(&txid).unwrap_or_default() {
            if waiting.contains(&voter) {
                if ok {
                    waiting.remove(&voter);
                } else {
                    no.get_or_insert(format!("{voter} voted no: {reason}"));
                }
            }
        }
        let all_voted = waiting.is_empty();
        self.delegated.insert(
            txid,
            Delegated {
                writer: from,
                participants,
                waiting,
                writes: writes.into_iter().map(|w| (w.region, w.bytes)).collect(),
                deletes,
            },
        );
        if let Some(why) = no {
            return self.abort_delegated(txid, why);
        }
        if all_voted {
            return self.decide_delegated(txid);
        }
        self.out.push_back(CommitOutput::Timer {
            timer: CommitTimer::DelegatedVotes(txid),
            at: now.saturating_add(self.vote_timeout),
        });
    }

    /// Every vote of a delegated transaction is yes: log the decision with this node's part.
    fn decide_delegated(&mut self, txid: u64) {
        let Some(d) = self.delegated.remove(&txid) else {
            return;
        };
        let mut told = d.participants.clone();
        told.push(d.writer);
        let record = LogRecord::Commit {
            txid,
            writes: d.writes.clone(),
            deletes: d.deletes.clone(),
            participants: told,
        };
        // Entered as `delegated` is left: an inquiry never sees neither.
        self.logging.insert(txid, Logging::Decider(d));
        self.out.push_back(CommitOutput::Append {
            record,
            done: Some(LogDone::Committed { txid }),
        });
    }

    /// Aborts a delegated transaction that is still collecting votes (a no, a timeout, a
    /// participant that restarted); nothing if it was decided meanwhile.
    fn abort_delegated(&mut self, txid: u64, why: String) {
        let Some(d) = self.delegated.remove(&txid) else {
            return;
        };
        debug!(txid, writer = %d.writer, "delegated transaction aborted: {why}");
        self.abort_decided(txid, &d, why);
    }

    /// A decider's abort of `d`: the participants and the writer are told, and what the
    /// writer held here is resolved.
    fn abort_decided(&mut self, txid: u64, d: &Delegated, why: String) {
        for &p in &d.participants {
            self.decide(p, txid, false);
        }
        self.send(
            d.writer,
            Message::TxReply {
                txid,
                ok: false,
                reason: why,
            },
        );
        self.out.push_back(CommitOutput::Resolved);
    }

    /// A timer this machine asked for is due.
    pub fn timer(&mut self, timer: CommitTimer) {
        match timer {
            CommitTimer::DelegatedVotes(txid) => self.abort_delegated(
                txid,
                format!("votes timed out after {:?}", self.vote_timeout),
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_prepare(
        &mut self,
        now: Timestamp,
        regions: &mut dyn CommitRegions,
        from: NodeId,
        txid: u64,
        coordinator: NodeId,
        writes: Vec<TxImage>,
        deletes: Vec<RegionId>,
    ) {
        let me = self.me;
        let list: Vec<RegionId> = writes
            .iter()
            .map(|w| w.region)
            .chain(deletes.iter().copied())
            .collect();
        let refusal = if Self::writer_of(txid) != from {
            // Every prepare comes from the transaction's writer: a peer may not prepare (and so
            // hold regions under) another node's transaction id.
            warn!(%from, txid, "refusing a prepare with another node's transaction id");
            Some(format!(
                "transaction id {txid:#x} is not {from}'s (it is {}'s)",
                Self::writer_of(txid)
            ))
        } else if coordinator == me {
            warn!(%from, txid, "refusing a prepare that names this node its coordinator");
            Some(format!(
                "prepare from {from} names {me}, a participant, as its coordinator"
            ))
        } else if list.is_empty() {
            // Nothing to make durable: a correct coordinator never sends one, and storing it
            // would let any peer grow this node's log and in-doubt table for free.
            warn!(%from, txid, "refusing an empty prepare");
            Some("an empty prepare".into())
        } else if self.prepared.contains_key(&txid) {
            // Sessions drop duplicates, so this is another node's transaction id.
            warn!(%from, txid, "refusing a prepare whose transaction id is in use here");
            Some("the transaction id is in use".into())
        } else {
            self.not_held(regions, from, &list)
                .map(|bad| format!("{from} does not hold {bad} exclusively here (stale copy?)"))
        };
        if let Some(reason) = refusal {
            // The vote goes to the coordinator: the writer itself, or the home it handed the
            // decision to (which must be another node).
            let to = if coordinator == me { from } else { coordinator };
            self.send(
                to,
                Message::TxReply {
                    txid,
                    ok: false,
                    reason,
                },
            );
            return;
        }
        let writes: Vec<(RegionId, Vec<u8>)> =
            writes.into_iter().map(|w| (w.region, w.bytes)).collect();
        // Until the decision is known here, nobody gets these regions: the writer may let them
        // go as soon as it learns the decision, possibly before this node does (from another
        // coordinator), and what this node serves must include the decision.
        for &r in &list {
            if let Err(e) = regions.hold(r) {
                warn!(region = %r, txid, "holding a prepared region: {e}");
            }
        }
        self.prepared.insert(
            txid,
            Prepared {
                coordinator,
                writer: from,
                writes: writes.clone(),
                deletes: deletes.clone(),
                held: true,
                since: now,
            },
        );
        self.out.push_back(CommitOutput::Append {
            record: LogRecord::Prepare {
                txid,
                coordinator,
                writes,
                deletes,
            },
            done: Some(LogDone::Prepared { txid, coordinator }),
        });
    }

    fn on_decide(
        &mut self,
        regions: &mut dyn CommitRegions,
        from: NodeId,
        txid: u64,
        commit: bool,
    ) {
        let Some(p) = self.prepared.get(&txid) else {
            // Already decided (a repeated decision): confirm, but only once the decision is
            // durable here; until then the confirmation follows its log write. (Confirming
            // at once let the coordinator forget a commit whose `Decide` a crash here could
            // still lose: this node then found it in doubt, asked, and was told "abort".)
            if !self.deciding_here.contains(&txid) {
                self.send(from, Message::TxDone { txid });
            }
            return;
        };
        if p.coordinator != from {
            warn!(%from, txid, "decision from a node that does not coordinate the transaction");
            return;
        }
        let p = self.prepared.remove(&txid).expect("present");
        self.in_doubt.remove(&txid);
        self.deciding_here.insert(txid);
        // Appended first: whatever is logged after the holds are released (a later commit on
        // these regions) follows the decision in the log, and replays after it.
        self.out.push_back(CommitOutput::Append {
            record: LogRecord::Decide { txid, commit },
            done: Some(LogDone::Decided {
                txid,
                coordinator: from,
            }),
        });
        if commit {
            apply(regions, txid, &p.writes, &p.deletes, self.bug);
        }
        if p.held {
            for region in p.regions() {
                regions.release_hold(region);
            }
        }
        self.out.push_back(CommitOutput::Resolved);
    }

    /// A record appended for `done` is durable (`Ok`) or failed.
    pub fn logged(
        &mut self,
        regions: &mut dyn CommitRegions,
        done: LogDone,
        result: Result<(), String>,
    ) {
        match done {
            LogDone::Prepared { txid, coordinator } => {
                let (ok, reason) = match result {
                    Ok(()) => (true, String::new()),
                    Err(e) => (false, e),
                };
                self.send(coordinator, Message::TxReply { txid, ok, reason });
            }
            LogDone::Decided { txid, coordinator } => match result {
                Ok(()) => {
                    self.deciding_here.remove(&txid);
                    self.send(coordinator, Message::TxDone { txid });
                }
                // Never confirmed, not even to a repeated decision: the coordinator would
                // forget it, and after this node's restart (which a failed store needs) the
                // transaction is in doubt here and must still be answerable.
                Err(e) => warn!(txid, "logging a decision failed; it stays unconfirmed: {e}"),
            },
            LogDone::Committed { txid } => {
                let Some(logging) = self.logging.remove(&txid) else {
                    return;
                };
                match (logging, result) {
                    (Logging::Coordinator { participants }, Ok(())) => {
                        if !participants.is_empty() {
                            self.deciding
                                .insert(txid, participants.iter().copied().collect());
                            // Before the waiter releases its locks: FIFO links then deliver the
                            // decision ahead of any later message about these regions.
                            if self.bug != CommitBug::DecideBeforeDurable {
                                for &p in &participants {
                                    self.decide(p, txid, true);
                                }
                            }
                            debug!(txid, ?participants, "two-phase commit decided");
                        }
                        self.outcome(txid, Outcome::Committed);
                    }
                    (Logging::Coordinator { .. }, Err(e)) => {
                        // The record may still be on the disk (a failed or hung fsync): the
                        // outcome is unknown until this node restarts and its recovery
                        // decides. No abort is sent, no inquiry answered; the participants
                        // stay prepared.
                        warn!(
                            txid,
                            "the commit record's write failed: outcome unknown until a restart: {e}"
                        );
                        self.unknown.insert(txid);
                        self.outcome(txid, Outcome::LogFailed(e));
                    }
                    (Logging::Decider(d), Ok(())) => {
                        apply(regions, txid, &d.writes, &d.deletes, self.bug);
                        let mut told = d.participants.clone();
                        told.push(d.writer);
                        self.deciding.insert(txid, told.iter().copied().collect());
                        for to in told {
                            self.decide(to, txid, true);
                        }
                        debug!(txid, writer = %d.writer, ?d.participants, "delegated commit decided");
                        self.out.push_back(CommitOutput::Resolved);
                    }
                    (Logging::Decider(d), Err(e)) => {
                        // As for a coordinator: unknown until a restart; the writer learns
                        // nothing now (it times out with an unknown outcome and asks again).
                        warn!(txid, writer = %d.writer, "the decision record's write failed: outcome unknown until a restart: {e}");
                        self.unknown.insert(txid);
                        self.out.push_back(CommitOutput::Resolved);
                    }
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Sessions that ended, and what is asked again

    /// `peer`'s session ended (it restarted, or one of the two fenced the other): the
    /// transactions prepared here that it wrote or decides are in doubt until their
    /// coordinator answers (asked now, and again by [`resends`](Self::resends)).
    /// Transactions this node handed to `peer` to decide are asked about too: an answer sent
    /// on the old session is lost.
    pub fn inquire_after_reset(&mut self, peer: NodeId) {
        let asks: Vec<(u64, NodeId)> = self
            .prepared
            .iter()
            .filter(|(_, p)| p.coordinator == peer || p.writer == peer)
            .map(|(&t, p)| (t, p.coordinator))
            .collect();
        for &(txid, coordinator) in &asks {
            self.in_doubt.insert(txid, coordinator);
        }
        for (txid, coordinator) in asks {
            self.send(coordinator, Message::TxInquire { txid });
        }
        let handed: Vec<u64> = self
            .awaiting
            .iter()
            .filter(|(_, a)| a.decider == peer)
            .map(|(&t, _)| t)
            .collect();
        for txid in handed {
            self.send(peer, Message::TxInquire { txid });
        }
    }

    /// A peer restarted (and the node resolved the transactions it coordinated that were
    /// prepared here): votes it owed will never come; decisions it had not confirmed are sent
    /// again.
    pub fn peer_restarted(&mut self, peer: NodeId) {
        let orphaned: Vec<u64> = self
            .delegated
            .iter()
            .filter(|(_, d)| d.waiting.contains(&peer))
            .map(|(&t, _)| t)
            .collect();
        for txid in orphaned {
            self.abort_delegated(txid, format!("{peer} restarted before voting"));
        }
        self.inquire_after_reset(peer);
        let voters: Vec<u64> = self
            .voting
            .iter()
            .filter(|(_, v)| v.waiting.contains(&peer))
            .map(|(&t, _)| t)
            .collect();
        for txid in voters {
            let v = self.voting.remove(&txid).expect("present");
            for p in v.participants {
                self.decide(p, txid, false);
            }
            self.outcome(
                txid,
                Outcome::Aborted(format!("{peer} restarted before voting")),
            );
        }
        let resend: Vec<u64> = self
            .deciding
            .iter()
            .filter(|(_, w)| w.contains(&peer))
            .map(|(&t, _)| t)
            .collect();
        for txid in resend {
            self.decide(peer, txid, true);
        }
    }

    /// What is sent again periodically (every second at run time): decisions not yet
    /// confirmed, inquiries about transactions in doubt, about transactions handed to a
    /// decider longer ago than the vote timeout, and about transactions prepared for longer
    /// than twice the vote timeout without a decision (the decision may never be sent: a
    /// coordinator that aborted before this prepare arrived; safe, since a coordinator
    /// commits only after this node's vote, so what it does not know was aborted).
    pub fn resends(&mut self, now: Timestamp) {
        let mut msgs = Vec::new();
        for (&txid, participants) in &self.deciding {
            for &p in participants {
                msgs.push((p, Message::TxDecide { txid, commit: true }));
            }
        }
        for (&txid, &coordinator) in &self.in_doubt {
            msgs.push((coordinator, Message::TxInquire { txid }));
        }
        for (txid, decider) in self.overdue(now) {
            msgs.push((decider, Message::TxInquire { txid }));
        }
        let patience = self.vote_timeout * 2;
        for (&txid, p) in &self.prepared {
            if p.held && now.saturating_since(p.since) > patience {
                msgs.push((p.coordinator, Message::TxInquire { txid }));
            }
        }
        for (to, msg) in msgs {
            self.send(to, msg);
        }
    }
}

/// Applies a committed transaction's part at its home: writes installed, deletes done.
fn apply(
    regions: &mut dyn CommitRegions,
    txid: u64,
    writes: &[(RegionId, Vec<u8>)],
    deletes: &[RegionId],
    bug: CommitBug,
) {
    for (region, bytes) in writes {
        if let Err(e) = regions.install_master(*region, bytes) {
            warn!(%region, txid, "installing a committed image: {e}");
        }
    }
    if bug != CommitBug::SkipDeletes {
        for &region in deletes {
            regions.delete_committed(region);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regions as a map: contents, the node holding each exclusively, holds, deletes.
    #[derive(Default)]
    struct Model {
        contents: BTreeMap<RegionId, Vec<u8>>,
        holder: BTreeMap<RegionId, NodeId>,
        held: BTreeSet<RegionId>,
    }

    impl CommitRegions for Model {
        fn holds_exclusive(&self, region: RegionId, node: NodeId) -> bool {
            self.holder.get(&region) == Some(&node)
        }
        fn hold(&mut self, region: RegionId) -> Result<(), String> {
            self.held.insert(region);
            Ok(())
        }
        fn release_hold(&mut self, region: RegionId) {
            self.held.remove(&region);
        }
        fn install_master(&mut self, region: RegionId, bytes: &[u8]) -> Result<(), String> {
            self.contents.insert(region, bytes.to_vec());
            Ok(())
        }
        fn delete_committed(&mut self, region: RegionId) {
            self.contents.remove(&region);
        }
    }

    const T0: Timestamp = Timestamp::from_nanos(1);
    const N0: NodeId = NodeId(0);
    const N1: NodeId = NodeId(1);
    const N2: NodeId = NodeId(2);

    fn drain(m: &mut CommitMachine) -> Vec<CommitOutput> {
        std::iter::from_fn(|| m.poll()).collect()
    }

    fn image(region: RegionId, byte: u8) -> TxImage {
        TxImage {
            region,
            bytes: vec![byte],
        }
    }

    /// Node 0 coordinates `txid` with node 1 as its only participant, writing `r1` there.
    fn two_phase(m: &mut CommitMachine, r1: RegionId) -> u64 {
        let txid = m.next_txid().unwrap();
        let records = vec![LogRecord::Commit {
            txid,
            writes: vec![],
            deletes: vec![],
            participants: vec![N1],
        }];
        m.begin_two_phase(txid, records, [(N1, (vec![image(r1, 7)], vec![]))].into());
        txid
    }

    /// Node 1, a participant of node 0's transaction writing `r1.3`, prepared durably (its
    /// outputs drained).
    fn prepared_participant() -> (CommitMachine, Model, u64) {
        let mut m = CommitMachine::new(N1, 1, Duration::from_secs(1));
        let mut model = Model::default();
        let r = RegionId::new(N1, 3);
        model.holder.insert(r, N0);
        model.contents.insert(r, vec![0]);
        let txid = CommitMachine::new(N0, 1, Duration::from_secs(1))
            .next_txid()
            .unwrap();
        let prepare = Message::TxPrepare {
            txid,
            coordinator: N0,
            writes: vec![image(r, 5)],
            deletes: vec![],
        };
        m.handle(T0, &mut model, N0, prepare);
        drain(&mut m);
        m.logged(
            &mut model,
            LogDone::Prepared {
                txid,
                coordinator: N0,
            },
            Ok(()),
        );
        drain(&mut m);
        (m, model, txid)
    }

    #[test]
    fn a_vote_from_a_node_outside_the_transaction_is_ignored() {
        let mut m = CommitMachine::new(N0, 1, Duration::from_secs(1));
        let mut model = Model::default();
        let txid = two_phase(&mut m, RegionId::new(N1, 5));
        drain(&mut m);
        let no = Message::TxReply {
            txid,
            ok: false,
            reason: "not mine to say".into(),
        };
        m.handle(T0, &mut model, N2, no);
        assert_eq!(drain(&mut m), vec![], "a non-participant's vote decided");
        let yes = Message::TxReply {
            txid,
            ok: true,
            reason: String::new(),
        };
        m.handle(T0, &mut model, N1, yes.clone());
        let out = drain(&mut m);
        assert!(
            matches!(
                &out[..],
                [CommitOutput::Append {
                    done: Some(LogDone::Committed { .. }),
                    ..
                }]
            ),
            "{out:?}"
        );
        // A second vote of the same participant counts for nothing.
        m.handle(T0, &mut model, N1, yes);
        assert_eq!(drain(&mut m), vec![]);
    }

    #[test]
    fn an_inquiry_while_the_commit_record_is_written_is_not_answered_abort() {
        for bug in [CommitBug::None, CommitBug::PresumeAbortWhileLogging] {
            let mut m = CommitMachine::new(N0, 1, Duration::from_secs(1));
            m.plant(bug);
            let mut model = Model::default();
            let txid = two_phase(&mut m, RegionId::new(N1, 5));
            drain(&mut m);
            let yes = Message::TxReply {
                txid,
                ok: true,
                reason: String::new(),
            };
            m.handle(T0, &mut model, N1, yes);
            drain(&mut m); // the commit record is being written
            m.handle(T0, &mut model, N1, Message::TxInquire { txid });
            let answered = drain(&mut m);
            if bug == CommitBug::None {
                assert_eq!(answered, vec![], "an inquiry was answered while logging");
            } else {
                assert!(!answered.is_empty(), "the planted bug did not answer");
                continue;
            }
            m.logged(&mut model, LogDone::Committed { txid }, Ok(()));
            let out = drain(&mut m);
            let decide = CommitOutput::Send {
                to: N1,
                msg: Message::TxDecide { txid, commit: true },
            };
            assert_eq!(out[0], decide);
            assert!(out.contains(&CommitOutput::Outcome {
                txid,
                outcome: Outcome::Committed
            }));
            // Now an inquiry is answered from the durable decision.
            m.handle(T0, &mut model, N1, Message::TxInquire { txid });
            assert_eq!(drain(&mut m), vec![decide]);
        }
    }

    #[test]
    fn hostile_prepares_are_refused_and_nothing_is_held() {
        let mut m = CommitMachine::new(N0, 1, Duration::from_secs(1));
        let mut model = Model::default();
        let r = RegionId::new(N0, 9);
        model.holder.insert(r, N1);
        let mut n1 = CommitMachine::new(N1, 1, Duration::from_secs(1));
        let mut n2 = CommitMachine::new(N2, 1, Duration::from_secs(1));
        let cases = [
            // Empty.
            (n1.next_txid().unwrap(), N1, vec![], "an empty prepare"),
            // Node 2's transaction id, sent by node 1.
            (n2.next_txid().unwrap(), N1, vec![image(r, 1)], "is not"),
            // Naming this node its coordinator.
            (
                n1.next_txid().unwrap(),
                N0,
                vec![image(r, 1)],
                "as its coordinator",
            ),
        ];
        for (txid, coordinator, writes, why) in cases {
            let prepare = Message::TxPrepare {
                txid,
                coordinator,
                writes,
                deletes: vec![],
            };
            m.handle(T0, &mut model, N1, prepare);
            let out = drain(&mut m);
            assert!(
                matches!(&out[..], [CommitOutput::Send { msg: Message::TxReply { ok: false, reason, .. }, .. }] if reason.contains(why)),
                "{why}: {out:?}"
            );
            assert_eq!(m.holding(N1), 0);
            assert!(model.held.is_empty());
        }
        // The well-formed prepare is held and logged (the test can fail).
        let txid = n1.next_txid().unwrap();
        let prepare = Message::TxPrepare {
            txid,
            coordinator: N1,
            writes: vec![image(r, 1)],
            deletes: vec![],
        };
        m.handle(T0, &mut model, N1, prepare);
        assert!(matches!(
            &drain(&mut m)[..],
            [CommitOutput::Append {
                done: Some(LogDone::Prepared { .. }),
                ..
            }]
        ));
        assert_eq!(m.holding(N1), 1);
        // A decision from a node that does not coordinate it is ignored.
        m.handle(T0, &mut model, N2, Message::TxDecide { txid, commit: true });
        assert_eq!(drain(&mut m), vec![]);
        assert_eq!(m.holding(N1), 1);
        m.handle(T0, &mut model, N1, Message::TxDecide { txid, commit: true });
        assert_eq!(m.holding(N1), 0);
        assert_eq!(model.contents.get(&r), Some(&vec![1]));
        assert!(model.held.is_empty());
    }

    /// Found by the transactional simulator (seed 3): a repeated decision was confirmed at
    /// once, before the participant's `Decide` was durable; the coordinator then forgot the
    /// commit, a crash lost the `Decide`, and the participant, in doubt, was told "abort".
    #[test]
    fn a_repeated_decision_is_confirmed_only_once_it_is_durable() {
        let (mut m, mut model, txid) = prepared_participant();
        let decide = Message::TxDecide { txid, commit: true };
        m.handle(T0, &mut model, N0, decide.clone());
        let out = drain(&mut m);
        assert!(matches!(
            &out[0],
            CommitOutput::Append {
                done: Some(LogDone::Decided { .. }),
                ..
            }
        ));
        let done = CommitOutput::Send {
            to: N0,
            msg: Message::TxDone { txid },
        };
        // The decision again (re-sent, or answering an inquiry) while `Decide` is written.
        m.handle(T0, &mut model, N0, decide.clone());
        assert!(
            !drain(&mut m).contains(&done),
            "confirmed before it was durable"
        );
        m.logged(
            &mut model,
            LogDone::Decided {
                txid,
                coordinator: N0,
            },
            Ok(()),
        );
        assert_eq!(drain(&mut m), vec![done.clone()]);
        // Once durable, a repeated decision is confirmed at once.
        m.handle(T0, &mut model, N0, decide);
        assert_eq!(drain(&mut m), vec![done]);
        assert!(m.is_idle());
    }

    /// Found by the transactional simulator once it failed stores: a failed write of the
    /// commit record decided abort, although a record whose fsync failed may still be found
    /// by recovery (which then decides commit). Now nothing is decided until a restart.
    #[test]
    fn a_failed_commit_record_decides_nothing() {
        let mut m = CommitMachine::new(N0, 1, Duration::from_secs(1));
        let mut model = Model::default();
        let txid = two_phase(&mut m, RegionId::new(N1, 5));
        drain(&mut m);
        let yes = Message::TxReply {
            txid,
            ok: true,
            reason: String::new(),
        };
        m.handle(T0, &mut model, N1, yes);
        drain(&mut m);
        m.logged(
            &mut model,
            LogDone::Committed { txid },
            Err("fsync failed".into()),
        );
        let out = drain(&mut m);
        assert!(
            !out.iter().any(|o| matches!(
                o,
                CommitOutput::Send {
                    msg: Message::TxDecide { .. },
                    ..
                }
            )),
            "a decision was sent: {out:?}"
        );
        assert!(out.contains(&CommitOutput::Outcome {
            txid,
            outcome: Outcome::LogFailed("fsync failed".into())
        }));
        m.handle(T0, &mut model, N1, Message::TxInquire { txid });
        assert_eq!(drain(&mut m), vec![], "an inquiry was answered");
    }

    /// Also found with failed stores: a participant whose `Decide` failed to be written
    /// confirmed the decision when it came again, so the coordinator forgot it; restarted,
    /// the participant was in doubt and was told "abort".
    #[test]
    fn a_decision_that_failed_to_be_logged_is_never_confirmed() {
        let (mut m, mut model, txid) = prepared_participant();
        let decide = Message::TxDecide { txid, commit: true };
        m.handle(T0, &mut model, N0, decide.clone());
        drain(&mut m);
        m.logged(
            &mut model,
            LogDone::Decided {
                txid,
                coordinator: N0,
            },
            Err("fsync failed".into()),
        );
        m.handle(T0, &mut model, N0, decide);
        assert!(
            !drain(&mut m).iter().any(|o| matches!(
                o,
                CommitOutput::Send {
                    msg: Message::TxDone { .. },
                    ..
                }
            )),
            "a decision that is not durable was confirmed"
        );
    }

    #[test]
    fn transaction_ids_carry_the_writer_and_run_out_cleanly() {
        let mut m = CommitMachine::new(NodeId(4095), 0xabcde, Duration::from_secs(1));
        let first = m.next_txid().unwrap();
        assert_eq!(CommitMachine::writer_of(first), NodeId(4095));
        m.skip_txids_to(first | 0xffff_ffff);
        assert_eq!(m.next_txid(), Some(first | 0xffff_ffff));
        assert_eq!(m.next_txid(), None);
    }

    /// Found by the transactional simulator (seed 1089 of the longer soak): while a deciding
    /// home wrote the decision record of a transaction handed to it, `holding` counted
    /// nothing for its writer; the writer restarted, the driver forgot what the old
    /// incarnation held, a newer transaction committed the region, and the old decision,
    /// once durable, installed its older image over it.
    #[test]
    fn a_decision_being_written_still_holds_its_writer() {
        let mut m = CommitMachine::new(N0, 1, Duration::from_secs(1));
        let mut model = Model::default();
        let r = RegionId::new(N0, 1);
        model.holder.insert(r, N1);
        let txid = CommitMachine::new(N1, 1, Duration::from_secs(1))
            .next_txid()
            .unwrap();
        let commit = Message::TxCommit {
            txid,
            writes: vec![image(r, 9)],
            deletes: vec![],
            participants: vec![],
        };
        m.handle(T0, &mut model, N1, commit);
        assert!(matches!(
            &drain(&mut m)[..],
            [CommitOutput::Append {
                done: Some(LogDone::Committed { .. }),
                ..
            }]
        ));
        assert_eq!(m.holding(N1), 1, "the decision record is being written");
        m.logged(&mut model, LogDone::Committed { txid }, Ok(()));
        assert_eq!(model.contents.get(&r), Some(&vec![9]));
        assert_eq!(m.holding(N1), 0);
    }
}
