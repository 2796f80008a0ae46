//! The driver's image work in the simulator ([`SimConfig::image_work`](super::SimConfig)).
//!
//! crl-net's driver decodes a big image, and encodes a home's copy for a request, away from
//! the engine ([`Engine::image_work`](crate::engine::Engine::image_work)), and meanwhile
//! handles the same peer's messages that may pass the image while the rest wait behind it.
//! Here every image goes that way (the engines' threshold is 0): the message waits, with its
//! work taken (an encode holds a read of the home's copy), until a later step finishes it
//! ([`ImageWork::run`], [`Engine::handle_prepared`](crate::engine::Engine::handle_prepared));
//! what arrives from the same peer meanwhile is handled at once if it may pass the image and
//! nothing waits, else it waits in order. Before a node forgets a peer's session the work
//! for that peer is finished (the driver handles the peer's restart after it); a crash
//! drops the crashed node's work.

use std::collections::VecDeque;

use super::{Check, SessionFault, Sim, describe_message};
use crate::engine::ImageWork;
use crate::region::{NodeId, RegionId};
use crate::wire::Message;

/// A message waiting for its image work at `to`, and what waits behind it.
pub(super) struct SimWork {
    to: usize,
    from: usize,
    work: ImageWork,
    msg: Message,
    held: VecDeque<Message>,
}

impl Sim {
    /// `msg` from `from` reaches `to`'s engine: at once, behind work in progress for the same
    /// peer, or as work of its own.
    pub(super) fn hand_to_engine(&mut self, from: usize, to: usize, msg: Message) -> Check {
        let pass_all = self.cfg.session_fault == Some(SessionFault::PassWorkInProgress);
        if let Some(w) = self.works.iter_mut().find(|w| w.to == to && w.from == from) {
            let passes =
                w.held.is_empty() && (pass_all || msg.lane().may_pass_image_of(w.work.region()));
            if !passes {
                w.held.push_back(msg);
                return Ok(());
            }
            self.report.passed_work += 1;
        } else if self.cfg.image_work
            && let Some(work) = self.engines[to].image_work(NodeId(from as u32), &msg)
        {
            self.note(format!(
                "n{to}: works on {} from n{from} beside the engine",
                describe_message(&msg)
            ));
            self.report.image_work += 1;
            self.works.push(SimWork {
                to,
                from,
                work,
                msg,
                held: VecDeque::new(),
            });
            return Ok(());
        }
        self.observe_image(to, &msg);
        if let Err(v) = self.engines[to].handle_message(NodeId(from as u32), msg) {
            return Err(self.fail(format!("n{to} reports {v}")));
        }
        self.collect(to)
    }

    /// Whether an encode beside the engine holds a read of `region`'s copy at `node`.
    pub(super) fn encoding(&self, node: usize, region: RegionId) -> bool {
        self.works
            .iter()
            .any(|w| w.to == node && w.work.region() == region && w.work.holds_read())
    }

    /// Whether some image work waits to be finished.
    pub(super) fn working(&self) -> bool {
        !self.works.is_empty()
    }

    /// Finishes work number `pick` (modulo the work waiting): its message is handled with the
    /// work done, then what waited behind it, in order.
    pub(super) fn finish_work(&mut self, pick: usize) -> Check {
        let w = self.works.remove(pick % self.works.len());
        let (to, from) = (w.to, w.from);
        self.note(format!(
            "n{to}: work done on {} from n{from}; {} waited behind it",
            describe_message(&w.msg),
            w.held.len()
        ));
        self.observe_image(to, &w.msg);
        let prepared = w.work.run(w.msg);
        if let Err(v) = self.engines[to].handle_prepared(NodeId(from as u32), prepared) {
            return Err(self.fail(format!("n{to} reports {v}")));
        }
        self.collect(to)?;
        let mut held = w.held;
        while !held.is_empty() {
            if let Some(next) = self.works.iter_mut().find(|w| w.to == to && w.from == from) {
                // Work on a message that waited began: the rest came after it.
                next.held = held;
                return Ok(());
            }
            if let Some(msg) = held.pop_front() {
                self.hand_to_engine(from, to, msg)?;
            }
        }
        Ok(())
    }

    /// Finishes the work `to` does for messages from `from`, and what waits behind it, before
    /// `to` forgets `from`'s session.
    pub(super) fn finish_work_from(&mut self, to: usize, from: usize) -> Check {
        while let Some(i) = self.works.iter().position(|w| w.to == to && w.from == from) {
            self.finish_work(i)?;
        }
        Ok(())
    }

    /// `node` crashed: its work dies with it (the reads its encodes held end on the old
    /// engine's cells).
    pub(super) fn drop_work_at(&mut self, node: usize) {
        self.works.retain(|w| w.to != node);
    }
}
