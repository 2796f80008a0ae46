//! The session layer on a real in-process cluster: a region larger than a frame travels in
//! fragments, one over the limit gives a clear error and the link keeps serving; a restarted
//! node's old session is never resumed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crl::{Cluster, Error, NodeId, Region};

#[derive(Region, Clone, Debug, PartialEq)]
struct Blob {
    bytes: Vec<u8>,
}

#[derive(Region, Clone, Debug, PartialEq)]
struct Counter {
    value: u64,
}

/// Issue 8: a 24 MiB region read from another node used to time out and wedge the link. Now
/// regions travel in fragments up to `max_region_len` (issue 10); over it, a create is refused
/// at once, a region grown past it at its home is refused to other nodes with a clear error,
/// nothing oversized reaches the link, and small misses keep working both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_over_the_limit_is_refused_and_the_link_keeps_serving() {
    let c = Cluster::local_with(2, |c| {
        c.op_timeout = Duration::from_secs(5);
        c.max_region_len = 1 << 20;
    })
    .await
    .unwrap();
    let (a, b) = (c.node(0), c.node(1));
    let err = a
        .create(Blob {
            bytes: vec![7; 2 << 20],
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, Error::RegionTooLarge { len, max } if len > 2 << 20 && max == 1 << 20),
        "{err}"
    );
    assert!(err.to_string().contains("max_region_len"), "{err}");
    // A region that grows past the limit at its home.
    let big = a.create(Blob { bytes: vec![7; 16] }).await.unwrap();
    big.start_write().await.unwrap().bytes = vec![7; 2 << 20];
    let small = a.create(Counter { value: 1 }).await.unwrap();
    let far = b.map::<Blob>(big.id()).await.unwrap();
    let started = Instant::now();
    let err = far.start_read().await.map(|_| ()).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { region, len, .. } if region == big.id() && len > 2 << 20),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the refusal must not wait for the operation timeout"
    );
    assert!(err.to_string().contains("over the limit"), "{err}");
    // A write is refused the same way.
    let err = far.start_write().await.map(|_| ()).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    // The link between the two nodes still serves, both ways.
    let near = b.map::<Counter>(small.id()).await.unwrap();
    for i in 0..20 {
        near.start_write().await.unwrap().value += 1;
        assert_eq!(small.start_read().await.unwrap().value, 2 + i);
    }
    let theirs = b.create(Counter { value: 40 }).await.unwrap();
    let mine = a.map::<Counter>(theirs.id()).await.unwrap();
    assert_eq!(mine.start_read().await.unwrap().value, 40);
    // The home's own accesses to the big region are unaffected.
    assert_eq!(big.start_read().await.unwrap().bytes.len(), 2 << 20);
    for peer in a.stats().peers {
        assert_eq!(peer.messages_refused, 0, "nothing oversized was queued");
    }
    c.shutdown().await;
}

/// Issue 10, with the session layer of issue 8: the connection carrying a big region's
/// fragments breaks in the middle of the transfer. The sender reconnects and re-sends the
/// pieces not acknowledged; the receiver keeps the pieces it had (same session) and drops the
/// duplicates; the copy is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_transfer_survives_a_broken_connection_in_its_middle() {
    const LEN: usize = 20 << 20;
    let c = Cluster::local_with(2, |c| c.op_timeout = Duration::from_secs(60))
        .await
        .unwrap();
    let (a, b) = (c.node(0), c.node(1));
    let data = Arc::new(pattern(LEN, 5));
    let big = a
        .create(Blob {
            bytes: data.to_vec(),
        })
        .await
        .unwrap();
    let far = b.map::<Blob>(big.id()).await.unwrap();
    let before = bytes_from_home(b);
    let read = {
        let (far, data) = (far.clone(), data.clone());
        tokio::spawn(async move { far.start_read().await.map(|g| g.bytes == *data) })
    };
    // Break it once a few MiB have arrived, well before the end.
    wait_for_bytes_from_home(b, before + (3 << 20)).await;
    let got = bytes_from_home(b) - before;
    assert!(
        got < LEN as u64,
        "the transfer ended before the break ({got} bytes)"
    );
    b.break_connections_from(NodeId(0));
    assert!(
        read.await.unwrap().unwrap(),
        "the copy differs from the home's"
    );
    let resent: u64 = a.stats().peers.iter().map(|p| p.messages_resent).sum();
    assert!(
        resent > 0,
        "nothing was re-sent: the break missed the transfer"
    );
    c.shutdown().await;
}

