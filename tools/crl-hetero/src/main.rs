//! `crl-hetero`: one node of crl's heterogeneous test cluster.
//!
//! `scripts/hetero-cluster.sh` builds this program for x86_64, for s390x (64-bit, big endian,
//! run under qemu) and for i686 (32-bit), and starts one process of each from one cluster file
//! with `Node::start(NodeConfig::from_file(..))`. Every node creates regions homed at itself,
//! holding values computed from a formula of its node id (integers of every width, floats,
//! `bool`, `char`, strings, vectors, options, tuples, arrays, enums with data, nested structs,
//! `RegionRef` links), binds them to names and looks up every other node's names. Then:
//!
//! 1. it links its sample to every node's sample (`RegionRef`) with a plain write;
//! 2. after a barrier (so that the nodes contend), it increments a tally in every node's
//!    region with plain writes, all nodes in the same order, checking on each write that it
//!    sees its own previous write (coherence across homes);
//! 3. it runs transactions that append an entry to a ledger at every home at once (two-phase
//!    commit across homes), each also reading another node's sample;
//! 4. after a barrier, it checks every value of every node's regions against the formula,
//!    follows the links, and checks that every ledger holds the same transactions in the same
//!    order (serializability), read in one transaction.
//!
//! It prints one line and exits 0 only if every check passed; otherwise it prints what failed,
//! flags the failure in its progress region (so that the other nodes stop waiting for it and
//! fail too) and exits 1. A value changed on one platform only (tried: one bit of a `u128` on
//! s390x) fails all three nodes within seconds.
//!
//! ```text
//! crl-hetero --config cluster.toml --id 1 --nodes 3
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use crl::{Error, Handle, Node, NodeConfig, NodeId, Region, RegionId, RegionRef};

/// One node of the heterogeneous test cluster.
#[derive(Debug, Parser)]
#[command(name = "crl-hetero")]
struct Args {
    /// The cluster file (every node reads the same one).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// This node's id.
    #[arg(long, value_name = "N")]
    id: u32,
    /// How many nodes the cluster has (ids 0..N).
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Plain-write increments by each node on each node's tally.
    #[arg(long, default_value_t = 25)]
    writes: u32,
    /// Transactions run by each node (each appends to every node's ledger).
    #[arg(long, default_value_t = 6)]
    txns: u32,
    /// Gives up after this many seconds.
    #[arg(long, default_value_t = 150)]
    timeout_secs: u64,
}

/// A nested struct: a tuple, an array and a boxed `str`.
#[derive(Region, Debug, Clone, PartialEq)]
struct Inner {
    a: u16,
    b: (u8, i64, f32),
    c: [u32; 3],
    d: Box<str>,
}

/// An enum with unit, tuple and struct variants.
#[derive(Region, Debug, Clone, PartialEq)]
enum Shape {
    Empty,
    Circle(f64),
    Rect { w: u32, h: u64 },
    Label(String, Vec<i8>),
    Nested(Box<Inner>),
    Maybe(Option<(i16, char)>),
}

/// One node's sample of every kind of field.
#[derive(Region, Debug, Clone, PartialEq)]
struct Sample {
    node: NodeId,
    u8v: u8,
    u16v: u16,
    u32v: u32,
    u64v: u64,
    u128v: u128,
    i8v: i8,
    i16v: i16,
    i32v: i32,
    i64v: i64,
    i128v: i128,
    f32v: f32,
    f64v: f64,
    subnormal: f64,
    flag: bool,
    letter: char,
    text: String,
    words: Vec<String>,
    wide: Vec<u128>,
    signed: Vec<i64>,
    some: Option<i32>,
    none: Option<u64>,
    inner: Inner,
    shapes: Vec<Shape>,
    raw: [u8; 16],
    /// Every node's sample, in node order (set by a plain write after the name lookups).
    links: Vec<RegionRef<Sample>>,
    /// This sample itself.
    me: Option<RegionRef<Sample>>,
    /// This sample's id.
    id: Option<RegionId>,
}

/// Incremented by every node with plain writes.
#[derive(Region, Debug, Clone, PartialEq)]
struct Tally {
    counts: Vec<u64>,
    mix: u128,
    last: Vec<Option<u32>>,
}

/// One transaction's entry in a ledger.
#[derive(Region, Debug, Clone, PartialEq)]
struct Entry {
    node: NodeId,
    k: u32,
    amount: i64,
    note: String,
    shape: Shape,
    stamp: (u16, i8),
}

