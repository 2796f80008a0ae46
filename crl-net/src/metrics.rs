//! A node's counters in the Prometheus text format, and a small HTTP endpoint that serves
//! them (`GET /metrics`), as `crl-node run` does on the cluster file's `metrics_addr`.
//!
//! [`render`] takes a snapshot of [`Node::stats`] (and of the write-ahead log's counters with
//! a data dir) and encodes it with `prometheus-client`; nothing is counted on the hit path
//! beyond what `NodeStats` already counts (hits per thread). [`serve`] answers one request
//! per connection, reads at most [`MAX_REQUEST_BYTES`] of it within [`REQUEST_TIMEOUT`] and
//! serves at most [`MAX_CONNECTIONS`] connections at once: a scraper, or anything else that
//! connects, cannot make the node hold more.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::node::Node;

/// The most bytes of a request [`serve`] reads (the request line and headers).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long [`serve`] waits for a request and for its answer to be taken.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The most connections [`serve`] serves at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 16;

type Labels = Vec<(String, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// One counter per peer, labelled `peer`.
fn per_peer(
    registry: &mut Registry,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (u32, u64)>,
) {
    let family = Family::<Labels, Counter<u64>>::default();
    for (peer, v) in values {
        family
            .get_or_create(&vec![("peer".to_owned(), peer.to_string())])
            .inc_by(v);
    }
    registry.register(name, help, family);
}

/// The node's counters now, in the Prometheus text format (names start with `crl_`).
pub fn render(node: &Node) -> String {
    let s = node.stats();
    let mut r = Registry::with_prefix("crl");
    gauge(&mut r, "node", "This node's id", i64::from(s.node.0));
    counter(&mut r, "hits", "Accesses served by the local copy", s.hits);
    counter(
        &mut r,
        "misses",
        "Accesses that asked the home",
        s.engine.misses,
    );
    counter(
        &mut r,
        "recalls_sent",
        "Recalls this node sent as a home",
        s.engine.recalls_sent,
    );
    counter(
        &mut r,
        "recalls_received",
        "Recalls this node received for its copies",
        s.engine.recalls_received,
    );
    counter(
        &mut r,
        "evictions",
        "Unmapped copies evicted",
        s.engine.evictions,
    );
    counter(
        &mut r,
        "lost_copies",
        "Copies of regions homed here lost with a failed or fenced holder",
        s.engine.lost_copies,
    );
    counter(
        &mut r,
        "oversized_writes_dropped",
        "Modified copies this node could not return to their home (grown past max_region_len)",
        s.engine.oversized_writes_dropped,
    );
    counter(
        &mut r,
        "violations",
        "Protocol violations by peers (each closed the peer's connections)",
        s.violations,
    );
    counter(
        &mut r,
        "peer_restarts",
        "Restarts or fences of peers this node handled",
        s.peer_restarts,
    );
    counter(
        &mut r,
        "tx_committed",
        "Transactions committed",
        s.tx.committed,
    );
    counter(
        &mut r,
        "tx_retried",
        "Transaction attempts retried after a conflict",
        s.tx.retried,
    );
    counter(&mut r, "tx_aborted", "Transactions aborted", s.tx.aborted);
    counter(
        &mut r,
        "fences",
        "Peers this node fenced",
        s.liveness.fences,
    );
    counter(
        &mut r,
        "fenced_by_peers",
        "Times a peer fenced this node",
        s.liveness.fenced_by_peers,
    );
    counter(
        &mut r,
        "lease_waits",
        "Accesses that waited for a lease renewal",
        s.liveness.lease_waits,
    );
    gauge(
        &mut r,
        "placements_waiting",
        "create_at calls waiting for their homes",
        s.placements_waiting as i64,
    );
    let connected = Family::<Labels, Gauge<i64>>::default();
    let unacked = Family::<Labels, Gauge<i64>>::default();
    for p in &s.peers {
        let labels = vec![("peer".to_owned(), p.node.0.to_string())];
        connected.get_or_create(&labels).set(i64::from(p.connected));
        unacked
            .get_or_create(&labels)
            .set(i64::try_from(p.unacked_bytes).unwrap_or(i64::MAX));
    }
    r.register(
        "peer_connected",
        "Whether a connection to the peer is up (1) or not (0)",
        connected,
    );
    r.register(
        "peer_unacked_bytes",
        "Bytes sent to the peer and not yet acknowledged (its session's retransmit buffer)",
        unacked,
    );
    per_peer(
        &mut r,
        "peer_messages_sent",
        "Messages sent to the peer",
        s.peers.iter().map(|p| (p.node.0, p.messages_sent)),
    );
    per_peer(
        &mut r,
        "peer_bytes_sent",
        "Bytes sent to the peer",
        s.peers.iter().map(|p| (p.node.0, p.bytes_sent)),
    );
    per_peer(
        &mut r,
        "peer_messages_received",
        "Messages received from the peer",
        s.peers.iter().map(|p| (p.node.0, p.messages_received)),
    );
    per_peer(
        &mut r,
        "peer_bytes_received",
        "Bytes received from the peer",
        s.peers.iter().map(|p| (p.node.0, p.bytes_received)),
    );
    per_peer(
        &mut r,
        "peer_messages_resent",
        "Messages sent to the peer again after a broken connection",
        s.peers.iter().map(|p| (p.node.0, p.messages_resent)),
    );
    if let Some(d) = node.durability() {
        let log = d.store().stats();
        counter(
            &mut r,
            "log_appends",
            "Records appended to the log",
            log.appends,
        );
        counter(
            &mut r,
            "log_batches",
            "Group commits (one fdatasync each)",
            log.batches,
        );
        counter(
            &mut r,
            "log_bytes_written",
            "Bytes written to the log",
            log.bytes_written,
        );
        let seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        seconds.inc_by(log.batch_io_nanos as f64 / 1e9);
        r.register(
            "log_batch_io_seconds",
            "Time spent writing and fdatasync'ing batches (divide by log_batches for the mean)",
            seconds,
        );
        let max = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        max.set(log.batch_io_nanos_max as f64 / 1e9);
        r.register(
            "log_batch_io_max_seconds",
            "The longest write and fdatasync of one batch",
            max,
        );
        gauge(
            &mut r,
            "log_failed",
            "Whether the log failed (1: the node commits nothing until restarted)",
            i64::from(d.store().failure().is_some()),
        );
    }
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &r) {
        warn!("metrics: cannot encode: {e}");
    }
    out
}

