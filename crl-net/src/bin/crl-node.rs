//! `crl-node`: runs one crl node, and manages the cluster's certificates.
//!
//! ```text
//! crl-node cert init  --dir certs [--cluster-name NAME] [--force]   # ca.pem, ca-key.pem
//! crl-node cert issue --dir certs --id 0 --id 1 --id 2 [--force]   # node-<id>.pem, node-<id>-key.pem
//! crl-node run --config cluster.toml --id 1 [--log-format json]     # or: crl-node --config cluster.toml --id 1
//! crl-node status --config cluster.toml --id 1                      # a running node's metrics (needs its metrics_addr)
//! crl-node log verify --data-dir D                                  # checks a stopped node's log, changes nothing
//! crl-node log repair --data-dir D --cut-at GEN:OFFSET              # cuts the log there, keeping a copy
//! ```
//!
//! `run` logs to stderr through `tracing-subscriber`; `RUST_LOG` filters it (default `info`,
//! for example `RUST_LOG=crl_net=debug`). The cluster file's format is described in
//! `crl_net::config`; the log's rules (torn tail
//! versus corruption) in `crl_net::durable`. Exit codes: 0 on success (and on a clean
//! shutdown after SIGINT/SIGTERM, and for `log verify` on a log that recovery accepts), 1 on
//! a runtime error such as a bad configuration, or corruption found by `log verify`, 2 on a
//! command-line usage error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use crl_core::NodeId;
use crl_net::config::NodeConfig;
use crl_net::node::Node;
use crl_net::tls::ClusterCa;

/// Runs a crl node, or manages the cluster's certificates.
#[derive(Debug, Parser)]
#[command(name = "crl-node", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Shorthand for `run --config FILE`.
    #[arg(long, value_name = "FILE", requires = "id")]
    config: Option<PathBuf>,

    /// Shorthand for `run --id N`.
    #[arg(long, value_name = "N", requires = "config")]
    id: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs one node of the cluster described by a cluster file until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Creates the cluster CA and issues node certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Checks or repairs a stopped node's write-ahead log.
    #[command(subcommand)]
    Log(LogCommand),
    /// Lists or resolves the unfinished transactions in a stopped node's log.
    #[command(subcommand)]
    Txn(TxnCommand),
    /// Prints a running node's metrics (read from its `metrics_addr`, Prometheus text).
    Status(RunArgs),
}

