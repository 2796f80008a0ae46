//! Transactions are serializable, checked on recorded histories over a real 3-node cluster
//! (QUIC with mutual TLS on 127.0.0.1):
//!
//! - **bank**: concurrent transfers between accounts on every node, some aborted half-way by
//!   a user error after writing, and concurrent read-only audits. Every audit sees exactly the
//!   initial total (never a torn state), aborted transfers leave no trace, and each final
//!   balance is exactly what the committed transfers imply (no lost update).
//! - **list-append** (after Elle): transactions read some lists and append their unique id to
//!   others, recording what they read. From the final lists the checker derives the version
//!   order of every list, then the write-write, write-read and read-write (anti-dependency)
//!   edges between committed transactions, and requires that graph to be acyclic. It also
//!   rejects lost appends, reads of aborted appends and reads that are not a prefix of the
//!   final list. The checker itself is first shown to reject hand-made anomalies.
//! - **lost update**: tasks on every node increment one counter by reading it and then
//!   writing it (a read lock upgraded to a write lock); no increment may be lost.
//! - **write skew**: two registers with the invariant `x + y >= 0`, kept by transactions that
//!   read both and decrement one; with `x + y = 1` exactly one of several concurrent ones may
//!   succeed.
//! - **planted bug**: with `TxFault::ReleaseReadsEarly` (reads are not held to the end, so
//!   locking is not two-phase) the same list-append checker, the same write-skew check and the
//!   same lost-update count must report a violation within a bounded number of rounds; a
//!   checker that cannot fail proves nothing.
//!
//! The serializability workloads access regions in one global order (sorted by key), so they
//! cannot deadlock and test isolation alone; `list_append_in_any_order_is_serializable` drops
//! that order and so also relies on wound-wait across nodes (deadlocks are `tx_deadlock.rs`'s
//! subject).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crl::net::txn::{TxFault, TxStats};
use crl::{Cluster, Error, Handle, Region};

#[derive(Region, Debug, Clone)]
struct Account {
    balance: i64,
}

#[derive(Region, Debug, Clone, Default)]
struct List {
    items: Vec<u64>,
}

#[derive(Region, Debug, Clone)]
struct Register {
    value: i64,
}

/// A transaction's error: the library's, or the workload's own reason to abort.
#[derive(Debug)]
enum Fail {
    Crl(Error),
    /// The workload aborts on purpose (after writing).
    Refused,
    /// A transfer would overdraw its account (found after writing).
    Insufficient,
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Crl(e)
    }
}

/// xorshift64*: the workloads' choices, reproducible from the seed printed by each test.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `k` distinct numbers below `n`, in random order.
    fn distinct(&mut self, k: usize, n: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below(n - i);
            all.swap(i, j);
        }
        all.truncate(k);
        all
    }
}

