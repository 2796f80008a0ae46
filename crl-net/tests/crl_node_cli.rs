//! The `crl-node` binary's command line: certificate commands and configuration errors.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_crl-node");

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "crl-node-cli-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn crl_node(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run crl-node")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// `cert init` then `cert issue` in `dir`.
fn make_certs(dir: &Path, ids: &[&str]) {
    let out = crl_node(&["cert", "init", "--dir", s(dir), "--cluster-name", "test"]);
    assert!(out.status.success(), "cert init: {}", stderr(&out));
    let mut args = vec!["cert", "issue", "--dir", s(dir)];
    for id in ids {
        args.extend(["--id", id]);
    }
    let out = crl_node(&args);
    assert!(out.status.success(), "cert issue: {}", stderr(&out));
}

#[test]
fn cert_init_and_issue_write_the_files() {
    let tmp = TempDir::new("certs");
    let dir = tmp.path().join("certs"); // created by `cert init`
    make_certs(&dir, &["0", "1,2"]);
    for name in [
        "ca.pem",
        "ca-key.pem",
        "node-0.pem",
        "node-0-key.pem",
        "node-1.pem",
        "node-1-key.pem",
        "node-2.pem",
        "node-2-key.pem",
    ] {
        let text =
            std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains("-----BEGIN "), "{name} is not PEM");
    }

    // Issuing again refuses to overwrite, unless forced.
    let out = crl_node(&["cert", "issue", "--dir", s(&dir), "--id", "1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("node-1.pem already exists"),
        "{}",
        stderr(&out)
    );
    let out = crl_node(&["cert", "issue", "--dir", s(&dir), "--id", "1", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn cert_init_twice_needs_force() {
    let tmp = TempDir::new("init-twice");
    let dir = s(tmp.path());
    let out = crl_node(&["cert", "init", "--dir", dir]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ca = std::fs::read(tmp.path().join("ca.pem")).unwrap();

    let out = crl_node(&["cert", "init", "--dir", dir]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("ca.pem already exists"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert_eq!(
        std::fs::read(tmp.path().join("ca.pem")).unwrap(),
        ca,
        "CA untouched"
    );

    let out = crl_node(&["cert", "init", "--dir", dir, "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(
        std::fs::read(tmp.path().join("ca.pem")).unwrap(),
        ca,
        "new CA"
    );
}

#[test]
fn cert_issue_without_ca_fails() {
    let tmp = TempDir::new("no-ca");
    let out = crl_node(&["cert", "issue", "--dir", s(tmp.path()), "--id", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read the CA"),
        "{}",
        stderr(&out)
    );
}

fn write_cluster_file(dir: &Path, addr0: &str) -> PathBuf {
    let path = dir.join("cluster.toml");
    std::fs::write(
        &path,
        format!(
            "cluster_id = 7\nca = \"certs/ca.pem\"\n\n\
             [[node]]\nid = 0\naddr = \"{addr0}\"\n\n\
             [[node]]\nid = 1\naddr = \"127.0.0.1:1\"\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn run_with_unknown_id_fails_clearly() {
    let tmp = TempDir::new("unknown-id");
    let config = write_cluster_file(tmp.path(), "127.0.0.1:7000");
    for args in [
        vec!["run", "--config", s(&config), "--id", "5"],
        vec!["--config", s(&config), "--id", "5"],
    ] {
        let out = crl_node(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("node id 5 is not in the cluster file"),
            "{err}"
        );
        assert!(err.contains("cluster.toml"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    }
}

#[test]
fn run_with_bad_config_fails_clearly() {
    let tmp = TempDir::new("bad-config");
    let config = write_cluster_file(tmp.path(), "nowhere");
    let out = crl_node(&["run", "--config", s(&config), "--id", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bad address \"nowhere\""),
        "{}",
        stderr(&out)
    );

    let missing = tmp.path().join("missing.toml");
    let out = crl_node(&["run", "--config", s(&missing), "--id", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(crl_node(&[]).status.code(), Some(2));
    assert_eq!(crl_node(&["--config", "x.toml"]).status.code(), Some(2));
    assert_eq!(
        crl_node(&["cert", "issue", "--dir", "x"]).status.code(),
        Some(2)
    );
    assert_eq!(crl_node(&["run", "--id", "zero"]).status.code(), Some(2));
}

/// With a valid configuration the node announces where it listens, runs until SIGTERM and
/// exits 0.
#[test]
fn run_with_valid_config_until_sigterm() {
    let tmp = TempDir::new("run");
    make_certs(&tmp.path().join("certs"), &["0", "1"]);
    let config = write_cluster_file(tmp.path(), "127.0.0.1:0");
    let mut child = Command::new(BIN)
        .args(["run", "--config", s(&config), "--id", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining, so that the child never writes into a closed pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        panic!("crl-node did not start within 30 s");
    };
    if line.is_empty() {
        let out = child.wait_with_output().unwrap();
        panic!(
            "crl-node exited ({}) without starting: {}",
            out.status,
            stderr(&out)
        );
    }
    assert!(
        line.starts_with("crl-node n0 listening on 127.0.0.1:"),
        "{line}"
    );
    assert!(line.trim_end().ends_with(", cluster 7"), "{line}");
    #[cfg(unix)]
    {
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    #[cfg(not(unix))]
    {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A data dir with `n` records (each creating one region), closed cleanly; returns the
/// offsets where records start in `log.<1>`.
fn make_store(dir: &Path, n: u64) -> Vec<u64> {
    use crl_net::durable::{DurableStore, LogRecord, StoreConfig};
    let (store, _) = DurableStore::open(StoreConfig::new(dir)).unwrap();
    let mut starts = Vec::new();
    for seq in 2..2 + n {
        starts.push(store.stats().log_bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        store.append(
            LogRecord::Create {
                region: crl_core::RegionId::new(crl_core::NodeId(1), seq),
                fingerprint: 1,
                type_name: "T".into(),
                bytes: vec![seq as u8; 100],
            },
            Box::new(move |r| tx.send(r).unwrap()),
        );
        rx.recv().unwrap().unwrap();
    }
    store.close();
    starts
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn log_verify_reports_a_healthy_log_and_changes_nothing() {
    let tmp = TempDir::new("log-ok");
    let dir = tmp.path().join("data");
    make_store(&dir, 5);
    let log = dir.join(format!("log.{:020}", 1));
    let before = std::fs::read(&log).unwrap();
    let out = crl_node(&["log", "verify", "--data-dir", s(&dir)]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("records: 5 valid in 1 log generations"),
        "{text}"
    );
    assert!(text.contains("checkpoint: none"), "{text}");
    assert!(text.contains("ok: the node can start"), "{text}");
    assert_eq!(std::fs::read(&log).unwrap(), before);
}

#[test]
fn log_verify_finds_a_flipped_byte_and_repair_cuts_there_keeping_a_copy() {
    let tmp = TempDir::new("log-bad");
    let dir = tmp.path().join("data");
    let starts = make_store(&dir, 9);
    let log = dir.join(format!("log.{:020}", 1));
    let mut bytes = std::fs::read(&log).unwrap();
    let bad = starts[4];
    bytes[bad as usize + 40] ^= 1;
    std::fs::write(&log, &bytes).unwrap();

    let out = crl_node(&["log", "verify", "--data-dir", s(&dir)]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("at offset {bad}")) && text.contains("4 valid records follow"),
        "{text}"
    );
    assert!(text.contains(s(&log)), "{text}");
    assert!(stderr(&out).contains("log repair"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&log).unwrap(),
        bytes,
        "verify changed the log"
    );

    // Not a record boundary: refused.
    let out = crl_node(&[
        "log",
        "repair",
        "--data-dir",
        s(&dir),
        "--cut-at",
        &format!("1:{}", bad + 3),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("refused"), "{}", stderr(&out));
    // Past the bad record: refused.
    let out = crl_node(&[
        "log",
        "repair",
        "--data-dir",
        s(&dir),
        "--cut-at",
        &format!("1:{}", starts[6]),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is bad"), "{}", stderr(&out));
    // A malformed cut point is a usage error.
    let out = crl_node(&["log", "repair", "--data-dir", s(&dir), "--cut-at", "12"]);
    assert_eq!(out.status.code(), Some(2));

    let out = crl_node(&[
        "log",
        "repair",
        "--data-dir",
        s(&dir),
        "--cut-at",
        &format!("1:{bad}"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("at offset {bad}")), "{text}");
    let backups: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("cut-"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let copy = std::fs::read_dir(&backups[0])
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(std::fs::read(copy).unwrap(), bytes[bad as usize..]);
    assert_eq!(std::fs::metadata(&log).unwrap().len(), bad);

    let out = crl_node(&["log", "verify", "--data-dir", s(&dir)]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("records: 4 valid"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn log_verify_of_a_missing_dir_fails_clearly() {
    let tmp = TempDir::new("log-missing");
    let out = crl_node(&["log", "verify", "--data-dir", s(&tmp.path().join("nope"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no such directory"),
        "{}",
        stderr(&out)
    );
}

/// The issue's report, end to end: a byte flipped in the middle of a durable node's log makes
/// `crl-node run` refuse to start, naming the file and the offset; after an explicit repair
/// it starts.
#[test]
fn run_refuses_a_corrupt_log_naming_the_file_and_offset() {
    let tmp = TempDir::new("run-corrupt");
    make_certs(&tmp.path().join("certs"), &["0", "1"]);
    let data = tmp.path().join("data0");
    let starts = make_store(&data, 9);
    let log = data.join(format!("log.{:020}", 1));
    let mut bytes = std::fs::read(&log).unwrap();
    let bad = starts[4];
    bytes[bad as usize + 50] ^= 0x80;
    std::fs::write(&log, &bytes).unwrap();
    let path = tmp.path().join("cluster.toml");
    std::fs::write(
        &path,
        "cluster_id = 7\nca = \"certs/ca.pem\"\n\n\
         [[node]]\nid = 0\naddr = \"127.0.0.1:0\"\ndata_dir = \"data0\"\n\n\
         [[node]]\nid = 1\naddr = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = crl_node(&["run", "--config", s(&path), "--id", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cannot start"), "{err}");
    assert!(err.contains(&format!("log.{:020}", 1)), "{err}");
    assert!(err.contains(&format!("at offset {bad}")), "{err}");
    assert!(err.contains("4 valid records follow"), "{err}");
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "the log was changed");
}

/// Runs node 0 of `config` until it announces itself, then stops it with SIGTERM; returns
/// its stderr.
#[cfg(unix)]
fn start_and_stop(config: &Path) -> String {
    let mut child = Command::new(BIN)
        .args(["run", "--config", s(config), "--id", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(line.contains("listening on"), "{line}{}", stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stderr(&out)
}

/// A durable node says at start what recovering its log did.
#[cfg(unix)]
#[test]
fn run_reports_the_log_recovery_in_one_line() {
    let tmp = TempDir::new("run-report");
    make_certs(&tmp.path().join("certs"), &["0", "1"]);
    let path = tmp.path().join("cluster.toml");
    std::fs::write(
        &path,
        "cluster_id = 7\nca = \"certs/ca.pem\"\n\n\
         [[node]]\nid = 0\naddr = \"127.0.0.1:0\"\ndata_dir = \"data0\"\n\n\
         [[node]]\nid = 1\naddr = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let first = start_and_stop(&path);
    assert!(first.contains("log recovered: 0 records"), "{first}");
    let second = start_and_stop(&path);
    let line = second
        .lines()
        .find(|l| l.contains("log recovered:"))
        .unwrap_or_else(|| panic!("{second}"));
    assert!(
        line.contains(" bytes cut") && !line.contains(": 0 records"),
        "{line}"
    );
    let out = crl_node(&["log", "verify", "--data-dir", s(&tmp.path().join("data0"))]);
    assert!(out.status.success(), "{}", stdout(&out));
}

/// A free TCP port on 127.0.0.1 (for a metrics address).
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `metrics_addr` makes `crl-node run` serve its counters; `crl-node status` prints them;
/// without a metrics address, or with the node down, `status` fails with a clear message.
#[test]
fn status_prints_a_running_nodes_metrics() {
    let tmp = TempDir::new("status");
    make_certs(&tmp.path().join("certs"), &["0", "1"]);
    let metrics = format!("127.0.0.1:{}", free_tcp_port());
    let path = tmp.path().join("cluster.toml");
    std::fs::write(
        &path,
        format!(
            "cluster_id = 7\nca = \"certs/ca.pem\"\n\n\
             [[node]]\nid = 0\naddr = \"127.0.0.1:0\"\nmetrics_addr = \"{metrics}\"\ndata_dir = \"data/n0\"\n\n\
             [[node]]\nid = 1\naddr = \"127.0.0.1:1\"\n"
        ),
    )
    .unwrap();
    let config = s(&path);
    // Not running yet: a clear failure.
    let out = crl_node(&["status", "--config", config, "--id", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is it running?"), "{}", stderr(&out));
    // No metrics address for node 1.
    let out = crl_node(&["status", "--config", config, "--id", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no metrics_addr"), "{}", stderr(&out));

    let mut child = Command::new(BIN)
        .args(["run", "--config", config, "--id", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let lines: Vec<String> = (0..2)
        .map_while(|_| rx.recv_timeout(Duration::from_secs(30)).ok())
        .collect();
    assert!(
        lines.len() == 2 && lines[1].contains(&format!("metrics on http://{metrics}/metrics")),
        "{lines:?}"
    );
    let out = crl_node(&["status", "--config", config, "--id", "0"]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    let body = String::from_utf8_lossy(&out.stdout);
    for metric in [
        "crl_node 0",
        "crl_hits_total ",
        "crl_misses_total ",
        "crl_tx_committed_total ",
        "crl_peer_connected{peer=\"1\"} 0",
        "crl_peer_messages_sent_total{peer=\"1\"}",
        // With a data dir: the log's counters (the name table's create was logged).
        "crl_log_appends_total ",
        "crl_log_batch_io_seconds_total ",
        "crl_log_batch_io_max_seconds ",
        "crl_log_failed 0",
    ] {
        assert!(body.contains(metric), "no {metric:?} in:\n{body}");
    }
}

/// `--log-format json` writes one JSON object per log line.
#[test]
fn run_logs_json_on_request() {
    let tmp = TempDir::new("json");
    make_certs(&tmp.path().join("certs"), &["0", "1"]);
    let config = write_cluster_file(tmp.path(), "127.0.0.1:0");
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--config",
            s(&config),
            "--id",
            "0",
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = rx.recv_timeout(Duration::from_secs(30));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(started.is_ok_and(|l| l.contains("listening")));
    let logs = stderr(&out);
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines with RUST_LOG=debug");
    for line in lines {
        assert!(
            line.starts_with('{') && line.ends_with('}') && line.contains("\"level\":"),
            "not a JSON log line: {line}"
        );
    }
}
