//! The simulated links: every ordered pair of nodes runs crl's real session layer over
//! connections that the scheduler opens, writes, delivers, acknowledges and breaks, with the
//! handshake and the epoch checks of crl-net's transport (so a fence is learned at the next
//! handshake, exactly as on real processes).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::engine::PeerReset;
use crate::fragment::{EncodedFrame, Reassembly, encode_fragments};
use crate::session::{
    Delivery, EpochCheck, RecvSession, Resume, SendSession, SessionEpoch, SessionLimits,
    check_epoch,
};
use crate::wire::{self, Lane, Message};

use super::{Check, SessionFault, Sim, describe_message};

/// The session a frame belongs to: the sender's session epoch (sent in its hello) and the
/// receiver's (answered in the hello answer). A receiver drops a frame whose session is no
/// longer its current one (crl-net's reader stops such a stream).
pub(super) type Tag = (SessionEpoch, SessionEpoch);

/// A numbered frame on a connection.
pub(super) struct Frame {
    tag: Tag,
    /// Global time (ns) before which it cannot arrive.
    due: u64,
    seq: u64,
    bytes: Arc<EncodedFrame>,
}

/// One ordered link's session: the sender's and the receiver's halves and the connection
/// between them.
pub(super) struct SimSession {
    pub(super) send: SendSession,
    /// The receiver's half (`None` after the receiver fenced the sender, until the next hello).
    pub(super) recv: Option<RecvSession>,
    /// The pieces of the fragmented message in progress on `recv`.
    partial: Reassembly,
    /// The session of the connection that is up, if one is.
    connected: Option<Tag>,
    /// Frames written on the current connection, not delivered yet.
    wire: VecDeque<Frame>,
    /// Frames of broken connections still draining (late, or void at the receiver).
    old: VecDeque<Frame>,
    /// The highest number written on any connection (for [`SessionFault::ResumeAfterWritten`]).
    written: u64,
    /// The planted [`SessionFault::KeepPiecesAcrossReset`].
    keep_pieces_across_reset: bool,
}

impl SimSession {
    pub(super) fn new(fault: Option<SessionFault>) -> Self {
        SimSession {
            keep_pieces_across_reset: fault == Some(SessionFault::KeepPiecesAcrossReset),
            send: SendSession::new(SessionLimits::new(wire::MAX_FRAME_LEN, usize::MAX / 4)),
            recv: None,
            partial: Reassembly::new(usize::MAX),
            connected: None,
            wire: VecDeque::new(),
            old: VecDeque::new(),
            written: 0,
        }
    }

    /// The receiver's session starts again (or ends): the pieces of a message in progress
    /// belong to the old one and are dropped.
    pub(super) fn set_recv(&mut self, recv: Option<RecvSession>) {
        self.recv = recv;
        if !self.keep_pieces_across_reset {
            self.partial.clear();
        }
    }

    /// The sender crashed: a new sending session (nothing to re-send, peer epoch unknown);
    /// the frames already on the way still arrive (and are dropped if the receiver has
    /// learned of the restart by then).
    pub(super) fn restart_send(&mut self) {
        self.send = SendSession::new(self.send.limits());
        self.connected = None;
        let wire = std::mem::take(&mut self.wire);
        self.old.extend(wire);
        self.written = 0;
    }

    /// Whether a protocol message (not a ping or pong) is not acknowledged yet.
    pub(super) fn protocol_unacked(&self) -> bool {
        // Pings and pongs, alone of all messages, pass any image: `Passes(None)`.
        self.send
            .unacked_lanes()
            .any(|lane| lane != Lane::Passes(None))
    }

    /// Starts a new sending session (see [`SendSession::reset`]); returns how many messages
    /// were dropped.
    pub(super) fn reset_send(&mut self, peer_epoch: Option<SessionEpoch>) -> usize {
        self.send.reset(peer_epoch)
    }

