//! A node's configuration: built in code with [`NodeConfig::new`], or read from a cluster
//! file with [`NodeConfig::from_file`].
//!
//! # The cluster file
//!
//! One TOML file describes the whole cluster; every node reads the same file and picks its
//! own entry by id (`crl-node run --config cluster.toml --id 1`). The entry whose `id`
//! matches gives the node its listen address, certificate, key and data directory; every
//! other entry becomes a peer.
//!
//! ```toml
//! cluster_id = 7                # required: nodes of different clusters refuse each other
//! op_timeout_ms = 5000          # optional (default 5000): bound on every remote wait
//! connect_timeout_ms = 2000     # optional (default 2000)
//! unmapped_capacity = 4096      # optional (default 4096; 0 keeps no unmapped regions)
//! max_frame_len = 16777216      # optional (default and maximum: crl_core::wire::MAX_FRAME_LEN)
//! max_region_len = 1073741824  # optional (default 1 GiB): the largest region (archived) a node ships or takes
//! send_buffer_bytes = 67108864   # optional (default 64 MiB per peer): unacknowledged bytes before operations wait
//! peer_timeout_ms = 12000       # optional (default 12000; "never" = never reclaim from a live node)
//! ca = "certs/ca.pem"           # required: the CA certificate shared by all nodes
//!
//! [[node]]
//! id = 0
//! addr = "127.0.0.1:7000"       # ip:port; the node listens here and peers dial it
//! cert = "certs/node-0.pem"     # optional: default "node-<id>.pem" in the directory of `ca`
//! key = "certs/node-0-key.pem"  # optional: default "node-<id>-key.pem" next to `ca`
//! data_dir = "data/n0"          # optional
//! metrics_addr = "127.0.0.1:9100"  # optional: `crl-node run` serves GET /metrics (Prometheus text) here
//!
//! [[node]]
//! id = 1
//! addr = "127.0.0.1:7001"
//!
//! [[node]]
//! id = 2
//! addr = "127.0.0.1:7002"
//! ```
//!
//! Relative paths (`ca`, `cert`, `key`, `data_dir`) are resolved against the directory that
//! holds the cluster file (for [`NodeConfig::from_toml`], against its `base_dir`). Unknown
//! keys are errors, as are node ids above [`MAX_NODE_ID`] (4095), duplicate node ids or
//! addresses, addresses that are not
//! `ip:port`, zero timeouts, and missing certificate files; every error names the file and
//! the field or node at fault.
//!
//! The files under `certs/` are what `crl-node cert init --dir certs` and
//! `crl-node cert issue --dir certs --id 0 --id 1 --id 2` write.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crl_core::NodeId;
use serde::Deserialize;

use crate::tls::{NodeIdentity, TlsError};

/// Default [`NodeConfig::op_timeout`]: 5 s.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`NodeConfig::connect_timeout`]: 2 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default [`NodeConfig::unmapped_capacity`].
pub const DEFAULT_UNMAPPED_CAPACITY: usize = 4096;

/// The largest node id: a transaction id carries its writer's whole node id in 12 bits (so
/// that ids of different writers never collide at a home, and a home can check that a
/// transaction is the sender's own).
pub const MAX_NODE_ID: u32 = 4095;
/// Default [`NodeConfig::send_buffer_bytes`]: 64 MiB per peer.
pub const DEFAULT_SEND_BUFFER_BYTES: usize = crl_core::session::DEFAULT_MAX_UNACKED_BYTES;
/// Default [`NodeConfig::peer_timeout`]: 12 s.
pub const DEFAULT_PEER_TIMEOUT: Duration = crl_core::liveness::DEFAULT_PEER_TIMEOUT;
/// Default [`NodeConfig::tx_max_attempts`].
pub const DEFAULT_TX_MAX_ATTEMPTS: u32 = 100;

