//! The ET1 database in crl regions: the region types, where each lives, loading, the
//! DebitCredit transaction, and the snapshot and invariant checks used by the verification.
//!
//! Layout (scale `s`, `n` nodes): branch `b` is homed on node `b % n` together with its 10
//! tellers and its 100,000 accounts. Accounts are stored `accounts_per_region` to an
//! [`AccountBlock`] region. Each branch has a [`BranchDir`] region (homed with it) listing the
//! ids of its branch, teller and block regions, bound to the name `et1/branch/<b>`. Each
//! client appends its history to its own [`HistoryChunk`] regions, homed on the client's node
//! and listed in its [`HistoryIndex`] (bound to `et1/history/<client>`).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crl::{Error, Handle, Node, Region, RegionId};

/// Accounts per branch (TPC-B, pgbench).
pub const ACCOUNTS_PER_BRANCH: u32 = 100_000;
/// Tellers per branch (TPC-B, pgbench).
pub const TELLERS_PER_BRANCH: u32 = 10;
/// History entries per chunk region.
pub const HISTORY_CHUNK_CAP: usize = 100;
/// Account blocks created per loading transaction.
const LOAD_BATCH: u32 = 100;

/// An error with a message for the user.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A result with a [`BoxError`].
pub type Res<T> = Result<T, BoxError>;

/// A branch's balance.
#[derive(Region, Clone, Debug)]
pub struct Branch {
    /// The balance.
    pub balance: i64,
}

/// A teller's balance.
#[derive(Region, Clone, Debug)]
pub struct Teller {
    /// The balance.
    pub balance: i64,
}

/// A block of consecutive accounts of one branch; a transaction locks the whole block (like a
/// page lock).
#[derive(Region, Clone, Debug)]
pub struct AccountBlock {
    /// The balances, `accounts_per_region` of them (fewer in a branch's last block).
    pub balances: Vec<i64>,
}

/// One history row (pgbench's `pgbench_history` without `mtime` and filler).
#[derive(Region, Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The transaction's id: unique per client, client id in the high bits.
    pub txn: u64,
    /// Account number (0-based, global).
    pub account: u32,
    /// Teller number (0-based, global).
    pub teller: u32,
    /// Branch number (0-based).
    pub branch: u32,
    /// The amount added to the account, the teller and the branch.
    pub delta: i64,
}

/// Up to [`HISTORY_CHUNK_CAP`] history rows of one client.
#[derive(Region, Clone, Debug, Default)]
pub struct HistoryChunk {
    /// The rows, in commit order.
    pub entries: Vec<HistoryEntry>,
}

/// A client's history chunks, oldest first; the last one is being filled.
#[derive(Region, Clone, Debug, Default)]
pub struct HistoryIndex {
    /// The chunk regions.
    pub chunks: Vec<RegionId>,
}

/// The regions of one branch (bound to `et1/branch/<b>`).
#[derive(Region, Clone, Debug)]
pub struct BranchDir {
    /// The branch number.
    pub number: u32,
    /// Accounts per [`AccountBlock`] used when the branch was loaded.
    pub accounts_per_region: u32,
    /// The [`Branch`] region.
    pub branch: RegionId,
    /// The [`Teller`] regions, in teller order.
    pub tellers: Vec<RegionId>,
    /// The [`AccountBlock`] regions, in account order.
    pub blocks: Vec<RegionId>,
}

/// The size and placement of the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Branches (pgbench's scale factor).
    pub scale: u32,
    /// Nodes of the cluster (branch `b` is homed on node `b % nodes`).
    pub nodes: u32,
    /// Accounts per [`AccountBlock`].
    pub per_block: u32,
}

/// Where an account lives.
#[derive(Clone, Copy, Debug)]
pub struct AccountAt {
    /// Its branch.
    pub branch: u32,
    /// Its block within the branch.
    pub block: u32,
    /// Its slot within the block.
    pub slot: u32,
}

impl Shape {
    /// All accounts.
    pub fn accounts(&self) -> u32 {
        self.scale * ACCOUNTS_PER_BRANCH
    }

    /// All tellers.
    pub fn tellers(&self) -> u32 {
        self.scale * TELLERS_PER_BRANCH
    }

