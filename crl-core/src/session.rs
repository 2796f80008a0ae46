//! Sessions: exactly-once, in-order delivery between two live incarnations of two nodes,
//! across any number of broken and re-opened connections (DESIGN.md §6, rule 1).
//!
//! A QUIC stream is reliable and ordered only while its connection lives: frames written just
//! before a connection breaks may never arrive. The engine, however, needs every message to a
//! peer delivered once and in order for as long as both nodes live. A session bridges the two,
//! as TCP does over IP, but across connections:
//!
//! - The sender numbers its messages 1, 2, 3, … ([`SendSession::push`]) and keeps each one,
//!   already encoded, in a **retransmit buffer** until the receiver acknowledges it.
//! - The receiver delivers a message only if its number is the next one expected
//!   ([`RecvSession::accept`]); a number already delivered is a duplicate and is dropped; a
//!   gap cannot happen on a correct peer and is a protocol violation.
//! - Acknowledgements are cumulative: "I have delivered everything up to `n`"
//!   ([`SendSession::on_ack`]).
//! - On every new connection the receiver says in its handshake answer how far it got
//!   ([`SendSession::on_connected`]) and the sender re-sends from there.
//!
//! **Epochs.** A session binds one incarnation of each end. Every node has an epoch that only
//! grows (bumped at every start). The handshake carries both: the connecting node's own epoch
//! and the epoch it believes the other end has. [`check_epoch`] sorts what a node hears about a
//! peer's epoch into *same*, *newer* (the peer restarted: everything queued for its old
//! incarnation is void and the session starts again at 1) and *older* (a zombie: an old
//! process, or a delayed handshake; refused).
//!
//! **Bounds.** A frame longer than [`SessionLimits::max_message_len`] is refused by
//! [`SendSession::push`] before it is numbered, so it can never wedge the link. A message
//! longer than a frame travels as several frames ([`crate::fragment`]), pushed together by
//! [`SendSession::push_all`]: all of them are numbered, or none. The retransmit
//! buffer holds at most [`SessionLimits::max_unacked_bytes`] bytes before
//! [`SendSession::has_room`] turns false: the node's operations then wait (under their own
//! timeout) for acknowledgements; the engine, which cannot wait, is never refused except by
//! the hard limit, [`SessionLimits::hard_unacked_bytes`], which a live peer that reads its
//! stream reaches only when messages larger than the soft bound add up past it (room for
//! one largest message is part of it: [`SessionLimits::with_largest_message`]).
//!
//! The session is a pure state machine: no I/O, no clock. The transport (crl-net) writes what
//! [`SendSession::next_to_write`] returns, feeds acknowledgements and handshake answers back,
//! and calls [`SendSession::on_disconnected`] when a connection breaks. The simulator drives
//! the same code with links that lose frames.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::fragment::EncodedFrame;

/// The length of the sequence number that precedes every numbered frame on a stream: a
/// little-endian `u64`.
pub const SEQ_LEN: usize = 8;

/// Default bound on a session's retransmit buffer before operations wait: 64 MiB.
pub const DEFAULT_MAX_UNACKED_BYTES: usize = 64 * 1024 * 1024;

/// Bounds of a session. See the [module docs](self#bounds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// The largest frame (header included) the session takes: a message longer than that is
    /// pushed as fragments ([`crate::fragment`]).
    pub max_message_len: usize,
    /// Bytes kept for retransmission beyond which [`SendSession::has_room`] is false.
    pub max_unacked_bytes: usize,
    /// Bytes kept for retransmission beyond which [`SendSession::push`] refuses every message
    /// ([`SendError::Overflow`]): the peer does not acknowledge what it is sent.
    pub hard_unacked_bytes: usize,
}

impl SessionLimits {
    /// Limits for frames up to `max_message_len` bytes and a soft buffer bound of
    /// `max_unacked_bytes`; the hard bound is twice the soft one plus one largest frame.
    ///
    /// A message in fragments ([`SendSession::push_all`]) is taken whole whenever the buffer
    /// is not over the hard bound, so the buffer holds at most the hard bound plus one largest
    /// message: a peer that stops reading can make this node keep that much, no more.
    pub fn new(max_message_len: usize, max_unacked_bytes: usize) -> Self {
        SessionLimits {
            max_message_len,
            max_unacked_bytes,
            hard_unacked_bytes: max_unacked_bytes
                .saturating_mul(2)
                .saturating_add(max_message_len),
        }
    }

