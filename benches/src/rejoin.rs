//! Rejoin by state transfer, over shared memory: a real 3-process cluster whose key-value
//! store holds 64 MiB (16,384 keys of 4 KiB values), a follower SIGKILLed while the others
//! commit 10 laps of the log, then restarted with a fresh region. It installs a snapshot of
//! the whole store from another replica and continues from the log.
//!
//! The store is filled with 4 KiB puts; the laps, and the load while the follower rejoins, are
//! 64-byte puts to one key (one slot each), so the state stays 64 MiB and a lap is 65,536
//! commands, as in a store whose updates are small.
//!
//! Measured: the install's time and rate (from the joiner's own clock readings at its first
//! and last chunk), restart -> voter, and the leader's throughput while the client sees the
//! install run against its throughput in the second before the restart (same two live
//! replicas, same client).
//!
//! # Invariants
//! - The run fails, and says why, unless the follower installed a snapshot and all three
//!   replicas end with the same applied position and state digest; figures are never asserted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use board_configs::{Deployment, Polling};
use runtime_linux::cluster::{commit_positions, restart_and_rejoin, Client, Cluster, Rejoin};
use runtime_linux::demo::cluster_config;
use runtime_linux::kv;

/// Keys of the store: with 4 KiB values, 64 MiB of state.
pub const KEYS: usize = 16_384;
/// Laps of the log the follower misses.
pub const LAPS: u64 = 10;
/// Slots of the log.
const SLOTS: u32 = 1 << 16;
/// Commands in flight at the leader.
const WINDOW: usize = 8;
/// Bytes of the puts during the laps and the rejoin (header and a 47-byte value).
const SMALL_PUT: usize = 64;

/// What the rejoin benchmark measured.
#[derive(Clone, Debug)]
pub struct RejoinBench {
    /// Slots of the log, and laps the follower missed.
    pub slots: u32,
    /// See `slots`.
    pub laps: u64,
    /// Keys of the store and bytes of each value.
    pub keys: usize,
    /// See `keys`.
    pub value_bytes: usize,
    /// Commands per second in the second before the restart (two replicas running).
    pub before: f64,
    /// How the follower rejoined.
    pub rejoin: Rejoin,
}

impl RejoinBench {
    /// Leader throughput while the install ran, relative to before (1.0: no drop).
    pub fn throughput_ratio(&self) -> Option<f64> {
        self.rejoin
            .throughput_during_install()
            .map(|during| during / self.before.max(1.0))
    }
}

/// Runs the benchmark with `mu_exe`'s replicas, printing progress.
pub fn measure(mu_exe: &Path) -> Result<RejoinBench, String> {
    let value_bytes = kv::VALUE_MAX;
    let payload = kv::CLIENT_HEADER_BYTES + value_bytes;
    let mut config = cluster_config(3, payload, Polling::Shared, None);
    // The fill's 4 KiB puts span slots; the small puts take one.
    config.slot_count = SLOTS;
    let name = format!("bench-rejoin-{}", std::process::id());
    let dir = PathBuf::from(format!("/dev/shm/mu-{name}"));
    let deployment = Deployment::shm_linux(&name, config, 1000, dir, Polling::Shared, &[]);
    let mut cluster =
        Cluster::start_with_keys(mu_exe, &deployment, KEYS).map_err(|e| e.to_string())?;
    let result = run(&mut cluster, config.slot_count, payload);
    if result.is_err() {
        for id in 0..cluster.replicas() {
            eprintln!("--- replica {id} log ---\n{}", cluster.log_tail(id));
        }
    }
    cluster.shutdown();
    result
}

fn run(cluster: &mut Cluster, slots: u32, payload: usize) -> Result<RejoinBench, String> {
    let limit = Duration::from_secs(120);
    let leader = cluster.await_settled(limit).map_err(|e| e.to_string())?;
    let mut fill = Client::new(3, payload, KEYS as u64, WINDOW);
    let filling = Instant::now();
    while fill.committed_count() < KEYS as u64 {
        fill.pump(cluster);
        if filling.elapsed() > limit {
            return Err(format!("the store did not fill: {}", cluster.describe()));
        }
    }
    fill.drain(cluster, limit);
    let mut client = Client::new(4, SMALL_PUT, 1, WINDOW);
    println!(
        "filled {KEYS} keys of {} B values in {:.1} s",
        payload - kv::CLIENT_HEADER_BYTES,
        filling.elapsed().as_secs_f64()
    );
    let follower = (leader + 1) % cluster.replicas();
    cluster
        .kill(follower)
        .ok_or_else(|| format!("replica {follower} is not running"))?;
    let lapping = Instant::now();
    commit_positions(cluster, &mut client, LAPS * slots as u64, limit)
        .map_err(|e| e.to_string())?;
    println!(
        "replica {follower} down while the others committed {LAPS} laps of {slots} slots in {:.1} s",
        lapping.elapsed().as_secs_f64()
    );
    let (count, started) = (client.committed_count(), Instant::now());
    while started.elapsed() < Duration::from_secs(1) {
        client.pump(cluster);
    }
    let before = (client.committed_count() - count) as f64 / started.elapsed().as_secs_f64();
    let rejoin =
        restart_and_rejoin(cluster, &mut client, follower, limit).map_err(|e| e.to_string())?;
    println!("{}", rejoin.describe());
    if rejoin.installs == 0 {
        return Err(format!(
            "replica {follower} rejoined without a snapshot: {rejoin:?}"
        ));
    }
    client.drain(cluster, limit);
    let committed = [fill.committed.as_slice(), client.committed.as_slice()].concat();
    let (digest, applied) = cluster
        .verify(&committed, limit)
        .map_err(|e| e.to_string())?;
    println!(
        "agreement: replicas {:?} hold identical state, digest {digest:016x} after {applied} positions",
        cluster.live()
    );
    Ok(RejoinBench {
        slots,
        laps: LAPS,
        keys: KEYS,
        value_bytes: payload - kv::CLIENT_HEADER_BYTES,
        before,
        rejoin,
    })
}
