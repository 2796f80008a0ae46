//! Connections between nodes: one QUIC endpoint per node, mutual TLS, an authenticated hello,
//! and one long-lived unidirectional stream per direction per peer pair.
//!
//! **Ordering.** Every message a node sends to a peer goes, in order, on the one stream that
//! node opened to that peer, and the peer reads that stream in order: per-link FIFO, exactly
//! what the crl-core engine assumes. Messages to different peers are independent.
//!
//! **Connections** are made lazily, on the first message to a peer (or at once for every peer
//! with [`Transport::announce`]), and re-made after a loss (with backoff). A message that was
//! not (entirely) written when a connection broke goes on the next connection: the peer never
//! decoded it, so this cannot duplicate it. Frames already written that the peer did not receive
//! are lost; the operations waiting on them end with a timeout error (bounded by the node's
//! operation timeout), never a hang.
//!
//! **Epochs.** Every hello carries the sender's epoch (its incarnation). A hello with a new
//! epoch from a known peer means it restarted: the transport delivers
//! [`Inbound::PeerRestarted`] before any message of the new incarnation, ignores what older
//! streams of that peer still deliver, and, once the driver calls
//! [`Transport::restart_handled`], drops the messages queued for the old incarnation and
//! reconnects.
//!
//! **Authentication.** TLS checks both certificates against the cluster CA. That alone is not
//! enough: with QUIC a client may consider itself connected before the server has rejected its
//! certificate, and a valid certificate may belong to another node. So the first frame on every
//! stream must be a [`Message::Hello`] naming the cluster and the sender's node id, and the
//! receiver checks the id against the peer's certificate ([`tls::verify_peer`]) and its own
//! membership list before reading anything else. Any failure closes the connection with a
//! logged reason.
//!
//! **Bounds.** Frames longer than the configured limit are refused before allocation. Send
//! queues are unbounded channels, but bounded by construction: the node admits a bounded number
//! of operations in flight, and each produces a bounded number of messages.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crl_core::NodeId;
use crl_core::wire::Message;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::frame::{FrameError, read_frame, write_frame};
use crate::tls::{self, NodeIdentity, TlsError};

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
    /// `peer` came back with a new epoch (it restarted): everything it knew is gone. Delivered
    /// before any message of its new incarnation. The driver must answer with
    /// [`Transport::restart_handled`] once it has forgotten the old incarnation.
    PeerRestarted {
        /// The peer.
        peer: NodeId,
        /// Its new epoch.
        epoch: u64,
    },
}

/// Traffic counters for one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer.
    pub node: NodeId,
    /// Whether a connection to it is up now.
    pub connected: bool,
    /// Messages sent to it.
    pub messages_sent: u64,
    /// Bytes sent to it (frames, headers included).
    pub bytes_sent: u64,
    /// Messages received from it.
    pub messages_received: u64,
    /// Bytes received from it.
    pub bytes_received: u64,
    /// Writes that failed on a broken connection (the message is sent again on the next
    /// connection; frames already written that the peer did not receive are lost).
    pub messages_lost: u64,
}

#[derive(Default)]
struct PeerCounters {
    connected: AtomicBool,
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
    messages_received: AtomicU64,
    bytes_received: AtomicU64,
    messages_lost: AtomicU64,
}

/// Settings of a [`Transport`].
#[derive(Clone, Debug)]
pub struct TransportSettings {
    /// The cluster's id (hellos from other clusters are refused).
    pub cluster_id: u64,
    /// Bound on a connection attempt and on waiting for a hello.
    pub connect_timeout: Duration,
    /// Largest frame payload accepted.
    pub max_frame_len: usize,
    /// This node's incarnation, sent in every hello (a new one after each restart).
    pub epoch: u64,
}

/// A queued outgoing message and the peer incarnation it was meant for.
enum Outgoing {
    Message {
        msg: Message,
        generation: u64,
    },
    /// Connect now (sends the hello) even with nothing to send.
    Connect,
}

