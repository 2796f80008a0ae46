//! A cluster of real processes on 127.0.0.1: two `crl-node` processes (nodes 0 and 1) and two
//! nodes in this test process (2 and 3), all from one cluster file with certificates made by
//! `crl-node cert`. The workload crosses process boundaries (the name directory's shards are
//! homed in every node, the counters at node 2 are written from node 3). Then node 1 is
//! killed with SIGKILL: requests that need it fail with a bounded error, the rest keeps working.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crl_core::{NodeId, Region};
use crl_net::{Error, Node, NodeConfig};

const BIN: &str = env!("CARGO_BIN_EXE_crl-node");

#[derive(Region, Clone, Debug, PartialEq)]
#[region(crate = ::crl_core)]
struct Counter {
    value: u64,
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
        .stderr(Stdio::inherit())
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

/// The name directory's shard for `name` (the same hash as `crl_net::node`).
fn shard(name: &str, members: u64) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) % members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_regions_and_a_killed_node_gives_bounded_errors() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("crl-multi-process-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let d = dir.0.to_str().unwrap();
    run(&["cert", "init", "--dir", d, "--cluster-name", "multi"]);
    run(&[
        "cert", "issue", "--dir", d, "--id", "0", "--id", "1", "--id", "2", "--id", "3",
    ]);
    let mut toml = String::from(
        "cluster_id = 99\nop_timeout_ms = 1500\nconnect_timeout_ms = 500\nca = \"ca.pem\"\n",
    );
    for id in 0..4 {
        toml += &format!(
            "[[node]]\nid = {id}\naddr = \"127.0.0.1:{}\"\n",
            free_udp_port()
        );
    }
    let config = dir.0.join("cluster.toml");
    std::fs::write(&config, toml).unwrap();

    let _p0 = start(&config, 0);
    let mut p1 = start(&config, 1);
    let n2 = Node::start(NodeConfig::from_file(&config, NodeId(2)).unwrap())
        .await
        .unwrap();
    let n3 = Node::start(NodeConfig::from_file(&config, NodeId(3)).unwrap())
        .await
        .unwrap();

    // Counters at node 2, bound to names whose shards live in every node (processes too).
    let mut counters = Vec::new();
    for i in 0..16 {
        let c = n2.create(Counter { value: 0 }).await.unwrap();
        n2.bind(&format!("counter/{i}"), c.id()).await.unwrap();
        counters.push(c);
    }
    let shards: std::collections::BTreeSet<u64> =
        (0..16).map(|i| shard(&format!("counter/{i}"), 4)).collect();
    assert!(
        shards.contains(&0) && shards.contains(&1),
        "names must land in the processes: {shards:?}"
    );
    // Node 3 finds them by name and writes them; node 2 writes them too.
    let writer = {
        let n3 = n3.clone();
        tokio::spawn(async move {
            for i in 0..16 {
                let id = n3.lookup(&format!("counter/{i}")).await.unwrap();
                let h = n3.map::<Counter>(id).await.unwrap();
                for _ in 0..10 {
                    h.start_write().await.unwrap().value += 1;
                }
            }
        })
    };
    for c in &counters {
        for _ in 0..10 {
            c.start_write().await.unwrap().value += 1;
        }
    }
    writer.await.unwrap();
    for c in &counters {
        assert_eq!(c.start_read().await.unwrap().value, 20);
    }
    let to_processes: u64 = n2
        .stats()
        .peers
        .iter()
        .filter(|p| p.node.0 < 2)
        .map(|p| p.messages_sent)
        .sum();
    assert!(
        to_processes > 0,
        "no traffic reached the crl-node processes"
    );

    // Kill node 1 (SIGKILL). Node 3 still holds a read-only copy of node 1's name table (a
    // lookup would be a local hit), but binding a name there needs the dead home: it fails,
    // bounded.
    p1.0.kill().unwrap();
    p1.0.wait().unwrap();
    let fresh = (0..1000)
        .map(|i| format!("later/{i}"))
        .find(|n| shard(n, 4) == 1)
        .unwrap();
    let started = Instant::now();
    let err = n3.bind(&fresh, counters[0].id()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::HomeUnreachable {
                home: NodeId(1),
                ..
            } | Error::TimedOut { .. }
        ),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited {:?}",
        started.elapsed()
    );
    // Regions homed elsewhere keep working.
    let h = n3.map::<Counter>(counters[0].id()).await.unwrap();
    h.start_write().await.unwrap().value += 1;
    assert_eq!(counters[0].start_read().await.unwrap().value, 21);

    n3.shutdown().await;
    n2.shutdown().await;
}
