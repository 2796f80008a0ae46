//! A nemesis run on real processes (as Jepsen does): N node processes on 127.0.0.1 share
//! registers (each process homes a few and reads and writes everyone's), every operation is
//! recorded with its wall-clock call and return times, and the orchestrator pauses processes
//! with SIGSTOP for longer than QUIC's idle timeout, then resumes them with SIGCONT. At the
//! end the histories of every process are merged and judged by the linearizability checker
//! (`crl_core::lincheck`, one register per region), and the run checks that nothing stayed
//! blocked: in the last seconds, after every pause healed, every operation completed.
//!
//! A pause longer than the peer timeout (12 s) gets the paused process fenced by the others
//! (DESIGN.md §6, rule 3): they reclaim its copies, and its plain writes not yet recalled are
//! lost (rule 4). So the paused process's operations from one second before the pause until
//! it resumes are judged as *indeterminate* (a write may or may not have taken effect; a read
//! constrains nothing); every other operation is checked as it returned, including every one
//! the paused process makes after it resumes: it must not serve a single stale hit then.
//!
//! With `--kill-rounds N`, each process has a data dir, writes are transactions (durable
//! at their home), and after the pauses the orchestrator kills processes with SIGKILL
//! (`kill -9`) and starts them again: committed writes must survive, and the operations a
//! killed process had in flight are indeterminate (each operation's invocation is recorded
//! before it starts, so nothing a dead process did is missing from the history).
//!
//! ```sh
//! cargo run --release --example nemesis -- --pause-secs 40 --rounds 3 --kill-rounds 3  # long run
//! cargo run --release --example nemesis -- --pause-secs 35 --rounds 1 --kill-rounds 1  # what CI runs
//! ```
//!
//! Exits 1 on any anomaly. (The `node` subcommand is the process the orchestrator starts.)

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use crl::net::tls::ClusterCa;
use crl::{Node, NodeConfig, NodeId, Region, RegionId};
use crl_core::lincheck::{
    self, DEFAULT_STEP_BUDGET, Operation, Outcome, Register, RegisterInput, RegisterMap,
    RegisterOutput,
};

#[derive(Region, Clone, Debug, PartialEq)]
struct Cell {
    value: u64,
}

#[derive(Parser)]
#[command(about = "Pause real crl node processes and check the recorded histories")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Node processes.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Registers homed at each node.
    #[arg(long, default_value_t = 2)]
    registers: u32,
    /// Client tasks per node.
    #[arg(long, default_value_t = 2)]
    clients: u32,
    /// Pause rounds (a different process each round).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// How long each pause lasts.
    #[arg(long, default_value_t = 35)]
    pause_secs: u64,
    /// Quiet time before the first pause and after each one.
    #[arg(long, default_value_t = 8)]
    settle_secs: u64,
    /// Kill rounds after the pauses: SIGKILL a process, wait `--down-secs`, start it again.
    /// Turns on data dirs and transactional writes.
    #[arg(long, default_value_t = 0)]
    kill_rounds: u32,
    /// How long a killed process stays down.
    #[arg(long, default_value_t = 3)]
    down_secs: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// One node process (started by the orchestrator).
    Node {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        id: u32,
        #[arg(long)]
        nodes: u32,
        #[arg(long)]
        registers: u32,
        #[arg(long)]
        clients: u32,
        /// Stop issuing operations at this wall-clock time (ms since the Unix epoch).
        #[arg(long)]
        until_ms: u64,
        /// Where to append the history.
        #[arg(long)]
        history: PathBuf,
        /// Which start of this process it is (0 for the first; client ids differ per start).
        #[arg(long, default_value_t = 0)]
        incarnation: u32,
        /// Write with transactions (durable with a data dir) instead of plain writes.
        #[arg(long)]
        tx_writes: bool,
    },
}

/// Wall-clock nanoseconds: every process is on this machine, so the clocks agree.
fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

const OP_TIMEOUT_MS: u64 = 2000;

fn main() {
    let args = Args::parse();
    match args.cmd {
        Some(Cmd::Node {
            ref config,
            id,
            nodes,
            registers,
            clients,
            until_ms,
            ref history,
            incarnation,
            tx_writes,
        }) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(node_main(NodeArgs {
                config,
                id,
                nodes,
                registers,
                clients,
                until_ms,
                history,
                incarnation,
                tx_writes,
            }));
        }
        None => std::process::exit(orchestrate(&args)),
    }
}

