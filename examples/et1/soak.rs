//! `et1 crash-soak`: ET1 on real node processes that are killed with SIGKILL and restarted.
//!
//! The orchestrator makes a cluster directory (a CA and per-node certificates, written with
//! `crl::net::tls::{ClusterCa, NodeIdentity}`, a cluster TOML with a `data_dir` per node) and
//! spawns one `et1 node --cluster <toml> --id <n> --incarnation <k> ...` child per node: this
//! same binary. Each child starts its node from the cluster file, creates its branches (and
//! its clients' history indices) on its first start and binds them by name
//! (`et1/branch/<b>`, `et1/history/<client>`); after a restart it must find those names
//! bound again (recovered from its log) and reuses them. It waits until every branch of the
//! cluster is bound, prints `ready`, runs its clients and prints one line per acknowledged
//! commit (`ack <txn> <delta>`, flushed before the next transaction starts) and one per failed
//! transaction (`fail <txn> <error kind>`); progress goes to stderr.
//!
//! Each round the orchestrator waits a random 0.5–3 s, `kill -9`s a random node process and
//! restarts it with the same configuration (incarnation + 1, so txn ids never repeat:
//! client, incarnation and sequence number are packed in the id). After the rounds it lets the
//! cluster run `--settle-seconds` more, sends `stop` to every child's stdin (each stops its
//! clients and answers `stopped`), and asks node 0 to `verify`: in one read-only transaction
//! it reads the whole database and every client's history, checks the balances against each
//! other and against the history, and prints the history's `(txn, delta)` rows. The
//! orchestrator then checks that every acknowledged commit is in the history exactly once
//! with its delta (**lost commits must be 0**), and classifies history rows that were never
//! acknowledged: allowed only if the client's process was killed with the transaction in
//! flight, or the client got an error whose outcome is unknown (a timeout: the commit's reply
//! was lost); a row of a transaction that reported any other error is a violation.
//!
//! Stdin commands of a child: `stop`, `verify`, `exit` (end of input also exits).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use crl::net::tls::ClusterCa;
use crl::{Error, Node, NodeConfig, NodeId};

use crate::db::{self, Access, Db, History, Res, Rng, Shape};

/// How long a node may take to start, load and find its peers.
const STARTUP: Duration = Duration::from_secs(180);

/// `et1 crash-soak` flags.
#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// Rounds of kill -9 + restart (0 checks the plumbing only).
    #[arg(long, default_value_t = 20)]
    pub rounds: u32,
    /// Node processes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Clients per node process.
    #[arg(long, default_value_t = 2)]
    pub clients_per_node: u32,
    /// Scale factor (branches).
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// How clients choose accounts, tellers and branches.
    #[arg(long, value_enum, default_value_t = Access::Uniform)]
    pub access: Access,
    /// Accounts per AccountBlock region.
    #[arg(long, default_value_t = 100)]
    pub accounts_per_region: u32,
    /// Shortest wait before a kill, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub min_wait_ms: u64,
    /// Longest wait before a kill, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub max_wait_ms: u64,
    /// Seconds the cluster runs after the last round before the clients stop.
    #[arg(long, default_value_t = 2)]
    pub settle_seconds: u64,
    /// The nodes' operation timeout (bound on every remote wait), in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub op_timeout_ms: u64,
    /// Seed of the kill schedule and of the clients (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The cluster directory (default: a fresh one under the system temp dir, removed on
    /// success and kept on failure).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `et1 node` flags (set by the orchestrator).
#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// The cluster file.
    #[arg(long)]
    pub cluster: PathBuf,
    /// This node's id.
    #[arg(long)]
    pub id: u32,
    /// How many times this node was started before (0: first start, load the data).
    #[arg(long, default_value_t = 0)]
    pub incarnation: u32,
    /// Scale factor (branches).
    #[arg(long)]
    pub scale: u32,
    /// Clients on this node.
    #[arg(long)]
    pub clients_per_node: u32,
    /// How clients choose accounts, tellers and branches.
    #[arg(long, value_enum)]
    pub access: Access,
    /// Accounts per AccountBlock region.
    #[arg(long)]
    pub accounts_per_region: u32,
    /// Seed of the clients' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

