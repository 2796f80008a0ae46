//! Connections between nodes: one QUIC endpoint per node, mutual TLS, an authenticated
//! handshake, and a **session** per peer pair that loses nothing across broken connections.
//!
//! **Sessions** (DESIGN.md §6, rule 1; the state machines are [`crl_core::session`]). Between
//! two live incarnations of two nodes, every message is delivered exactly once and in order,
//! across any number of broken and re-opened connections. Each node numbers the messages it
//! sends to a peer and keeps them, encoded, in a bounded retransmit buffer until the peer
//! acknowledges them (cumulatively). Each new connection starts with a handshake in which the
//! receiver says how far it got; the sender re-sends the rest, and the receiver drops any
//! number it has already delivered. So the engine's assumption, reliable per-link FIFO, holds
//! for real: a cut that heals, however long, loses nothing. One relaxation, which the
//! engine's per-region state machines allow: a message of one frame about another region, a
//! ping or a pong may pass the remaining pieces of a big region's image
//! ([`crl_core::wire::Lane`]), so it does not wait for hundreds of megabytes.
//!
//! **Streams.** For each direction of each peer pair, the sending node opens a connection and
//! one bidirectional stream on it. The sender writes its numbered messages on the stream; the
//! receiver answers on the same stream's other half with the handshake answer
//! ([`Message::HelloAck`]) and then with acknowledgements ([`Message::Ack`], coalesced, at most
//! one per [`ACK_INTERVAL`], or at once after [`ACK_EVERY`] messages). Numbered frames are a little-endian `u64` sequence number followed
//! by a wire frame.
//!
//! **Epochs.** Every node has an epoch (its incarnation) that only grows (see also fences,
//! below). The hello carries the
//! sender's epoch and the epoch it believes the receiver has; the answer carries the
//! receiver's. Hearing a *newer* epoch of a peer (from either side) means it restarted: the
//! transport delivers [`Inbound::PeerRestarted`] before any message of the new incarnation,
//! writes nothing more to the peer until the driver calls [`Transport::restart_handled`] (which
//! drops every message queued for the old incarnation and starts a new session), and the
//! receiving side starts counting the new incarnation's messages from 1. Hearing an *older*
//! epoch than one already heard means a zombie (an old process, a delayed handshake): it is
//! refused with a logged reason. A hello whose idea of this node's epoch is older than this
//! node's is answered with this node's epoch and nothing on it is delivered: its messages were
//! meant for an incarnation that is gone.
//!
//! **Fences.** A node that fenced a peer ([`Transport::fence`], decided by
//! [`crate::liveness`]) retires the pair's session for good: its session epoch towards that
//! peer gets a new *generation* (epochs are `(incarnation, generation)`, compared in that
//! order), nothing more of the old session is delivered, and the driver gets
//! [`Inbound::PeerRestarted`] with [`SessionEnd::Fenced`] and recovers as for a restart. The
//! fenced peer's next hello names the old generation: it is answered with the new one and
//! nothing on it is delivered; the peer then sees a newer generation of the same incarnation,
//! which is how it learns it was fenced ([`SessionEnd::FencedByPeer`]), drops what it shared
//! with this node, and opens a new session. Both ends may fence each other (a symmetric cut):
//! each then resets twice, and no message crosses between the two resets, since a hello is
//! only answered with deliveries when it names the receiver's current session epoch.
//!
//! **Authentication.** TLS checks both certificates against the cluster CA. That alone is not
//! enough: with QUIC a client may consider itself connected before the server has rejected its
//! certificate, and a valid certificate may belong to another node. So the first frame on every
//! stream must be a [`Message::Hello`] naming the cluster and the sender's node id, and the
//! receiver checks the id against the peer's certificate ([`tls::verify_peer`]) and its own
//! membership list before reading anything else. Any failure closes the connection with a
//! logged reason.
//!
//! **Bounds.** Frames longer than the configured limit are refused before allocation when
//! read. A message longer than a fragment travels as several numbered frames
//! ([`crl_core::fragment`]), reassembled in one buffer per peer, bounded by
//! [`TransportSettings::max_message_len`]; a message over that bound is refused before it is
//! numbered ([`SendError::TooLarge`]): it is logged and dropped, it never reaches the link,
//! so it cannot wedge it. The
//! retransmit buffer per peer has a soft bound in bytes ([`TransportSettings::max_unacked_bytes`]):
//! operations wait for room with [`Transport::wait_for_room`] under their own timeout, while the
//! engine's own answers are always taken, up to a hard bound (twice the soft one plus one
//! largest message; a message in fragments goes in whole while the buffer is under it, so one
//! message of any allowed size never blocks those after it) that a peer which stops reading
//! reaches, and a reading one only when big messages adding up to more than one largest
//! message are in flight to it at once. Past it, this node stops talking to the peer until
//! the failure detector fences it ([`TransportSettings::silence_on_overflow`]), so the pair
//! starts over as after a cut instead of losing a message inside a session that goes on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crl_core::NodeId;
use crl_core::fragment::{DEFAULT_FRAGMENT_LEN, EncodedFrame, Reassembly, encode_fragments};
use crl_core::session::{
    Delivery, EpochCheck, RecvSession, Resume, SEQ_LEN, SendError, SendSession, SessionEpoch,
    SessionLimits, check_epoch,
};
use crl_core::wire::{self, Message};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::frame::{FrameError, read_fragment, read_frame, read_seq, write_frame};
use crate::tls::{self, NodeIdentity, TlsError};