struct NodeArgs<'a> {
    config: &'a Path,
    id: u32,
    nodes: u32,
    registers: u32,
    clients: u32,
    until_ms: u64,
    history: &'a Path,
    incarnation: u32,
    tx_writes: bool,
}

async fn node_main(a: NodeArgs<'_>) {
    let NodeArgs {
        config,
        id,
        nodes,
        registers,
        clients,
        until_ms,
        history,
        incarnation,
        tx_writes,
    } = a;
    let node = Node::start(NodeConfig::from_file(config, NodeId(id)).unwrap())
        .await
        .unwrap();
    for r in 0..registers {
        let name = format!("reg/{id}/{r}");
        if incarnation > 0 && node.lookup(&name).await.is_ok() {
            continue; // recovered from the data dir
        }
        let h = node.create(Cell { value: 0 }).await.unwrap();
        node.bind(&name, h.id()).await.unwrap();
        std::mem::forget(h); // keep it mapped at the home
    }
    // Find everyone's registers (the others may still be starting).
    let mut ids: Vec<RegionId> = Vec::new();
    for n in 0..nodes {
        for r in 0..registers {
            let name = format!("reg/{n}/{r}");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match node.lookup(&name).await {
                    Ok(id) => {
                        ids.push(id);
                        break;
                    }
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(e) => panic!("n{id}: lookup {name}: {e}"),
                }
            }
        }
    }
    println!("ready");
    // Appended to by every start of this process; each line is one write(2), so a SIGKILL
    // loses no line already written.
    let file = Arc::new(parking_lot::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(history)
            .unwrap(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (node, ids, file, stop) = (node.clone(), ids.clone(), file.clone(), stop.clone());
        let client = u64::from(id * 100 + incarnation * 10 + c);
        tasks.push(tokio::spawn(async move {
            let mut handles = Vec::new();
            for &rid in &ids {
                handles.push(node.map::<Cell>(rid).await.unwrap());
            }
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (client + 1);
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let key = (rng % handles.len() as u64) as usize;
                let write = rng >> 32 & 1 == 1;
                let value = (client + 1) * 1_000_000_000 + seq;
                let call = wall_ns();
                // The invocation first: an operation cut short by a SIGKILL stays in the
                // history as indeterminate.
                file.lock()
                    .write_all(
                        format!(
                            "i {client} {seq} {key} {} {value} {call}\n",
                            if write { "w" } else { "r" }
                        )
                        .as_bytes(),
                    )
                    .unwrap();
                let outcome = if write && tx_writes {
                    let h = &handles[key];
                    node.transaction(async |tx| {
                        tx.write(h).await?.value = value;
                        Ok::<_, crl::Error>(())
                    })
                    .await
                    .map(|()| value)
                } else if write {
                    match handles[key].start_write().await {
                        Ok(mut g) => {
                            g.value = value;
                            g.end();
                            Ok(value)
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    match handles[key].start_read().await {
                        Ok(g) => Ok(g.value),
                        Err(e) => Err(e),
                    }
                };
                let ret = wall_ns();
                let line = match outcome {
                    Ok(v) => format!("o {client} {seq} {v} {ret}\n"),
                    // A failed plain access never happened (the value is written only after
                    // the grant); a failed transaction did not commit, unless its error says
                    // it may have (`Error::maybe_committed`: a timeout or an unreachable home
                    // during the commit, an unknown outcome, a failed log): then the outcome
                    // is unknown and the write stays open.
                    Err(e) if write && tx_writes && e.maybe_committed() => {
                        format!("? {client} {seq} {e}\n")
                    }
                    Err(e) => format!("f {client} {seq} {e}\n"),
                };
                file.lock().write_all(line.as_bytes()).unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }));
    }
    let until = UNIX_EPOCH + Duration::from_millis(until_ms);
    while SystemTime::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    file.lock().flush().unwrap();
    let l = node.stats().liveness;
    println!("stats {} {} {}", l.fences, l.fenced_by_peers, l.lease_waits);
    println!("done");
    // Stay up while the others finish their last operations.
    tokio::time::sleep(Duration::from_secs(3)).await;
    node.shutdown().await;
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.id().to_string()])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(p: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &p.0.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} failed");
}

type Op = Operation<(usize, RegisterInput<u64>), RegisterOutput<u64>>;

/// A node process and the lines it prints.
struct Running {
    proc: Proc,
    lines: std::sync::mpsc::Receiver<String>,
}

