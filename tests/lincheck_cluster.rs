//! Reads and writes on a real in-process cluster (QUIC with mutual TLS on 127.0.0.1) are
//! linearizable per region: clients on every node record a history, and the Wing–Gong/Lowe
//! checker (`crl_core::lincheck`) judges it, one register per region.

use std::time::{Duration, Instant};

use crl::{Cluster, Region};
use crl_core::lincheck::{
    self, Operation, Outcome, Register, RegisterInput, RegisterMap, RegisterOutput,
};

#[derive(Region, Clone, Debug, PartialEq)]
struct Cell {
    value: u64,
}

const NODES: usize = 3;
const REGIONS: usize = 4;
const CLIENTS: usize = 6;
const OPS_PER_CLIENT: u64 = 80;

type Op = Operation<(usize, RegisterInput<u64>), RegisterOutput<u64>>;

/// A small deterministic generator (xorshift64*), one per client.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn nanos(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_reads_and_writes_are_linearizable() {
    let cluster = Cluster::local_with(NODES, |c| c.op_timeout = Duration::from_secs(5))
        .await
        .expect("local cluster");
    let mut ids = Vec::new();
    for r in 0..REGIONS {
        let h = cluster
            .node(r % NODES)
            .create(Cell { value: 0 })
            .await
            .unwrap();
        ids.push(h.id());
    }

    let start = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let node = cluster.node(c % NODES).clone();
        let ids = ids.clone();
        clients.push(tokio::spawn(async move {
            let mut handles = Vec::new();
            for &id in &ids {
                handles.push(node.map::<Cell>(id).await.unwrap());
            }
            let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1);
            let mut history: Vec<Op> = Vec::new();
            for seq in 0..OPS_PER_CLIENT {
                let key = (next(&mut rng) % REGIONS as u64) as usize;
                let h = &handles[key];
                let client = c as u64;
                if next(&mut rng).is_multiple_of(2) {
                    let call = nanos(start);
                    let op = match h.start_read().await {
                        Ok(g) => {
                            let v = g.value;
                            g.end();
                            let ret = nanos(start);
                            Operation::completed(
                                client,
                                (key, RegisterInput::Read),
                                call,
                                RegisterOutput::Value(v),
                                ret,
                            )
                        }
                        Err(_) => Operation::pending(client, (key, RegisterInput::Read), call),
                    };
                    history.push(op);
                } else {
                    // Unique values, so a read names the write it saw.
                    let v = (c as u64 + 1) * 1_000_000 + seq;
                    let call = nanos(start);
                    let op = match h.start_write().await {
                        Ok(mut g) => {
                            g.value = v;
                            g.end();
                            let ret = nanos(start);
                            Operation::completed(
                                client,
                                (key, RegisterInput::Write(v)),
                                call,
                                RegisterOutput::Written,
                                ret,
                            )
                        }
                        // Failed before access: it did not happen, but "maybe" is also right.
                        Err(_) => Operation::pending(client, (key, RegisterInput::Write(v)), call),
                    };
                    history.push(op);
                }
                if seq.is_multiple_of(8) {
                    tokio::task::yield_now().await;
                }
            }
            history
        }));
    }
    let mut history: Vec<Op> = Vec::new();
    for c in clients {
        history.extend(c.await.unwrap());
    }
    cluster.shutdown().await;

    let model = RegisterMap::new(Register::new(0u64));
    let completed = history.iter().filter(|o| o.ret.is_some()).count();
    assert!(completed as u64 > CLIENTS as u64 * OPS_PER_CLIENT * 9 / 10);
    // The clients really ran concurrently: some operations on one region overlap in time.
    let overlapping = history
        .iter()
        .enumerate()
        .filter(|&(i, a)| {
            history[i + 1..].iter().any(|b| {
                a.input.0 == b.input.0
                    && a.call <= b.ret.as_ref().map_or(u64::MAX, |r| r.time)
                    && b.call <= a.ret.as_ref().map_or(u64::MAX, |r| r.time)
            })
        })
        .count();
    assert!(overlapping > 0, "no two operations overlapped");
    match lincheck::check(&model, &history).unwrap() {
        Outcome::Linearizable => {}
        Outcome::Violation(v) => panic!("{}", v.explain(&history)),
        other => panic!("{other:?}"),
    }

    // A checker that cannot fail proves nothing: plant a read of a value never written.
    let planted = history
        .iter()
        .position(|o| matches!(o.input.1, RegisterInput::Read) && o.ret.is_some())
        .expect("some read completed");
    let mut bad = history.clone();
    bad[planted].ret.as_mut().unwrap().output = RegisterOutput::Value(7);
    match lincheck::check(&model, &bad).unwrap() {
        Outcome::Violation(v) => assert_eq!(bad[v.stuck].input.0, bad[planted].input.0),
        other => panic!("planted violation not caught: {other:?}"),
    }
}
