//! `mu demo` and `mu failover`: a cluster of replica processes on this machine, driven by a
//! client in this process, with the figures a user wants first (latency percentiles,
//! throughput, fail-over time, state agreement).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use board_configs::{Deployment, FabricSpec, Host, Polling};
use hdrhistogram::Histogram;
use mu_nostd::{Config, DetectorConfig};

use crate::clock::cycles_per_second;
use crate::cluster::{kill_leader, Client, Cluster};
use crate::kv;
use crate::port::Stat;

/// What `mu demo` runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Replicas (processes).
    pub replicas: u8,
    /// Command size in bytes.
    pub payload: usize,
    /// Seconds of steady workload before the kill.
    pub duration_s: f64,
    /// Commands in flight at the leader.
    pub window: usize,
    /// Polling mode.
    pub polling: Polling,
    /// First core to pin planes to, if any.
    pub pin_from: Option<usize>,
    /// Detector read period in µs (default: chosen for the polling mode).
    pub read_period_us: Option<u32>,
    /// The replicas' fabric.
    pub fabric: DemoFabric,
}

/// The fabric of the demo's replicas (all on this host).
#[derive(Clone, Debug)]
pub enum DemoFabric {
    /// Shared memory.
    Shm,
    /// RDMA verbs over one device; replica `i` listens for handshakes on `ip:(first_port+i)`.
    Verbs {
        /// The RDMA device.
        device: String,
        /// Its port.
        port: u8,
        /// The GID index every replica sends from.
        gid_index: u8,
        /// The IP address of the handshake listeners (the device's network interface).
        ip: std::net::IpAddr,
        /// The first replica's TCP port.
        first_port: u16,
    },
}

impl DemoFabric {
    fn describe(&self) -> String {
        match self {
            DemoFabric::Shm => "shared memory".into(),
            DemoFabric::Verbs {
                device,
                port,
                gid_index,
                ..
            } => format!("RDMA verbs ({device} port {port}, GID index {gid_index})"),
        }
    }
}

/// What `mu failover` runs.
#[derive(Clone, Debug)]
pub struct FailoverOptions {
    /// Kill rounds.
    pub rounds: u32,
    /// Replicas (processes).
    pub replicas: u8,
    /// Polling mode.
    pub polling: Polling,
    /// First core to pin planes to, if any.
    pub pin_from: Option<usize>,
    /// Detector read period in µs (default: chosen for the polling mode).
    pub read_period_us: Option<u32>,
    /// The replicas' fabric.
    pub fabric: DemoFabric,
}

const TICK_NS: u64 = 1000;
const SLOT_SIZE: u32 = 256;
/// Commands per fail-over round: the log (65,536 slots) must still hold everything when a
/// restarted replica catches up from position 0 (there is no state transfer).
const ROUND_COMMANDS: u64 = 400;

/// The cluster configuration the demo and the benchmark use. On isolated cores (`busy`) the
/// detector reads every 20 µs and fate sharing stops a replica whose replication plane missed
/// 12 read periods. With `shared` polling the spinning threads (the leader's replication plane,
/// the client) may outnumber the cores, and a runnable thread can wait a scheduler time slice
/// (milliseconds) for a core: reads every 200 µs, and fate sharing only after 20 ms, so that a
/// live leader that was merely descheduled is not deposed.
pub fn cluster_config(
    replicas: u8,
    payload: usize,
    polling: Polling,
    read_period_us: Option<u32>,
) -> Config {
    let read_period = read_period_us.unwrap_or(match polling {
        Polling::Busy => 20,
        Polling::Shared => 200,
    });
    let mut config = Config::new(replicas);
    config.slot_count = 1 << 16;
    config.slot_size = SLOT_SIZE;
    let per_slot = (SLOT_SIZE - mu_nostd::slot::SLOT_HEADER_BYTES) as usize;
    config.entry_slots_max = payload.div_ceil(per_slot).clamp(4, 64) as u16;
    config.pipeline_depth = 16;
    config.op_timeout_ticks = 50_000;
    config.permission_retry_ticks = 2_000;
    config.recycle_period_ticks = 500;
    config.detector = DetectorConfig::paper(read_period);
    config.detector.fate_ticks = match polling {
        Polling::Busy => read_period.saturating_mul(12),
        Polling::Shared => read_period.saturating_mul(12).max(20_000),
    };
    config
}