fn spawn_node(args: &Args, dir: &Path, id: u32, incarnation: u32, until_ms: u64) -> Running {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(&exe);
    cmd.args([
        "node",
        "--config",
        dir.join("cluster.toml").to_str().unwrap(),
        "--id",
        &id.to_string(),
        "--nodes",
        &args.nodes.to_string(),
        "--registers",
        &args.registers.to_string(),
        "--clients",
        &args.clients.to_string(),
        "--until-ms",
        &until_ms.to_string(),
        "--history",
        dir.join(format!("history-{id}")).to_str().unwrap(),
        "--incarnation",
        &incarnation.to_string(),
    ]);
    if args.kill_rounds > 0 {
        cmd.arg("--tx-writes");
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Running {
        proc: Proc(child),
        lines: rx,
    }
}

fn wait_ready(r: &Running, id: u32) -> bool {
    match r.lines.recv_timeout(Duration::from_secs(60)) {
        Ok(l) if l == "ready" => true,
        other => {
            eprintln!("node {id} did not start: {other:?}");
            false
        }
    }
}

/// One operation as the history files tell it.
struct Recorded {
    client: u64,
    key: usize,
    write: bool,
    value: u64,
    call: u64,
    /// `Some(Ok((value, ret)))`, `Some(Err(reason))` if it failed (never applied), `None` if
    /// it never returned (its process was killed) or its outcome is unknown.
    end: Option<Result<(u64, u64), String>>,
}

fn read_history(text: &str, ops: &mut Vec<Recorded>) {
    let mut open: std::collections::HashMap<(u64, u64), usize> = Default::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let id = (f[1].parse::<u64>().unwrap(), f[2].parse::<u64>().unwrap());
        match f[0] {
            "i" => {
                open.insert(id, ops.len());
                ops.push(Recorded {
                    client: id.0,
                    key: f[3].parse().unwrap(),
                    write: f[4] == "w",
                    value: f[5].parse().unwrap(),
                    call: f[6].parse().unwrap(),
                    end: None,
                });
            }
            "o" => {
                let i = open.remove(&id).expect("an end without its invocation");
                ops[i].end = Some(Ok((f[3].parse().unwrap(), f[4].parse().unwrap())));
            }
            "f" => {
                let i = open.remove(&id).expect("an end without its invocation");
                ops[i].end = Some(Err(f[3..].join(" ")));
            }
            // Outcome unknown: stays open.
            "?" => {
                open.remove(&id);
            }
            other => panic!("bad history line kind {other:?}"),
        }
    }
}