/// A node's settings (built in code or read from a cluster file).
#[derive(Clone)]
pub struct NodeConfig {
    /// The cluster's id; nodes of different clusters refuse each other.
    pub cluster_id: u64,
    /// This node's id (equal to `identity.node()`).
    pub node: NodeId,
    /// Where this node accepts connections from its peers.
    pub listen: SocketAddr,
    /// Every *other* node of the cluster and its address.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// This node's certificate, key and the cluster CA.
    pub identity: NodeIdentity,
    /// Where the node keeps its data, if anywhere.
    pub data_dir: Option<PathBuf>,
    /// Bound on every remote wait (default [`DEFAULT_OP_TIMEOUT`]).
    pub op_timeout: Duration,
    /// Bound on establishing a connection to a peer (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// How many unmapped regions stay cached (default [`DEFAULT_UNMAPPED_CAPACITY`]).
    pub unmapped_capacity: usize,
    /// Largest frame payload accepted or sent (default [`crl_core::wire::MAX_FRAME_LEN`]).
    /// Longer messages travel in fragments ([`crl_core::fragment`]).
    pub max_frame_len: usize,
    /// The largest region, in archived bytes, this node creates, ships or takes (default
    /// [`crl_core::engine::DEFAULT_MAX_IMAGE_LEN`], 1 GiB): larger ones are refused with
    /// [`Error::TooLarge`](crate::Error::TooLarge). It also bounds what a peer can make this
    /// node buffer for one message. Every node of a cluster should use the same value.
    pub max_region_len: usize,
    /// Bytes sent to a peer and not yet acknowledged (the session's retransmit buffer) beyond
    /// which new operations wait for room (default [`DEFAULT_SEND_BUFFER_BYTES`]). See
    /// [`crate::transport`].
    pub send_buffer_bytes: usize,
    /// How long a peer may stay silent before this node fences it (DESIGN.md §6, rule 3;
    /// default [`DEFAULT_PEER_TIMEOUT`]). It is also the length of the leases this node holds
    /// on its copies of other homes' regions, and every node of a cluster should use the
    /// same value. `None`: never reclaim anything from a live node: no leases, no fences; a
    /// silent peer blocks the regions it holds until it comes back or restarts. See the
    /// README's "Semantics to know".
    pub peer_timeout: Option<Duration>,
    /// How many times a transaction is attempted before it fails with
    /// [`Error::Conflict`](crate::Error::Conflict) (default [`DEFAULT_TX_MAX_ATTEMPTS`]).
    pub tx_max_attempts: u32,
    /// Where `crl-node run` serves this node's metrics in the Prometheus text format
    /// (`GET /metrics`; `crl-node status` reads them). The library itself serves nothing:
    /// a program calls [`crate::metrics::serve`] if it wants the same.
    pub metrics_addr: Option<SocketAddr>,
    /// A planted bug for the serializability checker's own test; `None` in real use.
    #[doc(hidden)]
    pub tx_fault: Option<TxFault>,
}