    /// Blocks per branch.
    pub fn blocks_per_branch(&self) -> u32 {
        ACCOUNTS_PER_BRANCH.div_ceil(self.per_block)
    }

    /// Accounts in block `block` of a branch.
    pub fn block_len(&self, block: u32) -> u32 {
        (ACCOUNTS_PER_BRANCH - block * self.per_block).min(self.per_block)
    }

    /// The node that homes branch `branch`.
    pub fn home(&self, branch: u32) -> u32 {
        branch % self.nodes
    }

    /// The branches homed on `node`.
    pub fn branches_of(&self, node: u32) -> Vec<u32> {
        (0..self.scale).filter(|b| self.home(*b) == node).collect()
    }

    /// Where account `account` lives.
    pub fn locate(&self, account: u32) -> AccountAt {
        let within = account % ACCOUNTS_PER_BRANCH;
        AccountAt {
            branch: account / ACCOUNTS_PER_BRANCH,
            block: within / self.per_block,
            slot: within % self.per_block,
        }
    }
}

/// The name of branch `b`'s directory.
pub fn branch_name(b: u32) -> String {
    format!("et1/branch/{b}")
}

/// The name of client `client`'s history index.
pub fn history_name(client: u32) -> String {
    format!("et1/history/{client}")
}

/// Creates branch `b` (homed here): its branch, tellers and account blocks, each batch in a
/// transaction, then its directory, and binds the directory's name. Returns the regions made.
pub async fn load_branch(node: &Node, shape: Shape, b: u32) -> Result<u64, Error> {
    let (branch, tellers) = node
        .transaction(async |tx| {
            let branch = tx.create(Branch { balance: 0 }).await?.id();
            let mut tellers = Vec::new();
            for _ in 0..TELLERS_PER_BRANCH {
                tellers.push(tx.create(Teller { balance: 0 }).await?.id());
            }
            Ok::<_, Error>((branch, tellers))
        })
        .await?;
    let nblocks = shape.blocks_per_branch();
    let mut blocks = Vec::with_capacity(nblocks as usize);
    let mut next = 0;
    while next < nblocks {
        let end = (next + LOAD_BATCH).min(nblocks);
        let ids = node
            .transaction(async |tx| {
                let mut ids = Vec::new();
                for k in next..end {
                    let balances = vec![0; shape.block_len(k) as usize];
                    ids.push(tx.create(AccountBlock { balances }).await?.id());
                }
                Ok::<_, Error>(ids)
            })
            .await?;
        blocks.extend(ids);
        next = end;
    }
    let dir = node
        .transaction(async |tx| {
            let dir = BranchDir {
                number: b,
                accounts_per_region: shape.per_block,
                branch,
                tellers: tellers.clone(),
                blocks: blocks.clone(),
            };
            Ok::<_, Error>(tx.create(dir).await?.id())
        })
        .await?;
    node.bind(&branch_name(b), dir).await?;
    Ok(2 + u64::from(TELLERS_PER_BRANCH) + u64::from(nblocks))
}

/// One branch's regions, mapped on one node.
pub struct BranchRefs {
    /// The branch.
    pub branch: Handle<Branch>,
    /// Its tellers.
    pub tellers: Vec<Handle<Teller>>,
    /// Its account blocks.
    pub blocks: Vec<Handle<AccountBlock>>,
}

/// The whole database as seen from one node (every region mapped there).
pub struct Db {
    /// The node.
    pub node: Node,
    /// Size and placement.
    pub shape: Shape,
    /// Every branch, in order.
    pub branches: Vec<BranchRefs>,
}

/// Whether an error may go away if retried (a peer is down or restarting, or not ready yet).
pub fn transient(e: &Error) -> bool {
    matches!(
        e,
        Error::TimedOut { .. }
            | Error::HomeUnreachable { .. }
            | Error::NameNotFound(_)
            | Error::Conflict { .. }
    )
}

