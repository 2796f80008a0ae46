//! crl-net: the async driver that runs the crl-core protocol engine over QUIC.
//!
//! Not built yet: the QUIC transport, mutual TLS, the `Node`/`Cluster` API and the
//! `crl-node` binary arrive with the cluster issue. Until then the engine runs only inside
//! the deterministic simulator (`crl_core::sim`).