// ---------------------------------------------------------------------------------------------
// txn ids: client (16 bits) | incarnation of its node process (16 bits) | sequence (32 bits)
// ---------------------------------------------------------------------------------------------

fn txn_id(client: u32, incarnation: u32, seq: u32) -> u64 {
    (u64::from(client & 0xffff) << 48) | (u64::from(incarnation & 0xffff) << 32) | u64::from(seq)
}

fn txn_client(txn: u64) -> u32 {
    (txn >> 48) as u32
}

fn txn_incarnation(txn: u64) -> u32 {
    ((txn >> 32) & 0xffff) as u32
}

// ---------------------------------------------------------------------------------------------
// The node process
// ---------------------------------------------------------------------------------------------

/// Runs one node process until `exit` or the end of stdin.
pub fn node_main(args: &NodeArgs) -> Res<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?
        .block_on(node_run(args))
}

/// Prints one line on stdout and flushes it; exits if the orchestrator is gone.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(3);
    }
}

/// `eprintln!` in a single write, so that lines of processes sharing the terminal do not mix.
macro_rules! elog {
    ($($arg:tt)*) => {{
        let _ = std::io::stderr().write_all(format!("{}\n", format_args!($($arg)*)).as_bytes());
    }};
}

/// The variant name of an error (what the orchestrator classifies by).
fn kind(e: &Error) -> &'static str {
    match e {
        Error::TimedOut { .. } => "TimedOut",
        Error::HomeUnreachable { .. } => "HomeUnreachable",
        Error::ShutDown => "ShutDown",
        Error::Conflict { .. } => "Conflict",
        Error::Wounded => "Wounded",
        Error::Deleted(_) => "Deleted",
        Error::NoSuchRegion(_) => "NoSuchRegion",
        Error::WrongType { .. } => "WrongType",
        Error::NotMapped(_) => "NotMapped",
        Error::ProtocolViolation(_) => "ProtocolViolation",
        Error::CommitOutcomeUnknown { .. } => "CommitOutcomeUnknown",
        Error::LogFailed(_) => "LogFailed",
        _ => "Other",
    }
}

/// Errors after which the transaction may or may not have committed (what
/// [`Error::maybe_committed`] says, by name).
fn outcome_unknown(kind: &str) -> bool {
    matches!(
        kind,
        "TimedOut" | "HomeUnreachable" | "ShutDown" | "CommitOutcomeUnknown" | "LogFailed"
    )
}