/// Appended to by every node's transactions.
#[derive(Region, Debug, Clone, PartialEq)]
struct Ledger {
    entries: Vec<Entry>,
    total: i128,
    per_node: Vec<u32>,
}

/// A node's phase, for barriers, and whether it failed (so that the others stop waiting).
#[derive(Region, Debug, Clone, PartialEq)]
struct Progress {
    phase: u32,
    failed: bool,
}

/// Node `j`'s sample, before its links are set.
fn sample(j: u32) -> Sample {
    let s = u64::from(j) + 1;
    let mut wide_bytes = [0u8; 16];
    for (i, b) in wide_bytes.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(17).wrapping_add(j as u8);
    }
    let u128v = u128::from_le_bytes(wide_bytes);
    let mut raw = [0u8; 16];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = (j as u8).wrapping_mul(16).wrapping_add(i as u8);
    }
    let inner = Inner {
        a: 0xABCD ^ j as u16,
        b: (
            j as u8,
            -(j as i64) - 1_000_000_000_000,
            0.125 * (j + 1) as f32,
        ),
        c: [j, j << 8, (j << 24) | 0xFF],
        d: format!("inner {j}").into(),
    };
    Sample {
        node: NodeId(j),
        u8v: 0xA0 | j as u8,
        u16v: 0xB1C2u16.wrapping_add(j as u16 * 0x0101),
        u32v: 0xD3E4_F506 ^ j.wrapping_mul(0x0101_0101),
        u64v: 0x0102_0304_0506_0708u64.wrapping_mul(s) ^ 0xF0E0_D0C0_B0A0_9080,
        u128v,
        i8v: -100 - j as i8,
        i16v: -0x1234 - j as i16,
        i32v: i32::MIN + 0x0102_0304 + j as i32,
        i64v: -(0x0102_0304_0506_0708 * s as i64),
        i128v: -((u128v >> 1) as i128),
        f32v: f32::from_bits(0x3FC0_0001 + j),
        f64v: f64::from_bits(0x4009_21FB_5444_2D18 + u64::from(j)),
        subnormal: f64::from_bits(1 + u64::from(j)),
        flag: j.is_multiple_of(2),
        letter: ['λ', 'ß', '€', '🦀'][j as usize % 4],
        text: format!("node {j} says héllo, wörld ✓"),
        words: (0..=j + 2).map(|k| format!("w{j}.{k}")).collect(),
        wide: vec![u128::MAX - u128::from(j), (1 << 100) | u128::from(j), 0],
        signed: vec![i64::MIN + i64::from(j), -1, i64::MAX - i64::from(j)],
        some: Some(-7 * (j as i32 + 1)),
        none: None,
        inner: inner.clone(),
        shapes: vec![
            Shape::Empty,
            Shape::Circle(f64::from(j) + 0.5),
            Shape::Rect {
                w: 3 + j,
                h: u64::MAX - u64::from(j),
            },
            Shape::Label(format!("L{j}"), vec![-1, j as i8, i8::MIN]),
            Shape::Nested(Box::new(inner)),
            Shape::Maybe(Some((-(j as i16), 'x'))),
            Shape::Maybe(None),
        ],
        raw,
        links: Vec::new(),
        me: None,
        id: None,
    }
}

/// Node `j`'s sample once linked: `ids` are every node's sample ids in node order.
fn linked_sample(j: u32, ids: &[RegionId]) -> Sample {
    let mut s = sample(j);
    s.links = ids.iter().map(|&id| RegionRef::new(id)).collect();
    s.me = Some(RegionRef::new(ids[j as usize]));
    s.id = Some(ids[j as usize]);
    s
}

/// What plain write `k` of node `j` adds to a tally's `mix`.
fn mix_term(j: u32, k: u32) -> u128 {
    ((u128::from(j) + 1) << 96) | (u128::from(k) * 0x1_0000_0001 + 7)
}