    /// The same limits for a session whose messages, fragments together, may be up to
    /// `largest` bytes: the hard bound becomes twice the soft one plus one largest message,
    /// so a message of any allowed size, taken whole below the bound, never pushes the
    /// buffer over it by itself and the messages after it are still taken while the peer
    /// reads.
    pub fn with_largest_message(self, largest: usize) -> Self {
        SessionLimits {
            hard_unacked_bytes: self
                .max_unacked_bytes
                .saturating_mul(2)
                .saturating_add(largest.max(self.max_message_len)),
            ..self
        }
    }
}

/// Why a message was not taken by [`SendSession::push`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The message is longer than a frame may be.
    #[error("message of {len} bytes exceeds the frame limit of {max} bytes")]
    TooLarge {
        /// The encoded length.
        len: usize,
        /// [`SessionLimits::max_message_len`].
        max: usize,
    },
    /// The retransmit buffer is over its hard bound: the peer acknowledges nothing.
    #[error("retransmit buffer over its hard bound ({bytes} bytes unacknowledged)")]
    Overflow {
        /// The bytes waiting for acknowledgement.
        bytes: usize,
    },
}

/// A peer broke the session protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionViolation {
    /// An acknowledgement for messages that were never sent.
    #[error("acknowledgement of message {acked}, but only {sent} were sent")]
    AckBeyondSent {
        /// The acknowledged number.
        acked: u64,
        /// The highest number sent.
        sent: u64,
    },
    /// A message number that skips ahead of the next expected one.
    #[error("message number {got} skips ahead of {expected}")]
    Gap {
        /// The number received.
        got: u64,
        /// The next number expected.
        expected: u64,
    },
}

/// Which incarnation of a node, and which of its sessions towards one peer, a message belongs
/// to. Ordered by `epoch`, then `generation`: both only grow.
///
/// The `epoch` is the node's incarnation (bumped at every start). The `generation` counts,
/// within one incarnation, how often this node fenced that peer (DESIGN.md §6, rule 3): a
/// fence retires the pair's session for good, as a restart would, without a process restart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionEpoch {
    /// The node's incarnation.
    pub epoch: u64,
    /// The session generation towards one peer within the incarnation.
    pub generation: u64,
}

impl SessionEpoch {
    /// Incarnation `epoch`, generation `generation`.
    pub const fn new(epoch: u64, generation: u64) -> Self {
        SessionEpoch { epoch, generation }
    }

    /// The next generation of the same incarnation (after a fence).
    pub const fn next_generation(self) -> Self {
        SessionEpoch {
            epoch: self.epoch,
            generation: self.generation + 1,
        }
    }
}

impl std::fmt::Display for SessionEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.epoch, self.generation)
    }
}

/// What a node hears about a peer's epoch, compared with the one it knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochCheck {
    /// The first epoch heard from this peer.
    First,
    /// The incarnation already known.
    Same,
    /// A newer incarnation: the peer restarted (or was fenced and came back).
    Newer,
    /// An older incarnation than one already heard from: a zombie, refused.
    Older,
}

/// Compares an epoch heard from a peer with the one known (`None`: never heard from it).
/// Epochs only grow, so an older one can only come from a dead incarnation or a delayed
/// handshake.
pub fn check_epoch(known: Option<SessionEpoch>, heard: SessionEpoch) -> EpochCheck {
    match known {
        None => EpochCheck::First,
        Some(k) if heard == k => EpochCheck::Same,
        Some(k) if heard > k => EpochCheck::Newer,
        Some(_) => EpochCheck::Older,
    }
}

/// How a (re)connection's handshake answer fits the sending session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Same incarnation (or the first one): writing resumes after the last message the peer
    /// delivered.
    Resume,
    /// The peer is a newer incarnation than the one this session's messages were meant for:
    /// they are void. The session must be [`reset`](SendSession::reset) before anything is
    /// written on a connection to it.
    PeerRestarted,
    /// The peer answered with an older epoch than the session's: a zombie.
    Zombie,
}

/// One numbered, encoded message waiting for acknowledgement.
#[derive(Debug)]
struct Unacked {
    seq: u64,
    /// Shared with the writer, so a write needs no copy of a large message.
    frame: Arc<EncodedFrame>,
}