/// Issue 10 (head-of-line): a small miss on the same link completes while a big region is
/// still on its way: the recall and the small region's data pass the big image's remaining
/// pieces. Before, they waited for the whole transfer. Judged by order, not by time: the
/// small round trip must end before the big read does and before all of its bytes arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_miss_passes_a_big_transfer_on_the_same_link() {
    const LEN: usize = 48 << 20;
    let c = Cluster::local_with(2, |c| c.op_timeout = Duration::from_secs(60))
        .await
        .unwrap();
    let (a, b) = (c.node(0), c.node(1));
    let big = a
        .create(Blob {
            bytes: pattern(LEN, 9),
        })
        .await
        .unwrap();
    let small = a.create(Counter { value: 0 }).await.unwrap();
    let far_small = b.map::<Counter>(small.id()).await.unwrap();
    assert_eq!(far_small.start_read().await.unwrap().value, 0);
    let far = b.map::<Blob>(big.id()).await.unwrap();
    let before = bytes_from_home(b);
    let read = {
        let far = far.clone();
        tokio::spawn(async move { far.start_read().await.map(|g| g.bytes.len()) })
    };
    wait_for_bytes_from_home(b, before + (4 << 20)).await;
    // A write at the home recalls node 1's copy, and the read fetches it again: both cross
    // the link that carries the big image.
    small.start_write().await.unwrap().value = 1;
    assert_eq!(far_small.start_read().await.unwrap().value, 1);
    let got = bytes_from_home(b) - before;
    assert!(
        !read.is_finished() && got < LEN as u64,
        "the small round trip waited for the big transfer ({got} of {LEN} bytes had arrived)"
    );
    assert_eq!(read.await.unwrap().unwrap(), LEN);
    c.shutdown().await;
}

/// A region whose decodes and encodes wait, once begun, until the test opens their gate (at
/// most 30 s): work on a big image that lasts as long as the test wants. The first byte of
/// the bytes picks the decodes' gate and the third the encodes' (one per test; [`NO_GATE`]:
/// none).
#[derive(Clone, Debug, PartialEq)]
struct Gated(Vec<u8>);

/// A gate of [`Gated`] decodes or encodes.
struct Gate {
    /// (whether a decode or encode has begun, whether the gate is open)
    state: std::sync::Mutex<(bool, bool)>,
    moved: std::sync::Condvar,
}

/// How many gates there are.
const GATE_COUNT: usize = 7;

/// The gate index of work that does not wait.
const NO_GATE: u8 = 0xff;

static GATES: [Gate; GATE_COUNT] = [const {
    Gate {
        state: std::sync::Mutex::new((false, false)),
        moved: std::sync::Condvar::new(),
    }
}; GATE_COUNT];

impl Gate {
    /// Waits (on a blocking thread, at most 30 s) until work has begun at the gate.
    async fn wait_for_work(&'static self) {
        tokio::task::spawn_blocking(move || {
            let state = self.state.lock().unwrap();
            let (state, _) = self
                .moved
                .wait_timeout_while(state, Duration::from_secs(30), |s| !s.0)
                .unwrap();
            assert!(state.0, "the work never began");
        })
        .await
        .unwrap();
    }

    fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.moved.notify_all();
    }

    /// Waits at gate `index` (if it is one) until it opens.
    fn pass(index: u8) {
        let Some(gate) = GATES.get(usize::from(index)) else {
            return;
        };
        let mut state = gate.state.lock().unwrap();
        state.0 = true;
        gate.moved.notify_all();
        let _ = gate
            .moved
            .wait_timeout_while(state, Duration::from_secs(30), |s| !s.1)
            .unwrap();
    }
}