/// Transaction `k` of node `j`'s ledger entry.
fn entry(j: u32, k: u32) -> Entry {
    let magnitude = i64::from(j * 1000 + k) * 1_000_003;
    Entry {
        node: NodeId(j),
        k,
        amount: if (j + k).is_multiple_of(2) {
            magnitude
        } else {
            -magnitude
        },
        note: format!("tx {k} from n{j}: ünïcödé ✓"),
        shape: match k % 3 {
            0 => Shape::Rect {
                w: k,
                h: u64::from(j) << 40,
            },
            1 => Shape::Label(format!("n{j}"), vec![k as i8, -(j as i8)]),
            _ => Shape::Circle(f64::from(k) / 8.0),
        },
        stamp: (0xF00D ^ k as u16, -(j as i8)),
    }
}

/// What an entry adds to a ledger's total (beyond `i64`).
fn weight(e: &Entry) -> i128 {
    i128::from(e.amount) * 1_000_000_007_000
}

/// A failed check or operation, printed by `main`.
#[derive(Debug)]
struct Fail(String);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail(e.to_string())
    }
}

/// Fails with a message unless `cond`.
fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), Fail> {
    if cond { Ok(()) } else { Err(Fail(what())) }
}

/// Errors that a peer not yet started (or a name not yet bound) explains.
fn transient(e: &Error) -> bool {
    matches!(
        e,
        Error::NameNotFound(_)
            | Error::HomeUnreachable { .. }
            | Error::TimedOut { .. }
            | Error::Transport(_)
            | Error::Conflict { .. }
    )
}

/// Runs `f` until it succeeds, retrying transient errors until `deadline`.
async fn retry<T>(
    deadline: Instant,
    what: &str,
    mut f: impl AsyncFnMut() -> Result<T, Error>,
) -> Result<T, Fail> {
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if transient(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(Fail(format!("{what}: {e}"))),
        }
    }
}

