//! The fsync floor, measured beside commit latency by benchmarks.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Measures the fsync floor: `n` appends of 4 KiB, each followed by `fdatasync`, to a scratch
/// file in `dir` (removed afterwards); returns each append's latency. Run it on the store's
/// file system to compare commit latency with what the disk allows.
pub fn fsync_probe(dir: &Path, n: usize) -> io::Result<Vec<Duration>> {
    let path = dir.join(format!("fsync-probe.{}.scratch", std::process::id()));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = vec![0xa5u8; 4096];
    let mut latencies = Vec::with_capacity(n);
    let mut measure = || -> io::Result<()> {
        for _ in 0..n {
            let start = Instant::now();
            file.write_all(&block)?;
            file.sync_data()?;
            latencies.push(start.elapsed());
        }
        Ok(())
    };
    let result = measure();
    drop(file);
    let removed = fs::remove_file(&path);
    result?;
    removed?;
    Ok(latencies)
}
