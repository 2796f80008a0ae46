//! A process stopped (SIGSTOP, a suspended VM) while its log writer waits for the disk is
//! not a sick disk: after it resumes, the store goes on. (Found by the nemesis in CI: a node
//! paused for 35 s during an fsync came back with its store failed, so every later commit
//! returned `LogFailed`.) In its own test binary: it stops its own process.

#![cfg(unix)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crl_core::{NodeId, RegionId};
use crl_net::durable::{DiskFault, DiskFaults, DiskOp, DurableStore, LogRecord, StoreConfig};

/// Every fsync takes a while once `slow` is set (the pause lands inside one).
#[derive(Debug, Default)]
struct SlowSync {
    slow: AtomicBool,
}

impl DiskFaults for SlowSync {
    fn before(&self, op: DiskOp) -> DiskFault {
        if matches!(op, DiskOp::Sync { .. }) && self.slow.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(600));
        }
        DiskFault::Proceed
    }
}

fn append_wait(store: &DurableStore, seq: u64) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    store.append(
        LogRecord::Create {
            region: RegionId::new(NodeId(0), seq),
            fingerprint: 1,
            type_name: "T".into(),
            bytes: vec![seq as u8],
        },
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv()
        .expect("completion ran")
        .map_err(|e| e.to_string())
}

#[test]
fn a_paused_process_does_not_fail_its_store() {
    // The fsync (600 ms) is within the i/o timeout (1 s); the 2 s stop of the process must
    // not count (a stalled disk is still caught: durable.rs, `a_stalled_fsync_...`).
    let pid = std::process::id();
    let tmp = tempfile::tempdir().unwrap();
    let disk = Arc::new(SlowSync::default());
    let mut config = StoreConfig::new(tmp.path());
    config.io_timeout = Duration::from_millis(1000);
    config.faults = Some(disk.clone());
    let (store, _) = DurableStore::open(config).expect("open");
    append_wait(&store, 2).unwrap();
    disk.slow.store(true, Ordering::Relaxed);
    let mut pauser = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sleep 0.15; kill -STOP {pid}; sleep 2; kill -CONT {pid}"
        ))
        .spawn()
        .expect("sh");
    let r = append_wait(&store, 3);
    let _ = pauser.wait();
    disk.slow.store(false, Ordering::Relaxed);
    assert_eq!(r, Ok(()), "a 2 s stop of the process failed the store");
    assert_eq!(append_wait(&store, 4), Ok(()));
    assert!(store.failure().is_none());
}