fn deployment(
    name: &str,
    config: Config,
    polling: Polling,
    pin_from: Option<usize>,
    fabric: &DemoFabric,
) -> Deployment {
    let dir = PathBuf::from(format!("/dev/shm/mu-{name}"));
    let cores: Vec<(Option<usize>, Option<usize>)> = (0..config.replica_count as usize)
        .map(|i| match pin_from {
            Some(first) => (Some(first + 2 * i), Some(first + 2 * i + 1)),
            None => (None, None),
        })
        .collect();
    let mut deployment = Deployment::shm_linux(name, config, TICK_NS, dir.clone(), polling, &cores);
    if let DemoFabric::Verbs {
        device,
        port,
        gid_index,
        ip,
        first_port,
    } = fabric
    {
        for replica in &mut deployment.replicas {
            if let Host::Linux(host) = &mut replica.host {
                let address = std::net::SocketAddr::new(*ip, first_port + replica.id as u16);
                host.fabric = FabricSpec::Verbs {
                    dir: dir.clone(),
                    device: device.clone(),
                    port: *port,
                    gid_index: *gid_index,
                    address: address.to_string(),
                };
            }
        }
    }
    deployment
}

fn polling_name(polling: Polling) -> &'static str {
    match polling {
        Polling::Busy => "busy",
        Polling::Shared => "shared",
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `mu demo`.
pub fn demo(options: &DemoOptions) -> Result<(), String> {
    if options.payload < kv::HEADER_BYTES || options.payload > kv::HEADER_BYTES + kv::VALUE_MAX {
        return Err(format!(
            "--payload must be {}..={} bytes (a put: {} header bytes, then the value)",
            kv::HEADER_BYTES,
            kv::HEADER_BYTES + kv::VALUE_MAX,
            kv::HEADER_BYTES
        ));
    }
    if !(0.1..=3600.0).contains(&options.duration_s) {
        return Err("--duration must be 0.1..=3600 seconds".into());
    }
    let config = cluster_config(
        options.replicas,
        options.payload,
        options.polling,
        options.read_period_us,
    );
    let name = format!("demo-{}", std::process::id());
    let deployment = deployment(
        &name,
        config,
        options.polling,
        options.pin_from,
        &options.fabric,
    );
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    println!(
        "mu demo: {} replicas as processes over {}, {}-byte commands, {} polling, {} cores \
         here; detector reads every {} µs",
        options.replicas,
        options.fabric.describe(),
        options.payload,
        polling_name(options.polling),
        cores(),
        config.detector.read_period_ticks as u64 * TICK_NS / 1000
    );
    println!(
        "cores: {}; {}",
        match options.pin_from {
            Some(first) =>
                format!("replica i's planes pinned to cores {first}+2i and {first}+2i+1"),
            None => "planes not pinned".to_string(),
        },
        crate::procfs::IsolatedCores::detect().describe()
    );
    let spinning = 2 * options.replicas as usize + 1;
    if options.polling == Polling::Busy && cores() < spinning {
        println!(
            "warning: busy polling spins {spinning} threads (two per replica, and the client) on \
             {} cores: threads wait for time slices, heartbeats stall and healthy leaders get \
             deposed; use --polling shared here",
            cores()
        );
    }
    let tsc_hz = cycles_per_second();
    let started = Instant::now();
    let mut cluster = Cluster::start(&exe, &deployment).map_err(|e| e.to_string())?;
    println!("cluster directory: {}", cluster.dir().display());
    let result = run_demo(&mut cluster, options, tsc_hz, started);
    conclude(cluster, &options.fabric, result)
}

/// How every run ends: the permission switches the replicas logged (verbs), their logs when the
/// run failed, and the cluster shut down.
fn conclude(
    cluster: Cluster,
    fabric: &DemoFabric,
    result: Result<(), String>,
) -> Result<(), String> {
    if matches!(fabric, DemoFabric::Verbs { .. }) {
        print_permission_switches(&cluster);
    }
    if result.is_err() {
        for id in 0..cluster.replicas() {
            eprintln!("--- replica {id} log ---\n{}", cluster.log_tail(id));
        }
    }
    cluster.shutdown();
    result
}

fn run_demo(
    cluster: &mut Cluster,
    options: &DemoOptions,
    tsc_hz: f64,
    started: Instant,
) -> Result<(), String> {
    let leader = cluster
        .await_settled(Duration::from_secs(20))
        .map_err(|e| e.to_string())?;
    println!(
        "leader: replica {leader} (pid {}), on the fast path {:.1} ms after start",
        cluster.pid(leader).unwrap_or(0),
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut client = Client::new(1, options.payload, 1024, options.window);
    let tenures_before = tenures(cluster);
    let steady = Instant::now();
    let mut next_report = steady + Duration::from_millis(500);
    let mut last_count = 0;
    while steady.elapsed().as_secs_f64() < options.duration_s {
        client.pump(cluster);
        if Instant::now() >= next_report {
            let count = client.committed_count();
            let applied: Vec<String> = (0..cluster.replicas())
                .map(|id| {
                    cluster
                        .port(id)
                        .map_or("-".into(), |p| p.get(Stat::Applied).to_string())
                })
                .collect();
            println!(
                "[{:5.1} s] committed {:>9}  ({:>7.0}/s)  leader {}  applied {}",
                steady.elapsed().as_secs_f64(),
                count,
                (count - last_count) as f64 / 0.5,
                cluster.leader().map_or("none".into(), |l| l.to_string()),
                applied.join("/")
            );
            last_count = count;
            next_report += Duration::from_millis(500);
        }
        if options.polling == Polling::Shared {
            std::thread::yield_now();
        }
    }
    let steady_s = steady.elapsed().as_secs_f64();
    client.drain(cluster, Duration::from_secs(5));
    let changes = tenures(cluster) - tenures_before;
    let leader = cluster.leader().unwrap_or(leader);
    let latency = cluster.latency(leader).map_err(|e| e.to_string())?;
    print_latency(
        "replication latency (leader: submit -> commit)",
        &latency,
        tsc_hz,
        true,
    );
    print_latency(
        "client round trip (port -> leader -> port)",
        &client.round_trip,
        tsc_hz,
        false,
    );
    println!(
        "throughput: {:.0} commands/s ({} commands in {:.1} s, window {})",
        client.committed_count() as f64 / steady_s,
        client.committed_count(),
        steady_s,
        options.window
    );
    println!("leader changes during the steady run: {changes}");

    if cluster.replicas() == 1 {
        println!("one replica: nothing to fail over to, so the leader is not killed");
    } else {
        fail_over(cluster, &mut client, leader)?;
    }
    client.drain(cluster, Duration::from_secs(5));
    let (digest, applied) = cluster
        .verify(&client.committed, Duration::from_secs(20))
        .map_err(|e| e.to_string())?;
    println!(
        "agreement: replicas {:?} hold identical state, digest {digest:016x} after {applied} \
         positions; all {} commands reported committed are in every journal",
        cluster.live(),
        client.committed_count()
    );
    Ok(())
}

/// Kills the leader while the client keeps sending, and reports when the new leader committed.
fn fail_over(cluster: &mut Cluster, client: &mut Client, leader: u8) -> Result<(), String> {
    let pid = cluster.pid(leader).unwrap_or(0);
    println!("killing the leader, replica {leader} (pid {pid}), with SIGKILL");
    let fail_over =
        kill_leader(cluster, client, leader, Duration::from_secs(20)).map_err(|e| e.to_string())?;
    println!(
        "fail-over: replica {} committed its first command {:.1} µs after the kill",
        fail_over.new_leader,
        fail_over.nanos() as f64 / 1e3
    );
    let more = Instant::now();
    while more.elapsed() < Duration::from_millis(300) {
        client.pump(cluster);
    }
    Ok(())
}

fn tenures(cluster: &Cluster) -> u64 {
    (0..cluster.replicas())
        .filter_map(|id| cluster.port(id))
        .map(|p| p.get(Stat::Tenures))
        .sum()
}

fn print_latency(title: &str, histogram: &Histogram<u64>, tsc_hz: f64, in_cycles: bool) {
    println!("{title}, {} samples:", histogram.len());
    for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        let value = histogram.value_at_quantile(q);
        if in_cycles {
            println!(
                "  {label:>6} {:>10.0} ns {:>10} cycles",
                value as f64 * 1e9 / tsc_hz,
                value
            );
        } else {
            println!("  {label:>6} {:>10} ns", value);
        }
    }
    if in_cycles {
        println!("  (TSC {:.3} GHz, invariant)", tsc_hz / 1e9);
    }
}

/// Summarises the permission switches the replicas logged ("log granted to replica 2 by
/// access flags in 41.3 µs"): how many, how, and how long they took.
fn print_permission_switches(cluster: &Cluster) {
    let mut times: Vec<(String, f64)> = Vec::new();
    for id in 0..cluster.replicas() {
        for line in cluster.log(id).lines() {
            if let Some(switch) = parse_switch(line) {
                times.push(switch);
            }
        }
    }
    if times.is_empty() {
        println!("permission switches: none logged");
        return;
    }
    println!("permission switches the replicas logged ({}):", times.len());
    for kind in ["granted", "revoked"] {
        let mut us: Vec<f64> = times
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|&(_, t)| t)
            .collect();
        if us.is_empty() {
            continue;
        }
        us.sort_by(f64::total_cmp);
        println!(
            "  {kind:>7}: {} switches, min {:.1} µs, median {:.1} µs, max {:.1} µs",
            us.len(),
            us[0],
            us[us.len() / 2],
            us[us.len() - 1]
        );
    }
}

