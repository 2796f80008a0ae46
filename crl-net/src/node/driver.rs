//! The node's driver: the one task that hands what the transport delivers to the engine, the
//! transaction layer and placement, in each peer's order.
//!
//! # Big images
//! Installing a region image decodes it, and a home answering a request encodes its copy:
//! about a millisecond per mebibyte each. The driver does neither for a big image
//! ([`Engine::image_work`](crl_core::engine::Engine::image_work)): it runs the work on
//! tokio's blocking pool and goes on meanwhile with every other peer's messages, and with
//! the messages of the same peer that may pass the image
//! ([`Lane::may_pass_image_of`](crl_core::wire::Lane::may_pass_image_of), the rule the
//! session applies on the link, so the engine sees no order it could not see already).
//! Everything else from that peer (its restart too) waits in [`PendingWork`] until the
//! prepared message has been handled; one piece of work runs per peer at a time, so the work
//! in flight is bounded by the number of peers. What waits is bounded as the transport's
//! delivery queue is: by what the peer's session may have in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use crl_core::NodeId;
use crl_core::engine::{PeerReset, PreparedMessage};
use crl_core::wire::Message;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::placement::handle_placement;
use super::{Durability, InternalNode, Node, NodeInner};
use crate::transport::{Inbound, SessionEnd};

/// The messages of one peer that wait for the work on a big image of a message it sent.
struct PendingWork {
    /// The image's region: the peer's messages that may pass the image are handled at once
    /// while nothing waits.
    region: crl_core::RegionId,
    /// What arrived from the peer since, in order, that may not pass the image (or came after
    /// one that may not).
    held: VecDeque<Inbound>,
}

/// The driver's state between two deliveries.
struct Driver {
    node: InternalNode,
    /// Protocol messages held back while in-doubt transactions are resolved after a restart.
    held_back: Vec<(NodeId, Message)>,
    /// Restarted peers whose prepared transactions are not resolved yet, and their messages.
    restarting: HashMap<NodeId, (PeerReset, Vec<Message>)>,
    /// Peers with a message whose big image is being worked on, and what waits for it.
    pending: HashMap<NodeId, PendingWork>,
    /// The work running on the blocking pool (at most one per peer).
    work: JoinSet<(NodeId, PreparedMessage)>,
    /// Whose message each piece of work is for (to go on after one that failed).
    work_peers: HashMap<tokio::task::Id, NodeId>,
}

pub(super) async fn drive(node: InternalNode, mut inbound: mpsc::UnboundedReceiver<Inbound>) {
    let inner = node.inner.clone();
    let mut shutdown = inner.shutdown.subscribe();
    let mut d = Driver {
        node,
        held_back: Vec::new(),
        restarting: HashMap::new(),
        pending: HashMap::new(),
        work: JoinSet::new(),
        work_peers: HashMap::new(),
    };
    loop {
        tokio::select! {
            // Biased: held-back messages go first once recovery is over, before anything that
            // arrived after them; finished work before new deliveries.
            biased;
            _ = inner.recovered.notified() => d.release_held_back(),
            Some(done) = d.work.join_next_with_id(), if !d.work.is_empty() => match done {
                Ok((id, (from, prepared))) => {
                    d.work_peers.remove(&id);
                    d.prepared(from, Some(prepared));
                }
                Err(e) => {
                    // The work catches panics of the region type's code; this is a bug of
                    // crl's. The message is lost: the peer's connection is closed as for a
                    // violation, and what waited behind it goes on.
                    if let Some(from) = d.work_peers.remove(&e.id()) {
                        tracing::error!(node = %inner.id, peer = %from, "image work failed: {e}");
                        d.prepared(from, None);
                    }
                }
            },
            m = inbound.recv() => {
                let Some(first) = m else { return };
                if !d.held_back.is_empty() && !inner.recovering.load(Ordering::Acquire) {
                    // Recovery ended between two polls: the older messages first.
                    d.release_held_back();
                }
                let mut next = Some(first);
                // Take what has already arrived, in order.
                let mut budget = 64;
                while let Some(item) = next.take() {
                    if let (Some(l), Inbound::Message { from, .. }) = (&inner.liveness, &item) {
                        l.on_heard(*from);
                    }
                    d.receive(item);
                    budget -= 1;
                    if budget > 0 {
                        next = inbound.try_recv().ok();
                    }
                }
            }
            _ = async { match &inner.durability {
                Some(d) => d.resolved().await,
                None => std::future::pending().await,
            } } => {
                if let Some(dur) = &inner.durability {
                    release_resolved(&d.node, dur, &mut d.restarting);
                }
            }
            _ = inner.drained.notified() => {
                let mut st = inner.state.lock();
                st.engine.process_drained();
                st.flush(&inner.transport, &inner.locks);
            }
            _ = shutdown.changed() => return,
        }
    }
}

