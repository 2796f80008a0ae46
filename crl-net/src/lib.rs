//! crl-net: runs the crl-core protocol engine over QUIC, with mutual TLS.
//!
//! - `tls`: the cluster CA, per-node certificates and the rustls/quinn configurations.
//! - `config`: a node's configuration, from a TOML file or built in code.
//! - `fault`: a UDP socket for quinn that drops datagrams on command (the test nemesis).
//! - `durable`: a home's durable store: the write-ahead log's files, group commit (a writer
//!   thread, one fsync per batch), checkpoints, recovery and the operator's verify/repair.
//! - `frame`: length-bounded frames on QUIC streams.
//! - `liveness`: leases and failure detection at run time (the clock, the lease the hit path
//!   checks, pings and fences).
//! - `transport`: connections between nodes, the authenticated hello, one stream per
//!   direction per peer pair (the per-link FIFO the engine assumes).
//! - `metrics`: a node's counters in the Prometheus text format, served over HTTP.
//! - `node`: the async driver, `Node`, `Handle<T>`, and placement (`Node::create_at`:
//!   regions created at another home).
//! - `txn`: transactions (strict two-phase locking on coherence, wound-wait, commit, log).
//! - `blocking`: the same API for programs without an async runtime.

pub mod blocking;
pub mod cluster;
pub mod config;
pub mod durable;
pub mod error;
pub mod fault;
pub mod frame;
mod hits;
pub mod liveness;
pub mod metrics;
pub mod node;
pub mod tls;
pub mod transport;
pub mod txn;

pub use cluster::Cluster;
pub use config::NodeConfig;
pub use error::Error;
pub use node::{Handle, Node, NodeStats};
pub use txn::{Tx, TxRead, TxStats, TxWrite};
