//! The home directory: the master copy of each region created at this node, who holds
//! copies of it, and the FIFO queue of requests waiting while one is served.
//!
//! A request (a remote `GetShared`/`GetExclusive`/`Delete`, or a local access the hit path
//! could not take) is served in three steps: **start** revokes the home's own hit permissions
//! and sends the recalls it needs (downgrade the owner for a read; invalidate every other
//! holder for a write; recall everyone for a delete); **wait** collects one `RecallAck` per
//! recall and lets the home's own accesses in progress drain; **finish** grants (data to a
//! remote requester, an [`Access`](super::Access) to a local one) and updates the directory.
//! Only then does the next queued request start.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use tracing::{debug, trace};

use super::access::{AccessMode, ErasedCell};
use super::{Engine, OpError, OpId, ProtocolViolation, planted};
use crate::region::{NodeId, RegionId};
use crate::wire::{Grant, Message, Recall, Refusal, RegionImage};

/// Who holds copies of a region, as its home sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirState {
    /// Only the home has a copy (and may write it without asking anyone).
    Unowned,
    /// These nodes hold read-only copies; the home's copy is valid too.
    Shared(BTreeSet<NodeId>),
    /// This node holds the only valid copy, possibly modified.
    Exclusive(NodeId),
}

/// Who is waiting for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Requester {
    /// A local operation at the home.
    Local(OpId),
    /// A remote node.
    Remote(NodeId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    Read,
    Write,
    Delete,
}

/// A request at the home directory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    who: Requester,
    want: Want,
}

impl Request {
    pub(crate) fn access(who: Requester, mode: AccessMode) -> Self {
        let want = match mode {
            AccessMode::Read => Want::Read,
            AccessMode::Write => Want::Write,
        };
        Request { who, want }
    }

    pub(crate) fn delete(who: Requester) -> Self {
        Request {
            who,
            want: Want::Delete,
        }
    }
}

pub(crate) struct Serving {
    req: Request,
    /// Nodes whose `RecallAck` is still awaited.
    acks: BTreeSet<NodeId>,
}

/// The directory entry of one region homed here.
pub(crate) struct HomeEntry {
    pub(crate) cell: Arc<dyn ErasedCell>,
    pub(crate) dir: DirState,
    pub(crate) serving: Option<Serving>,
    pub(crate) queue: VecDeque<Request>,
    pub(crate) map_count: usize,
}

impl HomeEntry {
    pub(crate) fn new(cell: Arc<dyn ErasedCell>) -> Self {
        HomeEntry {
            cell,
            dir: DirState::Unowned,
            serving: None,
            queue: VecDeque::new(),
            map_count: 1,
        }
    }

    fn holders(&self) -> Vec<NodeId> {
        match &self.dir {
            DirState::Unowned => vec![],
            DirState::Shared(s) => s.iter().copied().collect(),
            DirState::Exclusive(o) => vec![*o],
        }
    }

    fn remove_holder(&mut self, node: NodeId) {
        match &mut self.dir {
            DirState::Shared(s) => {
                s.remove(&node);
                if s.is_empty() {
                    self.dir = DirState::Unowned;
                }
            }
            DirState::Exclusive(o) if *o == node => self.dir = DirState::Unowned,
            _ => {}
        }
    }

    /// Sets the home's hit permissions from the directory state (when nothing is queued).
    fn permit(&self) {
        let (read, write) = match self.dir {
            DirState::Unowned => (true, true),
            DirState::Shared(_) => (true, false),
            DirState::Exclusive(_) => (false, false),
        };
        self.cell.word().permit(read, write);
    }
}

impl Engine {
    pub(crate) fn home_missing(&self, id: RegionId) -> OpError {
        if self.deleted.contains(&id.seq) {
            OpError::Deleted(id)
        } else {
            OpError::NoSuchRegion(id)
        }
    }

    pub(crate) fn home_enqueue(&mut self, id: RegionId, req: Request) {
        let entry = self.homes.get_mut(&id.seq).expect("home entry");
        entry.queue.push_back(req);
        self.home_advance(id);
    }

