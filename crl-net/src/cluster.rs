//! [`Cluster`]: several nodes in one process, for tests, examples and single-machine use.

use std::collections::BTreeMap;
use std::time::Duration;

use crl_core::NodeId;

use crate::config::NodeConfig;
use crate::error::Error;
use crate::fault::FaultSwitch;
use crate::node::Node;
use crate::tls::ClusterCa;
use crate::transport::TransportError;

/// `n` nodes in this process, over QUIC on 127.0.0.1, with an ephemeral cluster CA and
/// certificates (no files): the embedded default for tests, examples and single-machine use.
pub struct Cluster {
    nodes: Vec<Node>,
    configs: Vec<NodeConfig>,
    ca: ClusterCa,
    /// Each node's fault switch (every local node's socket has one; healed, it passes all).
    switches: Vec<FaultSwitch>,
}

impl Cluster {
    /// Starts `n` nodes with default settings.
    pub async fn local(n: usize) -> Result<Cluster, Error> {
        Cluster::local_with(n, |_| {}).await
    }

    /// Starts `n` nodes, letting `tweak` adjust each node's configuration first.
    pub async fn local_with(n: usize, tweak: impl Fn(&mut NodeConfig)) -> Result<Cluster, Error> {
        let ca = ClusterCa::generate("crl-local")?;
        let cluster_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        let mut sockets = Vec::new();
        let mut addrs = BTreeMap::new();
        for i in 0..n {
            let socket =
                std::net::UdpSocket::bind("127.0.0.1:0").map_err(TransportError::Endpoint)?;
            addrs.insert(
                NodeId(i as u32),
                socket.local_addr().map_err(TransportError::Endpoint)?,
            );
            sockets.push(socket);
        }
        let mut nodes = Vec::new();
        let mut configs = Vec::new();
        let mut switches = Vec::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            let id = NodeId(i as u32);
            let mut config = NodeConfig::new(cluster_id, ca.issue(id)?, addrs[&id]);
            config.peers = addrs
                .iter()
                .filter(|(p, _)| **p != id)
                .map(|(p, a)| (*p, *a))
                .collect();
            tweak(&mut config);
            configs.push(config.clone());
            let switch = FaultSwitch::new();
            let socket = crate::fault::wrap_udp_socket(socket, switch.clone())
                .map_err(TransportError::Endpoint)?;
            switches.push(switch);
            nodes.push(Node::start_with_abstract_socket(config, socket).await?);
        }
        Ok(Cluster {
            nodes,
            configs,
            ca,
            switches,
        })
    }

    /// Node `i`'s fault switch: [`FaultSwitch::cut`] cuts it off from every peer (both
    /// directions, every datagram dropped) until [`FaultSwitch::heal`]. The switch survives
    /// [`restart`](Self::restart).
    ///
    /// # Panics
    /// If there is no node `i`.
    pub fn faults(&self, i: usize) -> &FaultSwitch {
        &self.switches[i]
    }

    /// Stops node `i` and starts it again with the same configuration and address: with a
    /// data dir it recovers its regions from its log; either way it comes back with a new
    /// epoch, and its peers drop what they knew of the old incarnation. Drop every handle of
    /// the old node first (they keep its socket open).
    ///
    /// # Panics
    /// If there is no node `i`.
    pub async fn restart(&mut self, i: usize) -> Result<(), Error> {
        self.nodes[i].shutdown().await;
        // Let go of the old node (its endpoint keeps the address while it lives): point the
        // slot at another node until the new one is up.
        if self.nodes.len() > 1 {
            let other = self.nodes[(i + 1) % self.nodes.len()].clone();
            drop(std::mem::replace(&mut self.nodes[i], other));
        }
        let config = self.configs[i].clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let socket = loop {
            match std::net::UdpSocket::bind(config.listen) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!("rebinding {}: {e}", config.listen);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(TransportError::Endpoint(e).into()),
            }
        };
        let socket = crate::fault::wrap_udp_socket(socket, self.switches[i].clone())
            .map_err(TransportError::Endpoint)?;
        self.nodes[i] = Node::start_with_abstract_socket(config, socket).await?;
        Ok(())
    }

    /// Node `i`.
    ///
    /// # Panics
    /// If there is no node `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// All nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The cluster's CA (to issue a certificate for another process).
    pub fn ca(&self) -> &ClusterCa {
        &self.ca
    }

    /// Shuts every node down, all at once.
    pub async fn shutdown(&self) {
        // All at once: each node's transport waits (bounded) for its connections to close.
        let mut stopping = tokio::task::JoinSet::new();
        for node in &self.nodes {
            let node = node.clone();
            stopping.spawn(async move { node.shutdown().await });
        }
        while stopping.join_next().await.is_some() {}
    }
}