fn orchestrate(args: &Args) -> i32 {
    let dir = std::env::temp_dir().join(format!("crl-nemesis-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = ClusterCa::generate("nemesis").unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    let mut toml = format!(
        "cluster_id = 4242\nop_timeout_ms = {OP_TIMEOUT_MS}\nconnect_timeout_ms = 1000\nca = \"ca.pem\"\n"
    );
    for id in 0..args.nodes {
        ca.issue(NodeId(id)).unwrap().write_pem_files(&dir).unwrap();
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        toml += &format!("[[node]]\nid = {id}\naddr = \"127.0.0.1:{port}\"\n");
        if args.kill_rounds > 0 {
            toml += &format!("data_dir = \"data-{id}\"\n");
        }
    }
    std::fs::write(dir.join("cluster.toml"), toml).unwrap();
    let total = args.settle_secs
        + u64::from(args.rounds) * (args.pause_secs + args.settle_secs)
        + u64::from(args.kill_rounds) * (args.down_secs + args.settle_secs + 5);
    let start_ms = wall_ns() / 1_000_000;
    let until_ms = start_ms + 20_000 + total * 1000;
    let mut nodes: Vec<Running> = (0..args.nodes)
        .map(|id| spawn_node(args, &dir, id, 0, until_ms))
        .collect();
    for (id, r) in nodes.iter().enumerate() {
        if !wait_ready(r, id as u32) {
            return 1;
        }
    }
    println!(
        "nemesis: {} processes, {} registers each, {} clients each; {} pauses of {} s; {} kills (down {} s){}",
        args.nodes,
        args.registers,
        args.clients,
        args.rounds,
        args.pause_secs,
        args.kill_rounds,
        args.down_secs,
        if args.kill_rounds > 0 {
            ", data dirs and transactional writes"
        } else {
            ""
        }
    );
    std::thread::sleep(Duration::from_secs(args.settle_secs));
    let mut last_fault_end_ns = 0;
    // (victim, from, until): the victim's operations called in [from, until) are judged as
    // indeterminate (see the module docs).
    let mut lossy: Vec<(u32, u64, u64)> = Vec::new();
    for round in 0..args.rounds {
        let victim_id = round % args.nodes;
        let victim = &nodes[victim_id as usize].proc;
        println!(
            "  round {round}: SIGSTOP node {victim_id} for {} s",
            args.pause_secs
        );
        let paused_ns = wall_ns();
        signal(victim, "-STOP");
        std::thread::sleep(Duration::from_secs(args.pause_secs));
        signal(victim, "-CONT");
        last_fault_end_ns = wall_ns();
        lossy.push((victim_id, paused_ns - 1_000_000_000, last_fault_end_ns));
        println!("  round {round}: SIGCONT node {victim_id}");
        std::thread::sleep(Duration::from_secs(args.settle_secs));
    }
    let mut incarnations = vec![0u32; args.nodes as usize];
    for round in 0..args.kill_rounds {
        let victim_id = (round + args.rounds) % args.nodes;
        println!(
            "  kill {round}: SIGKILL node {victim_id}, down for {} s",
            args.down_secs
        );
        let killed_ns = wall_ns();
        signal(&nodes[victim_id as usize].proc, "-KILL");
        std::thread::sleep(Duration::from_secs(args.down_secs));
        incarnations[victim_id as usize] += 1;
        let r = spawn_node(
            args,
            &dir,
            victim_id,
            incarnations[victim_id as usize],
            until_ms,
        );
        if !wait_ready(&r, victim_id) {
            return 1;
        }
        last_fault_end_ns = wall_ns();
        // Writes are transactions: durable at their home, or never applied. Nothing a
        // killed process did is judged leniently, except what it had in flight.
        nodes[victim_id as usize] = r; // drops (reaps) the killed one
        println!(
            "  kill {round}: node {victim_id} started again ({:.1} s after the kill)",
            (last_fault_end_ns - killed_ns) as f64 / 1e9
        );
        std::thread::sleep(Duration::from_secs(args.settle_secs));
    }
    let (mut fences, mut told, mut lease_waits) = (0u64, 0u64, 0u64);
    for (id, r) in nodes.iter().enumerate() {
        loop {
            match r.lines.recv_timeout(Duration::from_secs(total + 60)) {
                Ok(l) if l == "done" => break,
                Ok(l) if l.starts_with("stats ") => {
                    let v: Vec<u64> = l[6..].split(' ').map(|x| x.parse().unwrap()).collect();
                    fences += v[0];
                    told += v[1];
                    lease_waits += v[2];
                }
                other => {
                    eprintln!("node {id} did not finish: {other:?}");
                    return 1;
                }
            }
        }
    }
    drop(nodes);

    // Merge and judge the histories.
    let mut recorded = Vec::new();
    for id in 0..args.nodes {
        let text = std::fs::read_to_string(dir.join(format!("history-{id}"))).unwrap();
        read_history(&text, &mut recorded);
    }
    let mut history: Vec<Op> = Vec::new();
    let mut failures: Vec<(u64, String)> = Vec::new();
    let (mut indeterminate, mut unfinished) = (0usize, 0usize);
    // Writes reported as never applied, and the values reads returned: a read of such a write
    // is named below (the checker then also rejects the history).
    let mut failed_writes: std::collections::HashMap<u64, (u64, String)> = Default::default();
    let mut reads_seen: Vec<(u64, u64)> = Vec::new();
    for r in recorded {
        match &r.end {
            Some(Err(e)) if r.write => {
                failed_writes.insert(r.value, (r.client, e.clone()));
            }
            Some(Ok((value, _))) if !r.write => reads_seen.push((r.client, *value)),
            _ => {}
        }
        let input = (
            r.key,
            if r.write {
                RegisterInput::Write(r.value)
            } else {
                RegisterInput::Read
            },
        );
        let in_lossy_window = lossy.iter().any(|&(victim, from, until)| {
            r.client / 100 == u64::from(victim) && r.call >= from && r.call < until
        });
        match r.end {
            // A failed access or transaction never happened: counted, not checked.
            Some(Err(e)) => failures.push((r.call, e)),
            None => {
                unfinished += 1;
                history.push(Operation::pending(r.client, input, r.call));
            }
            Some(Ok(_)) if in_lossy_window => {
                // Rule 4: may have been lost when the process was fenced or killed.
                indeterminate += 1;
                history.push(Operation::pending(r.client, input, r.call));
            }
            Some(Ok((value, ret))) => {
                let output = if r.write {
                    RegisterOutput::Written
                } else {
                    RegisterOutput::Value(value)
                };
                history.push(Operation::completed(r.client, input, r.call, output, ret));
            }
        }
    }
    let completed = history.len() - indeterminate - unfinished;
    let failed = failures.len();
    // What the failures were (the error's text up to its first colon), most frequent first.
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, e) in &failures {
        let kind = e.split(':').next().unwrap_or(e).trim();
        *kinds.entry(kind.chars().take(60).collect()).or_default() += 1;
    }
    let mut kinds: Vec<(String, usize)> = kinds.into_iter().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    for (kind, n) in kinds.iter().take(6) {
        println!("  failed {n}×: {kind}");
    }
    // Nothing blocked after the faults healed: every operation that started more than
    // `op_timeout` + 5 s after the last one completed.
    let heal_bound_ns = (OP_TIMEOUT_MS + 5_000) * 1_000_000;
    let late: Vec<&String> = failures
        .iter()
        .filter(|(call, _)| *call > last_fault_end_ns + heal_bound_ns)
        .map(|(_, e)| e)
        .collect();
    let late_failures = late.len();
    for e in late.iter().take(5) {
        println!("  late failure: {e}");
    }
    let late_ok = history
        .iter()
        .filter(|o| o.ret.is_some() && o.call > last_fault_end_ns + heal_bound_ns)
        .count();
    let model = RegisterMap::new(Register::new(0u64));
    let started = Instant::now();
    // Open writes whose value no read saw cannot change the verdict; left in, hundreds of them
    // (a paused process's) can exhaust the checker's step budget.
    let unobserved = lincheck::drop_unobserved_pending_writes(&mut history);
    // Twenty times the default budget: a release build spends at most seconds on it, and a
    // run that exhausts even that reports "gave up", never "linearizable".
    let verdict = lincheck::check_with_budget(&model, &history, 20 * DEFAULT_STEP_BUDGET).unwrap();
    println!(
        "histories: {} operations ({completed} completed and checked, {indeterminate} around a pause or kill judged indeterminate, {unfinished} cut short by a kill, {failed} failed or timed out: never applied; {unobserved} open writes nobody read set aside), checked in {:?}",
        completed + indeterminate + unfinished + failed,
        started.elapsed()
    );
    println!(
        "fences: {fences} (processes told they were fenced: {told}); accesses that waited for a lease renewal: {lease_waits}"
    );
    println!(
        "after the last fault healed (+{} s): {late_ok} completed, {late_failures} failed",
        heal_bound_ns / 1_000_000_000
    );
    let mut anomalies = 0;
    for (reader, value) in &reads_seen {
        if let Some((writer, e)) = failed_writes.get(value) {
            println!(
                "client {reader} read {value}, written by client {writer} whose write failed (reported as never applied): {e}"
            );
        }
    }
    match verdict {
        Outcome::Linearizable => println!("linearizable: yes"),
        Outcome::Violation(v) => {
            anomalies += 1;
            println!("NOT LINEARIZABLE:\n{}", v.explain(&history));
        }
        other => {
            anomalies += 1;
            println!("checker gave up: {other:?}");
        }
    }
    // A checker that cannot fail proves nothing: a read of a value never written must be
    // caught in this very history.
    if let Some(i) = history
        .iter()
        .position(|o| matches!(o.input.1, RegisterInput::Read) && o.ret.is_some())
    {
        let mut planted = history.clone();
        planted[i].ret.as_mut().expect("completed").output = RegisterOutput::Value(u64::MAX);
        match lincheck::check(&model, &planted).unwrap() {
            Outcome::Violation(_) => println!("planted stale read: caught"),
            other => {
                println!("planted stale read NOT caught: {other:?}");
                anomalies += 1;
            }
        }
    }
    if args.rounds + args.kill_rounds > 0 && failed + unfinished == 0 {
        println!("no operation failed during the faults: the nemesis did nothing");
        anomalies += 1;
    }
    if args.pause_secs > 15 && args.rounds > 0 && (fences == 0 || told == 0) {
        println!("a pause past the peer timeout fenced nobody");
        anomalies += 1;
    }
    if late_failures > 0 || late_ok == 0 {
        println!("operations still failing after the faults healed: a region stayed blocked");
        anomalies += 1;
    }
    println!("anomalies: {anomalies}");
    if anomalies > 0 {
        // Kept for a post-mortem: each process's raw history (with every error's text).
        println!("histories kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    i32::from(anomalies > 0)
}
