//! `mu demo` and `mu failover`: a cluster of replica processes on this machine, driven by a
//! client in this process, with the figures a user wants first (latency percentiles,
//! throughput, fail-over time, state agreement).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use board_configs::{Deployment, FabricSpec, Host, Polling};
use hdrhistogram::Histogram;
use mu_nostd::{Config, DetectorConfig};

use crate::clock::cycles_per_second;
use crate::cluster::{
    commit_positions, kill_leader, restart_and_rejoin, Client, Cluster, FailOver, Fault, Rejoin,
};
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
    /// Slots of the log.
    pub slots: u32,
    /// `SCHED_FIFO` priority of the replicas' background planes (see
    /// `NodeSpec::realtime_priority`), if any.
    pub realtime_priority: Option<u8>,
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
    /// Slots of the log.
    pub slots: u32,
    /// Laps of the log the survivors commit after each kill before the killed replica
    /// restarts (0: it restarts at once); with one or more it rejoins by state transfer.
    pub wrap_laps: u64,
    /// How the leader is taken out.
    pub fault: Fault,
    /// `SCHED_FIFO` priority of the replicas' background planes, if any.
    pub realtime_priority: Option<u8>,
}

const TICK_NS: u64 = 1000;
const SLOT_SIZE: u32 = 256;
/// Commands per fail-over round before the kill.
const ROUND_COMMANDS: u64 = 400;