    /// Serves queued requests for `id` as far as the protocol allows now.
    pub(crate) fn home_advance(&mut self, id: RegionId) {
        loop {
            let skip_one = planted!(self, SkipOneSharerRecall);
            let Some(entry) = self.homes.get_mut(&id.seq) else {
                return;
            };
            if entry.serving.is_none() {
                let Some(req) = entry.queue.pop_front() else {
                    entry.permit();
                    return;
                };
                entry.cell.word().revoke();
                let (targets, kind) = match req.want {
                    Want::Read => match entry.dir {
                        DirState::Exclusive(o) => (vec![o], Recall::Downgrade),
                        _ => (vec![], Recall::Downgrade),
                    },
                    Want::Write => {
                        let mut t = entry.holders();
                        if let Requester::Remote(r) = req.who {
                            t.retain(|&n| n != r);
                        }
                        if skip_one && matches!(entry.dir, DirState::Shared(_)) && !t.is_empty() {
                            t.remove(0);
                        }
                        (t, Recall::Invalidate)
                    }
                    Want::Delete => (entry.holders(), Recall::Delete),
                };
                trace!(node = %self.node, region = %id, ?req, ?targets, "serving");
                entry.serving = Some(Serving {
                    req,
                    acks: targets.iter().copied().collect(),
                });
                for to in targets {
                    self.stats.recalls_sent += 1;
                    self.send(to, Message::Recall { region: id, kind });
                }
                continue;
            }
            let serving = entry.serving.as_ref().expect("serving");
            if !serving.acks.is_empty() {
                return;
            }
            let req = serving.req;
            let busy = entry.cell.word().revoke();
            let ready = match req.want {
                Want::Read => !busy.writer,
                Want::Write | Want::Delete => busy.is_idle(),
            };
            if !ready {
                return;
            }
            entry.serving = None;
            self.home_finish(id, req);
        }
    }

    fn home_finish(&mut self, id: RegionId, req: Request) {
        let entry = self.homes.get_mut(&id.seq).expect("home entry");
        match (req.want, req.who) {
            (Want::Read, Requester::Local(op)) => {
                debug_assert!(!matches!(entry.dir, DirState::Exclusive(_)));
                let cell = entry.cell.clone();
                self.grant(op, &cell, AccessMode::Read);
            }
            (Want::Read, Requester::Remote(r)) => {
                let image = match encode_image(&*entry.cell) {
                    Ok(image) => image,
                    Err(e) => {
                        tracing::error!(node = %self.node, region = %id, "cannot encode: {e}");
                        return;
                    }
                };
                match &mut entry.dir {
                    DirState::Shared(s) => {
                        s.insert(r);
                    }
                    d => *d = DirState::Shared(BTreeSet::from([r])),
                }
                self.send(
                    r,
                    Message::Data {
                        region: id,
                        grant: Grant::Shared,
                        image: Some(image),
                    },
                );
            }
            (Want::Write, Requester::Local(op)) => {
                entry.dir = DirState::Unowned;
                let cell = entry.cell.clone();
                self.grant(op, &cell, AccessMode::Write);
            }
            (Want::Write, Requester::Remote(r)) => {
                let upgrade = matches!(&entry.dir, DirState::Shared(s) if s.contains(&r));
                let image = if upgrade {
                    None
                } else {
                    match encode_image(&*entry.cell) {
                        Ok(image) => Some(image),
                        Err(e) => {
                            tracing::error!(node = %self.node, region = %id, "cannot encode: {e}");
                            return;
                        }
                    }
                };
                entry.dir = DirState::Exclusive(r);
                self.send(
                    r,
                    Message::Data {
                        region: id,
                        grant: Grant::Exclusive,
                        image,
                    },
                );
            }
            (Want::Delete, who) => {
                let entry = self.homes.remove(&id.seq).expect("home entry");
                entry.cell.clear();
                self.deleted.insert(id.seq);
                debug!(node = %self.node, region = %id, "deleted");
                self.home_reply_deleted(id, who, true);
                for queued in entry.queue {
                    let delete = queued.want == Want::Delete;
                    self.home_reply_deleted(id, queued.who, delete);
                }
            }
        }
    }

    /// Answers a requester after (or because of) the region's deletion.
    fn home_reply_deleted(&mut self, id: RegionId, who: Requester, was_delete: bool) {
        match (who, was_delete) {
            (Requester::Local(op), true) => self.complete(op, Ok(())),
            (Requester::Local(op), false) => self.complete(op, Err(OpError::Deleted(id))),
            (Requester::Remote(r), true) => self.send(r, Message::DeleteAck { region: id }),
            (Requester::Remote(r), false) => self.send(
                r,
                Message::Refused {
                    region: id,
                    reason: Refusal::Deleted,
                },
            ),
        }
    }

    fn home_refusal(&self, id: RegionId, fingerprint: Option<u64>) -> Option<Refusal> {
        match self.homes.get(&id.seq) {
            None if self.deleted.contains(&id.seq) => Some(Refusal::Deleted),
            None => Some(Refusal::NoSuchRegion),
            Some(e) => match fingerprint {
                Some(f) if f != e.cell.fingerprint() => Some(Refusal::WrongType {
                    actual: e.cell.fingerprint(),
                }),
                _ => None,
            },
        }
    }