/// Looks `name` up, retrying transient failures until `deadline`: `Ok(None)` if it is not
/// bound (or, with `wait_for_bind`, still not bound at the deadline).
pub async fn lookup_retry(
    node: &Node,
    name: &str,
    deadline: Instant,
    wait_for_bind: bool,
) -> Result<Option<RegionId>, Error> {
    loop {
        match node.lookup(name).await {
            Ok(id) => return Ok(Some(id)),
            Err(Error::NameNotFound(_)) if !wait_for_bind => return Ok(None),
            Err(Error::NameNotFound(_)) if Instant::now() >= deadline => return Ok(None),
            Err(e) if transient(&e) && Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Db {
    /// Finds every branch by name (waiting up to `wait` for peers that have not bound theirs
    /// yet) and maps all its regions on `node`.
    pub async fn open(node: &Node, shape: Shape, wait: Duration) -> Res<Db> {
        let deadline = Instant::now() + wait;
        let mut tasks = Vec::new();
        for b in 0..shape.scale {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                open_branch(&node, shape, b, deadline).await
            }));
        }
        let mut branches = Vec::new();
        for t in tasks {
            branches.push(t.await.map_err(|e| format!("opening a branch: {e}"))??);
        }
        Ok(Db {
            node: node.clone(),
            shape,
            branches,
        })
    }

    /// The handles a DebitCredit transaction needs.
    fn account_block(&self, at: AccountAt) -> &Handle<AccountBlock> {
        &self.branches[at.branch as usize].blocks[at.block as usize]
    }

    fn teller(&self, teller: u32) -> &Handle<Teller> {
        &self.branches[(teller / TELLERS_PER_BRANCH) as usize].tellers
            [(teller % TELLERS_PER_BRANCH) as usize]
    }
}

async fn open_branch(node: &Node, shape: Shape, b: u32, deadline: Instant) -> Res<BranchRefs> {
    let name = branch_name(b);
    let id = lookup_retry(node, &name, deadline, true)
        .await?
        .ok_or_else(|| {
            format!(
                "no branch directory {name:?} was bound (is node {} up?)",
                shape.home(b)
            )
        })?;
    let dir = retry(deadline, || async {
        Ok(node.map::<BranchDir>(id).await?.start_read().await?.clone())
    })
    .await?;
    if dir.number != b
        || dir.accounts_per_region != shape.per_block
        || dir.tellers.len() != TELLERS_PER_BRANCH as usize
        || dir.blocks.len() != shape.blocks_per_branch() as usize
    {
        return Err(format!(
            "{name} holds branch {} with {} tellers and {} blocks of {} accounts; expected branch {b} with {TELLERS_PER_BRANCH} tellers and {} blocks of {}",
            dir.number,
            dir.tellers.len(),
            dir.blocks.len(),
            dir.accounts_per_region,
            shape.blocks_per_branch(),
            shape.per_block
        )
        .into());
    }
    let branch = retry(deadline, || node.map::<Branch>(dir.branch)).await?;
    let mut tellers = Vec::new();
    for &t in &dir.tellers {
        tellers.push(retry(deadline, || node.map::<Teller>(t)).await?);
    }
    let mut blocks = Vec::with_capacity(dir.blocks.len());
    for &k in &dir.blocks {
        blocks.push(retry(deadline, || node.map::<AccountBlock>(k)).await?);
    }
    Ok(BranchRefs {
        branch,
        tellers,
        blocks,
    })
}