impl Driver {
    fn release_held_back(&mut self) {
        for (from, msg) in self.held_back.drain(..) {
            handle_protocol(&self.node.inner, from, msg);
        }
    }

    /// Takes one delivery: at once, or behind the work on an image from the same peer.
    fn receive(&mut self, item: Inbound) {
        let from = match &item {
            Inbound::Message { from, .. } => *from,
            Inbound::PeerRestarted { peer, .. } => *peer,
        };
        if let Some(pending) = self.pending.get_mut(&from) {
            let passes = matches!(&item, Inbound::Message { msg, .. }
                if pending.held.is_empty() && msg.lane().may_pass_image_of(pending.region));
            if !passes {
                pending.held.push_back(item);
                return;
            }
        }
        self.dispatch(item);
    }

    /// Work finished (`None`: it failed): its message is handled, then what waited for it, in
    /// order (up to the next message with work, which starts).
    fn prepared(&mut self, from: NodeId, prepared: Option<PreparedMessage>) {
        let Some(pending) = self.pending.remove(&from) else {
            unreachable!("work for {from} with nothing pending");
        };
        let inner = &self.node.inner;
        let violation = match prepared {
            Some(prepared) => {
                let mut st = inner.state.lock();
                let r = st.engine.handle_prepared(from, prepared);
                st.flush(&inner.transport, &inner.locks);
                r.err().map(|v| v.to_string())
            }
            None => Some("a message's image work failed".to_string()),
        };
        if let Some(v) = violation {
            report_violation(inner, from, &v);
        }
        let mut held = pending.held;
        while !held.is_empty() {
            if let Some(next) = self.pending.get_mut(&from) {
                // Work on another message of the peer started: the rest came after it.
                debug_assert!(next.held.is_empty());
                next.held = held;
                return;
            }
            if let Some(item) = held.pop_front() {
                self.dispatch(item);
            }
        }
    }

    /// Handles one delivery now.
    fn dispatch(&mut self, item: Inbound) {
        let node: &Node = &self.node;
        let inner = &node.inner;
        match item {
            Inbound::Message {
                from,
                msg: Message::Ping { nonce },
            } => {
                let _ = inner.transport.send(from, Message::Pong { nonce });
            }
            Inbound::Message {
                from,
                msg: Message::Pong { nonce },
            } => {
                if let Some(l) = &inner.liveness {
                    l.on_pong(&inner.transport, from, nonce);
                }
            }
            Inbound::Message { from, msg } if msg.is_placement() => {
                handle_placement(node, from, msg);
            }
            Inbound::Message { from, msg } if msg.is_transaction() => match &inner.durability {
                Some(d) => {
                    d.handle(node, from, msg);
                    release_resolved(node, d, &mut self.restarting);
                }
                None => refuse_transaction(node, from, msg),
            },
            Inbound::Message { from, msg } => {
                if let Some((_, held)) = self.restarting.get_mut(&from) {
                    held.push(msg);
                } else if inner.recovering.load(Ordering::Acquire) {
                    self.held_back.push((from, msg));
                } else {
                    // One piece of work per peer: a message that passed the work in progress
                    // (about another region) does its own inline. One lock of the engine for
                    // both the offer and the handling.
                    let mut st = inner.state.lock();
                    let work = if self.pending.contains_key(&from) {
                        None
                    } else {
                        st.engine.image_work(from, &msg)
                    };
                    match work {
                        Some(work) => {
                            drop(st);
                            self.pending.insert(
                                from,
                                PendingWork {
                                    region: work.region(),
                                    held: VecDeque::new(),
                                },
                            );
                            let task = self.work.spawn_blocking(move || (from, work.run(msg)));
                            self.work_peers.insert(task.id(), from);
                        }
                        None => {
                            let r = st.engine.handle_message(from, msg);
                            st.flush(&inner.transport, &inner.locks);
                            drop(st);
                            if let Err(v) = r {
                                report_violation(inner, from, &v.to_string());
                            }
                        }
                    }
                }
            }
            Inbound::PeerRestarted { peer, epoch, cause } => {
                let reset = match cause {
                    SessionEnd::Restarted => PeerReset::Restarted,
                    SessionEnd::Fenced | SessionEnd::FencedByPeer => PeerReset::Fenced,
                };
                if cause == SessionEnd::FencedByPeer {
                    warn!(node = %inner.id, %peer, %epoch, "fenced by the peer: dropping its copies and failing what waited on it");
                } else {
                    info!(node = %inner.id, %peer, %epoch, ?cause, "the session with the peer ended: dropping what it knew");
                }
                inner.placements.home_reset(peer);
                let waiting = inner.durability.as_ref().map_or(0, |d| d.holding(peer));
                // Leases and pings start again only once the transport has
                // dropped the old session (`restart_handled`, in both branches
                // below): a ping queued before would be dropped with it.
                if waiting == 0 {
                    forget_incarnation(node, peer, true, reset);
                } else {
                    // Talk to the new incarnation now (the inquiries must reach
                    // it); what the engine sends it meanwhile is about copies the
                    // old one held and is at worst refused.
                    {
                        let _engine = inner.state.lock();
                        inner.transport.restart_handled(peer);
                    }
                    // Transactions it wrote are prepared (or being decided) here:
                    // until their coordinator says how they ended, the regions they
                    // wrote must keep their old holder (the peer's old session), or
                    // the home would serve contents that miss a committed write.
                    // Its messages wait meanwhile.
                    info!(node = %inner.id, %peer, waiting, "resolving the transactions it wrote first");
                    self.restarting.entry(peer).or_insert((reset, Vec::new()));
                    if let Some(d) = &inner.durability {
                        d.inquire_after_reset(node, peer);
                    }
                }
                if let Some(l) = &inner.liveness {
                    l.peer_reset(&inner.transport, peer, cause == SessionEnd::FencedByPeer);
                }
            }
        }
    }
}