/// A [`Gated`] value of `len` bytes whose decodes wait at gate `decodes` and encodes at gate
/// `encodes`.
fn gated(decodes: u8, encodes: u8, len: usize) -> Gated {
    let mut bytes = pattern(len, 5);
    bytes[0] = decodes;
    bytes[2] = encodes;
    Gated(bytes)
}

impl Region for Gated {
    const TYPE_NAME: &'static str = "Gated";
    const FINGERPRINT: u64 = 0x6a7e_d000_0000_0001;
    fn encode_region(&self) -> Result<Vec<u8>, crl::CodecError> {
        Gate::pass(self.0[2]);
        Ok(self.0.clone())
    }
    fn decode_region(bytes: &[u8]) -> Result<Self, crl::CodecError> {
        Gate::pass(bytes[0]);
        Ok(Gated(bytes.to_vec()))
    }
}

/// Issue 10 (head-of-line, at the receiving end): while a node decodes a big image, it keeps
/// handling messages, from the image's sender (those that may pass the image) and from other
/// nodes. Before, the decode ran in the node's one message task: nothing reached the node
/// until it ended (about a millisecond per MiB). Here the decode lasts until the test opens
/// its gate, and two small round trips through the decoding node and a read of another big
/// region from the same node must end first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_decoding_a_big_image_keeps_handling_other_messages() {
    const LEN: usize = 1 << 20;
    let c = Cluster::local_with(3, |c| c.op_timeout = Duration::from_secs(60))
        .await
        .unwrap();
    let (a, b, third) = (c.node(0), c.node(1), c.node(2));
    let big = a.create(gated(0, NO_GATE, LEN)).await.unwrap();
    let same_link = a.create(Counter { value: 0 }).await.unwrap();
    let other_link = third.create(Counter { value: 0 }).await.unwrap();
    let far_same = b.map::<Counter>(same_link.id()).await.unwrap();
    let far_other = b.map::<Counter>(other_link.id()).await.unwrap();
    assert_eq!(far_same.start_read().await.unwrap().value, 0);
    assert_eq!(far_other.start_read().await.unwrap().value, 0);
    GATES[4].open();
    let second_big = a.create(gated(4, NO_GATE, LEN)).await.unwrap();
    let far_second = b.map::<Gated>(second_big.id()).await.unwrap();
    let far = b.map::<Gated>(big.id()).await.unwrap();
    let read = tokio::spawn(async move { far.start_read().await.map(|g| g.0.len()) });
    GATES[0].wait_for_work().await;
    // Each write at a home recalls node 1's copy, and the read fetches it again. Another big
    // region's image from the same node passes too (decoded at once: one decode per peer).
    let round_trips = async {
        same_link.start_write().await.unwrap().value = 1;
        assert_eq!(far_same.start_read().await.unwrap().value, 1);
        other_link.start_write().await.unwrap().value = 2;
        assert_eq!(far_other.start_read().await.unwrap().value, 2);
        assert_eq!(far_second.start_read().await.unwrap().0.len(), LEN);
    };
    let done = tokio::time::timeout(Duration::from_secs(10), round_trips).await;
    let decoding = !read.is_finished();
    GATES[0].open();
    assert!(
        done.is_ok(),
        "the small round trips waited for the decode of the big image"
    );
    assert!(decoding, "the big read ended before the gate opened");
    assert_eq!(read.await.unwrap().unwrap(), LEN);
    c.shutdown().await;
}