/// `("granted" | "revoked", µs)` of a replica's permission-switch log line.
fn parse_switch(line: &str) -> Option<(String, f64)> {
    let kind = ["granted", "revoked"]
        .into_iter()
        .find(|k| line.contains(&format!("log {k} ")))?;
    let (_, after) = line.rsplit_once(" in ")?;
    let us = after.strip_suffix(" µs")?.parse().ok()?;
    Some((kind.to_owned(), us))
}

/// Runs `mu failover`.
pub fn failover(options: &FailoverOptions) -> Result<(), String> {
    let config = cluster_config(
        options.replicas,
        64,
        options.polling,
        options.read_period_us,
    );
    let name = format!("failover-{}", std::process::id());
    let deployment = deployment(
        &name,
        config,
        options.polling,
        options.pin_from,
        &options.fabric,
    );
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    println!(
        "mu failover: {} rounds, {} replicas over {}, {} polling, {} cores here, detector reads \
         every {} µs, fate sharing after {} µs",
        options.rounds,
        options.replicas,
        options.fabric.describe(),
        polling_name(options.polling),
        cores(),
        config.detector.read_period_ticks,
        config.detector.fate_ticks
    );
    let mut cluster = Cluster::start(&exe, &deployment).map_err(|e| e.to_string())?;
    let result = run_failover(&mut cluster, options);
    conclude(cluster, &options.fabric, result)
}