fn seed() -> u64 {
    std::env::var("CRL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed)
}

/// Thinks for `ms` milliseconds, or only yields if 0.
async fn pause(ms: u64) {
    match ms {
        0 => tokio::task::yield_now().await,
        ms => tokio::time::sleep(Duration::from_millis(ms)).await,
    }
}

fn tx_totals(cluster: &Cluster) -> TxStats {
    cluster
        .nodes()
        .iter()
        .map(|n| n.stats().tx)
        .fold(TxStats::default(), |t, s| TxStats {
            committed: t.committed + s.committed,
            retried: t.retried + s.retried,
            aborted: t.aborted + s.aborted,
            wounds: t.wounds + s.wounds,
        })
}

/// Maps every region of `ids` on every node of the cluster: `out[node][i]`.
async fn map_everywhere<T: Region>(
    cluster: &Cluster,
    ids: &[crl::RegionId],
) -> Result<Vec<Arc<Vec<Handle<T>>>>, Error> {
    let mut out = Vec::new();
    for node in cluster.nodes() {
        let mut hs = Vec::new();
        for id in ids {
            hs.push(node.map::<T>(*id).await?);
        }
        out.push(Arc::new(hs));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Bank
// ---------------------------------------------------------------------------------------------

const ACCOUNTS: usize = 12;
const INITIAL: i64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_transfers_and_audits_are_serializable() -> Result<(), Error> {
    let seed = seed();
    println!("seed {seed} (CRL_TEST_SEED)");
    let cluster = Cluster::local(3).await?;
    let mut ids = Vec::new();
    for i in 0..ACCOUNTS {
        let h = cluster
            .node(i % 3)
            .create(Account { balance: INITIAL })
            .await?;
        ids.push(h.id());
    }
    let total = INITIAL * ACCOUNTS as i64;
    let accounts = map_everywhere::<Account>(&cluster, &ids).await?;
    let transfers_done = Arc::new(AtomicU64::new(0));
    let transfer_tasks = 2 * cluster.nodes().len() as u64;

    let mut transfers = Vec::new();
    let mut audits = Vec::new();
    for (n, node) in cluster.nodes().iter().enumerate() {
        for t in 0..2 {
            let (node, accts, done) = (node.clone(), accounts[n].clone(), transfers_done.clone());
            let mut rng = Rng::new(seed ^ (n as u64 * 16 + t));
            transfers.push(tokio::spawn(async move {
                // (from, to, amount) of every committed transfer; how many aborted.
                let mut committed = Vec::new();
                let (mut refused, mut insufficient) = (0, 0);
                for _ in 0..50 {
                    let pair = rng.distinct(2, ACCOUNTS);
                    let (from, to) = (pair[0], pair[1]);
                    let amount = 1 + rng.below(400) as i64;
                    let fail_halfway = rng.below(5) == 0;
                    let (lo, hi) = (from.min(to), from.max(to));
                    let r = node
                        .transaction(async |tx| {
                            // Locks in account order: this test is about isolation, not deadlocks.
                            let mut x = tx.write(&accts[lo]).await?;
                            let mut y = tx.write(&accts[hi]).await?;
                            let (debit, credit) = if from == lo {
                                (&mut x, &mut y)
                            } else {
                                (&mut y, &mut x)
                            };
                            debit.balance -= amount;
                            tokio::task::yield_now().await;
                            if fail_halfway {
                                return Err(Fail::Refused); // after the debit: must vanish
                            }
                            if debit.balance < 0 {
                                return Err(Fail::Insufficient);
                            }
                            credit.balance += amount;
                            Ok(())
                        })
                        .await;
                    match r {
                        Ok(()) => committed.push((from, to, amount)),
                        Err(Fail::Refused) => refused += 1,
                        Err(Fail::Insufficient) => insufficient += 1,
                        Err(Fail::Crl(e)) => return Err(e),
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                Ok((committed, refused, insufficient))
            }));
        }
        let (node, accts, done) = (node.clone(), accounts[n].clone(), transfers_done.clone());
        audits.push(tokio::spawn(async move {
            let mut seen = 0u64;
            // Audit until every transfer task is done, and at least a few times.
            while seen < 3 || done.load(Ordering::Relaxed) < transfer_tasks {
                let balances = node
                    .transaction(async |tx| {
                        let mut balances = Vec::new();
                        for a in accts.iter() {
                            balances.push(tx.read(a).await?.balance);
                            tokio::task::yield_now().await;
                        }
                        Ok::<_, Error>(balances)
                    })
                    .await?;
                let sum: i64 = balances.iter().sum();
                assert_eq!(
                    sum, total,
                    "an audit saw a torn state (total {sum}, not {total}): {balances:?}"
                );
                seen += 1;
            }
            Ok::<_, Error>(seen)
        }));
    }

    let mut expected = vec![INITIAL; ACCOUNTS];
    let (mut committed, mut refused, mut insufficient) = (0, 0, 0);
    for t in transfers {
        let (c, r, i) = t.await.expect("transfer task")?;
        for (from, to, amount) in &c {
            expected[*from] -= amount;
            expected[*to] += amount;
        }
        committed += c.len();
        refused += r;
        insufficient += i;
    }
    let mut audited = 0;
    for a in audits {
        audited += a.await.expect("audit task")?;
    }
    let mut finals = Vec::new();
    for a in accounts[0].iter() {
        finals.push(a.start_read().await?.balance);
    }
    let stats = tx_totals(&cluster);
    println!(
        "bank: {committed} transfers committed, {refused} aborted half-way, {insufficient} \
         refused for funds, {audited} audits; tx {stats:?}"
    );
    assert_eq!(finals.iter().sum::<i64>(), total, "money not conserved");
    assert_eq!(
        finals, expected,
        "final balances differ from what the committed transfers imply"
    );
    assert!(
        refused > 0,
        "no transfer aborted half-way: the test proves less"
    );
    assert_eq!(stats.aborted, (refused + insufficient) as u64);
    cluster.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// List-append: history, checker
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    /// Read `key` and saw these items.
    Read { key: usize, seen: Vec<u64> },
    /// Appended the transaction's id to `key`.
    Append { key: usize },
}

/// One transaction of a history: its id (the value it appends), whether it committed, and,
/// if it did, its operations.
#[derive(Clone, Debug)]
struct Record {
    id: u64,
    committed: bool,
    ops: Vec<Op>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dep {
    /// Both appended to the key, the first one earlier.
    WriteWrite,
    /// The second read the first one's append.
    WriteRead,
    /// The first read the key without the second one's append (an anti-dependency).
    ReadWrite,
}

impl std::fmt::Display for Dep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dep::WriteWrite => "ww",
            Dep::WriteRead => "wr",
            Dep::ReadWrite => "rw",
        })
    }
}

/// What an acyclic history looked like (to show the check was not vacuous).
#[derive(Debug, Default)]
struct Summary {
    committed: usize,
    aborted: usize,
    ww: usize,
    wr: usize,
    rw: usize,
}

/// Checks a list-append history against the lists' final values: every committed append is in
/// its list exactly once, nothing else is; every committed read is a prefix of the final list;
/// and the dependency graph over committed transactions (ww and wr from the version order, rw
/// anti-dependencies) has no cycle. On a violation returns its description.
fn check_list_append(records: &[Record], finals: &[Vec<u64>]) -> Result<Summary, String> {
    let committed: HashMap<u64, &Record> = records
        .iter()
        .filter(|r| r.committed)
        .map(|r| (r.id, r))
        .collect();
    let aborted: HashSet<u64> = records
        .iter()
        .filter(|r| !r.committed)
        .map(|r| r.id)
        .collect();
    let mut appends: HashSet<(usize, u64)> = HashSet::new();
    for r in committed.values() {
        for op in &r.ops {
            if let Op::Append { key } = op {
                appends.insert((*key, r.id));
            }
        }
    }
    // The version order: the final lists.
    for (key, list) in finals.iter().enumerate() {
        let mut seen = HashSet::new();
        for v in list {
            if !seen.insert(*v) {
                return Err(format!("T{v} appears twice in key {key}: {list:?}"));
            }
            if aborted.contains(v) {
                return Err(format!(
                    "key {key} holds T{v}'s append, but T{v} aborted: {list:?}"
                ));
            }
            if !appends.contains(&(key, *v)) {
                return Err(format!(
                    "key {key} holds {v}, which no committed transaction appended: {list:?}"
                ));
            }
        }
    }
    for (key, id) in &appends {
        if !finals[*key].contains(id) {
            return Err(format!(
                "T{id}'s committed append to key {key} is lost: {:?}",
                finals[*key]
            ));
        }
    }
    let mut summary = Summary {
        committed: committed.len(),
        aborted: aborted.len(),
        ..Summary::default()
    };
    let mut edges: HashMap<u64, Vec<(u64, Dep, usize)>> = HashMap::new();
    let mut add = |from: u64, to: u64, dep: Dep, key: usize, s: &mut Summary| {
        if from == to {
            return;
        }
        match dep {
            Dep::WriteWrite => s.ww += 1,
            Dep::WriteRead => s.wr += 1,
            Dep::ReadWrite => s.rw += 1,
        }
        edges.entry(from).or_default().push((to, dep, key));
    };
    for (key, list) in finals.iter().enumerate() {
        for w in list.windows(2) {
            add(w[0], w[1], Dep::WriteWrite, key, &mut summary);
        }
    }
    let mut ids: Vec<u64> = committed.keys().copied().collect();
    ids.sort_unstable();
    for id in &ids {
        for op in &committed[id].ops {
            let Op::Read { key, seen } = op else { continue };
            let list = &finals[*key];
            if seen.len() > list.len() || list[..seen.len()] != seen[..] {
                let why = match seen.iter().find(|v| aborted.contains(v)) {
                    Some(v) => format!(" (T{v} aborted: a dirty read)"),
                    None => String::new(),
                };
                return Err(format!(
                    "T{id} read {seen:?} from key {key}, not a prefix of its final value \
                     {list:?}{why}"
                ));
            }
            if let Some(last) = seen.last() {
                add(*last, *id, Dep::WriteRead, *key, &mut summary);
            }
            if let Some(next) = list.get(seen.len()) {
                add(*id, *next, Dep::ReadWrite, *key, &mut summary);
            }
        }
    }
    if let Some(cycle) = find_cycle(&ids, &edges) {
        let mut s = format!("dependency cycle over {} transactions: ", cycle.len());
        for (from, dep, key) in &cycle {
            s += &format!("T{from} -{dep}(key {key})-> ");
        }
        s += &format!("T{}", cycle[0].0);
        for (from, _, _) in &cycle {
            s += &format!("\n  T{from}: {:?}", committed[from].ops);
        }
        return Err(s);
    }
    Ok(summary)
}

/// A cycle of `edges` as (transaction, edge kind, key) steps, if there is one (iterative DFS).
fn find_cycle(
    ids: &[u64],
    edges: &HashMap<u64, Vec<(u64, Dep, usize)>>,
) -> Option<Vec<(u64, Dep, usize)>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Color {
        White,
        Gray,
        Black,
    }
    let none = Vec::new();
    let mut color: HashMap<u64, Color> = ids.iter().map(|&i| (i, Color::White)).collect();
    for &root in ids {
        if color[&root] != Color::White {
            continue;
        }
        // (node, next edge to look at); path[i] is the edge taken out of stack[i].
        let mut stack: Vec<(u64, usize)> = vec![(root, 0)];
        let mut path: Vec<(Dep, usize)> = Vec::new();
        color.insert(root, Color::Gray);
        while let Some(top) = stack.last_mut() {
            let (node, i) = (top.0, top.1);
            top.1 += 1;
            let out = edges.get(&node).unwrap_or(&none);
            if i == out.len() {
                color.insert(node, Color::Black);
                stack.pop();
                path.pop();
                continue;
            }
            let (to, dep, key) = out[i];
            match color.get(&to).copied().unwrap_or(Color::Black) {
                Color::White => {
                    color.insert(to, Color::Gray);
                    path.push((dep, key));
                    stack.push((to, 0));
                }
                Color::Gray => {
                    let start = stack.iter().position(|&(n, _)| n == to).expect("on stack");
                    let mut cycle: Vec<(u64, Dep, usize)> = (start..stack.len() - 1)
                        .map(|i| (stack[i].0, path[i].0, path[i].1))
                        .collect();
                    cycle.push((node, dep, key));
                    return Some(cycle);
                }
                Color::Black => {}
            }
        }
    }
    None
}

#[test]
fn the_checker_rejects_hand_made_anomalies_and_accepts_a_serial_history() {
    let rec = |id, committed, ops: Vec<Op>| Record { id, committed, ops };
    let read = |key, seen: &[u64]| Op::Read {
        key,
        seen: seen.to_vec(),
    };
    let app = |key| Op::Append { key };
    // Serial: T1 appends to 0; T2 reads [1] and appends to 1; T3 reads both.
    let serial = vec![
        rec(1, true, vec![app(0)]),
        rec(2, true, vec![read(0, &[1]), app(1)]),
        rec(3, true, vec![read(0, &[1]), read(1, &[2])]),
        rec(4, false, vec![]),
    ];
    let s = check_list_append(&serial, &[vec![1], vec![2]]).expect("serial history");
    assert_eq!((s.committed, s.aborted, s.wr, s.rw), (3, 1, 3, 0));
    // Write skew: each read the key the other appends to, before the append.
    let skew = vec![
        rec(1, true, vec![read(0, &[]), app(1)]),
        rec(2, true, vec![read(1, &[]), app(0)]),
    ];
    let e = check_list_append(&skew, &[vec![2], vec![1]]).expect_err("write skew");
    assert!(e.contains("cycle") && e.contains("rw"), "{e}");
    // Lost update: an append missing from the final list.
    let lost = vec![rec(1, true, vec![app(0)]), rec(2, true, vec![app(0)])];
    let e = check_list_append(&lost, &[vec![2]]).expect_err("lost update");
    assert!(e.contains("lost"), "{e}");
    // A read of an aborted append.
    let dirty = vec![rec(1, false, vec![]), rec(2, true, vec![read(0, &[1])])];
    let e = check_list_append(&dirty, &[vec![]]).expect_err("dirty read");
    assert!(e.contains("dirty"), "{e}");
    // A read that saw T2's append but not T1's, though T1 precedes T2 in the list.
    let torn = vec![
        rec(1, true, vec![app(0)]),
        rec(2, true, vec![app(0)]),
        rec(3, true, vec![read(0, &[2])]),
    ];
    assert!(check_list_append(&torn, &[vec![1, 2]]).is_err());
    // A cycle through ww and wr: T1 before T2 on key 0, T2 before T1 on key 1.
    let ww = vec![
        rec(1, true, vec![app(0), app(1)]),
        rec(2, true, vec![app(0), app(1)]),
    ];
    let e = check_list_append(&ww, &[vec![1, 2], vec![2, 1]]).expect_err("ww cycle");
    assert!(e.contains("ww"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// List-append: workloads
// ---------------------------------------------------------------------------------------------

/// Which keys a transaction touches, in which order, and whether it appends to each.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// 2–3 distinct keys in key order, each read or appended to.
    Sorted,
    /// 2–3 distinct keys in random order, each read or appended to.
    AnyOrder,
    /// 1–2 keys read in random order, then an append to another key: the write-skew shape
    /// (T1 reads x and appends to y while T2 reads y and appends to x).
    ReadsThenAppend,
}

/// One step of a transaction: the key, whether it appends (else reads), and how many
/// milliseconds it thinks afterwards (0: it only yields).
type Step = (usize, bool, u64);

impl Plan {
    fn choose(self, rng: &mut Rng, keys: usize) -> Vec<Step> {
        let k = 2 + rng.below(2).min(keys - 2);
        let mut chosen = rng.distinct(k, keys);
        if let Plan::Sorted = self {
            chosen.sort_unstable();
        }
        chosen
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                let append = match self {
                    Plan::Sorted | Plan::AnyOrder => rng.below(2) == 0,
                    Plan::ReadsThenAppend => i == k - 1,
                };
                (key, append, rng.below(3) as u64)
            })
            .collect()
    }
}

/// Runs one list-append history: `keys` fresh lists homed round-robin on the nodes,
/// `tasks` tasks per node each running `txns` transactions (one in ten aborts on purpose after
/// its operations). Returns the history and the final lists.
async fn list_append_round(
    cluster: &Cluster,
    keys: usize,
    tasks: usize,
    txns: usize,
    plan: Plan,
    seed: u64,
    next_id: &Arc<AtomicU64>,
) -> Result<(Vec<Record>, Vec<Vec<u64>>), Error> {
    let n = cluster.nodes().len();
    let mut ids = Vec::new();
    for k in 0..keys {
        ids.push(cluster.node(k % n).create(List::default()).await?.id());
    }
    let lists = map_everywhere::<List>(cluster, &ids).await?;
    let mut handles = Vec::new();
    for (ni, node) in cluster.nodes().iter().enumerate() {
        for t in 0..tasks {
            let (node, lists, next_id) = (node.clone(), lists[ni].clone(), next_id.clone());
            let mut rng = Rng::new(seed ^ ((ni * 64 + t) as u64) << 20);
            handles.push(tokio::spawn(async move {
                let mut history = Vec::new();
                for _ in 0..txns {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let steps = plan.choose(&mut rng, keys);
                    let abort = rng.below(10) == 0;
                    let r = node
                        .transaction(async |tx| {
                            let mut ops = Vec::new();
                            for &(key, append, think) in &steps {
                                let began = Instant::now();
                                if append {
                                    tx.write(&lists[key]).await?.items.push(id);
                                    ops.push(Op::Append { key });
                                } else {
                                    // The guard is dropped at once; the lock must not be.
                                    let seen = tx.read(&lists[key]).await?.items.clone();
                                    ops.push(Op::Read { key, seen });
                                }
                                // Accesses take milliseconds here; one that takes seconds
                                // waited out a deadlock wound-wait should have broken.
                                let waited = began.elapsed();
                                if waited > Duration::from_secs(1) {
                                    println!(
                                        "slow access: T{id} (node {ni}) {} key {key} in {waited:?}",
                                        if append { "appended to" } else { "read" }
                                    );
                                }
                                pause(think).await;
                            }
                            if abort {
                                return Err(Fail::Refused);
                            }
                            Ok(ops)
                        })
                        .await;
                    history.push(match r {
                        Ok(ops) => Record {
                            id,
                            committed: true,
                            ops,
                        },
                        Err(Fail::Refused) => Record {
                            id,
                            committed: false,
                            ops: Vec::new(),
                        },
                        Err(Fail::Crl(e)) => return Err(e),
                        Err(Fail::Insufficient) => unreachable!(),
                    });
                }
                Ok(history)
            }));
        }
    }
    let mut history = Vec::new();
    for h in handles {
        history.extend(h.await.expect("list-append task")?);
    }
    let mut finals = Vec::new();
    for l in lists[0].iter() {
        finals.push(l.start_read().await?.items.clone());
    }
    Ok((history, finals))
}

async fn list_append_is_serializable(plans: &[Plan]) -> Result<(), Error> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let seed = seed();
    println!("seed {seed} (CRL_TEST_SEED), plans {plans:?}");
    let cluster = Cluster::local(3).await?;
    let next_id = Arc::new(AtomicU64::new(1));
    let started = Instant::now();
    let mut rw = 0;
    for (round, &plan) in plans.iter().enumerate() {
        let (history, finals) =
            list_append_round(&cluster, 5, 3, 20, plan, seed + round as u64, &next_id).await?;
        match check_list_append(&history, &finals) {
            Ok(s) => {
                println!("round {round} ({plan:?}): {s:?}");
                rw += s.rw;
            }
            Err(e) => {
                panic!("round {round} ({plan:?}): not serializable: {e}\nfinal lists: {finals:?}")
            }
        }
    }
    println!(
        "list-append in {:.1} s: tx {:?}",
        started.elapsed().as_secs_f64(),
        tx_totals(&cluster)
    );
    assert!(
        rw > 0,
        "no anti-dependency at all: the workload is too tame"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_append_in_key_order_is_serializable() -> Result<(), Error> {
    list_append_is_serializable(&[Plan::Sorted; 3]).await
}

/// Without a global order, reads and appends deadlock across nodes (T1 reads x then appends
/// to y while T2 reads y then appends to x): this also needs wound-wait across nodes. The
/// second round is the planted-bug test's workload, which must pass without the bug.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_append_in_any_order_is_serializable() -> Result<(), Error> {
    list_append_is_serializable(&[Plan::AnyOrder, Plan::ReadsThenAppend, Plan::AnyOrder]).await
}

/// The planted bug: reads give up their lock when their guard drops. Transactions that read
/// lists, drop the guards, pause, and append to another (concurrently with the reverse)
/// must produce a dependency cycle the checker reports, within a bounded number of rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_early_read_release_is_caught_by_the_list_append_checker() -> Result<(), Error> {
    let seed = seed();
    println!("seed {seed} (CRL_TEST_SEED)");
    let cluster = Cluster::local_with(3, |c| c.tx_fault = Some(TxFault::ReleaseReadsEarly)).await?;
    let next_id = Arc::new(AtomicU64::new(1));
    const ROUNDS: u64 = 20;
    for round in 0..ROUNDS {
        // Reads, then one append: with reads not locking, nothing can deadlock.
        let (history, finals) = list_append_round(
            &cluster,
            3,
            3,
            10,
            Plan::ReadsThenAppend,
            seed + round,
            &next_id,
        )
        .await?;
        match check_list_append(&history, &finals) {
            Ok(s) => println!("round {round}: not caught yet ({s:?})"),
            Err(e) => {
                println!("caught in round {round}: {e}");
                cluster.shutdown().await;
                return Ok(());
            }
        }
    }
    panic!("early read release was not caught in {ROUNDS} rounds: the checker is too weak");
}

