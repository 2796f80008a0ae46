//! The node's durable state and its part in two-phase commits, at run time: the driver of
//! crl-core's [`CommitMachine`] (which holds every decision; see `crl_core::commit`).
//!
//! Every call into the machine runs under the engine's lock (the machine reaches the regions
//! through the engine), and what it emits is carried out under that same lock, in order:
//! records are queued to the write-ahead log at once, before the engine's own messages and
//! events of the call go out (a participant's `Decide` is queued before anything its
//! released holds let through can commit, so a later commit on those regions follows it in
//! the log); messages go out after the engine's, on the sessions in order. A log completion
//! feeds the machine again from a task on the runtime (see [`Durability::append`]).
//! Outcomes wake the local waiter (a committing transaction); timers are tokio sleeps.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crl_core::commit::{CommitMachine, CommitOutput, LogDone, Outcome};
use crl_core::engine::Engine;
use crl_core::wire::Message;
use crl_core::{NodeId, RegionId};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::Node;
use crate::config::TxFault;
use crate::durable::{Coordinating, DurableStore, InDoubt, LogRecord, StoreError};
use crate::liveness::clock;

/// How often a restarting participant asks again about its in-doubt transactions.
pub(crate) const IN_DOUBT_RESEND: Duration = Duration::from_millis(250);

/// A node's durable store and its commit machine.
pub(crate) struct Durability {
    store: DurableStore,
    epoch: u64,
    machine: Mutex<CommitMachine>,
    /// The local waiters of transactions (a coordinator's or a writer's commit).
    waiters: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    /// Wakes the driver when a transaction that held a peer's incarnation is resolved.
    resolved: tokio::sync::Notify,
    /// Where log completions, timers and delayed sends run.
    runtime: tokio::runtime::Handle,
}