#[derive(Debug, Subcommand)]
enum TxnCommand {
    /// Lists the transactions prepared here and undecided (in doubt: the node asks their
    /// coordinator at start, and fails to start if it cannot), and those committed here as
    /// coordinator that some participant has not confirmed.
    List {
        /// The node's data directory (`data_dir` in the cluster file).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Records the outcome of an in-doubt transaction, as its coordinator would have. Look
    /// the outcome up in the coordinator's log first (`txn list` there): a committed
    /// transaction is listed there until every participant confirmed; one it has no record
    /// of was aborted.
    Resolve {
        /// The node's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The transaction id, as `txn list` prints it (hex with 0x, or decimal).
        #[arg(long, value_name = "TXID", value_parser = parse_txid)]
        txid: u64,
        /// Commit it (apply its prepared writes).
        #[arg(long, conflicts_with = "abort", required_unless_present = "abort")]
        commit: bool,
        /// Abort it (drop its prepared writes).
        #[arg(long)]
        abort: bool,
    },
}

/// Parses a transaction id: `0x…` hex or decimal.
fn parse_txid(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("bad transaction id {s:?}: {e}"))
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Reports the checkpoint, the log generations, the records, a torn tail (which the next
    /// start cuts) and any corruption (which makes the node refuse to start), changing
    /// nothing. Exits 1 on corruption.
    Verify {
        /// The node's data directory (`data_dir` in the cluster file).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Cuts the log at GEN:OFFSET (a record boundary, as `log verify` reports it) and removes
    /// every later log, keeping a copy of everything cut in a `cut-*` directory inside the
    /// data directory. The records after the cut are lost to the node.
    Repair {
        /// The node's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Where to cut: log generation and byte offset, e.g. `3:81920`.
        #[arg(long, value_name = "GEN:OFFSET", value_parser = parse_cut_at)]
        cut_at: (u64, u64),
    },
}

/// Parses `GEN:OFFSET`.
fn parse_cut_at(s: &str) -> Result<(u64, u64), String> {
    let (g, o) = s
        .split_once(':')
        .ok_or_else(|| format!("expected GEN:OFFSET, got {s:?}"))?;
    let g = g
        .parse()
        .map_err(|e| format!("bad generation {g:?}: {e}"))?;
    let o = o.parse().map_err(|e| format!("bad offset {o:?}: {e}"))?;
    Ok((g, o))
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The cluster file (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// This node's id: which `[[node]]` entry of the file to run.
    #[arg(long, value_name = "N")]
    id: u32,
    /// How `run` writes its log lines to stderr: `human` or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

/// The format of `crl-node run`'s log lines.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Readable lines (the default).
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Generates a new cluster CA: writes DIR/ca.pem and DIR/ca-key.pem.
    Init {
        /// Directory to write to (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Name recorded in the CA certificate.
        #[arg(long, value_name = "NAME", default_value = "crl")]
        cluster_name: String,
        /// Overwrite an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issues node certificates from the CA in DIR: writes DIR/node-N.pem and
    /// DIR/node-N-key.pem for each id.
    Issue {
        /// Directory holding ca.pem and ca-key.pem; the node files are written there too.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A node id; repeat (`--id 0 --id 1`) or separate with commas (`--id 0,1`).
        #[arg(long = "id", value_name = "N", required = true, value_delimiter = ',')]
        ids: Vec<u32>,
        /// Overwrite existing node files.
        #[arg(long)]
        force: bool,
    },
}

/// A failure reported as one line on stderr, with the process's exit code.
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 1,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Cert(cert)) => run_cert(cert),
        Some(Command::Log(log)) => run_log(log),
        Some(Command::Txn(txn)) => run_txn(txn),
        Some(Command::Run(args)) => run_node(&args),
        Some(Command::Status(args)) => run_status(&args),
        None => match (cli.config, cli.id) {
            (Some(config), Some(id)) => run_node(&RunArgs {
                config,
                id,
                log_format: LogFormat::Human,
            }),
            _ => {
                // No subcommand and no shorthand: show the usage.
                eprintln!("{}", Cli::command().render_help());
                return ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn run_cert(cert: CertCommand) -> Result<(), Failure> {
    match cert {
        CertCommand::Init {
            dir,
            cluster_name,
            force,
        } => {
            let what = "crl-node cert init";
            let files = [dir.join("ca.pem"), dir.join("ca-key.pem")];
            refuse_overwrite(what, &files, force)?;
            create_dir(what, &dir)?;
            let ca = ClusterCa::generate(&cluster_name)
                .map_err(|e| Failure::new(format!("{what}: cannot generate the CA: {e}")))?;
            ca.write_pem_files(&dir).map_err(|e| {
                Failure::new(format!("{what}: cannot write to {}: {e}", dir.display()))
            })?;
            for file in &files {
                println!("wrote {}", file.display());
            }
            Ok(())
        }
        CertCommand::Issue { dir, ids, force } => {
            let what = "crl-node cert issue";
            let files: Vec<[PathBuf; 2]> = ids
                .iter()
                .map(|id| {
                    [
                        dir.join(format!("node-{id}.pem")),
                        dir.join(format!("node-{id}-key.pem")),
                    ]
                })
                .collect();
            refuse_overwrite(what, files.iter().flatten(), force)?;
            let ca = ClusterCa::read_pem_files(&dir).map_err(|e| {
                Failure::new(format!(
                    "{what}: cannot read the CA from {} (run `crl-node cert init --dir {}` first?): {e}",
                    dir.display(),
                    dir.display()
                ))
            })?;
            for (&id, files) in ids.iter().zip(&files) {
                let identity = ca.issue(NodeId(id)).map_err(|e| {
                    Failure::new(format!(
                        "{what}: cannot issue a certificate for node {id}: {e}"
                    ))
                })?;
                identity.write_pem_files(&dir).map_err(|e| {
                    Failure::new(format!("{what}: cannot write to {}: {e}", dir.display()))
                })?;
                for file in files {
                    println!("wrote {}", file.display());
                }
            }
            Ok(())
        }
    }
}

fn run_txn(cmd: TxnCommand) -> Result<(), Failure> {
    use crl_net::txn::admin;
    match cmd {
        TxnCommand::List { data_dir } => {
            let l = admin::list(&data_dir).map_err(|e| {
                Failure::new(format!("crl-node txn list: {}: {e}", data_dir.display()))
            })?;
            println!("in doubt: {}", l.in_doubt.len());
            for t in &l.in_doubt {
                println!(
                    "  {:#x}: coordinator {}, {} writes, {} deletes",
                    t.txid, t.coordinator, t.writes, t.deletes
                );
            }
            println!(
                "committed here, not confirmed by every participant: {}",
                l.committed.len()
            );
            for t in &l.committed {
                println!("  {:#x}: participants {:?}", t.txid, t.participants);
            }
            Ok(())
        }
        TxnCommand::Resolve {
            data_dir,
            txid,
            commit,
            abort: _,
        } => {
            admin::resolve(&data_dir, txid, commit).map_err(|e| {
                Failure::new(format!("crl-node txn resolve: {}: {e}", data_dir.display()))
            })?;
            println!(
                "transaction {txid:#x} resolved: {}",
                if commit { "commit" } else { "abort" }
            );
            Ok(())
        }
    }
}

fn run_log(cmd: LogCommand) -> Result<(), Failure> {
    use crl_net::durable;
    match cmd {
        LogCommand::Verify { data_dir } => {
            let what = "crl-node log verify";
            let r = durable::verify(&data_dir)
                .map_err(|e| Failure::new(format!("{what}: {}: {e}", data_dir.display())))?;
            println!(
                "store {}: id {:#018x}, epoch {}",
                data_dir.display(),
                r.store_id,
                r.epoch
            );
            match r.sealed {
                Some((g, len)) => println!("sealed: log generation {g} up to offset {len}"),
                None => println!("sealed: nothing"),
            }
            match &r.checkpoint {
                Some(c) => println!(
                    "checkpoint: followed by log generation {}, first record {}, {} regions, {} in doubt, {} coordinating",
                    c.log_gen, c.first_record, c.regions, c.in_doubt, c.coordinating
                ),
                None => println!("checkpoint: none"),
            }
            for g in &r.stale_logs {
                println!(
                    "stale log generation {g}: older than the checkpoint, removed at the next start"
                );
            }
            for l in &r.logs {
                println!(
                    "log generation {} ({}): {} bytes, {} records from record {}",
                    l.generation,
                    l.path.display(),
                    l.bytes,
                    l.records,
                    l.first_record
                );
            }
            println!(
                "records: {} valid in {} log generations",
                r.records,
                r.logs.len()
            );
            if let Some(t) = &r.torn_tail {
                println!(
                    "torn tail: log generation {} at offset {}, {} bytes ({}): the next start cuts it",
                    t.generation, t.offset, t.bytes, t.why
                );
            }
            match r.corruption {
                None => {
                    println!("ok: the node can start");
                    Ok(())
                }
                Some(e) => {
                    println!("corruption: {e}");
                    Err(Failure::new(format!(
                        "{what}: the log is corrupt and the node will refuse to start: {e}\n\
                         restore the data directory from a backup or a replica; or, accepting the loss of \
                         every record from the bad one on, run `crl-node log repair --data-dir {} \
                         --cut-at GEN:OFFSET` at the offset named (a copy of what is cut is kept)",
                        data_dir.display()
                    )))
                }
            }
        }
        LogCommand::Repair {
            data_dir,
            cut_at: (generation, offset),
        } => {
            let what = "crl-node log repair";
            let r = durable::repair_cut(&data_dir, generation, offset)
                .map_err(|e| Failure::new(format!("{what}: {}: {e}", data_dir.display())))?;
            println!(
                "cut log generation {} at offset {}: {} bytes cut, later log generations removed: {:?}; a copy of everything cut is in {}",
                r.generation,
                r.offset,
                r.cut_bytes,
                r.removed_logs,
                r.backup.display()
            );
            Ok(())
        }
    }
}

/// Fails if any of `files` exists, unless `force`.
fn refuse_overwrite<'a>(
    what: &str,
    files: impl IntoIterator<Item = &'a PathBuf>,
    force: bool,
) -> Result<(), Failure> {
    if force {
        return Ok(());
    }
    match files.into_iter().find(|f| f.exists()) {
        Some(file) => Err(Failure::new(format!(
            "{what}: {} already exists (use --force to overwrite)",
            file.display()
        ))),
        None => Ok(()),
    }
}

fn create_dir(what: &str, dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Failure::new(format!(
            "{what}: cannot create directory {}: {e}",
            dir.display()
        ))
    })
}

/// Sends the library's `tracing` events to stderr, filtered by `RUST_LOG` (default `info`):
/// warnings such as fences, lost copies or refused peers reach the operator.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => logs.try_init(),
        LogFormat::Json => logs.json().try_init(),
    };
}