/// Runs `f` until it succeeds, retrying transient errors until `deadline`.
async fn retry<T, F, Fut>(deadline: Instant, mut f: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    loop {
        match f().await {
            Err(e) if transient(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
}

/// Where a client appends its history.
pub struct History {
    /// The client.
    pub client: u32,
    /// Its index.
    pub index: Handle<HistoryIndex>,
    /// The chunk being filled (the index's last).
    pub chunk: Handle<HistoryChunk>,
}

/// Opens client `client`'s history on `node`: finds it by name, or (if `create`) creates an
/// index and a first chunk in one transaction and binds the index's name.
pub async fn open_history(node: &Node, client: u32, create: bool, wait: Duration) -> Res<History> {
    let name = history_name(client);
    let deadline = Instant::now() + wait;
    let index = match lookup_retry(node, &name, deadline, false).await? {
        Some(id) => retry(deadline, || node.map::<HistoryIndex>(id)).await?,
        None if create => {
            let (index, _) = node
                .transaction(async |tx| {
                    let chunk = tx.create(HistoryChunk::default()).await?;
                    let index = tx
                        .create(HistoryIndex {
                            chunks: vec![chunk.id()],
                        })
                        .await?;
                    Ok::<_, Error>((index, chunk))
                })
                .await?;
            node.bind(&name, index.id()).await?;
            index
        }
        None => {
            return Err(format!(
                "the name {name:?} is not bound: client {client}'s history was lost"
            )
            .into());
        }
    };
    let last = retry(deadline, || async {
        Ok(index.start_read().await?.chunks.last().copied())
    })
    .await?
    .ok_or_else(|| {
        format!(
            "client {client}'s history index {} lists no chunk",
            index.id()
        )
    })?;
    let chunk = retry(deadline, || node.map::<HistoryChunk>(last)).await?;
    Ok(History {
        client,
        index,
        chunk,
    })
}

/// The inputs of one DebitCredit transaction.
#[derive(Clone, Copy, Debug)]
pub struct Pick {
    /// Account number.
    pub account: u32,
    /// Teller number.
    pub teller: u32,
    /// Branch number.
    pub branch: u32,
    /// Amount, in [-5000, 5000].
    pub delta: i64,
}

/// How clients choose their accounts, tellers and branches.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// pgbench's: account, teller and branch uniform over the database, independently.
    Uniform,
    /// DebitCredit's: the client's own branch (homed on its node), a teller of that branch,
    /// and an account of that branch with 85% probability, otherwise of another branch.
    Local,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Uniform => "uniform",
            Access::Local => "local",
        })
    }
}

/// A small, fast, seeded generator (xorshift64*), one per client.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, never 0.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }
}

/// The branch a client is bound to in `local` mode: one homed on its node (round-robin over
/// the node's branches), or, if its node homes none, branch `client % scale`.
pub fn home_branch(shape: Shape, node: u32, slot_on_node: u32) -> u32 {
    let mine = shape.branches_of(node);
    if mine.is_empty() {
        (node + slot_on_node * shape.nodes) % shape.scale
    } else {
        mine[(slot_on_node as usize) % mine.len()]
    }
}

/// Chooses a transaction's inputs.
pub fn pick(shape: Shape, access: Access, home: u32, rng: &mut Rng) -> Pick {
    let delta = i64::from(rng.below(10_001)) - 5_000;
    match access {
        Access::Uniform => Pick {
            account: rng.below(shape.accounts()),
            teller: rng.below(shape.tellers()),
            branch: rng.below(shape.scale),
            delta,
        },
        Access::Local => {
            let account_branch = if shape.scale == 1 || rng.below(100) < 85 {
                home
            } else {
                let other = rng.below(shape.scale - 1);
                if other >= home { other + 1 } else { other }
            };
            Pick {
                account: account_branch * ACCOUNTS_PER_BRANCH + rng.below(ACCOUNTS_PER_BRANCH),
                teller: home * TELLERS_PER_BRANCH + rng.below(TELLERS_PER_BRANCH),
                branch: home,
                delta,
            }
        }
    }
}

/// One DebitCredit transaction, in pgbench's order: account += delta, read the account's
/// balance, teller += delta, branch += delta, append a history row. Returns the account's new
/// balance. The history row goes to the client's current chunk; when it is full, a new chunk
/// is created and added to the client's index in the same transaction.
pub async fn debit_credit(db: &Db, hist: &mut History, txn: u64, p: Pick) -> Result<i64, Error> {
    let at = db.shape.locate(p.account);
    let block = db.account_block(at);
    let teller = db.teller(p.teller);
    let branch = &db.branches[p.branch as usize].branch;
    let (chunk, index) = (&hist.chunk, &hist.index);
    let slot = at.slot as usize;
    let (balance, fresh) = db
        .node
        .transaction(async |tx| {
            tx.write(block).await?.balances[slot] += p.delta;
            let balance = tx.read(block).await?.balances[slot];
            tx.write(teller).await?.balance += p.delta;
            tx.write(branch).await?.balance += p.delta;
            let entry = HistoryEntry {
                txn,
                account: p.account,
                teller: p.teller,
                branch: p.branch,
                delta: p.delta,
            };
            let mut current = tx.write(chunk).await?;
            if current.entries.len() < HISTORY_CHUNK_CAP {
                current.entries.push(entry);
                return Ok((balance, None));
            }
            drop(current);
            let fresh = tx
                .create(HistoryChunk {
                    entries: vec![entry],
                })
                .await?;
            tx.write(index).await?.chunks.push(fresh.id());
            Ok::<_, Error>((balance, Some(fresh)))
        })
        .await?;
    if let Some(fresh) = fresh {
        hist.chunk = fresh;
    }
    Ok(balance)
}