/// Issue 10: what may not pass a big image being decoded waits for it. A write at the home
/// recalls the copy the decoding node is receiving; the recall must be handled after the
/// image is installed, or the node would answer it without a copy, install the old image
/// afterwards and read it stale. Judged by order: the write cannot end while the decode
/// waits, and the read after it sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_behind_a_big_image_being_decoded_waits_for_it() {
    const LEN: usize = 1 << 20;
    let c = Cluster::local_with(2, |c| c.op_timeout = Duration::from_secs(60))
        .await
        .unwrap();
    let (a, b) = (c.node(0), c.node(1));
    let big = a.create(gated(1, NO_GATE, LEN)).await.unwrap();
    let far = b.map::<Gated>(big.id()).await.unwrap();
    let read = {
        let far = far.clone();
        tokio::spawn(async move { far.start_read().await.map(|g| g.0[1]) })
    };
    GATES[1].wait_for_work().await;
    let write = {
        let big = big.clone();
        tokio::spawn(async move {
            big.start_write().await?.0[1] = 0xee;
            Ok::<_, Error>(())
        })
    };
    // Not a proof that the write could not end (nothing here can wait for "never"), but the
    // recall's answer is a few messages away: a write handled out of order ends in well under
    // a second.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wrote_early = write.is_finished();
    GATES[1].open();
    assert!(
        !wrote_early,
        "the write ended while its recall's copy was being decoded"
    );
    assert_ne!(
        read.await.unwrap().unwrap(),
        0xee,
        "the read was granted before the write"
    );
    write.await.unwrap().unwrap();
    assert_eq!(
        far.start_read().await.unwrap().0[1],
        0xee,
        "a stale read after the write"
    );
    c.shutdown().await;
}

/// Issue 10: what waits behind a big image being decoded is handled in order after it, also
/// when one of the waiting messages has big work of its own. Node 1 decodes region `g1`
/// (gated) when a recall of it (which may not pass its image), the image of a second big
/// region and the answer to a small read arrive from the same peer, in that order: nothing
/// of them is handled until the gate opens, then everything is (the small read's answer
/// used to be dropped when the second image's decode started: the read timed out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_held_behind_a_big_image_are_handled_in_order_after_it() {
    const LEN: usize = 1 << 20;
    let c = Cluster::local_with(2, |c| c.op_timeout = Duration::from_secs(20))
        .await
        .unwrap();
    let (a, b) = (c.node(0), c.node(1));
    GATES[3].open();
    let g1 = a.create(gated(2, NO_GATE, LEN)).await.unwrap();
    let g2 = a.create(gated(3, NO_GATE, LEN)).await.unwrap();
    let small = a.create(Counter { value: 7 }).await.unwrap();
    let far1 = b.map::<Gated>(g1.id()).await.unwrap();
    let far2 = b.map::<Gated>(g2.id()).await.unwrap();
    let far_small = b.map::<Counter>(small.id()).await.unwrap();
    let read1 = tokio::spawn(async move { far1.start_read().await.map(|g| g.0[1]) });
    GATES[2].wait_for_work().await;
    let messages = || {
        b.stats()
            .peers
            .iter()
            .find(|p| p.node == NodeId(0))
            .map_or(0, |p| p.messages_received)
    };
    // One more message from node 0 has reached node 1 (a ping may count too: then the next
    // step comes sooner and only weakens the case).
    let one_more = |since: u64| async move {
        let started = Instant::now();
        while messages() <= since {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no message came"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let since = messages();
    let write = {
        let g1 = g1.clone();
        tokio::spawn(async move {
            g1.start_write().await?.0[1] = 0xee;
            Ok::<_, Error>(())
        })
    };
    one_more(since).await; // the recall of g1
    let since = messages();
    let read2 = tokio::spawn(async move { far2.start_read().await.map(|g| g.0.len()) });
    one_more(since).await; // g2's image
    let since = messages();
    let read_small = tokio::spawn(async move { far_small.start_read().await.map(|g| g.value) });
    one_more(since).await; // the small region's answer
    let waited = !write.is_finished() && !read2.is_finished() && !read_small.is_finished();
    GATES[2].open();
    assert!(waited, "something behind the gated image ended first");
    assert_ne!(read1.await.unwrap().unwrap(), 0xee);
    write.await.unwrap().unwrap();
    assert_eq!(read2.await.unwrap().unwrap(), LEN);
    assert_eq!(read_small.await.unwrap().unwrap(), 7);
    c.shutdown().await;
}

/// Issue 10 (head-of-line, at the home): while a home encodes a big region for a request,
/// it keeps handling messages,
/// from the requester (those that may pass the image) and from other nodes. Before, the
/// encode ran in the node's one message task, under the engine. Here it lasts until the
/// test opens its gate, and two round trips through the home must end first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_encoding_a_big_image_keeps_handling_other_messages() {
    const LEN: usize = 1 << 20;
    let c = Cluster::local_with(3, |c| c.op_timeout = Duration::from_secs(60))
        .await
        .unwrap();
    let (a, b, third) = (c.node(0), c.node(1), c.node(2));
    // The create (which checks the size, and tells the engine) and the first read miss
    // pass the open gate.
    GATES[5].open();
    let big = a.create(gated(NO_GATE, 5, LEN)).await.unwrap();
    let small = a.create(Counter { value: 0 }).await.unwrap();
    let first = b.map::<Gated>(big.id()).await.unwrap();
    assert_eq!(first.start_read().await.unwrap().0.len(), LEN);
    *GATES[5].state.lock().unwrap() = (false, false);
    let far = third.map::<Gated>(big.id()).await.unwrap();
    let read = tokio::spawn(async move { far.start_read().await.map(|g| g.0.len()) });
    GATES[5].wait_for_work().await;
    // The requester and another node each write and read a small region homed there.
    let round_trips = async {
        let near_b = b.map::<Counter>(small.id()).await.unwrap();
        near_b.start_write().await.unwrap().value = 1;
        let near_third = third.map::<Counter>(small.id()).await.unwrap();
        assert_eq!(near_third.start_read().await.unwrap().value, 1);
        near_third.start_write().await.unwrap().value = 2;
        assert_eq!(small.start_read().await.unwrap().value, 2);
    };
    let done = tokio::time::timeout(Duration::from_secs(10), round_trips).await;
    let encoding = !read.is_finished();
    GATES[5].open();
    assert!(
        done.is_ok(),
        "the round trips waited for the home's encode of the big image"
    );
    assert!(encoding, "the big read ended before the gate opened");
    assert_eq!(read.await.unwrap().unwrap(), LEN);
    c.shutdown().await;
}