/// Fetches `GET /metrics` from the node's `metrics_addr` and prints the body.
fn run_status(args: &RunArgs) -> Result<(), Failure> {
    use std::io::Read;
    let id = args.id;
    let config = NodeConfig::from_file(&args.config, NodeId(id))
        .map_err(|e| Failure::new(format!("crl-node: bad configuration: {e}")))?;
    let Some(addr) = config.metrics_addr else {
        return Err(Failure::new(format!(
            "crl-node status: node {id} has no metrics_addr in {}",
            args.config.display()
        )));
    };
    let timeout = std::time::Duration::from_secs(5);
    let fail = |e: std::io::Error| {
        Failure::new(format!(
            "crl-node status: node {id} at {addr}: {e} (is it running?)"
        ))
    };
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    stream.set_write_timeout(Some(timeout)).map_err(fail)?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .map_err(fail)?;
    let mut response = Vec::new();
    // Bounded: the metrics of a node are a few kilobytes.
    (&mut stream)
        .take(16 << 20)
        .read_to_end(&mut response)
        .map_err(fail)?;
    let response = String::from_utf8_lossy(&response);
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        return Err(Failure::new(format!(
            "crl-node status: node {id} at {addr}: a truncated answer"
        )));
    };
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(Failure::new(format!(
            "crl-node status: node {id} at {addr} answered {status:?}"
        )));
    }
    print!("{body}");
    let _ = std::io::stdout().flush();
    Ok(())
}

