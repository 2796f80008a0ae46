//! Placement: a program creates a region homed at another node ([`Node::create_at`]), so
//! `crl-node` servers (with data dirs) can be the durable homes of a cluster whose programs
//! only cache.
//!
//! The requester sends `CreateAt` (its request number, the type's fingerprint and name, the
//! archived value); the home creates the region from the bytes
//! ([`Engine::create_placed`](crl_core::engine::Engine::create_placed): served from the bytes,
//! decoded by the first local map), logs it if it has a data dir, and only then answers
//! `Created`; or it refuses with `CreateRefused` and creates nothing. The requester then maps
//! the new region as usual.
//!
//! What can go wrong, exactly: the session delivers each message once and in order, so a
//! create is never applied twice. If the requester stops waiting (its timeout, a dropped
//! future, the home's session ending) after the home created the region, the region exists at
//! its home and nobody learned its id: it costs the home memory (and log space) until the
//! home's regions are cleaned up by hand. The requester's error says so.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crl_core::region::{NodeId, Region, RegionId};
use crl_core::wire::{MAX_TYPE_NAME_LEN, Message, Refusal};
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{Handle, Node};
use crate::error::Error;
use crate::transport::Room;

/// The most `create_at` calls of one node that may wait for their homes at once; more wait
/// for a slot (under the operation timeout).
pub const MAX_PENDING_PLACEMENTS: usize = 4096;

type Answer = Result<RegionId, Refusal>;

/// The requester's side: creates sent and not yet answered.
#[derive(Default)]
pub(crate) struct Placements {
    next_request: AtomicU64,
    waiting: Mutex<HashMap<u64, (NodeId, oneshot::Sender<Answer>)>>,
    slots: tokio::sync::Notify,
}

impl Placements {
    /// Fails every create waiting on `home`: its session ended (restart or fence), so its
    /// answer can never arrive.
    pub(crate) fn home_reset(&self, home: NodeId) {
        let mut waiting = self.waiting.lock();
        let before = waiting.len();
        waiting.retain(|_, (h, _)| *h != home);
        if waiting.len() != before {
            self.slots.notify_waiters();
        }
    }

    /// How many creates wait for an answer.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.lock().len()
    }

    fn answer(&self, from: NodeId, request: u64, answer: Answer) {
        let mut waiting = self.waiting.lock();
        match waiting.get(&request) {
            Some((home, _)) if *home == from => {
                let (_, tx) = waiting.remove(&request).expect("present");
                drop(waiting);
                self.slots.notify_waiters();
                let _ = tx.send(answer);
            }
            Some((home, _)) => {
                warn!(peer = %from, %home, request, "an answer to a create asked of another node: ignored");
            }
            None => match answer {
                Ok(region) => info!(
                    %region,
                    "created for a create_at that stopped waiting: the region stays at its home, unreferenced"
                ),
                Err(reason) => debug!(request, ?reason, "refusal of a create nobody waits for"),
            },
        }
    }
}

/// Removes a request's entry when its `create_at` future ends or is dropped.
struct Pending<'a> {
    placements: &'a Placements,
    request: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self
            .placements
            .waiting
            .lock()
            .remove(&self.request)
            .is_some()
        {
            self.placements.slots.notify_waiters();
        }
    }
}

/// A refusal in words (for [`Error::CreateRefused`]).
fn describe(reason: &Refusal) -> String {
    match reason {
        Refusal::TooLarge { len, max } => {
            format!("the value is {len} bytes encoded, over the limit of {max} for one message")
        }
        Refusal::Full { limit } => {
            format!("the home already homes its limit of {limit} regions")
        }
        Refusal::BadTypeName => format!("the type name is longer than {MAX_TYPE_NAME_LEN} bytes"),
        other => format!("{other:?}"),
    }
}

