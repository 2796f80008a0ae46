//! A UDP socket for quinn that drops datagrams on command: the network nemesis for tests.
//!
//! The failure model (DESIGN.md §6) must be proven on real processes too: cut a node off for a
//! while, heal it, and check that nothing was lost or served stale. Cutting a node off with
//! `iptables` or `tc` needs root and a network namespace; this module needs neither. quinn
//! accepts any [`quinn::AsyncUdpSocket`], so [`FaultySocket`] wraps the real tokio socket and
//! consults a shared [`FaultSwitch`] for every datagram, in both directions:
//!
//! - a datagram to be *sent* that the switch drops is reported as sent (`Ok`) and never reaches
//!   the kernel, exactly like a loss on the wire;
//! - a datagram *received* that the switch drops is discarded and the socket keeps polling, so
//!   quinn never sees it.
//!
//! The switch can cut all traffic (or one direction only), cut the traffic to and from a set of
//! peer addresses (a partition), drop a random, seeded fraction of datagrams (a lossy link), and
//! heal. It counts dropped and passed datagrams. It is `Clone` (an `Arc` inside), so a test keeps
//! one handle while the endpoint owns the socket; while the switch is healed the per-datagram
//! cost is one relaxed atomic load plus one counter increment.
//!
//! ```no_run
//! # async fn f(server: quinn::ServerConfig) -> std::io::Result<()> {
//! use crl_net::fault::{self, FaultSwitch};
//! let switch = FaultSwitch::new();
//! let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
//! let endpoint = fault::endpoint(Default::default(), Some(server), socket, switch.clone())?;
//! switch.cut(); // the node is now cut off from everyone, without root
//! switch.heal();
//! # drop(endpoint); Ok(()) }
//! ```
//!
//! Counts are in datagrams: a batched (GSO) transmit or coalesced (GRO) receive of several
//! datagrams from one peer is dropped or passed as a whole and counted as its datagrams.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use parking_lot::RwLock;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};

/// Flag: drop every inbound datagram.
const CUT_IN: u8 = 1;
/// Flag: drop every outbound datagram.
const CUT_OUT: u8 = 2;
/// Flag: the set of cut peers is not empty.
const PEERS: u8 = 4;
/// Flag: drop a random fraction of datagrams.
const RANDOM: u8 = 8;

/// The direction of a datagram, seen from the socket that holds the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Datagrams arriving at this socket.
    Inbound,
    /// Datagrams this socket sends.
    Outbound,
    /// Both directions.
    Both,
}

/// Counters of a [`FaultSwitch`], in datagrams, since it was created or
/// [`FaultSwitch::reset_stats`] was called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Received datagrams discarded.
    pub dropped_inbound: u64,
    /// Datagrams reported as sent but never handed to the kernel.
    pub dropped_outbound: u64,
    /// Received datagrams handed to quinn.
    pub passed_inbound: u64,
    /// Datagrams handed to the kernel (or attempted: a send error is quinn's business).
    pub passed_outbound: u64,
}

impl FaultStats {
    /// All dropped datagrams, both directions.
    pub fn dropped(&self) -> u64 {
        self.dropped_inbound + self.dropped_outbound
    }
}

/// The shared state behind a [`FaultSwitch`].
struct Shared {
    /// `CUT_IN | CUT_OUT | PEERS | RANDOM`; zero means healthy (the fast path).
    flags: AtomicU8,
    /// Peers whose traffic is dropped in both directions (canonical addresses).
    peers: RwLock<HashSet<SocketAddr>>,
    /// A datagram is dropped at random when a 64-bit draw is below this.
    threshold: AtomicU64,
    /// The splitmix64 state of the random draws.
    rng: AtomicU64,
    dropped_in: AtomicU64,
    dropped_out: AtomicU64,
    passed_in: AtomicU64,
    passed_out: AtomicU64,
}

