//! crl: a transactional, object-granularity distributed shared memory for Rust.
//!
//! Programs on several machines share typed **regions** (plain structs deriving [`Region`]).
//! A program maps a region by its id and brackets each access with `start_read` /
//! `start_write` … `end`; between those calls the data is local memory. A directory-based home
//! protocol keeps every cached copy coherent.
//!
//! This facade re-exports the crates: [`core`] (regions, wire format, protocol engine) and
//! [`net`] (the QUIC transport with mutual TLS and the node driver). The everyday API is
//! re-exported here: [`Cluster`], [`Node`], [`Handle`], [`Error`], and [`blocking`] for programs
//! without an async runtime.

pub use crl_core as core;
#[doc(hidden)]
pub use crl_core::__private;
pub use crl_core::{CodecError, NodeId, Region, RegionId};
pub use crl_core::{RegionField, RegionRef};
pub use crl_net as net;
pub use crl_net::blocking;
pub use crl_net::{Cluster, Error, Handle, Node, NodeConfig, NodeStats};