    /// A message about a region homed here.
    pub(crate) fn home_message(
        &mut self,
        from: NodeId,
        id: RegionId,
        msg: Message,
    ) -> Result<(), ProtocolViolation> {
        match msg {
            Message::Map { fingerprint, .. } => {
                let reply = match self.home_refusal(id, Some(fingerprint)) {
                    Some(reason) => Message::Refused { region: id, reason },
                    None => Message::MapOk { region: id },
                };
                self.send(from, reply);
            }
            Message::GetShared { fingerprint, .. } | Message::GetExclusive { fingerprint, .. } => {
                let want = if matches!(msg, Message::GetShared { .. }) {
                    AccessMode::Read
                } else {
                    AccessMode::Write
                };
                if let Some(reason) = self.home_refusal(id, Some(fingerprint)) {
                    self.send(from, Message::Refused { region: id, reason });
                    return Ok(());
                }
                let entry = &self.homes[&id.seq];
                let holds = match &entry.dir {
                    DirState::Exclusive(o) => *o == from,
                    DirState::Shared(s) => want == AccessMode::Read && s.contains(&from),
                    DirState::Unowned => false,
                };
                let asked =
                    |r: &Request| r.who == Requester::Remote(from) && r.want != Want::Delete;
                let queued = entry.queue.iter().any(asked)
                    || entry.serving.as_ref().is_some_and(|s| asked(&s.req));
                if holds || queued {
                    return Err(self.violation(
                        from,
                        Some(id),
                        "request for a copy it holds or already asked for",
                    ));
                }
                self.home_enqueue(id, Request::access(Requester::Remote(from), want));
            }
            Message::Delete { .. } => match self.home_refusal(id, None) {
                Some(Refusal::Deleted) => self.send(from, Message::DeleteAck { region: id }),
                Some(reason) => self.send(from, Message::Refused { region: id, reason }),
                None => self.home_enqueue(id, Request::delete(Requester::Remote(from))),
            },
            Message::RecallAck { image, .. } => {
                let violation = |e: &Engine, what: &str| Err(e.violation(from, Some(id), what));
                let Some(entry) = self.homes.get_mut(&id.seq) else {
                    return violation(self, "recall ack for a region not homed here");
                };
                let Some(serving) = entry.serving.as_mut() else {
                    return violation(self, "recall ack while no recall is outstanding");
                };
                if !serving.acks.remove(&from) {
                    return violation(self, "recall ack from a node that was not recalled");
                }
                let downgrade = serving.req.want == Want::Read;
                let owner = entry.dir == DirState::Exclusive(from);
                match image {
                    Some(image) => {
                        if !owner {
                            return violation(
                                self,
                                "recall ack with data from a node that does not own the region",
                            );
                        }
                        install(&*entry.cell, &image)
                            .map_err(|e| self.violation(from, Some(id), e))?;
                        let entry = self.homes.get_mut(&id.seq).expect("home entry");
                        entry.dir = if downgrade {
                            DirState::Shared(BTreeSet::from([from]))
                        } else {
                            DirState::Unowned
                        };
                    }
                    None if owner => {
                        return violation(self, "recall ack without data from the owner");
                    }
                    None => entry.remove_holder(from),
                }
                self.home_advance(id);
            }
            Message::Flush { image, .. } => {
                let Some(entry) = self.homes.get_mut(&id.seq) else {
                    // Deleted meanwhile: the flushed copy is moot.
                    self.send(from, Message::FlushAck { region: id });
                    return Ok(());
                };
                match image {
                    Some(image) => {
                        if entry.dir != DirState::Exclusive(from) {
                            return Err(self.violation(
                                from,
                                Some(id),
                                "flush with data from a node that does not own the region",
                            ));
                        }
                        install(&*entry.cell, &image)
                            .map_err(|e| self.violation(from, Some(id), e))?;
                        self.homes.get_mut(&id.seq).expect("home entry").dir = DirState::Unowned;
                    }
                    None => {
                        if !matches!(&entry.dir, DirState::Shared(s) if s.contains(&from)) {
                            return Err(self.violation(
                                from,
                                Some(id),
                                "flush of a shared copy the home does not know of",
                            ));
                        }
                        entry.remove_holder(from);
                    }
                }
                self.send(from, Message::FlushAck { region: id });
                self.home_advance(id);
            }
            Message::MapOk { .. }
            | Message::Data { .. }
            | Message::Recall { .. }
            | Message::FlushAck { .. }
            | Message::DeleteAck { .. }
            | Message::Refused { .. }
            | Message::Hello { .. } => {
                return Err(self.violation(
                    from,
                    Some(id),
                    format!("{} sent to the region's home", msg.kind_name()),
                ));
            }
        }
        Ok(())
    }
}

pub(crate) fn encode_image(
    cell: &dyn ErasedCell,
) -> Result<RegionImage, crate::region::CodecError> {
    Ok(RegionImage {
        version: cell.version(),
        bytes: cell.encode()?,
    })
}

fn install(cell: &dyn ErasedCell, image: &RegionImage) -> Result<(), String> {
    if !cell.word().in_progress().is_idle() {
        return Err("returned data for a region the home is using".into());
    }
    cell.install(&image.bytes, image.version)
        .map_err(|e| e.to_string())
}