/// Issue 10: a restart of the image's sender, learnt while the image is being decoded, is
/// handled after the decode (the transport delivered it after the image), and the node then
/// works with the new incarnation: nothing hangs. While the decode waits, the restart has not
/// been handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_the_sender_during_a_decode_is_handled_after_it() {
    const LEN: usize = 1 << 20;
    let mut c = Cluster::local_with(2, |c| {
        c.op_timeout = Duration::from_secs(20);
        c.peer_timeout = Some(Duration::from_secs(10));
    })
    .await
    .unwrap();
    let big = c.node(0).create(gated(6, NO_GATE, LEN)).await.unwrap();
    let at_one = c.node(1).create(Counter { value: 3 }).await.unwrap();
    let far = c.node(1).map::<Gated>(big.id()).await.unwrap();
    let read = tokio::spawn(async move { far.start_read().await.map(|g| g.0.len()) });
    GATES[6].wait_for_work().await;
    drop(big);
    c.restart(0).await.unwrap();
    // The new incarnation reads a region of node 1: it connects, and node 1's transport
    // learns the restart (and delivers the read's request after it).
    let new_zero = c.node(0).clone();
    let probe = tokio::spawn(async move {
        let h = new_zero.map::<Counter>(at_one.id()).await?;
        let v = h.start_read().await?.value;
        Ok::<_, Error>(v)
    });
    let started = Instant::now();
    while !c
        .node(0)
        .stats()
        .peers
        .iter()
        .any(|p| p.node == NodeId(1) && p.connected)
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never connected"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let handled_early = c.node(1).stats().peer_restarts;
    let probe_early = probe.is_finished();
    GATES[6].open();
    assert_eq!(
        handled_early, 0,
        "the restart was handled before the image it followed"
    );
    assert!(
        !probe_early,
        "the new incarnation's request passed the restart"
    );
    // The read was granted by the old incarnation (or failed with it): it ends either way.
    let _ = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the read ended");
    assert_eq!(probe.await.unwrap().unwrap(), 3);
    let fresh = c.node(0).create(Counter { value: 5 }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let value = loop {
        let r = match c.node(1).map::<Counter>(fresh.id()).await {
            Ok(h) => h.start_read().await.map(|g| g.value),
            Err(e) => Err(e),
        };
        match r {
            Err(Error::HomeRestarted(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            r => break r,
        }
    };
    assert_eq!(
        value.ok(),
        Some(5),
        "node 1 cannot read the new incarnation's region"
    );
    assert_eq!(c.node(1).stats().peer_restarts, 1);
    c.shutdown().await;
}

/// Found by `examples/big_regions` (outside the tests): after a region larger than the
/// retransmit buffer's hard bound went out (taken whole, as messages are), every message
/// after it on that link was refused until most of it was acknowledged: a small read miss's
/// answer was lost and the read waited out its timeout. Here the bound is about 18 MiB (a
/// 1 MiB buffer, twice, plus a frame) and the region 40 MiB; small misses on the same link
/// during the transfer, and after it, must all complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_messages_after_a_region_larger_than_the_buffer_are_not_refused() {
    const LEN: usize = 40 << 20;
    let c = Cluster::local_with(2, |c| {
        c.op_timeout = Duration::from_secs(20);
        c.send_buffer_bytes = 1 << 20;
    })
    .await
    .unwrap();
    let (a, b) = (c.node(0), c.node(1));
    let big = a
        .create(Blob {
            bytes: pattern(LEN, 3),
        })
        .await
        .unwrap();
    let small = a.create(Counter { value: 0 }).await.unwrap();
    let far = b.map::<Blob>(big.id()).await.unwrap();
    let near = b.map::<Counter>(small.id()).await.unwrap();
    let prober = {
        let small = small.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for i in 1..=40u64 {
                small.start_write().await?.value = i;
                last = near.start_read().await?.value;
                assert_eq!(last, i, "a stale read");
            }
            Ok::<_, Error>(last)
        })
    };
    let started = Instant::now();
    let g = far.start_read().await.unwrap();
    assert_eq!(g.bytes.len(), LEN);
    drop(g);
    let took = started.elapsed();
    assert_eq!(
        prober.await.unwrap().unwrap(),
        40,
        "small misses after the big one ({took:?})"
    );
    let refused: u64 = a.stats().peers.iter().map(|p| p.messages_refused).sum();
    assert_eq!(refused, 0, "messages refused by the home's transport");
    c.shutdown().await;
}