/// The sending half of a session: numbering, the retransmit buffer, resume after reconnect.
#[derive(Debug)]
pub struct SendSession {
    limits: SessionLimits,
    /// The receiver's incarnation these messages are meant for (`None` until the first
    /// handshake answer: messages queued before any contact are meant for whichever
    /// incarnation answers first).
    peer_epoch: Option<SessionEpoch>,
    /// The number the next pushed message gets.
    next_seq: u64,
    /// Messages not yet acknowledged, in order (written or not).
    unacked: VecDeque<Unacked>,
    unacked_bytes: usize,
    /// The number of the next message to write on the current connection (`None`: not
    /// connected).
    cursor: Option<u64>,
    /// Messages written, counting re-sends.
    writes: u64,
    /// Messages written again after a reconnect.
    resends: u64,
    /// Bumped by every [`reset`](SendSession::reset): acknowledgements that arrive on a
    /// connection of an older generation belong to a dead session and must be ignored.
    generation: u64,
}

impl SendSession {
    /// A session with nothing sent, for a peer whose epoch is not known yet.
    pub fn new(limits: SessionLimits) -> Self {
        SendSession {
            limits,
            peer_epoch: None,
            next_seq: 1,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            cursor: None,
            writes: 0,
            resends: 0,
            generation: 0,
        }
    }

    /// The session's generation: bumped by every [`reset`](SendSession::reset).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The limits.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// The receiver incarnation this session is bound to, if any handshake answered yet.
    pub fn peer_epoch(&self) -> Option<SessionEpoch> {
        self.peer_epoch
    }

