//! The `mu` command: `mu demo` (a whole cluster on this machine, no set-up), `mu serve` (a
//! cluster on this machine that speaks the Redis protocol), `mu replica` (one replica of a
//! cluster described by a config file) and `mu failover` (the fail-over benchmark).

// Every `unsafe` block states why it is sound; every `unsafe fn` says what its callers must
// uphold, and its body spells out its own unsafe operations.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use board_configs::{FabricSpec, Host, Polling};
use clap::{Parser, Subcommand, ValueEnum};
use runtime_linux::cluster::Fault;
use runtime_linux::demo::{self, DemoFabric, DemoOptions, FailoverOptions};
use runtime_linux::node::VerbsSpec;
use runtime_linux::node::{self, NodeSpec};
use runtime_linux::serve::{self, RespFrontEnd};

#[derive(Parser)]
#[command(
    name = "mu",
    version,
    about = "Mu: microsecond consensus over one-sided writes"
)]
struct Cli {
    #[command(subcommand)]
    command: Action,
}

#[derive(Clone, Copy, ValueEnum)]
enum PollingArg {
    /// Spin without yielding (isolated cores).
    Busy,
    /// Spin, then yield (fewer cores than busy threads).
    Shared,
}

impl From<PollingArg> for Polling {
    fn from(arg: PollingArg) -> Polling {
        match arg {
            PollingArg::Busy => Polling::Busy,
            PollingArg::Shared => Polling::Shared,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum FaultArg {
    /// SIGKILL: the process dies and the kernel says so.
    Kill,
    /// SIGSTOP: the process hangs; only its silence tells (it is killed after the fail-over).
    Stop,
}

impl From<FaultArg> for Fault {
    fn from(arg: FaultArg) -> Fault {
        match arg {
            FaultArg::Kill => Fault::Kill,
            FaultArg::Stop => Fault::Stop,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum DemoApp {
    /// The key-value workload.
    Kv,
    /// The order book.
    Orderbook,
}

#[derive(Clone, Copy, ValueEnum)]
enum AppArg {
    /// The key-value store of `mu demo`, behind the shared-memory client port.
    Kv,
    /// The Redis-protocol store of `mu serve`, with exactly-once sessions.
    Resp,
    /// The price-time order book (`mu demo --app orderbook`).
    Orderbook,
}

#[derive(Clone, Copy, ValueEnum)]
enum FabricArg {
    /// Shared memory between the processes.
    Shm,
    /// RDMA verbs through one device of this host.
    Verbs,
}

/// Which fabric a local cluster runs over.
#[derive(clap::Args)]
struct FabricArgs {
    /// The replicas' fabric.
    #[arg(long, value_enum, default_value_t = FabricArg::Shm)]
    fabric: FabricArg,
    /// With --fabric verbs: the RDMA device.
    #[arg(long, default_value = "rxe0")]
    device: String,
    /// With --fabric verbs: the device port.
    #[arg(long, default_value_t = 1)]
    port: u8,
    /// With --fabric verbs: the GID index to send from (`mu doctor` lists the table).
    #[arg(long, default_value_t = 1)]
    gid_index: u8,
    /// With --fabric verbs: the IP address of the device's interface, for the handshakes.
    #[arg(long, default_value = "127.0.0.1")]
    ip: std::net::IpAddr,
    /// With --fabric verbs: replica i listens for handshakes on TCP port FIRST_PORT + i.
    #[arg(long, default_value_t = 7470)]
    first_port: u16,
}

impl From<FabricArgs> for DemoFabric {
    fn from(a: FabricArgs) -> DemoFabric {
        match a.fabric {
            FabricArg::Shm => DemoFabric::Shm,
            FabricArg::Verbs => DemoFabric::Verbs {
                device: a.device,
                port: a.port,
                gid_index: a.gid_index,
                ip: a.ip,
                first_port: a.first_port,
            },
        }
    }
}

#[derive(Subcommand)]
enum Action {
    /// Starts a cluster of replica processes on this machine, drives a workload, reports
    /// latency and throughput, kills the leader and reports the fail-over; then lets the
    /// survivors wrap the log twice, restarts the killed replica and reports how it rejoined.
    Demo {
        /// Replicas (processes).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=7))]
        replicas: u8,
        /// Command size in bytes (a key-value put in its session's envelope; at least 43).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Seconds of steady workload before the leader is killed.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Commands in flight at the leader.
        #[arg(long, default_value_t = 1)]
        window: usize,
        /// Polling mode of the replicas' threads.
        #[arg(long, value_enum, default_value_t = PollingArg::Shared)]
        polling: PollingArg,
        /// Pin the planes: replica i's planes on cores FIRST+2i and FIRST+2i+1.
        #[arg(long)]
        pin_from: Option<usize>,
        /// Detector read period in microseconds (default: 1000 shared, 20 busy).
        #[arg(long)]
        read_period_us: Option<u32>,
        #[command(flatten)]
        fabric: FabricArgs,
        /// Slots of the log (a power of two).
        #[arg(long, default_value_t = 65536)]
        slots: u32,
        /// SCHED_FIFO priority (1-99) of the replicas' background planes,
        /// and with busy polling of their replication planes too (needs CAP_SYS_NICE or an
        /// RLIMIT_RTPRIO of at least this).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
        realtime_priority: Option<u8>,
        /// The application: `kv`, the key-value workload; `orderbook`, a seeded order flow
        /// into the replicated order book, one order at a time, checked against an
        /// unreplicated copy (--payload, --window and --slots apply to `kv` only).
        #[arg(long, value_enum, default_value_t = DemoApp::Kv)]
        app: DemoApp,
    },
    /// Lists RDMA devices, ports, GIDs and limits, the memlock limit, isolated cores and huge
    /// pages, and says what is missing for a verbs deployment (exit status 1 when something is).
    Doctor,
    /// Runs one replica of the cluster described by a config file. Exit status: 0 when stopped
    /// by SIGTERM or SIGINT, 1 when it cannot start, 3 when its replication halted (the log
    /// line before says why), 4 when its peers run another configuration or layout and no
    /// quorum can include it (restart it with the cluster's file).
    Replica {
        /// The deployment file (see board-configs/).
        #[arg(long)]
        config: PathBuf,
        /// This replica's id.
        #[arg(long)]
        id: u8,
        /// Keys the replicated key-value store holds (values up to 4 KiB each); every replica
        /// of a cluster must use the same.
        #[arg(long, default_value_t = node::KV_KEYS, value_parser = kv_keys)]
        kv_keys: usize,
        /// The application it replicates: `kv`, the demo's store behind the shared-memory
        /// client port; `resp`, the Redis-protocol store of `mu serve`, served on each
        /// replica's `serve` address of the deployment file (or see --serve-port).
        #[arg(long, value_enum, default_value_t = AppArg::Kv)]
        app: AppArg,
        /// With --app resp: replica i serves the Redis protocol on 127.0.0.1:SERVE_PORT+i
        /// instead of the deployment file's `serve` addresses (all replicas on this host).
        #[arg(long)]
        serve_port: Option<u16>,
    },
    /// Shows every replica of a running cluster on this host (role, leader, applied position,
    /// and the counters that explain trouble), refreshed twice a second until Ctrl-C.
    Status {
        /// The cluster's directory (`mu serve` and `mu demo` print it; a deployment file's
        /// `dir`).
        #[arg(long)]
        dir: PathBuf,
        /// Print once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Starts a whole cluster on this machine whose replicas all speak the Redis protocol
    /// (RESP2 over TCP, loopback): `redis-cli -p PORT` works on any of the printed ports, and
    /// every command goes through the replicated log. Runs until Ctrl-C.
    Serve {
        /// Replicas (processes) of a cluster on this machine.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=7))]
        local: u8,
        /// Replica i listens on 127.0.0.1:PORT+i.
        #[arg(long, default_value_t = 7379)]
        port: u16,
        /// Keys the store holds (keys up to 64 bytes, values up to 512).
        #[arg(long, default_value_t = 32768, value_parser = kv_keys)]
        keys: usize,
    },
    /// Fail-over benchmark: kills the leader ROUNDS times (restarting it each time) and reports
    /// the time from SIGKILL to the first command committed by the new leader, split into
    /// detection (until the new leader elects itself), permission switch and prepare (until it
    /// is on the fast path) and first commit.
    Failover {
        /// Kill rounds.
        #[arg(long, default_value_t = 20)]
        rounds: u32,
        /// Replicas (processes).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=7))]
        replicas: u8,
        /// Polling mode of the replicas' threads.
        #[arg(long, value_enum, default_value_t = PollingArg::Shared)]
        polling: PollingArg,
        /// Pin the planes: replica i's planes on cores FIRST+2i and FIRST+2i+1.
        #[arg(long)]
        pin_from: Option<usize>,
        /// Detector read period in microseconds.
        #[arg(long)]
        read_period_us: Option<u32>,
        #[command(flatten)]
        fabric: FabricArgs,
        /// Slots of the log (a power of two).
        #[arg(long, default_value_t = 65536)]
        slots: u32,
        /// After each kill, laps of the log the survivors commit before the killed replica
        /// restarts; with 1 or more it must rejoin by state transfer (reported per round).
        #[arg(long, default_value_t = 0)]
        wrap_laps: u64,
        /// How the leader is taken out each round.
        #[arg(long, value_enum, default_value_t = FaultArg::Kill)]
        fault: FaultArg,
        /// SCHED_FIFO priority (1-99) of the replicas' background planes,
        /// and with busy polling of their replication planes too (needs CAP_SYS_NICE or an
        /// RLIMIT_RTPRIO of at least this).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
        realtime_priority: Option<u8>,
    },
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// The stack the command runs on. A debug build keeps each application passed by value (an
/// order book is megabytes) in every caller's frame, and overflowed the main thread's 8 MiB at
/// `mu replica`'s start; a release build needs a small part of it (only touched pages count).
const COMMAND_STACK_BYTES: usize = 64 << 20;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = std::thread::Builder::new()
        .stack_size(COMMAND_STACK_BYTES)
        .spawn(move || run(cli))
        .expect("a thread for the command");
    // A panic was reported on its way out; exit as a panicking main would.
    command.join().unwrap_or(ExitCode::from(101))
}

fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.command {
        Action::Demo {
            replicas,
            payload,
            duration,
            window,
            polling,
            pin_from,
            read_period_us,
            fabric,
            slots,
            realtime_priority,
            app,
        } => {
            let options = DemoOptions {
                replicas,
                payload,
                duration_s: duration,
                window,
                polling: polling.into(),
                pin_from,
                read_period_us,
                fabric: fabric.into(),
                slots,
                realtime_priority,
            };
            match app {
                DemoApp::Kv => demo::demo(&options),
                DemoApp::Orderbook => runtime_linux::book::demo(&options),
            }
        }
        Action::Replica {
            config,
            id,
            kv_keys,
            app,
            serve_port,
        } => match replica(&config, id, kv_keys, app, serve_port) {
            Err(node::NodeError::Halted(reason)) => {
                eprintln!("mu: replica {id}: {}", node::NodeError::Halted(reason));
                return ExitCode::from(EXIT_HALTED);
            }
            Err(node::NodeError::Refused) => {
                eprintln!("mu: replica {id}: {}", node::NodeError::Refused);
                return ExitCode::from(EXIT_REFUSED);
            }
            outcome => outcome.map_err(|e| format!("replica {id}: {e}")),
        },
        Action::Serve { local, port, keys } => serve_local(local, port, keys),
        Action::Status { dir, once } => status(&dir, once),
        Action::Doctor => match doctor() {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Action::Failover {
            rounds,
            replicas,
            polling,
            pin_from,
            read_period_us,
            fabric,
            slots,
            wrap_laps,
            fault,
            realtime_priority,
        } => demo::failover(&FailoverOptions {
            rounds,
            replicas,
            polling: polling.into(),
            pin_from,
            read_period_us,
            fabric: fabric.into(),
            slots,
            wrap_laps,
            fault: fault.into(),
            realtime_priority,
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("mu: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `mu replica`'s exit status when its replication halted.
const EXIT_HALTED: u8 = 3;
/// `mu replica`'s exit status when the cluster refused its configuration.
const EXIT_REFUSED: u8 = 4;

fn kv_keys(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(keys) if (1..=1 << 20).contains(&keys) => Ok(keys),
        _ => Err("a number of keys from 1 to 1048576".into()),
    }
}

fn replica(
    config: &std::path::Path,
    id: u8,
    kv_keys: usize,
    app: AppArg,
    serve_port: Option<u16>,
) -> Result<(), node::NodeError> {
    let refused = |message: String| node::NodeError::Config(message);
    let deployment = board_configs::load(config).map_err(|e| refused(e.to_string()))?;
    let spec = deployment.replica(id).ok_or_else(|| {
        refused(format!(
            "{}: replica {id} is not in this cluster (ids 0..{})",
            config.display(),
            deployment.cluster.config.replica_count
        ))
    })?;
    let Host::Linux(host) = &spec.host else {
        return Err(refused(format!(
            "{}: replica {id} is described as a firmware board, not a Linux host",
            config.display()
        )));
    };
    let verbs = match &host.fabric {
        FabricSpec::Shm { .. } => None,
        FabricSpec::Verbs {
            device,
            port,
            gid_index,
            ..
        } => Some(VerbsSpec {
            device: device.clone(),
            port: *port,
            gid_index: *gid_index,
            addresses: verbs_addresses(&deployment)
                .map_err(|e| refused(format!("{}: {e}", config.display())))?,
        }),
    };
    let replicas = deployment.cluster.config.replica_count;
    // Where the Redis-protocol front ends listen, by id (a follower forwards to the leader's),
    // settled before anything starts.
    let serve = match (app, serve_port) {
        (AppArg::Resp, Some(base)) => {
            // The loopback shortcut wins over the file: a whole cluster on this host.
            let last = u32::from(base) + u32::from(replicas) - 1;
            if last > u32::from(u16::MAX) {
                return Err(refused(format!(
                    "--serve-port {base}: replica {}'s port {last} is above 65535",
                    replicas - 1
                )));
            }
            let address = |i: u8| std::net::SocketAddr::from(([127, 0, 0, 1], base + u16::from(i)));
            Some(node::ServeSpec {
                listen: address(id),
                peers: (0..replicas).map(address).collect(),
            })
        }
        (AppArg::Resp, None) => {
            let lacking: Vec<String> = deployment
                .replicas
                .iter()
                .filter_map(|r| match &r.host {
                    Host::Linux(host) if host.serve.is_some() => None,
                    Host::Linux(_) => Some(r.id.to_string()),
                    Host::Firmware(_) => Some(format!("{} (a firmware board)", r.id)),
                })
                .collect();
            if !lacking.is_empty() {
                let (whom, has) = match lacking.len() {
                    1 => ("replica", "has"),
                    _ => ("replicas", "have"),
                };
                return Err(refused(format!(
                    "{}: --app resp needs where every replica serves the Redis protocol, and \
                     {whom} {} {has} no serve address: add serve = \"IP:port\" to each \
                     [replica.linux], or give --serve-port P to serve on 127.0.0.1:P+id",
                    config.display(),
                    lacking.join(", ")
                )));
            }
            // `replicas` is sorted by id, so this is every address by id.
            let peers: Vec<std::net::SocketAddr> = deployment
                .replicas
                .iter()
                .filter_map(|r| match &r.host {
                    Host::Linux(host) => host.serve,
                    Host::Firmware(_) => None,
                })
                .collect();
            assert_eq!(peers.len(), usize::from(replicas));
            assert!(deployment
                .replicas
                .iter()
                .enumerate()
                .all(|(i, r)| usize::from(r.id) == i));
            Some(node::ServeSpec {
                listen: peers[usize::from(id)],
                peers,
            })
        }
        (AppArg::Kv | AppArg::Orderbook, _) => None,
    };
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: `on_stop_signal` is an `extern "C" fn(c_int)`, the handler type signal(2)
        // expects, and it is async-signal-safe: it only stores to a lock-free atomic static.
        unsafe { libc::signal(signal, on_stop_signal as *const () as libc::sighandler_t) };
    }
    let spec = NodeSpec {
        id,
        config: deployment.cluster.config,
        tick_ns: deployment.cluster.tick_ns,
        dir: host.fabric.dir().to_path_buf(),
        verbs,
        polling: host.polling,
        replication_core: host.replication_core,
        background_core: host.background_core,
        realtime_priority: host.realtime_priority,
        kv_keys,
        serve: serve.clone(),
    };
    match (app, serve) {
        (AppArg::Kv, _) => node::run(&spec, &STOP),
        (AppArg::Orderbook, _) => node::run_app(&spec, *runtime_linux::book::new_book(), &STOP),
        (AppArg::Resp, Some(serve)) => {
            let front_end = RespFrontEnd::new(serve, id);
            let app = serve::resp_app(kv_keys).map_err(refused)?;
            node::run_serving(&spec, app, Some(front_end), &STOP)
        }
        (AppArg::Resp, None) => unreachable!("--app resp has its addresses or returned above"),
    }
}

/// `mu status`: the cluster in `dir`, once or refreshed until Ctrl-C.
fn status(dir: &std::path::Path, once: bool) -> Result<(), String> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: as in `replica`: an async-signal-safe handler of the type signal(2) expects.
        unsafe { libc::signal(signal, on_stop_signal as *const () as libc::sighandler_t) };
    }
    loop {
        let table = runtime_linux::status::render(dir)
            .ok_or_else(|| format!("{}: no replica's client port here", dir.display()))?;
        if !once {
            print!("\x1b[2J\x1b[H"); // Clear the terminal, as `watch` does.
        }
        println!(
            "{}\n{table}\n{}",
            dir.display(),
            runtime_linux::status::LEGEND
        );
        if once || STOP.load(Ordering::Relaxed) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// `mu serve --local N`: N replica processes serving the Redis protocol, until Ctrl-C.
fn serve_local(replicas: u8, port: u16, keys: usize) -> Result<(), String> {
    let last = port as u32 + replicas as u32 - 1;
    if last > u16::MAX as u32 {
        return Err(format!(
            "--port {port}: the last replica's port {last} is above 65535"
        ));
    }
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: as in `replica`: an async-signal-safe handler of the type signal(2) expects.
        unsafe { libc::signal(signal, on_stop_signal as *const () as libc::sighandler_t) };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let cluster = demo::serve_cluster(&exe, replicas, port, keys)?;
    println!("mu serve: {replicas} replicas speak the Redis protocol; every command goes through the log");
    for id in 0..replicas {
        println!("  replica {id}: redis-cli -p {}", port + id as u16);
    }
    println!(
        "replica logs: {}/replica-*.log; Ctrl-C stops the cluster",
        cluster.dir().display()
    );
    while !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    cluster.shutdown();
    Ok(())
}

/// Every replica's handshake address, by id: all replicas must be verbs Linux hosts.
fn verbs_addresses(
    deployment: &board_configs::Deployment,
) -> Result<Vec<std::net::SocketAddr>, String> {
    deployment
        .replicas
        .iter()
        .map(|r| match &r.host {
            Host::Linux(host) => match &host.fabric {
                FabricSpec::Verbs { address, .. } => address
                    .parse()
                    .map_err(|_| format!("replica {}: address {address:?} is not IP:port", r.id)),
                FabricSpec::Shm { .. } => Err(format!("replica {} uses shared memory", r.id)),
            },
            Host::Firmware(_) => Err(format!(
                "replica {} is a firmware board, which has no verbs address",
                r.id
            )),
        })
        .collect()
}

#[cfg(feature = "verbs")]
fn doctor() -> Result<bool, String> {
    runtime_linux::doctor::doctor(&mut std::io::stdout().lock()).map_err(|e| format!("doctor: {e}"))
}

#[cfg(not(feature = "verbs"))]
fn doctor() -> Result<bool, String> {
    Err(runtime_linux::node::NO_VERBS.into())
}