/// The cluster configuration the demo and the benchmark use. On isolated cores (`busy`) the
/// detector reads every 20 µs and fate sharing stops a replica whose replication plane missed
/// 12 read periods. With `shared` polling the spinning threads (the leader's replication plane,
/// the client) may outnumber the cores, and a runnable thread can wait for a core: a woken
/// plane waited out a busy neighbour's time slice, up to a 4 ms scheduler tick and at times
/// 9-13 ms (scheduler traces of `mu demo` beside `yes`). A dead process is reported by the
/// kernel at once, so the pull score only has to catch a hung one: reads every 1 ms (a silent
/// peer is failed after 14 ms), and fate sharing after 20 ms, so that a live leader that was
/// merely descheduled is not deposed.
pub fn cluster_config(
    replicas: u8,
    payload: usize,
    polling: Polling,
    read_period_us: Option<u32>,
) -> Config {
    let read_period = read_period_us.unwrap_or(match polling {
        Polling::Busy => 20,
        Polling::Shared => 1000,
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
    config.transfer_chunk_bytes = 64 * 1024;
    config.transfer_window = 4;
    config.detector = DetectorConfig::paper(read_period);
    config.detector.fate_ticks = match polling {
        Polling::Busy => read_period.saturating_mul(12),
        Polling::Shared => read_period.saturating_mul(12).max(20_000),
    };
    config
}

/// `config` with a log of `slots` slots (`--slots`), checked.
fn with_slots(mut config: Config, slots: u32) -> Result<Config, String> {
    config.slot_count = slots;
    config
        .validate()
        .map_err(|e| format!("--slots {slots}: {e}"))?;
    Ok(config)
}

fn deployment(
    name: &str,
    config: Config,
    polling: Polling,
    pin_from: Option<usize>,
    fabric: &DemoFabric,
    realtime_priority: Option<u8>,
) -> Deployment {
    let dir = PathBuf::from(format!("/dev/shm/mu-{name}"));
    let cores: Vec<(Option<usize>, Option<usize>)> = (0..config.replica_count as usize)
        .map(|i| match pin_from {
            Some(first) => (Some(first + 2 * i), Some(first + 2 * i + 1)),
            None => (None, None),
        })
        .collect();
    let mut deployment = Deployment::shm_linux(name, config, TICK_NS, dir.clone(), polling, &cores);
    for replica in &mut deployment.replicas {
        if let Host::Linux(host) = &mut replica.host {
            host.realtime_priority = realtime_priority;
        }
    }
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

/// The threads a real-time priority applies to (see `NodeSpec::realtime_priority`), for a
/// header line.
fn describe_priority(polling: Polling, priority: Option<u8>) -> String {
    let threads = match polling {
        Polling::Busy => "planes",
        Polling::Shared => "background planes",
    };
    priority.map_or(String::new(), |p| format!(" ({threads} at SCHED_FIFO {p})"))
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
    let (least, most) = (
        kv::CLIENT_HEADER_BYTES,
        kv::CLIENT_HEADER_BYTES + kv::VALUE_MAX,
    );
    if !(least..=most).contains(&options.payload) {
        return Err(format!(
            "--payload must be {least}..={most} bytes (a put in its session's envelope: \
             {least} header bytes, then the value)"
        ));
    }
    if !(0.1..=3600.0).contains(&options.duration_s) {
        return Err("--duration must be 0.1..=3600 seconds".into());
    }
    let config = with_slots(
        cluster_config(
            options.replicas,
            options.payload,
            options.polling,
            options.read_period_us,
        ),
        options.slots,
    )?;
    let name = format!("demo-{}", std::process::id());
    let deployment = deployment(
        &name,
        config,
        options.polling,
        options.pin_from,
        &options.fabric,
        options.realtime_priority,
    );
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    println!(
        "mu demo: {} replicas as processes over {}, {}-byte commands, {} polling{}, {} cores \
         here; detector reads every {} µs",
        options.replicas,
        options.fabric.describe(),
        options.payload,
        polling_name(options.polling),
        describe_priority(options.polling, options.realtime_priority),
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
    let result = run_demo(&mut cluster, options, config.slot_count, tsc_hz, started);
    conclude(cluster, &options.fabric, result, true)
}

/// The deployment of a demo of `options` (its fabric, polling, pinning and priority) named
/// `name`.
pub(crate) fn deployment_for(name: &str, config: Config, options: &DemoOptions) -> Deployment {
    deployment(
        name,
        config,
        options.polling,
        options.pin_from,
        &options.fabric,
        options.realtime_priority,
    )
}

/// `mu serve --local`'s cluster: `replicas` processes over shared memory with `shared` polling,
/// each serving the Redis protocol on `127.0.0.1:first_port + id`, with stores of `keys` keys.
pub fn serve_cluster(
    exe: &std::path::Path,
    replicas: u8,
    first_port: u16,
    keys: usize,
) -> Result<Cluster, String> {
    // Commands of the largest store entry fit one slot's payload several times over: most
    // Redis commands are small, and a longer one spans slots.
    let config = cluster_config(replicas, 1024, Polling::Shared, None);
    // One directory per cluster: tests start several in one process, on other ports.
    let name = format!("serve-{}-{first_port}", std::process::id());
    let deployment = deployment(&name, config, Polling::Shared, None, &DemoFabric::Shm, None);
    let args = [
        "--kv-keys".to_string(),
        keys.to_string(),
        "--app".to_string(),
        "resp".to_string(),
        "--serve-port".to_string(),
        first_port.to_string(),
    ];
    Cluster::start_with_args(exe, &deployment, &args).map_err(|e| e.to_string())
}

/// How every run ends: the permission switches the replicas logged (verbs, when `progress`),
/// their logs when the run failed, and the cluster shut down.
fn conclude<T>(
    cluster: Cluster,
    fabric: &DemoFabric,
    result: Result<T, String>,
    progress: bool,
) -> Result<T, String> {
    if progress && matches!(fabric, DemoFabric::Verbs { .. }) {
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
    slot_count: u32,
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
    let steady = steady_run(
        cluster,
        &mut client,
        Duration::from_secs_f64(options.duration_s),
        options.polling,
        true,
    );
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
        steady.throughput(),
        steady.commands,
        steady.seconds,
        options.window
    );
    println!(
        "new tenures during the steady run: {} ({:.1} per minute)",
        steady.tenures,
        steady.tenures_per_minute()
    );

    if cluster.replicas() == 1 {
        println!("one replica: nothing to fail over to, so the leader is not killed");
    } else {
        fail_over(cluster, &mut client, leader)?;
        rejoin_after_wraps(cluster, &mut client, leader, slot_count, REJOIN_LAPS)?;
    }
    client.drain(cluster, Duration::from_secs(5));
    let (digest, applied) = cluster
        .verify(&client.committed, Duration::from_secs(20))
        .map_err(|e| e.to_string())?;
    println!(
        "agreement: replicas {:?} hold identical state, digest {digest:016x} after {applied} \
         positions; all {} commands reported applied are in every journal, none twice",
        cluster.live(),
        client.committed.len()
    );
    println!("exactly once: {}", Sessions::of(&client).describe());
    Ok(())
}

/// Kills the leader while the client keeps sending, and reports when the new leader committed.
fn fail_over(cluster: &mut Cluster, client: &mut Client, leader: u8) -> Result<(), String> {
    let pid = cluster.pid(leader).unwrap_or(0);
    println!("killing the leader, replica {leader} (pid {pid}), with SIGKILL");
    let fail_over = kill_leader(
        cluster,
        client,
        leader,
        Fault::Kill,
        Duration::from_secs(20),
    )
    .map_err(|e| e.to_string())?;
    println!(
        "fail-over: replica {} committed its first command {:.1} µs after the kill ({})",
        fail_over.new_leader,
        fail_over.nanos() as f64 / 1e3,
        describe_split(&fail_over)
    );
    let more = Instant::now();
    while more.elapsed() < Duration::from_millis(300) {
        client.pump(cluster);
    }
    Ok(())
}

/// Laps of the log the survivors commit in `mu demo` before the killed leader restarts.
const REJOIN_LAPS: u64 = 2;

/// Lets the survivors wrap the log `laps` times while replica `killed` is down, restarts it
/// with a fresh region and reports how it rejoined: by a state transfer, since no log holds
/// the positions it lacks.
fn rejoin_after_wraps(
    cluster: &mut Cluster,
    client: &mut Client,
    killed: u8,
    slot_count: u32,
    laps: u64,
) -> Result<Rejoin, String> {
    let started = Instant::now();
    let committed = commit_positions(
        cluster,
        client,
        laps * slot_count as u64,
        Duration::from_secs(300),
    )
    .map_err(|e| e.to_string())?;
    println!(
        "replica {killed} down while the survivors wrapped the log {laps} times: {committed} \
         commands in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("restarting replica {killed} with a fresh region (a new incarnation)");
    let rejoin = restart_and_rejoin(cluster, client, killed, Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    println!("rejoin: {}", rejoin.describe());
    Ok(rejoin)
}

/// What a steady run measured.
#[derive(Clone, Copy, Debug)]
pub struct Steady {
    /// Commands committed.
    pub commands: u64,
    /// How long it ran.
    pub seconds: f64,
    /// Tenures the replicas started meanwhile (not leader changes: a leader that loses its grants
    /// starts a new tenure and stays).
    pub tenures: u64,
}

impl Steady {
    /// Commands per second.
    pub fn throughput(&self) -> f64 {
        self.commands as f64 / self.seconds
    }

    /// New tenures per minute.
    pub fn tenures_per_minute(&self) -> f64 {
        self.tenures as f64 * 60.0 / self.seconds
    }
}

/// Keeps `client` sending for `duration`, with a progress line every 0.5 s when `progress`,
/// then drains what is in flight.
fn steady_run(
    cluster: &Cluster,
    client: &mut Client,
    duration: Duration,
    polling: Polling,
    progress: bool,
) -> Steady {
    let tenures_before = tenures(cluster);
    let committed_before = client.committed_count();
    let steady = Instant::now();
    let mut next_report = steady + Duration::from_millis(500);
    let mut last_count = committed_before;
    while steady.elapsed() < duration {
        client.pump(cluster);
        if progress && Instant::now() >= next_report {
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
                count - committed_before,
                (count - last_count) as f64 / 0.5,
                cluster.leader().map_or("none".into(), |l| l.to_string()),
                applied.join("/")
            );
            last_count = count;
            next_report += Duration::from_millis(500);
        }
        if polling == Polling::Shared {
            std::thread::yield_now();
        }
    }
    let seconds = steady.elapsed().as_secs_f64();
    client.drain(cluster, Duration::from_secs(5));
    Steady {
        commands: client.committed_count() - committed_before,
        seconds,
        tenures: tenures(cluster) - tenures_before,
    }
}

/// How a steadiness run shares the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Neighbour {
    /// Nothing else runs.
    Quiet,
    /// A process that spins on a core for the whole run (`yes > /dev/null`).
    Busy,
}

/// A 3-replica cluster over shared memory, shared polling, 64-byte commands, window 1: a steady
/// run of `duration` with `neighbour` beside it.
pub fn steadiness(
    replica_exe: &Path,
    duration: Duration,
    neighbour: Neighbour,
) -> Result<Steady, String> {
    let config = cluster_config(3, 64, Polling::Shared, None);
    let name = format!("steady-{}", std::process::id());
    let deployment = deployment(&name, config, Polling::Shared, None, &DemoFabric::Shm, None);
    let cluster = Cluster::start(replica_exe, &deployment).map_err(|e| e.to_string())?;
    let result = (|| {
        cluster
            .await_settled(Duration::from_secs(20))
            .map_err(|e| e.to_string())?;
        let mut busy = match neighbour {
            Neighbour::Quiet => None,
            Neighbour::Busy => Some(
                std::process::Command::new("yes")
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .map_err(|e| format!("start the busy neighbour (yes): {e}"))?,
            ),
        };
        let mut client = Client::new(3, 64, 1024, 1);
        let steady = steady_run(&cluster, &mut client, duration, Polling::Shared, false);
        if let Some(busy) = &mut busy {
            let _ = busy.kill();
            let _ = busy.wait();
        }
        Ok(steady)
    })();
    conclude(cluster, &DemoFabric::Shm, result, false)
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

/// What [`failover_report`] measured; every duration in ns.
pub struct FailoverReport {
    /// Every round's fail-over, in order.
    pub fail_overs: Vec<FailOver>,
    /// How the killed replica rejoined, every round, with `wrap_laps` above 0.
    pub rejoins: Vec<Rejoin>,
    /// Fault -> first commit by the new leader, every round.
    pub total: Histogram<u64>,
    /// How the leader was taken out.
    pub fault: Fault,
    /// SIGKILL -> the new leader elected itself ([`FailOver::detection`]). This and the other
    /// segments hold the rounds whose split the new leader's port gave.
    pub detection: Histogram<u64>,
    /// Elected -> fast path ([`FailOver::switch_and_prepare`]): `handoff` then `prepare`.
    pub switch_and_prepare: Histogram<u64>,
    /// Elected -> tenure start ([`FailOver::handoff`]).
    pub handoff: Histogram<u64>,
    /// Tenure start -> fast path: permissions from a majority and the prepare
    /// ([`FailOver::prepare`]).
    pub prepare: Histogram<u64>,
    /// Fast path -> first commit ([`FailOver::first_commit`]).
    pub first_commit: Histogram<u64>,
    /// The cluster's configuration (detector read period, fate sharing, in ticks).
    pub config: Config,
    /// Nanoseconds per tick.
    pub tick_ns: u64,
    /// The client's session across the rounds: what it sent again, and how that was settled.
    pub sessions: Sessions,
}

/// What a client's exactly-once session did across fail-overs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sessions {
    /// Requests sent again: their replica died, or answered before deciding them.
    pub resent: u64,
    /// Of those, answered from the session's cache as decided before (applied once).
    pub duplicates: u64,
    /// Requests of unknown outcome (the session was evicted or forgot them).
    pub unknown: u64,
}

impl Sessions {
    fn of(client: &Client) -> Sessions {
        Sessions {
            resent: client.resent,
            duplicates: client.duplicates,
            unknown: client.unknown,
        }
    }

    fn describe(&self) -> String {
        format!(
            "sent again {} (their replica died, stopped leading or had not decided them), of \
             which answered from the session's cache as decided before (applied once) {}; of \
             unknown outcome {}",
            self.resent, self.duplicates, self.unknown
        )
    }
}

impl FailoverReport {
    fn new(config: Config, fault: Fault) -> FailoverReport {
        let histogram = || Histogram::new_with_bounds(1, 1 << 40, 3).expect("static bounds");
        FailoverReport {
            fail_overs: Vec::new(),
            rejoins: Vec::new(),
            total: histogram(),
            detection: histogram(),
            switch_and_prepare: histogram(),
            handoff: histogram(),
            prepare: histogram(),
            first_commit: histogram(),
            fault,
            config,
            tick_ns: TICK_NS,
            sessions: Sessions::default(),
        }
    }

    fn record(&mut self, fail_over: FailOver) {
        self.total.saturating_record(fail_over.nanos());
        let segments = [
            (&mut self.detection, fail_over.detection()),
            (&mut self.switch_and_prepare, fail_over.switch_and_prepare()),
            (&mut self.handoff, fail_over.handoff()),
            (&mut self.prepare, fail_over.prepare()),
            (&mut self.first_commit, fail_over.first_commit()),
        ];
        for (histogram, nanos) in segments {
            if let Some(nanos) = nanos {
                histogram.saturating_record(nanos);
            }
        }
        self.fail_overs.push(fail_over);
    }

    /// Rounds whose fail-over was split into segments.
    pub fn split_rounds(&self) -> u64 {
        self.detection.len()
    }

    /// The segments of the split with their labels, in the order they happen; the two
    /// `switch:` ones make up `switch and prepare`.
    pub fn segments(&self) -> [(&'static str, &Histogram<u64>); 5] {
        [
            ("detection (fault -> elected)", &self.detection),
            (
                "switch and prepare (elected -> fast path)",
                &self.switch_and_prepare,
            ),
            ("switch: handoff (elected -> tenure start)", &self.handoff),
            (
                "switch: permissions and prepare (tenure start -> fast path)",
                &self.prepare,
            ),
            ("first commit (fast path -> commit)", &self.first_commit),
        ]
    }

    /// What was measured, and what the segments are, in a few sentences.
    pub fn describe(&self) -> String {
        let us = |ticks: u32| ticks as u64 * self.tick_ns / 1000;
        format!(
            "{} {}s of the leader process of a {}-replica cluster on this host (detector \
             reads every {} µs, fate sharing after {} µs), each timed from the signal to the \
             first command the new leader committed; {} of them split by the timestamps the new \
             leader published. Detection: its failure detector gave up on the old leader (at once \
             when the kernel reported the process dead, after its pull score drained when it \
             only fell silent) and it elected itself. Switch and prepare: its background plane started a tenure (own log taken, \
             permission requests sent), its replication plane took the tenure up (handoff), then \
             enough followers for a majority, each once it too gave up on the old leader, revoked \
             the old leader and granted their logs while the survey, catch-up, min-proposal and \
             adoption ran. First commit: the client sent to the new leader, which replicated and \
             applied the command.",
            self.total.len(),
            self.fault.signal_name(),
            self.config.replica_count,
            us(self.config.detector.read_period_ticks),
            us(self.config.detector.fate_ticks),
            self.split_rounds()
        )
    }

    fn print(&self) {
        let us = |nanos: u64| nanos as f64 / 1e3;
        println!(
            "fail-over time ({} -> first commit by the new leader), {} rounds:",
            self.fault.signal_name(),
            self.total.len()
        );
        for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
            println!(
                "  {label:>4} {:>10.1} µs",
                us(self.total.value_at_quantile(q))
            );
        }
        println!("  max  {:>10.1} µs", us(self.total.max()));
        println!(
            "split ({} of {} rounds), µs:{:>44}{:>11}{:>11}",
            self.split_rounds(),
            self.total.len(),
            "p50",
            "p99",
            "max"
        );
        for (label, histogram) in self.segments() {
            if histogram.is_empty() {
                continue;
            }
            println!(
                "  {label:<62}{:>11.1}{:>11.1}{:>11.1}",
                us(histogram.value_at_quantile(0.5)),
                us(histogram.value_at_quantile(0.99)),
                us(histogram.max())
            );
        }
        if !self.rejoins.is_empty() {
            let ms = |rejoin: &Rejoin| rejoin.voter as f64 / 1e6;
            let mut voter: Vec<f64> = self.rejoins.iter().map(ms).collect();
            voter.sort_by(f64::total_cmp);
            let transfers = self.rejoins.iter().filter(|r| r.installs > 0).count();
            println!(
                "rejoin of the killed replica after the log wrapped, {} rounds: {transfers} by \
                 state transfer; restart -> voter median {:.1} ms, max {:.1} ms",
                self.rejoins.len(),
                voter[voter.len() / 2],
                voter[voter.len() - 1]
            );
        }
        println!(
            "exactly once: {}; no journal holds a command twice",
            self.sessions.describe()
        );
    }
}

/// The split of one fail-over, for a round's line.
fn describe_split(fail_over: &FailOver) -> String {
    let us = |nanos: Option<u64>| nanos.map_or(0.0, |n| n as f64 / 1e3);
    if fail_over.marks.is_none() {
        return "no split: the new leader's port did not date this take-over".into();
    }
    format!(
        "detection {:.1} + switch and prepare {:.1} (handoff {:.1}, permissions and prepare \
         {:.1}) + first commit {:.1} µs",
        us(fail_over.detection()),
        us(fail_over.switch_and_prepare()),
        us(fail_over.handoff()),
        us(fail_over.prepare()),
        us(fail_over.first_commit())
    )
}

/// Runs `mu failover`: [`failover_report`] with this executable as the replicas', and prints it.
pub fn failover(options: &FailoverOptions) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    failover_report(options, &exe, true)?.print();
    Ok(())
}

/// Kills the leader of a cluster of `replica_exe` processes (a `mu` executable: they run
/// `mu replica`) `options.rounds` times, restarting it each time, and measures every fail-over.
/// With `progress`, prints what it runs and a line per round.
pub fn failover_report(
    options: &FailoverOptions,
    replica_exe: &Path,
    progress: bool,
) -> Result<FailoverReport, String> {
    let config = with_slots(
        cluster_config(
            options.replicas,
            64,
            options.polling,
            options.read_period_us,
        ),
        options.slots,
    )?;
    let name = format!("failover-{}", std::process::id());
    let deployment = deployment(
        &name,
        config,
        options.polling,
        options.pin_from,
        &options.fabric,
        options.realtime_priority,
    );
    if progress {
        println!(
            "mu failover: {} rounds, {} replicas over {}, {} polling{}, {} cores here, detector \
             reads every {} µs, fate sharing after {} µs",
            options.rounds,
            options.replicas,
            options.fabric.describe(),
            polling_name(options.polling),
            describe_priority(options.polling, options.realtime_priority),
            cores(),
            config.detector.read_period_ticks as u64 * TICK_NS / 1000,
            config.detector.fate_ticks as u64 * TICK_NS / 1000
        );
    }
    let mut cluster = Cluster::start(replica_exe, &deployment).map_err(|e| e.to_string())?;
    let result = run_failover(&mut cluster, options, config, progress);
    conclude(cluster, &options.fabric, result, progress)
}

fn run_failover(
    cluster: &mut Cluster,
    options: &FailoverOptions,
    config: Config,
    progress: bool,
) -> Result<FailoverReport, String> {
    let mut client = Client::new(2, 64, 1024, 1);
    let mut report = FailoverReport::new(config, options.fault);
    for round in 0..options.rounds {
        // The replica restarted last round takes part in the workload.
        cluster
            .await_settled(Duration::from_secs(20))
            .map_err(|e| e.to_string())?;
        let target = client.committed_count() + ROUND_COMMANDS;
        while client.committed_count() < target {
            client.pump(cluster);
        }
        // Leadership may have moved during the workload (a starved leader deposed): kill the
        // one that leads now, or the round would time a take-over that happened before the kill.
        let leader = cluster
            .await_settled(Duration::from_secs(20))
            .map_err(|e| e.to_string())?;
        let fail_over = kill_leader(
            cluster,
            &mut client,
            leader,
            options.fault,
            Duration::from_secs(20),
        )
        .map_err(|e| format!("round {round}: {e}"))?;
        report.record(fail_over);
        client.drain(cluster, Duration::from_secs(5));
        let (digest, applied) = cluster
            .verify(&client.committed, Duration::from_secs(20))
            .map_err(|e| format!("round {round}: {e}"))?;
        if progress {
            println!(
                "round {round:>3}: {} replica {leader}, replica {} committed after {:>9.1} µs \
                 = {}; survivors agree (digest {digest:016x} at {applied})",
                options.fault.signal_name(),
                fail_over.new_leader,
                fail_over.nanos() as f64 / 1e3,
                describe_split(&fail_over)
            );
        }
        if options.wrap_laps == 0 {
            cluster.spawn(leader).map_err(|e| e.to_string())?;
            continue;
        }
        let laps = options.wrap_laps;
        let positions = laps * config.slot_count as u64;
        commit_positions(cluster, &mut client, positions, Duration::from_secs(300))
            .map_err(|e| format!("round {round}: {e}"))?;
        let rejoin = restart_and_rejoin(cluster, &mut client, leader, Duration::from_secs(60))
            .map_err(|e| format!("round {round}: {e}"))?;
        if progress {
            println!(
                "           the survivors wrapped the log {laps} times, then {}",
                rejoin.describe()
            );
        }
        report.rejoins.push(rejoin);
    }
    report.sessions = Sessions::of(&client);
    Ok(report)
}