impl fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeConfig")
            .field("cluster_id", &self.cluster_id)
            .field("node", &self.node)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field(
                "identity",
                &format_args!("<identity of {}>", self.identity.node()),
            )
            .field("data_dir", &self.data_dir)
            .field("op_timeout", &self.op_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("unmapped_capacity", &self.unmapped_capacity)
            .field("max_frame_len", &self.max_frame_len)
            .field("max_region_len", &self.max_region_len)
            .field("send_buffer_bytes", &self.send_buffer_bytes)
            .field("peer_timeout", &self.peer_timeout)
            .field("tx_max_attempts", &self.tx_max_attempts)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

impl NodeConfig {
    /// A configuration with default settings and no peers; the node id is `identity.node()`.
    pub fn new(cluster_id: u64, identity: NodeIdentity, listen: SocketAddr) -> Self {
        NodeConfig {
            cluster_id,
            node: identity.node(),
            listen,
            peers: BTreeMap::new(),
            identity,
            data_dir: None,
            op_timeout: DEFAULT_OP_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            unmapped_capacity: DEFAULT_UNMAPPED_CAPACITY,
            max_frame_len: crl_core::wire::MAX_FRAME_LEN,
            max_region_len: crl_core::engine::DEFAULT_MAX_IMAGE_LEN,
            send_buffer_bytes: DEFAULT_SEND_BUFFER_BYTES,
            peer_timeout: Some(DEFAULT_PEER_TIMEOUT),
            tx_max_attempts: DEFAULT_TX_MAX_ATTEMPTS,
            metrics_addr: None,
            tx_fault: None,
        }
    }

    /// Reads the cluster file at `path` (format in the [module docs](self)) and returns the
    /// configuration of node `node`: parses, validates and loads the certificates. Relative
    /// paths in the file are resolved against the file's directory.
    pub fn from_file(path: impl AsRef<Path>, node: NodeId) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        parse(&text, base_dir, node, &path.display().to_string())
    }

    /// Like [`from_file`](Self::from_file), from the file's text; relative paths are
    /// resolved against `base_dir`. Errors name the file as `<config>`.
    pub fn from_toml(text: &str, base_dir: &Path, node: NodeId) -> Result<Self, ConfigError> {
        parse(text, base_dir, node, "<config>")
    }
}

/// Why a cluster file could not be turned into a [`NodeConfig`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The cluster file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or does not have the expected keys and types.
    #[error("{file}:{line}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// 1-based line of the error (0 if unknown).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No `[[node]]` entry has the requested id.
    #[error("{file}: node id {id} is not in the cluster file (ids listed: {listed})")]
    UnknownNode {
        /// The file.
        file: String,
        /// The requested id.
        id: u32,
        /// The ids present, comma-separated.
        listed: String,
    },
    /// A node id above [`MAX_NODE_ID`].
    #[error("{file}: node id {id} is too large (node ids are 0 to {max})")]
    NodeIdTooLarge {
        /// The file (empty for a configuration built in code).
        file: String,
        /// The id.
        id: u32,
        /// [`MAX_NODE_ID`].
        max: u32,
    },
    /// Two `[[node]]` entries have the same id.
    #[error("{file}: node id {id} appears in more than one [[node]] entry")]
    DuplicateNode {
        /// The file.
        file: String,
        /// The repeated id.
        id: u32,
    },
    /// A node's `addr` (or `metrics_addr`) is not an `ip:port` socket address.
    #[error(
        "{file}: node {id}: bad address {addr:?} in field `{field}` (expected ip:port): {reason}"
    )]
    BadAddress {
        /// The file.
        file: String,
        /// The node.
        id: u32,
        /// The field.
        field: &'static str,
        /// The address as written.
        addr: String,
        /// Why it does not parse.
        reason: std::net::AddrParseError,
    },
    /// Two nodes have the same address.
    #[error("{file}: nodes {first} and {second} both use address {addr}")]
    DuplicateAddress {
        /// The file.
        file: String,
        /// The first node with that address.
        first: u32,
        /// The second node with that address.
        second: u32,
        /// The shared address.
        addr: SocketAddr,
    },
    /// A certificate or key file does not exist.
    #[error("{file}: {what} file {} (field `{field}`) does not exist", path.display())]
    MissingCert {
        /// The file.
        file: String,
        /// The field that names (or would name) it: `ca`, `cert` or `key`.
        field: &'static str,
        /// What it is: "CA certificate", "node certificate" or "node key".
        what: &'static str,
        /// The resolved path.
        path: PathBuf,
    },
    /// The certificates could not be loaded or do not fit together.
    #[error("{file}: certificate error for node {id}: {source}")]
    Certificate {
        /// The file.
        file: String,
        /// The node whose identity was being loaded.
        id: u32,
        /// The underlying error.
        source: TlsError,
    },
    /// A timeout (or a count that must be positive) is zero.
    #[error("{file}: `{field}` must be greater than zero")]
    Zero {
        /// The file.
        file: String,
        /// The field.
        field: &'static str,
    },
    /// `max_frame_len` exceeds the wire format's bound.
    #[error("{file}: `max_frame_len` = {value} exceeds the wire limit {max}")]
    FrameTooLarge {
        /// The file.
        file: String,
        /// The configured value.
        value: usize,
        /// [`crl_core::wire::MAX_FRAME_LEN`].
        max: usize,
    },
}