impl Node {
    /// Creates a region holding `value` homed at node `home` (which may be this node: then
    /// it is [`create`](Self::create)), and maps it here. With a data dir at the home, the
    /// region is logged there before this returns.
    ///
    /// Errors: [`Error::UnknownNode`] if `home` is not a member;
    /// [`Error::CreateRefused`] if the home refused (nothing was created);
    /// [`Error::CreateUnanswered`] if no answer came within the operation timeout or the
    /// home's session ended first (the region may then exist at its home with nobody
    /// knowing its id). If this future is dropped before it returns, the same holds.
    pub async fn create_at<T: Region>(&self, home: NodeId, value: T) -> Result<Handle<T>, Error> {
        if home == self.id() {
            return self.create(value).await;
        }
        self.check_running()?;
        if !self.knows_peer(home) {
            return Err(Error::UnknownNode(home));
        }
        if T::TYPE_NAME.len() > MAX_TYPE_NAME_LEN {
            return Err(Error::CreateRefused {
                home,
                reason: describe(&Refusal::BadTypeName),
            });
        }
        let bytes = value.encode_region()?;
        let max = self.max_image_len();
        if bytes.len() > max {
            return Err(Error::CreateRefused {
                home,
                reason: describe(&Refusal::TooLarge {
                    len: bytes.len() as u64,
                    max: max as u64,
                }),
            });
        }
        let after = self.op_timeout();
        let deadline = tokio::time::Instant::now() + after;
        let unanswered = |why: &'static str| Error::CreateUnanswered { home, after, why };
        let placements = self.placements();
        let (tx, rx) = oneshot::channel();
        let request = loop {
            let slot = placements.slots.notified();
            {
                let mut waiting = placements.waiting.lock();
                if waiting.len() < MAX_PENDING_PLACEMENTS {
                    let request = placements.next_request.fetch_add(1, Ordering::Relaxed);
                    waiting.insert(request, (home, tx));
                    break request;
                }
            }
            if tokio::time::timeout_at(deadline, slot).await.is_err() {
                return Err(unanswered("too many creates were waiting for their homes"));
            }
        };
        let _pending = Pending {
            placements,
            request,
        };
        if tokio::time::timeout_at(deadline, self.wait_for_room(home, Room::Contents))
            .await
            .is_err()
        {
            return Err(unanswered("the home acknowledged nothing (unreachable)"));
        }
        self.send(
            home,
            Message::CreateAt {
                request,
                fingerprint: T::FINGERPRINT,
                type_name: T::TYPE_NAME.to_owned(),
                bytes,
            },
        );
        let region = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(region))) => region,
            Ok(Ok(Err(reason))) => {
                return Err(Error::CreateRefused {
                    home,
                    reason: describe(&reason),
                });
            }
            Ok(Err(_)) => return Err(unanswered("the session with the home ended")),
            Err(_) => return Err(unanswered("no answer in time")),
        };
        // The home answered: the region exists. Map it here (a round trip that also checks
        // the type, under its own operation timeout).
        self.map::<T>(region).await
    }
}

/// Handles a placement message from `from` (the node's driver calls it in order with the
/// engine's messages).
pub(crate) fn handle_placement(node: &Node, from: NodeId, msg: Message) {
    match msg {
        Message::CreateAt {
            request,
            fingerprint,
            type_name,
            bytes,
        } => {
            let durability = node.durability().cloned();
            let logged = durability
                .as_ref()
                .map(|_| (type_name.clone(), bytes.clone()));
            let created =
                node.with_engine(|engine| engine.create_placed(fingerprint, type_name, bytes));
            let region = match created {
                Ok(region) => region,
                Err(reason) => {
                    warn!(peer = %from, ?reason, "create refused");
                    node.send(from, Message::CreateRefused { request, reason });
                    return;
                }
            };
            match (durability, logged) {
                (Some(d), Some((type_name, bytes))) => {
                    let node = node.clone();
                    tokio::spawn(async move {
                        match d.log_create(region, fingerprint, &type_name, bytes).await {
                            Ok(()) => node.send(from, Message::Created { request, region }),
                            // The store has failed: this node commits nothing more, and the
                            // requester learns nothing (it times out, told the region may
                            // exist).
                            Err(e) => warn!(%region, peer = %from, "create not logged: {e}"),
                        }
                    });
                }
                _ => node.send(from, Message::Created { request, region }),
            }
        }
        Message::Created { request, region } => {
            if region.home != from {
                warn!(peer = %from, %region, "a create answered with a region homed elsewhere: ignored");
                return;
            }
            node.placements().answer(from, request, Ok(region));
        }
        Message::CreateRefused { request, reason } => {
            node.placements().answer(from, request, Err(reason));
        }
        other => warn!(peer = %from, kind = other.kind_name(), "not a placement message"),
    }
}