fn run_node(args: &RunArgs) -> Result<(), Failure> {
    init_logging(args.log_format);
    let config = NodeConfig::from_file(&args.config, NodeId(args.id))
        .map_err(|e| Failure::new(format!("crl-node: bad configuration: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("crl-node: cannot start the tokio runtime: {e}")))?;
    runtime.block_on(serve(config))
}

/// Runs the node until SIGINT or SIGTERM, then shuts it down.
async fn serve(config: NodeConfig) -> Result<(), Failure> {
    let (id, cluster_id) = (config.node, config.cluster_id);
    // Handlers first, so that a signal arriving right after the announcement is not lost.
    let mut signals = Signals::install().map_err(|e| {
        Failure::new(format!(
            "crl-node {id}: cannot install signal handlers: {e}"
        ))
    })?;
    let metrics_addr = config.metrics_addr;
    let node = Node::start(config)
        .await
        .map_err(|e| Failure::new(format!("crl-node {id}: cannot start: {e}")))?;
    println!(
        "crl-node {id} listening on {}, cluster {cluster_id}",
        node.local_addr()
    );
    if let Some(addr) = metrics_addr {
        match crl_net::metrics::spawn(node.clone(), addr).await {
            Ok(bound) => println!("crl-node {id} metrics on http://{bound}/metrics"),
            Err(e) => {
                node.shutdown().await;
                return Err(Failure::new(format!(
                    "crl-node {id}: cannot serve metrics on {addr}: {e}"
                )));
            }
        }
    }
    let _ = std::io::stdout().flush();
    if let Some(r) = node.recovery_report() {
        // The one-line recovery report (also logged with `tracing`, which this binary does
        // not print).
        eprintln!(
            "crl-node {id}: log recovered: {} records, {} bytes, {} bytes cut{}, {:.3} s",
            r.log_records,
            r.log_bytes,
            r.cut_bytes,
            r.cut_at
                .map(|(g, o)| format!(" (a torn tail at log generation {g}, offset {o})"))
                .unwrap_or_default(),
            r.elapsed.as_secs_f64()
        );
    }

    let signal = signals.next().await;
    eprintln!("crl-node {id}: {signal}, shutting down");
    tokio::select! {
        () = node.shutdown() => {}
        signal = signals.next() => {
            return Err(Failure::new(format!(
                "crl-node {id}: {signal} during shutdown, exiting without finishing it"
            )));
        }
    }
    eprintln!("crl-node {id}: stopped");
    Ok(())
}

/// SIGINT and (on unix) SIGTERM, registered up front.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// Waits for the next signal and names it.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT received",
                _ = self.terminate.recv() => "SIGTERM received",
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C received",
                // Without signal handling the node runs until killed.
                Err(_) => std::future::pending().await,
            }
        }
    }
}