async fn node_run(args: &NodeArgs) -> Res<()> {
    let (id, inc) = (args.id, args.incarnation);
    let tag = format!("[n{id}#{inc}]");
    let config = NodeConfig::from_file(&args.cluster, NodeId(id))
        .map_err(|e| format!("{tag} bad cluster file: {e}"))?;
    let nodes = config.peers.len() as u32 + 1;
    let data_dir = config.data_dir.clone();
    let node = Node::start(config)
        .await
        .map_err(|e| format!("{tag} cannot start the node: {e}"))?;
    elog!(
        "{tag} node started on {} (data dir {})",
        node.local_addr(),
        data_dir.map_or("none".into(), |d| d.display().to_string())
    );
    let shape = Shape {
        scale: args.scale,
        nodes,
        per_block: args.accounts_per_region,
    };
    let deadline = Instant::now() + STARTUP;
    let t = Instant::now();
    for b in shape.branches_of(id) {
        let name = db::branch_name(b);
        match db::lookup_retry(&node, &name, deadline, false).await? {
            Some(dir) => elog!("{tag} branch {b}: found {name} = {dir}, reusing it"),
            None if inc == 0 => {
                let n = db::load_branch(&node, shape, b).await?;
                elog!(
                    "{tag} branch {b}: created {n} regions in {:.2} s",
                    t.elapsed().as_secs_f64()
                );
            }
            None => {
                return Err(format!(
                    "{tag} after a restart the name {name:?} is not bound: the branch's name (or the branch) was not recovered"
                )
                .into());
            }
        }
    }
    let mut histories = Vec::new();
    for slot in 0..args.clients_per_node {
        let client = id * args.clients_per_node + slot;
        histories.push(
            db::open_history(&node, client, inc == 0, STARTUP)
                .await
                .map_err(|e| format!("{tag} client {client}: {e}"))?,
        );
    }
    let db = Arc::new(
        Db::open(&node, shape, STARTUP)
            .await
            .map_err(|e| format!("{tag} waiting for the peers' branches: {e}"))?,
    );
    elog!(
        "{tag} ready after {:.2} s: {} clients",
        t.elapsed().as_secs_f64(),
        histories.len()
    );
    emit("ready");

    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let fails = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (slot, hist) in histories.into_iter().enumerate() {
        let home = db::home_branch(shape, id, slot as u32);
        let seed = args.seed ^ (u64::from(hist.client) << 32) ^ (u64::from(inc) << 48);
        tasks.push(tokio::spawn(soak_client(
            db.clone(),
            hist,
            args.access,
            home,
            seed,
            inc,
            stop.clone(),
            (commits.clone(), fails.clone()),
            tag.clone(),
        )));
    }
    let progress = {
        let (commits, fails, tag) = (commits.clone(), fails.clone(), tag.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                elog!(
                    "{tag} {} commits acknowledged, {} failed",
                    commits.load(Ordering::Relaxed),
                    fails.load(Ordering::Relaxed)
                );
            }
        })
    };

    // Commands from the orchestrator, one per line on stdin.
    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if cmd_tx.send(line.trim().to_owned()).is_err() {
                break;
            }
        }
    });
    while let Some(cmd) = cmd_rx.recv().await {
        match cmd.as_str() {
            "stop" => {
                stop.store(true, Ordering::Relaxed);
                for t in tasks.drain(..) {
                    t.await.map_err(|e| format!("{tag} client task: {e}"))?;
                }
                progress.abort();
                emit(&format!("stopped {}", commits.load(Ordering::Relaxed)));
            }
            "verify" => verify(&db, args.clients_per_node * nodes, &tag).await,
            "exit" => break,
            other => elog!("{tag} unknown command {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    node.shutdown().await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn soak_client(
    db: Arc<Db>,
    mut hist: History,
    access: Access,
    home: u32,
    seed: u64,
    inc: u32,
    stop: Arc<AtomicBool>,
    (commits, fails): (Arc<AtomicU64>, Arc<AtomicU64>),
    tag: String,
) {
    let mut rng = Rng::new(seed);
    let mut seq = 0u32;
    let mut reported = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let p = db::pick(db.shape, access, home, &mut rng);
        seq += 1;
        let txn = txn_id(hist.client, inc, seq);
        match db::debit_credit(&db, &mut hist, txn, p).await {
            Ok(_) => {
                emit(&format!("ack {txn} {}", p.delta));
                commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                emit(&format!("fail {txn} {}", kind(&e)));
                fails.fetch_add(1, Ordering::Relaxed);
                if reported < 5 || reported.is_power_of_two() {
                    elog!("{tag} client {}: txn {txn:#x} failed: {e}", hist.client);
                }
                reported += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads everything in one read-only transaction (retried while peers settle), checks the
/// balances, and prints the history rows for the orchestrator.
async fn verify(db: &Db, clients: u32, tag: &str) {
    let ids: Vec<u32> = (0..clients).collect();
    let mut attempt = 0;
    let snap = loop {
        attempt += 1;
        match db::snapshot(db, &ids).await {
            Ok(s) => break s,
            Err(e) if attempt < 10 => {
                elog!("{tag} verify: reading the snapshot failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                emit(&format!("verify error {e}"));
                emit("verify end");
                return;
            }
        }
    };
    let c = db::check(db.shape, &snap);
    emit(&format!(
        "verify sums accounts={} tellers={} branches={} history={} rows={} checks={} violations={}",
        c.accounts,
        c.tellers,
        c.branches,
        c.history,
        snap.history.len(),
        c.checks,
        c.violations.len()
    ));
    for v in &c.violations {
        emit(&format!("verify violation {v}"));
    }
    let mut out = String::new();
    for e in &snap.history {
        out.push_str(&format!("hist {} {}\n", e.txn, e.delta));
    }
    out.push_str("verify end");
    emit(&out);
}

// ---------------------------------------------------------------------------------------------
// The orchestrator
// ---------------------------------------------------------------------------------------------

/// A line of a child's stdout: (node, incarnation, line).
type Ev = (u32, u32, String);

/// A running child, killed on drop.
struct Proc {
    inc: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    ready: bool,
    stopped: bool,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Soak<'a> {
    args: &'a SoakArgs,
    exe: PathBuf,
    config: PathBuf,
    seed: u64,
    procs: Vec<Proc>,
    events: mpsc::Receiver<Ev>,
    sender: mpsc::Sender<Ev>,
    /// txn → (delta, how many acks).
    acks: HashMap<u64, (i64, u32)>,
    /// txn → error kind.
    fails: HashMap<u64, String>,
    /// (node, incarnation) of every process killed.
    killed: HashSet<(u32, u32)>,
    verify_lines: Vec<String>,
    history: Vec<(u64, i64)>,
    verify_done: bool,
    bad_lines: u64,
}

impl Soak<'_> {
    fn spawn(&mut self, node: u32, inc: u32) -> Res<Proc> {
        let a = self.args;
        let mut child = Command::new(&self.exe)
            .arg("node")
            .arg("--cluster")
            .arg(&self.config)
            .args(["--id", &node.to_string()])
            .args(["--incarnation", &inc.to_string()])
            .args(["--scale", &a.scale.to_string()])
            .args(["--clients-per-node", &a.clients_per_node.to_string()])
            .args(["--access", &a.access.to_string()])
            .args(["--accounts-per-region", &a.accounts_per_region.to_string()])
            .args(["--seed", &self.seed.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {} node: {e}", self.exe.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or("the child's stdout was not captured")?;
        let stdin = child.stdin.take();
        let tx = self.sender.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    // Only complete lines count: a process killed mid-write leaves a torn one.
                    Ok(n) if n > 0 && line.ends_with('\n') => {
                        let _ = tx.send((node, inc, line.trim_end().to_owned()));
                    }
                    _ => return,
                }
            }
        });
        Ok(Proc {
            inc,
            child,
            stdin,
            ready: false,
            stopped: false,
        })
    }

    fn handle(&mut self, ev: Ev) {
        let (node, inc, line) = ev;
        let current = self.procs.get(node as usize).is_some_and(|p| p.inc == inc);
        let mut parts = line.splitn(3, ' ');
        let (w0, w1, w2) = (parts.next(), parts.next(), parts.next());
        match (w0, w1, w2) {
            (Some("ack"), Some(t), Some(d)) => match (t.parse::<u64>(), d.parse::<i64>()) {
                (Ok(t), Ok(d)) => {
                    let e = self.acks.entry(t).or_insert((d, 0));
                    e.1 += 1;
                }
                _ => self.bad_lines += 1,
            },
            (Some("fail"), Some(t), Some(k)) => match t.parse::<u64>() {
                Ok(t) => {
                    self.fails.insert(t, k.to_owned());
                }
                Err(_) => self.bad_lines += 1,
            },
            (Some("hist"), Some(t), Some(d)) => match (t.parse::<u64>(), d.parse::<i64>()) {
                (Ok(t), Ok(d)) => self.history.push((t, d)),
                _ => self.bad_lines += 1,
            },
            (Some("ready"), None, None) if current => self.procs[node as usize].ready = true,
            (Some("stopped"), _, None) if current => self.procs[node as usize].stopped = true,
            (Some("verify"), Some("end"), None) => self.verify_done = true,
            (Some("verify"), ..) => {
                println!("node {node}: {line}");
                self.verify_lines.push(line);
            }
            _ => println!("node {node} (incarnation {inc}): {line}"),
        }
    }

    /// Handles events until `until`; fails if a child exits without being killed.
    fn pump(&mut self, until: Instant) -> Res<()> {
        loop {
            for (n, p) in self.procs.iter_mut().enumerate() {
                if let Some(status) = p
                    .child
                    .try_wait()
                    .map_err(|e| format!("checking node {n}'s process: {e}"))?
                {
                    // Drain what it printed before reporting.
                    while let Ok(ev) = self.events.try_recv() {
                        let _ = ev;
                    }
                    return Err(format!(
                        "node {n} (incarnation {}) exited on its own with {status}; see its messages above",
                        p.inc
                    )
                    .into());
                }
            }
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            match self
                .events
                .recv_timeout((until - now).min(Duration::from_millis(200)))
            {
                Ok(ev) => self.handle(ev),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the event channel closed".into());
                }
            }
        }
    }

    /// Pumps until `done` holds, at most `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration, done: impl Fn(&Self) -> bool) -> Res<()> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if Instant::now() >= deadline {
                return Err(format!("timed out after {timeout:?} waiting for {what}").into());
            }
            self.pump((Instant::now() + Duration::from_millis(50)).min(deadline))?;
        }
        Ok(())
    }

    fn send(&mut self, node: usize, cmd: &str) -> Res<()> {
        let p = &mut self.procs[node];
        let stdin = p
            .stdin
            .as_mut()
            .ok_or_else(|| format!("node {node}'s stdin is closed"))?;
        writeln!(stdin, "{cmd}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("sending {cmd:?} to node {node}: {e}"))?;
        Ok(())
    }
}