impl Durability {
    /// The durability of node `node` (inside a tokio runtime).
    pub(crate) fn new(store: DurableStore, node: NodeId, vote_timeout: Duration) -> Durability {
        let epoch = store.epoch();
        Durability {
            machine: Mutex::new(CommitMachine::new(node, epoch, vote_timeout)),
            store,
            epoch,
            waiters: Mutex::new(HashMap::new()),
            resolved: tokio::sync::Notify::new(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Resolves when a transaction that held a peer's incarnation was decided (the driver
    /// then checks [`holding`](Self::holding) again).
    pub(crate) async fn resolved(&self) {
        self.resolved.notified().await
    }

    pub(crate) fn store(&self) -> &DurableStore {
        &self.store
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Registers what recovery found (in-doubt transactions are asked about, committed ones
    /// told again).
    pub(crate) fn recovered(&self, in_doubt: Vec<InDoubt>, coordinating: Vec<Coordinating>) {
        self.machine
            .lock()
            .recovered(clock::now(), in_doubt, coordinating);
    }

    /// The transactions still in doubt here, with their coordinators.
    pub(crate) fn in_doubt(&self) -> Vec<(u64, NodeId)> {
        self.machine.lock().in_doubt()
    }

    /// How many undecided transactions here were written by `writer` (see
    /// [`CommitMachine::holding`]).
    pub(crate) fn holding(&self, writer: NodeId) -> usize {
        self.machine.lock().holding(writer)
    }

    /// A new transaction id of this incarnation (`None` once they ran out).
    pub(crate) fn next_txid(&self) -> Option<u64> {
        self.machine.lock().next_txid()
    }

    /// Logs the creation of a region at this home and waits until it is durable.
    pub(crate) async fn log_create(
        &self,
        region: RegionId,
        fingerprint: u64,
        type_name: &str,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.append_all(vec![LogRecord::Create {
            region,
            fingerprint,
            type_name: type_name.to_owned(),
            bytes,
        }])
        .await
    }

    /// Appends `records` and waits until the last one is durable.
    pub(crate) async fn append_all(&self, records: Vec<LogRecord>) -> Result<(), StoreError> {
        let mut last = None;
        for r in records {
            let (tx, rx) = oneshot::channel();
            self.store.append(
                r,
                Box::new(move |res| {
                    let _ = tx.send(res);
                }),
            );
            last = Some(rx);
        }
        // The writer completes records in order, so the last completion covers them all; an
        // error fails every record of the batch and every later one.
        match last {
            Some(rx) => rx.await.unwrap_or(Err(StoreError::Closed)),
            None => Ok(()),
        }
    }

    /// Registers the local waiter of `txid`'s outcome.
    pub(crate) fn wait_for(&self, txid: u64) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(txid, tx);
        rx
    }

    /// Forgets the local waiter of `txid` (it gave up).
    pub(crate) fn stop_waiting(&self, txid: u64) {
        self.waiters.lock().remove(&txid);
    }

    /// Runs `f` on the machine with the engine, under the engine's lock, and carries out
    /// what it emitted.
    pub(crate) fn run<R>(
        self: &Arc<Self>,
        node: &Node,
        f: impl FnOnce(&mut CommitMachine, &mut Engine) -> R,
    ) -> R {
        let (mut f, mut r) = (Some(f), None);
        self.run_once(node, &mut |m, engine| {
            if let Some(f) = f.take() {
                r = Some(f(m, engine));
            }
        });
        r.expect("the machine ran")
    }

    fn run_once(self: &Arc<Self>, node: &Node, f: &mut dyn FnMut(&mut CommitMachine, &mut Engine)) {
        node.with_engine_then(
            |engine| {
                let mut machine = self.machine.lock();
                f(&mut machine, engine);
                // Appends are queued now, before the engine's messages and events go out: a
                // participant's `Decide` must precede in the log whatever a transaction that
                // its released holds let through (granted only by those events) commits.
                let mut rest = Vec::new();
                while let Some(output) = machine.poll() {
                    match output {
                        CommitOutput::Append { record, done } => self.append(node, record, done),
                        other => rest.push(other),
                    }
                }
                rest
            },
            |outputs, transport| {
                // Still under the engine's lock (so in order with every other call), after
                // the engine's own messages, as before the machine existed.
                for output in outputs {
                    self.carry_out(node, transport, output);
                }
            },
        );
    }

    /// Queues `record` in the log; once it is durable (or failed), `done` is fed back to the
    /// machine from a task on the runtime, so the log's writer thread never waits for the
    /// engine's lock (and a completion that runs at once, on a failed store, does not take
    /// the lock this call holds).
    fn append(self: &Arc<Self>, node: &Node, record: LogRecord, done: Option<LogDone>) {
        let Some(done) = done else {
            return self.store.append_lazy(record);
        };
        let (this, node) = (self.clone(), node.internal());
        self.store.append(
            record,
            Box::new(move |res| {
                let result = res.map_err(|e| e.to_string());
                let runtime = this.runtime.clone();
                runtime.spawn(async move {
                    this.run(&node, |m, engine| m.logged(engine, done, result));
                });
            }),
        );
    }

    fn carry_out(
        self: &Arc<Self>,
        node: &Node,
        transport: &crate::transport::Transport,
        output: CommitOutput,
    ) {
        match output {
            CommitOutput::Send { to, msg } => {
                if let (
                    Some(TxFault::DelayDecisionTo(slow, by)),
                    Message::TxDecide { commit: true, .. },
                ) = (node.tx_fault(), &msg)
                    && slow == to
                {
                    let node = node.internal();
                    self.runtime.spawn(async move {
                        tokio::time::sleep(by).await;
                        node.send(to, msg);
                    });
                    return;
                }
                // A refusal (an oversized message) is logged and counted by the transport.
                let _ = transport.send(to, msg);
            }
            CommitOutput::Append { record, done } => self.append(node, record, done),
            CommitOutput::Timer { timer, at } => {
                let (this, node) = (self.clone(), node.internal());
                let after = at.saturating_since(clock::now());
                self.runtime.spawn(async move {
                    tokio::time::sleep(after).await;
                    this.run(&node, |m, _| m.timer(timer));
                });
            }
            CommitOutput::Outcome { txid, outcome } => {
                if let Some(w) = self.waiters.lock().remove(&txid) {
                    let _ = w.send(outcome);
                }
            }
            CommitOutput::Resolved => self.resolved.notify_one(),
        }
    }

    /// Handles a transaction message from `from` (the driver routes them here).
    pub(crate) fn handle(self: &Arc<Self>, node: &Node, from: NodeId, msg: Message) {
        let now = clock::now();
        self.run(node, |m, engine| m.handle(now, engine, from, msg));
    }

    /// `peer`'s session ended: what it wrote or decides here is in doubt until asked.
    pub(crate) fn inquire_after_reset(self: &Arc<Self>, node: &Node, peer: NodeId) {
        self.run(node, |m, _| m.inquire_after_reset(peer));
    }

    /// `peer` restarted and what it held here was resolved.
    pub(crate) fn peer_restarted(self: &Arc<Self>, node: &Node, peer: NodeId) {
        self.run(node, |m, _| m.peer_restarted(peer));
    }

    /// Sends again what may have been lost (see [`CommitMachine::resends`]).
    pub(crate) fn resend(self: &Arc<Self>, node: &Node) {
        let now = clock::now();
        self.run(node, |m, _| m.resends(now));
    }
}