/// Forgets the old sessions of the peers held back until the transactions they wrote were
/// decided, once none is left, and handles their held-back messages.
fn release_resolved(
    node: &Node,
    d: &Durability,
    restarting: &mut HashMap<NodeId, (PeerReset, Vec<Message>)>,
) {
    let done: Vec<NodeId> = restarting
        .keys()
        .copied()
        .filter(|&p| d.holding(p) == 0)
        .collect();
    for peer in done {
        let Some((reset, held)) = restarting.remove(&peer) else {
            continue;
        };
        forget_incarnation(node, peer, false, reset);
        for msg in held {
            // A recall ack answers a recall meant for the old incarnation's copy, which the
            // line above counted as acknowledged already.
            if !matches!(msg, Message::RecallAck { .. }) {
                handle_protocol(&node.inner, peer, msg);
            }
        }
    }
}

/// Forgets everything about `peer`'s previous session (it restarted, or one of the two fenced
/// the other).
fn forget_incarnation(node: &Node, peer: NodeId, reconnect: bool, reset: PeerReset) {
    let inner = &node.inner;
    {
        let mut st = inner.state.lock();
        st.engine.peer_reset(peer, reset);
        // Transactions here that hold copies of its regions lost those locks with the session.
        let doomed = inner.locks.home_reset(peer);
        if doomed > 0 {
            info!(node = %inner.id, %peer, doomed, "transactions holding the peer's regions must retry");
        }
        st.flush(&inner.transport, &inner.locks);
        if reconnect {
            // Under the engine lock: nothing meant for the old incarnation can be queued
            // after this, and nothing for the new one before.
            inner.transport.restart_handled(peer);
        }
    }
    inner.peer_restarts.fetch_add(1, Ordering::Relaxed);
    if let Some(d) = &inner.durability {
        d.peer_restarted(node, peer);
    }
}

/// Feeds a protocol message to the engine; a violation closes the peer's connections.
fn handle_protocol(inner: &NodeInner, from: NodeId, msg: Message) {
    let violation = {
        let mut st = inner.state.lock();
        let r = st.engine.handle_message(from, msg);
        st.flush(&inner.transport, &inner.locks);
        r.err()
    };
    if let Some(v) = violation {
        report_violation(inner, from, &v.to_string());
    }
}

/// `from` broke the protocol (or its message could not be handled): counted, and its
/// connections closed with the reason.
fn report_violation(inner: &NodeInner, from: NodeId, why: &str) {
    inner.violations.fetch_add(1, Ordering::Relaxed);
    inner.transport.close_peer(from, why);
}

/// A node without a data dir takes no part in durable commits: it votes no.
fn refuse_transaction(node: &Node, from: NodeId, msg: Message) {
    if let Message::TxPrepare { txid, .. } | Message::TxCommit { txid, .. } = msg {
        node.send(
            from,
            Message::TxReply {
                txid,
                ok: false,
                reason: format!("{} has no data dir (not durable)", node.id()),
            },
        );
    }
}
