//! Scripted networks of engines (no scheduler, no checker): for tests of specific races.

use std::collections::{BTreeMap, VecDeque};

use crate::engine::Engine;
use crate::engine::{Access, EngineConfig, EntrySnapshot, Event, OpError, OpId};
use crate::region::{NodeId, RegionId};
use crate::wire::Message;

/// Engines joined by per-link FIFO queues that the caller drives message by message: for
/// scripted scenarios (tests of specific races, examples). Deterministic: [`settle`](Self::settle)
/// delivers links in a fixed order.
pub struct Network {
    engines: Vec<Engine>,
    links: BTreeMap<(usize, usize), VecDeque<Message>>,
    events: Vec<Vec<Event>>,
}

impl Network {
    /// `n` engines with ids 0..n and the given configuration.
    pub fn new(n: usize, config: EngineConfig) -> Self {
        Network {
            engines: (0..n)
                .map(|i| Engine::new(NodeId(i as u32), config.clone()))
                .collect(),
            links: BTreeMap::new(),
            events: (0..n).map(|_| Vec::new()).collect(),
        }
    }

    /// Node `i`'s engine. Call [`pump`](Self::pump) after driving it directly.
    pub fn engine(&mut self, i: usize) -> &mut Engine {
        &mut self.engines[i]
    }

    /// Replaces node `i`'s engine (e.g. to give it another configuration).
    pub fn replace_engine(&mut self, i: usize, engine: Engine) {
        self.engines[i] = engine;
    }

    /// Moves node `i`'s output onto the links and into its event list.
    pub fn pump(&mut self, i: usize) {
        while let Some(t) = self.engines[i].poll_transmit() {
            self.links
                .entry((i, t.to.0 as usize))
                .or_default()
                .push_back(t.msg);
        }
        while let Some(e) = self.engines[i].poll_event() {
            self.events[i].push(e);
        }
    }

    /// The next message on link `from → to`.
    pub fn peek(&self, from: usize, to: usize) -> Option<&Message> {
        self.links.get(&(from, to)).and_then(|l| l.front())
    }

    /// Messages in flight on link `from → to`.
    pub fn in_flight(&self, from: usize, to: usize) -> usize {
        self.links.get(&(from, to)).map_or(0, |l| l.len())
    }

    /// Delivers the head of link `from → to` and returns it.
    ///
    /// # Panics
    /// If nothing is in flight there or the receiver reports a protocol violation.
    pub fn deliver(&mut self, from: usize, to: usize) -> Message {
        let msg = self
            .links
            .get_mut(&(from, to))
            .and_then(|l| l.pop_front())
            .unwrap_or_else(|| panic!("nothing in flight n{from} -> n{to}"));
        self.engines[to]
            .handle_message(NodeId(from as u32), msg.clone())
            .unwrap_or_else(|v| panic!("protocol violation: {v}"));
        self.pump(to);
        msg
    }

    /// Delivers everything (lowest link first) until nothing is in flight; returns what was
    /// delivered, as `(from, to, message)`.
    pub fn settle(&mut self) -> Vec<(usize, usize, Message)> {
        let mut delivered = Vec::new();
        while let Some((&(from, to), _)) = self.links.iter().find(|(_, l)| !l.is_empty()) {
            let msg = self.deliver(from, to);
            delivered.push((from, to, msg));
        }
        delivered
    }

    /// Takes the grant of `op` at node `node`, if it happened.
    pub fn granted(&mut self, node: usize, op: OpId) -> Option<Access> {
        let pos = self.events[node]
            .iter()
            .position(|e| matches!(e, Event::Granted { op: o, .. } if *o == op))?;
        match self.events[node].remove(pos) {
            Event::Granted { access, .. } => Some(access),
            _ => None,
        }
    }

    /// Takes the completion of `op` at node `node`, if it happened.
    pub fn completed(&mut self, node: usize, op: OpId) -> Option<Result<(), OpError>> {
        let pos = self.events[node]
            .iter()
            .position(|e| matches!(e, Event::Completed { op: o, .. } if *o == op))?;
        match self.events[node].remove(pos) {
            Event::Completed { result, .. } => Some(result),
            _ => None,
        }
    }

    /// Takes the [`Event::Wanted`] reports of node `node` so far, as `(region, priority)`.
    pub fn take_wanted(&mut self, node: usize) -> Vec<(RegionId, u64)> {
        let mut wanted = Vec::new();
        self.events[node].retain(|e| match e {
            Event::Wanted { region, priority } => {
                wanted.push((*region, *priority));
                false
            }
            _ => true,
        });
        wanted
    }

    /// Takes the [`Event::CopyLost`] reports of node `node` so far.
    pub fn take_lost(&mut self, node: usize) -> Vec<RegionId> {
        let mut lost = Vec::new();
        self.events[node].retain(|e| match e {
            Event::CopyLost { region } => {
                lost.push(*region);
                false
            }
            _ => true,
        });
        lost
    }

    /// Whether node `node` has an event (of any kind) for `op` not yet taken.
    pub fn has_event_for(&self, node: usize, op: OpId) -> bool {
        self.events[node].iter().any(|e| e.op() == Some(op))
    }

    /// Restarts node `i` as `engine` (its next incarnation): messages in flight to or from it
    /// are lost, its untaken events are dropped, and every other engine is told
    /// ([`Engine::peer_restarted`]) before anything else happens.
    pub fn restart(&mut self, i: usize, engine: Engine) {
        self.links.retain(|&(from, to), _| from != i && to != i);
        self.events[i].clear();
        self.engines[i] = engine;
        for n in 0..self.engines.len() {
            if n != i {
                self.engines[n].peer_restarted(NodeId(i as u32));
                self.pump(n);
            }
        }
    }

    /// The protocol state of `id` at `node`.
    pub fn inspect(&self, node: usize, id: RegionId) -> Option<EntrySnapshot> {
        self.engines[node].inspect(id)
    }
}