// ---------------------------------------------------------------------------------------------
// Lost update
// ---------------------------------------------------------------------------------------------

/// Nine tasks on three nodes each increment one counter `n` times by reading it, yielding,
/// then writing what they read plus one (a read lock upgraded to a write). Returns the final
/// value; serializable, it is exactly `9 n`.
async fn read_then_write_increments(cluster: &Cluster, n: i64) -> Result<i64, Error> {
    let c = cluster.node(0).create(Register { value: 0 }).await?;
    let mut tasks = Vec::new();
    for i in 0..9 {
        let node = cluster.node(i % 3).clone();
        let h = node.map::<Register>(c.id()).await?;
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                node.transaction(async |tx| {
                    let seen = tx.read(&h).await?.value;
                    tokio::task::yield_now().await;
                    tx.write(&h).await?.value = seen + 1;
                    Ok::<_, Error>(())
                })
                .await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await.expect("increment task")?;
    }
    Ok(c.start_read().await?.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_then_write_increments_lose_no_update() -> Result<(), Error> {
    let cluster = Cluster::local(3).await?;
    let value = read_then_write_increments(&cluster, 40).await?;
    println!("increments: {value}; tx {:?}", tx_totals(&cluster));
    assert_eq!(value, 9 * 40, "lost updates");
    cluster.shutdown().await;
    Ok(())
}

/// With reads released early, the read-then-write increments lose updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_early_read_release_is_caught_by_the_lost_update_check() -> Result<(), Error> {
    let cluster = Cluster::local_with(3, |c| c.tx_fault = Some(TxFault::ReleaseReadsEarly)).await?;
    let value = read_then_write_increments(&cluster, 40).await?;
    println!("planted bug: {value} of {} increments survived", 9 * 40);
    assert!(value < 9 * 40, "early read release lost no update");
    cluster.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Write skew
// ---------------------------------------------------------------------------------------------

/// Rounds of the write-skew scenario: `x = 1, y = 0`, then two spenders per node at once, each
/// a transaction that reads both registers (in the order x, y, taking a write lock on the one
/// it will decrement, pausing 0–3 ms in between) and decrements its target if `x + y >= 1`. Serializable, exactly one
/// succeeds per round and `x + y` ends at 0. Returns the first round that broke this, if any.
async fn write_skew_rounds(
    cluster: &Cluster,
    rounds: u64,
    seed: u64,
) -> Result<Option<String>, Error> {
    let x = cluster.node(0).create(Register { value: 0 }).await?;
    let y = cluster.node(1).create(Register { value: 0 }).await?;
    let regs = map_everywhere::<Register>(cluster, &[x.id(), y.id()]).await?;
    let mut rng = Rng::new(seed);
    for round in 0..rounds {
        cluster
            .node(0)
            .transaction(async |tx| {
                tx.write(&regs[0][0]).await?.value = 1;
                tx.write(&regs[0][1]).await?.value = 0;
                Ok::<_, Error>(())
            })
            .await?;
        let start = Arc::new(tokio::sync::Barrier::new(2 * cluster.nodes().len()));
        let mut spenders = Vec::new();
        for (ni, node) in cluster.nodes().iter().enumerate() {
            for _ in 0..2 {
                let (node, regs, start) = (node.clone(), regs[ni].clone(), start.clone());
                let (target, think) = (rng.below(2), rng.below(4) as u64);
                spenders.push(tokio::spawn(async move {
                    start.wait().await;
                    node.transaction(async |tx| {
                        if target == 0 {
                            let mut w = tx.write(&regs[0]).await?;
                            pause(think).await;
                            let yv = tx.read(&regs[1]).await?.value;
                            if w.value + yv < 1 {
                                return Ok(false);
                            }
                            w.value -= 1;
                        } else {
                            let xv = tx.read(&regs[0]).await?.value; // guard dropped at once
                            pause(think).await;
                            let mut w = tx.write(&regs[1]).await?;
                            if xv + w.value < 1 {
                                return Ok(false);
                            }
                            w.value -= 1;
                        }
                        Ok::<_, Error>(true)
                    })
                    .await
                }));
            }
        }
        let mut succeeded = 0;
        for s in spenders {
            succeeded += usize::from(s.await.expect("spender task")?);
        }
        let (xv, yv) = cluster
            .node(2)
            .transaction(async |tx| {
                let xv = tx.read(&regs[2][0]).await?.value;
                let yv = tx.read(&regs[2][1]).await?.value;
                Ok::<_, Error>((xv, yv))
            })
            .await?;
        if xv + yv < 0 || succeeded != 1 {
            return Ok(Some(format!(
                "round {round}: {succeeded} spenders succeeded from x + y = 1; now x = {xv}, \
                 y = {yv}"
            )));
        }
    }
    Ok(None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_skew_is_prevented() -> Result<(), Error> {
    let seed = seed();
    println!("seed {seed} (CRL_TEST_SEED)");
    let cluster = Cluster::local(3).await?;
    let broken = write_skew_rounds(&cluster, 40, seed).await?;
    println!("write skew: tx {:?}", tx_totals(&cluster));
    assert_eq!(broken, None, "write skew");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_early_read_release_is_caught_by_the_write_skew_check() -> Result<(), Error> {
    let seed = seed();
    println!("seed {seed} (CRL_TEST_SEED)");
    let cluster = Cluster::local_with(3, |c| c.tx_fault = Some(TxFault::ReleaseReadsEarly)).await?;
    let broken = write_skew_rounds(&cluster, 200, seed).await?;
    println!("planted bug: {broken:?}");
    assert!(
        broken.is_some(),
        "early read release never produced a write skew in 200 rounds"
    );
    cluster.shutdown().await;
    Ok(())
}