/// How often a receiver acknowledges what it delivered since its last acknowledgement. Acks
/// only free the sender's retransmit buffer, so they stay off the latency path: a timer, not a
/// wake-up per message (on a 2-vCPU machine each cross-thread wake costs tens of µs).
pub const ACK_INTERVAL: Duration = Duration::from_millis(10);
/// Messages delivered without acknowledgement after which the receiver acknowledges at once,
/// whatever the timer says (bounds the retransmit buffer under a burst).
pub const ACK_EVERY: u64 = 256;
/// Bytes read ahead from a link's stream.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Bytes of small frames gathered into one stream write.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Longest pause between connection attempts to an unreachable peer.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Application error codes used when closing a connection.
mod close_code {
    pub const SHUTDOWN: u32 = 0;
    pub const REFUSED: u32 = 1;
    pub const BAD_FRAME: u32 = 2;
    pub const PROTOCOL: u32 = 3;
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The TLS configuration could not be built.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// The UDP socket or QUIC endpoint could not be set up.
    #[error("cannot open the quic endpoint: {0}")]
    Endpoint(#[from] std::io::Error),
}

/// What an operation is about to send, for [`Transport::wait_for_room`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    /// A small request: the unwritten pieces of a big image, which it would pass or wait
    /// behind, do not count ([`SendSession::has_room`]).
    Request,
    /// A message that may carry a region's contents (a flush, a placed create): everything
    /// waiting counts ([`SendSession::has_room_for_contents`]).
    Contents,
}

/// What the transport delivers to the node's driver, in order.
#[derive(Debug)]
pub enum Inbound {
    /// A message from an authenticated peer.
    Message {
        /// The sender (authenticated).
        from: NodeId,
        /// The message.
        msg: Message,
    },
    /// The session with `peer` is over: it restarted, it fenced this node, or this node fenced
    /// it ([`Transport::fence`]). Everything shared in the old session is gone. Delivered
    /// before any message of the new session. The driver must answer with
    /// [`Transport::restart_handled`] once it has forgotten the old session.
    PeerRestarted {
        /// The peer.
        peer: NodeId,
        /// Its session epoch now.
        epoch: SessionEpoch,
        /// Why the session ended.
        cause: SessionEnd,
    },
}

/// Why a session with a peer ended ([`Inbound::PeerRestarted`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The peer came back with a new incarnation (it restarted).
    Restarted,
    /// The peer fenced this node (it heard nothing from it for longer than its peer timeout)
    /// and says so with a new session generation.
    FencedByPeer,
    /// This node fenced the peer ([`Transport::fence`]).
    Fenced,
}

/// Traffic counters for one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer.
    pub node: NodeId,
    /// Whether a connection to it is up now (the session survives without one).
    pub connected: bool,
    /// Messages sent to it (each counted once, however often it was re-sent).
    pub messages_sent: u64,
    /// Bytes of messages sent to it (frames, headers included, each counted once).
    pub bytes_sent: u64,
    /// Messages received from it and delivered.
    pub messages_received: u64,
    /// Bytes received from it.
    pub bytes_received: u64,
    /// Messages written again on a new connection because the old one broke before the peer
    /// acknowledged them.
    pub messages_resent: u64,
    /// Messages received twice (a re-send of something delivered) and dropped.
    pub duplicates_dropped: u64,
    /// Messages refused before sending (larger than a frame, or the peer acknowledged
    /// nothing for too long).
    pub messages_refused: u64,
    /// Bytes sent and not yet acknowledged (the retransmit buffer).
    pub unacked_bytes: u64,
}

#[derive(Default)]
struct PeerCounters {
    connected: AtomicBool,
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
    messages_received: AtomicU64,
    bytes_received: AtomicU64,
    duplicates_dropped: AtomicU64,
    messages_refused: AtomicU64,
}

/// Settings of a [`Transport`].
#[derive(Clone, Debug)]
pub struct TransportSettings {
    /// The cluster's id (hellos from other clusters are refused).
    pub cluster_id: u64,
    /// Bound on a connection attempt and on waiting for a hello or its answer.
    pub connect_timeout: Duration,
    /// Largest frame payload accepted or sent.
    pub max_frame_len: usize,
    /// Largest message accepted or sent, fragments together (archived bytes): a message
    /// longer than a fragment ([`crl_core::fragment::DEFAULT_FRAGMENT_LEN`], or
    /// `max_frame_len` if smaller) travels in fragments.
    pub max_message_len: usize,
    /// Soft bound on each peer's retransmit buffer, in bytes.
    pub max_unacked_bytes: usize,
    /// This node's incarnation, sent in every hello (a greater one after each restart).
    pub epoch: u64,
    /// What happens when a peer's retransmit buffer passes its hard bound. `true` (a
    /// failure detector runs: `peer_timeout`): this node stops talking to the peer (nothing
    /// sent, nothing delivered, its connections closed) until the failure detector fences it
    /// after the peer timeout, and the pair starts over, as after a cut; no message is lost
    /// inside a session that goes on. `false` (no failure detector): the message past the
    /// bound is dropped (logged, counted) and the peer's connections closed.
    pub silence_on_overflow: bool,
}

/// What this node knows of a peer's incarnation, and its receiving session.
struct PeerState {
    /// This node's session epoch towards the peer: its incarnation, and the generation bumped
    /// by every fence of the peer.
    mine: SessionEpoch,
    /// The newest session epoch heard from the peer.
    known_epoch: Option<SessionEpoch>,
    /// The session of messages from incarnation `known_epoch`.
    recv: Option<RecvSession>,
    /// The pieces received so far of the message in progress on `recv` (a message longer
    /// than a frame); cleared whenever `recv` changes.
    partial: Reassembly,
    /// A [`Inbound::PeerRestarted`] was delivered and the driver has not handled it yet:
    /// nothing is written to the peer meanwhile.
    restart_pending: bool,
}

/// Everything about one peer.
struct Link {
    peer: NodeId,
    addr: SocketAddr,
    counters: PeerCounters,
    /// The sending session (numbering, retransmit buffer).
    send: Mutex<SendSession>,
    /// Incarnation and receiving session. Lock order: `state` before `send`.
    state: Mutex<PeerState>,
    /// Wakes the link's sender task (a message was queued, a restart handled, a connect
    /// requested).
    wake: Notify,
    /// Wakes operations waiting for room in the retransmit buffer.
    room: Notify,
    /// Connect even with nothing to send (an announce).
    connect_requested: AtomicBool,
    /// `(peer's epoch, this node's epoch, delivered)` of the receiving session: the
    /// acknowledgement to send. Read by the ackers on their timer (nobody waits on it, so
    /// updating it wakes nobody).
    delivered: watch::Sender<(SessionEpoch, SessionEpoch, u64)>,
    /// Wakes the ackers: something was delivered after a quiet period, or a burst of
    /// [`ACK_EVERY`] deliveries.
    ack_now: Notify,
    /// Deliveries wait for an acknowledgement (set by the reader, cleared by the acker).
    ack_pending: AtomicBool,
    /// Connections accepted from the peer (to close them on a protocol violation).
    accepted: Mutex<Vec<quinn::Connection>>,
    /// Its retransmit buffer passed the hard bound: nothing is sent to it, delivered from it
    /// or connected until it is fenced ([`TransportSettings::silence_on_overflow`]).
    silenced: AtomicBool,
}