/// More than the retransmit buffer's hard bound in flight to a peer that reads (here eight
/// 3 MiB regions asked for at once, against a bound of about 5 MiB: a 1 MiB buffer, twice,
/// plus one 3 MiB message): the message past the bound used to be dropped inside a session
/// that went on, so its read waited out `op_timeout` (20 s here) and its region could stay
/// blocked. Now the home stops talking to the peer until its failure detector fences it
/// (2 s peer timeout), the pair starts over as after a cut, and every read completes or
/// fails within a few seconds; afterwards every region reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_the_hard_bound_in_flight_ends_in_a_fence_not_a_lost_message() {
    const LEN: usize = 3 << 20;
    const N: usize = 8;
    let c = Cluster::local_with(2, |c| {
        c.op_timeout = Duration::from_secs(20);
        c.send_buffer_bytes = 1 << 20;
        c.max_region_len = LEN + 1024;
        c.peer_timeout = Some(Duration::from_secs(2));
    })
    .await
    .unwrap();
    let (a, b) = (c.node(0), c.node(1));
    let mut fars = Vec::new();
    for i in 0..N {
        let h = a
            .create(Blob {
                bytes: pattern(LEN, i as u8),
            })
            .await
            .unwrap();
        fars.push(b.map::<Blob>(h.id()).await.unwrap());
    }
    let started = Instant::now();
    let reads: Vec<_> = fars
        .iter()
        .enumerate()
        .map(|(i, far)| {
            let far = far.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let ok = far
                    .start_read()
                    .await
                    .map(|g| g.bytes == pattern(LEN, i as u8));
                (t.elapsed(), ok)
            })
        })
        .collect();
    let mut failed = 0;
    for r in reads {
        let (took, ok) = r.await.unwrap();
        assert!(
            took < Duration::from_secs(12),
            "a read waited {took:?} (a lost message waits out op_timeout): {ok:?}"
        );
        match ok {
            Ok(same) => assert!(same, "a copy differs from its home's"),
            Err(e) => {
                assert!(!matches!(e, Error::TimedOut { .. }), "{e}");
                failed += 1;
            }
        }
    }
    let refused: u64 = a.stats().peers.iter().map(|p| p.messages_refused).sum();
    println!(
        "{N} reads of {} MiB at once: {failed} failed, {refused} messages refused at the home, {:?}",
        LEN >> 20,
        started.elapsed()
    );
    assert!(
        refused > 0,
        "the home's buffer never passed its bound: the test proves nothing"
    );
    // The pair started over: every region reads back whole, one after the other.
    for (i, far) in fars.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match far.start_read().await {
                Ok(g) => {
                    assert!(g.bytes == pattern(LEN, i as u8), "region {i} differs");
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "region {i} never came back: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        far.flush().await.unwrap();
    }
    c.shutdown().await;
}

