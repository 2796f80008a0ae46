//! crl: a transactional, object-granularity distributed shared memory for Rust.
//!
//! Programs on several machines share typed **regions** (plain structs deriving [`Region`]).
//! A program maps a region by its id and brackets each access with `start_read` /
//! `start_write` … `end`; between those calls the data is local memory. A directory-based home
//! protocol keeps every cached copy coherent.
//!
//! This facade re-exports the crates: [`core`] (regions, wire format, protocol engine) and
//! [`net`] (the QUIC transport with mutual TLS and the node driver). The everyday API is
//! re-exported here: [`Cluster`], [`Node`], [`Handle`], [`Error`], transactions ([`Node::transaction`],
//! [`Tx`]), and [`blocking`] for programs without an async runtime.
//!
//! ```
//! use crl::{Cluster, Region};
//!
//! #[derive(Region, Debug, Clone)]
//! struct Flight {
//!     seats: u32,
//!     booked: u32,
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), crl::Error> {
//! let cluster = Cluster::local(2).await?; // two nodes, QUIC with mutual TLS on 127.0.0.1
//! let (a, b) = (cluster.node(0), cluster.node(1));
//! let flight = a.create(Flight { seats: 180, booked: 0 }).await?; // a is its home
//! a.bind("flight/UA100", flight.id()).await?;
//!
//! let remote = b.map::<Flight>(b.lookup("flight/UA100").await?).await?;
//! {
//!     let mut w = remote.start_write().await?; // a miss: b gets the only copy
//!     w.booked += 1;
//! } // the write ends here
//! assert_eq!(flight.start_read().await?.booked, 1); // the home recalls b's copy
//! cluster.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub use crl_core as core;
#[doc(hidden)]
pub use crl_core::__private;
pub use crl_core::{CodecError, NodeId, Region, RegionId};
pub use crl_core::{RegionField, RegionRef};
pub use crl_net as net;
pub use crl_net::blocking;
pub use crl_net::{Cluster, Error, Handle, Node, NodeConfig, NodeStats};
pub use crl_net::{Tx, TxRead, TxStats, TxWrite};

/// The README's Rust code blocks, compiled (and, unless marked `no_run`, run) as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