struct Inner {
    node: NodeId,
    settings: TransportSettings,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    links: BTreeMap<NodeId, Arc<Link>>,
    inbound: mpsc::UnboundedSender<Inbound>,
    shutdown: watch::Sender<bool>,
}

/// A node's QUIC transport. See the [module docs](self).
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    /// Starts the endpoint on `socket`, its accept loop and one sender task per peer. Received
    /// messages arrive on the returned channel. Must be called inside a tokio runtime.
    pub fn start(
        identity: &NodeIdentity,
        socket: std::net::UdpSocket,
        peers: BTreeMap<NodeId, SocketAddr>,
        settings: TransportSettings,
    ) -> Result<(Transport, mpsc::UnboundedReceiver<Inbound>), TransportError> {
        let runtime = quinn::default_runtime()
            .ok_or_else(|| std::io::Error::other("no async runtime found"))?;
        let socket = runtime.wrap_udp_socket(socket)?;
        Transport::start_with_abstract_socket(identity, socket, peers, settings)
    }

    /// Like [`start`](Self::start), on any [`quinn::AsyncUdpSocket`] (for example one that
    /// drops datagrams on command, to cut a node off in tests).
    pub fn start_with_abstract_socket(
        identity: &NodeIdentity,
        socket: Arc<dyn quinn::AsyncUdpSocket>,
        peers: BTreeMap<NodeId, SocketAddr>,
        settings: TransportSettings,
    ) -> Result<(Transport, mpsc::UnboundedReceiver<Inbound>), TransportError> {
        let node = identity.node();
        let server = identity.server_config()?;
        let client = identity.client_config()?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| std::io::Error::other("no async runtime found"))?;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        // A frame on a link is its number, the wire header and the payload.
        // Fragmented messages go in whole below the hard bound, which leaves room for one
        // largest message (see `SessionLimits::with_largest_message`): its frames, with a
        // number and a header each, and an image's head.
        let per_frame = wire::HEADER_LEN + SEQ_LEN;
        let fragment_len = DEFAULT_FRAGMENT_LEN.min(settings.max_frame_len).max(1);
        let largest = settings
            .max_message_len
            .saturating_add((settings.max_message_len / fragment_len + 2) * per_frame)
            .saturating_add(4096);
        let limits = SessionLimits::new(
            settings.max_frame_len + per_frame,
            settings.max_unacked_bytes,
        )
        .with_largest_message(largest);
        let links = peers
            .iter()
            .map(|(&peer, &addr)| {
                let link = Link {
                    peer,
                    addr,
                    counters: PeerCounters::default(),
                    send: Mutex::new(SendSession::new(limits).with_seq_prefix()),
                    state: Mutex::new(PeerState {
                        mine: SessionEpoch::new(settings.epoch, 0),
                        known_epoch: None,
                        recv: None,
                        partial: Reassembly::new(settings.max_message_len),
                        restart_pending: false,
                    }),
                    wake: Notify::new(),
                    room: Notify::new(),
                    connect_requested: AtomicBool::new(false),
                    delivered: watch::channel(Default::default()).0,
                    ack_now: Notify::new(),
                    ack_pending: AtomicBool::new(false),
                    accepted: Mutex::new(Vec::new()),
                    silenced: AtomicBool::new(false),
                };
                (peer, Arc::new(link))
            })
            .collect();
        let inner = Arc::new(Inner {
            node,
            settings,
            endpoint,
            client,
            links,
            inbound: tx,
            shutdown,
        });
        let span = info_span!("transport", node = %node);
        tokio::spawn(accept_loop(inner.clone()).instrument(span));
        for link in inner.links.values() {
            let span = info_span!("link", node = %node, peer = %link.peer);
            tokio::spawn(run_sender(inner.clone(), link.clone()).instrument(span));
        }
        Ok((Transport { inner }, rx))
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Whether `node` is a member this transport can reach.
    pub fn knows(&self, node: NodeId) -> bool {
        self.inner.links.contains_key(&node)
    }

    /// Whether a connection to `peer` is up now.
    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.inner
            .links
            .get(&peer)
            .is_some_and(|l| l.counters.connected.load(Ordering::Relaxed))
    }

    /// Queues `msg` for `to`, in order after every message queued for `to` before (but that
    /// it may pass the rest of a big image of another region: [`crl_core::wire::Lane`]); it
    /// is delivered exactly once while both nodes live. Never blocks. Call it in the order the
    /// engine produced the messages. A message larger than a frame, or to a peer that has
    /// acknowledged nothing past the hard bound, is refused (logged and counted).
    pub fn send(&self, to: NodeId, msg: Message) -> Result<(), SendError> {
        let Some(link) = self.inner.links.get(&to) else {
            warn!(node = %self.inner.node, peer = %to, "dropping a message to a node outside the cluster");
            return Ok(());
        };
        if link.silenced.load(Ordering::Acquire) {
            // The session is void: it ends with the fence the silence leads to.
            link.counters
                .messages_refused
                .fetch_add(1, Ordering::Relaxed);
            debug!(node = %self.inner.node, peer = %to, "not sending a {} to a silenced peer", msg.kind_name());
            return Err(SendError::Overflow {
                bytes: link.send.lock().unacked_bytes(),
            });
        }
        // Each frame as written on the stream: its number, then the wire frame (the whole
        // message, or one fragment of it). The session fills the numbers in when it numbers
        // the frames (at once, or, for an image's pieces, when the writer reaches them).
        let fragment_len = DEFAULT_FRAGMENT_LEN.min(self.inner.settings.max_frame_len);
        let kind = msg.kind_name();
        let encoded = match encode_fragments(
            msg,
            fragment_len,
            self.inner.settings.max_message_len,
            SEQ_LEN,
        ) {
            Ok(encoded) => encoded,
            Err(e) => {
                link.counters
                    .messages_refused
                    .fetch_add(1, Ordering::Relaxed);
                error!(node = %self.inner.node, peer = %to, "refusing to send a {kind}: {e}");
                return Err(match e {
                    wire::WireError::MessageTooLarge { len, max } => {
                        SendError::TooLarge { len, max }
                    }
                    // Only an oversized message makes encoding fail.
                    _ => SendError::TooLarge {
                        len: 0,
                        max: self.inner.settings.max_message_len,
                    },
                });
            }
        };
        let len: usize = encoded.frames.iter().map(EncodedFrame::len).sum();
        let pushed = link.send.lock().push_all(encoded);
        match pushed {
            Ok(_) => {
                link.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
                link.counters
                    .bytes_sent
                    .fetch_add(len as u64, Ordering::Relaxed);
                link.wake.notify_one();
                Ok(())
            }
            Err(e) => {
                link.counters
                    .messages_refused
                    .fetch_add(1, Ordering::Relaxed);
                if matches!(e, SendError::Overflow { .. })
                    && self.inner.settings.silence_on_overflow
                {
                    // Between a fence (or the peer's restart) and the driver's
                    // `restart_handled`, the buffer still holds the old session, which that
                    // call drops with this message: nothing to silence.
                    if !link.state.lock().restart_pending {
                        self.silence(to, &format!("{e} (with a {kind})"));
                    }
                    return Err(e);
                }
                error!(node = %self.inner.node, peer = %to, "refusing to send a {kind}: {e}");
                if matches!(e, SendError::Overflow { .. }) {
                    self.close_peer(to, "it acknowledges nothing: retransmit buffer overflow");
                }
                Err(e)
            }
        }
    }

    /// Waits until the retransmit buffer to `peer` is under its soft bound for what the
    /// operation will send ([`Room`]). Operations call it (under their own timeout) before
    /// sending, so a peer that does not keep up slows its clients down instead of growing
    /// this node's memory. Cancel-safe.
    pub async fn wait_for_room(&self, peer: NodeId, room: Room) {
        let Some(link) = self.inner.links.get(&peer) else {
            return;
        };
        loop {
            let notified = link.room.notified();
            let has_room = {
                let s = link.send.lock();
                match room {
                    Room::Request => s.has_room(),
                    Room::Contents => s.has_room_for_contents(),
                }
            };
            if has_room {
                return;
            }
            notified.await;
        }
    }

    /// Connects to every peer now (each learns this node's epoch from the hello), instead of
    /// at the first message. A restarted node calls it so that peers drop its old state.
    pub fn announce(&self) {
        for link in self.inner.links.values() {
            link.connect_requested.store(true, Ordering::Release);
            link.wake.notify_one();
        }
    }

    /// The driver has handled [`Inbound::PeerRestarted`] for `peer`: messages queued before
    /// now were for its old incarnation and are dropped; a new session starts with the new
    /// one. Call it with the engine lock held, right after the engine forgot the old
    /// incarnation, so that no message meant for it lands in the new session.
    pub fn restart_handled(&self, peer: NodeId) {
        let Some(link) = self.inner.links.get(&peer) else {
            return;
        };
        let dropped = {
            let mut state = link.state.lock();
            state.restart_pending = false;
            link.send.lock().reset(state.known_epoch)
        };
        if dropped > 0 {
            info!(node = %self.inner.node, %peer, dropped, "dropped the messages queued for the peer's previous incarnation");
        }
        link.connect_requested.store(true, Ordering::Release);
        link.wake.notify_one();
        link.room.notify_waiters();
    }

    /// Stops talking to `peer` until it is fenced (see
    /// [`TransportSettings::silence_on_overflow`]): nothing more is sent to it or delivered
    /// from it, its connections are closed and no new one is made or accepted, so the
    /// failure detector hears nothing and fences it after the peer timeout, when the peer's
    /// leases on this node's regions have ended too (its pings go unanswered), exactly as
    /// after a cut. The fence ends the silence.
    fn silence(&self, peer: NodeId, why: &str) {
        let Some(link) = self.inner.links.get(&peer) else {
            return;
        };
        if !link.silenced.swap(true, Ordering::AcqRel) {
            error!(node = %self.inner.node, %peer, "the retransmit buffer to the peer passed its hard bound: {why}; not talking to it until it is fenced (after the peer timeout), as after a cut");
        }
        self.close_peer(
            peer,
            "silenced: the retransmit buffer passed its hard bound",
        );
        link.wake.notify_one();
    }

    /// Fences `peer` (DESIGN.md §6, rule 3): the pair's session is retired for good. This
    /// node's session epoch towards the peer gets a new generation, nothing more of the old
    /// session is delivered, and [`Inbound::PeerRestarted`] (cause [`SessionEnd::Fenced`])
    /// goes to the driver, which answers with [`restart_handled`](Self::restart_handled) as
    /// for a restart. When the peer comes back, its hello names the old generation: it is
    /// answered with the new one and learns it was fenced.
    pub fn fence(&self, peer: NodeId) {
        let Some(link) = self.inner.links.get(&peer) else {
            return;
        };
        {
            let mut state = link.state.lock();
            state.mine = state.mine.next_generation();
            state.recv = None;
            state.partial.clear();
            state.restart_pending = true;
            link.silenced.store(false, Ordering::Release);
            warn!(node = %self.inner.node, %peer, epoch = %state.mine, "fenced the peer: its session is retired");
            let _ = self.inner.inbound.send(Inbound::PeerRestarted {
                peer,
                epoch: state.known_epoch.unwrap_or_default(),
                cause: SessionEnd::Fenced,
            });
        }
        for conn in std::mem::take(&mut *link.accepted.lock()) {
            conn.close(close_code::REFUSED.into(), b"fenced");
        }
        link.wake.notify_one();
    }

    /// This node's session epoch towards `peer` (its incarnation and the fence generation).
    pub fn session_epoch(&self, peer: NodeId) -> Option<SessionEpoch> {
        self.inner.links.get(&peer).map(|l| l.state.lock().mine)
    }

    /// Closes every connection accepted from `peer`, logging `reason` (used when the peer
    /// broke the protocol).
    pub fn close_peer(&self, peer: NodeId, reason: &str) {
        warn!(node = %self.inner.node, %peer, "closing connections: {reason}");
        if let Some(link) = self.inner.links.get(&peer) {
            for conn in std::mem::take(&mut *link.accepted.lock()) {
                conn.close(close_code::PROTOCOL.into(), reason.as_bytes());
            }
        }
    }

    /// Traffic counters per peer.
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        self.inner
            .links
            .values()
            .map(|l| {
                let c = &l.counters;
                let (resent, unacked) = {
                    let s = l.send.lock();
                    (s.resends(), s.unacked_bytes() as u64)
                };
                PeerStats {
                    node: l.peer,
                    connected: c.connected.load(Ordering::Relaxed),
                    messages_sent: c.messages_sent.load(Ordering::Relaxed),
                    bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
                    messages_received: c.messages_received.load(Ordering::Relaxed),
                    bytes_received: c.bytes_received.load(Ordering::Relaxed),
                    messages_resent: resent,
                    duplicates_dropped: c.duplicates_dropped.load(Ordering::Relaxed),
                    messages_refused: c.messages_refused.load(Ordering::Relaxed),
                    unacked_bytes: unacked,
                }
            })
            .collect()
    }

    /// Closes the endpoint and every connection at once (no wait for the peers), for a stop
    /// outside any runtime. The socket goes when the last task holding the endpoint ends.
    pub fn close_now(&self) {
        self.inner.shutdown.send_replace(true);
        self.inner
            .endpoint
            .close(close_code::SHUTDOWN.into(), b"shutdown");
        for link in self.inner.links.values() {
            drop(std::mem::take(&mut *link.accepted.lock()));
        }
    }

    /// Stops sending and accepting, closes the endpoint and waits (bounded) for it to idle.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        self.inner
            .endpoint
            .close(close_code::SHUTDOWN.into(), b"shutdown");
        // Let go of the accepted connections: each keeps the endpoint's socket.
        for link in self.inner.links.values() {
            drop(std::mem::take(&mut *link.accepted.lock()));
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
        // Release the address now (handles may keep the endpoint alive for a while): a node
        // restarted in the same process binds it again. Twice: quinn keeps the socket it
        // replaced (`prev_socket`) until traffic arrives on the new one, which after a
        // shutdown may be never; the second rebind replaces that one too.
        for _ in 0..2 {
            if let Ok(spare) = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
                && let Err(e) = self.inner.endpoint.rebind(spare)
            {
                debug!("releasing the endpoint's socket: {e}");
            }
        }
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            incoming = inner.endpoint.accept() => incoming,
            _ = shutdown.changed() => return,
        };
        let Some(incoming) = incoming else { return };
        tokio::spawn(handle_incoming(inner.clone(), incoming).in_current_span());
    }
}