    /// Whether anything is left to do on this link, now or later.
    pub(super) fn has_work(&self) -> bool {
        !self.wire.is_empty() || !self.old.is_empty() || self.send.unacked_len() > 0
    }

    /// The earliest time a frame in flight may arrive.
    pub(super) fn next_due(&self) -> Option<u64> {
        [self.wire.front(), self.old.front()]
            .into_iter()
            .flatten()
            .map(|f| f.due)
            .min()
    }

    /// The connection breaks (on the sender's side or the receiver's): its frames not yet
    /// delivered go on draining.
    pub(super) fn disconnect(&mut self) {
        if self.connected.take().is_some() {
            self.send.on_disconnected();
        }
        let wire = std::mem::take(&mut self.wire);
        self.old.extend(wire);
    }
}

/// What a step on one link can do.
const OLD: u8 = 1;
const CONNECT: u8 = 2;
const WRITE: u8 = 4;
const WIRE: u8 = 8;
const ACK: u8 = 16;

impl Sim {
    fn link_nodes(&self, link: usize) -> (usize, usize) {
        (link / self.cfg.nodes, link % self.cfg.nodes)
    }

    /// Whether the connection of `link` still belongs to both ends' current session.
    fn tag_current(&self, link: usize, tag: Tag) -> bool {
        let (from, to) = self.link_nodes(link);
        let n = self.cfg.nodes;
        self.mine[to * n + from] == tag.1
            && self.sessions[link]
                .recv
                .as_ref()
                .is_some_and(|r| r.peer_epoch() == tag.0)
    }

    /// What a step on `link` can do now.
    fn link_actions(&self, link: usize) -> u8 {
        let s = &self.sessions[link];
        if !s.has_work() {
            return 0;
        }
        let (from, to) = self.link_nodes(link);
        let now = self.global;
        let sender_up = !self.is_paused(from);
        let receiver_up = !self.is_paused(to);
        let down = self.link_down(from, to);
        let mut mask = 0;
        if receiver_up && s.old.front().is_some_and(|f| f.due <= now) {
            mask |= OLD;
        }
        match s.connected {
            None => {
                if sender_up && receiver_up && !down && s.send.unacked_len() > 0 {
                    mask |= CONNECT;
                }
            }
            Some(tag) => {
                if sender_up && s.send.wants_write() {
                    mask |= WRITE;
                }
                if receiver_up && s.wire.front().is_some_and(|f| f.due <= now) {
                    mask |= WIRE;
                }
                if sender_up
                    && receiver_up
                    && s.wire.is_empty()
                    && !s.send.wants_write()
                    && s.send.unacked_len() > 0
                    && self.tag_current(link, tag)
                {
                    mask |= ACK;
                }
            }
        }
        mask
    }

    /// Whether some link step can do something now.
    pub(super) fn links_actionable(&self) -> bool {
        (0..self.sessions.len()).any(|l| self.link_actions(l) != 0)
    }

