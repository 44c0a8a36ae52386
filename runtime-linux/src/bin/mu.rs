//! The `mu` command: `mu demo` (a whole cluster on this machine, no set-up), `mu replica` (one
//! replica of a cluster described by a config file) and `mu failover` (the fail-over benchmark).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use board_configs::{FabricSpec, Host, Polling};
use clap::{Parser, Subcommand, ValueEnum};
use runtime_linux::demo::{self, DemoOptions, FailoverOptions};
use runtime_linux::node::{self, NodeSpec};

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

#[derive(Subcommand)]
enum Action {
    /// Starts a cluster of replica processes on this machine, drives a workload, reports
    /// latency and throughput, kills the leader and reports the fail-over.
    Demo {
        /// Replicas (processes).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=7))]
        replicas: u8,
        /// Command size in bytes (a key-value put; at least 17).
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
    },
    /// Runs one replica of the cluster described by a config file.
    Replica {
        /// The deployment file (see board-configs/).
        #[arg(long)]
        config: PathBuf,
        /// This replica's id.
        #[arg(long)]
        id: u8,
    },
    /// Fail-over benchmark: kills the leader ROUNDS times (restarting it each time) and reports
    /// the time from SIGKILL to the first command committed by the new leader.
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
    },
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Action::Demo {
            replicas,
            payload,
            duration,
            window,
            polling,
            pin_from,
        } => demo::demo(&DemoOptions {
            replicas,
            payload,
            duration_s: duration,
            window,
            polling: polling.into(),
            pin_from,
        }),
        Action::Replica { config, id } => replica(&config, id),
        Action::Failover {
            rounds,
            replicas,
            polling,
            pin_from,
            read_period_us,
        } => demo::failover(&FailoverOptions {
            rounds,
            replicas,
            polling: polling.into(),
            pin_from,
            read_period_us,
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

fn replica(config: &std::path::Path, id: u8) -> Result<(), String> {
    let deployment = board_configs::load(config).map_err(|e| e.to_string())?;
    let spec = deployment.replica(id).ok_or_else(|| {
        format!(
            "{}: replica {id} is not in this cluster (ids 0..{})",
            config.display(),
            deployment.cluster.config.replica_count
        )
    })?;
    let Host::Linux(host) = &spec.host else {
        return Err(format!(
            "{}: replica {id} is described as a firmware board, not a Linux host",
            config.display()
        ));
    };
    let FabricSpec::Shm { dir } = &host.fabric else {
        return Err(format!(
            "{}: replica {id} uses the verbs fabric, which this build does not have yet; use \
             fabric = \"shm\"",
            config.display()
        ));
    };
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installs an async-signal-safe handler that only stores an atomic.
        unsafe { libc::signal(signal, on_stop_signal as *const () as libc::sighandler_t) };
    }
    let spec = NodeSpec {
        id,
        config: deployment.cluster.config,
        tick_ns: deployment.cluster.tick_ns,
        dir: dir.clone(),
        polling: host.polling,
        replication_core: host.replication_core,
        background_core: host.background_core,
        realtime_priority: host.realtime_priority,
    };
    node::run(&spec, &STOP).map_err(|e| format!("replica {id}: {e}"))
}