async fn handle_incoming(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(inner.settings.connect_timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            info!(%remote, "refused a connection: {e}");
            return;
        }
        Err(_) => {
            info!(%remote, "refused a connection: handshake timed out");
            return;
        }
    };
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(
                    read_stream(inner.clone(), conn.clone(), send, recv).in_current_span(),
                );
            }
            Err(e) => {
                debug!(%remote, "connection ended: {e}");
                return;
            }
        }
    }
}

fn refuse(conn: &quinn::Connection, code: u32, reason: &str) {
    warn!(remote = %conn.remote_address(), "refusing peer: {reason}");
    conn.close(code.into(), reason.as_bytes());
}

/// Reads and checks the hello that opens every stream; returns the sender and its epochs.
async fn read_hello(
    inner: &Inner,
    conn: &quinn::Connection,
    stream: &mut quinn::RecvStream,
    buf: &mut Vec<u8>,
) -> Option<(NodeId, SessionEpoch, SessionEpoch)> {
    let max = inner.settings.max_frame_len;
    let hello =
        tokio::time::timeout(inner.settings.connect_timeout, read_frame(stream, max, buf)).await;
    match hello {
        Ok(Ok(Some(Message::Hello {
            cluster_id,
            node,
            epoch,
            generation,
            peer_epoch,
            peer_generation,
        }))) => {
            if cluster_id != inner.settings.cluster_id {
                refuse(
                    conn,
                    close_code::REFUSED,
                    &format!(
                        "hello from cluster {cluster_id}, this is cluster {}",
                        inner.settings.cluster_id
                    ),
                );
                return None;
            }
            if !inner.links.contains_key(&node) {
                refuse(
                    conn,
                    close_code::REFUSED,
                    &format!("hello from {node}, not a member of this cluster"),
                );
                return None;
            }
            if let Err(e) = tls::verify_peer(conn, node) {
                refuse(
                    conn,
                    close_code::REFUSED,
                    &format!("hello claims {node}: {e}"),
                );
                return None;
            }
            Some((
                node,
                SessionEpoch::new(epoch, generation),
                SessionEpoch::new(peer_epoch, peer_generation),
            ))
        }
        Ok(Ok(Some(other))) => {
            refuse(
                conn,
                close_code::REFUSED,
                &format!("first frame is {}, not a hello", other.kind_name()),
            );
            None
        }
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            refuse(conn, close_code::BAD_FRAME, &format!("bad hello: {e}"));
            None
        }
        Err(_) => {
            refuse(conn, close_code::REFUSED, "no hello in time");
            None
        }
    }
}