/// The cluster file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    cluster_id: u64,
    op_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    unmapped_capacity: Option<usize>,
    max_frame_len: Option<usize>,
    max_region_len: Option<usize>,
    send_buffer_bytes: Option<usize>,
    peer_timeout_ms: Option<PeerTimeoutField>,
    ca: PathBuf,
    #[serde(default)]
    node: Vec<NodeEntry>,
}

/// `peer_timeout_ms`, as written: milliseconds, or `"never"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PeerTimeoutField {
    Millis(u64),
    Word(String),
}

/// One `[[node]]` entry, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    id: u32,
    addr: String,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    metrics_addr: Option<String>,
}

fn resolve(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn parse(text: &str, base_dir: &Path, node: NodeId, file: &str) -> Result<NodeConfig, ConfigError> {
    let f = || file.to_owned();
    let raw: ClusterFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        file: f(),
        line: e.span().map_or(0, |s| line_of(text, s.start)),
        message: e.message().trim().to_owned(),
    })?;

    let op_timeout = match raw.op_timeout_ms {
        Some(0) => {
            return Err(ConfigError::Zero {
                file: f(),
                field: "op_timeout_ms",
            });
        }
        Some(ms) => Duration::from_millis(ms),
        None => DEFAULT_OP_TIMEOUT,
    };
    let connect_timeout = match raw.connect_timeout_ms {
        Some(0) => {
            return Err(ConfigError::Zero {
                file: f(),
                field: "connect_timeout_ms",
            });
        }
        Some(ms) => Duration::from_millis(ms),
        None => DEFAULT_CONNECT_TIMEOUT,
    };
    let max_frame_len = match raw.max_frame_len {
        Some(0) => {
            return Err(ConfigError::Zero {
                file: f(),
                field: "max_frame_len",
            });
        }
        Some(n) if n > crl_core::wire::MAX_FRAME_LEN => {
            return Err(ConfigError::FrameTooLarge {
                file: f(),
                value: n,
                max: crl_core::wire::MAX_FRAME_LEN,
            });
        }
        Some(n) => n,
        None => crl_core::wire::MAX_FRAME_LEN,
    };
    let max_region_len = match raw.max_region_len {
        Some(0) => {
            return Err(ConfigError::Zero {
                file: f(),
                field: "max_region_len",
            });
        }
        Some(n) => n,
        None => crl_core::engine::DEFAULT_MAX_IMAGE_LEN,
    };
    let send_buffer_bytes = match raw.send_buffer_bytes {
        Some(0) => {
            return Err(ConfigError::Zero {
                file: f(),
                field: "send_buffer_bytes",
            });
        }
        Some(n) => n,
        None => DEFAULT_SEND_BUFFER_BYTES,
    };
    let peer_timeout = match raw.peer_timeout_ms {
        None => Some(DEFAULT_PEER_TIMEOUT),
        Some(PeerTimeoutField::Millis(0)) => {
            return Err(ConfigError::Zero {
                file: f(),
                field: "peer_timeout_ms",
            });
        }
        Some(PeerTimeoutField::Millis(ms)) => Some(Duration::from_millis(ms)),
        Some(PeerTimeoutField::Word(w)) if w == "never" => None,
        Some(PeerTimeoutField::Word(w)) => {
            return Err(ConfigError::Syntax {
                file: f(),
                line: 0,
                message: format!(
                    "`peer_timeout_ms` must be a number of milliseconds or \"never\", not {w:?}"
                ),
            });
        }
    };
    let unmapped_capacity = raw.unmapped_capacity.unwrap_or(DEFAULT_UNMAPPED_CAPACITY);

    // Every entry is checked, not only ours: all nodes read the same file.
    let mut addrs: BTreeMap<u32, SocketAddr> = BTreeMap::new();
    let mut by_addr: BTreeMap<SocketAddr, u32> = BTreeMap::new();
    for entry in &raw.node {
        let addr: SocketAddr =
            entry
                .addr
                .trim()
                .parse()
                .map_err(|reason| ConfigError::BadAddress {
                    file: f(),
                    id: entry.id,
                    field: "addr",
                    addr: entry.addr.clone(),
                    reason,
                })?;
        if entry.id > MAX_NODE_ID {
            return Err(ConfigError::NodeIdTooLarge {
                file: f(),
                id: entry.id,
                max: MAX_NODE_ID,
            });
        }
        if addrs.insert(entry.id, addr).is_some() {
            return Err(ConfigError::DuplicateNode {
                file: f(),
                id: entry.id,
            });
        }
        if let Some(&first) = by_addr.get(&addr) {
            return Err(ConfigError::DuplicateAddress {
                file: f(),
                first,
                second: entry.id,
                addr,
            });
        }
        by_addr.insert(addr, entry.id);
    }

    let Some(me) = raw.node.iter().find(|e| e.id == node.0) else {
        let listed = addrs
            .keys()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ConfigError::UnknownNode {
            file: f(),
            id: node.0,
            listed: if listed.is_empty() {
                "none".to_owned()
            } else {
                listed
            },
        });
    };

    let ca = resolve(base_dir, &raw.ca);
    let certs_dir = ca
        .parent()
        .map_or_else(|| base_dir.to_path_buf(), Path::to_path_buf);
    let cert = match &me.cert {
        Some(p) => resolve(base_dir, p),
        None => certs_dir.join(format!("node-{}.pem", node.0)),
    };
    let key = match &me.key {
        Some(p) => resolve(base_dir, p),
        None => certs_dir.join(format!("node-{}-key.pem", node.0)),
    };
    for (field, what, path) in [
        ("ca", "CA certificate", &ca),
        ("cert", "node certificate", &cert),
        ("key", "node key", &key),
    ] {
        if !path.is_file() {
            return Err(ConfigError::MissingCert {
                file: f(),
                field,
                what,
                path: path.clone(),
            });
        }
    }
    let identity =
        NodeIdentity::load(node, &cert, &key, &ca).map_err(|source| ConfigError::Certificate {
            file: f(),
            id: node.0,
            source,
        })?;

    let metrics_addr = match &me.metrics_addr {
        Some(a) => Some(a.trim().parse().map_err(|reason| ConfigError::BadAddress {
            file: f(),
            id: node.0,
            field: "metrics_addr",
            addr: a.clone(),
            reason,
        })?),
        None => None,
    };
    let listen = addrs[&node.0];
    let peers = addrs
        .iter()
        .filter(|&(&id, _)| id != node.0)
        .map(|(&id, &addr)| (NodeId(id), addr))
        .collect();

    Ok(NodeConfig {
        cluster_id: raw.cluster_id,
        node,
        listen,
        peers,
        identity,
        data_dir: me.data_dir.as_deref().map(|p| resolve(base_dir, p)),
        op_timeout,
        connect_timeout,
        unmapped_capacity,
        max_frame_len,
        max_region_len,
        send_buffer_bytes,
        peer_timeout,
        tx_max_attempts: DEFAULT_TX_MAX_ATTEMPTS,
        metrics_addr,
        tx_fault: None,
    })
}