/// Everything the verification reads, in one read-only transaction.
pub struct Snapshot {
    /// Every account's balance, by account number.
    pub accounts: Vec<i64>,
    /// Every teller's balance.
    pub tellers: Vec<i64>,
    /// Every branch's balance.
    pub branches: Vec<i64>,
    /// Every history row of the given clients.
    pub history: Vec<HistoryEntry>,
}

/// Reads the whole database and the history of `clients` in one read-only transaction on
/// `db`'s node.
pub async fn snapshot(db: &Db, clients: &[u32]) -> Res<Snapshot> {
    let node = &db.node;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut indices = Vec::new();
    for &c in clients {
        let name = history_name(c);
        let id = lookup_retry(node, &name, deadline, false)
            .await?
            .ok_or_else(|| format!("client {c}'s history index ({name:?}) is not bound"))?;
        indices.push(retry(deadline, || node.map::<HistoryIndex>(id)).await?);
    }
    let snap = node
        .transaction(async |tx| {
            let mut s = Snapshot {
                accounts: Vec::with_capacity(db.shape.accounts() as usize),
                tellers: Vec::new(),
                branches: Vec::new(),
                history: Vec::new(),
            };
            for b in &db.branches {
                s.branches.push(tx.read(&b.branch).await?.balance);
                for t in &b.tellers {
                    s.tellers.push(tx.read(t).await?.balance);
                }
                for k in &b.blocks {
                    s.accounts.extend_from_slice(&tx.read(k).await?.balances);
                }
            }
            for index in &indices {
                let chunks = tx.read(index).await?.chunks.clone();
                for c in chunks {
                    let h = node.map::<HistoryChunk>(c).await?;
                    s.history.extend_from_slice(&tx.read(&h).await?.entries);
                }
            }
            Ok::<_, Error>(s)
        })
        .await?;
    Ok(snap)
}

/// The invariants over a snapshot; returns the sums and the violations found.
pub struct Checked {
    /// Sum of the account balances.
    pub accounts: i64,
    /// Sum of the teller balances.
    pub tellers: i64,
    /// Sum of the branch balances.
    pub branches: i64,
    /// Sum of the history deltas.
    pub history: i64,
    /// How many checks ran.
    pub checks: u32,
    /// What is wrong (empty if nothing).
    pub violations: Vec<String>,
}

