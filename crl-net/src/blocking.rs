//! A blocking facade for programs without an async runtime.
//!
//! [`Cluster::local`] starts a multi-threaded tokio runtime and the nodes on it. Every call
//! blocks the calling thread until the operation completes (bounded by the node's operation
//! timeout, as in the async API). Call these from plain threads, not from inside a tokio
//! runtime.
//!
//! ```
//! # #[derive(crl_core::Region, Debug, Clone)]
//! # #[region(crate = ::crl_core)]
//! # struct Counter { n: u64 }
//! use crl_net::blocking::Cluster;
//! let cluster = Cluster::local(2)?;
//! let counter = cluster.node(0).create(Counter { n: 0 })?;
//! let remote = cluster.node(1).map::<Counter>(counter.id())?;
//! remote.start_write()?.n += 1;
//! assert_eq!(counter.start_read()?.n, 1);
//! # Ok::<(), crl_net::Error>(())
//! ```

use std::sync::Arc;

use crl_core::engine::{ReadGuard, WriteGuard};
use crl_core::{NodeId, Region, RegionId};
use tokio::runtime::Runtime;

use crate::cluster;
use crate::error::Error;
use crate::node::{self, NodeStats};
use crate::txn;

/// A local cluster driven from plain threads.
pub struct Cluster {
    rt: Arc<Runtime>,
    inner: cluster::Cluster,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Starts `n` nodes on 127.0.0.1 (see [`cluster::Cluster::local`]).
    pub fn local(n: usize) -> Result<Cluster, Error> {
        let rt = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .thread_name("crl")
                .build()
                .map_err(|e| Error::Transport(crate::transport::TransportError::Endpoint(e)))?,
        );
        let inner = rt.block_on(cluster::Cluster::local(n))?;
        let nodes = inner
            .nodes()
            .iter()
            .map(|n| Node {
                rt: rt.clone(),
                inner: n.clone(),
            })
            .collect();
        Ok(Cluster { rt, inner, nodes })
    }

    /// Node `i`.
    ///
    /// # Panics
    /// If there is no node `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Shuts every node down.
    pub fn shutdown(&self) {
        self.rt.block_on(self.inner.shutdown());
    }
}

/// A node driven from plain threads.
#[derive(Clone)]
pub struct Node {
    rt: Arc<Runtime>,
    inner: node::Node,
}

impl Node {
    /// See [`node::Node::create`].
    pub fn create<T: Region>(&self, value: T) -> Result<Handle<T>, Error> {
        let inner = self.rt.block_on(self.inner.create(value))?;
        Ok(Handle {
            rt: self.rt.clone(),
            inner,
        })
    }

    /// See [`node::Node::create_at`].
    pub fn create_at<T: Region>(&self, home: NodeId, value: T) -> Result<Handle<T>, Error> {
        let inner = self.rt.block_on(self.inner.create_at(home, value))?;
        Ok(Handle {
            rt: self.rt.clone(),
            inner,
        })
    }

    /// See [`node::Node::map`].
    pub fn map<T: Region>(&self, id: RegionId) -> Result<Handle<T>, Error> {
        let inner = self.rt.block_on(self.inner.map(id))?;
        Ok(Handle {
            rt: self.rt.clone(),
            inner,
        })
    }

    /// See [`node::Node::delete`].
    pub fn delete(&self, id: RegionId) -> Result<(), Error> {
        self.rt.block_on(self.inner.delete(id))
    }

    /// See [`node::Node::bind`].
    pub fn bind(&self, name: &str, id: RegionId) -> Result<(), Error> {
        self.rt.block_on(self.inner.bind(name, id))
    }

    /// See [`node::Node::lookup`].
    pub fn lookup(&self, name: &str) -> Result<RegionId, Error> {
        self.rt.block_on(self.inner.lookup(name))
    }

    /// See [`node::Node::stats`].
    pub fn stats(&self) -> NodeStats {
        self.inner.stats()
    }

    /// Runs `f` as a transaction (see [`node::Node::transaction`]); `f` may run several
    /// times. Inside it, [`Tx::read`] and [`Tx::write`] block the calling thread.
    pub fn transaction<F, T, E>(&self, mut f: F) -> Result<T, E>
    where
        F: FnMut(&Tx) -> Result<T, E>,
        E: From<Error>,
    {
        self.inner.check_running()?;
        let priority = self.inner.next_tx_priority();
        let max = self.inner.tx_max_attempts().max(1);
        for attempt in 1..=max {
            let tx = Tx {
                rt: self.rt.clone(),
                inner: self.inner.begin_transaction(priority),
            };
            let result = f(&tx);
            match self.rt.block_on(txn::settle(&tx.inner, result, attempt)) {
                txn::Settled::Done(r) => return r,
                txn::Settled::Retry => std::thread::sleep(txn::backoff(priority, attempt)),
            }
        }
        Err(Error::Conflict { attempts: max }.into())
    }

    /// The async node behind this one.
    pub fn as_async(&self) -> &node::Node {
        &self.inner
    }
}

/// A transaction driven from a plain thread: the argument of [`Node::transaction`].
pub struct Tx {
    rt: Arc<Runtime>,
    inner: txn::Tx,
}

impl Tx {
    /// See [`txn::Tx::read`]; blocks until the read lock is held.
    pub fn read<'t, T: Region>(&'t self, h: &Handle<T>) -> Result<txn::TxRead<'t, T>, Error> {
        self.rt.block_on(self.inner.read(&h.inner))
    }

    /// See [`txn::Tx::write`]; blocks until the write lock is held.
    pub fn write<'t, T: Region>(&'t self, h: &Handle<T>) -> Result<txn::TxWrite<'t, T>, Error> {
        self.rt.block_on(self.inner.write(&h.inner))
    }

    /// See [`txn::Tx::create`].
    pub fn create<T: Region>(&self, value: T) -> Result<Handle<T>, Error> {
        let inner = self.rt.block_on(self.inner.create(value))?;
        Ok(Handle {
            rt: self.rt.clone(),
            inner,
        })
    }

    /// See [`txn::Tx::create_at`].
    pub fn create_at<T: Region>(&self, home: NodeId, value: T) -> Result<Handle<T>, Error> {
        let inner = self.rt.block_on(self.inner.create_at(home, value))?;
        Ok(Handle {
            rt: self.rt.clone(),
            inner,
        })
    }

    /// See [`txn::Tx::delete`].
    pub fn delete<T: Region>(&self, h: &Handle<T>) -> Result<(), Error> {
        self.rt.block_on(self.inner.delete(&h.inner))
    }
}

/// A mapped region driven from plain threads.
pub struct Handle<T: Region> {
    rt: Arc<Runtime>,
    inner: node::Handle<T>,
}

impl<T: Region> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Handle {
            rt: self.rt.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<T: Region> Handle<T> {
    /// The region's id.
    pub fn id(&self) -> RegionId {
        self.inner.id()
    }

    /// See [`node::Handle::start_read`]. A hit does not enter the runtime.
    pub fn start_read(&self) -> Result<ReadGuard<'_, T>, Error> {
        if let Some(g) = self.inner.try_read() {
            return Ok(g);
        }
        self.rt.block_on(self.inner.start_read())
    }

    /// See [`node::Handle::start_write`].
    pub fn start_write(&self) -> Result<WriteGuard<'_, T>, Error> {
        self.rt.block_on(self.inner.start_write())
    }

    /// See [`node::Handle::flush`].
    pub fn flush(&self) -> Result<(), Error> {
        self.rt.block_on(self.inner.flush())
    }
}