    /// One step of a session link: (re)connect (with the handshake), write, deliver a frame
    /// (from a broken connection still draining, or the current one), or acknowledge.
    pub(super) fn deliver_session(&mut self, pick: usize) -> Check {
        let live: Vec<(usize, u8)> = (0..self.sessions.len())
            .map(|l| (l, self.link_actions(l)))
            .filter(|&(_, m)| m != 0)
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        let (link, mask) = live[pick % live.len()];
        let entropy = pick / live.len();
        let bits: Vec<u8> = [OLD, CONNECT, WRITE, WIRE, ACK]
            .into_iter()
            .filter(|b| mask & b != 0)
            .collect();
        let action = bits[entropy % bits.len()];
        let entropy = entropy / bits.len();
        let (from, to) = self.link_nodes(link);
        match action {
            CONNECT => self.connect(link),
            OLD => {
                let frame = self.sessions[link].old.pop_front().expect("old frame");
                self.deliver_frame(link, frame, false)
            }
            WRITE => {
                let now = self.global;
                let mut written = Vec::new();
                {
                    let s = &mut self.sessions[link];
                    while let Some((seq, bytes)) = s.send.next_to_write() {
                        s.written = s.written.max(seq);
                        written.push((seq, bytes));
                    }
                }
                let tag = self.sessions[link].connected.expect("connected");
                for (seq, bytes) in written {
                    let due = now + self.latency();
                    self.sessions[link].wire.push_back(Frame {
                        tag,
                        due,
                        seq,
                        bytes,
                    });
                }
                // Some steps only write, so that several frames are in flight at once.
                if entropy & 1 == 0 && self.link_actions(link) & WIRE != 0 {
                    let frame = self.sessions[link].wire.pop_front().expect("wire frame");
                    return self.deliver_frame(link, frame, entropy & 2 == 2);
                }
                Ok(())
            }
            WIRE => {
                let frame = self.sessions[link].wire.pop_front().expect("wire frame");
                self.deliver_frame(link, frame, entropy & 2 == 2)
            }
            ACK => {
                let s = &mut self.sessions[link];
                let delivered = s.recv.as_ref().map_or(0, RecvSession::delivered);
                if let Err(v) = s.send.on_ack(delivered) {
                    return Err(self.fail(format!("n{from} -> n{to}: {v}")));
                }
                Ok(())
            }
            _ => unreachable!("no such link action"),
        }
    }

    /// A new connection on `link`: the hello, the receiver's epoch checks and answer, the
    /// sender's checks of the answer and the session's resume (crl-net's `read_stream` and
    /// `run_sender`).
    fn connect(&mut self, link: usize) -> Check {
        let n = self.cfg.nodes;
        let (from, to) = self.link_nodes(link);
        let hello_epoch = self.mine[from * n + to];
        let hello_peer = self.sessions[link].send.peer_epoch().unwrap_or_default();
        // The receiver.
        let my_epoch = self.mine[to * n + from];
        if hello_peer > my_epoch {
            return Err(self.fail(format!(
                "n{from} -> n{to}: hello names a newer session {hello_peer} of the receiver than its own {my_epoch}"
            )));
        }
        match check_epoch(self.known[to * n + from], hello_epoch) {
            EpochCheck::Older => {
                self.note(format!(
                    "n{from} -> n{to}: hello from an older session {hello_epoch}: refused"
                ));
                return Ok(());
            }
            EpochCheck::Newer => {
                let old = self.known[to * n + from].replace(hello_epoch);
                self.sessions[link].set_recv(Some(RecvSession::new(hello_epoch)));
                self.peer_session_ended(to, from, old, hello_epoch)?;
            }
            EpochCheck::First => {
                self.known[to * n + from] = Some(hello_epoch);
                self.sessions[link].set_recv(Some(RecvSession::new(hello_epoch)));
            }
            EpochCheck::Same => {
                if self.sessions[link].recv.is_none() {
                    self.sessions[link].set_recv(Some(RecvSession::new(hello_epoch)));
                }
            }
        }
        let my_epoch = self.mine[to * n + from];
        let stale = hello_peer != SessionEpoch::default() && hello_peer != my_epoch;
        let s = &self.sessions[link];
        let delivered = s.recv.as_ref().map_or(0, RecvSession::delivered);
        let received = if stale {
            0
        } else {
            match self.cfg.session_fault {
                Some(SessionFault::ResumeAfterWritten) => s.written.min(s.send.last_seq()),
                _ => delivered,
            }
        };
        // The sender reads the answer.
        match check_epoch(self.known[from * n + to], my_epoch) {
            EpochCheck::Older => {
                self.note(format!(
                    "n{from} -> n{to}: answered by an older session {my_epoch}: refused"
                ));
                return Ok(());
            }
            EpochCheck::Newer => {
                let old = self.known[from * n + to].replace(my_epoch);
                self.sessions[to * n + from].set_recv(None);
                self.peer_session_ended(from, to, old, my_epoch)?;
                return Ok(());
            }
            EpochCheck::First | EpochCheck::Same => self.known[from * n + to] = Some(my_epoch),
        }
        if stale {
            self.note(format!(
                "n{from} -> n{to}: hello meant for the receiver's session {hello_peer}, now {my_epoch}"
            ));
            return Ok(());
        }
        let s = &mut self.sessions[link];
        match s.send.on_connected(my_epoch, received) {
            Ok(Resume::Resume) => {}
            other => {
                return Err(self.fail(format!("n{from} -> n{to}: reconnect answered {other:?}")));
            }
        }
        s.connected = Some((hello_epoch, my_epoch));
        self.note(format!(
            "n{from} -> n{to}: connected (session {hello_epoch}/{my_epoch}), resuming after {received}"
        ));
        Ok(())
    }