/// The receiving side of a link: the hello, the epoch checks, the handshake answer, then
/// numbered messages, delivered once and in order (acknowledged by [`run_acker`]).
async fn read_stream(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut stream: quinn::RecvStream,
) {
    let mut buf = Vec::new();
    let Some((from, epoch, peer_epoch)) = read_hello(&inner, &conn, &mut stream, &mut buf).await
    else {
        return;
    };
    let link = inner.links[&from].clone();
    if link.silenced.load(Ordering::Acquire) {
        return refuse(
            &conn,
            close_code::REFUSED,
            &format!("{from} is silenced until it is fenced"),
        );
    }
    let my_epoch = link.state.lock().mine;
    if peer_epoch > my_epoch {
        return refuse(
            &conn,
            close_code::REFUSED,
            &format!(
                "{from} knows a newer incarnation ({peer_epoch}) of this node ({my_epoch}): this process is a zombie"
            ),
        );
    }
    // Sort the sender's epoch and pick the receiving session, under the state lock (the
    // same lock every delivery takes, so a restart is reported before the new incarnation's
    // first message, whichever stream brings it).
    let (received, my_epoch) = {
        let mut state = link.state.lock();
        match check_epoch(state.known_epoch, epoch) {
            EpochCheck::Older => {
                let known = state.known_epoch.unwrap_or_default();
                drop(state);
                return refuse(
                    &conn,
                    close_code::REFUSED,
                    &format!(
                        "hello from incarnation {epoch} of {from}, but {known} is current: a zombie"
                    ),
                );
            }
            EpochCheck::Newer => {
                let cause = session_end(state.known_epoch, epoch);
                info!(peer = %from, old = ?state.known_epoch, %epoch, ?cause, "the peer's session is new");
                if inner
                    .inbound
                    .send(Inbound::PeerRestarted {
                        peer: from,
                        epoch,
                        cause,
                    })
                    .is_err()
                {
                    return;
                }
                state.restart_pending = true;
                state.known_epoch = Some(epoch);
                state.recv = Some(RecvSession::new(epoch));
                state.partial.clear();
            }
            EpochCheck::First => {
                state.known_epoch = Some(epoch);
                state.recv = Some(RecvSession::new(epoch));
                state.partial.clear();
            }
            EpochCheck::Same => {
                if state.recv.is_none() {
                    state.recv = Some(RecvSession::new(epoch));
                    state.partial.clear();
                }
            }
        }
        (
            state.recv.as_ref().map_or(0, RecvSession::delivered),
            state.mine,
        )
    };
    let stale = peer_epoch != SessionEpoch::default() && peer_epoch != my_epoch;
    let answer = Message::HelloAck {
        epoch: my_epoch.epoch,
        generation: my_epoch.generation,
        received: if stale { 0 } else { received },
    };
    if write_frame(&mut send, &answer, &mut Vec::new())
        .await
        .is_err()
    {
        return;
    }
    if stale {
        // Its queued messages were meant for an incarnation of this node that is gone; it
        // learns this node's epoch from the answer and starts a new session.
        debug!(peer = %from, %peer_epoch, %my_epoch, "hello meant for a previous session of this node");
        let _ = send.finish();
        return;
    }
    debug!(peer = %from, %epoch, received, "peer authenticated; session resumed");
    {
        // Closed connections go (a peer that reconnects often must not grow the list).
        let mut accepted = link.accepted.lock();
        accepted.retain(|c| c.close_reason().is_none());
        accepted.push(conn.clone());
    }
    tokio::spawn(
        run_acker(
            inner.clone(),
            link.clone(),
            conn.clone(),
            send,
            (epoch, my_epoch),
        )
        .in_current_span(),
    );
    let max = inner.settings.max_frame_len;
    let counters = &link.counters;
    // Numbered frames are read in pieces (number, header, payload): a buffer turns those into
    // one read of the QUIC stream (one lock of the connection) per burst, not three per frame.
    let mut stream = tokio::io::BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    loop {
        let seq = match read_seq(&mut stream).await {
            Ok(Some(seq)) => seq,
            Ok(None) => return,
            Err(FrameError::Io(e)) => {
                debug!(peer = %from, "stream ended: {e}");
                return;
            }
            Err(e) => return refuse(&conn, close_code::BAD_FRAME, &format!("from {from}: {e}")),
        };
        let header = match read_fragment(&mut stream, max, &mut buf).await {
            Ok(Some(header)) => header,
            Ok(None) => {
                return refuse(&conn, close_code::BAD_FRAME, "stream ended inside a frame");
            }
            Err(FrameError::Io(e)) => {
                debug!(peer = %from, "stream ended: {e}");
                return;
            }
            Err(e) => return refuse(&conn, close_code::BAD_FRAME, &format!("from {from}: {e}")),
        };
        counters.bytes_received.fetch_add(
            (buf.len() + wire::HEADER_LEN + SEQ_LEN) as u64,
            Ordering::Relaxed,
        );
        if link.silenced.load(Ordering::Acquire) {
            // Nothing is delivered (so nothing is heard) until the fence.
            conn.close(close_code::REFUSED.into(), b"silenced");
            return;
        }
        let mut state = link.state.lock();
        if state.mine != my_epoch {
            // This node fenced the peer since the stream began: its messages are void.
            return;
        }
        let PeerState { recv, partial, .. } = &mut *state;
        let Some(recv) = recv.as_mut().filter(|r| r.peer_epoch() == epoch) else {
            // A stream of an older incarnation still draining: its messages are void.
            return;
        };
        // The next message of the session is decoded (or kept as a piece) *before* the
        // session counts it delivered: a frame that does not decode is refused without being
        // acknowledged, so the peer's session cannot skip it. Decoded under the lock, so that
        // messages are handed on in the session's order whichever connection brought each
        // piece.
        let next = seq == recv.delivered() + 1;
        let decoded = if next {
            match partial.push(header, &mut buf) {
                Ok(decoded) => Some(decoded),
                Err(e) => {
                    drop(state);
                    return refuse(&conn, close_code::BAD_FRAME, &format!("from {from}: {e}"));
                }
            }
        } else {
            None
        };
        if let Some(Some(Message::Hello { .. } | Message::HelloAck { .. } | Message::Ack { .. })) =
            decoded
        {
            drop(state);
            return refuse(
                &conn,
                close_code::PROTOCOL,
                "handshake frame inside a session",
            );
        }
        match recv.accept(seq) {
            Ok(Delivery::Deliver) => {
                let delivered = recv.delivered();
                // `None`: a fragment, the message continues.
                if let Some(msg) = decoded.flatten() {
                    counters.messages_received.fetch_add(1, Ordering::Relaxed);
                    if inner.inbound.send(Inbound::Message { from, msg }).is_err() {
                        return; // the node is shutting down
                    }
                }
                link.delivered.send_replace((epoch, my_epoch, delivered));
                // Wake the ackers once per quiet period (on the first delivery they have not
                // acknowledged), and again after a burst.
                if !link.ack_pending.swap(true, Ordering::AcqRel)
                    || delivered.is_multiple_of(ACK_EVERY)
                {
                    link.ack_now.notify_waiters();
                }
            }
            Ok(Delivery::Duplicate) => {
                counters.duplicates_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(v) => {
                drop(state);
                return refuse(&conn, close_code::PROTOCOL, &format!("from {from}: {v}"));
            }
        }
    }
}

/// Acknowledges what the receiving session `session` (the peer's epoch and this node's)
/// delivered, on the answer
/// half of one stream: at most one per [`ACK_INTERVAL`] while messages arrive (or at once after
/// [`ACK_EVERY`]), none on a quiet link. Ends with the stream.
async fn run_acker(
    inner: Arc<Inner>,
    link: Arc<Link>,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    session: (SessionEpoch, SessionEpoch),
) {
    let delivered = link.delivered.subscribe();
    let mut shutdown = inner.shutdown.subscribe();
    let mut buf = Vec::new();
    let mut last_acked = 0;
    loop {
        let woken = link.ack_now.notified();
        if !link.ack_pending.load(Ordering::Acquire) {
            // Idle: sleep until a delivery (no timer runs on a quiet link).
            tokio::select! {
                _ = woken => {}
                _ = conn.closed() => return,
                _ = shutdown.changed() => return,
            }
        }
        // Coalesce: one acknowledgement per interval, unless a burst asks for one now.
        tokio::select! {
            _ = tokio::time::sleep(ACK_INTERVAL) => {}
            _ = link.ack_now.notified() => {}
            _ = conn.closed() => return,
            _ = shutdown.changed() => return,
        }
        link.ack_pending.store(false, Ordering::Release);
        let (peer_epoch, my_epoch, received) = *delivered.borrow();
        if (peer_epoch, my_epoch) != session {
            return; // the peer restarted: this stream belongs to a dead session
        }
        if received <= last_acked {
            continue;
        }
        last_acked = received;
        if write_frame(&mut send, &Message::Ack { received }, &mut buf)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Why a peer's session epoch changed from `known` to the newer `heard`.
fn session_end(known: Option<SessionEpoch>, heard: SessionEpoch) -> SessionEnd {
    match known {
        Some(k) if k.epoch == heard.epoch => SessionEnd::FencedByPeer,
        _ => SessionEnd::Restarted,
    }
}

/// Connects to the link's peer, opens the stream, sends the hello (with the epoch the session
/// is meant for) and reads the answer, all within the connect timeout.
async fn connect(
    inner: &Inner,
    link: &Link,
    peer_epoch: SessionEpoch,
) -> Result<
    (
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
        SessionEpoch,
        u64,
    ),
    String,
> {
    let attempt = async {
        let conn = inner
            .endpoint
            .connect_with(
                inner.client.clone(),
                link.addr,
                &tls::node_dns_name(link.peer),
            )
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mine = link.state.lock().mine;
        let hello = Message::Hello {
            cluster_id: inner.settings.cluster_id,
            node: inner.node,
            epoch: mine.epoch,
            generation: mine.generation,
            peer_epoch: peer_epoch.epoch,
            peer_generation: peer_epoch.generation,
        };
        write_frame(&mut send, &hello, &mut Vec::new())
            .await
            .map_err(|e| e.to_string())?;
        match read_frame(&mut recv, 64, &mut Vec::new()).await {
            Ok(Some(Message::HelloAck {
                epoch,
                generation,
                received,
            })) => Ok((
                conn,
                send,
                recv,
                SessionEpoch::new(epoch, generation),
                received,
            )),
            Ok(Some(other)) => {
                conn.close(close_code::PROTOCOL.into(), b"expected a hello answer");
                Err(format!("answered a hello with a {}", other.kind_name()))
            }
            Ok(None) => Err("the peer closed the stream without answering".to_string()),
            Err(e) => Err(format!("no hello answer: {e}")),
        }
    };
    tokio::time::timeout(inner.settings.connect_timeout, attempt)
        .await
        .map_err(|_| format!("connecting to {} timed out", link.addr))?
}

/// Whether the sender should (re)connect now: something to deliver (or an announce), and no
/// restart of the peer waiting for the driver.
fn should_connect(link: &Link) -> bool {
    if link.silenced.load(Ordering::Acquire) || link.state.lock().restart_pending {
        return false;
    }
    link.connect_requested.load(Ordering::Acquire) || link.send.lock().unacked_len() > 0
}

/// The sending side of a link: connects when there is something to send, resumes the session
/// where the peer's answer says, writes numbered messages, and starts over when the
/// connection breaks.
async fn run_sender(inner: Arc<Inner>, link: Arc<Link>) {
    let peer = link.peer;
    let counters = &link.counters;
    let mut shutdown = inner.shutdown.subscribe();
    let mut backoff = Duration::from_millis(20);
    loop {
        while !should_connect(&link) {
            tokio::select! {
                _ = link.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
        link.connect_requested.store(false, Ordering::Release);
        let (session_epoch, generation) = {
            let s = link.send.lock();
            (s.peer_epoch().unwrap_or_default(), s.generation())
        };
        let connected = tokio::select! {
            c = connect(&inner, &link, session_epoch) => c,
            _ = shutdown.changed() => return,
        };
        let (conn, mut stream, acks, epoch, received) = match connected {
            Ok(c) => c,
            Err(e) => {
                counters.connected.store(false, Ordering::Relaxed);
                warn!(
                    "cannot reach {peer} at {}: {e}; retrying in {backoff:?}",
                    link.addr
                );
                link.connect_requested.store(true, Ordering::Release);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        // Sort the answer's epoch (the same rules as for a hello).
        let resume = {
            let mut state = link.state.lock();
            match check_epoch(state.known_epoch, epoch) {
                EpochCheck::Older => Err(format!(
                    "{peer} answered as incarnation {epoch}, but {} is current: a zombie",
                    state.known_epoch.unwrap_or_default()
                )),
                check => {
                    if check == EpochCheck::Newer {
                        let cause = session_end(state.known_epoch, epoch);
                        info!(old = ?state.known_epoch, %epoch, ?cause, "the peer's session is new");
                        if inner
                            .inbound
                            .send(Inbound::PeerRestarted { peer, epoch, cause })
                            .is_err()
                        {
                            return;
                        }
                        state.restart_pending = true;
                        state.recv = None;
                        state.partial.clear();
                    }
                    state.known_epoch = Some(epoch);
                    if state.restart_pending {
                        Ok(None)
                    } else {
                        let mut send = link.send.lock();
                        if send.generation() != generation {
                            Ok(None) // reset while connecting: connect again
                        } else {
                            match send.on_connected(epoch, received) {
                                Ok(Resume::Resume) => Ok(Some(())),
                                Ok(Resume::PeerRestarted | Resume::Zombie) => {
                                    // Cannot happen: the epoch checks above come first.
                                    let dropped = send.reset(Some(epoch));
                                    error!(
                                        %epoch,
                                        dropped,
                                        "session out of step with the peer's epoch; restarted it"
                                    );
                                    Ok(None)
                                }
                                Err(v) => Err(v.to_string()),
                            }
                        }
                    }
                }
            }
        };
        match resume {
            Err(reason) => {
                warn!("refusing {peer}'s hello answer: {reason}");
                conn.close(close_code::REFUSED.into(), reason.as_bytes());
                link.connect_requested.store(true, Ordering::Release);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Ok(None) => {
                // The peer restarted: wait for the driver, then start a new session.
                conn.close(close_code::SHUTDOWN.into(), b"peer restarted");
                continue;
            }
            Ok(Some(())) => {}
        }
        info!(%epoch, received, "connected to {peer}");
        counters.connected.store(true, Ordering::Relaxed);
        backoff = Duration::from_millis(20);
        tokio::spawn(
            read_acks(inner.clone(), link.clone(), conn.clone(), acks, generation)
                .in_current_span(),
        );
        let why = write_session(&link, &conn, &mut stream, generation, &mut shutdown).await;
        counters.connected.store(false, Ordering::Relaxed);
        link.send.lock().on_disconnected();
        match why {
            None => return, // shutting down
            Some(why) => {
                info!("link to {peer} ended ({why}); the session resumes on the next connection");
                conn.close(close_code::SHUTDOWN.into(), b"reconnecting");
            }
        }
    }
}

/// Writes the session's messages on one connection until it breaks (`Some(reason)`), the
/// session is reset, or the node shuts down (`None`).
async fn write_session(
    link: &Link,
    conn: &quinn::Connection,
    stream: &mut quinn::SendStream,
    generation: u64,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<String> {
    // Small frames queued together are copied into one buffer and written at once (one lock,
    // one write, one wake of the connection); a large frame is written on its own, uncopied:
    // its head, then its body (a piece of a big region's image) handed to quinn as it is.
    let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH_BYTES);
    loop {
        if link.silenced.load(Ordering::Acquire) {
            conn.close(close_code::REFUSED.into(), b"silenced");
            return Some("silenced: the retransmit buffer passed its hard bound".to_string());
        }
        batch.clear();
        let mut large = None;
        {
            let mut s = link.send.lock();
            if s.generation() != generation {
                return Some("the peer restarted".to_string());
            }
            while batch.len() < WRITE_BATCH_BYTES {
                let Some((seq, frame)) = s.next_to_write() else {
                    break;
                };
                debug_assert_eq!(frame.head()[..SEQ_LEN], seq.to_le_bytes());
                if frame.len() > WRITE_BATCH_BYTES / 4 {
                    large = Some(frame);
                    break;
                }
                batch.extend_from_slice(frame.head());
                batch.extend_from_slice(frame.body());
            }
        }
        if batch.is_empty() && large.is_none() {
            tokio::select! {
                _ = link.wake.notified() => {}
                e = conn.closed() => return Some(e.to_string()),
                _ = shutdown.changed() => return None,
            }
            continue;
        }
        if !batch.is_empty()
            && let Err(e) = stream.write_all(&batch).await
        {
            return Some(format!("write failed: {e}"));
        }
        if let Some(frame) = large {
            if let Err(e) = stream.write_all(frame.head()).await {
                return Some(format!("write failed: {e}"));
            }
            if !frame.body().is_empty()
                && let Err(e) = stream.write_chunk(frame.body().clone()).await
            {
                return Some(format!("write failed: {e}"));
            }
        }
        if *shutdown.borrow() {
            return None;
        }
    }
}

/// Applies the acknowledgements the peer sends on the answer half of one stream.
async fn read_acks(
    inner: Arc<Inner>,
    link: Arc<Link>,
    conn: quinn::Connection,
    mut acks: quinn::RecvStream,
    generation: u64,
) {
    let mut buf = Vec::new();
    loop {
        match read_frame(&mut acks, 64, &mut buf).await {
            Ok(Some(Message::Ack { received })) => {
                let applied = {
                    let mut s = link.send.lock();
                    if s.generation() != generation {
                        return; // a dead session's acknowledgement
                    }
                    s.on_ack(received)
                };
                match applied {
                    Ok(()) => link.room.notify_waiters(),
                    Err(v) => {
                        return refuse(&conn, close_code::PROTOCOL, &format!("{}: {v}", link.peer));
                    }
                }
            }
            Ok(Some(other)) => {
                return refuse(
                    &conn,
                    close_code::PROTOCOL,
                    &format!(
                        "{} sent a {} where acknowledgements go",
                        link.peer,
                        other.kind_name()
                    ),
                );
            }
            Ok(None) | Err(FrameError::Io(_)) => return,
            Err(e) => {
                return refuse(
                    &conn,
                    close_code::BAD_FRAME,
                    &format!("from {}: {e}", link.peer),
                );
            }
        }
        if *inner.shutdown.borrow() {
            return;
        }
    }
}