/// Planted faults for the transaction layer's own tests. Never set one outside a test.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxFault {
    /// A planted bug for the serializability checker's test: reads release their lock as
    /// soon as the value has been read (not two-phase).
    ReleaseReadsEarly,
    /// A slow writer, not a bug: a writer that homes none of what it wrote stalls this long
    /// once the other homes were sent their prepares, before it hands the decision to its
    /// deciding home, so that a test can cut the writer off while homes are prepared.
    StallMidCommit(std::time::Duration),
    /// A slow link, not a bug: a home deciding a transaction tells this participant of a
    /// commit this much later than everyone else, so that a test can check that the
    /// participant serves the regions it prepared to nobody meanwhile.
    DelayDecisionTo(NodeId, std::time::Duration),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ClusterCa;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh, empty directory under the system temp dir.
    fn temp_dir(tag: &str) -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "crl-config-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Writes a CA and certificates for `ids` into `dir`.
    fn write_certs(dir: &Path, ids: &[u32]) {
        std::fs::create_dir_all(dir).unwrap();
        let ca = ClusterCa::generate("test-cluster").unwrap();
        ca.write_pem_files(dir).unwrap();
        for &id in ids {
            ca.issue(NodeId(id)).unwrap().write_pem_files(dir).unwrap();
        }
    }

    const FULL: &str = r#"