fn run_failover(cluster: &mut Cluster, options: &FailoverOptions) -> Result<(), String> {
    let mut client = Client::new(2, 64, 1024, 1);
    let mut times = Histogram::<u64>::new_with_bounds(1, 1 << 40, 3).expect("static bounds");
    for round in 0..options.rounds {
        let leader = cluster
            .await_settled(Duration::from_secs(20))
            .map_err(|e| e.to_string())?;
        let target = client.committed_count() + ROUND_COMMANDS;
        while client.committed_count() < target {
            client.pump(cluster);
        }
        let fail_over = kill_leader(cluster, &mut client, leader, Duration::from_secs(20))
            .map_err(|e| format!("round {round}: {e}"))?;
        let (new_leader, took) = (fail_over.new_leader, fail_over.nanos());
        times.saturating_record(took.max(1));
        client.drain(cluster, Duration::from_secs(5));
        let (digest, applied) = cluster
            .verify(&client.committed, Duration::from_secs(20))
            .map_err(|e| format!("round {round}: {e}"))?;
        println!(
            "round {round:>3}: killed replica {leader}, replica {new_leader} committed after {:>9.1} µs; \
             survivors agree (digest {digest:016x} at {applied})",
            took as f64 / 1e3
        );
        cluster.spawn(leader).map_err(|e| e.to_string())?;
    }
    println!(
        "fail-over time (SIGKILL -> first commit by the new leader), {} rounds:",
        times.len()
    );
    for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        println!(
            "  {label:>4} {:>10.1} µs",
            times.value_at_quantile(q) as f64 / 1e3
        );
    }
    println!("  max  {:>10.1} µs", times.max() as f64 / 1e3);
    Ok(())
}