/// Sets this node's phase, then waits until every node has reached `phase`. With `last`, a
/// node that does not answer within 3 s counts as done: a node only exits after this barrier
/// (the script checks every exit code), so one that is gone has passed it.
async fn barrier(
    progress: &[Handle<Progress>],
    me: usize,
    phase: u32,
    deadline: Instant,
    last: bool,
) -> Result<(), Fail> {
    progress[me].start_write().await?.phase = phase;
    for (i, h) in progress.iter().enumerate() {
        loop {
            let read = async { h.start_read().await.map(|r| (r.phase, r.failed)) };
            let read = if last {
                match tokio::time::timeout(Duration::from_secs(3), read).await {
                    Ok(r) => r,
                    Err(_) => break,
                }
            } else {
                read.await
            };
            match read {
                Ok((_, true)) => return Err(Fail(format!("barrier {phase}: n{i} failed"))),
                Ok((p, false)) if p >= phase => break,
                Ok(_) => {}
                Err(_) if last => break,
                Err(e) if transient(&e) => {}
                Err(e) => return Err(Fail(format!("barrier {phase}, n{i}: {e}"))),
            }
            check(Instant::now() < deadline, || {
                format!("barrier {phase}: n{i} did not arrive in time")
            })?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Maps the region bound to `name`, waiting for its node to bind it.
async fn map_named<T: Region>(
    node: &Node,
    name: &str,
    deadline: Instant,
) -> Result<Handle<T>, Fail> {
    let id = retry(deadline, &format!("lookup {name:?}"), async || {
        node.lookup(name).await
    })
    .await?;
    retry(deadline, &format!("map {name:?}"), async || {
        node.map::<T>(id).await
    })
    .await
}

/// The node's whole run; returns the line to print.
async fn run(args: &Args) -> Result<String, Fail> {
    let started = Instant::now();
    let me = args.id;
    let config = NodeConfig::from_file(&args.config, NodeId(me)).map_err(Error::from)?;
    let node = Node::start(config).await?;
    let own_progress = node
        .create(Progress {
            phase: 0,
            failed: false,
        })
        .await?;
    let result = work(args, &node, &own_progress, started).await;
    if result.is_err() {
        // Tell the others, so that they stop waiting at their next barrier (best effort).
        let flag = async {
            own_progress
                .start_write()
                .await
                .map(|mut w| w.failed = true)
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), flag).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    node.shutdown().await;
    result
}

/// Everything between the node's start and its shutdown; returns the line to print.
async fn work(
    args: &Args,
    node: &Node,
    own_progress: &Handle<Progress>,
    started: Instant,
) -> Result<String, Fail> {
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let n = args.nodes;
    let me = args.id;
    let mut timeline = Vec::new();
    let mut mark = |what: &'static str| timeline.push((what, started.elapsed().as_secs_f64()));

    // Regions homed here, bound to names.
    let own_sample = node.create(sample(me)).await?;
    let own_tally = node
        .create(Tally {
            counts: vec![0; n as usize],
            mix: 0,
            last: vec![None; n as usize],
        })
        .await?;
    let own_ledger = node
        .create(Ledger {
            entries: Vec::new(),
            total: 0,
            per_node: vec![0; n as usize],
        })
        .await?;
    for (kind, id) in [
        ("sample", own_sample.id()),
        ("tally", own_tally.id()),
        ("ledger", own_ledger.id()),
        ("progress", own_progress.id()),
    ] {
        let name = format!("hetero/{kind}/{me}");
        retry(deadline, &format!("bind {name:?}"), async || {
            node.bind(&name, id).await
        })
        .await?;
    }

    // Every node's regions, by name.
    let (mut samples, mut tallies, mut ledgers, mut progress) = (vec![], vec![], vec![], vec![]);
    for j in 0..n {
        if j == me {
            samples.push(own_sample.clone());
            tallies.push(own_tally.clone());
            ledgers.push(own_ledger.clone());
            progress.push(own_progress.clone());
        } else {
            samples.push(map_named::<Sample>(node, &format!("hetero/sample/{j}"), deadline).await?);
            tallies.push(map_named::<Tally>(node, &format!("hetero/tally/{j}"), deadline).await?);
            ledgers.push(map_named::<Ledger>(node, &format!("hetero/ledger/{j}"), deadline).await?);
            progress.push(
                map_named::<Progress>(node, &format!("hetero/progress/{j}"), deadline).await?,
            );
        }
    }
    mark("names");
    let ids: Vec<RegionId> = samples.iter().map(|h| h.id()).collect();
    for (j, id) in ids.iter().enumerate() {
        check(id.home == NodeId(j as u32), || {
            format!("hetero/sample/{j} is {id}, not homed at n{j}")
        })?;
    }

    // 1. Link this node's sample to every sample (a plain write of `RegionRef`s).
    {
        let mut w = own_sample.start_write().await?;
        w.links = ids.iter().map(|&id| RegionRef::new(id)).collect();
        w.me = Some(RegionRef::new(own_sample.id()));
        w.id = Some(own_sample.id());
    }

    // All nodes start the writes together, so that they contend.
    barrier(&progress, me as usize, 1, deadline, false).await?;
    mark("ready");

    // 2. Plain writes on every node's tally; each must see this node's previous write.
    let misses_before = node.stats().engine.misses;
    for k in 0..args.writes {
        for t in 0..n {
            let h = &tallies[((k + t) % n) as usize]; // the same order on every node: contention
            let mut w = h.start_write().await?;
            let seen = w.last[me as usize];
            check(seen == k.checked_sub(1), || {
                format!("tally {}: write {k} saw last = {seen:?}", h.id())
            })?;
            w.counts[me as usize] += 1;
            w.mix = w.mix.wrapping_add(mix_term(me, k));
            w.last[me as usize] = Some(k);
            drop(w);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let write_misses = node.stats().engine.misses - misses_before;

    mark("writes");

    // 3. Transactions appending to every ledger (every home) and reading another sample.
    let next = &samples[((me + 1) % n) as usize];
    let next_expected = sample((me + 1) % n);
    for k in 0..args.txns {
        let seen = node
            .transaction(async |tx| {
                for t in 0..n {
                    let h = &ledgers[((me + t + k) % n) as usize];
                    let mut w = tx.write(h).await?;
                    let e = entry(me, k);
                    w.total += weight(&e);
                    w.per_node[me as usize] += 1;
                    w.entries.push(e);
                }
                let r = tx.read(next).await?;
                let mut s = (*r).clone();
                (s.links, s.me, s.id) = (Vec::new(), None, None);
                Ok::<_, Error>(s)
            })
            .await?;
        check(seen == next_expected, || {
            format!("transaction {k} read {seen:?}, expected {next_expected:?}")
        })?;
    }

    mark("transactions");
    barrier(&progress, me as usize, 2, deadline, false).await?;
    mark("barrier");

    // 4. Check everything.
    for j in 0..n {
        let got = samples[j as usize].start_read().await?.clone();
        let want = linked_sample(j, &ids);
        check(got == want, || {
            format!("sample of n{j}: got {got:?}\nexpected {want:?}")
        })?;
        for (f, g, w) in [
            (
                "f32v",
                u64::from(got.f32v.to_bits()),
                u64::from(want.f32v.to_bits()),
            ),
            ("f64v", got.f64v.to_bits(), want.f64v.to_bits()),
            (
                "subnormal",
                got.subnormal.to_bits(),
                want.subnormal.to_bits(),
            ),
        ] {
            check(g == w, || {
                format!("sample of n{j}: {f} bits {g:#x} != {w:#x}")
            })?;
        }
        // Follow the link to the next node's sample, as a program would.
        let link = got.links[((j + 1) % n) as usize];
        let linked = node.map::<Sample>(link.id()).await?;
        let node_of_link = linked.start_read().await?.node;
        check(node_of_link == NodeId((j + 1) % n), || {
            format!("n{j}'s link {link} leads to a sample of {node_of_link}")
        })?;

        let tally = tallies[j as usize].start_read().await?.clone();
        let mut mix = 0u128;
        for i in 0..n {
            for k in 0..args.writes {
                mix = mix.wrapping_add(mix_term(i, k));
            }
        }
        let want = Tally {
            counts: vec![u64::from(args.writes); n as usize],
            mix,
            last: vec![args.writes.checked_sub(1); n as usize],
        };
        check(tally == want, || {
            format!("tally of n{j}: got {tally:?}, expected {want:?}")
        })?;
    }

    // The ledgers, read together in one transaction.
    let all = node
        .transaction(async |tx| {
            let mut all = Vec::new();
            for h in &ledgers {
                all.push((*tx.read(h).await?).clone());
            }
            Ok::<_, Error>(all)
        })
        .await?;
    let order: Vec<(NodeId, u32)> = all[0].entries.iter().map(|e| (e.node, e.k)).collect();
    for (j, ledger) in all.iter().enumerate() {
        check(ledger.entries.len() == (n * args.txns) as usize, || {
            format!("ledger of n{j} has {} entries", ledger.entries.len())
        })?;
        let mut next_k = vec![0u32; n as usize];
        for e in &ledger.entries {
            let i = e.node.0;
            check(i < n, || format!("ledger of n{j}: entry from {}", e.node))?;
            let want = entry(i, next_k[i as usize]);
            check(*e == want, || {
                format!("ledger of n{j}: got {e:?}, expected {want:?}")
            })?;
            next_k[i as usize] += 1;
        }
        let total: i128 = ledger.entries.iter().map(weight).sum();
        check(ledger.total == total, || {
            format!("ledger of n{j}: total {} != {total}", ledger.total)
        })?;
        check(ledger.per_node == vec![args.txns; n as usize], || {
            format!("ledger of n{j}: per node {:?}", ledger.per_node)
        })?;
        let o: Vec<(NodeId, u32)> = ledger.entries.iter().map(|e| (e.node, e.k)).collect();
        check(o == order, || {
            format!("ledger of n{j} commits in another order than n0's: {o:?} vs {order:?}")
        })?;
    }

    mark("checks");
    barrier(&progress, me as usize, 3, deadline, true).await?;
    mark("exit barrier");
    // Linger so that nodes still in the exit barrier find this one's phase at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = node.stats();
    let timeline: Vec<String> = timeline
        .iter()
        .map(|(what, at)| format!("{what} {at:.1}"))
        .collect();
    Ok(format!(
        "n{me} ({arch}, {endian} endian, {bits}-bit): ok after {secs:.1} s: {n} samples \
         (fingerprint {fp:#018x}) and their links, {n} tallies ({plain} plain writes each, {write_misses} of this node's {mine} missed), \
         {n} ledgers ({txs} transactions, same order everywhere); {misses} misses, {msgs} messages; \
         at s: {timeline}",
        arch = std::env::consts::ARCH,
        endian = if cfg!(target_endian = "big") {
            "big"
        } else {
            "little"
        },
        bits = usize::BITS,
        secs = started.elapsed().as_secs_f64(),
        fp = Sample::FINGERPRINT,
        plain = n * args.writes,
        mine = n * args.writes,
        txs = n * args.txns,
        misses = stats.engine.misses,
        msgs = stats.engine.messages_sent,
        timeline = timeline.join(", "),
    ))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("n{}: cannot start the runtime: {e}", args.id);
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(Fail(why)) => {
            eprintln!("n{}: FAILED: {why}", args.id);
            ExitCode::FAILURE
        }
    }
}