/// A caching node that grows a region past `max_region_len` cannot return it: its write is
/// dropped when the home recalls the copy (logged and counted at the writer, as a lost write
/// is), and the home serves its last image at once. It used to leave the region blocked: the
/// recall's answer was refused by the transport and never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_grown_past_the_limit_is_dropped_not_left_blocking_its_home() {
    let c = Cluster::local_with(2, |c| {
        c.op_timeout = Duration::from_secs(5);
        c.max_region_len = 1 << 20;
    })
    .await
    .unwrap();
    let (a, b) = (c.node(0), c.node(1));
    let home = a.create(Blob { bytes: vec![1; 16] }).await.unwrap();
    let far = b.map::<Blob>(home.id()).await.unwrap();
    far.start_write().await.unwrap().bytes = vec![2; 2 << 20];
    let started = Instant::now();
    let g = home.start_read().await.expect("the home is not blocked");
    assert_eq!(g.bytes, vec![1; 16], "the home serves its last image");
    drop(g);
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(b.stats().engine.oversized_writes_dropped, 1);
    // The region keeps working everywhere.
    far.start_write().await.unwrap().bytes = vec![3; 32];
    assert_eq!(home.start_read().await.unwrap().bytes, vec![3; 32]);
    // The same when the writer flushes its copy instead of being recalled.
    far.start_write().await.unwrap().bytes = vec![4; 2 << 20];
    far.flush().await.unwrap();
    assert_eq!(b.stats().engine.oversized_writes_dropped, 2);
    assert_eq!(home.start_read().await.unwrap().bytes, vec![3; 32]);
    assert_eq!(a.stats().engine.lost_copies, 2, "counted at the home too");
    c.shutdown().await;
}

/// The bytes node `b` has received from node 0.
fn bytes_from_home(b: &crl::Node) -> u64 {
    b.stats()
        .peers
        .iter()
        .find(|p| p.node == NodeId(0))
        .map_or(0, |p| p.bytes_received)
}