struct Inner {
    node: NodeId,
    settings: TransportSettings,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    peers: BTreeMap<NodeId, SocketAddr>,
    counters: BTreeMap<NodeId, PeerCounters>,
    senders: Mutex<HashMap<NodeId, mpsc::UnboundedSender<Outgoing>>>,
    /// The last epoch heard from each peer.
    epochs: Mutex<HashMap<NodeId, u64>>,
    /// Bumped for a peer each time the driver handled its restart: messages queued for an
    /// older generation were meant for the dead incarnation and are dropped, and the sender
    /// reconnects before writing the next one.
    generations: BTreeMap<NodeId, AtomicU64>,
    inbound: mpsc::UnboundedSender<Inbound>,
    /// Connections accepted from each peer (to close them on a protocol violation).
    accepted: Mutex<HashMap<NodeId, Vec<quinn::Connection>>>,
    shutdown: watch::Sender<bool>,
}

/// A node's QUIC transport. See the [module docs](self).
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    /// Starts the endpoint on `socket` and its accept loop. Received messages arrive on the
    /// returned channel. Must be called inside a tokio runtime.
    pub fn start(
        identity: &NodeIdentity,
        socket: std::net::UdpSocket,
        peers: BTreeMap<NodeId, SocketAddr>,
        settings: TransportSettings,
    ) -> Result<(Transport, mpsc::UnboundedReceiver<Inbound>), TransportError> {
        let node = identity.node();
        let server = identity.server_config()?;
        let client = identity.client_config()?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| std::io::Error::other("no async runtime found"))?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        let counters = peers
            .keys()
            .map(|&p| (p, PeerCounters::default()))
            .collect();
        let generations = peers.keys().map(|&p| (p, AtomicU64::new(0))).collect();
        let inner = Arc::new(Inner {
            node,
            settings,
            epochs: Mutex::new(HashMap::new()),
            generations,
            endpoint,
            client,
            peers,
            counters,
            senders: Mutex::new(HashMap::new()),
            inbound: tx,
            accepted: Mutex::new(HashMap::new()),
            shutdown,
        });
        let span = info_span!("transport", node = %node);
        tokio::spawn(accept_loop(inner.clone()).instrument(span));
        Ok((Transport { inner }, rx))
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Whether `node` is a member this transport can reach.
    pub fn knows(&self, node: NodeId) -> bool {
        self.inner.peers.contains_key(&node)
    }

    /// Whether a connection to `peer` is up now.
    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.inner
            .counters
            .get(&peer)
            .is_some_and(|c| c.connected.load(Ordering::Relaxed))
    }

    /// Queues `msg` for `to`, in order after every message queued for `to` before. Never
    /// blocks. Call it in the order the engine produced the messages.
    pub fn send(&self, to: NodeId, msg: Message) {
        let Some(generation) = self.inner.generations.get(&to) else {
            warn!(node = %self.inner.node, peer = %to, "dropping a message to a node outside the cluster");
            return;
        };
        let generation = generation.load(Ordering::Acquire);
        self.queue(to, Outgoing::Message { msg, generation });
    }

    /// Connects to every peer now (each learns this node's epoch from the hello), instead of
    /// at the first message. A restarted node calls it so that peers drop its old state.
    pub fn announce(&self) {
        for &peer in self.inner.peers.keys() {
            self.queue(peer, Outgoing::Connect);
        }
    }

    /// The driver has handled [`Inbound::PeerRestarted`] for `peer`: messages queued before
    /// now were for its old incarnation and are dropped; later ones go to a new connection.
    pub fn restart_handled(&self, peer: NodeId) {
        if let Some(g) = self.inner.generations.get(&peer) {
            g.fetch_add(1, Ordering::AcqRel);
        }
        // Wake the sender so it reconnects even if nothing else is queued.
        self.queue(peer, Outgoing::Connect);
    }

    fn queue(&self, to: NodeId, item: Outgoing) {
        let mut senders = self.inner.senders.lock();
        let tx = senders.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let span = info_span!("link", node = %self.inner.node, peer = %to);
            tokio::spawn(run_sender(self.inner.clone(), to, rx).instrument(span));
            tx
        });
        if tx.send(item).is_err() {
            debug!(peer = %to, "transport shut down; message dropped");
        }
    }

    /// Closes every connection accepted from `peer`, logging `reason` (used when the peer
    /// broke the protocol).
    pub fn close_peer(&self, peer: NodeId, reason: &str) {
        warn!(node = %self.inner.node, %peer, "closing connections: {reason}");
        for conn in self.inner.accepted.lock().remove(&peer).unwrap_or_default() {
            conn.close(close_code::PROTOCOL.into(), reason.as_bytes());
        }
    }

    /// Traffic counters per peer.
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        self.inner
            .counters
            .iter()
            .map(|(&node, c)| PeerStats {
                node,
                connected: c.connected.load(Ordering::Relaxed),
                messages_sent: c.messages_sent.load(Ordering::Relaxed),
                bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
                messages_received: c.messages_received.load(Ordering::Relaxed),
                bytes_received: c.bytes_received.load(Ordering::Relaxed),
                messages_lost: c.messages_lost.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Stops sending and accepting, closes the endpoint and waits (bounded) for it to idle.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        self.inner.senders.lock().clear();
        self.inner
            .endpoint
            .close(close_code::SHUTDOWN.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
        // Release the address now (handles may keep the endpoint alive for a while): a node
        // restarted in the same process binds it again.
        if let Ok(spare) = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            && let Err(e) = self.inner.endpoint.rebind(spare)
        {
            debug!("releasing the endpoint's socket: {e}");
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
        match conn.accept_uni().await {
            Ok(stream) => {
                tokio::spawn(read_stream(inner.clone(), conn.clone(), stream).in_current_span());
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

async fn read_stream(inner: Arc<Inner>, conn: quinn::Connection, mut stream: quinn::RecvStream) {
    let max = inner.settings.max_frame_len;
    let mut buf = Vec::new();
    let hello = tokio::time::timeout(
        inner.settings.connect_timeout,
        read_frame(&mut stream, max, &mut buf),
    )
    .await;
    let from = match hello {
        Ok(Ok(Some(Message::Hello {
            cluster_id,
            node,
            epoch,
        }))) => {
            if cluster_id != inner.settings.cluster_id {
                return refuse(
                    &conn,
                    close_code::REFUSED,
                    &format!(
                        "hello from cluster {cluster_id}, this is cluster {}",
                        inner.settings.cluster_id
                    ),
                );
            }
            if !inner.peers.contains_key(&node) {
                return refuse(
                    &conn,
                    close_code::REFUSED,
                    &format!("hello from {node}, not a member of this cluster"),
                );
            }
            if let Err(e) = tls::verify_peer(&conn, node) {
                return refuse(
                    &conn,
                    close_code::REFUSED,
                    &format!("hello claims {node}: {e}"),
                );
            }
            (node, epoch)
        }
        Ok(Ok(Some(other))) => {
            return refuse(
                &conn,
                close_code::REFUSED,
                &format!("first frame is {}, not a hello", other.kind_name()),
            );
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return refuse(&conn, close_code::BAD_FRAME, &format!("bad hello: {e}")),
        Err(_) => return refuse(&conn, close_code::REFUSED, "no hello in time"),
    };
    let (from, epoch) = from;
    debug!(peer = %from, epoch, "peer authenticated");
    {
        // A new epoch means the peer restarted: tell the driver before any of its messages.
        let mut epochs = inner.epochs.lock();
        match epochs.insert(from, epoch) {
            Some(old) if old != epoch => {
                info!(peer = %from, old, epoch, "peer restarted");
                if inner
                    .inbound
                    .send(Inbound::PeerRestarted { peer: from, epoch })
                    .is_err()
                {
                    return;
                }
            }
            _ => {}
        }
    }
    inner
        .accepted
        .lock()
        .entry(from)
        .or_default()
        .push(conn.clone());
    let counters = &inner.counters[&from];
    loop {
        match read_frame(&mut stream, max, &mut buf).await {
            Ok(Some(Message::Hello { .. })) => {
                return refuse(&conn, close_code::PROTOCOL, "second hello on a stream");
            }
            Ok(Some(msg)) => {
                counters.messages_received.fetch_add(1, Ordering::Relaxed);
                counters.bytes_received.fetch_add(
                    (buf.len() + crl_core::wire::HEADER_LEN) as u64,
                    Ordering::Relaxed,
                );
                if inner.epochs.lock().get(&from) != Some(&epoch) {
                    // A stream of an older incarnation still draining: its messages are void.
                    return;
                }
                if inner.inbound.send(Inbound::Message { from, msg }).is_err() {
                    return; // the node is shutting down
                }
            }
            Ok(None) => return,
            Err(FrameError::Io(e)) => {
                debug!(peer = %from, "stream ended: {e}");
                return;
            }
            Err(e) => return refuse(&conn, close_code::BAD_FRAME, &format!("from {from}: {e}")),
        }
    }
}

/// Connects to `peer`, opens the link's stream and sends the hello, all within the
/// connect timeout.
async fn connect(
    inner: &Inner,
    peer: NodeId,
) -> Result<(quinn::Connection, quinn::SendStream), String> {
    let addr = inner.peers[&peer];
    let attempt = async {
        let conn = inner
            .endpoint
            .connect_with(inner.client.clone(), addr, &tls::node_dns_name(peer))
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
        let hello = Message::Hello {
            cluster_id: inner.settings.cluster_id,
            node: inner.node,
            epoch: inner.settings.epoch,
        };
        write_frame(&mut stream, &hello, &mut Vec::new())
            .await
            .map_err(|e| e.to_string())?;
        Ok((conn, stream))
    };
    tokio::time::timeout(inner.settings.connect_timeout, attempt)
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
}

async fn run_sender(inner: Arc<Inner>, peer: NodeId, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let counters = &inner.counters[&peer];
    let generation = &inner.generations[&peer];
    let mut shutdown = inner.shutdown.subscribe();
    let mut buf = Vec::new();
    let mut backoff = Duration::from_millis(20);
    let mut next: Option<Message> = None;
    // Whether to connect without a message (an announce).
    let mut connect_now = false;
    loop {
        // Wait for something to send before (re)connecting.
        while next.is_none() && !connect_now {
            match tokio::select! {
                m = rx.recv() => m,
                _ = shutdown.changed() => None,
            } {
                None => return,
                Some(Outgoing::Connect) => connect_now = true,
                Some(Outgoing::Message { msg, generation: g }) => {
                    if g == generation.load(Ordering::Acquire) {
                        next = Some(msg);
                    }
                }
            }
        }
        connect_now = false;
        let connected_generation = generation.load(Ordering::Acquire);
        let (conn, mut stream) = match connect(&inner, peer).await {
            Ok(c) => c,
            Err(e) => {
                counters.connected.store(false, Ordering::Relaxed);
                warn!(
                    "cannot reach {peer} at {}: {e}; retrying in {backoff:?}",
                    inner.peers[&peer]
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        info!("connected to {peer}");
        counters.connected.store(true, Ordering::Relaxed);
        backoff = Duration::from_millis(20);
        loop {
            let msg = match next.take() {
                Some(m) => m,
                None => tokio::select! {
                    m = rx.recv() => match m {
                        Some(Outgoing::Message { msg, generation: g }) => {
                            if g != generation.load(Ordering::Acquire) {
                                continue; // meant for the peer's previous incarnation
                            }
                            msg
                        }
                        Some(Outgoing::Connect) => {
                            if generation.load(Ordering::Acquire) != connected_generation {
                                // The peer restarted: this connection leads nowhere.
                                conn.close(close_code::SHUTDOWN.into(), b"peer restarted");
                                connect_now = true;
                                break;
                            }
                            continue;
                        }
                        None => {
                            let _ = stream.finish();
                            return;
                        }
                    },
                    _ = shutdown.changed() => return,
                },
            };
            if generation.load(Ordering::Acquire) != connected_generation {
                conn.close(close_code::SHUTDOWN.into(), b"peer restarted");
                next = Some(msg);
                break;
            }
            if let Some(why) = conn.close_reason() {
                // Closed (by the peer, or idle): nothing of `msg` was written yet, so it goes
                // on the next connection, in order.
                counters.connected.store(false, Ordering::Relaxed);
                info!("link to {peer} closed ({why}); reconnecting");
                next = Some(msg);
                break;
            }
            match write_frame(&mut stream, &msg, &mut buf).await {
                Ok(n) => {
                    counters.messages_sent.fetch_add(1, Ordering::Relaxed);
                    counters.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    // The frame was not (entirely) written, so the peer never decoded it:
                    // sending it again on a new connection cannot duplicate it. Frames
                    // written before the break that the peer did not receive are lost.
                    counters.messages_lost.fetch_add(1, Ordering::Relaxed);
                    counters.connected.store(false, Ordering::Relaxed);
                    warn!(
                        "link to {peer} broke ({e}) while writing a {}; reconnecting to send it again",
                        msg.kind_name()
                    );
                    conn.close(close_code::SHUTDOWN.into(), b"reconnecting");
                    next = Some(msg);
                    break;
                }
            }
        }
    }
}