    /// Takes an encoded message (a wire frame) and numbers it. It will be written on the
    /// current connection or the next, and kept until acknowledged.
    pub fn push(&mut self, frame: impl Into<EncodedFrame>) -> Result<u64, SendError> {
        let frame = frame.into();
        if frame.len() > self.limits.max_message_len {
            return Err(SendError::TooLarge {
                len: frame.len(),
                max: self.limits.max_message_len,
            });
        }
        if self.unacked_bytes > self.limits.hard_unacked_bytes {
            return Err(SendError::Overflow {
                bytes: self.unacked_bytes,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unacked_bytes += frame.len();
        self.unacked.push_back(Unacked {
            seq,
            frame: Arc::new(frame),
        });
        Ok(seq)
    }

    /// Takes the frames of one message (its fragments, in order) and numbers them
    /// consecutively; returns the number of the last. All are taken or none: a frame over the
    /// frame limit, or a buffer over the hard bound, refuses the whole message. `number` is
    /// called with each frame's number before it is kept (to write the number into it).
    pub fn push_all(
        &mut self,
        frames: Vec<EncodedFrame>,
        mut number: impl FnMut(u64, &mut EncodedFrame),
    ) -> Result<u64, SendError> {
        if let Some(f) = frames
            .iter()
            .find(|f| f.len() > self.limits.max_message_len)
        {
            return Err(SendError::TooLarge {
                len: f.len(),
                max: self.limits.max_message_len,
            });
        }
        if self.unacked_bytes > self.limits.hard_unacked_bytes {
            return Err(SendError::Overflow {
                bytes: self.unacked_bytes,
            });
        }
        for mut frame in frames {
            let seq = self.next_seq;
            number(seq, &mut frame);
            self.next_seq += 1;
            self.unacked_bytes += frame.len();
            self.unacked.push_back(Unacked {
                seq,
                frame: Arc::new(frame),
            });
        }
        Ok(self.last_seq())
    }

    /// Whether the retransmit buffer is under its soft bound (operations may add to it).
    pub fn has_room(&self) -> bool {
        self.unacked_bytes < self.limits.max_unacked_bytes
    }

    /// Bytes waiting for acknowledgement.
    pub fn unacked_bytes(&self) -> usize {
        self.unacked_bytes
    }

    /// Messages waiting for acknowledgement.
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// The number of the last message pushed (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Messages written so far, re-sends included.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Messages written again after a connection broke.
    pub fn resends(&self) -> u64 {
        self.resends
    }

    /// A new connection's handshake answered: the receiver is incarnation `peer_epoch` and
    /// has delivered every message up to `received` of this session.
    ///
    /// On [`Resume::Resume`], the acknowledged messages are dropped and writing restarts at
    /// `received + 1`. On the other outcomes nothing changes and nothing may be written.
    pub fn on_connected(
        &mut self,
        peer_epoch: SessionEpoch,
        received: u64,
    ) -> Result<Resume, SessionViolation> {
        match self.peer_epoch {
            Some(e) if peer_epoch > e => return Ok(Resume::PeerRestarted),
            Some(e) if peer_epoch < e => return Ok(Resume::Zombie),
            _ => {}
        }
        if self.peer_epoch.is_none() && received != 0 {
            // A first contact cannot have delivered anything of ours.
            return Err(SessionViolation::AckBeyondSent {
                acked: received,
                sent: 0,
            });
        }
        self.peer_epoch = Some(peer_epoch);
        self.on_ack(received)?;
        self.cursor = Some(received + 1);
        Ok(Resume::Resume)
    }

    /// The receiver has delivered every message up to `received`: they are dropped from the
    /// retransmit buffer. Stale acknowledgements (lower than one seen) are harmless.
    pub fn on_ack(&mut self, received: u64) -> Result<(), SessionViolation> {
        if received > self.last_seq() {
            return Err(SessionViolation::AckBeyondSent {
                acked: received,
                sent: self.last_seq(),
            });
        }
        while let Some(front) = self.unacked.front() {
            if front.seq > received {
                break;
            }
            self.unacked_bytes -= front.frame.len();
            self.unacked.pop_front();
        }
        Ok(())
    }

    /// The next message to write on the current connection, with its number; advances the
    /// cursor. `None` if nothing is left to write or no connection is up.
    pub fn next_to_write(&mut self) -> Option<(u64, Arc<EncodedFrame>)> {
        let cursor = self.cursor?;
        let first = self.unacked.front()?.seq;
        // Acknowledgements may have dropped messages the cursor had not reached yet (a
        // re-send raced with the peer's acknowledgement): skip them.
        let seq = cursor.max(first);
        let idx = usize::try_from(seq - first).ok()?;
        let item = self.unacked.get(idx)?;
        self.cursor = Some(seq + 1);
        self.writes += 1;
        Some((item.seq, item.frame.clone()))
    }

    /// Whether a connection is up and a message waits to be written on it.
    pub fn wants_write(&self) -> bool {
        match (self.cursor, self.unacked.back()) {
            (Some(c), Some(last)) => c <= last.seq,
            _ => false,
        }
    }

    /// The connection broke: the next one re-sends everything not acknowledged.
    pub fn on_disconnected(&mut self) {
        if let (Some(c), Some(front)) = (self.cursor, self.unacked.front()) {
            self.resends += c.saturating_sub(front.seq);
        }
        self.cursor = None;
    }

    /// Starts a new session with a new incarnation of the peer (`peer_epoch`), or with whatever
    /// incarnation answers next (`None`): every message queued for the old one is dropped and
    /// numbering starts again at 1. Returns how many messages were dropped.
    pub fn reset(&mut self, peer_epoch: Option<SessionEpoch>) -> usize {
        let dropped = self.unacked.len();
        self.peer_epoch = peer_epoch;
        self.next_seq = 1;
        self.unacked.clear();
        self.unacked_bytes = 0;
        self.cursor = None;
        self.generation += 1;
        dropped
    }
}

/// What to do with a numbered message that arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The next message in order: deliver it.
    Deliver,
    /// Already delivered (a re-send after a reconnect, or an older connection still
    /// draining): drop it.
    Duplicate,
}

/// The receiving half of a session: which numbered messages to deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecvSession {
    /// The sender's incarnation.
    peer_epoch: SessionEpoch,
    /// The highest number delivered (every lower one was delivered too).
    delivered: u64,
    /// Duplicates dropped.
    duplicates: u64,
}

impl RecvSession {
    /// A session with incarnation `peer_epoch` of the sender, nothing delivered yet.
    pub fn new(peer_epoch: SessionEpoch) -> Self {
        RecvSession {
            peer_epoch,
            delivered: 0,
            duplicates: 0,
        }
    }

    /// The sender's incarnation.
    pub fn peer_epoch(&self) -> SessionEpoch {
        self.peer_epoch
    }