/// A UDP port that was free a moment ago on 127.0.0.1.
fn free_udp_port() -> Res<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind a UDP socket on 127.0.0.1: {e}"))?;
    Ok(s.local_addr()
        .map_err(|e| format!("UDP socket address: {e}"))?
        .port())
}

/// Writes the CA, the node certificates and the cluster file; returns the file's path.
fn make_cluster_dir(dir: &Path, args: &SoakArgs, seed: u64) -> Res<PathBuf> {
    let certs = dir.join("certs");
    let ca = ClusterCa::generate("et1-crash-soak")
        .map_err(|e| format!("cannot generate the cluster CA: {e}"))?;
    ca.write_pem_files(&certs)
        .map_err(|e| format!("cannot write the CA to {}: {e}", certs.display()))?;
    let mut toml = format!(
        "cluster_id = {}\nop_timeout_ms = {}\nconnect_timeout_ms = 500\nca = \"certs/ca.pem\"\n",
        seed & 0xffff_ffff,
        args.op_timeout_ms
    );
    for id in 0..args.nodes {
        ca.issue(NodeId(id))
            .map_err(|e| format!("cannot issue node {id}'s certificate: {e}"))?
            .write_pem_files(&certs)
            .map_err(|e| format!("cannot write node {id}'s certificate: {e}"))?;
        let data = dir.join("data").join(format!("n{id}"));
        std::fs::create_dir_all(&data)
            .map_err(|e| format!("cannot create {}: {e}", data.display()))?;
        toml += &format!(
            "\n[[node]]\nid = {id}\naddr = \"127.0.0.1:{}\"\ndata_dir = \"data/n{id}\"\n",
            free_udp_port()?
        );
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, toml).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Runs the crash soak; fails on any lost commit or broken invariant.
pub fn orchestrate(args: &SoakArgs) -> Res<()> {
    if args.nodes == 0 || args.scale == 0 || args.clients_per_node == 0 {
        return Err("--nodes, --scale and --clients-per-node must be positive".into());
    }
    if args.nodes * args.clients_per_node > 0xffff {
        return Err("at most 65535 clients".into());
    }
    if args.min_wait_ms > args.max_wait_ms {
        return Err("--min-wait-ms must not exceed --max-wait-ms".into());
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("et1-soak-{}", std::process::id())),
    };
    if dir.exists() {
        return Err(format!(
            "{} already exists: give a new --dir (the soak starts from empty data dirs)",
            dir.display()
        )
        .into());
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let config = make_cluster_dir(&dir, args, seed)?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    println!(
        "crash-soak: {} node processes x {} clients, scale {}, access {}, {} rounds, seed {seed}, cluster dir {}",
        args.nodes,
        args.clients_per_node,
        args.scale,
        args.access,
        args.rounds,
        dir.display()
    );
    let (sender, events) = mpsc::channel();
    let mut s = Soak {
        args,
        exe,
        config,
        seed,
        procs: Vec::new(),
        events,
        sender,
        acks: HashMap::new(),
        fails: HashMap::new(),
        killed: HashSet::new(),
        verify_lines: Vec::new(),
        history: Vec::new(),
        verify_done: false,
        bad_lines: 0,
    };
    let result = run(&mut s);
    // Stop every child that is still running (on failure too).
    s.procs.clear();
    match result {
        Ok(()) => {
            if args.dir.is_none() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Ok(())
        }
        Err(e) => Err(format!("{e} (cluster dir kept: {})", dir.display()).into()),
    }
}

fn run(s: &mut Soak<'_>) -> Res<()> {
    let args = s.args;
    let t0 = Instant::now();
    for n in 0..args.nodes {
        let p = s.spawn(n, 0)?;
        s.procs.push(p);
    }
    s.wait_for("every node to load and report ready", STARTUP, |s| {
        s.procs.iter().all(|p| p.ready)
    })?;
    println!(
        "all {} nodes ready after {:.1} s",
        args.nodes,
        t0.elapsed().as_secs_f64()
    );
    let mut rng = Rng::new(s.seed);
    for round in 1..=args.rounds {
        let wait = Duration::from_millis(
            args.min_wait_ms
                + u64::from(rng.below((args.max_wait_ms - args.min_wait_ms + 1) as u32)),
        );
        s.pump(Instant::now() + wait)?;
        let victim = rng.below(args.nodes);
        let old = &mut s.procs[victim as usize];
        let (pid, inc) = (old.child.id(), old.inc);
        old.child
            .kill()
            .map_err(|e| format!("kill -9 of node {victim} (pid {pid}): {e}"))?;
        old.child
            .wait()
            .map_err(|e| format!("waiting for node {victim} (pid {pid}): {e}"))?;
        old.stdin = None;
        s.killed.insert((victim, inc));
        println!(
            "round {round}/{}: after {:.1} s, kill -9 node {victim} (pid {pid}, incarnation {inc}); {} commits acknowledged so far; restarting it",
            args.rounds,
            wait.as_secs_f64(),
            s.acks.len()
        );
        let fresh = s.spawn(victim, inc + 1)?;
        // Dropping the old Proc only reaps it again (it is dead already).
        s.procs[victim as usize] = fresh;
    }
    s.wait_for("every node to be ready after its restart", STARTUP, |s| {
        s.procs.iter().all(|p| p.ready)
    })?;
    s.pump(Instant::now() + Duration::from_secs(args.settle_seconds))?;
    for n in 0..s.procs.len() {
        s.send(n, "stop")?;
    }
    s.wait_for(
        "every node to stop its clients",
        Duration::from_secs(120),
        |s| s.procs.iter().all(|p| p.stopped),
    )?;
    println!("clients stopped; node 0 verifies");
    s.send(0, "verify")?;
    s.wait_for("node 0's verification", Duration::from_secs(600), |s| {
        s.verify_done
    })?;
    for n in 0..s.procs.len() {
        s.send(n, "exit")?;
    }
    for (n, p) in s.procs.iter_mut().enumerate() {
        p.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = p
                .child
                .try_wait()
                .map_err(|e| format!("waiting for node {n}: {e}"))?
            {
                if !status.success() {
                    println!("node {n} exited with {status}");
                }
                break;
            }
            if Instant::now() >= deadline {
                println!("node {n} did not exit within 30 s; killing it");
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    while let Ok(ev) = s.events.try_recv() {
        s.handle(ev);
    }
    report(s)
}

fn report(s: &Soak<'_>) -> Res<()> {
    let mut violations: Vec<String> = Vec::new();
    let mut checks = 0u32;
    // The node's own invariant checks.
    let mut node_checks = 0u32;
    let mut node_violations = 0u32;
    for l in &s.verify_lines {
        if let Some(rest) = l.strip_prefix("verify sums ") {
            for kv in rest.split(' ') {
                match kv.split_once('=') {
                    Some(("checks", v)) => node_checks = v.parse().unwrap_or(0),
                    Some(("violations", v)) => node_violations = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
        } else if let Some(v) = l.strip_prefix("verify violation ") {
            violations.push(v.to_owned());
        } else if let Some(e) = l.strip_prefix("verify error ") {
            violations.push(format!("the verification could not read the database: {e}"));
        }
    }
    if node_checks == 0 {
        violations.push("node 0 reported no invariant checks".into());
    }
    checks += node_checks;
    let _ = node_violations;

    let mut in_history: HashMap<u64, (i64, u32)> = HashMap::with_capacity(s.history.len());
    for &(t, d) in &s.history {
        in_history.entry(t).or_insert((d, 0)).1 += 1;
    }
    checks += 1;
    let twice: Vec<u64> = s
        .acks
        .iter()
        .filter(|(_, (_, n))| *n > 1)
        .map(|(t, _)| *t)
        .collect();
    if let Some(t) = twice.first() {
        violations.push(format!(
            "{} txn ids were acknowledged more than once, e.g. {t:#x}",
            twice.len()
        ));
    }
    checks += 1;
    let lost: Vec<u64> = s
        .acks
        .keys()
        .filter(|t| !in_history.contains_key(t))
        .copied()
        .collect();
    if let Some(t) = lost.first() {
        violations.push(format!(
            "{} acknowledged commits are not in the history (LOST), e.g. txn {t:#x} (client {}, incarnation {})",
            lost.len(),
            txn_client(*t),
            txn_incarnation(*t)
        ));
    }
    checks += 1;
    let wrong_delta = s
        .acks
        .iter()
        .filter(|(t, (d, _))| in_history.get(t).is_some_and(|(h, _)| h != d))
        .count();
    if wrong_delta > 0 {
        violations.push(format!(
            "{wrong_delta} history rows carry another delta than their acknowledged commit"
        ));
    }
    checks += 1;
    let dup_rows = in_history.values().filter(|(_, n)| *n > 1).count();
    if dup_rows > 0 {
        violations.push(format!(
            "{dup_rows} txn ids appear more than once in the history"
        ));
    }
    checks += 1;
    let (mut client_died, mut reply_lost) = (0u64, 0u64);
    let mut unexplained = Vec::new();
    for &t in in_history.keys() {
        if s.acks.contains_key(&t) {
            continue;
        }
        let node = txn_client(t) / s.args.clients_per_node;
        match s.fails.get(&t) {
            Some(k) if outcome_unknown(k) => reply_lost += 1,
            Some(k) => unexplained.push(format!(
                "txn {t:#x} committed although its client was told it failed ({k})"
            )),
            None if s.killed.contains(&(node, txn_incarnation(t))) => client_died += 1,
            None => unexplained.push(format!(
                "txn {t:#x} is in the history but was neither acknowledged nor failed, and its node {node} (incarnation {}) was not killed",
                txn_incarnation(t)
            )),
        }
    }
    if !unexplained.is_empty() {
        violations.push(format!(
            "{} history rows are unexplained, e.g. {}",
            unexplained.len(),
            unexplained[0]
        ));
    }
    if s.bad_lines > 0 {
        violations.push(format!("{} malformed lines from the nodes", s.bad_lines));
    }
    let passed = checks - (violations.len() as u32).min(checks);
    println!(
        "crash-soak: rounds {}, commits acknowledged {}, commits lost {}, committed without ack {} (client killed {client_died}, reply lost {reply_lost}), failed transactions {}, history rows {}, invariant checks passed {passed}/{checks}",
        s.args.rounds,
        s.acks.len(),
        lost.len(),
        client_died + reply_lost,
        s.fails.len(),
        s.history.len()
    );
    if violations.is_empty() {
        Ok(())
    } else {
        for v in &violations {
            elog!("INVARIANT BROKEN: {v}");
        }
        Err(format!("{} violations", violations.len()).into())
    }
}