/// A shareable switch telling [`FaultySocket`]s which datagrams to drop.
///
/// Cloning gives another handle to the same switch. Commands take effect for the next datagram
/// (already queued datagrams in the kernel are judged when they are received). Cuts and random
/// loss combine: a datagram is dropped if any active rule drops it.
#[derive(Clone)]
pub struct FaultSwitch {
    shared: Arc<Shared>,
}

impl Default for FaultSwitch {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for FaultSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = self.shared.flags.load(Ordering::Relaxed);
        f.debug_struct("FaultSwitch")
            .field("cut_inbound", &(flags & CUT_IN != 0))
            .field("cut_outbound", &(flags & CUT_OUT != 0))
            .field("cut_peers", &*self.shared.peers.read())
            .field("random", &(flags & RANDOM != 0))
            .field("stats", &self.stats())
            .finish()
    }
}

/// Maps an IPv4-mapped IPv6 address to its IPv4 form, so that a dual-stack socket's view of a
/// peer matches the address a test names.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The number of datagrams in a buffer of `len` bytes cut in `stride`-byte segments.
fn segments(len: usize, stride: usize) -> u64 {
    if stride == 0 || len <= stride {
        1
    } else {
        len.div_ceil(stride) as u64
    }
}

impl FaultSwitch {
    /// A healed switch: every datagram passes.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                flags: AtomicU8::new(0),
                peers: RwLock::new(HashSet::new()),
                threshold: AtomicU64::new(0),
                rng: AtomicU64::new(0),
                dropped_in: AtomicU64::new(0),
                dropped_out: AtomicU64::new(0),
                passed_in: AtomicU64::new(0),
                passed_out: AtomicU64::new(0),
            }),
        }
    }

    /// Cuts all traffic in both directions: the node is isolated.
    pub fn cut(&self) {
        self.cut_direction(Direction::Both);
    }

    /// Cuts all traffic in `direction` (an asymmetric partition when one way only). Adds to the
    /// cuts already in force.
    pub fn cut_direction(&self, direction: Direction) {
        let bits = match direction {
            Direction::Inbound => CUT_IN,
            Direction::Outbound => CUT_OUT,
            Direction::Both => CUT_IN | CUT_OUT,
        };
        self.shared.flags.fetch_or(bits, Ordering::AcqRel);
    }

    /// Cuts the traffic to and from each of `peers` (both directions); other peers are not
    /// affected. Adds to the peers already cut.
    pub fn cut_peers(&self, peers: impl IntoIterator<Item = SocketAddr>) {
        let mut set = self.shared.peers.write();
        set.extend(peers.into_iter().map(canonical));
        if !set.is_empty() {
            self.shared.flags.fetch_or(PEERS, Ordering::AcqRel);
        }
    }

    /// Restores the traffic to and from each of `peers`, leaving other cuts in force.
    pub fn heal_peers(&self, peers: impl IntoIterator<Item = SocketAddr>) {
        let mut set = self.shared.peers.write();
        for peer in peers {
            set.remove(&canonical(peer));
        }
        if set.is_empty() {
            self.shared.flags.fetch_and(!PEERS, Ordering::AcqRel);
        }
    }

    /// Drops each datagram (either direction) with probability `rate`, from a generator seeded
    /// with `seed`. `rate` is clamped to `0.0..=1.0` (NaN counts as 0); 0 stops random loss.
    /// The draws are a deterministic sequence for a given seed; which datagram gets which draw
    /// depends on the order in which datagrams reach the switch.
    pub fn set_drop_rate(&self, rate: f64, seed: u64) {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        // `as` saturates: 1.0 maps to u64::MAX, which `decide` treats as "always".
        let threshold = (rate * 18_446_744_073_709_551_616.0) as u64;
        self.shared.rng.store(seed, Ordering::Relaxed);
        self.shared.threshold.store(threshold, Ordering::Relaxed);
        if threshold == 0 {
            self.shared.flags.fetch_and(!RANDOM, Ordering::AcqRel);
        } else {
            self.shared.flags.fetch_or(RANDOM, Ordering::AcqRel);
        }
    }

    /// Heals everything: no cut, no cut peer, no random loss. Counters are kept.
    pub fn heal(&self) {
        let mut set = self.shared.peers.write();
        set.clear();
        self.shared.threshold.store(0, Ordering::Relaxed);
        self.shared.flags.store(0, Ordering::Release);
    }

    /// Whether any rule (cut, cut peer or random loss) is in force.
    pub fn is_faulty(&self) -> bool {
        self.shared.flags.load(Ordering::Acquire) != 0
    }

    /// The counters so far.
    pub fn stats(&self) -> FaultStats {
        let s = &self.shared;
        FaultStats {
            dropped_inbound: s.dropped_in.load(Ordering::Relaxed),
            dropped_outbound: s.dropped_out.load(Ordering::Relaxed),
            passed_inbound: s.passed_in.load(Ordering::Relaxed),
            passed_outbound: s.passed_out.load(Ordering::Relaxed),
        }
    }

    /// Sets every counter back to zero.
    pub fn reset_stats(&self) {
        let s = &self.shared;
        for c in [&s.dropped_in, &s.dropped_out, &s.passed_in, &s.passed_out] {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Whether a datagram going `direction` (`Inbound` or `Outbound`) to or from `peer` is to be
    /// dropped. Consumes a random draw when random loss is on. Does not count.
    fn decide(&self, direction: Direction, peer: SocketAddr) -> bool {
        let flags = self.shared.flags.load(Ordering::Acquire);
        if flags == 0 {
            return false;
        }
        let cut = match direction {
            Direction::Inbound => CUT_IN,
            Direction::Outbound => CUT_OUT,
            Direction::Both => CUT_IN | CUT_OUT,
        };
        if flags & cut != 0 {
            return true;
        }
        if flags & PEERS != 0 && self.shared.peers.read().contains(&canonical(peer)) {
            return true;
        }
        if flags & RANDOM != 0 {
            let threshold = self.shared.threshold.load(Ordering::Relaxed);
            return threshold == u64::MAX || self.draw() < threshold;
        }
        false
    }

    /// The next splitmix64 draw; lock-free, one `fetch_add` per draw.
    fn draw(&self) -> u64 {
        let mut z = self
            .shared
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Judges `count` datagrams going `direction` to or from `peer` and counts them. Returns
    /// whether to drop them.
    fn judge(&self, direction: Direction, peer: SocketAddr, count: u64) -> bool {
        let drop = self.decide(direction, peer);
        let s = &self.shared;
        let counter = match (direction, drop) {
            (Direction::Inbound, true) => &s.dropped_in,
            (Direction::Inbound, false) => &s.passed_in,
            (_, true) => &s.dropped_out,
            (_, false) => &s.passed_out,
        };
        counter.fetch_add(count, Ordering::Relaxed);
        drop
    }
}

/// A [`quinn::AsyncUdpSocket`] that passes datagrams through a [`FaultSwitch`] before sending
/// and after receiving. Everything else (readiness, GSO/GRO limits, local address) is the
/// wrapped socket's.
#[derive(Debug)]
pub struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    switch: FaultSwitch,
}

impl FaultySocket {
    /// Wraps any quinn socket (usually the runtime's: see [`wrap_udp_socket`]).
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, switch: FaultSwitch) -> Self {
        Self { inner, switch }
    }

    /// The switch this socket obeys.
    pub fn switch(&self) -> &FaultSwitch {
        &self.switch
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let count = match transmit.segment_size {
            Some(size) => segments(transmit.contents.len(), size),
            None => 1,
        };
        if self
            .switch
            .judge(Direction::Outbound, transmit.destination, count)
        {
            // Lost on the wire: the sender cannot tell.
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
            let mut kept = 0;
            for i in 0..n {
                let m = meta[i];
                if self
                    .switch
                    .judge(Direction::Inbound, m.addr, segments(m.len, m.stride))
                {
                    continue;
                }
                if kept != i {
                    // Move the kept datagram down over a dropped one. quinn's receive buffers
                    // are slices of equal size, so it fits.
                    let (low, high) = bufs.split_at_mut(i);
                    low[kept][..m.len].copy_from_slice(&high[0][..m.len]);
                    meta[kept] = m;
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // Everything was dropped: poll again, which either yields more datagrams or
            // registers the waker with the inner socket.
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Wraps a bound standard UDP socket as tokio's quinn socket behind `switch`, ready for
/// [`quinn::Endpoint::new_with_abstract_socket`]. Must be called inside a tokio runtime.
pub fn wrap_udp_socket(
    socket: std::net::UdpSocket,
    switch: FaultSwitch,
) -> io::Result<Arc<dyn AsyncUdpSocket>> {
    let inner = quinn::TokioRuntime.wrap_udp_socket(socket)?;
    Ok(Arc::new(FaultySocket::new(inner, switch)))
}

/// A quinn endpoint on the tokio runtime whose datagrams pass through `switch`: what
/// [`quinn::Endpoint::new`] does, with a [`FaultySocket`]. Must be called inside a tokio runtime.
pub fn endpoint(
    config: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
    socket: std::net::UdpSocket,
    switch: FaultSwitch,
) -> io::Result<quinn::Endpoint> {
    let socket = wrap_udp_socket(socket, switch)?;
    quinn::Endpoint::new_with_abstract_socket(config, server, socket, Arc::new(quinn::TokioRuntime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{ClusterCa, NodeIdentity, node_dns_name};
    use crl_core::NodeId;
    use std::future::poll_fn;
    use std::time::Duration;

    /// How long a request may take on a healthy loopback link before the test calls it lost.
    const CUT_TIMEOUT: Duration = Duration::from_millis(400);
    /// Generous bound for work that must succeed.
    const OK_TIMEOUT: Duration = Duration::from_secs(10);

    fn identities() -> (NodeIdentity, NodeIdentity, NodeIdentity) {
        let ca = ClusterCa::generate("fault-test").unwrap();
        (
            ca.issue(NodeId(0)).unwrap(),
            ca.issue(NodeId(1)).unwrap(),
            ca.issue(NodeId(2)).unwrap(),
        )
    }

    fn bind() -> std::net::UdpSocket {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap()
    }

    /// A server endpoint behind `switch` that answers every bidirectional stream with the
    /// bytes it read, reversed.
    fn echo_server(identity: &NodeIdentity, switch: FaultSwitch) -> quinn::Endpoint {
        let ep = endpoint(
            Default::default(),
            Some(identity.server_config().unwrap()),
            bind(),
            switch,
        )
        .unwrap();
        let accept = ep.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accept.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            let Ok(mut data) = recv.read_to_end(1 << 16).await else {
                                return;
                            };
                            data.reverse();
                            let _ = send.write_all(&data).await;
                            let _ = send.finish();
                        });
                    }
                });
            }
        });
        ep
    }

    fn client(identity: &NodeIdentity, switch: FaultSwitch) -> quinn::Endpoint {
        let mut ep = endpoint(Default::default(), None, bind(), switch).unwrap();
        ep.set_default_client_config(identity.client_config().unwrap());
        ep
    }

    async fn connect(
        ep: &quinn::Endpoint,
        server: SocketAddr,
        node: NodeId,
    ) -> Result<quinn::Connection, String> {
        ep.connect(server, &node_dns_name(node))
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    }

    async fn request(conn: &quinn::Connection, body: &[u8]) -> Result<Vec<u8>, String> {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(body).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        recv.read_to_end(1 << 16).await.map_err(|e| e.to_string())
    }

    async fn request_within(
        conn: &quinn::Connection,
        body: &[u8],
        limit: Duration,
    ) -> Option<Vec<u8>> {
        tokio::time::timeout(limit, request(conn, body))
            .await
            .ok()
            .map(|r| r.unwrap())
    }

    #[tokio::test]
    async fn fault_cut_times_out_and_heal_restores() {
        let (a, b, _) = identities();
        let server_switch = FaultSwitch::new();
        let server = echo_server(&b, server_switch.clone());
        let server_addr = server.local_addr().unwrap();
        let switch = FaultSwitch::new();
        let ep = client(&a, switch.clone());

        // Healthy: traffic flows both ways, nothing dropped.
        let conn = tokio::time::timeout(OK_TIMEOUT, connect(&ep, server_addr, NodeId(1)))
            .await
            .unwrap()
            .unwrap();
        let reply = request_within(&conn, b"abc", OK_TIMEOUT).await.unwrap();
        assert_eq!(reply, b"cba");
        let healthy = switch.stats();
        assert_eq!(healthy.dropped(), 0);
        assert!(healthy.passed_outbound > 0 && healthy.passed_inbound > 0);
        assert_eq!(server_switch.stats().dropped(), 0);

        // Cut: a request on the open connection gets no answer.
        switch.cut();
        assert!(switch.is_faulty());
        assert!(request_within(&conn, b"lost", CUT_TIMEOUT).await.is_none());
        let cut = switch.stats();
        assert!(cut.dropped_outbound > 0, "{cut:?}");
        assert_eq!(
            cut.passed_outbound, healthy.passed_outbound,
            "nothing may leave while cut: {cut:?}"
        );
        assert_eq!(server_switch.stats().dropped(), 0);

        // A new connection cannot be made either.
        assert!(
            tokio::time::timeout(CUT_TIMEOUT, connect(&ep, server_addr, NodeId(1)))
                .await
                .is_err()
        );

        // Heal: a new connection works, and nothing more is dropped.
        let before_heal = switch.stats();
        switch.heal();
        assert!(!switch.is_faulty());
        let fresh = tokio::time::timeout(OK_TIMEOUT, connect(&ep, server_addr, NodeId(1)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            request_within(&fresh, b"xyz", OK_TIMEOUT).await.unwrap(),
            b"zyx"
        );
        assert_eq!(switch.stats().dropped(), before_heal.dropped());
        assert!(switch.stats().passed_outbound > before_heal.passed_outbound);
        conn.close(0u32.into(), b"");
        fresh.close(0u32.into(), b"");
    }

    #[tokio::test]
    async fn fault_cut_peers_is_a_partition() {
        let (a, b, c) = identities();
        let server_b = echo_server(&b, FaultSwitch::new());
        let server_c = echo_server(&c, FaultSwitch::new());
        let (addr_b, addr_c) = (
            server_b.local_addr().unwrap(),
            server_c.local_addr().unwrap(),
        );
        let switch = FaultSwitch::new();
        let ep = client(&a, switch.clone());
        let to_b = connect(&ep, addr_b, NodeId(1)).await.unwrap();

        // Cut b only: b is unreachable, c still works.
        switch.cut_peers([addr_b]);
        assert!(request_within(&to_b, b"b", CUT_TIMEOUT).await.is_none());
        let to_c = tokio::time::timeout(OK_TIMEOUT, connect(&ep, addr_c, NodeId(2)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            request_within(&to_c, b"12", OK_TIMEOUT).await.unwrap(),
            b"21"
        );
        assert!(switch.stats().dropped_outbound > 0);

        // Heal b: the old connection recovers (QUIC retransmits what was lost).
        switch.heal_peers([addr_b]);
        assert!(!switch.is_faulty());
        assert_eq!(
            request_within(&to_b, b"34", OK_TIMEOUT).await.unwrap(),
            b"43"
        );
    }

    /// A lossy link (a fifth of the datagrams dropped each way): QUIC retransmits, so every
    /// request still completes, and the drops are counted.
    #[tokio::test]
    async fn fault_random_loss_is_survivable() {
        let (a, b, _) = identities();
        let server_switch = FaultSwitch::new();
        server_switch.set_drop_rate(0.2, 11);
        let server = echo_server(&b, server_switch.clone());
        let switch = FaultSwitch::new();
        switch.set_drop_rate(0.2, 12);
        let ep = client(&a, switch.clone());
        let conn = tokio::time::timeout(
            OK_TIMEOUT,
            connect(&ep, server.local_addr().unwrap(), NodeId(1)),
        )
        .await
        .unwrap()
        .unwrap();
        for i in 0..20u8 {
            let body = [i, i + 1, i + 2];
            let reply = request_within(&conn, &body, OK_TIMEOUT).await.unwrap();
            assert_eq!(reply, [i + 2, i + 1, i]);
        }
        let (client_stats, server_stats) = (switch.stats(), server_switch.stats());
        assert!(
            client_stats.dropped() > 0 && server_stats.dropped() > 0,
            "{client_stats:?} {server_stats:?}"
        );
    }

    /// Exact counts and which datagrams arrive, against a plain UDP socket.
    #[tokio::test]
    async fn fault_counts_exact_datagrams() {
        let switch = FaultSwitch::new();
        let faulty = wrap_udp_socket(bind(), switch.clone()).unwrap();
        let faulty_addr = faulty.local_addr().unwrap();
        let peer = bind();
        peer.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let peer_addr = peer.local_addr().unwrap();

        let mut storage = vec![0u8; 2048];
        let mut recv_one = async || {
            let mut bufs = [IoSliceMut::new(&mut storage)];
            let mut meta = [RecvMeta::default()];
            let n = tokio::time::timeout(
                OK_TIMEOUT,
                poll_fn(|cx| faulty.poll_recv(cx, &mut bufs, &mut meta)),
            )
            .await
            .unwrap()
            .unwrap();
            assert_eq!(n, 1);
            assert_eq!(meta[0].addr, peer_addr);
            bufs[0][..meta[0].len].to_vec()
        };

        // Inbound: five dropped while cut, then one passes; the socket skips the five.
        switch.cut();
        for i in 0..5u8 {
            peer.send_to(&[i], faulty_addr).unwrap();
        }
        // Let them reach the socket's queue, so they are judged while cut.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let early = tokio::time::timeout(Duration::from_millis(100), async {
            let mut small = [0u8; 64];
            let mut bufs = [IoSliceMut::new(&mut small)];
            let mut meta = [RecvMeta::default()];
            poll_fn(|cx| faulty.poll_recv(cx, &mut bufs, &mut meta)).await
        })
        .await;
        assert!(early.is_err(), "a cut socket must deliver nothing");
        assert_eq!(switch.stats().dropped_inbound, 5);
        switch.heal();
        peer.send_to(b"ok", faulty_addr).unwrap();
        assert_eq!(recv_one().await, b"ok");
        assert_eq!(
            switch.stats(),
            FaultStats {
                dropped_inbound: 5,
                passed_inbound: 1,
                ..FaultStats::default()
            }
        );

        // Outbound: a dropped send reports success and never arrives.
        let transmit = |data: &'static [u8]| Transmit {
            destination: peer_addr,
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: None,
        };
        switch.cut_direction(Direction::Outbound);
        faulty.try_send(&transmit(b"gone")).unwrap();
        let mut buf = [0u8; 64];
        assert!(
            peer.recv_from(&mut buf).is_err(),
            "dropped datagram arrived"
        );
        // Inbound still open under an outbound-only cut.
        peer.send_to(b"in", faulty_addr).unwrap();
        assert_eq!(recv_one().await, b"in");
        switch.heal();
        faulty.try_send(&transmit(b"here")).unwrap();
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"here"[..], faulty_addr));

        // A cut peer: traffic from another address still passes.
        let other = bind();
        switch.cut_peers([peer_addr]);
        peer.send_to(b"no", faulty_addr).unwrap();
        other.send_to(b"yes", faulty_addr).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut bufs = [IoSliceMut::new(&mut storage)];
        let mut meta = [RecvMeta::default()];
        poll_fn(|cx| faulty.poll_recv(cx, &mut bufs, &mut meta))
            .await
            .unwrap();
        assert_eq!(meta[0].addr, other.local_addr().unwrap());
        assert_eq!(&bufs[0][..meta[0].len], b"yes");

        assert_eq!(
            switch.stats(),
            FaultStats {
                dropped_inbound: 6,
                dropped_outbound: 1,
                passed_inbound: 3,
                passed_outbound: 1,
            }
        );
        switch.reset_stats();
        assert_eq!(switch.stats(), FaultStats::default());
    }

    /// Several datagrams in one receive call: dropped ones are removed and the kept ones moved
    /// down, in order, with their metadata.
    #[tokio::test]
    async fn fault_compacts_batched_receives() {
        let switch = FaultSwitch::new();
        let faulty = wrap_udp_socket(bind(), switch.clone()).unwrap();
        let faulty_addr = faulty.local_addr().unwrap();
        let (cut, open) = (bind(), bind());
        switch.cut_peers([cut.local_addr().unwrap()]);
        for (i, sock) in [&cut, &open, &cut, &open, &open].into_iter().enumerate() {
            sock.send_to(&[i as u8; 3], faulty_addr).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut got = Vec::new();
        let mut calls = 0;
        while got.len() < 3 {
            calls += 1;
            let mut storage = vec![[0u8; 64]; 8];
            let mut bufs: Vec<IoSliceMut<'_>> =
                storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let mut meta = [RecvMeta::default(); 8];
            let n = tokio::time::timeout(
                OK_TIMEOUT,
                poll_fn(|cx| faulty.poll_recv(cx, &mut bufs, &mut meta)),
            )
            .await
            .unwrap()
            .unwrap();
            for i in 0..n {
                assert_eq!(meta[i].addr, open.local_addr().unwrap());
                got.push(bufs[i][..meta[i].len].to_vec());
            }
        }
        assert_eq!(got, vec![vec![1; 3], vec![3; 3], vec![4; 3]]);
        // Linux receives the five in one batch (recvmmsg), so the compaction really ran.
        if cfg!(target_os = "linux") {
            assert_eq!(calls, 1);
        }
        let stats = switch.stats();
        assert_eq!((stats.dropped_inbound, stats.passed_inbound), (2, 3));
    }

    #[test]
    fn fault_random_drop_rate_is_seeded() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let run = |rate: f64, seed: u64| {
            let switch = FaultSwitch::new();
            switch.set_drop_rate(rate, seed);
            let pattern: Vec<bool> = (0..10_000)
                .map(|_| switch.judge(Direction::Outbound, addr, 1))
                .collect();
            (pattern, switch.stats())
        };
        let (p1, s1) = run(0.25, 7);
        let (p2, _) = run(0.25, 7);
        let (p3, _) = run(0.25, 8);
        assert_eq!(p1, p2, "same seed, same drops");
        assert_ne!(p1, p3, "another seed, other drops");
        assert_eq!(s1.dropped_outbound + s1.passed_outbound, 10_000);
        assert!(
            (2_200..2_800).contains(&s1.dropped_outbound),
            "about a quarter dropped: {s1:?}"
        );
        assert_eq!(run(0.0, 1).1.dropped(), 0);
        assert_eq!(run(1.0, 1).1.dropped(), 10_000);
        assert_eq!(run(f64::NAN, 1).1.dropped(), 0);

        let switch = FaultSwitch::new();
        switch.set_drop_rate(0.5, 1);
        assert!(switch.is_faulty());
        switch.set_drop_rate(0.0, 1);
        assert!(!switch.is_faulty());
    }

    #[test]
    fn fault_canonical_addresses_match() {
        let switch = FaultSwitch::new();
        let v4: SocketAddr = "10.0.0.1:5".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:5".parse().unwrap();
        switch.cut_peers([v4]);
        assert!(switch.decide(Direction::Inbound, mapped));
        assert!(!switch.decide(Direction::Inbound, "10.0.0.1:6".parse().unwrap()));
        switch.heal_peers([mapped]);
        assert!(!switch.is_faulty());
        assert_eq!(segments(3000, 1200), 3);
        assert_eq!(segments(1200, 1200), 1);
        assert_eq!(segments(10, 0), 1);
    }
}