    /// The highest number delivered: the cumulative acknowledgement to send.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Duplicates dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Decides what to do with message `seq`. Delivering it is the caller's job, before any
    /// later call (hold the session's lock across both).
    pub fn accept(&mut self, seq: u64) -> Result<Delivery, SessionViolation> {
        if seq == 0 {
            return Err(SessionViolation::Gap {
                got: 0,
                expected: self.delivered + 1,
            });
        }
        if seq <= self.delivered {
            self.duplicates += 1;
            return Ok(Delivery::Duplicate);
        }
        if seq != self.delivered + 1 {
            return Err(SessionViolation::Gap {
                got: seq,
                expected: self.delivered + 1,
            });
        }
        self.delivered = seq;
        Ok(Delivery::Deliver)
    }
}

#[cfg(test)]
mod tests {
    fn ep(n: u64) -> SessionEpoch {
        SessionEpoch::new(n, 0)
    }

    use super::*;
    use proptest::prelude::*;

    fn limits() -> SessionLimits {
        SessionLimits::new(100, 250)
    }

    fn frame(n: u8, len: usize) -> EncodedFrame {
        EncodedFrame::new(vec![n; len])
    }

    #[test]
    fn numbers_buffers_and_acknowledges() {
        let mut s = SendSession::new(limits());
        assert_eq!(s.push(frame(1, 10)).unwrap(), 1);
        assert_eq!(s.push(frame(2, 10)).unwrap(), 2);
        assert!(
            s.next_to_write().is_none(),
            "nothing is written before a handshake"
        );
        assert_eq!(s.on_connected(ep(7), 0).unwrap(), Resume::Resume);
        assert_eq!(s.next_to_write().unwrap().0, 1);
        assert_eq!(s.next_to_write().unwrap().0, 2);
        assert!(s.next_to_write().is_none());
        assert_eq!(s.unacked_bytes(), 20);
        s.on_ack(1).unwrap();
        assert_eq!((s.unacked_len(), s.unacked_bytes()), (1, 10));
        s.on_ack(1).unwrap(); // stale: harmless
        assert!(s.on_ack(3).is_err(), "ack of a message never sent");
    }

    /// Found by `examples/big_regions` (outside the tests): a 256 MiB region, taken whole
    /// below the hard bound, left the buffer over it until most of it was acknowledged, so
    /// every message after it on that link (a small miss's answer, a recall) was refused and
    /// lost, and the small read waited out its timeout. The hard bound leaves room for one
    /// largest message beside the rest.
    #[test]
    fn one_largest_message_never_blocks_those_after_it() {
        let limits = SessionLimits::new(100, 250).with_largest_message(1000);
        assert_eq!(limits.hard_unacked_bytes, 1500);
        let mut s = SendSession::new(limits);
        let big: Vec<EncodedFrame> = (0..10).map(|i| frame(i, 100)).collect();
        s.push_all(big, |_, _| {}).unwrap();
        for i in 0..5 {
            s.push(frame(i, 100)).unwrap();
        }
        // A peer that acknowledges nothing still reaches the bound.
        while s.unacked_bytes() <= limits.hard_unacked_bytes {
            s.push(frame(9, 100)).unwrap();
        }
        assert!(matches!(
            s.push(frame(9, 1)),
            Err(SendError::Overflow { .. })
        ));
    }

    #[test]
    fn a_fragmented_message_is_numbered_whole_or_not_at_all() {
        let limits = SessionLimits::new(100, 250);
        assert_eq!(limits.hard_unacked_bytes, 600);
        let mut s = SendSession::new(limits);
        let mut numbered = Vec::new();
        let last = s
            .push_all(vec![frame(1, 100), frame(2, 100), frame(3, 7)], |n, f| {
                numbered.push(n);
                f.head_mut()[0] = n as u8;
            })
            .unwrap();
        assert_eq!((last, numbered), (3, vec![1, 2, 3]));
        assert_eq!((s.unacked_len(), s.unacked_bytes()), (3, 207));
        // One frame over the frame limit refuses the whole message.
        let err = s
            .push_all(vec![frame(4, 10), frame(5, 101)], |_, _| {})
            .unwrap_err();
        assert_eq!(err, SendError::TooLarge { len: 101, max: 100 });
        assert_eq!((s.last_seq(), s.unacked_bytes()), (3, 207));
        // A message bigger than the hard bound still goes in whole while the buffer is under
        // the hard bound, and nothing after it does until acknowledged.
        let big: Vec<EncodedFrame> = (0..14).map(|i| frame(i, 100)).collect();
        assert_eq!(s.push_all(big, |_, _| {}).unwrap(), 17);
        assert!(matches!(
            s.push_all(vec![frame(9, 1)], |_, _| {}),
            Err(SendError::Overflow { bytes: 1607 })
        ));
        s.on_connected(ep(1), 0).unwrap();
        let written: Vec<u64> = std::iter::from_fn(|| s.next_to_write().map(|(n, _)| n)).collect();
        assert_eq!(written, (1..=17).collect::<Vec<_>>());
        assert_eq!(s.next_to_write().map(|(_, f)| f.head()[0]), None);
        s.on_ack(17).unwrap();
        assert_eq!(s.push_all(vec![frame(9, 1)], |_, _| {}).unwrap(), 18);
    }

