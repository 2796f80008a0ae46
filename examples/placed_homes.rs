//! Three `crl-node` processes are the durable homes; this program only caches. It creates a
//! seat map with `Node::create_at` (each row homed at one of the servers, logged there),
//! books seats in transactions, kills one server with SIGKILL, starts it again from its data
//! dir, and finds every booking again.
//!
//! Run: `cargo run --release --example placed_homes` (builds `crl-node` first if it is not
//! next to this example's binary; `--rows N --bookings N` change the workload).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use crl::net::tls::ClusterCa;
use crl::{Error, Handle, Node, NodeConfig, NodeId, Region};

#[derive(Region, Debug, Clone)]
struct Row {
    seats: Vec<u32>,
}

#[derive(Parser, Debug)]
struct Args {
    /// Rows of seats (each a region, homed round robin at the three servers).
    #[arg(long, default_value_t = 12)]
    rows: usize,
    /// Seats per row.
    #[arg(long, default_value_t = 8)]
    seats: usize,
    /// Bookings to make before the crash.
    #[arg(long, default_value_t = 60)]
    bookings: u32,
}

const SERVERS: u32 = 3;

/// A `crl-node` process, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `crl-node` binary beside this example's target directory, built if missing.
fn crl_node_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    // target/<profile>/examples/placed_homes → target/<profile>/crl-node
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("unexpected executable path")?;
    let bin = profile_dir.join(format!("crl-node{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "crl-net", "--bin", "crl-node"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        println!("building crl-node: {cmd:?}");
        let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() || !bin.exists() {
            return Err(format!("could not build {}", bin.display()));
        }
    }
    Ok(bin)
}

fn free_udp_port() -> Result<u16, String> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(s.local_addr().map_err(|e| format!("bind: {e}"))?.port())
}

/// Certificates and the cluster file: servers 0..3 and the program (node 3), each with a
/// data dir (the program's holds only its transaction state).
fn make_cluster(dir: &Path) -> Result<PathBuf, String> {
    let ca = ClusterCa::generate("placed-homes").map_err(|e| e.to_string())?;
    ca.write_pem_files(dir).map_err(|e| e.to_string())?;
    let mut toml = String::from(
        "cluster_id = 17\nop_timeout_ms = 2000\nconnect_timeout_ms = 500\nca = \"ca.pem\"\n",
    );
    for id in 0..=SERVERS {
        ca.issue(NodeId(id))
            .and_then(|i| i.write_pem_files(dir))
            .map_err(|e| e.to_string())?;
        toml += &format!(
            "[[node]]\nid = {id}\naddr = \"127.0.0.1:{}\"\ndata_dir = \"data/n{id}\"\n",
            free_udp_port()?
        );
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, toml).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Starts `crl-node run` and waits (bounded) for its "listening" line.
fn start_server(bin: &Path, config: &Path, id: u32) -> Result<Server, String> {
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .args(["--id", &id.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(line) if line.contains("listening") => Ok(Server(child)),
        Ok(line) => Err(format!("server {id}: unexpected first line {line:?}")),
        Err(_) => Err(format!("server {id} did not report listening within 20 s")),
    }
}

/// Books the first free seat of `row` for `who`; false if the row is full.
async fn book(node: &Node, row: &Handle<Row>, who: u32) -> Result<bool, Error> {
    node.transaction(async |tx| {
        let mut r = tx.write(row).await?;
        match r.seats.iter_mut().find(|s| **s == 0) {
            Some(seat) => {
                *seat = who;
                Ok(true)
            }
            None => Ok(false),
        }
    })
    .await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let bin = crl_node_binary()?;
    let dir = std::env::temp_dir().join(format!("crl-placed-homes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let config = make_cluster(&dir)?;
    let mut servers = Vec::new();
    for id in 0..SERVERS {
        servers.push(start_server(&bin, &config, id)?);
    }
    println!(
        "{SERVERS} crl-node servers running (cluster dir {})",
        dir.display()
    );
    let program = Node::start(NodeConfig::from_file(&config, NodeId(SERVERS))?).await?;
    let started = Instant::now();
    let mut rows = Vec::new();
    for i in 0..args.rows {
        let home = NodeId(i as u32 % SERVERS);
        let seats = vec![0; args.seats];
        rows.push(program.create_at(home, Row { seats }).await?);
    }
    println!(
        "created {} rows at the servers in {:?} (row 0 is {}, row 1 is {})",
        rows.len(),
        started.elapsed(),
        rows[0].id(),
        rows.get(1).map_or("-".into(), |r| r.id().to_string())
    );
    let started = Instant::now();
    let mut booked = 0u32;
    for who in 1..=args.bookings {
        let row = &rows[(who as usize * 7) % rows.len()];
        if book(&program, row, who).await? {
            booked += 1;
        }
    }
    println!(
        "booked {booked} of {} seats in {:?} (transactions committed at the servers)",
        args.bookings,
        started.elapsed()
    );
    let ids: Vec<_> = rows.iter().map(|r| r.id()).collect();
    drop(rows);
    println!("killing server 1 (SIGKILL) and starting it again from its data dir");
    servers[1].0.kill()?;
    servers[1].0.wait()?;
    servers[1] = start_server(&bin, &config, 1)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let seats = loop {
        let attempt = async {
            let mut handles = Vec::new();
            for &id in &ids {
                handles.push(program.map::<Row>(id).await?);
            }
            program
                .transaction(async |tx| {
                    let mut all = Vec::new();
                    for h in &handles {
                        all.extend(tx.read(h).await?.seats.iter().copied());
                    }
                    Ok::<_, Error>(all)
                })
                .await
        };
        match attempt.await {
            Ok(seats) => break seats,
            Err(e) if Instant::now() < deadline => {
                println!("  not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let found = seats.iter().filter(|&&s| s != 0).count() as u32;
    let mut holders: Vec<_> = seats.iter().copied().filter(|&s| s != 0).collect();
    holders.sort_unstable();
    holders.dedup();
    println!(
        "after the restart: {found} seats booked, {} distinct passengers",
        holders.len()
    );
    program.shutdown().await;
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
    if found != booked || holders.len() as u32 != booked {
        return Err(format!("expected {booked} bookings, found {found}").into());
    }
    println!("every booking survived the crash of its home");
    Ok(())
}