/// Serves [`render`] on `listener` (`GET /metrics`; anything else gets 404) until the task
/// is dropped or the node stops. It holds none of the program's share of the node: dropping
/// the program's last handle still stops the node (and then this).
pub async fn serve(node: Node, listener: TcpListener) {
    let user = node;
    let node = user.internal();
    drop(user);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            () = node.stopped() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, from) = match accepted {
            Ok(c) => c,
            Err(e) => {
                warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(REQUEST_TIMEOUT, answer(&node, stream)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%from, "metrics: {e}"),
                Err(_) => debug!(%from, "metrics: request timed out"),
            }
        });
    }
}

/// Binds `addr` and serves the metrics there in a task; returns the bound address.
pub async fn spawn(node: Node, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(node, listener));
    Ok(bound)
}

async fn answer(node: &Node, mut stream: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST_BYTES];
    let mut len = 0;
    // The request line and headers end with an empty line.
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            stream
                .write_all(b"HTTP/1.0 431 Request Header Fields Too Large\r\n\r\n")
                .await?;
            return Ok(());
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let line = buf[..len].split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let response = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            let body = render(node);
            format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        _ => "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::Cluster;

    async fn ask(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The server may answer (and close) before all of an oversized request is sent.
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The endpoint serves `GET /metrics`, 404 for anything else, and refuses a request
    /// larger than its bound instead of reading on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_metrics_and_bounds_requests() {
        let cluster = Cluster::local(2).await.unwrap();
        let node = cluster.node(0).clone();
        let addr = super::spawn(node.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let ok = ask(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.0 200 OK"), "{ok}");
        assert!(ok.contains("# TYPE crl_hits counter"), "{ok}");
        assert!(ok.contains("crl_peer_connected{peer=\"1\"}"), "{ok}");
        let missing = ask(addr, b"GET /other HTTP/1.0\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.0 404"), "{missing}");
        let mut huge = b"GET /metrics HTTP/1.0\r\nX: ".to_vec();
        huge.resize(super::MAX_REQUEST_BYTES + 100, b'a');
        let refused = ask(addr, &huge).await;
        assert!(refused.starts_with("HTTP/1.0 431"), "{refused}");
        drop(node);
        cluster.shutdown().await;
    }

    /// The endpoint holds none of the program's share of the node: once the program drops
    /// every handle, the node stops and the metrics address is free again (it kept the node
    /// running, and the listener bound, for good).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_endpoint_ends_with_the_node() {
        let cluster = Cluster::local(1).await.unwrap();
        let node = cluster.node(0).clone();
        let addr = super::spawn(node.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        drop((node, cluster));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if std::net::TcpListener::bind(addr).is_ok() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the metrics address {addr} is still bound 5 s after the node's last handle went"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