    #[test]
    fn a_reconnect_resends_from_what_the_peer_delivered() {
        let mut s = SendSession::new(limits());
        for i in 0..4 {
            s.push(frame(i, 5)).unwrap();
        }
        s.on_connected(ep(7), 0).unwrap();
        for _ in 0..4 {
            s.next_to_write().unwrap();
        }
        s.on_disconnected();
        assert!(s.next_to_write().is_none());
        // The peer got 1 and 2 before the break.
        assert_eq!(s.on_connected(ep(7), 2).unwrap(), Resume::Resume);
        let again: Vec<u64> = std::iter::from_fn(|| s.next_to_write().map(|w| w.0)).collect();
        assert_eq!(again, vec![3, 4]);
        assert_eq!(s.resends(), 4, "the cursor had passed all four");
    }

    #[test]
    fn epochs_sort_restarts_and_zombies() {
        assert_eq!(check_epoch(None, ep(3)), EpochCheck::First);
        assert_eq!(check_epoch(Some(ep(3)), ep(3)), EpochCheck::Same);
        assert_eq!(check_epoch(Some(ep(3)), ep(4)), EpochCheck::Newer);
        assert_eq!(check_epoch(Some(ep(3)), ep(2)), EpochCheck::Older);
        // A fence bumps the generation within an incarnation; a restart beats any generation.
        let fenced = ep(3).next_generation();
        assert_eq!(check_epoch(Some(ep(3)), fenced), EpochCheck::Newer);
        assert_eq!(check_epoch(Some(fenced), ep(3)), EpochCheck::Older);
        assert_eq!(
            check_epoch(Some(SessionEpoch::new(3, 9)), ep(4)),
            EpochCheck::Newer
        );
        let mut s = SendSession::new(limits());
        s.push(frame(1, 5)).unwrap();
        s.on_connected(ep(10), 0).unwrap();
        s.on_disconnected();
        assert_eq!(s.on_connected(ep(11), 0).unwrap(), Resume::PeerRestarted);
        assert!(
            s.next_to_write().is_none(),
            "nothing goes to the new incarnation"
        );
        assert_eq!(s.on_connected(ep(9), 0).unwrap(), Resume::Zombie);
        assert_eq!(s.reset(Some(ep(11))), 1);
        assert_eq!(s.push(frame(2, 5)).unwrap(), 1, "numbering starts again");
        assert_eq!(s.on_connected(ep(11), 0).unwrap(), Resume::Resume);
        assert_eq!(*s.next_to_write().unwrap().1, frame(2, 5));
    }

    #[test]
    fn a_first_contact_cannot_claim_deliveries() {
        let mut s = SendSession::new(limits());
        s.push(frame(1, 5)).unwrap();
        assert!(s.on_connected(ep(3), 1).is_err());
    }

    #[test]
    fn bounds_refuse_oversized_and_overflow() {
        let mut s = SendSession::new(limits());
        assert_eq!(
            s.push(frame(0, 101)),
            Err(SendError::TooLarge { len: 101, max: 100 })
        );
        assert_eq!(s.last_seq(), 0, "a refused message takes no number");
        for i in 0..3 {
            s.push(frame(i, 100)).unwrap();
        }
        assert!(!s.has_room(), "300 bytes is over the soft bound of 250");
        // The hard bound is 2 * 250 + 100 = 600.
        for i in 3..7 {
            s.push(frame(i, 100)).unwrap();
        }
        assert!(matches!(
            s.push(frame(7, 1)),
            Err(SendError::Overflow { .. })
        ));
        s.on_connected(ep(1), 0).unwrap();
        s.on_ack(7).unwrap();
        assert!(s.has_room());
        assert_eq!(s.unacked_bytes(), 0);
    }