cluster_id = 7
op_timeout_ms = 1500
connect_timeout_ms = 250
unmapped_capacity = 10
send_buffer_bytes = 8192
peer_timeout_ms = 9000
ca = "certs/ca.pem"

[[node]]
id = 0
addr = "127.0.0.1:7000"
cert = "certs/node-0.pem"
key = "certs/node-0-key.pem"
data_dir = "data/n0"

[[node]]
id = 1
addr = "127.0.0.1:7001"

[[node]]
id = 2
addr = "[::1]:7002"
"#;

    fn err(text: &str, node: u32) -> String {
        NodeConfig::from_toml(text, Path::new("/nonexistent"), NodeId(node))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn full_file_parses() {
        let dir = temp_dir("full");
        write_certs(&dir.join("certs"), &[0, 1, 2]);
        let path = dir.join("cluster.toml");
        std::fs::write(&path, FULL).unwrap();

        let c = NodeConfig::from_file(&path, NodeId(0)).unwrap();
        assert_eq!(c.cluster_id, 7);
        assert_eq!(c.node, NodeId(0));
        assert_eq!(c.identity.node(), NodeId(0));
        assert_eq!(c.listen, sa("127.0.0.1:7000"));
        assert_eq!(
            c.peers.iter().map(|(&n, &a)| (n, a)).collect::<Vec<_>>(),
            vec![
                (NodeId(1), sa("127.0.0.1:7001")),
                (NodeId(2), sa("[::1]:7002")),
            ]
        );
        assert_eq!(c.data_dir, Some(dir.join("data/n0")));
        assert_eq!(c.op_timeout, Duration::from_millis(1500));
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.unmapped_capacity, 10);
        assert_eq!(c.send_buffer_bytes, 8192);
        assert_eq!(c.peer_timeout, Some(Duration::from_millis(9000)));
        assert_eq!(c.max_frame_len, crl_core::wire::MAX_FRAME_LEN);

        // Node 2 takes the default certificate paths next to the CA, and default settings
        // where the file gives none.
        let c = NodeConfig::from_file(&path, NodeId(2)).unwrap();
        assert_eq!(c.node, NodeId(2));
        assert_eq!(c.identity.node(), NodeId(2));
        assert_eq!(c.listen, sa("[::1]:7002"));
        assert_eq!(
            c.peers.keys().copied().collect::<Vec<_>>(),
            [NodeId(0), NodeId(1)]
        );
        assert_eq!(c.data_dir, None);
        assert!(format!("{c:?}").contains("cluster_id: 7"));

        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn defaults_apply() {
        let dir = temp_dir("defaults");
        write_certs(&dir, &[3]);
        let text = "cluster_id = 1\nca = \"ca.pem\"\n[[node]]\nid = 3\naddr = \"127.0.0.1:0\"\n";
        let c = NodeConfig::from_toml(text, &dir, NodeId(3)).unwrap();
        assert_eq!(c.op_timeout, DEFAULT_OP_TIMEOUT);
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.unmapped_capacity, DEFAULT_UNMAPPED_CAPACITY);
        assert_eq!(c.send_buffer_bytes, DEFAULT_SEND_BUFFER_BYTES);
        assert_eq!(c.peer_timeout, Some(DEFAULT_PEER_TIMEOUT));
        assert!(c.peers.is_empty());

        let built = NodeConfig::new(1, c.identity.clone(), c.listen);
        assert_eq!(built.node, NodeId(3));
        assert_eq!(built.op_timeout, Duration::from_secs(5));
        assert_eq!(built.connect_timeout, Duration::from_secs(2));
        assert_eq!(built.unmapped_capacity, 4096);
        assert_eq!(built.send_buffer_bytes, DEFAULT_SEND_BUFFER_BYTES);
        assert!(built.peers.is_empty() && built.data_dir.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn relative_paths_resolve_against_the_files_directory() {
        let dir = temp_dir("relative");
        write_certs(&dir.join("pki/sub"), &[5]);
        let conf_dir = dir.join("etc");
        std::fs::create_dir_all(&conf_dir).unwrap();
        let path = conf_dir.join("cluster.toml");
        std::fs::write(
            &path,
            "cluster_id = 2\nca = \"../pki/sub/ca.pem\"\n\
             [[node]]\nid = 5\naddr = \"127.0.0.1:9005\"\ndata_dir = \"state\"\n",
        )
        .unwrap();
        let c = NodeConfig::from_file(&path, NodeId(5)).unwrap();
        assert_eq!(c.data_dir, Some(conf_dir.join("state")));

        // The same text read from elsewhere does not find the certificates, and says which.
        let text = std::fs::read_to_string(&path).unwrap();
        let e = NodeConfig::from_toml(&text, &dir, NodeId(5)).unwrap_err();
        assert!(
            matches!(e, ConfigError::MissingCert { field: "ca", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("pki/sub/ca.pem"), "{e}");

        // An absolute data_dir stays as written.
        let abs = dir.join("abs-data");
        let text = text.replace("\"state\"", &format!("{:?}", abs.display().to_string()));
        let c = NodeConfig::from_toml(&text, &conf_dir, NodeId(5)).unwrap();
        assert_eq!(c.data_dir, Some(abs));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_node_cert_is_named() {
        let dir = temp_dir("missing");
        write_certs(&dir, &[0]);
        let text = "cluster_id = 1\nca = \"ca.pem\"\n[[node]]\nid = 1\naddr = \"127.0.0.1:1\"\n";
        let e = NodeConfig::from_toml(text, &dir, NodeId(1)).unwrap_err();
        assert!(
            matches!(e, ConfigError::MissingCert { field: "cert", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("node-1.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrong_certificate_is_a_certificate_error() {
        let dir = temp_dir("wrong-cert");
        write_certs(&dir, &[0, 1]);
        let text = "cluster_id = 1\nca = \"ca.pem\"\n[[node]]\nid = 0\naddr = \"127.0.0.1:1\"\n\
                    cert = \"node-1.pem\"\nkey = \"node-1-key.pem\"\n";
        let e = NodeConfig::from_toml(text, &dir, NodeId(0)).unwrap_err();
        assert!(matches!(e, ConfigError::Certificate { id: 0, .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("<config>: certificate error for node 0: "),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_node_id() {
        let e = err(FULL, 9);
        assert!(e.contains("node id 9 is not in the cluster file"), "{e}");
        assert!(e.contains("0, 1, 2"), "{e}");
        assert!(e.starts_with("<config>: "), "{e}");
    }

    #[test]
    fn duplicate_node_id() {
        let text = FULL.replace("id = 2", "id = 1");
        let e = err(&text, 0);
        assert!(
            e.contains("node id 1 appears in more than one [[node]] entry"),
            "{e}"
        );
    }

    #[test]
    fn node_id_above_the_limit() {
        let text = FULL.replace("id = 2", "id = 4096");
        let e = err(&text, 0);
        assert!(
            e.contains("node id 4096 is too large (node ids are 0 to 4095)"),
            "{e}"
        );
        // 4095 is allowed (this file then fails later, on its missing certificates).
        let e = err(&FULL.replace("id = 2", "id = 4095"), 0);
        assert!(!e.contains("too large"), "{e}");
    }

    #[test]
    fn duplicate_address() {
        let text = FULL.replace("127.0.0.1:7001", "127.0.0.1:7000");
        let e = err(&text, 0);
        assert!(
            e.contains("nodes 0 and 1 both use address 127.0.0.1:7000"),
            "{e}"
        );
    }

    #[test]
    fn unknown_field() {
        let text = FULL.replace("id = 1\n", "id = 1\nport = 3\n");
        let e = err(&text, 0);
        assert!(e.contains("unknown field `port`"), "{e}");
        let line = FULL[..FULL.find("id = 1\n").unwrap()].lines().count() + 2;
        assert!(e.starts_with(&format!("<config>:{line}: ")), "{e}");

        let e = err(&format!("colour = 1\n{FULL}"), 0);
        assert!(e.starts_with("<config>:1: unknown field `colour`"), "{e}");
    }

    #[test]
    fn toml_syntax_error_has_line() {
        let e = err("cluster_id = 7\nca = \"x\"\n[[node]\n", 0);
        assert!(e.starts_with("<config>:3: "), "{e}");
        let e = err("ca = \"x\"\n", 0);
        assert!(e.contains("missing field `cluster_id`"), "{e}");
    }

    #[test]
    fn peer_timeout_never_and_bad_words() {
        let dir = temp_dir("never");
        write_certs(&dir.join("certs"), &[0, 1, 2]);
        let text = FULL.replace("peer_timeout_ms = 9000", "peer_timeout_ms = \"never\"");
        let c = NodeConfig::from_toml(&text, &dir, NodeId(0)).unwrap();
        assert_eq!(c.peer_timeout, None);
        let e = err(
            &FULL.replace("peer_timeout_ms = 9000", "peer_timeout_ms = \"soon\""),
            0,
        );
        assert!(e.contains("\"never\", not \"soon\""), "{e}");
        let e = err(
            &FULL.replace("peer_timeout_ms = 9000", "peer_timeout_ms = 0"),
            0,
        );
        assert!(
            e.contains("`peer_timeout_ms` must be greater than zero"),
            "{e}"
        );
    }

    #[test]
    fn bad_address() {
        let text = FULL.replace("127.0.0.1:7001", "localhost");
        let e = err(&text, 0);
        assert!(e.contains("node 1: bad address \"localhost\""), "{e}");
        assert!(e.contains("`addr`") && e.contains("ip:port"), "{e}");
    }

    #[test]
    fn zero_values() {
        let e = err(
            &FULL.replace("op_timeout_ms = 1500", "op_timeout_ms = 0"),
            0,
        );
        assert_eq!(e, "<config>: `op_timeout_ms` must be greater than zero");
        let e = err(
            &FULL.replace("connect_timeout_ms = 250", "connect_timeout_ms = 0"),
            0,
        );
        assert_eq!(
            e,
            "<config>: `connect_timeout_ms` must be greater than zero"
        );
        let e = err(
            &FULL.replace("send_buffer_bytes = 8192", "send_buffer_bytes = 0"),
            0,
        );
        assert_eq!(e, "<config>: `send_buffer_bytes` must be greater than zero");
        let e = err(&format!("max_frame_len = 0\n{FULL}"), 0);
        assert_eq!(e, "<config>: `max_frame_len` must be greater than zero");
        let e = err(
            &format!(
                "max_frame_len = {}\n{FULL}",
                crl_core::wire::MAX_FRAME_LEN + 1
            ),
            0,
        );
        assert!(e.contains("exceeds the wire limit"), "{e}");
    }

    #[test]
    fn unreadable_file_is_named() {
        let e =
            NodeConfig::from_file(Path::new("/nonexistent/cluster.toml"), NodeId(0)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/cluster.toml: "),
            "{e}"
        );
    }
}