/// Checks: the four sums are equal; every account, teller and branch balance equals the sum
/// of the history deltas that name it; the history's txn ids are unique and its rows name
/// existing accounts, tellers and branches with a delta in range.
pub fn check(shape: Shape, s: &Snapshot) -> Checked {
    let mut v = Vec::new();
    let mut checks = 0;
    let sum = |x: &[i64]| x.iter().sum::<i64>();
    let (accounts, tellers, branches) = (sum(&s.accounts), sum(&s.tellers), sum(&s.branches));
    let history: i64 = s.history.iter().map(|e| e.delta).sum();
    checks += 1;
    if !(accounts == tellers && tellers == branches && branches == history) {
        v.push(format!(
            "sums differ: accounts {accounts}, tellers {tellers}, branches {branches}, history deltas {history}"
        ));
    }
    checks += 1;
    if s.accounts.len() != shape.accounts() as usize
        || s.tellers.len() != shape.tellers() as usize
        || s.branches.len() != shape.scale as usize
    {
        v.push(format!(
            "the database has {} accounts, {} tellers, {} branches; expected {}, {}, {}",
            s.accounts.len(),
            s.tellers.len(),
            s.branches.len(),
            shape.accounts(),
            shape.tellers(),
            shape.scale
        ));
        return Checked {
            accounts,
            tellers,
            branches,
            history,
            checks,
            violations: v,
        };
    }
    let mut exp_a: HashMap<u32, i64> = HashMap::new();
    let mut exp_t = vec![0i64; s.tellers.len()];
    let mut exp_b = vec![0i64; s.branches.len()];
    let mut seen: HashMap<u64, u32> = HashMap::with_capacity(s.history.len());
    checks += 1;
    let mut bad_rows = 0;
    for e in &s.history {
        *seen.entry(e.txn).or_default() += 1;
        if e.account >= shape.accounts()
            || e.teller >= shape.tellers()
            || e.branch >= shape.scale
            || !(-5000..=5000).contains(&e.delta)
        {
            bad_rows += 1;
            if bad_rows <= 5 {
                v.push(format!("history row out of range: {e:?}"));
            }
            continue;
        }
        *exp_a.entry(e.account).or_default() += e.delta;
        exp_t[e.teller as usize] += e.delta;
        exp_b[e.branch as usize] += e.delta;
    }
    checks += 1;
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    if !dups.is_empty() {
        v.push(format!(
            "{} txn ids appear more than once in the history, e.g. {:#x} ({} times)",
            dups.len(),
            dups[0].0,
            dups[0].1
        ));
    }
    for (what, actual, expected) in [
        (
            "account",
            &s.accounts,
            &(0..s.accounts.len() as u32)
                .map(|a| exp_a.get(&a).copied().unwrap_or(0))
                .collect::<Vec<_>>(),
        ),
        ("teller", &s.tellers, &exp_t),
        ("branch", &s.branches, &exp_b),
    ] {
        checks += 1;
        let wrong: Vec<usize> = (0..actual.len())
            .filter(|&i| actual[i] != expected[i])
            .collect();
        if let Some(&i) = wrong.first() {
            v.push(format!(
                "{} {what} balances differ from their history, e.g. {what} {i}: balance {}, history says {}",
                wrong.len(),
                actual[i],
                expected[i]
            ));
        }
    }
    Checked {
        accounts,
        tellers,
        branches,
        history,
        checks,
        violations: v,
    }
}

/// Checks that the history holds exactly the acknowledged transactions (`acked`: txn id →
/// delta), once each, with their deltas. Returns (checks, violations).
pub fn check_acks(s: &Snapshot, acked: &HashMap<u64, i64>) -> (u32, Vec<String>) {
    let mut v = Vec::new();
    let in_history: HashMap<u64, i64> = s.history.iter().map(|e| (e.txn, e.delta)).collect();
    let lost: Vec<u64> = acked
        .keys()
        .filter(|t| !in_history.contains_key(t))
        .copied()
        .collect();
    if let Some(t) = lost.first() {
        v.push(format!(
            "{} acknowledged commits are missing from the history (lost), e.g. txn {t:#x}",
            lost.len()
        ));
    }
    let unacked: Vec<u64> = in_history
        .keys()
        .filter(|t| !acked.contains_key(t))
        .copied()
        .collect();
    if let Some(t) = unacked.first() {
        v.push(format!(
            "{} history rows belong to transactions that were not acknowledged, e.g. txn {t:#x}",
            unacked.len()
        ));
    }
    let wrong: Vec<u64> = acked
        .iter()
        .filter(|(t, d)| in_history.get(t).is_some_and(|h| h != *d))
        .map(|(t, _)| *t)
        .collect();
    if let Some(t) = wrong.first() {
        v.push(format!(
            "{} history rows carry another delta than their acknowledged commit, e.g. txn {t:#x}",
            wrong.len()
        ));
    }
    (3, v)
}

/// The fsync floor of `dir`'s file system: `samples` appends of 4 KiB, each followed by
/// `fdatasync` (`File::sync_data`). Returns the sorted latencies.
pub fn fsync_probe(dir: &Path, samples: usize) -> std::io::Result<Vec<Duration>> {
    let path = dir.join(format!("et1-fsync-probe-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let page = [0x5au8; 4096];
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        file.write_all(&page)?;
        file.sync_data()?;
        out.push(t.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    out.sort_unstable();
    Ok(out)
}

/// The `q` quantile of sorted samples.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    Some(sorted[i])
}