    #[test]
    fn receiver_delivers_once_in_order() {
        let mut r = RecvSession::new(ep(4));
        assert_eq!(r.accept(1), Ok(Delivery::Deliver));
        assert_eq!(r.accept(1), Ok(Delivery::Duplicate));
        assert_eq!(r.accept(2), Ok(Delivery::Deliver));
        assert!(r.accept(4).is_err(), "a gap is a violation");
        assert!(r.accept(0).is_err());
        assert_eq!((r.delivered(), r.duplicates()), (2, 1));
    }

    /// A link model: each connection carries a prefix of what was written on it (a break loses
    /// an arbitrary suffix), acknowledgements are lost with the connection too, and several
    /// connections may overlap (an old one still draining). Whatever happens, the receiver
    /// delivers every pushed message exactly once, in order, once a connection finally stays
    /// up long enough.
    #[derive(Clone, Debug)]
    enum Step {
        Push(u8),
        Connect,
        Write,
        Deliver,
        Ack,
        Break,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => any::<u8>().prop_map(Step::Push),
            1 => Just(Step::Connect),
            4 => Just(Step::Write),
            4 => Just(Step::Deliver),
            2 => Just(Step::Ack),
            1 => Just(Step::Break),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn exactly_once_in_order_across_breaks(steps in proptest::collection::vec(step(), 0..200)) {
            let mut s = SendSession::new(SessionLimits::new(64, 1 << 20));
            let mut r = RecvSession::new(ep(1));
            let mut pushed: Vec<u8> = Vec::new();
            let mut delivered: Vec<u8> = Vec::new();
            // In flight on the current connection (seq, payload); None when down.
            let mut wire: Option<VecDeque<(u64, Vec<u8>)>> = None;
            // Frames still draining from older connections.
            let mut old: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
            let deliver = |r: &mut RecvSession, seq: u64, f: Vec<u8>, out: &mut Vec<u8>| {
                match r.accept(seq).expect("no violation on a correct link") {
                    Delivery::Deliver => out.push(f[0]),
                    Delivery::Duplicate => {}
                }
            };
            for st in steps {
                match st {
                    Step::Push(b) => {
                        s.push(vec![b; 3]).unwrap();
                        pushed.push(b);
                    }
                    Step::Connect => {
                        if let Some(w) = wire.take() {
                            old.extend(w);
                            s.on_disconnected();
                        }
                        prop_assert_eq!(s.on_connected(ep(1), r.delivered()).unwrap(), Resume::Resume);
                        wire = Some(VecDeque::new());
                    }
                    Step::Write => {
                        if let Some(w) = wire.as_mut()
                            && let Some((seq, f)) = s.next_to_write()
                        {
                            w.push_back((seq, f.to_vec()));
                        }
                    }
                    Step::Deliver => {
                        if let Some((seq, f)) = old.pop_front() {
                            deliver(&mut r, seq, f, &mut delivered);
                        } else if let Some((seq, f)) = wire.as_mut().and_then(|w| w.pop_front()) {
                            deliver(&mut r, seq, f, &mut delivered);
                        }
                    }
                    Step::Ack => {
                        if wire.is_some() {
                            s.on_ack(r.delivered()).unwrap();
                        }
                    }
                    Step::Break => {
                        // Everything in flight on the connection is lost.
                        wire = None;
                        s.on_disconnected();
                    }
                }
                prop_assert!(pushed.starts_with(&delivered), "delivered out of order or twice");
            }
            // Heal: one connection that stays up.
            for (seq, f) in old.drain(..) {
                deliver(&mut r, seq, f, &mut delivered);
            }
            s.on_disconnected();
            s.on_connected(ep(1), r.delivered()).unwrap();
            while let Some((seq, f)) = s.next_to_write() {
                let f = f.to_vec();
                deliver(&mut r, seq, f, &mut delivered);
            }
            s.on_ack(r.delivered()).unwrap();
            prop_assert_eq!(&delivered, &pushed);
            prop_assert_eq!(s.unacked_len(), 0);
        }
    }
}
