//! `crl-node` processes as the durable homes of a cluster whose program only caches: three
//! `crl-node run` processes (nodes 0, 1, 2, each with a data dir) and a program (node 3, in
//! this test process) that creates its regions at them with `Node::create_at`, moves money
//! between them in transactions, and finds every committed transfer again after one home is
//! killed with SIGKILL and started again.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crl_core::{NodeId, Region};
use crl_net::{Error, Handle, Node, NodeConfig};

const BIN: &str = env!("CARGO_BIN_EXE_crl-node");

#[derive(Region, Clone, Debug, PartialEq)]
#[region(crate = ::crl_core)]
struct Account {
    balance: i64,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `crl-node` process, killed on drop if still running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().expect("run crl-node");
    assert!(
        out.status.success(),
        "crl-node {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `crl-node run` and waits (bounded) for its "listening" line.
fn start(config: &Path, id: u32) -> Proc {
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--id",
            &id.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn crl-node");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("crl-node did not report listening");
    assert!(line.contains("listening"), "unexpected first line: {line}");
    Proc(child)
}

/// Moves `amount` from `from` to `to` in one transaction (two homes: a two-phase commit the
/// homes decide, since the program homes none of it).
async fn transfer(
    node: &Node,
    from: &Handle<Account>,
    to: &Handle<Account>,
    amount: i64,
) -> Result<(), Error> {
    node.transaction(async |tx| {
        tx.write(from).await?.balance -= amount;
        tx.write(to).await?.balance += amount;
        Ok::<_, Error>(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_node_processes_home_what_a_caching_program_creates() {
    let dir = TempDir(std::env::temp_dir().join(format!("crl-placed-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let d = dir.0.to_str().unwrap();
    run(&["cert", "init", "--dir", d, "--cluster-name", "placed"]);
    run(&[
        "cert", "issue", "--dir", d, "--id", "0", "--id", "1", "--id", "2", "--id", "3",
    ]);
    let mut toml = String::from(
        "cluster_id = 41\nop_timeout_ms = 2000\nconnect_timeout_ms = 500\nca = \"ca.pem\"\n",
    );
    for id in 0..4 {
        toml += &format!(
            "[[node]]\nid = {id}\naddr = \"127.0.0.1:{}\"\ndata_dir = \"data/n{id}\"\n",
            free_udp_port()
        );
    }
    let config = dir.0.join("cluster.toml");
    std::fs::write(&config, toml).unwrap();
    let _p0 = start(&config, 0);
    let mut p1 = start(&config, 1);
    let _p2 = start(&config, 2);
    // The program: its data dir holds only its transaction state; it homes no data.
    let program = Node::start(NodeConfig::from_file(&config, NodeId(3)).unwrap())
        .await
        .unwrap();
    let mut accounts = Vec::new();
    for home in 0..3 {
        let h = program
            .create_at(NodeId(home), Account { balance: 100 })
            .await
            .unwrap();
        assert_eq!(h.id().home, NodeId(home));
        accounts.push(h);
    }
    let mut expected = [100i64; 3];
    for i in 0..30usize {
        let (a, b) = (i % 3, (i + 1) % 3);
        let amount = (i as i64 % 7) + 1;
        transfer(&program, &accounts[a], &accounts[b], amount)
            .await
            .unwrap();
        expected[a] -= amount;
        expected[b] += amount;
    }
    // SIGKILL the home of account 1 and start it again from its data dir.
    let _ = p1.0.kill();
    let _ = p1.0.wait();
    p1 = start(&config, 1);
    let ids: Vec<_> = accounts.iter().map(|h| h.id()).collect();
    drop(accounts);
    // The program learns of the restart at its next message to node 1; retry within a bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    let balances = loop {
        let attempt = async {
            let mut handles = Vec::new();
            for &id in &ids {
                handles.push(program.map::<Account>(id).await?);
            }
            program
                .transaction(async |tx| {
                    let mut b = Vec::new();
                    for h in &handles {
                        b.push(tx.read(h).await?.balance);
                    }
                    Ok::<_, Error>(b)
                })
                .await
        };
        match attempt.await {
            Ok(b) => break b,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reading the accounts after the restart: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("accounts unreadable 30 s after a home restarted: {e}"),
        }
    };
    assert_eq!(balances, expected, "a committed transfer was lost");
    drop(p1);
    program.shutdown().await;
}