    /// `node` heard a newer session epoch (`heard`, after `old`) from `peer`: a restart (a
    /// newer incarnation), or (same incarnation, newer generation) `peer` fenced it. It
    /// recovers as crl-net's driver does.
    fn peer_session_ended(
        &mut self,
        node: usize,
        peer: usize,
        old: Option<SessionEpoch>,
        heard: SessionEpoch,
    ) -> Check {
        if self.time.is_none() {
            return Err(self.fail(format!(
                "n{node}: n{peer} has a new session {heard} in a run without faults"
            )));
        }
        if old.is_some_and(|o| o.epoch == heard.epoch) {
            self.report.fenced_learned += 1;
            self.note(format!(
                "n{node}: learns that n{peer} fenced it (its session is now {heard})"
            ));
            self.reset_pair(node, peer, PeerReset::Fenced)
        } else {
            self.report.restarts_learned += 1;
            self.note(format!(
                "n{node}: learns that n{peer} restarted (its session is now {heard})"
            ));
            self.reset_pair(node, peer, PeerReset::Restarted)
        }
    }

    /// Delivers `frame` on `link` to its receiver: the session check, the duplicate check,
    /// then the message (to liveness or to the engine). With `ack`, the receiver also
    /// acknowledges at once.
    fn deliver_frame(&mut self, link: usize, frame: Frame, ack: bool) -> Check {
        let (from, to) = self.link_nodes(link);
        let Frame {
            tag, seq, bytes, ..
        } = frame;
        // One buffer to read from: the frame's own, unless it carries a piece of an image.
        let joined;
        let bytes: &[u8] = if bytes.body().is_empty() {
            bytes.head()
        } else {
            joined = bytes.to_vec();
            &joined
        };
        if !self.tag_current(link, tag) {
            self.report.void_frames += 1;
            self.note(format!(
                "n{from} -> n{to} #{seq}: frame of a retired session {}/{} dropped",
                tag.0, tag.1
            ));
            return Ok(());
        }
        let fault = self.cfg.session_fault;
        let s = &mut self.sessions[link];
        let recv = s.recv.as_mut().expect("checked by tag_current");
        let accepted = match (fault, recv.accept(seq)) {
            (Some(SessionFault::DeliverDuplicates), Ok(Delivery::Duplicate)) => {
                Ok(Delivery::Deliver)
            }
            (Some(SessionFault::ResumeAfterWritten), Err(_)) if seq > recv.delivered() => {
                // The old transport had no numbers: whatever arrives is delivered.
                let mut fresh = RecvSession::new(recv.peer_epoch());
                for _ in 0..seq - 1 {
                    let _ = fresh.accept(fresh.delivered() + 1);
                }
                *recv = fresh;
                recv.accept(seq)
            }
            (_, r) => r,
        };
        if ack && s.connected == Some(tag) {
            let delivered = recv.delivered();
            if let Err(v) = s.send.on_ack(delivered) {
                return Err(self.fail(format!("n{from} -> n{to}: {v}")));
            }
        }
        match accepted {
            Ok(Delivery::Deliver) => {}
            Ok(Delivery::Duplicate) => {
                if fault == Some(SessionFault::AppendDuplicateFragments) {
                    let s = &mut self.sessions[link];
                    if let Some((h, payload)) = bytes.split_first_chunk::<{ wire::HEADER_LEN }>()
                        && let Ok(header) = wire::parse_fragment_header(h)
                        && (header.more || s.partial.pending_bytes() > 0)
                    {
                        let _ = s.partial.push(header, &mut payload.to_vec());
                    }
                }
                self.report.duplicates_dropped += 1;
                self.note(format!("n{from} -> n{to}: duplicate #{seq} dropped"));
                return Ok(());
            }
            Err(v) => return Err(self.fail(format!("n{from} -> n{to}: session: {v}"))),
        }
        let piece = bytes
            .split_first_chunk::<{ wire::HEADER_LEN }>()
            .ok_or(wire::WireError::Truncated {
                needed: wire::HEADER_LEN,
                got: bytes.len(),
            })
            .and_then(|(h, payload)| {
                let header = wire::parse_fragment_header(h)?;
                if header.payload_len != payload.len() {
                    return Err(wire::WireError::Truncated {
                        needed: wire::HEADER_LEN + header.payload_len,
                        got: bytes.len(),
                    });
                }
                self.sessions[link]
                    .partial
                    .push(header, &mut payload.to_vec())
            });
        let msg = match piece {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                self.report.fragments += 1;
                self.note(format!("n{from} -> n{to} #{seq}: a fragment"));
                return Ok(());
            }
            Err(e) => return Err(self.fail(format!("n{from} -> n{to}: decode #{seq}: {e}"))),
        };
        self.report.messages += 1;
        if self.sessions[link].partial.receiving_image() {
            self.report.passed_images += 1;
        }
        if let Message::Data {
            image: Some(image), ..
        }
        | Message::RecallAck {
            image: Some(image), ..
        }
        | Message::Flush {
            image: Some(image), ..
        } = &msg
            && self.cfg.fragment_len > 0
            && image.bytes.len() > self.cfg.fragment_len
        {
            self.report.images_joined += 1;
        }
        if matches!(msg, Message::Contend { .. }) {
            self.report.contends += 1;
        }
        self.note(format!(
            "n{from} -> n{to} #{seq}: {}",
            describe_message(&msg)
        ));
        self.receive(from, to, msg)
    }

    /// Breaks the connection of `link`: of the frames written on it and not delivered yet,
    /// the first `keep` (modulo their number + 1) still arrive (later); the rest are lost.
    pub(super) fn break_link(&mut self, link: usize, keep: usize) {
        let extra: Vec<u64> = (0..self.sessions[link].wire.len())
            .map(|_| self.delay())
            .collect();
        let s = &mut self.sessions[link];
        if s.connected.is_none() {
            return;
        }
        let keep = keep % (s.wire.len() + 1);
        let lost = s.wire.len() - keep;
        let mut kept: Vec<Frame> = s.wire.drain(..).take(keep).collect();
        for (f, d) in kept.iter_mut().zip(extra) {
            f.due += d;
        }
        s.wire.extend(kept);
        s.disconnect();
        self.report.breaks += 1;
        self.report.frames_lost += lost as u64;
        let (from, to) = self.link_nodes(link);
        self.note(format!(
            "n{from} -> n{to}: connection broken, {lost} frames lost, {keep} still draining"
        ));
    }

    /// Queues `msg` from `from` to `to` on their session.
    pub(super) fn send(&mut self, from: usize, to: usize, msg: &Message) -> Check {
        let mut encoded = encode_fragments(msg.clone(), self.cfg.fragment_len, usize::MAX, 0)
            .map_err(|e| self.fail(format!("encode {msg:?}: {e}")))?;
        if self.cfg.session_fault == Some(SessionFault::PassOwnRegion)
            && matches!(encoded.lane, Lane::Passes(Some(_)))
        {
            encoded.lane = Lane::Passes(None);
        }
        let s = &mut self.sessions[from * self.cfg.nodes + to];
        match s.send.push_all(encoded) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(format!("n{from} -> n{to}: {e}"))),
        }
    }
}