/// Waits (at most 30 s) until node `b` has received `at_least` bytes from node 0.
async fn wait_for_bytes_from_home(b: &crl::Node, at_least: u64) {
    let started = Instant::now();
    while bytes_from_home(b) < at_least {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the transfer never started"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `len` bytes that differ per MiB and per `salt` (cheap in a debug build: one memset per MiB).
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    let mut v = vec![salt; len];
    for (i, mib) in v.chunks_mut(1 << 20).enumerate() {
        mib.fill((i as u8).wrapping_mul(31) ^ salt);
        mib[i % mib.len()] = salt.wrapping_add(1);
    }
    v
}

/// Issue 10: a region larger than a frame (20 MiB; frames are at most 16 MiB) ships in
/// fragments both ways (a read miss, then a write at the other node recalled by the home), a
/// lossy link in the middle of a transfer only slows it, and small messages keep flowing on
/// the same link afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_larger_than_a_frame_ships_in_fragments_both_ways() {
    const LEN: usize = 20 << 20;
    let c = Cluster::local_with(2, |c| c.op_timeout = Duration::from_secs(60))
        .await
        .unwrap();
    let (a, b) = (c.node(0), c.node(1));
    let (one, two) = (Arc::new(pattern(LEN, 1)), Arc::new(pattern(LEN, 2)));
    let big = a
        .create(Blob {
            bytes: one.to_vec(),
        })
        .await
        .unwrap();
    let small = a.create(Counter { value: 0 }).await.unwrap();
    let far = b.map::<Blob>(big.id()).await.unwrap();
    {
        let g = far.start_read().await.unwrap();
        assert!(g.bytes == *one, "the copy differs from the home's");
    }
    // The other node writes it: its copy becomes the only one; the home's read recalls it.
    // Node 1's link drops a fifth of its datagrams meanwhile.
    far.start_write().await.unwrap().bytes = two.to_vec();
    c.faults(1).set_drop_rate(0.2, 7);
    let read = {
        let (big, two) = (big.clone(), two.clone());
        tokio::spawn(async move { big.start_read().await.map(|g| g.bytes == *two) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.faults(1).heal();
    assert!(read.await.unwrap().unwrap(), "the home read something else");
    // Small messages on the same link, both ways.
    let near = b.map::<Counter>(small.id()).await.unwrap();
    for i in 0..20 {
        near.start_write().await.unwrap().value += 1;
        assert_eq!(small.start_read().await.unwrap().value, 1 + i);
    }
    let mut sent = 0;
    for peer in a.stats().peers.iter().chain(b.stats().peers.iter()) {
        assert_eq!(peer.messages_refused, 0);
        sent += peer.bytes_sent;
    }
    assert!(sent > 2 * LEN as u64, "{sent} bytes sent for two transfers");
    c.shutdown().await;
}

/// Every message is delivered once: the per-peer counters of both ends agree, nothing stays
/// unacknowledged once the cluster is idle, and no duplicate was needed on a healthy link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_acknowledge_everything_on_a_healthy_link() {
    let c = Cluster::local(3).await.unwrap();
    let r = c.node(0).create(Counter { value: 0 }).await.unwrap();
    let handles = [
        c.node(1).map::<Counter>(r.id()).await.unwrap(),
        c.node(2).map::<Counter>(r.id()).await.unwrap(),
    ];
    for i in 0..200 {
        handles[i % 2].start_write().await.unwrap().value += 1;
    }
    assert_eq!(r.start_read().await.unwrap().value, 200);
    // Acknowledgements are coalesced over a few milliseconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let unacked: u64 = c
            .nodes()
            .iter()
            .flat_map(|n| n.stats().peers)
            .map(|p| p.unacked_bytes)
            .sum();
        if unacked == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{unacked} bytes never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in c.nodes() {
        for p in n.stats().peers {
            let other = c.nodes()[p.node.0 as usize]
                .stats()
                .peers
                .into_iter()
                .find(|q| q.node == n.id())
                .unwrap();
            assert_eq!(
                p.messages_sent,
                other.messages_received,
                "{} → {}",
                n.id(),
                p.node
            );
            assert_eq!(p.duplicates_dropped, 0);
        }
    }
    c.shutdown().await;
}
